//! Our Event Hubs client against a test hub: its config for a policy over TLS, publishing
//! events to chosen partitions, and reading every event back from earliest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tcpulse_eventhub::client::{
    BatchOptions, ClientConfig, ClientOptions, Consumer, ConsumerOptions, EventData, Producer,
    ReceivedEvent, StartPosition, TryAddError,
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
            match batch.try_add(ev) {
                Ok(()) => {}
                Err(TryAddError::Full { event, .. }) => {
                    producer.send_batch(&batch).await?;
                    batch = producer.create_batch(opts())?;
                    batch
                        .try_add(*event)
                        .map_err(|e| anyhow!("event too large: {e}"))?;
                }
                Err(e) => bail!("event not added: {e}"),
            }
        }
        producer.send_batch(&batch).await?;
    }
    producer.close().await;
    Ok(())
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
