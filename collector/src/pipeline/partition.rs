//! The partition loop: a `biased` select over acknowledgements, shutdown, the flush timer,
//! housekeeping and the source ([`Run::run`]); each event decoded, de-duplicated and
//! aggregated into the open batch ([`PartitionLoop::on_event`]); sealed batches delivered to
//! every sink.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tcpulse_eventhub::backoff::ExponentialBackoff;
use tcpulse_schema::{DedupWindow, Timestamp};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batch::{Builder, InFlight, Position, Sealed};
use super::resume::{open_checked, reopen, report_mismatch, source_retry_wait, Anchor, Opened};
use super::{retry_backoff, sleep_or_cancel, PartitionSummary, PipelineSettings, Shared};
use crate::aggregate::{duration_ms, Aggregator, Snapshot};
use crate::internal_events::{
    ClockSkewObserved, DeadLetterWriteBlocked, DeadLetterWriteRecovered, DuplicateDropped,
    EventDeadLettered, FinalCheckpointUnwritten, InternalEvent,
};
use crate::metrics::partition_labels;
use crate::sinks::retry::{deliver, DeliveryContext};
use crate::source::{PartitionSource, ReadFrom, SourceError, SourceEvent, SourceProvider};

/// Sends `(batch id, stored)` when a batch's deliveries finish.
pub(super) type AckSender = mpsc::UnboundedSender<(u64, bool)>;

/// A partition's state between events: the open batch, the batches in flight, the
/// aggregator, and what the checkpoint may move to.
pub(super) struct PartitionLoop<'a> {
    pub(super) settings: &'a PipelineSettings,
    pub(super) shared: &'a Shared,
    pub(super) partition: &'a str,
    pub(super) aggregator: Aggregator,
    dedup: DedupWindow,
    pub(super) builder: Builder,
    pub(super) in_flight: InFlight<Sealed>,
    /// The newest event read.
    pub(super) last_pulled: Option<Position>,
    pub(super) events_read: u64,
    /// The newest fully stored batch's position and snapshot, not yet written.
    pub(super) pending_checkpoint: Option<(Position, Snapshot)>,
    /// When the checkpoint was last written, and at which sequence number.
    pub(super) last_checkpoint_write: Option<(Instant, i64)>,
    pub(super) checkpoint_advanced_at: Option<Instant>,
    events: prometheus_client::metrics::counter::Counter,
}

impl<'a> PartitionLoop<'a> {
    pub(super) fn new(
        settings: &'a PipelineSettings,
        shared: &'a Shared,
        partition: &'a str,
        aggregator: Aggregator,
    ) -> Self {
        PartitionLoop {
            settings,
            shared,
            partition,
            aggregator,
            dedup: DedupWindow::new(
                settings.aggregate.dedup_max_streams,
                settings.aggregate.dedup_window_events,
            ),
            builder: Builder::default(),
            in_flight: InFlight::default(),
            last_pulled: None,
            events_read: 0,
            pending_checkpoint: None,
            last_checkpoint_write: None,
            checkpoint_advanced_at: None,
            events: shared
                .metrics
                .events
                .get_or_create(&partition_labels(partition))
                .clone(),
        }
    }

    /// The open batch can take more lines.
    fn has_room(&self) -> bool {
        self.builder.lines < self.settings.batch.max_lines
            && self.builder.buf.len() < self.settings.batch.max_bytes
    }

    /// Another batch may be sealed (fewer than `max_in_flight_batches` held).
    fn can_seal(&self) -> bool {
        self.in_flight.len() < self.settings.batch.max_in_flight_batches
    }

    /// A delivery finished: the checkpoint may move to the new low watermark.
    fn on_ack(&mut self, id: u64, stored: bool) {
        self.in_flight.complete(id, stored);
        if let Some(sealed) = self.in_flight.pop_ready() {
            if let Some(pos) = sealed.position {
                self.pending_checkpoint = Some((pos, sealed.snapshot));
            }
        }
        self.set_in_flight_gauge();
    }

    fn set_in_flight_gauge(&self) {
        self.shared
            .metrics
            .in_flight_batches
            .get_or_create(&partition_labels(self.partition))
            .set(self.in_flight.len() as i64);
    }

    /// Handles one event. A dead letter is recorded in the dead-letter file before the
    /// event counts as read, waiting while the file cannot be written; if shutdown comes
    /// first, the event stays unread (no checkpoint passes it).
    pub(super) async fn on_event(&mut self, ev: SourceEvent, shutdown: &CancellationToken) {
        let shared = self.shared;
        let m = &shared.metrics;
        let admitted = tcpulse_schema::decode(&ev.body)
            .and_then(|e| self.settings.aggregator.admit(e, ev.enqueued_time_ms));
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
                .emit(m);
            }
            Ok(event) => {
                self.advance(&ev);
                let seen = self
                    .dedup
                    .observe_parts(&event.instance, event.boot, event.seq);
                if !seen.is_new() {
                    DuplicateDropped {
                        partition: self.partition,
                    }
                    .emit(m);
                    return;
                }
                self.events.inc();
                let skew = ClockSkewObserved {
                    partition: self.partition,
                    connector: &event.connector,
                    instance: &event.instance,
                    skew_ms: event.time.unix_millis() - ev.enqueued_time_ms,
                };
                // The gauge is set for every event; the event itself (its log-rate key,
                // a warning or a "back within" line) only matters while the skew is beyond
                // the limit or has just come back from it.
                let was_beyond =
                    m.note_clock_skew(skew.connector, skew.instance, skew.skew_ms, skew.beyond());
                if skew.beyond() || was_beyond {
                    skew.emit(m);
                }
                self.aggregator
                    .apply(event, ev.enqueued_time_ms, &mut self.builder);
            }
        }
    }

    /// `ev` is read: the next seal covers it.
    fn advance(&mut self, ev: &SourceEvent) {
        self.events_read += 1;
        match &mut self.last_pulled {
            // Reuses the offset's allocation: this runs for every event.
            Some(p) => p.set(ev),
            None => self.last_pulled = Some(Position::of(ev)),
        }
        self.builder.mark_advanced();
        self.builder
            .oldest_enqueued_ms
            .get_or_insert(ev.enqueued_time_ms);
    }

    /// Writes the dead letter, waiting (with backoff, a log line and a counter) while the
    /// file cannot be written. False if `shutdown` came first.
    async fn record_dead_letter(
        &self,
        ev: &SourceEvent,
        dead: &tcpulse_schema::DeadLetter,
        shutdown: &CancellationToken,
    ) -> bool {
        let file = &self.shared.dead_letters;
        let Err(first) = file.write_event(ev, dead) else {
            return true;
        };
        let mut error = first.to_string();
        let mut backoff = retry_backoff(&self.settings.retry_policy());
        loop {
            let wait = backoff.next_backoff();
            DeadLetterWriteBlocked {
                partition: self.partition,
                error: &error,
                retry_in: wait,
            }
            .emit(&self.shared.metrics);
            if sleep_or_cancel(wait, shutdown).await {
                return false;
            }
            match file.sync() {
                Ok(()) => {
                    DeadLetterWriteRecovered {
                        partition: self.partition,
                    }
                    .emit(&self.shared.metrics);
                    return true;
                }
                Err(e) => error = e.to_string(),
            }
        }
    }

    /// Seals the open batch and hands it to every sink; an empty batch is complete at once.
    pub(super) fn seal(&mut self, ack_tx: &AckSender) {
        let builder = std::mem::take(&mut self.builder);
        let sealed = Sealed {
            position: self.last_pulled.clone(),
            snapshot: self.aggregator.snapshot(),
            oldest_enqueued_ms: builder.oldest_enqueued_ms,
        };
        let id = self.in_flight.push(sealed);
        self.set_in_flight_gauge();
        if builder.lines == 0 {
            let _ = ack_tx.send((id, true));
            return;
        }
        let body = Bytes::from(builder.buf);
        let shared = self.shared.clone();
        let partition = self.partition.to_owned();
        let policy = self.settings.retry_policy();
        let tx = ack_tx.clone();
        self.shared.tracker.spawn(async move {
            let ctx = DeliveryContext {
                metrics: &shared.metrics,
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
}

/// What the loop does next.
enum Step {
    /// Look again (a batch was sealed).
    Again,
    /// Wait for the next acknowledgement, tick, or event.
    Select,
    /// Everything read is delivered (or given up) after shutdown or the source's end.
    Done,
}

/// One run of a partition: the loop state plus the source and its retry state.
pub(super) struct Run<'a, P: SourceProvider> {
    state: PartitionLoop<'a>,
    provider: &'a P,
    source: P::Source,
    /// The checkpointed event to recognise as the first one read (see `Opened::verify`).
    verify: Option<Anchor>,
    /// Where the source was first opened, and the checkpointed event's enqueue time: the
    /// reopen position while nothing has been read.
    start: ReadFrom,
    anchor: Option<i64>,
    backoff: ExponentialBackoff,
    auth_wait: Duration,
    shutdown: &'a CancellationToken,
    ack_tx: AckSender,
    ack_rx: mpsc::UnboundedReceiver<(u64, bool)>,
    last_event_at: Instant,
    last_pipeline_point: Instant,
    draining: bool,
    source_ended: bool,
    final_point: bool,
}

impl<'a, P: SourceProvider> Run<'a, P> {
    pub(super) fn new(
        state: PartitionLoop<'a>,
        provider: &'a P,
        opened: Opened<P::Source>,
        anchor: Option<i64>,
        shutdown: &'a CancellationToken,
    ) -> Self {
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        Run {
            provider,
            source: opened.source,
            verify: opened.verify,
            start: opened.start,
            anchor,
            backoff: retry_backoff(&state.settings.retry_policy()),
            auth_wait: state.settings.retry.auth_initial,
            state,
            shutdown,
            ack_tx,
            ack_rx,
            last_event_at: Instant::now(),
            last_pipeline_point: Instant::now(),
            draining: false,
            source_ended: false,
            final_point: false,
        }
    }

    /// Runs until shutdown or the source's end, and until what was read is delivered.
    pub(super) async fn run(&mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match self.step() {
                Step::Again => continue,
                Step::Done => break,
                Step::Select => {}
            }
            let can_seal = self.state.can_seal();
            let pull = self.state.has_room() && !self.draining && !self.source_ended;
            let flush_at = self
                .state
                .builder
                .opened
                .map(|o| o + self.state.settings.batch.flush_interval)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                Some((id, stored)) = self.ack_rx.recv() => self.state.on_ack(id, stored),
                _ = self.shutdown.cancelled(), if !self.draining => self.draining = true,
                _ = tokio::time::sleep_until(flush_at), if self.state.builder.has_content() && can_seal => {
                    self.state.seal(&self.ack_tx);
                }
                _ = tick.tick() => self.on_tick(pull).await,
                next = self.source.next(), if pull => self.on_next(next).await,
            }
        }
    }

    /// Seals what must be sealed before waiting, and says whether the run is over.
    fn step(&mut self) -> Step {
        let stopping = self.draining || self.source_ended;
        if stopping && !self.final_point {
            // The last numbers of this run go out with the last batch.
            self.final_point = true;
            self.state.update_gauges(&self.source, true);
            self.state.pipeline_point();
        }
        let can_seal = self.state.can_seal();
        let full = !self.state.has_room();
        if can_seal && (full || (stopping && self.state.builder.has_content())) {
            self.state.seal(&self.ack_tx);
            return Step::Again;
        }
        if stopping && !self.state.builder.has_content() && self.state.in_flight.pending() == 0 {
            return Step::Done;
        }
        Step::Select
    }

    /// Housekeeping: idle watermark, gauges, the `tc_pipeline` point, the checkpoint.
    async fn on_tick(&mut self, pull: bool) {
        let now = Instant::now();
        let settings = self.state.settings;
        // Idle: caught up and nothing arriving → event time follows the wall clock.
        let caught_up = match (self.source.tip(), &self.state.last_pulled) {
            (Some(tip), Some(p)) => tip.last_sequence_number <= p.sequence_number,
            _ => true,
        };
        if pull
            && caught_up
            && now.duration_since(self.last_event_at) >= settings.aggregate.idle_after
        {
            let to = Timestamp::now().unix_millis() - duration_ms(settings.aggregate.idle_after);
            self.state
                .aggregator
                .advance_to(to, &mut self.state.builder);
        }
        self.state.update_gauges(&self.source, pull);
        if now.duration_since(self.last_pipeline_point) >= settings.pipeline_interval {
            self.last_pipeline_point = now;
            self.state.pipeline_point();
        }
        self.state.maybe_checkpoint(false).await;
    }

    async fn on_next(&mut self, next: Result<Option<SourceEvent>, SourceError>) {
        match next {
            Ok(Some(ev)) => {
                self.last_event_at = Instant::now();
                self.backoff.reset();
                match self.verify.take() {
                    // The checkpointed event itself, still the same: stored already.
                    Some(v) if v.matches(&ev) => {}
                    Some(v) => self.on_partition_recreated(&v, &ev).await,
                    None => self.state.on_event(ev, self.shutdown).await,
                }
            }
            Ok(None) => {
                tracing::info!(partition = %self.state.partition, "source ended; draining");
                self.source_ended = true;
            }
            Err(e) => self.on_receive_error(&e).await,
        }
    }

    /// Another event under the checkpoint's sequence number: the partition was re-created
    /// and has grown past the checkpoint.
    async fn on_partition_recreated(&mut self, want: &Anchor, found: &SourceEvent) {
        let (settings, shared, partition) =
            (self.state.settings, self.state.shared, self.state.partition);
        let start = settings.checkpoint.on_ahead_of_partition.0;
        report_mismatch(want, found, start, partition, shared);
        self.state.aggregator = Aggregator::new(settings.aggregator);
        self.state.last_pulled = None;
        let reopened = reopen(
            self.provider,
            partition,
            start,
            &mut self.backoff,
            settings,
            shared,
            self.shutdown,
        )
        .await;
        match reopened {
            Some(s) => self.source = s,
            None => self.draining = true,
        }
    }

    /// Waits as the error says, then reopens after the newest event read (checked against
    /// the partition's bounds again). A failed reopen is retried on the next receive.
    async fn on_receive_error(&mut self, e: &SourceError) {
        let (settings, shared, partition) =
            (self.state.settings, self.state.shared, self.state.partition);
        let wait = self.retry_wait(e, "receive");
        if sleep_or_cancel(wait, self.shutdown).await {
            return;
        }
        let (resume, at) = match &self.state.last_pulled {
            Some(p) => (
                ReadFrom::AfterSequence(p.sequence_number),
                Some(p.enqueued_time_ms),
            ),
            None => (self.start, self.anchor),
        };
        match open_checked(self.provider, partition, resume, at, settings, shared).await {
            Ok(opened) => {
                self.verify = opened.verify;
                if opened.reset_state {
                    // Hub re-created under us: the newest read position and the state
                    // built from it mean nothing now.
                    self.state.last_pulled = None;
                    self.state.aggregator = Aggregator::new(settings.aggregator);
                }
                self.source = opened.source;
                self.auth_wait = settings.retry.auth_initial;
                shared.metrics.log.clear(&format!("source/{partition}/"));
            }
            Err(e) => {
                let wait = self.retry_wait(&e, "open");
                tracing::debug!(partition = %partition, retry_in = ?wait, "reopen failed");
            }
        }
    }

    fn retry_wait(&mut self, e: &SourceError, operation: &'static str) -> Duration {
        source_retry_wait(
            e,
            operation,
            self.state.partition,
            &mut self.backoff,
            &mut self.auth_wait,
            self.state.settings,
            self.state.shared,
        )
    }

    /// Writes the last checkpoint and says how the partition ended.
    pub(super) async fn finish(mut self, checkpointed: Option<i64>) -> PartitionSummary {
        self.state.update_gauges(&self.source, false);
        self.state.maybe_checkpoint(true).await;
        if let Some((pos, _)) = &self.state.pending_checkpoint {
            FinalCheckpointUnwritten {
                partition: self.state.partition,
                sequence_number: pos.sequence_number,
            }
            .emit(&self.state.shared.metrics);
        }
        self.state.set_in_flight_gauge();
        PartitionSummary {
            partition: self.state.partition.to_owned(),
            checkpoint: self.state.written_checkpoint().or(checkpointed),
            events_read: self.state.events_read,
        }
    }
}
