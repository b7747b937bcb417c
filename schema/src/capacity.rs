//! The capacity model and every threshold the alert rules, dashboards and demo use.
//!
//! Sources: the vendor's planning page (`seed/teams-connector-planning.txt`, "Capacity
//! planning" and "Ensure that you have sufficient resource quota") and Pexip's scheduled
//! scaling docs (`reference/pexip-grafana-influx.md` A3). Values marked *tcpulse policy*
//! are this project's choices, not the vendor's; change them here and nowhere else.
//! [`THRESHOLDS`] lists the alerting values by name so dashboards and rules can be checked
//! against this file.

use crate::event::State;

/// Most calls one Teams Connector instance handles (vendor: "a maximum of 16 calls").
pub const MAX_CALLS_PER_INSTANCE: u32 = 16;
/// Calls to plan on per instance (vendor: "we recommend that you assume 15 calls").
pub const PLANNED_CALLS_PER_INSTANCE: u32 = 15;
/// Sanity ceiling on `max_calls` and `planned_calls` in an event: four times the vendor's
/// 16. A value above it is not a capacity any Teams Connector VM has but a broken source
/// (an unsigned `-1`, a counter read as a count), and the event is a dead letter rather
/// than a peak that poisons `instances_needed` for an hour. *tcpulse policy.*
pub const MAX_CALLS_SANITY_LIMIT: u32 = 64;
/// vCPUs of every allowed instance VM size (vendor: "Each Teams Connector instance will use
/// 4 vCPU").
pub const VCPU_PER_INSTANCE: u32 = 4;
/// Default instance VM size (`$PxAzureVmSize`).
pub const DEFAULT_VM_SIZE: &str = "Standard_D4s_v5";
/// The VM sizes the vendor allows; all have the same call capacity.
pub const ALLOWED_VM_SIZES: [&str; 3] = ["Standard_D4s_v5", "Standard_D4as_v5", "Standard_F4s"];

/// Whether `size` is an allowed instance VM size (exact, case-sensitive Azure name).
pub fn is_allowed_vm_size(size: &str) -> bool {
    ALLOWED_VM_SIZES.contains(&size)
}

// ---- Thresholds --------------------------------------------------------------------
//
// Names and values match `dashboards/thresholds.yaml` (sections `capacity`, `operational`,
// `state_codes`), which the alert rules and dashboards are tested against.

/// Connector utilization (`call_count / capacity_planned`) that raises a warning.
/// *tcpulse policy.*
pub const UTILIZATION_HIGH: f64 = 0.80;
/// Connector utilization that is critical. *tcpulse policy.*
pub const UTILIZATION_CRITICAL: f64 = 0.95;
/// Days to certificate expiry that raise a warning. *tcpulse policy.*
pub const CERT_WARNING_DAYS: f64 = 30.0;
/// Days to certificate expiry that are critical. *tcpulse policy.*
pub const CERT_CRITICAL_DAYS: f64 = 7.0;
/// Longest time an instance may take to start, minutes (Pexip: "It can take up to 20
/// minutes to start an instance"). Alerts on missing capacity pend at least this long.
pub const INSTANCE_START_MINUTES: u64 = 20;
/// [`INSTANCE_START_MINUTES`] in seconds.
pub const INSTANCE_START_SECONDS: u64 = INSTANCE_START_MINUTES * 60;
/// Collector lag behind the hub that raises an alert, seconds. *tcpulse policy.*
pub const PIPELINE_LAG_HIGH_SECONDS: u64 = 5 * 60;
/// Horizon of the "capacity exhausted soon" prediction (`predict_linear`), seconds.
/// *tcpulse policy.*
pub const EXHAUSTION_HORIZON_SECONDS: u64 = 30 * 60;

/// Instance media load, percent, shown as high on dashboards (no alert yet).
/// *tcpulse policy.*
pub const MEDIA_LOAD_HIGH_PERCENT: u8 = 80;
/// Instance media load, percent, shown as critical on dashboards (no alert yet).
/// *tcpulse policy.*
pub const MEDIA_LOAD_CRITICAL_PERCENT: u8 = 95;

// ---- Timing of the pipeline (defaults the agent and collector configs start from) -----

/// Default interval between an agent's reports, seconds. *tcpulse policy.*
pub const REPORT_INTERVAL_SECONDS: u64 = 10;
/// An instance with no report for this long is `up = 0` (three report intervals), seconds.
/// *tcpulse policy.*
pub const INSTANCE_STALE_SECONDS: u64 = 3 * REPORT_INTERVAL_SECONDS;
/// Connector rollup interval, seconds; `tc_connector` points are stamped at window ends
/// aligned to it. *tcpulse policy.*
pub const ROLLUP_INTERVAL_SECONDS: u64 = 10;
/// Window over which `peak_calls` is the highest connector `call_count`, seconds
/// (one hour). *tcpulse policy.*
pub const PEAK_WINDOW_SECONDS: u64 = 60 * 60;

// Orderings the alert rules rely on, checked at compile time.
const _: () = assert!(PLANNED_CALLS_PER_INSTANCE <= MAX_CALLS_PER_INSTANCE);
const _: () = assert!(MAX_CALLS_PER_INSTANCE <= MAX_CALLS_SANITY_LIMIT);
const _: () = assert!(UTILIZATION_HIGH < UTILIZATION_CRITICAL);
const _: () = assert!(MEDIA_LOAD_HIGH_PERCENT < MEDIA_LOAD_CRITICAL_PERCENT);
const _: () = assert!(CERT_CRITICAL_DAYS < CERT_WARNING_DAYS);
const _: () = assert!(INSTANCE_STALE_SECONDS > REPORT_INTERVAL_SECONDS);
const _: () = assert!(PEAK_WINDOW_SECONDS >= ROLLUP_INTERVAL_SECONDS);

/// One named threshold, for cross-checking dashboards and rules against this module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// The name, as in this module and in `dashboards/thresholds.yaml`.
    pub name: &'static str,
    /// Its value, as a float.
    pub value: f64,
    /// Unit: `calls`, `vcpu`, `ratio`, `percent`, `days`, `minutes`, `seconds`, `code`.
    pub unit: &'static str,
}

/// Every model constant and threshold above by name, plus the `STATE_*` codes of
/// [`crate::State::state_code`], so a test can compare `dashboards/thresholds.yaml`
/// against this table entry by entry.
pub const THRESHOLDS: &[Threshold] = &[
    t(
        "MAX_CALLS_PER_INSTANCE",
        MAX_CALLS_PER_INSTANCE as f64,
        "calls",
    ),
    t(
        "PLANNED_CALLS_PER_INSTANCE",
        PLANNED_CALLS_PER_INSTANCE as f64,
        "calls",
    ),
    t("VCPU_PER_INSTANCE", VCPU_PER_INSTANCE as f64, "vcpu"),
    t("UTILIZATION_HIGH", UTILIZATION_HIGH, "ratio"),
    t("UTILIZATION_CRITICAL", UTILIZATION_CRITICAL, "ratio"),
    t("CERT_WARNING_DAYS", CERT_WARNING_DAYS, "days"),
    t("CERT_CRITICAL_DAYS", CERT_CRITICAL_DAYS, "days"),
    t(
        "INSTANCE_START_MINUTES",
        INSTANCE_START_MINUTES as f64,
        "minutes",
    ),
    t(
        "PIPELINE_LAG_HIGH_SECONDS",
        PIPELINE_LAG_HIGH_SECONDS as f64,
        "seconds",
    ),
    t(
        "EXHAUSTION_HORIZON_SECONDS",
        EXHAUSTION_HORIZON_SECONDS as f64,
        "seconds",
    ),
    t(
        "MEDIA_LOAD_HIGH_PERCENT",
        MEDIA_LOAD_HIGH_PERCENT as f64,
        "percent",
    ),
    t(
        "MEDIA_LOAD_CRITICAL_PERCENT",
        MEDIA_LOAD_CRITICAL_PERCENT as f64,
        "percent",
    ),
    t(
        "REPORT_INTERVAL_SECONDS",
        REPORT_INTERVAL_SECONDS as f64,
        "seconds",
    ),
    t(
        "INSTANCE_STALE_SECONDS",
        INSTANCE_STALE_SECONDS as f64,
        "seconds",
    ),
    t(
        "ROLLUP_INTERVAL_SECONDS",
        ROLLUP_INTERVAL_SECONDS as f64,
        "seconds",
    ),
    t("PEAK_WINDOW_SECONDS", PEAK_WINDOW_SECONDS as f64, "seconds"),
    state("STATE_UNKNOWN", State::Unknown),
    state("STATE_ACTIVE", State::Active),
    state(
        "STATE_WAITING_FOR_TERMINATION",
        State::WaitingForTermination,
    ),
    state("STATE_TERMINATING", State::Terminating),
    state("STATE_MAINTENANCE", State::Maintenance),
    state("STATE_FAILURE", State::Failure),
];

const fn state(name: &'static str, s: State) -> Threshold {
    t(name, s.state_code() as f64, "code")
}

/// The value of the [`THRESHOLDS`] entry called `name`.
pub fn threshold(name: &str) -> Option<f64> {
    THRESHOLDS.iter().find(|t| t.name == name).map(|t| t.value)
}

const fn t(name: &'static str, value: f64, unit: &'static str) -> Threshold {
    Threshold { name, value, unit }
}

/// One connector's capacity over a rollup window: the `tc_connector` fields.
///
/// Counts are `u64` so no realistic fleet overflows; `headroom_calls` is signed because a
/// connector can run above its planned capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectorRollup {
    /// Instances online (see [`State::is_online`]) with a fresh report.
    pub instances_online: u64,
    /// Calls on those instances.
    pub call_count: u64,
    /// `instances_online × 15`.
    pub capacity_planned: u64,
    /// `instances_online × 16`.
    pub capacity_max: u64,
    /// `call_count / capacity_planned`; `None` (unknown, left out of the point) when there
    /// is no planned capacity to divide by.
    pub utilization: Option<f64>,
    /// `capacity_planned − call_count`; negative when above planned capacity.
    pub headroom_calls: i64,
    /// Highest connector `call_count` in the peak window (never below `call_count`).
    pub peak_calls: u64,
    /// `ceil(peak_calls / 15)`: instances that carry the peak at planned load.
    pub instances_needed: u64,
    /// `4 × instances_needed`.
    pub vcpu_needed: u64,
}

impl ConnectorRollup {
    /// Rolls up the call counts of the online instances (one entry per instance) with the
    /// highest connector call count seen in the peak window so far.
    ///
    /// The collector passes instances that reported within [`INSTANCE_STALE_SECONDS`] and
    /// whose state [`State::is_online`]; an instance whose report has no `calls`
    /// contributes 0 calls and its capacity.
    pub fn compute(online_call_counts: &[u32], window_peak_calls: u64) -> ConnectorRollup {
        let instances_online = online_call_counts.len() as u64;
        let call_count: u64 = online_call_counts.iter().map(|&c| u64::from(c)).sum();
        let capacity_planned = instances_online * u64::from(PLANNED_CALLS_PER_INSTANCE);
        let capacity_max = instances_online * u64::from(MAX_CALLS_PER_INSTANCE);
        let utilization =
            (capacity_planned > 0).then(|| call_count as f64 / capacity_planned as f64);
        let headroom_calls = i64::try_from(capacity_planned)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(call_count).unwrap_or(i64::MAX));
        let peak_calls = window_peak_calls.max(call_count);
        let instances_needed = instances_needed(peak_calls);
        ConnectorRollup {
            instances_online,
            call_count,
            capacity_planned,
            capacity_max,
            utilization,
            headroom_calls,
            peak_calls,
            instances_needed,
            vcpu_needed: instances_needed * u64::from(VCPU_PER_INSTANCE),
        }
    }
}

/// Instances needed to carry `calls` at planned load: `ceil(calls / 15)`.
pub fn instances_needed(calls: u64) -> u64 {
    calls.div_ceil(u64::from(PLANNED_CALLS_PER_INSTANCE))
}

/// vCPU quota to request for a number of instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuQuotaAdvice {
    /// The minimum: `4 × instances` (vendor: "4 cores x 6 … instances = 24 CPU cores").
    pub minimum: u64,
    /// What to request: room to grow above the minimum (vendor: "we strongly recommend
    /// that you request a quota covering more than the minimum, such as 40 cores").
    pub recommended: u64,
}

/// Quota advice for `instances` Teams Connector instances.
///
/// Rule (tcpulse policy, matching the vendor's example of 6 instances → 24 minimum, 40
/// recommended): recommend the larger of 1.5 × the minimum and the minimum plus four
/// spare instances (16 vCPU), rounded up to a multiple of 10 since quota requests are made
/// in round numbers. Zero instances need no quota.
///
/// | instances | minimum | recommended |
/// | --- | --- | --- |
/// | 1 | 4 | 20 |
/// | 6 | 24 | 40 |
/// | 10 | 40 | 60 |
/// | 20 | 80 | 120 |
pub fn vcpu_quota_advice(instances: u64) -> VcpuQuotaAdvice {
    let minimum = instances.saturating_mul(u64::from(VCPU_PER_INSTANCE));
    if instances == 0 {
        return VcpuQuotaAdvice {
            minimum: 0,
            recommended: 0,
        };
    }
    let half_again = minimum.saturating_add(minimum.div_ceil(2));
    let four_spare = minimum.saturating_add(4 * u64::from(VCPU_PER_INSTANCE));
    let recommended = half_again.max(four_spare).div_ceil(10).saturating_mul(10);
    VcpuQuotaAdvice {
        minimum,
        recommended,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_with_no_instances_has_no_capacity_and_unknown_utilization() {
        let r = ConnectorRollup::compute(&[], 0);
        assert_eq!(
            r,
            ConnectorRollup {
                instances_online: 0,
                call_count: 0,
                capacity_planned: 0,
                capacity_max: 0,
                utilization: None,
                headroom_calls: 0,
                peak_calls: 0,
                instances_needed: 0,
                vcpu_needed: 0,
            }
        );
        // Peak from earlier in the window still says what is needed.
        let r = ConnectorRollup::compute(&[], 31);
        assert_eq!(
            (
                r.utilization,
                r.peak_calls,
                r.instances_needed,
                r.vcpu_needed
            ),
            (None, 31, 3, 12)
        );
    }

    #[test]
    fn rollup_at_planned_capacity() {
        let r = ConnectorRollup::compute(&[15, 15, 15], 40);
        assert_eq!(r.instances_online, 3);
        assert_eq!(r.call_count, 45);
        assert_eq!(r.capacity_planned, 45);
        assert_eq!(r.capacity_max, 48);
        assert_eq!(r.utilization, Some(1.0));
        assert_eq!(r.headroom_calls, 0);
        assert_eq!(r.peak_calls, 45, "current count raises a lower window peak");
        assert_eq!(r.instances_needed, 3);
        assert_eq!(r.vcpu_needed, 12);
    }

    #[test]
    fn rollup_over_planned_capacity_has_negative_headroom() {
        let r = ConnectorRollup::compute(&[16, 16], 32);
        assert_eq!(r.call_count, 32);
        assert_eq!(r.capacity_planned, 30);
        assert_eq!(r.capacity_max, 32);
        assert!((r.utilization.unwrap() - 32.0 / 30.0).abs() < 1e-12);
        assert_eq!(r.headroom_calls, -2);
        assert_eq!(r.instances_needed, 3, "ceil(32 / 15)");
        assert_eq!(r.vcpu_needed, 12);
    }

    #[test]
    fn rollup_partial_load_uses_window_peak() {
        let r = ConnectorRollup::compute(&[12, 0, 7, 3], 58);
        assert_eq!(r.call_count, 22);
        assert_eq!(r.capacity_planned, 60);
        assert_eq!(r.headroom_calls, 38);
        assert_eq!(r.peak_calls, 58);
        assert_eq!(r.instances_needed, 4);
        assert_eq!(r.vcpu_needed, 16);
        assert!((r.utilization.unwrap() - 22.0 / 60.0).abs() < 1e-12);
    }

    #[test]
    fn instances_needed_rounds_up() {
        assert_eq!(
            [0, 1, 15, 16, 30, 31].map(instances_needed),
            [0, 1, 1, 2, 2, 3]
        );
    }

    #[test]
    fn quota_advice_matches_the_vendor_example_and_table() {
        let got: Vec<(u64, u64)> = [0, 1, 6, 10, 20]
            .map(vcpu_quota_advice)
            .iter()
            .map(|a| (a.minimum, a.recommended))
            .collect();
        assert_eq!(got, [(0, 0), (4, 20), (24, 40), (40, 60), (80, 120)]);
        for n in 1..200 {
            let a = vcpu_quota_advice(n);
            assert!(
                a.recommended > a.minimum && a.recommended.is_multiple_of(10),
                "{n}: {a:?}"
            );
        }
    }

    #[test]
    fn vm_sizes_and_threshold_table() {
        assert!(is_allowed_vm_size(DEFAULT_VM_SIZE));
        assert!(is_allowed_vm_size("Standard_F4s"));
        assert!(!is_allowed_vm_size("Standard_D2s_v5"));
        let names: std::collections::HashSet<&str> = THRESHOLDS.iter().map(|t| t.name).collect();
        assert_eq!(names.len(), THRESHOLDS.len(), "names are unique");
        assert_eq!(threshold("UTILIZATION_HIGH"), Some(0.80));
        assert_eq!(threshold("INSTANCE_START_MINUTES"), Some(20.0));
        assert_eq!(threshold("STATE_FAILURE"), Some(5.0));
        assert_eq!(threshold("NOPE"), None);
        assert_eq!(INSTANCE_START_SECONDS, 1200);
    }

    /// `dashboards/thresholds.yaml` (owned by the dashboards work) says it mirrors this
    /// module: every `NAME: value` it lists under `capacity`, `operational` and
    /// `state_codes` must be in [`THRESHOLDS`] with the same value.
    #[test]
    fn dashboards_thresholds_yaml_matches_this_module() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards/thresholds.yaml");
        let yaml = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut section = "";
        let mut checked = 0;
        for line in yaml.lines() {
            let line = line.split('#').next().unwrap_or("").trim_end();
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line.trim_end_matches(':');
                continue;
            }
            if !["capacity", "operational", "state_codes"].contains(&section) {
                continue;
            }
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            let value: f64 = value.trim().parse().unwrap_or_else(|_| panic!("{line}"));
            assert_eq!(threshold(name), Some(value), "{name} in {path}");
            checked += 1;
        }
        assert!(checked >= 10, "parsed only {checked} entries from {path}");
    }
}
