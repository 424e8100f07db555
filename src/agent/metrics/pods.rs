//! The pod watch's families (pull failures, containers waiting on a pull, the watch's own state)
//! and the label sets they have, each holding a slot of the `--max-failing-series` budget.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::budget::Budget;
use super::family::{Family, Labels, NoLabels};
use super::{
    CONTAINER_PULL_FAILING, CONTAINERS_WAITING_ON_PULL, IMAGE_PULL_FAILURES, KUBERNETES_WATCH_UP,
};
use crate::reason::Reason;

/// `registry, reason`: the per-registry pull failure families.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PullLabels {
    registry: String,
    reason: Reason,
}

/// `namespace, pod, container, registry, reason`: `container_pull_failing`. The fields' order is
/// the order the budget's slots are handed out in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerLabels {
    namespace: String,
    pod: String,
    container: String,
    registry: String,
    reason: Reason,
}

impl PullLabels {
    pub fn new(registry: &str, reason: Reason) -> Self {
        PullLabels {
            registry: registry.to_string(),
            reason,
        }
    }
}

impl ContainerLabels {
    pub fn new(
        namespace: &str,
        pod: &str,
        container: &str,
        registry: &str,
        reason: Reason,
    ) -> Self {
        ContainerLabels {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
            registry: registry.to_string(),
            reason,
        }
    }

    /// The registry and reason the container's failure counts under.
    fn pull(&self) -> PullLabels {
        PullLabels::new(&self.registry, self.reason)
    }
}

impl Labels for PullLabels {
    type Static = PullLabels;
    const NAMES: &'static [&'static str] = &["registry", "reason"];
    fn values(&self) -> Vec<&str> {
        vec![&self.registry, self.reason.as_str()]
    }
}

impl Labels for ContainerLabels {
    type Static = ContainerLabels;
    const NAMES: &'static [&'static str] = &["namespace", "pod", "container", "registry", "reason"];
    fn values(&self) -> Vec<&str> {
        vec![
            &self.namespace,
            &self.pod,
            &self.container,
            &self.registry,
            self.reason.as_str(),
        ]
    }
}

/// The label sets of the pod-failure families that exist, and those a full budget refused.
#[derive(Default)]
struct ExportedPodSeries {
    counters: BTreeSet<PullLabels>,
    waiting: BTreeMap<PullLabels, i64>,
    containers: BTreeSet<ContainerLabels>,
    refused_waiting: BTreeSet<PullLabels>,
    refused_containers: BTreeSet<ContainerLabels>,
}

/// Every family the pod watch feeds.
pub struct PodMetrics {
    pull_failures: Family<IntCounterVec, PullLabels>,
    waiting: Family<IntGaugeVec, PullLabels>,
    failing: Family<IntGaugeVec, ContainerLabels>,
    /// Its one series exists only while the pod watch runs.
    watch_up: Family<IntGaugeVec, NoLabels>,
    budget: Arc<Budget>,
    /// Held briefly, never across `.await`.
    exported: Mutex<ExportedPodSeries>,
}

impl PodMetrics {
    pub(super) fn new(registry: &Registry, budget: Arc<Budget>) -> prometheus::Result<Self> {
        Ok(PodMetrics {
            pull_failures: Family::counter(
                registry,
                IMAGE_PULL_FAILURES,
                "Failed image pulls the kubelet reported for pods on this node, each attempt once.",
            )?,
            waiting: Family::gauge(
                registry,
                CONTAINERS_WAITING_ON_PULL,
                "Containers on this node waiting for an image the kubelet could not pull.",
            )?,
            failing: Family::gauge(
                registry,
                CONTAINER_PULL_FAILING,
                "1 while this container waits for an image the kubelet could not pull (capped).",
            )?,
            watch_up: Family::gauge(
                registry,
                KUBERNETES_WATCH_UP,
                "1 while the watch on this node's pods is established.",
            )?,
            budget,
            exported: Mutex::new(ExportedPodSeries::default()),
        })
    }

    /// Sets `kubernetes_watch_up`.
    pub fn set_watch_up(&self, up: bool) {
        self.watch_up.with(&NoLabels).set(i64::from(up));
    }

    /// Counts one failed pull attempt; a new label set takes a counter slot or is refused.
    pub fn count_attempt(&self, labels: &PullLabels) {
        let mut exported = super::lock(&self.exported);
        if !exported.counters.contains(labels) {
            if !self.budget.take_history() {
                self.budget.dropped(IMAGE_PULL_FAILURES, 1);
                return;
            }
            exported.counters.insert(labels.clone());
        }
        self.pull_failures.with(labels).inc();
    }

    /// Makes the gauges say exactly `failing` (one entry per failing container): vanished series
    /// go first and free their slots, then new ones take slots, the per-registry counts before
    /// the per-container series.
    pub fn set_failing(&self, failing: &[ContainerLabels]) {
        let mut counts: BTreeMap<PullLabels, i64> = BTreeMap::new();
        for container in failing {
            *counts.entry(container.pull()).or_default() += 1;
        }
        let wanted: BTreeSet<&ContainerLabels> = failing.iter().collect();
        let mut guard = super::lock(&self.exported);
        let exported = &mut *guard;

        exported.waiting.retain(|labels, _| {
            let keep = counts.contains_key(labels);
            if !keep {
                self.waiting.remove(labels);
                self.budget.release_current();
            }
            keep
        });
        exported.containers.retain(|labels| {
            let keep = wanted.contains(labels);
            if !keep {
                self.failing.remove(labels);
                self.budget.release_current();
            }
            keep
        });

        let mut refused = BTreeSet::new();
        for (labels, count) in counts {
            if !exported.waiting.contains_key(&labels) && !self.budget.take_current() {
                refused.insert(labels);
                continue;
            }
            self.waiting.with(&labels).set(count);
            exported.waiting.insert(labels, count);
        }
        self.budget.refused(
            CONTAINERS_WAITING_ON_PULL,
            refused,
            &mut exported.refused_waiting,
        );

        let mut refused = BTreeSet::new();
        for labels in wanted {
            if !exported.containers.contains(labels) {
                if !self.budget.take_current() {
                    refused.insert(labels.clone());
                    continue;
                }
                exported.containers.insert(labels.clone());
            }
            self.failing.with(labels).set(1);
        }
        self.budget.refused(
            CONTAINER_PULL_FAILING,
            refused,
            &mut exported.refused_containers,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::metrics::{
        self, CONTAINER_PULL_FAILING, CONTAINERS_WAITING_ON_PULL, IMAGE_PULL_FAILURES, Metrics,
    };

    fn series(pod: &str, registry: &str, reason: Reason) -> ContainerLabels {
        ContainerLabels::new("ns", pod, "app", registry, reason)
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
        let metrics = Metrics::new("n", "v", "r", 4).unwrap();
        let pods = metrics.pods();
        let a = series("a", "missing.test", Reason::DnsNxdomain);
        let b = series("b", "missing.test", Reason::DnsNxdomain);
        let c = series("c", "other.test", Reason::TcpRefused);
        pods.set_failing(&[a.clone(), b.clone()]);
        let waiting = lines(&metrics, CONTAINERS_WAITING_ON_PULL);
        assert_eq!(waiting.len(), 1);
        assert!(waiting[0].ends_with(" 2"), "{waiting:?}");
        assert_eq!(lines(&metrics, CONTAINER_PULL_FAILING).len(), 2);

        // Budget 4: a, b and their registry take 3; c's registry takes the last, c is refused.
        pods.set_failing(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(lines(&metrics, CONTAINERS_WAITING_ON_PULL).len(), 2);
        assert_eq!(lines(&metrics, CONTAINER_PULL_FAILING).len(), 2);
        assert_eq!(dropped(&metrics, CONTAINER_PULL_FAILING), "1");
        // Refused again on the next update: counted when it started, not again.
        pods.set_failing(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(dropped(&metrics, CONTAINER_PULL_FAILING), "1");

        // a recovers: its slot goes to c.
        pods.set_failing(&[b.clone(), c.clone()]);
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

        pods.set_failing(&[]);
        assert!(lines(&metrics, CONTAINERS_WAITING_ON_PULL).is_empty());
        assert!(lines(&metrics, CONTAINER_PULL_FAILING).is_empty());
        // Every slot came back.
        for _ in 0..4 {
            assert!(metrics.budget().take_current());
        }
        assert!(!metrics.budget().take_current());
    }

    #[test]
    fn attempts_are_counted_per_registry_and_reason() {
        let metrics = Metrics::new("n", "v", "r", 1).unwrap();
        let pods = metrics.pods();
        pods.count_attempt(&PullLabels::new("missing.test", Reason::DnsNxdomain));
        pods.count_attempt(&PullLabels::new("missing.test", Reason::DnsNxdomain));
        pods.count_attempt(&PullLabels::new("other.test", Reason::TcpRefused));
        let counters = lines(&metrics, IMAGE_PULL_FAILURES);
        assert_eq!(counters.len(), 1, "{counters:?}");
        assert!(counters[0].contains("reason=\"dns_nxdomain\"") && counters[0].ends_with(" 2"));
        assert_eq!(dropped(&metrics, IMAGE_PULL_FAILURES), "1");
    }
}
