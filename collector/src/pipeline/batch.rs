//! Batches: the open batch being filled ([`Builder`]), sealed batches and the in-flight
//! queue whose low watermark moves the checkpoint ([`InFlight`]).

use std::collections::VecDeque;

use tcpulse_schema::{write_instance_line, Point, PointSink, StatusEvent, Timestamp};

use crate::aggregate::Snapshot;
use crate::source::SourceEvent;

/// A position in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Sequence number.
    pub sequence_number: i64,
    /// Offset.
    pub offset: String,
    /// Enqueue time, ms since the Unix epoch.
    pub enqueued_time_ms: i64,
}

impl Position {
    pub(super) fn of(ev: &SourceEvent) -> Self {
        Position {
            sequence_number: ev.sequence_number,
            offset: ev.offset.clone(),
            enqueued_time_ms: ev.enqueued_time_ms,
        }
    }

    /// Becomes the position of `ev`, keeping the offset's allocation.
    pub(super) fn set(&mut self, ev: &SourceEvent) {
        self.sequence_number = ev.sequence_number;
        self.offset.clone_from(&ev.offset);
        self.enqueued_time_ms = ev.enqueued_time_ms;
    }
}

/// Sealed batches in order, each pending or complete; yields the low watermark.
///
/// `push` returns an id; `complete(id, stored)` marks a batch (in any order);
/// [`InFlight::pop_ready`] removes the complete batches at the front and returns the
/// newest of them. A batch completed with `stored = false` (abandoned at shutdown) stays
/// at the front and holds the watermark there.
#[derive(Debug)]
pub struct InFlight<T> {
    next_id: u64,
    slots: VecDeque<(u64, Option<bool>, T)>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            next_id: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> InFlight<T> {
    /// Adds a sealed batch; returns its id.
    pub fn push(&mut self, value: T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.slots.push_back((id, None, value));
        id
    }

    /// Marks batch `id` complete (`stored`) or abandoned (`!stored`).
    pub fn complete(&mut self, id: u64, stored: bool) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.0 == id) {
            slot.1 = Some(stored);
        }
    }

    /// Removes the run of stored batches at the front; returns the newest of them.
    pub fn pop_ready(&mut self) -> Option<T> {
        let mut last = None;
        while self.slots.front().is_some_and(|s| s.1 == Some(true)) {
            last = self.slots.pop_front().map(|s| s.2);
        }
        last
    }

    /// The batches held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|s| &s.2)
    }

    /// Batches held (pending, or complete behind a pending one).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Batches whose delivery has not finished.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.1.is_none()).count()
    }
}

/// A batch handed to the sinks: what the checkpoint may move to once it is stored.
#[derive(Debug)]
pub(super) struct Sealed {
    pub(super) position: Option<Position>,
    pub(super) snapshot: Snapshot,
    /// Enqueue time of the first event the batch covers (for lag).
    pub(super) oldest_enqueued_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub(super) struct Builder {
    /// Line protocol, one point a line.
    pub(super) buf: String,
    pub(super) lines: usize,
    pub(super) opened: Option<tokio::time::Instant>,
    advanced: bool,
    /// Enqueue time of the first event read into this batch.
    pub(super) oldest_enqueued_ms: Option<i64>,
}

/// The aggregator writes straight into the open batch: no [`Point`] is built for an
/// event's own line (see [`write_instance_line`]).
impl PointSink for Builder {
    fn point(&mut self, p: Point) {
        if p.write_line(&mut self.buf) {
            self.line_written();
        }
    }

    fn instance_received(&mut self, ev: &StatusEvent, enqueued: Timestamp) {
        if write_instance_line(&mut self.buf, ev, enqueued) {
            self.line_written();
        }
    }
}

impl Builder {
    fn line_written(&mut self) {
        if self.opened.is_none() {
            self.opened = Some(tokio::time::Instant::now());
        }
        self.buf.push('\n');
        self.lines += 1;
    }

    pub(super) fn mark_advanced(&mut self) {
        if self.opened.is_none() {
            self.opened = Some(tokio::time::Instant::now());
        }
        self.advanced = true;
    }

    pub(super) fn has_content(&self) -> bool {
        self.lines > 0 || self.advanced
    }
}
