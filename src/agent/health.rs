//! Liveness for `/healthz`: every long-running loop beats a heart; the agent is alive while no loop
//! has been quiet for longer than it promised. Nothing here looks at a registry, runtime or API server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The registered loops and when each last made progress.
#[derive(Default)]
pub struct Liveness {
    beats: Mutex<BTreeMap<u64, Beat>>,
    next_id: AtomicU64,
}

struct Beat {
    name: String,
    last: Instant,
    max_quiet: Duration,
}

/// A loop's handle: [`Heart::beat`] on progress; dropping it unregisters the loop.
pub struct Heart {
    liveness: Arc<Liveness>,
    id: u64,
}

impl Liveness {
    /// Registers a loop that promises to beat at least every `max_quiet`.
    pub fn register(self: &Arc<Self>, name: impl Into<String>, max_quiet: Duration) -> Heart {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Beat {
                name: name.into(),
                last: Instant::now(),
                max_quiet,
            },
        );
        Heart {
            liveness: Arc::clone(self),
            id,
        }
    }

    /// The loops that broke their promise, with how long they have been quiet.
    pub fn stalled(&self) -> Vec<(String, Duration)> {
        self.lock()
            .values()
            .filter(|b| b.last.elapsed() > b.max_quiet)
            .map(|b| (b.name.clone(), b.last.elapsed()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Beat>> {
        self.beats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Heart {
    /// Records progress now.
    pub fn beat(&self) {
        if let Some(beat) = self.liveness.lock().get_mut(&self.id) {
            beat.last = Instant::now();
        }
    }
}

impl Drop for Heart {
    fn drop(&mut self) {
        self.liveness.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_loop_is_stalled_until_it_beats_or_goes_away() {
        let liveness = Arc::new(Liveness::default());
        let quick = liveness.register("quick", Duration::from_millis(10));
        let patient = liveness.register("patient", Duration::from_secs(60));
        assert!(liveness.stalled().is_empty());
        std::thread::sleep(Duration::from_millis(30));
        let stalled = liveness.stalled();
        assert_eq!(stalled.len(), 1);
        assert_eq!(stalled[0].0, "quick");
        quick.beat();
        assert!(liveness.stalled().is_empty());
        std::thread::sleep(Duration::from_millis(30));
        drop(quick);
        assert!(liveness.stalled().is_empty());
        drop(patient);
    }
}
