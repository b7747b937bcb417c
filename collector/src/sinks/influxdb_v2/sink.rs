//! The v2 write-API sink.
//!
//! It POSTs pre-built line protocol itself rather than through the `influxdb2` crate: that
//! crate can send pre-built lines (`write_line_protocol`), but its error type drops the
//! response headers (no `Retry-After`), it cannot gzip pre-built lines, and it would add a
//! second HTTP/TLS stack (reqwest 0.11, hyper 0.14, rustls 0.21) beside the one the
//! collector already has.

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::sinks::http::HttpWriter;
use crate::sinks::{Sink, WriteError};

/// Writes batches to `/api/v2/write`.
#[derive(Debug, Clone)]
pub struct InfluxDbV2Sink {
    writer: HttpWriter,
}

impl InfluxDbV2Sink {
    /// A sink over a prepared writer.
    pub fn new(writer: HttpWriter) -> Self {
        InfluxDbV2Sink { writer }
    }

    /// The write endpoint.
    pub fn url(&self) -> &reqwest::Url {
        self.writer.url()
    }

    /// True when writes carry the token (false: no token was configured).
    pub fn has_token(&self) -> bool {
        self.writer.has_credential()
    }
}

impl Sink for InfluxDbV2Sink {
    fn name(&self) -> &str {
        "influxdb_v2"
    }

    fn write<'a>(&'a self, body: &'a Bytes) -> BoxFuture<'a, Result<(), WriteError>> {
        Box::pin(self.writer.post(body))
    }
}
