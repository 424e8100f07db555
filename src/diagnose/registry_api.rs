//! The chain after `/v2/` for one endpoint: `auth` (with a Bearer realm's host probed as its own
//! endpoint, role `auth`) then `manifest`. What tells a typo from a missing secret from a quota problem.

use reqwest::Url;

use super::{Diagnoser, Link, OnCheck, Probe, TokenServerProbe};
use crate::check::auth::{
    self, AuthFailed, AuthOutcome, AuthTarget, Method, Plan, TokenServer, quote,
};
use crate::check::http::HttpOutcome;
use crate::check::manifest::{self, ManifestOutcome, RateLimit};
use crate::check::{self, CheckKind, CheckResult};
use crate::credentials::{ImageCredentials, Offered, Source, SourceFailure};
use crate::peer_guard::Named;
use crate::platform::Platform;
use crate::reason::Reason;
use crate::reference::ImageRef;
use crate::route::{Endpoint, Role, Scheme};

/// The manifest check may list tags and read an index after its HEAD: this many check timeouts.
const MANIFEST_TIMEOUTS: u32 = 3;
/// Credentials tried at most for one image on one endpoint (each is a token fetch and a HEAD).
const MAX_CREDENTIALS_TRIED: usize = 4;

/// The records and outcomes of the auth and manifest checks of one endpoint.
#[derive(Debug, Default)]
pub struct ApiProbe {
    /// `auth`, then `manifest` when auth passed.
    pub checks: Vec<CheckResult>,
    /// The Bearer realm's host, when it is not the endpoint itself, with its dns/tcp/tls records.
    pub token_server: Option<TokenServerProbe>,
    pub auth: Option<AuthOutcome>,
    pub manifest: Option<ManifestOutcome>,
    /// From the manifest HEAD, whether it succeeded or not (a 429 carries one too).
    pub rate_limit: Option<RateLimit>,
    /// Where the credentials used came from (`Source::None`: anonymous).
    pub source: Source,
    /// The credential used, for the runtime's own pull (never printed).
    pub credential: Option<Offered>,
}

impl Diagnoser {
    /// Runs auth → manifest for `image` on an endpoint whose `/v2/` answered `http`, with each
    /// credential `credentials` offers in the kubelet's order until one is accepted (anonymous
    /// when none). With `platform`, an index is fetched (one GET, which Docker Hub counts as a
    /// pull) and must hold it.
    #[allow(
        clippy::too_many_arguments,
        reason = "the chain's context, each from another layer"
    )]
    pub async fn registry_api(
        &self,
        endpoint: &Endpoint,
        link: &Link,
        http: &HttpOutcome,
        image: &ImageRef,
        credentials: &ImageCredentials,
        platform: Option<&Platform>,
        on_check: OnCheck<'_>,
    ) -> ApiProbe {
        // After containerd's HTTP fallback, the requests go to the plain-HTTP endpoint.
        let served = link.via.as_ref().unwrap_or(endpoint);
        let base_url = served.url();
        // The endpoint's API root and the repository as the runtime asks it there.
        let repository = endpoint.repository.as_deref().unwrap_or(image.repository());
        let target = manifest::ManifestTarget {
            base_url: &base_url,
            api_path: &endpoint.api_path,
            registry: image.registry(),
            repository,
            reference: image.manifest_reference(),
            namespace: served.namespace_for(image.registry()),
        };
        let mut plan = auth::plan(http.status, http.challenge.as_deref());
        // An open /v2/ may still want a token per repository (Quay does): the runtime learns it
        // from the manifest's 401, so ask the manifest anonymously and follow its challenge.
        if let Ok(Plan::Open) = plan
            && let Some(challenge) = manifest::anonymous_challenge(&link.client, target).await
        {
            plan = auth::plan(401, Some(&challenge));
        }

        // A Bearer realm elsewhere is an endpoint of its own: reach it before asking it for a token,
        // unless it is a loopback or link-local address the route does not name (then it gets
        // nothing: not a request, not a credential).
        let mut token_server = None;
        let mut token_link = Some(link.clone());
        let mut refused = None;
        if let Ok(Plan::Bearer(bearer)) = &plan
            && let Some(server) = token_endpoint(&bearer.realm, served)
        {
            let named = Named {
                host: endpoint.host.clone(),
                address: link.address.map(|a| a.ip()),
            };
            if let Some(why) = named.refuses_url(&bearer.realm) {
                refused = Some(refused_realm(&bearer.realm, &why));
            } else {
                let mut probe = Probe::default();
                token_link = None;
                if let Some(reached) = self.reach(&server, &mut probe, on_check).await {
                    // A name that led there: refused before any HTTP request goes out.
                    let at = reached.address();
                    match at.and_then(|at| named.refuses(&server.host, at.ip())) {
                        Some(why) => refused = Some(refused_realm(&bearer.realm, &why)),
                        // The token request goes with the client (its own connection).
                        None => token_link = self.link(&reached).ok(),
                    }
                    reached.close().await;
                }
                token_server = Some(TokenServerProbe {
                    endpoint: server,
                    probe,
                });
            }
        }
        if let Some(refused) = refused {
            plan = Err(refused);
        }

        // The kubelet tries each credential it has for the image in turn; anonymous without any.
        let candidates: Vec<Option<&Offered>> = if credentials.offered.is_empty() {
            vec![None]
        } else {
            credentials
                .offered
                .iter()
                .take(MAX_CREDENTIALS_TRIED)
                .map(Some)
                .collect()
        };
        let mut chosen: Option<ApiProbe> = None;
        for offered in candidates {
            let attempt = Attempt {
                endpoint: served,
                link,
                token_link: token_link.as_ref(),
                token_server: token_server.as_ref(),
                target,
                repository,
                platform,
            };
            let api = self.attempt(&attempt, plan.clone(), offered).await;
            let passed = api.manifest.is_some();
            let refused = api.refused_credentials();
            if passed || chosen.is_none() {
                // A pass wins; otherwise the kubelet's first choice tells the story.
                chosen = Some(api);
            }
            if passed || !refused {
                break;
            }
        }
        let mut api = chosen.unwrap_or_default();
        if api.refused_credentials() {
            if credentials.offered.is_empty() {
                blame_failed_sources(&mut api, &credentials.failures);
            } else {
                // Refused with what was offered: the evidence still says what was not tried,
                // and which sources failed (the kubelet's own problem may be there).
                note_untried(&mut api, credentials);
            }
        }
        for result in &api.checks {
            on_check(endpoint, result);
        }
        api.token_server = token_server;
        api
    }

    /// auth → manifest with one credential (or none): the records and outcomes of that try.
    async fn attempt(
        &self,
        attempt: &Attempt<'_>,
        plan: Result<Plan, AuthFailed>,
        offered: Option<&Offered>,
    ) -> ApiProbe {
        let mut api = ApiProbe {
            source: offered.map_or(Source::None, |o| o.source.clone()),
            credential: offered.cloned(),
            ..ApiProbe::default()
        };
        let token_server = match (attempt.token_link, attempt.token_server) {
            (Some(link), _) => TokenServer::Reached {
                client: &link.client,
                proxied: link.proxied,
            },
            (None, Some(server)) => {
                TokenServer::Unreachable(unreachable(&server.endpoint, &server.probe))
            }
            (None, None) => TokenServer::Unreachable(AuthFailed::new(
                Reason::Unknown,
                "the token server could not be reached".into(),
            )),
        };
        let link = attempt.link;
        let auth_target = AuthTarget {
            plan,
            client: &link.client,
            proxied: link.proxied,
            api_url: attempt.endpoint.api_url(),
            registry_host: &attempt.endpoint.host,
            repository: attempt.repository,
            credential: offered.map(|o| &o.credential),
            token_server,
        };
        let (result, outcome) = check::run(
            CheckKind::Auth,
            self.timeout,
            auth::check(auth_target, &self.pull.tokens),
        )
        .await
        .split();
        api.checks.push(with_source(result, &api.source));
        let Some(auth) = outcome else { return api };

        let options = manifest::Options {
            platform: attempt.platform,
            list_budget: self.timeout,
        };
        let ran = check::run(
            CheckKind::Manifest,
            self.timeout * MANIFEST_TIMEOUTS,
            manifest::check(&link.client, attempt.target, &auth, options, link.proxied),
        )
        .await;
        // A 429 carries the quota too: the failure's rate limit is evidence as much as a pass's.
        let failed_limit = ran.error().and_then(|failed| failed.rate_limit.clone());
        let (result, manifest) = ran.split();
        // A token the registry refused is not worth keeping.
        if matches!(
            result.reason,
            Some(Reason::AuthRequired | Reason::Forbidden)
        ) && let Some(authorization) = &auth.authorization
        {
            self.pull.tokens.forget(authorization);
        }
        let mut result = with_source(result, &api.source);
        if !result.ok
            && let Method::Bearer {
                withheld: Some(why),
                ..
            } = &auth.method
        {
            result
                .detail
                .push_str(&format!("; credentials withheld: {why}"));
        }
        api.checks.push(result);
        api.rate_limit = match &manifest {
            Some(outcome) => outcome.rate_limit.clone(),
            None => failed_limit,
        };
        api.manifest = manifest;
        api.auth = Some(auth);
        api
    }
}

/// What every credential's try shares: where to ask and how.
struct Attempt<'a> {
    endpoint: &'a Endpoint,
    link: &'a Link,
    token_link: Option<&'a Link>,
    token_server: Option<&'a TokenServerProbe>,
    target: manifest::ManifestTarget<'a>,
    repository: &'a str,
    platform: Option<&'a Platform>,
}

impl ApiProbe {
    /// The registry refused the credentials sent (or their absence): another credential might do.
    pub fn refused_credentials(&self) -> bool {
        self.checks.iter().any(|c| {
            matches!(
                c.reason,
                Some(Reason::AuthRequired | Reason::AuthFailed | Reason::Forbidden)
            )
        })
    }
}

/// The auth and manifest checks' evidence names the credentials used, as every report must: in
/// the first clause, which the report's summary and the Event quote.
fn with_source(mut result: CheckResult, source: &Source) -> CheckResult {
    let named = format!(" (credentials: {source})");
    match result.detail.find("; ") {
        Some(at) => result.detail.insert_str(at, &named),
        None => result.detail.push_str(&named),
    }
    result
}

/// On a refusal despite credentials: the credentials past [`MAX_CREDENTIALS_TRIED`] and the
/// sources that failed, named in the refused check's evidence (its reason stays).
fn note_untried(api: &mut ApiProbe, credentials: &ImageCredentials) {
    let Some(refused) = api.checks.iter_mut().find(|c| !c.ok) else {
        return;
    };
    let untried = credentials
        .offered
        .len()
        .saturating_sub(MAX_CREDENTIALS_TRIED);
    if untried > 0 {
        refused
            .detail
            .push_str(&format!("; {untried} more credentials not tried"));
    }
    for failed in &credentials.failures {
        refused
            .detail
            .push_str(&format!("; {} failed: {}", failed.source, failed.message));
    }
}

/// Refused without credentials while a source the kubelet uses failed: the failed source is the
/// cause (`credentials_unavailable`), as the pod would have had credentials from it.
fn blame_failed_sources(api: &mut ApiProbe, failures: &[SourceFailure]) {
    if failures.is_empty() {
        return;
    }
    let Some(refused) = api.checks.iter_mut().find(|c| !c.ok) else {
        return;
    };
    let causes: Vec<String> = failures
        .iter()
        .map(|f| format!("{} failed: {}", f.source, f.message))
        .collect();
    refused.reason = Some(Reason::CredentialsUnavailable);
    refused.detail = format!(
        "{}; refused without credentials: {}",
        causes.join("; "),
        refused.detail
    );
}

/// The realm's `scheme://host:port` as an endpoint with role `auth`, or `None` when it is the
/// registry endpoint itself. It inherits the endpoint's TLS settings: the runtime fetches tokens
/// with the same client configuration as the registry host that sent it there.
fn token_endpoint(realm: &Url, registry: &Endpoint) -> Option<Endpoint> {
    let scheme = match realm.scheme() {
        "http" => Scheme::Http,
        _ => Scheme::Https,
    };
    let host = realm
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = realm.port_or_known_default()?;
    if scheme == registry.scheme && host == registry.host && port == registry.port {
        return None;
    }
    Some(Endpoint {
        scheme,
        host,
        port,
        role: Role::Auth,
        source: format!("WWW-Authenticate of {}", registry.url()),
        tls: registry.tls.clone(),
        api_path: String::new(),
        repository: None,
        namespace_query: false,
        extras: Default::default(),
        http_fallback: None,
    })
}

/// The auth check's failure for a realm pullwatch does not contact (see [`crate::peer_guard`]).
fn refused_realm(realm: &Url, why: &str) -> AuthFailed {
    AuthFailed::new(
        Reason::NotARegistry,
        format!(
            "Bearer realm {} not contacted: {why} (a registry's token server is never the node's own or the cloud metadata service's)",
            quote(realm.as_str())
        ),
    )
}

/// The auth check's failure when the token server's own dns/tcp/tls failed: the same reason.
fn unreachable(server: &Endpoint, probe: &Probe) -> AuthFailed {
    let Some(failure) = probe.checks.iter().find(|c| !c.ok) else {
        return AuthFailed::new(
            Reason::Unknown,
            format!("token server {} could not be reached", server.url()),
        );
    };
    AuthFailed::new(
        failure.reason.unwrap_or(Reason::Unknown),
        format!(
            "token server {} unreachable: {} failed: {}",
            server.url(),
            failure.check.as_str(),
            failure.detail
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credentials_are_named_in_the_first_clause() {
        let record = |detail: &str| CheckResult {
            check: CheckKind::Manifest,
            ok: false,
            seconds: 0.0,
            detail: detail.into(),
            reason: Some(Reason::ManifestUnknown),
        };
        let secret = Source::PullSecret("shop/regcred".into());
        for (detail, source, want) in [
            (
                "tag 1.1 not found; HEAD answered 404",
                &secret,
                "tag 1.1 not found (credentials: pull secret shop/regcred); HEAD answered 404",
            ),
            (
                "accepted",
                &Source::None,
                "accepted (credentials: anonymous)",
            ),
        ] {
            assert_eq!(with_source(record(detail), source).detail, want);
        }
    }
    use crate::trust::TlsOptions;

    #[test]
    fn token_servers_are_their_own_endpoints() {
        let registry = Endpoint {
            scheme: Scheme::Https,
            host: "registry-1.docker.io".into(),
            port: 443,
            role: Role::Upstream,
            source: "default".into(),
            tls: TlsOptions {
                skip_verify: true,
                ..TlsOptions::default()
            },
            api_path: "/v2".into(),
            repository: None,
            namespace_query: false,
            extras: Default::default(),
            http_fallback: None,
        };
        struct Case {
            realm: &'static str,
            want: Option<&'static str>,
        }
        let cases = [
            Case {
                realm: "https://auth.docker.io/token",
                want: Some("https://auth.docker.io"),
            },
            Case {
                realm: "https://registry-1.docker.io/token?x=1",
                want: None,
            },
            Case {
                realm: "http://registry-1.docker.io/token",
                want: Some("http://registry-1.docker.io"),
            },
            Case {
                realm: "https://[::1]:5001/token",
                want: Some("https://[::1]:5001"),
            },
        ];
        for case in cases {
            let realm = Url::parse(case.realm).unwrap();
            let got = token_endpoint(&realm, &registry);
            assert_eq!(
                got.as_ref().map(Endpoint::url).as_deref(),
                case.want,
                "{}",
                case.realm
            );
            if let Some(server) = got {
                assert_eq!(server.role, Role::Auth);
                assert!(
                    server.tls.skip_verify,
                    "inherits the endpoint's TLS settings"
                );
                assert_eq!(
                    server.source,
                    "WWW-Authenticate of https://registry-1.docker.io"
                );
            }
        }
    }

    #[test]
    fn an_unreachable_token_server_lends_its_reason() {
        let server = token_endpoint(
            &Url::parse("https://auth.test:5001/token").unwrap(),
            &Endpoint {
                scheme: Scheme::Https,
                host: "reg.test".into(),
                port: 443,
                role: Role::Upstream,
                source: "default".into(),
                tls: TlsOptions::default(),
                api_path: "/v2".into(),
                repository: None,
                namespace_query: false,
                extras: Default::default(),
                http_fallback: None,
            },
        )
        .unwrap();
        let probe = Probe {
            checks: vec![CheckResult {
                check: CheckKind::Tcp,
                ok: false,
                seconds: 0.001,
                detail: "127.0.0.1:5001 refused".into(),
                reason: Some(Reason::TcpRefused),
            }],
            ..Probe::default()
        };
        let failed = unreachable(&server, &probe);
        assert_eq!(failed.reason, Reason::TcpRefused);
        assert_eq!(
            failed.message,
            "token server https://auth.test:5001 unreachable: tcp failed: 127.0.0.1:5001 refused"
        );
        assert_eq!(
            unreachable(&server, &Probe::default()).reason,
            Reason::Unknown
        );
    }
}
