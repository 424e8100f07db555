//! The peer's certificates as people read them (subject, issuer, SANs, validity), remembered per
//! certificate: a registry shows the same chain at every check, and parsing it again each time
//! was the largest share of a check's allocations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// One certificate of the peer chain, as people read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
}

/// Distinct certificates remembered (a node's registries show a few each); past it, all are
/// forgotten and summarised again.
const MAX_REMEMBERED: usize = 512;

/// Summaries by the certificate's DER bytes.
type Remembered = HashMap<Vec<u8>, Arc<CertSummary>>;

fn remembered() -> &'static Mutex<Remembered> {
    static REMEMBERED: OnceLock<Mutex<Remembered>> = OnceLock::new();
    REMEMBERED.get_or_init(Mutex::default)
}

/// Summarises the DER chain; a certificate x509-parser cannot read is skipped, not fatal. Shared,
/// not copied: a copy of every name and SAN at every check was the next largest share.
pub fn summarise(chain: &[CertificateDer<'_>]) -> Vec<Arc<CertSummary>> {
    chain
        .iter()
        .filter_map(|der| summary(der.as_ref()))
        .collect()
}

fn summary(der: &[u8]) -> Option<Arc<CertSummary>> {
    if let Ok(known) = remembered().lock()
        && let Some(summary) = known.get(der)
    {
        return Some(Arc::clone(summary));
    }
    let summary = Arc::new(parse(der)?);
    if let Ok(mut known) = remembered().lock() {
        if known.len() >= MAX_REMEMBERED {
            known.clear();
        }
        known.insert(der.to_vec(), Arc::clone(&summary));
    }
    Some(summary)
}

fn parse(der: &[u8]) -> Option<CertSummary> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
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
    Some(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> CertificateDer<'static> {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        rcgen::generate_simple_self_signed(names)
            .unwrap()
            .cert
            .der()
            .clone()
    }

    #[test]
    fn a_remembered_summary_is_the_parsed_one_and_the_memory_stays_bounded() {
        let leaf = cert(&["registry.test", "127.0.0.1"]);
        let first = summarise(std::slice::from_ref(&leaf));
        assert_eq!(first[0].sans, ["registry.test", "127.0.0.1"]);
        assert_eq!(first, summarise(std::slice::from_ref(&leaf)));
        assert_eq!(Some(&*first[0]), parse(leaf.as_ref()).as_ref());
        // Shared, not copied, while remembered.
        assert!(Arc::ptr_eq(
            &first[0],
            &summarise(std::slice::from_ref(&leaf))[0]
        ));
        // Unreadable bytes are skipped, as before, and not remembered.
        assert!(summarise(&[CertificateDer::from(vec![1, 2, 3])]).is_empty());
        for i in 0..MAX_REMEMBERED + 10 {
            summarise(&[cert(&[&format!("r{i}.test")])]);
        }
        let known = remembered().lock().unwrap().len();
        assert!(known <= MAX_REMEMBERED, "{known} remembered");
    }
}
