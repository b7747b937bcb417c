use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;

/// A clock the test moves by hand.
#[derive(Clone)]
struct ManualClock(Arc<Mutex<Instant>>);

impl ManualClock {
    fn new() -> Self {
        ManualClock(Arc::new(Mutex::new(Instant::now())))
    }

    fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    fn limiter(&self) -> LogLimiter {
        let clock = self.0.clone();
        LogLimiter::with_clock(move || *clock.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[test]
fn first_occurrence_logs_repeats_are_quiet_then_one_reminder_a_minute_with_the_count() {
    let clock = ManualClock::new();
    let limiter = clock.limiter();
    assert_eq!(limiter.occur("sink/v2/http_503"), Occurrence::First);
    for _ in 0..4 {
        clock.advance(Duration::from_secs(10));
        assert_eq!(limiter.occur("sink/v2/http_503"), Occurrence::Repeat);
    }
    // 50 s after the first line: still quiet; at 60 s the sixth repeat reminds.
    clock.advance(Duration::from_secs(10));
    assert_eq!(limiter.occur("sink/v2/http_503"), Occurrence::Repeat);
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        limiter.occur("sink/v2/http_503"),
        Occurrence::Reminder { repeats: 6 }
    );
    // The reminder restarts the minute.
    clock.advance(Duration::from_secs(59));
    assert_eq!(limiter.occur("sink/v2/http_503"), Occurrence::Repeat);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        limiter.occur("sink/v2/http_503"),
        Occurrence::Reminder { repeats: 2 }
    );
    // Keys are independent.
    assert_eq!(limiter.occur("sink/v2/timeout"), Occurrence::First);
}

#[test]
fn clear_rearms_every_key_under_the_prefix_and_only_those() {
    let clock = ManualClock::new();
    let limiter = clock.limiter();
    for key in [
        "source/1/open",
        "source/1/receive",
        "source/10/open",
        "sink/a/x",
    ] {
        assert_eq!(limiter.occur(key), Occurrence::First);
    }
    assert!(limiter.clear("source/1/"));
    assert!(limiter.is_armed("source/1/open") && limiter.is_armed("source/1/receive"));
    assert!(!limiter.is_armed("source/10/open") && !limiter.is_armed("sink/a/x"));
    assert_eq!(limiter.occur("source/1/open"), Occurrence::First);
    assert_eq!(limiter.occur("source/10/open"), Occurrence::Repeat);
    assert!(!limiter.clear("nothing/"), "nothing logged under it");
}

#[test]
fn repeats_log_at_debug_unless_the_event_is_more_verbose() {
    assert_eq!(Occurrence::First.line(Level::WARN), Line::at(Level::WARN));
    assert_eq!(
        Occurrence::Repeat.line(Level::ERROR),
        Line::at(Level::DEBUG)
    );
    assert_eq!(
        Occurrence::Repeat.line(Level::TRACE),
        Line::at(Level::TRACE)
    );
    assert_eq!(
        Occurrence::Reminder { repeats: 3 }.line(Level::ERROR),
        Line {
            level: Level::ERROR,
            repeats: Some(3)
        }
    );
}

/// A binary's telemetry in miniature: one counter.
struct Toy {
    failures: AtomicU64,
    limiter: LogLimiter,
}

impl Telemetry for Toy {
    fn log_limiter(&self) -> &LogLimiter {
        &self.limiter
    }
}

struct ToyFailed<'a> {
    what: &'a str,
}

impl InternalEvent for ToyFailed<'_> {
    type Telemetry = Toy;
    fn stage(&self) -> &'static str {
        "toy"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed("broken"))
    }
    fn level(&self) -> Level {
        Level::WARN
    }
    fn rate(&self) -> LogRate {
        LogRate::Limited(format!("toy/{}/broken", self.what))
    }
    fn count(&self, t: &Toy) {
        t.failures.fetch_add(1, Ordering::Relaxed);
    }
    fn log(&self, t: &Toy, line: Line) {
        crate::log_event!(
            self,
            line,
            what = self.what,
            failures_total = t.failures.load(Ordering::Relaxed),
            "toy {} broke",
            self.what
        );
    }
}

struct ToyRecovered<'a> {
    what: &'a str,
}

impl InternalEvent for ToyRecovered<'_> {
    type Telemetry = Toy;
    fn stage(&self) -> &'static str {
        "toy"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn level(&self) -> Level {
        Level::INFO
    }
    fn rate(&self) -> LogRate {
        LogRate::IfEnded
    }
    fn ends(&self) -> Option<String> {
        Some(format!("toy/{}/", self.what))
    }
    fn count(&self, _: &Toy) {}
    fn log(&self, _: &Toy, line: Line) {
        crate::log_event!(
            self,
            line,
            what = self.what,
            "toy {} works again",
            self.what
        );
    }
}

/// The log lines `f` writes (text format, no time, no colour), with the debug level on.
fn captured(f: impl FnOnce()) -> Vec<String> {
    let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let buf = buf.clone();
        move || CaptureWriter(buf.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_writer(writer)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.lock().unwrap_or_else(|e| e.into_inner()).clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn emit_counts_every_occurrence_and_logs_stage_error_type_and_repeats_as_the_policy_says() {
    let clock = ManualClock::new();
    let toy = Toy {
        failures: AtomicU64::new(0),
        limiter: clock.limiter(),
    };
    let lines = captured(|| {
        ToyFailed { what: "a" }.emit(&toy);
        ToyFailed { what: "a" }.emit(&toy);
        clock.advance(REMIND_EVERY);
        ToyFailed { what: "a" }.emit(&toy);
        ToyRecovered { what: "a" }.emit(&toy);
        ToyRecovered { what: "a" }.emit(&toy);
        ToyFailed { what: "a" }.emit(&toy);
    });
    assert_eq!(toy.failures.load(Ordering::Relaxed), 4);
    let want = [
        " WARN stage=\"toy\" error_type=\"broken\" what=\"a\" failures_total=1 toy a broke",
        "DEBUG stage=\"toy\" error_type=\"broken\" what=\"a\" failures_total=2 toy a broke",
        " WARN stage=\"toy\" error_type=\"broken\" repeats=2 what=\"a\" failures_total=3 toy a broke",
        " INFO stage=\"toy\" what=\"a\" toy a works again",
        // The second recovery ended nothing: no line.
        " WARN stage=\"toy\" error_type=\"broken\" what=\"a\" failures_total=4 toy a broke",
    ];
    // The text format puts the message first; compare on level, fields and message.
    let normal: Vec<String> = lines.iter().map(|l| reorder(l)).collect();
    assert_eq!(normal, want, "{lines:#?}");
}

/// `LEVEL message k=v…` (tracing's text layout) as `LEVEL k=v… message`.
fn reorder(line: &str) -> String {
    let (level, rest) = line.split_at(5);
    let rest = rest.trim_start();
    let fields_at = rest.find(" stage=").unwrap_or(rest.len());
    let (message, fields) = rest.split_at(fields_at);
    format!("{level}{fields} {message}")
}

#[test]
fn log_bypasses_finds_warnings_outside_events_tests_comments_and_the_allowance(
) -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path();
    std::fs::create_dir_all(src.join("pipeline"))?;
    let write = |rel: &str, text: &str| std::fs::write(src.join(rel), text);
    write(
        "internal_events.rs",
        "fn a() { tracing::warn!(\"fine\"); }\n",
    )?;
    write(
        "lib.rs",
        "// tracing::warn!(\"a comment\")\nfn a() {\n    tracing::info!(\"fine\");\n    tracing::error!(\"bypass\");\n}\n#[cfg(test)]\nmod tests {\n    fn t() {\n        let _ = b\"{\";\n        tracing::warn!(\"test\");\n    }\n}\n#[cfg(test)]\nmod more_tests;\nfn after_the_tests() { tracing::warn!(\"bypass\"); }\n",
    )?;
    write(
        "pipeline/partition.rs",
        "fn b() { tracing::event!(tracing::Level::WARN, \"bypass\"); }\n",
    )?;
    write(
        "pipeline/tests.rs",
        "fn t() { tracing::warn!(\"test\"); }\n",
    )?;
    write(
        "service.rs",
        "fn c() { tracing::error!(\"allowed\"); }\nfn d() { tracing::warn!(\"allowed\"); }\n",
    )?;
    let found = log_bypasses(src, &[("service.rs", 2)])?;
    assert_eq!(
        found,
        [
            "lib.rs:4: tracing::error!(\"bypass\");",
            "lib.rs:15: fn after_the_tests() { tracing::warn!(\"bypass\"); }",
            "pipeline/partition.rs:1: fn b() { tracing::event!(tracing::Level::WARN, \"bypass\"); }",
        ]
    );
    // One more than allowed: every line of the file is listed.
    assert_eq!(log_bypasses(src, &[("service.rs", 1)])?.len(), 5);
    Ok(())
}

#[test]
fn error_chain_joins_the_sources() {
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("spool append failed")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let e = Outer(std::io::Error::other("disk full"));
    assert_eq!(error_chain(&e), "spool append failed: disk full");
}
