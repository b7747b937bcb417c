//! Agent footprint and spool replay benchmark (issue 4, "Performance").
//!
//! `cargo bench -p tcpulse-agent --bench footprint` (release profile). To measure the agent
//! as shipped, build it with `cargo build --profile agent -p tcpulse-agent` and pass
//! `TCPULSE_BENCH_AGENT=target/agent/tcpulse-agent`. Two parts:
//!
//! 1. **Footprint**: runs the `tcpulse-agent run` binary with the `simulate`
//!    source, host health on, reporting every 1 s (source read every 500 ms) for
//!    `TCPULSE_BENCH_SECS` seconds (default 60; the closing note uses 600), and samples its
//!    RSS (`/proc/<pid>/status` VmRSS) and CPU time (`/proc/<pid>/stat`) every second; once
//!    with the file publisher, once with the Event Hubs publisher over TLS to a `tcpulse-hub`
//!    process on loopback (build it first: `cargo build --release -p tcpulse-hub --bins`),
//!    whose `$management` then says how many reports arrived. `TCPULSE_BENCH_PUBLISH=file`
//!    or `eventhubs` runs one of them. Linux only. Also prints the agent binary's size and
//!    its crate count.
//! 2. **Replay**: fills a spool with `TCPULSE_BENCH_EVENTS` realistic events (default
//!    1 000 000; 0 skips this part), reopens it (start-up time with that backlog), then lets
//!    the agent's own run loop drain it into a null publisher and reports events per second.
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

/// Where a footprint run publishes.
#[cfg(target_os = "linux")]
enum Publish {
    /// The file publisher (JSON lines).
    File,
    /// The TLS Event Hubs publisher, to a `tcpulse-hub` process on loopback.
    EventHubs,
}

/// The release `tcpulse-hub` binary beside this bench's executable (build it first:
/// `cargo build --release -p tcpulse-hub --bins`).
#[cfg(target_os = "linux")]
fn hub_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    let bin = dir.join("tcpulse-hub");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release -p tcpulse-hub --bins` first",
        bin.display()
    );
    bin
}

/// A `tcpulse-hub` child process on loopback (TLS), killed on drop.
#[cfg(target_os = "linux")]
struct HubChild {
    child: std::process::Child,
    ready: serde_json::Value,
}

#[cfg(target_os = "linux")]
impl HubChild {
    fn start(dir: &Path) -> HubChild {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(hub_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--hub",
                "tcpulse:4",
                "--data-dir",
            ])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines
            .next()
            .expect("the hub printed no ready line")
            .unwrap();
        // Keep draining stdout so the hub never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        HubChild {
            child,
            ready: serde_json::from_str(&line).unwrap(),
        }
    }

    fn connection_string(&self, policy: &str) -> String {
        self.ready["connection_strings"][policy]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn ca_pem(&self) -> String {
        self.ready["ca_pem"].as_str().unwrap().to_string()
    }

    /// Events in the hub (every partition), from `$management`.
    fn events(&self) -> i64 {
        use tcpulse_eventhub::client::{ClientConfig, ClientOptions, ManagementClient};
        let config = ClientConfig::from_connection_string(
            &self.connection_string("manage"),
            None,
            ClientOptions {
                extra_ca_file: Some(self.ca_pem().into()),
                ..ClientOptions::default()
            },
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut m = ManagementClient::connect(config).await.unwrap();
            let mut n = 0;
            for id in m.partition_ids().await.unwrap() {
                let p = m.partition_properties(&id).await.unwrap();
                if !p.is_empty {
                    n += p.last_enqueued_sequence_number - p.begin_sequence_number + 1;
                }
            }
            m.close().await;
            n
        })
    }
}

#[cfg(target_os = "linux")]
impl Drop for HubChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) and RSS (KiB) of process `pid`, from `/proc`.
#[cfg(target_os = "linux")]
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0 // USER_HZ
}

/// The process's resident memory in KiB: total, anonymous (its heap and stacks) and
/// file-backed (mostly the binary's code pages, which the kernel maps in around each one
/// touched).
#[cfg(target_os = "linux")]
fn rss_kib(pid: u32) -> [u64; 3] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    [field("VmRSS:"), field("RssAnon:"), field("RssFile:")]
}

/// The footprint run's agent config: simulate source, host health (the service process is
/// this bench), a report every second.
#[cfg(target_os = "linux")]
fn agent_toml(dir: &Path, publish: &str) -> String {
    format!(
        "[identity]\nconnector = \"tc-eu.example.com\"\nregion = \"westeurope\"\nscaleset = \"tc-eu-vmss\"\ninstance = \"tc-eu-vmss_0\"\n\
         [report]\ninterval = \"1s\"\npoll_interval = \"500ms\"\n\
         [health]\nservice_process = {:?}\n\
         [source]\ntype = \"simulate\"\nday_length = \"10m\"\n\
         [spool]\ndir = {:?}\n[publish]\n{publish}\n[log]\nlevel = \"warn\"\n",
        // The service process: this bench's own, so it runs (the usual case: found once,
        // then checked alone).
        std::env::current_exe()
            .ok()
            .and_then(|e| e.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default(),
        dir.join("spool"),
    )
}

#[cfg(target_os = "linux")]
fn footprint(secs: u64, publish: Publish) {
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let (name, hub, publish_toml) = match publish {
        Publish::File => (
            "file",
            None,
            format!("file = {:?}", dir.path().join("out.jsonl")),
        ),
        Publish::EventHubs => {
            let hub = HubChild::start(&dir.path().join("hub"));
            // The secret goes in a file, never on a command line.
            let cs_file = dir.path().join("send.cs");
            std::fs::write(&cs_file, hub.connection_string("send")).unwrap();
            let toml = format!(
                "connection_string_file = {:?}\nca_file = {:?}",
                cs_file,
                hub.ca_pem()
            );
            ("eventhubs_tls", Some(hub), toml)
        }
    };
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, agent_toml(dir.path(), &publish_toml)).unwrap();
    let bin = agent_binary();
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("TCPULSE_EVENTHUB_CONNECTION_STRING")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Let it start (and connect), then measure steady state.
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, t0) = (cpu_secs(pid), Instant::now());
    let mut rss = Vec::new();
    for _ in 0..secs {
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_kib(pid));
    }
    let cpu = (cpu_secs(pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();
    let events = match &hub {
        None => std::fs::read_to_string(dir.path().join("out.jsonl"))
            .unwrap()
            .lines()
            .count() as i64,
        Some(hub) => hub.events(),
    };
    let mib = |i: usize| {
        rss.iter().map(|r: &[u64; 3]| r[i]).sum::<u64>() as f64 / rss.len() as f64 / 1024.0
    };
    let (avg, anon, file) = (mib(0), mib(1), mib(2));
    let max = rss.iter().map(|r| r[0]).max().unwrap() as f64 / 1024.0;
    println!("footprint_{name}_seconds: {secs}");
    println!("footprint_{name}_events_published: {events}");
    println!("footprint_{name}_rss_avg_mib: {avg:.2}");
    println!("footprint_{name}_rss_max_mib: {max:.2}");
    println!("footprint_{name}_rss_anon_avg_mib: {anon:.2}");
    println!("footprint_{name}_rss_file_avg_mib: {file:.2}");
    println!("footprint_{name}_cpu_percent_of_one_core: {cpu:.3}");
    println!("footprint_{name}_exit: {status}");
}

/// The agent binary measured: `TCPULSE_BENCH_AGENT` (the shipped build, `cargo build
/// --profile agent -p tcpulse-agent` → `target/agent/tcpulse-agent`), else this bench's own
/// build of it (the `release` profile).
fn agent_binary() -> String {
    std::env::var("TCPULSE_BENCH_AGENT")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tcpulse-agent").to_string())
}

/// The agent binary's size, and its crate count (`cargo tree -p tcpulse-agent -e normal
/// --prefix none`: unique lines, as the issue counts them, and unique crates).
fn build_facts() {
    let bin = agent_binary();
    let size = std::fs::metadata(&bin).map_or(0, |m| m.len());
    println!(
        "binary_bytes: {size} ({:.2} MiB, {bin})",
        size as f64 / 1048576.0
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "tcpulse-agent",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--locked", "--offline"])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let lines: std::collections::BTreeSet<&str> = text.lines().collect();
            let crates: std::collections::BTreeSet<&str> =
                text.lines().map(|l| l.trim_end_matches(" (*)")).collect();
            println!("crate_tree_unique_lines: {}", lines.len());
            println!("crates: {}", crates.len());
        }
        _ => println!("crates: unknown (cargo tree failed)"),
    }
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
    build_facts();
    // TCPULSE_BENCH_PUBLISH: file, eventhubs, or both (default).
    let publish = std::env::var("TCPULSE_BENCH_PUBLISH").unwrap_or_default();
    #[cfg(target_os = "linux")]
    {
        if publish != "eventhubs" {
            footprint(secs, Publish::File);
        }
        if publish != "file" {
            footprint(secs, Publish::EventHubs);
        }
    }
    #[cfg(not(target_os = "linux"))]
    footprint(secs);
    if events > 0 {
        replay(events);
    }
}
