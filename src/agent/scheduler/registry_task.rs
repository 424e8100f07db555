//! One registry's task: rounds of its route on jittered timers (connectivity every `--interval`,
//! the HTTP requests (`GET /v2/`, auth + manifest) every `--manifest-interval`, the runtime's pull every
//! `--runtime-check-interval`) or on demand, each endpoint through its probe slot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::super::health::Heart;
use super::{
    Asking, ManifestRequest, ProbeSlot, Scheduler, WatchedRegistry, log_transition, registry_up,
};
use crate::check::CheckResult;
use crate::credentials::{ImageCredentials, Offered, Source};
use crate::diagnose::{ApiProbe, Probe, conclude};
use crate::reference::ImageRef;
use crate::report::{EndpointReport, Report, push_token_server};
use crate::route::{Endpoint, Route};

/// The checks after `/v2/` of one endpoint, from the last manifest round: shown and exported
/// until the next one, dropped as soon as the endpoint's connectivity fails.
struct ApiChecks {
    checks: Vec<CheckResult>,
    /// The Bearer realm's host (role `auth`), with its dns/tcp/tls records.
    token_server: Option<TokenServerChecks>,
    /// Where the credentials used came from.
    source: Source,
    /// The credential the registry accepted, for the runtime's own pull.
    answered: Option<Offered>,
    /// Refused while pullwatch held no credentials: the node may pull with credentials pullwatch
    /// cannot see, so this is no verdict (it does not lower `registry_up`). The note says so.
    unverified: Option<String>,
}

/// What one round found: the registry's report, and what the status and the runtime check need.
pub(super) struct Round {
    pub(super) report: Report,
    /// "unverified: no credentials …" when no endpoint passed and one was refused without any.
    pub(super) unverified: Option<String>,
    /// The credential the registry last accepted for the canary.
    pub(super) answered: Option<Offered>,
}

/// One endpoint's part of a round, with its place in the route.
struct Probed {
    index: usize,
    endpoint: Endpoint,
    probe: Arc<Probe>,
    api: Option<ApiProbe>,
}

/// A token server's dns/tcp/tls records from the last manifest round.
struct TokenServerChecks {
    endpoint: Endpoint,
    checks: Vec<CheckResult>,
}

/// A periodic job's clock: due every `every` ±10 %.
pub(super) struct Timer {
    every: Duration,
    pub(super) next: Instant,
    /// The next period is drawn from one to two periods, once: runs that started together (a
    /// fleet's first rounds) leave step for good, and none comes sooner than a period.
    leave_step: bool,
}

impl Timer {
    /// The first run at a random point within `spread`.
    pub(super) fn first(every: Duration, spread: Duration) -> Self {
        Timer {
            every,
            next: Instant::now() + spread.mul_f64(fastrand::f64()),
            leave_step: false,
        }
    }

    /// Due at `next`, then its second run anywhere from one to two periods later (see `leave_step`).
    pub(super) fn stepping_out(every: Duration, next: Instant) -> Self {
        Timer {
            every,
            next,
            leave_step: true,
        }
    }

    /// The next run one jittered period after `started`, and never sooner than a tenth of a period from now.
    pub(super) fn reschedule(&mut self, started: Instant) {
        let share = match std::mem::take(&mut self.leave_step) {
            true => 1.0 + fastrand::f64(),
            false => 0.9 + 0.2 * fastrand::f64(),
        };
        let period = self.every.mul_f64(share);
        self.next = (started + period).max(Instant::now() + self.every / 10);
    }
}

impl Scheduler {
    /// One registry's loop: rounds on its timers or on demand, until cancelled; then its series go.
    pub(super) async fn watch_registry(
        self: Arc<Self>,
        mut target: watch::Receiver<WatchedRegistry>,
        trigger: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        let registry = target.borrow().route.registry.clone();
        let heart = self
            .liveness
            .register(format!("registry {registry}"), self.settings.max_quiet);
        let spread = self.settings.first_round_spread.min(self.settings.interval);
        let mut connectivity = Timer::first(self.settings.interval, spread);
        // The first round checks everything; the others follow their own intervals. The HTTP
        // requests leave step after it: agents started together (a rollout) would otherwise ask
        // a registry in waves, a ±10% jitter taking many periods to spread them.
        let mut manifest = Timer::stepping_out(self.settings.manifest_interval, connectivity.next);
        let mut runtime_check = self
            .settings
            .runtime_check_interval
            .map(|every| Timer::stepping_out(every, connectivity.next));
        let mut slots = self.slots_for(&target.borrow().route);
        let mut api_checks: HashMap<String, ApiChecks> = HashMap::new();
        let mut last_start: Option<Instant> = None;
        let mut was_up: Option<bool> = None;
        let mut fresh_wanted = false;
        let mut follow = true;
        loop {
            heart.beat();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(connectivity.next) => {}
                _ = trigger.notified() => {
                    fresh_wanted = true;
                    let not_before = last_start.map(|s| s + self.settings.debounce);
                    match not_before {
                        Some(at) if at > Instant::now() => {
                            connectivity.next = connectivity.next.min(at);
                            continue;
                        }
                        _ => {}
                    }
                }
                changed = target.changed(), if follow => {
                    match changed {
                        Ok(()) => {
                            let current = target.borrow().route.clone();
                            slots = self.slots_for(&current);
                            api_checks.clear();
                            connectivity.next = Instant::now();
                            manifest.next = connectivity.next;
                        }
                        Err(_) => follow = false,
                    }
                    continue;
                }
            }
            let started = Instant::now();
            last_start = Some(started);
            let current = target.borrow_and_update().clone();
            let force = std::mem::take(&mut fresh_wanted);
            let canary = current
                .canary
                .as_deref()
                .and_then(|c| ImageRef::parse(c).ok());
            // The HTTP requests (`GET /v2/`, auth, manifest) go every manifest interval; an
            // on-demand round asks them too: it is asked because a pull failed.
            let requests_due = force || started >= manifest.next;
            let api = canary.as_ref().filter(|_| requests_due);
            let asking = match requests_due {
                true => Asking::Ping,
                false => Asking::Connect,
            };
            // Boxed, as the runtime check below: a round's state (the whole chain's futures) is
            // tens of KiB, and held inline it would stay allocated in every registry's task
            // between rounds too.
            let round = tokio::select! {
                _ = cancel.cancelled() => break,
                round = Box::pin(self.round(&current.route, &slots, force, asking, api, &mut api_checks, &heart)) => round,
            };
            let Round {
                report,
                unverified,
                answered,
            } = round;
            connectivity.reschedule(started);
            if requests_due {
                manifest.reschedule(started);
            }
            let up = registry_up(&report) || unverified.is_some();
            log_transition(&report, was_up, up);
            if was_up == Some(false) && up && canary.is_some() {
                // Back after an outage: the manifest's word is stale, ask it again soon.
                manifest.next = manifest.next.min(Instant::now());
            }
            was_up = Some(up);
            let no_credentials = unverified.is_some();
            self.status.record(report, unverified, SystemTime::now());
            // Without credentials the runtime's pull would be refused as the manifest was: no verdict.
            if let (Some(timer), Some(canary), Some(runtime)) =
                (runtime_check.as_mut(), &canary, &self.runtime)
                && started >= timer.next
                && !no_credentials
            {
                let result = tokio::select! {
                    _ = cancel.cancelled() => break,
                    result = Box::pin(self.runtime_check(runtime, canary, answered.as_ref())) => result,
                };
                heart.beat();
                self.metrics
                    .registries()
                    .set_runtime_check(&registry, result.ok, result.seconds);
                if !result.ok {
                    warn!(
                        registry,
                        canary = %canary,
                        reason = result.reason.map(|r| r.as_str()).unwrap_or_default(),
                        detail = result.detail,
                        "the runtime cannot pull from this registry"
                    );
                }
                timer.reschedule(started);
            }
        }
        self.metrics.registries().forget_registry(&registry);
        self.status.forget(&registry);
    }

    /// Probes every endpoint of the route at once (with auth and manifest of `api` when given),
    /// records their metrics, and concludes.
    #[allow(
        clippy::too_many_arguments,
        reason = "the round's settings and the task's state it updates"
    )]
    async fn round(
        self: &Arc<Self>,
        route: &Route,
        slots: &[Arc<ProbeSlot>],
        force: bool,
        asking: Asking,
        api: Option<&ImageRef>,
        api_checks: &mut HashMap<String, ApiChecks>,
        heart: &Heart,
    ) -> Round {
        let request = match api {
            Some(image) => Some(Arc::new(ManifestRequest {
                image: image.clone(),
                credentials: self.diagnoser.pull.credentials.lookup(image).await,
            })),
            None => None,
        };
        let mut probes = JoinSet::new();
        for (index, (endpoint, slot)) in route.endpoints.iter().zip(slots).enumerate() {
            let this = Arc::clone(self);
            let endpoint = endpoint.clone();
            let slot = Arc::clone(slot);
            let request = request.clone();
            probes.spawn(async move {
                let (probe, api) = this
                    .probe(&endpoint, &slot, force, asking, request.as_deref())
                    .await;
                Probed {
                    index,
                    endpoint,
                    probe,
                    api,
                }
            });
        }
        let mut done = Vec::with_capacity(route.endpoints.len());
        while let Some(joined) = probes.join_next().await {
            heart.beat();
            match joined {
                Ok(probed) => done.push(probed),
                Err(error) => error!(registry = route.registry, %error, "probe task failed"),
            }
        }
        done.sort_by_key(|probed| probed.index);
        let mut endpoints: Vec<EndpointReport> = Vec::with_capacity(done.len());
        let mut rate_limit = None;
        for Probed {
            endpoint,
            probe,
            api,
            ..
        } in done
        {
            let url = endpoint.url();
            match api {
                _ if probe.http.is_none() => {
                    api_checks.remove(&url);
                }
                Some(api) => {
                    rate_limit = api.rate_limit.clone().or(rate_limit);
                    let unverified = (api.source == Source::None && api.refused_credentials())
                        .then(|| unverified_note(request.as_deref().map(|r| &r.credentials)));
                    let answered = api
                        .manifest
                        .is_some()
                        .then(|| api.credential.clone())
                        .flatten();
                    let token_server = api.token_server.map(|server| {
                        self.metrics.registries().record_endpoint(
                            &route.registry,
                            &server.endpoint,
                            &server.probe,
                        );
                        TokenServerChecks {
                            endpoint: server.endpoint,
                            checks: server.probe.checks,
                        }
                    });
                    api_checks.insert(
                        url.clone(),
                        ApiChecks {
                            checks: api.checks,
                            token_server,
                            source: api.source,
                            answered,
                            unverified,
                        },
                    );
                }
                None => {}
            }
            let after = api_checks.get(&url);
            let after_checks = after.map(|l| l.checks.as_slice()).unwrap_or_default();
            // An unverified refusal is shown, not exported as a failure: it is no verdict.
            let exported = match after {
                Some(l) if l.unverified.is_some() => &[],
                _ => after_checks,
            };
            self.metrics.registries().record_endpoint_with(
                &route.registry,
                &endpoint,
                &probe,
                exported,
            );
            endpoints.push(EndpointReport {
                endpoint: url,
                role: endpoint.role,
                source: endpoint.source.clone(),
                rules: self.diagnoser.routes.known_rules(),
                not_tried: None,
                checks: probe.checks.iter().chain(after_checks).cloned().collect(),
            });
            if let Some(server) = after.and_then(|l| l.token_server.as_ref()) {
                push_token_server(&mut endpoints, &server.endpoint, server.checks.clone());
            }
        }
        if api.is_some() {
            self.metrics
                .registries()
                .set_ratelimit(&route.registry, rate_limit.as_ref());
        }
        let urls: Vec<String> = endpoints.iter().map(|e| e.endpoint.clone()).collect();
        self.metrics
            .registries()
            .retain_endpoints(&route.registry, &urls);
        // The route's endpoints in order, with what their last manifest round found.
        let ours: Vec<&ApiChecks> = route
            .endpoints
            .iter()
            .filter_map(|e| api_checks.get(&e.url()))
            .collect();
        let answered = ours.iter().find_map(|l| l.answered.clone());
        // The source the deciding endpoint used: the one accepted, else the first that was asked.
        if let Some(source) = ours
            .iter()
            .find(|l| l.answered.is_some())
            .or(ours.first())
            .map(|l| &l.source)
        {
            self.metrics
                .registries()
                .set_credentials(&route.registry, source.label());
        }
        let report = conclude(String::new(), route.registry.clone(), endpoints);
        let unverified = match registry_up(&report) {
            true => None,
            false => ours.iter().find_map(|l| l.unverified.clone()),
        };
        self.metrics.registries().set_registry_up(
            &route.registry,
            registry_up(&report) || unverified.is_some(),
        );
        Round {
            report,
            unverified,
            answered,
        }
    }
}

/// What the status says of a refusal without credentials, and where pullwatch looked for some.
fn unverified_note(credentials: Option<&ImageCredentials>) -> String {
    match credentials.map(|c| c.looked_in.as_slice()) {
        Some(places) if !places.is_empty() => format!(
            "unverified: no credentials (looked in {})",
            places.join(", ")
        ),
        _ => "unverified: no credentials (no credential source configured)".to_string(),
    }
}
