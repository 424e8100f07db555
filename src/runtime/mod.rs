//! The CRI client: the node's container runtime (containerd, CRI-O, cri-dockerd) over its unix
//! socket with `k8s-cri`; every call bounded, a dead socket a reported state, reconnects backed off.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde::Serialize;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

mod canary;
mod socket;

pub use self::canary::{canary_for, sandbox_canary, sandbox_image_from_info};
pub use self::socket::{EndpointError, Located, locate, parse_endpoint};

use crate::backoff::Backoff;
use crate::reason::{Reason, classify_runtime_message};
use crate::route::RuntimeKind;

/// Largest CRI message sent or accepted (ListImages on a busy node is big).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The one call whose running out of time says nothing about the runtime's health.
const PULL_IMAGE: &str = "PullImage";

/// How much longer than a call's deadline the outer bound waits.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);

/// Reconnect backoff after the runtime went away: quick at first, at most every 30 s.
pub const RECONNECT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(250),
    max: Duration::from_secs(30),
};

/// A CRI call that did not succeed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The socket is missing, refuses, or the connection broke: the runtime is down.
    #[error("runtime at {socket} is unavailable: {message}")]
    Unavailable { socket: String, message: String },
    /// No answer in time.
    #[error("{call} got no answer from {socket} within {}", humantime::format_duration(*.after))]
    Timeout {
        call: &'static str,
        socket: String,
        after: Duration,
    },
    /// The runtime answered with an error; `message` is its text, verbatim. (A runtime that
    /// ran out of time answers too: `DeadlineExceeded`, with the inner error's text.)
    #[error("{call}: {message}")]
    Call {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl RuntimeError {
    /// The reason: a pull's own message classified, a pull out of time, or the runtime failing.
    pub fn reason(&self) -> Reason {
        match self {
            RuntimeError::Unavailable { .. } => Reason::RuntimeError,
            RuntimeError::Timeout { call, .. } if *call == PULL_IMAGE => Reason::PullTimeout,
            RuntimeError::Timeout { .. } => Reason::RuntimeError,
            RuntimeError::Call { message, .. } => match classify_runtime_message(message) {
                Reason::Unknown => Reason::RuntimeError,
                reason => reason,
            },
        }
    }
}

/// `Version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuntimeVersion {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

impl RuntimeVersion {
    pub fn kind(&self) -> RuntimeKind {
        RuntimeKind::from_name(&self.runtime_name)
    }
}

/// One `Status` condition (`RuntimeReady`, `NetworkReady`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// `Status{verbose: true}`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RuntimeStatus {
    pub conditions: Vec<Condition>,
    /// The pause image, when the runtime's verbose info names it (containerd does).
    pub sandbox_image: Option<String>,
}

/// One image the node holds (`ListImages`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeImage {
    pub id: String,
    pub repo_tags: Vec<String>,
    /// `repository@sha256:…`: what the runtime check pulls.
    pub repo_digests: Vec<String>,
    pub size: u64,
    pub pinned: bool,
}

/// One image filesystem (`ImageFsInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageFs {
    pub mountpoint: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// One pod sandbox (`ListPodSandbox`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub ready: bool,
}

/// One container (`ListContainers`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub image: String,
    pub image_ref: String,
    pub running: bool,
}

/// Registry credentials for one pull (never logged).
#[derive(Clone, Default)]
pub struct PullAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PullAuth { .. }")
    }
}

/// The connection and its failure history.
#[derive(Default)]
struct Connection {
    channel: Option<Channel>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// Whether the runtime answered lately, for metrics and `targets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuntimeState {
    pub socket: String,
    pub up: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

/// A CRI client that survives the runtime restarting: a broken connection is dropped and
/// re-made on a later call, no sooner than a jittered backoff allows.
pub struct RuntimeClient {
    socket: PathBuf,
    call_timeout: Duration,
    backoff: Backoff,
    conn: tokio::sync::Mutex<Connection>,
}

impl RuntimeClient {
    /// A client for `socket`; nothing is connected until the first call.
    pub fn new(socket: impl Into<PathBuf>, call_timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            call_timeout,
            backoff: RECONNECT_BACKOFF,
            conn: tokio::sync::Mutex::new(Connection::default()),
        }
    }

    /// Replaces the reconnect backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix:///…`, as crictl names it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Up or down, as of the last call.
    pub async fn state(&self) -> RuntimeState {
        let conn = self.conn.lock().await;
        RuntimeState {
            socket: self.endpoint(),
            up: conn.channel.is_some() && conn.failures == 0,
            consecutive_failures: conn.failures,
            last_error: conn.last_error.clone(),
        }
    }

    pub async fn version(&self) -> Result<RuntimeVersion, RuntimeError> {
        let channel = self.channel().await?;
        let request = cri::VersionRequest {
            version: crate::CRI_API_VERSION.into(),
        };
        let response = self
            .call("Version", self.call_timeout, async move |timeout| {
                runtime_client(channel)
                    .version(bounded(request, timeout))
                    .await
            })
            .await?;
        Ok(RuntimeVersion {
            runtime_name: response.runtime_name,
            runtime_version: response.runtime_version,
            runtime_api_version: response.runtime_api_version,
        })
    }

    pub async fn status(&self) -> Result<RuntimeStatus, RuntimeError> {
        let channel = self.channel().await?;
        let response = self
            .call("Status", self.call_timeout, async move |timeout| {
                runtime_client(channel)
                    .status(bounded(cri::StatusRequest { verbose: true }, timeout))
                    .await
            })
            .await?;
        let conditions = response
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| Condition {
                kind: c.r#type,
                status: c.status,
                reason: c.reason,
                message: c.message,
            })
            .collect();
        Ok(RuntimeStatus {
            conditions,
            sandbox_image: sandbox_image_from_info(&response.info),
        })
    }

    pub async fn list_images(&self) -> Result<Vec<NodeImage>, RuntimeError> {
        let channel = self.channel().await?;
        let response = self
            .call("ListImages", self.call_timeout, async move |timeout| {
                image_client(channel)
                    .list_images(bounded(cri::ListImagesRequest { filter: None }, timeout))
                    .await
            })
            .await?;
        Ok(response
            .images
            .into_iter()
            .map(|i| NodeImage {
                id: i.id,
                repo_tags: i.repo_tags,
                repo_digests: i.repo_digests,
                size: i.size,
                pinned: i.pinned,
            })
            .collect())
    }

    pub async fn image_fs_info(&self) -> Result<Vec<ImageFs>, RuntimeError> {
        let channel = self.channel().await?;
        let response = self
            .call("ImageFsInfo", self.call_timeout, async move |timeout| {
                image_client(channel)
                    .image_fs_info(bounded(cri::ImageFsInfoRequest {}, timeout))
                    .await
            })
            .await?;
        Ok(response
            .image_filesystems
            .into_iter()
            .map(|fs| ImageFs {
                mountpoint: fs.fs_id.map(|id| id.mountpoint).unwrap_or_default(),
                used_bytes: fs.used_bytes.map(|v| v.value).unwrap_or_default(),
                inodes_used: fs.inodes_used.map(|v| v.value).unwrap_or_default(),
            })
            .collect())
    }

    pub async fn list_pod_sandboxes(&self) -> Result<Vec<Sandbox>, RuntimeError> {
        let channel = self.channel().await?;
        let response = self
            .call("ListPodSandbox", self.call_timeout, async move |timeout| {
                runtime_client(channel)
                    .list_pod_sandbox(bounded(
                        cri::ListPodSandboxRequest { filter: None },
                        timeout,
                    ))
                    .await
            })
            .await?;
        Ok(response
            .items
            .into_iter()
            .map(|s| {
                let metadata = s.metadata.unwrap_or_default();
                Sandbox {
                    id: s.id,
                    name: metadata.name,
                    namespace: metadata.namespace,
                    ready: s.state == cri::PodSandboxState::SandboxReady as i32,
                }
            })
            .collect())
    }

    pub async fn list_containers(&self) -> Result<Vec<Container>, RuntimeError> {
        let channel = self.channel().await?;
        let response = self
            .call("ListContainers", self.call_timeout, async move |timeout| {
                runtime_client(channel)
                    .list_containers(bounded(
                        cri::ListContainersRequest { filter: None },
                        timeout,
                    ))
                    .await
            })
            .await?;
        Ok(response
            .containers
            .into_iter()
            .map(|c| Container {
                id: c.id,
                sandbox_id: c.pod_sandbox_id,
                name: c.metadata.map(|m| m.name).unwrap_or_default(),
                image: c.image.map(|i| i.image).unwrap_or_default(),
                image_ref: c.image_ref,
                running: c.state == cri::ContainerState::ContainerRunning as i32,
            })
            .collect())
    }

    /// `PullImage` with its own (longer) timeout; returns the image reference the runtime
    /// stored. On failure the runtime's message is kept verbatim for classification.
    pub async fn pull_image(
        &self,
        image: &str,
        auth: Option<&PullAuth>,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        let channel = self.channel().await?;
        let request = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth: auth.map(|a| cri::AuthConfig {
                username: a.username.clone(),
                password: a.password.clone(),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        let response = self
            .call(PULL_IMAGE, timeout, async move |timeout| {
                image_client(channel)
                    .pull_image(bounded(request, timeout))
                    .await
            })
            .await?;
        Ok(response.image_ref)
    }

    /// The live channel, or a new one unless the backoff after the last failure still runs.
    async fn channel(&self) -> Result<Channel, RuntimeError> {
        let mut conn = self.conn.lock().await;
        if let Some(channel) = &conn.channel {
            return Ok(channel.clone());
        }
        if let Some(retry_at) = conn.retry_at {
            let now = Instant::now();
            if now < retry_at {
                let last = conn.last_error.clone().unwrap_or_default();
                return Err(self.unavailable(format!(
                    "{last}; next reconnect in {}",
                    crate::text::short_duration(retry_at - now)
                )));
            }
        }
        let connected = match tokio::time::timeout(self.call_timeout, connect(&self.socket)).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(error)) => Err(crate::text::error_chain(&error)),
            Err(_) => Err(format!(
                "no connection within {}",
                humantime::format_duration(self.call_timeout)
            )),
        };
        match connected {
            Ok(channel) => {
                conn.channel = Some(channel.clone());
                Ok(channel)
            }
            Err(message) => {
                Self::failed(&mut conn, &self.backoff, message.clone());
                Err(self.unavailable(message))
            }
        }
    }

    /// Runs one RPC under `timeout`; a transport failure drops the connection.
    async fn call<T>(
        &self,
        name: &'static str,
        timeout: Duration,
        rpc: impl AsyncFnOnce(Duration) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, RuntimeError> {
        // The runtime gets the deadline too (grpc-timeout) and stops; tonic enforces it here as
        // well, so the outer bound only covers a call that hangs outside tonic.
        let result = tokio::time::timeout(timeout + DEADLINE_GRACE, rpc(timeout)).await;
        let mut conn = self.conn.lock().await;
        match result {
            Ok(Ok(response)) => {
                conn.failures = 0;
                conn.retry_at = None;
                conn.last_error = None;
                Ok(response.into_inner())
            }
            // tonic enforces the request's deadline on this side too; a runtime that gives up on
            // its own deadline first answers DeadlineExceeded: out of time either way.
            Ok(Err(status))
                if caused_by::<tonic::TimeoutExpired>(&status)
                    || status.code() == tonic::Code::DeadlineExceeded && name != PULL_IMAGE =>
            {
                Err(self.timed_out(&mut conn, name, timeout))
            }
            Ok(Err(status)) if is_transport_failure(&status) => {
                let message = transport_message(&status);
                conn.channel = None;
                Self::failed(&mut conn, &self.backoff, message.clone());
                Err(self.unavailable(message))
            }
            // An error answer is an answer: the runtime is up.
            Ok(Err(status)) => {
                conn.failures = 0;
                conn.retry_at = None;
                conn.last_error = None;
                Err(RuntimeError::Call {
                    call: name,
                    code: status.code(),
                    message: status.message().to_string(),
                })
            }
            Err(_) => Err(self.timed_out(&mut conn, name, timeout)),
        }
    }

    /// A call out of time. A runtime that cannot answer `Version`, `Status` or a listing in time
    /// is hung, not up: a failure like a broken connection (dropped, re-made after the backoff, so
    /// calls do not pile up on it). A slow `PullImage` is the registry's or the network's doing
    /// (`pull_timeout`), as for the kubelet: the runtime is not counted down for it.
    fn timed_out(
        &self,
        conn: &mut Connection,
        name: &'static str,
        timeout: Duration,
    ) -> RuntimeError {
        let error = RuntimeError::Timeout {
            call: name,
            socket: self.endpoint(),
            after: timeout,
        };
        if name != PULL_IMAGE {
            conn.channel = None;
            Self::failed(conn, &self.backoff, error.to_string());
        }
        error
    }

    fn failed(conn: &mut Connection, backoff: &Backoff, message: String) {
        conn.failures = conn.failures.saturating_add(1);
        conn.retry_at = Some(Instant::now() + backoff.delay(conn.failures));
        conn.last_error = Some(message);
    }

    fn unavailable(&self, message: String) -> RuntimeError {
        RuntimeError::Unavailable {
            socket: self.endpoint(),
            message,
        }
    }
}

/// Dials the unix socket; tonic needs some http URI, which is never resolved.
async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
}

fn runtime_client(channel: Channel) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn image_client(channel: Channel) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A request carrying its deadline to the runtime (`grpc-timeout`), so the runtime stops too.
fn bounded<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The call never reached the runtime, or the connection broke under it.
fn is_transport_failure(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        || caused_by::<tonic::transport::Error>(status)
        || caused_by::<std::io::Error>(status)
}

/// Whether an error of type `E` is in the status's source chain.
fn caused_by<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    use std::error::Error;
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<E>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn transport_message(status: &tonic::Status) -> String {
    use std::error::Error;
    match status.source() {
        Some(source) => format!("{}: {}", status.message(), crate::text::error_chain(source)),
        None => status.message().to_string(),
    }
}

#[cfg(test)]
mod tests;
