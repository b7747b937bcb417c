//! Fuzzing the event decoder with proptest, a bounded number of cases per property (fixed
//! seed-free budget: 2,000 cases each, a few seconds in a debug build), so it runs with the
//! ordinary test suite and in CI.
//!
//! Inputs: arbitrary bytes; the fixtures mutated at the byte level (flips, insertions,
//! deletions, truncation, JSON punctuation spliced in); and the fixtures mutated at the
//! field level (a field removed, or set to any JSON value, including raw number literals
//! beyond i64/u64/f64 and odd strings). For each input:
//! - `decode` never panics and returns an event or a dead letter with a reason;
//! - an accepted event validates, and its re-encoding decodes again to the same identity.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup is a failed test

use proptest::prelude::*;
use serde_json::Value;
use tcpulse_schema::decode::{decode, encode, DeadLetterReason};

const FIXTURES: [&str; 9] = [
    include_str!("../fixtures/valid_full.json"),
    include_str!("../fixtures/valid_minimal.json"),
    include_str!("../fixtures/valid_minor_version.json"),
    include_str!("../fixtures/valid_unknown_fields.json"),
    include_str!("../fixtures/invalid_future_major.json"),
    include_str!("../fixtures/invalid_json.json"),
    include_str!("../fixtures/invalid_missing_field.json"),
    include_str!("../fixtures/invalid_negative_count.json"),
    include_str!("../fixtures/invalid_wrong_type.json"),
];

/// Every field of a v1 event, as (parent, name); parent "" is the root.
const FIELDS: &[(&str, &str)] = &[
    ("", "schema"),
    ("", "connector"),
    ("", "deployment"),
    ("", "region"),
    ("", "scaleset"),
    ("", "instance"),
    ("", "boot"),
    ("", "seq"),
    ("", "time"),
    ("", "start_time"),
    ("", "state"),
    ("", "calls"),
    ("", "health"),
    ("", "agent"),
    ("calls", "call_count"),
    ("calls", "max_calls"),
    ("calls", "planned_calls"),
    ("calls", "media_load"),
    ("health", "cpu"),
    ("health", "mem_used_bytes"),
    ("health", "mem_total_bytes"),
    ("health", "disk_free_bytes"),
    ("health", "service_up"),
    ("health", "cert_expiry_days"),
    ("agent", "version"),
    ("agent", "spooled"),
    ("agent", "dropped"),
    ("agent", "publish_failing_seconds"),
];

/// Number and string literals serde_json's `Value` cannot hold or that sit on a boundary;
/// spliced into the text in place of a marker.
const RAW_LITERALS: &[&str] = &[
    "1e400",
    "-1e400",
    "-0",
    "0.0",
    "1E2",
    "18446744073709551615",
    "18446744073709551616",
    "4294967295",
    "4294967296",
    "-9223372036854775809",
    "1.0000000000000000000000001",
    "0.0000001",
    "NaN",
    "Infinity",
    "\"\\ud800\"",
    "\"\\u0000\"",
    "\"blue\\\\\"",
    "\"2026-02-30T10:00:00Z\"",
    "\"2026-11-26T10:00:00.123+01:00\"",
    "\"9999-12-31T23:59:59.999Z\"",
    "\"1970-01-01T00:00:00Z\"",
    "\"tcpulse.status.v1.99999999999\"",
    "\"tcpulse.status.v01\"",
    "\"tcpulse.status.v2\"",
];

const MARKER: &str = "\u{1}RAW\u{1}";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The properties every input must satisfy.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let typed = decode(bytes);
    match typed {
        Ok(event) => {
            prop_assert!(
                event.validate().is_ok(),
                "accepted but invalid: {:?}",
                event
            );
            let again = decode(&encode(&event));
            prop_assert!(again.is_ok(), "re-encoding is refused: {:?}", again);
            let again = again.unwrap();
            prop_assert_eq!(&again.instance, &event.instance);
            prop_assert_eq!(again.seq, event.seq);
        }
        Err(dead) => {
            prop_assert!(DeadLetterReason::KINDS.contains(&dead.reason.kind()));
            prop_assert!(!dead.reason.to_string().is_empty());
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Splice(usize, &'static str),
}

fn json_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        proptest::sample::select(b"{}[]\":,-.0123456789eE+ntrufals\\ \n".to_vec()),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        (any::<usize>(), json_byte()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        any::<usize>().prop_map(ByteEdit::Delete),
        any::<usize>().prop_map(ByteEdit::Truncate),
        (any::<usize>(), proptest::sample::select(RAW_LITERALS))
            .prop_map(|(i, s)| ByteEdit::Splice(i, s)),
    ]
}

fn apply(mut body: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for edit in edits {
        let n = body.len().max(1);
        match *edit {
            ByteEdit::Flip(i, b) if !body.is_empty() => body[i % n] ^= b,
            ByteEdit::Insert(i, b) => body.insert(i % (body.len() + 1), b),
            ByteEdit::Delete(i) if !body.is_empty() => drop(body.remove(i % n)),
            ByteEdit::Truncate(i) => body.truncate(i % (body.len() + 1)),
            ByteEdit::Splice(i, s) => {
                let at = i % (body.len() + 1);
                body.splice(at..at, s.bytes());
            }
            _ => {}
        }
    }
    body
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..40).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        "[a-z0-9._\\\\ ,=\"-]{0,300}".prop_map(Value::String),
        Just(Value::String(MARKER.to_owned())),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum FieldEdit {
    Remove(usize),
    Set(usize, Value),
}

fn field_edit() -> impl Strategy<Value = FieldEdit> {
    prop_oneof![
        (0..FIELDS.len()).prop_map(FieldEdit::Remove),
        (0..FIELDS.len(), json_value()).prop_map(|(i, v)| FieldEdit::Set(i, v)),
    ]
}

fn edit_fields(fixture: &str, edits: &[FieldEdit], raw: &str) -> Vec<u8> {
    let Ok(Value::Object(mut root)) = serde_json::from_str::<Value>(fixture) else {
        return fixture.as_bytes().to_vec();
    };
    for edit in edits {
        let (i, value) = match edit {
            FieldEdit::Remove(i) => (*i, None),
            FieldEdit::Set(i, v) => (*i, Some(v.clone())),
        };
        let (parent, name) = FIELDS[i];
        let target = if parent.is_empty() {
            Some(&mut root)
        } else {
            match root.get_mut(parent) {
                Some(Value::Object(m)) => Some(m),
                _ => None,
            }
        };
        if let Some(map) = target {
            match value {
                Some(v) => drop(map.insert(name.to_owned(), v)),
                None => drop(map.remove(name)),
            }
        }
    }
    let text = serde_json::to_string(&Value::Object(root)).unwrap();
    text.replace(&format!("\"{}\"", MARKER.replace('\u{1}', "\\u0001")), raw)
        .into_bytes()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn r12_fuzz_decode_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&bytes)?;
    }

    #[test]
    fn r12_fuzz_decode_byte_mutated_fixtures(
        fixture in 0..FIXTURES.len(),
        edits in proptest::collection::vec(byte_edit(), 1..8),
    ) {
        check(&apply(FIXTURES[fixture].as_bytes().to_vec(), &edits))?;
    }

    #[test]
    fn r12_fuzz_decode_field_mutated_fixtures(
        fixture in 0..4usize,
        edits in proptest::collection::vec(field_edit(), 1..4),
        raw in proptest::sample::select(RAW_LITERALS),
    ) {
        check(&edit_fields(FIXTURES[fixture], &edits, raw))?;
    }
}

/// The field-level mutator really splices raw literals (else that property would test less
/// than it says).
#[test]
fn field_mutator_splices_raw_literals() {
    let body = edit_fields(
        FIXTURES[0],
        &[FieldEdit::Set(7, Value::String(MARKER.to_owned()))],
        "18446744073709551616",
    );
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("\"seq\":18446744073709551616"), "{text}");
    assert!(decode(text.as_bytes()).is_err());
}
