//! Runs the chain for one image along its route: for every endpoint dns → tcp → tls → http, each
//! step only when the ones before it passed, and turns the results into a [`Report`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::check::dns::{DnsOutcome, DnsResolver};
use crate::check::http::HttpOutcome;
use crate::check::tcp::TcpOutcome;
use crate::check::tls::{TlsFailed, TlsOutcome};
use crate::check::{self, CheckKind, CheckResult};
use crate::http_client;
use crate::proxy::{self, Proxy, ProxySettings};
use crate::reason::Reason;
use crate::reference::ImageRef;
use crate::report::{EndpointReport, Report};
use crate::route::{self, Endpoint, Scheme};
use crate::trust::Trust;

/// What the checks need from the node, built once at start-up.
pub struct Diagnoser {
    pub resolver: DnsResolver,
    pub trust: Trust,
    pub proxies: ProxySettings,
    /// Per check.
    pub timeout: Duration,
    pub insecure_registries: Vec<String>,
}

/// The results of probing one endpoint: the records, plus the outcomes the agent's metrics read.
#[derive(Debug, Default)]
pub struct Probe {
    pub checks: Vec<CheckResult>,
    pub dns: Option<DnsOutcome>,
    pub tcp: Option<TcpOutcome>,
    pub tls: Option<TlsOutcome>,
    pub http: Option<HttpOutcome>,
}

impl Probe {
    fn failed(&self) -> bool {
        self.checks.iter().any(|c| !c.ok)
    }
}

/// Sees each check record the moment it is made (the agent's `Diagnose` API streams them).
pub type OnCheck<'a> = &'a (dyn Fn(&Endpoint, &CheckResult) + Sync);

impl Diagnoser {
    /// Diagnoses one image as typed by a person or a pod spec.
    pub async fn diagnose(&self, input: &str) -> Report {
        self.diagnose_observed(input, &|_, _| {}).await
    }

    /// [`Diagnoser::diagnose`], telling `on_check` about every check as it completes.
    pub async fn diagnose_observed(&self, input: &str, on_check: OnCheck<'_>) -> Report {
        let image = match ImageRef::parse(input) {
            Ok(image) => image,
            Err(error) => return invalid_reference(input, "", error.to_string()),
        };
        let route = match route::default_route(image.registry(), &self.insecure_registries) {
            Ok(route) => route,
            Err(error) => {
                return invalid_reference(&image.to_string(), image.registry(), error.to_string());
            }
        };
        let mut endpoints = Vec::with_capacity(route.endpoints.len());
        for endpoint in &route.endpoints {
            let probe = self.probe_observed(endpoint, on_check).await;
            endpoints.push(EndpointReport {
                endpoint: endpoint.url(),
                role: endpoint.role,
                source: endpoint.source.clone(),
                checks: probe.checks,
            });
        }
        conclude(image.to_string(), route.registry, endpoints)
    }

    /// Runs dns → tcp → tls → http against one endpoint, stopping at the first failure.
    pub async fn probe(&self, endpoint: &Endpoint) -> Probe {
        self.probe_observed(endpoint, &|_, _| {}).await
    }

    /// [`Diagnoser::probe`], telling `on_check` about every check as it completes.
    pub async fn probe_observed(&self, endpoint: &Endpoint, on_check: OnCheck<'_>) -> Probe {
        let mut probe = Probe::default();
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
            Err(_) => {
                check::run(
                    CheckKind::Dns,
                    self.timeout,
                    check::dns::check(&self.resolver, &host),
                )
                .await
            }
        };
        record(&mut probe, blame_proxy(result, proxy));
        let Some(dns) = dns else { return probe };
        let addresses = dns.addresses();
        probe.dns = Some(dns);

        let per_address = self.timeout.mul_f64(0.9);
        let (result, tcp) = check::run(
            CheckKind::Tcp,
            self.timeout,
            check::tcp::check(&addresses, port, per_address),
        )
        .await;
        record(&mut probe, blame_proxy(result, proxy));
        let Some(tcp) = tcp else { return probe };
        let target = tcp.reachable()[0];
        probe.tcp = Some(tcp);

        let tls_client = match endpoint.scheme {
            Scheme::Http => None,
            Scheme::Https => match self.trust.client(&endpoint.tls) {
                Ok(client) => Some(client),
                Err(error) => {
                    record(
                        &mut probe,
                        config_failure(CheckKind::Tls, error.to_string()),
                    );
                    return probe;
                }
            },
        };
        if let Some(client) = &tls_client {
            let handshake = async {
                let stream = self.connect(endpoint, target, proxy).await?;
                check::tls::check(stream, &endpoint.host, client).await
            };
            let (result, tls) = check::run(CheckKind::Tls, self.timeout, handshake).await;
            record(&mut probe, result);
            if tls.is_none() {
                return probe;
            }
            probe.tls = tls;
        }

        let connect_to = proxy.is_none().then_some(target);
        let client = match http_client::build(
            endpoint,
            connect_to,
            tls_client.as_ref(),
            proxy,
            self.timeout,
        ) {
            Ok(client) => client,
            Err(error) => {
                record(
                    &mut probe,
                    config_failure(CheckKind::Http, error.to_string()),
                );
                return probe;
            }
        };
        let (result, http) = check::run(
            CheckKind::Http,
            self.timeout,
            check::http::check(&client, &endpoint.url(), proxy.is_some()),
        )
        .await;
        record(&mut probe, result);
        probe.http = http;
        debug_assert!(probe.failed() || probe.http.is_some());
        probe
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

fn invalid_reference(image: &str, registry: &str, message: String) -> Report {
    let reason = Reason::InvalidReference;
    Report {
        image: image.to_string(),
        registry: registry.to_string(),
        pullable: false,
        reason: Some(reason),
        summary: message,
        fix: Some(reason.fix(registry, "")),
        endpoints: vec![],
    }
}

/// Pullable when any endpoint passed (the runtime falls back along the route); otherwise the
/// cause is the last endpoint's failure, the one the runtime reports.
pub fn conclude(image: String, registry: String, endpoints: Vec<EndpointReport>) -> Report {
    if let Some(good) = endpoints.iter().find(|e| e.passed()) {
        let evidence = good
            .checks
            .last()
            .map(|c| c.detail.as_str())
            .unwrap_or_default();
        return Report {
            summary: format!("reachable via {} ({evidence})", good.endpoint),
            image,
            registry,
            pullable: true,
            reason: None,
            fix: None,
            endpoints,
        };
    }
    let last = endpoints
        .iter()
        .rev()
        .find_map(|e| e.failure().map(|f| (e, f)));
    let (reason, summary, fix) = match last {
        Some((endpoint, failure)) => {
            let reason = failure.reason.unwrap_or(Reason::Unknown);
            // The first clause says what is wrong; the rest of the evidence is on the check's line.
            let headline = failure.detail.split("; ").next().unwrap_or_default();
            let mut summary = format!(
                "{} ({}): {headline}",
                endpoint.endpoint,
                failure.check.as_str()
            );
            for other in endpoints.iter().filter(|e| e.endpoint != endpoint.endpoint) {
                if let Some(f) = other.failure() {
                    summary.push_str(&format!(
                        "; {} {} also failed: {}",
                        other.role.as_str(),
                        other.endpoint,
                        f.reason.unwrap_or(Reason::Unknown)
                    ));
                }
            }
            (reason, summary, reason.fix(&registry, &endpoint.endpoint))
        }
        None => (
            Reason::Unknown,
            "no endpoint to try".to_string(),
            Reason::Unknown.fix(&registry, ""),
        ),
    };
    Report {
        image,
        registry,
        pullable: false,
        reason: Some(reason),
        summary,
        fix: Some(fix),
        endpoints,
    }
}
