//! Configuration: a TOML file, a few environment variables, then command-line flags (each
//! layer overrides the one before), validated before anything runs.
//!
//! The structs are the documentation: every field says its meaning, unit and default.
//! Secrets (the Event Hubs connection string, store tokens and passwords) are read only
//! from an environment variable or a file named in the config, never from the config
//! itself or a flag, so they never show in `ps`, shell history or `--help`. A configured
//! secret file wins over the variable, with one WARN when both are set
//! ([`tcpulse_eventhub::cli_support::secret`], the rule all binaries share).
//!
//! Environment overrides (for containers):
//!
//! | variable | sets |
//! | --- | --- |
//! | `TCPULSE_COLLECTOR_NAME` | `name` |
//! | `TCPULSE_INFLUXDB_URL`, `TCPULSE_INFLUXDB_ORG`, `TCPULSE_INFLUXDB_BUCKET` | `sinks.influxdb_v2` (created if absent; all three needed then) |
//!
//! A minimal config ([`EXAMPLE_CONFIG`]):
//!
//! ```toml
//! name = "collector-1"
//! [source.eventhub]
//! consumer_group = "$Default"
//! [sinks.influxdb_v2]
//! url = "https://influx.example.com:8086"
//! org = "noc"
//! bucket = "tcpulse"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tcpulse_eventhub::client::ClientConfig;
use tcpulse_eventhub::identity::{AuthMethod, CredentialStats, IdentityConfig};
use tcpulse_schema::capacity::{
    INSTANCE_STALE_SECONDS, PEAK_WINDOW_SECONDS, REPORT_INTERVAL_SECONDS, ROLLUP_INTERVAL_SECONDS,
};
use tcpulse_schema::Timestamp;

use crate::aggregate::{duration_ms, AggregateSettings};
use crate::sinks::file::config::FileSinkConfig;
use crate::sinks::influxdb_v1::config::{InfluxDbV1SinkConfig, V1_PASSWORD};
use crate::sinks::influxdb_v2::config::{InfluxDbV2SinkConfig, V2_TOKEN};
use crate::source::ReadFrom;

/// What the Event Hubs connection string is called in messages.
pub const EVENTHUB_SECRET: &str = "Event Hubs connection string";

/// The minimal example config, tested to parse and validate.
pub const EXAMPLE_CONFIG: &str = r#"name = "collector-1"
[source.eventhub]
consumer_group = "$Default"
[sinks.influxdb_v2]
url = "https://influx.example.com:8086"
org = "noc"
bucket = "tcpulse"
"#;

/// The whole collector configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This collector's name: the `collector` tag of `tc_pipeline` points.
    /// Default: `tcpulse-collector`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where events come from (exactly one).
    #[serde(default)]
    pub source: SourceConfig,
    /// Where partitions resume.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Rollups, staleness and duplicate detection.
    #[serde(default)]
    pub aggregate: AggregateConfig,
    /// Batching and the in-flight bound.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Retries of store writes.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Where points go; a line-protocol file when none is set.
    #[serde(default)]
    pub sinks: SinksConfig,
    /// The dead-letter file.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// The `/metrics`, `/healthz`, `/readyz` server.
    #[serde(default)]
    pub http: HttpConfig,
    /// How often each partition writes its `tc_pipeline` point. Default: 10s.
    #[serde(default = "default_pipeline_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub pipeline_interval: Duration,
}

fn default_name() -> String {
    "tcpulse-collector".into()
}

const fn default_pipeline_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: default_name(),
            source: SourceConfig::default(),
            checkpoint: CheckpointConfig::default(),
            aggregate: AggregateConfig::default(),
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
            sinks: SinksConfig::default(),
            dead_letter: DeadLetterConfig::default(),
            http: HttpConfig::default(),
            pipeline_interval: default_pipeline_interval(),
        }
    }
}

/// Event sources; set exactly one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Azure Event Hubs (every partition of one hub).
    #[serde(default)]
    pub eventhub: Option<EventHubSourceConfig>,
    /// A file with one event body (JSON) per line, read as partition `partition`.
    #[serde(default)]
    pub file: Option<FileSourceConfig>,
}

/// Event Hubs consumer settings. With `auth = "connection_string"` (the default) the
/// connection string (Listen rights, with `EntityPath`) comes from the environment or a
/// file; with an Entra ID method, `namespace` and `event_hub` name the hub and the
/// `[source.eventhub.identity]` table the principal (role "Azure Event Hubs Data Receiver").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventHubSourceConfig {
    /// How to authenticate: `connection_string` (a SAS key), `managed_identity` (the
    /// machine's identity, no secret), `client_secret`, `client_certificate` or
    /// `workload_identity` (a service principal, set in `[source.eventhub.identity]`).
    /// Default: `connection_string`.
    #[serde(default)]
    pub auth: AuthMethod,
    /// Namespace host (`<name>.servicebus.windows.net`) for the Entra ID methods.
    /// Default: none.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Entra ID settings: `tenant_id`, `client_id`, `object_id`, `resource_id`,
    /// `client_secret_file` (else `AZURE_CLIENT_SECRET`), `client_certificate_file`,
    /// `federated_token_file`, `authority_host`, `imds_endpoint`; each falls back to the
    /// variable the Azure SDKs read (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, …).
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Environment variable holding the connection string.
    /// Default: `TCPULSE_EVENTHUB_CONNECTION_STRING`.
    #[serde(default = "default_connection_string_env")]
    pub connection_string_env: String,
    /// File holding the connection string (first line); a configured file wins over the
    /// variable (one WARN when both are set). Default: none.
    #[serde(default)]
    pub connection_string_file: Option<PathBuf>,
    /// Consumer group. Default: `$Default`.
    #[serde(default = "default_consumer_group")]
    pub consumer_group: String,
    /// Owner level (epoch) of the receivers; a higher one takes a partition over.
    /// Default: none; 0 with `checkpoint.store = "azure_blob"`, as the Azure SDKs' event
    /// processors open theirs.
    #[serde(default)]
    pub owner_level: Option<i64>,
    /// Events the link may deliver ahead of processing (link credit). Default: 300.
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// Event hub name when the connection string has no `EntityPath`.
    #[serde(default)]
    pub event_hub: Option<String>,
    /// Transport settings: `custom_endpoint` (host:port to dial, e.g. a private endpoint or
    /// tcpulse-hub), `extra_ca_file` (PEM CA to trust besides the built-in roots),
    /// `transport` (`amqp`, `websocket` for port 443, or `auto`), `websocket_endpoint`, the
    /// HTTP CONNECT `proxy` table (`url`, `no_proxy`, `username`, `password_file`,
    /// `password_env`), timeouts, token lifetime and retry. See
    /// `tcpulse_eventhub::client::ClientOptions`.
    #[serde(default)]
    pub client: tcpulse_eventhub::client::ClientOptions,
}

fn default_connection_string_env() -> String {
    "TCPULSE_EVENTHUB_CONNECTION_STRING".into()
}

fn default_consumer_group() -> String {
    "$Default".into()
}

const fn default_prefetch() -> u32 {
    300
}

/// A file of event bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file (JSON Lines: one event body per line). Required.
    pub path: PathBuf,
    /// The partition id it stands for. Default: `0`.
    #[serde(default = "default_file_partition")]
    pub partition: String,
}

pub(crate) fn default_file_partition() -> String {
    "0".into()
}

/// A start position as written in the config: `earliest`, `latest`, or an RFC 3339 time
/// (events enqueued after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub struct PositionSpec(pub ReadFrom);

impl TryFrom<String> for PositionSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "earliest" => Ok(PositionSpec(ReadFrom::Earliest)),
            "latest" => Ok(PositionSpec(ReadFrom::Latest)),
            other => Timestamp::parse_rfc3339(other)
                .map(|t| PositionSpec(ReadFrom::EnqueuedAfterMs(t.unix_millis())))
                .map_err(|_| format!("{other:?} is not a start position; use \"earliest\", \"latest\" or an RFC 3339 time")),
        }
    }
}

impl From<PositionSpec> for String {
    fn from(p: PositionSpec) -> String {
        match p.0 {
            ReadFrom::Earliest => "earliest".into(),
            ReadFrom::Latest => "latest".into(),
            ReadFrom::EnqueuedAfterMs(ms) => Timestamp::from_unix_millis(ms)
                .map(|t| t.to_string())
                .unwrap_or_else(|| "earliest".into()),
            ReadFrom::AfterSequence(_) => "earliest".into(),
        }
    }
}

/// Where checkpoints are kept.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStoreKind {
    /// JSON files under `checkpoint.dir`: one collector reads every partition.
    #[default]
    File,
    /// An Azure Blob container (`[checkpoint.azure_blob]`) in the Azure SDKs' layout:
    /// several collectors (and SDK event processors) share the consumer group, each owning
    /// some partitions (`[checkpoint.load_balancing]`); receivers open with owner level 0.
    AzureBlob,
}

/// Checkpoint settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// `file` (one collector; the default) or `azure_blob` (highly available: collectors
    /// share the partitions through the container of `[checkpoint.azure_blob]`).
    #[serde(default)]
    pub store: CheckpointStoreKind,
    /// The Blob container, for `store = "azure_blob"`. Default: none.
    #[serde(default)]
    pub azure_blob: Option<crate::checkpoint::blob::config::AzureBlobConfig>,
    /// How collectors sharing the container split the partitions (`store = "azure_blob"`).
    #[serde(default)]
    pub load_balancing: crate::ownership::config::LoadBalancingConfig,
    /// Directory of the checkpoint files (`store = "file"`). Default: `checkpoints`.
    #[serde(default = "default_checkpoint_dir")]
    pub dir: PathBuf,
    /// Where a partition without a checkpoint starts. Default: `earliest` (replays are
    /// idempotent, so reading what the hub retains loses nothing).
    #[serde(default = "default_initial_position")]
    pub initial_position: PositionSpec,
    /// Where a partition whose checkpoint is corrupt starts (the corrupt file is reported
    /// and kept as `<file>.corrupt-<ms>`). Default: `earliest`.
    #[serde(default = "default_initial_position")]
    pub on_corrupt: PositionSpec,
    /// Where a partition starts when its checkpoint is past the newest event the service
    /// holds (`last_enqueued_sequence_number`): the Event Hub was deleted and re-created
    /// under the same name, or the checkpoint was restored from elsewhere or edited. This
    /// is checked on every partition open (and, when the checkpointed event is still
    /// retained, that it is the same event: same sequence number and enqueue time, which
    /// catches a re-created hub that already grew past the checkpoint) and reported as an
    /// ERROR naming both numbers,
    /// counted in `tcpulse_collector_component_errors_total{stage="checkpoint",
    /// error_type="ahead_of_partition"}` and shown by `/readyz`. `earliest`, `latest` or an
    /// RFC 3339 time. Default: `earliest` (replays are idempotent, so nothing the hub holds
    /// is skipped). A checkpoint older than the oldest retained event (retention expired
    /// while the collector was down) always starts at the oldest retained event, and the
    /// events lost are counted (`tcpulse_collector_retention_lost_events_total`, field
    /// `retention_lost_events` of `tc_pipeline`).
    #[serde(default = "default_initial_position")]
    pub on_ahead_of_partition: PositionSpec,
    /// Shortest time between two checkpoint writes of a partition (the last one is
    /// always written at shutdown). Default: 5s.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
}

fn default_checkpoint_dir() -> PathBuf {
    PathBuf::from("checkpoints")
}

const fn default_initial_position() -> PositionSpec {
    PositionSpec(ReadFrom::Earliest)
}

const fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            store: CheckpointStoreKind::File,
            azure_blob: None,
            load_balancing: Default::default(),
            dir: default_checkpoint_dir(),
            initial_position: default_initial_position(),
            on_corrupt: default_initial_position(),
            on_ahead_of_partition: default_initial_position(),
            interval: default_checkpoint_interval(),
        }
    }
}

/// Aggregation settings (event time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Rollup interval; `tc_connector` points are stamped at window ends aligned to it.
    /// Default: 10s (`ROLLUP_INTERVAL_SECONDS`).
    #[serde(default = "default_rollup_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub rollup_interval: Duration,
    /// An instance silent for longer is written `up=0` and leaves the online count.
    /// Default: 30s (`INSTANCE_STALE_SECONDS`, three 10 s report intervals).
    #[serde(default = "default_stale_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stale_after: Duration,
    /// `peak_calls` looks back this far. Default: 1h (`PEAK_WINDOW_SECONDS`).
    #[serde(default = "default_peak_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub peak_window: Duration,
    /// A window closes this long after the partition's event time passes its end.
    /// Default: 10s (one report interval).
    #[serde(default = "default_lateness", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lateness: Duration,
    /// How far an event's sample time (the agent's clock) may run ahead of the time Event
    /// Hubs enqueued it (the service's clock). Beyond it the event is a `clock_skew` dead
    /// letter: its point would land in the future. Within it the point is written at its
    /// sample time, and the difference as `clock_skew_seconds`. Liveness and window
    /// closing use only the enqueued time, so no agent's clock moves time for the others.
    /// Default: 5m.
    #[serde(default = "default_max_clock_skew", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_clock_skew: Duration,
    /// How far an event's sample time may lag behind its enqueued time. Beyond it the
    /// event is a `clock_skew` dead letter (a clock far behind, or a sample older than the
    /// store keeps, which the store would drop silently). Reports replayed from an agent's
    /// spool after an outage are legitimately old, so keep it long, and below the store's
    /// retention. Default: 30d (VictoriaMetrics keeps one month by default).
    #[serde(default = "default_max_sample_age", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_sample_age: Duration,
    /// A down instance is forgotten after this long without a report. Default: 1h.
    #[serde(default = "default_peak_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub forget_after: Duration,
    /// With nothing arriving for this long, the watermark follows the wall clock so
    /// silent connectors still close windows. Default: 30s.
    #[serde(default = "default_idle_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_after: Duration,
    /// Sequence numbers remembered per `(instance, boot)` for duplicate detection.
    /// Default: 1024.
    #[serde(default = "default_dedup_window_events")]
    pub dedup_window_events: u64,
    /// `(instance, boot)` streams remembered. Default: 4096.
    #[serde(default = "default_dedup_max_streams")]
    pub dedup_max_streams: usize,
}

const fn default_rollup_interval() -> Duration {
    Duration::from_secs(ROLLUP_INTERVAL_SECONDS)
}
const fn default_stale_after() -> Duration {
    Duration::from_secs(INSTANCE_STALE_SECONDS)
}
const fn default_peak_window() -> Duration {
    Duration::from_secs(PEAK_WINDOW_SECONDS)
}
const fn default_lateness() -> Duration {
    Duration::from_secs(REPORT_INTERVAL_SECONDS)
}
const fn default_max_clock_skew() -> Duration {
    Duration::from_millis(tcpulse_schema::decode::DEFAULT_MAX_AHEAD_MS as u64)
}
const fn default_max_sample_age() -> Duration {
    Duration::from_millis(tcpulse_schema::decode::DEFAULT_MAX_BEHIND_MS as u64)
}
const fn default_idle_after() -> Duration {
    Duration::from_secs(30)
}
const fn default_dedup_window_events() -> u64 {
    tcpulse_schema::dedup::DEFAULT_WINDOW_EVENTS
}
const fn default_dedup_max_streams() -> usize {
    tcpulse_schema::dedup::DEFAULT_MAX_STREAMS
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            rollup_interval: default_rollup_interval(),
            stale_after: default_stale_after(),
            peak_window: default_peak_window(),
            lateness: default_lateness(),
            max_clock_skew: default_max_clock_skew(),
            max_sample_age: default_max_sample_age(),
            forget_after: default_peak_window(),
            idle_after: default_idle_after(),
            dedup_window_events: default_dedup_window_events(),
            dedup_max_streams: default_dedup_max_streams(),
        }
    }
}

impl AggregateConfig {
    /// The aggregator's settings in milliseconds.
    pub fn settings(&self) -> AggregateSettings {
        AggregateSettings {
            rollup_interval_ms: duration_ms(self.rollup_interval),
            stale_after_ms: duration_ms(self.stale_after),
            peak_window_ms: duration_ms(self.peak_window),
            lateness_ms: duration_ms(self.lateness),
            max_clock_skew_ms: duration_ms(self.max_clock_skew),
            max_sample_age_ms: duration_ms(self.max_sample_age),
            forget_after_ms: duration_ms(self.forget_after),
        }
    }
}

/// Batching per partition, and the bound on unacknowledged data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Lines per batch at most. Default: 5000 (InfluxData recommends 5,000–10,000).
    #[serde(default = "default_max_lines")]
    pub max_lines: usize,
    /// Bytes per batch at most (before gzip). The batch is a buffer that doubles as it
    /// grows, so it holds the next power of two above the bytes written; a limit just
    /// below a power of two keeps it there (1 MiB, the old default, held 2 MiB per batch).
    /// Default: 245760 (240 KiB, about 600 `tc_instance` lines of ~400 B, so while a
    /// partition catches up this, not `max_lines`, ends its batches): a partition holds at
    /// most (`max_in_flight_batches` + 1) × 256 KiB. In the collector_e2e bench (300k
    /// events, 4 partitions, VictoriaMetrics) the collector's RSS max went from 52–55 MiB
    /// with 1 MiB batches to 44–45 MiB (38 to 35 with mimalloc 2), at the same throughput
    /// and CPU per event (issue 17). At the usual load (one report per instance every
    /// 10 s) the flush interval seals batches long before this.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// A non-empty batch is sent at least this often. Default: 1s.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub flush_interval: Duration,
    /// Batches per partition sent and not yet acknowledged; at the bound the partition
    /// stops reading. Memory per partition ≤ (this + 1) × `max_bytes` rounded up to a
    /// power of two (see `max_bytes`). Default: 4.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_batches: usize,
}

const fn default_max_lines() -> usize {
    5000
}
const fn default_max_bytes() -> usize {
    240 << 10
}
const fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
const fn default_max_in_flight() -> usize {
    4
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_lines: default_max_lines(),
            max_bytes: default_max_bytes(),
            flush_interval: default_flush_interval(),
            max_in_flight_batches: default_max_in_flight(),
        }
    }
}

/// Retries of store writes (forever, for retryable errors), and of the Event Hubs source
/// when the service refuses the credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff delay. Default: 500ms.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub initial: Duration,
    /// Largest backoff delay. Default: 30s.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max: Duration,
    /// Largest `Retry-After` honoured. Default: 5m.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_retry_after: Duration,
    /// At shutdown, how long in-flight batches may still be retried before they are
    /// left for the next start (they are not checkpointed). Default: 10s.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// First delay before retrying the Event Hubs source after the service refused the
    /// credentials (wrong key, missing Listen right, key rotated); it doubles up to
    /// `auth_max`. Each retry is logged with the cause; the process stays alive. Default: 30s.
    #[serde(default = "default_auth_retry_initial", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub auth_initial: Duration,
    /// Largest delay between retries after refused credentials. Default: 5m.
    #[serde(default = "default_auth_retry_max", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub auth_max: Duration,
}

const fn default_auth_retry_initial() -> Duration {
    Duration::from_secs(30)
}
const fn default_auth_retry_max() -> Duration {
    Duration::from_secs(300)
}

const fn default_retry_initial() -> Duration {
    Duration::from_millis(500)
}
const fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}
const fn default_max_retry_after() -> Duration {
    Duration::from_secs(300)
}
const fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: default_retry_initial(),
            max: default_retry_max(),
            max_retry_after: default_max_retry_after(),
            shutdown_grace: default_shutdown_grace(),
            auth_initial: default_auth_retry_initial(),
            auth_max: default_auth_retry_max(),
        }
    }
}

/// Sinks; every configured one receives every batch. None configured: `file` with its
/// defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    /// InfluxDB v2 write API.
    #[serde(default)]
    pub influxdb_v2: Option<InfluxDbV2SinkConfig>,
    /// InfluxDB v1 `/write`.
    #[serde(default)]
    pub influxdb_v1: Option<InfluxDbV1SinkConfig>,
    /// Line-protocol file.
    #[serde(default)]
    pub file: Option<FileSinkConfig>,
}

impl SinksConfig {
    /// True when no sink is configured.
    pub fn is_empty(&self) -> bool {
        self.influxdb_v2.is_none() && self.influxdb_v1.is_none() && self.file.is_none()
    }
}

/// The dead-letter file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Path of the JSON Lines file. Default: `tcpulse-dead-letters.jsonl`.
    #[serde(default = "default_dead_letter_path")]
    pub path: PathBuf,
    /// Bytes of a body kept per record. Default: 65536.
    #[serde(default = "default_dead_letter_body")]
    pub max_body_bytes: usize,
    /// Size at which the file rotates to `<path>.1`. Default: 104857600 (100 MiB).
    #[serde(default = "default_dead_letter_file")]
    pub max_file_bytes: u64,
}

fn default_dead_letter_path() -> PathBuf {
    PathBuf::from("tcpulse-dead-letters.jsonl")
}
const fn default_dead_letter_body() -> usize {
    64 * 1024
}
const fn default_dead_letter_file() -> u64 {
    100 << 20
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            path: default_dead_letter_path(),
            max_body_bytes: default_dead_letter_body(),
            max_file_bytes: default_dead_letter_file(),
        }
    }
}

/// The HTTP server for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve at all. Default: true.
    #[serde(default = "default_http_enabled")]
    pub enabled: bool,
    /// Listen address. Default: `127.0.0.1:19273` (Prometheus' exporter port range
    /// 9100–9999 is fully allocated; before, the default was 9273, Telegraf's port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

const fn default_http_enabled() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 19273))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: default_http_enabled(),
            listen: default_listen(),
        }
    }
}

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("config field `{field}`: {why}")]
    Invalid {
        /// Dotted field name.
        field: &'static str,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// An environment override is incomplete.
    #[error("environment: {0}")]
    Env(String),
}

use tcpulse_eventhub::cli_support::secret::{self, Loaded};

// ---- Secret checks (check-config) ---------------------------------------------------

/// Reads a secret for a check (see [`secret`] for the rule), turning a read failure into a
/// config error of `field`.
fn read_secret(
    field: &'static str,
    what: &str,
    env: &str,
    file: Option<&Path>,
) -> Result<Option<Loaded>, ConfigError> {
    secret::load(what, Some(env), file).map_err(|e| ConfigError::Invalid {
        field,
        why: e.to_string(),
    })
}

/// Shape of an HTTP credential (token or password): not an example placeholder, no
/// whitespace, quotes or control characters (a pasted `Token …` prefix or quoted value).
fn check_http_secret(
    field: &'static str,
    what: &str,
    origin: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let why = if value.starts_with('<') && value.ends_with('>') {
        "still holds the example placeholder; put the real value there"
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "contains whitespace; give the value alone, without a `Token ` prefix or line breaks"
    } else if value.contains(['"', '\'']) {
        "contains quotes; give the value without quotes"
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid {
        field,
        why: format!("the {what} from {origin} {why}"),
    })
}

impl EventHubSourceConfig {
    /// Checks the connection string `value` as the consumer will use it, without
    /// connecting: every part's shape, the hub (`EntityPath` or `event_hub`) and the
    /// client options. Returns remarks that do not stop the collector.
    pub fn check_connection_string(
        &self,
        value: &str,
        origin: &secret::Origin,
    ) -> Result<Vec<String>, ConfigError> {
        let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid {
            field: "source.eventhub",
            why: format!("the connection string from {origin} cannot be used: {e}"),
        };
        let parsed = tcpulse_eventhub::connection_string::ConnectionString::parse(value.trim())
            .map_err(|e| invalid(&e))?;
        // The string and the dial address first, then the transport settings on their own,
        // so an error names the right part.
        let transport = tcpulse_eventhub::client::ClientOptions {
            transport: Default::default(),
            websocket_endpoint: None,
            proxy: Default::default(),
            ..self.client.clone()
        };
        tcpulse_eventhub::client::ClientConfig::from_connection_string(
            value.trim(),
            self.event_hub.as_deref(),
            transport,
        )
        .map_err(|e| {
            invalid(
                &e.to_string()
                    .replace("configure the hub name", "set `source.eventhub.event_hub`"),
            )
        })?;
        tcpulse_eventhub::client::ClientConfig::from_connection_string(
            value.trim(),
            self.event_hub.as_deref(),
            self.client.clone(),
        )
        .map_err(|e| ConfigError::Invalid {
            field: "source.eventhub.client",
            why: format!(
                "the transport settings (transport, websocket_endpoint, proxy) cannot be used: {e}"
            ),
        })?;
        Ok(parsed.notes())
    }

    /// Loads the connection string (see [`secret`] for the rule); an error when there is none.
    pub fn connection_string(&self) -> Result<Loaded, ConfigError> {
        read_secret(
            "source.eventhub.connection_string_file",
            EVENTHUB_SECRET,
            &self.connection_string_env,
            self.connection_string_file.as_deref(),
        )?
        .ok_or_else(|| ConfigError::Invalid {
            field: "source.eventhub",
            why: format!(
                "no connection string: export {} or set `source.eventhub.connection_string_file`",
                self.connection_string_env
            ),
        })
    }

    /// The client config (and, for Entra ID, the credential's numbers), without
    /// connecting: from the connection string, or from the credential the identity settings
    /// build.
    pub fn client_config(
        &self,
    ) -> Result<(ClientConfig, Option<Arc<CredentialStats>>), ConfigError> {
        let invalid = |why: String| ConfigError::Invalid {
            field: "source.eventhub",
            why,
        };
        if self.auth == AuthMethod::ConnectionString {
            let secret = self.connection_string()?;
            secret.log_conflict();
            let client = ClientConfig::from_connection_string(
                secret.expose(),
                self.event_hub.as_deref(),
                self.client.clone(),
            )
            .map_err(|e| {
                invalid(format!(
                    "the connection string from {} cannot be used: {e}",
                    secret.origin()
                ))
            })?;
            return Ok((client, None));
        }
        let namespace = self.namespace.as_deref().filter(|n| !n.trim().is_empty()).ok_or_else(|| {
            invalid(format!("auth = \"{}\" needs `source.eventhub.namespace` (<name>.servicebus.windows.net)", self.auth))
        })?;
        let hub = self
            .event_hub
            .as_deref()
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "auth = \"{}\" needs `source.eventhub.event_hub`",
                    self.auth
                ))
            })?;
        let credential = self
            .identity
            .credential(self.auth, &|k| std::env::var(k).ok())
            .map_err(|e| invalid(e.to_string()))?
            .ok_or_else(|| invalid("no credential".into()))?;
        let stats = credential.stats();
        let client = ClientConfig::from_credential(namespace, hub, credential, self.client.clone())
            .map_err(|e| invalid(e.to_string()))?;
        Ok((client, Some(stats)))
    }

    /// Loads and checks the connection string (logs a file/variable conflict), or builds
    /// the Entra ID credential.
    fn check_secret(&self) -> Result<Vec<String>, ConfigError> {
        if self.auth != AuthMethod::ConnectionString {
            self.client_config()?;
            return Ok(Vec::new());
        }
        let value = self.connection_string()?;
        value.log_conflict();
        self.check_connection_string(value.expose(), value.origin())
    }
}

impl InfluxDbV2SinkConfig {
    /// Checks the token's shape (its `build`, which `check-config` runs too, logs a conflict).
    fn check_secret(&self) -> Result<Vec<String>, ConfigError> {
        let file = self.token_file.as_deref();
        let field = "sinks.influxdb_v2.token_file";
        match read_secret(field, V2_TOKEN, &self.token_env, file)? {
            Some(token) => {
                let origin = token.origin().to_string();
                check_http_secret("sinks.influxdb_v2", "token", &origin, token.expose())?;
                Ok(Vec::new())
            }
            None => Ok(vec![format!(
                "no InfluxDB token in ${} or `sinks.influxdb_v2.token_file`: writes go without Authorization (fine for VictoriaMetrics; InfluxDB 2.x and 3.x answer 401)",
                self.token_env
            )]),
        }
    }
}

impl InfluxDbV1SinkConfig {
    /// Checks the password's shape (its `build`, which `check-config` runs too, logs a
    /// conflict).
    fn check_secret(&self) -> Result<(), ConfigError> {
        if self.username.is_empty() {
            return Ok(());
        }
        let file = self.password_file.as_deref();
        let field = "sinks.influxdb_v1.password_file";
        match read_secret(field, V1_PASSWORD, &self.password_env, file)? {
            Some(password) => {
                let origin = password.origin().to_string();
                check_http_secret("sinks.influxdb_v1", "password", &origin, password.expose())
            }
            None => Err(ConfigError::Invalid {
                field: "sinks.influxdb_v1",
                why: format!(
                    "username {:?} is set but there is no password: export {} or set `password_file`, or remove `username` if the server does not authenticate",
                    self.username, self.password_env
                ),
            }),
        }
    }
}

impl Config {
    /// Checks every configured secret's presence and shape without connecting anywhere:
    /// the Event Hubs connection string, the v2 token (optional: a note when absent) and the
    /// v1 password (required with a username). Returns notes for `check-config`. Messages
    /// name the setting and never contain the secret.
    pub fn check_secrets(&self) -> Result<Vec<String>, ConfigError> {
        let mut notes = Vec::new();
        if let Some(eh) = &self.source.eventhub {
            notes.extend(eh.check_secret()?);
        }
        if let Some(v2) = &self.sinks.influxdb_v2 {
            notes.extend(v2.check_secret()?);
        }
        if let Some(v1) = &self.sinks.influxdb_v1 {
            v1.check_secret()?;
        }
        Ok(notes)
    }
}

impl Config {
    /// Parses TOML text (`origin` names it in errors).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads `path` (or starts from the defaults) and applies the environment overrides.
    /// Call [`Config::validate`] after the flags are applied.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                Config::from_toml(&text, p)?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Applies the environment overrides (see the module docs) read through `var`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if let Some(name) = get("TCPULSE_COLLECTOR_NAME") {
            self.name = name;
        }
        let (url, org, bucket) = (
            get("TCPULSE_INFLUXDB_URL"),
            get("TCPULSE_INFLUXDB_ORG"),
            get("TCPULSE_INFLUXDB_BUCKET"),
        );
        match &mut self.sinks.influxdb_v2 {
            Some(v2) => {
                if let Some(u) = url {
                    v2.url = u;
                }
                if let Some(o) = org {
                    v2.org = o;
                }
                if let Some(b) = bucket {
                    v2.bucket = b;
                }
            }
            None => match (url, org, bucket) {
                (None, None, None) => {}
                (Some(u), Some(o), Some(b)) => {
                    self.sinks.influxdb_v2 = Some(InfluxDbV2SinkConfig::new(u, o, b));
                }
                _ => {
                    return Err(ConfigError::Env(
                        "set all of TCPULSE_INFLUXDB_URL, TCPULSE_INFLUXDB_ORG and TCPULSE_INFLUXDB_BUCKET, or none".into(),
                    ))
                }
            },
        }
        Ok(())
    }

    /// Checks that a source is configured (not needed when a caller brings its own
    /// [`crate::SourceProvider`] to [`crate::run_built`]).
    pub fn validate_source(&self) -> Result<(), ConfigError> {
        if self.source.eventhub.is_none() && self.source.file.is_none() {
            return Err(ConfigError::Invalid {
                field: "source",
                why: "no source: add [source.eventhub] (with the connection string in $TCPULSE_EVENTHUB_CONNECTION_STRING) or [source.file], or pass --source-file".into(),
            });
        }
        Ok(())
    }

    /// Checks ranges and consistency; fills in the default file sink when no sink is set.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, why: &str| ConfigError::Invalid {
            field,
            why: why.to_owned(),
        };
        if self.source.eventhub.is_some() && self.source.file.is_some() {
            return Err(invalid(
                "source",
                "set only one of [source.eventhub] and [source.file]",
            ));
        }
        let a = &self.aggregate;
        if a.rollup_interval < Duration::from_secs(1) || a.rollup_interval.subsec_millis() != 0 {
            return Err(invalid(
                "aggregate.rollup_interval",
                "must be whole seconds, at least 1s",
            ));
        }
        if a.stale_after.is_zero() {
            return Err(invalid("aggregate.stale_after", "must be more than 0s"));
        }
        if a.peak_window < a.rollup_interval {
            return Err(invalid(
                "aggregate.peak_window",
                "must be at least aggregate.rollup_interval",
            ));
        }
        if a.forget_after < a.stale_after {
            return Err(invalid(
                "aggregate.forget_after",
                "must be at least aggregate.stale_after",
            ));
        }
        let b = &self.batch;
        if b.max_lines == 0 || b.max_bytes < 1024 {
            return Err(invalid(
                "batch",
                "max_lines must be ≥ 1 and max_bytes ≥ 1024",
            ));
        }
        if b.max_in_flight_batches == 0 {
            return Err(invalid("batch.max_in_flight_batches", "must be at least 1"));
        }
        if b.flush_interval.is_zero() {
            return Err(invalid("batch.flush_interval", "must be more than 0s"));
        }
        if self.retry.initial.is_zero() || self.retry.max < self.retry.initial {
            return Err(invalid("retry", "initial must be > 0 and max ≥ initial"));
        }
        if self.retry.auth_initial.is_zero() || self.retry.auth_max < self.retry.auth_initial {
            return Err(invalid(
                "retry",
                "auth_initial must be > 0 and auth_max ≥ auth_initial",
            ));
        }
        if self.pipeline_interval < Duration::from_secs(1) {
            return Err(invalid("pipeline_interval", "must be at least 1s"));
        }
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if let Err(why) = self.checkpoint.load_balancing.check() {
            return Err(ConfigError::Invalid {
                field: "checkpoint.load_balancing",
                why,
            });
        }
        if self.checkpoint.store == CheckpointStoreKind::AzureBlob
            && self.checkpoint.azure_blob.is_none()
        {
            return Err(invalid(
                "checkpoint.azure_blob",
                "store = \"azure_blob\" needs a [checkpoint.azure_blob] table (container_url, or a connection string and container)",
            ));
        }
        if self.sinks.is_empty() {
            self.sinks.file = Some(FileSinkConfig::default());
        }
        Ok(())
    }
}

// ---- Reference config ----------------------------------------------------------------

/// The first lines of [`reference`].
const REFERENCE_HEADER: &str = "tcpulse-collector reference configuration: every setting, \
    printed by `tcpulse-collector config` from the config structs' docs and defaults.\n\n\
    Lines without `#` are the defaults: this file as it is configures nothing else. \
    `# key = …` lines and `# [table]` sections have no default (a sink, the source, a \
    secret file): uncomment and fill them in. Secrets never go in this file: set the \
    `*_file` settings or the environment variables the `*_env` settings name.";

/// The annotated reference config (`tcpulse-collector config`): every setting with its doc
/// comment; defaults active, settings without a default commented out. It parses to
/// [`Config::default`].
pub fn reference() -> String {
    let schema = schemars::schema_for!(Config);
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    tcpulse_eventhub::cli_support::reference::render(&schema, &defaults, REFERENCE_HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::from_toml(text, Path::new("test.toml"))?;
        c.validate()?;
        c.validate_source()?;
        Ok(c)
    }

    #[test]
    fn the_example_parses_with_documented_defaults() {
        let c = parse(EXAMPLE_CONFIG).unwrap();
        assert_eq!(c.name, "collector-1");
        let eh = c.source.eventhub.as_ref().unwrap();
        assert_eq!(
            eh.connection_string_env,
            "TCPULSE_EVENTHUB_CONNECTION_STRING"
        );
        assert_eq!(eh.prefetch, 300);
        assert_eq!(
            c.aggregate.rollup_interval,
            Duration::from_secs(ROLLUP_INTERVAL_SECONDS)
        );
        assert_eq!(
            c.aggregate.stale_after,
            Duration::from_secs(INSTANCE_STALE_SECONDS)
        );
        assert_eq!(c.batch, BatchConfig::default());
        assert_eq!(
            c.checkpoint.initial_position,
            PositionSpec(ReadFrom::Earliest)
        );
        let v2 = c.sinks.influxdb_v2.as_ref().unwrap();
        assert_eq!(v2.token_env, "TCPULSE_INFLUXDB_TOKEN");
        assert!(v2.gzip);
        assert!(
            c.sinks.file.is_none(),
            "a store is configured: no default file sink"
        );
    }

    #[test]
    fn durations_positions_and_the_default_sink() {
        let c = parse(
            r#"
            [source.file]
            path = "events.jsonl"
            [aggregate]
            rollup_interval = "10s"
            stale_after = "45s"
            [checkpoint]
            on_corrupt = "2026-11-26T10:00:00Z"
            initial_position = "latest"
            [batch]
            flush_interval = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.aggregate.rollup_interval, Duration::from_secs(10));
        assert_eq!(c.aggregate.settings().stale_after_ms, 45_000);
        assert_eq!(c.batch.flush_interval, Duration::from_millis(250));
        assert_eq!(c.checkpoint.initial_position.0, ReadFrom::Latest);
        assert_eq!(
            c.checkpoint.on_corrupt.0,
            ReadFrom::EnqueuedAfterMs(1_795_687_200_000)
        );
        assert_eq!(
            c.sinks.file,
            Some(FileSinkConfig::default()),
            "file sink when none is set"
        );
    }

    #[test]
    fn reference_parses_to_the_defaults() {
        let text = reference();
        let parsed = Config::from_toml(&text, Path::new("reference.toml")).unwrap();
        assert_eq!(parsed, Config::default(), "{text}");
        assert!(text.contains("\n# [sinks.influxdb_v2]\n"), "{text}");
        assert!(text.contains("\n# token_file = "), "{text}");
    }

    /// #13: a field without a doc comment, or a table the generator drops, fails here.
    #[test]
    fn reference_documents_every_field_of_every_struct() {
        let schema = schemars::schema_for!(Config);
        let problems =
            tcpulse_eventhub::cli_support::reference::undocumented(&schema, &reference());
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn config_errors_name_the_field_and_the_fix() {
        let cases = [
            ("[source.file]\npath='x'\nbogus = 1\n", "unknown field `bogus`"),
            ("[source.file]\npath='x'\n[sinks.influxdb_v2]\nurl='http://x'\norg='o'\nbucket='b'\ntoken='s3cret'\n", "unknown field `token`"),
            ("[source.file]\npath='x'\n[aggregate]\nrollup_interval='10 parsecs'\n", "rollup_interval"),
            ("[source.file]\npath='x'\n[aggregate]\nrollup_interval='1500ms'\n", "whole seconds"),
            ("[source.file]\npath='x'\n[checkpoint]\non_corrupt='yesterday'\n", "not a start position"),
            ("[source.file]\npath='x'\n[batch]\nmax_in_flight_batches=0\n", "batch.max_in_flight_batches"),
            ("", "no source"),
            ("[source.file]\npath='x'\n[source.eventhub]\n", "only one"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn transport_and_proxy_settings_parse_and_their_errors_name_the_client_table() {
        let c = parse(
            "[source.eventhub]\n[source.eventhub.client]\ntransport = \"websocket\"\n\
             [source.eventhub.client.proxy]\nurl = \"http://proxy:3128\"\nusername = \"u\"\n\
             password_file = \"/nonexistent/tcpulse-proxy-password\"\n",
        )
        .unwrap();
        let eh = c.source.eventhub.unwrap();
        assert_eq!(
            eh.client.transport,
            tcpulse_eventhub::client::Transport::WebSocket
        );
        let cs = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=l;SharedAccessKey=k;EntityPath=hub";
        let e = eh
            .check_connection_string(cs, &secret::Origin::Env("V".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`source.eventhub.client`") && e.contains("proxy.password_file"),
            "{e}"
        );
    }

    #[test]
    fn env_overrides_create_or_patch_the_v2_sink() {
        let mut c = Config::default();
        let env = |k: &str| match k {
            "TCPULSE_INFLUXDB_URL" => Some("http://127.0.0.1:8428".to_string()),
            "TCPULSE_INFLUXDB_ORG" => Some("o".into()),
            "TCPULSE_INFLUXDB_BUCKET" => Some("b".into()),
            "TCPULSE_COLLECTOR_NAME" => Some("c9".into()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.name, "c9");
        assert_eq!(c.sinks.influxdb_v2.as_ref().unwrap().bucket, "b");
        let mut c = Config::default();
        let err = c
            .apply_env(|k| (k == "TCPULSE_INFLUXDB_URL").then(|| "http://x".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("TCPULSE_INFLUXDB_ORG"));
    }
}
