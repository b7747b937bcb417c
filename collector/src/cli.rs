//! The `tcpulse-collector` command line: subcommands and the `run`/`check-config` flags,
//! laid over the config file and the environment by [`RunArgs::load`].

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{default_file_partition, Config, ConfigError, FileSourceConfig};

/// Consumes tcpulse status events from every partition, aggregates them and writes them
/// to InfluxDB (v2 or v1 API) or a line-protocol file. A partition's checkpoint moves only
/// past points the store acknowledged.
#[derive(Debug, clap::Parser)]
#[command(
    name = "tcpulse-collector",
    version,
    after_help = tcpulse_eventhub::cli_support::after_help()
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the collector until SIGINT or SIGTERM (or until a file source ends).
    Run(RunArgs),
    /// Validate the configuration and resolve its secrets, without connecting anywhere.
    CheckConfig(RunArgs),
    /// Print the annotated reference config (every setting with its docs; defaults active,
    /// the rest commented out) and exit.
    Config,
    /// Moved to the `tcpulse-demo` binary (same flags); kept hidden so old scripts are told
    /// where it went: prints [`DEMO_MOVED`] and exits 2.
    #[command(hide = true, disable_help_flag = true)]
    Demo {
        /// Whatever followed `demo`; ignored.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// What `tcpulse-collector demo` prints: the demo is its own crate and binary now.
pub const DEMO_MOVED: &str = "the demo moved to its own binary: run \
    `cargo run --release -p tcpulse-demo` (or `tcpulse-demo` if installed), with the same flags";

/// Flags shared by `run` and `check-config`; each overrides the config file. Secrets
/// have no flags: they come from the environment or files the config names.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// TOML config file (see the crate docs for every field).
    #[arg(
        long,
        short = 'c',
        env = "TCPULSE_COLLECTOR_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Read events from FILE (one JSON event body per line) instead of Event Hubs.
    #[arg(long, value_name = "FILE")]
    pub source_file: Option<PathBuf>,
    /// Append line protocol to FILE (sets `sinks.file.path`).
    #[arg(long, value_name = "FILE")]
    pub points_file: Option<PathBuf>,
    /// Directory for checkpoints (sets `checkpoint.dir`).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Dead-letter file (sets `dead_letter.path`).
    #[arg(long, value_name = "FILE")]
    pub dead_letter_path: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz (sets `http.listen`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format (level from RUST_LOG, default info).
    #[command(flatten)]
    pub log: tcpulse_eventhub::cli_support::logging::LogFormatArg,
    /// Same as --log-format json (kept for existing units and scripts).
    #[arg(long, hide = true)]
    pub log_json: bool,
}

impl RunArgs {
    /// The config file, then the environment, then these flags, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut c = Config::load(self.config.as_deref())?;
        if let Some(path) = &self.source_file {
            c.source.eventhub = None;
            c.source.file = Some(FileSourceConfig {
                path: path.clone(),
                partition: default_file_partition(),
            });
        }
        if let Some(path) = &self.points_file {
            let mut f = c.sinks.file.take().unwrap_or_default();
            f.path = path.clone();
            c.sinks.file = Some(f);
        }
        if let Some(dir) = &self.checkpoint_dir {
            c.checkpoint.dir = dir.clone();
        }
        if let Some(path) = &self.dead_letter_path {
            c.dead_letter.path = path.clone();
        }
        if let Some(addr) = self.metrics_listen {
            c.http.enabled = true;
            c.http.listen = addr;
        }
        c.validate()?;
        c.validate_source()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EXAMPLE_CONFIG;

    #[test]
    fn flags_override_the_file_and_help_comes_from_doc_comments() {
        use clap::{CommandFactory as _, Parser as _};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, EXAMPLE_CONFIG).unwrap();
        let cli = Cli::try_parse_from([
            "tcpulse-collector",
            "run",
            "--config",
            file.to_str().unwrap(),
            "--source-file",
            "ev.jsonl",
            "--points-file",
            "out.lp",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        let c = args.load().unwrap();
        assert!(c.source.eventhub.is_none());
        assert_eq!(c.source.file.unwrap().path, PathBuf::from("ev.jsonl"));
        assert_eq!(c.sinks.file.unwrap().path, PathBuf::from("out.lp"));
        assert!(c.sinks.influxdb_v2.is_some(), "file settings kept");
        assert_eq!(c.http.listen.port(), 0);
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("check-config"), "{help}");
        let mut run = Cli::command();
        let run_help = run
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(run_help.contains("Read events from FILE"), "{run_help}");
        assert!(
            !run_help.to_lowercase().contains("--token"),
            "no secret flags"
        );
        assert!(Cli::try_parse_from(["tcpulse-collector", "run", "--token", "x"]).is_err());
    }
}
