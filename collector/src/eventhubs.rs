//! The Event Hubs source: one [`tcpulse_eventhub::client::Consumer`] per partition,
//! partitions discovered through `$management`, and the partitions' newest events polled
//! every few seconds so lag can be reported in events as well as seconds.
//!
//! The consumer's prefetch is the link credit: the pipeline calls [`PartitionSource::next`]
//! only when it has room, so a slow store becomes lag on the hub, not memory here.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, UNIX_EPOCH},
};

use tcpulse_eventhub::client::{
    ClientConfig, ConnectError, Consumer, ConsumerOptions, ManagementClient, ManagementError,
    ReceiveError, StartPosition as EhStart,
};

use crate::{
    checkpoint::CheckpointScope,
    source::{
        PartitionBounds, PartitionSource, PartitionTip, ReadFrom, SourceError, SourceEvent,
        SourceProvider,
    },
};

/// The condition Event Hubs (and the hub) send when a token or key is refused.
const UNAUTHORIZED: &str = "amqp:unauthorized-access";

/// A source error for `partition`: [`SourceError::Unauthorized`] when the service refused
/// the credentials (`refused`), else the one `other` builds.
fn source_error(
    partition: &str,
    refused: bool,
    message: String,
    other: fn(String, String) -> SourceError,
) -> SourceError {
    if refused {
        SourceError::Unauthorized {
            partition: partition.to_owned(),
            message,
        }
    } else {
        other(partition.to_owned(), message)
    }
}

fn connect_refused(e: &ConnectError) -> bool {
    matches!(e, ConnectError::Unauthorized { .. }) || e.condition() == Some(UNAUTHORIZED)
}

fn management_refused(e: &ManagementError) -> bool {
    match e {
        ManagementError::Connect(c) => connect_refused(c),
        ManagementError::Status { status, .. } => *status == 401,
        _ => e.condition() == Some(UNAUTHORIZED),
    }
}

fn receive_refused(e: &ReceiveError) -> bool {
    match e {
        ReceiveError::Connect(c) => connect_refused(c),
        ReceiveError::Unauthorized { .. } => true,
        _ => e.condition() == Some(UNAUTHORIZED),
    }
}

fn open_error(partition: String, message: String) -> SourceError {
    SourceError::Open { partition, message }
}

fn receive_error(partition: String, message: String) -> SourceError {
    SourceError::Receive { partition, message }
}

/// How often the partitions' newest events are read for lag.
const TIP_POLL: Duration = Duration::from_secs(5);
/// Longest wait between connection attempts of the lag poller after failures.
const TIP_POLL_MAX: Duration = Duration::from_secs(300);

type Tips = Mutex<HashMap<String, PartitionTip>>;

/// Opens Event Hubs partitions of one hub and consumer group.
#[derive(Debug)]
pub struct EventHubsProvider {
    config: ClientConfig,
    consumer_group: String,
    prefetch: u32,
    owner_level: Option<i64>,
    tips: Arc<Tips>,
}

impl EventHubsProvider {
    /// A provider for `config`'s hub.
    pub fn new(
        config: ClientConfig,
        consumer_group: impl Into<String>,
        prefetch: u32,
        owner_level: Option<i64>,
    ) -> Self {
        EventHubsProvider {
            config,
            consumer_group: consumer_group.into(),
            prefetch: prefetch.max(1),
            owner_level,
            tips: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn spawn_tip_poller(&self, partitions: Vec<String>) {
        let weak: Weak<Tips> = Arc::downgrade(&self.tips);
        let config = self.config.clone();
        tokio::spawn(async move {
            let mut mgmt: Option<ManagementClient> = None;
            let mut delay = TIP_POLL;
            while let Some(tips) = weak.upgrade() {
                if mgmt.is_none() {
                    mgmt = match ManagementClient::connect(config.clone()).await {
                        Ok(m) => {
                            delay = TIP_POLL;
                            Some(m)
                        }
                        Err(e) => {
                            // A refused key must not turn into a connection every 5 s:
                            // back off to TIP_POLL_MAX (the partitions report the cause).
                            delay = (delay * 2).min(TIP_POLL_MAX);
                            tracing::debug!(error = %e, retry_in = ?delay, "reading partition properties for lag: connect failed");
                            None
                        }
                    };
                }
                if let Some(m) = mgmt.as_mut() {
                    for p in &partitions {
                        match m.partition_properties(p).await {
                            Ok(props) => {
                                let ms = props
                                    .last_enqueued_time
                                    .duration_since(UNIX_EPOCH)
                                    .map(|d| d.as_millis() as i64)
                                    .unwrap_or(0);
                                if let Ok(mut t) = tips.lock() {
                                    t.insert(
                                        p.clone(),
                                        PartitionTip {
                                            last_sequence_number: props
                                                .last_enqueued_sequence_number,
                                            last_enqueued_time_ms: ms,
                                        },
                                    );
                                }
                            }
                            Err(e) => {
                                tracing::debug!(partition = %p, error = %e, "reading partition properties for lag failed");
                                mgmt = None;
                                break;
                            }
                        }
                    }
                }
                drop(tips);
                tokio::time::sleep(delay).await;
            }
            if let Some(m) = mgmt {
                m.close().await;
            }
        });
    }
}

impl SourceProvider for EventHubsProvider {
    type Source = EventHubsPartition;

    fn scope(&self) -> CheckpointScope {
        CheckpointScope::new(
            self.config.namespace(),
            self.config.hub.clone(),
            self.consumer_group.clone(),
        )
    }

    async fn partitions(&self) -> Result<Vec<String>, SourceError> {
        let err = |e: ManagementError| {
            let message = format!("cannot read the hub's partitions: {e}");
            source_error("*", management_refused(&e), message, open_error)
        };
        let mut mgmt = ManagementClient::connect(self.config.clone())
            .await
            .map_err(err)?;
        let ids = mgmt.partition_ids().await.map_err(err);
        mgmt.close().await;
        let ids = ids?;
        self.spawn_tip_poller(ids.clone());
        Ok(ids)
    }

    async fn open(
        &self,
        partition: &str,
        start: ReadFrom,
    ) -> Result<EventHubsPartition, SourceError> {
        let start = match start {
            ReadFrom::Earliest => EhStart::Earliest,
            ReadFrom::Latest => EhStart::Latest,
            ReadFrom::AfterSequence(sequence_number) => EhStart::SequenceNumber {
                sequence_number,
                inclusive: false,
            },
            ReadFrom::EnqueuedAfterMs(ms) => EhStart::EnqueuedTime {
                time: UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
                inclusive: false,
            },
        };
        let options = ConsumerOptions {
            consumer_group: self.consumer_group.clone(),
            partition_id: partition.to_string(),
            start,
            prefetch: self.prefetch,
            owner_level: self.owner_level,
        };
        let consumer = Consumer::connect(self.config.clone(), options)
            .await
            .map_err(|e| source_error(partition, receive_refused(&e), e.to_string(), open_error))?;
        Ok(EventHubsPartition {
            partition: partition.to_string(),
            consumer,
            tips: Arc::clone(&self.tips),
        })
    }

    async fn bounds(&self, partition: &str) -> Result<Option<PartitionBounds>, SourceError> {
        let err = |e: ManagementError| {
            let message = format!("cannot read the partition's properties: {e}");
            source_error(partition, management_refused(&e), message, open_error)
        };
        let mut mgmt = ManagementClient::connect(self.config.clone())
            .await
            .map_err(err)?;
        let props = mgmt.partition_properties(partition).await.map_err(err);
        mgmt.close().await;
        let props = props?;
        Ok(Some(PartitionBounds {
            begin_sequence_number: props.begin_sequence_number,
            last_enqueued_sequence_number: props.last_enqueued_sequence_number,
            is_empty: props.is_empty,
        }))
    }
}

/// One partition's consumer.
#[derive(Debug)]
pub struct EventHubsPartition {
    partition: String,
    consumer: Consumer,
    tips: Arc<Tips>,
}

impl PartitionSource for EventHubsPartition {
    fn partition(&self) -> &str {
        &self.partition
    }

    async fn next(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        let ev = self.consumer.recv().await.map_err(|e| {
            if e.condition() == Some(tcpulse_eventhub::wire::condition::LINK_STOLEN) {
                return SourceError::Stolen {
                    partition: self.partition.clone(),
                    message: e.to_string(),
                };
            }
            source_error(
                &self.partition,
                receive_refused(&e),
                e.to_string(),
                receive_error,
            )
        })?;
        let enqueued_time_ms = ev
            .enqueued_time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Ok(Some(SourceEvent {
            partition: self.partition.clone(),
            sequence_number: ev.sequence_number,
            offset: ev.offset,
            enqueued_time_ms,
            partition_key: ev.partition_key,
            body: ev.body,
        }))
    }

    fn tip(&self) -> Option<PartitionTip> {
        self.tips.lock().ok()?.get(&self.partition).copied()
    }
}
