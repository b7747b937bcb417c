//! Named telemetry events. Each operational error or drop is one type here; emitting it
//! logs `stage` and `error_type` (at most once per distinct key until the condition
//! clears, then at debug level) and increments exactly one counter of [`Metrics`].
//! Dashboards query only these counter names.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::metrics::{partition_labels, Labels, Metrics, REJECTED_ERROR_TYPE_PREFIX};

/// Remembers which keys were logged, so a flood logs once.
#[derive(Debug, Default)]
pub struct LogOnce {
    seen: Mutex<HashSet<String>>,
}

impl LogOnce {
    /// True the first time `key` is seen (until [`LogOnce::clear`]).
    pub fn first(&self, key: &str) -> bool {
        match self.seen.lock() {
            Ok(mut seen) => {
                if seen.contains(key) {
                    false
                } else {
                    seen.insert(key.to_owned())
                }
            }
            Err(_) => true,
        }
    }

    /// Forgets every key starting with `prefix` (the condition cleared).
    pub fn clear(&self, prefix: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|k| !k.starts_with(prefix));
        }
    }
}

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

impl EventDeadLettered<'_> {
    /// Logs (once per kind) and counts.
    pub fn emit(&self, metrics: &Metrics, once: &LogOnce) {
        if once.first(&format!("dead_letter/{}", self.kind)) {
            tracing::warn!(
                stage = "decode",
                error_type = self.kind,
                partition = self.partition,
                sequence_number = self.sequence_number,
                reason = self.message,
                "dead letter (further ones of this kind are only counted: tcpulse_collector_dead_letters_total)"
            );
        } else {
            tracing::debug!(
                stage = "decode",
                error_type = self.kind,
                partition = self.partition,
                sequence_number = self.sequence_number,
                reason = self.message,
                "dead letter"
            );
        }
        metrics
            .dead_letters
            .get_or_create(&with(
                partition_labels(self.partition),
                "error_type",
                self.kind,
            ))
            .inc();
    }
}

/// A repeated event `(instance, boot, seq)` was dropped.
#[derive(Debug)]
pub struct DuplicateDropped<'a> {
    /// Partition id.
    pub partition: &'a str,
}

impl DuplicateDropped<'_> {
    /// Counts (duplicates are normal under at-least-once delivery: debug only).
    pub fn emit(&self, metrics: &Metrics) {
        tracing::trace!(
            stage = "dedup",
            error_type = "duplicate",
            partition = self.partition,
            "duplicate dropped"
        );
        metrics
            .duplicates
            .get_or_create(&partition_labels(self.partition))
            .inc();
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

impl SinkRequestFailed<'_> {
    /// Logs (once per sink and error type until a write succeeds) and counts.
    pub fn emit(&self, metrics: &Metrics, once: &LogOnce) {
        if once.first(&format!("sink/{}/{}", self.sink, self.error_type)) {
            tracing::warn!(
                stage = "sink",
                error_type = self.error_type,
                sink = self.sink,
                retry_in = %humantime::format_duration(self.retry_in),
                error = self.message,
                "write failed; retrying (the partition stops reading until the store accepts)"
            );
        } else {
            tracing::debug!(
                stage = "sink",
                error_type = self.error_type,
                sink = self.sink,
                error = self.message,
                "write failed; retrying"
            );
        }
        metrics.count_sink_error(self.sink, self.error_type);
    }
}

/// A store accepted a write after failures.
#[derive(Debug)]
pub struct SinkRecovered<'a> {
    /// Sink name.
    pub sink: &'a str,
}

impl SinkRecovered<'_> {
    /// Logs and re-arms the once-per-outage log lines (no counter: not an error).
    pub fn emit(&self, once: &LogOnce) {
        tracing::info!(
            stage = "sink",
            sink = self.sink,
            "store accepts writes again"
        );
        once.clear(&format!("sink/{}/", self.sink));
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

impl SinkBatchRejected<'_> {
    /// Logs (every time: each one is data the operator must look at) and counts.
    pub fn emit(&self, metrics: &Metrics) {
        let error_type = format!("{REJECTED_ERROR_TYPE_PREFIX}{}", self.status);
        tracing::error!(
            stage = "sink",
            error_type = error_type.as_str(),
            sink = self.sink,
            partition = self.partition,
            status = self.status,
            error = self.message,
            "store rejected a line (the batch was split down to the lines it refused); it is in the dead-letter file and the partition moves on"
        );
        metrics.count_sink_error(self.sink, &error_type);
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

impl CheckpointCorrupt<'_> {
    /// Logs and counts.
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(
            stage = "checkpoint",
            error_type = "corrupt",
            partition = self.partition,
            moved_to = self.moved_to.unwrap_or("-"),
            start = self.start,
            error = self.error,
            "corrupt checkpoint"
        );
        metrics
            .component_errors
            .get_or_create(&stage_labels("checkpoint", "corrupt"))
            .inc();
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

impl CheckpointFailed<'_> {
    /// Logs (once per partition and operation until it succeeds) and counts.
    pub fn emit(&self, metrics: &Metrics, once: &LogOnce) {
        let error_type = format!("{}_io", self.operation);
        if once.first(&format!("checkpoint/{}/{}", self.partition, self.operation)) {
            tracing::error!(
                stage = "checkpoint",
                error_type = error_type.as_str(),
                partition = self.partition,
                error = self.error,
                "checkpoint I/O failed; retrying"
            );
        }
        metrics
            .component_errors
            .get_or_create(&stage_labels("checkpoint", &error_type))
            .inc();
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

impl SourceFailed<'_> {
    /// Logs (once per partition and operation until it succeeds) and counts.
    pub fn emit(&self, metrics: &Metrics, once: &LogOnce) {
        if once.first(&format!("source/{}/{}", self.partition, self.operation)) {
            tracing::error!(
                stage = "source",
                error_type = self.operation,
                partition = self.partition,
                error = self.error,
                "source failed; retrying"
            );
        }
        metrics
            .component_errors
            .get_or_create(&stage_labels("source", self.operation))
            .inc();
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

impl DeadLetterWriteFailed<'_> {
    /// Logs (once) and counts.
    pub fn emit(&self, metrics: &Metrics, once: &LogOnce) {
        if once.first("dead_letter_file") {
            tracing::error!(
                stage = "dead_letter",
                error_type = "io",
                error = self.error,
                "cannot write the dead-letter file; the record is kept in memory and no checkpoint passes it until it is written: free space or fix `dead_letter.path`"
            );
        }
        metrics
            .component_errors
            .get_or_create(&stage_labels("dead_letter", "io"))
            .inc();
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

impl DeadLetterWriteBlocked<'_> {
    /// Logs (once per partition until a write succeeds) and counts every attempt.
    pub fn emit(&self, metrics: &Metrics, once: &LogOnce) {
        if once.first(&format!("dead_letter_file/{}", self.partition)) {
            tracing::error!(
                stage = "dead_letter",
                error_type = "io",
                partition = self.partition,
                retry_in = %humantime::format_duration(self.retry_in),
                error = self.error,
                "cannot write the dead-letter file; the partition waits (its checkpoint never passes an unrecorded dead letter) until it can: free space or fix `dead_letter.path`"
            );
        }
        metrics
            .component_errors
            .get_or_create(&stage_labels("dead_letter", "blocked"))
            .inc();
    }
}

/// The dead-letter file can be written again after [`DeadLetterWriteBlocked`].
#[derive(Debug)]
pub struct DeadLetterWriteRecovered<'a> {
    /// Partition id.
    pub partition: &'a str,
}

impl DeadLetterWriteRecovered<'_> {
    /// Logs (only when a failure was logged) and re-arms the failure log line. No counter:
    /// not an error.
    pub fn emit(&self, once: &LogOnce) {
        let key = format!("dead_letter_file/{}", self.partition);
        if !once.first(&key) {
            tracing::info!(
                stage = "dead_letter",
                partition = self.partition,
                "dead-letter file writable again; the partition resumes"
            );
        }
        once.clear(&key);
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

impl CheckpointAheadOfPartition<'_> {
    /// Logs (every time: each one means a reset the operator must know of) and counts.
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(
            stage = "checkpoint",
            error_type = "ahead_of_partition",
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
        metrics
            .component_errors
            .get_or_create(&stage_labels("checkpoint", "ahead_of_partition"))
            .inc();
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

impl CheckpointMismatch<'_> {
    /// Logs (every time) and counts, as [`CheckpointAheadOfPartition`] does.
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(
            stage = "checkpoint",
            error_type = "ahead_of_partition",
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
        metrics
            .component_errors
            .get_or_create(&stage_labels("checkpoint", "ahead_of_partition"))
            .inc();
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

impl RetentionLost<'_> {
    /// Logs and counts the lost events.
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(
            stage = "checkpoint",
            error_type = "retention_lost",
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
        metrics
            .retention_lost_events
            .get_or_create(&partition_labels(self.partition))
            .inc_by(self.lost);
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

impl SourceUnauthorized<'_> {
    /// Logs every retry (they are minutes apart) and counts.
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(
            stage = "source",
            error_type = "unauthorized",
            partition = self.partition,
            operation = self.operation,
            retry_in = %humantime::format_duration(self.retry_in),
            error = self.error,
            "Event Hubs refused the credentials; retrying in {}. Check the connection string's SharedAccessKeyName and SharedAccessKey (a policy with the Listen right) in `source.eventhub`",
            humantime::format_duration(self.retry_in),
        );
        metrics
            .component_errors
            .get_or_create(&stage_labels("source", "unauthorized"))
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_increments_exactly_one_counter_and_logs_once_per_key() {
        let m = Metrics::new();
        let once = LogOnce::default();
        for _ in 0..3 {
            EventDeadLettered {
                partition: "0",
                sequence_number: 1,
                kind: "invalid_json",
                message: "x",
            }
            .emit(&m, &once);
        }
        assert!(!once.first("dead_letter/invalid_json"), "already logged");
        SinkRequestFailed {
            sink: "v2",
            error_type: "http_503",
            message: "busy",
            retry_in: Duration::from_secs(1),
        }
        .emit(&m, &once);
        assert!(!once.first("sink/v2/http_503"));
        SinkRecovered { sink: "v2" }.emit(&once);
        assert!(once.first("sink/v2/http_503"), "re-armed after recovery");
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
}

/// The clock skew of one accepted event: its sample time minus the time Event Hubs
/// enqueued it. Sets `tcpulse_collector_instance_clock_skew_seconds{connector,instance}`;
/// logs a warning once per instance while the skew is beyond [`CLOCK_SKEW_WARN_MS`] either
/// way (again after it came back within).
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
    /// Sets the gauge; warns once per instance while beyond the threshold.
    pub fn emit(&self, metrics: &Metrics, once: &LogOnce) {
        metrics.set_clock_skew(self.connector, self.instance, self.skew_ms);
        let key = format!("clock_skew/{}/{}", self.connector, self.instance);
        if self.skew_ms.abs() <= CLOCK_SKEW_WARN_MS {
            once.clear(&key);
            return;
        }
        if once.first(&key) {
            let direction = if self.skew_ms > 0 {
                "ahead of the time Event Hubs enqueued it: the instance's clock runs fast"
            } else {
                "behind the time Event Hubs enqueued it: the instance's clock runs slow, or it replays reports spooled during an outage"
            };
            tracing::warn!(
                stage = "aggregate",
                error_type = "clock_skew",
                partition = self.partition,
                connector = self.connector,
                instance = self.instance,
                skew_seconds = self.skew_ms as f64 / 1000.0,
                "sample time {direction}; its points keep their sample time, liveness and rollups are held to Event Hubs' clock (see tcpulse_collector_instance_clock_skew_seconds)"
            );
        }
    }
}
