//! Highly available collectors (issue 16): the Azure Blob checkpoint store and partition
//! ownership, against Azurite (the Azure Storage emulator) on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::json;
use tcpulse_collector::checkpoint::{
    Checkpoint, CheckpointScope, CheckpointStore, CHECKPOINT_VERSION,
};
use tcpulse_eventhub::client::{BatchOptions, EventData, Producer};
use tcpulse_tests::azurite::Azurite;
use tcpulse_tests::client::client_config;
use tcpulse_tests::collector::{
    blob_checkpoint, metric_max, partition_owners, CollectorOptions, CollectorProcess,
};
use tcpulse_tests::hub::{HubInfo, HubOptions, Mode, Policy, TestHub};
use tcpulse_tests::services::get;
use tcpulse_tests::wait::{poll_until, OnError, Poll};
use tokio_util::sync::CancellationToken;

/// Azurite answers on its port, goes away on stop, and comes back on the same port: what
/// the Blob outage cases rely on.
#[test]
fn azurite_starts_stops_and_restarts_on_its_port() -> Result<()> {
    let mut azurite = Azurite::start()?;
    let url = format!("{}?comp=list", azurite.blob_endpoint());
    // Unsigned: refused, but by Azurite (an HTTP answer, not a connection error).
    let (status, body) = get(&url)?;
    ensure!(
        status == 403 || status == 401,
        "unsigned list: {status} {body}"
    );
    let port = azurite.port();
    azurite.stop()?;
    ensure!(get(&url).is_err(), "still answering after stop");
    std::thread::sleep(Duration::from_millis(200));
    azurite.start_again()?;
    ensure!(azurite.port() == port, "port changed on restart");
    let (status, _) = get(&url)?;
    ensure!(status == 403 || status == 401, "after restart: {status}");
    ensure!(
        azurite.log().contains("successfully listens"),
        "{}",
        azurite.log()
    );
    Ok(())
}

fn scope() -> CheckpointScope {
    CheckpointScope::new("HA-NS.servicebus.windows.net", "Telemetry", "$Default")
}

fn checkpoint(partition: &str, seq: i64) -> Checkpoint {
    Checkpoint {
        version: CHECKPOINT_VERSION,
        partition: partition.into(),
        sequence_number: seq,
        offset: (seq * 100).to_string(),
        enqueued_time_ms: Some(1_000 + seq),
        updated_at_ms: 2_000,
        state: Some(serde_json::json!({"connectors": [], "n": seq})),
    }
}

/// A checkpoint written to Azurite reads back whole (aggregator state included), under the
/// lower-cased SDK name, with the SDK's metadata in decimal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_blob_checkpoints_round_trip_in_the_sdk_layout() -> Result<()> {
    let azurite = Azurite::start()?;
    let store = azurite.checkpoint_store("checkpoints").await?;
    ensure!(store.load(&scope(), "0").await?.is_none(), "empty store");
    store.store(&scope(), &checkpoint("0", 41)).await?;
    store.store(&scope(), &checkpoint("0", 42)).await?;
    ensure!(store.load(&scope(), "0").await? == Some(checkpoint("0", 42)));
    let listing = store
        .client()
        .list("ha-ns.servicebus.windows.net/telemetry/$default/")
        .await?;
    let names: Vec<&str> = listing.blobs.iter().map(|b| b.name.as_str()).collect();
    ensure!(
        names == ["ha-ns.servicebus.windows.net/telemetry/$default/checkpoint/0"],
        "{names:?}"
    );
    let mut meta = listing.blobs[0].metadata.clone();
    meta.sort();
    ensure!(
        meta == [
            ("offset".to_string(), "4200".to_string()),
            ("sequencenumber".to_string(), "42".to_string())
        ],
        "{meta:?}"
    );
    Ok(())
}

/// Two claimants race for the same partition, from nothing (`If-None-Match: *`) and from
/// the same ETag (`If-Match`): exactly one wins each time, the other sees a lost race
/// (409/412), not an error; the loser's renewal with its stale ETag fails the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_blob_claim_race_has_exactly_one_winner() -> Result<()> {
    let azurite = Azurite::start()?;
    let store = azurite.checkpoint_store("race").await?;
    let s = scope();
    let (a, b) = tokio::join!(
        store.claim(&s, "3", "owner-a", None),
        store.claim(&s, "3", "owner-b", None)
    );
    let (a, b) = (a?, b?);
    ensure!(a.is_some() != b.is_some(), "create race: {a:?} {b:?}");
    let first = a.or(b).unwrap();
    let listing = store.list_ownership(&s).await?;
    ensure!(listing.ownerships.len() == 1 && listing.ownerships[0].owner_id == first.owner_id);
    ensure!(
        listing.ownerships[0].etag == first.etag,
        "{listing:?} vs {first:?}"
    );
    ensure!(listing.server_time_ms > 0);
    // Both steal from the same ETag.
    let (c, d) = tokio::join!(
        store.claim(&s, "3", "owner-c", Some(&first.etag)),
        store.claim(&s, "3", "owner-d", Some(&first.etag))
    );
    let (c, d) = (c?, d?);
    ensure!(c.is_some() != d.is_some(), "steal race: {c:?} {d:?}");
    // The first owner's renewal with its old ETag: lost.
    ensure!(store
        .claim(&s, "3", &first.owner_id, Some(&first.etag))
        .await?
        .is_none());
    // Release (empty owner id) with the winner's ETag.
    let winner = c.or(d).unwrap();
    let released = store.claim(&s, "3", "", Some(&winner.etag)).await?.unwrap();
    let listing = store.list_ownership(&s).await?;
    ensure!(
        listing.ownerships[0].owner_id.is_empty() && listing.ownerships[0].etag == released.etag
    );
    Ok(())
}

// ---- Three collectors on one hub ------------------------------------------------------

/// Partitions of the HA hub; one connector (two instances) per partition.
const PARTITIONS: usize = 8;
/// The load-balancing timings of the HA collectors: short, so takeovers happen in seconds.
const INTERVAL_S: f64 = 1.0;
const EXPIRATION_S: f64 = 6.0;

fn rfc3339(ms: i64) -> String {
    tcpulse_schema::Timestamp::from_unix_millis(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn status_body(connector: &str, instance: &str, seq: u64, time_ms: i64) -> Vec<u8> {
    let boot = format!(
        "6f1c2a4e-8b1d-4c3e-9f70-{:012x}",
        instance.len() * 7919 + seq as usize / 1_000_000
    );
    serde_json::to_vec(&json!({
        "schema": "tcpulse.status.v1", "connector": connector, "deployment": "blue",
        "region": "westeurope", "scaleset": "vmss", "instance": instance,
        "boot": boot, "seq": seq, "time": rfc3339(time_ms), "state": "active",
        "calls": {"call_count": (seq * 7 + instance.len() as u64) % 16, "max_calls": 16, "planned_calls": 15},
    }))
    .unwrap_or_default()
}

/// Publishes, every 500 ms until `stop`, one report per instance: connector `c<p>` on
/// partition `p`, instances `c<p>-a` and `c<p>-b`. Returns the `(instance, sample ms)` sent.
async fn send_until(
    info: HubInfo,
    partitions: usize,
    stop: CancellationToken,
) -> Result<BTreeSet<(String, i64)>> {
    let mut producer = Producer::connect(client_config(&info, Policy::Send)?).await?;
    let mut sent = BTreeSet::new();
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        seq += 1;
        let now = tcpulse_tests::client::now_ms();
        for p in 0..partitions {
            let mut batch = producer.create_batch(BatchOptions {
                partition_id: Some(p.to_string()),
                ..Default::default()
            })?;
            for suffix in ["a", "b"] {
                let (connector, instance) = (format!("c{p}.example.com"), format!("c{p}-{suffix}"));
                let ev = EventData::new(status_body(&connector, &instance, seq, now))
                    .with_content_type("application/json")
                    .with_property("schema", tcpulse_schema::SCHEMA_V1);
                batch
                    .try_add(ev)
                    .map_err(|e| anyhow!("event not added: {e}"))?;
                sent.insert((instance, now));
            }
            producer.send_batch(&batch).await?;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => {}
        }
    }
    producer.close().await;
    Ok(sent)
}

/// Line-protocol lines keyed by `(series, ns)`: each distinct field set with its count.
type Lines = BTreeMap<(String, i64), BTreeMap<String, usize>>;

fn parse_lines(text: &str, into: &mut Lines) -> Result<()> {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (rest, ts) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow!("bad line {line}"))?;
        let (series, fields) = rest
            .split_once(' ')
            .ok_or_else(|| anyhow!("bad line {line}"))?;
        *into
            .entry((series.to_string(), ts.parse()?))
            .or_default()
            .entry(fields.to_string())
            .or_default() += 1;
    }
    Ok(())
}

fn read_lines(files: &[PathBuf]) -> Result<Lines> {
    let mut lines = Lines::new();
    for f in files {
        parse_lines(&std::fs::read_to_string(f).unwrap_or_default(), &mut lines)?;
    }
    Ok(lines)
}

/// `(instance, sample ms)` of every `tc_instance` point with `up=1`, and how many such
/// lines were written in all (a replayed event writes its point again).
fn instance_points(lines: &Lines) -> (BTreeSet<(String, i64)>, usize) {
    let mut set = BTreeSet::new();
    let mut written = 0;
    for ((series, ts), fields) in lines {
        if !series.starts_with("tc_instance,") {
            continue;
        }
        let inst = series
            .split(',')
            .find_map(|kv| kv.strip_prefix("instance="))
            .unwrap_or_default();
        for (f, n) in fields {
            if f.split(',').any(|kv| kv == "up=1i" || kv == "up=1") {
                set.insert((inst.to_string(), ts / 1_000_000));
                written += n;
            }
        }
    }
    (set, written)
}

struct Ha {
    dir: PathBuf,
    info: HubInfo,
    cs_file: PathBuf,
    container: String,
    expiration: String,
}

impl Ha {
    fn start(&self, name: &str) -> Result<CollectorProcess> {
        let opts = CollectorOptions {
            name: name.into(),
            checkpoint: blob_checkpoint(
                &self.cs_file,
                &self.container,
                &format!("{INTERVAL_S}s"),
                &self.expiration,
            ),
            sinks: format!(
                "[sinks.file]\npath = {:?}\n",
                self.points(name).display().to_string()
            ),
            ..CollectorOptions::default()
        };
        CollectorProcess::start(&self.dir.join(name), &self.info, &opts)
    }

    fn points(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.lp"))
    }
}

fn owned(c: &CollectorProcess) -> Result<usize> {
    Ok(metric_max(&c.metrics()?, "tcpulse_collector_owned_partitions").unwrap_or(0.0) as usize)
}

/// Waits until the live collectors own every partition between them with counts `want`
/// (sorted); returns how long it took.
async fn settle(
    what: &str,
    live: &mut [&mut CollectorProcess],
    want: &[usize],
    max: Duration,
) -> Result<Duration> {
    let want = want.to_vec();
    poll_until(what, max, Poll::every(100, OnError::Retry), || {
        let mut counts = Vec::new();
        for c in live.iter_mut() {
            c.ensure_running()?;
            counts.push(owned(c)?);
        }
        counts.sort();
        Ok(counts == want)
    })
    .await
}

/// Three collectors share 8 partitions through Azurite: 3/3/2 within a few cycles; a
/// SIGKILLed one's partitions are owned by the others within expiration + one interval, a
/// SIGTERMed one's within about one interval (it released them); every event sent is
/// stored, and the rollups written around the takeovers are the ones a single collector
/// writes from the same events (no false dip). Prints takeover times and the events read
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_ha_three_collectors_balance_take_over_and_match_one_collector() -> Result<()> {
    let t0 = Instant::now();
    let azurite = Azurite::start()?;
    let container = "tcpulse-ha".to_string();
    let store = azurite.checkpoint_store(&container).await?;
    let hub = TestHub::start_with(HubOptions {
        hubs: vec![("tcpulse".into(), PARTITIONS)],
        ..HubOptions::default()
    })
    .await?;
    let tmp = tempfile::TempDir::new()?;
    let cs_file = tmp.path().join("blob.cs");
    std::fs::write(&cs_file, azurite.connection_string())?;
    let ha = Ha {
        dir: tmp.path().to_path_buf(),
        info: hub.info.clone(),
        cs_file,
        container,
        expiration: format!("{EXPIRATION_S}s"),
    };
    let stop_sending = CancellationToken::new();
    let sender = tokio::spawn(send_until(
        hub.info.clone(),
        PARTITIONS,
        stop_sending.clone(),
    ));
    let mut a = ha.start("ha-a")?;
    let mut b = ha.start("ha-b")?;
    let mut c = ha.start("ha-c")?;
    let balanced = settle(
        "3/3/2",
        &mut [&mut a, &mut b, &mut c],
        &[2, 3, 3],
        Duration::from_secs(60),
    )
    .await
    .with_context(|| format!("a:\n{}\nb:\n{}", a.log_tail(30), b.log_tail(30)))?;
    let (status, body) = b.readyz()?;
    ensure!(
        status == 200 && body.contains("ownership: owner ha-b/"),
        "{status} {body}"
    );
    let listing = store.list_ownership(&scope_of(&hub.info)).await?;
    ensure!(listing.ownerships.len() == PARTITIONS, "{listing:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // SIGKILL: the others wait for the expiration, then claim.
    let killed_owned = owned(&a)?;
    let t_kill = Instant::now();
    a.kill()?;
    let after_kill = settle(
        "4/4 after SIGKILL",
        &mut [&mut b, &mut c],
        &[4, 4],
        Duration::from_secs(30),
    )
    .await?;
    let bound = Duration::from_secs_f64(EXPIRATION_S + INTERVAL_S * 1.2 + 2.0);
    ensure!(
        t_kill.elapsed() <= bound + Duration::from_secs(1),
        "SIGKILL takeover took {after_kill:?}, more than expiration + one interval ({bound:?})"
    );
    // A fourth collector joins: steals bring back 3/3/2.
    let mut d = ha.start("ha-d")?;
    let rebalanced = settle(
        "3/3/2 with a newcomer",
        &mut [&mut b, &mut c, &mut d],
        &[2, 3, 3],
        Duration::from_secs(60),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // SIGTERM: b releases, the others claim in their next cycle.
    let termed_owned = owned(&b)?;
    let t_term = Instant::now();
    b.stop(Duration::from_secs(30))?;
    let stop_took = t_term.elapsed();
    let after_term = settle(
        "4/4 after SIGTERM",
        &mut [&mut c, &mut d],
        &[4, 4],
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        after_term <= Duration::from_secs_f64(INTERVAL_S * 1.2 + 2.0),
        "SIGTERM takeover took {after_term:?} after the stop, more than about one interval"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_sending.cancel();
    let stopped_at = tcpulse_tests::client::now_ms();
    let sent = sender.await??;

    let files: Vec<PathBuf> = ["ha-a", "ha-b", "ha-c", "ha-d"]
        .iter()
        .map(|n| ha.points(n))
        .collect();
    poll_until(
        "every event's point in the HA collectors' files",
        Duration::from_secs(60),
        Poll::every(250, OnError::Retry),
        || Ok(sent.is_subset(&instance_points(&read_lines(&files)?).0)),
    )
    .await
    .with_context(|| format!("c:\n{}\nd:\n{}", c.log_tail(40), d.log_tail(40)))?;
    c.stop(Duration::from_secs(30))?;
    d.stop(Duration::from_secs(30))?;

    // One collector (file checkpoints) reads the same events from the beginning.
    let single_opts = CollectorOptions {
        name: "single".into(),
        sinks: format!(
            "[sinks.file]\npath = {:?}\n",
            ha.points("single").display().to_string()
        ),
        ..CollectorOptions::default()
    };
    let mut single = CollectorProcess::start(&tmp.path().join("single"), &hub.info, &single_opts)?;
    let single_file = vec![ha.points("single")];
    poll_until(
        "every event's point in the single collector's file",
        Duration::from_secs(60),
        Poll::every(250, OnError::Retry),
        || {
            single.ensure_running()?;
            Ok(sent.is_subset(&instance_points(&read_lines(&single_file)?).0))
        },
    )
    .await?;
    single.stop(Duration::from_secs(30))?;

    let ha_lines = read_lines(&files)?;
    let one = read_lines(&single_file)?;
    let (ha_points, ha_written) = instance_points(&ha_lines);
    ensure!(
        ha_points == sent,
        "events sent {} != distinct points stored {}",
        sent.len(),
        ha_points.len()
    );
    // Compare the points of windows closed by event time (before the sender stopped,
    // less the lateness), not the ones the idle watermark closes at the end.
    let cutoff_ns = (stopped_at - 6_000) * 1_000_000;
    let relevant = |l: &Lines| -> BTreeMap<(String, i64), BTreeSet<String>> {
        l.iter()
            .filter(|((s, ts), _)| {
                (s.starts_with("tc_connector,") || s.starts_with("tc_instance,")) && *ts < cutoff_ns
            })
            .map(|(k, v)| (k.clone(), v.keys().cloned().collect()))
            .collect()
    };
    let (h, o) = (relevant(&ha_lines), relevant(&one));
    for (k, fields) in &h {
        ensure!(
            fields.len() == 1,
            "{k:?} written with different values around a takeover: {fields:?}"
        );
    }
    let diff: Vec<_> = h
        .iter()
        .filter(|(k, v)| o.get(*k) != Some(*v))
        .take(5)
        .collect();
    let missing: Vec<_> = o.keys().filter(|k| !h.contains_key(*k)).take(5).collect();
    ensure!(
        diff.is_empty() && missing.is_empty(),
        "HA points differ from one collector's: {diff:?}; missing: {missing:?}"
    );
    let rollups = h
        .keys()
        .filter(|(s, _)| s.starts_with("tc_connector,"))
        .count();
    let twice = ha_written - ha_points.len();
    let pair = |x: &str| -> Result<usize> {
        let mine = instance_points(&read_lines(&[ha.points(x)])?).0;
        let others: Vec<PathBuf> = ["ha-a", "ha-b", "ha-c", "ha-d"]
            .iter()
            .filter(|n| **n != x)
            .map(|n| ha.points(n))
            .collect();
        Ok(mine
            .intersection(&instance_points(&read_lines(&others)?).0)
            .count())
    };
    eprintln!(
        "collector HA: balanced 3/3/2 in {balanced:?}; SIGKILL of a collector owning {killed_owned}: others own all in {after_kill:?} (expiration {EXPIRATION_S}s, interval {INTERVAL_S}s); newcomer rebalanced in {rebalanced:?}; SIGTERM of one owning {termed_owned} (stop took {stop_took:?}): others own all {after_term:?} after it exited; {} events, {twice} read twice in all ({} of them in the killed collector's file and another's, {} in the stopped one's and another's, the newcomer's steal from it included); {rollups} rollups equal to one collector's; {:?}",
        sent.len(),
        pair("ha-a")?,
        pair("ha-b")?,
        t0.elapsed()
    );
    // Each partition's connector has a rollup every 2 s over the ~20 s compared.
    ensure!(rollups >= PARTITIONS * 5, "few rollups compared: {rollups}");
    hub.shutdown().await;
    Ok(())
}

fn scope_of(info: &HubInfo) -> CheckpointScope {
    let cs = info
        .connection_string(Mode::Tls, Policy::Listen)
        .unwrap_or_default();
    let cfg = tcpulse_eventhub::client::ClientConfig::from_connection_string(
        cs,
        None,
        Default::default(),
    );
    let (ns, hub) = cfg
        .map(|c| (c.namespace(), c.hub.clone()))
        .unwrap_or_default();
    CheckpointScope::new(ns, hub, "$Default")
}

// ---- Interop with the official Python SDK ---------------------------------------------

fn checkpoint_sequences(log: &str) -> BTreeSet<(String, i64)> {
    // `… resuming after checkpoint partition=1 sequence_number=57`
    log.lines()
        .filter(|l| l.contains("resuming after checkpoint"))
        .filter_map(|l| {
            let p = l.split("partition=").nth(1)?.split_whitespace().next()?;
            let s = l
                .split("sequence_number=")
                .nth(1)?
                .split_whitespace()
                .next()?;
            Some((p.to_string(), s.parse().ok()?))
        })
        .collect()
}

/// A tcpulse collector and the official SDK's `EventHubConsumerClient` with
/// `BlobCheckpointStore` share one consumer group and container: they split the partitions;
/// the SDK lists and parses the blobs tcpulse wrote; when the SDK processor stops, tcpulse
/// takes its partitions and resumes right after the SDK's checkpoints, and when tcpulse
/// stops, the SDK resumes right after tcpulse's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_ha_shares_partitions_with_the_python_sdk_processor() -> Result<()> {
    let azurite = Azurite::start()?;
    let container = "tcpulse-interop";
    let store = azurite.checkpoint_store(container).await?;
    let hub = TestHub::start_with(HubOptions {
        hubs: vec![("tcpulse".into(), 4)],
        ..HubOptions::default()
    })
    .await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let cs_file = tmp.path().join("blob.cs");
    std::fs::write(&cs_file, azurite.connection_string())?;
    let stop_sending = CancellationToken::new();
    let sender = tokio::spawn(send_until(info.clone(), 4, stop_sending.clone()));
    let opts = CollectorOptions {
        name: "interop".into(),
        checkpoint: blob_checkpoint(&cs_file, container, "1s", "6s"),
        sinks: format!(
            "[sinks.file]\npath = {:?}\n",
            tmp.path().join("t.lp").display().to_string()
        ),
        ..CollectorOptions::default()
    };
    let mut t = CollectorProcess::start(&tmp.path().join("t"), &info, &opts)?;
    settle(
        "tcpulse owns all 4",
        &mut [&mut t],
        &[4],
        Duration::from_secs(30),
    )
    .await?;
    let py_args = |run_seconds: f64| {
        Ok::<_, anyhow::Error>(json!({
            "conn": info.conn(Mode::Tls, Policy::Listen)?,
            "blob_connection_string": azurite.connection_string(),
            "container": container,
            "run_seconds": run_seconds,
            "load_balancing_interval": 1.0,
            "ownership_expiration": 6.0,
        }))
    };
    // The SDK processor joins: 2/2 (it steals, tcpulse lets go), then it stops and releases.
    let py =
        tcpulse_tests::python::run_script("processor", py_args(14.0)?, Duration::from_secs(90))
            .await?;
    let py_owned: Vec<String> = serde_json::from_value(py["owned_at_end"].clone())?;
    ensure!(
        py_owned.len() == 2,
        "the SDK processor should own 2 of 4 at the end: {py}"
    );
    let owners: BTreeMap<String, String> = serde_json::from_value(py["ownership"].clone())?;
    let py_id = py["owner_id"].as_str().unwrap_or_default().to_string();
    let tcpulse_parts: Vec<&String> = owners
        .iter()
        .filter(|(_, o)| o.starts_with("interop/"))
        .map(|(p, _)| p)
        .collect();
    ensure!(
        tcpulse_parts.len() == 2 && owners.values().filter(|o| **o == py_id).count() == 2,
        "ownership as the SDK lists it: {owners:?}"
    );
    let py_checkpoints = py["checkpoints"].as_object().cloned().unwrap_or_default();
    for p in &tcpulse_parts {
        ensure!(
            py_checkpoints
                .get(p.as_str())
                .and_then(|c| c["sequence_number"].as_i64())
                .is_some(),
            "the SDK parsed no checkpoint of tcpulse's partition {p}: {py}"
        );
    }
    // tcpulse takes the SDK's partitions back and resumes after the SDK's checkpoints.
    let took_back = settle(
        "tcpulse owns all 4 again",
        &mut [&mut t],
        &[4],
        Duration::from_secs(30),
    )
    .await?;
    // The SDK checkpoints every event it hands over, up to its close: on the partitions it
    // owned at the end, its last event is the checkpoint. (A partition it held only while
    // the two were balancing, and lost to tcpulse's owner-level-0 receiver, moved on under
    // tcpulse since.)
    let mut want: BTreeMap<String, i64> = serde_json::from_value(py["last_seq"].clone())?;
    want.retain(|p, _| py_owned.contains(p));
    let after_close: BTreeMap<String, i64> =
        serde_json::from_value(py["checkpoints_after_close"].clone())?;
    ensure!(
        want.keys().cloned().collect::<Vec<_>>() == py_owned
            && want.iter().all(|(p, s)| after_close.get(p) == Some(s)),
        "the SDK's last events are not its checkpoints: {py}"
    );
    poll_until(
        "tcpulse resuming after the SDK's checkpoints",
        Duration::from_secs(20),
        Poll::every(100, OnError::Retry),
        || {
            let resumed = checkpoint_sequences(&t.log());
            Ok(want
                .iter()
                .all(|(p, seq)| resumed.contains(&(p.clone(), *seq))))
        },
    )
    .await
    .with_context(|| {
        format!(
            "the SDK read up to {want:?}; the SDK said {py}; tcpulse log:\n{}",
            t.log_tail(40)
        )
    })?;
    let resumed = checkpoint_sequences(&t.log());
    // The other way round: tcpulse stops (releasing), the SDK resumes after its checkpoints.
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.stop(Duration::from_secs(30))?;
    let scope = scope_of(&info);
    let mut ours = BTreeMap::new();
    for p in 0..4 {
        let cp = store
            .load(&scope, &p.to_string())
            .await?
            .ok_or_else(|| anyhow!("no checkpoint of {p}"))?;
        ours.insert(p.to_string(), cp.sequence_number);
    }
    let py2 =
        tcpulse_tests::python::run_script("processor", py_args(8.0)?, Duration::from_secs(90))
            .await?;
    stop_sending.cancel();
    let sent = sender.await??;
    let first: BTreeMap<String, i64> = serde_json::from_value(py2["first_seq"].clone())?;
    for (p, seq) in &ours {
        ensure!(
            first.get(p) == Some(&(seq + 1)),
            "partition {p}: tcpulse checkpointed {seq}, the SDK started at {:?}",
            first.get(p)
        );
    }
    ensure!(
        !first.is_empty(),
        "the SDK read nothing after tcpulse stopped (events sent: {})",
        sent.len()
    );
    eprintln!(
        "python interop: the SDK processor owned {py_owned:?} beside tcpulse; tcpulse took them back {took_back:?} after it stopped and resumed after its checkpoints {resumed:?}; after tcpulse stopped the SDK started at {first:?} (tcpulse's checkpoints {ours:?})"
    );
    hub.shutdown().await;
    Ok(())
}

// ---- Faults ---------------------------------------------------------------------------

fn counter(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Two collectors, and a Blob outage of 30 s (shorter than the 45 s expiration): both keep
/// their partitions and keep storing points while the container is down (checkpoint and
/// ownership writes fail and are counted), nobody's partition is taken or lost, checkpoints
/// move again after it is back, and every event sent is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_ha_blob_outage_keeps_partitions_and_loses_no_event() -> Result<()> {
    let mut azurite = Azurite::start()?;
    let container = "tcpulse-outage";
    let store = azurite.checkpoint_store(container).await?;
    let hub = TestHub::start_with(HubOptions {
        hubs: vec![("tcpulse".into(), 4)],
        ..HubOptions::default()
    })
    .await?;
    let tmp = tempfile::TempDir::new()?;
    let cs_file = tmp.path().join("blob.cs");
    std::fs::write(&cs_file, azurite.connection_string())?;
    let ha = Ha {
        dir: tmp.path().to_path_buf(),
        info: hub.info.clone(),
        cs_file,
        container: container.into(),
        expiration: "45s".into(),
    };
    let stop_sending = CancellationToken::new();
    let sender = tokio::spawn(send_until(hub.info.clone(), 4, stop_sending.clone()));
    let mut a = ha.start("out-a")?;
    let mut b = ha.start("out-b")?;
    settle(
        "2/2",
        &mut [&mut a, &mut b],
        &[2, 2],
        Duration::from_secs(60),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let owners_before = partition_owners(&a.metrics()?);
    let lost = |c: &CollectorProcess| -> Result<f64> {
        Ok(counter(
            &c.metrics()?,
            "tcpulse_collector_ownership_lost_claims_total",
            "reason=",
        ))
    };
    // Losses of the initial balancing (the first one up gives partitions to the second).
    let lost_before = (lost(&a)?, lost(&b)?);
    let scope = scope_of(&hub.info);
    let files = vec![ha.points("out-a"), ha.points("out-b")];

    azurite.stop()?;
    let down_at = tcpulse_tests::client::now_ms();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Still owning, still storing what arrives, still ready (listed within the expiration).
    for c in [&mut a, &mut b] {
        c.ensure_running()?;
        ensure!(
            owned(c)? == 2,
            "a partition was dropped during the outage:\n{}",
            c.log_tail(30)
        );
        let text = c.metrics()?;
        ensure!(
            counter(
                &text,
                "tcpulse_collector_component_errors_total",
                "error_type=\"list_failed\""
            ) > 0.0,
            "no failed listing counted"
        );
        ensure!(
            counter(
                &text,
                "tcpulse_collector_component_errors_total",
                "error_type=\"store_io\""
            ) > 0.0,
            "no failed checkpoint write counted"
        );
        ensure!(
            c.readyz()?.0 == 200,
            "not ready during an outage shorter than the expiration"
        );
    }
    let during: usize = instance_points(&read_lines(&files)?)
        .0
        .iter()
        .filter(|(_, t)| *t > down_at + 2_000)
        .count();
    ensure!(
        during > 100,
        "few points stored during the outage: {during}"
    );

    azurite.start_again()?;
    let back = Instant::now();
    // Checkpoints move past the outage again.
    poll_until(
        "checkpoints written after the outage",
        Duration::from_secs(30),
        Poll::every(250, OnError::Retry),
        || {
            let cp = futures_block(store.load(&scope, "0"))?;
            Ok(cp.is_some_and(|c| c.updated_at_ms > down_at + 30_000))
        },
    )
    .await?;
    let checkpoints_back = back.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle(
        "2/2 after the outage",
        &mut [&mut a, &mut b],
        &[2, 2],
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        partition_owners(&a.metrics()?) == owners_before,
        "owners changed across the outage"
    );
    ensure!(
        (lost(&a)?, lost(&b)?) == lost_before,
        "a partition was lost across the outage: before {lost_before:?}, after {:?}",
        (lost(&a)?, lost(&b)?)
    );
    stop_sending.cancel();
    let sent = sender.await??;
    poll_until(
        "every event stored",
        Duration::from_secs(60),
        Poll::every(250, OnError::Retry),
        || Ok(sent.is_subset(&instance_points(&read_lines(&files)?).0)),
    )
    .await?;
    a.stop(Duration::from_secs(30))?;
    b.stop(Duration::from_secs(30))?;
    eprintln!(
        "Blob outage of 30 s: partitions kept, {during} points stored during it, checkpoints written again {checkpoints_back:?} after it ended, owners unchanged, {} events all stored",
        sent.len()
    );
    hub.shutdown().await;
    Ok(())
}

/// Seconds between the first log line's time of day (`2026-12-07T18:32:44.63Z …`) and now.
fn log_clock_offset_s(log: &str) -> Option<i64> {
    let t = log.lines().next()?.split('T').nth(1)?;
    let hms: Vec<i64> = t
        .get(..8)?
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let logged = hms.first()? * 3600 + hms.get(1)? * 60 + hms.get(2)?;
    let now = (tcpulse_tests::client::now_ms() / 1000).rem_euclid(86_400);
    let d = (logged - now).rem_euclid(86_400);
    Some(if d > 43_200 { d - 86_400 } else { d })
}

/// Runs a future to completion from a blocking poll (the waits' conditions are closures).
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Two collectors whose clocks are 80 s apart (one 40 s fast, one 40 s slow: far more than
/// the 6 s expiration) share the partitions without a single takeover, because expiry is
/// judged by the Blob service's clock; and the fast one takes the slow one's partitions
/// after it is killed within expiration + one interval, not sooner or later. The bound on
/// a collector's clock is the Blob service's own: Shared Key requests dated more than
/// 15 minutes off are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_ha_clock_skew_causes_no_takeover() -> Result<()> {
    let azurite = Azurite::start()?;
    let container = "tcpulse-skew";
    azurite.checkpoint_store(container).await?;
    let hub = TestHub::start_with(HubOptions {
        hubs: vec![("tcpulse".into(), 4)],
        ..HubOptions::default()
    })
    .await?;
    let tmp = tempfile::TempDir::new()?;
    let cs_file = tmp.path().join("blob.cs");
    std::fs::write(&cs_file, azurite.connection_string())?;
    let start = |name: &str, offset: &str| -> Result<CollectorProcess> {
        let opts = CollectorOptions {
            name: name.into(),
            checkpoint: blob_checkpoint(&cs_file, container, "1s", "6s"),
            sinks: format!(
                "[sinks.file]\npath = {:?}\n",
                tmp.path().join(format!("{name}.lp")).display().to_string()
            ),
            clock_offset: Some(offset.into()),
            ..CollectorOptions::default()
        };
        CollectorProcess::start(&tmp.path().join(name), &hub.info, &opts)
    };
    let stop_sending = CancellationToken::new();
    let sender = tokio::spawn(send_until(hub.info.clone(), 4, stop_sending.clone()));
    let mut fast = start("fast", "+40s")?;
    let mut slow = start("slow", "-40s")?;
    // The clocks really are off: each collector's log is stamped with its own clock.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (f, s) = (
        log_clock_offset_s(&fast.log()),
        log_clock_offset_s(&slow.log()),
    );
    ensure!(
        f.is_some_and(|o| (35..=45).contains(&o)) && s.is_some_and(|o| (-45..=-35).contains(&o)),
        "collector clocks not shifted by libfaketime: fast {f:?} s, slow {s:?} s"
    );
    settle(
        "2/2",
        &mut [&mut fast, &mut slow],
        &[2, 2],
        Duration::from_secs(60),
    )
    .await
    .with_context(|| format!("fast:\n{}\nslow:\n{}", fast.log_tail(30), slow.log_tail(30)))?;
    // Ten cycles: no steal, no loss beyond those of the initial balancing.
    let takeovers = |c: &CollectorProcess| -> Result<f64> {
        let text = c.metrics()?;
        Ok(
            metric_max(&text, "tcpulse_collector_ownership_steals_total").unwrap_or(0.0)
                + counter(
                    &text,
                    "tcpulse_collector_ownership_lost_claims_total",
                    "reason=",
                ),
        )
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (takeovers(&fast)?, takeovers(&slow)?);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = (takeovers(&fast)?, takeovers(&slow)?);
    ensure!(
        before == after,
        "takeovers with skewed clocks (steals + losses, fast/slow): {before:?} then {after:?}"
    );
    ensure!(owned(&fast)? == 2 && owned(&slow)? == 2);
    let t = Instant::now();
    slow.kill()?;
    let took = settle(
        "the fast one owns all",
        &mut [&mut fast],
        &[4],
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        t.elapsed() >= Duration::from_secs(4) && took <= Duration::from_secs_f64(6.0 + 1.2 + 2.0),
        "takeover after {took:?}: expiry judged by a skewed clock?"
    );
    stop_sending.cancel();
    sender.await??;
    fast.stop(Duration::from_secs(30))?;
    eprintln!("clock skew of 80 s between two collectors: no takeover in 10 cycles; after a SIGKILL the other owned all in {took:?} (expiration 6 s)");
    hub.shutdown().await;
    Ok(())
}

/// The Blob store on an Entra ID identity instead of the account key: the collector's
/// managed identity (IMDS on a loopback token server) gets a Storage token (scope
/// `https://storage.azure.com/.default`) and Azurite, over HTTPS with `--oauth basic`,
/// accepts it as `Authorization: Bearer` for the container, the checkpoints and their
/// listing; a token for another audience is Azurite's own refusal, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_blob_store_on_a_managed_identity() -> Result<()> {
    use tcpulse_collector::checkpoint::blob::config::AzureBlobConfig;
    use tcpulse_eventhub::identity::{AuthMethod, IdentityConfig};
    use tcpulse_tests::entra::{Principal, TestIssuer, TokenServer, TokenServerOptions};
    let azurite = Azurite::start_oauth()?;
    let issuer = TestIssuer::generate()?;
    let tokens = TokenServer::start(
        &issuer,
        TokenServerOptions {
            lifetime: Duration::from_secs(600),
            audience: "https://storage.azure.com".into(),
            managed_identities: vec![Principal::random()],
            ..TokenServerOptions::default()
        },
    )
    .await?;
    let config = AzureBlobConfig {
        auth: AuthMethod::ManagedIdentity,
        identity: IdentityConfig {
            imds_endpoint: Some(tokens.imds_host()),
            ..IdentityConfig::default()
        },
        container_url: Some(azurite.container_url("entra")),
        extra_ca_file: azurite.ca_pem().map(PathBuf::from),
        ..AzureBlobConfig::default()
    };
    let store = config.build()?;
    let round_trip = async {
        store.client().create_container().await?;
        store.store(&scope(), &checkpoint("0", 7)).await?;
        anyhow::Ok(store.load(&scope(), "0").await?)
    };
    let loaded = round_trip.await.with_context(|| azurite.log())?;
    ensure!(loaded == Some(checkpoint("0", 7)));
    ensure!(tokens.requests() == 1, "one cached token for every request");
    // A token Storage does not accept: Azurite's refusal reaches the error.
    tokens.set_audience("https://eventhubs.azure.net");
    let e = config
        .build()?
        .load(&scope(), "0")
        .await
        .err()
        .context("a token for another audience was accepted")?;
    ensure!(format!("{e:#}").contains("audience"), "{e:#}");
    tokens.shutdown().await;
    Ok(())
}
