//! Where a partition resumes: the checkpoint loaded (with the aggregator state saved with it),
//! checked against the partition's `$management` bounds on every open ([`judge_checkpoint`]),
//! and the source opened there, retrying with backoff (refused credentials on the slow
//! schedule).

use std::time::Duration;

use tcpulse_eventhub::backoff::ExponentialBackoff;
use tcpulse_schema::Timestamp;
use tokio_util::sync::CancellationToken;

use super::{retry_backoff, sleep_or_cancel, PipelineSettings, Shared};
use crate::aggregate::{Aggregator, Snapshot};
use crate::checkpoint::CheckpointError;
use crate::config::CheckpointStoreKind;
use crate::internal_events::{
    CheckpointAheadOfPartition, CheckpointCorrupt, CheckpointFailed, CheckpointMismatch,
    CheckpointStateUnusable, InternalEvent, RetentionLost, SourceFailed, SourceUnauthorized,
};
use crate::metrics::{partition_labels, Metrics};
use crate::source::{PartitionBounds, ReadFrom, SourceError, SourceEvent, SourceProvider};

/// Where a partition starts, from its checkpoint.
pub(super) struct Resume {
    /// Where the source opens.
    pub(super) start: ReadFrom,
    /// The aggregator, restored from the checkpoint's state when it has one.
    pub(super) aggregator: Aggregator,
    /// The checkpointed sequence number.
    pub(super) checkpointed: Option<i64>,
    /// The checkpointed event's enqueue time, to recognise it when re-read.
    pub(super) anchor: Option<i64>,
}

/// Loads the partition's checkpoint, retrying a store that fails; a corrupt checkpoint is
/// quarantined and the partition starts at `checkpoint.on_corrupt`. `None` on shutdown.
pub(super) async fn load(
    partition: &str,
    settings: &PipelineSettings,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<Resume> {
    let m = &shared.metrics;
    let mut backoff = retry_backoff(&settings.retry_policy());
    let fresh = |start| Resume {
        start,
        aggregator: Aggregator::new(settings.aggregator),
        checkpointed: None,
        anchor: None,
    };
    let resume = loop {
        match shared.checkpoints.load(&shared.scope, partition).await {
            Ok(Some(cp)) => {
                let aggregator = restore_state(cp.state.clone(), partition, settings, m);
                m.checkpoint_sequence
                    .get_or_create(&partition_labels(partition))
                    .set(cp.sequence_number);
                tracing::info!(partition = %partition, sequence_number = cp.sequence_number, "resuming after checkpoint");
                break Resume {
                    start: ReadFrom::AfterSequence(cp.sequence_number),
                    aggregator,
                    checkpointed: Some(cp.sequence_number),
                    anchor: cp.enqueued_time_ms,
                };
            }
            Ok(None) => break fresh(settings.checkpoint.initial_position.0),
            Err(e @ CheckpointError::Corrupt { .. }) => {
                let moved = shared
                    .checkpoints
                    .quarantine(&shared.scope, partition)
                    .await
                    .ok()
                    .flatten();
                CheckpointCorrupt {
                    partition,
                    error: &e.to_string(),
                    moved_to: moved.as_deref(),
                    start: &format!("{:?}", settings.checkpoint.on_corrupt.0),
                }
                .emit(m);
                break fresh(settings.checkpoint.on_corrupt.0);
            }
            Err(e) => {
                CheckpointFailed {
                    partition,
                    operation: "load",
                    error: &e.to_string(),
                }
                .emit(m);
                if sleep_or_cancel(backoff.next_backoff(), shutdown).await {
                    return None;
                }
            }
        }
    };
    shared
        .metrics
        .log
        .clear(&format!("checkpoint/{partition}/load"));
    Some(resume)
}

/// The aggregator saved with a checkpoint, or a fresh one when it has none or it does not
/// read back.
fn restore_state(
    state: Option<serde_json::Value>,
    partition: &str,
    settings: &PipelineSettings,
    metrics: &Metrics,
) -> Aggregator {
    match state.map(serde_json::from_value::<Snapshot>) {
        Some(Ok(snap)) => Aggregator::restore(settings.aggregator, snap),
        Some(Err(e)) => {
            CheckpointStateUnusable {
                partition,
                error: &e.to_string(),
            }
            .emit(metrics);
            Aggregator::new(settings.aggregator)
        }
        None => Aggregator::new(settings.aggregator),
    }
}

/// Opens the source where `resume` says (checked against the partition's bounds), retrying
/// until it opens; resets the aggregator when the checkpoint belonged to another incarnation
/// of the partition. `None` on shutdown.
pub(super) async fn open_first<P: SourceProvider>(
    provider: &P,
    partition: &str,
    resume: &mut Resume,
    settings: &PipelineSettings,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<Opened<P::Source>> {
    let mut backoff = retry_backoff(&settings.retry_policy());
    let mut auth_wait = settings.retry.auth_initial;
    loop {
        match open_checked(
            provider,
            partition,
            resume.start,
            resume.anchor,
            settings,
            shared,
        )
        .await
        {
            Ok(opened) => {
                if opened.reset_state {
                    resume.aggregator = Aggregator::new(settings.aggregator);
                }
                shared.metrics.log.clear(&format!("source/{partition}/"));
                return Some(opened);
            }
            Err(e) => {
                let wait = source_retry_wait(
                    &e,
                    "open",
                    partition,
                    &mut backoff,
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
pub(super) struct Opened<S> {
    pub(super) source: S,
    /// Where it was opened.
    pub(super) start: ReadFrom,
    /// The checkpoint belonged to another incarnation of the partition: the aggregator
    /// state saved with it does not apply.
    pub(super) reset_state: bool,
    /// The source was opened one event early, at the checkpointed event, to check that it
    /// is still the same event (a re-created partition that grew past the checkpoint has
    /// another one there).
    pub(super) verify: Option<Anchor>,
}

/// The checkpointed event as it was read: sequence number and enqueue time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Anchor {
    sequence_number: i64,
    enqueued_time_ms: i64,
}

impl Anchor {
    pub(super) fn matches(&self, ev: &SourceEvent) -> bool {
        ev.sequence_number == self.sequence_number && ev.enqueued_time_ms == self.enqueued_time_ms
    }
}

pub(super) fn report_mismatch(
    want: &Anchor,
    found: &SourceEvent,
    start: ReadFrom,
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
pub(super) async fn reopen<P: SourceProvider>(
    provider: &P,
    partition: &str,
    start: ReadFrom,
    backoff: &mut ExponentialBackoff,
    settings: &PipelineSettings,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<P::Source> {
    let mut auth_wait = settings.retry.auth_initial;
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
pub(super) async fn open_checked<P: SourceProvider>(
    provider: &P,
    partition: &str,
    start: ReadFrom,
    anchor: Option<i64>,
    settings: &PipelineSettings,
    shared: &Shared,
) -> Result<Opened<P::Source>, SourceError> {
    let ReadFrom::AfterSequence(checkpoint) = start else {
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
            (ReadFrom::AfterSequence(checkpoint - 1), false)
        }
        CheckpointVerdict::Fits => (start, false),
        CheckpointVerdict::AheadOfPartition { .. } => {
            (settings.checkpoint.on_ahead_of_partition.0, true)
        }
        CheckpointVerdict::BehindRetention { .. } => (ReadFrom::Earliest, false),
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
    start: ReadFrom,
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

fn describe_start(start: ReadFrom) -> String {
    match start {
        ReadFrom::Earliest => "earliest".into(),
        ReadFrom::Latest => "latest".into(),
        ReadFrom::AfterSequence(n) => format!("after sequence {n}"),
        ReadFrom::EnqueuedAfterMs(ms) => Timestamp::from_unix_millis(ms)
            .map(|t| format!("events enqueued after {t}"))
            .unwrap_or_else(|| format!("events enqueued after {ms} ms")),
    }
}

/// Reports a source failure and returns how long to wait: refused credentials wait on the
/// slow schedule (`auth_wait`, doubled up to `auth_retry_max`); a partition another
/// receiver took over while the collectors share a Blob store waits one load-balancing
/// interval, so the ownership cycle decides (it stops the partition when another owner
/// holds it) instead of the two receivers displacing each other (equal owner levels
/// displace the older one); anything else waits on `backoff`.
pub(super) fn source_retry_wait(
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
        *auth_wait = (wait * 2).min(settings.retry.auth_max);
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
    .emit(&shared.metrics);
    if e.is_stolen() && settings.checkpoint.store == CheckpointStoreKind::AzureBlob {
        return settings.checkpoint.load_balancing.interval;
    }
    backoff.next_backoff()
}
