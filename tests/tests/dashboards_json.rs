//! The Grafana JSON and provisioning files, offline: the data source, the provider, every
//! dashboard (uids, layout, template variables, raw InfluxQL targets, data source
//! references, no hard-coded hosts), the Grafana-managed alert rules, contact points and
//! policies, and the Prometheus-format rules' annotations.

use std::collections::{BTreeSet, HashMap};

use anyhow::{anyhow, bail, ensure, Result};
use regex::Regex;
use serde_json::Value;
use tcpulse_tests::dashboards::{
    dashboards, dashboards_dir, panels, prometheus_rules, read_yaml, s, DATASOURCE_UID,
};

/// The schemaVersion Grafana 10.4 writes; newer ones are not read by 10.4.
const SCHEMA_VERSION: u64 = 39;

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
