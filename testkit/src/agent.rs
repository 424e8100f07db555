//! `pullwatch agent` in the background for tests: `--listen` on a free 127.0.0.1 port, the API
//! socket in a tempdir, node name [`NODE`]; its HTTP endpoints read with the harness client.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::cli::{Output, Pullwatch, Running};
use crate::http::Client;

/// The `--node-name` every test agent gets.
pub const NODE: &str = "test-node";
/// How long an agent may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running agent; killed on drop.
pub struct Agent {
    running: Option<Running>,
    addr: SocketAddr,
    socket: PathBuf,
    _dir: TempDir,
}

impl Agent {
    /// Starts `pullwatch GLOBAL… agent --listen … --api-socket … --node-name test-node AGENT…` and
    /// waits until `/healthz` answers; panics with its stderr if it exits or never answers.
    pub fn start(global: &[&str], agent: &[&str]) -> Self {
        Self::start_with_env(global, agent, &[])
    }

    /// [`Agent::start`] with extra environment variables for the agent (e.g. `KUBECONFIG`).
    pub fn start_with_env(global: &[&str], agent: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_as(NODE, global, agent, env)
    }

    /// [`Agent::start_with_env`] with this `--node-name`.
    fn start_as(node: &str, global: &[&str], agent: &[&str], env: &[(&str, &str)]) -> Self {
        let mut last_stderr = String::new();
        // The free port can be taken before the agent binds it: then it exits 64 naming --listen.
        for _ in 0..5 {
            let port = crate::ports::free_port(Ipv4Addr::LOCALHOST);
            match Launch::spawn(node, port, global, agent, env).ready() {
                Ok(agent) => return agent,
                Err(stderr) => last_stderr = stderr,
            }
            if !last_stderr.contains("--listen") {
                break;
            }
        }
        panic!("agent did not start; stderr:\n{last_stderr}");
    }

    /// Starts one agent per node name, all spawned before any is waited for (a fleet whose
    /// agents start together, as after a DaemonSet rollout), each on its own port and API socket;
    /// returns once every one answers `/healthz`. Panics as [`Agent::start`] does.
    pub fn start_fleet(nodes: &[String], global: &[&str], agent: &[&str]) -> Vec<Self> {
        let mut ports = std::collections::HashSet::new();
        let launches: Vec<Launch> = nodes
            .iter()
            .map(|node| {
                let port = loop {
                    let port = crate::ports::free_port(Ipv4Addr::LOCALHOST);
                    if ports.insert(port) {
                        break port;
                    }
                };
                Launch::spawn(node, port, global, agent, &[])
            })
            .collect();
        launches
            .into_iter()
            .zip(nodes)
            .map(|(launch, node)| match launch.ready() {
                Ok(agent) => agent,
                // Its port was taken meanwhile: start it again alone, on another.
                Err(stderr) if stderr.contains("--listen") => {
                    Self::start_as(node, global, agent, &[])
                }
                Err(stderr) => panic!("agent {node} did not start; stderr:\n{stderr}"),
            })
            .collect()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.running.as_ref().map_or(0, Running::pid)
    }

    /// CPU time it has used so far (user + system, from `/proc/<pid>/stat`).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("the agent's /proc/<pid>/stat");
        // Fields after the command (which may hold spaces) end with `)`; utime and stime are
        // the 14th and 15th fields, in clock ticks.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        let per_second: u64 =
            crate::run_tool("getconf", &["CLK_TCK"], None, Duration::from_secs(10))
                .trim()
                .parse()
                .expect("CLK_TCK");
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Where it serves `/metrics`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its API socket as `diagnose --agent` takes it.
    pub fn socket_url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// GET `path`: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let response = Client::http(self.addr).get(path).unwrap_or_else(|e| {
            panic!("GET {path} from the agent: {e}\nstderr:\n{}", self.stderr())
        });
        (response.status, response.text())
    }

    /// `/metrics`, which must answer 200.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// Polls `/metrics` until `accept` takes it, at most `timeout`; returns it and how long it took.
    pub fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let text = self.metrics();
            if accept(&text) {
                return (text, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "after {timeout:?}, /metrics still lacks {what}:\n{text}\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr(&self) -> String {
        self.running
            .as_ref()
            .map(Running::stderr)
            .unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        if let Some(running) = &self.running {
            running.signal(name);
        }
    }

    /// Waits for it to exit by itself (after a signal), at most `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Output {
        self.running
            .take()
            .expect("the agent is running")
            .wait(timeout)
    }
}

/// An agent spawned but not yet known to answer.
struct Launch {
    running: Running,
    addr: SocketAddr,
    socket: PathBuf,
    dir: TempDir,
}

impl Launch {
    fn spawn(node: &str, port: u16, global: &[&str], agent: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pw-agent-")
            .tempdir()
            .expect("agent tempdir");
        let socket = dir.path().join("api/pullwatch.sock");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Pullwatch::new();
        for (key, value) in env {
            command = command.env(*key, *value);
        }
        let running = command
            .args(global.iter().copied())
            .arg("agent")
            .args(["--listen", &addr.to_string()])
            .args(["--api-socket", socket.to_str().expect("UTF-8 tempdir")])
            .args(["--node-name", node])
            .args(agent.iter().copied())
            .spawn();
        Self {
            running,
            addr,
            socket,
            dir,
        }
    }

    /// Waits until `/healthz` answers (the agent), or the process exits (its stderr); panics if
    /// it does neither within [`START_TIMEOUT`].
    fn ready(mut self) -> Result<Agent, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !self.running.is_running() {
                return Err(self.running.stderr());
            }
            if matches!(Client::http(self.addr).get("/healthz"), Ok(r) if r.status == 200) {
                return Ok(Agent {
                    running: Some(self.running),
                    addr: self.addr,
                    socket: self.socket,
                    _dir: self.dir,
                });
            }
            assert!(
                Instant::now() < deadline,
                "agent did not answer /healthz within {START_TIMEOUT:?}; stderr:\n{}",
                self.running.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Values of the samples of `name` in a Prometheus text exposition whose labels include `labels`.
pub fn samples(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| {
                    let pair = format!("{k}=\"{v}\"");
                    rest.contains(&format!("{{{pair}")) || rest.contains(&format!(",{pair}"))
                })
                .then(|| value.parse().ok())?
        })
        .collect()
}

/// The one sample of `name` with `labels`, if exactly one exists.
pub fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match samples(exposition, name, labels).as_slice() {
        [value] => Some(*value),
        _ => None,
    }
}
