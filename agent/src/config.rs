//! Agent configuration: a TOML file, `TCPULSE_*` environment variables and flags.
//!
//! Two layers (ripgrep's low/high args): the `*Args` structs mirror both the flags and the
//! file's tables, every field optional, and only parse; [`Config::load`] merges them
//! (flag, then environment variable, then file, then default), validates, reads secrets
//! and returns the resolved [`Config`]. The doc comment of each field is both its `--help`
//! text and its file documentation; defaults are the `default_*` functions.
//!
//! Secrets never come from a flag value: the Event Hubs connection string is read from
//! `publish.connection_string_file` or `TCPULSE_EVENTHUB_CONNECTION_STRING` (a configured
//! file wins, with one WARN when both are set: the rule of
//! [`tcpulse_eventhub::cli_support::secret`]), and is kept in a [`Secret`] whose `Debug`
//! prints `***`.
//!
//! `tcpulse-agent config` prints every setting of the file with its docs and defaults
//! ([`reference`], generated from these structs; see [`FileConfig::defaults`]).
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

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tcpulse_eventhub::cli_support::logging::{self, LogFormat};
use tcpulse_eventhub::cli_support::secret::{self, Conflict, SecretError};

use crate::health::config::{resolve_health, HealthArgs, HealthConfig};
use crate::merge::nonempty;
use crate::report::config::{
    resolve_identity, resolve_report, Identity, IdentityArgs, ReportArgs, ReportConfig,
    ReportConfigError,
};
use crate::spool::config::{resolve_spool, SpoolArgs, SpoolConfig, SpoolConfigError};

mod reference;
use crate::sources::{SourceConfig, SOURCE_TYPES};
pub use reference::reference;

/// Environment variable holding the Event Hubs connection string.
pub const ENV_CONNECTION_STRING: &str = "TCPULSE_EVENTHUB_CONNECTION_STRING";
/// What the Event Hubs connection string is called in messages.
pub const EVENTHUB_SECRET: &str = "Event Hubs connection string";

/// Where events go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PublishArgs {
    /// File whose first line is the Event Hubs connection string; a configured file wins
    /// over the variable TCPULSE_EVENTHUB_CONNECTION_STRING (one WARN when both are set).
    /// The string itself is never a flag. Default: none.
    #[arg(
        long,
        env = "TCPULSE_EVENTHUB_CONNECTION_STRING_FILE",
        value_name = "FILE"
    )]
    pub connection_string_file: Option<PathBuf>,
    /// Event hub name, when the connection string has no EntityPath. Default: none.
    #[arg(long, env = "TCPULSE_EVENT_HUB", value_name = "NAME")]
    pub event_hub: Option<String>,
    /// Extra PEM CA file to trust besides the built-in roots (a private CA, or tcpulse-hub's
    /// ca.pem). Default: none.
    #[arg(
        long = "eventhub-ca-file",
        env = "TCPULSE_EVENTHUB_CA_FILE",
        value_name = "FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// Dial this host:port instead of the namespace host (a private endpoint, a proxy, or
    /// tcpulse-hub); TLS names and token audiences still use the namespace. Default: none.
    #[arg(
        long = "eventhub-endpoint",
        env = "TCPULSE_EVENTHUB_ENDPOINT",
        value_name = "HOST:PORT"
    )]
    pub custom_endpoint: Option<String>,
    /// Write events as JSON lines to this file instead of Event Hubs (demos, benchmarks);
    /// no connection string is needed then. Default: none.
    #[arg(
        id = "publish_file",
        long = "publish-file",
        env = "TCPULSE_PUBLISH_FILE",
        value_name = "FILE"
    )]
    pub file: Option<PathBuf>,
    /// Most events handed to the publisher at once. Default: 256.
    #[arg(skip)]
    pub max_batch_events: Option<usize>,
    /// Most body bytes handed to the publisher at once. Default: 786432 (768 KiB, under
    /// the 1 MB Event Hubs batch limit).
    #[arg(skip)]
    pub max_batch_bytes: Option<usize>,
    /// First delay after a transient publish error (humantime); doubles up to
    /// retry_max. Default: 1s.
    #[arg(skip)]
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub retry_initial: Option<Duration>,
    /// Longest delay between two publish attempts (humantime). Default: 60s.
    #[arg(skip)]
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub retry_max: Option<Duration>,
    /// On shutdown, how long to keep sending spooled events (humantime); the rest stays
    /// spooled for the next start. Default: 5s.
    #[arg(skip)]
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub shutdown_flush: Option<Duration>,
    /// First delay after a fatal publish error (wrong key, hub not found: retrying soon
    /// cannot help, but a rotated key or a re-created hub can), humantime; doubles up to
    /// fatal_retry_max. Reports keep being spooled meanwhile. Default: 30s.
    #[arg(skip)]
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub fatal_retry_initial: Option<Duration>,
    /// Longest delay between two attempts after fatal publish errors (humantime).
    /// Default: 5m.
    #[arg(skip)]
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub fatal_retry_max: Option<Duration>,
}

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

/// Default of `publish.max_batch_events`.
pub const fn default_max_batch_events() -> usize {
    256
}
/// Default of `publish.max_batch_bytes`.
pub const fn default_max_batch_bytes() -> usize {
    768 << 10
}
/// Default of `publish.retry_initial`.
pub const fn default_retry_initial() -> Duration {
    Duration::from_secs(1)
}
/// Default of `publish.retry_max`.
pub const fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
/// Default of `publish.fatal_retry_initial`.
pub const fn default_fatal_retry_initial() -> Duration {
    Duration::from_secs(30)
}
/// Default of `publish.fatal_retry_max`.
pub const fn default_fatal_retry_max() -> Duration {
    Duration::from_secs(300)
}
/// Default of `publish.shutdown_flush`.
pub const fn default_shutdown_flush() -> Duration {
    Duration::from_secs(5)
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishTarget {
    /// Azure Event Hubs (or the emulator).
    EventHubs {
        /// The connection string.
        connection_string: Secret,
        /// Where it came from (for messages; never the value).
        origin: String,
        /// Event hub name when the string has no EntityPath.
        event_hub: Option<String>,
        /// Extra CA file to trust.
        ca_file: Option<PathBuf>,
        /// Host:port to dial instead of the namespace.
        custom_endpoint: Option<String>,
    },
    /// JSON lines in a local file.
    File(PathBuf),
}

/// The resolved publish settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishConfig {
    /// Target.
    pub target: PublishTarget,
    /// Most events per publish call.
    pub max_batch_events: usize,
    /// Most body bytes per publish call.
    pub max_batch_bytes: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
    /// Flush time at shutdown.
    pub shutdown_flush: Duration,
    /// First retry delay after a fatal publish error.
    pub fatal_retry_initial: Duration,
    /// Largest retry delay after fatal publish errors.
    pub fatal_retry_max: Duration,
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
    /// A required setting is missing.
    #[error("{setting} is not set; {hint}")]
    Missing {
        /// The setting.
        setting: &'static str,
        /// How to set it.
        hint: &'static str,
    },
    /// A setting has an unusable value.
    #[error("{0}")]
    Invalid(String),
    /// No connection string.
    #[error("no Event Hubs connection string: set {ENV_CONNECTION_STRING} or publish.connection_string_file (it is never taken from the command line), or use --publish-file for a local test")]
    NoConnectionString,
    /// The connection string file could not be read or is empty.
    #[error("publish.connection_string_file: {0}")]
    ConnectionStringFile(SecretError),
    /// The Event Hubs settings (connection string, hub name, endpoint) cannot work. The
    /// message names the part and never contains the key.
    #[error("the Event Hubs connection string from {origin} cannot be used: {why}")]
    EventHubs {
        /// Where the string came from (never its value).
        origin: String,
        /// What is wrong and how to fix it.
        why: String,
    },
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

/// Checks an Event Hubs target the way the publisher will use it, without connecting: the
/// connection string's every part ([`tcpulse_eventhub::connection_string`]), the hub name
/// (EntityPath or `publish.event_hub`, and that they agree) and the custom endpoint.
/// Returns remarks that do not stop the agent (a key of an unusual length).
pub fn check_event_hubs(target: &PublishTarget) -> Result<Vec<String>, ConfigError> {
    let PublishTarget::EventHubs {
        connection_string,
        origin,
        event_hub,
        custom_endpoint,
        ..
    } = target
    else {
        return Ok(Vec::new());
    };
    let invalid = |why: String| ConfigError::EventHubs {
        origin: origin.clone(),
        why,
    };
    let parsed =
        tcpulse_eventhub::connection_string::ConnectionString::parse(connection_string.expose())
            .map_err(|e| invalid(e.to_string()))?;
    let options = tcpulse_eventhub::client::ClientOptions {
        custom_endpoint: custom_endpoint.clone(),
        ..Default::default()
    };
    tcpulse_eventhub::client::ClientConfig::from_connection_string(
        connection_string.expose(),
        event_hub.as_deref(),
        options,
    )
    .map_err(|e| {
        let why = e.to_string();
        let why = why
            .strip_prefix("invalid Event Hubs client configuration: ")
            .unwrap_or(&why);
        invalid(why.replace(
            "configure the hub name",
            "set publish.event_hub (TCPULSE_EVENT_HUB)",
        ))
    })?;
    Ok(parsed.notes())
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
                origin, event_hub, ..
            } => format!(
                "Event Hubs (connection string from {origin}{})",
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

/// `[publish]`: a local file, or Event Hubs with the connection string read by the secrets
/// rule (a conflict between file and variable is added to `conflicts`, logged later).
fn resolve_publish(
    a: &PublishArgs,
    f: PublishArgs,
    conflicts: &mut Vec<Conflict>,
) -> Result<PublishConfig, ConfigError> {
    let target = match a.file.clone().or(f.file) {
        Some(path) => PublishTarget::File(path),
        None => {
            let csf = a
                .connection_string_file
                .clone()
                .or(f.connection_string_file);
            let loaded = secret::load(EVENTHUB_SECRET, Some(ENV_CONNECTION_STRING), csf.as_deref())
                .map_err(ConfigError::ConnectionStringFile)?
                .ok_or(ConfigError::NoConnectionString)?;
            conflicts.extend(loaded.conflict().cloned());
            let origin = loaded.origin().to_string();
            let target = PublishTarget::EventHubs {
                connection_string: Secret::new(loaded.into_value()),
                origin,
                event_hub: nonempty(a.event_hub.clone().or(f.event_hub)),
                ca_file: a.ca_file.clone().or(f.ca_file),
                custom_endpoint: nonempty(a.custom_endpoint.clone().or(f.custom_endpoint)),
            };
            check_event_hubs(&target)?;
            target
        }
    };
    Ok(PublishConfig {
        target,
        max_batch_events: f
            .max_batch_events
            .unwrap_or(default_max_batch_events())
            .max(1),
        max_batch_bytes: f
            .max_batch_bytes
            .unwrap_or(default_max_batch_bytes())
            .max(1024),
        retry_initial: f.retry_initial.unwrap_or(default_retry_initial()),
        retry_max: f.retry_max.unwrap_or(default_retry_max()),
        shutdown_flush: f.shutdown_flush.unwrap_or(default_shutdown_flush()),
        fatal_retry_initial: f
            .fatal_retry_initial
            .unwrap_or(default_fatal_retry_initial()),
        fatal_retry_max: f.fatal_retry_max.unwrap_or(default_fatal_retry_max()),
    })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn secret_debug_hides_value() {
        assert_eq!(
            format!("{:?}", Secret::new("SharedAccessKey=abc")),
            "Secret(***)"
        );
    }
}
