//! Real external services as child processes on loopback.
//!
//! Each starter ([`influxdb`], [`victoria_metrics`], [`vmalert`], [`alertmanager`]) runs the
//! Debian binary in its own temporary directory, bound to `127.0.0.1` on a free port, waits
//! (bounded) until the service answers its readiness URL, and returns a [`Service`] that kills
//! the process when dropped. [`promtool`] runs Prometheus' rule checker once.
//!
//! These binaries cannot bind port 0 and report it, so a port is chosen by binding a
//! `TcpListener` to `127.0.0.1:0` and dropping it; if another process takes the port in
//! between, the service fails to start and the starter retries with a new port.
//!
//! A missing binary is an error that names the package and the install command; tests fail
//! with it rather than skip.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

/// The install line for every service these helpers start (Debian/Ubuntu).
pub const APT_INSTALL: &str =
    "apt-get install -y --no-install-recommends influxdb victoria-metrics prometheus prometheus-alertmanager tinyproxy faketime";

/// How long a service may take to answer its readiness URL (they start in < 0.2 s here).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Attempts with a fresh port when a service exits during start-up (port taken meanwhile).
const START_ATTEMPTS: usize = 3;

/// Finds `name` on `PATH`, or fails with the package that provides it and how to install it.
pub fn binary(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
    {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("`{name}` not found on PATH: install the Debian package `{package}` (all test services: `{APT_INSTALL}`)")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0 to pick a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A blocking HTTP client for loopback services: short timeouts, and 4xx/5xx returned as
/// responses (not errors) so callers can assert on them.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Status and body of a `GET`.
pub fn get(url: &str) -> Result<(u16, String)> {
    let mut resp = http()
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("read body of GET {url}"))?;
    Ok((resp.status().as_u16(), body))
}

/// Status and body of a `POST` with a text body.
pub fn post(url: &str, content_type: &str, body: &str) -> Result<(u16, String)> {
    let mut resp = http()
        .post(url)
        .header("Content-Type", content_type)
        .send(body)
        .with_context(|| format!("POST {url}"))?;
    let text = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("read body of POST {url}"))?;
    Ok((resp.status().as_u16(), text))
}

/// Status and body of a form-encoded `POST`.
pub fn post_form(url: &str, form: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut resp = http()
        .post(url)
        .send_form(form.iter().copied())
        .with_context(|| format!("POST {url}"))?;
    let text = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("read body of POST {url}"))?;
    Ok((resp.status().as_u16(), text))
}

/// A running service: a child process in its own temporary directory, killed on drop.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
    dir: TempDir,
}

impl Service {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The HTTP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The service's temporary directory (data, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the service's combined stdout/stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Fails with the log tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); log:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Starts `program` with the arguments `args(port, dir)` returns, in `dir`, and waits until
/// `GET http://127.0.0.1:<port><ready_path>` answers 2xx. Retries with a new port if the
/// process exits during start-up (most likely: the port was taken meanwhile).
fn start(
    name: &'static str,
    program: &Path,
    dir: TempDir,
    ready_path: &str,
    mut args: impl FnMut(u16, &Path) -> Result<Vec<String>>,
) -> Result<Service> {
    let mut last_error = anyhow!("{name} did not start");
    for attempt in 1..=START_ATTEMPTS {
        let port = free_port()?;
        let argv = args(port, dir.path())?;
        let log = dir.path().join(format!("{name}.attempt{attempt}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut child = Command::new(program)
            .args(&argv)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let url = format!("http://127.0.0.1:{port}{ready_path}");
        match wait_ready(name, &mut child, &url, &log, READY_TIMEOUT) {
            Ok(()) => {
                return Ok(Service {
                    name,
                    child,
                    port,
                    log,
                    dir,
                })
            }
            Err(e) => {
                let exited = child.try_wait()?.is_some();
                let _ = child.kill();
                let _ = child.wait();
                last_error = e;
                if !exited {
                    break; // running but never ready: another port will not help
                }
            }
        }
    }
    Err(last_error)
}

fn wait_ready(
    name: &str,
    child: &mut Child,
    url: &str,
    log: &Path,
    timeout: Duration,
) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(500)))
        .build()
        .into();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited during start-up ({status}); log:\n{}",
                log_tail(log)
            );
        }
        if let Ok(resp) = agent.get(url).call() {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "{name} not ready at {url} after {timeout:?}; log:\n{}",
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// InfluxDB 1.x (`influxd`, Debian `influxdb`): HTTP API on the returned port; the RPC port is
/// also on 127.0.0.1, reporting, monitoring and continuous queries are off, all data in the
/// temp dir. Ready when `/ping` answers.
pub fn influxdb() -> Result<Service> {
    let program = binary("influxd", "influxdb")?;
    let dir = TempDir::new()?;
    start("influxd", &program, dir, "/ping", |http_port, dir| {
        let rpc_port = free_port()?;
        let ifql_port = free_port()?;
        let d = dir.display();
        let config = format!(
            r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  pprof-enabled = false
[ifql]
  enabled = false
  bind-address = "127.0.0.1:{ifql_port}"
[continuous_queries]
  enabled = false
[logging]
  level = "warn"
"#
        );
        let path = dir.join("influxdb.conf");
        std::fs::write(&path, config)?;
        Ok(vec![
            "run".into(),
            "-config".into(),
            path.display().to_string(),
        ])
    })
}

/// VictoriaMetrics single node (Debian `victoria-metrics`): ingests line protocol on
/// `/api/v2/write` and `/write`, answers PromQL on `/api/v1/query`. `-search.latencyOffset=0s`
/// so queries see fresh samples; new series still need `GET /internal/force_flush`.
pub fn victoria_metrics() -> Result<Service> {
    let program = binary("victoria-metrics", "victoria-metrics")?;
    let dir = TempDir::new()?;
    start("victoria-metrics", &program, dir, "/health", |port, dir| {
        Ok(vec![
            format!("-storageDataPath={}", dir.join("data").display()),
            format!("-httpListenAddr=127.0.0.1:{port}"),
            "-search.latencyOffset=0s".into(),
            "-retentionPeriod=1d".into(),
            "-loggerLevel=WARN".into(),
        ])
    })
}

/// vmalert (Debian `victoria-metrics`) evaluating `rule_files` against `datasource_url` every
/// `evaluation_interval`, notifying `notifier_url` (an Alertmanager).
pub fn vmalert(
    datasource_url: &str,
    notifier_url: &str,
    rule_files: &[PathBuf],
    evaluation_interval: Duration,
) -> Result<Service> {
    let program = binary("vmalert", "victoria-metrics")?;
    let dir = TempDir::new()?;
    let interval = format!("{}ms", evaluation_interval.as_millis());
    start("vmalert", &program, dir, "/health", |port, _dir| {
        let mut args = vec![
            format!("-httpListenAddr=127.0.0.1:{port}"),
            format!("-datasource.url={datasource_url}"),
            format!("-notifier.url={notifier_url}"),
            format!("-evaluationInterval={interval}"),
            "-loggerLevel=WARN".into(),
        ];
        args.extend(rule_files.iter().map(|f| format!("-rule={}", f.display())));
        Ok(args)
    })
}

/// Prometheus Alertmanager (Debian `prometheus-alertmanager`) with one no-op receiver, fast
/// grouping, and clustering off (`--cluster.listen-address=`; otherwise it binds
/// 0.0.0.0:9094). Alerts are read back from `/api/v2/alerts`.
pub fn alertmanager() -> Result<Service> {
    let program = binary("prometheus-alertmanager", "prometheus-alertmanager")?;
    let dir = TempDir::new()?;
    let config = "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: blackhole\n";
    std::fs::write(dir.path().join("alertmanager.yml"), config)?;
    start("alertmanager", &program, dir, "/-/ready", |port, dir| {
        Ok(vec![
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".into(),
            "--log.level=warn".into(),
        ])
    })
}

/// Runs `promtool <args>` in `cwd` and returns its output (check `status` yourself).
pub fn promtool(args: &[&str], cwd: &Path) -> Result<Output> {
    let program = binary("promtool", "prometheus")?;
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .context("run promtool")
}
