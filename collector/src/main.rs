//! `tcpulse-collector run | check-config | demo`: parses the command line, sets up logging and
//! the shutdown token, and hands over to the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tcpulse_collector::config::{Cli, Command, RunArgs};
use tokio_util::sync::CancellationToken;

/// mimalloc: the decode → aggregate → encode path allocates and frees many small strings and
/// maps per event; glibc malloc spent about a fifth of the CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => init_tracing(args.log_json).and(run(args)),
        Command::CheckConfig(args) => init_tracing(args.log_json).and(check_config(args)),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcpulse-collector: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(json: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

#[cfg(feature = "demo")]
fn demo(args: &tcpulse_collector::demo::config::DemoArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let plan = args.plan()?;
    let tty = std::io::stdout().is_terminal();
    tcpulse_collector::demo::run::init_tracing(&plan, tty)?;
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        tcpulse_collector::demo::run::run(plan, tty, shutdown).await?;
        Ok(())
    })
}

fn check_config(args: &RunArgs) -> anyhow::Result<()> {
    let mut config = args.load()?;
    for line in tcpulse_collector::check_config(&mut config)? {
        println!("{line}");
    }
    println!("config OK");
    Ok(())
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let summary = tcpulse_collector::run(config, shutdown).await?;
        for p in summary.partitions {
            tracing::info!(partition = %p.partition, checkpoint = ?p.checkpoint, events_read = p.events_read, "partition stopped");
        }
        Ok(())
    })
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            shutdown.cancel();
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}
