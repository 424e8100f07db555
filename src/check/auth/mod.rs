//! The `auth` check: parse `/v2/`'s `WWW-Authenticate` (Basic or Bearer), then prove the
//! credentials (Basic) or fetch a pull token for the repository (Bearer) as the runtime would.
//!
//! Passwords and tokens travel only in `Authorization` headers marked sensitive; no message here
//! ever holds one (server messages are scrubbed of them before they become evidence).

mod challenge;
mod token;

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

pub use self::challenge::{Challenge, parse_challenges};
pub(crate) use self::token::parse_token_response;
pub use self::token::{TokenCache, pull_scope, token};
pub use crate::text::quote;

use super::http::{request_failed, status_text};
use super::{CheckError, Evidence};
use crate::credentials::{Credential, Secret};
use crate::reason::Reason;

/// What `/v2/` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// `/v2/` answered 200: no credentials asked.
    Open,
    Basic {
        realm: Option<String>,
    },
    Bearer(Bearer),
}

/// A Bearer challenge: where to get a token and for what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bearer {
    pub realm: Url,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Longest `WWW-Authenticate` (all challenges) read: registries send a few hundred bytes. Go's
/// client would take up to 10 MB of headers; a realm of kilobytes is no registry's.
pub const MAX_CHALLENGE: usize = 8 << 10;

/// Decides from `/v2/`'s status and `WWW-Authenticate` how to authenticate. A 401 without a usable
/// challenge is not a registry answer the runtime can follow.
pub fn plan(status: u16, header: Option<&str>) -> Result<Plan, AuthFailed> {
    let fail = |message: String| AuthFailed::new(Reason::NotARegistry, message);
    if let Some(header) = header.filter(|h| h.len() > MAX_CHALLENGE) {
        return Err(fail(format!(
            "WWW-Authenticate of {} bytes, over pullwatch's {} KiB limit (a registry's is a few hundred): {}",
            header.len(),
            MAX_CHALLENGE >> 10,
            quote(header)
        )));
    }
    let Some(header) = header.filter(|_| status == 401) else {
        return match status {
            401 => Err(fail(
                "GET /v2/ answered 401 Unauthorized without WWW-Authenticate: the runtime cannot tell how to log in".into(),
            )),
            _ => Ok(Plan::Open),
        };
    };
    let challenges = parse_challenges(header).map_err(|problem| {
        fail(format!(
            "malformed WWW-Authenticate header ({problem}): {}",
            quote(header)
        ))
    })?;
    // The runtime takes the first challenge it speaks.
    let Some(chosen) = challenges
        .iter()
        .find(|c| c.scheme == "bearer" || c.scheme == "basic")
    else {
        let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
        return Err(fail(format!(
            "WWW-Authenticate offers only {}; container runtimes speak Basic and Bearer",
            schemes.join(", ")
        )));
    };
    if chosen.scheme == "basic" {
        return Ok(Plan::Basic {
            realm: chosen.param("realm").map(str::to_string),
        });
    }
    let realm = chosen
        .param("realm")
        .ok_or_else(|| fail(format!("Bearer challenge without realm: {}", quote(header))))?;
    let realm = Url::parse(realm)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            fail(format!(
                "Bearer realm {} is not an absolute http(s) URL",
                quote(realm)
            ))
        })?;
    Ok(Plan::Bearer(Bearer {
        realm,
        service: chosen.param("service").map(str::to_string),
        scope: chosen.param("scope").map(str::to_string),
    }))
}

/// What the manifest requests carry.
#[derive(Clone, Debug)]
pub enum Authorization {
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

impl Authorization {
    /// Adds the header, marked sensitive (hidden from reqwest's and hyper's logs).
    pub fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Authorization::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
            Authorization::Bearer(token) => request.bearer_auth(token.expose()),
        }
    }
}

/// How the auth check authenticated; the evidence.
#[derive(Clone, Debug)]
pub struct AuthOutcome {
    pub method: Method,
    /// For the manifest requests; `None` means anonymous.
    pub authorization: Option<Authorization>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `/v2/` asked for nothing.
    Open,
    /// Basic asked; no credentials for this image: anonymous requests.
    BasicAnonymous,
    /// Basic credentials that `/v2/` accepted.
    Basic { username: String, key: String },
    Bearer {
        realm: String,
        scope: String,
        /// `None`: an anonymous token.
        username: Option<String>,
        expires_in: Duration,
        cached: bool,
        /// Why credentials held for the image were not sent (see [`crate::peer_guard`]).
        withheld: Option<String>,
    },
}

impl AuthOutcome {
    /// Whether credentials were sent (an anonymous token counts as none).
    pub fn with_credentials(&self) -> bool {
        matches!(
            self.method,
            Method::Basic { .. }
                | Method::Bearer {
                    username: Some(_),
                    ..
                }
        )
    }

    pub fn username(&self) -> Option<&str> {
        match &self.method {
            Method::Basic { username, .. } => Some(username),
            Method::Bearer { username, .. } => username.as_deref(),
            _ => None,
        }
    }
}

impl Evidence for AuthOutcome {
    fn detail(&self) -> String {
        match &self.method {
            Method::Open => "GET /v2/ asks for no credentials".into(),
            Method::BasicAnonymous => {
                "Basic auth asked, no credentials for this image: trying anonymously".into()
            }
            Method::Basic { username, key } => {
                format!("Basic: user {username} (key {key}) accepted by GET /v2/")
            }
            Method::Bearer {
                realm,
                scope,
                username,
                expires_in,
                cached,
                withheld,
            } => {
                let who = match (username, withheld) {
                    (Some(user), _) => format!("user {user}"),
                    (None, Some(why)) => format!("anonymous: credentials withheld, {why}"),
                    (None, None) => "anonymous".into(),
                };
                let source = if *cached { "cached token" } else { "token" };
                let expires_in = Duration::from_secs(expires_in.as_secs());
                format!(
                    "{source} for {scope} from {realm} ({who}), expires in {}",
                    humantime::format_duration(expires_in)
                )
            }
        }
    }
}

/// The auth check failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct AuthFailed {
    pub reason: Reason,
    pub message: String,
}

impl AuthFailed {
    pub fn new(reason: Reason, message: String) -> Self {
        AuthFailed { reason, message }
    }
}

impl CheckError for AuthFailed {
    fn reason(&self) -> Reason {
        self.reason
    }
}

/// The Bearer realm's host as the auth check finds it: reached over its own link (the registry's
/// own when the realm is on it), or unreachable, whose dns/tcp/tls failure is the auth check's.
pub enum TokenServer<'a> {
    Reached {
        client: &'a reqwest::Client,
        proxied: bool,
    },
    Unreachable(AuthFailed),
}

/// What the auth check works on: `/v2/`'s plan and how to reach whom it names.
pub struct AuthTarget<'a> {
    /// What `/v2/` (or an anonymous manifest request) asked for; see [`plan`].
    pub plan: Result<Plan, AuthFailed>,
    /// The registry endpoint's client and API root (Basic is proven with `GET <api_url>/`).
    pub client: &'a reqwest::Client,
    pub proxied: bool,
    pub api_url: String,
    /// The registry endpoint's host: a cleartext realm elsewhere gets no credentials.
    pub registry_host: &'a str,
    pub repository: &'a str,
    /// The credentials for this image; `None`: anonymous.
    pub credential: Option<&'a Credential>,
    pub token_server: TokenServer<'a>,
}

/// The auth check: authenticates the way `/v2/` asked, as the runtime would: nothing for an open
/// registry, Basic credentials proven (or anonymous requests without any), a Bearer pull token
/// for the repository (from `tokens` while valid).
pub async fn check(target: AuthTarget<'_>, tokens: &TokenCache) -> Result<AuthOutcome, AuthFailed> {
    match target.plan? {
        Plan::Open => Ok(AuthOutcome {
            method: Method::Open,
            authorization: None,
        }),
        Plan::Basic { .. } => match target.credential {
            Some(credential) => {
                basic(target.client, &target.api_url, credential, target.proxied).await
            }
            None => Ok(AuthOutcome {
                method: Method::BasicAnonymous,
                authorization: None,
            }),
        },
        Plan::Bearer(bearer) => match target.token_server {
            TokenServer::Reached { client, proxied } => {
                // Over cleartext to another host the credentials would cross the network readable:
                // ask anonymously instead, and say so.
                let withheld = (target.credential.is_some()
                    && crate::peer_guard::cleartext_elsewhere(&bearer.realm, target.registry_host))
                .then(|| {
                    format!(
                        "the realm is on another host than {} over cleartext HTTP (the runtime would send them)",
                        target.registry_host
                    )
                });
                let credential = target.credential.filter(|_| withheld.is_none());
                let mut result = token(
                    client,
                    &bearer,
                    target.repository,
                    credential,
                    tokens,
                    proxied,
                )
                .await;
                match (&mut result, withheld) {
                    (Ok(outcome), Some(why)) => {
                        if let Method::Bearer { withheld, .. } = &mut outcome.method {
                            *withheld = Some(why);
                        }
                    }
                    (Err(failed), Some(why)) => {
                        failed
                            .message
                            .push_str(&format!("; credentials withheld: {why}"));
                    }
                    _ => {}
                }
                result
            }
            TokenServer::Unreachable(failed) => Err(failed),
        },
    }
}

/// Proves Basic credentials with `GET /v2/` (free on every registry) at the API root `api_url`.
pub async fn basic(
    client: &reqwest::Client,
    api_url: &str,
    credential: &Credential,
    proxied: bool,
) -> Result<AuthOutcome, AuthFailed> {
    let authorization = Authorization::Basic {
        username: credential.username.clone(),
        password: credential.password.clone(),
    };
    let response = authorization
        .apply(client.get(format!("{api_url}/")))
        .send()
        .await
        .map_err(|e| from_request(&e, proxied))?;
    match response.status().as_u16() {
        200 => Ok(AuthOutcome {
            method: Method::Basic {
                username: credential.username.clone(),
                key: credential.key.clone(),
            },
            authorization: Some(authorization),
        }),
        401 => Err(AuthFailed::new(
            Reason::AuthFailed,
            format!(
                "GET /v2/ with Basic credentials of user {} (key {}) answered 401 Unauthorized: the registry rejects them",
                credential.username, credential.key
            ),
        )),
        status => Err(status_failure(
            "GET /v2/ with Basic credentials",
            status,
            true,
        )),
    }
}

/// Error bodies as registries and token servers send them.
#[derive(Deserialize, Default)]
pub struct ErrorBody {
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
    /// Docker Hub's token server: `{"details":"incorrect username or password"}`.
    #[serde(default)]
    pub details: Option<String>,
}

#[derive(Deserialize)]
pub struct ErrorEntry {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    pub fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    pub fn has_code(&self, code: &str) -> bool {
        self.errors.iter().any(|e| e.code == code)
    }

    /// `CODE: message; …` or the `details` text, for evidence.
    pub fn summary(&self) -> Option<String> {
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .chain(self.details.clone())
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A status that is neither success nor 401, from `what`.
fn status_failure(what: &str, status: u16, with_credentials: bool) -> AuthFailed {
    let answered = format!("{what} answered {}", status_text(status));
    let (reason, message) = match status {
        403 if with_credentials => (
            Reason::Forbidden,
            format!("{answered}: the credentials are not allowed to pull"),
        ),
        403 => (
            Reason::AuthRequired,
            format!("{answered}: anonymous access is refused"),
        ),
        429 => (Reason::RateLimited, answered),
        500..=599 => (Reason::RegistryUnavailable, answered),
        _ => (
            Reason::NotARegistry,
            format!("{answered}: not a token endpoint"),
        ),
    };
    AuthFailed::new(reason, message)
}

fn from_request(error: &reqwest::Error, proxied: bool) -> AuthFailed {
    let failed = request_failed(error, proxied);
    AuthFailed::new(failed.reason, failed.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_from_v2_answers() {
        struct Case {
            status: u16,
            header: Option<&'static str>,
            want: Result<&'static str, Reason>,
        }
        let cases = [
            Case {
                status: 200,
                header: None,
                want: Ok("open"),
            },
            Case {
                status: 401,
                header: Some(r#"Basic realm="r""#),
                want: Ok("basic"),
            },
            Case {
                status: 401,
                header: Some(r#"Bearer realm="https://auth.test:5001/token",service="reg""#),
                want: Ok("bearer"),
            },
            Case {
                status: 401,
                header: Some(r#"Negotiate, Bearer realm="https://a.test/t""#),
                want: Ok("bearer"),
            },
            Case {
                status: 401,
                header: None,
                want: Err(Reason::NotARegistry),
            },
            Case {
                status: 401,
                header: Some("Bearer service=x"),
                want: Err(Reason::NotARegistry),
            },
            Case {
                status: 401,
                header: Some("Bearer realm="),
                want: Err(Reason::NotARegistry),
            },
            Case {
                status: 401,
                header: Some(r#"Bearer realm="/token""#),
                want: Err(Reason::NotARegistry),
            },
            Case {
                status: 401,
                header: Some(r#"Bearer realm="ftp://a.test/t""#),
                want: Err(Reason::NotARegistry),
            },
            Case {
                status: 401,
                header: Some("Negotiate"),
                want: Err(Reason::NotARegistry),
            },
            Case {
                status: 401,
                header: Some(r#"Bearer realm="https://a"#),
                want: Err(Reason::NotARegistry),
            },
        ];
        let huge = format!(r#"Bearer realm="https://a.test/{}""#, "x".repeat(100_000));
        let failed = plan(401, Some(&huge)).unwrap_err();
        assert_eq!(failed.reason, Reason::NotARegistry);
        assert!(failed.message.len() < 400, "{}", failed.message);
        for case in cases {
            let got = plan(case.status, case.header).map(|p| match p {
                Plan::Open => "open",
                Plan::Basic { .. } => "basic",
                Plan::Bearer(_) => "bearer",
            });
            assert_eq!(got.map_err(|e| e.reason), case.want, "{:?}", case.header);
        }
        let Ok(Plan::Bearer(bearer)) = plan(
            401,
            Some(r#"Bearer realm="https://auth.test:5001/token?x=1",service="reg""#),
        ) else {
            panic!("not bearer")
        };
        assert_eq!(bearer.realm.port(), Some(5001));
        assert_eq!(bearer.service.as_deref(), Some("reg"));
    }

    #[test]
    fn status_failures() {
        let cases = [
            (403, true, Reason::Forbidden),
            (403, false, Reason::AuthRequired),
            (429, false, Reason::RateLimited),
            (503, true, Reason::RegistryUnavailable),
            (404, false, Reason::NotARegistry),
        ];
        for (status, creds, want) in cases {
            assert_eq!(status_failure("x", status, creds).reason, want, "{status}");
        }
        assert!(quote(&"x".repeat(500)).ends_with("…\""));
    }
}
