//! The checks of the chain `reference → dns → tcp → tls → http → auth → manifest → runtime`.
//! Every check has the same shape: an async fn doing one job and returning a typed outcome or
//! error; [`run`] owns the timeout and the success/duration bookkeeping (as blackbox_exporter's prober).

pub mod auth;
pub mod cert_summary;
pub mod conn;
pub mod dns;
pub mod dns_exchange;
pub mod dns_name;
pub mod dns_search;
pub mod dns_wire;
pub mod hosts_file;
pub mod http;
pub mod manifest;
pub mod reread;
pub mod resolv_conf;
pub mod runtime;
pub mod tags;
pub mod tcp;
pub mod tls;

use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::reason::Reason;

/// One step of the chain; the string form is the `check` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Reference,
    Dns,
    Tcp,
    Tls,
    Http,
    Auth,
    Manifest,
    Runtime,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Reference => "reference",
            CheckKind::Dns => "dns",
            CheckKind::Tcp => "tcp",
            CheckKind::Tls => "tls",
            CheckKind::Http => "http",
            CheckKind::Auth => "auth",
            CheckKind::Manifest => "manifest",
            CheckKind::Runtime => "runtime",
        }
    }

    /// The reason when this check gets no answer within its timeout.
    fn timeout_reason(self) -> Reason {
        match self {
            CheckKind::Reference => Reason::Unknown,
            CheckKind::Dns => Reason::DnsTimeout,
            CheckKind::Tcp => Reason::TcpTimeout,
            CheckKind::Tls => Reason::TlsHandshake,
            CheckKind::Http | CheckKind::Auth | CheckKind::Manifest => Reason::RegistryUnavailable,
            CheckKind::Runtime => Reason::PullTimeout,
        }
    }
}

/// The record of one check run: what the report and the metrics show.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: CheckKind,
    pub ok: bool,
    pub seconds: f64,
    /// The evidence: addresses, certificate facts, status codes. Never a credential.
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// A successful check's outcome, rendered as evidence for people.
pub trait Evidence {
    fn detail(&self) -> String;
}

/// A check's error: its Display is the evidence, `reason` the fixed label.
pub trait CheckError: std::fmt::Display {
    fn reason(&self) -> Reason;
}

/// What [`run`] hands back: the record for reports and metrics, and what the check itself
/// returned, so a caller needs no side channel to read a typed failure (a rate limit, a status).
#[derive(Debug)]
pub struct Ran<T, E> {
    pub record: CheckResult,
    pub outcome: Result<T, Failed<E>>,
}

/// Why a check did not pass: its own typed error, or no answer within the timeout.
#[derive(Debug)]
pub enum Failed<E> {
    Error(E),
    TimedOut,
}

impl<T, E> Ran<T, E> {
    /// The typed error, when the check answered with one (not on a timeout).
    pub fn error(&self) -> Option<&E> {
        match &self.outcome {
            Err(Failed::Error(error)) => Some(error),
            _ => None,
        }
    }

    /// The record, and the outcome when the check passed: for callers that need nothing of a failure.
    pub fn split(self) -> (CheckResult, Option<T>) {
        (self.record, self.outcome.ok())
    }
}

/// Runs one check under `timeout`, timing it: the caller owns the timeout and the bookkeeping,
/// the check only does its job (as blackbox_exporter's prober).
pub async fn run<T, E, F>(kind: CheckKind, timeout: Duration, check: F) -> Ran<T, E>
where
    T: Evidence,
    E: CheckError,
    F: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let result = tokio::time::timeout(timeout, check).await;
    let seconds = start.elapsed().as_secs_f64();
    let (detail, reason, outcome) = match result {
        Ok(Ok(outcome)) => (outcome.detail(), None, Ok(outcome)),
        Ok(Err(error)) => (
            error.to_string(),
            Some(error.reason()),
            Err(Failed::Error(error)),
        ),
        Err(_) => (
            format!("no answer within {}", humantime::format_duration(timeout)),
            Some(kind.timeout_reason()),
            Err(Failed::TimedOut),
        ),
    };
    Ran {
        record: CheckResult {
            check: kind,
            ok: outcome.is_ok(),
            seconds,
            // Evidence quotes peers (headers, realms, bodies): escaped and capped in this one place.
            detail: crate::text::evidence(&detail),
            reason,
        },
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fine;
    impl Evidence for Fine {
        fn detail(&self) -> String {
            "fine".into()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;
    impl CheckError for Refused {
        fn reason(&self) -> Reason {
            Reason::TcpRefused
        }
    }

    #[tokio::test]
    async fn records_success_failure_and_timeout() {
        let (ok, outcome) = run(CheckKind::Tcp, Duration::from_secs(1), async {
            Ok::<_, Refused>(Fine)
        })
        .await
        .split();
        assert!(ok.ok && outcome.is_some() && ok.reason.is_none() && ok.detail == "fine");

        let failed = run(CheckKind::Tcp, Duration::from_secs(1), async {
            Err::<Fine, _>(Refused)
        })
        .await;
        assert!(failed.error().is_some(), "the typed error comes back");
        let (failed, outcome) = failed.split();
        assert!(!failed.ok && outcome.is_none());
        assert_eq!(failed.reason, Some(Reason::TcpRefused));

        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Refused>(Fine)
        };
        let ran = run(CheckKind::Dns, Duration::from_millis(20), slow).await;
        assert!(matches!(ran.outcome, Err(Failed::TimedOut)));
        let timed_out = ran.record;
        assert_eq!(timed_out.reason, Some(Reason::DnsTimeout));
        assert!(timed_out.seconds < 1.0);
        assert!(timed_out.detail.contains("20ms"), "{}", timed_out.detail);
    }
}
