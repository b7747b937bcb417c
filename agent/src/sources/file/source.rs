//! The `file` source: read the whole file, parse a number or JSON.

use super::FileConfig;
use crate::sources::extract::parse_reading;
use crate::sources::{Sample, SourceError};

/// Largest file read, bytes; a status file is a few hundred bytes.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads one file per poll.
#[derive(Debug)]
pub struct FileSource {
    cfg: FileConfig,
}

impl FileSource {
    /// A source reading `cfg.path`.
    pub fn new(cfg: FileConfig) -> Self {
        FileSource { cfg }
    }

    /// Reads and parses the file now.
    pub async fn sample(&mut self) -> Result<Vec<Sample>, SourceError> {
        let io = |source| SourceError::Io {
            path: self.cfg.path.display().to_string(),
            source,
        };
        let meta = tokio::fs::metadata(&self.cfg.path).await.map_err(io)?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(SourceError::Parse(format!(
                "{} is larger than {MAX_FILE_BYTES} bytes",
                self.cfg.path.display()
            )));
        }
        let text = tokio::fs::read_to_string(&self.cfg.path)
            .await
            .map_err(io)?;
        Ok(vec![parse_reading(
            &text,
            &self.cfg.pointers,
            self.cfg.max_calls,
        )?])
    }
}
