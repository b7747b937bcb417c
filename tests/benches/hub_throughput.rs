//! Throughput of tcpulse-hub (issue 2, part 4): events/s into and out of the hub for the
//! official Python SDK and for a minimal Rust fe2o3-amqp client, 1 KiB events, batch sizes
//! 1 and 100; and (issue 3) tcpulse's own client, `tcpulse_eventhub::client`, whose batched
//! producer and consumer are set beside the Python SDK's batch-100 row of the same run.
//! A benchmark, not a test: it prints tables and asserts only that every event came back.
//!
//! Run: `cargo bench -p tcpulse-tests --bench hub_throughput`
//! (counts scale with `TCPULSE_BENCH_SCALE`, default 1.0).
//!
//! Two layouts, chosen with `TCPULSE_BENCH_HUB`:
//!
//! - `in-process` (default): the hub runs in this process on its own tokio runtime (2 worker
//!   threads), sharing both CPUs with whichever client runs.
//! - `pinned`: the `tcpulse-hub` binary (build it first: `cargo build --release -p
//!   tcpulse-hub --bins`) runs pinned to CPU 0, and this process and the
//!   Python SDK it starts are pinned to CPU 1. The hub then stands where Azure stands, on
//!   its own CPU, and each client has one CPU of its own: the client is measured, not the
//!   client and the hub competing for the same two CPUs. Needs at least 2 CPUs.
//!
//! TLS on 127.0.0.1 either way; every case writes to its own partition, so each receive
//! reads exactly that case's events. Besides events/s, the comparison table shows CPU time
//! per event: the Python process's own, and this process's (which in `in-process` also
//! carries the hub's work, in `pinned` only the client's). The hub's own CPU time per event,
//! taking events in and serving them out, is measured in the same run for every Rust case:
//! the `tcpulse-hub` process's (`/proc/<pid>/stat`) when pinned, the hub runtime's threads'
//! (`/proc/self/task/*/stat`, threads named `hub`) in-process.
//!
//! `TCPULSE_BENCH_TAIL_EVENTS=N` (issue 17: 10,000,000 for the memory check) runs only the
//! tail case instead: a hub with `--memory-budget-bytes` `TCPULSE_BENCH_TAIL_BUDGET` (default
//! 64 MiB) and default retention; tcpulse's producer sends N 1 KiB events into one partition
//! while tcpulse's consumer reads them as they arrive (the producer waits while it is more than
//! `TCPULSE_BENCH_TAIL_LAG`, default 20,000, events ahead). The hub's RSS is sampled every
//! second and printed against the events served, with the hub's CPU time per event (in and
//! out). Use it `pinned`, so the RSS is the hub's alone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::{Receiver, SendError, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::messaging::{Body, Data, Message, Outcome, Source};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Connection, Sendable, Session};
use fe2o3_amqp_ext::filters::SelectorFilter;
use serde_json::json;
use tcpulse_tests::client::{add_or_send, tls_connector};
use tcpulse_tests::hub::{HubInfo, HubOptions, HubProcess, Mode, Policy, TestHub};
use tcpulse_tests::python::run_script;

/// The in-process hub allocates as the `tcpulse-hub` binary does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENT_BYTES: usize = 1024;
/// Event Hubs batch message format (body = data sections, each an encoded message).
const BATCH_FORMAT: u32 = 0x8001_3700;

struct Row {
    client: &'static str,
    batch: &'static str,
    events: usize,
    send_eps: f64,
    recv_eps: Option<f64>,
    /// CPU µs per event of the sending and the receiving process, where measured.
    send_cpu_us: Option<f64>,
    recv_cpu_us: Option<f64>,
    /// The hub's CPU µs per event taking the events in and serving them out.
    hub_in_cpu_us: Option<f64>,
    hub_out_cpu_us: Option<f64>,
    note: String,
}

/// Where the hub's CPU time is read.
#[derive(Clone, Copy)]
enum HubCpu {
    /// The `tcpulse-hub` process.
    Process(u32),
    /// This process's threads named `hub` (the in-process hub's runtime).
    Threads,
}

impl HubCpu {
    /// User + system CPU seconds the hub has used so far.
    fn seconds(self) -> f64 {
        match self {
            HubCpu::Process(pid) => stat_cpu_seconds(&format!("/proc/{pid}/stat")).1,
            HubCpu::Threads => std::fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
                .map(|t| stat_cpu_seconds(&t.path().join("stat").to_string_lossy()))
                .filter(|(comm, _)| comm == "hub")
                .map(|(_, s)| s)
                .sum(),
        }
    }

    /// Resident set size in KiB: the hub process's, or this whole process's in-process.
    fn rss_kib(self) -> u64 {
        let path = match self {
            HubCpu::Process(pid) => format!("/proc/{pid}/status"),
            HubCpu::Threads => "/proc/self/status".into(),
        };
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// (command name, user + system CPU seconds) from a `/proc/.../stat` file.
fn stat_cpu_seconds(path: &str) -> (String, f64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let comm = text
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map(|(c, _)| c.to_string())
        .unwrap_or_default();
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|x| x.1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (comm, (ticks(11) + ticks(12)) / 100.0)
}

/// CPU µs per event from a CPU-seconds delta.
fn per_event_us(cpu_s: f64, events: usize) -> f64 {
    cpu_s * 1e6 / events.max(1) as f64
}

/// Where the hub runs (`TCPULSE_BENCH_HUB`).
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    InProcess,
    Pinned,
}

/// User + system CPU seconds of this process (all threads), from `/proc/self/stat`.
fn self_cpu_seconds() -> f64 {
    stat_cpu_seconds("/proc/self/stat").1
}

/// Pins every thread of process `pid` (and the threads it starts later) to `cpu`.
fn pin(pid: u32, cpu: usize) -> Result<()> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-c", "-p", &cpu.to_string(), &pid.to_string()])
        .output()
        .context("run taskset (util-linux)")?;
    ensure!(
        out.status.success(),
        "taskset -a -c -p {cpu} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("TCPULSE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(10)
}

fn main() -> Result<()> {
    // cargo bench passes `--bench`; ignore arguments.
    let layout = match std::env::var("TCPULSE_BENCH_HUB").as_deref() {
        Ok("pinned") => Layout::Pinned,
        Ok("in-process") | Ok("") | Err(_) => Layout::InProcess,
        Ok(other) => bail!("TCPULSE_BENCH_HUB={other:?}: use in-process or pinned"),
    };
    let work = match env_usize("TCPULSE_BENCH_TAIL_EVENTS")? {
        Some(events) => Work::Tail(TailSpec {
            events,
            budget: env_usize("TCPULSE_BENCH_TAIL_BUDGET")?.unwrap_or(64 << 20) as u64,
            lag: env_usize("TCPULSE_BENCH_TAIL_LAG")?.unwrap_or(20_000),
        }),
        None => Work::All,
    };
    let opts = match &work {
        Work::All => bench_hub(),
        Work::Tail(spec) => tail_hub(spec),
    };
    let report = match layout {
        Layout::InProcess => {
            let hub_rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("hub")
                .enable_all()
                .build()?;
            let hub = hub_rt.block_on(TestHub::start_with(opts))?;
            let info = hub.info.clone();
            let rt = client_runtime()?;
            let report = rt.block_on(run(&work, &info, HubCpu::Threads))?;
            hub_rt.block_on(hub.shutdown());
            report
        }
        Layout::Pinned => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            ensure!(
                cpus >= 2,
                "TCPULSE_BENCH_HUB=pinned needs 2 CPUs, this machine has {cpus}"
            );
            // Pin before the runtime starts its threads: they inherit the mask, and so does
            // the Python interpreter started later.
            pin(std::process::id(), 1)?;
            let rt = client_runtime()?;
            rt.block_on(async {
                let mut hub = HubProcess::spawn(opts).await?;
                let pid = hub.pid().context("the hub process has no pid")?;
                pin(pid, 0)?;
                let report = run(&work, &hub.info, HubCpu::Process(pid)).await;
                hub.stop(Duration::from_secs(10)).await?;
                report
            })?
        }
    };
    let rows = match report {
        Report::Rows(rows) => rows,
        Report::Tail(tail) => {
            print_tail(&tail, layout);
            return Ok(());
        }
    };

    println!();
    println!(
        "tcpulse-hub throughput (1 KiB events, TLS on 127.0.0.1, {}, one partition per case)",
        match layout {
            Layout::InProcess => "in-process hub sharing both CPUs with the client",
            Layout::Pinned => "tcpulse-hub binary pinned to CPU 0, clients pinned to CPU 1",
        }
    );
    println!(
        "| {:<22} | {:>5} | {:>6} | {:>14} | {:>15} | {:>10} | {:>11} | note |",
        "client", "batch", "events", "into hub ev/s", "out of hub ev/s", "hub in µs", "hub out µs"
    );
    println!(
        "|{:-<24}|{:->7}|{:->8}|{:->16}|{:->17}|{:->12}|{:->13}|{:-<6}|",
        "", "", "", "", "", "", "", ""
    );
    let opt = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
    };
    for r in &rows {
        println!(
            "| {:<22} | {:>5} | {:>6} | {:>14.0} | {:>15} | {:>10} | {:>11} | {} |",
            r.client,
            r.batch,
            r.events,
            r.send_eps,
            opt(r.recv_eps, 0),
            opt(r.hub_in_cpu_us, 2),
            opt(r.hub_out_cpu_us, 2),
            r.note
        );
    }
    println!("(hub in/out µs: the hub's CPU µs per event taking the case's events in and serving them out)");
    let python = rows
        .iter()
        .find(|r| r.client == "python azure-eventhub" && r.batch == "100");
    let ours = rows.iter().find(|r| r.client == "tcpulse-eventhub client");
    if let (Some(py), Some(us)) = (python, ours) {
        let recv = |r: &Row| r.recv_eps.unwrap_or(0.0);
        println!();
        println!(
            "tcpulse client against the Python SDK (batch 100) in this run; target: 10x both ways"
        );
        println!("| direction | python ev/s | tcpulse ev/s | ratio | target met | python CPU µs/event | tcpulse CPU µs/event{} | CPU ratio |",
            if layout == Layout::InProcess { " (incl. the hub)" } else { "" });
        println!("|---|---|---|---|---|---|---|---|");
        let us_fmt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        for (what, p, t, pc, tc) in [
            (
                "producer (into hub)",
                py.send_eps,
                us.send_eps,
                py.send_cpu_us,
                us.send_cpu_us,
            ),
            (
                "consumer (out of hub)",
                recv(py),
                recv(us),
                py.recv_cpu_us,
                us.recv_cpu_us,
            ),
        ] {
            let ratio = t / p.max(1e-9);
            let cpu_ratio = match (pc, tc) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.1}x", a / b),
                _ => "-".into(),
            };
            println!(
                "| {what} | {p:.0} | {t:.0} | {ratio:.1}x | {} | {} | {} | {cpu_ratio} |",
                if ratio >= 10.0 { "yes" } else { "no" },
                us_fmt(pc),
                us_fmt(tc),
            );
        }
    }
    Ok(())
}

/// The hub every layout starts: one hub `bench` with 8 partitions, TLS only.
fn bench_hub() -> HubOptions {
    HubOptions {
        hubs: vec![("bench".into(), 8)],
        plain: false,
        // In memory, the budget bounds retention: keep every event a case sends (at most
        // about 110 MiB in one partition; the budget is split over the 8).
        memory_budget_bytes: Some(2 << 30),
        // The binary keeps every event of a scaled-up run (TestHub ignores this: 100,000).
        extra_args: vec!["--retention-events".into(), "2000000".into()],
        ..HubOptions::default()
    }
}

/// The tail case's settings (`TCPULSE_BENCH_TAIL_*`).
struct TailSpec {
    /// Events sent and served.
    events: usize,
    /// The hub's `--memory-budget-bytes`.
    budget: u64,
    /// How far the producer may run ahead of the consumer, in events.
    lag: usize,
}

/// The tail case's hub: one hub `bench` with 4 partitions, the given memory budget, default
/// retention (100,000 events per partition), TLS only.
fn tail_hub(spec: &TailSpec) -> HubOptions {
    HubOptions {
        hubs: vec![("bench".into(), 4)],
        plain: false,
        memory_budget_bytes: Some(spec.budget),
        ..HubOptions::default()
    }
}

/// One RSS sample of the tail case.
struct RssSample {
    served: usize,
    rss_kib: u64,
}

/// What the tail case measured.
struct TailReport {
    events: usize,
    budget: u64,
    seconds: f64,
    hub_cpu_s: f64,
    client_cpu_s: f64,
    samples: Vec<RssSample>,
}

/// tcpulse's client config for the hub, over TLS with the hub's CA, with the manage policy.
fn manage_config(info: &HubInfo) -> Result<tcpulse_eventhub::client::ClientConfig> {
    use tcpulse_eventhub::client::{ClientConfig, ClientOptions};
    Ok(ClientConfig::from_connection_string(
        info.connection_string(Mode::Tls, Policy::Manage)?,
        None,
        ClientOptions {
            extra_ca_file: Some(info.ca_pem.clone()),
            ..ClientOptions::default()
        },
    )?)
}

/// Sends `spec.events` events into partition 0 while a consumer reads them as they arrive,
/// sampling the hub's RSS every second.
async fn tail_case(info: &HubInfo, hub: HubCpu, spec: &TailSpec) -> Result<TailReport> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tcpulse_eventhub::client::{
        BatchOptions, Consumer, ConsumerOptions, EventData, Producer, StartPosition,
    };
    let config = manage_config(info)?;
    let served = Arc::new(AtomicUsize::new(0));
    let mut consumer = Consumer::connect(
        config.clone(),
        ConsumerOptions {
            start: StartPosition::Earliest,
            prefetch: 2000,
            ..ConsumerOptions::new("0")
        },
    )
    .await?;
    let mut producer = Producer::connect(config).await?;
    let (events, lag) = (spec.events, spec.lag);
    let cpu0 = (hub.seconds(), self_cpu_seconds());
    let started = Instant::now();
    let sent = {
        let served = served.clone();
        tokio::spawn(async move {
            let body = bytes::Bytes::from(vec![b'x'; EVENT_BYTES]);
            let to = BatchOptions {
                partition_id: Some("0".into()),
                ..BatchOptions::default()
            };
            let mut batch = producer.create_batch(to.clone())?;
            for i in 0..events {
                while i > served.load(Ordering::Relaxed) + lag {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let event = EventData::new(body.clone()).with_property("i", i as i64);
                add_or_send(&mut producer, &mut batch, &to, event).await?;
            }
            producer.send_batch(&batch).await?;
            producer.close().await;
            anyhow::Ok(())
        })
    };
    let mut samples = vec![RssSample {
        served: 0,
        rss_kib: hub.rss_kib(),
    }];
    let mut next_sample = Instant::now() + Duration::from_secs(1);
    let mut got = 0usize;
    while got < events {
        let batch = consumer.recv_batch(1000, Duration::from_secs(30)).await?;
        ensure!(
            !batch.is_empty(),
            "consumer stalled after {got} of {events}"
        );
        for e in &batch {
            ensure!(
                e.sequence_number == got as i64,
                "event {got}: got sequence number {} (retention overtook the consumer?)",
                e.sequence_number
            );
            got += 1;
        }
        served.store(got, Ordering::Relaxed);
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            samples.push(RssSample {
                served: got,
                rss_kib: hub.rss_kib(),
            });
            if samples.len() % 30 == 0 {
                eprintln!(
                    "tail: {got} of {events} served, hub RSS {:.1} MiB",
                    hub.rss_kib() as f64 / 1024.0
                );
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (hub_cpu_s, client_cpu_s) = (hub.seconds() - cpu0.0, self_cpu_seconds() - cpu0.1);
    samples.push(RssSample {
        served: got,
        rss_kib: hub.rss_kib(),
    });
    sent.await.context("producer task")??;
    consumer.close().await;
    Ok(TailReport {
        events,
        budget: spec.budget,
        seconds,
        hub_cpu_s,
        client_cpu_s,
        samples,
    })
}

fn print_tail(t: &TailReport, layout: Layout) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let at = |pct: usize| {
        let want = t.events * pct / 100;
        t.samples
            .iter()
            .find(|s| s.served >= want)
            .map_or(0, |s| s.rss_kib)
    };
    let max = t.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let after_first = t
        .samples
        .iter()
        .filter(|s| s.served >= t.events / 10)
        .map(|s| s.rss_kib);
    let (lo, hi) = after_first.fold((u64::MAX, 0), |(lo, hi), r| (lo.min(r), hi.max(r)));
    println!();
    println!(
        "tcpulse-hub tail: {} 1 KiB events through one partition, memory budget {:.0} MiB, default retention ({})",
        t.events,
        t.budget as f64 / 1_048_576.0,
        match layout {
            Layout::InProcess => "in-process: RSS is the whole bench process",
            Layout::Pinned => "tcpulse-hub binary pinned to CPU 0, clients on CPU 1",
        }
    );
    println!("| ev/s | hub CPU µs/event (in + out) | client CPU µs/event (producer + consumer) | hub RSS at 1 % | 10 % | 50 % | 100 % | max | range after 10 % |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {:.0} | {:.2} | {:.2} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1}–{:.1} MiB |",
        t.events as f64 / t.seconds.max(1e-9),
        per_event_us(t.hub_cpu_s, t.events),
        per_event_us(t.client_cpu_s, t.events),
        mib(at(1)),
        mib(at(10)),
        mib(at(50)),
        mib(at(100)),
        mib(max),
        mib(lo.min(hi)),
        mib(hi),
    );
}

/// The clients' runtime: tokio's default worker count, one per CPU this process may use (as
/// `#[tokio::main]` does), so 2 in-process and 1 when pinned.
fn client_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .thread_name("client")
        .enable_all()
        .build()?)
}

/// What one invocation runs.
enum Work {
    /// The Python, fe2o3 and tcpulse cases, each into and out of its own partition.
    All,
    /// The tail case only.
    Tail(TailSpec),
}

/// What one invocation measured.
enum Report {
    Rows(Vec<Row>),
    Tail(TailReport),
}

async fn run(work: &Work, info: &HubInfo, hub: HubCpu) -> Result<Report> {
    Ok(match work {
        Work::All => Report::Rows(run_all(info, hub).await?),
        Work::Tail(spec) => Report::Tail(tail_case(info, hub, spec).await?),
    })
}

/// An optional count from the environment (`_` separators allowed).
fn env_usize(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(
            v.replace('_', "")
                .parse()
                .with_context(|| format!("{name}={v:?} is not a count"))?,
        )),
        Err(_) => Ok(None),
    }
}

async fn run_all(info: &HubInfo, hub: HubCpu) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    // TCPULSE_BENCH_ONLY=python|rust runs one half; =tcpulse only tcpulse's client.
    let only = std::env::var("TCPULSE_BENCH_ONLY").unwrap_or_default();
    // Python SDK.
    for (pid, batch, count) in [("0", 1usize, scaled(2_000)), ("1", 100, scaled(20_000))] {
        if only == "rust" || only == "tcpulse" {
            break;
        }
        eprintln!("python: batch {batch}, {count} events…");
        let hub0 = hub.seconds();
        let out = run_script(
            "bench",
            json!({
                "send_conn": info.conn(Mode::Tls, Policy::Send)?,
                "listen_conn": info.conn(Mode::Tls, Policy::Listen)?,
                "partition_id": pid, "count": count, "size": EVENT_BYTES, "batch_size": batch,
                "receive_timeout_s": 300,
            }),
            Duration::from_secs(900),
        )
        .await?;
        let hub_us = per_event_us(hub.seconds() - hub0, count);
        let got = out["receive"]["events"].as_u64().unwrap_or(0) as usize;
        ensure!(
            got == count,
            "python batch {batch}: received {got} of {count}"
        );
        rows.push(Row {
            client: "python azure-eventhub",
            batch: if batch == 1 { "1" } else { "100" },
            events: count,
            send_eps: out["send"]["eps"].as_f64().unwrap_or(0.0),
            recv_eps: out["receive"]["eps"].as_f64(),
            send_cpu_us: out["send"]["cpu_s"]
                .as_f64()
                .map(|c| c * 1e6 / count as f64),
            recv_cpu_us: out["receive"]["cpu_s"]
                .as_f64()
                .map(|c| c * 1e6 / count as f64),
            hub_in_cpu_us: None,
            hub_out_cpu_us: None,
            note: if batch == 1 {
                format!(
                    "send_event per event; receive() callback per event; hub in+out {hub_us:.1} µs"
                )
            } else {
                format!("EventDataBatch of 100; receive_batch(100); hub in+out {hub_us:.1} µs")
            },
        });
    }
    // Rust fe2o3-amqp.
    for (pid, batch, window, count, client, note) in [
        (
            "2",
            1usize,
            1usize,
            scaled(5_000),
            "rust fe2o3-amqp",
            "send() awaits each outcome",
        ),
        (
            "3",
            1,
            256,
            scaled(20_000),
            "rust fe2o3-amqp",
            "send_batchable, 256 in flight",
        ),
        (
            "4",
            100,
            1,
            scaled(50_000),
            "rust fe2o3-amqp",
            "format 0x80013700, awaits each outcome",
        ),
    ] {
        if only == "python" || only == "tcpulse" {
            break;
        }
        eprintln!("rust: batch {batch}, window {window}, {count} events…");
        let (send_eps, recv_eps, hub_in, hub_out) = rust_case(info, hub, pid, batch, window, count)
            .await
            .with_context(|| format!("rust case batch {batch} window {window}"))?;
        rows.push(Row {
            client,
            batch: if batch == 1 { "1" } else { "100" },
            events: count,
            send_eps,
            recv_eps: Some(recv_eps),
            send_cpu_us: None,
            recv_cpu_us: None,
            hub_in_cpu_us: Some(per_event_us(hub_in, count)),
            hub_out_cpu_us: Some(per_event_us(hub_out, count)),
            note: note.into(),
        });
    }
    if only != "python" {
        let count = scaled(100_000);
        eprintln!("tcpulse client: batched producer and consumer, {count} events…");
        let ours = tcpulse_client_case(info, hub, "5", count)
            .await
            .context("tcpulse client case")?;
        rows.push(Row {
            client: "tcpulse-eventhub client",
            batch: "full",
            events: count,
            send_eps: ours.send_eps,
            recv_eps: Some(ours.recv_eps),
            send_cpu_us: Some(ours.send_cpu_s * 1e6 / count as f64),
            recv_cpu_us: Some(ours.recv_cpu_s * 1e6 / count as f64),
            hub_in_cpu_us: Some(per_event_us(ours.hub_send_cpu_s, count)),
            hub_out_cpu_us: Some(per_event_us(ours.hub_recv_cpu_s, count)),
            note: "Producer batches filled to 1 MiB; Consumer prefetch 2000, recv_batch(1000)"
                .into(),
        });
    }
    Ok(rows)
}

/// What the tcpulse client case measured.
struct Ours {
    send_eps: f64,
    recv_eps: f64,
    /// This process's CPU seconds over each phase (connect included for receive).
    send_cpu_s: f64,
    recv_cpu_s: f64,
    /// The hub's CPU seconds over each phase.
    hub_send_cpu_s: f64,
    hub_recv_cpu_s: f64,
}

/// tcpulse's client: a batched producer fills partition `pid`, then a consumer reads it all
/// from the earliest event.
async fn tcpulse_client_case(info: &HubInfo, hub: HubCpu, pid: &str, count: usize) -> Result<Ours> {
    use tcpulse_eventhub::client::{
        BatchOptions, Consumer, ConsumerOptions, EventData, Producer, StartPosition,
    };
    let config = manage_config(info)?;
    let body = bytes::Bytes::from(vec![b'x'; EVENT_BYTES]);
    let to = BatchOptions {
        partition_id: Some(pid.into()),
        ..BatchOptions::default()
    };
    let mut producer = Producer::connect(config.clone()).await?;
    let cpu0 = self_cpu_seconds();
    let hub0 = hub.seconds();
    let started = Instant::now();
    let mut batch = producer.create_batch(to.clone())?;
    for i in 0..count {
        let event = EventData::new(body.clone()).with_property("i", i as i64);
        add_or_send(&mut producer, &mut batch, &to, event).await?;
    }
    producer.send_batch(&batch).await?;
    let send_eps = count as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let send_cpu_s = self_cpu_seconds() - cpu0;
    let hub_send_cpu_s = hub.seconds() - hub0;
    producer.close().await;
    eprintln!("tcpulse client: {count} events in; reading them back…");

    let cpu1 = self_cpu_seconds();
    let hub1 = hub.seconds();
    let mut consumer = Consumer::connect(
        config,
        ConsumerOptions {
            start: StartPosition::Earliest,
            prefetch: 2000,
            ..ConsumerOptions::new(pid)
        },
    )
    .await?;
    let started = Instant::now();
    let mut got = 0usize;
    while got < count {
        let events = consumer.recv_batch(1000, Duration::from_secs(30)).await?;
        ensure!(
            !events.is_empty(),
            "consumer stalled after {got} of {count}"
        );
        got += events.len();
    }
    let recv_eps = got as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let recv_cpu_s = self_cpu_seconds() - cpu1;
    let hub_recv_cpu_s = hub.seconds() - hub1;
    consumer.close().await;
    ensure!(got == count, "tcpulse client: received {got} of {count}");
    Ok(Ours {
        send_eps,
        recv_eps,
        send_cpu_s,
        recv_cpu_s,
        hub_send_cpu_s,
        hub_recv_cpu_s,
    })
}

async fn connect(
    info: &HubInfo,
    policy: Policy,
    name: &str,
) -> Result<fe2o3_amqp::connection::ConnectionHandle<()>> {
    let (username, password) = info.key(policy)?;
    let url = format!("amqps://{}", info.amqps);
    Connection::builder()
        .container_id(name)
        .alt_tls_establishment(true)
        .tls_connector(tls_connector(&info.ca_pem)?)
        .domain("localhost")
        .hostname("localhost")
        .sasl_profile(SaslProfile::Plain { username, password })
        .max_frame_size(65536)
        .open(url.as_str())
        .await
        .context("open fe2o3 connection")
}

fn event_message(body: &[u8]) -> Message<Data> {
    Message::builder().data(Binary::from(body.to_vec())).build()
}

fn batch_message(body: &[u8], n: usize) -> Result<Sendable<Body<Value>>> {
    let mut sections = Vec::with_capacity(n);
    for _ in 0..n {
        let encoded = serde_amqp::to_vec(&Serializable(event_message(body)))?;
        sections.push(Data(Binary::from(encoded)));
    }
    let envelope: Message<Body<Value>> = Message::builder()
        .body(Body::Data(sections.into_iter().collect()))
        .build();
    Ok(Sendable::builder()
        .message(envelope)
        .message_format(BATCH_FORMAT)
        .build())
}

/// Bounds one setup or transfer step, so a stuck hub fails the bench instead of hanging it.
async fn step<T, E>(what: &str, fut: impl std::future::Future<Output = Result<T, E>>) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(Duration::from_secs(30), fut).await {
        Ok(r) => r.with_context(|| what.to_string()),
        Err(_) => bail!("{what}: no answer from the hub within 30 s"),
    }
}

fn check_outcome(outcome: Outcome) -> Result<()> {
    match outcome {
        Outcome::Accepted(_) => Ok(()),
        other => bail!("send not accepted: {other:?}"),
    }
}

/// (events/s in, events/s out, the hub's CPU seconds taking them in, serving them out).
async fn rust_case(
    info: &HubInfo,
    hub_cpu: HubCpu,
    pid: &str,
    batch: usize,
    window: usize,
    count: usize,
) -> Result<(f64, f64, f64, f64)> {
    let hub = info.hub_name().to_string();
    let body = vec![b'r'; EVENT_BYTES];

    // Into the hub.
    let mut conn = connect(info, Policy::Send, "bench-rust-sender").await?;
    let mut session = Session::begin(&mut conn).await?;
    let mut sender = Sender::attach(
        &mut session,
        "bench-sender",
        format!("{hub}/Partitions/{pid}"),
    )
    .await?;
    let hub0 = hub_cpu.seconds();
    let t0 = Instant::now();
    if batch == 1 {
        let mut in_flight: VecDeque<DeliveryFut<Result<Outcome, SendError>>> = VecDeque::new();
        for _ in 0..count {
            if window <= 1 {
                check_outcome(step("send", sender.send(event_message(&body))).await?)?;
            } else {
                if in_flight.len() >= window {
                    if let Some(f) = in_flight.pop_front() {
                        check_outcome(step("outcome", f).await?)?;
                    }
                }
                in_flight.push_back(
                    step(
                        "send_batchable",
                        sender.send_batchable(event_message(&body)),
                    )
                    .await?,
                );
            }
        }
        while let Some(f) = in_flight.pop_front() {
            check_outcome(step("outcome", f).await?)?;
        }
    } else {
        let mut left = count;
        while left > 0 {
            let n = left.min(batch);
            check_outcome(step("send batch", sender.send(batch_message(&body, n)?)).await?)?;
            left -= n;
        }
    }
    let send_s = t0.elapsed().as_secs_f64();
    let hub_in = hub_cpu.seconds() - hub0;
    sender.close().await.ok();
    session.end().await.ok();
    conn.close().await.ok();

    // Out of the hub.
    let mut conn = tokio::time::timeout(
        Duration::from_secs(30),
        connect(info, Policy::Listen, "bench-rust-receiver"),
    )
    .await
    .context("connect: no answer within 30 s")??;
    let mut session = step("begin session", Session::begin(&mut conn)).await?;
    let receiver = Receiver::builder()
        .name("bench-receiver")
        .source(
            Source::builder()
                .address(format!("{hub}/ConsumerGroups/$Default/Partitions/{pid}"))
                .add_to_filter(
                    "apache.org:selector-filter:string",
                    SelectorFilter::new("amqp.annotation.x-opt-offset > '-1'"),
                )
                .build(),
        )
        .sender_settle_mode(SenderSettleMode::Settled)
        .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Auto(1000))
        .attach(&mut session);
    let mut receiver = step("attach receiver", receiver).await?;
    let hub1 = hub_cpu.seconds();
    let mut got = 0usize;
    let mut first: Option<Instant> = None;
    let deadline = Duration::from_secs(30);
    while got < count {
        let delivery = tokio::time::timeout(deadline, receiver.recv::<Body<Value>>())
            .await
            .with_context(|| format!("receive stalled after {got} of {count}"))??;
        if first.is_none() {
            first = Some(Instant::now());
        }
        let len = match delivery.body() {
            Body::Data(batch) => batch.iter().map(|d| d.0.len()).sum(),
            _ => 0,
        };
        ensure!(len == EVENT_BYTES, "event {got}: body of {len} bytes");
        // The hub sends pre-settled; accepting is harmless and is what makes fe2o3's
        // CreditMode::Auto grant new credit.
        step("accept", receiver.accept(&delivery)).await?;
        got += 1;
    }
    let recv_s = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    let hub_out = hub_cpu.seconds() - hub1;
    receiver.close().await.ok();
    session.end().await.ok();
    conn.close().await.ok();
    Ok((
        count as f64 / send_s,
        (count.saturating_sub(1)) as f64 / recv_s,
        hub_in,
        hub_out,
    ))
}
