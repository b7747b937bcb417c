//! The collector end to end with real components: `tcpulse-agent` binaries → the hub
//! (in-process) → the `tcpulse-collector` binary → VictoriaMetrics / InfluxDB 1.6 / a
//! line-protocol file, all on loopback.
//!
//! Agents use the `file` source (a bare call count in a file the test writes), so every
//! value the stores hold can be checked against what the test made the agents say, and
//! against the events the hub really carried (read back with our `Consumer` from earliest).
//! Health collection is off (it only adds host noise). Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use tcpulse_tests::agent::AgentProcess;
use tcpulse_tests::client::{now_ms, read_all, statuses};
use tcpulse_tests::collector::{
    metric_by_partition, metric_max, CollectorOptions, CollectorProcess,
};
use tcpulse_tests::hub::{HubInfo, TestHub};
use tcpulse_tests::services::{self, post_form};
use tcpulse_tests::stores::{
    influx_query, influx_rows, vm_export, vm_latest, RestartableVictoriaMetrics,
};
use tcpulse_tests::wait::{poll_until, OnError, Poll};

/// The pipeline's waits: every 250 ms, errors retried (a store not answering yet).
const EVERY_250_MS: Poll = Poll::every(250, OnError::Retry);

/// The collector in `dir/collector` with the short test timings, checkpointing at most every
/// `checkpoint_interval`, with batches of at most `batch_max_lines` lines (its default when
/// `None`), writing to `sinks`.
fn start_collector(
    dir: &Path,
    info: &HubInfo,
    sinks: &str,
    checkpoint_interval: &str,
    batch_max_lines: Option<usize>,
) -> Result<CollectorProcess> {
    let opts = CollectorOptions {
        checkpoint_interval: Some(checkpoint_interval.into()),
        batch_max_lines,
        sinks: sinks.into(),
        ..CollectorOptions::default()
    };
    CollectorProcess::start(&dir.join("collector"), info, &opts)
}

const FLEET: &str = "tc-fleet.example.com";

async fn start_fleet(
    dir: &Path,
    info: &HubInfo,
    counts: &[(&str, u32)],
) -> Result<Vec<AgentProcess>> {
    counts
        .iter()
        .map(|(i, c)| AgentProcess::start_on_hub(dir, info, FLEET, "blue", i, *c))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_hub_to_victoriametrics_and_influxdb16() -> Result<()> {
    let t0 = Instant::now();
    let vm = services::victoria_metrics()?;
    let influx = services::influxdb()?;
    let (status, body) = post_form(
        &format!("{}/query", influx.url()),
        &[("q", "CREATE DATABASE tcpulse")],
    )?;
    ensure!(status == 200, "create database: {status} {body}");
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let mut agents = start_fleet(tmp.path(), &info, &[("i1", 5), ("i2", 7), ("i3", 9)]).await?;
    let sinks = format!(
        "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n[sinks.influxdb_v1]\nurl = {:?}\ndatabase = \"tcpulse\"\n",
        vm.url(),
        influx.url()
    );
    let mut collector = start_collector(tmp.path(), &info, &sinks, "1s", None)?;
    let sel = |m: &str| format!("{m}{{connector=\"{FLEET}\"}}");

    // All three online: 21 calls.
    let full = poll_until(
        "VictoriaMetrics: 3 instances online, 21 calls",
        Duration::from_secs(40),
        EVERY_250_MS,
        || {
            collector.ensure_running()?;
            let online = vm_latest(&vm.url(), &sel("tc_connector_instances_online"))?;
            let calls = vm_latest(&vm.url(), &sel("tc_connector_call_count"))?;
            Ok(online.map(|v| v.1) == Some(3.0) && calls.map(|v| v.1) == Some(21.0))
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.log()))?;
    // i3 goes silent (SIGKILL); i2 changes its count.
    agents[2].kill()?;
    let silent_at = now_ms();
    agents[1].set_calls(8)?;
    let silent = poll_until(
        "i3 up=0, 2 online, 13 calls",
        Duration::from_secs(40),
        EVERY_250_MS,
        || {
            let online = vm_latest(&vm.url(), &sel("tc_connector_instances_online"))?;
            let calls = vm_latest(&vm.url(), &sel("tc_connector_call_count"))?;
            let up = vm_latest(&vm.url(), "tc_instance_up{instance=\"i3\"}")?;
            Ok(online.map(|v| v.1) == Some(2.0)
                && calls.map(|v| v.1) == Some(13.0)
                && up.map(|v| v.1) == Some(0.0))
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.log()))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for a in agents.iter_mut().take(2) {
        a.stop(Duration::from_secs(15))?;
    }

    // What the agents really sent, read back from the hub.
    let events =
        statuses(&read_all(&info, Duration::from_secs(2), Duration::from_secs(60)).await?)?;
    ensure!(
        events.len() >= 20,
        "only {} events in the hub",
        events.len()
    );
    // Every event is a tc_instance point with its time and count, in both stores.
    let mut want: BTreeMap<String, BTreeSet<(i64, i64)>> = BTreeMap::new();
    for e in &events {
        want.entry(e.instance().to_string())
            .or_default()
            .insert((e.time_ms(), e.calls()));
    }
    let stored =
        poll_until(
            "every event in both stores",
            Duration::from_secs(30),
            EVERY_250_MS,
            || {
                for (inst, pts) in &want {
                    let vm_pts: BTreeSet<(i64, i64)> = vm_export(
                        &vm.url(),
                        &format!("tc_instance_call_count{{instance=\"{inst}\"}}"),
                    )?
                    .into_iter()
                    .flat_map(|s| s.samples)
                    .map(|(t, v)| (t, v as i64))
                    .collect();
                    let rows = influx_rows(&influx_query(
                &influx.url(),
                "tcpulse",
                &format!("SELECT call_count FROM tc_instance WHERE instance = '{inst}' AND up = 1"),
            )?);
                    let influx_pts: BTreeSet<(i64, i64)> = rows
                        .iter()
                        .map(|(_, r)| {
                            (
                                r["time"].as_i64().unwrap_or(0),
                                r["call_count"].as_i64().unwrap_or(-1),
                            )
                        })
                        .collect();
                    if !pts.is_subset(&vm_pts) || !pts.is_subset(&influx_pts) {
                        return Ok(false);
                    }
                    // Nothing made up: up=1 points are exactly the events.
                    ensure!(
                        &influx_pts == pts,
                        "InfluxDB up=1 points of {inst} differ from the events: extra {:?}",
                        influx_pts.difference(pts).collect::<Vec<_>>()
                    );
                }
                Ok(true)
            },
        )
        .await;
    stored.with_context(|| format!("collector log:\n{}", collector.log()))?;

    // Connector rollups: identical in both stores; the values follow the agents.
    let vm_rollup: BTreeMap<i64, (f64, f64)> = {
        let online = vm_export(&vm.url(), &sel("tc_connector_instances_online"))?;
        let calls = vm_export(&vm.url(), &sel("tc_connector_call_count"))?;
        ensure!(
            online.len() == 1 && calls.len() == 1,
            "one connector series: {online:?}"
        );
        let calls: BTreeMap<i64, f64> = calls[0].samples.iter().copied().collect();
        online[0]
            .samples
            .iter()
            .map(|(t, o)| (*t, (*o, calls.get(t).copied().unwrap_or(f64::NAN))))
            .collect()
    };
    let influx_rollup: BTreeMap<i64, (f64, f64)> = influx_rows(&influx_query(
        &influx.url(),
        "tcpulse",
        &format!(
            "SELECT instances_online, call_count FROM tc_connector WHERE connector = '{FLEET}'"
        ),
    )?)
    .iter()
    .map(|(_, r)| {
        (
            r["time"].as_i64().unwrap_or(0),
            (
                r["instances_online"].as_f64().unwrap_or(f64::NAN),
                r["call_count"].as_f64().unwrap_or(f64::NAN),
            ),
        )
    })
    .collect();
    ensure!(
        vm_rollup == influx_rollup,
        "tc_connector differs between VictoriaMetrics and InfluxDB:\nVM {vm_rollup:?}\nInflux {influx_rollup:?}"
    );
    for (t, (online, calls)) in &vm_rollup {
        ensure!(t % 2_000 == 0, "window end {t} aligned to the 2 s rollup");
        // A state the fleet was in: `online` of the instances, summing their counts
        // (i1 = 5, i2 = 7 then 8, i3 = 9; agents start and stop a moment apart).
        let ok = [[5, 7, 9], [5, 8, 9]].iter().any(|counts| {
            (0u32..8).any(|mask| {
                mask.count_ones() as f64 == *online
                    && (0..3)
                        .filter(|b| mask & (1 << b) != 0)
                        .map(|b| counts[b] as f64)
                        .sum::<f64>()
                        == *calls
            })
        });
        ensure!(
            ok,
            "rollup at {t}: {online} online, {calls} calls is not a state the fleet was in"
        );
    }
    ensure!(
        vm_rollup.values().any(|v| *v == (3.0, 21.0))
            && vm_rollup.values().any(|v| *v == (2.0, 13.0)),
        "both fleet states stored: {vm_rollup:?}"
    );
    // The silent instance: up=0 after it stopped, in both stores.
    let down = influx_rows(&influx_query(
        &influx.url(),
        "tcpulse",
        "SELECT up FROM tc_instance WHERE instance = 'i3' AND up = 0",
    )?);
    ensure!(!down.is_empty(), "InfluxDB has i3 up=0");
    for (_, r) in &down {
        let t = r["time"].as_i64().unwrap_or(0);
        ensure!(
            t > silent_at - 2_000,
            "i3 written down at {t}, before it went silent ({silent_at})"
        );
    }
    collector.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    eprintln!(
        "agents → hub → collector → VM + InfluxDB: {} events, {} rollups; 3-online state after {full:?}, silent instance detected after {silent:?}; total {:?}",
        events.len(),
        vm_rollup.len(),
        t0.elapsed()
    );
    Ok(())
}

/// Line-protocol lines keyed by `(measurement+tags, timestamp)`; each value the distinct
/// field sets seen for that key, with how often each was written.
type Lines = BTreeMap<(String, i64), BTreeMap<String, usize>>;

fn parse_lines(text: &str) -> Result<Lines> {
    let mut out: Lines = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // `series fields timestamp`; test tags and fields hold no escaped spaces.
        let mut parts = line.rsplitn(2, ' ');
        let ts: i64 = parts
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow!("no timestamp: {line}"))?;
        let rest = parts.next().ok_or_else(|| anyhow!("bad line: {line}"))?;
        let (series, fields) = rest
            .split_once(' ')
            .ok_or_else(|| anyhow!("bad line: {line}"))?;
        *out.entry((series.to_string(), ts))
            .or_default()
            .entry(fields.to_string())
            .or_default() += 1;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_sigkill_mid_stream_replays_identical_points() -> Result<()> {
    let t0 = Instant::now();
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let mut agents = start_fleet(tmp.path(), &info, &[("k1", 4), ("k2", 6)]).await?;
    let out = tmp.path().join("points.lp");
    // Checkpoints every 3 s, so a kill almost surely leaves stored-but-not-checkpointed
    // points that the restart writes again.
    let sinks = format!("[sinks.file]\npath = {:?}\n", out.display().to_string());
    let mut collector = start_collector(tmp.path(), &info, &sinks, "3s", None)?;
    poll_until(
        "points in the file",
        Duration::from_secs(30),
        EVERY_250_MS,
        || {
            collector.ensure_running()?;
            Ok(std::fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .count()
                > 20)
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.log()))?;
    agents[0].set_calls(9)?;
    // Kill mid-stream, between two checkpoint writes: right after the checkpoint file
    // changes, let ~1.5 s of points reach the file (stored, not yet checkpointed: the next
    // write is 3 s away), then SIGKILL.
    let first = collector.checkpoints();
    poll_until(
        "a checkpoint write",
        Duration::from_secs(20),
        EVERY_250_MS,
        || Ok(collector.checkpoints() != first),
    )
    .await?;
    let ckpt_before = collector.checkpoints();
    let lines_at_ckpt = std::fs::read_to_string(&out)?.lines().count();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let lines_before = std::fs::read_to_string(&out)?.lines().count();
    ensure!(
        collector.checkpoints() == ckpt_before,
        "checkpoint written again within 1.5 s despite interval 3 s"
    );
    collector.kill()?;
    ensure!(
        lines_before > lines_at_ckpt,
        "no points stored in the 1.5 s before the kill ({lines_at_ckpt} → {lines_before})"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    collector.restart()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    agents[1].set_calls(2)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for a in &mut agents {
        a.stop(Duration::from_secs(15))?;
    }
    let events =
        statuses(&read_all(&info, Duration::from_secs(2), Duration::from_secs(60)).await?)?;
    let want: BTreeSet<(String, i64, i64)> = events
        .iter()
        .map(|e| (e.instance().to_string(), e.time_ms(), e.calls()))
        .collect();
    let have_all = |text: &str| -> Result<bool> {
        let lines = parse_lines(text)?;
        let mut have = BTreeSet::new();
        for ((series, ts), fields) in &lines {
            if !series.starts_with("tc_instance,") {
                continue;
            }
            let inst = series
                .split(',')
                .find_map(|kv| kv.strip_prefix("instance="))
                .unwrap_or_default();
            for f in fields.keys() {
                if f.split(',').any(|kv| kv == "up=1i" || kv == "up=1") {
                    let calls = f
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("call_count="))
                        .and_then(|v| v.trim_end_matches('i').parse::<i64>().ok())
                        .unwrap_or(-1);
                    have.insert((inst.to_string(), ts / 1_000_000, calls));
                }
            }
        }
        Ok(want.is_subset(&have))
    };
    poll_until(
        "every event's point in the file",
        Duration::from_secs(30),
        EVERY_250_MS,
        || have_all(&std::fs::read_to_string(&out)?),
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.log()))?;
    collector.stop(Duration::from_secs(20))?;

    let text = std::fs::read_to_string(&out)?;
    let lines = parse_lines(&text)?;
    let mut replayed = 0;
    for ((series, ts), fields) in &lines {
        ensure!(
            fields.len() == 1,
            "{series} at {ts} written with different values: {fields:?}"
        );
        replayed += fields.values().sum::<usize>() - 1;
    }
    ensure!(
        replayed > 0,
        "the restart replayed nothing (checkpoints before the kill: {ckpt_before:?}); the test did not exercise a replay"
    );
    // Rollup windows are contiguous across the kill: every 2 s window end from the first
    // to the last one has its tc_connector point.
    let windows: Vec<i64> = lines
        .keys()
        .filter(|(s, _)| s.starts_with("tc_connector,"))
        .map(|(_, t)| t / 1_000_000)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    ensure!(windows.len() >= 5, "few rollups: {windows:?}");
    for w in windows.windows(2) {
        ensure!(
            w[1] - w[0] == 2_000,
            "rollup gap between {} and {}: {windows:?}",
            w[0],
            w[1]
        );
    }
    hub.shutdown().await;
    eprintln!(
        "collector SIGKILL: {} events, {} lines before the kill, {} lines total, {replayed} replayed identically, {} windows contiguous; {:?}",
        events.len(),
        lines_before,
        text.lines().count(),
        windows.len(),
        t0.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_store_down_checkpoint_holds_and_metrics_lag_rises() -> Result<()> {
    let t0 = Instant::now();
    let mut vm = RestartableVictoriaMetrics::new()?;
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let mut agents = start_fleet(tmp.path(), &info, &[("s1", 3), ("s2", 8)]).await?;
    let sinks = format!(
        "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n",
        vm.url()
    );
    // Small batches: the in-flight bound (4 batches + the open one) is then reached within
    // seconds at this fleet's event rate, so the partition stops reading and lag shows.
    // (lag_seconds itself is the age of the oldest event not yet stored, so it rises from
    // the first seconds of the outage whatever the batch size.)
    let mut collector = start_collector(tmp.path(), &info, &sinks, "1s", Some(10))?;
    poll_until(
        "points in VictoriaMetrics",
        Duration::from_secs(30),
        EVERY_250_MS,
        || {
            collector.ensure_running()?;
            Ok(vm_latest(&vm.url(), "tc_instance_call_count")?.is_some())
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.log()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lag_before =
        metric_max(&collector.metrics()?, "tcpulse_collector_lag_seconds").unwrap_or(0.0);

    vm.stop()?;
    let down_at = now_ms();
    let down = Instant::now();
    let mut grace_ckpt = None;
    let mut lag_by_partition: BTreeMap<String, f64> = BTreeMap::new();
    let mut polls = 0;
    while down.elapsed() < Duration::from_secs(30) {
        collector.ensure_running()?;
        for (p, l) in metric_by_partition(&collector.metrics()?, "tcpulse_collector_lag_seconds") {
            let m = lag_by_partition.entry(p).or_insert(0.0f64);
            *m = m.max(l);
        }
        let ck = collector.checkpoints();
        if down.elapsed() > Duration::from_secs(4) {
            // Past in-flight acks and the checkpoint interval: nothing more may be stored,
            // so the checkpoint must not move.
            let g = grace_ckpt.get_or_insert_with(|| ck.clone());
            ensure!(
                &ck == g,
                "checkpoint moved while the store was down: {g:?} → {ck:?}"
            );
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let grace_ckpt = grace_ckpt.unwrap_or_default();
    let idle_lag: BTreeMap<&String, &f64> = lag_by_partition
        .iter()
        .filter(|(p, _)| !grace_ckpt.contains_key(*p))
        .collect();
    let ckpt_age = metric_max(
        &collector.metrics()?,
        "tcpulse_collector_checkpoint_age_seconds",
    )
    .unwrap_or(0.0);
    ensure!(
        ckpt_age >= 25.0,
        "checkpoint_age_seconds is {ckpt_age} after a 30 s store outage"
    );
    // The partition carrying the fleet (the one with a checkpoint) lags by the outage.
    let busy: Vec<&String> = grace_ckpt.keys().collect();
    ensure!(
        busy.len() == 1,
        "one connector → one partition: {grace_ckpt:?}"
    );
    let max_lag = lag_by_partition.get(busy[0]).copied().unwrap_or(0.0);
    ensure!(
        (15.0..=45.0).contains(&max_lag),
        "lag_seconds of partition {} reached {max_lag} during a 30 s store outage (before: {lag_before}); metrics:\n{}",
        busy[0],
        collector.metrics()?
    );
    vm.start()?;
    let recovered = poll_until(
        "lag to fall after recovery",
        Duration::from_secs(60),
        EVERY_250_MS,
        || {
            let l = metric_max(&collector.metrics()?, "tcpulse_collector_lag_seconds")
                .unwrap_or(f64::MAX);
            Ok(l < 5.0)
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.log()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for a in &mut agents {
        a.stop(Duration::from_secs(15))?;
    }
    let events =
        statuses(&read_all(&info, Duration::from_secs(2), Duration::from_secs(60)).await?)?;

    // The checkpoint held during the outage never covered an event enqueued after the
    // store went down.
    for e in &events {
        if let Some(c) = grace_ckpt.get(&e.partition) {
            if e.sequence_number <= *c {
                ensure!(
                    e.enqueued_ms <= down_at + 1_000,
                    "checkpoint {c} of partition {} covers seq {} enqueued at {} after the store went down at {down_at}",
                    e.partition,
                    e.sequence_number,
                    e.enqueued_ms
                );
            }
        }
    }
    let during = events
        .iter()
        .filter(|e| e.enqueued_ms > down_at + 1_000 && e.enqueued_ms < down_at + 29_000)
        .count();
    ensure!(
        during >= 40,
        "only {during} events arrived during the outage"
    );
    // Every event stored exactly once.
    let mut want: BTreeMap<String, BTreeMap<i64, i64>> = BTreeMap::new();
    for e in &events {
        want.entry(e.instance().to_string())
            .or_default()
            .insert(e.time_ms(), e.calls());
    }
    let mut last = String::new();
    poll_until(
        "every event in VictoriaMetrics once",
        Duration::from_secs(30),
        EVERY_250_MS,
        || {
            for (inst, pts) in &want {
                let series = vm_export(
                    &vm.url(),
                    &format!("tc_instance_call_count{{instance=\"{inst}\"}}"),
                )?;
                ensure!(series.len() == 1, "{inst}: {} series", series.len());
                let samples = &series[0].samples;
                let times: BTreeSet<i64> = samples.iter().map(|s| s.0).collect();
                ensure!(
                    times.len() == samples.len(),
                    "{inst}: a sample stored twice ({} samples, {} timestamps)",
                    samples.len(),
                    times.len()
                );
                let got: BTreeMap<i64, i64> =
                    samples.iter().map(|(t, v)| (*t, *v as i64)).collect();
                let missing: Vec<_> = pts.iter().filter(|(t, v)| got.get(t) != Some(v)).collect();
                if !missing.is_empty() {
                    last = format!(
                        "{inst}: {} of {} events missing, first {:?}",
                        missing.len(),
                        pts.len(),
                        missing[0]
                    );
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await
    .with_context(|| format!("{last}; collector log:\n{}", collector.log()))?;
    collector.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    eprintln!(
        "store down 30 s: lag {lag_before:.1}s → max {max_lag:.1}s ({polls} polls; idle partitions {idle_lag:?}), caught up {recovered:?} after restart, checkpoint held at {grace_ckpt:?}, {during} events during the outage, {} events stored once; {:?}",
        events.len(),
        t0.elapsed()
    );
    Ok(())
}

/// While the store is down, partitions that never carried an event also stop reading (their
/// `tc_pipeline` points fill the in-flight bound). Their lag must stay a number of seconds
/// the outage can explain, not the time since 1970: the empty partition's tip has
/// `last_enqueued_time` = the Unix epoch, and `lag_seconds` = now − that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_metrics_idle_partition_lag_stays_bounded_while_store_down() -> Result<()> {
    let mut vm = RestartableVictoriaMetrics::new()?;
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let mut agents = start_fleet(tmp.path(), &info, &[("q1", 2)]).await?;
    let sinks = format!(
        "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n",
        vm.url()
    );
    let mut collector = start_collector(tmp.path(), &info, &sinks, "1s", Some(2))?;
    poll_until(
        "points in VictoriaMetrics",
        Duration::from_secs(30),
        EVERY_250_MS,
        || {
            collector.ensure_running()?;
            Ok(vm_latest(&vm.url(), "tc_instance_call_count")?.is_some())
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.log()))?;
    vm.stop()?;
    let down = Instant::now();
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    while down.elapsed() < Duration::from_secs(20) {
        for (p, l) in metric_by_partition(&collector.metrics()?, "tcpulse_collector_lag_seconds") {
            let m = worst.entry(p).or_insert(0.0f64);
            *m = m.max(l);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    vm.start()?;
    agents[0].stop(Duration::from_secs(15))?;
    collector.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    let bad: Vec<_> = worst.iter().filter(|(_, l)| **l > 60.0).collect();
    ensure!(
        bad.is_empty(),
        "lag_seconds during a 20 s store outage: {worst:?}; partitions {bad:?} report more than the outage (an empty partition's lag is measured from the Unix epoch)"
    );
    Ok(())
}
