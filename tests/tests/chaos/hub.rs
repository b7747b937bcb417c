//! Chaos cases: hub (issue 12, fault 8).
//!
//! - `chaos_hub_memory_stays_within_budget`: a Send-key holder pushes 40,000 events of 4 KiB
//!   (160 MiB) into a `tcpulse-hub` whose memory budget is 8 MiB; the process's resident
//!   memory grows by at most the budget plus a fixed overhead, and a consumer from the
//!   earliest event still reads every event, in order (read back from the segment files).
//! - `chaos_hub_connections_without_token_are_closed`: 20 raw TLS connections that finish the
//!   AMQP open and never put a token are closed 20 s after opening with a Close frame
//!   carrying `amqp:unauthorized-access`, and their sockets go away; the hub's Open frame
//!   announces its idle timeout (240 s, as Event Hubs); a client that did put a token keeps
//!   its connection past the deadline.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use fe2o3_amqp_types::performatives::{Close, Open};
use fe2o3_amqp_types::primitives::Symbol;
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit, SaslOutcome};
use tcpulse_eventhub::client::{
    BatchOptions, ClientConfig, ClientOptions, Consumer, ConsumerOptions, EventData, Producer,
    StartPosition,
};
use tcpulse_tests::chaos::{record, Row};
use tcpulse_tests::client::{add_or_send, tls_connector};
use tcpulse_tests::hub::{HubInfo, HubOptions, HubProcess, Mode, Policy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

const MIB: u64 = 1024 * 1024;

/// The hub's memory budget in the memory case.
const BUDGET: u64 = 8 * MIB;
/// What the process may add beyond the budget: per-event bookkeeping (about 80 bytes per
/// retained event, 3 MiB here), in-flight batches of 1 MiB on their way through AMQP
/// decoding and the segment writer, the 4 MiB read-back window, TLS buffers and mimalloc's
/// cached pages. Measured (debug build, 2 cores shared with other builds): the sampled
/// VmRSS grew by 44 to 48 MiB and VmHWM by 40 to 62 MiB between identical runs, and by the
/// same amounts whether 20,000, 40,000 or 60,000 events were sent: it does not follow the
/// data. Without the budget VmRSS grew by 241 MiB (the 160 MiB sent stay resident). The
/// allowance is set well above the worst run seen (CI runs other tests beside this one) and
/// well below what an unbounded hub grows by, so the case still fails without the budget.
const OVERHEAD: u64 = 112 * MIB;

fn client_config(info: &HubInfo, policy: Policy) -> Result<ClientConfig> {
    Ok(ClientConfig::from_connection_string(
        info.connection_string(Mode::Tls, policy)?,
        None,
        ClientOptions {
            extra_ca_file: Some(info.ca_pem.clone()),
            ..ClientOptions::default()
        },
    )?)
}

/// A `/proc/<pid>/status` field in bytes (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("cannot parse {line:?}"))?;
    Ok(kib * 1024)
}

/// The 4 KiB body of event `i`: its number, then filler.
fn body(i: usize) -> Bytes {
    let mut b = format!("{i:08}").into_bytes();
    b.resize(4096, b'x');
    Bytes::from(b)
}

/// Sends events `first..first + count` to partition 0 in full batches; returns the largest
/// RSS of process `pid` seen after a batch was stored (0 without a pid).
async fn send_events(
    config: ClientConfig,
    first: usize,
    count: usize,
    pid: Option<u32>,
) -> Result<u64> {
    let mut rss_max = 0;
    let to = BatchOptions {
        partition_id: Some("0".into()),
        ..BatchOptions::default()
    };
    let mut producer = Producer::connect(config).await?;
    let mut batch = producer.create_batch(to.clone())?;
    for i in first..first + count {
        if add_or_send(&mut producer, &mut batch, &to, EventData::new(body(i))).await? {
            if let Some(pid) = pid {
                rss_max = rss_max.max(proc_kib(pid, "VmRSS")?);
            }
        }
    }
    producer.send_batch(&batch).await?;
    producer.close().await;
    Ok(rss_max)
}

/// Reads partition 0 from the earliest event; checks order and bodies; returns the count
/// and the largest RSS seen while reading.
async fn read_all(config: ClientConfig, expect: usize, pid: u32) -> Result<(usize, u64)> {
    let mut consumer = Consumer::connect(
        config,
        ConsumerOptions {
            start: StartPosition::Earliest,
            prefetch: 300,
            ..ConsumerOptions::new("0")
        },
    )
    .await?;
    let mut got = 0usize;
    let mut rss_max = 0;
    while got < expect {
        let events = consumer.recv_batch(500, Duration::from_secs(30)).await?;
        ensure!(
            !events.is_empty(),
            "consumer stalled after {got} of {expect}"
        );
        for e in events {
            ensure!(
                e.sequence_number == got as i64,
                "sequence number {} where {got} was expected",
                e.sequence_number
            );
            ensure!(
                e.body == body(got),
                "event {got}: wrong body (starts {:?})",
                String::from_utf8_lossy(&e.body[..e.body.len().min(8)])
            );
            got += 1;
        }
        rss_max = rss_max.max(proc_kib(pid, "VmRSS")?);
    }
    consumer.close().await;
    Ok((got, rss_max))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_hub_memory_stays_within_budget() -> Result<()> {
    const EVENTS: usize = 40_000;
    const WARMUP: usize = 50;
    let mut hub = HubProcess::spawn(HubOptions {
        hubs: vec![("tcpulse".into(), 1)],
        plain: false,
        memory_budget_bytes: Some(BUDGET),
        ..HubOptions::default()
    })
    .await?;
    let pid = hub.pid().context("hub has no pid")?;
    let send = client_config(&hub.info, Policy::Send)?;
    let listen = client_config(&hub.info, Policy::Listen)?;
    // Warm up connections, TLS and the allocator before the baseline.
    send_events(send.clone(), 0, WARMUP, None).await?;
    let baseline = proc_kib(pid, "VmRSS")?;
    let started = Instant::now();
    let rss_sending = send_events(send, WARMUP, EVENTS - WARMUP, Some(pid)).await?;
    let sent_s = started.elapsed().as_secs_f64();
    let (got, rss_reading) = read_all(listen, EVENTS, pid).await?;
    let peak = proc_kib(pid, "VmHWM")?;
    let running = hub.is_running();
    let growth = rss_sending.max(rss_reading).saturating_sub(baseline);
    let outcome = format!(
        "budget {} MiB: VmRSS {} MiB at start, at most {} MiB while {EVENTS} x 4 KiB were stored \
         ({sent_s:.1} s) and {} MiB while all were read back (+{} MiB); VmHWM {} MiB",
        BUDGET / MIB,
        baseline / MIB,
        rss_sending / MIB,
        rss_reading / MIB,
        growth / MIB,
        peak / MIB,
    );
    eprintln!("chaos_hub_memory_stays_within_budget: {outcome}");
    record(&Row {
        fault: "hub memory: 160 MiB of events, 8 MiB budget".into(),
        events_sent: EVENTS as u64,
        points_stored: got as u64,
        lost: (EVENTS - got) as u64,
        duplicated: 0,
        counted_dropped: 0,
        outcome: outcome.clone(),
    })?;
    ensure!(running, "hub exited\n{}", hub.current_log());
    ensure!(
        growth <= BUDGET + OVERHEAD,
        "the hub's memory grew by {} MiB, more than the {} MiB budget + {} MiB overhead: {outcome}",
        growth / MIB,
        BUDGET / MIB,
        OVERHEAD / MIB
    );
    hub.stop(Duration::from_secs(15)).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// connections that never put a token

const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// Descriptor codes of the performatives read here.
const OPEN: u8 = 0x10;
const CLOSE: u8 = 0x18;

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
    f.extend_from_slice(&[2, kind, 0, 0]);
    f.extend_from_slice(body);
    f
}

/// Reads one frame; returns its body (empty for a heartbeat).
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>> {
    let mut head = [0u8; 8];
    s.read_exact(&mut head).await.context("read frame header")?;
    let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let doff = head[4] as usize * 4;
    ensure!(
        size >= doff && doff >= 8,
        "bad frame size {size}, doff {doff}"
    );
    let mut rest = vec![0u8; size - 8];
    s.read_exact(&mut rest).await.context("read frame body")?;
    Ok(rest[doff - 8..].to_vec())
}

/// The performative code of a frame body (`0x00 0x53 <code>`), if any.
fn code(body: &[u8]) -> Option<u8> {
    (body.len() > 2 && body[0] == 0 && body[1] == 0x53).then(|| body[2])
}

/// TLS, SASL ANONYMOUS (as the SDKs), AMQP Open; returns the stream and the hub's Open.
async fn open_without_token(
    info: &HubInfo,
    tls: &tokio_rustls::TlsConnector,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Open)> {
    let tcp = TcpStream::connect(info.amqps).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    let mut s = tls.connect(name, tcp).await.context("TLS handshake")?;
    s.write_all(&SASL_HEADER).await?;
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).await.context("SASL header")?;
    let _mechanisms = read_frame(&mut s).await?;
    let init = SaslInit {
        mechanism: Symbol::from("ANONYMOUS"),
        initial_response: None,
        hostname: Some("localhost".into()),
    };
    s.write_all(&frame(1, &serde_amqp::to_vec(&init)?)).await?;
    let outcome: SaslOutcome =
        serde_amqp::from_slice(&read_frame(&mut s).await?).context("decode sasl-outcome")?;
    ensure!(
        matches!(outcome.code, SaslCode::Ok),
        "SASL refused: {:?}",
        outcome.code
    );
    s.write_all(&AMQP_HEADER).await?;
    let open = Open {
        container_id: "chaos-no-token".into(),
        hostname: Some("localhost".into()),
        max_frame_size: 65536.into(),
        channel_max: 8.into(),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    s.write_all(&frame(0, &serde_amqp::to_vec(&open)?)).await?;
    s.read_exact(&mut hdr).await.context("AMQP header")?;
    let body = read_frame(&mut s).await?;
    ensure!(
        code(&body) == Some(OPEN),
        "expected the hub's Open, got {body:02x?}"
    );
    let theirs: Open = serde_amqp::from_slice(&body).context("decode the hub's Open")?;
    Ok((s, theirs))
}

/// What happened to one connection that never put a token.
struct Ending {
    /// Seconds from the AMQP open to the hub's Close frame.
    close_after_s: f64,
    /// The Close frame's error condition and description.
    condition: Option<String>,
    description: Option<String>,
    /// Seconds from the AMQP open until the socket ended (we never answer the Close).
    gone_after_s: f64,
}

async fn wait_for_close<S: AsyncRead + Unpin>(mut s: S, opened: Instant) -> Result<Ending> {
    let close = loop {
        let body = read_frame(&mut s)
            .await
            .context("waiting for the hub's Close")?;
        if code(&body) == Some(CLOSE) {
            break serde_amqp::from_slice::<Close>(&body).context("decode Close")?;
        }
    };
    let close_after_s = opened.elapsed().as_secs_f64();
    // Do not answer: the hub must cut the socket itself.
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let condition = match close.error.as_ref() {
        // The condition as its symbol on the wire.
        Some(e) => Some(serde_amqp::from_slice::<Symbol>(&serde_amqp::to_vec(&e.condition)?)?.0),
        None => None,
    };
    Ok(Ending {
        close_after_s,
        condition,
        description: close.error.and_then(|e| e.description),
        gone_after_s: opened.elapsed().as_secs_f64(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_hub_connections_without_token_are_closed() -> Result<()> {
    const CONNECTIONS: usize = 20;
    /// Azure's deadline for a token, and what the hub may take beyond it.
    const DEADLINE_S: f64 = 20.0;
    const MARGIN_S: f64 = 5.0;
    /// How long the hub waits for the peer's Close before cutting the socket, plus margin.
    const CUT_S: f64 = 5.0 + 3.0;
    let mut hub = HubProcess::spawn(HubOptions {
        hubs: vec![("tcpulse".into(), 1)],
        plain: false,
        ..HubOptions::default()
    })
    .await?;
    let tls = tls_connector(&hub.info.ca_pem)?;
    let mut waits = Vec::new();
    let mut idle_timeouts = Vec::new();
    for _ in 0..CONNECTIONS {
        let (s, theirs) = open_without_token(&hub.info, &tls).await?;
        let opened = Instant::now();
        idle_timeouts.push(theirs.idle_time_out);
        waits.push(tokio::spawn(tokio::time::timeout(
            Duration::from_secs_f64(DEADLINE_S + MARGIN_S + CUT_S + 5.0),
            wait_for_close(s, opened),
        )));
    }
    // A client that put a token keeps working past the deadline.
    let send = client_config(&hub.info, Policy::Send)?;
    let to = BatchOptions {
        partition_id: Some("0".into()),
        ..BatchOptions::default()
    };
    let mut producer = Producer::connect(send).await?;
    let mut batch = producer.create_batch(to.clone())?;
    batch.try_add(EventData::new(body(0)))?;
    producer.send_batch(&batch).await?;

    let mut endings = Vec::new();
    let mut failures = Vec::new();
    for w in waits {
        match w.await? {
            Ok(Ok(e)) => endings.push(e),
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(_) => failures.push("still open after the deadline, the grace and margin".into()),
        }
    }
    let mut batch = producer.create_batch(to)?;
    batch.try_add(EventData::new(body(1)))?;
    let late_send = producer.send_batch(&batch).await;
    producer.close().await;

    let closed = endings
        .iter()
        .filter(|e| {
            e.close_after_s >= DEADLINE_S - 0.5
                && e.close_after_s <= DEADLINE_S + MARGIN_S
                && e.condition.as_deref() == Some("amqp:unauthorized-access")
                && e.gone_after_s <= e.close_after_s + CUT_S
        })
        .count();
    let times: Vec<f64> = endings.iter().map(|e| e.close_after_s).collect();
    let close_span = match (
        times.iter().copied().reduce(f64::min),
        times.iter().copied().reduce(f64::max),
    ) {
        (Some(lo), Some(hi)) => format!("after {lo:.1}-{hi:.1} s"),
        _ => "never".to_string(),
    };
    let slowest = endings.iter().map(|e| e.gone_after_s).fold(0.0, f64::max);
    let outcome = format!(
        "{closed}/{CONNECTIONS} closed with amqp:unauthorized-access {close_span}, sockets gone by {slowest:.1} s; idle-time-out announced {:?} ms; token holder {}",
        idle_timeouts.first().copied().flatten(),
        if late_send.is_ok() { "still sending after 20 s" } else { "refused after 20 s" },
    );
    eprintln!("chaos_hub_connections_without_token_are_closed: {outcome}");
    record(&Row {
        fault: "hub: 20 connections never put a token".into(),
        events_sent: 2,
        points_stored: u64::from(late_send.is_ok()) + 1,
        lost: u64::from(late_send.is_err()),
        duplicated: 0,
        counted_dropped: 0,
        outcome: outcome.clone(),
    })?;
    if let Some(first) = failures.first() {
        bail!(
            "{outcome}; {} connection(s) failed, first: {first}",
            failures.len()
        );
    }
    ensure!(closed == CONNECTIONS, "{outcome}");
    if let Some(e) = endings.first() {
        let why = e.description.clone().unwrap_or_default();
        ensure!(why.contains("token"), "the Close does not say why: {why:?}");
    }
    ensure!(
        idle_timeouts.iter().all(|t| *t == Some(240_000)),
        "the hub's Open does not announce a 240 s idle timeout: {idle_timeouts:?}"
    );
    if let Err(e) = late_send {
        bail!("a client that put a token was cut off: {e:#}");
    }
    ensure!(
        hub.current_log().contains("without a valid token"),
        "the hub does not log why it closed the connections"
    );
    hub.stop(Duration::from_secs(15)).await?;
    Ok(())
}
