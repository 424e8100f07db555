//! The search list walked for one lookup: the names Go's resolver would ask, in its order, each
//! family on its own way down it, and the answers Go would settle on.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::dns_exchange::{FamilyError, try_one_name};
use super::dns_wire::Family;
use super::resolv_conf::ResolvConf;
use crate::text::short_duration;

/// Addresses per family kept for the tcp check (up to 4 per family, as `docs/` says).
pub const MAX_ADDRESSES_PER_FAMILY: usize = 4;

/// One family's answer for one name, and when it came (since the lookup began).
#[derive(Clone, Debug)]
pub struct FamilyAnswer {
    pub result: Result<Vec<IpAddr>, FamilyError>,
    pub took: Duration,
}

impl FamilyAnswer {
    pub fn not_asked() -> Self {
        FamilyAnswer {
            result: Err(FamilyError::NoData),
            took: Duration::ZERO,
        }
    }
}

impl std::fmt::Display for FamilyAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(addresses) => {
                let shown: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
                write!(f, "{}", shown.join(" "))?;
            }
            Err(error) => write!(f, "{error}")?,
        }
        write!(f, " in {}", short_duration(self.took))
    }
}

/// One family's way down the search list: its answer for each name asked, in order, and
/// whether `deadline` cut it short.
pub struct Walked {
    answers: Vec<FamilyAnswer>,
    cut: bool,
}

/// One family's way down the search list, each name asked as Go asks it (see `try_one_name`),
/// until a name has addresses, or the other family found some at an earlier name.
///
/// Modelled, not copied: Go asks A and AAAA of each name together and waits for both before the
/// next name, so one dropped family delays the whole list. Here each family walks on its own and
/// waits only to stop at the first name either found addresses for (`found_at`), so within the
/// check's budget the family that answers is not held up by the one that does not. [`settle`]
/// then takes both families' answers at that name, as Go does; Go just takes longer.
pub async fn walk(
    conf: &ResolvConf,
    rotation: &AtomicUsize,
    names: &[String],
    family: Family,
    deadline: tokio::time::Instant,
    start: Instant,
    found_at: &AtomicUsize,
) -> Walked {
    let mut answers = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        if index > found_at.load(Ordering::Acquire) {
            break;
        }
        if index > 0 && tokio::time::Instant::now() >= deadline {
            return Walked { answers, cut: true };
        }
        let result = try_one_name(conf, rotation, name, family, deadline)
            .await
            .map(|mut addresses| {
                addresses.truncate(MAX_ADDRESSES_PER_FAMILY);
                addresses
            });
        let found = result.is_ok();
        answers.push(FamilyAnswer {
            result,
            took: start.elapsed(),
        });
        if found {
            found_at.fetch_min(index, Ordering::AcqRel);
            break;
        }
    }
    Walked {
        answers,
        cut: false,
    }
}

/// Both families' answers as Go would give them: at the first name that has addresses in
/// either family; with none, the original name's when it was asked (Go reports that one's
/// error), else the last name's. A family that did not get that far in time timed out.
pub fn settle(
    names: &[String],
    original: &str,
    a: Walked,
    aaaa: Walked,
) -> (FamilyAnswer, FamilyAnswer) {
    let has_addresses = |w: &Walked, i: usize| w.answers.get(i).is_some_and(|x| x.result.is_ok());
    let first_found = (0..names.len()).find(|&i| has_addresses(&a, i) || has_addresses(&aaaa, i));
    let at = |walked: &Walked, index: Option<usize>| {
        let timed_out = || FamilyAnswer {
            result: Err(FamilyError::Timeout),
            took: walked.answers.last().map_or(Duration::ZERO, |x| x.took),
        };
        match index {
            Some(i) => walked.answers.get(i).cloned().unwrap_or_else(timed_out),
            None if walked.cut => timed_out(),
            None => {
                let original = names.iter().position(|n| n == original);
                original
                    .and_then(|i| walked.answers.get(i))
                    .or(walked.answers.last())
                    .cloned()
                    .unwrap_or_else(FamilyAnswer::not_asked)
            }
        }
    };
    (at(&a, first_found), at(&aaaa, first_found))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(result: Result<&str, FamilyError>, at_ms: u64) -> FamilyAnswer {
        FamilyAnswer {
            result: result.map(|ip| vec![ip.parse().unwrap()]),
            took: Duration::from_millis(at_ms),
        }
    }

    fn walked(answers: Vec<FamilyAnswer>, cut: bool) -> Walked {
        Walked { answers, cut }
    }

    /// (A's walk, AAAA's walk) → what each family shows.
    #[test]
    fn settles_on_the_first_name_either_family_found() {
        use FamilyError::*;
        let names: Vec<String> = ["r.corp.a.", "r.corp.b.", "r.corp."]
            .map(String::from)
            .to_vec();
        let nx = |ms| answered(Err(NxDomain), ms);
        let none = |ms| answered(Err(NoData), ms);
        let cases: Vec<(Walked, Walked, &str, &str)> = vec![
            // A finds at the second name; AAAA's answer there is shown with it.
            (
                walked(vec![nx(1), answered(Ok("10.0.0.1"), 2)], false),
                walked(vec![nx(1), none(2)], false),
                "10.0.0.1 in 2ms",
                "none in 2ms",
            ),
            // AAAA finds at the first name, A ran on and found later: Go takes the first name.
            (
                walked(vec![none(1), nx(2), answered(Ok("10.0.0.3"), 3)], false),
                walked(vec![answered(Ok("fd00::1"), 1)], false),
                "none in 1ms",
                "fd00::1 in 1ms",
            ),
            // Nothing anywhere: the original name's answer (the last one asked here).
            (
                walked(
                    vec![
                        nx(1),
                        nx(2),
                        answered(Err(ServerFailure("SERVFAIL".into())), 3),
                    ],
                    false,
                ),
                walked(vec![nx(1), nx(2), nx(3)], false),
                "failed (SERVFAIL) in 3ms",
                "NXDOMAIN in 3ms",
            ),
            // A family cut short by the budget before the list ended timed out.
            (
                walked(vec![nx(1), nx(2), nx(3)], false),
                walked(vec![answered(Err(Timeout), 900)], true),
                "NXDOMAIN in 3ms",
                "timed out in 900ms",
            ),
            // Found where the other family never got to: that one timed out.
            (
                walked(vec![nx(1), answered(Ok("10.0.0.1"), 2)], false),
                walked(vec![answered(Err(Timeout), 900)], true),
                "10.0.0.1 in 2ms",
                "timed out in 900ms",
            ),
        ];
        for (a, aaaa, want_a, want_aaaa) in cases {
            let (a, aaaa) = settle(&names, "r.corp.", a, aaaa);
            assert_eq!(
                (a.to_string(), aaaa.to_string()),
                (want_a.to_string(), want_aaaa.to_string())
            );
        }
        // The original name asked first (enough dots) is the one reported when nothing resolves.
        let first = ["r.corp.", "r.corp.a."].map(String::from).to_vec();
        let (a, _) = settle(
            &first,
            "r.corp.",
            walked(
                vec![answered(Err(ServerFailure("REFUSED".into())), 1), nx(2)],
                false,
            ),
            walked(vec![nx(1), nx(2)], false),
        );
        assert_eq!(a.to_string(), "failed (REFUSED) in 1ms");
    }
}
