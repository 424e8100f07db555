//! Runs the chain for one image along its route: for every endpoint dns → tcp → tls → http → auth →
//! manifest, each step only when the ones before it passed, and turns the results into a [`Report`].

mod registry_api;

pub use registry_api::ApiProbe;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::check::auth::TokenCache;
use crate::check::dns::{DnsOutcome, DnsResolver};
use crate::check::http::HttpOutcome;
use crate::check::tcp::TcpOutcome;
use crate::check::tls::{TlsFailed, TlsOutcome};
use crate::check::{self, CheckKind, CheckResult};
use crate::credentials::Keyring;
use crate::http_client;
use crate::platform::Platform;
use crate::proxy::{self, Proxy, ProxySettings};
use crate::reason::Reason;
use crate::reference::ImageRef;
use crate::report::{EndpointReport, Report, push_token_server};
use crate::route::{Endpoint, Role, Route, RouteConfig, Scheme};
use crate::runtime::{PullAuth, RuntimeClient};
use crate::trust::Trust;

/// What the checks need from the node, built once at start-up.
pub struct Diagnoser {
    pub resolver: DnsResolver,
    pub trust: Trust,
    pub proxies: ProxySettings,
    /// Per check.
    pub timeout: Duration,
    /// Where routes come from (the runtime's registry config); see [`RouteConfig::resolve`].
    pub routes: RouteConfig,
    /// How this node pulls: credentials, platform, tokens (the auth and manifest checks).
    pub pull: PullSettings,
}

/// What the auth and manifest checks need beyond the network settings.
#[derive(Debug)]
pub struct PullSettings {
    /// `--docker-config`: credentials matched per image; `None` means anonymous pulls.
    pub credentials: Option<Keyring>,
    /// The node's platform, looked for in image indexes (`--platform`).
    pub platform: Platform,
    /// Pull tokens, each dropped when it expires.
    pub tokens: TokenCache,
}

impl PullSettings {
    /// The credentials for `image`, as the kubelet hands them to the runtime with a `PullImage`.
    pub fn pull_auth(&self, image: &ImageRef) -> Option<PullAuth> {
        let found = self
            .credentials
            .as_ref()?
            .lookup(image.registry(), image.repository())?;
        Some(PullAuth {
            username: found.username.clone(),
            password: found.password.expose().to_string(),
        })
    }
}

impl Default for PullSettings {
    /// Anonymous, this machine's platform.
    fn default() -> Self {
        PullSettings {
            credentials: None,
            platform: Platform::host(),
            tokens: TokenCache::default(),
        }
    }
}

/// The results of probing one endpoint: the records, plus the outcomes the agent's metrics read.
#[derive(Debug, Default)]
pub struct Probe {
    pub checks: Vec<CheckResult>,
    pub dns: Option<DnsOutcome>,
    pub tcp: Option<TcpOutcome>,
    pub tls: Option<TlsOutcome>,
    pub http: Option<HttpOutcome>,
    /// The `/v2/` status whenever the server answered, passing or not (a 503 is evidence too).
    pub http_status: Option<u16>,
}

/// What dns → tcp → tls leave for the HTTP steps: a client that talks to the endpoint only
/// through the address the tcp check reached (or the proxy).
#[derive(Clone, Debug)]
pub struct Link {
    pub client: reqwest::Client,
    pub proxied: bool,
}

impl Probe {
    fn failed(&self) -> bool {
        self.checks.iter().any(|c| !c.ok)
    }
}

/// Sees each check record the moment it is made (the agent's `Diagnose` API streams them).
pub type OnCheck<'a> = &'a (dyn Fn(&Endpoint, &CheckResult) + Sync);

/// An image and the route to check it along: what [`Diagnoser::route_image`] found.
#[derive(Debug)]
pub struct RoutedImage {
    pub image: ImageRef,
    pub route: Route,
    /// Malformed runtime config met on the way (the route fell back past it).
    problems: Vec<String>,
}

impl RoutedImage {
    /// The report of the endpoints checked along the route.
    pub fn conclude(self, endpoints: Vec<EndpointReport>) -> Report {
        let mut report = conclude(self.image.to_string(), self.route.registry, endpoints);
        if !self.problems.is_empty() {
            report.summary = format!(
                "{}; runtime registry config not used as written: {}",
                report.summary,
                self.problems.join("; ")
            );
        }
        report
    }
}

/// One endpoint's part of a diagnosis: its report, the token server it sent the client to, and
/// its connectivity probe (which the agent keeps as the endpoint's latest).
pub struct CheckedEndpoint {
    pub report: EndpointReport,
    pub token_server: Option<(Endpoint, Probe)>,
    pub probe: Arc<Probe>,
}

impl CheckedEndpoint {
    /// Appends the endpoint's report, then its token server's unless one is there already.
    pub fn add_to(self, endpoints: &mut Vec<EndpointReport>) {
        endpoints.push(self.report);
        if let Some((server, probe)) = self.token_server {
            push_token_server(endpoints, &server, probe.checks);
        }
    }
}

impl Diagnoser {
    /// Diagnoses one image as typed by a person or a pod spec.
    pub async fn diagnose(&self, input: &str) -> Report {
        self.diagnose_observed(input, &|_, _| {}).await
    }

    /// [`Diagnoser::diagnose`], telling `on_check` about every check as it completes. Endpoints
    /// are checked one after another, as the runtime tries them; an image index is fetched to
    /// check the node's platform.
    pub async fn diagnose_observed(&self, input: &str, on_check: OnCheck<'_>) -> Report {
        let routed = match self.route_image(input) {
            Ok(plan) => plan,
            Err(report) => return *report,
        };
        let mut endpoints = Vec::with_capacity(routed.route.endpoints.len());
        for endpoint in &routed.route.endpoints {
            let checked = self
                .check_endpoint(endpoint, &routed.image, Some(&self.pull.platform), on_check)
                .await;
            checked.add_to(&mut endpoints);
        }
        routed.conclude(endpoints)
    }

    /// Parses `input` and finds its route; a report instead when there is nothing to probe
    /// (an invalid reference, a blocked registry).
    pub fn route_image(&self, input: &str) -> Result<RoutedImage, Box<Report>> {
        let image = ImageRef::parse(input)
            .map_err(|error| Box::new(invalid_reference(input, "", error.to_string())))?;
        let configured = self
            .routes
            .resolve(image.registry(), Some(image.repository()))
            .map_err(|error| {
                Box::new(invalid_reference(
                    &image.to_string(),
                    image.registry(),
                    error.to_string(),
                ))
            })?;
        for problem in &configured.problems {
            tracing::warn!(%problem, registry = image.registry(), "runtime registry config not used as written");
        }
        if let Some(file) = &configured.blocked_by {
            return Err(Box::new(blocked(
                &image.to_string(),
                image.registry(),
                file,
            )));
        }
        // The runtime resolves a tag only through hosts that may resolve; a digest through any
        // that may pull.
        let route = configured.route_for(image.digest().is_some());
        let problems = configured.problems.iter().map(|p| p.to_string()).collect();
        Ok(RoutedImage {
            image,
            route,
            problems,
        })
    }

    /// The whole chain for `image` on one endpoint of its route: dns → … → `/v2/`, then auth and
    /// manifest (an index fetched for `platform` when given; a HEAD only without).
    pub async fn check_endpoint(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
        platform: Option<&Platform>,
        on_check: OnCheck<'_>,
    ) -> CheckedEndpoint {
        let (probe, link) = self.probe_linked(endpoint, on_check).await;
        let mut checks = probe.checks.clone();
        let mut token_server = None;
        if let (Some(http), Some(link)) = (&probe.http, &link) {
            let api = self
                .registry_api(endpoint, link, http, image, platform, on_check)
                .await;
            checks.extend(api.checks);
            token_server = api.token_server;
        }
        CheckedEndpoint {
            report: EndpointReport {
                endpoint: endpoint.url(),
                role: endpoint.role,
                source: endpoint.source.clone(),
                checks,
            },
            token_server,
            probe: Arc::new(probe),
        }
    }

    /// `diagnose --via-runtime`: the chain, then a real CRI `PullImage` by the node's runtime
    /// (with the `--docker-config` credentials, as the kubelet passes imagePullSecrets), whose
    /// verdict decides. `pull_timeout` bounds the pull, which may download the whole image.
    pub async fn diagnose_via_runtime(
        &self,
        input: &str,
        runtime: &RuntimeClient,
        pull_timeout: Duration,
    ) -> Report {
        let report = self.diagnose(input).await;
        let auth = ImageRef::parse(&report.image)
            .ok()
            .and_then(|image| self.pull.pull_auth(&image));
        let pull = check::runtime::check(runtime, &report.image, auth.as_ref(), pull_timeout);
        // The client gives up at `pull_timeout`; the outer bound only catches a hang past it.
        let ran = check::run(CheckKind::Runtime, pull_timeout + RUNTIME_GRACE, pull).await;
        with_runtime_check(report, ran.record)
    }

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
            Err(_) => check::run(
                CheckKind::Dns,
                self.timeout,
                check::dns::check(&self.resolver, &host),
            )
            .await
            .split(),
        };
        record(probe, blame_proxy(result, proxy));
        let dns = dns?;
        let addresses = dns.addresses();
        probe.dns = Some(dns);

        let per_address = self.timeout.mul_f64(0.9);
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

/// How much longer than the pull's own timeout the `runtime` check waits.
const RUNTIME_GRACE: Duration = Duration::from_secs(5);

/// Folds a `runtime` check into a report. The runtime's verdict decides whether the image is
/// pullable; the check goes last in the chain of the endpoint a failure message names, else of
/// the endpoint that passed, else of the last one. A failed pull's reason is the runtime's, unless
/// only the chain could say more than `runtime_error`.
pub fn with_runtime_check(mut report: Report, result: CheckResult) -> Report {
    let named = report.endpoints.iter().position(|e| {
        !result.ok
            && e.role != Role::Auth
            && e.endpoint
                .split_once("://")
                .is_some_and(|(_, authority)| result.detail.contains(&format!("{authority}/")))
    });
    let at = named
        .or_else(|| report.endpoints.iter().position(|e| e.pullable()))
        .or_else(|| report.endpoints.iter().rposition(|e| e.role != Role::Auth));
    let endpoint = at
        .map(|i| report.endpoints[i].endpoint.clone())
        .unwrap_or_default();
    let chain_summary = std::mem::take(&mut report.summary);
    if result.ok {
        report.summary = if report.pullable {
            format!("{chain_summary}; {}", result.detail)
        } else {
            format!(
                "{}, although pullwatch's own checks failed: {chain_summary}",
                result.detail
            )
        };
        report.pullable = true;
        report.reason = None;
        report.fix = None;
    } else {
        let runtime_reason = result.reason.unwrap_or(Reason::RuntimeError);
        let reason = match (runtime_reason, report.reason) {
            (Reason::RuntimeError | Reason::Unknown, Some(chain)) => chain,
            (runtime, _) => runtime,
        };
        report.summary = if report.pullable {
            format!(
                "the runtime could not pull it: {}; pullwatch's own checks passed: {chain_summary}",
                result.detail
            )
        } else {
            format!(
                "the runtime could not pull it: {}; {chain_summary}",
                result.detail
            )
        };
        report.pullable = false;
        report.reason = Some(reason);
        report.fix = Some(reason.fix(&report.registry, &endpoint));
    }
    if let Some(i) = at {
        report.endpoints[i].checks.push(result);
    }
    report
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

/// The runtime's config forbids the registry (CRI-O `blocked = true`): nothing to probe.
fn blocked(image: &str, registry: &str, file: &std::path::Path) -> Report {
    let reason = Reason::Blocked;
    Report {
        image: image.to_string(),
        registry: registry.to_string(),
        pullable: false,
        reason: Some(reason),
        summary: format!("registry {registry} is blocked in {}", file.display()),
        fix: Some(reason.fix(registry, "")),
        endpoints: vec![],
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

/// Pullable when the manifest check passed on any endpoint (the runtime falls back along the
/// route); otherwise the cause is the last endpoint's failure, the one the runtime reports. A token
/// server's failure shows in the `auth` check of the endpoint that needed it.
pub fn conclude(image: String, registry: String, endpoints: Vec<EndpointReport>) -> Report {
    if let Some(good) = endpoints.iter().find(|e| e.pullable()) {
        let evidence = good
            .checks
            .last()
            .map(|c| c.detail.as_str())
            .unwrap_or_default();
        return Report {
            summary: format!("pullable via {} ({evidence})", good.endpoint),
            image,
            registry,
            pullable: true,
            reason: None,
            fix: None,
            endpoints,
        };
    }
    if let Some(reached) = endpoints
        .iter()
        .find(|e| e.role != Role::Auth && e.passed())
    {
        // Connectivity only (the agent's frequent rounds): nothing failed, nothing proven.
        return Report {
            summary: format!(
                "reachable via {}; the manifest was not checked",
                reached.endpoint
            ),
            image,
            registry,
            pullable: false,
            reason: None,
            fix: None,
            endpoints,
        };
    }
    let last = endpoints
        .iter()
        .rev()
        .filter(|e| e.role != Role::Auth)
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
            for other in endpoints
                .iter()
                .filter(|e| e.endpoint != endpoint.endpoint && e.role != Role::Auth)
            {
                if let Some(f) = other.failure() {
                    summary.push_str(&format!(
                        "; {} {} also failed: {}",
                        other.role.as_str(),
                        other.endpoint,
                        f.reason.unwrap_or(Reason::Unknown)
                    ));
                }
            }
            // A token server's network failure is fixed at the token server.
            let at = endpoints
                .iter()
                .filter(|e| failure.check == CheckKind::Auth && e.role == Role::Auth)
                .find(|e| e.failure().is_some_and(|f| f.reason == failure.reason))
                .unwrap_or(endpoint);
            (reason, summary, reason.fix(&registry, &at.endpoint))
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
