//! Delivering one batch to one sink: retries with capped exponential backoff
//! ([`tcpulse_eventhub::backoff`]) that honour `Retry-After`; splitting on 413, 400 and 422.
//!
//! A store that refuses a batch (413: too large; 400/422: it cannot take some line) gets
//! it again in halves, on line boundaries, until each part is stored or is one line the
//! store refuses on its own: only that line is dead-lettered and counted. Resending lines
//! the store already kept is safe: InfluxDB 1.x stores the good lines of a batch it
//! answers `400 partial write`, and a point written again (same series and timestamp)
//! replaces itself. Isolating `k` bad lines among `n` costs at most about
//! `2k·log2(n)` requests (`2n - 1` if every line is bad); none is counted as an error
//! until a single line is refused.
//!
//! A retryable failure is retried for as long as it takes: nothing is dropped, and the
//! partition stops reading while its in-flight batches wait (lag grows, memory does not).
//! Only `give_up` (shutdown after its grace period) ends the attempts; the batch is then
//! [`Delivery::Abandoned`], is not checkpointed, and is read again after a restart.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tcpulse_eventhub::backoff::ExponentialBackoff;
use tokio_util::sync::CancellationToken;

use super::{Sink, WriteError};
use crate::dead_letter::DeadLetterFile;
use crate::internal_events::{
    DeadLetterWriteFailed, InternalEvent, SinkBatchRejected, SinkRecovered, SinkRequestFailed,
};
use crate::metrics::{sink_labels, Metrics};

/// Retry timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First backoff delay.
    pub initial: Duration,
    /// Largest backoff delay.
    pub max: Duration,
    /// Largest `Retry-After` honoured (a longer one is cut to this).
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBackoff::new(self.initial, self.max).with_jitter(0.2)
    }

    /// The wait before the next attempt: the server's `Retry-After` (capped, and never
    /// below `initial` so a `Retry-After: 0` cannot spin), else the next backoff step.
    pub fn delay(
        &self,
        retry_after: Option<Duration>,
        backoff: &mut ExponentialBackoff,
    ) -> Duration {
        match retry_after {
            Some(r) => r.min(self.max_retry_after).max(self.initial),
            None => backoff.next_backoff(),
        }
    }
}

/// How a batch ended for one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Every line stored.
    Stored,
    /// Some or all lines rejected by the store and dead-lettered (the rest stored).
    Rejected {
        /// HTTP status of the (last) rejection.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// Shutdown came first; not stored, will be replayed.
    Abandoned,
}

impl Delivery {
    /// Stored or dead-lettered: the checkpoint may move past it.
    pub fn is_done(&self) -> bool {
        !matches!(self, Delivery::Abandoned)
    }
}

/// What a delivery reports to.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryContext<'a> {
    /// Counters.
    pub metrics: &'a Metrics,
    /// Where rejected batches go.
    pub dead_letters: Option<&'a DeadLetterFile>,
    /// The partition the batch comes from.
    pub partition: &'a str,
    /// Cancelled when attempts must stop.
    pub give_up: &'a CancellationToken,
}

fn count_lines(b: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', b).count() as u64
}

/// Splits at the line boundary nearest the middle; `None` for a single line.
fn split_half(body: &Bytes) -> Option<(Bytes, Bytes)> {
    let mid = body.len() / 2;
    let after = body[mid..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| mid + i + 1);
    let before = body[..mid].iter().rposition(|&b| b == b'\n').map(|i| i + 1);
    let cut = [before, after]
        .into_iter()
        .flatten()
        .filter(|&c| c > 0 && c < body.len())
        .min_by_key(|&c| c.abs_diff(mid))?;
    Some((body.slice(..cut), body.slice(cut..)))
}

/// Delivers `body` to `sink`. See the module docs.
pub async fn deliver(
    sink: &dyn Sink,
    body: Bytes,
    policy: &RetryPolicy,
    ctx: DeliveryContext<'_>,
) -> Delivery {
    let labels = sink_labels(sink.name());
    let mut parts = vec![body];
    let mut outcome = Delivery::Stored;
    let mut backoff = policy.backoff();
    let mut failing = false;
    while let Some(part) = parts.pop() {
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = sink.write(&part) => r,
                _ = ctx.give_up.cancelled() => return Delivery::Abandoned,
            };
            let took = started.elapsed().as_secs_f64();
            ctx.metrics
                .sink_request_seconds
                .get_or_create(&labels)
                .observe(took);
            ctx.metrics
                .sink_last_request_seconds
                .get_or_create(&labels)
                .set(took);
            match result {
                Ok(()) => {
                    ctx.metrics
                        .sink_points
                        .get_or_create(&labels)
                        .inc_by(count_lines(&part));
                    if failing {
                        SinkRecovered { sink: sink.name() }.emit(ctx.metrics);
                        failing = false;
                    }
                    backoff.reset();
                    break;
                }
                Err(WriteError::TooLarge { message }) => {
                    if let Some(rejected) =
                        split_or_reject(sink, &part, 413, message, &mut parts, ctx)
                    {
                        outcome = rejected;
                    }
                    break;
                }
                Err(WriteError::Rejected { status, message }) => {
                    if let Some(rejected) =
                        split_or_reject(sink, &part, status, message, &mut parts, ctx)
                    {
                        outcome = rejected;
                    }
                    break;
                }
                Err(WriteError::Retryable {
                    error_type,
                    message,
                    retry_after,
                }) => {
                    failing = true;
                    let wait = policy.delay(retry_after, &mut backoff);
                    SinkRequestFailed {
                        sink: sink.name(),
                        error_type: &error_type,
                        message: &message,
                        retry_in: wait,
                    }
                    .emit(ctx.metrics);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = ctx.give_up.cancelled() => return Delivery::Abandoned,
                    }
                }
            }
        }
    }
    outcome
}

/// A refused `part` of several lines is split in two and both halves go back on `parts`
/// (first half next), so the lines the store takes are stored and only the lines it refuses
/// on their own are dead-lettered; a single refused line is dead-lettered here and its
/// rejection returned.
fn split_or_reject(
    sink: &dyn Sink,
    part: &Bytes,
    status: u16,
    message: String,
    parts: &mut Vec<Bytes>,
    ctx: DeliveryContext<'_>,
) -> Option<Delivery> {
    match split_half(part) {
        Some((a, b)) => {
            parts.push(b);
            parts.push(a);
            None
        }
        None => {
            reject(sink, part, status, &message, ctx);
            Some(Delivery::Rejected { status, message })
        }
    }
}

fn reject(sink: &dyn Sink, part: &Bytes, status: u16, message: &str, ctx: DeliveryContext<'_>) {
    SinkBatchRejected {
        sink: sink.name(),
        partition: ctx.partition,
        status,
        message,
    }
    .emit(ctx.metrics);
    if let Some(dl) = ctx.dead_letters {
        if let Err(e) = dl.write_batch(ctx.partition, sink.name(), status, message, part) {
            DeadLetterWriteFailed {
                error: &e.to_string(),
            }
            .emit(ctx.metrics);
        }
    }
}

/// The give-up token for shutdown: cancelled `grace` after `shutdown` is.
pub fn give_up_after(shutdown: &CancellationToken, grace: Duration) -> CancellationToken {
    let give_up = CancellationToken::new();
    let (s, g) = (shutdown.clone(), give_up.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = s.cancelled() => {
                tokio::select! {
                    _ = tokio::time::sleep(grace) => g.cancel(),
                    _ = g.cancelled() => {}
                }
            }
            _ = g.cancelled() => {}
        }
    });
    give_up
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    /// A sink that answers from a script, then succeeds; records what it was sent.
    #[derive(Debug)]
    struct Scripted {
        script: Mutex<Vec<Result<(), WriteError>>>,
        seen: Mutex<Vec<(tokio::time::Instant, Bytes)>>,
    }

    impl Sink for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn write<'a>(&'a self, body: &'a Bytes) -> BoxFuture<'a, Result<(), WriteError>> {
            Box::pin(async move {
                self.seen
                    .lock()
                    .unwrap()
                    .push((tokio::time::Instant::now(), body.clone()));
                let mut s = self.script.lock().unwrap();
                if s.is_empty() {
                    Ok(())
                } else {
                    s.remove(0)
                }
            })
        }
    }

    fn scripted(script: Vec<Result<(), WriteError>>) -> Scripted {
        Scripted {
            script: Mutex::new(script),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(60),
        }
    }

    fn retryable(retry_after: Option<u64>) -> Result<(), WriteError> {
        Err(WriteError::Retryable {
            error_type: "http_503".into(),
            message: "busy".into(),
            retry_after: retry_after.map(Duration::from_secs),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_and_capped_then_backoff_applies() {
        let sink = scripted(vec![
            retryable(Some(7)),
            retryable(Some(3600)),
            retryable(None),
            retryable(Some(0)),
        ]);
        let m = Metrics::new();
        let give_up = CancellationToken::new();
        let ctx = DeliveryContext {
            metrics: &m,
            dead_letters: None,
            partition: "0",
            give_up: &give_up,
        };
        let body = Bytes::from_static(b"m f=1i 1\n");
        assert_eq!(deliver(&sink, body, &policy(), ctx).await, Delivery::Stored);
        let seen = sink.seen.lock().unwrap();
        let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert_eq!(gaps[0], Duration::from_secs(7), "Retry-After: 7");
        assert_eq!(
            gaps[1],
            Duration::from_secs(60),
            "Retry-After capped at max_retry_after"
        );
        assert!(
            gaps[2] >= Duration::from_millis(80) && gaps[2] <= Duration::from_millis(120),
            "first backoff step: {:?}",
            gaps[2]
        );
        assert_eq!(
            gaps[3],
            Duration::from_millis(100),
            "Retry-After: 0 waits `initial`"
        );
        let text = m.render();
        assert!(
            text.contains(
                "tcpulse_collector_sink_errors_total{sink=\"scripted\",error_type=\"http_503\"} 4"
            ),
            "{text}"
        );
        assert!(
            text.contains("tcpulse_collector_sink_points_total{sink=\"scripted\"} 1"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_batch_is_dead_lettered_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetterFile::open(
            dir.path().join("dl.jsonl"),
            crate::dead_letter::DeadLetterLimits {
                max_body_bytes: 1 << 20,
                max_file_bytes: 1 << 20,
            },
        )
        .unwrap();
        let sink = scripted(vec![Err(WriteError::Rejected {
            status: 400,
            message: "unable to parse".into(),
        })]);
        let m = Metrics::new();
        let give_up = CancellationToken::new();
        let ctx = DeliveryContext {
            metrics: &m,
            dead_letters: Some(&dl),
            partition: "5",
            give_up: &give_up,
        };
        let out = deliver(&sink, Bytes::from_static(b"bad line\n"), &policy(), ctx).await;
        assert_eq!(
            out,
            Delivery::Rejected {
                status: 400,
                message: "unable to parse".into()
            }
        );
        assert!(out.is_done());
        assert_eq!(sink.seen.lock().unwrap().len(), 1, "no retry");
        let text = std::fs::read_to_string(dir.path().join("dl.jsonl")).unwrap();
        let rec: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(rec["partition"], "5");
        assert_eq!(rec["message"], "unable to parse");
        assert_eq!(rec["body"], "bad line\n");
    }

    /// A store like InfluxDB 1.x: it keeps every line of a batch but those containing
    /// `bad`, and answers 400 `partial write` when there was one.
    #[derive(Debug, Default)]
    struct PartialWrites {
        stored: Mutex<Vec<String>>,
        requests: Mutex<usize>,
    }

    impl Sink for PartialWrites {
        fn name(&self) -> &str {
            "partial"
        }
        fn write<'a>(&'a self, body: &'a Bytes) -> BoxFuture<'a, Result<(), WriteError>> {
            Box::pin(async move {
                *self.requests.lock().unwrap() += 1;
                let text = std::str::from_utf8(body).unwrap();
                let (bad, good): (Vec<&str>, Vec<&str>) =
                    text.lines().partition(|l| l.contains("bad"));
                self.stored
                    .lock()
                    .unwrap()
                    .extend(good.iter().map(|l| l.to_string()));
                if bad.is_empty() {
                    return Ok(());
                }
                Err(WriteError::Rejected {
                    status: 400,
                    message: format!(
                        "partial write: unable to parse '{}': invalid tag format dropped=0",
                        bad[0]
                    ),
                })
            })
        }
    }

    /// Delivers `lines` (those at `bad` marked bad) to a [`PartialWrites`] store; returns
    /// the outcome, the store, the metrics text and the dead-letter records.
    async fn deliver_with_bad_lines(
        lines: usize,
        bad: &[usize],
    ) -> (Delivery, PartialWrites, String, Vec<serde_json::Value>) {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetterFile::open(
            dir.path().join("dl.jsonl"),
            crate::dead_letter::DeadLetterLimits {
                max_body_bytes: 1 << 20,
                max_file_bytes: 1 << 20,
            },
        )
        .unwrap();
        let body: String = (0..lines)
            .map(|i| {
                let tag = if bad.contains(&i) { "bad" } else { "ok" };
                format!("m,t={tag}{i} f=1i {i}\n")
            })
            .collect();
        let sink = PartialWrites::default();
        let m = Metrics::new();
        let give_up = CancellationToken::new();
        let ctx = DeliveryContext {
            metrics: &m,
            dead_letters: Some(&dl),
            partition: "3",
            give_up: &give_up,
        };
        let out = deliver(&sink, Bytes::from(body), &policy(), ctx).await;
        let records = std::fs::read_to_string(dir.path().join("dl.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (out, sink, m.render(), records)
    }

    #[tokio::test(start_paused = true)]
    async fn r12_a_400_dead_letters_only_the_bad_line_of_30() {
        let (out, sink, metrics, records) = deliver_with_bad_lines(30, &[17]).await;
        assert!(
            matches!(&out, Delivery::Rejected { status: 400, message } if message.contains("t=bad17")),
            "{out:?}"
        );
        assert!(out.is_done());
        let stored: std::collections::BTreeSet<String> =
            sink.stored.lock().unwrap().iter().cloned().collect();
        assert_eq!(stored.len(), 29, "{stored:?}");
        assert!(stored.iter().all(|l| !l.contains("bad")));
        assert!(
            metrics.contains("tcpulse_collector_sink_points_total{sink=\"partial\"} 29"),
            "{metrics}"
        );
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0]["body"], "m,t=bad17 f=1i 17\n");
        assert_eq!(records[0]["lines"], 1);
        assert_eq!(records[0]["status"], 400);
        assert!(
            metrics.contains(
                "tcpulse_collector_sink_errors_total{sink=\"partial\",error_type=\"rejected_400\"} 1"
            ),
            "{metrics}"
        );
        // Bisection: at most 2 requests per level of a 30-line batch, plus the first.
        let requests = *sink.requests.lock().unwrap();
        assert!(requests <= 11, "{requests} requests");
    }

    #[tokio::test(start_paused = true)]
    async fn r12_a_400_isolates_every_bad_line_and_stores_the_rest() {
        let (out, sink, metrics, records) = deliver_with_bad_lines(30, &[0, 14, 15, 29]).await;
        assert!(matches!(out, Delivery::Rejected { status: 400, .. }));
        let stored: std::collections::BTreeSet<String> =
            sink.stored.lock().unwrap().iter().cloned().collect();
        assert_eq!(stored.len(), 26);
        let bodies: Vec<&str> = records
            .iter()
            .map(|r| r["body"].as_str().unwrap())
            .collect();
        assert_eq!(
            bodies,
            [
                "m,t=bad0 f=1i 0\n",
                "m,t=bad14 f=1i 14\n",
                "m,t=bad15 f=1i 15\n",
                "m,t=bad29 f=1i 29\n"
            ]
        );
        assert!(
            metrics.contains("tcpulse_collector_sink_points_total{sink=\"partial\"} 26"),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                "tcpulse_collector_sink_errors_total{sink=\"partial\",error_type=\"rejected_400\"} 4"
            ),
            "{metrics}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn too_large_splits_on_line_boundaries_until_it_fits() {
        let too_large = || {
            Err(WriteError::TooLarge {
                message: "413".into(),
            })
        };
        let sink = scripted(vec![too_large(), too_large()]);
        let m = Metrics::new();
        let give_up = CancellationToken::new();
        let ctx = DeliveryContext {
            metrics: &m,
            dead_letters: None,
            partition: "0",
            give_up: &give_up,
        };
        let body = Bytes::from_static(b"a 1\nb 2\nc 3\nd 4\n");
        assert_eq!(deliver(&sink, body, &policy(), ctx).await, Delivery::Stored);
        let sent: Vec<Bytes> = sink
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(
            sent,
            vec![
                Bytes::from_static(b"a 1\nb 2\nc 3\nd 4\n"),
                Bytes::from_static(b"a 1\nb 2\n"),
                Bytes::from_static(b"a 1\n"),
                Bytes::from_static(b"b 2\n"),
                Bytes::from_static(b"c 3\nd 4\n"),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn give_up_abandons_a_batch_the_store_never_takes() {
        let sink = scripted((0..1000).map(|_| retryable(None)).collect());
        let m = Metrics::new();
        let shutdown = CancellationToken::new();
        let give_up = give_up_after(&shutdown, Duration::from_secs(5));
        shutdown.cancel();
        let ctx = DeliveryContext {
            metrics: &m,
            dead_letters: None,
            partition: "0",
            give_up: &give_up,
        };
        let started = tokio::time::Instant::now();
        let out = deliver(&sink, Bytes::from_static(b"a 1\n"), &policy(), ctx).await;
        assert_eq!(out, Delivery::Abandoned);
        assert!(!out.is_done());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
