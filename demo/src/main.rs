//! `tcpulse-demo`: parses the flags, sets up logging and the shutdown token, and runs
//! [`tcpulse_demo::run::run`]. Exit codes: 0 clean, 1 failure (clap's usage errors: 2).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tcpulse_demo::config::DemoArgs;
use tcpulse_eventhub::cli_support::exit::{self, Failure};
use tokio_util::sync::CancellationToken;

/// mimalloc, as the collector and hub binaries use it: the demo runs both in this process.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = DemoArgs::parse();
    match demo(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => exit::report("tcpulse-demo", Failure::Runtime, &format!("{err:#}")),
    }
}

fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let tty = std::io::stdout().is_terminal();
    tcpulse_demo::run::init_tracing(&plan, tty)?;
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        tcpulse_demo::run::run(plan, tty, shutdown).await?;
        Ok(())
    })
}

/// Cancels `shutdown` on Ctrl-C, or SIGTERM on Unix.
async fn cancel_on_signal(shutdown: CancellationToken) {
    tcpulse_eventhub::cli_support::signal::shutdown_requested().await;
    shutdown.cancel();
}
