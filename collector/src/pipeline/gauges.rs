//! A partition's gauges (lag in events and seconds, checkpoint age) and its `tc_pipeline`
//! points, written into the open batch.

use tcpulse_schema::{pipeline_point, FieldValue, PointSink, Timestamp};

use super::partition::PartitionLoop;
use crate::metrics::{partition_labels, sink_point};
use crate::source::PartitionSource;

impl PartitionLoop<'_> {
    /// Sets the partition's lag and checkpoint-age gauges.
    pub(super) fn update_gauges<S: PartitionSource>(&self, source: &S, pulling: bool) {
        let m = &self.shared.metrics;
        let labels = partition_labels(self.partition);
        let now_ms = Timestamp::now().unix_millis();
        let tip = source.tip();
        let unread = match (&tip, &self.last_pulled) {
            (Some(t), Some(p)) => Some((t.last_sequence_number - p.sequence_number).max(0)),
            (Some(t), None) => Some(t.last_sequence_number + 1),
            _ => None,
        };
        if let Some(n) = unread {
            m.lag_events.get_or_create(&labels).set(n);
        }
        // Behind means: the service holds events we have not read. When the transport
        // reports its newest event, that decides; otherwise not pulling counts as behind.
        // An empty partition (last sequence -1, enqueued time 0) is never behind.
        let behind = match unread {
            Some(n) => n > 0,
            None => !pulling,
        };
        // Lag runs up to the last *stored* event: the oldest event read but not yet
        // acknowledged by every sink decides; with none held, the oldest unread one.
        let oldest_unstored = self
            .in_flight
            .iter()
            .filter_map(|s| s.oldest_enqueued_ms)
            .chain(self.builder.oldest_enqueued_ms)
            .min();
        let lag = match (oldest_unstored, &self.last_pulled, &tip) {
            (Some(t), _, _) => (now_ms - t).max(0) as f64 / 1000.0,
            (None, Some(p), _) if behind => (now_ms - p.enqueued_time_ms).max(0) as f64 / 1000.0,
            (None, None, Some(t)) if behind && t.last_sequence_number >= 0 => {
                (now_ms - t.last_enqueued_time_ms).max(0) as f64 / 1000.0
            }
            _ => 0.0,
        };
        m.lag_seconds.get_or_create(&labels).set(lag);
        if let Some(at) = self.checkpoint_advanced_at {
            m.checkpoint_age_seconds
                .get_or_create(&labels)
                .set(at.elapsed().as_secs_f64());
        }
    }

    /// Appends this partition's `tc_pipeline` point (and, on the partition that writes them, one per sink) to the open batch.
    pub(super) fn pipeline_point(&mut self) {
        let stats = self.shared.metrics.pipeline_stats(
            self.partition,
            self.last_pulled.is_some(),
            self.checkpoint_advanced_at.is_some(),
        );
        let at = Timestamp::now();
        let lost = self
            .shared
            .metrics
            .retention_lost_events
            .get_or_create(&partition_labels(self.partition))
            .get();
        let p = pipeline_point(&self.settings.collector, self.partition, &stats, at).field(
            "retention_lost_events",
            FieldValue::Int(i64::try_from(lost).unwrap_or(i64::MAX)),
        );
        self.builder.point(p);
        if !self.settings.sink_points {
            return;
        }
        for sink in self.shared.sinks.iter() {
            let stats = self.shared.metrics.sink_stats(sink.name());
            let p = sink_point(&self.settings.collector, sink.name(), &stats, at);
            self.builder.point(p);
        }
    }
}
