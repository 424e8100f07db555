//! The agent's Prometheus metrics under the documented names (`docs/metrics.md`): one registry,
//! `node` on every series, built once and passed in; one part per concern owns its families.

mod budget;
mod endpoint;
mod family;
mod host;
mod pods;
mod registry;
mod runtime;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::{
    Encoder, IntGaugeVec, Registry, TextEncoder, process_collector::ProcessCollector,
};

use self::budget::Budget;
pub use self::endpoint::connectivity_chain;
use self::family::{Family, Labels};
pub use self::pods::{ContainerLabels, PodMetrics, PullLabels};
pub use self::registry::RegistryMetrics;
pub use self::runtime::{RuntimeFacts, RuntimeMetrics};

pub const REGISTRY_UP: &str = "pullwatch_registry_up";
pub const REGISTRY_CREDENTIALS: &str = "pullwatch_registry_credentials";
pub const ENDPOINT_UP: &str = "pullwatch_endpoint_up";
pub const CHECK_SUCCESS: &str = "pullwatch_check_success";
pub const CHECK_DURATION: &str = "pullwatch_check_duration_seconds";
pub const CHECK_FAILURES: &str = "pullwatch_check_failures_total";
pub const ENDPOINT_FAILURE_REASON: &str = "pullwatch_endpoint_failure_reason";
pub const DNS_ADDRESSES: &str = "pullwatch_dns_addresses";
pub const TCP_REACHABLE: &str = "pullwatch_tcp_addresses_reachable";
pub const TLS_NOT_AFTER: &str = "pullwatch_tls_cert_not_after_timestamp_seconds";
pub const TLS_INFO: &str = "pullwatch_tls_info";
pub const HTTP_STATUS: &str = "pullwatch_http_status_code";
pub const SERIES_DROPPED: &str = "pullwatch_series_dropped_total";
pub const BUILD_INFO: &str = "pullwatch_build_info";
pub const RATELIMIT_LIMIT: &str = "pullwatch_registry_ratelimit_limit";
pub const RATELIMIT_REMAINING: &str = "pullwatch_registry_ratelimit_remaining";
pub const RATELIMIT_WINDOW: &str = "pullwatch_registry_ratelimit_window_seconds";
pub const RUNTIME_CHECK_SUCCESS: &str = "pullwatch_runtime_check_success";
pub const RUNTIME_CHECK_DURATION: &str = "pullwatch_runtime_check_duration_seconds";
pub const RUNTIME_UP: &str = "pullwatch_runtime_up";
pub const RUNTIME_INFO: &str = "pullwatch_runtime_info";
pub const RUNTIME_CONDITION: &str = "pullwatch_runtime_condition";
pub const IMAGE_FS_USED_BYTES: &str = "pullwatch_image_fs_used_bytes";
pub const IMAGE_FS_INODES_USED: &str = "pullwatch_image_fs_inodes_used";
pub const IMAGES: &str = "pullwatch_images";
pub const IMAGE_PULL_FAILURES: &str = "pullwatch_image_pull_failures_total";
pub const CONTAINERS_WAITING_ON_PULL: &str = "pullwatch_containers_waiting_on_pull";
pub const CONTAINER_PULL_FAILING: &str = "pullwatch_container_pull_failing";
pub const KUBERNETES_WATCH_UP: &str = "pullwatch_kubernetes_watch_up";

/// `version, revision`: `build_info`.
struct BuildLabels<'a> {
    version: &'a str,
    revision: &'a str,
}

impl<'a> Labels for BuildLabels<'a> {
    type Static = BuildLabels<'static>;
    const NAMES: &'static [&'static str] = &["version", "revision"];
    fn values(&self) -> Vec<&str> {
        vec![self.version, self.revision]
    }
}

/// Every metric of the agent, registered in its own registry, in one part per concern.
pub struct Metrics {
    registry: Registry,
    budget: Arc<Budget>,
    registries: RegistryMetrics,
    runtime: RuntimeMetrics,
    pods: PodMetrics,
}

impl Metrics {
    /// Builds and registers every metric, lean (see [`Metrics::with_detail`]);
    /// `max_failing_series` caps the series labelled `reason`.
    pub fn new(
        node: &str,
        version: &str,
        revision: &str,
        max_failing_series: usize,
    ) -> Result<Self, prometheus::Error> {
        Self::with_detail(node, version, revision, max_failing_series, false)
    }

    /// [`Metrics::new`], and with `detail` (`--metrics-detail`) the per-check series of healthy
    /// endpoints too; without it they exist only while something fails, so a healthy registry
    /// costs a handful of series per node.
    pub fn with_detail(
        node: &str,
        version: &str,
        revision: &str,
        max_failing_series: usize,
        detail: bool,
    ) -> Result<Self, prometheus::Error> {
        let labels = HashMap::from([("node".to_string(), node.to_string())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let budget = Arc::new(Budget::new(&registry, max_failing_series)?);
        let build_info: Family<IntGaugeVec, BuildLabels<'static>> = Family::gauge(
            &registry,
            BUILD_INFO,
            "Always 1: the running pullwatch's version and git revision.",
        )?;
        build_info.with(&BuildLabels { version, revision }).set(1);
        let metrics = Metrics {
            registries: RegistryMetrics::new(&registry, Arc::clone(&budget), detail)?,
            runtime: RuntimeMetrics::new(&registry)?,
            pods: PodMetrics::new(&registry, Arc::clone(&budget))?,
            budget,
            registry,
        };
        metrics
            .registry
            .register(Box::new(ProcessCollector::for_self()))?;
        Ok(metrics)
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Counts `count` series of `metric` refused by a cap.
    pub fn series_dropped(&self, metric: &str, count: u64) {
        self.budget.dropped(metric, count);
    }

    /// The registries' and their endpoints' families.
    pub fn registries(&self) -> &RegistryMetrics {
        &self.registries
    }

    /// The container runtime's families.
    pub fn runtime(&self) -> &RuntimeMetrics {
        &self.runtime
    }

    /// The pod watch's families.
    pub fn pods(&self) -> &PodMetrics {
        &self.pods
    }

    /// The series caps, to see the slots taken.
    #[cfg(test)]
    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }
}

/// Locks a part's book. A panic while holding the lock leaves the book consistent enough to keep
/// serving.
fn lock<T>(book: &Mutex<T>) -> MutexGuard<'_, T> {
    book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every metric with at least one series, filled the way the agent fills them (for tests that
/// read the whole exposition).
#[cfg(test)]
pub(crate) fn every_family_filled() -> Metrics {
    use std::time::Duration;

    use crate::check::manifest::RateLimit;
    use crate::check::tls::{CertSummary, TlsOutcome};
    use crate::check::{CheckKind, CheckResult};
    use crate::diagnose::Probe;
    use crate::reason::Reason;
    use crate::route::{Endpoint, Role, Scheme};
    use crate::runtime::{Condition, ImageFs, RuntimeVersion};

    let metrics = Metrics::new("node-1", "0.1.0", "abc", 10).unwrap();
    let endpoint = Endpoint {
        scheme: Scheme::Https,
        host: "r.example".into(),
        port: 443,
        role: Role::Upstream,
        source: "default".into(),
        tls: Default::default(),
        api_path: "/v2".into(),
        repository: None,
        namespace_query: false,
        extras: Default::default(),
        http_fallback: None,
    };
    // A failed http check after a handshake: every per-endpoint metric has a series.
    let probe = Probe {
        checks: vec![CheckResult {
            check: CheckKind::Http,
            ok: false,
            seconds: 0.1,
            detail: String::new(),
            reason: Some(Reason::RegistryUnavailable),
        }],
        tls: Some(TlsOutcome {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            verified: true,
            chain: vec![std::sync::Arc::new(CertSummary {
                subject: "CN=r".into(),
                issuer: "CN=ca".into(),
                sans: vec![],
                not_before: 0,
                not_after: 2_000_000_000,
            })],
        }),
        http_status: Some(503),
        ..Probe::default()
    };
    metrics.registries().set_registry_up("r.example", false);
    metrics.registries().set_credentials("r.example", "none");
    metrics
        .registries()
        .record_endpoint("r.example", &endpoint, &probe);
    let limit = RateLimit {
        limit: Some(100),
        remaining: Some(76),
        window: Some(Duration::from_secs(21600)),
        source: None,
    };
    metrics
        .registries()
        .set_ratelimit("r.example", Some(&limit));
    metrics
        .registries()
        .set_runtime_check("r.example", true, 0.2);
    metrics.runtime().record(
        true,
        &RuntimeFacts {
            version: Some(RuntimeVersion {
                runtime_name: "containerd".into(),
                runtime_version: "1.6.20".into(),
                runtime_api_version: "v1".into(),
            }),
            conditions: vec![Condition {
                kind: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            }],
            image_fs: vec![ImageFs {
                mountpoint: "/var/lib/containerd".into(),
                used_bytes: 1,
                inodes_used: 1,
            }],
            images: Some(3),
        },
    );
    metrics
        .pods()
        .count_attempt(&PullLabels::new("r.example", Reason::ManifestUnknown));
    metrics.pods().set_failing(&[ContainerLabels::new(
        "ns",
        "pod",
        "app",
        "r.example",
        Reason::ManifestUnknown,
    )]);
    metrics.pods().set_watch_up(true);
    metrics
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use super::*;
    use crate::check::dns::DnsOutcome;
    use crate::check::http::HttpOutcome;
    use crate::check::tcp::{Attempt, TcpOutcome};
    use crate::check::tls::{CertSummary, TlsOutcome};
    use crate::check::{CheckKind, CheckResult};
    use crate::diagnose::Probe;
    use crate::reason::Reason;
    use crate::route::{Endpoint, Role, Scheme};
    use crate::trust::TlsOptions;

    fn endpoint(host: &str) -> Endpoint {
        Endpoint {
            scheme: Scheme::Https,
            host: host.into(),
            port: 443,
            role: Role::Upstream,
            source: "default".into(),
            tls: TlsOptions::default(),
            api_path: "/v2".into(),
            repository: None,
            namespace_query: false,
            extras: Default::default(),
            http_fallback: None,
        }
    }

    fn result(check: CheckKind, reason: Option<Reason>) -> CheckResult {
        CheckResult {
            check,
            ok: reason.is_none(),
            seconds: 0.25,
            detail: String::new(),
            reason,
        }
    }

    fn passing() -> Probe {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Probe {
            checks: [
                CheckKind::Dns,
                CheckKind::Tcp,
                CheckKind::Tls,
                CheckKind::Http,
            ]
            .map(|c| result(c, None))
            .to_vec(),
            dns: Some(DnsOutcome::literal(ip)),
            tcp: Some(TcpOutcome {
                attempts: vec![Attempt {
                    addr: SocketAddr::new(ip, 443),
                    took: Duration::from_millis(1),
                    failure: None,
                }],
                untried: 0,
            }),
            tls: Some(TlsOutcome {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
                verified: true,
                chain: vec![std::sync::Arc::new(CertSummary {
                    subject: "CN=r".into(),
                    issuer: "CN=ca".into(),
                    sans: vec![],
                    not_before: 0,
                    not_after: 2_000_000_000,
                })],
            }),
            http: Some(HttpOutcome {
                path: "/v2/".into(),
                status: 401,
                api_version: Some("registry/2.0".into()),
                challenge: None,
            }),
            http_status: Some(401),
        }
    }

    fn failing(reason: Reason) -> Probe {
        Probe {
            checks: vec![result(CheckKind::Dns, Some(reason))],
            ..Probe::default()
        }
    }

    fn metrics(max_failing: usize) -> Metrics {
        Metrics::new("node-1", "0.1.0", "abc", max_failing).unwrap()
    }

    /// Sample lines of `name` (exact metric name) in the exposition.
    fn samples(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics
            .encode()
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn names_types_and_labels_follow_the_design() {
        let metrics = Metrics::with_detail("node-1", "0.1.0", "abc", 10, true).unwrap();
        metrics.registries().set_registry_up("r.example", true);
        metrics
            .registries()
            .record_endpoint("r.example", &endpoint("r.example"), &passing());
        metrics.registries().record_endpoint(
            "bad.example",
            &endpoint("bad.example"),
            &failing(Reason::DnsNxdomain),
        );
        let text = metrics.encode().unwrap();
        let want = [
            (REGISTRY_UP, "gauge"),
            (ENDPOINT_UP, "gauge"),
            (CHECK_SUCCESS, "gauge"),
            (CHECK_DURATION, "gauge"),
            (CHECK_FAILURES, "counter"),
            (ENDPOINT_FAILURE_REASON, "gauge"),
            (DNS_ADDRESSES, "gauge"),
            (TCP_REACHABLE, "gauge"),
            (TLS_NOT_AFTER, "gauge"),
            (TLS_INFO, "gauge"),
            (HTTP_STATUS, "gauge"),
            (SERIES_DROPPED, "counter"),
            (BUILD_INFO, "gauge"),
        ];
        for (name, kind) in want {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind}\n{text}"
            );
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("node=\"node-1\""), "no node label: {line}");
        }
        assert!(
            text.contains("process_resident_memory_bytes{node=\"node-1\"}"),
            "{text}"
        );
        let reason = samples(&metrics, ENDPOINT_FAILURE_REASON);
        assert_eq!(reason.len(), 1, "{reason:?}");
        assert!(
            reason[0].contains("reason=\"dns_nxdomain\"")
                && reason[0].contains("role=\"upstream\"")
        );
        // The checks after the failed one still have series, at 0.
        let success = samples(&metrics, CHECK_SUCCESS);
        assert_eq!(success.len(), 8, "{success:?}");
        assert!(success.iter().any(|l| l.contains("bad.example")
            && l.contains("check=\"http\"")
            && l.ends_with(" 0")));
        assert!(samples(&metrics, TLS_INFO)[0].contains("version=\"TLSv1.3\""));
        assert!(samples(&metrics, TLS_INFO)[0].contains("verified=\"true\""));
        assert!(samples(&metrics, HTTP_STATUS)[0].ends_with(" 401"));
        assert!(samples(&metrics, BUILD_INFO)[0].contains("revision=\"abc\""));
    }

    /// The auth and manifest checks of a manifest round, passed or failed with `reason`.
    fn api_checks(manifest: Option<Reason>) -> Vec<CheckResult> {
        vec![
            result(CheckKind::Auth, None),
            result(CheckKind::Manifest, manifest),
        ]
    }

    /// Every sample line about `registry`, by metric name.
    fn series_of(metrics: &Metrics, registry: &str) -> Vec<String> {
        let label = format!("registry=\"{registry}\"");
        let mut names: Vec<String> = metrics
            .encode()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(|l| l.split('{').next().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names
    }

    /// A registry of one HTTPS endpoint that passed the chain and a manifest round.
    fn healthy(metrics: &Metrics) {
        let registries = metrics.registries();
        registries.set_registry_up("r", true);
        registries.set_credentials("r", "none");
        registries.set_ratelimit("r", None);
        registries.record_endpoint_with("r", &endpoint("r.example"), &passing(), &api_checks(None));
    }

    #[test]
    fn a_healthy_registry_costs_five_series_unless_detail_is_asked() {
        let lean = metrics(10);
        healthy(&lean);
        // Up or not, and why not is elsewhere: the registry's and its endpoint's verdicts, the
        // certificate's expiry (the one fact that warns before a failure) and what TLS and which
        // credentials the checks used (a skip_verify or an anonymous check explains a pass).
        assert_eq!(
            series_of(&lean, "r"),
            [
                ENDPOINT_UP,
                REGISTRY_CREDENTIALS,
                REGISTRY_UP,
                TLS_NOT_AFTER,
                TLS_INFO
            ]
        );
        let detailed = Metrics::with_detail("node-1", "0.1.0", "abc", 10, true).unwrap();
        healthy(&detailed);
        let all = series_of(&detailed, "r");
        let count = |name: &str| all.iter().filter(|n| *n == name).count();
        assert_eq!(count(CHECK_SUCCESS), 6, "{all:?}");
        assert_eq!(count(CHECK_DURATION), 6);
        assert_eq!((count(DNS_ADDRESSES), count(TCP_REACHABLE)), (2, 2));
        assert_eq!(count(HTTP_STATUS), 1);
        assert_eq!(all.len(), 22, "{all:?}");
        // No rate-limit headers, no rate-limit series.
        assert_eq!(count(RATELIMIT_LIMIT), 0);
    }

    #[test]
    fn a_failing_endpoint_shows_every_check_until_it_recovers() {
        let metrics = metrics(10);
        healthy(&metrics);
        let ep = endpoint("r.example");
        let mut broken = passing();
        broken.checks[2] = result(CheckKind::Tls, Some(Reason::TlsExpired));
        broken.checks.truncate(3);
        broken.http = None;
        broken.http_status = None;
        metrics.registries().record_endpoint("r", &ep, &broken);
        let success = samples(&metrics, CHECK_SUCCESS);
        // What passed before the failure, the failure, and what did not run.
        for (check, value) in [("dns", 1), ("tcp", 1), ("tls", 0), ("http", 0)] {
            assert!(
                success
                    .iter()
                    .any(|l| l.contains(&format!("check=\"{check}\""))
                        && l.ends_with(&format!(" {value}"))),
                "{check}: {success:?}"
            );
        }
        assert_eq!(success.len(), 4, "{success:?}");
        assert_eq!(samples(&metrics, CHECK_DURATION).len(), 4);
        assert_eq!(samples(&metrics, DNS_ADDRESSES).len(), 2);
        assert_eq!(samples(&metrics, ENDPOINT_FAILURE_REASON).len(), 1);
        assert_eq!(samples(&metrics, CHECK_FAILURES).len(), 1);

        // Recovered: the detail goes, the failure counter's history stays.
        metrics
            .registries()
            .record_endpoint_with("r", &ep, &passing(), &api_checks(None));
        let mut now = series_of(&metrics, "r");
        now.retain(|n| n != CHECK_FAILURES);
        assert_eq!(now.len(), 5, "{now:?}");
        assert_eq!(samples(&metrics, CHECK_FAILURES).len(), 1);

        // A refused manifest behind a passing chain: the endpoint is up, its manifest check is not.
        metrics.registries().record_endpoint_with(
            "r",
            &ep,
            &passing(),
            &api_checks(Some(Reason::ManifestUnknown)),
        );
        assert!(samples(&metrics, ENDPOINT_UP)[0].ends_with(" 1"));
        assert!(
            samples(&metrics, CHECK_SUCCESS)
                .iter()
                .any(|l| l.contains("check=\"manifest\"") && l.ends_with(" 0"))
        );
        assert_eq!(samples(&metrics, HTTP_STATUS).len(), 1);
    }

    #[test]
    fn a_reason_change_replaces_the_series_and_recovery_removes_it() {
        let metrics = metrics(10);
        let ep = endpoint("r.example");
        metrics
            .registries()
            .record_endpoint("r", &ep, &failing(Reason::DnsTimeout));
        metrics
            .registries()
            .record_endpoint("r", &ep, &failing(Reason::DnsServfail));
        let reason = samples(&metrics, ENDPOINT_FAILURE_REASON);
        assert_eq!(reason.len(), 1);
        assert!(reason[0].contains("dns_servfail"));
        metrics.registries().record_endpoint("r", &ep, &passing());
        assert!(samples(&metrics, ENDPOINT_FAILURE_REASON).is_empty());
        // Counters stay.
        assert_eq!(samples(&metrics, CHECK_FAILURES).len(), 2);
        // A failed run leaves no stale TLS or HTTP facts.
        metrics
            .registries()
            .record_endpoint("r", &ep, &failing(Reason::DnsTimeout));
        assert!(samples(&metrics, TLS_INFO).is_empty());
        assert!(samples(&metrics, TLS_NOT_AFTER).is_empty());
        assert!(samples(&metrics, HTTP_STATUS).is_empty());
    }

    #[test]
    fn forgetting_a_registry_removes_all_its_series() {
        let metrics = metrics(10);
        metrics.registries().set_registry_up("gone", false);
        metrics.registries().record_endpoint(
            "gone",
            &endpoint("gone.example"),
            &failing(Reason::TcpRefused),
        );
        metrics.registries().set_registry_up("kept", true);
        metrics
            .registries()
            .record_endpoint("kept", &endpoint("kept.example"), &passing());
        metrics.registries().forget_registry("gone");
        let text = metrics.encode().unwrap();
        assert!(!text.contains("gone"), "{text}");
        assert!(text.contains("kept.example"));
        // Its failing series gave their budget back.
        assert_eq!(metrics.budget().used(), (0, 0));
    }

    /// `series_dropped_total{metric}` now.
    fn count_now(metrics: &Metrics, metric: &str) -> u64 {
        samples(metrics, SERIES_DROPPED)
            .iter()
            .find(|l| l.contains(&format!("metric=\"{metric}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }

    #[test]
    fn failing_series_are_capped_and_the_overflow_counted() {
        let metrics = metrics(3);
        for i in 0..4 {
            let ep = endpoint(&format!("r{i}.example"));
            metrics.registries().record_endpoint(
                &format!("r{i}"),
                &ep,
                &failing(Reason::DnsNxdomain),
            );
        }
        // A gauge and a counter per failing endpoint, each kind 3 slots: r3 gets neither.
        assert_eq!(samples(&metrics, CHECK_FAILURES).len(), 3);
        assert_eq!(samples(&metrics, ENDPOINT_FAILURE_REASON).len(), 3);
        assert_eq!(count_now(&metrics, CHECK_FAILURES), 1);
        assert_eq!(count_now(&metrics, ENDPOINT_FAILURE_REASON), 1);
        assert_eq!(count_now(&metrics, REGISTRY_UP), 0);
        // Each refused series is counted once, not once per round.
        metrics.registries().record_endpoint(
            "r3",
            &endpoint("r3.example"),
            &failing(Reason::DnsNxdomain),
        );
        assert_eq!(count_now(&metrics, CHECK_FAILURES), 1);
        assert_eq!(count_now(&metrics, ENDPOINT_FAILURE_REASON), 1);
        // A long history does not crowd out the present: with every counter slot taken, a new
        // failure of r0's still gets its gauge once r0's old one is gone.
        metrics.registries().record_endpoint(
            "r0",
            &endpoint("r0.example"),
            &failing(Reason::TcpRefused),
        );
        assert!(
            samples(&metrics, ENDPOINT_FAILURE_REASON)
                .iter()
                .any(|l| l.contains("r0.example") && l.contains("tcp_refused"))
        );
        assert_eq!(count_now(&metrics, CHECK_FAILURES), 2);
        // A recovery frees the gauge's slot for another endpoint.
        metrics
            .registries()
            .record_endpoint("r0", &endpoint("r0.example"), &passing());
        metrics.registries().record_endpoint(
            "r3",
            &endpoint("r3.example"),
            &failing(Reason::DnsNxdomain),
        );
        assert!(
            samples(&metrics, ENDPOINT_FAILURE_REASON)
                .iter()
                .any(|l| l.contains("r3.example"))
        );
    }
}
