//! The retained records of a partition in memory: one [`Slot`] per record (where it is, and
//! its body while within the memory budget), trimmed from the front by count, bytes and
//! age, and evicted from memory beyond [`StoreConfig::memory_bytes`]. No I/O: the segment
//! files are the `segment` module's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::StoreConfig;
use super::record::{framed_len, Record};
use super::segment::Disk;

/// One retained record: where it is, and its body while it is within the memory budget.
pub(super) struct Slot {
    pub(super) sequence_number: i64,
    pub(super) offset: i64,
    pub(super) enqueued_time_ms: i64,
    /// Framed size in bytes: what the record costs against `max_bytes` and `memory_bytes`.
    pub(super) size: u64,
    /// The segment (by its first sequence number) and byte position holding the record;
    /// `None` in an in-memory partition.
    pub(super) place: Option<(i64, u64)>,
    /// The record while resident; `None` once evicted (then read back from `place`).
    pub(super) record: Option<Arc<Record>>,
}

/// The mutable part of a partition, behind the mutex.
pub(super) struct State {
    /// Retained records; `records[i].sequence_number == begin + i`.
    pub(super) records: VecDeque<Slot>,
    /// Sum of the framed sizes of the retained records.
    pub(super) retained_bytes: u64,
    /// Sum of the framed sizes of the resident records.
    pub(super) resident_bytes: u64,
    /// Sequence number of the oldest resident record: every slot from there on is resident.
    pub(super) resident_from: i64,
    /// Sequence number of the next record.
    pub(super) next_seq: i64,
    /// Offset of the next record.
    pub(super) next_offset: i64,
    /// Offset of the last record ever appended, -1 if none.
    pub(super) last_offset: i64,
    /// Enqueued time of the last record ever appended, 0 if none.
    pub(super) last_time_ms: i64,
    /// Segment files; `None` for an in-memory partition.
    pub(super) disk: Option<Disk>,
}

impl State {
    pub(super) fn empty(disk: Option<Disk>) -> Self {
        Self {
            records: VecDeque::new(),
            retained_bytes: 0,
            resident_bytes: 0,
            resident_from: 0,
            next_seq: 0,
            next_offset: 0,
            last_offset: -1,
            last_time_ms: 0,
            disk,
        }
    }

    /// First retained sequence number, or `next_seq` when nothing is retained.
    pub(super) fn begin(&self) -> i64 {
        self.records
            .front()
            .map_or(self.next_seq, |r| r.sequence_number)
    }

    pub(super) fn seq_at(&self, index: usize) -> i64 {
        self.records
            .get(index)
            .map_or(self.next_seq, |r| r.sequence_number)
    }

    /// Add a record read from disk at `place`, keeping memory within retention and budget.
    pub(super) fn load(
        &mut self,
        record: Record,
        place: (i64, u64),
        config: &StoreConfig,
        cutoff_ms: i64,
    ) {
        let size = framed_len(&record);
        self.next_seq = record.sequence_number + 1;
        self.next_offset = record.offset.saturating_add(size as i64);
        self.last_offset = record.offset;
        self.last_time_ms = record.enqueued_time_ms;
        self.push(Arc::new(record), size, Some(place));
        self.trim(config, cutoff_ms);
        self.evict(config);
    }

    /// Append a resident slot for `record` (the newest).
    pub(super) fn push(&mut self, record: Arc<Record>, size: u64, place: Option<(i64, u64)>) {
        if self.records.is_empty() || self.resident_bytes == 0 {
            self.resident_from = self.resident_from.max(record.sequence_number);
        }
        self.retained_bytes += size;
        self.resident_bytes += size;
        self.records.push_back(Slot {
            sequence_number: record.sequence_number,
            offset: record.offset,
            enqueued_time_ms: record.enqueued_time_ms,
            size,
            place,
            record: Some(record),
        });
    }

    /// Drop records from the front beyond `max_events` or `max_bytes`, or enqueued before
    /// `cutoff_ms`.
    pub(super) fn trim(&mut self, config: &StoreConfig, cutoff_ms: i64) -> usize {
        let mut dropped = 0;
        while let Some(front) = self.records.front() {
            let over = self.records.len() > config.max_events
                || self.retained_bytes > config.max_bytes
                || front.enqueued_time_ms < cutoff_ms;
            if !over {
                break;
            }
            self.retained_bytes -= front.size;
            if front.record.is_some() {
                self.resident_bytes -= front.size;
            }
            self.resident_from = self.resident_from.max(front.sequence_number + 1);
            self.records.pop_front();
            dropped += 1;
        }
        dropped
    }

    /// Evict the oldest resident records from memory while over `memory_bytes`; only records
    /// that can be read back from disk leave memory this way.
    pub(super) fn evict(&mut self, config: &StoreConfig) {
        let begin = self.begin();
        while self.resident_bytes > config.memory_bytes {
            let Ok(index) = usize::try_from(self.resident_from - begin) else {
                break;
            };
            let Some(slot) = self.records.get_mut(index) else {
                break;
            };
            if slot.place.is_none() || slot.record.is_none() {
                break;
            }
            slot.record = None;
            self.resident_bytes -= slot.size;
            self.resident_from += 1;
        }
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Records enqueued before the returned time are older than `max_age` at `now_ms`.
pub(super) fn age_cutoff(now_ms: i64, max_age: Duration) -> i64 {
    let age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(age)
}
