//! Which certificates the node trusts (system roots plus extra CA files) and the rustls client
//! configs built from them: one verifier that records the peer's chain even when it rejects it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::bounded_file;

/// The trust store every check uses: system roots plus `--ca-file`s, ring as the one provider.
#[derive(Clone)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    verifiers: Arc<Mutex<Verifiers>>,
}

/// Server verifiers built for a route's CA files, shared by every check of it: building one
/// copies the whole root store and reads and parses the files again, at every check. An entry is
/// used only while each file's size and modification time are those it was built from, so an
/// edited CA file is read again on the next check.
#[derive(Default)]
struct Verifiers(HashMap<Vec<PathBuf>, (Vec<FileStamp>, Arc<WebPkiServerVerifier>)>);

/// Distinct CA-file sets kept (routes × endpoints stay far below it); past it, all are dropped.
const MAX_VERIFIERS: usize = 256;

/// A file's size and modification time, which change when it is rewritten.
type FileStamp = (u64, Option<std::time::SystemTime>);

fn stamps(paths: &[PathBuf]) -> Option<Vec<FileStamp>> {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.len(), meta.modified().ok()))
        })
        .collect()
}

/// Per-endpoint TLS settings (route-specific CA files, client certificate, skip_verify).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub ca_files: Vec<PathBuf>,
    /// Certificate and key files, in the configured order. The handshake presents the first
    /// whose chain was issued by a CA the server names, as Go's TLS client (the runtime) picks.
    pub client_certs: Vec<(PathBuf, PathBuf)>,
    pub skip_verify: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("client certificate {path}: {message}")]
    ClientCert { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A client config for one endpoint, with the slot its handshakes record the peer chain into.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub chain: PeerChain,
    pub client_auth: ClientAuthSlot,
    pub skip_verify: bool,
}

/// What the server of the last handshake made with a config asked of the client: `None` when it
/// asked for no client certificate.
#[derive(Clone, Debug, Default)]
pub struct ClientAuthSlot(Arc<Mutex<Option<ClientAuthAsked>>>);

/// A server's request for a client certificate (mutual TLS), and the answer given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAuthAsked {
    /// The issuers it accepts client certificates from (DER distinguished names); may be empty.
    pub acceptable_issuers: Vec<Vec<u8>>,
    /// The configured client certificate (the leaf) that was offered; `None`: none configured,
    /// or none of those configured was issued by a CA the server accepts.
    pub offered: Option<CertificateDer<'static>>,
    /// How many client certificates are configured for the endpoint.
    pub configured: usize,
}

impl ClientAuthSlot {
    pub fn asked(&self) -> Option<ClientAuthAsked> {
        self.0.lock().ok().and_then(|asked| asked.clone())
    }

    /// Forgets the last handshake's request, before a new handshake.
    pub fn clear(&self) {
        if let Ok(mut asked) = self.0.lock() {
            *asked = None;
        }
    }

    fn record(&self, asked: ClientAuthAsked) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(asked);
        }
    }
}

/// The chain the server presented in the last handshake made with a config, verified or not.
#[derive(Clone, Debug, Default)]
pub struct PeerChain(Arc<Mutex<Vec<CertificateDer<'static>>>>);

impl PeerChain {
    pub fn certificates(&self) -> Vec<CertificateDer<'static>> {
        self.0.lock().map(|chain| chain.clone()).unwrap_or_default()
    }

    fn record(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) {
        if let Ok(mut chain) = self.0.lock() {
            *chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        }
    }
}

impl Trust {
    /// Loads the system roots and `ca_files` (each must hold at least one PEM certificate).
    pub fn load(ca_files: &[PathBuf]) -> Result<Self, TrustError> {
        install_ring_provider();
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(system_roots());
        tracing::debug!(added, ignored, "system CA certificates");
        let trust = Trust {
            roots: Arc::new(roots),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            verifiers: Arc::default(),
        };
        trust.with_ca_files(ca_files)
    }

    /// This trust plus `ca_files`, for one route's `ca` entries.
    pub fn with_ca_files(&self, ca_files: &[PathBuf]) -> Result<Self, TrustError> {
        if ca_files.is_empty() {
            return Ok(self.clone());
        }
        let mut roots = (*self.roots).clone();
        for path in ca_files {
            let certs = read_certificates(path)?;
            for cert in certs {
                roots.add(cert).map_err(|e| TrustError::CaFile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            }
        }
        Ok(Trust {
            roots: Arc::new(roots),
            provider: self.provider.clone(),
            verifiers: Arc::default(),
        })
    }

    /// The server verifier for these extra CA files: the one built last time while the files
    /// are unchanged, else a new one.
    fn verifier(&self, ca_files: &[PathBuf]) -> Result<Arc<WebPkiServerVerifier>, TrustError> {
        let stamped = stamps(ca_files);
        if let (Some(stamped), Ok(cache)) = (&stamped, self.verifiers.lock())
            && let Some((built_from, verifier)) = cache.0.get(ca_files)
            && built_from == stamped
        {
            return Ok(verifier.clone());
        }
        let trust = self.with_ca_files(ca_files)?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(trust.roots, trust.provider.clone())
                .build()
                .map_err(|e| TrustError::Config(e.to_string()))?;
        if let (Some(stamped), Ok(mut cache)) = (stamped, self.verifiers.lock()) {
            if cache.0.len() >= MAX_VERIFIERS {
                cache.0.clear();
            }
            cache
                .0
                .insert(ca_files.to_vec(), (stamped, verifier.clone()));
        }
        Ok(verifier)
    }

    /// A client for one endpoint's TLS settings.
    pub fn client(&self, options: &TlsOptions) -> Result<TlsClient, TrustError> {
        let inner = self.verifier(&options.ca_files)?;
        let chain = PeerChain::default();
        let verifier = Arc::new(RecordingVerifier {
            inner,
            chain: chain.clone(),
            skip_verify: options.skip_verify,
        });
        let pairs = options
            .client_certs
            .iter()
            .map(|(cert, key)| load_client_pair(cert, key, &self.provider))
            .collect::<Result<Vec<_>, _>>()?;
        let client_auth = ClientAuthSlot::default();
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TrustError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(RecordingClientCert {
                pairs,
                asked: client_auth.clone(),
            }));
        // No ALPN, as the runtimes' clients: containerd's registry transport (1.6 to 2.x,
        // remotes/docker/config/hosts.go; CRI's own in pkg/cri/server/image_pull.go) and
        // CRI-O's (containers/image docker/docker_client.go with pkg/tlsclientconfig) set a
        // DialContext and a TLSClientConfig without ForceAttemptHTTP2, so Go's net/http never
        // sets up HTTP/2 and its ClientHello names no protocol: registries are spoken to in
        // HTTP/1.1 only.
        Ok(TlsClient {
            config: Arc::new(config),
            chain,
            client_auth,
            skip_verify: options.skip_verify,
        })
    }
}

/// The system's CA certificates; those that cannot be loaded are logged and left out.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "some system CA certificates could not be loaded");
    }
    native.certs
}

/// Makes ring the process-wide provider too, for clients that build their own TLS config
/// (reqwest for plain-HTTP endpoints and the Kubernetes API): one crypto provider across the build.
pub fn install_ring_provider() {
    // Err means one is installed already; ring is the only one compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let fail = |message: String| TrustError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let pem =
        bounded_file::read(path, bounded_file::PEM).map_err(|e| fail(e.problem.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TrustError> {
    let fail = |message: String| TrustError::ClientCert {
        path: path.display().to_string(),
        message,
    };
    let pem =
        bounded_file::read(path, bounded_file::PEM).map_err(|e| fail(e.problem.to_string()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| fail(format!("not PEM: {e}")))?
        .ok_or_else(|| fail("no PEM private key in the file".into()))
}

/// One configured client certificate, its key, and the issuers of its chain (raw DER names),
/// which decide whether a server's certificate request matches it.
#[derive(Debug)]
struct ClientPair {
    key: Arc<CertifiedKey>,
    issuers: Vec<Vec<u8>>,
}

/// Reads one `client` pair (a lone file holds both, as containerd reads it).
fn load_client_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<ClientPair, TrustError> {
    // A client certificate that cannot be read is named as one, not as a CA file.
    let certs = read_certificates(cert).map_err(|error| match error {
        TrustError::CaFile { path, message } => TrustError::ClientCert { path, message },
        other => other,
    })?;
    let private = read_private_key(key).map_err(|error| match error {
        TrustError::ClientCert { path, message } if key == cert => TrustError::ClientCert {
            path,
            message: format!(
                "{message}: a `client` entry that is one file must hold the key too; separate files go in pairs, client = [[\"cert.pem\", \"key.pem\"]]"
            ),
        },
        other => other,
    })?;
    let issuers = certs
        .iter()
        .filter_map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, parsed)| parsed.issuer().as_raw().to_vec())
        })
        .collect();
    let key =
        CertifiedKey::from_der(certs, private, provider).map_err(|e| TrustError::ClientCert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    Ok(ClientPair {
        key: Arc::new(key),
        issuers,
    })
}

/// Offers a configured client certificate whenever a server asks for one, chosen as Go's TLS
/// client (containerd, CRI-O) chooses among several (`crypto/tls`, `getClientCertificate` and
/// `CertificateRequestInfo.SupportsCertificate`): the first whose key can sign with a scheme the
/// server accepts and, when the server names acceptable CAs, one of whose chain's issuers is
/// among them; none matching, no certificate at all. Remembers what was asked and offered.
#[derive(Debug)]
struct RecordingClientCert {
    pairs: Vec<ClientPair>,
    asked: ClientAuthSlot,
}

impl RecordingClientCert {
    fn choose(&self, acceptable: &[&[u8]], sigschemes: &[SignatureScheme]) -> Option<&ClientPair> {
        self.pairs.iter().find(|pair| {
            pair.key.key.choose_scheme(sigschemes).is_some()
                && (acceptable.is_empty()
                    || pair
                        .issuers
                        .iter()
                        .any(|issuer| acceptable.contains(&issuer.as_slice())))
        })
    }
}

impl ResolvesClientCert for RecordingClientCert {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let chosen = self.choose(root_hint_subjects, sigschemes);
        self.asked.record(ClientAuthAsked {
            acceptable_issuers: root_hint_subjects.iter().map(|s| s.to_vec()).collect(),
            offered: chosen.and_then(|pair| pair.key.cert.first().cloned()),
            configured: self.pairs.len(),
        });
        chosen.map(|pair| pair.key.clone())
    }

    fn has_certs(&self) -> bool {
        !self.pairs.is_empty()
    }
}

/// Delegates to webpki, but first keeps a copy of the chain so a rejected one can be explained.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    chain: PeerChain,
    skip_verify: bool,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain.record(end_entity, intermediates);
        if self.skip_verify {
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let cases = [
            (PathBuf::from("/nonexistent/ca.pem"), "No such file"),
            (not_pem, "no PEM certificate"),
            (
                PathBuf::from("/dev/zero"),
                "is a character device, not a regular file",
            ),
        ];
        for (path, want) in cases {
            let error = Trust::load(std::slice::from_ref(&path))
                .err()
                .expect("must fail");
            let text = error.to_string();
            assert!(
                text.contains(&path.display().to_string()) && text.contains(want),
                "{text}"
            );
        }
    }

    #[test]
    fn a_routes_verifier_is_built_once_and_again_when_its_ca_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let pem = |name: &str| {
            rcgen::generate_simple_self_signed(vec![name.to_string()])
                .unwrap()
                .cert
                .pem()
        };
        std::fs::write(&ca, pem("first.test")).unwrap();
        let trust = Trust::load(&[]).unwrap();
        let files = [ca.clone()];
        let first = trust.verifier(&files).unwrap();
        assert!(Arc::ptr_eq(&first, &trust.verifier(&files).unwrap()));
        // A clone (another task's copy of the trust) shares what was built.
        assert!(Arc::ptr_eq(
            &first,
            &trust.clone().verifier(&files).unwrap()
        ));

        // Rewritten with another CA (longer, so the size changes whatever the clock's grain).
        std::fs::write(&ca, pem("a-longer-name-for-the-second.test")).unwrap();
        let second = trust.verifier(&files).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "the edited file is read again"
        );
        assert!(Arc::ptr_eq(&second, &trust.verifier(&files).unwrap()));

        // Gone: the error names it, as before the cache.
        std::fs::remove_file(&ca).unwrap();
        let error = trust.verifier(&files).expect_err("a missing CA file fails");
        assert!(error.to_string().contains("ca.crt"), "{error}");
    }
}
