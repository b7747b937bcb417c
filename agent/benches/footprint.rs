//! Agent footprint and spool replay benchmark (issue 4, "Performance").
//!
//! `cargo bench -p tcpulse-agent --bench footprint` (release profile). Two parts:
//!
//! 1. **Footprint**: runs the release `tcpulse-agent run` binary with the `simulate`
//!    source, host health on, reporting every 1 s (source read every 500 ms) to the file
//!    publisher, for `TCPULSE_BENCH_SECS` seconds (default 60; the closing note uses 600),
//!    and samples its RSS (`/proc/<pid>/status` VmRSS) and CPU time (`/proc/<pid>/stat`)
//!    every second. Linux only.
//! 2. **Replay**: fills a spool with `TCPULSE_BENCH_EVENTS` realistic events (default
//!    1 000 000), reopens it (start-up time with that backlog), then lets the agent's own
//!    run loop drain it into a null publisher and reports events per second.
//!
//! Results go to stdout, one `name: value` per line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure is fatal

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tcpulse_agent::config::{parse_file, Config, RunArgs};
use tcpulse_agent::publish::NullPublisher;
use tcpulse_agent::spool::Spool;
use tcpulse_schema::{Calls, StatusEvent, Timestamp};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(target_os = "linux")]
fn footprint(secs: u64) {
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[identity]\nconnector = \"tc-eu.example.com\"\nregion = \"westeurope\"\nscaleset = \"tc-eu-vmss\"\ninstance = \"tc-eu-vmss_0\"\n\
             [report]\ninterval = \"1s\"\npoll_interval = \"500ms\"\n\
             [health]\nservice_process = \"sshd\"\n\
             [source]\ntype = \"simulate\"\nday_length = \"10m\"\n\
             [spool]\ndir = {:?}\n[publish]\nfile = {:?}\n[log]\nlevel = \"warn\"\n",
            dir.path().join("spool"),
            dir.path().join("out.jsonl")
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_tcpulse-agent");
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("TCPULSE_EVENTHUB_CONNECTION_STRING")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu_secs = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks
    };
    let rss_kib = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    // Let it start, then measure steady state.
    std::thread::sleep(Duration::from_secs(2));
    let (cpu0, t0) = (cpu_secs(), Instant::now());
    let mut rss = Vec::new();
    for _ in 0..secs {
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_kib());
    }
    let cpu = (cpu_secs() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();
    let events = std::fs::read_to_string(dir.path().join("out.jsonl"))
        .unwrap()
        .lines()
        .count();
    let avg = rss.iter().sum::<u64>() as f64 / rss.len() as f64 / 1024.0;
    let max = *rss.iter().max().unwrap() as f64 / 1024.0;
    println!("footprint_seconds: {secs}");
    println!("footprint_events_published: {events}");
    println!("footprint_rss_avg_mib: {avg:.2}");
    println!("footprint_rss_max_mib: {max:.2}");
    println!("footprint_cpu_percent_of_one_core: {cpu:.3}");
    println!("footprint_exit: {status}");
}

#[cfg(not(target_os = "linux"))]
fn footprint(_secs: u64) {
    println!("footprint: skipped (reads /proc; Linux only)");
}

fn sample_body(i: u64) -> Vec<u8> {
    let ev = StatusEvent {
        boot: uuid::Uuid::from_u128(7),
        seq: i,
        time: Timestamp::from_unix_millis(1_795_687_200_123 + i as i64 * 1000).unwrap(),
        start_time: Timestamp::from_unix_millis(1_795_680_000_000),
        calls: Some(Calls {
            call_count: (i % 16) as u32,
            ..Calls::example()
        }),
        ..StatusEvent::example()
    };
    tcpulse_schema::encode(&ev)
}

fn replay(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let max_bytes = 4u64 << 30;
    let body_len = sample_body(0).len();
    let t = Instant::now();
    {
        let spool = Spool::open(&spool_dir, max_bytes).unwrap();
        let mut i = 0;
        while i < n {
            let bodies: Vec<Vec<u8>> = (i..(i + 1000).min(n)).map(sample_body).collect();
            spool
                .append(
                    bodies.iter().map(|b| ("tc-eu.example.com", b.as_slice())),
                    Some(i + bodies.len() as u64 - 1),
                )
                .unwrap();
            i += bodies.len() as u64;
        }
        spool.close().unwrap();
    }
    let fill = t.elapsed();
    let file_mib = std::fs::metadata(spool_dir.join(tcpulse_agent::spool::FILE_NAME))
        .unwrap()
        .len() as f64
        / 1048576.0;
    let t = Instant::now();
    let spool = Spool::open(&spool_dir, max_bytes).unwrap();
    let open = t.elapsed();
    assert_eq!(spool.len(), n);
    drop(spool);

    let text = format!(
        "[identity]\nconnector = \"tc-eu.example.com\"\nregion = \"r\"\nscaleset = \"s\"\ninstance = \"bench\"\n\
         [report]\ninterval = \"1h\"\n[health]\nenabled = false\n[source]\ntype = \"simulate\"\n\
         [spool]\ndir = {spool_dir:?}\nmax_bytes = {max_bytes}\n[publish]\nfile = \"/unused\"\n"
    );
    let cfg = Config::resolve(
        &RunArgs::default(),
        parse_file(Path::new("bench.toml"), &text).unwrap(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sink = Arc::new(NullPublisher::new());
    let (elapsed, summary) = rt.block_on(async {
        let token = tokio_util::sync::CancellationToken::new();
        let t = Instant::now();
        let run = tokio::spawn(tcpulse_agent::run::run(cfg, sink.clone(), token.clone()));
        // The backlog plus the one report the new start makes at once.
        while sink.events() < n + 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = t.elapsed();
        token.cancel();
        (elapsed, run.await.unwrap().unwrap())
    });
    println!("replay_events: {n}");
    println!("replay_event_bytes: {body_len}");
    println!(
        "replay_spool_fill_seconds: {:.2} ({:.0} events/s, 1000 per commit)",
        fill.as_secs_f64(),
        n as f64 / fill.as_secs_f64()
    );
    println!("replay_spool_file_mib: {file_mib:.1}");
    println!(
        "replay_open_with_backlog_ms: {:.2}",
        open.as_secs_f64() * 1000.0
    );
    println!("replay_seconds: {:.2}", elapsed.as_secs_f64());
    println!(
        "replay_events_per_second: {:.0}",
        n as f64 / elapsed.as_secs_f64()
    );
    println!("replay_batches: {}", sink.batches());
    println!("replay_spooled_at_exit: {}", summary.spooled_at_exit);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep that short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = env_u64("TCPULSE_BENCH_SECS", if quick { 3 } else { 60 });
    let events = env_u64(
        "TCPULSE_BENCH_EVENTS",
        if quick { 10_000 } else { 1_000_000 },
    );
    footprint(secs);
    replay(events);
}
