//! Which registries the agent watches and along which routes: the candidates of every source in
//! priority order (`--registry`, the runtime's registry config files, the node's images),
//! deduplicated, capped by `--max-registries` (each refused registry counted once), each routed
//! as the runtime would route it and given a canary (an image the node holds, by digest).

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, warn};

use super::metrics::{self, Metrics};
use super::scheduler::WatchedRegistry;
use crate::route::{Route, RouteConfig};

/// Turns candidate registries into the targets the scheduler follows.
pub struct Discovery {
    max_registries: usize,
    /// Registries refused last time, so a refusal is counted when it starts, not every pass.
    refused: BTreeSet<String>,
    /// The config problems of the last pass, each logged when it first appeared.
    reported: BTreeSet<String>,
}

impl Discovery {
    pub fn new(max_registries: usize) -> Self {
        Discovery {
            max_registries,
            refused: BTreeSet::new(),
            reported: BTreeSet::new(),
        }
    }

    /// `--max-registries`.
    pub fn max_registries(&self) -> usize {
        self.max_registries
    }

    /// The targets for `candidates` (highest priority first), routed by `routes`, with the canary
    /// of `canaries` for their registry. Registries past the cap are refused and counted in
    /// `pullwatch_series_dropped_total{metric="pullwatch_registry_up"}`; a registry the runtime's
    /// config blocks is not watched (`pullwatch targets` shows it).
    pub fn targets<'a>(
        &mut self,
        candidates: impl IntoIterator<Item = &'a str>,
        routes: &RouteConfig,
        canaries: &BTreeMap<String, String>,
        metrics: &Metrics,
    ) -> Vec<WatchedRegistry> {
        let mut seen = BTreeSet::new();
        let mut targets = Vec::new();
        let mut refused = BTreeSet::new();
        let mut problems = BTreeSet::new();
        for registry in candidates {
            if !seen.insert(registry) {
                continue;
            }
            if targets.len() >= self.max_registries {
                refused.insert(registry.to_string());
                continue;
            }
            let configured = match routes.resolve(registry, None) {
                Ok(configured) => configured,
                Err(error) => {
                    warn!(registry, %error, "cannot watch this registry");
                    continue;
                }
            };
            for problem in &configured.problems {
                let text = problem.to_string();
                if !self.reported.contains(&text) && !problems.contains(&text) {
                    warn!(registry, %problem, "runtime registry config not used as written");
                }
                problems.insert(text);
            }
            if let Some(file) = &configured.blocked_by {
                debug!(registry, file = %file.display(), "blocked by the runtime's config: not watched");
                continue;
            }
            targets.push(WatchedRegistry {
                route: Route {
                    registry: registry.to_string(),
                    endpoints: configured.hosts.into_iter().map(|h| h.endpoint).collect(),
                },
                canary: canaries.get(registry).cloned(),
            });
        }
        let newly_refused = refused.difference(&self.refused).count() as u64;
        if newly_refused > 0 {
            warn!(
                refused = refused.len(),
                max_registries = self.max_registries,
                "more registries than --max-registries; the rest are not watched"
            );
            metrics.series_dropped(metrics::REGISTRY_UP, newly_refused);
        }
        self.refused = refused;
        // Only the problems the files have now: the set stays as small as the config.
        self.reported = problems;
        targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_deduplicated_capped_and_refusals_counted_once() {
        let metrics = Metrics::new("n", "v", "r", 10).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let routes = RouteConfig::new(
            dir.path().join("certs.d"),
            dir.path().join("registries.conf"),
            vec!["b.example".into()],
        );
        let canaries = BTreeMap::from([(
            "a.example".to_string(),
            "a.example/app@sha256:0000000000000000000000000000000000000000000000000000000000000000"
                .to_string(),
        )]);
        let mut discovery = Discovery::new(2);
        let candidates = [
            "a.example",
            "b.example",
            "a.example",
            "c.example",
            "d.example",
        ];
        let targets = discovery.targets(candidates, &routes, &canaries, &metrics);
        let names: Vec<&str> = targets.iter().map(|t| t.route.registry.as_str()).collect();
        assert_eq!(names, ["a.example", "b.example"]);
        assert_eq!(targets[1].route.endpoints[0].url(), "http://b.example");
        assert!(targets[0].canary.is_some() && targets[1].canary.is_none());
        let dropped = |metrics: &Metrics| {
            metrics
                .encode()
                .unwrap()
                .lines()
                .find(|l| {
                    l.starts_with("pullwatch_series_dropped_total{metric=\"pullwatch_registry_up\"")
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(|v| v.to_string())
        };
        assert_eq!(dropped(&metrics).as_deref(), Some("2"));
        // The same refusals again are not new.
        discovery.targets(candidates, &routes, &canaries, &metrics);
        assert_eq!(dropped(&metrics).as_deref(), Some("2"));
        discovery.targets(
            ["a.example", "b.example", "e.example"],
            &routes,
            &canaries,
            &metrics,
        );
        assert_eq!(dropped(&metrics).as_deref(), Some("3"));
    }

    #[test]
    fn routes_follow_the_runtime_config() {
        let metrics = Metrics::new("n", "v", "r", 10).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        std::fs::create_dir_all(certs.join("docker.io")).unwrap();
        std::fs::write(
            certs.join("docker.io/hosts.toml"),
            "server = \"https://registry-1.docker.io\"\n\n[host.\"https://mirror.example\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        )
        .unwrap();
        let routes = RouteConfig::new(certs, dir.path().join("registries.conf"), vec![]);
        let targets = Discovery::new(8).targets(["docker.io"], &routes, &BTreeMap::new(), &metrics);
        let urls: Vec<String> = targets[0].route.endpoints.iter().map(|e| e.url()).collect();
        assert_eq!(
            urls,
            ["https://mirror.example", "https://registry-1.docker.io"]
        );
    }
}
