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
        let mut reason = error.reason();
        // containerd says `401 Unauthorized` alike for no and for wrong Basic credentials;
        // here it is known which.
        if sent_credentials && reason == Reason::AuthRequired {
            reason = Reason::AuthFailed;
        }
        let message = match error {
            RuntimeError::Call { message, .. } => message,
            other => other.to_string(),
        };
        PullFailed {
            reason,
            message,
            runtime: client.endpoint(),
        }
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
