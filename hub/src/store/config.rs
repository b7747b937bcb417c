//! [`StoreConfig`]: retention and persistence settings for every partition, and their
//! defaults.

use std::time::Duration;

/// Default for [`StoreConfig::max_events`].
pub const DEFAULT_MAX_EVENTS: usize = 100_000;
/// Default for [`StoreConfig::max_age`]: 24 hours.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Default for [`StoreConfig::segment_bytes`]: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default for [`StoreConfig::max_bytes`]: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Default for [`StoreConfig::memory_bytes`]: 64 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// Retention and persistence settings for every partition.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Retention by count: at most this many records are kept per partition (default 100 000).
    pub max_events: usize,
    /// Retention by age: records enqueued longer ago than this are dropped (default 24 h).
    pub max_age: Duration,
    /// Retention by size: the oldest records are dropped once the framed sizes of the
    /// retained ones add up to more than this many bytes (default 1 GiB). An in-memory
    /// partition keeps at most `memory_bytes`.
    pub max_bytes: u64,
    /// Memory budget for record bodies, in bytes of framed records (default 64 MiB). Beyond
    /// it the oldest records leave memory: a persistent partition reads them back from its
    /// segments when asked; an in-memory partition drops them (retention).
    pub memory_bytes: u64,
    /// A segment file is closed once it holds at least this many bytes, and the next batch
    /// starts a new one (default 64 MiB).
    pub segment_bytes: u64,
    /// `fsync` after each append (default `false`: data in OS buffers survives a process
    /// crash, not a power loss).
    pub fsync: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_events: DEFAULT_MAX_EVENTS,
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync: false,
        }
    }
}
