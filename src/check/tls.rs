//! The `tls` check: a handshake with SNI = the registry host against the node's trust, recording
//! the peer chain (expiry, SANs, issuer) even when verification fails, so the evidence says why;
//! when the server asks for a client certificate (mutual TLS), its verdict on the answer too.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use x509_parser::prelude::{FromDer, X509Name};

pub use super::cert_summary::CertSummary;
use super::cert_summary::summarise;
use super::conn::{Conn, Rewound};
use super::{CheckError, Evidence};
use crate::reason::Reason;
use crate::trust::{ClientAuthAsked, TlsClient};

/// How long, after a TLS 1.3 handshake in which the server asked for a client certificate, the
/// check waits for the server to refuse the answer; a server that says nothing by then passes
/// (and the connection goes on to the HTTP request).
const VERDICT_WAIT: Duration = Duration::from_secs(1);

/// A completed handshake.
#[derive(Clone, Debug)]
pub struct TlsOutcome {
    pub version: String,
    pub cipher: String,
    /// False when `skip_verify` let an unverified chain through.
    pub verified: bool,
    pub chain: Vec<Arc<CertSummary>>,
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
        format!(
            "{} {}, {verified}; {}",
            self.version,
            self.cipher,
            describe_chain(&self.chain)
        )
    }
}

/// A completed handshake and the connection it secured, handed on to the HTTP request.
#[derive(Debug)]
pub struct Secured {
    pub outcome: TlsOutcome,
    pub conn: Conn,
}

impl Evidence for Secured {
    fn detail(&self) -> String {
        self.outcome.detail()
    }
}

/// The handshake failed; `chain` is what the server showed, if it got that far.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", chain_suffix(&self.chain))]
pub struct TlsFailed {
    pub reason: Reason,
    pub message: String,
    pub chain: Vec<Arc<CertSummary>>,
    /// The server answered the hello in plain HTTP (its first bytes were `HTTP/`): what Go's TLS
    /// client reports as a `RecordHeaderError`, and what makes containerd fall back to HTTP.
    pub plain_http: bool,
}

impl TlsFailed {
    /// A failure before the handshake began (the connection itself).
    pub fn connect(error: &io::Error) -> Self {
        TlsFailed {
            reason: super::tcp::classify_io(error),
            message: format!("connect: {error}"),
            chain: vec![],
            plain_http: false,
        }
    }
}

impl CheckError for TlsFailed {
    fn reason(&self) -> Reason {
        self.reason
    }
}

fn chain_suffix(chain: &[Arc<CertSummary>]) -> String {
    if chain.is_empty() {
        String::new()
    } else {
        format!("; {}", describe_chain(chain))
    }
}

/// Handshakes over an already connected `stream` (the tcp check's, or a proxy tunnel on it).
pub async fn check<S>(
    stream: S,
    server_name: &str,
    client: &TlsClient,
) -> Result<Secured, TlsFailed>
where
    S: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static,
{
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| TlsFailed {
        reason: Reason::TlsHandshake,
        message: format!("{server_name:?} is not a valid TLS server name: {e}"),
        chain: vec![],
        plain_http: false,
    })?;
    let chain = &client.chain;
    client.client_auth.clear();
    let first_bytes = FirstBytes::default();
    let stream = first_bytes.wrap(stream);
    match TlsConnector::from(client.config.clone())
        .connect(name, stream)
        .await
    {
        Ok(mut tls) => {
            let (_, session) = tls.get_ref();
            let tls13 = session.protocol_version() == Some(ProtocolVersion::TLSv1_3);
            let outcome = TlsOutcome {
                version: session
                    .protocol_version()
                    .map(|v| format!("{v:?}").replace("_", "."))
                    .unwrap_or_default(),
                cipher: session
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default(),
                verified: !client.skip_verify,
                chain: summarise(&chain.certificates()),
            };
            // In TLS 1.3 the server judges the client's certificate after the handshake is over
            // for the client; in TLS 1.2 a refusal fails the handshake itself.
            let Some(asked) = client.client_auth.asked().filter(|_| tls13) else {
                return Ok(Secured {
                    outcome,
                    conn: Conn::new(tls),
                });
            };
            match client_auth_verdict(&mut tls).await {
                Verdict::Refused(alert) => Err(TlsFailed {
                    reason: Reason::TlsHandshake,
                    message: client_auth_refused(&asked, alert),
                    chain: outcome.chain,
                    plain_http: false,
                }),
                // What the server sent meanwhile (if anything) goes to the HTTP client.
                Verdict::Accepted(early) => Ok(Secured {
                    outcome,
                    conn: Conn::new(Rewound::new(early, tls)),
                }),
            }
        }
        Err(error) => {
            let certificates = summarise(&chain.certificates());
            let (reason, message) = match (client.client_auth.asked(), alert_of(&error)) {
                (Some(asked), Some(alert)) => {
                    (Reason::TlsHandshake, client_auth_refused(&asked, alert))
                }
                _ => classify(&error, server_name, &certificates),
            };
            Err(TlsFailed {
                reason,
                message,
                chain: certificates,
                plain_http: first_bytes.get().starts_with(b"HTTP/"),
            })
        }
    }
}

/// The first bytes the server sent, kept past the handshake's failure (which consumes the stream)
/// to tell a plain-HTTP answer from other garbage, as Go's TLS client does.
#[derive(Clone, Default)]
struct FirstBytes(Arc<Mutex<Vec<u8>>>);

impl FirstBytes {
    const KEEP: usize = 5;

    fn wrap<S>(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            first: self.clone(),
        }
    }

    fn get(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// A stream that copies the first [`FirstBytes::KEEP`] bytes it reads into its [`FirstBytes`].
struct Recorded<S> {
    inner: S,
    first: FirstBytes,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Ok(mut first) = self.first.0.lock()
            && first.len() < FirstBytes::KEEP
        {
            let new = &buf.filled()[before..];
            let take = new.len().min(FirstBytes::KEEP - first.len());
            first.extend_from_slice(&new[..take]);
        }
        poll
    }
}

super::conn::writes_through!(Recorded);

/// Maps a handshake error to a reason and a sentence; rustls's error travels inside the io::Error.
fn classify(error: &io::Error, server_name: &str, chain: &[Arc<CertSummary>]) -> (Reason, String) {
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

/// The server's word on the client certificate, after a TLS 1.3 handshake.
enum Verdict {
    Refused(AlertDescription),
    /// No refusal: the bytes it sent meanwhile, if any (to be read again by the HTTP client).
    Accepted(Vec<u8>),
}

/// Waits at most [`VERDICT_WAIT`] for the fatal alert with which the server refuses the client's
/// certificate (or its absence). Application data (a server that speaks first) or silence
/// means it accepted; what was read is handed back, so the connection stays usable.
async fn client_auth_verdict<S>(tls: &mut TlsStream<S>) -> Verdict
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut early = vec![0u8; 16 * 1024];
    let verdict = async {
        match tls.read(&mut early).await {
            Ok(n) => Ok(n),
            Err(error) => Err(alert_of(&error)),
        }
    };
    match tokio::time::timeout(VERDICT_WAIT, verdict).await {
        Ok(Err(Some(alert))) => Verdict::Refused(alert),
        Ok(Ok(n)) => {
            early.truncate(n);
            Verdict::Accepted(early)
        }
        // Silence, or a failure that is no alert (the HTTP step will meet it).
        Err(_) | Ok(Err(None)) => Verdict::Accepted(Vec::new()),
    }
}

/// The fatal alert the server sent, when that is what ended the connection.
fn alert_of(error: &io::Error) -> Option<AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// The server asked for a client certificate and then refused with `alert`: what it wanted,
/// what it got, and where the runtime takes its client certificate from.
fn client_auth_refused(asked: &ClientAuthAsked, alert: AlertDescription) -> String {
    let issuers: Vec<String> = asked
        .acceptable_issuers
        .iter()
        .filter_map(|der| X509Name::from_der(der).ok())
        .map(|(_, name)| name.to_string())
        .collect();
    let where_set = "`client` in containerd's hosts.toml, or a <name>.cert/<name>.key pair in the registry's certs.d directory";
    let offered = asked
        .offered
        .as_ref()
        .map(|cert| summarise(std::slice::from_ref(cert)));
    match offered.as_deref() {
        None => {
            let from = if issuers.is_empty() {
                String::new()
            } else {
                format!(" issued by {}", issuers.join(" or "))
            };
            if asked.configured == 0 {
                format!(
                    "the registry requires a client certificate{from} (mutual TLS) and refused the connection without one (alert {alert:?}); none is configured for this endpoint: set {where_set}"
                )
            } else {
                format!(
                    "the registry requires a client certificate{from} (mutual TLS) and refused the connection without one (alert {alert:?}); none of the {} configured for this endpoint is issued by a CA it accepts, so none is sent (as the runtime's TLS client does): configure one it accepts ({where_set})",
                    asked.configured
                )
            }
        }
        Some(sent) => {
            let sent = sent
                .first()
                .map(|c| {
                    let expiry = days_phrase(c.not_after - unix_now());
                    format!("{} issued by {}, expiry {expiry}", c.subject, c.issuer)
                })
                .unwrap_or_else(|| "(unreadable)".into());
            let accepts = if issuers.is_empty() {
                String::new()
            } else {
                format!(
                    "; it accepts certificates issued by {}",
                    issuers.join(" or ")
                )
            };
            format!(
                "the registry refused the client certificate {sent} (alert {alert:?}){accepts}: check the one configured for this endpoint ({where_set})"
            )
        }
    }
}

/// "leaf CN=x (SAN a, b) issued by CN=ca, expires in 12 days" — the facts that explain TLS failures.
fn describe_chain(chain: &[Arc<CertSummary>]) -> String {
    let Some(leaf) = chain.first() else {
        return "no certificate received".into();
    };
    let now = unix_now();
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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
        let leaf = Arc::new(CertSummary {
            subject: "CN=other".into(),
            issuer: "CN=ca".into(),
            sans: vec!["other.test".into()],
            not_before: 0,
            not_after: 0,
        });
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

    /// A server that requires a client certificate refuses one that has none: in TLS 1.2 during
    /// the handshake, in TLS 1.3 after it (the verdict the check waits for). Both are explained.
    #[tokio::test]
    async fn a_server_requiring_a_client_certificate_is_explained_in_both_versions() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use rustls::pki_types::PrivateKeyDer;
        use rustls::server::WebPkiClientVerifier;
        use std::sync::Arc;

        let ca_params = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
        };
        let server_ca_key = KeyPair::generate().unwrap();
        let server_ca = ca_params("server CA").self_signed(&server_ca_key).unwrap();
        let server_issuer = Issuer::new(ca_params("server CA"), server_ca_key);
        let client_ca_key = KeyPair::generate().unwrap();
        let client_ca = ca_params("client CA").self_signed(&client_ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["registry.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &server_issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, server_ca.pem()).unwrap();
        let client = crate::trust::Trust::load(&[])
            .unwrap()
            .client(&crate::trust::TlsOptions {
                ca_files: vec![ca_file],
                ..Default::default()
            })
            .unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_roots = rustls::RootCertStore::empty();
        client_roots.add(client_ca.der().clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider.clone())
                .build()
                .unwrap();
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let server = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_client_cert_verifier(verifier.clone())
                .with_single_cert(
                    vec![leaf.der().clone()],
                    PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
                )
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let serve = tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                acceptor.accept(stream).await.is_err()
            });
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let error = check(stream, "registry.test", &client)
                .await
                .expect_err("refused");
            assert_eq!(error.reason, Reason::TlsHandshake, "{version:?}: {error}");
            let message = error.to_string();
            assert!(
                message.starts_with("the registry requires a client certificate issued by CN=client CA (mutual TLS) and refused the connection without one (alert ")
                    && message.contains("none is configured for this endpoint")
                    && message.contains("(SAN registry.test) issued by CN=server CA"),
                "{version:?}: {message}"
            );
            assert!(serve.await.unwrap(), "the server refused");
        }
    }
}
