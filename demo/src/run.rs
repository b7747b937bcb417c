//! Starts the demo: hub, agents, collector, load shifter and fleet view, then stops them in
//! order when the caller's token fires (or `--duration` passed).
//!
//! Shutdown order: the agents stop first and flush their spools to the hub (up to 3 s);
//! then the collector drains what arrived, writes its checkpoints and flushes its sinks;
//! then the view draws once more; last the hub shuts down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcpulse_agent::health::config::HealthConfig;
use tcpulse_agent::publish::config::{
    default_fatal_retry_initial, default_fatal_retry_max, EventHubsAuth, PublishConfig,
    PublishTarget, Secret,
};
use tcpulse_agent::publish::eventhubs::EventHubsPublisher;
use tcpulse_agent::report::config::{Identity, ReportConfig};
use tcpulse_agent::run::{RunError as AgentError, RunSummary as AgentSummary};
use tcpulse_agent::sources::simulate::SimulateConfig;
use tcpulse_agent::sources::SourceConfig;
use tcpulse_agent::spool::config::SpoolConfig;
use tcpulse_eventhub::client::{ClientConfig, ClientOptions, ConnectError};
use tcpulse_hub::{Hub, HubConfig, HubError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tcpulse_collector::config::Config;
use tcpulse_collector::sinks::file::config::FileSinkConfig;
use tcpulse_collector::sinks::influxdb_v1::config::InfluxDbV1SinkConfig;
use tcpulse_collector::sinks::influxdb_v2::config::InfluxDbV2SinkConfig;
use tcpulse_collector::RunSummary;

use crate::config::{DemoConfigError, DemoPlan};
use crate::view;

/// The demo could not start; the variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A flag is invalid.
    #[error(transparent)]
    Config(#[from] DemoConfigError),
    /// The data directory could not be prepared.
    #[error("demo dir {path}: {source}; pick another with --dir")]
    Dir {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded hub did not start.
    #[error("embedded hub: {0}")]
    Hub(#[from] HubError),
    /// The hub's connection string did not make a client config.
    #[error("client config for the embedded hub: {0}")]
    Client(#[from] ConnectError),
    /// The collector could not be built.
    #[error("collector: {0}")]
    Collector(#[from] tcpulse_collector::BuildError),
    /// Logging could not be set up.
    #[error("demo log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What a demo run did.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSummary {
    /// Events the agents' publishers had accepted by the hub.
    pub events_sent: u64,
    /// Events the collector read.
    pub events_read: u64,
    /// Events left in agent spools.
    pub spooled_at_exit: u64,
    /// The fleet as last shown.
    pub fleet: view::Fleet,
    /// The line-protocol file.
    pub points_file: PathBuf,
}

/// Sets up logging: into `<dir>/demo.log` when stdout is a terminal (so the view stays
/// clean), else to stderr with the agents and collector at `warn` and the demo at `info`.
/// `RUST_LOG` overrides the filter.
pub fn init_tracing(plan: &DemoPlan, tty: bool) -> Result<(), DemoError> {
    let filter = |default: &str| {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    };
    if tty {
        mkdir(&plan.dir)?;
        let path = log_path(plan);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| DemoError::Log { path, source })?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter("info"))
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter("warn,tcpulse_demo=info"))
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init();
    }
    Ok(())
}

fn log_path(plan: &DemoPlan) -> PathBuf {
    plan.dir.join("demo.log")
}

fn mkdir(path: &Path) -> Result<(), DemoError> {
    std::fs::create_dir_all(path).map_err(|source| DemoError::Dir {
        path: path.to_owned(),
        source,
    })
}

/// What a demo run leaves in its directory, besides `demo.log` (which only grows).
const STATE_ENTRIES: [&str; 7] = [
    "hub",
    "hub.port",
    "agents",
    "checkpoints",
    "load",
    "points.lp",
    "dead-letters.jsonl",
];

/// Removes what an earlier run left in `dir` (only [`STATE_ENTRIES`]); returns the names it
/// removed.
fn clear_state(dir: &Path) -> Result<Vec<&'static str>, DemoError> {
    let mut removed = Vec::new();
    for name in STATE_ENTRIES {
        let path = dir.join(name);
        let result = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => Err(e),
        };
        result.map_err(|source| DemoError::Dir { path, source })?;
        removed.push(name);
    }
    Ok(removed)
}

const DAY_MS: i64 = 86_400_000;

/// The simulated clock's shift ahead of `now_ms` that puts it at the next Wednesday 10:00
/// (the morning peak of a working day), so the demo looks busy whenever it runs.
pub fn peak_time_shift(now_ms: i64) -> Duration {
    let first_day = now_ms.div_euclid(DAY_MS);
    // 1970-01-01 was a Thursday; Monday = 0, so Wednesday = 2.
    let target = (first_day..first_day + 8)
        .map(|d| d * DAY_MS + 10 * 3_600_000)
        .find(|&t| t >= now_ms && (t.div_euclid(DAY_MS) + 3).rem_euclid(7) == 2)
        .unwrap_or(now_ms);
    Duration::from_millis(u64::try_from(target - now_ms).unwrap_or(0))
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn collector_config(plan: &DemoPlan) -> Config {
    let a = &plan.args;
    let mut c = Config {
        name: "tcpulse-demo".into(),
        ..Config::default()
    };
    c.checkpoint.dir = plan.dir.join("checkpoints");
    c.checkpoint.interval = Duration::from_secs(2);
    c.aggregate.rollup_interval = a.rollup_interval;
    c.aggregate.stale_after = (a.interval * 4).max(a.rollup_interval * 2);
    c.aggregate.lateness = a.interval.max(Duration::from_secs(1));
    c.aggregate.peak_window = Duration::from_secs(600).max(a.rollup_interval);
    c.aggregate.forget_after = Duration::from_secs(600).max(c.aggregate.stale_after);
    c.aggregate.idle_after = Duration::from_secs(5);
    c.batch.flush_interval = Duration::from_millis(500);
    c.retry.shutdown_grace = Duration::from_secs(5);
    c.dead_letter.path = plan.dir.join("dead-letters.jsonl");
    c.http.listen = a.metrics_listen;
    c.sinks.file = Some(FileSinkConfig {
        path: points_path(plan),
        fsync: true,
    });
    c.sinks.influxdb_v2 = a
        .influxdb_url
        .as_ref()
        .map(|u| InfluxDbV2SinkConfig::new(u, &a.influxdb_org, &a.influxdb_bucket));
    c.sinks.influxdb_v1 = a
        .influxdb_v1_url
        .as_ref()
        .map(|u| InfluxDbV1SinkConfig::new(u, &a.influxdb_v1_database));
    c
}

fn points_path(plan: &DemoPlan) -> PathBuf {
    plan.dir.join("points.lp")
}

fn load_path(plan: &DemoPlan, fqdn: &str) -> PathBuf {
    plan.dir.join("load").join(fqdn)
}

fn agent_config(
    plan: &DemoPlan,
    connector: &crate::config::ConnectorPlan,
    instance: &str,
    region: &str,
    time_shift: Duration,
    send: &str,
) -> tcpulse_agent::config::Config {
    let a = &plan.args;
    tcpulse_agent::config::Config {
        identity: Identity {
            connector: connector.fqdn.clone(),
            deployment: connector.deployment.clone(),
            region: region.to_owned(),
            scaleset: connector.scaleset.clone(),
            instance: instance.to_owned(),
        },
        report: ReportConfig {
            interval: a.interval,
            poll_interval: (a.interval / 4)
                .clamp(Duration::from_millis(50), Duration::from_millis(500)),
        },
        source: SourceConfig::Simulate(SimulateConfig {
            peak_calls: a.peak_calls,
            load_factor_file: Some(load_path(plan, &connector.fqdn)),
            time_shift,
            ..SimulateConfig::default()
        }),
        health: HealthConfig {
            enabled: false,
            service_process: None,
            disk_path: PathBuf::from("/"),
            cert_file: None,
        },
        spool: SpoolConfig {
            dir: plan.dir.join("agents").join(instance),
            max_bytes: 4 << 20,
        },
        publish: PublishConfig {
            target: PublishTarget::EventHubs {
                auth: EventHubsAuth::ConnectionString {
                    value: Secret::new(send),
                    origin: "the embedded hub".into(),
                },
                event_hub: None,
                ca_file: None,
                custom_endpoint: None,
                transport: Default::default(),
                websocket_endpoint: None,
                proxy: Default::default(),
            },
            max_batch_events: 256,
            max_batch_bytes: 768 << 10,
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(5),
            shutdown_flush: Duration::from_secs(3),
            fatal_retry_initial: default_fatal_retry_initial(),
            fatal_retry_max: default_fatal_retry_max(),
        },
        log_file: None,
        log_level: "info".into(),
        log_format: Default::default(),
        secret_conflicts: Vec::new(),
    }
}

/// The load phase the shifter is in, for the header.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Phase {
    surge: bool,
    factor: f64,
}

fn phase_text(plan: &DemoPlan, p: Phase) -> String {
    let first = plan.connectors.first().map_or("", |c| c.fqdn.as_str());
    let period = plan.args.shift_period;
    let cycle = if period.is_zero() || plan.args.load_shift == 1.0 {
        String::new()
    } else {
        let c = load_cycle(plan.args.load_shift);
        format!(
            ", cycling ×{:.2} → ×{:.2} → ×{:.2} every {}",
            c[0],
            c[1],
            c[2],
            humantime::format_duration(period)
        )
    };
    if p.surge {
        format!("load: {first} at ×{:.2}{cycle}", p.factor)
    } else {
        format!("load: normal (×1.00){cycle}")
    }
}

/// Runs the demo until `shutdown` fires or `--duration` passed. See the module docs.
pub async fn run(
    plan: DemoPlan,
    tty: bool,
    shutdown: CancellationToken,
) -> Result<DemoSummary, DemoError> {
    prepare_dir(&plan)?;
    let hub = start_hub(&plan).await?;
    let options = ClientOptions {
        custom_endpoint: Some(hub.amqps_addr().to_string()),
        extra_ca_file: Some(hub.ca_pem_path().to_owned()),
        ..ClientOptions::default()
    };
    let strings = hub.connection_strings().clone();
    let send = ClientConfig::from_connection_string(&strings.send, None, options.clone())?;
    let listen = ClientConfig::from_connection_string(&strings.listen, None, options)?;
    let collector = match start_collector(&plan, listen).await {
        Ok(c) => c,
        Err(e) => {
            hub.shutdown().await;
            return Err(e.into());
        }
    };
    let agents = Agents::start(&plan, &send, &strings.send);
    let phase = Arc::new(Mutex::new(Phase {
        surge: false,
        factor: 1.0,
    }));
    let shifter = tokio::spawn(shift_load(plan.clone(), phase.clone(), agents.stop.clone()));
    let view = start_view(
        &plan,
        tty,
        &hub,
        &collector.metrics,
        phase,
        agents.tasks.len(),
    );

    wait_for_stop(plan.args.duration, &shutdown).await;
    tracing::info!("demo stopping: agents flush, collector checkpoints, hub shuts down");
    // Agents first: they flush their spools to the hub.
    let (events_sent, spooled_at_exit) = agents.finish(shifter).await;
    let events_read = collector.finish().await;
    view.stop.cancel();
    let fleet = view.task.await.unwrap_or_default();
    hub.shutdown().await;
    let summary = DemoSummary {
        events_sent,
        events_read,
        spooled_at_exit,
        fleet,
        points_file: points_path(&plan),
    };
    println!(
        "demo stopped: agents sent {} events ({} left spooled), collector read {}, points in {}",
        summary.events_sent,
        summary.spooled_at_exit,
        summary.events_read,
        summary.points_file.display()
    );
    Ok(summary)
}

/// Clears what an earlier run left (unless `--resume`), creates the directories and sets
/// every connector's load factor to 1.0.
fn prepare_dir(plan: &DemoPlan) -> Result<(), DemoError> {
    if plan.args.resume {
        tracing::info!(dir = %plan.dir.display(), "resuming what an earlier demo left in the directory");
    } else {
        let removed = clear_state(&plan.dir)?;
        if !removed.is_empty() {
            tracing::info!(dir = %plan.dir.display(), removed = ?removed, "starting fresh: removed an earlier demo's state (--resume keeps it)");
        }
    }
    for d in [
        plan.dir.clone(),
        plan.dir.join("load"),
        plan.dir.join("agents"),
    ] {
        mkdir(&d)?;
    }
    for c in &plan.connectors {
        let path = load_path(plan, &c.fqdn);
        write_atomic(&path, "1.0\n").map_err(|source| DemoError::Dir { path, source })?;
    }
    Ok(())
}

/// Starts the hub over TLS on loopback. The collector's checkpoints are scoped by namespace
/// and port, so a second run in the same directory takes the previous port (when free) and
/// resumes from them.
async fn start_hub(plan: &DemoPlan) -> Result<Hub, DemoError> {
    let port_file = plan.dir.join("hub.port");
    let previous = std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok());
    let hub_config = |port: u16| HubConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        data_dir: Some(plan.dir.join("hub")),
        ..HubConfig::default()
    };
    let hub = match previous {
        Some(port) => match Hub::start(hub_config(port)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::info!(port, error = %e, "previous hub port unavailable; taking a new one (the collector starts its partitions over)");
                Hub::start(hub_config(0)).await?
            }
        },
        None => Hub::start(hub_config(0)).await?,
    };
    if let Err(e) = write_atomic(&port_file, &format!("{}\n", hub.amqps_addr().port())) {
        tracing::warn!(stage = "demo_hub", error_type = "io", path = %port_file.display(), error = %e, "cannot remember the hub port");
    }
    Ok(hub)
}

/// The running collector.
struct Collector {
    task: JoinHandle<RunSummary>,
    stop: CancellationToken,
    /// Its `/metrics` URL, or `off`.
    metrics: String,
}

/// Builds the collector (the file sink, and InfluxDB when asked) and runs it over the hub's
/// partitions with the Listen key.
async fn start_collector(
    plan: &DemoPlan,
    listen: ClientConfig,
) -> Result<Collector, tcpulse_collector::BuildError> {
    let built = tcpulse_collector::build(collector_config(plan)).await?;
    let metrics = built
        .metrics_addr()
        .map_or_else(|| "off".to_owned(), |m| format!("http://{m}/metrics"));
    let provider = tcpulse_collector::eventhubs::EventHubsProvider::new(
        listen,
        tcpulse_eventhub::client::DEFAULT_CONSUMER_GROUP,
        300,
        None,
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(tcpulse_collector::run_built(built, provider, stop.clone()));
    Ok(Collector {
        task,
        stop,
        metrics,
    })
}

impl Collector {
    /// Gives the collector a moment to read the agents' last events, stops it (it drains,
    /// checkpoints and flushes) and returns the events it read.
    async fn finish(self) -> u64 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop.cancel();
        match self.task.await {
            Ok(s) => s.partitions.iter().map(|p| p.events_read).sum(),
            Err(e) => {
                tracing::error!(stage = "demo_collector", error_type = "panic", error = %e, "collector task failed");
                0
            }
        }
    }
}

/// The simulated agents, one task per instance, and the token that stops them (and the load
/// shifter).
struct Agents {
    tasks: Vec<(String, JoinHandle<Result<AgentSummary, AgentError>>)>,
    stop: CancellationToken,
}

impl Agents {
    /// Starts every connector's instances, each publishing with the Send key; the simulated
    /// clock is shifted to a working-day peak.
    fn start(plan: &DemoPlan, send: &ClientConfig, send_string: &str) -> Agents {
        let stop = CancellationToken::new();
        let shift = peak_time_shift(tcpulse_schema::Timestamp::now().unix_millis());
        let regions = ["westeurope", "northeurope", "eastus", "westus2"];
        let mut tasks = Vec::new();
        for (ci, c) in plan.connectors.iter().enumerate() {
            let region = regions[ci % regions.len()];
            for name in c.instance_names(plan.instances) {
                let cfg = agent_config(plan, c, &name, region, shift, send_string);
                let publisher = EventHubsPublisher::new(send.clone());
                tasks.push((
                    name,
                    tokio::spawn(tcpulse_agent::run::run(cfg, publisher, stop.clone())),
                ));
            }
        }
        Agents { tasks, stop }
    }

    /// Stops the agents and the shifter; waits until every agent flushed its spool (up to
    /// its `shutdown_flush`). Returns the events sent and those left spooled.
    async fn finish(self, shifter: JoinHandle<()>) -> (u64, u64) {
        self.stop.cancel();
        let _ = shifter.await;
        let (mut events_sent, mut spooled_at_exit) = (0, 0);
        for (name, h) in self.tasks {
            match h.await {
                Ok(Ok(s)) => {
                    events_sent += s.events_sent;
                    spooled_at_exit += s.spooled_at_exit;
                }
                Ok(Err(e)) => {
                    tracing::error!(stage = "demo_agent", error_type = "start", instance = %name, error = %e, "agent failed")
                }
                Err(e) => {
                    tracing::error!(stage = "demo_agent", error_type = "panic", instance = %name, error = %e, "agent task failed")
                }
            }
        }
        (events_sent, spooled_at_exit)
    }
}

/// The running fleet view.
struct View {
    task: JoinHandle<view::Fleet>,
    stop: CancellationToken,
}

/// Prints where everything is (when stdout is not a terminal; in a terminal the view's
/// header says it) and starts the view on the collector's line-protocol file.
fn start_view(
    plan: &DemoPlan,
    tty: bool,
    hub: &Hub,
    metrics: &str,
    phase: Arc<Mutex<Phase>>,
    agents: usize,
) -> View {
    let (addr, ca) = (hub.amqps_addr(), hub.ca_pem_path());
    let points = points_path(plan);
    let first_line = format!(
        "tcpulse demo: {} connectors × {} simulated agents → hub amqps://{addr} (TLS) → collector → {}",
        plan.connectors.len(),
        plan.instances,
        points.display()
    );
    let second_line = format!(
        "data {} · CA {} · metrics {metrics} · log {}",
        plan.dir.display(),
        ca.display(),
        if tty {
            log_path(plan).display().to_string()
        } else {
            "stderr".to_owned()
        }
    );
    let override_hint = plan.connectors.first().map_or(String::new(), |c| {
        format!(
            "live load override: echo 1.8 > {}",
            load_path(plan, &c.fqdn).display()
        )
    });
    if !tty {
        println!("{first_line}");
        println!("{second_line}");
    }
    tracing::info!(hub = %addr, ca = %ca.display(), metrics = %metrics, points = %points.display(), agents, "demo running");
    let header_plan = plan.clone();
    let header = move || {
        let p = phase.lock().map(|g| *g).unwrap_or(Phase {
            surge: false,
            factor: 1.0,
        });
        format!(
            "{first_line}\n{second_line}\n{} · {override_hint} · Ctrl-C stops\n",
            phase_text(&header_plan, p)
        )
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(view::follow(
        points,
        plan.args.refresh,
        tty,
        Box::new(header),
        false,
        stop.clone(),
    ));
    View { task, stop }
}

/// Waits for `shutdown`, or `duration` when given.
async fn wait_for_stop(duration: Option<Duration>, shutdown: &CancellationToken) {
    match duration {
        Some(d) => {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(d) => {}
            }
        }
        None => shutdown.cancelled().await,
    }
}

/// The load factors one shift cycle steps through: normal, halfway, `--load-shift`.
/// With the defaults (10 peak calls per instance, ×1.5) that is about 67 % (no alert),
/// 83 % (CapacityHigh) and 100 % (CapacityCritical, InstanceFull) of planned capacity.
pub fn load_cycle(factor: f64) -> [f64; 3] {
    [1.0, 1.0 + (factor - 1.0) / 2.0, factor]
}

/// Steps the first connector's load factor through [`load_cycle`], one step every
/// `--shift-period` (or holds `--load-shift` when the period is zero), until `stop`.
async fn shift_load(plan: DemoPlan, phase: Arc<Mutex<Phase>>, stop: CancellationToken) {
    let Some(first) = plan.connectors.first() else {
        return;
    };
    let path = load_path(&plan, &first.fqdn);
    let factor = plan.args.load_shift;
    let period = plan.args.shift_period;
    let set = |f: f64| {
        if let Err(e) = write_atomic(&path, &format!("{f}\n")) {
            tracing::warn!(stage = "demo_load", error_type = "io", path = %path.display(), error = %e, "cannot write the load factor");
        }
        if let Ok(mut p) = phase.lock() {
            *p = Phase {
                surge: (f - 1.0).abs() > f64::EPSILON,
                factor: f,
            };
        }
        tracing::info!(connector = %first.fqdn, load_factor = f, "load shifted");
    };
    if (factor - 1.0).abs() < f64::EPSILON {
        return;
    }
    if period.is_zero() {
        set(factor);
        return;
    }
    let cycle = load_cycle(factor);
    let mut step = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
        step = (step + 1) % cycle.len();
        set(cycle[step]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_start_removes_only_an_earlier_demos_state() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "hub/bench/0",
            "agents/tc-blue-vmss_0",
            "checkpoints",
            "load",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for file in [
            "hub/bench/0/log",
            "points.lp",
            "hub.port",
            "dead-letters.jsonl",
            "demo.log",
            "notes.txt",
        ] {
            std::fs::write(d.join(file), "x").unwrap();
        }
        std::fs::create_dir(d.join("mine")).unwrap();
        let mut removed = clear_state(d).unwrap();
        removed.sort_unstable();
        let mut want = STATE_ENTRIES.to_vec();
        want.sort_unstable();
        assert_eq!(removed, want);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort_unstable();
        assert_eq!(left, ["demo.log", "mine", "notes.txt"]);
        // Nothing left to remove the second time.
        assert!(clear_state(d).unwrap().is_empty());
    }

    #[test]
    fn load_cycle_steps_up_to_the_shift() {
        assert_eq!(load_cycle(1.5), [1.0, 1.25, 1.5]);
        assert_eq!(load_cycle(0.5), [1.0, 0.75, 0.5]);
    }

    #[test]
    fn peak_shift_lands_on_a_wednesday_morning() {
        // 2026-11-26 (a Thursday) 10:00 UTC.
        let now = 1_795_687_200_000;
        for delta in [0, 1, 3_600_000, 5 * DAY_MS + 123] {
            let t = now + delta;
            let sim = t + i64::try_from(peak_time_shift(t).as_millis()).unwrap();
            assert_eq!(sim.rem_euclid(DAY_MS), 10 * 3_600_000);
            assert_eq!((sim.div_euclid(DAY_MS) + 3).rem_euclid(7), 2);
            assert!(sim - t < 8 * DAY_MS);
        }
    }
}
