//! The `manifest` check: `HEAD` the image's manifest with the Accept headers a runtime sends (a HEAD
//! spends no Docker Hub pull), tell a missing tag from a missing repository, read the rate limit; and,
//! when asked (`diagnose` only: a GET costs a pull), check the node's platform is in an index.

use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap};
use serde::Deserialize;

use super::auth::{self, AuthOutcome, Method};
use super::http::{request_failed, status_text};
use super::tags::{self, ListFailed};
use super::{CheckError, Evidence};
use crate::http_client::read_capped;
use crate::platform::Platform;
use crate::reason::Reason;

/// What containerd's resolver sends: Docker v2 and list, OCI manifest and index, then anything.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
/// Media types that list one manifest per platform.
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// Largest index read (containerd's manifest limit).
const MAX_INDEX_BYTES: usize = 4 << 20;

/// The manifest asked for.
#[derive(Clone, Copy, Debug)]
pub struct ManifestTarget<'a> {
    /// `scheme://host:port` of the endpoint.
    pub base_url: &'a str,
    /// Its API root: `/v2`, or a mirror's own path (hosts.toml `override_path`).
    pub api_path: &'a str,
    /// The registry as in the reference (`docker.io`), for messages.
    pub registry: &'a str,
    /// The repository asked of this endpoint (CRI-O may rewrite the reference's).
    pub repository: &'a str,
    /// Tag or `sha256:…` digest.
    pub reference: &'a str,
    /// containerd's `?ns=<registry>` for a mirror (see `Endpoint::namespace_for`).
    pub namespace: Option<&'a str>,
}

impl ManifestTarget<'_> {
    fn path(&self) -> String {
        self.manifest_path(self.reference)
    }

    /// `<api>/<repository>/manifests/<reference>[?ns=<registry>]`.
    fn manifest_path(&self, reference: &str) -> String {
        // Encoded as containerd's Go `url.Values` encodes it (`127.0.0.1%3A5000`).
        let query = self
            .namespace
            .map(|ns| {
                let ns = ns
                    .replace(':', "%3A")
                    .replace('[', "%5B")
                    .replace(']', "%5D");
                format!("?ns={ns}")
            })
            .unwrap_or_default();
        format!(
            "{}/{}/manifests/{reference}{query}",
            self.api_path, self.repository
        )
    }

    fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    fn is_digest(&self) -> bool {
        self.reference.contains(':')
    }

    fn what(&self) -> String {
        if self.is_digest() {
            format!("digest {}", self.reference)
        } else {
            format!("tag {}", self.reference)
        }
    }
}

/// How far the check goes.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// Check this platform is in an index (one GET). `None`: HEAD only.
    pub platform: Option<&'a Platform>,
    /// Time for listing tags after a 404.
    pub list_budget: Duration,
}

/// The registry's `ratelimit-*` headers (Docker Hub: `100;w=21600`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub window: Option<Duration>,
    /// `docker-ratelimit-source`: the address or account being counted.
    pub source: Option<String>,
}

impl RateLimit {
    /// Reads the headers; `None` when the registry sends none.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (limit, limit_window) = header("ratelimit-limit").map(quota).unwrap_or_default();
        let (remaining, remaining_window) =
            header("ratelimit-remaining").map(quota).unwrap_or_default();
        let source = header("docker-ratelimit-source").map(str::to_string);
        let found = RateLimit {
            limit,
            remaining,
            window: limit_window.or(remaining_window),
            source,
        };
        (found != RateLimit::default()).then_some(found)
    }
}

/// `100;w=21600` → (100, 6h); `76` → (76, none).
fn quota(value: &str) -> (Option<u64>, Option<Duration>) {
    let mut parts = value.split(';');
    let count = parts.next().and_then(|n| n.trim().parse().ok());
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse().ok())
        .map(Duration::from_secs);
    (count, window)
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rate limit ")?;
        match (self.remaining, self.limit) {
            (Some(remaining), Some(limit)) => write!(f, "{remaining} of {limit} left")?,
            (Some(remaining), None) => write!(f, "{remaining} left")?,
            (None, Some(limit)) => write!(f, "{limit}")?,
            (None, None) => f.write_str("headers")?,
        }
        if let Some(window) = self.window {
            write!(f, " per {}", humantime::format_duration(window))?;
        }
        if let Some(source) = &self.source {
            write!(f, " (source {source})")?;
        }
        Ok(())
    }
}

/// The manifest exists; what the registry said about it.
#[derive(Clone, Debug, Default)]
pub struct ManifestOutcome {
    pub media_type: Option<String>,
    pub digest: Option<String>,
    pub rate_limit: Option<RateLimit>,
    /// The index's platforms, when the platform was checked.
    pub platforms: Option<Vec<Platform>>,
    /// The platform checked for.
    pub platform: Option<Platform>,
}

impl Evidence for ManifestOutcome {
    fn detail(&self) -> String {
        let mut detail = format!(
            "HEAD answered 200 OK: {}",
            self.media_type.as_deref().unwrap_or("no Content-Type")
        );
        if let Some(digest) = &self.digest {
            detail.push_str(&format!(" {digest}"));
        }
        if let (Some(platforms), Some(platform)) = (&self.platforms, &self.platform) {
            detail.push_str(&format!(
                "; {platform} in the index ({})",
                list_platforms(platforms)
            ));
        }
        if let Some(rate_limit) = &self.rate_limit {
            detail.push_str(&format!("; {rate_limit}"));
        }
        detail
    }
}

/// The manifest check failed. The message starts with what is wrong, then the evidence after `; `.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ManifestFailed {
    pub reason: Reason,
    pub message: String,
    pub rate_limit: Option<RateLimit>,
}

impl CheckError for ManifestFailed {
    fn reason(&self) -> Reason {
        self.reason
    }
}

/// HEADs the manifest of `target` with the auth check's authorization, and explains a failure.
pub async fn check(
    client: &reqwest::Client,
    target: ManifestTarget<'_>,
    auth: &AuthOutcome,
    options: Options<'_>,
    proxied: bool,
) -> Result<ManifestOutcome, ManifestFailed> {
    let mut request = client
        .head(format!("{}{}", target.base_url, target.path()))
        .header(ACCEPT, ACCEPT_MANIFESTS);
    if let Some(authorization) = &auth.authorization {
        request = authorization.apply(request);
    }
    let response = request.send().await.map_err(|e| {
        let failed = request_failed(&e, proxied);
        ManifestFailed {
            reason: failed.reason,
            message: format!("HEAD {} failed: {}", target.path(), failed.message),
            rate_limit: None,
        }
    })?;
    let status = response.status().as_u16();
    let rate_limit = RateLimit::from_headers(response.headers());
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (media_type, digest, challenge) = (
        header("content-type"),
        header("docker-content-digest"),
        header("www-authenticate"),
    );
    drop(response);
    let answered = format!("HEAD {} answered {}", target.path(), status_text(status));
    if status == 404 {
        return Err(missing(client, target, auth, options, &answered).await);
    }
    if status != 200 {
        let challenge_error = challenge
            .and_then(|h| auth::parse_challenges(&h).ok())
            .and_then(|cs| cs.iter().find_map(|c| c.param("error").map(str::to_string)));
        let (reason, headline) = judge_denial(status, target, auth, rate_limit.as_ref());
        let mut message = format!("{headline}; {answered}");
        if let Some(error) = challenge_error {
            message.push_str(&format!(" (error={error})"));
        }
        if let Some(rate_limit) = &rate_limit {
            message.push_str(&format!("; {rate_limit}"));
        }
        return Err(ManifestFailed {
            reason,
            message,
            rate_limit,
        });
    }
    if let Some(limit) = rate_limit.as_ref().filter(|r| r.remaining == Some(0)) {
        return Err(ManifestFailed {
            reason: Reason::RateLimited,
            message: format!(
                "no pulls left for {}: the next pull gets 429 Too Many Requests; {answered}; {limit}",
                target.name()
            ),
            rate_limit,
        });
    }
    let mut outcome = ManifestOutcome {
        media_type,
        digest,
        rate_limit,
        ..ManifestOutcome::default()
    };
    let is_index = outcome
        .media_type
        .as_deref()
        .is_some_and(|t| INDEX_TYPES.iter().any(|i| t.starts_with(i)));
    if let (Some(platform), true) = (options.platform, is_index) {
        let (platforms, any_platform) =
            index_platforms(client, target, auth, &outcome, proxied).await?;
        let usable = any_platform || platforms.iter().any(|p| platform.accepts(p));
        let listed = list_platforms(&platforms);
        if !usable {
            return Err(ManifestFailed {
                reason: Reason::PlatformMismatch,
                message: format!(
                    "no {platform} image in {}:{} (it has {}); {answered}: {}",
                    target.name(),
                    target.reference,
                    if listed.is_empty() { "none" } else { &listed },
                    outcome.media_type.as_deref().unwrap_or_default()
                ),
                rate_limit: outcome.rate_limit,
            });
        }
        outcome.platforms = Some(platforms);
        outcome.platform = Some(platform.clone());
    }
    Ok(outcome)
}

/// The `WWW-Authenticate` of an anonymous manifest HEAD that answered 401, if it did: where a
/// registry with an open `/v2/` says which token the repository needs.
pub async fn anonymous_challenge(
    client: &reqwest::Client,
    target: ManifestTarget<'_>,
) -> Option<String> {
    let response = client
        .head(format!("{}{}", target.base_url, target.path()))
        .header(ACCEPT, ACCEPT_MANIFESTS)
        .send()
        .await
        .ok()?;
    if response.status().as_u16() != 401 {
        return None;
    }
    let challenges: Vec<&str> = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!challenges.is_empty()).then(|| challenges.join(", "))
}

/// The reason and headline for a HEAD that was neither found nor missing (401, 403, 429, 5xx, …).
fn judge_denial(
    status: u16,
    target: ManifestTarget<'_>,
    auth: &AuthOutcome,
    rate_limit: Option<&RateLimit>,
) -> (Reason, String) {
    let name = target.name();
    // Token registries give anonymous tokens for any name, then refuse it: a typo looks the same.
    let note = match (&auth.method, target.registry == crate::route::DOCKER_HUB) {
        (Method::Bearer { .. }, true) => {
            ", or the repository does not exist (Docker Hub answers 401 for both)"
        }
        (Method::Bearer { .. }, false) => {
            ", or the repository does not exist (many registries answer 401 for both)"
        }
        _ => "",
    };
    match (status, auth.username()) {
        (401, None) => (
            Reason::AuthRequired,
            format!("anonymous pull of {name} denied{note}"),
        ),
        (401, Some(user)) if matches!(auth.method, Method::Basic { .. }) => (
            Reason::AuthFailed,
            format!("the registry rejects the credentials of user {user} for {name}"),
        ),
        (401, Some(user)) => (
            Reason::Forbidden,
            format!("user {user} got a token but may not pull {name}{note}"),
        ),
        (403, None) => (
            Reason::AuthRequired,
            format!("anonymous pull of {name} refused"),
        ),
        (403, Some(user)) => (
            Reason::Forbidden,
            format!("user {user} may not pull {name}"),
        ),
        (429, _) => (
            Reason::RateLimited,
            match rate_limit.and_then(|r| r.source.as_deref()) {
                Some(source) => format!("pull rate limit reached for {source}"),
                None => "pull rate limit reached".to_string(),
            },
        ),
        (500..=599, _) => (
            Reason::RegistryUnavailable,
            format!("{} is failing", target.registry),
        ),
        _ => (
            Reason::Unknown,
            format!("unexpected answer to a manifest HEAD for {name}"),
        ),
    }
}

/// After a 404: `tags/list` says whether the repository exists (NAME_UNKNOWN when not), and its
/// tags give the nearest ones to a missing tag.
async fn missing(
    client: &reqwest::Client,
    target: ManifestTarget<'_>,
    auth: &AuthOutcome,
    options: Options<'_>,
    answered: &str,
) -> ManifestFailed {
    let name = target.name();
    let listed = tags::list(
        client,
        target.base_url,
        target.api_path,
        target.repository,
        auth.authorization.as_ref(),
        options.list_budget,
    )
    .await;
    let (reason, message) = match listed {
        Err(ListFailed::NameUnknown(says)) => (
            Reason::RepositoryUnknown,
            format!(
                "repository {} not found in {}; {answered}, tags/list answered 404 ({says})",
                target.repository, target.registry
            ),
        ),
        Ok(list) => {
            let count = if list.complete {
                format!("{} tags", list.tags.len())
            } else {
                format!("the first {} tags", list.tags.len())
            };
            let headline = if target.is_digest() {
                format!("{} not found in {name}", target.what())
            } else if list.tags.is_empty() {
                format!(
                    "{} not found in {name} (the repository has no tags)",
                    target.what()
                )
            } else {
                let nearest = tags::nearest(target.reference, &list.tags, tags::NEAREST);
                format!(
                    "{} not found in {name} (nearest tags: {})",
                    target.what(),
                    nearest.join(", ")
                )
            };
            (
                Reason::ManifestUnknown,
                format!("{headline}; {answered}, tags/list has {count}"),
            )
        }
        Err(ListFailed::Status { status, says }) => (
            Reason::ManifestUnknown,
            format!(
                "{} not found in {name}; {answered}, tags/list answered {}{}: cannot list the tags",
                target.what(),
                status_text(status),
                says.map(|s| format!(" ({s})")).unwrap_or_default()
            ),
        ),
        Err(ListFailed::Failed(problem)) => (
            Reason::ManifestUnknown,
            format!(
                "{} not found in {name}; {answered}, tags/list failed: {problem}",
                target.what()
            ),
        ),
    };
    ManifestFailed {
        reason,
        message,
        rate_limit: None,
    }
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    #[serde(default)]
    platform: Option<Platform>,
}

/// GETs the index (by digest when known, so it is the one the HEAD saw) and lists its platforms,
/// and whether an entry has none (containerd takes such an entry for any platform).
async fn index_platforms(
    client: &reqwest::Client,
    target: ManifestTarget<'_>,
    auth: &AuthOutcome,
    head: &ManifestOutcome,
    proxied: bool,
) -> Result<(Vec<Platform>, bool), ManifestFailed> {
    let reference = head.digest.as_deref().unwrap_or(target.reference);
    let path = target.manifest_path(reference);
    let mut request = client
        .get(format!("{}{path}", target.base_url))
        .header(ACCEPT, ACCEPT_MANIFESTS);
    if let Some(authorization) = &auth.authorization {
        request = authorization.apply(request);
    }
    let fail = |reason, message| ManifestFailed {
        reason,
        message,
        rate_limit: head.rate_limit.clone(),
    };
    let response = request.send().await.map_err(|e| {
        let failed = request_failed(&e, proxied);
        fail(
            failed.reason,
            format!("GET {path} failed: {}", failed.message),
        )
    })?;
    let status = response.status().as_u16();
    if status != 200 {
        let rate_limit = RateLimit::from_headers(response.headers());
        let (reason, headline) = judge_denial(status, target, auth, rate_limit.as_ref());
        return Err(fail(
            reason,
            format!("{headline}; GET {path} answered {}", status_text(status)),
        ));
    }
    let body = read_capped(response, MAX_INDEX_BYTES + 1)
        .await
        .map_err(|e| {
            let failed = request_failed(&e, proxied);
            fail(
                failed.reason,
                format!("GET {path} failed: {}", failed.message),
            )
        })?;
    // An index no runtime reads (it refuses a manifest over 4 MiB; an endless body never ends) is
    // the registry failing on its side, as a 5xx is: not an unknown.
    if body.len() > MAX_INDEX_BYTES {
        return Err(fail(
            Reason::RegistryUnavailable,
            format!(
                "the index of {} is over {} MiB (cut there): no runtime reads an index that large; GET {path}",
                target.name(),
                MAX_INDEX_BYTES >> 20
            ),
        ));
    }
    read_index(&body).map_err(|e| {
        fail(
            Reason::RegistryUnavailable,
            format!(
                "the index of {} is not a valid index: {e}; GET {path}",
                target.name()
            ),
        )
    })
}

/// An index's platforms (normalised), and whether an entry has none.
pub(crate) fn read_index(body: &[u8]) -> Result<(Vec<Platform>, bool), serde_json::Error> {
    let index: Index = serde_json::from_slice(body)?;
    let any_platform = index.manifests.iter().any(|entry| entry.platform.is_none());
    let platforms = index
        .manifests
        .into_iter()
        .filter_map(|entry| entry.platform)
        .map(|p| p.normalized())
        .collect();
    Ok((platforms, any_platform))
}

/// `linux/amd64, linux/arm64`, without attestation entries (`unknown/unknown`).
pub(crate) fn list_platforms(platforms: &[Platform]) -> String {
    let mut shown: Vec<String> = platforms
        .iter()
        .filter(|p| p.os != "unknown")
        .map(Platform::to_string)
        .collect();
    shown.dedup();
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn reads_rate_limit_headers() {
        struct Case {
            headers: &'static [(&'static str, &'static str)],
            want: Option<RateLimit>,
            text: &'static str,
        }
        let cases = [
            Case {
                headers: &[
                    ("ratelimit-limit", "100;w=21600"),
                    ("ratelimit-remaining", "76;w=21600"),
                    ("docker-ratelimit-source", "192.0.2.7"),
                ],
                want: Some(RateLimit {
                    limit: Some(100),
                    remaining: Some(76),
                    window: Some(Duration::from_secs(21600)),
                    source: Some("192.0.2.7".into()),
                }),
                text: "rate limit 76 of 100 left per 6h (source 192.0.2.7)",
            },
            Case {
                headers: &[("ratelimit-remaining", "0")],
                want: Some(RateLimit {
                    remaining: Some(0),
                    ..RateLimit::default()
                }),
                text: "rate limit 0 left",
            },
            Case {
                headers: &[("ratelimit-limit", "200 ; w=3600 ; comment=x")],
                want: Some(RateLimit {
                    limit: Some(200),
                    window: Some(Duration::from_secs(3600)),
                    ..RateLimit::default()
                }),
                text: "rate limit 200 per 1h",
            },
            Case {
                headers: &[("content-type", "x")],
                want: None,
                text: "",
            },
        ];
        for case in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in case.headers {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            let got = RateLimit::from_headers(&headers);
            assert_eq!(got, case.want, "{:?}", case.headers);
            if let Some(got) = got {
                assert_eq!(got.to_string(), case.text);
            }
        }
    }

    #[test]
    fn judges_denials() {
        let anonymous = AuthOutcome {
            method: Method::Open,
            authorization: None,
        };
        let anonymous_token = AuthOutcome {
            method: Method::Bearer {
                realm: "https://auth.test/token".into(),
                scope: "repository:a:pull".into(),
                username: None,
                expires_in: Duration::from_secs(300),
                cached: false,
                withheld: None,
            },
            authorization: None,
        };
        let basic = AuthOutcome {
            method: Method::Basic {
                username: "alice".into(),
                key: "k".into(),
            },
            authorization: None,
        };
        let bearer = AuthOutcome {
            method: Method::Bearer {
                realm: "https://auth.test/token".into(),
                scope: "repository:a:pull".into(),
                username: Some("alice".into()),
                expires_in: Duration::from_secs(300),
                cached: false,
                withheld: None,
            },
            authorization: None,
        };
        let hub = ManifestTarget {
            base_url: "https://registry-1.docker.io",
            api_path: "/v2",
            registry: "docker.io",
            repository: "library/nope",
            reference: "1",
            namespace: None,
        };
        let cases = [
            (
                401,
                &anonymous_token,
                Reason::AuthRequired,
                "Docker Hub answers 401 for both",
            ),
            (401, &anonymous, Reason::AuthRequired, "anonymous pull of"),
            (401, &basic, Reason::AuthFailed, "user alice"),
            (
                401,
                &bearer,
                Reason::Forbidden,
                "may not pull docker.io/library/nope",
            ),
            (403, &anonymous, Reason::AuthRequired, "refused"),
            (403, &bearer, Reason::Forbidden, "user alice"),
            (429, &anonymous, Reason::RateLimited, "rate limit"),
            (
                502,
                &bearer,
                Reason::RegistryUnavailable,
                "docker.io is failing",
            ),
            (405, &anonymous, Reason::Unknown, "unexpected"),
        ];
        for (status, auth, want, text) in cases {
            let (reason, headline) = judge_denial(status, hub, auth, None);
            assert_eq!(reason, want, "{status}");
            assert!(headline.contains(text), "{status}: {headline}");
        }
        let (_, basic_anonymous) = judge_denial(401, hub, &anonymous, None);
        assert!(
            !basic_anonymous.contains("does not exist"),
            "only token registries hide missing repositories: {basic_anonymous}"
        );
    }

    #[test]
    fn lists_platforms_without_attestations() {
        let platforms: Vec<Platform> = ["linux/arm64", "unknown/unknown", "linux/s390x"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(list_platforms(&platforms), "linux/arm64, linux/s390x");
    }
}
