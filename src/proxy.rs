//! HTTP(S)_PROXY / NO_PROXY, decided the way the runtime (Go's `httpproxy`) decides them, so the
//! checks go where the runtime's pulls go; plus the CONNECT tunnel the tls check runs through.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use ipnet::IpNet;
use reqwest::Url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::route::{Endpoint, Scheme};

/// Largest CONNECT response head we read.
const MAX_CONNECT_RESPONSE: usize = 8 * 1024;

/// A proxy from the environment. Display never shows its credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    url: Url,
    /// The variable it came from, for the evidence (`HTTPS_PROXY`).
    pub variable: &'static str,
}

impl Proxy {
    pub fn host(&self) -> &str {
        self.url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(80)
    }

    /// The URL as reqwest wants it (with credentials); never log it.
    pub fn url_with_credentials(&self) -> &str {
        self.url.as_str()
    }

    /// `user:password` in base64, for a `Proxy-Authorization: Basic` header; never log it.
    pub fn authorization(&self) -> Option<String> {
        if self.url.username().is_empty() {
            return None;
        }
        let user = percent_decode(self.url.username());
        let password = percent_decode(self.url.password().unwrap_or_default());
        Some(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}:{} ({})",
            self.url.scheme(),
            self.url.host_str().unwrap_or_default(),
            self.port(),
            self.variable
        )
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Decodes `%XX` escapes of a URL's user-info (credentials with `@` or `:` in them are escaped).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(value) => {
                out.push(value);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{variable}: {problem}")]
pub struct ProxyConfigError {
    pub variable: &'static str,
    pub problem: String,
}

/// One NO_PROXY entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Bypass {
    All,
    Net(IpNet),
    /// `suffix` starts with a dot; `exact` also matches the bare name (entry without a leading dot).
    Domain {
        suffix: String,
        exact: bool,
        port: Option<u16>,
    },
}

/// The proxy settings the runtime would see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySettings {
    http: Option<Proxy>,
    https: Option<Proxy>,
    bypass: Vec<Bypass>,
}

impl ProxySettings {
    /// Reads the variables through `var` (the process environment in production).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, ProxyConfigError> {
        let pick = |upper: &'static str, lower: &'static str| -> Option<(&'static str, String)> {
            [upper, lower]
                .into_iter()
                .find_map(|name| var(name).filter(|v| !v.is_empty()).map(|v| (name, v)))
        };
        let parse =
            |found: Option<(&'static str, String)>| -> Result<Option<Proxy>, ProxyConfigError> {
                let Some((variable, value)) = found else {
                    return Ok(None);
                };
                let with_scheme = if value.contains("://") {
                    value
                } else {
                    format!("http://{value}")
                };
                let url = Url::parse(&with_scheme).map_err(|e| ProxyConfigError {
                    variable,
                    problem: format!("not a URL: {e}"),
                })?;
                if url.host_str().is_none() {
                    return Err(ProxyConfigError {
                        variable,
                        problem: "no host".into(),
                    });
                }
                if url.scheme() != "http" {
                    return Err(ProxyConfigError {
                        variable,
                        problem: format!(
                            "{}:// proxies are not supported, only http://",
                            url.scheme()
                        ),
                    });
                }
                Ok(Some(Proxy { url, variable }))
            };
        let bypass = pick("NO_PROXY", "no_proxy")
            .map(|(_, v)| parse_no_proxy(&v))
            .unwrap_or_default();
        Ok(ProxySettings {
            http: parse(pick("HTTP_PROXY", "http_proxy"))?,
            https: parse(pick("HTTPS_PROXY", "https_proxy"))?,
            bypass,
        })
    }

    /// The proxy the runtime would use for `endpoint`, if any.
    pub fn for_endpoint(&self, endpoint: &Endpoint) -> Option<&Proxy> {
        let proxy = match endpoint.scheme {
            Scheme::Http => self.http.as_ref(),
            Scheme::Https => self.https.as_ref(),
        }?;
        (!self.bypasses(&endpoint.host, endpoint.port)).then_some(proxy)
    }

    fn bypasses(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        // Go never proxies loopback, whatever NO_PROXY says.
        if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.bypass.iter().any(|entry| match entry {
            Bypass::All => true,
            Bypass::Net(net) => ip.is_some_and(|ip| net.contains(&ip)),
            Bypass::Domain {
                suffix,
                exact,
                port: want_port,
            } => {
                want_port.is_none_or(|p| p == port)
                    && (host.ends_with(suffix.as_str()) || (*exact && host == suffix[1..]))
            }
        })
    }
}

fn parse_no_proxy(value: &str) -> Vec<Bypass> {
    value
        .split(',')
        .map(|entry| entry.trim().to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| {
            if entry == "*" {
                return Some(Bypass::All);
            }
            if let Ok(net) = entry.parse::<IpNet>() {
                return Some(Bypass::Net(net));
            }
            if let Ok(ip) = entry
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                return Some(Bypass::Net(IpNet::from(ip)));
            }
            let (name, port) = match entry.rsplit_once(':') {
                Some((name, port)) => (name.to_string(), Some(port.parse::<u16>().ok()?)),
                None => (entry.clone(), None),
            };
            let name = name.strip_prefix('*').unwrap_or(&name).to_string();
            let exact = !name.starts_with('.');
            let suffix = if exact { format!(".{name}") } else { name };
            Some(Bypass::Domain {
                suffix,
                exact,
                port,
            })
        })
        .collect()
}

/// Why a CONNECT tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("proxy {proxy}: {source}")]
    Io {
        proxy: String,
        source: std::io::Error,
    },
    #[error("proxy {proxy} answered {status:?} to CONNECT {target}")]
    Refused {
        proxy: String,
        target: String,
        status: String,
    },
    #[error("proxy {proxy}: no answer to CONNECT within {timeout:?}")]
    Timeout { proxy: String, timeout: Duration },
}

/// Asks `proxy` (already connected as `stream`) for a tunnel to `host:port`.
pub async fn tunnel(
    mut stream: TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, TunnelError> {
    let shown = proxy.to_string();
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(credentials) = proxy.authorization() {
        request.push_str(&format!("Proxy-Authorization: Basic {credentials}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(512);
        let mut byte = [0u8; 1];
        // Byte by byte so nothing of the tunnelled stream is consumed; the head is small and capped.
        while !head.ends_with(b"\r\n\r\n") && head.len() < MAX_CONNECT_RESPONSE {
            if stream.read(&mut byte).await? == 0 {
                break;
            }
            head.push(byte[0]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| TunnelError::Timeout {
            proxy: shown.clone(),
            timeout,
        })?
        .map_err(|source| TunnelError::Io {
            proxy: shown.clone(),
            source,
        })?;
    let status_line =
        String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or_default())
            .into_owned();
    let ok = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if ok {
        Ok(stream)
    } else {
        let status = if status_line.is_empty() {
            "nothing".to_string()
        } else {
            status_line
        };
        Err(TunnelError::Refused {
            proxy: shown,
            target,
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::TlsOptions;

    fn endpoint(scheme: Scheme, host: &str, port: u16) -> Endpoint {
        Endpoint {
            scheme,
            host: host.into(),
            port,
            role: crate::route::Role::Upstream,
            source: "test".into(),
            tls: TlsOptions::default(),
            api_path: "/v2".into(),
            repository: None,
            namespace_query: false,
            extras: Default::default(),
            http_fallback: None,
        }
    }

    fn settings(vars: &[(&str, &str)]) -> ProxySettings {
        ProxySettings::from_env(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    #[test]
    fn decides_like_go_httpproxy() {
        let s = settings(&[
            ("HTTPS_PROXY", "http://user:secret@proxy.corp:3128"),
            (
                "no_proxy",
                "internal.corp,.svc,10.0.0.0/8,192.168.1.7,reg.local:5000",
            ),
        ]);
        let cases = [
            (Scheme::Https, "ghcr.io", 443, true),
            (Scheme::Http, "ghcr.io", 80, false), // no HTTP_PROXY
            (Scheme::Https, "internal.corp", 443, false),
            (Scheme::Https, "reg.internal.corp", 443, false),
            (Scheme::Https, "svc", 443, true), // ".svc" matches subdomains only
            (Scheme::Https, "a.b.svc", 443, false),
            (Scheme::Https, "10.1.2.3", 443, false),
            (Scheme::Https, "192.168.1.7", 443, false),
            (Scheme::Https, "reg.local", 5000, false),
            (Scheme::Https, "reg.local", 443, true),
            (Scheme::Https, "localhost", 443, false),
            (Scheme::Https, "127.0.0.1", 443, false),
        ];
        for (scheme, host, port, proxied) in cases {
            assert_eq!(
                s.for_endpoint(&endpoint(scheme, host, port)).is_some(),
                proxied,
                "{host}:{port}"
            );
        }
        let proxy = s
            .for_endpoint(&endpoint(Scheme::Https, "ghcr.io", 443))
            .unwrap();
        assert_eq!(proxy.host(), "proxy.corp");
        assert_eq!(proxy.port(), 3128);
        assert!(
            !proxy.to_string().contains("secret"),
            "credentials never shown: {proxy}"
        );
        assert!(!format!("{proxy:?}").contains("secret"));
        assert_eq!(proxy.authorization().as_deref(), Some("dXNlcjpzZWNyZXQ="));
    }

    #[test]
    fn star_bypasses_everything_and_bad_values_are_named() {
        let s = settings(&[("HTTPS_PROXY", "proxy:3128"), ("NO_PROXY", "*")]);
        assert!(
            s.for_endpoint(&endpoint(Scheme::Https, "ghcr.io", 443))
                .is_none()
        );
        let error = ProxySettings::from_env(|n| {
            (n == "HTTPS_PROXY").then(|| "socks5://p:1080".to_string())
        })
        .unwrap_err();
        assert_eq!(error.variable, "HTTPS_PROXY");
    }
}
