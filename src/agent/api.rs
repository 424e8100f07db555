//! The agent's own gRPC API (proto/pullwatch/v1) on a unix socket: `Status`, and `Diagnose`, which
//! streams each check as it completes; the client `diagnose --agent` uses; report ⇄ proto conversions.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response};

pub use super::api_socket::{SocketError, bind};
use super::listener::{self, Protocol};
use super::scheduler::Scheduler;
use super::status::{RegistryStatus, Status, StatusBoard};
use crate::agent::status::PodFailure;
use crate::check::CheckResult;
use crate::credentials::ImageCredentials;
use crate::report::{EndpointReport, Report};
use crate::route::Endpoint;
use crate::text::error_chain;

/// The code generated from proto/pullwatch/v1/pullwatch.proto.
pub mod pb {
    tonic::include_proto!("pullwatch.v1");
}

use pb::diagnose_event::Event;
use pb::pullwatch_client::PullwatchClient;
use pb::pullwatch_server::{Pullwatch, PullwatchServer};

/// Images one `Diagnose` call may ask for.
pub const MAX_IMAGES_PER_CALL: usize = 32;
/// Longest image reference accepted (distribution caps names at 255; tags and digests add a little).
const MAX_IMAGE_LEN: usize = 512;
/// `Diagnose` calls running at once; more are refused with RESOURCE_EXHAUSTED.
const MAX_CONCURRENT_DIAGNOSES: usize = 4;
/// Connecting to the socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The service behind the socket.
pub struct Api {
    /// Diagnoses go through the scheduler's per-endpoint slots, like the agent's own checks.
    scheduler: Arc<Scheduler>,
    status: Arc<StatusBoard>,
    diagnoses: Arc<Semaphore>,
    cancel: CancellationToken,
}

impl Api {
    pub fn new(
        scheduler: Arc<Scheduler>,
        status: Arc<StatusBoard>,
        cancel: CancellationToken,
    ) -> Self {
        Api {
            scheduler,
            status,
            diagnoses: Arc::new(Semaphore::new(MAX_CONCURRENT_DIAGNOSES)),
            cancel,
        }
    }
}

/// Serves the API on `listener` until `cancel`; every connection within
/// [`listener::API_LIMITS`].
pub async fn serve(listener: UnixListener, api: Api, cancel: CancellationToken) {
    let routes = tonic::service::Routes::new(PullwatchServer::new(api));
    listener::serve(
        "api",
        listener,
        routes,
        Protocol::Http2,
        listener::API_LIMITS,
        cancel,
    )
    .await;
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::DiagnoseEvent, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Pullwatch for Api {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, tonic::Status> {
        Ok(Response::new(self.status.snapshot().into()))
    }

    type DiagnoseStream = EventStream;

    async fn diagnose(
        &self,
        request: Request<pb::DiagnoseRequest>,
    ) -> Result<Response<EventStream>, tonic::Status> {
        let images = request.into_inner().images;
        if images.is_empty() || images.len() > MAX_IMAGES_PER_CALL {
            return Err(tonic::Status::invalid_argument(format!(
                "give 1 to {MAX_IMAGES_PER_CALL} images, not {}",
                images.len()
            )));
        }
        if let Some(long) = images.iter().find(|i| i.len() > MAX_IMAGE_LEN) {
            return Err(tonic::Status::invalid_argument(format!(
                "image reference of {} bytes is longer than {MAX_IMAGE_LEN}",
                long.len()
            )));
        }
        let permit = Arc::clone(&self.diagnoses)
            .try_acquire_owned()
            .map_err(|_| {
                tonic::Status::resource_exhausted(format!(
                    "{MAX_CONCURRENT_DIAGNOSES} diagnoses already running; retry shortly"
                ))
            })?;
        // Bounded by construction: at most MAX_IMAGES_PER_CALL reports and their checks.
        let (events, received) = mpsc::unbounded_channel();
        let scheduler = Arc::clone(&self.scheduler);
        let cancel = self.cancel.clone();
        let work = async move {
            let _permit = permit;
            for image in images {
                let on_check = |endpoint: &Endpoint, check: &CheckResult| {
                    let progress = pb::CheckProgress {
                        image: image.clone(),
                        endpoint: endpoint.url(),
                        role: endpoint.role.as_str().to_string(),
                        check: Some(check.into()),
                    };
                    let _ = events.send(Ok(event(Event::Check(progress))));
                };
                let report = tokio::select! {
                    _ = cancel.cancelled() => break,
                    report = scheduler.diagnose_observed(&image, true, ImageCredentials::default(), &on_check) => report,
                };
                if events
                    .send(Ok(event(Event::Report((&report).into()))))
                    .is_err()
                {
                    break;
                }
            }
        };
        // The response stream drives the work: when the client goes away, the diagnosis stops.
        let work = futures_util::stream::once(work).filter_map(|()| async { None });
        let stream = futures_util::stream::select(UnboundedReceiverStream::new(received), work);
        Ok(Response::new(Box::pin(stream)))
    }
}

fn event(event: Event) -> pb::DiagnoseEvent {
    pb::DiagnoseEvent { event: Some(event) }
}

/// Why `diagnose --agent` got no report.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path}: {}", error_chain(source))]
    Connect {
        path: String,
        source: tonic::transport::Error,
    },
    #[error("the agent refused: {}", .0.message())]
    Rpc(tonic::Status),
    #[error("the agent sent a report this client cannot read: {0}")]
    Schema(String),
    #[error("the agent's stream ended before every report arrived")]
    Incomplete,
}

/// Asks the agent on `socket` to diagnose `images`; `on_check` sees each check as it completes.
/// Returns the reports in the order asked.
pub async fn diagnose_via_agent(
    socket: &Path,
    images: &[String],
    mut on_check: impl FnMut(&pb::CheckProgress),
) -> Result<Vec<Report>, ClientError> {
    let mut client = connect(socket).await?;
    let request = pb::DiagnoseRequest {
        images: images.to_vec(),
    };
    let mut stream = client
        .diagnose(request)
        .await
        .map_err(ClientError::Rpc)?
        .into_inner();
    let mut reports = Vec::with_capacity(images.len());
    while let Some(message) = stream.message().await.map_err(ClientError::Rpc)? {
        match message.event {
            Some(Event::Check(progress)) => on_check(&progress),
            Some(Event::Report(report)) => reports.push(Report::try_from(report)?),
            None => {}
        }
    }
    if reports.len() != images.len() {
        return Err(ClientError::Incomplete);
    }
    Ok(reports)
}

/// A client of the agent serving `socket`.
pub async fn connect(
    socket: &Path,
) -> Result<PullwatchClient<tonic::transport::Channel>, ClientError> {
    let path = socket.to_path_buf();
    let shown = path.display().to_string();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = tonic::transport::Endpoint::from_static("http://pullwatch.agent")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let path: PathBuf = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| ClientError::Connect {
            path: shown,
            source,
        })?;
    Ok(PullwatchClient::new(channel))
}

/// A closed-list value (`check`, `role`, `reason`) from its label string.
fn label<T: DeserializeOwned>(field: &str, value: String) -> Result<T, ClientError> {
    serde_json::from_value(serde_json::Value::String(value.clone()))
        .map_err(|_| ClientError::Schema(format!("{field} {value:?} is not one this client knows")))
}

impl From<&CheckResult> for pb::CheckResult {
    fn from(c: &CheckResult) -> Self {
        pb::CheckResult {
            check: c.check.as_str().to_string(),
            ok: c.ok,
            seconds: c.seconds,
            detail: c.detail.clone(),
            reason: c.reason.map(|r| r.as_str().to_string()),
        }
    }
}

impl TryFrom<pb::CheckResult> for CheckResult {
    type Error = ClientError;
    fn try_from(c: pb::CheckResult) -> Result<Self, ClientError> {
        Ok(CheckResult {
            check: label("check", c.check)?,
            ok: c.ok,
            seconds: c.seconds,
            detail: c.detail,
            reason: c.reason.map(|r| label("reason", r)).transpose()?,
        })
    }
}

impl From<&EndpointReport> for pb::EndpointReport {
    fn from(e: &EndpointReport) -> Self {
        pb::EndpointReport {
            endpoint: e.endpoint.clone(),
            role: e.role.as_str().to_string(),
            source: e.source.clone(),
            rules: e.rules.clone(),
            checks: e.checks.iter().map(Into::into).collect(),
            not_tried: e.not_tried.clone(),
        }
    }
}

impl TryFrom<pb::EndpointReport> for EndpointReport {
    type Error = ClientError;
    fn try_from(e: pb::EndpointReport) -> Result<Self, ClientError> {
        Ok(EndpointReport {
            endpoint: e.endpoint,
            role: label("role", e.role)?,
            source: e.source,
            rules: e.rules,
            not_tried: e.not_tried,
            checks: e
                .checks
                .into_iter()
                .map(CheckResult::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<&Report> for pb::Report {
    fn from(r: &Report) -> Self {
        pb::Report {
            image: r.image.clone(),
            registry: r.registry.clone(),
            pullable: r.pullable,
            reason: r.reason.map(|r| r.as_str().to_string()),
            summary: r.summary.clone(),
            fix: r.fix.clone(),
            endpoints: r.endpoints.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::Report> for Report {
    type Error = ClientError;
    fn try_from(r: pb::Report) -> Result<Self, ClientError> {
        Ok(Report {
            image: r.image,
            registry: r.registry,
            pullable: r.pullable,
            reason: r.reason.map(|v| label("reason", v)).transpose()?,
            summary: r.summary,
            fix: r.fix,
            endpoints: r
                .endpoints
                .into_iter()
                .map(EndpointReport::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<RegistryStatus> for pb::RegistryStatus {
    fn from(s: RegistryStatus) -> Self {
        let report = s.report;
        pb::RegistryStatus {
            endpoints: report.endpoints.iter().map(Into::into).collect(),
            registry: report.registry,
            pullable: report.pullable,
            reason: report.reason.map(|r| r.as_str().to_string()),
            summary: report.summary,
            fix: report.fix,
            checked_at: s.checked_at,
        }
    }
}

impl From<Status> for pb::StatusResponse {
    fn from(s: Status) -> Self {
        pb::StatusResponse {
            node: s.node,
            ready: s.ready,
            registries: s.registries.into_iter().map(Into::into).collect(),
            failures: s.failures.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<PodFailure> for pb::PodFailure {
    fn from(f: PodFailure) -> Self {
        pb::PodFailure {
            diagnosis: f.diagnosis.as_deref().map(Into::into),
            namespace: f.namespace,
            pod: f.pod,
            container: f.container,
            since: humantime::format_rfc3339_seconds(f.failure.since).to_string(),
            image: f.failure.image,
            registry: f.failure.registry,
            waiting_reason: f.failure.waiting_reason,
            message: f.failure.message,
            reason: f.failure.reason.as_str().to_string(),
            attempts: f.failure.attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;
    use crate::check::CheckKind;
    use crate::reason::Reason;
    use crate::route::Role;

    const DESCRIPTORS: &[u8] = tonic::include_file_descriptor_set!("pullwatch_v1_descriptor");

    fn sample() -> Report {
        Report {
            image: "registry.test/app:1".into(),
            registry: "registry.test".into(),
            pullable: false,
            reason: Some(Reason::TlsExpired),
            summary: "s".into(),
            fix: Some("f".into()),
            endpoints: vec![EndpointReport {
                endpoint: "https://registry.test".into(),
                role: Role::Mirror,
                source: "default".into(),
                rules: Some("containerd 1.7.13".into()),
                // Every field set, as the proto has it (a real endpoint has checks or this).
                not_tried: Some("n".into()),
                checks: vec![CheckResult {
                    check: CheckKind::Tls,
                    ok: false,
                    seconds: 0.5,
                    detail: "d".into(),
                    reason: Some(Reason::TlsExpired),
                }],
            }],
        }
    }

    /// The field names of proto message `name`.
    fn proto_fields(name: &str) -> BTreeSet<String> {
        let set = prost_types::FileDescriptorSet::decode(DESCRIPTORS).unwrap();
        let message = set
            .file
            .iter()
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no message {name} in the proto"));
        message.field.iter().map(|f| f.name().to_string()).collect()
    }

    fn json_keys(value: &serde_json::Value) -> BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn the_json_uses_the_proto_field_names() {
        let report = serde_json::to_value(sample()).unwrap();
        assert_eq!(json_keys(&report), proto_fields("Report"));
        assert_eq!(
            json_keys(&report["endpoints"][0]),
            proto_fields("EndpointReport")
        );
        assert_eq!(
            json_keys(&report["endpoints"][0]["checks"][0]),
            proto_fields("CheckResult")
        );

        let board = StatusBoard::new("n");
        board.record(sample(), None, std::time::SystemTime::now());
        board.set_pod_failures(vec![PodFailure {
            namespace: "ns".into(),
            pod: "web".into(),
            container: "app".into(),
            failure: crate::agent::pods::failures::Failure {
                kind: crate::agent::pods::failures::ContainerKind::Container,
                image: "registry.test/app:1".into(),
                registry: "registry.test".into(),
                waiting_reason: "ErrImagePull".into(),
                message: "m".into(),
                reason: Reason::TlsExpired,
                attempts: 1,
                since: humantime::parse_rfc3339("2025-01-01T00:00:00Z").unwrap(),
                reason_since: std::time::SystemTime::UNIX_EPOCH,
            },
            diagnosis: Some(std::sync::Arc::new(sample())),
        }]);
        let status = serde_json::to_value(board.snapshot()).unwrap();
        assert_eq!(json_keys(&status), proto_fields("StatusResponse"));
        assert_eq!(
            json_keys(&status["registries"][0]),
            proto_fields("RegistryStatus")
        );
        assert_eq!(
            json_keys(&status["failures"][0]),
            proto_fields("PodFailure")
        );
        let wire = pb::StatusResponse::from(board.snapshot());
        assert_eq!(wire.failures[0].reason, "tls_expired");
        assert_eq!(
            wire.failures[0]
                .diagnosis
                .as_ref()
                .map(|d| d.image.as_str()),
            Some("registry.test/app:1")
        );
    }

    #[test]
    fn reports_survive_the_wire() {
        let report = sample();
        let wire = pb::Report::from(&report).encode_to_vec();
        let back = Report::try_from(pb::Report::decode(wire.as_slice()).unwrap()).unwrap();
        assert_eq!(back.to_json_line(), report.to_json_line());
        assert_eq!(back.to_text(), report.to_text());

        let mut unknown = pb::Report::from(&report);
        unknown.reason = Some("solar_flare".into());
        let error = Report::try_from(unknown).unwrap_err();
        assert!(error.to_string().contains("solar_flare"), "{error}");
    }

    #[tokio::test]
    async fn status_and_diagnose_over_the_socket_stream_each_check_before_the_report() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            common: crate::config::CommonFlags,
        }
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
        let diagnoser = Flags::try_parse_from(["t", "--resolv-conf", resolv.to_str().unwrap()])
            .unwrap()
            .common
            .diagnoser()
            .unwrap();
        let board = Arc::new(StatusBoard::new("node-7"));
        board.discovered([]);
        let scheduler = Arc::new(Scheduler::new(
            Arc::new(diagnoser),
            Arc::new(crate::agent::metrics::Metrics::new("node-7", "v", "r", 10).unwrap()),
            Arc::clone(&board),
            Arc::new(crate::agent::health::Liveness::default()),
            crate::agent::scheduler::Settings {
                interval: Duration::from_secs(30),
                manifest_interval: Duration::from_secs(300),
                runtime_check_interval: None,
                max_quiet: Duration::from_secs(60),
                max_in_flight: 2,
                first_round_spread: Duration::ZERO,
                debounce: Duration::from_secs(1),
            },
            None,
        ));
        let socket = dir.path().join("api.sock");
        let cancel = CancellationToken::new();
        let api = Api::new(scheduler, Arc::clone(&board), cancel.clone());
        let server = tokio::spawn(serve(bind(&socket).unwrap(), api, cancel.clone()));

        let mut client = connect(&socket).await.unwrap();
        let status = client
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.node, "node-7");
        assert!(status.ready);

        // Nothing listens on port 1: dns (an IP, no lookup), then tcp refused, then the report.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let image = format!("127.0.0.1:{}/app:1", closed.port());
        let mut stream = client
            .diagnose(pb::DiagnoseRequest {
                images: vec![image.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        let mut events = vec![];
        while let Some(message) = stream.message().await.unwrap() {
            events.push(message.event.unwrap());
        }
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Check(c) => c.check.as_ref().unwrap().check.clone(),
                Event::Report(r) => format!("report {}", r.reason.as_deref().unwrap_or("")),
            })
            .collect();
        assert_eq!(kinds, ["dns", "tcp", "report tcp_refused"]);
        let Event::Check(progress) = &events[1] else {
            unreachable!()
        };
        assert_eq!(progress.image, image);
        assert_eq!(progress.role, "upstream");

        let too_many = pb::DiagnoseRequest {
            images: vec!["nginx".into(); MAX_IMAGES_PER_CALL + 1],
        };
        let refused = client.diagnose(too_many).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
