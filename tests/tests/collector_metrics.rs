//! The running `tcpulse-collector` binary's `/metrics` against the Prometheus conventions
//! (issue 13): `tcpulse_build_info{version,commit}`, the standard process metrics, counter
//! and unit naming, and `promtool check metrics` (Debian `prometheus`), the official linter.
//!
//! The collector reads a file source that is its own stdin, so it runs for as long as the
//! test holds the pipe open and stops cleanly at end of file. Linux only: the process
//! metrics come from `/proc`.

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use tcpulse_tests::process::workspace_binary;
use tcpulse_tests::services::{self, free_port};

/// The `Accept` header Prometheus 2.x scrapes with.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A collector reading one event from its stdin, still running; killed on drop.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    dir: tempfile::TempDir,
    started_at: f64,
}

impl Running {
    /// Starts the binary, feeds it one event and waits until `/metrics` counts it.
    fn start() -> Result<Running> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let p = |name: &str| dir.path().join(name);
        let started_at = unix_now();
        let mut child = Command::new(workspace_binary("tcpulse-collector")?)
            .arg("run")
            .arg("--source-file")
            .arg("/dev/stdin")
            .arg("--points-file")
            .arg(p("points.lp"))
            .arg("--checkpoint-dir")
            .arg(p("checkpoints"))
            .arg("--dead-letter-path")
            .arg(p("dead-letters.jsonl"))
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p("collector.log"))?)
            .spawn()
            .context("spawn tcpulse-collector")?;
        let mut stdin = child.stdin.take().context("collector stdin")?;
        let event = std::fs::read_to_string(root().join("schema/fixtures/valid_full.json"))?;
        writeln!(stdin, "{}", event.replace('\n', ""))?;
        let mut running = Running {
            child,
            stdin: Some(stdin),
            port,
            dir,
            started_at,
        };
        running.wait_for_event()?;
        Ok(running)
    }

    fn wait_for_event(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("collector exited ({status}); log:\n{}", self.log());
            }
            if let Ok((_, body)) = self.scrape("*/*") {
                if body.contains("\ntcpulse_collector_events_total{partition=\"0\"} 1\n") {
                    return Ok(());
                }
            }
            ensure!(
                Instant::now() < deadline,
                "the event never reached /metrics; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET /metrics` with `accept`: the content type and the body.
    fn scrape(&self, accept: &str) -> Result<(String, String)> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let mut resp = services::http()
            .get(&url)
            .header("Accept", accept)
            .call()
            .with_context(|| format!("GET {url}"))?;
        ensure!(resp.status() == 200, "GET {url}: {}", resp.status());
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((content_type, resp.body_mut().read_to_string()?))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("collector.log")).unwrap_or_default()
    }

    /// Closes stdin (end of the source) and expects a clean exit.
    fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "collector exited {status}:\n{}",
                    self.log()
                );
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "collector did not stop at end of input"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Unlabelled samples (`name value`) of a text exposition.
fn plain_samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The commit the binary must report: `$TCPULSE_GIT_COMMIT` if the build had it, else
/// `git rev-parse --short=12 HEAD` of this checkout, else `unknown`.
fn expected_commit() -> String {
    if let Ok(c) = std::env::var("TCPULSE_GIT_COMMIT") {
        if !c.trim().is_empty() {
            return c.trim().to_owned();
        }
    }
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

#[test]
fn collector_metrics_build_info_names_the_version_and_the_commit_built_from() -> Result<()> {
    let c = Running::start()?;
    let (_, text) = c.scrape("*/*")?;
    let want = format!(
        "tcpulse_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        expected_commit()
    );
    ensure!(
        text.lines().any(|l| l == want),
        "want `{want}` (a stale binary? `cargo build --workspace --all-features --bins`); got:\n{}",
        text.lines()
            .filter(|l| l.contains("build_info"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    c.stop()
}

#[test]
fn collector_metrics_process_metrics_are_present_and_plausible() -> Result<()> {
    let c = Running::start()?;
    let (_, text) = c.scrape("*/*")?;
    let s = plain_samples(&text);
    let get = |name: &str| {
        s.get(name)
            .copied()
            .with_context(|| format!("{name} not in /metrics:\n{text}"))
    };
    let rss = get("process_resident_memory_bytes")?;
    let vsz = get("process_virtual_memory_bytes")?;
    let fds = get("process_open_fds")?;
    let max_fds = get("process_max_fds")?;
    let cpu = get("process_cpu_seconds_total")?;
    let start = get("process_start_time_seconds")?;
    ensure!(rss > 1024.0 * 1024.0, "RSS {rss} bytes: not in bytes?");
    ensure!(vsz >= rss, "virtual {vsz} < resident {rss}");
    ensure!(fds > 0.0 && fds <= max_fds, "open fds {fds}, max {max_fds}");
    ensure!(cpu >= 0.0, "cpu seconds {cpu}");
    // Generous: /proc/stat's boot time has whole seconds and follows clock adjustments;
    // a unit error (ticks for seconds) would be off by hours.
    let now = unix_now();
    ensure!(
        start >= c.started_at - 60.0 && start <= now + 60.0,
        "start time {start}, spawned at {}",
        c.started_at
    );
    ensure!(
        text.contains("# TYPE process_cpu_seconds_total counter\n"),
        "{text}"
    );
    c.stop()
}

/// Naming problems in a 0.0.4 exposition: a sample without HELP or TYPE, a counter not
/// ending in `_total` (or a non-counter that does), a non-base unit in a name.
fn naming_problems(text: &str) -> Result<Vec<String>> {
    let mut help = std::collections::BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut problems = Vec::new();
    let bad_unit = regex::Regex::new(
        r"_(ms|msec|millis|milliseconds|us|micros|microseconds|ns|nanoseconds|minutes|hours|days|kb|kib|kilobytes|mb|mib|megabytes|gb|gib|percent)(_|$)",
    )?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap_or((rest, ""));
            if h.trim().is_empty() {
                problems.push(format!("{name}: empty help"));
            }
            help.insert(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            if (kind == "counter") != name.ends_with("_total") {
                problems.push(format!("{name}: a {kind} (only counters end in _total)"));
            }
            if bad_unit.is_match(name) {
                problems.push(format!("{name}: not in base units"));
            }
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        if !types.contains_key(family) || !help.contains(family) {
            problems.push(format!("{name}: sample without HELP and TYPE"));
        }
    }
    Ok(problems)
}

#[test]
fn collector_metrics_pass_promtool_and_the_naming_lint_in_both_formats() -> Result<()> {
    let c = Running::start()?;
    let (content_type, text) = c.scrape("*/*")?;
    ensure!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let problems = naming_problems(&text)?;
    ensure!(problems.is_empty(), "{problems:#?}\n{text}");

    // promtool reads the 0.0.4 format from stdin; silence and exit 0 mean no finding.
    let mut promtool = Command::new(services::binary("promtool", "prometheus")?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    promtool
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = promtool.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );

    // Prometheus asks for OpenMetrics and gets it: the same samples, families without
    // `_total` in their metadata, `# EOF` at the end.
    let (content_type, om) = c.scrape(PROMETHEUS_ACCEPT)?;
    ensure!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    ensure!(om.ends_with("# EOF\n"), "{om}");
    ensure!(
        om.contains("# TYPE tcpulse_collector_events counter\ntcpulse_collector_events_total{partition=\"0\"} 1\n"),
        "{om}"
    );
    c.stop()
}

#[test]
fn collector_metrics_naming_lint_flags_what_it_is_for() -> Result<()> {
    let bad = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests 1\n\
               # HELP a_latency_ms Latency.\n# TYPE a_latency_ms gauge\na_latency_ms 3\n\
               # HELP a_up_total Up.\n# TYPE a_up_total gauge\na_up_total 1\n\
               a_orphan 2\n";
    let problems = naming_problems(bad)?;
    for want in [
        "a_requests: a counter",
        "a_latency_ms: not in base units",
        "a_up_total: a gauge",
        "a_orphan: sample without HELP and TYPE",
    ] {
        ensure!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want} not flagged: {problems:#?}"
        );
    }
    Ok(())
}
