//! The pod-failure series of the agent's metrics: which label sets exist, each holding a slot of the
//! `--max-failing-series` budget; refusals counted once when they start, series removed on recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::agent::metrics::{
    CONTAINER_PULL_FAILING, CONTAINERS_WAITING_ON_PULL, IMAGE_PULL_FAILURES, Metrics,
};
use crate::reason::Reason;

/// `pullwatch_container_pull_failing`'s labels: namespace, pod, container, registry, reason.
pub type ContainerSeries = (String, String, String, String, Reason);
/// `registry, reason`.
type RegistryReason = (String, Reason);

/// The label sets of the pod-failure metrics that exist, and those a full budget refused.
pub struct PodSeries {
    metrics: Arc<Metrics>,
    counters: BTreeSet<RegistryReason>,
    waiting: BTreeMap<RegistryReason, i64>,
    containers: BTreeSet<ContainerSeries>,
    refused_waiting: BTreeSet<RegistryReason>,
    refused_containers: BTreeSet<ContainerSeries>,
}

impl PodSeries {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        PodSeries {
            metrics,
            counters: BTreeSet::new(),
            waiting: BTreeMap::new(),
            containers: BTreeSet::new(),
            refused_waiting: BTreeSet::new(),
            refused_containers: BTreeSet::new(),
        }
    }

    /// Counts one failed pull attempt.
    pub fn attempt(&mut self, registry: &str, reason: Reason) {
        let key = (registry.to_string(), reason);
        if !self.counters.contains(&key) {
            if !self.metrics.take_counter_slot() {
                self.metrics.series_dropped(IMAGE_PULL_FAILURES, 1);
                return;
            }
            self.counters.insert(key);
        }
        self.metrics
            .image_pull_failures
            .with_label_values(&[registry, reason.as_str()])
            .inc();
    }

    /// Makes the gauges say exactly `failing` (one entry per failing container): vanished series
    /// go first and free their slots, then new ones take slots, the per-registry counts before
    /// the per-container series.
    pub fn set(&mut self, failing: &[ContainerSeries]) {
        let mut counts: BTreeMap<RegistryReason, i64> = BTreeMap::new();
        for (_, _, _, registry, reason) in failing {
            *counts.entry((registry.clone(), *reason)).or_default() += 1;
        }
        let wanted: BTreeSet<&ContainerSeries> = failing.iter().collect();

        let gone: Vec<RegistryReason> = self
            .waiting
            .keys()
            .filter(|k| !counts.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.waiting.remove(&key);
            let _ = self
                .metrics
                .containers_waiting_on_pull
                .remove_label_values(&[&key.0, key.1.as_str()]);
            self.metrics.release_failing_slot();
        }
        let gone: Vec<ContainerSeries> = self
            .containers
            .iter()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for key in gone {
            self.containers.remove(&key);
            let _ = self
                .metrics
                .container_pull_failing
                .remove_label_values(&container_labels(&key));
            self.metrics.release_failing_slot();
        }

        let mut refused = BTreeSet::new();
        for (key, count) in &counts {
            if !self.waiting.contains_key(key) && !self.metrics.take_failing_slot() {
                refused.insert(key.clone());
                continue;
            }
            self.waiting.insert(key.clone(), *count);
            self.metrics
                .containers_waiting_on_pull
                .with_label_values(&[&key.0, key.1.as_str()])
                .set(*count);
        }
        let newly = refused.difference(&self.refused_waiting).count() as u64;
        if newly > 0 {
            self.metrics
                .series_dropped(CONTAINERS_WAITING_ON_PULL, newly);
        }
        self.refused_waiting = refused;

        let mut refused = BTreeSet::new();
        for key in wanted {
            if !self.containers.contains(key) {
                if !self.metrics.take_failing_slot() {
                    refused.insert(key.clone());
                    continue;
                }
                self.containers.insert(key.clone());
            }
            self.metrics
                .container_pull_failing
                .with_label_values(&container_labels(key))
                .set(1);
        }
        let newly = refused.difference(&self.refused_containers).count() as u64;
        if newly > 0 {
            self.metrics.series_dropped(CONTAINER_PULL_FAILING, newly);
        }
        self.refused_containers = refused;
    }
}

fn container_labels(key: &ContainerSeries) -> [&str; 5] {
    [&key.0, &key.1, &key.2, &key.3, key.4.as_str()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::metrics;

    fn series(pod: &str, registry: &str, reason: Reason) -> ContainerSeries {
        (
            "ns".into(),
            pod.into(),
            "app".into(),
            registry.into(),
            reason,
        )
    }

    fn lines(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics
            .encode()
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(str::to_string)
            .collect()
    }

    fn dropped(metrics: &Metrics, metric: &str) -> String {
        lines(metrics, metrics::SERIES_DROPPED)
            .into_iter()
            .find(|l| l.contains(&format!("metric=\"{metric}\"")))
            .and_then(|l| l.rsplit(' ').next().map(str::to_string))
            .unwrap()
    }

    #[test]
    fn gauges_follow_the_failures_within_the_budget() {
        let metrics = Arc::new(Metrics::new("n", "v", "r", 4).unwrap());
        let mut pods = PodSeries::new(Arc::clone(&metrics));
        let a = series("a", "missing.test", Reason::DnsNxdomain);
        let b = series("b", "missing.test", Reason::DnsNxdomain);
        let c = series("c", "other.test", Reason::TcpRefused);
        pods.set(&[a.clone(), b.clone()]);
        let waiting = lines(&metrics, CONTAINERS_WAITING_ON_PULL);
        assert_eq!(waiting.len(), 1);
        assert!(waiting[0].ends_with(" 2"), "{waiting:?}");
        assert_eq!(lines(&metrics, CONTAINER_PULL_FAILING).len(), 2);

        // Budget 4: a, b and their registry take 3; c's registry takes the last, c is refused.
        pods.set(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(lines(&metrics, CONTAINERS_WAITING_ON_PULL).len(), 2);
        assert_eq!(lines(&metrics, CONTAINER_PULL_FAILING).len(), 2);
        assert_eq!(dropped(&metrics, CONTAINER_PULL_FAILING), "1");
        // Refused again on the next update: counted when it started, not again.
        pods.set(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(dropped(&metrics, CONTAINER_PULL_FAILING), "1");

        // a recovers: its slot goes to c.
        pods.set(&[b.clone(), c.clone()]);
        let failing = lines(&metrics, CONTAINER_PULL_FAILING);
        assert_eq!(failing.len(), 2);
        assert!(
            failing.iter().any(|l| l.contains("pod=\"c\"")),
            "{failing:?}"
        );
        assert!(
            !failing.iter().any(|l| l.contains("pod=\"a\"")),
            "{failing:?}"
        );

        pods.set(&[]);
        assert!(lines(&metrics, CONTAINERS_WAITING_ON_PULL).is_empty());
        assert!(lines(&metrics, CONTAINER_PULL_FAILING).is_empty());
        // Every slot came back.
        for _ in 0..4 {
            assert!(metrics.take_failing_slot());
        }
        assert!(!metrics.take_failing_slot());
    }

    #[test]
    fn attempts_are_counted_per_registry_and_reason() {
        let metrics = Arc::new(Metrics::new("n", "v", "r", 1).unwrap());
        let mut pods = PodSeries::new(Arc::clone(&metrics));
        pods.attempt("missing.test", Reason::DnsNxdomain);
        pods.attempt("missing.test", Reason::DnsNxdomain);
        pods.attempt("other.test", Reason::TcpRefused);
        let counters = lines(&metrics, IMAGE_PULL_FAILURES);
        assert_eq!(counters.len(), 1, "{counters:?}");
        assert!(counters[0].contains("reason=\"dns_nxdomain\"") && counters[0].ends_with(" 2"));
        assert_eq!(dropped(&metrics, IMAGE_PULL_FAILURES), "1");
    }
}
