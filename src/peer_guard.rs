//! Where pullwatch refuses to go when a peer sends it there: a Bearer realm or a redirect to a
//! loopback or link-local address the route does not name (the cloud metadata service at
//! 169.254.169.254), and credentials to a realm on another host over cleartext HTTP. Stricter than
//! containerd, which follows both; README's "Known limits" says so.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use crate::check::dns::DnsResolver;

/// Loopback, link-local, unspecified: the node's own services and the metadata service, which no
/// registry has a reason to send a node to unless the route itself points there.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// What the route names for one endpoint: its host and the address pullwatch reached it at.
/// A target there is the registry's own, wherever it is; elsewhere, an internal one is refused.
#[derive(Clone, Debug)]
pub struct Named {
    pub host: String,
    pub address: Option<IpAddr>,
}

impl Named {
    /// Why `host` (reached at `ip`) must not be contacted, or `None` when it may.
    pub fn refuses(&self, host: &str, ip: IpAddr) -> Option<String> {
        let own = host.eq_ignore_ascii_case(&self.host) || self.address == Some(ip);
        (!own && is_internal(ip))
            .then(|| format!("{ip} is a loopback or link-local address the route does not name"))
    }

    /// [`Named::refuses`] for a URL whose host is an IP address (or `localhost`); a name is
    /// judged once resolved (see [`GuardedResolver`]).
    pub fn refuses_url(&self, url: &Url) -> Option<String> {
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let ip = match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) if is_localhost(host) => IpAddr::from([127, 0, 0, 1]),
            Err(_) => return None,
        };
        self.refuses(host, ip)
    }
}

fn is_localhost(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Credentials are not sent to a realm over cleartext HTTP on another host than the registry's
/// (containerd sends them): they would cross the network readable, to a server the node's
/// configuration never named.
pub fn cleartext_elsewhere(realm: &Url, registry_host: &str) -> bool {
    realm.scheme() == "http"
        && !realm
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .eq_ignore_ascii_case(registry_host)
}

/// The resolver of an endpoint's client for every host but the endpoint's own (which is pinned
/// to the address the tcp check reached): the dns check's own lookup (the node's resolv.conf and
/// hosts file, by the runtime's rules), without the internal addresses the route does not name,
/// so a redirect by name to the metadata service goes nowhere.
pub struct GuardedResolver {
    pub named: Named,
    dns: DnsResolver,
    /// The lookup's own bound.
    budget: Duration,
}

/// A redirect target resolved only to refused addresses.
#[derive(Debug, thiserror::Error)]
#[error("{host}: not followed: {why}")]
pub struct Refused {
    host: String,
    why: String,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (named, dns, budget) = (self.named.clone(), self.dns.clone(), self.budget);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = crate::check::dns::check(&dns, &host, budget)
                .await?
                .addresses()
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            let (kept, why) = keep_allowed(&named, &host, found);
            if kept.is_empty()
                && let Some(why) = why
            {
                return Err(
                    Box::new(Refused { host, why }) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The addresses of `host` that may be contacted, and why the first refused one was.
fn keep_allowed(
    named: &Named,
    host: &str,
    found: Vec<SocketAddr>,
) -> (Vec<SocketAddr>, Option<String>) {
    let mut why = None;
    let kept = found
        .into_iter()
        .filter(|addr| match named.refuses(host, addr.ip()) {
            Some(refused) => {
                why.get_or_insert(refused);
                false
            }
            None => true,
        })
        .collect();
    (kept, why)
}

/// The resolver for a client of the endpoint `named`: `dns`, each lookup within `budget`.
pub fn resolver(named: Named, dns: DnsResolver, budget: Duration) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { named, dns, budget })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(host: &str, address: Option<&str>) -> Named {
        Named {
            host: host.into(),
            address: address.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn internal_targets_the_route_does_not_name_are_refused() {
        struct Case {
            named: Named,
            url: &'static str,
            refused: bool,
        }
        let registry = || named("registry.test", Some("10.0.0.5"));
        let local = || named("registry.test", Some("127.0.0.1"));
        let cases = [
            Case {
                named: registry(),
                url: "http://169.254.169.254/latest/meta-data/",
                refused: true,
            },
            Case {
                named: registry(),
                url: "http://[fe80::1]/x",
                refused: true,
            },
            Case {
                named: registry(),
                url: "http://[::ffff:169.254.169.254]/x",
                refused: true,
            },
            Case {
                named: registry(),
                url: "http://127.0.0.1:8080/token",
                refused: true,
            },
            Case {
                named: registry(),
                url: "http://localhost:8080/token",
                refused: true,
            },
            Case {
                named: registry(),
                url: "http://0.0.0.0/token",
                refused: true,
            },
            // The registry's own address, or its own name: the route names it.
            Case {
                named: local(),
                url: "https://127.0.0.1:5001/token",
                refused: false,
            },
            Case {
                named: named("127.0.0.1", None),
                url: "https://127.0.0.1:5001/token",
                refused: false,
            },
            Case {
                named: registry(),
                url: "https://10.0.0.6/token",
                refused: false,
            },
            Case {
                named: registry(),
                url: "https://auth.docker.io/token",
                refused: false,
            },
        ];
        for case in cases {
            let url = Url::parse(case.url).unwrap();
            assert_eq!(
                case.named.refuses_url(&url).is_some(),
                case.refused,
                "{} from {:?}",
                case.url,
                case.named
            );
        }
        let found = vec![
            "169.254.169.254:0".parse().unwrap(),
            "93.184.216.34:0".parse().unwrap(),
        ];
        let (kept, why) = keep_allowed(&registry(), "mixed.test", found);
        assert_eq!(kept, vec!["93.184.216.34:0".parse().unwrap()]);
        assert!(why.unwrap().contains("169.254.169.254"));
    }

    #[test]
    fn credentials_stay_off_cleartext_realms_elsewhere() {
        let cases = [
            ("http://auth.test/token", "registry.test", true),
            ("http://169.254.169.254/token", "registry.test", true),
            ("http://registry.test:5001/token", "registry.test", false),
            ("https://auth.test/token", "registry.test", false),
            ("http://[::1]:5001/token", "::1", false),
        ];
        for (realm, registry, want) in cases {
            let realm = Url::parse(realm).unwrap();
            assert_eq!(cleartext_elsewhere(&realm, registry), want, "{realm}");
        }
    }
}
