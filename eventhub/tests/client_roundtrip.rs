//! Producer → consumer round trips against the in-process hub over TLS.

mod client_support;

use std::time::{Duration, SystemTime};

use client_support::*;
use fe2o3_amqp_types::primitives::SimpleValue;
use tcpulse_eventhub::client::{
    BatchOptions, ClientOptions, EventData, Producer, SendOptions, StartPosition,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_roundtrip_single_batch_key_partition_and_properties() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    let send = config(&hub.connection_strings().send, options(&hub));
    let listen = config(&hub.connection_strings().listen, options(&hub));
    let before = SystemTime::now() - Duration::from_secs(1);

    let mut p = Producer::connect(send).await.unwrap();
    assert_eq!(p.max_message_size(), 1_048_576);

    // A single event with properties to partition 1.
    let single = EventData::new(&b"{\"single\":true}"[..])
        .with_property("schema", "tcpulse.status.v1")
        .with_property("n", 42i64)
        .with_content_type("application/json");
    p.send(
        single.clone(),
        SendOptions {
            partition_id: Some("1".into()),
            ..SendOptions::default()
        },
    )
    .await
    .unwrap();

    // A batch to partition 2.
    let mut batch = p
        .create_batch(BatchOptions {
            partition_id: Some("2".into()),
            ..BatchOptions::default()
        })
        .unwrap();
    for i in 0..5 {
        batch
            .try_add(EventData::new(format!("b{i}").into_bytes()).with_property("i", i as i64))
            .unwrap();
    }
    p.send_batch(&batch).await.unwrap();

    // A keyed batch: every event lands on one partition, with the key.
    let mut keyed = p
        .create_batch(BatchOptions {
            partition_key: Some("tc-eu.example.com".into()),
            ..BatchOptions::default()
        })
        .unwrap();
    for i in 0..3 {
        keyed
            .try_add(EventData::new(format!("k{i}").into_bytes()))
            .unwrap();
    }
    p.send_batch(&keyed).await.unwrap();
    // A keyed single event.
    p.send(
        EventData::new(&b"k3"[..]),
        SendOptions {
            partition_key: Some("tc-eu.example.com".into()),
            ..SendOptions::default()
        },
    )
    .await
    .unwrap();
    p.close().await;

    let mut c1 = consumer(&listen, "1", StartPosition::Earliest).await;
    let got = take(&mut c1, 1, Duration::from_secs(10)).await;
    let e = &got[0];
    assert_eq!(e.body, single.body);
    assert_eq!(e.property_str("schema"), Some("tcpulse.status.v1"));
    assert_eq!(e.properties.get("n"), Some(&SimpleValue::Long(42)));
    assert_eq!(e.content_type.as_deref(), Some("application/json"));
    assert_eq!(e.partition_key, None);
    assert_eq!(e.partition_id, "1");
    assert!(e.enqueued_time >= before && e.enqueued_time <= SystemTime::now());
    assert!(!e.offset.is_empty());
    assert!(e.annotation("x-opt-sequence-number").is_some());

    let mut c2 = consumer(&listen, "2", StartPosition::Earliest).await;
    let got = take(&mut c2, 5, Duration::from_secs(10)).await;
    let bodies: Vec<_> = got.iter().map(|e| e.body.clone()).collect();
    assert_eq!(
        bodies,
        (0..5)
            .map(|i| format!("b{i}").into_bytes())
            .collect::<Vec<_>>()
    );
    let seqs: Vec<_> = got.iter().map(|e| e.sequence_number).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    assert_eq!(got[3].properties.get("i"), Some(&SimpleValue::Long(3)));

    // Find the keyed events: all on one partition, in order, with the key.
    let mut keyed_found = Vec::new();
    for part in ["0", "1", "2", "3"] {
        let mut c = consumer(&listen, part, StartPosition::Earliest).await;
        let evs = c.recv_batch(100, Duration::from_millis(500)).await.unwrap();
        let mut more = evs;
        loop {
            let next = c.recv_batch(100, Duration::from_millis(200)).await.unwrap();
            if next.is_empty() {
                break;
            }
            more.extend(next);
        }
        let ks: Vec<_> = more
            .into_iter()
            .filter(|e| e.body.starts_with(b"k"))
            .collect();
        if !ks.is_empty() {
            keyed_found.push((part, ks));
        }
        c.close().await;
    }
    assert_eq!(keyed_found.len(), 1, "keyed events on one partition");
    let (_, ks) = &keyed_found[0];
    assert_eq!(
        ks.iter().map(|e| e.body.clone()).collect::<Vec<_>>(),
        vec!["k0", "k1", "k2", "k3"]
            .into_iter()
            .map(bytes::Bytes::from)
            .collect::<Vec<_>>()
    );
    assert!(ks
        .iter()
        .all(|e| e.partition_key.as_deref() == Some("tc-eu.example.com")));
    c1.close().await;
    c2.close().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_roundtrip_custom_endpoint_keeps_namespace() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    // A namespace that does not resolve: only the custom endpoint is dialled; the TLS name is
    // set to what the hub's certificate covers.
    let cs = hub
        .connection_strings()
        .manage
        .replace("sb://localhost:", "sb://tcpulse-ns.servicebus.windows.net:");
    let opts = ClientOptions {
        custom_endpoint: Some(format!("sb://{}", addr(&hub))),
        tls_server_name: Some("localhost".into()),
        ..options(&hub)
    };
    let cfg = config(&cs, opts);
    let mut p = Producer::connect(cfg.clone()).await.unwrap();
    p.send(
        EventData::new(&b"via custom endpoint"[..]),
        SendOptions {
            partition_id: Some("0".into()),
            ..SendOptions::default()
        },
    )
    .await
    .unwrap();
    p.close().await;
    let mut c = consumer(&cfg, "0", StartPosition::Earliest).await;
    let got = take(&mut c, 1, Duration::from_secs(10)).await;
    assert_eq!(&got[0].body[..], b"via custom endpoint");
    c.close().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_consumer_credit_refills_beyond_prefetch() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    let cfg = manage(&hub);
    let mut p = Producer::connect(cfg.clone()).await.unwrap();
    let mut batch = p
        .create_batch(BatchOptions {
            partition_id: Some("3".into()),
            ..BatchOptions::default()
        })
        .unwrap();
    for i in 0..100 {
        batch
            .try_add(EventData::new(format!("c{i}").into_bytes()))
            .unwrap();
    }
    p.send_batch(&batch).await.unwrap();
    p.close().await;
    let mut c = tcpulse_eventhub::client::Consumer::connect(
        cfg,
        tcpulse_eventhub::client::ConsumerOptions {
            start: StartPosition::Earliest,
            prefetch: 7,
            ..tcpulse_eventhub::client::ConsumerOptions::new("3")
        },
    )
    .await
    .unwrap();
    let mut got = take(&mut c, 50, Duration::from_secs(10)).await;
    loop {
        let more = c.recv_batch(10, Duration::from_secs(2)).await.unwrap();
        assert!(more.len() <= 10);
        if more.is_empty() {
            break;
        }
        got.extend(more);
    }
    assert_eq!(
        got.iter().map(|e| e.sequence_number).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    c.close().await;
    hub.shutdown().await;
}

/// A receive that loses a `select!` race is dropped wherever it was waiting; the events it
/// had taken off the link must still be handed out, once, in order (the collector selects
/// over `recv()` beside its timers and acknowledgements).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_consumer_cancelled_receives_lose_nothing() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    let cfg = manage(&hub);
    let total = 20_000i64;
    let mut p = Producer::connect(cfg.clone()).await.unwrap();
    let to = BatchOptions {
        partition_id: Some("2".into()),
        ..BatchOptions::default()
    };
    let mut batch = p.create_batch(to.clone()).unwrap();
    for i in 0..total {
        let e = EventData::new(format!("x{i}").into_bytes());
        if let Err(tcpulse_eventhub::client::TryAddError::Full { event, .. }) = batch.try_add(e) {
            p.send_batch(&batch).await.unwrap();
            batch = p.create_batch(to.clone()).unwrap();
            batch.try_add(*event).unwrap();
        }
    }
    p.send_batch(&batch).await.unwrap();
    p.close().await;
    // Prefetch 3: credit is granted every other event, so receives often wait mid-way.
    let mut c = tcpulse_eventhub::client::Consumer::connect(
        cfg,
        tcpulse_eventhub::client::ConsumerOptions {
            start: StartPosition::Earliest,
            prefetch: 3,
            ..tcpulse_eventhub::client::ConsumerOptions::new("2")
        },
    )
    .await
    .unwrap();
    let mut got: Vec<i64> = Vec::new();
    let mut cancelled = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while (got.len() as i64) < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled after {} events",
            got.len()
        );
        if got.len().is_multiple_of(2) {
            tokio::select! {
                biased;
                r = c.recv() => got.push(r.unwrap().sequence_number),
                _ = tokio::task::yield_now() => cancelled += 1,
            }
        } else {
            tokio::select! {
                biased;
                r = c.recv_batch(5, Duration::from_secs(5)) => {
                    got.extend(r.unwrap().iter().map(|e| e.sequence_number))
                }
                _ = tokio::task::yield_now() => cancelled += 1,
            }
        }
    }
    assert!(cancelled > 0, "no receive was ever cancelled");
    assert_eq!(got, (0..total).collect::<Vec<_>>());
    c.close().await;
    hub.shutdown().await;
}
