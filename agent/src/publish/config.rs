//! The `[publish]` section: its flags and file table ([`PublishArgs`]), the resolved
//! [`PublishConfig`] and its defaults, and the checks of an Event Hubs target that need no
//! connection ([`check_event_hubs`]).
//!
//! The connection string is never a flag value: it is read from
//! `publish.connection_string_file` or `TCPULSE_EVENTHUB_CONNECTION_STRING` (a configured
//! file wins, with one WARN when both are set: the rule of
//! [`tcpulse_eventhub::cli_support::secret`]), and is kept in a [`Secret`] whose `Debug`
//! prints `***`. The HTTP proxy's password likewise comes only from
//! `publish.proxy_password_file` or `TCPULSE_EVENTHUB_PROXY_PASSWORD`; the Event Hubs client
//! reads it when it connects and never keeps it in the config.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tcpulse_eventhub::cli_support::secret::{self, Conflict, SecretError};
use tcpulse_eventhub::client::ClientConfig;
use tcpulse_eventhub::client::{ProxyOptions, Transport};
use tcpulse_eventhub::identity::{AuthMethod, CredentialStats, IdentityConfig};

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
    /// Event hub name, when the connection string has no EntityPath (required with the
    /// Entra ID methods). Default: none.
    #[arg(long, env = "TCPULSE_EVENT_HUB", value_name = "NAME")]
    pub event_hub: Option<String>,
    /// How to authenticate to Event Hubs: connection_string (a SAS key, read from
    /// connection_string_file or TCPULSE_EVENTHUB_CONNECTION_STRING), managed_identity (the
    /// VM's identity: no secret on the machine; give the role "Azure Event Hubs Data Sender"
    /// on the hub), client_secret, client_certificate or workload_identity (service
    /// principals, settings in [publish.identity]). Default: connection_string.
    #[arg(
        long = "eventhub-auth",
        env = "TCPULSE_EVENTHUB_AUTH",
        value_name = "METHOD"
    )]
    pub auth: Option<AuthMethod>,
    /// Event Hubs namespace host (<name>.servicebus.windows.net) for the Entra ID methods;
    /// with a connection string, its Endpoint names it. Default: none.
    #[arg(
        long = "eventhub-namespace",
        env = "TCPULSE_EVENTHUB_NAMESPACE",
        value_name = "HOST"
    )]
    pub namespace: Option<String>,
    /// Entra ID settings: tenant_id, client_id (a user-assigned identity or the service
    /// principal), object_id, resource_id, client_secret_file, client_certificate_file,
    /// federated_token_file, authority_host, imds_endpoint; each falls back to the variable
    /// the Azure SDKs read (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, …).
    #[command(flatten)]
    #[serde(default)]
    pub identity: IdentityConfig,
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
    /// How to reach Event Hubs: amqp (AMQP over TLS, port 5671), websocket (AMQP over a
    /// WebSocket, port 443: through firewalls and HTTP proxies that pass only HTTPS) or auto
    /// (5671; 443 when 5671 is refused or silent for 5 s, logged). Default: amqp.
    #[arg(
        long = "eventhub-transport",
        env = "TCPULSE_EVENTHUB_TRANSPORT",
        value_name = "amqp|websocket|auto"
    )]
    pub transport: Option<Transport>,
    /// Dial this host:port for WebSocket connections instead of the namespace host on
    /// port 443 (a private endpoint, or tcpulse-hub's --ws-listen). Default: none.
    #[arg(
        long = "eventhub-websocket-endpoint",
        env = "TCPULSE_EVENTHUB_WEBSOCKET_ENDPOINT",
        value_name = "HOST:PORT"
    )]
    pub websocket_endpoint: Option<String>,
    /// HTTP proxy (http://host:port) that tunnels with CONNECT, for both transports; "none"
    /// ignores HTTPS_PROXY too. Default: HTTPS_PROXY (WebSocket only), except hosts in
    /// NO_PROXY.
    #[arg(
        long = "eventhub-proxy",
        env = "TCPULSE_EVENTHUB_PROXY",
        value_name = "URL"
    )]
    pub proxy: Option<String>,
    /// User name for Basic authentication to the proxy; the password comes from
    /// proxy_password_file or TCPULSE_EVENTHUB_PROXY_PASSWORD. Default: none.
    #[arg(
        long = "eventhub-proxy-user",
        env = "TCPULSE_EVENTHUB_PROXY_USER",
        value_name = "NAME"
    )]
    pub proxy_username: Option<String>,
    /// File whose first line is the proxy password; it wins over the variable
    /// TCPULSE_EVENTHUB_PROXY_PASSWORD (one WARN when both are set). Default: none.
    #[arg(
        long = "eventhub-proxy-password-file",
        env = "TCPULSE_EVENTHUB_PROXY_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub proxy_password_file: Option<PathBuf>,
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
#[allow(clippy::large_enum_variant)] // one per process: size does not matter
pub enum PublishTarget {
    /// Azure Event Hubs (or the emulator).
    EventHubs {
        /// How the agent authenticates.
        auth: EventHubsAuth,
        /// Event hub name when the string has no EntityPath.
        event_hub: Option<String>,
        /// Extra CA file to trust.
        ca_file: Option<PathBuf>,
        /// Host:port to dial instead of the namespace.
        custom_endpoint: Option<String>,
        /// AMQP, WebSocket or auto.
        transport: Transport,
        /// Host:port to dial for WebSocket instead of the namespace on 443.
        websocket_endpoint: Option<String>,
        /// The HTTP proxy (its password is read when connecting, never kept here).
        proxy: ProxyOptions,
    },
    /// JSON lines in a local file.
    File(PathBuf),
}

/// How the agent authenticates to Event Hubs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventHubsAuth {
    /// A connection string with a shared access key or signature.
    ConnectionString {
        /// The string.
        value: Secret,
        /// Where it came from (for messages; never the value).
        origin: String,
    },
    /// An Entra ID credential.
    Entra {
        /// Which kind.
        method: AuthMethod,
        /// The namespace host.
        namespace: String,
        /// Its settings (file paths and ids, no secret values).
        identity: IdentityConfig,
    },
}

impl EventHubsAuth {
    /// For messages: `connection string from <origin>` or `managed_identity on <ns>`.
    pub fn describe(&self) -> String {
        match self {
            EventHubsAuth::ConnectionString { origin, .. } => {
                format!("connection string from {origin}")
            }
            EventHubsAuth::Entra {
                method, namespace, ..
            } => format!("Entra ID {method} on {namespace}"),
        }
    }
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
    /// The Entra ID settings cannot work (a missing tenant, hub or namespace, an unreadable
    /// certificate). Never contains a secret.
    #[error("the Event Hubs Entra ID settings cannot be used: {0}")]
    Entra(String),
    /// The transport settings (transport, WebSocket endpoint, proxy and its password)
    /// cannot work. Never contains the password.
    #[error("the Event Hubs transport settings cannot be used: {0}")]
    Transport(String),
}

/// A client config and, with Entra ID, its credential's numbers.
pub type EventHubsClient = (ClientConfig, Option<Arc<CredentialStats>>);

/// The client config of an Event Hubs target with `options`: from the connection string,
/// or from the Entra ID credential (built, not used: nothing connects). `Err` is the reason
/// without the client's prefix, naming the part to fix.
pub fn client_config(
    target: &PublishTarget,
    options: tcpulse_eventhub::client::ClientOptions,
) -> Result<Option<EventHubsClient>, PublishConfigError> {
    let PublishTarget::EventHubs {
        auth, event_hub, ..
    } = target
    else {
        return Ok(None);
    };
    let unprefixed = |e: tcpulse_eventhub::client::ConnectError| {
        let why = e.to_string();
        why.strip_prefix("invalid Event Hubs client configuration: ")
            .unwrap_or(&why)
            .replace(
                "configure the hub name",
                "set publish.event_hub (TCPULSE_EVENT_HUB)",
            )
    };
    let config = match auth {
        EventHubsAuth::ConnectionString { value, origin } => {
            let config =
                ClientConfig::from_connection_string(value.expose(), event_hub.as_deref(), options)
                    .map_err(|e| PublishConfigError::EventHubs {
                        origin: origin.clone(),
                        why: unprefixed(e),
                    })?;
            (config, None)
        }
        EventHubsAuth::Entra {
            method,
            namespace,
            identity,
        } => {
            let credential = identity
                .credential(*method, &|k| std::env::var(k).ok())
                .map_err(|e| PublishConfigError::Entra(e.to_string()))?
                .ok_or_else(|| PublishConfigError::Entra("no credential".into()))?;
            let hub = event_hub.as_deref().unwrap_or_default();
            let stats = credential.stats();
            let config = ClientConfig::from_credential(namespace, hub, credential, options)
                .map_err(|e| PublishConfigError::Entra(unprefixed(e)))?;
            (config, Some(stats))
        }
    };
    Ok(Some(config))
}

/// Checks an Event Hubs target the way the publisher will use it, without connecting: the
/// connection string's every part ([`tcpulse_eventhub::connection_string`]) or the Entra ID
/// settings, the hub name (EntityPath or `publish.event_hub`, and that they agree) and the
/// custom endpoint, then the transport settings on their own so an error names them.
/// Returns remarks that do not stop the agent (a key of an unusual length).
pub fn check_event_hubs(target: &PublishTarget) -> Result<Vec<String>, PublishConfigError> {
    let PublishTarget::EventHubs {
        auth,
        custom_endpoint,
        transport,
        websocket_endpoint,
        proxy,
        ..
    } = target
    else {
        return Ok(Vec::new());
    };
    let mut notes = Vec::new();
    if let EventHubsAuth::ConnectionString { value, origin } = auth {
        let parsed = tcpulse_eventhub::connection_string::ConnectionString::parse(value.expose())
            .map_err(|e| PublishConfigError::EventHubs {
            origin: origin.clone(),
            why: e.to_string(),
        })?;
        notes = parsed.notes();
    }
    let options = tcpulse_eventhub::client::ClientOptions {
        custom_endpoint: custom_endpoint.clone(),
        ..Default::default()
    };
    client_config(target, options.clone())?;
    let options = tcpulse_eventhub::client::ClientOptions {
        transport: *transport,
        websocket_endpoint: websocket_endpoint.clone(),
        proxy: proxy.clone(),
        ..options
    };
    client_config(target, options).map_err(|e| match e {
        PublishConfigError::EventHubs { why, .. } | PublishConfigError::Entra(why) => {
            PublishConfigError::Transport(why)
        }
        other => other,
    })?;
    Ok(notes)
}

/// The `auth` of an Event Hubs target: the connection string read by the secrets rule (a
/// file/variable conflict is added to `conflicts`), or the Entra ID settings.
fn resolve_auth(
    a: &PublishArgs,
    f: &PublishArgs,
    conflicts: &mut Vec<Conflict>,
) -> Result<EventHubsAuth, PublishConfigError> {
    let method = a.auth.or(f.auth).unwrap_or_default();
    if method != AuthMethod::ConnectionString {
        let namespace = nonempty(a.namespace.clone().or(f.namespace.clone())).ok_or_else(|| {
            PublishConfigError::Entra(format!(
                "auth = \"{method}\" needs the namespace: set publish.namespace (--eventhub-namespace, TCPULSE_EVENTHUB_NAMESPACE)"
            ))
        })?;
        return Ok(EventHubsAuth::Entra {
            method,
            namespace,
            identity: a.identity.clone().or(f.identity.clone()),
        });
    }
    let csf = a
        .connection_string_file
        .clone()
        .or(f.connection_string_file.clone());
    let loaded = secret::load(EVENTHUB_SECRET, Some(ENV_CONNECTION_STRING), csf.as_deref())
        .map_err(PublishConfigError::ConnectionStringFile)?
        .ok_or(PublishConfigError::NoConnectionString)?;
    conflicts.extend(loaded.conflict().cloned());
    let origin = loaded.origin().to_string();
    Ok(EventHubsAuth::ConnectionString {
        value: Secret::new(loaded.into_value()),
        origin,
    })
}

/// `[publish]`: a local file, or Event Hubs with the connection string read by the secrets
/// rule (a conflict between file and variable is added to `conflicts`, logged later). `a`
/// (flags and variables) wins over `f` (the file); the batch and retry settings are file-only.
pub(crate) fn resolve_publish(
    a: &PublishArgs,
    f: PublishArgs,
    conflicts: &mut Vec<Conflict>,
) -> Result<PublishConfig, PublishConfigError> {
    let target = match a.file.clone().or(f.file.clone()) {
        Some(path) => PublishTarget::File(path),
        None => {
            let auth = resolve_auth(a, &f, conflicts)?;
            let target = PublishTarget::EventHubs {
                auth,
                event_hub: nonempty(a.event_hub.clone().or(f.event_hub)),
                ca_file: a.ca_file.clone().or(f.ca_file),
                custom_endpoint: nonempty(a.custom_endpoint.clone().or(f.custom_endpoint)),
                transport: a.transport.or(f.transport).unwrap_or_default(),
                websocket_endpoint: nonempty(a.websocket_endpoint.clone().or(f.websocket_endpoint)),
                proxy: ProxyOptions {
                    url: nonempty(a.proxy.clone().or(f.proxy)),
                    username: nonempty(a.proxy_username.clone().or(f.proxy_username)),
                    password_file: a.proxy_password_file.clone().or(f.proxy_password_file),
                    ..ProxyOptions::default()
                },
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

    #[test]
    fn transport_and_proxy_settings_reach_the_target_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let cs = dir.path().join("cs");
        std::fs::write(
            &cs,
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=k;EntityPath=hub\n",
        )
        .unwrap();
        let pw = dir.path().join("proxy-password");
        std::fs::write(&pw, "PROXYSECRET\n").unwrap();
        let file = PublishArgs {
            connection_string_file: Some(cs),
            transport: Some(Transport::Amqp),
            websocket_endpoint: Some("10.0.0.4:443".into()),
            proxy: Some("http://proxy.corp:3128".into()),
            proxy_username: Some("agent".into()),
            proxy_password_file: Some(pw),
            ..PublishArgs::default()
        };
        let flags = PublishArgs {
            transport: Some(Transport::WebSocket),
            ..PublishArgs::default()
        };
        let c = resolve_publish(&flags, file.clone(), &mut Vec::new()).unwrap();
        let PublishTarget::EventHubs {
            transport,
            websocket_endpoint,
            proxy,
            ..
        } = &c.target
        else {
            panic!("{:?}", c.target);
        };
        assert_eq!(
            *transport,
            Transport::WebSocket,
            "a flag wins over the file"
        );
        assert_eq!(websocket_endpoint.as_deref(), Some("10.0.0.4:443"));
        assert_eq!(proxy.url.as_deref(), Some("http://proxy.corp:3128"));
        assert_eq!(proxy.username.as_deref(), Some("agent"));
        assert!(!format!("{c:?}").contains("PROXYSECRET"));
        let missing = PublishArgs {
            proxy_password_file: Some(dir.path().join("missing")),
            ..file
        };
        let e = resolve_publish(&flags, missing, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the Event Hubs transport settings cannot be used: proxy.password_file"),
            "{e}"
        );
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
            auth:
                EventHubsAuth::ConnectionString {
                    value: connection_string,
                    origin,
                },
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
