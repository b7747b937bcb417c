//! Chaos cases: skew (issue 12, faults 4 and 5).
//!
//! The real hub over TLS, the real `tcpulse-collector` binary with its default aggregation
//! timings, and VictoriaMetrics. Five instances of one connector report every 2 s with 10
//! calls each: two with good clocks, one 50 s fast, one 50 s slow, one 10 min fast (beyond
//! the 5 min bound). Beside them, absurd events on another connector: `call_count` of
//! 4294967295, `max_calls` of 1000, a sample from 1970, one ten years ahead, and a valid
//! one with `planned_calls = 0`.
//!
//! Policy under test: a clock beyond the bound is dead-lettered (`clock_skew`), so the
//! rollup is 4 online / 40 calls; the fast and slow clocks within it are counted (the slow
//! one from its third report, once its steady offset is known); no rollup is stamped after
//! the hub's clock; the skew is on `/metrics` and in `tc_instance`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use tcpulse_eventhub::client::{BatchOptions, EventData, Producer};
use tcpulse_tests::chaos::{record, Row};
use tcpulse_tests::client::client_config;
use tcpulse_tests::collector::{CollectorOptions, CollectorProcess};
use tcpulse_tests::hub::{HubInfo, HubOptions, Policy, TestHub};
use tcpulse_tests::services;
use tcpulse_tests::stores::{vm_export_until, Series};

const CONNECTOR: &str = "skew.example.com";
const ABSURD: &str = "absurd.example.com";
/// (instance, clock offset ms) of the fleet.
const FLEET: [(&str, i64); 5] = [
    ("good-0", 0),
    ("good-1", 0),
    ("fast-50s", 50_000),
    ("slow-50s", -50_000),
    ("fast-10min", 600_000),
];
const ROUNDS: u64 = 11;
const ROUND_EVERY: Duration = Duration::from_secs(2);
/// By then a slow clock's steady offset is known (three reports), ms.
const LEARNT_MS: i64 = 6_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> String {
    tcpulse_schema::Timestamp::from_unix_millis(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into())
}

fn body(connector: &str, instance: &str, seq: u64, time_ms: i64, calls: Value) -> Vec<u8> {
    let boot = format!(
        "6f1c2a4e-8b1d-4c3e-9f70-{:012x}",
        instance.len() * 7919 + instance.bytes().map(usize::from).sum::<usize>()
    );
    serde_json::to_vec(&json!({
        "schema": "tcpulse.status.v1", "connector": connector, "deployment": "blue",
        "region": "westeurope", "scaleset": "vmss", "instance": instance,
        "boot": boot, "seq": seq, "time": rfc3339(time_ms), "state": "active",
        "calls": calls,
    }))
    .unwrap_or_default()
}

fn calls(n: u64) -> Value {
    json!({"call_count": n, "max_calls": 16, "planned_calls": 15})
}

async fn producer(info: &HubInfo) -> Result<Producer> {
    Ok(Producer::connect(client_config(info, Policy::Send)?).await?)
}

async fn send(producer: &mut Producer, bodies: Vec<Vec<u8>>) -> Result<()> {
    let mut batch = producer.create_batch(BatchOptions {
        partition_id: Some("0".into()),
        ..Default::default()
    })?;
    for b in bodies {
        let ev = EventData::new(b)
            .with_content_type("application/json")
            .with_property("schema", tcpulse_schema::SCHEMA_V1);
        batch
            .try_add(ev)
            .map_err(|e| anyhow!("event not added: {e}"))?;
    }
    producer.send_batch(&batch).await?;
    Ok(())
}

/// The absurd events: (instance, body, expected dead-letter kind or None if valid).
fn absurd(now: i64) -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    let year_ms = 365 * 86_400_000i64;
    vec![
        (
            "calls-u32-max",
            body(
                ABSURD,
                "calls-u32-max",
                0,
                now,
                json!({"call_count": 4_294_967_295u64, "max_calls": 16}),
            ),
            Some("invalid_value"),
        ),
        (
            "max-calls-1000",
            body(
                ABSURD,
                "max-calls-1000",
                0,
                now,
                json!({"call_count": 3, "max_calls": 1000}),
            ),
            Some("invalid_value"),
        ),
        (
            "from-1970",
            body(ABSURD, "from-1970", 0, 1_000, calls(3)),
            Some("clock_skew"),
        ),
        (
            "ten-years-ahead",
            body(ABSURD, "ten-years-ahead", 0, now + 10 * year_ms, calls(3)),
            Some("clock_skew"),
        ),
        (
            "no-plan",
            body(
                ABSURD,
                "no-plan",
                0,
                now,
                json!({"call_count": 0, "max_calls": 16, "planned_calls": 0}),
            ),
            None,
        ),
    ]
}

/// Every `tc_*` sample up to an hour ahead (the points of a clock running 50 s fast are
/// stamped ahead of now).
fn export_all(url: &str) -> Result<Vec<Series>> {
    vm_export_until(url, r#"{__name__=~"tc_.*"}"#, now_ms() / 1000 + 3600)
}

fn series_of<'a>(all: &'a [Series], name: &str, instance: &str) -> Option<&'a Series> {
    all.iter().find(|s| {
        s.labels.get("__name__").map(String::as_str) == Some(name)
            && s.labels.get("instance").map(String::as_str) == Some(instance)
    })
}

fn connector_samples(all: &[Series], field: &str) -> BTreeMap<i64, f64> {
    all.iter()
        .filter(|s| {
            s.labels.get("__name__").map(String::as_str) == Some(&format!("tc_connector_{field}"))
                && s.labels.get("connector").map(String::as_str) == Some(CONNECTOR)
        })
        .flat_map(|s| s.samples.iter().copied())
        .collect()
}

fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_skew_fast_and_slow_clocks_and_absurd_values() -> Result<()> {
    let hub = TestHub::start_with(HubOptions {
        hubs: vec![("tcpulse".into(), 1)],
        ..HubOptions::default()
    })
    .await?;
    let vm = services::victoria_metrics()?;
    let dir = tempfile::tempdir()?;
    let mut opts = CollectorOptions::service_defaults("chaos-skew");
    opts.sinks = format!(
        "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n",
        vm.url()
    );
    let mut collector = CollectorProcess::start(dir.path(), &hub.info, &opts)?;
    let mut producer = producer(&hub.info).await?;

    // Start 0.5 s after a window end (the default rollup interval is 10 s), so the window
    // ending 9.5 s later is closed (10 s lateness) before the last round, after the slow
    // clock's offset is learnt.
    let wait_ms = (500 - now_ms().rem_euclid(10_000)).rem_euclid(10_000);
    tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    let first_ms = now_ms();
    let absurd = absurd(first_ms);
    let mut sent = 0u64;
    let round_start = Instant::now();
    let mut last_ms = first_ms;
    for round in 0..ROUNDS {
        let now = now_ms();
        last_ms = now;
        let mut bodies: Vec<Vec<u8>> = FLEET
            .iter()
            .map(|(instance, off)| body(CONNECTOR, instance, round, now + off, calls(10)))
            .collect();
        if round == 0 {
            bodies.extend(absurd.iter().map(|(_, b, _)| b.clone()));
        }
        sent += bodies.len() as u64;
        send(&mut producer, bodies).await?;
        collector.ensure_running()?;
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            round_start + ROUND_EVERY * (round as u32 + 1),
        ))
        .await;
    }
    producer.close().await;

    // Wait (bounded) for a closed window inside the span where every instance reported,
    // and for every accepted report's point.
    let deadline = Instant::now() + Duration::from_secs(20);
    let all = loop {
        let all = export_all(&vm.url())?;
        let online = connector_samples(&all, "instances_online");
        let good_points = FLEET[..4]
            .iter()
            .filter_map(|(i, _)| series_of(&all, "tc_instance_call_count", i))
            .map(|s| s.samples.len())
            .sum::<usize>();
        if online
            .keys()
            .any(|t| *t > first_ms + LEARNT_MS && *t <= last_ms)
            && good_points == 4 * ROUNDS as usize
        {
            break all;
        }
        if Instant::now() > deadline {
            bail!(
                "no closed window with the whole fleet ({online:?}, {good_points} points); log:\n{}",
                collector.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let metrics = collector.metrics()?;
    let checked_at = now_ms();

    // Fault 4: nobody's clock moves time for the others.
    let online = connector_samples(&all, "instances_online");
    let calls_sum = connector_samples(&all, "call_count");
    for (t, n) in &online {
        ensure!(
            *t <= checked_at,
            "rollup at {} is in the future: {online:?}",
            rfc3339(*t)
        );
        if *t > first_ms + LEARNT_MS && *t <= last_ms {
            ensure!(
                *n == 4.0,
                "window {}: {n} online, want 4 (fast-10min dead-lettered): {online:?}",
                rfc3339(*t)
            );
            ensure!(
                calls_sum.get(t) == Some(&40.0),
                "window {}: calls {:?}, want 40",
                rfc3339(*t),
                calls_sum.get(t)
            );
        }
    }
    for (instance, _) in &FLEET[..4] {
        if let Some(up) = series_of(&all, "tc_instance_up", instance) {
            // A slow clock may be taken for silence until its steady offset is learnt.
            let learnt = |t: i64| *instance != "slow-50s" || t > first_ms + LEARNT_MS;
            ensure!(
                up.samples.iter().all(|(t, v)| *v == 1.0 || !learnt(*t)),
                "{instance} written down: {:?}",
                up.samples
            );
        }
    }
    ensure!(
        series_of(&all, "tc_instance_call_count", "fast-10min").is_none(),
        "a sample 10 min ahead reached the store"
    );
    for (instance, want) in [("fast-50s", 50.0), ("slow-50s", -50.0), ("good-0", 0.0)] {
        let label = format!("tcpulse_collector_instance_clock_skew_seconds{{connector=\"{CONNECTOR}\",instance=\"{instance}\"}}");
        let got =
            metric_value(&metrics, &label).with_context(|| format!("{label} not in /metrics"))?;
        ensure!(
            (got - want).abs() < 2.0,
            "{instance}: /metrics skew {got}, want ≈ {want}"
        );
        let stored = series_of(&all, "tc_instance_clock_skew_seconds", instance)
            .with_context(|| format!("no tc_instance clock_skew_seconds for {instance}"))?;
        ensure!(
            stored.samples.iter().all(|(_, v)| (v - want).abs() < 2.0),
            "{instance}: {:?}",
            stored.samples
        );
    }

    // The log line a user searches for, once per skewed instance.
    let log = collector.log();
    for instance in ["fast-50s", "slow-50s"] {
        let lines = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("clock_skew") && l.contains(instance))
            .count();
        ensure!(
            lines == 1,
            "{lines} clock_skew warnings for {instance}:\n{log}"
        );
    }

    // Fault 5: absurd values and times never reach the store; each has its reason.
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap_or_default();
    let records: Vec<Value> = dead
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (instance, _, kind) in &absurd {
        match kind {
            Some(kind) => {
                ensure!(
                    !all.iter()
                        .any(|s| s.labels.get("instance").map(String::as_str) == Some(*instance)),
                    "{instance} reached the store"
                );
                let rec = records
                    .iter()
                    .find(|r| r["instance"] == *instance)
                    .with_context(|| format!("no dead letter for {instance}:\n{dead}"))?;
                ensure!(rec["kind"] == *kind, "{instance}: {rec}");
            }
            None => {
                ensure!(
                    series_of(&all, "tc_instance_call_count", instance).is_some(),
                    "{instance} not stored"
                );
                ensure!(
                    series_of(&all, "tc_instance_utilization", instance).is_none(),
                    "{instance}: utilization stored without a planned capacity"
                );
            }
        }
    }
    let by_reason = |needle: &str| {
        records
            .iter()
            .filter(|r| r["message"].as_str().is_some_and(|m| m.contains(needle)))
            .count()
    };
    ensure!(
        by_reason("`calls.call_count` is invalid: exceeds calls.max_calls") == 1,
        "{dead}"
    );
    ensure!(
        by_reason("`calls.max_calls` is invalid: above 64") == 1,
        "{dead}"
    );
    ensure!(
        by_reason("s ahead of the time Event Hubs enqueued") == 1 + ROUNDS as usize,
        "{dead}"
    );
    ensure!(
        by_reason("s behind the time Event Hubs enqueued") == 1,
        "{dead}"
    );
    let counted = |kind: &str| {
        metric_value(
            &metrics,
            &format!(
                "tcpulse_collector_dead_letters_total{{partition=\"0\",error_type=\"{kind}\"}}"
            ),
        )
        .unwrap_or(0.0) as u64
    };
    let clock_skew = counted("clock_skew");
    let invalid = counted("invalid_value");
    ensure!(
        clock_skew == 2 + ROUNDS && invalid == 2,
        "clock_skew {clock_skew}, invalid_value {invalid}"
    );

    let stored: u64 = FLEET[..4]
        .iter()
        .map(|(i, _)| i)
        .chain(["no-plan"].iter())
        .filter_map(|i| series_of(&all, "tc_instance_call_count", i))
        .map(|s| s.samples.len() as u64)
        .sum();
    let expected = 4 * ROUNDS + 1;
    let dropped = clock_skew + invalid;
    collector.stop(Duration::from_secs(10))?;
    record(&Row {
        fault: "clocks +50 s, -50 s, +10 min; call_count 2^32-1, max_calls 1000, 1970, +10 y, planned 0".into(),
        events_sent: sent,
        points_stored: stored,
        lost: sent.saturating_sub(stored + dropped),
        duplicated: stored.saturating_sub(expected),
        counted_dropped: dropped,
        outcome: format!("rollup 4 online / 40 calls in every closed window, none in the future; {clock_skew} clock_skew + {invalid} invalid_value dead letters"),
    })?;
    ensure!(stored == expected, "stored {stored}, expected {expected}");
    hub.shutdown().await;
    Ok(())
}
