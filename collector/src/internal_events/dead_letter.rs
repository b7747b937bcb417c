//! Events of the dead-letter file: writes that failed, blocked a partition or work again.

use std::borrow::Cow;
use std::time::Duration;

use tcpulse_eventhub::cli_support::telemetry::{InternalEvent, Line, LogRate};
use tcpulse_eventhub::log_event;
use tracing::Level;

use super::count_component_error;
use crate::metrics::Metrics;

/// Appending a rejected batch to the dead-letter file failed. The record stays queued in
/// the [`crate::dead_letter::DeadLetterFile`] and no checkpoint is written until it is in the
/// file (see [`DeadLetterWriteBlocked`]).
#[derive(Debug)]
pub struct DeadLetterWriteFailed<'a> {
    /// The error.
    pub error: &'a str,
}

impl InternalEvent for DeadLetterWriteFailed<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "dead_letter"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("io".into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        LogRate::Limited("dead_letter_file".into())
    }
    fn count(&self, metrics: &Metrics) {
        count_component_error(self, metrics);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            error = self.error,
            "cannot write the dead-letter file; the record is kept in memory and no checkpoint passes it until it is written: free space or fix `dead_letter.path`"
        );
    }
}

/// Syncing the dead-letter file at shutdown failed: its last records may not be on disk.
#[derive(Debug)]
pub struct DeadLetterSyncFailed<'a> {
    /// The error.
    pub error: &'a str,
}

impl InternalEvent for DeadLetterSyncFailed<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "dead_letter"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("io".into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        // Once, at shutdown.
        LogRate::Every
    }
    fn count(&self, metrics: &Metrics) {
        count_component_error(self, metrics);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(self, line, error = self.error, "sync at shutdown failed");
    }
}

/// Appending to (or syncing) the dead-letter file failed. The partition waits and retries:
/// nothing is checkpointed past a dead letter whose record is not in the file.
#[derive(Debug)]
pub struct DeadLetterWriteBlocked<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// The error.
    pub error: &'a str,
    /// When the next attempt is made.
    pub retry_in: Duration,
}

impl InternalEvent for DeadLetterWriteBlocked<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "dead_letter"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("blocked".into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        // Re-armed by [`DeadLetterWriteRecovered`].
        LogRate::Limited(format!("dead_letter_file/{}/blocked", self.partition))
    }
    fn count(&self, metrics: &Metrics) {
        count_component_error(self, metrics);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            partition = self.partition,
            retry_in = %humantime::format_duration(self.retry_in),
            error = self.error,
            "cannot write the dead-letter file; the partition waits (its checkpoint never passes an unrecorded dead letter) until it can: free space or fix `dead_letter.path`"
        );
    }
}

/// The dead-letter file can be written again after [`DeadLetterWriteBlocked`].
#[derive(Debug)]
pub struct DeadLetterWriteRecovered<'a> {
    /// Partition id.
    pub partition: &'a str,
}

impl InternalEvent for DeadLetterWriteRecovered<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "dead_letter"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn level(&self) -> Level {
        Level::INFO
    }
    fn rate(&self) -> LogRate {
        // Only when a failure was logged.
        LogRate::IfEnded
    }
    fn ends(&self) -> Option<String> {
        Some(format!("dead_letter_file/{}/", self.partition))
    }
    fn count(&self, _: &Metrics) {
        // Not an error: no counter.
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            partition = self.partition,
            "dead-letter file writable again; the partition resumes"
        );
    }
}
