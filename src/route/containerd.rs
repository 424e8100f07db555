//! containerd's registry hosts (`config_path`, e.g. /etc/containerd/certs.d): for a registry,
//! `<dir>/<host[:port]>/hosts.toml` (else `_default/`), its `[host."…"]` in file order, then `server`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use toml::Spanned;

use super::{
    Capabilities, ConfigProblem, Endpoint, HostExtras, Lines, RegistryNameError, Role, RouteHost,
    Scheme, line_of, parse_server, serving_host, split_host_port,
};
use crate::bounded_file;
use crate::go_duration::{GoDuration, parse_go_duration};
use crate::trust::TlsOptions;

/// The directory containerd falls back to when a registry has none of its own.
pub const DEFAULT_DIR: &str = "_default";
pub const HOSTS_FILE: &str = "hosts.toml";
/// At most this many registry directories are listed (a bound on what `targets` reads).
pub const MAX_DIRS: usize = 1000;

pub use super::containerd_rules::Quirks;
use super::containerd_rules::{Attempt, HttpFallback, is_localhost};

/// The host directory containerd uses for `registry`, as its `hostPaths`: for `host:port` first
/// `host_port_` (a name every filesystem takes), then `host:port`; else `_default`.
pub fn host_dir(root: &Path, registry: &str) -> Option<PathBuf> {
    let escaped = port_escaped(registry);
    escaped
        .map(|name| root.join(name))
        .into_iter()
        .chain([root.join(registry), root.join(DEFAULT_DIR)])
        .find(|p| p.exists())
}

/// `host_port_` for `host:port` (containerd's `hostDirectory`); `None` without a port.
fn port_escaped(registry: &str) -> Option<String> {
    match registry.rfind(':') {
        Some(i) if i > 0 => Some(format!("{}_{}_", &registry[..i], &registry[i + 1..])),
        _ => None,
    }
}

/// The registry a directory is for: `host_port_` is `host:port`, anything else its own name.
fn dir_registry(name: &str) -> String {
    let unescaped = name
        .strip_suffix('_')
        .and_then(|rest| rest.rsplit_once('_'))
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
        .map(|(host, port)| format!("{host}:{port}"));
    unescaped.unwrap_or_else(|| name.to_string())
}

/// The registries with a directory of their own (sorted, each once: `host_port_` and `host:port`
/// are one registry; `_default` not included), at most [`MAX_DIRS`] of them; and the problem when
/// the directory cannot be listed or holds more.
pub fn configured_registries(root: &Path) -> (Vec<String>, Option<ConfigProblem>) {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return (vec![], None),
        Err(error) => {
            return (
                vec![],
                Some(ConfigProblem {
                    file: root.to_path_buf(),
                    line: None,
                    message: error.to_string(),
                }),
            );
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != DEFAULT_DIR)
        .map(|name| dir_registry(&name))
        .filter(|name| split_host_port(name).is_ok())
        .collect();
    names.sort();
    names.dedup();
    let overflow = (names.len() > MAX_DIRS).then(|| ConfigProblem {
        file: root.to_path_buf(),
        line: None,
        message: format!(
            "{} registry directories; only the first {MAX_DIRS} by name are listed",
            names.len()
        ),
    });
    names.truncate(MAX_DIRS);
    (names, overflow)
}

/// One host as hosts.toml describes it (the last one is the `server`, maybe implicit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// `None` for the root entry without `server`: the registry itself. The port as written
    /// (`None`: none written), since containerd's scheme rules look at what was written.
    pub server: Option<(Scheme, String, Option<u16>)>,
    /// The API root: `/v2`, the server's path + `/v2`, or its path alone with `override_path`.
    pub path: String,
    pub capabilities: Option<Capabilities>,
    pub ca_files: Vec<PathBuf>,
    /// Certificate and key; the key is in the certificate file when `None`.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: Option<bool>,
    pub line: Option<usize>,
    /// `header` and `dial_timeout`.
    pub extras: HostExtras,
}

impl HostConfig {
    /// The registry itself, at `/v2`: what containerd uses without a `server`.
    fn registry_itself() -> Self {
        HostConfig {
            path: "/v2".into(),
            ..HostConfig::default()
        }
    }
}

/// A problem at a place in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: Option<usize>,
    pub message: String,
}

/// What the runtime reads from one host directory, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDir {
    pub dir: PathBuf,
    /// The hosts in order; the last is the root (`server`) entry.
    pub hosts: Vec<HostConfig>,
    /// The file the hosts came from (`hosts.toml`), or the directory for Docker-style cert files.
    pub source: PathBuf,
    pub problem: Option<ConfigProblem>,
}

/// Reads a host directory the way containerd does: `hosts.toml`, or when it is missing, empty or
/// malformed, the Docker-style cert files (`*.crt` CAs, `*.cert`/`*.key` pairs) for the registry
/// itself.
pub fn read_host_dir(dir: &Path, quirks: Quirks) -> HostDir {
    let file = dir.join(HOSTS_FILE);
    let fallback = |problem: Option<ConfigProblem>| HostDir {
        dir: dir.to_path_buf(),
        hosts: vec![cert_files(dir)],
        source: dir.to_path_buf(),
        problem,
    };
    let text = match bounded_file::read_to_string(&file, bounded_file::ROUTE_CONFIG) {
        Ok(text) => text,
        Err(error) if error.is_not_found() => return fallback(None),
        Err(error) => {
            return fallback(Some(ConfigProblem {
                file,
                line: None,
                message: error.problem.to_string(),
            }));
        }
    };
    if text.is_empty() {
        return fallback(None);
    }
    match parse_hosts_toml(&text, dir, quirks) {
        Ok(hosts) => HostDir {
            dir: dir.to_path_buf(),
            hosts,
            source: file,
            problem: None,
        },
        Err(error) => fallback(Some(ConfigProblem {
            file,
            line: error.line,
            message: format!("{}; containerd ignores this file", error.message),
        })),
    }
}

/// The Docker-style certificate files of a host directory, for the registry itself.
pub(crate) fn cert_files(dir: &Path) -> HostConfig {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                // containerd reads every `*.crt`/`*.cert`/`*.key` that is not a directory: a
                // FIFO or device among them fails the tls check, named, instead of being skipped.
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut host = HostConfig::registry_itself();
    for name in &names {
        if name.ends_with(".crt") {
            host.ca_files.push(dir.join(name));
        }
        if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            let key = key.exists().then_some(key);
            host.client.push((dir.join(name), key));
        }
    }
    host
}

/// A string or a list of them (`ca`).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `client`: a file, a list of files, or a list of `[cert, key]` pairs.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientValue {
    One(String),
    Many(Vec<ClientItem>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ClientItem {
    File(String),
    Pair(Vec<String>),
}

/// The fields a `[host."…"]` table (and the root) may carry; unknown keys are ignored, as by
/// containerd.
#[derive(Deserialize, Default)]
struct HostFields {
    capabilities: Option<Spanned<Vec<String>>>,
    ca: Option<Spanned<OneOrMany>>,
    client: Option<Spanned<ClientValue>>,
    skip_verify: Option<bool>,
    #[serde(default)]
    override_path: bool,
    header: Option<BTreeMap<String, OneOrMany>>,
    dial_timeout: Option<Spanned<String>>,
}

/// The file: `server` and the root's own [`HostFields`], spelled out rather than
/// `#[serde(flatten)]`ed, which would lose the spans that locate a problem.
#[derive(Deserialize)]
struct HostsFile {
    server: Option<Spanned<String>>,
    capabilities: Option<Spanned<Vec<String>>>,
    ca: Option<Spanned<OneOrMany>>,
    client: Option<Spanned<ClientValue>>,
    skip_verify: Option<bool>,
    #[serde(default)]
    override_path: bool,
    header: Option<BTreeMap<String, OneOrMany>>,
    dial_timeout: Option<Spanned<String>>,
    host: Option<OrderedHosts>,
}

/// `[host."…"]` tables in the order the file has them (containerd sorts them by line).
struct OrderedHosts(Vec<(Spanned<String>, HostFields)>);

impl<'de> Deserialize<'de> for OrderedHosts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = OrderedHosts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tables [host.\"https://…\"]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedHosts, A::Error> {
                let mut hosts = Vec::new();
                while let Some(entry) = map.next_entry::<Spanned<String>, HostFields>()? {
                    hosts.push(entry);
                }
                Ok(OrderedHosts(hosts))
            }
        }
        deserializer.deserialize_map(Ordered)
    }
}

/// Parses hosts.toml text; relative `ca`/`client` paths are relative to `base_dir`.
/// `Err` carries the line and why, as containerd would refuse it.
pub fn parse_hosts_toml(
    text: &str,
    base_dir: &Path,
    quirks: Quirks,
) -> Result<Vec<HostConfig>, ParseError> {
    let file: HostsFile = toml::from_str(text).map_err(|e| ParseError {
        line: e.span().map(|s| line_of(text, s.start)),
        message: e.message().trim_end().to_string(),
    })?;
    if file.host.is_none() && quirks.needs_host_table == Some(true) {
        return Err(ParseError {
            line: None,
            message: "no [host] table: this containerd version rejects the file (\"invalid `host` tree\", containerd#10027); add an empty [host] table".into(),
        });
    }
    let lines = Lines::new(text);
    let mut hosts = Vec::new();
    for (name, fields) in file.host.map(|h| h.0).unwrap_or_default() {
        let line = lines.line(name.span().start);
        // containerd 2.x reads only `[host."…"]` tables: a host written inline (its key followed
        // by `= {`, not by the `]` of a table header) is never used.
        let inline = text
            .get(name.span().end..)
            .map(str::trim_start)
            .and_then(|rest| rest.strip_prefix('='))
            .is_some_and(|rest| rest.trim_start().starts_with('{'));
        if inline && quirks.ignores_inline_hosts {
            tracing::warn!(
                dir = %base_dir.display(),
                line,
                host = name.get_ref(),
                "hosts.toml host written as an inline table: this containerd version ignores it"
            );
            continue;
        }
        hosts.push(host_config(
            quirks,
            Some(name.get_ref()),
            Some(line),
            fields,
            text,
            base_dir,
        )?);
    }
    let root = HostFields {
        capabilities: file.capabilities,
        ca: file.ca,
        client: file.client,
        skip_verify: file.skip_verify,
        override_path: file.override_path,
        header: file.header,
        dial_timeout: file.dial_timeout,
    };
    let line = file.server.as_ref().map(|s| lines.line(s.span().start));
    let server = file
        .server
        .map(|s| s.into_inner())
        .filter(|s| !s.is_empty());
    hosts.push(host_config(
        quirks,
        server.as_deref(),
        line,
        root,
        text,
        base_dir,
    )?);
    Ok(hosts)
}

fn host_config(
    quirks: Quirks,
    server: Option<&str>,
    line: Option<usize>,
    fields: HostFields,
    text: &str,
    base_dir: &Path,
) -> Result<HostConfig, ParseError> {
    let at = |span: std::ops::Range<usize>, message: String| ParseError {
        line: Some(line_of(text, span.start)),
        message,
    };
    let mut host = HostConfig {
        line,
        skip_verify: fields.skip_verify,
        ..HostConfig::registry_itself()
    };
    if let Some(header) = fields.header {
        for (name, values) in header {
            let values = match values {
                OneOrMany::One(value) => vec![value],
                OneOrMany::Many(values) => values,
            };
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || values
                    .iter()
                    .any(|v| http::HeaderValue::from_str(v).is_err())
            {
                // The value is not quoted: a header may carry a token.
                return Err(ParseError {
                    line,
                    message: format!("header {name:?} is not a valid HTTP header"),
                });
            }
            host.extras
                .headers
                .extend(values.into_iter().map(|v| (name.clone(), v)));
        }
    }
    if let Some(timeout) = fields.dial_timeout {
        let span = timeout.span();
        host.extras.dial_timeout = match parse_go_duration(timeout.get_ref()) {
            Ok(GoDuration::Positive(d)) if !d.is_zero() => Some(d),
            Ok(_) => None,
            Err(problem) => return Err(at(span, format!("dial_timeout: {problem}"))),
        };
    }
    if let Some(server) = server {
        let (scheme, name, port, path) = parse_server(server).map_err(|message| ParseError {
            line,
            message: format!("unable to parse server: {message}"),
        })?;
        host.server = Some((scheme, name, port));
        host.path = if path.is_empty() {
            if fields.override_path {
                String::new()
            } else {
                "/v2".into()
            }
        } else if path.ends_with("/v2") || fields.override_path {
            path
        } else {
            format!("{path}/v2")
        };
    }
    if let Some(capabilities) = fields.capabilities {
        let span = capabilities.span();
        let names = capabilities.into_inner();
        if !names.is_empty() {
            let mut caps = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for name in names {
                match name.to_ascii_lowercase().as_str() {
                    "pull" => caps.pull = true,
                    "resolve" => caps.resolve = true,
                    "push" => caps.push = true,
                    // Known from 2.2 (OCI referrers); pullwatch asks no referrers of a host.
                    "referrers" if quirks.referrers_capability => {}
                    _ => return Err(at(span, format!("unknown capability {name:?}"))),
                }
            }
            host.capabilities = Some(caps);
        }
    }
    let absolute = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };
    if let Some(ca) = fields.ca {
        host.ca_files = match ca.into_inner() {
            OneOrMany::One(path) => vec![absolute(&path)],
            OneOrMany::Many(paths) => paths.iter().map(|p| absolute(p)).collect(),
        };
    }
    if let Some(client) = fields.client {
        let span = client.span();
        host.client = match client.into_inner() {
            ClientValue::One(path) => vec![(absolute(&path), None)],
            ClientValue::Many(items) => items
                .into_iter()
                .map(|item| match item {
                    ClientItem::File(path) => Ok((absolute(&path), None)),
                    ClientItem::Pair(pair) if pair.len() == 2 => {
                        Ok((absolute(&pair[0]), Some(absolute(&pair[1]))))
                    }
                    ClientItem::Pair(pair) => Err(at(
                        span.clone(),
                        format!("invalid pair {pair:?} for \"client\": want [cert, key]"),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
    }
    Ok(host)
}

/// containerd's route for `registry` under `root`, and any problem with the files read.
/// `insecure` (`--insecure-registry`) makes the implicit upstream plain HTTP.
pub fn route(
    root: &Path,
    registry: &str,
    insecure: bool,
    quirks: Quirks,
) -> Result<(Vec<RouteHost>, Option<ConfigProblem>), RegistryNameError> {
    let (registry_host, registry_port) = split_host_port(registry)?;
    let dir = host_dir(root, registry).map(|dir| read_host_dir(&dir, quirks));
    let (configs, source, problem) = match dir {
        Some(dir) => (dir.hosts, dir.source.display().to_string(), dir.problem),
        None => (
            vec![HostConfig::registry_itself()],
            "default".to_string(),
            None,
        ),
    };
    let last = configs.len().saturating_sub(1);
    let hosts = configs
        .into_iter()
        .enumerate()
        .map(|(i, config)| {
            let role = if i == last {
                Role::Upstream
            } else {
                Role::Mirror
            };
            // The root entry without `server` is the registry itself.
            let (scheme, host, port, skip_verify, http_fallback) = match config.server.clone() {
                Some((Scheme::Http, host, port)) if has_tls_settings(&config) => {
                    let a = quirks.http_with_tls_attempt(port, config.skip_verify.unwrap_or(false));
                    (scheme_of(&a), host, a.port, config.skip_verify, a.fallback)
                }
                Some((scheme, host, port)) => {
                    let port = port.unwrap_or(scheme.default_port());
                    (scheme, host, port, config.skip_verify, None)
                }
                None => implicit_upstream(&registry_host, registry_port, insecure, &config, quirks),
            };
            let source = if config.server.is_none() && source == "default" {
                "default".to_string()
            } else {
                source.clone()
            };
            let client_certs = config
                .client
                .iter()
                .map(|(cert, key)| (cert.clone(), key.clone().unwrap_or_else(|| cert.clone())))
                .collect();
            RouteHost {
                endpoint: Endpoint {
                    scheme,
                    host,
                    port,
                    role,
                    source,
                    tls: TlsOptions {
                        ca_files: config.ca_files.clone(),
                        client_certs,
                        skip_verify: skip_verify.unwrap_or(false),
                    },
                    api_path: config.path.clone(),
                    repository: None,
                    namespace_query: true,
                    extras: config.extras.clone(),
                    http_fallback,
                },
                capabilities: if config.server.is_none() {
                    Capabilities::ALL
                } else {
                    config.capabilities.unwrap_or(Capabilities::ALL)
                },
                location: None,
                line: config.line,
            }
        })
        .collect();
    Ok((hosts, problem))
}

/// The registry itself when hosts.toml names no `server`: HTTPS; a registry on localhost as
/// this containerd version treats it (plain HTTP, HTTPS first then HTTP, or by port; see
/// [`Quirks::localhost_attempt`]); `--insecure-registry` plain HTTP.
fn implicit_upstream(
    registry_host: &str,
    registry_port: Option<u16>,
    insecure: bool,
    config: &HostConfig,
    quirks: Quirks,
) -> (Scheme, String, u16, Option<bool>, Option<HttpFallback>) {
    let host = serving_host(registry_host).to_string();
    if insecure {
        let port = registry_port.unwrap_or(80);
        return (Scheme::Http, host, port, config.skip_verify, None);
    }
    if is_localhost(registry_host) {
        let a = quirks.localhost_attempt(registry_port);
        return (scheme_of(&a), host, a.port, Some(a.skip_verify), a.fallback);
    }
    let port = registry_port.unwrap_or(443);
    (Scheme::Https, host, port, config.skip_verify, None)
}

fn scheme_of(attempt: &Attempt) -> Scheme {
    if attempt.https {
        Scheme::Https
    } else {
        Scheme::Http
    }
}

/// `ca`, `client` or `skip_verify` written for the host: what makes containerd (from 1.6.25,
/// 1.7.7) try HTTPS first on an `http://` host.
fn has_tls_settings(config: &HostConfig) -> bool {
    !config.ca_files.is_empty() || !config.client.is_empty() || config.skip_verify.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V16: Quirks = Quirks {
        needs_host_table: Some(true),
        localhost: super::super::containerd_rules::Localhost::PlainHttp,
        http_with_tls: super::super::containerd_rules::HttpWithTls::PlainHttp,
        referrers_capability: false,
        ignores_inline_hosts: false,
        fallback: super::super::containerd_rules::FallbackTriggers {
            handshake_timeout: false,
            connect_failure_without_port: false,
        },
    };
    /// Only the `[host]` table rule of 2.x (its scheme rules are tested in containerd_rules).
    const V2: Quirks = Quirks {
        needs_host_table: Some(false),
        ..V16
    };

    #[test]
    fn versions_that_need_a_host_table() {
        for (version, want) in [
            ("1.6.20~ds1", Some(true)),
            ("v1.7.13", Some(true)),
            ("1.7.25", Some(true)),
            ("1.7.32", Some(false)),
            ("2.0.0", Some(false)),
            ("v2.1.1-k3s1", Some(false)),
            ("1.5.9", Some(true)),
            ("devel", None),
        ] {
            assert_eq!(
                Quirks::for_version(version).needs_host_table,
                want,
                "{version}"
            );
        }
    }

    #[test]
    fn hosts_in_file_order_then_server() {
        let text = r#"server = "https://registry-1.docker.io"
ca = "root-ca.pem"

[host."https://zmirror.example:5000"]
  capabilities = ["pull", "resolve"]
  ca = ["/etc/certs/a.pem", "b.pem"]
  client = [["/c/cert.pem", "/c/key.pem"]]

[host."http://amirror.local/proxy"]
  capabilities = ["pull"]
  skip_verify = true

[host."https://harbor.example/v2/dockerhub"]
  override_path = true
"#;
        let hosts = parse_hosts_toml(text, Path::new("/etc/containerd/certs.d/docker.io"), V2)
            .expect("valid");
        assert_eq!(hosts.len(), 4);
        assert_eq!(
            hosts[0].server,
            Some((Scheme::Https, "zmirror.example".into(), Some(5000)))
        );
        assert_eq!(hosts[0].line, Some(4));
        assert_eq!(
            hosts[0].ca_files,
            vec![
                PathBuf::from("/etc/certs/a.pem"),
                PathBuf::from("/etc/containerd/certs.d/docker.io/b.pem")
            ]
        );
        assert_eq!(
            hosts[0].client,
            vec![(
                PathBuf::from("/c/cert.pem"),
                Some(PathBuf::from("/c/key.pem"))
            )]
        );
        assert_eq!(
            hosts[0].capabilities.map(|c| c.names()),
            Some(vec!["pull", "resolve"])
        );
        assert_eq!(
            hosts[1].server,
            Some((Scheme::Http, "amirror.local".into(), None))
        );
        assert_eq!(hosts[1].path, "/proxy/v2");
        assert_eq!(hosts[1].skip_verify, Some(true));
        assert_eq!(hosts[2].path, "/v2/dockerhub");
        assert_eq!(hosts[0].path, "/v2");
        assert_eq!(hosts[3].path, "/v2");
        assert_eq!(
            hosts[3].server,
            Some((Scheme::Https, "registry-1.docker.io".into(), None))
        );
        assert_eq!(
            hosts[3].ca_files,
            vec![PathBuf::from(
                "/etc/containerd/certs.d/docker.io/root-ca.pem"
            )]
        );
        assert_eq!(hosts[3].line, Some(1));
    }

    #[test]
    fn the_referrers_capability_is_known_from_2_2() {
        let text = "[host.\"https://m.example\"]\n  capabilities = [\"pull\", \"resolve\", \"referrers\"]\n";
        let base = Path::new("/etc/containerd/certs.d/r.example");
        let hosts =
            parse_hosts_toml(text, base, Quirks::for_version("2.2.0")).expect("2.2 knows it");
        assert_eq!(
            hosts[0].capabilities.map(|c| c.names()),
            Some(vec!["pull", "resolve"])
        );
        let before = parse_hosts_toml(text, base, Quirks::for_version("2.1.4"))
            .expect_err("2.1 discards the file");
        assert!(
            before.message.contains("unknown capability"),
            "{}",
            before.message
        );
    }

    #[test]
    fn inline_host_tables_are_ignored_from_2_0() {
        let text = "server = \"https://r.example\"\n[host]\n  \"https://inline.example\" = { capabilities = [\"pull\"] }\n[host.\"https://table.example\"]\n  capabilities = [\"pull\"]\n";
        let base = Path::new("/etc/containerd/certs.d/r.example");
        let servers = |version: &str| -> Vec<String> {
            parse_hosts_toml(text, base, Quirks::for_version(version))
                .expect("a usable file")
                .into_iter()
                .filter_map(|h| h.server.map(|(_, host, _)| host))
                .collect()
        };
        assert_eq!(servers("2.0.0"), ["table.example", "r.example"]);
        assert_eq!(
            servers("1.7.32"),
            ["inline.example", "table.example", "r.example"]
        );
    }

    #[test]
    fn headers_and_dial_timeout_are_read_and_checked() {
        let base = Path::new("/etc/containerd/certs.d/r.example");
        let text = "[host.\"https://m.example\"]\n  dial_timeout = \"1m30s\"\n  [host.\"https://m.example\".header]\n    x-token = \"t0ken\"\n    x-many = [\"a\", \"b\"]\n";
        let hosts = parse_hosts_toml(text, base, Quirks::default()).expect("a usable file");
        let extras = &hosts[0].extras;
        assert_eq!(
            extras.dial_timeout,
            Some(std::time::Duration::from_secs(90))
        );
        let names: Vec<&str> = extras.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-many", "x-many", "x-token"]);
        // A host table made only by its `header` sub-table is a host too (TOML's implicit table).
        let implicit = "[host.\"https://m.example\".header]\n  x-token = \"t0ken\"\n";
        let hosts = parse_hosts_toml(implicit, base, Quirks::for_version("2.0.0"))
            .expect("an implicit host table");
        assert_eq!(hosts[0].extras.headers.len(), 1);
        for (bad, want) in [
            (
                "[host.\"https://m\"]\n  [host.\"https://m\".header]\n    \"bad name\" = \"t0ken\"\n",
                "is not a valid HTTP header",
            ),
            (
                "[host.\"https://m\"]\n  dial_timeout = \"soon\"\n",
                "dial_timeout",
            ),
        ] {
            let error = parse_hosts_toml(bad, base, Quirks::default()).expect_err(bad);
            assert!(error.message.contains(want), "{}", error.message);
            assert!(!error.message.contains("t0ken"), "{}", error.message);
        }
    }

    #[test]
    fn malformed_files_name_the_line_and_why() {
        struct Case {
            text: &'static str,
            quirks: Quirks,
            line: Option<usize>,
            message: &'static str,
        }
        let cases = [
            Case {
                text: "server = \"https://a\"\n[host.\"https://m\"]\n  capabilities = [\"pull\", \"fetch\"]\n",
                quirks: V2,
                line: Some(3),
                message: "unknown capability \"fetch\"",
            },
            Case {
                text: "[host.\"https://m\"]\ncapabilities = [\"pull\"]\nca = 5\n",
                quirks: V2,
                line: Some(3),
                message: "did not match any variant",
            },
            Case {
                text: "server = [\n",
                quirks: V2,
                line: Some(2),
                message: "invalid array\nexpected `]`",
            },
            Case {
                text: "\n\n[host.\"ftp://m\"]\n",
                quirks: V2,
                line: Some(3),
                message: "unsupported scheme \"ftp\"",
            },
            Case {
                text: "[host.\"https://m\"]\nclient = [[\"a\", \"b\", \"c\"]]\n",
                quirks: V2,
                line: Some(2),
                message: "invalid pair",
            },
            Case {
                text: "server = \"https://a\"\nca = \"x.pem\"\n",
                quirks: V16,
                line: None,
                message: "invalid `host` tree",
            },
        ];
        for case in cases {
            let error =
                parse_hosts_toml(case.text, Path::new("/d"), case.quirks).expect_err(case.text);
            assert_eq!(error.line, case.line, "{}: {error:?}", case.text);
            assert!(
                error.message.contains(case.message),
                "{}: {error:?}",
                case.text
            );
        }
        // Without a known version, a file without [host] is read as written.
        let hosts = parse_hosts_toml(
            "server = \"https://a\"\n",
            Path::new("/d"),
            Quirks::default(),
        )
        .unwrap();
        assert_eq!(hosts.len(), 1);
    }

    /// The API root as containerd's parseHostConfig makes it: a server's path gets `/v2` appended
    /// unless it ends with it or `override_path` says the path is the root.
    #[test]
    fn api_roots() {
        struct Case {
            host: &'static str,
            override_path: bool,
            want: &'static str,
        }
        let cases = [
            Case {
                host: "https://m.example",
                override_path: false,
                want: "/v2",
            },
            Case {
                host: "https://m.example/",
                override_path: false,
                want: "/v2",
            },
            Case {
                host: "https://m.example/proxy",
                override_path: false,
                want: "/proxy/v2",
            },
            Case {
                host: "https://m.example//proxy/./v2/",
                override_path: false,
                want: "/proxy/v2",
            },
            Case {
                host: "https://m.example/v2/dockerhub",
                override_path: true,
                want: "/v2/dockerhub",
            },
            Case {
                host: "https://m.example/v2/dockerhub",
                override_path: false,
                want: "/v2/dockerhub/v2",
            },
            Case {
                host: "https://m.example",
                override_path: true,
                want: "",
            },
        ];
        for case in cases {
            let text = format!(
                "[host.\"{}\"]\n  override_path = {}\n",
                case.host, case.override_path
            );
            let hosts = parse_hosts_toml(&text, Path::new("/d"), V2).expect(&text);
            assert_eq!(hosts[0].path, case.want, "{text}");
            // The implicit root entry: the registry itself at /v2.
            assert_eq!(hosts[1].path, "/v2", "{text}");
        }
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn routes_from_a_certs_dir() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(
            root,
            "docker.io/hosts.toml",
            "server = \"https://registry-1.docker.io\"\n[host.\"https://mirror.local:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"mirror-ca.pem\"\n",
        );
        write(root, "10.0.0.5:5000/ca.crt", "pem");
        write(root, "10.0.0.5:5000/client.cert", "pem");
        write(root, "10.0.0.5:5000/client.key", "pem");
        write(root, "broken.example/hosts.toml", "server = [\n");
        write(
            root,
            "_default/hosts.toml",
            "[host.\"https://cache.local\"]\n",
        );

        let (hosts, problem) = route(root, "docker.io", false, V2).unwrap();
        assert!(problem.is_none());
        let urls: Vec<String> = hosts.iter().map(|h| h.endpoint.url()).collect();
        assert_eq!(
            urls,
            ["https://mirror.local:5000", "https://registry-1.docker.io"]
        );
        assert_eq!(hosts[0].endpoint.role, Role::Mirror);
        assert_eq!(hosts[1].endpoint.role, Role::Upstream);
        let file = root.join("docker.io/hosts.toml").display().to_string();
        assert_eq!(hosts[0].endpoint.source, file);
        assert_eq!(
            hosts[0].endpoint.tls.ca_files,
            vec![root.join("docker.io/mirror-ca.pem")]
        );
        assert!(!hosts[0].capabilities.push);

        // Docker-style cert files, no hosts.toml.
        let (hosts, problem) = route(root, "10.0.0.5:5000", false, V2).unwrap();
        assert!(problem.is_none());
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].endpoint.url(), "https://10.0.0.5:5000");
        assert_eq!(hosts[0].endpoint.api_path, "/v2");
        assert_eq!(
            hosts[0].endpoint.tls.ca_files,
            vec![root.join("10.0.0.5:5000/ca.crt")]
        );
        assert_eq!(
            hosts[0].endpoint.tls.client_certs,
            [(
                root.join("10.0.0.5:5000/client.cert"),
                root.join("10.0.0.5:5000/client.key")
            )]
        );

        // Malformed: reported, and the registry itself is the route.
        let (hosts, problem) = route(root, "broken.example", false, V2).unwrap();
        let problem = problem.expect("reported");
        assert_eq!(problem.file, root.join("broken.example/hosts.toml"));
        // The parser stops at the end of the file, where the array is still open.
        assert_eq!(problem.line, Some(2));
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].endpoint.url(), "https://broken.example");

        // No own directory: _default's mirror, then the registry.
        let (hosts, _) = route(root, "ghcr.io", false, V2).unwrap();
        let urls: Vec<String> = hosts.iter().map(|h| h.endpoint.url()).collect();
        assert_eq!(urls, ["https://cache.local", "https://ghcr.io"]);
        assert_eq!(
            hosts[1].endpoint.source,
            root.join("_default/hosts.toml").display().to_string()
        );

        let (names, problem) = configured_registries(root);
        assert!(problem.is_none());
        assert_eq!(names, ["10.0.0.5:5000", "broken.example", "docker.io"]);

        // No directory at all: the registry itself at /v2.
        let (hosts, _) = route(&root.join("none"), "ghcr.io", false, V2).unwrap();
        assert_eq!(hosts[0].endpoint.api_path, "/v2");
    }

    /// containerd looks for `host:port` first in `host_port_`, then `host:port`, then `_default`;
    /// both spellings are one registry.
    #[test]
    fn port_directories_are_spelled_either_way() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(
            root,
            "reg.local_5000_/hosts.toml",
            "[host.\"https://escaped.local\"]\n",
        );
        write(
            root,
            "reg.local:5000/hosts.toml",
            "[host.\"https://colon.local\"]\n",
        );
        write(
            root,
            "[::1]_5001_/hosts.toml",
            "[host.\"https://v6.local\"]\n",
        );
        write(root, "other.local:6000/ca.crt", "pem");
        write(
            root,
            "_default/hosts.toml",
            "[host.\"https://cache.local\"]\n",
        );
        struct Case {
            registry: &'static str,
            want_dir: &'static str,
        }
        let cases = [
            Case {
                registry: "reg.local:5000",
                want_dir: "reg.local_5000_",
            },
            Case {
                registry: "[::1]:5001",
                want_dir: "[::1]_5001_",
            },
            Case {
                registry: "other.local:6000",
                want_dir: "other.local:6000",
            },
            Case {
                registry: "reg.local",
                want_dir: "_default",
            },
        ];
        for case in cases {
            assert_eq!(
                host_dir(root, case.registry),
                Some(root.join(case.want_dir)),
                "{}",
                case.registry
            );
        }
        let (hosts, _) = route(root, "reg.local:5000", false, V2).unwrap();
        assert_eq!(hosts[0].endpoint.url(), "https://escaped.local");

        let (names, problem) = configured_registries(root);
        assert!(problem.is_none());
        assert_eq!(names, ["[::1]:5001", "other.local:6000", "reg.local:5000"]);
    }

    /// Past the cap, the first directories by name are listed and the rest reported.
    #[test]
    fn too_many_directories_are_reported() {
        let root = tempfile::tempdir().unwrap();
        for i in (0..=MAX_DIRS).rev() {
            std::fs::create_dir(root.path().join(format!("r{i:05}.local"))).unwrap();
        }
        let (names, problem) = configured_registries(root.path());
        assert_eq!(names.len(), MAX_DIRS);
        assert_eq!(names.first().map(String::as_str), Some("r00000.local"));
        assert_eq!(
            names.last().map(String::as_str),
            Some(format!("r{:05}.local", MAX_DIRS - 1).as_str())
        );
        let problem = problem.expect("overflow reported");
        assert_eq!(problem.file, root.path());
        assert_eq!(
            problem.message,
            format!(
                "{} registry directories; only the first {MAX_DIRS} by name are listed",
                MAX_DIRS + 1
            )
        );
    }

    #[test]
    fn implicit_upstreams() {
        let root = tempfile::tempdir().unwrap();
        struct Case {
            registry: &'static str,
            insecure: bool,
            want: &'static str,
            skip_verify: bool,
        }
        let cases = [
            Case {
                registry: "docker.io",
                insecure: false,
                want: "https://registry-1.docker.io",
                skip_verify: false,
            },
            Case {
                registry: "127.0.0.1:5000",
                insecure: false,
                want: "http://127.0.0.1:5000",
                skip_verify: true,
            },
            Case {
                registry: "localhost",
                insecure: false,
                want: "http://localhost",
                skip_verify: true,
            },
            Case {
                registry: "reg.local:5000",
                insecure: true,
                want: "http://reg.local:5000",
                skip_verify: false,
            },
            Case {
                registry: "reg.local",
                insecure: false,
                want: "https://reg.local",
                skip_verify: false,
            },
        ];
        for case in cases {
            let (hosts, _) = route(root.path(), case.registry, case.insecure, V2).unwrap();
            assert_eq!(hosts.len(), 1);
            assert_eq!(hosts[0].endpoint.url(), case.want, "{}", case.registry);
            assert_eq!(hosts[0].endpoint.source, "default");
            assert_eq!(
                hosts[0].endpoint.tls.skip_verify, case.skip_verify,
                "{}",
                case.registry
            );
        }
    }
}
