//! Event batches: one AMQP message of format 0x80013700 whose body is N data sections, each a
//! fully encoded event message.
//!
//! Size accounting is exact and matches the SDKs: the envelope's encoded size, plus per event
//! its encoded size and the data-section overhead (5 bytes below 256 B, else 8: descriptor
//! `00 53 75` plus a `vbin8`/`vbin32` header). A batch never exceeds the link's
//! max-message-size.

use fe2o3_amqp::types::{
    messaging::{message::__private::Serializable, Batch, Data, Header, Message},
    primitives::Binary,
};

use super::event::{key_annotation, EventData};

/// Where a batch goes: let the service choose, route by key, or one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOptions {
    /// Route by this key (`x-opt-partition-key` on the envelope and every event).
    pub partition_key: Option<String>,
    /// Send to this partition.
    pub partition_id: Option<String>,
    /// Cap the batch below the link's max-message-size, bytes.
    pub max_size_bytes: Option<u64>,
}

/// Why an event was not added. The event is handed back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TryAddError {
    /// The batch is full; send it and add the event to a new one.
    #[error("the batch is full ({size} of {max_size} bytes)")]
    Full {
        /// The event, handed back.
        event: Box<EventData>,
        /// Bytes used.
        size: u64,
        /// The limit.
        max_size: u64,
    },
    /// The event alone is larger than any batch can be.
    #[error("the event needs {needed} bytes but a batch holds at most {max_size}")]
    TooLarge {
        /// The event, handed back.
        event: Box<EventData>,
        /// Bytes the event needs in an empty batch.
        needed: u64,
        /// The limit.
        max_size: u64,
    },
    /// The event could not be encoded.
    #[error("{0}")]
    Encode(String),
}

/// A batch being filled. Make one with [`Producer::create_batch`](super::Producer::create_batch).
#[derive(Debug, Clone)]
pub struct EventBatch {
    pub(crate) partition_key: Option<String>,
    pub(crate) partition_id: Option<String>,
    max_size: u64,
    envelope_size: u64,
    size: u64,
    sections: Vec<Vec<u8>>,
}

/// Bytes a data section adds around an encoded message of `len` bytes.
pub(crate) const fn section_overhead(len: u64) -> u64 {
    if len < 256 {
        5
    } else {
        8
    }
}

fn envelope(partition_key: Option<&str>, sections: Vec<Vec<u8>>) -> Message<Batch<Data>> {
    Message {
        header: partition_key.map(|_| Header {
            durable: true,
            ..Header::default()
        }),
        delivery_annotations: None,
        message_annotations: partition_key.map(key_annotation),
        properties: None,
        application_properties: None,
        body: sections
            .into_iter()
            .map(|s| Data(Binary::from(s)))
            .collect(),
        footer: None,
    }
}

impl EventBatch {
    pub(crate) fn new(options: BatchOptions, link_max: u64) -> Result<EventBatch, String> {
        if options.partition_key.is_some() && options.partition_id.is_some() {
            return Err("set a partition key or a partition id, not both".into());
        }
        let max_size = match options.max_size_bytes {
            Some(m) if m > link_max => {
                return Err(format!(
                    "max_size_bytes {m} exceeds the link's max message size {link_max}"
                ))
            }
            Some(m) => m,
            None => link_max,
        };
        // Envelope with one empty section, minus that section's 5 bytes.
        let probe = serde_amqp::to_vec(&Serializable(envelope(
            options.partition_key.as_deref(),
            vec![Vec::new()],
        )))
        .map_err(|e| format!("cannot encode the batch envelope: {e}"))?;
        let envelope_size = (probe.len() as u64).saturating_sub(section_overhead(0));
        Ok(EventBatch {
            partition_key: options.partition_key,
            partition_id: options.partition_id,
            max_size,
            envelope_size,
            size: envelope_size,
            sections: Vec::new(),
        })
    }

    /// Adds an event if it fits; otherwise hands it back.
    pub fn try_add(&mut self, event: EventData) -> Result<(), TryAddError> {
        let encoded = event
            .encode(self.partition_key.as_deref())
            .map_err(TryAddError::Encode)?;
        let len = encoded.len() as u64;
        let needed = len + section_overhead(len);
        if self.envelope_size + needed > self.max_size {
            return Err(TryAddError::TooLarge {
                event: Box::new(event),
                needed: self.envelope_size + needed,
                max_size: self.max_size,
            });
        }
        if self.size + needed > self.max_size {
            return Err(TryAddError::Full {
                event: Box::new(event),
                size: self.size,
                max_size: self.max_size,
            });
        }
        self.size += needed;
        self.sections.push(encoded);
        Ok(())
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.sections.len()
    }

    /// True when no event was added.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    /// Encoded size of the batch message, bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// The most this batch may hold, bytes.
    pub fn max_size_bytes(&self) -> u64 {
        self.max_size
    }

    /// The partition key, if any.
    pub fn partition_key(&self) -> Option<&str> {
        self.partition_key.as_deref()
    }

    /// The partition id, if any.
    pub fn partition_id(&self) -> Option<&str> {
        self.partition_id.as_deref()
    }

    /// The envelope message (clones the encoded events so a retry can resend them).
    pub(crate) fn to_message(&self) -> Message<Batch<Data>> {
        envelope(self.partition_key.as_deref(), self.sections.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded_len(b: &EventBatch) -> u64 {
        serde_amqp::to_vec(&Serializable(b.to_message()))
            .unwrap()
            .len() as u64
    }

    #[test]
    fn accounting_equals_the_encoded_size() {
        for key in [None, Some("tc-eu.example.com".to_string())] {
            let mut b = EventBatch::new(
                BatchOptions {
                    partition_key: key.clone(),
                    ..BatchOptions::default()
                },
                1_048_576,
            )
            .unwrap();
            for n in [0usize, 10, 200, 251, 256, 1024, 70_000] {
                b.try_add(EventData::new(vec![b'x'; n]).with_property("i", n as i64))
                    .unwrap();
                assert_eq!(b.size_bytes(), encoded_len(&b), "key {key:?} after {n}");
            }
        }
    }

    #[test]
    fn fills_up_to_the_limit_and_hands_events_back() {
        let mut b = EventBatch::new(BatchOptions::default(), 10_000).unwrap();
        let mut n = 0;
        let back = loop {
            match b.try_add(EventData::new(vec![7u8; 1000])) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(n, 9);
        assert!(matches!(back, TryAddError::Full { .. }));
        assert!(encoded_len(&b) <= 10_000);
        let e = b.try_add(EventData::new(vec![0u8; 20_000])).unwrap_err();
        assert!(matches!(e, TryAddError::TooLarge { .. }));
        assert!(EventBatch::new(
            BatchOptions {
                partition_key: Some("k".into()),
                partition_id: Some("0".into()),
                ..BatchOptions::default()
            },
            100
        )
        .is_err());
    }
}
