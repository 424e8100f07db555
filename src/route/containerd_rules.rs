//! Where containerd versions differ in how they read hosts.toml and pick a scheme: one rule set
//! per `Version.runtime_version`, each rule with the releases it holds for and the upstream code
//! it comes from (`remotes/docker/config/hosts.go`, `ConfigureHosts` / `getSortedHosts` /
//! `parseHostConfig`; `remotes/docker/resolver.go`, the HTTP fallback).

/// How this node's containerd reads hosts.toml, where versions differ. `Default`: unknown version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// A hosts.toml without a `[host]` table is refused ("invalid `host` tree") and the default
    /// route used: 1.6 (all), 1.7.0–1.7.31; accepted from 1.7.32 and 2.0.0 (containerd#10028).
    /// `None`: the version is not known.
    pub needs_host_table: Option<bool>,
    /// A registry on localhost or a loopback address with no hosts.toml of its own.
    pub localhost: Localhost,
    /// An `http://` host that also has TLS settings (`ca`, `client`, `skip_verify`).
    pub http_with_tls: HttpWithTls,
    /// The `referrers` capability is known from 2.2.0 (OCI referrers, #12309); earlier releases
    /// discard a hosts.toml that names it ("unknown capability").
    pub referrers_capability: bool,
    /// 2.x reads hosts only from `[host."…"]` tables (its TOML walk takes table headers): a host
    /// written as an inline table is silently ignored. 1.x reads it (unconfirmed upstream).
    pub ignores_inline_hosts: bool,
    /// What besides a plain-HTTP answer makes an HTTPS-first host fall back to HTTP.
    pub fallback: FallbackTriggers,
}

/// When an endpoint tried over HTTPS first is retried over plain HTTP (`remotes/docker/
/// resolver.go`, `HTTPFallback`, `isTLSError` / `isPortError`). A server that answers the TLS
/// hello in plain HTTP (`HTTP/…`) always is; these are the version-dependent extras.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FallbackTriggers {
    /// "TLS handshake timeout" falls back too: 1.6.32+, 1.7.16+, 2.x (containerd#10119).
    pub handshake_timeout: bool,
    /// A refused or timed-out connection falls back too, when no port was written (so HTTPS went
    /// to 443 and HTTP goes to 80): 1.7.24+, 2.x ("Allow fallback across default ports", #10274).
    pub connect_failure_without_port: bool,
}

/// containerd's HTTP fallback for one endpoint tried over HTTPS first: the port of the plain-HTTP
/// retry, and which failures of the HTTPS attempt lead to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpFallback {
    /// The written port, or 80 when none was written (the retry keeps the host as written).
    pub port: u16,
    pub on_handshake_timeout: bool,
    pub on_connect_failure: bool,
}

impl HttpFallback {
    /// The rule in words, for `targets` and the evidence.
    pub fn describe(&self) -> String {
        let mut when = vec!["the server answers plain HTTP"];
        if self.on_handshake_timeout {
            when.push("the TLS handshake times out");
        }
        if self.on_connect_failure {
            when.push("port 443 cannot be reached");
        }
        format!("HTTP on port {} when {}", self.port, when.join(" or "))
    }
}

/// The scheme containerd uses for a registry on localhost / loopback without a hosts.toml.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Localhost {
    /// 1.6.9–1.6.24, 1.7.0–1.7.6 (and pullwatch's choice when the version is unknown: Debian's
    /// 1.6.20): plain HTTP for any port.
    #[default]
    PlainHttp,
    /// 1.6.0–1.6.8: no special case, HTTPS verified like any registry.
    Https,
    /// 1.7.7 only (#9188): HTTPS first without verification on any port, then plain HTTP.
    HttpsFirst,
    /// 1.6.25+, 1.7.8+, 2.x (#9300/#9299, "ambiguous TLS fallback"): no port or `:443`, HTTPS
    /// without verification; `:80`, plain HTTP; any other port, HTTPS first without verification,
    /// then plain HTTP.
    ByPort,
}

/// The scheme containerd uses for an `http://` host that has TLS settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpWithTls {
    /// 1.6.0–1.6.24, 1.7.0–1.7.6: plain HTTP, the TLS settings unused.
    #[default]
    PlainHttp,
    /// 1.7.7: HTTPS first (with the settings), then plain HTTP, whatever the port.
    HttpsFirst,
    /// 1.6.25–1.6.39, 1.7.8–1.7.23: HTTPS first when a port other than 80 is written; plain
    /// HTTP without a port or on 80.
    HttpsFirstWithPort,
    /// 1.7.24+, 2.x: HTTPS first unless the port is 80 (no port included).
    HttpsFirstUnless80,
}

/// The scheme and port containerd uses for a host, and its HTTP fallback when it tries HTTPS first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub https: bool,
    pub port: u16,
    /// TLS verification skipped (containerd's localhost default).
    pub skip_verify: bool,
    pub fallback: Option<HttpFallback>,
}

impl Quirks {
    /// From `Version.runtime_version` (`1.6.20~ds1`, `v1.7.13`, `2.0.0`).
    pub fn for_version(version: &str) -> Self {
        let numbers: Vec<u32> = version
            .trim_start_matches('v')
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map_while(|n| n.parse().ok())
            .collect();
        let (major, minor, patch) = match numbers.as_slice() {
            [major, minor, patch, ..] => (*major, *minor, *patch),
            [major, minor] => (*major, *minor, 0),
            _ => return Quirks::default(),
        };
        let needs_host_table = Some(match (major, minor) {
            (1, 0..=6) => true,
            (1, 7) => patch < 32,
            (0, _) => true,
            _ => false,
        });
        let localhost = match (major, minor, patch) {
            (1, 0..=5, _) | (1, 6, 0..=8) => Localhost::Https,
            (1, 6, 9..=24) | (1, 7, 0..=6) => Localhost::PlainHttp,
            (1, 7, 7) => Localhost::HttpsFirst,
            (0, ..) => Localhost::Https,
            _ => Localhost::ByPort,
        };
        let http_with_tls = match (major, minor, patch) {
            (0, ..) | (1, 0..=5, _) | (1, 6, 0..=24) | (1, 7, 0..=6) => HttpWithTls::PlainHttp,
            (1, 7, 7) => HttpWithTls::HttpsFirst,
            (1, 6, _) | (1, 7, 8..=23) => HttpWithTls::HttpsFirstWithPort,
            _ => HttpWithTls::HttpsFirstUnless80,
        };
        let fallback = FallbackTriggers {
            handshake_timeout: matches!(
                (major, minor, patch),
                (1, 6, 32..) | (1, 7, 16..) | (2.., _, _)
            ),
            connect_failure_without_port: matches!(
                (major, minor, patch),
                (1, 7, 24..) | (2.., _, _)
            ),
        };
        Quirks {
            needs_host_table,
            localhost,
            http_with_tls,
            referrers_capability: (major, minor) >= (2, 2),
            ignores_inline_hosts: major >= 2,
            fallback,
        }
    }

    /// The fallback of an HTTPS-first host written with `written_port` (or none).
    fn http_fallback(&self, written_port: Option<u16>) -> HttpFallback {
        HttpFallback {
            port: written_port.unwrap_or(80),
            on_handshake_timeout: self.fallback.handshake_timeout,
            on_connect_failure: written_port.is_none()
                && self.fallback.connect_failure_without_port,
        }
    }

    /// HTTPS first on the written port (443 without one), falling back to plain HTTP.
    fn https_first_attempt(&self, written_port: Option<u16>, skip_verify: bool) -> Attempt {
        Attempt {
            https: true,
            port: written_port.unwrap_or(443),
            skip_verify,
            fallback: Some(self.http_fallback(written_port)),
        }
    }

    /// What containerd uses for the registry itself on localhost (written with `port` or none).
    pub fn localhost_attempt(&self, port: Option<u16>) -> Attempt {
        let plain = |port| Attempt {
            https: false,
            port,
            skip_verify: true,
            fallback: None,
        };
        match (self.localhost, port) {
            (Localhost::Https, port) => Attempt {
                https: true,
                port: port.unwrap_or(443),
                skip_verify: false,
                fallback: None,
            },
            (Localhost::PlainHttp, port) => plain(port.unwrap_or(80)),
            (Localhost::HttpsFirst, port) => self.https_first_attempt(port, true),
            (Localhost::ByPort, None | Some(443)) => Attempt {
                https: true,
                port: 443,
                skip_verify: true,
                fallback: None,
            },
            (Localhost::ByPort, Some(80)) => plain(80),
            (Localhost::ByPort, Some(port)) => self.https_first_attempt(Some(port), true),
        }
    }

    /// What containerd uses for an `http://` host that has TLS settings, written with
    /// `written_port` or none: plain HTTP, or HTTPS first with its fallback.
    pub fn http_with_tls_attempt(&self, written_port: Option<u16>, skip_verify: bool) -> Attempt {
        let https_first = match self.http_with_tls {
            HttpWithTls::PlainHttp => false,
            HttpWithTls::HttpsFirst => true,
            HttpWithTls::HttpsFirstWithPort => written_port.is_some_and(|p| p != 80),
            HttpWithTls::HttpsFirstUnless80 => written_port != Some(80),
        };
        if https_first {
            self.https_first_attempt(written_port, skip_verify)
        } else {
            Attempt {
                https: false,
                port: written_port.unwrap_or(80),
                skip_verify,
                fallback: None,
            }
        }
    }
}

/// `localhost` or a loopback address, as containerd's `docker.IsLocalhost`.
pub fn is_localhost(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        version: &'static str,
        needs_host_table: Option<bool>,
        localhost: Localhost,
        http_with_tls: HttpWithTls,
    }

    /// Each row from containerd's tags, as read in remotes/docker/config/hosts.go at that release.
    #[test]
    fn rules_by_version() {
        let cases = [
            Case {
                version: "1.6.4",
                needs_host_table: Some(true),
                localhost: Localhost::Https,
                http_with_tls: HttpWithTls::PlainHttp,
            },
            Case {
                version: "1.6.20~ds1",
                needs_host_table: Some(true),
                localhost: Localhost::PlainHttp,
                http_with_tls: HttpWithTls::PlainHttp,
            },
            Case {
                version: "v1.6.25",
                needs_host_table: Some(true),
                localhost: Localhost::ByPort,
                http_with_tls: HttpWithTls::HttpsFirstWithPort,
            },
            Case {
                version: "1.7.6",
                needs_host_table: Some(true),
                localhost: Localhost::PlainHttp,
                http_with_tls: HttpWithTls::PlainHttp,
            },
            Case {
                version: "1.7.7",
                needs_host_table: Some(true),
                localhost: Localhost::HttpsFirst,
                http_with_tls: HttpWithTls::HttpsFirst,
            },
            Case {
                version: "v1.7.13",
                needs_host_table: Some(true),
                localhost: Localhost::ByPort,
                http_with_tls: HttpWithTls::HttpsFirstWithPort,
            },
            Case {
                version: "1.7.24",
                needs_host_table: Some(true),
                localhost: Localhost::ByPort,
                http_with_tls: HttpWithTls::HttpsFirstUnless80,
            },
            Case {
                version: "1.7.32",
                needs_host_table: Some(false),
                localhost: Localhost::ByPort,
                http_with_tls: HttpWithTls::HttpsFirstUnless80,
            },
            Case {
                version: "2.0.0",
                needs_host_table: Some(false),
                localhost: Localhost::ByPort,
                http_with_tls: HttpWithTls::HttpsFirstUnless80,
            },
            Case {
                version: "v2.1.1-k3s1",
                needs_host_table: Some(false),
                localhost: Localhost::ByPort,
                http_with_tls: HttpWithTls::HttpsFirstUnless80,
            },
            Case {
                version: "2.2.0",
                needs_host_table: Some(false),
                localhost: Localhost::ByPort,
                http_with_tls: HttpWithTls::HttpsFirstUnless80,
            },
            Case {
                version: "devel",
                needs_host_table: None,
                localhost: Localhost::PlainHttp,
                http_with_tls: HttpWithTls::PlainHttp,
            },
        ];
        for case in cases {
            let got = Quirks::for_version(case.version);
            assert_eq!(
                got,
                Quirks {
                    needs_host_table: case.needs_host_table,
                    localhost: case.localhost,
                    http_with_tls: case.http_with_tls,
                    referrers_capability: case.version.starts_with("2.2"),
                    ignores_inline_hosts: case.version.trim_start_matches('v').starts_with('2'),
                    fallback: got.fallback,
                },
                "{}",
                case.version
            );
        }
    }

    #[test]
    fn localhost_by_port_since_1_6_25() {
        let rules = Quirks::for_version("2.0.0");
        let scheme = |port| {
            let a = rules.localhost_attempt(port);
            (a.https, a.port, a.skip_verify, a.fallback.map(|f| f.port))
        };
        assert_eq!(scheme(None), (true, 443, true, None));
        assert_eq!(scheme(Some(80)), (false, 80, true, None));
        assert_eq!(scheme(Some(5000)), (true, 5000, true, Some(5000)));
        let old = Quirks::for_version("1.6.20");
        assert!(!old.localhost_attempt(Some(5000)).https);
        assert!(Quirks::for_version("v2.2.0").referrers_capability);
        assert!(!Quirks::for_version("2.1.4").referrers_capability);
    }

    /// An `http://` host with TLS settings, by version and by the port written (hosts.go at each
    /// tag: `if host.scheme == "http" && explicitTLS`, and the port test beside it).
    #[test]
    fn http_hosts_with_tls_settings() {
        /// HTTPS tried on this port, then plain HTTP on that one; `None`: plain HTTP only.
        type HttpsThenHttp = Option<(u16, u16)>;
        // (version, written port, what containerd does)
        let rows: [(&str, Option<u16>, HttpsThenHttp); 10] = [
            ("1.6.20", None, None),
            ("1.6.20", Some(5000), None),
            ("1.7.7", None, Some((443, 80))),
            ("1.7.7", Some(80), Some((80, 80))),
            ("1.7.13", None, None),
            ("1.7.13", Some(5000), Some((5000, 5000))),
            ("1.7.13", Some(80), None),
            ("1.7.24", None, Some((443, 80))),
            ("2.0.0", Some(80), None),
            ("2.0.0", Some(8443), Some((8443, 8443))),
        ];
        for (version, port, want) in rows {
            let attempt = Quirks::for_version(version).http_with_tls_attempt(port, false);
            let got = attempt
                .fallback
                .map(|f| (attempt.port, f.port))
                .filter(|_| attempt.https);
            assert_eq!(got, want, "containerd {version}, port {port:?}");
            if want.is_none() {
                assert_eq!((attempt.https, attempt.port), (false, port.unwrap_or(80)));
            }
        }
    }

    /// What besides a plain-HTTP answer falls back, by version (resolver.go at each tag:
    /// `isTLSError`'s "TLS handshake timeout", `isPortError`).
    #[test]
    fn fallback_triggers_by_version() {
        // (version, handshake timeout, connect failure on :443 without a written port)
        let rows = [
            ("1.6.25", false, false),
            ("1.6.31", false, false),
            ("1.6.32", true, false),
            ("1.6.39", true, false),
            ("1.7.8", false, false),
            ("1.7.15", false, false),
            ("1.7.16", true, false),
            ("1.7.23", true, false),
            ("1.7.24", true, true),
            ("2.0.0", true, true),
            ("2.2.1", true, true),
        ];
        for (version, timeout, connect) in rows {
            let rules = Quirks::for_version(version);
            assert_eq!(
                (
                    rules.fallback.handshake_timeout,
                    rules.fallback.connect_failure_without_port
                ),
                (timeout, connect),
                "containerd {version}"
            );
            // A written port never falls back on a connection failure.
            assert!(!rules.http_fallback(Some(5000)).on_connect_failure);
        }
        let fallback = Quirks::for_version("2.0.0").http_fallback(None);
        assert_eq!(
            fallback.describe(),
            "HTTP on port 80 when the server answers plain HTTP or the TLS handshake times out or port 443 cannot be reached"
        );
    }
}
