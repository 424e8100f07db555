//! The `http` check: `GET /v2/` on the endpoint (or its own API root, hosts.toml `override_path`). A
//! registry answers 200 or 401 and names its API version; anything else that answers is not a
//! registry, and 5xx means it is failing.

use std::error::Error as _;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::conn::{self, Conn};
use super::{CheckError, Evidence};
use crate::proxy::Proxy;
use crate::reason::Reason;
use crate::route::{Endpoint, Scheme};
use crate::text::error_chain;

/// The most of `/v2/`'s body read before closing (a registry sends `{}`); the rest is left unread.
const BODY_CAP: usize = 64 * 1024;

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";

/// The answer to `/v2/`.
#[derive(Clone, Debug)]
pub struct HttpOutcome {
    /// The path asked: `/v2/`, or the endpoint's own API root.
    pub path: String,
    pub status: u16,
    pub api_version: Option<String>,
    /// The raw `WWW-Authenticate` header, for the auth check.
    pub challenge: Option<String>,
}

impl Evidence for HttpOutcome {
    fn detail(&self) -> String {
        let mut detail = format!("GET {} answered {}", self.path, status_text(self.status));
        if let Some(version) = &self.api_version {
            detail.push_str(&format!(", API {version}"));
        }
        if let Some(challenge) = &self.challenge {
            let scheme = challenge.split_whitespace().next().unwrap_or_default();
            detail.push_str(&format!(", auth {scheme}"));
        }
        detail
    }
}

/// `/v2/` failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HttpFailed {
    pub reason: Reason,
    pub message: String,
    /// The status, when the server answered at all.
    pub status: Option<u16>,
}

impl CheckError for HttpFailed {
    fn reason(&self) -> Reason {
        self.reason
    }
}

/// `404 Not Found`: the status with its canonical reason phrase.
pub(crate) fn status_text(status: u16) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{status} {reason}").trim_end().to_string()
}

/// Pings the endpoint's API root (`GET /v2/`) with a client built for it. `proxied` says whether
/// connection errors belong to a proxy.
pub async fn check(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    proxied: bool,
) -> Result<HttpOutcome, HttpFailed> {
    let path = format!("{}/", endpoint.api_path);
    let response = client
        .get(format!("{}{path}", endpoint.url()))
        .send()
        .await
        .map_err(|error| request_failed(&error, proxied))?;
    judge(path, response.status().as_u16(), response.headers())
}

/// Pings the endpoint's API root (`GET /v2/`) over the chain's own connection `conn` in HTTP/1.1
/// (as the runtimes speak to registries), reads the small body, and closes the connection politely:
/// the check costs the registry no second connection. `proxy`: a plain-HTTP endpoint's proxy, which
/// `conn` is connected to (the request then names the whole URL, as to any HTTP proxy).
pub async fn check_on(
    conn: Conn,
    endpoint: &Endpoint,
    proxy: Option<&Proxy>,
) -> Result<HttpOutcome, HttpFailed> {
    let path = format!("{}/", endpoint.api_path);
    let request = ping_request(&path, endpoint, proxy)?;
    let answered = exchange(conn, request)
        .await
        .map_err(|e| Box::new(e) as BoxError);
    let (status, headers) = answered.map_err(|error| HttpFailed {
        reason: match tls_cause(&error) {
            true => Reason::TlsHandshake,
            false => Reason::RegistryUnavailable,
        },
        message: format!("GET {path}: {}", error_chain(error.as_ref())),
        status: None,
    })?;
    judge(path, status, &headers)
}

/// The `GET` of `path` with the headers the runtime's client sends (and the proxy's credentials
/// for a plain-HTTP endpoint behind one).
fn ping_request(
    path: &str,
    endpoint: &Endpoint,
    proxy: Option<&Proxy>,
) -> Result<hyper::Request<Empty<Bytes>>, HttpFailed> {
    let url = format!("{}{path}", endpoint.url());
    // An HTTP proxy wants the whole URL.
    let target = match proxy {
        Some(_) => url.as_str(),
        None => path,
    };
    let mut request = hyper::Request::get(target)
        .body(Empty::<Bytes>::new())
        .map_err(|e| HttpFailed {
            reason: Reason::Unknown,
            message: format!("GET {url}: {e}"),
            status: None,
        })?;
    let headers = request.headers_mut();
    let base = endpoint.url();
    let authority = base.split_once("://").map_or("", |(_, a)| a);
    headers.insert(header::HOST, value(authority));
    headers.insert(header::USER_AGENT, value(crate::http_client::USER_AGENT));
    headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    if let Some(credentials) = proxy
        .filter(|_| endpoint.scheme == Scheme::Http)
        .and_then(Proxy::authorization)
    {
        let mut value = value(&format!("Basic {credentials}"));
        value.set_sensitive(true);
        headers.insert(header::PROXY_AUTHORIZATION, value);
    }
    // hosts.toml's `header`: on every request to this host, as containerd sends them (never logged).
    for (name, text) in &endpoint.extras.headers {
        if let (Ok(name), Ok(mut text)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(text),
        ) {
            text.set_sensitive(true);
            headers.append(name, text);
        }
    }
    Ok(request)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request over HTTP/1.1; the connection is then closed with close_notify and FIN.
async fn exchange(
    conn: Conn,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<(u16, HeaderMap), hyper::Error> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(conn.into_io()))
            .await?;
    let ask = async move {
        let response = sender.send_request(request).await?;
        let (head, body) = response.into_parts();
        // Read (a capped part of) the body, so the exchange ends cleanly.
        let _ = Limited::new(body, BODY_CAP).collect().await;
        Ok::<_, hyper::Error>((head.status.as_u16(), head.headers))
        // The sender goes here: the connection then gives its socket back.
    };
    let (answer, parts) = tokio::join!(ask, connection.without_shutdown());
    if let Ok(parts) = parts {
        conn::close(parts.io.into_inner()).await;
    }
    answer
}

/// A header value from text pullwatch made (a host, its own user agent).
fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether TLS (a fatal alert: a refused client certificate, say) ended the exchange.
fn tls_cause(error: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(cause) = source {
        // An io::Error's `source` skips the error it wraps: look inside it too.
        let inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|e| e as &(dyn std::error::Error + 'static));
        if [Some(cause), inner]
            .into_iter()
            .flatten()
            .any(|e| e.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Decides from the path asked, status and headers alone (pure, table-tested).
fn judge(path: String, status: u16, headers: &HeaderMap) -> Result<HttpOutcome, HttpFailed> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let api_version = header(API_VERSION_HEADER);
    // Several WWW-Authenticate headers are one list of challenges (RFC 9110 §11.6.1).
    let challenges: Vec<&str> = headers
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let challenge = (!challenges.is_empty()).then(|| challenges.join(", "));
    let answered = format!("GET {path} answered {}", status_text(status));
    let fail = |reason, message: String| {
        Err(HttpFailed {
            reason,
            message,
            status: Some(status),
        })
    };
    match status {
        200 | 401 if api_version.is_some() || challenge.is_some() => Ok(HttpOutcome {
            path,
            status,
            api_version,
            challenge,
        }),
        200 | 401 => fail(
            Reason::NotARegistry,
            format!("{answered} without Docker-Distribution-API-Version: not a registry API"),
        ),
        429 => fail(Reason::RateLimited, answered),
        // A redirect the client stopped at: to a loopback or link-local address the route does
        // not name, or to no usable place at all.
        300..=399 => fail(
            Reason::NotARegistry,
            match header("location") {
                Some(to) => format!(
                    "{answered}, a redirect to {} that pullwatch does not follow (a loopback or link-local address the route does not name): not a registry API",
                    crate::text::quote(&to)
                ),
                None => format!("{answered}: not a registry API"),
            },
        ),
        403 => fail(
            Reason::Forbidden,
            format!("{answered}: the registry refuses this client"),
        ),
        500..=599 => fail(Reason::RegistryUnavailable, answered),
        _ => fail(
            Reason::NotARegistry,
            format!("{answered}: not a registry API"),
        ),
    }
}

/// A request that got no HTTP answer: find the cause in the error chain.
pub fn request_failed(error: &reqwest::Error, proxied: bool) -> HttpFailed {
    // No HTTP answer and no better clue: the server hung up on us.
    let mut reason = Reason::RegistryUnavailable;
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.downcast_ref::<rustls::Error>().is_some() {
            reason = Reason::TlsHandshake;
            break;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            let inner_tls = io
                .get_ref()
                .is_some_and(|e| e.downcast_ref::<rustls::Error>().is_some());
            reason = if inner_tls {
                Reason::TlsHandshake
            } else {
                super::tcp::classify_io(io)
            };
            break;
        }
        source = cause.source();
    }
    if proxied && error.is_connect() {
        reason = Reason::ProxyError;
    }
    if error.is_timeout() {
        reason = Reason::RegistryUnavailable;
    }
    let message = error_chain(error);
    HttpFailed {
        reason,
        message,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn judges_v2_answers() {
        let registry = || {
            let mut h = HeaderMap::new();
            h.insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
            h
        };
        let challenge_only = || {
            let mut h = HeaderMap::new();
            h.insert(
                "www-authenticate",
                HeaderValue::from_static("Bearer realm=\"https://auth.example/token\""),
            );
            h
        };
        let metadata = || {
            let mut h = HeaderMap::new();
            h.insert(
                "location",
                HeaderValue::from_static("http://169.254.169.254/latest/meta-data/"),
            );
            h
        };
        let cases: [(u16, HeaderMap, Option<Reason>); 10] = [
            (200, registry(), None),
            (401, registry(), None),
            (401, challenge_only(), None),
            (200, HeaderMap::new(), Some(Reason::NotARegistry)),
            (404, registry(), Some(Reason::NotARegistry)),
            (302, HeaderMap::new(), Some(Reason::NotARegistry)),
            (302, metadata(), Some(Reason::NotARegistry)),
            (503, registry(), Some(Reason::RegistryUnavailable)),
            (429, HeaderMap::new(), Some(Reason::RateLimited)),
            (403, HeaderMap::new(), Some(Reason::Forbidden)),
        ];
        for (status, headers, want) in cases {
            let got = judge("/v2/".into(), status, &headers)
                .err()
                .map(|e| e.reason);
            assert_eq!(got, want, "status {status}");
        }
    }

    #[test]
    fn evidence_names_the_path_asked() {
        let mut headers = HeaderMap::new();
        headers.insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
        let ok = judge("/v2/dockerhub/".into(), 200, &headers).unwrap();
        assert_eq!(
            ok.detail(),
            "GET /v2/dockerhub/ answered 200 OK, API registry/2.0"
        );
        let failed = judge("/proxy/v2/".into(), 404, &headers).unwrap_err();
        assert_eq!(
            failed.message,
            "GET /proxy/v2/ answered 404 Not Found: not a registry API"
        );
    }
}
