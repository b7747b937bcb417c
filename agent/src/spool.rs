//! The durable spool: a crash-safe, bounded, ordered queue of encoded events on disk.
//!
//! Every report is appended here *before* anything tries to send it, and leaves only when
//! the publisher accepted it. The store is [redb](https://docs.rs/redb) (pure Rust, ACID,
//! copy-on-write B-trees with checksummed commits), one file `spool.redb` in the spool
//! directory:
//!
//! - table `events`: `u64` id (assigned in append order, never reused) → record
//!   `[key length: u16 LE][partition key][JSON body]`. Ids order the replay.
//! - table `meta`: `next_id`, `count`, `bytes` (the sum charged against the bound),
//!   `last_seq` (the highest report `seq` ever spooled, so `seq` keeps rising across
//!   restarts) and `dropped_total`.
//!
//! Guarantees:
//! - **Crash safety.** An append is durable when [`Spool::append`] returns (fsync'd commit,
//!   `Durability::Immediate`). A crash at any point leaves either the old or the new state.
//!   Removals of sent events are committed with `Durability::Eventual` (no fsync of their
//!   own): after a power loss a few already-sent events may be sent again, which
//!   at-least-once delivery allows and the collector de-duplicates. [`Spool::close`] makes
//!   them durable.
//! - **Bound.** The spool holds at most `max_bytes` of records, each charged its length plus
//!   [`ENTRY_OVERHEAD`]. An append that overflows it deletes the oldest events first, in the
//!   same transaction, and reports how many ([`AppendOutcome::dropped`]).
//! - **Start-up cost.** Opening reads the `meta` counters only; it never scans the events,
//!   so it does not grow with the backlog (after an unclean shutdown redb additionally
//!   checks its allocator state, bounded by the file size, i.e. by `max_bytes`).
//! - **Memory.** redb's page cache is capped at [`CACHE_BYTES`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_NEXT_ID: &str = "next_id";
const META_COUNT: &str = "count";
const META_BYTES: &str = "bytes";
const META_LAST_SEQ: &str = "last_seq";
const META_DROPPED: &str = "dropped_total";

/// Bytes charged per event on top of its record (the id and B-tree bookkeeping).
pub const ENTRY_OVERHEAD: u64 = 16;
/// Upper bound of redb's in-memory page cache, bytes (the default would be 1 GiB).
pub const CACHE_BYTES: usize = 1 << 20;
/// Smallest accepted bound: one maximal event body plus headroom.
pub const MIN_MAX_BYTES: u64 = 128 * 1024;
/// Name of the database file inside the spool directory.
pub const FILE_NAME: &str = "spool.redb";

/// A spool operation that failed. Each variant names the step and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory could not be created.
    #[error("cannot create spool dir {dir}; fix permissions or set spool.dir")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be opened.
    #[error("cannot open spool {path}; is another tcpulse-agent using it? otherwise fix permissions or set spool.dir")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// A transaction failed (disk full, I/O error, …).
    #[error("spool transaction failed")]
    Transaction(#[source] Box<redb::Error>),
    /// The partition key of an event is longer than 65535 bytes.
    #[error("partition key of {0} bytes is too long for the spool")]
    KeyTooLong(usize),
}

impl<E: Into<redb::Error>> From<E> for SpoolError {
    fn from(e: E) -> Self {
        SpoolError::Transaction(Box::new(e.into()))
    }
}

/// One spooled event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    /// Position in the spool; pass it to [`Spool::remove`] once the event was accepted.
    pub id: u64,
    /// Event Hubs partition key (the connector FQDN).
    pub partition_key: String,
    /// The encoded event.
    pub body: Bytes,
}

/// The oldest events of the spool, as returned by [`Spool::peek`].
#[derive(Debug, Default)]
pub struct Peeked {
    /// Events in spool order.
    pub entries: Vec<SpoolEntry>,
    /// Ids of records that could not be decoded (never written by this agent); remove them.
    pub corrupt: Vec<u64>,
}

/// What an append did besides storing the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendOutcome {
    /// Oldest events deleted unsent to stay within the bound.
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    next_id: u64,
    count: u64,
    bytes: u64,
    last_seq: Option<u64>,
    dropped_total: u64,
}

/// The on-disk queue. Cheap to share behind an `Arc`; every method blocks on disk I/O, so
/// async callers run them on the blocking pool.
#[derive(Debug)]
pub struct Spool {
    db: Database,
    path: PathBuf,
    max_bytes: u64,
    meta: Mutex<Meta>,
}

fn charge(record_len: usize) -> u64 {
    record_len as u64 + ENTRY_OVERHEAD
}

fn encode_record(partition_key: &str, body: &[u8]) -> Result<Vec<u8>, SpoolError> {
    let key_len = u16::try_from(partition_key.len())
        .map_err(|_| SpoolError::KeyTooLong(partition_key.len()))?;
    let mut rec = Vec::with_capacity(2 + partition_key.len() + body.len());
    rec.extend_from_slice(&key_len.to_le_bytes());
    rec.extend_from_slice(partition_key.as_bytes());
    rec.extend_from_slice(body);
    Ok(rec)
}

fn decode_record(id: u64, rec: &[u8]) -> Option<SpoolEntry> {
    let (len, rest) = rec.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_le_bytes(*len));
    if rest.len() < len {
        return None;
    }
    let (key, body) = rest.split_at(len);
    Some(SpoolEntry {
        id,
        partition_key: std::str::from_utf8(key).ok()?.to_owned(),
        body: Bytes::copy_from_slice(body),
    })
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, bounded to `max_bytes`
    /// (at least [`MIN_MAX_BYTES`]).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| SpoolError::Open {
                path: path.clone(),
                source,
            })?;
        let txn = db.begin_write()?;
        let meta = {
            txn.open_table(EVENTS)?;
            let table = txn.open_table(META)?;
            let get = |k: &str| -> Result<Option<u64>, SpoolError> {
                Ok(table.get(k)?.map(|v| v.value()))
            };
            Meta {
                next_id: get(META_NEXT_ID)?.unwrap_or(0),
                count: get(META_COUNT)?.unwrap_or(0),
                bytes: get(META_BYTES)?.unwrap_or(0),
                last_seq: get(META_LAST_SEQ)?,
                dropped_total: get(META_DROPPED)?.unwrap_or(0),
            }
        };
        txn.commit()?;
        Ok(Spool {
            db,
            path,
            max_bytes: max_bytes.max(MIN_MAX_BYTES),
            meta: Mutex::new(meta),
        })
    }

    fn meta(&self) -> Meta {
        *self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends events (partition key, body) durably, in order. `last_seq`, when given, is
    /// stored as the highest report sequence number spooled (see [`Spool::last_seq`]).
    /// Drops the oldest events if the bound would be exceeded.
    pub fn append<'a, I>(
        &self,
        events: I,
        last_seq: Option<u64>,
    ) -> Result<AppendOutcome, SpoolError>
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        let mut guard = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        let mut meta = *guard;
        let mut dropped = 0;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        {
            let mut table = txn.open_table(EVENTS)?;
            for (key, body) in events {
                let rec = encode_record(key, body)?;
                table.insert(meta.next_id, rec.as_slice())?;
                meta.next_id += 1;
                meta.count += 1;
                meta.bytes += charge(rec.len());
            }
            while meta.bytes > self.max_bytes {
                let Some((_, rec)) = table.pop_first()? else {
                    break;
                };
                meta.bytes = meta.bytes.saturating_sub(charge(rec.value().len()));
                meta.count = meta.count.saturating_sub(1);
                dropped += 1;
            }
            meta.dropped_total += dropped;
            if let Some(seq) = last_seq {
                meta.last_seq = Some(meta.last_seq.map_or(seq, |s| s.max(seq)));
            }
            let mut m = txn.open_table(META)?;
            m.insert(META_NEXT_ID, meta.next_id)?;
            m.insert(META_COUNT, meta.count)?;
            m.insert(META_BYTES, meta.bytes)?;
            m.insert(META_DROPPED, meta.dropped_total)?;
            if let Some(seq) = meta.last_seq {
                m.insert(META_LAST_SEQ, seq)?;
            }
        }
        txn.commit()?;
        *guard = meta;
        Ok(AppendOutcome { dropped })
    }

    /// The oldest events, at most `max_events` of them and (beyond the first) at most
    /// `max_bytes` of bodies. Does not remove anything.
    pub fn peek(&self, max_events: usize, max_bytes: usize) -> Result<Peeked, SpoolError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut out = Peeked::default();
        let mut bytes = 0usize;
        for item in table.iter()? {
            if out.entries.len() >= max_events {
                break;
            }
            let (id, rec) = item?;
            let id = id.value();
            match decode_record(id, rec.value()) {
                Some(entry) => {
                    bytes += entry.body.len();
                    if bytes > max_bytes && !out.entries.is_empty() {
                        break;
                    }
                    out.entries.push(entry);
                }
                None => out.corrupt.push(id),
            }
        }
        Ok(out)
    }

    /// Deletes the events with these ids (those the publisher accepted). Unknown ids (for
    /// example dropped meanwhile because the spool was full) are ignored.
    pub fn remove(&self, ids: &[u64]) -> Result<(), SpoolError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut guard = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        let mut meta = *guard;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Eventual);
        {
            let mut table = txn.open_table(EVENTS)?;
            for id in ids {
                if let Some(rec) = table.remove(id)? {
                    meta.bytes = meta.bytes.saturating_sub(charge(rec.value().len()));
                    meta.count = meta.count.saturating_sub(1);
                }
            }
            let mut m = txn.open_table(META)?;
            m.insert(META_COUNT, meta.count)?;
            m.insert(META_BYTES, meta.bytes)?;
        }
        txn.commit()?;
        *guard = meta;
        Ok(())
    }

    /// Makes every earlier commit durable (fsync), then closes the database.
    pub fn close(self) -> Result<(), SpoolError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        txn.commit()?;
        drop(self.db);
        Ok(())
    }

    /// Events waiting to be sent.
    pub fn len(&self) -> u64 {
        self.meta().count
    }

    /// True when nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged against the bound now.
    pub fn bytes(&self) -> u64 {
        self.meta().bytes
    }

    /// The configured bound, bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The highest report `seq` ever spooled here; a new agent start continues above it.
    pub fn last_seq(&self) -> Option<u64> {
        self.meta().last_seq
    }

    /// Events dropped because the spool was full, over the spool's whole life.
    pub fn dropped_total(&self) -> u64 {
        self.meta().dropped_total
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counts the events by scanning the table (tests and diagnostics; O(backlog)).
    pub fn count_by_scan(&self) -> Result<u64, SpoolError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(EVENTS)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(spool: &Spool) -> Vec<String> {
        spool
            .peek(usize::MAX, usize::MAX)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| String::from_utf8(e.body.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn append_peek_remove_keeps_order_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.is_empty());
        spool
            .append([("k", b"a".as_slice()), ("k", b"b".as_slice())], Some(7))
            .unwrap();
        spool.append([("other", b"c".as_slice())], Some(8)).unwrap();
        assert_eq!(bodies(&spool), ["a", "b", "c"]);
        let first = spool.peek(2, usize::MAX).unwrap().entries;
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].partition_key, "k");
        spool.remove(&[first[0].id, first[1].id]).unwrap();
        assert_eq!(bodies(&spool), ["c"]);
        assert_eq!(spool.len(), 1);
        assert_eq!(spool.bytes(), charge(2 + 5 + 1));
        assert_eq!(spool.last_seq(), Some(8));
        // Removing again (or unknown ids) changes nothing.
        spool.remove(&[first[0].id, 999]).unwrap();
        assert_eq!(spool.len(), 1);
    }

    #[test]
    fn counters_and_seq_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            spool.append([("k", b"x".as_slice())], Some(41)).unwrap();
            spool.close().unwrap();
        }
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((spool.len(), spool.last_seq()), (1, Some(41)));
        spool.append([("k", b"y".as_slice())], Some(42)).unwrap();
        let ids: Vec<u64> = spool
            .peek(10, usize::MAX)
            .unwrap()
            .entries
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [0, 1], "ids continue after reopen");
    }

    #[test]
    fn bound_drops_oldest_first_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
        let body = vec![b'x'; 1000];
        let per = charge(2 + 1 + body.len());
        let fit = MIN_MAX_BYTES / per;
        let mut dropped = 0;
        for i in 0..fit + 10 {
            let mut b = body.clone();
            b[..8].copy_from_slice(&i.to_be_bytes());
            dropped += spool.append([("k", b.as_slice())], None).unwrap().dropped;
        }
        assert_eq!(dropped, 10);
        assert_eq!(spool.dropped_total(), 10);
        assert_eq!(spool.len(), fit);
        assert!(spool.bytes() <= MIN_MAX_BYTES);
        let first = &spool.peek(1, usize::MAX).unwrap().entries[0];
        assert_eq!(first.body[..8], 10u64.to_be_bytes(), "the 10 oldest went");
        assert_eq!(spool.count_by_scan().unwrap(), fit);
    }

    #[test]
    fn peek_respects_byte_budget_but_returns_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let big = vec![b'x'; 100];
        spool
            .append(
                [
                    ("k", big.as_slice()),
                    ("k", big.as_slice()),
                    ("k", big.as_slice()),
                ],
                None,
            )
            .unwrap();
        assert_eq!(spool.peek(10, 250).unwrap().entries.len(), 2);
        assert_eq!(spool.peek(10, 10).unwrap().entries.len(), 1);
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let rec = encode_record("tc.example.com", b"{}").unwrap();
        let e = decode_record(3, &rec).unwrap();
        assert_eq!(
            (e.id, e.partition_key.as_str(), &e.body[..]),
            (3, "tc.example.com", &b"{}"[..])
        );
        assert!(decode_record(0, &[5, 0, b'a']).is_none());
        assert!(decode_record(0, &[]).is_none());
        assert!(matches!(
            encode_record(&"k".repeat(70_000), b""),
            Err(SpoolError::KeyTooLong(70_000))
        ));
    }
}
