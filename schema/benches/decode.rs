//! `decode` against a bare `serde_json::Value` parse of the same body, in ns per event.
//!
//! `cargo bench -p tcpulse-schema --bench decode` prints one row per body: parsing it into
//! a `serde_json::Value` (only the parse: less than the earlier `Value` reading of the
//! event did, which also walked the tree), `decode` (the one typed reading, with every
//! rule), and the ratio. The realistic body is a full agent event built from the crate's
//! own types and [`encode`]d, as the agent sends it; the invalid bodies show what a dead
//! letter costs (the typed attempt, then the diagnosis). Also timed: the timestamp and UUID
//! parsing inside `decode`, as a floor. Medians of `TCPULSE_BENCH_ROUNDS` (default 11)
//! rounds of ~100 ms each, the two alternating; on mimalloc, as `tcpulse-collector`.
//! Compare `decode` across commits by running the bench on each.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tcpulse_schema::{decode, encode, Calls, Health, StatusEvent, Timestamp};
use uuid::Uuid;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUND: Duration = Duration::from_millis(100);

/// A full agent report: every field present, as the agent encodes it.
fn realistic() -> StatusEvent {
    StatusEvent {
        instance: "tc-eu-vmss_13".into(),
        seq: 104_233,
        calls: Some(Calls {
            media_load: Some(75),
            ..Calls::example()
        }),
        health: Health {
            cpu: Some(0.71),
            mem_used_bytes: Some(7_800_000_000),
            mem_total_bytes: Some(16_000_000_000),
            disk_free_bytes: Some(39_871_000_000),
            cert_expiry_days: Some(89.987_5),
            ..Health::example()
        },
        ..StatusEvent::example()
    }
}

/// Nanoseconds per call of `f(body)`: the median of `rounds` rounds.
fn time_rounds(samples: &mut Vec<f64>, body: &[u8], iters: u64, f: fn(&[u8]) -> bool) {
    let start = Instant::now();
    let mut ok = 0u64;
    for _ in 0..iters {
        ok += u64::from(f(black_box(body)));
    }
    let elapsed = start.elapsed();
    black_box(ok);
    samples.push(elapsed.as_nanos() as f64 / iters as f64);
}

/// Iterations of `f` that take about one round.
fn calibrate(body: &[u8], f: fn(&[u8]) -> bool) -> u64 {
    let mut iters = 64u64;
    loop {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(f(black_box(body)));
        }
        let elapsed = start.elapsed();
        if elapsed >= ROUND / 4 {
            let per = elapsed.as_nanos() as f64 / iters as f64;
            return ((ROUND.as_nanos() as f64 / per) as u64).max(1);
        }
        iters *= 4;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn old(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok()
}

fn new(body: &[u8]) -> bool {
    decode(body).is_ok()
}

/// What `decode` spends on `time`, `start_time` and `boot` of a full event.
fn shared_parsing(_: &[u8]) -> bool {
    let t = Timestamp::parse_rfc3339(black_box("2026-11-26T10:00:00.123Z"));
    let s = Timestamp::parse_rfc3339(black_box("2026-11-26T07:41:12.000Z"));
    let b = Uuid::parse_str(black_box("6f1c2a4e-8b1d-4c3e-9f70-2d5b8a9e0c11"));
    t.is_ok() && s.is_ok() && b.is_ok()
}

fn main() {
    let rounds: usize = std::env::var("TCPULSE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11)
        .max(1);
    let full = encode(&realistic());
    let minimal = encode(&StatusEvent {
        instance: "tc-eu-vmss_13".into(),
        seq: 104_233,
        ..StatusEvent::example_minimal()
    });
    let unknown = include_bytes!("../fixtures/valid_unknown_fields.json").to_vec();
    let wrong_type = String::from_utf8_lossy(&full)
        .replace("\"call_count\":12", "\"call_count\":\"twelve\"")
        .into_bytes();
    let truncated = full[..full.len() / 2].to_vec();
    let bodies: [(&str, &[u8], bool); 5] = [
        ("full agent event (valid)", &full, true),
        ("minimal event (valid)", &minimal, true),
        ("unknown fields (valid)", &unknown, true),
        ("call_count a string (dead letter)", &wrong_type, false),
        ("truncated JSON (dead letter)", &truncated, false),
    ];
    for (name, body, valid) in bodies {
        assert_eq!(decode(body).is_ok(), valid, "{name}");
    }

    println!(
        "decode, ns per event (median of {rounds} rounds of ~{} ms; mimalloc)",
        ROUND.as_millis()
    );
    println!(
        "| body | bytes | Value parse | decode | Value parse / decode |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for (name, body, _) in bodies {
        let (n_old, n_new) = (calibrate(body, old), calibrate(body, new));
        let (mut s_old, mut s_new) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            time_rounds(&mut s_old, body, n_old, old);
            time_rounds(&mut s_new, body, n_new, new);
        }
        let (o, n) = (median(s_old), median(s_new));
        println!(
            "| {name} | {} | {o:.0} | {n:.0} | {:.2}x |",
            body.len(),
            o / n
        );
    }
    let n = calibrate(&full, shared_parsing);
    let mut s = Vec::new();
    for _ in 0..rounds {
        time_rounds(&mut s, &full, n, shared_parsing);
    }
    println!(
        "\nof which decode spends on 2 timestamps + 1 UUID of the full event: {:.0} ns",
        median(s)
    );
}
