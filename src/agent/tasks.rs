//! The agent's long-running tasks in one JoinSet, each under its name, so that a task that ends
//! early — by returning or by panicking — is reported by name.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinError, JoinSet};

/// What a task ended with: `Err` names why (a panic's message too).
pub type Outcome = Result<(), String>;

/// Named tasks.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<Outcome>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Outcome> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The next task to end, with its name; `None` when none is left.
    pub async fn join_next(&mut self) -> Option<(&'static str, Outcome)> {
        let (id, outcome) = match self.set.join_next_with_id().await? {
            Ok((id, outcome)) => (id, outcome),
            Err(error) => (error.id(), Err(describe(error))),
        };
        let name = self.names.remove(&id).unwrap_or("unknown");
        Some((name, outcome))
    }

    pub fn abort_all(&mut self) {
        self.set.abort_all();
    }
}

/// A task that did not return: its panic message, or that it was cancelled.
fn describe(error: JoinError) -> String {
    if error.is_cancelled() {
        return "cancelled".into();
    }
    let panic = error.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    format!("panicked: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_reported_by_its_name() {
        let mut tasks = Tasks::default();
        tasks.spawn("scheduler", async { std::future::pending().await });
        tasks.spawn("node watch", async { panic!("lost {} registries", 3) });
        let (name, outcome) = tasks.join_next().await.unwrap();
        assert_eq!(name, "node watch");
        let error = outcome.unwrap_err();
        assert_eq!(error, "panicked: lost 3 registries");

        tasks.spawn("http", async { Err("bind lost".to_string()) });
        assert_eq!(
            tasks.join_next().await,
            Some(("http", Err("bind lost".to_string())))
        );
        tasks.abort_all();
        assert_eq!(
            tasks.join_next().await,
            Some(("scheduler", Err("cancelled".to_string())))
        );
        assert_eq!(tasks.join_next().await, None);
    }
}
