//! `pullwatch targets`: every registry this node pulls from (the runtime's images, its registry
//! config files, `--registry`), each with its route and where every piece of it came from.

use serde::Serialize;

use crate::discovery::{self, Candidate};
use crate::route::{ConfigProblem, ConfiguredRoute, RouteConfig, RouteHost};
use crate::runtime::NodeImage;

/// One registry and its route.
#[derive(Clone, Debug, Serialize)]
pub struct ListedRegistry {
    pub registry: String,
    /// Why it is listed: `runtime images (N)`, a config file or directory, `--registry`.
    pub sources: Vec<String>,
    /// Whose config decided the route: `containerd`, `cri-o`, `default`.
    pub config: &'static str,
    /// The runtime whose config applies, when known (`containerd 1.6.20`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Whose routing rules, at which version, decided the route (`containerd 1.7.13`, set by the
    /// CRI socket's `Version` or `--runtime-version`).
    pub rules: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    pub endpoints: Vec<ListedEndpoint>,
    /// Config files that could not be used as written (`file:line: why`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One endpoint of a route, with its settings and their origin.
#[derive(Clone, Debug, Serialize)]
pub struct ListedEndpoint {
    pub endpoint: String,
    pub role: crate::route::Role,
    /// The file it comes from (or `default`), with the line when known.
    pub source: String,
    pub capabilities: Vec<&'static str>,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ca_files: Vec<String>,
    /// Client certificates (and keys), in order; a handshake presents the first one issued by a
    /// CA the registry names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_certs: Vec<String>,
    pub skip_verify: bool,
    /// containerd tries HTTPS first here and retries over plain HTTP: when, and on which port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_fallback: Option<String>,
    /// hosts.toml `header` names (never their values: one may be a token).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// hosts.toml `dial_timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<String>,
}

impl ListedEndpoint {
    fn from_host(host: &RouteHost) -> Self {
        let e = &host.endpoint;
        let source = match host.line {
            Some(line) if e.source != "default" => format!("{}:{line}", e.source),
            _ => e.source.clone(),
        };
        ListedEndpoint {
            endpoint: e.url(),
            role: e.role,
            source,
            capabilities: host.capabilities.names(),
            path: e.api_path.clone(),
            location: host.location.clone(),
            ca_files: e
                .tls
                .ca_files
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            client_certs: e
                .tls
                .client_certs
                .iter()
                .map(|(cert, key)| {
                    if cert == key {
                        cert.display().to_string()
                    } else {
                        format!("{} + {}", cert.display(), key.display())
                    }
                })
                .collect(),
            skip_verify: e.tls.skip_verify,
            http_fallback: e.http_fallback.map(|f| f.describe()),
            headers: {
                let mut names: Vec<String> = e
                    .extras
                    .headers
                    .iter()
                    .map(|(name, _)| name.clone())
                    .collect();
                names.dedup();
                names
            },
            dial_timeout: e
                .extras
                .dial_timeout
                .map(|d| humantime::format_duration(d).to_string()),
        }
    }
}

/// Everything `targets` found, and the problems met on the way.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub targets: Vec<ListedRegistry>,
    /// Problems not tied to one registry (an unreadable config directory, a bad name).
    pub problems: Vec<String>,
}

/// Lists the registries of `images`, of the config files under `routes`, and of `flagged`, each
/// with its route. `runtime` names the runtime whose config applies, when known.
pub fn collect(
    routes: &RouteConfig,
    images: &[NodeImage],
    flagged: &[String],
    runtime: Option<&str>,
) -> Listing {
    let (mut candidates, config_problems) =
        discovery::candidates(routes, &discovery::image_registries(images), flagged);
    candidates.sort_by(|a, b| a.registry.cmp(&b.registry));
    let mut problems: Vec<String> = config_problems
        .iter()
        .map(ConfigProblem::to_string)
        .collect();
    let mut targets = Vec::new();
    for Candidate { registry, sources } in candidates {
        match routes.resolve(&registry, None) {
            Ok(route) => targets.push(target(registry, sources, route, runtime, routes.rules())),
            Err(error) => problems.push(format!("{}: {error}", sources.join(", "))),
        }
    }
    Listing { targets, problems }
}

fn target(
    registry: String,
    sources: Vec<String>,
    route: ConfiguredRoute,
    runtime: Option<&str>,
    rules: String,
) -> ListedRegistry {
    ListedRegistry {
        registry,
        sources,
        config: route.kind.as_str(),
        runtime: runtime.map(str::to_string),
        rules,
        blocked_by: route.blocked_by.map(|p| p.display().to_string()),
        endpoints: route.hosts.iter().map(ListedEndpoint::from_host).collect(),
        problems: route.problems.iter().map(|p| p.to_string()).collect(),
    }
}

impl Listing {
    /// One JSON object per registry, one per line.
    pub fn to_json_lines(&self) -> String {
        self.targets
            .iter()
            .map(|t| {
                serde_json::to_string(t)
                    .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode target: {e}\"}}"))
                    + "\n"
            })
            .collect()
    }

    /// For people: a block per registry, a line per endpoint, then the problems.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.targets.is_empty() {
            out.push_str(
                "no registries: no runtime images, no registry config files, no --registry\n",
            );
        }
        for t in &self.targets {
            out.push_str(&format!(
                "{}  (from {}; route: {}; rules: {})\n",
                t.registry,
                t.sources.join(", "),
                t.config,
                t.rules
            ));
            if let Some(file) = &t.blocked_by {
                out.push_str(&format!("  blocked by {file}\n"));
            }
            for (i, e) in t.endpoints.iter().enumerate() {
                let mut line = format!(
                    "  {}. {}  {}  {}  [{}]",
                    i + 1,
                    e.endpoint,
                    e.role.as_str(),
                    e.source,
                    e.capabilities.join(",")
                );
                if e.path != "/v2" {
                    line.push_str(&format!("  path {}", e.path));
                }
                if let Some(location) = &e.location {
                    line.push_str(&format!("  location {location}"));
                }
                if !e.ca_files.is_empty() {
                    line.push_str(&format!("  ca {}", e.ca_files.join(",")));
                }
                if !e.client_certs.is_empty() {
                    line.push_str(&format!("  client {}", e.client_certs.join(",")));
                }
                if e.skip_verify {
                    line.push_str("  skip_verify");
                }
                if let Some(fallback) = &e.http_fallback {
                    line.push_str(&format!("  then {fallback}"));
                }
                if !e.headers.is_empty() {
                    line.push_str(&format!("  header {}", e.headers.join(",")));
                }
                if let Some(timeout) = &e.dial_timeout {
                    line.push_str(&format!("  dial_timeout {timeout}"));
                }
                out.push_str(&line);
                out.push('\n');
            }
            for problem in &t.problems {
                out.push_str(&format!("  ! {problem}\n"));
            }
        }
        for problem in &self.problems {
            out.push_str(&format!("! {problem}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(tag: &str) -> NodeImage {
        NodeImage {
            id: "sha256:0".into(),
            repo_tags: vec![tag.into()],
            repo_digests: vec![],
            size: 1,
            pinned: false,
        }
    }

    #[test]
    fn registries_from_images_config_and_flags_each_with_its_sources() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        std::fs::create_dir_all(certs.join("docker.io")).unwrap();
        std::fs::write(
            certs.join("docker.io/hosts.toml"),
            "server = \"https://registry-1.docker.io\"\n\n[host.\"https://mirror.local\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"ca.pem\"\n",
        )
        .unwrap();
        let routes = RouteConfig::new(certs.clone(), dir.path().join("none.conf"), vec![]);
        let images = [
            image("nginx:1"),
            image("docker.io/library/redis:7"),
            image("ghcr.io/org/app:1"),
        ];
        let found = collect(&routes, &images, &["quay.io".into()], None);
        assert!(found.problems.is_empty(), "{:?}", found.problems);
        let names: Vec<&str> = found.targets.iter().map(|t| t.registry.as_str()).collect();
        assert_eq!(names, ["docker.io", "ghcr.io", "quay.io"]);
        let hub = &found.targets[0];
        assert_eq!(
            hub.sources,
            [
                "runtime images (2)".to_string(),
                certs.join("docker.io").display().to_string()
            ]
        );
        assert_eq!(hub.config, "containerd");
        let file = certs.join("docker.io/hosts.toml").display().to_string();
        assert_eq!(hub.endpoints[0].endpoint, "https://mirror.local");
        assert_eq!(hub.endpoints[0].source, format!("{file}:3"));
        assert_eq!(hub.endpoints[0].capabilities, ["pull", "resolve"]);
        assert_eq!(
            hub.endpoints[0].ca_files,
            [certs.join("docker.io/ca.pem").display().to_string()]
        );
        assert_eq!(hub.endpoints[1].source, format!("{file}:1"));
        assert_eq!(found.targets[2].sources, ["--registry"]);
        assert_eq!(found.targets[2].config, "default");

        let text = found.to_text();
        assert!(
            text.contains("  1. https://mirror.local  mirror  "),
            "{text}"
        );
        let lines: Vec<serde_json::Value> = found
            .to_json_lines()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["endpoints"][1]["role"], "upstream");
    }
}
