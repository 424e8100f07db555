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

/// One scheme containerd tries for a host, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub https: bool,
    pub port: u16,
    /// TLS verification skipped (containerd's localhost default).
    pub skip_verify: bool,
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
        Quirks {
            needs_host_table,
            localhost,
            http_with_tls,
            referrers_capability: (major, minor) >= (2, 2),
            ignores_inline_hosts: major >= 2,
        }
    }

    /// What containerd tries for the registry itself on localhost, in order.
    pub fn localhost_attempts(&self, port: Option<u16>) -> Vec<Attempt> {
        let https = |port| Attempt {
            https: true,
            port,
            skip_verify: true,
        };
        let http = |port| Attempt {
            https: false,
            port,
            skip_verify: true,
        };
        match (self.localhost, port) {
            (Localhost::Https, port) => vec![Attempt {
                skip_verify: false,
                ..https(port.unwrap_or(443))
            }],
            (Localhost::PlainHttp, port) => vec![http(port.unwrap_or(80))],
            (Localhost::HttpsFirst, port) => {
                vec![https(port.unwrap_or(443)), http(port.unwrap_or(80))]
            }
            (Localhost::ByPort, None | Some(443)) => vec![https(port.unwrap_or(443))],
            (Localhost::ByPort, Some(80)) => vec![http(80)],
            (Localhost::ByPort, Some(port)) => vec![https(port), http(port)],
        }
    }

    /// Whether an `http://` host with TLS settings (written with `port` or none) is tried over
    /// HTTPS first.
    pub fn https_first(&self, port: Option<u16>) -> bool {
        match self.http_with_tls {
            HttpWithTls::PlainHttp => false,
            HttpWithTls::HttpsFirst => true,
            HttpWithTls::HttpsFirstWithPort => port.is_some_and(|p| p != 80),
            HttpWithTls::HttpsFirstUnless80 => port != Some(80),
        }
    }
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
                },
                "{}",
                case.version
            );
        }
    }

    #[test]
    fn localhost_by_port_since_1_6_25() {
        let rules = Quirks::for_version("2.0.0");
        let schemes = |port| -> Vec<(bool, u16, bool)> {
            rules
                .localhost_attempts(port)
                .into_iter()
                .map(|a| (a.https, a.port, a.skip_verify))
                .collect()
        };
        assert_eq!(schemes(None), [(true, 443, true)]);
        assert_eq!(schemes(Some(80)), [(false, 80, true)]);
        assert_eq!(
            schemes(Some(5000)),
            [(true, 5000, true), (false, 5000, true)]
        );
        let old = Quirks::for_version("1.6.20");
        assert!(!old.localhost_attempts(Some(5000))[0].https);
        assert!(rules.https_first(None) && !rules.https_first(Some(80)));
        assert!(Quirks::for_version("v2.2.0").referrers_capability);
        assert!(!Quirks::for_version("2.1.4").referrers_capability);
        let mid = Quirks::for_version("1.7.13");
        assert!(!mid.https_first(None) && mid.https_first(Some(5000)));
    }
}
