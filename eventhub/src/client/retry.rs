//! Bounded retries with exponential backoff ([`crate::backoff`]).

use std::time::Duration;

use super::config::RetryOptions;
use crate::backoff::ExponentialBackoff;

/// Counts attempts and hands out backoff delays for transient failures.
#[derive(Debug)]
pub(crate) struct Retrier {
    backoff: ExponentialBackoff,
    attempts: u32,
    max_retries: u32,
    max_delay: Duration,
}

impl Retrier {
    pub(crate) fn new(options: &RetryOptions) -> Self {
        Retrier {
            backoff: options.backoff(),
            attempts: 0,
            max_retries: options.max_retries,
            max_delay: Duration::from_millis(options.max_backoff_ms),
        }
    }

    /// The delay before the next attempt, or `None` when the failure is fatal or the retries
    /// are used up.
    pub(crate) fn next_delay(&mut self, transient: bool) -> Option<Duration> {
        if !transient || self.attempts >= self.max_retries {
            return None;
        }
        self.attempts += 1;
        Some(self.backoff.next_backoff().min(self.max_delay))
    }

    /// Retries used so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_growing_and_never_for_fatal() {
        let mut r = Retrier::new(&RetryOptions {
            max_retries: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 250,
        });
        assert_eq!(r.next_delay(false), None);
        let d: Vec<Duration> = std::iter::from_fn(|| r.next_delay(true)).collect();
        assert_eq!(d.len(), 3);
        assert!(d[0] >= Duration::from_millis(90) && d[0] <= Duration::from_millis(110));
        assert!(d[1] > d[0]);
        assert!(d[2] <= Duration::from_millis(250));
        assert_eq!(r.next_delay(true), None);
    }
}
