//! Where a consumer starts reading a partition, and the selector filter text that carries
//! it on the AMQP attach, both ways: the client writes it ([`StartPosition::selector`]), the
//! hub reads it ([`StartPosition::from_selector`]). One type for the one meaning, so the
//! emulator serves exactly the positions the client can ask for.
//!
//! The filter is `apache.org:selector-filter:string` (see [`crate::wire::SELECTOR_FILTER`])
//! holding an expression such as `amqp.annotation.x-opt-offset > '-1'`. SDKs spell it
//! differently: Python `amqp.annotation.x-opt-offset > '5'`, Rust `>'5'`, old .NET and
//! fe2o3's example unquoted (`> -1`, `> @latest`); all are read. `>=` makes the position
//! inclusive.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::wire;

/// Where a consumer starts reading.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// The oldest retained event.
    Earliest,
    /// Only events enqueued after the link attaches.
    #[default]
    Latest,
    /// At (inclusive) or after an offset.
    Offset {
        /// The offset, as the service gave it.
        offset: String,
        /// Include the event at this offset.
        inclusive: bool,
    },
    /// At (inclusive) or after a sequence number.
    SequenceNumber {
        /// The sequence number.
        sequence_number: i64,
        /// Include the event with this number.
        inclusive: bool,
    },
    /// At (inclusive) or after an enqueued time (millisecond precision).
    EnqueuedTime {
        /// The time.
        time: SystemTime,
        /// Include events enqueued exactly then.
        inclusive: bool,
    },
}

impl StartPosition {
    /// The selector expression, spelled as the Python SDK spells it.
    pub fn selector(&self) -> String {
        let op = |inclusive: bool| if inclusive { ">=" } else { ">" };
        match self {
            StartPosition::Earliest => format!("amqp.annotation.{} > '-1'", wire::OFFSET),
            StartPosition::Latest => format!("amqp.annotation.{} > '@latest'", wire::OFFSET),
            StartPosition::Offset { offset, inclusive } => format!(
                "amqp.annotation.{} {} '{}'",
                wire::OFFSET,
                op(*inclusive),
                offset.replace('\'', "''")
            ),
            StartPosition::SequenceNumber {
                sequence_number,
                inclusive,
            } => format!(
                "amqp.annotation.{} {} '{sequence_number}'",
                wire::SEQUENCE_NUMBER,
                op(*inclusive)
            ),
            StartPosition::EnqueuedTime { time, inclusive } => {
                let ms = time
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                format!(
                    "amqp.annotation.{} {} '{ms}'",
                    wire::ENQUEUED_TIME,
                    op(*inclusive)
                )
            }
        }
    }
}

/// A selector expression [`StartPosition::from_selector`] does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector filter '{expression}' not understood: {why} (expected amqp.annotation.x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time > or >= a value)")]
pub struct SelectorError {
    /// The expression as received.
    pub expression: String,
    /// What is wrong.
    pub why: &'static str,
}

impl StartPosition {
    /// Reads a selector expression in any SDK's spelling. An exclusive offset of `-1` is
    /// [`StartPosition::Earliest`]; `@latest` is [`StartPosition::Latest`]; offsets,
    /// sequence numbers and enqueued times (Unix milliseconds; before 1970 reads as 1970)
    /// must be integers.
    pub fn from_selector(expression: &str) -> Result<StartPosition, SelectorError> {
        let err = |why| SelectorError {
            expression: expression.to_string(),
            why,
        };
        let lower = expression.trim().to_ascii_lowercase();
        let rest = lower
            .strip_prefix("amqp.annotation.")
            .ok_or_else(|| err("no amqp.annotation. prefix"))?;
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '>' || c == '=' || c == '<')
            .ok_or_else(|| err("no operator"))?;
        let (name, after) = (&rest[..name_end], rest[name_end..].trim_start());
        let (inclusive, value) = if let Some(v) = after.strip_prefix(">=") {
            (true, v)
        } else if let Some(v) = after.strip_prefix('>') {
            (false, v)
        } else {
            return Err(err("operator must be > or >="));
        };
        let value = unquote(value.trim());
        let number = || {
            value
                .parse::<i64>()
                .map_err(|_| err("value is not a number"))
        };
        match name {
            wire::OFFSET if value == "@latest" => Ok(StartPosition::Latest),
            wire::OFFSET => match number()? {
                -1 if !inclusive => Ok(StartPosition::Earliest),
                offset => Ok(StartPosition::Offset {
                    offset: offset.to_string(),
                    inclusive,
                }),
            },
            wire::SEQUENCE_NUMBER => Ok(StartPosition::SequenceNumber {
                sequence_number: number()?,
                inclusive,
            }),
            wire::ENQUEUED_TIME => Ok(StartPosition::EnqueuedTime {
                time: UNIX_EPOCH + Duration::from_millis(number()?.max(0).unsigned_abs()),
                inclusive,
            }),
            _ => Err(err("unknown annotation")),
        }
    }
}

/// `value` without one pair of surrounding single or double quotes.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
        .unwrap_or(value)
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_spelled_like_the_python_sdk() {
        assert_eq!(
            StartPosition::Earliest.selector(),
            "amqp.annotation.x-opt-offset > '-1'"
        );
        assert_eq!(
            StartPosition::Latest.selector(),
            "amqp.annotation.x-opt-offset > '@latest'"
        );
        assert_eq!(
            StartPosition::SequenceNumber {
                sequence_number: 5,
                inclusive: true
            }
            .selector(),
            "amqp.annotation.x-opt-sequence-number >= '5'"
        );
        assert_eq!(
            StartPosition::Offset {
                offset: "100".into(),
                inclusive: false
            }
            .selector(),
            "amqp.annotation.x-opt-offset > '100'"
        );
        assert_eq!(
            StartPosition::EnqueuedTime {
                time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
                inclusive: false
            }
            .selector(),
            "amqp.annotation.x-opt-enqueued-time > '1700000000123'"
        );
    }

    #[test]
    fn every_position_reads_back_from_its_selector() {
        let positions = [
            StartPosition::Earliest,
            StartPosition::Latest,
            StartPosition::Offset {
                offset: "4096".into(),
                inclusive: true,
            },
            StartPosition::Offset {
                offset: "0".into(),
                inclusive: false,
            },
            StartPosition::SequenceNumber {
                sequence_number: 7,
                inclusive: false,
            },
            StartPosition::EnqueuedTime {
                time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
                inclusive: true,
            },
        ];
        for p in positions {
            assert_eq!(
                StartPosition::from_selector(&p.selector()),
                Ok(p.clone()),
                "{p:?}"
            );
        }
    }

    #[test]
    fn reads_every_sdk_spelling() {
        let read = |s: &str| StartPosition::from_selector(s).unwrap();
        for earliest in [
            "amqp.annotation.x-opt-offset > '-1'",
            "amqp.annotation.x-opt-offset >'-1'",
            "amqp.annotation.x-opt-offset > -1",
            "amqp.annotation.x-opt-offset>-1",
        ] {
            assert_eq!(read(earliest), StartPosition::Earliest, "{earliest}");
        }
        assert_eq!(
            read("amqp.annotation.x-opt-offset > @latest"),
            StartPosition::Latest
        );
        assert_eq!(
            read("amqp.annotation.x-opt-offset >= '120'"),
            StartPosition::Offset {
                offset: "120".into(),
                inclusive: true
            }
        );
        assert_eq!(
            read("AMQP.ANNOTATION.X-OPT-SEQUENCE-NUMBER > '7'"),
            StartPosition::SequenceNumber {
                sequence_number: 7,
                inclusive: false
            }
        );
        assert_eq!(
            read("amqp.annotation.x-opt-enqueued-time >= \"1700000000000\""),
            StartPosition::EnqueuedTime {
                time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
                inclusive: true
            }
        );
    }

    #[test]
    fn refuses_what_cannot_be_served() {
        for bad in [
            "amqp.annotation.x-opt-offset < '5'",
            "amqp.annotation.x-opt-offset > 'abc'",
            "amqp.annotation.x-opt-foo > '1'",
            "x-opt-offset > 1",
            "",
        ] {
            assert!(StartPosition::from_selector(bad).is_err(), "{bad}");
        }
    }
}
