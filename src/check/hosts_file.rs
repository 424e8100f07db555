//! `/etc/hosts`, asked before DNS as the runtime's resolver (Go's, `net/hosts.go`) does by
//! default: a registry name pinned there (common on air-gapped nodes) is never sent to DNS.
//! Like Go, the file is looked at again at most every 5 seconds, and re-read only when its
//! modification time or size changed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::reread::Reread;

/// The hosts file and its last reading.
pub struct HostsFile {
    read: Reread<HashMap<String, Vec<IpAddr>>>,
}

impl HostsFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        HostsFile {
            read: Reread::unread(path, HashMap::new()),
        }
    }

    pub fn path(&self) -> &Path {
        self.read.path()
    }

    /// The addresses the file gives `host` (any case, with or without the final dot), in the
    /// file's order; none when the file does not name it or cannot be read (Go goes on to DNS).
    pub fn lookup(&self, host: &str) -> Vec<IpAddr> {
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        let by_name = self.read.get(
            |path| {
                // Go: a file that is gone names nothing; one that cannot be read keeps the last.
                if !path.exists() {
                    return Ok(HashMap::new());
                }
                crate::bounded_file::read(path, crate::bounded_file::HOSTS).map(|data| parse(&data))
            },
            |_| {},
        );
        by_name.get(&key).cloned().unwrap_or_default()
    }
}

/// hosts(5) as Go reads it: an address, then names; `#` starts a comment; a line whose first
/// word is no IP address is skipped; names are matched without case.
fn parse(data: &[u8]) -> HashMap<String, Vec<IpAddr>> {
    let mut by_name: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let text = line.split('#').next().unwrap_or_default();
        let mut words = text.split_whitespace();
        let Some(address) = words.next() else {
            continue;
        };
        // An IPv6 zone (`fe80::1%eth0`) cannot be dialled without its interface: the address alone.
        let Ok(ip) = address
            .split('%')
            .next()
            .unwrap_or_default()
            .parse::<IpAddr>()
        else {
            continue;
        };
        for name in words {
            let key = name.trim_end_matches('.').to_ascii_lowercase();
            let addresses = by_name.entry(key).or_default();
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    by_name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hosts_as_go_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(
            &path,
            b"127.0.0.1 localhost\n# 10.0.0.9 registry.corp\n10.0.0.5\tRegistry.Corp. mirror\n\
              not-an-ip registry.corp\nfd00::5 registry.corp # v6\n10.0.0.5 registry.corp\n\xff\n",
        )
        .unwrap();
        let hosts = HostsFile::new(&path);
        let shown = |host: &str| -> Vec<String> {
            hosts.lookup(host).iter().map(IpAddr::to_string).collect()
        };
        assert_eq!(shown("registry.corp"), ["10.0.0.5", "fd00::5"]);
        assert_eq!(shown("REGISTRY.corp."), ["10.0.0.5", "fd00::5"]);
        assert_eq!(shown("mirror"), ["10.0.0.5"]);
        assert!(shown("registry").is_empty());
        assert!(
            HostsFile::new(dir.path().join("missing"))
                .lookup("localhost")
                .is_empty()
        );
    }
}
