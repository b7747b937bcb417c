//! Events of the checkpoints: corrupt, failing, unusable or unwritten ones, and checkpoints
//! that do not fit the partition (ahead of it, or behind its retention).

use std::borrow::Cow;

use tcpulse_eventhub::cli_support::telemetry::{InternalEvent, Line, LogRate};
use tcpulse_eventhub::log_event;
use tracing::Level;

use super::count_component_error;
use crate::metrics::{partition_labels, Metrics};

/// A checkpoint file was corrupt; the partition starts from the configured position.
#[derive(Debug)]
pub struct CheckpointCorrupt<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// The error (names the file and the problem).
    pub error: &'a str,
    /// Where the corrupt file was moved.
    pub moved_to: Option<&'a str>,
    /// The position the partition starts from instead.
    pub start: &'a str,
}

impl InternalEvent for CheckpointCorrupt<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "checkpoint"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("corrupt".into())
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
        log_event!(
            self,
            line,
            partition = self.partition,
            moved_to = self.moved_to.unwrap_or("-"),
            start = self.start,
            error = self.error,
            "corrupt checkpoint"
        );
    }
}

/// Reading or writing a checkpoint failed; it is retried.
#[derive(Debug)]
pub struct CheckpointFailed<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// `load` or `store`.
    pub operation: &'static str,
    /// The error.
    pub error: &'a str,
}

impl InternalEvent for CheckpointFailed<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "checkpoint"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some(format!("{}_io", self.operation).into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        // Re-armed when the operation succeeds.
        LogRate::Limited(format!("checkpoint/{}/{}", self.partition, self.operation))
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
            "checkpoint I/O failed; retrying"
        );
    }
}

/// A checkpoint's saved aggregator state does not read back: the partition resumes at the
/// checkpoint, but its rollups restart empty.
#[derive(Debug)]
pub struct CheckpointStateUnusable<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// Why the state does not read back.
    pub error: &'a str,
}

impl InternalEvent for CheckpointStateUnusable<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "checkpoint"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("state".into())
    }
    fn level(&self) -> Level {
        Level::WARN
    }
    fn rate(&self) -> LogRate {
        // Once per partition start.
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
            error = self.error,
            "checkpoint has no usable aggregator state; rollups restart empty"
        );
    }
}

/// A partition stopped with a checkpoint it could not write (the failure itself was
/// logged and counted as it happened): the next start reads again from the last written
/// one, and de-duplication drops what was stored already.
#[derive(Debug)]
pub struct FinalCheckpointUnwritten<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// Sequence number of the checkpoint that was not written.
    pub sequence_number: i64,
}

impl InternalEvent for FinalCheckpointUnwritten<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "checkpoint"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("final_unwritten".into())
    }
    fn level(&self) -> Level {
        Level::WARN
    }
    fn rate(&self) -> LogRate {
        // Once per partition, at shutdown.
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
            sequence_number = self.sequence_number,
            "final checkpoint not written"
        );
    }
}

/// A checkpoint is past the newest event the partition holds (hub re-created, checkpoint
/// restored from elsewhere or edited): reading after it would skip every new event.
#[derive(Debug)]
pub struct CheckpointAheadOfPartition<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// The checkpoint's sequence number.
    pub checkpoint: i64,
    /// The partition's `last_enqueued_sequence_number` (-1: never an event).
    pub last_enqueued: i64,
    /// Where the partition starts instead (`checkpoint.on_ahead_of_partition`).
    pub start: &'a str,
}

impl InternalEvent for CheckpointAheadOfPartition<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "checkpoint"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("ahead_of_partition".into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        // Each one means a reset the operator must know of.
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
            checkpoint_sequence_number = self.checkpoint,
            last_enqueued_sequence_number = self.last_enqueued,
            start = self.start,
            "checkpoint of partition {} is at sequence {} but the partition's last enqueued sequence is {} (Event Hub re-created, or checkpoint restored from elsewhere); starting from {} (`checkpoint.on_ahead_of_partition`)",
            self.partition,
            self.checkpoint,
            self.last_enqueued,
            self.start,
        );
    }
}

/// The event at the checkpoint's sequence number is not the checkpointed one (another
/// enqueue time): the partition was re-created and has grown past the checkpoint.
#[derive(Debug)]
pub struct CheckpointMismatch<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// The checkpoint's sequence number.
    pub checkpoint: i64,
    /// The checkpointed event's enqueue time, ms.
    pub expected_enqueued_ms: i64,
    /// The sequence number of the event found instead.
    pub found_sequence: i64,
    /// Its enqueue time, ms.
    pub found_enqueued_ms: i64,
    /// Where the partition starts instead (`checkpoint.on_ahead_of_partition`).
    pub start: &'a str,
}

impl InternalEvent for CheckpointMismatch<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "checkpoint"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        // Counted as [`CheckpointAheadOfPartition`] is.
        Some("ahead_of_partition".into())
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
        log_event!(
            self,
            line,
            partition = self.partition,
            checkpoint_sequence_number = self.checkpoint,
            expected_enqueued_ms = self.expected_enqueued_ms,
            found_sequence_number = self.found_sequence,
            found_enqueued_ms = self.found_enqueued_ms,
            start = self.start,
            "checkpoint of partition {} names event {} enqueued at {} ms, but the partition now holds another event there (sequence {}, enqueued at {} ms): the Event Hub was re-created; starting from {} (`checkpoint.on_ahead_of_partition`)",
            self.partition,
            self.checkpoint,
            self.expected_enqueued_ms,
            self.found_sequence,
            self.found_enqueued_ms,
            self.start,
        );
    }
}

/// A checkpoint is older than the oldest event the partition retains: the events between
/// were dropped by the hub's retention before this collector read them.
#[derive(Debug)]
pub struct RetentionLost<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// The checkpoint's sequence number.
    pub checkpoint: i64,
    /// The oldest retained sequence number.
    pub begin: i64,
    /// Events lost (`begin - checkpoint - 1`).
    pub lost: u64,
}

impl InternalEvent for RetentionLost<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "checkpoint"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some("retention_lost".into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        LogRate::Every
    }
    fn count(&self, metrics: &Metrics) {
        metrics
            .retention_lost_events
            .get_or_create(&partition_labels(self.partition))
            .inc_by(self.lost);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            partition = self.partition,
            checkpoint_sequence_number = self.checkpoint,
            begin_sequence_number = self.begin,
            lost_events = self.lost,
            "partition {}: {} events expired by the hub's retention before they were read (checkpoint at sequence {}, oldest retained {}); starting from the oldest retained event. Run the collector continuously or raise the hub's retention",
            self.partition,
            self.lost,
            self.checkpoint,
            self.begin,
        );
    }
}
