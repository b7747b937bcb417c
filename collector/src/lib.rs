//! tcpulse-collector: reads status events from every partition, decodes and deduplicates
//! them, aggregates them on event time, writes InfluxDB line protocol to one or more
//! stores, and checkpoints a partition only up to what every store acknowledged.
//!
//! # Layout
//!
//! | module | job | must not |
//! | --- | --- | --- |
//! | [`source`] | the transport seam: [`SourceEvent`], [`ReadFrom`](source::ReadFrom), [`PartitionSource`], [`SourceProvider`]; the file and channel sources; where the Event Hubs adapter plugs in | decode, or read ahead without bound |
//! | [`any_source`] | the source a config names ([`any_source::from_config`]): file or Event Hubs behind one provider | be known by `source` or `eventhubs` |
//! | [`eventhubs`] | the Event Hubs adapter: one consumer per partition, partitions from `$management`, partition tips polled for lag | buffer beyond the prefetch |
//! | [`config`] | TOML + environment, validated; secrets only from env or files (checked by `check-config`); the reference config (`config` subcommand) generated from the structs | connect to anything |
//! | [`cli`] | the command line: subcommands and the `run` flags laid over [`config`] | hold a setting the config file cannot |
//! | [`dead_letter`] | the dead-letter file: refused events and rejected batches (JSONL, capped, rotated) | stop a partition |
//! | [`aggregate`] | event-time state per instance, rollups per connector at aligned window ends, peaks, staleness, snapshots | read the wall clock (except when told the source is idle) |
//! | [`sinks`] | the [`sinks::Sink`] trait; `influxdb_v2`, `influxdb_v1`, `file`; HTTP + gzip; retries honouring `Retry-After`; dead-lettering of rejected batches | drop a batch that might still be stored |
//! | [`checkpoint`] | [`checkpoint::CheckpointStore`]: the atomic file store (corrupt files reported and moved aside) and the Azure Blob store in the SDKs' layout | start a partition from the beginning silently |
//! | [`ownership`] | with the Blob store: which partitions this collector owns (the SDKs' claim/renew/steal protocol and balancing), starting and stopping their pipelines, releasing them at shutdown | judge expiry by its own clock |
//! | [`pipeline`] | one partition: source → decode → dedup → aggregate → batches → sinks; acks back in order; the low-watermark checkpoint; backpressure | hold more than the in-flight bound |
//! | [`metrics`] | the Prometheus registry (with `tcpulse_build_info` and the process metrics), `/metrics` (OpenMetrics or text 0.0.4, as the scraper asks) `/healthz` `/readyz`, `tc_pipeline` numbers | keep a second set of counters |
//! | [`internal_events`] | named operational events (the shared `cli_support::telemetry` mechanism): one counter each, one log line per key at most once a minute; the only place that logs a warning or an error | log per event in a flood |
//!
//! The demo (embedded hub, simulated agents, this collector and a fleet view in one process)
//! is the `tcpulse-demo` crate, which depends on this one; this crate depends on neither the
//! hub nor the agent. `tcpulse-collector demo` is kept, hidden, only to say so.
//!
//! # Stored data
//!
//! The collector writes the measurements of DESIGN.md "Stored data" (line protocol built by
//! [`tcpulse_schema::line`]), plus per-sink series of `tc_pipeline`:
//!
//! | measurement | tags | fields | stamped |
//! | --- | --- | --- | --- |
//! | `tc_instance` | connector, deployment, region, scaleset, instance | every field of [`tcpulse_schema::line::INSTANCE_FIELDS`], each explained there | the event's sample time (`up=0` alone at the window end that found it stale) |
//! | `tc_connector` | connector, deployment, region | instances_online, call_count, capacity_planned, capacity_max, utilization, headroom_calls, peak_calls, instances_needed, vcpu_needed | window ends aligned to `aggregate.rollup_interval` |
//! | `tc_pipeline` | collector, partition | events, dead_letters, duplicates (totals since start), lag_seconds, checkpoint_age_seconds | wall clock, every `pipeline_interval` per partition |
//! | `tc_pipeline` | collector, sink | sink_errors (failed write attempts since start), sink_dead_lettered (rejected batches among them, in the dead-letter file), sink_latency_seconds (most recent write attempt) | wall clock, every `pipeline_interval`, written by one partition |
//!
//! `sink` is the sink's kind: `influxdb_v2`, `influxdb_v1` or `file`. Every sink receives
//! every sink's series, so a store that works shows the errors of one that does not. The
//! counters restart at zero with the process (query them with `non_negative_difference`).
//! See [`metrics`] for how the numbers are read from the `/metrics` counters.
//!
//! [`run`] is the whole collector: it builds everything fallible first (sinks, dead-letter
//! file, checkpoint directory, metrics listener), then runs one task per partition under a
//! [`TaskTracker`], and returns once the caller's [`CancellationToken`] fired (or every
//! source ended) and every task, delivery included, has finished.

pub mod aggregate;
pub mod any_source;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod eventhubs;
pub mod internal_events;
pub mod metrics;
pub mod ownership;
pub mod pipeline;
pub mod sinks;
pub mod source;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use pipeline::PartitionSummary;
pub use source::{PartitionSource, PartitionTip, SourceError, SourceEvent, SourceProvider};

use crate::checkpoint::{BlobCheckpointStore, CheckpointStore, FileCheckpointStore};
use crate::config::CheckpointStoreKind;
use crate::dead_letter::{DeadLetterFile, DeadLetterLimits};
use crate::internal_events::{
    DeadLetterSyncFailed, InternalEvent, MetricsServerFailed, PartitionTaskFailed, SinkFlushFailed,
    SinkWithoutToken, SourceFailed, SourceUnauthorized,
};
use crate::metrics::Metrics;
use crate::pipeline::{PipelineSettings, Shared};
use crate::sinks::retry::give_up_after;
use crate::sinks::Sink;

/// A setup step failed; the variant names the component and the step.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The v2 sink could not be set up.
    #[error(transparent)]
    InfluxDbV2(#[from] sinks::influxdb_v2::config::InfluxDbV2BuildError),
    /// The v1 sink could not be set up.
    #[error(transparent)]
    InfluxDbV1(#[from] sinks::influxdb_v1::config::InfluxDbV1BuildError),
    /// The file sink could not be opened.
    #[error(transparent)]
    FileSink(#[from] sinks::file::config::FileSinkBuildError),
    /// The dead-letter file could not be opened.
    #[error("dead-letter file {path}: {source}; fix permissions or set `dead_letter.path`")]
    DeadLetter {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint directory is not writable.
    #[error("checkpoint dir {dir} not writable: {source}; fix permissions or set `checkpoint.dir` / --checkpoint-dir")]
    CheckpointDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Azure Blob checkpoint store is misconfigured (a missing key, a bad URL).
    #[error(transparent)]
    AzureBlob(#[from] checkpoint::blob::config::AzureBlobBuildError),
    /// The metrics listener could not bind.
    #[error(transparent)]
    Metrics(#[from] metrics::ServeError),
    /// The Event Hubs connection string is missing or unreadable.
    #[error("Event Hubs connection string: {0}")]
    EventHubSecret(String),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// One entry per partition.
    pub partitions: Vec<PartitionSummary>,
}

/// Everything [`run`] sets up before it runs.
#[derive(Debug)]
pub struct Built {
    config: Config,
    sinks: Vec<Arc<dyn Sink>>,
    checkpoints: Arc<dyn CheckpointStore>,
    /// The Blob store again when it is the checkpoint store: partitions are then owned.
    blob: Option<Arc<BlobCheckpointStore>>,
    dead_letters: Arc<DeadLetterFile>,
    metrics: Arc<Metrics>,
    listener: Option<tokio::net::TcpListener>,
}

/// The checkpoint store, and the Blob store again when it is one (for ownership).
struct Stores {
    checkpoints: Arc<dyn CheckpointStore>,
    blob: Option<Arc<BlobCheckpointStore>>,
}

impl Built {
    /// The metrics registry (tests read it).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The address `/metrics` is served on, if enabled.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// The sinks a config asks for, built (secrets resolved, endpoints prepared; nothing
/// connects).
pub fn build_sinks(config: &Config, metrics: &Metrics) -> Result<Vec<Arc<dyn Sink>>, BuildError> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(c) = &config.sinks.influxdb_v2 {
        let sink = c.build()?;
        if !sink.has_token() {
            SinkWithoutToken {
                sink: sink.name(),
                token_env: &c.token_env,
            }
            .emit(metrics);
        }
        sinks.push(Arc::new(sink));
    }
    if let Some(c) = &config.sinks.influxdb_v1 {
        sinks.push(Arc::new(c.build()?));
    }
    if let Some(c) = &config.sinks.file {
        sinks.push(Arc::new(c.build()?));
    }
    Ok(sinks)
}

/// Validates `config` and resolves everything it names without connecting or writing:
/// secrets, URLs, positions. Returns a one-line-per-item description for the operator.
pub fn check_config(config: &mut Config) -> Result<Vec<String>, BuildError> {
    config.validate()?;
    config.validate_source()?;
    let mut lines = vec![format!("name: {}", config.name)];
    if let Some(eh) = &config.source.eventhub {
        lines.push(format!(
            "source: eventhub, consumer group {}",
            eh.consumer_group
        ));
    }
    if let Some(f) = &config.source.file {
        lines.push(format!(
            "source: file {} as partition {}",
            f.path.display(),
            f.partition
        ));
    }
    let notes = config.check_secrets()?;
    if let Some(c) = &config.sinks.influxdb_v2 {
        lines.push(format!("sink: influxdb_v2 {}", c.build()?.url()));
    }
    if let Some(c) = &config.sinks.influxdb_v1 {
        lines.push(format!("sink: influxdb_v1 {}", c.build()?.url()));
    }
    if let Some(c) = &config.sinks.file {
        lines.push(format!("sink: file {}", c.path.display()));
    }
    match (&config.checkpoint.store, &config.checkpoint.azure_blob) {
        (CheckpointStoreKind::AzureBlob, Some(blob)) => {
            let store = blob.build()?;
            lines.push(format!(
                "checkpoints: azure_blob {} (partitions shared with the other owners)",
                store.client().container_url()
            ));
        }
        _ => lines.push(format!("checkpoints: {}", config.checkpoint.dir.display())),
    }
    lines.push(format!(
        "dead letters: {}",
        config.dead_letter.path.display()
    ));
    lines.extend(notes.into_iter().map(|n| format!("note: {n}")));
    Ok(lines)
}

/// Builds every fallible piece of a run (see [`BuildError`]). The source is not part of
/// it: [`run`] takes it from the config, [`run_built`] from the caller.
pub async fn build(mut config: Config) -> Result<Built, BuildError> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new());
    let sinks = build_sinks(&config, &metrics)?;
    let dead_letters = DeadLetterFile::open(
        &config.dead_letter.path,
        DeadLetterLimits {
            max_body_bytes: config.dead_letter.max_body_bytes,
            max_file_bytes: config.dead_letter.max_file_bytes,
        },
    )
    .map_err(|source| BuildError::DeadLetter {
        path: config.dead_letter.path.clone(),
        source,
    })?;
    let Stores { checkpoints, blob } = build_checkpoint_store(&config)?;
    let listener = if config.http.enabled {
        Some(metrics::bind(config.http.listen).await?)
    } else {
        None
    };
    Ok(Built {
        config,
        sinks,
        checkpoints,
        blob,
        dead_letters: Arc::new(dead_letters),
        metrics,
        listener,
    })
}

/// The checkpoint store `checkpoint.store` names: the file store (its directory checked
/// for writing) or the Azure Blob store (secrets resolved; nothing contacted).
fn build_checkpoint_store(config: &Config) -> Result<Stores, BuildError> {
    match (&config.checkpoint.store, &config.checkpoint.azure_blob) {
        (CheckpointStoreKind::AzureBlob, Some(blob)) => {
            let store = Arc::new(blob.build()?);
            Ok(Stores {
                checkpoints: store.clone(),
                blob: Some(store),
            })
        }
        _ => {
            let store = FileCheckpointStore::new(&config.checkpoint.dir);
            store
                .check_writable()
                .map_err(|source| BuildError::CheckpointDir {
                    dir: config.checkpoint.dir.clone(),
                    source,
                })?;
            Ok(Stores {
                checkpoints: Arc::new(store),
                blob: None,
            })
        }
    }
}

/// Runs the collector from `config` until `shutdown` is cancelled (or every source
/// ended), then finishes in-flight batches, writes checkpoints and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<RunSummary, BuildError> {
    let provider = any_source::from_config(&config)?;
    let built = build(config).await?;
    if let Some(stats) = provider.credential_stats() {
        built.metrics.set_credential(stats);
    }
    Ok(run_built(built, provider, shutdown).await)
}

/// Runs an already [`build`]-ed collector over any [`SourceProvider`] (the Event Hubs
/// adapter, or an in-process source in tests).
pub async fn run_built<P: SourceProvider>(
    built: Built,
    provider: P,
    shutdown: CancellationToken,
) -> RunSummary {
    let Built {
        config,
        sinks,
        checkpoints,
        blob,
        dead_letters,
        metrics,
        listener,
    } = built;
    let tracker = TaskTracker::new();
    let give_up = give_up_after(&shutdown, config.retry.shutdown_grace);
    let server_stop = CancellationToken::new();
    let server = listener.map(|l| {
        let (metrics, stop) = (metrics.clone(), server_stop.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(l, metrics.clone(), stop).await {
                MetricsServerFailed {
                    error: &e.to_string(),
                }
                .emit(&metrics);
            }
        })
    });
    let provider = Arc::new(provider);
    let shared = Shared {
        sinks: sinks.clone().into(),
        checkpoints,
        scope: provider.scope(),
        dead_letters: dead_letters.clone(),
        metrics: metrics.clone(),
        tracker: tracker.clone(),
        give_up: give_up.clone(),
    };
    let settings = PipelineSettings::from_config(&config);

    let partitions = list_partitions(provider.as_ref(), &config, &metrics, &shutdown).await;
    tracing::info!(
        partitions = partitions.len(),
        sinks = sinks.len(),
        "collector running"
    );
    let summaries = match blob {
        Some(store) => {
            let owning = ownership::Owning {
                provider,
                partitions,
                settings,
                shared,
                store,
                config: config.checkpoint.load_balancing.clone(),
                owner_id: ownership::owner_id(&config.name),
            };
            ownership::run(owning, shutdown.clone()).await
        }
        None => run_every_partition(provider, partitions, settings, shared, &shutdown).await,
    };
    metrics.set_ready(false);
    tracker.close();
    tracker.wait().await;
    flush_at_shutdown(&sinks, &dead_letters, &metrics).await;
    server_stop.cancel();
    if let Some(s) = server {
        let _ = s.await;
    }
    give_up.cancel();
    tracing::info!("collector stopped");
    RunSummary {
        partitions: summaries,
    }
}

/// Runs every partition (the file store: this collector is the only reader) until each
/// has finished.
async fn run_every_partition<P: SourceProvider>(
    provider: Arc<P>,
    partitions: Vec<String>,
    settings: PipelineSettings,
    shared: Shared,
    shutdown: &CancellationToken,
) -> Vec<PartitionSummary> {
    let metrics = shared.metrics.clone();
    let handles: Vec<_> = partitions
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            // The first partition also writes the per-sink tc_pipeline points.
            let settings = PipelineSettings {
                sink_points: i == 0,
                ..settings.clone()
            };
            shared.tracker.spawn(pipeline::run_partition(
                provider.clone(),
                p,
                settings,
                shared.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    metrics.set_ready(true);
    let mut summaries = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(s) => summaries.push(s),
            Err(e) => PartitionTaskFailed {
                error: &e.to_string(),
            }
            .emit(&metrics),
        }
    }
    summaries
}

/// The source's partitions, retried until the source answers or `shutdown` fires (then
/// none): refused credentials minutes apart, anything else on `retry.initial`..`retry.max`,
/// each retry logged with the cause.
async fn list_partitions<P: SourceProvider>(
    provider: &P,
    config: &Config,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Vec<String> {
    let mut wait = config.retry.initial;
    let mut auth_wait = config.retry.auth_initial;
    while !shutdown.is_cancelled() {
        let e = match provider.partitions().await {
            Ok(p) => return p,
            Err(e) => e,
        };
        let delay = if e.is_unauthorized() {
            let d = auth_wait;
            auth_wait = (auth_wait * 2).min(config.retry.auth_max);
            SourceUnauthorized {
                partition: "*",
                operation: "partitions",
                error: &e.to_string(),
                retry_in: d,
            }
            .emit(metrics);
            d
        } else {
            let d = wait;
            wait = (wait * 2).min(config.retry.max);
            SourceFailed {
                partition: "*",
                operation: "partitions",
                error: &e.to_string(),
            }
            .emit(metrics);
            d
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    Vec::new()
}

/// Flushes every sink and syncs the dead-letter file once every task has finished.
async fn flush_at_shutdown(
    sinks: &[Arc<dyn Sink>],
    dead_letters: &DeadLetterFile,
    metrics: &Metrics,
) {
    for s in sinks {
        if let Err(e) = s.flush().await {
            SinkFlushFailed {
                sink: s.name(),
                error: &e.to_string(),
            }
            .emit(metrics);
        }
    }
    if let Err(e) = dead_letters.sync() {
        DeadLetterSyncFailed {
            error: &e.to_string(),
        }
        .emit(metrics);
    }
}
