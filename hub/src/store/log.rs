//! [`PartitionLog`], one partition's log: appends (checked, written to the newest segment,
//! then made visible), reads by sequence number (resident records from memory, evicted ones
//! read back from their segment without the lock held), start-position searches by offset
//! and enqueued time, the watch channel consumers wait on, and retention on the hub's timer.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

use super::config::StoreConfig;
use super::error::StoreError;
use super::record::{encode_record, framed_len, read_record, Record, MAX_KEY_LEN};
use super::recovery::{self, OpenReport};
use super::retention::{age_cutoff, now_ms, State};
use super::segment::{segment_path, sync_dir, IO_BUFFER};

/// Most bytes one [`PartitionLog::read_from`] reads back from disk (at least one record).
pub(super) const READ_BACK_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// A partition's event log; cheap to clone (all clones share one log) and `Send + Sync`.
#[derive(Clone)]
pub struct PartitionLog {
    inner: Arc<Inner>,
}

struct Inner {
    config: StoreConfig,
    dir: Option<PathBuf>,
    state: Mutex<State>,
    /// Carries `next_seq`; updated under the state lock, so values only grow.
    notify: watch::Sender<i64>,
}

/// Snapshot of a partition for `$management` partition properties.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionInfo {
    /// First retained sequence number, -1 if nothing is retained.
    pub begin_sequence_number: i64,
    /// Last sequence number ever appended, -1 if none ever.
    pub last_sequence_number: i64,
    /// Offset of the last record ever appended, -1 if none.
    pub last_offset: i64,
    /// Enqueued time of the last record ever appended (unix ms), 0 if none.
    pub last_enqueued_time_ms: i64,
    /// Nothing is retained.
    pub is_empty: bool,
}

impl fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.inner.dir)
            .field("next_sequence_number", &*self.inner.notify.borrow())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl PartitionLog {
    /// An in-memory partition (no persistence), starting at sequence number 0. Its
    /// retention by size is at most [`StoreConfig::memory_bytes`].
    pub fn in_memory(mut config: StoreConfig) -> Self {
        config.max_bytes = config.max_bytes.min(config.memory_bytes);
        Self::from_state(config, None, State::empty(None))
    }

    /// Open (or create) a persistent partition in `dir`.
    ///
    /// Reads and checks every segment (see the module docs). A torn or corrupt tail
    /// (partial record, bad CRC, sequence gap) is cut off — the file is truncated and later
    /// segments are deleted — and reported in the [`OpenReport`]; it is never served.
    /// Sequence numbers, offsets and enqueued times continue where the log ends. An empty
    /// or new directory gives an empty partition.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<(Self, OpenReport), StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let (state, report) = recovery::recover(dir, &config)?;
        Ok((
            Self::from_state(config, Some(dir.to_path_buf()), state),
            report,
        ))
    }

    fn from_state(config: StoreConfig, dir: Option<PathBuf>, state: State) -> Self {
        let (notify, _) = watch::channel(state.next_seq);
        Self {
            inner: Arc::new(Inner {
                config,
                dir,
                state: Mutex::new(state),
                notify,
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // State is only changed after every fallible step succeeded, so a panic elsewhere
        // while holding the lock cannot leave it half-updated.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The partition directory, `None` for an in-memory partition.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// The settings this partition was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Append a batch atomically: the records get consecutive sequence numbers, the same
    /// enqueued time, and are written (and flushed) to disk before any becomes visible; on
    /// an I/O error none is visible and the segment is cut back. Returns the stored records
    /// and wakes subscribers. Records beyond [`StoreConfig::max_events`] are dropped at once.
    pub fn append(
        &self,
        items: Vec<(Option<String>, Bytes)>,
    ) -> Result<Vec<Arc<Record>>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        for (key, payload) in &items {
            if let Some(key) = key {
                if key.len() > MAX_KEY_LEN {
                    return Err(StoreError::TooLarge {
                        what: "partition key",
                        len: key.len(),
                        max: MAX_KEY_LEN,
                    });
                }
            }
            if u32::try_from(payload.len()).is_err() {
                return Err(StoreError::TooLarge {
                    what: "payload",
                    len: payload.len(),
                    max: u32::MAX as usize,
                });
            }
        }

        let mut state = self.lock();
        let state = &mut *state;
        let time = now_ms().max(state.last_time_ms);
        let mut seq = state.next_seq;
        let mut offset = state.next_offset;
        let mut records = Vec::with_capacity(items.len());
        let mut sizes = Vec::with_capacity(items.len());
        let mut frames = Vec::new();
        for (partition_key, payload) in items {
            let record = Record {
                sequence_number: seq,
                offset,
                enqueued_time_ms: time,
                partition_key,
                payload,
            };
            let size = if state.disk.is_some() {
                encode_record(&mut frames, &record)
            } else {
                framed_len(&record)
            };
            seq += 1;
            offset = offset.saturating_add(size as i64);
            sizes.push(size);
            records.push(Arc::new(record));
        }

        let mut place = match state.disk.as_mut() {
            Some(disk) => {
                Some(disk.write_batch(&frames, state.next_seq, seq - 1, &self.inner.config)?)
            }
            None => None,
        };

        // Commit: nothing below can fail.
        state.last_offset = records.last().map_or(state.last_offset, |r| r.offset);
        state.last_time_ms = time;
        state.next_seq = seq;
        state.next_offset = offset;
        for (record, size) in records.iter().zip(sizes) {
            state.push(Arc::clone(record), size, place);
            place = place.map(|(segment, pos)| (segment, pos + size));
        }
        let dropped = state.trim(&self.inner.config, i64::MIN);
        state.evict(&self.inner.config);
        if dropped > 0 {
            let begin = state.begin();
            if let Some(disk) = state.disk.as_mut() {
                if let Err(e) = disk.delete_dead_segments(begin) {
                    tracing::warn!(error = %e, "partition log: cannot delete expired segment; will retry");
                }
            }
        }
        self.inner.notify.send_replace(state.next_seq);
        Ok(records)
    }

    /// Up to `max` retained records with `sequence_number >= from_seq`, in order (empty if
    /// there are none yet). A `from_seq` before the first retained record starts there.
    ///
    /// Records evicted from memory are read back from their segment (at most
    /// `READ_BACK_MAX_BYTES`, 4 MiB, per call, and never mixed with resident ones in one
    /// call: ask again from the next sequence number). The file is read without the
    /// partition's lock held. Fails when a segment cannot be read or a record in it is
    /// damaged.
    pub fn read_from(&self, from_seq: i64, max: usize) -> Result<Vec<Arc<Record>>, StoreError> {
        // A segment deleted by retention between planning and reading: plan again.
        for _ in 0..4 {
            let wants = match self.plan_read(from_seq, max) {
                Plan::Resident(records) => return Ok(records),
                Plan::Disk(wants) => wants,
            };
            let Some(dir) = self.inner.dir.as_deref() else {
                return Ok(Vec::new());
            };
            match read_back(dir, &wants)? {
                Some(records) => return Ok(records),
                None => continue,
            }
        }
        Ok(Vec::new())
    }

    /// What [`Self::read_from`] returns from memory, or where to read it on disk.
    fn plan_read(&self, from_seq: i64, max: usize) -> Plan {
        let state = self.lock();
        let begin = state.begin();
        let start = from_seq.max(begin);
        let index = match usize::try_from(start - begin) {
            Ok(index) if index < state.records.len() => index,
            _ => return Plan::Resident(Vec::new()),
        };
        let mut slots = state.records.range(index..).take(max).peekable();
        if slots.peek().is_some_and(|s| s.record.is_some()) {
            return Plan::Resident(slots.map_while(|s| s.record.clone()).collect());
        }
        let mut wants = Vec::new();
        let mut bytes = 0;
        for slot in slots {
            let Some((segment, pos)) = slot.place else {
                break;
            };
            if slot.record.is_some()
                || (!wants.is_empty() && bytes + slot.size > READ_BACK_MAX_BYTES)
            {
                break;
            }
            bytes += slot.size;
            wants.push(Want {
                seq: slot.sequence_number,
                segment,
                pos,
                size: slot.size,
            });
        }
        Plan::Disk(wants)
    }

    /// Bytes of the records held in memory (framed sizes), for tests and diagnostics.
    pub fn resident_bytes(&self) -> u64 {
        self.lock().resident_bytes
    }

    /// Bytes of the retained records (framed sizes).
    pub fn retained_bytes(&self) -> u64 {
        self.lock().retained_bytes
    }

    /// Next sequence number to be assigned (the last one + 1; 0 for a new partition).
    pub fn next_sequence_number(&self) -> i64 {
        self.lock().next_seq
    }

    /// First sequence number to deliver for a start position given by offset: the first
    /// retained record with offset `> offset` (`>=` if `inclusive`); for offset -1
    /// (exclusive) the first retained record. Returns [`Self::next_sequence_number`] if no
    /// retained record matches yet.
    pub fn seq_after_offset(&self, offset: i64, inclusive: bool) -> i64 {
        let state = self.lock();
        let index = state.records.partition_point(|r| {
            if inclusive {
                r.offset < offset
            } else {
                r.offset <= offset
            }
        });
        state.seq_at(index)
    }

    /// First sequence number to deliver for a start position given by enqueued time: the
    /// first retained record enqueued after `time_ms` (at or after if `inclusive`). Returns
    /// [`Self::next_sequence_number`] if no retained record matches yet.
    pub fn seq_after_enqueued_time(&self, time_ms: i64, inclusive: bool) -> i64 {
        let state = self.lock();
        let index = state.records.partition_point(|r| {
            if inclusive {
                r.enqueued_time_ms < time_ms
            } else {
                r.enqueued_time_ms <= time_ms
            }
        });
        state.seq_at(index)
    }

    /// Snapshot for `$management` partition properties.
    pub fn info(&self) -> PartitionInfo {
        let state = self.lock();
        let last_sequence_number = state.next_seq - 1;
        PartitionInfo {
            begin_sequence_number: state.records.front().map_or(-1, |r| r.sequence_number),
            last_sequence_number,
            last_offset: state.last_offset,
            last_enqueued_time_ms: state.last_time_ms,
            is_empty: state.records.is_empty(),
        }
    }

    /// Watch channel carrying [`Self::next_sequence_number`]; consumers await changes to
    /// learn of new events.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.notify.subscribe()
    }

    /// Drop records beyond retention: beyond [`StoreConfig::max_events`], or enqueued more
    /// than [`StoreConfig::max_age`] before `now_ms`. Deletes segment files whose records
    /// are all dropped (never the newest segment). Returns how many records were dropped.
    ///
    /// If a file cannot be deleted the records are still dropped from memory, the error is
    /// returned, and the file is retried on the next call.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, StoreError> {
        let mut state = self.lock();
        let state = &mut *state;
        let dropped = state.trim(
            &self.inner.config,
            age_cutoff(now_ms, self.inner.config.max_age),
        );
        let begin = state.begin();
        if let Some(disk) = state.disk.as_mut() {
            let removed = disk.delete_dead_segments(begin)?;
            if removed > 0 && self.inner.config.fsync {
                sync_dir(&disk.dir)?;
            }
        }
        Ok(dropped)
    }

    /// Flush and `fsync` the newest segment (whatever [`StoreConfig::fsync`] says); called
    /// on shutdown. A no-op for an in-memory or empty partition.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut state = self.lock();
        let Some(disk) = state.disk.as_mut() else {
            return Ok(());
        };
        let Some(segment) = disk.segments.back() else {
            return Ok(());
        };
        let sync_err = |source| StoreError::Sync {
            path: segment.path.clone(),
            source,
        };
        match disk.writer.as_mut() {
            Some(writer) => writer
                .flush()
                .and_then(|()| writer.get_ref().sync_all())
                .map_err(sync_err),
            // Closed after a roll (or not reopened since start): sync it all the same.
            None => File::open(&segment.path)
                .and_then(|f| f.sync_all())
                .map_err(sync_err),
        }
    }
}

/// Where [`PartitionLog::read_from`] finds what it returns.
enum Plan {
    /// Records in memory (possibly none).
    Resident(Vec<Arc<Record>>),
    /// Consecutive records to read back from disk, in order.
    Disk(Vec<Want>),
}

/// One record to read back: its sequence number, segment, byte position and framed size.
struct Want {
    seq: i64,
    segment: i64,
    pos: u64,
    size: u64,
}

/// Read `wants` back from their segments in `dir`. `Ok(None)` when a segment is gone
/// (retention deleted it meanwhile: plan again).
fn read_back(dir: &Path, wants: &[Want]) -> Result<Option<Vec<Arc<Record>>>, StoreError> {
    let mut records = Vec::with_capacity(wants.len());
    let mut open: Option<(i64, u64, BufReader<File>)> = None;
    for want in wants {
        let path = segment_path(dir, want.segment);
        let err = |why: String| StoreError::ReadBack {
            path: path.clone(),
            seq: want.seq,
            why,
        };
        let reusable =
            matches!(&open, Some((seg, at, _)) if *seg == want.segment && *at == want.pos);
        if !reusable {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(err(e.to_string())),
            };
            file.seek(SeekFrom::Start(want.pos))
                .map_err(|e| err(e.to_string()))?;
            open = Some((
                want.segment,
                want.pos,
                BufReader::with_capacity(IO_BUFFER, file),
            ));
        }
        let Some((_, at, reader)) = open.as_mut() else {
            return Err(err("segment not open".into()));
        };
        let (record, size) = match read_record(reader, want.size).map_err(|e| err(e.to_string()))? {
            Ok(r) => r,
            Err(damage) => {
                return Err(err(format!(
                    "{}: {}",
                    damage.kind.describe(),
                    damage.detail
                )))
            }
        };
        if record.sequence_number != want.seq || size != want.size {
            return Err(err(format!(
                "found sequence number {} ({size} bytes) where {} ({} bytes) was written",
                record.sequence_number, want.seq, want.size
            )));
        }
        *at += size;
        records.push(Arc::new(record));
    }
    Ok(Some(records))
}
