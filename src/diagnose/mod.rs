//! Runs the chain for one image along its route: for every endpoint dns → tcp → tls → http → auth →
//! manifest, each step only when the ones before it passed, and turns the results into a [`Report`].

mod chain;
mod registry_api;
mod verdict;

pub use chain::{Ask, Reached};
pub use registry_api::ApiProbe;
pub use verdict::{conclude, with_runtime_check};

use std::sync::Arc;
use std::time::Duration;

use crate::check::auth::TokenCache;
use crate::check::dns::{DnsOutcome, DnsResolver};
use crate::check::http::HttpOutcome;
use crate::check::tcp::TcpOutcome;
use crate::check::tls::TlsOutcome;
use crate::check::{self, CheckKind, CheckResult};
use crate::credentials::{ImageCredentials, NodeCredentials, Offered};
use crate::platform::Platform;
use crate::proxy::ProxySettings;
use crate::reference::ImageRef;
use crate::report::{EndpointReport, Report, push_token_server};
use crate::route::{Endpoint, Route, RouteConfig};
use crate::runtime::{PullAuth, RuntimeClient};
use crate::trust::Trust;
use verdict::{blocked, invalid_reference};

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
    /// The node's credentials (docker configs), matched per image as the kubelet does.
    pub credentials: NodeCredentials,
    /// The node's platform, looked for in image indexes (`--platform`).
    pub platform: Platform,
    /// Pull tokens, each dropped when it expires.
    pub tokens: TokenCache,
}

impl Default for PullSettings {
    /// Anonymous, this machine's platform.
    fn default() -> Self {
        PullSettings {
            credentials: NodeCredentials::default(),
            platform: Platform::host(),
            tokens: TokenCache::default(),
        }
    }
}

/// The credential to hand the runtime with a `PullImage`, as the kubelet does: the one the
/// registry accepted, else the first the kubelet would try.
pub fn pull_auth(answered: Option<&Offered>, credentials: &ImageCredentials) -> Option<PullAuth> {
    let offered = answered.or(credentials.first())?;
    Some(PullAuth {
        username: offered.credential.username.clone(),
        password: offered.credential.password.expose().to_string(),
    })
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
    /// The plain-HTTP endpoint the HTTP steps use when containerd's HTTP fallback was taken;
    /// `None`: the endpoint itself.
    pub via: Option<Endpoint>,
    /// The address the client is pinned to (`None` through a proxy).
    pub address: Option<std::net::SocketAddr>,
}

impl Probe {
    fn failed(&self) -> bool {
        self.checks.iter().any(|c| !c.ok)
    }

    /// The connection's checks (dns → tcp → tls) all passed, whatever `/v2/` said.
    pub fn connection_passed(&self) -> bool {
        self.tcp.is_some()
            && self
                .checks
                .iter()
                .filter(|c| c.check != CheckKind::Http)
                .all(|c| c.ok)
    }
}

/// A Bearer realm's host, probed as an endpoint of its own (role `auth`).
#[derive(Debug)]
pub struct TokenServerProbe {
    pub endpoint: Endpoint,
    pub probe: Probe,
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

/// What [`Diagnoser::walk_route`] found along a route.
#[derive(Debug)]
pub struct Walked {
    pub endpoints: Vec<EndpointReport>,
    /// The credential the registry accepted at the endpoint that served the manifest.
    pub answered: Option<Offered>,
    /// The time budget, when it ran out before the route's end.
    pub out_of_time: Option<Duration>,
}

impl RoutedImage {
    /// The report of the endpoints checked along the route.
    pub fn conclude(self, walked: Walked) -> Report {
        let untried = walked
            .endpoints
            .iter()
            .filter(|e| e.not_tried.is_some())
            .count();
        let mut report = conclude(
            self.image.to_string(),
            self.route.registry,
            walked.endpoints,
        );
        if let Some(budget) = walked.out_of_time {
            report.summary = format!(
                "{}; {untried} endpoint(s) of the route not tried: diagnose's time ran out after {}",
                report.summary,
                crate::text::short_duration(budget)
            );
        }
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
    pub token_server: Option<TokenServerProbe>,
    pub probe: Arc<Probe>,
    /// The credential the registry accepted here (the manifest check passed with it).
    pub answered: Option<Offered>,
}

impl CheckedEndpoint {
    /// Appends the endpoint's report, then its token server's unless one is there already.
    pub fn add_to(self, endpoints: &mut Vec<EndpointReport>) {
        endpoints.push(self.report);
        if let Some(server) = self.token_server {
            push_token_server(endpoints, &server.endpoint, server.probe.checks);
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
        self.diagnose_answered(input, on_check).await.0
    }

    /// [`Diagnoser::diagnose_observed`], also returning the credentials for the runtime's pull.
    async fn diagnose_answered(
        &self,
        input: &str,
        on_check: OnCheck<'_>,
    ) -> (Report, Option<PullAuth>) {
        let routed = match self.route_image(input) {
            Ok(routed) => routed,
            Err(report) => return (*report, None),
        };
        let credentials = self.pull.credentials.lookup(&routed.image).await;
        let walked = self
            .walk_route(&routed.route, |_, endpoint| {
                self.check_endpoint(
                    endpoint,
                    &routed.image,
                    &credentials,
                    Some(&self.pull.platform),
                    on_check,
                )
            })
            .await;
        let auth = pull_auth(walked.answered.as_ref(), &credentials);
        (routed.conclude(walked), auth)
    }

    /// Checks the route's endpoints with `check` (given each one's index) one after another, as the runtime tries them,
    /// and stops where it stops: at the first endpoint that serves the manifest. The rest are
    /// reported as not tried, and so are those left when [`Diagnoser::time_budget`] runs out.
    pub async fn walk_route<'r, F>(
        &self,
        route: &'r Route,
        mut check: impl FnMut(usize, &'r Endpoint) -> F,
    ) -> Walked
    where
        F: Future<Output = CheckedEndpoint>,
    {
        let budget = self.time_budget();
        let started = tokio::time::Instant::now();
        let mut walked = Walked {
            endpoints: Vec::with_capacity(route.endpoints.len()),
            answered: None,
            out_of_time: None,
        };
        let mut pullable_via = None;
        for (index, endpoint) in route.endpoints.iter().enumerate() {
            let why = match &pullable_via {
                Some(url) => Some(format!(
                    "the image is pullable via {url}, where the runtime stops"
                )),
                None if started.elapsed() >= budget => {
                    walked.out_of_time = Some(budget);
                    Some(format!(
                        "diagnose's time ran out ({} = {TIME_BUDGET_CHECKS} × --timeout) before it",
                        crate::text::short_duration(budget)
                    ))
                }
                None => None,
            };
            if let Some(why) = why {
                walked.endpoints.push(EndpointReport {
                    endpoint: endpoint.url(),
                    role: endpoint.role,
                    source: endpoint.source.clone(),
                    rules: self.routes.known_rules(),
                    checks: vec![],
                    not_tried: Some(why),
                });
                continue;
            }
            let checked = check(index, endpoint).await;
            if checked.report.pullable() {
                pullable_via = Some(endpoint.url());
            }
            walked.answered = walked.answered.take().or(checked.answered.clone());
            checked.add_to(&mut walked.endpoints);
        }
        walked
    }

    /// How long one diagnosis may go on starting endpoints: [`TIME_BUDGET_CHECKS`] × `--timeout`
    /// (60 s by default). The endpoint being checked when it runs out finishes (its checks are
    /// bounded each); the rest of the route is reported as not tried.
    pub fn time_budget(&self) -> Duration {
        self.timeout.saturating_mul(TIME_BUDGET_CHECKS)
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
        credentials: &ImageCredentials,
        platform: Option<&Platform>,
        on_check: OnCheck<'_>,
    ) -> CheckedEndpoint {
        let (probe, link) = self.probe_linked(endpoint, on_check).await;
        let mut checks = probe.checks.clone();
        let mut token_server = None;
        let mut answered = None;
        if let (Some(http), Some(link)) = (&probe.http, &link) {
            let api = self
                .registry_api(endpoint, link, http, image, credentials, platform, on_check)
                .await;
            checks.extend(api.checks);
            token_server = api.token_server;
            answered = api.manifest.is_some().then_some(api.credential).flatten();
        }
        CheckedEndpoint {
            report: EndpointReport {
                endpoint: endpoint.url(),
                role: endpoint.role,
                source: endpoint.source.clone(),
                rules: self.routes.known_rules(),
                checks,
                not_tried: None,
            },
            token_server,
            probe: Arc::new(probe),
            answered,
        }
    }

    /// `diagnose --via-runtime`: the chain, then a real CRI `PullImage` by the node's runtime
    /// (with the credentials the registry accepted, as the kubelet hands them over), whose
    /// verdict decides. `pull_timeout` bounds the pull, which may download the whole image.
    pub async fn diagnose_via_runtime(
        &self,
        input: &str,
        runtime: &RuntimeClient,
        pull_timeout: Duration,
    ) -> Report {
        let (report, auth) = self.diagnose_answered(input, &|_, _| {}).await;
        let pull = check::runtime::check(runtime, &report.image, auth.as_ref(), pull_timeout);
        // The client gives up at `pull_timeout`; the outer bound only catches a hang past it.
        let ran = check::run(CheckKind::Runtime, pull_timeout + RUNTIME_GRACE, pull).await;
        with_runtime_check(report, ran.record)
    }
}

/// A diagnosis starts no endpoint after this many `--timeout`s (see [`Diagnoser::time_budget`]).
pub const TIME_BUDGET_CHECKS: u32 = 12;

/// How much longer than the pull's own timeout the `runtime` check waits.
const RUNTIME_GRACE: Duration = Duration::from_secs(5);
