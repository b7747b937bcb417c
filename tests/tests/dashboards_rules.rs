//! `dashboards/prometheus/`: promtool accepts the Prometheus-format rules, and its unit
//! tests expect every alert both to fire and to stay silent, and pass.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{ensure, Result};
use tcpulse_tests::dashboards::{dashboards_dir, files, prometheus_rules, read_yaml, s};
use tcpulse_tests::services;

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
