//! Long-running behaviour against the in-process hub over TLS: token refresh on a live
//! connection, and reconnect-and-resume across a hub restart.

mod client_support;

use std::time::Duration;

use client_support::*;
use tcpulse_eventhub::client::{
    ClientOptions, EventData, Producer, RetryOptions, SendOptions, StartPosition,
};

fn to0() -> SendOptions {
    SendOptions {
        partition_id: Some("0".into()),
        ..SendOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_token_refresh_keeps_links_alive_for_a_minute() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub_with(tmp.path(), |c| {
        c.max_token_lifetime = Some(Duration::from_secs(5));
    })
    .await;
    let opts = ClientOptions {
        token_lifetime_secs: 4,
        ..options(&hub)
    };
    let cfg = config(&hub.connection_strings().manage, opts);
    let mut p = Producer::connect(cfg.clone()).await.unwrap();
    let mut c = consumer(&cfg, "0", StartPosition::Earliest).await;

    let run = Duration::from_secs(60);
    let started = tokio::time::Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < run {
        p.send(EventData::new(format!("t{sent}").into_bytes()), to0())
            .await
            .unwrap_or_else(|e| panic!("send {sent} failed after {:?}: {e}", started.elapsed()));
        let got = take(&mut c, 1, Duration::from_secs(5)).await;
        assert_eq!(got[0].body, format!("t{sent}").into_bytes());
        assert_eq!(got[0].sequence_number, i64::from(sent));
        sent += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(sent > 100, "{sent}");
    // Tokens lasted at most 5 s, yet neither side had to reconnect.
    assert_eq!(p.reconnects(), 0);
    assert_eq!(c.reconnects(), 0);
    p.close().await;
    c.close().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnect_across_hub_restart_sees_every_event_once_in_order() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hub = start_hub_with(tmp.path(), |c| c.data_dir = Some(data.clone())).await;
    let listen = addr(&hub);
    let opts = ClientOptions {
        retry: RetryOptions {
            max_retries: 20,
            initial_backoff_ms: 100,
            max_backoff_ms: 500,
        },
        ..options(&hub)
    };
    let cfg = config(&hub.connection_strings().manage, opts);
    const N: u32 = 400;

    let producer_cfg = cfg.clone();
    let producer = tokio::spawn(async move {
        let mut p = Producer::connect(producer_cfg).await.unwrap();
        for i in 0..N {
            p.send(EventData::new(format!("r{i:04}").into_bytes()), to0())
                .await
                .unwrap_or_else(|e| panic!("send {i}: {e}"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reconnects = p.reconnects();
        p.close().await;
        reconnects
    });
    let consumer_cfg = cfg.clone();
    let consumer_task = tokio::spawn(async move {
        let mut c = consumer(&consumer_cfg, "0", StartPosition::Earliest).await;
        let mut got = Vec::new();
        // Until the last body arrives (the producer may have resent some after the restart).
        while got
            .last()
            .map(|e: &tcpulse_eventhub::client::ReceivedEvent| {
                e.body != format!("r{:04}", N - 1).into_bytes()
            })
            .unwrap_or(true)
        {
            match tokio::time::timeout(Duration::from_secs(30), c.recv()).await {
                Ok(Ok(e)) => got.push(e),
                Ok(Err(e)) => panic!("receive failed after {}: {e}", got.len()),
                Err(_) => panic!("stalled after {} events", got.len()),
            }
        }
        let reconnects = c.reconnects();
        c.close().await;
        (got, reconnects)
    });

    tokio::time::sleep(Duration::from_millis(1500)).await;
    hub.shutdown().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let hub = start_hub_with(tmp.path(), |c| {
        c.data_dir = Some(data.clone());
        c.listen = listen;
    })
    .await;

    let producer_reconnects = tokio::time::timeout(Duration::from_secs(60), producer)
        .await
        .expect("producer finishes")
        .unwrap();
    let (got, consumer_reconnects) = tokio::time::timeout(Duration::from_secs(60), consumer_task)
        .await
        .expect("consumer finishes")
        .unwrap();
    assert!(producer_reconnects >= 1);
    assert!(consumer_reconnects >= 1);
    // The consumer: every stored event once, in order (no gap, no repeat).
    let seqs: Vec<i64> = got.iter().map(|e| e.sequence_number).collect();
    assert_eq!(seqs, (0..got.len() as i64).collect::<Vec<_>>());
    // The producer: every event stored, in order of first appearance; a resend after a lost
    // outcome may store one twice (at least once), but never out of order.
    let mut firsts = Vec::new();
    for e in &got {
        let b = String::from_utf8_lossy(&e.body).into_owned();
        if !firsts.contains(&b) {
            firsts.push(b);
        }
    }
    assert_eq!(
        firsts,
        (0..N).map(|i| format!("r{i:04}")).collect::<Vec<_>>()
    );
    let dups = got.len() - N as usize;
    assert!(dups <= 2, "{dups} duplicates");
    eprintln!(
        "restart: {} events stored, {dups} producer resends, producer reconnects {producer_reconnects}, consumer reconnects {consumer_reconnects}",
        got.len()
    );
    hub.shutdown().await;
}
