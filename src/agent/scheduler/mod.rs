//! When checks run: one task per watched registry, probing its route every `--interval` ±10 % with the
//! first round spread out, auth + manifest every `--manifest-interval`, the runtime's pull of its
//! canary every `--runtime-check-interval`; a cap on probes in flight; one endpoint never probed
//! twice at once (registries sharing a mirror share its fresh result); on-demand rounds, debounced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::health::Liveness;
use super::metrics::Metrics;
use super::status::StatusBoard;
use crate::check::http::HttpOutcome;
use crate::check::{self, CheckKind, CheckResult};
use crate::credentials::{ImageCredentials, Offered};
use crate::diagnose::{ApiProbe, Ask, Diagnoser, OnCheck, Probe, pull_auth};
use crate::reference::ImageRef;
use crate::report::Report;
use crate::route::{Endpoint, Role, Route};
use crate::runtime::RuntimeClient;

mod registry_task;
mod supervisor;

/// The runtime check's pull may take this many check timeouts (by digest, nothing downloads).
const RUNTIME_CHECK_TIMEOUTS: u32 = 4;

/// A registry to watch: its route, and an image the node holds from it, by digest (the canary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedRegistry {
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
    slots: Mutex<HashMap<String, Weak<ProbeSlot>>>,
    /// Wakes a registry's task for an on-demand round.
    triggers: Mutex<HashMap<String, Arc<Notify>>>,
}

/// A round's auth + manifest checks: the canary and the node's credentials for it (looked up
/// once per round, shared by the route's endpoints).
struct ManifestRequest {
    image: ImageRef,
    credentials: ImageCredentials,
}

/// An endpoint's probe slot: its lock serialises probes; it holds the last one.
type ProbeSlot = tokio::sync::Mutex<Option<LastProbe>>;

/// An endpoint's latest probe and when it finished.
struct LastProbe {
    at: Instant,
    probe: Arc<Probe>,
    /// The last `GET /v2/` actually sent, carried into the connectivity rounds after it.
    asked: Option<Asked>,
}

/// A `GET /v2/` answer and when it was asked.
#[derive(Clone)]
struct Asked {
    at: Instant,
    record: CheckResult,
    http: Option<HttpOutcome>,
    status: Option<u16>,
}

impl Asked {
    /// The `/v2/` step of `probe`, when it ran.
    fn of(probe: &Probe) -> Option<Asked> {
        let record = probe.checks.iter().find(|c| c.check == CheckKind::Http)?;
        Some(Asked {
            at: Instant::now(),
            record: record.clone(),
            http: probe.http.clone(),
            status: probe.http_status,
        })
    }

    /// Adds this answer to a connectivity round's `probe` (which sent no request), saying when
    /// it was asked: the endpoint is up while its chain passes and its last answer did.
    fn carry_into(&self, probe: &mut Probe) {
        let mut record = self.record.clone();
        record.detail = format!(
            "{} (asked {} ago; asked again every manifest interval, and whenever the connection's checks change state)",
            record.detail,
            crate::text::short_duration(self.at.elapsed())
        );
        probe.checks.push(record);
        probe.http = self.http.clone();
        probe.http_status = self.status;
    }
}

/// What a round asks of an endpoint beyond its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asking {
    /// dns → tcp → tls only: `GET /v2/` is sent only when the chain changed state since the last
    /// round (or none was ever sent); otherwise the last answer is carried.
    Connect,
    /// `GET /v2/` too (the manifest interval is due, or a pod's pull failed).
    Ping,
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
            slots: Mutex::new(HashMap::new()),
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
    pub async fn diagnose_image(&self, input: &str, pod_credentials: ImageCredentials) -> Report {
        self.diagnose_observed(input, false, pod_credentials, &|_, _| {})
            .await
    }

    /// `diagnose` as a person asks it of the agent: [`Scheduler::diagnose_image`], with the
    /// node's platform looked for in an image index when `with_platform` (as the local run does),
    /// telling `on_check` about every check as it completes.
    pub async fn diagnose_observed(
        &self,
        input: &str,
        with_platform: bool,
        pod_credentials: ImageCredentials,
        on_check: OnCheck<'_>,
    ) -> Report {
        let routed = match self.diagnoser.route_image(input) {
            Ok(plan) => plan,
            Err(report) => return *report,
        };
        // A failing pod's own pull secrets come first, as the kubelet tries them first.
        let credentials = self
            .diagnoser
            .pull
            .credentials
            .lookup(&routed.image)
            .await
            .after(pod_credentials);
        let platform = with_platform.then_some(&self.diagnoser.pull.platform);
        let slots = self.slots_for(&routed.route);
        let walked = self
            .diagnoser
            .walk_route(&routed.route, |index, endpoint| {
                // One slot per endpoint of the route, in its order.
                let slot = Arc::clone(&slots[index]);
                let (credentials, image) = (&credentials, &routed.image);
                async move {
                    let mut last = slot.lock().await;
                    // The semaphore is never closed; without a permit the chain is still bounded by its timeouts.
                    let _permit = self.permits.acquire().await.ok();
                    let checked = self
                        .diagnoser
                        .check_endpoint(endpoint, image, credentials, platform, on_check)
                        .await;
                    *last = Some(LastProbe {
                        at: Instant::now(),
                        asked: Asked::of(&checked.probe),
                        probe: Arc::clone(&checked.probe),
                    });
                    checked
                }
            })
            .await;
        routed.conclude(walked)
    }

    /// The runtime's own pull of `canary` (by digest: it resolves remotely and downloads nothing),
    /// with the credentials the registry last accepted for it (else the first the kubelet would
    /// try), as the kubelet hands them over.
    async fn runtime_check(
        &self,
        runtime: &RuntimeClient,
        canary: &ImageRef,
        answered: Option<&Offered>,
    ) -> CheckResult {
        let credentials = self.diagnoser.pull.credentials.lookup(canary).await;
        let auth = pull_auth(answered, &credentials);
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
        slot: &ProbeSlot,
        force: bool,
        asking: Asking,
        api: Option<&ManifestRequest>,
    ) -> (Arc<Probe>, Option<ApiProbe>) {
        let mut last = slot.lock().await;
        let fresh = |at: Instant| at.elapsed() < self.settings.interval / 2;
        if !force
            && api.is_none()
            && let Some(LastProbe { at, probe, asked }) = last.as_ref()
            && fresh(*at)
            && (asking == Asking::Connect || asked.as_ref().is_some_and(|a| fresh(a.at)))
        {
            return (Arc::clone(probe), None);
        }
        // The semaphore is never closed; without a permit the probe would still be bounded by its timeouts.
        let _permit = self.permits.acquire().await.ok();
        // Without a request due, `/v2/` is asked only when the chain's state may have changed: it
        // failed last time (a chain that fails again stops before any request), or nothing was asked.
        let carried = last
            .as_ref()
            .filter(|l| l.probe.connection_passed())
            .and_then(|l| l.asked.clone());
        let ask = match (asking, &carried) {
            (Asking::Connect, Some(_)) if !force => Ask::Connect,
            _ => Ask::Ping,
        };
        let (mut probe, api) = match api {
            None => (
                self.diagnoser
                    .probe_asking(endpoint, ask, &|_, _| {})
                    .await
                    .0,
                None,
            ),
            Some(request) => {
                let (probe, link) = self.diagnoser.probe_linked(endpoint, &|_, _| {}).await;
                let api = match (&probe.http, &link) {
                    // No platform: a HEAD only, which spends no pull quota.
                    (Some(http), Some(link)) => Some(
                        self.diagnoser
                            .registry_api(
                                endpoint,
                                link,
                                http,
                                &request.image,
                                &request.credentials,
                                None,
                                &|_, _| {},
                            )
                            .await,
                    ),
                    _ => None,
                };
                (probe, api)
            }
        };
        let asked = match (Asked::of(&probe), carried) {
            (Some(fresh), _) => Some(fresh),
            (None, Some(carried)) if probe.connection_passed() => {
                carried.carry_into(&mut probe);
                Some(carried)
            }
            _ => None,
        };
        let probe = Arc::new(probe);
        *last = Some(LastProbe {
            at: Instant::now(),
            probe: Arc::clone(&probe),
            asked,
        });
        (probe, api)
    }

    fn slots_for(&self, route: &Route) -> Vec<Arc<ProbeSlot>> {
        let mut slots = lock(&self.slots);
        slots.retain(|_, slot| slot.strong_count() > 0);
        route
            .endpoints
            .iter()
            .map(|endpoint| {
                // Everything that changes the probe's requests: where, how (TLS), and the API root
                // (a Harbor-style mirror serves /v2/dockerhub and /v2/ghcr on one host).
                let key = format!(
                    "{} {} {:?}",
                    endpoint.url(),
                    endpoint.api_path,
                    endpoint.tls
                );
                match slots.get(&key).and_then(Weak::upgrade) {
                    Some(slot) => slot,
                    None => {
                        let slot = Arc::new(ProbeSlot::default());
                        slots.insert(key, Arc::downgrade(&slot));
                        slot
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
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::registry_task::Timer;
    use super::supervisor::Tasks;
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
            extras: Default::default(),
            http_fallback: None,
        }
    }

    fn route(registry: &str, endpoints: Vec<Endpoint>) -> WatchedRegistry {
        WatchedRegistry {
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
        let routes: Vec<WatchedRegistry> = servers
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
        let routes: Vec<WatchedRegistry> = (0..4)
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
    fn probe_slots_are_shared_only_by_identical_requests() {
        let f = fixture(settings(Duration::from_secs(60)));
        let at = |api_path: &str| Endpoint {
            api_path: api_path.into(),
            ..endpoint(5000)
        };
        let route = route(
            "r.example",
            vec![at("/v2/dockerhub"), at("/v2/ghcr"), at("/v2/dockerhub")],
        );
        let slots = f.scheduler.slots_for(&route.route);
        assert!(
            !Arc::ptr_eq(&slots[0], &slots[1]),
            "two API roots on one host share a slot"
        );
        assert!(Arc::ptr_eq(&slots[0], &slots[2]), "one request, one slot");
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

    #[test]
    fn requests_leave_step_after_the_first_round() {
        let every = Duration::from_secs(300);
        let mut seconds = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            let mut timer = Timer::stepping_out(every, started);
            timer.reschedule(started);
            let second = timer.next - started;
            // Never sooner than a period: at most one request per interval.
            assert!(second >= every && second <= every * 2, "{second:?}");
            seconds.push(second);
            timer.reschedule(started);
            let then = timer.next - started;
            assert!(
                then >= every.mul_f64(0.9) && then <= every.mul_f64(1.1),
                "then ±10%: {then:?}"
            );
        }
        // Started together, spread over a whole period after the first round.
        let min = seconds.iter().min().copied().unwrap_or_default();
        let max = seconds.iter().max().copied().unwrap_or_default();
        assert!(max - min > every / 2, "{seconds:?}");
    }
}
