//! `tcpulse-collector run | check-config | config`: parses the command line, sets up logging and
//! the shutdown token, and hands over to the library. Exit codes: 0 clean, 1 runtime failure,
//! 78 configuration error (clap's usage errors, and the hidden `demo` that says where the
//! demo moved: 2).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tcpulse_collector::cli::{Cli, Command, RunArgs};
use tcpulse_collector::BuildError;
use tcpulse_eventhub::cli_support::exit::{self, Failure};
use tcpulse_eventhub::cli_support::logging::{self, LogFormat, LogTarget};
use tokio_util::sync::CancellationToken;

/// mimalloc: the decode → aggregate → encode path allocates and frees many small strings and
/// maps per event; glibc malloc spent about a fifth of the CPU there. Built as mimalloc 2
/// without transparent huge pages (`no_thp`, `v2` on the workspace's mimalloc entry):
/// otherwise each 2 MiB of heap touched became resident whole, and freed pages stayed
/// resident for a second; together they more than doubled the RSS (issue 17).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BIN: &str = "tcpulse-collector";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => init_tracing(args).and_then(|()| run(args)),
        Command::CheckConfig(args) => init_tracing(args).and_then(|()| check_config(args)),
        Command::Config => {
            print!("{}", tcpulse_collector::config::reference());
            Ok(())
        }
        Command::Demo { .. } => {
            eprintln!("{BIN}: {}", tcpulse_collector::cli::DEMO_MOVED);
            return ExitCode::from(exit::USAGE);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((failure, err)) => exit::report(BIN, failure, &format!("{err:#}")),
    }
}

/// A failure and its class (which picks the exit code).
type Failed = (Failure, anyhow::Error);

fn init_tracing(args: &RunArgs) -> Result<(), Failed> {
    let format = if args.log_json {
        LogFormat::Json
    } else {
        args.log.log_format
    };
    let filter = logging::filter_from_env().unwrap_or_else(|| "info".to_owned());
    logging::init(format, &filter, LogTarget::Stderr).map_err(|e| (Failure::Config, e.into()))
}

/// Settings, secrets and sink settings are configuration errors; files, directories and the
/// listener that cannot be opened are runtime failures.
fn classify(err: &BuildError) -> Failure {
    match err {
        BuildError::Config(_)
        | BuildError::InfluxDbV2(_)
        | BuildError::InfluxDbV1(_)
        | BuildError::EventHubSecret(_)
        | BuildError::AzureBlob(_) => Failure::Config,
        BuildError::FileSink(_)
        | BuildError::DeadLetter { .. }
        | BuildError::CheckpointDir { .. }
        | BuildError::Metrics(_) => Failure::Runtime,
    }
}

fn check_config(args: &RunArgs) -> Result<(), Failed> {
    let config_error = |e: anyhow::Error| (Failure::Config, e);
    let mut config = args.load().map_err(|e| config_error(e.into()))?;
    let lines = tcpulse_collector::check_config(&mut config).map_err(|e| config_error(e.into()))?;
    for line in lines {
        println!("{line}");
    }
    println!("config OK");
    Ok(())
}

fn run(args: &RunArgs) -> Result<(), Failed> {
    let config = args.load().map_err(|e| (Failure::Config, e.into()))?;
    let runtime = tokio::runtime::Runtime::new()
        .context("start the tokio runtime")
        .map_err(|e| (Failure::Runtime, e))?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let summary = tcpulse_collector::run(config, shutdown)
            .await
            .map_err(|e| (classify(&e), e.into()))?;
        for p in summary.partitions {
            tracing::info!(partition = %p.partition, checkpoint = ?p.checkpoint, events_read = p.events_read, "partition stopped");
        }
        Ok(())
    })
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    tcpulse_eventhub::cli_support::signal::shutdown_requested().await;
    shutdown.cancel();
}
