//! The command line (clap definitions, whose doc comments are the `--help` text) and the
//! glue the binary and the Windows service share: logging set-up, the shutdown signal,
//! the `run`, `check-config` and `check-cert` commands.

use std::path::PathBuf;
use std::process::ExitCode;

use tcpulse_eventhub::cli_support::exit::Failure;
use tcpulse_eventhub::cli_support::logging::{self, LogError, LogFormat, LogTarget};
use tokio_util::sync::CancellationToken;

use crate::check_cert::{self, ENV_CERT_PASSWORD};
use crate::config::{Config, RunArgs};
use crate::publish::{self, Publisher};

/// tcpulse-agent: publishes call counts and health of Pexip Teams Connector instances to
/// Azure Event Hubs, through a crash-safe on-disk spool.
///
/// Settings come from flags, TCPULSE_* environment variables and a TOML file (--config),
/// in that order of precedence. The Event Hubs connection string is read only from
/// TCPULSE_EVENTHUB_CONNECTION_STRING or publish.connection_string_file; with
/// --eventhub-auth managed_identity the VM's identity is used and no secret is needed.
#[derive(Debug, clap::Parser)]
#[command(
    name = "tcpulse-agent",
    version,
    after_help = tcpulse_eventhub::cli_support::after_help()
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the agent until Ctrl-C / SIGTERM (or the service stops).
    Run(RunArgs),
    /// Load and validate the configuration (including secrets' presence), print a summary
    /// without secrets, and exit.
    CheckConfig(RunArgs),
    /// Check a Teams Connector certificate against Pexip's requirements (PFX, RSA, EKU
    /// server+client auth, name, intermediates, validity). Exit 0 if it passes, 1 if not
    /// (or if the certificate cannot be read).
    CheckCert(CheckCertArgs),
    /// Print the annotated reference config (every setting of the --config file with its
    /// docs; defaults active, the rest commented out) and exit.
    Config,
    /// Install the Windows service (runs `tcpulse-agent service --config FILE` at boot).
    #[cfg(windows)]
    Install {
        /// The config file the service uses (absolute path).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Remove the Windows service.
    #[cfg(windows)]
    Uninstall,
    /// Start the Windows service.
    #[cfg(windows)]
    Start,
    /// Stop the Windows service.
    #[cfg(windows)]
    Stop,
    /// Entry point used by the Windows service manager (not for interactive use).
    #[cfg(windows)]
    #[command(hide = true)]
    Service(RunArgs),
}

/// Flags of `check-cert`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckCertArgs {
    /// Certificate file: PFX/PKCS#12 (password in TCPULSE_CERT_PASSWORD) or PEM.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// The Teams Connector FQDN the certificate must match.
    #[arg(long, env = "TCPULSE_CONNECTOR", value_name = "NAME")]
    pub fqdn: Option<String>,
}

/// Why a command could not run (printed once as `tcpulse-agent: {err:#}`; exit 78 for a
/// configuration error, 1 otherwise: see [`CliError::failure`]).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The publisher could not be set up.
    #[error(transparent)]
    Publish(#[from] publish::SetupError),
    /// A start-up step of the run failed.
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    /// The certificate could not be read.
    #[error(transparent)]
    Cert(#[from] check_cert::CertError),
    /// The log filter or the log file is unusable.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The runtime (or, on Windows, the service manager) could not be set up.
    #[error("{0}")]
    Setup(String),
}

impl CliError {
    /// Configuration errors (settings, secrets, the log filter or file, publish and source
    /// settings) exit 78 so systemd does not restart on them; the rest exit 1.
    pub fn failure(&self) -> Failure {
        use crate::sources::BuildError;
        match self {
            CliError::Config(_)
            | CliError::Log(_)
            | CliError::Publish(
                publish::SetupError::EventHubs(_) | publish::SetupError::Unavailable(_),
            )
            | CliError::Run(crate::run::RunError::Source(BuildError::Invalid { .. })) => {
                Failure::Config
            }
            CliError::Publish(publish::SetupError::File { .. })
            | CliError::Run(_)
            | CliError::Cert(_)
            | CliError::Setup(_) => Failure::Runtime,
        }
    }
}

/// Sets up text logging to `file` (appending) or stderr, filtered by `level`.
pub fn init_tracing(level: &str, file: Option<&std::path::Path>) -> Result<(), CliError> {
    init_logging(LogFormat::Text, level, file)
}

/// Sets up logging in `format` to `file` (appending) or stderr, filtered by `level`.
pub fn init_logging(
    format: LogFormat,
    level: &str,
    file: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let target = file.map_or(LogTarget::Stderr, LogTarget::File);
    logging::init(format, level, target)?;
    Ok(())
}

/// Cancels `token` on Ctrl-C, and on SIGTERM on Unix.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        tcpulse_eventhub::cli_support::signal::shutdown_requested().await;
        token.cancel();
    });
}

/// A small runtime: one thread for the agent's tasks, plus tokio's blocking pool for disk
/// and HTTP. The agent does little work; one thread keeps memory and CPU low.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .map_err(|e| CliError::Setup(format!("cannot start the async runtime: {e}")))
}

/// Loads the config, sets up logging and runs the agent until `shutdown`.
pub fn run_agent(
    args: &RunArgs,
    shutdown: CancellationToken,
    default_log_file: Option<PathBuf>,
) -> Result<(), CliError> {
    let config = Config::load(args)?;
    let log_file = config.log_file.clone().or(default_log_file);
    init_logging(config.log_format, &config.log_level, log_file.as_deref())?;
    for conflict in &config.secret_conflicts {
        conflict.log();
    }
    let publisher: Box<dyn Publisher> = publish::from_config(&config.publish)?;
    let rt = runtime()?;
    rt.block_on(async move {
        cancel_on_signal(shutdown.clone());
        crate::run::run(config, publisher, shutdown).await
    })?;
    Ok(())
}

/// `check-config`: prints the summary (warnings, such as a secret set both in a file and
/// in its variable, are logged on stderr).
pub fn check_config(args: &RunArgs) -> Result<ExitCode, CliError> {
    let config = Config::load(args)?;
    init_logging(config.log_format, &config.log_level, None)?;
    for conflict in &config.secret_conflicts {
        conflict.log();
    }
    println!("{}", config.summary());
    if let publish::SetupPlan::Unavailable(why) = publish::plan(&config.publish) {
        println!("note: {why}");
    }
    for note in publish::config::check_event_hubs(&config.publish.target)
        .map_err(crate::config::ConfigError::from)?
    {
        println!("note: {note}");
    }
    println!("config OK");
    Ok(ExitCode::SUCCESS)
}

/// `check-cert`: prints the report; exit 0 when it passes, 1 when a check fails.
pub fn check_cert(args: &CheckCertArgs) -> Result<ExitCode, CliError> {
    let password = std::env::var(ENV_CERT_PASSWORD).ok();
    let now = tcpulse_schema::Timestamp::now().unix_millis() / 1000;
    let report = check_cert::check(&args.cert, password.as_deref(), args.fqdn.as_deref(), now)?;
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "tcpulse-agent",
            "run",
            "--connector",
            "a.example.com",
            "--interval",
            "2s",
            "--publish-file",
            "/tmp/x",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(
            args.report.interval,
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(
            args.publish.file.as_deref(),
            Some(std::path::Path::new("/tmp/x"))
        );
        assert!(Cli::try_parse_from(["tcpulse-agent", "run", "--interval", "soon"]).is_err());
        assert!(
            Cli::try_parse_from([
                "tcpulse-agent",
                "run",
                "--connection-string",
                "Endpoint=sb://x"
            ])
            .is_err(),
            "never a flag"
        );
    }
}
