//! Exponential backoff with jitter: the one retry schedule of the client, the agent and the
//! collector.
//!
//! It keeps the semantics of the `backoff` 0.4 crate it replaces (that crate is unmaintained,
//! RUSTSEC-2025-0012, and pulls `instant`, RUSTSEC-2024-0384): each step returns the current
//! interval randomized by ±`jitter` (uniform), then multiplies the interval by `multiplier`,
//! capping it at `max`. It never gives up: callers bound attempts themselves.

use std::time::Duration;

/// A retry schedule: `initial`, then ×`multiplier` per step up to `max`, each delay spread
/// by ±`jitter` of the current interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ExponentialBackoff {
    initial: Duration,
    current: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl ExponentialBackoff {
    /// Starts at `initial` and grows (×2 unless [`with_multiplier`](Self::with_multiplier))
    /// to `max` (raised to `initial` if smaller), without jitter unless
    /// [`with_jitter`](Self::with_jitter).
    pub fn new(initial: Duration, max: Duration) -> Self {
        ExponentialBackoff {
            initial,
            current: initial,
            max: max.max(initial),
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    /// Growth factor per step; values below 1 are taken as 1 (a constant delay).
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Spread of each delay as a fraction of the current interval (0.1 = ±10 %), clamped to
    /// 0..=1.
    #[must_use]
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The next delay; advances the schedule.
    pub fn next_backoff(&mut self) -> Duration {
        let delay = spread(self.current, self.jitter, rand::random::<f64>());
        self.current = if self.current.as_secs_f64() >= self.max.as_secs_f64() / self.multiplier {
            self.max
        } else {
            Duration::from_nanos((self.current.as_nanos() as f64 * self.multiplier).round() as u64)
        };
        delay
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// `interval` moved by `(2·unit − 1)·jitter` of itself; `unit` is uniform in `[0, 1)`.
fn spread(interval: Duration, jitter: f64, unit: f64) -> Duration {
    if jitter == 0.0 {
        return interval;
    }
    let nanos = interval.as_nanos() as f64;
    let delta = jitter * nanos;
    Duration::from_nanos((nanos - delta + unit * 2.0 * delta).round().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_max_without_jitter_and_resets() {
        let mut b = ExponentialBackoff::new(100 * MS, 500 * MS);
        let d: Vec<Duration> = (0..5).map(|_| b.next_backoff()).collect();
        assert_eq!(d, [100 * MS, 200 * MS, 400 * MS, 500 * MS, 500 * MS]);
        b.reset();
        assert_eq!(b.next_backoff(), 100 * MS);
    }

    #[test]
    fn multiplier_and_a_max_below_initial() {
        let mut b = ExponentialBackoff::new(1000 * MS, 10 * MS).with_multiplier(1.5);
        assert_eq!(b.next_backoff(), 1000 * MS);
        assert_eq!(b.next_backoff(), 1000 * MS);
        let mut b = ExponentialBackoff::new(100 * MS, 1000 * MS).with_multiplier(1.5);
        b.next_backoff();
        assert_eq!(b.next_backoff(), 150 * MS);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        assert_eq!(spread(100 * MS, 0.2, 0.0), 80 * MS);
        assert_eq!(spread(100 * MS, 0.2, 0.5), 100 * MS);
        assert!(spread(100 * MS, 0.2, 0.999_999) <= 120 * MS);
        let mut b = ExponentialBackoff::new(100 * MS, 100 * MS).with_jitter(0.2);
        for _ in 0..200 {
            let d = b.next_backoff();
            assert!(d >= 80 * MS && d <= 120 * MS, "{d:?}");
        }
        let spread_seen: std::collections::HashSet<Duration> =
            (0..50).map(|_| b.next_backoff()).collect();
        assert!(spread_seen.len() > 1, "jitter must vary the delay");
    }

    #[test]
    fn nonsense_factors_are_clamped() {
        let mut b = ExponentialBackoff::new(10 * MS, 100 * MS)
            .with_multiplier(f64::NAN)
            .with_jitter(-3.0);
        assert_eq!(b.next_backoff(), 10 * MS);
        assert_eq!(b.next_backoff(), 10 * MS);
    }
}
