//! Named telemetry events: every operational error or drop is one type here.
//!
//! Emitting an event logs it with `stage` and `error_type` fields and increments exactly one
//! counter in [`Counters`]. Repeats of the same event are logged at most once a minute (the
//! counter still counts every one), so a source that fails every second does not flood the
//! log. The names of the counters are stable: dashboards and the closing note use them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Least time between two log lines of the same event kind, milliseconds.
const LOG_EVERY_MS: u64 = 60_000;

/// A counter plus the time its event was last logged.
#[derive(Debug, Default)]
pub struct Counter {
    value: AtomicU64,
    last_logged_ms: AtomicU64,
}

impl Counter {
    /// Current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// True when this kind was not logged within the last minute (and marks it logged).
    fn should_log(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            // Never 0, so the first event always logs.
            .max(LOG_EVERY_MS + 1);
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= LOG_EVERY_MS
            && self
                .last_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Every counter of the agent. One instance per [`crate::run::run`], shared by its tasks.
#[derive(Debug, Default)]
pub struct Counters {
    /// `agent_events_spooled_total`: events written to the spool.
    pub events_spooled: Counter,
    /// `agent_events_sent_total`: events the publisher accepted (and that left the spool).
    pub events_sent: Counter,
    /// `agent_source_errors_total`: failed source reads (each gave `state = unknown`).
    pub source_errors: Counter,
    /// `agent_publish_errors_total{error_type="transient"}`: batches that will be retried.
    pub publish_transient_errors: Counter,
    /// `agent_publish_errors_total{error_type="fatal"}`: fatal publish errors (sending stops).
    pub publish_fatal_errors: Counter,
    /// `agent_spool_dropped_total`: oldest events dropped because the spool was full.
    pub spool_dropped: Counter,
    /// `agent_spool_errors_total`: spool reads or writes that failed.
    pub spool_errors: Counter,
    /// `agent_events_invalid_total`: reports that failed schema validation (not spooled).
    pub events_invalid: Counter,
    /// `agent_health_errors_total`: health values that could not be measured.
    pub health_errors: Counter,
    /// `agent_spool_quarantined_total`: spool files that could not be read and were moved
    /// aside (their reports are lost; the log line says what is known about them).
    pub spool_quarantined: Counter,
    /// `agent_spool_recoveries_total`: times the spool became writable again after failing
    /// (disk full, I/O error) and the reports held in memory were written.
    pub spool_recoveries: Counter,
    /// `agent_send_paused_total`: attempts to remove sent events from a failing spool;
    /// sending waits (nothing is re-sent) until one succeeds.
    pub send_paused: Counter,
    /// `agent_publish_recoveries_total`: times publishing worked again after fatal errors
    /// (a rotated key, a re-created hub) without a restart.
    pub publish_recoveries: Counter,
}

/// A telemetry event: emitting it logs once (rate-limited) and counts once.
pub trait InternalEvent {
    /// Logs and counts the event.
    fn emit(self, counters: &Counters);
}

/// A source read failed; the report carries `state = unknown`.
#[derive(Debug)]
pub struct SourceFailed<'a> {
    /// Source type (`http`, `pexip`, …).
    pub source: &'static str,
    /// Error kind (`timeout`, `status`, `parse`, …).
    pub error_type: &'static str,
    /// The error, for the log line.
    pub error: &'a (dyn std::error::Error + 'static),
}

impl InternalEvent for SourceFailed<'_> {
    fn emit(self, c: &Counters) {
        c.source_errors.add(1);
        if c.source_errors.should_log() {
            tracing::warn!(
                stage = "source",
                source = self.source,
                error_type = self.error_type,
                errors_total = c.source_errors.get(),
                "source read failed: {}; reporting state unknown",
                error_chain(self.error)
            );
        }
    }
}

/// The publisher refused a batch.
#[derive(Debug)]
pub struct PublishFailed<'a> {
    /// The error (its kind says transient or fatal).
    pub error: &'a crate::publish::PublishError,
    /// Events in the refused batch (they stay spooled).
    pub events: usize,
    /// Delay before the next attempt, when one will be made.
    pub retry_in: Option<std::time::Duration>,
}

impl InternalEvent for PublishFailed<'_> {
    fn emit(self, c: &Counters) {
        let counter = if self.error.is_transient() {
            &c.publish_transient_errors
        } else {
            &c.publish_fatal_errors
        };
        counter.add(1);
        if !self.error.is_transient() {
            // Every fatal attempt is logged: they are minutes apart.
            let retry = self
                .retry_in
                .map(|d| format!("retrying in {}", humantime::format_duration(d)))
                .unwrap_or_else(|| "not retrying (shutting down)".to_owned());
            tracing::error!(stage = "publish", error_type = "fatal", events = self.events,
                errors_total = counter.get(), retry_in = ?self.retry_in,
                "{}; sending paused, reports keep being spooled; {retry}; check the connection string's SharedAccessKeyName/SharedAccessKey and the event hub name: a key restored in Event Hubs or a re-created hub is picked up at the next retry, a new connection string for this agent needs a restart",
                error_chain(self.error));
        } else if counter.should_log() {
            tracing::warn!(stage = "publish", error_type = "transient", events = self.events,
                retry_in = ?self.retry_in, errors_total = counter.get(), "{:#}",
                error_chain(self.error));
        }
    }
}

/// The spool was full: its oldest events were deleted unsent.
#[derive(Debug)]
pub struct SpoolDropped {
    /// Events dropped now.
    pub count: u64,
    /// Configured bound, bytes.
    pub max_bytes: u64,
}

impl InternalEvent for SpoolDropped {
    fn emit(self, c: &Counters) {
        c.spool_dropped.add(self.count);
        if c.spool_dropped.should_log() {
            tracing::warn!(stage = "spool", error_type = "spool_full", dropped = self.count,
                dropped_total = c.spool_dropped.get(), max_bytes = self.max_bytes,
                "spool full: dropped the oldest events; raise spool.max_bytes or restore the connection to Event Hubs");
        }
    }
}

/// A spool operation failed.
#[derive(Debug)]
pub struct SpoolFailed<'a> {
    /// What was being done (`append`, `read`, `remove`).
    pub operation: &'static str,
    /// The error.
    pub error: &'a crate::spool::SpoolError,
}

impl InternalEvent for SpoolFailed<'_> {
    fn emit(self, c: &Counters) {
        c.spool_errors.add(1);
        if c.spool_errors.should_log() {
            tracing::error!(
                stage = "spool",
                error_type = self.operation,
                "spool {} failed: {:#}",
                self.operation,
                error_chain(self.error)
            );
        }
    }
}

/// The reports that could not be written to the spool are held in memory; this is the
/// append failure (disk full, I/O error).
#[derive(Debug)]
pub struct SpoolAppendFailed<'a> {
    /// The error.
    pub error: &'a crate::spool::SpoolError,
    /// Reports now held in memory.
    pub held: usize,
}

impl InternalEvent for SpoolAppendFailed<'_> {
    fn emit(self, c: &Counters) {
        c.spool_errors.add(1);
        // The first failure of an episode always logs (other spool errors share the limit).
        if self.held <= 1 || c.spool_errors.should_log() {
            tracing::error!(stage = "spool", error_type = "append", held_in_memory = self.held,
                "spool append failed: {}; holding {} reports in memory (at most {}, then the oldest are dropped and counted) and retrying at every report; free disk space in spool.dir",
                error_chain(self.error), self.held, crate::spool::MEMORY_QUEUE_EVENTS);
        }
    }
}

/// The spool could not be written and the in-memory queue overflowed: its oldest reports
/// were dropped.
#[derive(Debug)]
pub struct MemoryQueueDropped {
    /// Reports dropped now.
    pub count: u64,
    /// True when the agent is stopping (the held reports cannot be kept), false when the
    /// queue overflowed.
    pub at_shutdown: bool,
}

impl InternalEvent for MemoryQueueDropped {
    fn emit(self, c: &Counters) {
        c.spool_dropped.add(self.count);
        if self.at_shutdown {
            tracing::warn!(stage = "spool", error_type = "memory_queue_shutdown", dropped = self.count,
                dropped_total = c.spool_dropped.get(),
                "stopping while the spool is unwritable: {} reports held in memory are lost; free disk space in spool.dir",
                self.count);
        } else if c.spool_dropped.should_log() {
            tracing::warn!(stage = "spool", error_type = "memory_queue_full", dropped = self.count,
                dropped_total = c.spool_dropped.get(),
                "spool unwritable and the in-memory queue is full: dropped the oldest reports; free disk space in spool.dir");
        }
    }
}

/// The spool works again after failures; the reports held in memory were written.
#[derive(Debug)]
pub struct SpoolRecovered {
    /// Reports written from memory.
    pub written: u64,
    /// Times the database was reopened so far.
    pub reopens: u64,
}

impl InternalEvent for SpoolRecovered {
    fn emit(self, c: &Counters) {
        c.spool_recoveries.add(1);
        tracing::info!(
            stage = "spool",
            written = self.written,
            reopens = self.reopens,
            "spool writable again: reopened it and wrote {} reports held in memory",
            self.written
        );
    }
}

/// A spool file could not be read and was moved aside; a fresh spool replaces it.
#[derive(Debug)]
pub struct SpoolQuarantined<'a> {
    /// What was moved, where, and what is known about it.
    pub file: &'a crate::spool::Quarantined,
}

impl InternalEvent for SpoolQuarantined<'_> {
    fn emit(self, c: &Counters) {
        c.spool_quarantined.add(1);
        let q = self.file;
        let lost = match q.events_known {
            Some(n) => format!("{n} unsent reports"),
            None => "an unknown number of unsent reports".to_owned(),
        };
        tracing::error!(stage = "spool", error_type = "corrupt", from = %q.from.display(),
            to = %q.to.display(), bytes = q.bytes,
            "spool {} cannot be read ({}); moved it to {} ({} bytes) and started an empty spool: {} it held are lost (at most {} bytes of records); keep the file for diagnosis or delete it",
            q.from.display(), q.reason, q.to.display(), q.bytes, lost, q.bytes);
    }
}

/// Sent events could not be removed from the spool: sending waits until they can be,
/// rather than sending them again.
#[derive(Debug)]
pub struct SendPaused<'a> {
    /// The removal error.
    pub error: &'a crate::spool::SpoolError,
    /// Sent events still in the spool.
    pub sent_unremoved: usize,
    /// Delay before the next removal attempt.
    pub retry_in: std::time::Duration,
}

impl InternalEvent for SendPaused<'_> {
    fn emit(self, c: &Counters) {
        c.send_paused.add(1);
        if c.send_paused.should_log() {
            tracing::error!(stage = "spool", error_type = "remove", sent_unremoved = self.sent_unremoved,
                retry_in = ?self.retry_in, paused_total = c.send_paused.get(),
                "spool cannot remove {} sent events: {}; sending paused until it can (nothing is sent twice meanwhile); free disk space in spool.dir",
                self.sent_unremoved, error_chain(self.error));
        }
    }
}

/// Publishing works again after fatal errors.
#[derive(Debug)]
pub struct PublishRecovered {
    /// Fatal attempts before this success.
    pub failed_attempts: u32,
}

impl InternalEvent for PublishRecovered {
    fn emit(self, c: &Counters) {
        c.publish_recoveries.add(1);
        tracing::info!(
            stage = "publish",
            failed_attempts = self.failed_attempts,
            "publishing works again after {} fatal errors; sending the spooled reports",
            self.failed_attempts
        );
    }
}

/// A report failed schema validation and was not spooled.
#[derive(Debug)]
pub struct EventInvalid<'a> {
    /// The validation error.
    pub error: &'a tcpulse_schema::DeadLetterReason,
}

impl InternalEvent for EventInvalid<'_> {
    fn emit(self, c: &Counters) {
        c.events_invalid.add(1);
        if c.events_invalid.should_log() {
            tracing::error!(
                stage = "report",
                error_type = self.error.kind(),
                "report not spooled, it would be a dead letter: {}; check the identity settings",
                self.error
            );
        }
    }
}

/// A health value could not be measured (it is left out of the report).
#[derive(Debug)]
pub struct HealthFailed<'a> {
    /// Which value (`cert_expiry_days`, …).
    pub what: &'static str,
    /// The error.
    pub error: &'a (dyn std::error::Error + 'static),
}

impl InternalEvent for HealthFailed<'_> {
    fn emit(self, c: &Counters) {
        c.health_errors.add(1);
        if c.health_errors.should_log() {
            tracing::warn!(
                stage = "health",
                error_type = self.what,
                "cannot measure {}: {}",
                self.what,
                error_chain(self.error)
            );
        }
    }
}

/// Events were written to the spool.
#[derive(Debug)]
pub struct EventsSpooled {
    /// How many.
    pub count: u64,
}

impl InternalEvent for EventsSpooled {
    fn emit(self, c: &Counters) {
        c.events_spooled.add(self.count);
        tracing::trace!(stage = "spool", count = self.count, "events spooled");
    }
}

/// The publisher accepted events and they left the spool.
#[derive(Debug)]
pub struct EventsSent {
    /// How many.
    pub count: u64,
}

impl InternalEvent for EventsSent {
    fn emit(self, c: &Counters) {
        c.events_sent.add(self.count);
        tracing::trace!(stage = "publish", count = self.count, "events sent");
    }
}

/// `err` and its sources, joined by `: ` (like anyhow's `{:#}`).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_counts_once_and_logs_rate_limited() {
        let c = Counters::default();
        for _ in 0..3 {
            SourceFailed {
                source: "file",
                error_type: "io",
                error: &std::io::Error::other("gone"),
            }
            .emit(&c);
        }
        assert_eq!(c.source_errors.get(), 3);
        SpoolDropped {
            count: 5,
            max_bytes: 10,
        }
        .emit(&c);
        assert_eq!(c.spool_dropped.get(), 5);
        let e = crate::publish::PublishError::fatal("denied");
        PublishFailed {
            error: &e,
            events: 2,
            retry_in: None,
        }
        .emit(&c);
        assert_eq!(
            (
                c.publish_fatal_errors.get(),
                c.publish_transient_errors.get()
            ),
            (1, 0)
        );
        // The first should_log of a fresh counter is true, the next within a minute false.
        let fresh = Counter::default();
        assert!(fresh.should_log());
        assert!(!fresh.should_log());
    }
}
