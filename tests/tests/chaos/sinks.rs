//! Chaos cases: sinks.
//!
//! Issue 12, fault 6: a tag value with a backslash the line protocol cannot carry (a
//! trailing one: `deployment="blue\"`) made InfluxDB 1.x answer `400 partial write`, and the
//! v1 sink dead-lettered the whole batch although InfluxDB had stored its other lines.
//!
//! - [`chaos_sinks_awkward_tag_values_read_back_equal`]: generated tag values (backslashes
//!   in every position, spaces, commas, equals signs, quotes, unicode, empty) go through the
//!   real hub and the real `tcpulse-collector` into InfluxDB 1.6 (v1 sink) and
//!   VictoriaMetrics (v2 sink), and read back equal from both;
//! - [`chaos_sinks_influxdb1_partial_write_dead_letters_only_the_bad_line`]: a batch with
//!   one line InfluxDB 1.6 refuses (a field type conflict) stores the other lines and
//!   dead-letters that one line alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tcpulse_schema::line::{stored_tag_value, BACKSLASH_STAND_IN};
use tcpulse_schema::{encode, AgentInfo, Calls, Health, StatusEvent, Timestamp};
use tcpulse_tests::chaos::{record, Row};
use tcpulse_tests::client;
use tcpulse_tests::collector::{CollectorOptions, CollectorProcess};
use tcpulse_tests::hub::{HubInfo, HubOptions, TestHub};
use tcpulse_tests::services::{self, post, post_form, Service};
use tcpulse_tests::stores::{influx_query, influx_rows, vm_export};
use tcpulse_tests::wait::{poll_until, Poll};

const DB: &str = "tcpulse";

/// One event of instance `instance` of connector `connector` at `t_ms`.
fn event(connector: &str, deployment: &str, instance: &str, t_ms: i64) -> Result<StatusEvent> {
    Ok(StatusEvent {
        connector: connector.into(),
        deployment: deployment.into(),
        scaleset: "vmss".into(),
        instance: instance.into(),
        boot: uuid::Uuid::from_u128(7),
        seq: 1,
        time: Timestamp::from_unix_millis(t_ms).context("event time")?,
        start_time: None,
        calls: Some(Calls {
            call_count: 3,
            media_load: Some(20),
            ..Calls::example()
        }),
        health: Health::default(),
        agent: None,
        ..StatusEvent::example()
    })
}

/// Publishes `bodies` to partition 0, over TLS with the Send policy.
async fn publish(info: &HubInfo, bodies: &[Vec<u8>]) -> Result<()> {
    let events: Vec<(&str, Vec<u8>)> = bodies.iter().map(|b| ("0", b.clone())).collect();
    client::publish(info, &events).await
}

/// VictoriaMetrics (v2 sink) and InfluxDB 1.6 (v1 sink, database [`DB`] created).
fn stores() -> Result<(Service, Service)> {
    let vm = services::victoria_metrics()?;
    let influx = services::influxdb()?;
    let (status, body) = post_form(
        &format!("{}/query", influx.url()),
        &[("q", &format!("CREATE DATABASE {DB}"))],
    )?;
    ensure!(status == 200, "create database: {status} {body}");
    Ok((vm, influx))
}

fn sinks_config(vm: &Service, influx: &Service) -> String {
    format!(
        "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"{DB}\"\n\
         [sinks.influxdb_v1]\nurl = {:?}\ndatabase = \"{DB}\"\n",
        vm.url(),
        influx.url()
    )
}

/// Instance → deployment of every `tc_instance` up=1 series of `connector` in VictoriaMetrics.
fn vm_deployments(vm: &Service, connector: &str) -> Result<BTreeMap<String, String>> {
    Ok(vm_export(
        &vm.url(),
        &format!("tc_instance_up{{connector={connector:?}}}"),
    )?
    .into_iter()
    .filter(|s| s.samples.iter().any(|(_, v)| *v == 1.0))
    .map(|s| {
        let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        (get("instance"), get("deployment"))
    })
    .collect())
}

/// Instance → deployment of every `tc_instance` up=1 point of `connector` in InfluxDB.
fn influx_deployments(influx: &Service, connector: &str) -> Result<BTreeMap<String, String>> {
    let rows = influx_rows(&influx_query(
        &influx.url(),
        DB,
        &format!(
            "SELECT up, instance, deployment FROM tc_instance WHERE connector = '{connector}' AND up = 1"
        ),
    )?);
    Ok(rows
        .iter()
        .map(|(_, r)| {
            let get = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (get("instance"), get("deployment"))
        })
        .collect())
}

/// Lines of the collector's dead-letter file: (kind, lines) of each record.
fn dead_letters(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let text = match std::fs::read_to_string(dir.join("dead.jsonl")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context("read dead.jsonl"),
    };
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("dead letter {l}")))
        .collect()
}

/// Tag values with backslashes in every position and before every separator, the
/// separators themselves, quotes and unicode (the schema's limits: non-empty, no control
/// characters; the empty one is a decode dead letter).
fn awkward_values() -> Vec<String> {
    let mut values: BTreeSet<String> = BTreeSet::new();
    let base = "blue";
    for i in 0..=base.len() {
        for bs in [r"\", r"\\", r"\\\"] {
            values.insert(format!("{}{bs}{}", &base[..i], &base[i..]));
        }
    }
    for sep in [",", " ", "=", "\"", "'", r"\", "ü"] {
        values.insert(format!(r"a\{sep}b"));
        values.insert(format!(r"a\\{sep}b"));
        values.insert(format!("a{sep}b"));
        values.insert(sep.to_string());
        values.insert(format!(r"{sep}\"));
        values.insert(format!(r"\{sep}"));
    }
    for v in [
        " lead",
        "trail ",
        "a,b=c d",
        r#""quoted""#,
        "zürich-€-😀",
        "东京\\",
        r"C:\Program Files\tcpulse\",
        "",
    ] {
        values.insert(v.to_owned());
    }
    values.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sinks_awkward_tag_values_read_back_equal() -> Result<()> {
    let started = Instant::now();
    let (vm, influx) = stores()?;
    let hub = TestHub::start_with(HubOptions {
        hubs: vec![("tcpulse".into(), 1)],
        ..HubOptions::default()
    })
    .await?;
    let tmp = tempfile::TempDir::new()?;
    let connector = "chaos-tags.example.com";
    let t_ms = Timestamp::now().unix_millis();
    let values = awkward_values();
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    let mut bodies = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let instance = format!("i{i:03}");
        bodies.push(encode(&event(connector, v, &instance, t_ms)?));
        if !v.is_empty() {
            want.insert(instance, stored_tag_value(v));
        }
    }
    let empty = values.len() - want.len();
    // The only change a store may see: a backslash line protocol cannot carry becomes the
    // stand-in; every other value reads back exactly as sent.
    let mut stood_in = 0;
    for (i, v) in values.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
        let stored = &want[&format!("i{i:03}")];
        if stored != v {
            stood_in += 1;
            ensure!(
                stored.replace(BACKSLASH_STAND_IN, "\\") == *v,
                "{v:?} is stored as {stored:?}: more than a backslash changed"
            );
        }
    }
    publish(&hub.info, &bodies).await?;
    let mut collector = CollectorProcess::start(
        tmp.path(),
        &hub.info,
        &CollectorOptions {
            sinks: sinks_config(&vm, &influx),
            ..CollectorOptions::default()
        },
    )?;

    let mut seen = (BTreeMap::new(), BTreeMap::new());
    let waited = poll_until(
        "every instance in both stores",
        Duration::from_secs(20),
        Poll::STRICT,
        || {
            collector.ensure_running()?;
            seen = (
                vm_deployments(&vm, connector)?,
                influx_deployments(&influx, connector)?,
            );
            Ok(seen.0.len() >= want.len() && seen.1.len() >= want.len())
        },
    )
    .await;
    let (in_vm, in_influx) = &seen;
    let report = |vm_or_influx: &BTreeMap<String, String>| -> Vec<String> {
        want.iter()
            .filter(|(i, v)| vm_or_influx.get(*i) != Some(*v))
            .map(|(i, v)| {
                let sent = &values[i[1..].parse::<usize>().unwrap_or(0)];
                format!(
                    "{i}: sent {sent:?}, want {v:?}, read {:?}",
                    vm_or_influx.get(i)
                )
            })
            .collect()
    };
    let (vm_bad, influx_bad) = (report(in_vm), report(in_influx));
    let dead = dead_letters(tmp.path())?;
    let sink_dead: u64 = dead
        .iter()
        .filter(|r| r["kind"] == "sink_rejected")
        .map(|r| r["lines"].as_u64().unwrap_or(0))
        .sum();
    let decode_dead = dead.iter().filter(|r| r["type"] == "event").count();
    let stored = want
        .iter()
        .filter(|(i, v)| in_vm.get(*i) == Some(*v) && in_influx.get(*i) == Some(*v))
        .count();
    record(&Row {
        fault: "sinks: awkward tag values (backslashes, separators, unicode)".into(),
        events_sent: values.len() as u64,
        points_stored: stored as u64,
        lost: (values.len() - stored - decode_dead) as u64,
        duplicated: 0,
        counted_dropped: (decode_dead as u64) + sink_dead,
        outcome: format!(
            "{stored}/{} read back equal from InfluxDB 1.6 and VictoriaMetrics, {sink_dead} \
             lines dead-lettered by a sink, {decode_dead} empty value dead-lettered at decode; \
             {stood_in} with an uncarriable backslash stored as U+FF3C",
            want.len()
        ),
    })?;
    collector.stop(Duration::from_secs(15))?;
    hub.shutdown().await;
    ensure!(
        vm_bad.is_empty() && influx_bad.is_empty(),
        "tag values that did not read back as sent (waited: {waited:?}):\n\
         VictoriaMetrics:\n  {}\nInfluxDB 1.6:\n  {}\ndead letters: {dead:?}",
        vm_bad.join("\n  "),
        influx_bad.join("\n  ")
    );
    ensure!(
        in_vm.len() == want.len() && in_influx.len() == want.len(),
        "extra series: VM {in_vm:?}, InfluxDB {in_influx:?}"
    );
    ensure!(sink_dead == 0, "a sink dead-lettered lines: {dead:?}");
    ensure!(
        decode_dead == empty,
        "the empty deployment is one decode dead letter: {dead:?}"
    );
    eprintln!(
        "{} tag values, {stored} read back equal from both stores, in {:?}",
        values.len(),
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sinks_influxdb1_partial_write_dead_letters_only_the_bad_line() -> Result<()> {
    let (vm, influx) = stores()?;
    let hub = TestHub::start_with(HubOptions {
        hubs: vec![("tcpulse".into(), 1)],
        ..HubOptions::default()
    })
    .await?;
    let tmp = tempfile::TempDir::new()?;
    let connector = "chaos-partial.example.com";
    let t_ms = Timestamp::now().unix_millis();
    // `agent_spooled` already exists as a string in this shard: InfluxDB 1.x refuses the
    // one point that carries it as an integer (field type conflict) and stores the others.
    let (status, body) = post(
        &format!("{}/write?db={DB}&precision=ms", influx.url()),
        "text/plain",
        &format!("tc_instance,instance=seed agent_spooled=\"text\" {t_ms}"),
    )?;
    ensure!(status == 204, "seed write: {status} {body}");
    let n = 30;
    let bad = "i17";
    let mut bodies = Vec::new();
    for i in 0..n {
        let instance = format!("i{i:02}");
        let mut ev = event(connector, "blue", &instance, t_ms)?;
        if instance == bad {
            ev.agent = Some(AgentInfo {
                version: "0.1.0".into(),
                spooled: 4,
                dropped: 0,
                publish_failing_seconds: Some(0),
                credential_expires_in_seconds: None,
            });
        }
        bodies.push(encode(&ev));
    }
    publish(&hub.info, &bodies).await?;
    let mut collector = CollectorProcess::start(
        tmp.path(),
        &hub.info,
        &CollectorOptions {
            sinks: sinks_config(&vm, &influx),
            ..CollectorOptions::default()
        },
    )?;
    let mut in_influx = BTreeMap::new();
    let mut in_vm = BTreeMap::new();
    let mut dead = Vec::new();
    // Both sinks are waited for: VictoriaMetrics may index the points a little after the
    // InfluxDB write is acknowledged, and under load that gap is seconds.
    let waited = poll_until(
        "29 instances in InfluxDB, 30 in VictoriaMetrics and a sink dead letter",
        Duration::from_secs(30),
        Poll::STRICT,
        || {
            collector.ensure_running()?;
            in_influx = influx_deployments(&influx, connector)?;
            in_vm = vm_deployments(&vm, connector)?;
            dead = dead_letters(tmp.path())?;
            Ok(in_influx.len() >= n - 1
                && in_vm.len() >= n
                && dead.iter().any(|r| r["kind"] == "sink_rejected"))
        },
    )
    .await;
    let rejected: Vec<&serde_json::Value> = dead
        .iter()
        .filter(|r| r["kind"] == "sink_rejected")
        .collect();
    let dead_lines: u64 = rejected
        .iter()
        .map(|r| r["lines"].as_u64().unwrap_or(0))
        .sum();
    record(&Row {
        fault: "sinks: InfluxDB 1.x 400 partial write (1 bad line of 30)".into(),
        events_sent: n as u64,
        points_stored: in_influx.len() as u64,
        lost: (n as u64).saturating_sub(in_influx.len() as u64 + dead_lines),
        duplicated: 0,
        counted_dropped: dead_lines,
        outcome: format!(
            "InfluxDB kept {}/{n}, {dead_lines} line(s) dead-lettered; VictoriaMetrics kept {}/{n}",
            in_influx.len(),
            in_vm.len()
        ),
    })?;
    collector.stop(Duration::from_secs(15))?;
    hub.shutdown().await;
    waited.with_context(|| format!("InfluxDB {in_influx:?}, dead letters {dead:?}"))?;
    ensure!(
        in_influx.len() == n - 1 && !in_influx.contains_key(bad),
        "InfluxDB holds every instance but {bad}: {in_influx:?}"
    );
    ensure!(
        rejected.len() == 1 && dead_lines == 1,
        "exactly one line dead-lettered: {rejected:?}"
    );
    let body = rejected[0]["body"].as_str().unwrap_or_default();
    ensure!(
        body.contains(&format!("instance={bad},")) && body.contains("agent_spooled=4i"),
        "the dead-lettered line is {bad}'s: {body:?}"
    );
    ensure!(
        rejected[0]["sink"] == "influxdb_v1" && rejected[0]["status"] == 400,
        "{rejected:?}"
    );
    ensure!(in_vm.len() == n, "VictoriaMetrics has all {n}: {in_vm:?}");
    Ok(())
}
