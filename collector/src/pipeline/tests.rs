use super::*;
use crate::checkpoint::FileCheckpointStore;
use crate::checkpoint::{Checkpoint, CHECKPOINT_VERSION};
use crate::dead_letter::DeadLetterLimits;
use crate::metrics::partition_labels;
use crate::sinks::WriteError;
use crate::source::ReadFrom;
use crate::source::{ChannelProvider, ChannelSource};
use crate::source::{PartitionBounds, SourceEvent};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::Mutex;
use tcpulse_schema::Timestamp;

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
    let sinks = vec![bad.clone() as Arc<dyn Sink>, good.clone() as Arc<dyn Sink>];
    let shared = Shared {
        tracker: tracker.clone(),
        ..test_shared(dir.path(), sinks, provider.scope(), metrics.clone())
    };
    let settings = test_settings(true);
    let task = tokio::spawn(run_partition(
        provider,
        "0".into(),
        settings,
        shared,
        shutdown.clone(),
    ));
    // One undecodable event gives the first batch something to carry.
    tx.send(SourceEvent {
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
            good_fields.starts_with("sink_dead_lettered=0i,sink_errors=0i,sink_latency_seconds="),
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

/// What the partitions of a test share: `sinks`, a file checkpoint store and a dead-letter
/// file under `dir`.
fn test_shared(
    dir: &std::path::Path,
    sinks: Vec<Arc<dyn Sink>>,
    scope: crate::checkpoint::CheckpointScope,
    metrics: Arc<Metrics>,
) -> Shared {
    Shared {
        sinks: sinks.into(),
        checkpoints: Arc::new(FileCheckpointStore::new(dir.join("ckpt"))),
        scope,
        dead_letters: Arc::new(
            DeadLetterFile::open(
                dir.join("dl.jsonl"),
                DeadLetterLimits {
                    max_body_bytes: 1 << 20,
                    max_file_bytes: 1 << 20,
                },
            )
            .unwrap(),
        ),
        metrics,
        tracker: TaskTracker::new(),
        give_up: CancellationToken::new(),
    }
}

fn harness(provider: &ChannelProvider, sink: Arc<dyn Sink>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let shared = test_shared(dir.path(), vec![sink], provider.scope(), metrics.clone());
    let settings = test_settings(false);
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
        enqueued_time_ms: Some(1),
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
                vec![("0".to_string(), ReadFrom::Earliest)],
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
    tx1.send(SourceEvent {
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
            ("0".to_string(), ReadFrom::AfterSequence(8)),
            ("0".to_string(), ReadFrom::Earliest)
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
        vec![("0".to_string(), ReadFrom::AfterSequence(8))]
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
    tx.send(SourceEvent {
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

/// Fast settings for the tests: small timers, the default aggregation.
fn test_settings(sink_points: bool) -> PipelineSettings {
    use crate::config::{
        AggregateConfig, BatchConfig, CheckpointConfig, PositionSpec, RetryConfig,
    };
    let aggregate = AggregateConfig {
        idle_after: Duration::from_secs(3600),
        dedup_max_streams: 16,
        dedup_window_events: 16,
        ..AggregateConfig::default()
    };
    PipelineSettings {
        collector: "col-test".into(),
        batch: BatchConfig {
            max_lines: 1000,
            max_bytes: 1 << 20,
            flush_interval: Duration::from_millis(20),
            max_in_flight_batches: 4,
        },
        aggregator: AggregateSettings::default(),
        aggregate,
        checkpoint: CheckpointConfig {
            interval: Duration::from_millis(10),
            initial_position: PositionSpec(ReadFrom::Earliest),
            on_corrupt: PositionSpec(ReadFrom::Earliest),
            on_ahead_of_partition: PositionSpec(ReadFrom::Earliest),
            ..CheckpointConfig::default()
        },
        retry: RetryConfig {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
            max_retry_after: Duration::from_millis(20),
            auth_initial: Duration::from_millis(50),
            auth_max: Duration::from_millis(200),
            ..RetryConfig::default()
        },
        pipeline_interval: Duration::from_millis(100),
        sink_points,
    }
}

/// A partition another receiver took over waits one load-balancing interval when the
/// collectors share a Blob store (the ownership cycle decides, no ping-pong of equal owner
/// levels), and the ordinary backoff with the file store (a stale reader of the group).
#[test]
fn a_stolen_partition_waits_for_the_ownership_cycle_only_with_a_shared_store() {
    let dir = tempfile::tempdir().unwrap();
    let scope = crate::checkpoint::CheckpointScope::new("ns", "hub", "$Default");
    let shared = test_shared(dir.path(), Vec::new(), scope, Arc::new(Metrics::new()));
    let stolen = crate::source::SourceError::Stolen {
        partition: "0".into(),
        message: "amqp:link:stolen".into(),
    };
    let wait = |settings: &PipelineSettings| {
        let mut backoff =
            ExponentialBackoff::new(Duration::from_millis(5), Duration::from_millis(20));
        let mut auth = Duration::from_millis(50);
        super::resume::source_retry_wait(
            &stolen,
            "receive",
            "0",
            &mut backoff,
            &mut auth,
            settings,
            &shared,
        )
    };
    let file = test_settings(false);
    assert!(
        wait(&file) <= Duration::from_millis(20),
        "file store: the ordinary backoff"
    );
    let mut blob = test_settings(false);
    blob.checkpoint.store = crate::config::CheckpointStoreKind::AzureBlob;
    blob.checkpoint.load_balancing.interval = Duration::from_secs(7);
    assert_eq!(wait(&blob), Duration::from_secs(7));
}
