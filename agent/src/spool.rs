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
//! - **Start-up cost.** Opening reads the `meta` counters and walks the event table once
//!   (bounded by `max_bytes`), so a damaged tree is found at open rather than mid-run
//!   (after an unclean shutdown redb additionally checks its allocator state, also bounded
//!   by the file size).
//! - **Memory.** redb's page cache is capped at [`CACHE_BYTES`].
//! - **Recovery (issue 12).** After a failed transaction (disk full, I/O error) redb refuses
//!   every later one until the database is reopened. The spool therefore closes the database
//!   on any storage error and reopens it before the next operation; while that fails (the
//!   disk is still full) every operation returns the error and nothing is lost that was
//!   committed. A caller keeps the reports it could not append in a [`MemoryQueue`]
//!   (bounded; overflow drops the oldest, counted).
//! - **Corruption.** A file that redb cannot open (bad magic, checksum or structure
//!   failures, truncation, a panic inside redb) is moved aside as
//!   `spool.redb.corrupt-<unix seconds>` and a fresh spool is created; the move is
//!   reported by [`Spool::take_quarantined`] so the caller can log what was lost. A file
//!   locked by another process (a second agent on the same directory) is
//!   [`SpoolError::Locked`], never moved.
//!
//! Its settings, the `[spool]` section (directory, bound), are in [`config`].

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

pub mod config;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_NEXT_ID: &str = "next_id";
const META_COUNT: &str = "count";
const META_BYTES: &str = "bytes";
const META_LAST_SEQ: &str = "last_seq";
const META_DROPPED: &str = "dropped_total";

/// Bytes charged per event on top of its record (the id and B-tree bookkeeping).
pub const ENTRY_OVERHEAD: u64 = 16;
/// Upper bound of redb's in-memory page cache, bytes (the default would be 1 GiB); redb
/// gives nine tenths to reads and one tenth to the write buffer (`Builder::set_cache_size`,
/// redb 2.6 `src/db.rs`). At one report a second the spool holds a few pages; 1 MiB here
/// measured 1.0 MiB more anonymous RSS (3.4 vs 2.4 MiB) with the footprint bench over TLS
/// and no lower CPU (issue 17).
pub const CACHE_BYTES: usize = 256 << 10;
/// Smallest accepted bound: one maximal event body plus headroom.
pub const MIN_MAX_BYTES: u64 = 128 * 1024;
/// Name of the database file inside the spool directory.
pub const FILE_NAME: &str = "spool.redb";
/// Consecutive panics inside redb operations after which the file is treated as corrupt.
const PANICS_BEFORE_QUARANTINE: u32 = 3;

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
    /// Another process holds the database file's lock.
    #[error("spool {path} is locked by another process: is another tcpulse-agent using it? stop it or give this agent its own spool.dir")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The database file could not be opened (I/O: permissions, disk full, …).
    #[error("cannot open spool {path}; free disk space or fix permissions, or set spool.dir")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<redb::Error>,
    },
    /// A corrupt spool could not be moved aside.
    #[error("spool {path} is corrupt ({reason}) and cannot be moved aside; move or delete it, or set spool.dir")]
    Quarantine {
        /// The file.
        path: PathBuf,
        /// Why it is considered corrupt.
        reason: String,
        /// Why the rename failed.
        #[source]
        source: std::io::Error,
    },
    /// A transaction failed (disk full, I/O error, …); the database is reopened before the
    /// next operation.
    #[error("spool transaction failed")]
    Transaction(#[source] Box<redb::Error>),
    /// redb panicked during an operation (a corrupt page); the database is reopened, and
    /// moved aside if it keeps happening.
    #[error("spool {operation} panicked inside redb: {message}")]
    Panicked {
        /// The operation.
        operation: &'static str,
        /// The panic message.
        message: String,
    },
    /// The partition key of an event is longer than 65535 bytes.
    #[error("partition key of {0} bytes is too long for the spool")]
    KeyTooLong(usize),
}

impl<E: Into<redb::Error>> From<E> for SpoolError {
    fn from(e: E) -> Self {
        SpoolError::Transaction(Box::new(e.into()))
    }
}

impl SpoolError {
    /// True when the database must be reopened before it can be used again.
    fn needs_reopen(&self) -> bool {
        matches!(
            self,
            SpoolError::Transaction(_) | SpoolError::Panicked { .. }
        )
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

/// A spool file that could not be opened and was moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where it was.
    pub from: PathBuf,
    /// Where it is now (`spool.redb.corrupt-<unix seconds>`).
    pub to: PathBuf,
    /// Its size, bytes (an upper bound of the reports lost with it).
    pub bytes: u64,
    /// Reports it held as far as this process knew (`None` when it was never readable).
    pub events_known: Option<u64>,
    /// Why it could not be opened.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    next_id: u64,
    count: u64,
    bytes: u64,
    last_seq: Option<u64>,
    dropped_total: u64,
}

#[derive(Debug, Default)]
struct State {
    /// `None` after a failure: reopened before the next operation.
    db: Option<Database>,
    meta: Meta,
    /// Whether `meta` was ever read from the current file.
    meta_known: bool,
    op_panics: u32,
    reopens: u64,
    quarantined: Vec<Quarantined>,
}

/// The on-disk queue. Cheap to share behind an `Arc`; every method blocks on disk I/O, so
/// async callers run them on the blocking pool.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
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

/// Reads one spooled record back (`[key length: u16 LE][partition key][body]`); `None` for
/// bytes this agent never wrote (too short, key not UTF-8).
pub fn decode_record(id: u64, rec: &[u8]) -> Option<SpoolEntry> {
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

/// Why a file could not be opened.
enum OpenFailure {
    Locked,
    Corrupt(String),
    Io(Box<redb::Error>),
}

fn classify(e: redb::Error) -> OpenFailure {
    use std::io::ErrorKind;
    match e {
        redb::Error::DatabaseAlreadyOpen => OpenFailure::Locked,
        redb::Error::Io(io)
            if matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) =>
        {
            OpenFailure::Corrupt(format!("not a readable spool database: {io}"))
        }
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::LockPoisoned(_)) => {
            OpenFailure::Io(Box::new(e))
        }
        other => OpenFailure::Corrupt(other.to_string()),
    }
}

thread_local! {
    /// Set while this thread runs redb under [`quiet_catch`]: its panics are reported as
    /// spool errors, not printed by the panic hook.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `catch_unwind` whose panics (redb tripping over a damaged file) do not reach the panic
/// hook's stderr message: the caller turns them into one clear spool error. Panics of other
/// threads still print as usual.
fn quiet_catch<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r
}

fn is_disk_full(e: &redb::Error) -> bool {
    match e {
        redb::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
        }
        _ => false,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

fn read_meta(db: &Database) -> Result<Meta, OpenFailure> {
    let err = |e: redb::Error| classify(e);
    let txn = db.begin_read().map_err(|e| err(e.into()))?;
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Meta::default()),
        Err(e) => return Err(err(e.into())),
    };
    let get = |k: &str| -> Result<Option<u64>, OpenFailure> {
        Ok(table.get(k).map_err(|e| err(e.into()))?.map(|v| v.value()))
    };
    Ok(Meta {
        next_id: get(META_NEXT_ID)?.unwrap_or(0),
        count: get(META_COUNT)?.unwrap_or(0),
        bytes: get(META_BYTES)?.unwrap_or(0),
        last_seq: get(META_LAST_SEQ)?,
        dropped_total: get(META_DROPPED)?.unwrap_or(0),
    })
}

/// Opens (creating) the file and reads its counters, never panicking.
fn open_db(path: &Path) -> Result<(Database, Meta), OpenFailure> {
    let opened = quiet_catch(|| {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| classify(e.into()))?;
        // Reading (not writing) the counters lets a full disk still be drained.
        let meta = read_meta(&db)?;
        // A spool's counters must match its table: a scan is bounded by max_bytes and
        // catches structures redb only trips over later.
        let txn = db.begin_read().map_err(|e| classify(e.into()))?;
        match txn.open_table(EVENTS) {
            Ok(t) => {
                for item in t.iter().map_err(|e| classify(e.into()))? {
                    item.map_err(|e| classify(e.into()))?;
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(classify(e.into())),
        }
        drop(txn);
        Ok((db, meta))
    });
    match opened {
        Ok(r) => r,
        Err(payload) => Err(OpenFailure::Corrupt(format!(
            "redb panicked reading it: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

/// True when the file's header never got its magic number (zeros): redb writes it last
/// when it creates a database, so such a file never held anything.
fn never_initialised(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head.iter().all(|b| *b == 0))
}

/// Moves a corrupt file aside to `spool.redb.corrupt-<unix seconds>[-n]`.
fn quarantine(
    path: &Path,
    reason: String,
    events_known: Option<u64>,
) -> Result<Quarantined, SpoolError> {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{FILE_NAME}.corrupt-{secs}");
    let mut to = path.with_file_name(&base);
    let mut n = 1;
    while to.exists() {
        to = path.with_file_name(format!("{base}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &to).map_err(|source| SpoolError::Quarantine {
        path: path.to_owned(),
        reason: reason.clone(),
        source,
    })?;
    Ok(Quarantined {
        from: path.to_owned(),
        to,
        bytes,
        events_known,
        reason,
    })
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, bounded to `max_bytes`
    /// (at least [`MIN_MAX_BYTES`]). A file that cannot be read is moved aside and a fresh
    /// spool created (see [`Spool::take_quarantined`]). On a full disk it opens closed:
    /// every operation fails (and retries the open) until there is space.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let spool = Spool {
            path: dir.join(FILE_NAME),
            max_bytes: max_bytes.max(MIN_MAX_BYTES),
            state: Mutex::new(State::default()),
        };
        {
            let mut st = spool.lock();
            match spool.reopen(&mut st) {
                Ok(()) => {}
                // A full disk is not a reason to stop (a service manager would restart us in
                // a loop): start closed, every operation retries the open.
                Err(SpoolError::Open { source, .. }) if is_disk_full(&source) => {}
                Err(e) => return Err(e),
            }
            st.reopens = 0;
        }
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn meta(&self) -> Meta {
        self.lock().meta
    }

    /// (Re)opens the file into `st`; moves it aside when it is corrupt (or keeps panicking)
    /// and starts a fresh one that continues the ids and `seq` this process knows.
    fn reopen(&self, st: &mut State) -> Result<(), SpoolError> {
        st.db = None; // Closes the old handle and its file lock first.
        let known = st.meta_known.then_some(st.meta.count);
        let failure = if st.op_panics >= PANICS_BEFORE_QUARANTINE {
            OpenFailure::Corrupt(format!(
                "redb panicked in {} operations in a row",
                st.op_panics
            ))
        } else {
            match open_db(&self.path) {
                Ok((db, meta)) => {
                    st.db = Some(db);
                    st.meta = meta;
                    st.meta_known = true;
                    st.reopens += 1;
                    return Ok(());
                }
                Err(f) => f,
            }
        };
        let reason = match failure {
            OpenFailure::Locked => {
                return Err(SpoolError::Locked {
                    path: self.path.clone(),
                })
            }
            OpenFailure::Io(e) => {
                return Err(SpoolError::Open {
                    path: self.path.clone(),
                    source: e,
                })
            }
            OpenFailure::Corrupt(reason) => reason,
        };
        if never_initialised(&self.path) {
            // Creating it failed half-way (disk full): it never held a report. Start over.
            let _ = std::fs::remove_file(&self.path);
        } else {
            let q = quarantine(&self.path, reason, known)?;
            st.quarantined.push(q);
        }
        st.op_panics = 0;
        let carried = st.meta;
        let (db, _) = open_db(&self.path).map_err(|f| match f {
            OpenFailure::Locked => SpoolError::Locked {
                path: self.path.clone(),
            },
            OpenFailure::Io(e) => SpoolError::Open {
                path: self.path.clone(),
                source: e,
            },
            OpenFailure::Corrupt(why) => SpoolError::Open {
                path: self.path.clone(),
                source: Box::new(redb::Error::Corrupted(why)),
            },
        })?;
        // Ids stay unique (a sender may still hold ids of the old file) and seq keeps rising.
        st.meta = Meta {
            next_id: carried.next_id,
            last_seq: carried.last_seq,
            dropped_total: carried.dropped_total,
            ..Meta::default()
        };
        st.meta_known = true;
        st.db = Some(db);
        Ok(())
    }

    /// Runs `f` on the open database (reopening it first if a failure closed it). A storage
    /// error or a panic closes the database; `meta` changes only when `f` succeeds.
    fn with_db<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Database, &mut Meta) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let mut st = self.lock();
        if st.db.is_none() {
            self.reopen(&mut st)?;
        }
        let mut meta = st.meta;
        let Some(db) = st.db.as_ref() else {
            return Err(SpoolError::Open {
                path: self.path.clone(),
                source: Box::new(redb::Error::PreviousIo),
            });
        };
        let result = quiet_catch(|| f(db, &mut meta));
        match result {
            Ok(Ok(v)) => {
                st.meta = meta;
                st.op_panics = 0;
                Ok(v)
            }
            Ok(Err(e)) => {
                if e.needs_reopen() {
                    st.db = None;
                }
                Err(e)
            }
            Err(payload) => {
                st.db = None;
                st.op_panics += 1;
                Err(SpoolError::Panicked {
                    operation,
                    message: panic_message(payload.as_ref()),
                })
            }
        }
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
        let max_bytes = self.max_bytes;
        self.with_db("append", |db, meta| {
            append_txn(db, meta, max_bytes, events, last_seq)
        })
    }

    /// The oldest events, at most `max_events` of them and (beyond the first) at most
    /// `max_bytes` of bodies. Does not remove anything.
    pub fn peek(&self, max_events: usize, max_bytes: usize) -> Result<Peeked, SpoolError> {
        self.with_db("read", |db, _| peek_txn(db, max_events, max_bytes))
    }

    /// Deletes the events with these ids (those the publisher accepted). Unknown ids (for
    /// example dropped meanwhile because the spool was full) are ignored.
    pub fn remove(&self, ids: &[u64]) -> Result<(), SpoolError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.with_db("remove", |db, meta| remove_txn(db, meta, ids))
    }

    /// Makes every earlier commit durable (fsync), then closes the database.
    pub fn close(self) -> Result<(), SpoolError> {
        self.with_db("close", |db, _| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            txn.commit()?;
            Ok(())
        })
    }

    /// Files moved aside since the last call (at open, or when the file turned corrupt).
    pub fn take_quarantined(&self) -> Vec<Quarantined> {
        std::mem::take(&mut self.lock().quarantined)
    }

    /// Closes the database as a failed transaction does (tests of the recovery path).
    #[cfg(test)]
    fn fail_for_test(&self) {
        self.lock().db = None;
    }

    /// Times the database was reopened after a failure, over this handle's life.
    pub fn reopens(&self) -> u64 {
        self.lock().reopens
    }

    /// True while the database is open (no failure waiting for a reopen).
    pub fn is_healthy(&self) -> bool {
        self.lock().db.is_some()
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
        self.with_db("read", |db, _| {
            let txn = db.begin_read()?;
            match txn.open_table(EVENTS) {
                Ok(t) => Ok(t.len()?),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(e.into()),
            }
        })
    }
}

fn append_txn<'a, I>(
    db: &Database,
    meta: &mut Meta,
    max_bytes: u64,
    events: I,
    last_seq: Option<u64>,
) -> Result<AppendOutcome, SpoolError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let mut dropped = 0;
    let mut txn = db.begin_write()?;
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
        while meta.bytes > max_bytes {
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
        write_meta(&txn, meta)?;
    }
    txn.commit()?;
    Ok(AppendOutcome { dropped })
}

fn write_meta(txn: &redb::WriteTransaction, meta: &Meta) -> Result<(), SpoolError> {
    let mut m = txn.open_table(META)?;
    m.insert(META_NEXT_ID, meta.next_id)?;
    m.insert(META_COUNT, meta.count)?;
    m.insert(META_BYTES, meta.bytes)?;
    m.insert(META_DROPPED, meta.dropped_total)?;
    if let Some(seq) = meta.last_seq {
        m.insert(META_LAST_SEQ, seq)?;
    }
    Ok(())
}

fn peek_txn(db: &Database, max_events: usize, max_bytes: usize) -> Result<Peeked, SpoolError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(EVENTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Peeked::default()),
        Err(e) => return Err(e.into()),
    };
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

fn remove_txn(db: &Database, meta: &mut Meta, ids: &[u64]) -> Result<(), SpoolError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Eventual);
    {
        let mut table = txn.open_table(EVENTS)?;
        for id in ids {
            if let Some(rec) = table.remove(id)? {
                meta.bytes = meta.bytes.saturating_sub(charge(rec.value().len()));
                meta.count = meta.count.saturating_sub(1);
            }
        }
        write_meta(&txn, meta)?;
    }
    txn.commit()?;
    Ok(())
}

/// Reports held in memory while the spool cannot be written (disk full), oldest first,
/// bounded by count and bytes; overflow drops the oldest.
#[derive(Debug)]
pub struct MemoryQueue {
    items: VecDeque<(String, Vec<u8>)>,
    last_seq: Option<u64>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

/// Default bound of [`MemoryQueue`], reports (a few minutes of a large Pexip source).
pub const MEMORY_QUEUE_EVENTS: usize = 1024;
/// Default bound of [`MemoryQueue`], body bytes.
pub const MEMORY_QUEUE_BYTES: usize = 1 << 20;

impl Default for MemoryQueue {
    fn default() -> Self {
        MemoryQueue::new(MEMORY_QUEUE_EVENTS, MEMORY_QUEUE_BYTES)
    }
}

impl MemoryQueue {
    /// An empty queue holding at most `max_events` reports and `max_bytes` of records.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        MemoryQueue {
            items: VecDeque::new(),
            last_seq: None,
            bytes: 0,
            max_events: max_events.max(1),
            max_bytes,
        }
    }

    /// Adds reports (partition key, body) after the held ones; returns how many of the
    /// oldest were dropped to stay within the bound.
    pub fn push(&mut self, records: Vec<(String, Vec<u8>)>, last_seq: Option<u64>) -> u64 {
        for r in records {
            self.bytes += r.0.len() + r.1.len();
            self.items.push_back(r);
        }
        if let Some(seq) = last_seq {
            self.last_seq = Some(self.last_seq.map_or(seq, |s| s.max(seq)));
        }
        let mut dropped = 0;
        while self.items.len() > self.max_events
            || (self.bytes > self.max_bytes && self.items.len() > 1)
        {
            if let Some((k, b)) = self.items.pop_front() {
                self.bytes -= k.len() + b.len();
                dropped += 1;
            }
        }
        dropped
    }

    /// Appends everything held to `spool` in one transaction, emptying the queue on
    /// success (kept on failure).
    pub fn flush_to(&mut self, spool: &Spool) -> Result<(AppendOutcome, u64), SpoolError> {
        let n = self.items.len() as u64;
        let outcome = spool.append(
            self.items.iter().map(|(k, b)| (k.as_str(), b.as_slice())),
            self.last_seq,
        )?;
        self.items.clear();
        self.bytes = 0;
        self.last_seq = None;
        Ok((outcome, n))
    }

    /// Reports held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
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

    fn write_garbage(path: &Path, what: &str) {
        match what {
            "random" => std::fs::write(
                path,
                (0..8192u32)
                    .map(|i| (i * 7919 % 251) as u8)
                    .collect::<Vec<_>>(),
            )
            .unwrap(),
            "truncated" => {
                let len = std::fs::metadata(path).unwrap().len();
                let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                f.set_len(len / 3).unwrap();
            }
            "flipped" => {
                let mut b = std::fs::read(path).unwrap();
                for i in (0..b.len()).step_by(97) {
                    b[i] ^= 0xA5;
                }
                std::fs::write(path, b).unwrap();
            }
            "header" => {
                let mut b = std::fs::read(path).unwrap();
                for x in b.iter_mut().take(512).skip(9) {
                    *x ^= 0xFF;
                }
                std::fs::write(path, b).unwrap();
            }
            _ => unreachable!(),
        }
    }

    fn spool_with_events(dir: &Path, n: u64) -> PathBuf {
        let spool = Spool::open(dir, 1 << 20).unwrap();
        for i in 0..n {
            let body = format!("{{\"seq\":{i},\"pad\":\"{}\"}}", "x".repeat(200));
            spool.append([("k", body.as_bytes())], Some(i)).unwrap();
        }
        let path = spool.path().to_owned();
        spool.close().unwrap();
        path
    }

    #[test]
    fn r12_unreadable_spool_is_moved_aside_and_a_fresh_one_starts() {
        for what in ["random", "truncated", "flipped", "header"] {
            let dir = tempfile::tempdir().unwrap();
            let path = spool_with_events(dir.path(), 300);
            write_garbage(&path, what);
            let size = std::fs::metadata(&path).unwrap().len();
            let spool = Spool::open(dir.path(), 1 << 20)
                .unwrap_or_else(|e| panic!("{what}: open failed: {e:#?}"));
            let q = spool.take_quarantined();
            if q.is_empty() {
                // redb may read some damage as valid pages; then the spool must still work.
                assert_ne!(what, "random", "random bytes opened as a spool");
            } else {
                assert_eq!(q.len(), 1, "{what}");
                assert_eq!((q[0].bytes, q[0].events_known), (size, None), "{what}");
                assert!(q[0]
                    .to
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("spool.redb.corrupt-"));
                assert!(q[0].to.exists() && !q[0].reason.is_empty(), "{what}: {q:?}");
                assert!(spool.is_empty());
            }
            // Whatever was read, the spool works and a second start works.
            let _ = spool.peek(1000, usize::MAX);
            spool.append([("k", b"new".as_slice())], Some(1)).unwrap();
            drop(spool);
            let again = Spool::open(dir.path(), 1 << 20).unwrap();
            assert!(
                again.take_quarantined().is_empty(),
                "{what}: second start moved a file again"
            );
            assert!(bodies(&again).contains(&"new".to_string()), "{what}");
        }
    }

    #[test]
    fn r12_half_created_file_is_replaced_not_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        // What a create on a full disk leaves: the length set, nothing written.
        let f = std::fs::File::create(dir.path().join(FILE_NAME)).unwrap();
        f.set_len(1 << 20).unwrap();
        drop(f);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.take_quarantined().is_empty());
        spool.append([("k", b"a".as_slice())], None).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn r12_locked_spool_names_the_other_agent_and_is_not_moved() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(dir.path(), 1 << 20).unwrap();
        first.append([("k", b"a".as_slice())], None).unwrap();
        let err = Spool::open(dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(err, SpoolError::Locked { .. }), "{err:?}");
        assert!(err.to_string().contains("another tcpulse-agent"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "nothing moved aside"
        );
        assert_eq!(bodies(&first), ["a"]);
    }

    #[test]
    fn r12_failed_transaction_reopens_and_keeps_committed_events() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append([("k", b"a".as_slice())], Some(1)).unwrap();
        spool.fail_for_test();
        assert!(!spool.is_healthy());
        spool.append([("k", b"b".as_slice())], Some(2)).unwrap();
        assert!(spool.is_healthy());
        assert_eq!(spool.reopens(), 1);
        assert_eq!(bodies(&spool), ["a", "b"]);
        assert_eq!((spool.len(), spool.last_seq()), (2, Some(2)));
    }

    #[test]
    fn r12_file_corrupted_while_running_is_moved_aside_ids_and_seq_continue() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool
            .append([("k", b"a".as_slice()), ("k", b"b".as_slice())], Some(5))
            .unwrap();
        let sent = spool.peek(1, usize::MAX).unwrap().entries[0].id;
        spool.fail_for_test();
        std::fs::write(spool.path(), b"garbage, not redb").unwrap();
        spool.append([("k", b"c".as_slice())], Some(6)).unwrap();
        let q = spool.take_quarantined();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].events_known, Some(2), "what was lost is known");
        // The sender still holds `sent` from the old file: it must not hit a new event.
        spool.remove(&[sent]).unwrap();
        assert_eq!(bodies(&spool), ["c"]);
        assert_eq!(spool.last_seq(), Some(6));
    }

    #[test]
    fn r12_memory_queue_is_bounded_drops_oldest_and_flushes_in_order() {
        let mut q = MemoryQueue::new(3, 1 << 20);
        let recs = |r: std::ops::Range<u8>| r.map(|i| ("k".to_string(), vec![b'a' + i])).collect();
        assert_eq!(q.push(recs(0..2), Some(2)), 0);
        assert_eq!(q.push(recs(2..5), Some(5)), 2, "two oldest dropped");
        assert_eq!(q.len(), 3);
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.fail_for_test();
        let (outcome, n) = q.flush_to(&spool).unwrap();
        assert_eq!((outcome.dropped, n), (0, 3));
        assert!(q.is_empty());
        assert_eq!(bodies(&spool), ["c", "d", "e"]);
        assert_eq!(spool.last_seq(), Some(5));
        let mut small = MemoryQueue::new(100, 10);
        assert_eq!(
            small.push(
                vec![("k".into(), vec![0; 8]), ("k".into(), vec![0; 8])],
                None
            ),
            1
        );
    }
}
