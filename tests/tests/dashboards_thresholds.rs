//! One source of thresholds: every number and `for` of the Prometheus-format and
//! Grafana-managed rules, and every dashboard threshold step and state mapping, is the one
//! `dashboards/thresholds.yaml` names.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::Value;
use tcpulse_tests::dashboards::thresholds::{
    duration_seconds, is_structural, numeric_literals, same_numbers, thresholds,
};
use tcpulse_tests::dashboards::{dashboards, grafana_rules, panels, prometheus_rules, s};

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
