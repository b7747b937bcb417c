//! The consumer's start position, from the `apache.org:selector-filter:string` filter.
//!
//! SDKs spell it differently: Python `amqp.annotation.x-opt-offset > '5'`, Rust `>'5'`, old
//! .NET and fe2o3's example unquoted (`> -1`, `> @latest`). All are accepted; `>=` makes the
//! position inclusive. No filter means the start of the partition.

/// Where a consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// After (or at) an offset; `-1` means the first retained event.
    Offset {
        /// The offset.
        offset: i64,
        /// `>=` rather than `>`.
        inclusive: bool,
    },
    /// Only events enqueued after the attach (`@latest`).
    Latest,
    /// After (or at) a sequence number.
    SequenceNumber {
        /// The sequence number.
        sequence_number: i64,
        /// `>=` rather than `>`.
        inclusive: bool,
    },
    /// After (or at) an enqueued time, unix milliseconds.
    EnqueuedTime {
        /// Unix milliseconds.
        time_ms: i64,
        /// `>=` rather than `>`.
        inclusive: bool,
    },
}

impl Default for StartPosition {
    fn default() -> Self {
        StartPosition::Offset {
            offset: -1,
            inclusive: false,
        }
    }
}

/// A selector the hub does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector filter '{expression}' not understood: {why} (expected amqp.annotation.x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time > or >= a value)")]
pub struct SelectorError {
    /// The expression as received.
    pub expression: String,
    /// What is wrong.
    pub why: &'static str,
}

/// Parses a selector expression.
pub fn parse(expression: &str) -> Result<StartPosition, SelectorError> {
    let err = |why| SelectorError {
        expression: expression.to_string(),
        why,
    };
    let s = expression.trim();
    let lower = s.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("amqp.annotation.")
        .ok_or_else(|| err("no amqp.annotation. prefix"))?;
    let name_end = rest
        .find(|c: char| c.is_whitespace() || c == '>' || c == '=' || c == '<')
        .ok_or_else(|| err("no operator"))?;
    let name = &rest[..name_end];
    let after = rest[name_end..].trim_start();
    let (inclusive, value) = if let Some(v) = after.strip_prefix(">=") {
        (true, v)
    } else if let Some(v) = after.strip_prefix('>') {
        (false, v)
    } else {
        return Err(err("operator must be > or >="));
    };
    let value = value.trim();
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
        .unwrap_or(value)
        .trim();
    let number = || {
        value
            .parse::<i64>()
            .map_err(|_| err("value is not a number"))
    };
    match name {
        "x-opt-offset" => {
            if value == "@latest" {
                Ok(StartPosition::Latest)
            } else {
                Ok(StartPosition::Offset {
                    offset: number()?,
                    inclusive,
                })
            }
        }
        "x-opt-sequence-number" => Ok(StartPosition::SequenceNumber {
            sequence_number: number()?,
            inclusive,
        }),
        "x-opt-enqueued-time" => Ok(StartPosition::EnqueuedTime {
            time_ms: number()?,
            inclusive,
        }),
        _ => Err(err("unknown annotation")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_sdk_spelling() {
        let earliest = StartPosition::Offset {
            offset: -1,
            inclusive: false,
        };
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '-1'").unwrap(),
            earliest
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-offset >'-1'").unwrap(),
            earliest
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > -1").unwrap(),
            earliest
        );
        assert_eq!(parse("amqp.annotation.x-opt-offset>-1").unwrap(), earliest);
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > '@latest'").unwrap(),
            StartPosition::Latest
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-offset > @latest").unwrap(),
            StartPosition::Latest
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-offset >= '120'").unwrap(),
            StartPosition::Offset {
                offset: 120,
                inclusive: true
            }
        );
        assert_eq!(
            parse("AMQP.ANNOTATION.X-OPT-SEQUENCE-NUMBER > '7'").unwrap(),
            StartPosition::SequenceNumber {
                sequence_number: 7,
                inclusive: false
            }
        );
        assert_eq!(
            parse("amqp.annotation.x-opt-enqueued-time >= \"1700000000000\"").unwrap(),
            StartPosition::EnqueuedTime {
                time_ms: 1_700_000_000_000,
                inclusive: true
            }
        );
    }

    #[test]
    fn rejects_what_it_cannot_serve() {
        assert!(parse("amqp.annotation.x-opt-offset < '5'").is_err());
        assert!(parse("amqp.annotation.x-opt-offset > 'abc'").is_err());
        assert!(parse("amqp.annotation.x-opt-foo > '1'").is_err());
        assert!(parse("x-opt-offset > 1").is_err());
        assert!(parse("").is_err());
    }
}
