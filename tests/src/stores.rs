//! Time-series stores for the collector tests, beside [`crate::services`]:
//!
//! - [`RestartableVictoriaMetrics`]: a VictoriaMetrics that keeps its port and data
//!   directory across [`stop`](RestartableVictoriaMetrics::stop) (SIGTERM, so acknowledged
//!   samples are flushed) and [`start`](RestartableVictoriaMetrics::start), for "store down
//!   for a while" tests;
//! - [`vm_export`]: every sample of the series matching a selector, after
//!   `/internal/force_flush`;
//! - [`influx_query`]: an InfluxQL query against InfluxDB 1.x, timestamps in ms.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::services::{binary, free_port, get, post_form, READY_TIMEOUT};

/// VictoriaMetrics that can be stopped and started again on the same port and data.
#[derive(Debug)]
pub struct RestartableVictoriaMetrics {
    program: PathBuf,
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl RestartableVictoriaMetrics {
    /// Starts it on a free loopback port with a fresh data directory.
    pub fn new() -> Result<Self> {
        let program = binary("victoria-metrics", "victoria-metrics")?;
        let mut vm = RestartableVictoriaMetrics {
            program,
            dir: TempDir::new()?,
            port: free_port()?,
            child: None,
        };
        vm.start()?;
        Ok(vm)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process (same port, same data) and waits until `/health` answers.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("vm.log"))?;
        let child = Command::new(&self.program)
            .args([
                format!(
                    "-storageDataPath={}",
                    self.dir.path().join("data").display()
                ),
                format!("-httpListenAddr=127.0.0.1:{}", self.port),
                "-search.latencyOffset=0s".into(),
                "-retentionPeriod=1d".into(),
                "-loggerLevel=WARN".into(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawn {}", self.program.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = get(&format!("{}/health", self.url())) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "victoria-metrics exited on start ({status}); log: {}",
                        self.log_tail()
                    );
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "victoria-metrics not ready after {READY_TIMEOUT:?}; log: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops the process with SIGTERM (it flushes what it acknowledged) and waits.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            if !status.success() {
                let _ = child.kill();
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("vm.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RestartableVictoriaMetrics {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One exported series: labels (with `__name__`) and its samples `(ms, value)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Labels, `__name__` included.
    pub labels: BTreeMap<String, String>,
    /// Samples in time order.
    pub samples: Vec<(i64, f64)>,
}

/// Every sample of the series matching `selector` (e.g. `{__name__=~"tc_.*"}`), after a
/// forced flush so new series are visible.
pub fn vm_export(url: &str, selector: &str) -> Result<Vec<Series>> {
    vm_export_form(url, &[("match[]", selector)])
}

/// The newest sample of the series matching `selector`: `(ms, value)`.
pub fn vm_latest(url: &str, selector: &str) -> Result<Option<(i64, f64)>> {
    Ok(vm_export(url, selector)?
        .into_iter()
        .filter_map(|s| s.samples.last().copied())
        .max_by_key(|s| s.0))
}

/// As [`vm_export`], up to `end_s` (Unix seconds) instead of now: `/api/v1/export` stops
/// at now by default, and the points of a clock running fast are stamped ahead of it.
pub fn vm_export_until(url: &str, selector: &str, end_s: i64) -> Result<Vec<Series>> {
    let end = end_s.to_string();
    vm_export_form(url, &[("match[]", selector), ("start", "0"), ("end", &end)])
}

fn vm_export_form(url: &str, form: &[(&str, &str)]) -> Result<Vec<Series>> {
    let (status, body) = get(&format!("{url}/internal/force_flush"))?;
    if status != 200 {
        bail!("force_flush: {status} {body}");
    }
    let (status, body) = post_form(&format!("{url}/api/v1/export"), form)?;
    if status != 200 {
        bail!("export: {status} {body}");
    }
    let mut out = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("export line {line}"))?;
        let labels = v["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let ts = v["timestamps"].as_array().cloned().unwrap_or_default();
        let vals = v["values"].as_array().cloned().unwrap_or_default();
        let mut samples: Vec<(i64, f64)> = ts
            .iter()
            .zip(vals.iter())
            .map(|(t, v)| {
                (
                    t.as_i64().unwrap_or_default(),
                    v.as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect();
        samples.sort_by_key(|s| s.0);
        out.push(Series { labels, samples });
    }
    Ok(out)
}

/// Runs InfluxQL `q` against database `db` of an InfluxDB 1.x at `url` (timestamps as ms
/// since the epoch) and returns the JSON answer.
pub fn influx_query(url: &str, db: &str, q: &str) -> Result<serde_json::Value> {
    let (status, body) = post_form(
        &format!("{url}/query"),
        &[("db", db), ("q", q), ("epoch", "ms")],
    )?;
    if status != 200 {
        bail!("query {q:?}: {status} {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    if let Some(err) = v["results"][0]["error"].as_str() {
        bail!("query {q:?}: {err}");
    }
    Ok(v)
}

/// The rows of an InfluxQL answer as `(measurement, column → value)` maps.
pub fn influx_rows(
    answer: &serde_json::Value,
) -> Vec<(String, BTreeMap<String, serde_json::Value>)> {
    let mut rows = Vec::new();
    for result in answer["results"].as_array().into_iter().flatten() {
        for series in result["series"].as_array().into_iter().flatten() {
            let name = series["name"].as_str().unwrap_or_default().to_owned();
            let columns: Vec<String> = series["columns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c.as_str().unwrap_or_default().to_owned())
                .collect();
            for values in series["values"].as_array().into_iter().flatten() {
                let row = columns
                    .iter()
                    .cloned()
                    .zip(values.as_array().into_iter().flatten().cloned())
                    .collect();
                rows.push((name.clone(), row));
            }
        }
    }
    rows
}
