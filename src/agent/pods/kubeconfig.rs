//! The API server's address and credentials, found as client-go finds them (`KUBECONFIG`'s files
//! merged, else `~/.kube/config`, else the in-cluster service account), every file read through
//! the bounded reader. A kubeconfig's user may hold a token, a token file, a client certificate
//! or a username and password; an `exec` or `auth-provider` plugin is refused with its name (the
//! agent runs in the cluster, on its service account).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::api::{ApiConfig, Auth};
use crate::bounded_file;

/// No kubeconfig could be used; says which file and why (never a credential).
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct KubeconfigError {
    pub path: PathBuf,
    pub problem: String,
}

/// The service account's files in a pod.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The client config: the kubeconfig when one loads, else the in-cluster one; both failing is an
/// error naming both causes.
pub fn infer() -> Result<ApiConfig, String> {
    let home = std::env::home_dir();
    let paths = kubeconfig_paths(std::env::var_os("KUBECONFIG"), home.as_deref());
    match from_files(&paths) {
        Ok(config) => Ok(config),
        Err(kubeconfig) => in_cluster(|name| std::env::var(name).ok(), Path::new(SERVICE_ACCOUNT))
            .map_err(|in_cluster| format!("{kubeconfig}; in-cluster: {in_cluster}")),
    }
}

/// The current context of `paths` merged (`KUBECONFIG`'s order).
pub fn from_files(paths: &[PathBuf]) -> Result<ApiConfig, String> {
    read(paths)
        .and_then(|kubeconfig| {
            kubeconfig.resolve().map_err(|problem| KubeconfigError {
                path: PathBuf::from(shown(paths)),
                problem,
            })
        })
        .map_err(|error| format!("kubeconfig {error}"))
}

/// The pod's own credentials: `KUBERNETES_SERVICE_HOST`/`_PORT` and the service account's token
/// (read again for every request, as it rotates) and CA (client-go goes on with the system's
/// roots when the CA file is unusable; so does this, saying so).
pub fn in_cluster(env: impl Fn(&str) -> Option<String>, dir: &Path) -> Result<ApiConfig, String> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let (Some(host), Some(port)) = (
        var("KUBERNETES_SERVICE_HOST"),
        var("KUBERNETES_SERVICE_PORT"),
    ) else {
        return Err(
            "not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set"
                .into(),
        );
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let token = dir.join("token");
    bounded_file::read(&token, bounded_file::TOKEN).map_err(|e| e.to_string())?;
    let ca = dir.join("ca.crt");
    let ca_pem = match bounded_file::read(&ca, bounded_file::PEM) {
        Ok(pem) => Some(pem),
        Err(error) => {
            tracing::warn!(%error, "the service account's CA is unusable; the system's roots are trusted instead");
            None
        }
    };
    Ok(ApiConfig {
        server: format!("https://{host}:{port}"),
        ca_pem,
        insecure_skip_verify: false,
        identity_pem: None,
        auth: Auth::TokenFile(token),
    })
}

/// `KUBECONFIG`'s non-empty entries, else `~/.kube/config`.
fn kubeconfig_paths(env: Option<OsString>, home: Option<&Path>) -> Vec<PathBuf> {
    let listed: Vec<PathBuf> = env
        .map(|value| {
            std::env::split_paths(&value)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    home.map(|h| vec![h.join(".kube").join("config")])
        .unwrap_or_default()
}

fn shown(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(":")
}

/// The parts of a kubeconfig the agent reads; anything else in it is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    current_context: Option<String>,
    #[serde(default, deserialize_with = "named")]
    clusters: BTreeMap<String, Cluster>,
    #[serde(default, deserialize_with = "named")]
    contexts: BTreeMap<String, Context>,
    #[serde(default, deserialize_with = "named")]
    users: BTreeMap<String, User>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    #[serde(default, deserialize_with = "non_empty")]
    server: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    certificate_authority: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
    proxy_url: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct Context {
    cluster: Option<String>,
    user: Option<String>,
}

/// Its `Debug` names which credentials are set, never their content.
#[derive(Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    #[serde(default, deserialize_with = "non_empty")]
    token: Option<String>,
    #[serde(rename = "tokenFile", default, deserialize_with = "non_empty")]
    token_file: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    client_certificate: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    client_certificate_data: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    client_key: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    client_key_data: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    username: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    password: Option<String>,
    exec: Option<serde_json::Value>,
    auth_provider: Option<serde_json::Value>,
    #[serde(rename = "as")]
    impersonate: Option<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |value: &Option<String>| value.as_ref().map(|_| "<set>");
        f.debug_struct("User")
            .field("token", &set(&self.token))
            .field("token_file", &self.token_file)
            .field("client_certificate", &self.client_certificate)
            .field(
                "client_certificate_data",
                &set(&self.client_certificate_data),
            )
            .field("client_key", &self.client_key)
            .field("client_key_data", &set(&self.client_key_data))
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("exec", &self.exec.is_some())
            .field("auth_provider", &self.auth_provider.is_some())
            .field("as", &self.impersonate)
            .finish()
    }
}

/// An empty string is no value (client-go tests `len(x) > 0` everywhere).
fn non_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let value: Option<String> = Option::deserialize(deserializer)?;
    Ok(value.filter(|v| !v.is_empty()))
}

/// A kubeconfig list (`- name: x` + `cluster:`/`context:`/`user:`) as a map by name; the first
/// entry of a name wins, as in a merge.
fn named<'de, D, T>(deserializer: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    #[derive(Deserialize)]
    struct Entry<T> {
        name: String,
        #[serde(alias = "cluster", alias = "context", alias = "user")]
        value: Option<T>,
    }
    let entries: Option<Vec<Entry<T>>> = Option::deserialize(deserializer)?;
    let mut map = BTreeMap::new();
    for entry in entries.unwrap_or_default() {
        map.entry(entry.name)
            .or_insert(entry.value.unwrap_or_default());
    }
    Ok(map)
}

impl Kubeconfig {
    /// `later` merged under this one: the first file to set a value keeps it (client-go's rule).
    fn merge(mut self, later: Kubeconfig) -> Kubeconfig {
        if self.current_context.as_deref().is_none_or(str::is_empty) {
            self.current_context = later.current_context;
        }
        for (name, cluster) in later.clusters {
            self.clusters.entry(name).or_insert(cluster);
        }
        for (name, context) in later.contexts {
            self.contexts.entry(name).or_insert(context);
        }
        for (name, user) in later.users {
            self.users.entry(name).or_insert(user);
        }
        self
    }

    /// The current context's server and credentials.
    fn resolve(self) -> Result<ApiConfig, String> {
        let name = self
            .current_context
            .filter(|c| !c.is_empty())
            .ok_or("no current-context")?;
        let context = self
            .contexts
            .get(&name)
            .ok_or_else(|| format!("current-context {name:?} is not among the contexts"))?;
        let cluster_name = context.cluster.clone().unwrap_or_default();
        let cluster = self.clusters.get(&cluster_name).ok_or_else(|| {
            format!("cluster {cluster_name:?} (of context {name:?}) is not among the clusters")
        })?;
        let user_name = context.user.clone().unwrap_or_default();
        let user = self.users.get(&user_name).cloned().unwrap_or_default();
        let server = cluster
            .server
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("cluster {cluster_name:?} has no server"))?;
        let Some(rest) = server
            .strip_prefix("https://")
            .or_else(|| server.strip_prefix("http://"))
        else {
            return Err(format!(
                "cluster {cluster_name:?}: server {server:?} is not an http(s) URL"
            ));
        };
        if rest
            .split('/')
            .next()
            .is_some_and(|authority| authority.contains('@'))
        {
            return Err(format!(
                "cluster {cluster_name:?}: the server URL holds credentials (user@host): give them as the user's"
            ));
        }
        for (set, field) in [
            (cluster.tls_server_name.is_some(), "tls-server-name"),
            (cluster.proxy_url.is_some(), "proxy-url"),
        ] {
            if set {
                return Err(format!(
                    "cluster {cluster_name:?}: {field} is not supported by pullwatch"
                ));
            }
        }
        let unsupported = |field: &str| {
            format!(
                "user {user_name:?}: {field} is not supported by pullwatch (give the user a token, \
                 tokenFile or client certificate, or run in the cluster on a service account)"
            )
        };
        if user.exec.is_some() {
            return Err(unsupported("an exec plugin"));
        }
        if user.auth_provider.is_some() {
            return Err(unsupported("an auth-provider"));
        }
        if user.impersonate.is_some() {
            return Err(unsupported("impersonation (as)"));
        }
        let ca_pem = pem(
            cluster.certificate_authority_data.as_deref(),
            cluster.certificate_authority.as_deref(),
            "certificate-authority",
        )?;
        if cluster.insecure_skip_tls_verify && ca_pem.is_some() {
            return Err(format!(
                "cluster {cluster_name:?}: a certificate authority and insecure-skip-tls-verify together are refused (as kubectl does)"
            ));
        }
        let certificate = pem(
            user.client_certificate_data.as_deref(),
            user.client_certificate.as_deref(),
            "client-certificate",
        )?;
        let key = pem(
            user.client_key_data.as_deref(),
            user.client_key.as_deref(),
            "client-key",
        )?;
        let identity_pem = match (certificate, key) {
            (None, None) => None,
            (Some(mut pem), Some(key)) => {
                pem.push(b'\n');
                pem.extend(key);
                Some(pem)
            }
            _ => {
                return Err(format!(
                    "user {user_name:?}: a client certificate needs its key, and a key its certificate"
                ));
            }
        };
        // client-go: a token file, read again as it changes, wins over a token.
        let auth = match (user.token_file, user.token, user.username, user.password) {
            (Some(file), _, _, _) if !file.is_empty() => Auth::TokenFile(PathBuf::from(file)),
            (_, Some(token), _, _) if !token.is_empty() => Auth::Bearer(token),
            (_, _, Some(username), password) => Auth::Basic {
                username,
                password: password.unwrap_or_default(),
            },
            _ => Auth::None,
        };
        Ok(ApiConfig {
            server,
            ca_pem,
            insecure_skip_verify: cluster.insecure_skip_tls_verify,
            identity_pem,
            auth,
        })
    }
}

/// A PEM given as `<field>-data` (which wins) or as the file `<field>` names, read bounded.
fn pem(data: Option<&str>, file: Option<&str>, field: &str) -> Result<Option<Vec<u8>>, String> {
    match (data, file) {
        (Some(data), _) => decoded(data, &format!("{field}-data")).map(Some),
        (None, Some(file)) => bounded_file::read(Path::new(file), bounded_file::PEM)
            .map(Some)
            .map_err(|e| format!("{field}: {e}")),
        (None, None) => Ok(None),
    }
}

/// A `*-data` field's bytes; an error names the field, never its content.
fn decoded(data: &str, field: &str) -> Result<Vec<u8>, String> {
    // Line breaks and spaces are skipped, as Go's decoder skips them in a wrapped value.
    let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| format!("{field} is not base64"))
}

/// Every file read and merged, the first to set a value winning.
fn read(paths: &[PathBuf]) -> Result<Kubeconfig, KubeconfigError> {
    let Some((first, rest)) = paths.split_first() else {
        return Err(KubeconfigError {
            path: PathBuf::from("~/.kube/config"),
            problem: "no home directory to look in".into(),
        });
    };
    // A file that does not exist is passed over, as client-go does; none at all is an error.
    let mut merged: Option<Kubeconfig> = None;
    for path in std::iter::once(first).chain(rest) {
        let Some(config) = read_one(path)? else {
            continue;
        };
        merged = Some(match merged {
            Some(earlier) => earlier.merge(config),
            None => config,
        });
    }
    merged.ok_or_else(|| KubeconfigError {
        path: PathBuf::from(shown(paths)),
        problem: "no such file".into(),
    })
}

/// One kubeconfig, read bounded, its relative paths made absolute (client-go resolves them
/// against the file that names them); `None` when the file does not exist.
fn read_one(path: &Path) -> Result<Option<Kubeconfig>, KubeconfigError> {
    let fail = |problem: String| KubeconfigError {
        path: path.to_path_buf(),
        problem,
    };
    let text = match bounded_file::read_to_string(path, bounded_file::KUBECONFIG) {
        Ok(text) => text,
        Err(error) if error.is_not_found() => return Ok(None),
        Err(error) => return Err(fail(error.problem.to_string())),
    };
    let mut config: Kubeconfig = if text.trim().is_empty() {
        Kubeconfig::default()
    } else {
        serde_norway::from_str(&text)
            .map_err(|e| fail(format!("not a kubeconfig: {}", yaml_problem(&e))))?
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    // Only made absolute here: the files are read for the context in use alone, so a stale
    // entry for another cluster does not spoil the file (client-go reads them as late).
    let absolute = |file: &mut String| *file = dir.join(&*file).display().to_string();
    let users = config.users.values_mut().flat_map(|user| {
        [
            &mut user.client_certificate,
            &mut user.client_key,
            &mut user.token_file,
        ]
    });
    let clusters = config
        .clusters
        .values_mut()
        .map(|cluster| &mut cluster.certificate_authority);
    for file in clusters.chain(users).flatten() {
        absolute(file);
    }
    Ok(Some(config))
}

/// A YAML error's place and kind, without the text it quotes (a kubeconfig holds credentials).
fn yaml_problem(error: &serde_norway::Error) -> String {
    let message = error.to_string();
    // serde's messages quote a value after `invalid type: string "…"` or `invalid value: …`.
    let kind = message.split(':').next().unwrap_or("malformed");
    match error.location() {
        Some(at) => format!("{kind} at line {} column {}", at.line(), at.column()),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn read_bounded(paths: Vec<PathBuf>) -> Result<Kubeconfig, KubeconfigError> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read(&paths));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("reading the kubeconfig blocked for 10 s")
    }

    #[test]
    fn finds_the_files_as_client_go_does() {
        let home = Path::new("/home/u");
        assert_eq!(
            kubeconfig_paths(Some("/a:/b".into()), Some(home)),
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(
            kubeconfig_paths(Some(":".into()), Some(home)),
            [PathBuf::from("/home/u/.kube/config")]
        );
        assert_eq!(
            kubeconfig_paths(None, Some(home)),
            [PathBuf::from("/home/u/.kube/config")]
        );
        assert!(kubeconfig_paths(None, None).is_empty());
    }

    #[test]
    fn refuses_devices_fifos_and_oversized_files_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(bounded_file::KUBECONFIG.max_bytes + 1)
            .unwrap();
        let cases = [
            (
                PathBuf::from("/dev/zero"),
                "/dev/zero: is a character device, not a regular file".to_string(),
            ),
            (
                fifo.clone(),
                format!(
                    "{}: is a FIFO (named pipe), not a regular file",
                    fifo.display()
                ),
            ),
            (
                big.clone(),
                format!(
                    "{}: 8388609 bytes, more than the 8 MiB a kubeconfig may have",
                    big.display()
                ),
            ),
        ];
        for (path, want) in cases {
            let error = read_bounded(vec![path]).unwrap_err();
            assert_eq!(error.to_string(), want);
        }
    }

    #[test]
    fn reads_the_certificate_files_of_the_context_in_use_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA PEM").unwrap();
        std::fs::write(dir.path().join("client.crt"), "CLIENT PEM").unwrap();
        std::fs::write(dir.path().join("client.key"), "KEY PEM").unwrap();
        let path = dir.path().join("config");
        let kubeconfig = |ca: &str| {
            format!(
                "clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: {ca}\n\
                 - name: stale\n  cluster:\n    server: https://old:6443\n    certificate-authority: deleted/ca.crt\n\
                 users:\n- name: u\n  user:\n    client-certificate: client.crt\n    client-key: client.key\n    tokenFile: token\n\
                 contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
            )
        };
        std::fs::write(&path, kubeconfig("ca.crt")).unwrap();
        let read = read_bounded(vec![path.clone()]).unwrap();
        assert_eq!(
            read.users["u"].token_file.as_deref(),
            Some(dir.path().join("token").to_str().unwrap())
        );
        // The stale cluster's missing CA file is never read.
        let config = read.resolve().unwrap();
        assert_eq!(config.ca_pem.as_deref(), Some(&b"CA PEM"[..]));
        assert_eq!(
            config.identity_pem.as_deref(),
            Some(&b"CLIENT PEM\nKEY PEM"[..])
        );
        assert!(matches!(config.auth, Auth::TokenFile(ref p) if p == &dir.path().join("token")));
        // The one in use is, bounded: a device is refused, named.
        std::fs::write(&path, kubeconfig("/dev/zero")).unwrap();
        let error = read_bounded(vec![path]).unwrap().resolve().unwrap_err();
        assert_eq!(
            error,
            "certificate-authority: /dev/zero: is a character device, not a regular file"
        );
    }

    fn resolved(files: &[&str]) -> Result<ApiConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let path = dir.path().join(format!("config-{i}"));
                std::fs::write(&path, text).unwrap();
                path
            })
            .collect();
        read(&paths).map_err(|e| e.problem)?.resolve()
    }

    const CLUSTER: &str = "clusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\n";
    const CONTEXT: &str =
        "contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n";

    #[test]
    fn resolves_the_current_context_row_by_row() {
        let with_user =
            |user: &str| format!("{CLUSTER}{CONTEXT}users:\n- name: u\n  user:\n{user}");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cases: Vec<(String, Result<&str, &str>)> = vec![
            (with_user("    token: abc\n"), Ok("bearer abc")),
            (
                with_user("    token: abc\n    tokenFile: /t\n"),
                Ok("file /t"),
            ),
            (
                with_user("    username: al\n    password: pw\n"),
                Ok("basic al"),
            ),
            (format!("{CLUSTER}{CONTEXT}users: []\n"), Ok("none")),
            (
                with_user(&format!(
                    "    client-certificate-data: {}\n    client-key-data: {}\n",
                    b64("CERT"),
                    b64("KEY")
                )),
                Ok("none, identity"),
            ),
            (
                with_user(&format!("    client-certificate-data: {}\n", b64("CERT"))),
                Err("user \"u\": a client certificate needs its key, and a key its certificate"),
            ),
            (
                with_user("    exec:\n      command: aws\n      args: [eks, get-token]\n"),
                Err("user \"u\": an exec plugin is not supported by pullwatch"),
            ),
            (
                with_user("    auth-provider:\n      name: gcp\n"),
                Err("user \"u\": an auth-provider is not supported"),
            ),
            (
                with_user("    as: admin\n"),
                Err("impersonation (as) is not supported"),
            ),
            // Empty values are no values: the token wins over an empty tokenFile.
            (
                with_user("    token: abc\n    tokenFile: \"\"\n    client-key: \"\"\n"),
                Ok("bearer abc"),
            ),
            // A wrapped `*-data` value decodes as Go's decoder takes it.
            (
                with_user(&format!(
                    "    client-certificate-data: |\n      {}\n      {}\n    client-key-data: {}\n",
                    &b64("CERT")[..4],
                    &b64("CERT")[4..],
                    b64("KEY")
                )),
                Ok("none, identity"),
            ),
            (
                format!(
                    "clusters:\n- name: c\n  cluster:\n    server: https://al:pw@10.0.0.1\n{CONTEXT}"
                ),
                Err("the server URL holds credentials (user@host)"),
            ),
            (format!("{CLUSTER}users: []\n"), Err("no current-context")),
            (
                format!("{CLUSTER}current-context: y\n"),
                Err("current-context \"y\" is not among the contexts"),
            ),
            (
                CONTEXT.to_string(),
                Err("cluster \"c\" (of context \"x\") is not among the clusters"),
            ),
            (
                format!("clusters:\n- name: c\n  cluster:\n    server: 10.0.0.1:6443\n{CONTEXT}"),
                Err("server \"10.0.0.1:6443\" is not an http(s) URL"),
            ),
            (
                format!("{}    tls-server-name: api\n{CONTEXT}", CLUSTER),
                Err("tls-server-name is not supported"),
            ),
            (
                format!(
                    "{}    insecure-skip-tls-verify: true\n    certificate-authority-data: {}\n{CONTEXT}",
                    CLUSTER,
                    b64("CA")
                ),
                Err("a certificate authority and insecure-skip-tls-verify together are refused"),
            ),
            (
                format!(
                    "{}    certificate-authority-data: '%%%'\n{CONTEXT}",
                    CLUSTER
                ),
                Err("certificate-authority-data is not base64"),
            ),
        ];
        for (text, want) in cases {
            let got = resolved(&[&text]).map(|config| {
                let auth = match &config.auth {
                    Auth::None => "none".to_string(),
                    Auth::Bearer(token) => format!("bearer {token}"),
                    Auth::TokenFile(path) => format!("file {}", path.display()),
                    Auth::Basic { username, .. } => format!("basic {username}"),
                };
                match config.identity_pem {
                    Some(pem) => {
                        assert_eq!(pem, b"CERT\nKEY");
                        format!("{auth}, identity")
                    }
                    None => auth,
                }
            });
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_first_file_to_set_a_value_wins() {
        let first = "current-context: x\nclusters:\n- name: c\n  cluster:\n    server: https://first:6443\n";
        let second = format!(
            "current-context: other\nclusters:\n- name: c\n  cluster:\n    server: https://second:6443\n{}",
            "contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:\n    token: t2\n"
        );
        let config = resolved(&[first, &second]).unwrap();
        assert_eq!(config.server, "https://first:6443");
        assert!(matches!(config.auth, Auth::Bearer(ref t) if t == "t2"));
    }

    #[test]
    fn files_that_do_not_exist_are_passed_over_but_not_all() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("present");
        std::fs::write(&present, format!("{CLUSTER}{CONTEXT}")).unwrap();
        let missing = dir.path().join("missing");
        let config = read_bounded(vec![missing.clone(), present.clone()]).unwrap();
        assert_eq!(config.current_context.as_deref(), Some("x"));
        let error = read_bounded(vec![missing.clone(), dir.path().join("gone")]).unwrap_err();
        assert!(error.to_string().ends_with(": no such file"), "{error}");
    }

    #[test]
    fn yaml_errors_do_not_quote_the_file() {
        let error = resolved(&["users:\n- name: u\n  user:\n    token: [hunter2\n"]).unwrap_err();
        assert!(error.starts_with("not a kubeconfig: "), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let error = resolved(&["users:\n- name: u\n  user:\n    token:\n      secret: hunter2\n"])
            .unwrap_err();
        assert!(error.contains("users[0].user.token at line"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn in_cluster_needs_the_service_and_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let env = |host: &'static str| {
            move |name: &str| match name {
                "KUBERNETES_SERVICE_HOST" => Some(host.to_string()),
                "KUBERNETES_SERVICE_PORT" => Some("443".to_string()),
                _ => None,
            }
        };
        let error = in_cluster(env("10.96.0.1"), dir.path())
            .map(|_| ())
            .unwrap_err();
        assert!(error.contains("/token: cannot read: "), "{error}");
        std::fs::write(dir.path().join("token"), "tok\n").unwrap();
        let config = in_cluster(env("fd00::1"), dir.path()).unwrap();
        assert_eq!(config.server, "https://[fd00::1]:443");
        assert!(config.ca_pem.is_none(), "no ca.crt: the system's roots");
        assert!(matches!(config.auth, Auth::TokenFile(ref p) if p == &dir.path().join("token")));
        std::fs::write(dir.path().join("ca.crt"), "CA").unwrap();
        let config = in_cluster(env("10.96.0.1"), dir.path()).unwrap();
        assert_eq!(config.server, "https://10.96.0.1:443");
        assert_eq!(config.ca_pem.as_deref(), Some(&b"CA"[..]));
        let error = in_cluster(|_| None, dir.path()).map(|_| ()).unwrap_err();
        assert!(error.starts_with("not in a cluster"), "{error}");
    }
}
