//! Runs the pullwatch binary the way a user does: real argv and environment, a bounded
//! wait, optionally inside a test network namespace; parses `--output json` lines.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::netns::Netns;
use crate::watchdog::{Watchdog, end_child};

/// Proxy variables cleared from the child's environment unless set explicitly
/// (as are all `PULLWATCH_*` variables).
const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
    "all_proxy",
];

/// What a finished process left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The exit code; panics (showing stderr) when the process died from a signal.
    pub fn exit_code(&self) -> i32 {
        self.code
            .unwrap_or_else(|| panic!("process was killed by a signal; stderr:\n{}", self.stderr))
    }
}

/// Spawns `cmd` with piped stdio, feeds `stdin`, and waits at most `timeout`.
/// On timeout the process is killed and an error naming the timeout is returned.
pub fn run_bounded(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data)?;
    }
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let Some(status) = wait_bounded(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{cmd:?} still running after {timeout:?}; killed it. stderr:\n{err}"),
        ));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Waits for `child` to exit, at most `timeout`; `None` if it is still running.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The pullwatch binary under test (cargo builds it for the package's integration tests and
/// benches): `NEXTEST_BIN_EXE_pullwatch` (nextest) or `CARGO_BIN_EXE_pullwatch` if set at run
/// time, else `pullwatch` in the profile directory above the running test binary's `deps/`
/// (`target/<profile>/deps/real-…` → `target/<profile>/pullwatch`). Panics if it is not there.
pub fn binary() -> &'static std::path::Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let named = ["NEXTEST_BIN_EXE_pullwatch", "CARGO_BIN_EXE_pullwatch"]
            .iter()
            .find_map(|var| std::env::var_os(var).map(PathBuf::from));
        let bin = named.unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("the test binary's path");
            let deps = exe.parent().expect("the test binary's directory");
            let profile = if deps.ends_with("deps") {
                deps.parent().expect("the profile directory")
            } else {
                deps
            };
            profile.join("pullwatch")
        });
        assert!(
            bin.is_file(),
            "the pullwatch binary is not at {} (run the tests through cargo or nextest)",
            bin.display()
        );
        bin
    })
}

/// A pullwatch invocation being assembled.
///
/// ```text
/// let out = Pullwatch::new().args(["--resolv-conf", path]).arg("version").run();
/// ```
#[derive(Debug, Clone)]
pub struct Pullwatch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    netns: Option<String>,
    timeout: Duration,
}

impl Default for Pullwatch {
    fn default() -> Self {
        Self::new()
    }
}

impl Pullwatch {
    /// The built binary, no arguments, proxy variables cleared, 60 s limit.
    pub fn new() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            netns: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child only (proxy variables included).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the binary inside `ns` (`ip netns exec NS pullwatch …`).
    pub fn in_netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.name().to_owned());
        self
    }

    /// Kills the process and panics if it has not exited after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command that [`Pullwatch::run`] would spawn.
    pub fn command(&self) -> Command {
        let bin = binary();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(&self.args);
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        // Flags can come from PULLWATCH_* variables; a developer's shell must not leak in.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("PULLWATCH_") {
                cmd.env_remove(var);
            }
        }
        // The host's runtime registry config (skopeo installs a registries.conf) must not
        // change the routes a test sees; a test that wants one passes its own flag or variable.
        let no_config = std::env::temp_dir().join("pullwatch-tests-no-runtime-config");
        cmd.env("PULLWATCH_CONTAINERD_CERTS_DIR", no_config.join("certs.d"));
        cmd.env(
            "PULLWATCH_REGISTRIES_CONF",
            no_config.join("registries.conf"),
        );
        // Nor the host's kubelet credentials.
        cmd.env("PULLWATCH_KUBELET_ROOT_DIR", no_config.join("kubelet"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs to completion; panics if it cannot start or outlives the timeout.
    pub fn run(&self) -> Output {
        run_bounded(&mut self.command(), None, self.timeout)
            .unwrap_or_else(|e| panic!("running pullwatch {:?}: {e}", self.args))
    }

    /// Starts it in the background (for `agent`), stdout and stderr going to files.
    /// The process is killed when the handle drops, even if the test process dies.
    pub fn spawn(&self) -> Running {
        let dir = tempfile::Builder::new()
            .prefix("pw-run-")
            .tempdir()
            .expect("run tempdir");
        let stdout_path = dir.path().join("stdout");
        let stderr_path = dir.path().join("stderr");
        let file = |p: &PathBuf| std::fs::File::create(p).expect("create output file");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(file(&stdout_path))
            .stderr(file(&stderr_path))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning pullwatch {:?}: {e}", self.args));
        let watchdog = Watchdog::killing("pullwatch", &child);
        Running {
            child,
            watchdog: Some(watchdog),
            stdout_path,
            stderr_path,
            _dir: dir,
        }
    }

    /// Runs `pullwatch diagnose --output json ARGS…` and parses one JSON object per
    /// stdout line. Panics (showing stderr) on a line that is not JSON or on an exit
    /// code other than 0 or 1.
    pub fn diagnose_json<I, S>(self, args: I) -> (i32, Vec<serde_json::Value>)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let out = self.args(["diagnose", "--output", "json"]).args(args).run();
        let code = out.exit_code();
        assert!(
            code == 0 || code == 1,
            "pullwatch diagnose exited {code} (want 0 or 1; use run() to test usage errors):\nstderr:\n{}",
            out.stderr
        );
        (code, parse_json_lines(&out))
    }
}

/// Parses each non-empty stdout line as JSON; panics with the whole output otherwise.
pub fn parse_json_lines(out: &Output) -> Vec<serde_json::Value> {
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!(
                    "stdout line is not JSON ({e}): {l}\nstdout:\n{}\nstderr:\n{}",
                    out.stdout, out.stderr
                )
            })
        })
        .collect()
}

/// `pullwatch diagnose --output json ARGS…` with default settings; see
/// [`Pullwatch::diagnose_json`]. Global flags may be mixed in with the images.
pub fn diagnose_json(args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    Pullwatch::new().diagnose_json(args.iter().copied())
}

/// A pullwatch process running in the background; killed on drop.
pub struct Running {
    child: Child,
    watchdog: Option<Watchdog>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl Running {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        crate::run_tool(
            "kill",
            &["-s", name, &self.pid().to_string()],
            None,
            Duration::from_secs(10),
        );
    }

    /// Waits for it to exit by itself, at most `timeout`; panics (with stderr) otherwise.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let status = wait_bounded(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "pullwatch (pid {}) still running after {timeout:?}; stderr:\n{}",
                self.pid(),
                self.stderr()
            )
        });
        // Reaped: its pid may be reused, so the watchdog must not kill it any more.
        if let Some(w) = self.watchdog.take() {
            w.disarm();
        }
        Output {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// SIGTERM, then [`Running::wait`].
    pub fn terminate(self, timeout: Duration) -> Output {
        self.signal("TERM");
        self.wait(timeout)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            end_child(&mut self.child, w);
        }
    }
}
