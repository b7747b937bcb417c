//! Events of the source: failed and unauthorized partition reads.

use std::borrow::Cow;
use std::time::Duration;

use tcpulse_eventhub::cli_support::telemetry::{InternalEvent, Line, LogRate};
use tcpulse_eventhub::log_event;
use tracing::Level;

use super::count_component_error;
use crate::metrics::Metrics;

/// Receiving from or opening a partition failed; it is retried with backoff.
#[derive(Debug)]
pub struct SourceFailed<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// `open` or `receive`.
    pub operation: &'static str,
    /// The error.
    pub error: &'a str,
}

impl InternalEvent for SourceFailed<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "source"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some(self.operation.into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        // Re-armed when the partition opens again.
        LogRate::Limited(format!("source/{}/{}", self.partition, self.operation))
    }
    fn count(&self, metrics: &Metrics) {
        count_component_error(self, metrics);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            partition = self.partition,
            error = self.error,
            "source failed; retrying"
        );
    }
}

/// The service refused the source's credentials; retried on the slow schedule.
#[derive(Debug)]
pub struct SourceUnauthorized<'a> {
    /// Partition id (`*` for the hub).
    pub partition: &'a str,
    /// `partitions`, `open` or `receive`.
    pub operation: &'static str,
    /// The error.
    pub error: &'a str,
    /// When the next attempt is made.
    pub retry_in: Duration,
}

impl InternalEvent for SourceUnauthorized<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "source"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("unauthorized".into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        // Every retry: they are minutes apart.
        LogRate::Every
    }
    fn count(&self, metrics: &Metrics) {
        count_component_error(self, metrics);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            partition = self.partition,
            operation = self.operation,
            retry_in = %humantime::format_duration(self.retry_in),
            error = self.error,
            "Event Hubs refused the credentials; retrying in {}. Check the connection string's SharedAccessKeyName and SharedAccessKey (a policy with the Listen right) in `source.eventhub`",
            humantime::format_duration(self.retry_in),
        );
    }
}
