//! Client configuration: where to connect, how to authenticate, timeouts and retries.
//!
//! [`ClientOptions`] is the user-facing part (it deserializes from the agent's and the
//! collector's config files); [`ClientConfig`] adds the namespace, hub and credential, usually
//! from a connection string.

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use serde::Deserialize;

use super::{
    error::ConnectError,
    proxy::ProxyOptions,
    token::{
        default_token_lifetime_secs, EntraTokenSource, FixedSignature, SasKeySource, TokenSource,
    },
    transport::Transport,
};
use crate::connection_string::{ConnectionString, Credential};

/// Default TCP+TLS+AMQP open timeout, seconds.
pub const fn default_connect_timeout_secs() -> u64 {
    30
}
/// Default timeout of one operation (attach, put-token, send outcome, management call), seconds.
pub const fn default_operation_timeout_secs() -> u64 {
    60
}
/// Default AMQP idle timeout we announce, seconds (.NET uses 60 s).
pub const fn default_idle_timeout_secs() -> u64 {
    60
}
/// Default max frame size we offer, bytes (the Python SDK's; the service may lower it).
pub const fn default_max_frame_bytes() -> u32 {
    1_048_576
}
/// Default number of retries after the first attempt (the Python SDK's `retry_total`).
pub const fn default_max_retries() -> u32 {
    3
}
/// Default first backoff, milliseconds (the Python SDK's 0.8 s).
pub const fn default_initial_backoff_ms() -> u64 {
    800
}
/// Default backoff ceiling, milliseconds.
pub const fn default_max_backoff_ms() -> u64 {
    60_000
}
const fn default_true() -> bool {
    true
}

/// How transient failures are retried: exponential backoff (factor 2, ±10 % jitter,
/// [`crate::backoff`]), a bounded number of times.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryOptions {
    /// Retries after the first attempt; 0 disables retrying. Default 3.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First delay, milliseconds. Default 800.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Largest delay, milliseconds. Default 60,000.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            max_retries: default_max_retries(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

impl RetryOptions {
    /// A fresh backoff schedule (never gives up by elapsed time: the count bounds it).
    pub(crate) fn backoff(&self) -> crate::backoff::ExponentialBackoff {
        crate::backoff::ExponentialBackoff::new(
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
        )
        .with_jitter(0.1)
    }
}

/// Transport, security and timing settings. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClientOptions {
    /// Connect to this `host:port` (or `sb://host:port`, `amqps://host:port`) instead of the
    /// namespace host: private endpoints, a local hub. Audiences, the AMQP open hostname and
    /// (unless `tls_server_name` is set) the TLS server name still use the namespace.
    /// Default: none (dial the namespace host, port 5671, or the port in the endpoint).
    #[serde(default)]
    pub custom_endpoint: Option<String>,
    /// TLS server name (SNI and certificate check). Default: the namespace host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// How to reach the service: `amqp` (AMQP over TLS, port 5671), `websocket` (AMQP over a
    /// WebSocket on port 443, path `/$servicebus/websocket`: through firewalls and HTTP
    /// proxies that pass only HTTPS) or `auto` (try 5671; when it is refused or silent for
    /// 5 s, use 443, log the choice and keep it for reconnects until it fails).
    /// Default: `amqp`.
    #[serde(default)]
    pub transport: Transport,
    /// Dial this `host:port` for WebSocket connections instead of the namespace host (or
    /// `custom_endpoint`'s host) on port 443. Audiences, the TLS server name and the
    /// WebSocket `Host` still use the namespace. Default: none.
    #[serde(default)]
    pub websocket_endpoint: Option<String>,
    /// HTTP CONNECT proxy. Default: `HTTPS_PROXY` / `NO_PROXY` from the environment, for
    /// WebSocket connections only.
    #[serde(default)]
    pub proxy: ProxyOptions,
    /// A PEM file of extra CA certificates trusted besides the operating system's trust store
    /// (a private CA, a TLS-inspecting proxy's CA, tcpulse-hub's `ca.pem`). Default none.
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    /// Trust the operating system's trust store (the platform verifier: Windows certificate
    /// store, macOS keychain, the system CA bundle on Linux); false trusts `extra_ca_file`
    /// alone. Default true.
    #[serde(default = "default_true")]
    pub trust_builtin_roots: bool,
    /// TCP connect + TLS + AMQP open + session, seconds. Default 30.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Attach, put-token, send outcome or management call, seconds. Default 60.
    #[serde(default = "default_operation_timeout_secs")]
    pub operation_timeout_secs: u64,
    /// AMQP idle timeout announced to the service, seconds; the peer sends heartbeats at
    /// half of it. 0 disables. Default 60.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Max AMQP frame size offered, bytes. Default 1 MiB.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: u32,
    /// Lifetime of SAS tokens signed from a key, seconds; renewed when a third of it (at most
    /// 5 min) is left. Default 3600.
    #[serde(default = "default_token_lifetime_secs")]
    pub token_lifetime_secs: u64,
    /// Retries of transient failures.
    #[serde(default)]
    pub retry: RetryOptions,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            custom_endpoint: None,
            tls_server_name: None,
            transport: Transport::default(),
            websocket_endpoint: None,
            proxy: ProxyOptions::default(),
            extra_ca_file: None,
            trust_builtin_roots: true,
            connect_timeout_secs: default_connect_timeout_secs(),
            operation_timeout_secs: default_operation_timeout_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            max_frame_bytes: default_max_frame_bytes(),
            token_lifetime_secs: default_token_lifetime_secs(),
            retry: RetryOptions::default(),
        }
    }
}

impl ClientOptions {
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    pub(crate) fn operation_timeout(&self) -> Duration {
        Duration::from_secs(self.operation_timeout_secs.max(1))
    }
}

/// Everything needed to reach one event hub.
#[derive(Clone)]
pub struct ClientConfig {
    /// Namespace host, e.g. `ns.servicebus.windows.net` (no port).
    pub host: String,
    /// Port from the endpoint, if any.
    pub port: Option<u16>,
    /// The event hub.
    pub hub: String,
    /// Where tokens come from.
    pub credential: Arc<dyn TokenSource>,
    /// `UseDevelopmentEmulator=true`: plain AMQP (no TLS), default port 5672.
    pub use_development_emulator: bool,
    /// Transport, security and timing settings.
    pub options: ClientOptions,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("hub", &self.hub)
            .field("credential", &self.credential)
            .field("use_development_emulator", &self.use_development_emulator)
            .field("options", &self.options)
            .finish()
    }
}

/// Where to dial and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dial {
    pub host: String,
    pub port: u16,
    /// TLS server name; `None` for plain AMQP.
    pub tls_name: Option<String>,
}

impl Dial {
    pub(crate) fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Splits `host[:port]`, `[v6][:port]` or a URL with such an authority.
fn parse_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let rest = match s.find("://") {
        Some(i) => &s[i + 3..],
        None => s,
    };
    let authority = rest.split('/').next().unwrap_or_default().trim();
    if authority.is_empty() {
        return Err(format!("custom_endpoint '{s}' has no host"));
    }
    let bad_port = || format!("custom_endpoint '{s}' has an invalid port");
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("custom_endpoint '{s}' has an unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad_port())?),
            None => None,
        };
        return Ok((h.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), Some(p.parse().map_err(|_| bad_port())?))),
        None => Ok((authority.to_string(), None)),
    }
}

impl ClientConfig {
    /// Builds a config from a connection string. The hub is `EntityPath`, or `hub` when the
    /// string has none (a `hub` that contradicts `EntityPath` is an error).
    pub fn from_connection_string(
        connection_string: &str,
        hub: Option<&str>,
        options: ClientOptions,
    ) -> Result<ClientConfig, ConnectError> {
        let cs = ConnectionString::parse(connection_string)
            .map_err(|e| ConnectError::Config(e.to_string()))?;
        let hub = match (&cs.entity_path, hub) {
            (Some(e), Some(h)) if e != h => {
                return Err(ConnectError::Config(format!(
                    "the connection string names hub '{e}' (EntityPath) but '{h}' was asked for"
                )))
            }
            (Some(e), _) => e.clone(),
            (None, Some(h)) => h.to_string(),
            (None, None) => {
                return Err(ConnectError::Config(
                    "no event hub: add EntityPath=<hub> to the connection string or configure the hub name".into(),
                ))
            }
        };
        let credential: Arc<dyn TokenSource> = match &cs.credential {
            Credential::Key { key_name, key } => Arc::new(SasKeySource::new(
                key_name.clone(),
                key.clone(),
                Duration::from_secs(options.token_lifetime_secs),
            )),
            Credential::Signature(sig) => Arc::new(FixedSignature::new(sig.clone())?),
        };
        let config = ClientConfig {
            host: cs.host,
            port: cs.port,
            hub,
            credential,
            use_development_emulator: cs.use_development_emulator,
            options,
        };
        config.dial()?;
        config.check_transport()?;
        Ok(config)
    }

    /// A config for an Entra ID credential: `namespace` is the namespace host
    /// (`<name>.servicebus.windows.net`, optionally `:port` or an `sb://` URL), `hub` the
    /// event hub; tokens are put as `jwt` ([`EntraTokenSource`]).
    pub fn from_credential(
        namespace: &str,
        hub: &str,
        credential: Arc<dyn crate::identity::TokenCredential>,
        options: ClientOptions,
    ) -> Result<ClientConfig, ConnectError> {
        let (host, port) = parse_host_port(namespace)
            .map_err(|e| ConnectError::Config(e.replace("custom_endpoint", "namespace")))?;
        if host.is_empty() || !host.contains('.') && host != "localhost" {
            return Err(ConnectError::Config(format!(
                "namespace '{namespace}' is not a host name; give the fully qualified namespace, e.g. <name>.servicebus.windows.net"
            )));
        }
        if hub.trim().is_empty() {
            return Err(ConnectError::Config(
                "no event hub: configure the hub name".into(),
            ));
        }
        let config = ClientConfig {
            host,
            port,
            hub: hub.trim().to_string(),
            credential: Arc::new(EntraTokenSource::new(credential)),
            use_development_emulator: false,
            options,
        };
        config.dial()?;
        config.check_transport()?;
        Ok(config)
    }

    /// `host[:port]` as used in audiences and link addresses.
    pub fn namespace(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// The CBS audience (and SAS resource) for a path below the hub, e.g. `""` for the hub
    /// itself or `/consumergroups/$default` for a consumer group.
    pub(crate) fn audience(&self, suffix: &str) -> String {
        format!("sb://{}/{}{suffix}", self.namespace(), self.hub)
    }

    pub(crate) fn dial(&self) -> Result<Dial, ConnectError> {
        let default_port = if self.use_development_emulator {
            5672
        } else {
            5671
        };
        let (host, port) = match &self.options.custom_endpoint {
            Some(ep) => {
                let (h, p) = parse_host_port(ep).map_err(ConnectError::Config)?;
                (h, p.unwrap_or(default_port))
            }
            None => (self.host.clone(), self.port.unwrap_or(default_port)),
        };
        let tls_name = (!self.use_development_emulator).then(|| {
            self.options
                .tls_server_name
                .clone()
                .unwrap_or_else(|| self.host.trim_matches(['[', ']']).to_string())
        });
        Ok(Dial {
            host,
            port,
            tls_name,
        })
    }

    /// Where WebSocket connections dial: `websocket_endpoint`, else `custom_endpoint`'s
    /// host or the namespace host, on port 443 unless given.
    pub(crate) fn websocket_dial(&self) -> Result<Dial, ConnectError> {
        let amqp = self.dial()?;
        let (host, port) = match &self.options.websocket_endpoint {
            Some(ep) => {
                let (h, p) = parse_host_port(ep).map_err(|e| {
                    ConnectError::Config(e.replace("custom_endpoint", "websocket_endpoint"))
                })?;
                (h, p.unwrap_or(WEBSOCKET_PORT))
            }
            None => (amqp.host, WEBSOCKET_PORT),
        };
        Ok(Dial {
            host,
            port,
            tls_name: amqp.tls_name,
        })
    }

    /// Checks the transport settings without connecting: the WebSocket endpoint, that
    /// WebSocket runs over TLS, and the proxy (its URL, its password file).
    pub(crate) fn check_transport(&self) -> Result<(), ConnectError> {
        let var = |k: &str| std::env::var(k).ok();
        if self.options.transport != Transport::Amqp {
            if self.use_development_emulator {
                return Err(ConnectError::Config(format!(
                    "transport \"{}\" needs TLS, but the connection string has UseDevelopmentEmulator=true (plain AMQP): use transport = \"amqp\"",
                    self.options.transport
                )));
            }
            let ws = self.websocket_dial()?;
            self.options.proxy.resolve(&ws.host, true, &var)?;
        }
        if self.options.transport != Transport::WebSocket {
            let amqp = self.dial()?;
            self.options.proxy.resolve(&amqp.host, false, &var)?;
        }
        Ok(())
    }
}

/// The port of AMQP over WebSockets (HTTPS).
pub(crate) const WEBSOCKET_PORT: u16 = 443;

#[cfg(test)]
mod tests {
    use super::*;

    const CS: &str = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=TOPSECRET;EntityPath=hub";

    #[test]
    fn connection_string_gives_hub_namespace_and_tls_on_5671() {
        let c = ClientConfig::from_connection_string(CS, None, ClientOptions::default()).unwrap();
        assert_eq!(c.hub, "hub");
        assert_eq!(c.audience(""), "sb://ns.servicebus.windows.net/hub");
        let d = c.dial().unwrap();
        assert_eq!(d.endpoint(), "ns.servicebus.windows.net:5671");
        assert_eq!(d.tls_name.as_deref(), Some("ns.servicebus.windows.net"));
        assert!(!format!("{c:?}").contains("TOPSECRET"));
    }

    #[test]
    fn custom_endpoint_changes_only_the_dialled_address() {
        let opts = ClientOptions {
            custom_endpoint: Some("sb://10.0.0.4:15671".into()),
            ..ClientOptions::default()
        };
        let c = ClientConfig::from_connection_string(CS, Some("hub"), opts).unwrap();
        let d = c.dial().unwrap();
        assert_eq!(d.endpoint(), "10.0.0.4:15671");
        assert_eq!(d.tls_name.as_deref(), Some("ns.servicebus.windows.net"));
        assert_eq!(c.audience(""), "sb://ns.servicebus.windows.net/hub");
        assert_eq!(
            parse_host_port("[::1]:5671").unwrap(),
            ("::1".into(), Some(5671))
        );
        assert!(parse_host_port("h:notaport").is_err());
    }

    #[test]
    fn emulator_mode_is_plain_on_5672_and_hub_mismatch_is_an_error() {
        let c = ClientConfig::from_connection_string(
            "Endpoint=sb://localhost;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
            Some("h"),
            ClientOptions::default(),
        )
        .unwrap();
        let d = c.dial().unwrap();
        assert_eq!((d.port, d.tls_name), (5672, None));
        let e = ClientConfig::from_connection_string(CS, Some("other"), ClientOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("EntityPath"));
        let e = ClientConfig::from_connection_string(
            "Endpoint=sb://h/;SharedAccessKeyName=a;SharedAccessKey=b",
            None,
            ClientOptions::default(),
        )
        .unwrap_err();
        assert!(e.is_fatal());
    }

    #[test]
    fn websocket_dials_443_on_the_namespace_or_custom_host_unless_given_a_port() {
        let ws = |opts: ClientOptions| {
            ClientConfig::from_connection_string(CS, None, opts)
                .unwrap()
                .websocket_dial()
                .unwrap()
        };
        let d = ws(ClientOptions::default());
        assert_eq!(d.endpoint(), "ns.servicebus.windows.net:443");
        assert_eq!(d.tls_name.as_deref(), Some("ns.servicebus.windows.net"));
        let d = ws(ClientOptions {
            custom_endpoint: Some("10.0.0.4:5671".into()),
            ..ClientOptions::default()
        });
        assert_eq!(d.endpoint(), "10.0.0.4:443");
        let d = ws(ClientOptions {
            websocket_endpoint: Some("127.0.0.1:8443".into()),
            ..ClientOptions::default()
        });
        assert_eq!(d.endpoint(), "127.0.0.1:8443");
        assert_eq!(d.tls_name.as_deref(), Some("ns.servicebus.windows.net"));
        let e = ClientConfig::from_connection_string(
            CS,
            None,
            ClientOptions {
                transport: Transport::WebSocket,
                websocket_endpoint: Some("h:nope".into()),
                ..ClientOptions::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("websocket_endpoint"), "{e}");
    }

    #[test]
    fn websocket_and_auto_need_tls() {
        for transport in [Transport::WebSocket, Transport::Auto] {
            let e = ClientConfig::from_connection_string(
                "Endpoint=sb://localhost;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=true",
                Some("h"),
                ClientOptions {
                    transport,
                    ..ClientOptions::default()
                },
            )
            .unwrap_err();
            assert!(e.to_string().contains("UseDevelopmentEmulator"), "{e}");
        }
        let o: ClientOptions = serde_json::from_str(
            r#"{"transport":"websocket","proxy":{"url":"http://p:3128","username":"u"}}"#,
        )
        .unwrap();
        assert_eq!(o.transport, Transport::WebSocket);
        assert_eq!(
            o.proxy.password_env,
            crate::client::DEFAULT_PROXY_PASSWORD_ENV
        );
    }

    #[test]
    fn options_deserialize_with_defaults_and_reject_unknown_fields() {
        let o: ClientOptions = serde_json::from_str(r#"{"custom_endpoint":"h:1"}"#).unwrap();
        assert_eq!(o.retry, RetryOptions::default());
        assert_eq!(o.connect_timeout_secs, 30);
        assert!(serde_json::from_str::<ClientOptions>(r#"{"nope":1}"#).is_err());
    }
}
