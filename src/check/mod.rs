//! The checks of the chain `reference → dns → tcp → tls → http → auth → manifest → runtime`.
//! Every check has the same shape: an async fn doing one job and returning a typed outcome or
//! error; [`run`] owns the timeout and the success/duration bookkeeping (as blackbox_exporter's prober).

pub mod auth;
pub mod dns;
pub mod http;
pub mod manifest;
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

/// Runs one check under `timeout`, timing it, and returns its record plus the outcome on success.
pub async fn run<T, E, F>(kind: CheckKind, timeout: Duration, check: F) -> (CheckResult, Option<T>)
where
    T: Evidence,
    E: CheckError,
    F: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let result = tokio::time::timeout(timeout, check).await;
    let seconds = start.elapsed().as_secs_f64();
    let (ok, detail, reason, outcome) = match result {
        Ok(Ok(outcome)) => (true, outcome.detail(), None, Some(outcome)),
        Ok(Err(error)) => (false, error.to_string(), Some(error.reason()), None),
        Err(_) => (
            false,
            format!("no answer within {}", humantime::format_duration(timeout)),
            Some(kind.timeout_reason()),
            None,
        ),
    };
    (
        CheckResult {
            check: kind,
            ok,
            seconds,
            detail,
            reason,
        },
        outcome,
    )
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
        .await;
        assert!(ok.ok && outcome.is_some() && ok.reason.is_none() && ok.detail == "fine");

        let (failed, outcome) = run(CheckKind::Tcp, Duration::from_secs(1), async {
            Err::<Fine, _>(Refused)
        })
        .await;
        assert!(!failed.ok && outcome.is_none());
        assert_eq!(failed.reason, Some(Reason::TcpRefused));

        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Refused>(Fine)
        };
        let (timed_out, _) = run(CheckKind::Dns, Duration::from_millis(20), slow).await;
        assert_eq!(timed_out.reason, Some(Reason::DnsTimeout));
        assert!(timed_out.seconds < 1.0);
        assert!(timed_out.detail.contains("20ms"), "{}", timed_out.detail);
    }
}
