//! The spool on a real disk: crash safety against SIGKILL (a child process killed while
//! appending), the size bound, start-up cost and replay rate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tcpulse_agent::spool::{Spool, MIN_MAX_BYTES};

const CHILD_ENV: &str = "TCPULSE_SPOOL_CHILD_DIR";

fn body(i: u64) -> Vec<u8> {
    format!("{{\"seq\":{i},\"pad\":\"{}\"}}", "x".repeat(400)).into_bytes()
}

fn seq_of(body: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["seq"].as_u64().unwrap()
}

/// The child process of the kill-9 test (it re-runs this test binary with the variable
/// set): appends forever, printing each committed seq. Without the variable it does nothing.
#[test]
fn spool_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spool = Spool::open(Path::new(&dir), 64 << 20).unwrap();
    let start = spool.last_seq().map_or(0, |s| s + 1);
    let mut out = std::io::stdout();
    for i in start.. {
        let b = body(i);
        spool
            .append([("tc.example.com", b.as_slice())], Some(i))
            .unwrap();
        // Printed only after the commit returned: the parent trusts these.
        use std::io::Write;
        writeln!(out, "{i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn agent_spool_kill9_loses_nothing_acknowledged_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked_total = 0;
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "spool_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut last_acked = None;
        let mut lines = BufReader::new(stdout).lines();
        let target = 150 + round * 37;
        let mut seen = 0;
        let mut other = Vec::new();
        while seen < target {
            let Some(Ok(line)) = lines.next() else { break };
            if let Ok(n) = line.trim().parse::<u64>() {
                last_acked = Some(n);
                seen += 1;
            } else {
                other.push(line);
            }
        }
        // SIGKILL mid-stream: no destructors, no clean close.
        child.kill().unwrap();
        child.wait().unwrap();
        let last_acked = last_acked.unwrap_or_else(|| panic!("child wrote no seq: {other:?}"));
        acked_total = last_acked + 1;

        let spool = Spool::open(dir.path(), 64 << 20).unwrap();
        let seqs: Vec<u64> = spool
            .peek(usize::MAX, usize::MAX)
            .unwrap()
            .entries
            .iter()
            .map(|e| seq_of(&e.body))
            .collect();
        assert!(
            seqs.len() as u64 >= acked_total,
            "round {round}: lost acknowledged events"
        );
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "round {round}: order kept, no holes, no repeats"
        );
        assert_eq!(spool.len(), seqs.len() as u64, "counter matches the table");
        assert_eq!(spool.last_seq(), seqs.last().copied());
        drop(spool);
    }
    assert!(acked_total >= 150);
}

#[test]
fn agent_spool_full_bound_holds_and_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let max = MIN_MAX_BYTES * 2;
    let spool = Spool::open(dir.path(), max).unwrap();
    let mut dropped = 0;
    for i in 0..2000u64 {
        let b = body(i);
        dropped += spool
            .append([("tc.example.com", b.as_slice())], Some(i))
            .unwrap()
            .dropped;
        assert!(spool.bytes() <= max, "bound holds after every append");
    }
    let left = spool.peek(usize::MAX, usize::MAX).unwrap().entries;
    assert_eq!(dropped + left.len() as u64, 2000);
    assert_eq!(spool.dropped_total(), dropped);
    assert!(dropped > 1000, "most were dropped: {dropped}");
    // The newest survive, in order.
    let seqs: Vec<u64> = left.iter().map(|e| seq_of(&e.body)).collect();
    assert_eq!(seqs, (dropped..2000).collect::<Vec<_>>());
    // The file stays in proportion to the bound.
    let file = std::fs::metadata(spool.path()).unwrap().len();
    assert!(file < 8 * max, "file {file} bytes for a {max}-byte bound");
    spool.close().unwrap();
    assert_eq!(
        Spool::open(dir.path(), max).unwrap().dropped_total(),
        dropped,
        "persisted"
    );
}

#[test]
fn agent_spool_startup_does_not_scan_the_backlog_and_replay_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    let n = 50_000u64;
    {
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        let bodies: Vec<Vec<u8>> = (0..n).map(body).collect();
        for chunk in bodies.chunks(1000) {
            spool
                .append(chunk.iter().map(|b| ("tc.example.com", b.as_slice())), None)
                .unwrap();
        }
        spool.close().unwrap();
    }
    let t = Instant::now();
    let spool = Spool::open(dir.path(), 1 << 30).unwrap();
    let open = t.elapsed();
    assert_eq!(spool.len(), n);
    assert!(
        open < Duration::from_millis(500),
        "open with {n} spooled took {open:?}"
    );

    let t = Instant::now();
    let mut next = 0;
    loop {
        let batch = spool.peek(256, 768 << 10).unwrap().entries;
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            assert_eq!(seq_of(&e.body), next);
            next += 1;
        }
        spool
            .remove(&batch.iter().map(|e| e.id).collect::<Vec<_>>())
            .unwrap();
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    assert_eq!(next, n);
    assert!(spool.is_empty());
    eprintln!("open with {n} spooled: {open:?}; replay: {rate:.0} events/s");
    assert!(rate > 5_000.0, "replay rate {rate:.0}/s");
}
