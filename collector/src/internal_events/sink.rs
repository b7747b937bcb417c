//! Events of the sinks: failed, recovered, rejected and unflushed writes, a sink without a token.

use std::borrow::Cow;
use std::time::Duration;

use tcpulse_eventhub::cli_support::telemetry::{InternalEvent, Line, LogRate};
use tcpulse_eventhub::log_event;
use tracing::Level;

use super::stage_labels;
use crate::metrics::{Metrics, REJECTED_ERROR_TYPE_PREFIX};

/// A write to a store failed and will be retried.
#[derive(Debug)]
pub struct SinkRequestFailed<'a> {
    /// Sink name.
    pub sink: &'a str,
    /// `http_429`, `http_503`, `http_5xx`, `http_401`, `connect`, `timeout`, `io`, …
    pub error_type: &'a str,
    /// What the server or the client said.
    pub message: &'a str,
    /// When the next attempt is made.
    pub retry_in: Duration,
}

impl InternalEvent for SinkRequestFailed<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "sink"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some(self.error_type.into())
    }
    fn level(&self) -> Level {
        Level::WARN
    }
    fn rate(&self) -> LogRate {
        // Re-armed by [`SinkRecovered`] once a write succeeds.
        LogRate::Limited(format!("sink/{}/{}", self.sink, self.error_type))
    }
    fn count(&self, metrics: &Metrics) {
        metrics.count_sink_error(self.sink, self.error_type);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            sink = self.sink,
            retry_in = %humantime::format_duration(self.retry_in),
            error = self.message,
            "write failed; retrying (the partition stops reading until the store accepts)"
        );
    }
}

/// A store accepted a write after failures.
#[derive(Debug)]
pub struct SinkRecovered<'a> {
    /// Sink name.
    pub sink: &'a str,
}

impl InternalEvent for SinkRecovered<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "sink"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn level(&self) -> Level {
        Level::INFO
    }
    fn rate(&self) -> LogRate {
        // Once per outage, though every partition's delivery that saw it fail reports it.
        LogRate::IfEnded
    }
    fn ends(&self) -> Option<String> {
        Some(format!("sink/{}/", self.sink))
    }
    fn count(&self, _: &Metrics) {
        // Not an error: no counter.
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(self, line, sink = self.sink, "store accepts writes again");
    }
}

/// A store rejected a batch as invalid (400/422); it went to the dead-letter file.
#[derive(Debug)]
pub struct SinkBatchRejected<'a> {
    /// Sink name.
    pub sink: &'a str,
    /// Partition id.
    pub partition: &'a str,
    /// HTTP status.
    pub status: u16,
    /// The server's message.
    pub message: &'a str,
}

impl InternalEvent for SinkBatchRejected<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "sink"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some(format!("{REJECTED_ERROR_TYPE_PREFIX}{}", self.status).into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        // Each one is data the operator must look at.
        LogRate::Every
    }
    fn count(&self, metrics: &Metrics) {
        let error_type = self.error_type().unwrap_or_default();
        metrics.count_sink_error(self.sink, &error_type);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            sink = self.sink,
            partition = self.partition,
            status = self.status,
            error = self.message,
            "store rejected a line (the batch was split down to the lines it refused); it is in the dead-letter file and the partition moves on"
        );
    }
}

/// A sink's flush at shutdown failed: what it buffered may not be stored.
#[derive(Debug)]
pub struct SinkFlushFailed<'a> {
    /// Sink name.
    pub sink: &'a str,
    /// The error.
    pub error: &'a str,
}

impl InternalEvent for SinkFlushFailed<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "sink"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("flush".into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        LogRate::Every
    }
    fn count(&self, metrics: &Metrics) {
        metrics.count_sink_error(self.sink, "flush");
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            sink = self.sink,
            error = self.error,
            "flush at shutdown failed"
        );
    }
}

/// The InfluxDB v2 sink has no token: writes go without `Authorization`. Fine for
/// VictoriaMetrics; InfluxDB 2.x and 3.x answer 401.
#[derive(Debug)]
pub struct SinkWithoutToken<'a> {
    /// Sink name.
    pub sink: &'a str,
    /// The environment variable that had no token.
    pub token_env: &'a str,
}

impl InternalEvent for SinkWithoutToken<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "sink"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("no_token".into())
    }
    fn level(&self) -> Level {
        Level::WARN
    }
    fn rate(&self) -> LogRate {
        // Once per start.
        LogRate::Every
    }
    fn count(&self, metrics: &Metrics) {
        metrics
            .config_warnings
            .get_or_create(&stage_labels("sink", "no_token"))
            .inc();
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            sink = self.sink,
            "no token in ${} or `token_file`: writing without Authorization (fine for VictoriaMetrics, InfluxDB 2 will answer 401)",
            self.token_env
        );
    }
}
