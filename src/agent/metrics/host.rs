//! The facts about an endpoint's host whatever its role (resolved and reachable addresses, TLS,
//! HTTP status), as the last run saw them: a failed run leaves no stale TLS or HTTP facts. TLS is
//! always exported; addresses and status are detail, which the endpoint part asks for or removes.

use prometheus::{GaugeVec, IntGaugeVec, Registry};

use super::family::{Family, Labels};
use super::{DNS_ADDRESSES, HTTP_STATUS, TCP_REACHABLE, TLS_INFO, TLS_NOT_AFTER};
use crate::diagnose::Probe;

/// `registry, endpoint`: the families about the endpoint's host.
#[derive(Clone, Copy)]
pub(super) struct HostLabels<'a> {
    registry: &'a str,
    endpoint: &'a str,
}

/// `registry, endpoint, family`: the address counts.
struct AddressLabels<'a> {
    host: HostLabels<'a>,
    family: &'static str,
}

/// `registry, endpoint, version, verified`: `tls_info`.
struct TlsLabels<'a> {
    host: HostLabels<'a>,
    version: &'a str,
    verified: bool,
}

impl<'a> HostLabels<'a> {
    pub(super) fn new(registry: &'a str, endpoint: &'a str) -> Self {
        HostLabels { registry, endpoint }
    }

    pub(super) fn registry(&self) -> &'a str {
        self.registry
    }

    pub(super) fn endpoint(&self) -> &'a str {
        self.endpoint
    }
}

impl<'a> Labels for HostLabels<'a> {
    type Static = HostLabels<'static>;
    const NAMES: &'static [&'static str] = &["registry", "endpoint"];
    fn values(&self) -> Vec<&str> {
        vec![self.registry, self.endpoint]
    }
}

impl<'a> Labels for AddressLabels<'a> {
    type Static = AddressLabels<'static>;
    const NAMES: &'static [&'static str] = &["registry", "endpoint", "family"];
    fn values(&self) -> Vec<&str> {
        let mut values = self.host.values();
        values.push(self.family);
        values
    }
}

impl<'a> Labels for TlsLabels<'a> {
    type Static = TlsLabels<'static>;
    const NAMES: &'static [&'static str] = &["registry", "endpoint", "version", "verified"];
    fn values(&self) -> Vec<&str> {
        let mut values = self.host.values();
        values.extend([self.version, if self.verified { "true" } else { "false" }]);
        values
    }
}

/// The `family` label values.
const FAMILIES: [(&str, bool); 2] = [("ipv4", false), ("ipv6", true)];

/// The `tls_info` label set a host has now (the others' are fixed): version, verified.
pub(super) type TlsSeries = Option<(String, bool)>;

/// The families about an endpoint's host.
pub(super) struct HostMetrics {
    dns_addresses: Family<IntGaugeVec, AddressLabels<'static>>,
    tcp_reachable: Family<IntGaugeVec, AddressLabels<'static>>,
    tls_not_after: Family<GaugeVec, HostLabels<'static>>,
    tls_info: Family<IntGaugeVec, TlsLabels<'static>>,
    http_status: Family<IntGaugeVec, HostLabels<'static>>,
}

impl HostMetrics {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<Self> {
        Ok(HostMetrics {
            dns_addresses: Family::gauge(
                registry,
                DNS_ADDRESSES,
                "Addresses the endpoint's name resolved to in the last run.",
            )?,
            tcp_reachable: Family::gauge(
                registry,
                TCP_REACHABLE,
                "Resolved addresses that accepted a TCP connection in the last run.",
            )?,
            tls_not_after: Family::float(
                registry,
                TLS_NOT_AFTER,
                "Earliest not-after of the certificate chain the endpoint showed (unix seconds).",
            )?,
            tls_info: Family::gauge(
                registry,
                TLS_INFO,
                "The TLS version negotiated with the endpoint and whether the chain was verified.",
            )?,
            http_status: Family::gauge(
                registry,
                HTTP_STATUS,
                "Status of the endpoint's last GET /v2/.",
            )?,
        })
    }

    /// TLS as `probe` saw it; `tls` is the host's `tls_info` label set.
    pub(super) fn record(&self, host: HostLabels<'_>, probe: &Probe, tls: &mut TlsSeries) {
        let now = probe
            .tls
            .as_ref()
            .map(|tls| (tls.version.clone(), tls.verified));
        if *tls != now {
            self.remove_tls_info(host, tls);
            if let Some((version, verified)) = &now {
                self.tls_info
                    .with(&TlsLabels {
                        host,
                        version,
                        verified: *verified,
                    })
                    .set(1);
            }
            *tls = now;
        }
        let not_after = probe.tls.as_ref().and_then(|tls| tls.earliest_not_after());
        self.tls_not_after
            .set_or_remove(&host, not_after.map(|t| t as f64));
    }

    /// The detail: addresses and HTTP status as `probe` saw them.
    pub(super) fn record_detail(&self, host: HostLabels<'_>, probe: &Probe) {
        for (family, ipv6) in FAMILIES {
            let labels = AddressLabels { host, family };
            let resolved = probe
                .dns
                .as_ref()
                .map_or(0, |dns| if ipv6 { dns.v6.len() } else { dns.v4.len() });
            let reachable = probe.tcp.as_ref().map_or(0, |tcp| tcp.reachable_in(ipv6));
            self.dns_addresses.with(&labels).set(resolved as i64);
            self.tcp_reachable.with(&labels).set(reachable as i64);
        }
        self.http_status
            .set_or_remove(&host, probe.http_status.map(i64::from));
    }

    /// Removes the detail series of the host.
    pub(super) fn remove_detail(&self, host: HostLabels<'_>) {
        for (family, _) in FAMILIES {
            let labels = AddressLabels { host, family };
            self.dns_addresses.remove(&labels);
            self.tcp_reachable.remove(&labels);
        }
        self.http_status.remove(&host);
    }

    /// Removes every series of the host.
    pub(super) fn remove(&self, host: HostLabels<'_>, tls: &TlsSeries) {
        self.remove_detail(host);
        self.remove_tls_info(host, tls);
        self.tls_not_after.remove(&host);
    }

    fn remove_tls_info(&self, host: HostLabels<'_>, tls: &TlsSeries) {
        if let Some((version, verified)) = tls {
            self.tls_info.remove(&TlsLabels {
                host,
                version,
                verified: *verified,
            });
        }
    }
}
