//! Test certificates made with rcgen: a CA, leaves signed by it written as PEM files,
//! and one-call fixtures for each TLS condition the tls check must tell apart.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};

/// A certificate authority whose certificate is written to `ca.pem` in its own tempdir.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_path: PathBuf,
    _dir: TempDir,
}

impl TestCa {
    /// A new self-signed CA with common name `name`, valid from a day ago for ten years.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let dir = tempfile::Builder::new()
            .prefix("pw-ca-")
            .tempdir()
            .expect("CA tempdir");
        let cert_path = dir.path().join("ca.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write ca.pem");
        Self {
            issuer: Issuer::new(params, key),
            cert_path,
            _dir: dir,
        }
    }

    /// The CA certificate (PEM); what a test passes as `--ca-file`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate path as a string, for command lines.
    pub fn cert_path_str(&self) -> &str {
        self.cert_path.to_str().expect("tempdir paths are UTF-8")
    }

    /// A server certificate for `names` (DNS names or IP literals), valid in the given
    /// window, signed by this CA.
    pub fn leaf(
        &self,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())
            .unwrap_or_else(|e| panic!("certificate names {names:?}: {e}"));
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let dir = tempfile::Builder::new()
            .prefix("pw-leaf-")
            .tempdir()
            .expect("leaf tempdir");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write cert.pem");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key.pem");
        std::fs::copy(&self.cert_path, &ca_path).expect("copy ca.pem");
        Leaf {
            cert_path,
            key_path,
            issuer_ca_path: ca_path,
            names,
            _dir: dir,
        }
    }

    /// A leaf valid now (from an hour ago for 30 days and 12 hours). The half day keeps the
    /// reports' whole-day "expiry in 30 days" the same for every run of a test: ending exactly
    /// 30 days out, it read 30 within the second the leaf was made and 29 after, so two runs
    /// compared (the agent's and a local one) differed by when they ran.
    pub fn valid_leaf(&self, names: &[&str]) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.leaf(
            names,
            now - Duration::hours(1),
            now + Duration::days(30) + Duration::hours(12),
        )
    }

    /// A client certificate (extended key usage `clientAuth`) with common name `name`, valid
    /// now for 30 days, signed by this CA: what a registry with `http.tls.clientcas` asks for.
    pub fn client_cert(&self, name: &str) -> ClientCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(30);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign client cert");
        let dir = tempfile::Builder::new()
            .prefix("pw-client-")
            .tempdir()
            .expect("client cert tempdir");
        let cert_path = dir.path().join("client.cert.pem");
        let key_path = dir.path().join("client.key.pem");
        let combined_path = dir.path().join("client.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write client.cert.pem");
        std::fs::write(&key_path, key.serialize_pem()).expect("write client.key.pem");
        std::fs::write(
            &combined_path,
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )
        .expect("write client.pem");
        ClientCert {
            cert_path,
            key_path,
            combined_path,
            _dir: dir,
        }
    }
}

/// A client certificate and its key as PEM files in their own tempdir, apart and together.
pub struct ClientCert {
    /// The certificate alone (PEM).
    pub cert_path: PathBuf,
    /// Its private key alone (PKCS#8 PEM).
    pub key_path: PathBuf,
    /// Certificate then key in one PEM file (containerd's `client = "file"` form).
    pub combined_path: PathBuf,
    _dir: TempDir,
}

/// A server certificate and key as PEM files in their own tempdir.
pub struct Leaf {
    /// The leaf certificate (PEM).
    pub cert_path: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key_path: PathBuf,
    /// A copy of the CA certificate that signed it.
    pub issuer_ca_path: PathBuf,
    /// The subject alternative names it was issued for.
    pub names: Vec<String>,
    _dir: TempDir,
}

/// The four TLS conditions, ready to hand to a server. The client trusts only
/// [`TlsFixtures::ca`]; `unknown_ca` is signed by a second CA it is never given.
pub struct TlsFixtures {
    /// The CA the client is told about (`--ca-file`).
    pub ca: TestCa,
    /// Valid now for the host name and for 127.0.0.1.
    pub valid: Leaf,
    /// For the host name and 127.0.0.1, but expired yesterday.
    pub expired: Leaf,
    /// Valid now, but for `other.invalid` only.
    pub wrong_name: Leaf,
    /// Valid now for the host name and 127.0.0.1, signed by an untrusted CA.
    pub unknown_ca: Leaf,
    /// Kept (with its files) as long as the fixtures: the CA of `unknown_ca`.
    _untrusted_ca: TestCa,
}

impl TlsFixtures {
    /// Certificates for a server reached as `host`.
    pub fn for_host(host: &str) -> Self {
        let ca = TestCa::new("pullwatch test CA");
        let untrusted_ca = TestCa::new("pullwatch untrusted CA");
        let now = OffsetDateTime::now_utc();
        let names = [host, "127.0.0.1"];
        Self {
            valid: ca.valid_leaf(&names),
            expired: ca.leaf(&names, now - Duration::days(30), now - Duration::days(1)),
            wrong_name: ca.valid_leaf(&["other.invalid"]),
            unknown_ca: untrusted_ca.valid_leaf(&names),
            ca,
            _untrusted_ca: untrusted_ca,
        }
    }
}
