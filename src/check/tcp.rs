//! The `tcp` check: dial the resolved addresses in order until one answers, as the runtime's Go
//! dialer does, and keep that connection: the tls check and `GET /v2/` go over it, so a check costs
//! the registry one connection.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::{CheckError, Evidence};
use crate::reason::Reason;
use crate::text::short_duration;

/// One address tried.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub addr: SocketAddr,
    pub took: Duration,
    /// `None` when it answered.
    pub failure: Option<Reason>,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.failure {
            None => write!(f, "{} ok {}", self.addr, short_duration(self.took)),
            Some(reason) => write!(f, "{} {}", self.addr, failure_words(reason)),
        }
    }
}

/// The attempts made, in the order given; the last one answered.
#[derive(Clone, Debug)]
pub struct TcpOutcome {
    pub attempts: Vec<Attempt>,
    /// Addresses after the one that answered: not dialled (the runtime would not either).
    pub untried: usize,
}

impl TcpOutcome {
    /// Addresses that accepted a connection, in the order given.
    pub fn reachable(&self) -> Vec<SocketAddr> {
        self.attempts
            .iter()
            .filter(|a| a.failure.is_none())
            .map(|a| a.addr)
            .collect()
    }

    /// Answering addresses of one family (`ipv4`/`ipv6`), for the metric.
    pub fn reachable_in(&self, ipv6: bool) -> usize {
        self.reachable()
            .iter()
            .filter(|a| a.is_ipv6() == ipv6)
            .count()
    }
}

impl Evidence for TcpOutcome {
    fn detail(&self) -> String {
        match self.untried {
            0 => summarise(&self.attempts),
            n => format!(
                "{}; {n} more not dialled (the first that answers is used)",
                summarise(&self.attempts)
            ),
        }
    }
}

/// The check's outcome and the connection it made, handed on to the tls check (or the HTTP request).
#[derive(Debug)]
pub struct Dialed {
    pub outcome: TcpOutcome,
    pub stream: TcpStream,
}

impl Evidence for Dialed {
    fn detail(&self) -> String {
        self.outcome.detail()
    }
}

/// No address answered.
#[derive(Debug, thiserror::Error)]
#[error("{}", summarise(&self.attempts))]
pub struct TcpFailed {
    pub attempts: Vec<Attempt>,
}

impl CheckError for TcpFailed {
    /// The most frequent failure; ties go to the first address's.
    fn reason(&self) -> Reason {
        let failures: Vec<Reason> = self.attempts.iter().filter_map(|a| a.failure).collect();
        let count = |r: &Reason| failures.iter().filter(|f| *f == r).count();
        failures
            .iter()
            .copied()
            .fold(None, |best: Option<Reason>, r| match best {
                Some(b) if count(&b) >= count(&r) => Some(b),
                _ => Some(r),
            })
            .unwrap_or(Reason::TcpUnreachable)
    }
}

fn summarise(attempts: &[Attempt]) -> String {
    let answered = attempts.iter().filter(|a| a.failure.is_none()).count();
    let each: Vec<String> = attempts.iter().map(Attempt::to_string).collect();
    format!(
        "{answered}/{} addresses dialled answered: {}",
        attempts.len(),
        each.join(", ")
    )
}

fn failure_words(reason: Reason) -> &'static str {
    match reason {
        Reason::TcpRefused => "connection refused",
        Reason::TcpTimeout => "timed out (dropped?)",
        Reason::TcpUnreachable => "unreachable (no route)",
        _ => "failed",
    }
}

/// Below this, an address's share of the deadline is taken from the ones after it (Go's
/// `partialDeadline` in net/dial.go, which the runtime's dialer uses).
const SANE_MINIMUM: Duration = Duration::from_secs(2);

/// Dials `addresses` on `port` one after another until one answers, within `deadline` in all;
/// each address gets an equal share of what is left (at least [`SANE_MINIMUM`]), as Go's dialer.
pub async fn check(
    addresses: &[IpAddr],
    port: u16,
    deadline: Duration,
) -> Result<Dialed, TcpFailed> {
    let end = Instant::now() + deadline;
    let mut attempts = Vec::new();
    for (index, ip) in addresses.iter().enumerate() {
        let addr = SocketAddr::new(*ip, port);
        let start = Instant::now();
        let share = partial_deadline(
            end.saturating_duration_since(start),
            addresses.len() - index,
        );
        let failure = match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                attempts.push(Attempt {
                    addr,
                    took: start.elapsed(),
                    failure: None,
                });
                let outcome = TcpOutcome {
                    attempts,
                    untried: addresses.len() - index - 1,
                };
                return Ok(Dialed { outcome, stream });
            }
            Ok(Err(error)) => classify_io(&error),
            Err(_) => Reason::TcpTimeout,
        };
        attempts.push(Attempt {
            addr,
            took: start.elapsed(),
            failure: Some(failure),
        });
    }
    Err(TcpFailed { attempts })
}

/// One address's share of `remaining` when `left` addresses (this one included) are still to dial.
fn partial_deadline(remaining: Duration, left: usize) -> Duration {
    let even = remaining / u32::try_from(left.max(1)).unwrap_or(u32::MAX);
    if even >= SANE_MINIMUM {
        even
    } else {
        remaining.min(SANE_MINIMUM)
    }
}

/// Maps a connect error to a reason; shared with the later checks, which connect too.
pub fn classify_io(error: &io::Error) -> Reason {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => Reason::TcpRefused,
        io::ErrorKind::TimedOut => Reason::TcpTimeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            Reason::TcpUnreachable
        }
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Reason::TcpRefused,
        _ => Reason::TcpUnreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dials_in_order_until_one_answers_and_keeps_that_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // 127.0.0.2 shares the loopback interface but nothing listens there on this port.
        let ips: Vec<IpAddr> = vec![
            "127.0.0.2".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            "127.0.0.3".parse().unwrap(),
        ];
        let dialed = check(&ips, port, Duration::from_secs(2))
            .await
            .expect("one answers");
        let outcome = &dialed.outcome;
        assert_eq!(outcome.reachable(), vec![SocketAddr::new(ips[1], port)]);
        assert_eq!(outcome.reachable_in(false), 1);
        assert_eq!(
            outcome.untried, 1,
            "the address after the answer is not dialled"
        );
        assert_eq!(
            dialed.stream.peer_addr().unwrap(),
            SocketAddr::new(ips[1], port),
            "the connection handed on is the one that answered"
        );
        let detail = outcome.detail();
        assert!(
            detail.starts_with("1/2 addresses dialled answered"),
            "{detail}"
        );
        assert!(detail.contains("127.0.0.2:"), "{detail}");
        assert!(detail.contains("1 more not dialled"), "{detail}");
        // Exactly one connection reached the listener.
        let (_accepted, _) = listener.accept().await.unwrap();
        let again = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(again.is_err(), "a second connection was made");

        drop(listener);
        let failed = check(&ips[..1], port, Duration::from_secs(2))
            .await
            .expect_err("nobody listens");
        assert_eq!(failed.reason(), Reason::TcpRefused);
    }

    #[test]
    fn shares_the_deadline_as_go_dialer() {
        let s = Duration::from_secs;
        let cases = [
            // (remaining, addresses left, share)
            (s(30), 3, s(10)),
            (s(30), 1, s(30)),
            (s(5), 4, s(2)),
            (s(1), 4, s(1)),
            (Duration::ZERO, 2, Duration::ZERO),
        ];
        for (remaining, left, want) in cases {
            assert_eq!(
                partial_deadline(remaining, left),
                want,
                "{remaining:?}/{left}"
            );
        }
    }

    #[test]
    fn classifies_connect_errors() {
        let cases = [
            (io::ErrorKind::ConnectionRefused, Reason::TcpRefused),
            (io::ErrorKind::TimedOut, Reason::TcpTimeout),
            (io::ErrorKind::HostUnreachable, Reason::TcpUnreachable),
            (io::ErrorKind::NetworkUnreachable, Reason::TcpUnreachable),
        ];
        for (kind, want) in cases {
            assert_eq!(classify_io(&io::Error::from(kind)), want, "{kind:?}");
        }
    }

    #[test]
    fn most_frequent_failure_wins() {
        let attempt = |failure| Attempt {
            addr: "127.0.0.1:1".parse().unwrap(),
            took: Duration::ZERO,
            failure,
        };
        let failed = TcpFailed {
            attempts: vec![
                attempt(Some(Reason::TcpRefused)),
                attempt(Some(Reason::TcpTimeout)),
                attempt(Some(Reason::TcpTimeout)),
            ],
        };
        assert_eq!(failed.reason(), Reason::TcpTimeout);
    }
}
