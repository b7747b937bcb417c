//! The Event Hubs publisher: [`tcpulse_eventhub::client::Producer`] behind the agent's
//! [`Publisher`] seam.
//!
//! Each body becomes one event (`content-type: application/json`, application property
//! `schema`), packed into as few batches as the service's max message size allows, all with
//! the connector as partition key. The producer connects on first use and reconnects after
//! any failure; the agent's spool and backoff do the retrying.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use tcpulse_eventhub::client::{
    BatchOptions, ClientConfig, EventData, Producer, SendError, TryAddError,
};
use tcpulse_eventhub::identity::CredentialStats;
use tokio::sync::Mutex;

use super::{PublishError, Publisher};

/// Publishes to one event hub.
#[derive(Debug)]
pub struct EventHubsPublisher {
    config: ClientConfig,
    producer: Mutex<Option<Producer>>,
    credential: Option<Arc<CredentialStats>>,
}

impl EventHubsPublisher {
    /// A publisher for `config`'s hub; connects on the first send.
    pub fn new(config: ClientConfig) -> Self {
        EventHubsPublisher {
            config,
            producer: Mutex::new(None),
            credential: None,
        }
    }

    /// Reports `credential`'s numbers (the Entra ID credential `config` was built with).
    pub fn with_credential(mut self, credential: Option<Arc<CredentialStats>>) -> Self {
        self.credential = credential;
        self
    }
}

fn map(e: SendError) -> PublishError {
    if e.is_fatal() {
        PublishError::Fatal(Box::new(e))
    } else {
        PublishError::Transient(Box::new(e))
    }
}

fn event(body: Bytes) -> EventData {
    EventData::new(body)
        .with_content_type("application/json")
        .with_property("schema", tcpulse_schema::SCHEMA_V1)
}

impl Publisher for EventHubsPublisher {
    fn send<'a>(
        &'a self,
        partition_key: &'a str,
        bodies: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let mut guard = self.producer.lock().await;
            if guard.is_none() {
                *guard = Some(Producer::connect(self.config.clone()).await.map_err(map)?);
            }
            let Some(producer) = guard.as_mut() else {
                return Err(PublishError::transient("producer not connected"));
            };
            let options = || BatchOptions {
                partition_key: Some(partition_key.to_string()),
                ..BatchOptions::default()
            };
            let mut batch = producer.create_batch(options()).map_err(map)?;
            let result: Result<(), PublishError> = async {
                for body in bodies {
                    match batch.try_add(event(body)) {
                        Ok(()) => {}
                        Err(TryAddError::Full { event, .. }) => {
                            producer.send_batch(&batch).await.map_err(map)?;
                            batch = producer.create_batch(options()).map_err(map)?;
                            batch.try_add(*event).map_err(|_| {
                                PublishError::fatal(
                                    "a status event is larger than the hub's max message size",
                                )
                            })?;
                        }
                        Err(TryAddError::TooLarge { .. }) => {
                            return Err(PublishError::fatal(
                                "a status event is larger than the hub's max message size",
                            ))
                        }
                        Err(TryAddError::Encode(why)) => {
                            return Err(PublishError::fatal(format!(
                                "a status event cannot be encoded: {why}"
                            )))
                        }
                    }
                }
                if !batch.is_empty() {
                    producer.send_batch(&batch).await.map_err(map)?;
                }
                Ok(())
            }
            .await;
            if result.is_err() {
                // Start from a fresh connection (and a fresh token) next time: after a
                // fatal refusal too, so a rotated key is picked up at the next retry.
                if let Some(p) = guard.take() {
                    p.close().await;
                }
            }
            result
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(p) = self.producer.lock().await.take() {
                p.close().await;
            }
        })
    }

    fn credential(&self) -> Option<Arc<CredentialStats>> {
        self.credential.clone()
    }
}
