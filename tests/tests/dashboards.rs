//! Tests for `dashboards/`: Prometheus-format rules (promtool), the Grafana JSON and
//! provisioning files (offline), the single source of thresholds, every InfluxQL query
//! against a real InfluxDB 1.6, and vmalert → Alertmanager firing and resolving.
//!
//! The InfluxDB test fills InfluxDB 1.6 through the real pipeline: schema-v1 events the
//! test publishes to the embedded hub (TLS) → the `tcpulse-collector` binary → its InfluxDB
//! v1 sink; expectations come from the events, never from the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use regex::Regex;
use serde_json::{json, Value};
use tcpulse_eventhub::client::{
    BatchOptions, ClientConfig, ClientOptions, EventData, Producer, TryAddError,
};
use tcpulse_tests::collector::{CollectorOptions, CollectorProcess};
use tcpulse_tests::faults::FaultProxy;
use tcpulse_tests::hub::{HubInfo, HubOptions, Mode, Policy, TestHub};
use tcpulse_tests::services::{self, Service};

const DATASOURCE_UID: &str = "tcpulse-influxdb";
/// The schemaVersion Grafana 10.4 writes; newer ones are not read by 10.4.
const SCHEMA_VERSION: u64 = 39;

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn read_yaml(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_norway::from_str(&text).with_context(|| format!("parse YAML {}", path.display()))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse JSON {}", path.display()))
}

fn files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(ext) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// (file name, dashboard JSON) for every dashboard.
fn dashboards() -> Result<Vec<(String, Value)>> {
    let dir = dashboards_dir().join("grafana/dashboards");
    let list = files(&dir, "json")?;
    ensure!(
        list.len() >= 3,
        "expected the three dashboards in {}",
        dir.display()
    );
    list.iter()
        .map(|p| {
            Ok((
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                read_json(p)?,
            ))
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for nested in p["panels"].as_array().into_iter().flatten() {
            out.push(nested);
        }
    }
    out
}

fn grafana_rules() -> Result<Vec<Value>> {
    let doc =
        read_yaml(&dashboards_dir().join("grafana/provisioning/alerting/tcpulse-rules.yaml"))?;
    let mut out = Vec::new();
    for g in doc["groups"]
        .as_array()
        .ok_or_else(|| anyhow!("no groups"))?
    {
        for r in g["rules"]
            .as_array()
            .ok_or_else(|| anyhow!("group without rules"))?
        {
            out.push(r.clone());
        }
    }
    Ok(out)
}

fn prometheus_rules() -> Result<Vec<Value>> {
    let doc = read_yaml(&dashboards_dir().join("prometheus/tcpulse-rules.yml"))?;
    let mut out = Vec::new();
    for g in doc["groups"]
        .as_array()
        .ok_or_else(|| anyhow!("no groups"))?
    {
        for r in g["rules"]
            .as_array()
            .ok_or_else(|| anyhow!("group without rules"))?
        {
            out.push(r.clone());
        }
    }
    Ok(out)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

// ---------------------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------------------

#[test]
fn dashboards_rules_promtool_unit_tests() -> Result<()> {
    let dir = dashboards_dir().join("prometheus");
    let check = services::promtool(&["check", "rules", "tcpulse-rules.yml"], &dir)?;
    let out = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    ensure!(
        check.status.success(),
        "promtool check rules failed:\n{out}"
    );
    let count = prometheus_rules()?.len();
    ensure!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "unexpected promtool output:\n{out}"
    );

    // Every alert has tests that expect it to fire and expect it not to.
    let tests = files(&dir.join("tests"), "yml")?;
    ensure!(
        !tests.is_empty(),
        "no promtool tests in {}",
        dir.join("tests").display()
    );
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut silent: BTreeSet<String> = BTreeSet::new();
    for t in &tests {
        let doc = read_yaml(t)?;
        for group in doc["tests"].as_array().into_iter().flatten() {
            for case in group["alert_rule_test"].as_array().into_iter().flatten() {
                let name = s(&case["alertname"]).to_string();
                if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                    fires.insert(name);
                } else {
                    silent.insert(name);
                }
            }
        }
    }
    for rule in prometheus_rules()? {
        let name = s(&rule["alert"]);
        ensure!(
            fires.contains(name),
            "no promtool test expects {name} to fire"
        );
        ensure!(
            silent.contains(name),
            "no promtool test expects {name} to stay silent"
        );
    }

    let mut args = vec!["test".to_string(), "rules".to_string()];
    args.extend(tests.iter().map(|p| {
        format!(
            "tests/{}",
            p.file_name().unwrap_or_default().to_string_lossy()
        )
    }));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let run = services::promtool(&args, &dir)?;
    let out =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    ensure!(run.status.success(), "promtool test rules failed:\n{out}");
    ensure!(
        !out.contains("FAILED"),
        "promtool reported a failure:\n{out}"
    );
    eprintln!(
        "promtool test rules: {} files in {:?}",
        tests.len(),
        started.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// offline checks
// ---------------------------------------------------------------------------------------

/// Fails if `v` holds anything that looks like a host: a URL, an IP address, `localhost`.
/// Values that are environment interpolations (`${VAR}`) are fine.
fn assert_no_hostnames(what: &str, v: &Value) -> Result<()> {
    let url = Regex::new(r"(?i)\b[a-z][a-z0-9+.-]*://")?;
    let ip = Regex::new(r"\b\d{1,3}(\.\d{1,3}){3}\b")?;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(text) => {
                let bad = (url.is_match(text) && !text.trim_start().starts_with("${"))
                    || ip.is_match(text)
                    || text.to_ascii_lowercase().contains("localhost");
                ensure!(!bad, "{what}: hard-coded host in {text:?}");
            }
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    Ok(())
}

/// Every `datasource` reference in a dashboard must be the provisioned InfluxDB uid (or
/// Grafana's built-in annotation source).
fn assert_datasources(what: &str, v: &Value, provisioned: &str) -> Result<usize> {
    let mut count = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => {
                if let Some(ds) = o.get("datasource") {
                    match (s(&ds["type"]), s(&ds["uid"])) {
                        // `${datasource}`: the template variable, which selects the
                        // provisioned source (checked in dashboards_schema.rs, issue 13).
                        ("influxdb", uid) => {
                            ensure!(uid == provisioned || uid == "${datasource}", "{what}: datasource uid {uid:?} is not the provisioned {provisioned:?}");
                            count += 1;
                        }
                        ("grafana", "-- Grafana --") if o.get("builtIn").is_some() => {}
                        _ => bail!(
                            "{what}: datasource reference {ds} does not resolve to {provisioned:?}"
                        ),
                    }
                }
                stack.extend(o.values());
            }
            _ => {}
        }
    }
    Ok(count)
}

#[test]
fn dashboards_json_offline_checks() -> Result<()> {
    let prov = dashboards_dir().join("grafana/provisioning");
    let uid_re = Regex::new(r"^[A-Za-z0-9_-]{1,40}$")?;
    let template_var = Regex::new(r"\$(connector|deployment|region|instance|collector)\b")?;
    let math_ref = Regex::new(r"\$([A-Za-z]\w*)")?;

    // Data source.
    let ds_doc = read_yaml(&prov.join("datasources/influxdb.yaml"))?;
    assert_no_hostnames("datasources/influxdb.yaml", &ds_doc)?;
    ensure!(ds_doc["apiVersion"] == 1);
    let ds = &ds_doc["datasources"][0];
    ensure!(
        s(&ds["uid"]) == DATASOURCE_UID && s(&ds["type"]) == "influxdb",
        "datasource: {ds}"
    );
    ensure!(s(&ds["access"]) == "proxy");
    ensure!(
        s(&ds["jsonData"]["version"]) == "InfluxQL",
        "datasource must be in InfluxQL mode"
    );
    ensure!(
        s(&ds["jsonData"]["dbName"]).starts_with('$'),
        "dbName must come from the environment"
    );
    ensure!(
        s(&ds["url"]).starts_with('$'),
        "url must come from the environment"
    );
    ensure!(s(&ds["jsonData"]["httpHeaderName1"]) == "Authorization");
    ensure!(
        Regex::new(r"^Token \$\{?INFLUX_TOKEN\}?$")?
            .is_match(s(&ds["secureJsonData"]["httpHeaderValue1"])),
        "token header must be `Token $INFLUX_TOKEN`"
    );
    ensure!(
        ds.get("database").is_none(),
        "top-level `database` is deprecated; use jsonData.dbName"
    );

    // Dashboard provider.
    let provider = read_yaml(&prov.join("dashboards/tcpulse.yaml"))?;
    assert_no_hostnames("dashboards/tcpulse.yaml", &provider)?;
    let p = &provider["providers"][0];
    ensure!(
        s(&p["type"]) == "file" && !s(&p["options"]["path"]).is_empty(),
        "provider: {p}"
    );

    // Dashboards.
    let mut dash_uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut panel_index: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for (file, d) in dashboards()? {
        assert_no_hostnames(&file, &d)?;
        let uid = s(&d["uid"]).to_string();
        ensure!(
            uid_re.is_match(&uid) && uid.len() >= 8,
            "{file}: bad uid {uid:?}"
        );
        ensure!(
            dash_uids.insert(uid.clone()),
            "{file}: duplicate dashboard uid {uid}"
        );
        ensure!(
            titles.insert(s(&d["title"]).to_string()),
            "{file}: duplicate title"
        );
        ensure!(
            d["id"].is_null(),
            "{file}: `id` must be null or absent in a provisioned dashboard"
        );
        ensure!(
            d["schemaVersion"].as_u64() == Some(SCHEMA_VERSION),
            "{file}: schemaVersion must be {SCHEMA_VERSION} (Grafana 10.4 floor; newer Grafana migrates up)"
        );
        let refs = assert_datasources(&file, &d, DATASOURCE_UID)?;
        ensure!(refs > 0, "{file}: no datasource references");

        let vars: BTreeSet<&str> = d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| s(&v["name"]))
            .collect();
        for needed in ["connector", "deployment", "region", "instance"] {
            ensure!(
                vars.contains(needed),
                "{file}: template variable {needed} missing"
            );
        }

        let mut ids = BTreeSet::new();
        let mut rects: Vec<(u64, i64, i64, i64, i64)> = Vec::new();
        for panel in panels(&d) {
            let id = panel["id"]
                .as_u64()
                .ok_or_else(|| anyhow!("{file}: panel without numeric id: {}", panel["title"]))?;
            ensure!(ids.insert(id), "{file}: duplicate panel id {id}");
            let g = &panel["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_i64(),
                g["y"].as_i64(),
                g["w"].as_i64(),
                g["h"].as_i64(),
            );
            let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else {
                bail!("{file}: panel {id} has an incomplete gridPos {g}");
            };
            ensure!(
                (1..=24).contains(&w) && (0..24).contains(&x) && x + w <= 24,
                "{file}: panel {id} outside 24 columns: {g}"
            );
            ensure!(h >= 1 && y >= 0, "{file}: panel {id} bad height/y: {g}");
            // A horizontally repeated panel's clones fill the rest of its row.
            let w = if panel.get("repeat").is_some() && s(&panel["repeatDirection"]) != "v" {
                24 - x
            } else {
                w
            };
            for &(other, ox, oy, ow, oh) in &rects {
                let overlap = x < ox + ow && ox < x + w && y < oy + oh && oy < y + h;
                ensure!(!overlap, "{file}: panels {id} and {other} overlap");
            }
            rects.push((id, x, y, w, h));
            if s(&panel["type"]) != "row" {
                ensure!(
                    !s(&panel["title"]).is_empty(),
                    "{file}: panel {id} without title"
                );
                ensure!(
                    !s(&panel["description"]).is_empty(),
                    "{file}: panel {id} without description"
                );
                let targets = panel["targets"].as_array().map(Vec::len).unwrap_or(0);
                ensure!(targets > 0, "{file}: panel {id} has no queries");
                for t in panel["targets"].as_array().into_iter().flatten() {
                    ensure!(
                        t["rawQuery"] == true && !s(&t["query"]).is_empty(),
                        "{file}: panel {id}: raw InfluxQL expected"
                    );
                }
            }
        }
        panel_index.insert(uid, ids);
    }

    // Alert rules.
    let alerting = read_yaml(&prov.join("alerting/tcpulse-rules.yaml"))?;
    assert_no_hostnames("alerting/tcpulse-rules.yaml", &alerting)?;
    let mut rule_uids = BTreeSet::new();
    let mut rule_titles = BTreeSet::new();
    for g in alerting["groups"]
        .as_array()
        .ok_or_else(|| anyhow!("no groups"))?
    {
        for key in ["name", "folder", "interval"] {
            ensure!(!s(&g[key]).is_empty(), "rule group without {key}");
        }
        for r in g["rules"].as_array().ok_or_else(|| anyhow!("no rules"))? {
            let uid = s(&r["uid"]);
            ensure!(
                uid_re.is_match(uid),
                "rule uid {uid:?} must be <= 40 chars of [A-Za-z0-9_-]"
            );
            ensure!(
                rule_uids.insert(uid.to_string()),
                "duplicate rule uid {uid}"
            );
            ensure!(
                rule_titles.insert((s(&g["folder"]).to_string(), s(&r["title"]).to_string())),
                "duplicate title in folder: {uid}"
            );
            ensure!(
                matches!(s(&r["labels"]["severity"]), "critical" | "warning" | "info"),
                "{uid}: severity"
            );
            ensure!(
                !s(&r["annotations"]["summary"]).is_empty()
                    && !s(&r["annotations"]["description"]).is_empty(),
                "{uid}: summary/description"
            );
            ensure!(!s(&r["for"]).is_empty(), "{uid}: for");
            ensure!(
                matches!(s(&r["noDataState"]), "NoData" | "Alerting" | "OK"),
                "{uid}: noDataState"
            );
            ensure!(
                matches!(s(&r["execErrState"]), "Error" | "Alerting" | "OK"),
                "{uid}: execErrState"
            );
            let refs: BTreeSet<&str> = r["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| s(&d["refId"]))
                .collect();
            ensure!(
                refs.contains(s(&r["condition"])),
                "{uid}: condition refers to a missing refId"
            );
            for d in r["data"].as_array().into_iter().flatten() {
                match s(&d["datasourceUid"]) {
                    DATASOURCE_UID => {
                        let q = s(&d["model"]["query"]);
                        ensure!(
                            !q.is_empty() && d["relativeTimeRange"]["from"].as_u64().is_some(),
                            "{uid}: query/range"
                        );
                        ensure!(
                            !template_var.is_match(q),
                            "{uid}: template variables are not allowed in alert queries"
                        );
                    }
                    "__expr__" => {
                        let m = &d["model"];
                        let expr = s(&m["expression"]);
                        match s(&m["type"]) {
                            "reduce" | "threshold" => {
                                ensure!(refs.contains(expr), "{uid}: expression {expr} not a refId")
                            }
                            "math" => {
                                for r in math_ref.captures_iter(expr) {
                                    ensure!(
                                        refs.contains(&r[1]),
                                        "{uid}: math refers to missing ${}",
                                        &r[1]
                                    );
                                }
                            }
                            other => bail!("{uid}: unexpected expression type {other}"),
                        }
                    }
                    other => bail!("{uid}: datasourceUid {other:?} does not resolve"),
                }
            }
            let dash = s(&r["dashboardUid"]);
            let panel = r["panelId"].as_u64().unwrap_or(0);
            ensure!(
                panel_index
                    .get(dash)
                    .is_some_and(|ids| ids.contains(&panel)),
                "{uid}: links to missing panel {dash}/{panel}"
            );
        }
    }
    ensure!(
        rule_uids.len() >= 10,
        "expected the Grafana-managed rules, found {}",
        rule_uids.len()
    );

    // Contact point and policy.
    let cp = read_yaml(&prov.join("alerting/contact-points.yaml"))?;
    assert_no_hostnames("alerting/contact-points.yaml", &cp)?;
    let mut receivers = BTreeSet::new();
    for c in cp["contactPoints"]
        .as_array()
        .ok_or_else(|| anyhow!("no contactPoints"))?
    {
        receivers.insert(s(&c["name"]).to_string());
        for r in c["receivers"].as_array().into_iter().flatten() {
            ensure!(uid_re.is_match(s(&r["uid"])), "receiver uid {}", r["uid"]);
        }
    }
    let mut stack: Vec<&Value> = cp["policies"].as_array().into_iter().flatten().collect();
    ensure!(!stack.is_empty(), "no notification policy");
    while let Some(p) = stack.pop() {
        ensure!(
            receivers.contains(s(&p["receiver"])),
            "policy routes to unknown receiver {}",
            p["receiver"]
        );
        stack.extend(p["routes"].as_array().into_iter().flatten());
    }

    // Prometheus-format rules: the same annotation discipline.
    for r in prometheus_rules()? {
        let name = s(&r["alert"]);
        ensure!(
            matches!(s(&r["labels"]["severity"]), "critical" | "warning" | "info"),
            "{name}: severity"
        );
        ensure!(
            !s(&r["annotations"]["summary"]).is_empty()
                && !s(&r["annotations"]["description"]).is_empty(),
            "{name}: summary/description"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// thresholds: one source
// ---------------------------------------------------------------------------------------

struct Thresholds {
    values: BTreeMap<String, f64>,
    rules: Vec<Value>,
    panels: BTreeMap<String, Vec<String>>,
}

fn thresholds() -> Result<Thresholds> {
    let doc = read_yaml(&dashboards_dir().join("thresholds.yaml"))?;
    let mut values = BTreeMap::new();
    for section in ["capacity", "operational", "state_codes"] {
        for (k, v) in doc[section]
            .as_object()
            .ok_or_else(|| anyhow!("thresholds.yaml: no {section}"))?
        {
            let v = v
                .as_f64()
                .ok_or_else(|| anyhow!("thresholds.yaml: {k} is not a number"))?;
            ensure!(
                values.insert(k.clone(), v).is_none(),
                "thresholds.yaml: {k} defined twice"
            );
        }
    }
    let rules = doc["rules"]
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("thresholds.yaml: no rules"))?;
    let mut panels = BTreeMap::new();
    for (k, v) in doc["panels"]
        .as_object()
        .ok_or_else(|| anyhow!("thresholds.yaml: no panels"))?
    {
        let names: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| s(n).to_string())
            .collect();
        panels.insert(k.clone(), names);
    }
    Ok(Thresholds {
        values,
        rules,
        panels,
    })
}

impl Thresholds {
    fn value(&self, name: &str) -> Result<f64> {
        self.values
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("thresholds.yaml: unknown name {name}"))
    }

    fn uses(&self, rule: &Value) -> Result<Vec<f64>> {
        let mut out: Vec<f64> = rule["uses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| self.value(s(n)))
            .collect::<Result<_>>()?;
        out.retain(|v| !is_structural(*v));
        out.sort_by(f64::total_cmp);
        Ok(out)
    }

    /// `for` of a rule entry as seconds: a duration, or a `*_MINUTES` name.
    fn for_seconds(&self, rule: &Value) -> Result<u64> {
        let f = s(&rule["for"]);
        if f.ends_with("_MINUTES") {
            return Ok((self.value(f)? * 60.0) as u64);
        }
        duration_seconds(f)
    }
}

/// 0 and 1 compare booleans (`up == 0`, `count < 1`); they are not thresholds.
fn is_structural(v: f64) -> bool {
    v == 0.0 || v == 1.0
}

fn duration_seconds(text: &str) -> Result<u64> {
    let re = Regex::new(r"(\d+)(ms|s|m|h|d)")?;
    let mut total = 0;
    let mut matched = 0;
    for c in re.captures_iter(text) {
        let n: u64 = c[1].parse()?;
        matched += c[0].len();
        total += match &c[2] {
            "ms" => 0,
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => n * 86400,
        };
    }
    ensure!(
        matched == text.len() && !text.is_empty(),
        "not a duration: {text:?}"
    );
    Ok(total)
}

/// Numeric literals of a PromQL/Grafana-math expression, outside range selectors, label
/// matchers and strings; 0 and 1 are left out (see [`is_structural`]).
fn numeric_literals(expr: &str) -> Result<Vec<f64>> {
    let stripped =
        Regex::new(r#"\[[^\]]*\]|\{[^}]*\}|"[^"]*"|'[^']*'|offset\s+\w+"#)?.replace_all(expr, " ");
    let token = Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")?;
    let mut out = Vec::new();
    for m in token.find_iter(&stripped) {
        if let Ok(v) = m.as_str().parse::<f64>() {
            if !is_structural(v) {
                out.push(v);
            }
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn same_numbers(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
}

#[test]
fn dashboards_thresholds_single_source() -> Result<()> {
    let th = thresholds()?;
    let mut errors = Vec::new();

    // Prometheus-format rules.
    let prom: BTreeMap<String, Value> = prometheus_rules()?
        .into_iter()
        .map(|r| (s(&r["alert"]).to_string(), r))
        .collect();
    let listed: BTreeSet<String> = th
        .rules
        .iter()
        .map(|r| s(&r["alert"]).to_string())
        .collect();
    let in_file: BTreeSet<String> = prom.keys().cloned().collect();
    ensure!(
        listed == in_file,
        "alerts in thresholds.yaml {listed:?} != alerts in tcpulse-rules.yml {in_file:?}"
    );
    for t in &th.rules {
        let name = s(&t["alert"]);
        let r = &prom[name];
        let uses = th.uses(t)?;
        let found = numeric_literals(s(&r["expr"]))?;
        if !same_numbers(&found, &uses) {
            errors.push(format!(
                "tcpulse-rules.yml {name}: numbers {found:?}, thresholds.yaml says {uses:?}"
            ));
        }
        if duration_seconds(s(&r["for"]))? != th.for_seconds(t)? {
            errors.push(format!(
                "tcpulse-rules.yml {name}: for {} != thresholds.yaml {}",
                s(&r["for"]),
                s(&t["for"])
            ));
        }
        if r["labels"]["severity"] != t["severity"] {
            errors.push(format!(
                "tcpulse-rules.yml {name}: severity {} != {}",
                r["labels"]["severity"], t["severity"]
            ));
        }
    }

    // Grafana-managed rules.
    let grafana: BTreeMap<String, Value> = grafana_rules()?
        .into_iter()
        .map(|r| (s(&r["title"]).to_string(), r))
        .collect();
    let listed: BTreeSet<String> = th
        .rules
        .iter()
        .filter(|r| r.get("grafana_uid").is_some())
        .map(|r| s(&r["alert"]).to_string())
        .collect();
    let in_file: BTreeSet<String> = grafana.keys().cloned().collect();
    ensure!(
        listed == in_file,
        "Grafana rules in thresholds.yaml {listed:?} != tcpulse-rules.yaml {in_file:?}"
    );
    for t in th.rules.iter().filter(|r| r.get("grafana_uid").is_some()) {
        let name = s(&t["alert"]);
        let r = &grafana[name];
        if r["uid"] != t["grafana_uid"] {
            errors.push(format!(
                "Grafana {name}: uid {} != thresholds.yaml {}",
                r["uid"], t["grafana_uid"]
            ));
        }
        let mut found = Vec::new();
        for d in r["data"].as_array().into_iter().flatten() {
            let m = &d["model"];
            match s(&m["type"]) {
                "math" => found.extend(numeric_literals(s(&m["expression"]))?),
                "threshold" => {
                    for c in m["conditions"].as_array().into_iter().flatten() {
                        for p in c["evaluator"]["params"].as_array().into_iter().flatten() {
                            let v = p
                                .as_f64()
                                .ok_or_else(|| anyhow!("{name}: threshold param not a number"))?;
                            if !is_structural(v) {
                                found.push(v);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        found.sort_by(f64::total_cmp);
        let uses = th.uses(t)?;
        if !same_numbers(&found, &uses) {
            errors.push(format!(
                "Grafana {name}: numbers {found:?}, thresholds.yaml says {uses:?}"
            ));
        }
        if duration_seconds(s(&r["for"]))? != th.for_seconds(t)? {
            errors.push(format!(
                "Grafana {name}: for {} != thresholds.yaml {}",
                s(&r["for"]),
                s(&t["for"])
            ));
        }
        if r["labels"]["severity"] != t["severity"] {
            errors.push(format!(
                "Grafana {name}: severity {} != {}",
                r["labels"]["severity"], t["severity"]
            ));
        }
    }

    // Dashboards: threshold steps and state value mappings.
    let mut seen = BTreeSet::new();
    for (file, d) in dashboards()? {
        for panel in panels(&d) {
            let key = format!("{}/{}", s(&d["uid"]), panel["id"]);
            let mut found = Vec::new();
            let fc = &panel["fieldConfig"];
            let mut threshold_sets = vec![&fc["defaults"]["thresholds"]];
            for o in fc["overrides"].as_array().into_iter().flatten() {
                for p in o["properties"].as_array().into_iter().flatten() {
                    if s(&p["id"]) == "thresholds" {
                        threshold_sets.push(&p["value"]);
                    }
                }
            }
            for set in threshold_sets {
                for step in set["steps"].as_array().into_iter().flatten() {
                    if let Some(v) = step["value"].as_f64() {
                        found.push(v);
                    }
                }
            }
            let queries_state = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| s(&t["query"]).contains("state_code"));
            if queries_state {
                for m in fc["defaults"]["mappings"].as_array().into_iter().flatten() {
                    for k in m["options"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k)
                    {
                        found.push(
                            k.parse::<f64>()
                                .with_context(|| format!("{file}: mapping key {k}"))?,
                        );
                    }
                }
            }
            found.sort_by(f64::total_cmp);
            found.dedup();
            match th.panels.get(&key) {
                Some(names) => {
                    seen.insert(key.clone());
                    let mut want: Vec<f64> = names.iter().map(|n| th.value(n)).collect::<Result<_>>()?;
                    want.sort_by(f64::total_cmp);
                    want.dedup();
                    if !same_numbers(&found, &want) {
                        errors.push(format!("{file} panel {key}: thresholds {found:?}, thresholds.yaml says {want:?} ({names:?})"));
                    }
                }
                None if !found.is_empty() => {
                    errors.push(format!("{file} panel {key}: thresholds {found:?} not listed under `panels` in thresholds.yaml"))
                }
                None => {}
            }
        }
    }
    for key in th.panels.keys().filter(|k| !seen.contains(*k)) {
        errors.push(format!(
            "thresholds.yaml lists panel {key}, which does not exist"
        ));
    }
    ensure!(
        errors.is_empty(),
        "thresholds out of step with dashboards/thresholds.yaml:\n  {}",
        errors.join("\n  ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// InfluxDB 1.6 filled by the real collector: every InfluxQL query
// ---------------------------------------------------------------------------------------
//
// Schema-v1 events (a fleet the test describes, below) → the embedded hub over TLS → the
// `tcpulse-collector` binary with its InfluxDB v1 sink → InfluxDB 1.6. A second sink
// (`influxdb_v2`) writes to a real VictoriaMetrics behind a [`FaultProxy`] that refuses
// exactly `REFUSED_WRITES` connections once, like a store restarting: the collector counts
// those failed writes and its `tc_pipeline` sink points carry them into InfluxDB.
//
// Every expected series and value is computed from the fleet description (what the agents
// said), never read back from the store.

const DB: &str = "tcpulse";
/// Report interval of the simulated agents, the collector's rollup interval and Grafana's
/// `$__interval` in the test, seconds.
const STEP_S: i64 = 10;
/// Reports published before the collector starts: 15 minutes of history.
const HISTORY_STEPS: i64 = 90;
/// The silent instance stops reporting this long before the end of the history.
const SILENT_FOR_S: i64 = 8 * 60;
/// The collector's name: the `collector` tag of `tc_pipeline`.
const COLLECTOR: &str = "collector-1";
/// Connections the store behind the `influxdb_v2` sink refuses: each is one failed write.
const REFUSED_WRITES: usize = 3;
/// The collector's `aggregate.stale_after`, seconds (three report intervals).
const STALE_AFTER_S: i64 = 30;
const MEM_TOTAL: i64 = 17_179_869_184;
const MEM_USED: i64 = 6_442_450_944;
const DISK_FREE: i64 = 40_000_000_000;
/// Reports in a full agent spool (the default `spool.max_bytes` holds about 100 000).
const SPOOL_FULL: i64 = 100_000;

#[derive(Debug, Clone)]
struct Inst {
    connector: &'static str,
    deployment: &'static str,
    region: &'static str,
    scaleset: &'static str,
    name: String,
    partition: &'static str,
    boot: String,
    /// Calls in the first half of the history, then from the second half on.
    calls_before: u32,
    calls_after: u32,
    /// `service_up` in the first half of the history, then from the second half on.
    service_up_before: bool,
    service_up_after: bool,
    cert_days: f64,
    /// Reports in the agent's spool at report 0.
    spool_base: i64,
    /// Reports added to the agent's spool per report (0 = a spool that does not grow).
    spool_growth: i64,
    /// Reports the agent drops per report because its spool is full (0 = none).
    drop_growth: i64,
    /// Stops reporting this long before the end of the history (0 = keeps reporting).
    silent_for: i64,
}

#[derive(Debug, Clone)]
struct Conn {
    connector: &'static str,
    deployment: &'static str,
    region: &'static str,
    online: i64,
    calls: i64,
    peak: i64,
}

impl Conn {
    fn needed(&self) -> i64 {
        (self.peak + 14) / 15
    }
    fn field(&self, f: &str) -> Option<f64> {
        Some(match f {
            "instances_online" => self.online as f64,
            "call_count" => self.calls as f64,
            "capacity_planned" => (self.online * 15) as f64,
            "capacity_max" => (self.online * 16) as f64,
            "utilization" => self.calls as f64 / (self.online * 15) as f64,
            "headroom_calls" => (self.online * 15 - self.calls) as f64,
            "peak_calls" => self.peak as f64,
            "instances_needed" => self.needed() as f64,
            "vcpu_needed" => (4 * self.needed()) as f64,
            _ => return None,
        })
    }
}

/// The simulated fleet: reports every `STEP_S` at `t(k)`, `k = 0..=steps`.
#[derive(Debug, Clone)]
struct Fleet {
    instances: Vec<Inst>,
    /// Time of report 0, ms (5 s past a multiple of `STEP_S`, so reports fall between
    /// rollup window ends).
    base_ms: i64,
    /// Index of the newest report of the reporting instances.
    steps: i64,
    /// Partitions of the hub (each connector has its own).
    partitions: Vec<&'static str>,
}

impl Fleet {
    fn new(now_ms: i64) -> Fleet {
        let step_ms = STEP_S * 1000;
        // The newest report of the history lies 5 s past a window end and in the past.
        let end_ms = (now_ms - 5_000).div_euclid(step_ms) * step_ms + 5_000;
        let base_ms = end_ms - HISTORY_STEPS * step_ms;
        let mut n = 0;
        let mut inst = |connector,
                        deployment,
                        region,
                        scaleset: &'static str,
                        partition,
                        i: usize,
                        (calls_before, calls_after): (u32, u32),
                        (service_up_before, service_up_after): (bool, bool),
                        cert_days,
                        spool_growth,
                        silent_for| {
            n += 1;
            Inst {
                connector,
                deployment,
                region,
                scaleset,
                name: format!("{scaleset}_{i}"),
                partition,
                boot: format!("6f1c2a4e-8b1d-4c3e-9f70-2d5b8a9e0c{n:02x}"),
                calls_before,
                calls_after,
                service_up_before,
                service_up_after,
                cert_days,
                spool_base: 0,
                spool_growth,
                drop_growth: 0,
                silent_for,
            }
        };
        let blue = "tc-blue.example.com";
        let green = "tc-green.example.com";
        let (bd, br, bs) = ("blue", "westeurope", "tc-blue-vmss");
        let (gd, gr, gs) = ("green", "northeurope", "tc-green-vmss");
        let up = (true, true);
        let instances = vec![
            inst(blue, bd, br, bs, "0", 0, (16, 15), up, 41.5, 0, 0),
            // its Teams service stops in the second half
            inst(
                blue,
                bd,
                br,
                bs,
                "0",
                1,
                (15, 12),
                (true, false),
                41.5,
                0,
                0,
            ),
            // full
            inst(blue, bd, br, bs, "0", 2, (15, 16), up, 41.5, 0, 0),
            inst(green, gd, gr, gs, "1", 0, (6, 5), up, 20.0, 0, 0),
            inst(green, gd, gr, gs, "1", 1, (6, 6), up, 20.0, 0, 0),
            // certificate not renewed; spool growing
            inst(green, gd, gr, gs, "1", 2, (8, 7), up, 5.0, 1, 0),
            // stops reporting 8 minutes before the end of the history
            inst(green, gd, gr, gs, "1", 3, (0, 0), up, 20.0, 0, SILENT_FOR_S),
            // cut off from Event Hubs for days: its spool is full (it no longer grows) and
            // the agent drops 2 reports per report (issue 13)
            Inst {
                spool_base: SPOOL_FULL,
                drop_growth: 2,
                ..inst(green, gd, gr, gs, "1", 4, (5, 5), up, 20.0, 0, 0)
            },
        ];
        Fleet {
            instances,
            base_ms,
            steps: HISTORY_STEPS,
            partitions: vec!["0", "1"],
        }
    }

    fn t_ms(&self, k: i64) -> i64 {
        self.base_ms + k * STEP_S * 1000
    }

    /// Index of an instance's newest report.
    fn last_k(&self, i: &Inst) -> i64 {
        if i.silent_for > 0 {
            HISTORY_STEPS - i.silent_for / STEP_S
        } else {
            self.steps
        }
    }

    fn silent(&self, i: &Inst) -> bool {
        i.silent_for > 0
    }

    /// Seconds between an instance's newest report and the newest report of the fleet.
    fn silent_secs(&self, i: &Inst) -> i64 {
        (self.steps - self.last_k(i)) * STEP_S
    }

    fn calls_at(i: &Inst, k: i64) -> u32 {
        if k < HISTORY_STEPS / 2 {
            i.calls_before
        } else {
            i.calls_after
        }
    }

    fn service_up_at(i: &Inst, k: i64) -> bool {
        if k < HISTORY_STEPS / 2 {
            i.service_up_before
        } else {
            i.service_up_after
        }
    }

    /// The schema-v1 event instance `i` sends as report `k`.
    fn event(&self, i: &Inst, k: i64) -> Result<Vec<u8>> {
        let ts = |ms: i64| {
            tcpulse_schema::Timestamp::from_unix_millis(ms)
                .map(|t| t.to_string())
                .ok_or_else(|| anyhow!("time {ms} out of range"))
        };
        let calls = Self::calls_at(i, k);
        let body = json!({
            "schema": "tcpulse.status.v1",
            "connector": i.connector,
            "deployment": i.deployment,
            "region": i.region,
            "scaleset": i.scaleset,
            "instance": i.name,
            "boot": i.boot,
            "seq": k + 1,
            "time": ts(self.t_ms(k))?,
            "start_time": ts(self.base_ms - 3_600_000)?,
            "state": "active",
            "calls": {"call_count": calls, "max_calls": 16, "planned_calls": 15,
                      "media_load": 20 + 4 * calls},
            "health": {"cpu": 0.4, "mem_used_bytes": MEM_USED, "mem_total_bytes": MEM_TOTAL,
                       "disk_free_bytes": DISK_FREE, "service_up": Self::service_up_at(i, k),
                       "cert_expiry_days": i.cert_days},
            "agent": {"version": "0.1.0", "spooled": i.spool_base + i.spool_growth * k,
                      "dropped": i.drop_growth * k},
        });
        Ok(serde_json::to_vec(&body)?)
    }

    /// Reports `from..=to` of every instance that still reports then, per partition in
    /// time order: `(partition, body)`.
    fn reports(&self, from: i64, to: i64) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let mut out = Vec::new();
        for k in from..=to {
            for i in &self.instances {
                if k <= self.last_k(i) {
                    out.push((i.partition, self.event(i, k)?));
                }
            }
        }
        Ok(out)
    }

    /// The value of `field` in an instance's newest `tc_instance` point that has it.
    fn inst_field(&self, i: &Inst, f: &str) -> Option<f64> {
        let k = self.last_k(i);
        let calls = Self::calls_at(i, k) as f64;
        Some(match f {
            "call_count" => calls,
            "max_calls" => 16.0,
            "planned_calls" => 15.0,
            "media_load" => 20.0 + 4.0 * calls,
            "utilization" => calls / 15.0,
            // The collector writes `up=0` alone once the instance is stale.
            "up" => {
                if self.silent(i) {
                    0.0
                } else {
                    1.0
                }
            }
            "state_code" => 1.0,
            "cpu" => 0.4,
            "mem_used_bytes" => MEM_USED as f64,
            "mem_total_bytes" => MEM_TOTAL as f64,
            "disk_free_bytes" => DISK_FREE as f64,
            "service_up" => f64::from(u8::from(Self::service_up_at(i, k))),
            "cert_expiry_days" => i.cert_days,
            "agent_spooled" => (i.spool_base + i.spool_growth * k) as f64,
            "agent_dropped" => (i.drop_growth * k) as f64,
            _ => return None,
        })
    }

    /// The connector rollups as the capacity model defines them, from the reports: online
    /// = fresh instances now; `peak` = the highest call count of any rollup window (a
    /// window ending 5 s after report `k` sees report `k` of every instance that reported
    /// within `STALE_AFTER_S` of its end).
    fn connectors(&self) -> Vec<Conn> {
        let mut out: Vec<Conn> = Vec::new();
        for i in &self.instances {
            if out.iter().any(|c| c.connector == i.connector) {
                continue;
            }
            let members: Vec<&Inst> = self
                .instances
                .iter()
                .filter(|m| m.connector == i.connector)
                .collect();
            let window_calls = |k: i64| -> i64 {
                members
                    .iter()
                    .filter(|m| (k - self.last_k(m)) * STEP_S + 5 <= STALE_AFTER_S)
                    .map(|m| i64::from(Self::calls_at(m, k.min(self.last_k(m)))))
                    .sum()
            };
            let online = members.iter().filter(|m| !self.silent(m)).count() as i64;
            out.push(Conn {
                connector: i.connector,
                deployment: i.deployment,
                region: i.region,
                online,
                calls: window_calls(self.steps),
                peak: (0..=self.steps).map(window_calls).max().unwrap_or(0),
            });
        }
        out
    }

    /// Valid events (not duplicates) sent to `partition`.
    fn events_in(&self, partition: &str) -> i64 {
        self.instances
            .iter()
            .filter(|i| i.partition == partition)
            .map(|i| self.last_k(i) + 1)
            .sum()
    }
}

/// What the pipeline did, as the test made it happen.
#[derive(Debug, Clone)]
struct PipelineFacts {
    /// The partition that got one undecodable event and one repeated event.
    faulty_partition: &'static str,
    /// Connections the store behind `influxdb_v2` refused.
    refused_writes: i64,
}

/// Publishes `(partition, body)` events over TLS with the Send policy, in order, batched
/// per run of one partition.
async fn publish(info: &HubInfo, events: &[(&str, Vec<u8>)]) -> Result<()> {
    let config = ClientConfig::from_connection_string(
        info.connection_string(Mode::Tls, Policy::Send)?,
        None,
        ClientOptions {
            extra_ca_file: Some(info.ca_pem.clone()),
            connect_timeout_secs: 10,
            operation_timeout_secs: 10,
            ..Default::default()
        },
    )?;
    let mut producer = Producer::connect(config).await?;
    for partition in ["0", "1"] {
        let opts = || BatchOptions {
            partition_id: Some(partition.to_string()),
            ..Default::default()
        };
        let mut batch = producer.create_batch(opts())?;
        for (_, body) in events.iter().filter(|(p, _)| *p == partition) {
            let ev = EventData::new(body.clone())
                .with_content_type("application/json")
                .with_property("schema", tcpulse_schema::SCHEMA_V1);
            match batch.try_add(ev) {
                Ok(()) => {}
                Err(TryAddError::Full { event, .. }) => {
                    producer.send_batch(&batch).await?;
                    batch = producer.create_batch(opts())?;
                    batch
                        .try_add(*event)
                        .map_err(|e| anyhow!("event too large: {e}"))?;
                }
                Err(e) => bail!("event not added: {e}"),
            }
        }
        producer.send_batch(&batch).await?;
    }
    producer.close().await;
    Ok(())
}

/// Grafana's regex formatting of a multi-value variable inside `/^$var$/`.
fn regex_value(values: &[String]) -> String {
    let esc: Vec<String> = values
        .iter()
        .map(|v| {
            let mut o = String::new();
            for ch in v.chars() {
                if "\\^$*+?.()|[]{}/".contains(ch) {
                    o.push('\\');
                }
                o.push(ch);
            }
            o
        })
        .collect();
    if esc.len() == 1 {
        esc[0].clone()
    } else {
        format!("({})", esc.join("|"))
    }
}

/// Substitutes Grafana's macros and template variables the way the InfluxDB data source does.
fn interpolate(
    query: &str,
    vars: &BTreeMap<String, Vec<String>>,
    time_filter: &str,
    interval_s: i64,
) -> String {
    let mut q = query
        .replace("$timeFilter", time_filter)
        .replace("$__interval_ms", &(interval_s * 1000).to_string())
        .replace("$__interval", &format!("{interval_s}s"));
    // Longest names first so `$instance` never eats a prefix of another name.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        let v = regex_value(&vars[name]);
        q = q
            .replace(&format!("${{{name}}}"), &v)
            .replace(&format!("${name}"), &v);
    }
    q
}

/// A `$name` or `${name}` left after interpolation (the `$` of `/^...$/` is not one).
fn has_placeholder(q: &str) -> bool {
    Regex::new(r"\$(\{|[A-Za-z_])")
        .map(|re| re.is_match(q))
        .unwrap_or(true)
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

/// One column of a query's SELECT list: (column name, outer function, inner function, fields).
type Column = (String, String, String, Vec<String>);

/// A query's SELECT list.
fn select_columns(q: &str) -> Result<Vec<Column>> {
    let sel = Regex::new(r"(?is)^\s*SELECT\s+(.*?)\s+FROM\s")?
        .captures(q)
        .ok_or_else(|| anyhow!("no SELECT in {q}"))?[1]
        .to_string();
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for ch in sel.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    parts.push(cur);
    let alias = Regex::new(r#"(?i)\s+AS\s+"([^"]+)"\s*$"#)?;
    let func = Regex::new(r"^\s*(\w+)\(\s*(?:(\w+)\()?")?;
    let field = Regex::new(r#""(\w+)""#)?;
    let mut out = Vec::new();
    for p in parts {
        let (body, name) = match alias.captures(&p) {
            Some(c) => (
                p[..c.get(0).map(|m| m.start()).unwrap_or(0)].to_string(),
                Some(c[1].to_string()),
            ),
            None => (p.clone(), None),
        };
        let f = func
            .captures(&body)
            .ok_or_else(|| anyhow!("unexpected select expression {body}"))?;
        let outer = f[1].to_string();
        let inner = f.get(2).map(|m| m.as_str().to_string()).unwrap_or_default();
        let fields = field
            .captures_iter(&body)
            .map(|c| c[1].to_string())
            .collect();
        out.push((name.unwrap_or_else(|| outer.clone()), outer, inner, fields));
    }
    Ok(out)
}

/// The measurement a query reads.
fn measurement(q: &str) -> String {
    Regex::new(r#"FROM\s+"(\w+)""#)
        .ok()
        .and_then(|re| re.captures(q).map(|c| c[1].to_string()))
        .unwrap_or_default()
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

/// Identity of a series for joining Grafana expressions: its sorted tags.
fn series_key(tags: &Value) -> String {
    let mut kv: Vec<String> = tags
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    kv.sort();
    kv.join(",")
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

/// The sum of column `col` per series (`series key → sum`).
fn column_sums(series: &[Value], col: &str) -> BTreeMap<String, f64> {
    series
        .iter()
        .map(|sr| {
            let ci = sr["columns"]
                .as_array()
                .into_iter()
                .flatten()
                .position(|c| s(c) == col);
            let sum = sr["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| ci.and_then(|ci| r[ci].as_f64()))
                .sum();
            (series_key(&sr["tags"]), sum)
        })
        .collect()
}

/// Evaluates a Grafana math expression (`$B >= 16`, `($B == 0 || $D == 0) && $F != 2`).
fn eval_math(expr: &str, vars: &HashMap<String, f64>) -> Result<f64> {
    let token = Regex::new(r"\s*(\$[A-Za-z]\w*|\d+(?:\.\d+)?|>=|<=|==|!=|&&|\|\||[<>()+\-*/])")?;
    let mut toks = Vec::new();
    let mut rest = expr;
    while !rest.trim().is_empty() {
        let m = token
            .captures(rest)
            .filter(|c| c.get(0).map(|m| m.start()) == Some(0))
            .ok_or_else(|| anyhow!("bad math {expr:?} at {rest:?}"))?;
        toks.push(m[1].to_string());
        rest = &rest[m[0].len()..];
    }
    fn prec(op: &str) -> Option<u8> {
        Some(match op {
            "||" => 1,
            "&&" => 2,
            "==" | "!=" | "<" | ">" | "<=" | ">=" => 3,
            "+" | "-" => 4,
            "*" | "/" => 5,
            _ => return None,
        })
    }
    fn apply(op: &str, a: f64, b: f64) -> f64 {
        let t = |c: bool| if c { 1.0 } else { 0.0 };
        match op {
            "||" => t(a != 0.0 || b != 0.0),
            "&&" => t(a != 0.0 && b != 0.0),
            "==" => t(a == b),
            "!=" => t(a != b),
            "<" => t(a < b),
            ">" => t(a > b),
            "<=" => t(a <= b),
            ">=" => t(a >= b),
            "+" => a + b,
            "-" => a - b,
            "*" => a * b,
            _ => a / b,
        }
    }
    fn parse(
        toks: &[String],
        pos: &mut usize,
        min: u8,
        vars: &HashMap<String, f64>,
    ) -> Result<f64> {
        let tok = toks
            .get(*pos)
            .ok_or_else(|| anyhow!("unexpected end"))?
            .clone();
        *pos += 1;
        let mut lhs = if tok == "(" {
            let v = parse(toks, pos, 1, vars)?;
            ensure!(toks.get(*pos).map(String::as_str) == Some(")"), "missing )");
            *pos += 1;
            v
        } else if let Some(name) = tok.strip_prefix('$') {
            *vars
                .get(name)
                .ok_or_else(|| anyhow!("no value for ${name}"))?
        } else {
            tok.parse()?
        };
        while let Some(op) = toks.get(*pos) {
            let Some(p) = prec(op) else { break };
            if p < min {
                break;
            }
            let op = op.clone();
            *pos += 1;
            let rhs = parse(toks, pos, p + 1, vars)?;
            lhs = apply(&op, lhs, rhs);
        }
        Ok(lhs)
    }
    let mut pos = 0;
    let v = parse(&toks, &mut pos, 1, vars)?;
    ensure!(pos == toks.len(), "trailing tokens in {expr:?}");
    Ok(v)
}

/// Polls `cond` every 250 ms until it holds, or fails after `timeout` with `what`.
async fn eventually(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
    eventually(
        "the history in InfluxDB (events counted per partition, sink points written)",
        Duration::from_secs(60),
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
    eventually(
        "the live reports, the dead letter, the duplicate and the refused writes in InfluxDB",
        Duration::from_secs(60),
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

// ---------------------------------------------------------------------------------------
// vmalert + Alertmanager
// ---------------------------------------------------------------------------------------

/// The Prometheus rules with every `for` shortened to `for_` so the test takes seconds; the
/// expressions and labels are the shipped ones.
fn rules_with_short_for(for_: &str) -> Result<String> {
    let mut doc: Value = read_yaml(&dashboards_dir().join("prometheus/tcpulse-rules.yml"))?;
    for g in doc["groups"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("no groups"))?
    {
        for r in g["rules"]
            .as_array_mut()
            .ok_or_else(|| anyhow!("no rules"))?
        {
            r["for"] = Value::String(for_.to_string());
        }
    }
    Ok(serde_norway::to_string(&doc)?)
}

fn connector_lines(connector: &str, deployment: &str, utilization: f64) -> String {
    let online = 4;
    let calls = (utilization * 60.0).round() as i64;
    format!(
        "tc_connector,connector={connector},deployment={deployment},region=westeurope instances_online={online}i,call_count={calls}i,capacity_planned=60i,capacity_max=64i,utilization={utilization},headroom_calls={}i,peak_calls={calls}i,instances_needed={}i,vcpu_needed={}i\n",
        60 - calls,
        (calls + 14) / 15,
        4 * ((calls + 14) / 15)
    )
}

/// Active alerts named `alertname` in Alertmanager, as their label maps.
fn am_alerts(am: &Service, alertname: &str) -> Result<Vec<Value>> {
    let url = format!(
        "{}/api/v2/alerts?active=true&filter=alertname%3D%22{alertname}%22",
        am.url()
    );
    let (status, body) = services::get(&url)?;
    ensure!(status == 200, "Alertmanager {status}: {body}");
    let v: Value = serde_json::from_str(&body)?;
    Ok(v.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| s(&a["status"]["state"]) == "active")
        .map(|a| a["labels"].clone())
        .collect())
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn dashboards_vmalert_alertmanager_capacity_high_fires_and_resolves() -> Result<()> {
    let started = Instant::now();
    let vm = services::victoria_metrics()?;
    let am = services::alertmanager()?;
    let rules_dir = tempfile::TempDir::new()?;
    let rules = rules_dir.path().join("tcpulse-rules.yml");
    // `for: 2s` instead of minutes (evaluation every 1 s): same expressions, fast test.
    std::fs::write(&rules, rules_with_short_for("2s")?)?;
    let vmalert = services::vmalert(&vm.url(), &am.url(), &[rules], Duration::from_secs(1))?;
    let boot = started.elapsed();

    let hot = "tc-blue.example.com";
    let cool = "tc-green.example.com";
    let hot_util = Arc::new(AtomicU64::new(0.9f64.to_bits()));
    let stop = Arc::new(AtomicBool::new(false));
    let write_url = format!("{}/api/v2/write?org=tcpulse&bucket=tcpulse", vm.url());
    let flush_url = format!("{}/internal/force_flush", vm.url());
    let pusher = {
        let (hot_util, stop, write_url, flush_url) = (
            hot_util.clone(),
            stop.clone(),
            write_url.clone(),
            flush_url.clone(),
        );
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let u = f64::from_bits(hot_util.load(Ordering::Relaxed));
                let body = connector_lines(hot, "blue", u) + &connector_lines(cool, "green", 0.5);
                let (status, text) =
                    services::post(&write_url, "text/plain; charset=utf-8", &body)?;
                ensure!(status == 204, "VictoriaMetrics write: {status} {text}");
                services::get(&flush_url)?;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(())
        })
    };

    let result = (|| -> Result<(Duration, Duration)> {
        let fired = wait_for(
            "TeamsConnectorCapacityHigh for the hot connector in Alertmanager",
            Duration::from_secs(60),
            || {
                Ok(am_alerts(&am, "TeamsConnectorCapacityHigh")?
                    .iter()
                    .any(|l| s(&l["connector"]) == hot))
            },
        )
        .with_context(|| format!("vmalert log:\n{}", vmalert.log_tail()))?;
        let alerts = am_alerts(&am, "TeamsConnectorCapacityHigh")?;
        let labels = alerts
            .iter()
            .find(|l| s(&l["connector"]) == hot)
            .cloned()
            .unwrap_or_default();
        ensure!(
            s(&labels["deployment"]) == "blue" && s(&labels["severity"]) == "warning",
            "labels: {labels}"
        );
        ensure!(
            !alerts.iter().any(|l| s(&l["connector"]) == cool),
            "the connector at 50 % must not alert: {alerts:?}"
        );
        ensure!(
            !am_alerts(&am, "TeamsConnectorCapacityCritical")?
                .iter()
                .any(|l| s(&l["connector"]) == hot),
            "90 % is below the critical threshold"
        );

        hot_util.store(0.4f64.to_bits(), Ordering::Relaxed);
        let resolved = wait_for(
            "TeamsConnectorCapacityHigh to resolve in Alertmanager",
            Duration::from_secs(60),
            || {
                Ok(!am_alerts(&am, "TeamsConnectorCapacityHigh")?
                    .iter()
                    .any(|l| s(&l["connector"]) == hot))
            },
        )?;
        Ok((fired, resolved))
    })();
    stop.store(true, Ordering::Relaxed);
    let pushed = pusher.join().map_err(|_| anyhow!("pusher panicked"))?;
    let (fired, resolved) = result?;
    pushed?;
    eprintln!(
        "vmalert/Alertmanager: services ready in {boot:?}; fired after {fired:?}; resolved after {resolved:?}; total {:?}",
        started.elapsed()
    );
    Ok(())
}
