//! The hub's entities: event hubs, their partitions (each a [`PartitionLog`]) and consumer
//! groups, partition-key routing, and the epoch (owner level) register per consumer-group
//! partition. No AMQP here.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::watch;

use crate::{
    store::{PartitionLog, StoreConfig},
    HubError, HubSpec,
};

/// One event hub.
#[derive(Debug)]
pub struct EventHub {
    /// Name as configured.
    pub name: String,
    /// Partition logs, index = partition id.
    pub partitions: Vec<PartitionLog>,
    /// Consumer groups, lower-case name → name as configured.
    pub consumer_groups: HashMap<String, String>,
    /// When the hub was created (unix ms), for `$management`.
    pub created_at_ms: i64,
    round_robin: AtomicUsize,
}

impl EventHub {
    /// Partition ids as strings.
    pub fn partition_ids(&self) -> Vec<String> {
        (0..self.partitions.len()).map(|i| i.to_string()).collect()
    }

    /// The partition for an id string, if it exists.
    pub fn partition(&self, id: &str) -> Option<(usize, &PartitionLog)> {
        let i: usize = id.parse().ok()?;
        self.partitions.get(i).map(|p| (i, p))
    }

    /// Routes an event: by key with a stable hash (FNV-1a, 64 bit), otherwise round-robin.
    pub fn route(&self, partition_key: Option<&str>) -> usize {
        let n = self.partitions.len().max(1);
        match partition_key {
            Some(key) => (fnv1a(key.as_bytes()) % n as u64) as usize,
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// The configured spelling of a consumer group, matched case-insensitively.
    pub fn consumer_group(&self, name: &str) -> Option<&str> {
        self.consumer_groups
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Why an epoch receiver may not attach, or was displaced. Texts follow the service's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stolen(pub String);

#[derive(Debug)]
struct Owner {
    id: u64,
    epoch: Option<i64>,
    kick: watch::Sender<Option<Stolen>>,
}

/// Registry of receivers per (hub, consumer group, partition) enforcing owner levels.
#[derive(Debug, Default)]
pub struct Epochs {
    next_id: AtomicU64,
    owners: Mutex<HashMap<(String, String, usize), Vec<Owner>>>,
}

/// A receiver's place in the registry; unregisters on drop.
#[derive(Debug)]
pub struct EpochGuard {
    registry: Arc<Epochs>,
    key: (String, String, usize),
    id: u64,
    /// Fires with the reason when a higher epoch displaces this receiver.
    pub kicked: watch::Receiver<Option<Stolen>>,
}

impl Drop for EpochGuard {
    fn drop(&mut self) {
        if let Ok(mut owners) = self.registry.owners.lock() {
            if let Some(list) = owners.get_mut(&self.key) {
                list.retain(|o| o.id != self.id);
                if list.is_empty() {
                    owners.remove(&self.key);
                }
            }
        }
    }
}

impl Epochs {
    /// Registers a receiver. An epoch equal to or higher than the current ones displaces
    /// every receiver with a lower or the same epoch and every non-epoch receiver (the
    /// service's rule: "e1 ≤ e2 disconnects e1", and its message "New receiver with higher
    /// epoch of '0' is created hence current receiver with epoch '0' is getting
    /// disconnected" for equal epochs, the SDK processors' owner level 0 taking a partition
    /// over); a lower epoch, or a non-epoch receiver while an epoch receiver exists, is
    /// refused.
    pub fn register(
        self: &Arc<Self>,
        hub: &str,
        consumer_group: &str,
        partition: usize,
        epoch: Option<i64>,
    ) -> Result<EpochGuard, Stolen> {
        let key = (
            hub.to_ascii_lowercase(),
            consumer_group.to_ascii_lowercase(),
            partition,
        );
        let mut owners = self
            .owners
            .lock()
            .map_err(|_| Stolen("internal error: epoch registry poisoned".into()))?;
        let list = owners.entry(key.clone()).or_default();
        let max_epoch = list.iter().filter_map(|o| o.epoch).max();
        match (epoch, max_epoch) {
            (Some(e), Some(m)) if e < m => {
                return Err(Stolen(format!(
                    "A receiver with a higher epoch '{m}' already exists. A new receiver with epoch {e} cannot be created. Make sure you are creating receiver with increasing epoch value to ensure connectivity, or ensure all old epoch receivers are closed or disconnected."
                )))
            }
            (None, Some(m)) => {
                return Err(Stolen(format!(
                    "At least one receiver for the endpoint is created with epoch of '{m}', and so non-epoch receiver is not allowed. Either reconnect with a higher epoch, or make sure all epoch receivers are closed or disconnected."
                )))
            }
            (Some(e), _) => {
                list.retain(|o| {
                    let displace = o.epoch.is_none_or(|oe| oe <= e);
                    if displace {
                        let msg = match o.epoch {
                            Some(oe) => format!("New receiver with higher epoch of '{e}' is created hence current receiver with epoch '{oe}' is getting disconnected. If you are recreating the receiver, make sure a higher epoch is used."),
                            None => format!("New receiver with epoch of '{e}' is created hence current non-epoch receiver is getting disconnected."),
                        };
                        let _ = o.kick.send(Some(Stolen(msg)));
                    }
                    !displace
                });
            }
            (None, None) => {}
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (kick, kicked) = watch::channel(None);
        list.push(Owner { id, epoch, kick });
        Ok(EpochGuard {
            registry: Arc::clone(self),
            key,
            id,
            kicked,
        })
    }
}

/// All hubs of the namespace.
#[derive(Debug)]
pub struct Broker {
    hubs: HashMap<String, Arc<EventHub>>,
    /// Hub names in configuration order.
    pub order: Vec<String>,
    /// Receiver owner levels.
    pub epochs: Arc<Epochs>,
}

impl Broker {
    /// Opens (or creates) every configured hub's partitions.
    pub fn open(
        specs: &[HubSpec],
        consumer_groups: &[String],
        data_dir: Option<&std::path::Path>,
        store: &StoreConfig,
    ) -> Result<Broker, HubError> {
        let mut hubs = HashMap::new();
        let mut order = Vec::new();
        let now_ms = now_ms();
        for spec in specs {
            if hubs.contains_key(&spec.name.to_ascii_lowercase()) {
                return Err(HubError::Config(format!(
                    "hub '{}' configured twice",
                    spec.name
                )));
            }
            let mut partitions = Vec::with_capacity(spec.partitions as usize);
            for p in 0..spec.partitions {
                let log = match data_dir {
                    Some(dir) => {
                        let pdir: PathBuf = dir.join("hubs").join(&spec.name).join(p.to_string());
                        let (log, report) =
                            PartitionLog::open(&pdir, store.clone()).map_err(HubError::Store)?;
                        if report.truncated_bytes > 0 || report.corrupt_segment.is_some() {
                            tracing::warn!(hub = %spec.name, partition = p, truncated_bytes = report.truncated_bytes, corrupt_segment = ?report.corrupt_segment, problem = ?report.problem, "partition log had a torn or corrupt tail; it was cut and is not served");
                        }
                        tracing::debug!(hub = %spec.name, partition = p, records = report.records, "partition opened");
                        log
                    }
                    None => PartitionLog::in_memory(store.clone()),
                };
                partitions.push(log);
            }
            let mut groups = HashMap::new();
            groups.insert("$default".to_string(), "$Default".to_string());
            for g in consumer_groups {
                groups.insert(g.to_ascii_lowercase(), g.clone());
            }
            order.push(spec.name.clone());
            hubs.insert(
                spec.name.to_ascii_lowercase(),
                Arc::new(EventHub {
                    name: spec.name.clone(),
                    partitions,
                    consumer_groups: groups,
                    created_at_ms: now_ms,
                    round_robin: AtomicUsize::new(0),
                }),
            );
        }
        Ok(Broker {
            hubs,
            order,
            epochs: Arc::new(Epochs::default()),
        })
    }

    /// A hub by name, case-insensitively.
    pub fn hub(&self, name: &str) -> Option<&Arc<EventHub>> {
        self.hubs.get(&name.to_ascii_lowercase())
    }

    /// Every hub.
    pub fn hubs(&self) -> impl Iterator<Item = &Arc<EventHub>> {
        self.order.iter().filter_map(|n| self.hub(n))
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_routing_is_stable_and_spreads() {
        let b = Broker::open(
            &[HubSpec {
                name: "h".into(),
                partitions: 4,
            }],
            &[],
            None,
            &StoreConfig::default(),
        )
        .unwrap();
        let hub = b.hub("H").unwrap();
        assert_eq!(hub.route(Some("tc-eu")), hub.route(Some("tc-eu")));
        let used: std::collections::HashSet<usize> = (0..64)
            .map(|i| hub.route(Some(&format!("connector-{i}"))))
            .collect();
        assert_eq!(used.len(), 4);
        let rr: Vec<usize> = (0..4).map(|_| hub.route(None)).collect();
        assert_eq!(rr, vec![0, 1, 2, 3]);
        assert_eq!(hub.consumer_group("$default"), Some("$Default"));
    }

    #[test]
    fn higher_epoch_displaces_lower_and_lower_is_refused() {
        let e = Arc::new(Epochs::default());
        let plain = e.register("h", "$Default", 0, None).unwrap();
        let one = e.register("h", "$default", 0, Some(1)).unwrap();
        assert!(plain.kicked.borrow().is_some());
        assert!(e.register("h", "$Default", 0, None).is_err());
        assert!(e.register("h", "$Default", 0, Some(0)).is_err());
        let two = e.register("h", "$Default", 0, Some(2)).unwrap();
        assert!(one
            .kicked
            .borrow()
            .as_ref()
            .unwrap()
            .0
            .contains("higher epoch of '2'"));
        assert!(two.kicked.borrow().is_none());
        // The same epoch again (an SDK processor's owner level 0 taking over): the newer
        // receiver wins, the older one is disconnected.
        let two_again = e.register("h", "$Default", 0, Some(2)).unwrap();
        assert!(two.kicked.borrow().is_some(), "equal epoch displaces");
        assert!(two_again.kicked.borrow().is_none());
        drop(two_again);
        // Other partitions are independent; dropping frees the slot.
        assert!(e.register("h", "$Default", 1, None).is_ok());
        drop(two);
        drop(one);
        drop(plain);
        assert!(e.register("h", "$Default", 0, None).is_ok());
    }
}
