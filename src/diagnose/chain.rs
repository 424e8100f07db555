//! The connectivity chain of one endpoint: dns → tcp → tls (straight, or through the proxy the
//! runtime would use), then `GET /v2/` over a client pinned to the address the tcp check reached.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use super::{Diagnoser, Link, OnCheck, Probe};
use crate::check::dns::DnsOutcome;
use crate::check::tls::TlsFailed;
use crate::check::{self, CheckKind, CheckResult};
use crate::http_client;
use crate::proxy::{self, Proxy};
use crate::reason::Reason;
use crate::route::{Endpoint, Scheme};

impl Diagnoser {
    /// Runs dns → tcp → tls → http against one endpoint, stopping at the first failure.
    pub async fn probe(&self, endpoint: &Endpoint) -> Probe {
        self.probe_observed(endpoint, &|_, _| {}).await
    }

    /// [`Diagnoser::probe`], telling `on_check` about every check as it completes.
    pub async fn probe_observed(&self, endpoint: &Endpoint, on_check: OnCheck<'_>) -> Probe {
        self.probe_linked(endpoint, on_check).await.0
    }

    /// [`Diagnoser::probe_observed`], also returning the client for the steps after `/v2/`.
    pub async fn probe_linked(
        &self,
        endpoint: &Endpoint,
        on_check: OnCheck<'_>,
    ) -> (Probe, Option<Link>) {
        let mut probe = Probe::default();
        let Some(link) = self.reach(endpoint, &mut probe, on_check).await else {
            return (probe, None);
        };
        let ping = check::http::check(&link.client, endpoint, link.proxied);
        let ran = check::run(CheckKind::Http, self.timeout, ping).await;
        let failed_status = ran.error().and_then(|e| e.status);
        let (result, http) = ran.split();
        on_check(endpoint, &result);
        probe.checks.push(result);
        probe.http_status = http.as_ref().map(|h| h.status).or(failed_status);
        probe.http = http;
        debug_assert!(probe.failed() || probe.http.is_some());
        (probe, Some(link))
    }

    /// Runs dns → tcp → tls against one endpoint (a registry's or a token server's), recording
    /// into `probe` and stopping at the first failure; then builds the client for its HTTP steps.
    pub async fn reach(
        &self,
        endpoint: &Endpoint,
        probe: &mut Probe,
        on_check: OnCheck<'_>,
    ) -> Option<Link> {
        let record = |probe: &mut Probe, result: CheckResult| {
            on_check(endpoint, &result);
            probe.checks.push(result);
        };
        let proxy = self.proxies.for_endpoint(endpoint);
        // Through a proxy, the node's own connection goes to the proxy, not the registry.
        let (host, port) = match proxy {
            Some(proxy) => (proxy.host().to_string(), proxy.port()),
            None => (endpoint.host.clone(), endpoint.port),
        };

        let (result, dns) = match host.parse::<IpAddr>() {
            Ok(ip) => literal_address(ip),
            // The lookup's own bound is inside the check's, so one family's answer outlives
            // the other's silence (as tcp's per-address bound below).
            Err(_) => check::run(
                CheckKind::Dns,
                self.timeout,
                check::dns::check(&self.resolver, &host, self.timeout.mul_f64(0.9)),
            )
            .await
            .split(),
        };
        record(probe, blame_proxy(result, proxy));
        let dns = dns?;
        let addresses = dns.addresses();
        probe.dns = Some(dns);

        // hosts.toml's `dial_timeout` bounds each attempt, within the check's own bound.
        let per_address = match endpoint.extras.dial_timeout {
            Some(dial) => dial.min(self.timeout.mul_f64(0.9)),
            None => self.timeout.mul_f64(0.9),
        };
        let (result, tcp) = check::run(
            CheckKind::Tcp,
            self.timeout,
            check::tcp::check(&addresses, port, per_address),
        )
        .await
        .split();
        record(probe, blame_proxy(result, proxy));
        let tcp = tcp?;
        let target = tcp.reachable()[0];
        probe.tcp = Some(tcp);

        let tls_client = match endpoint.scheme {
            Scheme::Http => None,
            Scheme::Https => match self.trust.client(&endpoint.tls) {
                Ok(client) => Some(client),
                Err(error) => {
                    record(probe, config_failure(CheckKind::Tls, error.to_string()));
                    return None;
                }
            },
        };
        if let Some(client) = &tls_client {
            let handshake = async {
                let stream = self.connect(endpoint, target, proxy).await?;
                check::tls::check(stream, &endpoint.host, client).await
            };
            let (result, tls) = check::run(CheckKind::Tls, self.timeout, handshake)
                .await
                .split();
            record(probe, result);
            probe.tls = Some(tls?);
        }

        let connect_to = proxy.is_none().then_some(target);
        match http_client::build(
            endpoint,
            connect_to,
            tls_client.as_ref(),
            proxy,
            self.timeout,
        ) {
            Ok(client) => Some(Link {
                client,
                proxied: proxy.is_some(),
                address: connect_to,
            }),
            Err(error) => {
                record(probe, config_failure(CheckKind::Http, error.to_string()));
                None
            }
        }
    }

    /// A TCP stream to the endpoint: straight to `target`, or a CONNECT tunnel through `proxy`.
    async fn connect(
        &self,
        endpoint: &Endpoint,
        target: SocketAddr,
        proxy: Option<&Proxy>,
    ) -> Result<TcpStream, TlsFailed> {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| TlsFailed::connect(&e))?;
        match proxy {
            None => Ok(stream),
            Some(proxy) => {
                proxy::tunnel(stream, proxy, &endpoint.host, endpoint.port, self.timeout)
                    .await
                    .map_err(|e| TlsFailed {
                        reason: Reason::ProxyError,
                        message: e.to_string(),
                        chain: vec![],
                    })
            }
        }
    }
}

/// A host that is an IP literal: no lookup, as in the runtime.
fn literal_address(ip: IpAddr) -> (CheckResult, Option<DnsOutcome>) {
    use crate::check::Evidence;
    let outcome = DnsOutcome::literal(ip);
    let result = CheckResult {
        check: CheckKind::Dns,
        ok: true,
        seconds: 0.0,
        detail: outcome.detail(),
        reason: None,
    };
    (result, Some(outcome))
}

/// A failure to reach the proxy is the proxy's failure, whatever the step.
fn blame_proxy(mut result: CheckResult, proxy: Option<&Proxy>) -> CheckResult {
    if let (false, Some(proxy)) = (result.ok, proxy) {
        result.reason = Some(Reason::ProxyError);
        result.detail = format!("proxy {proxy}: {}", result.detail);
    }
    result
}

/// A check that could not even start because the endpoint's settings are unusable.
fn config_failure(check: CheckKind, detail: String) -> CheckResult {
    let reason = match check {
        CheckKind::Tls => Reason::TlsHandshake,
        _ => Reason::Unknown,
    };
    CheckResult {
        check,
        ok: false,
        seconds: 0.0,
        detail,
        reason: Some(reason),
    }
}
