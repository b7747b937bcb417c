//! Named telemetry events. Each operational error or drop is one type here, an
//! [`InternalEvent`] of the mechanism the agent shares
//! ([`tcpulse_eventhub::cli_support::telemetry`]): emitting it logs `stage` and `error_type`
//! under the shared log-rate policy (the first occurrence of a key logs, repeats are logged
//! at debug and counted, at most one reminder a minute; a recovery re-arms its keys) and
//! increments exactly one counter of [`Metrics`]. Dashboards query only these counter
//! names.
//!
//! Nothing else in the collector logs a warning or an error: a test fails on a `warn!` or
//! `error!` outside this file.

use std::borrow::Cow;
use std::time::Duration;

use tcpulse_eventhub::cli_support::telemetry::{Line, LogRate};
use tcpulse_eventhub::log_event;
use tracing::Level;

pub use tcpulse_eventhub::cli_support::telemetry::InternalEvent;

use crate::metrics::{partition_labels, Labels, Metrics, REJECTED_ERROR_TYPE_PREFIX};

fn with(mut labels: Labels, key: &str, value: &str) -> Labels {
    labels.push((key.into(), value.into()));
    labels
}

fn stage_labels(stage: &str, error_type: &str) -> Labels {
    vec![
        ("stage".into(), stage.into()),
        ("error_type".into(), error_type.into()),
    ]
}

/// Counts `event` in `component_errors{stage, error_type}` under its own labels.
fn count_component_error<E: InternalEvent>(event: &E, metrics: &Metrics) {
    let error_type = event.error_type().unwrap_or_default();
    metrics
        .component_errors
        .get_or_create(&stage_labels(event.stage(), &error_type))
        .inc();
}

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
    fn beyond(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_increments_exactly_one_counter_and_logs_once_per_key() {
        let m = Metrics::new();
        for _ in 0..3 {
            EventDeadLettered {
                partition: "0",
                sequence_number: 1,
                kind: "invalid_json",
                message: "x",
            }
            .emit(&m);
        }
        assert!(
            !m.log.is_armed("dead_letter/invalid_json"),
            "already logged"
        );
        SinkRequestFailed {
            sink: "v2",
            error_type: "http_503",
            message: "busy",
            retry_in: Duration::from_secs(1),
        }
        .emit(&m);
        assert!(!m.log.is_armed("sink/v2/http_503"));
        SinkRecovered { sink: "v2" }.emit(&m);
        assert!(
            m.log.is_armed("sink/v2/http_503"),
            "re-armed after recovery"
        );
        SinkBatchRejected {
            sink: "v2",
            partition: "0",
            status: 400,
            message: "bad",
        }
        .emit(&m);
        let text = m.render();
        assert!(text.contains("tcpulse_collector_dead_letters_total{partition=\"0\",error_type=\"invalid_json\"} 3"), "{text}");
        assert!(
            text.contains(
                "tcpulse_collector_sink_errors_total{sink=\"v2\",error_type=\"http_503\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tcpulse_collector_sink_errors_total{sink=\"v2\",error_type=\"rejected_400\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_former_bare_warnings_are_counted_under_their_stage_and_error_type() {
        let m = Metrics::new();
        SinkWithoutToken {
            sink: "influxdb_v2",
            token_env: "TCPULSE_INFLUXDB_TOKEN",
        }
        .emit(&m);
        SinkFlushFailed {
            sink: "file",
            error: "disk full",
        }
        .emit(&m);
        CheckpointStateUnusable {
            partition: "0",
            error: "bad",
        }
        .emit(&m);
        FinalCheckpointUnwritten {
            partition: "0",
            sequence_number: 7,
        }
        .emit(&m);
        PartitionTaskFailed { error: "panicked" }.emit(&m);
        DeadLetterSyncFailed { error: "io" }.emit(&m);
        MetricsServerFailed { error: "accept" }.emit(&m);
        let text = m.render();
        for needle in [
            "tcpulse_collector_config_warnings_total{stage=\"sink\",error_type=\"no_token\"} 1",
            "tcpulse_collector_sink_errors_total{sink=\"file\",error_type=\"flush\"} 1",
            "tcpulse_collector_component_errors_total{stage=\"checkpoint\",error_type=\"state\"} 1",
            "tcpulse_collector_component_errors_total{stage=\"checkpoint\",error_type=\"final_unwritten\"} 1",
            "tcpulse_collector_component_errors_total{stage=\"pipeline\",error_type=\"panic\"} 1",
            "tcpulse_collector_component_errors_total{stage=\"dead_letter\",error_type=\"io\"} 1",
            "tcpulse_collector_component_errors_total{stage=\"http\",error_type=\"serve\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
    }

    #[test]
    fn clock_skew_warns_once_per_episode_and_rearms_when_back_within() {
        let m = Metrics::new();
        let skew = |skew_ms| ClockSkewObserved {
            partition: "0",
            connector: "c",
            instance: "i",
            skew_ms,
        };
        let key = "clock_skew/c/i/";
        skew(30_000).emit(&m);
        assert!(!m.log.is_armed(key));
        skew(5_000).emit(&m);
        assert!(m.log.is_armed(key), "back within: re-armed");
        assert!(m.render().contains(
            "tcpulse_collector_instance_clock_skew_seconds{connector=\"c\",instance=\"i\"} 5.0"
        ));
    }

    /// Issue #14: an operational warning or error that skips the named events (no counter,
    /// no rate limit) fails here. Test code and this file are exempt.
    #[test]
    fn no_warning_or_error_bypasses_the_named_events() -> std::io::Result<()> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let found = tcpulse_eventhub::cli_support::telemetry::log_bypasses(&src, &[])?;
        assert!(
            found.is_empty(),
            "log these through an InternalEvent in internal_events.rs:\n{}",
            found.join("\n")
        );
        Ok(())
    }
}
