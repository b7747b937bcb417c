//! [`StoreError`]: what can fail in the partition store. Each variant names the step and
//! the path, and what to check.

use std::io;
use std::path::PathBuf;

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
