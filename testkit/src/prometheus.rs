//! A real Prometheus (`/usr/bin/prometheus`, Debian's 2.42) scraping given targets every second,
//! with its own TSDB in a tempdir on 127.0.0.1:<free port>, queried through its HTTP API.
//! Killed on drop (or by a watchdog if the test process dies first).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::http::Client;
use crate::watchdog::{Watchdog, end_child};

const BINARY: &str = "/usr/bin/prometheus";
/// How long Prometheus may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The scrape interval (and timeout) of the generated config.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// One sample of an instant query.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// A label's value, or "" when absent.
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    child: Child,
    watchdog: Option<Watchdog>,
    addr: SocketAddr,
    log_path: std::path::PathBuf,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job `pullwatch`) every second and waits until it is ready.
    pub fn scraping(targets: &[SocketAddr]) -> Self {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: install the Debian package prometheus"
        );
        let dir = tempfile::Builder::new()
            .prefix("pw-prometheus-")
            .tempdir()
            .expect("prometheus tempdir");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let secs = SCRAPE_INTERVAL.as_secs();
        let config = format!(
            "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n  evaluation_interval: {secs}s\n\
             scrape_configs:\n  - job_name: pullwatch\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log_path = dir.path().join("prometheus.log");
        let mut last_log = String::new();
        // The free port can be taken before Prometheus binds it: then try another.
        for _ in 0..5 {
            let port = crate::ports::free_port(Ipv4Addr::LOCALHOST);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log = std::fs::File::create(&log_path).expect("create prometheus.log");
            let child = Command::new(BINARY)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
            let mut watchdog = Some(Watchdog::killing("prometheus", &child));
            let mut child = child;
            match wait_ready(&mut child, addr, &log_path) {
                Ok(()) => {
                    return Prometheus {
                        child,
                        watchdog,
                        addr,
                        log_path,
                        _dir: dir,
                    };
                }
                Err(log) => {
                    if let Some(w) = watchdog.take() {
                        end_child(&mut child, w);
                    }
                    last_log = log;
                    if !last_log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("prometheus did not become ready; its log:\n{last_log}");
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// An instant query through `/api/v1/query`; panics when Prometheus rejects it.
    pub fn query(&self, expr: &str) -> Vec<Sample> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let response = Client::http(self.addr)
            .get(&path)
            .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        let body: serde_json::Value = serde_json::from_str(&response.text())
            .unwrap_or_else(|e| panic!("query {expr}: not JSON ({e}): {}", response.text()));
        assert_eq!(body["status"], "success", "query {expr}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {expr}: no result vector: {body}"))
            .iter()
            .map(|sample| Sample {
                labels: sample["metric"]
                    .as_object()
                    .map(|labels| {
                        labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// Polls `expr` until `accept` takes its samples, at most `timeout`; returns the samples and
    /// how long it took. Panics with the last samples otherwise.
    pub fn wait_for(
        &self,
        expr: &str,
        timeout: Duration,
        accept: impl Fn(&[Sample]) -> bool,
    ) -> (Vec<Sample>, Duration) {
        let start = Instant::now();
        loop {
            let samples = self.query(expr);
            if accept(&samples) {
                return (samples, start.elapsed());
            }
            if start.elapsed() >= timeout {
                panic!("after {timeout:?}, {expr} is still {samples:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `expr` is a single sample with value `want`.
    pub fn wait_value(&self, expr: &str, want: f64, timeout: Duration) -> Duration {
        self.wait_for(expr, timeout, |s| s.len() == 1 && s[0].value == want)
            .1
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            end_child(&mut self.child, w);
        }
    }
}

/// Waits until Prometheus answers `/-/ready` while the process stays alive. `Err` carries the log.
fn wait_ready(child: &mut Child, addr: SocketAddr, log_path: &Path) -> Result<(), String> {
    let log = || std::fs::read_to_string(log_path).unwrap_or_default();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("(exited with {status})\n{}", log()));
        }
        if let Ok(response) = Client::http(addr).get("/-/ready")
            && response.status == 200
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("(not ready after {START_TIMEOUT:?})\n{}", log()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a query string.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
