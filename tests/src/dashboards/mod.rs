//! The shipped `dashboards/` as the tests read them, and the engines the dashboard tests
//! compute their expectations with.
//!
//! # Layout
//!
//! - this file: the files (dashboards, panels, Grafana-managed and Prometheus-format rules).
//! - [`thresholds`]: `dashboards/thresholds.yaml`, the one source of every threshold, and
//!   the numbers and durations a rule expression holds.
//! - [`fleet`]: a simulated fleet of Teams Connector instances: the schema-v1 events it
//!   sends and every value the stores must then hold.
//! - [`influxql`]: Grafana's interpolation of macros and template variables, and the parts
//!   of an InfluxQL query the checks need (select list, measurement, series keys).
//! - [`math`]: Grafana's math expressions (`$B >= 16 && $C != 0`), evaluated.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::Value;

pub mod fleet;
pub mod influxql;
pub mod math;
pub mod thresholds;

/// The uid of the provisioned InfluxDB data source.
pub const DATASOURCE_UID: &str = "tcpulse-influxdb";

/// `dashboards/` of the workspace.
pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// A YAML file as JSON values.
pub fn read_yaml(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_norway::from_str(&text).with_context(|| format!("parse YAML {}", path.display()))
}

/// A JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse JSON {}", path.display()))
}

/// The files in `dir` ending in `.ext`, sorted.
pub fn files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
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
pub fn dashboards() -> Result<Vec<(String, Value)>> {
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
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for nested in p["panels"].as_array().into_iter().flatten() {
            out.push(nested);
        }
    }
    out
}

/// Every Grafana-managed alert rule.
pub fn grafana_rules() -> Result<Vec<Value>> {
    rules_in(&dashboards_dir().join("grafana/provisioning/alerting/tcpulse-rules.yaml"))
}

/// Every Prometheus-format alert rule.
pub fn prometheus_rules() -> Result<Vec<Value>> {
    rules_in(&dashboards_dir().join("prometheus/tcpulse-rules.yml"))
}

/// The rules of every group of a rules file.
fn rules_in(path: &Path) -> Result<Vec<Value>> {
    let doc = read_yaml(path)?;
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

/// A string value, or `""`.
pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}
