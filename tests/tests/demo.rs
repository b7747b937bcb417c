//! `tcpulse-demo` end to end (issue 7; its own crate since issue 14): the built binary runs
//! the embedded hub over TLS, 12 simulated agents publishing over AMQPS and the collector,
//! without a terminal, and stops by itself after `--duration`.
//!
//! Needs the binary: `cargo build -p tcpulse-demo --bins`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tcpulse_tests::process::workspace_binary;

/// Measurement, tags and fields of one line-protocol line.
type Parts<'a> = (
    &'a str,
    BTreeMap<&'a str, &'a str>,
    BTreeMap<&'a str, &'a str>,
);

/// Tags and the raw field list of one line (no escapes occur in the demo's names).
fn split_line(line: &str) -> Option<Parts<'_>> {
    let mut parts = line.split(' ');
    let series = parts.next()?;
    let fields = parts.next()?;
    let mut series = series.split(',');
    let measurement = series.next()?;
    let tags = series.filter_map(|t| t.split_once('=')).collect();
    let fields = fields
        .split(',')
        .filter_map(|f| f.split_once('='))
        .collect();
    Some((measurement, tags, fields))
}

#[test]
fn demo_runs_noninteractively_and_writes_points_for_every_instance() -> Result<()> {
    let bin = workspace_binary("tcpulse-demo")?;
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args(["--duration", "25s", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn,tcpulse_demo=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > Duration::from_secs(75) {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "demo still running after 75 s (asked for 25 s); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let elapsed = started.elapsed();
    ensure!(
        status.success(),
        "demo exited with {status}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    ensure!(
        elapsed >= Duration::from_secs(24),
        "demo ended after {elapsed:?}, before --duration 25s"
    );

    // No terminal: the view logs one line per connector per refresh, no escape codes.
    ensure!(!stdout.contains('\x1b'), "escape codes without a terminal");
    for c in ["tc-blue.example.com", "tc-green.example.com"] {
        ensure!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("connector={c} ")) && l.contains(" online=6/6 ")),
            "no view line with {c} online=6/6; stdout:\n{stdout}"
        );
    }
    ensure!(
        stdout.contains("/metrics") && stdout.contains("ca.pem"),
        "the demo must print where /metrics and the CA are; stdout:\n{stdout}"
    );
    ensure!(
        stdout.contains("demo stopped:"),
        "no closing line; stdout:\n{stdout}"
    );

    let points = std::fs::read_to_string(dir.path().join("points.lp"))
        .context("read the demo's points.lp")?;
    let mut instances: BTreeSet<String> = BTreeSet::new();
    let mut online: BTreeMap<String, i64> = BTreeMap::new();
    for line in points.lines() {
        let Some((m, tags, fields)) = split_line(line) else {
            bail!("unparsable line {line:?}");
        };
        match m {
            "tc_instance" if fields.get("up") == Some(&"1i") => {
                instances.insert(format!(
                    "{}/{}/{}",
                    tags.get("connector").copied().unwrap_or(""),
                    tags.get("deployment").copied().unwrap_or(""),
                    tags.get("instance").copied().unwrap_or("")
                ));
            }
            "tc_connector" => {
                let n: i64 = fields
                    .get("instances_online")
                    .and_then(|v| v.trim_end_matches('i').parse().ok())
                    .context("tc_connector without instances_online")?;
                let key = format!(
                    "{}/{}",
                    tags.get("connector").copied().unwrap_or(""),
                    tags.get("deployment").copied().unwrap_or("")
                );
                let e = online.entry(key).or_default();
                *e = (*e).max(n);
            }
            _ => {}
        }
    }
    let expected: BTreeSet<String> = [("tc-blue", "blue"), ("tc-green", "green")]
        .iter()
        .flat_map(|(c, d)| (0..6).map(move |i| format!("{c}.example.com/{d}/{c}-vmss_{i}")))
        .collect();
    ensure!(
        instances == expected,
        "tc_instance points (up=1) for {instances:?}, expected {expected:?}"
    );
    let expected_online: BTreeMap<String, i64> = [
        ("tc-blue.example.com/blue".to_owned(), 6),
        ("tc-green.example.com/green".to_owned(), 6),
    ]
    .into();
    ensure!(
        online == expected_online,
        "highest instances_online per connector {online:?}, expected {expected_online:?}"
    );
    Ok(())
}
