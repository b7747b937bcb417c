//! Client throughput against the in-process hub over TLS (loopback, one process).
//!
//! Producer: 1 KiB events, batched up to the link's max message size, one partition.
//! Consumer: the same events from the earliest position. Prints a table.
//!
//! The hub runs on its own tokio runtime (threads named `hub`), the client on another
//! (threads named `client`), so each side's CPU time is read from its threads
//! (`/proc/self/task/*/stat`) over each row: CPU µs per event of the client and of the hub,
//! in the same run. The runtimes share the machine's CPUs.
//!
//! `cargo bench -p tcpulse-eventhub --bench client_throughput`
//! (`CLIENT_BENCH_EVENTS` overrides the event count.)

use std::time::{Duration, Instant};

/// The allocator the `tcpulse-hub` and `tcpulse-collector` binaries use.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use tcpulse_eventhub::client::{
    BatchOptions, ClientConfig, ClientOptions, Consumer, ConsumerOptions, EventData, Producer,
    SendOptions, StartPosition, TryAddError,
};
use tcpulse_hub::{Hub, HubConfig, HubSpec};

/// User + system CPU seconds of this process's threads whose name is `name`.
fn threads_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| {
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1;
            (comm == name).then_some(rest.to_string())
        })
        .map(|rest| {
            // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command name.
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (tick(11) + tick(12)) / 100.0
        })
        .sum()
}

/// CPU seconds of the client's and the hub's threads.
fn cpu_now() -> (f64, f64) {
    (threads_cpu_seconds("client"), threads_cpu_seconds("hub"))
}

/// One table row: rate, and CPU µs per event of each side since `cpu0`.
fn row(what: &str, events: usize, took: Duration, bytes: usize, cpu0: (f64, f64)) {
    let secs = took.as_secs_f64().max(1e-9);
    let (client, hub) = cpu_now();
    let per_event = |s: f64| s * 1e6 / events.max(1) as f64;
    println!(
        "| {what:<34} | {events:>8} | {:>8.2} | {:>11.0} | {:>8.1} | {:>10.2} | {:>7.2} |",
        secs,
        events as f64 / secs,
        bytes as f64 / secs / 1_048_576.0,
        per_event(client - cpu0.0),
        per_event(hub - cpu0.1),
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: usize = std::env::var("CLIENT_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let hub_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hub")
        .enable_all()
        .build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()?;
    let tmp = tempfile::tempdir()?;
    let hub = hub_rt.block_on(Hub::start(HubConfig {
        listen: "127.0.0.1:0".parse()?,
        hubs: vec![HubSpec {
            name: "tcpulse".into(),
            partitions: 4,
        }],
        tls_dir: Some(tmp.path().join("tls")),
        retention_events: events * 2 + 10_000,
        // In memory the budget bounds retention, split over the 4 partitions: room for
        // every event in partition 0 (1 KiB bodies, about 1.1 KiB stored).
        memory_budget_bytes: 4 * (events as u64 * 1200 + (16 << 20)),
        ..HubConfig::default()
    }))?;
    let result = rt.block_on(async {
        let options = ClientOptions {
            extra_ca_file: Some(hub.ca_pem_path().to_path_buf()),
            ..ClientOptions::default()
        };
        let cfg =
            ClientConfig::from_connection_string(&hub.connection_strings().manage, None, options)?;
        let body = vec![b'x'; 1024];

        println!(
            "| {:<34} | {:>8} | {:>8} | {:>11} | {:>8} | {:>10} | {:>7} |",
            "operation", "events", "seconds", "events/s", "MiB/s", "client µs", "hub µs"
        );
        println!(
            "|{:-<36}|{:-<10}|{:-<10}|{:-<13}|{:-<10}|{:-<12}|{:-<9}|",
            "", "", "", "", "", "", ""
        );

        // Producer, batched.
        let mut p = Producer::connect(cfg.clone()).await?;
        let to0 = BatchOptions {
            partition_id: Some("0".into()),
            ..BatchOptions::default()
        };
        let cpu0 = cpu_now();
        let started = Instant::now();
        let mut batch = p.create_batch(to0.clone())?;
        let mut batches = 0usize;
        for i in 0..events {
            let e = EventData::new(body.clone()).with_property("i", i as i64);
            match batch.try_add(e) {
                Ok(()) => {}
                Err(TryAddError::Full { event, .. }) => {
                    p.send_batch(&batch).await?;
                    batches += 1;
                    batch = p.create_batch(to0.clone())?;
                    batch.try_add(*event)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        p.send_batch(&batch).await?;
        batches += 1;
        let took = started.elapsed();
        row(
            &format!("producer, batched ({} batches)", batches),
            events,
            took,
            events * 1024,
            cpu0,
        );

        // Producer, one event per send (for contrast).
        let singles = (events / 50).max(100);
        let cpu0 = cpu_now();
        let started = Instant::now();
        for i in 0..singles {
            p.send(
                EventData::new(body.clone()).with_property("i", i as i64),
                SendOptions {
                    partition_id: Some("1".into()),
                    ..SendOptions::default()
                },
            )
            .await?;
        }
        row(
            "producer, single sends",
            singles,
            started.elapsed(),
            singles * 1024,
            cpu0,
        );
        p.close().await;

        // Consumer from earliest.
        for prefetch in [300u32, 2000] {
            let cpu0 = cpu_now();
            let mut c = Consumer::connect(
                cfg.clone(),
                ConsumerOptions {
                    start: StartPosition::Earliest,
                    prefetch,
                    ..ConsumerOptions::new("0")
                },
            )
            .await?;
            let started = Instant::now();
            let mut n = 0usize;
            while n < events {
                let got = c.recv_batch(1000, Duration::from_secs(10)).await?;
                if got.is_empty() {
                    return Err(format!("consumer stalled at {n}").into());
                }
                n += got.len();
            }
            row(
                &format!("consumer, prefetch {prefetch}"),
                n,
                started.elapsed(),
                n * 1024,
                cpu0,
            );
            c.close().await;
        }
        println!("(client µs, hub µs: CPU µs per event of the client's and the hub's runtime threads over the row)");
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    hub_rt.block_on(hub.shutdown());
    result
}
