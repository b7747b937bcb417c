//! Fatal versus transient failures, and epoch steals, against the in-process hub over TLS.

mod client_support;

use std::time::{Duration, Instant};

use client_support::*;
use tcpulse_eventhub::client::{
    ClientOptions, ConnectError, Consumer, ConsumerOptions, EventData, ManagementClient,
    ManagementError, Producer, ReceiveError, RetryOptions, SendError, SendOptions, StartPosition,
};

/// Retries that would take seconds if they happened.
fn slow_retries(hub: &tcpulse_hub::Hub) -> ClientOptions {
    ClientOptions {
        retry: RetryOptions {
            max_retries: 5,
            initial_backoff_ms: 1000,
            max_backoff_ms: 5000,
        },
        ..options(hub)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_wrong_key_is_unauthorized_without_retries() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    let cs = hub.connection_strings().send.clone();
    let key_at = cs.find("SharedAccessKey=").unwrap() + "SharedAccessKey=".len();
    let end = cs[key_at..]
        .find(';')
        .map(|i| key_at + i)
        .unwrap_or(cs.len());
    let wrong = format!("{}WRONGKEY{}", &cs[..key_at], &cs[end..]);
    let cfg = config(&wrong, slow_retries(&hub));

    let started = Instant::now();
    let e = Producer::connect(cfg.clone()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(e, SendError::Connect(ConnectError::Unauthorized { .. })),
        "{e:?}"
    );
    assert_eq!(e.condition(), Some("amqp:unauthorized-access"));
    assert!(e.is_fatal());
    assert!(!e.to_string().contains("WRONGKEY"));

    let started = Instant::now();
    let e = Consumer::connect(cfg, ConsumerOptions::new("0"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(e.condition(), Some("amqp:unauthorized-access"));

    // A send-only policy cannot receive: refused on attach, fatal.
    let listen_with_send = config(&hub.connection_strings().send, slow_retries(&hub));
    let started = Instant::now();
    let mut c = Consumer::connect(listen_with_send, ConsumerOptions::new("0"))
        .await
        .unwrap();
    let e = c.recv().await.unwrap_err();
    assert!(matches!(e, ReceiveError::Unauthorized { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(900));
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_unknown_hub_is_not_found() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    let cs = hub
        .connection_strings()
        .manage
        .replace(&format!("EntityPath={HUB}"), "EntityPath=nohub");
    let cfg = config(&cs, slow_retries(&hub));

    let started = Instant::now();
    let r = match Producer::connect(cfg.clone()).await {
        Err(e) => Err(e),
        Ok(mut p) => {
            p.send(EventData::new(&b"x"[..]), SendOptions::default())
                .await
        }
    };
    let e = r.unwrap_err();
    assert!(matches!(e, SendError::NotFound { .. }), "{e:?}");
    assert!(e.is_fatal());
    assert!(started.elapsed() < Duration::from_millis(900));

    let mut m = ManagementClient::connect(cfg.clone()).await.unwrap();
    let e = m.hub_properties().await.unwrap_err();
    assert!(
        matches!(e, ManagementError::Status { status: 404, .. }),
        "{e:?}"
    );
    assert!(e.is_fatal());

    let r = match Consumer::connect(cfg, ConsumerOptions::new("0")).await {
        Err(e) => Err(e),
        Ok(mut c) => c.recv().await,
    };
    let e = r.unwrap_err();
    assert!(matches!(e, ReceiveError::NotFound { .. }), "{e:?}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_oversize_event_is_message_too_large() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    let mut p = Producer::connect(config(&hub.connection_strings().send, slow_retries(&hub)))
        .await
        .unwrap();
    let started = Instant::now();
    let e = p
        .send(
            EventData::new(vec![0u8; 2 * 1024 * 1024]),
            SendOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, SendError::MessageTooLarge { .. }), "{e:?}");
    assert_eq!(e.condition(), Some("amqp:link:message-size-exceeded"));
    assert!(e.is_fatal());
    assert!(started.elapsed() < Duration::from_millis(900));
    // The producer still works afterwards.
    p.send(EventData::new(&b"small"[..]), SendOptions::default())
        .await
        .unwrap();
    p.close().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_stopped_hub_gives_bounded_retries_then_transient() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    let opts = ClientOptions {
        retry: RetryOptions {
            max_retries: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 2000,
        },
        ..options(&hub)
    };
    let cfg = config(&hub.connection_strings().send, opts);
    hub.shutdown().await;

    let started = Instant::now();
    let e = Producer::connect(cfg).await.unwrap_err();
    let took = started.elapsed();
    assert!(e.is_transient(), "{e:?}");
    assert!(
        matches!(e, SendError::Connect(ConnectError::Io { .. })),
        "{e:?}"
    );
    // 200 + 400 + 800 ms (±10 %) of backoff, and not much more.
    assert!(took >= Duration::from_millis(1250), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_epoch_steal_is_link_stolen() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let hub = start_hub(tmp.path()).await;
    let cfg = config(&hub.connection_strings().listen, slow_retries(&hub));
    let with_epoch = |e: i64| ConsumerOptions {
        owner_level: Some(e),
        start: StartPosition::Earliest,
        ..ConsumerOptions::new("0")
    };
    let mut low = Consumer::connect(cfg.clone(), with_epoch(1)).await.unwrap();
    let pending = tokio::spawn(async move {
        let r = low.recv().await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut high = Consumer::connect(cfg.clone(), with_epoch(2)).await.unwrap();
    let stolen_at = Instant::now();
    let (r, at) = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the displaced consumer returns")
        .unwrap();
    let e = r.unwrap_err();
    assert!(matches!(e, ReceiveError::LinkStolen { .. }), "{e:?}");
    assert!(e.is_fatal());
    assert!(at.duration_since(stolen_at) < Duration::from_millis(900));

    // A lower epoch cannot come back: refused with link:stolen, no retry loop.
    let started = Instant::now();
    let r = match Consumer::connect(cfg.clone(), with_epoch(1)).await {
        Err(e) => Err(e),
        Ok(mut c) => c.recv().await,
    };
    assert!(matches!(r, Err(ReceiveError::LinkStolen { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(900));
    // The owner is unaffected.
    let mut p = Producer::connect(config(&hub.connection_strings().send, options(&hub)))
        .await
        .unwrap();
    p.send(
        EventData::new(&b"for the owner"[..]),
        SendOptions {
            partition_id: Some("0".into()),
            ..SendOptions::default()
        },
    )
    .await
    .unwrap();
    let got = take(&mut high, 1, Duration::from_secs(5)).await;
    assert_eq!(&got[0].body[..], b"for the owner");
    p.close().await;
    high.close().await;
    hub.shutdown().await;
}
