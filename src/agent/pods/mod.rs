//! The watch on this node's pods: their pull failures become metrics, trigger this node's own
//! checks of the image, and the combined diagnosis goes on the pod as an Event.

mod events;
pub mod failures;
mod series;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::ValueEnum;
use futures_util::StreamExt;
use kube::runtime::watcher;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::failures::{Failure, PodId, Tracker};
use self::series::PodSeries;
use self::watch::node_selector;
use crate::agent::health::Liveness;
use crate::agent::metrics::Metrics;
use crate::agent::scheduler::Scheduler;
use crate::agent::status::{PodFailure, StatusBoard};
use crate::reason::Reason;
use crate::report::Report;

/// `--kubernetes`: whether to watch this node's pods.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// On when running in a cluster (`KUBERNETES_SERVICE_HOST` is set).
    Auto,
    On,
    Off,
}

impl Mode {
    /// Whether the watch runs, given the process environment.
    pub fn enabled(self, env: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Mode::On => true,
            Mode::Off => false,
            Mode::Auto => env("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty()),
        }
    }
}

/// The API server cannot be reached with the credentials at hand.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "--kubernetes: no usable kubeconfig (KUBECONFIG, ~/.kube/config) nor in-cluster credentials: {0}"
    )]
    Config(#[from] kube::config::InferConfigError),
    #[error("--kubernetes: cannot build the API client: {0}")]
    Client(#[from] kube::Error),
}

/// A client for the API server: kubeconfig (`KUBECONFIG`, `~/.kube/config`) first, else the
/// in-cluster service account. `pullwatch_kubernetes_watch_up` turns 1 on each pod list or watch the
/// API server accepts.
pub async fn connect(metrics: Arc<Metrics>) -> Result<kube::Client, KubeError> {
    crate::trust::install_ring_provider();
    let mut config = kube::Config::infer().await?;
    // The watcher retries with its own jittered backoff and says so; the client's retry of 429/503
    // (for minutes) would hide an API server outage from `pullwatch_kubernetes_watch_up`.
    config.default_retry = false;
    let observe = watch::Observe::new(move || metrics.pods().set_watch_up(true));
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&observe)
        .build())
}

/// Diagnoses of pod images in flight at once (each is the whole chain along the route).
const MAX_DIAGNOSES: usize = 2;
/// An image's diagnosis is reused for this long: many pods with one image, or one pod's attempts
/// in quick succession, cost one check of the registry.
const DIAGNOSIS_TTL: Duration = Duration::from_secs(60);
/// The pod loop beats `/healthz`'s heart this often, API server or not; a loop quiet for
/// [`MAX_QUIET`] is stuck.
const BEAT: Duration = Duration::from_secs(5);
const MAX_QUIET: Duration = Duration::from_secs(60);
/// An Event POST that takes longer is abandoned (and retried with the image's next diagnosis).
const POST_TIMEOUT: Duration = Duration::from_secs(30);

/// A diagnosis started less than [`DIAGNOSIS_TTL`] ago (a clock set back makes none young).
fn young(started: SystemTime) -> bool {
    started.elapsed().is_ok_and(|age| age < DIAGNOSIS_TTL)
}

/// What the pod watch needs from the agent.
pub struct PodWatch {
    pub client: kube::Client,
    pub node: String,
    pub post_events: bool,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusBoard>,
    pub scheduler: Arc<Scheduler>,
    pub liveness: Arc<Liveness>,
}

/// A container, by pod UID and name.
type ContainerKey = (String, String);

/// The loop's state besides the tracker.
struct Books {
    series: PodSeries,
    /// Each image's last diagnosis and when it started.
    diagnosed: HashMap<String, (SystemTime, Arc<Report>)>,
    /// Diagnoses running, and the image of each.
    diagnoses: JoinSet<(String, SystemTime, Report)>,
    in_flight: HashMap<tokio::task::Id, String>,
    permits: Arc<Semaphore>,
    /// The reason each container's Event was posted (or is being posted) for.
    posted: HashMap<ContainerKey, Reason>,
    posts: JoinSet<(ContainerKey, Reason, Result<(), String>)>,
}

impl PodWatch {
    /// Watches until `cancel`. Errors are logged and retried by the watcher with backoff; the
    /// metrics keep the last known failures meanwhile.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), String> {
        let mut pods = Box::pin(watch::pods_on_node(self.client.clone(), &self.node));
        let mut tracker = Tracker::default();
        let mut books = Books {
            series: PodSeries::new(Arc::clone(&self.metrics)),
            diagnosed: HashMap::new(),
            diagnoses: JoinSet::new(),
            in_flight: HashMap::new(),
            permits: Arc::new(Semaphore::new(MAX_DIAGNOSES)),
            posted: HashMap::new(),
            posts: JoinSet::new(),
        };
        self.metrics.pods().set_watch_up(false);
        info!(
            node = self.node,
            selector = node_selector(&self.node),
            post_events = self.post_events,
            "watching this node's pods"
        );
        let heart = self.liveness.register("pod watch", MAX_QUIET);
        let mut beat = tokio::time::interval(BEAT);
        let outcome = loop {
            tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                _ = beat.tick() => heart.beat(),
                item = pods.next() => {
                    let Some(item) = item else {
                        break Err("the pod watch ended".to_string());
                    };
                    let touched = match item {
                        Ok(event) => self.apply(event, &mut tracker, &mut books),
                        Err(error) => {
                            self.metrics.pods().set_watch_up(false);
                            warn!(%error, "pod watch failed; retrying with backoff");
                            continue;
                        }
                    };
                    self.publish(&tracker, &mut books);
                    for (pod, container) in touched {
                        if let Some((_, failure)) = tracker.get(&pod.uid, &container) {
                            info!(
                                namespace = pod.namespace,
                                pod = pod.name,
                                container,
                                image = failure.image,
                                waiting_reason = failure.waiting_reason,
                                reason = failure.reason.as_str(),
                                attempts = failure.attempts,
                                "image pull failing"
                            );
                        }
                        self.follow_up(&tracker, &mut books, &pod, &container);
                    }
                }
                Some(joined) = books.diagnoses.join_next_with_id() => {
                    let (image, started, report) = match joined {
                        Ok((id, done)) => {
                            books.in_flight.remove(&id);
                            done
                        }
                        Err(error) => {
                            let image = books.in_flight.remove(&error.id());
                            warn!(image, %error, "a pod image diagnosis failed");
                            continue;
                        }
                    };
                    debug!(image, reason = report.reason.map(Reason::as_str), "pod image diagnosed");
                    books.diagnosed.insert(image.clone(), (started, Arc::new(report)));
                    let waiting: Vec<(PodId, String)> = tracker
                        .failures()
                        .into_iter()
                        .filter(|(_, _, f)| f.image == image)
                        .map(|(id, c, _)| (id.clone(), c.to_string()))
                        .collect();
                    // A container whose reason changed while this ran gets a diagnosis of its own.
                    for (pod, container) in waiting {
                        self.follow_up(&tracker, &mut books, &pod, &container);
                    }
                    self.publish(&tracker, &mut books);
                }
                Some(joined) = books.posts.join_next() => {
                    let Ok((key, reason, result)) = joined else { continue };
                    if let Err(error) = result {
                        warn!(%error, reason = reason.as_str(), "cannot post the diagnosis Event");
                        if books.posted.get(&key) == Some(&reason) {
                            books.posted.remove(&key);
                        }
                    }
                }
            }
        };
        self.metrics.pods().set_watch_up(false);
        outcome
    }

    /// Takes in one watch event; returns the containers that started failing or failed again.
    fn apply(
        &self,
        event: watcher::Event<k8s_openapi::api::core::v1::Pod>,
        tracker: &mut Tracker,
        books: &mut Books,
    ) -> Vec<(PodId, String)> {
        let now = SystemTime::now();
        let changes = match event {
            watcher::Event::Init => {
                tracker.relisting();
                return Vec::new();
            }
            watcher::Event::InitDone => {
                tracker.relisted();
                self.metrics.pods().set_watch_up(true);
                return Vec::new();
            }
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => tracker.apply(&pod, now),
            watcher::Event::Delete(pod) => {
                tracker.delete(&pod);
                return Vec::new();
            }
        };
        for (registry, reason) in &changes.attempts {
            books.series.attempt(registry, *reason);
        }
        changes.touched
    }

    /// Makes the gauges, the status and the Event books match the tracker.
    fn publish(&self, tracker: &Tracker, books: &mut Books) {
        let failures = tracker.failures();
        let series: Vec<series::ContainerSeries> = failures
            .iter()
            .map(|(id, container, f)| {
                (
                    id.namespace.clone(),
                    id.name.clone(),
                    container.to_string(),
                    f.registry.clone(),
                    f.reason,
                )
            })
            .collect();
        books.series.set(&series);
        books
            .posted
            .retain(|(uid, container), _| tracker.get(uid, container).is_some());
        books.diagnosed.retain(|image, (started, _)| {
            young(*started) || failures.iter().any(|f| &f.2.image == image)
        });
        let status = failures
            .iter()
            .map(|(id, container, f)| PodFailure {
                namespace: id.namespace.clone(),
                pod: id.name.clone(),
                container: container.to_string(),
                failure: Failure::clone(f),
                diagnosis: books
                    .diagnosed
                    .get(&f.image)
                    .map(|(_, report)| Report::clone(report)),
            })
            .collect();
        self.status.set_pod_failures(status);
    }

    /// A container started failing or failed again: check its registry and image from here (unless
    /// a fresh diagnosis exists), and post its Event once the diagnosis is there.
    fn follow_up(&self, tracker: &Tracker, books: &mut Books, pod: &PodId, container: &str) {
        let Some((_, failure)) = tracker.get(&pod.uid, container) else {
            return;
        };
        let fresh = books
            .diagnosed
            .get(&failure.image)
            .is_some_and(|(started, _)| *started >= failure.reason_since && young(*started));
        if fresh {
            self.post_if_new(tracker, books, &pod.uid, container);
        } else if !books.in_flight.values().any(|i| *i == failure.image) {
            let image = failure.image.clone();
            let scheduler = Arc::clone(&self.scheduler);
            let permits = Arc::clone(&books.permits);
            // The registry's own round too, so its metrics tell at once whether all is down.
            self.scheduler.check_now(&failure.registry);
            let task = books.diagnoses.spawn(async move {
                // The semaphore is never closed; without a permit the chain is still bounded by its timeouts.
                let _permit = permits.acquire_owned().await.ok();
                let started = SystemTime::now();
                let report = scheduler.diagnose_image(&image).await;
                (image, started, report)
            });
            books.in_flight.insert(task.id(), failure.image.clone());
        }
    }

    /// Posts the container's Event unless one was posted for its current reason.
    fn post_if_new(&self, tracker: &Tracker, books: &mut Books, uid: &str, container: &str) {
        if !self.post_events {
            return;
        }
        let Some((pod, failure)) = tracker.get(uid, container) else {
            return;
        };
        let Some((_, report)) = books
            .diagnosed
            .get(&failure.image)
            .filter(|(started, _)| *started >= failure.reason_since)
        else {
            return;
        };
        let key = (uid.to_string(), container.to_string());
        if books.posted.get(&key) == Some(&failure.reason) {
            return;
        }
        books.posted.insert(key.clone(), failure.reason);
        let note = events::note(&self.node, container, failure, report);
        info!(
            namespace = pod.namespace,
            pod = pod.name,
            container,
            reason = failure.reason.as_str(),
            cause = events::cause(failure, report).as_str(),
            "posting the pull diagnosis"
        );
        let (client, node, pod, kind) = (
            self.client.clone(),
            self.node.clone(),
            pod.clone(),
            failure.kind,
        );
        let container = container.to_string();
        let reason = failure.reason;
        books.posts.spawn(async move {
            let posted = tokio::time::timeout(
                POST_TIMEOUT,
                events::post(client, &node, &pod, kind, &container, note),
            )
            .await;
            let result = match posted {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no answer within {}s", POST_TIMEOUT.as_secs())),
            };
            (key, reason, result)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_means_in_cluster() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(Mode::Auto.enabled(env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")])));
        assert!(!Mode::Auto.enabled(env(&[])));
        assert!(!Mode::Auto.enabled(env(&[("KUBERNETES_SERVICE_HOST", "")])));
        assert!(Mode::On.enabled(env(&[])));
        assert!(!Mode::Off.enabled(env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")])));
    }
}
