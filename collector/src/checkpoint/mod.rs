//! Where each partition resumes: the [`CheckpointStore`] interface and its two stores.
//!
//! A [`Checkpoint`] names the last event of a partition whose points every sink
//! acknowledged, plus the aggregator's state right after that event, so a restart (or
//! another collector taking the partition over) resumes with the same per-instance state
//! and replays rewrite identical points. A checkpoint that cannot be read is
//! [`CheckpointError::Corrupt`]: the pipeline reports it and starts the partition from the
//! configured position; it never silently starts from the beginning.
//!
//! # Layout
//!
//! | module | job |
//! | --- | --- |
//! | [`file`] | [`FileCheckpointStore`]: JSON files under `checkpoint.dir` (the default) |
//! | [`blob`] | [`BlobCheckpointStore`]: an Azure Blob container in the Azure SDKs' layout, shared by several collectors (and the SDKs' own processors), with partition ownership |

pub mod blob;
pub mod file;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use blob::BlobCheckpointStore;
pub use file::FileCheckpointStore;

/// Version written into every checkpoint file; other versions read as corrupt.
pub const CHECKPOINT_VERSION: u32 = 1;

/// The `(namespace, hub, consumer group)` a set of checkpoints belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointScope {
    /// Event Hubs namespace (fully qualified), or a pseudo-namespace for other sources.
    pub namespace: String,
    /// Event hub name.
    pub hub: String,
    /// Consumer group.
    pub consumer_group: String,
}

impl CheckpointScope {
    /// A scope from its three parts.
    pub fn new(
        namespace: impl Into<String>,
        hub: impl Into<String>,
        consumer_group: impl Into<String>,
    ) -> Self {
        CheckpointScope {
            namespace: namespace.into(),
            hub: hub.into(),
            consumer_group: consumer_group.into(),
        }
    }
}

/// A partition's resume point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Always [`CHECKPOINT_VERSION`].
    pub version: u32,
    /// Partition id.
    pub partition: String,
    /// Sequence number of the last event whose points were stored.
    pub sequence_number: i64,
    /// Its offset.
    pub offset: String,
    /// Its enqueue time, ms since the Unix epoch; unknown for a checkpoint another processor
    /// (an Azure SDK) wrote, which stores only sequence number and offset.
    #[serde(default)]
    pub enqueued_time_ms: Option<i64>,
    /// When this checkpoint was written, ms since the Unix epoch.
    pub updated_at_ms: i64,
    /// The aggregator state right after that event (see `aggregate::Snapshot`).
    #[serde(default)]
    pub state: Option<serde_json::Value>,
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The stored checkpoint exists but is not a valid checkpoint for this partition.
    #[error("checkpoint of partition {partition} at {location} is corrupt ({detail}); it is moved aside and the partition starts from `checkpoint.on_corrupt`")]
    Corrupt {
        /// Partition id.
        partition: String,
        /// File path or blob name.
        location: String,
        /// What is wrong.
        detail: String,
    },
    /// Reading or writing a file failed.
    #[error("checkpoint of partition {partition} at {location}: {source}; check that the directory exists and is writable (`checkpoint.dir`)")]
    Io {
        /// Partition id.
        partition: String,
        /// File path or blob name.
        location: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A request to the Blob service failed (unreachable, refused, throttled).
    #[error("checkpoint of partition {partition} at {location}: {source}")]
    Blob {
        /// Partition id.
        partition: String,
        /// Blob name.
        location: String,
        /// The request's error.
        #[source]
        source: blob::BlobError,
    },
}

impl CheckpointError {
    /// Stable label for counters: `corrupt`, `io` or `blob`.
    pub const fn kind(&self) -> &'static str {
        match self {
            CheckpointError::Corrupt { .. } => "corrupt",
            CheckpointError::Io { .. } => "io",
            CheckpointError::Blob { .. } => "blob",
        }
    }
}

/// Reads and writes partition checkpoints. Implementations: [`FileCheckpointStore`] and
/// [`BlobCheckpointStore`].
pub trait CheckpointStore: Send + Sync + std::fmt::Debug + 'static {
    /// The checkpoint of `partition`, `None` if there is none yet.
    fn load<'a>(
        &'a self,
        scope: &'a CheckpointScope,
        partition: &'a str,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, CheckpointError>>;

    /// Replaces the checkpoint of `checkpoint.partition` atomically.
    fn store<'a>(
        &'a self,
        scope: &'a CheckpointScope,
        checkpoint: &'a Checkpoint,
    ) -> BoxFuture<'a, Result<(), CheckpointError>>;

    /// Moves a corrupt checkpoint aside (kept for inspection) and returns where it went.
    fn quarantine<'a>(
        &'a self,
        scope: &'a CheckpointScope,
        partition: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CheckpointError>>;
}

/// Parses a checkpoint's JSON (a file, or a checkpoint blob's body) for `partition`.
pub fn parse_checkpoint(bytes: &[u8], partition: &str) -> Result<Checkpoint, String> {
    let cp: Checkpoint = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if cp.version != CHECKPOINT_VERSION {
        return Err(format!(
            "version {} (this collector reads {CHECKPOINT_VERSION})",
            cp.version
        ));
    }
    if cp.partition != partition {
        return Err(format!("written for partition {:?}", cp.partition));
    }
    if cp.sequence_number < 0 {
        return Err(format!("negative sequence number {}", cp.sequence_number));
    }
    Ok(cp)
}
