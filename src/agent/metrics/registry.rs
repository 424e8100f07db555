//! The registries' families (`registry_up`, rate limits, runtime checks, and through the endpoint
//! part each endpoint's) with the book of which exist, so a vanished registry's series go.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::{GaugeVec, IntGaugeVec, Registry};

use super::budget::Budget;
use super::endpoint::{EndpointLabels, EndpointMetrics, EndpointSeries};
use super::family::{Family, Labels};
use super::{
    RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_WINDOW, REGISTRY_CREDENTIALS, REGISTRY_UP,
    RUNTIME_CHECK_DURATION, RUNTIME_CHECK_SUCCESS,
};
use crate::check::CheckResult;
use crate::check::manifest::RateLimit;
use crate::diagnose::Probe;
use crate::route::Endpoint;

/// `registry`: the families about a whole registry.
struct RegistryLabels<'a> {
    registry: &'a str,
}

impl<'a> Labels for RegistryLabels<'a> {
    type Static = RegistryLabels<'static>;
    const NAMES: &'static [&'static str] = &["registry"];
    fn values(&self) -> Vec<&str> {
        vec![self.registry]
    }
}

/// `registry`, `source`: where the credentials of the last manifest check came from.
struct CredentialLabels<'a> {
    registry: &'a str,
    source: &'a str,
}

impl<'a> Labels for CredentialLabels<'a> {
    type Static = CredentialLabels<'static>;
    const NAMES: &'static [&'static str] = &["registry", "source"];
    fn values(&self) -> Vec<&str> {
        vec![self.registry, self.source]
    }
}

/// The label sets one registry has now.
#[derive(Default)]
struct RegistrySeries {
    endpoints: BTreeMap<String, EndpointSeries>,
    ratelimit: bool,
    runtime_check: bool,
    /// The `source` of `registry_credentials` now exported.
    credentials: Option<&'static str>,
}

/// Every family about the watched registries and their endpoints.
pub struct RegistryMetrics {
    up: Family<IntGaugeVec, RegistryLabels<'static>>,
    ratelimit_limit: Family<IntGaugeVec, RegistryLabels<'static>>,
    ratelimit_remaining: Family<IntGaugeVec, RegistryLabels<'static>>,
    ratelimit_window: Family<IntGaugeVec, RegistryLabels<'static>>,
    runtime_check_success: Family<IntGaugeVec, RegistryLabels<'static>>,
    runtime_check_duration: Family<GaugeVec, RegistryLabels<'static>>,
    credentials: Family<IntGaugeVec, CredentialLabels<'static>>,
    endpoints: EndpointMetrics,
    /// Which label sets exist, so they can be removed. Held briefly, never across `.await`.
    book: Mutex<BTreeMap<String, RegistrySeries>>,
}

impl RegistryMetrics {
    /// `detail`: `--metrics-detail` (the endpoints' per-check series also while they pass).
    pub(super) fn new(
        registry: &Registry,
        budget: Arc<Budget>,
        detail: bool,
    ) -> prometheus::Result<Self> {
        Ok(RegistryMetrics {
            up: Family::gauge(
                registry,
                REGISTRY_UP,
                "1 when some endpoint of the registry's route is pullable.",
            )?,
            ratelimit_limit: Family::gauge(
                registry,
                RATELIMIT_LIMIT,
                "The registry's pull quota (ratelimit-limit) at the last manifest check.",
            )?,
            ratelimit_remaining: Family::gauge(
                registry,
                RATELIMIT_REMAINING,
                "Pulls left in the window (ratelimit-remaining) at the last manifest check.",
            )?,
            ratelimit_window: Family::gauge(
                registry,
                RATELIMIT_WINDOW,
                "The quota's window (ratelimit-limit;w=) at the last manifest check.",
            )?,
            runtime_check_success: Family::gauge(
                registry,
                RUNTIME_CHECK_SUCCESS,
                "1 when the runtime pulled this registry's canary (by digest) in the last runtime check.",
            )?,
            runtime_check_duration: Family::float(
                registry,
                RUNTIME_CHECK_DURATION,
                "Duration of the last runtime check of this registry.",
            )?,
            credentials: Family::gauge(
                registry,
                REGISTRY_CREDENTIALS,
                "1 for the credential source the last manifest check used: pull_secret, credential_provider, docker_config or none.",
            )?,
            endpoints: EndpointMetrics::new(registry, budget, detail)?,
            book: Mutex::new(BTreeMap::new()),
        })
    }

    /// Sets `registry_up`.
    pub fn set_registry_up(&self, registry: &str, up: bool) {
        let mut book = super::lock(&self.book);
        book.entry(registry.to_string()).or_default();
        self.up
            .with(&RegistryLabels { registry })
            .set(i64::from(up));
    }

    /// Sets the registry's rate-limit gauges from its last manifest check; `None` (no headers)
    /// removes them. Each value the registry did not send is left out.
    pub fn set_ratelimit(&self, registry: &str, limit: Option<&RateLimit>) {
        let mut book = super::lock(&self.book);
        let labels = RegistryLabels { registry };
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.ratelimit_limit
            .set_or_remove(&labels, limit.and_then(|l| l.limit).map(clamp));
        self.ratelimit_remaining
            .set_or_remove(&labels, limit.and_then(|l| l.remaining).map(clamp));
        self.ratelimit_window.set_or_remove(
            &labels,
            limit.and_then(|l| l.window).map(|w| clamp(w.as_secs())),
        );
        book.entry(registry.to_string()).or_default().ratelimit = limit.is_some();
    }

    /// Records the registry's last runtime check (a CRI pull of its canary).
    pub fn set_runtime_check(&self, registry: &str, ok: bool, seconds: f64) {
        let mut book = super::lock(&self.book);
        book.entry(registry.to_string()).or_default().runtime_check = true;
        let labels = RegistryLabels { registry };
        self.runtime_check_success.with(&labels).set(i64::from(ok));
        self.runtime_check_duration.with(&labels).set(seconds);
    }

    /// Sets which credential source the registry's last manifest check used (one series per
    /// registry: the previous source's goes).
    pub fn set_credentials(&self, registry: &str, source: &'static str) {
        let mut book = super::lock(&self.book);
        let series = book.entry(registry.to_string()).or_default();
        if let Some(before) = series.credentials.replace(source)
            && before != source
        {
            self.credentials.remove(&CredentialLabels {
                registry,
                source: before,
            });
        }
        self.credentials
            .with(&CredentialLabels { registry, source })
            .set(1);
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
        later: &[CheckResult],
    ) {
        let url = endpoint.url();
        let mut book = super::lock(&self.book);
        let series = book
            .entry(registry.to_string())
            .or_default()
            .endpoints
            .entry(url.clone())
            .or_insert_with(|| EndpointSeries::new(endpoint.role));
        let labels = EndpointLabels::new(registry, &url, endpoint.role);
        self.endpoints
            .record(labels, endpoint.scheme, probe, later, series);
    }

    /// Removes every series of a registry that is no longer watched.
    pub fn forget_registry(&self, registry: &str) {
        let mut book = super::lock(&self.book);
        let Some(gone) = book.remove(registry) else {
            return;
        };
        let labels = RegistryLabels { registry };
        self.up.remove(&labels);
        if gone.ratelimit {
            self.ratelimit_limit.remove(&labels);
            self.ratelimit_remaining.remove(&labels);
            self.ratelimit_window.remove(&labels);
        }
        if gone.runtime_check {
            self.runtime_check_success.remove(&labels);
            self.runtime_check_duration.remove(&labels);
        }
        if let Some(source) = gone.credentials {
            self.credentials
                .remove(&CredentialLabels { registry, source });
        }
        for (url, series) in &gone.endpoints {
            self.endpoints.remove(registry, url, series);
        }
    }

    /// Removes the series of a registry's endpoints that left its route.
    pub fn retain_endpoints(&self, registry: &str, urls: &[String]) {
        let mut book = super::lock(&self.book);
        let Some(series) = book.get_mut(registry) else {
            return;
        };
        series.endpoints.retain(|url, endpoint| {
            let keep = urls.contains(url);
            if !keep {
                self.endpoints.remove(registry, url, endpoint);
            }
            keep
        });
    }
}
