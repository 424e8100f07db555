//! Which runtime's registry config decides a route (containerd's certs.d or CRI-O's
//! registries.conf), and the route it gives; with neither, the registry itself.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::{
    Capabilities, ConfigProblem, ConfiguredRoute, RegistryNameError, RouteHost, RuntimeKind,
    containerd, crio, default_route, split_host_port,
};

/// Whose config a route came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeConfigKind {
    Containerd,
    CriO,
    /// No runtime config applies: the registry itself.
    Default,
}

impl RuntimeConfigKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeConfigKind::Containerd => "containerd",
            RuntimeConfigKind::CriO => "cri-o",
            RuntimeConfigKind::Default => "default",
        }
    }
}

/// Where the runtime's registry config lives, and which runtime runs here (when known).
#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub containerd_certs_dir: PathBuf,
    pub registries_conf: PathBuf,
    pub insecure_registries: Vec<String>,
    /// The runtime on the CRI socket; its config alone applies. `None`: unknown, so containerd's
    /// config applies where it has a directory for the registry, else CRI-O's where it matches.
    pub runtime: Option<RuntimeKind>,
    /// The runtime's version, as `Version` (or `--runtime-version`) gave it.
    pub runtime_version: Option<String>,
    /// Set by `--runtime-version`: what the CRI socket reports does not change it.
    pub runtime_pinned: bool,
    pub containerd_quirks: containerd::Quirks,
    /// registries.conf as last parsed, shared by the clones of this config.
    crio: Arc<crio::Cache>,
}

impl RouteConfig {
    pub fn new(
        containerd_certs_dir: PathBuf,
        registries_conf: PathBuf,
        insecure_registries: Vec<String>,
    ) -> Self {
        Self {
            containerd_certs_dir,
            registries_conf,
            insecure_registries,
            runtime: None,
            runtime_version: None,
            runtime_pinned: false,
            containerd_quirks: containerd::Quirks::default(),
            crio: Arc::default(),
        }
    }

    /// The runtime answering on the CRI socket (`Version`'s name and version).
    pub fn with_runtime(mut self, kind: RuntimeKind, version: &str) -> Self {
        self.runtime = Some(kind);
        self.runtime_version = Some(version.to_string());
        if kind == RuntimeKind::Containerd {
            self.containerd_quirks = containerd::Quirks::for_version(version);
        }
        self
    }

    /// `--runtime-version`: these rules, whatever the CRI socket reports.
    pub fn pinned_to(self, kind: RuntimeKind, version: &str) -> Self {
        let mut pinned = self.with_runtime(kind, version);
        pinned.runtime_pinned = true;
        pinned
    }

    /// The runtime the CRI socket reports (`Version`), unless `--runtime-version` pinned one.
    pub fn with_reported_runtime(self, kind: RuntimeKind, version: &str) -> Self {
        if self.runtime_pinned {
            return self;
        }
        self.with_runtime(kind, version)
    }

    /// The runtime and version whose rules decide routes here (`containerd 1.7.13`), when one is
    /// known: what every endpoint report names.
    pub fn known_rules(&self) -> Option<String> {
        self.runtime.map(|_| self.rules())
    }

    /// Whose rules decide routes here, for people: `containerd 1.7.13`, `cri-o 1.30.2`, or
    /// that no runtime is known (containerd's config where it has a directory, else CRI-O's).
    pub fn rules(&self) -> String {
        let name = match self.runtime {
            Some(RuntimeKind::Containerd) => "containerd",
            Some(RuntimeKind::CriO) => "cri-o",
            Some(RuntimeKind::Docker) => "cri-dockerd",
            Some(RuntimeKind::Other) => "an unknown runtime",
            None => return "no runtime known: containerd's config where it has a directory for the registry, else CRI-O's".into(),
        };
        match &self.runtime_version {
            Some(version) => format!("{name} {version}"),
            None => name.to_string(),
        }
    }

    /// The configured route for `registry`; `repository` matters for CRI-O's namespaced prefixes.
    /// Files are read now (the runtime, too, reads them at every pull; registries.conf is parsed
    /// again only when its files changed). At most [`super::MAX_ROUTE_ENDPOINTS`] endpoints.
    pub fn resolve(
        &self,
        registry: &str,
        repository: Option<&str>,
    ) -> Result<ConfiguredRoute, RegistryNameError> {
        self.resolve_all(registry, repository)
            .map(ConfiguredRoute::capped)
    }

    fn resolve_all(
        &self,
        registry: &str,
        repository: Option<&str>,
    ) -> Result<ConfiguredRoute, RegistryNameError> {
        split_host_port(registry)?;
        let insecure = self.insecure_registries.iter().any(|r| r == registry);
        let use_containerd = match self.runtime {
            Some(kind) => kind == RuntimeKind::Containerd,
            None => containerd::host_dir(&self.containerd_certs_dir, registry).is_some(),
        };
        if use_containerd {
            let (hosts, problem) = containerd::route(
                &self.containerd_certs_dir,
                registry,
                insecure,
                self.containerd_quirks,
            )?;
            return Ok(ConfiguredRoute {
                registry: registry.to_string(),
                hosts,
                kind: RuntimeConfigKind::Containerd,
                blocked_by: None,
                problems: problem.into_iter().collect(),
            });
        }
        let mut problems = Vec::new();
        if matches!(self.runtime, None | Some(RuntimeKind::CriO)) {
            let conf = self.crio.load(&self.registries_conf);
            problems = conf.problems.clone();
            let name = match repository {
                Some(repository) => format!("{registry}/{repository}"),
                None => registry.to_string(),
            };
            let route = |hosts, blocked_by| ConfiguredRoute {
                registry: registry.to_string(),
                hosts,
                kind: RuntimeConfigKind::CriO,
                blocked_by,
                problems: problems.clone(),
            };
            match conf.route(&name) {
                Some(Ok(hosts)) => return Ok(route(hosts, None)),
                Some(Err(file)) => return Ok(route(vec![], Some(file))),
                None => {}
            }
        }
        let hosts = default_route(registry, &self.insecure_registries)?
            .endpoints
            .into_iter()
            .map(|endpoint| RouteHost {
                endpoint,
                capabilities: Capabilities::ALL,
                location: None,
                line: None,
            })
            .collect();
        Ok(ConfiguredRoute {
            registry: registry.to_string(),
            hosts,
            kind: RuntimeConfigKind::Default,
            blocked_by: None,
            problems,
        })
    }

    /// Registries the config files name, each with the file or directory naming it, and the
    /// problems met reading them.
    pub fn configured_registries(&self) -> (Vec<(String, String)>, Vec<ConfigProblem>) {
        let mut registries = Vec::new();
        let mut problems = Vec::new();
        if matches!(self.runtime, None | Some(RuntimeKind::Containerd)) {
            let (names, problem) = containerd::configured_registries(&self.containerd_certs_dir);
            problems.extend(problem);
            for name in names {
                // The directory itself (`host_port_` or `host:port`).
                let source = containerd::host_dir(&self.containerd_certs_dir, &name)
                    .unwrap_or_else(|| self.containerd_certs_dir.join(&name));
                registries.push((name, source.display().to_string()));
            }
        }
        if matches!(self.runtime, None | Some(RuntimeKind::CriO)) {
            let conf = self.crio.load(&self.registries_conf);
            problems.extend(conf.problems.clone());
            let mut named: HashSet<String> = registries.iter().map(|(n, _)| n.clone()).collect();
            for (name, source) in conf.registries() {
                if named.insert(name.clone()) {
                    registries.push((name, source.display().to_string()));
                }
            }
        }
        (registries, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &std::path::Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_runtime_decides_whose_config_applies() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        let conf = dir.path().join("containers/registries.conf");
        write(
            &certs.join("docker.io/hosts.toml"),
            "[host.\"https://ctr-mirror.local\"]\n",
        );
        write(
            &conf,
            "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"crio-mirror.local\"\n[[registry]]\nlocation = \"quay.io\"\n[[registry.mirror]]\nlocation = \"quay-mirror.local\"\n",
        );
        let config = RouteConfig::new(certs.clone(), conf.clone(), vec![]);
        let first = |config: &RouteConfig, registry: &str| {
            let route = config.resolve(registry, Some("library/x")).unwrap();
            (route.kind, route.hosts[0].endpoint.url())
        };
        // Unknown runtime: containerd where it has a directory, else CRI-O, else the registry.
        assert_eq!(
            first(&config, "docker.io"),
            (
                RuntimeConfigKind::Containerd,
                "https://ctr-mirror.local".into()
            )
        );
        assert_eq!(
            first(&config, "quay.io"),
            (RuntimeConfigKind::CriO, "https://quay-mirror.local".into())
        );
        assert_eq!(
            first(&config, "ghcr.io"),
            (RuntimeConfigKind::Default, "https://ghcr.io".into())
        );
        let crio = config.clone().with_runtime(RuntimeKind::CriO, "1.30.0");
        assert_eq!(
            first(&crio, "docker.io"),
            (RuntimeConfigKind::CriO, "https://crio-mirror.local".into())
        );
        let ctr = config.with_runtime(RuntimeKind::Containerd, "1.6.20~ds1");
        assert_eq!(
            first(&ctr, "quay.io"),
            (RuntimeConfigKind::Containerd, "https://quay.io".into())
        );
        // containerd talks plain HTTP to a registry on localhost.
        assert_eq!(
            first(&ctr, "127.0.0.1:5000"),
            (
                RuntimeConfigKind::Containerd,
                "http://127.0.0.1:5000".into()
            )
        );
        let (names, problems) = RouteConfig::new(certs, conf, vec![]).configured_registries();
        assert!(problems.is_empty());
        let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["docker.io", "quay.io"]);
    }

    /// The URLs of the route for a tag (`false`) or a digest (`true`).
    fn urls(route: &ConfiguredRoute, by_digest: bool) -> Vec<String> {
        route
            .route_for(by_digest)
            .endpoints
            .iter()
            .map(|e| e.url())
            .collect()
    }

    /// containerd resolves a tag through hosts that may `pull` and `resolve` (a `resolve`-only host
    /// is never used), a digest through hosts that may `pull`.
    #[test]
    fn tags_resolve_only_through_hosts_that_may_pull_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        write(
            &certs.join("docker.io/hosts.toml"),
            "[host.\"https://blobs-only.local\"]\n  capabilities = [\"pull\"]\n[host.\"https://resolve-only.local\"]\n  capabilities = [\"resolve\"]\n[host.\"https://full.local\"]\n",
        );
        let config = RouteConfig::new(certs, dir.path().join("none.conf"), vec![]);
        let route = config.resolve("docker.io", None).unwrap();
        assert_eq!(
            urls(&route, false),
            ["https://full.local", "https://registry-1.docker.io"]
        );
        assert_eq!(
            urls(&route, true),
            [
                "https://blobs-only.local",
                "https://full.local",
                "https://registry-1.docker.io"
            ]
        );
    }

    /// CRI-O: a `tag-only` mirror serves tags, a `digest-only` one digests.
    #[test]
    fn cri_o_mirrors_serve_tags_or_digests_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        write(
            &conf,
            "[[registry]]\nlocation = \"quay.io\"\n[[registry.mirror]]\nlocation = \"tags.local\"\npull-from-mirror = \"tag-only\"\n[[registry.mirror]]\nlocation = \"digests.local\"\npull-from-mirror = \"digest-only\"\n",
        );
        let config = RouteConfig::new(dir.path().join("certs.d"), conf, vec![])
            .with_runtime(RuntimeKind::CriO, "1.30.0");
        let route = config.resolve("quay.io", Some("org/app")).unwrap();
        assert_eq!(
            urls(&route, false),
            ["https://tags.local", "https://quay.io"]
        );
        assert_eq!(
            urls(&route, true),
            ["https://digests.local", "https://quay.io"]
        );
    }

    #[test]
    fn blocked_registries_have_no_route() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        write(
            &conf,
            "[[registry]]\nlocation = \"evil.example\"\nblocked = true\n",
        );
        let config = RouteConfig::new(dir.path().join("certs.d"), conf.clone(), vec![]);
        let route = config.resolve("evil.example", Some("x")).unwrap();
        assert_eq!(route.blocked_by, Some(conf));
        assert!(route.hosts.is_empty());
    }

    /// A registries.conf with 10,000 tables (each with a mirror, one wildcard in ten): listing
    /// and routing every registry, as `targets` does, parses the file once and stays linear. It
    /// was a parse per registry, each quadratic in the file: hours for this one.
    #[test]
    fn ten_thousand_tables_are_parsed_once_and_routed_in_linear_time() {
        const TABLES: usize = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        let mut text = String::new();
        for i in 0..TABLES {
            if i % 10 == 0 {
                text.push_str(&format!(
                    "[[registry]]\nprefix = \"*.w{i}.example\"\n[[registry.mirror]]\nlocation = \"wm{i}.example\"\n"
                ));
            } else {
                text.push_str(&format!(
                    "[[registry]]\nlocation = \"r{i}.example\"\ninsecure = {}\n[[registry.mirror]]\nlocation = \"m{i}.example:5000\"\n",
                    i % 3 == 0
                ));
            }
        }
        write(&conf, &text);
        let config = RouteConfig::new(dir.path().join("certs.d"), conf.clone(), vec![])
            .with_runtime(RuntimeKind::CriO, "1.30.0");
        let started = std::time::Instant::now();
        let (registries, problems) = config.configured_registries();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(registries.len(), TABLES - TABLES / 10);
        let parsed = config.crio.load(&conf);
        for (registry, _) in &registries {
            let route = config.resolve(registry, Some("app")).unwrap();
            let i = &registry[1..registry.find('.').unwrap()];
            assert_eq!(
                route.hosts[0].endpoint.url(),
                format!("https://m{i}.example:5000")
            );
        }
        let route = config.resolve("x.w9990.example", Some("app")).unwrap();
        assert_eq!(route.hosts[0].endpoint.url(), "https://wm9990.example");
        assert!(
            Arc::ptr_eq(&parsed, &config.crio.load(&conf)),
            "registries.conf was parsed again though it did not change"
        );
        // Generous for a debug build on a loaded machine; the quadratic parse alone took minutes.
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(30),
            "{TABLES} tables took {took:?}"
        );
    }

    /// A route longer than the cap keeps its first endpoints, in order, and says how many more
    /// there were and that they are not checked.
    #[test]
    fn long_routes_are_capped_and_the_rest_reported() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&format!("[host.\"https://m{i}.example\"]\n"));
        }
        write(&certs.join("big.example/hosts.toml"), &text);
        let config = RouteConfig::new(certs, dir.path().join("registries.conf"), vec![]);
        let route = config.resolve("big.example", None).unwrap();
        assert_eq!(route.hosts.len(), super::super::MAX_ROUTE_ENDPOINTS);
        assert_eq!(route.hosts[0].endpoint.url(), "https://m0.example");
        let problem = route.problems.last().unwrap().to_string();
        assert!(
            problem.contains("hosts.toml:33:")
                && problem.contains("has 1001 endpoints")
                && problem.contains("the other 969 (from https://m32.example on) are not checked"),
            "{problem}"
        );
        // A short route is untouched.
        write(
            &dir.path().join("certs.d/small.example/hosts.toml"),
            "[host.\"https://m.example\"]\n",
        );
        let route = config.resolve("small.example", None).unwrap();
        assert_eq!(route.hosts.len(), 2);
        assert!(route.problems.is_empty());
    }
}
