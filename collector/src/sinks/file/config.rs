//! Settings of the line-protocol file sink.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::sink::FileSink;

/// Appends every batch to a line-protocol file. It is the sink when no store is
/// configured, so a first run shows exactly what would be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File to append to (created with its directory). Default: `tcpulse-points.lp`.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// fsync after each batch, so an acknowledged batch survives a power cut.
    /// Default: true.
    #[serde(default = "default_fsync")]
    pub fsync: bool,
}

fn default_path() -> PathBuf {
    PathBuf::from("tcpulse-points.lp")
}

const fn default_fsync() -> bool {
    true
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig {
            path: default_path(),
            fsync: default_fsync(),
        }
    }
}

/// Why the file sink could not be built.
#[derive(Debug, thiserror::Error)]
#[error("file sink cannot open {path}: {source}; fix the directory permissions or set `sinks.file.path`")]
pub struct FileSinkBuildError {
    /// The file.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

impl FileSinkConfig {
    /// Opens the file for appending.
    pub fn build(&self) -> Result<FileSink, FileSinkBuildError> {
        FileSink::open(&self.path, self.fsync).map_err(|source| FileSinkBuildError {
            path: self.path.clone(),
            source,
        })
    }
}
