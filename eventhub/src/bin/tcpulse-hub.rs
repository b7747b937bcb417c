//! `tcpulse-hub`: run the embedded Event Hubs-compatible broker. See `--help`.

use std::io::{IsTerminal as _, Write as _};

use clap::Parser as _;
use tcpulse_eventhub::hub::{cli::Args, Hub};
use tracing_subscriber::EnvFilter;

/// mimalloc: every delivery decodes, stamps and re-encodes a message; glibc malloc spent about
/// a fifth of the hub's CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,fe2o3_amqp=off")),
        )
        .init();
    let args = Args::parse();
    if let Err(err) = run(args).await {
        eprintln!("tcpulse-hub: {err:#}");
        std::process::exit(2);
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
    shutdown_signal().await;
    tracing::info!("shutting down");
    hub.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
