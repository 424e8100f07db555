//! The `pullwatch` command line: parse flags, build the engine, run the command, map to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use pullwatch::config::{CommonFlags, LogFormat};

/// Exit code for a usage error (clap's too): bad flag value, empty image name.
const EXIT_USAGE: u8 = 2;

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
    /// Run the whole chain for each image from here and print a report (exit 0 all pullable, 1 some not).
    Diagnose {
        /// Report format: text for people, json for one object per image per line.
        #[arg(long, env = "PULLWATCH_OUTPUT", value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Image references as a pod spec writes them (nginx, ghcr.io/org/app:1.2, repo@sha256:…).
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
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
    let cli = Cli::parse();
    init_logging(cli.common.log_format);
    match cli.command {
        Command::Version => {
            println!(
                "pullwatch {} (revision {}, CRI API {})",
                env!("CARGO_PKG_VERSION"),
                pullwatch::REVISION,
                pullwatch::CRI_API_VERSION
            );
            ExitCode::SUCCESS
        }
        Command::Diagnose { output, images } => diagnose(&cli.common, output, &images),
    }
}

fn diagnose(common: &CommonFlags, output: Output, images: &[String]) -> ExitCode {
    if let Some(position) = images.iter().position(|i| i.trim().is_empty()) {
        eprintln!("pullwatch diagnose: IMAGE #{} is empty", position + 1);
        return ExitCode::from(EXIT_USAGE);
    }
    let diagnoser = match common.diagnoser() {
        Ok(diagnoser) => diagnoser,
        Err(error) => {
            eprintln!("pullwatch diagnose: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pullwatch diagnose: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let all_pullable = runtime.block_on(async {
        let mut all_pullable = true;
        for image in images {
            let report = diagnoser.diagnose(image).await;
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PULLWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
