//! One partition, end to end: source → decode → dedup → aggregate → batches → sinks, and
//! acknowledgements back to the checkpoint.
//!
//! The loop is a `biased` select with the acknowledgement branch first, then shutdown,
//! the flush timer, housekeeping, and last the source, so acknowledgements always drain
//! before new work is taken:
//!
//! 0. On every open (at start and after a receive error) a resume point after a checkpoint
//!    is checked against the partition's `$management` bounds ([`judge_checkpoint`]): past
//!    the partition's last event (hub re-created, checkpoint restored or edited) it is an
//!    ERROR, a counter and a `/readyz` note, and the partition starts at
//!    `checkpoint.on_ahead_of_partition` (default earliest) with fresh aggregator state.
//!    Within the bounds, the partition is opened at the checkpointed event itself and its
//!    enqueue time compared with the checkpoint's: another event there means a re-created
//!    partition that grew past the checkpoint, handled the same way;
//!    older than the oldest retained event, the events lost to retention are counted and
//!    the partition starts at the beginning.
//! 1. Each event is decoded (a failure goes to the dead-letter file, and the partition
//!    waits until the record is written: nothing is checkpointed past an unrecorded dead
//!    letter, and the file is fsynced before each checkpoint write), checked against the
//!    dedup window (a repeat is dropped and counted), and applied to the [`Aggregator`];
//!    the points it yields are appended as lines to the open batch.
//! 2. A batch is sealed when it reaches `max_lines`/`max_bytes` or the flush interval
//!    passes. Sealing records the position of the newest event read so far and a
//!    snapshot of the aggregator, and spawns a delivery to every sink (retries inside,
//!    see [`crate::sinks::retry`]). A batch with no lines (only dead letters or
//!    duplicates) is complete at once.
//! 3. Deliveries finish in any order; [`InFlight`] keeps sealed batches in order and the
//!    checkpoint moves to the newest batch before which every batch is complete (a low
//!    watermark). A batch is complete when every sink stored or dead-lettered it.
//! 4. While [`InFlight`] holds `max_in_flight_batches` and the open batch is full, the
//!    source is not polled: a slow or dead store turns into lag, not memory, and nothing
//!    is dropped.
//! 5. On shutdown the open batch is sealed and sent, deliveries get `retry.shutdown_grace`
//!    to finish, the checkpoint is written for what was stored, and the task returns.
//!
//! Every `pipeline_interval`, and once more when it stops, the partition appends its
//! `tc_pipeline` point to the batch; the one partition [`run`](crate::run) names
//! ([`PipelineSettings::sink_points`]) appends one `tc_pipeline` point per sink too
//! ([`crate::metrics::sink_point`]: write errors, dead-lettered batches, latency), so a
//! collector writes its sink numbers once however many partitions it runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tcpulse_eventhub::backoff::ExponentialBackoff;
use tcpulse_schema::{pipeline_point, DedupWindow, FieldValue, Point, Timestamp};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::{duration_ms, AggregateSettings, Aggregator, Snapshot};
use crate::checkpoint::{
    Checkpoint, CheckpointError, CheckpointScope, CheckpointStore, StartPosition,
    CHECKPOINT_VERSION,
};
use crate::decode::{decode_event, DeadLetterFile};
use crate::internal_events::{
    CheckpointAheadOfPartition, CheckpointCorrupt, CheckpointFailed, CheckpointMismatch,
    ClockSkewObserved, DeadLetterWriteBlocked, DeadLetterWriteRecovered, DuplicateDropped,
    EventDeadLettered, LogOnce, RetentionLost, SourceFailed, SourceUnauthorized,
};
use crate::metrics::{partition_labels, sink_point, Metrics};
use crate::sinks::retry::{deliver, DeliveryContext, RetryPolicy};
use crate::sinks::Sink;
use crate::source::{PartitionBounds, PartitionSource, ReceivedEvent, SourceError, SourceProvider};

/// A position in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Sequence number.
    pub sequence_number: i64,
    /// Offset.
    pub offset: String,
    /// Enqueue time, ms since the Unix epoch.
    pub enqueued_time_ms: i64,
}

impl Position {
    fn of(ev: &ReceivedEvent) -> Self {
        Position {
            sequence_number: ev.sequence_number,
            offset: ev.offset.clone(),
            enqueued_time_ms: ev.enqueued_time_ms,
        }
    }
}

/// Sealed batches in order, each pending or complete; yields the low watermark.
///
/// `push` returns an id; `complete(id, stored)` marks a batch (in any order);
/// [`InFlight::pop_ready`] removes the complete batches at the front and returns the
/// newest of them. A batch completed with `stored = false` (abandoned at shutdown) stays
/// at the front and holds the watermark there.
#[derive(Debug)]
pub struct InFlight<T> {
    next_id: u64,
    slots: VecDeque<(u64, Option<bool>, T)>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            next_id: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> InFlight<T> {
    /// Adds a sealed batch; returns its id.
    pub fn push(&mut self, value: T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.slots.push_back((id, None, value));
        id
    }

    /// Marks batch `id` complete (`stored`) or abandoned (`!stored`).
    pub fn complete(&mut self, id: u64, stored: bool) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.0 == id) {
            slot.1 = Some(stored);
        }
    }

    /// Removes the run of stored batches at the front; returns the newest of them.
    pub fn pop_ready(&mut self) -> Option<T> {
        let mut last = None;
        while self.slots.front().is_some_and(|s| s.1 == Some(true)) {
            last = self.slots.pop_front().map(|s| s.2);
        }
        last
    }

    /// The batches held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|s| &s.2)
    }

    /// Batches held (pending, or complete behind a pending one).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Batches whose delivery has not finished.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.1.is_none()).count()
    }
}

/// Settings of one partition's pipeline.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// The `collector` tag of `tc_pipeline` points.
    pub collector: String,
    /// Lines per batch.
    pub max_lines: usize,
    /// Bytes per batch.
    pub max_bytes: usize,
    /// Batch age limit.
    pub flush_interval: Duration,
    /// Batches held at most.
    pub max_in_flight_batches: usize,
    /// Aggregation.
    pub aggregate: AggregateSettings,
    /// Watermark follows the wall clock after this long without events.
    pub idle_after: Duration,
    /// Dedup window: streams.
    pub dedup_max_streams: usize,
    /// Dedup window: sequence numbers per stream.
    pub dedup_window_events: u64,
    /// Shortest time between checkpoint writes.
    pub checkpoint_interval: Duration,
    /// Start without a checkpoint.
    pub initial_position: StartPosition,
    /// Start after a corrupt checkpoint.
    pub on_corrupt: StartPosition,
    /// Start when the checkpoint is past the partition's last event
    /// (`checkpoint.on_ahead_of_partition`).
    pub on_ahead_of_partition: StartPosition,
    /// First delay after the service refused the credentials (`retry.auth_initial`).
    pub auth_retry_initial: Duration,
    /// Largest delay after refused credentials (`retry.auth_max`).
    pub auth_retry_max: Duration,
    /// `tc_pipeline` interval.
    pub pipeline_interval: Duration,
    /// Whether this partition also writes the per-sink `tc_pipeline` points (one
    /// partition per collector does).
    pub sink_points: bool,
    /// Store write retries.
    pub retry: RetryPolicy,
}

/// What a partition shares with the rest of the collector.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Where points go.
    pub sinks: Arc<[Arc<dyn Sink>]>,
    /// Where checkpoints go.
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// Their scope.
    pub scope: CheckpointScope,
    /// The dead-letter file.
    pub dead_letters: Arc<DeadLetterFile>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Log de-duplication.
    pub once: Arc<LogOnce>,
    /// Spawns deliveries (so `run` waits for them).
    pub tracker: TaskTracker,
    /// Cancelled when deliveries must stop retrying (shutdown + grace).
    pub give_up: CancellationToken,
}

/// How a partition ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSummary {
    /// Partition id.
    pub partition: String,
    /// The checkpoint written last, if any.
    pub checkpoint: Option<i64>,
    /// Events read from the source by this run.
    pub events_read: u64,
}

#[derive(Debug)]
struct Sealed {
    position: Option<Position>,
    snapshot: Snapshot,
    /// Enqueue time of the first event the batch covers (for lag).
    oldest_enqueued_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct Builder {
    buf: Vec<u8>,
    lines: usize,
    opened: Option<tokio::time::Instant>,
    advanced: bool,
    /// Enqueue time of the first event read into this batch.
    oldest_enqueued_ms: Option<i64>,
}

impl Builder {
    fn push(&mut self, p: &Point) {
        let line = p.to_line();
        if line.is_empty() {
            return;
        }
        if self.opened.is_none() {
            self.opened = Some(tokio::time::Instant::now());
        }
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.lines += 1;
    }

    fn mark_advanced(&mut self) {
        if self.opened.is_none() {
            self.opened = Some(tokio::time::Instant::now());
        }
        self.advanced = true;
    }

    fn has_content(&self) -> bool {
        self.lines > 0 || self.advanced
    }
}

/// Runs one partition until the source ends or `shutdown` is cancelled. Never fails:
/// every error is logged, counted and retried.
pub async fn run_partition<P: SourceProvider>(
    provider: Arc<P>,
    partition: String,
    settings: PipelineSettings,
    shared: Shared,
    shutdown: CancellationToken,
) -> PartitionSummary {
    let labels = partition_labels(&partition);
    let m = &shared.metrics;
    let mut backoff = retry_backoff(&settings.retry);

    // ---- Resume point ----
    // `anchor`: the checkpointed event's enqueue time, to recognise it when re-read.
    let mut anchor = None;
    let (start, mut aggregator, mut checkpointed) = loop {
        match shared.checkpoints.load(&shared.scope, &partition).await {
            Ok(Some(cp)) => {
                let agg = match cp.state.clone().map(serde_json::from_value::<Snapshot>) {
                    Some(Ok(snap)) => Aggregator::restore(settings.aggregate, snap),
                    Some(Err(e)) => {
                        tracing::warn!(stage = "checkpoint", error_type = "state", partition = %partition, error = %e, "checkpoint has no usable aggregator state; rollups restart empty");
                        Aggregator::new(settings.aggregate)
                    }
                    None => Aggregator::new(settings.aggregate),
                };
                m.checkpoint_sequence
                    .get_or_create(&labels)
                    .set(cp.sequence_number);
                tracing::info!(partition = %partition, sequence_number = cp.sequence_number, "resuming after checkpoint");
                anchor = Some(cp.enqueued_time_ms);
                break (
                    StartPosition::AfterSequence(cp.sequence_number),
                    agg,
                    Some(cp.sequence_number),
                );
            }
            Ok(None) => {
                break (
                    settings.initial_position,
                    Aggregator::new(settings.aggregate),
                    None,
                )
            }
            Err(e @ CheckpointError::Corrupt { .. }) => {
                let moved = shared
                    .checkpoints
                    .quarantine(&shared.scope, &partition)
                    .await
                    .ok()
                    .flatten();
                CheckpointCorrupt {
                    partition: &partition,
                    error: &e.to_string(),
                    moved_to: moved.as_deref(),
                    start: &format!("{:?}", settings.on_corrupt),
                }
                .emit(m);
                break (
                    settings.on_corrupt,
                    Aggregator::new(settings.aggregate),
                    None,
                );
            }
            Err(e) => {
                CheckpointFailed {
                    partition: &partition,
                    operation: "load",
                    error: &e.to_string(),
                }
                .emit(m, &shared.once);
                if sleep_or_cancel(backoff.next_backoff(), &shutdown).await {
                    return PartitionSummary {
                        partition,
                        checkpoint: None,
                        events_read: 0,
                    };
                }
            }
        }
    };
    shared.once.clear(&format!("checkpoint/{partition}/load"));

    // ---- Source ----
    let mut auth_wait = settings.auth_retry_initial;
    let (mut source, start, mut verify) = loop {
        match open_checked(
            provider.as_ref(),
            &partition,
            start,
            anchor,
            &settings,
            &shared,
        )
        .await
        {
            Ok(opened) => {
                if opened.reset_state {
                    aggregator = Aggregator::new(settings.aggregate);
                }
                break (opened.source, opened.start, opened.verify);
            }
            Err(e) => {
                let wait = source_retry_wait(
                    &e,
                    "open",
                    &partition,
                    &mut backoff,
                    &mut auth_wait,
                    &settings,
                    &shared,
                );
                if sleep_or_cancel(wait, &shutdown).await {
                    return PartitionSummary {
                        partition,
                        checkpoint: checkpointed,
                        events_read: 0,
                    };
                }
            }
        }
    };
    shared.once.clear(&format!("source/{partition}/"));
    backoff.reset();
    auth_wait = settings.auth_retry_initial;

    let mut state = PartitionLoop {
        settings: &settings,
        shared: &shared,
        partition: &partition,
        dedup: DedupWindow::new(settings.dedup_max_streams, settings.dedup_window_events),
        builder: Builder::default(),
        in_flight: InFlight::default(),
        points: Vec::new(),
        last_pulled: None,
        events_read: 0,
        pending_checkpoint: None,
        last_checkpoint_write: None,
        checkpoint_advanced_at: None,
        events: m.events.get_or_create(&labels).clone(),
    };
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(u64, bool)>();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_event_at = Instant::now();
    let mut last_pipeline_point = Instant::now();
    let mut draining = false;
    let mut source_ended = false;

    let mut final_point = false;
    loop {
        if (draining || source_ended) && !final_point {
            // The last numbers of this run go out with the last batch.
            final_point = true;
            state.update_gauges(&source, true);
            state.pipeline_point();
        }
        let room = state.builder.lines < settings.max_lines
            && state.builder.buf.len() < settings.max_bytes;
        let can_seal = state.in_flight.len() < settings.max_in_flight_batches;
        if !room && can_seal {
            state.seal(&mut aggregator, &ack_tx);
            continue;
        }
        if (draining || source_ended) && state.builder.has_content() && can_seal {
            state.seal(&mut aggregator, &ack_tx);
            continue;
        }
        if (draining || source_ended)
            && !state.builder.has_content()
            && state.in_flight.pending() == 0
        {
            break;
        }
        let flush_at = state
            .builder
            .opened
            .map(|o| o + settings.flush_interval)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let pull = room && !draining && !source_ended;
        tokio::select! {
            biased;
            Some((id, stored)) = ack_rx.recv() => {
                state.in_flight.complete(id, stored);
                if let Some(sealed) = state.in_flight.pop_ready() {
                    if let Some(pos) = sealed.position {
                        state.pending_checkpoint = Some((pos, sealed.snapshot));
                    }
                }
                m.in_flight_batches.get_or_create(&labels).set(state.in_flight.len() as i64);
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
            }
            _ = tokio::time::sleep_until(flush_at), if state.builder.has_content() && can_seal => {
                state.seal(&mut aggregator, &ack_tx);
            }
            _ = tick.tick() => {
                let now = Instant::now();
                // Idle: caught up and nothing arriving → event time follows the wall clock.
                let caught_up = match (source.tip(), &state.last_pulled) {
                    (Some(tip), Some(p)) => tip.last_sequence_number <= p.sequence_number,
                    _ => true,
                };
                if pull && caught_up && now.duration_since(last_event_at) >= settings.idle_after {
                    aggregator.advance_to(Timestamp::now().unix_millis() - duration_ms(settings.idle_after), &mut state.points);
                    state.flush_points();
                }
                if now.duration_since(last_pipeline_point) >= settings.pipeline_interval {
                    last_pipeline_point = now;
                    state.update_gauges(&source, pull);
                    state.pipeline_point();
                } else {
                    state.update_gauges(&source, pull);
                }
                state.maybe_checkpoint(false).await;
            }
            next = source.next(), if pull => {
                match next {
                    Ok(Some(ev)) => {
                        last_event_at = Instant::now();
                        backoff.reset();
                        match verify.take() {
                            Some(v) if v.matches(&ev) => {
                                // The checkpointed event itself, still the same: stored already.
                            }
                            Some(v) => {
                                // Another event under the checkpoint's sequence number: the
                                // partition was re-created and has grown past the checkpoint.
                                report_mismatch(&v, &ev, settings.on_ahead_of_partition, &partition, &shared);
                                aggregator = Aggregator::new(settings.aggregate);
                                state.last_pulled = None;
                                match reopen(provider.as_ref(), &partition, settings.on_ahead_of_partition, &mut backoff, &settings, &shared, &shutdown).await {
                                    Some(s) => source = s,
                                    None => draining = true,
                                }
                            }
                            None => state.on_event(ev, &mut aggregator, &shutdown).await,
                        }
                    }
                    Ok(None) => {
                        tracing::info!(partition = %partition, "source ended; draining");
                        source_ended = true;
                    }
                    Err(e) => {
                        let wait = source_retry_wait(&e, "receive", &partition, &mut backoff, &mut auth_wait, &settings, &shared);
                        if !sleep_or_cancel(wait, &shutdown).await {
                            let (resume, at) = match &state.last_pulled {
                                Some(p) => (StartPosition::AfterSequence(p.sequence_number), Some(p.enqueued_time_ms)),
                                None => (start, anchor),
                            };
                            match open_checked(provider.as_ref(), &partition, resume, at, &settings, &shared).await {
                                Ok(opened) => {
                                    verify = opened.verify;
                                    if opened.reset_state {
                                        // Hub re-created under us: the newest read position
                                        // and the state built from it mean nothing now.
                                        state.last_pulled = None;
                                        aggregator = Aggregator::new(settings.aggregate);
                                    }
                                    source = opened.source;
                                    auth_wait = settings.auth_retry_initial;
                                    shared.once.clear(&format!("source/{partition}/"));
                                }
                                Err(e) => {
                                    let wait = source_retry_wait(&e, "open", &partition, &mut backoff, &mut auth_wait, &settings, &shared);
                                    tracing::debug!(partition = %partition, retry_in = ?wait, "reopen failed");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    state.update_gauges(&source, false);
    state.maybe_checkpoint(true).await;
    if let Some((pos, _)) = &state.pending_checkpoint {
        tracing::warn!(partition = %partition, sequence_number = pos.sequence_number, "final checkpoint not written");
    }
    checkpointed = state.written_checkpoint().or(checkpointed);
    m.in_flight_batches
        .get_or_create(&labels)
        .set(state.in_flight.len() as i64);
    PartitionSummary {
        partition: partition.clone(),
        checkpoint: checkpointed,
        events_read: state.events_read,
    }
}

/// The source's retry schedule (×1.5, ±50 %: the old `backoff` crate's defaults).
fn retry_backoff(p: &RetryPolicy) -> ExponentialBackoff {
    ExponentialBackoff::new(p.initial, p.max)
        .with_multiplier(1.5)
        .with_jitter(0.5)
}

/// Sleeps `d`; true if `cancel` fired first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = cancel.cancelled() => true,
    }
}

/// How a checkpoint relates to the partition's retained range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointVerdict {
    /// The checkpoint is within the partition (or at its newest event): resume after it.
    Fits,
    /// The checkpoint is past the newest event the partition ever held.
    AheadOfPartition {
        /// The partition's `last_enqueued_sequence_number`.
        last_enqueued: i64,
    },
    /// The events after the checkpoint up to the oldest retained one expired unread.
    BehindRetention {
        /// The oldest retained sequence number (the next one to be enqueued when the
        /// partition retains nothing).
        begin: i64,
        /// Events lost.
        lost: u64,
    },
}

/// Compares checkpoint `checkpoint` (the last stored sequence number) with the partition's
/// `$management` properties. A checkpoint equal to the last enqueued sequence is normal
/// (caught up); an empty partition reports `last_enqueued = -1` when it never held an event,
/// so any checkpoint is ahead of it.
pub fn judge_checkpoint(checkpoint: i64, bounds: &PartitionBounds) -> CheckpointVerdict {
    let last = bounds.last_enqueued_sequence_number;
    if checkpoint > last {
        return CheckpointVerdict::AheadOfPartition {
            last_enqueued: last,
        };
    }
    // Nothing retained: the next event to arrive is the oldest one there will be.
    let begin = if bounds.is_empty || bounds.begin_sequence_number < 0 {
        last.saturating_add(1)
    } else {
        bounds.begin_sequence_number
    };
    let next = checkpoint.saturating_add(1);
    if begin > next {
        return CheckpointVerdict::BehindRetention {
            begin,
            lost: u64::try_from(begin - next).unwrap_or(0),
        };
    }
    CheckpointVerdict::Fits
}

/// A partition source opened at a checked start position.
struct Opened<S> {
    source: S,
    /// Where it was opened.
    start: StartPosition,
    /// The checkpoint belonged to another incarnation of the partition: the aggregator
    /// state saved with it does not apply.
    reset_state: bool,
    /// The source was opened one event early, at the checkpointed event, to check that it
    /// is still the same event (a re-created partition that grew past the checkpoint has
    /// another one there).
    verify: Option<Anchor>,
}

/// The checkpointed event as it was read: sequence number and enqueue time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Anchor {
    sequence_number: i64,
    enqueued_time_ms: i64,
}

impl Anchor {
    fn matches(&self, ev: &ReceivedEvent) -> bool {
        ev.sequence_number == self.sequence_number && ev.enqueued_time_ms == self.enqueued_time_ms
    }
}

fn report_mismatch(
    want: &Anchor,
    found: &ReceivedEvent,
    start: StartPosition,
    partition: &str,
    shared: &Shared,
) {
    let shown = describe_start(start);
    CheckpointMismatch {
        partition,
        checkpoint: want.sequence_number,
        expected_enqueued_ms: want.enqueued_time_ms,
        found_sequence: found.sequence_number,
        found_enqueued_ms: found.enqueued_time_ms,
        start: &shown,
    }
    .emit(&shared.metrics);
    shared.metrics.set_partition_note(
        partition,
        format!(
            "checkpointed event {} is not in the partition any more (hub re-created?); started from {shown}",
            want.sequence_number
        ),
    );
}

/// Opens `partition` at `start`, retrying with backoff; `None` on shutdown.
async fn reopen<P: SourceProvider>(
    provider: &P,
    partition: &str,
    start: StartPosition,
    backoff: &mut ExponentialBackoff,
    settings: &PipelineSettings,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<P::Source> {
    let mut auth_wait = settings.auth_retry_initial;
    loop {
        match provider.open(partition, start).await {
            Ok(s) => return Some(s),
            Err(e) => {
                let wait = source_retry_wait(
                    &e,
                    "open",
                    partition,
                    backoff,
                    &mut auth_wait,
                    settings,
                    shared,
                );
                if sleep_or_cancel(wait, shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Opens `partition` at `start`; a start after a checkpoint is first checked against the
/// partition's bounds ([`judge_checkpoint`]), reported, and replaced as the policy says.
/// With `anchor` (the checkpointed event's enqueue time) and that event still retained, the
/// source opens at the checkpointed event itself and returns it in `verify`.
async fn open_checked<P: SourceProvider>(
    provider: &P,
    partition: &str,
    start: StartPosition,
    anchor: Option<i64>,
    settings: &PipelineSettings,
    shared: &Shared,
) -> Result<Opened<P::Source>, SourceError> {
    let StartPosition::AfterSequence(checkpoint) = start else {
        let source = provider.open(partition, start).await?;
        return Ok(Opened {
            source,
            start,
            reset_state: false,
            verify: None,
        });
    };
    let bounds = provider.bounds(partition).await?;
    let verdict = match &bounds {
        Some(b) => judge_checkpoint(checkpoint, b),
        None => CheckpointVerdict::Fits,
    };
    let retained = bounds.is_some_and(|b| {
        !b.is_empty && b.begin_sequence_number >= 0 && b.begin_sequence_number <= checkpoint
    });
    let verify = match (verdict, anchor) {
        (CheckpointVerdict::Fits, Some(t)) if retained && checkpoint > 0 => Some(Anchor {
            sequence_number: checkpoint,
            enqueued_time_ms: t,
        }),
        _ => None,
    };
    let (open_at, reset_state) = match verdict {
        CheckpointVerdict::Fits if verify.is_some() => {
            (StartPosition::AfterSequence(checkpoint - 1), false)
        }
        CheckpointVerdict::Fits => (start, false),
        CheckpointVerdict::AheadOfPartition { .. } => (settings.on_ahead_of_partition, true),
        CheckpointVerdict::BehindRetention { .. } => (StartPosition::Earliest, false),
    };
    let source = provider.open(partition, open_at).await?;
    let start = if verify.is_some() { start } else { open_at };
    // Reported once the open worked, so a retried open does not count twice.
    report_verdict(verdict, checkpoint, start, partition, shared);
    Ok(Opened {
        source,
        start,
        reset_state,
        verify,
    })
}

fn report_verdict(
    verdict: CheckpointVerdict,
    checkpoint: i64,
    start: StartPosition,
    partition: &str,
    shared: &Shared,
) {
    let m = &shared.metrics;
    let shown = describe_start(start);
    match verdict {
        CheckpointVerdict::Fits => {}
        CheckpointVerdict::AheadOfPartition { last_enqueued } => {
            CheckpointAheadOfPartition {
                partition,
                checkpoint,
                last_enqueued,
                start: &shown,
            }
            .emit(m);
            m.set_partition_note(
                partition,
                format!("checkpoint {checkpoint} was ahead of the last enqueued sequence {last_enqueued} (hub re-created?); started from {shown}"),
            );
        }
        CheckpointVerdict::BehindRetention { begin, lost } => {
            RetentionLost {
                partition,
                checkpoint,
                begin,
                lost,
            }
            .emit(m);
            m.set_partition_note(
                partition,
                format!("checkpoint {checkpoint} was older than the oldest retained sequence {begin}: {lost} events lost to retention; started from the oldest retained event"),
            );
        }
    }
}

fn describe_start(start: StartPosition) -> String {
    match start {
        StartPosition::Earliest => "earliest".into(),
        StartPosition::Latest => "latest".into(),
        StartPosition::AfterSequence(n) => format!("after sequence {n}"),
        StartPosition::EnqueuedAfterMs(ms) => Timestamp::from_unix_millis(ms)
            .map(|t| format!("events enqueued after {t}"))
            .unwrap_or_else(|| format!("events enqueued after {ms} ms")),
    }
}

/// Reports a source failure and returns how long to wait: refused credentials wait on the
/// slow schedule (`auth_wait`, doubled up to `auth_retry_max`), anything else on `backoff`.
fn source_retry_wait(
    e: &SourceError,
    operation: &'static str,
    partition: &str,
    backoff: &mut ExponentialBackoff,
    auth_wait: &mut Duration,
    settings: &PipelineSettings,
    shared: &Shared,
) -> Duration {
    if e.is_unauthorized() {
        let wait = *auth_wait;
        *auth_wait = (wait * 2).min(settings.auth_retry_max);
        SourceUnauthorized {
            partition,
            operation,
            error: &e.to_string(),
            retry_in: wait,
        }
        .emit(&shared.metrics);
        return wait;
    }
    SourceFailed {
        partition,
        operation,
        error: &e.to_string(),
    }
    .emit(&shared.metrics, &shared.once);
    backoff.next_backoff()
}

struct PartitionLoop<'a> {
    settings: &'a PipelineSettings,
    shared: &'a Shared,
    partition: &'a str,
    dedup: DedupWindow,
    builder: Builder,
    in_flight: InFlight<Sealed>,
    points: Vec<Point>,
    last_pulled: Option<Position>,
    events_read: u64,
    pending_checkpoint: Option<(Position, Snapshot)>,
    last_checkpoint_write: Option<(Instant, i64)>,
    checkpoint_advanced_at: Option<Instant>,
    events: prometheus_client::metrics::counter::Counter,
}

impl PartitionLoop<'_> {
    /// Handles one event. A dead letter is recorded in the dead-letter file before the
    /// event counts as read, waiting while the file cannot be written; if shutdown comes
    /// first, the event stays unread (no checkpoint passes it).
    async fn on_event(
        &mut self,
        ev: ReceivedEvent,
        aggregator: &mut Aggregator,
        shutdown: &CancellationToken,
    ) {
        let m = self.shared.metrics.clone();
        let admitted =
            decode_event(&ev).and_then(|e| self.settings.aggregate.admit(e, ev.enqueued_time_ms));
        match admitted {
            Err(dead) => {
                if !self.record_dead_letter(&ev, &dead, shutdown).await {
                    return;
                }
                self.advance(&ev);
                EventDeadLettered {
                    partition: self.partition,
                    sequence_number: ev.sequence_number,
                    kind: dead.reason.kind(),
                    message: &dead.to_string(),
                }
                .emit(&m, &self.shared.once);
            }
            Ok(event) => {
                self.advance(&ev);
                if !self.dedup.observe(&event.key()).is_new() {
                    DuplicateDropped {
                        partition: self.partition,
                    }
                    .emit(&m);
                    return;
                }
                self.events.inc();
                ClockSkewObserved {
                    partition: self.partition,
                    connector: &event.connector,
                    instance: &event.instance,
                    skew_ms: event.time.unix_millis() - ev.enqueued_time_ms,
                }
                .emit(&m, &self.shared.once);
                aggregator.apply(event, ev.enqueued_time_ms, &mut self.points);
                self.flush_points();
            }
        }
    }

    /// `ev` is read: the next seal covers it.
    fn advance(&mut self, ev: &ReceivedEvent) {
        self.events_read += 1;
        self.last_pulled = Some(Position::of(ev));
        self.builder.mark_advanced();
        self.builder
            .oldest_enqueued_ms
            .get_or_insert(ev.enqueued_time_ms);
    }

    /// Writes the dead letter, waiting (with backoff, a log line and a counter) while the
    /// file cannot be written. False if `shutdown` came first.
    async fn record_dead_letter(
        &self,
        ev: &ReceivedEvent,
        dead: &tcpulse_schema::DeadLetter,
        shutdown: &CancellationToken,
    ) -> bool {
        let file = &self.shared.dead_letters;
        let Err(first) = file.write_event(ev, dead) else {
            return true;
        };
        let mut error = first.to_string();
        let mut backoff = retry_backoff(&self.settings.retry);
        loop {
            let wait = backoff.next_backoff();
            DeadLetterWriteBlocked {
                partition: self.partition,
                error: &error,
                retry_in: wait,
            }
            .emit(&self.shared.metrics, &self.shared.once);
            if sleep_or_cancel(wait, shutdown).await {
                return false;
            }
            match file.sync() {
                Ok(()) => {
                    DeadLetterWriteRecovered {
                        partition: self.partition,
                    }
                    .emit(&self.shared.once);
                    return true;
                }
                Err(e) => error = e.to_string(),
            }
        }
    }

    fn flush_points(&mut self) {
        for p in self.points.drain(..) {
            self.builder.push(&p);
        }
    }

    fn seal(&mut self, aggregator: &mut Aggregator, ack_tx: &mpsc::UnboundedSender<(u64, bool)>) {
        let builder = std::mem::take(&mut self.builder);
        let sealed = Sealed {
            position: self.last_pulled.clone(),
            snapshot: aggregator.snapshot(),
            oldest_enqueued_ms: builder.oldest_enqueued_ms,
        };
        let id = self.in_flight.push(sealed);
        self.shared
            .metrics
            .in_flight_batches
            .get_or_create(&partition_labels(self.partition))
            .set(self.in_flight.len() as i64);
        if builder.lines == 0 {
            let _ = ack_tx.send((id, true));
            return;
        }
        let body = Bytes::from(builder.buf);
        let shared = self.shared.clone();
        let partition = self.partition.to_owned();
        let policy = self.settings.retry;
        let tx = ack_tx.clone();
        self.shared.tracker.spawn(async move {
            let ctx = DeliveryContext {
                metrics: &shared.metrics,
                once: &shared.once,
                dead_letters: Some(&shared.dead_letters),
                partition: &partition,
                give_up: &shared.give_up,
            };
            let results = futures::future::join_all(
                shared
                    .sinks
                    .iter()
                    .map(|s| deliver(s.as_ref(), body.clone(), &policy, ctx)),
            )
            .await;
            let stored = results.iter().all(|d| d.is_done());
            let _ = tx.send((id, stored));
        });
    }

    fn update_gauges<S: PartitionSource>(&self, source: &S, pulling: bool) {
        let m = &self.shared.metrics;
        let labels = partition_labels(self.partition);
        let now_ms = Timestamp::now().unix_millis();
        let tip = source.tip();
        let unread = match (&tip, &self.last_pulled) {
            (Some(t), Some(p)) => Some((t.last_sequence_number - p.sequence_number).max(0)),
            (Some(t), None) => Some(t.last_sequence_number + 1),
            _ => None,
        };
        if let Some(n) = unread {
            m.lag_events.get_or_create(&labels).set(n);
        }
        // Behind means: the service holds events we have not read. When the transport
        // reports its newest event, that decides; otherwise not pulling counts as behind.
        // An empty partition (last sequence -1, enqueued time 0) is never behind.
        let behind = match unread {
            Some(n) => n > 0,
            None => !pulling,
        };
        // Lag runs up to the last *stored* event: the oldest event read but not yet
        // acknowledged by every sink decides; with none held, the oldest unread one.
        let oldest_unstored = self
            .in_flight
            .iter()
            .filter_map(|s| s.oldest_enqueued_ms)
            .chain(self.builder.oldest_enqueued_ms)
            .min();
        let lag = match (oldest_unstored, &self.last_pulled, &tip) {
            (Some(t), _, _) => (now_ms - t).max(0) as f64 / 1000.0,
            (None, Some(p), _) if behind => (now_ms - p.enqueued_time_ms).max(0) as f64 / 1000.0,
            (None, None, Some(t)) if behind && t.last_sequence_number >= 0 => {
                (now_ms - t.last_enqueued_time_ms).max(0) as f64 / 1000.0
            }
            _ => 0.0,
        };
        m.lag_seconds.get_or_create(&labels).set(lag);
        if let Some(at) = self.checkpoint_advanced_at {
            m.checkpoint_age_seconds
                .get_or_create(&labels)
                .set(at.elapsed().as_secs_f64());
        }
    }

    fn pipeline_point(&mut self) {
        let stats = self.shared.metrics.pipeline_stats(
            self.partition,
            self.last_pulled.is_some(),
            self.checkpoint_advanced_at.is_some(),
        );
        let at = Timestamp::now();
        let lost = self
            .shared
            .metrics
            .retention_lost_events
            .get_or_create(&partition_labels(self.partition))
            .get();
        let p = pipeline_point(&self.settings.collector, self.partition, &stats, at).field(
            "retention_lost_events",
            FieldValue::Int(i64::try_from(lost).unwrap_or(i64::MAX)),
        );
        self.builder.push(&p);
        if !self.settings.sink_points {
            return;
        }
        for sink in self.shared.sinks.iter() {
            let stats = self.shared.metrics.sink_stats(sink.name());
            let p = sink_point(&self.settings.collector, sink.name(), &stats, at);
            self.builder.push(&p);
        }
    }

    fn written_checkpoint(&self) -> Option<i64> {
        self.last_checkpoint_write.map(|(_, seq)| seq)
    }

    async fn maybe_checkpoint(&mut self, force: bool) {
        let Some((pos, _)) = &self.pending_checkpoint else {
            return;
        };
        if self.written_checkpoint() == Some(pos.sequence_number) && !force {
            self.pending_checkpoint = None;
            return;
        }
        if !force
            && self
                .last_checkpoint_write
                .is_some_and(|(at, _)| at.elapsed() < self.settings.checkpoint_interval)
        {
            return;
        }
        let Some((pos, snapshot)) = self.pending_checkpoint.take() else {
            return;
        };
        let m = &self.shared.metrics;
        // Every dead letter the checkpoint covers must be durably in the file first.
        if let Err(e) = self.shared.dead_letters.sync() {
            DeadLetterWriteBlocked {
                partition: self.partition,
                error: &e.to_string(),
                retry_in: self.settings.checkpoint_interval,
            }
            .emit(m, &self.shared.once);
            self.pending_checkpoint = Some((pos, snapshot));
            return;
        }
        let cp = Checkpoint {
            version: CHECKPOINT_VERSION,
            partition: self.partition.to_owned(),
            sequence_number: pos.sequence_number,
            offset: pos.offset.clone(),
            enqueued_time_ms: pos.enqueued_time_ms,
            updated_at_ms: Timestamp::now().unix_millis(),
            state: serde_json::to_value(&snapshot).ok(),
        };
        match self.shared.checkpoints.store(&self.shared.scope, &cp).await {
            Ok(()) => {
                self.last_checkpoint_write = Some((Instant::now(), pos.sequence_number));
                self.checkpoint_advanced_at = Some(Instant::now());
                m.checkpoint_sequence
                    .get_or_create(&partition_labels(self.partition))
                    .set(pos.sequence_number);
                self.shared
                    .once
                    .clear(&format!("checkpoint/{}/store", self.partition));
            }
            Err(e) => {
                CheckpointFailed {
                    partition: self.partition,
                    operation: "store",
                    error: &e.to_string(),
                }
                .emit(m, &self.shared.once);
                self.pending_checkpoint = Some((pos, snapshot));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::FileCheckpointStore;
    use crate::decode::DeadLetterLimits;
    use crate::sinks::WriteError;
    use crate::source::{ChannelProvider, ChannelSource};
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    /// A sink that fails its first writes as `script` says, then stores; records bodies.
    /// A scripted `Rejected` behaves as a store refusing one bad line: every write of
    /// several lines is refused with it (the sink then splits the batch) until a single
    /// line takes it.
    #[derive(Debug)]
    struct Flaky {
        name: &'static str,
        script: Mutex<Vec<WriteError>>,
        stored: Mutex<String>,
    }

    impl Sink for Flaky {
        fn name(&self) -> &str {
            self.name
        }
        fn write<'a>(&'a self, body: &'a Bytes) -> BoxFuture<'a, Result<(), WriteError>> {
            Box::pin(async move {
                let mut script = self.script.lock().unwrap();
                let lines = body.iter().filter(|&&b| b == b'\n').count();
                match script.first() {
                    Some(WriteError::Rejected { status, message }) if lines > 1 => {
                        return Err(WriteError::Rejected {
                            status: *status,
                            message: message.clone(),
                        });
                    }
                    Some(_) => return Err(script.remove(0)),
                    None => {}
                }
                self.stored
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(body));
                Ok(())
            })
        }
    }

    fn flaky(name: &'static str, script: Vec<WriteError>) -> Arc<Flaky> {
        Arc::new(Flaky {
            name,
            script: Mutex::new(script),
            stored: Mutex::new(String::new()),
        })
    }

    /// The newest `tc_pipeline` sink point of `sink` in `text`: its field set.
    fn last_sink_fields(text: &str, sink: &str) -> Option<String> {
        let prefix = format!("tc_pipeline,collector=col-test,sink={sink} ");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| rest.rsplit_once(' ').map(|(f, _)| f.to_owned()))
            .next_back()
    }

    #[tokio::test]
    async fn sink_points_carry_the_counted_write_errors_of_every_sink() {
        let dir = tempfile::tempdir().unwrap();
        let retryable = |t: &str| WriteError::Retryable {
            error_type: t.into(),
            message: "store down".into(),
            retry_after: None,
        };
        // `bad`: two connect errors and one 503, retried; then a 400 (dead-lettered);
        // then it stores. `good` stores everything.
        let bad = flaky(
            "bad",
            vec![
                retryable("connect"),
                retryable("connect"),
                retryable("http_503"),
                WriteError::Rejected {
                    status: 400,
                    message: "unable to parse".into(),
                },
            ],
        );
        let good = flaky("good", vec![]);
        let metrics = Arc::new(Metrics::new());
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let (tx, source) = ChannelSource::new("0", 16);
        let provider = Arc::new(ChannelProvider::new("t", vec![source]));
        let shared = Shared {
            sinks: vec![bad.clone() as Arc<dyn Sink>, good.clone() as Arc<dyn Sink>].into(),
            checkpoints: Arc::new(FileCheckpointStore::new(dir.path().join("ckpt"))),
            scope: provider.scope(),
            dead_letters: Arc::new(
                DeadLetterFile::open(
                    dir.path().join("dl.jsonl"),
                    DeadLetterLimits {
                        max_body_bytes: 1 << 20,
                        max_file_bytes: 1 << 20,
                    },
                )
                .unwrap(),
            ),
            metrics: metrics.clone(),
            once: Arc::new(LogOnce::default()),
            tracker: tracker.clone(),
            give_up: CancellationToken::new(),
        };
        let settings = PipelineSettings {
            collector: "col-test".into(),
            max_lines: 1000,
            max_bytes: 1 << 20,
            flush_interval: Duration::from_millis(20),
            max_in_flight_batches: 4,
            aggregate: AggregateSettings::default(),
            idle_after: Duration::from_secs(3600),
            dedup_max_streams: 16,
            dedup_window_events: 16,
            checkpoint_interval: Duration::from_millis(10),
            initial_position: StartPosition::Earliest,
            on_corrupt: StartPosition::Earliest,
            on_ahead_of_partition: StartPosition::Earliest,
            auth_retry_initial: Duration::from_millis(50),
            auth_retry_max: Duration::from_millis(200),
            pipeline_interval: Duration::from_millis(100),
            retry: RetryPolicy {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(20),
                max_retry_after: Duration::from_millis(20),
            },
            sink_points: true,
        };
        let task = tokio::spawn(run_partition(
            provider,
            "0".into(),
            settings,
            shared,
            shutdown.clone(),
        ));
        // One undecodable event gives the first batch something to carry.
        tx.send(ReceivedEvent {
            partition: "0".into(),
            sequence_number: 0,
            offset: "0".into(),
            enqueued_time_ms: Timestamp::now().unix_millis(),
            partition_key: None,
            body: Bytes::from_static(b"not json"),
        })
        .await
        .unwrap();
        // Wait until `good` stored a sink point written after all four failures.
        let want_bad = "sink_dead_lettered=1i,sink_errors=4i,sink_latency_seconds=";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = good.stored.lock().unwrap().clone();
            if last_sink_fields(&text, "bad").is_some_and(|f| f.starts_with(want_bad)) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no sink point with the counted errors; stored:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(tx);
        shutdown.cancel();
        task.await.unwrap();
        tracker.close();
        tracker.wait().await;

        // Both sinks got both sinks' points; the numbers are the /metrics counters.
        for sink in [&bad, &good] {
            let text = sink.stored.lock().unwrap().clone();
            let bad_fields = last_sink_fields(&text, "bad").unwrap();
            assert!(bad_fields.starts_with(want_bad), "{bad_fields}");
            let good_fields = last_sink_fields(&text, "good").unwrap();
            assert!(
                good_fields
                    .starts_with("sink_dead_lettered=0i,sink_errors=0i,sink_latency_seconds="),
                "{good_fields}"
            );
            let latency: f64 = good_fields
                .rsplit('=')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap();
            assert!((0.0..1.0).contains(&latency), "{good_fields}");
            // The partition point is there too, with its own tags.
            assert!(
                text.lines().any(
                    |l| l.starts_with("tc_pipeline,collector=col-test,partition=0 ")
                        && l.contains("dead_letters=1i")
                ),
                "{text}"
            );
        }
        let exposition = metrics.render();
        for needle in [
            "tcpulse_collector_sink_errors_total{sink=\"bad\",error_type=\"connect\"} 2",
            "tcpulse_collector_sink_errors_total{sink=\"bad\",error_type=\"http_503\"} 1",
            "tcpulse_collector_sink_errors_total{sink=\"bad\",error_type=\"rejected_400\"} 1",
        ] {
            assert!(exposition.contains(needle), "{needle} not in\n{exposition}");
        }
        let stats = metrics.sink_stats("bad");
        assert_eq!((stats.errors, stats.dead_lettered), (4, 1));
        assert_eq!(metrics.sink_stats("good").errors, 0);
    }

    fn bounds(begin: i64, last: i64, is_empty: bool) -> PartitionBounds {
        PartitionBounds {
            begin_sequence_number: begin,
            last_enqueued_sequence_number: last,
            is_empty,
        }
    }

    #[test]
    fn r12_checkpoint_is_judged_against_the_partition_bounds() {
        use CheckpointVerdict::*;
        let cases = [
            // (checkpoint, bounds, verdict)
            (599, bounds(0, 799, false), Fits),
            (799, bounds(0, 799, false), Fits), // caught up: normal
            (
                0,
                bounds(-1, -1, true),
                AheadOfPartition { last_enqueued: -1 },
            ), // re-created, empty
            (
                599,
                bounds(0, 199, false),
                AheadOfPartition { last_enqueued: 199 },
            ),
            (
                999_999_999,
                bounds(0, 9, false),
                AheadOfPartition { last_enqueued: 9 },
            ),
            (9, bounds(10, 30, false), Fits), // the next one is the oldest retained
            (
                5,
                bounds(20, 30, false),
                BehindRetention {
                    begin: 20,
                    lost: 14,
                },
            ),
            // Everything expired: the next event to come is 31.
            (30, bounds(-1, 30, true), Fits),
            (
                25,
                bounds(-1, 30, true),
                BehindRetention { begin: 31, lost: 5 },
            ),
        ];
        for (cp, b, want) in cases {
            assert_eq!(judge_checkpoint(cp, &b), want, "checkpoint {cp}, {b:?}");
        }
    }

    /// A sink that stores nothing until `open` is set (a store that is down).
    #[derive(Debug, Default)]
    struct Gate {
        open: std::sync::atomic::AtomicBool,
        stored: Mutex<String>,
    }

    impl Sink for Gate {
        fn name(&self) -> &str {
            "gate"
        }
        fn write<'a>(&'a self, body: &'a Bytes) -> BoxFuture<'a, Result<(), WriteError>> {
            Box::pin(async move {
                if !self.open.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(WriteError::Retryable {
                        error_type: "connect".into(),
                        message: "store down".into(),
                        retry_after: None,
                    });
                }
                self.stored
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(body));
                Ok(())
            })
        }
    }

    struct Harness {
        dir: tempfile::TempDir,
        metrics: Arc<Metrics>,
        shared: Shared,
        settings: PipelineSettings,
    }

    fn harness(provider: &ChannelProvider, sink: Arc<dyn Sink>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let shared = Shared {
            sinks: vec![sink].into(),
            checkpoints: Arc::new(FileCheckpointStore::new(dir.path().join("ckpt"))),
            scope: provider.scope(),
            dead_letters: Arc::new(
                DeadLetterFile::open(
                    dir.path().join("dl.jsonl"),
                    DeadLetterLimits {
                        max_body_bytes: 1 << 20,
                        max_file_bytes: 1 << 20,
                    },
                )
                .unwrap(),
            ),
            metrics: metrics.clone(),
            once: Arc::new(LogOnce::default()),
            tracker: TaskTracker::new(),
            give_up: CancellationToken::new(),
        };
        let settings = PipelineSettings {
            collector: "col-test".into(),
            max_lines: 1000,
            max_bytes: 1 << 20,
            flush_interval: Duration::from_millis(20),
            max_in_flight_batches: 4,
            aggregate: AggregateSettings::default(),
            idle_after: Duration::from_secs(3600),
            dedup_max_streams: 16,
            dedup_window_events: 16,
            checkpoint_interval: Duration::from_millis(10),
            initial_position: StartPosition::Earliest,
            on_corrupt: StartPosition::Earliest,
            on_ahead_of_partition: StartPosition::Earliest,
            auth_retry_initial: Duration::from_millis(50),
            auth_retry_max: Duration::from_millis(200),
            pipeline_interval: Duration::from_millis(100),
            retry: RetryPolicy {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(20),
                max_retry_after: Duration::from_millis(20),
            },
            sink_points: false,
        };
        Harness {
            dir,
            metrics,
            shared,
            settings,
        }
    }

    async fn store_checkpoint(h: &Harness, seq: i64) {
        let cp = Checkpoint {
            version: CHECKPOINT_VERSION,
            partition: "0".into(),
            sequence_number: seq,
            offset: seq.to_string(),
            enqueued_time_ms: 1,
            updated_at_ms: 1,
            state: None,
        };
        h.shared
            .checkpoints
            .store(&h.shared.scope, &cp)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn r12_checkpoint_ahead_or_behind_the_partition_is_reported_and_replaced() {
        for (cp, b, counter) in [
            (
                999_999_999,
                bounds(0, 9, false),
                "tcpulse_collector_component_errors_total{stage=\"checkpoint\",error_type=\"ahead_of_partition\"} 1",
            ),
            (
                5,
                bounds(20, 30, false),
                "tcpulse_collector_retention_lost_events_total{partition=\"0\"} 14",
            ),
        ] {
            let (tx, source) = ChannelSource::new("0", 16);
            let provider = Arc::new(ChannelProvider::new("t", vec![source]).with_bounds("0", b));
            let h = harness(&provider, flaky("ok", vec![]));
            store_checkpoint(&h, cp).await;
            drop(tx); // the source ends at once: the partition opens, drains and stops
            run_partition(
                provider.clone(),
                "0".into(),
                h.settings.clone(),
                h.shared.clone(),
                CancellationToken::new(),
            )
            .await;
            assert_eq!(
                provider.opened_at(),
                vec![("0".to_string(), StartPosition::Earliest)],
                "checkpoint {cp} with {b:?}"
            );
            let text = h.metrics.render();
            assert!(text.contains(counter), "{counter} not in\n{text}");
            let readyz = h.metrics.readyz_body();
            assert!(readyz.contains(&format!("partition 0: checkpoint {cp} was")), "{readyz}");
            drop(h.dir);
        }
        // A re-created partition that grew past the checkpoint: another event sits under
        // the checkpoint's sequence number, so the partition restarts from earliest.
        let (tx1, first) = ChannelSource::new("0", 16);
        let (_tx2, second) = ChannelSource::new("0", 16);
        let provider = Arc::new(
            ChannelProvider::new("t", vec![first, second]).with_bounds("0", bounds(0, 99, false)),
        );
        let h = harness(&provider, flaky("ok", vec![]));
        store_checkpoint(&h, 9).await; // enqueued at 1 ms
        tx1.send(ReceivedEvent {
            partition: "0".into(),
            sequence_number: 9,
            offset: "9".into(),
            enqueued_time_ms: 5_000,
            partition_key: None,
            body: Bytes::from_static(b"not json"),
        })
        .await
        .unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_partition(
            provider.clone(),
            "0".into(),
            h.settings.clone(),
            h.shared.clone(),
            shutdown.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while provider.opened_at().len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                provider.opened_at()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(
            provider.opened_at(),
            vec![
                ("0".to_string(), StartPosition::AfterSequence(8)),
                ("0".to_string(), StartPosition::Earliest)
            ]
        );
        let text = h.metrics.render();
        assert!(text.contains("tcpulse_collector_component_errors_total{stage=\"checkpoint\",error_type=\"ahead_of_partition\"} 1"), "{text}");
        assert_eq!(
            h.metrics
                .dead_letters
                .get_or_create(&vec![
                    ("partition".into(), "0".into()),
                    ("error_type".into(), "invalid_json".into())
                ])
                .get(),
            0,
            "the foreign event under the checkpoint is not processed"
        );

        // A fitting checkpoint opens at the checkpointed event to recognise it, silently.
        let (tx, source) = ChannelSource::new("0", 16);
        let provider =
            Arc::new(ChannelProvider::new("t", vec![source]).with_bounds("0", bounds(0, 9, false)));
        let h = harness(&provider, flaky("ok", vec![]));
        store_checkpoint(&h, 9).await;
        drop(tx);
        run_partition(
            provider.clone(),
            "0".into(),
            h.settings.clone(),
            h.shared.clone(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(
            provider.opened_at(),
            vec![("0".to_string(), StartPosition::AfterSequence(8))]
        );
        assert_eq!(h.metrics.readyz_body(), "not ready\n");
    }

    #[tokio::test]
    async fn r12_lag_counts_read_but_unstored_events_while_the_store_is_down() {
        let (tx, source) = ChannelSource::new("0", 16);
        let provider = Arc::new(ChannelProvider::new("t", vec![source]));
        let gate = Arc::new(Gate::default());
        let h = harness(&provider, gate.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_partition(
            provider,
            "0".into(),
            h.settings.clone(),
            h.shared.clone(),
            shutdown.clone(),
        ));
        // A valid event sampled and enqueued 5 s ago, read at once; the store is down so
        // it is not stored.
        let enqueued = Timestamp::now().unix_millis() - 5_000;
        let body = serde_json::json!({
            "schema": "tcpulse.status.v1", "connector": "tc-eu.example.com",
            "deployment": "blue", "region": "westeurope", "scaleset": "tc-eu-vmss",
            "instance": "tc-eu-vmss_0", "boot": "0b7e4f2d-3c55-4a8e-b1a2-7e9d0c6f5a33",
            "seq": 0, "time": Timestamp::from_unix_millis(enqueued).unwrap().to_string(),
            "state": "active",
            "calls": {"call_count": 3, "max_calls": 16, "planned_calls": 15, "media_load": 20}
        });
        tx.send(ReceivedEvent {
            partition: "0".into(),
            sequence_number: 0,
            offset: "0".into(),
            enqueued_time_ms: enqueued,
            partition_key: None,
            body: Bytes::from(body.to_string()),
        })
        .await
        .unwrap();
        let labels = partition_labels("0");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let lag = h.metrics.lag_seconds.get_or_create(&labels).get();
            if lag >= 5.0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "lag_seconds stays {lag} while the read event is not stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The store comes back: once the batch is acknowledged and nothing is held, lag is 0.
        gate.open.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while h.metrics.lag_seconds.get_or_create(&labels).get() > 0.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "lag stays above 0 after recovery"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(tx);
        shutdown.cancel();
        task.await.unwrap();
        h.shared.give_up.cancel();
        h.shared.tracker.close();
        h.shared.tracker.wait().await;
    }

    #[test]
    fn low_watermark_waits_for_the_oldest_batch_whatever_the_ack_order() {
        let mut q = InFlight::default();
        let ids: Vec<u64> = (0..5).map(|k| q.push(k * 10)).collect();
        assert_eq!(q.pending(), 5);
        q.complete(ids[2], true);
        q.complete(ids[1], true);
        assert_eq!(q.pop_ready(), None, "batch 0 still in flight");
        q.complete(ids[0], true);
        assert_eq!(q.pop_ready(), Some(20), "0, 1, 2 complete: watermark at 2");
        assert_eq!(q.pop_ready(), None);
        q.complete(ids[4], true);
        assert_eq!(q.pop_ready(), None, "3 still in flight");
        assert_eq!(q.len(), 2);
        q.complete(ids[3], false);
        assert_eq!(
            q.pop_ready(),
            None,
            "an abandoned batch holds the watermark"
        );
        assert_eq!(q.pending(), 0);
        assert_eq!(q.len(), 2);
        q.complete(99, true); // unknown id: ignored
        assert_eq!(q.len(), 2);
    }
}
