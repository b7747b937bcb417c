//! Every InfluxQL query of the dashboards and the Grafana-managed rules against a real
//! InfluxDB 1.6, filled through the real pipeline.
//!
//! Schema-v1 events (a fleet the test describes, below) → the embedded hub over TLS → the
//! `tcpulse-collector` binary with its InfluxDB v1 sink → InfluxDB 1.6. A second sink
//! (`influxdb_v2`) writes to a real VictoriaMetrics behind a [`FaultProxy`] that refuses
//! exactly `REFUSED_WRITES` connections once, like a store restarting: the collector counts
//! those failed writes and its `tc_pipeline` sink points carry them into InfluxDB.
//!
//! Every expected series and value is computed from the fleet description (what the agents
//! said), never read back from the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use regex::Regex;
use serde_json::Value;
use tcpulse_tests::client::publish;
use tcpulse_tests::collector::{CollectorOptions, CollectorProcess};
use tcpulse_tests::dashboards::fleet::{Conn, Fleet, Inst, STALE_AFTER_S, STEP_S};
use tcpulse_tests::dashboards::influxql::{
    column_sums, has_placeholder, interpolate, measurement, select_columns, series_key,
};
use tcpulse_tests::dashboards::math::eval_math;
use tcpulse_tests::dashboards::thresholds::thresholds;
use tcpulse_tests::dashboards::{dashboards, grafana_rules, panels, s, DATASOURCE_UID};
use tcpulse_tests::faults::FaultProxy;
use tcpulse_tests::hub::{HubOptions, TestHub};
use tcpulse_tests::services::{self, Service};
use tcpulse_tests::wait::{poll_until, OnError, Poll};

const DB: &str = "tcpulse";
/// The collector's name: the `collector` tag of `tc_pipeline`.
const COLLECTOR: &str = "collector-1";
/// Connections the store behind the `influxdb_v2` sink refuses: each is one failed write.
const REFUSED_WRITES: usize = 3;
/// The waits for the pipeline: every 250 ms, an error (the collector exited) fatal.
const EVERY_250_MS: Poll = Poll::every(250, OnError::Fail);

/// What the pipeline did, as the test made it happen.
#[derive(Debug, Clone)]
struct PipelineFacts {
    /// The partition that got one undecodable event and one repeated event.
    faulty_partition: &'static str,
    /// Connections the store behind `influxdb_v2` refused.
    refused_writes: i64,
}

fn influx_query(db: &Service, q: &str) -> Result<Vec<Value>> {
    let url = format!("{}/query?db={DB}&epoch=s", db.url());
    let (status, body) = services::post_form(&url, &[("q", q)])?;
    ensure!(status == 200, "InfluxDB answered {status} to {q}: {body}");
    let v: Value = serde_json::from_str(&body)?;
    let r = &v["results"][0];
    ensure!(
        r.get("error").is_none(),
        "InfluxDB error for {q}: {}",
        r["error"]
    );
    Ok(r["series"].as_array().cloned().unwrap_or_default())
}

/// What a series' newest non-null value in `column` must be, as a range, given the fleet.
fn expected_value(
    f: &Fleet,
    facts: &PipelineFacts,
    meas: &str,
    tags: &Value,
    outer: &str,
    inner: &str,
    fields: &[String],
) -> Option<(f64, f64)> {
    let tag = |k: &str| s(&tags[k]).to_string();
    let inst = || f.instances.iter().find(|i| i.name == tag("instance"));
    let conns = f.connectors();
    let conn = || {
        conns
            .iter()
            .find(|c| c.connector == tag("connector"))
            .cloned()
    };
    let exact = |v: f64| Some((v, v));
    let value = |field: &str| -> Option<f64> {
        match meas {
            "tc_instance" => f.inst_field(inst()?, field),
            "tc_connector" => conn()?.field(field),
            _ => None,
        }
    };
    let faulty = tag("partition") == facts.faulty_partition;
    let v2 = tag("sink") == "influxdb_v2";
    match (meas, outer, inner, fields) {
        // The collector keeps up: lag and checkpoint age are seconds, not minutes.
        ("tc_pipeline", "last", _, [fld])
            if fld == "lag_seconds" || fld == "checkpoint_age_seconds" =>
        {
            Some((0.0, 60.0))
        }
        // A write to a store on loopback takes milliseconds; allow for a slow machine.
        ("tc_pipeline", "mean", _, [fld]) if fld == "sink_latency_seconds" => Some((1e-6, 5.0)),
        // Counters: per-bucket increments, never more than what happened in total.
        ("tc_pipeline", "non_negative_derivative", "last", [fld]) if fld == "events" => Some((
            0.0,
            f.partitions
                .iter()
                .map(|p| f.events_in(p))
                .max()
                .unwrap_or(0) as f64,
        )),
        ("tc_pipeline", "non_negative_difference", "last", [fld])
            if fld == "dead_letters" || fld == "duplicates" =>
        {
            if faulty {
                Some((0.0, 1.0))
            } else {
                exact(0.0)
            }
        }
        ("tc_pipeline", "non_negative_difference", "last", [fld]) if fld == "sink_errors" => {
            if v2 {
                Some((0.0, facts.refused_writes as f64))
            } else {
                exact(0.0)
            }
        }
        ("tc_pipeline", "non_negative_difference", "last", [fld])
            if fld == "sink_dead_lettered" =>
        {
            exact(0.0)
        }
        (_, "last" | "max" | "min" | "mean", _, [field]) => exact(value(field)?),
        // SELECT last(a) - last(b) / mean(a) / mean(b)
        (_, "last", _, [a, b]) => exact(value(a)? - value(b)?),
        (_, "mean", _, [a, b]) => exact(value(a)? / value(b)?),
        (_, "count", _, _) => Some((1.0, f64::INFINITY)),
        // growth per minute between 1-minute buckets; against the newest, partial bucket
        // (a mean over fewer samples) it is smaller, but still positive when growing
        ("tc_instance", "derivative", "mean", [field]) if field == "agent_spooled" => {
            let per_minute = inst()?.spool_growth as f64 * 60.0 / STEP_S as f64;
            Some((per_minute / 3.0, per_minute))
        }
        // reports dropped per `$__interval` bucket (one report each) or per report
        ("tc_instance", "non_negative_difference", "last" | "", [field])
            if field == "agent_dropped" =>
        {
            exact(inst()?.drop_growth as f64)
        }
        // moving average of samples per minute: 6 while reporting (the newest bucket is
        // partial), 0 for an instance silent for more than 5 minutes
        ("tc_instance", "moving_average", "count", _) => {
            if f.silent_secs(inst()?) > 6 * 60 {
                exact(0.0)
            } else {
                Some((4.0, 6.0))
            }
        }
        _ => None,
    }
}

/// The series a query over `window_s` seconds must return, as sorted `tag=value` lists of
/// the tags it groups by.
fn expected_series(
    f: &Fleet,
    q: &str,
    vars: &BTreeMap<String, Vec<String>>,
    window_s: i64,
) -> Result<BTreeSet<String>> {
    let meas = measurement(q);
    let columns = select_columns(q)?;
    let selected =
        |key: &str, v: &str| vars.get(key).is_none_or(|vals| vals.iter().any(|x| x == v));
    let group_by: Vec<String> = Regex::new(r#"GROUP BY (.*?)(?: fill\(|$)"#)?
        .captures(q)
        .map(|c| {
            Regex::new(r#""(\w+)""#)
                .map(|re| re.captures_iter(&c[1]).map(|m| m[1].to_string()).collect())
        })
        .transpose()?
        .unwrap_or_default();
    let spool_filter = q.contains(r#""agent_spooled" > 0"#);
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let mut add = |tags: &[(&str, String)]| {
        let mut kv: Vec<String> = tags
            .iter()
            .filter(|(k, _)| group_by.iter().any(|g| g == k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        kv.sort();
        expected.insert(kv.join(","));
    };
    match meas.as_str() {
        "tc_instance" => {
            for i in &f.instances {
                // Its newest point (the `up=0` one for a silent instance, written once the
                // instance was stale) is in the window.
                let newest_age = f.silent_secs(i) - STALE_AFTER_S.min(f.silent_secs(i));
                let in_window = newest_age < window_s;
                let spool_ok = !spool_filter || i.spool_base > 0 || i.spool_growth > 0;
                let sel = selected("connector", i.connector)
                    && selected("deployment", i.deployment)
                    && selected("region", i.region)
                    && selected("instance", &i.name);
                if in_window && spool_ok && sel {
                    add(&[
                        ("connector", i.connector.into()),
                        ("deployment", i.deployment.into()),
                        ("region", i.region.into()),
                        ("instance", i.name.clone()),
                    ]);
                }
            }
        }
        "tc_connector" => {
            for c in f.connectors() {
                if selected("connector", c.connector)
                    && selected("deployment", c.deployment)
                    && selected("region", c.region)
                {
                    add(&[
                        ("connector", c.connector.into()),
                        ("deployment", c.deployment.into()),
                        ("region", c.region.into()),
                    ]);
                }
            }
        }
        "tc_pipeline" => {
            let sink_fields = columns
                .iter()
                .all(|c| c.3.iter().all(|field| field.starts_with("sink_")));
            if sink_fields {
                // One series per configured sink, whatever its state.
                for sink in ["influxdb_v1", "influxdb_v2"] {
                    add(&[("collector", COLLECTOR.into()), ("sink", sink.into())]);
                }
            } else {
                // Every partition of the hub; never the sink series (they lack the field).
                for p in &f.partitions {
                    add(&[
                        ("collector", COLLECTOR.into()),
                        ("partition", p.to_string()),
                    ]);
                }
            }
        }
        other => bail!("unexpected measurement {other:?} in {q}"),
    }
    Ok(expected)
}

/// Runs one query and checks its series and values against the fleet.
#[allow(clippy::too_many_arguments)]
fn check_query(
    db: &Service,
    f: &Fleet,
    facts: &PipelineFacts,
    what: &str,
    raw: &str,
    vars: &BTreeMap<String, Vec<String>>,
    time_filter: &str,
    window_s: i64,
) -> Result<Vec<Value>> {
    let q = interpolate(raw, vars, time_filter, STEP_S);
    ensure!(
        !has_placeholder(&q),
        "{what}: unsubstituted macro or variable in {q}"
    );
    let series = influx_query(db, &q).with_context(|| what.to_string())?;
    ensure!(!series.is_empty(), "{what}: no data\nquery: {q}");
    let meas = measurement(&q);
    let columns = select_columns(&q)?;
    let expected = expected_series(f, &q, vars, window_s)?;
    let got: BTreeSet<String> = series.iter().map(|s| series_key(&s["tags"])).collect();
    ensure!(
        got == expected,
        "{what}: series {got:?}, expected {expected:?}\nquery: {q}"
    );

    for sr in &series {
        let cols: Vec<&str> = sr["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let rows = sr["values"].as_array().cloned().unwrap_or_default();
        ensure!(!rows.is_empty(), "{what}: series without rows");
        for (ci, col) in cols.iter().enumerate().skip(1) {
            let newest = rows.iter().rev().find_map(|r| r[ci].as_f64());
            let Some(newest) = newest else {
                bail!("{what}: column {col} has no value in {}", sr["tags"]);
            };
            ensure!(newest.is_finite(), "{what}: {col} = {newest}");
            let (_, outer, inner, fields) =
                columns.iter().find(|c| c.0 == *col).ok_or_else(|| {
                    anyhow!("{what}: unexpected column {col}; select list {columns:?}")
                })?;
            let (lo, hi) = expected_value(f, facts, &meas, &sr["tags"], outer, inner, fields)
                .ok_or_else(|| {
                    anyhow!(
                        "{what}: no expectation for {col} = {outer}({inner} {fields:?}) on {}",
                        sr["tags"]
                    )
                })?;
            let tol = 1e-6 * lo.abs().max(1.0);
            ensure!(
                newest >= lo - tol && newest <= hi + tol,
                "{what}: {col} of {} is {newest}, expected {lo}..={hi}\nquery: {q}",
                sr["tags"]
            );
        }
    }
    Ok(series)
}

/// `SELECT last(<field>) FROM tc_pipeline GROUP BY <tag>`: tag value → value.
fn pipeline_last(db: &Service, field: &str, tag: &str) -> Result<BTreeMap<String, f64>> {
    let q = format!(
        r#"SELECT last("{field}") FROM "tc_pipeline" WHERE "collector" = '{COLLECTOR}' GROUP BY "{tag}""#
    );
    Ok(influx_query(db, &q)?
        .iter()
        .filter_map(|sr| {
            let v = sr["values"][0][1].as_f64()?;
            Some((s(&sr["tags"][tag]).to_string(), v))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_influxql_queries_run_on_influxdb16() -> Result<()> {
    let started = Instant::now();
    let db = services::influxdb()?;
    let (status, body) = services::post_form(
        &format!("{}/query", db.url()),
        &[("q", &format!("CREATE DATABASE {DB}"))],
    )?;
    ensure!(status == 200, "CREATE DATABASE: {status} {body}");
    let vm = services::victoria_metrics()?;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", vm.port()).parse()?)?;
    let hub = TestHub::start_with(HubOptions {
        hubs: vec![("tcpulse".into(), 2)],
        plain: false,
        ..HubOptions::default()
    })
    .await?;
    let info = hub.info.clone();
    let boot = started.elapsed();

    // 1. Fifteen minutes of history, published before the collector starts (so its
    //    event-time windows close in order), then the collector.
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let mut f = Fleet::new(now_ms);
    publish(&info, &f.reports(0, f.steps)?).await?;
    let tmp = tempfile::TempDir::new()?;
    let mut collector = CollectorProcess::start(
        tmp.path(),
        &info,
        &CollectorOptions {
            name: COLLECTOR.into(),
            pipeline_interval: Some("2s".into()),
            rollup_interval: Some(format!("{STEP_S}s")),
            stale_after: Some(format!("{STALE_AFTER_S}s")),
            lateness: Some(format!("{STEP_S}s")),
            // The wall clock must not close windows past the published reports while the
            // test runs (it would declare every instance down).
            idle_after: Some("10m".into()),
            sinks: format!(
                "[sinks.influxdb_v1]\nurl = {:?}\ndatabase = \"{DB}\"\n[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n",
                db.url(),
                proxy.url()
            ),
            ..CollectorOptions::default()
        },
    )?;
    let history_events: BTreeMap<String, f64> = f
        .partitions
        .iter()
        .map(|p| (p.to_string(), f.events_in(p) as f64))
        .collect();
    poll_until(
        "the history in InfluxDB (events counted per partition, sink points written)",
        Duration::from_secs(60),
        EVERY_250_MS,
        || {
            collector.ensure_running()?;
            Ok(pipeline_last(&db, "events", "partition")? == history_events
                && pipeline_last(&db, "sink_errors", "sink")?.len() == 2)
        },
    )
    .await
    .with_context(|| collector.log())?;

    // 2. The store behind `influxdb_v2` restarts: it refuses the next connections. Then
    //    the agents go on reporting, one sends garbage and one report arrives twice. All
    //    of it after the `$__interval` bucket of the collector's first points, so the
    //    counter panels see each increment, and after the next report time.
    let step_ms = STEP_S * 1000;
    let settled_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let resume_ms = ((settled_ms / step_ms + 1) * step_ms).max(f.t_ms(f.steps + 1)) + 200;
    let wait_ms = resume_ms - settled_ms;
    tokio::time::sleep(Duration::from_millis(wait_ms.max(0) as u64)).await;
    proxy.refuse_next(REFUSED_WRITES);
    let facts = PipelineFacts {
        faulty_partition: "1",
        refused_writes: REFUSED_WRITES as i64,
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let first_new = f.steps + 1;
    while f.t_ms(f.steps + 1) <= now_ms {
        f.steps += 1;
    }
    let mut live = f.reports(first_new, f.steps)?;
    let g0 = f
        .instances
        .iter()
        .find(|i| i.partition == facts.faulty_partition && f.silent_secs(i) == 0)
        .ok_or_else(|| anyhow!("no reporting instance on the faulty partition"))?;
    live.push((
        facts.faulty_partition,
        b"{\"schema\": \"tcpulse.status.v1\", \"connector\"".to_vec(),
    ));
    live.push((facts.faulty_partition, f.event(g0, f.steps)?));
    publish(&info, &live).await?;
    let all_events: BTreeMap<String, f64> = f
        .partitions
        .iter()
        .map(|p| (p.to_string(), f.events_in(p) as f64))
        .collect();
    let faulty_only = |v: f64| -> BTreeMap<String, f64> {
        f.partitions
            .iter()
            .map(|p| {
                (
                    p.to_string(),
                    if *p == facts.faulty_partition { v } else { 0.0 },
                )
            })
            .collect()
    };
    let want_sink_errors: BTreeMap<String, f64> = [
        ("influxdb_v1".to_string(), 0.0),
        ("influxdb_v2".to_string(), REFUSED_WRITES as f64),
    ]
    .into();
    let newest_rollup_ms = f.t_ms(f.steps) - 15_000;
    poll_until(
        "the live reports, the dead letter, the duplicate and the refused writes in InfluxDB",
        Duration::from_secs(60),
        EVERY_250_MS,
        || {
            collector.ensure_running()?;
            let rollups = influx_query(
                &db,
                &format!(r#"SELECT count("call_count") FROM "tc_connector" WHERE time >= {newest_rollup_ms}ms GROUP BY "connector""#),
            )?;
            Ok(pipeline_last(&db, "events", "partition")? == all_events
                && pipeline_last(&db, "dead_letters", "partition")? == faulty_only(1.0)
                && pipeline_last(&db, "duplicates", "partition")? == faulty_only(1.0)
                && pipeline_last(&db, "sink_errors", "sink")? == want_sink_errors
                && rollups.len() == 2)
        },
    )
    .await
    .with_context(|| format!("refused {} connections; collector log:\n{}", proxy.refused(), collector.log()))?;
    ensure!(
        proxy.refused() == REFUSED_WRITES && proxy.pending_refusals() == 0,
        "the proxy refused {} connections",
        proxy.refused()
    );
    // Two more sink points, so the newest buckets hold the settled counters.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let metrics = collector.metrics()?;
    let v2_errors: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tcpulse_collector_sink_errors_total{sink=\"influxdb_v2\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    ensure!(
        v2_errors == REFUSED_WRITES as f64,
        "/metrics counts {v2_errors} influxdb_v2 errors, the proxy refused {REFUSED_WRITES}:\n{metrics}"
    );
    let pipeline_ready = started.elapsed();

    // Grafana's absolute time filter for "last 1 hour" (it rounds to ms).
    let to_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 + 1_000;
    let from_ms = to_ms - 3600 * 1000;
    let time_filter = format!("time >= {from_ms}ms and time <= {to_ms}ms");
    let mut queries = 0;
    let conns = f.connectors();

    for (file, d) in dashboards()? {
        // Template variables, in order, each with "All" selected (Grafana sends every value).
        let mut vars: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            // The data source variable queries no data (issue 13).
            if s(&v["type"]) == "datasource" {
                continue;
            }
            let name = s(&v["name"]).to_string();
            let q = interpolate(s(&v["query"]), &vars, &time_filter, STEP_S);
            ensure!(
                !has_placeholder(&q),
                "{file} variable {name}: unsubstituted {q}"
            );
            let series = influx_query(&db, &q)?;
            let values: BTreeSet<String> = series
                .iter()
                .flat_map(|sr| sr["values"].as_array().cloned().unwrap_or_default())
                .map(|row| s(&row[1]).to_string())
                .collect();
            let expected: BTreeSet<String> = match name.as_str() {
                "connector" => conns.iter().map(|c| c.connector.to_string()).collect(),
                "deployment" => conns.iter().map(|c| c.deployment.to_string()).collect(),
                "region" => conns.iter().map(|c| c.region.to_string()).collect(),
                "instance" => f.instances.iter().map(|i| i.name.clone()).collect(),
                "collector" => [COLLECTOR.to_string()].into(),
                other => bail!("{file}: unexpected variable {other}"),
            };
            ensure!(
                values == expected,
                "{file} variable {name}: {values:?}, expected {expected:?}\nquery: {q}"
            );
            queries += 1;
            vars.insert(name, values.into_iter().collect());
        }

        for panel in panels(&d) {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let what = format!(
                    "{file} panel {} ({}) ref {}",
                    panel["id"],
                    s(&panel["title"]),
                    s(&t["refId"])
                );
                let series = check_query(
                    &db,
                    &f,
                    &facts,
                    &what,
                    s(&t["query"]),
                    &vars,
                    &time_filter,
                    3600,
                )?;
                queries += 1;
                // Counter panels: the increments over the range add up to what happened
                // after the collector's first point (the dead letter, the duplicate and the
                // refused writes all came later).
                let q = s(&t["query"]);
                if q.contains(r#"non_negative_difference(last("dead_letters"))"#)
                    || q.contains(r#"non_negative_difference(last("duplicates"))"#)
                {
                    let sums = column_sums(&series, "non_negative_difference");
                    let want: BTreeMap<String, f64> = faulty_only(1.0)
                        .into_iter()
                        .map(|(p, v)| (format!("collector={COLLECTOR},partition={p}"), v))
                        .collect();
                    ensure!(
                        sums == want,
                        "{what}: increments {sums:?}, expected {want:?}"
                    );
                }
                if q.contains(r#"non_negative_difference(last("sink_errors"))"#) {
                    let key = |sink: &str| format!("collector={COLLECTOR},sink={sink}");
                    let errors = column_sums(&series, "errors");
                    let want: BTreeMap<String, f64> = [
                        (key("influxdb_v1"), 0.0),
                        (key("influxdb_v2"), facts.refused_writes as f64),
                    ]
                    .into();
                    ensure!(
                        errors == want,
                        "{what}: errors {errors:?}, expected {want:?}"
                    );
                    let dead = column_sums(&series, "dead-lettered");
                    ensure!(
                        dead.values().all(|v| *v == 0.0) && dead.len() == 2,
                        "{what}: dead-lettered {dead:?}"
                    );
                }
                // Reports dropped: the increments over the range add up to every report
                // the agent lost (its counter was 0 at the first report).
                if q.contains(r#"non_negative_difference(last("agent_dropped"))"#) {
                    let sums = column_sums(&series, "non_negative_difference");
                    let want: BTreeMap<String, f64> = f
                        .instances
                        .iter()
                        .filter(|i| vars.get("instance").is_none_or(|v| v.contains(&i.name)))
                        .map(|i| {
                            let lost = (i.drop_growth * f.last_k(i)) as f64;
                            (format!("instance={}", i.name), lost)
                        })
                        .collect();
                    ensure!(sums == want, "{what}: dropped {sums:?}, expected {want:?}");
                }
                // A repeated panel runs once per value with that single value selected.
                if let Some(rep) = panel["repeat"].as_str() {
                    for v in vars.get(rep).cloned().unwrap_or_default() {
                        let mut single = vars.clone();
                        single.insert(rep.to_string(), vec![v.clone()]);
                        check_query(
                            &db,
                            &f,
                            &facts,
                            &format!("{what} [{rep}={v}]"),
                            s(&t["query"]),
                            &single,
                            &time_filter,
                            3600,
                        )?;
                        queries += 1;
                    }
                }
            }
        }
    }

    // Grafana-managed rules: run each query over its relative range, reduce, evaluate the
    // condition per series, and compare the firing series with what the fleet should fire.
    let th = thresholds()?;
    let inst_key = |i: &Inst| {
        format!(
            "connector={},deployment={},instance={},region={}",
            i.connector, i.deployment, i.name, i.region
        )
    };
    let conn_key = |c: &Conn| {
        format!(
            "connector={},deployment={},region={}",
            c.connector, c.deployment, c.region
        )
    };
    let reporting = || f.instances.iter().filter(|i| f.silent_secs(i) == 0);
    let last = |i: &Inst, field: &str| f.inst_field(i, field).unwrap_or(f64::NAN);
    let insts = |pred: &dyn Fn(&Inst) -> bool, pool: Vec<&Inst>| -> BTreeSet<String> {
        pool.into_iter().filter(|i| pred(i)).map(inst_key).collect()
    };
    let cs = |pred: &dyn Fn(&Conn) -> bool| -> BTreeSet<String> {
        conns.iter().filter(|c| pred(c)).map(conn_key).collect()
    };
    let (max_calls, planned) = (
        th.value("MAX_CALLS_PER_INSTANCE")?,
        th.value("PLANNED_CALLS_PER_INSTANCE")?,
    );
    let (high, critical) = (
        th.value("UTILIZATION_HIGH")?,
        th.value("UTILIZATION_CRITICAL")?,
    );
    let (cert_warn, cert_crit) = (
        th.value("CERT_WARNING_DAYS")?,
        th.value("CERT_CRITICAL_DAYS")?,
    );
    let util = |c: &Conn| c.field("utilization").unwrap_or(f64::NAN);
    let all: Vec<&Inst> = f.instances.iter().collect();
    let expect_firing: BTreeMap<&str, BTreeSet<String>> = [
        (
            "TeamsConnectorInstanceFull",
            insts(
                &|i| last(i, "call_count") >= max_calls,
                reporting().collect(),
            ),
        ),
        (
            "TeamsConnectorInstanceAtPlannedCapacity",
            insts(&|i| last(i, "call_count") >= planned, reporting().collect()),
        ),
        ("TeamsConnectorCapacityHigh", cs(&|c| util(c) >= high)),
        (
            "TeamsConnectorCapacityCritical",
            cs(&|c| util(c) >= critical),
        ),
        (
            "TeamsConnectorScaleUpNeeded",
            cs(&|c| c.needed() > c.online),
        ),
        (
            "TeamsConnectorInstanceDown",
            insts(&|i| f.silent_secs(i) > 0, all.clone()),
        ),
        (
            "TeamsConnectorServiceDown",
            insts(&|i| last(i, "service_up") == 0.0, reporting().collect()),
        ),
        (
            "TeamsConnectorCertificateExpiring",
            insts(
                &|i| i.cert_days < cert_warn && i.cert_days >= cert_crit,
                all.clone(),
            ),
        ),
        (
            "TeamsConnectorCertificateExpiringCritical",
            insts(&|i| i.cert_days < cert_crit, all.clone()),
        ),
        (
            "TeamsConnectorAgentBacklog",
            insts(&|i| i.spool_growth > 0, reporting().collect()),
        ),
        (
            "TeamsConnectorAgentReportsDropped",
            insts(&|i| i.drop_growth > 0, reporting().collect()),
        ),
        // The collector keeps up with the hub: no partition is minutes behind.
        ("TcpulsePipelineLagHigh", BTreeSet::new()),
        ("TcpulseTelemetryMissing", BTreeSet::new()),
    ]
    .into_iter()
    .collect();
    // The fleet exercises every rule that can fire.
    for (rule, firing) in &expect_firing {
        if !rule.starts_with("Tcpulse") {
            ensure!(!firing.is_empty(), "the fleet never fires {rule}");
        }
    }
    let no_vars = BTreeMap::new();
    let math_ref = Regex::new(r"\$([A-Za-z]\w*)")?;
    for rule in grafana_rules()? {
        let title = s(&rule["title"]).to_string();
        // refId → series → reduced/evaluated value; and refId → series → raw column.
        let mut results: HashMap<String, BTreeMap<String, f64>> = HashMap::new();
        let mut raw: HashMap<String, BTreeMap<String, Vec<f64>>> = HashMap::new();
        for d in rule["data"].as_array().into_iter().flatten() {
            let refid = s(&d["refId"]).to_string();
            let m = &d["model"];
            let out: BTreeMap<String, f64> = match s(&d["datasourceUid"]) {
                DATASOURCE_UID => {
                    let from = d["relativeTimeRange"]["from"].as_i64().unwrap_or(0);
                    let tf = format!("time >= now() - {from}s and time <= now()");
                    let what = format!("Grafana rule {title} ref {refid}");
                    let series =
                        check_query(&db, &f, &facts, &what, s(&m["query"]), &no_vars, &tf, from);
                    // TelemetryMissing's `count` must find the rollups; others may be empty
                    // only where nothing is expected (none here).
                    let series = series?;
                    queries += 1;
                    let mut col = BTreeMap::new();
                    for sr in series {
                        let vals: Vec<f64> = sr["values"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| r[1].as_f64())
                            .collect();
                        col.insert(series_key(&sr["tags"]), vals);
                    }
                    // Keep the whole column (oldest first) for `reduce`.
                    raw.insert(refid.clone(), col);
                    BTreeMap::new()
                }
                "__expr__" => match s(&m["type"]) {
                    "reduce" => {
                        let src = raw.get(s(&m["expression"])).cloned().unwrap_or_default();
                        src.into_iter()
                            .filter_map(|(k, v)| {
                                let v = match s(&m["reducer"]) {
                                    "last" => v.last().copied(),
                                    "mean" if !v.is_empty() => {
                                        Some(v.iter().sum::<f64>() / v.len() as f64)
                                    }
                                    "sum" => Some(v.iter().sum()),
                                    "max" => v.iter().copied().reduce(f64::max),
                                    "min" => v.iter().copied().reduce(f64::min),
                                    _ => None,
                                }?;
                                Some((k, v))
                            })
                            .collect()
                    }
                    "threshold" => {
                        let src = results
                            .get(s(&m["expression"]))
                            .cloned()
                            .unwrap_or_default();
                        let ev = &m["conditions"][0]["evaluator"];
                        let p = ev["params"][0].as_f64().unwrap_or(f64::NAN);
                        src.into_iter()
                            .map(|(k, v)| {
                                let fire = match s(&ev["type"]) {
                                    "gt" => v > p,
                                    "lt" => v < p,
                                    _ => false,
                                };
                                (k, if fire { 1.0 } else { 0.0 })
                            })
                            .collect()
                    }
                    "math" => {
                        let expr = s(&m["expression"]);
                        let refs: Vec<String> = math_ref
                            .captures_iter(expr)
                            .map(|c| c[1].to_string())
                            .collect();
                        let keys: BTreeSet<String> = refs
                            .iter()
                            .flat_map(|r| {
                                results
                                    .get(r)
                                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
                                    .unwrap_or_default()
                            })
                            .collect();
                        let mut out = BTreeMap::new();
                        for k in keys {
                            let env: Option<HashMap<String, f64>> = refs
                                .iter()
                                .map(|r| {
                                    results
                                        .get(r)
                                        .and_then(|m| m.get(&k))
                                        .map(|v| (r.clone(), *v))
                                })
                                .collect();
                            if let Some(env) = env {
                                out.insert(k, eval_math(expr, &env)?);
                            }
                        }
                        out
                    }
                    other => bail!("{title}: expression type {other}"),
                },
                other => bail!("{title}: datasource {other}"),
            };
            results.insert(refid, out);
        }
        let cond = results
            .get(s(&rule["condition"]))
            .cloned()
            .unwrap_or_default();
        let firing: BTreeSet<String> = cond
            .into_iter()
            .filter(|(_, v)| *v != 0.0)
            .map(|(k, _)| k)
            .collect();
        let want = expect_firing
            .get(title.as_str())
            .ok_or_else(|| anyhow!("no expectation for rule {title}"))?;
        ensure!(
            &firing == want,
            "Grafana rule {title}: fires for {firing:?}, expected {want:?}"
        );
    }
    collector.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    eprintln!(
        "InfluxDB 1.6 filled by the collector: services ready in {boot:?}, pipeline settled after {pipeline_ready:?}; {queries} queries checked; {} events, {} refused writes; total {:?}",
        all_events.values().sum::<f64>(),
        proxy.refused(),
        started.elapsed()
    );
    drop(db);
    Ok(())
}
