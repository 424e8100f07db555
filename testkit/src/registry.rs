//! The real CNCF registry (`/usr/bin/docker-registry`, distribution 2.8) on
//! 127.0.0.1:<free port> (or another local address), optionally with TLS and htpasswd Basic auth, storing into a
//! tempdir; killed on drop (or by a watchdog if the test process dies first). Its log,
//! including the access log, goes to a file. With client CAs it requires mutual TLS.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::http::{Client, Trust};
use crate::image::{self, Image, Platform, Pushed};
use crate::ports::free_port;
use crate::watchdog::{Watchdog, end_child};

const BINARY: &str = "/usr/bin/docker-registry";
/// How long the registry may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for [`Registry::start`].
#[derive(Debug, Default, Clone)]
pub struct RegistryBuilder {
    listen_ip: Option<Ipv4Addr>,
    port: Option<u16>,
    tls: Option<(PathBuf, PathBuf)>,
    client_cas: Option<PathBuf>,
    htpasswd: Option<(String, String)>,
    /// Storage shared with another registry (the plain sibling that pushes for a mutual-TLS one).
    data_dir: Option<PathBuf>,
}

impl RegistryBuilder {
    /// Serve HTTPS with this PEM certificate and key (e.g. a [`crate::certs::Leaf`]'s).
    pub fn tls(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.tls = Some((cert.as_ref().to_owned(), key.as_ref().to_owned()));
        self
    }

    /// With [`RegistryBuilder::tls`]: require a client certificate signed by the CA in this PEM
    /// file (distribution's `http.tls.clientcas`, i.e. Go's `RequireAndVerifyClientCert`).
    /// [`Registry::push`] still works: it pushes through a plain-HTTP sibling on the same storage.
    pub fn client_cas(mut self, ca: impl AsRef<Path>) -> Self {
        self.client_cas = Some(ca.as_ref().to_owned());
        self
    }

    /// Listens on `ip` instead of 127.0.0.1 (e.g. a [`crate::netns::Netns::host_ip`],
    /// to be reached from inside that netns).
    pub fn listen_ip(mut self, ip: Ipv4Addr) -> Self {
        self.listen_ip = Some(ip);
        self
    }

    /// Listens on this port (e.g. 80, on an address of its own) instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Require Basic auth with this one user (htpasswd file, bcrypt).
    pub fn htpasswd(mut self, user: &str, password: &str) -> Self {
        self.htpasswd = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Starts the registry and waits (≤10 s) until it listens; panics with its log if not.
    pub fn start(self) -> Registry {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: install the Debian package docker-registry"
        );
        let dir = tempfile::Builder::new()
            .prefix("pw-registry-")
            .tempdir()
            .expect("registry tempdir");
        let htpasswd_path = self.htpasswd.as_ref().map(|(user, password)| {
            let line = crate::run_tool(
                "htpasswd",
                &["-Bbn", user, password],
                None,
                Duration::from_secs(20),
            );
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, line.trim_end()).expect("write htpasswd");
            path
        });
        let log_path = dir.path().join("registry.log");
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let ip = self.listen_ip.unwrap_or(Ipv4Addr::LOCALHOST);
        let mut last_log = String::new();
        // A free port found by binding :0 can be taken again before the registry binds
        // it; then the registry exits with "address already in use" and we try another.
        for _ in 0..5 {
            let addr = SocketAddr::from((ip, self.port.unwrap_or_else(|| free_port(ip))));
            let config_path = dir.path().join("config.yml");
            std::fs::write(
                &config_path,
                self.config_yaml(&data_dir, addr, htpasswd_path.as_deref()),
            )
            .expect("write config.yml");
            let log = std::fs::File::create(&log_path).expect("create registry.log");
            let mut child = Command::new(BINARY)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
            let watchdog = Watchdog::killing("docker-registry", &child);
            match wait_listening(&mut child, addr, &log_path) {
                Ok(()) => {
                    return Registry {
                        child,
                        watchdog: Some(watchdog),
                        addr,
                        tls: self.tls.is_some(),
                        mutual_tls: self.client_cas.is_some(),
                        credentials: self.htpasswd,
                        data_dir,
                        log_path,
                        _dir: dir,
                    };
                }
                Err(log) => {
                    end_child(&mut child, watchdog);
                    last_log = log;
                    if !last_log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    fn config_yaml(&self, data_dir: &Path, addr: SocketAddr, htpasswd: Option<&Path>) -> String {
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: pullwatch-test-secret\n",
            data_dir.display()
        );
        if let Some((cert, key)) = &self.tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            if let Some(ca) = &self.client_cas {
                yaml.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
        }
        if let Some(path) = htpasswd {
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: pullwatch-test\n    path: {}\n",
                path.display()
            ));
        }
        yaml
    }
}

/// Waits until the registry logged that it listens on `addr` and the port accepts TCP,
/// while the process stays alive. `Err` carries the log.
fn wait_listening(child: &mut Child, addr: SocketAddr, log_path: &Path) -> Result<(), String> {
    let marker = format!("listening on {addr}");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("(exited with {status})\n{log}"));
        }
        // distribution logs this after its listener is bound: no probe connection is needed
        // (one would leave a "TLS handshake error … EOF" in the log and in connection counts).
        if log.contains(&marker) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "(not listening on {addr} after {START_TIMEOUT:?})\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line of the registry's access log (combined log format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub user_agent: String,
}

/// A running registry; killed on drop.
///
/// ```text
/// let tls = TlsFixtures::for_host("registry.test");
/// let reg = Registry::builder().tls(&tls.valid.cert_path, &tls.valid.key_path).htpasswd("u", "p").start();
/// let pushed = reg.push_image("team/app", "1.0");
/// ```
pub struct Registry {
    child: Child,
    watchdog: Option<Watchdog>,
    addr: SocketAddr,
    tls: bool,
    mutual_tls: bool,
    credentials: Option<(String, String)>,
    data_dir: PathBuf,
    log_path: PathBuf,
    _dir: TempDir,
}

impl Registry {
    /// Options: TLS, client CAs, htpasswd.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// A plain-HTTP registry without auth.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// `127.0.0.1:<port>` (or the `listen_ip`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id (for its CPU time in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://<addr>` or `http://<addr>`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The registry's stdout+stderr: its own log and the access log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The log read now.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Requests served so far, from the access log (`"HEAD /v2/x/manifests/1 HTTP/1.1" 200 …`).
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// A client for setup: trusts any certificate, sends the configured credentials (but no
    /// client certificate: a mutual-TLS registry refuses it).
    pub fn client(&self) -> Client {
        let client = if self.tls {
            Client::https(self.addr, &self.addr.ip().to_string(), Trust::Insecure)
        } else {
            Client::http(self.addr)
        };
        match &self.credentials {
            Some((user, password)) => client.basic_auth(user, password),
            None => client,
        }
    }

    /// Pushes a single-manifest OCI image for this machine's platform as `repository:tag`.
    pub fn push_image(&self, repository: &str, tag: &str) -> Pushed {
        self.push(repository, tag, &Image::single(Platform::host()))
    }

    /// Pushes `image` as `repository:tag`; panics (with the registry log) on failure.
    /// A mutual-TLS registry is pushed to through a plain-HTTP sibling on the same storage.
    pub fn push(&self, repository: &str, tag: &str, image: &Image) -> Pushed {
        if self.mutual_tls {
            let sibling = RegistryBuilder {
                htpasswd: self.credentials.clone(),
                data_dir: Some(self.data_dir.clone()),
                ..RegistryBuilder::default()
            }
            .start();
            return sibling.push(repository, tag, image);
        }
        image::push(&self.client(), repository, tag, image).unwrap_or_else(|e| {
            panic!(
                "push {repository}:{tag} to {}: {e}\nregistry log:\n{}",
                self.url(),
                self.log()
            )
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            end_child(&mut self.child, w);
        }
    }
}

pub(crate) fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    // 127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
    let mut quoted = line.split('"');
    let _prefix = quoted.next()?;
    let request = quoted.next()?;
    let after = quoted.next()?;
    let _referer = quoted.next()?;
    let _gap = quoted.next()?;
    let user_agent = quoted.next()?.to_owned();
    let mut parts = request.split(' ');
    let (method, path, proto) = (parts.next()?, parts.next()?, parts.next()?);
    if !proto.starts_with("HTTP/") {
        return None;
    }
    let status = after.split_whitespace().next()?.parse().ok()?;
    Some(AccessLogEntry {
        method: method.to_owned(),
        path: path.to_owned(),
        status,
        user_agent,
    })
}
