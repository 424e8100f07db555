//! `pullwatch agent`, the long-running DaemonSet process. Wiring only: bind, discover, start every
//! task in one JoinSet under one cancellation token, and drain within a grace period on SIGTERM/SIGINT.

pub mod api;
mod api_socket;
pub mod config;
pub mod config_watch;
pub mod discovery;
mod exposition;
pub mod health;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod scheduler;
pub mod status;
mod tasks;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::config::AgentConfig;
use self::discovery::Discovery;
use self::health::Liveness;
use self::metrics::Metrics;
use self::node::NodeWatch;
use self::pods::{KubeError, Mode as KubernetesMode, PodWatch};
use self::scheduler::Scheduler;
use self::scheduler::WatchedRegistry;
use self::status::StatusBoard;
use self::tasks::{Outcome, Tasks};
use crate::diagnose::Diagnoser;
use crate::runtime::RuntimeClient;

/// How long the tasks get to finish after SIGTERM/SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Endpoint probes in flight at once, over all registries.
const MAX_IN_FLIGHT: usize = 8;
/// The first round is spread over at most this: a rollout's first rounds reach the registries spread
/// out, and a new pod's first results come soon (readiness does not wait for them).
const FIRST_ROUND_SPREAD: Duration = Duration::from_secs(10);
/// On-demand rounds of one registry start at most this often.
const DEBOUNCE: Duration = Duration::from_secs(10);
/// Check timeouts one registry round may use, for the liveness budget: the credential providers'
/// lookup (4); dns, tcp, tls, http; the token server's dns, tcp, tls; auth and the manifest's HEAD
/// and what follows it for each credential tried (4 × 4); the runtime check (4 + its lookup, 4).
const TIMEOUTS_PER_ROUND: u32 = 40;

/// The agent could not start; every variant names the flag to fix (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--listen {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] api::SocketError),
    #[error("cannot set up the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Kubernetes(#[from] KubeError),
}

impl StartError {
    /// Whether a flag is to blame (exit 64) rather than the program (exit 1).
    pub fn is_config(&self) -> bool {
        !matches!(self, StartError::Metrics(_))
    }
}

/// The agent stopped other than cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the {0} task stopped unexpectedly")]
    TaskEnded(&'static str),
    #[error("tasks still running after the {}s grace period", SHUTDOWN_GRACE.as_secs())]
    Grace,
}

/// A started agent: listeners bound, first discovery done, nothing running yet.
pub struct Agent {
    config: AgentConfig,
    listener: TcpListener,
    socket: tokio::net::UnixListener,
    diagnoser: Arc<Diagnoser>,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    liveness: Arc<Liveness>,
    node: NodeWatch,
    runtime_up: bool,
    targets: watch::Receiver<Vec<WatchedRegistry>>,
    /// The API server, when the pods of this node are watched.
    kubernetes: Option<pods::api::ApiClient>,
    /// Where the node watch publishes the routes it discovers.
    discovered: watch::Sender<Vec<WatchedRegistry>>,
}

impl Agent {
    /// Binds `--listen` and `--api-socket`, builds the metrics, looks at the runtime on
    /// `runtime_socket` (none: a warning) and runs the first discovery.
    pub async fn start(
        config: AgentConfig,
        mut diagnoser: Diagnoser,
        runtime_socket: Option<PathBuf>,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::with_detail(
            &config.node_name,
            env!("CARGO_PKG_VERSION"),
            crate::REVISION,
            config.max_failing_series,
            config.metrics_detail,
        )?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let status = Arc::new(StatusBoard::new(config.node_name.clone()));
        let liveness = Arc::new(Liveness::default());
        if runtime_socket.is_none() {
            warn!("no container runtime socket found (--runtime-endpoint): runtime_up is 0");
        }
        let mut node = NodeWatch {
            runtime: runtime_socket
                .map(|socket| Arc::new(RuntimeClient::new(socket, diagnoser.timeout))),
            routes: diagnoser.routes.clone(),
            discovery: Discovery::new(config.max_registries),
            static_registries: config.registries.clone(),
            metrics: Arc::clone(&metrics),
            liveness: Arc::clone(&liveness),
            interval: config.interval,
            max_quiet: max_quiet(&config, diagnoser.timeout),
            held: None,
            routed: None,
        };
        let first = node.refresh().await;
        if let (Some(client), Some(error)) = (&node.runtime, &first.error) {
            warn!(runtime = client.endpoint(), %error, "container runtime not answering fully");
        }
        if let Some(version) = &first.facts.version {
            // Whose registry config applies is the runtime's: routes follow it from now on.
            node.routes = node
                .routes
                .clone()
                .with_reported_runtime(version.kind(), &version.runtime_version);
            diagnoser.routes = node.routes.clone();
        }
        let found = node.first_apply(&first).await.unwrap_or_default();
        status.discovered(found.iter().map(|t| t.route.registry.as_str()));
        info!(
            registries = found.len(),
            runtime_up = first.up,
            "discovery done"
        );
        let (discovered, targets) = watch::channel(found);
        let kubernetes = match config.kubernetes {
            KubernetesMode::Off => None,
            mode => match pods::connect() {
                Ok(client) => Some(client),
                Err(error) if mode == KubernetesMode::On => return Err(error.into()),
                Err(error) => {
                    warn!(%error, "in a cluster but without API credentials: not watching pods");
                    None
                }
            },
        };
        // Last: a start that fails before this leaves no socket file behind.
        let socket = api::bind(&config.api_socket)?;
        Ok(Agent {
            config,
            listener,
            socket,
            diagnoser: Arc::new(diagnoser),
            metrics,
            status,
            liveness,
            node,
            runtime_up: first.up,
            targets,
            kubernetes,
            discovered,
        })
    }

    /// Runs every task until `shutdown` resolves (or one fails), then drains them within
    /// [`SHUTDOWN_GRACE`] and removes the API socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let Agent {
            config,
            listener,
            socket,
            diagnoser,
            metrics,
            status,
            liveness,
            node,
            runtime_up,
            targets,
            kubernetes,
            discovered,
        } = self;
        let cancel = CancellationToken::new();
        let settings = scheduler::Settings {
            interval: config.interval,
            manifest_interval: config.manifest_interval,
            runtime_check_interval: config.runtime_check_interval,
            max_quiet: max_quiet(&config, diagnoser.timeout),
            max_in_flight: MAX_IN_FLIGHT,
            first_round_spread: FIRST_ROUND_SPREAD,
            debounce: DEBOUNCE,
        };
        let scheduler = Arc::new(Scheduler::new(
            Arc::clone(&diagnoser),
            Arc::clone(&metrics),
            Arc::clone(&status),
            Arc::clone(&liveness),
            settings,
            node.runtime.clone(),
        ));
        let pod_watch = kubernetes.map(|client| PodWatch {
            client,
            node: config.node_name.clone(),
            post_events: config.post_events,
            pull_secrets: config.pull_secrets,
            metrics: Arc::clone(&metrics),
            status: Arc::clone(&status),
            scheduler: Arc::clone(&scheduler),
            liveness: Arc::clone(&liveness),
        });
        let endpoints = http::Endpoints {
            metrics,
            status: Arc::clone(&status),
            liveness,
        };
        let api = api::Api::new(Arc::clone(&scheduler), Arc::clone(&status), cancel.clone());

        let mut tasks = Tasks::default();
        let token = cancel.clone();
        tasks.spawn("http", async move {
            http::serve(listener, endpoints, token).await;
            Ok(())
        });
        let token = cancel.clone();
        tasks.spawn("api", async move {
            api::serve(socket, api, token).await;
            Ok(())
        });
        let token = cancel.clone();
        tasks.spawn("scheduler", async move {
            scheduler.run(targets, token).await;
            Ok(())
        });
        let token = cancel.clone();
        tasks.spawn("node watch", async move {
            node.run(runtime_up, discovered, token).await;
            Ok(())
        });
        if let Some(pod_watch) = pod_watch {
            let token = cancel.clone();
            tasks.spawn("pod watch", async move { pod_watch.run(token).await });
        }
        info!(
            node = config.node_name,
            listen = %config.listen,
            api_socket = %config.api_socket.display(),
            interval = %humantime::format_duration(config.interval),
            "agent started"
        );

        let mut failed = None;
        tokio::select! {
            () = shutdown => info!("shutting down"),
            Some((name, outcome)) = tasks.join_next() => {
                report(name, outcome);
                failed = Some(name);
            }
        }
        cancel.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some((name, outcome)) = tasks.join_next().await {
                report(name, outcome);
            }
        })
        .await;
        remove_socket(&config.api_socket);
        if drained.is_err() {
            tasks.abort_all();
            return Err(RunError::Grace);
        }
        match failed {
            Some(name) => Err(RunError::TaskEnded(name)),
            None => {
                info!("stopped cleanly");
                Ok(())
            }
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM"),
            _ = interrupt.recv() => info!("SIGINT"),
        }
    })
}

/// The longest a loop may stay quiet: a jittered interval, then a round whose probes may each use
/// every check's timeout and may queue behind the other registries' probes for the in-flight cap.
fn max_quiet(config: &AgentConfig, timeout: Duration) -> Duration {
    let queue = config.max_registries.div_ceil(MAX_IN_FLIGHT) as u32;
    config.interval * 2 + timeout * TIMEOUTS_PER_ROUND * queue.max(1) + Duration::from_secs(30)
}

/// Logs how a task ended.
fn report(name: &'static str, outcome: Outcome) {
    if let Err(error) = outcome {
        error!(task = name, %error, "task failed");
    }
}

fn remove_socket(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), %error, "cannot remove the API socket");
    }
}
