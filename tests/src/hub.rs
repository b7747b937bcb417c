//! The tcpulse hub as a test peer: in-process through the library ([`TestHub`]) or as the
//! `tcpulse-hub` binary in a child process ([`HubProcess`]).
//!
//! Both give a [`HubInfo`], parsed from the hub's ready JSON, which hands out connection
//! objects for the Python scripts (`tests/python/_common.py`: TLS through
//! `custom_endpoint_address` + `connection_verify`, AMQP over WebSockets the same way
//! (optionally through an HTTP proxy), or plain AMQP in development-emulator mode) and the
//! SAS policy name/key for Rust clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use tcpulse_hub::entra::EntraConfig;
use tcpulse_hub::{Hub, HubConfig, HubSpec};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How a client reaches the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// AMQP over TLS (TLS first, like Azure) on the `amqps` listener; the client trusts the
    /// hub's CA and connects to `127.0.0.1:<port>` through `custom_endpoint_address`.
    Tls,
    /// Plain AMQP on the `amqp` listener with a `UseDevelopmentEmulator=true` string.
    Emulator,
}

impl Mode {
    /// Both modes, for tests that must pass in each.
    pub const ALL: [Mode; 2] = [Mode::Tls, Mode::Emulator];
}

/// Which generated shared access policy to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Send only.
    Send,
    /// Listen only.
    Listen,
    /// Manage, Send and Listen.
    Manage,
}

/// One hub entity of the ready line.
#[derive(Clone, Debug, Deserialize)]
pub struct HubEntity {
    /// Event hub name.
    pub name: String,
    /// Partition count.
    pub partitions: usize,
}

#[derive(Clone, Deserialize)]
struct Strings {
    send: String,
    listen: String,
    manage: String,
}

/// What the hub reports when it is ready (its one JSON line).
#[derive(Clone, Deserialize)]
pub struct HubInfo {
    /// The AMQP-over-TLS address.
    pub amqps: SocketAddr,
    /// The plain AMQP address, if enabled.
    pub amqp: Option<SocketAddr>,
    /// The AMQP-over-WebSockets address, if enabled.
    #[serde(default)]
    pub websocket: Option<SocketAddr>,
    /// The CA certificate clients must trust.
    pub ca_pem: PathBuf,
    /// The namespace host in connection strings.
    #[serde(default)]
    pub namespace: String,
    /// The event hubs.
    pub hubs: Vec<HubEntity>,
    /// Consumer groups.
    #[serde(default)]
    pub consumer_groups: Vec<String>,
    connection_strings: Strings,
    emulator_connection_strings: Option<Strings>,
}

impl std::fmt::Debug for HubInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubInfo")
            .field("amqps", &self.amqps)
            .field("amqp", &self.amqp)
            .field("websocket", &self.websocket)
            .field("ca_pem", &self.ca_pem)
            .field("hubs", &self.hubs)
            .finish_non_exhaustive()
    }
}

impl HubInfo {
    /// Parses the ready JSON line (the binary's stdout, or `Hub::ready_info()`).
    pub fn from_ready(v: &Value) -> Result<Self> {
        serde_json::from_value(v.clone()).context("parse the hub's ready JSON")
    }

    /// The first hub's name (the `EntityPath` of the connection strings).
    pub fn hub_name(&self) -> &str {
        self.hubs.first().map(|h| h.name.as_str()).unwrap_or("")
    }

    /// The first hub's partition count.
    pub fn partitions(&self) -> usize {
        self.hubs.first().map(|h| h.partitions).unwrap_or(0)
    }

    /// The first hub's partition ids (`"0"`, `"1"`, …).
    pub fn partition_ids(&self) -> Vec<String> {
        (0..self.partitions()).map(|p| p.to_string()).collect()
    }

    /// The connection string for `policy` in `mode`.
    pub fn connection_string(&self, mode: Mode, policy: Policy) -> Result<&str> {
        let s = match mode {
            Mode::Tls => &self.connection_strings,
            Mode::Emulator => self
                .emulator_connection_strings
                .as_ref()
                .ok_or_else(|| anyhow!("the hub has no plain listener (start it with one)"))?,
        };
        Ok(match policy {
            Policy::Send => &s.send,
            Policy::Listen => &s.listen,
            Policy::Manage => &s.manage,
        })
    }

    /// The Python `conn` object for `policy` in `mode`.
    pub fn conn(&self, mode: Mode, policy: Policy) -> Result<Value> {
        let cs = self.connection_string(mode, policy)?.to_string();
        Ok(self.conn_with(mode, cs))
    }

    /// The Python `conn` object for an arbitrary connection string (e.g. a wrong key).
    pub fn conn_with(&self, mode: Mode, connection_string: String) -> Value {
        match mode {
            Mode::Tls => json!({
                "mode": "tls",
                "connection_string": connection_string,
                "endpoint": self.amqps.to_string(),
                "ca_pem": self.ca_pem,
            }),
            Mode::Emulator => json!({
                "mode": "emulator",
                "connection_string": connection_string,
            }),
        }
    }

    /// The Python `conn` object for `policy` over AMQP over WebSockets (the hub's WebSocket
    /// listener through `custom_endpoint_address`, the SDK's `AmqpOverWebsocket`), through
    /// `http_proxy` (the SDK's dict: `proxy_hostname`, `proxy_port`, optional `username`,
    /// `password`) when given.
    pub fn conn_websocket(&self, policy: Policy, http_proxy: Option<Value>) -> Result<Value> {
        let ws = self
            .websocket
            .ok_or_else(|| anyhow!("the hub has no WebSocket listener (start it with one)"))?;
        let mut conn = json!({
            "mode": "websocket",
            "connection_string": self.connection_string(Mode::Tls, policy)?,
            "endpoint": ws.to_string(),
            "ca_pem": self.ca_pem,
        });
        if let Some(p) = http_proxy {
            conn["http_proxy"] = p;
        }
        Ok(conn)
    }

    /// The Python `conn` object over TLS with an Entra ID token `credential` instead of a
    /// connection string (see `tests/python/_common.py`), e.g.
    /// [`crate::entra::TokenServer::python_client_secret`]. The namespace carries the port, as
    /// the SDK reads it from a connection string, so token audiences compare with ours.
    pub fn conn_credential(&self, credential: Value) -> Value {
        json!({
            "mode": "tls",
            "namespace": format!("{}:{}", self.namespace, self.amqps.port()),
            "eventhub": self.hub_name(),
            "endpoint": self.amqps.to_string(),
            "ca_pem": self.ca_pem,
            "credential": credential,
        })
    }

    /// `(SharedAccessKeyName, SharedAccessKey)` of `policy`, for SASL PLAIN clients.
    pub fn key(&self, policy: Policy) -> Result<(String, String)> {
        let cs = self.connection_string(Mode::Tls, policy)?;
        let part = |name: &str| {
            cs.split(';')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
                .ok_or_else(|| anyhow!("connection string has no {name}"))
        };
        Ok((part("SharedAccessKeyName")?, part("SharedAccessKey")?))
    }
}

/// Replaces the `SharedAccessKey=` value of a connection string.
pub fn with_key(connection_string: &str, key: &str) -> String {
    connection_string
        .split(';')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.trim().eq_ignore_ascii_case("SharedAccessKey") => {
                format!("{k}={key}")
            }
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Options for both ways of starting a hub.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// `name:partitions` of each hub; the first is the connection strings' `EntityPath`.
    pub hubs: Vec<(String, usize)>,
    /// Extra consumer groups (`$Default` always exists).
    pub consumer_groups: Vec<String>,
    /// Also listen for plain AMQP (emulator mode).
    pub plain: bool,
    /// Also listen for AMQP over WebSockets (`--ws-listen`).
    pub websocket: bool,
    /// Persist partitions here (None: in memory / a fresh temp dir for the binary).
    pub data_dir: Option<PathBuf>,
    /// The hub's memory budget for event bodies (`--memory-budget-bytes`); the default
    /// (256 MiB) when `None`. An in-memory hub keeps at most its share per partition.
    pub memory_budget_bytes: Option<u64>,
    /// More `tcpulse-hub` flags, e.g. `--auth-timeout 5s` (the binary only; [`TestHub`]
    /// ignores them).
    pub extra_args: Vec<String>,
    /// Entra ID (`jwt`) put-tokens: the issuer's keys, audience, issuer, role assignments
    /// (`--entra-*`); none by default. See [`crate::entra`].
    pub entra: EntraConfig,
    /// Honour tokens at most this long (`--max-token-lifetime`), to exercise refresh.
    pub max_token_lifetime: Option<Duration>,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            hubs: vec![("tcpulse".into(), 4)],
            consumer_groups: vec![],
            plain: true,
            websocket: false,
            data_dir: None,
            memory_budget_bytes: None,
            extra_args: Vec::new(),
            entra: EntraConfig::default(),
            max_token_lifetime: None,
        }
    }
}

/// A hub started in-process through the library, on ephemeral loopback ports, with its own
/// temporary TLS (and data) directory.
#[derive(Debug)]
pub struct TestHub {
    hub: Option<Hub>,
    /// Its ready info.
    pub info: HubInfo,
    dir: tempfile::TempDir,
}

impl TestHub {
    /// TLS and plain listeners, hub `tcpulse` with 4 partitions, in-memory partitions.
    pub async fn start() -> Result<TestHub> {
        TestHub::start_with(HubOptions::default()).await
    }

    /// Starts with `opts`.
    pub async fn start_with(opts: HubOptions) -> Result<TestHub> {
        init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("tcpulse-testhub-")
            .tempdir()
            .context("temp dir")?;
        let config = HubConfig {
            listen: "127.0.0.1:0".parse()?,
            plain_listen: if opts.plain {
                Some("127.0.0.1:0".parse()?)
            } else {
                None
            },
            ws_listen: if opts.websocket {
                Some("127.0.0.1:0".parse()?)
            } else {
                None
            },
            hubs: opts
                .hubs
                .iter()
                .map(|(name, partitions)| HubSpec {
                    name: name.clone(),
                    partitions: u32::try_from(*partitions).unwrap_or(u32::MAX),
                })
                .collect(),
            consumer_groups: opts.consumer_groups.clone(),
            data_dir: opts.data_dir.clone(),
            tls_dir: Some(dir.path().join("tls")),
            memory_budget_bytes: opts
                .memory_budget_bytes
                .unwrap_or(HubConfig::default().memory_budget_bytes),
            entra: opts.entra.clone(),
            max_token_lifetime: opts.max_token_lifetime,
            ..HubConfig::default()
        };
        let hub = Hub::start(config)
            .await
            .context("start the hub in-process")?;
        let info = HubInfo::from_ready(&hub.ready_info())?;
        Ok(TestHub {
            hub: Some(hub),
            info,
            dir,
        })
    }

    /// The temporary directory (TLS files live in `tls/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running hub.
    pub fn hub(&self) -> &Hub {
        // Only `shutdown` takes it, and that consumes self.
        self.hub
            .as_ref()
            .unwrap_or_else(|| unreachable!("hub taken"))
    }

    /// Graceful stop.
    pub async fn shutdown(mut self) {
        if let Some(hub) = self.hub.take() {
            hub.shutdown().await;
        }
    }
}

/// Sets up a test tracing subscriber once (RUST_LOG, default `info` for the hub).
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tcpulse_eventhub=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Path of the `tcpulse-hub` binary next to the running test executable.
pub fn hub_binary() -> Result<PathBuf> {
    crate::process::workspace_binary("tcpulse-hub")
}

/// The `tcpulse-hub` binary in a child process; killed on drop; restartable on the same
/// ports and data directory.
#[derive(Debug)]
pub struct HubProcess {
    child: Option<tokio::process::Child>,
    /// The ready info of the current run.
    pub info: HubInfo,
    opts: HubOptions,
    data_dir: PathBuf,
    log_dir: PathBuf,
    runs: usize,
    _tmp: tempfile::TempDir,
}

/// How long the binary may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl HubProcess {
    /// Starts the binary on ephemeral loopback ports with a data directory (`opts.data_dir`
    /// or a fresh temporary one).
    pub async fn spawn(opts: HubOptions) -> Result<HubProcess> {
        let tmp = tempfile::Builder::new()
            .prefix("tcpulse-hubproc-")
            .tempdir()
            .context("temp dir")?;
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let log_dir = tmp.path().to_path_buf();
        let plain = opts.plain.then(|| "127.0.0.1:0".parse()).transpose()?;
        let ws = opts.websocket.then(|| "127.0.0.1:0".parse()).transpose()?;
        let listen = Listen {
            amqps: "127.0.0.1:0".parse()?,
            plain,
            ws,
        };
        let (child, info) = start_binary(&opts, &data_dir, listen, &log_dir, 0).await?;
        Ok(HubProcess {
            child: Some(child),
            info,
            opts,
            data_dir,
            log_dir,
            runs: 1,
            _tmp: tmp,
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id of the current run.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// True while the current run has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The hub's stderr (its log) of run `n` (0-based).
    pub fn log(&self, run: usize) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("hub-stderr-{run}.log")))
            .unwrap_or_default()
    }

    /// The log of the current run.
    pub fn current_log(&self) -> String {
        self.log(self.runs.saturating_sub(1))
    }

    /// Stops the current run with SIGTERM (SIGKILL after `grace`) and returns its status.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("hub not running"))?;
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                child.start_kill()?;
                let status = child.wait().await?;
                bail!("hub did not stop within {grace:?} of SIGTERM; killed ({status})")
            }
        }
    }

    /// Kills the current run with SIGKILL (a crash).
    pub async fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("hub not running"))?;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Starts a new run on the same addresses and data directory (after [`stop`](Self::stop)
    /// or [`kill`](Self::kill); stops a live run first).
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop(Duration::from_secs(15)).await?;
        }
        let listen = Listen {
            amqps: self.info.amqps,
            plain: self.info.amqp,
            ws: self.info.websocket,
        };
        let (child, info) =
            start_binary(&self.opts, &self.data_dir, listen, &self.log_dir, self.runs).await?;
        self.runs += 1;
        self.child = Some(child);
        self.info = info;
        Ok(())
    }
}

/// The addresses a hub binary listens on.
struct Listen {
    amqps: SocketAddr,
    plain: Option<SocketAddr>,
    ws: Option<SocketAddr>,
}

/// The `--entra-*` and `--max-token-lifetime` flags for `entra` and `max_token_lifetime`.
fn entra_args(
    cmd: &mut tokio::process::Command,
    entra: &EntraConfig,
    max_token_lifetime: Option<Duration>,
) {
    if let Some(f) = &entra.jwks_file {
        cmd.arg("--entra-jwks-file").arg(f);
        cmd.arg("--entra-audience").arg(&entra.audience);
    }
    if let Some(i) = &entra.issuer {
        cmd.arg("--entra-issuer").arg(i);
    }
    if let Some(f) = &entra.role_assignments {
        cmd.arg("--entra-role-assignments").arg(f);
    }
    if let Some(d) = max_token_lifetime {
        cmd.arg("--max-token-lifetime")
            .arg(format!("{}ms", d.as_millis().max(1)));
    }
}

async fn start_binary(
    opts: &HubOptions,
    data_dir: &Path,
    listen: Listen,
    log_dir: &Path,
    run: usize,
) -> Result<(tokio::process::Child, HubInfo)> {
    let bin = hub_binary()?;
    let log_path = log_dir.join(format!("hub-stderr-{run}.log"));
    let log = std::fs::File::create(&log_path).context("create hub log file")?;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--listen").arg(listen.amqps.to_string());
    if let Some(p) = listen.plain {
        cmd.arg("--plain-listen").arg(p.to_string());
    }
    if let Some(w) = listen.ws {
        cmd.arg("--ws-listen").arg(w.to_string());
    }
    for (name, partitions) in &opts.hubs {
        cmd.arg("--hub").arg(format!("{name}:{partitions}"));
    }
    for cg in &opts.consumer_groups {
        cmd.arg("--consumer-group").arg(cg);
    }
    cmd.arg("--data-dir").arg(data_dir);
    if let Some(bytes) = opts.memory_budget_bytes {
        cmd.arg("--memory-budget-bytes").arg(bytes.to_string());
    }
    entra_args(&mut cmd, &opts.entra, opts.max_token_lifetime);
    cmd.args(&opts.extra_args);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
    let line = match first {
        Ok(Ok(Some(line))) => line,
        other => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let why = match other {
                Err(_) => format!("no ready line within {READY_TIMEOUT:?}"),
                Ok(Ok(None)) => "it exited before printing its ready line".to_string(),
                Ok(Err(e)) => format!("reading its stdout failed: {e}"),
                Ok(Ok(Some(_))) => unreachable!(),
            };
            bail!("tcpulse-hub did not become ready: {why}\nits log:\n{log}");
        }
    };
    // Keep draining stdout so the hub never blocks or fails on a full/closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let value: Value = serde_json::from_str(&line)
        // Never quote the line: it carries keys.
        .with_context(|| format!("the hub's ready line is not JSON ({} bytes)", line.len()))?;
    let info = HubInfo::from_ready(&value)?;
    Ok((child, info))
}
