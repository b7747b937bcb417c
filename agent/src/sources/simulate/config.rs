//! Configuration of the `simulate` source.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[source] type = "simulate"`: call counts following a working-day curve (a morning peak
/// around 10:00, a lunch dip, an afternoon peak around 14:30, quiet nights and weekends)
/// with deterministic noise.
///
/// ```toml
/// [source]
/// type = "simulate"
/// peak_calls = 14
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateConfig {
    /// Calls at the busiest moment of a working day, before `load_factor`. Default: 12.
    #[serde(default = "default_peak_calls")]
    pub peak_calls: u32,
    /// Maximum call capacity, reported as `max_calls`; the count never exceeds it.
    /// Default: 16 (Pexip's per-instance maximum).
    #[serde(default = "default_max_calls")]
    pub max_calls: u32,
    /// Seed of the noise: the same seed and clock always give the same counts.
    /// Default: derived from the instance name, so the instances of a fleet differ.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Load-shift knob: multiplies the daily curve (1.5 = a 50 % surge, 0.5 = a quiet day).
    /// Default: 1.0.
    #[serde(default = "default_load_factor")]
    pub load_factor: f64,
    /// A file holding a number that replaces `load_factor` while the agent runs; re-read
    /// at every sample, so `echo 1.8 > FILE` shows a surge live. Default: none.
    #[serde(default)]
    pub load_factor_file: Option<PathBuf>,
    /// Shift of the simulated local clock ahead of UTC (humantime, e.g. `1h` for CET;
    /// `19h` is UTC-5 of the next day; `6h` shows the afternoon peak in the morning).
    /// Default: `0s`.
    #[serde(default = "default_time_shift", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub time_shift: Duration,
    /// Length of one simulated day (humantime); `10m` plays a whole day in ten minutes.
    /// Default: `24h`.
    #[serde(default = "default_day_length", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub day_length: Duration,
}

/// Default of [`SimulateConfig::peak_calls`].
pub const fn default_peak_calls() -> u32 {
    12
}
/// Default of [`SimulateConfig::max_calls`].
pub const fn default_max_calls() -> u32 {
    tcpulse_schema::capacity::MAX_CALLS_PER_INSTANCE
}
/// Default of [`SimulateConfig::load_factor`].
pub const fn default_load_factor() -> f64 {
    1.0
}
/// Default of [`SimulateConfig::time_shift`].
pub const fn default_time_shift() -> Duration {
    Duration::ZERO
}
/// Default of [`SimulateConfig::day_length`].
pub const fn default_day_length() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            peak_calls: default_peak_calls(),
            max_calls: default_max_calls(),
            seed: None,
            load_factor: default_load_factor(),
            load_factor_file: None,
            time_shift: default_time_shift(),
            day_length: default_day_length(),
        }
    }
}

impl SimulateConfig {
    /// Checks the values; the message says which setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.load_factor.is_finite() && self.load_factor >= 0.0) {
            return Err(format!(
                "source.load_factor = {} must be a number >= 0",
                self.load_factor
            ));
        }
        if self.day_length < Duration::from_secs(60) {
            return Err("source.day_length must be at least 1m".to_owned());
        }
        if self.max_calls == 0 {
            return Err("source.max_calls must be at least 1".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_example_parses_with_defaults() {
        let c: SimulateConfig = toml::from_str("peak_calls = 14").unwrap();
        assert_eq!(
            c,
            SimulateConfig {
                peak_calls: 14,
                ..SimulateConfig::default()
            }
        );
        let c: SimulateConfig =
            toml::from_str("day_length = \"10m\"\ntime_shift = \"6h\"").unwrap();
        assert_eq!(
            (c.day_length.as_secs(), c.time_shift.as_secs()),
            (600, 6 * 3600)
        );
        assert!(toml::from_str::<SimulateConfig>("peak = 3").is_err());
        assert!(SimulateConfig {
            load_factor: -1.0,
            ..SimulateConfig::default()
        }
        .validate()
        .is_err());
    }
}
