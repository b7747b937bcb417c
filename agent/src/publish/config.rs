//! The `[publish]` section: its flags and file table ([`PublishArgs`]), the resolved
//! [`PublishConfig`] and its defaults, and the checks of an Event Hubs target that need no
//! connection ([`check_event_hubs`]).
//!
//! The connection string is never a flag value: it is read from
//! `publish.connection_string_file` or `TCPULSE_EVENTHUB_CONNECTION_STRING` (a configured
//! file wins, with one WARN when both are set: the rule of
//! [`tcpulse_eventhub::cli_support::secret`]), and is kept in a [`Secret`] whose `Debug`
//! prints `***`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tcpulse_eventhub::cli_support::secret::{self, Conflict, SecretError};

use crate::merge::nonempty;

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

/// `[publish]` settings that cannot be used. Every message is one line saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PublishConfigError {
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
}

/// Checks an Event Hubs target the way the publisher will use it, without connecting: the
/// connection string's every part ([`tcpulse_eventhub::connection_string`]), the hub name
/// (EntityPath or `publish.event_hub`, and that they agree) and the custom endpoint.
/// Returns remarks that do not stop the agent (a key of an unusual length).
pub fn check_event_hubs(target: &PublishTarget) -> Result<Vec<String>, PublishConfigError> {
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
    let invalid = |why: String| PublishConfigError::EventHubs {
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

/// `[publish]`: a local file, or Event Hubs with the connection string read by the secrets
/// rule (a conflict between file and variable is added to `conflicts`, logged later). `a`
/// (flags and variables) wins over `f` (the file); the batch and retry settings are file-only.
pub(crate) fn resolve_publish(
    a: &PublishArgs,
    f: PublishArgs,
    conflicts: &mut Vec<Conflict>,
) -> Result<PublishConfig, PublishConfigError> {
    let target = match a.file.clone().or(f.file) {
        Some(path) => PublishTarget::File(path),
        None => {
            let csf = a
                .connection_string_file
                .clone()
                .or(f.connection_string_file);
            let loaded = secret::load(EVENTHUB_SECRET, Some(ENV_CONNECTION_STRING), csf.as_deref())
                .map_err(PublishConfigError::ConnectionStringFile)?
                .ok_or(PublishConfigError::NoConnectionString)?;
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

    #[test]
    fn secret_debug_hides_value() {
        assert_eq!(
            format!("{:?}", Secret::new("SharedAccessKey=abc")),
            "Secret(***)"
        );
    }

    #[test]
    fn a_file_target_needs_no_secret_and_batch_limits_have_floors() {
        let flags = PublishArgs {
            file: Some("/tmp/events.jsonl".into()),
            ..PublishArgs::default()
        };
        let file = PublishArgs {
            max_batch_events: Some(0),
            max_batch_bytes: Some(10),
            ..PublishArgs::default()
        };
        let c = resolve_publish(&flags, file, &mut Vec::new()).unwrap();
        assert_eq!(c.target, PublishTarget::File("/tmp/events.jsonl".into()));
        assert_eq!((c.max_batch_events, c.max_batch_bytes), (1, 1024));
        assert_eq!(c.fatal_retry_max, default_fatal_retry_max());
    }

    /// A configured connection string file wins over the variable, so these hold whatever
    /// the test's environment holds.
    #[test]
    fn the_connection_string_file_is_read_and_checked_without_printing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cs");
        let key = "TOPSECRETKEYTOPSECRETKEYTOPSECRETKEYTOPSECR=";
        std::fs::write(
            &path,
            format!("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={key};EntityPath=hub\n"),
        )
        .unwrap();
        let file = PublishArgs {
            connection_string_file: Some(path.clone()),
            event_hub: Some(" ".into()),
            ..PublishArgs::default()
        };
        let c = resolve_publish(&PublishArgs::default(), file.clone(), &mut Vec::new()).unwrap();
        let PublishTarget::EventHubs {
            connection_string,
            origin,
            event_hub,
            ..
        } = &c.target
        else {
            panic!("{:?}", c.target);
        };
        assert!(connection_string.expose().contains(key));
        assert_eq!(event_hub, &None, "a blank hub name is unset");
        assert!(origin.contains(&path.display().to_string()), "{origin}");
        assert!(!format!("{c:?}").contains(key));
        let other_hub = PublishArgs {
            event_hub: Some("other".into()),
            ..PublishArgs::default()
        };
        let e = resolve_publish(&other_hub, file, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the Event Hubs connection string from file ")
                && e.contains("'other'")
                && !e.contains(key),
            "{e}"
        );
        let missing = PublishArgs {
            connection_string_file: Some(dir.path().join("missing")),
            ..PublishArgs::default()
        };
        let e = resolve_publish(&missing, PublishArgs::default(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("publish.connection_string_file: "), "{e}");
    }
}
