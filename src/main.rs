//! The `pullwatch` command line: parse flags, build the engine, run the command, map to exit codes.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use pullwatch::agent::Agent;
use pullwatch::agent::config::{AgentFlags, system_hostname};
use pullwatch::config::{CommonFlags, LogFormat};
use pullwatch::report::Report;
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
    let (name, default_level) = match cli.command {
        Command::Agent(_) => ("agent", "info"),
        Command::Diagnose { .. } => ("diagnose", "warn"),
        Command::Targets { .. } => ("targets", "warn"),
        Command::Version => ("version", "warn"),
    };
    init_logging(cli.common.log_format, default_level);
    let result = match cli.command {
        Command::Agent(ref flags) => agent(&cli.common, flags),
        Command::Version => {
            println!(
                "pullwatch {} (revision {}, CRI API {})",
                env!("CARGO_PKG_VERSION"),
                pullwatch::REVISION,
                pullwatch::CRI_API_VERSION
            );
            Ok(ExitCode::SUCCESS)
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
    };
    result.unwrap_or_else(|fail| {
        eprintln!("pullwatch {name}: {}", fail.message);
        ExitCode::from(fail.code)
    })
}

/// Why a command stopped before it could report: its exit code and the one line to print.
struct Fail {
    code: u8,
    message: String,
}

impl Fail {
    /// Bad input to a one-shot command: exit 2.
    fn usage(message: impl std::fmt::Display) -> Self {
        Fail {
            code: EXIT_USAGE,
            message: message.to_string(),
        }
    }

    /// Bad configuration of the agent: exit 64.
    fn config(message: impl std::fmt::Display) -> Self {
        Fail {
            code: EXIT_CONFIG,
            message: message.to_string(),
        }
    }

    /// Not the input's fault (the process could not set itself up): exit 1.
    fn internal(message: impl std::fmt::Display) -> Self {
        Fail {
            code: 1,
            message: message.to_string(),
        }
    }
}

/// Prints reports as they come and remembers whether all were pullable (exit 0) or not (exit 1).
struct Reports {
    output: Output,
    all_pullable: bool,
}

impl Reports {
    fn new(output: Output) -> Self {
        Reports {
            output,
            all_pullable: true,
        }
    }

    fn print(&mut self, report: &Report) {
        self.all_pullable &= report.pullable;
        match self.output {
            Output::Json => println!("{}", report.to_json_line()),
            Output::Text => print!("{}", report.to_text()),
        }
    }

    fn exit_code(&self) -> ExitCode {
        if self.all_pullable {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// An empty IMAGE is a usage error, not a diagnosis.
fn reject_empty(images: &[String]) -> Result<(), Fail> {
    match images.iter().position(|i| i.trim().is_empty()) {
        Some(position) => Err(Fail::usage(format!("IMAGE #{} is empty", position + 1))),
        None => Ok(()),
    }
}

fn diagnose(
    common: &CommonFlags,
    output: Output,
    images: &[String],
    via_runtime: bool,
) -> Result<ExitCode, Fail> {
    reject_empty(images)?;
    let mut diagnoser = common.diagnoser().map_err(Fail::usage)?;
    let located = common.runtime_socket().map_err(Fail::usage)?;
    if via_runtime && located.is_none() {
        return Err(Fail::usage(format!(
            "--via-runtime: no container runtime socket found at {}; name it with --runtime-endpoint",
            pullwatch::config::RUNTIME_SOCKETS.join(", ")
        )));
    }
    let runtime = async_runtime()?;
    let mut reports = Reports::new(output);
    runtime.block_on(async {
        let cri = identify_runtime(located, common.timeout).await;
        if let Some(version) = cri.as_ref().and_then(|(_, v)| v.as_ref()) {
            diagnoser.routes = diagnoser
                .routes
                .clone()
                .with_reported_runtime(version.kind(), &version.runtime_version);
        }
        // As long as the kubelet's --runtime-request-timeout default, or the check timeout.
        let pull_timeout = common.timeout.max(Duration::from_secs(120));
        for image in images {
            let report = match (&cri, via_runtime) {
                (Some((client, _)), true) => {
                    diagnoser
                        .diagnose_via_runtime(image, client, pull_timeout)
                        .await
                }
                _ => diagnoser.diagnose(image).await,
            };
            reports.print(&report);
        }
    });
    Ok(reports.exit_code())
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
fn targets(common: &CommonFlags, output: Output, registries: &[String]) -> Result<ExitCode, Fail> {
    for registry in registries {
        pullwatch::route::check_registry_flag(registry)
            .map_err(|problem| Fail::usage(format!("--registry {registry:?}: {problem}")))?;
    }
    common.check_insecure_registries().map_err(Fail::usage)?;
    let located = common.runtime_socket().map_err(Fail::usage)?;
    let runtime = async_runtime()?;
    let found = runtime.block_on(async {
        let mut routes = common.route_config();
        let mut images = Vec::new();
        let mut name = None;
        if let Some((client, Some(version))) = identify_runtime(located, common.timeout).await {
            routes = routes.with_reported_runtime(version.kind(), &version.runtime_version);
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
    Ok(ExitCode::SUCCESS)
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

fn agent(common: &CommonFlags, flags: &AgentFlags) -> Result<ExitCode, Fail> {
    let config = flags
        .validate(|name| std::env::var(name).ok(), system_hostname)
        .map_err(Fail::config)?;
    let diagnoser = common.diagnoser().map_err(Fail::config)?;
    let runtime_socket = common
        .runtime_socket()
        .map_err(Fail::config)?
        .map(|located| located.socket);
    let runtime = async_runtime()?;
    let result = runtime.block_on(async {
        let shutdown = pullwatch::agent::shutdown_signal()
            .map_err(|error| Fail::internal(format!("cannot handle signals: {error}")))?;
        let agent = Agent::start(config, diagnoser, runtime_socket)
            .await
            .map_err(|error| match error.is_config() {
                true => Fail::config(&error),
                false => Fail::internal(&error),
            })?;
        agent.run(shutdown).await.map_err(Fail::internal)?;
        Ok(ExitCode::SUCCESS)
    });
    // Tasks are drained; whatever a library left running gets a moment, not forever.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
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
) -> Result<ExitCode, Fail> {
    reject_empty(images)?;
    if images.len() > pullwatch::agent::api::MAX_IMAGES_PER_CALL {
        return Err(Fail::usage(format!(
            "--agent: at most {} images at once",
            pullwatch::agent::api::MAX_IMAGES_PER_CALL
        )));
    }
    let runtime = async_runtime()?;
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
    let answer = runtime.block_on(async { tokio::time::timeout(deadline, call).await });
    let reports = match answer {
        Ok(Ok(reports)) => reports,
        Ok(Err(error)) => return Err(agent_failure(&error)),
        Err(_) => {
            return Err(Fail::internal(format!(
                "--agent: no complete answer within {}",
                humantime::format_duration(deadline)
            )));
        }
    };
    let mut printed = Reports::new(output);
    for report in &reports {
        printed.print(report);
    }
    Ok(printed.exit_code())
}

/// An agent that cannot be reached, fails or answers badly is no usage error (exit 1, as for an
/// image not pullable: no verdict here); only a request the agent refuses as invalid is (exit 2).
fn agent_failure(error: &pullwatch::agent::api::ClientError) -> Fail {
    use pullwatch::agent::api::ClientError;
    let message = format!("--agent: {error}");
    match error {
        ClientError::Rpc(status) if status.code() == tonic::Code::InvalidArgument => {
            Fail::usage(message)
        }
        _ => Fail::internal(message),
    }
}

/// One worker thread: the agent waits on the network far more than it computes, and a second
/// worker cost more in waking and parking (futex, epoll) than it gave. Blocking work (reading
/// and routing the config files) goes to tokio's blocking pool, never to the worker.
fn async_runtime() -> Result<tokio::runtime::Runtime, Fail> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|error| Fail::internal(format!("cannot start the async runtime: {error}")))
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = log_filter(
        std::env::var("PULLWATCH_LOG").ok().as_deref(),
        default_level,
    );
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter.targets);
    match format {
        // Colours only for a person at a terminal: a log file or collector gets plain text.
        LogFormat::Text => registry
            .with(stderr.with_ansi(std::io::stderr().is_terminal()))
            .init(),
        LogFormat::Json => registry.with(stderr.json()).init(),
    }
    if let Some(problem) = filter.problem {
        tracing::warn!("{problem}");
    }
}

/// The log filter: `PULLWATCH_LOG` when set and valid, else `default_level`, and what was wrong
/// with it to say once logging is up. `target=level` directives, as `RUST_LOG` has them; span and
/// field filters are not supported (they would bring a regex engine for a debugging aid).
struct LogFilter {
    targets: tracing_subscriber::filter::Targets,
    problem: Option<String>,
}

fn log_filter(env: Option<&str>, default_level: &str) -> LogFilter {
    let default = || default_level.parse().unwrap_or_default();
    match env.filter(|v| !v.trim().is_empty()) {
        None => LogFilter {
            targets: default(),
            problem: None,
        },
        Some(value) => match value.parse() {
            Ok(targets) => LogFilter {
                targets,
                problem: None,
            },
            Err(error) => LogFilter {
                targets: default(),
                problem: Some(format!(
                    "PULLWATCH_LOG={:?} ignored ({error}); logging at {default_level:?}",
                    pullwatch::text::clip(value, 200)
                )),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn the_log_filter_takes_pullwatch_log_or_says_why_not() {
        use tracing::Level;
        type Case = (
            Option<&'static str>,
            &'static str,
            Option<Level>,
            Option<Level>,
            bool,
        );
        let cases: [Case; 5] = [
            // (PULLWATCH_LOG, default, level for pullwatch, level for h2, a problem said)
            (None, "info", Some(Level::INFO), Some(Level::INFO), false),
            (
                Some("  "),
                "warn",
                Some(Level::WARN),
                Some(Level::WARN),
                false,
            ),
            (
                Some("pullwatch=debug,warn"),
                "info",
                Some(Level::DEBUG),
                Some(Level::WARN),
                false,
            ),
            (
                Some("pullwatch=trace,h2=off"),
                "info",
                Some(Level::TRACE),
                None,
                false,
            ),
            (
                Some("pullwatch=loud"),
                "info",
                Some(Level::INFO),
                Some(Level::INFO),
                true,
            ),
        ];
        for (env, default, ours, h2, problem) in cases {
            let filter = log_filter(env, default);
            // The most verbose level a target logs at, if any.
            let at = |target: &str| {
                [
                    Level::TRACE,
                    Level::DEBUG,
                    Level::INFO,
                    Level::WARN,
                    Level::ERROR,
                ]
                .into_iter()
                .find(|level| filter.targets.would_enable(target, level))
            };
            assert_eq!(at("pullwatch::agent"), ours, "{env:?}");
            assert_eq!(at("h2::proto"), h2, "{env:?}");
            assert_eq!(
                filter.problem.is_some(),
                problem,
                "{env:?}: {:?}",
                filter.problem
            );
        }
        let said = log_filter(Some("pullwatch=loud"), "info").problem.unwrap();
        assert!(
            said.starts_with("PULLWATCH_LOG=\"pullwatch=loud\" ignored ("),
            "{said}"
        );
    }

    #[test]
    fn an_unreachable_or_failing_agent_is_not_a_usage_error() {
        use pullwatch::agent::api::ClientError;
        let unreachable = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(pullwatch::agent::api::connect(Path::new(
                "/nonexistent/pullwatch.sock",
            )))
            .expect_err("nothing listens there");
        assert!(matches!(unreachable, ClientError::Connect { .. }));
        let cases = [
            (unreachable, 1),
            (ClientError::Rpc(tonic::Status::unavailable("gone")), 1),
            (
                ClientError::Rpc(tonic::Status::resource_exhausted("busy")),
                1,
            ),
            (ClientError::Incomplete, 1),
            (ClientError::Schema("reason x".into()), 1),
            (
                ClientError::Rpc(tonic::Status::invalid_argument("33 images")),
                2,
            ),
        ];
        for (error, code) in cases {
            let fail = agent_failure(&error);
            assert_eq!(fail.code, code, "{error}");
            assert!(fail.message.starts_with("--agent: "), "{}", fail.message);
        }
    }

    /// docs/flags.md against the command line, both ways: every long flag of every command (the
    /// global ones under "Global flags") has a row with its `PULLWATCH_*` variable and default, and
    /// every row is a flag.
    #[test]
    fn flags_md_documents_every_flag_with_its_env_var_and_default() {
        let mut documented: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut section = "";
        for line in include_str!("../docs/flags.md").lines() {
            if let Some(heading) = line.strip_prefix("## ") {
                section = heading;
            }
            let cells: Vec<String> = line
                .replace("\\|", "\u{0}")
                .split('|')
                .map(|c| c.trim().replace('\u{0}', "|"))
                .collect();
            let Some(flag) = cells.get(1).and_then(|c| c.strip_prefix("`--")) else {
                continue;
            };
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let key = (section.to_string(), name.clone());
            assert!(documented.insert(key, cells).is_none(), "--{name} twice");
        }
        let cli = Cli::command();
        let commands = std::iter::once(("Global flags", &cli))
            .chain(cli.get_subcommands().map(|c| (c.get_name(), c)));
        let mut flags = BTreeSet::new();
        for (section, command) in commands {
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                let key = (section.to_string(), long.to_string());
                let Some(cells) = documented.get(&key) else {
                    panic!("--{long} ({section}) is not in docs/flags.md");
                };
                let env = format!("PULLWATCH_{}", long.to_uppercase().replace('-', "_"));
                assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env.as_str()));
                assert_eq!(cells[2], format!("`{env}`"), "--{long}: its variable");
                // The platform's default is the build machine's: the row says so in words.
                for default in arg
                    .get_default_values()
                    .iter()
                    .filter(|_| long != "platform")
                {
                    let default = format!("`{}`", default.to_string_lossy());
                    assert!(cells[3].contains(&default), "--{long}: default {default}");
                }
                flags.insert(key);
            }
        }
        let extra: Vec<_> = documented.keys().filter(|k| !flags.contains(*k)).collect();
        assert!(
            extra.is_empty(),
            "in docs/flags.md but not flags: {extra:?}"
        );
    }
}
