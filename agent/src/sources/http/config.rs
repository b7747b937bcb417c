//! Configuration of the `http` source.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sources::extract::Pointers;

/// `[source] type = "http"`: GETs a JSON status document (or a bare number) at every poll
/// and reads the values with `pointers`.
///
/// ```toml
/// [source]
/// type = "http"
/// url = "http://127.0.0.1:8080/status"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// URL to GET, `http://` or `https://`. Required.
    pub url: String,
    /// Longest a request may take (humantime). Default: `2s`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Maximum call capacity when the document does not say. Default: 16.
    #[serde(default = "default_max_calls")]
    pub max_calls: u32,
    /// Where the values sit in the document. Default: `/call_count`, `/max_calls`,
    /// `/media_load`, `/state`.
    #[serde(default)]
    pub pointers: Pointers,
}

/// Default of [`HttpConfig::timeout`].
pub const fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
/// Default of [`HttpConfig::max_calls`].
pub const fn default_max_calls() -> u32 {
    tcpulse_schema::capacity::MAX_CALLS_PER_INSTANCE
}

impl HttpConfig {
    /// Checks the values; the message says which setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "source.url = {:?} must start with http:// or https://",
                self.url
            ));
        }
        if self.timeout.is_zero() {
            return Err("source.timeout must be more than 0s".to_owned());
        }
        self.pointers.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_example_parses() {
        let c: HttpConfig = toml::from_str("url = \"http://127.0.0.1:1/s\"").unwrap();
        assert_eq!(c.timeout, Duration::from_secs(2));
        c.validate().unwrap();
        assert!(HttpConfig {
            url: "ftp://x".into(),
            ..c
        }
        .validate()
        .is_err());
    }
}
