//! Entity addresses, in the forms clients send them.
//!
//! Clients send either the bare form (`hub/Partitions/0`) or a full URL
//! (`amqps://ns.servicebus.windows.net/hub/Partitions/0`; the Python SDK does, even in
//! emulator mode). Keywords (`Partitions`, `ConsumerGroups`) are matched case-insensitively,
//! consumer group names too (`$Default` == `$default`), like the service.

use std::fmt;

/// Where a link points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    /// The claims-based security node.
    Cbs,
    /// The management node.
    Management,
    /// A hub, for producers that let the service pick the partition.
    Hub {
        /// Hub name as sent.
        hub: String,
    },
    /// One partition of a hub, for producers.
    Partition {
        /// Hub name as sent.
        hub: String,
        /// Partition id as sent.
        partition: String,
    },
    /// One partition of a hub as seen by a consumer group, for consumers.
    ConsumerPartition {
        /// Hub name as sent.
        hub: String,
        /// Consumer group name as sent.
        consumer_group: String,
        /// Partition id as sent.
        partition: String,
    },
}

/// An address that names no Event Hubs entity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address '{address}' is not an Event Hubs entity: {why}")]
pub struct AddressError {
    /// The address as sent.
    pub address: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Strips an optional `scheme://authority` prefix and surrounding slashes.
pub fn path_of(address: &str) -> &str {
    let rest = match address.find("://") {
        Some(i) => {
            let after = &address[i + 3..];
            match after.find('/') {
                Some(j) => &after[j..],
                None => "",
            }
        }
        None => address,
    };
    rest.trim_matches('/')
}

impl Entity {
    /// Parses a link address (source of a consumer, target of a producer, or a node name).
    pub fn parse(address: &str) -> Result<Entity, AddressError> {
        let err = |why| AddressError {
            address: address.to_string(),
            why,
        };
        let path = path_of(address);
        if path.eq_ignore_ascii_case("$cbs") {
            return Ok(Entity::Cbs);
        }
        if path.eq_ignore_ascii_case("$management") {
            return Ok(Entity::Management);
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err("empty path segment"));
        }
        match parts.as_slice() {
            [hub] => Ok(Entity::Hub {
                hub: (*hub).to_string(),
            }),
            [hub, kw, id] if kw.eq_ignore_ascii_case("partitions") => Ok(Entity::Partition {
                hub: (*hub).to_string(),
                partition: (*id).to_string(),
            }),
            [hub, kw1, cg, kw2, id]
                if kw1.eq_ignore_ascii_case("consumergroups")
                    && kw2.eq_ignore_ascii_case("partitions") =>
            {
                Ok(Entity::ConsumerPartition {
                    hub: (*hub).to_string(),
                    consumer_group: (*cg).to_string(),
                    partition: (*id).to_string(),
                })
            }
            _ => Err(err(
                "expected <hub>, <hub>/Partitions/<id> or <hub>/ConsumerGroups/<group>/Partitions/<id>",
            )),
        }
    }

    /// The hub this entity belongs to, if any.
    pub fn hub(&self) -> Option<&str> {
        match self {
            Entity::Cbs | Entity::Management => None,
            Entity::Hub { hub }
            | Entity::Partition { hub, .. }
            | Entity::ConsumerPartition { hub, .. } => Some(hub),
        }
    }

    /// The normalised, lower-case path used to match token audiences against.
    pub fn audience_path(&self) -> String {
        self.to_string().to_ascii_lowercase()
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entity::Cbs => f.write_str("$cbs"),
            Entity::Management => f.write_str("$management"),
            Entity::Hub { hub } => f.write_str(hub),
            Entity::Partition { hub, partition } => write!(f, "{hub}/Partitions/{partition}"),
            Entity::ConsumerPartition {
                hub,
                consumer_group,
                partition,
            } => write!(
                f,
                "{hub}/ConsumerGroups/{consumer_group}/Partitions/{partition}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_and_url_forms_case_insensitively() {
        assert_eq!(
            Entity::parse("amqps://127.0.0.1:5671/hub/partitions/3").unwrap(),
            Entity::Partition {
                hub: "hub".into(),
                partition: "3".into()
            }
        );
        assert_eq!(
            Entity::parse("hub/ConsumerGroups/$Default/Partitions/0").unwrap(),
            Entity::ConsumerPartition {
                hub: "hub".into(),
                consumer_group: "$Default".into(),
                partition: "0".into()
            }
        );
        assert_eq!(
            Entity::parse("sb://x.servicebus.windows.net/tcpulse").unwrap(),
            Entity::Hub {
                hub: "tcpulse".into()
            }
        );
        assert_eq!(Entity::parse("$CBS").unwrap(), Entity::Cbs);
        assert_eq!(Entity::parse("$management").unwrap(), Entity::Management);
    }

    #[test]
    fn rejects_unknown_shapes() {
        assert!(Entity::parse("hub/Queues/0").is_err());
        assert!(Entity::parse("").is_err());
        assert!(Entity::parse("amqps://host").is_err());
        assert!(Entity::parse("hub//Partitions/0").is_err());
    }

    #[test]
    fn audience_path_is_lower_case_and_round_trips() {
        let e = Entity::parse("Hub/ConsumerGroups/$Default/Partitions/1").unwrap();
        assert_eq!(
            e.audience_path(),
            "hub/consumergroups/$default/partitions/1"
        );
        assert_eq!(Entity::parse(&e.to_string()).unwrap(), e);
    }
}
