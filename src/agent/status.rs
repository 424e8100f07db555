//! What the agent knows now, for `/api/v1/status`, the `Status` API and `/readyz`: each watched
//! registry's last results (same field names as `diagnose --output json`) and whether discovery is
//! done and every registry's checks have started.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use super::pods::failures::Failure;
use crate::report::Report;

/// The last round of one registry: its report (which names no image) and when it finished.
#[derive(Clone, Debug, Serialize)]
pub struct RegistryStatus {
    #[serde(flatten)]
    pub report: Report,
    /// "unverified: no credentials (looked in …)": the manifest was refused while pullwatch held
    /// no credentials for it, so the registry counts as up (the node may hold credentials
    /// pullwatch cannot see).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unverified: Option<String>,
    /// RFC 3339.
    pub checked_at: String,
}

/// A container failing to pull, with this node's diagnosis of its image: `/api/v1/status`'s `failures`.
#[derive(Clone, Debug, Serialize)]
pub struct PodFailure {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    #[serde(flatten)]
    pub failure: Failure,
    /// This node's last diagnosis of the image (`diagnose --output json`'s object), shared by
    /// every container failing on that image rather than copied to each.
    #[serde(serialize_with = "shared_report")]
    pub diagnosis: Option<Arc<Report>>,
}

fn shared_report<S: serde::Serializer>(
    report: &Option<Arc<Report>>,
    out: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&report.as_deref(), out)
}

/// The whole answer of `/api/v1/status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub node: String,
    pub ready: bool,
    pub registries: Vec<RegistryStatus>,
    /// Containers on this node failing to pull, with this node's diagnosis (the pod watch's).
    pub failures: Vec<PodFailure>,
}

/// Why the agent is not ready yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReady {
    Discovering,
    Starting { pending: Vec<String> },
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Discovering => f.write_str("discovery has not finished"),
            NotReady::Starting { pending } => {
                write!(f, "checks not started yet for {}", pending.join(", "))
            }
        }
    }
}

/// The registries' last results and the readiness latch. Locks are held briefly, never across `.await`.
pub struct StatusBoard {
    node: String,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `None` until the first discovery; then the registries whose checks have not started.
    pending: Option<BTreeSet<String>>,
    registries: BTreeMap<String, RegistryStatus>,
    failures: Vec<PodFailure>,
}

impl StatusBoard {
    pub fn new(node: impl Into<String>) -> Self {
        StatusBoard {
            node: node.into(),
            inner: RwLock::new(Inner::default()),
        }
    }

    /// The first discovery finished with these registries; later discoveries do not move readiness.
    pub fn discovered<'a>(&self, registries: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.write();
        if inner.pending.is_none() {
            inner.pending = Some(registries.into_iter().map(str::to_string).collect());
        }
    }

    /// A registry's checks started (its task runs, its first round on its jittered timer).
    pub fn started(&self, registry: &str) {
        if let Some(pending) = self.write().pending.as_mut() {
            pending.remove(registry);
        }
    }

    /// Stores a registry's round.
    pub fn record(&self, mut report: Report, unverified: Option<String>, at: SystemTime) {
        // A registry's round is about the registry, whatever image it checked.
        report.image.clear();
        let mut inner = self.write();
        let status = RegistryStatus {
            report,
            unverified,
            checked_at: humantime::format_rfc3339_millis(at).to_string(),
        };
        inner
            .registries
            .insert(status.report.registry.clone(), status);
    }

    /// Drops a registry that is no longer watched.
    pub fn forget(&self, registry: &str) {
        let mut inner = self.write();
        if let Some(pending) = inner.pending.as_mut() {
            pending.remove(registry);
        }
        inner.registries.remove(registry);
    }

    /// Replaces the pod failures.
    pub fn set_pod_failures(&self, failures: Vec<PodFailure>) {
        self.write().failures = failures;
    }

    /// Ready once discovery ran and every registry it found has its checks started (or went away):
    /// not after the first round, which is spread over up to 10s to spare the registries, so a
    /// rollout never waits on its jitter, and a registry that is down never holds readiness back.
    pub fn readiness(&self) -> Result<(), NotReady> {
        match &self.read().pending {
            None => Err(NotReady::Discovering),
            Some(pending) if pending.is_empty() => Ok(()),
            Some(pending) => Err(NotReady::Starting {
                pending: pending.iter().cloned().collect(),
            }),
        }
    }

    pub fn snapshot(&self) -> Status {
        let ready = self.readiness().is_ok();
        let inner = self.read();
        Status {
            node: self.node.clone(),
            ready,
            registries: inner.registries.values().cloned().collect(),
            failures: inner.failures.clone(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;

    fn report(registry: &str, pullable: bool) -> Report {
        Report {
            image: String::new(),
            registry: registry.into(),
            pullable,
            reason: (!pullable).then_some(Reason::TcpRefused),
            summary: "s".into(),
            fix: None,
            endpoints: vec![],
        }
    }

    #[test]
    fn ready_after_discovery_and_every_registry_started() {
        let board = StatusBoard::new("n");
        assert_eq!(board.readiness(), Err(NotReady::Discovering));
        // Starting before discovery names nothing pending.
        board.started("a");
        board.discovered(["a", "b", "c"]);
        assert_eq!(
            board.readiness(),
            Err(NotReady::Starting {
                pending: vec!["a".into(), "b".into(), "c".into()]
            })
        );
        board.started("a");
        board.forget("c");
        assert!(board.readiness().is_err());
        // A round's result does not stand in for a start.
        board.record(report("b", true), None, SystemTime::now());
        assert!(board.readiness().is_err());
        board.started("b");
        assert_eq!(board.readiness(), Ok(()));
        board.record(report("a", false), None, SystemTime::now());
        // A later discovery does not take readiness back, nor does a failing registry.
        board.discovered(["d"]);
        board.record(report("a", true), None, SystemTime::now());
        assert_eq!(board.readiness(), Ok(()));

        let status = board.snapshot();
        assert!(status.ready);
        assert_eq!(status.registries.len(), 2);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["registries"][0]["registry"], "a");
        assert!(
            json["registries"][0]["checked_at"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
    }

    #[test]
    fn no_registries_means_ready_after_discovery() {
        let board = StatusBoard::new("n");
        board.discovered([]);
        assert_eq!(board.readiness(), Ok(()));
    }
}
