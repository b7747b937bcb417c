//! Event-time aggregation of one partition: per-instance latest state, per-connector
//! rollups at aligned window ends, peaks, and staleness.
//!
//! Time comes from the events, never the wall clock, so replaying a span of the partition
//! in the same order rewrites the same points (InfluxDB keeps one point per series and
//! timestamp). Two clocks are in every event: the **sample time** (`time`, the agent's
//! clock) and the **enqueued time** (stamped by Event Hubs, a clock no agent controls).
//! No instance's clock may move time for the others (issue 12, fault 4: one VM 50 s fast
//! used to push the watermark forward and have every other instance written `up=0`):
//!
//! - Before an event gets here [`AggregateSettings::admit`] refused it as a `clock_skew`
//!   dead letter if its sample time is more than `max_clock_skew` ahead of its enqueued
//!   time or more than `max_sample_age` behind it, so no point lands far in the future or
//!   beyond the store's retention. The difference is written as `clock_skew_seconds`.
//! - Each report counts at its **effective time** ([`effective_ms`]): the sample time,
//!   never after the enqueued time (a fast clock is held to the service's clock), and for
//!   an instance whose clock is steadily behind, corrected by that steady offset (so a
//!   slow clock is not taken for silence). Healthy clocks, and history replayed from a
//!   spool or published in bulk, keep their sample time.
//!
//! In detail:
//!
//! - Each event yields its `tc_instance` point at its sample time
//!   ([`tcpulse_schema::instance_point_received`], `up=1`): a pure function of the event
//!   and its enqueued time, both fixed in the hub, so replays rewrite it identically.
//! - The partition **watermark** is the highest effective time seen, so never after the
//!   newest enqueued time. Windows `[e − interval, e)` with `e ≤ watermark − lateness` are
//!   closed, oldest first, for every connector of the partition; `e` is aligned to the
//!   interval (a multiple of it since the epoch). No rollup is stamped after the
//!   service's clock.
//! - At each closed window end `e`, every instance is judged **as of `e`**: its newest
//!   report with effective time `< e` (one at exactly `e` opens the next window). It is
//!   *fresh* if `e − effective time ≤ stale_after`; fresh instances in an online state
//!   ([`tcpulse_schema::State::is_online`]) make the connector's [`ConnectorRollup`],
//!   stamped `e`. `peak_calls` is the highest rollup `call_count` over the window ends in
//!   the last `peak_window`.
//! - An instance that is not fresh at `e` is written once as `up=0` at `e`
//!   ([`tcpulse_schema::instance_down_point`]) and leaves the online count; a later report
//!   brings it back. After `forget_after` down it is forgotten; a connector with no
//!   instance left writes one last rollup (zero online) and is forgotten too.
//! - When the source is idle (caught up, nothing arriving), the pipeline advances the
//!   watermark to the wall clock with [`Aggregator::advance_to`], so a connector that went
//!   silent altogether still gets its `up=0` and zero-capacity rollups.
//!
//! Per instance the aggregator keeps the reports after the last closed window end plus
//! the newest one before it (a handful), so memory grows with instances, not events.
//! Duplicates and old reports never move state backwards: a report is kept only if it is
//! newer than the instance's report as of the last closed window end, and a report
//! already kept (same boot and seq) is not kept twice.
//! [`Aggregator::snapshot`] and [`Aggregator::restore`] carry the whole state through a
//! checkpoint, so after a restart the replayed span produces identical rollups.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tcpulse_schema::capacity::{
    INSTANCE_STALE_SECONDS, PEAK_WINDOW_SECONDS, REPORT_INTERVAL_SECONDS, ROLLUP_INTERVAL_SECONDS,
};
use tcpulse_schema::decode::{DEFAULT_MAX_AHEAD_MS, DEFAULT_MAX_BEHIND_MS};
use tcpulse_schema::{
    check_sample_time, connector_point, instance_down_point, ConnectorKey, ConnectorRollup,
    DeadLetter, PointSink, StatusEvent, TimeBounds, Timestamp,
};

/// Aggregation settings, all in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateSettings {
    /// Rollup interval; window ends are multiples of it. At least 1 s.
    pub rollup_interval_ms: i64,
    /// An instance with no report for longer than this is down.
    pub stale_after_ms: i64,
    /// `peak_calls` looks back this far.
    pub peak_window_ms: i64,
    /// How far behind the watermark a window end must be before it closes (room for
    /// reports of other instances that arrive slightly out of order).
    pub lateness_ms: i64,
    /// Largest lead of an event's sample time over its enqueued time; beyond it the event
    /// is a `clock_skew` dead letter ([`AggregateSettings::admit`]).
    pub max_clock_skew_ms: i64,
    /// Largest lag of an event's sample time behind its enqueued time; beyond it the event
    /// is a `clock_skew` dead letter. Keep it below the store's retention.
    pub max_sample_age_ms: i64,
    /// A down instance is forgotten after this long without a report.
    pub forget_after_ms: i64,
}

impl Default for AggregateSettings {
    fn default() -> Self {
        AggregateSettings {
            rollup_interval_ms: secs_ms(ROLLUP_INTERVAL_SECONDS),
            stale_after_ms: secs_ms(INSTANCE_STALE_SECONDS),
            peak_window_ms: secs_ms(PEAK_WINDOW_SECONDS),
            lateness_ms: secs_ms(REPORT_INTERVAL_SECONDS),
            max_clock_skew_ms: DEFAULT_MAX_AHEAD_MS,
            max_sample_age_ms: DEFAULT_MAX_BEHIND_MS,
            forget_after_ms: secs_ms(PEAK_WINDOW_SECONDS),
        }
    }
}

impl AggregateSettings {
    /// The bounds of an event's sample time around its enqueued time.
    pub fn time_bounds(&self) -> TimeBounds {
        TimeBounds {
            max_ahead_ms: self.max_clock_skew_ms,
            max_behind_ms: self.max_sample_age_ms,
        }
    }

    /// The event, if its sample time is within [`AggregateSettings::time_bounds`] of the
    /// time Event Hubs enqueued it (`enqueued_ms`); otherwise a `clock_skew` dead letter.
    pub fn admit(&self, event: StatusEvent, enqueued_ms: i64) -> Result<StatusEvent, DeadLetter> {
        match check_sample_time(&event, enqueued_ms, self.time_bounds()) {
            Ok(()) => Ok(event),
            Err(reason) => Err(DeadLetter {
                reason,
                instance: Some(event.instance),
            }),
        }
    }
}

const fn secs_ms(s: u64) -> i64 {
    (s * 1000) as i64
}

/// Milliseconds of a duration, saturating.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What [`Aggregator::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The report is the instance's newest (or fills a gap in the open windows).
    Current,
    /// An older or repeated report: its instance point was rewritten, state unchanged.
    Superseded,
}

/// One report and its effective time ([`effective_ms`]).
#[derive(Debug, Clone)]
struct Kept {
    at_ms: i64,
    event: StatusEvent,
}

impl Kept {
    fn order(&self) -> (i64, Timestamp) {
        (self.at_ms, self.event.time)
    }
}

/// Reports whose `enqueued − time` offsets decide whether an instance's clock is slow.
const OFFSET_REPORTS: usize = 3;
/// How much those offsets may differ and still be one steady clock error, and the least
/// offset that counts as a slow clock rather than transport delay, ms.
const OFFSET_STEADY_MS: i64 = 2_000;

/// The time a report counts at for the watermark, window closing and liveness: its
/// sample time, corrected for a steadily slow clock, and never after its enqueued time.
///
/// - Never after the enqueued time: a fast clock cannot move anything past the service's
///   clock, so it cannot close the other instances' windows or stamp a rollup in the
///   future.
/// - A slow clock: when the instance's last [`OFFSET_REPORTS`] offsets `enqueued − time`
///   (this report's included) agree within [`OFFSET_STEADY_MS`] and exceed it, the
///   instance's clock is behind by a steady amount, and its reports count at
///   `time + smallest offset` (≈ their enqueued time). A report replayed from a spool or
///   published as history has offsets that shrink report by report, so it keeps its
///   sample time: backfilled history still rolls up where it belongs.
fn effective_ms(time_ms: i64, enqueued_ms: i64, offsets: &VecDeque<i64>) -> i64 {
    let corrected = match (offsets.iter().min(), offsets.iter().max()) {
        (Some(&lo), Some(&hi))
            if offsets.len() >= OFFSET_REPORTS
                && hi - lo <= OFFSET_STEADY_MS
                && lo > OFFSET_STEADY_MS =>
        {
            time_ms.saturating_add(lo)
        }
        _ => time_ms,
    };
    corrected.min(enqueued_ms)
}

#[derive(Debug, Clone)]
struct InstanceState {
    /// Reports sorted by (effective time, sample time): the newest before the last closed
    /// window end (if any) followed by every report at or after it.
    history: VecDeque<Kept>,
    /// `enqueued − time` of the last [`OFFSET_REPORTS`] reports, ms, oldest first.
    offsets: VecDeque<i64>,
    /// The window end at which the instance was written as down, until it reports again.
    down_at_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct ConnectorState {
    key: ConnectorKey,
    instances: BTreeMap<String, InstanceState>,
    /// `(window end, call_count)` of the rollups within the peak window.
    recent: VecDeque<(i64, u64)>,
}

/// The aggregation state of one partition. See the module docs.
#[derive(Debug, Clone)]
pub struct Aggregator {
    settings: AggregateSettings,
    watermark_ms: Option<i64>,
    /// End of the last closed window.
    closed_until_ms: Option<i64>,
    /// Sorted by key; a partition carries a handful of connectors.
    connectors: Vec<ConnectorState>,
}

impl Aggregator {
    /// An empty aggregator. Settings are clamped to sane minimums (interval ≥ 1 s, other
    /// spans ≥ 0).
    pub fn new(settings: AggregateSettings) -> Self {
        let mut s = settings;
        s.rollup_interval_ms = s.rollup_interval_ms.max(1000);
        s.stale_after_ms = s.stale_after_ms.max(0);
        s.peak_window_ms = s.peak_window_ms.max(0);
        s.lateness_ms = s.lateness_ms.max(0);
        s.max_clock_skew_ms = s.max_clock_skew_ms.max(0);
        s.max_sample_age_ms = s.max_sample_age_ms.max(0);
        s.forget_after_ms = s.forget_after_ms.max(s.stale_after_ms);
        Aggregator {
            settings: s,
            watermark_ms: None,
            closed_until_ms: None,
            connectors: Vec::new(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &AggregateSettings {
        &self.settings
    }

    /// The partition watermark (ms), once an event was seen.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.watermark_ms
    }

    /// Instances tracked, over all connectors.
    pub fn instances(&self) -> usize {
        self.connectors.iter().map(|c| c.instances.len()).sum()
    }

    /// Connectors tracked.
    pub fn connectors(&self) -> usize {
        self.connectors.len()
    }

    /// Applies one decoded, admitted ([`AggregateSettings::admit`]) event that was
    /// enqueued at `enqueued_ms`: closes the windows its effective time ([`effective_ms`])
    /// passes (their points first), then pushes the event's instance point.
    pub fn apply(
        &mut self,
        event: StatusEvent,
        enqueued_ms: i64,
        out: &mut impl PointSink,
    ) -> Applied {
        let time_ms = event.time.unix_millis();
        let mut offsets = self
            .instance(&event)
            .map(|i| i.offsets.clone())
            .unwrap_or_default();
        if offsets.len() >= OFFSET_REPORTS {
            offsets.pop_front();
        }
        offsets.push_back(enqueued_ms.saturating_sub(time_ms));
        let at_ms = effective_ms(time_ms, enqueued_ms, &offsets);
        self.advance_to(at_ms, out);
        let enqueued = Timestamp::from_unix_millis(enqueued_ms).unwrap_or(Timestamp::EPOCH);
        out.instance_received(&event, enqueued);

        let closed = self.closed_until_ms;
        let idx = match self.connectors.binary_search_by(|c| {
            (
                c.key.connector.as_str(),
                c.key.deployment.as_str(),
                c.key.region.as_str(),
            )
                .cmp(&(
                    event.connector.as_str(),
                    event.deployment.as_str(),
                    event.region.as_str(),
                ))
        }) {
            Ok(i) => i,
            Err(i) => {
                self.connectors.insert(
                    i,
                    ConnectorState {
                        key: event.connector_key(),
                        instances: BTreeMap::new(),
                        recent: VecDeque::new(),
                    },
                );
                i
            }
        };
        let connector = &mut self.connectors[idx];
        let kept = Kept { at_ms, event };
        match connector.instances.get_mut(kept.event.instance.as_str()) {
            Some(inst) => {
                inst.offsets = offsets;
                inst.insert(kept, closed)
            }
            None => {
                let name = kept.event.instance.clone();
                let mut history = VecDeque::with_capacity(4);
                history.push_back(kept);
                connector.instances.insert(
                    name,
                    InstanceState {
                        history,
                        offsets,
                        down_at_ms: None,
                    },
                );
                Applied::Current
            }
        }
    }

    /// The state of `event`'s instance, if tracked.
    fn instance(&self, event: &StatusEvent) -> Option<&InstanceState> {
        self.connectors
            .iter()
            .find(|c| {
                c.key.connector == event.connector
                    && c.key.deployment == event.deployment
                    && c.key.region == event.region
            })
            .and_then(|c| c.instances.get(event.instance.as_str()))
    }

    /// Raises the watermark to `watermark_ms` (if higher) and closes every window whose
    /// end is at or before `watermark − lateness`, pushing their points.
    pub fn advance_to(&mut self, watermark_ms: i64, out: &mut impl PointSink) {
        let wm = match self.watermark_ms {
            Some(w) if w >= watermark_ms => return,
            _ => watermark_ms,
        };
        self.watermark_ms = Some(wm);
        let interval = self.settings.rollup_interval_ms;
        let target =
            Timestamp::from_unix_millis(wm.saturating_sub(self.settings.lateness_ms).max(0))
                .unwrap_or(Timestamp::EPOCH)
                .floor_to(interval)
                .unix_millis();
        let Some(mut end) = self.closed_until_ms else {
            // First event: no history to roll up before it.
            self.closed_until_ms = Some(target);
            return;
        };
        while end < target {
            end += interval;
            self.close_window(end, out);
            self.closed_until_ms = Some(end);
            if self.connectors.is_empty() {
                // Nothing left to roll up: jump straight to the target.
                self.closed_until_ms = Some(target);
                break;
            }
        }
    }

    fn close_window(&mut self, end: i64, out: &mut impl PointSink) {
        let s = self.settings;
        let Some(at) = Timestamp::from_unix_millis(end) else {
            return;
        };
        for connector in &mut self.connectors {
            let mut online_calls: Vec<u32> = Vec::with_capacity(connector.instances.len());
            connector.instances.retain(|_, inst| {
                inst.prune(end);
                let Some(asof) = inst.history.front().filter(|k| k.at_ms < end) else {
                    return true; // first report is after `end`: not part of this window
                };
                let last_ms = asof.at_ms;
                let fresh = end - last_ms <= s.stale_after_ms;
                if fresh {
                    if asof.event.state.is_online() {
                        online_calls.push(asof.event.calls.map(|c| c.call_count).unwrap_or(0));
                    }
                    return true;
                }
                if inst.down_at_ms.is_none() {
                    out.point(instance_down_point(&asof.event, at));
                    inst.down_at_ms = Some(end);
                }
                end - last_ms <= s.forget_after_ms
            });
            while connector
                .recent
                .front()
                .is_some_and(|(e, _)| *e <= end - s.peak_window_ms)
            {
                connector.recent.pop_front();
            }
            let window_peak = connector.recent.iter().map(|(_, c)| *c).max().unwrap_or(0);
            let rollup = ConnectorRollup::compute(&online_calls, window_peak);
            connector.recent.push_back((end, rollup.call_count));
            out.point(connector_point(&connector.key, &rollup, at));
        }
        self.connectors.retain(|c| !c.instances.is_empty());
    }

    /// The whole state, for a checkpoint.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            watermark_ms: self.watermark_ms,
            closed_until_ms: self.closed_until_ms,
            connectors: self
                .connectors
                .iter()
                .map(|c| ConnectorSnapshot {
                    connector: c.key.connector.clone(),
                    deployment: c.key.deployment.clone(),
                    region: c.key.region.clone(),
                    recent: c.recent.iter().copied().collect(),
                    instances: c
                        .instances
                        .values()
                        .map(|i| InstanceSnapshot {
                            history: i.history.iter().map(|k| k.event.clone()).collect(),
                            at_ms: i.history.iter().map(|k| k.at_ms).collect(),
                            offsets_ms: i.offsets.iter().copied().collect(),
                            down_at_ms: i.down_at_ms,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// An aggregator continuing from `snapshot`. Events that no longer validate are
    /// dropped from it; a snapshot written with another rollup interval is realigned.
    pub fn restore(settings: AggregateSettings, snapshot: Snapshot) -> Self {
        let mut agg = Aggregator::new(settings);
        let interval = agg.settings.rollup_interval_ms;
        agg.watermark_ms = snapshot.watermark_ms;
        agg.closed_until_ms = snapshot
            .closed_until_ms
            .and_then(Timestamp::from_unix_millis)
            .map(|t| t.floor_to(interval).unix_millis());
        let mut connectors: Vec<ConnectorState> = snapshot
            .connectors
            .into_iter()
            .map(|c| ConnectorState {
                key: ConnectorKey {
                    connector: c.connector,
                    deployment: c.deployment,
                    region: c.region,
                },
                recent: c.recent.into_iter().collect(),
                instances: c
                    .instances
                    .into_iter()
                    .filter_map(|i| {
                        // A snapshot from before effective times were kept: the sample
                        // time stands in for them.
                        let mut at = i.at_ms.into_iter();
                        let mut history: Vec<Kept> = i
                            .history
                            .into_iter()
                            .map(|event| Kept {
                                at_ms: at.next().unwrap_or_else(|| event.time.unix_millis()),
                                event,
                            })
                            .filter(|k| k.event.validate().is_ok())
                            .collect();
                        history.sort_by_key(Kept::order);
                        let name = history.first()?.event.instance.clone();
                        Some((
                            name,
                            InstanceState {
                                history: history.into(),
                                offsets: i
                                    .offsets_ms
                                    .into_iter()
                                    .rev()
                                    .take(OFFSET_REPORTS)
                                    .rev()
                                    .collect(),
                                down_at_ms: i.down_at_ms,
                            },
                        ))
                    })
                    .collect(),
            })
            .filter(|c| !c.instances.is_empty())
            .collect();
        connectors.sort_by(|a, b| a.key.cmp(&b.key));
        connectors.dedup_by(|a, b| a.key == b.key);
        agg.connectors = connectors;
        agg
    }
}

impl InstanceState {
    fn insert(&mut self, kept: Kept, closed_until_ms: Option<i64>) -> Applied {
        let (boot, seq) = (kept.event.boot, kept.event.seq);
        if self
            .history
            .iter()
            .any(|k| k.event.boot == boot && k.event.seq == seq)
        {
            return Applied::Superseded; // the same report again
        }
        // Position of the first report at or after this one.
        let order = kept.order();
        let pos = self.history.partition_point(|k| k.order() < order);
        if pos == 0 && !self.history.is_empty() {
            // Older than everything kept: only useful if the oldest kept report is in the
            // open windows (then this one is the newest before them).
            let oldest = self.history[0].at_ms;
            if closed_until_ms.is_none_or(|c| oldest < c) {
                return Applied::Superseded;
            }
        }
        if self.down_at_ms.is_some_and(|down| kept.at_ms > down) {
            self.down_at_ms = None;
        }
        self.history.insert(pos, kept);
        if let Some(c) = closed_until_ms {
            self.prune(c);
        }
        Applied::Current
    }

    /// Drops reports older than the newest one enqueued before `end`.
    fn prune(&mut self, end: i64) {
        let before = self.history.partition_point(|k| k.at_ms < end);
        if before > 1 {
            self.history.drain(..before - 1);
        }
    }
}

/// Serializable aggregator state (inside a checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Partition watermark, ms.
    pub watermark_ms: Option<i64>,
    /// End of the last closed window, ms.
    pub closed_until_ms: Option<i64>,
    /// Per connector.
    pub connectors: Vec<ConnectorSnapshot>,
}

/// One connector in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorSnapshot {
    /// Connector FQDN.
    pub connector: String,
    /// Deployment label.
    pub deployment: String,
    /// Region.
    pub region: String,
    /// `(window end ms, call_count)` within the peak window.
    pub recent: Vec<(i64, u64)>,
    /// Instances.
    pub instances: Vec<InstanceSnapshot>,
}

/// One instance in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSnapshot {
    /// Kept reports, oldest first.
    pub history: Vec<StatusEvent>,
    /// The effective time of each of `history`, ms; absent from older snapshots (the
    /// sample time then stands in).
    #[serde(default)]
    pub at_ms: Vec<i64>,
    /// `enqueued − time` of the instance's last reports, ms, oldest first.
    #[serde(default)]
    pub offsets_ms: Vec<i64>,
    /// Window end at which it was written as down.
    pub down_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpulse_schema::{decode, FieldValue, Point, State};

    const T0: i64 = 1_795_687_200_000; // 2026-11-26T10:00:00Z, a multiple of 60 s

    fn settings() -> AggregateSettings {
        AggregateSettings {
            rollup_interval_ms: 10_000,
            stale_after_ms: 45_000,
            peak_window_ms: 60_000,
            lateness_ms: 0,
            max_clock_skew_ms: 300_000,
            max_sample_age_ms: 86_400_000,
            forget_after_ms: 120_000,
        }
    }

    fn event(
        connector: &str,
        instance: &str,
        seq: u64,
        t_ms: i64,
        calls: u32,
        state: &str,
    ) -> StatusEvent {
        let time = Timestamp::from_unix_millis(t_ms).unwrap();
        let body = format!(
            r#"{{"schema":"tcpulse.status.v1","connector":"{connector}","deployment":"blue",
            "region":"westeurope","scaleset":"ss","instance":"{instance}",
            "boot":"6f1c2a4e-8b1d-4c3e-9f70-2d5b8a9e0c11","seq":{seq},"time":"{time}",
            "state":"{state}","calls":{{"call_count":{calls},"max_calls":16}}}}"#
        );
        decode(body.as_bytes()).unwrap()
    }

    fn int(p: &Point, f: &str) -> i64 {
        match p.get_field(f) {
            Some(FieldValue::Int(i)) => *i,
            other => panic!("{f}: {other:?} in {}", p.to_line()),
        }
    }

    fn connector_points(out: &[Point]) -> Vec<&Point> {
        out.iter()
            .filter(|p| p.measurement() == "tc_connector")
            .collect()
    }

    #[test]
    fn rollups_are_stamped_at_aligned_window_ends_with_the_state_as_of_the_end() {
        let mut agg = Aggregator::new(settings());
        let mut out = Vec::new();
        agg.apply(
            event("c", "i1", 1, T0 + 1_000, 10, "active"),
            T0 + 1_000,
            &mut out,
        );
        agg.apply(
            event("c", "i2", 1, T0 + 3_000, 5, "active"),
            T0 + 3_000,
            &mut out,
        );
        // i1 reports 12 after the window end: the closed window [T0, T0+10s) still has 10.
        agg.apply(
            event("c", "i1", 2, T0 + 10_500, 12, "active"),
            T0 + 10_500,
            &mut out,
        );
        let rollups = connector_points(&out);
        assert_eq!(rollups.len(), 1, "the watermark passed T0+10s");
        assert_eq!(rollups[0].timestamp_ns(), (T0 + 10_000) * 1_000_000);
        assert_eq!(int(rollups[0], "call_count"), 15);
        assert_eq!(int(rollups[0], "instances_online"), 2);
        assert_eq!(int(rollups[0], "capacity_planned"), 30);
        assert_eq!(int(rollups[0], "capacity_max"), 32);
        assert_eq!(int(rollups[0], "headroom_calls"), 15);
        // The instance point of the later report comes after the rollup, at its own time.
        assert_eq!(
            out.last().unwrap().timestamp_ns(),
            (T0 + 10_500) * 1_000_000
        );
        agg.apply(
            event("c", "i2", 2, T0 + 20_000, 7, "active"),
            T0 + 20_000,
            &mut out,
        );
        let rollups = connector_points(&out);
        assert_eq!(rollups.len(), 2);
        assert_eq!(rollups[1].timestamp_ns(), (T0 + 20_000) * 1_000_000);
        // As of T0+20s: i1 = 12, i2 = 5; the report at exactly T0+20s opens the next window.
        assert_eq!(int(rollups[1], "call_count"), 17);
        assert_eq!(int(rollups[1], "peak_calls"), 17);
        assert_eq!(int(rollups[1], "instances_needed"), 2);
        assert_eq!(int(rollups[1], "vcpu_needed"), 8);
        for p in &out {
            assert_eq!(p.timestamp_ns() % 1_000_000, 0);
        }
    }

    #[test]
    fn peak_is_the_highest_window_end_count_within_the_peak_window() {
        let mut agg = Aggregator::new(settings());
        let mut out = Vec::new();
        // Connector totals 3, 31, 4, 4, …: the 31 is 16 + 15 on two instances.
        let calls = [
            (3u32, 0u32),
            (16, 15),
            (4, 0),
            (4, 0),
            (4, 0),
            (4, 0),
            (4, 0),
            (4, 0),
            (4, 0),
        ];
        for (k, (c1, c2)) in calls.iter().enumerate() {
            let t = T0 + 10_000 * k as i64 + 1;
            agg.apply(event("c", "i1", k as u64, t, *c1, "active"), t, &mut out);
            agg.apply(event("c", "i2", k as u64, t, *c2, "active"), t, &mut out);
        }
        agg.advance_to(T0 + 90_000, &mut out);
        let peaks: Vec<i64> = connector_points(&out)
            .iter()
            .map(|p| int(p, "peak_calls"))
            .collect();
        // Window ends T0+10s..T0+90s; the 31 is current at T0+20s and leaves the 60 s peak
        // window after T0+80s.
        assert_eq!(peaks, vec![3, 31, 31, 31, 31, 31, 31, 4, 4]);
        let needed: Vec<i64> = connector_points(&out)
            .iter()
            .map(|p| int(p, "instances_needed"))
            .collect();
        assert_eq!(needed, vec![1, 3, 3, 3, 3, 3, 3, 1, 1]);
    }

    #[test]
    fn a_silent_instance_is_written_down_once_and_leaves_the_online_count() {
        let mut agg = Aggregator::new(settings());
        let mut out = Vec::new();
        agg.apply(
            event("c", "quiet", 1, T0 + 1_000, 8, "active"),
            T0 + 1_000,
            &mut out,
        );
        for k in 0..8 {
            let t = T0 + 1_000 + 10_000 * k;
            agg.apply(event("c", "busy", k as u64, t, 2, "active"), t, &mut out);
        }
        // quiet's last report is T0+1s; stale after 45 s → fresh at T0+40s, down at T0+50s.
        let online: Vec<(i64, i64)> = connector_points(&out)
            .iter()
            .map(|p| {
                (
                    (p.timestamp_ns() / 1_000_000 - T0) / 1000,
                    int(p, "instances_online"),
                )
            })
            .collect();
        assert_eq!(
            online,
            vec![
                (10, 2),
                (20, 2),
                (30, 2),
                (40, 2),
                (50, 1),
                (60, 1),
                (70, 1)
            ]
        );
        let downs: Vec<&Point> = out
            .iter()
            .filter(|p| p.measurement() == "tc_instance" && p.fields().len() == 1)
            .collect();
        assert_eq!(downs.len(), 1, "written once");
        assert_eq!(downs[0].get_tag("instance"), Some("quiet"));
        assert_eq!(int(downs[0], "up"), 0);
        assert_eq!(downs[0].timestamp_ns(), (T0 + 50_000) * 1_000_000);
        // It reports again: back in the count at the next window end.
        out.clear();
        agg.apply(
            event("c", "quiet", 2, T0 + 75_000, 8, "active"),
            T0 + 75_000,
            &mut out,
        );
        agg.advance_to(T0 + 80_000, &mut out);
        let last = *connector_points(&out).last().unwrap();
        assert_eq!(int(last, "instances_online"), 2);
        assert_eq!(int(last, "call_count"), 10);
    }

    #[test]
    fn a_whole_silent_connector_goes_to_zero_then_is_forgotten() {
        let mut agg = Aggregator::new(settings());
        let mut out = Vec::new();
        agg.apply(
            event("gone", "g1", 1, T0 + 1_000, 9, "active"),
            T0 + 1_000,
            &mut out,
        );
        agg.apply(
            event("live", "l1", 1, T0 + 1_000, 1, "active"),
            T0 + 1_000,
            &mut out,
        );
        out.clear();
        // Idle advance by the wall clock well past forget_after (120 s).
        agg.advance_to(T0 + 600_000, &mut out);
        let gone: Vec<i64> = connector_points(&out)
            .iter()
            .filter(|p| p.get_tag("connector") == Some("gone"))
            .map(|p| int(p, "instances_online"))
            .collect();
        assert_eq!(gone.first(), Some(&1));
        assert_eq!(gone.last(), Some(&0));
        assert!(gone.len() <= 13, "stops once forgotten: {}", gone.len());
        assert_eq!(agg.connectors(), 0);
        assert_eq!(agg.instances(), 0);
    }

    #[test]
    fn offline_states_carry_no_capacity() {
        let mut agg = Aggregator::new(settings());
        let mut out = Vec::new();
        agg.apply(event("c", "a", 1, T0 + 1, 10, "active"), T0 + 1, &mut out);
        agg.apply(
            event("c", "d", 1, T0 + 2, 4, "waiting_for_termination"),
            T0 + 2,
            &mut out,
        );
        agg.apply(
            event("c", "m", 1, T0 + 3, 0, "maintenance"),
            T0 + 3,
            &mut out,
        );
        agg.advance_to(T0 + 10_000, &mut out);
        let r = connector_points(&out)[0];
        assert_eq!(int(r, "instances_online"), 2);
        assert_eq!(int(r, "call_count"), 14);
        assert!(!State::Maintenance.is_online());
    }

    fn run(events: &[(StatusEvent, i64)], agg: &mut Aggregator) -> Vec<String> {
        let mut out = Vec::new();
        for (e, enq) in events {
            agg.apply(e.clone(), *enq, &mut out);
        }
        out.iter().map(Point::to_line).collect()
    }

    fn stream() -> Vec<(StatusEvent, i64)> {
        let mut v = Vec::new();
        for k in 0..40i64 {
            let t = T0 + 5_000 * k + 7;
            v.push((
                event("c", "i1", k as u64, t, (k % 17) as u32, "active"),
                t + 20,
            ));
            if k < 20 {
                v.push((event("c", "i2", k as u64, t + 3, 3, "active"), t + 25));
            }
        }
        v
    }

    #[test]
    fn duplicates_rewrite_identical_points_and_never_move_state_back() {
        let events = stream();
        let clean = run(&events, &mut Aggregator::new(settings()));
        // Every event delivered twice, the second copy late (after two more events).
        let mut dup = Vec::new();
        for (k, e) in events.iter().enumerate() {
            dup.push(e.clone());
            if k >= 2 {
                dup.push(events[k - 2].clone());
            }
        }
        let mut agg = Aggregator::new(settings());
        let with_dups = run(&dup, &mut agg);
        let mut a: Vec<&String> = clean.iter().collect();
        let mut b: Vec<&String> = with_dups.iter().collect();
        b.dedup();
        a.sort();
        b.sort();
        b.dedup();
        assert_eq!(a, b, "same set of points");
        let rollups_clean: Vec<&String> = clean
            .iter()
            .filter(|l| l.starts_with("tc_connector"))
            .collect();
        let rollups_dup: Vec<&String> = with_dups
            .iter()
            .filter(|l| l.starts_with("tc_connector"))
            .collect();
        assert_eq!(rollups_clean, rollups_dup);
    }

    #[test]
    fn replay_from_a_snapshot_rewrites_identical_points() {
        let events = stream();
        let mut full = Aggregator::new(settings());
        let all = run(&events, &mut full);
        // Crash after event 30: restore the snapshot taken there and replay the rest.
        let mut first = Aggregator::new(settings());
        let head = run(&events[..30], &mut first);
        let json = serde_json::to_value(first.snapshot()).unwrap();
        let snap: Snapshot = serde_json::from_value(json).unwrap();
        let mut resumed = Aggregator::restore(settings(), snap);
        let tail = run(&events[30..], &mut resumed);
        let mut joined = head;
        joined.extend(tail);
        assert_eq!(joined, all);
        // Replaying a span that was already processed (from an older snapshot) rewrites
        // exactly the points written the first time for that span.
        let mut again = Aggregator::new(settings());
        let replay = run(&events, &mut again);
        assert_eq!(replay, all);
    }

    /// Five instances of one connector report every 10 s with 10 calls each; `skewed`'s
    /// clock is off by `skew_ms`. Returns every point, and the newest enqueue time.
    fn fleet_with_one_skewed_clock(
        settings: AggregateSettings,
        skew_ms: i64,
        minutes: i64,
    ) -> (Vec<Point>, i64) {
        let mut agg = Aggregator::new(settings);
        let mut out = Vec::new();
        let mut newest = 0;
        for tick in 0..(minutes * 6) {
            for k in 0..5i64 {
                let enq = T0 + tick * 10_000 + k * 500 + 300;
                let off = if k == 4 { skew_ms } else { 0 };
                let e = event(
                    "c",
                    &format!("i{k}"),
                    tick as u64,
                    enq - 300 + off,
                    10,
                    "active",
                );
                if let Ok(e) = settings.admit(e, enq) {
                    agg.apply(e, enq, &mut out);
                }
                newest = enq;
            }
        }
        (out, newest)
    }

    /// r12 fault 4: one agent 50 s ahead, default settings. Before: the partition
    /// watermark followed it, every other instance was written `up=0` and the connector
    /// fell from 5 online / 50 calls to 1 / 10, with rollups stamped in the future.
    #[test]
    fn r12_one_clock_50s_ahead_moves_no_time_for_the_others() {
        for skew_ms in [50_000, -50_000, 10_000, -10_000, 170_000, -170_000] {
            let (out, newest) =
                fleet_with_one_skewed_clock(AggregateSettings::default(), skew_ms, 3);
            // No rollup in the future, ever.
            for r in connector_points(&out) {
                assert!(
                    r.timestamp_ns() <= newest * 1_000_000,
                    "{skew_ms}: {}",
                    r.to_line()
                );
            }
            // From the first window end after a slow clock's first three reports (its
            // steady offset is known from then on).
            let rollups: Vec<&Point> = connector_points(&out)
                .into_iter()
                .filter(|p| p.timestamp_ns() > (T0 + 20_000) * 1_000_000)
                .collect();
            assert!(rollups.len() >= 12, "{skew_ms}: {} rollups", rollups.len());
            for r in &rollups {
                assert_eq!(int(r, "instances_online"), 5, "{skew_ms}: {}", r.to_line());
                assert_eq!(int(r, "call_count"), 50, "{skew_ms}: {}", r.to_line());
                assert!(
                    r.timestamp_ns() <= newest * 1_000_000,
                    "{skew_ms}: rollup in the future: {}",
                    r.to_line()
                );
            }
            // The good clocks are never written down; a slow one at most while its
            // offset is learnt.
            let downs: Vec<String> = out
                .iter()
                .filter(|p| p.get_field("up") == Some(&FieldValue::Int(0)))
                .filter(|p| {
                    p.get_tag("instance") != Some("i4")
                        || p.timestamp_ns() > (T0 + 20_000) * 1_000_000
                })
                .map(Point::to_line)
                .collect();
            assert!(downs.is_empty(), "{skew_ms}: {downs:?}");
        }
    }

    #[test]
    fn a_clock_far_ahead_is_refused_and_never_moves_the_watermark() {
        let mut agg = Aggregator::new(settings());
        let mut out = Vec::new();
        agg.apply(
            event("c", "i1", 1, T0 + 1_000, 1, "active"),
            T0 + 1_000,
            &mut out,
        );
        // Event time one day ahead, enqueued now: a clock_skew dead letter.
        let bad = event("c", "bad", 1, T0 + 86_400_000, 1, "active");
        let dead = settings().admit(bad.clone(), T0 + 2_000).unwrap_err();
        assert_eq!(dead.reason.kind(), "clock_skew");
        assert_eq!(dead.instance.as_deref(), Some("bad"));
        // Even applied, only its enqueued time moves the watermark.
        agg.apply(bad, T0 + 2_000, &mut out);
        assert_eq!(agg.watermark_ms(), Some(T0 + 2_000));
        assert!(connector_points(&out).is_empty());
    }

    /// A clock beyond the bound (+10 min): that instance is dead-lettered, the other four
    /// are counted exactly; no rollup in the future; the skew is on every instance point.
    #[test]
    fn r12_a_clock_beyond_the_bound_is_dead_lettered_and_the_rest_counted() {
        let (out, newest) = fleet_with_one_skewed_clock(AggregateSettings::default(), 600_000, 2);
        let rollups: Vec<&Point> = connector_points(&out)
            .into_iter()
            .filter(|p| p.timestamp_ns() > T0 * 1_000_000)
            .collect();
        assert!(rollups.len() >= 9);
        for r in &rollups {
            assert_eq!(int(r, "instances_online"), 4, "{}", r.to_line());
            assert_eq!(int(r, "call_count"), 40, "{}", r.to_line());
            assert!(r.timestamp_ns() <= newest * 1_000_000);
        }
        assert!(!out.iter().any(|p| p.get_tag("instance") == Some("i4")));
        let (out, _) = fleet_with_one_skewed_clock(AggregateSettings::default(), 50_000, 1);
        let skews: Vec<Option<&FieldValue>> = out
            .iter()
            .filter(|p| p.get_tag("instance") == Some("i4"))
            .map(|p| p.get_field("clock_skew_seconds"))
            .collect();
        assert!(!skews.is_empty());
        // 50 s ahead, less the 300 ms between sampling and enqueueing.
        assert!(
            skews.iter().all(|s| *s == Some(&FieldValue::Float(49.7))),
            "{skews:?}"
        );
    }

    /// History published in one burst (sample times over 15 minutes, all enqueued at the
    /// end, as a backfill or the dashboards tests do) rolls up at its own windows: a
    /// healthy clock keeps its sample time.
    #[test]
    fn history_published_in_a_burst_rolls_up_where_it_belongs() {
        let mut agg = Aggregator::new(AggregateSettings::default());
        let mut out = Vec::new();
        let end = T0 + 900_000;
        for tick in 0..90i64 {
            for k in 0..3i64 {
                let t = T0 + tick * 10_000 + 5_000 + k;
                agg.apply(
                    event("c", &format!("i{k}"), tick as u64, t, 4, "active"),
                    end,
                    &mut out,
                );
            }
        }
        let rollups = connector_points(&out);
        assert!(rollups.len() >= 85, "{} rollups", rollups.len());
        for r in rollups.iter().skip(1) {
            assert_eq!(int(r, "instances_online"), 3, "{}", r.to_line());
            assert_eq!(int(r, "call_count"), 12, "{}", r.to_line());
        }
    }

    /// An agent cut off for two minutes replays its spool (old sample times, enqueued
    /// now): it was down while silent, is back once the replay arrives, and the replay
    /// rewrites its points at their own sample times; the others never change.
    #[test]
    fn a_spool_replay_after_an_outage_is_counted_once_it_arrives() {
        let mut agg = Aggregator::new(AggregateSettings::default());
        let mut out = Vec::new();
        let mut spooled = Vec::new();
        for tick in 0..30i64 {
            for k in 0..3i64 {
                let t = T0 + tick * 10_000 + k * 100 + 50;
                let e = event("c", &format!("i{k}"), tick as u64, t, 5, "active");
                if k == 2 && (6..18).contains(&tick) {
                    spooled.push(e); // the agent cannot reach Event Hubs
                    continue;
                }
                if k == 2 && tick == 18 {
                    for old in spooled.drain(..) {
                        agg.apply(old, t, &mut out);
                    }
                }
                agg.apply(e, t, &mut out);
            }
        }
        let online: Vec<i64> = connector_points(&out)
            .iter()
            .filter(|p| p.timestamp_ns() > T0 * 1_000_000)
            .map(|p| int(p, "instances_online"))
            .collect();
        assert!(online.contains(&2), "down while silent: {online:?}");
        assert_eq!(online.last(), Some(&3), "back after the replay: {online:?}");
        assert!(online.iter().all(|n| *n >= 2), "{online:?}");
        let i2_points = out
            .iter()
            .filter(|p| p.get_tag("instance") == Some("i2") && p.get_field("call_count").is_some())
            .count();
        assert_eq!(
            i2_points, 30,
            "every report written once, spooled ones included"
        );
    }
}
