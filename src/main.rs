//! The `pullwatch` command line: parse flags, build the engine, run the command, map to exit codes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use pullwatch::agent::Agent;
use pullwatch::agent::config::{AgentFlags, system_hostname};
use pullwatch::config::{CommonFlags, LogFormat};
use pullwatch::runtime::{RuntimeClient, RuntimeVersion};

/// Exit code for a usage error (clap's too): bad flag value, empty image name.
const EXIT_USAGE: u8 = 2;
/// Exit code of `agent` for bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "pullwatch",
    version,
    about = "Can this node pull its images right now, and if not, why?"
)]
struct Cli {
    #[command(flatten)]
    common: CommonFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run as the node agent: continuous checks, Prometheus metrics, health endpoints, own API.
    Agent(AgentFlags),
    /// Run the whole chain for each image from here and print a report (exit 0 all pullable, 1 some not).
    Diagnose {
        /// Report format: text for people, json for one object per image per line.
        #[arg(long, env = "PULLWATCH_OUTPUT", value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Ask the agent serving this socket to run the checks instead of running them here.
        #[arg(long, env = "PULLWATCH_AGENT", value_name = "unix:///PATH", value_parser = parse_agent_socket)]
        agent: Option<PathBuf>,
        /// Finish with a real CRI PullImage by the node's runtime; its verdict decides.
        #[arg(long, env = "PULLWATCH_VIA_RUNTIME", conflicts_with = "agent")]
        via_runtime: bool,
        /// Image references as a pod spec writes them (nginx, ghcr.io/org/app:1.2, repo@sha256:…).
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Print the registries this node pulls from, their routes, and where each piece came from.
    Targets {
        /// Text for people, or json: one object per registry per line.
        #[arg(long, env = "PULLWATCH_OUTPUT", value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Also list this registry (host or host:port); repeatable.
        #[arg(
            long = "registry",
            env = "PULLWATCH_REGISTRY",
            value_delimiter = ',',
            value_name = "HOST"
        )]
        registries: Vec<String>,
    },
    /// Print version, git revision and CRI API version.
    Version,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            let _ = error.print();
            // The agent's contract: bad configuration exits 64, whatever clap would say.
            return match subcommand_name(&args).as_deref() {
                Some("agent") => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    let default_level = match cli.command {
        Command::Agent(_) => "info",
        _ => "warn",
    };
    init_logging(cli.common.log_format, default_level);
    match cli.command {
        Command::Agent(ref flags) => agent(&cli.common, flags),
        Command::Version => {
            println!(
                "pullwatch {} (revision {}, CRI API {})",
                env!("CARGO_PKG_VERSION"),
                pullwatch::REVISION,
                pullwatch::CRI_API_VERSION
            );
            ExitCode::SUCCESS
        }
        Command::Diagnose {
            output,
            agent: Some(ref socket),
            ref images,
            ..
        } => diagnose_via_agent(&cli.common, output, socket, images),
        Command::Diagnose {
            output,
            agent: None,
            via_runtime,
            ref images,
        } => diagnose(&cli.common, output, images, via_runtime),
        Command::Targets {
            output,
            ref registries,
        } => targets(&cli.common, output, registries),
    }
}

fn diagnose(
    common: &CommonFlags,
    output: Output,
    images: &[String],
    via_runtime: bool,
) -> ExitCode {
    if let Some(position) = images.iter().position(|i| i.trim().is_empty()) {
        eprintln!("pullwatch diagnose: IMAGE #{} is empty", position + 1);
        return ExitCode::from(EXIT_USAGE);
    }
    let mut diagnoser = match common.diagnoser() {
        Ok(diagnoser) => diagnoser,
        Err(error) => {
            eprintln!("pullwatch diagnose: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let located = match common.runtime_socket() {
        Ok(located) => located,
        Err(error) => {
            eprintln!("pullwatch diagnose: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if via_runtime && located.is_none() {
        eprintln!(
            "pullwatch diagnose --via-runtime: no container runtime socket found at {}; name it with --runtime-endpoint",
            pullwatch::config::RUNTIME_SOCKETS.join(", ")
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pullwatch diagnose: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let all_pullable = runtime.block_on(async {
        let cri = identify_runtime(located, common.timeout).await;
        if let Some(version) = cri.as_ref().and_then(|(_, v)| v.as_ref()) {
            diagnoser.routes = diagnoser
                .routes
                .clone()
                .with_runtime(version.kind(), &version.runtime_version);
        }
        // As long as the kubelet's --runtime-request-timeout default, or the check timeout.
        let pull_timeout = common.timeout.max(Duration::from_secs(120));
        let mut all_pullable = true;
        for image in images {
            let report = match (&cri, via_runtime) {
                (Some((client, _)), true) => {
                    diagnoser
                        .diagnose_via_runtime(image, client, pull_timeout)
                        .await
                }
                _ => diagnoser.diagnose(image).await,
            };
            all_pullable &= report.pullable;
            match output {
                Output::Json => println!("{}", report.to_json_line()),
                Output::Text => print!("{}", report.to_text()),
            }
        }
        all_pullable
    });
    if all_pullable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A client for the runtime's socket and its `Version`, which says whose registry config applies.
/// No socket, or no answer, is a warning: routes then come from the config files alone.
async fn identify_runtime(
    located: Option<pullwatch::runtime::Located>,
    timeout: Duration,
) -> Option<(RuntimeClient, Option<RuntimeVersion>)> {
    let Some(located) = located else {
        tracing::warn!(
            "no container runtime socket found at {}: routes come from the config files alone",
            pullwatch::config::RUNTIME_SOCKETS.join(", ")
        );
        return None;
    };
    let client = RuntimeClient::new(located.socket, timeout);
    match client.version().await {
        Ok(version) => Some((client, Some(version))),
        Err(error) => {
            tracing::warn!(%error, "the container runtime does not answer: routes come from the config files alone");
            Some((client, None))
        }
    }
}

/// `targets`: the registries of the runtime's images, of its config files and of `--registry`.
fn targets(common: &CommonFlags, output: Output, registries: &[String]) -> ExitCode {
    for registry in registries {
        if let Err(error) = pullwatch::route::split_host_port(registry) {
            eprintln!("pullwatch targets: --registry: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let located = match common.runtime_socket() {
        Ok(located) => located,
        Err(error) => {
            eprintln!("pullwatch targets: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pullwatch targets: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let found = runtime.block_on(async {
        let mut routes = common.route_config();
        let mut images = Vec::new();
        let mut name = None;
        if let Some((client, Some(version))) = identify_runtime(located, common.timeout).await {
            routes = routes.with_runtime(version.kind(), &version.runtime_version);
            name = Some(format!(
                "{} {}",
                version.runtime_name, version.runtime_version
            ));
            match client.list_images().await {
                Ok(list) => images = list,
                Err(error) => tracing::warn!(%error, "cannot list the runtime's images"),
            }
        }
        pullwatch::targets::collect(&routes, &images, registries, name.as_deref())
    });
    for problem in &found.problems {
        tracing::warn!(%problem, "runtime registry config");
    }
    match output {
        Output::Json => print!("{}", found.to_json_lines()),
        Output::Text => print!("{}", found.to_text()),
    }
    ExitCode::SUCCESS
}

/// The subcommand on the command line: the first word that is neither a flag nor a flag's value.
fn subcommand_name(args: &[OsString]) -> Option<String> {
    let cli = Cli::command();
    let takes_value = |long: &str| {
        cli.get_arguments()
            .any(|a| a.get_long() == Some(long) && a.get_action().takes_values())
    };
    let mut words = args.iter().skip(1).map(|w| w.to_string_lossy());
    while let Some(word) = words.next() {
        match word.strip_prefix("--") {
            Some(long) if !long.contains('=') && takes_value(long) => {
                words.next();
            }
            Some(_) => {}
            None if word.starts_with('-') => {}
            None => return Some(word.into_owned()),
        }
    }
    None
}

fn agent(common: &CommonFlags, flags: &AgentFlags) -> ExitCode {
    let config = match flags.validate(|name| std::env::var(name).ok(), system_hostname) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("pullwatch agent: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let diagnoser = match common.diagnoser() {
        Ok(diagnoser) => diagnoser,
        Err(error) => {
            eprintln!("pullwatch agent: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime_socket = match common.runtime_socket() {
        Ok(located) => located.map(|l| l.socket),
        Err(error) => {
            eprintln!("pullwatch agent: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pullwatch agent: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let shutdown = match pullwatch::agent::shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(error) => {
                eprintln!("pullwatch agent: cannot handle signals: {error}");
                return ExitCode::FAILURE;
            }
        };
        let agent = match Agent::start(config, diagnoser, runtime_socket).await {
            Ok(agent) => agent,
            Err(error) => {
                eprintln!("pullwatch agent: {error}");
                return if error.is_config() {
                    ExitCode::from(EXIT_CONFIG)
                } else {
                    ExitCode::FAILURE
                };
            }
        };
        match agent.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("pullwatch agent: {error}");
                ExitCode::FAILURE
            }
        }
    });
    // Tasks are drained; whatever a library left running gets a moment, not forever.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// `unix:///run/pullwatch/pullwatch.sock` → the socket path.
fn parse_agent_socket(value: &str) -> Result<PathBuf, String> {
    match value.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => Err("expected unix:///absolute/path/to/pullwatch.sock".into()),
    }
}

/// `diagnose --agent`: the same report, with the checks run by the agent.
fn diagnose_via_agent(
    common: &CommonFlags,
    output: Output,
    socket: &Path,
    images: &[String],
) -> ExitCode {
    if let Some(position) = images.iter().position(|i| i.trim().is_empty()) {
        eprintln!("pullwatch diagnose: IMAGE #{} is empty", position + 1);
        return ExitCode::from(EXIT_USAGE);
    }
    if images.len() > pullwatch::agent::api::MAX_IMAGES_PER_CALL {
        eprintln!(
            "pullwatch diagnose --agent: at most {} images at once",
            pullwatch::agent::api::MAX_IMAGES_PER_CALL
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pullwatch diagnose: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Generous: every check of every endpoint of every image may use its whole timeout.
    let deadline = common.timeout * 16 * images.len() as u32 + Duration::from_secs(30);
    let call = pullwatch::agent::api::diagnose_via_agent(socket, images, |progress| {
        tracing::debug!(
            image = progress.image,
            endpoint = progress.endpoint,
            check = progress.check.as_ref().map(|c| c.check.as_str()),
            ok = progress.check.as_ref().map(|c| c.ok),
            "check done"
        );
    });
    let reports = match runtime.block_on(async { tokio::time::timeout(deadline, call).await }) {
        Ok(Ok(reports)) => reports,
        Ok(Err(error)) => {
            eprintln!("pullwatch diagnose --agent: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(_) => {
            eprintln!(
                "pullwatch diagnose --agent: no complete answer within {}",
                humantime::format_duration(deadline)
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut all_pullable = true;
    for report in &reports {
        all_pullable &= report.pullable;
        match output {
            Output::Json => println!("{}", report.to_json_line()),
            Output::Text => print!("{}", report.to_text()),
        }
    }
    if all_pullable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn async_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PULLWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
