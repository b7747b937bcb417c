//! Tests of the partition store through [`PartitionLog`]: appends and reads, the on-disk
//! format, recovery from torn and corrupt segments, retention, write failures, memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::log::READ_BACK_MAX_BYTES;
use super::record::{framed_len, le_i64, le_u32};
use super::retention::now_ms;
use super::segment::segment_path;
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
