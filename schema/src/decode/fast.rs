//! The typed reading of [`decode`](super::decode): the body straight into wire structs,
//! with no `serde_json::Value` tree in between.
//!
//! It only has to be right for the bodies it takes. [`decode_typed`] returns `None` for any
//! body that does not fit the wire structs exactly, and [`decode`](super::decode) then reads
//! that body through [`decode_via_value`](super::decode_via_value), which names every
//! structural dead-letter reason. For a body that fits, every field is present, non-null
//! and of the right JSON type, so the only failures left are value rules; they run here in
//! the order `read_event` meets them (schema, boot, time, start_time, state, then
//! [`StatusEvent::validate`]) and through the same functions, so a body that fits gets the
//! same `Ok` or dead letter from both readings.
//!
//! What "fits" means, and why the visitors are written out rather than derived:
//!
//! - every object is read with `deserialize_map`, so a JSON array is never taken for a
//!   struct (derived structs accept `[…]` in field order; the `Value` reading says
//!   `wrong_type`);
//! - a known field twice is an error here (the `Value` reading keeps the last one; the
//!   fallback gives exactly that);
//! - unknown fields are read with [`Skip`], which parses them through `deserialize_any`,
//!   exactly as `Value` does. Derived structs skip them with `IgnoredAny`, which serde_json
//!   reads with a laxer scanner: it checks neither UTF-8 nor lone surrogates in strings,
//!   nor number range (`1e400`), nor the nesting limit, so a body the `Value` reading calls
//!   `invalid_json` would decode;
//! - integers go into `u64`/`u32`/`u8`, which refuse a negative, fractional (`1.0`),
//!   exponent or too-large number; floats go into `f64`, which takes any JSON number as
//!   `Value::as_f64` does;
//! - `null` reads as absent for optional fields (`Option`) and fails a required field.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use uuid::Uuid;

use super::{boot_of, excerpt, parse_schema, state_of, timestamp_of, DeadLetter, Res};
use crate::event::{AgentInfo, Calls, Health, State, StatusEvent, Timestamp};

/// Reads `bytes` through the typed wire structs. `None` when the body does not fit them
/// (the caller then uses the `Value` reading); otherwise the result both readings give.
/// Does not check the body size: the caller does that first.
pub(super) fn decode_typed(bytes: &[u8]) -> Option<Result<StatusEvent, DeadLetter>> {
    let wire: WireEvent<'_> = serde_json::from_slice(bytes).ok()?;
    Some(wire.into_event())
}

/// The top-level object, strings borrowed from the body where they have no escapes.
struct WireEvent<'a> {
    schema: Text<'a>,
    connector: Text<'a>,
    deployment: Text<'a>,
    region: Text<'a>,
    scaleset: Text<'a>,
    instance: Text<'a>,
    boot: Text<'a>,
    seq: u64,
    time: Text<'a>,
    start_time: Option<Text<'a>>,
    state: Text<'a>,
    calls: Option<Calls>,
    health: Option<Health>,
    agent: Option<AgentInfo>,
}

impl WireEvent<'_> {
    fn into_event(self) -> Result<StatusEvent, DeadLetter> {
        let (boot, time, start_time, state) = match self.check_values() {
            Ok(values) => values,
            Err(reason) => {
                return Err(DeadLetter {
                    reason,
                    instance: Some(excerpt(&self.instance.0)),
                })
            }
        };
        let event = StatusEvent {
            schema: self.schema.0.into_owned(),
            connector: self.connector.0.into_owned(),
            deployment: self.deployment.0.into_owned(),
            region: self.region.0.into_owned(),
            scaleset: self.scaleset.0.into_owned(),
            instance: self.instance.0.into_owned(),
            boot,
            seq: self.seq,
            time,
            start_time,
            state,
            calls: self.calls,
            health: self.health.unwrap_or_default(),
            agent: self.agent,
        };
        match event.validate() {
            Ok(()) => Ok(event),
            Err(reason) => Err(DeadLetter {
                reason,
                instance: Some(excerpt(&event.instance)),
            }),
        }
    }

    /// The value rules `read_event` applies while it walks the fields, in its order.
    fn check_values(&self) -> Res<(Uuid, Timestamp, Option<Timestamp>, State)> {
        let version = parse_schema(&self.schema.0)?;
        let boot = boot_of(&self.boot.0)?;
        let time = timestamp_of(&self.time.0, "time")?;
        let start_time = self
            .start_time
            .as_ref()
            .map(|t| timestamp_of(&t.0, "start_time"))
            .transpose()?;
        let state = state_of(&self.state.0, version)?;
        Ok((boot, time, start_time, state))
    }
}

/// A JSON string (only a string), borrowed from the body when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// Any JSON value, parsed as fully as `Value` parses it and then dropped: the reading of
/// an unknown field. Everything serde_json's `deserialize_any` can produce for JSON is
/// accepted; anything else is an error (and so a fallback, never a wrong `Ok`).
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SkipVisitor;
        impl<'de> Visitor<'de> for SkipVisitor {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        deserializer.deserialize_any(SkipVisitor)
    }
}

/// Stores the next value in `slot`; a second occurrence of the key is an error.
fn put<'de, A, T>(map: &mut A, slot: &mut Option<T>, name: &'static str) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// A required field's value, or the error that sends the body to the fallback.
fn need<T, E: de::Error>(slot: Option<T>, name: &'static str) -> Result<T, E> {
    slot.ok_or_else(|| de::Error::missing_field(name))
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum EventField {
    Schema,
    Connector,
    Deployment,
    Region,
    Scaleset,
    Instance,
    Boot,
    Seq,
    Time,
    StartTime,
    State,
    Calls,
    Health,
    Agent,
    #[serde(other)]
    Unknown,
}

impl<'de> Deserialize<'de> for WireEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = WireEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut schema, mut connector, mut deployment) = (None, None, None);
                let (mut region, mut scaleset, mut instance) = (None, None, None);
                let (mut boot, mut seq, mut time, mut start_time) = (None, None, None, None);
                let (mut state, mut calls, mut health, mut agent) = (None, None, None, None);
                while let Some(field) = map.next_key::<EventField>()? {
                    let m = &mut map;
                    match field {
                        EventField::Schema => put(m, &mut schema, "schema")?,
                        EventField::Connector => put(m, &mut connector, "connector")?,
                        EventField::Deployment => put(m, &mut deployment, "deployment")?,
                        EventField::Region => put(m, &mut region, "region")?,
                        EventField::Scaleset => put(m, &mut scaleset, "scaleset")?,
                        EventField::Instance => put(m, &mut instance, "instance")?,
                        EventField::Boot => put(m, &mut boot, "boot")?,
                        EventField::Seq => put(m, &mut seq, "seq")?,
                        EventField::Time => put(m, &mut time, "time")?,
                        EventField::StartTime => put(m, &mut start_time, "start_time")?,
                        EventField::State => put(m, &mut state, "state")?,
                        EventField::Calls => put(m, &mut calls, "calls")?,
                        EventField::Health => put(m, &mut health, "health")?,
                        EventField::Agent => put(m, &mut agent, "agent")?,
                        EventField::Unknown => {
                            m.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(WireEvent {
                    schema: need(schema, "schema")?,
                    connector: need(connector, "connector")?,
                    deployment: need(deployment, "deployment")?,
                    region: need(region, "region")?,
                    scaleset: need(scaleset, "scaleset")?,
                    instance: need(instance, "instance")?,
                    boot: need(boot, "boot")?,
                    seq: need(seq, "seq")?,
                    time: need(time, "time")?,
                    start_time: start_time.flatten(),
                    state: need(state, "state")?,
                    calls: calls.flatten().map(|c: WireCalls| c.0),
                    health: health.flatten().map(|h: WireHealth| h.0),
                    agent: agent.flatten().map(|a: WireAgent| a.0),
                })
            }
        }
        deserializer.deserialize_map(EventVisitor)
    }
}

/// `calls`, read as an object only.
struct WireCalls(Calls);

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum CallsField {
    CallCount,
    MaxCalls,
    PlannedCalls,
    MediaLoad,
    #[serde(other)]
    Unknown,
}

impl<'de> Deserialize<'de> for WireCalls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CallsVisitor;
        impl<'de> Visitor<'de> for CallsVisitor {
            type Value = WireCalls;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a calls object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut call_count, mut max_calls) = (None, None);
                let (mut planned_calls, mut media_load) = (None, None);
                while let Some(field) = map.next_key::<CallsField>()? {
                    let m = &mut map;
                    match field {
                        CallsField::CallCount => put(m, &mut call_count, "call_count")?,
                        CallsField::MaxCalls => put(m, &mut max_calls, "max_calls")?,
                        CallsField::PlannedCalls => put(m, &mut planned_calls, "planned_calls")?,
                        CallsField::MediaLoad => put(m, &mut media_load, "media_load")?,
                        CallsField::Unknown => {
                            m.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(WireCalls(Calls {
                    call_count: need(call_count, "call_count")?,
                    max_calls: need(max_calls, "max_calls")?,
                    planned_calls: planned_calls.flatten(),
                    // A u8: 256 and above do not fit, and the fallback names them.
                    media_load: media_load.flatten(),
                }))
            }
        }
        deserializer.deserialize_map(CallsVisitor)
    }
}

/// `health`, read as an object only.
struct WireHealth(Health);

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum HealthField {
    Cpu,
    MemUsedBytes,
    MemTotalBytes,
    DiskFreeBytes,
    ServiceUp,
    CertExpiryDays,
    #[serde(other)]
    Unknown,
}

impl<'de> Deserialize<'de> for WireHealth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HealthVisitor;
        impl<'de> Visitor<'de> for HealthVisitor {
            type Value = WireHealth;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a health object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut cpu, mut mem_used, mut mem_total) = (None, None, None);
                let (mut disk_free, mut service_up, mut cert_days) = (None, None, None);
                while let Some(field) = map.next_key::<HealthField>()? {
                    let m = &mut map;
                    match field {
                        HealthField::Cpu => put(m, &mut cpu, "cpu")?,
                        HealthField::MemUsedBytes => put(m, &mut mem_used, "mem_used_bytes")?,
                        HealthField::MemTotalBytes => put(m, &mut mem_total, "mem_total_bytes")?,
                        HealthField::DiskFreeBytes => put(m, &mut disk_free, "disk_free_bytes")?,
                        HealthField::ServiceUp => put(m, &mut service_up, "service_up")?,
                        HealthField::CertExpiryDays => put(m, &mut cert_days, "cert_expiry_days")?,
                        HealthField::Unknown => {
                            m.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(WireHealth(Health {
                    cpu: cpu.flatten(),
                    mem_used_bytes: mem_used.flatten(),
                    mem_total_bytes: mem_total.flatten(),
                    disk_free_bytes: disk_free.flatten(),
                    service_up: service_up.flatten(),
                    cert_expiry_days: cert_days.flatten(),
                }))
            }
        }
        deserializer.deserialize_map(HealthVisitor)
    }
}

/// `agent`, read as an object only.
struct WireAgent(AgentInfo);

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum AgentField {
    Version,
    Spooled,
    Dropped,
    PublishFailingSeconds,
    #[serde(other)]
    Unknown,
}

impl<'de> Deserialize<'de> for WireAgent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AgentVisitor;
        impl<'de> Visitor<'de> for AgentVisitor {
            type Value = WireAgent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an agent object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut version, mut spooled, mut dropped) = (None, None, None);
                let mut failing = None;
                while let Some(field) = map.next_key::<AgentField>()? {
                    let m = &mut map;
                    match field {
                        AgentField::Version => put::<_, Text<'de>>(m, &mut version, "version")?,
                        AgentField::Spooled => put(m, &mut spooled, "spooled")?,
                        AgentField::Dropped => put(m, &mut dropped, "dropped")?,
                        AgentField::PublishFailingSeconds => {
                            put(m, &mut failing, "publish_failing_seconds")?;
                        }
                        AgentField::Unknown => {
                            m.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(WireAgent(AgentInfo {
                    version: need(version, "version")?.0.into_owned(),
                    spooled: need(spooled, "spooled")?,
                    dropped: need(dropped, "dropped")?,
                    publish_failing_seconds: failing.flatten(),
                }))
            }
        }
        deserializer.deserialize_map(AgentVisitor)
    }
}

#[cfg(test)]
mod tests {
    //! The typed reading against the `Value` reading: same result for every body, and the
    //! typed reading really taking the valid ones.

    use serde_json::Value;

    use super::decode_typed;
    use crate::decode::{decode, decode_via_value, encode, DeadLetterReason, MAX_BODY_BYTES};
    use crate::event::{AgentInfo, Calls, Health, State, StatusEvent, Timestamp};

    /// A JSON document kept as text, so tests can write what `Value` cannot hold: duplicate
    /// keys, key order, `1.0`, integers past `u64`, escapes as written.
    #[derive(Clone, Debug)]
    enum J {
        Raw(String),
        Obj(Vec<(String, J)>),
    }

    impl J {
        fn from_value(v: &Value) -> J {
            match v {
                Value::Object(m) => J::Obj(
                    m.iter()
                        .map(|(k, v)| (k.clone(), J::from_value(v)))
                        .collect(),
                ),
                other => J::Raw(other.to_string()),
            }
        }

        fn render(&self) -> Vec<u8> {
            let mut s = String::new();
            self.write(&mut s);
            // Invalid UTF-8 cannot sit in a String: a marker stands for it.
            let bytes = s.into_bytes();
            let marker = BAD_UTF8.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i..].starts_with(marker) {
                    out.extend_from_slice(&[0xff, 0xfe]);
                    i += marker.len();
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            out
        }

        fn write(&self, out: &mut String) {
            match self {
                J::Raw(r) => out.push_str(r),
                J::Obj(fields) => {
                    out.push('{');
                    for (i, (k, v)) in fields.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push('"');
                        out.push_str(k); // keys are written as given, escapes included
                        out.push_str("\":");
                        v.write(out);
                    }
                    out.push('}');
                }
            }
        }

        fn fields_mut(&mut self) -> &mut Vec<(String, J)> {
            match self {
                J::Obj(f) => f,
                J::Raw(r) => panic!("not an object: {r}"),
            }
        }

        /// The object at `parent` (top level when empty), created empty if absent or not
        /// an object.
        fn obj_at(&mut self, parent: Option<&str>) -> &mut Vec<(String, J)> {
            let top = self.fields_mut();
            let Some(p) = parent else { return top };
            let idx = match top.iter().position(|(k, _)| k == p) {
                Some(i) => i,
                None => {
                    top.push((p.to_owned(), J::Obj(vec![])));
                    top.len() - 1
                }
            };
            if !matches!(top[idx].1, J::Obj(_)) {
                top[idx].1 = J::Obj(vec![]);
            }
            top[idx].1.fields_mut()
        }

        /// Sets `key` (replacing every occurrence) or appends it.
        fn set(mut self, parent: Option<&str>, key: &str, value: J) -> J {
            let obj = self.obj_at(parent);
            obj.retain(|(k, _)| k != key);
            obj.push((key.to_owned(), value));
            self
        }

        fn remove(mut self, parent: Option<&str>, key: &str) -> J {
            self.obj_at(parent).retain(|(k, _)| k != key);
            self
        }

        /// Appends `key` again, keeping what is there.
        fn push(mut self, parent: Option<&str>, key: &str, value: J) -> J {
            self.obj_at(parent).push((key.to_owned(), value));
            self
        }

        fn get(&self, parent: Option<&str>, key: &str) -> Option<&J> {
            let J::Obj(top) = self else { return None };
            let obj = match parent {
                None => top,
                Some(p) => match top.iter().find(|(k, _)| k == p) {
                    Some((_, J::Obj(o))) => o,
                    _ => return None,
                },
            };
            obj.iter().find(|(k, _)| k == key).map(|(_, v)| v)
        }
    }

    const BAD_UTF8: &str = "@@BAD-UTF8@@";

    fn raw(s: &str) -> J {
        J::Raw(s.to_owned())
    }

    /// Every field either reading knows, as (parent object, key).
    const KNOWN: [(Option<&str>, &str); 28] = [
        (None, "schema"),
        (None, "connector"),
        (None, "deployment"),
        (None, "region"),
        (None, "scaleset"),
        (None, "instance"),
        (None, "boot"),
        (None, "seq"),
        (None, "time"),
        (None, "start_time"),
        (None, "state"),
        (None, "calls"),
        (None, "health"),
        (None, "agent"),
        (Some("calls"), "call_count"),
        (Some("calls"), "max_calls"),
        (Some("calls"), "planned_calls"),
        (Some("calls"), "media_load"),
        (Some("health"), "cpu"),
        (Some("health"), "mem_used_bytes"),
        (Some("health"), "mem_total_bytes"),
        (Some("health"), "disk_free_bytes"),
        (Some("health"), "service_up"),
        (Some("health"), "cert_expiry_days"),
        (Some("agent"), "version"),
        (Some("agent"), "spooled"),
        (Some("agent"), "dropped"),
        (Some("agent"), "publish_failing_seconds"),
    ];

    /// Values every field is set to: right and wrong types, integer edge cases, strings
    /// with escapes, and the strings other fields need.
    const VALUES: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "1",
        "-1",
        "-0",
        "0.0",
        "1.0",
        "1.5",
        "-1.5",
        "0.41",
        "1e2",
        "1E-2",
        "1e308",
        "-1e308",
        "100",
        "101",
        "255",
        "256",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "0.1000000000000000055511151231257827",
        "[]",
        "[1,2]",
        "{}",
        r#"{"a":1}"#,
        r#""""#,
        r#""x""#,
        r#""12""#,
        r#""0.5""#,
        r#""true""#,
        r#""tc\u002deu\/x""#,
        r#""\u00e9t\u00e9 \ud83d\ude00""#,
        r#""bl\nue""#,
        r#""\u0007""#,
        r#""\u007f""#,
        r#""\u0085""#,
        r#""active""#,
        r#""act\u0069ve""#,
        r#""Active""#,
        r#""unknown""#,
        r#""waiting_for_termination""#,
        r#""hibernating""#,
        r#""tcpulse.status.v1""#,
        r#""tcpulse.status.v1.1""#,
        r#""tcpulse.status.v1.0""#,
        r#""tcpulse.status.v2""#,
        r#""tcpulse.status.v2.1""#,
        r#""tcpulse.status.v0""#,
        r#""acme.status.v1""#,
        r#""6f1c2a4e-8b1d-4c3e-9f70-2d5b8a9e0c11""#,
        r#""6F1C2A4E8B1D4C3E9F702D5B8A9E0C11""#,
        r#""{6f1c2a4e-8b1d-4c3e-9f70-2d5b8a9e0c11}""#,
        r#""not-a-uuid""#,
        r#""2026-11-26T10:00:00.123Z""#,
        r#""2026-11-26T11:00:00.123987+01:00""#,
        r#""2026-11-26T10:00:00""#,
        r#""1969-12-31T23:59:59.999Z""#,
        r#""2300-01-01T00:00:00Z""#,
        r#""2026-11-26""#,
    ];

    /// Values put under unknown keys (all valid JSON).
    const UNKNOWN_VALUES: &[&str] = &[
        "null",
        "true",
        "-1",
        "1.5",
        "1e308",
        "18446744073709551616",
        r#""x""#,
        r#""\u00e9\ud83d\ude00\n""#,
        "[]",
        "{}",
        r#"[1,"a",null,{"b":[true,{"c":-0.5}]}]"#,
        r#"{"schema":"tcpulse.status.v2","seq":-1,"calls":[],"state":null}"#,
        r#"{"a":{"b":{"c":{"d":{"e":{"f":[[[[[]]]]]}}}}}}"#,
    ];

    /// Unknown values the `Value` reading refuses, and serde_json's `IgnoredAny` would
    /// not: lone surrogates, bad escapes, invalid UTF-8, numbers out of range, nesting
    /// deeper than the limit.
    fn refused_unknown_values() -> Vec<String> {
        vec![
            r#""\ud800""#.to_owned(),
            r#""\udc00x""#.to_owned(),
            r#""\x""#.to_owned(),
            format!("\"{BAD_UTF8}\""),
            format!(r#"{{"k{BAD_UTF8}":1}}"#),
            "1e400".to_owned(),
            "-1e400".to_owned(),
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
            format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200)),
            "[1,]".to_owned(),
            "01".to_owned(),
            "tru".to_owned(),
            "\"a\u{1}b\"".to_owned(), // raw control character inside a string
        ]
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    fn fixture_names() -> Vec<String> {
        let dir = format!("{}/fixtures", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        names
    }

    /// A realistic agent event (as the collector_e2e bench builds them), encoded.
    fn realistic() -> StatusEvent {
        StatusEvent {
            schema: crate::SCHEMA_V1.to_owned(),
            connector: "tc-eu.example.com".into(),
            deployment: "blue".into(),
            region: "westeurope".into(),
            scaleset: "tc-eu-vmss".into(),
            instance: "tc-eu-vmss_3".into(),
            boot: uuid::Uuid::from_u128(0x6f1c_2a4e_8b1d_4c3e_9f70_2d5b_8a9e_0c11),
            seq: 1042,
            time: Timestamp::from_unix_millis(1_795_687_200_123).unwrap(),
            start_time: Timestamp::from_unix_millis(1_795_678_872_000),
            state: State::Active,
            calls: Some(Calls {
                call_count: 12,
                max_calls: 16,
                planned_calls: Some(15),
                media_load: Some(75),
            }),
            health: Health {
                cpu: Some(0.71),
                mem_used_bytes: Some(7_800_000_000),
                mem_total_bytes: Some(16_000_000_000),
                disk_free_bytes: Some(39_871_000_000),
                service_up: Some(true),
                cert_expiry_days: Some(89.987_5),
            },
            agent: Some(AgentInfo {
                version: "0.1.0".into(),
                spooled: 0,
                dropped: 0,
                publish_failing_seconds: Some(0),
            }),
        }
    }

    /// The bodies every mutation starts from.
    fn bases() -> Vec<(String, J)> {
        let mut out: Vec<(String, J)> = [
            "valid_full.json",
            "valid_minimal.json",
            "valid_unknown_fields.json",
            "valid_minor_version.json",
        ]
        .iter()
        .map(|n| {
            let v: Value = serde_json::from_slice(&fixture(n)).unwrap();
            (n.to_string(), J::from_value(&v))
        })
        .collect();
        let v: Value = serde_json::from_slice(&encode(&realistic())).unwrap();
        out.push(("encoded".into(), J::from_value(&v)));
        out
    }

    /// What the comparison saw.
    #[derive(Debug, Default)]
    struct Tally {
        cases: usize,
        typed_ok: usize,
        typed_dead: usize,
        fell_back: usize,
    }

    /// Decodes `body` both ways and asserts the same result. `dup` says the body repeats a
    /// known key: the only valid bodies the typed reading may leave to the fallback.
    fn compare(name: &str, body: &[u8], dup: bool, t: &mut Tally) {
        let slow = decode_via_value(body);
        let show = || {
            String::from_utf8_lossy(body)
                .chars()
                .take(400)
                .collect::<String>()
        };
        assert_eq!(
            decode(body),
            slow,
            "{name}: decode != Value reading\n{}",
            show()
        );
        t.cases += 1;
        let typed = if body.len() <= MAX_BODY_BYTES {
            decode_typed(body)
        } else {
            None
        };
        match typed {
            Some(r) => {
                assert_eq!(r, slow, "{name}: typed != Value reading\n{}", show());
                if r.is_ok() {
                    t.typed_ok += 1;
                } else {
                    t.typed_dead += 1;
                }
            }
            None => {
                t.fell_back += 1;
                assert!(
                    slow.is_err() || dup,
                    "{name}: a valid body fell back to the Value reading\n{}",
                    show()
                );
            }
        }
    }

    #[test]
    fn typed_reading_takes_every_valid_fixture() {
        for name in fixture_names() {
            let body = fixture(&name);
            let typed = decode_typed(&body);
            if name.starts_with("valid_") {
                let ev = typed.unwrap_or_else(|| panic!("{name} fell back"));
                assert_eq!(ev, decode_via_value(&body), "{name}");
                assert!(ev.is_ok(), "{name}");
            }
            let mut t = Tally::default();
            compare(&name, &body, false, &mut t);
        }
        let ev = realistic();
        assert_eq!(decode_typed(&encode(&ev)), Some(Ok(ev)));
    }

    #[test]
    fn typed_reading_refuses_what_the_value_reading_refuses_in_unknown_fields() {
        for (base_name, base) in bases() {
            for parent in [None, Some("calls"), Some("health"), Some("agent")] {
                if parent.is_some_and(|p| base.get(None, p).is_none()) {
                    continue;
                }
                for v in refused_unknown_values() {
                    let body = base
                        .clone()
                        .set(parent, "x_unknown", J::Raw(v.clone()))
                        .render();
                    assert_eq!(decode_typed(&body), None, "{base_name} {parent:?} {v}");
                    let dead = decode(&body).unwrap_err();
                    assert_eq!(dead.reason.kind(), "invalid_json", "{base_name} {v}");
                    assert_eq!(dead.instance, None);
                }
            }
        }
    }

    #[test]
    fn typed_reading_never_takes_an_array_for_an_object() {
        let full: Value = serde_json::from_slice(&fixture("valid_full.json")).unwrap();
        let Value::Object(top) = &full else { panic!() };
        // The root as an array of its values in field order (serde's derived structs would
        // read that as the struct).
        let order = [
            "schema",
            "connector",
            "deployment",
            "region",
            "scaleset",
            "instance",
            "boot",
            "seq",
            "time",
            "start_time",
            "state",
        ];
        let arr = Value::Array(order.iter().map(|k| top[*k].clone()).collect());
        let body = serde_json::to_vec(&arr).unwrap();
        assert_eq!(decode_typed(&body), None);
        assert_eq!(
            decode(&body).unwrap_err().reason,
            DeadLetterReason::WrongType("(root)")
        );
        for (key, arr) in [
            ("calls", "[12,16,15,71]"),
            ("health", "[0.4,1,2,3,true,4.5]"),
            ("agent", r#"["0.1.0",0,0]"#),
        ] {
            let body = J::from_value(&full).set(None, key, raw(arr)).render();
            assert_eq!(decode_typed(&body), None, "{key}");
            assert_eq!(
                decode(&body).unwrap_err().reason,
                DeadLetterReason::WrongType(key)
            );
        }
    }

    #[test]
    fn nesting_limit_is_the_same_on_both_readings() {
        let base = J::from_value(&serde_json::from_slice(&fixture("valid_full.json")).unwrap());
        let mut t = Tally::default();
        let (mut ok, mut dead) = (0, 0);
        for parent in [None, Some("calls"), Some("health")] {
            for depth in 120..=130 {
                for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
                    let v = format!("{}0{}", open.repeat(depth), close.repeat(depth));
                    let v = v.replace("[0]", "[]").replace("[0", "[");
                    let body = base.clone().set(parent, "deep", J::Raw(v)).render();
                    compare(
                        &format!("deep {parent:?} {depth} {open}"),
                        &body,
                        false,
                        &mut t,
                    );
                    if decode(&body).is_ok() {
                        ok += 1;
                    } else {
                        dead += 1;
                    }
                }
            }
        }
        assert!(
            ok > 0 && dead > 0,
            "the limit was not crossed: {ok} ok, {dead} dead"
        );
    }

    #[test]
    fn typed_and_value_readings_agree_on_field_mutations() {
        let mut t = Tally::default();
        for (base_name, base) in bases() {
            compare(&base_name, &base.render(), false, &mut t);
            for (parent, key) in KNOWN {
                let at = format!(
                    "{base_name} {}{key}",
                    parent.map(|p| format!("{p}.")).unwrap_or_default()
                );
                // Removed, then set to every value.
                compare(
                    &format!("{at} removed"),
                    &base.clone().remove(parent, key).render(),
                    false,
                    &mut t,
                );
                for v in VALUES {
                    let body = base.clone().set(parent, key, raw(v)).render();
                    compare(&format!("{at} = {v}"), &body, false, &mut t);
                }
                // Duplicated: the same value again, or another one after it.
                if let Some(existing) = base.get(parent, key).cloned() {
                    let body = base.clone().push(parent, key, existing.clone()).render();
                    compare(&format!("{at} twice"), &body, true, &mut t);
                    for v in ["null", "0", r#""x""#, "{}"] {
                        let body = base.clone().push(parent, key, raw(v)).render();
                        compare(&format!("{at} then {v}"), &body, true, &mut t);
                        let body = base
                            .clone()
                            .remove(parent, key)
                            .push(parent, key, raw(v))
                            .push(parent, key, existing.clone())
                            .render();
                        compare(&format!("{at} {v} first"), &body, true, &mut t);
                    }
                    // The key spelled with an escape: the same key, alone or repeated.
                    let escaped = format!(
                        "{}\\u{:04x}",
                        &key[..key.len() - 1],
                        key.as_bytes()[key.len() - 1]
                    );
                    let body = base
                        .clone()
                        .remove(parent, key)
                        .push(parent, &escaped, existing.clone())
                        .render();
                    compare(&format!("{at} escaped key"), &body, false, &mut t);
                    let body = base.clone().push(parent, &escaped, raw("null")).render();
                    compare(&format!("{at} escaped key twice"), &body, true, &mut t);
                }
            }
            // Unknown fields at every level, valid and not.
            for parent in [None, Some("calls"), Some("health"), Some("agent")] {
                for v in UNKNOWN_VALUES {
                    let body = base.clone().set(parent, "x_unknown", raw(v)).render();
                    compare(
                        &format!("{base_name} {parent:?} unknown {v}"),
                        &body,
                        false,
                        &mut t,
                    );
                    let body = base
                        .clone()
                        .push(parent, "x_unknown", raw(v))
                        .push(parent, "x_unknown", raw("1"))
                        .render();
                    compare(
                        &format!("{base_name} {parent:?} unknown twice {v}"),
                        &body,
                        false,
                        &mut t,
                    );
                }
                for v in refused_unknown_values() {
                    let body = base
                        .clone()
                        .set(parent, "x_unknown", J::Raw(v.clone()))
                        .render();
                    compare(
                        &format!("{base_name} {parent:?} refused {v}"),
                        &body,
                        false,
                        &mut t,
                    );
                }
            }
            // Fields in reverse order, and with whitespace everywhere.
            let mut rev = base.clone();
            rev.fields_mut().reverse();
            compare(
                &format!("{base_name} reversed"),
                &rev.render(),
                false,
                &mut t,
            );
            let spaced = String::from_utf8(base.render()).unwrap();
            let spaced = format!(
                " \n\t{} \r\n",
                spaced.replace(",\"", " ,\n \"").replace("\":", "\" :\t")
            );
            compare(
                &format!("{base_name} spaced"),
                spaced.as_bytes(),
                false,
                &mut t,
            );
        }
        eprintln!("{t:?}");
        assert!(t.typed_ok > 1000, "{t:?}");
        assert!(t.typed_dead > 500, "{t:?}");
        assert!(t.fell_back > 1000, "{t:?}");
    }

    #[test]
    fn typed_and_value_readings_agree_on_which_value_error_comes_first() {
        // Pairs of edits, each alone valid in structure: the reported dead letter (and its
        // instance excerpt) shows that both readings check values in the same order.
        let long_instance = format!("\"{}\"", "\\u00e9".repeat(100));
        let edits: Vec<(Option<&str>, &str, String)> = vec![
            (None, "schema", r#""tcpulse.status.v2""#.into()),
            (None, "schema", r#""acme.status.v1""#.into()),
            (None, "connector", r#""""#.into()),
            (None, "deployment", r#""bl\nue""#.into()),
            (None, "region", format!("\"{}\"", "r".repeat(257))),
            (None, "scaleset", r#""""#.into()),
            (None, "instance", r#""""#.into()),
            (None, "instance", long_instance.clone()),
            (None, "instance", format!("\"{}\"", "i".repeat(300))),
            (None, "boot", r#""not-a-uuid""#.into()),
            (None, "seq", "-1".into()),
            (None, "time", r#""yesterday""#.into()),
            (None, "time", r#""1960-01-01T00:00:00Z""#.into()),
            (None, "start_time", r#""2026-11-26""#.into()),
            (None, "state", r#""hibernating""#.into()),
            (Some("calls"), "call_count", "-3".into()),
            (Some("calls"), "max_calls", "5000000000".into()),
            (Some("calls"), "media_load", "101".into()),
            (Some("calls"), "media_load", "300".into()),
            (Some("health"), "cpu", "1.5".into()),
            (Some("health"), "disk_free_bytes", "-1".into()),
            (Some("agent"), "version", r#""""#.into()),
            (Some("agent"), "spooled", "-2".into()),
            (Some("agent"), "publish_failing_seconds", r#""60""#.into()),
            (Some("agent"), "publish_failing_seconds", "1.5".into()),
        ];
        let mut t = Tally::default();
        for (base_name, base) in bases() {
            for (i, (p1, k1, v1)) in edits.iter().enumerate() {
                let one = base.clone().set(*p1, k1, raw(v1));
                compare(
                    &format!("{base_name} {k1}={v1}"),
                    &one.render(),
                    false,
                    &mut t,
                );
                for (p2, k2, v2) in &edits[i + 1..] {
                    if (p1, k1) == (p2, k2) {
                        continue;
                    }
                    let both = one.clone().set(*p2, k2, raw(v2)).render();
                    compare(
                        &format!("{base_name} {k1}={v1} {k2}={v2}"),
                        &both,
                        false,
                        &mut t,
                    );
                }
            }
        }
        let with_long = bases()[0]
            .1
            .clone()
            .set(None, "instance", raw(&long_instance))
            .set(None, "boot", raw(r#""not-a-uuid""#))
            .render();
        let dead = decode_typed(&with_long).unwrap().unwrap_err();
        assert_eq!(dead.instance, Some("\u{e9}".repeat(64)));
        eprintln!("{t:?}");
        assert!(t.typed_dead > 500 && t.fell_back > 500, "{t:?}");
    }

    #[test]
    fn typed_and_value_readings_agree_on_schema_and_state() {
        let mut t = Tally::default();
        let schemas = [
            "tcpulse.status.v1",
            "tcpulse.status.v1.0",
            "tcpulse.status.v1.1",
            "tcpulse.status.v1.12",
            "tcpulse.status.v1.",
            "tcpulse.status.v1.x",
            "tcpulse.status.v01",
            "tcpulse.status.v0",
            "tcpulse.status.v2",
            "tcpulse.status.v2.1",
            "tcpulse.status.v10",
            "TCPULSE.STATUS.V1",
            "acme.status.v1",
            "",
        ];
        let mut states: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
        states.extend(["hibernating", "Active", "", "active ", "unknown\u{0}"]);
        for (base_name, base) in bases() {
            for schema in schemas {
                for state in &states {
                    let body = base
                        .clone()
                        .set(None, "schema", J::Raw(Value::from(schema).to_string()))
                        .set(None, "state", J::Raw(Value::from(*state).to_string()))
                        .render();
                    compare(
                        &format!("{base_name} {schema} {state}"),
                        &body,
                        false,
                        &mut t,
                    );
                    // A later major is a dead letter before any structure is looked at.
                    let body = J::Obj(vec![
                        ("schema".into(), J::Raw(Value::from(schema).to_string())),
                        ("state".into(), J::Raw(Value::from(*state).to_string())),
                    ])
                    .render();
                    compare(&format!("bare {schema} {state}"), &body, false, &mut t);
                }
            }
        }
        let minor_unknown = bases()[0]
            .1
            .clone()
            .set(None, "schema", raw(r#""tcpulse.status.v1.1""#))
            .set(None, "state", raw(r#""hibernating""#))
            .render();
        assert_eq!(
            decode_typed(&minor_unknown).unwrap().unwrap().state,
            State::Unknown
        );
        assert!(
            t.typed_ok > 0 && t.typed_dead > 0 && t.fell_back > 0,
            "{t:?}"
        );
    }

    #[test]
    fn typed_and_value_readings_agree_on_other_bodies() {
        let mut t = Tally::default();
        let full = String::from_utf8(bases()[0].1.render()).unwrap();
        let mut bodies: Vec<(String, Vec<u8>)> = vec![];
        for root in [
            "",
            " ",
            "null",
            "true",
            "1",
            "\"x\"",
            "[]",
            "{}",
            "[{}]",
            "{\"schema\":null}",
        ] {
            bodies.push((format!("root {root}"), root.as_bytes().to_vec()));
        }
        bodies.push(("trailing garbage".into(), format!("{full}x").into_bytes()));
        bodies.push(("two objects".into(), format!("{full}{full}").into_bytes()));
        bodies.push((
            "trailing comma".into(),
            full.replacen('}', ",}", 1).into_bytes(),
        ));
        bodies.push((
            "BOM".into(),
            [&b"\xef\xbb\xbf"[..], full.as_bytes()].concat(),
        ));
        bodies.push((
            "bad utf-8 in a label".into(),
            full.replacen("blue", "bl\u{0}ue", 1)
                .replace('\u{0}', "\\u0000")
                .into_bytes(),
        ));
        let mut bad = full.clone().into_bytes();
        let at = full.find("westeurope").unwrap();
        bad[at] = 0xff;
        bodies.push(("invalid utf-8 in region".into(), bad));
        // Sizes around the limit: a valid event padded with an unknown field.
        let pad = |n: usize| {
            let body = bases()[0]
                .1
                .clone()
                .set(None, "pad", J::Raw(format!("\"{}\"", "x".repeat(n))))
                .render();
            body
        };
        let short = pad(0).len();
        for total in [MAX_BODY_BYTES - 1, MAX_BODY_BYTES, MAX_BODY_BYTES + 1] {
            let body = pad(total - short);
            assert_eq!(body.len(), total);
            bodies.push((format!("{total} bytes"), body));
        }
        // Bodies the collector's tests and the tests/ crate send.
        bodies.push((
            "aggregate.rs event".into(),
            br#"{"schema":"tcpulse.status.v1","connector":"c1","deployment":"blue",
            "region":"westeurope","scaleset":"ss","instance":"i1",
            "boot":"6f1c2a4e-8b1d-4c3e-9f70-2d5b8a9e0c11","seq":3,"time":"2026-11-26T10:00:00.000Z",
            "state":"maintenance","calls":{"call_count":4,"max_calls":16}}"#
                .to_vec(),
        ));
        bodies.push((
            "truncated".into(),
            b"{\"schema\":\"tcpulse.status.v1\",\"connec".to_vec(),
        ));
        bodies.push((
            "truncated spaced".into(),
            b"{\"schema\": \"tcpulse.status.v1\", \"connector\"".to_vec(),
        ));
        let mut twelve: Value = serde_json::from_slice(&encode(&realistic())).unwrap();
        twelve["calls"]["call_count"] = "twelve".into();
        bodies.push(("call_count twelve".into(), twelve.to_string().into_bytes()));
        let dashboards = serde_json::json!({
            "schema": "tcpulse.status.v1", "connector": "tc-dash.example.com",
            "deployment": "blue", "region": "westeurope", "scaleset": "tc-dash-vmss",
            "instance": "tc-dash-vmss_0", "boot": "0b7e4f2d-3c55-4a8e-b1a2-7e9d0c6f5a33",
            "seq": 5, "time": "2026-11-26T10:00:05.000Z", "start_time": "2026-11-26T09:00:05.000Z",
            "state": "active",
            "calls": {"call_count": 3, "max_calls": 16, "planned_calls": 15, "media_load": 32},
            "health": {"cpu": 0.4, "mem_used_bytes": 6_000_000_000u64, "mem_total_bytes": 16_000_000_000u64,
                       "disk_free_bytes": 40_000_000_000u64, "service_up": false, "cert_expiry_days": 12.5},
            "agent": {"version": "0.1.0", "spooled": 40, "dropped": 0},
        });
        bodies.push((
            "dashboards event".into(),
            serde_json::to_vec(&dashboards).unwrap(),
        ));
        // What encode writes for unknowns: a non-finite float becomes null.
        let mut nan = realistic();
        nan.health.cert_expiry_days = Some(f64::NAN);
        nan.health.cpu = None;
        nan.calls = None;
        bodies.push(("encoded NaN".into(), encode(&nan)));
        for (name, body) in &bodies {
            compare(name, body, false, &mut t);
        }
        let padded = decode_typed(&pad(MAX_BODY_BYTES - short));
        assert!(
            matches!(padded, Some(Ok(_))),
            "a body of exactly the limit is read"
        );
    }

    #[test]
    fn typed_and_value_readings_agree_on_random_byte_edits() {
        // xorshift64*: deterministic, so a failure reproduces.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
        };
        const BYTES: &[u8] = b"{}[]\",:0123456789.eE+- \\ntfulx\x00\xff";
        let bases: Vec<Vec<u8>> = bases().iter().map(|(_, j)| j.render()).collect();
        let mut t = Tally::default();
        for i in 0..6000 {
            let mut body = bases[next(bases.len())].clone();
            for _ in 0..1 + next(3) {
                let at = next(body.len());
                match next(4) {
                    0 => {
                        body.remove(at);
                    }
                    1 => body.insert(at, BYTES[next(BYTES.len())]),
                    2 => body[at] = BYTES[next(BYTES.len())],
                    _ => {
                        let end = (at + 1 + next(24)).min(body.len());
                        let span = body[at..end].to_vec();
                        body.splice(at..at, span);
                    }
                }
            }
            // A random edit can repeat a key; only a valid body cares, and then it is
            // checked against the Value reading anyway.
            compare(&format!("edit {i}"), &body, true, &mut t);
        }
        eprintln!("{t:?}");
        assert!(
            t.typed_ok > 0 && t.typed_dead > 0 && t.fell_back > 0,
            "{t:?}"
        );
    }
}
