//! Bounded waits for a condition: [`poll_until`] (async) and [`poll_until_blocking`], with a
//! [`Poll`] that says how often to look and whether an error from the condition is
//! transient (retried; the last one is quoted on timeout) or fatal (ends the wait at once);
//! [`wait_for`] is [`poll_until`] with [`Poll::RETRY`].
//!
//! Each returns how long the condition took to hold; a timeout is an error naming what was
//! awaited.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// What an `Err` from the condition means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// A failed look (a store not answering yet): keep polling, quote it on timeout.
    Retry,
    /// An assertion inside the condition: fail the wait at once.
    Fail,
}

/// How to poll.
#[derive(Clone, Copy, Debug)]
pub struct Poll {
    /// Time between two looks.
    pub every: Duration,
    /// What an error from the condition means.
    pub on_error: OnError,
}

impl Poll {
    /// Every 100 ms, errors retried.
    pub const RETRY: Poll = Poll::every(100, OnError::Retry);
    /// Every 100 ms, errors fatal.
    pub const STRICT: Poll = Poll::every(100, OnError::Fail);

    /// Every `ms` milliseconds.
    pub const fn every(ms: u64, on_error: OnError) -> Poll {
        Poll {
            every: Duration::from_millis(ms),
            on_error,
        }
    }
}

/// One wait in progress: the clock and the last error seen.
struct Waiting<'a> {
    what: &'a str,
    timeout: Duration,
    on_error: OnError,
    start: Instant,
    last_err: Option<anyhow::Error>,
}

impl Waiting<'_> {
    fn new(what: &str, timeout: Duration, on_error: OnError) -> Waiting<'_> {
        Waiting {
            what,
            timeout,
            on_error,
            start: Instant::now(),
            last_err: None,
        }
    }

    /// `Some(elapsed)` once the condition holds, `None` to look again, an error on timeout
    /// or a fatal error.
    fn step(&mut self, looked: Result<bool>) -> Result<Option<Duration>> {
        match looked {
            Ok(true) => return Ok(Some(self.start.elapsed())),
            Ok(false) => {}
            Err(e) if self.on_error == OnError::Fail => return Err(e),
            Err(e) => self.last_err = Some(e),
        }
        if self.start.elapsed() > self.timeout {
            bail!(
                "timed out after {:?} waiting for {}{}",
                self.timeout,
                self.what,
                self.last_err
                    .take()
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        Ok(None)
    }
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes; an error from `cond` is
/// retried (and quoted on timeout).
pub async fn wait_for(
    what: &str,
    timeout: Duration,
    cond: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    poll_until(what, timeout, Poll::RETRY, cond).await
}

/// Polls `cond` as `poll` says until it holds or `timeout` passes.
pub async fn poll_until(
    what: &str,
    timeout: Duration,
    poll: Poll,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let mut w = Waiting::new(what, timeout, poll.on_error);
    loop {
        if let Some(took) = w.step(cond())? {
            return Ok(took);
        }
        tokio::time::sleep(poll.every).await;
    }
}

/// [`poll_until`] for code without a runtime: sleeps the thread between looks.
pub fn poll_until_blocking(
    what: &str,
    timeout: Duration,
    poll: Poll,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let mut w = Waiting::new(what, timeout, poll.on_error);
    loop {
        if let Some(took) = w.step(cond())? {
            return Ok(took);
        }
        std::thread::sleep(poll.every);
    }
}
