//! The producer: single events (format 0) and batches (format 0x80013700) to the hub, by
//! partition key, or to one partition.
//!
//! Every send waits for its outcome. Transient failures (lost link or connection, timeouts,
//! `server-busy`, …) are retried with backoff on a fresh link or connection; fatal ones
//! (unauthorized, not found, message too large) return at once. A retry after a lost outcome
//! may deliver twice: delivery is at least once.

use std::collections::HashMap;

use fe2o3_amqp::{
    link::{self, LinkStateError, Sender},
    types::{
        definitions::{ReceiverSettleMode, SenderSettleMode},
        messaging::{Batch, Data, Message, Outcome},
    },
    Sendable,
};

use super::{
    batch::{BatchOptions, EventBatch},
    config::ClientConfig,
    connection::AmqpConnection,
    error::{condition_for_status, SendError, ServiceError},
    event::EventData,
    retry::Retrier,
};
use crate::wire::{self, condition};

/// Where a single event goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Route by this key.
    pub partition_key: Option<String>,
    /// Send to this partition.
    pub partition_id: Option<String>,
}

/// What a send carries.
enum Outgoing {
    Single(Message<Data>),
    Batch(Message<Batch<Data>>),
}

/// The live connection with its sender links (key: partition id, `""` for the hub).
#[derive(Debug)]
struct Live {
    conn: AmqpConnection,
    senders: HashMap<String, Sender>,
}

/// Sends events to one event hub.
#[derive(Debug)]
pub struct Producer {
    config: ClientConfig,
    live: Option<Live>,
    max_message_size: u64,
    connects: u64,
}

/// Maps a link-level error (detach with a condition) to a send error.
fn from_detach(entity: &str, error: ServiceError) -> SendError {
    match error.condition.as_str() {
        condition::UNAUTHORIZED => SendError::Unauthorized {
            entity: entity.to_string(),
            error,
        },
        condition::NOT_FOUND => SendError::NotFound {
            entity: entity.to_string(),
            error,
        },
        condition::MESSAGE_SIZE_EXCEEDED => SendError::MessageTooLarge {
            size: None,
            max_size: None,
            error: Some(error),
        },
        _ => SendError::Service(error),
    }
}

fn from_link_state(entity: &str, e: &LinkStateError) -> SendError {
    match e {
        LinkStateError::RemoteClosedWithError(err)
        | LinkStateError::RemoteDetachedWithError(err) => {
            from_detach(entity, ServiceError::from(err))
        }
        other => SendError::LinkLost(other.to_string()),
    }
}

fn from_fe2o3_send(entity: &str, e: link::SendError) -> SendError {
    match e {
        link::SendError::MessageSizeExceeded(m) => SendError::MessageTooLarge {
            size: Some(m.size),
            max_size: Some(m.max_size),
            error: None,
        },
        link::SendError::LinkStateError(s) => from_link_state(entity, &s),
        link::SendError::Detached(d) => from_link_state(entity, &LinkStateError::from(d)),
        link::SendError::MessageEncodeError => {
            SendError::InvalidArgument("the message cannot be encoded".into())
        }
        other => SendError::LinkLost(other.to_string()),
    }
}

fn from_attach(entity: &str, e: link::SenderAttachError) -> SendError {
    match e {
        link::SenderAttachError::RemoteClosedWithError(err) => {
            from_detach(entity, ServiceError::from(err))
        }
        other => SendError::LinkLost(format!("cannot attach a sender to {entity}: {other}")),
    }
}

impl Producer {
    /// Connects, authorizes for the hub and attaches the hub sender (to learn the max message
    /// size), retrying transient failures.
    pub async fn connect(config: ClientConfig) -> Result<Producer, SendError> {
        let mut p = Producer {
            config,
            live: None,
            max_message_size: wire::DEFAULT_MAX_MESSAGE_SIZE,
            connects: 0,
        };
        let mut retrier = Retrier::new(&p.config.options.retry);
        loop {
            match p.sender_for("").await {
                Ok(_) => return Ok(p),
                Err(e) => {
                    p.forget("", &e);
                    match retrier.next_delay(e.is_transient()) {
                        Some(delay) => {
                            tracing::warn!(hub = %p.config.hub, attempt = retrier.attempts(), delay_ms = delay.as_millis() as u64, error = %e, "producer connect failed; retrying");
                            tokio::time::sleep(delay).await;
                        }
                        None => return Err(e),
                    }
                }
            }
        }
    }

    /// The event hub.
    pub fn hub(&self) -> &str {
        &self.config.hub
    }

    /// How many times the connection was re-established after the first.
    pub fn reconnects(&self) -> u64 {
        self.connects.saturating_sub(1)
    }

    /// The largest message the service accepts on this hub (from the attach), bytes.
    pub fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    /// An empty batch bounded by the link's max message size.
    pub fn create_batch(&self, options: BatchOptions) -> Result<EventBatch, SendError> {
        EventBatch::new(options, self.max_message_size).map_err(SendError::InvalidArgument)
    }

    /// Sends one event as a plain message (format 0) and waits for the outcome.
    pub async fn send(&mut self, event: EventData, options: SendOptions) -> Result<(), SendError> {
        if options.partition_key.is_some() && options.partition_id.is_some() {
            return Err(SendError::InvalidArgument(
                "set a partition key or a partition id, not both".into(),
            ));
        }
        let message = event.to_message(options.partition_key.as_deref());
        let target = options.partition_id.unwrap_or_default();
        self.deliver(&target, &Outgoing::Single(message)).await
    }

    /// Sends a batch (format 0x80013700) and waits for the outcome. An empty batch is a no-op.
    pub async fn send_batch(&mut self, batch: &EventBatch) -> Result<(), SendError> {
        if batch.is_empty() {
            return Ok(());
        }
        let target = batch.partition_id.clone().unwrap_or_default();
        self.deliver(&target, &Outgoing::Batch(batch.to_message()))
            .await
    }

    async fn deliver(&mut self, target: &str, message: &Outgoing) -> Result<(), SendError> {
        let mut retrier = Retrier::new(&self.config.options.retry);
        loop {
            match self.try_deliver(target, message).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.forget(target, &e);
                    match retrier.next_delay(e.is_transient()) {
                        Some(delay) => {
                            tracing::warn!(hub = %self.config.hub, partition = target, attempt = retrier.attempts(), delay_ms = delay.as_millis() as u64, error = %e, "send failed; retrying");
                            tokio::time::sleep(delay).await;
                        }
                        None => {
                            tracing::debug!(hub = %self.config.hub, partition = target, error = %e, "send failed");
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Drops what an error made unusable: the link after a link error, the whole connection
    /// after anything transient.
    fn forget(&mut self, target: &str, e: &SendError) {
        match e {
            SendError::InvalidArgument(_) => {}
            SendError::MessageTooLarge { error: None, .. } => {}
            e if e.is_transient() => {
                if let Some(live) = self.live.take() {
                    tracing::info!(endpoint = live.conn.endpoint(), error = %e, "dropping the producer connection; the next send reconnects");
                    tokio::spawn(close_live(live));
                }
            }
            _ => {
                if let Some(live) = self.live.as_mut() {
                    if let Some(s) = live.senders.remove(target) {
                        tokio::spawn(async move {
                            let _ = s.close().await;
                        });
                    }
                }
            }
        }
    }

    fn entity(&self, partition: &str) -> String {
        if partition.is_empty() {
            self.config.hub.clone()
        } else {
            format!("{}/Partitions/{partition}", self.config.hub)
        }
    }

    async fn sender_for(&mut self, partition: &str) -> Result<&mut Sender, SendError> {
        if self.live.is_none() {
            let conn = AmqpConnection::open(&self.config, "producer").await?;
            conn.authorize(&self.config.audience("")).await?;
            self.connects += 1;
            if self.connects > 1 {
                tracing::info!(hub = %self.config.hub, endpoint = conn.endpoint(), "producer reconnected");
            }
            self.live = Some(Live {
                conn,
                senders: HashMap::new(),
            });
        }
        let entity = self.entity(partition);
        let address = format!("amqps://{}/{entity}", self.config.namespace());
        let timeout = self.config.options.operation_timeout();
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| SendError::LinkLost("no connection".into()))?;
        if !live.senders.contains_key(partition) {
            let name = uuid::Uuid::new_v4().to_string();
            let attach = Sender::builder()
                .name(name.clone())
                .source(format!("sender-link-{name}"))
                .target(address.clone())
                .sender_settle_mode(SenderSettleMode::Unsettled)
                .receiver_settle_mode(ReceiverSettleMode::First)
                .attach(&mut live.conn.session);
            let sender = tokio::time::timeout(timeout, attach)
                .await
                .map_err(|_| SendError::Timeout(timeout))?
                .map_err(|e| from_attach(&entity, e))?;
            let max = sender
                .max_message_size()
                .unwrap_or(wire::DEFAULT_MAX_MESSAGE_SIZE);
            if partition.is_empty() {
                self.max_message_size = max;
            }
            tracing::debug!(%address, max_message_size = max, "sender attached");
            live.senders.insert(partition.to_string(), sender);
        }
        live.senders
            .get_mut(partition)
            .ok_or_else(|| SendError::LinkLost("sender vanished".into()))
    }

    async fn try_deliver(&mut self, partition: &str, message: &Outgoing) -> Result<(), SendError> {
        let entity = self.entity(partition);
        let timeout = self.config.options.operation_timeout();
        self.sender_for(partition).await?;
        let Live { conn, senders } = self
            .live
            .as_mut()
            .ok_or_else(|| SendError::LinkLost("no connection".into()))?;
        let sender = senders
            .get_mut(partition)
            .ok_or_else(|| SendError::LinkLost("sender vanished".into()))?;
        let send = async {
            match message {
                Outgoing::Single(m) => sender.send(m.clone()).await,
                Outgoing::Batch(m) => {
                    sender
                        .send(
                            Sendable::builder()
                                .message(m.clone())
                                .message_format(wire::BATCH_MESSAGE_FORMAT)
                                .build(),
                        )
                        .await
                }
            }
        };
        // A sender waiting for credit is not woken when the connection dies: watch it too.
        let outcome = tokio::select! {
            biased;
            r = tokio::time::timeout(timeout, send) => r
                .map_err(|_| SendError::Timeout(timeout))?
                .map_err(|e| from_fe2o3_send(&entity, e))?,
            _ = conn.closed() => {
                return Err(SendError::LinkLost("the connection closed during the send".into()))
            }
        };
        match outcome {
            Outcome::Accepted(_) => Ok(()),
            Outcome::Rejected(r) => {
                let error = r.error.map(ServiceError::from).unwrap_or_else(|| {
                    ServiceError::new(
                        condition::INTERNAL_ERROR,
                        Some("rejected without an error".into()),
                    )
                });
                Err(from_detach(&entity, error))
            }
            Outcome::Released(_) => Err(SendError::Service(ServiceError::new(
                condition::SERVER_BUSY,
                Some("the service released the delivery".into()),
            ))),
            Outcome::Modified(_) => Err(SendError::Service(ServiceError::new(
                condition::SERVER_BUSY,
                Some("the service returned the delivery as modified".into()),
            ))),
            #[allow(unreachable_patterns)]
            _ => Err(SendError::Service(ServiceError::new(
                condition_for_status(500),
                Some("unexpected delivery outcome".into()),
            ))),
        }
    }

    /// Closes the links, ends the session and closes the connection.
    pub async fn close(mut self) {
        if let Some(live) = self.live.take() {
            close_live(live).await;
        }
    }
}

async fn close_live(live: Live) {
    let Live { conn, senders } = live;
    for (_, s) in senders {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.close()).await;
    }
    conn.close().await;
}
