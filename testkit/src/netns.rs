//! A test "host" in its own network namespace, joined to the host namespace by a veth
//! pair on a /30 from 10.254.0.0/16, with an nft ruleset inside it that drops, resets,
//! or answers host-unreachable on three ports. Deleted on drop.
//!
//! The /30 index is claimed with a lock file (holding the owner's pid) so parallel test
//! processes never share addresses. A watchdog removes everything even when the test
//! process is killed; should that fail too, a lock whose owner is dead is reclaimed
//! together with the namespace and veth it left behind.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::watchdog::Watchdog;

/// Directory of the lock files that hand out /30 indexes.
const LOCK_DIR: &str = "/tmp/pullwatch-test-netns";
/// /30 blocks in 10.254.0.0/16.
const SLOTS: u32 = 1 << 14;
/// Ports of the nft ruleset inside the namespace.
pub const DROP_PORT: u16 = 7001;
pub const RESET_PORT: u16 = 7002;
pub const UNREACHABLE_PORT: u16 = 7003;
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// A network namespace with a veth link to the host namespace.
///
/// ```text
/// let ns = Netns::new();
/// let err = TcpStream::connect_timeout(&ns.drop_addr(), Duration::from_secs(1)).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::TimedOut);
/// ```
pub struct Netns {
    name: String,
    host_veth: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    /// Deletes the namespace, the veth and the lock file: on drop, or when this
    /// process dies without dropping it.
    cleanup: Option<Watchdog>,
}

impl Netns {
    /// Creates the namespace, the veth pair, addresses, routes and the nft ruleset.
    /// Panics naming the failed step (and if `ip` or `nft` is missing).
    pub fn new() -> Self {
        for tool in ["/usr/sbin/ip", "/usr/sbin/nft"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install iproute2 and nftables"
            );
        }
        let (slot, lock) = claim_slot();
        let base = u32::from(Ipv4Addr::new(10, 254, 0, 0)) + slot * 4;
        let (name, host_veth) = (format!("pw-n{slot}"), format!("pwh{slot}"));
        let lock = lock.to_str().expect("lock path is UTF-8").to_owned();
        let cleanup = Watchdog::arm(
            &format!("netns {name}"),
            "ip netns delete \"$1\" 2>/dev/null; ip link delete \"$2\" 2>/dev/null; rm -f \"$3\"",
            &[&name, &host_veth, &lock],
        );
        // Built before the first step, so a failed step still cleans up on unwind.
        let ns = Self {
            name,
            host_veth,
            host_ip: Ipv4Addr::from(base + 1),
            ns_ip: Ipv4Addr::from(base + 2),
            cleanup: Some(cleanup),
        };
        let ns_veth = format!("pwn{slot}");
        let (name, host_veth) = (ns.name.as_str(), ns.host_veth.as_str());
        let host_cidr = format!("{}/30", ns.host_ip);
        let ns_cidr = format!("{}/30", ns.ns_ip);
        ip(&["netns", "add", name]);
        ip(&[
            "link", "add", host_veth, "type", "veth", "peer", "name", &ns_veth, "netns", name,
        ]);
        ip(&["addr", "add", &host_cidr, "dev", host_veth]);
        ip(&["link", "set", host_veth, "up"]);
        ip(&["-n", name, "addr", "add", &ns_cidr, "dev", &ns_veth]);
        ip(&["-n", name, "link", "set", &ns_veth, "up"]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns.exec_ok("nft", &["-f", "-"], Some(ruleset().as_bytes()));
        ns
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's address (its end of the veth).
    pub fn ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// The host namespace's end of the veth.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// `ns_ip:DROP_PORT`: TCP SYNs are dropped (connect times out).
    pub fn drop_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ns_ip, DROP_PORT))
    }

    /// `ns_ip:RESET_PORT`: answered with a TCP reset (connection refused).
    pub fn reset_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ns_ip, RESET_PORT))
    }

    /// `ns_ip:UNREACHABLE_PORT`: answered with ICMP host-unreachable (no route to host).
    pub fn unreachable_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ns_ip, UNREACHABLE_PORT))
    }

    /// Runs `program args…` inside the namespace (bounded) and returns its output.
    pub fn exec(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> crate::cli::Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        crate::cli::run_bounded(&mut cmd, stdin, TOOL_TIMEOUT)
            .unwrap_or_else(|e| panic!("ip netns exec {} {program}: {e}", self.name))
    }

    /// Like [`Netns::exec`] but panics unless it exits 0; returns stdout.
    pub fn exec_ok(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.exec(program, args, stdin);
        assert_eq!(
            out.code,
            Some(0),
            "in netns {}: `{program} {}` failed:\n{}{}",
            self.name,
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out.stdout
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.fire();
        }
    }
}

/// The nft ruleset applied inside the namespace.
fn ruleset() -> String {
    format!(
        "table inet pullwatch_test {{\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority 0; policy accept;\n\
         \x20   tcp dport {DROP_PORT} drop\n\
         \x20   tcp dport {RESET_PORT} reject with tcp reset\n\
         \x20   tcp dport {UNREACHABLE_PORT} reject with icmpx type host-unreachable\n\
         \x20 }}\n\
         }}\n"
    )
}

fn ip(args: &[&str]) {
    crate::run_tool("ip", args, None, TOOL_TIMEOUT);
}

/// Deletes a namespace and host veth if they exist (deleting the namespace also
/// destroys the veth pair; the explicit delete covers a half-built pair).
fn remove_leftovers(name: &str, host_veth: &str) {
    let quiet = |args: &[&str]| {
        let _ = crate::cli::run_bounded(Command::new("ip").args(args), None, TOOL_TIMEOUT);
    };
    quiet(&["netns", "delete", name]);
    quiet(&["link", "delete", host_veth]);
}

/// Claims a free /30 index with an exclusive lock file, reclaiming stale ones.
fn claim_slot() -> (u32, PathBuf) {
    std::fs::create_dir_all(LOCK_DIR).unwrap_or_else(|e| panic!("create {LOCK_DIR}: {e}"));
    let start = (crate::entropy() % u64::from(SLOTS)) as u32;
    for i in 0..SLOTS {
        let slot = (start + i) % SLOTS;
        let path = PathBuf::from(format!("{LOCK_DIR}/{slot}.lock"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                write!(f, "{}", std::process::id()).expect("write lock file");
                // Whatever a dead owner of this slot left behind goes now.
                remove_leftovers(&format!("pw-n{slot}"), &format!("pwh{slot}"));
                return (slot, path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                let alive = owner
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                // An empty file may be a lock being written right now; leave it.
                if !owner.is_empty() && !alive {
                    let _ = std::fs::remove_file(&path);
                }
            }
            Err(e) => panic!("lock file {}: {e}", path.display()),
        }
    }
    panic!("no free /30 in 10.254.0.0/16 for a test netns");
}
