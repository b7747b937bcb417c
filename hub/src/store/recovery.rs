//! The recovery scan [`PartitionLog::open`](super::PartitionLog::open) runs: reads every
//! segment in order, checks each record and that sequence numbers and offsets continue,
//! cuts the log at the first bad record (truncating that segment, deleting later ones), and
//! rebuilds the retained records. What it found is the [`OpenReport`].

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::config::StoreConfig;
use super::error::StoreError;
use super::record::{read_record, Damage, DamageKind, Record};
use super::retention::{age_cutoff, now_ms, State};
use super::segment::{
    list_segments, remove_file, sync_dir, truncate_file, Disk, Segment, IO_BUFFER,
};

/// What [`PartitionLog::open`](super::PartitionLog::open) found and repaired. The hub should log it, loudly when
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

/// Reads and checks every segment in `dir` (see the `store` docs, "Recovery"), cuts a
/// damaged tail and deletes what follows it, and returns the retained records with what it
/// found. Retention is applied against the current clock as records load.
pub(super) fn recover(dir: &Path, config: &StoreConfig) -> Result<(State, OpenReport), StoreError> {
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
            state.load(record, (segment, pos), config, cutoff);
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
    Ok((state, report))
}

/// What the next loaded record must continue from: `(sequence number, offset)`.
fn load_expectation(state: &State) -> Option<(i64, i64)> {
    state
        .disk
        .as_ref()
        .filter(|d| !d.segments.is_empty())
        .map(|_| (state.next_seq, state.next_offset))
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
