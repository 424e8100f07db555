//! What checks cost, measured from outside the agent, for the benches (`benches/footprint.rs`,
//! `benches/fleet.rs`): a real TLS registry reached by name and trusted through a containerd
//! certs.d directory (as the runtime would), the TCP connections it is sent (the kernel's count:
//! an nft rule counting SYNs to its port, in a table of its own), the requests and errors its own
//! log shows, and CPU time read from /proc in nanoseconds (`schedstat`, not clock ticks).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::certs::{Leaf, TestCa};
use crate::dns::DnsServer;
use crate::registry::Registry;
use crate::watchdog::Watchdog;

const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Real registries (distribution, TLS) serving every one of some DNS names, the testkit DNS
/// server answering those names with 127.0.0.1, and a containerd certs.d directory holding the
/// CA as `<name:port>/ca.crt` for each name: what an agent needs to check them as a node would.
pub struct TrustedRegistries {
    /// One registry process per [`TrustedRegistries::start`] `count`, all with the same
    /// certificate (valid for every name) and configuration.
    pub registries: Vec<Registry>,
    pub dns: DnsServer,
    pub ca: TestCa,
    names: Vec<String>,
    _leaf: Leaf,
    certs: TempDir,
}

impl TrustedRegistries {
    /// `count` registries serving `names`; the certs.d directory covers each name on the
    /// first registry's port (the one the agents are pointed at).
    pub fn start(names: &[String], count: usize) -> Self {
        let ca = TestCa::new("pullwatch bench CA");
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let leaf = ca.valid_leaf(&refs);
        let mut dns = DnsServer::builder();
        for name in names {
            dns = dns.a(name, Ipv4Addr::LOCALHOST);
        }
        let registries: Vec<Registry> = (0..count.max(1))
            .map(|_| {
                Registry::builder()
                    .tls(&leaf.cert_path, &leaf.key_path)
                    .start()
            })
            .collect();
        let certs = tempfile::Builder::new()
            .prefix("pw-certs-d-")
            .tempdir()
            .expect("certs.d tempdir");
        let port = registries[0].port();
        for name in names {
            let dir = certs.path().join(format!("{name}:{port}"));
            std::fs::create_dir_all(&dir).expect("certs.d host dir");
            std::fs::copy(ca.cert_path(), dir.join("ca.crt")).expect("certs.d ca.crt");
        }
        Self {
            registries,
            dns: dns.start(),
            ca,
            names: names.to_vec(),
            _leaf: leaf,
            certs,
        }
    }

    /// The registry the agents watch.
    pub fn watched(&self) -> &Registry {
        &self.registries[0]
    }

    /// `name:port` of each name on the watched registry, as `--registry` takes it.
    pub fn hosts(&self) -> Vec<String> {
        let port = self.watched().port();
        self.names.iter().map(|n| format!("{n}:{port}")).collect()
    }

    /// The agent's global flags: the DNS server's resolv.conf, the certs.d directory, and empty
    /// places for the other runtime and kubelet files (so the machine's own never count).
    pub fn global_args(&self) -> Vec<String> {
        let none = self.certs.path().join("none");
        let none = none.to_str().expect("UTF-8 tempdir");
        [
            "--resolv-conf",
            self.dns.resolv_conf_str(),
            "--containerd-certs-dir",
            self.certs.path().to_str().expect("UTF-8 tempdir"),
            "--registries-conf",
            none,
            "--kubelet-root-dir",
            none,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// The kernel's count of TCP connections opened to a local port: an nft rule in an `inet` table
/// of its own counting SYNs (without ACK) on the input hook. Loopback traffic passes that hook,
/// and no other process's traffic goes to the port, so this is the connections the server was
/// asked to accept. The table is deleted on drop, or by a watchdog if this process dies.
pub struct SynCounter {
    table: String,
    cleanup: Option<Watchdog>,
}

impl SynCounter {
    /// Creates the table, the counter and the rule; panics naming `nft` when that fails.
    pub fn new(port: u16) -> Self {
        let table = format!("pw_syn_{}", crate::unique_id().replace('-', "_"));
        let cleanup = Watchdog::arm(
            &format!("nft table {table}"),
            "nft delete table inet \"$1\" 2>/dev/null",
            &[&table],
        );
        let script = format!(
            "table inet {table} {{\n\
               counter syns {{ }}\n\
               chain input {{\n\
                 type filter hook input priority -300; policy accept;\n\
                 tcp dport {port} tcp flags & (syn | ack) == syn counter name syns\n\
               }}\n\
             }}\n"
        );
        crate::run_tool("nft", &["-f", "-"], Some(script.as_bytes()), TOOL_TIMEOUT);
        Self {
            table,
            cleanup: Some(cleanup),
        }
    }

    /// SYNs counted so far.
    pub fn count(&self) -> u64 {
        let out = crate::run_tool(
            "nft",
            &["list", "counter", "inet", &self.table, "syns"],
            None,
            TOOL_TIMEOUT,
        );
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in `nft list counter`: {out}"))
    }
}

impl Drop for SynCounter {
    fn drop(&mut self) {
        if let Some(w) = self.cleanup.take() {
            w.fire();
        }
    }
}

/// CPU time a whole process has used (every thread, user and system), in nanoseconds, from
/// `/proc/<pid>/task/*/schedstat`; threads that already ended are not counted. 0 once it is gone.
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .map(|task| schedstat(&task.path().join("schedstat")))
        .sum()
}

/// CPU time the calling thread has used, in nanoseconds (`/proc/thread-self/schedstat`).
pub fn thread_cpu() -> Duration {
    schedstat(Path::new("/proc/thread-self/schedstat"))
}

/// The first field of a `schedstat` file: nanoseconds on a CPU. 0 when unreadable.
fn schedstat(path: &Path) -> Duration {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM` of `/proc/<pid>/status`),
/// in bytes.
pub fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// One line of a distribution registry's log, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLine {
    /// An access log line: the request's method and path, its status.
    Request {
        second: i64,
        method: String,
        path: String,
        status: u16,
    },
    /// Go's `http: TLS handshake error from ADDR: ERR` (a connection that did not complete its
    /// handshake); `error` is ERR.
    HandshakeError { second: i64, error: String },
    /// Any other line at level error or warning, or another `http:` server error.
    Error { second: i64, text: String },
}

/// The classified lines of a registry log (others, at level info, are left out). Seconds are
/// Unix seconds, reading the log's local times as UTC (the benches compare them with each other
/// and with [`unix_second`], on a machine whose local time is UTC).
pub fn classify_log(log: &str) -> Vec<LogLine> {
    log.lines().filter_map(classify_line).collect()
}

fn classify_line(line: &str) -> Option<LogLine> {
    if let Some(entry) = crate::registry::parse_access_line(line) {
        // 127.0.0.1 - - [02/Dec/2026:13:25:02 +0000] "GET /v2/ HTTP/1.1" …
        let stamp = line.split_once('[')?.1.split_once(' ')?.0;
        return Some(LogLine::Request {
            second: access_log_second(stamp)?,
            method: entry.method,
            path: entry.path,
            status: entry.status,
        });
    }
    // Go's log package: `2026/12/02 13:25:02 http: TLS handshake error from 1.2.3.4:5: EOF`.
    if let Some(second) = line.get(..19).and_then(go_log_second) {
        let text = line[19..].trim();
        if let Some(rest) = text.strip_prefix("http: TLS handshake error from ") {
            let error = rest.split_once(": ").map_or(rest, |(_, e)| e).to_owned();
            return Some(LogLine::HandshakeError { second, error });
        }
        if text.starts_with("http:") {
            return Some(LogLine::Error {
                second,
                text: text.to_owned(),
            });
        }
        return None;
    }
    // logrus: `time="2026-12-02T13:25:02.123Z" level=error msg=…`.
    if line.contains("level=error") || line.contains("level=warning") {
        let stamp = line.split_once("time=\"")?.1.get(..19)?;
        return Some(LogLine::Error {
            second: rfc3339_second(stamp)?,
            text: line.to_owned(),
        });
    }
    None
}

/// `02/Dec/2026:13:25:02` → Unix seconds.
fn access_log_second(stamp: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (date, time) = stamp.split_once(':')?;
    let mut d = date.split('/');
    let day: i64 = d.next()?.parse().ok()?;
    let name = d.next()?;
    let month = MONTHS.iter().position(|m| *m == name)? as i64 + 1;
    let year: i64 = d.next()?.parse().ok()?;
    civil_seconds(year, month, day, time)
}

/// `2026/12/02 13:25:02` → Unix seconds.
fn go_log_second(stamp: &str) -> Option<i64> {
    let (date, time) = stamp.split_once(' ')?;
    let mut d = date.split('/').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    civil_seconds(year, month, day, time)
}

/// `2026-12-02T13:25:02` → Unix seconds.
fn rfc3339_second(stamp: &str) -> Option<i64> {
    let (date, time) = stamp.split_once('T')?;
    go_log_second(&format!("{} {time}", date.replace('-', "/")))
}

/// Days from the civil calendar (Howard Hinnant's algorithm) plus `HH:MM:SS`.
fn civil_seconds(year: i64, month: i64, day: i64, time: &str) -> Option<i64> {
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (t.next()??, t.next()??, t.next()??);
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// The current Unix second.
pub fn unix_second() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Counts per second over a run: mean, max and the coefficient of variation, to tell a rate
/// spread by jitter (independent arrivals: a CV near 1/√mean, as for a Poisson process) from
/// synchronised bursts (a max many times the mean, a CV far above that).
#[derive(Debug, Clone)]
pub struct PerSecond(pub Vec<u64>);

impl PerSecond {
    /// Counts of `seconds` (Unix seconds) in `[start, start + len)`, one bucket per second.
    pub fn bucket(seconds: impl IntoIterator<Item = i64>, start: i64, len: usize) -> Self {
        let mut counts = vec![0; len];
        for s in seconds {
            if let Some(c) = usize::try_from(s - start)
                .ok()
                .and_then(|i| counts.get_mut(i))
            {
                *c += 1;
            }
        }
        Self(counts)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn mean(&self) -> f64 {
        self.total() as f64 / self.0.len().max(1) as f64
    }

    pub fn max(&self) -> u64 {
        self.0.iter().copied().max().unwrap_or(0)
    }

    /// Standard deviation over mean.
    pub fn cv(&self) -> f64 {
        let mean = self.mean();
        let var = self
            .0
            .iter()
            .map(|c| (*c as f64 - mean).powi(2))
            .sum::<f64>()
            / self.0.len().max(1) as f64;
        if mean > 0.0 { var.sqrt() / mean } else { 0.0 }
    }

    /// One character per second, ▁ (0) to █ (the max): the run at a glance.
    pub fn sparkline(&self) -> String {
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let max = self.max().max(1) as f64;
        self.0
            .iter()
            .map(|c| BARS[((*c as f64 / max) * 7.0).round() as usize])
            .collect()
    }

    /// How many seconds saw each count, as `count×seconds` pairs from the lowest count up.
    pub fn histogram(&self) -> String {
        let mut seen = std::collections::BTreeMap::new();
        for c in &self.0 {
            *seen.entry(*c).or_insert(0u32) += 1;
        }
        seen.iter()
            .map(|(count, seconds)| format!("{count}:{seconds}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The median of some values (the mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_classified_with_their_second() {
        let log = "127.0.0.1 - - [02/Dec/2026:13:25:02 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"pullwatch/0.1\"\n\
                   2026/12/02 13:25:03 http: TLS handshake error from 127.0.0.1:40112: EOF\n\
                   time=\"2026-12-02T13:25:04.5Z\" level=error msg=\"boom\"\n\
                   time=\"2026-12-02T13:25:04.5Z\" level=info msg=\"response completed\"\n";
        let base = civil_seconds(2026, 12, 2, "13:25:02").expect("date");
        assert_eq!(base, 1_796_217_902);
        let lines = classify_log(log);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            matches!(&lines[0], LogLine::Request { second, status: 200, .. } if *second == base)
        );
        assert!(
            matches!(&lines[1], LogLine::HandshakeError { second, error } if *second == base + 1 && error == "EOF")
        );
        assert!(matches!(&lines[2], LogLine::Error { second, .. } if *second == base + 2));
    }

    #[test]
    fn per_second_counts_tell_bursts_from_spread() {
        let spread = PerSecond::bucket([10, 11, 12, 13], 10, 4);
        assert_eq!((spread.max(), spread.cv()), (1, 0.0));
        let burst = PerSecond::bucket([10, 10, 10, 10], 10, 4);
        assert_eq!(burst.max(), 4);
        assert!(burst.cv() > 1.5, "{}", burst.cv());
        assert_eq!(burst.histogram(), "0:3 4:1");
    }
}
