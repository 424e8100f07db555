//! The agent's Prometheus metrics, exactly DESIGN.md's names, types and labels: one struct built
//! once and passed in, `node` on every series, a vanished registry's series removed, caps enforced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    process_collector::ProcessCollector,
};

use crate::check::CheckKind;
use crate::diagnose::Probe;
use crate::reason::Reason;
use crate::route::{Endpoint, Role, Scheme};

pub const REGISTRY_UP: &str = "pullwatch_registry_up";
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

/// Runtime conditions and image filesystems exported at most (label values come from the runtime).
const MAX_RUNTIME_LABELS: usize = 16;
pub const IMAGE_PULL_FAILURES: &str = "pullwatch_image_pull_failures_total";
pub const CONTAINERS_WAITING_ON_PULL: &str = "pullwatch_containers_waiting_on_pull";
pub const CONTAINER_PULL_FAILING: &str = "pullwatch_container_pull_failing";
pub const KUBERNETES_WATCH_UP: &str = "pullwatch_kubernetes_watch_up";

/// Metrics whose series a cap can refuse; their `series_dropped_total` series always exist.
const CAPPED: [&str; 6] = [
    REGISTRY_UP,
    ENDPOINT_FAILURE_REASON,
    CHECK_FAILURES,
    IMAGE_PULL_FAILURES,
    CONTAINERS_WAITING_ON_PULL,
    CONTAINER_PULL_FAILING,
];

/// Every metric of the agent, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    registry_up: IntGaugeVec,
    endpoint_up: IntGaugeVec,
    check_success: IntGaugeVec,
    check_duration: GaugeVec,
    check_failures: IntCounterVec,
    endpoint_failure_reason: IntGaugeVec,
    dns_addresses: IntGaugeVec,
    tcp_reachable: IntGaugeVec,
    tls_not_after: GaugeVec,
    tls_info: IntGaugeVec,
    http_status: IntGaugeVec,
    series_dropped: IntCounterVec,
    ratelimit_limit: IntGaugeVec,
    ratelimit_remaining: IntGaugeVec,
    ratelimit_window: IntGaugeVec,
    runtime_check_success: IntGaugeVec,
    runtime_check_duration: GaugeVec,
    runtime_up: IntGaugeVec,
    runtime_info: IntGaugeVec,
    runtime_condition: IntGaugeVec,
    image_fs_used_bytes: IntGaugeVec,
    image_fs_inodes_used: IntGaugeVec,
    images: IntGaugeVec,
    /// The pod failures (the pod watch's series book), which keeps their label sets and takes their slots of the
    /// failing-series budget through [`Metrics::take_failing_slot`].
    pub(crate) image_pull_failures: IntCounterVec,
    pub(crate) containers_waiting_on_pull: IntGaugeVec,
    pub(crate) container_pull_failing: IntGaugeVec,
    /// No labels but `node`; its one series exists only while the pod watch runs.
    kubernetes_watch_up: IntGaugeVec,
    /// Which label sets exist, so they can be removed and counted. Held briefly, never across `.await`.
    book: Mutex<Book>,
}

struct Book {
    budget: Budget,
    registries: BTreeMap<String, RegistrySeries>,
    runtime: RuntimeSeries,
}

/// The runtime's label sets now exported.
#[derive(Default)]
struct RuntimeSeries {
    info: Option<[String; 3]>,
    conditions: BTreeSet<String>,
    mountpoints: BTreeSet<String>,
    images: bool,
}

/// What the runtime said in one refresh (`Version`, `Status`, `ImageFsInfo`, `ListImages`).
#[derive(Clone, Debug, Default)]
pub struct RuntimeFacts {
    pub version: Option<crate::runtime::RuntimeVersion>,
    pub conditions: Vec<crate::runtime::Condition>,
    pub image_fs: Vec<crate::runtime::ImageFs>,
    pub images: Option<usize>,
}

#[derive(Default)]
struct RegistrySeries {
    endpoints: BTreeMap<String, EndpointSeries>,
    ratelimit: bool,
    runtime_check: bool,
}

struct EndpointSeries {
    role: Role,
    checks: BTreeSet<CheckKind>,
    failures: BTreeSet<(CheckKind, Reason)>,
    failure_reason: Option<Reason>,
    /// Series a full budget refused, each counted in `series_dropped_total` once.
    refused_failures: BTreeSet<(CheckKind, Reason)>,
    refused_reason: Option<Reason>,
    tls_info: Option<(String, bool)>,
    tls_not_after: bool,
    http_status: bool,
}

/// The `family` label values.
const FAMILIES: [(&str, bool); 2] = [("ipv4", false), ("ipv6", true)];

impl Metrics {
    /// Builds and registers every metric; `max_failing_series` caps the series labelled `reason`.
    pub fn new(
        node: &str,
        version: &str,
        revision: &str,
        max_failing_series: usize,
    ) -> Result<Self, prometheus::Error> {
        let labels = HashMap::from([("node".to_string(), node.to_string())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        let float = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, GaugeVec::new(Opts::new(name, help), labels)?)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let endpoint = ["registry", "endpoint", "role"];
        let check = ["registry", "endpoint", "role", "check"];
        let metrics = Metrics {
            registry_up: gauge(
                REGISTRY_UP,
                "1 when some endpoint of the registry's route is pullable.",
                &["registry"],
            )?,
            endpoint_up: gauge(
                ENDPOINT_UP,
                "1 when the chain to /v2/ of this endpoint passed.",
                &endpoint,
            )?,
            check_success: gauge(
                CHECK_SUCCESS,
                "1 when this check passed in the last run (0 when it failed or did not run).",
                &check,
            )?,
            check_duration: float(
                CHECK_DURATION,
                "Duration of this check in the last run.",
                &check,
            )?,
            check_failures: counter(
                CHECK_FAILURES,
                "Failed runs of this check, by reason.",
                &["registry", "endpoint", "role", "check", "reason"],
            )?,
            endpoint_failure_reason: gauge(
                ENDPOINT_FAILURE_REASON,
                "1 for the reason the endpoint is failing now; absent when it is up.",
                &["registry", "endpoint", "role", "reason"],
            )?,
            dns_addresses: gauge(
                DNS_ADDRESSES,
                "Addresses the endpoint's name resolved to in the last run.",
                &["registry", "endpoint", "family"],
            )?,
            tcp_reachable: gauge(
                TCP_REACHABLE,
                "Resolved addresses that accepted a TCP connection in the last run.",
                &["registry", "endpoint", "family"],
            )?,
            tls_not_after: float(
                TLS_NOT_AFTER,
                "Earliest not-after of the certificate chain the endpoint showed (unix seconds).",
                &["registry", "endpoint"],
            )?,
            tls_info: gauge(
                TLS_INFO,
                "The TLS version negotiated with the endpoint and whether the chain was verified.",
                &["registry", "endpoint", "version", "verified"],
            )?,
            http_status: gauge(
                HTTP_STATUS,
                "Status of the endpoint's last GET /v2/.",
                &["registry", "endpoint"],
            )?,
            series_dropped: counter(
                SERIES_DROPPED,
                "Series refused by a cap (--max-registries, --max-failing-series).",
                &["metric"],
            )?,
            ratelimit_limit: gauge(
                RATELIMIT_LIMIT,
                "The registry's pull quota (ratelimit-limit) at the last manifest check.",
                &["registry"],
            )?,
            ratelimit_remaining: gauge(
                RATELIMIT_REMAINING,
                "Pulls left in the window (ratelimit-remaining) at the last manifest check.",
                &["registry"],
            )?,
            ratelimit_window: gauge(
                RATELIMIT_WINDOW,
                "The quota's window (ratelimit-limit;w=) at the last manifest check.",
                &["registry"],
            )?,
            runtime_check_success: gauge(
                RUNTIME_CHECK_SUCCESS,
                "1 when the runtime pulled this registry's canary (by digest) in the last runtime check.",
                &["registry"],
            )?,
            runtime_check_duration: float(
                RUNTIME_CHECK_DURATION,
                "Duration of the last runtime check of this registry.",
                &["registry"],
            )?,
            runtime_up: gauge(RUNTIME_UP, "1 while the CRI socket answers.", &[])?,
            runtime_info: gauge(
                RUNTIME_INFO,
                "Always 1: the runtime on the CRI socket (Version).",
                &["runtime_name", "runtime_version", "runtime_api_version"],
            )?,
            runtime_condition: gauge(
                RUNTIME_CONDITION,
                "The runtime's Status conditions (RuntimeReady, NetworkReady), 0/1.",
                &["condition"],
            )?,
            image_fs_used_bytes: gauge(
                IMAGE_FS_USED_BYTES,
                "Bytes used on the runtime's image filesystem (ImageFsInfo).",
                &["mountpoint"],
            )?,
            image_fs_inodes_used: gauge(
                IMAGE_FS_INODES_USED,
                "Inodes used on the runtime's image filesystem (ImageFsInfo).",
                &["mountpoint"],
            )?,
            images: gauge(IMAGES, "Images the node holds (ListImages).", &[])?,
            image_pull_failures: counter(
                IMAGE_PULL_FAILURES,
                "Failed image pulls the kubelet reported for pods on this node, each attempt once.",
                &["registry", "reason"],
            )?,
            containers_waiting_on_pull: gauge(
                CONTAINERS_WAITING_ON_PULL,
                "Containers on this node waiting for an image the kubelet could not pull.",
                &["registry", "reason"],
            )?,
            container_pull_failing: gauge(
                CONTAINER_PULL_FAILING,
                "1 while this container waits for an image the kubelet could not pull (capped).",
                &["namespace", "pod", "container", "registry", "reason"],
            )?,
            kubernetes_watch_up: gauge(
                KUBERNETES_WATCH_UP,
                "1 while the watch on this node's pods is established.",
                &[],
            )?,
            book: Mutex::new(Book {
                budget: Budget {
                    max: max_failing_series,
                    ..Budget::default()
                },
                registries: BTreeMap::new(),
                runtime: RuntimeSeries::default(),
            }),
            registry: registry.clone(),
        };
        let build_info = gauge(
            BUILD_INFO,
            "Always 1: the running pullwatch's version and git revision.",
            &["version", "revision"],
        )?;
        build_info.with_label_values(&[version, revision]).set(1);
        for metric in CAPPED {
            metrics.series_dropped.with_label_values(&[metric]);
        }
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
        self.series_dropped
            .with_label_values(&[metric])
            .inc_by(count);
    }

    /// Sets `kubernetes_watch_up`.
    pub fn set_kubernetes_watch_up(&self, up: bool) {
        self.kubernetes_watch_up
            .with_label_values::<&str>(&[])
            .set(i64::from(up));
    }

    /// Takes one slot of the `--max-failing-series` budget of current-state series (gauges) for a
    /// series kept by another module; false (nothing taken) when the budget is spent.
    pub fn take_failing_slot(&self) -> bool {
        self.lock().budget.admit_current()
    }

    /// Gives back a slot taken with [`Metrics::take_failing_slot`].
    pub fn release_failing_slot(&self) {
        let mut book = self.lock();
        book.budget.current = book.budget.current.saturating_sub(1);
    }

    /// Takes one slot of the `--max-failing-series` budget of failure counters for a series kept
    /// by another module; false when it is spent. Counters keep their slot: their history stays.
    pub fn take_counter_slot(&self) -> bool {
        self.lock().budget.admit_history()
    }

    /// Records one refresh of the runtime's state; facts it did not give lose their series
    /// (`runtime_info` stays: it names the runtime that went away).
    pub fn record_runtime(&self, up: bool, facts: &RuntimeFacts) {
        let mut guard = self.lock();
        let series = &mut guard.runtime;
        self.runtime_up
            .with_label_values::<&str>(&[])
            .set(i64::from(up));
        if let Some(version) = &facts.version {
            let info = [
                version.runtime_name.clone(),
                version.runtime_version.clone(),
                version.runtime_api_version.clone(),
            ];
            if series.info.as_ref() != Some(&info) {
                if let Some(old) = series.info.take() {
                    let _ = self.runtime_info.remove_label_values(&old);
                }
                self.runtime_info.with_label_values(&info).set(1);
                series.info = Some(info);
            }
        }
        let conditions: BTreeMap<&str, bool> = facts
            .conditions
            .iter()
            .take(MAX_RUNTIME_LABELS)
            .map(|c| (c.kind.as_str(), c.status))
            .collect();
        series.conditions.retain(|kind| {
            let keep = conditions.contains_key(kind.as_str());
            if !keep {
                let _ = self.runtime_condition.remove_label_values(&[kind]);
            }
            keep
        });
        for (kind, status) in conditions {
            self.runtime_condition
                .with_label_values(&[kind])
                .set(i64::from(status));
            series.conditions.insert(kind.to_string());
        }
        let filesystems: BTreeMap<&str, &crate::runtime::ImageFs> = facts
            .image_fs
            .iter()
            .take(MAX_RUNTIME_LABELS)
            .map(|fs| (fs.mountpoint.as_str(), fs))
            .collect();
        series.mountpoints.retain(|mountpoint| {
            let keep = filesystems.contains_key(mountpoint.as_str());
            if !keep {
                let _ = self.image_fs_used_bytes.remove_label_values(&[mountpoint]);
                let _ = self.image_fs_inodes_used.remove_label_values(&[mountpoint]);
            }
            keep
        });
        for (mountpoint, fs) in filesystems {
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.image_fs_used_bytes
                .with_label_values(&[mountpoint])
                .set(clamp(fs.used_bytes));
            self.image_fs_inodes_used
                .with_label_values(&[mountpoint])
                .set(clamp(fs.inodes_used));
            series.mountpoints.insert(mountpoint.to_string());
        }
        match facts.images {
            Some(count) => {
                self.images
                    .with_label_values::<&str>(&[])
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
                series.images = true;
            }
            None if series.images => {
                let _ = self.images.remove_label_values::<&str>(&[]);
                series.images = false;
            }
            None => {}
        }
    }

    /// Sets the registry's rate-limit gauges from its last manifest check; `None` (no headers)
    /// removes them. Each value the registry did not send is left out.
    pub fn set_ratelimit(&self, registry: &str, limit: Option<&crate::check::manifest::RateLimit>) {
        let mut book = self.lock();
        let entry = book.registries.entry(registry.to_string()).or_default();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let values = [
            (
                &self.ratelimit_limit,
                limit.and_then(|l| l.limit).map(clamp),
            ),
            (
                &self.ratelimit_remaining,
                limit.and_then(|l| l.remaining).map(clamp),
            ),
            (
                &self.ratelimit_window,
                limit.and_then(|l| l.window).map(|w| clamp(w.as_secs())),
            ),
        ];
        for (gauge, value) in values {
            match value {
                Some(value) => gauge.with_label_values(&[registry]).set(value),
                None => {
                    let _ = gauge.remove_label_values(&[registry]);
                }
            }
        }
        entry.ratelimit = limit.is_some();
    }

    /// Records the registry's last runtime check (a CRI pull of its canary).
    pub fn set_runtime_check(&self, registry: &str, ok: bool, seconds: f64) {
        let mut book = self.lock();
        book.registries
            .entry(registry.to_string())
            .or_default()
            .runtime_check = true;
        self.runtime_check_success
            .with_label_values(&[registry])
            .set(i64::from(ok));
        self.runtime_check_duration
            .with_label_values(&[registry])
            .set(seconds);
    }

    /// Sets `registry_up`.
    pub fn set_registry_up(&self, registry: &str, up: bool) {
        let mut book = self.lock();
        book.registries.entry(registry.to_string()).or_default();
        self.registry_up
            .with_label_values(&[registry])
            .set(i64::from(up));
    }

    /// Records one endpoint's last connectivity run.
    pub fn record_endpoint(&self, registry: &str, endpoint: &Endpoint, probe: &Probe) {
        self.record_endpoint_with(registry, endpoint, probe, &[]);
    }

    /// Records one endpoint's last connectivity run (`probe`: up to `/v2/`, which decides
    /// `endpoint_up`) and the checks after it (`later`: auth, manifest), which may be older.
    pub fn record_endpoint_with(
        &self,
        registry: &str,
        endpoint: &Endpoint,
        probe: &Probe,
        later: &[crate::check::CheckResult],
    ) {
        let url = endpoint.url();
        let role = endpoint.role;
        let mut guard = self.lock();
        let book = &mut *guard;
        let series = book
            .registries
            .entry(registry.to_string())
            .or_default()
            .endpoints
            .entry(url.clone())
            .or_insert_with(|| EndpointSeries::new(role));
        if series.role != role {
            // The same URL changed role in the route: its old series go first.
            self.remove_endpoint(registry, &url, series, &mut book.budget);
            *series = EndpointSeries::new(role);
        }
        let labels = [registry, url.as_str(), role.as_str()];
        let up = !probe.checks.is_empty() && probe.checks.iter().all(|c| c.ok);
        self.endpoint_up
            .with_label_values(&labels)
            .set(i64::from(up));

        // Every check of the chain has a series, run or not (0), so none vanishes mid-incident.
        let checks: Vec<&crate::check::CheckResult> = probe.checks.iter().chain(later).collect();
        let chain = connectivity_chain(endpoint.scheme)
            .iter()
            .copied()
            .chain(series.checks.iter().copied())
            .chain(checks.iter().map(|c| c.check));
        for kind in chain.collect::<BTreeSet<_>>() {
            let ran = checks.iter().find(|c| c.check == kind);
            let check_labels = [registry, url.as_str(), role.as_str(), kind.as_str()];
            self.check_success
                .with_label_values(&check_labels)
                .set(ran.map_or(0, |c| i64::from(c.ok)));
            self.check_duration
                .with_label_values(&check_labels)
                .set(ran.map_or(0.0, |c| c.seconds));
            series.checks.insert(kind);
        }

        // The current reason first: when the budget is short, it matters more than the history.
        let failure = checks.iter().find(|c| !c.ok);
        let reason = failure.map(|f| f.reason.unwrap_or(Reason::Unknown));
        if series.failure_reason != reason {
            if let Some(old) = series.failure_reason.take() {
                let _ = self.endpoint_failure_reason.remove_label_values(&[
                    registry,
                    url.as_str(),
                    role.as_str(),
                    old.as_str(),
                ]);
                book.budget.current -= 1;
            }
            if let Some(new) = reason {
                if book.budget.admit_current() {
                    self.endpoint_failure_reason
                        .with_label_values(&[registry, url.as_str(), role.as_str(), new.as_str()])
                        .set(1);
                    series.failure_reason = Some(new);
                } else if series.refused_reason != Some(new) {
                    self.series_dropped(ENDPOINT_FAILURE_REASON, 1);
                }
            }
        }
        series.refused_reason = reason.filter(|_| series.failure_reason.is_none());

        if let Some(failed) = failure {
            let reason = failed.reason.unwrap_or(Reason::Unknown);
            let key = (failed.check, reason);
            if series.failures.contains(&key) || book.budget.admit_history() {
                series.failures.insert(key);
                self.check_failures
                    .with_label_values(&[
                        registry,
                        url.as_str(),
                        role.as_str(),
                        failed.check.as_str(),
                        reason.as_str(),
                    ])
                    .inc();
            } else if series.refused_failures.insert(key) {
                self.series_dropped(CHECK_FAILURES, 1);
            }
        }
        for (family, ipv6) in FAMILIES {
            let family_labels = [registry, url.as_str(), family];
            let resolved = probe
                .dns
                .as_ref()
                .map_or(0, |dns| if ipv6 { dns.v6.len() } else { dns.v4.len() });
            let reachable = probe.tcp.as_ref().map_or(0, |tcp| tcp.reachable_in(ipv6));
            self.dns_addresses
                .with_label_values(&family_labels)
                .set(resolved as i64);
            self.tcp_reachable
                .with_label_values(&family_labels)
                .set(reachable as i64);
        }

        let host_labels = [registry, url.as_str()];
        let tls_info = probe
            .tls
            .as_ref()
            .map(|tls| (tls.version.clone(), tls.verified));
        if series.tls_info != tls_info {
            if let Some((version, verified)) = series.tls_info.take() {
                let _ = self.tls_info.remove_label_values(&[
                    registry,
                    url.as_str(),
                    version.as_str(),
                    bool_label(verified),
                ]);
            }
            if let Some((version, verified)) = &tls_info {
                self.tls_info
                    .with_label_values(&[
                        registry,
                        url.as_str(),
                        version.as_str(),
                        bool_label(*verified),
                    ])
                    .set(1);
            }
            series.tls_info = tls_info;
        }
        match probe.tls.as_ref().and_then(|tls| tls.earliest_not_after()) {
            Some(not_after) => {
                self.tls_not_after
                    .with_label_values(&host_labels)
                    .set(not_after as f64);
                series.tls_not_after = true;
            }
            None if series.tls_not_after => {
                let _ = self.tls_not_after.remove_label_values(&host_labels);
                series.tls_not_after = false;
            }
            None => {}
        }
        match probe.http_status {
            Some(status) => {
                self.http_status
                    .with_label_values(&host_labels)
                    .set(i64::from(status));
                series.http_status = true;
            }
            None if series.http_status => {
                let _ = self.http_status.remove_label_values(&host_labels);
                series.http_status = false;
            }
            None => {}
        }
    }

    /// Removes every series of a registry that is no longer watched.
    pub fn forget_registry(&self, registry: &str) {
        let mut guard = self.lock();
        let book = &mut *guard;
        let Some(gone) = book.registries.remove(registry) else {
            return;
        };
        let _ = self.registry_up.remove_label_values(&[registry]);
        if gone.ratelimit {
            let _ = self.ratelimit_limit.remove_label_values(&[registry]);
            let _ = self.ratelimit_remaining.remove_label_values(&[registry]);
            let _ = self.ratelimit_window.remove_label_values(&[registry]);
        }
        if gone.runtime_check {
            let _ = self.runtime_check_success.remove_label_values(&[registry]);
            let _ = self.runtime_check_duration.remove_label_values(&[registry]);
        }
        for (url, series) in &gone.endpoints {
            self.remove_endpoint(registry, url, series, &mut book.budget);
        }
    }

    /// Removes the series of a registry's endpoints that left its route.
    pub fn retain_endpoints(&self, registry: &str, urls: &[String]) {
        let mut guard = self.lock();
        let book = &mut *guard;
        let Some(series) = book.registries.get_mut(registry) else {
            return;
        };
        let gone: Vec<String> = series
            .endpoints
            .keys()
            .filter(|url| !urls.contains(url))
            .cloned()
            .collect();
        for url in gone {
            if let Some(endpoint) = series.endpoints.remove(&url) {
                self.remove_endpoint(registry, &url, &endpoint, &mut book.budget);
            }
        }
    }

    fn remove_endpoint(
        &self,
        registry: &str,
        url: &str,
        series: &EndpointSeries,
        budget: &mut Budget,
    ) {
        let role = series.role.as_str();
        let _ = self.endpoint_up.remove_label_values(&[registry, url, role]);
        for kind in &series.checks {
            let labels = [registry, url, role, kind.as_str()];
            let _ = self.check_success.remove_label_values(&labels);
            let _ = self.check_duration.remove_label_values(&labels);
        }
        for (kind, reason) in &series.failures {
            let _ = self.check_failures.remove_label_values(&[
                registry,
                url,
                role,
                kind.as_str(),
                reason.as_str(),
            ]);
            budget.history -= 1;
        }
        if let Some(reason) = series.failure_reason {
            let _ = self.endpoint_failure_reason.remove_label_values(&[
                registry,
                url,
                role,
                reason.as_str(),
            ]);
            budget.current -= 1;
        }
        for (family, _) in FAMILIES {
            let _ = self
                .dns_addresses
                .remove_label_values(&[registry, url, family]);
            let _ = self
                .tcp_reachable
                .remove_label_values(&[registry, url, family]);
        }
        if let Some((version, verified)) = &series.tls_info {
            let _ = self.tls_info.remove_label_values(&[
                registry,
                url,
                version.as_str(),
                bool_label(*verified),
            ]);
        }
        let _ = self.tls_not_after.remove_label_values(&[registry, url]);
        let _ = self.http_status.remove_label_values(&[registry, url]);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding the lock leaves the book consistent enough to keep serving.
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl EndpointSeries {
    fn new(role: Role) -> Self {
        EndpointSeries {
            role,
            checks: BTreeSet::new(),
            failures: BTreeSet::new(),
            failure_reason: None,
            refused_failures: BTreeSet::new(),
            refused_reason: None,
            tls_info: None,
            tls_not_after: false,
            http_status: false,
        }
    }
}

/// Registers `metric` in `registry` and hands it back.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// `--max-failing-series`, twice over: the series that say what fails now (gauges with a
/// `reason`) and the failure counters, which keep their history, each have `max` slots, so a
/// long history never crowds out the present.
#[derive(Default)]
struct Budget {
    max: usize,
    current: usize,
    history: usize,
}

impl Budget {
    /// Takes a slot for a current-state series, if one is free.
    fn admit_current(&mut self) -> bool {
        admit(&mut self.current, self.max)
    }

    /// Takes a slot for a counter series, if one is free.
    fn admit_history(&mut self) -> bool {
        admit(&mut self.history, self.max)
    }
}

fn admit(used: &mut usize, max: usize) -> bool {
    if *used < max {
        *used += 1;
        true
    } else {
        false
    }
}

fn bool_label(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// The connectivity checks an endpoint gets every `--interval`.
pub fn connectivity_chain(scheme: Scheme) -> &'static [CheckKind] {
    match scheme {
        Scheme::Https => &[
            CheckKind::Dns,
            CheckKind::Tcp,
            CheckKind::Tls,
            CheckKind::Http,
        ],
        Scheme::Http => &[CheckKind::Dns, CheckKind::Tcp, CheckKind::Http],
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use super::*;
    use crate::check::CheckResult;
    use crate::check::dns::DnsOutcome;
    use crate::check::http::HttpOutcome;
    use crate::check::tcp::{Attempt, TcpOutcome};
    use crate::check::tls::{CertSummary, TlsOutcome};
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
            }),
            tls: Some(TlsOutcome {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
                alpn: None,
                verified: true,
                chain: vec![CertSummary {
                    subject: "CN=r".into(),
                    issuer: "CN=ca".into(),
                    sans: vec![],
                    not_before: 0,
                    not_after: 2_000_000_000,
                }],
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
        let metrics = metrics(10);
        metrics.set_registry_up("r.example", true);
        metrics.record_endpoint("r.example", &endpoint("r.example"), &passing());
        metrics.record_endpoint(
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

    /// DESIGN.md's Metrics table, whole: every name with its type and labels, and nothing else.
    #[test]
    fn every_metric_of_the_design_and_no_other() {
        use crate::check::manifest::RateLimit;
        use crate::runtime::{Condition, ImageFs, RuntimeVersion};
        let metrics = metrics(10);
        metrics.set_registry_up("r.example", false);
        metrics.record_endpoint("r.example", &endpoint("r.example"), &passing());
        metrics.record_endpoint(
            "r.example",
            &endpoint("m.example"),
            &failing(Reason::TcpRefused),
        );
        metrics.set_ratelimit(
            "r.example",
            Some(&RateLimit {
                limit: Some(100),
                remaining: Some(76),
                window: Some(Duration::from_secs(21600)),
                source: None,
            }),
        );
        metrics.set_runtime_check("r.example", true, 0.2);
        metrics.record_runtime(
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
            .image_pull_failures
            .with_label_values(&["r.example", "manifest_unknown"])
            .inc();
        metrics
            .containers_waiting_on_pull
            .with_label_values(&["r.example", "manifest_unknown"])
            .set(1);
        metrics
            .container_pull_failing
            .with_label_values(&["ns", "pod", "app", "r.example", "manifest_unknown"])
            .set(1);
        metrics.set_kubernetes_watch_up(true);

        let want: &[(&str, &str, &[&str])] = &[
            ("pullwatch_registry_up", "gauge", &["registry"]),
            (
                "pullwatch_endpoint_up",
                "gauge",
                &["registry", "endpoint", "role"],
            ),
            (
                "pullwatch_check_success",
                "gauge",
                &["registry", "endpoint", "role", "check"],
            ),
            (
                "pullwatch_check_duration_seconds",
                "gauge",
                &["registry", "endpoint", "role", "check"],
            ),
            (
                "pullwatch_check_failures_total",
                "counter",
                &["registry", "endpoint", "role", "check", "reason"],
            ),
            (
                "pullwatch_endpoint_failure_reason",
                "gauge",
                &["registry", "endpoint", "role", "reason"],
            ),
            (
                "pullwatch_dns_addresses",
                "gauge",
                &["registry", "endpoint", "family"],
            ),
            (
                "pullwatch_tcp_addresses_reachable",
                "gauge",
                &["registry", "endpoint", "family"],
            ),
            (
                "pullwatch_tls_cert_not_after_timestamp_seconds",
                "gauge",
                &["registry", "endpoint"],
            ),
            (
                "pullwatch_tls_info",
                "gauge",
                &["registry", "endpoint", "version", "verified"],
            ),
            (
                "pullwatch_http_status_code",
                "gauge",
                &["registry", "endpoint"],
            ),
            ("pullwatch_registry_ratelimit_limit", "gauge", &["registry"]),
            (
                "pullwatch_registry_ratelimit_remaining",
                "gauge",
                &["registry"],
            ),
            (
                "pullwatch_registry_ratelimit_window_seconds",
                "gauge",
                &["registry"],
            ),
            ("pullwatch_runtime_check_success", "gauge", &["registry"]),
            (
                "pullwatch_runtime_check_duration_seconds",
                "gauge",
                &["registry"],
            ),
            ("pullwatch_runtime_up", "gauge", &[]),
            (
                "pullwatch_runtime_info",
                "gauge",
                &["runtime_name", "runtime_version", "runtime_api_version"],
            ),
            ("pullwatch_runtime_condition", "gauge", &["condition"]),
            ("pullwatch_image_fs_used_bytes", "gauge", &["mountpoint"]),
            ("pullwatch_image_fs_inodes_used", "gauge", &["mountpoint"]),
            ("pullwatch_images", "gauge", &[]),
            (
                "pullwatch_image_pull_failures_total",
                "counter",
                &["registry", "reason"],
            ),
            (
                "pullwatch_containers_waiting_on_pull",
                "gauge",
                &["registry", "reason"],
            ),
            (
                "pullwatch_container_pull_failing",
                "gauge",
                &["namespace", "pod", "container", "registry", "reason"],
            ),
            ("pullwatch_kubernetes_watch_up", "gauge", &[]),
            ("pullwatch_series_dropped_total", "counter", &["metric"]),
            ("pullwatch_build_info", "gauge", &["version", "revision"]),
        ];
        let mut want: Vec<(String, String, Vec<String>)> = want
            .iter()
            .map(|(name, kind, labels)| {
                let mut labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
                labels.push("node".into());
                labels.sort();
                (name.to_string(), kind.to_string(), labels)
            })
            .collect();
        want.sort();
        let mut got: Vec<(String, String, Vec<String>)> = metrics
            .registry
            .gather()
            .iter()
            .filter(|family| family.name().starts_with("pullwatch_"))
            .map(|family| {
                let mut labels: Vec<String> = family.get_metric()[0]
                    .get_label()
                    .iter()
                    .map(|l| l.name().to_string())
                    .collect();
                labels.sort();
                let kind = format!("{:?}", family.get_field_type()).to_lowercase();
                (family.name().to_string(), kind, labels)
            })
            .collect();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn a_reason_change_replaces_the_series_and_recovery_removes_it() {
        let metrics = metrics(10);
        let ep = endpoint("r.example");
        metrics.record_endpoint("r", &ep, &failing(Reason::DnsTimeout));
        metrics.record_endpoint("r", &ep, &failing(Reason::DnsServfail));
        let reason = samples(&metrics, ENDPOINT_FAILURE_REASON);
        assert_eq!(reason.len(), 1);
        assert!(reason[0].contains("dns_servfail"));
        metrics.record_endpoint("r", &ep, &passing());
        assert!(samples(&metrics, ENDPOINT_FAILURE_REASON).is_empty());
        // Counters stay.
        assert_eq!(samples(&metrics, CHECK_FAILURES).len(), 2);
        // A failed run leaves no stale TLS or HTTP facts.
        metrics.record_endpoint("r", &ep, &failing(Reason::DnsTimeout));
        assert!(samples(&metrics, TLS_INFO).is_empty());
        assert!(samples(&metrics, TLS_NOT_AFTER).is_empty());
        assert!(samples(&metrics, HTTP_STATUS).is_empty());
    }

    #[test]
    fn forgetting_a_registry_removes_all_its_series() {
        let metrics = metrics(10);
        metrics.set_registry_up("gone", false);
        metrics.record_endpoint(
            "gone",
            &endpoint("gone.example"),
            &failing(Reason::TcpRefused),
        );
        metrics.set_registry_up("kept", true);
        metrics.record_endpoint("kept", &endpoint("kept.example"), &passing());
        metrics.forget_registry("gone");
        let text = metrics.encode().unwrap();
        assert!(!text.contains("gone"), "{text}");
        assert!(text.contains("kept.example"));
        // Its failing series gave their budget back.
        let book = metrics.lock();
        assert_eq!((book.budget.current, book.budget.history), (0, 0));
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
            metrics.record_endpoint(&format!("r{i}"), &ep, &failing(Reason::DnsNxdomain));
        }
        // A gauge and a counter per failing endpoint, each kind 3 slots: r3 gets neither.
        assert_eq!(samples(&metrics, CHECK_FAILURES).len(), 3);
        assert_eq!(samples(&metrics, ENDPOINT_FAILURE_REASON).len(), 3);
        assert_eq!(count_now(&metrics, CHECK_FAILURES), 1);
        assert_eq!(count_now(&metrics, ENDPOINT_FAILURE_REASON), 1);
        assert_eq!(count_now(&metrics, REGISTRY_UP), 0);
        // Each refused series is counted once, not once per round.
        metrics.record_endpoint("r3", &endpoint("r3.example"), &failing(Reason::DnsNxdomain));
        assert_eq!(count_now(&metrics, CHECK_FAILURES), 1);
        assert_eq!(count_now(&metrics, ENDPOINT_FAILURE_REASON), 1);
        // A long history does not crowd out the present: with every counter slot taken, a new
        // failure of r0's still gets its gauge once r0's old one is gone.
        metrics.record_endpoint("r0", &endpoint("r0.example"), &failing(Reason::TcpRefused));
        assert!(
            samples(&metrics, ENDPOINT_FAILURE_REASON)
                .iter()
                .any(|l| l.contains("r0.example") && l.contains("tcp_refused"))
        );
        assert_eq!(count_now(&metrics, CHECK_FAILURES), 2);
        // A recovery frees the gauge's slot for another endpoint.
        metrics.record_endpoint("r0", &endpoint("r0.example"), &passing());
        metrics.record_endpoint("r3", &endpoint("r3.example"), &failing(Reason::DnsNxdomain));
        assert!(
            samples(&metrics, ENDPOINT_FAILURE_REASON)
                .iter()
                .any(|l| l.contains("r3.example"))
        );
    }
}
