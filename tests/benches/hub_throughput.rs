//! Throughput of tcpulse-hub (issue 2, part 4): events/s into and out of the hub for the
//! official Python SDK and for a minimal Rust fe2o3-amqp client, 1 KiB events, batch sizes
//! 1 and 100; and (issue 3) tcpulse's own client, `tcpulse_eventhub::client`, whose batched
//! producer and consumer are set beside the Python SDK's batch-100 row of the same run.
//! A benchmark, not a test: it prints tables and asserts only that every event came back.
//!
//! Run: `cargo bench -p tcpulse-tests --bench hub_throughput`
//! (counts scale with `TCPULSE_BENCH_SCALE`, default 1.0).
//!
//! The hub runs in-process on its own tokio runtime (2 worker threads) with TLS on
//! 127.0.0.1; every case writes to its own partition, so each receive reads exactly that
//! case's events.

use std::collections::VecDeque;
use std::io::BufReader;
use std::sync::Arc;
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
use tcpulse_tests::hub::{HubInfo, HubOptions, Mode, Policy, TestHub};
use tcpulse_tests::python::run_script;
use tokio_rustls::rustls;

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
    note: String,
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
    let hub_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hub")
        .enable_all()
        .build()?;
    let hub = hub_rt.block_on(TestHub::start_with(HubOptions {
        hubs: vec![("bench".into(), 8)],
        plain: false,
        ..HubOptions::default()
    }))?;
    let info = hub.info.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()?;
    let rows = rt.block_on(run_all(&info))?;
    hub_rt.block_on(hub.shutdown());

    println!();
    println!("tcpulse-hub throughput (1 KiB events, TLS on 127.0.0.1, in-process hub, one partition per case)");
    println!(
        "| {:<22} | {:>5} | {:>6} | {:>14} | {:>15} | note |",
        "client", "batch", "events", "into hub ev/s", "out of hub ev/s"
    );
    println!(
        "|{:-<24}|{:->7}|{:->8}|{:->16}|{:->17}|{:-<6}|",
        "", "", "", "", "", ""
    );
    for r in &rows {
        println!(
            "| {:<22} | {:>5} | {:>6} | {:>14.0} | {:>15} | {} |",
            r.client,
            r.batch,
            r.events,
            r.send_eps,
            r.recv_eps
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into()),
            r.note
        );
    }
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
        println!("| direction | python ev/s | tcpulse ev/s | ratio | target met |");
        println!("|---|---|---|---|---|");
        for (what, p, t) in [
            ("producer (into hub)", py.send_eps, us.send_eps),
            ("consumer (out of hub)", recv(py), recv(us)),
        ] {
            let ratio = t / p.max(1e-9);
            println!(
                "| {what} | {p:.0} | {t:.0} | {ratio:.1}x | {} |",
                if ratio >= 10.0 { "yes" } else { "no" }
            );
        }
    }
    Ok(())
}

async fn run_all(info: &HubInfo) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    // TCPULSE_BENCH_ONLY=python|rust runs one half.
    let only = std::env::var("TCPULSE_BENCH_ONLY").unwrap_or_default();
    // Python SDK.
    for (pid, batch, count) in [("0", 1usize, scaled(2_000)), ("1", 100, scaled(20_000))] {
        if only == "rust" {
            break;
        }
        eprintln!("python: batch {batch}, {count} events…");
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
            note: if batch == 1 {
                "send_event per event; receive() callback per event".into()
            } else {
                "EventDataBatch of 100; receive_batch(100)".into()
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
        if only == "python" {
            break;
        }
        eprintln!("rust: batch {batch}, window {window}, {count} events…");
        let (send_eps, recv_eps) = rust_case(info, pid, batch, window, count)
            .await
            .with_context(|| format!("rust case batch {batch} window {window}"))?;
        rows.push(Row {
            client,
            batch: if batch == 1 { "1" } else { "100" },
            events: count,
            send_eps,
            recv_eps: Some(recv_eps),
            note: note.into(),
        });
    }
    if only != "python" {
        let count = scaled(100_000);
        eprintln!("tcpulse client: batched producer and consumer, {count} events…");
        let (send_eps, recv_eps) = tcpulse_client_case(info, "5", count)
            .await
            .context("tcpulse client case")?;
        rows.push(Row {
            client: "tcpulse-eventhub client",
            batch: "full",
            events: count,
            send_eps,
            recv_eps: Some(recv_eps),
            note: "Producer batches filled to 1 MiB; Consumer prefetch 2000, recv_batch(1000)"
                .into(),
        });
    }
    Ok(rows)
}

/// tcpulse's client: a batched producer fills partition `pid`, then a consumer reads it all
/// from the earliest event. Returns (events/s in, events/s out).
async fn tcpulse_client_case(info: &HubInfo, pid: &str, count: usize) -> Result<(f64, f64)> {
    use tcpulse_eventhub::client::{
        BatchOptions, ClientConfig, ClientOptions, Consumer, ConsumerOptions, EventData, Producer,
        StartPosition, TryAddError,
    };
    let config = ClientConfig::from_connection_string(
        info.connection_string(Mode::Tls, Policy::Manage)?,
        None,
        ClientOptions {
            extra_ca_file: Some(info.ca_pem.clone()),
            ..ClientOptions::default()
        },
    )?;
    let body = bytes::Bytes::from(vec![b'x'; EVENT_BYTES]);
    let to = BatchOptions {
        partition_id: Some(pid.into()),
        ..BatchOptions::default()
    };
    let mut producer = Producer::connect(config.clone()).await?;
    let started = Instant::now();
    let mut batch = producer.create_batch(to.clone())?;
    for i in 0..count {
        let event = EventData::new(body.clone()).with_property("i", i as i64);
        match batch.try_add(event) {
            Ok(()) => {}
            Err(TryAddError::Full { event, .. }) => {
                producer.send_batch(&batch).await?;
                batch = producer.create_batch(to.clone())?;
                batch.try_add(*event)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    producer.send_batch(&batch).await?;
    let send_eps = count as f64 / started.elapsed().as_secs_f64().max(1e-9);
    producer.close().await;

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
    consumer.close().await;
    ensure!(got == count, "tcpulse client: received {got} of {count}");
    Ok((send_eps, recv_eps))
}

fn tls_connector(ca_pem: &std::path::Path) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let file = std::fs::File::open(ca_pem).with_context(|| format!("open {}", ca_pem.display()))?;
    for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
        roots.add(cert?)?;
    }
    // The provider by name: the workspace links both aws-lc-rs and ring into rustls (the
    // agent's ureq uses ring), so there is no process default to fall back on.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
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

async fn rust_case(
    info: &HubInfo,
    pid: &str,
    batch: usize,
    window: usize,
    count: usize,
) -> Result<(f64, f64)> {
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
    receiver.close().await.ok();
    session.end().await.ok();
    conn.close().await.ok();
    Ok((
        count as f64 / send_s,
        (count.saturating_sub(1)) as f64 / recv_s,
    ))
}
