//! The supervisor: follows the discovered registries, starts a task per new one, hands changed
//! routes to running ones, stops vanished ones, and restarts a crashed one after a back-off.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{Scheduler, WatchedRegistry, lock};

/// How often the supervisor loop wakes up (and beats) when nothing else happens.
const SUPERVISOR_TICK: Duration = Duration::from_secs(1);

/// The supervisor's handle on a running registry task.
pub(super) struct Handle {
    id: tokio::task::Id,
    target: watch::Sender<WatchedRegistry>,
    cancel: CancellationToken,
}

/// The supervisor's books.
#[derive(Default)]
pub(super) struct Tasks {
    pub(super) set: JoinSet<()>,
    pub(super) running: HashMap<String, Handle>,
    /// Cancelled tasks not yet finished: their registry is not restarted before they cleaned up.
    pub(super) stopping: HashMap<tokio::task::Id, String>,
    pub(super) desired: BTreeMap<String, WatchedRegistry>,
    /// Tasks that ended unexpectedly (a panic): their registry restarts no sooner than this.
    pub(super) crashed: HashMap<String, Instant>,
}

impl Scheduler {
    /// Follows the discovered routes until `cancel`: starts a task per new registry, hands changed
    /// routes to running ones, stops (and so removes the series of) vanished ones; then drains.
    pub async fn run(
        self: Arc<Self>,
        mut targets: watch::Receiver<Vec<WatchedRegistry>>,
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

    pub(super) fn apply(self: &Arc<Self>, tasks: &mut Tasks, cancel: &CancellationToken) {
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
        let desired: Vec<WatchedRegistry> = tasks.desired.values().cloned().collect();
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

    fn spawn(
        self: &Arc<Self>,
        target: WatchedRegistry,
        tasks: &mut Tasks,
        cancel: &CancellationToken,
    ) {
        let registry = target.route.registry.clone();
        let (target_tx, target_rx) = watch::channel(target);
        let token = cancel.child_token();
        let trigger = Arc::new(Notify::new());
        lock(&self.triggers).insert(registry.clone(), Arc::clone(&trigger));
        let task = Arc::clone(self).watch_registry(target_rx, trigger, token.clone());
        let id = tasks.set.spawn(task).id();
        self.status.started(&registry);
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
}
