//! The series caps: `--max-failing-series` slots for the gauges that say what fails now and,
//! apart, for the failure counters; `series_dropped_total` counts each refused series once.

use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus::{IntCounterVec, Registry};

use super::family::{Family, Labels};
use super::{
    CHECK_FAILURES, CONTAINER_PULL_FAILING, CONTAINERS_WAITING_ON_PULL, ENDPOINT_FAILURE_REASON,
    IMAGE_PULL_FAILURES, REGISTRY_UP, SERIES_DROPPED,
};

/// Metrics whose series a cap can refuse; their `series_dropped_total` series always exist.
const CAPPED: [&str; 6] = [
    REGISTRY_UP,
    ENDPOINT_FAILURE_REASON,
    CHECK_FAILURES,
    IMAGE_PULL_FAILURES,
    CONTAINERS_WAITING_ON_PULL,
    CONTAINER_PULL_FAILING,
];

/// `metric`: the capped metric a series was refused for.
struct DroppedLabels<'a> {
    metric: &'a str,
}

impl<'a> Labels for DroppedLabels<'a> {
    type Static = DroppedLabels<'static>;
    const NAMES: &'static [&'static str] = &["metric"];
    fn values(&self) -> Vec<&str> {
        vec![self.metric]
    }
}

/// `--max-failing-series`, twice over: the series that say what fails now (gauges with a
/// `reason`) and the failure counters, which keep their history, each have `max` slots, so a
/// long history never crowds out the present.
pub struct Budget {
    slots: Mutex<Slots>,
    dropped: Family<IntCounterVec, DroppedLabels<'static>>,
}

#[derive(Default)]
struct Slots {
    max: usize,
    current: usize,
    history: usize,
}

impl Budget {
    pub(super) fn new(registry: &Registry, max: usize) -> Result<Self, prometheus::Error> {
        let dropped = Family::counter(
            registry,
            SERIES_DROPPED,
            "Series refused by a cap (--max-registries, --max-failing-series).",
        )?;
        for metric in CAPPED {
            dropped.with(&DroppedLabels { metric });
        }
        Ok(Budget {
            slots: Mutex::new(Slots {
                max,
                ..Slots::default()
            }),
            dropped,
        })
    }

    /// Takes a slot for a current-state series (a gauge), if one is free.
    pub(crate) fn take_current(&self) -> bool {
        self.take(|slots| &mut slots.current)
    }

    /// Gives back a slot taken with [`Budget::take_current`].
    pub(super) fn release_current(&self) {
        self.release(|slots| &mut slots.current);
    }

    /// Takes a slot for a counter series, if one is free. Counters keep their slot while their
    /// history stays.
    pub(super) fn take_history(&self) -> bool {
        self.take(|slots| &mut slots.history)
    }

    /// Gives back a counter's slot when its series is removed.
    pub(super) fn release_history(&self) {
        self.release(|slots| &mut slots.history);
    }

    fn take(&self, used: fn(&mut Slots) -> &mut usize) -> bool {
        let mut slots = super::lock(&self.slots);
        let max = slots.max;
        let used = used(&mut slots);
        if *used < max {
            *used += 1;
            true
        } else {
            false
        }
    }

    fn release(&self, used: fn(&mut Slots) -> &mut usize) {
        let mut slots = super::lock(&self.slots);
        let used = used(&mut slots);
        *used = used.saturating_sub(1);
    }

    /// Counts `count` series of `metric` refused by a cap.
    pub(super) fn dropped(&self, metric: &str, count: u64) {
        self.dropped.with(&DroppedLabels { metric }).inc_by(count);
    }

    /// Counts the series of `metric` refused `now` that were not refused `before` (a refusal is
    /// counted when it starts, not on every update), and remembers `now`.
    pub(super) fn refused<K: Ord>(&self, metric: &str, now: BTreeSet<K>, before: &mut BTreeSet<K>) {
        let newly = now.difference(before).count() as u64;
        if newly > 0 {
            self.dropped(metric, newly);
        }
        *before = now;
    }

    /// The slots taken now: current-state series, counters.
    #[cfg(test)]
    pub(super) fn used(&self) -> (usize, usize) {
        let slots = super::lock(&self.slots);
        (slots.current, slots.history)
    }
}
