//! Segment files (`<first_seq>.seg`, see the `store` docs): naming and listing them, the
//! writer that appends a batch, flushes it (and `fsync`s it when asked), rolls to a new
//! segment at [`StoreConfig::segment_bytes`] and cuts a segment back after a failed write;
//! and deleting segments retention emptied. Knows the records only as encoded frames.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::config::StoreConfig;
use super::error::StoreError;

/// File name extension of segment files.
const SEGMENT_EXT: &str = "seg";

/// Buffer size for reading and writing segments.
pub(super) const IO_BUFFER: usize = 64 * 1024;

pub(super) struct Disk {
    pub(super) dir: PathBuf,
    /// Segment files in order; the last one holds the newest record.
    pub(super) segments: VecDeque<Segment>,
    /// Writer on `segments.back()` while it is open for appending.
    pub(super) writer: Option<BufWriter<File>>,
}

/// A segment file holding at least one record.
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) first_seq: i64,
    pub(super) last_seq: i64,
    /// Length of the good records in the file.
    pub(super) len: u64,
    /// A failed write may have left bytes beyond `len`; cut them before writing again.
    pub(super) dirty: bool,
}

impl Disk {
    /// Write encoded frames for records `first_seq..=last_seq` and flush (and fsync).
    /// Returns where the first record went: the segment's first sequence number and the
    /// byte position in it. On error the segment is cut back to its previous length (or
    /// removed if it was new).
    pub(super) fn write_batch(
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
    pub(super) fn delete_dead_segments(&mut self, begin: i64) -> Result<usize, StoreError> {
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

pub(super) fn segment_path(dir: &Path, first_seq: i64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{SEGMENT_EXT}"))
}

/// Segment files in `dir`, sorted by first sequence number. Other files are ignored.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(i64, PathBuf)>, StoreError> {
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

pub(super) fn truncate_file(path: &Path, len: u64, fsync: bool) -> Result<(), StoreError> {
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

pub(super) fn remove_file(path: &Path) -> Result<(), StoreError> {
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
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Sync {
            path: dir.to_path_buf(),
            source,
        })
}
