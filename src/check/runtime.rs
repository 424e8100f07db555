//! The `runtime` check: a real CRI `PullImage` through the node's own runtime, with its mirrors,
//! CA files and proxy; for the canary, by digest of an image the node holds, so nothing downloads.

use super::{CheckError, Evidence};
use crate::reason::Reason;
use crate::runtime::{PullAuth, RuntimeClient, RuntimeError, canary_for, sandbox_canary};

/// The runtime pulled the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    pub image: String,
    /// The image ID the runtime stored (`sha256:…`).
    pub image_ref: String,
    pub runtime: String,
}

impl Evidence for Pulled {
    fn detail(&self) -> String {
        format!(
            "{} pulled {} ({})",
            self.runtime, self.image, self.image_ref
        )
    }
}

/// The runtime could not pull: its own words, classified.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{runtime}: {message}")]
pub struct PullFailed {
    pub reason: Reason,
    pub message: String,
    pub runtime: String,
}

impl CheckError for PullFailed {
    fn reason(&self) -> Reason {
        self.reason
    }
}

impl PullFailed {
    fn new(client: &RuntimeClient, error: RuntimeError, sent_credentials: bool) -> Self {
        let reason = error.reason();
        let message = match error {
            RuntimeError::Call { message, .. } => message,
            other => other.to_string(),
        };
        PullFailed {
            reason: with_credentials(reason, &message, sent_credentials),
            message,
            runtime: client.endpoint(),
        }
    }
}

/// containerd says the registry's `401 Unauthorized` alike for no and for wrong Basic
/// credentials; when the pull sent some, that answer means they were rejected. Other
/// `auth_required` answers stay: Docker Hub's `pull access denied … insufficient_scope` is a
/// missing or private repository whatever the credentials, and an anonymous token fetch means
/// the credentials sent did not apply to this registry.
fn with_credentials(reason: Reason, message: &str, sent_credentials: bool) -> Reason {
    let m = message.to_ascii_lowercase();
    let basic_rejection = m.contains("401 unauthorized")
        && !m.contains("anonymous token")
        && !m.contains("pull access denied");
    if sent_credentials && reason == Reason::AuthRequired && basic_rejection {
        Reason::AuthFailed
    } else {
        reason
    }
}

/// `PullImage` of `image` (with `auth`, as the kubelet passes imagePullSecrets), bounded by
/// `timeout`. The caller wraps it in [`super::run`] with [`super::CheckKind::Runtime`].
pub async fn check(
    client: &RuntimeClient,
    image: &str,
    auth: Option<&PullAuth>,
    timeout: std::time::Duration,
) -> Result<Pulled, PullFailed> {
    match client.pull_image(image, auth, timeout).await {
        Ok(image_ref) => Ok(Pulled {
            image: image.to_string(),
            image_ref,
            runtime: client.endpoint(),
        }),
        Err(error) => Err(PullFailed::new(client, error, auth.is_some())),
    }
}

/// What the runtime-path check pulls: an image the node holds, by digest, so that the runtime
/// resolves it remotely through its route and downloads nothing. For `registry`, an image from
/// there (the sandbox image first); without one, the sandbox image wherever it comes from.
/// `Ok(None)`: the node holds nothing suitable.
pub async fn canary(
    client: &RuntimeClient,
    registry: Option<&str>,
) -> Result<Option<String>, RuntimeError> {
    let status = client.status().await?;
    let images = client.list_images().await?;
    let sandbox = status.sandbox_image.as_deref();
    Ok(match registry {
        Some(registry) => canary_for(&images, sandbox, registry),
        None => sandbox.and_then(|s| sandbox_canary(&images, s)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::classify_runtime_message;

    struct Case {
        /// The case in tests/fixtures/containerd_errors.json the message was recorded as.
        fixture: &'static str,
        input: &'static str,
        sent_credentials: bool,
        want: Reason,
    }

    #[test]
    fn credentials_sent_turn_only_a_basic_401_into_auth_failed() {
        const BASIC_401: &str = "failed to pull and unpack image \"127.0.0.1:33247/private:1.0\": failed to resolve reference \"127.0.0.1:33247/private:1.0\": pulling from host 127.0.0.1:33247 failed with status code [manifests 1.0]: 401 Unauthorized";
        const ANONYMOUS_TOKEN: &str = "failed to pull and unpack image \"127.0.0.1:40211/team/app:1.0\": failed to resolve reference \"127.0.0.1:40211/team/app:1.0\": failed to authorize: failed to fetch anonymous token: unexpected status: 401 Unauthorized";
        const OAUTH_TOKEN: &str = "failed to pull and unpack image \"127.0.0.1:40211/team/app:1.0\": failed to resolve reference \"127.0.0.1:40211/team/app:1.0\": failed to authorize: failed to fetch oauth token: unexpected status: 401 Unauthorized";
        const INSUFFICIENT_SCOPE: &str = "failed to pull and unpack image \"127.0.0.1:33477/team/secret:1.0\": failed to resolve reference \"127.0.0.1:33477/team/secret:1.0\": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed";
        let cases = [
            Case {
                fixture: "wrong_credentials",
                input: BASIC_401,
                sent_credentials: true,
                want: Reason::AuthFailed,
            },
            Case {
                fixture: "no_credentials",
                input: BASIC_401,
                sent_credentials: false,
                want: Reason::AuthRequired,
            },
            Case {
                fixture: "bearer_token_without_access",
                input: INSUFFICIENT_SCOPE,
                sent_credentials: true,
                want: Reason::AuthRequired,
            },
            Case {
                fixture: "bearer_token_without_access",
                input: INSUFFICIENT_SCOPE,
                sent_credentials: false,
                want: Reason::AuthRequired,
            },
            Case {
                fixture: "token_server_refuses_anonymous",
                input: ANONYMOUS_TOKEN,
                sent_credentials: true,
                want: Reason::AuthRequired,
            },
            Case {
                fixture: "token_server_rejects_credentials",
                input: OAUTH_TOKEN,
                sent_credentials: true,
                want: Reason::AuthFailed,
            },
        ];
        for case in cases {
            let classified = classify_runtime_message(case.input);
            assert_eq!(
                with_credentials(classified, case.input, case.sent_credentials),
                case.want,
                "{} (credentials sent: {})",
                case.fixture,
                case.sent_credentials
            );
        }
    }
}
