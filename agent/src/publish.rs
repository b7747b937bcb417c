//! The transport seam: what the agent needs from an Event Hubs producer, and two local
//! publishers (file, null) for demos, benchmarks and tests.
//!
//! The agent hands a [`Publisher`] one partition key and a batch of encoded event bodies at
//! a time, in spool order. `Ok(())` means *every* body was accepted by the service; only
//! then does the agent delete them from its spool. Any error leaves the whole batch
//! spooled, so a publisher may accept part of a batch and still report an error: the
//! accepted events are sent again later (at-least-once; the collector drops the repeats by
//! `(instance, boot, seq)`).
//!
//! The Event Hubs adapter ([`eventhubs::EventHubsPublisher`], on
//! `tcpulse-eventhub::client`) sends each body as one message with `content-type: application/json`, the
//! application property `schema` = [`tcpulse_schema::SCHEMA_V1`] and the given partition key,
//! and map its errors onto [`PublishError::Transient`] (connection lost, timeout, server
//! busy, token expired and refreshed) or [`PublishError::Fatal`] (unauthorised, entity not
//! found, message too large: retrying cannot help).
//!
//! Its settings, the `[publish]` section (the target, the Event Hubs connection string,
//! batch sizes, retry delays), are in [`config`].

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use tcpulse_eventhub::identity::CredentialStats;

pub mod config;
pub mod eventhubs;

/// Any error, boxed, as the cause of a [`PublishError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a batch was not accepted, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Worth retrying with backoff: connection lost, timeout, throttled, service busy.
    #[error("publish failed (transient, will retry)")]
    Transient(#[source] BoxError),
    /// Retrying soon cannot help (bad credentials, hub not found, body rejected): the agent
    /// keeps spooling and retries on a slow schedule (`publish.fatal_retry_initial` doubling
    /// to `publish.fatal_retry_max`), so a key restored in Event Hubs or a re-created hub needs no restart.
    #[error("publish failed (fatal: needs an operator; retrying slowly)")]
    Fatal(#[source] BoxError),
}

impl PublishError {
    /// A transient error with a plain message as its cause.
    pub fn transient(msg: impl Into<String>) -> Self {
        PublishError::Transient(msg.into().into())
    }

    /// A fatal error with a plain message as its cause.
    pub fn fatal(msg: impl Into<String>) -> Self {
        PublishError::Fatal(msg.into().into())
    }

    /// True for [`PublishError::Transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, PublishError::Transient(_))
    }

    /// `transient` or `fatal`: the `error_type` label of the publish-error counter.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::Transient(_) => "transient",
            PublishError::Fatal(_) => "fatal",
        }
    }
}

/// Sends batches of encoded status events to Event Hubs (or a stand-in).
///
/// Object safe, so the binary can choose a publisher at run time (`Box<dyn Publisher>`).
/// Calls never overlap: the agent awaits each `send` before the next.
pub trait Publisher: Send + Sync + 'static {
    /// Sends `bodies` (JSON status events, in order) with `partition_key` (the connector
    /// FQDN). Resolves to `Ok(())` only when every body was accepted.
    fn send<'a>(
        &'a self,
        partition_key: &'a str,
        bodies: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Ordered teardown at shutdown (close links, end session, close connection).
    /// Called once, after the last `send`. The default does nothing.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The Entra ID credential's numbers, when the publisher authenticates with one (each
    /// report carries `agent.credential_expires_in_seconds`). The default has none.
    fn credential(&self) -> Option<Arc<CredentialStats>> {
        None
    }
}

impl<P: Publisher + ?Sized> Publisher for Box<P> {
    fn send<'a>(
        &'a self,
        partition_key: &'a str,
        bodies: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        (**self).send(partition_key, bodies)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        (**self).close()
    }

    fn credential(&self) -> Option<Arc<CredentialStats>> {
        (**self).credential()
    }
}

impl<P: Publisher + ?Sized> Publisher for Arc<P> {
    fn send<'a>(
        &'a self,
        partition_key: &'a str,
        bodies: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        (**self).send(partition_key, bodies)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        (**self).close()
    }

    fn credential(&self) -> Option<Arc<CredentialStats>> {
        (**self).credential()
    }
}

/// Accepts everything and only counts it (benchmarks, tests).
#[derive(Debug, Default)]
pub struct NullPublisher {
    events: AtomicU64,
    batches: AtomicU64,
}

impl NullPublisher {
    /// A publisher that has accepted nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events accepted so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// `send` calls accepted so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

impl Publisher for NullPublisher {
    fn send<'a>(
        &'a self,
        _partition_key: &'a str,
        bodies: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        self.events
            .fetch_add(bodies.len() as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

/// Appends each event as one JSON line to a file (demos, benchmarks, the closing-note
/// footprint run). A line is `{"partition_key":"…","event":{…}}`; the file is flushed
/// after every batch, so a batch counts as accepted once it is in the OS.
pub struct FilePublisher {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl fmt::Debug for FilePublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilePublisher")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FilePublisher {
    /// Opens (creating, appending) `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(FilePublisher {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    fn write_batch(&self, partition_key: &str, bodies: &[Bytes]) -> std::io::Result<()> {
        let key = serde_json::to_string(partition_key).map_err(std::io::Error::other)?;
        let mut buf = Vec::with_capacity(bodies.iter().map(|b| b.len() + 40).sum());
        for body in bodies {
            buf.extend_from_slice(b"{\"partition_key\":");
            buf.extend_from_slice(key.as_bytes());
            buf.extend_from_slice(b",\"event\":");
            buf.extend_from_slice(body);
            buf.extend_from_slice(b"}\n");
        }
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("publish file lock poisoned"))?;
        file.write_all(&buf)?;
        file.flush()
    }
}

impl Publisher for FilePublisher {
    fn send<'a>(
        &'a self,
        partition_key: &'a str,
        bodies: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        // A local write of a few KiB: doing it inline is cheaper than a blocking-pool hop.
        let result = self
            .write_batch(partition_key, &bodies)
            .map_err(|e| PublishError::Transient(Box::new(e)));
        Box::pin(async move { result })
    }
}

/// Why the configured publisher could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The publish file could not be opened.
    #[error("cannot open publish file {path}; fix the path or permissions")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// This build cannot publish to the configured target.
    #[error("{0}")]
    Unavailable(&'static str),
    /// The Event Hubs settings are not usable (the message never contains the key).
    #[error("Event Hubs: {0}")]
    EventHubs(String),
}

/// Which publisher a config leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupPlan {
    /// [`FilePublisher`] on this path.
    File(PathBuf),
    /// The Event Hubs producer.
    EventHubs,
    /// Not possible in this build, and why.
    Unavailable(&'static str),
}

/// Which publisher `cfg` asks for, without opening anything.
pub fn plan(cfg: &config::PublishConfig) -> SetupPlan {
    match &cfg.target {
        config::PublishTarget::File(p) => SetupPlan::File(p.clone()),
        config::PublishTarget::EventHubs { .. } => SetupPlan::EventHubs,
    }
}

/// Builds the publisher `cfg` asks for.
pub fn from_config(cfg: &config::PublishConfig) -> Result<Box<dyn Publisher>, SetupError> {
    match plan(cfg) {
        SetupPlan::File(path) => {
            let p = FilePublisher::open(&path).map_err(|source| SetupError::File {
                path: path.display().to_string(),
                source,
            })?;
            Ok(Box::new(p))
        }
        SetupPlan::EventHubs => match &cfg.target {
            config::PublishTarget::EventHubs {
                ca_file,
                custom_endpoint,
                transport,
                websocket_endpoint,
                proxy,
                ..
            } => {
                let options = tcpulse_eventhub::client::ClientOptions {
                    extra_ca_file: ca_file.clone(),
                    custom_endpoint: custom_endpoint.clone(),
                    transport: *transport,
                    websocket_endpoint: websocket_endpoint.clone(),
                    proxy: proxy.clone(),
                    ..Default::default()
                };
                let (config, credential) = config::client_config(&cfg.target, options)
                    .map_err(|e| SetupError::EventHubs(e.to_string()))?
                    .ok_or(SetupError::Unavailable("inconsistent publish plan"))?;
                Ok(Box::new(
                    eventhubs::EventHubsPublisher::new(config).with_credential(credential),
                ))
            }
            config::PublishTarget::File(_) => {
                Err(SetupError::Unavailable("inconsistent publish plan"))
            }
        },
        SetupPlan::Unavailable(why) => Err(SetupError::Unavailable(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_publisher_writes_one_json_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let p = FilePublisher::open(&path).unwrap();
        p.send(
            "tc.example.com",
            vec![
                Bytes::from_static(b"{\"a\":1}"),
                Bytes::from_static(b"{\"a\":2}"),
            ],
        )
        .await
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["partition_key"], "tc.example.com");
        assert_eq!(lines[1]["event"]["a"], 2);
    }

    #[tokio::test]
    async fn boxed_publisher_forwards_and_counts() {
        let inner = Arc::new(NullPublisher::new());
        let boxed: Box<dyn Publisher> = Box::new(inner.clone());
        boxed
            .send("k", vec![Bytes::from_static(b"x"); 3])
            .await
            .unwrap();
        assert_eq!((inner.events(), inner.batches()), (3, 1));
        assert!(PublishError::transient("x").is_transient());
        assert_eq!(PublishError::fatal("x").kind(), "fatal");
    }
}
