//! Client throughput against the in-process hub over TLS (loopback, one process).
//!
//! Producer: 1 KiB events, batched up to the link's max message size, one partition.
//! Consumer: the same events from the earliest position. Prints a table.
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

fn row(what: &str, events: usize, took: Duration, bytes: usize) {
    let secs = took.as_secs_f64().max(1e-9);
    println!(
        "| {what:<34} | {events:>8} | {:>8.2} | {:>11.0} | {:>8.1} |",
        secs,
        events as f64 / secs,
        bytes as f64 / secs / 1_048_576.0
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: usize = std::env::var("CLIENT_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let tmp = tempfile::tempdir()?;
        let hub = Hub::start(HubConfig {
            listen: "127.0.0.1:0".parse()?,
            hubs: vec![HubSpec {
                name: "tcpulse".into(),
                partitions: 4,
            }],
            tls_dir: Some(tmp.path().join("tls")),
            retention_events: events * 2 + 10_000,
            ..HubConfig::default()
        })
        .await?;
        let options = ClientOptions {
            extra_ca_file: Some(hub.ca_pem_path().to_path_buf()),
            ..ClientOptions::default()
        };
        let cfg =
            ClientConfig::from_connection_string(&hub.connection_strings().manage, None, options)?;
        let body = vec![b'x'; 1024];

        println!(
            "| {:<34} | {:>8} | {:>8} | {:>11} | {:>8} |",
            "operation", "events", "seconds", "events/s", "MiB/s"
        );
        println!(
            "|{:-<36}|{:-<10}|{:-<10}|{:-<13}|{:-<10}|",
            "", "", "", "", ""
        );

        // Producer, batched.
        let mut p = Producer::connect(cfg.clone()).await?;
        let to0 = BatchOptions {
            partition_id: Some("0".into()),
            ..BatchOptions::default()
        };
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
        );

        // Producer, one event per send (for contrast).
        let singles = (events / 50).max(100);
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
        );
        p.close().await;

        // Consumer from earliest.
        for prefetch in [300u32, 2000] {
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
            );
            c.close().await;
        }
        hub.shutdown().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
