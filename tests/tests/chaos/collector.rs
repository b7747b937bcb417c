//! Collector faults (issue 12: 3, 7, 9d, 10), each against the real `tcpulse-collector`
//! binary and the real hub over TLS, writing to a line-protocol file or a real
//! VictoriaMetrics. Events are sent by the test itself (status events with distinct
//! `(instance, time)`), so every point the store must hold is known.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use tcpulse_eventhub::client::{EventData, Producer, SendOptions};
use tcpulse_hub::{Hub, HubConfig, HubSpec};
use tcpulse_schema::Timestamp;
use tcpulse_tests::chaos::{record, Row, Tmpfs};
use tcpulse_tests::client::client_config;
use tcpulse_tests::collector::{metric_by_partition, CollectorOptions, CollectorProcess};
use tcpulse_tests::hub::{with_key, HubInfo, HubOptions, HubProcess, Policy, TestHub};
use tcpulse_tests::stores::{vm_export, RestartableVictoriaMetrics};
use tcpulse_tests::wait::wait_for;

// ---- helpers ---------------------------------------------------------------------------

fn now_ms() -> i64 {
    Timestamp::now().unix_millis()
}

/// One status event the test sends: instance `instance`, sample time `time_ms`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Sent {
    instance: String,
    time_ms: i64,
}

/// How many of `sent` have no `tc_instance_call_count` sample (instance, time) in
/// VictoriaMetrics at `url`.
fn missing_in_vm(url: &str, sent: &[Sent]) -> Result<usize> {
    let have: BTreeSet<(String, i64)> = vm_export(url, "tc_instance_call_count")?
        .iter()
        .flat_map(|s| {
            let inst = s.labels.get("instance").cloned().unwrap_or_default();
            s.samples.iter().map(move |(t, _)| (inst.clone(), *t))
        })
        .collect();
    Ok(sent
        .iter()
        .filter(|e| !have.contains(&(e.instance.clone(), e.time_ms)))
        .count())
}

/// `n` events of a phase: instances `<tag>-0..4`, one per second each, ending now.
fn phase(tag: &str, n: usize) -> Vec<Sent> {
    let end = now_ms() - 1_000;
    (0..n)
        .map(|k| Sent {
            instance: format!("{tag}-{}", k % 5),
            time_ms: end - ((n - k) as i64 / 5) * 1_000 + (k % 5) as i64,
        })
        .collect()
}

/// A UUID-shaped boot id, one per instance name.
fn boot(instance: &str) -> String {
    let h = instance.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("0b7e4f2d-3c55-4a8e-b1a2-{:012x}", h & 0xffff_ffff_ffff)
}

fn body(s: &Sent, seq: usize) -> String {
    let time = Timestamp::from_unix_millis(s.time_ms)
        .map(|t| t.to_string())
        .unwrap_or_default();
    json!({
        "schema": "tcpulse.status.v1", "connector": "chaos.example.com",
        "deployment": "blue", "region": "westeurope", "scaleset": "chaos-vmss",
        "instance": s.instance, "boot": boot(&s.instance), "seq": seq,
        "time": time, "state": "active",
        "calls": {"call_count": 3, "max_calls": 16, "planned_calls": 15, "media_load": 20}
    })
    .to_string()
}

/// Sends `bodies` to partition 0, in order.
async fn send(info: &HubInfo, bodies: &[String]) -> Result<()> {
    let mut p = Producer::connect(client_config(info, Policy::Send)?).await?;
    for b in bodies {
        let opts = SendOptions {
            partition_id: Some("0".into()),
            ..Default::default()
        };
        p.send(
            EventData::new(b.clone().into_bytes()).with_content_type("application/json"),
            opts,
        )
        .await?;
    }
    p.close().await;
    Ok(())
}

async fn send_events(info: &HubInfo, events: &[Sent], first_seq: usize) -> Result<()> {
    let bodies: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(i, s)| body(s, first_seq + i))
        .collect();
    send(info, &bodies).await
}

/// `tc_instance` points in a line-protocol file: (instance, ms) → distinct field sets.
fn file_points(path: &Path) -> BTreeMap<(String, i64), BTreeSet<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("tc_instance,")) {
        let mut parts = line.rsplitn(3, ' ');
        let (Some(ts), Some(fields), Some(series)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(inst) = series
            .split(',')
            .find_map(|kv| kv.strip_prefix("instance="))
        else {
            continue;
        };
        let Ok(ns) = ts.parse::<i64>() else { continue };
        out.entry((inst.to_string(), ns / 1_000_000))
            .or_default()
            .insert(fields.to_string());
    }
    out
}

/// (stored, duplicated): how many of `sent` the file holds, and how many with two values.
fn count_stored(path: &Path, sent: &[Sent]) -> (u64, u64) {
    let points = file_points(path);
    let mut stored = 0;
    let mut dup = 0;
    for s in sent {
        if let Some(f) = points.get(&(s.instance.clone(), s.time_ms)) {
            stored += 1;
            if f.len() > 1 {
                dup += 1;
            }
        }
    }
    (stored, dup)
}

fn file_sink(path: &Path) -> String {
    format!("[sinks.file]\npath = {:?}\n", path.display().to_string())
}

/// The value of a metric sample line starting with `prefix` (`name{labels}`), 0 if absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The `/readyz` body (its address read from the config the helper wrote).
fn readyz(c: &CollectorProcess) -> Result<String> {
    let toml = std::fs::read_to_string(c.config())?;
    let listen = toml
        .lines()
        .find_map(|l| l.strip_prefix("listen = "))
        .ok_or_else(|| anyhow!("no http.listen in {}", c.config().display()))?
        .trim_matches('"')
        .to_string();
    let (_, body) = tcpulse_tests::services::get(&format!("http://{listen}/readyz"))?;
    Ok(body)
}

fn edit_checkpoint(dir: &Path, seq: i64) -> Result<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "0.json") {
                let mut v: Value = serde_json::from_slice(&std::fs::read(&p)?)?;
                v["sequence_number"] = json!(seq);
                std::fs::write(&p, serde_json::to_vec(&v)?)?;
                return Ok(p);
            }
        }
    }
    bail!("no checkpoint of partition 0 under {}", dir.display())
}

fn one_partition() -> HubOptions {
    HubOptions {
        hubs: vec![("tcpulse".into(), 1)],
        plain: false,
        ..HubOptions::default()
    }
}

// ---- fault 3: checkpoint beyond the partition's end ------------------------------------

/// The hub's partitions are reset (data wiped, same name and keys: an Event Hub deleted and
/// re-created) while the collector is stopped with a checkpoint at 59; then a checkpoint
/// edited to 999999999. Each time every new event must be stored, with an ERROR naming
/// both numbers, a counter and the `/readyz` note.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_collector_checkpoint_ahead_of_partition() -> Result<()> {
    let mut hub = HubProcess::spawn(one_partition()).await?;
    let tmp = tempfile::TempDir::new()?;
    let out = tmp.path().join("points.lp");
    let opts = CollectorOptions {
        sinks: file_sink(&out),
        ..CollectorOptions::default()
    };
    let cdir = tmp.path().join("collector");
    let mut c = CollectorProcess::start(&cdir, &hub.info, &opts)?;
    let before = phase("old", 60);
    send_events(&hub.info, &before, 0).await?;
    wait_for("checkpoint at 59", Duration::from_secs(30), || {
        c.ensure_running()?;
        Ok(c.checkpoints().get("0") == Some(&59))
    })
    .await?;
    c.stop(Duration::from_secs(20))?;

    // The hub re-created: same name and keys, empty partitions.
    hub.stop(Duration::from_secs(15)).await?;
    std::fs::remove_dir_all(hub.data_dir().join("hubs")).context("wipe the hub's partitions")?;
    hub.restart().await?;
    let mut c = CollectorProcess::start(&cdir, &hub.info, &opts)?;
    let fresh = phase("new", 40);
    send_events(&hub.info, &fresh, 0).await?;
    let all_stored = wait_for("the new events stored", Duration::from_secs(20), || {
        c.ensure_running()?;
        Ok(count_stored(&out, &fresh).0 == fresh.len() as u64)
    })
    .await;
    let (stored, dup) = count_stored(&out, &fresh);
    let log = c.log();
    let error_line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("ahead_of_partition"))
        .map(str::to_owned);
    record(&Row {
        fault: "collector: hub re-created (partitions reset), checkpoint 59".into(),
        events_sent: fresh.len() as u64,
        points_stored: stored,
        lost: fresh.len() as u64 - stored,
        duplicated: dup,
        counted_dropped: 0,
        outcome: if error_line.is_some() {
            "ERROR checkpoint ahead_of_partition; restarted from earliest".into()
        } else {
            "no error logged".into()
        },
    })?;
    all_stored.with_context(|| format!("{stored} of {} stored; log:\n{log}", fresh.len()))?;
    let line = error_line.ok_or_else(|| anyhow!("no ERROR about the checkpoint; log:\n{log}"))?;
    // The new events may reach the hub before the partition opens: its end is then
    // anywhere from -1 (empty) to 39, always below the checkpoint.
    let end: Option<i64> = line
        .split("last enqueued sequence is ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    ensure!(
        line.contains("sequence 59") && end.is_some_and(|e| (-1..59).contains(&e)),
        "the ERROR names the checkpoint and the partition's end: {line}"
    );
    let metrics = c.metrics()?;
    ensure!(
        metric(
            &metrics,
            "tcpulse_collector_component_errors_total{stage=\"checkpoint\",error_type=\"ahead_of_partition\"}"
        ) >= 1.0,
        "no counter:\n{metrics}"
    );
    let ready = readyz(&c)?;
    ensure!(
        ready.contains("partition 0: checkpoint 59 was ahead"),
        "/readyz: {ready}"
    );
    wait_for("checkpoint at 39", Duration::from_secs(10), || {
        Ok(c.checkpoints().get("0") == Some(&39))
    })
    .await?;
    c.stop(Duration::from_secs(20))?;

    // A checkpoint edited (or restored from elsewhere) to 999999999.
    edit_checkpoint(&cdir.join("ckpt"), 999_999_999)?;
    let mut c = CollectorProcess::start(&cdir, &hub.info, &opts)?;
    let more = phase("edited", 20);
    send_events(&hub.info, &more, 0).await?;
    let all_stored = wait_for(
        "the events after the edit stored",
        Duration::from_secs(20),
        || {
            c.ensure_running()?;
            Ok(count_stored(&out, &more).0 == more.len() as u64)
        },
    )
    .await;
    let (stored, dup) = count_stored(&out, &more);
    let log = c.log();
    // The partition's end: 39, or up to 59 if the new events arrived before the open.
    let found = log.lines().any(|l| {
        l.contains("ERROR")
            && l.contains("sequence 999999999")
            && (39..=59).any(|e| l.contains(&format!("last enqueued sequence is {e} ")))
    });
    record(&Row {
        fault: "collector: checkpoint edited to 999999999".into(),
        events_sent: more.len() as u64,
        points_stored: stored,
        lost: more.len() as u64 - stored,
        duplicated: dup,
        counted_dropped: 0,
        outcome: if found {
            "ERROR checkpoint ahead_of_partition; restarted from earliest".into()
        } else {
            "no error logged".into()
        },
    })?;
    all_stored.with_context(|| format!("{stored} of {} stored; log:\n{log}", more.len()))?;
    ensure!(
        found,
        "no ERROR naming 999999999 and the partition's end; log:\n{log}"
    );
    wait_for("checkpoint at 59", Duration::from_secs(10), || {
        Ok(c.checkpoints().get("0") == Some(&59))
    })
    .await?;
    c.stop(Duration::from_secs(20))?;

    // Re-created again, and 80 new events arrive before the collector is back: the
    // partition's end (79) is past the checkpoint (59), so only the checkpointed event
    // itself can tell the two incarnations apart.
    hub.stop(Duration::from_secs(15)).await?;
    std::fs::remove_dir_all(hub.data_dir().join("hubs")).context("wipe the hub's partitions")?;
    hub.restart().await?;
    let grown = phase("grown", 80);
    send_events(&hub.info, &grown, 0).await?;
    let mut c = CollectorProcess::start(&cdir, &hub.info, &opts)?;
    let all_stored = wait_for(
        "the events of the grown partition stored",
        Duration::from_secs(20),
        || {
            c.ensure_running()?;
            Ok(count_stored(&out, &grown).0 == grown.len() as u64)
        },
    )
    .await;
    let (stored, dup) = count_stored(&out, &grown);
    let log = c.log();
    let found = log
        .lines()
        .any(|l| l.contains("ERROR") && l.contains("names event 59") && l.contains("re-created"));
    record(&Row {
        fault: "collector: hub re-created, grown past the checkpoint before restart".into(),
        events_sent: grown.len() as u64,
        points_stored: stored,
        lost: grown.len() as u64 - stored,
        duplicated: dup,
        counted_dropped: 0,
        outcome: if found {
            "ERROR checkpointed event replaced; restarted from earliest".into()
        } else {
            "no error logged".into()
        },
    })?;
    all_stored.with_context(|| format!("{stored} of {} stored; log:\n{log}", grown.len()))?;
    ensure!(
        found,
        "no ERROR about the replaced checkpointed event; log:\n{log}"
    );
    c.stop(Duration::from_secs(20))?;
    hub.stop(Duration::from_secs(15)).await?;
    Ok(())
}

/// Retention expires events while the collector is down: they are counted as lost to
/// retention (counter, `tc_pipeline` field, ERROR) and the partition starts at its
/// beginning, storing everything still retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_collector_retention_expired_while_down() -> Result<()> {
    let hubdir = tempfile::TempDir::new()?;
    let hub = Hub::start(HubConfig {
        listen: "127.0.0.1:0".parse()?,
        plain_listen: None,
        hubs: vec![HubSpec {
            name: "tcpulse".into(),
            partitions: 1,
        }],
        tls_dir: Some(hubdir.path().join("tls")),
        retention_events: 10,
        ..HubConfig::default()
    })
    .await?;
    let info = HubInfo::from_ready(&hub.ready_info())?;
    let tmp = tempfile::TempDir::new()?;
    let out = tmp.path().join("points.lp");
    let opts = CollectorOptions {
        sinks: file_sink(&out),
        ..CollectorOptions::default()
    };
    let cdir = tmp.path().join("collector");
    let mut c = CollectorProcess::start(&cdir, &info, &opts)?;
    let first = phase("kept", 10);
    send_events(&info, &first, 0).await?;
    wait_for("checkpoint at 9", Duration::from_secs(30), || {
        c.ensure_running()?;
        Ok(c.checkpoints().get("0") == Some(&9))
    })
    .await?;
    c.stop(Duration::from_secs(20))?;
    // 50 more while it is down; the hub keeps about the newest 10.
    let down = phase("down", 50);
    send_events(&info, &down, 0).await?;
    let mut c = CollectorProcess::start(&cdir, &info, &opts)?;
    let lost_counter = |c: &CollectorProcess| -> u64 {
        metric(
            &c.metrics().unwrap_or_default(),
            "tcpulse_collector_retention_lost_events_total{partition=\"0\"}",
        ) as u64
    };
    // Every event is stored or counted as lost to retention, none silently missing.
    let ok = wait_for(
        "each event stored or counted as lost",
        Duration::from_secs(20),
        || {
            c.ensure_running()?;
            Ok(count_stored(&out, &down).0 + lost_counter(&c) == down.len() as u64)
        },
    )
    .await;
    let lost = lost_counter(&c);
    let (stored, dup) = count_stored(&out, &down);
    let sent = down.len() as u64;
    record(&Row {
        fault: "collector: retention expired while it was down".into(),
        events_sent: sent,
        points_stored: stored,
        lost: sent.saturating_sub(stored + lost),
        duplicated: dup,
        counted_dropped: lost,
        outcome: format!("{lost} events counted as lost to retention (ERROR, tc_pipeline field)"),
    })?;
    let log = c.log();
    ok.with_context(|| format!("{stored} stored, {lost} counted lost of {sent}; log:\n{log}"))?;
    ensure!(
        lost >= 30 && stored >= 1,
        "retention kept ~10 of 50: {lost} lost, {stored} stored"
    );
    ensure!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&format!("{lost} events expired"))),
        "no ERROR about retention; log:\n{log}"
    );
    let field = format!("retention_lost_events={lost}i");
    wait_for(
        "tc_pipeline with retention_lost_events",
        Duration::from_secs(10),
        || {
            Ok(std::fs::read_to_string(&out)?
                .lines()
                .any(|l| l.starts_with("tc_pipeline,") && l.contains(&field)))
        },
    )
    .await?;
    c.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    Ok(())
}

// ---- fault 7: dead letters on a full disk ----------------------------------------------

/// The dead-letter file's disk is full while 20 undecodable events arrive: the checkpoint
/// must not pass them; once space returns every record is in the file and the partition
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_collector_dead_letter_disk_full() -> Result<()> {
    let fs = Tmpfs::mount(512 * 1024)?;
    let hub = TestHub::start_with(one_partition()).await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let out = tmp.path().join("points.lp");
    let cdir = tmp.path().join("collector");
    std::fs::create_dir_all(&cdir)?;
    // The collector writes `<dir>/dead.jsonl`: make that the tmpfs.
    let dl = fs.path().join("dead.jsonl");
    std::os::unix::fs::symlink(&dl, cdir.join("dead.jsonl"))?;
    let opts = CollectorOptions {
        sinks: file_sink(&out),
        ..CollectorOptions::default()
    };
    let mut c = CollectorProcess::start(&cdir, &info, &opts)?;
    let good1 = phase("dl-a", 10);
    send_events(&info, &good1, 0).await?;
    wait_for("checkpoint at 9", Duration::from_secs(30), || {
        c.ensure_running()?;
        Ok(c.checkpoints().get("0") == Some(&9))
    })
    .await?;

    fs.fill("filler")?;
    let bad: Vec<String> = (0..20).map(|k| format!("not json #{k}")).collect();
    send(&info, &bad).await?;
    let good2 = phase("dl-b", 10);
    send_events(&info, &good2, 0).await?;
    let held = async {
        wait_for(
            "the partition to report the full disk",
            Duration::from_secs(20),
            || {
                c.ensure_running()?;
                Ok(c.log().contains("cannot write the dead-letter file"))
            },
        )
        .await?;
        // Several checkpoint intervals: the checkpoint stays before the first dead letter.
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let cp = c.checkpoints().get("0").copied();
            ensure!(
                cp == Some(9),
                "checkpoint moved to {cp:?} past dead letters (10..29) not in the file"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let blocked = metric(
        &c.metrics().unwrap_or_default(),
        "tcpulse_collector_component_errors_total{stage=\"dead_letter\",error_type=\"blocked\"}",
    );
    fs.free("filler")?;
    let resumed = wait_for(
        "checkpoint at 39 after space returned",
        Duration::from_secs(20),
        || {
            c.ensure_running()?;
            Ok(c.checkpoints().get("0") == Some(&39))
        },
    )
    .await;
    let records: Vec<Value> = std::fs::read_to_string(&dl)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let seqs: BTreeSet<i64> = records
        .iter()
        .filter(|r| r["type"] == "event")
        .filter_map(|r| r["sequence_number"].as_i64())
        .collect();
    let (stored, dup) = count_stored(&out, &good2);
    record(&Row {
        fault: "collector: dead-letter disk full (20 rejected events)".into(),
        events_sent: 30,
        points_stored: stored,
        lost: 10u64.saturating_sub(stored) + 20u64.saturating_sub(seqs.len() as u64),
        duplicated: dup,
        counted_dropped: seqs.len() as u64,
        outcome: match &held {
            Ok(()) => format!(
                "checkpoint held at 9 while full ({blocked} blocked attempts), {} records after freeing",
                seqs.len()
            ),
            Err(e) => format!("{e}; {} records after freeing", seqs.len()),
        },
    })?;
    held?;
    resumed.with_context(|| format!("log:\n{}", c.log_tail(40)))?;
    ensure!(
        seqs == (10..30).collect::<BTreeSet<i64>>(),
        "dead letters in the file: {seqs:?}"
    );
    ensure!(blocked >= 1.0, "no blocked attempt counted");
    ensure!(
        stored == 10,
        "{stored} of 10 good events after the dead letters stored"
    );
    c.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    drop(fs);
    Ok(())
}

// ---- fault 9d: lag during a store outage ------------------------------------------------

/// With the store down, lag must rise from the first seconds (it measures up to the last
/// stored event); after the store returns every event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_collector_store_down_lag_rises_at_once() -> Result<()> {
    let mut vm = RestartableVictoriaMetrics::new()?;
    let hub = TestHub::start_with(one_partition()).await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let opts = CollectorOptions {
        sinks: format!(
            "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n",
            vm.url()
        ),
        ..CollectorOptions::default()
    };
    let mut c = CollectorProcess::start(&tmp.path().join("collector"), &info, &opts)?;
    let mut sent = phase("lag-a", 10);
    send_events(&info, &sent, 0).await?;
    wait_for("points in VictoriaMetrics", Duration::from_secs(30), || {
        c.ensure_running()?;
        Ok(!vm_export(&vm.url(), "tc_instance_call_count")?.is_empty())
    })
    .await?;
    vm.stop()?;
    let down = Instant::now();
    let mut first_lag = None;
    let mut seq = sent.len();
    // One event a second while the store is down, 10 s.
    while down.elapsed() < Duration::from_secs(10) {
        let ev = Sent {
            instance: "lag-b-0".into(),
            time_ms: now_ms(),
        };
        send_events(&info, std::slice::from_ref(&ev), seq).await?;
        seq += 1;
        sent.push(ev);
        let lag = metric_by_partition(&c.metrics()?, "tcpulse_collector_lag_seconds")
            .get("0")
            .copied()
            .unwrap_or(0.0);
        if lag >= 1.0 && first_lag.is_none() {
            first_lag = Some(down.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let end_lag = metric_by_partition(&c.metrics()?, "tcpulse_collector_lag_seconds")
        .get("0")
        .copied()
        .unwrap_or(0.0);
    vm.start()?;
    let mut missing = sent.len();
    let all = wait_for(
        "every event in VictoriaMetrics",
        Duration::from_secs(30),
        || {
            missing = missing_in_vm(&vm.url(), &sent)?;
            Ok(missing == 0)
        },
    )
    .await;
    record(&Row {
        fault: "collector: store down 10 s (lag)".into(),
        events_sent: sent.len() as u64,
        points_stored: (sent.len() - missing) as u64,
        lost: missing as u64,
        duplicated: 0,
        counted_dropped: 0,
        outcome: format!(
            "lag ≥ 1 s after {:?}, {end_lag:.1} s at the end of the outage",
            first_lag
        ),
    })?;
    all.with_context(|| format!("log:\n{}", c.log_tail(40)))?;
    let first = first_lag
        .ok_or_else(|| anyhow!("lag_seconds stayed below 1 s during a 10 s store outage"))?;
    ensure!(
        first <= Duration::from_secs(5),
        "lag_seconds reached 1 s only {first:?} into the outage"
    );
    ensure!(end_lag >= 7.0, "lag {end_lag} s after a 10 s outage");
    c.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    Ok(())
}

// ---- fault 10: wrong Listen key --------------------------------------------------------

/// A wrong Listen key: the collector stays alive, retries on the slow schedule (not in a
/// tight loop) and logs each retry with the cause and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_collector_wrong_listen_key_retries_slowly() -> Result<()> {
    let hub = TestHub::start_with(one_partition()).await?;
    let mut ready = hub.hub().ready_info();
    let listen = ready["connection_strings"]["listen"]
        .as_str()
        .ok_or_else(|| anyhow!("no listen connection string in the ready info"))?
        .to_string();
    ready["connection_strings"]["listen"] = json!(with_key(
        &listen,
        "d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3Jvbmc="
    ));
    let wrong = HubInfo::from_ready(&ready)?;
    let tmp = tempfile::TempDir::new()?;
    let opts = CollectorOptions {
        sinks: file_sink(&tmp.path().join("points.lp")),
        ..CollectorOptions::default()
    };
    let mut c = CollectorProcess::start(&tmp.path().join("collector"), &wrong, &opts)?;
    wait_for("the refusal in the log", Duration::from_secs(20), || {
        c.ensure_running()?;
        Ok(c.log().contains("refused"))
    })
    .await
    .with_context(|| c.log_tail(20))?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    c.ensure_running()?;
    let metrics = c.metrics()?;
    let attempts = metric(
        &metrics,
        "tcpulse_collector_component_errors_total{stage=\"source\",error_type=\"unauthorized\"}",
    ) + metric(
        &metrics,
        "tcpulse_collector_component_errors_total{stage=\"source\",error_type=\"partitions\"}",
    );
    let log = c.log();
    let retry_lines = log
        .lines()
        .filter(|l| l.contains("refused the credentials; retrying in 30s"))
        .count();
    record(&Row {
        fault: "collector: wrong Listen key".into(),
        events_sent: 0,
        points_stored: 0,
        lost: 0,
        duplicated: 0,
        counted_dropped: 0,
        outcome: format!("alive; {attempts} attempts in ~10 s, {retry_lines} retry log lines"),
    })?;
    ensure!(
        attempts <= 2.0,
        "{attempts} connection attempts in ~10 s with a refused key (a tight loop)"
    );
    ensure!(
        retry_lines >= 1 && log.contains("SharedAccessKey"),
        "no retry line with the cause and what to do; log:\n{log}"
    );
    c.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    Ok(())
}

// ---- what already held: SIGKILL mid-batch, a hung store --------------------------------

/// SIGKILL between two checkpoint writes while events stream in: the restart replays from
/// the checkpoint and every event's point is stored, none with two different values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_collector_sigkill_mid_batch() -> Result<()> {
    let hub = TestHub::start_with(one_partition()).await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let out = tmp.path().join("points.lp");
    let opts = CollectorOptions {
        sinks: file_sink(&out),
        checkpoint_interval: Some("3s".into()),
        ..CollectorOptions::default()
    };
    let cdir = tmp.path().join("collector");
    let mut c = CollectorProcess::start(&cdir, &info, &opts)?;
    let events = phase("kill", 200);
    send_events(&info, &events[..100], 0).await?;
    wait_for("a first checkpoint", Duration::from_secs(30), || {
        c.ensure_running()?;
        Ok(c.checkpoints().contains_key("0"))
    })
    .await?;
    // Stream the rest; kill while it is being read, stored and not yet checkpointed.
    let sender = {
        let info = info.clone();
        let rest = events[100..].to_vec();
        tokio::spawn(async move { send_events(&info, &rest, 100).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = c.pid().ok_or_else(|| anyhow!("collector not running"))?;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    ensure!(killed.success(), "kill -KILL {pid} failed");
    sender.await??;
    drop(c);
    let mut c = CollectorProcess::start(&cdir, &info, &opts)?;
    let ok = wait_for(
        "every event stored after the restart",
        Duration::from_secs(30),
        || {
            c.ensure_running()?;
            Ok(count_stored(&out, &events).0 == events.len() as u64)
        },
    )
    .await;
    let (stored, dup) = count_stored(&out, &events);
    record(&Row {
        fault: "collector: SIGKILL mid-batch".into(),
        events_sent: events.len() as u64,
        points_stored: stored,
        lost: events.len() as u64 - stored,
        duplicated: dup,
        counted_dropped: 0,
        outcome: "restart replayed from the checkpoint; identical rewrites only".into(),
    })?;
    ok.with_context(|| {
        format!(
            "{stored} of {} stored; log:\n{}",
            events.len(),
            c.log_tail(30)
        )
    })?;
    ensure!(dup == 0, "{dup} points written with two different values");
    c.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    Ok(())
}

/// A TCP forwarder in front of the store that can hang: while `hung`, new connections are
/// accepted and never answered (and held until the flag clears).
struct HangingProxy {
    addr: std::net::SocketAddr,
    hung: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HangingProxy {
    fn start(upstream: std::net::SocketAddr) -> Result<HangingProxy> {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let hung = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = hung.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let flag = flag.clone();
                std::thread::spawn(move || {
                    if flag.load(Ordering::SeqCst) {
                        // Hold the connection, answer nothing.
                        while flag.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        return;
                    }
                    let Ok(up) = std::net::TcpStream::connect(upstream) else {
                        return;
                    };
                    let (Ok(a), Ok(b)) = (conn.try_clone(), up.try_clone()) else {
                        return;
                    };
                    let back = flag.clone();
                    std::thread::spawn(move || pump(a, b, &flag));
                    pump(up, conn, &back);
                });
            }
        });
        Ok(HangingProxy { addr, hung })
    }

    fn set_hung(&self, hung: bool) {
        self.hung.store(hung, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding every chunk while `hung` (so open keep-alive connections
/// hang too).
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    hung: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while hung.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The store accepts connections and never answers for 12 s: writes time out and are
/// retried, nothing is checkpointed past what was stored, and after it answers again every
/// event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_collector_store_hung() -> Result<()> {
    let vm = RestartableVictoriaMetrics::new()?;
    let upstream: std::net::SocketAddr = vm
        .url()
        .trim_start_matches("http://")
        .parse()
        .context("VictoriaMetrics address")?;
    let proxy = HangingProxy::start(upstream)?;
    let hub = TestHub::start_with(one_partition()).await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let opts = CollectorOptions {
        sinks: format!(
            "[sinks.influxdb_v2]\nurl = \"http://{}\"\norg = \"noc\"\nbucket = \"tcpulse\"\nrequest_timeout = \"2s\"\n",
            proxy.addr
        ),
        ..CollectorOptions::default()
    };
    let mut c = CollectorProcess::start(&tmp.path().join("collector"), &info, &opts)?;
    let before = phase("hung-a", 10);
    send_events(&info, &before, 0).await?;
    wait_for("checkpoint at 9", Duration::from_secs(30), || {
        c.ensure_running()?;
        Ok(c.checkpoints().get("0") == Some(&9))
    })
    .await?;
    proxy.set_hung(true);
    let during = phase("hung-b", 20);
    send_events(&info, &during, 10).await?;
    let hung_at = Instant::now();
    let mut moved = None;
    while hung_at.elapsed() < Duration::from_secs(12) {
        c.ensure_running()?;
        let cp = c.checkpoints().get("0").copied();
        if cp != Some(9) {
            moved = cp;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    proxy.set_hung(false);
    let sent: Vec<Sent> = before.iter().chain(&during).cloned().collect();
    let mut missing = sent.len();
    let ok = wait_for(
        "every event in VictoriaMetrics",
        Duration::from_secs(40),
        || {
            missing = missing_in_vm(&vm.url(), &sent)?;
            Ok(missing == 0)
        },
    )
    .await;
    let timeouts = metric(
        &c.metrics().unwrap_or_default(),
        "tcpulse_collector_sink_errors_total{sink=\"influxdb_v2\",error_type=\"timeout\"}",
    );
    record(&Row {
        fault: "collector: store hung 12 s".into(),
        events_sent: sent.len() as u64,
        points_stored: (sent.len() - missing) as u64,
        lost: missing as u64,
        duplicated: 0,
        counted_dropped: 0,
        outcome: format!("{timeouts} write timeouts retried; checkpoint held while hung"),
    })?;
    ok.with_context(|| format!("log:\n{}", c.log_tail(30)))?;
    ensure!(
        moved.is_none(),
        "checkpoint moved to {moved:?} while the store answered nothing"
    );
    c.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    Ok(())
}
