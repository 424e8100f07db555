//! resolv.conf as the runtime reads it: containerd and CRI-O resolve registry names with Go's
//! own resolver, so its rules are modelled here (Go's `net/dnsconfig_unix.go` and the name list
//! of `net/dnsclient_unix.go`, unchanged in substance from Go 1.17 through 1.25).

use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::Duration;

/// Go reads at most this many `nameserver` lines (`maxNameservers`).
const MAX_NAMESERVERS: usize = 3;
/// Go's caps on the options.
const MAX_NDOTS: usize = 15;
/// Go takes any number of attempts; glibc at most 5, and so does the check: against a server
/// that refuses at once, more rounds only send more packets, they cannot change the answer.
const MAX_ATTEMPTS: usize = 5;
/// Go's `dtoi` stops counting here.
const GO_DTOI_BIG: usize = 0xFF_FFFF;

/// The settings of one resolv.conf, with Go's defaults for what it leaves out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvConf {
    /// Port 53 of each usable `nameserver`, in order, at most three.
    pub servers: Vec<SocketAddr>,
    /// The `search` (or `domain`) suffixes, rooted (ending in a dot); the last such line wins.
    pub search: Vec<String>,
    /// `options ndots:N` (default 1, at most 15).
    pub ndots: usize,
    /// `options timeout:N`: the wait for one answer (default 5 s, at least 1 s).
    pub timeout: Duration,
    /// `options attempts:N`: rounds over the servers (default 2, at least 1, at most 5).
    pub attempts: usize,
    /// `options rotate`: each lookup starts at the next server.
    pub rotate: bool,
    /// `options single-request` (or `-reopen`): A, then AAAA, not both at once.
    pub single_request: bool,
    /// `options use-vc` (`usevc`, `tcp`): TCP only.
    pub use_tcp: bool,
}

/// Whether the file names a nameserver at all; Go falls back to localhost without one, the
/// agent refuses the file instead (a pod's resolv.conf always has one, so a file without any is
/// the wrong file).
#[derive(Debug, PartialEq, Eq)]
pub enum Nameservers {
    Usable,
    /// No `nameserver` line at all.
    None,
    /// `nameserver` lines, but the first (1-based `line`) names no IP address.
    NotAnAddress {
        line: usize,
        value: String,
    },
}

impl ResolvConf {
    /// Parses resolv.conf(5) text as Go does: the first word of a line is the keyword, `#` and
    /// `;` start comments, unknown keywords and options are ignored, a line that is not UTF-8 is
    /// skipped; a `nameserver` that is no IP address is ignored.
    pub fn parse(data: &[u8]) -> (ResolvConf, Nameservers) {
        let mut conf = ResolvConf {
            servers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
            rotate: false,
            single_request: false,
            use_tcp: false,
        };
        let mut first_bad = None;
        for (index, line) in data.split(|b| *b == b'\n').enumerate() {
            // Go: a comment is a line that starts with `#` or `;`; elsewhere they are text.
            if line.first().is_some_and(|b| *b == b'#' || *b == b';') {
                continue;
            }
            // Fields split on ASCII space, tab and CR only; bytes that are not UTF-8 stay in
            // their field (and make it match nothing), as in Go's byte-wise parser.
            let fields: Vec<String> = line
                .split(|b| matches!(b, b' ' | b'\t' | b'\r'))
                .filter(|field| !field.is_empty())
                .map(|field| String::from_utf8_lossy(field).into_owned())
                .collect();
            let words: Vec<&str> = fields.iter().map(String::as_str).collect();
            match words.as_slice() {
                ["nameserver", rest @ ..] => {
                    let value = rest.first().copied().unwrap_or_default();
                    match nameserver(value) {
                        Some(server) if conf.servers.len() < MAX_NAMESERVERS => {
                            conf.servers.push(server);
                        }
                        Some(_) => {}
                        None => {
                            first_bad.get_or_insert(Nameservers::NotAnAddress {
                                line: index + 1,
                                value: value.to_string(),
                            });
                        }
                    }
                }
                ["domain", domain, ..] => conf.search = vec![rooted(domain)],
                ["search", domains @ ..] => {
                    conf.search = domains
                        .iter()
                        .map(|d| rooted(d))
                        .filter(|d| d != ".")
                        .collect();
                }
                ["options", options @ ..] => {
                    for option in options {
                        conf.option(option);
                    }
                }
                _ => {}
            }
        }
        let found = match (conf.servers.is_empty(), first_bad) {
            (false, _) => Nameservers::Usable,
            (true, Some(bad)) => bad,
            (true, None) => Nameservers::None,
        };
        (conf, found)
    }

    fn option(&mut self, option: &str) {
        let number = |value: &str| go_dtoi(value);
        if let Some(value) = option.strip_prefix("ndots:") {
            self.ndots = number(value).unwrap_or(0).min(MAX_NDOTS);
        } else if let Some(value) = option.strip_prefix("timeout:") {
            self.timeout = Duration::from_secs(number(value).unwrap_or(0).max(1) as u64);
        } else if let Some(value) = option.strip_prefix("attempts:") {
            self.attempts = number(value).unwrap_or(0).clamp(1, MAX_ATTEMPTS);
        } else {
            match option {
                "rotate" => self.rotate = true,
                "single-request" | "single-request-reopen" => self.single_request = true,
                "use-vc" | "usevc" | "tcp" => self.use_tcp = true,
                _ => {}
            }
        }
    }

    /// Go's default search list when resolv.conf leaves it empty: the domain of this host's
    /// name (`node-1.corp.example` searches `corp.example.`).
    pub fn with_default_search(mut self, hostname: &str) -> Self {
        if self.search.is_empty()
            && let Some((_, domain)) = hostname.trim().split_once('.')
            && !domain.is_empty()
        {
            self.search = vec![rooted(domain)];
        }
        self
    }

    /// The names asked for `host`, in order (Go's `nameList`): a rooted name alone; else the
    /// name itself first when it has at least `ndots` dots, then each search suffix, then the
    /// name itself if not yet asked. Names over 254 bytes and `.onion` names are left out.
    pub fn names(&self, host: &str) -> Vec<String> {
        let rooted = host.ends_with('.');
        if host.len() > 254 || (host.len() == 254 && !rooted) {
            return vec![];
        }
        if rooted {
            return if avoid(host) {
                vec![]
            } else {
                vec![host.to_string()]
            };
        }
        let enough_dots = host.matches('.').count() >= self.ndots;
        let name = format!("{host}.");
        let mut names = Vec::with_capacity(1 + self.search.len());
        if enough_dots && !avoid(&name) {
            names.push(name.clone());
        }
        for suffix in &self.search {
            let fqdn = format!("{name}{suffix}");
            if !avoid(&fqdn) && fqdn.len() <= 254 {
                names.push(fqdn);
            }
        }
        if !enough_dots && !avoid(&name) {
            names.push(name);
        }
        names
    }
}

/// A `nameserver` value Go accepts, port 53 of it: an IP address, an IPv6 one possibly with a
/// `%zone` (an interface index, or a name whose index the kernel gives in sysfs; a name it does
/// not know leaves the address without a zone, and a link-local one then cannot be reached).
fn nameserver(value: &str) -> Option<SocketAddr> {
    let (address, zone) = match value.split_once('%') {
        Some((address, zone)) => (address, Some(zone)),
        None => (value, None),
    };
    match (address.parse::<IpAddr>().ok()?, zone) {
        (ip, None) => Some(SocketAddr::new(ip, 53)),
        (IpAddr::V6(v6), Some(zone)) if !zone.is_empty() => {
            let scope = zone
                .parse::<u32>()
                .ok()
                .or_else(|| interface_index(zone))
                .unwrap_or(0);
            Some(SocketAddr::V6(SocketAddrV6::new(v6, 53, 0, scope)))
        }
        _ => None,
    }
}

/// The kernel's index of interface `name`, from sysfs.
fn interface_index(name: &str) -> Option<u32> {
    if name.contains('/') || name.starts_with('.') {
        return None;
    }
    let path = format!("/sys/class/net/{name}/ifindex");
    let text =
        crate::bounded_file::read(std::path::Path::new(&path), crate::bounded_file::SYS_VALUE)
            .ok()?;
    String::from_utf8_lossy(&text).trim().parse().ok()
}

fn rooted(name: &str) -> String {
    match name.ends_with('.') {
        true => name.to_string(),
        false => format!("{name}."),
    }
}

/// Go never sends `.onion` names to DNS (RFC 7686).
fn avoid(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() >= 6 && name[name.len() - 6..].eq_ignore_ascii_case(".onion")
}

/// Go's `dtoi`: the leading decimal digits (at least one), stopping at 0xFFFFFF; else nothing.
fn go_dtoi(value: &str) -> Option<usize> {
    let digits: &str = &value[..value.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() {
        return None;
    }
    Some(
        digits
            .parse::<usize>()
            .unwrap_or(GO_DTOI_BIG)
            .min(GO_DTOI_BIG),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ResolvConf {
        ResolvConf::parse(text.as_bytes()).0
    }

    #[test]
    fn reads_options_with_gos_defaults_and_bounds() {
        let conf = parse("nameserver 10.96.0.10\n");
        assert_eq!(
            (conf.ndots, conf.timeout, conf.attempts, conf.rotate),
            (1, Duration::from_secs(5), 2, false)
        );
        let cases: [(&str, usize, u64, usize); 7] = [
            ("options ndots:5 timeout:2 attempts:3", 5, 2, 3),
            ("options ndots:99 timeout:0 attempts:0", 15, 1, 1),
            ("options ndots:x timeout:x attempts:x", 0, 1, 1),
            ("options ndots:3\noptions ndots:2", 2, 5, 2),
            // Only a line's first byte starts a comment: `#` here is an unknown option.
            ("options   timeout:7   # attempts:4", 1, 7, 4),
            (
                "options attempts:99 timeout:99999999999999999999999999",
                1,
                0xFF_FFFF,
                5,
            ),
            ("options ndots:2abc", 2, 5, 2),
        ];
        for (options, ndots, timeout, attempts) in cases {
            let conf = parse(&format!("nameserver 10.0.0.1\n{options}\n"));
            assert_eq!(
                (conf.ndots, conf.timeout.as_secs(), conf.attempts),
                (ndots, timeout, attempts),
                "{options}"
            );
        }
        let flags = parse("nameserver ::1\noptions rotate single-request-reopen use-vc edns0\n");
        assert!(flags.rotate && flags.single_request && flags.use_tcp);
    }

    #[test]
    fn reads_nameservers_and_search_as_go_does() {
        let (conf, found) = ResolvConf::parse(
            b"search a.example b.example.\ndomain ignored.example\nsearch c.example .\n\
              nameserver 10.0.0.1\nnameserver dns.example\nnameserver fe80::1%lo\n\
              nameserver 10.0.0.2\nnameserver 10.0.0.3\n",
        );
        assert_eq!(found, Nameservers::Usable);
        assert_eq!(
            conf.search,
            ["c.example."],
            "the last search or domain line wins"
        );
        let servers: Vec<String> = conf.servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            servers,
            ["10.0.0.1:53", "[fe80::1%1]:53", "10.0.0.2:53"],
            "at most three, the bad one skipped"
        );
        assert_eq!(parse("domain corp.example\n").search, ["corp.example."]);
    }

    #[test]
    fn finds_a_usable_nameserver_line() {
        struct Case {
            input: &'static [u8],
            want: Nameservers,
        }
        let bad = |line, value: &str| Nameservers::NotAnAddress {
            line,
            value: value.to_string(),
        };
        let cases = [
            Case {
                input: b"nameserver 10.96.0.10\nsearch default.svc.cluster.local\n",
                want: Nameservers::Usable,
            },
            Case {
                input: b"  nameserver\tfe80::1%eth0 # link-local\n",
                want: Nameservers::Usable,
            },
            Case {
                input: b"nameserver dns.example\nnameserver 1.1.1.1\n",
                want: Nameservers::Usable,
            },
            Case {
                input: b"\xff\xfe garbage\nnameserver 127.0.0.53\n",
                want: Nameservers::Usable,
            },
            Case {
                input: b"",
                want: Nameservers::None,
            },
            Case {
                input: b"# nameserver 8.8.8.8\n; nameserver 8.8.4.4\nsearch example.org\n",
                want: Nameservers::None,
            },
            Case {
                input: b"\x00\x01\xff{\"not\": \"resolv.conf\"}\n",
                want: Nameservers::None,
            },
            Case {
                input: b"nameservers 8.8.8.8\n",
                want: Nameservers::None,
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
                // Go reads bytes: a stray byte after the address is just another field.
                input: b"nameserver 1.1.1.1 \xff\n",
                want: Nameservers::Usable,
            },
            Case {
                input: b"nameserver 8.8.8.8%eth0\n",
                want: bad(1, "8.8.8.8%eth0"),
            },
        ];
        for case in cases {
            assert_eq!(
                ResolvConf::parse(case.input).1,
                case.want,
                "{}",
                String::from_utf8_lossy(case.input)
            );
        }
    }

    #[test]
    fn follows_go_on_comments_zones_and_the_default_search() {
        let conf =
            parse("nameserver 10.0.0.1;x\nnameserver 10.0.0.2 ; old\nsearch a.example # b\n");
        let servers: Vec<String> = conf.servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(servers, ["10.0.0.2:53"], "`;` inside a value is no comment");
        assert_eq!(conf.search, ["a.example.", "#.", "b."]);
        let zoned = parse("nameserver fe80::1%7\nnameserver fe80::2%no-such-interface\n");
        let servers: Vec<String> = zoned.servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(servers, ["[fe80::1%7]:53", "[fe80::2]:53"]);

        let node = "node-1.corp.example";
        let none = parse("nameserver 10.0.0.1\n").with_default_search(node);
        assert_eq!(none.search, ["corp.example."]);
        let root_only = parse("nameserver 10.0.0.1\nsearch .\n").with_default_search(node);
        assert_eq!(root_only.search, ["corp.example."]);
        let own = parse("nameserver 10.0.0.1\nsearch x.example\n").with_default_search(node);
        assert_eq!(own.search, ["x.example."]);
        assert!(
            parse("nameserver 10.0.0.1\n")
                .with_default_search("node-1")
                .search
                .is_empty()
        );
    }

    #[test]
    fn lists_the_names_to_ask_as_go_does() {
        let conf = parse(
            "nameserver 10.0.0.1\nsearch ns.svc.cluster.local svc.cluster.local\noptions ndots:2\n",
        );
        let cases: [(&str, &[&str]); 5] = [
            // Fewer dots than ndots: the suffixes first, the name itself last.
            (
                "registry.corp",
                &[
                    "registry.corp.ns.svc.cluster.local.",
                    "registry.corp.svc.cluster.local.",
                    "registry.corp.",
                ],
            ),
            // Enough dots: the name itself first.
            (
                "quay.example.com",
                &[
                    "quay.example.com.",
                    "quay.example.com.ns.svc.cluster.local.",
                    "quay.example.com.svc.cluster.local.",
                ],
            ),
            ("rooted.example.", &["rooted.example."]),
            (
                "hidden.onion",
                &[
                    "hidden.onion.ns.svc.cluster.local.",
                    "hidden.onion.svc.cluster.local.",
                ],
            ),
            ("x.onion.", &[]),
        ];
        for (host, want) in cases {
            assert_eq!(conf.names(host), want, "{host}");
        }
        let long = format!("{}.example", "a".repeat(240));
        assert_eq!(
            conf.names(&long),
            [format!("{long}.")],
            "suffixed names over 254 bytes are dropped"
        );
        assert!(conf.names(&"a".repeat(254)).is_empty());
    }
}
