//! The agent's run loop: build everything fallible first, then two tasks.
//!
//! - **reporter**: reads the source every `poll_interval`, asks [`Reporter`] what is due,
//!   adds host health, validates and encodes the events and appends them to the spool
//!   (durably) before waking the sender.
//! - **sender**: takes the oldest spooled events (one partition key per batch), hands them
//!   to the [`Publisher`], and removes them from the spool only when it accepted them.
//!   Transient errors back off exponentially ([`ExponentialBackoff`]: `retry_initial` doubling
//!   to `retry_max`, with jitter, never giving up). A fatal error (wrong key, hub not found)
//!   is retried on a slow schedule (`fatal_retry_initial` doubling to `fatal_retry_max`),
//!   with an ERROR line naming the cause at every attempt, while the reporter keeps
//!   spooling (bounded): a rotated key or a re-created hub is picked up without a restart.
//!
//! Spool failures (issue 12): a report the spool cannot append (disk full) is held in a
//! bounded [`MemoryQueue`] and written, first, once the spool works again (the spool
//! reopens itself); overflow is counted in `agent.dropped`. When sent events cannot be
//! removed, the sender keeps their ids and retries only the removal, with backoff, and
//! sends nothing until it succeeds: a failing spool never turns into repeated sends.
//!
//! Shutdown: the caller cancels `shutdown`. The reporter stops between reads; the sender
//! then flushes what it can for up to `shutdown_flush` (an in-flight send may finish
//! within that time), stopping at the first error, and leaves the rest spooled. Then the
//! publisher is closed and the spool fsync'd and closed. [`run`] returns only after every
//! task has ended.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tcpulse_eventhub::backoff::ExponentialBackoff;
use tcpulse_eventhub::identity::CredentialStats;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Config;
use crate::health::HealthProbe;
use crate::internal_events::{
    Counters, EventInvalid, EventsSent, EventsSpooled, InternalEvent, MemoryQueueDropped,
    PublishFailed, PublishRecovered, SendPaused, SourceFailed, SpoolAppendFailed, SpoolDropped,
    SpoolFailed, SpoolQuarantined, SpoolRecovered,
};
use crate::publish::{config::PublishConfig, PublishError, Publisher};
use crate::report::{agent_info, Reporter};
use crate::sources::{BuildError, Source};
use crate::spool::{MemoryQueue, Spool, SpoolError};

/// A start-up step failed; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The spool could not be opened.
    #[error("cannot open the spool")]
    Spool(#[source] SpoolError),
    /// The source could not be built.
    #[error("cannot set up the source")]
    Source(#[source] BuildError),
}

/// What a run did, returned when it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// This start's id.
    pub boot: Uuid,
    /// Events written to the spool during the run.
    pub events_spooled: u64,
    /// Events the publisher accepted during the run.
    pub events_sent: u64,
    /// Events left in the spool for the next start.
    pub spooled_at_exit: u64,
    /// Events dropped because the spool was full.
    pub dropped: u64,
    /// Whether the last publish attempt ended in a fatal error (sending was paused,
    /// retrying slowly, when the run ended).
    pub publish_fatal: bool,
}

/// Runs the agent until `shutdown` is cancelled. See the module docs.
pub async fn run<P: Publisher>(
    config: Config,
    publisher: P,
    shutdown: CancellationToken,
) -> Result<RunSummary, RunError> {
    run_with_counters(config, publisher, shutdown, Arc::new(Counters::default())).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    // The closures never panic on input; a panic there is a bug, surfaced as-is.
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// [`run`], counting into `counters` (so callers and tests can watch them).
pub async fn run_with_counters<P: Publisher>(
    config: Config,
    publisher: P,
    shutdown: CancellationToken,
    counters: Arc<Counters>,
) -> Result<RunSummary, RunError> {
    // Build: every fallible step before any task starts.
    let dir = config.spool.dir.clone();
    let max = config.spool.max_bytes;
    let spool = Arc::new(
        blocking(move || Spool::open(&dir, max))
            .await
            .map_err(RunError::Spool)?,
    );
    let source = config
        .source
        .build(&config.identity.instance)
        .map_err(RunError::Source)?;
    let boot = Uuid::new_v4();
    emit_quarantined(&spool, &counters);
    let first_seq = spool.last_seq().map_or(0, |s| s + 1);
    let host_boot = tcpulse_schema::Timestamp::from_unix_millis(
        i64::try_from(sysinfo::System::boot_time())
            .unwrap_or(0)
            .saturating_mul(1000),
    )
    .filter(|t| t.unix_millis() > 0);
    let reporter = Reporter::new(
        config.identity.clone(),
        boot,
        first_seq,
        config.report.interval,
        host_boot,
    )
    .with_slack(config.report.poll_interval / 2);
    let probe = HealthProbe::new(config.health.clone());
    tracing::info!(%boot, first_seq, backlog = spool.len(), source = config.source.type_name(),
        connector = %config.identity.connector, instance = %config.identity.instance, "tcpulse-agent started");

    let wake = Arc::new(Notify::new());
    let reporter_done = CancellationToken::new();
    let publisher = Arc::new(publisher);
    let publish_health = Arc::new(PublishHealth::new());
    let tracker = TaskTracker::new();
    tracker.spawn(report_loop(ReportCtx {
        source,
        reporter,
        probe,
        poll: config.report.poll_interval,
        spool: spool.clone(),
        counters: counters.clone(),
        wake: wake.clone(),
        shutdown: shutdown.clone(),
        done: reporter_done.clone(),
        pending: MemoryQueue::default(),
        publish_health: publish_health.clone(),
        credential: publisher.credential(),
    }));
    tracker.spawn(send_loop(SendCtx {
        spool: spool.clone(),
        publisher: publisher.clone(),
        counters: counters.clone(),
        cfg: config.publish.clone(),
        wake,
        reporter_done,
        publish_health: publish_health.clone(),
    }));
    tracker.close();
    tracker.wait().await;

    publisher.close().await;
    let spooled_at_exit = spool.len();
    if let Ok(spool) = Arc::try_unwrap(spool) {
        if let Err(e) = blocking(move || spool.close()).await {
            SpoolFailed {
                operation: "close",
                error: &e,
            }
            .emit(&counters);
        }
    }
    let summary = RunSummary {
        boot,
        events_spooled: counters.events_spooled.get(),
        events_sent: counters.events_sent.get(),
        spooled_at_exit,
        dropped: counters.spool_dropped.get(),
        publish_fatal: publish_health.is_failing(),
    };
    tracing::info!(
        events_sent = summary.events_sent,
        spooled = summary.spooled_at_exit,
        dropped = summary.dropped,
        "tcpulse-agent stopped"
    );
    Ok(summary)
}

fn emit_quarantined(spool: &Spool, counters: &Counters) {
    for q in spool.take_quarantined() {
        SpoolQuarantined { file: &q }.emit(counters);
    }
}

struct ReportCtx {
    pending: MemoryQueue,
    source: Source,
    reporter: Reporter,
    probe: HealthProbe,
    poll: Duration,
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    done: CancellationToken,
    publish_health: Arc<PublishHealth>,
    /// The publisher's Entra ID credential, if any.
    credential: Option<Arc<CredentialStats>>,
}

async fn report_loop(mut ctx: ReportCtx) {
    let _done = ctx.done.clone().drop_guard();
    let mut tick = tokio::time::interval(ctx.poll);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Reads are cancel-safe: a dropped HTTP read is abandoned, a command killed.
        let read = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break,
            r = ctx.source.sample() => r,
        };
        let read = read.map_err(|e| {
            SourceFailed {
                source: source_name(&ctx.source),
                error_type: e.kind(),
                error: &e,
            }
            .emit(&ctx.counters);
        });
        let due = ctx.reporter.due(read, std::time::Instant::now());
        if due.is_empty() {
            continue;
        }
        let health = if due.iter().any(|s| s.instance.is_none()) {
            ctx.probe.sample(&ctx.counters)
        } else {
            tcpulse_schema::Health::default()
        };
        let mut info = agent_info(
            ctx.spool.len() + ctx.pending.len() as u64,
            ctx.counters.spool_dropped.get(),
            ctx.publish_health.failing_seconds(),
        );
        info.credential_expires_in_seconds =
            ctx.credential.as_ref().and_then(|c| c.expires_in_seconds());
        let now = tcpulse_schema::Timestamp::now();
        let mut records: Vec<(String, Vec<u8>)> = Vec::with_capacity(due.len());
        let mut last_seq = None;
        for sample in &due {
            let event = ctx.reporter.event(sample, health, info.clone(), now);
            if let Err(e) = event.validate() {
                EventInvalid { error: &e }.emit(&ctx.counters);
                continue;
            }
            last_seq = Some(event.seq);
            records.push((event.connector.clone(), tcpulse_schema::encode(&event)));
        }
        if records.is_empty() {
            continue;
        }
        spool_records(&mut ctx, records, last_seq).await;
    }
    if !ctx.pending.is_empty() {
        // Shutting down with reports held in memory: one last try, then count them.
        spool_records(&mut ctx, Vec::new(), None).await;
        let left = ctx.pending.len() as u64;
        if left > 0 {
            MemoryQueueDropped {
                count: left,
                at_shutdown: true,
            }
            .emit(&ctx.counters);
        }
    }
}

/// Appends the reports held in memory (if any) and `records`, in order; on failure keeps
/// them all in memory (bounded).
async fn spool_records(
    ctx: &mut ReportCtx,
    records: Vec<(String, Vec<u8>)>,
    last_seq: Option<u64>,
) {
    let was_failing = !ctx.pending.is_empty();
    let overflow = ctx.pending.push(records, last_seq);
    if overflow > 0 {
        MemoryQueueDropped {
            count: overflow,
            at_shutdown: false,
        }
        .emit(&ctx.counters);
    }
    let spool = ctx.spool.clone();
    let mut pending = std::mem::take(&mut ctx.pending);
    let (pending, appended) = blocking(move || {
        let r = pending.flush_to(&spool);
        (pending, r)
    })
    .await;
    ctx.pending = pending;
    emit_quarantined(&ctx.spool, &ctx.counters);
    match appended {
        Ok((outcome, n)) => {
            EventsSpooled { count: n }.emit(&ctx.counters);
            if was_failing {
                SpoolRecovered {
                    written: n,
                    reopens: ctx.spool.reopens(),
                }
                .emit(&ctx.counters);
            }
            if outcome.dropped > 0 {
                SpoolDropped {
                    count: outcome.dropped,
                    max_bytes: ctx.spool.max_bytes(),
                }
                .emit(&ctx.counters);
            }
            ctx.wake.notify_one();
        }
        Err(e) => SpoolAppendFailed {
            error: &e,
            held: ctx.pending.len(),
        }
        .emit(&ctx.counters),
    }
}

fn source_name(s: &Source) -> &'static str {
    match s {
        Source::Command(_) => "command",
        Source::File(_) => "file",
        Source::Http(_) => "http",
        Source::Pexip(_) => "pexip",
        Source::Simulate(_) => "simulate",
    }
}

struct SendCtx<P> {
    spool: Arc<Spool>,
    publisher: Arc<P>,
    counters: Arc<Counters>,
    cfg: PublishConfig,
    wake: Arc<Notify>,
    reporter_done: CancellationToken,
    publish_health: Arc<PublishHealth>,
}

/// The sender's fatal-error state, shared with the reporter so that each report says how
/// long publishing had been failing when it was made (`agent.publish_failing_seconds`).
///
/// Monotonic: the streak start is kept as milliseconds since this value was made, plus 1
/// (0 = publishing works), so a wall-clock step cannot shorten or lengthen a streak.
#[derive(Debug)]
pub struct PublishHealth {
    origin: tokio::time::Instant,
    failing_since: std::sync::atomic::AtomicU64,
}

impl PublishHealth {
    /// Publishing works (no fatal error yet).
    pub fn new() -> Self {
        PublishHealth {
            origin: tokio::time::Instant::now(),
            failing_since: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now_mark(&self) -> u64 {
        let ms = self.origin.elapsed().as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX - 1).saturating_add(1)
    }

    /// A fatal error: starts a failing streak, or continues the current one (its start is
    /// kept).
    pub fn fatal(&self) {
        let mark = self.now_mark();
        let _ = self.failing_since.compare_exchange(
            0,
            mark,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// A publish succeeded: the streak is over.
    pub fn recovered(&self) {
        self.failing_since
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// True while the last publish attempt ended in a fatal error.
    pub fn is_failing(&self) -> bool {
        self.failing_since
            .load(std::sync::atomic::Ordering::Relaxed)
            != 0
    }

    /// Seconds since the first fatal error of the current streak, rounded up (at least 1
    /// while failing, so a report made in the streak's first second does not read as
    /// healthy); 0 while publishing works.
    pub fn failing_seconds(&self) -> u64 {
        let since = self
            .failing_since
            .load(std::sync::atomic::Ordering::Relaxed);
        if since == 0 {
            return 0;
        }
        self.now_mark().saturating_sub(since).div_ceil(1000).max(1)
    }
}

impl Default for PublishHealth {
    fn default() -> Self {
        Self::new()
    }
}

fn backoff_for(cfg: &PublishConfig) -> ExponentialBackoff {
    ExponentialBackoff::new(cfg.retry_initial, cfg.retry_max).with_jitter(0.2)
}

fn fatal_backoff_for(cfg: &PublishConfig) -> ExponentialBackoff {
    ExponentialBackoff::new(cfg.fatal_retry_initial, cfg.fatal_retry_max).with_jitter(0.1)
}

/// Most time between two attempts to remove sent events from a failing spool.
const REMOVE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Sleeps `delay`, or less when the reporter ends (shutdown). True when shutting down.
async fn pause(ctx_done: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        biased;
        _ = ctx_done.cancelled() => true,
        _ = tokio::time::sleep(delay) => ctx_done.is_cancelled(),
    }
}

/// Removes sent events, retrying with backoff (or sooner, when the reporter wrote to the
/// spool again) until the spool accepts it; sends nothing meanwhile. False when shutdown
/// came first and a last attempt failed too (the events stay spooled and are sent once
/// more at the next start: at-least-once).
async fn remove_sent<P>(ctx: &SendCtx<P>, ids: Vec<u64>) -> bool {
    let mut delay = Duration::from_secs(1);
    loop {
        let spool = ctx.spool.clone();
        let ids2 = ids.clone();
        let Err(e) = blocking(move || spool.remove(&ids2)).await else {
            return true;
        };
        if ctx.reporter_done.is_cancelled() {
            return false;
        }
        SendPaused {
            error: &e,
            sent_unremoved: ids.len(),
            retry_in: delay,
        }
        .emit(&ctx.counters);
        tokio::select! {
            biased;
            _ = ctx.reporter_done.cancelled() => {}
            _ = ctx.wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(REMOVE_RETRY_MAX);
    }
}

async fn send_loop<P: Publisher>(ctx: SendCtx<P>) {
    let mut st = SendState::new(&ctx.cfg);
    loop {
        if ctx.reporter_done.is_cancelled() && st.flush_deadline.is_none() {
            st.flush_deadline = Some(Instant::now() + ctx.cfg.shutdown_flush);
        }
        if st.flush_deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let batch = match next_batch(&ctx, st.flush_deadline.is_some()).await {
            Next::Batch(b) => b,
            Next::Again => continue,
            Next::Stop => break,
        };
        let n = batch.bodies.len();
        match publish(&ctx, &batch.key, batch.bodies, st.flush_deadline).await {
            Ok(()) => {
                st.sent(&ctx, n);
                if !remove_sent(&ctx, batch.ids).await {
                    break;
                }
            }
            Err(error) => {
                if !st.failed(&ctx, &error, n).await {
                    break;
                }
            }
        }
    }
}

/// The send loop's retry state.
struct SendState {
    backoff: ExponentialBackoff,
    fatal_backoff: ExponentialBackoff,
    /// Fatal failures since the last send that worked.
    fatal_attempts: u32,
    /// Set once shutdown began: sending stops then.
    flush_deadline: Option<Instant>,
}

impl SendState {
    fn new(cfg: &PublishConfig) -> Self {
        SendState {
            backoff: backoff_for(cfg),
            fatal_backoff: fatal_backoff_for(cfg),
            fatal_attempts: 0,
            flush_deadline: None,
        }
    }

    /// `n` events were accepted: the schedules reset, a fatal streak is over.
    fn sent<P>(&mut self, ctx: &SendCtx<P>, n: usize) {
        EventsSent { count: n as u64 }.emit(&ctx.counters);
        self.backoff.reset();
        if self.fatal_attempts > 0 {
            PublishRecovered {
                failed_attempts: self.fatal_attempts,
            }
            .emit(&ctx.counters);
            self.fatal_attempts = 0;
            self.fatal_backoff.reset();
            ctx.publish_health.recovered();
        }
    }

    /// A batch of `n` events was refused: reports it and waits on the schedule its kind
    /// calls for. False when the loop must stop (shutting down).
    async fn failed<P>(&mut self, ctx: &SendCtx<P>, error: &PublishError, n: usize) -> bool {
        let delay = if ctx.reporter_done.is_cancelled() {
            None
        } else if error.is_transient() {
            Some(self.backoff.next_backoff())
        } else {
            self.fatal_attempts = self.fatal_attempts.saturating_add(1);
            ctx.publish_health.fatal();
            Some(self.fatal_backoff.next_backoff())
        };
        PublishFailed {
            error,
            transient: error.is_transient(),
            events: n,
            retry_in: delay,
        }
        .emit(&ctx.counters);
        match delay {
            // Shutting down: keep the rest spooled.
            None => false,
            // Interrupted by shutdown: a transient error gets the flush time, a fatal one
            // would only fail again.
            Some(d) => {
                let interrupted = pause(&ctx.reporter_done, d).await;
                !interrupted || error.is_transient()
            }
        }
    }
}

/// Spooled events with one partition key, oldest first.
struct Batch {
    key: String,
    ids: Vec<u64>,
    bodies: Vec<Bytes>,
}

enum Next {
    Batch(Batch),
    /// Nothing to send now; look again.
    Again,
    /// Shutting down and nothing more can be sent.
    Stop,
}

/// The next batch from the spool (corrupt entries removed). With nothing spooled it waits
/// for the reporter; a failing spool is retried in a second. `flushing`: shutdown began, so
/// an empty or failing spool ends the loop.
async fn next_batch<P>(ctx: &SendCtx<P>, flushing: bool) -> Next {
    let spool = ctx.spool.clone();
    let (max_events, max_bytes) = (ctx.cfg.max_batch_events, ctx.cfg.max_batch_bytes);
    let peeked = match blocking(move || spool.peek(max_events, max_bytes)).await {
        Ok(p) => p,
        Err(e) => {
            SpoolFailed {
                operation: "read",
                error: &e,
            }
            .emit(&ctx.counters);
            if flushing {
                return Next::Stop;
            }
            // Retry in a second, or as soon as the reporter wrote to the spool again.
            tokio::select! {
                biased;
                _ = ctx.reporter_done.cancelled() => {}
                _ = ctx.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            return Next::Again;
        }
    };
    if !peeked.corrupt.is_empty() {
        let spool = ctx.spool.clone();
        if let Err(e) = blocking(move || spool.remove(&peeked.corrupt)).await {
            SpoolFailed {
                operation: "remove",
                error: &e,
            }
            .emit(&ctx.counters);
        }
    }
    let Some(first) = peeked.entries.first() else {
        if flushing {
            return Next::Stop; // Everything flushed.
        }
        tokio::select! {
            biased;
            _ = ctx.reporter_done.cancelled() => {}
            _ = ctx.wake.notified() => {}
        }
        return Next::Again;
    };
    let key = first.partition_key.clone();
    let (ids, bodies) = peeked
        .entries
        .into_iter()
        .take_while(|e| e.partition_key == key)
        .map(|e| (e.id, e.body))
        .unzip();
    Next::Batch(Batch { key, ids, bodies })
}

/// Sends one batch. Once shutdown began the send gets what is left of the flush time; a
/// send under way when it begins gets the whole flush time.
async fn publish<P: Publisher>(
    ctx: &SendCtx<P>,
    key: &str,
    bodies: Vec<Bytes>,
    flush_deadline: Option<Instant>,
) -> Result<(), PublishError> {
    let mut send = ctx.publisher.send(key, bodies);
    match flush_deadline {
        Some(d) => tokio::time::timeout_at(d, send).await,
        None => tokio::select! {
            biased;
            r = &mut send => Ok(r),
            _ = ctx.reporter_done.cancelled() => {
                tokio::time::timeout(ctx.cfg.shutdown_flush, send).await
            }
        },
    }
    .unwrap_or_else(|_| Err(PublishError::transient("shutdown flush time is over")))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::path::Path;
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use tcpulse_schema::StatusEvent;

    use super::*;
    use crate::config::{parse_file, Config, RunArgs};
    use crate::publish::config::PublishArgs;

    /// Records accepted events; answers each send with the next scripted result (Ok when
    /// the script is empty).
    #[derive(Default)]
    struct Scripted {
        script: Mutex<VecDeque<Result<(), PublishError>>>,
        accepted: Mutex<Vec<StatusEvent>>,
        attempts: std::sync::atomic::AtomicU64,
    }

    impl Publisher for Scripted {
        fn send<'a>(
            &'a self,
            key: &'a str,
            bodies: Vec<Bytes>,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            self.attempts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let next = self.script.lock().unwrap().pop_front().unwrap_or(Ok(()));
            if next.is_ok() {
                let mut acc = self.accepted.lock().unwrap();
                for b in bodies {
                    let ev = tcpulse_schema::decode(&b).unwrap();
                    assert_eq!(ev.connector, key);
                    acc.push(ev);
                }
            }
            Box::pin(async move { next })
        }
    }

    fn config(dir: &Path, file_source: &Path) -> Config {
        let text = format!(
            "[identity]\nconnector = \"tc.example.com\"\nregion = \"r\"\nscaleset = \"s\"\ninstance = \"i\"\n\
             [report]\ninterval = \"100ms\"\npoll_interval = \"50ms\"\n\
             [health]\nenabled = false\n\
             [spool]\ndir = {:?}\n\
             [publish]\nfile = \"/unused\"\nretry_initial = \"20ms\"\nretry_max = \"50ms\"\nshutdown_flush = \"1s\"\nfatal_retry_initial = \"150ms\"\nfatal_retry_max = \"300ms\"\n\
             [source]\ntype = \"file\"\npath = {:?}\n",
            dir.join("spool"),
            file_source
        );
        let args = RunArgs {
            publish: PublishArgs::default(),
            ..Default::default()
        };
        Config::resolve(&args, parse_file(Path::new("t.toml"), &text).unwrap()).unwrap()
    }

    async fn run_for(cfg: Config, p: Arc<Scripted>, ms: u64) -> RunSummary {
        run_counted(cfg, p, ms).await.0
    }

    /// Runs the agent for `ms`, then cancels it; its summary and counters.
    async fn run_counted(cfg: Config, p: Arc<Scripted>, ms: u64) -> (RunSummary, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            t.cancel();
        });
        let s = run_with_counters(cfg, p, token, counters.clone())
            .await
            .unwrap();
        (s, counters)
    }

    fn seqs(p: &Scripted) -> Vec<u64> {
        p.accepted.lock().unwrap().iter().map(|e| e.seq).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_every_event_in_order_and_leaves_spool_empty() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("calls");
        std::fs::write(&src, "3").unwrap();
        let p = Arc::new(Scripted::default());
        let s = run_for(config(dir.path(), &src), p.clone(), 700).await;
        let seqs = seqs(&p);
        assert!(seqs.len() >= 5, "about one per 100 ms: {seqs:?}");
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "contiguous, in order, no repeats"
        );
        assert_eq!(
            (s.spooled_at_exit, s.events_sent, s.events_spooled),
            (0, seqs.len() as u64, seqs.len() as u64)
        );
        assert!(p
            .accepted
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.calls.unwrap().call_count == 3 && e.boot == s.boot));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transient_errors_back_off_and_then_deliver_everything() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("calls");
        std::fs::write(&src, "1").unwrap();
        let p = Arc::new(Scripted::default());
        p.script
            .lock()
            .unwrap()
            .extend((0..4).map(|_| Err(PublishError::transient("hub away"))));
        let (s, counters) = run_counted(config(dir.path(), &src), p.clone(), 800).await;
        assert_eq!(counters.publish_transient_errors.get(), 4);
        let seqs = seqs(&p);
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        assert_eq!(s.spooled_at_exit, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r12_fatal_errors_retry_slowly_keep_spooling_and_resume_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("calls");
        std::fs::write(&src, "2").unwrap();
        let p = Arc::new(Scripted::default());
        p.script
            .lock()
            .unwrap()
            .extend((0..2).map(|_| Err(PublishError::fatal("unauthorized"))));
        let (s, counters) = run_counted(config(dir.path(), &src), p.clone(), 1200).await;
        assert_eq!(counters.publish_fatal_errors.get(), 2);
        assert_eq!(
            counters.publish_recoveries.get(),
            1,
            "resumed without a restart"
        );
        assert!(!s.publish_fatal);
        let seqs = seqs(&p);
        assert!(seqs.len() >= 8, "{seqs:?}");
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "spooled meanwhile, in order"
        );
        assert_eq!(s.spooled_at_exit, 0);
        // Slow schedule: 2 failures, then one success per wake-up, not a retry per poll.
        let attempts = p.attempts.load(std::sync::atomic::Ordering::Relaxed);
        assert!(attempts <= 2 + seqs.len() as u64, "attempts {attempts}");
    }

    /// r12 fault 10: the streak's length in whole seconds, rounded up, from its first fatal
    /// error (later ones do not restart it); 0 again after a success.
    #[tokio::test(start_paused = true)]
    async fn publish_health_counts_from_the_first_fatal_error_of_a_streak() {
        let h = PublishHealth::new();
        assert_eq!((h.is_failing(), h.failing_seconds()), (false, 0));
        h.fatal();
        assert_eq!((h.is_failing(), h.failing_seconds()), (true, 1));
        tokio::time::advance(Duration::from_millis(90_500)).await;
        h.fatal();
        assert_eq!(h.failing_seconds(), 91);
        h.recovered();
        assert_eq!((h.is_failing(), h.failing_seconds()), (false, 0));
        tokio::time::advance(Duration::from_secs(10)).await;
        h.fatal();
        assert_eq!(h.failing_seconds(), 1, "a new streak starts over");
    }

    /// r12 fault 10: reports made while publishing fails say so; the first ones after
    /// recovery say it works again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r12_reports_made_while_publishing_fails_carry_how_long() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("calls");
        std::fs::write(&src, "2").unwrap();
        let p = Arc::new(Scripted::default());
        p.script
            .lock()
            .unwrap()
            .extend((0..2).map(|_| Err(PublishError::fatal("unauthorized"))));
        let s = run_for(config(dir.path(), &src), p.clone(), 1200).await;
        assert!(!s.publish_fatal);
        let failing: Vec<u64> = p
            .accepted
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                e.agent
                    .as_ref()
                    .and_then(|a| a.publish_failing_seconds)
                    .unwrap()
            })
            .collect();
        let during = failing.iter().filter(|&&f| f > 0).count();
        assert!(during >= 2, "reports made while failing: {failing:?}");
        assert_eq!(failing.last(), Some(&0), "healthy again: {failing:?}");
        // One streak: healthy (the first report, made before the first attempt), failing,
        // then healthy again; never back to failing.
        let first_failing = failing.iter().position(|&f| f > 0).unwrap();
        assert!(failing[first_failing..first_failing + during]
            .iter()
            .all(|&f| f > 0));
        assert!(failing[first_failing + during..].iter().all(|&f| f == 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fatal_error_at_shutdown_keeps_events_spooled_then_next_start_replays_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("calls");
        std::fs::write(&src, "2").unwrap();
        let p = Arc::new(Scripted::default());
        p.script
            .lock()
            .unwrap()
            .extend((0..100).map(|_| Err(PublishError::fatal("unauthorized"))));
        let first = run_for(config(dir.path(), &src), p.clone(), 500).await;
        assert!(first.publish_fatal);
        let attempts = p.attempts.load(std::sync::atomic::Ordering::Relaxed);
        assert!((2..=4).contains(&attempts), "slow retries, got {attempts}");
        assert!(first.spooled_at_exit >= 3, "kept spooling: {first:?}");
        assert!(seqs(&p).is_empty());

        // Restart with a working publisher: the backlog goes first, seq continues.
        let p2 = Arc::new(Scripted::default());
        let second = run_for(config(dir.path(), &src), p2.clone(), 400).await;
        let events = p2.accepted.lock().unwrap().clone();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "old boot's events first, then new, no gap"
        );
        let old = events.iter().take_while(|e| e.boot == first.boot).count() as u64;
        assert_eq!(old, first.spooled_at_exit);
        assert!(events[old as usize..].iter().all(|e| e.boot == second.boot));
        assert_eq!(second.spooled_at_exit, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r12_corrupt_spool_is_moved_aside_counted_and_the_agent_runs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("calls");
        std::fs::write(&src, "1").unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        std::fs::write(
            dir.path().join("spool").join(crate::spool::FILE_NAME),
            [0x5Au8; 4096],
        )
        .unwrap();
        let p = Arc::new(Scripted::default());
        let (_, counters) = run_counted(config(dir.path(), &src), p.clone(), 400).await;
        assert_eq!(counters.spool_quarantined.get(), 1);
        assert!(!seqs(&p).is_empty());
        let moved = std::fs::read_dir(dir.path().join("spool"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("spool.redb.corrupt-")
            })
            .count();
        assert_eq!(moved, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_source_reports_unknown_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Scripted::default());
        let cfg = config(dir.path(), &dir.path().join("missing"));
        let (_, counters) = run_counted(cfg, p.clone(), 300).await;
        let events = p.accepted.lock().unwrap().clone();
        assert!(!events.is_empty());
        assert!(events
            .iter()
            .all(|e| e.state == tcpulse_schema::State::Unknown && e.calls.is_none()));
        assert!(counters.source_errors.get() >= 3);
    }
}
