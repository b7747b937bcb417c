//! One AMQP connection to Event Hubs: the byte stream from `transport` (TLS first as Azure
//! on 5671, or a WebSocket on 443), SASL ANONYMOUS, one session, and a CBS task that puts a
//! token per audience and renews it before it expires on the live connection, without
//! touching the links.
//!
//! Teardown is explicit and ordered ([`AmqpConnection::close`]: CBS links, session,
//! connection); dropping instead is safe (fe2o3 enqueues end/close, the CBS task stops when
//! its command channel closes).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use fe2o3_amqp::{
    connection::ConnectionHandle,
    sasl_profile::SaslProfile,
    session::SessionHandle,
    types::{definitions::Fields, primitives::Symbol, primitives::Timestamp, primitives::Value},
    Connection, Session,
};
use fe2o3_amqp_cbs::{client::CbsClient, token::CbsToken};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use super::{
    config::ClientConfig,
    error::{condition_for_status, connect_io_error, ConnectError, ServiceError},
    token::{refresh_margin, TokenSource},
    transport::{self, Stream},
};

/// Builds the TLS connector, TLS 1.2+: the operating system's trust store (the platform
/// verifier: Windows certificate store, macOS keychain, the system CA bundle on Linux) plus the
/// extra CA file; with `trust_builtin_roots = false`, the extra CA file alone.
pub(crate) fn tls_connector(
    config: &ClientConfig,
) -> Result<tokio_rustls::TlsConnector, ConnectError> {
    use tokio_rustls::rustls;
    let extra = match &config.options.extra_ca_file {
        Some(path) => read_extra_roots(path)?,
        None => Vec::new(),
    };
    let provider = crate::tls::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConnectError::Config(format!("TLS setup failed: {e}")))?;
    let tls = if config.options.trust_builtin_roots {
        let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider)
            .map_err(|e| {
                ConnectError::Config(format!("cannot load the system's trusted roots: {e}"))
            })?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    } else {
        if extra.is_empty() {
            return Err(ConnectError::Config(
                "no trusted roots: enable trust_builtin_roots or set extra_ca_file".into(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in extra {
            roots.add(cert).map_err(|e| {
                ConnectError::Config(format!("extra_ca_file holds an unusable certificate: {e}"))
            })?;
        }
        builder.with_root_certificates(roots)
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(
        tls.with_no_client_auth(),
    )))
}

/// The PEM certificates of the extra CA file; an error names the file and the problem.
fn read_extra_roots(
    path: &std::path::Path,
) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, ConnectError> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(path).map_err(|e| {
        ConnectError::Config(format!(
            "cannot read extra_ca_file {}: {e}; fix the path or its permissions",
            path.display()
        ))
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConnectError::Config(format!(
                "extra_ca_file {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ConnectError::Config(format!(
            "extra_ca_file {} contains no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn open_properties() -> Fields {
    let version = env!("CARGO_PKG_VERSION");
    let platform = format!("{}; {}", std::env::consts::OS, std::env::consts::ARCH);
    let mut f = Fields::new();
    let mut put = |k: &str, v: String| {
        f.insert(Symbol::from(k), Value::String(v));
    };
    put("product", "tcpulse-eventhub".into());
    put("version", version.into());
    put("framework", "Rust".into());
    put("platform", platform.clone());
    put(
        "user-agent",
        format!("tcpulse-eventhub/{version} fe2o3-amqp/0.18 ({platform})"),
    );
    f
}

/// A command for the CBS task.
enum CbsCommand {
    /// Put a token for the audience now (unless a valid one is already in place) and keep
    /// renewing it.
    Authorize {
        audience: String,
        reply: oneshot::Sender<Result<(), ConnectError>>,
    },
}

/// An open connection with one session and its CBS task.
#[derive(Debug)]
pub(crate) struct AmqpConnection {
    connection: ConnectionHandle<()>,
    pub(crate) session: SessionHandle<()>,
    cbs: mpsc::Sender<CbsCommandBox>,
    cbs_task: Option<JoinHandle<()>>,
    operation_timeout: Duration,
    endpoint: String,
}

/// Boxed so `AmqpConnection` can derive `Debug` without exposing the command type.
struct CbsCommandBox(CbsCommand);

impl std::fmt::Debug for CbsCommandBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CbsCommand")
    }
}

fn open_error(endpoint: &str, e: fe2o3_amqp::connection::OpenError) -> ConnectError {
    use fe2o3_amqp::connection::OpenError;
    match e {
        OpenError::Io(io) => connect_io_error(endpoint, &io),
        OpenError::RemoteClosedWithError(err) => ConnectError::Service {
            step: "AMQP open",
            error: ServiceError::from(err),
        },
        OpenError::SaslError { code, .. } => ConnectError::Handshake {
            endpoint: endpoint.to_string(),
            why: format!("SASL refused with code {code:?}"),
        },
        other => ConnectError::Handshake {
            endpoint: endpoint.to_string(),
            why: other.to_string(),
        },
    }
}

impl AmqpConnection {
    /// Connects, opens the AMQP connection and a session, and attaches the CBS links.
    pub(crate) async fn open(config: &ClientConfig, role: &str) -> Result<Self, ConnectError> {
        let dial = config.dial()?;
        let timeout = config.options.connect_timeout();
        let tls = match &dial.tls_name {
            Some(_) => Some(tls_connector(config)?),
            None => None,
        };
        let container_id = format!("tcpulse-{role}-{}", uuid::Uuid::new_v4().simple());
        let started = std::time::Instant::now();
        let open = async {
            let (stream, chosen) = transport::open(config, tls.as_ref()).await?;
            let endpoint = chosen.endpoint.clone();
            let builder = Connection::builder()
                .container_id(container_id.clone())
                .hostname(config.host.as_str())
                .sasl_hostname(config.host.as_str())
                .sasl_profile(SaslProfile::Anonymous)
                .max_frame_size(config.options.max_frame_bytes)
                .channel_max(255u16)
                .properties(open_properties());
            let builder = if config.options.idle_timeout_secs > 0 {
                builder.idle_time_out((config.options.idle_timeout_secs * 1000) as u32)
            } else {
                builder
            };
            // TLS, when there is TLS, is done already (TLS first, as Azure on 5671).
            let builder = builder.scheme("amqp");
            let opened = match stream {
                Stream::Plain(tcp) => builder.open_with_stream(tcp).await,
                Stream::Tls(tls) => builder.open_with_stream(tls).await,
                Stream::WebSocket(ws) => builder.open_with_stream(ws).await,
            };
            let mut connection = opened.map_err(|e| {
                chosen.forget();
                open_error(&endpoint, e)
            })?;
            let session = match Session::builder()
                .incoming_window(u32::MAX / 2)
                .begin(&mut connection)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    let _ = connection.close().await;
                    return Err(ConnectError::Handshake {
                        endpoint: endpoint.clone(),
                        why: format!("session refused: {e}"),
                    });
                }
            };
            Ok((connection, session, chosen))
        };
        let (connection, mut session, chosen) = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ConnectError::Timeout {
                step: "connect (TCP, TLS, AMQP open, session)",
                after: timeout,
            })??;
        let endpoint = chosen.endpoint.clone();
        let op_timeout = config.options.operation_timeout();
        let cbs = tokio::time::timeout(op_timeout, CbsClient::attach(&mut session))
            .await
            .map_err(|_| ConnectError::Timeout {
                step: "attach $cbs",
                after: op_timeout,
            })?
            .map_err(|e| ConnectError::Handshake {
                endpoint: endpoint.clone(),
                why: format!("cannot attach $cbs: {e}"),
            })?;
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(cbs_task(
            cbs,
            Arc::clone(&config.credential),
            rx,
            op_timeout,
            container_id.clone(),
        ));
        tracing::info!(
            %endpoint,
            transport = %chosen.transport,
            proxy = chosen.proxy.as_deref().unwrap_or("-"),
            tls_server_name = dial.tls_name.as_deref().unwrap_or("-"),
            container_id = %container_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event hubs connection open"
        );
        Ok(AmqpConnection {
            connection,
            session,
            cbs: tx,
            cbs_task: Some(task),
            operation_timeout: op_timeout,
            endpoint,
        })
    }

    /// Puts a token for `audience` (if none is in place) and keeps it renewed.
    pub(crate) async fn authorize(&self, audience: &str) -> Result<(), ConnectError> {
        let (reply, rx) = oneshot::channel();
        self.cbs
            .send(CbsCommandBox(CbsCommand::Authorize {
                audience: audience.to_string(),
                reply,
            }))
            .await
            .map_err(|_| ConnectError::Service {
                step: "put-token",
                error: ServiceError::new(
                    crate::wire::condition::DETACH_FORCED,
                    Some("the CBS link is gone".into()),
                ),
            })?;
        // The CBS task bounds each put-token by the operation timeout; allow for one queued
        // refresh ahead of this request.
        let limit = self.operation_timeout * 2;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ConnectError::Service {
                step: "put-token",
                error: ServiceError::new(
                    crate::wire::condition::DETACH_FORCED,
                    Some("the CBS task stopped".into()),
                ),
            }),
            Err(_) => Err(ConnectError::Timeout {
                step: "put-token",
                after: limit,
            }),
        }
    }

    /// Resolves when the connection's event loop has stopped (the peer closed it, the socket
    /// broke, or the idle timeout expired). Cancel-safe.
    pub(crate) async fn closed(&mut self) {
        if self.connection.is_closed() {
            return;
        }
        let _ = self.connection.on_close().await;
    }

    /// The dialled `host:port`.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Ends the session and closes the connection (links must be closed first), bounded by
    /// the operation timeout.
    pub(crate) async fn close(mut self) {
        let limit = self.operation_timeout;
        // Closing the channel stops the CBS task, which detaches its links.
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.cbs, tx));
        if let Some(task) = self.cbs_task.take() {
            let _ = tokio::time::timeout(limit, task).await;
        }
        let _ = tokio::time::timeout(limit, self.session.end()).await;
        let _ = tokio::time::timeout(limit, self.connection.close()).await;
        tracing::debug!(endpoint = %self.endpoint, "event hubs connection closed");
    }
}

impl Drop for AmqpConnection {
    fn drop(&mut self) {
        if let Some(task) = self.cbs_task.take() {
            task.abort();
        }
    }
}

/// Renewal state of one audience.
struct Grant {
    expires_at: SystemTime,
    refresh_at: Instant,
    /// Failed renewals in a row.
    failures: u32,
}

fn to_timestamp(t: SystemTime) -> Timestamp {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp::from_milliseconds(ms)
}

async fn put_token(
    cbs: &mut CbsClient,
    source: &dyn TokenSource,
    audience: &str,
    timeout: Duration,
) -> Result<Grant, ConnectError> {
    let token = source.token(audience).await?;
    let request = CbsToken::new(
        token.token.as_str(),
        token.token_type.as_cbs_type(),
        Some(to_timestamp(token.expires_at)),
    );
    match tokio::time::timeout(timeout, cbs.put_token(audience, request)).await {
        Err(_) => Err(ConnectError::Timeout {
            step: "put-token",
            after: timeout,
        }),
        Ok(Err(e)) => Err(cbs_error(audience, e)),
        Ok(Ok(())) => {
            let lifetime = token
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let refresh_in = lifetime.saturating_sub(refresh_margin(lifetime));
            Ok(Grant {
                expires_at: token.expires_at,
                refresh_at: Instant::now() + refresh_in,
                failures: 0,
            })
        }
    }
}

fn cbs_error(audience: &str, e: fe2o3_amqp_management::error::Error) -> ConnectError {
    use fe2o3_amqp_management::error::Error as M;
    match e {
        M::Status(s) => {
            let status = s.code.0.get();
            let error = ServiceError::new(condition_for_status(status), s.description);
            if status == 401 || status == 403 {
                ConnectError::Unauthorized {
                    audience: audience.to_string(),
                    error,
                }
            } else {
                ConnectError::Service {
                    step: "put-token",
                    error,
                }
            }
        }
        other => ConnectError::Service {
            step: "put-token",
            error: ServiceError::new(
                crate::wire::condition::DETACH_FORCED,
                Some(format!("$cbs request failed: {other}")),
            ),
        },
    }
}

/// Owns the CBS client: answers `Authorize`, renews every audience before its expiry.
async fn cbs_task(
    mut cbs: CbsClient,
    source: Arc<dyn TokenSource>,
    mut rx: mpsc::Receiver<CbsCommandBox>,
    timeout: Duration,
    container_id: String,
) {
    let mut grants: HashMap<String, Grant> = HashMap::new();
    loop {
        let next = grants.values().map(|g| g.refresh_at).min();
        let cmd = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(c) => Some(c.0),
                None => break,
            },
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        match cmd {
            Some(CbsCommand::Authorize { audience, reply }) => {
                let valid = grants
                    .get(&audience)
                    .is_some_and(|g| g.expires_at > SystemTime::now() + Duration::from_secs(1));
                if valid {
                    let _ = reply.send(Ok(()));
                    continue;
                }
                let r = put_token(&mut cbs, source.as_ref(), &audience, timeout).await;
                match r {
                    Ok(g) => {
                        tracing::debug!(%audience, %container_id, "put-token accepted");
                        grants.insert(audience, g);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        tracing::warn!(%audience, %container_id, error = %e, "put-token failed");
                        let _ = reply.send(Err(e));
                    }
                }
            }
            None => {
                let now = Instant::now();
                let due: Vec<String> = grants
                    .iter()
                    .filter(|(_, g)| g.refresh_at <= now)
                    .map(|(a, _)| a.clone())
                    .collect();
                for audience in due {
                    match put_token(&mut cbs, source.as_ref(), &audience, timeout).await {
                        Ok(g) => {
                            tracing::info!(
                                %audience,
                                %container_id,
                                next_refresh_in_ms = g.refresh_at.saturating_duration_since(Instant::now()).as_millis() as u64,
                                "token refreshed"
                            );
                            grants.insert(audience, g);
                        }
                        Err(e) if e.is_transient() => {
                            // Try again while the old token still holds: 1 s, doubling to
                            // 30 s (a token endpoint that is down is not asked every second).
                            if let Some(g) = grants.get_mut(&audience) {
                                g.failures += 1;
                                let delay = Duration::from_secs(1 << (g.failures - 1).min(5))
                                    .min(Duration::from_secs(30));
                                tracing::warn!(%audience, %container_id, error = %e, retry_in_ms = delay.as_millis() as u64, "token refresh failed; retrying");
                                g.refresh_at = Instant::now() + delay;
                                if g.expires_at <= SystemTime::now() {
                                    grants.remove(&audience);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(%audience, %container_id, error = %e, "token refresh refused; links on this audience will be detached by the service");
                            grants.remove(&audience);
                        }
                    }
                }
            }
        }
    }
    let _ = tokio::time::timeout(timeout, cbs.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_properties_identify_the_client_like_the_sdks() {
        let p = open_properties();
        for k in ["product", "version", "framework", "platform", "user-agent"] {
            assert!(p.get(&Symbol::from(k)).is_some(), "{k}");
        }
    }
}
