//! The v1 `/write` sink.

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::sinks::http::HttpWriter;
use crate::sinks::{Sink, WriteError};

/// Writes batches to `/write?db=&rp=&precision=ns`.
#[derive(Debug, Clone)]
pub struct InfluxDbV1Sink {
    writer: HttpWriter,
}

impl InfluxDbV1Sink {
    /// A sink over a prepared writer.
    pub fn new(writer: HttpWriter) -> Self {
        InfluxDbV1Sink { writer }
    }

    /// The write endpoint.
    pub fn url(&self) -> &reqwest::Url {
        self.writer.url()
    }
}

impl Sink for InfluxDbV1Sink {
    fn name(&self) -> &str {
        "influxdb_v1"
    }

    fn write<'a>(&'a self, body: &'a Bytes) -> BoxFuture<'a, Result<(), WriteError>> {
        Box::pin(self.writer.post(body))
    }
}
