//! The Azure Blob checkpoint store: checkpoints and partition ownership in one Blob
//! container, in the layout every Azure SDK's event processor uses, so several collectors
//! (and the SDKs' own processors) can share a consumer group.
//!
//! # Layout in the container
//!
//! ```text
//! <namespace>/<event hub>/<consumer group>/ownership/<partition>    metadata: ownerid
//! <namespace>/<event hub>/<consumer group>/checkpoint/<partition>   metadata: sequencenumber, offset
//! ```
//!
//! Both are block blobs whose data is their metadata (decimal strings); tcpulse also puts
//! its own checkpoint JSON (with the aggregator state, see below) in the checkpoint blob's
//! body, which the SDKs never read. Sources: Python `azure-eventhub-checkpointstoreblob`
//! 1.2.0 `_blobstoragecs.py` (names, `ownerid`, `sequencenumber`, `offset`, `if_match` /
//! `if_none_match="*"`), .NET `BlobCheckpointStoreInternal.cs` @0420a230, Go
//! `azeventhubs/checkpoints/blob_store.go` @87cdec18 (reference notes
//! `azure-blob-identity-websocket.md` §2).
//!
//! **Casing.** .NET, Python and JS lower-case namespace, hub and consumer group in the blob
//! names (`$Default` becomes `$default`: Python `blob_name.lower()`, .NET
//! `ToLowerInvariant()`); Go, Java and the Rust SDK write them as given
//! (Azure/azure-sdk-for-rust#5099). tcpulse lower-cases the whole name, as .NET and Python
//! do, so it shares a container with their processors. With Go or Java processors in the
//! same consumer group, give the namespace, hub and consumer group in lower case everywhere,
//! so that every SDK writes the same names.
//!
//! **Checkpoints.** A checkpoint write is one unconditional Put Blob: metadata
//! `sequencenumber` and `offset` (what the SDKs read) and the body, tcpulse's
//! [`Checkpoint`] JSON with the aggregator state after that event (what a tcpulse
//! collector taking the partition over restores, so its rollups continue exactly: see
//! `crate::ownership`). One write carries both, so they never disagree. On read,
//! `sequencenumber` is the resume point; an empty or non-numeric `offset` is tolerated
//! (.NET may leave it empty), since tcpulse resumes by sequence number. A body written for
//! another sequence number than the metadata's (an SDK processor checkpointed after
//! tcpulse: Set Blob Metadata keeps the body) is ignored: the partition resumes at the
//! SDK's checkpoint with fresh aggregator state.
//!
//! **Ownership.** [`BlobCheckpointStore::list_ownership`] lists the ownership blobs with
//! their metadata, ETag and Last-Modified, and the service's `Date`;
//! [`BlobCheckpointStore::claim`] writes `ownerid` with `If-Match: <etag>` (or creates the
//! blob with `If-None-Match: *`); 412 and 409 mean another claimant won. Releasing is a
//! claim with an empty owner id.
//!
//! # Layout
//!
//! - `auth`: [`BlobAuth`]: Shared Key signing, the Entra bearer-token seam.
//! - `client`: the REST calls ([`BlobClient`]).
//! - `config`: `[checkpoint.azure_blob]` and storage connection strings.
//! - `xml`: the List Blobs answer.

pub mod auth;
pub mod client;
pub mod config;
pub mod xml;

use futures::future::BoxFuture;

pub use auth::{BearerTokenSource, BlobAuth, SharedKey};
pub use client::{BlobClient, BlobError, Written};

use super::{
    parse_checkpoint, Checkpoint, CheckpointError, CheckpointScope, CheckpointStore,
    CHECKPOINT_VERSION,
};
use client::{parse_rfc1123_ms, quote_etag};

/// Metadata key of the owner (SDKs: `BlobMetadataKey.OwnerId`, Python `"ownerid"`).
pub const OWNER_ID: &str = "ownerid";
/// Metadata key of the checkpointed sequence number.
pub const SEQUENCE_NUMBER: &str = "sequencenumber";
/// Metadata key of the checkpointed offset.
pub const OFFSET: &str = "offset";

/// One partition's ownership as the container holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// Partition id.
    pub partition: String,
    /// The owner's id; empty when released.
    pub owner_id: String,
    /// The blob's ETag (quoted), for the next conditional claim.
    pub etag: String,
    /// The blob's Last-Modified, ms since the Unix epoch (the service's clock).
    pub last_modified_ms: i64,
}

/// Every ownership of a scope, and the service's clock when they were listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnershipListing {
    /// The ownerships, one per partition that ever had an owner.
    pub ownerships: Vec<Ownership>,
    /// The service's `Date`, ms since the Unix epoch: expiry is judged against this clock,
    /// never the collector's.
    pub server_time_ms: i64,
}

/// Checkpoints and ownership in an Azure Blob container; see the module docs.
#[derive(Debug, Clone)]
pub struct BlobCheckpointStore {
    client: BlobClient,
}

impl BlobCheckpointStore {
    /// A store over `client`'s container.
    pub fn new(client: BlobClient) -> Self {
        BlobCheckpointStore { client }
    }

    /// The REST client.
    pub fn client(&self) -> &BlobClient {
        &self.client
    }

    /// `<namespace>/<hub>/<consumer group>`, lower-cased (see "Casing").
    pub fn prefix(scope: &CheckpointScope) -> String {
        format!("{}/{}/{}", scope.namespace, scope.hub, scope.consumer_group).to_lowercase()
    }

    /// The ownership blob of `partition`.
    pub fn ownership_blob(scope: &CheckpointScope, partition: &str) -> String {
        format!("{}/ownership/{partition}", Self::prefix(scope)).to_lowercase()
    }

    /// The checkpoint blob of `partition`.
    pub fn checkpoint_blob(scope: &CheckpointScope, partition: &str) -> String {
        format!("{}/checkpoint/{partition}", Self::prefix(scope)).to_lowercase()
    }

    /// Every ownership blob of `scope`. A blob without `ownerid` counts as released.
    pub async fn list_ownership(
        &self,
        scope: &CheckpointScope,
    ) -> Result<OwnershipListing, BlobError> {
        let prefix = format!("{}/ownership/", Self::prefix(scope));
        let listing = self.client.list(&prefix).await?;
        let ownerships = listing
            .blobs
            .into_iter()
            .filter_map(|b| {
                let partition = b.name.strip_prefix(&prefix)?.to_owned();
                let owner_id = b
                    .metadata
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(OWNER_ID))
                    .map(|(_, v)| v.trim().to_owned())
                    .unwrap_or_default();
                Some(Ownership {
                    partition,
                    owner_id,
                    etag: quote_etag(b.etag.as_deref().unwrap_or_default()),
                    last_modified_ms: b
                        .last_modified
                        .as_deref()
                        .and_then(parse_rfc1123_ms)
                        .unwrap_or(0),
                })
            })
            .collect();
        Ok(OwnershipListing {
            ownerships,
            server_time_ms: listing.server_time_ms,
        })
    }

    /// Sets `partition`'s owner to `owner_id` (empty: release) if the blob's ETag is still
    /// `etag`, or creates the blob if `etag` is `None` and it does not exist. `Ok(None)`
    /// when another claimant won (412, 409, or the blob vanished).
    pub async fn claim(
        &self,
        scope: &CheckpointScope,
        partition: &str,
        owner_id: &str,
        etag: Option<&str>,
    ) -> Result<Option<Ownership>, BlobError> {
        let blob = Self::ownership_blob(scope, partition);
        let metadata = [(OWNER_ID, owner_id)];
        let result = match etag {
            Some(etag) => self.client.set_metadata(&blob, &metadata, Some(etag)).await,
            None => {
                self.client
                    .put(&blob, Vec::new(), None, &metadata, None, Some("*"))
                    .await
            }
        };
        match result {
            Ok(w) => Ok(Some(Ownership {
                partition: partition.to_owned(),
                owner_id: owner_id.to_owned(),
                etag: w.etag,
                last_modified_ms: w.last_modified_ms,
            })),
            Err(e) if e.is_lost_race() || e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn load_checkpoint(
        &self,
        scope: &CheckpointScope,
        partition: &str,
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let blob = Self::checkpoint_blob(scope, partition);
        let fetched = self
            .client
            .get(&blob)
            .await
            .map_err(|source| CheckpointError::Blob {
                partition: partition.to_owned(),
                location: blob.clone(),
                source,
            })?;
        let Some(fetched) = fetched else {
            return Ok(None);
        };
        let meta = |key: &str| {
            fetched
                .metadata
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let (seq_text, offset) = (meta(SEQUENCE_NUMBER), meta(OFFSET));
        let sequence_number = seq_text
            .parse::<i64>()
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(|| CheckpointError::Corrupt {
                partition: partition.to_owned(),
                location: blob.clone(),
                detail: format!(
                    "metadata sequencenumber {seq_text:?} (offset {offset:?}) is not a sequence number; tcpulse resumes by sequence number"
                ),
            })?;
        Ok(Some(from_blob(
            partition,
            sequence_number,
            offset,
            fetched.last_modified_ms,
            &fetched.body,
        )))
    }

    async fn store_checkpoint(
        &self,
        scope: &CheckpointScope,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        let partition = &checkpoint.partition;
        let blob = Self::checkpoint_blob(scope, partition);
        let err = |source| CheckpointError::Blob {
            partition: partition.clone(),
            location: blob.clone(),
            source,
        };
        let body = serde_json::to_vec(checkpoint).map_err(|e| {
            err(BlobError {
                operation: "put",
                status: None,
                code: None,
                message: format!("checkpoint not serialisable: {e}"),
            })
        })?;
        let seq = checkpoint.sequence_number.to_string();
        let metadata = [
            (SEQUENCE_NUMBER, seq.as_str()),
            (OFFSET, checkpoint.offset.as_str()),
        ];
        self.client
            .put(&blob, body, Some("application/json"), &metadata, None, None)
            .await
            .map(|_| ())
            .map_err(err)
    }
}

/// The checkpoint a blob holds: tcpulse's own from the body when it was written for the
/// metadata's sequence number, else the SDK fields alone (no state, no enqueue time).
fn from_blob(
    partition: &str,
    sequence_number: i64,
    offset: String,
    last_modified_ms: Option<i64>,
    body: &[u8],
) -> Checkpoint {
    if !body.is_empty() {
        match parse_checkpoint(body, partition) {
            Ok(cp) if cp.sequence_number == sequence_number => return cp,
            Ok(cp) => tracing::info!(
                partition,
                sequence_number,
                body_sequence_number = cp.sequence_number,
                "checkpoint was moved on by another processor; resuming there without aggregator state"
            ),
            Err(e) => tracing::info!(partition, error = %e, "checkpoint body unreadable; resuming without aggregator state"),
        }
    }
    Checkpoint {
        version: CHECKPOINT_VERSION,
        partition: partition.to_owned(),
        sequence_number,
        offset,
        enqueued_time_ms: None,
        updated_at_ms: last_modified_ms.unwrap_or(0),
        state: None,
    }
}

impl CheckpointStore for BlobCheckpointStore {
    fn load<'a>(
        &'a self,
        scope: &'a CheckpointScope,
        partition: &'a str,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, CheckpointError>> {
        Box::pin(self.load_checkpoint(scope, partition))
    }

    fn store<'a>(
        &'a self,
        scope: &'a CheckpointScope,
        checkpoint: &'a Checkpoint,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(self.store_checkpoint(scope, checkpoint))
    }

    /// Blobs are not moved: the error quotes what the metadata held, and the partition's
    /// next checkpoint replaces the blob.
    fn quarantine<'a>(
        &'a self,
        _scope: &'a CheckpointScope,
        _partition: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CheckpointError>> {
        Box::pin(async { Ok(None) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_cased_like_dotnet_and_python() {
        let s = CheckpointScope::new("NS.servicebus.windows.net", "Telemetry", "$Default");
        assert_eq!(
            BlobCheckpointStore::ownership_blob(&s, "3"),
            "ns.servicebus.windows.net/telemetry/$default/ownership/3"
        );
        assert_eq!(
            BlobCheckpointStore::checkpoint_blob(&s, "3"),
            "ns.servicebus.windows.net/telemetry/$default/checkpoint/3"
        );
    }

    #[test]
    fn a_body_for_another_sequence_number_is_ignored() {
        let ours = Checkpoint {
            version: CHECKPOINT_VERSION,
            partition: "0".into(),
            sequence_number: 5,
            offset: "500".into(),
            enqueued_time_ms: Some(1),
            updated_at_ms: 2,
            state: Some(serde_json::json!({"k": 1})),
        };
        let body = serde_json::to_vec(&ours).unwrap();
        assert_eq!(from_blob("0", 5, "500".into(), Some(9), &body), ours);
        let moved_on = from_blob("0", 9, String::new(), Some(9), &body);
        assert_eq!(moved_on.sequence_number, 9);
        assert_eq!(moved_on.state, None);
        assert_eq!(moved_on.enqueued_time_ms, None);
        let sdk = from_blob("0", 7, "700".into(), None, b"");
        assert_eq!((sdk.sequence_number, sdk.offset.as_str()), (7, "700"));
    }
}
