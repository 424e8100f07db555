//! The pod watch's side of the pod-failure metrics: its pull attempts and failing containers as
//! label sets of the metrics' pod part, which keeps them within the `--max-failing-series` budget.

use std::sync::Arc;

use crate::agent::metrics::{ContainerLabels, Metrics, PullLabels};
use crate::reason::Reason;

/// `pullwatch_container_pull_failing`'s labels: namespace, pod, container, registry, reason.
pub type ContainerSeries = (String, String, String, String, Reason);

/// Hands the pod watch's failures to the metrics.
pub struct PodSeries {
    metrics: Arc<Metrics>,
}

impl PodSeries {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        PodSeries { metrics }
    }

    /// Counts one failed pull attempt.
    pub fn attempt(&mut self, registry: &str, reason: Reason) {
        self.metrics
            .pods()
            .count_attempt(&PullLabels::new(registry, reason));
    }

    /// Makes the gauges say exactly `failing` (one entry per failing container).
    pub fn set(&mut self, failing: &[ContainerSeries]) {
        let labels: Vec<ContainerLabels> = failing
            .iter()
            .map(|(namespace, pod, container, registry, reason)| {
                ContainerLabels::new(namespace, pod, container, registry, *reason)
            })
            .collect();
        self.metrics.pods().set_failing(&labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::metrics::{
        self, CONTAINER_PULL_FAILING, CONTAINERS_WAITING_ON_PULL, IMAGE_PULL_FAILURES,
    };

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
            assert!(metrics.budget().take_current());
        }
        assert!(!metrics.budget().take_current());
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
