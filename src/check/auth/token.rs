//! Bearer pull tokens: fetched from the realm as the runtime asks for them (Basic credentials
//! when there are some) and cached, each dropped before it expires. Tokens are never evidence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    AuthFailed, AuthOutcome, Authorization, Bearer, ErrorBody, Method, from_request, status_failure,
};
use crate::credentials::{Credential, Secret};
use crate::http_client::read_capped;
use crate::reason::Reason;
use crate::text::quote;

/// Largest token response read.
const MAX_TOKEN_BODY: usize = 1 << 20;
/// Lifetime assumed when the token server does not say, and the least one taken when it says less
/// (`expires_in: 0` or `-1`): distribution's token spec and containers/image's
/// `minimumTokenLifetimeSeconds`; containerd reads any integer and does not expire tokens by it.
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A cached token is dropped this long before the server says it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Longest a token is cached, whatever the server claims (an absurd `expires_in` must neither
/// overflow the clock nor keep a token forever).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A token server's 200 answer read as the runtime reads it (distribution's token spec;
/// `access_token` is the OAuth2 spelling, and wins when both are set, as in containerd).
#[derive(Debug, PartialEq)]
pub(crate) struct TokenResponse {
    token: String,
    /// What the server said, floored at [`MIN_TOKEN_LIFETIME`].
    lifetime: Duration,
}

/// Why a 200 answer holds no token the runtime can use: its Go decoder would fail the pull too.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum Unusable {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("{field} is {found}, not a string")]
    NotAString { field: &'static str, found: String },
    /// Go decodes `expires_in` into an `int`: a fraction, a string or a bool fails the decode.
    #[error("expires_in is {0}, not a whole number of seconds")]
    BadLifetime(String),
    #[error("no token in it")]
    NoToken,
}

/// A JSON value named for evidence: its type and a short, escaped rendering.
fn shown(value: &serde_json::Value) -> String {
    use serde_json::Value;
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("{kind} ({})", crate::text::peer(&value.to_string(), 40))
}

/// Reads a token response leniently where the runtime is (any whole `expires_in`, negative or
/// missing, floored at a minute) and strictly where it fails (the types its decoder refuses).
pub(crate) fn parse_token_response(body: &[u8]) -> Result<TokenResponse, Unusable> {
    use serde_json::Value;
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Unusable::NotJson(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(Unusable::NotAnObject);
    };
    let text = |field: &'static str| match fields.get(field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(Unusable::NotAString {
            field,
            found: shown(other),
        }),
    };
    let (token, access_token) = (text("token")?, text("access_token")?);
    let seconds = match fields.get("expires_in") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.as_u64().unwrap_or(0),
        Some(other) => return Err(Unusable::BadLifetime(shown(other))),
    };
    let token = if access_token.is_empty() {
        token
    } else {
        access_token
    };
    if token.is_empty() {
        return Err(Unusable::NoToken);
    }
    Ok(TokenResponse {
        token,
        lifetime: Duration::from_secs(seconds).max(MIN_TOKEN_LIFETIME),
    })
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

/// A process-local fingerprint of a secret, to tell two apart in a cache key.
fn fingerprint(secret: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = FINGERPRINT_KEYS.build_hasher();
    hasher.write(secret.as_bytes());
    hasher.finish()
}

/// Random per process, so a fingerprint says nothing outside it.
static FINGERPRINT_KEYS: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);

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
    // The password's fingerprint too: ECR's user is always `AWS`, so two sources' credentials
    // (a stale pull secret, the node's provider) may differ only there, and one must never be
    // answered with a token the other earned. Kept in memory only, never shown.
    let cache_key = format!(
        "{}\n{}\n{scope}\n{}\n{}\n{:x}",
        bearer.realm,
        bearer.service.as_deref().unwrap_or_default(),
        credential.map(|c| c.key.as_str()).unwrap_or_default(),
        username.as_deref().unwrap_or_default(),
        credential.map_or(0, |c| fingerprint(c.password.expose()))
    );
    let outcome = |token: Secret, expires_in: Duration, cached: bool| AuthOutcome {
        method: Method::Bearer {
            realm: bearer.realm.to_string(),
            scope: scope.clone(),
            username: username.clone(),
            expires_in,
            cached,
            withheld: None,
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
            // The token server is the registry's own service: an answer it cannot have meant is
            // the registry failing on its side, as a 5xx is.
            let parsed = parse_token_response(&body).map_err(|problem| {
                AuthFailed::new(
                    Reason::RegistryUnavailable,
                    format!(
                        "{what} answered 200 OK but no usable token: {problem} (container runtimes fail the pull on it too)"
                    ),
                )
            })?;
            let token = Secret::new(parsed.token);
            cache.put(cache_key, token.clone(), parsed.lifetime);
            Ok(outcome(token, parsed.lifetime, false))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses_are_read_as_the_runtime_reads_them() {
        struct Case {
            body: &'static str,
            want: Result<(&'static str, u64), &'static str>,
        }
        let cases = [
            Case {
                body: r#"{"token":"t","expires_in":300}"#,
                want: Ok(("t", 300)),
            },
            // Lenient where Go is: a negative, zero, small or missing lifetime is a minute.
            Case {
                body: r#"{"token":"t","expires_in":-1}"#,
                want: Ok(("t", 60)),
            },
            Case {
                body: r#"{"token":"t","expires_in":0}"#,
                want: Ok(("t", 60)),
            },
            Case {
                body: r#"{"token":"t","expires_in":5}"#,
                want: Ok(("t", 60)),
            },
            Case {
                body: r#"{"token":"t"}"#,
                want: Ok(("t", 60)),
            },
            Case {
                body: r#"{"token":"t","expires_in":null}"#,
                want: Ok(("t", 60)),
            },
            Case {
                body: r#"{"token":"t","expires_in":18446744073709551615}"#,
                want: Ok(("t", u64::MAX)),
            },
            Case {
                body: r#"{"token":"old","access_token":"oauth","expires_in":120}"#,
                want: Ok(("oauth", 120)),
            },
            Case {
                body: r#"{"token":"t","access_token":"","refresh_token":7}"#,
                want: Ok(("t", 60)),
            },
            // Strict where Go's decoder fails the pull.
            Case {
                body: r#"{"token":"t","expires_in":"300"}"#,
                want: Err("expires_in is a string (\"300\"), not a whole number of seconds"),
            },
            Case {
                body: r#"{"token":"t","expires_in":60.5}"#,
                want: Err("expires_in is a number (60.5), not a whole number of seconds"),
            },
            Case {
                body: r#"{"token":"t","expires_in":true}"#,
                want: Err("expires_in is a boolean (true), not a whole number of seconds"),
            },
            Case {
                body: r#"{"token":42}"#,
                want: Err("token is a number (42), not a string"),
            },
            Case {
                body: r#"{"expires_in":300}"#,
                want: Err("no token in it"),
            },
            Case {
                body: r#"{"token":""}"#,
                want: Err("no token in it"),
            },
            Case {
                body: r#"["t"]"#,
                want: Err("not a JSON object"),
            },
        ];
        for case in cases {
            let got = parse_token_response(case.body.as_bytes())
                .map(|r| (r.token, r.lifetime.as_secs()))
                .map_err(|e| e.to_string());
            let want = case
                .want
                .map(|(t, s)| (t.to_string(), s))
                .map_err(str::to_string);
            assert_eq!(got, want, "{}", case.body);
        }
        assert!(matches!(
            parse_token_response(b"<html>login</html>"),
            Err(Unusable::NotJson(_))
        ));
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
}
