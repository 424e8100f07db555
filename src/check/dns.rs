//! The `dns` check: resolve a registry host with the node's resolver config, cache off,
//! A and AAAA asked apart and timed, so a broken family or a slow server is visible. Either family
//! suffices, as for the runtime's (Go's) resolver; the whole lookup ends within the check's budget.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::{Resolver, TokioResolver};

use super::{CheckError, Evidence};
use crate::reason::Reason;
use crate::text::short_duration;

/// Addresses per family kept for the tcp check (up to 4 per family, as `docs/` says).
pub const MAX_ADDRESSES_PER_FAMILY: usize = 4;

/// A resolver built from a resolv.conf file, with its cache turned off.
#[derive(Clone)]
pub struct DnsResolver {
    resolver: TokioResolver,
    nameservers: String,
    /// Where queries go (port 53 of each nameserver), to find out why one could not be sent.
    servers: Vec<SocketAddr>,
}

/// A resolv.conf that cannot be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    #[error("--resolv-conf {0}")]
    Read(#[from] crate::bounded_file::FileError),
    #[error("--resolv-conf {path}: {message}")]
    Parse { path: String, message: String },
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
    /// Reads and parses `path` once (at start-up), so a bad file is a clear error, not a failed check.
    pub fn from_resolv_conf(path: &Path) -> Result<Self, ResolvConfError> {
        let shown = path.display().to_string();
        let data = crate::bounded_file::read(path, crate::bounded_file::RESOLV_CONF)?;
        // hickory logs each bad line and then fails with a bare "no nameservers found": a file
        // without a usable nameserver is refused here first, naming the file and the line.
        match scan_nameservers(&data) {
            NameserverScan::Usable => {}
            NameserverScan::None => return Err(ResolvConfError::NoNameserver { path: shown }),
            NameserverScan::NotAnAddress { line, value } => {
                return Err(ResolvConfError::BadNameserver {
                    path: shown,
                    line,
                    value,
                });
            }
        }
        let (config, mut options) = hickory_resolver::system_conf::parse_resolv_conf(&data)
            .map_err(|e| ResolvConfError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        let nameservers = config
            .name_servers()
            .iter()
            .map(|ns| ns.ip.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let servers = config
            .name_servers()
            .iter()
            .map(|ns| SocketAddr::new(ns.ip, 53))
            .collect();
        // Measure the network, not a cache: every check asks the server.
        options.cache_size = 0;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|e| ResolvConfError::Parse {
                path: shown,
                message: e.to_string(),
            })?;
        Ok(DnsResolver {
            resolver,
            nameservers,
            servers,
        })
    }
}

/// Whether a resolv.conf names a nameserver the resolver can use.
#[derive(Debug, PartialEq, Eq)]
enum NameserverScan {
    /// At least one `nameserver <IP>` line.
    Usable,
    /// No `nameserver` line at all.
    None,
    /// `nameserver` lines, but the first (1-based `line`) names no IP address.
    NotAnAddress { line: usize, value: String },
}

/// Reads the `nameserver` lines as resolv.conf(5) does (and hickory after it): the first word
/// of a line, `#` and `;` start comments, an IPv6 address may carry a `%zone`, a line that is
/// not UTF-8 is skipped.
fn scan_nameservers(data: &[u8]) -> NameserverScan {
    let mut first_bad = None;
    for (index, line) in data.split(|b| *b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let text = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = text.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let value = words.next().unwrap_or_default();
        let (address, zone) = match value.split_once('%') {
            Some((address, zone)) => (address, Some(zone)),
            None => (value, None),
        };
        match (address.parse::<IpAddr>(), zone) {
            (Ok(IpAddr::V6(_)), Some(zone)) if !zone.is_empty() => return NameserverScan::Usable,
            (Ok(_), None) => return NameserverScan::Usable,
            _ => {}
        }
        first_bad.get_or_insert(NameserverScan::NotAnAddress {
            line: index + 1,
            value: value.to_string(),
        });
    }
    first_bad.unwrap_or(NameserverScan::None)
}

/// What the lookup found.
#[derive(Clone, Debug)]
pub struct DnsOutcome {
    pub v4: Vec<IpAddr>,
    pub v6: Vec<IpAddr>,
    a: FamilyAnswer,
    aaaa: FamilyAnswer,
    nameservers: String,
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
        }
    }
}

impl Evidence for DnsOutcome {
    fn detail(&self) -> String {
        if self.nameservers.is_empty() {
            return format!("{} is an IP address, no lookup", self.addresses()[0]);
        }
        format!(
            "A {}, AAAA {} (nameserver {})",
            self.a, self.aaaa, self.nameservers
        )
    }
}

#[derive(Clone, Debug)]
struct FamilyAnswer {
    result: Result<Vec<IpAddr>, FamilyError>,
    took: Duration,
}

impl std::fmt::Display for FamilyAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(addresses) => {
                let shown: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
                write!(f, "{}", shown.join(" "))?;
            }
            Err(error) => write!(f, "{error}")?,
        }
        write!(f, " in {}", short_duration(self.took))
    }
}

/// How one family's query failed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FamilyError {
    NxDomain,
    NoData,
    ServerFailure(String),
    Timeout,
    /// The query could not even be sent (a local firewall makes `sendto` fail with EPERM): no
    /// answer, as for a timeout, with the OS's own words.
    NotSent(String),
}

impl std::fmt::Display for FamilyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FamilyError::NxDomain => f.write_str("NXDOMAIN"),
            FamilyError::NoData => f.write_str("none"),
            FamilyError::ServerFailure(what) => write!(f, "failed ({what})"),
            FamilyError::Timeout => f.write_str("timed out"),
            FamilyError::NotSent(why) => write!(f, "not sent ({why})"),
        }
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

/// Resolves `host` (a name, not an IP literal) with A and AAAA asked concurrently, each through
/// every search domain, all of it within `budget`. One family's addresses suffice, as in Go's
/// resolver (containerd, CRI-O), which waits for both answers, takes what either gave and fails
/// only when neither did: a server that answers A but drops AAAA still resolves, its AAAA shown as
/// timed out. `budget` is shorter than the caller's timeout, so the family that never answers is
/// cut here and the one that did is not lost with it.
pub async fn check(
    resolver: &DnsResolver,
    host: &str,
    budget: Duration,
) -> Result<DnsOutcome, LookupFailed> {
    let deadline = tokio::time::Instant::now() + budget;
    if let Some(problem) = super::dns_name::problem(host) {
        let not_asked = FamilyAnswer {
            result: Err(FamilyError::NoData),
            took: Duration::ZERO,
        };
        return Err(LookupFailed {
            host: host.to_string(),
            a: not_asked.clone(),
            aaaa: not_asked,
            nameservers: resolver.nameservers.clone(),
            reason: Reason::DnsNxdomain,
            invalid_name: Some(problem),
        });
    }
    let (mut a, mut aaaa) = tokio::join!(
        lookup(&resolver.resolver, host, RecordType::A, deadline),
        lookup(&resolver.resolver, host, RecordType::AAAA, deadline)
    );
    // hickory says only "no connections available" when no query could be sent: ask the OS why.
    if [&a, &aaaa]
        .iter()
        .any(|f| f.result == Err(FamilyError::NotSent(String::new())))
    {
        let why = unsendable(&resolver.servers).await;
        for family in [&mut a, &mut aaaa] {
            if family.result == Err(FamilyError::NotSent(String::new())) {
                family.result = Err(FamilyError::NotSent(why.clone()));
            }
        }
    }
    let v4 = a.result.clone().unwrap_or_default();
    let v6 = aaaa.result.clone().unwrap_or_default();
    if v4.is_empty() && v6.is_empty() {
        let reason = combined_reason(&a.result, &aaaa.result);
        return Err(LookupFailed {
            host: host.to_string(),
            a,
            aaaa,
            nameservers: resolver.nameservers.clone(),
            reason,
            invalid_name: None,
        });
    }
    Ok(DnsOutcome {
        v4,
        v6,
        a,
        aaaa,
        nameservers: resolver.nameservers.clone(),
    })
}

/// One family's lookup through the search list, given up at `deadline` (a timeout then: whatever
/// resolv.conf's `timeout`, `attempts` and search list add up to, the check's bound wins).
async fn lookup(
    resolver: &TokioResolver,
    host: &str,
    record_type: RecordType,
    deadline: tokio::time::Instant,
) -> FamilyAnswer {
    let start = Instant::now();
    let Ok(answer) = tokio::time::timeout_at(deadline, resolver.lookup(host, record_type)).await
    else {
        return FamilyAnswer {
            result: Err(FamilyError::Timeout),
            took: start.elapsed(),
        };
    };
    let result = match answer {
        Ok(lookup) => {
            let mut addresses: Vec<IpAddr> = lookup
                .answers()
                .iter()
                .filter_map(|record| record.data.ip_addr())
                .collect();
            addresses.truncate(MAX_ADDRESSES_PER_FAMILY);
            if addresses.is_empty() {
                Err(FamilyError::NoData)
            } else {
                Ok(addresses)
            }
        }
        Err(error) => Err(classify(&error)),
    };
    FamilyAnswer {
        result,
        took: start.elapsed(),
    }
}

fn classify(error: &NetError) -> FamilyError {
    match error {
        NetError::Dns(HickoryDnsError::NoRecordsFound(no_records)) => {
            match no_records.response_code {
                ResponseCode::NXDomain => FamilyError::NxDomain,
                ResponseCode::NoError => FamilyError::NoData,
                other => FamilyError::ServerFailure(rcode_name(other)),
            }
        }
        NetError::Dns(HickoryDnsError::ResponseCode(code)) => {
            FamilyError::ServerFailure(rcode_name(*code))
        }
        NetError::Timeout => FamilyError::Timeout,
        // Filled in by [`unsendable`]: hickory does not keep the OS error.
        NetError::NoConnections => FamilyError::NotSent(String::new()),
        NetError::Io(error) => FamilyError::NotSent(error.to_string()),
        other => FamilyError::ServerFailure(other.to_string()),
    }
}

/// Why a query to the nameservers cannot leave this node: the first server's OS error on a
/// one-packet send (a well-formed query for the root's NS, so a server that does get it is not
/// bothered by garbage), or a note that sending worked this time.
async fn unsendable(servers: &[SocketAddr]) -> String {
    // ID 0, RD, one question: ". IN NS".
    const ROOT_NS_QUERY: [u8; 17] = [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
    let Some(server) = servers.first() else {
        return "no nameserver".into();
    };
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sent = async {
        let socket = tokio::net::UdpSocket::bind(local).await?;
        socket.send_to(&ROOT_NS_QUERY, server).await
    };
    match tokio::time::timeout(Duration::from_secs(1), sent).await {
        Ok(Err(error)) => format!("udp {server}: {error}"),
        Ok(Ok(_)) => format!("udp {server}: no connection could be made"),
        Err(_) => format!("udp {server}: the send did not complete"),
    }
}

/// The mnemonic `dig` prints (SERVFAIL, REFUSED), which is what operators search for.
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        other => other.to_string(),
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
    } else if any(|e| matches!(e, FamilyError::Timeout | FamilyError::NotSent(_))) {
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
        let cases: [(FamilyError, FamilyError, Reason); 8] = [
            (NxDomain, NxDomain, Reason::DnsNxdomain),
            // A query that never left is no answer, whatever hickory calls it.
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
        // hickory's "no connections available" keeps no OS error: the check asks the OS itself.
        assert!(matches!(classify(&NetError::NoConnections), NotSent(_)));
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

    #[test]
    fn finds_a_usable_nameserver_line() {
        struct Case {
            input: &'static [u8],
            want: NameserverScan,
        }
        let bad = |line, value: &str| NameserverScan::NotAnAddress {
            line,
            value: value.to_string(),
        };
        let cases = [
            Case {
                input: b"nameserver 10.96.0.10\nsearch default.svc.cluster.local\n",
                want: NameserverScan::Usable,
            },
            Case {
                input: b"  nameserver\tfe80::1%eth0 # link-local\n",
                want: NameserverScan::Usable,
            },
            Case {
                input: b"nameserver dns.example\nnameserver 1.1.1.1\n",
                want: NameserverScan::Usable,
            },
            Case {
                input: b"\xff\xfe garbage\nnameserver 127.0.0.53\n",
                want: NameserverScan::Usable,
            },
            Case {
                input: b"",
                want: NameserverScan::None,
            },
            Case {
                input: b"# nameserver 8.8.8.8\n; nameserver 8.8.4.4\nsearch example.org\n",
                want: NameserverScan::None,
            },
            Case {
                input: b"\x00\x01\xff{\"not\": \"resolv.conf\"}\n",
                want: NameserverScan::None,
            },
            Case {
                input: b"nameservers 8.8.8.8\n",
                want: NameserverScan::None,
            },
            Case {
                input: b"search x\nnameserver dns.example\nnameserver\n",
                want: bad(2, "dns.example"),
            },
            Case {
                input: b"nameserver\n",
                want: bad(1, ""),
            },
            Case {
                input: b"nameserver 1.1.1.1 \xff\n",
                want: NameserverScan::None,
            },
            Case {
                input: b"nameserver 8.8.8.8%eth0\n",
                want: bad(1, "8.8.8.8%eth0"),
            },
        ];
        for case in cases {
            assert_eq!(
                scan_nameservers(case.input),
                case.want,
                "{}",
                String::from_utf8_lossy(case.input)
            );
        }
    }
}
