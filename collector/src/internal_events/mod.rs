//! Named telemetry events. Each operational error or drop is one type here, an
//! [`InternalEvent`] of the mechanism the agent shares
//! ([`tcpulse_eventhub::cli_support::telemetry`]): emitting it logs `stage` and `error_type`
//! under the shared log-rate policy (the first occurrence of a key logs, repeats are logged
//! at debug and counted, at most one reminder a minute; a recovery re-arms its keys) and
//! increments exactly one counter of [`Metrics`]. Dashboards query only these counter
//! names.
//!
//! One file per stage, all re-exported here: [`decode`] (dead letters, duplicates, clock
//! skew), [`source`], [`sink`], [`checkpoint`], [`ownership`], [`dead_letter`] (the file) and [`process`]
//! (partition tasks, the `/metrics` server).
//!
//! Nothing else in the collector logs a warning or an error: a test fails on a `warn!` or
//! `error!` outside this folder.

pub mod checkpoint;
pub mod dead_letter;
pub mod decode;
pub mod ownership;
pub mod process;
pub mod sink;
pub mod source;

pub use tcpulse_eventhub::cli_support::telemetry::InternalEvent;

pub use self::checkpoint::*;
pub use self::dead_letter::*;
pub use self::decode::*;
pub use self::ownership::*;
pub use self::process::*;
pub use self::sink::*;
pub use self::source::*;
use crate::metrics::{Labels, Metrics};

fn with(mut labels: Labels, key: &str, value: &str) -> Labels {
    labels.push((key.into(), value.into()));
    labels
}

fn stage_labels(stage: &str, error_type: &str) -> Labels {
    vec![
        ("stage".into(), stage.into()),
        ("error_type".into(), error_type.into()),
    ]
}

/// Counts `event` in `component_errors{stage, error_type}` under its own labels.
fn count_component_error<E: InternalEvent>(event: &E, metrics: &Metrics) {
    let error_type = event.error_type().unwrap_or_default();
    metrics
        .component_errors
        .get_or_create(&stage_labels(event.stage(), &error_type))
        .inc();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_event_increments_exactly_one_counter_and_logs_once_per_key() {
        let m = Metrics::new();
        for _ in 0..3 {
            EventDeadLettered {
                partition: "0",
                sequence_number: 1,
                kind: "invalid_json",
                message: "x",
            }
            .emit(&m);
        }
        assert!(
            !m.log.is_armed("dead_letter/invalid_json"),
            "already logged"
        );
        SinkRequestFailed {
            sink: "v2",
            error_type: "http_503",
            message: "busy",
            retry_in: Duration::from_secs(1),
        }
        .emit(&m);
        assert!(!m.log.is_armed("sink/v2/http_503"));
        SinkRecovered { sink: "v2" }.emit(&m);
        assert!(
            m.log.is_armed("sink/v2/http_503"),
            "re-armed after recovery"
        );
        SinkBatchRejected {
            sink: "v2",
            partition: "0",
            status: 400,
            message: "bad",
        }
        .emit(&m);
        let text = m.render();
        assert!(text.contains("tcpulse_collector_dead_letters_total{partition=\"0\",error_type=\"invalid_json\"} 3"), "{text}");
        assert!(
            text.contains(
                "tcpulse_collector_sink_errors_total{sink=\"v2\",error_type=\"http_503\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tcpulse_collector_sink_errors_total{sink=\"v2\",error_type=\"rejected_400\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_former_bare_warnings_are_counted_under_their_stage_and_error_type() {
        let m = Metrics::new();
        SinkWithoutToken {
            sink: "influxdb_v2",
            token_env: "TCPULSE_INFLUXDB_TOKEN",
        }
        .emit(&m);
        SinkFlushFailed {
            sink: "file",
            error: "disk full",
        }
        .emit(&m);
        CheckpointStateUnusable {
            partition: "0",
            error: "bad",
        }
        .emit(&m);
        FinalCheckpointUnwritten {
            partition: "0",
            sequence_number: 7,
        }
        .emit(&m);
        PartitionTaskFailed { error: "panicked" }.emit(&m);
        DeadLetterSyncFailed { error: "io" }.emit(&m);
        MetricsServerFailed { error: "accept" }.emit(&m);
        let text = m.render();
        for needle in [
            "tcpulse_collector_config_warnings_total{stage=\"sink\",error_type=\"no_token\"} 1",
            "tcpulse_collector_sink_errors_total{sink=\"file\",error_type=\"flush\"} 1",
            "tcpulse_collector_component_errors_total{stage=\"checkpoint\",error_type=\"state\"} 1",
            "tcpulse_collector_component_errors_total{stage=\"checkpoint\",error_type=\"final_unwritten\"} 1",
            "tcpulse_collector_component_errors_total{stage=\"pipeline\",error_type=\"panic\"} 1",
            "tcpulse_collector_component_errors_total{stage=\"dead_letter\",error_type=\"io\"} 1",
            "tcpulse_collector_component_errors_total{stage=\"http\",error_type=\"serve\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
    }

    #[test]
    fn clock_skew_warns_once_per_episode_and_rearms_when_back_within() {
        let m = Metrics::new();
        let skew = |skew_ms| ClockSkewObserved {
            partition: "0",
            connector: "c",
            instance: "i",
            skew_ms,
        };
        let key = "clock_skew/c/i/";
        skew(30_000).emit(&m);
        assert!(!m.log.is_armed(key));
        skew(5_000).emit(&m);
        assert!(m.log.is_armed(key), "back within: re-armed");
        assert!(m.render().contains(
            "tcpulse_collector_instance_clock_skew_seconds{connector=\"c\",instance=\"i\"} 5.0"
        ));
    }

    /// Issue #14: an operational warning or error that skips the named events (no counter,
    /// no rate limit) fails here. Test code and this file are exempt.
    #[test]
    fn no_warning_or_error_bypasses_the_named_events() -> std::io::Result<()> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let found = tcpulse_eventhub::cli_support::telemetry::log_bypasses(&src, &[])?;
        assert!(
            found.is_empty(),
            "log these through an InternalEvent in internal_events.rs:\n{}",
            found.join("\n")
        );
        Ok(())
    }
}
