//! Jittered, bounded exponential backoff: how long to wait before the next attempt after
//! `n` consecutive failures, so that retries never hammer the runtime or a registry.

use std::time::Duration;

/// Doubling from `base` up to `max`; each delay is drawn from [d/2, d) ("equal jitter") so that
/// many nodes that failed together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 = the first), for a `unit` in [0, 1).
    pub fn delay_with(&self, failures: u32, unit: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let full = self
            .base
            .saturating_mul(1u32 << exponent)
            .min(self.max)
            .max(self.base.min(self.max));
        let unit = unit.clamp(0.0, 1.0);
        full.mul_f64(0.5 + unit / 2.0)
    }

    /// [`Backoff::delay_with`] with a random jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_below_it() {
        let backoff = Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
        };
        struct Case {
            failures: u32,
            unit: f64,
            want: Duration,
        }
        let cases = [
            Case {
                failures: 1,
                unit: 0.0,
                want: Duration::from_millis(100),
            },
            Case {
                failures: 1,
                unit: 1.0,
                want: Duration::from_millis(200),
            },
            Case {
                failures: 3,
                unit: 1.0,
                want: Duration::from_millis(800),
            },
            Case {
                failures: 40,
                unit: 1.0,
                want: Duration::from_secs(5),
            },
            Case {
                failures: 40,
                unit: 0.0,
                want: Duration::from_millis(2500),
            },
            Case {
                failures: 0,
                unit: 0.5,
                want: Duration::from_millis(150),
            },
        ];
        for case in cases {
            assert_eq!(
                backoff.delay_with(case.failures, case.unit),
                case.want,
                "failures {} unit {}",
                case.failures,
                case.unit
            );
        }
        for failures in 1..20 {
            let d = backoff.delay(failures);
            assert!(d <= backoff.max && d >= Duration::from_millis(100), "{d:?}");
        }
    }
}
