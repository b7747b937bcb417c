//! The seam between a transport and the pipeline: [`SourceEvent`], [`PartitionSource`]
//! and [`SourceProvider`], plus the sources that exist today.
//!
//! The pipeline pulls: it calls [`PartitionSource::next`] only while its in-flight data is
//! below the bound, so a source must not read ahead without limit. An Event Hubs adapter
//! grants link credit as `next` is called (a bounded prefetch), which is how a slow store
//! turns into lag on the hub instead of memory in the collector.
//!
//! Sources here:
//! - [`FileSourceProvider`]: one partition read from a file of event bodies, one JSON body
//!   per line (a replay or demo source; `source.file` in the config);
//! - [`ChannelSource`]: events pushed through a bounded tokio channel (tests, benches and
//!   in-process feeds).
//!
//! The Event Hubs consumer adapter (`crate::eventhubs`, on `tcpulse-eventhub::client`)
//! implements the same traits; `crate::any_source` puts the two behind one provider for a
//! run from config. This module knows neither.

use std::future::Future;
use std::path::PathBuf;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Where the pipeline reads a partition from: the positions every source can serve. The
/// Event Hubs source asks the service for it as a
/// [`tcpulse_eventhub::position::StartPosition`] (the client's type, with offsets and
/// inclusive bounds the pipeline never needs); the file source seeks by sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The oldest event the service still holds.
    Earliest,
    /// Only events enqueued from now on.
    Latest,
    /// The event after this sequence number (a checkpoint).
    AfterSequence(i64),
    /// The first event enqueued after this instant (ms since the Unix epoch).
    EnqueuedAfterMs(i64),
}

/// One event as a source hands it to the pipeline: position in the partition, service
/// timestamps and the opaque body. The Event Hubs source makes it from the client's
/// [`tcpulse_eventhub::client::ReceivedEvent`], keeping only what the pipeline uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEvent {
    /// Partition id, e.g. `"0"`.
    pub partition: String,
    /// Event Hubs sequence number: increases by one per event within a partition.
    pub sequence_number: i64,
    /// Event Hubs offset (opaque string), kept for checkpoints and dead letters.
    pub offset: String,
    /// When the service enqueued the event, milliseconds since the Unix epoch.
    pub enqueued_time_ms: i64,
    /// The partition key the producer set (the connector FQDN for tcpulse agents).
    pub partition_key: Option<String>,
    /// The event body (a JSON status event for well-behaved producers).
    pub body: Bytes,
}

/// The newest event the service holds for a partition, for lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionTip {
    /// Sequence number of the last enqueued event.
    pub last_sequence_number: i64,
    /// Its enqueue time, milliseconds since the Unix epoch.
    pub last_enqueued_time_ms: i64,
}

/// What the service says about a partition's retained range when it is opened, so a
/// checkpoint can be checked against it (see `pipeline::judge_checkpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionBounds {
    /// Sequence number of the oldest retained event (-1 when nothing is retained).
    pub begin_sequence_number: i64,
    /// Sequence number of the newest event ever enqueued (-1 when none ever was).
    pub last_enqueued_sequence_number: i64,
    /// True when the partition retains no event.
    pub is_empty: bool,
}

/// Why a source failed. The pipeline logs it, counts it and retries with backoff; it never
/// ends the process.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading failed (network, I/O); retrying may help.
    #[error("receive from partition {partition} failed: {message}")]
    Receive {
        /// Partition id.
        partition: String,
        /// What went wrong.
        message: String,
    },
    /// The source cannot be opened (bad file, partition unknown).
    #[error("cannot open partition {partition}: {message}")]
    Open {
        /// Partition id.
        partition: String,
        /// What went wrong.
        message: String,
    },
    /// Another receiver with the same or a higher owner level took the partition
    /// (`amqp:link:stolen`): with a shared (Blob) store, another collector or an SDK
    /// processor now owns it.
    #[error("partition {partition}: another receiver took it over: {message}")]
    Stolen {
        /// Partition id.
        partition: String,
        /// What the service said.
        message: String,
    },
    /// The service refused the credentials (wrong key, missing Listen right, key
    /// rotated). Retried on the slow schedule (`retry.auth_initial`, `retry.auth_max`).
    #[error("partition {partition}: the service refused the credentials: {message}")]
    Unauthorized {
        /// Partition id (`*` for the hub).
        partition: String,
        /// What the service said.
        message: String,
    },
}

impl SourceError {
    /// True when the service refused the credentials: retrying soon cannot help.
    pub const fn is_unauthorized(&self) -> bool {
        matches!(self, SourceError::Unauthorized { .. })
    }

    /// True when another receiver took the partition over.
    pub const fn is_stolen(&self) -> bool {
        matches!(self, SourceError::Stolen { .. })
    }
}

/// One partition's ordered stream of events.
///
/// `next` must be cancel-safe (the pipeline selects on it beside acknowledgements and
/// timers): an event is either returned or stays in the source. `Ok(None)` means the
/// source ended (a finite replay) and the pipeline drains and stops the partition.
pub trait PartitionSource: Send + 'static {
    /// The partition id.
    fn partition(&self) -> &str;

    /// The next event, waiting until one is available. Called only when the pipeline has
    /// room for it, which is the backpressure.
    fn next(&mut self) -> impl Future<Output = Result<Option<SourceEvent>, SourceError>> + Send;

    /// The newest event the service holds, if the transport reports it (for lag in events).
    fn tip(&self) -> Option<PartitionTip> {
        None
    }
}

/// Lists partitions and opens each one at a start position.
pub trait SourceProvider: Send + Sync + 'static {
    /// The source of one partition.
    type Source: PartitionSource;

    /// Where checkpoints of this source live: `(namespace, hub, consumer group)`.
    fn scope(&self) -> crate::checkpoint::CheckpointScope;

    /// The partition ids to consume.
    fn partitions(&self) -> impl Future<Output = Result<Vec<String>, SourceError>> + Send;

    /// Opens `partition` so that the first event returned is the first one at `start`.
    fn open(
        &self,
        partition: &str,
        start: ReadFrom,
    ) -> impl Future<Output = Result<Self::Source, SourceError>> + Send;

    /// The partition's retained range as the service reports it, `None` when the source
    /// has no such notion (a file). Read on every open to check the checkpoint.
    fn bounds(
        &self,
        _partition: &str,
    ) -> impl Future<Output = Result<Option<PartitionBounds>, SourceError>> + Send {
        async { Ok(None) }
    }
}

// ---- File source -------------------------------------------------------------------

/// Reads one partition (`partition`) from a file with one event body per line. The line
/// number (from 0) is the sequence number, the byte offset of the line is the offset, and
/// `enqueued_time_ms` is the time the line was read. Empty lines are skipped (they keep
/// their number). The source ends at the end of the file.
#[derive(Debug, Clone)]
pub struct FileSourceProvider {
    path: PathBuf,
    partition: String,
}

impl FileSourceProvider {
    /// A provider for `path`, presented as partition `partition`.
    pub fn new(path: impl Into<PathBuf>, partition: impl Into<String>) -> Self {
        FileSourceProvider {
            path: path.into(),
            partition: partition.into(),
        }
    }
}

impl SourceProvider for FileSourceProvider {
    type Source = FileSource;

    fn scope(&self) -> crate::checkpoint::CheckpointScope {
        let name = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        crate::checkpoint::CheckpointScope::new("file", name, "$default")
    }

    async fn partitions(&self) -> Result<Vec<String>, SourceError> {
        Ok(vec![self.partition.clone()])
    }

    async fn open(&self, partition: &str, start: ReadFrom) -> Result<FileSource, SourceError> {
        let open_err = |message: String| SourceError::Open {
            partition: partition.to_owned(),
            message,
        };
        if partition != self.partition {
            return Err(open_err(format!(
                "the file source has only partition {}",
                self.partition
            )));
        }
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| open_err(format!("{}: {e}", self.path.display())))?;
        let skip_until = match start {
            ReadFrom::Earliest => 0,
            ReadFrom::AfterSequence(seq) => seq.saturating_add(1),
            // A file has no enqueue times and no new events: "latest" reads nothing.
            ReadFrom::Latest => i64::MAX,
            ReadFrom::EnqueuedAfterMs(_) => 0,
        };
        Ok(FileSource {
            partition: partition.to_owned(),
            reader: BufReader::new(file),
            line_no: 0,
            offset: 0,
            skip_until,
            buf: Vec::new(),
        })
    }
}

/// One partition read from a file; see [`FileSourceProvider`].
#[derive(Debug)]
pub struct FileSource {
    partition: String,
    reader: BufReader<tokio::fs::File>,
    line_no: i64,
    offset: u64,
    skip_until: i64,
    buf: Vec<u8>,
}

impl PartitionSource for FileSource {
    fn partition(&self) -> &str {
        &self.partition
    }

    async fn next(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        loop {
            // Cancel safety: `read_until` appends what it read before a cancellation to
            // `buf`, and the next call continues the same line.
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .await
                .map_err(|e| SourceError::Receive {
                    partition: self.partition.clone(),
                    message: e.to_string(),
                })?;
            if n == 0 && self.buf.is_empty() {
                return Ok(None);
            }
            let raw = std::mem::take(&mut self.buf);
            let seq = self.line_no;
            let offset = self.offset;
            self.line_no += 1;
            self.offset += raw.len() as u64;
            let line = trim_line(&raw);
            if seq < self.skip_until || line.is_empty() {
                continue;
            }
            return Ok(Some(SourceEvent {
                partition: self.partition.clone(),
                sequence_number: seq,
                offset: offset.to_string(),
                enqueued_time_ms: tcpulse_schema::Timestamp::now().unix_millis(),
                partition_key: None,
                body: Bytes::copy_from_slice(line),
            }));
        }
    }
}

fn trim_line(buf: &[u8]) -> &[u8] {
    let mut end = buf.len();
    while end > 0 && matches!(buf[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &buf[..end]
}

// ---- Channel source ----------------------------------------------------------------

/// A partition fed through a bounded channel: the sender blocks when the pipeline stops
/// pulling, like a hub whose link credit ran out. Ends when every sender is dropped.
#[derive(Debug)]
pub struct ChannelSource {
    partition: String,
    rx: mpsc::Receiver<SourceEvent>,
    tip: Option<std::sync::Arc<std::sync::Mutex<Option<PartitionTip>>>>,
}

impl ChannelSource {
    /// A source for `partition` and the sender that feeds it (`capacity` events buffered).
    pub fn new(partition: impl Into<String>, capacity: usize) -> (mpsc::Sender<SourceEvent>, Self) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            tx,
            ChannelSource {
                partition: partition.into(),
                rx,
                tip: None,
            },
        )
    }

    /// Reports `tip` as the partition's newest event (the feeder updates it), for lag.
    pub fn with_tip(mut self, tip: std::sync::Arc<std::sync::Mutex<Option<PartitionTip>>>) -> Self {
        self.tip = Some(tip);
        self
    }
}

impl PartitionSource for ChannelSource {
    fn partition(&self) -> &str {
        &self.partition
    }

    async fn next(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        Ok(self.rx.recv().await)
    }

    fn tip(&self) -> Option<PartitionTip> {
        self.tip
            .as_ref()
            .and_then(|t| t.lock().ok().and_then(|g| *g))
    }
}

/// Hands out pre-built [`ChannelSource`]s, one per partition, each opened once. The start
/// position is recorded (see [`ChannelProvider::opened_at`]) so tests can check resume
/// points; the feeder decides what to send.
#[derive(Debug, Default)]
pub struct ChannelProvider {
    sources: std::sync::Mutex<Vec<ChannelSource>>,
    opened: std::sync::Mutex<Vec<(String, ReadFrom)>>,
    bounds: std::sync::Mutex<std::collections::HashMap<String, PartitionBounds>>,
    scope_name: String,
}

impl ChannelProvider {
    /// A provider over `sources`; `name` names the checkpoint scope (`channel/<name>`).
    pub fn new(name: impl Into<String>, sources: Vec<ChannelSource>) -> Self {
        ChannelProvider {
            sources: std::sync::Mutex::new(sources),
            opened: std::sync::Mutex::new(Vec::new()),
            bounds: std::sync::Mutex::new(std::collections::HashMap::new()),
            scope_name: name.into(),
        }
    }

    /// Reports `bounds` for `partition` (as `$management` would), for checkpoint checks.
    pub fn with_bounds(self, partition: &str, bounds: PartitionBounds) -> Self {
        if let Ok(mut b) = self.bounds.lock() {
            b.insert(partition.to_owned(), bounds);
        }
        self
    }

    /// Each partition opened so far with the position it was opened at.
    pub fn opened_at(&self) -> Vec<(String, ReadFrom)> {
        self.opened.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl SourceProvider for ChannelProvider {
    type Source = ChannelSource;

    fn scope(&self) -> crate::checkpoint::CheckpointScope {
        crate::checkpoint::CheckpointScope::new("channel", self.scope_name.clone(), "$default")
    }

    async fn partitions(&self) -> Result<Vec<String>, SourceError> {
        let guard = self.sources.lock().map_err(|_| SourceError::Open {
            partition: "*".into(),
            message: "provider lock poisoned".into(),
        })?;
        Ok(guard.iter().map(|s| s.partition.clone()).collect())
    }

    async fn open(&self, partition: &str, start: ReadFrom) -> Result<ChannelSource, SourceError> {
        let not_found = || SourceError::Open {
            partition: partition.to_owned(),
            message: "no such partition, or already opened".into(),
        };
        let mut guard = self.sources.lock().map_err(|_| not_found())?;
        let idx = guard
            .iter()
            .position(|s| s.partition == partition)
            .ok_or_else(not_found)?;
        if let Ok(mut o) = self.opened.lock() {
            o.push((partition.to_owned(), start));
        }
        Ok(guard.swap_remove(idx))
    }

    async fn bounds(&self, partition: &str) -> Result<Option<PartitionBounds>, SourceError> {
        Ok(self
            .bounds
            .lock()
            .ok()
            .and_then(|b| b.get(partition).copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_source_numbers_lines_and_resumes_after_a_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "a\r\n\nb\nc").unwrap();
        let p = FileSourceProvider::new(&path, "0");
        let mut s = p.open("0", ReadFrom::Earliest).await.unwrap();
        let mut got = Vec::new();
        while let Some(ev) = s.next().await.unwrap() {
            got.push((ev.sequence_number, ev.offset, ev.body));
        }
        assert_eq!(
            got,
            vec![
                (0, "0".to_string(), Bytes::from_static(b"a")),
                (2, "4".to_string(), Bytes::from_static(b"b")),
                (3, "6".to_string(), Bytes::from_static(b"c")),
            ]
        );
        let mut s = p.open("0", ReadFrom::AfterSequence(2)).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().sequence_number, 3);
        assert!(s.next().await.unwrap().is_none());
        assert!(p.open("1", ReadFrom::Earliest).await.is_err());
    }
}
