//! Configuration of the `command` source.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sources::extract::Pointers;

/// `[source] type = "command"`: runs a program at every poll (no shell) and parses its
/// standard output: a bare number (the call count) or a JSON document read with
/// `pointers`. A non-zero exit, a timeout or unparsable output is a failed read.
///
/// ```toml
/// [source]
/// type = "command"
/// command = ["powershell", "-NoProfile", "-File", "C:\\tcpulse\\calls.ps1"]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Program and arguments; the first element is the program. No shell is involved, so
    /// quote nothing. Required.
    pub command: Vec<String>,
    /// Longest a run may take (humantime); the process is killed after it. Default: `5s`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Maximum call capacity when the output does not say. Default: 16.
    #[serde(default = "default_max_calls")]
    pub max_calls: u32,
    /// Where the values sit in a JSON output. Default: `/call_count`, `/max_calls`,
    /// `/media_load`, `/state`.
    #[serde(default)]
    pub pointers: Pointers,
}

/// Default of [`CommandConfig::timeout`].
pub const fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
/// Default of [`CommandConfig::max_calls`].
pub const fn default_max_calls() -> u32 {
    tcpulse_schema::capacity::MAX_CALLS_PER_INSTANCE
}

impl CommandConfig {
    /// Checks the values; the message says which setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.command.first().is_none_or(|p| p.is_empty()) {
            return Err("source.command is empty; give the program and its arguments, e.g. [\"/usr/local/bin/calls\"]".to_owned());
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
        let c: CommandConfig =
            toml::from_str("command = [\"echo\", \"3\"]\ntimeout = \"2s\"").unwrap();
        assert_eq!((c.command.len(), c.timeout.as_secs()), (2, 2));
        assert!(toml::from_str::<CommandConfig>("command = []")
            .unwrap()
            .validate()
            .is_err());
        assert!(toml::from_str::<CommandConfig>("command = [\"x\"]\ntimeout = \"soon\"").is_err());
    }
}
