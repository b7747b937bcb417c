//! Every source a config can name, behind one provider: the file source (`source.file`)
//! or the Event Hubs adapter (`source.eventhub`), chosen by [`from_config`]. The only module
//! that knows both; [`crate::source`] (the seam) and [`crate::eventhubs`] know neither.

use std::sync::Arc;

use tcpulse_eventhub::identity::CredentialStats;

use crate::checkpoint::CheckpointScope;
use crate::config::{self, Config};
use crate::eventhubs::{EventHubsPartition, EventHubsProvider};
use crate::source::{
    FileSource, FileSourceProvider, PartitionBounds, PartitionSource, PartitionTip, ReadFrom,
    SourceError, SourceEvent, SourceProvider,
};
use crate::BuildError;

/// The source a config names.
pub fn from_config(config: &Config) -> Result<AnyProvider, BuildError> {
    if let Some(f) = &config.source.file {
        return Ok(AnyProvider::File(FileSourceProvider::new(
            &f.path,
            f.partition.clone(),
        )));
    }
    if let Some(eh) = &config.source.eventhub {
        let (client, credential) = eh
            .client_config()
            .map_err(|e| BuildError::EventHubSecret(e.to_string()))?;
        // With a shared (Blob) store, receivers open with owner level 0 as the SDKs'
        // processors do (Python `event_processor.py` and Go `processor.go`: owner level 0
        // when a checkpoint store is given), so a stale reader of the group is evicted.
        let shared_store = config.checkpoint.store == config::CheckpointStoreKind::AzureBlob;
        let owner_level = eh.owner_level.or(shared_store.then_some(0));
        let provider =
            EventHubsProvider::new(client, eh.consumer_group.clone(), eh.prefetch, owner_level);
        return Ok(AnyProvider::EventHubs {
            provider: Box::new(provider),
            credential,
        });
    }
    Err(BuildError::Config(config::ConfigError::Invalid {
        field: "source",
        why: "no source configured".into(),
    }))
}

/// Every source the collector can run from config.
#[derive(Debug)]
pub enum AnyProvider {
    /// `source.file`.
    File(FileSourceProvider),
    /// `source.eventhub`, and its Entra ID credential's numbers (none with a connection
    /// string).
    EventHubs {
        /// The provider.
        provider: Box<EventHubsProvider>,
        /// For the `credential_*` metrics.
        credential: Option<Arc<CredentialStats>>,
    },
}

impl AnyProvider {
    /// The Entra ID credential's numbers, if the source has one.
    pub fn credential_stats(&self) -> Option<Arc<CredentialStats>> {
        match self {
            AnyProvider::EventHubs { credential, .. } => credential.clone(),
            AnyProvider::File(_) => None,
        }
    }
}

/// The partition source of an [`AnyProvider`].
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per partition, long-lived: size does not matter
pub enum AnySource {
    /// From a file.
    File(FileSource),
    /// From an Event Hubs partition.
    EventHubs(EventHubsPartition),
}

impl PartitionSource for AnySource {
    fn partition(&self) -> &str {
        match self {
            AnySource::File(s) => s.partition(),
            AnySource::EventHubs(s) => s.partition(),
        }
    }

    async fn next(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        match self {
            AnySource::File(s) => s.next().await,
            AnySource::EventHubs(s) => s.next().await,
        }
    }

    fn tip(&self) -> Option<PartitionTip> {
        match self {
            AnySource::File(s) => s.tip(),
            AnySource::EventHubs(s) => s.tip(),
        }
    }
}

impl SourceProvider for AnyProvider {
    type Source = AnySource;

    fn scope(&self) -> CheckpointScope {
        match self {
            AnyProvider::File(p) => p.scope(),
            AnyProvider::EventHubs { provider: p, .. } => p.scope(),
        }
    }

    async fn partitions(&self) -> Result<Vec<String>, SourceError> {
        match self {
            AnyProvider::File(p) => p.partitions().await,
            AnyProvider::EventHubs { provider: p, .. } => p.partitions().await,
        }
    }

    async fn open(&self, partition: &str, start: ReadFrom) -> Result<AnySource, SourceError> {
        match self {
            AnyProvider::File(p) => p.open(partition, start).await.map(AnySource::File),
            AnyProvider::EventHubs { provider: p, .. } => {
                p.open(partition, start).await.map(AnySource::EventHubs)
            }
        }
    }

    async fn bounds(&self, partition: &str) -> Result<Option<PartitionBounds>, SourceError> {
        match self {
            AnyProvider::File(p) => p.bounds(partition).await,
            AnyProvider::EventHubs { provider: p, .. } => p.bounds(partition).await,
        }
    }
}
