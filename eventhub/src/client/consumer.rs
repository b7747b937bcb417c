//! The consumer: one receiver on one partition of a consumer group.
//!
//! Positioned by a selector filter (`fe2o3_amqp_ext::filters::SelectorFilter` in the source
//! filter map). Link credit (`prefetch`) bounds how many events wait in memory. On a lost
//! link or connection it reconnects with backoff and resumes *after* the last event it handed
//! out (an exclusive sequence-number filter): no gap, no repeat. `amqp:link:stolen` (a
//! receiver with a higher epoch took the partition) is returned as
//! [`ReceiveError::LinkStolen`] and never retried.

use std::collections::VecDeque;
use std::time::Duration;

use fe2o3_amqp::{
    link::{delivery::Delivery, receiver::CreditMode, LinkStateError, Receiver, RecvError},
    types::{
        definitions::{Fields, ReceiverSettleMode, SenderSettleMode},
        messaging::{Body, Source},
        primitives::{Symbol, Value},
    },
};
use fe2o3_amqp_ext::filters::SelectorFilter;
use futures::FutureExt as _;

use super::{
    config::ClientConfig,
    connection::AmqpConnection,
    error::{ReceiveError, ServiceError},
    event::ReceivedEvent,
    retry::Retrier,
};
use crate::position::StartPosition;
use crate::wire::{self, condition};

/// Default consumer group.
pub const DEFAULT_CONSUMER_GROUP: &str = "$Default";

/// Default link credit: events fetched ahead of the caller (the Python SDK's prefetch).
pub const fn default_prefetch() -> u32 {
    300
}

/// What a consumer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Consumer group. Default `$Default`.
    pub consumer_group: String,
    /// Partition id.
    pub partition_id: String,
    /// Where to start. Default [`StartPosition::Latest`].
    pub start: StartPosition,
    /// Link credit: at most this many events wait in memory. Default 300.
    pub prefetch: u32,
    /// Owner level (`com.microsoft:epoch`): an exclusive receiver; a higher level elsewhere
    /// steals the partition. Default none.
    pub owner_level: Option<i64>,
}

impl ConsumerOptions {
    /// Defaults for a partition.
    pub fn new(partition_id: impl Into<String>) -> Self {
        ConsumerOptions {
            consumer_group: DEFAULT_CONSUMER_GROUP.to_string(),
            partition_id: partition_id.into(),
            start: StartPosition::default(),
            prefetch: default_prefetch(),
            owner_level: None,
        }
    }
}

/// Reads one partition.
#[derive(Debug)]
pub struct Consumer {
    config: ClientConfig,
    options: ConsumerOptions,
    live: Option<(AmqpConnection, Receiver)>,
    last_sequence_number: Option<i64>,
    last_offset: Option<String>,
    connects: u64,
    /// Events read since credit was last granted.
    since_grant: u32,
    /// Events taken off the link but not yet handed out. A delivery lands here before any
    /// `.await`, so a receive cancelled half-way (a `select!` in the caller) loses nothing:
    /// the next call hands it out.
    ready: VecDeque<ReceivedEvent>,
}

/// The event a delivery carries, or `None` when it is malformed (missing service
/// annotations): bad input never stops a partition, so it is logged and skipped. Takes the
/// fields it logs rather than the consumer, which is borrowed by its live receiver here.
fn event_of(
    delivery: Delivery<Body<Value>>,
    hub: &str,
    options: &ConsumerOptions,
) -> Option<ReceivedEvent> {
    match ReceivedEvent::from_message(delivery.into_message(), &options.partition_id) {
        Ok(event) => Some(event),
        Err(why) => {
            tracing::warn!(
                hub,
                consumer_group = %options.consumer_group,
                partition = %options.partition_id,
                %why,
                "skipping a malformed event"
            );
            None
        }
    }
}

fn from_condition(entity: &str, error: ServiceError) -> ReceiveError {
    match error.condition.as_str() {
        condition::UNAUTHORIZED => ReceiveError::Unauthorized {
            entity: entity.to_string(),
            error,
        },
        condition::NOT_FOUND => ReceiveError::NotFound {
            entity: entity.to_string(),
            error,
        },
        condition::LINK_STOLEN => ReceiveError::LinkStolen {
            entity: entity.to_string(),
            error,
        },
        _ => ReceiveError::Service(error),
    }
}

fn from_recv(entity: &str, e: RecvError) -> ReceiveError {
    match e {
        RecvError::LinkStateError(
            LinkStateError::RemoteClosedWithError(err)
            | LinkStateError::RemoteDetachedWithError(err),
        ) => from_condition(entity, ServiceError::from(err)),
        other => ReceiveError::LinkLost(other.to_string()),
    }
}

impl Consumer {
    /// Connects and attaches the receiver (retrying transient failures).
    pub async fn connect(
        config: ClientConfig,
        options: ConsumerOptions,
    ) -> Result<Consumer, ReceiveError> {
        if options.prefetch == 0 {
            return Err(ReceiveError::InvalidArgument(
                "prefetch must be at least 1".into(),
            ));
        }
        let mut c = Consumer {
            config,
            options,
            live: None,
            last_sequence_number: None,
            last_offset: None,
            connects: 0,
            since_grant: 0,
            ready: VecDeque::new(),
        };
        let mut retrier = Retrier::new(&c.config.options.retry);
        loop {
            match c.attach().await {
                Ok(()) => return Ok(c),
                Err(e) => match retrier.next_delay(e.is_transient()) {
                    Some(d) => {
                        tracing::warn!(entity = %c.entity(), delay_ms = d.as_millis() as u64, error = %e, "consumer connect failed; retrying");
                        tokio::time::sleep(d).await;
                    }
                    None => return Err(e),
                },
            }
        }
    }

    /// `<hub>/ConsumerGroups/<cg>/Partitions/<id>`.
    pub fn entity(&self) -> String {
        format!(
            "{}/ConsumerGroups/{}/Partitions/{}",
            self.config.hub, self.options.consumer_group, self.options.partition_id
        )
    }

    /// The partition read.
    pub fn partition_id(&self) -> &str {
        &self.options.partition_id
    }

    /// Sequence number of the last event handed out.
    pub fn last_sequence_number(&self) -> Option<i64> {
        self.last_sequence_number
    }

    /// How many times the link was re-established after the first attach.
    pub fn reconnects(&self) -> u64 {
        self.connects.saturating_sub(1)
    }

    /// Offset of the last event handed out.
    pub fn last_offset(&self) -> Option<&str> {
        self.last_offset.as_deref()
    }

    /// The position a (re)attach starts from: after the last event handed out, else the
    /// configured start.
    fn position(&self) -> StartPosition {
        match self.last_sequence_number {
            Some(n) => StartPosition::SequenceNumber {
                sequence_number: n,
                inclusive: false,
            },
            None => self.options.start.clone(),
        }
    }

    async fn attach(&mut self) -> Result<(), ReceiveError> {
        if self.live.is_some() {
            return Ok(());
        }
        let entity = self.entity();
        let mut conn = AmqpConnection::open(&self.config, "consumer").await?;
        let audience = self
            .config
            .audience(&format!("/consumergroups/{}", self.options.consumer_group));
        conn.authorize(&audience).await?;
        let position = self.position();
        let selector = position.selector();
        let address = format!("amqps://{}/{entity}", self.config.namespace());
        let name = uuid::Uuid::new_v4().to_string();
        let mut builder = Receiver::builder()
            .name(name.clone())
            .source(
                Source::builder()
                    .address(address.clone())
                    .add_to_filter(
                        Symbol::from(wire::SELECTOR_FILTER),
                        SelectorFilter::new(selector.clone()),
                    )
                    .build(),
            )
            .target(format!("receiver-link-{name}"))
            .sender_settle_mode(SenderSettleMode::Settled)
            .receiver_settle_mode(ReceiverSettleMode::First)
            .credit_mode(CreditMode::Manual)
            .auto_accept(false);
        if let Some(epoch) = self.options.owner_level {
            let mut props = Fields::new();
            props.insert(Symbol::from(wire::EPOCH), Value::Long(epoch));
            builder = builder.properties(props);
        }
        let timeout = self.config.options.operation_timeout();
        let mut receiver = tokio::time::timeout(timeout, builder.attach(&mut conn.session))
            .await
            .map_err(|_| {
                ReceiveError::Connect(super::error::ConnectError::Timeout {
                    step: "attach receiver",
                    after: timeout,
                })
            })?
            .map_err(|e| match e {
                fe2o3_amqp::link::ReceiverAttachError::RemoteClosedWithError(err) => {
                    from_condition(&entity, ServiceError::from(err))
                }
                other => {
                    ReceiveError::LinkLost(format!("cannot attach a receiver to {entity}: {other}"))
                }
            })?;
        // Credit is granted by hand: fe2o3's automatic mode only counts settled-by-us
        // deliveries, and the service sends pre-settled ones.
        receiver
            .set_credit(self.options.prefetch)
            .await
            .map_err(|e| ReceiveError::LinkLost(format!("cannot grant credit: {e}")))?;
        self.since_grant = 0;
        self.connects += 1;
        if self.connects > 1 {
            tracing::info!(%entity, %selector, endpoint = conn.endpoint(), "consumer reconnected");
        } else {
            tracing::debug!(%entity, %selector, "consumer attached");
        }
        self.live = Some((conn, receiver));
        Ok(())
    }

    fn drop_live(&mut self, why: &ReceiveError) {
        // Not handed out yet: the next attach resumes after the last handed-out event and
        // reads these again.
        self.ready.clear();
        if let Some((conn, receiver)) = self.live.take() {
            tracing::info!(entity = %self.entity(), error = %why, "consumer link lost");
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), receiver.close()).await;
                conn.close().await;
            });
        }
    }

    /// Waits for the next event. Transient failures reconnect (bounded retries, backoff) and
    /// resume after the last event handed out; when retries run out the transient error is
    /// returned and the next call tries again.
    ///
    /// Cancel-safe: an event taken off the link is kept until a call returns it, so dropping
    /// this future (a `select!` branch that lost) never loses or skips an event.
    pub async fn recv(&mut self) -> Result<ReceivedEvent, ReceiveError> {
        let mut retrier = Retrier::new(&self.config.options.retry);
        loop {
            if let Some(ev) = self.ready.pop_front() {
                self.handed_out(&ev);
                return Ok(ev);
            }
            if let Err(e) = self.fill().await {
                self.drop_live(&e);
                match retrier.next_delay(e.is_transient()) {
                    Some(d) => {
                        tracing::warn!(entity = %self.entity(), attempt = retrier.attempts(), delay_ms = d.as_millis() as u64, error = %e, "receive failed; reconnecting");
                        tokio::time::sleep(d).await;
                    }
                    None => return Err(e),
                }
            }
        }
    }

    /// Records `ev` as handed out: a reconnect resumes after it.
    fn handed_out(&mut self, ev: &ReceivedEvent) {
        self.last_sequence_number = Some(ev.sequence_number);
        // Reuses the offset's allocation: this runs for every event.
        match &mut self.last_offset {
            Some(offset) => offset.clone_from(&ev.offset),
            None => self.last_offset = Some(ev.offset.clone()),
        }
    }

    /// Tops the link credit back up to `prefetch` once half of it is used.
    async fn grant_if_due(&mut self) -> Result<(), ReceiveError> {
        if self.since_grant < (self.options.prefetch / 2).max(1) {
            return Ok(());
        }
        let Some((_, receiver)) = self.live.as_mut() else {
            return Ok(());
        };
        receiver
            .set_credit(self.options.prefetch)
            .await
            .map_err(|e| ReceiveError::LinkLost(format!("cannot grant credit: {e}")))?;
        self.since_grant = 0;
        Ok(())
    }

    /// Takes one delivery off the link into `ready` (skipping malformed ones).
    async fn fill(&mut self) -> Result<(), ReceiveError> {
        self.attach().await?;
        // Credit first: with none left nothing would ever arrive.
        self.grant_if_due().await?;
        let (conn, receiver) = self
            .live
            .as_mut()
            .ok_or_else(|| ReceiveError::LinkLost("no connection".into()))?;
        loop {
            let delivery = tokio::select! {
                biased;
                d = receiver.recv::<Body<Value>>() => d,
                _ = conn.closed() => {
                    return Err(ReceiveError::LinkLost("the connection closed".into()))
                }
            };
            // The entity name is only formatted when something went wrong (not per event).
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => return Err(from_recv(&self.entity(), e)),
            };
            self.since_grant += 1;
            if let Some(event) = event_of(delivery, &self.config.hub, &self.options) {
                self.ready.push_back(event);
                break;
            }
        }
        // The event is safe in `ready` across this await.
        self.grant_if_due().await
    }

    /// Up to `max` events: waits at most `max_wait` for the first, then takes what is already
    /// buffered. An empty vector means nothing arrived in time. Cancel-safe like
    /// [`Consumer::recv`]: once it has events it no longer awaits anything.
    pub async fn recv_batch(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<Vec<ReceivedEvent>, ReceiveError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        match tokio::time::timeout(max_wait, self.recv()).await {
            Err(_) => return Ok(out),
            Ok(r) => out.push(r?),
        }
        while out.len() < max {
            if let Some(ev) = self.ready.pop_front() {
                self.handed_out(&ev);
                out.push(ev);
                continue;
            }
            let Some((_, receiver)) = self.live.as_mut() else {
                break;
            };
            // Only what is already here: poll once, without a timer (recv is cancel-safe).
            let next = match receiver.recv::<Body<Value>>().now_or_never() {
                None => break,
                Some(Err(_)) => break, // let the next recv() handle the failure
                Some(Ok(d)) => d,
            };
            self.since_grant += 1;
            if let Some(ev) = event_of(next, &self.config.hub, &self.options) {
                self.handed_out(&ev);
                out.push(ev);
            }
        }
        // Grant without awaiting: `out` must not be lost to a cancellation. If the flow frame
        // cannot go out right now, the next receive grants before it waits.
        if let Some(Err(e)) = self.grant_if_due().now_or_never() {
            // The next recv() notices the broken link and reconnects.
            tracing::debug!(entity = %self.entity(), error = %e, "granting credit failed");
        }
        Ok(out)
    }

    /// Detaches the receiver, ends the session and closes the connection.
    pub async fn close(mut self) {
        if let Some((conn, receiver)) = self.live.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), receiver.close()).await;
            conn.close().await;
        }
    }
}
