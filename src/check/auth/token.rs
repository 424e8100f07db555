//! Bearer pull tokens: fetched from the realm as the runtime asks for them (Basic credentials
//! when there are some) and cached, each dropped before it expires. Tokens are never evidence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::challenge::quote;
use super::{
    AuthFailed, AuthOutcome, Authorization, Bearer, ErrorBody, Method, from_request, status_failure,
};
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
            let (token, lifetime) = read_token(&body, &what)?;
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

/// The token and its lifetime from a token server's 200 answer (`what` names the server).
pub(crate) fn read_token(body: &[u8], what: &str) -> Result<(Secret, Duration), AuthFailed> {
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| {
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
    let lifetime = parsed
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok((Secret::new(token), lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

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
