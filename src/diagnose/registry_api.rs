//! The chain after `/v2/` for one endpoint: `auth` (with a Bearer realm's host probed as its own
//! endpoint, role `auth`) then `manifest`. What tells a typo from a missing secret from a quota problem.

use reqwest::Url;

use super::{Diagnoser, Link, OnCheck, Probe, TokenServerProbe};
use crate::check::auth::{self, AuthFailed, AuthOutcome, AuthTarget, Plan, TokenServer};
use crate::check::http::HttpOutcome;
use crate::check::manifest::{self, ManifestOutcome, RateLimit};
use crate::check::{self, CheckKind, CheckResult};
use crate::platform::Platform;
use crate::reason::Reason;
use crate::reference::ImageRef;
use crate::route::{Endpoint, Role, Scheme};

/// The manifest check may list tags and read an index after its HEAD: this many check timeouts.
const MANIFEST_TIMEOUTS: u32 = 3;

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
}

impl Diagnoser {
    /// Runs auth → manifest for `image` on an endpoint whose `/v2/` answered `http`. With
    /// `platform`, an index is fetched (one GET, which Docker Hub counts as a pull) and must hold it.
    pub async fn registry_api(
        &self,
        endpoint: &Endpoint,
        link: &Link,
        http: &HttpOutcome,
        image: &ImageRef,
        platform: Option<&Platform>,
        on_check: OnCheck<'_>,
    ) -> ApiProbe {
        let mut api = ApiProbe::default();
        let record = |api: &mut ApiProbe, result: CheckResult| {
            on_check(endpoint, &result);
            api.checks.push(result);
        };
        let credential = self
            .pull
            .credentials
            .as_ref()
            .and_then(|keyring| keyring.lookup(image.registry(), image.repository()));
        let base_url = endpoint.url();
        // The endpoint's API root and the repository as the runtime asks it there.
        let repository = endpoint.repository.as_deref().unwrap_or(image.repository());
        let target = manifest::ManifestTarget {
            base_url: &base_url,
            api_path: &endpoint.api_path,
            registry: image.registry(),
            repository,
            reference: image.manifest_reference(),
            namespace: endpoint.namespace_for(image.registry()),
        };
        let mut plan = auth::plan(http.status, http.challenge.as_deref());
        // An open /v2/ may still want a token per repository (Quay does): the runtime learns it
        // from the manifest's 401, so ask the manifest anonymously and follow its challenge.
        if let Ok(Plan::Open) = plan
            && let Some(challenge) = manifest::anonymous_challenge(&link.client, target).await
        {
            plan = auth::plan(401, Some(&challenge));
        }

        // A Bearer realm elsewhere is an endpoint of its own: reach it before asking it for a token.
        let mut token_link = Some(link.clone());
        if let Ok(Plan::Bearer(bearer)) = &plan
            && let Some(server) = token_endpoint(&bearer.realm, endpoint)
        {
            let mut probe = Probe::default();
            token_link = self.reach(&server, &mut probe, on_check).await;
            api.token_server = Some(TokenServerProbe {
                endpoint: server,
                probe,
            });
        }
        let token_server = match (&token_link, &api.token_server) {
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
        let auth_target = AuthTarget {
            plan,
            client: &link.client,
            proxied: link.proxied,
            api_url: endpoint.api_url(),
            repository,
            credential,
            token_server,
        };
        let (result, outcome) = check::run(
            CheckKind::Auth,
            self.timeout,
            auth::check(auth_target, &self.pull.tokens),
        )
        .await
        .split();
        record(&mut api, result);
        let Some(auth) = outcome else { return api };

        let options = manifest::Options {
            platform,
            list_budget: self.timeout,
        };
        let ran = check::run(
            CheckKind::Manifest,
            self.timeout * MANIFEST_TIMEOUTS,
            manifest::check(&link.client, target, &auth, options, link.proxied),
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
        record(&mut api, result);
        api.rate_limit = match &manifest {
            Some(outcome) => outcome.rate_limit.clone(),
            None => failed_limit,
        };
        api.manifest = manifest;
        api.auth = Some(auth);
        api
    }
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
    })
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
