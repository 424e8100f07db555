//! The kernel's own count of connections to one loopback address and port, and a gate that
//! refuses them: an nft table of the test's own (`inet`, input hook), deleted on drop.
//! Counts the SYNs that open connections, so it sees every connection a client makes, whether or
//! not the server logs it.

use std::net::SocketAddrV4;
use std::process::Command;

/// Counts and optionally refuses (TCP reset) new connections to `addr`.
pub struct PortGate {
    table: String,
    addr: SocketAddrV4,
}

impl PortGate {
    /// Installs the table; panics naming the nft command that failed.
    pub fn new(addr: SocketAddrV4) -> Self {
        let table = format!("pwgate_{}", crate::unique_id().replace('-', "_"));
        let gate = PortGate { table, addr };
        let (ip, port) = (addr.ip(), addr.port());
        let t = &gate.table;
        gate.nft(&format!(
            "add table inet {t}
             add chain inet {t} count {{ type filter hook input priority -10 ; }}
             add rule inet {t} count ip daddr {ip} tcp dport {port} tcp flags & (syn | ack) == syn counter
             add chain inet {t} gate {{ type filter hook input priority -5 ; }}"
        ));
        gate
    }

    /// Connections opened to the address so far (SYNs seen by the kernel).
    pub fn connections(&self) -> u64 {
        let listing = self.nft_output(&format!("list chain inet {} count", self.table));
        listing
            .split("counter packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in nft's listing:\n{listing}"))
    }

    /// New connections get a TCP reset (as from a closed port) until [`PortGate::open`].
    pub fn refuse(&self) {
        let (ip, port) = (self.addr.ip(), self.addr.port());
        self.nft(&format!(
            "add rule inet {} gate ip daddr {ip} tcp dport {port} reject with tcp reset",
            self.table
        ));
    }

    /// Lets connections through again.
    pub fn open(&self) {
        self.nft(&format!("flush chain inet {} gate", self.table));
    }

    fn nft(&self, script: &str) {
        self.nft_output(script);
    }

    fn nft_output(&self, script: &str) -> String {
        let output = Command::new("/usr/sbin/nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("piped stdin")
                    .write_all(script.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap_or_else(|e| panic!("run nft (is it installed?): {e}"));
        assert!(
            output.status.success(),
            "nft failed on:\n{script}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for PortGate {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}
