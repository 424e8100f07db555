//! Cleanup that also happens when a test process dies without running `Drop` (a nextest
//! timeout kills it): a small `sh` in its own process group waits for EOF on a pipe
//! that only this process holds open, then runs a cleanup script.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long dropping a watchdog waits for its cleanup script.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs its script when dropped, or when this process exits in any way.
pub struct Watchdog {
    child: Child,
    what: String,
}

impl Watchdog {
    /// Arms `script` (POSIX sh; `$1`, `$2`, … are `args`). `what` names it in panics.
    pub fn arm(what: &str, script: &str, args: &[&str]) -> Self {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("read -r _ignored; {script}"))
            .arg("pullwatch-test-watchdog")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the test's process group, so a group kill does not take it along.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the cleanup watchdog for {what}: {e}"));
        Self {
            child,
            what: what.to_owned(),
        }
    }

    /// A watchdog that SIGKILLs `child` (use with [`end_child`]).
    pub fn killing(what: &str, child: &Child) -> Self {
        Self::arm(
            what,
            "kill -9 \"$1\" 2>/dev/null",
            &[&child.id().to_string()],
        )
    }

    /// Runs the cleanup now and waits for it (bounded).
    pub fn fire(mut self) {
        self.fire_and_wait();
    }

    /// Cancels the cleanup: the script never runs.
    pub fn disarm(mut self) {
        // Kill it while it still blocks in `read`; only then close the pipe.
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.child.stdin.take());
    }

    fn fire_and_wait(&mut self) {
        // Closing our end of the pipe is the signal.
        drop(self.child.stdin.take());
        let done = crate::cli::wait_bounded(&mut self.child, CLEANUP_TIMEOUT);
        if done.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!(
                "cleanup of {} did not finish in {CLEANUP_TIMEOUT:?}",
                self.what
            );
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.child.stdin.is_some() {
            self.fire_and_wait();
        }
    }
}

/// Ends `child`, watched by `watchdog` from [`Watchdog::killing`]: if it still runs, the
/// watchdog kills it before it is reaped (so its pid cannot have been reused); if it
/// already exited, the watchdog is disarmed instead.
pub fn end_child(child: &mut Child, watchdog: Watchdog) {
    match child.try_wait() {
        Ok(Some(_)) => watchdog.disarm(),
        _ => {
            watchdog.fire();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
