//! `[checkpoint.load_balancing]`: how collectors sharing a Blob container split the
//! partitions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::balance::Strategy;

/// Partition load balancing between the owners of one consumer group (`checkpoint.store =
/// "azure_blob"` only).
///
/// The defaults, against the Azure SDKs' (Go: balanced, 10 s / 60 s; Python: greedy, 30 s /
/// 180 s; .NET: greedy, 30 s / 2 min): a 10 s cycle with a 60 s expiration, so a killed
/// collector's partitions are read again within about 70 s (expiration + one cycle) and a
/// stopped one's within one cycle (it releases them), while a collector renews its
/// ownerships six times per expiration: one or two failed renewals (a Blob hiccup) never
/// cost a partition, and the shortest expiration any SDK peer judges us by (Go's 60 s)
/// is respected. Greedy: a dead collector's partitions are unread until claimed, so they
/// are all claimed in one cycle; a steal (which costs a handover) stays one per cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancingConfig {
    /// `greedy`: claim every unowned or expired partition this collector may hold in one
    /// cycle, steal at most one per cycle; `balanced`: claim or steal one per cycle.
    /// Default: `greedy`.
    #[serde(default)]
    pub strategy: Strategy,
    /// How often ownership is renewed and rebalanced (each cycle waits this ×0.8–1.2, so
    /// collectors started together do not stay in step). Default: 10s.
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// An ownership not renewed for this long is claimable by the others. Judged by the
    /// Blob service's clock (its `Date` answer against the blob's Last-Modified), so the
    /// collectors' own clocks do not matter (within Azure Storage's own bound: a Shared Key
    /// request dated more than 15 minutes off is refused); at least three intervals. A collector that
    /// cannot renew for this long (the store unreachable) stops its partitions.
    /// Default: 60s.
    #[serde(default = "default_expiration", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub expiration: Duration,
}

const fn default_interval() -> Duration {
    Duration::from_secs(10)
}
const fn default_expiration() -> Duration {
    Duration::from_secs(60)
}

impl Default for LoadBalancingConfig {
    fn default() -> Self {
        LoadBalancingConfig {
            strategy: Strategy::default(),
            interval: default_interval(),
            expiration: default_expiration(),
        }
    }
}

impl LoadBalancingConfig {
    /// Why the settings are unusable, if they are.
    pub fn check(&self) -> Result<(), String> {
        if self.interval < Duration::from_millis(100) {
            return Err("interval must be at least 100ms".into());
        }
        if self.expiration < self.interval * 3 {
            return Err(format!(
                "expiration ({:?}) must be at least three intervals ({:?}): a collector renews once per interval",
                self.expiration, self.interval
            ));
        }
        Ok(())
    }
}
