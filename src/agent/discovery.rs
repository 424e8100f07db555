//! Which registries the agent watches and along which routes: the candidates of every source, in
//! priority order, deduplicated, capped by `--max-registries` (each refused registry counted once).

use std::collections::BTreeSet;

use tracing::warn;

use super::metrics::{self, Metrics};
use crate::route::{self, Route};

/// Turns candidate registries into the routes the scheduler follows.
pub struct Discovery {
    max_registries: usize,
    insecure_registries: Vec<String>,
    /// Registries refused last time, so a refusal is counted when it starts, not every pass.
    refused: BTreeSet<String>,
}

impl Discovery {
    pub fn new(max_registries: usize, insecure_registries: Vec<String>) -> Self {
        Discovery {
            max_registries,
            insecure_registries,
            refused: BTreeSet::new(),
        }
    }

    /// The routes for `candidates` (highest priority first; `--registry` comes first). Registries
    /// past the cap are refused and counted in `pullwatch_series_dropped_total{metric="pullwatch_registry_up"}`.
    pub fn routes<'a>(
        &mut self,
        candidates: impl IntoIterator<Item = &'a str>,
        metrics: &Metrics,
    ) -> Vec<Route> {
        let mut seen = BTreeSet::new();
        let mut routes = Vec::new();
        let mut refused = BTreeSet::new();
        for registry in candidates {
            if !seen.insert(registry) {
                continue;
            }
            if routes.len() >= self.max_registries {
                refused.insert(registry.to_string());
                continue;
            }
            match route::default_route(registry, &self.insecure_registries) {
                Ok(route) => routes.push(route),
                Err(error) => warn!(registry, %error, "cannot watch this registry"),
            }
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
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_deduplicated_capped_and_refusals_counted_once() {
        let metrics = Metrics::new("n", "v", "r", 10).unwrap();
        let mut discovery = Discovery::new(2, vec!["b.example".into()]);
        let candidates = [
            "a.example",
            "b.example",
            "a.example",
            "c.example",
            "d.example",
        ];
        let routes = discovery.routes(candidates, &metrics);
        let names: Vec<&str> = routes.iter().map(|r| r.registry.as_str()).collect();
        assert_eq!(names, ["a.example", "b.example"]);
        assert_eq!(routes[1].endpoints[0].url(), "http://b.example");
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
        discovery.routes(candidates, &metrics);
        assert_eq!(dropped(&metrics).as_deref(), Some("2"));
        discovery.routes(["a.example", "b.example", "e.example"], &metrics);
        assert_eq!(dropped(&metrics).as_deref(), Some("3"));
    }
}
