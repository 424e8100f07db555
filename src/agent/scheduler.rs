//! When checks run: one task per watched registry, probing its route every `--interval` ±10 % with the
//! first round spread out, auth + manifest every `--manifest-interval`, the runtime's pull of its
//! canary every `--runtime-check-interval`; a cap on probes in flight; one endpoint never probed
//! twice at once (registries sharing a mirror share its fresh result); on-demand rounds, debounced.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::health::{Heart, Liveness};
use super::metrics::Metrics;
use super::status::StatusBoard;
use crate::check::{self, CheckKind, CheckResult};
use crate::diagnose::{ApiProbe, Diagnoser, OnCheck, Probe, conclude};
use crate::reference::ImageRef;
use crate::report::{EndpointReport, Report, push_token_server};
use crate::route::{Endpoint, Role, Route};
use crate::runtime::RuntimeClient;

/// How often the supervisor loop wakes up (and beats) when nothing else happens.
const SUPERVISOR_TICK: Duration = Duration::from_secs(1);
/// The runtime check's pull may take this many check timeouts (by digest, nothing downloads).
const RUNTIME_CHECK_TIMEOUTS: u32 = 4;

/// A registry to watch: its route, and an image the node holds from it, by digest (the canary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub route: Route,
    pub canary: Option<String>,
}

/// Timing and limits.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Connectivity checks of each registry's route, ±10 %.
    pub interval: Duration,
    /// Auth and manifest checks (of the canary), ±10 %.
    pub manifest_interval: Duration,
    /// The runtime's pull of the canary, ±10 %; `None`: never.
    pub runtime_check_interval: Option<Duration>,
    /// The longest a loop may go without progress before `/healthz` fails.
    pub max_quiet: Duration,
    /// Probes (one endpoint's chain each) in flight at once, over all registries.
    pub max_in_flight: usize,
    /// Each registry's first round starts at a random point within this (at most `interval`).
    pub first_round_spread: Duration,
    /// On-demand rounds of one registry start at most this often.
    pub debounce: Duration,
}

/// Runs the registries' rounds; see the module comment.
pub struct Scheduler {
    diagnoser: Arc<Diagnoser>,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    liveness: Arc<Liveness>,
    settings: Settings,
    /// The node's runtime, for the runtime check.
    runtime: Option<Arc<RuntimeClient>>,
    permits: Semaphore,
    /// One slot per endpoint (URL and TLS settings): its lock serialises probes, its value is the
    /// last result. Held strongly by the registry tasks whose route has the endpoint.
    flights: Mutex<HashMap<String, Weak<Flight>>>,
    /// Wakes a registry's task for an on-demand round.
    triggers: Mutex<HashMap<String, Arc<Notify>>>,
}

/// An endpoint's probe slot: the last probe and when it finished.
type Flight = tokio::sync::Mutex<Option<(Instant, Arc<Probe>)>>;

/// The supervisor's handle on a running registry task.
struct Handle {
    id: tokio::task::Id,
    target: watch::Sender<Target>,
    cancel: CancellationToken,
}

/// The supervisor's books.
#[derive(Default)]
struct Tasks {
    set: JoinSet<()>,
    running: HashMap<String, Handle>,
    /// Cancelled tasks not yet finished: their registry is not restarted before they cleaned up.
    stopping: HashMap<tokio::task::Id, String>,
    desired: BTreeMap<String, Target>,
    /// Tasks that ended unexpectedly (a panic): their registry restarts no sooner than this.
    crashed: HashMap<String, Instant>,
}

/// The checks after `/v2/` of one endpoint, from the last manifest round: shown and exported
/// until the next one, dropped as soon as the endpoint's connectivity fails.
struct Later {
    checks: Vec<CheckResult>,
    /// The Bearer realm's host (role `auth`), with its dns/tcp/tls records.
    token_server: Option<(Endpoint, Vec<CheckResult>)>,
}

/// A periodic job's clock: due every `every` ±10 %.
struct Timer {
    every: Duration,
    next: Instant,
}

impl Timer {
    /// The first run at a random point within `spread`.
    fn first(every: Duration, spread: Duration) -> Self {
        Timer {
            every,
            next: Instant::now() + spread.mul_f64(fastrand::f64()),
        }
    }

    /// The next run one jittered period after `started`, and never sooner than a tenth of a period from now.
    fn reschedule(&mut self, started: Instant) {
        let period = self.every.mul_f64(0.9 + 0.2 * fastrand::f64());
        self.next = (started + period).max(Instant::now() + self.every / 10);
    }
}

impl Scheduler {
    pub fn new(
        diagnoser: Arc<Diagnoser>,
        metrics: Arc<Metrics>,
        status: Arc<StatusBoard>,
        liveness: Arc<Liveness>,
        settings: Settings,
        runtime: Option<Arc<RuntimeClient>>,
    ) -> Self {
        Scheduler {
            permits: Semaphore::new(settings.max_in_flight.max(1)),
            diagnoser,
            metrics,
            status,
            liveness,
            settings,
            runtime,
            flights: Mutex::new(HashMap::new()),
            triggers: Mutex::new(HashMap::new()),
        }
    }

    /// Asks for a round of `registry` now; rounds triggered this way start at most once per
    /// `debounce` and probe afresh. False when the registry is not watched.
    pub fn check_now(&self, registry: &str) -> bool {
        match lock(&self.triggers).get(registry) {
            Some(trigger) => {
                trigger.notify_one();
                true
            }
            None => false,
        }
    }

    /// Checks a pod's failing image from here now: every endpoint of its route through the same
    /// per-endpoint slots and probe cap as the rounds (never twice at once), then auth and a
    /// manifest HEAD of that exact image (no index GET: a HEAD spends no pull quota). The result
    /// is the image's own: it does not change the registry's metrics, which its round keeps.
    pub async fn diagnose_image(&self, input: &str) -> Report {
        self.diagnose_observed(input, false, &|_, _| {}).await
    }

    /// `diagnose` as a person asks it of the agent: [`Scheduler::diagnose_image`], with the
    /// node's platform looked for in an image index when `with_platform` (as the local run does),
    /// telling `on_check` about every check as it completes.
    pub async fn diagnose_observed(
        &self,
        input: &str,
        with_platform: bool,
        on_check: OnCheck<'_>,
    ) -> Report {
        let routed = match self.diagnoser.route_image(input) {
            Ok(plan) => plan,
            Err(report) => return *report,
        };
        let platform = with_platform.then_some(&self.diagnoser.pull.platform);
        let flights = self.flights_for(&routed.route);
        let mut endpoints = Vec::with_capacity(routed.route.endpoints.len());
        for (endpoint, flight) in routed.route.endpoints.iter().zip(&flights) {
            let mut last = flight.lock().await;
            // The semaphore is never closed; without a permit the chain is still bounded by its timeouts.
            let _permit = self.permits.acquire().await.ok();
            let checked = self
                .diagnoser
                .check_endpoint(endpoint, &routed.image, platform, on_check)
                .await;
            *last = Some((Instant::now(), Arc::clone(&checked.probe)));
            checked.add_to(&mut endpoints);
        }
        routed.conclude(endpoints)
    }

    /// Follows the discovered routes until `cancel`: starts a task per new registry, hands changed
    /// routes to running ones, stops (and so removes the series of) vanished ones; then drains.
    pub async fn run(
        self: Arc<Self>,
        mut targets: watch::Receiver<Vec<Target>>,
        cancel: CancellationToken,
    ) {
        let heart = self.liveness.register("scheduler", self.settings.max_quiet);
        let mut tasks = Tasks::default();
        let mut tick = tokio::time::interval(SUPERVISOR_TICK);
        let mut follow = true;
        let mut changed = true;
        loop {
            if changed {
                tasks.desired = targets
                    .borrow_and_update()
                    .iter()
                    .map(|target| (target.route.registry.clone(), target.clone()))
                    .collect();
                self.apply(&mut tasks, &cancel);
                changed = false;
            }
            heart.beat();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                result = targets.changed(), if follow => match result {
                    Ok(()) => changed = true,
                    // Discovery ended: keep watching what it found last.
                    Err(_) => follow = false,
                },
                Some(joined) = tasks.set.join_next_with_id() => self.reap(joined, &mut tasks, &cancel),
                _ = tick.tick() => {
                    let now = Instant::now();
                    changed = tasks.crashed.values().any(|at| *at <= now);
                }
            }
        }
        // Every registry task holds a child of `cancel`: each stops and removes its series.
        while tasks.set.join_next().await.is_some() {}
        lock(&self.triggers).clear();
    }

    fn apply(self: &Arc<Self>, tasks: &mut Tasks, cancel: &CancellationToken) {
        let gone: Vec<String> = tasks
            .running
            .keys()
            .filter(|registry| !tasks.desired.contains_key(*registry))
            .cloned()
            .collect();
        let now = Instant::now();
        tasks
            .crashed
            .retain(|registry, at| tasks.desired.contains_key(registry) && *at > now);
        for registry in gone {
            if let Some(handle) = tasks.running.remove(&registry) {
                info!(registry, "no longer discovered; stopping its checks");
                handle.cancel.cancel();
                lock(&self.triggers).remove(&registry);
                tasks.stopping.insert(handle.id, registry);
            }
        }
        let desired: Vec<Target> = tasks.desired.values().cloned().collect();
        for target in desired {
            if let Some(handle) = tasks.running.get(&target.route.registry) {
                handle.target.send_if_modified(|current| {
                    let modified = *current != target;
                    if modified {
                        *current = target.clone();
                    }
                    modified
                });
            } else if !tasks.stopping.values().any(|r| *r == target.route.registry)
                && !tasks.crashed.contains_key(&target.route.registry)
            {
                self.spawn(target, tasks, cancel);
            }
        }
    }

    fn spawn(self: &Arc<Self>, target: Target, tasks: &mut Tasks, cancel: &CancellationToken) {
        let registry = target.route.registry.clone();
        let (target_tx, target_rx) = watch::channel(target);
        let token = cancel.child_token();
        let trigger = Arc::new(Notify::new());
        lock(&self.triggers).insert(registry.clone(), Arc::clone(&trigger));
        let task = Arc::clone(self).watch_registry(target_rx, trigger, token.clone());
        let id = tasks.set.spawn(task).id();
        tasks.running.insert(
            registry,
            Handle {
                id,
                target: target_tx,
                cancel: token,
            },
        );
    }

    /// A registry task ended: a stopped one may make way for its successor; any other one failed.
    fn reap(
        self: &Arc<Self>,
        joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
        tasks: &mut Tasks,
        cancel: &CancellationToken,
    ) {
        let (id, failure) = match joined {
            Ok((id, ())) => (id, None),
            Err(error) => (error.id(), Some(error)),
        };
        if cancel.is_cancelled() {
            // Shutting down: tasks end because they were told to.
            return;
        }
        let registry = match tasks.stopping.remove(&id) {
            Some(registry) => registry,
            None => {
                let Some(registry) = tasks
                    .running
                    .iter()
                    .find(|(_, handle)| handle.id == id)
                    .map(|(registry, _)| registry.clone())
                else {
                    return;
                };
                tasks.running.remove(&registry);
                lock(&self.triggers).remove(&registry);
                self.metrics.registries().forget_registry(&registry);
                self.status.forget(&registry);
                let backoff = self.settings.interval;
                error!(
                    registry,
                    ?failure,
                    "registry task ended unexpectedly; restarting it in {}",
                    humantime::format_duration(backoff)
                );
                // Restarted one interval later: a task that fails at once never spins.
                tasks
                    .crashed
                    .insert(registry.clone(), Instant::now() + backoff);
                registry
            }
        };
        if !tasks.running.contains_key(&registry)
            && !tasks.crashed.contains_key(&registry)
            && let Some(target) = tasks.desired.get(&registry).cloned()
        {
            self.spawn(target, tasks, cancel);
        }
    }

    /// One registry's loop: rounds on its timers or on demand, until cancelled; then its series go.
    async fn watch_registry(
        self: Arc<Self>,
        mut target: watch::Receiver<Target>,
        trigger: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        let registry = target.borrow().route.registry.clone();
        let heart = self
            .liveness
            .register(format!("registry {registry}"), self.settings.max_quiet);
        let spread = self.settings.first_round_spread.min(self.settings.interval);
        let mut connectivity = Timer::first(self.settings.interval, spread);
        // The first round checks everything; the others follow their own intervals.
        let mut manifest = Timer {
            every: self.settings.manifest_interval,
            next: connectivity.next,
        };
        let mut runtime_check = self.settings.runtime_check_interval.map(|every| Timer {
            every,
            next: connectivity.next,
        });
        let mut flights = self.flights_for(&target.borrow().route);
        let mut later: HashMap<String, Later> = HashMap::new();
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
                            flights = self.flights_for(&current);
                            later.clear();
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
            // An on-demand round checks the manifest too: it is asked because a pull failed.
            let api = canary
                .as_ref()
                .filter(|_| force || started >= manifest.next);
            let report = tokio::select! {
                _ = cancel.cancelled() => break,
                report = self.round(&current.route, &flights, force, api, &mut later, &heart) => report,
            };
            connectivity.reschedule(started);
            if api.is_some() {
                manifest.reschedule(started);
            }
            let up = registry_up(&report);
            log_transition(&report, was_up, up);
            if was_up == Some(false) && up && canary.is_some() {
                // Back after an outage: the manifest's word is stale, ask it again soon.
                manifest.next = manifest.next.min(Instant::now());
            }
            was_up = Some(up);
            self.status.record(report, SystemTime::now());
            if let (Some(timer), Some(canary), Some(runtime)) =
                (runtime_check.as_mut(), &canary, &self.runtime)
                && started >= timer.next
            {
                let result = tokio::select! {
                    _ = cancel.cancelled() => break,
                    result = self.runtime_check(runtime, canary) => result,
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
    async fn round(
        self: &Arc<Self>,
        route: &Route,
        flights: &[Arc<Flight>],
        force: bool,
        api: Option<&ImageRef>,
        later: &mut HashMap<String, Later>,
        heart: &Heart,
    ) -> Report {
        let mut probes = JoinSet::new();
        for (index, (endpoint, flight)) in route.endpoints.iter().zip(flights).enumerate() {
            let this = Arc::clone(self);
            let endpoint = endpoint.clone();
            let flight = Arc::clone(flight);
            let api = api.cloned();
            probes.spawn(async move {
                let (probe, api) = this.probe(&endpoint, &flight, force, api.as_ref()).await;
                (index, endpoint, probe, api)
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
        done.sort_by_key(|(index, ..)| *index);
        let mut endpoints: Vec<EndpointReport> = Vec::with_capacity(done.len());
        let mut rate_limit = None;
        for (_, endpoint, probe, api) in done {
            let url = endpoint.url();
            match api {
                _ if probe.http.is_none() => {
                    later.remove(&url);
                }
                Some(api) => {
                    rate_limit = api.rate_limit.clone().or(rate_limit);
                    let token_server = api.token_server.map(|(server, server_probe)| {
                        self.metrics.registries().record_endpoint(
                            &route.registry,
                            &server,
                            &server_probe,
                        );
                        (server, server_probe.checks)
                    });
                    later.insert(
                        url.clone(),
                        Later {
                            checks: api.checks,
                            token_server,
                        },
                    );
                }
                None => {}
            }
            let after = later.get(&url);
            let after_checks = after.map(|l| l.checks.as_slice()).unwrap_or_default();
            self.metrics.registries().record_endpoint_with(
                &route.registry,
                &endpoint,
                &probe,
                after_checks,
            );
            endpoints.push(EndpointReport {
                endpoint: url,
                role: endpoint.role,
                source: endpoint.source.clone(),
                checks: probe.checks.iter().chain(after_checks).cloned().collect(),
            });
            if let Some((server, checks)) = after.and_then(|l| l.token_server.as_ref()) {
                push_token_server(&mut endpoints, server, checks.clone());
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
        let report = conclude(String::new(), route.registry.clone(), endpoints);
        self.metrics
            .registries()
            .set_registry_up(&route.registry, registry_up(&report));
        report
    }

    /// The runtime's own pull of `canary` (by digest: it resolves remotely and downloads nothing),
    /// with the `--docker-config` credentials for it, as the kubelet passes imagePullSecrets.
    async fn runtime_check(&self, runtime: &RuntimeClient, canary: &ImageRef) -> CheckResult {
        let auth = self.diagnoser.pull.pull_auth(canary);
        let _permit = self.permits.acquire().await.ok();
        let pull_timeout = self.diagnoser.timeout * RUNTIME_CHECK_TIMEOUTS;
        let image = canary.to_string();
        let pull = check::runtime::check(runtime, &image, auth.as_ref(), pull_timeout);
        // The client gives up at `pull_timeout`; the outer bound only catches a hang past it.
        check::run(
            CheckKind::Runtime,
            pull_timeout + self.diagnoser.timeout,
            pull,
        )
        .await
        .record
    }

    /// One endpoint's chain, never twice at once; with `api`, its auth and manifest checks too.
    /// A connectivity result younger than half an interval is shared (registries with a common
    /// mirror) unless `force`.
    async fn probe(
        &self,
        endpoint: &Endpoint,
        flight: &Flight,
        force: bool,
        api: Option<&ImageRef>,
    ) -> (Arc<Probe>, Option<ApiProbe>) {
        let mut last = flight.lock().await;
        if !force
            && api.is_none()
            && let Some((at, probe)) = last.as_ref()
            && at.elapsed() < self.settings.interval / 2
        {
            return (Arc::clone(probe), None);
        }
        // The semaphore is never closed; without a permit the probe would still be bounded by its timeouts.
        let _permit = self.permits.acquire().await.ok();
        let (probe, api) = match api {
            None => (self.diagnoser.probe(endpoint).await, None),
            Some(image) => {
                let (probe, link) = self.diagnoser.probe_linked(endpoint, &|_, _| {}).await;
                let api = match (&probe.http, &link) {
                    // No platform: a HEAD only, which spends no pull quota.
                    (Some(http), Some(link)) => Some(
                        self.diagnoser
                            .registry_api(endpoint, link, http, image, None, &|_, _| {})
                            .await,
                    ),
                    _ => None,
                };
                (probe, api)
            }
        };
        let probe = Arc::new(probe);
        *last = Some((Instant::now(), Arc::clone(&probe)));
        (probe, api)
    }

    fn flights_for(&self, route: &Route) -> Vec<Arc<Flight>> {
        let mut flights = lock(&self.flights);
        flights.retain(|_, flight| flight.strong_count() > 0);
        route
            .endpoints
            .iter()
            .map(|endpoint| {
                let key = format!("{} {:?}", endpoint.url(), endpoint.tls);
                match flights.get(&key).and_then(Weak::upgrade) {
                    Some(flight) => flight,
                    None => {
                        let flight = Arc::new(Flight::default());
                        flights.insert(key, Arc::downgrade(&flight));
                        flight
                    }
                }
            })
            .collect()
    }
}

/// Up when some endpoint of the route (not a token server) passed every check the agent ran on it:
/// through `/v2/` in a connectivity round, through the manifest where that ran.
fn registry_up(report: &Report) -> bool {
    report
        .endpoints
        .iter()
        .any(|e| e.role != Role::Auth && e.passed())
}

/// Logs a registry going up or down, not every round.
fn log_transition(report: &Report, was_up: Option<bool>, up: bool) {
    let registry = report.registry.as_str();
    let reason = report.reason.map(|r| r.as_str()).unwrap_or_default();
    match (was_up, up) {
        (None | Some(true), false) => {
            warn!(registry, reason, summary = report.summary, "registry down")
        }
        (Some(false), true) => info!(registry, summary = report.summary, "registry up again"),
        (None, true) => info!(registry, summary = report.summary, "registry up"),
        (Some(_), _) => debug!(registry, up, "round done"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::route::Scheme;
    use crate::trust::TlsOptions;

    /// A plain-HTTP `/v2/` that answers slowly and counts requests and the most at once.
    struct FakeRegistry {
        port: u16,
        requests: Arc<AtomicUsize>,
        most_at_once: Arc<AtomicUsize>,
    }

    async fn fake_registry(delay: Duration) -> FakeRegistry {
        fake_registry_counting(delay, Arc::default(), Arc::default()).await
    }

    /// A [`fake_registry`] counting requests in flight in `now`, and the most in `most_at_once`,
    /// which several servers may share.
    async fn fake_registry_counting(
        delay: Duration,
        now: Arc<AtomicUsize>,
        most_at_once: Arc<AtomicUsize>,
    ) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let (r, m) = (Arc::clone(&requests), Arc::clone(&most_at_once));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (r, m, now) = (Arc::clone(&r), Arc::clone(&m), Arc::clone(&now));
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    // The tcp check connects and closes without a request: not counted.
                    if !matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let current = now.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(current, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ndocker-distribution-api-version: registry/2.0\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        FakeRegistry {
            port,
            requests,
            most_at_once,
        }
    }

    fn endpoint(port: u16) -> Endpoint {
        Endpoint {
            scheme: Scheme::Http,
            host: "127.0.0.1".into(),
            port,
            role: Role::Mirror,
            source: "test".into(),
            tls: TlsOptions::default(),
            api_path: "/v2".into(),
            repository: None,
            namespace_query: false,
        }
    }

    fn route(registry: &str, endpoints: Vec<Endpoint>) -> Target {
        Target {
            route: Route {
                registry: registry.into(),
                endpoints,
            },
            canary: None,
        }
    }

    struct Fixture {
        scheduler: Arc<Scheduler>,
        metrics: Arc<Metrics>,
        status: Arc<StatusBoard>,
        _resolv: tempfile::NamedTempFile,
    }

    fn fixture(settings: Settings) -> Fixture {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            common: crate::config::CommonFlags,
        }
        let resolv = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(resolv.path(), "nameserver 127.0.0.1\n").unwrap();
        let resolv_path = resolv.path().to_str().unwrap();
        let diagnoser =
            Flags::try_parse_from(["t", "--resolv-conf", resolv_path, "--timeout", "2s"])
                .unwrap()
                .common
                .diagnoser()
                .unwrap();
        let metrics = Arc::new(Metrics::new("n", "v", "r", 100).unwrap());
        let status = Arc::new(StatusBoard::new("n"));
        let scheduler = Arc::new(Scheduler::new(
            Arc::new(diagnoser),
            Arc::clone(&metrics),
            Arc::clone(&status),
            Arc::new(Liveness::default()),
            settings,
            None,
        ));
        Fixture {
            scheduler,
            metrics,
            status,
            _resolv: resolv,
        }
    }

    fn settings(interval: Duration) -> Settings {
        Settings {
            interval,
            manifest_interval: interval,
            runtime_check_interval: None,
            max_quiet: Duration::from_secs(60),
            max_in_flight: 8,
            first_round_spread: Duration::ZERO,
            debounce: Duration::from_millis(500),
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_crashed_registry_task_restarts_only_after_its_backoff() {
        let f = fixture(settings(Duration::from_secs(60)));
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::default();
        let target = route("r.example", vec![endpoint(1)]);
        tasks.desired.insert("r.example".into(), target);
        tasks.crashed.insert(
            "r.example".into(),
            Instant::now() + Duration::from_secs(3600),
        );
        f.scheduler.apply(&mut tasks, &cancel);
        assert!(tasks.running.is_empty(), "restarted within its backoff");
        tasks
            .crashed
            .insert("r.example".into(), Instant::now() - Duration::from_secs(1));
        f.scheduler.apply(&mut tasks, &cancel);
        assert!(
            tasks.running.contains_key("r.example"),
            "restarted after it"
        );
        assert!(tasks.crashed.is_empty());
        cancel.cancel();
        while tasks.set.join_next().await.is_some() {}
    }

    #[tokio::test]
    async fn probes_in_flight_never_exceed_the_cap() {
        let (now, most) = (Arc::default(), Arc::new(AtomicUsize::new(0)));
        let mut servers = Vec::new();
        for _ in 0..6 {
            let server = fake_registry_counting(
                Duration::from_millis(300),
                Arc::clone(&now),
                Arc::clone(&most),
            )
            .await;
            servers.push(server);
        }
        let f = fixture(Settings {
            max_in_flight: 2,
            ..settings(Duration::from_secs(60))
        });
        let routes: Vec<Target> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| route(&format!("r{i}.example"), vec![endpoint(s.port)]))
            .collect();
        let (_tx, rx) = watch::channel(routes);
        let cancel = CancellationToken::new();
        let run = tokio::spawn(Arc::clone(&f.scheduler).run(rx, cancel.clone()));
        until("six registries checked", || {
            f.status.snapshot().registries.len() == 6
        })
        .await;
        // Six registries due at once, two probes at a time.
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert!(
            servers
                .iter()
                .all(|s| s.requests.load(Ordering::SeqCst) == 1)
        );
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_shared_endpoint_is_never_probed_twice_at_once() {
        let server = fake_registry(Duration::from_millis(300)).await;
        let f = fixture(settings(Duration::from_secs(60)));
        let shared = endpoint(server.port);
        let routes: Vec<Target> = (0..4)
            .map(|i| route(&format!("r{i}.example"), vec![shared.clone()]))
            .collect();
        let (_tx, rx) = watch::channel(routes);
        let cancel = CancellationToken::new();
        let run = tokio::spawn(Arc::clone(&f.scheduler).run(rx, cancel.clone()));
        until("four registries checked", || {
            f.status.snapshot().registries.len() == 4
        })
        .await;
        assert_eq!(server.most_at_once.load(Ordering::SeqCst), 1);
        // They started together: the later ones took the first's fresh result.
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);
        assert!(
            f.status
                .snapshot()
                .registries
                .iter()
                .all(|r| r.report.reason.is_none())
        );
        assert!(
            f.metrics
                .encode()
                .unwrap()
                .contains("pullwatch_registry_up{registry=\"r3.example\",node=\"n\"} 1")
        );
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap()
            .unwrap();
        // Stopped tasks took their series with them.
        assert!(!f.metrics.encode().unwrap().contains("r0.example"));
    }

    #[tokio::test]
    async fn on_demand_rounds_are_debounced_and_fresh() {
        let server = fake_registry(Duration::ZERO).await;
        let f = fixture(settings(Duration::from_secs(3600)));
        let (_tx, rx) = watch::channel(vec![route("r.example", vec![endpoint(server.port)])]);
        let cancel = CancellationToken::new();
        let run = tokio::spawn(Arc::clone(&f.scheduler).run(rx, cancel.clone()));
        until("first round", || {
            server.requests.load(Ordering::SeqCst) == 1
        })
        .await;
        assert!(!f.scheduler.check_now("unknown.example"));
        let start = Instant::now();
        for _ in 0..10 {
            assert!(f.scheduler.check_now("r.example"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until("the triggered round", || {
            server.requests.load(Ordering::SeqCst) == 2
        })
        .await;
        // Ten triggers within the debounce window made one round, not ten.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn vanished_registries_stop_and_lose_their_series() {
        let server = fake_registry(Duration::ZERO).await;
        let f = fixture(settings(Duration::from_secs(1)));
        let a = route("a.example", vec![endpoint(server.port)]);
        let b = route("b.example", vec![endpoint(server.port)]);
        let (tx, rx) = watch::channel(vec![a.clone(), b]);
        let cancel = CancellationToken::new();
        let run = tokio::spawn(Arc::clone(&f.scheduler).run(rx, cancel.clone()));
        until("both registries", || {
            f.status.snapshot().registries.len() == 2
        })
        .await;
        tx.send(vec![a]).unwrap();
        until("b forgotten", || {
            f.status.snapshot().registries.len() == 1
                && !f.metrics.encode().unwrap().contains("b.example")
        })
        .await;
        assert!(!f.scheduler.check_now("b.example"));
        // And the one left keeps being checked.
        let before = server.requests.load(Ordering::SeqCst);
        until("a's next round", || {
            server.requests.load(Ordering::SeqCst) > before
        })
        .await;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_spreads() {
        let every = Duration::from_secs(30);
        let (mut firsts, mut periods) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            let started = Instant::now();
            let mut timer = Timer::first(every, every);
            let first = timer.next - started;
            assert!(first <= every + Duration::from_millis(50), "{first:?}");
            firsts.push(first);
            timer.reschedule(started);
            let period = timer.next - started;
            assert!(
                period >= every.mul_f64(0.9) && period <= every.mul_f64(1.1),
                "{period:?}"
            );
            periods.push(period);
        }
        // Spread, not merely bounded: nodes started together must not stay in step.
        let spread = |values: &[Duration]| {
            let min = values.iter().min().copied().unwrap_or_default();
            let max = values.iter().max().copied().unwrap_or_default();
            max - min
        };
        assert!(spread(&firsts) > every / 2, "first rounds {firsts:?}");
        assert!(spread(&periods) > every / 10, "periods {periods:?}");
    }
}
