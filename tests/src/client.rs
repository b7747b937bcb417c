//! Our Event Hubs client against a test hub: its config for a policy over TLS, publishing
//! events to chosen partitions, and reading every event (and status event) back from
//! earliest.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tcpulse_eventhub::client::{
    BatchOptions, ClientConfig, ClientOptions, Consumer, ConsumerOptions, EventBatch, EventData,
    Producer, ReceivedEvent, StartPosition, TryAddError,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::hub::{HubInfo, Mode, Policy};

/// A client config for `policy` over TLS, trusting the hub's CA, with 10 s connect and
/// operation timeouts.
pub fn client_config(info: &HubInfo, policy: Policy) -> Result<ClientConfig> {
    Ok(ClientConfig::from_connection_string(
        info.connection_string(Mode::Tls, policy)?,
        None,
        ClientOptions {
            extra_ca_file: Some(info.ca_pem.clone()),
            connect_timeout_secs: 10,
            operation_timeout_secs: 10,
            ..Default::default()
        },
    )?)
}

/// A rustls connector that trusts only the CA in `ca_pem` (aws-lc-rs, the workspace's one
/// provider), for tests that speak raw AMQP over TLS.
pub fn tls_connector(ca_pem: &std::path::Path) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_pem)
        .with_context(|| format!("open {}", ca_pem.display()))?;
    for cert in certs {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Publishes `(partition, body)` events as schema-v1 JSON over TLS with the Send policy:
/// partition by partition (in the order they first appear), in order, in as few batches as
/// fit.
pub async fn publish(info: &HubInfo, events: &[(&str, Vec<u8>)]) -> Result<()> {
    let mut producer = Producer::connect(client_config(info, Policy::Send)?).await?;
    let mut partitions: Vec<&str> = Vec::new();
    for (p, _) in events {
        if !partitions.contains(p) {
            partitions.push(p);
        }
    }
    for partition in partitions {
        let opts = || BatchOptions {
            partition_id: Some(partition.to_string()),
            ..Default::default()
        };
        let mut batch = producer.create_batch(opts())?;
        for (_, body) in events.iter().filter(|(p, _)| *p == partition) {
            let ev = EventData::new(body.clone())
                .with_content_type("application/json")
                .with_property("schema", tcpulse_schema::SCHEMA_V1);
            add_or_send(&mut producer, &mut batch, &opts(), ev).await?;
        }
        producer.send_batch(&batch).await?;
    }
    producer.close().await;
    Ok(())
}

/// Adds `event` to `batch`; when the batch is full, sends it, starts a new one with `options`
/// and adds the event there. Says whether a batch was sent.
pub async fn add_or_send(
    producer: &mut Producer,
    batch: &mut EventBatch,
    options: &BatchOptions,
    event: EventData,
) -> Result<bool> {
    match batch.try_add(event) {
        Ok(()) => Ok(false),
        Err(TryAddError::Full { event, .. }) => {
            producer.send_batch(batch).await?;
            *batch = producer.create_batch(options.clone())?;
            batch
                .try_add(*event)
                .map_err(|e| anyhow!("event too large: {e}"))?;
            Ok(true)
        }
        Err(e) => bail!("event not added: {e}"),
    }
}

/// Every event of every partition, from earliest, until each partition has been quiet for
/// `idle` (bounded by `max` overall).
pub async fn read_all(info: &HubInfo, idle: Duration, max: Duration) -> Result<Vec<ReceivedEvent>> {
    let deadline = Instant::now() + max;
    let mut out = Vec::new();
    for p in info.partition_ids() {
        let mut opts = ConsumerOptions::new(p.clone());
        opts.start = StartPosition::Earliest;
        let mut c = tokio::time::timeout(
            Duration::from_secs(20),
            Consumer::connect(client_config(info, Policy::Listen)?, opts),
        )
        .await
        .map_err(|_| anyhow!("consumer connect to partition {p} timed out"))??;
        loop {
            if Instant::now() > deadline {
                bail!("reading the hub back took longer than {max:?}");
            }
            match tokio::time::timeout(idle, c.recv()).await {
                Ok(ev) => out.push(ev.with_context(|| format!("recv on partition {p}"))?),
                Err(_) => break,
            }
        }
        c.close().await;
    }
    Ok(out)
}

/// A status event read back from the hub: its routing and its JSON body.
#[derive(Debug, Clone)]
pub struct Status {
    /// The partition it was in.
    pub partition: String,
    /// Its sequence number there.
    pub sequence_number: i64,
    /// When the hub enqueued it, ms since the epoch.
    pub enqueued_ms: i64,
    /// The body.
    pub body: Value,
}

impl Status {
    /// `instance`.
    pub fn instance(&self) -> &str {
        self.body["instance"].as_str().unwrap_or_default()
    }
    /// `connector`.
    pub fn connector(&self) -> &str {
        self.body["connector"].as_str().unwrap_or_default()
    }
    /// `boot`.
    pub fn boot(&self) -> &str {
        self.body["boot"].as_str().unwrap_or_default()
    }
    /// `seq` (`u64::MAX` if absent).
    pub fn seq(&self) -> u64 {
        self.body["seq"].as_u64().unwrap_or(u64::MAX)
    }
    /// `calls.call_count` (-1 if absent).
    pub fn calls(&self) -> i64 {
        self.body["calls"]["call_count"].as_i64().unwrap_or(-1)
    }
    /// `time` in ms since the epoch (-1 if absent or not RFC 3339).
    pub fn time_ms(&self) -> i64 {
        let t = self.body["time"].as_str().unwrap_or_default();
        tcpulse_schema::Timestamp::parse_rfc3339(t)
            .map(|t| t.unix_millis())
            .unwrap_or(-1)
    }
}

/// The events as status events; an error if a body is not JSON.
pub fn statuses(events: &[ReceivedEvent]) -> Result<Vec<Status>> {
    events
        .iter()
        .map(|e| {
            Ok(Status {
                partition: e.partition_id.clone(),
                sequence_number: e.sequence_number,
                enqueued_ms: unix_ms(e.enqueued_time),
                body: serde_json::from_slice(&e.body).context("event body is not JSON")?,
            })
        })
        .collect()
}

/// `t` in ms since the epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Now, in ms since the epoch.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}
