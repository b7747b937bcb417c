//! Producer (incoming) and consumer (outgoing) links.
//!
//! Producers: single messages (format 0) become one event; batches (format 0x80013700) are
//! unpacked, each data section being a whole encoded message kept byte for byte. A delivery is
//! accepted only after its events are in the partition log; a store failure rejects it.
//!
//! Consumers: pre-settled transfers (the Python SDK never settles), paced by the client's link
//! credit, each stamped with sequence number, offset (string), enqueued time and partition key.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::{
    link::{delivery::DeliveryInfo, Receiver, Sender},
    types::{
        definitions::{self, Fields},
        messaging::{
            annotations::OwnedKey, Body, DeliveryAnnotations, Message, MessageAnnotations,
        },
        primitives::{Symbol, Timestamp, Value},
    },
    Delivery, Sendable,
};

use tcpulse_eventhub::position::StartPosition;

use crate::{
    auth::{ConnAuth, Right},
    broker::{EpochGuard, EventHub, Stolen},
    store::Record,
    Shared,
};
use tcpulse_eventhub::wire;
use tokio::sync::watch;

/// An AMQP error with all three fields (pyamqp indexes `info`).
pub(crate) fn link_error(condition: &str, description: impl Into<String>) -> definitions::Error {
    definitions::Error::new(
        definitions::ErrorCondition::Custom(Symbol::from(condition)),
        Some(description.into()),
        Some(Fields::new()),
    )
}

/// Something that can be closed with an error (sender or receiver).
pub(crate) trait CloseWith {
    fn close_with(self, error: definitions::Error) -> impl std::future::Future<Output = ()> + Send;
}

impl CloseWith for Sender {
    async fn close_with(self, error: definitions::Error) {
        let _ = self.close_with_error(error).await;
    }
}

impl CloseWith for Receiver {
    async fn close_with(self, error: definitions::Error) {
        let _ = self.close_with_error(error).await;
    }
}

/// Closes a link with an error, ignoring a peer that is already gone or does not answer
/// within two seconds.
pub(crate) async fn close_link_with<L: CloseWith>(link: L, error: definitions::Error) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), link.close_with(error)).await;
}

/// Sleeps until the auth grant expires; forever when it does not.
async fn until(expiry: Option<Instant>) {
    match expiry {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Serves a producer link into `hub` (a fixed partition, or routed per delivery).
pub(crate) async fn serve_producer(
    shared: Arc<Shared>,
    auth: Arc<ConnAuth>,
    mut receiver: Receiver,
    hub: Arc<EventHub>,
    partition: Option<usize>,
    path: String,
    mut expiry: Option<Instant>,
) {
    loop {
        let delivery = tokio::select! {
            _ = shared.shutdown.cancelled() => {
                close_link_with(receiver, link_error(wire::condition::DETACH_FORCED, "the hub is shutting down")).await;
                return;
            }
            _ = until(expiry) => {
                match auth.check(&path, Right::Send) {
                    Ok(e) => { expiry = e; continue; }
                    Err(denied) => {
                        tracing::info!(%path, "token expired; detaching producer");
                        close_link_with(receiver, link_error(wire::condition::UNAUTHORIZED, denied.0)).await;
                        return;
                    }
                }
            }
            d = receiver.recv::<Body<Value>>() => d,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%path, error = %e, "producer link ended");
                let _ = receiver.close().await;
                return;
            }
        };
        let format = delivery.message_format().unwrap_or(0);
        if let Err(denied) = auth.check(&path, Right::Send) {
            tracing::debug!(%path, "rejecting a delivery without Send rights");
            let _ = receiver
                .reject(
                    &delivery,
                    link_error(wire::condition::UNAUTHORIZED, denied.0),
                )
                .await;
            continue;
        }
        let max = shared.config.max_message_bytes;
        match unpack(&delivery, format) {
            Ok((_, _, size)) if size > max => {
                let id = delivery.delivery_id();
                tracing::info!(%path, size, max, "rejecting an oversize delivery");
                let _ = receiver
                    .reject(
                        &delivery,
                        link_error(
                            wire::condition::MESSAGE_SIZE_EXCEEDED,
                            format!("The received message (delivery-id:{id}, size:{size} bytes) exceeds the limit ({max} bytes) currently allowed on the link."),
                        ),
                    )
                    .await;
            }
            Err(why) => {
                tracing::info!(%path, why, "rejecting undecodable delivery");
                let _ = receiver
                    .reject(&delivery, link_error(wire::condition::DECODE_ERROR, why))
                    .await;
            }
            Ok((key, items, _)) => {
                let idx = partition.unwrap_or_else(|| hub.route(key.as_deref()));
                let log = &hub.partitions[idx];
                let n = items.len();
                match log.append(items) {
                    Ok(_) => {
                        let info: DeliveryInfo = delivery.into();
                        if let Err(e) = receiver.accept(info).await {
                            tracing::debug!(%path, error = %e, "accept disposition failed");
                        }
                        tracing::trace!(hub = %hub.name, partition = idx, events = n, "appended");
                    }
                    Err(e) => {
                        tracing::error!(hub = %hub.name, partition = idx, error = %e, "partition store failed; rejecting the delivery (the client may retry)");
                        let _ = receiver
                            .reject(
                                &delivery,
                                link_error(
                                    wire::condition::INTERNAL_ERROR,
                                    format!("the hub could not store the event: {e}"),
                                ),
                            )
                            .await;
                    }
                }
            }
        }
    }
}

fn key_of(m: &Message<Body<Value>>) -> Option<String> {
    let ann = m.message_annotations.as_ref()?;
    match ann
        .0
        .get(&OwnedKey::Symbol(Symbol::from(wire::PARTITION_KEY)))?
    {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        _ => None,
    }
}

type Unpacked = (Option<String>, Vec<(Option<String>, Bytes)>, u64);

/// Splits a delivery into stored events: (routing key, [(event key, encoded message)],
/// the delivery's size in bytes as the SDKs count it).
fn unpack(delivery: &Delivery<Body<Value>>, format: u32) -> Result<Unpacked, String> {
    let envelope = delivery.message();
    let envelope_key = key_of(envelope);
    if format == wire::BATCH_MESSAGE_FORMAT {
        let Body::Data(sections) = &envelope.body else {
            return Err("a batch (format 0x80013700) must carry data sections".into());
        };
        let mut items = Vec::with_capacity(sections.len());
        let mut first_key = None;
        for (i, d) in sections.iter().enumerate() {
            let inner: Deserializable<Message<Body<Value>>> = serde_amqp::from_slice(&d.0)
                .map_err(|e| format!("batch section {i} is not an AMQP message: {e}"))?;
            let k = key_of(&inner.0).or_else(|| envelope_key.clone());
            if first_key.is_none() {
                first_key = k.clone();
            }
            items.push((k, Bytes::copy_from_slice(&d.0)));
        }
        if items.is_empty() {
            return Err("empty batch".into());
        }
        // Each section costs its bytes plus the data-section header (5 or 8 bytes).
        let size = items
            .iter()
            .map(|(_, b)| b.len() as u64 + if b.len() < 256 { 5 } else { 8 })
            .sum();
        Ok((envelope_key.or(first_key), items, size))
    } else if format == 0 {
        let bytes = serde_amqp::to_vec(&Serializable(envelope))
            .map_err(|e| format!("cannot re-encode message: {e}"))?;
        let size = bytes.len() as u64;
        Ok((
            envelope_key.clone(),
            vec![(envelope_key, Bytes::from(bytes))],
            size,
        ))
    } else {
        Err(format!("unsupported message format {format:#x}"))
    }
}

/// Everything a consumer link needs.
pub(crate) struct Consumer {
    pub shared: Arc<Shared>,
    pub auth: Arc<ConnAuth>,
    pub hub: Arc<EventHub>,
    pub partition: usize,
    pub path: String,
    pub start: StartPosition,
    pub guard: EpochGuard,
    pub expiry: Option<Instant>,
    pub runtime_metric: bool,
}

/// The first sequence number to deliver for a start position.
fn first_sequence(log: &crate::store::PartitionLog, start: &StartPosition) -> i64 {
    let begin = log.info().begin_sequence_number.max(0);
    match start {
        StartPosition::Earliest => log.seq_after_offset(-1, false),
        StartPosition::Latest => log.next_sequence_number(),
        // `StartPosition::from_selector` makes only decimal offsets; this hub's offsets are
        // decimal byte positions, so anything else cannot name one of its events.
        StartPosition::Offset { offset, inclusive } => match offset.parse::<i64>() {
            Ok(offset) => log.seq_after_offset(offset, *inclusive),
            Err(_) => log.next_sequence_number(),
        },
        StartPosition::SequenceNumber {
            sequence_number,
            inclusive,
        } => {
            let s = if *inclusive {
                *sequence_number
            } else {
                sequence_number.saturating_add(1)
            };
            s.max(begin)
        }
        StartPosition::EnqueuedTime { time, inclusive } => {
            let ms = time
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            log.seq_after_enqueued_time(ms, *inclusive)
        }
    }
}

fn stamp(
    record: &Record,
    log_info: Option<&crate::store::PartitionInfo>,
) -> Result<Message<Body<Value>>, String> {
    let mut msg: Deserializable<Message<Body<Value>>> =
        serde_amqp::from_slice(&record.payload).map_err(|e| e.to_string())?;
    let msg = &mut msg.0;
    let ann = msg
        .message_annotations
        .get_or_insert_with(|| MessageAnnotations(Default::default()));
    // Room for the four stamps at once: growing the map insert by insert cost a few
    // reallocations per delivery.
    ann.0.as_inner_mut().reserve(4);
    let mut put = |k: &str, v: Value| {
        ann.0.insert(OwnedKey::Symbol(Symbol::from(k)), v);
    };
    put(wire::SEQUENCE_NUMBER, Value::Long(record.sequence_number));
    put(wire::OFFSET, Value::String(record.offset.to_string()));
    put(
        wire::ENQUEUED_TIME,
        Value::Timestamp(Timestamp::from_milliseconds(record.enqueued_time_ms)),
    );
    if let Some(k) = &record.partition_key {
        put(wire::PARTITION_KEY, Value::String(k.clone()));
    }
    if let Some(info) = log_info {
        let mut da = DeliveryAnnotations(Default::default());
        let mut dput = |k: &str, v: Value| {
            da.0.insert(OwnedKey::Symbol(Symbol::from(k)), v);
        };
        dput(
            "last_enqueued_sequence_number",
            Value::Long(info.last_sequence_number),
        );
        dput(
            "last_enqueued_offset",
            Value::String(info.last_offset.to_string()),
        );
        dput(
            "last_enqueued_time_utc",
            Value::Timestamp(Timestamp::from_milliseconds(info.last_enqueued_time_ms)),
        );
        dput(
            "runtime_info_retrieval_time_utc",
            Value::Timestamp(Timestamp::from_milliseconds(crate::broker::now_ms())),
        );
        msg.delivery_annotations = Some(da);
    }
    Ok(std::mem::replace(
        msg,
        Message::builder().body(Body::Empty).build(),
    ))
}

/// Why a consumer loop stopped.
enum Stop {
    Shutdown,
    Stolen(String),
    Unauthorized(String),
    /// Reading the partition failed (a segment could not be read back).
    Store(String),
    Gone,
}

/// Serves a consumer link until the client detaches, a higher epoch steals it, its token
/// expires or the hub stops.
///
/// The futures that can end the link (shutdown, a steal, the token's expiry) are created once
/// and polled beside each batch of up to 256 sends: setting up a timer and two waiters per
/// delivery cost more than the delivery itself, and polling them per delivery still cost
/// a few percent.
pub(crate) async fn serve_consumer(c: Consumer, mut sender: Sender) {
    let Consumer {
        shared,
        auth,
        hub,
        partition,
        path,
        start,
        guard,
        expiry,
        runtime_metric,
    } = c;
    let log = &hub.partitions[partition];
    let mut next = first_sequence(log, &start);
    let mut watch = log.subscribe();
    tracing::debug!(%path, ?start, next, "consumer attached");
    let shutdown = shared.shutdown.cancelled();
    tokio::pin!(shutdown);
    let kicked = until_stolen(guard.kicked.clone());
    tokio::pin!(kicked);
    let expires = tokio::time::sleep_until(deadline(expiry));
    tokio::pin!(expires);
    let stop = loop {
        watch.borrow_and_update();
        let batch = match log.read_from(next, 256) {
            Ok(b) => b,
            Err(e) => break Stop::Store(e.to_string()),
        };
        if batch.is_empty() {
            tokio::select! {
                _ = &mut shutdown => break Stop::Shutdown,
                why = &mut kicked => break Stop::Stolen(why),
                _ = &mut expires => if let Err(stop) = recheck(&auth, &path, expires.as_mut()) {
                    break stop;
                },
                r = watch.changed() => if r.is_err() { break Stop::Shutdown },
                _ = sender.on_detach() => break Stop::Gone,
            }
            continue;
        }
        let info = runtime_metric.then(|| log.info());
        // The batch goes out as one future: the ends beside it are polled when it waits (for
        // link credit or room towards the session), not once per event.
        let send_all = send_records(&mut sender, &batch, info.as_ref(), &path, &mut next);
        tokio::select! {
            biased;
            _ = &mut shutdown => break Stop::Shutdown,
            why = &mut kicked => break Stop::Stolen(why),
            // A batch cut short here is sent on from `next` once the token is checked.
            _ = &mut expires => if let Err(stop) = recheck(&auth, &path, expires.as_mut()) {
                break stop;
            },
            r = send_all => if let Err(e) = r {
                tracing::debug!(%path, error = %e, "consumer link ended while sending");
                break Stop::Gone;
            },
        }
    };
    end_consumer(sender, stop, &path).await;
    drop(guard);
}

/// Sends `batch` in order, pre-settled, advancing `next` past each record sent (or skipped:
/// a stored event that cannot be decoded is logged and left out). `send_batchable` is
/// cancel-safe (fe2o3-amqp-0.18.4/src/link/sender.rs:380-385, issue #22), so dropping this
/// future between records loses nothing: the caller resumes from `next`.
async fn send_records(
    sender: &mut Sender,
    batch: &[Arc<Record>],
    info: Option<&crate::store::PartitionInfo>,
    path: &str,
    next: &mut i64,
) -> Result<(), fe2o3_amqp::link::SendError> {
    for record in batch {
        let msg = match stamp(record, info) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(%path, seq = record.sequence_number, error = %e, "stored event cannot be decoded; skipping it");
                *next = record.sequence_number + 1;
                continue;
            }
        };
        let sendable = Sendable::builder()
            .message(msg)
            .message_format(0)
            .settled(true)
            .build();
        sender.send_batchable(sendable).await?;
        *next = record.sequence_number + 1;
    }
    Ok(())
}

/// Resolves with the thief's message once a higher epoch steals the link; a closed channel
/// (the registry is gone) never fires.
async fn until_stolen(mut rx: watch::Receiver<Option<Stolen>>) -> String {
    match rx.changed().await {
        Ok(()) => rx
            .borrow()
            .as_ref()
            .map(|s| s.0.clone())
            .unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}

/// Checks the link's token again once it has expired: the timer moves to the renewed
/// token's expiry, or the link ends unauthorized.
fn recheck(
    auth: &ConnAuth,
    path: &str,
    expires: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Result<(), Stop> {
    match auth.check(path, Right::Listen) {
        Ok(e) => {
            expires.reset(deadline(e));
            Ok(())
        }
        Err(d) => Err(Stop::Unauthorized(d.0)),
    }
}

/// When the token behind a link expires. No expiry: a deadline a year out, so one timer
/// serves both cases.
fn deadline(expiry: Option<Instant>) -> tokio::time::Instant {
    expiry.map(Into::into).unwrap_or_else(|| {
        tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
    })
}

/// Ends a consumer link the way `stop` says: detached with the matching condition, or
/// closed when the client went away.
async fn end_consumer(sender: Sender, stop: Stop, path: &str) {
    match stop {
        Stop::Shutdown => {
            close_link_with(
                sender,
                link_error(wire::condition::DETACH_FORCED, "the hub is shutting down"),
            )
            .await
        }
        Stop::Stolen(why) => {
            tracing::info!(%path, "consumer displaced by a higher epoch");
            close_link_with(sender, link_error(wire::condition::LINK_STOLEN, why)).await
        }
        Stop::Unauthorized(why) => {
            tracing::info!(%path, "token expired; detaching consumer");
            close_link_with(sender, link_error(wire::condition::UNAUTHORIZED, why)).await
        }
        Stop::Store(why) => {
            tracing::error!(%path, error = %why, "cannot read the partition; detaching consumer");
            close_link_with(sender, link_error(wire::condition::INTERNAL_ERROR, why)).await
        }
        Stop::Gone => {
            let _ = sender.close().await;
        }
    }
}
