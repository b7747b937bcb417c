//! Events of decoding, de-duplication and aggregation: dead letters, duplicates, clock skew.

use std::borrow::Cow;

use tcpulse_eventhub::cli_support::telemetry::{InternalEvent, Line, LogRate};
use tcpulse_eventhub::log_event;
use tracing::Level;

use super::with;
use crate::metrics::{partition_labels, Metrics};

/// An event that could not be decoded went to the dead-letter file.
#[derive(Debug)]
pub struct EventDeadLettered<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// Sequence number of the event.
    pub sequence_number: i64,
    /// [`tcpulse_schema::DeadLetterReason::kind`].
    pub kind: &'static str,
    /// The reason, for the log line.
    pub message: &'a str,
}

impl InternalEvent for EventDeadLettered<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "decode"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some(self.kind.into())
    }
    fn level(&self) -> Level {
        Level::WARN
    }
    fn rate(&self) -> LogRate {
        LogRate::Limited(format!("dead_letter/{}", self.kind))
    }
    fn count(&self, metrics: &Metrics) {
        metrics
            .dead_letters
            .get_or_create(&with(
                partition_labels(self.partition),
                "error_type",
                self.kind,
            ))
            .inc();
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            partition = self.partition,
            sequence_number = self.sequence_number,
            reason = self.message,
            "dead letter (further ones of this kind are only counted: tcpulse_collector_dead_letters_total)"
        );
    }
}

/// A repeated event `(instance, boot, seq)` was dropped.
#[derive(Debug)]
pub struct DuplicateDropped<'a> {
    /// Partition id.
    pub partition: &'a str,
}

impl InternalEvent for DuplicateDropped<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "dedup"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("duplicate".into())
    }
    fn level(&self) -> Level {
        // Duplicates are normal under at-least-once delivery.
        Level::TRACE
    }
    fn rate(&self) -> LogRate {
        LogRate::Every
    }
    fn count(&self, metrics: &Metrics) {
        metrics
            .duplicates
            .get_or_create(&partition_labels(self.partition))
            .inc();
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(self, line, partition = self.partition, "duplicate dropped");
    }
}

/// The clock skew of one accepted event: its sample time minus the time Event Hubs
/// enqueued it. Sets `tcpulse_collector_instance_clock_skew_seconds{connector,instance}`;
/// logs a warning once per instance while the skew is beyond [`CLOCK_SKEW_WARN_MS`] either
/// way (a reminder a minute while it stays there), and a line when it comes back within.
#[derive(Debug)]
pub struct ClockSkewObserved<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// Connector of the instance.
    pub connector: &'a str,
    /// Instance name.
    pub instance: &'a str,
    /// Sample time − enqueued time, ms.
    pub skew_ms: i64,
}

/// Skew beyond which [`ClockSkewObserved`] warns, ms (one report interval).
pub const CLOCK_SKEW_WARN_MS: i64 = 10_000;

impl ClockSkewObserved<'_> {
    /// The skew is beyond [`CLOCK_SKEW_WARN_MS`] either way.
    pub fn beyond(&self) -> bool {
        self.skew_ms.abs() > CLOCK_SKEW_WARN_MS
    }

    fn key(&self) -> String {
        format!("clock_skew/{}/{}/", self.connector, self.instance)
    }
}

impl InternalEvent for ClockSkewObserved<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "aggregate"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        self.beyond().then_some("clock_skew".into())
    }
    fn level(&self) -> Level {
        if self.beyond() {
            Level::WARN
        } else {
            Level::INFO
        }
    }
    fn rate(&self) -> LogRate {
        if self.beyond() {
            LogRate::Limited(self.key())
        } else {
            LogRate::IfEnded
        }
    }
    fn ends(&self) -> Option<String> {
        (!self.beyond()).then(|| self.key())
    }
    fn count(&self, metrics: &Metrics) {
        // Its one metric is a gauge: the skew itself.
        metrics.set_clock_skew(self.connector, self.instance, self.skew_ms);
    }
    fn log(&self, _: &Metrics, line: Line) {
        if !self.beyond() {
            log_event!(
                self,
                line,
                partition = self.partition,
                connector = self.connector,
                instance = self.instance,
                skew_seconds = self.skew_ms as f64 / 1000.0,
                "sample time back within {} s of the time Event Hubs enqueued it",
                CLOCK_SKEW_WARN_MS / 1000
            );
            return;
        }
        let direction = if self.skew_ms > 0 {
            "ahead of the time Event Hubs enqueued it: the instance's clock runs fast"
        } else {
            "behind the time Event Hubs enqueued it: the instance's clock runs slow, or it replays reports spooled during an outage"
        };
        log_event!(
            self,
            line,
            partition = self.partition,
            connector = self.connector,
            instance = self.instance,
            skew_seconds = self.skew_ms as f64 / 1000.0,
            "sample time {direction}; its points keep their sample time, liveness and rollups are held to Event Hubs' clock (see tcpulse_collector_instance_clock_skew_seconds)"
        );
    }
}
