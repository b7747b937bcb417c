//! `$management` READ requests: hub properties (partition ids) and partition properties.
//!
//! Uses fe2o3-amqp-management's `MgmtClient` with our own `Request` impls: the crate's
//! `ReadRequest` has no `partition` field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::types::{
    messaging::{ApplicationProperties, Message},
    primitives::{OrderedMap, Value},
};
use fe2o3_amqp_management::{
    client::MgmtClient, error::Error as MgmtError, request::Request, response::Response,
};

use super::{
    config::ClientConfig,
    connection::AmqpConnection,
    error::{condition_for_status, ManagementError, ServiceError},
    retry::Retrier,
};
use crate::wire;

/// What `$management` says about the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubProperties {
    /// Hub name.
    pub name: String,
    /// When the hub was created.
    pub created_at: SystemTime,
    /// Partition ids, in the service's order.
    pub partition_ids: Vec<String>,
}

/// What `$management` says about one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProperties {
    /// Hub name.
    pub hub: String,
    /// Partition id.
    pub id: String,
    /// Sequence number of the oldest retained event.
    pub begin_sequence_number: i64,
    /// Sequence number of the newest event (-1 when none was ever sent).
    pub last_enqueued_sequence_number: i64,
    /// Offset of the newest event.
    pub last_enqueued_offset: String,
    /// Enqueued time of the newest event.
    pub last_enqueued_time: SystemTime,
    /// True when the partition holds no event.
    pub is_empty: bool,
}

/// A READ of an entity (`com.microsoft:eventhub` or `com.microsoft:partition`).
#[derive(Debug, Clone)]
struct ReadEntity {
    entity_type: &'static str,
    hub: String,
    partition: Option<String>,
}

/// The entity attribute map of a READ response.
#[derive(Debug, Clone)]
struct EntityMap(OrderedMap<String, Value>);

impl Request for ReadEntity {
    const OPERATION: &'static str = "READ";
    type Response = EntityMap;
    type Body = ();

    fn manageable_entity_type(&mut self) -> Option<String> {
        Some(self.entity_type.to_string())
    }

    fn encode_application_properties(&mut self) -> Option<ApplicationProperties> {
        let mut b = ApplicationProperties::builder().insert("name", self.hub.as_str());
        if let Some(p) = &self.partition {
            b = b.insert("partition", p.as_str());
        }
        Some(b.build())
    }

    fn encode_body(self) -> Self::Body {}
}

impl Response for EntityMap {
    const STATUS_CODE: u16 = 200;
    type Body = Option<OrderedMap<String, Value>>;
    type Error = MgmtError;

    fn decode_message(message: Message<Self::Body>) -> Result<Self, Self::Error> {
        Ok(EntityMap(message.body.unwrap_or_default()))
    }
}

fn field<'a>(m: &'a OrderedMap<String, Value>, key: &str) -> Result<&'a Value, ManagementError> {
    m.get(key)
        .ok_or_else(|| ManagementError::Decode(format!("no '{key}' in the response")))
}

fn text(m: &OrderedMap<String, Value>, key: &str) -> Result<String, ManagementError> {
    match field(m, key)? {
        Value::String(s) => Ok(s.clone()),
        Value::Symbol(s) => Ok(s.0.clone()),
        Value::Binary(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        other => Err(ManagementError::Decode(format!(
            "'{key}' is not text: {other:?}"
        ))),
    }
}

fn long(m: &OrderedMap<String, Value>, key: &str) -> Result<i64, ManagementError> {
    match field(m, key)? {
        Value::Long(n) => Ok(*n),
        Value::Int(n) => Ok(i64::from(*n)),
        Value::Uint(n) => Ok(i64::from(*n)),
        Value::Ulong(n) => {
            i64::try_from(*n).map_err(|_| ManagementError::Decode(format!("'{key}' overflows")))
        }
        other => Err(ManagementError::Decode(format!(
            "'{key}' is not a number: {other:?}"
        ))),
    }
}

fn time(m: &OrderedMap<String, Value>, key: &str) -> Result<SystemTime, ManagementError> {
    match field(m, key)? {
        Value::Timestamp(t) => {
            Ok(UNIX_EPOCH + Duration::from_millis(t.milliseconds().max(0) as u64))
        }
        other => Err(ManagementError::Decode(format!(
            "'{key}' is not a timestamp: {other:?}"
        ))),
    }
}

fn mgmt_error(e: MgmtError) -> ManagementError {
    match e {
        MgmtError::Status(s) => {
            let status = s.code.0.get();
            ManagementError::Status {
                status,
                error: ServiceError::new(condition_for_status(status), s.description),
            }
        }
        MgmtError::DecodeError(d) => ManagementError::Decode(format!("{d:?}")),
        other => ManagementError::LinkLost(other.to_string()),
    }
}

/// Reads hub and partition properties over `$management`.
#[derive(Debug)]
pub struct ManagementClient {
    config: ClientConfig,
    live: Option<(AmqpConnection, MgmtClient)>,
}

impl ManagementClient {
    /// Connects and authorizes for the hub (retrying transient failures).
    pub async fn connect(config: ClientConfig) -> Result<ManagementClient, ManagementError> {
        let mut c = ManagementClient { config, live: None };
        let mut retrier = Retrier::new(&c.config.options.retry);
        loop {
            match c.ensure().await {
                Ok(()) => return Ok(c),
                Err(e) => match retrier.next_delay(e.is_transient()) {
                    Some(d) => {
                        tracing::warn!(hub = %c.config.hub, delay_ms = d.as_millis() as u64, error = %e, "management connect failed; retrying");
                        tokio::time::sleep(d).await;
                    }
                    None => return Err(e),
                },
            }
        }
    }

    async fn ensure(&mut self) -> Result<(), ManagementError> {
        if self.live.is_some() {
            return Ok(());
        }
        let mut conn = AmqpConnection::open(&self.config, "mgmt").await?;
        conn.authorize(&self.config.audience("")).await?;
        let timeout = self.config.options.operation_timeout();
        let attach = MgmtClient::builder()
            .management_node_address("$management")
            .client_node_addr(format!("mgmt-client-{}", uuid::Uuid::new_v4().simple()))
            .attach(&mut conn.session);
        let client = tokio::time::timeout(timeout, attach)
            .await
            .map_err(|_| ManagementError::Timeout(timeout))?
            .map_err(|e| ManagementError::LinkLost(format!("cannot attach $management: {e}")))?;
        self.live = Some((conn, client));
        Ok(())
    }

    async fn read(
        &mut self,
        request: ReadEntity,
    ) -> Result<OrderedMap<String, Value>, ManagementError> {
        let mut retrier = Retrier::new(&self.config.options.retry);
        loop {
            let r = self.try_read(request.clone()).await;
            match r {
                Ok(m) => return Ok(m),
                Err(e) => {
                    if e.is_transient() {
                        if let Some((conn, client)) = self.live.take() {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(5), client.close()).await;
                            conn.close().await;
                        }
                    }
                    match retrier.next_delay(e.is_transient()) {
                        Some(d) => {
                            tracing::warn!(hub = %self.config.hub, delay_ms = d.as_millis() as u64, error = %e, "management request failed; retrying");
                            tokio::time::sleep(d).await;
                        }
                        None => return Err(e),
                    }
                }
            }
        }
    }

    async fn try_read(
        &mut self,
        request: ReadEntity,
    ) -> Result<OrderedMap<String, Value>, ManagementError> {
        self.ensure().await?;
        let timeout = self.config.options.operation_timeout();
        let (_, client) = self
            .live
            .as_mut()
            .ok_or_else(|| ManagementError::LinkLost("no connection".into()))?;
        let r: EntityMap = tokio::time::timeout(timeout, client.call(request))
            .await
            .map_err(|_| ManagementError::Timeout(timeout))?
            .map_err(mgmt_error)?;
        Ok(r.0)
    }

    /// The hub's name, creation time and partition ids.
    pub async fn hub_properties(&mut self) -> Result<HubProperties, ManagementError> {
        let m = self
            .read(ReadEntity {
                entity_type: wire::EVENTHUB_ENTITY_TYPE,
                hub: self.config.hub.clone(),
                partition: None,
            })
            .await?;
        let partition_ids = match field(&m, "partition_ids")? {
            Value::Array(a) => a.0.iter().map(value_text).collect::<Result<Vec<_>, _>>()?,
            Value::List(l) => l.iter().map(value_text).collect::<Result<Vec<_>, _>>()?,
            other => {
                return Err(ManagementError::Decode(format!(
                    "'partition_ids' is not an array: {other:?}"
                )))
            }
        };
        Ok(HubProperties {
            name: text(&m, "name")?,
            created_at: time(&m, "created_at").unwrap_or(UNIX_EPOCH),
            partition_ids,
        })
    }

    /// Shortcut for the partition ids.
    pub async fn partition_ids(&mut self) -> Result<Vec<String>, ManagementError> {
        Ok(self.hub_properties().await?.partition_ids)
    }

    /// Sequence numbers, last offset and time, emptiness of one partition.
    pub async fn partition_properties(
        &mut self,
        partition: &str,
    ) -> Result<PartitionProperties, ManagementError> {
        let m = self
            .read(ReadEntity {
                entity_type: wire::PARTITION_ENTITY_TYPE,
                hub: self.config.hub.clone(),
                partition: Some(partition.to_string()),
            })
            .await?;
        Ok(PartitionProperties {
            hub: text(&m, "name")?,
            id: text(&m, "partition")?,
            begin_sequence_number: long(&m, "begin_sequence_number")?,
            last_enqueued_sequence_number: long(&m, "last_enqueued_sequence_number")?,
            last_enqueued_offset: text(&m, "last_enqueued_offset")?,
            last_enqueued_time: time(&m, "last_enqueued_time_utc").unwrap_or(UNIX_EPOCH),
            is_empty: matches!(field(&m, "is_partition_empty")?, Value::Bool(true)),
        })
    }

    /// Detaches the management links, ends the session and closes the connection.
    pub async fn close(mut self) {
        if let Some((conn, client)) = self.live.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
            conn.close().await;
        }
    }
}

fn value_text(v: &Value) -> Result<String, ManagementError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Symbol(s) => Ok(s.0.clone()),
        Value::Binary(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        other => Err(ManagementError::Decode(format!(
            "partition id is not text: {other:?}"
        ))),
    }
}
