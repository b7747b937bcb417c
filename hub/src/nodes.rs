//! The `$cbs` and `$management` request/response nodes.
//!
//! Clients attach a sender (requests in) and a receiver (replies out) per node. The Python SDK
//! sets no `reply-to`, so a reply goes on the session's outgoing link whose source is the node;
//! fe2o3 clients set `reply-to` to their receiver's target, which is preferred when present.
//! Every request gets an answer (pyamqp waits forever otherwise) with `correlation-id` = the
//! request's `message-id` (same AMQP type). A `$management` answer carries an int
//! `status-code`, both `status-description` and `statusDescription` (pyamqp reads the
//! latter there), and `error-condition` on failure; a `$cbs` answer carries only
//! `status-code` and `status-description`, as the service's (see `Answer::into_cbs_message`).

use std::{sync::Arc, time::Duration};

use fe2o3_amqp::{
    link::{Receiver, Sender},
    types::{
        messaging::{ApplicationProperties, Body, Message, Properties},
        primitives::{Array, OrderedMap, SimpleValue, Symbol, Timestamp, Value},
    },
    Sendable,
};
use tokio::sync::{mpsc, Mutex};

use crate::{
    auth::{ConnAuth, Right},
    broker::EventHub,
    entra::Refusal,
    links::{close_link_with, link_error},
    Shared,
};
use tcpulse_eventhub::{address::Entity, wire};

/// A reply route: an outgoing node link of this session.
#[derive(Debug)]
struct Route {
    node: Entity,
    target: Option<String>,
    tx: mpsc::Sender<Message<Body<Value>>>,
}

/// The node reply links of one session.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    routes: Mutex<Vec<Route>>,
}

impl Replies {
    async fn find(
        &self,
        node: &Entity,
        reply_to: Option<&str>,
    ) -> Option<mpsc::Sender<Message<Body<Value>>>> {
        // The reply link may attach just after the request link: wait a little for it.
        for _ in 0..50 {
            {
                let mut routes = self.routes.lock().await;
                routes.retain(|r| !r.tx.is_closed());
                let hit = reply_to
                    .and_then(|rt| routes.iter().find(|r| r.target.as_deref() == Some(rt)))
                    .or_else(|| routes.iter().find(|r| &r.node == node));
                if let Some(r) = hit {
                    return Some(r.tx.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

/// Serves an outgoing node link (the client's reply receiver) until it detaches.
pub(crate) async fn serve_reply_link(
    replies: Arc<Replies>,
    node: Entity,
    mut sender: Sender,
    shared: Arc<Shared>,
) {
    let target = sender.target().as_ref().and_then(|t| t.address.clone());
    let (tx, mut rx) = mpsc::channel::<Message<Body<Value>>>(64);
    replies.routes.lock().await.push(Route {
        node: node.clone(),
        target,
        tx,
    });
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                close_link_with(sender, link_error(wire::condition::DETACH_FORCED, "the hub is shutting down")).await;
                return;
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                let sendable = Sendable::builder().message(msg).settled(true).build();
                if let Err(e) = sender.send_batchable(sendable).await {
                    tracing::debug!(%node, error = %e, "reply link gone");
                    return;
                }
            }
            _ = sender.on_detach() => {
                let _ = sender.close().await;
                return;
            }
        }
    }
}

/// Serves an incoming node link (the client's request sender).
pub(crate) async fn serve_request_link(
    replies: Arc<Replies>,
    node: Entity,
    mut receiver: Receiver,
    auth: Arc<ConnAuth>,
    shared: Arc<Shared>,
    peer: std::net::SocketAddr,
) {
    loop {
        let delivery = tokio::select! {
            _ = shared.shutdown.cancelled() => {
                close_link_with(receiver, link_error(wire::condition::DETACH_FORCED, "the hub is shutting down")).await;
                return;
            }
            d = receiver.recv::<Body<Value>>() => d,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%node, error = %e, "request link ended");
                let _ = receiver.close().await;
                return;
            }
        };
        if let Err(e) = receiver.accept(&delivery).await {
            tracing::debug!(%node, error = %e, "accepting request failed");
        }
        let request = delivery.into_message();
        if node == Entity::Cbs {
            shared.capture(crate::Captured::CbsRequest {
                peer,
                message: Box::new(request.clone()),
            });
        }
        let reply_to = request.properties.as_ref().and_then(|p| p.reply_to.clone());
        let message_id = request
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let mut reply = match node {
            Entity::Cbs => cbs(&request, &auth, &shared).into_cbs_message(),
            _ => management(&request, &auth, &shared).into_message(),
        };
        reply.properties = Some(Properties {
            correlation_id: message_id,
            ..Properties::default()
        });
        match replies.find(&node, reply_to.as_deref()).await {
            Some(tx) => {
                if tx.send(reply).await.is_err() {
                    tracing::debug!(%node, "reply link closed before the reply");
                }
            }
            None => {
                tracing::warn!(%node, "no reply link attached for a request within 5 s; the client will time out")
            }
        }
    }
}

/// An answer before it becomes a message.
struct Answer {
    status: i32,
    description: String,
    condition: Option<&'static str>,
    body: Value,
}

impl Answer {
    fn error(status: i32, condition: &'static str, description: impl Into<String>) -> Answer {
        Answer {
            status,
            description: description.into(),
            condition: Some(condition),
            body: Value::Null,
        }
    }

    /// A `$cbs` reply carries only `status-code` and `status-description`, as the service's
    /// does: pyamqp's CBS handler treats an `error-condition` as a failure of its own and
    /// drops the status, so the Python SDK would report "Status code: None".
    fn into_cbs_message(self) -> Message<Body<Value>> {
        let mut props = OrderedMap::new();
        props.insert("status-code".to_string(), SimpleValue::Int(self.status));
        props.insert(
            "status-description".to_string(),
            SimpleValue::String(self.description),
        );
        Message::builder()
            .application_properties(ApplicationProperties(props))
            .body(Body::Value(fe2o3_amqp::types::messaging::AmqpValue(
                self.body,
            )))
            .build()
    }

    fn into_message(self) -> Message<Body<Value>> {
        let mut props = OrderedMap::new();
        props.insert("status-code".to_string(), SimpleValue::Int(self.status));
        props.insert(
            "status-description".to_string(),
            SimpleValue::String(self.description.clone()),
        );
        props.insert(
            "statusDescription".to_string(),
            SimpleValue::String(self.description),
        );
        if let Some(c) = self.condition {
            props.insert(
                "error-condition".to_string(),
                SimpleValue::Symbol(Symbol::from(c)),
            );
        }
        Message::builder()
            .application_properties(ApplicationProperties(props))
            .body(Body::Value(fe2o3_amqp::types::messaging::AmqpValue(
                self.body,
            )))
            .build()
    }
}

fn app_prop<'a>(m: &'a Message<Body<Value>>, key: &str) -> Option<&'a SimpleValue> {
    m.application_properties.as_ref()?.0.get(key)
}

fn app_str(m: &Message<Body<Value>>, key: &str) -> Option<String> {
    match app_prop(m, key)? {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        _ => None,
    }
}

/// A `put-token` request: the token type, the audience (`name`) and the token (the body's
/// amqp-value string).
struct PutToken {
    token_type: String,
    audience: String,
    token: String,
}

impl PutToken {
    fn parse(request: &Message<Body<Value>>) -> Result<PutToken, Answer> {
        let op = app_str(request, "operation");
        if op.as_deref() != Some("put-token") {
            return Err(Answer::error(
                400,
                wire::condition::NOT_ALLOWED,
                format!("$cbs supports only put-token, not {op:?}"),
            ));
        }
        let token_type = app_str(request, "type").unwrap_or_default();
        let Some(audience) = app_str(request, "name") else {
            return Err(Answer::error(
                400,
                wire::condition::ARGUMENT_ERROR,
                "put-token without 'name' (the audience)",
            ));
        };
        let token = match &request.body {
            Body::Value(v) => match &v.0 {
                Value::String(s) => s.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        Ok(PutToken {
            token_type,
            audience,
            token,
        })
    }
}

fn accepted() -> Answer {
    Answer {
        status: 202,
        description: "Accepted".into(),
        condition: None,
        body: Value::Null,
    }
}

fn cbs(request: &Message<Body<Value>>, auth: &ConnAuth, shared: &Shared) -> Answer {
    let put = match PutToken::parse(request) {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    match put.token_type.as_str() {
        wire::SAS_TOKEN_TYPE => put_sas(&put, auth, shared),
        wire::JWT_TOKEN_TYPE => put_jwt(&put, auth, shared),
        // The service's answer to a token type it does not know: "Put token failed.
        // status-code: 400, status-description: Property 'type' in the
        // 'application-properties' section is either missing, has the wrong type, or has an
        // unexpected value." (Azure/azure-sdk-for-net#9388, a `Bearer` type instead of `jwt`).
        other => {
            tracing::info!(audience = %put.audience, token_type = %other, error_type = "unknown_token_type", "put-token refused");
            Answer::error(
                400,
                wire::condition::ARGUMENT_ERROR,
                format!("Property 'type' in the 'application-properties' section is either missing, has the wrong type, or has an unexpected value. (tcpulse-hub accepts '{}' and '{}', not '{other}'.)", wire::SAS_TOKEN_TYPE, wire::JWT_TOKEN_TYPE),
            )
        }
    }
}

fn put_sas(put: &PutToken, auth: &ConnAuth, shared: &Shared) -> Answer {
    let audience = &put.audience;
    match auth.put_token(
        &shared.policies,
        audience,
        &put.token,
        shared.config.max_token_lifetime,
    ) {
        Ok(_) => {
            tracing::debug!(%audience, "put-token accepted");
            accepted()
        }
        Err(denied) => {
            tracing::info!(%audience, token_type = wire::SAS_TOKEN_TYPE, reason = %denied, "put-token refused");
            Answer::error(401, wire::condition::UNAUTHORIZED, denied.0)
        }
    }
}

/// An Entra ID token: [`crate::entra::Entra::put_token`]; refused naming
/// `--entra-jwks-file` when no issuer is configured.
fn put_jwt(put: &PutToken, auth: &ConnAuth, shared: &Shared) -> Answer {
    let audience = &put.audience;
    let result = match &shared.entra {
        Some(entra) => {
            entra.put_token(auth, audience, &put.token, shared.config.max_token_lifetime)
        }
        None => Err(Refusal::NotConfigured),
    };
    match result {
        Ok(ok) => {
            tracing::debug!(%audience, principal = %ok.principal, rights = %ok.rights, "put-token (jwt) accepted");
            accepted()
        }
        Err(refusal) => {
            tracing::info!(%audience, token_type = wire::JWT_TOKEN_TYPE, error_type = refusal.error_type(), detail = %refusal, "put-token refused");
            Answer::error(
                refusal.status(),
                wire::condition::UNAUTHORIZED,
                refusal.description(),
            )
        }
    }
}

fn management(request: &Message<Body<Value>>, auth: &ConnAuth, shared: &Shared) -> Answer {
    let op = app_str(request, "operation").unwrap_or_default();
    if op != "READ" {
        return Answer::error(
            400,
            wire::condition::NOT_ALLOWED,
            format!("$management supports READ, not '{op}'"),
        );
    }
    let entity_type = app_str(request, "type").unwrap_or_default();
    let name = app_str(request, "name").unwrap_or_default();
    let Some(hub) = shared.broker.hub(&name) else {
        return Answer::error(
            404,
            wire::condition::NOT_FOUND,
            format!("The messaging entity '{name}' could not be found."),
        );
    };
    // Any right on the hub allows reading its properties; a security_token may stand in
    // for a put-token.
    let path = hub.name.to_ascii_lowercase();
    let any_right = || {
        [Right::Listen, Right::Send, Right::Manage]
            .iter()
            .any(|r| auth.check(&path, *r).is_ok())
    };
    let allowed = any_right()
        || app_str(request, "security_token").is_some_and(|t| {
            security_token(&t, &format!("sb://hub/{path}"), auth, shared) && any_right()
        });
    if !allowed {
        return Answer::error(
            401,
            wire::condition::UNAUTHORIZED,
            format!(
                "Unauthorized access to '{}': put a token on $cbs first.",
                hub.name
            ),
        );
    }
    match entity_type.as_str() {
        wire::EVENTHUB_ENTITY_TYPE => ok(hub_properties(hub)),
        wire::PARTITION_ENTITY_TYPE => {
            let id = app_str(request, "partition").unwrap_or_default();
            match hub.partition(&id) {
                Some((_, _)) => ok(partition_properties(hub, &id)),
                None => Answer::error(
                    404,
                    wire::condition::NOT_FOUND,
                    format!("Partition '{id}' of '{}' could not be found.", hub.name),
                ),
            }
        }
        other => Answer::error(
            400,
            wire::condition::ARGUMENT_ERROR,
            format!(
                "unknown entity type '{other}' (expected {} or {})",
                wire::EVENTHUB_ENTITY_TYPE,
                wire::PARTITION_ENTITY_TYPE
            ),
        ),
    }
}

/// A `security_token` on a `$management` request (Python and the Rust SDK send the CBS token
/// there too): a SAS, or a JWT when an Entra ID issuer is configured. True when accepted.
fn security_token(token: &str, audience: &str, auth: &ConnAuth, shared: &Shared) -> bool {
    let max = shared.config.max_token_lifetime;
    if token.starts_with("SharedAccessSignature ") {
        return auth
            .put_token(&shared.policies, audience, token, max)
            .is_ok();
    }
    shared
        .entra
        .as_ref()
        .is_some_and(|e| e.put_token(auth, audience, token, max).is_ok())
}

fn ok(body: Value) -> Answer {
    Answer {
        status: 200,
        description: "OK".into(),
        condition: None,
        body,
    }
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = OrderedMap::new();
    for (k, v) in entries {
        m.insert(Value::String(k.to_string()), v);
    }
    Value::Map(m)
}

fn hub_properties(hub: &EventHub) -> Value {
    map(vec![
        ("name", Value::String(hub.name.clone())),
        ("type", Value::String(wire::EVENTHUB_ENTITY_TYPE.into())),
        (
            "created_at",
            Value::Timestamp(Timestamp::from_milliseconds(hub.created_at_ms)),
        ),
        ("partition_count", Value::Int(hub.partitions.len() as i32)),
        (
            "partition_ids",
            Value::Array(Array::from(
                hub.partition_ids()
                    .into_iter()
                    .map(Value::String)
                    .collect::<Vec<_>>(),
            )),
        ),
    ])
}

fn partition_properties(hub: &EventHub, id: &str) -> Value {
    let info = match hub.partition(id) {
        Some((_, log)) => log.info(),
        None => return Value::Null,
    };
    map(vec![
        ("name", Value::String(hub.name.clone())),
        ("type", Value::String(wire::PARTITION_ENTITY_TYPE.into())),
        ("partition", Value::String(id.to_string())),
        (
            "begin_sequence_number",
            Value::Long(info.begin_sequence_number),
        ),
        ("begin_sequence_number_epoch", Value::Long(0)),
        (
            "last_enqueued_sequence_number",
            Value::Long(info.last_sequence_number),
        ),
        ("last_enqueued_sequence_number_epoch", Value::Long(0)),
        (
            "last_enqueued_offset",
            Value::String(info.last_offset.to_string()),
        ),
        (
            "last_enqueued_time_utc",
            Value::Timestamp(Timestamp::from_milliseconds(info.last_enqueued_time_ms)),
        ),
        ("is_partition_empty", Value::Bool(info.is_empty)),
    ])
}
