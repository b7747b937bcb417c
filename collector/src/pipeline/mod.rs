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
//!
//! # Layout
//!
//! - [`run_partition`] (here): resume, open, run the loop, finish.
//! - `resume`: the checkpoint loaded and judged against the partition ([`judge_checkpoint`]),
//!   the source opened and reopened with retries.
//! - `partition`: the loop and the per-event work; sealing and delivering batches.
//! - `batch`: the open batch and the in-flight queue ([`InFlight`]).
//! - `checkpointing`: writing the checkpoint at the low watermark.
//! - `gauges`: lag and checkpoint-age gauges, `tc_pipeline` points.

mod batch;
mod checkpointing;
mod gauges;
mod partition;
mod resume;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tcpulse_eventhub::backoff::ExponentialBackoff;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use batch::{InFlight, Position};
pub use resume::{judge_checkpoint, CheckpointVerdict};

use crate::aggregate::AggregateSettings;
use crate::checkpoint::{CheckpointScope, CheckpointStore};
use crate::config::{AggregateConfig, BatchConfig, CheckpointConfig, Config, RetryConfig};
use crate::dead_letter::DeadLetterFile;
use crate::metrics::Metrics;
use crate::sinks::retry::RetryPolicy;
use crate::sinks::Sink;
use crate::source::SourceProvider;
use partition::{PartitionLoop, Run};

/// Settings of one partition's pipeline: the config's sections as the operator wrote them
/// ([`PipelineSettings::from_config`]), so a setting added to one of them reaches the
/// pipeline without being copied here.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// The `collector` tag of `tc_pipeline` points (`name`).
    pub collector: String,
    /// `[batch]`.
    pub batch: BatchConfig,
    /// `[aggregate]`.
    pub aggregate: AggregateConfig,
    /// `[aggregate]` as the aggregator takes it (milliseconds), derived once.
    pub aggregator: AggregateSettings,
    /// `[checkpoint]`.
    pub checkpoint: CheckpointConfig,
    /// `[retry]`.
    pub retry: RetryConfig,
    /// `pipeline_interval`: how often the partition writes its `tc_pipeline` point.
    pub pipeline_interval: Duration,
    /// Whether this partition also writes the per-sink `tc_pipeline` points (one
    /// partition per collector does).
    pub sink_points: bool,
}

impl PipelineSettings {
    /// The settings `config` gives every partition (none writes the sink points yet).
    pub fn from_config(config: &Config) -> Self {
        PipelineSettings {
            collector: config.name.clone(),
            batch: config.batch.clone(),
            aggregate: config.aggregate.clone(),
            aggregator: config.aggregate.settings(),
            checkpoint: config.checkpoint.clone(),
            retry: config.retry.clone(),
            pipeline_interval: config.pipeline_interval,
            sink_points: false,
        }
    }

    /// Store write retries.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: self.retry.initial,
            max: self.retry.max,
            max_retry_after: self.retry.max_retry_after,
        }
    }
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
    /// Metrics (and the log limiter of the named events).
    pub metrics: Arc<Metrics>,
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

/// Runs one partition until the source ends or `shutdown` is cancelled. Never fails:
/// every error is logged, counted and retried.
pub async fn run_partition<P: SourceProvider>(
    provider: Arc<P>,
    partition: String,
    settings: PipelineSettings,
    shared: Shared,
    shutdown: CancellationToken,
) -> PartitionSummary {
    let Some(mut resume) = resume::load(&partition, &settings, &shared, &shutdown).await else {
        return PartitionSummary {
            partition,
            checkpoint: None,
            events_read: 0,
        };
    };
    let opened = resume::open_first(
        provider.as_ref(),
        &partition,
        &mut resume,
        &settings,
        &shared,
        &shutdown,
    )
    .await;
    let Some(opened) = opened else {
        return PartitionSummary {
            partition,
            checkpoint: resume.checkpointed,
            events_read: 0,
        };
    };
    let resume::Resume {
        aggregator,
        checkpointed,
        anchor,
        ..
    } = resume;
    let state = PartitionLoop::new(&settings, &shared, &partition, aggregator);
    let mut run = Run::new(state, provider.as_ref(), opened, anchor, &shutdown);
    run.run().await;
    run.finish(checkpointed).await
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
