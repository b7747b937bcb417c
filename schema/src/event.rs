//! The v1 status event: one report from one Teams Connector instance.
//!
//! Field names follow DESIGN.md "The status event (schema v1)", which in turn follows
//! Pexip's own `teamsnode` status API (`call_count`, `max_calls`, `media_load`, `state`,
//! `start_time`). The types here only describe the event; turning bytes into an event, with
//! every rule that makes one acceptable, is [`mod@crate::decode`]'s job.
//!
//! Unknown-is-absent: every health value is an `Option`, and `None` means "the agent could
//! not measure it". It is never stored as 0.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::capacity::PLANNED_CALLS_PER_INSTANCE;
use crate::dedup::EventKey;

/// The schema name of every v1 event, sent both in the body (`schema`) and as the
/// `schema` application property of the Event Hubs message.
///
/// Minor revisions (`tcpulse.status.v1.1`, `…v1.2`, …) only add optional fields or enum
/// values and are accepted by every v1 reader; see [`mod@crate::decode`].
pub const SCHEMA_V1: &str = "tcpulse.status.v1";

/// One status report from one Teams Connector instance (schema v1).
///
/// `(instance, boot, seq)` identifies the event (see [`StatusEvent::key`]); the collector
/// uses it to drop duplicates that at-least-once delivery produces.
///
/// Outside this crate, build one from [`StatusEvent::example`] and change what matters,
/// so that a new optional field needs no edit there:
///
/// ```
/// use tcpulse_schema::{Calls, StatusEvent};
///
/// let event = StatusEvent {
///     instance: "tc-eu-vmss_7".into(),
///     seq: 7,
///     calls: Some(Calls { call_count: 3, ..Calls::example() }),
///     ..StatusEvent::example()
/// };
/// assert!(event.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// Schema name and version: [`SCHEMA_V1`] or a v1 minor version (`tcpulse.status.v1.N`).
    pub schema: String,
    /// Teams Connector FQDN (`$PxTeamsConnFqdn`); the Event Hubs partition key.
    pub connector: String,
    /// Deployment label, e.g. `blue` or `green`, so two deployments can report side by side.
    pub deployment: String,
    /// Azure region of the scale set, e.g. `westeurope`.
    pub region: String,
    /// VM scale set name (Pexip's `scaleset_id`).
    pub scaleset: String,
    /// VMSS instance name, e.g. `tc-eu-vmss_3`.
    pub instance: String,
    /// Random id chosen at each agent start; `seq` restarts from 0 with a new `boot`.
    #[serde(deserialize_with = "uuid_from_str")]
    pub boot: Uuid,
    /// Sequence number of this event within `boot`, increasing by one per report.
    pub seq: u64,
    /// Sample time (UTC, millisecond precision). Stored points carry this time.
    pub time: Timestamp,
    /// Start-up time of the instance, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Timestamp>,
    /// Instance state as Pexip reports it; [`State::Unknown`] when the agent's source failed.
    pub state: State,
    /// Call counters; absent when the agent's source failed (then `state` is `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<Calls>,
    /// Host health; each value absent when unknown. The whole object may be absent or `null`.
    #[serde(
        default,
        skip_serializing_if = "Health::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub health: Health,
    /// The reporting agent's own state; absent from producers that are not tcpulse-agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInfo>,
}

impl StatusEvent {
    /// A full, valid event with every field known: the one in `fixtures/valid_full.json`
    /// (DESIGN.md's example). For tests, benches and docs; vary it with struct update
    /// syntax (see [`StatusEvent`]).
    pub fn example() -> StatusEvent {
        StatusEvent {
            schema: SCHEMA_V1.to_owned(),
            connector: "tc-eu.example.com".to_owned(),
            deployment: "blue".to_owned(),
            region: "westeurope".to_owned(),
            scaleset: "tc-eu-vmss".to_owned(),
            instance: "tc-eu-vmss_3".to_owned(),
            boot: Uuid::from_u128(0x6f1c_2a4e_8b1d_4c3e_9f70_2d5b_8a9e_0c11),
            seq: 1042,
            time: Timestamp(1_795_687_200_123),
            start_time: Some(Timestamp(1_795_678_872_000)),
            state: State::Active,
            calls: Some(Calls::example()),
            health: Health::example(),
            agent: Some(AgentInfo::example()),
        }
    }

    /// [`StatusEvent::example`] with only the required fields: every optional value
    /// unknown, `state` unknown (what an agent whose source failed sends).
    pub fn example_minimal() -> StatusEvent {
        let StatusEvent {
            schema,
            connector,
            deployment,
            region,
            scaleset,
            instance,
            boot,
            seq,
            time,
            ..
        } = StatusEvent::example();
        StatusEvent {
            schema,
            connector,
            deployment,
            region,
            scaleset,
            instance,
            boot,
            seq,
            time,
            start_time: None,
            state: State::Unknown,
            calls: None,
            health: Health::default(),
            agent: None,
        }
    }

    /// The dedupe key `(instance, boot, seq)` of this event.
    pub fn key(&self) -> EventKey {
        EventKey {
            instance: self.instance.clone(),
            boot: self.boot,
            seq: self.seq,
        }
    }

    /// The connector series this event rolls up into (`tc_connector` tags).
    pub fn connector_key(&self) -> ConnectorKey {
        ConnectorKey {
            connector: self.connector.clone(),
            deployment: self.deployment.clone(),
            region: self.region.clone(),
        }
    }
}

/// Call counters, named as in Pexip's `teamsnode` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calls {
    /// Calls being handled by the instance now.
    pub call_count: u32,
    /// Maximum call capacity of the instance (16 for every allowed VM size).
    pub max_calls: u32,
    /// Calls to plan on per instance; absent means [`PLANNED_CALLS_PER_INSTANCE`] (15);
    /// 0 means no planned capacity (utilization is then unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_calls: Option<u32>,
    /// Media load in percent, 0..=100; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_load: Option<u8>,
}

impl Calls {
    /// The calls of [`StatusEvent::example`]: 12 of 16, planned 15, media load 71 %.
    pub const fn example() -> Calls {
        Calls {
            call_count: 12,
            max_calls: 16,
            planned_calls: Some(15),
            media_load: Some(71),
        }
    }

    /// `planned_calls`, or the capacity model's 15 when the event did not carry it.
    pub fn planned_calls_or_default(&self) -> u32 {
        self.planned_calls.unwrap_or(PLANNED_CALLS_PER_INSTANCE)
    }

    /// `call_count / planned_calls`; `None` (unknown) when the planned capacity is 0, since
    /// a ratio without a denominator is not 0.
    pub fn utilization(&self) -> Option<f64> {
        let planned = self.planned_calls_or_default();
        (planned > 0).then(|| f64::from(self.call_count) / f64::from(planned))
    }
}

/// Host health of the instance. Every value is optional: absent means unknown, never 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// CPU busy fraction over the sample interval, 0.0..=1.0 (all cores together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Memory in use, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_used_bytes: Option<u64>,
    /// Memory installed, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_total_bytes: Option<u64>,
    /// Free space on the system disk, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    /// Whether the Teams Connector service is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_up: Option<bool>,
    /// Days until the instance's TLS certificate expires; negative once it has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expiry_days: Option<f64>,
}

impl Health {
    /// The health of [`StatusEvent::example`]: every value known.
    pub const fn example() -> Health {
        Health {
            cpu: Some(0.41),
            mem_used_bytes: Some(6_442_450_944),
            mem_total_bytes: Some(17_179_869_184),
            disk_free_bytes: Some(53_687_091_200),
            service_up: Some(true),
            cert_expiry_days: Some(41.5),
        }
    }

    /// True when no health value is known (the object is then left out of the JSON).
    pub fn is_empty(&self) -> bool {
        *self == Health::default()
    }
}

/// The reporting agent's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Agent version, e.g. `0.1.0`.
    pub version: String,
    /// Reports waiting in the agent's spool when this one was made.
    pub spooled: u64,
    /// Reports the agent dropped since it started (spool full).
    pub dropped: u64,
    /// Seconds publishing had been failing with a fatal error (refused credentials) when this
    /// report was made; 0 when publishing works. Absent from agents that predate the field
    /// (unknown, never 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_failing_seconds: Option<u64>,
    /// Seconds until the agent's Entra ID token expires (negative once renewals have failed
    /// past its expiry) when this report was made; absent with a connection string (SAS)
    /// and from agents that predate the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_expires_in_seconds: Option<i64>,
}

impl AgentInfo {
    /// The agent of [`StatusEvent::example`]: version 0.1.0, nothing spooled or dropped,
    /// publishing works, its Entra ID token good for 2875 s more.
    pub fn example() -> AgentInfo {
        AgentInfo {
            version: "0.1.0".to_owned(),
            spooled: 0,
            dropped: 0,
            publish_failing_seconds: Some(0),
            credential_expires_in_seconds: Some(2875),
        }
    }
}

/// The series identity of a connector rollup: the `tc_connector` tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectorKey {
    /// Teams Connector FQDN.
    pub connector: String,
    /// Deployment label (blue/green).
    pub deployment: String,
    /// Azure region.
    pub region: String,
}

/// Instance state, as Pexip's Administrator UI names it (docs.pexip.com/admin/teams_status.htm),
/// plus `unknown` for a report whose source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Operating normally.
    Active,
    /// Draining: waiting for calls to clear so the instance can be terminated.
    WaitingForTermination,
    /// No calls; the instance is terminating now.
    Terminating,
    /// Not operational, e.g. restarting or being reconfigured.
    Maintenance,
    /// Has been in maintenance longer than expected; typically failing to restart.
    Failure,
    /// The agent could not read the state (its source failed).
    Unknown,
}

impl State {
    /// Every state, in `state_code` order.
    pub const ALL: [State; 6] = [
        State::Unknown,
        State::Active,
        State::WaitingForTermination,
        State::Terminating,
        State::Maintenance,
        State::Failure,
    ];

    /// The JSON spelling (`waiting_for_termination`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::WaitingForTermination => "waiting_for_termination",
            State::Terminating => "terminating",
            State::Maintenance => "maintenance",
            State::Failure => "failure",
            State::Unknown => "unknown",
        }
    }

    /// Stable number stored as the `state_code` field. These values never change: dashboards
    /// value-map them and alert rules compare against them.
    ///
    /// | state | code |
    /// | --- | --- |
    /// | unknown | 0 |
    /// | active | 1 |
    /// | waiting_for_termination | 2 |
    /// | terminating | 3 |
    /// | maintenance | 4 |
    /// | failure | 5 |
    pub const fn state_code(self) -> u8 {
        match self {
            State::Unknown => 0,
            State::Active => 1,
            State::WaitingForTermination => 2,
            State::Terminating => 3,
            State::Maintenance => 4,
            State::Failure => 5,
        }
    }

    /// The state stored under `code`, if any.
    pub fn from_code(code: u8) -> Option<State> {
        State::ALL.into_iter().find(|s| s.state_code() == code)
    }

    /// Whether an instance in this state counts as online in the connector rollup: it
    /// carries calls and its capacity is part of the connector's (`active`, and
    /// `waiting_for_termination` while it drains).
    pub const fn is_online(self) -> bool {
        matches!(self, State::Active | State::WaitingForTermination)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the v1 states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown instance state {0:?}; expected one of active, waiting_for_termination, terminating, maintenance, failure, unknown")]
pub struct UnknownState(pub String);

impl FromStr for State {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A UTC instant with millisecond precision, written as RFC 3339 `YYYY-MM-DDTHH:MM:SS.mmmZ`.
///
/// The range is 1970-01-01 to 2262-04-11, so [`Timestamp::unix_nanos`] always fits the
/// `i64` nanoseconds of line protocol. Parsing accepts any RFC 3339 offset, converts to UTC
/// and drops digits below the millisecond, so `parse(format(t)) == t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a string is not a usable [`Timestamp`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// Not RFC 3339 (`2026-11-26T10:00:00.123Z`).
    #[error("not an RFC 3339 timestamp (expected e.g. 2026-11-26T10:00:00.123Z)")]
    NotRfc3339,
    /// Before 1970 or after 2262-04-11 (outside the nanosecond range of line protocol).
    #[error("timestamp outside 1970-01-01..2262-04-11")]
    OutOfRange,
}

impl TimestampError {
    /// The value rule it breaks, as a dead-letter reason states it.
    pub const fn why(&self) -> &'static str {
        match self {
            TimestampError::NotRfc3339 => "not an RFC 3339 timestamp",
            TimestampError::OutOfRange => "outside 1970-01-01..2262-04-11",
        }
    }
}

const NANOS_PER_MILLI: i64 = 1_000_000;

impl Timestamp {
    /// The Unix epoch, 1970-01-01T00:00:00.000Z.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The last representable instant (its nanoseconds still fit an `i64`).
    pub const MAX: Timestamp = Timestamp(i64::MAX / NANOS_PER_MILLI);

    /// The instant `ms` milliseconds after the Unix epoch, if in range.
    pub const fn from_unix_millis(ms: i64) -> Option<Timestamp> {
        if ms >= 0 && ms <= Timestamp::MAX.0 {
            Some(Timestamp(ms))
        } else {
            None
        }
    }

    /// The current time, from the system clock (the epoch if the clock is before it).
    pub fn now() -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(ms.min(Timestamp::MAX.0))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// Nanoseconds since the Unix epoch (the line-protocol timestamp).
    pub const fn unix_nanos(self) -> i64 {
        self.0 * NANOS_PER_MILLI
    }

    /// The start of the `interval_ms`-long interval containing this instant, intervals
    /// being aligned to the epoch. Used to stamp rollups at aligned window ends.
    /// An `interval_ms` of 0 or less returns `self`.
    pub const fn floor_to(self, interval_ms: i64) -> Timestamp {
        if interval_ms <= 0 {
            self
        } else {
            Timestamp(self.0 - self.0 % interval_ms)
        }
    }

    /// Parses an RFC 3339 timestamp (any offset; converted to UTC, truncated to ms).
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, TimestampError> {
        // What this type writes, and so what every tcpulse agent sends, without the
        // general parser (a third of the cost of decoding an event).
        if let Some(t) = Timestamp::parse_canonical(s) {
            return Ok(t);
        }
        let parsed = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|_| TimestampError::NotRfc3339)?;
        let nanos = parsed.unix_timestamp_nanos();
        let ms = nanos.div_euclid(i128::from(NANOS_PER_MILLI));
        i64::try_from(ms)
            .ok()
            .and_then(Timestamp::from_unix_millis)
            .ok_or(TimestampError::OutOfRange)
    }
}

impl Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` exactly (the [`Display`](fmt::Display) form), in range;
    /// `None` for anything else, which [`Timestamp::parse_rfc3339`] then parses in full.
    fn parse_canonical(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        let punctuation = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
        ];
        if b.len() != 24 || b.get(23) != Some(&b'Z') {
            return None;
        }
        if punctuation.iter().any(|&(i, c)| b.get(i) != Some(&c)) {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<i64> {
            b.get(from..to)?.iter().try_fold(0i64, |acc, &d| {
                d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
            })
        };
        let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (hour, minute, second, ms) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let month_days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            1..=12 => 31,
            _ => return None,
        };
        if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let ms_of_day = ((hour * 60 + minute) * 60 + second) * 1000 + ms;
        Timestamp::from_unix_millis(days * 86_400_000 + ms_of_day)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date, the inverse of
/// [`civil_from_days`] (same source).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse_rfc3339(s)
    }
}

impl fmt::Display for Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        let days = ms.div_euclid(86_400_000);
        let ms_of_day = ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let secs = ms_of_day / 1000;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            ms_of_day % 1000
        )
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (year, month as u32, day as u32)
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor(|s: &str| {
            Timestamp::parse_rfc3339(s).map_err(|e| e.why())
        }))
    }
}

/// Why `boot` is not usable, as a dead-letter reason states it.
const NOT_A_UUID: &str = "not a UUID";

/// Every message the event's own `Deserialize` impls fail with: the value rules that
/// [`mod@crate::decode`] reports as `invalid_value` (its reasons carry `&'static str`).
pub(crate) const VALUE_RULES: [&str; 3] = [
    TimestampError::NotRfc3339.why(),
    TimestampError::OutOfRange.why(),
    NOT_A_UUID,
];

/// `boot`: a UUID string (any form `Uuid::parse_str` takes), failing with [`NOT_A_UUID`].
fn uuid_from_str<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Uuid, D::Error> {
    deserializer.deserialize_str(FromStrVisitor(|s: &str| {
        Uuid::parse_str(s).map_err(|_| NOT_A_UUID)
    }))
}

/// A value that may be `null`, which reads as its default (unknown), like absent.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Reads a JSON string (only a string, borrowed, never copied) through `parse`, whose
/// error is the value rule it breaks.
struct FromStrVisitor<F>(F);

impl<T, F: FnOnce(&str) -> Result<T, &'static str>> de::Visitor<'_> for FromStrVisitor<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        (self.0)(s).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_codes_are_stable_and_round_trip() {
        let codes: Vec<(String, u8)> = State::ALL
            .iter()
            .map(|s| (s.to_string(), s.state_code()))
            .collect();
        assert_eq!(
            codes,
            [
                ("unknown".to_owned(), 0),
                ("active".to_owned(), 1),
                ("waiting_for_termination".to_owned(), 2),
                ("terminating".to_owned(), 3),
                ("maintenance".to_owned(), 4),
                ("failure".to_owned(), 5),
            ]
        );
        for s in State::ALL {
            assert_eq!(State::from_code(s.state_code()), Some(s));
            assert_eq!(s.as_str().parse::<State>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(State::from_code(6), None);
        assert!("Active".parse::<State>().is_err());
    }

    #[test]
    fn only_active_and_draining_count_as_online() {
        let online: Vec<State> = State::ALL.into_iter().filter(|s| s.is_online()).collect();
        assert_eq!(online, [State::Active, State::WaitingForTermination]);
    }

    #[test]
    fn timestamp_formats_utc_with_milliseconds() {
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000Z");
        let t = Timestamp::from_unix_millis(1_795_687_200_123).unwrap();
        assert_eq!(t.to_string(), "2026-11-26T10:00:00.123Z");
        assert_eq!(t.unix_nanos(), 1_795_687_200_123_000_000);
        // Leap day and end of year.
        let t = Timestamp::parse_rfc3339("2024-02-29T23:59:59.999Z").unwrap();
        assert_eq!(t.to_string(), "2024-02-29T23:59:59.999Z");
        let t = Timestamp::parse_rfc3339("2025-12-31T23:59:59Z").unwrap();
        assert_eq!(t.to_string(), "2025-12-31T23:59:59.000Z");
        assert_eq!(Timestamp::MAX.to_string(), "2262-04-11T23:47:16.854Z");
    }

    #[test]
    fn timestamp_parse_normalises_offset_and_truncates_below_ms() {
        let t = Timestamp::parse_rfc3339("2026-11-26T11:00:00.123987+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-26T10:00:00.123Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-26T10:00:00"),
            Err(TimestampError::NotRfc3339),
            "an offset is required"
        );
        assert_eq!(
            Timestamp::parse_rfc3339("1795687200123"),
            Err(TimestampError::NotRfc3339)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("1969-12-31T23:59:59.999Z"),
            Err(TimestampError::OutOfRange)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2300-01-01T00:00:00Z"),
            Err(TimestampError::OutOfRange)
        );
    }

    #[test]
    fn canonical_timestamps_parse_as_the_general_parser_does() {
        let general = |s: &str| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .ok()
                .and_then(|t| {
                    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
                    i64::try_from(ms).ok().and_then(Timestamp::from_unix_millis)
                })
        };
        // Every day of 1968..=2030 and 2099..=2101 at a few times of day, and the ends.
        let mut samples: Vec<String> = Vec::new();
        for year in (1968..=2030).chain(2099..=2101).chain([2262, 9999]) {
            for month in 0..=13 {
                for day in 0..=32 {
                    for time in [
                        "00:00:00.000",
                        "23:59:59.999",
                        "12:34:56.789",
                        "24:00:00.000",
                    ] {
                        samples.push(format!("{year:04}-{month:02}-{day:02}T{time}Z"));
                    }
                }
            }
        }
        samples.extend(
            [
                "2262-04-11T23:47:16.854Z",
                "2262-04-11T23:47:16.855Z",
                "1970-01-01T00:00:00.000Z",
                "1969-12-31T23:59:59.999Z",
                "2026-11-26T10:00:60.000Z",
                "2026-11-26T10:60:00.000Z",
                "2026-11-26t10:00:00.000Z",
                "2026-11-26T10:00:00.000z",
                "2026-11-26T10:00:00,000Z",
                "+026-11-26T10:00:00.000Z",
                "2026-1a-26T10:00:00.000Z",
            ]
            .map(String::from),
        );
        for s in &samples {
            let fast = Timestamp::parse_canonical(s);
            if fast.is_some() {
                assert_eq!(fast, general(s), "{s}");
            }
            assert_eq!(Timestamp::parse_rfc3339(s).ok(), general(s), "{s}");
        }
        let taken = samples
            .iter()
            .filter(|s| Timestamp::parse_canonical(s).is_some())
            .count();
        assert!(taken > 20_000, "{taken}");
        for ms in (0..200).map(|i| i * 1_433_333_333_337i64 % Timestamp::MAX.0) {
            let t = Timestamp(ms);
            assert_eq!(Timestamp::parse_canonical(&t.to_string()), Some(t));
        }
    }

    #[test]
    fn timestamp_floor_aligns_to_interval() {
        let t = Timestamp::parse_rfc3339("2026-11-26T10:00:59.999Z").unwrap();
        assert_eq!(t.floor_to(60_000).to_string(), "2026-11-26T10:00:00.000Z");
        assert_eq!(t.floor_to(0), t);
    }

    #[test]
    fn utilization_uses_planned_calls_default_and_is_unknown_without_a_plan() {
        let mut c = Calls {
            call_count: 12,
            max_calls: 16,
            planned_calls: None,
            media_load: None,
        };
        assert_eq!(c.planned_calls_or_default(), 15);
        assert!((c.utilization().unwrap() - 0.8).abs() < 1e-12);
        c.planned_calls = Some(0);
        assert_eq!(c.utilization(), None);
    }
}
