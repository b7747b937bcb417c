//! Events of the collector process itself: a partition task that died, the `/metrics` server
//! stopping.

use std::borrow::Cow;

use tcpulse_eventhub::cli_support::telemetry::{InternalEvent, Line, LogRate};
use tcpulse_eventhub::log_event;
use tracing::Level;

use super::count_component_error;
use crate::metrics::Metrics;

/// A partition's task ended abnormally (it panicked): the partition stops being read until
/// the collector restarts.
#[derive(Debug)]
pub struct PartitionTaskFailed<'a> {
    /// The join error.
    pub error: &'a str,
}

impl InternalEvent for PartitionTaskFailed<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "pipeline"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("panic".into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        LogRate::Every
    }
    fn count(&self, metrics: &Metrics) {
        count_component_error(self, metrics);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(self, line, error = self.error, "partition task failed");
    }
}

/// The `/metrics` server stopped with an error: scrapes fail until the collector restarts.
#[derive(Debug)]
pub struct MetricsServerFailed<'a> {
    /// The error.
    pub error: &'a str,
}

impl InternalEvent for MetricsServerFailed<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "http"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("serve".into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        LogRate::Every
    }
    fn count(&self, metrics: &Metrics) {
        count_component_error(self, metrics);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(self, line, error = self.error, "metrics server stopped");
    }
}
