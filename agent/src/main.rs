//! `tcpulse-agent`: thin binary over the `tcpulse_agent` library. Parses the command line,
//! dispatches, and prints any error once as `tcpulse-agent: {err:#}`: exit 78 for a
//! configuration error, 1 for a runtime failure (clap's usage errors: 2).

use std::process::ExitCode;

use clap::Parser;
use tcpulse_agent::cli::{self, Cli, Command};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            cli::run_agent(&args, CancellationToken::new(), None).map(|()| ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => cli::check_config(&args),
        Command::CheckCert(args) => cli::check_cert(&args),
        Command::Config => {
            print!("{}", tcpulse_agent::config::reference());
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(windows)]
        Command::Install { config } => {
            tcpulse_agent::windows_service::install(&config).map(|()| ExitCode::SUCCESS)
        }
        #[cfg(windows)]
        Command::Uninstall => {
            tcpulse_agent::windows_service::uninstall().map(|()| ExitCode::SUCCESS)
        }
        #[cfg(windows)]
        Command::Start => tcpulse_agent::windows_service::start().map(|()| ExitCode::SUCCESS),
        #[cfg(windows)]
        Command::Stop => tcpulse_agent::windows_service::stop().map(|()| ExitCode::SUCCESS),
        #[cfg(windows)]
        Command::Service(args) => {
            tcpulse_agent::windows_service::run_service(args).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            let failure = err.failure();
            let message = format!("{:#}", anyhow::Error::from(err));
            tcpulse_eventhub::cli_support::exit::report("tcpulse-agent", failure, &message)
        }
    }
}
