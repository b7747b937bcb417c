//! Partition ownership with load balancing, for collectors sharing a consumer group through
//! an Azure Blob container (`checkpoint.store = "azure_blob"`), in the protocol the Azure
//! SDKs' event processors use, so they can share it too.
//!
//! Every `load_balancing.interval` (×0.8–1.2) the collector lists the ownership blobs,
//! renews the partitions it owns (a conditional claim on each one's ETag) and claims or
//! steals as [`balance::plan`] says. Then:
//!
//! - a partition newly owned starts its pipeline (checkpoint loaded from the container,
//!   receiver opened with owner level 0 as the SDKs do);
//! - a partition lost (another owner's claim changed its ETag, or the listing shows
//!   another owner) stops its receiver at once: the pipeline stops reading, delivers what
//!   it read and checkpoints what the stores acknowledged (nothing is lost: the new owner
//!   resumes from a checkpoint at or before it, and replays rewrite identical points);
//! - while the container cannot be reached, owned partitions keep running (their
//!   checkpoint writes fail and are retried, so nothing is checkpointed past what is
//!   stored) until the ownership expires, then stop, since another collector may take
//!   them over;
//! - at shutdown every partition stops (flush, final checkpoint), then each ownership is
//!   released (`ownerid = ""`), so the others claim them in their next cycle instead of
//!   after the expiration.
//!
//! # Clocks
//!
//! An ownership expires when its blob's Last-Modified is older than the expiration. Both
//! sides of that comparison are the Blob service's clock: Last-Modified, and the `Date` of
//! the listing's answer. A collector's own clock is never used, so collectors whose clocks
//! disagree (by any amount: the bound is the service's, not theirs) neither steal live
//! partitions nor wait longer for dead ones. (The SDKs compare with the local clock; there
//! a skew of more than `expiration − interval` causes false takeovers.) The only bound on a
//! collector's clock is Azure Storage's: a Shared Key request whose `x-ms-date` is more than
//! 15 minutes off is refused ("Authorize with Shared Key", Specifying the Date header,
//! <https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key>). The
//! collector's monotonic clock only measures how long its own renewals have failed.
//!
//! # No false dip on takeover
//!
//! A connector's events live on one partition, so its rollup moves with the partition.
//! The checkpoint a collector writes carries the aggregator's state right after the
//! checkpointed event (per instance: the reports since the last closed window and the
//! newest before it; per connector: the window, the peak), in the same Put Blob as the
//! SDK's `sequencenumber`/`offset` metadata (see [`crate::checkpoint::blob`]). A new owner
//! restores that state and replays from the checkpoint, so its first rollups see every
//! instance the old owner saw and are the points one collector writes for the same events
//! (aggregation is a function of the events and their enqueue times only; see
//! [`crate::aggregate`]). Points the old owner wrote after its last checkpoint are written
//! again, identically. One exception: taking over from an SDK processor that checkpointed
//! last (its checkpoint has no tcpulse state) starts with fresh state, logged.
//!
//! # Layout
//!
//! - [`balance`]: one cycle's decision, a pure function.
//! - [`config`]: the `checkpoint.load_balancing` table.
//! - here: [`run`], the cycle and the partitions it starts and stops.

pub mod balance;
pub mod config;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rand::Rng as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::blob::{BlobCheckpointStore, OwnershipListing};
use crate::internal_events::{
    InternalEvent, OwnershipStoreFailed, PartitionOwnershipLost, PartitionTaskFailed,
};
use crate::metrics::Metrics;
use crate::pipeline::{self, PartitionSummary, PipelineSettings, Shared};
use crate::source::SourceProvider;
use balance::{plan, Claim, View};
use config::LoadBalancingConfig;

/// This process's owner id: the collector's name (letters, digits, `.`, `_`, `-`; the rest
/// becomes `_`) and a random UUID, so two collectors given the same name never share one.
pub fn owner_id(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}/{}", uuid::Uuid::new_v4().simple())
}

/// What the ownership loop needs.
pub struct Owning<P: SourceProvider> {
    /// The source.
    pub provider: Arc<P>,
    /// The hub's partitions.
    pub partitions: Vec<String>,
    /// Settings every partition gets.
    pub settings: PipelineSettings,
    /// What partitions share.
    pub shared: Shared,
    /// The container.
    pub store: Arc<BlobCheckpointStore>,
    /// Strategy and timing.
    pub config: LoadBalancingConfig,
    /// This collector's owner id ([`owner_id`]).
    pub owner_id: String,
}

/// An ownership held: its ETag and when it was last renewed (monotonic).
#[derive(Debug, Clone)]
struct Held {
    etag: String,
    renewed: Instant,
}

/// A partition's pipeline task.
struct Task {
    cancel: CancellationToken,
    handle: JoinHandle<PartitionSummary>,
    sink_points: bool,
}

/// The loop's state between cycles.
#[derive(Default)]
struct State {
    held: BTreeMap<String, Held>,
    tasks: BTreeMap<String, Task>,
    summaries: Vec<PartitionSummary>,
    last_listed: Option<Instant>,
}

/// Owns partitions until `shutdown`: runs the cycle, starts and stops partitions, then
/// stops them all and releases their ownership. Returns every partition run's summary.
pub async fn run<P: SourceProvider>(
    ctx: Owning<P>,
    shutdown: CancellationToken,
) -> Vec<PartitionSummary> {
    let mut state = State::default();
    let metrics = ctx.shared.metrics.clone();
    tracing::info!(owner = %ctx.owner_id, partitions = ctx.partitions.len(), strategy = ?ctx.config.strategy, "partition ownership started");
    while !shutdown.is_cancelled() {
        cycle(&ctx, &mut state).await;
        reconcile(&ctx, &mut state, &shutdown).await;
        report(&ctx, &state, &metrics);
        let wait = ctx
            .config
            .interval
            .mul_f64(rand::rng().random_range(0.8..1.2));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    metrics.set_ready(false);
    for (_, task) in std::mem::take(&mut state.tasks) {
        task.cancel.cancel();
        collect(&mut state.summaries, task.handle.await, &metrics);
    }
    release_all(&ctx, &mut state).await;
    report(&ctx, &state, &metrics);
    state.summaries
}

/// One cycle: list, renew, claim. A failed listing changes nothing but expiry.
async fn cycle<P: SourceProvider>(ctx: &Owning<P>, state: &mut State) {
    let scope = &ctx.shared.scope;
    let metrics = &ctx.shared.metrics;
    let listing = match ctx.store.list_ownership(scope).await {
        Ok(l) => l,
        Err(e) => {
            OwnershipStoreFailed {
                operation: "list",
                error: &e.to_string(),
            }
            .emit(metrics);
            expire(ctx, state);
            return;
        }
    };
    metrics.log.clear("ownership/list");
    state.last_listed = Some(Instant::now());
    let view = View {
        partitions: &ctx.partitions,
        ownerships: &listing.ownerships,
        server_time_ms: listing.server_time_ms,
        expiration_ms: i64::try_from(ctx.config.expiration.as_millis()).unwrap_or(i64::MAX),
        me: &ctx.owner_id,
    };
    let plan = plan(&view, ctx.config.strategy, &mut rand::rng());
    metrics.ownership_owners.set(plan.owners as i64);
    // Held but listed under another owner (or gone): taken over.
    let listed_mine: Vec<&str> = plan.renew.iter().map(|(p, _)| p.as_str()).collect();
    let taken: Vec<String> = state
        .held
        .keys()
        .filter(|p| !listed_mine.contains(&p.as_str()))
        .cloned()
        .collect();
    for p in taken {
        lose(state, &p, "stolen", metrics);
    }
    for (p, etag) in &plan.renew {
        renew(ctx, state, p, etag).await;
    }
    for c in &plan.claim {
        claim(ctx, state, c).await;
    }
    publish_owners(ctx, &listing, state, metrics);
    expire(ctx, state);
}

async fn renew<P: SourceProvider>(ctx: &Owning<P>, state: &mut State, p: &str, etag: &str) {
    let metrics = &ctx.shared.metrics;
    match ctx
        .store
        .claim(&ctx.shared.scope, p, &ctx.owner_id, Some(etag))
        .await
    {
        Ok(Some(o)) => {
            metrics.log.clear("ownership/claim");
            let fresh = !state.held.contains_key(p);
            state.held.insert(
                p.to_owned(),
                Held {
                    etag: o.etag,
                    renewed: Instant::now(),
                },
            );
            if fresh {
                // Listed as ours but not held: a restart within the expiration.
                metrics.ownership_claims.inc();
            }
        }
        Ok(None) => {
            if state.held.contains_key(p) {
                lose(state, p, "stolen", metrics);
            }
        }
        Err(e) => OwnershipStoreFailed {
            operation: "claim",
            error: &e.to_string(),
        }
        .emit(metrics),
    }
}

async fn claim<P: SourceProvider>(ctx: &Owning<P>, state: &mut State, c: &Claim) {
    let metrics = &ctx.shared.metrics;
    match ctx
        .store
        .claim(
            &ctx.shared.scope,
            &c.partition,
            &ctx.owner_id,
            c.etag.as_deref(),
        )
        .await
    {
        Ok(Some(o)) => {
            metrics.log.clear("ownership/claim");
            metrics.ownership_claims.inc();
            if c.from.is_some() {
                metrics.ownership_steals.inc();
            }
            tracing::info!(partition = %c.partition, from = c.from.as_deref().unwrap_or("-"), "partition claimed");
            state.held.insert(
                c.partition.clone(),
                Held {
                    etag: o.etag,
                    renewed: Instant::now(),
                },
            );
        }
        Ok(None) => PartitionOwnershipLost {
            partition: &c.partition,
            reason: "race",
        }
        .emit(metrics),
        Err(e) => OwnershipStoreFailed {
            operation: "claim",
            error: &e.to_string(),
        }
        .emit(metrics),
    }
}

/// Drops `p` from the held set and reports why; `reconcile` stops its pipeline.
fn lose(state: &mut State, p: &str, reason: &'static str, metrics: &Metrics) {
    if state.held.remove(p).is_some() {
        PartitionOwnershipLost {
            partition: p,
            reason,
        }
        .emit(metrics);
    }
}

/// Drops ownerships not renewed within the expiration: others may own them now.
fn expire<P: SourceProvider>(ctx: &Owning<P>, state: &mut State) {
    let stale: Vec<String> = state
        .held
        .iter()
        .filter(|(_, h)| h.renewed.elapsed() >= ctx.config.expiration)
        .map(|(p, _)| p.clone())
        .collect();
    for p in stale {
        lose(state, &p, "expired", &ctx.shared.metrics);
    }
}

/// Stops pipelines of partitions not held, reaps finished ones, starts held ones.
async fn reconcile<P: SourceProvider>(
    ctx: &Owning<P>,
    state: &mut State,
    shutdown: &CancellationToken,
) {
    for (p, t) in &state.tasks {
        if !state.held.contains_key(p) {
            t.cancel.cancel();
        }
    }
    let done: Vec<String> = state
        .tasks
        .iter()
        .filter(|(_, t)| t.handle.is_finished())
        .map(|(p, _)| p.clone())
        .collect();
    for p in done {
        if let Some(t) = state.tasks.remove(&p) {
            collect(&mut state.summaries, t.handle.await, &ctx.shared.metrics);
        }
    }
    let starting: Vec<String> = state
        .held
        .keys()
        .filter(|p| !state.tasks.contains_key(*p))
        .cloned()
        .collect();
    for p in starting {
        // One partition writes the per-sink tc_pipeline points; the next one started takes
        // over when it stops.
        let sink_points = !state.tasks.values().any(|t| t.sink_points);
        let settings = PipelineSettings {
            sink_points,
            ..ctx.settings.clone()
        };
        let cancel = shutdown.child_token();
        let handle = ctx.shared.tracker.spawn(pipeline::run_partition(
            ctx.provider.clone(),
            p.clone(),
            settings,
            ctx.shared.clone(),
            cancel.clone(),
        ));
        state.tasks.insert(
            p,
            Task {
                cancel,
                handle,
                sink_points,
            },
        );
    }
}

/// Keeps a finished partition's summary; a panicked one is reported.
fn collect(
    summaries: &mut Vec<PartitionSummary>,
    joined: Result<PartitionSummary, tokio::task::JoinError>,
    metrics: &Metrics,
) {
    match joined {
        Ok(s) => summaries.push(s),
        Err(e) => PartitionTaskFailed {
            error: &e.to_string(),
        }
        .emit(metrics),
    }
}

/// At shutdown: releases every held ownership (`ownerid = ""`, conditional on its ETag).
async fn release_all<P: SourceProvider>(ctx: &Owning<P>, state: &mut State) {
    for (p, h) in std::mem::take(&mut state.held) {
        match ctx
            .store
            .claim(&ctx.shared.scope, &p, "", Some(&h.etag))
            .await
        {
            Ok(Some(_)) => tracing::info!(partition = %p, "partition ownership released"),
            Ok(None) => {}
            Err(e) => OwnershipStoreFailed {
                operation: "release",
                error: &e.to_string(),
            }
            .emit(&ctx.shared.metrics),
        }
    }
}

/// `partition_owner{partition, owner}` from the listing, with this cycle's claims.
fn publish_owners<P: SourceProvider>(
    ctx: &Owning<P>,
    listing: &OwnershipListing,
    state: &State,
    metrics: &Metrics,
) {
    let mut owners: BTreeMap<&str, &str> = listing
        .ownerships
        .iter()
        .map(|o| (o.partition.as_str(), o.owner_id.as_str()))
        .collect();
    for p in state.held.keys() {
        owners.insert(p, &ctx.owner_id);
    }
    for (p, o) in owners.iter_mut() {
        if state.held.contains_key(*p) {
            continue;
        }
        if *o == ctx.owner_id {
            *o = "";
        }
    }
    metrics.partition_owner.clear();
    for (p, o) in owners {
        metrics
            .partition_owner
            .get_or_create(&vec![
                ("partition".into(), p.into()),
                ("owner".into(), o.into()),
            ])
            .set(1);
    }
}

/// Gauges and `/readyz`: ready while the container was listed within the expiration.
fn report<P: SourceProvider>(ctx: &Owning<P>, state: &State, metrics: &Metrics) {
    metrics.owned_partitions.set(state.held.len() as i64);
    let listed = state.last_listed.map(|t| t.elapsed());
    let ready = listed.is_some_and(|d| d < ctx.config.expiration);
    metrics.set_ready(ready);
    let owned: Vec<&str> = state.held.keys().map(String::as_str).collect();
    let age = listed.map_or("never".to_string(), |d| {
        format!("{:.0}s ago", d.as_secs_f64())
    });
    metrics.set_ownership_note(format!(
        "owner {} owns {} of {} partitions [{}]; {} owners; container listed {age}",
        ctx.owner_id,
        owned.len(),
        ctx.partitions.len(),
        owned.join(","),
        metrics.ownership_owners.get(),
    ));
}
