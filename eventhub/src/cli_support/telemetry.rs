//! Named telemetry: the one way the agent and the collector report an operational problem.
//!
//! Each operational error or drop is a type that implements [`InternalEvent`]. Emitting it
//! increments exactly one counter, in whatever store the binary uses (the [`Telemetry`] the
//! event names: the agent's atomics, reported in its events, or the collector's Prometheus
//! registry). It also logs one line with the `stage` and `error_type` fields, as often as
//! the [`LogLimiter`] allows. The event's type is its name; its counter's name is
//! stable, because dashboards and tests query it.
//!
//! # The log-rate policy
//!
//! Both binaries use the same policy, kept per key (an event's [`LogRate::Limited`] key,
//! such as `sink/influxdb_v2/http_503`):
//!
//! - The first occurrence of a key logs at the event's level.
//! - Repeats are counted. While less than [`REMIND_EVERY`] has passed since the key's last
//!   line, a repeat logs only at debug level. The first repeat after that logs at the
//!   event's level again, as a reminder whose `repeats` field counts the occurrences since
//!   the previous line (itself included). So a key gets at most one line a minute at its
//!   level.
//! - When the condition ends (a store accepts writes again, a file can be written), the
//!   event that says so ([`InternalEvent::ends`]) clears every key with that prefix. The next
//!   occurrence then logs at once.
//!
//! Two kinds of event log every occurrence ([`LogRate::Every`]): events that are minutes
//! apart, and losses the operator must see each time. Recovery notices log only when they
//! end a condition that was logged ([`LogRate::IfEnded`]).
//!
//! [`log_event!`](crate::log_event) writes an event's line with `stage`, `error_type` and
//! (on a reminder) `repeats` first; [`log_bypasses`] finds the `warn!`/`error!` lines that
//! skip all this, for the binaries' tests.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::Level;

/// The least time between two lines of one key at its level (reminders).
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// Where a binary's events go: its counters (the [`InternalEvent`]s of that binary know
/// which one each increments) and its [`LogLimiter`].
pub trait Telemetry {
    /// The limiter of this binary's log lines.
    fn log_limiter(&self) -> &LogLimiter;
}

/// How often an event's line is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRate {
    /// Every occurrence logs at the event's level: events minutes apart, or losses the
    /// operator must see one by one.
    Every,
    /// The [policy](self#the-log-rate-policy), for occurrences that share this key.
    Limited(String),
    /// Logs at the event's level only when its [`InternalEvent::ends`] cleared a key that
    /// had logged (a recovery worth a line); otherwise writes nothing.
    IfEnded,
}

/// The line the policy chose for one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Level to log at.
    pub level: Level,
    /// On a reminder: the occurrences of the key since its previous line, this one
    /// included. `None` otherwise (the field is then left out of the line).
    pub repeats: Option<u64>,
}

impl Line {
    /// A plain line at `level`.
    pub fn at(level: Level) -> Line {
        Line {
            level,
            repeats: None,
        }
    }
}

/// What [`LogLimiter::occur`] decided for one occurrence of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occurrence {
    /// The key's first occurrence (or the first since it was cleared): log it.
    First,
    /// A repeat within [`REMIND_EVERY`] of the key's last line: debug only.
    Repeat,
    /// A repeat at least [`REMIND_EVERY`] after the key's last line: log it again.
    Reminder {
        /// Occurrences since the previous line, this one included.
        repeats: u64,
    },
}

impl Occurrence {
    /// The line for an event of `level`: `level` for the first occurrence and reminders,
    /// debug (or `level`, if it is already more verbose) for repeats.
    pub fn line(self, level: Level) -> Line {
        match self {
            Occurrence::First => Line::at(level),
            Occurrence::Repeat => Line::at(level.max(Level::DEBUG)),
            Occurrence::Reminder { repeats } => Line {
                level,
                repeats: Some(repeats),
            },
        }
    }
}

/// A named operational event: one counter, one line.
///
/// Implementors describe the event ([`stage`](Self::stage),
/// [`error_type`](Self::error_type), [`level`](Self::level), [`rate`](Self::rate)), count it
/// and write its line with [`log_event!`](crate::log_event). Callers only [`emit`](Self::emit).
pub trait InternalEvent: Sized {
    /// The binary's counters and log limiter.
    type Telemetry: Telemetry + ?Sized;

    /// The `stage` field (and label): where in the pipeline it happened.
    fn stage(&self) -> &'static str;

    /// The `error_type` field (and label); `None` for notices that are not errors (a
    /// recovery, a count of events sent).
    fn error_type(&self) -> Option<Cow<'_, str>>;

    /// The level of its line.
    fn level(&self) -> Level;

    /// How often it logs.
    fn rate(&self) -> LogRate;

    /// The key prefix of the condition this event ends, if any: every key that starts with
    /// it is cleared, so the next occurrence logs at once.
    fn ends(&self) -> Option<String> {
        None
    }

    /// Increments the event's one counter. (A notice that only ends a condition may have
    /// none.)
    fn count(&self, telemetry: &Self::Telemetry);

    /// Writes the line with [`log_event!`](crate::log_event).
    fn log(&self, telemetry: &Self::Telemetry, line: Line);

    /// Counts the event, then logs it as its [`rate`](Self::rate) and the policy allow.
    fn emit(self, telemetry: &Self::Telemetry) {
        self.count(telemetry);
        let limiter = telemetry.log_limiter();
        let ended = self.ends().is_some_and(|prefix| limiter.clear(&prefix));
        let line = match self.rate() {
            LogRate::Every => Some(Line::at(self.level())),
            LogRate::Limited(key) => Some(limiter.occur(&key).line(self.level())),
            LogRate::IfEnded => ended.then(|| Line::at(self.level())),
        };
        if let Some(line) = line {
            self.log(telemetry, line);
        }
    }
}

/// The state of one key: when it last logged, and the occurrences since.
#[derive(Debug, Clone, Copy)]
struct KeyState {
    last_line: Instant,
    unlogged: u64,
}

type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

/// The [log-rate policy](self#the-log-rate-policy)'s memory: per key, when it last logged.
/// One per process, shared by its tasks.
pub struct LogLimiter {
    keys: Mutex<BTreeMap<String, KeyState>>,
    clock: Clock,
}

impl std::fmt::Debug for LogLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLimiter")
            .field("keys", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new()
    }
}

impl LogLimiter {
    /// A limiter on the monotonic clock.
    pub fn new() -> Self {
        LogLimiter::with_clock(Instant::now)
    }

    /// A limiter that reads the time from `clock` (tests step it by hand).
    pub fn with_clock(clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        LogLimiter {
            keys: Mutex::new(BTreeMap::new()),
            clock: Box::new(clock),
        }
    }

    /// Records an occurrence of `key` and says how to log it.
    pub fn occur(&self, key: &str) -> Occurrence {
        let now = (self.clock)();
        let mut keys = self.lock();
        let Some(state) = keys.get_mut(key) else {
            keys.insert(
                key.to_owned(),
                KeyState {
                    last_line: now,
                    unlogged: 0,
                },
            );
            return Occurrence::First;
        };
        state.unlogged += 1;
        if now.saturating_duration_since(state.last_line) < REMIND_EVERY {
            return Occurrence::Repeat;
        }
        let repeats = state.unlogged;
        *state = KeyState {
            last_line: now,
            unlogged: 0,
        };
        Occurrence::Reminder { repeats }
    }

    /// Forgets every key that starts with `prefix` (its condition ended), so its next
    /// occurrence logs at once. True when one was forgotten (it had logged).
    pub fn clear(&self, prefix: &str) -> bool {
        let mut keys = self.lock();
        let ended: Vec<String> = keys
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for k in &ended {
            keys.remove(k);
        }
        !ended.is_empty()
    }

    /// True when the next occurrence of `key` logs at once (never seen, or cleared).
    pub fn is_armed(&self, key: &str) -> bool {
        !self.lock().contains_key(key)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, KeyState>> {
        // A panic while holding the lock leaves a consistent map: keep using it.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes an [`InternalEvent`]'s line: `log_event!(self, line, field = value, …, "message",
/// args…)` logs at `line.level` with `stage`, `error_type` (when the event has one) and
/// `repeats` (on a reminder) before the given fields. `tracing::event!` field syntax
/// (`%`, `?`) applies.
#[macro_export]
macro_rules! log_event {
    ($event:expr, $line:expr, $($rest:tt)+) => {{
        let event = $event;
        let line: $crate::cli_support::telemetry::Line = $line;
        let stage = $crate::cli_support::telemetry::InternalEvent::stage(event);
        let error_type = $crate::cli_support::telemetry::InternalEvent::error_type(event);
        let error_type: ::core::option::Option<&str> = error_type.as_deref();
        $crate::__log_at!(
            line.level,
            stage = stage,
            error_type = error_type,
            repeats = line.repeats,
            $($rest)+
        )
    }};
}

/// `tracing::event!` at a level known only at run time (tracing wants a constant).
#[doc(hidden)]
#[macro_export]
macro_rules! __log_at {
    ($level:expr, $($rest:tt)+) => {{
        use $crate::cli_support::telemetry::__private::tracing;
        let level: tracing::Level = $level;
        if level == tracing::Level::ERROR {
            tracing::event!(tracing::Level::ERROR, $($rest)+)
        } else if level == tracing::Level::WARN {
            tracing::event!(tracing::Level::WARN, $($rest)+)
        } else if level == tracing::Level::INFO {
            tracing::event!(tracing::Level::INFO, $($rest)+)
        } else if level == tracing::Level::DEBUG {
            tracing::event!(tracing::Level::DEBUG, $($rest)+)
        } else {
            tracing::event!(tracing::Level::TRACE, $($rest)+)
        }
    }};
}

#[doc(hidden)]
pub mod __private {
    pub use tracing;
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

/// What gives a line away as a warning or an error that skips [`InternalEvent`].
const BYPASS_MARKS: [&str; 4] = ["warn!(", "error!(", "Level::WARN", "Level::ERROR"];

/// The `path:line: text` of every warning or error log line in the `.rs` files under `src`
/// that does not go through an [`InternalEvent`]: `warn!(`, `error!(`, `Level::WARN` or
/// `Level::ERROR` outside comments, outside `internal_events.rs` (or an `internal_events`
/// folder), outside test code (a `tests.rs` file, or an item marked `#[cfg(test)]`)
/// and beyond the `allowed` count of each `(path under src, count)` (the caller says why
/// each is allowed).
pub fn log_bypasses(src: &Path, allowed: &[(&str, usize)]) -> std::io::Result<Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(src)
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "internal_events.rs"
            || rel.starts_with("internal_events/")
            || rel == "tests.rs"
            || rel.ends_with("/tests.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        let hits: Vec<String> = outside_tests(&text)
            .filter(|(_, l)| !l.trim_start().starts_with("//"))
            .filter(|(_, l)| BYPASS_MARKS.iter().any(|m| l.contains(m)))
            .map(|(i, l)| format!("{rel}:{}: {}", i + 1, l.trim()))
            .collect();
        let allowance = allowed
            .iter()
            .find(|(path, _)| *path == rel)
            .map_or(0, |(_, n)| *n);
        if hits.len() > allowance {
            found.extend(hits);
        }
    }
    Ok(found)
}

/// The numbered lines of `text` outside the items marked `#[cfg(test)]` (`mod tests;`, or
/// a module or function up to its closing brace). The layout is rustfmt's: an item ends at
/// the `}` line at its own indentation. (A line of a multi-line string that looks like that
/// ends the skip early, so the scan errs towards reporting, never towards hiding.)
fn outside_tests(text: &str) -> impl Iterator<Item = (usize, &str)> {
    #[derive(Clone, Copy)]
    enum Where {
        Code,
        /// After `#[cfg(test)]` at this indentation, before the item's `{` or `;`.
        TestHead(usize),
        /// In the test item's body.
        TestBody(usize),
    }
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut at = Where::Code;
    text.lines().enumerate().filter(move |(_, line)| {
        let end = line.trim_end();
        match at {
            Where::Code if line.trim() == "#[cfg(test)]" => at = Where::TestHead(indent(line)),
            Where::Code => return true,
            Where::TestHead(i) if end.ends_with('{') => at = Where::TestBody(i),
            Where::TestHead(i) if end.ends_with(';') && indent(line) == i => at = Where::Code,
            Where::TestHead(_) => {}
            Where::TestBody(i) => {
                if indent(line) == i && matches!(end.trim_start(), "}" | "};") {
                    at = Where::Code;
                }
            }
        }
        false
    })
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
