//! The agent end to end with real components: `tcpulse-agent` binaries → the hub
//! (in-process or the `tcpulse-hub` binary) → the Python SDK or our `Consumer`, on loopback.
//!
//! Agents use the `file` source (a bare call count in a file the test writes), so every
//! value the hub carries can be checked against what the test made the agents say. Health
//! collection is off (it only adds host noise). Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::{json, Value};
use tcpulse_tests::agent::{AgentProcess, REGION};
use tcpulse_tests::client::{now_ms, read_all, statuses, Status};
use tcpulse_tests::hub::{HubOptions, HubProcess, Mode, Policy, TestHub};
use tcpulse_tests::python::run_script;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_publish_events_reach_the_python_sdk_with_schema_fields_intact() -> Result<()> {
    let t0 = Instant::now();
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let connector = "tc-sdk.example.com";
    let mut agent =
        AgentProcess::start_on_hub(tmp.path(), &info, connector, "green", "tc-sdk-vmss_7", 11)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    agent.set_calls(12)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.ensure_running()?;
    agent.stop(Duration::from_secs(15))?;

    let r = run_script(
        "receive",
        json!({
            "conn": info.conn(Mode::Tls, Policy::Listen)?,
            "position": {"kind": "earliest"},
            "expect": null,
            "idle_seconds": 3.0,
            "max_seconds": 30,
            "settle_seconds": 0,
        }),
        Duration::from_secs(90),
    )
    .await?;
    let mut events: Vec<Value> = r["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["events"].as_array().cloned().unwrap_or_default())
        .collect();
    ensure!(
        events.len() >= 5,
        "the SDK received {} events from an agent that ran ~6 s at 1 s intervals; agent log:\n{}",
        events.len(),
        agent.logs()
    );
    let partitions: BTreeSet<String> = events
        .iter()
        .map(|e| e["partition_id"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(
        partitions.len() == 1,
        "partition key = connector puts one connector's events in one partition: {partitions:?}"
    );
    events.sort_by_key(|e| e["sequence_number"].as_i64());
    let mut boot = None;
    for (i, e) in events.iter().enumerate() {
        ensure!(e["partition_key"] == connector, "partition key: {e}");
        ensure!(e["content_type"] == "application/json", "content type: {e}");
        ensure!(
            e["properties"]["schema"] == "tcpulse.status.v1",
            "application property schema: {e}"
        );
        let body: Value = serde_json::from_str(e["body"].as_str().unwrap_or_default())
            .with_context(|| format!("body is not JSON: {e}"))?;
        ensure!(body["schema"] == "tcpulse.status.v1", "{body}");
        ensure!(body["connector"] == connector, "{body}");
        ensure!(body["deployment"] == "green", "{body}");
        ensure!(body["region"] == REGION, "{body}");
        ensure!(body["scaleset"] == format!("{connector}-vmss"), "{body}");
        ensure!(body["instance"] == "tc-sdk-vmss_7", "{body}");
        ensure!(body["state"] == "active", "{body}");
        ensure!(body["calls"]["max_calls"] == 16, "{body}");
        let calls = body["calls"]["call_count"].as_i64().unwrap_or(-1);
        ensure!(calls == 11 || calls == 12, "call_count {calls}: {body}");
        let b = body["boot"].as_str().unwrap_or_default().to_string();
        ensure!(uuid::Uuid::parse_str(&b).is_ok(), "boot is a UUID: {body}");
        ensure!(
            boot.get_or_insert(b.clone()) == &b,
            "one boot per agent start"
        );
        let seq = body["seq"].as_u64().ok_or_else(|| anyhow!("seq: {body}"))?;
        let first = events[0]["body"].as_str().unwrap_or_default();
        let first_seq = serde_json::from_str::<Value>(first)?["seq"]
            .as_u64()
            .unwrap_or(0);
        ensure!(
            seq == first_seq + i as u64,
            "seq rises by one per event: {seq} at {i}"
        );
        let t = tcpulse_schema::Timestamp::parse_rfc3339(body["time"].as_str().unwrap_or_default())
            .map_err(|_| anyhow!("time is RFC 3339: {body}"))?;
        let enq = e["enqueued_time_ms"].as_i64().unwrap_or(0);
        ensure!(
            (t.unix_millis() - enq).abs() < 10_000,
            "sample time {} near enqueue time {enq}",
            t.unix_millis()
        );
        ensure!(body["agent"]["version"].is_string(), "{body}");
    }
    let last_calls: Value = serde_json::from_str(events.last().unwrap()["body"].as_str().unwrap())?;
    ensure!(
        last_calls["calls"]["call_count"] == 12,
        "the changed count reached the SDK"
    );
    hub.shutdown().await;
    eprintln!(
        "agent → hub → SDK: {} events intact in {:?}",
        events.len(),
        t0.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_spool_survives_hub_outage_and_sigkill() -> Result<()> {
    let t0 = Instant::now();
    let mut hub = HubProcess::spawn(HubOptions {
        hubs: vec![("tcpulse".into(), 2)],
        plain: false,
        ..HubOptions::default()
    })
    .await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let connector = "tc-outage.example.com";
    let mut agents = vec![
        AgentProcess::start_on_hub(tmp.path(), &info, connector, "blue", "o1", 3)?,
        AgentProcess::start_on_hub(tmp.path(), &info, connector, "blue", "o2", 4)?,
    ];
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Outage: the hub stops; the agents keep reporting into their spools.
    hub.stop(Duration::from_secs(15)).await?;
    let outage_start = now_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    agents[0].set_calls(5)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // o1 crashes during the outage and comes back with the same spool.
    agents[0].kill()?;
    let killed_at = now_ms();
    tokio::time::sleep(Duration::from_secs(1)).await;
    agents[0].restart()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for a in &mut agents {
        a.ensure_running()?;
    }
    hub.restart().await?;
    let outage_end = now_ms();
    ensure!(hub.info.amqps == info.amqps, "same port after restart");
    // Time to replay the spool, then a clean stop (flushes what is left).
    tokio::time::sleep(Duration::from_secs(6)).await;
    for a in &mut agents {
        a.stop(Duration::from_secs(20))?;
    }
    let stopped = now_ms();

    let events =
        statuses(&read_all(&hub.info, Duration::from_secs(2), Duration::from_secs(60)).await?)?;
    let mut per: BTreeMap<(String, String), Vec<&Status>> = BTreeMap::new();
    for e in &events {
        ensure!(e.connector() == connector, "{:?}", e.body);
        per.entry((e.instance().to_string(), e.boot().to_string()))
            .or_default()
            .push(e);
    }
    let mut report = Vec::new();
    for inst in ["o1", "o2"] {
        let boots: Vec<_> = per.iter().filter(|((i, _), _)| i == inst).collect();
        let want_boots = if inst == "o1" { 2 } else { 1 };
        ensure!(
            boots.len() == want_boots,
            "{inst}: {} boots seen, {want_boots} expected; agent log:\n{}",
            boots.len(),
            agents[if inst == "o1" { 0 } else { 1 }].logs()
        );
        let mut all_seqs = Vec::new();
        for ((_, boot), evs) in &boots {
            // In partition order (sequence number), seq must be contiguous and unique.
            let mut evs: Vec<&Status> = evs.to_vec();
            evs.sort_by_key(|e| (e.partition.clone(), e.sequence_number));
            let seqs: Vec<u64> = evs.iter().map(|e| e.seq()).collect();
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            ensure!(
                sorted.len() == seqs.len(),
                "{inst} boot {boot}: an event delivered twice: {seqs:?}"
            );
            ensure!(
                seqs == sorted,
                "{inst} boot {boot}: out of order in the partition: {seqs:?}"
            );
            ensure!(
                sorted.windows(2).all(|w| w[1] == w[0] + 1),
                "{inst} boot {boot}: gap in seq: {seqs:?}"
            );
            let times: Vec<i64> = evs.iter().map(|e| e.time_ms()).collect();
            all_seqs.push((
                sorted[0],
                *sorted.last().unwrap(),
                times[0],
                *times.last().unwrap(),
            ));
        }
        all_seqs.sort_unstable();
        // Events sampled during the outage were delivered (spooled, then replayed).
        let during: usize = boots
            .iter()
            .flat_map(|(_, evs)| evs.iter())
            .filter(|e| e.time_ms() > outage_start + 1_000 && e.time_ms() < outage_end - 1_000)
            .count();
        ensure!(
            during >= 5,
            "{inst}: only {during} events sampled during the ~11 s outage were delivered"
        );
        // Nothing missing across the whole run: about one event a second.
        let covered = all_seqs.iter().map(|(a, b, _, _)| b - a + 1).sum::<u64>();
        if inst == "o1" {
            // The first boot's events reach up to the SIGKILL (the spool kept them); the
            // second boot's seq starts above the first's (it read the spool's highest).
            let (first, second) = (all_seqs[0], all_seqs[1]);
            ensure!(
                second.0 > first.1,
                "o1 restarted with seq {} not above the spooled {}",
                second.0,
                first.1
            );
            ensure!(
                first.3 >= killed_at - 2_500,
                "o1's first boot: last delivered sample at {} but it ran until {killed_at}",
                first.3
            );
            ensure!(
                events
                    .iter()
                    .filter(|e| e.instance() == "o1")
                    .any(|e| e.calls() == 5 && e.time_ms() < killed_at),
                "the count changed during the outage (5) was delivered"
            );
        }
        ensure!(
            covered as i64 >= (stopped - t0_ms(&t0)) / 1000 - 6,
            "{inst}: only {covered} events over a {} s run",
            (stopped - t0_ms(&t0)) / 1000
        );
        report.push(format!(
            "{inst}: {covered} events in {} boot(s), {during} from the outage",
            boots.len()
        ));
    }
    hub.stop(Duration::from_secs(15)).await?;
    eprintln!(
        "spool across outage + SIGKILL: {} in {:?}",
        report.join("; "),
        t0.elapsed()
    );
    Ok(())
}

fn t0_ms(t0: &Instant) -> i64 {
    now_ms() - t0.elapsed().as_millis() as i64
}
