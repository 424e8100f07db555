//! The `tls` check: a handshake with SNI = the registry host against the node's trust, recording
//! the peer chain (expiry, SANs, issuer) even when verification fails, so the evidence says why.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::CertificateError;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use x509_parser::extensions::GeneralName;

use super::{CheckError, Evidence};
use crate::reason::Reason;
use crate::trust::TlsClient;

/// One certificate of the peer chain, as people read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
}

/// A completed handshake.
#[derive(Clone, Debug)]
pub struct TlsOutcome {
    pub version: String,
    pub cipher: String,
    pub alpn: Option<String>,
    /// False when `skip_verify` let an unverified chain through.
    pub verified: bool,
    pub chain: Vec<CertSummary>,
}

impl TlsOutcome {
    /// The earliest `not_after` in the chain (unix seconds): the next expiry that breaks pulls.
    pub fn earliest_not_after(&self) -> Option<i64> {
        self.chain.iter().map(|c| c.not_after).min()
    }
}

impl Evidence for TlsOutcome {
    fn detail(&self) -> String {
        let verified = if self.verified {
            "verified"
        } else {
            "NOT verified (skip_verify)"
        };
        let alpn = self
            .alpn
            .as_deref()
            .map(|p| format!(", ALPN {p}"))
            .unwrap_or_default();
        format!(
            "{} {}{alpn}, {verified}; {}",
            self.version,
            self.cipher,
            describe_chain(&self.chain)
        )
    }
}

/// The handshake failed; `chain` is what the server showed, if it got that far.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", chain_suffix(&self.chain))]
pub struct TlsFailed {
    pub reason: Reason,
    pub message: String,
    pub chain: Vec<CertSummary>,
}

impl TlsFailed {
    /// A failure before the handshake began (the connection itself).
    pub fn connect(error: &io::Error) -> Self {
        TlsFailed {
            reason: super::tcp::classify_io(error),
            message: format!("connect: {error}"),
            chain: vec![],
        }
    }
}

impl CheckError for TlsFailed {
    fn reason(&self) -> Reason {
        self.reason
    }
}

fn chain_suffix(chain: &[CertSummary]) -> String {
    if chain.is_empty() {
        String::new()
    } else {
        format!("; {}", describe_chain(chain))
    }
}

/// Handshakes over an already connected `stream` (direct, or a proxy tunnel).
pub async fn check<S>(
    stream: S,
    server_name: &str,
    client: &TlsClient,
) -> Result<TlsOutcome, TlsFailed>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| TlsFailed {
        reason: Reason::TlsHandshake,
        message: format!("{server_name:?} is not a valid TLS server name: {e}"),
        chain: vec![],
    })?;
    let chain = &client.chain;
    match TlsConnector::from(client.config.clone())
        .connect(name, stream)
        .await
    {
        Ok(tls) => {
            let (_, session) = tls.get_ref();
            Ok(TlsOutcome {
                version: session
                    .protocol_version()
                    .map(|v| format!("{v:?}").replace("_", "."))
                    .unwrap_or_default(),
                cipher: session
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default(),
                alpn: session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                verified: !client.skip_verify,
                chain: summarise(&chain.certificates()),
            })
        }
        Err(error) => {
            let certificates = summarise(&chain.certificates());
            let (reason, message) = classify(&error, server_name, &certificates);
            Err(TlsFailed {
                reason,
                message,
                chain: certificates,
            })
        }
    }
}

/// Maps a handshake error to a reason and a sentence; rustls's error travels inside the io::Error.
fn classify(error: &io::Error, server_name: &str, chain: &[CertSummary]) -> (Reason, String) {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return (Reason::TlsHandshake, format!("handshake failed: {error}"));
    };
    match tls {
        rustls::Error::InvalidCertificate(cert_error) => match cert_error {
            CertificateError::UnknownIssuer => (
                Reason::TlsUnknownAuthority,
                "certificate signed by unknown authority (not in the system roots nor the configured CA files)".into(),
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                (Reason::TlsExpired, "certificate has expired".into())
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                (Reason::TlsExpired, "certificate is not yet valid (check the node's clock)".into())
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let valid_for = chain.first().map(|leaf| leaf.sans.join(", ")).unwrap_or_default();
                (Reason::TlsHostnameMismatch, format!("certificate is valid for [{valid_for}], not {server_name}"))
            }
            other => (Reason::TlsHandshake, format!("certificate rejected: {other:?}")),
        },
        rustls::Error::InvalidMessage(_) => (
            Reason::TlsHandshake,
            format!("the server's answer is not TLS ({tls}): plain HTTP on a TLS port? (the runtime says: server gave HTTP response to HTTPS client)"),
        ),
        other => (Reason::TlsHandshake, format!("handshake failed: {other}")),
    }
}

/// Parses the DER chain; a certificate x509-parser cannot read is skipped, not fatal.
pub fn summarise(chain: &[CertificateDer<'_>]) -> Vec<CertSummary> {
    chain
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
        .map(|(_, cert)| {
            let sans = cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .filter_map(|name| match name {
                            GeneralName::DNSName(dns) => Some(dns.to_string()),
                            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            CertSummary {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                sans,
                not_before: cert.validity().not_before.timestamp(),
                not_after: cert.validity().not_after.timestamp(),
            }
        })
        .collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// "leaf CN=x (SAN a, b) issued by CN=ca, expires in 12 days" — the facts that explain TLS failures.
fn describe_chain(chain: &[CertSummary]) -> String {
    let Some(leaf) = chain.first() else {
        return "no certificate received".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let earliest = chain
        .iter()
        .map(|c| c.not_after)
        .min()
        .unwrap_or(leaf.not_after);
    let expiry = days_phrase(earliest - now);
    let not_yet = if leaf.not_before > now {
        format!(", not valid before {}", days_phrase(leaf.not_before - now))
    } else {
        String::new()
    };
    format!(
        "leaf {} (SAN {}) issued by {}, chain of {}, earliest expiry {expiry}{not_yet}",
        leaf.subject,
        if leaf.sans.is_empty() {
            "none".into()
        } else {
            leaf.sans.join(", ")
        },
        leaf.issuer,
        chain.len()
    )
}

fn days_phrase(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    if seconds >= 0 {
        format!("in {days} days")
    } else {
        format!("{} days ago", -days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_phrase_reads_both_ways() {
        assert_eq!(days_phrase(86_400 * 30 + 5), "in 30 days");
        assert_eq!(days_phrase(-86_400 * 3), "3 days ago");
    }

    #[test]
    fn classifies_certificate_errors() {
        let leaf = CertSummary {
            subject: "CN=other".into(),
            issuer: "CN=ca".into(),
            sans: vec!["other.test".into()],
            not_before: 0,
            not_after: 0,
        };
        let cases = [
            (CertificateError::UnknownIssuer, Reason::TlsUnknownAuthority),
            (CertificateError::Expired, Reason::TlsExpired),
            (CertificateError::NotValidYet, Reason::TlsExpired),
            (
                CertificateError::NotValidForName,
                Reason::TlsHostnameMismatch,
            ),
            (CertificateError::BadSignature, Reason::TlsHandshake),
        ];
        for (cert_error, want) in cases {
            let error = io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(cert_error.clone()),
            );
            let (reason, message) = classify(&error, "registry.test", std::slice::from_ref(&leaf));
            assert_eq!(reason, want, "{cert_error:?}: {message}");
        }
        let mismatch = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        );
        assert!(
            classify(&mismatch, "registry.test", &[leaf])
                .1
                .contains("valid for [other.test], not registry.test")
        );
    }
}
