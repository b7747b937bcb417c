//! Reading call counters out of text: a bare number, or a JSON document read by JSON
//! pointers (RFC 6901). Shared by the `command`, `file` and `http` sources; state names
//! shared with `pexip`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tcpulse_schema::{Calls, State};

use super::{Sample, SourceError};

/// Where the values sit in a JSON document (JSON pointers, e.g. `/status/calls`).
/// A bare number as the whole document is the call count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pointers {
    /// Pointer to the number of calls in progress (required in the document).
    /// Default: `/call_count`.
    #[serde(default = "default_call_count")]
    pub call_count: String,
    /// Pointer to the maximum call capacity; where the document lacks it, the source's
    /// `max_calls` setting applies. Default: `/max_calls`.
    #[serde(default = "default_max_calls")]
    pub max_calls: String,
    /// Pointer to the media load in percent (0..=100, clamped; fractions rounded); left
    /// out of the report when absent. Default: `/media_load`.
    #[serde(default = "default_media_load")]
    pub media_load: String,
    /// Pointer to the instance state (`active`, `maintenance`, …, Pexip's UI names work
    /// too); `active` when absent. Default: `/state`.
    #[serde(default = "default_state")]
    pub state: String,
}

fn default_call_count() -> String {
    "/call_count".to_owned()
}
fn default_max_calls() -> String {
    "/max_calls".to_owned()
}
fn default_media_load() -> String {
    "/media_load".to_owned()
}
fn default_state() -> String {
    "/state".to_owned()
}

impl Default for Pointers {
    fn default() -> Self {
        Pointers {
            call_count: default_call_count(),
            max_calls: default_max_calls(),
            media_load: default_media_load(),
            state: default_state(),
        }
    }
}

impl Pointers {
    /// Checks that every pointer is empty or starts with `/`.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("call_count", &self.call_count),
            ("max_calls", &self.max_calls),
            ("media_load", &self.media_load),
            ("state", &self.state),
        ] {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(format!(
                    "pointers.{name} = {p:?} is not a JSON pointer; write it like \"/status/{name}\""
                ));
            }
        }
        Ok(())
    }
}

/// A JSON value as a non-negative integer (also from an integral float or a digit string).
pub fn as_count(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u32::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A media load reading as a percentage: rounded and clamped to 0..=100.
pub fn as_percent(v: &Value) -> Option<u8> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().trim_end_matches('%').parse().ok()?,
        _ => return None,
    };
    f.is_finite().then(|| f.round().clamp(0.0, 100.0) as u8)
}

/// A state name as Pexip or an operator might write it (`Active`, `Waiting for
/// termination`, `waiting_for_termination`, `draining`, …). Unrecognised names are
/// [`State::Unknown`].
pub fn parse_state(s: &str) -> State {
    let norm: String = s
        .trim()
        .chars()
        .map(|c| {
            if c == ' ' || c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    match norm.as_str() {
        "active" | "running" | "ok" | "online" => State::Active,
        "waiting_for_termination" | "draining" => State::WaitingForTermination,
        "terminating" => State::Terminating,
        "maintenance" | "starting" | "restarting" => State::Maintenance,
        "failure" | "failed" => State::Failure,
        _ => State::Unknown,
    }
}

fn count_u32(v: u64, what: &str) -> Result<u32, SourceError> {
    u32::try_from(v).map_err(|_| SourceError::Parse(format!("{what} {v} is out of range")))
}

/// Parses a reading: a bare number (the call count) or a JSON document read with `ptr`.
/// `max_calls` is used where the document does not say.
pub fn parse_reading(text: &str, ptr: &Pointers, max_calls: u32) -> Result<Sample, SourceError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SourceError::Parse("empty output".to_owned()));
    }
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        let excerpt: String = text.chars().take(40).collect();
        SourceError::Parse(format!("neither a number nor JSON ({e}): {excerpt:?}"))
    })?;
    if let Some(n) = as_count(&doc).filter(|_| doc.is_number()) {
        return Ok(Sample::local(Calls {
            call_count: count_u32(n, "call count")?,
            max_calls,
            planned_calls: None,
            media_load: None,
        }));
    }
    let get = |p: &str| if p.is_empty() { None } else { doc.pointer(p) };
    let call_count = get(&ptr.call_count).and_then(as_count).ok_or_else(|| {
        SourceError::Parse(format!("no call count (a number) at {:?}", ptr.call_count))
    })?;
    let max = match get(&ptr.max_calls).and_then(as_count) {
        Some(m) => count_u32(m, "max calls")?,
        None => max_calls,
    };
    let state = get(&ptr.state)
        .and_then(Value::as_str)
        .map_or(State::Active, parse_state);
    Ok(Sample {
        state,
        ..Sample::local(Calls {
            call_count: count_u32(call_count, "call count")?,
            max_calls: max,
            planned_calls: None,
            media_load: get(&ptr.media_load).and_then(as_percent),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(s: &Sample) -> Calls {
        s.calls.unwrap()
    }

    #[test]
    fn bare_number_is_the_call_count() {
        let s = parse_reading(" 12\n", &Pointers::default(), 16).unwrap();
        assert_eq!(
            (calls(&s).call_count, calls(&s).max_calls, s.state),
            (12, 16, State::Active)
        );
        assert!(parse_reading("-1", &Pointers::default(), 16).is_err());
        assert!(parse_reading("", &Pointers::default(), 16).is_err());
        assert!(parse_reading("twelve", &Pointers::default(), 16).is_err());
    }

    #[test]
    fn json_document_is_read_by_pointers() {
        let ptr = Pointers {
            call_count: "/calls/active".into(),
            media_load: "/load".into(),
            ..Pointers::default()
        };
        let s = parse_reading(
            r#"{"calls":{"active":"7"},"load":71.6,"max_calls":15,"state":"Waiting for termination"}"#,
            &ptr,
            16,
        )
        .unwrap();
        assert_eq!(calls(&s).call_count, 7);
        assert_eq!(calls(&s).max_calls, 15);
        assert_eq!(calls(&s).media_load, Some(72));
        assert_eq!(s.state, State::WaitingForTermination);
        let err = parse_reading(r#"{"calls":{}}"#, &ptr, 16).unwrap_err();
        assert!(err.to_string().contains("/calls/active"), "{err}");
    }

    #[test]
    fn percent_is_clamped_and_states_are_lenient() {
        assert_eq!(as_percent(&serde_json::json!(130)), Some(100));
        assert_eq!(as_percent(&serde_json::json!(-3)), Some(0));
        assert_eq!(as_percent(&serde_json::json!("45%")), Some(45));
        assert_eq!(parse_state("Maintenance"), State::Maintenance);
        assert_eq!(
            parse_state("waiting-for-termination"),
            State::WaitingForTermination
        );
        assert_eq!(parse_state("bogus"), State::Unknown);
        assert!(Pointers {
            state: "state".into(),
            ..Pointers::default()
        }
        .validate()
        .is_err());
    }
}
