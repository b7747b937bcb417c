//! The local store: one JSON file per partition under `checkpoint.dir`, written atomically.
//!
//! Layout, mapping one-to-one onto the Azure SDKs' Blob layout
//! (`<namespace>/<hub>/<consumer group>/checkpoint/<partition>`):
//!
//! ```text
//! <dir>/<namespace>/<hub>/<consumer group>/checkpoint/<partition>.json
//! ```
//!
//! Writes are atomic: write `<partition>.json.tmp`, fsync it, rename it over the old file,
//! fsync the directory. A file that cannot be read as a checkpoint is
//! [`CheckpointError::Corrupt`]: the pipeline reports it, moves it aside with
//! [`CheckpointStore::quarantine`] and starts the partition from the configured position.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::{parse_checkpoint, Checkpoint, CheckpointError, CheckpointScope, CheckpointStore};

/// Checkpoints as JSON files under a directory; see the module docs for layout and
/// atomicity.
#[derive(Debug, Clone)]
pub struct FileCheckpointStore {
    dir: PathBuf,
}

impl FileCheckpointStore {
    /// A store rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileCheckpointStore { dir: dir.into() }
    }

    /// The file that holds `partition`'s checkpoint.
    pub fn path(&self, scope: &CheckpointScope, partition: &str) -> PathBuf {
        self.dir
            .join(path_part(&scope.namespace))
            .join(path_part(&scope.hub))
            .join(path_part(&scope.consumer_group))
            .join("checkpoint")
            .join(format!("{}.json", path_part(partition)))
    }

    /// Checks that the root directory can be created and written (for `build`).
    pub fn check_writable(&self) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let probe = self.dir.join(".tcpulse-write-probe");
        fs::write(&probe, b"ok")?;
        fs::remove_file(&probe)
    }
}

/// A path component from arbitrary text: no separators, no `..`, nothing empty.
fn path_part(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '$') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        format!("_{cleaned}")
    } else {
        cleaned
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("checkpoint path has no parent directory"))?;
    fs::create_dir_all(dir)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    fs::File::open(dir)?.sync_all()
}

impl CheckpointStore for FileCheckpointStore {
    fn load<'a>(
        &'a self,
        scope: &'a CheckpointScope,
        partition: &'a str,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, CheckpointError>> {
        let path = self.path(scope, partition);
        let partition = partition.to_owned();
        Box::pin(async move {
            let location = path.display().to_string();
            let read = tokio::task::spawn_blocking(move || fs::read(&path))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let bytes = match read {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => {
                    return Err(CheckpointError::Io {
                        partition,
                        location,
                        source,
                    })
                }
            };
            parse_checkpoint(&bytes, &partition)
                .map(Some)
                .map_err(|detail| CheckpointError::Corrupt {
                    partition,
                    location,
                    detail,
                })
        })
    }

    fn store<'a>(
        &'a self,
        scope: &'a CheckpointScope,
        checkpoint: &'a Checkpoint,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        let path = self.path(scope, &checkpoint.partition);
        let partition = checkpoint.partition.clone();
        let bytes = serde_json::to_vec(checkpoint);
        Box::pin(async move {
            let location = path.display().to_string();
            let bytes = bytes.map_err(|e| CheckpointError::Io {
                partition: partition.clone(),
                location: location.clone(),
                source: std::io::Error::other(e),
            })?;
            tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|source| CheckpointError::Io {
                    partition,
                    location,
                    source,
                })
        })
    }

    fn quarantine<'a>(
        &'a self,
        scope: &'a CheckpointScope,
        partition: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CheckpointError>> {
        let path = self.path(scope, partition);
        let partition = partition.to_owned();
        Box::pin(async move {
            let location = path.display().to_string();
            let mut aside = path.as_os_str().to_owned();
            aside.push(format!(
                ".corrupt-{}",
                tcpulse_schema::Timestamp::now().unix_millis()
            ));
            let aside = PathBuf::from(aside);
            let shown = aside.display().to_string();
            match tokio::task::spawn_blocking(move || fs::rename(&path, &aside))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            {
                Ok(()) => Ok(Some(shown)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(CheckpointError::Io {
                    partition,
                    location,
                    source,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CHECKPOINT_VERSION;

    fn cp(partition: &str, seq: i64) -> Checkpoint {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            partition: partition.into(),
            sequence_number: seq,
            offset: format!("{}", seq * 100),
            enqueued_time_ms: Some(1_000 + seq),
            updated_at_ms: 2_000,
            state: Some(serde_json::json!({"k": 1})),
        }
    }

    fn scope() -> CheckpointScope {
        CheckpointScope::new("ns.servicebus.windows.net", "telemetry", "$Default")
    }

    #[tokio::test]
    async fn store_then_load_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        assert_eq!(store.load(&scope(), "0").await.unwrap(), None);
        store.store(&scope(), &cp("0", 5)).await.unwrap();
        store.store(&scope(), &cp("0", 9)).await.unwrap();
        assert_eq!(store.load(&scope(), "0").await.unwrap(), Some(cp("0", 9)));
        let path = store.path(&scope(), "0");
        assert!(path.ends_with("ns.servicebus.windows.net/telemetry/$Default/checkpoint/0.json"));
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(leftovers, vec!["0.json".to_string()], "no temp file left");
    }

    #[tokio::test]
    async fn corrupt_file_is_reported_not_treated_as_missing_and_can_be_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        let path = store.path(&scope(), "3");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        for (bytes, want) in [
            (&b"{\"version\":1,\"partit"[..], "EOF"),
            (&b""[..], "EOF"),
            (
                br#"{"version":1,"partition":"4","sequence_number":1,"offset":"1","enqueued_time_ms":1,"updated_at_ms":1}"#,
                "partition \"4\"",
            ),
            (
                br#"{"version":7,"partition":"3","sequence_number":1,"offset":"1","enqueued_time_ms":1,"updated_at_ms":1}"#,
                "version 7",
            ),
        ] {
            fs::write(&path, bytes).unwrap();
            let err = store.load(&scope(), "3").await.unwrap_err();
            assert_eq!(err.kind(), "corrupt");
            let msg = err.to_string();
            assert!(msg.contains(want), "{msg}");
            assert!(msg.contains("checkpoint.on_corrupt"), "{msg}");
        }
        let aside = store.quarantine(&scope(), "3").await.unwrap().unwrap();
        assert!(aside.contains(".corrupt-"));
        assert!(Path::new(&aside).exists());
        assert_eq!(store.load(&scope(), "3").await.unwrap(), None);
        assert_eq!(store.quarantine(&scope(), "3").await.unwrap(), None);
    }

    #[test]
    fn path_parts_cannot_escape_the_directory() {
        let store = FileCheckpointStore::new("/x");
        let s = CheckpointScope::new("..", "a/b", "");
        assert_eq!(
            store.path(&s, "../../etc"),
            PathBuf::from("/x/_../a_b/_/checkpoint/.._.._etc.json")
        );
    }
}
