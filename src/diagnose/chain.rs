//! The connectivity chain of one endpoint: dns → tcp → tls (straight, or through the proxy the
//! runtime would use), then `GET /v2/` over a client pinned to the address the tcp check reached.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use super::{Diagnoser, Link, OnCheck, Probe};
use crate::check::dns::DnsOutcome;
use crate::check::tcp::{TcpFailed, TcpOutcome};
use crate::check::tls::{TlsFailed, TlsOutcome};
use crate::check::{self, CheckKind, CheckResult, Failed};
use crate::http_client;
use crate::proxy::{self, Proxy};
use crate::reason::Reason;
use crate::route::{Endpoint, HttpFallback, Scheme};
use crate::trust::TlsClient;

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
        let served = link.via.as_ref().unwrap_or(endpoint);
        let ping = check::http::check(&link.client, served, link.proxied);
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

        let ran = self.tcp(endpoint, &addresses, port).await;
        // containerd (1.7.24+, 2.x) retries over plain HTTP on port 80 when HTTPS to a host
        // written without a port cannot connect.
        let fallback = endpoint.http_fallback.filter(|f| f.on_connect_failure);
        if let (Err(_), Some(fallback), None) = (&ran.outcome, fallback, proxy) {
            let http = plain_http(endpoint, fallback.port);
            let (mut retry, tcp) = self.tcp(&http, &addresses, fallback.port).await.split();
            retry.detail = format!(
                "HTTPS to port {port}: {}; {}: {}",
                ran.record.detail,
                fallback_rule(&fallback),
                retry.detail
            );
            record(probe, retry);
            let tcp = tcp?;
            let target = tcp.reachable()[0];
            probe.tcp = Some(tcp);
            return self.link(
                endpoint,
                Some(http),
                Some(target),
                None,
                None,
                probe,
                on_check,
            );
        }
        let (result, tcp) = ran.split();
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
            let ran = check::run(CheckKind::Tls, self.timeout, handshake).await;
            if let Some(fallback) = endpoint.http_fallback.filter(|f| falls_back(f, &ran)) {
                // The HTTPS attempt's failure is what sends containerd to plain HTTP: the tls
                // step passes, saying so; the HTTP steps go to the plain-HTTP endpoint.
                let mut note = ran.record;
                note.detail = format!("{}; {}", note.detail, fallback_rule(&fallback));
                note.ok = true;
                note.reason = None;
                record(probe, note);
                let http = plain_http(endpoint, fallback.port);
                let http_proxy = self.proxies.for_endpoint(&http);
                // The address the tcp check reached, unless that was a proxy's.
                let target = proxy
                    .is_none()
                    .then(|| SocketAddr::new(target.ip(), fallback.port));
                return self.link(
                    endpoint,
                    Some(http),
                    target,
                    None,
                    http_proxy,
                    probe,
                    on_check,
                );
            }
            let (result, tls) = ran.split();
            record(probe, result);
            probe.tls = Some(tls?);
        }
        self.link(
            endpoint,
            None,
            Some(target),
            tls_client.as_ref(),
            proxy,
            probe,
            on_check,
        )
    }

    /// The tcp check to `port` of `addresses`; hosts.toml's `dial_timeout` bounds each attempt,
    /// within the check's own bound.
    async fn tcp(
        &self,
        endpoint: &Endpoint,
        addresses: &[IpAddr],
        port: u16,
    ) -> check::Ran<TcpOutcome, TcpFailed> {
        let per_address = match endpoint.extras.dial_timeout {
            Some(dial) => dial.min(self.timeout.mul_f64(0.9)),
            None => self.timeout.mul_f64(0.9),
        };
        check::run(
            CheckKind::Tcp,
            self.timeout,
            check::tcp::check(addresses, port, per_address),
        )
        .await
    }

    /// The client for the HTTP steps, pinned to `target` (or the proxy; `None`: resolved by the
    /// client); `via`: the plain-HTTP endpoint of containerd's fallback, when taken.
    #[allow(
        clippy::too_many_arguments,
        reason = "the pieces the chain has gathered so far"
    )]
    fn link(
        &self,
        endpoint: &Endpoint,
        via: Option<Endpoint>,
        target: Option<SocketAddr>,
        tls_client: Option<&TlsClient>,
        proxy: Option<&Proxy>,
        probe: &mut Probe,
        on_check: OnCheck<'_>,
    ) -> Option<Link> {
        let connect_to = target.filter(|_| proxy.is_none());
        match http_client::build(
            via.as_ref().unwrap_or(endpoint),
            connect_to,
            tls_client,
            proxy,
            self.timeout,
        ) {
            Ok(client) => Some(Link {
                client,
                proxied: proxy.is_some(),
                via,
                address: connect_to,
            }),
            Err(error) => {
                let result = config_failure(CheckKind::Http, error.to_string());
                on_check(endpoint, &result);
                probe.checks.push(result);
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
                        plain_http: false,
                    })
            }
        }
    }
}

/// The plain-HTTP endpoint containerd's fallback talks to: the same host on `port`.
fn plain_http(endpoint: &Endpoint, port: u16) -> Endpoint {
    Endpoint {
        scheme: Scheme::Http,
        port,
        http_fallback: None,
        ..endpoint.clone()
    }
}

/// Whether the HTTPS attempt's failure sends containerd to plain HTTP: a plain-HTTP answer
/// always, a handshake timeout by version (`isTLSError` in `remotes/docker/resolver.go`).
fn falls_back(fallback: &HttpFallback, ran: &check::Ran<TlsOutcome, TlsFailed>) -> bool {
    match &ran.outcome {
        Ok(_) => false,
        Err(Failed::Error(error)) => error.plain_http,
        Err(Failed::TimedOut) => fallback.on_handshake_timeout,
    }
}

fn fallback_rule(fallback: &HttpFallback) -> String {
    format!(
        "the runtime falls back to plain HTTP ({})",
        fallback.describe()
    )
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
