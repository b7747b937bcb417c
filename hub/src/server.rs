//! Listeners, the TLS-first handshake, the WebSocket upgrade, SASL, sessions and link
//! routing.
//!
//! Azure clients speak "pure" TLS on 5671: the TLS handshake comes first and the AMQP/SASL
//! headers run inside it, so the TLS accept happens here and the fe2o3 acceptor gets the TLS
//! stream. On the WebSocket listener (the service's 443) the same TLS accept is followed by
//! the upgrade ([`crate::websocket`]), and the acceptor gets the WebSocket's byte stream:
//! everything above the bytes is the same for every listener ([`Wire`]). Settings that look arbitrary (non-empty properties everywhere, `handle_max` below
//! `u32::MAX`, an unbounded session incoming window, settle modes) are what the Python SDK's
//! positional frame decoder needs (see the reference notes, section 0).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use fe2o3_amqp::{
    acceptor::{
        sasl_acceptor::SaslServerFrame, ConnectionAcceptor, LinkAcceptor, LinkEndpoint,
        ListenerConnectionHandle, ListenerSessionHandle, SaslAcceptor, SessionAcceptor,
        SupportedReceiverSettleModes, SupportedSenderSettleModes,
    },
    link::{receiver::CreditMode, Receiver, Sender},
    types::{
        definitions::{self, Fields, ReceiverSettleMode, Role, SenderSettleMode},
        messaging::TargetArchetype,
        performatives::Attach,
        primitives::{Array, Binary, Symbol, Value},
        sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse},
    },
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{ConnAuth, Right},
    broker::{now_ms, EventHub},
    links::{self, close_link_with, link_error},
    nodes::{self, Replies},
    write_behind, Shared,
};
use tcpulse_eventhub::{address::Entity, position::StartPosition, wire};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

fn hub_properties() -> Fields {
    let mut f = Fields::new();
    f.insert(Symbol::from("product"), Value::String("tcpulse-hub".into()));
    f.insert(
        Symbol::from("version"),
        Value::String(env!("CARGO_PKG_VERSION").into()),
    );
    f
}

/// What a listener speaks below AMQP.
#[derive(Clone)]
pub(crate) enum Wire {
    /// Plain AMQP (development-emulator clients).
    Plain,
    /// TLS first, then AMQP (the service's 5671).
    Tls(tokio_rustls::TlsAcceptor),
    /// TLS, then the WebSocket upgrade, then AMQP in binary messages (the service's 443).
    WebSocket(tokio_rustls::TlsAcceptor),
}

/// Accepts connections until shutdown. Accept errors back off from 1 s to 64 s.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, wire: Wire) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::from_secs(1);
                let _ = tcp.set_nodelay(true);
                let shared2 = Arc::clone(&shared);
                let wire = wire.clone();
                shared.tasks.spawn(async move {
                    serve_connection(shared2, tcp, peer, wire).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, backoff_secs = backoff.as_secs(), "accept failed; backing off");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(64));
            }
        }
    }
}

/// SASL as Event Hubs offers it: MSSBCBS, PLAIN (policy name and key) and ANONYMOUS (then CBS).
#[derive(Debug, Clone)]
struct HubSasl {
    shared: Arc<Shared>,
    auth: Arc<ConnAuth>,
}

fn outcome(code: SaslCode) -> SaslServerFrame {
    let welcome = matches!(code, SaslCode::Ok);
    SaslServerFrame::Outcome(SaslOutcome {
        code,
        additional_data: welcome.then(|| Binary::from(b"Welcome!".to_vec())),
    })
}

impl SaslAcceptor for HubSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from("MSSBCBS"),
            Symbol::from("PLAIN"),
            Symbol::from("ANONYMOUS"),
        ])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        match init.mechanism.0.as_str() {
            "ANONYMOUS" | "MSSBCBS" => outcome(SaslCode::Ok),
            "PLAIN" => {
                let response = init
                    .initial_response
                    .map(|b| b.into_vec())
                    .unwrap_or_default();
                let mut parts = response.split(|b| *b == 0);
                let _authzid = parts.next();
                let (Some(user), Some(pass)) = (parts.next(), parts.next()) else {
                    return outcome(SaslCode::Auth);
                };
                let found = self
                    .shared
                    .policies
                    .iter()
                    .find(|p| p.name.as_bytes() == user && p.key.as_bytes() == pass);
                match found {
                    Some(p) => {
                        self.auth.grant_namespace(p.rights);
                        outcome(SaslCode::Ok)
                    }
                    None => {
                        tracing::info!(user = %String::from_utf8_lossy(user), "SASL PLAIN refused: unknown policy or wrong key");
                        outcome(SaslCode::Auth)
                    }
                }
            }
            other => {
                tracing::info!(mechanism = other, "SASL mechanism not supported");
                outcome(SaslCode::Auth)
            }
        }
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        outcome(SaslCode::Sys)
    }
}

/// The server side of a TLS handshake; `Err` says why it failed, with a hint.
async fn tls_accept(
    tls: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    tls.accept(tcp).await.map_err(|e| {
        let why = tcpulse_eventhub::client::describe_tls_failure(
            &e,
            tcpulse_eventhub::client::TlsSide::Server,
        );
        format!(
            "TLS handshake failed: {}",
            why.unwrap_or_else(|| e.to_string())
        )
    })
}

/// The TLS handshake and WebSocket upgrade (as `wire` says), SASL and the AMQP open of one
/// connection; `Err` says why it was refused. `kill` cuts the socket (see `write_behind`).
async fn open_connection(
    shared: &Arc<Shared>,
    auth: &Arc<ConnAuth>,
    tcp: TcpStream,
    wire: Wire,
    kill: CancellationToken,
) -> Result<ListenerConnectionHandle, String> {
    // Validated to fit: HubConfig::validate.
    let idle_ms = u32::try_from(shared.config.idle_timeout.as_millis()).unwrap_or(u32::MAX);
    let acceptor = ConnectionAcceptor::builder()
        .container_id(format!("tcpulse-hub-{}", uuid::Uuid::new_v4().simple()))
        .max_frame_size(shared.config.max_frame_bytes)
        .channel_max(4999u16)
        .idle_time_out(idle_ms)
        .properties(hub_properties())
        .sasl_acceptor(HubSasl {
            shared: Arc::clone(shared),
            auth: Arc::clone(auth),
        })
        .build();
    let opened = match wire {
        Wire::Plain => acceptor.accept(write_behind::coalesce(tcp, kill)).await,
        Wire::Tls(tls) => {
            let stream = tls_accept(&tls, tcp).await?;
            acceptor.accept(write_behind::coalesce(stream, kill)).await
        }
        Wire::WebSocket(tls) => {
            let stream = tls_accept(&tls, tcp).await?;
            let bytes = crate::websocket::accept(stream).await?;
            acceptor.accept(write_behind::coalesce(bytes, kill)).await
        }
    };
    opened.map_err(|e| format!("AMQP open failed: {e}"))
}

/// Serves one accepted TCP connection: the handshake (within `HANDSHAKE_TIMEOUT`), then its
/// sessions until the peer closes, the hub stops, or no valid token arrived within
/// `auth_timeout`.
async fn serve_connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, wire: Wire) {
    let auth = Arc::new(ConnAuth::default());
    let kill = CancellationToken::new();
    let handshake = open_connection(&shared, &auth, tcp, wire, kill.clone());
    let mut conn = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(why)) => {
                tracing::info!(%peer, %why, "connection refused");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "connection handshake timed out");
                return;
            }
        },
    };
    tracing::debug!(%peer, "connection open");
    let auth_deadline = tokio::time::sleep(shared.config.auth_timeout);
    tokio::pin!(auth_deadline);
    let mut auth_checked = false;
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => {
                let _ = conn
                    .close_with_error(link_error(wire::condition::CONNECTION_FORCED, "the hub is shutting down"))
                    .await;
                return;
            }
            _ = &mut auth_deadline, if !auth_checked => {
                auth_checked = true;
                if auth.was_granted() {
                    continue;
                }
                close_unauthenticated(conn, &kill, shared.config.auth_timeout, peer).await;
                return;
            }
            s = conn.next_incoming_session() => s,
        };
        let Some(incoming) = incoming else { break };
        let session_acceptor = SessionAcceptor::builder()
            .handle_max(4095u32)
            .incoming_window(u32::MAX)
            .properties(hub_properties())
            .build();
        match session_acceptor
            .accept_incoming_session(incoming, &mut conn)
            .await
        {
            Ok(session) => {
                let s = Arc::clone(&shared);
                let a = Arc::clone(&auth);
                shared
                    .tasks
                    .spawn(async move { serve_session(s, a, session, peer).await });
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "session refused");
            }
        }
    }
    tracing::debug!(%peer, "connection closed");
    close_quietly(conn).await;
}

/// How long a peer has to answer the hub's Close before the socket is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Closes a connection that put no valid token in time, as Event Hubs does: a Close with
/// `amqp:unauthorized-access`; the socket is cut if the peer does not answer it.
async fn close_unauthenticated(
    mut conn: ListenerConnectionHandle,
    kill: &CancellationToken,
    within: Duration,
    peer: SocketAddr,
) {
    let why = format!(
        "no valid token was put on $cbs within {} s of opening the connection; the connection is closed (put-token right after connecting)",
        within.as_secs_f64()
    );
    tracing::info!(%peer, "closing a connection without a valid token: {why}");
    let closed = tokio::time::timeout(
        CLOSE_GRACE,
        conn.close_with_error(link_error(wire::condition::UNAUTHORIZED, why)),
    )
    .await;
    if closed.is_err() {
        tracing::debug!(%peer, "peer did not answer the Close; cutting the socket");
    }
    kill.cancel();
}

async fn close_quietly(mut conn: ListenerConnectionHandle) {
    let _ = conn.on_close().await;
}

fn address_of(attach: &Attach) -> Option<String> {
    match attach.role {
        // The client sends: its target is the entity.
        Role::Sender => match attach.target.as_deref() {
            Some(TargetArchetype::Target(t)) => t.address.clone(),
            _ => None,
        },
        Role::Receiver => attach.source.as_ref().and_then(|s| s.address.clone()),
    }
}

/// fe2o3's link acceptor with its default dynamic-terminus handlers.
type DefaultLinkAcceptor = LinkAcceptor<
    fn(fe2o3_amqp::types::messaging::Source) -> Option<fe2o3_amqp::types::messaging::Source>,
    fn(fe2o3_amqp::types::messaging::Target) -> Option<fe2o3_amqp::types::messaging::Target>,
>;

fn link_properties() -> Fields {
    let mut f = Fields::new();
    f.insert(
        Symbol::from("com.microsoft:tracking-id"),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    f
}

/// Incoming links advertise no max-message-size: fe2o3's receiver enforces that value by
/// detaching the link, which the Python SDK reports only as "unknown-error". The hub instead
/// checks the size of each delivery and rejects an oversize one with the service's
/// condition (`amqp:link:message-size-exceeded`); clients then fall back to the 1 MiB
/// Event Hubs limit for batching, as the Python SDK and tcpulse's client do.
fn incoming_acceptor(_max_message: u64) -> DefaultLinkAcceptor {
    LinkAcceptor::builder()
        .properties(link_properties())
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .build()
}

fn outgoing_acceptor(max_message: u64) -> DefaultLinkAcceptor {
    LinkAcceptor::builder()
        .properties(link_properties())
        .max_message_size(max_message)
        .supported_sender_settle_modes(SupportedSenderSettleModes::Settled)
        .fallback_sender_settle_mode(SenderSettleMode::Settled)
        .build()
}

/// Accepts a link the client sends on (a local receiver). A link that comes up with the
/// other role is closed with `amqp:not-allowed`; `None` when it did not attach.
async fn accept_receiver(
    max: u64,
    attach: Attach,
    session: &mut ListenerSessionHandle,
    what: &str,
) -> Option<Receiver> {
    match incoming_acceptor(max)
        .accept_incoming_attach(attach, session)
        .await
    {
        Ok(LinkEndpoint::Receiver(r)) => Some(r),
        Ok(LinkEndpoint::Sender(s)) => {
            close_link_with(
                s,
                link_error(wire::condition::NOT_ALLOWED, "unexpected role"),
            )
            .await;
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "{what} failed to attach");
            None
        }
    }
}

/// Accepts a link the client receives on (a local sender); see [`accept_receiver`].
async fn accept_sender(
    max: u64,
    attach: Attach,
    session: &mut ListenerSessionHandle,
    what: &str,
) -> Option<Sender> {
    match outgoing_acceptor(max)
        .accept_incoming_attach(attach, session)
        .await
    {
        Ok(LinkEndpoint::Sender(s)) => Some(s),
        Ok(LinkEndpoint::Receiver(r)) => {
            close_link_with(
                r,
                link_error(wire::condition::NOT_ALLOWED, "unexpected role"),
            )
            .await;
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "{what} failed to attach");
            None
        }
    }
}

async fn serve_session(
    shared: Arc<Shared>,
    auth: Arc<ConnAuth>,
    mut session: ListenerSessionHandle,
    peer: SocketAddr,
) {
    let replies = Arc::new(Replies::default());
    while let Some(attach) = session.next_incoming_attach().await {
        route(&shared, &auth, &replies, attach, &mut session, peer).await;
    }
}

/// Accepts a link only to close it at once with `error` (the way the service refuses).
async fn refuse(
    shared: &Shared,
    attach: Attach,
    session: &mut ListenerSessionHandle,
    error: definitions::Error,
) {
    let acceptor = match attach.role {
        Role::Sender => incoming_acceptor(shared.config.max_message_bytes),
        Role::Receiver => outgoing_acceptor(shared.config.max_message_bytes),
    };
    match acceptor.accept_incoming_attach(attach, session).await {
        Ok(LinkEndpoint::Sender(s)) => close_link_with(s, error).await,
        Ok(LinkEndpoint::Receiver(r)) => close_link_with(r, error).await,
        Err(e) => tracing::debug!(error = %e, "refused link failed to attach"),
    }
}

fn epoch_of(attach: &Attach) -> Option<i64> {
    match attach
        .properties
        .as_ref()?
        .get(&Symbol::from(wire::EPOCH))?
    {
        Value::Long(e) => Some(*e),
        Value::Int(e) => Some(i64::from(*e)),
        Value::Uint(e) => Some(i64::from(*e)),
        Value::Ulong(e) => i64::try_from(*e).ok(),
        _ => None,
    }
}

fn selector_of(attach: &Attach) -> Result<StartPosition, String> {
    let Some(filter) = attach.source.as_ref().and_then(|s| s.filter.as_ref()) else {
        return Ok(StartPosition::Earliest);
    };
    for value in filter.values() {
        if let Value::Described(d) = value {
            let is_selector = match &d.descriptor {
                serde_amqp::descriptor::Descriptor::Name(n) => n.0 == wire::SELECTOR_FILTER,
                serde_amqp::descriptor::Descriptor::Code(c) => {
                    *c == wire::SELECTOR_FILTER_CODE || *c == 0x0000_0137_0000_000A
                }
            };
            if is_selector {
                if let Value::String(expr) = &d.value {
                    return StartPosition::from_selector(expr).map_err(|e| e.to_string());
                }
                return Err("selector filter value is not a string".into());
            }
        }
    }
    Ok(StartPosition::Earliest)
}

fn wants_runtime_metric(attach: &Attach) -> bool {
    attach.desired_capabilities.as_ref().is_some_and(|caps| {
        caps.0
            .iter()
            .any(|c| c.0 == "com.microsoft:enable-receiver-runtime-metric")
    })
}

/// Routes one link attach by its address and role: the `$cbs` and `$management` nodes,
/// producers, consumers; anything else is refused the way the service refuses it.
async fn route(
    shared: &Arc<Shared>,
    auth: &Arc<ConnAuth>,
    replies: &Arc<Replies>,
    attach: Attach,
    session: &mut ListenerSessionHandle,
    peer: SocketAddr,
) {
    shared.capture(crate::Captured::Attach {
        peer,
        attach: Box::new(attach.clone()),
    });
    let address = address_of(&attach).unwrap_or_default();
    let entity = match Entity::parse(&address) {
        Ok(e) => e,
        Err(e) => {
            tracing::info!(%peer, %address, "attach to an unknown address");
            refuse(
                shared,
                attach,
                session,
                link_error(wire::condition::NOT_FOUND, e.to_string()),
            )
            .await;
            return;
        }
    };
    let max = shared.config.max_message_bytes;
    match (&entity, attach.role.clone()) {
        (Entity::Cbs | Entity::Management, Role::Receiver) => {
            if let Some(s) = accept_sender(max, attach, session, "node reply link").await {
                shared.tasks.spawn(nodes::serve_reply_link(
                    Arc::clone(replies),
                    entity,
                    s,
                    Arc::clone(shared),
                ));
            }
        }
        (Entity::Cbs | Entity::Management, Role::Sender) => {
            if let Some(r) = accept_receiver(max, attach, session, "node request link").await {
                shared.tasks.spawn(nodes::serve_request_link(
                    Arc::clone(replies),
                    entity,
                    r,
                    Arc::clone(auth),
                    Arc::clone(shared),
                    peer,
                ));
            }
        }
        (Entity::Hub { hub } | Entity::Partition { hub, .. }, Role::Sender) => {
            route_producer(shared, auth, attach, session, peer, hub, &entity).await;
        }
        (Entity::ConsumerPartition { .. }, Role::Receiver) => {
            match consumer_for(shared, auth, &attach, &entity, &address, peer) {
                Err(error) => refuse(shared, attach, session, error).await,
                Ok(consumer) => {
                    if let Some(s) = accept_sender(max, attach, session, "consumer link").await {
                        shared.tasks.spawn(links::serve_consumer(consumer, s));
                    }
                }
            }
        }
        _ => {
            let msg = format!("'{address}' cannot be used for a link in this direction");
            refuse(
                shared,
                attach,
                session,
                link_error(wire::condition::NOT_ALLOWED, msg),
            )
            .await;
        }
    }
}

/// A producer link to `hub` (`entity` is the hub or one of its partitions): refused when
/// either does not exist, otherwise accepted with credit and served.
async fn route_producer(
    shared: &Arc<Shared>,
    auth: &Arc<ConnAuth>,
    attach: Attach,
    session: &mut ListenerSessionHandle,
    peer: SocketAddr,
    hub: &str,
    entity: &Entity,
) {
    let (h, partition) = match producer_target(shared, hub, entity) {
        Ok(target) => target,
        Err(error) => return refuse(shared, attach, session, error).await,
    };
    let path = entity.audience_path();
    // Without Send rights the link is still attached: every delivery on it is then
    // rejected with amqp:unauthorized-access, which SDKs report clearly (a refused
    // attach surfaces in the Python SDK only as "unknown-error").
    let expiry = match auth.check(&path, Right::Send) {
        Ok(e) => e,
        Err(denied) => {
            tracing::info!(%peer, %path, "producer without Send rights: {}", denied.0);
            None
        }
    };
    let max = shared.config.max_message_bytes;
    if let Some(mut r) = accept_receiver(max, attach, session, "producer link").await {
        // pyamqp assumes 10000 credit at once; grant it so early transfers fit.
        r.set_credit_mode(CreditMode::Auto(10_000));
        if let Err(e) = r.set_credit(10_000).await {
            tracing::debug!(error = %e, "granting credit failed");
        }
        shared.tasks.spawn(links::serve_producer(
            Arc::clone(shared),
            Arc::clone(auth),
            r,
            h,
            partition,
            path,
            expiry,
        ));
    }
}

/// The hub a producer sends to and, for a partition address, the partition's index; `Err`
/// is the not-found error to refuse the link with.
fn producer_target(
    shared: &Shared,
    hub: &str,
    entity: &Entity,
) -> Result<(Arc<EventHub>, Option<usize>), definitions::Error> {
    let Some(h) = shared.broker.hub(hub).cloned() else {
        let msg = format!("The messaging entity '{hub}' could not be found.");
        return Err(link_error(wire::condition::NOT_FOUND, msg));
    };
    let partition = match entity {
        Entity::Partition { partition, .. } => match h.partition(partition) {
            Some((i, _)) => Some(i),
            None => {
                let msg = format!(
                    "Partition '{partition}' of '{}' could not be found.",
                    h.name
                );
                return Err(link_error(wire::condition::NOT_FOUND, msg));
            }
        },
        _ => None,
    };
    Ok((h, partition))
}

/// Checks a consumer link's attach in the service's order (the entity exists, Listen
/// rights, the selector filter, the epoch rules) and registers its epoch. `Err` is the
/// error to refuse the link with.
fn consumer_for(
    shared: &Arc<Shared>,
    auth: &Arc<ConnAuth>,
    attach: &Attach,
    entity: &Entity,
    address: &str,
    peer: SocketAddr,
) -> Result<links::Consumer, definitions::Error> {
    let found = match entity {
        Entity::ConsumerPartition {
            hub,
            consumer_group,
            partition,
        } => shared.broker.hub(hub).cloned().and_then(|h| {
            let cg = h.consumer_group(consumer_group)?.to_string();
            let (idx, _) = h.partition(partition)?;
            Some((h, cg, idx))
        }),
        _ => None,
    };
    let Some((h, cg, idx)) = found else {
        let msg = format!("The messaging entity '{address}' could not be found.");
        return Err(link_error(wire::condition::NOT_FOUND, msg));
    };
    let path = entity.audience_path();
    let expiry = auth.check(&path, Right::Listen).map_err(|denied| {
        tracing::info!(%peer, %path, "consumer refused: {}", denied.0);
        link_error(wire::condition::UNAUTHORIZED, denied.0)
    })?;
    let start =
        selector_of(attach).map_err(|why| link_error(wire::condition::ARGUMENT_ERROR, why))?;
    let guard = shared
        .broker
        .epochs
        .register(&h.name, &cg, idx, epoch_of(attach))
        .map_err(|stolen| {
            tracing::info!(%peer, %path, "consumer refused by epoch rules");
            link_error(wire::condition::LINK_STOLEN, stolen.0)
        })?;
    Ok(links::Consumer {
        shared: Arc::clone(shared),
        auth: Arc::clone(auth),
        hub: h,
        partition: idx,
        path,
        start,
        guard,
        expiry,
        runtime_metric: wants_runtime_metric(attach),
    })
}

/// Applies retention to every partition once a minute.
pub(crate) async fn retention_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        for hub in shared.broker.hubs() {
            for (i, p) in hub.partitions.iter().enumerate() {
                match p.enforce_retention(now) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(hub = %hub.name, partition = i, dropped = n, "retention applied")
                    }
                    Err(e) => {
                        tracing::warn!(hub = %hub.name, partition = i, error = %e, "retention failed")
                    }
                }
            }
        }
    }
}
