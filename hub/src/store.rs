//! The per-partition event log of the embedded hub.
//!
//! A [`PartitionLog`] stores the events of one Event Hubs partition: it assigns sequence
//! numbers (from 0, contiguous), offsets and enqueued times, serves reads by sequence number,
//! offset or enqueued time, applies retention and wakes consumers when events arrive. It is
//! payload-agnostic: the event body is an opaque [`Bytes`] (the client's encoded AMQP
//! message) and this module knows nothing of AMQP.
//!
//! Every retained record has a slot in memory (a `VecDeque` indexed by
//! `sequence_number - begin`: sequence number, offset, enqueued time, size and place on
//! disk, about 80 bytes), and retention is bounded by [`StoreConfig::max_events`],
//! [`StoreConfig::max_bytes`] and [`StoreConfig::max_age`]. A persistent partition writes
//! every record to segment files before it becomes visible, and reloads them on
//! [`PartitionLog::open`].
//!
//! # Memory
//!
//! The records themselves (payload and key) stay in memory only within
//! [`StoreConfig::memory_bytes`]: the newest records are resident, and once their framed
//! sizes add up to more than that, the oldest resident ones are evicted from memory. A
//! persistent partition reads evicted records back from their segment file on demand (a
//! consumer reading from far behind); an in-memory partition has nowhere to read them from,
//! so there the memory budget bounds retention itself (`max_bytes` is taken as at most
//! `memory_bytes`).
//!
//! # Offsets
//!
//! As in Event Hubs, an offset is the byte position of a record in the partition's logical
//! log: the sum of the framed sizes (see below) of all earlier records, including records
//! already dropped by retention. Offsets therefore survive restarts and retention, and a
//! record's offset is the same whichever segment file it sits in.
//!
//! # On-disk format (all integers little-endian)
//!
//! A partition directory holds segment files named `<first_seq>.seg`, where `<first_seq>`
//! is the sequence number of the segment's first record as 20 zero-padded decimal digits
//! (e.g. `00000000000000001000.seg`), so lexical and numeric order agree. Other files are
//! ignored. A segment is a plain concatenation of records, each framed as:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `u32`, the ASCII bytes `TPE1` |
//! | 4 | header length `u32` (`H`, 28 + key length) |
//! | 4 | CRC32 (IEEE, crc32fast) over everything after this field: header, payload length, payload |
//! | 8 | header: sequence number `i64` |
//! | 8 | header: offset `i64` |
//! | 8 | header: enqueued time `i64`, unix milliseconds |
//! | 4 | header: partition key length `u32`; `0xFFFF_FFFF` means no key |
//! | k | header: partition key, UTF-8 |
//! | 4 | payload length `u32` |
//! | n | payload |
//!
//! The framed size of a record is `12 + H + 4 + n`. Partition keys are limited to
//! [`MAX_KEY_LEN`] bytes, payloads to `u32::MAX` bytes.
//!
//! Appends go to the newest segment through a `BufWriter` that is flushed after every batch
//! (and `fsync`ed when [`StoreConfig::fsync`] is set). Once a segment reaches
//! [`StoreConfig::segment_bytes`] it is closed; the next batch starts a new segment (a batch
//! is never split across segments). If a write fails, the segment is cut back to its last
//! good length and nothing of the batch becomes visible.
//!
//! # Recovery
//!
//! [`PartitionLog::open`] reads the segments in order and checks every record: magic,
//! lengths, CRC, and that sequence numbers and offsets continue exactly from the previous
//! record (also across segments, and matching the file name). At the first bad record it
//! stops: that segment is truncated there and every later segment is deleted, so the log is
//! always a clean prefix of what was written. An incomplete record at the end of the newest
//! segment (a torn write) is the expected result of a crash; anything else (bad CRC, bad
//! magic, a sequence gap, damage in an older segment) is reported as corruption in
//! [`OpenReport::corrupt_segment`]. Either way [`OpenReport`] says how many bytes were cut,
//! and nothing cut is ever served.
//!
//! # Retention
//!
//! Records beyond [`StoreConfig::max_events`] or [`StoreConfig::max_bytes`] (their framed
//! sizes added up) are dropped at append time, and
//! [`PartitionLog::enforce_retention`] (called by the hub on a timer) also drops records
//! older than [`StoreConfig::max_age`]. Segment files whose records are all dropped are
//! deleted, except the newest segment: it holds the last record ever appended, which is how
//! sequence numbers and offsets continue after a restart even when everything has expired.
//! On open, retention is applied again against the current clock, so records dropped before
//! a restart stay dropped (unless the retention settings were raised).
//!
//! Enqueued times are taken from the system clock at append, but never go backwards within
//! a partition, so searches by enqueued time stay valid if the clock steps back.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

/// Record magic: the ASCII bytes `TPE1` read as a little-endian `u32`.
const MAGIC: u32 = u32::from_le_bytes(*b"TPE1");
/// Magic, header length and CRC.
const PREFIX_LEN: usize = 12;
/// Sequence number, offset, enqueued time and key length.
const HEADER_FIXED_LEN: usize = 28;
/// Key length value that marks "no partition key".
const NO_KEY: u32 = u32::MAX;
/// Largest partition key this store accepts, in bytes (Event Hubs itself allows 128 characters).
pub const MAX_KEY_LEN: usize = 64 * 1024;
/// File name extension of segment files.
const SEGMENT_EXT: &str = "seg";
/// Buffer size for reading and writing segments.
const IO_BUFFER: usize = 64 * 1024;

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
/// Most bytes one [`PartitionLog::read_from`] reads back from disk (at least one record).
const READ_BACK_MAX_BYTES: u64 = 4 * 1024 * 1024;

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

/// One stored event. `offset` is the byte position of the event in the partition's log
/// (like Event Hubs: opaque to clients, served as a decimal string); sequence numbers start
/// at 0 and are contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Sequence number within the partition, from 0, contiguous.
    pub sequence_number: i64,
    /// Byte position of the record in the partition's logical log (see the module docs).
    pub offset: i64,
    /// Unix milliseconds, assigned by the store at append; never decreases within a partition.
    pub enqueued_time_ms: i64,
    /// The partition key the event was sent with, if any.
    pub partition_key: Option<String>,
    /// The client's encoded AMQP message, opaque here.
    pub payload: Bytes,
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

/// What [`PartitionLog::open`] found and repaired. The hub should log it, loudly when
/// `corrupt_segment` is set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenReport {
    /// Records retained after loading (records beyond retention are read and checked, but
    /// not counted here).
    pub records: usize,
    /// Segment files in use after loading and repair.
    pub segments: usize,
    /// Bytes cut off: the truncated tail of the damaged segment plus the sizes of the later
    /// segments deleted because of it.
    pub truncated_bytes: u64,
    /// The segment where the log was cut because of corruption (bad magic, bad CRC, bad
    /// lengths, a sequence or offset gap, or an incomplete record in an older segment).
    /// `None` when nothing was cut or only a torn write at the end of the newest segment was.
    pub corrupt_segment: Option<PathBuf>,
    /// Later segments deleted because an earlier one was damaged.
    pub deleted_segments: Vec<PathBuf>,
    /// What was wrong, with path and byte position, when anything was cut.
    pub problem: Option<String>,
}

/// Errors of the partition store. Each names the step and the path, and what to check.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The partition directory could not be created.
    #[error("cannot create partition dir {path}: {source}; check permissions or --data-dir")]
    CreateDir {
        /// The partition directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The partition directory could not be listed.
    #[error("cannot list partition dir {path}: {source}; check permissions or --data-dir")]
    ReadDir {
        /// The partition directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A segment file could not be read during recovery.
    #[error("cannot read segment {path}: {source}; check the disk and file permissions")]
    ReadSegment {
        /// The segment file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A damaged segment could not be cut back to its last good record.
    #[error(
        "cannot truncate segment {path} to {len} bytes: {source}; check permissions, or move \
         the file out of the data dir"
    )]
    Truncate {
        /// The segment file.
        path: PathBuf,
        /// The length it should have been cut to.
        len: u64,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A segment file could not be deleted (retention or repair).
    #[error("cannot delete segment {path}: {source}; check permissions on the data dir")]
    RemoveSegment {
        /// The segment file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A new segment file could not be created.
    #[error(
        "cannot create segment {path}: {source}; check that the data dir exists, is writable \
         and has free space (the batch was not stored)"
    )]
    CreateSegment {
        /// The segment file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// An existing segment could not be reopened for appending.
    #[error(
        "cannot reopen segment {path} for appending: {source}; check permissions on the data \
         dir (the batch was not stored)"
    )]
    ReopenSegment {
        /// The segment file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// Writing a batch failed; none of it became visible.
    #[error(
        "cannot write to segment {path}: {source}; check free space on the data dir (the \
         batch was not stored)"
    )]
    Write {
        /// The segment file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// Flushing or syncing a segment (or the directory) failed.
    #[error("cannot sync {path} to disk: {source}; check the disk")]
    Sync {
        /// The segment file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A record evicted from memory could not be read back from its segment.
    #[error(
        "cannot read back sequence number {seq} from segment {path}: {why}; check the disk \
         and that nothing else writes to the data dir"
    )]
    ReadBack {
        /// The segment file.
        path: PathBuf,
        /// The record's sequence number.
        seq: i64,
        /// What went wrong.
        why: String,
    },
    /// An event is too large for the record format; nothing of the batch was stored.
    #[error("cannot store event: its {what} is {len} bytes, the limit is {max} bytes")]
    TooLarge {
        /// Which part is too large (`partition key` or `payload`).
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

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

/// One retained record: where it is, and its body while it is within the memory budget.
struct Slot {
    sequence_number: i64,
    offset: i64,
    enqueued_time_ms: i64,
    /// Framed size in bytes: what the record costs against `max_bytes` and `memory_bytes`.
    size: u64,
    /// The segment (by its first sequence number) and byte position holding the record;
    /// `None` in an in-memory partition.
    place: Option<(i64, u64)>,
    /// The record while resident; `None` once evicted (then read back from `place`).
    record: Option<Arc<Record>>,
}

/// The mutable part of a partition, behind the mutex.
struct State {
    /// Retained records; `records[i].sequence_number == begin + i`.
    records: VecDeque<Slot>,
    /// Sum of the framed sizes of the retained records.
    retained_bytes: u64,
    /// Sum of the framed sizes of the resident records.
    resident_bytes: u64,
    /// Sequence number of the oldest resident record: every slot from there on is resident.
    resident_from: i64,
    /// Sequence number of the next record.
    next_seq: i64,
    /// Offset of the next record.
    next_offset: i64,
    /// Offset of the last record ever appended, -1 if none.
    last_offset: i64,
    /// Enqueued time of the last record ever appended, 0 if none.
    last_time_ms: i64,
    /// Segment files; `None` for an in-memory partition.
    disk: Option<Disk>,
}

struct Disk {
    dir: PathBuf,
    /// Segment files in order; the last one holds the newest record.
    segments: VecDeque<Segment>,
    /// Writer on `segments.back()` while it is open for appending.
    writer: Option<BufWriter<File>>,
}

/// A segment file holding at least one record.
struct Segment {
    path: PathBuf,
    first_seq: i64,
    last_seq: i64,
    /// Length of the good records in the file.
    len: u64,
    /// A failed write may have left bytes beyond `len`; cut them before writing again.
    dirty: bool,
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
        let files = list_segments(dir)?;
        let mut report = OpenReport::default();
        let mut state = State::empty(Some(Disk {
            dir: dir.to_path_buf(),
            segments: VecDeque::new(),
            writer: None,
        }));
        let cutoff = age_cutoff(now_ms(), config.max_age);
        let mut changed_dir = false;

        for (i, (first_seq, path)) in files.iter().enumerate() {
            let is_last = i + 1 == files.len();
            let expect = load_expectation(&state);
            let segment = *first_seq;
            let mut load = |record: Record, pos: u64| {
                state.load(record, (segment, pos), &config, cutoff);
            };
            let scan = scan_segment(path, *first_seq, expect, &mut load)?;
            let good = scan.good;
            let damaged = scan.damage.is_some();
            if let Some(damage) = scan.damage {
                truncate_file(path, good.len, config.fsync)?;
                let cut = scan.file_len - good.len;
                report.truncated_bytes += cut;
                if !(is_last && damage.kind == DamageKind::Torn) {
                    report.corrupt_segment = Some(path.clone());
                }
                for (_, later) in &files[i + 1..] {
                    let size = fs::metadata(later).map_or(0, |m| m.len());
                    remove_file(later)?;
                    report.truncated_bytes += size;
                    report.deleted_segments.push(later.clone());
                }
                let problem = format!(
                    "{} at byte {} of {}: {}; cut {cut} bytes there and deleted {} later segment(s)",
                    damage.kind.describe(),
                    good.len,
                    path.display(),
                    damage.detail,
                    report.deleted_segments.len(),
                );
                tracing::warn!(%problem, "partition log repaired");
                report.problem = Some(problem);
                changed_dir = true;
            }
            match good.first_last {
                Some((first, last)) => {
                    if let Some(disk) = state.disk.as_mut() {
                        disk.segments.push_back(Segment {
                            path: path.clone(),
                            first_seq: first,
                            last_seq: last,
                            len: good.len,
                            dirty: false,
                        });
                    }
                }
                None => {
                    // No record left (an empty file, or damage in the first record).
                    remove_file(path)?;
                    changed_dir = true;
                }
            }
            if damaged {
                break;
            }
        }
        if changed_dir && config.fsync {
            sync_dir(dir)?;
        }
        let begin = state.begin();
        if let Some(disk) = state.disk.as_mut() {
            if let Err(e) = disk.delete_dead_segments(begin) {
                tracing::warn!(error = %e, "partition log: cannot apply retention at open; will retry");
            }
            report.segments = disk.segments.len();
        }
        report.records = state.records.len();
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

    fn lock(&self) -> MutexGuard<'_, State> {
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

impl State {
    fn empty(disk: Option<Disk>) -> Self {
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
    fn begin(&self) -> i64 {
        self.records
            .front()
            .map_or(self.next_seq, |r| r.sequence_number)
    }

    fn seq_at(&self, index: usize) -> i64 {
        self.records
            .get(index)
            .map_or(self.next_seq, |r| r.sequence_number)
    }

    /// Add a record read from disk at `place`, keeping memory within retention and budget.
    fn load(&mut self, record: Record, place: (i64, u64), config: &StoreConfig, cutoff_ms: i64) {
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
    fn push(&mut self, record: Arc<Record>, size: u64, place: Option<(i64, u64)>) {
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
    fn trim(&mut self, config: &StoreConfig, cutoff_ms: i64) -> usize {
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
    fn evict(&mut self, config: &StoreConfig) {
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

impl Disk {
    /// Write encoded frames for records `first_seq..=last_seq` and flush (and fsync).
    /// Returns where the first record went: the segment's first sequence number and the
    /// byte position in it. On error the segment is cut back to its previous length (or
    /// removed if it was new).
    fn write_batch(
        &mut self,
        frames: &[u8],
        first_seq: i64,
        last_seq: i64,
        config: &StoreConfig,
    ) -> Result<(i64, u64), StoreError> {
        let is_new = self.prepare_writer(first_seq, config)?;
        let (Some(writer), Some(segment)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            // prepare_writer always leaves both set; treat anything else as a failed write.
            return Err(StoreError::Write {
                path: segment_path(&self.dir, first_seq),
                source: io::Error::other("no segment open for appending"),
            });
        };
        let result = writer
            .write_all(frames)
            .and_then(|()| writer.flush())
            .and_then(|()| {
                if config.fsync {
                    writer.get_ref().sync_data()
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                let place = (segment.first_seq, segment.len);
                segment.len += frames.len() as u64;
                segment.last_seq = last_seq;
                if segment.len >= config.segment_bytes {
                    // Roll: the next batch starts a new segment.
                    self.writer = None;
                }
                Ok(place)
            }
            Err(source) => {
                let path = segment.path.clone();
                self.rollback(is_new);
                Err(StoreError::Write { path, source })
            }
        }
    }

    /// Make `writer` point at the segment to append to, creating one named `first_seq` if
    /// needed. Returns whether the segment is new (registered but not yet holding records).
    fn prepare_writer(&mut self, first_seq: i64, config: &StoreConfig) -> Result<bool, StoreError> {
        if self.writer.is_some() {
            return Ok(false);
        }
        if let Some(segment) = self.segments.back_mut() {
            if segment.dirty || segment.len < config.segment_bytes {
                // Reopen: after a restart, or to cut what a failed write left behind.
                let mut file =
                    OpenOptions::new()
                        .write(true)
                        .open(&segment.path)
                        .map_err(|source| StoreError::ReopenSegment {
                            path: segment.path.clone(),
                            source,
                        })?;
                file.set_len(segment.len)
                    .and_then(|()| file.seek(SeekFrom::Start(segment.len)).map(drop))
                    .map_err(|source| StoreError::Truncate {
                        path: segment.path.clone(),
                        len: segment.len,
                        source,
                    })?;
                segment.dirty = false;
                if segment.len < config.segment_bytes {
                    self.writer = Some(BufWriter::with_capacity(IO_BUFFER, file));
                    return Ok(false);
                }
            }
        }
        let path = segment_path(&self.dir, first_seq);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| StoreError::CreateSegment {
                path: path.clone(),
                source,
            })?;
        if config.fsync {
            if let Err(e) = sync_dir(&self.dir) {
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        }
        self.writer = Some(BufWriter::with_capacity(IO_BUFFER, file));
        self.segments.push_back(Segment {
            path,
            first_seq,
            last_seq: first_seq - 1,
            len: 0,
            dirty: false,
        });
        Ok(true)
    }

    /// Undo a failed write: drop buffered bytes, cut the file back to its last good length
    /// (or remove a segment that was just created). If that fails too, the segment is
    /// marked dirty and cut before the next write.
    fn rollback(&mut self, is_new: bool) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        // into_parts: drop the unwritten buffer without the flush a plain drop would do.
        let (mut file, _unwritten) = writer.into_parts();
        let Some(segment) = self.segments.back_mut() else {
            return;
        };
        if is_new {
            drop(file);
            let path = segment.path.clone();
            self.segments.pop_back();
            // If this fails, the next segment creation truncates the file anyway, and
            // recovery drops a damaged newest segment.
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove segment after failed write");
            }
            return;
        }
        let len = segment.len;
        match file
            .set_len(len)
            .and_then(|()| file.seek(SeekFrom::Start(len)).map(drop))
        {
            Ok(()) => self.writer = Some(BufWriter::with_capacity(IO_BUFFER, file)),
            Err(e) => {
                tracing::warn!(path = %segment.path.display(), error = %e, "cannot cut segment after failed write; will retry before the next write");
                segment.dirty = true;
            }
        }
    }

    /// Delete segments (never the newest) whose records are all before the first retained
    /// record. Returns how many were deleted.
    fn delete_dead_segments(&mut self, begin: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front() else {
                break;
            };
            if front.last_seq >= begin {
                break;
            }
            remove_file(&front.path)?;
            tracing::debug!(path = %front.path.display(), first_seq = front.first_seq, "deleted expired segment");
            self.segments.pop_front();
            removed += 1;
        }
        Ok(removed)
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

/// What the next loaded record must continue from: `(sequence number, offset)`.
fn load_expectation(state: &State) -> Option<(i64, i64)> {
    state
        .disk
        .as_ref()
        .filter(|d| !d.segments.is_empty())
        .map(|_| (state.next_seq, state.next_offset))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DamageKind {
    /// The file ends inside a record.
    Torn,
    /// A record fails its checks.
    Corrupt,
}

impl DamageKind {
    fn describe(self) -> &'static str {
        match self {
            Self::Torn => "incomplete record",
            Self::Corrupt => "corrupt record",
        }
    }
}

struct Damage {
    kind: DamageKind,
    detail: String,
}

/// The valid prefix of a segment.
struct Good {
    /// Bytes of valid records.
    len: u64,
    /// First and last sequence number of the valid records.
    first_last: Option<(i64, i64)>,
}

struct Scan {
    file_len: u64,
    good: Good,
    damage: Option<Damage>,
}

/// Read and check every record of a segment, handing valid ones to `on_record`. Stops at
/// the first damaged record. `expect` is the `(seq, offset)` the first record must have
/// (`None` for the first segment, whose first record only has to match the file name).
fn scan_segment(
    path: &Path,
    name_seq: i64,
    expect: Option<(i64, i64)>,
    on_record: &mut dyn FnMut(Record, u64),
) -> Result<Scan, StoreError> {
    let read_err = |source| StoreError::ReadSegment {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let file_len = file.metadata().map_err(read_err)?.len();
    let mut reader = BufReader::with_capacity(IO_BUFFER, file);
    let mut good = Good {
        len: 0,
        first_last: None,
    };
    let mut expect_seq = expect.map_or(name_seq, |(seq, _)| seq);
    let mut expect_offset = expect.map(|(_, offset)| offset);
    if expect.is_some_and(|(seq, _)| seq != name_seq) {
        let damage = Damage {
            kind: DamageKind::Corrupt,
            detail: format!(
                "segment name says it starts at sequence number {name_seq}, but the previous \
                 segment ends at {}",
                expect_seq - 1
            ),
        };
        return Ok(Scan {
            file_len,
            good,
            damage: Some(damage),
        });
    }
    loop {
        let remaining = file_len - good.len;
        if remaining == 0 {
            return Ok(Scan {
                file_len,
                good,
                damage: None,
            });
        }
        match read_record(&mut reader, remaining).map_err(read_err)? {
            Err(damage) => {
                return Ok(Scan {
                    file_len,
                    good,
                    damage: Some(damage),
                })
            }
            Ok((record, size)) => {
                let mut problem = None;
                if record.sequence_number != expect_seq {
                    problem = Some(format!(
                        "sequence number {} where {expect_seq} was expected",
                        record.sequence_number
                    ));
                } else if expect_offset.is_some_and(|o| o != record.offset) || record.offset < 0 {
                    problem = Some(format!(
                        "offset {} where {} was expected",
                        record.offset,
                        expect_offset.unwrap_or(0)
                    ));
                }
                if let Some(detail) = problem {
                    return Ok(Scan {
                        file_len,
                        good,
                        damage: Some(Damage {
                            kind: DamageKind::Corrupt,
                            detail,
                        }),
                    });
                }
                expect_seq = record.sequence_number + 1;
                expect_offset = Some(record.offset.saturating_add(size as i64));
                let pos = good.len;
                good.len += size;
                good.first_last = Some((
                    good.first_last.map_or(record.sequence_number, |(f, _)| f),
                    record.sequence_number,
                ));
                on_record(record, pos);
            }
        }
    }
}

/// Read one record with `remaining` bytes left in the file. The outer error is an I/O
/// failure; the inner one describes a damaged record. Returns the record and its framed size.
fn read_record(
    reader: &mut impl Read,
    remaining: u64,
) -> io::Result<Result<(Record, u64), Damage>> {
    let torn = |detail: String| {
        Ok(Err(Damage {
            kind: DamageKind::Torn,
            detail,
        }))
    };
    let corrupt = |detail: String| {
        Ok(Err(Damage {
            kind: DamageKind::Corrupt,
            detail,
        }))
    };
    if remaining < PREFIX_LEN as u64 {
        return torn(format!(
            "{remaining} bytes left, a record needs at least {PREFIX_LEN}"
        ));
    }
    let mut prefix = [0u8; PREFIX_LEN];
    if !read_full(reader, &mut prefix)? {
        return torn("file ended while reading".into());
    }
    let magic = le_u32(&prefix[0..4]);
    let header_len = le_u32(&prefix[4..8]) as usize;
    let crc = le_u32(&prefix[8..12]);
    if magic != MAGIC {
        return corrupt(format!("bad magic {magic:#010x}"));
    }
    if !(HEADER_FIXED_LEN..=HEADER_FIXED_LEN + MAX_KEY_LEN).contains(&header_len) {
        return corrupt(format!("bad header length {header_len}"));
    }
    let needed = (PREFIX_LEN + header_len + 4) as u64;
    if needed > remaining {
        return torn(format!("header needs {needed} bytes, {remaining} left"));
    }
    let mut header = vec![0u8; header_len + 4];
    if !read_full(reader, &mut header)? {
        return torn("file ended while reading".into());
    }
    let payload_len = le_u32(&header[header_len..]) as u64;
    let size = needed + payload_len;
    if size > remaining {
        return torn(format!("record needs {size} bytes, {remaining} left"));
    }
    let mut payload = vec![0u8; payload_len as usize];
    if !read_full(reader, &mut payload)? {
        return torn("file ended while reading".into());
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header);
    hasher.update(&payload);
    let actual = hasher.finalize();
    if actual != crc {
        return corrupt(format!(
            "CRC {actual:#010x} does not match stored {crc:#010x}"
        ));
    }
    let sequence_number = le_i64(&header[0..8]);
    let offset = le_i64(&header[8..16]);
    let enqueued_time_ms = le_i64(&header[16..24]);
    let key_len = le_u32(&header[24..28]);
    let partition_key = if key_len == NO_KEY {
        if header_len != HEADER_FIXED_LEN {
            return corrupt(format!(
                "header length {header_len} for a record without key"
            ));
        }
        None
    } else {
        if header_len != HEADER_FIXED_LEN + key_len as usize {
            return corrupt(format!(
                "header length {header_len} for a key of {key_len} bytes"
            ));
        }
        match std::str::from_utf8(&header[HEADER_FIXED_LEN..header_len]) {
            Ok(key) => Some(key.to_owned()),
            Err(_) => return corrupt("partition key is not UTF-8".into()),
        }
    };
    if sequence_number < 0 {
        return corrupt(format!("negative sequence number {sequence_number}"));
    }
    let record = Record {
        sequence_number,
        offset,
        enqueued_time_ms,
        partition_key,
        payload: Bytes::from(payload),
    };
    Ok(Ok((record, size)))
}

/// `read_exact` that reports a short file as `false` instead of an error.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

fn le_i64(bytes: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    i64::from_le_bytes(b)
}

/// Framed size of a record on disk, which is also how far it advances the offset.
fn framed_len(record: &Record) -> u64 {
    let key_len = record.partition_key.as_ref().map_or(0, String::len);
    (PREFIX_LEN + HEADER_FIXED_LEN + key_len + 4 + record.payload.len()) as u64
}

/// Append the frame of `record` to `buf`; returns its size. Lengths are checked by `append`.
fn encode_record(buf: &mut Vec<u8>, record: &Record) -> u64 {
    let key = record.partition_key.as_deref().map(str::as_bytes);
    let key_len = key.map_or(0, <[u8]>::len);
    let start = buf.len();
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&((HEADER_FIXED_LEN + key_len) as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]); // CRC, filled in below
    let body = buf.len();
    buf.extend_from_slice(&record.sequence_number.to_le_bytes());
    buf.extend_from_slice(&record.offset.to_le_bytes());
    buf.extend_from_slice(&record.enqueued_time_ms.to_le_bytes());
    buf.extend_from_slice(&key.map_or(NO_KEY, |k| k.len() as u32).to_le_bytes());
    buf.extend_from_slice(key.unwrap_or_default());
    buf.extend_from_slice(&(record.payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&record.payload);
    let crc = crc32fast::hash(&buf[body..]);
    buf[body - 4..body].copy_from_slice(&crc.to_le_bytes());
    (buf.len() - start) as u64
}

fn segment_path(dir: &Path, first_seq: i64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{SEGMENT_EXT}"))
}

/// Segment files in `dir`, sorted by first sequence number. Other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<(i64, PathBuf)>, StoreError> {
    let read_err = |source| StoreError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let seq = (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
            .then(|| stem.parse::<i64>().ok())
            .flatten();
        match seq {
            Some(seq) if path.is_file() => segments.push((seq, path)),
            _ => tracing::warn!(path = %path.display(), "ignoring file that is not a segment"),
        }
    }
    segments.sort();
    Ok(segments)
}

fn truncate_file(path: &Path, len: u64, fsync: bool) -> Result<(), StoreError> {
    let truncate_err = |source| StoreError::Truncate {
        path: path.to_path_buf(),
        len,
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(truncate_err)?;
    file.set_len(len).map_err(truncate_err)?;
    if fsync {
        file.sync_all().map_err(|source| StoreError::Sync {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::RemoveSegment {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Make file creations and deletions in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Sync {
            path: dir.to_path_buf(),
            source,
        })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Records enqueued before the returned time are older than `max_age` at `now_ms`.
fn age_cutoff(now_ms: i64, max_age: Duration) -> i64 {
    let age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(age)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Instant;

    const MIB: u64 = 1024 * 1024;

    fn config(max_events: usize, segment_bytes: u64) -> StoreConfig {
        StoreConfig {
            max_events,
            segment_bytes,
            ..StoreConfig::default()
        }
    }

    /// `n` events with keys `k0, k1, ...` (every third without key) and distinct payloads.
    fn batch(tag: &str, n: usize) -> Vec<(Option<String>, Bytes)> {
        (0..n)
            .map(|i| {
                let key = (i % 3 != 2).then(|| format!("k{i}"));
                (key, Bytes::from(format!("{tag}-payload-{i}")))
            })
            .collect()
    }

    fn all(log: &PartitionLog) -> Vec<Arc<Record>> {
        let mut out: Vec<Arc<Record>> = Vec::new();
        loop {
            let from = out.last().map_or(0, |r| r.sequence_number + 1);
            let more = log.read_from(from, usize::MAX).unwrap();
            if more.is_empty() {
                return out;
            }
            out.extend(more);
        }
    }

    fn seqs(records: &[Arc<Record>]) -> Vec<i64> {
        records.iter().map(|r| r.sequence_number).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    /// Flip one byte of a file.
    fn flip_byte(path: &Path, pos: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[pos as usize] ^= 0xFF;
        fs::write(path, bytes).unwrap();
    }

    /// Appends one event per batch, so each batch is its own segment when segment_bytes is tiny.
    fn append_singles(log: &PartitionLog, n: usize) {
        for i in 0..n {
            log.append(vec![(None, Bytes::from(format!("event-{i}")))])
                .unwrap();
        }
    }

    #[test]
    fn append_then_read_returns_records_in_order() {
        let log = PartitionLog::in_memory(StoreConfig::default());
        let stored = log.append(batch("a", 5)).unwrap();
        assert_eq!(seqs(&stored), vec![0, 1, 2, 3, 4]);
        assert_eq!(stored[0].partition_key.as_deref(), Some("k0"));
        assert_eq!(stored[2].partition_key, None);
        assert_eq!(stored[4].payload, Bytes::from("a-payload-4"));
        let read = log.read_from(2, 2).unwrap();
        assert_eq!(seqs(&read), vec![2, 3]);
        assert_eq!(read[0], stored[2]);
        assert!(
            log.read_from(5, 10).unwrap().is_empty(),
            "nothing at the end yet"
        );
        assert_eq!(log.next_sequence_number(), 5);
    }

    #[test]
    fn sequence_numbers_and_offsets_are_contiguous_byte_positions() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        let memory = PartitionLog::in_memory(StoreConfig::default());
        for tag in ["x", "y", "z"] {
            log.append(batch(tag, 4)).unwrap();
            memory.append(batch(tag, 4)).unwrap();
        }
        let records = all(&log);
        assert_eq!(seqs(&records), (0..12).collect::<Vec<_>>());
        assert_eq!(records[0].offset, 0);
        for pair in records.windows(2) {
            let key = pair[0].partition_key.as_ref().map_or(0, String::len);
            let framed = 12 + 28 + key + 4 + pair[0].payload.len();
            assert_eq!(pair[1].offset - pair[0].offset, framed as i64);
        }
        // The single segment is exactly the logical log, so offsets are file positions here.
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 1);
        let last = records.last().unwrap();
        assert_eq!(
            file_len(&files[0]) as i64,
            last.offset + framed_len(last) as i64
        );
        // In-memory partitions assign the same offsets.
        let mem_offsets: Vec<i64> = all(&memory).iter().map(|r| r.offset).collect();
        let disk_offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(mem_offsets, disk_offsets);
    }

    #[test]
    fn batch_gets_one_enqueued_time_from_the_clock() {
        let log = PartitionLog::in_memory(StoreConfig::default());
        let before = now_ms();
        let stored = log.append(batch("t", 3)).unwrap();
        let after = now_ms();
        assert!(stored
            .iter()
            .all(|r| r.enqueued_time_ms == stored[0].enqueued_time_ms));
        assert!((before..=after).contains(&stored[0].enqueued_time_ms));
    }

    #[test]
    fn enqueued_time_never_goes_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        let ahead = now_ms() + 3_600_000;
        // As if the last record was enqueued before the clock stepped back an hour.
        log.lock().last_time_ms = ahead;
        let stored = log.append(batch("t", 2)).unwrap();
        assert_eq!(stored[0].enqueued_time_ms, ahead);
        drop(log);
        let (log, _) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(
            log.append(batch("u", 1)).unwrap()[0].enqueued_time_ms,
            ahead
        );
    }

    #[test]
    fn empty_batch_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        let mut rx = log.subscribe();
        assert!(log.append(Vec::new()).unwrap().is_empty());
        assert_eq!(log.next_sequence_number(), 0);
        assert!(segment_files(dir.path()).is_empty());
        assert!(!rx.has_changed().unwrap());
        let _ = rx.borrow_and_update();
    }

    #[test]
    fn records_on_disk_follow_the_documented_format() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        let stored = log
            .append(vec![(Some("key".into()), Bytes::from_static(b"body"))])
            .unwrap();
        let bytes = fs::read(&segment_files(dir.path())[0]).unwrap();
        assert_eq!(&bytes[0..4], b"TPE1");
        assert_eq!(le_u32(&bytes[4..8]), 28 + 3);
        assert_eq!(le_u32(&bytes[8..12]), crc32fast::hash(&bytes[12..]));
        assert_eq!(le_i64(&bytes[12..20]), 0);
        assert_eq!(le_i64(&bytes[20..28]), 0);
        assert_eq!(le_i64(&bytes[28..36]), stored[0].enqueued_time_ms);
        assert_eq!(le_u32(&bytes[36..40]), 3);
        assert_eq!(&bytes[40..43], b"key");
        assert_eq!(le_u32(&bytes[43..47]), 4);
        assert_eq!(&bytes[47..], b"body");
        assert_eq!(
            segment_files(dir.path())[0].file_name().unwrap(),
            "00000000000000000000.seg"
        );
    }

    #[test]
    fn reopen_keeps_sequence_offset_time_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let (log, report) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(report, OpenReport::default());
        log.append(batch("a", 3)).unwrap();
        log.append(batch("b", 2)).unwrap();
        let before = all(&log);
        let info = log.info();
        log.flush().unwrap();
        drop(log);

        let (log, report) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(report.records, 5);
        assert_eq!(report.segments, 1);
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(report.corrupt_segment, None);
        assert_eq!(report.problem, None);
        assert_eq!(all(&log), before);
        assert_eq!(log.info(), info);
        assert_eq!(log.next_sequence_number(), 5);

        let next = log.append(batch("c", 1)).unwrap();
        let last = before.last().unwrap();
        assert_eq!(next[0].sequence_number, 5);
        assert_eq!(next[0].offset, last.offset + framed_len(last) as i64);
        assert!(next[0].enqueued_time_ms >= last.enqueued_time_ms);
        assert_eq!(
            segment_files(dir.path()).len(),
            1,
            "appends continue in the same segment"
        );
    }

    #[test]
    fn torn_tail_is_cut_reported_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        let stored = log.append(batch("a", 3)).unwrap();
        drop(log);
        let file = &segment_files(dir.path())[0];
        let full = file_len(file);
        let torn_at = stored[2].offset as u64 + 7; // inside the third record's header
        OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(torn_at)
            .unwrap();

        let (log, report) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(report.records, 2);
        assert_eq!(report.truncated_bytes, 7);
        assert_eq!(
            report.corrupt_segment, None,
            "a torn write at the end is not corruption"
        );
        assert!(report
            .problem
            .as_deref()
            .unwrap()
            .contains("incomplete record"));
        assert_eq!(
            file_len(file),
            stored[2].offset as u64,
            "file cut at the last good record"
        );
        assert_eq!(seqs(&all(&log)), vec![0, 1]);
        assert!(full > file_len(file));

        let next = log.append(batch("b", 1)).unwrap();
        assert_eq!(next[0].sequence_number, 2);
        assert_eq!(next[0].offset, stored[2].offset);
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(seqs(&all(&log)), vec![0, 1, 2]);
        assert_eq!(all(&log)[2].payload, Bytes::from("b-payload-0"));
    }

    #[test]
    fn torn_payload_and_zeroed_tail_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        let stored = log.append(batch("a", 2)).unwrap();
        drop(log);
        let file = &segment_files(dir.path())[0];
        // Cut inside the last payload.
        let len = file_len(file);
        OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let (log, report) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(seqs(&all(&log)), vec![0]);
        assert_eq!(report.truncated_bytes, len - 2 - stored[1].offset as u64);
        drop(log);
        // Zeros after the last record (file extended but never written, e.g. after a power
        // loss) fail the magic check: cut and reported as corruption.
        let mut f = OpenOptions::new().append(true).open(file).unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        drop(f);
        let (log, report) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(seqs(&all(&log)), vec![0]);
        assert_eq!(report.truncated_bytes, 100);
        assert_eq!(report.corrupt_segment.as_ref(), Some(file));
        assert!(report.problem.as_deref().unwrap().contains("bad magic"));
    }

    #[test]
    fn bad_crc_in_the_middle_of_a_segment_cuts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        let stored = log.append(batch("a", 5)).unwrap();
        drop(log);
        let file = &segment_files(dir.path())[0];
        let full = file_len(file);
        flip_byte(file, stored[2].offset as u64 + 50); // in record 2's payload

        let (log, report) = PartitionLog::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(seqs(&all(&log)), vec![0, 1]);
        assert_eq!(report.records, 2);
        assert_eq!(report.corrupt_segment.as_ref(), Some(file));
        assert_eq!(report.truncated_bytes, full - stored[2].offset as u64);
        assert!(report.problem.as_deref().unwrap().contains("CRC"));
        let next = log.append(batch("b", 1)).unwrap();
        assert_eq!(
            (next[0].sequence_number, next[0].offset),
            (2, stored[2].offset)
        );
    }

    #[test]
    fn corruption_in_an_older_segment_cuts_there_and_deletes_later_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1000, 1); // every batch rolls
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        for tag in ["a", "b", "c", "d"] {
            log.append(batch(tag, 3)).unwrap();
        }
        let records = all(&log);
        drop(log);
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 4);
        let sizes: Vec<u64> = files.iter().map(|f| file_len(f)).collect();
        // Damage record 4 (the second of segment 1, which starts at seq 3).
        let pos_in_file = (records[4].offset - records[3].offset) as u64;
        flip_byte(&files[1], pos_in_file + 9); // the CRC field

        let (log, report) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        assert_eq!(seqs(&all(&log)), vec![0, 1, 2, 3]);
        assert_eq!(report.corrupt_segment.as_ref(), Some(&files[1]));
        assert_eq!(report.deleted_segments, files[2..].to_vec());
        assert_eq!(report.segments, 2);
        assert_eq!(
            report.truncated_bytes,
            sizes[1] - pos_in_file + sizes[2] + sizes[3]
        );
        assert_eq!(segment_files(dir.path()), files[..2].to_vec());
        assert_eq!(file_len(&files[1]), pos_in_file);
        let next = log.append(batch("e", 1)).unwrap();
        assert_eq!(
            (next[0].sequence_number, next[0].offset),
            (4, records[4].offset)
        );
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(seqs(&all(&log)), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn missing_segment_is_a_sequence_gap() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1000, 1);
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        append_singles(&log, 4);
        drop(log);
        let files = segment_files(dir.path());
        fs::remove_file(&files[1]).unwrap();

        let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!(seqs(&all(&log)), vec![0]);
        assert_eq!(report.corrupt_segment.as_ref(), Some(&files[2]));
        assert_eq!(report.deleted_segments, vec![files[3].clone()]);
        assert!(report
            .problem
            .as_deref()
            .unwrap()
            .contains("sequence number 2"));
        assert_eq!(segment_files(dir.path()), vec![files[0].clone()]);
        assert_eq!(log.next_sequence_number(), 1);
    }

    #[test]
    fn segment_named_wrongly_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1000, 1);
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        append_singles(&log, 2);
        drop(log);
        let files = segment_files(dir.path());
        let renamed = segment_path(dir.path(), 7);
        fs::rename(&files[1], &renamed).unwrap();
        let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!(seqs(&all(&log)), vec![0]);
        assert_eq!(report.corrupt_segment, Some(renamed.clone()));
        assert!(
            !renamed.exists(),
            "a segment with no good record left is removed"
        );
    }

    #[test]
    fn segments_roll_at_size_and_reopen_continues() {
        let dir = tempfile::tempdir().unwrap();
        let one = framed_len(&Record {
            sequence_number: 0,
            offset: 0,
            enqueued_time_ms: 0,
            partition_key: None,
            payload: Bytes::from("event-0"),
        });
        let cfg = config(1000, one * 3); // three single events per segment
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        append_singles(&log, 7);
        let names: Vec<String> = segment_files(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![
                "00000000000000000000.seg",
                "00000000000000000003.seg",
                "00000000000000000006.seg"
            ]
        );
        // A batch is never split, even when larger than a segment.
        log.append(batch("big", 5)).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 3);
        let before = all(&log);
        drop(log);

        let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!(report.segments, 3);
        assert_eq!(report.records, 12);
        assert_eq!(all(&log), before);
        // The last segment is full, so the next batch starts a new one at seq 12.
        let next = log.append(batch("n", 1)).unwrap();
        assert_eq!(next[0].sequence_number, 12);
        let last = before.last().unwrap();
        assert_eq!(next[0].offset, last.offset + framed_len(last) as i64);
        assert!(segment_path(dir.path(), 12).exists());
    }

    #[test]
    fn retention_by_count_drops_oldest_and_deletes_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(5, 1); // every batch is a segment
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        for tag in ["a", "b", "c"] {
            log.append(batch(tag, 3)).unwrap(); // segments at 0, 3, 6
        }
        // Count retention applies at append: seqs 4..=8 remain.
        assert_eq!(seqs(&all(&log)), vec![4, 5, 6, 7, 8]);
        assert_eq!(log.info().begin_sequence_number, 4);
        assert_eq!(
            seqs(&log.read_from(0, 2).unwrap()),
            vec![4, 5],
            "reads before begin start at begin"
        );
        assert_eq!(
            segment_files(dir.path()),
            vec![segment_path(dir.path(), 3), segment_path(dir.path(), 6)],
            "segment 0 held only dropped records"
        );
        assert_eq!(log.enforce_retention(now_ms()).unwrap(), 0);
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!(report.records, 5);
        assert_eq!(seqs(&all(&log)), vec![4, 5, 6, 7, 8]);
        // A smaller limit at open keeps only the newest.
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), config(2, 1)).unwrap();
        assert_eq!(report.records, 2);
        assert_eq!(seqs(&all(&log)), vec![7, 8]);
        assert_eq!(segment_files(dir.path()), vec![segment_path(dir.path(), 6)]);
    }

    #[test]
    fn retention_by_age_drops_old_records_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            max_age: Duration::from_secs(60),
            ..config(1000, 1)
        };
        let (log, _) = PartitionLog::open(dir.path(), cfg).unwrap();
        let first = log.append(batch("a", 2)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let second = log.append(batch("b", 2)).unwrap();
        let t1 = first[0].enqueued_time_ms;
        let t2 = second[0].enqueued_time_ms;
        assert!(t2 > t1);

        assert_eq!(
            log.enforce_retention(t1 + 60_000).unwrap(),
            0,
            "exactly max_age old is kept"
        );
        assert_eq!(log.enforce_retention(t1 + 60_001).unwrap(), 2);
        assert_eq!(seqs(&all(&log)), vec![2, 3]);
        assert_eq!(segment_files(dir.path()), vec![segment_path(dir.path(), 2)]);

        // Everything expired: memory is empty but the newest segment stays, so the sequence
        // continues.
        assert_eq!(log.enforce_retention(t2 + 60_001).unwrap(), 2);
        assert!(all(&log).is_empty());
        assert_eq!(segment_files(dir.path()), vec![segment_path(dir.path(), 2)]);
        let info = log.info();
        assert!(info.is_empty);
        assert_eq!(info.begin_sequence_number, -1);
        assert_eq!(info.last_sequence_number, 3);
        assert_eq!(log.next_sequence_number(), 4);
        assert_eq!(log.seq_after_offset(-1, false), 4);
        let next = log.append(batch("c", 1)).unwrap();
        assert_eq!(next[0].sequence_number, 4);
    }

    #[test]
    fn sequence_survives_restart_when_everything_expired() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            max_age: Duration::from_millis(1),
            ..config(1000, 1)
        };
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        append_singles(&log, 3);
        let last = all(&log).last().cloned().unwrap();
        drop(log);
        std::thread::sleep(Duration::from_millis(10));

        let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!(
            report.records, 0,
            "expired records are not served after restart"
        );
        assert_eq!(report.segments, 1);
        let info = log.info();
        assert_eq!(
            info,
            PartitionInfo {
                begin_sequence_number: -1,
                last_sequence_number: 2,
                last_offset: last.offset,
                last_enqueued_time_ms: last.enqueued_time_ms,
                is_empty: true,
            }
        );
        let next = log.append(batch("n", 1)).unwrap();
        assert_eq!(next[0].sequence_number, 3);
        assert_eq!(next[0].offset, last.offset + framed_len(&last) as i64);
    }

    #[test]
    fn seq_after_offset_inclusive_exclusive_start_and_end() {
        let log = PartitionLog::in_memory(StoreConfig::default());
        let r = log.append(batch("o", 4)).unwrap();
        assert_eq!(log.seq_after_offset(-1, false), 0);
        assert_eq!(log.seq_after_offset(-1, true), 0);
        assert_eq!(log.seq_after_offset(0, true), 0);
        assert_eq!(log.seq_after_offset(0, false), 1);
        assert_eq!(log.seq_after_offset(r[2].offset, true), 2);
        assert_eq!(log.seq_after_offset(r[2].offset, false), 3);
        assert_eq!(
            log.seq_after_offset(r[2].offset + 1, true),
            3,
            "inside a record"
        );
        assert_eq!(
            log.seq_after_offset(r[3].offset, false),
            4,
            "after the last: next"
        );
        assert_eq!(log.seq_after_offset(i64::MAX, true), 4);

        // After retention, offsets before begin start at begin.
        let small = PartitionLog::in_memory(config(2, 1));
        let r = small.append(batch("o", 4)).unwrap();
        assert_eq!(small.seq_after_offset(-1, false), 2);
        assert_eq!(small.seq_after_offset(r[0].offset, true), 2);
        assert_eq!(small.seq_after_offset(r[2].offset, false), 3);

        let empty = PartitionLog::in_memory(StoreConfig::default());
        assert_eq!(empty.seq_after_offset(-1, false), 0);
        assert_eq!(empty.seq_after_offset(100, true), 0);
    }

    #[test]
    fn seq_after_enqueued_time_inclusive_exclusive_start_and_end() {
        let log = PartitionLog::in_memory(StoreConfig::default());
        let mut times = Vec::new();
        for tag in ["a", "b", "c"] {
            times.push(log.append(batch(tag, 2)).unwrap()[0].enqueued_time_ms);
            std::thread::sleep(Duration::from_millis(3));
        }
        assert!(times[0] < times[1] && times[1] < times[2]);
        assert_eq!(log.seq_after_enqueued_time(-1, false), 0);
        assert_eq!(log.seq_after_enqueued_time(0, true), 0);
        assert_eq!(log.seq_after_enqueued_time(times[1], true), 2);
        assert_eq!(log.seq_after_enqueued_time(times[1], false), 4);
        assert_eq!(log.seq_after_enqueued_time(times[1] - 1, false), 2);
        assert_eq!(
            log.seq_after_enqueued_time(times[2], false),
            6,
            "after the last: next"
        );
        assert_eq!(log.seq_after_enqueued_time(i64::MAX, true), 6);
    }

    #[tokio::test]
    async fn subscribe_wakes_on_append() {
        let log = PartitionLog::in_memory(StoreConfig::default());
        let mut rx = log.subscribe();
        assert_eq!(*rx.borrow_and_update(), 0);
        let waiter = tokio::spawn(async move {
            rx.changed().await.unwrap();
            let seen = *rx.borrow_and_update();
            seen
        });
        tokio::task::yield_now().await;
        let writer = log.clone();
        tokio::task::spawn_blocking(move || writer.append(batch("w", 3)).unwrap())
            .await
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("subscriber was not woken")
            .unwrap();
        assert_eq!(seen, 3);
        assert_eq!(*log.subscribe().borrow(), 3);
    }

    #[test]
    fn info_for_empty_nonempty_and_retained_away_partitions() {
        let log = PartitionLog::in_memory(config(2, 1));
        assert_eq!(
            log.info(),
            PartitionInfo {
                begin_sequence_number: -1,
                last_sequence_number: -1,
                last_offset: -1,
                last_enqueued_time_ms: 0,
                is_empty: true,
            }
        );
        let r = log.append(batch("i", 3)).unwrap();
        assert_eq!(
            log.info(),
            PartitionInfo {
                begin_sequence_number: 1,
                last_sequence_number: 2,
                last_offset: r[2].offset,
                last_enqueued_time_ms: r[2].enqueued_time_ms,
                is_empty: false,
            }
        );
        let far_future = r[2].enqueued_time_ms + 48 * 3600 * 1000;
        assert_eq!(log.enforce_retention(far_future).unwrap(), 2);
        assert_eq!(
            log.info(),
            PartitionInfo {
                begin_sequence_number: -1,
                last_sequence_number: 2,
                last_offset: r[2].offset,
                last_enqueued_time_ms: r[2].enqueued_time_ms,
                is_empty: true,
            }
        );
    }

    #[test]
    fn removed_dir_fails_append_without_changing_state() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("p0");
        let cfg = config(1000, 1); // every append needs a new segment file
        let (log, _) = PartitionLog::open(&dir, cfg.clone()).unwrap();
        log.append(batch("a", 2)).unwrap();
        let before = all(&log);
        let info = log.info();
        let mut rx = log.subscribe();
        let _ = rx.borrow_and_update();
        fs::remove_dir_all(&dir).unwrap();

        let err = log.append(batch("b", 2)).unwrap_err();
        assert!(matches!(err, StoreError::CreateSegment { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&*dir.to_string_lossy()), "{msg}");
        assert!(msg.contains("not stored"), "{msg}");
        assert_eq!(all(&log), before);
        assert_eq!(log.info(), info);
        assert_eq!(log.next_sequence_number(), 2);
        assert!(!rx.has_changed().unwrap(), "no wake-up for a failed append");

        fs::create_dir_all(&dir).unwrap();
        let next = log.append(batch("c", 1)).unwrap();
        assert_eq!(next[0].sequence_number, 2);
        assert_eq!(
            next[0].offset,
            before[1].offset + framed_len(&before[1]) as i64
        );
        drop(log);
        // The lost segment is gone with the dir; the new one continues the numbering.
        let (log, report) = PartitionLog::open(&dir, cfg).unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(seqs(&all(&log)), vec![2]);
        assert_eq!(all(&log)[0].offset, next[0].offset);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn write_error_on_full_disk_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1000, 1);
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        log.append(batch("a", 2)).unwrap();
        let before = all(&log);
        // The next segment "file" is /dev/full: every write fails with ENOSPC.
        let next_path = segment_path(dir.path(), 2);
        std::os::unix::fs::symlink("/dev/full", &next_path).unwrap();

        let err = log.append(batch("b", 3)).unwrap_err();
        assert!(matches!(err, StoreError::Write { .. }), "{err}");
        assert_eq!(all(&log), before);
        assert_eq!(log.next_sequence_number(), 2);
        assert!(!next_path.exists(), "the failed segment is removed");

        let stored = log.append(batch("c", 1)).unwrap();
        assert_eq!(stored[0].sequence_number, 2);
        assert!(next_path.is_file());
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(seqs(&all(&log)), vec![0, 1, 2]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn failed_write_in_an_open_segment_is_cut_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1000, 1 << 20);
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        log.append(batch("a", 2)).unwrap();
        let path = segment_files(dir.path())[0].clone();
        let good_len = file_len(&path);
        {
            // Simulate a write that got half-way to disk and then failed, on a device that
            // cannot even be truncated: garbage after the good records, writer on /dev/full.
            let mut state = log.lock();
            let disk = state.disk.as_mut().unwrap();
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(b"half a record").unwrap();
            let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
            disk.writer = Some(BufWriter::new(full));
        }
        let err = log.append(batch("b", 1)).unwrap_err();
        assert!(matches!(err, StoreError::Write { .. }), "{err}");
        assert_eq!(log.next_sequence_number(), 2);
        {
            let state = log.lock();
            let disk = state.disk.as_ref().unwrap();
            assert!(disk.writer.is_none());
            assert!(disk.segments.back().unwrap().dirty);
        }
        // The next append cuts the garbage and continues in the same segment.
        let next = log.append(batch("c", 1)).unwrap();
        assert_eq!(next[0].sequence_number, 2);
        assert_eq!(next[0].offset as u64, good_len);
        assert_eq!(file_len(&path), good_len + framed_len(&next[0]));
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(seqs(&all(&log)), vec![0, 1, 2]);
    }

    #[test]
    fn blocked_segment_path_fails_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1000, 1);
        let (log, _) = PartitionLog::open(dir.path(), cfg).unwrap();
        log.append(batch("a", 1)).unwrap();
        let blocker = segment_path(dir.path(), 1);
        fs::create_dir(&blocker).unwrap();
        assert!(matches!(
            log.append(batch("b", 1)),
            Err(StoreError::CreateSegment { .. })
        ));
        assert_eq!(log.next_sequence_number(), 1);
        fs::remove_dir(&blocker).unwrap();
        assert_eq!(log.append(batch("c", 1)).unwrap()[0].sequence_number, 1);
    }

    #[test]
    fn open_fails_with_path_when_dir_is_a_file() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = PartitionLog::open(&file, StoreConfig::default()).unwrap_err();
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
        assert!(err.to_string().contains("--data-dir"), "{err}");
    }

    #[test]
    fn new_dir_and_foreign_files_give_an_empty_partition() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("a/b/p3");
        let (log, report) = PartitionLog::open(&dir, StoreConfig::default()).unwrap();
        assert_eq!(report, OpenReport::default());
        assert!(dir.is_dir());
        assert_eq!(log.next_sequence_number(), 0);
        assert!(log.info().is_empty);
        drop(log);
        fs::write(dir.join("README"), b"hello").unwrap();
        fs::write(dir.join("12.seg"), b"not a segment name").unwrap();
        fs::write(segment_path(&dir, 5), b"").unwrap(); // empty segment: removed
        let (log, report) = PartitionLog::open(&dir, StoreConfig::default()).unwrap();
        assert_eq!(report.records, 0);
        assert_eq!(report.segments, 0);
        assert_eq!(log.next_sequence_number(), 0);
        assert!(dir.join("README").exists() && dir.join("12.seg").exists());
        assert!(!segment_path(&dir, 5).exists());
    }

    #[test]
    fn oversized_key_is_rejected_and_nothing_is_stored() {
        let log = PartitionLog::in_memory(StoreConfig::default());
        let items = vec![
            (None, Bytes::from("ok")),
            (Some("k".repeat(MAX_KEY_LEN + 1)), Bytes::from("too big")),
        ];
        let err = log.append(items).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooLarge {
                    what: "partition key",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(log.next_sequence_number(), 0);
        assert!(all(&log).is_empty());
    }

    #[test]
    fn clones_share_one_log_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PartitionLog>();
        let log = PartitionLog::in_memory(StoreConfig::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        log.append(batch(&format!("t{t}"), 2)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let records = all(&log);
        assert_eq!(seqs(&records), (0..400).collect::<Vec<_>>());
        for pair in records.windows(2) {
            assert_eq!(pair[1].offset, pair[0].offset + framed_len(&pair[0]) as i64);
            assert!(pair[1].enqueued_time_ms >= pair[0].enqueued_time_ms);
        }
    }

    #[test]
    fn fsync_mode_persists_and_flush_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            fsync: true,
            ..config(1000, 200)
        };
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        for tag in ["a", "b", "c"] {
            log.append(batch(tag, 3)).unwrap();
        }
        log.flush().unwrap();
        assert!(log.enforce_retention(now_ms()).is_ok());
        let before = all(&log);
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(all(&log), before);
        PartitionLog::in_memory(StoreConfig::default())
            .flush()
            .unwrap();
    }

    /// `n` events of `size` bytes each, numbered from `first` at the start of the payload.
    fn sized(first: usize, n: usize, size: usize) -> Vec<(Option<String>, Bytes)> {
        (first..first + n)
            .map(|i| {
                let mut b = format!("{i:08}").into_bytes();
                b.resize(size, b'x');
                (Some(format!("k{i}")), Bytes::from(b))
            })
            .collect()
    }

    fn check_numbered(records: &[Arc<Record>], first: usize) {
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.sequence_number, (first + i) as i64);
            assert_eq!(&r.payload[..8], format!("{:08}", first + i).as_bytes());
            assert_eq!(r.partition_key, Some(format!("k{}", first + i)));
        }
    }

    #[test]
    fn r12_memory_budget_evicts_oldest_and_reads_them_back_from_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            memory_bytes: 16 * 1024,
            ..config(100_000, 64 * 1024)
        };
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        for b in 0..50 {
            log.append(sized(b * 4, 4, 1024)).unwrap();
            assert!(
                log.resident_bytes() <= cfg.memory_bytes,
                "over budget after batch {b}"
            );
        }
        let retained = log.retained_bytes();
        assert!(retained > 200 * 1024, "everything is retained: {retained}");
        let records = all(&log);
        assert_eq!(records.len(), 200);
        check_numbered(&records, 0);
        // A read from the middle starts there, and offsets agree with the resident view.
        let mid = log.read_from(77, 5).unwrap();
        check_numbered(&mid, 77);
        assert_eq!(mid[0].offset, records[77].offset);
        assert_eq!(log.seq_after_offset(records[77].offset, true), 77);
        assert_eq!(log.info().begin_sequence_number, 0);
        // Reopening loads within the budget too.
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        assert_eq!(report.records, 200);
        assert!(log.resident_bytes() <= cfg.memory_bytes);
        check_numbered(&all(&log), 0);
        log.append(sized(200, 1, 1024)).unwrap();
        check_numbered(&all(&log), 0);
    }

    #[test]
    fn r12_read_back_stops_at_the_byte_window_and_never_mixes_with_resident() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            memory_bytes: 64 * 1024,
            ..config(100_000, 64 * MIB)
        };
        let (log, _) = PartitionLog::open(dir.path(), cfg).unwrap();
        for b in 0..12 {
            log.append(sized(b * 64, 64, 8 * 1024)).unwrap();
        }
        let first = log.read_from(0, usize::MAX).unwrap();
        let bytes: u64 = first.iter().map(|r| framed_len(r)).sum();
        assert!(bytes <= READ_BACK_MAX_BYTES, "{bytes}");
        assert!(first.len() < 768, "one call reads a window, not everything");
        check_numbered(&first, 0);
        check_numbered(&all(&log), 0);
    }

    #[test]
    fn r12_damaged_record_read_back_is_an_error_naming_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            memory_bytes: 4 * 1024,
            ..config(100_000, 1 << 20)
        };
        let (log, _) = PartitionLog::open(dir.path(), cfg).unwrap();
        for b in 0..10 {
            log.append(sized(b, 1, 1024)).unwrap();
        }
        let path = segment_files(dir.path())[0].clone();
        flip_byte(&path, 100);
        let err = log.read_from(0, 10).unwrap_err();
        assert!(matches!(err, StoreError::ReadBack { seq: 0, .. }), "{err}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        // The resident tail is still served.
        check_numbered(&log.read_from(9, 10).unwrap(), 9);
    }

    #[test]
    fn r12_in_memory_partition_is_bounded_by_its_memory_budget() {
        let cfg = StoreConfig {
            memory_bytes: 32 * 1024,
            ..StoreConfig::default()
        };
        let log = PartitionLog::in_memory(cfg);
        for b in 0..100 {
            log.append(sized(b, 1, 1024)).unwrap();
        }
        assert!(
            log.retained_bytes() <= 32 * 1024,
            "{}",
            log.retained_bytes()
        );
        assert_eq!(log.resident_bytes(), log.retained_bytes());
        let records = all(&log);
        let begin = log.info().begin_sequence_number as usize;
        assert!(begin > 60, "the oldest were dropped: begin {begin}");
        assert_eq!(records.len(), 100 - begin);
        check_numbered(&records, begin);
    }

    #[test]
    fn r12_retention_by_bytes_drops_oldest_and_deletes_their_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            max_bytes: 20 * 1024,
            ..config(100_000, 4 * 1024)
        };
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        for b in 0..100 {
            log.append(sized(b, 1, 1024)).unwrap();
        }
        assert!(log.retained_bytes() <= cfg.max_bytes);
        let begin = log.info().begin_sequence_number as usize;
        assert!(begin > 75, "begin {begin}");
        check_numbered(&all(&log), begin);
        let on_disk: u64 = segment_files(dir.path()).iter().map(|p| file_len(p)).sum();
        assert!(
            on_disk <= cfg.max_bytes + 2 * cfg.segment_bytes,
            "{on_disk}"
        );
        drop(log);
        let (log, _) = PartitionLog::open(dir.path(), cfg).unwrap();
        assert_eq!(log.info().begin_sequence_number as usize, begin);
    }

    #[test]
    fn reopen_cost_follows_retained_data() {
        // 20 000 small events reopen well under a second (a debug build); a regression
        // guard against quadratic recovery.
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(100_000, 256 * 1024);
        let (log, _) = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
        for _ in 0..200 {
            log.append(batch("bulk", 100)).unwrap();
        }
        drop(log);
        let started = Instant::now();
        let (log, report) = PartitionLog::open(dir.path(), cfg).unwrap();
        let took = started.elapsed();
        assert_eq!(report.records, 20_000);
        assert!(report.segments > 1);
        assert_eq!(log.next_sequence_number(), 20_000);
        assert!(took < Duration::from_secs(5), "reopen took {took:?}");
    }
}
