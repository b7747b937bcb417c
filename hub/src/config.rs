//! The hub's settings. The `tcpulse-hub` CLI mirrors these fields one for one.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use tcpulse_eventhub::cli_support::secret::{self, FileFormat, Origin};

use crate::{auth, entra::EntraConfig, store::StoreConfig, HubError};

/// Environment variable holding shared access policies (`NAME:RIGHTS:KEY;…`).
pub const POLICIES_ENV: &str = "TCPULSE_HUB_POLICIES";
/// What the policies are called in messages.
const POLICIES_SECRET: &str = "hub shared access policies";

/// One event hub and its partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpec {
    /// Hub name (the entity path).
    pub name: String,
    /// Number of partitions (1 to 1024).
    pub partitions: u32,
}

impl FromStr for HubSpec {
    type Err = String;
    /// `NAME` or `NAME:PARTITIONS`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, partitions) = match s.split_once(':') {
            Some((n, p)) => (
                n,
                p.parse::<u32>()
                    .map_err(|_| format!("'{p}' is not a partition count (expected NAME[:PARTITIONS], e.g. tcpulse:4)"))?,
            ),
            None => (s, default_partitions()),
        };
        let spec = HubSpec {
            name: name.to_string(),
            partitions,
        };
        spec.check()?;
        Ok(spec)
    }
}

impl HubSpec {
    fn check(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "hub name '{}' must be non-empty letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(format!(
                "hub '{}': partition count must be 1 to 1024, not {}",
                self.name, self.partitions
            ));
        }
        Ok(())
    }
}

/// Default AMQPS listen address (Azure's port, loopback only).
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5671))
}
/// Default partition count of a hub.
pub const fn default_partitions() -> u32 {
    4
}
/// Default hub name.
pub const DEFAULT_HUB: &str = "tcpulse";
/// Default largest message accepted (1 MiB, as Event Hubs Standard).
pub const fn default_max_message_bytes() -> u64 {
    tcpulse_eventhub::wire::DEFAULT_MAX_MESSAGE_SIZE
}
/// Default AMQP max frame size offered.
pub const fn default_max_frame_bytes() -> u32 {
    262_144
}
/// Default retention by count, per partition.
pub const fn default_retention_events() -> usize {
    100_000
}
/// Default retention by age.
pub const fn default_retention_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
/// Default retention by size, per partition: 1 GiB.
pub const fn default_retention_bytes() -> u64 {
    crate::store::DEFAULT_MAX_BYTES
}
/// Default memory budget for event bodies, whole hub: 256 MiB.
pub const fn default_memory_budget_bytes() -> u64 {
    256 * 1024 * 1024
}
/// Default time a connection has to put a valid token: 20 s, as Event Hubs.
pub const fn default_auth_timeout() -> Duration {
    Duration::from_secs(20)
}
/// Default idle timeout announced in the Open frame: 240 s, as Event Hubs.
pub const fn default_idle_timeout() -> Duration {
    Duration::from_secs(240)
}
/// Smallest memory share a partition gets, bytes (64 KiB).
const MIN_PARTITION_MEMORY_BYTES: u64 = 64 * 1024;

/// Settings of one hub process.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// AMQP over TLS (TLS first, as Azure on 5671). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Plain AMQP for clients in `UseDevelopmentEmulator=true` mode; off when `None`.
    pub plain_listen: Option<SocketAddr>,
    /// AMQP over WebSockets (TLS with the same certificate, then the upgrade on
    /// `/$servicebus/websocket`, subprotocol `AMQPWSB10` or `amqp`), as the service on port
    /// 443; off when `None`. Port 0 picks a free port.
    pub ws_listen: Option<SocketAddr>,
    /// Event hubs and partition counts. Default: `tcpulse` with 4 partitions.
    pub hubs: Vec<HubSpec>,
    /// Consumer groups besides `$Default` (which always exists), on every hub.
    pub consumer_groups: Vec<String>,
    /// Keep partitions (and generated keys and certificates) here; in memory when `None`.
    pub data_dir: Option<PathBuf>,
    /// Where the generated CA and server certificate live. Default: `<data-dir>/tls`, or
    /// `<temp dir>/tcpulse-hub/tls` without a data directory.
    pub tls_dir: Option<PathBuf>,
    /// A PEM certificate chain to serve instead of the generated one (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Host name used in the printed connection strings. Default `localhost`.
    pub namespace: String,
    /// Shared access policies (`NAME:RIGHTS:KEY;…`), e.g. from `TCPULSE_HUB_POLICIES`.
    /// Generated when neither this nor `policies_file` is set.
    pub policies: Option<String>,
    /// File with shared access policies, one `NAME:RIGHTS:KEY` per line. It wins over
    /// `policies` (one WARN naming both when both are set).
    pub policies_file: Option<PathBuf>,
    /// Largest message (or batch) accepted, bytes; advertised on attach. Default 1 MiB.
    pub max_message_bytes: u64,
    /// AMQP max frame size offered, bytes. Default 256 KiB.
    pub max_frame_bytes: u32,
    /// Events kept per partition. Default 100,000.
    pub retention_events: usize,
    /// How long events are kept. Default 24 h.
    pub retention_age: Duration,
    /// Retention by size, per partition, in bytes of stored records (event plus about 44
    /// bytes of framing): the oldest events are dropped beyond it. Default 1 GiB. Without
    /// a data directory a partition keeps at most its share of `memory_budget_bytes`.
    pub retention_bytes: u64,
    /// Memory for event bodies, whole hub, in bytes; split evenly across all partitions
    /// (at least 64 KiB each). Events beyond a partition's share leave memory: with a data
    /// directory they are read back from the segment files when a consumer asks; without
    /// one they are dropped (the budget bounds retention). Each retained event also keeps
    /// about 80 bytes of bookkeeping in memory (bounded by `retention_events`).
    /// Default 256 MiB.
    pub memory_budget_bytes: u64,
    /// A connection that has not put a valid token on `$cbs` (nor authenticated with SASL
    /// PLAIN) this long after its AMQP open is closed with `amqp:unauthorized-access`, as
    /// Event Hubs does. Default 20 s.
    pub auth_timeout: Duration,
    /// Idle timeout announced in the Open frame: a connection that sends nothing (not even
    /// an empty frame) for this long is closed; clients send heartbeats at half of it.
    /// Default 240 s, as Event Hubs.
    pub idle_timeout: Duration,
    /// Honour CBS tokens for at most this long, whatever their expiry says (to exercise
    /// client token refresh). Default: the token's own expiry.
    pub max_token_lifetime: Option<Duration>,
    /// Entra ID (`jwt`) put-tokens: the issuer's keys, the audience, the issuer and the
    /// role assignments (see [`crate::entra`]). Default: none configured, and `jwt`
    /// put-tokens are refused.
    pub entra: EntraConfig,
    /// fsync each append (survives power loss, slower). Default off: a process crash keeps
    /// everything the OS has.
    pub fsync: bool,
    /// Keep a copy of every link attach and CBS request (see [`crate::Hub::captured`]), to
    /// compare clients on the wire. Off by default; for tests.
    pub capture: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: default_listen(),
            plain_listen: None,
            ws_listen: None,
            hubs: vec![HubSpec {
                name: DEFAULT_HUB.to_string(),
                partitions: default_partitions(),
            }],
            consumer_groups: Vec::new(),
            data_dir: None,
            tls_dir: None,
            tls_cert: None,
            tls_key: None,
            namespace: "localhost".to_string(),
            policies: None,
            policies_file: None,
            max_message_bytes: default_max_message_bytes(),
            max_frame_bytes: default_max_frame_bytes(),
            retention_events: default_retention_events(),
            retention_age: default_retention_age(),
            retention_bytes: default_retention_bytes(),
            memory_budget_bytes: default_memory_budget_bytes(),
            auth_timeout: default_auth_timeout(),
            idle_timeout: default_idle_timeout(),
            max_token_lifetime: None,
            entra: EntraConfig::default(),
            fsync: false,
            capture: false,
        }
    }
}

impl HubConfig {
    /// Checks the settings without touching the network or disk.
    pub fn validate(&self) -> Result<(), HubError> {
        if self.hubs.is_empty() {
            return Err(HubError::Config("at least one --hub is needed".into()));
        }
        for h in &self.hubs {
            h.check().map_err(HubError::Config)?;
        }
        for g in &self.consumer_groups {
            if g.is_empty() || g.len() > 50 || g.contains('/') {
                return Err(HubError::Config(format!(
                    "consumer group '{g}' must be 1 to 50 characters without '/'"
                )));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(HubError::Config(
                "--tls-cert and --tls-key go together".into(),
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(HubError::Config(
                "max message size must be at least 1024 bytes".into(),
            ));
        }
        if self.max_frame_bytes < 512 {
            return Err(HubError::Config(
                "max frame size must be at least 512 bytes".into(),
            ));
        }
        if self.retention_events == 0 {
            return Err(HubError::Config(
                "retention must keep at least one event".into(),
            ));
        }
        if self.retention_bytes < self.max_message_bytes {
            return Err(HubError::Config(format!(
                "--retention-bytes {} is below --max-message-bytes {}: the largest event would be dropped at once",
                self.retention_bytes, self.max_message_bytes
            )));
        }
        if self.data_dir.is_none() && self.partition_memory_bytes() < self.max_message_bytes {
            return Err(HubError::Config(format!(
                "--memory-budget-bytes {} gives each of the {} partitions {} bytes, below --max-message-bytes {}; without --data-dir the budget bounds retention, so raise it or set --data-dir",
                self.memory_budget_bytes,
                self.partition_count(),
                self.partition_memory_bytes(),
                self.max_message_bytes
            )));
        }
        self.entra.validate().map_err(HubError::Config)?;
        if self.auth_timeout.is_zero() {
            return Err(HubError::Config("--auth-timeout must be above 0".into()));
        }
        if self.idle_timeout.as_millis() > u128::from(u32::MAX) {
            return Err(HubError::Config(
                "--idle-timeout must be at most 49 days (AMQP carries it as u32 milliseconds)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Partitions of all hubs together.
    fn partition_count(&self) -> u64 {
        self.hubs
            .iter()
            .map(|h| u64::from(h.partitions))
            .sum::<u64>()
            .max(1)
    }

    /// Each partition's share of [`Self::memory_budget_bytes`].
    pub(crate) fn partition_memory_bytes(&self) -> u64 {
        (self.memory_budget_bytes / self.partition_count()).max(MIN_PARTITION_MEMORY_BYTES)
    }

    /// The TLS directory in use.
    pub fn tls_dir(&self) -> PathBuf {
        match (&self.tls_dir, &self.data_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => d.join("tls"),
            (None, None) => std::env::temp_dir().join("tcpulse-hub").join("tls"),
        }
    }

    pub(crate) fn store_config(&self) -> StoreConfig {
        StoreConfig {
            max_events: self.retention_events,
            max_age: self.retention_age,
            max_bytes: self.retention_bytes,
            memory_bytes: self.partition_memory_bytes(),
            fsync: self.fsync,
            ..StoreConfig::default()
        }
    }

    /// The policies: from `policies_file`, else `policies`, else generated (kept in the
    /// data directory). The file winning, with one WARN when both are set, is the
    /// secrets rule of [`secret`].
    pub(crate) fn load_policies(&self) -> Result<Vec<auth::Policy>, HubError> {
        let file = self.policies_file.as_deref();
        let loaded = secret::load_as(
            POLICIES_SECRET,
            Some(POLICIES_ENV),
            file,
            FileFormat::Whole,
            |_| self.policies.clone(),
        )
        .map_err(|e| HubError::Policies {
            origin: "policies_file".to_owned(),
            why: e.to_string(),
        })?;
        if let Some(loaded) = loaded {
            loaded.log_conflict();
            let origin = match loaded.origin() {
                Origin::File(path) => path.display().to_string(),
                Origin::Env(name) => name.clone(),
            };
            return auth::parse_policies(loaded.expose(), &origin);
        }
        match &self.data_dir {
            Some(dir) => auth::load_or_generate(&dir.join("policies")),
            None => Ok(auth::generate_policies()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_spec_parses_and_explains_errors() {
        assert_eq!(
            "tcpulse:8".parse::<HubSpec>().unwrap(),
            HubSpec {
                name: "tcpulse".into(),
                partitions: 8
            }
        );
        assert_eq!("x".parse::<HubSpec>().unwrap().partitions, 4);
        assert!("x:0".parse::<HubSpec>().unwrap_err().contains("1 to 1024"));
        assert!("x:many"
            .parse::<HubSpec>()
            .unwrap_err()
            .contains("partition count"));
        assert!("a/b:2".parse::<HubSpec>().is_err());
    }

    #[test]
    fn validate_rejects_half_tls_and_empty_hubs() {
        let c = HubConfig {
            tls_cert: Some("c.pem".into()),
            ..HubConfig::default()
        };
        assert!(c.validate().is_err());
        let c = HubConfig {
            hubs: vec![],
            ..HubConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(HubConfig::default().validate().is_ok());
    }

    #[test]
    fn r12_memory_budget_is_split_across_partitions_and_checked() {
        let c = HubConfig {
            hubs: vec!["a:4".parse().unwrap(), "b:4".parse().unwrap()],
            memory_budget_bytes: 64 * 1024 * 1024,
            ..HubConfig::default()
        };
        assert_eq!(c.store_config().memory_bytes, 8 * 1024 * 1024);
        assert_eq!(c.store_config().max_bytes, default_retention_bytes());
        // Without a data dir the budget bounds retention: each share must hold the largest event.
        let small = HubConfig {
            memory_budget_bytes: 2 * 1024 * 1024,
            ..HubConfig::default()
        };
        let err = small.validate().unwrap_err().to_string();
        assert!(
            err.contains("--memory-budget-bytes") && err.contains("--data-dir"),
            "{err}"
        );
        let with_dir = HubConfig {
            data_dir: Some("/nonexistent".into()),
            ..small
        };
        assert!(with_dir.validate().is_ok());
        let tiny_retention = HubConfig {
            retention_bytes: 1000,
            ..HubConfig::default()
        };
        assert!(tiny_retention
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--retention-bytes"));
    }
}
