//! Chaos case: the hub crashes mid-run (what already held before issue 12). Two real
//! `tcpulse-agent` binaries publish over TLS to a real `tcpulse-hub` with a data directory
//! while a real `tcpulse-collector` writes to a real VictoriaMetrics; the hub is SIGKILLed
//! and restarted on the same ports and data. Every report the agents made must be stored
//! once, and both agents and the collector must ride through it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tcpulse_schema::Timestamp;
use tcpulse_tests::chaos::{record, Row};
use tcpulse_tests::collector::{CollectorOptions, CollectorProcess};
use tcpulse_tests::hub::{HubOptions, HubProcess, Mode, Policy};
use tcpulse_tests::stores::{vm_export, RestartableVictoriaMetrics};

use tcpulse_tests::agent::Target;
use tcpulse_tests::wait::wait_for;

use crate::agent::{field_u64, read_all, start_agent, tally, STOP_GRACE};

const INSTANCES: [&str; 2] = ["restart-0", "restart-1"];

/// `tc_instance_call_count` samples in VictoriaMetrics: (instance, ms) → how many times.
fn vm_points(url: &str) -> Result<BTreeMap<(String, i64), u64>> {
    let mut out = BTreeMap::new();
    for s in vm_export(url, "tc_instance_call_count")? {
        let inst = s.labels.get("instance").cloned().unwrap_or_default();
        for (t, _) in s.samples {
            *out.entry((inst.clone(), t)).or_default() += 1;
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_restart_hub_sigkill_mid_run() -> Result<()> {
    let vm = RestartableVictoriaMetrics::new()?;
    let mut hub = HubProcess::spawn(HubOptions {
        hubs: vec![("tcpulse".into(), 2)],
        plain: false,
        ..HubOptions::default()
    })
    .await?;
    let info = hub.info.clone();
    let tmp = tempfile::tempdir()?;
    let opts = CollectorOptions {
        sinks: format!(
            "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n",
            vm.url()
        ),
        ..CollectorOptions::default()
    };
    let mut c = CollectorProcess::start(&tmp.path().join("collector"), &info, &opts)?;
    let cs = info.connection_string(Mode::Tls, Policy::Send)?.to_string();
    let mut agents = Vec::new();
    for inst in INSTANCES {
        let dir = tmp.path().join(inst);
        let spool = dir.join("spool");
        agents.push(start_agent(
            &dir,
            &spool,
            inst,
            Target::Hub(&info, cs.clone()),
            0,
        )?);
    }
    // Running: both agents' points reach VictoriaMetrics through the collector.
    wait_for(
        "both agents' points stored",
        Duration::from_secs(20),
        || {
            c.ensure_running()?;
            let have = vm_points(&vm.url())?;
            Ok(INSTANCES
                .iter()
                .all(|i| have.keys().any(|(inst, _)| inst == i)))
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", c.log_tail(30)))?;

    // The crash: SIGKILL, a 1 s outage (the agents spool), the same ports and data back.
    hub.kill().await?;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    hub.restart().await?;
    let outage = killed.elapsed();
    let marker = vm_points(&vm.url())?.len();
    // Ridden through: new points are stored after the restart.
    wait_for(
        "points stored after the restart",
        Duration::from_secs(20),
        || {
            c.ensure_running()?;
            Ok(vm_points(&vm.url())?.len() >= marker + 2 * INSTANCES.len())
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", c.log_tail(30)))?;
    let recovered = killed.elapsed();
    c.ensure_running()?;
    for a in &mut agents {
        a.ensure_running()?;
    }
    for a in &mut agents {
        let status = a.stop(STOP_GRACE)?;
        let log = a.log();
        ensure!(status.success(), "agent exit {status}; log:\n{log}");
        let left = field_u64(&log, "tcpulse-agent stopped", "spooled");
        ensure!(left == Some(0), "agent left {left:?} spooled; log:\n{log}");
    }

    // What the agents made: seqs count from 0 per boot, so a report the hub lost is a gap
    // below the highest seq it holds.
    let events = read_all(&hub.info, Duration::from_secs(1)).await?;
    let mut made = 0u64;
    let mut hub_dups = 0u64;
    let mut faults = Vec::new();
    for inst in INSTANCES {
        let per = tally(&events, inst);
        if per.len() != 1 {
            faults.push(format!("{inst}: one boot expected: {per:?}"));
        }
        for t in per.values() {
            let d = t.distinct();
            let n = d.last().map_or(0, |m| m + 1);
            if n != d.len() as u64 || t.dropped != 0 {
                faults.push(format!(
                    "{inst}: {} of seqs 0..{n} at the hub, {} dropped",
                    d.len(),
                    t.dropped
                ));
            }
            made += n;
            hub_dups += t.duplicates();
        }
    }
    let expected: BTreeSet<(String, i64)> = events
        .iter()
        .filter_map(|e| {
            let inst = e["instance"].as_str()?.to_string();
            let t: Timestamp = e["time"].as_str()?.parse().ok()?;
            Some((inst, t.unix_millis()))
        })
        .collect();
    let mut stored = 0u64;
    let all = wait_for(
        "every report the hub holds in VictoriaMetrics",
        Duration::from_secs(20),
        || {
            let have = vm_points(&vm.url())?;
            stored = expected.iter().filter(|k| have.contains_key(*k)).count() as u64;
            Ok(stored == expected.len() as u64)
        },
    )
    .await;
    let have = vm_points(&vm.url())?;
    let duplicated = expected
        .iter()
        .filter(|k| have.get(*k).is_some_and(|n| *n > 1))
        .count() as u64;
    c.ensure_running()?;
    record(&Row {
        fault: "hub SIGKILL and restart mid-run".into(),
        events_sent: made,
        points_stored: stored,
        lost: made - stored,
        duplicated,
        counted_dropped: 0,
        outcome: format!(
            "hub down {outage:.1?}; new points stored {recovered:.1?} after the kill; \
             {hub_dups} re-sent at the hub, stored once; agents exit 0, collector alive"
        ),
    })?;
    ensure!(faults.is_empty(), "{}", faults.join("; "));
    all.with_context(|| format!("collector log:\n{}", c.log_tail(40)))?;
    ensure!(stored == made, "{stored} of {made} reports stored");
    ensure!(duplicated == 0, "{duplicated} points stored twice");
    c.stop(Duration::from_secs(20))?;
    hub.stop(Duration::from_secs(15)).await?;
    Ok(())
}
