//! tcpulse-collector against real stores on loopback: VictoriaMetrics through the v2 write
//! API, InfluxDB 1.6 through the v1 `/write` API.
//!
//! Events enter through an in-process `ChannelSource` (a bounded channel standing in for a
//! partition: the feeder blocks when the pipeline stops pulling, as a hub link runs out of
//! credit). The Event Hubs consumer is not wired into the collector yet; hub-driven tests
//! come with that adapter. Everything after the source (decode, dedup, aggregation,
//! batching, retries, checkpoints, metrics) is the production code path.
//!
//! Expected points are computed by running the same events through the collector's
//! `Aggregator` in-process, so each test checks that what the store holds is exactly what
//! the events say, rollups and `up=0` included.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)] // test fixtures

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tcpulse_collector::aggregate::Aggregator;
use tcpulse_collector::checkpoint::{CheckpointScope, FileCheckpointStore};
use tcpulse_collector::config::Config;
use tcpulse_collector::sinks::influxdb_v1::config::InfluxDbV1SinkConfig;
use tcpulse_collector::sinks::influxdb_v2::config::InfluxDbV2SinkConfig;
use tcpulse_collector::source::{ChannelProvider, ChannelSource};
use tcpulse_collector::{PartitionTip, RunSummary, SourceEvent};
use tcpulse_schema::{
    decode, encode, Calls, DedupWindow, FieldValue, Health, Point, StatusEvent, Timestamp,
};
use tcpulse_tests::services::{self, get, post_form};
use tcpulse_tests::stores::{
    influx_query, influx_rows, vm_export, RestartableVictoriaMetrics, Series,
};
use tokio_util::sync::CancellationToken;

const CONNECTOR: &str = "tc-a.example.com";
const STEP_MS: i64 = 5_000;

/// A start time 30 minutes ago, on a minute boundary (inside VictoriaMetrics' retention).
fn t0() -> i64 {
    let now = Timestamp::now().unix_millis();
    (now - 30 * 60_000) / 60_000 * 60_000
}

fn status(instance: &str, boot: u128, seq: u64, t_ms: i64, calls: u32) -> StatusEvent {
    StatusEvent {
        connector: CONNECTOR.into(),
        scaleset: "tc-a-vmss".into(),
        instance: instance.into(),
        boot: uuid::Uuid::from_u128(boot),
        seq,
        time: Timestamp::from_unix_millis(t_ms).unwrap(),
        start_time: None,
        calls: Some(Calls {
            call_count: calls,
            media_load: Some(50),
            ..Calls::example()
        }),
        health: Health {
            cpu: Some(0.25),
            ..Health::default()
        },
        agent: None,
        ..StatusEvent::example()
    }
}

/// Events of three instances every 5 s from `start`, rounds `rounds` (round r at
/// `start + r × 5 s`); `i3` stops after
/// 20 rounds (it must be written `up=0` and leave the online count). Poison bodies and
/// duplicates are mixed in when `poison` is set.
fn fleet(
    start: i64,
    rounds: std::ops::Range<i64>,
    first_seq: i64,
    poison: bool,
) -> Vec<SourceEvent> {
    let mut out = Vec::new();
    let mut seq = first_seq;
    let mut push = |body: Bytes, t: i64, out: &mut Vec<SourceEvent>| {
        out.push(SourceEvent {
            partition: "0".into(),
            sequence_number: seq,
            offset: (seq * 1000).to_string(),
            enqueued_time_ms: t + 100,
            partition_key: Some(CONNECTOR.into()),
            body,
        });
        seq += 1;
    };
    for r in rounds {
        let t = start + r * STEP_MS + 1_300;
        for (k, name) in ["i1", "i2", "i3"].iter().enumerate() {
            if *name == "i3" && r >= 20 {
                continue;
            }
            let calls = ((r as u32 * (k as u32 + 1)) % 17).min(16);
            let ev = status(name, 10 + k as u128, r as u64, t + k as i64 * 10, calls);
            push(Bytes::from(encode(&ev)), t, &mut out);
            if poison && r % 7 == 3 && k == 0 {
                // The same event again (a redelivery).
                push(Bytes::from(encode(&ev)), t, &mut out);
            }
        }
        if poison && r % 10 == 5 {
            push(
                Bytes::from_static(b"{\"schema\":\"tcpulse.status.v1\",\"connec"),
                t,
                &mut out,
            );
            let mut bad = serde_json::to_value(status("i1", 10, 9999, t, 1)).unwrap();
            bad["calls"]["call_count"] = serde_json::json!("twelve");
            push(Bytes::from(bad.to_string()), t, &mut out);
        }
    }
    out
}

/// The points the collector must write for `events`, computed in-process.
fn expected_points(config: &Config, events: &[SourceEvent]) -> Vec<Point> {
    let mut agg = Aggregator::new(config.aggregate.settings());
    let mut dedup = DedupWindow::new(
        config.aggregate.dedup_max_streams,
        config.aggregate.dedup_window_events,
    );
    let mut out = Vec::new();
    for ev in events {
        let Ok(e) = decode(&ev.body) else { continue };
        if dedup.observe(&e.key()).is_new() {
            agg.apply(e, ev.enqueued_time_ms, &mut out);
        }
    }
    out
}

fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.name = "collector-test".into();
    c.checkpoint.dir = dir.join("checkpoints");
    c.checkpoint.interval = Duration::from_millis(100);
    c.dead_letter.path = dir.join("dead-letters.jsonl");
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.aggregate.rollup_interval = Duration::from_secs(10);
    c.aggregate.stale_after = Duration::from_secs(45);
    c.aggregate.lateness = Duration::ZERO;
    c.aggregate.idle_after = Duration::from_secs(3600);
    c.batch.flush_interval = Duration::from_millis(100);
    c.batch.max_lines = 50;
    c.batch.max_in_flight_batches = 2;
    c.retry.initial = Duration::from_millis(100);
    c.retry.max = Duration::from_millis(500);
    c.retry.shutdown_grace = Duration::from_secs(2);
    c.pipeline_interval = Duration::from_secs(1);
    c
}

fn checkpoint_seq(dir: &Path) -> Option<i64> {
    let store = FileCheckpointStore::new(dir.join("checkpoints"));
    let path = store.path(&CheckpointScope::new("channel", "test", "$default"), "0");
    let bytes = std::fs::read(path).ok()?;
    tcpulse_collector::checkpoint::parse_checkpoint(&bytes, "0")
        .ok()
        .map(|c| c.sequence_number)
}

/// Runs the collector over one channel partition fed with `events`, then lets the source
/// end. Returns the summary and the `/metrics` text at the end.
async fn run_all(config: Config, events: Vec<SourceEvent>) -> Result<(RunSummary, String)> {
    let built = tcpulse_collector::build(config).await?;
    let metrics = built.metrics();
    let (tx, source) = ChannelSource::new("0", 16);
    let provider = ChannelProvider::new("test", vec![source]);
    tokio::spawn(async move {
        for ev in events {
            if tx.send(ev).await.is_err() {
                break;
            }
        }
    });
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        tcpulse_collector::run_built(built, provider, CancellationToken::new()),
    )
    .await
    .context("collector did not finish")?;
    Ok((summary, metrics.render()))
}

fn field_f64(v: &FieldValue) -> f64 {
    match v {
        FieldValue::Float(f) => *f,
        FieldValue::Int(i) => *i as f64,
        FieldValue::UInt(u) => *u as f64,
        FieldValue::Bool(b) => f64::from(u8::from(*b)),
        FieldValue::Str(_) => f64::NAN,
    }
}

/// Checks that every field of every expected point is in the VictoriaMetrics export, at
/// its timestamp, with its value, exactly once.
fn assert_in_vm(series: &[Series], expected: &[Point], extra: &[(&str, &str)]) -> Result<usize> {
    let mut index: HashMap<String, BTreeMap<i64, Vec<f64>>> = HashMap::new();
    for s in series {
        let mut key = String::new();
        for (k, v) in &s.labels {
            key.push_str(&format!("{k}={v};"));
        }
        let e = index.entry(key).or_default();
        for (t, v) in &s.samples {
            e.entry(*t).or_default().push(*v);
        }
    }
    let mut checked = 0;
    for p in expected {
        for (field, value) in p.fields() {
            let mut labels: BTreeMap<String, String> = p
                .tags()
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            labels.insert("__name__".into(), format!("{}_{field}", p.measurement()));
            for (k, v) in extra {
                labels.insert((*k).into(), (*v).into());
            }
            let key: String = labels.iter().map(|(k, v)| format!("{k}={v};")).collect();
            let ts = p.timestamp_ns() / 1_000_000;
            let got = index.get(&key).and_then(|s| s.get(&ts));
            match got {
                Some(vals) if vals.len() == 1 && (vals[0] - field_f64(value)).abs() < 1e-9 => {
                    checked += 1
                }
                other => bail!(
                    "{key} at {ts}: expected {value:?} once, store has {other:?} (point {})",
                    p.to_line()
                ),
            }
        }
    }
    Ok(checked)
}

/// VictoriaMetrics makes a new series searchable a few seconds after ingesting it, even
/// after `/internal/force_flush`: retry `check` on fresh exports for up to 30 s.
async fn vm_eventually<T>(
    url: &str,
    selector: &str,
    check: impl Fn(&[Series]) -> Result<T>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        let series = vm_export(url, selector)?;
        match check(&series) {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_sink_v2_stores_instances_rollups_and_down_in_victoria_metrics() -> Result<()> {
    let vm = services::victoria_metrics()?;
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.sinks.influxdb_v2 = Some(InfluxDbV2SinkConfig::new(vm.url(), "noc", "tcpulse"));
    let events = fleet(t0(), 0..60, 0, true);
    let last_seq = events.last().unwrap().sequence_number;
    let expected = expected_points(&config, &events);
    let (summary, metrics) = run_all(config, events.clone()).await?;
    assert_eq!(
        summary.partitions[0].checkpoint,
        Some(last_seq),
        "checkpoint at the last event"
    );

    let selector = r#"{__name__=~"tc_(instance|connector)_.*"}"#;
    let checked = vm_eventually(&vm.url(), selector, |s| assert_in_vm(s, &expected, &[])).await?;
    assert!(checked > 1000, "{checked} values checked");
    let series = vm_export(&vm.url(), selector)?;
    // Hand-checked facts on top of the in-process model.
    let online: Vec<f64> = series
        .iter()
        .find(|s| s.labels["__name__"] == "tc_connector_instances_online")
        .context("no instances_online series")?
        .samples
        .iter()
        .map(|s| s.1)
        .collect();
    assert_eq!(online.first(), Some(&3.0), "{online:?}");
    assert_eq!(
        online.last(),
        Some(&2.0),
        "i3 left the online count: {online:?}"
    );
    let i3_up = series
        .iter()
        .find(|s| s.labels["__name__"] == "tc_instance_up" && s.labels["instance"] == "i3")
        .context("no up series for i3")?;
    assert_eq!(
        i3_up.samples.iter().filter(|s| s.1 == 0.0).count(),
        1,
        "i3 written down once"
    );
    for s in &i3_up.samples {
        if s.1 == 0.0 {
            assert_eq!(s.0 % 10_000, 0, "down point stamped at a window end");
        }
    }
    // Pipeline self-metrics reached the store too, and the counters are right.
    vm_eventually(&vm.url(), r#"{__name__="tc_pipeline_events"}"#, |s| match s
        .first()
        .and_then(|s| s.samples.last())
    {
        Some((_, v)) if *v == 140.0 => Ok(()),
        other => bail!("tc_pipeline_events: {other:?}"),
    })
    .await?;
    // 60 rounds × (i1, i2) + 20 rounds of i3 = 140 events; 9 redeliveries; 6 × 2 poison bodies.
    assert_eq!(
        metric_value(&metrics, "tcpulse_collector_events_total{partition=\"0\"}"),
        Some(140.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tcpulse_collector_duplicates_total{partition=\"0\"}"
        ),
        Some(9.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tcpulse_collector_dead_letters_total{partition=\"0\",error_type=\"invalid_json\"}"
        ),
        Some(6.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tcpulse_collector_dead_letters_total{partition=\"0\",error_type=\"wrong_type\"}"
        ),
        Some(6.0)
    );
    let dead = std::fs::read_to_string(dir.path().join("dead-letters.jsonl"))?;
    assert_eq!(dead.lines().count(), 12, "every poison body recorded");
    Ok(())
}

/// Checks every expected point against InfluxDB 1.x rows (`SELECT *`, ms timestamps).
fn assert_in_influx(url: &str, db: &str, expected: &[Point]) -> Result<usize> {
    let answer = influx_query(
        url,
        db,
        "SELECT * FROM tc_instance; SELECT * FROM tc_connector",
    )?;
    let mut rows: HashMap<String, BTreeMap<String, serde_json::Value>> = HashMap::new();
    for (measurement, row) in influx_rows(&answer) {
        let tags: &[&str] = if measurement == "tc_instance" {
            &tcpulse_schema::line::INSTANCE_TAGS
        } else {
            &tcpulse_schema::line::CONNECTOR_TAGS
        };
        let mut key = format!("{measurement};{}", row["time"]);
        let mut sorted: Vec<&&str> = tags.iter().collect();
        sorted.sort();
        for t in sorted {
            key.push_str(&format!(
                ";{t}={}",
                row.get(*t).and_then(|v| v.as_str()).unwrap_or("")
            ));
        }
        if rows.insert(key.clone(), row).is_some() {
            bail!("two rows for {key}");
        }
    }
    let mut checked = 0;
    for p in expected {
        let mut key = format!("{};{}", p.measurement(), p.timestamp_ns() / 1_000_000);
        for (k, v) in p.tags() {
            key.push_str(&format!(";{k}={v}"));
        }
        let row = rows
            .get(&key)
            .with_context(|| format!("no row for {}", p.to_line()))?;
        for (field, value) in p.fields() {
            let got = &row[field.as_ref()];
            let ok = match value {
                FieldValue::Int(i) => got.as_i64() == Some(*i),
                FieldValue::Float(f) => got.as_f64().is_some_and(|g| (g - f).abs() < 1e-9),
                other => bail!("unexpected field type {other:?}"),
            };
            if !ok {
                bail!("{key} {field}: expected {value:?}, InfluxDB has {got}");
            }
            checked += 1;
        }
    }
    Ok(checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_sink_v1_stores_instances_rollups_and_down_in_influxdb_16() -> Result<()> {
    let influx = services::influxdb()?;
    let (status, body) = post_form(
        &format!("{}/query", influx.url()),
        &[("q", "CREATE DATABASE tcpulse")],
    )?;
    assert_eq!(status, 200, "{body}");
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.sinks.influxdb_v1 = Some(InfluxDbV1SinkConfig::new(influx.url(), "tcpulse"));
    let events = fleet(t0(), 0..60, 0, true);
    let last_seq = events.last().unwrap().sequence_number;
    let expected = expected_points(&config, &events);
    let (summary, metrics) = run_all(config, events).await?;
    assert_eq!(summary.partitions[0].checkpoint, Some(last_seq));
    let checked = assert_in_influx(&influx.url(), "tcpulse", &expected)?;
    assert!(checked > 1000, "{checked} values checked");
    let down = influx_rows(&influx_query(
        &influx.url(),
        "tcpulse",
        "SELECT up, instance FROM tc_instance WHERE up = 0",
    )?);
    assert_eq!(down.len(), 1, "only i3 goes down: {down:?}");
    assert_eq!(down[0].1["instance"], "i3");
    let pipeline = influx_rows(&influx_query(
        &influx.url(),
        "tcpulse",
        "SELECT last(events) FROM tc_pipeline",
    )?);
    assert_eq!(
        pipeline[0].1["last"], 140,
        "tc_pipeline carries the same count as /metrics"
    );
    assert!(metrics.contains("tcpulse_collector_sink_points_total{sink=\"influxdb_v1\"}"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_checkpoint_holds_while_the_store_is_down_and_every_event_lands_after(
) -> Result<()> {
    let mut vm = RestartableVictoriaMetrics::new()?;
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.sinks.influxdb_v2 = Some(InfluxDbV2SinkConfig::new(vm.url(), "noc", "tcpulse"));
    let start = t0();
    let phase1 = fleet(start, 0..30, 0, false);
    let phase1_last = phase1.last().unwrap().sequence_number;
    let phase2 = fleet(start, 30..330, phase1_last + 1, false);
    let phase2_last = phase2.last().unwrap().sequence_number;
    let mut all = phase1.clone();
    all.extend(phase2.iter().cloned());
    let expected = expected_points(&config, &all);

    let built = tcpulse_collector::build(config).await?;
    let metrics_url = format!(
        "http://{}/metrics",
        built.metrics_addr().context("metrics listener")?
    );
    let tip = Arc::new(Mutex::new(None));
    let (tx, source) = ChannelSource::new("0", 16);
    let provider = ChannelProvider::new("test", vec![source.with_tip(tip.clone())]);
    let run = tokio::spawn(tcpulse_collector::run_built(
        built,
        provider,
        CancellationToken::new(),
    ));

    // Phase 1 with the store up: the checkpoint reaches the last event.
    *tip.lock().unwrap() = Some(PartitionTip {
        last_sequence_number: phase1_last,
        last_enqueued_time_ms: phase1.last().unwrap().enqueued_time_ms,
    });
    for ev in phase1 {
        tx.send(ev).await?;
    }
    wait_for(Duration::from_secs(20), || {
        checkpoint_seq(dir.path()) == Some(phase1_last)
    })
    .await
    .context("checkpoint after phase 1")?;

    // Store down; phase 2 is in the "hub" (the tip says so) and a feeder offers it.
    tokio::task::block_in_place(|| vm.stop())?;
    *tip.lock().unwrap() = Some(PartitionTip {
        last_sequence_number: phase2_last,
        last_enqueued_time_ms: phase2.last().unwrap().enqueued_time_ms,
    });
    let accepted = Arc::new(AtomicUsize::new(0));
    let feeder = tokio::spawn({
        let accepted = accepted.clone();
        let tx = tx.clone();
        async move {
            for ev in phase2 {
                if tx.send(ev).await.is_err() {
                    break;
                }
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = scrape(&metrics_url)?;
    for _ in 0..3 {
        assert_eq!(
            checkpoint_seq(dir.path()),
            Some(phase1_last),
            "checkpoint must not pass unstored events"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let taken = accepted.load(Ordering::SeqCst);
    // At most (in-flight + open batch) × max_lines events, plus the channel: the pipeline
    // stopped pulling, the rest waits in the hub.
    assert!(
        taken < (2 + 1) * 50 + 16 + 8,
        "pipeline kept pulling with the store down: {taken} events taken\n{during}"
    );
    let lag_events = metric_value(&during, "tcpulse_collector_lag_events{partition=\"0\"}")
        .context("lag_events")?;
    let lag_seconds = metric_value(&during, "tcpulse_collector_lag_seconds{partition=\"0\"}")
        .context("lag_seconds")?;
    assert!(lag_events > 400.0, "lag in events while down: {lag_events}");
    assert!(
        lag_seconds > 0.0,
        "lag in seconds while down: {lag_seconds}"
    );
    assert!(
        metric_value(
            &during,
            "tcpulse_collector_sink_errors_total{sink=\"influxdb_v2\",error_type=\"connect\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{during}"
    );

    // Store back: everything drains, the checkpoint reaches the end, lag falls to zero.
    tokio::task::block_in_place(|| vm.start())?;
    feeder.await?;
    wait_for(Duration::from_secs(60), || {
        checkpoint_seq(dir.path()) == Some(phase2_last)
    })
    .await
    .context("checkpoint after recovery")?;
    let after = scrape(&metrics_url)?;
    assert_eq!(
        metric_value(&after, "tcpulse_collector_lag_events{partition=\"0\"}"),
        Some(0.0),
        "{after}"
    );
    assert_eq!(
        metric_value(&after, "tcpulse_collector_lag_seconds{partition=\"0\"}"),
        Some(0.0),
        "{after}"
    );
    drop(tx);
    let summary = tokio::time::timeout(Duration::from_secs(30), run).await??;
    assert_eq!(summary.partitions[0].checkpoint, Some(phase2_last));

    // Every point of every event stored, each exactly once.
    let selector = r#"{__name__=~"tc_(instance|connector)_.*"}"#;
    let checked = vm_eventually(&vm.url(), selector, |s| assert_in_vm(s, &expected, &[])).await?;
    assert!(checked > 5000, "{checked}");
    Ok(())
}

fn scrape(url: &str) -> Result<String> {
    let (status, body) = get(url)?;
    if status != 200 {
        bail!("GET {url}: {status}");
    }
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_sink_rejected_batch_is_dead_lettered_and_the_partition_moves_on() -> Result<()> {
    let influx = services::influxdb()?;
    let db = "tcpulse";
    let (status, body) = post_form(
        &format!("{}/query", influx.url()),
        &[("q", "CREATE DATABASE tcpulse")],
    )?;
    assert_eq!(status, 200, "{body}");
    // An earlier writer stored tc_pipeline.events as a string in this shard: every batch
    // that carries a tc_pipeline point now gets "400 partial write: field type conflict".
    let (status, body) = services::post(
        &format!("{}/write?db={db}", influx.url()),
        "text/plain",
        "tc_pipeline,collector=legacy,partition=0 events=\"many\"\n",
    )?;
    assert_eq!(status, 204, "{body}");
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.sinks.influxdb_v1 = Some(InfluxDbV1SinkConfig::new(influx.url(), db));
    let events = fleet(t0(), 0..60, 0, false);
    let last_seq = events.last().unwrap().sequence_number;
    let expected = expected_points(&config, &events);
    let (summary, metrics) = run_all(config, events).await?;
    assert_eq!(
        summary.partitions[0].checkpoint,
        Some(last_seq),
        "the partition moved on to the end"
    );
    let rejected = metric_value(
        &metrics,
        "tcpulse_collector_sink_errors_total{sink=\"influxdb_v1\",error_type=\"rejected_400\"}",
    )
    .context("no rejected_400 counter")?;
    assert!(rejected >= 1.0);
    let dead = std::fs::read_to_string(dir.path().join("dead-letters.jsonl"))?;
    let batches: Vec<serde_json::Value> = dead
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<serde_json::Value>, _>>()?
        .into_iter()
        .filter(|r| r["type"] == "batch")
        .collect();
    assert_eq!(
        batches.len() as f64,
        rejected,
        "one dead-letter record per rejected batch"
    );
    assert_eq!(batches[0]["status"], 400);
    assert_eq!(batches[0]["sink"], "influxdb_v1");
    assert!(
        batches[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("field type conflict"),
        "{}",
        batches[0]
    );
    // Issue 12: only the refused line is dead-lettered, never the lines InfluxDB kept.
    for b in &batches {
        assert_eq!(b["lines"], 1, "{b}");
        assert!(
            b["body"]
                .as_str()
                .unwrap_or("")
                .starts_with("tc_pipeline,collector=collector-test"),
            "{b}"
        );
    }
    // InfluxDB 1.x kept the other lines of the rejected batch (a partial write), and every
    // other batch went through: all instance and connector points are there.
    assert_in_influx(&influx.url(), db, &expected)?;
    Ok(())
}

async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while !cond() {
        if started.elapsed() > limit {
            bail!("condition not met within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs the collector once over `events` fed through a channel, cancelling after `stop_after`
/// events were taken (if given). Returns the summary and the positions the partition was
/// opened at.
async fn run_once(
    config: Config,
    events: Vec<SourceEvent>,
    stop_after: Option<usize>,
) -> Result<(
    RunSummary,
    Vec<(String, tcpulse_collector::source::ReadFrom)>,
)> {
    let built = tcpulse_collector::build(config).await?;
    let (tx, source) = ChannelSource::new("0", 1);
    let provider = Arc::new(ChannelProvider::new("test", vec![source]));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        let provider = provider.clone();
        async move { tcpulse_collector::run_built(built, ArcProvider(provider), shutdown).await }
    });
    // Which events to send depends on where the partition resumed.
    wait_for(Duration::from_secs(10), || !provider.opened_at().is_empty()).await?;
    let resume_after = match provider.opened_at()[0].1 {
        tcpulse_collector::source::ReadFrom::AfterSequence(s) => s,
        _ => -1,
    };
    let wanted = events
        .into_iter()
        .filter(|e| e.sequence_number > resume_after);
    for ev in wanted.take(stop_after.unwrap_or(usize::MAX)) {
        tx.send(ev).await?;
    }
    if stop_after.is_some() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
    } else {
        drop(tx);
    }
    let summary = tokio::time::timeout(Duration::from_secs(30), run).await??;
    Ok((summary, provider.opened_at()))
}

/// A provider shared with the test (so it can read `opened_at`).
struct ArcProvider(Arc<ChannelProvider>);

impl tcpulse_collector::SourceProvider for ArcProvider {
    type Source = ChannelSource;
    fn scope(&self) -> CheckpointScope {
        self.0.scope()
    }
    async fn partitions(&self) -> Result<Vec<String>, tcpulse_collector::SourceError> {
        self.0.partitions().await
    }
    async fn open(
        &self,
        partition: &str,
        start: tcpulse_collector::source::ReadFrom,
    ) -> Result<ChannelSource, tcpulse_collector::SourceError> {
        self.0.open(partition, start).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_checkpoint_resume_after_shutdown_rewrites_identical_points() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let points = dir.path().join("points.lp");
    let mut config = test_config(dir.path());
    config.http.enabled = false;
    config.sinks.file = Some(tcpulse_collector::sinks::file::config::FileSinkConfig {
        path: points.clone(),
        fsync: false,
    });
    let events = fleet(t0(), 0..60, 0, true);
    let last_seq = events.last().unwrap().sequence_number;
    let expected: std::collections::BTreeSet<String> = expected_points(&config, &events)
        .iter()
        .map(Point::to_line)
        .collect();

    // First run stops (SIGTERM-like) part-way; the second resumes from its checkpoint.
    let (first, opened) = run_once(config.clone(), events.clone(), Some(70)).await?;
    assert_eq!(opened[0].1, tcpulse_collector::source::ReadFrom::Earliest);
    let stopped_at = first.partitions[0]
        .checkpoint
        .context("first run checkpointed")?;
    assert!(
        stopped_at > 0 && stopped_at < last_seq,
        "stopped part-way: {stopped_at}"
    );
    let (second, opened) = run_once(config, events, None).await?;
    assert_eq!(
        opened[0].1,
        tcpulse_collector::source::ReadFrom::AfterSequence(stopped_at)
    );
    assert_eq!(second.partitions[0].checkpoint, Some(last_seq));

    let text = std::fs::read_to_string(&points)?;
    let written: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("tc_pipeline"))
        .collect();
    let distinct: std::collections::BTreeSet<String> =
        written.iter().map(|l| l.to_string()).collect();
    assert_eq!(
        distinct, expected,
        "both runs together wrote exactly the points of one uninterrupted run"
    );
    // A point written twice (a replayed span) is byte-identical: one line per series and time.
    let mut by_key: HashMap<String, std::collections::BTreeSet<&str>> = HashMap::new();
    for l in &written {
        let mut parts = l.split(' ');
        let key = format!(
            "{} {}",
            parts.next().unwrap_or(""),
            l.rsplit(' ').next().unwrap_or("")
        );
        by_key.entry(key).or_default().insert(l);
    }
    assert!(by_key.values().all(|v| v.len() == 1));
    Ok(())
}
