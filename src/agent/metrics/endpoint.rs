//! Each endpoint's families (up, checks, failures, and through the host part its addresses, TLS and
//! HTTP) with the label sets one endpoint has, so a changed or vanished endpoint's series go. Lean
//! unless asked: a healthy endpoint's per-check detail exists only with `--metrics-detail`.

use std::collections::BTreeSet;
use std::sync::Arc;

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Registry};

use super::budget::Budget;
use super::family::{Family, Labels};
use super::host::{HostLabels, HostMetrics, TlsSeries};
use super::{CHECK_DURATION, CHECK_FAILURES, CHECK_SUCCESS, ENDPOINT_FAILURE_REASON, ENDPOINT_UP};
use crate::check::{CheckKind, CheckResult};
use crate::diagnose::Probe;
use crate::reason::Reason;
use crate::route::{Role, Scheme};

/// `registry, endpoint, role`: `endpoint_up`, and the start of the check families' labels.
#[derive(Clone, Copy)]
pub(super) struct EndpointLabels<'a> {
    host: HostLabels<'a>,
    role: Role,
}

/// `registry, endpoint, role, check`.
struct CheckLabels<'a> {
    endpoint: EndpointLabels<'a>,
    check: CheckKind,
}

/// `registry, endpoint, role, check, reason`: `check_failures_total`.
struct FailureLabels<'a> {
    endpoint: EndpointLabels<'a>,
    check: CheckKind,
    reason: Reason,
}

/// `registry, endpoint, role, reason`: `endpoint_failure_reason`.
struct ReasonLabels<'a> {
    endpoint: EndpointLabels<'a>,
    reason: Reason,
}

impl<'a> EndpointLabels<'a> {
    pub(super) fn new(registry: &'a str, endpoint: &'a str, role: Role) -> Self {
        EndpointLabels {
            host: HostLabels::new(registry, endpoint),
            role,
        }
    }
}

impl<'a> Labels for EndpointLabels<'a> {
    type Static = EndpointLabels<'static>;
    const NAMES: &'static [&'static str] = &["registry", "endpoint", "role"];
    fn values(&self) -> Vec<&str> {
        let mut values = self.host.values();
        values.push(self.role.as_str());
        values
    }
}

impl<'a> Labels for CheckLabels<'a> {
    type Static = CheckLabels<'static>;
    const NAMES: &'static [&'static str] = &["registry", "endpoint", "role", "check"];
    fn values(&self) -> Vec<&str> {
        let mut values = self.endpoint.values();
        values.push(self.check.as_str());
        values
    }
}

impl<'a> Labels for FailureLabels<'a> {
    type Static = FailureLabels<'static>;
    const NAMES: &'static [&'static str] = &["registry", "endpoint", "role", "check", "reason"];
    fn values(&self) -> Vec<&str> {
        let mut values = self.endpoint.values();
        values.extend([self.check.as_str(), self.reason.as_str()]);
        values
    }
}

impl<'a> Labels for ReasonLabels<'a> {
    type Static = ReasonLabels<'static>;
    const NAMES: &'static [&'static str] = &["registry", "endpoint", "role", "reason"];
    fn values(&self) -> Vec<&str> {
        let mut values = self.endpoint.values();
        values.push(self.reason.as_str());
        values
    }
}

/// The label sets one endpoint has now, and the failure series a full budget refused.
pub(super) struct EndpointSeries {
    role: Role,
    checks: BTreeSet<CheckKind>,
    failures: BTreeSet<(CheckKind, Reason)>,
    failure_reason: Option<Reason>,
    /// Series a full budget refused, each counted in `series_dropped_total` once.
    refused_failures: BTreeSet<(CheckKind, Reason)>,
    refused_reason: Option<Reason>,
    tls_info: TlsSeries,
    /// Whether the host's detail series (addresses, HTTP status) exist.
    host_detail: bool,
}

impl EndpointSeries {
    pub(super) fn new(role: Role) -> Self {
        EndpointSeries {
            role,
            checks: BTreeSet::new(),
            failures: BTreeSet::new(),
            failure_reason: None,
            refused_failures: BTreeSet::new(),
            refused_reason: None,
            tls_info: None,
            host_detail: false,
        }
    }
}

/// The families about one endpoint of a registry's route.
pub(super) struct EndpointMetrics {
    up: Family<IntGaugeVec, EndpointLabels<'static>>,
    check_success: Family<IntGaugeVec, CheckLabels<'static>>,
    check_duration: Family<GaugeVec, CheckLabels<'static>>,
    check_failures: Family<IntCounterVec, FailureLabels<'static>>,
    failure_reason: Family<IntGaugeVec, ReasonLabels<'static>>,
    host: HostMetrics,
    budget: Arc<Budget>,
    /// `--metrics-detail`: the per-check series of healthy endpoints too.
    detail: bool,
}

impl EndpointMetrics {
    pub(super) fn new(
        registry: &Registry,
        budget: Arc<Budget>,
        detail: bool,
    ) -> prometheus::Result<Self> {
        Ok(EndpointMetrics {
            up: Family::gauge(
                registry,
                ENDPOINT_UP,
                "1 when the chain to /v2/ of this endpoint passed.",
            )?,
            check_success: Family::gauge(
                registry,
                CHECK_SUCCESS,
                "1 when this check passed in the last run (0 when it failed or did not run).",
            )?,
            check_duration: Family::float(
                registry,
                CHECK_DURATION,
                "Duration of this check in the last run.",
            )?,
            check_failures: Family::counter(
                registry,
                CHECK_FAILURES,
                "Failed runs of this check, by reason.",
            )?,
            failure_reason: Family::gauge(
                registry,
                ENDPOINT_FAILURE_REASON,
                "1 for the reason the endpoint is failing now; absent when it is up.",
            )?,
            host: HostMetrics::new(registry)?,
            budget,
            detail,
        })
    }

    /// Records one endpoint's last connectivity run (`probe`: up to `/v2/`, which decides
    /// `endpoint_up`) and the checks after it (`later`: auth, manifest), which may be older.
    /// The per-check series exist while a check fails (all of the endpoint's: what passed before
    /// the failure helps tell where it breaks) or with `--metrics-detail`; a recovery removes them.
    pub(super) fn record(
        &self,
        labels: EndpointLabels<'_>,
        scheme: Scheme,
        probe: &Probe,
        later: &[CheckResult],
        series: &mut EndpointSeries,
    ) {
        if series.role != labels.role {
            // The same URL changed role in the route: its old series go first.
            self.remove(labels.host.registry(), labels.host.endpoint(), series);
            *series = EndpointSeries::new(labels.role);
        }
        let up = !probe.checks.is_empty() && probe.checks.iter().all(|c| c.ok);
        self.up.with(&labels).set(i64::from(up));
        let checks: Vec<&CheckResult> = probe.checks.iter().chain(later).collect();
        let detail = self.detail || !up || checks.iter().any(|c| !c.ok);
        if detail {
            self.record_checks(labels, scheme, &checks, series);
        } else {
            self.remove_checks(labels, series);
        }
        self.record_failure(labels, &checks, series);
        self.host.record(labels.host, probe, &mut series.tls_info);
        if detail {
            self.host.record_detail(labels.host, probe);
        } else if series.host_detail {
            self.host.remove_detail(labels.host);
        }
        series.host_detail = detail;
    }

    /// Removes the per-check gauges (not the failure counters: their history stays).
    fn remove_checks(&self, endpoint: EndpointLabels<'_>, series: &mut EndpointSeries) {
        for check in std::mem::take(&mut series.checks) {
            let labels = CheckLabels { endpoint, check };
            self.check_success.remove(&labels);
            self.check_duration.remove(&labels);
        }
    }

    /// Every check of the chain has a series, run or not (0), so none vanishes mid-incident.
    fn record_checks(
        &self,
        endpoint: EndpointLabels<'_>,
        scheme: Scheme,
        checks: &[&CheckResult],
        series: &mut EndpointSeries,
    ) {
        let chain = connectivity_chain(scheme)
            .iter()
            .copied()
            .chain(series.checks.iter().copied())
            .chain(checks.iter().map(|c| c.check));
        for check in chain.collect::<BTreeSet<_>>() {
            let ran = checks.iter().find(|c| c.check == check);
            let labels = CheckLabels { endpoint, check };
            self.check_success
                .with(&labels)
                .set(ran.map_or(0, |c| i64::from(c.ok)));
            self.check_duration
                .with(&labels)
                .set(ran.map_or(0.0, |c| c.seconds));
            series.checks.insert(check);
        }
    }

    /// The failure's reason gauge and counter, each within the budget. The current reason goes
    /// first: when the budget is short, it matters more than the history.
    fn record_failure(
        &self,
        endpoint: EndpointLabels<'_>,
        checks: &[&CheckResult],
        series: &mut EndpointSeries,
    ) {
        let failure = checks.iter().find(|c| !c.ok);
        let reason = failure.map(|f| f.reason.unwrap_or(Reason::Unknown));
        if series.failure_reason != reason {
            if let Some(old) = series.failure_reason.take() {
                self.failure_reason.remove(&ReasonLabels {
                    endpoint,
                    reason: old,
                });
                self.budget.release_current();
            }
            if let Some(new) = reason {
                if self.budget.take_current() {
                    self.failure_reason
                        .with(&ReasonLabels {
                            endpoint,
                            reason: new,
                        })
                        .set(1);
                    series.failure_reason = Some(new);
                } else if series.refused_reason != Some(new) {
                    self.budget.dropped(ENDPOINT_FAILURE_REASON, 1);
                }
            }
        }
        series.refused_reason = reason.filter(|_| series.failure_reason.is_none());

        if let Some(failed) = failure {
            let reason = failed.reason.unwrap_or(Reason::Unknown);
            let key = (failed.check, reason);
            if series.failures.contains(&key) || self.budget.take_history() {
                series.failures.insert(key);
                self.check_failures
                    .with(&FailureLabels {
                        endpoint,
                        check: failed.check,
                        reason,
                    })
                    .inc();
            } else if series.refused_failures.insert(key) {
                self.budget.dropped(CHECK_FAILURES, 1);
            }
        }
    }

    /// Removes every series of one endpoint and gives back its slots of the budget.
    pub(super) fn remove(&self, registry: &str, url: &str, series: &EndpointSeries) {
        let endpoint = EndpointLabels::new(registry, url, series.role);
        self.up.remove(&endpoint);
        for &check in &series.checks {
            let labels = CheckLabels { endpoint, check };
            self.check_success.remove(&labels);
            self.check_duration.remove(&labels);
        }
        for &(check, reason) in &series.failures {
            self.check_failures.remove(&FailureLabels {
                endpoint,
                check,
                reason,
            });
            self.budget.release_history();
        }
        if let Some(reason) = series.failure_reason {
            self.failure_reason
                .remove(&ReasonLabels { endpoint, reason });
            self.budget.release_current();
        }
        self.host.remove(endpoint.host, &series.tls_info);
    }
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
