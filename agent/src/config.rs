//! Agent configuration: a TOML file, `TCPULSE_*` environment variables and flags.
//!
//! Two layers (ripgrep's low/high args): the `*Args` structs mirror both the flags and the
//! file's tables, every field optional, and only parse; [`Config::load`] merges them
//! (flag, then environment variable, then file, then default), validates, reads secrets
//! and returns the resolved [`Config`]. The doc comment of each field is both its `--help`
//! text and its file documentation; defaults are the `default_*` functions.
//!
//! Each section lives next to the component it configures, with its `*Args`, resolved
//! struct, defaults, `resolve_*` function and error: `[identity]` and `[report]` in
//! [`report::config`](crate::report::config), `[health]` in
//! [`health::config`](crate::health::config), `[spool]` in
//! [`spool::config`](crate::spool::config), `[publish]` in
//! [`publish::config`](crate::publish::config) (the Event Hubs connection string, never a
//! flag value), `[source]` in [`sources`](crate::sources). This module assembles them:
//! [`FileConfig`] (the file), [`RunArgs`] (the flags), `[log]` ([`LogArgs`]), and
//! [`Config::resolve`], which calls each section's resolve; [`ConfigError`] wraps the
//! sections' errors. The sections import nothing from here.
//!
//! `tcpulse-agent config` prints every setting of the file with its docs and defaults
//! ([`reference()`], generated from these structs; see [`FileConfig::defaults`]).
//!
//! ```toml
//! [identity]
//! connector = "tc-eu.example.com"
//! deployment = "blue"
//! region = "westeurope"
//! scaleset = "tc-eu-vmss"
//!
//! [source]
//! type = "simulate"
//! ```

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tcpulse_eventhub::cli_support::logging::{self, LogFormat};
use tcpulse_eventhub::cli_support::secret::Conflict;

use crate::health::config::{resolve_health, HealthArgs, HealthConfig};
use crate::merge::nonempty;
use crate::publish::config::{
    resolve_publish, PublishArgs, PublishConfig, PublishConfigError, PublishTarget,
};
use crate::report::config::{
    resolve_identity, resolve_report, Identity, IdentityArgs, ReportArgs, ReportConfig,
    ReportConfigError,
};
use crate::sources::{SourceConfig, SOURCE_TYPES};
use crate::spool::config::{resolve_spool, SpoolArgs, SpoolConfig, SpoolConfigError};

mod reference;
pub use reference::reference;

/// Logging.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LogArgs {
    /// Append logs to this file instead of stderr. Default: stderr (as a Windows service:
    /// C:\ProgramData\tcpulse-agent\agent.log).
    #[arg(
        id = "log_file",
        long = "log-file",
        env = "TCPULSE_LOG_FILE",
        value_name = "FILE"
    )]
    pub file: Option<PathBuf>,
    /// Log filter (tracing env-filter syntax: info, debug, tcpulse_agent=trace). Precedence:
    /// --log-level, TCPULSE_LOG, `[log] level` in the file, then RUST_LOG. Default: info.
    #[arg(
        id = "log_level",
        long = "log-level",
        env = "TCPULSE_LOG",
        value_name = "FILTER"
    )]
    pub level: Option<String>,
    /// Log format: text or json (one JSON object per line). Timestamps are UTC (RFC 3339,
    /// ending in Z); colour only when logging to a terminal. Default: text.
    #[arg(
        id = "log_format",
        long = "log-format",
        env = tcpulse_eventhub::cli_support::logging::LOG_FORMAT_ENV,
        value_enum,
        value_name = "FORMAT"
    )]
    pub format: Option<LogFormat>,
}

/// The TOML file: one table per `*Args` struct plus `[source]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Identity of the instance the events describe (flags: --connector, --region, …).
    #[serde(default)]
    pub identity: IdentityArgs,
    /// When reports are made.
    #[serde(default)]
    pub report: ReportArgs,
    /// Where call counts come from: `type` is one of command, file, http, pexip, simulate;
    /// the other keys are that source's settings. Required (or --source simulate).
    #[serde(default)]
    pub source: Option<SourceConfig>,
    /// Host health measured with each report.
    #[serde(default)]
    pub health: HealthArgs,
    /// The on-disk spool that holds events until Event Hubs accepts them.
    #[serde(default)]
    pub spool: SpoolArgs,
    /// Where events go: Event Hubs (the connection string from a file or
    /// TCPULSE_EVENTHUB_CONNECTION_STRING), or a file.
    #[serde(default)]
    pub publish: PublishArgs,
    /// Logging.
    #[serde(default)]
    pub log: LogArgs,
}

/// Flags of `run` and `check-config`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// TOML config file; flags and TCPULSE_* variables override its values.
    #[arg(long, short = 'c', env = "TCPULSE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Source type (command, file, http, pexip, simulate); the config file's [source]
    /// table gives its settings. Only simulate works without settings.
    #[arg(long, env = "TCPULSE_SOURCE", value_name = "TYPE")]
    pub source: Option<String>,
    /// Identity.
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Reporting.
    #[command(flatten)]
    pub report: ReportArgs,
    /// Health.
    #[command(flatten)]
    pub health: HealthArgs,
    /// Spool.
    #[command(flatten)]
    pub spool: SpoolArgs,
    /// Publishing.
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// The whole resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Identity.
    pub identity: Identity,
    /// Reporting.
    pub report: ReportConfig,
    /// The source.
    pub source: SourceConfig,
    /// Health.
    pub health: HealthConfig,
    /// Spool.
    pub spool: SpoolConfig,
    /// Publishing.
    pub publish: PublishConfig,
    /// Log file, if not stderr.
    pub log_file: Option<PathBuf>,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Secrets found both in a file and in their variable (the file was used), to log
    /// once logging is set up.
    pub secret_conflicts: Vec<Conflict>,
}

/// A configuration that cannot be used. Every message is one line saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("config file {path}{location}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// ` line N (text)` when known.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A required setting (the source) is missing.
    #[error("{setting} is not set; {hint}")]
    Missing {
        /// The setting.
        setting: &'static str,
        /// How to set it.
        hint: &'static str,
    },
    /// A setting (the source type) has an unusable value.
    #[error("{0}")]
    Invalid(String),
    /// The `[publish]` settings are invalid.
    #[error(transparent)]
    Publish(#[from] PublishConfigError),
    /// The `[identity]` or `[report]` settings are invalid.
    #[error(transparent)]
    Report(#[from] ReportConfigError),
    /// The `[spool]` settings are invalid.
    #[error(transparent)]
    Spool(#[from] SpoolConfigError),
    /// The source settings are invalid.
    #[error(transparent)]
    Source(#[from] crate::sources::BuildError),
}

fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let location = e
        .span()
        .map(|span| {
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            let line: String = line.chars().take(60).collect();
            format!(" line {line_no} ({line})")
        })
        .unwrap_or_default();
    ConfigError::Parse {
        path: path.display().to_string(),
        location,
        message: e.message().replace('\n', " "),
    }
}

/// Parses a TOML config text (`path` only names it in errors).
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| parse_error(path, text, &e))
}

impl Config {
    /// Loads and merges the config file (if any), environment and flags, reads secrets
    /// and validates everything.
    pub fn load(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                parse_file(path, &text)?
            }
            None => FileConfig::default(),
        };
        Config::resolve(args, file)
    }

    /// Merges `args` (flags and environment, already read by clap) over `file`, section by
    /// section.
    pub fn resolve(args: &RunArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let source = resolve_source(args.source.as_ref(), file.source)?;
        source.validate()?;
        let mut secret_conflicts: Vec<Conflict> = source.secret_conflict().into_iter().collect();
        Ok(Config {
            identity: resolve_identity(&args.identity, file.identity, source.is_local())?,
            report: resolve_report(&args.report, &file.report, source.poll_interval())?,
            health: resolve_health(&args.health, file.health, source.is_local()),
            spool: resolve_spool(&args.spool, file.spool)?,
            publish: resolve_publish(&args.publish, file.publish, &mut secret_conflicts)?,
            source,
            log_file: args.log.file.clone().or(file.log.file),
            log_level: nonempty(args.log.level.clone().or(file.log.level))
                .or_else(logging::filter_from_env)
                .unwrap_or_else(|| "info".to_owned()),
            log_format: args.log.format.or(file.log.format).unwrap_or_default(),
            secret_conflicts,
        })
    }

    /// A human-readable summary for `check-config` (no secrets).
    pub fn summary(&self) -> String {
        let i = &self.identity;
        let target = match &self.publish.target {
            PublishTarget::EventHubs {
                auth,
                event_hub,
                transport,
                ..
            } => format!(
                "Event Hubs ({}{}, transport {transport})",
                auth.describe(),
                event_hub
                    .as_deref()
                    .map(|h| format!(", hub {h}"))
                    .unwrap_or_default()
            ),
            PublishTarget::File(p) => format!("file {}", p.display()),
        };
        format!(
            "identity: connector={} deployment={} region={} scaleset={} instance={}\n\
             source:   {}\n\
             report:   every {} (source read every {})\n\
             health:   {}\n\
             spool:    {} (max {} bytes)\n\
             publish:  {}",
            i.connector,
            i.deployment,
            i.region,
            if i.scaleset.is_empty() {
                "(per node)"
            } else {
                &i.scaleset
            },
            i.instance,
            self.source.type_name(),
            humantime::format_duration(self.report.interval),
            humantime::format_duration(self.report.poll_interval),
            if self.health.enabled { "on" } else { "off" },
            self.spool.dir.display(),
            self.spool.max_bytes,
            target,
        )
    }
}

/// The `[source]` table, or the default settings of `--source TYPE`.
fn resolve_source(
    flag: Option<&String>,
    file: Option<SourceConfig>,
) -> Result<SourceConfig, ConfigError> {
    let source = match (flag, file) {
        (Some(t), Some(s)) if s.type_name() == t => s,
        (Some(t), _) => SourceConfig::default_of(t).ok_or_else(|| {
            if SOURCE_TYPES.contains(&t.as_str()) {
                ConfigError::Invalid(format!(
                    "source {t} needs settings: add a [source] table with type = \"{t}\" to the config file"
                ))
            } else {
                ConfigError::Invalid(format!(
                    "unknown source type {t:?}; expected one of {}",
                    SOURCE_TYPES.join(", ")
                ))
            }
        })?,
        (None, Some(s)) => s,
        (None, None) => {
            return Err(ConfigError::Missing {
                setting: "source",
                hint: "add a [source] table (type = command, file, http, pexip or simulate) to the config file, or pass --source simulate",
            })
        }
    };
    Ok(source)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            publish: PublishArgs {
                file: Some("/tmp/x.jsonl".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    const MINIMAL: &str = r#"
[identity]
connector = "tc-eu.example.com"
region = "westeurope"
scaleset = "tc-eu-vmss"
instance = "tc-eu-vmss_3"

[source]
type = "simulate"
"#;

    #[test]
    fn minimal_example_resolves_with_defaults() {
        let file = parse_file(Path::new("a.toml"), MINIMAL).unwrap();
        let c = Config::resolve(&args(), file).unwrap();
        assert_eq!(c.identity.deployment, "default");
        assert_eq!(c.report.interval, Duration::from_secs(10));
        assert_eq!(c.report.poll_interval, Duration::from_millis(500));
        assert_eq!(c.spool.max_bytes, 64 << 20);
        assert_eq!(c.source.type_name(), "simulate");
        assert!(c.health.enabled);
        assert!(c.summary().contains("connector=tc-eu.example.com"));
    }

    #[test]
    fn flags_override_file() {
        let file = parse_file(Path::new("a.toml"), MINIMAL).unwrap();
        let mut a = args();
        a.identity.deployment = Some("green".into());
        a.report.interval = Some(Duration::from_secs(1));
        let c = Config::resolve(&a, file).unwrap();
        assert_eq!(
            (c.identity.deployment.as_str(), c.report.interval.as_secs()),
            ("green", 1)
        );
    }

    #[test]
    fn errors_are_one_line_and_name_the_fix() {
        let bad = format!("{MINIMAL}\n[report]\ninterval = \"10 parsecs\"\n");
        let e = parse_file(Path::new("a.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 12") && e.contains("parsecs") && !e.contains('\n'),
            "{e}"
        );
        let e = parse_file(Path::new("a.toml"), "[identity]\nconector = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field") && e.contains("conector"), "{e}");
        let e = Config::resolve(&args(), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--source simulate"), "{e}");
        let mut a = args();
        a.source = Some("pigeon".into());
        let e = Config::resolve(&a, FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown source type") && e.contains("simulate"),
            "{e}"
        );
    }

    #[test]
    fn pexip_source_needs_no_scaleset_and_has_no_health() {
        let text = MINIMAL.replace("scaleset = \"tc-eu-vmss\"\n", "").replace(
            "type = \"simulate\"",
            "type = \"pexip\"\nurl = \"https://mgr.example.com\"\npassword_file = \"/dev/null\"",
        );
        let file = parse_file(Path::new("a.toml"), &text).unwrap();
        // /dev/null is an empty password file: a clear error.
        let e = Config::resolve(&args(), file).unwrap_err().to_string();
        assert!(e.contains("password_file") && e.contains("empty"), "{e}");
    }

    #[test]
    fn shipped_example_config_resolves() {
        let text = include_str!("../agent.example.toml");
        let file = parse_file(Path::new("agent.example.toml"), text).unwrap();
        let c = Config::resolve(&args(), file).unwrap();
        assert_eq!(
            (c.identity.deployment.as_str(), c.source.type_name()),
            ("blue", "simulate")
        );
    }
}
