//! Where points go. One folder per sink (`config.rs`: the config struct and `build`;
//! `sink.rs`: the writer), plus what they share: the [`Sink`] trait and [`WriteError`]
//! here, HTTP writing in [`http`], and delivery with retries in [`retry`].
//!
//! A sink writes one batch of line protocol per call and says how it went; it never
//! retries by itself. [`retry::deliver`] owns retries, `Retry-After`, and splitting a batch
//! the store refuses (413, 400, 422) until only the lines it refuses on their own are
//! dead-lettered, so every sink behaves the same.

pub mod file;
pub mod http;
pub mod influxdb_v1;
pub mod influxdb_v2;
pub mod retry;

use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

/// How one write attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The store refused the data itself (HTTP 400 or 422): retrying the same body cannot
    /// help. The batch is split to isolate the refused lines, which go to the dead-letter
    /// file with the server's message.
    #[error("store rejected the batch (HTTP {status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The batch is too large for the store (HTTP 413): it is split and resent.
    #[error("batch too large for the store (HTTP 413): {message}")]
    TooLarge {
        /// The server's message.
        message: String,
    },
    /// Anything else: network errors, timeouts, 429, 5xx, and auth or not-found errors
    /// (which an operator fixes while the collector waits, losing nothing).
    #[error("write failed ({error_type}): {message}")]
    Retryable {
        /// Counter label: `http_503`, `connect`, `timeout`, `io`, …
        error_type: String,
        /// What went wrong, with a hint where there is one.
        message: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
}

/// A destination for line protocol.
pub trait Sink: Send + Sync + Debug + 'static {
    /// The sink's name (metric label, dead-letter field).
    fn name(&self) -> &str;

    /// Writes one batch (newline-terminated lines) in one attempt.
    fn write<'a>(&'a self, body: &'a Bytes) -> BoxFuture<'a, Result<(), WriteError>>;

    /// Makes written data durable (file sinks fsync); at shutdown.
    fn flush(&self) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async { Ok(()) })
    }
}
