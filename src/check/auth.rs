//! The `auth` check: parse `/v2/`'s `WWW-Authenticate` (Basic or Bearer), then prove the
//! credentials (Basic) or fetch a pull token for the repository (Bearer) as the runtime would.
//!
//! Passwords and tokens travel only in `Authorization` headers marked sensitive; no message here
//! ever holds one (server messages are scrubbed of them before they become evidence).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Deserialize;

use super::http::{request_failed, status_text};
use super::{CheckError, Evidence};
use crate::credentials::{Credential, Secret};
use crate::http_client::read_capped;
use crate::reason::Reason;

/// Largest token response read.
const MAX_TOKEN_BODY: usize = 1 << 20;
/// Lifetime assumed when the token server does not say (distribution's token spec).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A cached token is dropped this long before the server says it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Longest a token is cached, whatever the server claims (an absurd `expires_in` must neither
/// overflow the clock nor keep a token forever).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest server message quoted as evidence.
const MAX_QUOTE: usize = 200;

/// One challenge of a `WWW-Authenticate` header: a scheme and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lower case: `basic`, `bearer`, …
    pub scheme: String,
    /// Names lower case, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235): several challenges, quoted strings with escapes
/// and commas inside quotes. Errors say what is wrong and where.
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, String> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut challenges = Vec::new();
    loop {
        p.skip(|c| c == b' ' || c == b'\t' || c == b',');
        if p.eof() {
            break;
        }
        let scheme = p
            .token()
            .ok_or_else(|| p.error("expected an auth scheme"))?;
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        p.skip_ws();
        if !p.eof() && p.peek() != Some(b',') && !p.at_param() {
            // token68 (`Negotiate abc==`): no parameters to read.
            p.skip(|c| c.is_ascii_alphanumeric() || b"-._~+/=".contains(&c));
        }
        loop {
            p.skip_ws();
            let before = p.i;
            p.skip(|c| c == b' ' || c == b'\t' || c == b',');
            if p.eof() || !p.at_param() {
                if !p.eof() && p.i == before {
                    return Err(p.error("expected ',' between challenges"));
                }
                break;
            }
            let name = p.token().unwrap_or_default().to_ascii_lowercase();
            p.skip_ws();
            p.i += 1; // '=', as at_param saw
            p.skip_ws();
            let value = if p.peek() == Some(b'"') {
                p.quoted()?
            } else {
                p.token()
                    .ok_or_else(|| p.error(&format!("expected a value for {name}")))?
            };
            challenge.params.push((name, value));
            p.skip_ws();
            if !p.eof() && p.peek() != Some(b',') {
                return Err(p.error("expected ',' after a parameter"));
            }
        }
        challenges.push(challenge);
    }
    if challenges.is_empty() {
        return Err("empty header".into());
    }
    Ok(challenges)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, what: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&what) {
            self.i += 1;
        }
    }

    fn skip_ws(&mut self) {
        self.skip(|c| c == b' ' || c == b'\t');
    }

    fn is_tchar(c: u8) -> bool {
        c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(Self::is_tchar);
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// At `name = value` (not token68's trailing `=`s).
    fn at_param(&self) -> bool {
        let mut j = self.i;
        while self.s.get(j).is_some_and(|c| Self::is_tchar(*c)) {
            j += 1;
        }
        if j == self.i {
            return false;
        }
        while matches!(self.s.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        if self.s.get(j) != Some(&b'=') {
            return false;
        }
        j += 1;
        while matches!(self.s.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        self.s
            .get(j)
            .is_some_and(|c| *c == b'"' || (Self::is_tchar(*c) && *c != b'='))
    }

    fn quoted(&mut self) -> Result<String, String> {
        let start = self.i;
        self.i += 1;
        let mut value = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&value).into_owned()),
                b'\\' => match self.peek() {
                    Some(escaped) => {
                        value.push(escaped);
                        self.i += 1;
                    }
                    None => break,
                },
                other => value.push(other),
            }
        }
        self.i = start;
        Err(self.error("unterminated quoted string"))
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }
}

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

/// Decides from `/v2/`'s status and `WWW-Authenticate` how to authenticate. A 401 without a usable
/// challenge is not a registry answer the runtime can follow.
pub fn plan(status: u16, header: Option<&str>) -> Result<Plan, AuthFailed> {
    let fail = |message: String| AuthFailed::new(Reason::NotARegistry, message);
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
            } => {
                let who = match username {
                    Some(user) => format!("user {user}"),
                    None => "anonymous".into(),
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
#[derive(Debug, thiserror::Error)]
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

/// The token server's answer (distribution's token spec; `access_token` is the OAuth2 spelling).
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
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

/// Tokens by (realm, service, scope, credential key, user); each dropped when it expires.
#[derive(Default, Debug)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (Secret, Instant)>>,
}

impl TokenCache {
    fn get(&self, key: &str) -> Option<(Secret, Duration)> {
        let mut tokens = self.tokens.lock().ok()?;
        let now = Instant::now();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens
            .get(key)
            .map(|(token, expires)| (token.clone(), *expires - now))
    }

    fn put(&self, key: String, token: Secret, lifetime: Duration) {
        let usable = lifetime
            .min(MAX_TOKEN_LIFETIME)
            .saturating_sub(EXPIRY_MARGIN);
        if usable.is_zero() {
            return;
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(key, (token, Instant::now() + usable));
        }
    }

    /// Forgets a token the registry refused.
    pub fn forget(&self, authorization: &Authorization) {
        if let (Authorization::Bearer(token), Ok(mut tokens)) = (authorization, self.tokens.lock())
        {
            tokens.retain(|_, (cached, _)| cached != token);
        }
    }
}

/// The pull scope the runtime asks for.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// Fetches a pull token for `repository` from the Bearer realm (GET with Basic credentials when
/// there are some, as distribution's token spec), or takes it from `cache` while it is valid.
pub async fn token(
    client: &reqwest::Client,
    bearer: &Bearer,
    repository: &str,
    credential: Option<&Credential>,
    cache: &TokenCache,
    proxied: bool,
) -> Result<AuthOutcome, AuthFailed> {
    let scope = pull_scope(repository);
    let username = credential.map(|c| c.username.clone());
    let cache_key = format!(
        "{}\n{}\n{scope}\n{}\n{}",
        bearer.realm,
        bearer.service.as_deref().unwrap_or_default(),
        credential.map(|c| c.key.as_str()).unwrap_or_default(),
        username.as_deref().unwrap_or_default()
    );
    let outcome = |token: Secret, expires_in: Duration, cached: bool| AuthOutcome {
        method: Method::Bearer {
            realm: bearer.realm.to_string(),
            scope: scope.clone(),
            username: username.clone(),
            expires_in,
            cached,
        },
        authorization: Some(Authorization::Bearer(token)),
    };
    if let Some((token, left)) = cache.get(&cache_key) {
        return Ok(outcome(token, left, true));
    }

    let mut url = bearer.realm.clone();
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = &bearer.service {
            query.append_pair("service", service);
        }
        query.append_pair("scope", &scope);
    }
    let mut request = client.get(url);
    if let Some(credential) = credential {
        request = request.basic_auth(&credential.username, Some(credential.password.expose()));
    }
    let response = request
        .send()
        .await
        .map_err(|e| from_request(&e, proxied))?;
    let status = response.status().as_u16();
    let body = read_capped(response, MAX_TOKEN_BODY)
        .await
        .map_err(|e| from_request(&e, proxied))?;
    let what = format!("token server {}", bearer.realm);
    let scrub = |text: String| match credential {
        Some(c) if !c.password.expose().is_empty() => {
            text.replace(c.password.expose(), "<redacted>")
        }
        _ => text,
    };
    let server_says = || {
        ErrorBody::parse(&body)
            .summary()
            .map(|s| format!(" ({})", quote(&scrub(s))))
            .unwrap_or_default()
    };
    match status {
        200 => {
            let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                AuthFailed::new(
                    Reason::NotARegistry,
                    format!("{what} answered 200 OK but not a token response: {e}"),
                )
            })?;
            let token = parsed
                .token
                .filter(|t| !t.is_empty())
                .or(parsed.access_token.filter(|t| !t.is_empty()))
                .ok_or_else(|| {
                    AuthFailed::new(
                        Reason::NotARegistry,
                        format!("{what} answered 200 OK without a token"),
                    )
                })?;
            let token = Secret::new(token);
            let lifetime = parsed
                .expires_in
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_TOKEN_LIFETIME);
            cache.put(cache_key, token.clone(), lifetime);
            Ok(outcome(token, lifetime, false))
        }
        401 => match credential {
            Some(c) => Err(AuthFailed::new(
                Reason::AuthFailed,
                format!(
                    "{what} answered 401 Unauthorized to user {} (key {}): the credentials are rejected{}",
                    c.username,
                    c.key,
                    server_says()
                ),
            )),
            None => Err(AuthFailed::new(
                Reason::AuthRequired,
                format!(
                    "{what} answered 401 Unauthorized: it gives no anonymous tokens{}",
                    server_says()
                ),
            )),
        },
        status => {
            let mut failed = status_failure(&what, status, credential.is_some());
            failed.message.push_str(&server_says());
            Err(failed)
        }
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

/// A server-sent value, quoted and cut to a readable length.
pub fn quote(text: &str) -> String {
    let mut cut: String = text.chars().take(MAX_QUOTE).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_challenges() {
        struct Case {
            input: &'static str,
            want: Vec<(&'static str, Vec<(String, String)>)>,
        }
        let cases = [
            Case {
                input: r#"Basic realm="pullwatch-test""#,
                want: vec![("basic", params(&[("realm", "pullwatch-test")]))],
            },
            Case {
                input: r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
                want: vec![(
                    "bearer",
                    params(&[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                    ]),
                )],
            },
            Case {
                input: r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:org/a:pull,push""#,
                want: vec![(
                    "bearer",
                    params(&[
                        ("realm", "https://ghcr.io/token"),
                        ("service", "ghcr.io"),
                        ("scope", "repository:org/a:pull,push"),
                    ]),
                )],
            },
            Case {
                input: r#"BEARER  Realm = "https://a.test/t" , error=insufficient_scope"#,
                want: vec![(
                    "bearer",
                    params(&[
                        ("realm", "https://a.test/t"),
                        ("error", "insufficient_scope"),
                    ]),
                )],
            },
            Case {
                input: r#"Basic realm="a \"quoted\" realm, with comma", Bearer realm="https://b.test/token",service=b"#,
                want: vec![
                    (
                        "basic",
                        params(&[("realm", r#"a "quoted" realm, with comma"#)]),
                    ),
                    (
                        "bearer",
                        params(&[("realm", "https://b.test/token"), ("service", "b")]),
                    ),
                ],
            },
            Case {
                input: "Negotiate abc==, Basic realm=x",
                want: vec![("negotiate", vec![]), ("basic", params(&[("realm", "x")]))],
            },
            Case {
                input: "Negotiate",
                want: vec![("negotiate", vec![])],
            },
            Case {
                input: "Negotiate YII=",
                want: vec![("negotiate", vec![])],
            },
        ];
        for case in cases {
            let got =
                parse_challenges(case.input).unwrap_or_else(|e| panic!("{}: {e}", case.input));
            let got: Vec<(&str, Vec<(String, String)>)> = got
                .iter()
                .map(|c| (c.scheme.as_str(), c.params.clone()))
                .collect();
            assert_eq!(got, case.want, "{}", case.input);
        }
    }

    #[test]
    fn malformed_challenges_are_errors_not_panics() {
        for bad in [
            "",
            "   ",
            r#"Bearer realm="https://unterminated"#,
            r#"Bearer realm="x" service="y""#,
            "=foo",
            r#"Bearer realm="x"garbage"#,
            "Bearer realm=\"\\",
            "\u{7f}\u{0}",
        ] {
            assert!(parse_challenges(bad).is_err(), "{bad:?} parsed");
        }
    }

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
    fn token_cache_drops_expired_tokens() {
        let cache = TokenCache::default();
        cache.put("a".into(), Secret::new("t1"), Duration::from_secs(300));
        cache.put("short".into(), Secret::new("t2"), Duration::from_secs(5));
        let (token, left) = cache.get("a").expect("cached");
        assert_eq!(token.expose(), "t1");
        assert!(left <= Duration::from_secs(290) && left > Duration::from_secs(280));
        assert!(
            cache.get("short").is_none(),
            "a token about to expire is not kept"
        );
        cache.forget(&Authorization::Bearer(Secret::new("t1")));
        assert!(cache.get("a").is_none());

        cache.put("forever".into(), Secret::new("t3"), Duration::MAX);
        let (_, left) = cache.get("forever").expect("cached");
        assert!(left <= MAX_TOKEN_LIFETIME, "an absurd lifetime is capped");
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
