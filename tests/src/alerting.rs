//! Alerting helpers for the vmalert → Alertmanager tests: the shipped Prometheus rules with
//! a short `for`, and the active alerts Alertmanager holds.

use anyhow::{anyhow, ensure, Result};
use serde_json::Value;

use crate::dashboards::{dashboards_dir, read_yaml, s};
use crate::services::get;

/// The shipped Prometheus rules with every `for` shortened to `for_`, so a test takes
/// seconds; the expressions and labels are the shipped ones.
pub fn rules_with_short_for(for_: &str) -> Result<String> {
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

/// Active alerts named `alertname` in the Alertmanager at `am_url`, as their label maps.
pub fn am_alerts(am_url: &str, alertname: &str) -> Result<Vec<Value>> {
    let (status, body) = get(&format!(
        "{am_url}/api/v2/alerts?active=true&filter=alertname%3D%22{alertname}%22"
    ))?;
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
