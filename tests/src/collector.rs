//! The `tcpulse-collector` binary as a test peer: a TOML config written for a hub
//! ([`crate::hub::HubInfo`], TLS with the hub's CA), a known `/metrics` port, its log in a
//! file, killed on drop.
//!
//! [`CollectorOptions`] holds the timing keys of `collector/src/config.rs` with short
//! test defaults; `sinks` is appended verbatim (the `[sinks.*]` tables).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};

use crate::hub::{HubInfo, Mode, Policy};
use crate::process::{tail, workspace_binary, ChildProcess};
use crate::services::{free_port, get};

/// Every sample of a collector metric labelled only by partition: `name{partition="p"} v`,
/// read from `/metrics` text, by partition.
pub fn metric_by_partition(text: &str, name: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{name}{{partition=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (p, rest) = rest.split_once('"')?;
            let v = rest.rsplit(' ').next()?.parse().ok()?;
            Some((p.to_string(), v))
        })
        .collect()
}

/// The largest sample of a Prometheus metric `name` (any labels); None when absent.
pub fn metric_max(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
}

/// The config keys a test sets; every duration in humantime form (`"2s"`). A key that is
/// `None` is left out of the file, so the collector uses its own default.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// `name`: the `collector` tag of `tc_pipeline`.
    pub name: String,
    /// `pipeline_interval`.
    pub pipeline_interval: Option<String>,
    /// `aggregate.rollup_interval`.
    pub rollup_interval: Option<String>,
    /// `aggregate.stale_after`.
    pub stale_after: Option<String>,
    /// `aggregate.lateness`.
    pub lateness: Option<String>,
    /// `aggregate.idle_after`.
    pub idle_after: Option<String>,
    /// `checkpoint.interval`.
    pub checkpoint_interval: Option<String>,
    /// `batch.flush_interval`.
    pub flush_interval: Option<String>,
    /// `batch.max_lines`.
    pub batch_max_lines: Option<usize>,
    /// `retry.initial`.
    pub retry_initial: Option<String>,
    /// `retry.max`.
    pub retry_max: Option<String>,
    /// More lines for the `[checkpoint]` table (after `dir` and `interval`), e.g. the Blob
    /// store's ([`blob_checkpoint`]); sub-tables may follow.
    pub checkpoint: String,
    /// The `[sinks.*]` tables (and anything else to append).
    pub sinks: String,
    /// Lines for the `[source.eventhub]` table instead of the Listen connection string
    /// file (e.g. `auth = "client_secret"` and a `[source.eventhub.identity]` table).
    pub eventhub: Option<String>,
    /// Run the binary under libfaketime with this clock offset (`"+40s"`, `"-40s"`): a
    /// machine whose clock is off.
    pub clock_offset: Option<String>,
    /// More lines for the `[source.eventhub.client]` table (after `extra_ca_file`), e.g.
    /// `transport = "websocket"`; a `[source.eventhub.client.proxy]` table may follow.
    pub client: String,
}

impl Default for CollectorOptions {
    /// Short timings, so a test sees rollups, staleness and checkpoints within seconds.
    fn default() -> Self {
        let d = |v: &str| Some(v.to_string());
        CollectorOptions {
            name: "e2e".into(),
            pipeline_interval: d("2s"),
            rollup_interval: d("2s"),
            stale_after: d("4s"),
            lateness: d("1s"),
            idle_after: d("5s"),
            checkpoint_interval: d("1s"),
            flush_interval: d("300ms"),
            batch_max_lines: None,
            retry_initial: d("200ms"),
            retry_max: d("1s"),
            checkpoint: String::new(),
            sinks: String::new(),
            eventhub: None,
            clock_offset: None,
            client: String::new(),
        }
    }
}

/// The `[checkpoint]` lines of the Azure Blob store: the storage connection string from
/// `connection_string_file`, `container`, and the load-balancing `interval` and `expiration`.
pub fn blob_checkpoint(
    connection_string_file: &Path,
    container: &str,
    interval: &str,
    expiration: &str,
) -> String {
    format!(
        "store = \"azure_blob\"\n[checkpoint.azure_blob]\nconnection_string_file = {:?}\ncontainer = {container:?}\n[checkpoint.load_balancing]\ninterval = {interval:?}\nexpiration = {expiration:?}\n",
        connection_string_file.display().to_string()
    )
}

/// `partition → owner` from the `tcpulse_collector_partition_owner` lines of `/metrics`.
pub fn partition_owners(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("tcpulse_collector_partition_owner{partition=\"")?;
            let (p, rest) = rest.split_once('"')?;
            let owner = rest.strip_prefix(",owner=\"")?.split('"').next()?;
            Some((p.to_string(), owner.to_string()))
        })
        .collect()
}

impl CollectorOptions {
    /// The collector's own defaults for every timing key (as a deployment runs it).
    pub fn service_defaults(name: &str) -> Self {
        CollectorOptions {
            name: name.into(),
            pipeline_interval: None,
            rollup_interval: None,
            stale_after: None,
            lateness: None,
            idle_after: None,
            checkpoint_interval: None,
            flush_interval: None,
            batch_max_lines: None,
            retry_initial: None,
            retry_max: None,
            checkpoint: String::new(),
            sinks: String::new(),
            eventhub: None,
            clock_offset: None,
            client: String::new(),
        }
    }
}

/// `key = "value"` for a set key, nothing for `None`.
fn key(name: &str, value: &Option<String>) -> String {
    value
        .as_ref()
        .map(|v| format!("{name} = {v:?}\n"))
        .unwrap_or_default()
}

/// Every checkpoint file under `dir`, whatever its depth: partition → sequence number.
/// Unreadable or half-written files are left out.
pub fn checkpoint_files(dir: &Path) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let v: Option<serde_json::Value> = std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                if let Some(v) = v {
                    if let (Some(part), Some(seq)) =
                        (v["partition"].as_str(), v["sequence_number"].as_i64())
                    {
                        out.insert(part.to_string(), seq);
                    }
                }
            }
        }
    }
    out
}

/// A running `tcpulse-collector run --config <dir>/collector.toml`; SIGKILLed on drop.
/// Restartable on the same config; run 0 logs to `collector.log`, run n to
/// `collector-<n>.log`.
#[derive(Debug)]
pub struct CollectorProcess {
    proc: ChildProcess,
    dir: PathBuf,
    config: PathBuf,
    metrics_port: u16,
    run: usize,
    clock_offset: Option<String>,
}

impl CollectorProcess {
    /// Writes the config into `dir` (created) and starts the binary, reading every
    /// partition of `info`'s first hub over TLS with the Listen policy.
    pub fn start(dir: &Path, info: &HubInfo, opts: &CollectorOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        // The secret goes in a file, never on a command line.
        let cs = dir.join("listen.cs");
        std::fs::write(&cs, info.connection_string(Mode::Tls, Policy::Listen)?)?;
        let metrics_port = free_port()?;
        let config = dir.join("collector.toml");
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let max_lines = opts
            .batch_max_lines
            .map(|n| format!("max_lines = {n}\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                r#"name = {name:?}
{pi}[source.eventhub]
{eventhub}
[source.eventhub.client]
extra_ca_file = {ca}
{client}[checkpoint]
dir = {ckpt}
{ci}{checkpoint}[aggregate]
{ri}{sa}{la}{ia}[batch]
{fi}{max_lines}[retry]
{rin}{rmax}[dead_letter]
path = {dl}
[http]
listen = "127.0.0.1:{metrics_port}"
{sinks}
"#,
                name = opts.name,
                pi = key("pipeline_interval", &opts.pipeline_interval),
                eventhub = opts
                    .eventhub
                    .clone()
                    .unwrap_or_else(|| format!("connection_string_file = {}", q(&cs))),
                ca = q(&info.ca_pem),
                ckpt = q(&dir.join("ckpt")),
                ci = key("interval", &opts.checkpoint_interval),
                ri = key("rollup_interval", &opts.rollup_interval),
                sa = key("stale_after", &opts.stale_after),
                la = key("lateness", &opts.lateness),
                ia = key("idle_after", &opts.idle_after),
                fi = key("flush_interval", &opts.flush_interval),
                rin = key("initial", &opts.retry_initial),
                rmax = key("max", &opts.retry_max),
                dl = q(&dir.join("dead.jsonl")),
                sinks = opts.sinks,
                client = opts.client,
                checkpoint = opts.checkpoint,
            ),
        )?;
        Ok(CollectorProcess {
            proc: launch(dir, &config, 0, opts.clock_offset.as_deref())?,
            clock_offset: opts.clock_offset.clone(),
            dir: dir.to_path_buf(),
            config,
            metrics_port,
            run: 0,
        })
    }

    /// Starts the next run on the same config, checkpoints and `/metrics` port (a live run
    /// is killed first).
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill()?;
        self.run += 1;
        self.proc = launch(
            &self.dir,
            &self.config,
            self.run,
            self.clock_offset.as_deref(),
        )?;
        Ok(())
    }

    /// The config file written.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The collector's log so far: every run's, oldest first.
    pub fn log(&self) -> String {
        (0..=self.run)
            .map(|r| std::fs::read_to_string(log_path(&self.dir, r)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Its checkpoint files: partition → sequence number.
    pub fn checkpoints(&self) -> BTreeMap<String, i64> {
        checkpoint_files(&self.dir.join("ckpt"))
    }

    /// Fails with the log if the process has exited, or was stopped.
    pub fn ensure_running(&mut self) -> Result<()> {
        ensure!(self.proc.is_started(), "collector not running");
        self.proc.ensure_running()
    }

    /// The `/metrics` exposition.
    pub fn metrics(&self) -> Result<String> {
        let (status, body) = get(&format!("http://127.0.0.1:{}/metrics", self.metrics_port))?;
        ensure!(status == 200, "/metrics: {status} {body}");
        Ok(body)
    }

    /// `GET /readyz`: status and body.
    pub fn readyz(&self) -> Result<(u16, String)> {
        get(&format!("http://127.0.0.1:{}/readyz", self.metrics_port))
    }

    /// SIGTERM, then SIGKILL after `grace`; Ok if it exited with success (or was not
    /// running).
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if !self.proc.is_started() {
            return Ok(());
        }
        let status = self.proc.stop(grace)?;
        ensure!(status.success(), "collector exited with {status}");
        Ok(())
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) -> Result<()> {
        self.proc.kill()
    }
}

fn log_path(dir: &Path, run: usize) -> PathBuf {
    match run {
        0 => dir.join("collector.log"),
        n => dir.join(format!("collector-{n}.log")),
    }
}

/// libfaketime's library, or the install command.
fn faketime_library() -> Result<PathBuf> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("libfaketime not found: install the Debian package `faketime` (scripts/test-deps does)"))
}

fn launch(
    dir: &Path,
    config: &Path,
    run: usize,
    clock_offset: Option<&str>,
) -> Result<ChildProcess> {
    let mut cmd = Command::new(workspace_binary("tcpulse-collector")?);
    if let Some(offset) = clock_offset {
        // libfaketime (Debian `faketime`) preloaded into the collector itself (not through
        // the `faketime` wrapper, which forks: a SIGKILL would miss the collector).
        cmd.env("LD_PRELOAD", faketime_library()?)
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_RESET", "1");
    }
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env_remove("TCPULSE_EVENTHUB_CONNECTION_STRING")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    ChildProcess::spawn("tcpulse-collector", cmd, log_path(dir, run))
}
