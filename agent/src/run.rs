//! The agent's run loop: build everything fallible first, then two tasks.
//!
//! - **reporter**: reads the source every `poll_interval`, asks [`Reporter`] what is due,
//!   adds host health, validates and encodes the events and appends them to the spool
//!   (durably) before waking the sender.
//! - **sender**: takes the oldest spooled events (one partition key per batch), hands them
//!   to the [`Publisher`], and removes them from the spool only when it accepted them.
//!   Transient errors back off exponentially (the `backoff` crate: `retry_initial` doubling
//!   to `retry_max`, with jitter, never giving up); a fatal error stops sending while the
//!   reporter keeps spooling (bounded), until an operator fixes the cause and restarts.
//!
//! Shutdown: the caller cancels `shutdown`. The reporter stops between reads; the sender
//! then flushes what it can for up to `shutdown_flush` (an in-flight send may finish
//! within that time), stopping at the first error, and leaves the rest spooled. Then the
//! publisher is closed and the spool fsync'd and closed. [`run`] returns only after every
//! task has ended.

use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{Config, PublishConfig};
use crate::health::HealthProbe;
use crate::internal_events::{
    Counters, EventInvalid, EventsSent, EventsSpooled, InternalEvent, PublishFailed, SourceFailed,
    SpoolDropped, SpoolFailed,
};
use crate::publish::{PublishError, Publisher};
use crate::report::{agent_info, Reporter};
use crate::sources::{BuildError, Source};
use crate::spool::{Spool, SpoolError};

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
    /// Whether sending stopped on a fatal publish error.
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
    let fatal = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
    }));
    tracker.spawn(send_loop(SendCtx {
        spool: spool.clone(),
        publisher: publisher.clone(),
        counters: counters.clone(),
        cfg: config.publish.clone(),
        wake,
        reporter_done,
        fatal: fatal.clone(),
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
        publish_fatal: fatal.load(std::sync::atomic::Ordering::Relaxed),
    };
    tracing::info!(
        events_sent = summary.events_sent,
        spooled = summary.spooled_at_exit,
        dropped = summary.dropped,
        "tcpulse-agent stopped"
    );
    Ok(summary)
}

struct ReportCtx {
    source: Source,
    reporter: Reporter,
    probe: HealthProbe,
    poll: Duration,
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    done: CancellationToken,
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
        let info = agent_info(ctx.spool.len(), ctx.counters.spool_dropped.get());
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
        let n = records.len() as u64;
        let spool = ctx.spool.clone();
        let appended = blocking(move || {
            spool.append(
                records.iter().map(|(k, b)| (k.as_str(), b.as_slice())),
                last_seq,
            )
        })
        .await;
        match appended {
            Ok(outcome) => {
                EventsSpooled { count: n }.emit(&ctx.counters);
                if outcome.dropped > 0 {
                    SpoolDropped {
                        count: outcome.dropped,
                        max_bytes: ctx.spool.max_bytes(),
                    }
                    .emit(&ctx.counters);
                }
                ctx.wake.notify_one();
            }
            Err(e) => SpoolFailed {
                operation: "append",
                error: &e,
            }
            .emit(&ctx.counters),
        }
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
    fatal: Arc<std::sync::atomic::AtomicBool>,
}

fn backoff_for(cfg: &PublishConfig) -> ExponentialBackoff {
    ExponentialBackoff {
        initial_interval: cfg.retry_initial,
        current_interval: cfg.retry_initial,
        max_interval: cfg.retry_max.max(cfg.retry_initial),
        multiplier: 2.0,
        randomization_factor: 0.2,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

async fn send_loop<P: Publisher>(ctx: SendCtx<P>) {
    let mut backoff = backoff_for(&ctx.cfg);
    let mut flush_deadline: Option<Instant> = None;
    loop {
        if ctx.reporter_done.is_cancelled() && flush_deadline.is_none() {
            flush_deadline = Some(Instant::now() + ctx.cfg.shutdown_flush);
        }
        if flush_deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if ctx.fatal.load(std::sync::atomic::Ordering::Relaxed) {
            // Sending stopped; the reporter keeps spooling until shutdown.
            ctx.reporter_done.cancelled().await;
            break;
        }
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
                if flush_deadline.is_some() {
                    break;
                }
                tokio::select! {
                    _ = ctx.reporter_done.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
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
            if flush_deadline.is_some() {
                break; // Everything flushed.
            }
            tokio::select! {
                biased;
                _ = ctx.reporter_done.cancelled() => {}
                _ = ctx.wake.notified() => {}
            }
            continue;
        };
        let key = first.partition_key.clone();
        let batch: Vec<_> = peeked
            .entries
            .into_iter()
            .take_while(|e| e.partition_key == key)
            .collect();
        let ids: Vec<u64> = batch.iter().map(|e| e.id).collect();
        let bodies: Vec<Bytes> = batch.into_iter().map(|e| e.body).collect();
        let n = bodies.len();

        let mut send = ctx.publisher.send(&key, bodies);
        let result = match flush_deadline {
            Some(d) => tokio::time::timeout_at(d, send).await,
            None => tokio::select! {
                biased;
                r = &mut send => Ok(r),
                _ = ctx.reporter_done.cancelled() => {
                    // Shutting down mid-send: give it the flush time to finish.
                    tokio::time::timeout(ctx.cfg.shutdown_flush, send).await
                }
            },
        }
        .unwrap_or_else(|_| Err(PublishError::transient("shutdown flush time is over")));

        match result {
            Ok(()) => {
                let spool = ctx.spool.clone();
                if let Err(e) = blocking(move || spool.remove(&ids)).await {
                    SpoolFailed {
                        operation: "remove",
                        error: &e,
                    }
                    .emit(&ctx.counters);
                }
                EventsSent { count: n as u64 }.emit(&ctx.counters);
                backoff.reset();
            }
            Err(error) if error.is_transient() => {
                if ctx.reporter_done.is_cancelled() {
                    PublishFailed {
                        error: &error,
                        events: n,
                        retry_in: None,
                    }
                    .emit(&ctx.counters);
                    break; // Shutting down: keep the rest spooled.
                }
                let delay = backoff.next_backoff().unwrap_or(ctx.cfg.retry_max);
                PublishFailed {
                    error: &error,
                    events: n,
                    retry_in: Some(delay),
                }
                .emit(&ctx.counters);
                tokio::select! {
                    biased;
                    _ = ctx.reporter_done.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(error) => {
                PublishFailed {
                    error: &error,
                    events: n,
                    retry_in: None,
                }
                .emit(&ctx.counters);
                ctx.fatal.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::path::Path;
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use tcpulse_schema::StatusEvent;

    use super::*;
    use crate::config::{parse_file, Config, PublishArgs, RunArgs};

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
             [publish]\nfile = \"/unused\"\nretry_initial = \"20ms\"\nretry_max = \"50ms\"\nshutdown_flush = \"1s\"\n\
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
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            t.cancel();
        });
        run(cfg, p, token).await.unwrap()
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
        let counters = Arc::new(Counters::default());
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            t.cancel();
        });
        let s = run_with_counters(config(dir.path(), &src), p.clone(), token, counters.clone())
            .await
            .unwrap();
        assert_eq!(counters.publish_transient_errors.get(), 4);
        let seqs = seqs(&p);
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        assert_eq!(s.spooled_at_exit, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fatal_error_stops_sending_but_keeps_spooling_then_next_start_replays_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("calls");
        std::fs::write(&src, "2").unwrap();
        let p = Arc::new(Scripted::default());
        p.script
            .lock()
            .unwrap()
            .push_back(Err(PublishError::fatal("unauthorized")));
        let first = run_for(config(dir.path(), &src), p.clone(), 500).await;
        assert!(first.publish_fatal);
        assert_eq!(
            p.attempts.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "no retry after fatal"
        );
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
    async fn failing_source_reports_unknown_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Scripted::default());
        let counters = Arc::new(Counters::default());
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            t.cancel();
        });
        let cfg = config(dir.path(), &dir.path().join("missing"));
        run_with_counters(cfg, p.clone(), token, counters.clone())
            .await
            .unwrap();
        let events = p.accepted.lock().unwrap().clone();
        assert!(!events.is_empty());
        assert!(events
            .iter()
            .all(|e| e.state == tcpulse_schema::State::Unknown && e.calls.is_none()));
        assert!(counters.source_errors.get() >= 3);
    }
}
