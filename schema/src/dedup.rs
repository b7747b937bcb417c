//! The dedupe key `(instance, boot, seq)` and a bounded window that spots repeats.
//!
//! At-least-once delivery repeats events: the agent resends a spool segment that was only
//! partly acknowledged, and the collector replays from its checkpoint after a crash. Stored
//! points are idempotent anyway (same series, same event time), so the window only keeps
//! counters (`events`, `duplicates`) and the rollup's inputs honest.
//!
//! [`DedupWindow`] keeps, per *stream* `(instance, boot)`, the highest `seq` seen and a
//! bitmap of the last `window_events` sequence numbers below it (the anti-replay window
//! of IPsec, RFC 4303 §3.4.3). Memory is `max_streams × window_events / 8` bytes plus the
//! instance names: it grows with instances and agent restarts, never with events. When
//! `max_streams` streams are tracked, a new stream evicts the least recently used one
//! (a linear scan; it happens only when an agent starts, so it is rare).
//!
//! The window is in memory only: after a collector restart, replayed events read as new.

use std::collections::HashMap;

use uuid::Uuid;

/// Identifies one event: which instance, which agent start, which report of that start.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    /// VMSS instance name.
    pub instance: String,
    /// The agent's per-start id.
    pub boot: Uuid,
    /// Sequence number within `boot`.
    pub seq: u64,
}

/// What [`DedupWindow::observe`] concluded about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before (within the window); it is now recorded.
    New,
    /// Seen before: a redelivery.
    Duplicate,
    /// More than the window behind its stream's newest event, so it cannot be told apart.
    /// Almost always a late redelivery; callers count it as a duplicate.
    BeyondWindow,
}

impl Seen {
    /// True only for [`Seen::New`].
    pub const fn is_new(self) -> bool {
        matches!(self, Seen::New)
    }
}

/// Streams tracked by [`DedupWindow::default`]: 4096 (e.g. 200 instances × 20 restarts).
pub const DEFAULT_MAX_STREAMS: usize = 4096;
/// Sequence numbers remembered per stream by [`DedupWindow::default`]: 1024 (over four hours
/// of 15-second reports).
pub const DEFAULT_WINDOW_EVENTS: u64 = 1024;
/// Largest accepted `window_events` (128 KiB of bitmap per stream).
pub const MAX_WINDOW_EVENTS: u64 = 1 << 20;

/// A bounded set of recently seen [`EventKey`]s. See the module docs.
#[derive(Debug)]
pub struct DedupWindow {
    instances: HashMap<String, Vec<Stream>>,
    streams: usize,
    max_streams: usize,
    window: u64,
    clock: u64,
    evictions: u64,
}

#[derive(Debug)]
struct Stream {
    boot: Uuid,
    last_used: u64,
    high: u64,
    bits: Box<[u64]>,
}

impl Stream {
    fn slot(&self, seq: u64) -> (usize, u64) {
        let window = self.bits.len() as u64 * 64;
        let idx = seq % window;
        // idx < window <= MAX_WINDOW_EVENTS, so idx / 64 fits usize.
        ((idx / 64) as usize, 1u64 << (idx % 64))
    }

    fn get(&self, seq: u64) -> bool {
        let (w, b) = self.slot(seq);
        self.bits.get(w).is_some_and(|word| word & b != 0)
    }

    fn set(&mut self, seq: u64, on: bool) {
        let (w, b) = self.slot(seq);
        if let Some(word) = self.bits.get_mut(w) {
            if on {
                *word |= b;
            } else {
                *word &= !b;
            }
        }
    }

    fn observe(&mut self, seq: u64) -> Seen {
        let window = self.bits.len() as u64 * 64;
        if seq > self.high {
            let advance = seq - self.high;
            if advance >= window {
                self.bits.fill(0);
            } else {
                for s in self.high + 1..seq {
                    self.set(s, false);
                }
            }
            self.set(seq, true);
            self.high = seq;
            Seen::New
        } else if self.high - seq >= window {
            Seen::BeyondWindow
        } else if self.get(seq) {
            Seen::Duplicate
        } else {
            self.set(seq, true);
            Seen::New
        }
    }
}

impl Default for DedupWindow {
    fn default() -> Self {
        DedupWindow::new(DEFAULT_MAX_STREAMS, DEFAULT_WINDOW_EVENTS)
    }
}

impl DedupWindow {
    /// A window tracking at most `max_streams` `(instance, boot)` streams (at least 1),
    /// remembering `window_events` sequence numbers per stream (rounded up to a multiple
    /// of 64, clamped to 64..=[`MAX_WINDOW_EVENTS`]).
    pub fn new(max_streams: usize, window_events: u64) -> Self {
        let window = window_events.clamp(64, MAX_WINDOW_EVENTS).div_ceil(64) * 64;
        DedupWindow {
            instances: HashMap::new(),
            streams: 0,
            max_streams: max_streams.max(1),
            window,
            clock: 0,
            evictions: 0,
        }
    }

    /// Records `key` and says whether it was new.
    pub fn observe(&mut self, key: &EventKey) -> Seen {
        self.observe_parts(&key.instance, key.boot, key.seq)
    }

    /// [`DedupWindow::observe`] of the key `(instance, boot, seq)` without building an
    /// [`EventKey`] (no allocation for a known stream: the collector calls this per event).
    pub fn observe_parts(&mut self, instance: &str, boot: Uuid, seq: u64) -> Seen {
        self.clock += 1;
        let now = self.clock;
        if let Some(stream) = self
            .instances
            .get_mut(instance)
            .and_then(|v| v.iter_mut().find(|s| s.boot == boot))
        {
            stream.last_used = now;
            return stream.observe(seq);
        }
        if self.streams >= self.max_streams {
            self.evict_oldest();
        }
        let words = usize::try_from(self.window / 64).unwrap_or(1);
        let mut stream = Stream {
            boot,
            last_used: now,
            high: seq,
            bits: vec![0u64; words].into_boxed_slice(),
        };
        stream.set(seq, true);
        self.instances
            .entry(instance.to_owned())
            .or_default()
            .push(stream);
        self.streams += 1;
        Seen::New
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .instances
            .iter()
            .flat_map(|(name, v)| v.iter().map(move |s| (s.last_used, name, s.boot)))
            .min_by_key(|(used, _, _)| *used)
            .map(|(_, name, boot)| (name.clone(), boot));
        let Some((name, boot)) = oldest else { return };
        if let Some(v) = self.instances.get_mut(&name) {
            v.retain(|s| s.boot != boot);
            if v.is_empty() {
                self.instances.remove(&name);
            }
        }
        self.streams -= 1;
        self.evictions += 1;
    }

    /// Streams `(instance, boot)` currently tracked; never more than `max_streams`.
    pub fn len(&self) -> usize {
        self.streams
    }

    /// True when nothing has been observed (or everything was evicted).
    pub fn is_empty(&self) -> bool {
        self.streams == 0
    }

    /// Instances currently tracked.
    pub fn instances(&self) -> usize {
        self.instances.len()
    }

    /// The stream limit.
    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// Sequence numbers remembered per stream.
    pub fn window_events(&self) -> u64 {
        self.window
    }

    /// Streams evicted so far to stay within `max_streams`.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Bytes of sequence bitmap held now (excludes names and map overhead).
    pub fn bitmap_bytes(&self) -> usize {
        self.streams * usize::try_from(self.window / 8).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(instance: &str, boot: u128, seq: u64) -> EventKey {
        EventKey {
            instance: instance.into(),
            boot: Uuid::from_u128(boot),
            seq,
        }
    }

    #[test]
    fn duplicate_within_window_is_detected() {
        let mut w = DedupWindow::new(16, 128);
        assert_eq!(w.observe(&key("i1", 1, 5)), Seen::New);
        assert_eq!(w.observe(&key("i1", 1, 5)), Seen::Duplicate);
        assert_eq!(w.observe(&key("i1", 1, 6)), Seen::New);
        assert_eq!(w.observe(&key("i1", 1, 5)), Seen::Duplicate);
        // Out of order but within the window: new, then duplicate.
        assert_eq!(w.observe(&key("i1", 1, 3)), Seen::New);
        assert_eq!(w.observe(&key("i1", 1, 3)), Seen::Duplicate);
        assert_eq!(w.observe(&key("i1", 1, 4)), Seen::New);
    }

    #[test]
    fn distinct_boot_or_instance_is_not_a_duplicate() {
        let mut w = DedupWindow::default();
        assert_eq!(w.observe(&key("i1", 1, 0)), Seen::New);
        assert_eq!(w.observe(&key("i1", 2, 0)), Seen::New, "agent restarted");
        assert_eq!(w.observe(&key("i2", 1, 0)), Seen::New, "other instance");
        assert_eq!(w.observe(&key("i1", 1, 0)), Seen::Duplicate);
        assert_eq!(w.observe(&key("i1", 2, 0)), Seen::Duplicate);
        assert_eq!(w.len(), 3);
        assert_eq!(w.instances(), 2);
    }

    #[test]
    fn events_beyond_the_window_are_reported_as_such() {
        let mut w = DedupWindow::new(4, 64);
        assert_eq!(w.window_events(), 64);
        for seq in 0..200 {
            assert!(w.observe(&key("i", 1, seq)).is_new());
        }
        assert_eq!(w.observe(&key("i", 1, 199 - 63)), Seen::Duplicate);
        assert_eq!(w.observe(&key("i", 1, 199 - 64)), Seen::BeyondWindow);
        assert_eq!(w.observe(&key("i", 1, 0)), Seen::BeyondWindow);
    }

    #[test]
    fn jumps_clear_stale_slots() {
        let mut w = DedupWindow::new(4, 64);
        assert!(w.observe(&key("i", 1, 10)).is_new());
        // seq 74 shares slot 10; a jump of exactly the window must not see it as seen.
        assert!(w.observe(&key("i", 1, 74)).is_new());
        // 20 was never seen and is still inside the window (74 - 20 < 64).
        assert!(w.observe(&key("i", 1, 20)).is_new());
        // A large jump clears everything.
        assert!(w.observe(&key("i", 1, 1_000_000)).is_new());
        assert!(w.observe(&key("i", 1, 1_000_000 - 10)).is_new());
        assert_eq!(w.observe(&key("i", 1, 1_000_000 - 10)), Seen::Duplicate);
        // A small jump clears only the slots it passes over.
        assert!(w.observe(&key("i", 1, 1_000_003)).is_new());
        assert!(w.observe(&key("i", 1, 1_000_002)).is_new());
        assert_eq!(w.observe(&key("i", 1, 1_000_000)), Seen::Duplicate);
    }

    #[test]
    fn memory_grows_with_streams_not_events() {
        let mut w = DedupWindow::new(8, 1024);
        for seq in 0..100_000 {
            w.observe(&key("i", 1, seq));
        }
        assert_eq!(w.len(), 1);
        assert_eq!(w.bitmap_bytes(), 128);
        for boot in 0..100u128 {
            w.observe(&key(&format!("inst{}", boot % 20), 1000 + boot, 0));
        }
        assert_eq!(w.len(), 8, "bounded by max_streams");
        assert!(w.instances() <= 8);
        assert_eq!(w.bitmap_bytes(), 8 * 128);
        assert_eq!(w.evictions(), 1 + 100 - 8);
    }

    #[test]
    fn least_recently_used_stream_is_evicted() {
        let mut w = DedupWindow::new(2, 64);
        w.observe(&key("a", 1, 0));
        w.observe(&key("b", 1, 0));
        w.observe(&key("a", 1, 1)); // a is now the most recently used
        w.observe(&key("c", 1, 0)); // evicts b
        assert_eq!(w.observe(&key("a", 1, 1)), Seen::Duplicate);
        assert_eq!(w.observe(&key("b", 1, 0)), Seen::New, "b was forgotten");
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn constructor_clamps_its_limits() {
        let w = DedupWindow::new(0, 1);
        assert_eq!(w.max_streams(), 1);
        assert_eq!(w.window_events(), 64);
        assert_eq!(DedupWindow::new(1, 65).window_events(), 128);
        assert_eq!(
            DedupWindow::new(1, u64::MAX).window_events(),
            MAX_WINDOW_EVENTS
        );
        assert!(w.is_empty());
    }
}
