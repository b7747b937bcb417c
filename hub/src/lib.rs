//! `tcpulse-hub`: an in-process, Event Hubs-compatible AMQP 1.0 broker.
//!
//! It serves the quick start, every test, and anyone trying tcpulse without an Azure
//! subscription. The official `azure-eventhub` Python SDK is its judge: every quirk below
//! exists because that SDK (or the service it imitates) needs it.
//!
//! # Layout
//!
//! - [`config`]: [`HubConfig`], the user-facing settings.
//! - [`cli`]: the `tcpulse-hub` flags, mapped onto [`HubConfig`].
//! - [`auth`]: shared access policies, SAS validation, per-connection grants.
//! - [`entra`]: Entra ID (`jwt`) put-tokens: the issuer's keys, the role-assignment table,
//!   the token checks and the service's refusal texts. Grants through [`auth`].
//! - [`tls`]: the generated (and reused) local CA and server certificate.
//! - [`broker`]: hubs, partitions, consumer groups, key routing, epoch register. No AMQP.
//! - [`store`]: one partition's log, in memory or on disk with crash recovery. No AMQP.
//! - `server`: listeners, TLS-first handshake, SASL, sessions and link routing; one
//!   connection handling for every listener (plain, TLS, WebSocket).
//! - `websocket`: the WebSocket listener's upgrade (`/$servicebus/websocket`, subprotocol
//!   `AMQPWSB10` or `amqp`) and the byte stream over its binary messages.
//! - `nodes`: the `$cbs` and `$management` request/response nodes.
//! - `links`: producer (incoming) and consumer (outgoing) links.
//! - `write_behind`: coalesces the frames a connection writes into few socket writes.
//!
//! Built on `tcpulse-eventhub`, which it shares with the client: entity addresses
//! (`tcpulse_eventhub::address`), SAS verification (`sas`), connection strings
//! (`connection_string`), wire constants (`wire`), consumer start positions and their
//! selector filter text (`position`), TLS failure hints (`client::describe_tls_failure`)
//! and, through its `cli` feature, the log set-up and exit codes of the binaries. The
//! `tcpulse-hub` binary (`src/bin/tcpulse-hub.rs`) only parses [`cli::Args`], logs, and runs
//! [`Hub`] until SIGINT or SIGTERM.
//!
//! Failures stay at their level: a bad connection is logged and closed in its own task, and
//! never reaches the accept loop or another connection.
#![deny(missing_docs, missing_debug_implementations)]

pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod entra;
pub mod store;
pub mod tls;

mod links;
mod nodes;
mod server;
mod websocket;
mod write_behind;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::{HubConfig, HubSpec};

use tcpulse_eventhub::connection_string::{ConnectionString, Credential};

/// A setup step of the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Invalid configuration.
    #[error("invalid hub configuration: {0}")]
    Config(String),
    /// Could not bind a listener.
    #[error("cannot listen on {addr}: {source}; pick another address with --listen/--plain-listen/--ws-listen or stop what uses the port")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A file of the TLS identity could not be written or read.
    #[error("TLS identity: cannot {step} {path}: {source}; check permissions or set --tls-dir")]
    Tls {
        /// What was being done.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate or key could not be loaded.
    #[error("TLS identity: cannot load {path}: {why}")]
    TlsLoad {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Certificate generation failed.
    #[error("TLS identity: cannot generate a certificate: {0}")]
    TlsGenerate(String),
    /// Policies could not be read or parsed.
    #[error("shared access policies from {origin}: {why}")]
    Policies {
        /// Where they came from.
        origin: String,
        /// What is wrong.
        why: String,
    },
    /// The Entra ID key file or role-assignment table could not be read or parsed.
    #[error("Entra ID: {what} {path}: {why}")]
    Entra {
        /// The flag that named the file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A partition log could not be opened.
    #[error("partition store: {0}")]
    Store(#[from] store::StoreError),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}; check permissions or set --data-dir")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Ready-made connection strings (they contain keys: hand them out on purpose only).
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionStrings {
    /// Send-only policy.
    pub send: String,
    /// Listen-only policy.
    pub listen: String,
    /// Manage policy (send, listen, manage).
    pub manage: String,
}

impl std::fmt::Debug for ConnectionStrings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionStrings(<redacted>)")
    }
}

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: HubConfig,
    pub(crate) broker: broker::Broker,
    pub(crate) policies: Vec<auth::Policy>,
    /// Entra ID token checks; `None` when no issuer is configured.
    pub(crate) entra: Option<entra::Entra>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) captured: Option<std::sync::Mutex<Vec<Captured>>>,
}

impl Shared {
    pub(crate) fn capture(&self, item: Captured) {
        if let Some(c) = &self.captured {
            if let Ok(mut v) = c.lock() {
                v.push(item);
            }
        }
    }
}

/// What a client sent, kept when [`HubConfig::capture`] is on.
#[derive(Debug, Clone)]
pub enum Captured {
    /// A link attach as received.
    Attach {
        /// The client's address.
        peer: SocketAddr,
        /// The performative.
        attach: Box<fe2o3_amqp::types::performatives::Attach>,
    },
    /// A `$cbs` request as received (the token in the body included).
    CbsRequest {
        /// The client's address.
        peer: SocketAddr,
        /// The request message.
        message: Box<
            fe2o3_amqp::types::messaging::Message<
                fe2o3_amqp::types::messaging::Body<fe2o3_amqp::types::primitives::Value>,
            >,
        >,
    },
}

/// A running hub. Dropping it stops it (without waiting); prefer [`Hub::shutdown`].
#[derive(Debug)]
pub struct Hub {
    shared: Arc<Shared>,
    amqps: SocketAddr,
    plain: Option<SocketAddr>,
    websocket: Option<SocketAddr>,
    ca_pem: PathBuf,
    strings: ConnectionStrings,
    emulator_strings: Option<ConnectionStrings>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn strings_for(
    policies: &[auth::Policy],
    host: &str,
    port: u16,
    hub: Option<&str>,
    emulator: bool,
) -> ConnectionStrings {
    let make = |name: &str, fallback: auth::Rights| {
        let p = policies
            .iter()
            .find(|p| p.name == name)
            .or_else(|| policies.iter().find(|p| p.rights == fallback))
            .or_else(|| policies.iter().find(|p| p.rights.manage))
            .or_else(|| policies.first());
        match p {
            Some(p) => ConnectionString {
                host: host.to_string(),
                port: Some(port),
                credential: Credential::Key {
                    key_name: p.name.clone(),
                    key: p.key.clone(),
                },
                entity_path: hub.map(str::to_string),
                use_development_emulator: emulator,
            }
            .expose(),
            None => String::new(),
        }
    };
    ConnectionStrings {
        send: make(auth::SEND_POLICY, auth::Rights::SEND),
        listen: make(auth::LISTEN_POLICY, auth::Rights::LISTEN),
        manage: make(auth::MANAGE_POLICY, auth::Rights::MANAGE),
    }
}

impl Hub {
    /// Opens the partitions, loads or generates keys and the TLS identity, binds the
    /// listeners and starts serving. Returns when the hub accepts connections.
    pub async fn start(config: HubConfig) -> Result<Hub, HubError> {
        config.validate()?;
        if let Some(dir) = &config.data_dir {
            std::fs::create_dir_all(dir).map_err(|source| HubError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        let policies = config.load_policies()?;
        let entra = entra::Entra::load(&config.entra)?;
        let tls_dir = config.tls_dir();
        let user_cert = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let identity = tls::identity(&tls_dir, user_cert)?;
        let broker = broker::Broker::open(
            &config.hubs,
            &config.consumer_groups,
            config.data_dir.as_deref(),
            &config.store_config(),
        )?;

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| HubError::Bind {
                addr: config.listen,
                source,
            })?;
        let amqps = listener.local_addr().map_err(|source| HubError::Bind {
            addr: config.listen,
            source,
        })?;
        let plain_listener = match config.plain_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| HubError::Bind { addr, source })?,
            ),
            None => None,
        };
        let plain = match &plain_listener {
            Some(l) => Some(l.local_addr().map_err(|source| HubError::Bind {
                addr: amqps,
                source,
            })?),
            None => None,
        };

        let ws_listener = match config.ws_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| HubError::Bind { addr, source })?,
            ),
            None => None,
        };
        let websocket = match &ws_listener {
            Some(l) => Some(l.local_addr().map_err(|source| HubError::Bind {
                addr: amqps,
                source,
            })?),
            None => None,
        };

        let first_hub = config.hubs.first().map(|h| h.name.clone());
        let strings = strings_for(
            &policies,
            &config.namespace,
            amqps.port(),
            first_hub.as_deref(),
            false,
        );
        let emulator_strings = plain.map(|p| {
            strings_for(
                &policies,
                &p.ip().to_string(),
                p.port(),
                first_hub.as_deref(),
                true,
            )
        });

        let capture = config.capture;
        let shared = Arc::new(Shared {
            config,
            broker,
            policies,
            entra,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            captured: capture.then(|| std::sync::Mutex::new(Vec::new())),
        });
        if let Some(l) = ws_listener {
            shared.tasks.spawn(server::accept_loop(
                Arc::clone(&shared),
                l,
                server::Wire::WebSocket(identity.acceptor.clone()),
            ));
        }
        shared.tasks.spawn(server::accept_loop(
            Arc::clone(&shared),
            listener,
            server::Wire::Tls(identity.acceptor),
        ));
        if let Some(l) = plain_listener {
            shared.tasks.spawn(server::accept_loop(
                Arc::clone(&shared),
                l,
                server::Wire::Plain,
            ));
        }
        shared
            .tasks
            .spawn(server::retention_loop(Arc::clone(&shared)));
        tracing::info!(%amqps, plain = ?plain, websocket = ?websocket, hubs = ?shared.broker.order, "tcpulse-hub ready");
        Ok(Hub {
            shared,
            amqps,
            plain,
            websocket,
            ca_pem: identity.ca_pem,
            strings,
            emulator_strings,
        })
    }

    /// The bound AMQPS (TLS) address.
    pub fn amqps_addr(&self) -> SocketAddr {
        self.amqps
    }

    /// The bound plain AMQP address, if enabled.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain
    }

    /// The bound AMQP-over-WebSockets (TLS) address, if enabled.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket
    }

    /// PEM file with the CA clients should trust.
    pub fn ca_pem_path(&self) -> &std::path::Path {
        &self.ca_pem
    }

    /// Connection strings for the TLS endpoint (`Endpoint=sb://<namespace>:<port>/`).
    pub fn connection_strings(&self) -> &ConnectionStrings {
        &self.strings
    }

    /// Connection strings for the plain endpoint with `UseDevelopmentEmulator=true`.
    pub fn emulator_connection_strings(&self) -> Option<&ConnectionStrings> {
        self.emulator_strings.as_ref()
    }

    /// The hub names and their partition counts.
    pub fn hubs(&self) -> Vec<(String, usize)> {
        self.shared
            .broker
            .hubs()
            .map(|h| (h.name.clone(), h.partitions.len()))
            .collect()
    }

    /// The JSON the binary prints when ready (contains keys).
    pub fn ready_info(&self) -> serde_json::Value {
        serde_json::json!({
            "amqps": self.amqps.to_string(),
            "amqp": self.plain.map(|p| p.to_string()),
            "websocket": self.websocket.map(|p| p.to_string()),
            "ca_pem": self.ca_pem.display().to_string(),
            "namespace": self.shared.config.namespace,
            "hubs": self.hubs().into_iter().map(|(name, partitions)| serde_json::json!({"name": name, "partitions": partitions})).collect::<Vec<_>>(),
            "consumer_groups": std::iter::once("$Default".to_string()).chain(self.shared.config.consumer_groups.iter().filter(|g| !g.eq_ignore_ascii_case("$default")).cloned()).collect::<Vec<_>>(),
            "connection_strings": self.strings,
            "emulator_connection_strings": self.emulator_strings,
        })
    }

    /// Stops accepting, closes every connection, flushes the partition logs and waits for
    /// every task to end.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within 10 s; stopping anyway");
        }
        for hub in self.shared.broker.hubs() {
            for (i, p) in hub.partitions.iter().enumerate() {
                if let Err(e) = p.flush() {
                    tracing::error!(hub = %hub.name, partition = i, error = %e, "flushing partition on shutdown failed");
                }
            }
        }
        tracing::info!("tcpulse-hub stopped");
    }

    /// Everything captured so far (empty unless [`HubConfig::capture`] is on).
    pub fn captured(&self) -> Vec<Captured> {
        self.shared
            .captured
            .as_ref()
            .and_then(|c| c.lock().ok().map(|v| v.clone()))
            .unwrap_or_default()
    }

    /// A token that fires when the hub shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }
}
