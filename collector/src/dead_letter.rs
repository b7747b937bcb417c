//! The dead-letter file: what cannot be used, kept for the operator.
//!
//! An event the schema's rules refuse ([`tcpulse_schema::decode`]) is a [`DeadLetter`] that
//! the pipeline counts per [`tcpulse_schema::DeadLetterReason::kind`], logs once per kind and
//! appends here. Nothing here ever stops a partition: a dead letter is just another
//! processed event.
//!
//! The dead-letter file is JSON Lines. An event record:
//!
//! ```json
//! {"at":"2026-11-26T10:00:01.000Z","type":"event","partition":"0","offset":"4096",
//!  "sequence_number":17,"enqueued_time":"2026-11-26T10:00:00.900Z","kind":"invalid_json",
//!  "message":"invalid JSON: EOF while parsing …","instance":null,
//!  "body_bytes":31,"body_truncated":false,"body_base64":"eyJzY2hlbWEi…"}
//! ```
//!
//! A batch a store rejected (HTTP 400/422) is recorded with `"type":"batch"`, the sink, the
//! status, the server's message and the line protocol itself (`body`). Bodies are capped
//! at `max_body_bytes` (`body_truncated` says so) and the file at `max_file_bytes`: when
//! full it is rotated to `<path>.1` (replacing the previous one), so the disk use is
//! bounded by twice the cap.
//!
//! A record that cannot be written (disk full, I/O error) is not dropped: it stays queued
//! in memory, a partial write is cut off the file again, and every later append and every
//! [`DeadLetterFile::sync`] writes the queue first, in order. `sync` fails while anything
//! is queued, and the pipeline syncs before each checkpoint write, so a checkpoint never
//! passes a dead letter whose record is not durably in the file. The queue holds at most
//! what the partitions read while the disk was full: a partition stops reading as soon as
//! one of its dead letters is queued, and a rejected batch queues one record.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::Serialize;
use tcpulse_schema::{DeadLetter, Timestamp};

use crate::source::SourceEvent;

/// Size caps of the dead-letter file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterLimits {
    /// Bytes of a body (event or batch) kept in one record.
    pub max_body_bytes: usize,
    /// Size at which the file is rotated to `<path>.1`.
    pub max_file_bytes: u64,
}

#[derive(Debug)]
struct Open {
    file: File,
    written: u64,
}

#[derive(Debug, Default)]
struct State {
    open: Option<Open>,
    /// Serialized records (each ending in a newline) not yet in the file, oldest first.
    queued: VecDeque<Vec<u8>>,
    /// Records written since the last fsync.
    unsynced: bool,
}

/// The append-only dead-letter file (shared by every partition). See the module docs.
#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    limits: DeadLetterLimits,
    state: Mutex<State>,
}

#[derive(Serialize)]
struct EventRecord<'a> {
    at: String,
    #[serde(rename = "type")]
    kind_of_record: &'static str,
    partition: &'a str,
    offset: &'a str,
    sequence_number: i64,
    enqueued_time: Option<String>,
    kind: &'a str,
    message: &'a str,
    instance: Option<&'a str>,
    body_bytes: usize,
    body_truncated: bool,
    body_base64: String,
}

#[derive(Serialize)]
struct BatchRecord<'a> {
    at: String,
    #[serde(rename = "type")]
    kind_of_record: &'static str,
    partition: &'a str,
    kind: &'static str,
    sink: &'a str,
    status: u16,
    message: &'a str,
    lines: usize,
    body_bytes: usize,
    body_truncated: bool,
    body: String,
}

impl DeadLetterFile {
    /// Opens (creating if needed) the file at `path` for appending; the parent directory
    /// is created too.
    pub fn open(path: impl Into<PathBuf>, limits: DeadLetterLimits) -> std::io::Result<Self> {
        let path = path.into();
        let open = open_append(&path)?;
        Ok(DeadLetterFile {
            path,
            limits,
            state: Mutex::new(State {
                open: Some(open),
                ..State::default()
            }),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an event that failed to decode. An error means the record is queued, not
    /// yet in the file: [`DeadLetterFile::sync`] until it succeeds before passing it.
    pub fn write_event(&self, event: &SourceEvent, dead: &DeadLetter) -> std::io::Result<()> {
        let cap = self.limits.max_body_bytes.min(event.body.len());
        let message = dead.reason.to_string();
        let record = EventRecord {
            at: Timestamp::now().to_string(),
            kind_of_record: "event",
            partition: &event.partition,
            offset: &event.offset,
            sequence_number: event.sequence_number,
            enqueued_time: Timestamp::from_unix_millis(event.enqueued_time_ms)
                .map(|t| t.to_string()),
            kind: dead.reason.kind(),
            message: &message,
            instance: dead.instance.as_deref(),
            body_bytes: event.body.len(),
            body_truncated: cap < event.body.len(),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&event.body[..cap]),
        };
        self.append(&record)
    }

    /// Appends a batch a sink rejected, with the server's message. An error means the
    /// record is queued (see [`DeadLetterFile::write_event`]).
    pub fn write_batch(
        &self,
        partition: &str,
        sink: &str,
        status: u16,
        message: &str,
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut cap = self.limits.max_body_bytes.min(body.len());
        // Cut on a line boundary when possible, else on a char boundary.
        if cap < body.len() {
            if let Some(nl) = body[..cap].iter().rposition(|&b| b == b'\n') {
                cap = nl + 1;
            }
        }
        let text = String::from_utf8_lossy(&body[..cap]).into_owned();
        let lines = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let record = BatchRecord {
            at: Timestamp::now().to_string(),
            kind_of_record: "batch",
            partition,
            kind: "sink_rejected",
            sink,
            status,
            message: truncate_str(message, 4096),
            lines,
            body_bytes: body.len(),
            body_truncated: cap < body.len(),
            body: text,
        };
        self.append(&record)
    }

    fn append<T: Serialize>(&self, record: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut state = self.lock()?;
        state.queued.push_back(line);
        self.write_queued(&mut state)
    }

    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| std::io::Error::other("dead-letter file lock poisoned"))
    }

    /// Writes the queued records in order; stops at the first failure (the rest stay
    /// queued).
    fn write_queued(&self, state: &mut State) -> std::io::Result<()> {
        while let Some(line) = state.queued.front() {
            let len = line.len() as u64;
            let rotate = state
                .open
                .as_ref()
                .is_some_and(|o| o.written > 0 && o.written + len > self.limits.max_file_bytes);
            if rotate {
                if let Some(old) = state.open.take() {
                    old.file.sync_all()?;
                }
                let mut rotated = self.path.as_os_str().to_owned();
                rotated.push(".1");
                std::fs::rename(&self.path, PathBuf::from(rotated))?;
            }
            if state.open.is_none() {
                state.open = Some(open_append(&self.path)?);
            }
            let open = state
                .open
                .as_mut()
                .ok_or_else(|| std::io::Error::other("dead-letter file not open"))?;
            if let Err(e) = open.file.write_all(line) {
                // Cut a partial record off again, and reopen next time.
                let _ = open.file.set_len(open.written);
                state.open = None;
                return Err(e);
            }
            open.written += len;
            state.unsynced = true;
            state.queued.pop_front();
        }
        Ok(())
    }

    /// Records queued because they could not be written yet.
    pub fn queued(&self) -> usize {
        self.lock().map(|s| s.queued.len()).unwrap_or(0)
    }

    /// Writes every queued record and fsyncs the file. Fails while a record cannot be
    /// written: a checkpoint must not pass it then.
    pub fn sync(&self) -> std::io::Result<()> {
        let mut state = self.lock()?;
        self.write_queued(&mut state)?;
        if !state.unsynced {
            return Ok(());
        }
        if let Some(open) = state.open.as_mut() {
            open.file.sync_all()?;
        }
        state.unsynced = false;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<Open> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let written = file.metadata()?.len();
    Ok(Open { file, written })
}

fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn fixture(name: &str) -> Bytes {
        let path = format!("{}/../schema/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        Bytes::from(std::fs::read(path).unwrap())
    }

    fn received(seq: i64, body: Bytes) -> SourceEvent {
        SourceEvent {
            partition: "2".into(),
            sequence_number: seq,
            offset: format!("{}", seq * 10),
            enqueued_time_ms: 1_795_687_200_000,
            partition_key: None,
            body,
        }
    }

    #[test]
    fn every_invalid_fixture_is_a_dead_letter_of_its_kind() {
        let cases = [
            ("invalid_json.json", "invalid_json"),
            ("invalid_missing_field.json", "missing_field"),
            ("invalid_wrong_type.json", "wrong_type"),
            ("invalid_future_major.json", "future_major_version"),
            ("invalid_negative_count.json", "invalid_value"),
        ];
        for (name, kind) in cases {
            let err = tcpulse_schema::decode(&fixture(name)).unwrap_err();
            assert_eq!(err.reason.kind(), kind, "{name}");
        }
        let big = Bytes::from(vec![b' '; tcpulse_schema::MAX_BODY_BYTES + 1]);
        assert_eq!(
            tcpulse_schema::decode(&big).unwrap_err().reason.kind(),
            "oversized"
        );
        for name in [
            "valid_full.json",
            "valid_minimal.json",
            "valid_unknown_fields.json",
            "valid_minor_version.json",
        ] {
            assert!(tcpulse_schema::decode(&fixture(name)).is_ok(), "{name}");
        }
    }

    #[test]
    fn r12_a_record_that_cannot_be_written_stays_queued_until_the_disk_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        // A "disk" that is always full, then a real file in its place.
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let limits = DeadLetterLimits {
            max_body_bytes: 1024,
            max_file_bytes: 1 << 20,
        };
        let file = DeadLetterFile::open(&path, limits).unwrap();
        let ev = received(7, fixture("invalid_json.json"));
        let dead = tcpulse_schema::decode(&ev.body).unwrap_err();
        assert!(file.write_event(&ev, &dead).is_err(), "ENOSPC reported");
        let ev2 = received(8, fixture("invalid_json.json"));
        assert!(file.write_event(&ev2, &dead).is_err());
        assert_eq!(file.queued(), 2, "nothing dropped");
        assert!(file.sync().is_err(), "sync fails while records are queued");
        std::fs::remove_file(&path).unwrap();
        let real = dir.path().join("real.jsonl");
        std::fs::write(&real, b"").unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        file.sync().unwrap();
        assert_eq!(file.queued(), 0);
        let seqs: Vec<i64> = std::fs::read_to_string(&real)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["sequence_number"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, vec![7, 8], "written in order once space returned");
    }

    #[test]
    fn records_carry_position_reason_and_capped_body_and_the_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl/dead.jsonl");
        let limits = DeadLetterLimits {
            max_body_bytes: 8,
            max_file_bytes: 1500,
        };
        let file = DeadLetterFile::open(&path, limits).unwrap();
        let ev = received(17, fixture("invalid_wrong_type.json"));
        let dead = tcpulse_schema::decode(&ev.body).unwrap_err();
        file.write_event(&ev, &dead).unwrap();
        file.write_batch(
            "2",
            "influxdb_v1",
            400,
            "partial write: field type conflict",
            b"a 1\nbb 22\n",
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "event");
        assert_eq!(lines[0]["partition"], "2");
        assert_eq!(lines[0]["offset"], "170");
        assert_eq!(lines[0]["sequence_number"], 17);
        assert_eq!(lines[0]["kind"], "wrong_type");
        assert_eq!(lines[0]["instance"], "tc-eu-vmss_3");
        assert!(lines[0]["message"]
            .as_str()
            .unwrap()
            .contains("calls.call_count"));
        assert_eq!(lines[0]["body_truncated"], true);
        let kept = base64::engine::general_purpose::STANDARD
            .decode(lines[0]["body_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(kept, ev.body[..8].to_vec());
        assert_eq!(lines[1]["type"], "batch");
        assert_eq!(lines[1]["status"], 400);
        assert_eq!(lines[1]["lines"], 2);
        assert_eq!(lines[1]["body"], "a 1\n", "cut at a line boundary");
        for _ in 0..10 {
            file.write_event(&ev, &dead).unwrap();
        }
        file.sync().unwrap();
        let rotated = dir.path().join("dl/dead.jsonl.1");
        assert!(rotated.exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 1500);
        assert!(std::fs::metadata(&rotated).unwrap().len() <= 1500);
    }
}
