//! Where the runtime would pull from: a registry's route, the ordered endpoints it tries
//! (mirrors first, then the upstream). Without runtime config, the route is the upstream alone.

pub mod containerd;
mod containerd_rules;
pub use containerd_rules::HttpFallback;
pub mod crio;
mod resolve;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::trust::TlsOptions;

pub use resolve::{RouteConfig, RuntimeConfigKind};

/// Docker Hub's registry name in references, and the host that actually serves it.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_UPSTREAM: &str = "registry-1.docker.io";

/// What an endpoint is to its registry; the `role` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Mirror,
    Upstream,
    Auth,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mirror => "mirror",
            Role::Upstream => "upstream",
            Role::Auth => "auth",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// 80 or 443: the port of a URL that names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// One `scheme://host:port` the runtime contacts for a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub role: Role,
    /// Where this endpoint came from: `default`, `--insecure-registry`, or a config file path.
    pub source: String,
    pub tls: TlsOptions,
    /// The API root the runtime uses here: `/v2`, or a mirror's own path (hosts.toml
    /// `[host."https://harbor.example/v2/dockerhub"]` with `override_path`). Empty for a token server.
    pub api_path: String,
    /// The repository the runtime asks this endpoint for when its config rewrites the image's
    /// (CRI-O: `example.com/foo/app` under prefix `example.com/foo` and location
    /// `internal.example/bar` is `bar/app`); `None`: the image's own.
    pub repository: Option<String>,
    /// containerd adds `?ns=<registry>` to manifest and blob requests to a host other than the
    /// registry itself, so that one mirror can serve many registries (spegel, Harbor proxies);
    /// CRI-O does not. See [`Endpoint::namespace_for`].
    pub namespace_query: bool,
    /// hosts.toml's `header` and `dial_timeout` for this host.
    pub extras: HostExtras,
    /// containerd tries this endpoint over HTTPS first and retries over plain HTTP on some
    /// failures (a registry on localhost, an `http://` host with TLS settings); `None`: no retry.
    pub http_fallback: Option<HttpFallback>,
}

/// What containerd's hosts.toml adds for one host: headers on every request to it, and its own
/// bound on a connection attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostExtras {
    /// `header`: sent with every request to the host. Shown by name only: a value may be a token.
    pub headers: Vec<(String, String)>,
    /// `dial_timeout`: how long one connection attempt may take (at most the check's own).
    pub dial_timeout: Option<std::time::Duration>,
}

impl Endpoint {
    /// The `ns` query value the runtime sends this endpoint for an image of `registry`: the
    /// registry, when the endpoint is a proxy for it (containerd's rule: its `host[:port]` differs
    /// from the registry's, Docker Hub's own `registry-1.docker.io` excepted).
    pub fn namespace_for<'a>(&self, registry: &'a str) -> Option<&'a str> {
        let authority = self.url();
        let authority = authority.split_once("://").map_or("", |(_, a)| a);
        let upstream =
            authority == registry || (registry == DOCKER_HUB && authority == DOCKER_HUB_UPSTREAM);
        (self.namespace_query && self.role != Role::Auth && !upstream).then_some(registry)
    }

    /// `https://host[:port]`, the port shown only when it is not the scheme's default.
    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        if self.port == default_port {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{}", self.port)
        }
    }

    /// The API root as a URL: `https://harbor.example/v2/dockerhub`.
    pub fn api_url(&self) -> String {
        format!("{}{}", self.url(), self.api_path)
    }
}

/// The ordered endpoints for one registry; pullable when any of them is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub registry: String,
    pub endpoints: Vec<Endpoint>,
}

/// What the runtime may use an endpoint for (containerd `capabilities`; CRI-O's
/// `mirror-by-digest-only` / `pull-from-mirror`). containerd resolves a tag only through hosts
/// with both `pull` and `resolve`, a digest through hosts with `pull`; CRI-O uses a mirror for
/// tags when it may `resolve`, for digests when it may `pull`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };

    /// `pull, resolve`, as hosts.toml spells them.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.pull, "pull"),
            (self.resolve, "resolve"),
            (self.push, "push"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// One endpoint of a configured route, with what the config said about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteHost {
    pub endpoint: Endpoint,
    pub capabilities: Capabilities,
    /// CRI-O: the repository namespace this endpoint serves the prefix from
    /// (`internal.example/bar` for `prefix = "example.com/foo"`).
    pub location: Option<String>,
    /// Line of the file that defines it.
    pub line: Option<usize>,
}

/// A runtime config file that could not be used as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// 1-based, when the problem has a place in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// 1-based line of a byte offset in `text` (one lookup; [`Lines`] for many).
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    Lines::new(text).line(offset)
}

/// The 1-based lines of byte offsets in one text, by binary search over its newlines: a scan of
/// the text per lookup made a file with thousands of tables quadratic.
pub(crate) struct Lines {
    newlines: Vec<usize>,
}

impl Lines {
    pub(crate) fn new(text: &str) -> Self {
        Lines {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(at, _)| at)
                .collect(),
        }
    }

    /// The line `offset` is on: one more than the newlines before it.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&at| at < offset) + 1
    }
}

/// At most this many endpoints of a route are checked, in the runtime's order; the rest are
/// reported as not checked (a config problem). containerd and CRI-O have no such limit, but no
/// real route is this long, and an unbounded one made every check and round unbounded too.
pub const MAX_ROUTE_ENDPOINTS: usize = 32;

/// A registry's route as its runtime config describes it, before choosing by reference kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfiguredRoute {
    pub registry: String,
    /// In the order the runtime tries them (mirrors, then the upstream).
    pub hosts: Vec<RouteHost>,
    /// Which runtime's config decided the route.
    pub kind: RuntimeConfigKind,
    /// The file that blocks this registry (CRI-O `blocked = true`).
    pub blocked_by: Option<PathBuf>,
    /// Malformed files met on the way; the route fell back past them.
    pub problems: Vec<ConfigProblem>,
}

impl ConfiguredRoute {
    /// Keeps the first [`MAX_ROUTE_ENDPOINTS`] endpoints; the rest become a problem that says how
    /// many were left unchecked and where the first of them is defined.
    pub fn capped(mut self) -> Self {
        let total = self.hosts.len();
        if total <= MAX_ROUTE_ENDPOINTS {
            return self;
        }
        let first_left = &self.hosts[MAX_ROUTE_ENDPOINTS];
        self.problems.push(ConfigProblem {
            // The file, without a note like ` (HTTP fallback)`.
            file: PathBuf::from(
                first_left
                    .endpoint
                    .source
                    .split(" (")
                    .next()
                    .unwrap_or_default(),
            ),
            line: first_left.line,
            message: format!(
                "the route of {} has {total} endpoints; pullwatch checks only the first {MAX_ROUTE_ENDPOINTS} in order, the other {} (from {} on) are not checked (the runtime would go on to them)",
                self.registry,
                total - MAX_ROUTE_ENDPOINTS,
                first_left.endpoint.url()
            ),
        });
        self.hosts.truncate(MAX_ROUTE_ENDPOINTS);
        self
    }

    /// The endpoints the runtime tries for a reference. By digest: hosts that may `pull`. By tag:
    /// containerd needs `pull` and `resolve` both (its resolver filters on `pull|resolve`), CRI-O
    /// only `resolve` (a `tag-only` mirror).
    pub fn route_for(&self, by_digest: bool) -> Route {
        let endpoints = self
            .hosts
            .iter()
            .filter(|h| {
                let caps = h.capabilities;
                match (by_digest, self.kind) {
                    (true, _) => caps.pull,
                    (false, RuntimeConfigKind::CriO) => caps.resolve,
                    (false, _) => caps.pull && caps.resolve,
                }
            })
            .map(|h| h.endpoint.clone())
            .collect();
        Route {
            registry: self.registry.clone(),
            endpoints,
        }
    }
}

/// Splits `scheme://host[:port][/path]` (scheme optional: https) into its parts; the port
/// defaults by scheme. `Err` names what is wrong.
/// `scheme://host[:port][/path]` as hosts.toml writes a host; the port as written (`None`: none).
pub(crate) fn parse_server(server: &str) -> Result<(Scheme, String, Option<u16>, String), String> {
    let (scheme, rest) = match server.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some(("http", rest)) => (Scheme::Http, rest),
        Some((other, _)) => return Err(format!("unsupported scheme {other:?} in {server:?}")),
        None => (Scheme::Https, server),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) =
        split_host_port(authority).map_err(|e| format!("{server:?}: {}", e.problem))?;
    // As Go's path.Clean: no empty or `.` segments, no trailing `/`.
    let path = path
        .split('/')
        .filter(|segment| !segment.is_empty() && *segment != ".")
        .map(|segment| format!("/{segment}"))
        .collect();
    Ok((scheme, host, port, path))
}

/// The host that serves a registry name (`docker.io` is served by `registry-1.docker.io`).
pub(crate) fn serving_host(registry_host: &str) -> &str {
    if registry_host == DOCKER_HUB {
        DOCKER_HUB_UPSTREAM
    } else {
        registry_host
    }
}

/// A registry name that is not `host[:port]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("registry {registry:?}: {problem}")]
pub struct RegistryNameError {
    pub registry: String,
    pub problem: &'static str,
}

/// Splits `host`, `host:port`, `[v6]:port` into host and optional port.
pub fn split_host_port(registry: &str) -> Result<(String, Option<u16>), RegistryNameError> {
    let fail = |problem| RegistryNameError {
        registry: registry.to_string(),
        problem,
    };
    if registry.contains("://") {
        return Err(fail(
            "no scheme allowed: give host[:port], e.g. registry.local:5000",
        ));
    }
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| fail("unclosed [ in IPv6 address"))?;
        (host, after.strip_prefix(':'))
    } else {
        match registry.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => return Err(fail("IPv6 addresses need brackets: [::1]:5000")),
            None => (registry, None),
        }
    };
    if host.is_empty() {
        return Err(fail("empty host"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| fail("port must be 1-65535"))
        })
        .transpose()?;
    Ok((host.to_string(), port))
}

/// A registry named on the command line (`--registry`, `--insecure-registry`): `host[:port]`
/// whose host an image reference can name (distribution/reference's domain grammar) and DNS can
/// carry (labels up to 63 characters, names up to 253). Anything else could never match an
/// image nor resolve: a bad flag, not a registry that is always down. `Err` says why.
pub fn check_registry_flag(registry: &str) -> Result<(), String> {
    if registry.contains('/') && !registry.contains("://") {
        return Err("no path allowed: a registry is host[:port], e.g. registry.local:5000".into());
    }
    let (host, _) = split_host_port(registry).map_err(|e| e.problem.to_string())?;
    if !crate::reference::valid_domain(registry) {
        return Err(
            "not a registry host[:port]: letters, digits, '-' and '.', or an IPv6 address in brackets"
                .into(),
        );
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    match crate::check::dns_name::problem(&host) {
        Some(problem) => Err(format!("not a DNS name: {problem}")),
        None => Ok(()),
    }
}

/// The route when no runtime config says otherwise: the upstream itself, over HTTPS unless the
/// registry is declared insecure (then plain HTTP, as the runtime does).
pub fn default_route(
    registry: &str,
    insecure_registries: &[String],
) -> Result<Route, RegistryNameError> {
    let insecure = insecure_registries.iter().any(|r| r == registry);
    let (host, port) = if registry == DOCKER_HUB {
        (DOCKER_HUB_UPSTREAM.to_string(), None)
    } else {
        split_host_port(registry)?
    };
    let scheme = if insecure {
        Scheme::Http
    } else {
        Scheme::Https
    };
    let endpoint = Endpoint {
        scheme,
        port: port.unwrap_or(if insecure { 80 } else { 443 }),
        host,
        role: Role::Upstream,
        source: if insecure {
            "--insecure-registry".into()
        } else {
            "default".into()
        },
        tls: TlsOptions::default(),
        api_path: "/v2".into(),
        repository: None,
        namespace_query: false,
        extras: Default::default(),
        http_fallback: None,
    };
    Ok(Route {
        registry: registry.to_string(),
        endpoints: vec![endpoint],
    })
}

/// Which runtime answers, from `Version.runtime_name`; it decides whose registry config applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    Containerd,
    CriO,
    /// cri-dockerd (reports itself as `docker`).
    Docker,
    Other,
}

impl RuntimeKind {
    pub fn from_name(name: &str) -> Self {
        match name.to_ascii_lowercase().as_str() {
            "containerd" => RuntimeKind::Containerd,
            "cri-o" | "crio" => RuntimeKind::CriO,
            "docker" => RuntimeKind::Docker,
            _ => RuntimeKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_kinds() {
        for (name, want) in [
            ("containerd", RuntimeKind::Containerd),
            ("cri-o", RuntimeKind::CriO),
            ("docker", RuntimeKind::Docker),
            ("kata", RuntimeKind::Other),
        ] {
            assert_eq!(RuntimeKind::from_name(name), want, "{name}");
        }
    }

    #[test]
    fn default_routes() {
        struct Case {
            registry: &'static str,
            insecure: &'static [&'static str],
            want_url: &'static str,
        }
        let cases = [
            Case {
                registry: "docker.io",
                insecure: &[],
                want_url: "https://registry-1.docker.io",
            },
            Case {
                registry: "ghcr.io",
                insecure: &[],
                want_url: "https://ghcr.io",
            },
            Case {
                registry: "10.0.0.5:5000",
                insecure: &[],
                want_url: "https://10.0.0.5:5000",
            },
            Case {
                registry: "10.0.0.5:5000",
                insecure: &["10.0.0.5:5000"],
                want_url: "http://10.0.0.5:5000",
            },
            Case {
                registry: "reg.local",
                insecure: &["reg.local"],
                want_url: "http://reg.local",
            },
            Case {
                registry: "[::1]:5000",
                insecure: &[],
                want_url: "https://[::1]:5000",
            },
        ];
        for case in cases {
            let insecure: Vec<String> = case.insecure.iter().map(|s| s.to_string()).collect();
            let route = default_route(case.registry, &insecure).unwrap();
            assert_eq!(route.endpoints.len(), 1);
            assert_eq!(route.endpoints[0].url(), case.want_url, "{}", case.registry);
            assert_eq!(route.endpoints[0].role, Role::Upstream);
        }
    }

    #[test]
    fn containerd_names_the_registry_to_its_mirrors() {
        struct Case {
            url: &'static str,
            role: Role,
            containerd: bool,
            registry: &'static str,
            want: Option<&'static str>,
        }
        let case = |url, role, containerd, registry, want| Case {
            url,
            role,
            containerd,
            registry,
            want,
        };
        let cases = [
            case(
                "http://127.0.0.1:5001",
                Role::Mirror,
                true,
                "docker.io",
                Some("docker.io"),
            ),
            case(
                "https://mirror.example",
                Role::Mirror,
                true,
                "ghcr.io",
                Some("ghcr.io"),
            ),
            // The registry itself, and Docker Hub's own upstream, are no proxies.
            case(
                "https://registry-1.docker.io",
                Role::Upstream,
                true,
                "docker.io",
                None,
            ),
            case("https://ghcr.io", Role::Upstream, true, "ghcr.io", None),
            case(
                "http://10.0.0.5:5000",
                Role::Upstream,
                true,
                "10.0.0.5:5000",
                None,
            ),
            // A `server` elsewhere is a proxy too, as containerd sees it.
            case(
                "https://proxy.example",
                Role::Upstream,
                true,
                "quay.io",
                Some("quay.io"),
            ),
            // CRI-O does not send it, nor does anyone to a token server.
            case(
                "https://mirror.example",
                Role::Mirror,
                false,
                "ghcr.io",
                None,
            ),
            case("https://auth.example", Role::Auth, true, "ghcr.io", None),
        ];
        for case in cases {
            let mut endpoint = default_route("x.example", &[]).unwrap().endpoints[0].clone();
            let (scheme, authority) = case.url.split_once("://").unwrap();
            let (host, port) = split_host_port(authority).unwrap();
            endpoint.scheme = if scheme == "http" {
                Scheme::Http
            } else {
                Scheme::Https
            };
            endpoint.host = host.to_string();
            endpoint.port = port.unwrap_or(if scheme == "http" { 80 } else { 443 });
            endpoint.role = case.role;
            endpoint.namespace_query = case.containerd;
            assert_eq!(
                endpoint.namespace_for(case.registry),
                case.want,
                "{}",
                case.url
            );
        }
    }

    #[test]
    fn registry_flags_are_names_a_reference_and_dns_can_carry() {
        struct Case {
            value: String,
            want: Result<(), &'static str>,
        }
        let case = |value: &str, want| Case {
            value: value.to_string(),
            want,
        };
        let cases = [
            case("registry.local", Ok(())),
            case("registry.local:5000", Ok(())),
            case("10.0.0.5:5000", Ok(())),
            case("[::1]:5000", Ok(())),
            case(&format!("{}.test", "a".repeat(63)), Ok(())),
            case("a b", Err("not a registry host[:port]")),
            case("reg_istry.local", Err("not a registry host[:port]")),
            case("registry.local/team", Err("no path allowed")),
            case("registry.local:5000/", Err("no path allowed")),
            case("https://registry.local", Err("no scheme allowed")),
            case("registry.local:0", Err("port must be 1-65535")),
            case(
                &format!("{}.test", "a".repeat(64)),
                Err("not a DNS name: label 1 has 64 characters, more than 63"),
            ),
            case(
                &format!("{}test", "a.".repeat(148)),
                Err("not a DNS name: 300 characters, more than 253"),
            ),
        ];
        for case in cases {
            let got = check_registry_flag(&case.value);
            match (got, case.want) {
                (Ok(()), Ok(())) => {}
                (Err(problem), Err(want)) => {
                    assert!(problem.starts_with(want), "{:?}: {problem}", case.value)
                }
                (got, want) => panic!("{:?}: got {got:?}, want {want:?}", case.value),
            }
        }
    }

    #[test]
    fn bad_registry_names() {
        for bad in [
            "host:0",
            "host:99999",
            "host:x",
            "[::1",
            ":5000",
            "::1:5000",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }
}
