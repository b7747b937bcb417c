//! The whole pipeline with real components: `tcpulse-agent` binaries → the hub (in-process
//! or the `tcpulse-hub` binary) → `tcpulse-collector` binary → VictoriaMetrics / InfluxDB 1.6
//! / a line-protocol file → vmalert → Alertmanager, all on loopback.
//!
//! Agents use the `file` source (a bare call count in a file the test writes), so every
//! value the stores hold can be checked against what the test made the agents say, and
//! against the events the hub really carried (read back with our `Consumer` from earliest).
//! Health collection is off (it only adds host noise). Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use tcpulse_eventhub::client::{
    ClientConfig, ClientOptions, Consumer, ConsumerOptions, ReceivedEvent, StartPosition,
};
use tcpulse_tests::collector::{checkpoint_files, metric_by_partition};
use tcpulse_tests::hub::{HubInfo, HubOptions, HubProcess, Mode, Policy, TestHub};
use tcpulse_tests::python::{profile_dir, run_script};
use tcpulse_tests::services::{self, free_port, get, post_form};
use tcpulse_tests::stores::{influx_query, influx_rows, vm_export, RestartableVictoriaMetrics};

const REGION: &str = "westeurope";

// ---------------------------------------------------------------------------------------
// child processes
// ---------------------------------------------------------------------------------------

fn binary(name: &str) -> Result<PathBuf> {
    let p = profile_dir()?.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --all-features --bins` (scripts/test does)",
        p.display()
    );
    Ok(p)
}

/// A child process killed (SIGKILL) on drop, its stdout+stderr in `log`.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    fn sigkill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait up to `grace` (SIGKILL after it, reported as an error).
    fn sigterm(&mut self, grace: Duration) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()?;
        let t = Instant::now();
        while c.try_wait()?.is_none() {
            if t.elapsed() > grace {
                let _ = c.kill();
                let _ = c.wait();
                bail!(
                    "{} did not stop within {grace:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn ensure_running(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("{} exited ({status}); log:\n{}", self.name, self.log_tail());
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One simulated Teams Connector instance: an agent reading its call count from a file.
#[derive(Debug)]
struct Agent {
    instance: String,
    calls_file: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    proc: Option<Proc>,
    runs: usize,
}

impl Agent {
    /// Writes the agent's files under `dir/<instance>` and starts it.
    fn start(
        dir: &Path,
        info: &HubInfo,
        connector: &str,
        deployment: &str,
        instance: &str,
        calls: u32,
    ) -> Result<Agent> {
        let d = dir.join(instance);
        std::fs::create_dir_all(&d)?;
        let calls_file = d.join("calls");
        std::fs::write(&calls_file, format!("{calls}\n"))?;
        let cs = d.join("send.cs");
        std::fs::write(&cs, info.connection_string(Mode::Tls, Policy::Send)?)?;
        let config = d.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\ntype = \"file\"\npath = {:?}\n[health]\nenabled = false\n[publish]\nretry_initial = \"200ms\"\nretry_max = \"1s\"\n",
                calls_file.display().to_string()
            ),
        )?;
        let spool = d.join("spool");
        let args = [
            "run",
            "--config",
            &config.display().to_string(),
            "--connector",
            connector,
            "--deployment",
            deployment,
            "--region",
            REGION,
            "--scaleset",
            &format!("{connector}-vmss"),
            "--instance",
            instance,
            "--interval",
            "1s",
            "--poll-interval",
            "200ms",
            "--spool-dir",
            &spool.display().to_string(),
            "--connection-string-file",
            &cs.display().to_string(),
            "--eventhub-ca-file",
            &info.ca_pem.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        let mut a = Agent {
            instance: instance.to_string(),
            calls_file,
            args,
            dir: d,
            proc: None,
            runs: 0,
        };
        a.launch()?;
        Ok(a)
    }

    fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new(binary("tcpulse-agent")?);
        cmd.args(&self.args)
            .env_remove("TCPULSE_EVENTHUB_CONNECTION_STRING")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let log = self.dir.join(format!("agent-{}.log", self.runs));
        self.runs += 1;
        self.proc = Some(Proc::spawn(
            &format!("tcpulse-agent {}", self.instance),
            cmd,
            log,
        )?);
        Ok(())
    }

    fn set_calls(&self, calls: u32) -> Result<()> {
        // Write-then-rename so the agent never reads a half-written number.
        let tmp = self.calls_file.with_extension("tmp");
        std::fs::write(&tmp, format!("{calls}\n"))?;
        std::fs::rename(&tmp, &self.calls_file)?;
        Ok(())
    }

    fn proc(&mut self) -> Result<&mut Proc> {
        self.proc
            .as_mut()
            .ok_or_else(|| anyhow!("agent {} not running", self.instance))
    }

    fn logs(&self) -> String {
        (0..self.runs)
            .map(|r| {
                std::fs::read_to_string(self.dir.join(format!("agent-{r}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

/// The collector binary with a TOML config the test writes; its `/metrics` port is known.
#[derive(Debug)]
struct Collector {
    config: PathBuf,
    metrics_port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
    runs: usize,
}

impl Collector {
    /// `sinks` is the TOML of the `[sinks.*]` tables (and anything else to append).
    fn start(
        dir: &Path,
        info: &HubInfo,
        sinks: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<Collector> {
        Collector::start_with(dir, info, sinks, extra_env, "1s", 5000)
    }

    /// As [`Collector::start`], checkpointing at most every `checkpoint_interval`, with
    /// batches of at most `batch_max_lines` lines.
    fn start_with(
        dir: &Path,
        info: &HubInfo,
        sinks: &str,
        extra_env: &[(&str, &str)],
        checkpoint_interval: &str,
        batch_max_lines: usize,
    ) -> Result<Collector> {
        let d = dir.join("collector");
        std::fs::create_dir_all(&d)?;
        let cs = d.join("listen.cs");
        std::fs::write(&cs, info.connection_string(Mode::Tls, Policy::Listen)?)?;
        let metrics_port = free_port()?;
        let config = d.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                r#"name = "e2e"
pipeline_interval = "2s"
[source.eventhub]
connection_string_file = {cs:?}
[source.eventhub.client]
extra_ca_file = {ca:?}
[checkpoint]
dir = {ckpt:?}
interval = "{checkpoint_interval}"
[aggregate]
rollup_interval = "2s"
stale_after = "4s"
lateness = "1s"
idle_after = "5s"
[batch]
flush_interval = "300ms"
max_lines = {batch_max_lines}
[retry]
initial = "200ms"
max = "1s"
[dead_letter]
path = {dl:?}
[http]
listen = "127.0.0.1:{metrics_port}"
{sinks}
"#,
                cs = cs.display().to_string(),
                ca = info.ca_pem.display().to_string(),
                ckpt = d.join("ckpt").display().to_string(),
                dl = d.join("dead.jsonl").display().to_string(),
            ),
        )?;
        let mut c = Collector {
            config,
            metrics_port,
            dir: d,
            proc: None,
            runs: 0,
        };
        c.launch(extra_env)?;
        Ok(c)
    }

    fn launch(&mut self, extra_env: &[(&str, &str)]) -> Result<()> {
        let mut cmd = Command::new(binary("tcpulse-collector")?);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env_remove("TCPULSE_EVENTHUB_CONNECTION_STRING")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let log = self.dir.join(format!("collector-{}.log", self.runs));
        self.runs += 1;
        self.proc = Some(Proc::spawn("tcpulse-collector", cmd, log)?);
        Ok(())
    }

    fn proc(&mut self) -> Result<&mut Proc> {
        self.proc
            .as_mut()
            .ok_or_else(|| anyhow!("collector not running"))
    }

    fn logs(&self) -> String {
        (0..self.runs)
            .map(|r| {
                std::fs::read_to_string(self.dir.join(format!("collector-{r}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    fn metrics(&self) -> Result<String> {
        let (status, body) = get(&format!("http://127.0.0.1:{}/metrics", self.metrics_port))?;
        ensure!(status == 200, "/metrics: {status} {body}");
        Ok(body)
    }

    /// Every checkpoint file: partition → sequence number.
    fn checkpoints(&self) -> BTreeMap<String, i64> {
        checkpoint_files(&self.dir.join("ckpt"))
    }
}

/// Sum over partitions of a Prometheus gauge `name{partition=...}`; None when absent.
fn metric_max(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
}

// ---------------------------------------------------------------------------------------
// reading the hub back
// ---------------------------------------------------------------------------------------

fn client_config(info: &HubInfo) -> Result<ClientConfig> {
    Ok(ClientConfig::from_connection_string(
        info.connection_string(Mode::Tls, Policy::Listen)?,
        None,
        ClientOptions {
            extra_ca_file: Some(info.ca_pem.clone()),
            connect_timeout_secs: 10,
            operation_timeout_secs: 10,
            ..Default::default()
        },
    )?)
}

/// Every event of every partition, from earliest, until each partition has been quiet for
/// `idle` (bounded by `max` overall).
async fn read_all(info: &HubInfo, idle: Duration, max: Duration) -> Result<Vec<ReceivedEvent>> {
    let deadline = Instant::now() + max;
    let mut out = Vec::new();
    for p in info.partition_ids() {
        let mut opts = ConsumerOptions::new(p.clone());
        opts.start = StartPosition::Earliest;
        let mut c = tokio::time::timeout(
            Duration::from_secs(20),
            Consumer::connect(client_config(info)?, opts),
        )
        .await
        .map_err(|_| anyhow!("consumer connect to partition {p} timed out"))??;
        loop {
            if Instant::now() > deadline {
                bail!("reading the hub back took longer than {max:?}");
            }
            match tokio::time::timeout(idle, c.recv()).await {
                Ok(ev) => out.push(ev.with_context(|| format!("recv on partition {p}"))?),
                Err(_) => break,
            }
        }
        c.close().await;
    }
    Ok(out)
}

/// A status event body and its routing.
#[derive(Debug, Clone)]
struct Status {
    partition: String,
    sequence_number: i64,
    enqueued_ms: i64,
    body: Value,
}

impl Status {
    fn instance(&self) -> &str {
        self.body["instance"].as_str().unwrap_or_default()
    }
    fn connector(&self) -> &str {
        self.body["connector"].as_str().unwrap_or_default()
    }
    fn boot(&self) -> &str {
        self.body["boot"].as_str().unwrap_or_default()
    }
    fn seq(&self) -> u64 {
        self.body["seq"].as_u64().unwrap_or(u64::MAX)
    }
    fn calls(&self) -> i64 {
        self.body["calls"]["call_count"].as_i64().unwrap_or(-1)
    }
    fn time_ms(&self) -> i64 {
        let t = self.body["time"].as_str().unwrap_or_default();
        tcpulse_schema::Timestamp::parse_rfc3339(t)
            .map(|t| t.unix_millis())
            .unwrap_or(-1)
    }
}

fn statuses(events: &[ReceivedEvent]) -> Result<Vec<Status>> {
    events
        .iter()
        .map(|e| {
            Ok(Status {
                partition: e.partition_id.clone(),
                sequence_number: e.sequence_number,
                enqueued_ms: ms(e.enqueued_time),
                body: serde_json::from_slice(&e.body).context("event body is not JSON")?,
            })
        })
        .collect()
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    ms(SystemTime::now())
}

/// Polls `cond` every 250 ms until it holds or `timeout` passes.
async fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match cond() {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------
// agent → hub → Python SDK
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_publish_events_reach_the_python_sdk_with_schema_fields_intact() -> Result<()> {
    let t0 = Instant::now();
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let connector = "tc-sdk.example.com";
    let mut agent = Agent::start(tmp.path(), &info, connector, "green", "tc-sdk-vmss_7", 11)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    agent.set_calls(12)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.proc()?.ensure_running()?;
    agent.proc()?.sigterm(Duration::from_secs(15))?;

    let r = run_script(
        "receive",
        json!({
            "conn": info.conn(Mode::Tls, Policy::Listen)?,
            "position": {"kind": "earliest"},
            "expect": null,
            "idle_seconds": 3.0,
            "max_seconds": 30,
            "settle_seconds": 0,
        }),
        Duration::from_secs(90),
    )
    .await?;
    let mut events: Vec<Value> = r["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["events"].as_array().cloned().unwrap_or_default())
        .collect();
    ensure!(
        events.len() >= 5,
        "the SDK received {} events from an agent that ran ~6 s at 1 s intervals; agent log:\n{}",
        events.len(),
        agent.logs()
    );
    let partitions: BTreeSet<String> = events
        .iter()
        .map(|e| e["partition_id"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(
        partitions.len() == 1,
        "partition key = connector puts one connector's events in one partition: {partitions:?}"
    );
    events.sort_by_key(|e| e["sequence_number"].as_i64());
    let mut boot = None;
    for (i, e) in events.iter().enumerate() {
        ensure!(e["partition_key"] == connector, "partition key: {e}");
        ensure!(e["content_type"] == "application/json", "content type: {e}");
        ensure!(
            e["properties"]["schema"] == "tcpulse.status.v1",
            "application property schema: {e}"
        );
        let body: Value = serde_json::from_str(e["body"].as_str().unwrap_or_default())
            .with_context(|| format!("body is not JSON: {e}"))?;
        ensure!(body["schema"] == "tcpulse.status.v1", "{body}");
        ensure!(body["connector"] == connector, "{body}");
        ensure!(body["deployment"] == "green", "{body}");
        ensure!(body["region"] == REGION, "{body}");
        ensure!(body["scaleset"] == format!("{connector}-vmss"), "{body}");
        ensure!(body["instance"] == "tc-sdk-vmss_7", "{body}");
        ensure!(body["state"] == "active", "{body}");
        ensure!(body["calls"]["max_calls"] == 16, "{body}");
        let calls = body["calls"]["call_count"].as_i64().unwrap_or(-1);
        ensure!(calls == 11 || calls == 12, "call_count {calls}: {body}");
        let b = body["boot"].as_str().unwrap_or_default().to_string();
        ensure!(uuid::Uuid::parse_str(&b).is_ok(), "boot is a UUID: {body}");
        ensure!(
            boot.get_or_insert(b.clone()) == &b,
            "one boot per agent start"
        );
        let seq = body["seq"].as_u64().ok_or_else(|| anyhow!("seq: {body}"))?;
        let first = events[0]["body"].as_str().unwrap_or_default();
        let first_seq = serde_json::from_str::<Value>(first)?["seq"]
            .as_u64()
            .unwrap_or(0);
        ensure!(
            seq == first_seq + i as u64,
            "seq rises by one per event: {seq} at {i}"
        );
        let t = tcpulse_schema::Timestamp::parse_rfc3339(body["time"].as_str().unwrap_or_default())
            .map_err(|_| anyhow!("time is RFC 3339: {body}"))?;
        let enq = e["enqueued_time_ms"].as_i64().unwrap_or(0);
        ensure!(
            (t.unix_millis() - enq).abs() < 10_000,
            "sample time {} near enqueue time {enq}",
            t.unix_millis()
        );
        ensure!(body["agent"]["version"].is_string(), "{body}");
    }
    let last_calls: Value = serde_json::from_str(events.last().unwrap()["body"].as_str().unwrap())?;
    ensure!(
        last_calls["calls"]["call_count"] == 12,
        "the changed count reached the SDK"
    );
    hub.shutdown().await;
    eprintln!(
        "agent → hub → SDK: {} events intact in {:?}",
        events.len(),
        t0.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// agent spool across a hub outage and a SIGKILL
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_spool_survives_hub_outage_and_sigkill() -> Result<()> {
    let t0 = Instant::now();
    let mut hub = HubProcess::spawn(HubOptions {
        hubs: vec![("tcpulse".into(), 2)],
        plain: false,
        ..HubOptions::default()
    })
    .await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let connector = "tc-outage.example.com";
    let mut agents = vec![
        Agent::start(tmp.path(), &info, connector, "blue", "o1", 3)?,
        Agent::start(tmp.path(), &info, connector, "blue", "o2", 4)?,
    ];
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Outage: the hub stops; the agents keep reporting into their spools.
    hub.stop(Duration::from_secs(15)).await?;
    let outage_start = now_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    agents[0].set_calls(5)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // o1 crashes during the outage and comes back with the same spool.
    agents[0].proc()?.sigkill()?;
    let killed_at = now_ms();
    tokio::time::sleep(Duration::from_secs(1)).await;
    agents[0].launch()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for a in &mut agents {
        a.proc()?.ensure_running()?;
    }
    hub.restart().await?;
    let outage_end = now_ms();
    ensure!(hub.info.amqps == info.amqps, "same port after restart");
    // Time to replay the spool, then a clean stop (flushes what is left).
    tokio::time::sleep(Duration::from_secs(6)).await;
    for a in &mut agents {
        a.proc()?.sigterm(Duration::from_secs(20))?;
    }
    let stopped = now_ms();

    let events =
        statuses(&read_all(&hub.info, Duration::from_secs(2), Duration::from_secs(60)).await?)?;
    let mut per: BTreeMap<(String, String), Vec<&Status>> = BTreeMap::new();
    for e in &events {
        ensure!(e.connector() == connector, "{:?}", e.body);
        per.entry((e.instance().to_string(), e.boot().to_string()))
            .or_default()
            .push(e);
    }
    let mut report = Vec::new();
    for inst in ["o1", "o2"] {
        let boots: Vec<_> = per.iter().filter(|((i, _), _)| i == inst).collect();
        let want_boots = if inst == "o1" { 2 } else { 1 };
        ensure!(
            boots.len() == want_boots,
            "{inst}: {} boots seen, {want_boots} expected; agent log:\n{}",
            boots.len(),
            agents[if inst == "o1" { 0 } else { 1 }].logs()
        );
        let mut all_seqs = Vec::new();
        for ((_, boot), evs) in &boots {
            // In partition order (sequence number), seq must be contiguous and unique.
            let mut evs: Vec<&Status> = evs.to_vec();
            evs.sort_by_key(|e| (e.partition.clone(), e.sequence_number));
            let seqs: Vec<u64> = evs.iter().map(|e| e.seq()).collect();
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            ensure!(
                sorted.len() == seqs.len(),
                "{inst} boot {boot}: an event delivered twice: {seqs:?}"
            );
            ensure!(
                seqs == sorted,
                "{inst} boot {boot}: out of order in the partition: {seqs:?}"
            );
            ensure!(
                sorted.windows(2).all(|w| w[1] == w[0] + 1),
                "{inst} boot {boot}: gap in seq: {seqs:?}"
            );
            let times: Vec<i64> = evs.iter().map(|e| e.time_ms()).collect();
            all_seqs.push((
                sorted[0],
                *sorted.last().unwrap(),
                times[0],
                *times.last().unwrap(),
            ));
        }
        all_seqs.sort_unstable();
        // Events sampled during the outage were delivered (spooled, then replayed).
        let during: usize = boots
            .iter()
            .flat_map(|(_, evs)| evs.iter())
            .filter(|e| e.time_ms() > outage_start + 1_000 && e.time_ms() < outage_end - 1_000)
            .count();
        ensure!(
            during >= 5,
            "{inst}: only {during} events sampled during the ~11 s outage were delivered"
        );
        // Nothing missing across the whole run: about one event a second.
        let covered = all_seqs.iter().map(|(a, b, _, _)| b - a + 1).sum::<u64>();
        if inst == "o1" {
            // The first boot's events reach up to the SIGKILL (the spool kept them); the
            // second boot's seq starts above the first's (it read the spool's highest).
            let (first, second) = (all_seqs[0], all_seqs[1]);
            ensure!(
                second.0 > first.1,
                "o1 restarted with seq {} not above the spooled {}",
                second.0,
                first.1
            );
            ensure!(
                first.3 >= killed_at - 2_500,
                "o1's first boot: last delivered sample at {} but it ran until {killed_at}",
                first.3
            );
            ensure!(
                events
                    .iter()
                    .filter(|e| e.instance() == "o1")
                    .any(|e| e.calls() == 5 && e.time_ms() < killed_at),
                "the count changed during the outage (5) was delivered"
            );
        }
        ensure!(
            covered as i64 >= (stopped - t0_ms(&t0)) / 1000 - 6,
            "{inst}: only {covered} events over a {} s run",
            (stopped - t0_ms(&t0)) / 1000
        );
        report.push(format!(
            "{inst}: {covered} events in {} boot(s), {during} from the outage",
            boots.len()
        ));
    }
    hub.stop(Duration::from_secs(15)).await?;
    eprintln!(
        "spool across outage + SIGKILL: {} in {:?}",
        report.join("; "),
        t0.elapsed()
    );
    Ok(())
}

fn t0_ms(t0: &Instant) -> i64 {
    now_ms() - t0.elapsed().as_millis() as i64
}

// ---------------------------------------------------------------------------------------
// agents → hub → collector → VictoriaMetrics (v2) and InfluxDB 1.6 (v1)
// ---------------------------------------------------------------------------------------

const FLEET: &str = "tc-fleet.example.com";

async fn start_fleet(dir: &Path, info: &HubInfo, counts: &[(&str, u32)]) -> Result<Vec<Agent>> {
    counts
        .iter()
        .map(|(i, c)| Agent::start(dir, info, FLEET, "blue", i, *c))
        .collect()
}

/// Latest value of `metric{instance=..}`-style selector in VictoriaMetrics.
fn vm_latest(url: &str, selector: &str) -> Result<Option<(i64, f64)>> {
    Ok(vm_export(url, selector)?
        .into_iter()
        .filter_map(|s| s.samples.last().copied())
        .max_by_key(|s| s.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_hub_to_victoriametrics_and_influxdb16() -> Result<()> {
    let t0 = Instant::now();
    let vm = services::victoria_metrics()?;
    let influx = services::influxdb()?;
    let (status, body) = post_form(
        &format!("{}/query", influx.url()),
        &[("q", "CREATE DATABASE tcpulse")],
    )?;
    ensure!(status == 200, "create database: {status} {body}");
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let mut agents = start_fleet(tmp.path(), &info, &[("i1", 5), ("i2", 7), ("i3", 9)]).await?;
    let sinks = format!(
        "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n[sinks.influxdb_v1]\nurl = {:?}\ndatabase = \"tcpulse\"\n",
        vm.url(),
        influx.url()
    );
    let mut collector = Collector::start(tmp.path(), &info, &sinks, &[])?;
    let sel = |m: &str| format!("{m}{{connector=\"{FLEET}\"}}");

    // All three online: 21 calls.
    let full = wait_for(
        "VictoriaMetrics: 3 instances online, 21 calls",
        Duration::from_secs(40),
        || {
            collector.proc()?.ensure_running()?;
            let online = vm_latest(&vm.url(), &sel("tc_connector_instances_online"))?;
            let calls = vm_latest(&vm.url(), &sel("tc_connector_call_count"))?;
            Ok(online.map(|v| v.1) == Some(3.0) && calls.map(|v| v.1) == Some(21.0))
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.logs()))?;
    // i3 goes silent (SIGKILL); i2 changes its count.
    agents[2].proc()?.sigkill()?;
    let silent_at = now_ms();
    agents[1].set_calls(8)?;
    let silent = wait_for(
        "i3 up=0, 2 online, 13 calls",
        Duration::from_secs(40),
        || {
            let online = vm_latest(&vm.url(), &sel("tc_connector_instances_online"))?;
            let calls = vm_latest(&vm.url(), &sel("tc_connector_call_count"))?;
            let up = vm_latest(&vm.url(), "tc_instance_up{instance=\"i3\"}")?;
            Ok(online.map(|v| v.1) == Some(2.0)
                && calls.map(|v| v.1) == Some(13.0)
                && up.map(|v| v.1) == Some(0.0))
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.logs()))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for a in agents.iter_mut().take(2) {
        a.proc()?.sigterm(Duration::from_secs(15))?;
    }

    // What the agents really sent, read back from the hub.
    let events =
        statuses(&read_all(&info, Duration::from_secs(2), Duration::from_secs(60)).await?)?;
    ensure!(
        events.len() >= 20,
        "only {} events in the hub",
        events.len()
    );
    // Every event is a tc_instance point with its time and count, in both stores.
    let mut want: BTreeMap<String, BTreeSet<(i64, i64)>> = BTreeMap::new();
    for e in &events {
        want.entry(e.instance().to_string())
            .or_default()
            .insert((e.time_ms(), e.calls()));
    }
    let stored =
        wait_for(
            "every event in both stores",
            Duration::from_secs(30),
            || {
                for (inst, pts) in &want {
                    let vm_pts: BTreeSet<(i64, i64)> = vm_export(
                        &vm.url(),
                        &format!("tc_instance_call_count{{instance=\"{inst}\"}}"),
                    )?
                    .into_iter()
                    .flat_map(|s| s.samples)
                    .map(|(t, v)| (t, v as i64))
                    .collect();
                    let rows = influx_rows(&influx_query(
                &influx.url(),
                "tcpulse",
                &format!("SELECT call_count FROM tc_instance WHERE instance = '{inst}' AND up = 1"),
            )?);
                    let influx_pts: BTreeSet<(i64, i64)> = rows
                        .iter()
                        .map(|(_, r)| {
                            (
                                r["time"].as_i64().unwrap_or(0),
                                r["call_count"].as_i64().unwrap_or(-1),
                            )
                        })
                        .collect();
                    if !pts.is_subset(&vm_pts) || !pts.is_subset(&influx_pts) {
                        return Ok(false);
                    }
                    // Nothing made up: up=1 points are exactly the events.
                    ensure!(
                        &influx_pts == pts,
                        "InfluxDB up=1 points of {inst} differ from the events: extra {:?}",
                        influx_pts.difference(pts).collect::<Vec<_>>()
                    );
                }
                Ok(true)
            },
        )
        .await;
    stored.with_context(|| format!("collector log:\n{}", collector.logs()))?;

    // Connector rollups: identical in both stores; the values follow the agents.
    let vm_rollup: BTreeMap<i64, (f64, f64)> = {
        let online = vm_export(&vm.url(), &sel("tc_connector_instances_online"))?;
        let calls = vm_export(&vm.url(), &sel("tc_connector_call_count"))?;
        ensure!(
            online.len() == 1 && calls.len() == 1,
            "one connector series: {online:?}"
        );
        let calls: BTreeMap<i64, f64> = calls[0].samples.iter().copied().collect();
        online[0]
            .samples
            .iter()
            .map(|(t, o)| (*t, (*o, calls.get(t).copied().unwrap_or(f64::NAN))))
            .collect()
    };
    let influx_rollup: BTreeMap<i64, (f64, f64)> = influx_rows(&influx_query(
        &influx.url(),
        "tcpulse",
        &format!(
            "SELECT instances_online, call_count FROM tc_connector WHERE connector = '{FLEET}'"
        ),
    )?)
    .iter()
    .map(|(_, r)| {
        (
            r["time"].as_i64().unwrap_or(0),
            (
                r["instances_online"].as_f64().unwrap_or(f64::NAN),
                r["call_count"].as_f64().unwrap_or(f64::NAN),
            ),
        )
    })
    .collect();
    ensure!(
        vm_rollup == influx_rollup,
        "tc_connector differs between VictoriaMetrics and InfluxDB:\nVM {vm_rollup:?}\nInflux {influx_rollup:?}"
    );
    for (t, (online, calls)) in &vm_rollup {
        ensure!(t % 2_000 == 0, "window end {t} aligned to the 2 s rollup");
        // A state the fleet was in: `online` of the instances, summing their counts
        // (i1 = 5, i2 = 7 then 8, i3 = 9; agents start and stop a moment apart).
        let ok = [[5, 7, 9], [5, 8, 9]].iter().any(|counts| {
            (0u32..8).any(|mask| {
                mask.count_ones() as f64 == *online
                    && (0..3)
                        .filter(|b| mask & (1 << b) != 0)
                        .map(|b| counts[b] as f64)
                        .sum::<f64>()
                        == *calls
            })
        });
        ensure!(
            ok,
            "rollup at {t}: {online} online, {calls} calls is not a state the fleet was in"
        );
    }
    ensure!(
        vm_rollup.values().any(|v| *v == (3.0, 21.0))
            && vm_rollup.values().any(|v| *v == (2.0, 13.0)),
        "both fleet states stored: {vm_rollup:?}"
    );
    // The silent instance: up=0 after it stopped, in both stores.
    let down = influx_rows(&influx_query(
        &influx.url(),
        "tcpulse",
        "SELECT up FROM tc_instance WHERE instance = 'i3' AND up = 0",
    )?);
    ensure!(!down.is_empty(), "InfluxDB has i3 up=0");
    for (_, r) in &down {
        let t = r["time"].as_i64().unwrap_or(0);
        ensure!(
            t > silent_at - 2_000,
            "i3 written down at {t}, before it went silent ({silent_at})"
        );
    }
    collector.proc()?.sigterm(Duration::from_secs(20))?;
    hub.shutdown().await;
    eprintln!(
        "agents → hub → collector → VM + InfluxDB: {} events, {} rollups; 3-online state after {full:?}, silent instance detected after {silent:?}; total {:?}",
        events.len(),
        vm_rollup.len(),
        t0.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// collector SIGKILL mid-stream
// ---------------------------------------------------------------------------------------

/// Line-protocol lines keyed by `(measurement+tags, timestamp)`; each value the distinct
/// field sets seen for that key, with how often each was written.
type Lines = BTreeMap<(String, i64), BTreeMap<String, usize>>;

fn parse_lines(text: &str) -> Result<Lines> {
    let mut out: Lines = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // `series fields timestamp`; test tags and fields hold no escaped spaces.
        let mut parts = line.rsplitn(2, ' ');
        let ts: i64 = parts
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| anyhow!("no timestamp: {line}"))?;
        let rest = parts.next().ok_or_else(|| anyhow!("bad line: {line}"))?;
        let (series, fields) = rest
            .split_once(' ')
            .ok_or_else(|| anyhow!("bad line: {line}"))?;
        *out.entry((series.to_string(), ts))
            .or_default()
            .entry(fields.to_string())
            .or_default() += 1;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_sigkill_mid_stream_replays_identical_points() -> Result<()> {
    let t0 = Instant::now();
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let mut agents = start_fleet(tmp.path(), &info, &[("k1", 4), ("k2", 6)]).await?;
    let out = tmp.path().join("points.lp");
    // Checkpoints every 3 s, so a kill almost surely leaves stored-but-not-checkpointed
    // points that the restart writes again.
    let sinks = format!("[sinks.file]\npath = {:?}\n", out.display().to_string());
    let mut collector = Collector::start_with(tmp.path(), &info, &sinks, &[], "3s", 5000)?;
    wait_for("points in the file", Duration::from_secs(30), || {
        collector.proc()?.ensure_running()?;
        Ok(std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
            > 20)
    })
    .await
    .with_context(|| format!("collector log:\n{}", collector.logs()))?;
    agents[0].set_calls(9)?;
    // Kill mid-stream, between two checkpoint writes: right after the checkpoint file
    // changes, let ~1.5 s of points reach the file (stored, not yet checkpointed: the next
    // write is 3 s away), then SIGKILL.
    let first = collector.checkpoints();
    wait_for("a checkpoint write", Duration::from_secs(20), || {
        Ok(collector.checkpoints() != first)
    })
    .await?;
    let ckpt_before = collector.checkpoints();
    let lines_at_ckpt = std::fs::read_to_string(&out)?.lines().count();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let lines_before = std::fs::read_to_string(&out)?.lines().count();
    ensure!(
        collector.checkpoints() == ckpt_before,
        "checkpoint written again within 1.5 s despite interval 3 s"
    );
    collector.proc()?.sigkill()?;
    ensure!(
        lines_before > lines_at_ckpt,
        "no points stored in the 1.5 s before the kill ({lines_at_ckpt} → {lines_before})"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    collector.launch(&[])?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    agents[1].set_calls(2)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for a in &mut agents {
        a.proc()?.sigterm(Duration::from_secs(15))?;
    }
    let events =
        statuses(&read_all(&info, Duration::from_secs(2), Duration::from_secs(60)).await?)?;
    let want: BTreeSet<(String, i64, i64)> = events
        .iter()
        .map(|e| (e.instance().to_string(), e.time_ms(), e.calls()))
        .collect();
    let have_all = |text: &str| -> Result<bool> {
        let lines = parse_lines(text)?;
        let mut have = BTreeSet::new();
        for ((series, ts), fields) in &lines {
            if !series.starts_with("tc_instance,") {
                continue;
            }
            let inst = series
                .split(',')
                .find_map(|kv| kv.strip_prefix("instance="))
                .unwrap_or_default();
            for f in fields.keys() {
                if f.split(',').any(|kv| kv == "up=1i" || kv == "up=1") {
                    let calls = f
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("call_count="))
                        .and_then(|v| v.trim_end_matches('i').parse::<i64>().ok())
                        .unwrap_or(-1);
                    have.insert((inst.to_string(), ts / 1_000_000, calls));
                }
            }
        }
        Ok(want.is_subset(&have))
    };
    wait_for(
        "every event's point in the file",
        Duration::from_secs(30),
        || have_all(&std::fs::read_to_string(&out)?),
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.logs()))?;
    collector.proc()?.sigterm(Duration::from_secs(20))?;

    let text = std::fs::read_to_string(&out)?;
    let lines = parse_lines(&text)?;
    let mut replayed = 0;
    for ((series, ts), fields) in &lines {
        ensure!(
            fields.len() == 1,
            "{series} at {ts} written with different values: {fields:?}"
        );
        replayed += fields.values().sum::<usize>() - 1;
    }
    ensure!(
        replayed > 0,
        "the restart replayed nothing (checkpoints before the kill: {ckpt_before:?}); the test did not exercise a replay"
    );
    // Rollup windows are contiguous across the kill: every 2 s window end from the first
    // to the last one has its tc_connector point.
    let windows: Vec<i64> = lines
        .keys()
        .filter(|(s, _)| s.starts_with("tc_connector,"))
        .map(|(_, t)| t / 1_000_000)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    ensure!(windows.len() >= 5, "few rollups: {windows:?}");
    for w in windows.windows(2) {
        ensure!(
            w[1] - w[0] == 2_000,
            "rollup gap between {} and {}: {windows:?}",
            w[0],
            w[1]
        );
    }
    hub.shutdown().await;
    eprintln!(
        "collector SIGKILL: {} events, {} lines before the kill, {} lines total, {replayed} replayed identically, {} windows contiguous; {:?}",
        events.len(),
        lines_before,
        text.lines().count(),
        windows.len(),
        t0.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// store down for 30 s
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_store_down_checkpoint_holds_and_metrics_lag_rises() -> Result<()> {
    let t0 = Instant::now();
    let mut vm = RestartableVictoriaMetrics::new()?;
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let mut agents = start_fleet(tmp.path(), &info, &[("s1", 3), ("s2", 8)]).await?;
    let sinks = format!(
        "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n",
        vm.url()
    );
    // Small batches: the in-flight bound (4 batches + the open one) is then reached within
    // seconds at this fleet's event rate, so the partition stops reading and lag shows.
    // (lag_seconds itself is the age of the oldest event not yet stored, so it rises from
    // the first seconds of the outage whatever the batch size.)
    let mut collector = Collector::start_with(tmp.path(), &info, &sinks, &[], "1s", 10)?;
    wait_for("points in VictoriaMetrics", Duration::from_secs(30), || {
        collector.proc()?.ensure_running()?;
        Ok(vm_latest(&vm.url(), "tc_instance_call_count")?.is_some())
    })
    .await
    .with_context(|| format!("collector log:\n{}", collector.logs()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lag_before =
        metric_max(&collector.metrics()?, "tcpulse_collector_lag_seconds").unwrap_or(0.0);

    vm.stop()?;
    let down_at = now_ms();
    let down = Instant::now();
    let mut grace_ckpt = None;
    let mut lag_by_partition: BTreeMap<String, f64> = BTreeMap::new();
    let mut polls = 0;
    while down.elapsed() < Duration::from_secs(30) {
        collector.proc()?.ensure_running()?;
        for (p, l) in metric_by_partition(&collector.metrics()?, "tcpulse_collector_lag_seconds") {
            let m = lag_by_partition.entry(p).or_insert(0.0f64);
            *m = m.max(l);
        }
        let ck = collector.checkpoints();
        if down.elapsed() > Duration::from_secs(4) {
            // Past in-flight acks and the checkpoint interval: nothing more may be stored,
            // so the checkpoint must not move.
            let g = grace_ckpt.get_or_insert_with(|| ck.clone());
            ensure!(
                &ck == g,
                "checkpoint moved while the store was down: {g:?} → {ck:?}"
            );
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let grace_ckpt = grace_ckpt.unwrap_or_default();
    let idle_lag: BTreeMap<&String, &f64> = lag_by_partition
        .iter()
        .filter(|(p, _)| !grace_ckpt.contains_key(*p))
        .collect();
    let ckpt_age = metric_max(
        &collector.metrics()?,
        "tcpulse_collector_checkpoint_age_seconds",
    )
    .unwrap_or(0.0);
    ensure!(
        ckpt_age >= 25.0,
        "checkpoint_age_seconds is {ckpt_age} after a 30 s store outage"
    );
    // The partition carrying the fleet (the one with a checkpoint) lags by the outage.
    let busy: Vec<&String> = grace_ckpt.keys().collect();
    ensure!(
        busy.len() == 1,
        "one connector → one partition: {grace_ckpt:?}"
    );
    let max_lag = lag_by_partition.get(busy[0]).copied().unwrap_or(0.0);
    ensure!(
        (15.0..=45.0).contains(&max_lag),
        "lag_seconds of partition {} reached {max_lag} during a 30 s store outage (before: {lag_before}); metrics:\n{}",
        busy[0],
        collector.metrics()?
    );
    vm.start()?;
    let recovered = wait_for(
        "lag to fall after recovery",
        Duration::from_secs(60),
        || {
            let l = metric_max(&collector.metrics()?, "tcpulse_collector_lag_seconds")
                .unwrap_or(f64::MAX);
            Ok(l < 5.0)
        },
    )
    .await
    .with_context(|| format!("collector log:\n{}", collector.logs()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for a in &mut agents {
        a.proc()?.sigterm(Duration::from_secs(15))?;
    }
    let events =
        statuses(&read_all(&info, Duration::from_secs(2), Duration::from_secs(60)).await?)?;

    // The checkpoint held during the outage never covered an event enqueued after the
    // store went down.
    for e in &events {
        if let Some(c) = grace_ckpt.get(&e.partition) {
            if e.sequence_number <= *c {
                ensure!(
                    e.enqueued_ms <= down_at + 1_000,
                    "checkpoint {c} of partition {} covers seq {} enqueued at {} after the store went down at {down_at}",
                    e.partition,
                    e.sequence_number,
                    e.enqueued_ms
                );
            }
        }
    }
    let during = events
        .iter()
        .filter(|e| e.enqueued_ms > down_at + 1_000 && e.enqueued_ms < down_at + 29_000)
        .count();
    ensure!(
        during >= 40,
        "only {during} events arrived during the outage"
    );
    // Every event stored exactly once.
    let mut want: BTreeMap<String, BTreeMap<i64, i64>> = BTreeMap::new();
    for e in &events {
        want.entry(e.instance().to_string())
            .or_default()
            .insert(e.time_ms(), e.calls());
    }
    let mut last = String::new();
    wait_for(
        "every event in VictoriaMetrics once",
        Duration::from_secs(30),
        || {
            for (inst, pts) in &want {
                let series = vm_export(
                    &vm.url(),
                    &format!("tc_instance_call_count{{instance=\"{inst}\"}}"),
                )?;
                ensure!(series.len() == 1, "{inst}: {} series", series.len());
                let samples = &series[0].samples;
                let times: BTreeSet<i64> = samples.iter().map(|s| s.0).collect();
                ensure!(
                    times.len() == samples.len(),
                    "{inst}: a sample stored twice ({} samples, {} timestamps)",
                    samples.len(),
                    times.len()
                );
                let got: BTreeMap<i64, i64> =
                    samples.iter().map(|(t, v)| (*t, *v as i64)).collect();
                let missing: Vec<_> = pts.iter().filter(|(t, v)| got.get(t) != Some(v)).collect();
                if !missing.is_empty() {
                    last = format!(
                        "{inst}: {} of {} events missing, first {:?}",
                        missing.len(),
                        pts.len(),
                        missing[0]
                    );
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await
    .with_context(|| format!("{last}; collector log:\n{}", collector.logs()))?;
    collector.proc()?.sigterm(Duration::from_secs(20))?;
    hub.shutdown().await;
    eprintln!(
        "store down 30 s: lag {lag_before:.1}s → max {max_lag:.1}s ({polls} polls; idle partitions {idle_lag:?}), caught up {recovered:?} after restart, checkpoint held at {grace_ckpt:?}, {during} events during the outage, {} events stored once; {:?}",
        events.len(),
        t0.elapsed()
    );
    Ok(())
}

/// While the store is down, partitions that never carried an event also stop reading (their
/// `tc_pipeline` points fill the in-flight bound). Their lag must stay a number of seconds
/// the outage can explain, not the time since 1970: the empty partition's tip has
/// `last_enqueued_time` = the Unix epoch, and `lag_seconds` = now − that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_metrics_idle_partition_lag_stays_bounded_while_store_down() -> Result<()> {
    let mut vm = RestartableVictoriaMetrics::new()?;
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let mut agents = start_fleet(tmp.path(), &info, &[("q1", 2)]).await?;
    let sinks = format!(
        "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n",
        vm.url()
    );
    let mut collector = Collector::start_with(tmp.path(), &info, &sinks, &[], "1s", 2)?;
    wait_for("points in VictoriaMetrics", Duration::from_secs(30), || {
        collector.proc()?.ensure_running()?;
        Ok(vm_latest(&vm.url(), "tc_instance_call_count")?.is_some())
    })
    .await
    .with_context(|| format!("collector log:\n{}", collector.logs()))?;
    vm.stop()?;
    let down = Instant::now();
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    while down.elapsed() < Duration::from_secs(20) {
        for (p, l) in metric_by_partition(&collector.metrics()?, "tcpulse_collector_lag_seconds") {
            let m = worst.entry(p).or_insert(0.0f64);
            *m = m.max(l);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    vm.start()?;
    agents[0].proc()?.sigterm(Duration::from_secs(15))?;
    collector.proc()?.sigterm(Duration::from_secs(20))?;
    hub.shutdown().await;
    let bad: Vec<_> = worst.iter().filter(|(_, l)| **l > 60.0).collect();
    ensure!(
        bad.is_empty(),
        "lag_seconds during a 20 s store outage: {worst:?}; partitions {bad:?} report more than the outage (an empty partition's lag is measured from the Unix epoch)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// agents → hub → collector → VictoriaMetrics → vmalert → Alertmanager (issue 6)
// ---------------------------------------------------------------------------------------

/// The shipped Prometheus rules with every `for` shortened to `for_` (same expressions and
/// labels), as `dashboards.rs` does.
fn rules_with_short_for(for_: &str) -> Result<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/prometheus/tcpulse-rules.yml");
    let mut doc: Value = serde_norway::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("parse {}", path.display()))?;
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

/// Active alerts named `alertname` in Alertmanager, as label maps.
fn am_alerts(am_url: &str, alertname: &str) -> Result<Vec<Value>> {
    let (status, body) = get(&format!(
        "{am_url}/api/v2/alerts?active=true&filter=alertname%3D%22{alertname}%22"
    ))?;
    ensure!(status == 200, "Alertmanager {status}: {body}");
    let v: Value = serde_json::from_str(&body)?;
    Ok(v.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["status"]["state"] == "active")
        .map(|a| a["labels"].clone())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_pipeline_drives_vmalert_capacity_high() -> Result<()> {
    let t0 = Instant::now();
    let vm = services::victoria_metrics()?;
    let am = services::alertmanager()?;
    let rules_dir = tempfile::TempDir::new()?;
    let rules = rules_dir.path().join("tcpulse-rules.yml");
    // `for: 2s` instead of minutes (evaluation every 1 s): same expressions, fast test.
    std::fs::write(&rules, rules_with_short_for("2s")?)?;
    let vmalert = services::vmalert(&vm.url(), &am.url(), &[rules], Duration::from_secs(1))?;
    // New series become searchable after a flush; flush every second as a scrape would.
    let stop_flush = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let (stop, url) = (
            stop_flush.clone(),
            format!("{}/internal/force_flush", vm.url()),
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = get(&url);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let hot = "tc-hot.example.com";
    let cool = "tc-cool.example.com";
    // hot: 3 × 14 = 42 of 45 planned (93 %); cool: 6 of 15 (40 %).
    let mut agents = vec![
        Agent::start(tmp.path(), &info, hot, "blue", "h1", 14)?,
        Agent::start(tmp.path(), &info, hot, "blue", "h2", 14)?,
        Agent::start(tmp.path(), &info, hot, "blue", "h3", 14)?,
        Agent::start(tmp.path(), &info, cool, "green", "c1", 6)?,
    ];
    let sinks = format!(
        "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n",
        vm.url()
    );
    let mut collector = Collector::start(tmp.path(), &info, &sinks, &[])?;

    let result = async {
        let fired = wait_for(
            "TeamsConnectorCapacityHigh for the hot connector in Alertmanager",
            Duration::from_secs(90),
            || {
                collector.proc()?.ensure_running()?;
                Ok(am_alerts(&am.url(), "TeamsConnectorCapacityHigh")?
                    .iter()
                    .any(|l| l["connector"] == hot))
            },
        )
        .await
        .with_context(|| {
            format!(
                "vmalert log:\n{}\ncollector log:\n{}",
                vmalert.log_tail(),
                collector.logs()
            )
        })?;
        let util = vm_latest(
            &vm.url(),
            &format!("tc_connector_utilization{{connector=\"{hot}\"}}"),
        )?;
        let alerts = am_alerts(&am.url(), "TeamsConnectorCapacityHigh")?;
        let labels = alerts
            .iter()
            .find(|l| l["connector"] == hot)
            .cloned()
            .unwrap_or_default();
        ensure!(
            labels["deployment"] == "blue"
                && labels["region"] == REGION
                && labels["severity"] == "warning",
            "labels: {labels}"
        );
        ensure!(
            !alerts.iter().any(|l| l["connector"] == cool),
            "the connector at 40 % must not alert: {alerts:?}"
        );
        // Load drops: 3 × 5 = 15 of 45 (33 %).
        for a in agents.iter().take(3) {
            a.set_calls(5)?;
        }
        let resolved = wait_for(
            "TeamsConnectorCapacityHigh to resolve",
            Duration::from_secs(90),
            || {
                Ok(!am_alerts(&am.url(), "TeamsConnectorCapacityHigh")?
                    .iter()
                    .any(|l| l["connector"] == hot))
            },
        )
        .await?;
        let util_after = vm_latest(
            &vm.url(),
            &format!("tc_connector_utilization{{connector=\"{hot}\"}}"),
        )?;
        Ok::<_, anyhow::Error>((fired, resolved, util, util_after))
    }
    .await;
    stop_flush.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flusher.join();
    let (fired, resolved, util, util_after) = result?;
    ensure!(
        util.is_some_and(|u| (u.1 - 42.0 / 45.0).abs() < 1e-6),
        "utilization stored while firing: {util:?}"
    );
    ensure!(
        util_after.is_some_and(|u| (u.1 - 15.0 / 45.0).abs() < 1e-6),
        "utilization after the drop: {util_after:?}"
    );
    for a in &mut agents {
        a.proc()?.sigterm(Duration::from_secs(15))?;
    }
    collector.proc()?.sigterm(Duration::from_secs(20))?;
    hub.shutdown().await;
    eprintln!(
        "pipeline → vmalert → Alertmanager: fired {fired:?} after start, resolved {resolved:?} after the drop; total {:?}",
        t0.elapsed()
    );
    Ok(())
}
