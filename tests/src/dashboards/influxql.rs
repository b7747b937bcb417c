//! Grafana's interpolation of macros and template variables (as its InfluxDB data source
//! does it), and the parts of an InfluxQL query and answer the dashboard checks need.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use regex::Regex;
use serde_json::Value;

use super::s;

/// Grafana's regex formatting of a multi-value variable inside `/^$var$/`.
pub fn regex_value(values: &[String]) -> String {
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
pub fn interpolate(
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
pub fn has_placeholder(q: &str) -> bool {
    Regex::new(r"\$(\{|[A-Za-z_])")
        .map(|re| re.is_match(q))
        .unwrap_or(true)
}

/// One column of a query's SELECT list: (column name, outer function, inner function, fields).
pub type Column = (String, String, String, Vec<String>);

/// A query's SELECT list.
pub fn select_columns(q: &str) -> Result<Vec<Column>> {
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
pub fn measurement(q: &str) -> String {
    Regex::new(r#"FROM\s+"(\w+)""#)
        .ok()
        .and_then(|re| re.captures(q).map(|c| c[1].to_string()))
        .unwrap_or_default()
}

/// Identity of a series for joining Grafana expressions: its sorted tags.
pub fn series_key(tags: &Value) -> String {
    let mut kv: Vec<String> = tags
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    kv.sort();
    kv.join(",")
}

/// The sum of column `col` per series (`series key → sum`).
pub fn column_sums(series: &[Value], col: &str) -> BTreeMap<String, f64> {
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
