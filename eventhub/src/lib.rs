//! Azure Event Hubs over AMQP 1.0, on fe2o3-amqp.
//!
//! This crate is tcpulse's transport. It moves opaque event bodies plus their Event Hubs
//! properties (partition key, sequence number, offset, enqueued time); it knows nothing of
//! Teams Connectors, calls or the status schema.
//!
//! # Layout
//!
//! - [`address`]: entity addresses (`<hub>`, `<hub>/Partitions/<id>`,
//!   `<hub>/ConsumerGroups/<cg>/Partitions/<id>`, `$cbs`, `$management`), parsed the way the
//!   service does (URL or bare form, case-insensitive keywords). Shared by the client and
//!   the `tcpulse-hub` crate.
//! - [`sas`]: shared access signatures: signing like the Azure SDKs, parsing and verifying
//!   like the service. Never logs a key or a signature.
//! - [`connection_string`]: `Endpoint=sb://…;SharedAccessKeyName=…` strings: parsing and
//!   formatting; errors name the part that is wrong and never echo a key.
//! - [`position`]: [`position::StartPosition`], where a consumer starts, and the selector
//!   filter text that carries it, written by the client and read by the hub.
//! - [`wire`]: Event Hubs wire constants (annotation keys, message format, error conditions).
//! - [`backoff`]: capped exponential backoff with jitter for reconnects and retries.
//! - [`tls`]: the process's one TLS crypto provider (aws-lc-rs; ring is banned).
//! - [`client`]: the Event Hubs client (producer, consumer, management; AMQP over TLS on 5671
//!   or over a WebSocket on 443, `auto` between them, HTTP CONNECT proxies; SAS/CBS with
//!   token renewal, retries, reconnect-and-resume) the agent and the collector use. Moves
//!   `Bytes` bodies; knows nothing of tcpulse events.
//! - [`identity`]: Entra ID credentials (managed identity, a service principal's secret,
//!   certificate or federated token) with a token cache renewed before expiry; the client
//!   puts their tokens on CBS as `jwt`.
//! - [`secret`]: the secret loader (a configured file wins over the variable, one WARN when
//!   both are set) the three binaries and the client's proxy settings share; never logs a
//!   value.
//! - `cli_support` (cargo feature `cli`): the log set-up (`--log-format`, `RUST_LOG`, ANSI
//!   only on a terminal, UTC timestamps) and the exit codes the three binaries share, the
//!   named-telemetry mechanism (`cli_support::telemetry`: one counter and one rate-limited
//!   line per event) of the agent and the collector; it re-exports [`secret`].
//!
//! The Event Hubs-compatible broker the tests and the demo run is the `tcpulse-hub` crate,
//! built on this one; this crate never depends on it (its tests and bench do, as a
//! dev-dependency), so the agent never compiles it.
#![deny(missing_docs, missing_debug_implementations)]

pub mod address;
pub mod backoff;
#[cfg(feature = "cli")]
pub mod cli_support;
pub mod client;
pub mod connection_string;
pub mod identity;
pub mod position;
pub mod sas;
pub mod secret;
pub mod tls;
pub mod wire;
