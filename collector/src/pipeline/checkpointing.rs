//! Checkpoint writing: the position of the newest batch before which every batch is stored
//! (with the aggregator snapshot taken when it was sealed), written at most every
//! `checkpoint.interval`, and only after the dead-letter file is durably synced.

use std::time::Instant;

use tcpulse_schema::Timestamp;

use super::partition::PartitionLoop;
use crate::checkpoint::{Checkpoint, CHECKPOINT_VERSION};
use crate::internal_events::{CheckpointFailed, DeadLetterWriteBlocked, InternalEvent};
use crate::metrics::partition_labels;

impl PartitionLoop<'_> {
    /// The sequence number this run last wrote as the checkpoint.
    pub(super) fn written_checkpoint(&self) -> Option<i64> {
        self.last_checkpoint_write.map(|(_, seq)| seq)
    }

    /// Writes the pending checkpoint when `checkpoint.interval` has passed (or `force`).
    pub(super) async fn maybe_checkpoint(&mut self, force: bool) {
        let Some((pos, _)) = &self.pending_checkpoint else {
            return;
        };
        if self.written_checkpoint() == Some(pos.sequence_number) && !force {
            self.pending_checkpoint = None;
            return;
        }
        if !force
            && self
                .last_checkpoint_write
                .is_some_and(|(at, _)| at.elapsed() < self.settings.checkpoint.interval)
        {
            return;
        }
        let Some((pos, snapshot)) = self.pending_checkpoint.take() else {
            return;
        };
        let m = &self.shared.metrics;
        // Every dead letter the checkpoint covers must be durably in the file first.
        if let Err(e) = self.shared.dead_letters.sync() {
            DeadLetterWriteBlocked {
                partition: self.partition,
                error: &e.to_string(),
                retry_in: self.settings.checkpoint.interval,
            }
            .emit(m);
            self.pending_checkpoint = Some((pos, snapshot));
            return;
        }
        let cp = Checkpoint {
            version: CHECKPOINT_VERSION,
            partition: self.partition.to_owned(),
            sequence_number: pos.sequence_number,
            offset: pos.offset.clone(),
            enqueued_time_ms: Some(pos.enqueued_time_ms),
            updated_at_ms: Timestamp::now().unix_millis(),
            state: serde_json::to_value(&snapshot).ok(),
        };
        match self.shared.checkpoints.store(&self.shared.scope, &cp).await {
            Ok(()) => {
                self.last_checkpoint_write = Some((Instant::now(), pos.sequence_number));
                self.checkpoint_advanced_at = Some(Instant::now());
                m.checkpoint_sequence
                    .get_or_create(&partition_labels(self.partition))
                    .set(pos.sequence_number);
                m.log.clear(&format!("checkpoint/{}/store", self.partition));
            }
            Err(e) => {
                CheckpointFailed {
                    partition: self.partition,
                    operation: "store",
                    error: &e.to_string(),
                }
                .emit(m);
                self.pending_checkpoint = Some((pos, snapshot));
            }
        }
    }
}
