//! Appends batches to a file (blocking I/O on the blocking pool).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::sinks::{Sink, WriteError};

/// The line-protocol file sink.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    fsync: bool,
}

impl FileSink {
    /// Opens `path` for appending (creating it and its directory).
    pub fn open(path: &Path, fsync: bool) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileSink {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(file)),
            fsync,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, e: &std::io::Error) -> WriteError {
        WriteError::Retryable {
            error_type: "io".into(),
            message: format!("{}: {e}", self.path.display()),
            retry_after: None,
        }
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        "file"
    }

    fn write<'a>(&'a self, body: &'a Bytes) -> BoxFuture<'a, Result<(), WriteError>> {
        let file = self.file.clone();
        let body = body.clone();
        let fsync = self.fsync;
        Box::pin(async move {
            let result = tokio::task::spawn_blocking(move || {
                let mut f = file
                    .lock()
                    .map_err(|_| std::io::Error::other("file sink lock poisoned"))?;
                f.write_all(&body)?;
                if fsync {
                    f.sync_data()?;
                }
                Ok::<(), std::io::Error>(())
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            result.map_err(|e| self.io_error(&e))
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), WriteError>> {
        let file = self.file.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let f = file
                    .lock()
                    .map_err(|_| std::io::Error::other("file sink lock poisoned"))?;
                f.sync_all()
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| self.io_error(&e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_are_appended_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/points.lp");
        let sink = FileSink::open(&path, true).unwrap();
        sink.write(&Bytes::from_static(b"a f=1i 1\n"))
            .await
            .unwrap();
        sink.write(&Bytes::from_static(b"b f=2i 2\n"))
            .await
            .unwrap();
        sink.flush().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a f=1i 1\nb f=2i 2\n"
        );
    }
}
