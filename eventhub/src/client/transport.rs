//! How a connection reaches the service, below AMQP: TLS first on port 5671 (the
//! "alternative TLS establishment" Azure speaks: no AMQP TLS header, the AMQP header inside
//! TLS), or AMQP over a WebSocket (TLS with the same connector and server name, then the
//! upgrade on `/$servicebus/websocket`) to port 443; either one direct or tunnelled through
//! an HTTP CONNECT proxy ([`super::proxy`]). Plain TCP only in development-emulator mode.
//!
//! [`Transport::Auto`] tries the AMQP port first and falls back to the WebSocket when that
//! port is refused or does not complete TCP and TLS within 5 s. The choice is remembered per
//! pair of endpoints for the life of the process, so reconnects (and the other clients of
//! the same namespace) go straight to it, until a connection over it fails; then the next
//! connect probes again.
//!
//! # Protocol facts relied on, and where they come from
//!
//! - Path and port: `wss://<namespace>:443/$servicebus/websocket` (azure-eventhub 5.15.1
//!   `_configuration.py` and `_pyamqp/constants.py` `WEBSOCKET_PORT = 443`; .NET
//!   `AmqpConnectionScope.WebSocketsPathSuffix`; .NET, Go and Rust append a `/`, which the
//!   service also takes). The WebSocket binding tunnels the same AMQP as 5671 (Microsoft's
//!   AMQP guide, quoted in "Open outbound port requirements", Service Bus blog).
//! - Subprotocol: the Python SDK sends `AMQPWSB10`; fe2o3-amqp-ws 0.18.0 can only send
//!   `amqp` (`native.rs` `map_amqp_websocket_request`), which the service accepts:
//!   Microsoft's Rust SDK (`azure_core_amqp` 1.2.0-beta.1 `fe2o3/connection.rs`) reaches
//!   Event Hubs with this crate, and amqpnetlite's listener accepts both.
//! - Proxies: the SDKs put only the WebSocket path through a proxy (.NET: "A proxy cannot be
//!   used for communication over TCP"; Python's `http_proxy` forces WebSockets), which is why
//!   `HTTPS_PROXY` applies to the WebSocket only; a proxy set in the config carries both.
//!
//! Checked here against `tcpulse-hub` and the official Python SDK (both subprotocols,
//! through tinyproxy), not against Azure.
//!
//! Knows nothing of AMQP sessions, links or tokens: it hands a byte stream to
//! `connection`.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{LazyLock, Mutex},
    time::Duration,
};

use fe2o3_amqp_ws::{native::TokioWebSocketStream, WebSocketStream};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use super::{
    config::{ClientConfig, Dial},
    error::{connect_io_error, ConnectError},
    proxy,
};

/// The HTTP path of AMQP over WebSockets on Event Hubs.
pub const WEBSOCKET_PATH: &str = "/$servicebus/websocket";
/// How long `auto` waits for the AMQP port before it uses the WebSocket.
pub const AUTO_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How connections reach the service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// AMQP over TLS on port 5671 (directly, or through a configured proxy).
    #[default]
    Amqp,
    /// AMQP over a WebSocket on port 443, path `/$servicebus/websocket` (through an HTTP
    /// proxy when one is configured or in `HTTPS_PROXY`).
    #[serde(rename = "websocket")]
    WebSocket,
    /// The AMQP port first; the WebSocket when that port is refused or silent for 5 s.
    Auto,
}

impl Transport {
    /// The name used in configs and logs: `amqp`, `websocket`, `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Amqp => "amqp",
            Transport::WebSocket => "websocket",
            Transport::Auto => "auto",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "amqp" | "amqps" => Ok(Transport::Amqp),
            "websocket" | "websockets" | "ws" | "wss" => Ok(Transport::WebSocket),
            "auto" => Ok(Transport::Auto),
            other => Err(format!(
                "unknown transport {other:?}: use \"amqp\", \"websocket\" or \"auto\""
            )),
        }
    }
}

/// The byte stream one AMQP connection runs on; AMQP goes straight on it.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Plain TCP (development-emulator mode only).
    Plain(TcpStream),
    /// TLS over TCP (or over a proxy tunnel).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A WebSocket over TLS.
    WebSocket(Box<WsStream>),
}

/// AMQP over a WebSocket over TLS over TCP.
pub(crate) type WsStream =
    WebSocketStream<TokioWebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>;

/// What a connection was opened with.
#[derive(Debug, Clone)]
pub(crate) struct Chosen {
    /// AMQP or WebSocket (never `Auto`).
    pub(crate) transport: Transport,
    /// The service `host:port` dialled.
    pub(crate) endpoint: String,
    /// The proxy's `host:port`, when tunnelled.
    pub(crate) proxy: Option<String>,
    /// The `auto` memory this choice is kept under.
    memo: Option<String>,
}

impl Chosen {
    /// Forgets an `auto` choice after the connection over it failed: the next connect
    /// probes the AMQP port again.
    pub(crate) fn forget(&self) {
        if let Some(key) = &self.memo {
            if let Ok(mut m) = AUTO_CHOICES.lock() {
                m.remove(key);
            }
        }
    }
}

/// `auto` choices: `<amqp endpoint>|<websocket endpoint>` → the transport that worked.
static AUTO_CHOICES: LazyLock<Mutex<HashMap<String, Transport>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn remembered(key: &str) -> Option<Transport> {
    AUTO_CHOICES.lock().ok()?.get(key).copied()
}

fn remember(key: &str, transport: Transport) {
    if let Ok(mut m) = AUTO_CHOICES.lock() {
        m.insert(key.to_string(), transport);
    }
}

/// Opens the byte stream `config.options.transport` asks for. `tls` is the connector for
/// the service (none in development-emulator mode, where only plain AMQP exists).
pub(crate) async fn open(
    config: &ClientConfig,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<(Stream, Chosen), ConnectError> {
    match config.options.transport {
        Transport::Auto => open_auto(config, tls).await,
        t => open_one(config, t, tls).await,
    }
}

/// `auto`: the remembered choice, else the AMQP port within [`AUTO_PROBE_TIMEOUT`], else
/// the WebSocket; logs which it chose and why.
async fn open_auto(
    config: &ClientConfig,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<(Stream, Chosen), ConnectError> {
    let amqp = config.dial()?.endpoint();
    let key = format!("{amqp}|{}", config.websocket_dial()?.endpoint());
    let keep = |(stream, mut chosen): (Stream, Chosen)| {
        chosen.memo = Some(key.clone());
        (stream, chosen)
    };
    if let Some(t) = remembered(&key) {
        match open_one(config, t, tls).await {
            Ok(opened) => return Ok(keep(opened)),
            Err(e) => {
                AUTO_CHOICES.lock().map(|mut m| m.remove(&key)).ok();
                tracing::info!(transport = %t, error = %e, "auto transport: the transport chosen earlier failed; trying the AMQP port first again");
            }
        }
    }
    let probe = AUTO_PROBE_TIMEOUT.min(config.options.connect_timeout());
    let why = match tokio::time::timeout(probe, open_one(config, Transport::Amqp, tls)).await {
        Ok(Ok(opened)) => {
            remember(&key, Transport::Amqp);
            tracing::info!(transport = "amqp", endpoint = %amqp, proxy = opened.1.proxy.as_deref().unwrap_or("-"), "auto transport: the AMQP port answered; using AMQP over TLS");
            return Ok(keep(opened));
        }
        Ok(Err(e)) if unreachable(&e) => e.to_string(),
        Ok(Err(e)) => return Err(e),
        Err(_) => format!("no answer within {} s", probe.as_secs_f64()),
    };
    tracing::info!(endpoint = %amqp, reason = %why, "auto transport: the AMQP port is unreachable; trying AMQP over WebSocket");
    let opened = open_one(config, Transport::WebSocket, tls).await?;
    remember(&key, Transport::WebSocket);
    tracing::info!(transport = "websocket", endpoint = %opened.1.endpoint, proxy = opened.1.proxy.as_deref().unwrap_or("-"), amqp_endpoint = %amqp, "auto transport: using AMQP over WebSocket");
    Ok(keep(opened))
}

/// Failures of the AMQP port that `auto` answers with the WebSocket: refused, reset,
/// unreachable, timed out, or a proxy that would not tunnel there.
fn unreachable(e: &ConnectError) -> bool {
    matches!(
        e,
        ConnectError::Io { .. }
            | ConnectError::Timeout { .. }
            | ConnectError::Proxy { .. }
            | ConnectError::Handshake { .. }
    )
}

/// Opens `transport` (AMQP or WebSocket), through the proxy that applies.
async fn open_one(
    config: &ClientConfig,
    transport: Transport,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<(Stream, Chosen), ConnectError> {
    let websocket = transport == Transport::WebSocket;
    let dial = if websocket {
        config.websocket_dial()?
    } else {
        config.dial()?
    };
    if websocket && tls.is_none() {
        return Err(ConnectError::Config(
            "AMQP over WebSocket needs TLS; UseDevelopmentEmulator=true connections are plain AMQP only".into(),
        ));
    }
    let var = |k: &str| std::env::var(k).ok();
    let proxy = config.options.proxy.resolve(&dial.host, websocket, &var)?;
    let tcp = match &proxy {
        Some(p) => proxy::tunnel(p, &dial.host, dial.port).await?,
        None => dial_tcp(&dial).await?,
    };
    let stream = match tls {
        Some(tls) if websocket => Stream::WebSocket(Box::new(upgrade(tls, &dial, tcp).await?)),
        Some(tls) => Stream::Tls(Box::new(handshake(tls, &dial, tcp).await?)),
        None => Stream::Plain(tcp),
    };
    Ok((
        stream,
        Chosen {
            transport: if websocket {
                Transport::WebSocket
            } else {
                Transport::Amqp
            },
            endpoint: dial.endpoint(),
            proxy: proxy.map(|p| p.endpoint()),
            memo: None,
        },
    ))
}

async fn dial_tcp(dial: &Dial) -> Result<TcpStream, ConnectError> {
    let tcp = TcpStream::connect((dial.host.as_str(), dial.port))
        .await
        .map_err(|e| ConnectError::Io {
            endpoint: dial.endpoint(),
            why: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The TLS handshake with the dial's server name (the namespace, or `tls_server_name`).
async fn handshake(
    tls: &tokio_rustls::TlsConnector,
    dial: &Dial,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    use tokio_rustls::rustls::pki_types::ServerName;
    let name = dial
        .tls_name
        .clone()
        .ok_or_else(|| ConnectError::Config("TLS needs a server name".into()))?;
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| ConnectError::Config(format!("TLS server name {name:?} is invalid: {e}")))?;
    tls.connect(server_name, tcp)
        .await
        .map_err(|e| connect_io_error(&dial.endpoint(), &e))
}

/// TLS (the same connector and server name as AMQP over TLS), then the WebSocket upgrade
/// with subprotocol `amqp` on [`WEBSOCKET_PATH`]; the URL's host (the `Host` header) is the
/// TLS server name, i.e. the namespace.
async fn upgrade(
    tls: &tokio_rustls::TlsConnector,
    dial: &Dial,
    tcp: TcpStream,
) -> Result<WsStream, ConnectError> {
    let endpoint = dial.endpoint();
    let stream = handshake(tls, dial, tcp).await?;
    let name = dial.tls_name.clone().unwrap_or_default();
    let host = if name.contains(':') {
        format!("[{name}]")
    } else {
        name
    };
    let url = format!("wss://{host}{WEBSOCKET_PATH}");
    WebSocketStream::connect_with_stream(&url, stream)
        .await
        .map_err(|e| upgrade_error(&endpoint, e))
}

/// A failed WebSocket upgrade as a [`ConnectError`], saying what the server answered.
fn upgrade_error(endpoint: &str, e: fe2o3_amqp_ws::Error) -> ConnectError {
    use fe2o3_amqp_ws::{tungstenite::Error as Ws, Error as AmqpWs};
    let why = match e {
        AmqpWs::Tungstenite(Ws::Io(io)) => return connect_io_error(endpoint, &io),
        AmqpWs::Tungstenite(Ws::Http(response)) => format!(
            "the WebSocket upgrade on {WEBSOCKET_PATH} was refused with HTTP {}; check that this endpoint is an Event Hubs namespace on its WebSocket port",
            response.status()
        ),
        AmqpWs::SecWebSocketProtocolIsNotAmqp | AmqpWs::MissingSecWebSocketProtocol => {
            "the server did not accept the WebSocket subprotocol \"amqp\"".to_string()
        }
        other => format!("WebSocket upgrade failed: {other}"),
    };
    ConnectError::Handshake {
        endpoint: endpoint.to_string(),
        why,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn transport_names_round_trip_in_serde_and_text() {
        for t in [Transport::Amqp, Transport::WebSocket, Transport::Auto] {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{t}\""));
            assert_eq!(serde_json::from_str::<Transport>(&json).unwrap(), t);
            assert_eq!(t.as_str().parse::<Transport>().unwrap(), t);
        }
        assert_eq!(
            "WebSockets".parse::<Transport>().unwrap(),
            Transport::WebSocket
        );
        assert!("tcp".parse::<Transport>().unwrap_err().contains("\"auto\""));
        assert_eq!(Transport::default(), Transport::Amqp);
    }
}
