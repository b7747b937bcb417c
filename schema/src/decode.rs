//! Bytes to [`StatusEvent`] and back, with every rule that makes an event acceptable.
//!
//! [`decode`] never panics and never stops on bad input: it returns a [`DeadLetter`] whose
//! [`DeadLetterReason::kind`] is the counter label. Checks run in this order, and the first
//! failure is reported:
//!
//! 1. size: a body over [`MAX_BODY_BYTES`] is [`DeadLetterReason::Oversized`] (not parsed);
//! 2. JSON syntax (and UTF-8): [`DeadLetterReason::InvalidJson`];
//! 3. `schema`: `tcpulse.status.v1` or `tcpulse.status.v1.N` is read; `tcpulse.status.v2`
//!    and later (with or without a minor) is [`DeadLetterReason::FutureMajorVersion`];
//!    anything else is [`DeadLetterReason::UnknownSchema`];
//! 4. structure, in field order: [`DeadLetterReason::MissingField`] for an absent required
//!    field, [`DeadLetterReason::WrongType`] for a value of the wrong JSON type (a
//!    fractional number where an integer belongs, or `null` in a required field);
//! 5. values ([`StatusEvent::validate`]): [`DeadLetterReason::InvalidValue`].
//!
//! Unknown fields are ignored at every level. An optional field that is `null` counts as
//! absent (unknown).
//!
//! Decisions on values (all in [`StatusEvent::validate`]):
//! - identity strings (`connector`, `deployment`, `region`, `scaleset`, `instance`) must be
//!   non-empty, at most [`MAX_LABEL_BYTES`] long and free of control characters: they
//!   become line-protocol tags, which cannot carry newlines or be empty;
//! - a negative count is invalid (not a wrong type): the producer sent a number;
//! - `calls.media_load` is a percentage, 0..=100; the agent clamps what its source reports;
//! - `health.cpu` is a fraction, 0.0..=1.0;
//! - `calls.max_calls` is 1..=[`MAX_CALLS_SANITY_LIMIT`] (64; the vendor's maximum is 16),
//!   `calls.planned_calls` 0..=`max_calls`, and `calls.call_count` at most `max_calls`: a
//!   count beyond them is a broken source (`4294967295` is an unsigned −1), and accepting
//!   it would poison `peak_calls` and `instances_needed` for the whole peak window. A
//!   `planned_calls` of 0 is accepted and makes `utilization` unknown (absent), not 0;
//! - `time` and `start_time` must be RFC 3339 within 1970..2262 (see [`Timestamp`](crate::event::Timestamp));
//! - `state` must be a v1 state name. A *minor* version (`v1.N`, N ≥ 1) may add states, so
//!   there an unrecognised name reads as [`State::Unknown`](crate::event::State::Unknown) instead of a dead letter.
//!
//! [`encode`] writes the JSON form; it does not validate, so producers call
//! [`StatusEvent::validate`] first (the agent does, so it never spools a dead letter).
//!
//! One reading: [`decode`] reads the body straight into the derived types of
//! [`crate::event`] (serde_json through the adapter in `decode/reader.rs`, no
//! `serde_json::Value` tree), then checks the schema, the enum values and
//! [`StatusEvent::validate`]. A body that does not read is a dead letter; only then is it
//! parsed once more as a `Value` to report, in today's order, what is wrong with the body
//! as a whole (JSON syntax anywhere in it, a root that is not an object, `schema`) before
//! the field where the reading stopped.
//!
//! Differences from the earlier `Value` walk, at the edges:
//! - a body with several faults of the field kinds (`missing_field`, `wrong_type`, and the
//!   `invalid_value` of `boot`, `time`, `start_time` and integer ranges) reports the first
//!   in *document* order, where the walk reported the first in field-declaration order.
//!   Body-level faults (size, JSON syntax, root, `schema`) still come first, and the value
//!   rules of `state` and [`StatusEvent::validate`] still come after every field fault;
//! - a known field given twice is read as the walk read it (the last one wins), through a
//!   second reading of the body without the repeat.

use serde_json::Value;

use crate::capacity::MAX_CALLS_SANITY_LIMIT;
use crate::event::{Calls, StatusEvent, VALUE_RULES};

mod reader;

/// Largest body [`decode`] reads: 64 KiB. A v1 event is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest identity string (connector, deployment, region, scaleset, instance) or agent
/// version, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// Longest excerpt of producer-supplied text kept in a dead-letter reason, in characters.
const MAX_EXCERPT_CHARS: usize = 64;

/// Prefix shared by every tcpulse status schema name.
const SCHEMA_PREFIX: &str = "tcpulse.status.v";

/// An event the collector cannot use: why, and which instance sent it when that much of
/// the body could be read (for the log line; never a tag).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("dead letter{}: {reason}", .instance.as_deref().map(|i| format!(" from instance {i:?}")).unwrap_or_default())]
pub struct DeadLetter {
    /// Why the event was rejected.
    pub reason: DeadLetterReason,
    /// The `instance` field, if the body was a JSON object with a string there (truncated).
    pub instance: Option<String>,
}

/// Why an event is a dead letter. Field names are dotted JSON paths (`calls.call_count`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeadLetterReason {
    /// The body is larger than [`MAX_BODY_BYTES`]; carries the body length.
    #[error("body of {0} bytes exceeds the {MAX_BODY_BYTES}-byte limit")]
    Oversized(usize),
    /// The body is not UTF-8 JSON; carries the parser's message (with line and column).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// `schema` names a later major version this reader does not know.
    #[error("schema {0:?} is a later major version; upgrade the collector to read it")]
    FutureMajorVersion(String),
    /// `schema` is not a tcpulse status schema name.
    #[error("unknown schema {0:?}; expected tcpulse.status.v1")]
    UnknownSchema(String),
    /// A required field is absent.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong JSON type (`(root)` when the body is not an object).
    #[error("field `{0}` has the wrong type")]
    WrongType(&'static str),
    /// A field has the right type but a value outside what v1 allows.
    #[error("field `{field}` is invalid: {why}")]
    InvalidValue {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The sample time `time` is too far from the time Event Hubs enqueued the event (a
    /// clock no agent controls): ahead of it by more than the skew bound (the instance's
    /// clock runs fast), or behind it by more than the age bound (a clock far behind, or
    /// a sample older than the store keeps). See [`check_sample_time`].
    #[error("{}", clock_skew_message(*.skew_ms, *.bound_ms))]
    ClockSkew {
        /// Sample time − enqueued time, ms: positive when the sample is ahead.
        skew_ms: i64,
        /// The bound it broke, ms.
        bound_ms: i64,
    },
}

fn clock_skew_message(skew_ms: i64, bound_ms: i64) -> String {
    let secs = |ms: i64| ms as f64 / 1000.0;
    if skew_ms > 0 {
        format!(
            "clock skew: field `time` is {} s ahead of the time Event Hubs enqueued the event \
             (bound {} s); the instance's clock runs fast",
            secs(skew_ms),
            secs(bound_ms)
        )
    } else {
        format!(
            "clock skew: field `time` is {} s behind the time Event Hubs enqueued the event \
             (bound {} s); the instance's clock is far behind or the sample is older than \
             the store keeps",
            secs(-skew_ms),
            secs(bound_ms)
        )
    }
}

/// Default of [`TimeBounds::max_ahead_ms`]: 5 minutes.
pub const DEFAULT_MAX_AHEAD_MS: i64 = 5 * 60 * 1000;
/// Default of [`TimeBounds::max_behind_ms`]: 30 days, below VictoriaMetrics' default
/// retention of one month (a store silently drops points older than its retention).
pub const DEFAULT_MAX_BEHIND_MS: i64 = 30 * 24 * 3600 * 1000;

/// How far an event's sample time may be from its enqueued time (the service's clock),
/// both in milliseconds. The two sides differ on purpose: a sample can never be taken
/// after it was enqueued, so any lead beyond transport jitter is a fast clock; but a
/// sample can legitimately be much older than its enqueue time when the agent replays its
/// spool after an outage, so only what the store would not keep is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    /// Largest `time − enqueued`. Default [`DEFAULT_MAX_AHEAD_MS`].
    pub max_ahead_ms: i64,
    /// Largest `enqueued − time`. Default [`DEFAULT_MAX_BEHIND_MS`].
    pub max_behind_ms: i64,
}

impl Default for TimeBounds {
    fn default() -> Self {
        TimeBounds {
            max_ahead_ms: DEFAULT_MAX_AHEAD_MS,
            max_behind_ms: DEFAULT_MAX_BEHIND_MS,
        }
    }
}

/// Checks `event.time` against the time Event Hubs enqueued the event (`enqueued_ms`):
/// [`DeadLetterReason::ClockSkew`] beyond `bounds`. [`decode`] cannot apply it (it sees
/// only the body); the collector does, right after decoding.
pub fn check_sample_time(
    event: &StatusEvent,
    enqueued_ms: i64,
    bounds: TimeBounds,
) -> Result<(), DeadLetterReason> {
    let skew_ms = event.time.unix_millis().saturating_sub(enqueued_ms);
    let bound_ms = if skew_ms > 0 {
        bounds.max_ahead_ms
    } else {
        bounds.max_behind_ms
    };
    if skew_ms.saturating_abs() > bound_ms.max(0) {
        return Err(DeadLetterReason::ClockSkew { skew_ms, bound_ms });
    }
    Ok(())
}

impl DeadLetterReason {
    /// Every value [`DeadLetterReason::kind`] returns, for pre-registering counters.
    pub const KINDS: [&'static str; 8] = [
        "oversized",
        "invalid_json",
        "future_major_version",
        "unknown_schema",
        "missing_field",
        "wrong_type",
        "invalid_value",
        "clock_skew",
    ];

    /// Stable snake_case name of the reason's kind: the `error_type` label of the
    /// dead-letter counter and the key of "logged once per kind".
    pub const fn kind(&self) -> &'static str {
        match self {
            DeadLetterReason::Oversized(_) => "oversized",
            DeadLetterReason::InvalidJson(_) => "invalid_json",
            DeadLetterReason::FutureMajorVersion(_) => "future_major_version",
            DeadLetterReason::UnknownSchema(_) => "unknown_schema",
            DeadLetterReason::MissingField(_) => "missing_field",
            DeadLetterReason::WrongType(_) => "wrong_type",
            DeadLetterReason::InvalidValue { .. } => "invalid_value",
            DeadLetterReason::ClockSkew { .. } => "clock_skew",
        }
    }
}

/// A schema name this crate can read, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    /// Major version; always 1 for a readable event.
    pub major: u32,
    /// Minor version; 0 for plain `tcpulse.status.v1`.
    pub minor: u32,
}

/// Classifies a schema name: `Ok` for v1 and its minors, else the dead-letter reason.
pub fn parse_schema(schema: &str) -> Result<SchemaVersion, DeadLetterReason> {
    let unknown = || DeadLetterReason::UnknownSchema(excerpt(schema));
    let rest = schema.strip_prefix(SCHEMA_PREFIX).ok_or_else(unknown)?;
    let (major, minor) = match rest.split_once('.') {
        Some((major, minor)) => (major, Some(minor)),
        None => (rest, None),
    };
    let major = parse_version_number(major).ok_or_else(unknown)?;
    let minor = match minor {
        Some(m) => parse_version_number(m).ok_or_else(unknown)?,
        None => 0,
    };
    match major {
        1 => Ok(SchemaVersion { major, minor }),
        0 => Err(unknown()),
        _ => Err(DeadLetterReason::FutureMajorVersion(excerpt(schema))),
    }
}

/// Decimal digits without a leading zero (except `0` itself).
fn parse_version_number(s: &str) -> Option<u32> {
    let ok =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if ok {
        s.parse().ok()
    } else {
        None
    }
}

fn excerpt(s: &str) -> String {
    s.chars().take(MAX_EXCERPT_CHARS).collect()
}

/// Decodes and validates one event body. See the module docs for the rules.
pub fn decode(bytes: &[u8]) -> Result<StatusEvent, DeadLetter> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(DeadLetter {
            reason: DeadLetterReason::Oversized(bytes.len()),
            instance: None,
        });
    }
    decode_body(bytes, true)
}

/// [`decode`] without the size check; `dedup` allows one more reading of a body that
/// repeats a known field.
fn decode_body(bytes: &[u8], dedup: bool) -> Result<StatusEvent, DeadLetter> {
    let read = match reader::read::<StatusEvent>(bytes) {
        Ok(read) => read,
        Err(failure) => return diagnose(bytes, failure, dedup),
    };
    let event = read.value;
    let dead = |reason| DeadLetter {
        reason,
        instance: Some(excerpt(&event.instance)),
    };
    let version = parse_schema(&event.schema).map_err(dead)?;
    if let Some(field) = read.unrecognised {
        // A minor version may add enum values; v1.0 has only its own.
        if version.minor == 0 {
            return Err(dead(DeadLetterReason::InvalidValue {
                field,
                why: NOT_A_V1_STATE,
            }));
        }
    }
    event.validate().map_err(dead)?;
    Ok(event)
}

/// The dead letter of a body the typed reading stopped on: what is wrong with the body as
/// a whole first (JSON syntax anywhere, the root, `schema`), else the field it stopped at.
/// A body that only repeats a known field is read again without the repeat (`dedup`).
fn diagnose(
    bytes: &[u8],
    failure: reader::Failure,
    dedup: bool,
) -> Result<StatusEvent, DeadLetter> {
    let survey = reader::survey(bytes).map_err(|message| DeadLetter {
        reason: DeadLetterReason::InvalidJson(message),
        instance: None,
    })?;
    if !survey.object {
        return Err(DeadLetter {
            reason: DeadLetterReason::WrongType("(root)"),
            instance: None,
        });
    }
    let instance = survey.instance.as_deref().map(excerpt);
    let reason = match survey.schema {
        None => DeadLetterReason::MissingField("schema"),
        Some(Some(s)) => match parse_schema(&s) {
            Err(reason) => reason,
            Ok(_) if dedup && survey.repeats => {
                // Read the body as `Value` reads it: the last of each repeated key.
                let value: Value = serde_json::from_slice(bytes).unwrap_or_default();
                let body = serde_json::to_vec(&value).unwrap_or_default();
                return decode_body(&body, false);
            }
            Ok(_) => field_reason(failure),
        },
        Some(None) => DeadLetterReason::WrongType("schema"),
    };
    Err(DeadLetter { reason, instance })
}

/// The reason for the field the typed reading stopped at, in a body that is valid JSON.
fn field_reason(failure: reader::Failure) -> DeadLetterReason {
    use reader::ReadError;
    let field = match failure.path {
        "" => "(root)",
        path => path,
    };
    let invalid = |why| DeadLetterReason::InvalidValue { field, why };
    match failure.error {
        ReadError::MissingField(_) => DeadLetterReason::MissingField(field),
        ReadError::Json(_) | ReadError::WrongType | ReadError::DuplicateField => {
            DeadLetterReason::WrongType(field)
        }
        ReadError::Negative => invalid("must not be negative"),
        ReadError::TooLarge if field == "calls.media_load" => invalid(MEDIA_LOAD_RANGE),
        ReadError::TooLarge => invalid("too large"),
        ReadError::Rule(rule) => invalid(
            VALUE_RULES
                .iter()
                .copied()
                .find(|r| *r == rule)
                .unwrap_or("not a valid value"),
        ),
    }
}

/// Encodes an event as its JSON body. Does not validate: call [`StatusEvent::validate`]
/// first. Non-finite floats (which JSON cannot carry) are written as `null`, which reads
/// back as unknown.
pub fn encode(event: &StatusEvent) -> Vec<u8> {
    // Serialising these types cannot fail: every map key is a string and every value has an
    // infallible Serialize impl. Fall back to an empty body (a dead letter) rather than panic.
    serde_json::to_vec(event).unwrap_or_default()
}

type Res<T> = Result<T, DeadLetterReason>;

const NOT_A_V1_STATE: &str =
    "not a v1 state (active, waiting_for_termination, terminating, maintenance, failure, unknown)";

const MEDIA_LOAD_RANGE: &str = "a percentage, must be 0..=100";

fn check_label(field: &'static str, value: &str) -> Res<()> {
    let why = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_LABEL_BYTES {
        "longer than 256 bytes"
    } else if has_control(value) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(DeadLetterReason::InvalidValue { field, why })
}

/// `value.chars().any(char::is_control)`, on bytes when `value` is ASCII (the usual case,
/// and the only control characters there are below 0x20 and 0x7f).
fn has_control(value: &str) -> bool {
    if value.is_ascii() {
        value.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        value.chars().any(char::is_control)
    }
}

/// The domain bounds of `calls` (see the module docs).
fn check_calls(calls: &Calls) -> Res<()> {
    let invalid = |field, why| Err(DeadLetterReason::InvalidValue { field, why });
    if calls.max_calls == 0 {
        return invalid("calls.max_calls", "must be at least 1");
    }
    if calls.max_calls > MAX_CALLS_SANITY_LIMIT {
        return invalid("calls.max_calls", CALLS_CEILING);
    }
    if calls.call_count > calls.max_calls {
        return invalid("calls.call_count", "exceeds calls.max_calls");
    }
    if let Some(planned) = calls.planned_calls {
        if planned > MAX_CALLS_SANITY_LIMIT {
            return invalid("calls.planned_calls", CALLS_CEILING);
        }
        if planned > calls.max_calls {
            return invalid("calls.planned_calls", "exceeds calls.max_calls");
        }
    }
    if calls.media_load.is_some_and(|m| m > 100) {
        return invalid("calls.media_load", MEDIA_LOAD_RANGE);
    }
    Ok(())
}

const CALLS_CEILING: &str =
    "above 64, the sanity ceiling of calls per instance (the vendor's maximum is 16)";

impl StatusEvent {
    /// Checks the value rules of v1 (see [`mod@crate::decode`]); [`decode`] applies them to
    /// every event, and producers call this before [`encode`].
    pub fn validate(&self) -> Result<(), DeadLetterReason> {
        parse_schema(&self.schema)?;
        check_label("connector", &self.connector)?;
        check_label("deployment", &self.deployment)?;
        check_label("region", &self.region)?;
        check_label("scaleset", &self.scaleset)?;
        check_label("instance", &self.instance)?;
        if let Some(calls) = &self.calls {
            check_calls(calls)?;
        }
        if let Some(cpu) = self.health.cpu {
            if !(0.0..=1.0).contains(&cpu) {
                return Err(DeadLetterReason::InvalidValue {
                    field: "health.cpu",
                    why: "a fraction, must be 0.0..=1.0",
                });
            }
        }
        if self.health.cert_expiry_days.is_some_and(|d| !d.is_finite()) {
            return Err(DeadLetterReason::InvalidValue {
                field: "health.cert_expiry_days",
                why: "must be a finite number",
            });
        }
        if let Some(agent) = &self.agent {
            check_label("agent.version", &agent.version)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{State, Timestamp};

    /// The last segment of a dotted path: the key inside its object.
    fn key_of(path: &'static str) -> &'static str {
        path.rsplit('.').next().unwrap_or(path)
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    fn reason(bytes: &[u8]) -> DeadLetterReason {
        decode(bytes).unwrap_err().reason
    }

    fn minimal() -> Value {
        serde_json::from_slice(&fixture("valid_minimal.json")).unwrap()
    }

    fn with(mut v: Value, pointer: &str, new: Value) -> Vec<u8> {
        *v.pointer_mut(pointer).unwrap() = new;
        serde_json::to_vec(&v).unwrap()
    }

    fn without(mut v: Value, key: &str) -> Vec<u8> {
        v.as_object_mut().unwrap().remove(key).unwrap();
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn decodes_full_fixture_with_every_field() {
        let ev = decode(&fixture("valid_full.json")).unwrap();
        assert_eq!(ev.schema, "tcpulse.status.v1");
        assert_eq!(ev.connector, "tc-eu.example.com");
        assert_eq!(ev.deployment, "blue");
        assert_eq!(ev.region, "westeurope");
        assert_eq!(ev.scaleset, "tc-eu-vmss");
        assert_eq!(ev.instance, "tc-eu-vmss_3");
        assert_eq!(ev.boot.to_string(), "6f1c2a4e-8b1d-4c3e-9f70-2d5b8a9e0c11");
        assert_eq!(ev.seq, 1042);
        assert_eq!(ev.time.to_string(), "2026-11-26T10:00:00.123Z");
        assert_eq!(
            ev.start_time.map(|t| t.to_string()).as_deref(),
            Some("2026-11-26T07:41:12.000Z")
        );
        assert_eq!(ev.state, State::Active);
        let calls = ev.calls.unwrap();
        assert_eq!(
            (
                calls.call_count,
                calls.max_calls,
                calls.planned_calls,
                calls.media_load
            ),
            (12, 16, Some(15), Some(71))
        );
        let h = &ev.health;
        assert_eq!(h.cpu, Some(0.41));
        assert_eq!(h.mem_used_bytes, Some(6_442_450_944));
        assert_eq!(h.mem_total_bytes, Some(17_179_869_184));
        assert_eq!(h.disk_free_bytes, Some(53_687_091_200));
        assert_eq!(h.service_up, Some(true));
        assert_eq!(h.cert_expiry_days, Some(41.5));
        let agent = ev.agent.as_ref().unwrap();
        assert_eq!(
            (agent.version.as_str(), agent.spooled, agent.dropped),
            ("0.1.0", 0, 0)
        );
        assert_eq!(agent.publish_failing_seconds, Some(0));
        // Every field, including any added later: the fixture is the crate's example.
        assert_eq!(ev, StatusEvent::example());
    }

    #[test]
    fn decodes_minimal_fixture_with_everything_optional_unknown() {
        let ev = decode(&fixture("valid_minimal.json")).unwrap();
        assert_eq!(ev.state, State::Unknown);
        assert_eq!(ev.seq, 0);
        assert_eq!(ev.start_time, None);
        assert_eq!(ev.calls, None);
        assert!(ev.health.is_empty());
        assert_eq!(ev.agent, None);
    }

    #[test]
    fn unknown_fields_are_ignored_at_every_level() {
        let ev = decode(&fixture("valid_unknown_fields.json")).unwrap();
        let full = decode(&fixture("valid_full.json")).unwrap();
        assert_eq!(ev, full);
    }

    #[test]
    fn minor_version_is_read_and_may_add_states() {
        let ev = decode(&fixture("valid_minor_version.json")).unwrap();
        assert_eq!(ev.schema, "tcpulse.status.v1.3");
        assert_eq!(
            ev.state,
            State::Unknown,
            "a state added in v1.3 reads as unknown"
        );
        // The same unknown state under plain v1 is a dead letter.
        let v: Value = serde_json::from_slice(&fixture("valid_minor_version.json")).unwrap();
        assert_eq!(
            reason(&with(v, "/schema", "tcpulse.status.v1".into())).kind(),
            "invalid_value"
        );
    }

    #[test]
    fn serde_derive_agrees_with_decode_on_valid_fixtures() {
        for name in [
            "valid_full.json",
            "valid_minimal.json",
            "valid_unknown_fields.json",
        ] {
            let bytes = fixture(name);
            let via_serde: StatusEvent = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(via_serde, decode(&bytes).unwrap(), "{name}");
        }
    }

    #[test]
    fn invalid_json_fixture_is_invalid_json() {
        let r = reason(&fixture("invalid_json.json"));
        assert!(
            matches!(r, DeadLetterReason::InvalidJson(ref m) if m.contains("line")),
            "{r:?}"
        );
        assert_eq!(r.kind(), "invalid_json");
        assert!(matches!(
            reason(b"\xff\xfe{}"),
            DeadLetterReason::InvalidJson(_)
        ));
        assert!(matches!(reason(b""), DeadLetterReason::InvalidJson(_)));
    }

    /// A nesting bomb (deeper than serde_json's limit of 128) is `invalid_json`, wherever it
    /// stands: the whole body, an unknown field, or a known one; and it is refused without
    /// overflowing the stack (the body stays under the size limit).
    #[test]
    fn nesting_bombs_are_invalid_json() {
        let depth = 20_000;
        let bomb = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let full = String::from_utf8(fixture("valid_full.json")).unwrap();
        let open = full.trim_end().trim_end_matches('}');
        let bodies = [
            bomb.clone(),
            format!("{open}, \"x_extra\": {bomb}}}"),
            full.replacen("\"calls\": {", &format!("\"calls\": {bomb}, \"x\": {{"), 1),
        ];
        for body in bodies {
            assert!(body.len() < MAX_BODY_BYTES);
            let r = reason(body.as_bytes());
            assert!(
                matches!(r, DeadLetterReason::InvalidJson(ref m) if m.contains("recursion")),
                "{r:?}"
            );
        }
    }

    /// The body's UTF-8 is checked once as a whole before the typed reading: a byte that
    /// is not UTF-8 inside a known or an unknown string, of an otherwise valid event, is
    /// still `invalid_json` with serde_json's position of the byte.
    #[test]
    fn non_utf8_in_any_string_is_invalid_json_at_its_position() {
        let full = fixture("valid_full.json");
        let text = String::from_utf8(full).unwrap();
        let cut = text.find("tc-eu-vmss_3").unwrap() + 2;
        let mut known = text.as_bytes().to_vec();
        known.insert(cut, 0xff);
        let mut unknown = text.trim_end().trim_end_matches('}').as_bytes().to_vec();
        unknown.extend_from_slice(b", \"x_note\": \"a\xc3\x28b\"}");
        for body in [known, unknown] {
            let r = reason(&body);
            assert!(
                matches!(r, DeadLetterReason::InvalidJson(ref m) if m.contains("line") && m.contains("column")),
                "{r:?}"
            );
        }
    }
    #[test]
    fn missing_field_fixture_names_the_field() {
        let dl = decode(&fixture("invalid_missing_field.json")).unwrap_err();
        assert_eq!(dl.reason, DeadLetterReason::MissingField("seq"));
        assert_eq!(dl.instance.as_deref(), Some("tc-eu-vmss_3"));
        assert_eq!(
            dl.to_string(),
            "dead letter from instance \"tc-eu-vmss_3\": missing required field `seq`"
        );
    }

    #[test]
    fn every_required_field_is_required() {
        for key in [
            "schema",
            "connector",
            "deployment",
            "region",
            "scaleset",
            "instance",
            "boot",
            "seq",
            "time",
            "state",
        ] {
            match reason(&without(minimal(), key)) {
                DeadLetterReason::MissingField(f) => assert_eq!(f, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        let full: Value = serde_json::from_slice(&fixture("valid_full.json")).unwrap();
        for (pointer, path) in [
            ("/calls", "calls.call_count"),
            ("/calls", "calls.max_calls"),
            ("/agent", "agent.version"),
            ("/agent", "agent.spooled"),
            ("/agent", "agent.dropped"),
        ] {
            let mut v = full.clone();
            v.pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(key_of(path))
                .unwrap();
            assert_eq!(
                reason(&serde_json::to_vec(&v).unwrap()),
                DeadLetterReason::MissingField(path)
            );
        }
    }

    #[test]
    fn wrong_type_fixture_names_the_nested_field() {
        assert_eq!(
            reason(&fixture("invalid_wrong_type.json")),
            DeadLetterReason::WrongType("calls.call_count")
        );
    }

    #[test]
    fn wrong_types_are_detected() {
        let full: Value = serde_json::from_slice(&fixture("valid_full.json")).unwrap();
        let cases: [(&str, Value, &str); 11] = [
            ("/seq", 1.5.into(), "seq"),
            ("/seq", "1".into(), "seq"),
            ("/connector", 7.into(), "connector"),
            ("/state", Value::Null, "state"),
            ("/calls", Value::Array(vec![]), "calls"),
            ("/calls/max_calls", 16.0.into(), "calls.max_calls"),
            ("/health/cpu", "0.4".into(), "health.cpu"),
            ("/health/service_up", 1.into(), "health.service_up"),
            ("/agent/version", Value::Null, "agent.version"),
            (
                "/agent/publish_failing_seconds",
                "60".into(),
                "agent.publish_failing_seconds",
            ),
            ("/schema", 1.into(), "schema"),
        ];
        for (pointer, value, field) in cases {
            assert_eq!(
                reason(&with(full.clone(), pointer, value)),
                DeadLetterReason::WrongType(field),
                "{pointer}"
            );
        }
        assert_eq!(reason(b"[1,2]"), DeadLetterReason::WrongType("(root)"));
        assert_eq!(reason(b"null"), DeadLetterReason::WrongType("(root)"));
    }

    /// r12 fault 10: how long publishing has been failing is optional (old agents leave it
    /// out, and that reads as unknown), a count when present, and a dead letter naming the
    /// field otherwise.
    #[test]
    fn agent_publish_failing_seconds_is_optional_and_checked() {
        let full: Value = serde_json::from_slice(&fixture("valid_full.json")).unwrap();
        let body = |v: Value| with(full.clone(), "/agent/publish_failing_seconds", v);
        let seconds = |body: Vec<u8>| {
            decode(&body)
                .unwrap()
                .agent
                .unwrap()
                .publish_failing_seconds
        };
        assert_eq!(seconds(body(600.into())), Some(600));
        assert_eq!(seconds(body(0.into())), Some(0));
        assert_eq!(seconds(body(Value::Null)), None);
        let mut absent = full.clone();
        if let Some(a) = absent.pointer_mut("/agent").and_then(Value::as_object_mut) {
            a.remove("publish_failing_seconds");
        }
        assert_eq!(seconds(serde_json::to_vec(&absent).unwrap()), None);
        assert_eq!(
            reason(&body(true.into())),
            DeadLetterReason::WrongType("agent.publish_failing_seconds")
        );
        assert_eq!(
            reason(&body((-5).into())),
            DeadLetterReason::InvalidValue {
                field: "agent.publish_failing_seconds",
                why: "must not be negative"
            }
        );
    }

    #[test]
    fn null_optional_fields_read_as_unknown() {
        let full: Value = serde_json::from_slice(&fixture("valid_full.json")).unwrap();
        let ev = decode(&with(full.clone(), "/health/cpu", Value::Null)).unwrap();
        assert_eq!(ev.health.cpu, None);
        let ev = decode(&with(full, "/calls", Value::Null)).unwrap();
        assert_eq!(ev.calls, None);
    }

    #[test]
    fn negative_count_fixture_is_invalid_value() {
        assert_eq!(
            reason(&fixture("invalid_negative_count.json")),
            DeadLetterReason::InvalidValue {
                field: "calls.call_count",
                why: "must not be negative"
            }
        );
    }

    #[test]
    fn every_fixture_is_listed_in_the_readme() {
        let dir = format!("{}/fixtures", env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(format!("{dir}/README.md")).unwrap();
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".json") {
                count += 1;
                assert!(
                    readme.contains(&format!("`{name}`")),
                    "{name} missing from README"
                );
                let decoded = decode(&fixture(&name));
                assert_eq!(
                    decoded.is_ok(),
                    name.starts_with("valid_"),
                    "{name}: {decoded:?}"
                );
            }
        }
        assert_eq!(count, 9);
    }

    #[test]
    fn future_major_fixture_is_future_major_version() {
        let r = reason(&fixture("invalid_future_major.json"));
        assert_eq!(
            r,
            DeadLetterReason::FutureMajorVersion("tcpulse.status.v2".into())
        );
        assert_eq!(r.kind(), "future_major_version");
    }

    #[test]
    fn schema_names_are_classified() {
        let ok = |s: &str| parse_schema(s).map(|v| (v.major, v.minor));
        assert_eq!(ok("tcpulse.status.v1"), Ok((1, 0)));
        assert_eq!(ok("tcpulse.status.v1.0"), Ok((1, 0)));
        assert_eq!(ok("tcpulse.status.v1.12"), Ok((1, 12)));
        for future in [
            "tcpulse.status.v2",
            "tcpulse.status.v2.1",
            "tcpulse.status.v10",
        ] {
            assert_eq!(
                parse_schema(future).unwrap_err().kind(),
                "future_major_version"
            );
        }
        for unknown in [
            "",
            "tcpulse.status",
            "tcpulse.status.v",
            "tcpulse.status.v0",
            "tcpulse.status.v01",
            "tcpulse.status.v1.",
            "tcpulse.status.v1.x",
            "tcpulse.status.v1.1.1",
            "tcpulse.status.v-1",
            "TCPULSE.STATUS.V1",
            "other.status.v1",
        ] {
            assert_eq!(
                parse_schema(unknown).unwrap_err().kind(),
                "unknown_schema",
                "{unknown:?}"
            );
        }
        // Producer text kept in a reason is bounded.
        let long = format!("x{}", "y".repeat(10_000));
        match parse_schema(&long).unwrap_err() {
            DeadLetterReason::UnknownSchema(s) => assert_eq!(s.chars().count(), 64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_schema_in_body_is_dead_letter() {
        assert_eq!(
            reason(&with(minimal(), "/schema", "acme.status.v1".into())),
            DeadLetterReason::UnknownSchema("acme.status.v1".into())
        );
    }

    #[test]
    fn oversized_body_is_rejected_before_parsing() {
        let mut v = minimal();
        v["padding"] = "x".repeat(MAX_BODY_BYTES).into();
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(reason(&bytes), DeadLetterReason::Oversized(bytes.len()));
        // Exactly at the limit is still read (here: as JSON garbage, not as oversized).
        assert_eq!(reason(&vec![b' '; MAX_BODY_BYTES]).kind(), "invalid_json");
    }

    #[test]
    fn invalid_values_are_dead_letters() {
        let full: Value = serde_json::from_slice(&fixture("valid_full.json")).unwrap();
        let cases: Vec<(&str, Value, &str)> = vec![
            ("/seq", (-1).into(), "seq"),
            ("/calls/call_count", (-3).into(), "calls.call_count"),
            (
                "/calls/max_calls",
                5_000_000_000u64.into(),
                "calls.max_calls",
            ),
            ("/calls/call_count", 17.into(), "calls.call_count"),
            (
                "/calls/call_count",
                4_294_967_295u64.into(),
                "calls.call_count",
            ),
            ("/calls/max_calls", 0.into(), "calls.max_calls"),
            ("/calls/max_calls", 65.into(), "calls.max_calls"),
            ("/calls/planned_calls", 17.into(), "calls.planned_calls"),
            ("/calls/planned_calls", 65.into(), "calls.planned_calls"),
            ("/calls/media_load", 101.into(), "calls.media_load"),
            ("/calls/media_load", 1000.into(), "calls.media_load"),
            ("/health/cpu", 1.5.into(), "health.cpu"),
            ("/health/cpu", (-0.1).into(), "health.cpu"),
            (
                "/health/disk_free_bytes",
                (-1).into(),
                "health.disk_free_bytes",
            ),
            ("/connector", "".into(), "connector"),
            ("/instance", "".into(), "instance"),
            ("/deployment", "bl\nue".into(), "deployment"),
            ("/region", "r".repeat(257).into(), "region"),
            ("/boot", "not-a-uuid".into(), "boot"),
            ("/time", "yesterday".into(), "time"),
            ("/time", "1960-01-01T00:00:00Z".into(), "time"),
            ("/start_time", "2026-11-26".into(), "start_time"),
            ("/state", "Active".into(), "state"),
            ("/agent/version", "".into(), "agent.version"),
        ];
        for (pointer, value, field) in cases {
            match reason(&with(full.clone(), pointer, value)) {
                DeadLetterReason::InvalidValue { field: f, .. } => {
                    assert_eq!(f, field, "{pointer}")
                }
                other => panic!("{pointer}: {other:?}"),
            }
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let full: Value = serde_json::from_slice(&fixture("valid_full.json")).unwrap();
        for (pointer, value) in [
            ("/calls/media_load", Value::from(100)),
            ("/calls/media_load", 0.into()),
            ("/calls/call_count", 16.into()), // = max_calls
            ("/calls/max_calls", 64.into()),
            ("/calls/planned_calls", 0.into()), // no plan: utilization unknown
            ("/calls/planned_calls", 16.into()),
            ("/health/cpu", 1.0.into()),
            ("/health/cpu", 0.into()), // an integer is a valid number
            ("/health/cert_expiry_days", (-3.5).into()), // expired
            ("/region", "r".repeat(256).into()),
            ("/seq", u64::MAX.into()),
        ] {
            assert!(
                decode(&with(full.clone(), pointer, value.clone())).is_ok(),
                "{pointer}={value}"
            );
        }
    }

    /// r12 fault 4/5: the sample time against the enqueued time, fast and slow clocks of
    /// several sizes on both sides of each bound, 1970 and ten years ahead.
    #[test]
    fn r12_sample_time_is_bounded_by_the_enqueued_time() {
        let ev = decode(&fixture("valid_full.json")).unwrap();
        let t = ev.time.unix_millis();
        let bounds = TimeBounds::default();
        let day = 86_400_000i64;
        for (skew_ms, ok) in [
            (0, true),
            (-300, true),           // normal transport delay
            (50_000, true),         // 50 s fast: within 5 min
            (-50_000, true),        // 50 s slow
            (300_000, true),        // exactly the bound
            (300_001, false),       // just beyond
            (600_000, false),       // 10 min fast
            (3650 * day, false),    // ten years ahead
            (-3_600_000, true),     // an hour-old sample replayed from a spool
            (-30 * day, true),      // exactly the age bound
            (-30 * day - 1, false), // older than the store keeps
        ] {
            let got = check_sample_time(&ev, t - skew_ms, bounds);
            assert_eq!(got.is_ok(), ok, "{skew_ms}: {got:?}");
            if let Err(r) = got {
                assert_eq!(r.kind(), "clock_skew");
                assert_eq!(
                    r,
                    DeadLetterReason::ClockSkew {
                        skew_ms,
                        bound_ms: if skew_ms > 0 { 300_000 } else { 30 * day }
                    }
                );
            }
        }
        let ahead = check_sample_time(&ev, t - 600_000, bounds).unwrap_err();
        assert_eq!(
            ahead.to_string(),
            "clock skew: field `time` is 600 s ahead of the time Event Hubs enqueued the event \
             (bound 300 s); the instance's clock runs fast"
        );
        // A sample from 1970 enqueued now: refused, with the distance in the message.
        let mut old = ev.clone();
        old.time = Timestamp::EPOCH;
        let r = check_sample_time(&old, t, bounds).unwrap_err();
        assert!(
            r.to_string()
                .contains("s behind the time Event Hubs enqueued"),
            "{r}"
        );
    }

    #[test]
    fn control_characters_are_found_as_char_is_control_finds_them() {
        let mut samples: Vec<String> = (0u32..0x2100)
            .filter_map(char::from_u32)
            .flat_map(|c| [format!("a{c}b"), format!("{c}")])
            .collect();
        samples.extend(["", "tc-eu", "\u{e9}t\u{e9}", "\u{85}x"].map(String::from));
        for s in samples {
            assert_eq!(has_control(&s), s.chars().any(char::is_control), "{s:?}");
        }
    }

    #[test]
    fn every_kind_is_listed() {
        let reasons = [
            DeadLetterReason::Oversized(1),
            DeadLetterReason::InvalidJson(String::new()),
            DeadLetterReason::FutureMajorVersion(String::new()),
            DeadLetterReason::UnknownSchema(String::new()),
            DeadLetterReason::MissingField("x"),
            DeadLetterReason::WrongType("x"),
            DeadLetterReason::InvalidValue {
                field: "x",
                why: "y",
            },
            DeadLetterReason::ClockSkew {
                skew_ms: 1,
                bound_ms: 0,
            },
        ];
        let kinds: Vec<&str> = reasons.iter().map(DeadLetterReason::kind).collect();
        assert_eq!(kinds, DeadLetterReason::KINDS);
    }

    #[test]
    fn encode_then_decode_round_trips() {
        for name in [
            "valid_full.json",
            "valid_minimal.json",
            "valid_minor_version.json",
        ] {
            let ev = decode(&fixture(name)).unwrap();
            let bytes = encode(&ev);
            assert_eq!(decode(&bytes).unwrap(), ev, "{name}");
            assert_eq!(
                encode(&decode(&bytes).unwrap()),
                bytes,
                "{name}: stable bytes"
            );
        }
    }

    #[test]
    fn encode_writes_design_field_names_and_omits_unknowns() {
        let ev = decode(&fixture("valid_full.json")).unwrap();
        let v: Value = serde_json::from_slice(&encode(&ev)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec![
            "agent",
            "boot",
            "calls",
            "connector",
            "deployment",
            "health",
            "instance",
            "region",
            "scaleset",
            "schema",
            "seq",
            "start_time",
            "state",
            "time",
        ];
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(v["time"], "2026-11-26T10:00:00.123Z");
        assert_eq!(v["calls"]["media_load"], 71);

        let min = decode(&fixture("valid_minimal.json")).unwrap();
        let v: Value = serde_json::from_slice(&encode(&min)).unwrap();
        for absent in ["calls", "health", "agent", "start_time"] {
            assert!(
                v.get(absent).is_none(),
                "{absent} must be omitted, not zeroed"
            );
        }
        let mut partial = min.clone();
        partial.health.cpu = Some(0.5);
        let v: Value = serde_json::from_slice(&encode(&partial)).unwrap();
        assert_eq!(v["health"], serde_json::json!({ "cpu": 0.5 }));
    }

    #[test]
    fn non_finite_float_encodes_as_unknown() {
        let mut ev = decode(&fixture("valid_full.json")).unwrap();
        ev.health.cert_expiry_days = Some(f64::NAN);
        assert!(
            ev.validate().is_err(),
            "validate catches it before encoding"
        );
        let back = decode(&encode(&ev)).unwrap();
        assert_eq!(back.health.cert_expiry_days, None);
    }
}
