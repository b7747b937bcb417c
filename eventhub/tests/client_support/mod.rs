//! Shared helpers of the `client_*` tests: an in-process hub over TLS and client configs
//! that trust its CA.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, path::Path, time::Duration};

use tcpulse_eventhub::client::{
    ClientConfig, ClientOptions, Consumer, ConsumerOptions, ReceivedEvent, RetryOptions,
    StartPosition,
};
use tcpulse_hub::{Hub, HubConfig, HubSpec};

/// The hub name every test uses.
pub const HUB: &str = "tcpulse";

/// A hub on an ephemeral loopback port, with its own TLS directory.
pub async fn start_hub(tmp: &Path) -> Hub {
    start_hub_with(tmp, |_| {}).await
}

/// A hub on an ephemeral (or the given) loopback port, adjusted by `f`.
pub async fn start_hub_with(tmp: &Path, f: impl FnOnce(&mut HubConfig)) -> Hub {
    let mut cfg = HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        hubs: vec![HubSpec {
            name: HUB.into(),
            partitions: 4,
        }],
        tls_dir: Some(tmp.join("tls")),
        ..HubConfig::default()
    };
    f(&mut cfg);
    Hub::start(cfg).await.expect("hub starts")
}

/// Options that trust the hub's CA, with quick retries.
pub fn options(hub: &Hub) -> ClientOptions {
    ClientOptions {
        extra_ca_file: Some(hub.ca_pem_path().to_path_buf()),
        operation_timeout_secs: 10,
        connect_timeout_secs: 5,
        retry: RetryOptions {
            max_retries: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
        },
        ..ClientOptions::default()
    }
}

/// A config from one of the hub's connection strings (TLS endpoint, `localhost:<port>`).
pub fn config(cs: &str, options: ClientOptions) -> ClientConfig {
    ClientConfig::from_connection_string(cs, None, options).expect("valid connection string")
}

/// The manage-policy config for `hub`.
pub fn manage(hub: &Hub) -> ClientConfig {
    config(&hub.connection_strings().manage, options(hub))
}

/// A consumer on `partition` from `start`.
pub async fn consumer(config: &ClientConfig, partition: &str, start: StartPosition) -> Consumer {
    Consumer::connect(
        config.clone(),
        ConsumerOptions {
            start,
            ..ConsumerOptions::new(partition)
        },
    )
    .await
    .expect("consumer connects")
}

/// Reads events until `n` arrived (panics after `within`).
pub async fn take(c: &mut Consumer, n: usize, within: Duration) -> Vec<ReceivedEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, c.recv()).await {
            Ok(Ok(e)) => out.push(e),
            Ok(Err(e)) => panic!("receive failed after {} events: {e}", out.len()),
            Err(_) => panic!("only {} of {n} events within {within:?}", out.len()),
        }
    }
    out
}

/// Asserts nothing more arrives within `quiet`.
pub async fn assert_quiet(c: &mut Consumer, quiet: Duration) {
    if let Ok(r) = tokio::time::timeout(quiet, c.recv()).await {
        panic!("expected no further event, got {r:?}");
    }
}

/// The TLS address of the hub.
pub fn addr(hub: &Hub) -> SocketAddr {
    hub.amqps_addr()
}

/// Installs a test log subscriber once (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
