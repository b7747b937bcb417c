//! The collector's own numbers: one [`Metrics`] registry, its text exposition, the HTTP
//! server for `/metrics`, `/healthz` and `/readyz`, the per-partition [`PipelineStats`]
//! and the per-sink [`SinkStats`] the pipeline writes as `tc_pipeline` points (read from
//! the same counters, so the store and the scrape never disagree).
//!
//! `tc_pipeline` has two kinds of series, told apart by their tags:
//!
//! | tags | fields | built by |
//! | --- | --- | --- |
//! | `collector`, `partition` | `events`, `dead_letters`, `duplicates`, `lag_seconds`, `checkpoint_age_seconds` | [`tcpulse_schema::pipeline_point`] |
//! | `collector`, `partition` | `retention_lost_events` (on the same point, once a loss was seen) | the pipeline |
//! | `collector`, `sink` | `sink_errors`, `sink_dead_lettered`, `sink_latency_seconds` | [`sink_point`] |
//!
//! The sink fields: `sink_errors` is every failed write attempt since the collector started
//! (retryable failures and rejections, `tcpulse_collector_sink_errors_total` summed over
//! `error_type`); `sink_dead_lettered` the rejections among them (400/422/413 on a single
//! line: the data went to the dead-letter file); `sink_latency_seconds` the duration of
//! the most recent write attempt (left out before the first).
//!
//! The registry is [`prometheus_client`] (the Prometheus project's own Rust client) and its
//! `Family` gives typed label sets without a global registry. `/metrics` answers in
//! OpenMetrics to scrapers that ask for it and in the Prometheus text format 0.0.4 to
//! everyone else ([`exposition`]).
//!
//! Names follow the Prometheus conventions: base units in the name (`_seconds`, `_bytes`),
//! counters end in `_total`, every metric has help text. The collector's own metrics:
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `tcpulse_build_info` | version, commit | always 1; the crate version and the git commit built from (`unknown` without git; see `collector/build.rs`) |
//! | `tcpulse_collector_events_total` | partition | events decoded and new |
//! | `tcpulse_collector_dead_letters_total` | partition, error_type | dead letters by kind |
//! | `tcpulse_collector_duplicates_total` | partition | duplicates dropped |
//! | `tcpulse_collector_lag_events` | partition | events enqueued but not yet read (when the source knows its tip) |
//! | `tcpulse_collector_lag_seconds` | partition | age of the oldest event not yet stored (read and in a batch the store has not acknowledged, or unread); 0 when everything enqueued is stored |
//! | `tcpulse_collector_retention_lost_events_total` | partition | events the hub dropped by retention before this collector read them (checkpoint older than the partition's beginning) |
//! | `tcpulse_collector_checkpoint_age_seconds` | partition | time since the checkpoint last advanced |
//! | `tcpulse_collector_checkpoint_sequence` | partition | sequence number of the checkpoint |
//! | `tcpulse_collector_in_flight_batches` | partition | batches sent and not yet acknowledged |
//! | `tcpulse_collector_sink_request_duration_seconds` | sink | write latency (every attempt) |
//! | `tcpulse_collector_sink_last_request_duration_seconds` | sink | duration of the most recent attempt |
//! | `tcpulse_collector_sink_points_total` | sink | points acknowledged by the store |
//! | `tcpulse_collector_sink_errors_total` | sink, error_type | failed or rejected writes |
//! | `tcpulse_collector_component_errors_total` | stage, error_type | other operational errors |
//! | `tcpulse_collector_config_warnings_total` | stage, error_type | configuration that works but is often a mistake (an InfluxDB v2 sink without a token: `sink`, `no_token`), counted at start |
//! | `tcpulse_collector_instance_clock_skew_seconds` | connector, instance | sample time − enqueued time of the instance's newest accepted event (positive: its clock runs ahead) |
//! | `tcpulse_collector_owned_partitions` | | partitions this collector owns (`checkpoint.store = "azure_blob"`) |
//! | `tcpulse_collector_ownership_owners` | | active owners of the consumer group seen in the last cycle, this one included |
//! | `tcpulse_collector_ownership_claims_total` | | partitions claimed (unowned, released, expired, or stolen) |
//! | `tcpulse_collector_ownership_steals_total` | | claims that took a partition from another active owner |
//! | `tcpulse_collector_ownership_lost_claims_total` | reason | partitions lost: `stolen` (another owner claimed it), `expired` (renewals failed past the expiration), `race` (a claim another claimant won first) |
//! | `tcpulse_collector_partition_owner` | partition, owner | 1 for each partition's current owner id (as the last cycle listed it; `""` when released) |
//!
//! With an Entra ID credential (`source.eventhub.auth` other than `connection_string`),
//! read at scrape time from [`tcpulse_eventhub::identity::CredentialStats`]
//! ([`credential`]):
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `tcpulse_collector_credential_expires_in_seconds` | | seconds until the newest Entra ID token expires (negative once it has: renewals are failing); absent before the first token |
//! | `tcpulse_collector_credential_tokens_total` | | tokens obtained from the token endpoint |
//! | `tcpulse_collector_credential_refresh_failures_total` | | failed token requests (each logged as a WARN with the endpoint's answer) |
//!
//! And the standard process metrics of every Prometheus client library, read at scrape time
//! where the platform has them (Linux; see [`process`]): `process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`.

pub mod credential;
pub mod exposition;
pub mod process;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tcpulse_eventhub::cli_support::telemetry::{LogLimiter, Telemetry};
use tcpulse_schema::line::MEASUREMENT_PIPELINE;
use tcpulse_schema::{FieldValue, PipelineStats, Point, Timestamp};
use tokio_util::sync::CancellationToken;

use self::exposition::Format;

/// The crate version, the `version` label of `tcpulse_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built from (12 hex digits, or `unknown`), the `commit` label of
/// `tcpulse_build_info`; set by `collector/build.rs`.
pub const GIT_COMMIT: &str = env!("TCPULSE_GIT_COMMIT");

/// A label set.
pub type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// One instance's clock-skew gauge (a handle sharing the family's value) and whether its
/// newest skew was beyond the warning limit.
#[derive(Debug)]
struct ClockSkewEntry {
    gauge: FloatGauge,
    beyond: bool,
}
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// `[("partition", p)]`.
pub fn partition_labels(partition: &str) -> Labels {
    vec![("partition".into(), partition.into())]
}

/// `[("sink", s)]`.
pub fn sink_labels(sink: &str) -> Labels {
    vec![("sink".into(), sink.into())]
}

/// `error_type` prefix of a rejected batch (`rejected_400`, …): dead-lettered, not retried.
pub const REJECTED_ERROR_TYPE_PREFIX: &str = "rejected_";

/// Every metric of the collector. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    credential: credential::CredentialSlot,
    /// Events decoded and new, per partition.
    pub events: Family<Labels, Counter>,
    /// Dead letters per partition and kind.
    pub dead_letters: Family<Labels, Counter>,
    /// Duplicates dropped per partition.
    pub duplicates: Family<Labels, Counter>,
    /// Unread events per partition.
    pub lag_events: Family<Labels, Gauge>,
    /// Age of the oldest event not yet stored per partition, seconds.
    pub lag_seconds: Family<Labels, FloatGauge>,
    /// Events lost to the hub's retention per partition.
    pub retention_lost_events: Family<Labels, Counter>,
    /// Seconds since the checkpoint advanced, per partition.
    pub checkpoint_age_seconds: Family<Labels, FloatGauge>,
    /// Checkpointed sequence number per partition.
    pub checkpoint_sequence: Family<Labels, Gauge>,
    /// Unacknowledged batches per partition.
    pub in_flight_batches: Family<Labels, Gauge>,
    /// Write latency per sink.
    pub sink_request_seconds: HistogramFamily,
    /// Duration of the most recent write attempt per sink.
    pub sink_last_request_seconds: Family<Labels, FloatGauge>,
    /// Points acknowledged per sink.
    pub sink_points: Family<Labels, Counter>,
    /// Failed or rejected writes per sink and error type.
    pub sink_errors: Family<Labels, Counter>,
    /// Other operational errors per stage and error type.
    pub component_errors: Family<Labels, Counter>,
    /// Configuration warnings per stage and error type.
    pub config_warnings: Family<Labels, Counter>,
    /// Sample time − enqueued time of each instance's newest accepted event, seconds.
    pub instance_clock_skew_seconds: Family<Labels, FloatGauge>,
    /// Per connector and instance: its `instance_clock_skew_seconds` gauge and whether its
    /// newest skew was beyond the warning limit ([`Metrics::note_clock_skew`]).
    clock_skews: Mutex<HashMap<String, HashMap<String, ClockSkewEntry>>>,
    /// Partitions this collector owns.
    pub owned_partitions: Gauge,
    /// Active owners seen in the last ownership cycle.
    pub ownership_owners: Gauge,
    /// Partitions claimed.
    pub ownership_claims: Counter,
    /// Claims that took a partition from another active owner.
    pub ownership_steals: Counter,
    /// Partitions lost, by reason.
    pub ownership_lost_claims: Family<Labels, Counter>,
    /// 1 per `(partition, owner)` as the last cycle listed them.
    pub partition_owner: Family<Labels, Gauge>,
    /// What `/readyz` says about ownership (the Blob store only).
    ownership_note: Mutex<Option<String>>,
    /// The `error_type`s seen per sink, so [`Metrics::sink_stats`] can sum `sink_errors`
    /// (a label index, not a second counter).
    sink_error_types: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Per partition, what `/readyz` says beside ready or not (a checkpoint that did not
    /// fit the partition, events lost to retention).
    partition_notes: Mutex<BTreeMap<String, String>>,
    ready: AtomicBool,
    /// The log-rate policy's memory for [`crate::internal_events`].
    pub log: LogLimiter,
}

impl Telemetry for Metrics {
    fn log_limiter(&self) -> &LogLimiter {
        &self.log
    }
}

/// Registers `metric` as `tcpulse_collector_<name>` and returns it (the registry keeps a
/// clone sharing the same values).
fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(format!("tcpulse_collector_{name}"), help, metric.clone());
    metric
}

/// `tcpulse_build_info{version,commit} 1`.
fn register_build_info(registry: &mut Registry) {
    let build_info = Family::<Labels, Gauge>::default();
    build_info
        .get_or_create(&vec![
            ("version".into(), VERSION.into()),
            ("commit".into(), GIT_COMMIT.into()),
        ])
        .set(1);
    registry.register(
        "tcpulse_build_info",
        "The collector's version and the git commit it was built from; always 1",
        build_info,
    );
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Reports `stats` as the `credential_*` metrics from now on.
    pub fn set_credential(&self, stats: Arc<tcpulse_eventhub::identity::CredentialStats>) {
        self.credential.set(stats);
    }

    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        register_build_info(&mut registry);
        registry.register_collector(Box::new(process::ProcessCollector));
        let credential = credential::CredentialSlot::default();
        registry.register_collector(Box::new(credential.clone()));
        Metrics {
            credential,
            events: register(
                &mut registry,
                "events",
                "Events decoded and new",
                Family::<Labels, Counter>::default(),
            ),
            dead_letters: register(
                &mut registry,
                "dead_letters",
                "Events that could not be used, by kind",
                Family::<Labels, Counter>::default(),
            ),
            duplicates: register(
                &mut registry,
                "duplicates",
                "Duplicate events dropped",
                Family::<Labels, Counter>::default(),
            ),
            lag_events: register(
                &mut registry,
                "lag_events",
                "Events enqueued in the partition and not yet read",
                Family::<Labels, Gauge>::default(),
            ),
            lag_seconds: register(
                &mut registry,
                "lag_seconds",
                "Age of the oldest event not yet stored, seconds; 0 when everything enqueued is stored",
                Family::<Labels, FloatGauge>::default(),
            ),
            retention_lost_events: register(
                &mut registry,
                "retention_lost_events",
                "Events the hub dropped by retention before they were read",
                Family::<Labels, Counter>::default(),
            ),
            checkpoint_age_seconds: register(
                &mut registry,
                "checkpoint_age_seconds",
                "Seconds since the partition checkpoint last advanced",
                Family::<Labels, FloatGauge>::default(),
            ),
            checkpoint_sequence: register(
                &mut registry,
                "checkpoint_sequence",
                "Sequence number of the partition checkpoint",
                Family::<Labels, Gauge>::default(),
            ),
            in_flight_batches: register(
                &mut registry,
                "in_flight_batches",
                "Batches sent to the sinks and not yet acknowledged",
                Family::<Labels, Gauge>::default(),
            ),
            sink_request_seconds: register(
                &mut registry,
                "sink_request_duration_seconds",
                "Duration of each write request to a store",
                Family::new_with_constructor(latency_histogram),
            ),
            sink_last_request_seconds: register(
                &mut registry,
                "sink_last_request_duration_seconds",
                "Duration of the most recent write request to a store",
                Family::<Labels, FloatGauge>::default(),
            ),
            sink_points: register(
                &mut registry,
                "sink_points",
                "Points the store acknowledged",
                Family::<Labels, Counter>::default(),
            ),
            sink_errors: register(
                &mut registry,
                "sink_errors",
                "Failed or rejected writes to a store, by error type",
                Family::<Labels, Counter>::default(),
            ),
            component_errors: register(
                &mut registry,
                "component_errors",
                "Operational errors by stage and error type",
                Family::<Labels, Counter>::default(),
            ),
            config_warnings: register(
                &mut registry,
                "config_warnings",
                "Configuration that works but is often a mistake, by stage and error type; counted at start",
                Family::<Labels, Counter>::default(),
            ),
            instance_clock_skew_seconds: register(
                &mut registry,
                "instance_clock_skew_seconds",
                "Sample time minus Event Hubs enqueued time of the instance's newest accepted event, seconds; positive when its clock runs ahead",
                Family::<Labels, FloatGauge>::default(),
            ),
            clock_skews: Mutex::default(),
            owned_partitions: register(
                &mut registry,
                "owned_partitions",
                "Partitions this collector owns (Blob checkpoint store)",
                Gauge::default(),
            ),
            ownership_owners: register(
                &mut registry,
                "ownership_owners",
                "Active owners of the consumer group in the last ownership cycle, this one included",
                Gauge::default(),
            ),
            ownership_claims: register(
                &mut registry,
                "ownership_claims",
                "Partitions claimed: unowned, released, expired or stolen",
                Counter::default(),
            ),
            ownership_steals: register(
                &mut registry,
                "ownership_steals",
                "Claims that took a partition from another active owner",
                Counter::default(),
            ),
            ownership_lost_claims: register(
                &mut registry,
                "ownership_lost_claims",
                "Partitions lost: stolen by another owner, expired while the store was unreachable, or a claim another claimant won",
                Family::<Labels, Counter>::default(),
            ),
            partition_owner: register(
                &mut registry,
                "partition_owner",
                "1 for each partition's owner id as the last ownership cycle listed it",
                Family::<Labels, Gauge>::default(),
            ),
            ownership_note: Mutex::new(None),
            registry,
            sink_error_types: Mutex::new(BTreeMap::new()),
            partition_notes: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            log: LogLimiter::new(),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The exposition in `format`.
    pub fn render_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.render(),
            Format::Text => exposition::to_text_format(&self.render()),
        }
    }

    /// Records the clock skew of `instance` of `connector` (sample time − enqueued time of
    /// its newest accepted event, ms) in `instance_clock_skew_seconds`.
    pub fn set_clock_skew(&self, connector: &str, instance: &str, skew_ms: i64) {
        self.with_clock_skew(connector, instance, |e| {
            e.gauge.set(skew_ms as f64 / 1000.0)
        });
    }

    /// [`Metrics::set_clock_skew`] for every accepted event, and whether the instance's
    /// previous skew was `beyond` the warning limit (`beyond` is remembered for the next
    /// call). Known instances cost two map lookups and no allocation; the gauge is looked up
    /// in its family only the first time (issue #17: the label set built per event was a
    /// visible share of the collector's CPU).
    pub fn note_clock_skew(
        &self,
        connector: &str,
        instance: &str,
        skew_ms: i64,
        beyond: bool,
    ) -> bool {
        self.with_clock_skew(connector, instance, |e| {
            e.gauge.set(skew_ms as f64 / 1000.0);
            std::mem::replace(&mut e.beyond, beyond)
        })
        .unwrap_or(false)
    }

    /// Runs `f` on the clock-skew entry of `instance` of `connector`, created on first use.
    fn with_clock_skew<T>(
        &self,
        connector: &str,
        instance: &str,
        f: impl FnOnce(&mut ClockSkewEntry) -> T,
    ) -> Option<T> {
        let mut skews = self.clock_skews.lock().ok()?;
        let instances = match skews.get_mut(connector) {
            Some(i) => i,
            None => skews.entry(connector.to_owned()).or_default(),
        };
        let entry = match instances.get_mut(instance) {
            Some(e) => e,
            None => {
                let labels: Labels = vec![
                    ("connector".into(), connector.into()),
                    ("instance".into(), instance.into()),
                ];
                let gauge = self
                    .instance_clock_skew_seconds
                    .get_or_create(&labels)
                    .clone();
                instances
                    .entry(instance.to_owned())
                    .or_insert(ClockSkewEntry {
                        gauge,
                        beyond: false,
                    })
            }
        };
        Some(f(entry))
    }

    /// Counts one failed write attempt of `sink` in `sink_errors{sink, error_type}`.
    pub fn count_sink_error(&self, sink: &str, error_type: &str) {
        let mut labels = sink_labels(sink);
        labels.push(("error_type".into(), error_type.into()));
        self.sink_errors.get_or_create(&labels).inc();
        if let Ok(mut index) = self.sink_error_types.lock() {
            if !index.get(sink).is_some_and(|t| t.contains(error_type)) {
                index
                    .entry(sink.to_owned())
                    .or_default()
                    .insert(error_type.to_owned());
            }
        }
    }

    /// The `tc_pipeline` numbers of `sink`, read from `sink_errors` and
    /// `sink_last_request_duration_seconds`.
    pub fn sink_stats(&self, sink: &str) -> SinkStats {
        let types: Vec<String> = self
            .sink_error_types
            .lock()
            .map(|index| index.get(sink).into_iter().flatten().cloned().collect())
            .unwrap_or_default();
        let mut stats = SinkStats::default();
        // Summed over the error types seen (`Family` cannot list its label sets).
        for t in types {
            let mut labels = sink_labels(sink);
            labels.push(("error_type".into(), t.clone()));
            let n = self.sink_errors.get(&labels).map(|c| c.get()).unwrap_or(0);
            stats.errors += n;
            if t.starts_with(REJECTED_ERROR_TYPE_PREFIX) {
                stats.dead_lettered += n;
            }
        }
        stats.latency_seconds = self
            .sink_last_request_seconds
            .get(&sink_labels(sink))
            .map(|g| g.get());
        stats
    }

    /// Marks the collector ready (every partition opened) or not (starting, stopping).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Sets what `/readyz` says about `partition` (replacing an earlier note).
    pub fn set_partition_note(&self, partition: &str, note: String) {
        if let Ok(mut notes) = self.partition_notes.lock() {
            notes.insert(partition.to_owned(), note);
        }
    }

    /// Sets the `ownership: …` line of `/readyz`.
    pub fn set_ownership_note(&self, note: String) {
        if let Ok(mut n) = self.ownership_note.lock() {
            *n = Some(note);
        }
    }

    /// The `/readyz` body: `ready` or `not ready`, the `ownership: …` line with the Blob
    /// store, then one `partition <id>: <note>` line per partition with a note.
    pub fn readyz_body(&self) -> String {
        let mut out = String::from(if self.is_ready() {
            "ready\n"
        } else {
            "not ready\n"
        });
        if let Ok(n) = self.ownership_note.lock() {
            if let Some(n) = n.as_ref() {
                out.push_str(&format!("ownership: {n}\n"));
            }
        }
        if let Ok(notes) = self.partition_notes.lock() {
            for (p, note) in notes.iter() {
                out.push_str(&format!("partition {p}: {note}\n"));
            }
        }
        out
    }

    /// The `tc_pipeline` numbers of `partition`, read from the counters and gauges above.
    /// `lag_seconds` and `checkpoint_age_seconds` are left out until known (`known_*`).
    pub fn pipeline_stats(
        &self,
        partition: &str,
        known_lag: bool,
        known_checkpoint: bool,
    ) -> PipelineStats {
        let labels = partition_labels(partition);
        let dead_letters: u64 = tcpulse_schema::DeadLetterReason::KINDS
            .iter()
            .map(|kind| {
                let mut l = labels.clone();
                l.push(("error_type".into(), (*kind).into()));
                self.dead_letters.get_or_create(&l).get()
            })
            .sum();
        PipelineStats {
            events: self.events.get_or_create(&labels).get(),
            dead_letters,
            duplicates: self.duplicates.get_or_create(&labels).get(),
            lag_seconds: known_lag.then(|| self.lag_seconds.get_or_create(&labels).get()),
            checkpoint_age_seconds: known_checkpoint
                .then(|| self.checkpoint_age_seconds.get_or_create(&labels).get()),
        }
    }
}

/// The per-sink counters behind a `tc_pipeline` sink point (totals since start).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SinkStats {
    /// Failed write attempts: retryable failures and rejections.
    pub errors: u64,
    /// Rejections among them (the data went to the dead-letter file).
    pub dead_lettered: u64,
    /// Duration of the most recent write attempt, seconds; `None` before the first.
    pub latency_seconds: Option<f64>,
}

/// The `tc_pipeline` point of one sink at `at`: tags `collector` and `sink`; fields
/// `sink_errors`, `sink_dead_lettered` and (once known) `sink_latency_seconds`.
pub fn sink_point(collector: &str, sink: &str, stats: &SinkStats, at: Timestamp) -> Point {
    let count = |v: u64| FieldValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
    Point::new(MEASUREMENT_PIPELINE, at.unix_nanos())
        .tag("collector", collector)
        .tag("sink", sink)
        .field("sink_errors", count(stats.errors))
        .field("sink_dead_lettered", count(stats.dead_lettered))
        .field_opt("sink_latency_seconds", stats.latency_seconds)
}

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics server cannot listen on {addr}: {source}; choose a free address with `http.listen` or --metrics-listen")]
pub struct ServeError {
    /// The address.
    pub addr: SocketAddr,
    /// The bind error.
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` (fallible step, done in `build`) and returns the bound listener.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError { addr, source })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`; the caller
/// reports a failure (`MetricsServerFailed`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get({
                let m = metrics.clone();
                move |headers: HeaderMap| async move {
                    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                    let format = Format::negotiate(accept);
                    (
                        [(header::CONTENT_TYPE, format.content_type())],
                        m.render_as(format),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get({
                let m = metrics.clone();
                move || async move {
                    let status = if m.is_ready() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, m.readyz_body()).into_response()
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_pipeline_stats_share_the_counters() {
        let m = Metrics::new();
        let l = partition_labels("3");
        m.events.get_or_create(&l).inc_by(10);
        m.duplicates.get_or_create(&l).inc_by(2);
        let mut dl = l.clone();
        dl.push(("error_type".into(), "invalid_json".into()));
        m.dead_letters.get_or_create(&dl).inc();
        m.lag_seconds.get_or_create(&l).set(1.5);
        m.sink_request_seconds
            .get_or_create(&sink_labels("file"))
            .observe(0.002);
        let text = m.render();
        for needle in [
            "tcpulse_collector_events_total{partition=\"3\"} 10",
            "tcpulse_collector_dead_letters_total{partition=\"3\",error_type=\"invalid_json\"} 1",
            "tcpulse_collector_duplicates_total{partition=\"3\"} 2",
            "tcpulse_collector_lag_seconds{partition=\"3\"} 1.5",
            "tcpulse_collector_sink_request_duration_seconds_count{sink=\"file\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
        let stats = m.pipeline_stats("3", true, false);
        assert_eq!(stats.events, 10);
        assert_eq!(stats.dead_letters, 1);
        assert_eq!(stats.duplicates, 2);
        assert_eq!(stats.lag_seconds, Some(1.5));
        assert_eq!(stats.checkpoint_age_seconds, None);
    }

    #[test]
    fn build_info_and_counters_are_named_alike_in_both_formats() {
        let m = Metrics::new();
        m.events.get_or_create(&partition_labels("0")).inc();
        let info =
            format!("tcpulse_build_info{{version=\"{VERSION}\",commit=\"{GIT_COMMIT}\"}} 1\n");
        let om = m.render_as(Format::OpenMetrics);
        let text = m.render_as(Format::Text);
        for t in [&om, &text] {
            assert!(t.contains(&info), "{info} not in\n{t}");
            assert!(t.contains("\ntcpulse_collector_events_total{partition=\"0\"} 1\n"));
        }
        assert!(
            om.contains("# TYPE tcpulse_collector_events counter\n") && om.ends_with("# EOF\n")
        );
        assert!(text.contains("# TYPE tcpulse_collector_events_total counter\n"));
        assert!(!text.contains("# EOF"));
        assert!(
            GIT_COMMIT == "unknown" || GIT_COMMIT.len() >= 7,
            "commit {GIT_COMMIT}"
        );
    }
}
