//! The `simulate` source: a pure function of the clock, the seed and the load factor.

use tcpulse_schema::{Calls, Timestamp};

use super::SimulateConfig;
use crate::sources::{Sample, SourceError};

const DAY_MS: f64 = 86_400_000.0;
/// Length of a noise bucket in simulated time: the count changes at most this often.
const BUCKET_MS: f64 = 5.0 * 60_000.0;
/// Share of the weekday load on Saturdays and Sundays.
const WEEKEND_FACTOR: f64 = 0.12;

/// Produces simulated counts for one instance.
#[derive(Debug)]
pub struct SimulateSource {
    cfg: SimulateConfig,
    seed: u64,
}

/// SplitMix64: a tiny, well-mixed, deterministic hash of one word.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform number in [0, 1) from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn bump(h: f64, mean: f64, sd: f64) -> f64 {
    (-(h - mean).powi(2) / (2.0 * sd * sd)).exp()
}

/// Share of the peak load at `hour` (0..24) of a working day.
pub fn weekday_profile(hour: f64) -> f64 {
    0.04 + 0.96 * bump(hour, 10.0, 1.7).max(0.92 * bump(hour, 14.5, 1.9))
}

impl SimulateSource {
    /// A source for `instance` (whose name seeds the noise unless `cfg.seed` is set).
    pub fn new(cfg: SimulateConfig, instance: &str) -> Self {
        let seed = cfg.seed.unwrap_or_else(|| {
            // FNV-1a of the instance name: stable across runs and platforms.
            instance.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        });
        SimulateSource { cfg, seed }
    }

    /// The counters at `unix_ms` with this load factor.
    pub fn at(&self, unix_ms: i64, load_factor: f64) -> Calls {
        let speed = DAY_MS / (self.cfg.day_length.as_millis().max(1) as f64);
        let sim_ms = unix_ms as f64 * speed + self.cfg.time_shift.as_millis() as f64;
        let day = (sim_ms / DAY_MS).floor();
        let hour = (sim_ms - day * DAY_MS) / 3_600_000.0;
        // 1970-01-01 was a Thursday: Monday = 0 gives Thursday = 3.
        let weekday = (day as i64 + 3).rem_euclid(7);
        let week_factor = if weekday >= 5 { WEEKEND_FACTOR } else { 1.0 };
        let expected =
            f64::from(self.cfg.peak_calls) * load_factor * weekday_profile(hour) * week_factor;
        let bucket = (sim_ms / BUCKET_MS).floor() as i64 as u64;
        let h = splitmix64(self.seed ^ splitmix64(bucket));
        let noise = (unit(h) - 0.5) * 2.0 * (0.15 * expected).max(1.0);
        let max = self.cfg.max_calls;
        let calls = (expected + noise).round().clamp(0.0, f64::from(max)) as u32;
        let jitter = unit(splitmix64(h)) * 6.0 - 3.0;
        let load = (f64::from(calls) / f64::from(max.max(1)) * 88.0 + jitter)
            .round()
            .clamp(0.0, 100.0) as u8;
        Calls {
            call_count: calls,
            max_calls: max,
            planned_calls: None,
            media_load: Some(if calls == 0 { 0 } else { load }),
        }
    }

    fn load_factor(&self) -> Result<f64, SourceError> {
        let Some(path) = &self.cfg.load_factor_file else {
            return Ok(self.cfg.load_factor);
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // No file (yet): the configured factor applies.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self.cfg.load_factor),
            Err(source) => {
                return Err(SourceError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .ok_or_else(|| {
                SourceError::Parse(format!(
                    "load factor file {} must hold a number >= 0",
                    path.display()
                ))
            })
    }

    /// Reads the simulated counters now.
    pub async fn sample(&mut self) -> Result<Vec<Sample>, SourceError> {
        let factor = self.load_factor()?;
        Ok(vec![Sample::local(
            self.at(Timestamp::now().unix_millis(), factor),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-11-23 at `hour`:00 UTC, in ms.
    fn monday(hour: i64) -> i64 {
        Timestamp::parse_rfc3339("2026-11-23T00:00:00Z")
            .unwrap()
            .unix_millis()
            + hour * 3_600_000
    }

    fn src(seed: u64) -> SimulateSource {
        SimulateSource::new(
            SimulateConfig {
                seed: Some(seed),
                ..SimulateConfig::default()
            },
            "i",
        )
    }

    #[test]
    fn same_seed_same_counts_other_seed_differs() {
        let (a, b, c) = (src(7), src(7), src(8));
        let day: Vec<u32> = (0..288)
            .map(|i| a.at(monday(0) + i * 300_000, 1.0).call_count)
            .collect();
        let again: Vec<u32> = (0..288)
            .map(|i| b.at(monday(0) + i * 300_000, 1.0).call_count)
            .collect();
        let other: Vec<u32> = (0..288)
            .map(|i| c.at(monday(0) + i * 300_000, 1.0).call_count)
            .collect();
        assert_eq!(day, again);
        assert_ne!(day, other);
    }

    #[test]
    fn daily_shape_peaks_in_office_hours_and_is_quiet_at_night_and_weekends() {
        let s = src(1);
        let avg = |start: i64, hours: i64| {
            let n = hours * 12;
            (0..n)
                .map(|i| f64::from(s.at(start + i * 300_000, 1.0).call_count))
                .sum::<f64>()
                / n as f64
        };
        let morning_peak = avg(monday(9), 2);
        let night = avg(monday(1), 4);
        let saturday = avg(monday(5 * 24 + 9), 2);
        assert!(
            morning_peak > 9.0 && morning_peak <= 14.0,
            "peak {morning_peak}"
        );
        assert!(night < 1.5, "night {night}");
        assert!(saturday < 3.0, "saturday {saturday}");
        // Never above max_calls, even with a big load factor.
        assert!((0..288).all(|i| s.at(monday(0) + i * 300_000, 5.0).call_count <= 16));
        assert!(s.at(monday(10), 2.0).call_count > s.at(monday(10), 0.5).call_count);
    }

    #[test]
    fn day_length_compresses_a_day() {
        let s = SimulateSource::new(
            SimulateConfig {
                seed: Some(3),
                day_length: std::time::Duration::from_secs(600),
                ..SimulateConfig::default()
            },
            "i",
        );
        // Seventy real minutes are a simulated week: nights, weekends and office hours.
        let counts: Vec<u32> = (0..4200)
            .map(|i| s.at(monday(0) + i * 1000, 1.0).call_count)
            .collect();
        assert!(counts.iter().min() < Some(&2) && counts.iter().max() > Some(&9));
    }

    #[tokio::test]
    async fn load_factor_file_overrides_live() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("load");
        let mut s = SimulateSource::new(
            SimulateConfig {
                load_factor_file: Some(file.clone()),
                ..SimulateConfig::default()
            },
            "i",
        );
        assert_eq!(
            s.load_factor().unwrap(),
            1.0,
            "missing file: configured factor"
        );
        std::fs::write(&file, "1.8\n").unwrap();
        assert_eq!(s.load_factor().unwrap(), 1.8);
        std::fs::write(&file, "lots").unwrap();
        assert!(s.sample().await.is_err());
    }
}
