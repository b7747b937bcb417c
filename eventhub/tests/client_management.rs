//! Management and consumer start positions against the in-process hub over TLS.

mod client_support;

use std::time::Duration;

use client_support::*;
use tcpulse_eventhub::client::{
    EventData, ManagementClient, ManagementError, Producer, SendOptions, StartPosition,
};

fn to(partition: &str) -> SendOptions {
    SendOptions {
        partition_id: Some(partition.into()),
        ..SendOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_management_hub_and_partition_properties() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    let cfg = manage(&hub);
    let mut m = ManagementClient::connect(cfg.clone()).await.unwrap();
    let props = m.hub_properties().await.unwrap();
    assert_eq!(props.name, HUB);
    assert_eq!(props.partition_ids, vec!["0", "1", "2", "3"]);

    let empty = m.partition_properties("3").await.unwrap();
    assert!(empty.is_empty);
    assert_eq!(empty.id, "3");
    assert_eq!(empty.hub, HUB);

    let mut p = Producer::connect(cfg.clone()).await.unwrap();
    for i in 0..3 {
        p.send(EventData::new(format!("e{i}").into_bytes()), to("0"))
            .await
            .unwrap();
    }
    p.close().await;
    let mut c = consumer(&cfg, "0", StartPosition::Earliest).await;
    let got = take(&mut c, 3, Duration::from_secs(10)).await;
    c.close().await;

    let p0 = m.partition_properties("0").await.unwrap();
    assert!(!p0.is_empty);
    assert_eq!(p0.begin_sequence_number, 0);
    assert_eq!(p0.last_enqueued_sequence_number, 2);
    assert_eq!(p0.last_enqueued_offset, got[2].offset);
    assert_eq!(p0.last_enqueued_time, got[2].enqueued_time);

    let e = m.partition_properties("9").await.unwrap_err();
    assert!(
        matches!(e, ManagementError::Status { status: 404, .. }),
        "{e}"
    );
    assert_eq!(e.condition(), Some("amqp:not-found"));
    assert!(e.is_fatal());
    m.close().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_consumer_start_positions_give_exact_events() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    let cfg = manage(&hub);

    // Consumers at "latest" attach before anything is sent.
    let mut latest = consumer(&cfg, "0", StartPosition::Latest).await;

    let mut p = Producer::connect(cfg.clone()).await.unwrap();
    for i in 0..10 {
        p.send(EventData::new(format!("e{i}").into_bytes()), to("0"))
            .await
            .unwrap();
        // Distinct enqueued times (ms resolution).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = {
        let mut c = consumer(&cfg, "0", StartPosition::Earliest).await;
        let all = take(&mut c, 10, Duration::from_secs(10)).await;
        assert_quiet(&mut c, Duration::from_millis(300)).await;
        c.close().await;
        all
    };
    let bodies = |evs: &[tcpulse_eventhub::client::ReceivedEvent]| {
        evs.iter()
            .map(|e| String::from_utf8_lossy(&e.body).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bodies(&all),
        (0..10).map(|i| format!("e{i}")).collect::<Vec<_>>()
    );
    assert!(all
        .windows(2)
        .all(|w| w[0].enqueued_time < w[1].enqueued_time));

    let check = |start: StartPosition, first: usize| {
        let cfg = cfg.clone();
        let expect: Vec<String> = (first..10).map(|i| format!("e{i}")).collect();
        async move {
            let mut c = consumer(&cfg, "0", start.clone()).await;
            let got = take(&mut c, expect.len(), Duration::from_secs(10)).await;
            assert_eq!(bodies(&got), expect, "{start:?}");
            assert_quiet(&mut c, Duration::from_millis(300)).await;
            c.close().await;
        }
    };
    check(
        StartPosition::SequenceNumber {
            sequence_number: 5,
            inclusive: true,
        },
        5,
    )
    .await;
    check(
        StartPosition::SequenceNumber {
            sequence_number: 5,
            inclusive: false,
        },
        6,
    )
    .await;
    check(
        StartPosition::Offset {
            offset: all[3].offset.clone(),
            inclusive: true,
        },
        3,
    )
    .await;
    check(
        StartPosition::Offset {
            offset: all[3].offset.clone(),
            inclusive: false,
        },
        4,
    )
    .await;
    check(
        StartPosition::EnqueuedTime {
            time: all[7].enqueued_time,
            inclusive: true,
        },
        7,
    )
    .await;
    check(
        StartPosition::EnqueuedTime {
            time: all[7].enqueued_time,
            inclusive: false,
        },
        8,
    )
    .await;

    // "latest" saw everything sent after it attached, and the next one.
    p.send(EventData::new(&b"e10"[..]), to("0")).await.unwrap();
    let got = take(&mut latest, 11, Duration::from_secs(10)).await;
    assert_eq!(got[10].sequence_number, 10);
    // A new "latest" consumer sees only what comes after it.
    let mut late = consumer(&cfg, "0", StartPosition::Latest).await;
    assert_quiet(&mut late, Duration::from_millis(300)).await;
    p.send(EventData::new(&b"e11"[..]), to("0")).await.unwrap();
    let got = take(&mut late, 1, Duration::from_secs(10)).await;
    assert_eq!(&got[0].body[..], b"e11");
    p.close().await;
    late.close().await;
    latest.close().await;
    hub.shutdown().await;
}
