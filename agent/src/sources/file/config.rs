//! Configuration of the `file` source.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sources::extract::Pointers;

/// `[source] type = "file"`: reads a file at every poll. It holds either the call count as
/// a bare number or a JSON document read with `pointers`.
///
/// ```toml
/// [source]
/// type = "file"
/// path = "C:\\ProgramData\\Pexip\\calls.json"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file to read. Required.
    pub path: PathBuf,
    /// Maximum call capacity when the document does not say. Default: 16.
    #[serde(default = "default_max_calls")]
    pub max_calls: u32,
    /// Where the values sit in a JSON document. Default: `/call_count`, `/max_calls`,
    /// `/media_load`, `/state`.
    #[serde(default)]
    pub pointers: Pointers,
}

/// Default of [`FileConfig::max_calls`].
pub const fn default_max_calls() -> u32 {
    tcpulse_schema::capacity::MAX_CALLS_PER_INSTANCE
}

impl FileConfig {
    /// Checks the values; the message says which setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err(
                "source.path is empty; set it to the file holding the call count".to_owned(),
            );
        }
        self.pointers.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_example_parses() {
        let c: FileConfig = toml::from_str("path = \"/run/calls\"").unwrap();
        assert_eq!(
            (c.max_calls, c.pointers.call_count.as_str()),
            (16, "/call_count")
        );
        let c: FileConfig =
            toml::from_str("path = \"x\"\n[pointers]\ncall_count = \"/a/b\"").unwrap();
        assert_eq!(c.pointers.call_count, "/a/b");
        assert!(toml::from_str::<FileConfig>("path = \"x\"\n[pointers]\ncalls = \"/a\"").is_err());
    }
}
