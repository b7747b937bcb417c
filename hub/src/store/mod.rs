//! The per-partition event log of the embedded hub.
//!
//! A [`PartitionLog`] stores the events of one Event Hubs partition: it assigns sequence
//! numbers (from 0, contiguous), offsets and enqueued times, serves reads by sequence number,
//! offset or enqueued time, applies retention and wakes consumers when events arrive. It is
//! payload-agnostic: the event body is an opaque [`Bytes`](bytes::Bytes) (the client's encoded AMQP
//! message) and this module knows nothing of AMQP.
//!
//! Every retained record has a slot in memory (a `VecDeque` indexed by
//! `sequence_number - begin`: sequence number, offset, enqueued time, size and place on
//! disk, about 80 bytes), and retention is bounded by [`StoreConfig::max_events`],
//! [`StoreConfig::max_bytes`] and [`StoreConfig::max_age`]. A persistent partition writes
//! every record to segment files before it becomes visible, and reloads them on
//! [`PartitionLog::open`].
//!
//! # Layout
//!
//! - `config`: [`StoreConfig`], the retention and persistence settings, and their defaults.
//! - `error`: [`StoreError`]: each variant names the failed step and the path.
//! - `log`: [`PartitionLog`], the log's interface: appends, reads (evicted records are read
//!   back from their segments), start-position searches, subscriptions, retention on a timer.
//! - `retention`: the retained records in memory, one slot each, trimmed by count, bytes and
//!   age, and evicted from memory beyond the budget. No I/O.
//! - `record`: [`Record`] and its frame on disk: encoding, framed size, and decoding one
//!   frame with every check. Knows no files.
//! - `segment`: segment files: naming and listing them, the writer that appends a batch, rolls
//!   at the size limit and cuts back after a failed write, and deleting expired segments.
//! - `recovery`: the scan [`PartitionLog::open`] runs: checks every record, cuts a damaged
//!   tail, rebuilds the retained records, and says what it found in [`OpenReport`].
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

mod config;
mod error;
mod log;
mod record;
mod recovery;
mod retention;
mod segment;

#[cfg(test)]
mod tests;

pub use config::{
    StoreConfig, DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, DEFAULT_MAX_EVENTS, DEFAULT_MEMORY_BYTES,
    DEFAULT_SEGMENT_BYTES,
};
pub use error::StoreError;
pub use log::{PartitionInfo, PartitionLog};
pub use record::{Record, MAX_KEY_LEN};
pub use recovery::OpenReport;
