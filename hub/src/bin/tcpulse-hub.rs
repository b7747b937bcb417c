//! `tcpulse-hub`: run the embedded Event Hubs-compatible broker. See `--help`.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use tcpulse_eventhub::cli_support::exit::{self, Failure};
use tcpulse_eventhub::cli_support::logging::{self, LogTarget};
use tcpulse_hub::{cli::Args, Hub, HubError};

/// mimalloc: every delivery decodes, stamps and re-encodes a message; glibc malloc spent about
/// a fifth of the hub's CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The filter when RUST_LOG is not set: fe2o3-amqp logs every refused peer at error level.
const DEFAULT_FILTER: &str = "info,fe2o3_amqp=off";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = logging::filter_from_env().unwrap_or_else(|| DEFAULT_FILTER.to_owned());
    if let Err(err) = logging::init(args.log.log_format, &filter, LogTarget::Stderr) {
        return exit::report("tcpulse-hub", Failure::Config, &err.to_string());
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => exit::report("tcpulse-hub", classify(&err), &format!("{err:#}")),
    }
}

/// Configuration errors (policies, a given certificate or key, the Entra ID files) exit 78;
/// the rest exit 1.
fn classify(err: &anyhow::Error) -> Failure {
    match err.downcast_ref::<HubError>() {
        Some(
            HubError::Config(_)
            | HubError::Policies { .. }
            | HubError::TlsLoad { .. }
            | HubError::Entra { .. },
        ) => Failure::Config,
        _ => Failure::Runtime,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let hub = Hub::start(args.into_config()).await?;
    let line = serde_json::to_string(&hub.ready_info())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    tcpulse_eventhub::cli_support::signal::shutdown_requested().await;
    hub.shutdown().await;
    Ok(())
}
