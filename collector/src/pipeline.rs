//! One partition, end to end: source → decode → dedup → aggregate → batches → sinks, and
//! acknowledgements back to the checkpoint.
//!
//! The loop is a `biased` select with the acknowledgement branch first, then shutdown,
//! the flush timer, housekeeping, and last the source, so acknowledgements always drain
//! before new work is taken:
//!
//! 1. Each event is decoded (a failure goes to the dead-letter file), checked against the
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

use backoff::backoff::Backoff as _;
use bytes::Bytes;
use tcpulse_schema::{pipeline_point, DedupWindow, Point, Timestamp};
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
    CheckpointCorrupt, CheckpointFailed, ClockSkewObserved, DeadLetterWriteFailed,
    DuplicateDropped, EventDeadLettered, LogOnce, SourceFailed,
};
use crate::metrics::{partition_labels, sink_point, Metrics};
use crate::sinks::retry::{deliver, DeliveryContext, RetryPolicy};
use crate::sinks::Sink;
use crate::source::{PartitionSource, ReceivedEvent, SourceProvider};

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
}

#[derive(Debug, Default)]
struct Builder {
    buf: Vec<u8>,
    lines: usize,
    opened: Option<tokio::time::Instant>,
    advanced: bool,
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
                if sleep_or_cancel(
                    backoff.next_backoff().unwrap_or(settings.retry.max),
                    &shutdown,
                )
                .await
                {
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
    let open = |start: StartPosition| {
        let provider = provider.clone();
        let partition = partition.clone();
        async move { provider.open(&partition, start).await }
    };
    let mut source = loop {
        match open(start).await {
            Ok(s) => break s,
            Err(e) => {
                SourceFailed {
                    partition: &partition,
                    operation: "open",
                    error: &e.to_string(),
                }
                .emit(m, &shared.once);
                if sleep_or_cancel(
                    backoff.next_backoff().unwrap_or(settings.retry.max),
                    &shutdown,
                )
                .await
                {
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
                        state.on_event(ev, &mut aggregator);
                        backoff.reset();
                    }
                    Ok(None) => {
                        tracing::info!(partition = %partition, "source ended; draining");
                        source_ended = true;
                    }
                    Err(e) => {
                        SourceFailed { partition: &partition, operation: "receive", error: &e.to_string() }.emit(m, &shared.once);
                        let wait = backoff.next_backoff().unwrap_or(settings.retry.max);
                        if !sleep_or_cancel(wait, &shutdown).await {
                            let resume = state
                                .last_pulled
                                .as_ref()
                                .map(|p| StartPosition::AfterSequence(p.sequence_number))
                                .unwrap_or(start);
                            match open(resume).await {
                                Ok(s) => {
                                    source = s;
                                    shared.once.clear(&format!("source/{partition}/"));
                                }
                                Err(e) => SourceFailed { partition: &partition, operation: "open", error: &e.to_string() }.emit(m, &shared.once),
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

fn retry_backoff(p: &RetryPolicy) -> backoff::ExponentialBackoff {
    backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(p.initial)
        .with_max_interval(p.max)
        .with_max_elapsed_time(None)
        .build()
}

/// Sleeps `d`; true if `cancel` fired first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = cancel.cancelled() => true,
    }
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
    fn on_event(&mut self, ev: ReceivedEvent, aggregator: &mut Aggregator) {
        self.events_read += 1;
        self.last_pulled = Some(Position::of(&ev));
        self.builder.mark_advanced();
        let m = &self.shared.metrics;
        match decode_event(&ev).and_then(|e| self.settings.aggregate.admit(e, ev.enqueued_time_ms))
        {
            Err(dead) => {
                if let Err(e) = self.shared.dead_letters.write_event(&ev, &dead) {
                    DeadLetterWriteFailed {
                        error: &e.to_string(),
                    }
                    .emit(m, &self.shared.once);
                }
                EventDeadLettered {
                    partition: self.partition,
                    sequence_number: ev.sequence_number,
                    kind: dead.reason.kind(),
                    message: &dead.to_string(),
                }
                .emit(m, &self.shared.once);
            }
            Ok(event) => {
                if !self.dedup.observe(&event.key()).is_new() {
                    DuplicateDropped {
                        partition: self.partition,
                    }
                    .emit(m);
                    return;
                }
                self.events.inc();
                ClockSkewObserved {
                    partition: self.partition,
                    connector: &event.connector,
                    instance: &event.instance,
                    skew_ms: event.time.unix_millis() - ev.enqueued_time_ms,
                }
                .emit(m, &self.shared.once);
                aggregator.apply(event, ev.enqueued_time_ms, &mut self.points);
                self.flush_points();
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
        let lag = match (&self.last_pulled, &tip) {
            (Some(p), _) if behind => (now_ms - p.enqueued_time_ms).max(0) as f64 / 1000.0,
            (None, Some(t)) if behind && t.last_sequence_number >= 0 => {
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
        let p = pipeline_point(&self.settings.collector, self.partition, &stats, at);
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
                if !script.is_empty() {
                    return Err(script.remove(0));
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
