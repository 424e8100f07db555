//! The `dns` check: resolve a registry host as the runtime's resolver (Go's) would, with the
//! node's resolv.conf, cache off, A and AAAA asked apart and timed, so a broken family or a slow
//! server is visible. Either family suffices, as for Go; the whole lookup ends within the
//! check's budget.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use tracing::warn;

use super::dns_exchange::FamilyError;
pub use super::dns_search::MAX_ADDRESSES_PER_FAMILY;
use super::dns_search::{FamilyAnswer, settle, walk};
use super::dns_wire::Family;
use super::hosts_file::HostsFile;
use super::reread::Reread;
use super::resolv_conf::{Nameservers, ResolvConf};
use super::{CheckError, Evidence};
use crate::reason::Reason;

/// The node's resolver: its resolv.conf (looked at again every 5 seconds and re-read when it
/// changed, as Go does), its hosts file, and where `rotate` is. Nothing is cached: every check
/// asks the servers.
#[derive(Clone)]
pub struct DnsResolver {
    resolv_conf: Arc<Reread<Settings>>,
    /// `options rotate`: where the next lookup starts in the server list.
    next_server: Arc<AtomicUsize>,
    /// Asked first, as Go does.
    hosts: Arc<HostsFile>,
}

/// What a lookup uses of resolv.conf, and the nameservers as the evidence names them.
struct Settings {
    conf: ResolvConf,
    nameservers: String,
}

/// A resolv.conf that cannot be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    #[error("--resolv-conf {0}")]
    Read(#[from] crate::bounded_file::FileError),
    #[error("--resolv-conf {path}: no nameserver lines")]
    NoNameserver { path: String },
    #[error("--resolv-conf {path}: line {line}: nameserver {value:?} is not an IP address")]
    BadNameserver {
        path: String,
        line: usize,
        value: String,
    },
}

impl DnsResolver {
    /// Reads and parses `path` at start-up, so a bad file is a clear error, not a failed check.
    pub fn from_resolv_conf(path: &Path) -> Result<Self, ResolvConfError> {
        let settings = load(path)?;
        Ok(DnsResolver {
            resolv_conf: Arc::new(Reread::read_now(path, settings)),
            next_server: Arc::new(AtomicUsize::new(0)),
            hosts: Arc::new(HostsFile::new("/etc/hosts")),
        })
    }

    /// The settings to use now: read again when the file changed (see the reread module); a
    /// changed file that is no longer usable leaves the last good reading, with a warning.
    fn current(&self) -> Arc<Settings> {
        self.resolv_conf.get(load, |error| {
            warn!("{error}; the last usable reading is kept")
        })
    }

    /// The same resolver with another hosts file than `/etc/hosts` (for tests).
    pub fn with_hosts_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.hosts = Arc::new(HostsFile::new(path));
        self
    }
}

/// What the lookup found.
#[derive(Clone, Debug)]
pub struct DnsOutcome {
    pub v4: Vec<IpAddr>,
    pub v6: Vec<IpAddr>,
    a: FamilyAnswer,
    aaaa: FamilyAnswer,
    nameservers: String,
    /// The hosts file that named the host (then nothing was asked of DNS).
    hosts_file: Option<String>,
}

impl DnsOutcome {
    /// Addresses to connect to, IPv4 first, capped per family.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.v4.iter().chain(&self.v6).copied().collect()
    }

    /// For a host that is already an IP address: no lookup happens, as in the runtime.
    pub fn literal(ip: IpAddr) -> Self {
        let answer = FamilyAnswer {
            result: Err(FamilyError::NoData),
            took: Duration::ZERO,
        };
        let (v4, v6) = if ip.is_ipv4() {
            (vec![ip], vec![])
        } else {
            (vec![], vec![ip])
        };
        DnsOutcome {
            v4,
            v6,
            a: answer.clone(),
            aaaa: answer,
            nameservers: String::new(),
            hosts_file: None,
        }
    }
}

impl Evidence for DnsOutcome {
    fn detail(&self) -> String {
        if let Some(hosts_file) = &self.hosts_file {
            return format!(
                "A {}, AAAA {} ({hosts_file}, no DNS query)",
                self.a, self.aaaa
            );
        }
        if self.nameservers.is_empty() {
            return format!("{} is an IP address, no lookup", self.addresses()[0]);
        }
        format!(
            "A {}, AAAA {} (nameserver {})",
            self.a, self.aaaa, self.nameservers
        )
    }
}

/// The dns check failed: no usable address.
#[derive(Debug)]
pub struct LookupFailed {
    host: String,
    a: FamilyAnswer,
    aaaa: FamilyAnswer,
    nameservers: String,
    reason: Reason,
    /// Why `host` is no DNS name (then nothing was asked, as in the runtime's resolver).
    invalid_name: Option<String>,
}

impl std::fmt::Display for LookupFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (host, a, aaaa) = (&self.host, &self.a, &self.aaaa);
        match &self.invalid_name {
            Some(problem) => write!(
                f,
                "{host}: not a DNS name ({problem}); no query sent: the runtime's Go resolver answers \"no such host\" to it"
            ),
            None => write!(
                f,
                "{host}: A {a}, AAAA {aaaa} (nameserver {})",
                self.nameservers
            ),
        }
    }
}

impl std::error::Error for LookupFailed {}

impl CheckError for LookupFailed {
    fn reason(&self) -> Reason {
        self.reason
    }
}

/// Resolves `host` (a name, not an IP literal) as Go's resolver does (`goLookupIPCNAMEOrder`):
/// the hosts file first, then the search list's names in Go's order until one gives an address,
/// A and AAAA asked at once (one after the other with `single-request`; the walk is in the
/// search module); all of it within `budget`. One family's addresses suffice: a server that
/// answers A but drops AAAA still resolves, its AAAA shown as timed out. `budget` is shorter than
/// the caller's timeout, so the family that never answers is cut here and the one that did is
/// not lost with it.
pub async fn check(
    resolver: &DnsResolver,
    host: &str,
    budget: Duration,
) -> Result<DnsOutcome, LookupFailed> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + budget;
    // Go asks the hosts file before it even judges the name.
    let pinned = resolver.hosts.lookup(host);
    if !pinned.is_empty() {
        return Ok(from_hosts_file(&resolver.hosts, pinned, start));
    }
    let settings = resolver.current();
    let names = settings.conf.names(host);
    let problem = super::dns_name::problem(host).or_else(|| {
        names
            .is_empty()
            .then(|| "a name Go's resolver never asks DNS for (.onion, or too long)".to_string())
    });
    if let Some(problem) = problem {
        return Err(LookupFailed {
            host: host.to_string(),
            a: FamilyAnswer::not_asked(),
            aaaa: FamilyAnswer::not_asked(),
            nameservers: settings.nameservers.clone(),
            reason: Reason::DnsNxdomain,
            invalid_name: Some(problem),
        });
    }
    let conf = &settings.conf;
    let original = format!("{}.", host.trim_end_matches('.'));
    let found_at = AtomicUsize::new(usize::MAX);
    let rotation = &*resolver.next_server;
    let walk = |family| walk(conf, rotation, &names, family, deadline, start, &found_at);
    let (a, aaaa) = match conf.single_request {
        true => (walk(Family::A).await, walk(Family::Aaaa).await),
        false => tokio::join!(walk(Family::A), walk(Family::Aaaa)),
    };
    let (a, aaaa) = settle(&names, &original, a, aaaa);
    let v4 = a.result.clone().unwrap_or_default();
    let v6 = aaaa.result.clone().unwrap_or_default();
    if v4.is_empty() && v6.is_empty() {
        let reason = combined_reason(&a.result, &aaaa.result);
        return Err(LookupFailed {
            host: host.to_string(),
            a,
            aaaa,
            nameservers: settings.nameservers.clone(),
            reason,
            invalid_name: None,
        });
    }
    Ok(DnsOutcome {
        v4,
        v6,
        a,
        aaaa,
        nameservers: settings.nameservers.clone(),
        hosts_file: None,
    })
}

/// Reads and checks resolv.conf at `path`.
fn load(path: &Path) -> Result<Settings, ResolvConfError> {
    let shown = path.display().to_string();
    let data = crate::bounded_file::read(path, crate::bounded_file::RESOLV_CONF)?;
    let (conf, found) = ResolvConf::parse(&data);
    match found {
        Nameservers::Usable => {}
        Nameservers::None => return Err(ResolvConfError::NoNameserver { path: shown }),
        Nameservers::NotAnAddress { line, value } => {
            return Err(ResolvConfError::BadNameserver {
                path: shown,
                line,
                value,
            });
        }
    }
    let conf = conf.with_default_search(&hostname());
    let nameservers = conf
        .servers
        .iter()
        .map(|server| server.ip().to_string())
        .collect::<Vec<_>>()
        .join(",");
    Ok(Settings { conf, nameservers })
}

/// This host's name, as Go's `os.Hostname` reads it on Linux; empty when unreadable.
fn hostname() -> String {
    let path = Path::new("/proc/sys/kernel/hostname");
    crate::bounded_file::read(path, crate::bounded_file::SYS_VALUE)
        .map(|name| String::from_utf8_lossy(&name).trim().to_string())
        .unwrap_or_default()
}

/// The outcome when the hosts file names the host: its addresses, capped per family.
fn from_hosts_file(hosts: &HostsFile, addresses: Vec<IpAddr>, start: Instant) -> DnsOutcome {
    let family = |v4: bool| {
        let mut found: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv4() == v4)
            .collect();
        found.truncate(MAX_ADDRESSES_PER_FAMILY);
        found
    };
    let answer = |found: &Vec<IpAddr>| FamilyAnswer {
        result: match found.is_empty() {
            true => Err(FamilyError::NoData),
            false => Ok(found.clone()),
        },
        took: start.elapsed(),
    };
    let (v4, v6) = (family(true), family(false));
    DnsOutcome {
        a: answer(&v4),
        aaaa: answer(&v6),
        v4,
        v6,
        nameservers: String::new(),
        hosts_file: Some(hosts.path().display().to_string()),
    }
}

/// Both families failed: the more specific answer wins (a missing name beats a flaky server).
fn combined_reason(
    a: &Result<Vec<IpAddr>, FamilyError>,
    aaaa: &Result<Vec<IpAddr>, FamilyError>,
) -> Reason {
    let errors = [a.as_ref().err(), aaaa.as_ref().err()];
    let any = |want: fn(&FamilyError) -> bool| errors.iter().flatten().any(|e| want(e));
    if any(|e| *e == FamilyError::NxDomain) {
        Reason::DnsNxdomain
    } else if any(|e| matches!(e, FamilyError::ServerFailure(_))) {
        Reason::DnsServfail
    } else if any(|e| {
        matches!(
            e,
            FamilyError::Timeout | FamilyError::NotSent(_) | FamilyError::NoAnswer(_)
        )
    }) {
        Reason::DnsTimeout
    } else {
        Reason::DnsNoAddresses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combines_family_answers_into_one_reason() {
        use FamilyError::*;
        let server = || ServerFailure("SERVFAIL".into());
        let not_sent = || NotSent("udp 10.0.0.10:53: Operation not permitted (os error 1)".into());
        let refused = || NoAnswer("udp 10.0.0.10:53: Connection refused (os error 111)".into());
        let cases: [(FamilyError, FamilyError, Reason); 9] = [
            (NxDomain, NxDomain, Reason::DnsNxdomain),
            (refused(), NoData, Reason::DnsTimeout),
            // A query that never left, or that the server's host refused, is no answer.
            (not_sent(), not_sent(), Reason::DnsTimeout),
            (NoData, not_sent(), Reason::DnsTimeout),
            (NoData, NxDomain, Reason::DnsNxdomain),
            (server(), NoData, Reason::DnsServfail),
            (Timeout, Timeout, Reason::DnsTimeout),
            (NoData, Timeout, Reason::DnsTimeout),
            (NoData, NoData, Reason::DnsNoAddresses),
        ];
        for (a, aaaa, want) in cases {
            assert_eq!(
                combined_reason(&Err(a.clone()), &Err(aaaa.clone())),
                want,
                "{a:?} {aaaa:?}"
            );
        }
    }

    #[test]
    fn bad_resolv_conf_names_the_file() {
        let missing = DnsResolver::from_resolv_conf(Path::new("/nonexistent/resolv.conf"))
            .err()
            .unwrap();
        assert!(
            missing
                .to_string()
                .starts_with("--resolv-conf /nonexistent/resolv.conf:"),
            "{missing}"
        );

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("resolv.conf");
        std::fs::write(&empty, "# nothing\nsearch example.org\n").unwrap();
        let error = DnsResolver::from_resolv_conf(&empty).err().unwrap();
        assert_eq!(
            error.to_string(),
            format!("--resolv-conf {}: no nameserver lines", empty.display())
        );
    }

    /// A name the hosts file pins is answered from it, with no query: the nameserver here is a
    /// closed port that would fail every query.
    #[tokio::test]
    async fn a_name_in_the_hosts_file_is_not_asked_of_dns() {
        let dir = tempfile::tempdir().unwrap();
        let resolv_conf = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "10.1.2.3 registry.air-gapped.example\n").unwrap();
        let resolver = DnsResolver::from_resolv_conf(&resolv_conf)
            .unwrap()
            .with_hosts_file(&hosts);
        let started = Instant::now();
        let outcome = check(
            &resolver,
            "registry.air-gapped.example",
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(outcome.addresses(), [IpAddr::from([10, 1, 2, 3])]);
        assert!(started.elapsed() < Duration::from_millis(500));
        let detail = outcome.detail();
        assert!(
            detail.starts_with("A 10.1.2.3 in ") && detail.contains("no DNS query"),
            "{detail}"
        );
        // A name it does not pin goes to DNS (and fails there: nothing listens).
        let other = check(&resolver, "other.example", Duration::from_secs(2)).await;
        assert!(other.is_err());
    }

    /// A changed resolv.conf is read again within 5 s, as Go does; one that became unusable
    /// leaves the last good reading in place.
    #[tokio::test]
    async fn a_changed_resolv_conf_is_read_again() {
        use crate::check::reread::LOOK_AGAIN_AFTER;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        let resolver = DnsResolver::from_resolv_conf(&path)
            .unwrap()
            .with_hosts_file(dir.path().join("no-hosts"));
        assert_eq!(resolver.current().nameservers, "127.0.0.1");

        std::fs::write(&path, "nameserver 127.0.0.2\nnameserver 127.0.0.3\n").unwrap();
        assert_eq!(
            resolver.current().nameservers,
            "127.0.0.1",
            "not before 5 s"
        );
        tokio::time::sleep(LOOK_AGAIN_AFTER + Duration::from_millis(100)).await;
        assert_eq!(resolver.current().nameservers, "127.0.0.2,127.0.0.3");
        let failed = check(&resolver, "registry.example", Duration::from_millis(300)).await;
        let detail = failed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            detail.contains("nameserver 127.0.0.2,127.0.0.3"),
            "{detail}"
        );

        std::fs::write(&path, "# emptied by mistake\n").unwrap();
        tokio::time::sleep(LOOK_AGAIN_AFTER + Duration::from_millis(100)).await;
        assert_eq!(resolver.current().nameservers, "127.0.0.2,127.0.0.3");
    }
}
