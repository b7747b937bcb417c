//! Events as the transport sees them: opaque `Bytes` bodies plus Event Hubs properties.
//!
//! [`EventData`] is what a producer sends; [`ReceivedEvent`] what a consumer hands out, with
//! the service's annotations (sequence number, offset, enqueued time, partition key) decoded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fe2o3_amqp::types::{
    messaging::{
        annotations::OwnedKey, message::__private::Serializable, ApplicationProperties, Body, Data,
        Header, Message, MessageAnnotations, MessageId, Properties,
    },
    primitives::{Binary, OrderedMap, SimpleValue, Symbol, Value},
};

use crate::wire;

/// Application properties: string keys, simple AMQP values.
pub type AppProperties = OrderedMap<String, SimpleValue>;

/// An event to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventData {
    /// The body, sent as one AMQP data section.
    pub body: Bytes,
    /// Application properties.
    pub properties: AppProperties,
    /// `content-type` (e.g. `application/json`).
    pub content_type: Option<String>,
    /// `message-id`, as a string.
    pub message_id: Option<String>,
    /// `correlation-id`, as a string.
    pub correlation_id: Option<String>,
}

impl EventData {
    /// An event with this body and nothing else.
    pub fn new(body: impl Into<Bytes>) -> Self {
        EventData {
            body: body.into(),
            ..EventData::default()
        }
    }

    /// Adds an application property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<SimpleValue>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// The AMQP message for this event, with the partition key annotation when given.
    pub(crate) fn to_message(&self, partition_key: Option<&str>) -> Message<Data> {
        let properties = (self.content_type.is_some()
            || self.message_id.is_some()
            || self.correlation_id.is_some())
        .then(|| Properties {
            content_type: self.content_type.as_deref().map(Symbol::from),
            message_id: self.message_id.clone().map(MessageId::String),
            correlation_id: self.correlation_id.clone().map(MessageId::String),
            ..Properties::default()
        });
        Message {
            header: partition_key.map(|_| Header {
                durable: true,
                ..Header::default()
            }),
            delivery_annotations: None,
            message_annotations: partition_key.map(key_annotation),
            properties,
            application_properties: (!self.properties.is_empty())
                .then(|| ApplicationProperties(self.properties.clone())),
            body: Data(Binary::from(self.body.to_vec())),
            footer: None,
        }
    }

    /// The fully encoded AMQP message (one data section of a batch).
    pub(crate) fn encode(&self, partition_key: Option<&str>) -> Result<Vec<u8>, String> {
        serde_amqp::to_vec(&Serializable(self.to_message(partition_key)))
            .map_err(|e| format!("cannot encode the event: {e}"))
    }
}

/// `x-opt-partition-key` as a message annotation.
pub(crate) fn key_annotation(key: &str) -> MessageAnnotations {
    let mut m = OrderedMap::new();
    m.insert(
        OwnedKey::Symbol(Symbol::from(wire::PARTITION_KEY)),
        Value::String(key.to_string()),
    );
    MessageAnnotations(m)
}

/// An event handed out by a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// The body: the data sections concatenated (an `amqp-value` body of binary or string
    /// gives its bytes; any other value its AMQP encoding).
    pub body: Bytes,
    /// Application properties.
    pub properties: AppProperties,
    /// The partition key the producer set, if any.
    pub partition_key: Option<String>,
    /// Sequence number in the partition.
    pub sequence_number: i64,
    /// Offset in the partition (opaque text; checkpoint it as is).
    pub offset: String,
    /// When the service accepted the event.
    pub enqueued_time: SystemTime,
    /// The partition it came from.
    pub partition_id: String,
    /// `content-type`, if set.
    pub content_type: Option<String>,
    /// `message-id`, as text, if set.
    pub message_id: Option<String>,
    /// `correlation-id`, as text, if set.
    pub correlation_id: Option<String>,
    /// All message annotations (service and producer) as they arrived; read one with
    /// [`ReceivedEvent::annotation`].
    pub annotations: OrderedMap<OwnedKey, Value>,
}

fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => {
            let b: &[u8] = u.as_ref();
            uuid::Uuid::from_slice(b)
                .map(|u| u.to_string())
                .unwrap_or_default()
        }
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// The value of annotation `key` (a symbol key, or a ulong key written in decimal). A
/// linear scan: a delivery carries about five annotations, and re-keying them into a map
/// of strings per event cost two hashes a key (issue #17).
fn annotation_in<'a>(annotations: &'a OrderedMap<OwnedKey, Value>, key: &str) -> Option<&'a Value> {
    annotations
        .iter()
        .find(|(k, _)| match k {
            OwnedKey::Symbol(s) => s.0 == key,
            OwnedKey::Ulong(n) => key.parse::<u64>() == Ok(*n),
        })
        .map(|(_, v)| v)
}

impl ReceivedEvent {
    /// Decodes a delivered message; fails when the service annotations are missing.
    pub(crate) fn from_message(
        message: Message<Body<Value>>,
        partition_id: &str,
    ) -> Result<ReceivedEvent, String> {
        let annotations = message.message_annotations.map(|a| a.0).unwrap_or_default();
        let get = |key| annotation_in(&annotations, key);
        let sequence_number = match get(wire::SEQUENCE_NUMBER) {
            Some(Value::Long(n)) => *n,
            Some(Value::Int(n)) => i64::from(*n),
            Some(Value::Ulong(n)) => i64::try_from(*n).map_err(|_| "sequence number overflows")?,
            _ => return Err(format!("no {} annotation", wire::SEQUENCE_NUMBER)),
        };
        let offset = match get(wire::OFFSET) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Symbol(s)) => s.0.clone(),
            Some(Value::Long(n)) => n.to_string(),
            Some(Value::Ulong(n)) => n.to_string(),
            _ => return Err(format!("no {} annotation", wire::OFFSET)),
        };
        let enqueued_time = match get(wire::ENQUEUED_TIME) {
            Some(Value::Timestamp(t)) => {
                let ms = t.milliseconds();
                if ms >= 0 {
                    UNIX_EPOCH + Duration::from_millis(ms as u64)
                } else {
                    UNIX_EPOCH
                }
            }
            _ => return Err(format!("no {} annotation", wire::ENQUEUED_TIME)),
        };
        let partition_key = match get(wire::PARTITION_KEY) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Symbol(s)) => Some(s.0.clone()),
            _ => None,
        };
        let body = match message.body {
            Body::Data(sections) => {
                if sections.len() == 1 {
                    Bytes::from(
                        sections
                            .into_iter()
                            .next()
                            .map(|d| d.0.into_vec())
                            .unwrap_or_default(),
                    )
                } else {
                    let mut v = Vec::new();
                    for d in sections {
                        v.extend_from_slice(&d.0);
                    }
                    Bytes::from(v)
                }
            }
            Body::Value(v) => match v.0 {
                Value::Binary(b) => Bytes::from(b.into_vec()),
                Value::String(s) => Bytes::from(s.into_bytes()),
                Value::Null => Bytes::new(),
                other => Bytes::from(serde_amqp::to_vec(&other).map_err(|e| e.to_string())?),
            },
            Body::Sequence(seq) => {
                Bytes::from(serde_amqp::to_vec(&seq).map_err(|e| e.to_string())?)
            }
            Body::Empty => Bytes::new(),
        };
        let props = message.properties.unwrap_or_default();
        Ok(ReceivedEvent {
            body,
            properties: message
                .application_properties
                .map(|a| a.0)
                .unwrap_or_default(),
            partition_key,
            sequence_number,
            offset,
            enqueued_time,
            partition_id: partition_id.to_string(),
            content_type: props.content_type.map(|s| s.0),
            message_id: props.message_id.as_ref().map(id_text),
            correlation_id: props.correlation_id.as_ref().map(id_text),
            annotations,
        })
    }

    /// The value of message annotation `key` (`x-opt-sequence-number`, a producer's own,
    /// …); a ulong key is matched by its decimal text.
    pub fn annotation(&self, key: &str) -> Option<&Value> {
        annotation_in(&self.annotations, key)
    }

    /// An application property as text, if it is a string or symbol.
    pub fn property_str(&self, key: &str) -> Option<&str> {
        match self.properties.get(key)? {
            SimpleValue::String(s) => Some(s),
            SimpleValue::Symbol(s) => Some(&s.0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::{messaging::message::__private::Deserializable, primitives::Timestamp};

    #[test]
    fn encoded_event_round_trips_with_key_and_properties() {
        let e = EventData::new(&b"{\"a\":1}"[..])
            .with_property("schema", "tcpulse.status.v1")
            .with_property("n", 5i64)
            .with_content_type("application/json");
        let bytes = e.encode(Some("tc-eu")).unwrap();
        let m: Deserializable<Message<Body<Value>>> = serde_amqp::from_slice(&bytes).unwrap();
        let mut m = m.0;
        let ann = m.message_annotations.get_or_insert_with(Default::default);
        ann.0.insert(
            OwnedKey::Symbol(Symbol::from(wire::SEQUENCE_NUMBER)),
            Value::Long(7),
        );
        ann.0.insert(
            OwnedKey::Symbol(Symbol::from(wire::OFFSET)),
            Value::String("700".into()),
        );
        ann.0.insert(
            OwnedKey::Symbol(Symbol::from(wire::ENQUEUED_TIME)),
            Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_000)),
        );
        ann.0.insert(
            OwnedKey::Symbol(Symbol::from("x-opt-custom")),
            Value::String("mine".into()),
        );
        ann.0.insert(OwnedKey::Ulong(42), Value::Bool(true));
        let r = ReceivedEvent::from_message(m, "2").unwrap();
        assert_eq!(&r.body[..], b"{\"a\":1}");
        assert_eq!(
            r.annotation("x-opt-custom"),
            Some(&Value::String("mine".into()))
        );
        assert_eq!(r.annotation("42"), Some(&Value::Bool(true)));
        assert_eq!(r.annotation(wire::SEQUENCE_NUMBER), Some(&Value::Long(7)));
        assert_eq!(r.annotation("x-opt-absent"), None);
        assert_eq!(r.property_str("schema"), Some("tcpulse.status.v1"));
        assert_eq!(r.properties.get("n"), Some(&SimpleValue::Long(5)));
        assert_eq!(r.partition_key.as_deref(), Some("tc-eu"));
        assert_eq!((r.sequence_number, r.offset.as_str()), (7, "700"));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            r.enqueued_time,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
        );
    }

    #[test]
    fn missing_annotations_are_reported() {
        let m = Message::builder()
            .body(Body::Value(fe2o3_amqp::types::messaging::AmqpValue(
                Value::Null,
            )))
            .build();
        assert!(ReceivedEvent::from_message(m, "0")
            .unwrap_err()
            .contains(wire::SEQUENCE_NUMBER));
    }
}
