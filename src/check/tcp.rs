//! The `tcp` check: connect to every resolved address at once and count who answers, so a
//! partly dead address set is visible even when the check passes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::task::JoinSet;

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

/// Every attempt, in the order given; at least one answered.
#[derive(Clone, Debug)]
pub struct TcpOutcome {
    pub attempts: Vec<Attempt>,
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
        summarise(&self.attempts)
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
        "{answered}/{} addresses answered: {}",
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

/// Connects to every address on `port` concurrently, each bounded by `per_address`.
pub async fn check(
    addresses: &[IpAddr],
    port: u16,
    per_address: Duration,
) -> Result<TcpOutcome, TcpFailed> {
    let mut tasks = JoinSet::new();
    for (index, ip) in addresses.iter().enumerate() {
        let addr = SocketAddr::new(*ip, port);
        tasks.spawn(async move {
            let start = Instant::now();
            let failure = match tokio::time::timeout(per_address, TcpStream::connect(addr)).await {
                Ok(Ok(_stream)) => None,
                Ok(Err(error)) => Some(classify_io(&error)),
                Err(_) => Some(Reason::TcpTimeout),
            };
            (
                index,
                Attempt {
                    addr,
                    took: start.elapsed(),
                    failure,
                },
            )
        });
    }
    let mut attempts: Vec<(usize, Attempt)> = tasks.join_all().await;
    attempts.sort_by_key(|(index, _)| *index);
    let attempts: Vec<Attempt> = attempts.into_iter().map(|(_, attempt)| attempt).collect();
    if attempts.iter().any(|a| a.failure.is_none()) {
        Ok(TcpOutcome { attempts })
    } else {
        Err(TcpFailed { attempts })
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
    async fn counts_answering_and_refusing_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // 127.0.0.2 shares the loopback interface but nothing listens there on this port.
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
        let outcome = check(&ips, port, Duration::from_secs(2))
            .await
            .expect("one answers");
        assert_eq!(outcome.reachable(), vec![SocketAddr::new(ips[0], port)]);
        assert_eq!(outcome.reachable_in(false), 1);
        assert!(
            outcome.detail().starts_with("1/2 addresses answered"),
            "{}",
            outcome.detail()
        );
        assert!(
            outcome.detail().contains("127.0.0.2:"),
            "{}",
            outcome.detail()
        );

        drop(listener);
        let failed = check(&ips[..1], port, Duration::from_secs(2))
            .await
            .expect_err("nobody listens");
        assert_eq!(failed.reason(), Reason::TcpRefused);
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
