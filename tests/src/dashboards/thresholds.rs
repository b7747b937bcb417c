//! `dashboards/thresholds.yaml`, the one source of every threshold, and the numbers and
//! durations a PromQL or Grafana-math expression holds.

use std::collections::BTreeMap;

use anyhow::{anyhow, ensure, Result};
use regex::Regex;
use serde_json::Value;

use super::{dashboards_dir, read_yaml, s};

/// `dashboards/thresholds.yaml`.
#[derive(Debug)]
pub struct Thresholds {
    /// Every named number (capacity, operational, state codes).
    pub values: BTreeMap<String, f64>,
    /// The alert rules and the names each uses.
    pub rules: Vec<Value>,
    /// Panel (`<dashboard uid>/<panel id>`) → the names of its threshold steps.
    pub panels: BTreeMap<String, Vec<String>>,
}

/// Reads `dashboards/thresholds.yaml`.
pub fn thresholds() -> Result<Thresholds> {
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
    /// The number called `name`.
    pub fn value(&self, name: &str) -> Result<f64> {
        self.values
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("thresholds.yaml: unknown name {name}"))
    }

    /// The non-structural numbers a rule entry uses, sorted.
    pub fn uses(&self, rule: &Value) -> Result<Vec<f64>> {
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
    pub fn for_seconds(&self, rule: &Value) -> Result<u64> {
        let f = s(&rule["for"]);
        if f.ends_with("_MINUTES") {
            return Ok((self.value(f)? * 60.0) as u64);
        }
        duration_seconds(f)
    }
}

/// 0 and 1 compare booleans (`up == 0`, `count < 1`); they are not thresholds.
pub fn is_structural(v: f64) -> bool {
    v == 0.0 || v == 1.0
}

/// A Prometheus duration (`5m`, `1h30m`) in seconds.
pub fn duration_seconds(text: &str) -> Result<u64> {
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
pub fn numeric_literals(expr: &str) -> Result<Vec<f64>> {
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

/// The same numbers, to 1e-9.
pub fn same_numbers(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
}
