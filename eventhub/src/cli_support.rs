//! What the three binaries (`tcpulse-agent`, `tcpulse-collector`, `tcpulse-hub`) share on the
//! command line: how they log ([`logging`]), how they stop ([`signal`]), how they exit
//! ([`exit`]), how they read secrets ([`secret`]), how they print their reference config
//! ([`reference`]) and how the agent and the collector report operational problems: named
//! events, one counter each, one log-rate policy ([`telemetry`]).
//!
//! It lives in the client crate behind the `cli` feature because all three already depend on
//! this crate; the feature keeps clap and tracing-subscriber out of library users.

pub mod reference;
/// The secret loader lives at the crate root (the client reads the proxy password with it);
/// re-exported here where the binaries look for it.
pub use crate::secret;
pub mod telemetry;

/// The `--help` epilogue (clap's `after_help`) of the three binaries: the secrets rule,
/// then the exit codes.
pub fn after_help() -> String {
    format!("{}\n\n{}", secret::HELP, exit::HELP)
}

/// Log set-up: one format flag, `RUST_LOG`-style filters, ANSI colour only on a terminal,
/// UTC RFC 3339 timestamps, output on stderr (or a file).
pub mod logging {
    use std::io::IsTerminal as _;
    use std::path::{Path, PathBuf};

    use tracing_subscriber::fmt::time::SystemTime;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::EnvFilter;

    /// The environment variable that sets the log format (same as `--log-format`).
    pub const LOG_FORMAT_ENV: &str = "TCPULSE_LOG_FORMAT";
    /// The environment variable with the log filter (tracing env-filter syntax).
    pub const RUST_LOG_ENV: &str = "RUST_LOG";

    /// How log lines are written.
    #[derive(
        Debug,
        Clone,
        Copy,
        Default,
        PartialEq,
        Eq,
        clap::ValueEnum,
        serde::Deserialize,
        serde::Serialize,
        schemars::JsonSchema,
    )]
    #[serde(rename_all = "lowercase")]
    pub enum LogFormat {
        /// Human-readable lines: `2026-01-02T03:04:05.678901Z  INFO target: message k=v`.
        #[default]
        Text,
        /// One JSON object per line (`timestamp`, `level`, `fields`, `target`).
        Json,
    }

    /// The `--log-format` flag, for binaries that take it as is (collector, hub).
    #[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
    pub struct LogFormatArg {
        /// Log format: text or json (one JSON object per line). Timestamps are UTC
        /// (RFC 3339, ending in Z); colour only when stderr is a terminal. The log filter
        /// comes from RUST_LOG (tracing env-filter syntax, e.g. info,tcpulse=debug).
        #[arg(
            long = "log-format",
            env = LOG_FORMAT_ENV,
            value_enum,
            default_value_t = LogFormat::Text,
            value_name = "FORMAT"
        )]
        pub log_format: LogFormat,
    }

    /// Where log lines go.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum LogTarget<'a> {
        /// Standard error (colour only when it is a terminal).
        Stderr,
        /// Append to this file (never coloured).
        File(&'a Path),
    }

    /// Logging could not be set up; both are configuration errors.
    #[derive(Debug, thiserror::Error)]
    pub enum LogError {
        /// The filter does not parse.
        #[error("log level {filter:?} is not a valid filter: {why}")]
        Filter {
            /// The filter as given.
            filter: String,
            /// The parser's message.
            why: String,
        },
        /// The log file cannot be opened for appending.
        #[error("cannot open log file {}: {source}", path.display())]
        File {
            /// The file.
            path: PathBuf,
            /// The cause.
            source: std::io::Error,
        },
    }

    /// The filter from `RUST_LOG` when it is set and not blank.
    pub fn filter_from_env() -> Option<String> {
        std::env::var(RUST_LOG_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
    }

    /// Installs the global subscriber with `filter` (env-filter syntax). A second call in
    /// the same process (tests, an in-process service restart) keeps the first.
    pub fn init(format: LogFormat, filter: &str, target: LogTarget<'_>) -> Result<(), LogError> {
        let filter_value = EnvFilter::try_new(filter).map_err(|e| LogError::Filter {
            filter: filter.to_owned(),
            why: e.to_string(),
        })?;
        match target {
            LogTarget::Stderr => {
                let ansi = std::io::stderr().is_terminal();
                install(format, filter_value, ansi, std::io::stderr);
            }
            LogTarget::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| LogError::File {
                        path: path.to_owned(),
                        source,
                    })?;
                install(format, filter_value, false, std::sync::Mutex::new(file));
            }
        }
        Ok(())
    }

    fn install<W>(format: LogFormat, filter: EnvFilter, ansi: bool, writer: W)
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_timer(SystemTime)
            .with_writer(writer);
        let result = match format {
            LogFormat::Text => builder.with_ansi(ansi).try_init(),
            LogFormat::Json => builder.json().with_ansi(false).try_init(),
        };
        // Already initialised: keep the first subscriber.
        drop(result);
    }
}

/// Shutdown on a signal: each binary turns the first Ctrl-C, or SIGTERM on Unix (systemd,
/// `docker stop`), into the cancellation of its one shutdown token. (The Windows service
/// stops through the service control manager instead.)
pub mod signal {
    /// Completes on the first Ctrl-C, or SIGTERM on Unix; logs that shutdown was requested.
    /// If SIGTERM cannot be watched, Ctrl-C still works.
    pub async fn shutdown_requested() {
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
                Err(_) => drop(tokio::signal::ctrl_c().await),
            }
        }
        #[cfg(not(unix))]
        drop(tokio::signal::ctrl_c().await);
        tracing::info!("shutdown requested");
    }
}

/// Exit codes: 0 clean, 1 runtime failure, 2 command-line usage (clap's own), 78 (EX_CONFIG)
/// configuration error. systemd units set `RestartPreventExitStatus=78` so a bad config does
/// not restart in a loop.
pub mod exit {
    use std::process::ExitCode;

    /// A runtime failure (the configuration was fine; something failed while running).
    pub const RUNTIME: u8 = 1;
    /// clap's usage errors (unknown flag, unparsable flag value); clap exits with it itself.
    pub const USAGE: u8 = 2;
    /// sysexits.h EX_CONFIG: the configuration is unusable (file, flag value, secret).
    pub const CONFIG: u8 = 78;

    /// The class of a failure, which picks the exit code.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Failure {
        /// Configuration error: exit 78.
        Config,
        /// Runtime failure: exit 1.
        Runtime,
    }

    impl Failure {
        /// The numeric exit code.
        pub fn code(self) -> u8 {
            match self {
                Failure::Config => CONFIG,
                Failure::Runtime => RUNTIME,
            }
        }
    }

    /// Prints `{binary}: {message}` once on stderr and returns the exit code for `failure`.
    pub fn report(binary: &str, failure: Failure, message: &str) -> ExitCode {
        eprintln!("{binary}: {message}");
        ExitCode::from(failure.code())
    }

    /// The paragraph for `--help` (clap's `after_help`).
    pub const HELP: &str = "Exit status: 0 clean exit, 1 runtime failure, 2 command-line usage \
        error, 78 configuration error (bad file, flag value or secret; systemd does not restart \
        on it).";

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn config_and_runtime_failures_have_distinct_codes() {
            assert_eq!(Failure::Config.code(), 78);
            assert_eq!(Failure::Runtime.code(), 1);
            assert_ne!(Failure::Runtime.code(), USAGE);
        }
    }
}
