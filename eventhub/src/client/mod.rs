//! The Event Hubs client the agent and the collector use: producer, consumer, management.
//!
//! It speaks AMQP 1.0 over TLS ("pure" TLS first on 5671, as Azure does) or over a WebSocket
//! on 443 (also through an HTTP CONNECT proxy), authenticates with
//! SASL ANONYMOUS plus CBS `put-token` per entity (renewed on the live connection before
//! expiry), and moves opaque [`bytes::Bytes`] bodies with their Event Hubs properties. It knows
//! nothing about tcpulse events.
//!
//! ```no_run
//! # async fn demo(cs: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use tcpulse_eventhub::client::*;
//! let config = ClientConfig::from_connection_string(cs, None, ClientOptions::default())?;
//! let mut producer = Producer::connect(config.clone()).await?;
//! let mut batch = producer.create_batch(BatchOptions {
//!     partition_key: Some("tc-eu.example.com".into()),
//!     ..BatchOptions::default()
//! })?;
//! batch.try_add(EventData::new(&b"{}"[..]).with_content_type("application/json"))?;
//! producer.send_batch(&batch).await?;
//! producer.close().await;
//!
//! let mut consumer = Consumer::connect(config, ConsumerOptions {
//!     start: StartPosition::Earliest,
//!     ..ConsumerOptions::new("0")
//! }).await?;
//! let event = consumer.recv().await?;
//! println!("{} {}", event.sequence_number, event.offset);
//! consumer.close().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `config`: [`ClientConfig`] (namespace, hub, credential) and [`ClientOptions`]
//!   (custom endpoint, transport, WebSocket endpoint, proxy, TLS trust, timeouts, token
//!   lifetime, [`RetryOptions`]), documented field by field with defaults; where each
//!   transport dials.
//! - `token`: the pluggable [`TokenSource`] ([`SasKeySource`], [`FixedSignature`]; Entra ID
//!   later). Never logs a token.
//! - `transport`: the byte stream below AMQP: TLS first on 5671, or AMQP over a WebSocket on
//!   443 (`/$servicebus/websocket`), direct or through an HTTP proxy; [`Transport`]
//!   (`amqp`, `websocket`, `auto` with its fallback and remembered choice). Knows no AMQP.
//! - `proxy`: [`ProxyOptions`], `HTTPS_PROXY`/`NO_PROXY`, Basic auth (password from the
//!   secret loader, never logged) and the CONNECT handshake.
//! - `connection`: the TLS connector (the platform verifier plus an extra CA file), AMQP
//!   open over the transport's stream, one session, and the CBS task that puts and renews
//!   tokens. Knows no producer or consumer.
//! - `event`: [`EventData`] out, [`ReceivedEvent`] in; AMQP message mapping only.
//! - `batch`: [`EventBatch`], format 0x80013700 with the SDKs' size accounting.
//! - `producer`: [`Producer`]: sends, outcomes, retries.
//! - `consumer`: [`Consumer`]: selector positions, credit, epoch, reconnect-and-resume.
//! - `management`: [`ManagementClient`]: hub and partition properties.
//! - `error`: one error enum per operation ([`ConnectError`], [`SendError`],
//!   [`ReceiveError`], [`ManagementError`]) with the service condition and
//!   `is_transient()` / `is_fatal()`.
//! - `retry`: bounded exponential backoff (the `backoff` crate).

mod batch;
mod config;
mod connection;
mod consumer;
mod error;
mod event;
mod management;
mod producer;
mod proxy;
mod retry;
mod token;
mod transport;

pub use crate::position::StartPosition;
pub use batch::{BatchOptions, EventBatch, TryAddError};
pub use config::{
    default_connect_timeout_secs, default_idle_timeout_secs, default_initial_backoff_ms,
    default_max_backoff_ms, default_max_frame_bytes, default_max_retries,
    default_operation_timeout_secs, ClientConfig, ClientOptions, RetryOptions,
};
pub use consumer::{default_prefetch, Consumer, ConsumerOptions, DEFAULT_CONSUMER_GROUP};
pub use error::{
    describe_tls_failure, is_transient_condition, tls_error, tls_hint, ConnectError,
    ManagementError, ReceiveError, SendError, ServiceError, TlsSide, TokenError,
};
pub use event::{AppProperties, EventData, ReceivedEvent};
pub use management::{HubProperties, ManagementClient, PartitionProperties};
pub use producer::{Producer, SendOptions};
pub use proxy::{ProxyOptions, DEFAULT_PROXY_PASSWORD_ENV};
pub use token::{
    default_token_lifetime_secs, AccessToken, EntraTokenSource, FixedSignature, SasKeySource,
    TokenSource, TokenType,
};
pub use transport::{Transport, AUTO_PROBE_TIMEOUT, WEBSOCKET_PATH};
