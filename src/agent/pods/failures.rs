//! Pod statuses → pull failures: which containers wait on an image the kubelet could not get, the
//! reason their message gives (remembered across `Back-off pulling image`), and each failed attempt once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use super::object::{ContainerStatus, Pod};
use serde::{Deserialize, Serialize};

use crate::reason::{Reason, classify_runtime_message};
use crate::reference::ImageRef;

/// The kubelet's waiting reason while it backs off before the next attempt.
pub const BACK_OFF: &str = "ImagePullBackOff";

/// Waiting reasons that mean the container cannot get its image (kubelet `images` package).
pub const PULL_WAITING_REASONS: [&str; 7] = [
    "ErrImagePull",
    BACK_OFF,
    "InvalidImageName",
    "ErrImageNeverPull",
    "ImageInspectError",
    "RegistryUnavailable",
    "SignatureValidationFailed",
];

/// Bytes of the kubelet's message kept per container (status and Events show it, labels never).
pub const MAX_MESSAGE: usize = 512;

/// Where the container is declared in the pod spec; the Event's `fieldPath` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerKind {
    Container,
    Init,
    Ephemeral,
}

impl ContainerKind {
    /// The `fieldPath` of the container, as the kubelet's own events write it.
    pub fn field_path(self, container: &str) -> String {
        let list = match self {
            ContainerKind::Container => "containers",
            ContainerKind::Init => "initContainers",
            ContainerKind::Ephemeral => "ephemeralContainers",
        };
        format!("spec.{list}{{{container}}}")
    }
}

/// One container of a pod waiting on an image, as the pod's status says right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub kind: ContainerKind,
    pub container: String,
    /// As the pod spec writes it.
    pub image: String,
    /// One of [`PULL_WAITING_REASONS`].
    pub waiting_reason: String,
    pub message: String,
}

/// The containers of `pod` (regular, init, ephemeral) waiting in a pull-failure reason.
pub fn pull_waits(pod: &Pod) -> Vec<Waiting> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    // The spec's images by kind and name, looked up once per status (a search of the spec per
    // status made a pod with thousands of containers quadratic).
    let mut spec_images: HashMap<(ContainerKind, &str), Option<&str>> = HashMap::new();
    if let Some(spec) = pod.spec.as_ref() {
        let regular = spec
            .containers
            .iter()
            .map(|c| (ContainerKind::Container, &c.name, &c.image));
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| (ContainerKind::Init, &c.name, &c.image));
        let ephemeral = spec
            .ephemeral_containers
            .iter()
            .flatten()
            .map(|c| (ContainerKind::Ephemeral, &c.name, &c.image));
        for (kind, name, image) in regular.chain(init).chain(ephemeral) {
            // The first of a name, as a search would find.
            spec_images
                .entry((kind, name.as_str()))
                .or_insert(image.as_deref());
        }
    }
    let spec_image = |kind: ContainerKind, name: &str| -> Option<String> {
        spec_images
            .get(&(kind, name))
            .copied()
            .flatten()
            .map(str::to_string)
    };
    let lists: [(ContainerKind, &Option<Vec<ContainerStatus>>); 3] = [
        (ContainerKind::Init, &status.init_container_statuses),
        (ContainerKind::Container, &status.container_statuses),
        (
            ContainerKind::Ephemeral,
            &status.ephemeral_container_statuses,
        ),
    ];
    let mut waits = Vec::new();
    for (kind, statuses) in lists {
        for container in statuses.iter().flatten() {
            let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let Some(reason) = waiting
                .reason
                .as_deref()
                .filter(|r| PULL_WAITING_REASONS.contains(r))
            else {
                continue;
            };
            waits.push(Waiting {
                kind,
                container: container.name.clone(),
                image: spec_image(kind, &container.name).unwrap_or_else(|| container.image.clone()),
                waiting_reason: reason.to_string(),
                message: crate::text::peer(
                    waiting.message.as_deref().unwrap_or_default(),
                    MAX_MESSAGE,
                ),
            });
        }
    }
    waits
}

/// The reason for a waiting container: its message's, else (while backing off) the cause of the
/// last failed attempt, else what the waiting reason alone says.
pub fn reason_of(waiting_reason: &str, message: &str, remembered: Option<Reason>) -> Reason {
    match classify_runtime_message(message) {
        Reason::Unknown if waiting_reason == BACK_OFF => remembered.unwrap_or(Reason::Unknown),
        Reason::Unknown => match waiting_reason {
            "InvalidImageName" => Reason::InvalidReference,
            "ErrImageNeverPull" => Reason::NeverPull,
            "ImageInspectError" => Reason::RuntimeError,
            "RegistryUnavailable" => Reason::RegistryUnavailable,
            "SignatureValidationFailed" => Reason::SignatureInvalid,
            _ => Reason::Unknown,
        },
        reason => reason,
    }
}

/// The registry label of an image: its normalised registry, empty when the name does not parse.
pub fn registry_of(image: &str) -> String {
    ImageRef::parse(image)
        .map(|i| i.registry().to_string())
        .unwrap_or_default()
}

/// A pod, as its identity is needed later (Events, labels, its pull secrets).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId {
    pub namespace: String,
    pub name: String,
    /// Kept for the Event's reference; never a label.
    pub uid: String,
    /// The names its spec gives for pull credentials (read only with `--pull-secrets`).
    pub pull_secrets: PullSecretNames,
}

/// A pod's `imagePullSecrets` and service account, by name: what the kubelet would read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PullSecretNames {
    pub secrets: Vec<String>,
    pub service_account: Option<String>,
}

impl PodId {
    pub fn of(pod: &Pod) -> Option<PodId> {
        let spec = pod.spec.as_ref();
        Some(PodId {
            namespace: pod.metadata.namespace.clone()?,
            name: pod.metadata.name.clone()?,
            uid: pod.metadata.uid.clone()?,
            pull_secrets: PullSecretNames {
                secrets: spec
                    .and_then(|s| s.image_pull_secrets.as_ref())
                    .map(|refs| refs.iter().map(|r| r.name.clone()).collect())
                    .unwrap_or_default(),
                service_account: spec.and_then(|s| {
                    s.service_account_name
                        .clone()
                        .or_else(|| s.service_account.clone())
                }),
            },
        })
    }

    /// The pod as far as reading its pull secrets needs it.
    pub fn secrets_pod(&self) -> Pod {
        use super::object::{LocalObjectReference, ObjectMeta, PodSpec};
        Pod {
            metadata: ObjectMeta {
                namespace: Some(self.namespace.clone()),
                name: Some(self.name.clone()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                image_pull_secrets: Some(
                    self.pull_secrets
                        .secrets
                        .iter()
                        .map(|name| LocalObjectReference { name: name.clone() })
                        .collect(),
                ),
                service_account_name: self.pull_secrets.service_account.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A container failing to get its image now, with what is known about it; serialized as the
/// failure's fields of `/api/v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    #[serde(skip)]
    pub kind: ContainerKind,
    /// As the pod spec writes it.
    pub image: String,
    pub registry: String,
    /// The kubelet's: `ErrImagePull`, `ImagePullBackOff`, ….
    pub waiting_reason: String,
    /// The kubelet's message (capped).
    pub message: String,
    /// The reason the kubelet's message gives (or gave, before the back-off).
    pub reason: Reason,
    /// Failed attempts seen since it started failing.
    pub attempts: u64,
    /// When pullwatch first saw it failing (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339_seconds")]
    pub since: SystemTime,
    /// When `reason` took its current value: a diagnosis started before says nothing about it.
    #[serde(skip)]
    pub reason_since: SystemTime,
}

fn rfc3339_seconds<S: serde::Serializer>(at: &SystemTime, out: S) -> Result<S::Ok, S::Error> {
    out.collect_str(&humantime::format_rfc3339_seconds(*at))
}

/// What one observation changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// A failed attempt each.
    pub attempts: Vec<Attempt>,
    /// Containers that started failing, failed again, or changed reason: their image wants checking.
    pub touched: Vec<ContainerRef>,
}

/// One failed pull attempt: whose, of what, from where, and why it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub pod: PodId,
    pub image: String,
    pub registry: String,
    pub reason: Reason,
}

/// One container of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub pod: PodId,
    pub container: String,
}

/// A container failing now, as [`Tracker::failures`] lists it.
#[derive(Clone, Copy, Debug)]
pub struct FailingContainer<'a> {
    pub pod: &'a PodId,
    pub container: &'a str,
    pub failure: &'a Failure,
}

/// The failing containers of every pod on the node, updated from watch events.
#[derive(Default)]
pub struct Tracker {
    pods: HashMap<String, (PodId, BTreeMap<String, Failure>)>,
    /// Pod UIDs seen since the current relist began; `None` outside a relist.
    relisting: Option<BTreeSet<String>>,
}

impl Tracker {
    /// Takes in a pod's current status (added or modified).
    pub fn apply(&mut self, pod: &Pod, now: SystemTime) -> Changes {
        let mut changes = Changes::default();
        let Some(id) = PodId::of(pod) else {
            return changes;
        };
        if let Some(seen) = self.relisting.as_mut() {
            seen.insert(id.uid.clone());
        }
        let before = self
            .pods
            .remove(&id.uid)
            .map(|(_, failures)| failures)
            .unwrap_or_default();
        let mut after = BTreeMap::new();
        for waiting in pull_waits(pod) {
            let previous = before.get(&waiting.container);
            let failure = next_state(previous, &waiting, now);
            let attempt = is_attempt(previous, &waiting);
            if attempt {
                changes.attempts.push(Attempt {
                    pod: id.clone(),
                    image: failure.image.clone(),
                    registry: failure.registry.clone(),
                    reason: failure.reason,
                });
            }
            if attempt || previous.is_none_or(|p| p.reason != failure.reason) {
                changes.touched.push(ContainerRef {
                    pod: id.clone(),
                    container: waiting.container.clone(),
                });
            }
            after.insert(waiting.container, failure);
        }
        if !after.is_empty() {
            self.pods.insert(id.uid.clone(), (id, after));
        }
        changes
    }

    /// Forgets a deleted pod.
    pub fn delete(&mut self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.pods.remove(uid);
            shrink(&mut self.pods);
        }
    }

    /// How many pods have a failing container (the bookkeeping's size).
    pub fn pods(&self) -> usize {
        self.pods.len()
    }

    /// A relist begins: pods not listed again until [`Tracker::relisted`] are gone.
    pub fn relisting(&mut self) {
        self.relisting = Some(BTreeSet::new());
    }

    /// The relist is complete: forgets the pods it did not list.
    pub fn relisted(&mut self) {
        if let Some(seen) = self.relisting.take() {
            self.pods.retain(|uid, _| seen.contains(uid));
            shrink(&mut self.pods);
        }
    }

    /// Every failing container now, ordered by namespace, pod, container.
    pub fn failures(&self) -> Vec<FailingContainer<'_>> {
        let mut all: Vec<FailingContainer<'_>> = self
            .pods
            .values()
            .flat_map(|(pod, failures)| {
                failures
                    .iter()
                    .map(move |(container, failure)| FailingContainer {
                        pod,
                        container,
                        failure,
                    })
            })
            .collect();
        all.sort_by(|a, b| (a.pod, a.container).cmp(&(b.pod, b.container)));
        all
    }

    /// One container's failure, if it is failing now.
    pub fn get(&self, uid: &str, container: &str) -> Option<(&PodId, &Failure)> {
        let (id, failures) = self.pods.get(uid)?;
        failures.get(container).map(|f| (id, f))
    }
}

/// Gives memory back when a map holds far fewer entries than it has room for: a node whose
/// thousands of failing pods went away must not keep their bookkeeping's size.
pub(crate) fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

/// A failed attempt shows as a pull-failure reason other than the back-off, entered from any other
/// state or with a new message: the kubelet posts `ErrImagePull` (or `RegistryUnavailable`, …)
/// after each attempt and `ImagePullBackOff` while it waits. Repeating the same status is not one.
fn is_attempt(previous: Option<&Failure>, now: &Waiting) -> bool {
    if now.waiting_reason == BACK_OFF {
        return false;
    }
    previous.is_none_or(|p| p.waiting_reason != now.waiting_reason || p.message != now.message)
}

fn next_state(previous: Option<&Failure>, now: &Waiting, at: SystemTime) -> Failure {
    let remembered = previous.map(|p| p.reason).filter(|r| *r != Reason::Unknown);
    let attempts = previous.map_or(0, |p| p.attempts) + u64::from(is_attempt(previous, now));
    let reason = reason_of(&now.waiting_reason, &now.message, remembered);
    Failure {
        kind: now.kind,
        registry: registry_of(&now.image),
        image: now.image.clone(),
        waiting_reason: now.waiting_reason.clone(),
        message: now.message.clone(),
        reason,
        attempts,
        since: previous.map_or(at, |p| p.since),
        reason_since: match previous {
            Some(p) if p.reason == reason => p.reason_since,
            _ => at,
        },
    }
}

pub use crate::text::clip;

#[cfg(test)]
mod tests {
    use super::*;

    /// Real containerd messages (tests/fixtures/containerd_errors.json), as the kubelet wraps a
    /// CRI error into the container status: `rpc error: code = … desc = <containerd message>`.
    const NXDOMAIN: &str = "rpc error: code = Unknown desc = failed to pull and unpack image \"missing.test/app:1.0\": failed to resolve reference \"missing.test/app:1.0\": failed to do request: Head \"https://missing.test/v2/app/manifests/1.0\": dial tcp: lookup missing.test on 10.254.239.177:53: no such host";
    const NOT_FOUND: &str = "rpc error: code = NotFound desc = failed to pull and unpack image \"127.0.0.1:41217/app:9.9\": failed to resolve reference \"127.0.0.1:41217/app:9.9\": 127.0.0.1:41217/app:9.9: not found";
    const REFUSED: &str = "rpc error: code = Unknown desc = failed to pull and unpack image \"127.0.0.1:36015/app:1.0\": failed to resolve reference \"127.0.0.1:36015/app:1.0\": failed to do request: Head \"http://127.0.0.1:36015/v2/app/manifests/1.0\": dial tcp 127.0.0.1:36015: connect: connection refused";
    /// The kubelet's own message while backing off (pkg/kubelet/images/image_manager.go).
    const BACK_OFF_MESSAGE: &str = "Back-off pulling image \"missing.test/app:1.0\"";

    fn pod(uid: &str, statuses: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("pod-{uid}"), "namespace": "team", "uid": uid},
            "spec": {
                "nodeName": "node-1",
                "initContainers": [{"name": "init", "image": "127.0.0.1:41217/app:9.9"}],
                "containers": [
                    {"name": "app", "image": "missing.test/app:1.0"},
                    {"name": "side", "image": "127.0.0.1:36015/app:1.0"}
                ],
                "ephemeralContainers": [{"name": "debug", "image": "Team/App:1.0"}]
            },
            "status": statuses
        }))
        .expect("a valid Pod")
    }

    fn waiting(name: &str, reason: &str, message: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "image": "status-image", "imageID": "", "ready": false,
            "restartCount": 0, "started": false,
            "state": {"waiting": {"reason": reason, "message": message}}
        })
    }

    fn running(name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "image": "x", "imageID": "sha256:0", "ready": true, "restartCount": 0,
            "started": true, "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}
        })
    }

    #[test]
    fn statuses_become_pull_waits() {
        struct Case {
            name: &'static str,
            status: serde_json::Value,
            want: Vec<(ContainerKind, &'static str, &'static str, &'static str)>,
        }
        let cases = [
            Case {
                name: "no status yet",
                status: serde_json::json!({"phase": "Pending"}),
                want: vec![],
            },
            Case {
                name: "every kind of container, pull reasons only",
                status: serde_json::json!({
                    "phase": "Pending",
                    "initContainerStatuses": [waiting("init", "ErrImagePull", NOT_FOUND)],
                    "containerStatuses": [
                        waiting("app", "ImagePullBackOff", BACK_OFF_MESSAGE),
                        waiting("side", "ContainerCreating", "")
                    ],
                    "ephemeralContainerStatuses": [waiting("debug", "InvalidImageName", "")]
                }),
                want: vec![
                    (
                        ContainerKind::Init,
                        "init",
                        "ErrImagePull",
                        "127.0.0.1:41217/app:9.9",
                    ),
                    (
                        ContainerKind::Container,
                        "app",
                        "ImagePullBackOff",
                        "missing.test/app:1.0",
                    ),
                    (
                        ContainerKind::Ephemeral,
                        "debug",
                        "InvalidImageName",
                        "Team/App:1.0",
                    ),
                ],
            },
            Case {
                name: "running and crash-looping containers are not pull failures",
                status: serde_json::json!({
                    "containerStatuses": [running("app"), waiting("side", "CrashLoopBackOff", "back-off 5m0s")]
                }),
                want: vec![],
            },
            Case {
                name: "a container missing from the spec keeps the status image",
                status: serde_json::json!({
                    "containerStatuses": [waiting("ghost", "ErrImageNeverPull", "")]
                }),
                want: vec![(
                    ContainerKind::Container,
                    "ghost",
                    "ErrImageNeverPull",
                    "status-image",
                )],
            },
        ];
        for case in cases {
            let got: Vec<_> = pull_waits(&pod("u", case.status))
                .into_iter()
                .map(|w| (w.kind, w.container, w.waiting_reason, w.image))
                .collect();
            let want: Vec<_> = case
                .want
                .iter()
                .map(|(k, c, r, i)| (*k, c.to_string(), r.to_string(), i.to_string()))
                .collect();
            assert_eq!(got, want, "{}", case.name);
        }
    }

    #[test]
    fn waiting_reasons_and_messages_become_reasons() {
        struct Case {
            waiting: &'static str,
            message: &'static str,
            remembered: Option<Reason>,
            want: Reason,
        }
        let cases = [
            Case {
                waiting: "ErrImagePull",
                message: NXDOMAIN,
                remembered: None,
                want: Reason::DnsNxdomain,
            },
            Case {
                waiting: "ErrImagePull",
                message: NOT_FOUND,
                remembered: None,
                want: Reason::ManifestUnknown,
            },
            Case {
                waiting: "ErrImagePull",
                message: REFUSED,
                remembered: None,
                want: Reason::TcpRefused,
            },
            Case {
                waiting: "ErrImagePull",
                message: "something new",
                remembered: None,
                want: Reason::Unknown,
            },
            // The back-off message does not repeat the cause: the last attempt's is kept.
            Case {
                waiting: BACK_OFF,
                message: BACK_OFF_MESSAGE,
                remembered: Some(Reason::DnsNxdomain),
                want: Reason::DnsNxdomain,
            },
            Case {
                waiting: BACK_OFF,
                message: BACK_OFF_MESSAGE,
                remembered: None,
                want: Reason::Unknown,
            },
            // A back-off message that does carry a cause wins over the memory.
            Case {
                waiting: BACK_OFF,
                message: REFUSED,
                remembered: Some(Reason::DnsNxdomain),
                want: Reason::TcpRefused,
            },
            Case {
                waiting: "InvalidImageName",
                message: "",
                remembered: None,
                want: Reason::InvalidReference,
            },
            Case {
                waiting: "ErrImageNeverPull",
                message: "",
                remembered: None,
                want: Reason::NeverPull,
            },
            Case {
                waiting: "ImageInspectError",
                message: "",
                remembered: None,
                want: Reason::RuntimeError,
            },
            Case {
                waiting: "RegistryUnavailable",
                message: "",
                remembered: None,
                want: Reason::RegistryUnavailable,
            },
            Case {
                waiting: "SignatureValidationFailed",
                message: "",
                remembered: None,
                want: Reason::SignatureInvalid,
            },
        ];
        for case in cases {
            assert_eq!(
                reason_of(case.waiting, case.message, case.remembered),
                case.want,
                "{} {}",
                case.waiting,
                case.message
            );
        }
    }

    fn app(reason: &str, message: &str) -> serde_json::Value {
        serde_json::json!({"containerStatuses": [waiting("app", reason, message)]})
    }

    #[test]
    fn each_failed_attempt_counts_once_and_the_cause_survives_the_back_off() {
        let mut tracker = Tracker::default();
        let now = SystemTime::now();
        let step = |i: usize| now + std::time::Duration::from_secs(i as u64);
        let steps: [(serde_json::Value, usize, Reason); 6] = [
            (app("ErrImagePull", NXDOMAIN), 1, Reason::DnsNxdomain),
            // The same status again (a relist, an unrelated update): no new attempt.
            (app("ErrImagePull", NXDOMAIN), 0, Reason::DnsNxdomain),
            (app(BACK_OFF, BACK_OFF_MESSAGE), 0, Reason::DnsNxdomain),
            (app("ErrImagePull", NXDOMAIN), 1, Reason::DnsNxdomain),
            // A different cause on the next attempt, even without a back-off in between.
            (app("ErrImagePull", REFUSED), 1, Reason::TcpRefused),
            (app(BACK_OFF, BACK_OFF_MESSAGE), 0, Reason::TcpRefused),
        ];
        let mut total = 0;
        for (i, (status, attempts, reason)) in steps.into_iter().enumerate() {
            let changes = tracker.apply(&pod("u1", status), step(i));
            assert_eq!(changes.attempts.len(), attempts, "step {i}");
            assert!(
                changes
                    .attempts
                    .iter()
                    .all(|a| a.registry == "missing.test" && a.reason == reason)
            );
            total += attempts as u64;
            let failures = tracker.failures();
            assert_eq!(failures.len(), 1, "step {i}");
            assert_eq!(failures[0].failure.reason, reason, "step {i}");
            assert_eq!(failures[0].failure.attempts, total, "step {i}");
            assert_eq!(failures[0].failure.since, now);
        }
        // The reason changed at step 4 (to tcp_refused) and stayed through the back-off.
        assert_eq!(tracker.get("u1", "app").unwrap().1.reason_since, step(4));
        // First seen backing off: the attempt happened before the watch, so it is not counted.
        let changes = tracker.apply(&pod("u2", app(BACK_OFF, BACK_OFF_MESSAGE)), now);
        assert!(changes.attempts.is_empty());
        assert_eq!(changes.touched.len(), 1);
        assert_eq!(tracker.get("u2", "app").unwrap().1.reason, Reason::Unknown);
    }

    #[test]
    fn recovery_deletion_and_relists_forget_failures() {
        let mut tracker = Tracker::default();
        let now = SystemTime::now();
        tracker.apply(&pod("a", app("ErrImagePull", NXDOMAIN)), now);
        tracker.apply(&pod("b", app("ErrImagePull", NOT_FOUND)), now);
        tracker.apply(&pod("c", app("ErrImagePull", REFUSED)), now);
        assert_eq!(tracker.failures().len(), 3);

        // a's container started.
        tracker.apply(
            &pod(
                "a",
                serde_json::json!({"containerStatuses": [running("app")]}),
            ),
            now,
        );
        assert!(tracker.get("a", "app").is_none());
        // b was deleted.
        tracker.delete(&pod("b", serde_json::json!({})));
        assert!(tracker.get("b", "app").is_none());
        // A relist that no longer lists c (deleted while the watch was down), lists d.
        tracker.relisting();
        let changes = tracker.apply(&pod("d", app("ErrImagePull", REFUSED)), now);
        assert_eq!(changes.attempts.len(), 1);
        tracker.relisted();
        let left: Vec<&str> = tracker
            .failures()
            .iter()
            .map(|f| f.pod.uid.as_str())
            .collect();
        assert_eq!(left, ["d"]);
        // A relist that repeats d's status counts nothing new.
        tracker.relisting();
        assert!(
            tracker
                .apply(&pod("d", app("ErrImagePull", REFUSED)), now)
                .attempts
                .is_empty()
        );
        tracker.relisted();
        assert_eq!(tracker.failures().len(), 1);
    }

    /// 5,000 failing containers, in one pod and one per pod (the spec's images were searched per
    /// status, quadratic in a pod's containers): once the pods are gone the bookkeeping is empty
    /// and gives its room back. (The work per list is measured in tests/real/faults_pods.rs.)
    #[test]
    fn thousands_of_failures_are_followed_and_forgotten() {
        const N: usize = 5_000;
        let message = NXDOMAIN;
        let containers: Vec<serde_json::Value> = (0..N)
            .map(|i| serde_json::json!({"name": format!("c{i}"), "image": format!("missing.test/app{i}:1.0")}))
            .collect();
        let statuses: Vec<serde_json::Value> = (0..N)
            .map(|i| waiting(&format!("c{i}"), "ErrImagePull", message))
            .collect();
        let big: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "big", "namespace": "team", "uid": "big"},
            "spec": {"containers": containers},
            "status": {"containerStatuses": statuses}
        }))
        .unwrap();
        let mut tracker = Tracker::default();
        let now = SystemTime::now();
        let changes = tracker.apply(&big, now);
        assert_eq!(changes.attempts.len(), N);
        // The spec's image, not the status's, for every container.
        assert_eq!(
            tracker.get("big", "c4999").unwrap().1.image,
            "missing.test/app4999:1.0"
        );
        let small: Vec<Pod> = (0..N)
            .map(|i| pod(&format!("p{i}"), app("ErrImagePull", message)))
            .collect();
        for pod in &small {
            tracker.apply(pod, now);
        }
        assert_eq!(tracker.failures().len(), 2 * N);

        tracker.delete(&big);
        // Half of the small pods are deleted, the others are not listed again.
        for pod in &small[..N / 2] {
            tracker.delete(pod);
        }
        tracker.relisting();
        tracker.relisted();
        assert!(tracker.failures().is_empty());
        assert_eq!(tracker.pods(), 0);
        assert!(
            tracker.pods.capacity() <= 64,
            "the map keeps room for {} pods",
            tracker.pods.capacity()
        );
    }

    #[test]
    fn registries_and_field_paths() {
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:41217/app:9.9"), "127.0.0.1:41217");
        assert_eq!(registry_of("Team/App:1.0"), "");
        assert_eq!(
            ContainerKind::Init.field_path("init"),
            "spec.initContainers{init}"
        );
        assert_eq!(
            ContainerKind::Container.field_path("app"),
            "spec.containers{app}"
        );
        assert_eq!(clip("abcdef", 10), "abcdef");
        assert_eq!(clip("aéééé", 6), "aé…");
        assert!(clip(&"x".repeat(2000), MAX_MESSAGE).len() <= MAX_MESSAGE);
    }
}
