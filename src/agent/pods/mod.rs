//! The watch on this node's pods: their pull failures become metrics, trigger this node's own
//! checks of the image, and the combined diagnosis goes on the pod as an Event.

pub mod api;
mod events;
pub mod failures;
pub mod kubeconfig;
pub mod object;
pub mod secrets;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::ValueEnum;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::api::{ApiClient, ApiError};
use self::failures::{ContainerRef, Failure, PodId, Tracker};
use self::watch::{PodEvent, node_selector};
use crate::agent::health::Liveness;
use crate::agent::metrics::{ContainerLabels, Metrics, PullLabels};
use crate::agent::scheduler::Scheduler;
use crate::agent::status::{PodFailure, StatusBoard};
use crate::credentials::{ImageCredentials, Offered, Source, SourceFailure};
use crate::reason::Reason;
use crate::reference::ImageRef;
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
    Config(String),
    #[error("--kubernetes: cannot build the API client: {0}")]
    Client(#[from] ApiError),
}

/// A client for the API server: kubeconfig (`KUBECONFIG`, `~/.kube/config`) first, else the
/// in-cluster service account. Nothing is retried inside it: the watch retries with its own
/// jittered backoff and says so in `pullwatch_kubernetes_watch_up`.
pub fn connect() -> Result<ApiClient, KubeError> {
    let config = kubeconfig::infer().map_err(KubeError::Config)?;
    Ok(ApiClient::new(config)?)
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
/// One GET of a pull secret or service account that takes longer is a failed source.
const SECRET_TIMEOUT: Duration = Duration::from_secs(5);
/// Event POSTs in flight at once: 500 new failures must not open 500 connections to the API
/// server (each kept idle in the client's pool afterwards, ~20 KiB apiece).
const MAX_POSTS: usize = 4;
/// An Event POST that takes longer is abandoned (and retried with the image's next diagnosis).
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// The metrics and the status follow the tracker at most this late: events that come together
/// (a list of thousands of pods) cost one update, not one each (which was quadratic).
const PUBLISH_DELAY: Duration = Duration::from_millis(200);

/// A diagnosis started less than [`DIAGNOSIS_TTL`] ago (a clock set back makes none young).
fn young(started: SystemTime) -> bool {
    started.elapsed().is_ok_and(|age| age < DIAGNOSIS_TTL)
}

/// What the pod watch needs from the agent.
pub struct PodWatch {
    pub client: ApiClient,
    pub node: String,
    pub post_events: bool,
    /// `--pull-secrets`: read a failing pod's pull secrets for its diagnosis.
    pub pull_secrets: bool,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusBoard>,
    pub scheduler: Arc<Scheduler>,
    pub liveness: Arc<Liveness>,
}

/// A container, by pod UID and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ContainerKey {
    uid: String,
    container: String,
}

/// This node's diagnosis of an image, and when it started (a diagnosis started before a failure's
/// reason changed says nothing about it).
struct Diagnosis {
    /// The image, and with `--pull-secrets` the pod's secrets: see [`PodWatch::diagnosis_key`].
    key: String,
    /// The image alone: containers of other images are passed over without making their key.
    image: String,
    started: SystemTime,
    report: Arc<Report>,
}

/// How posting a container's Event for `reason` ended.
struct Posted {
    key: ContainerKey,
    reason: Reason,
    result: Result<(), String>,
}

/// What the loop does about the failures the tracker holds besides their series: the diagnoses of
/// their images, and their Events.
struct FollowUps {
    /// Each image's last diagnosis (per set of pull secrets, with `--pull-secrets`).
    diagnosed: HashMap<String, Diagnosis>,
    /// Diagnoses running, and the key of each.
    diagnoses: JoinSet<Diagnosis>,
    running: HashMap<tokio::task::Id, String>,
    /// The keys of `running`, to ask "is one running?" without a search.
    in_flight: HashSet<String>,
    permits: Arc<Semaphore>,
    /// The reason each container's Event was posted (or is being posted) for.
    posted: HashMap<ContainerKey, Reason>,
    posts: JoinSet<Posted>,
    post_permits: Arc<Semaphore>,
}

impl FollowUps {
    /// A diagnosis task ended: its key, no longer in flight.
    fn finished(&mut self, id: tokio::task::Id) -> Option<String> {
        let key = self.running.remove(&id)?;
        self.in_flight.remove(&key);
        Some(key)
    }
}

impl PodWatch {
    /// Watches until `cancel`. Errors are logged and retried by the watcher with backoff; the
    /// metrics keep the last known failures meanwhile.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), String> {
        let metrics = Arc::clone(&self.metrics);
        let on_ok = Arc::new(move || metrics.pods().set_watch_up(true));
        let mut pods = Box::pin(watch::pods_on_node(self.client.clone(), &self.node, on_ok));
        let mut tracker = Tracker::default();
        let mut follow_ups = FollowUps {
            diagnosed: HashMap::new(),
            diagnoses: JoinSet::new(),
            running: HashMap::new(),
            in_flight: HashSet::new(),
            permits: Arc::new(Semaphore::new(MAX_DIAGNOSES)),
            posted: HashMap::new(),
            posts: JoinSet::new(),
            post_permits: Arc::new(Semaphore::new(MAX_POSTS)),
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
        // When the tracker changed and the metrics and status do not show it yet.
        let mut publish_at: Option<tokio::time::Instant> = None;
        let outcome = loop {
            let publish_due = publish_at.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                _ = beat.tick() => heart.beat(),
                _ = tokio::time::sleep_until(publish_due), if publish_at.is_some() => {
                    publish_at = None;
                    self.publish(&tracker, &mut follow_ups);
                }
                item = pods.next() => {
                    let Some(item) = item else {
                        break Err("the pod watch ended".to_string());
                    };
                    let touched = match item {
                        Ok(event) => self.apply(event, &mut tracker, &follow_ups),
                        Err(error) => {
                            self.metrics.pods().set_watch_up(false);
                            warn!(%error, "pod watch failed; retrying with backoff");
                            continue;
                        }
                    };
                    publish_at.get_or_insert_with(|| tokio::time::Instant::now() + PUBLISH_DELAY);
                    for ContainerRef { pod, container } in touched {
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
                        self.follow_up(&tracker, &mut follow_ups, &pod, &container);
                    }
                }
                Some(joined) = follow_ups.diagnoses.join_next_with_id() => {
                    let diagnosis = match joined {
                        Ok((id, done)) => {
                            follow_ups.finished(id);
                            done
                        }
                        Err(error) => {
                            let key = follow_ups.finished(error.id());
                            warn!(key, %error, "a pod image diagnosis failed");
                            continue;
                        }
                    };
                    let key = diagnosis.key.clone();
                    let image = diagnosis.image.clone();
                    debug!(key, reason = diagnosis.report.reason.map(Reason::as_str), "pod image diagnosed");
                    follow_ups.diagnosed.insert(key.clone(), diagnosis);
                    let waiting: Vec<ContainerRef> = tracker
                        .failures()
                        .into_iter()
                        .filter(|f| f.failure.image == image)
                        .filter(|f| self.diagnosis_key(f.pod, &f.failure.image) == key)
                        .map(|f| ContainerRef {
                            pod: f.pod.clone(),
                            container: f.container.to_string(),
                        })
                        .collect();
                    // A container whose reason changed while this ran gets a diagnosis of its own.
                    // The status and metrics show the diagnosis before its Events are posted (one
                    // update per diagnosed image: these come one image at a time).
                    publish_at = None;
                    self.publish(&tracker, &mut follow_ups);
                    for ContainerRef { pod, container } in waiting {
                        self.follow_up(&tracker, &mut follow_ups, &pod, &container);
                    }
                }
                Some(joined) = follow_ups.posts.join_next() => {
                    let Ok(Posted { key, reason, result }) = joined else { continue };
                    if let Err(error) = result {
                        warn!(%error, reason = reason.as_str(), "cannot post the diagnosis Event");
                        if follow_ups.posted.get(&key) == Some(&reason) {
                            follow_ups.posted.remove(&key);
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
        event: PodEvent,
        tracker: &mut Tracker,
        follow_ups: &FollowUps,
    ) -> Vec<ContainerRef> {
        let now = SystemTime::now();
        let changes = match event {
            PodEvent::Init => {
                tracker.relisting();
                return Vec::new();
            }
            PodEvent::InitDone => {
                tracker.relisted();
                self.metrics.pods().set_watch_up(true);
                return Vec::new();
            }
            PodEvent::InitApply(pod) | PodEvent::Apply(pod) => tracker.apply(&pod, now),
            PodEvent::Delete(pod) => {
                tracker.delete(&pod);
                return Vec::new();
            }
        };
        for attempt in &changes.attempts {
            let reason = self.best_cause(follow_ups, &attempt.pod, &attempt.image, attempt.reason);
            self.metrics
                .pods()
                .count_attempt(&PullLabels::new(&attempt.registry, reason));
        }
        changes.touched
    }

    /// Makes the gauges, the status and the follow-ups match the tracker.
    fn publish(&self, tracker: &Tracker, follow_ups: &mut FollowUps) {
        let failures = tracker.failures();
        let keys: Vec<String> = failures
            .iter()
            .map(|f| self.diagnosis_key(f.pod, &f.failure.image))
            .collect();
        let failing: Vec<ContainerLabels> = failures
            .iter()
            .map(|f| {
                ContainerLabels::new(
                    &f.pod.namespace,
                    &f.pod.name,
                    f.container,
                    &f.failure.registry,
                    self.best_cause(follow_ups, f.pod, &f.failure.image, f.failure.reason),
                )
            })
            .collect();
        self.metrics.pods().set_failing(&failing);
        follow_ups
            .posted
            .retain(|key, _| tracker.get(&key.uid, &key.container).is_some());
        failures::shrink(&mut follow_ups.posted);
        let wanted: HashSet<&String> = keys.iter().collect();
        follow_ups
            .diagnosed
            .retain(|key, diagnosis| young(diagnosis.started) || wanted.contains(key));
        failures::shrink(&mut follow_ups.diagnosed);
        let status = failures
            .iter()
            .zip(&keys)
            .map(|(f, key)| PodFailure {
                namespace: f.pod.namespace.clone(),
                pod: f.pod.name.clone(),
                container: f.container.to_string(),
                failure: Failure::clone(f.failure),
                diagnosis: follow_ups
                    .diagnosed
                    .get(key)
                    .map(|diagnosis| Arc::clone(&diagnosis.report)),
            })
            .collect();
        self.status.set_pod_failures(status);
    }

    /// A container started failing or failed again: check its registry and image from here (unless
    /// a fresh diagnosis exists), and post its Event once the diagnosis is there.
    fn follow_up(
        &self,
        tracker: &Tracker,
        follow_ups: &mut FollowUps,
        pod: &PodId,
        container: &str,
    ) {
        let Some((_, failure)) = tracker.get(&pod.uid, container) else {
            return;
        };
        let key = self.diagnosis_key(pod, &failure.image);
        let fresh = follow_ups
            .diagnosed
            .get(&key)
            .is_some_and(|d| d.started >= failure.reason_since && young(d.started));
        if fresh {
            self.post_if_new(tracker, follow_ups, &pod.uid, container);
        } else if !follow_ups.in_flight.contains(&key) {
            let image = failure.image.clone();
            let scheduler = Arc::clone(&self.scheduler);
            let permits = Arc::clone(&follow_ups.permits);
            // Only the failing pod's own secrets, only now, and dropped with the diagnosis.
            let secrets = self
                .pull_secrets
                .then(|| (self.client.clone(), pod.secrets_pod()));
            // The registry's own round too, so its metrics tell at once whether all is down.
            self.scheduler.check_now(&failure.registry);
            let task_key = key.clone();
            let task = follow_ups.diagnoses.spawn(async move {
                // The semaphore is never closed; without a permit the chain is still bounded by its timeouts.
                let _permit = permits.acquire_owned().await.ok();
                let started = SystemTime::now();
                let pod_credentials = match secrets {
                    Some((client, pod)) => pod_credentials(&client, &pod, &image).await,
                    None => ImageCredentials::default(),
                };
                let report = Arc::new(scheduler.diagnose_image(&image, pod_credentials).await);
                Diagnosis {
                    key: task_key,
                    image,
                    started,
                    report,
                }
            });
            follow_ups.in_flight.insert(key.clone());
            follow_ups.running.insert(task.id(), key);
        }
    }

    /// The cause the failure metrics carry: the kubelet's message's when it has one, else this
    /// node's own diagnosis of the image (a bare `Back-off pulling image` must not stay `unknown`
    /// once the node found, say, `dns_servfail`).
    fn best_cause(&self, follow_ups: &FollowUps, pod: &PodId, image: &str, said: Reason) -> Reason {
        let found = follow_ups
            .diagnosed
            .get(&self.diagnosis_key(pod, image))
            .and_then(|d| d.report.reason);
        events::best_cause(said, found)
    }

    /// What a diagnosis is for: the image, and with `--pull-secrets` the pod's secret names too
    /// (two pods with one image but other secrets may get other verdicts).
    fn diagnosis_key(&self, pod: &PodId, image: &str) -> String {
        if !self.pull_secrets {
            return image.to_string();
        }
        let names = &pod.pull_secrets;
        format!(
            "{image} with {}/{:?} (service account {:?})",
            pod.namespace, names.secrets, names.service_account
        )
    }

    /// Posts the container's Event unless one was posted for its current reason.
    fn post_if_new(
        &self,
        tracker: &Tracker,
        follow_ups: &mut FollowUps,
        uid: &str,
        container: &str,
    ) {
        if !self.post_events {
            return;
        }
        let Some((pod, failure)) = tracker.get(uid, container) else {
            return;
        };
        let Some(Diagnosis { report, .. }) = follow_ups
            .diagnosed
            .get(&self.diagnosis_key(pod, &failure.image))
            .filter(|d| d.started >= failure.reason_since)
        else {
            return;
        };
        let key = ContainerKey {
            uid: uid.to_string(),
            container: container.to_string(),
        };
        if follow_ups.posted.get(&key) == Some(&failure.reason) {
            return;
        }
        follow_ups.posted.insert(key.clone(), failure.reason);
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
        let permits = Arc::clone(&follow_ups.post_permits);
        follow_ups.posts.spawn(async move {
            // The semaphore is never closed; the wait for a permit is not the POST's time.
            let _permit = permits.acquire_owned().await.ok();
            // Boxed: hundreds of posts may wait for a permit at once, each task then holding
            // only its note, not the request's KiB of state.
            let posted = Box::pin(events::post(
                &client,
                &node,
                &pod,
                kind,
                &container,
                note,
                POST_TIMEOUT,
            ))
            .await;
            let result = posted.map_err(|error| error.to_string());
            Posted {
                key,
                reason,
                result,
            }
        });
    }
}

/// The pull secrets of a failing pod as credentials for `image`: the pod's own first, then its
/// service account's; a secret that cannot be read or used is a failed source, named.
async fn pod_credentials(client: &ApiClient, pod: &object::Pod, image: &str) -> ImageCredentials {
    let read = secrets::read_pull_secrets(client, pod, SECRET_TIMEOUT).await;
    let Ok(image) = ImageRef::parse(image) else {
        return ImageCredentials::default();
    };
    let name = |secret: &str, from: &secrets::Source| match from {
        secrets::Source::Pod => secret.to_string(),
        secrets::Source::ServiceAccount { name } => format!("{secret} (of service account {name})"),
    };
    let offered = read
        .keyrings
        .iter()
        .flat_map(|found| {
            // Every match in each secret, most specific key first, as the kubelet's keyring.
            let source = Source::PullSecret(name(&found.secret, &found.source));
            found
                .keyring
                .lookup_all(image.registry(), image.repository())
                .into_iter()
                .map(move |credential| Offered {
                    credential: credential.clone(),
                    source: source.clone(),
                })
        })
        .collect();
    let failures = read
        .failures
        .iter()
        .map(|failed| SourceFailure {
            source: Source::PullSecret(name(&failed.secret, &failed.source)),
            message: failed.message.clone(),
        })
        .collect();
    let looked_in = read
        .keyrings
        .iter()
        .map(|found| format!("pull secret {}", found.secret))
        .collect();
    ImageCredentials {
        offered,
        failures,
        looked_in,
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
