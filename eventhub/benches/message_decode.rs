//! What the consumer's message decode costs, and what a `recv::<Data>`-style body would save
//! (issue 17). `cargo bench -p tcpulse-eventhub --bench message_decode` prints a table: CPU
//! time per message (best of 7 rounds of 100,000) of one delivered event as the hub sends it
//! (the four service annotations, `content-type`, one application property and a 900-byte
//! body, the size of a full agent report) decoded
//!
//! - as the client does today: `Message<Body<Value>>`, so an event whose body is an AMQP
//!   value or sequence (which other Event Hubs producers may send) is still read;
//! - as `Message<Data>`: one `data` section only; any other body is a decode error, so the
//!   link would fail on such an event.
//!
//! Both read the sequence number and offset from the annotations and take the body out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure is fatal

use std::time::Instant;

use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageAnnotations, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Timestamp, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 7;
const PER_ROUND: usize = 100_000;

/// One event as the hub delivers it, encoded.
fn delivered() -> Vec<u8> {
    let mut ma = MessageAnnotations(Default::default());
    let mut put = |k: &str, v: Value| ma.0.insert(OwnedKey::Symbol(Symbol::from(k)), v);
    put("x-opt-sequence-number", Value::Long(123_456));
    put("x-opt-offset", Value::String("987654321".into()));
    put(
        "x-opt-enqueued-time",
        Value::Timestamp(Timestamp::from_milliseconds(1_795_687_200_123)),
    );
    put(
        "x-opt-partition-key",
        Value::String("tc-eu.example.com".into()),
    );
    let msg: Message<Data> = Message::builder()
        .properties(
            Properties::builder()
                .content_type(Symbol::from("application/json"))
                .build(),
        )
        .message_annotations(ma)
        .application_properties(
            ApplicationProperties::builder()
                .insert("schema", "tcpulse.status.v1")
                .build(),
        )
        .data(Binary::from(vec![b'x'; 900]))
        .build();
    serde_amqp::to_vec(&Serializable(msg)).unwrap()
}

/// The sequence number and offset, scanned from the annotations in place.
fn seq_and_offset(ma: Option<MessageAnnotations>) -> (i64, usize) {
    let (mut seq, mut off) = (0, 0);
    for (k, v) in ma.map(|a| a.0.into_iter()).into_iter().flatten() {
        match (&k, v) {
            (OwnedKey::Symbol(s), Value::Long(n)) if s.0 == "x-opt-sequence-number" => seq = n,
            (OwnedKey::Symbol(s), Value::String(o)) if s.0 == "x-opt-offset" => off = o.len(),
            _ => {}
        }
    }
    (seq, off)
}

fn body_value(bytes: &[u8]) -> usize {
    let m: Deserializable<Message<Body<Value>>> = serde_amqp::from_slice(bytes).unwrap();
    let (seq, off) = seq_and_offset(m.0.message_annotations);
    let body = match m.0.body {
        Body::Data(s) => s.into_iter().next().map(|d| d.0.into_vec()),
        _ => None,
    };
    body.map_or(0, |b| b.len()) + seq as usize + off
}

fn body_data(bytes: &[u8]) -> usize {
    let m: Deserializable<Message<Data>> = serde_amqp::from_slice(bytes).unwrap();
    let (seq, off) = seq_and_offset(m.0.message_annotations);
    m.0.body.0.into_vec().len() + seq as usize + off
}

/// This thread's CPU time in ns (`/proc/thread-self/schedstat`, Linux): the bench shares the
/// CPUs with other work, and wall time would count theirs. Wall time elsewhere.
fn cpu_ns(start: Instant) -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| start.elapsed().as_nanos() as u64)
}

/// Best per-message CPU time in µs over the rounds (the least disturbed by other processes).
fn best_us(bytes: &[u8], decode: fn(&[u8]) -> usize) -> f64 {
    let start = Instant::now();
    let mut best = f64::MAX;
    let mut keep = 0;
    for _ in 0..ROUNDS {
        let t = cpu_ns(start);
        for _ in 0..PER_ROUND {
            keep += decode(std::hint::black_box(bytes));
        }
        let spent = cpu_ns(start) - t;
        best = best.min(spent as f64 / 1e3 / PER_ROUND as f64);
    }
    std::hint::black_box(keep);
    best
}

fn main() {
    let bytes = delivered();
    let value = best_us(&bytes, body_value);
    let data = best_us(&bytes, body_data);
    println!("delivered message: {} bytes", bytes.len());
    println!();
    println!("| decode | µs per message | share of today's |");
    println!("| --- | --- | --- |");
    println!("| `Message<Body<Value>>` (today) | {value:.3} | 100 % |");
    println!(
        "| `Message<Data>` | {data:.3} | {:.0} % |",
        data / value * 100.0
    );
}
