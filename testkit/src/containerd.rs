//! The real containerd (`/usr/bin/containerd`, CRI plugin) with its own root, state, socket and
//! `certs.d` in a tempdir, optionally inside a test netns (with its own resolv.conf) or with a tiny
//! content store; killed on drop, and by a watchdog if the test process dies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::netns::Netns;
use crate::watchdog::{Watchdog, end_child};

const BINARY: &str = "/usr/bin/containerd";
/// How long containerd may take to serve its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for [`Containerd::start`].
#[derive(Default)]
pub struct ContainerdBuilder<'a> {
    sandbox_image: Option<String>,
    netns: Option<&'a Netns>,
    nameserver: Option<std::net::Ipv4Addr>,
    env: Vec<(String, String)>,
    content_store_bytes: Option<u64>,
}

impl<'a> ContainerdBuilder<'a> {
    /// The CRI plugin's `sandbox_image` (what `Status{verbose}` reports).
    pub fn sandbox_image(mut self, image: &str) -> Self {
        self.sandbox_image = Some(image.to_owned());
        self
    }

    /// Runs containerd inside `ns` (`ip netns exec`); with [`ContainerdBuilder::nameserver`] it
    /// gets `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts over `/etc/resolv.conf`.
    pub fn netns(mut self, ns: &'a Netns) -> Self {
        self.netns = Some(ns);
        self
    }

    /// The resolver containerd uses inside its netns (needs [`ContainerdBuilder::netns`]).
    pub fn nameserver(mut self, ip: std::net::Ipv4Addr) -> Self {
        self.nameserver = Some(ip);
        self
    }

    /// An environment variable for containerd (e.g. `HTTPS_PROXY`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Puts the content store on a tmpfs of this size, so pulls can run out of space.
    pub fn content_store_bytes(mut self, bytes: u64) -> Self {
        self.content_store_bytes = Some(bytes);
        self
    }

    /// Writes the config and starts containerd; waits (≤30 s) until it serves its socket.
    pub fn start(self) -> Containerd {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: install the Debian package containerd"
        );
        assert!(
            self.nameserver.is_none() || self.netns.is_some(),
            "a nameserver needs a netns (the host's /etc/resolv.conf is never touched)"
        );
        let dir = tempfile::Builder::new()
            .prefix("pw-containerd-")
            .tempdir()
            .expect("containerd tempdir");
        let certs_dir = dir.path().join("certs.d");
        std::fs::create_dir_all(&certs_dir).expect("create certs.d");
        let socket = dir.path().join("containerd.sock");
        let config_path = dir.path().join("config.toml");
        std::fs::write(
            &config_path,
            config_toml(
                dir.path(),
                &socket,
                &certs_dir,
                self.sandbox_image.as_deref(),
            ),
        )
        .expect("write containerd config.toml");

        let mut resources = Vec::new();
        let content_store = dir.path().join("root/io.containerd.content.v1.content");
        if let Some(bytes) = self.content_store_bytes {
            std::fs::create_dir_all(&content_store).expect("create content store dir");
            let path = content_store.to_str().expect("tempdir paths are UTF-8");
            crate::run_tool(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={bytes}"),
                    "pw-content",
                    path,
                ],
                None,
                Duration::from_secs(10),
            );
            resources.push(format!("umount -l '{path}'"));
        }
        let mut netns_etc = None;
        if let (Some(ns), Some(ip)) = (self.netns, self.nameserver) {
            let etc = PathBuf::from(format!("/etc/netns/{}", ns.name()));
            assert!(
                !etc.exists(),
                "{} exists already; another test owns this netns",
                etc.display()
            );
            std::fs::create_dir_all(&etc).expect("create /etc/netns/<name>");
            std::fs::write(
                etc.join("resolv.conf"),
                format!("nameserver {ip}\noptions timeout:1 attempts:1\n"),
            )
            .expect("write /etc/netns/<name>/resolv.conf");
            // The parent goes too when this was its last namespace (rmdir leaves it otherwise).
            resources.push(format!(
                "rm -rf '{}'; rmdir /etc/netns 2>/dev/null",
                etc.display()
            ));
            netns_etc = Some(etc);
        }
        let cleanup = (!resources.is_empty())
            .then(|| Watchdog::arm("containerd resources", &resources.join("; "), &[]));

        let mut containerd = Containerd {
            child: None,
            watchdog: None,
            socket,
            certs_dir,
            config_path,
            log_path: dir.path().join("containerd.log"),
            netns: self.netns.map(|ns| ns.name().to_owned()),
            env: self.env,
            netns_etc,
            cleanup,
            dir,
        };
        containerd.spawn();
        containerd
    }
}

/// A running containerd; killed on drop.
///
/// ```text
/// let ctrd = Containerd::builder().sandbox_image("127.0.0.1:5000/pause:1").start();
/// ctrd.write_hosts_toml("127.0.0.1:5000", "server = \"http://127.0.0.1:5000\"\n");
/// pullwatch.args(["--runtime-endpoint", &ctrd.endpoint(), "--containerd-certs-dir", ctrd.certs_dir_str()]);
/// ```
pub struct Containerd {
    child: Option<Child>,
    watchdog: Option<Watchdog>,
    socket: PathBuf,
    certs_dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    netns: Option<String>,
    env: Vec<(String, String)>,
    netns_etc: Option<PathBuf>,
    cleanup: Option<Watchdog>,
    dir: TempDir,
}

impl Containerd {
    pub fn builder<'a>() -> ContainerdBuilder<'a> {
        ContainerdBuilder::default()
    }

    /// A containerd in the host namespace without a sandbox image.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix:///…/containerd.sock`, for `--runtime-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Pulls `reference` over plain HTTP into the CRI plugin's namespace with `ctr`, as the
    /// kubelet's pull leaves it on a node (with `user` as `name:password` for a private registry).
    pub fn pull_plain_http(&self, reference: &str, user: Option<&str>) {
        let socket = self.socket().to_str().expect("UTF-8 path");
        let mut args = vec![
            "--address",
            socket,
            "--namespace",
            "k8s.io",
            "images",
            "pull",
            "--plain-http",
        ];
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        args.push(reference);
        crate::run_tool("ctr", &args, None, Duration::from_secs(60));
    }

    /// The `config_path` directory (empty at start).
    pub fn certs_dir(&self) -> &Path {
        &self.certs_dir
    }

    pub fn certs_dir_str(&self) -> &str {
        self.certs_dir.to_str().expect("tempdir paths are UTF-8")
    }

    /// A scratch directory that lives as long as this containerd (for CA files and the like).
    pub fn scratch_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("scratch");
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// Writes `certs.d/<registry>/hosts.toml`; containerd reads it at every pull.
    pub fn write_hosts_toml(&self, registry: &str, content: &str) -> PathBuf {
        let dir = self.certs_dir.join(registry);
        std::fs::create_dir_all(&dir).expect("create certs.d/<registry>");
        let path = dir.join("hosts.toml");
        std::fs::write(&path, content).expect("write hosts.toml");
        path
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills containerd (SIGKILL) and waits for it; the socket file stays, dead.
    pub fn kill(&mut self) {
        if let (Some(mut child), Some(watchdog)) = (self.child.take(), self.watchdog.take()) {
            end_child(&mut child, watchdog);
        }
    }

    /// Starts containerd again on the same root, state and socket.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open containerd.log");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BINARY]);
                c
            }
            None => Command::new(BINARY),
        };
        cmd.arg("--config").arg(&self.config_path);
        for var in [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "NO_PROXY",
            "https_proxy",
            "http_proxy",
            "no_proxy",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        self.watchdog = Some(Watchdog::killing("containerd", &child));
        self.child = Some(child);
        self.wait_serving();
    }

    /// Waits until the log says it serves the socket and the socket accepts connections.
    fn wait_serving(&mut self) {
        let marker = format!("serving... address={}", self.socket.display());
        let deadline = Instant::now() + START_TIMEOUT;
        let log_start = self.log().len();
        loop {
            let log = self.log();
            let fresh = log.get(log_start..).unwrap_or_default();
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("containerd exited with {status}; its log:\n{log}");
            }
            if fresh.contains(&marker)
                && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
            {
                return;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "containerd did not serve {marker} within {START_TIMEOUT:?}; its log:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill();
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.fire();
        }
        if let Some(etc) = &self.netns_etc {
            let _ = std::fs::remove_dir_all(etc);
            // Only succeeds when no other test's namespace has a directory there.
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
}

/// A version 2 config: everything under `dir`, the CRI plugin pulling through `certs_dir`,
/// native snapshotter, no CNI, no AppArmor, no cgroups.
fn config_toml(dir: &Path, socket: &Path, certs_dir: &Path, sandbox_image: Option<&str>) -> String {
    let d = dir.display();
    let sandbox = sandbox_image
        .map(|image| format!("  sandbox_image = \"{image}\"\n"))
        .unwrap_or_default();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
{sandbox}  disable_apparmor = true
  restrict_oom_score_adj = true
  disable_cgroup = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
        socket = socket.display(),
        certs = certs_dir.display(),
    )
}
