//! The hub's Entra ID (`jwt`) put-tokens (issue 15), with tokens from the loopback token
//! server (`tcpulse_tests::entra`): our client through a test `TokenSource` that does the
//! client-credentials flow, and the official `azure-eventhub` Python SDK with a token
//! credential (`tests/python/_common.py`'s `LoopbackClientSecretCredential`).
//!
//! - Data Sender sends and Data Receiver receives; a Sender's token used to receive, and a
//!   principal without a role, get the service's "Unauthorized access. 'Listen' (or 'Send')
//!   claim(s) are required …" at attach;
//! - a wrong audience, an expired token, a token signed by another issuer, and a `jwt` put on
//!   a hub without Entra ID each fail put-token with their own description;
//! - 4-second tokens for 20 s: refreshed on the live connection, no link dropped (one attach
//!   per link, every event through once);
//! - the Python SDK sends, receives, and shows the hub's refusals;
//! - the `jwt` put-token our client sends compared field by field with the SDK's;
//! - the `tcpulse-hub` binary with the `--entra-*` flags and a PEM key file.
//!
//! Checked only against the hub, not against Azure: the refusal texts (their sources are in
//! `hub/src/entra/verify.rs`; the texts for a bad signature, a malformed token and a future
//! `nbf` have none, and the service appends `TrackingId…` which the hub leaves out); that a
//! valid token without a role is accepted at put-token and refused at attach (the service's
//! documented behaviour for role assignments, not observed here); the check order; that
//! `exp` has no leeway (Microsoft.IdentityModel's default skew is 5 min); that a role scoped to
//! a hub covers its consumer groups (the Event Hubs troubleshooting page says so). The wire
//! format of the put-token (type `jwt`, audience `sb://host/hub`, expiration, body) is the
//! SDK's, checked here against the SDK itself.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use fe2o3_amqp::types::primitives::{SimpleValue, Value as AmqpValue};
use serde_json::{json, Value};
use tcpulse_eventhub::client::{
    BatchOptions, ClientConfig, Consumer, ConsumerOptions, EventData, Producer, SendOptions,
    StartPosition,
};
use tcpulse_hub::entra::EntraConfig;
use tcpulse_hub::{Captured, Hub, HubConfig, HubSpec};
use tcpulse_tests::client::client_config;
use tcpulse_tests::entra::{
    ClientSecretSource, Principal, TestIssuer, TokenServer, TokenServerOptions,
};
use tcpulse_tests::hub::{init_tracing, HubInfo, Policy, TestHub};
use tcpulse_tests::python::run_script;

const HUB: &str = "tcpulse";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

fn secret_of(p: &Principal) -> String {
    format!("secret-of-{}", p.client_id)
}

/// A hub trusting one issuer, its token server, and four principals: a Data Sender on the
/// hub, a Data Receiver on the namespace, a Data Owner, and one without a role.
struct World {
    server: TokenServer,
    hub: Hub,
    info: HubInfo,
    sender: Principal,
    receiver: Principal,
    owner: Principal,
    nobody: Principal,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(token_lifetime: Duration, capture: bool) -> Result<World> {
        init_tracing();
        let dir = tempfile::TempDir::new()?;
        let issuer = TestIssuer::generate()?;
        let (sender, receiver, owner, nobody) = (
            Principal::random(),
            Principal::random(),
            Principal::random(),
            Principal::random(),
        );
        let jwks = dir.path().join("jwks.json");
        issuer.write_jwks(&jwks)?;
        let roles = dir.path().join("roles");
        std::fs::write(
            &roles,
            [
                sender.role_assignment("Azure Event Hubs Data Sender", Some(HUB)),
                receiver.role_assignment("Azure Event Hubs Data Receiver", None),
                owner.role_assignment("Azure Event Hubs Data Owner", Some(HUB)),
            ]
            .join("\n"),
        )?;
        let server = TokenServer::start(
            &issuer,
            TokenServerOptions {
                lifetime: token_lifetime,
                client_secrets: [&sender, &receiver, &owner, &nobody]
                    .into_iter()
                    .map(|p| (p.clone(), secret_of(p)))
                    .collect(),
                ..TokenServerOptions::default()
            },
        )
        .await?;
        let hub = Hub::start(HubConfig {
            listen: "127.0.0.1:0".parse()?,
            plain_listen: None,
            hubs: vec![HubSpec {
                name: HUB.into(),
                partitions: 2,
            }],
            tls_dir: Some(dir.path().join("tls")),
            capture,
            entra: EntraConfig {
                jwks_file: Some(jwks),
                issuer: Some(issuer.issuer()),
                role_assignments: Some(roles),
                ..EntraConfig::default()
            },
            ..HubConfig::default()
        })
        .await?;
        let info = HubInfo::from_ready(&hub.ready_info())?;
        Ok(World {
            server,
            hub,
            info,
            sender,
            receiver,
            owner,
            nobody,
            _dir: dir,
        })
    }

    /// Our client's config for the hub, with `who`'s client-credentials tokens.
    fn config(&self, who: &Principal) -> Result<ClientConfig> {
        config_with(&self.info, &self.server, who)
    }

    async fn shutdown(self) {
        self.hub.shutdown().await;
        self.server.shutdown().await;
    }
}

/// The hub's TLS client config with the credential replaced by `who`'s client secret.
fn config_with(info: &HubInfo, server: &TokenServer, who: &Principal) -> Result<ClientConfig> {
    let mut c = client_config(info, Policy::Send)?;
    c.credential = Arc::new(ClientSecretSource::new(
        server.token_url(),
        who.client_id.clone(),
        secret_of(who),
    ));
    Ok(c)
}

/// Sends `bodies` to partition `pid` in one batch.
async fn send(config: ClientConfig, pid: &str, bodies: &[String]) -> Result<()> {
    let mut p = Producer::connect(config).await?;
    let mut batch = p.create_batch(BatchOptions {
        partition_id: Some(pid.into()),
        ..Default::default()
    })?;
    for b in bodies {
        batch
            .try_add(EventData::new(b.clone().into_bytes()))
            .map_err(|e| anyhow!("{e}"))?;
    }
    p.send_batch(&batch).await?;
    p.close().await;
    Ok(())
}

/// The error text of a send of one event, within 60 s (an accepted send is an error).
async fn send_refused(config: ClientConfig) -> Result<String> {
    match tokio::time::timeout(Duration::from_secs(60), send(config, "0", &["x".into()])).await {
        Err(_) => bail!("neither refused nor accepted within 60 s"),
        Ok(Ok(())) => bail!("the send was accepted"),
        Ok(Err(e)) => Ok(format!("{e:#}")),
    }
}

/// Bodies of `n` events of partition `pid` from earliest (30 s at most).
async fn receive(config: ClientConfig, pid: &str, n: usize) -> Result<Vec<String>> {
    let mut opts = ConsumerOptions::new(pid);
    opts.start = StartPosition::Earliest;
    let run = async {
        let mut c = Consumer::connect(config, opts).await?;
        let mut out = Vec::new();
        while out.len() < n {
            let ev = c.recv().await?;
            out.push(String::from_utf8_lossy(&ev.body).into_owned());
        }
        c.close().await;
        anyhow::Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| anyhow!("receiving {n} events took over 30 s"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_entra_sender_and_receiver_roles_send_and_receive() -> Result<()> {
    let w = World::start(Duration::from_secs(3600), false).await?;
    let bodies: Vec<String> = (0..5).map(|i| format!("entra-{i}")).collect();
    send(w.config(&w.sender)?, "0", &bodies).await?;
    // The Data Owner scoped to the hub sends too (to partition 1).
    send(w.config(&w.owner)?, "1", &["owner".into()]).await?;
    assert_eq!(receive(w.config(&w.receiver)?, "0", 5).await?, bodies);
    assert_eq!(receive(w.config(&w.owner)?, "1", 1).await?, ["owner"]);
    assert!(
        w.server.requests() >= 4,
        "one token per connection at least"
    );
    w.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_entra_wrong_role_is_refused_at_attach_with_the_missing_claim() -> Result<()> {
    let w = World::start(Duration::from_secs(3600), false).await?;
    send(w.config(&w.sender)?, "0", &["one".into()]).await?;

    // A Data Sender's token used to receive.
    let err = match receive(w.config(&w.sender)?, "0", 1).await {
        Ok(got) => bail!("a Sender token received {got:?}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains(
            "Unauthorized access. 'Listen' claim(s) are required to perform this operation."
        ),
        "not the missing-claim refusal: {err}"
    );
    ensure!(err.contains("amqp:unauthorized-access"), "{err}");
    ensure!(
        !err.contains("refused the token"),
        "the token itself was fine: {err}"
    );

    // A valid token without any role, and a Data Receiver's token, used to send.
    for who in [&w.nobody, &w.receiver] {
        let err = send_refused(w.config(who)?).await?;
        ensure!(
            err.contains(
                "Unauthorized access. 'Send' claim(s) are required to perform this operation."
            ),
            "not the missing-claim refusal: {err}"
        );
    }
    w.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_entra_bad_tokens_are_refused_each_with_its_own_reason() -> Result<()> {
    let w = World::start(Duration::from_secs(3600), false).await?;
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();

    w.server.set_audience("https://storage.azure.com/");
    seen.insert(
        "InvalidAudience: Invalid authorization token audience.",
        send_refused(w.config(&w.sender)?).await?,
    );
    w.server.set_audience("https://eventhubs.azure.net/");
    w.server.set_lifetime(Duration::ZERO);
    seen.insert(
        "ExpiredToken: The token is expired.",
        send_refused(w.config(&w.sender)?).await?,
    );
    w.server.set_lifetime(Duration::from_secs(3600));

    // Another issuer's token server, same principal and secret: its key is not trusted.
    let stranger = TestIssuer::generate()?;
    let other = TokenServer::start(
        &stranger,
        TokenServerOptions {
            client_secrets: vec![(w.sender.clone(), secret_of(&w.sender))],
            ..TokenServerOptions::default()
        },
    )
    .await?;
    seen.insert(
        "InvalidSignature: The token has an invalid signature.",
        send_refused(config_with(&w.info, &other, &w.sender)?).await?,
    );
    other.shutdown().await;

    // A hub without an Entra ID issuer.
    let plain = TestHub::start().await?;
    seen.insert(
        "tcpulse-hub has no Entra ID issuer configured",
        send_refused(config_with(&plain.info, &w.server, &w.sender)?).await?,
    );
    plain.shutdown().await;

    for (want, err) in &seen {
        eprintln!("{want} -> {err}");
        ensure!(err.contains(want), "expected {want:?} in: {err}");
        ensure!(
            err.contains("refused the token"),
            "not reported as a refused token: {err}"
        );
        for other in seen.keys().filter(|k| *k != want) {
            ensure!(!err.contains(other), "{want:?} also shows {other:?}: {err}");
        }
    }
    ensure!(
        seen["tcpulse-hub has no Entra ID issuer configured"].contains("--entra-jwks-file"),
        "the refusal names the flag"
    );
    // The token server still works: the sender's valid token is accepted afterwards.
    send(w.config(&w.sender)?, "0", &["after".into()]).await?;
    w.shutdown().await;
    Ok(())
}

/// How often each event link (a producer's target, a consumer's source address) attached.
fn event_link_attaches(caps: &[Captured]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in caps {
        let Captured::Attach { attach, .. } = c else {
            continue;
        };
        let target = format!("{:?}", attach.target);
        let source = attach
            .source
            .as_ref()
            .and_then(|s| s.address.clone())
            .unwrap_or_default();
        let role = format!("{:?}", attach.role);
        let link = if role == "Sender" && target.contains("://") {
            format!("producer {target}")
        } else if role == "Receiver" && source.contains("/Partitions/") {
            format!("consumer {source}")
        } else {
            continue;
        };
        *out.entry(link).or_insert(0) += 1;
    }
    out
}

fn jwt_put_tokens(caps: &[Captured]) -> usize {
    caps.iter()
        .filter(|c| {
            cbs_app_props(c).is_some_and(|p| p.get("type").is_some_and(|t| t["value"] == "jwt"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_entra_short_lived_tokens_are_refreshed_without_dropping_links() -> Result<()> {
    const LIFETIME: Duration = Duration::from_secs(4);
    const RUN: Duration = Duration::from_secs(20);
    let w = World::start(LIFETIME, true).await?;
    let mut opts = ConsumerOptions::new("0");
    opts.start = StartPosition::Earliest;
    let mut consumer = Consumer::connect(w.config(&w.receiver)?, opts).await?;
    let mut producer = Producer::connect(w.config(&w.sender)?).await?;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
                Ok(Ok(ev)) => got.push(String::from_utf8_lossy(&ev.body).into_owned()),
                Ok(Err(e)) => {
                    return Err(anyhow!("receive failed after {} events: {e:#}", got.len()))
                }
                Err(_) => break,
            }
        }
        consumer.close().await;
        Ok(got)
    });
    let t0 = Instant::now();
    let mut sent = Vec::new();
    while t0.elapsed() < RUN {
        let body = format!("tick-{}", sent.len());
        producer
            .send(
                EventData::new(body.clone().into_bytes()),
                SendOptions {
                    partition_id: Some("0".into()),
                    partition_key: None,
                },
            )
            .await
            .with_context(|| format!("send {} at {:?}", sent.len(), t0.elapsed()))?;
        sent.push(body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    producer.close().await;
    let got = reader.await??;
    let caps = w.hub.captured();
    let links = event_link_attaches(&caps);
    let puts = jwt_put_tokens(&caps);
    eprintln!(
        "{} events over {RUN:?} with {LIFETIME:?} tokens: {puts} jwt put-tokens, {} tokens issued",
        sent.len(),
        w.server.requests()
    );
    assert_eq!(got, sent, "every event exactly once, in order");
    ensure!(
        links.keys().any(|l| l.starts_with("producer"))
            && links.keys().any(|l| l.starts_with("consumer")),
        "links seen: {links:?}"
    );
    ensure!(
        links.values().all(|n| *n == 1),
        "a link attached twice, so it was dropped: {links:?}"
    );
    // 20 s of 4 s tokens on two connections: at least four renewals each.
    ensure!(
        puts >= 10,
        "only {puts} put-tokens: the tokens were not refreshed"
    );
    ensure!(
        w.server.requests() >= 10,
        "only {} tokens issued",
        w.server.requests()
    );
    w.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// the Python SDK with a token credential
// ---------------------------------------------------------------------------------------

fn all_error_text(r: &Value) -> String {
    let mut out = String::new();
    for p in r["partitions"].as_array().into_iter().flatten() {
        for e in p["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(p["open_errors"].as_array().into_iter().flatten())
        {
            out.push_str(e["message"].as_str().unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_entra_python_sdk_with_a_token_credential_sends_receives_and_shows_refusals(
) -> Result<()> {
    let w = World::start(Duration::from_secs(3600), false).await?;
    let conn = |p: &Principal| {
        w.info
            .conn_credential(w.server.python_client_secret(p, &secret_of(p)))
    };

    let r = run_script(
        "send",
        json!({"conn": conn(&w.sender), "sends": [
            {"how": "batch", "partition_id": "0", "events": [{"body": "py-0"}, {"body": "py-1"}, {"body": "py-2"}]}]}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    ensure!(r["results"][0]["ok"] == true, "the SDK's send failed: {r}");
    // The SDK asks for the scope with the double slash (azure-eventhub 5.15.1
    // `_constants.py:40` JWT_TOKEN_SCOPE).
    ensure!(
        r["credential_calls"][0] == json!(["https://eventhubs.azure.net//.default"]),
        "scopes asked: {r}"
    );

    let r = run_script(
        "receive",
        json!({"conn": conn(&w.receiver), "partitions": ["0"], "position": {"kind": "earliest"},
               "expect": 3, "max_seconds": 20, "settle_seconds": 0}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    let bodies: Vec<&str> = r["partitions"][0]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["body"].as_str())
        .collect();
    ensure!(bodies == ["py-0", "py-1", "py-2"], "the SDK received {r}");

    // A Data Sender receiving: the SDK reports the hub's missing-claim description.
    let r = run_script(
        "receive",
        json!({"conn": conn(&w.sender), "partitions": ["0"], "position": {"kind": "earliest"},
               "expect": 1, "max_seconds": 8, "settle_seconds": 0, "stop_on_error": true,
               "attach_timeout_s": 15}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    let errors = all_error_text(&r);
    eprintln!("SDK, Sender receiving: {errors:?}");
    ensure!(
        r["partitions"][0]["events"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "a Sender received events: {r}"
    );
    ensure!(
        errors.contains("'Listen' claim(s) are required to perform this operation"),
        "the SDK does not show the hub's description: {r}"
    );

    // A wrong audience: the SDK shows the put-token status and description.
    w.server.set_audience("https://storage.azure.com/");
    let r = run_script(
        "send",
        json!({"conn": conn(&w.sender), "sends": [{"how": "batch", "partition_id": "0", "events": [{"body": "no"}]}]}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    let message = r["results"][0]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    eprintln!("SDK, wrong audience: {message:?}");
    ensure!(
        r["results"][0]["ok"] == false,
        "a wrong audience was accepted: {r}"
    );
    ensure!(
        message.contains("Status code: 401")
            && message.contains("InvalidAudience: Invalid authorization token audience."),
        "the SDK does not show the refusal: {r}"
    );
    w.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// the jwt put-token on the wire: ours against the SDK's
// ---------------------------------------------------------------------------------------

fn cbs_app_props(c: &Captured) -> Option<BTreeMap<String, Value>> {
    let Captured::CbsRequest { message, .. } = c else {
        return None;
    };
    let props = message.application_properties.as_ref()?;
    Some(
        props
            .0
            .iter()
            .map(|(k, v)| (k.clone(), simple(v)))
            .collect(),
    )
}

/// A CBS application property as `{"type": …, "value": …}` (timestamps in ms).
fn simple(v: &SimpleValue) -> Value {
    let ty = format!("{v:?}")
        .split('(')
        .next()
        .unwrap_or_default()
        .to_string();
    let value = match v {
        SimpleValue::String(s) => json!(s),
        SimpleValue::Symbol(s) => json!(s.0),
        SimpleValue::Timestamp(t) => json!(t.clone().into_inner()),
        other => json!(format!("{other:?}")),
    };
    json!({"type": ty, "value": value})
}

/// The body of a captured put-token: its AMQP section and the token string.
fn cbs_body(c: &Captured) -> Option<(String, String)> {
    let Captured::CbsRequest { message, .. } = c else {
        return None;
    };
    let section = format!("{:?}", message.body)
        .split('(')
        .next()
        .unwrap_or_default()
        .to_string();
    let token = match &message.body {
        fe2o3_amqp::types::messaging::Body::Value(v) => match &v.0 {
            AmqpValue::String(s) => s.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    Some((section, token))
}

/// The `exp` claim of a JWT (no verification: the hub accepted it already).
fn exp_of(jwt: &str) -> Option<i64> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_i64()
}

struct PutToken {
    props: BTreeMap<String, Value>,
    section: String,
    token: String,
}

fn put_tokens(caps: &[Captured]) -> Vec<PutToken> {
    caps.iter()
        .filter_map(|c| {
            let props = cbs_app_props(c)?;
            let (section, token) = cbs_body(c)?;
            Some(PutToken {
                props,
                section,
                token,
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_entra_wire_our_jwt_put_token_matches_the_python_sdk() -> Result<()> {
    let w = World::start(Duration::from_secs(3600), true).await?;
    let r = run_script(
        "send",
        json!({"conn": w.info.conn_credential(w.server.python_client_secret(&w.sender, &secret_of(&w.sender))),
               "sends": [{"how": "batch", "partition_key": "k", "events": [{"body": "py"}]}]}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    ensure!(r["results"][0]["ok"] == true, "{r}");
    let sdk = put_tokens(&w.hub.captured());
    send(w.config(&w.sender)?, "0", &["rs".into()]).await?;
    let all = put_tokens(&w.hub.captured());
    let ours = &all[sdk.len()..];
    ensure!(!sdk.is_empty() && !ours.is_empty(), "no put-token captured");
    for (who, p) in sdk
        .iter()
        .map(|p| ("SDK", p))
        .chain(ours.iter().map(|p| ("ours", p)))
    {
        eprintln!("{who}: {:?} body {}", p.props, p.section);
    }

    for o in ours {
        for s in &sdk {
            // The keys the service reads and their AMQP types: name, operation, type
            // (strings) and expiration (a timestamp).
            let types = |p: &PutToken| {
                p.props
                    .iter()
                    .map(|(k, v)| (k.clone(), v["type"].clone()))
                    .collect::<BTreeMap<_, _>>()
            };
            ensure!(
                types(o) == types(s),
                "property types: SDK {:?} ours {:?}",
                types(s),
                types(o)
            );
            for key in ["operation", "type", "name"] {
                ensure!(
                    o.props[key]["value"] == s.props[key]["value"],
                    "{key}: SDK {} ours {}",
                    s.props[key],
                    o.props[key]
                );
            }
            ensure!(
                o.section == s.section,
                "body section: SDK {} ours {}",
                s.section,
                o.section
            );
        }
    }
    let first = &ours[0];
    ensure!(first.props["type"]["value"] == "jwt", "{:?}", first.props);
    ensure!(
        first.props["name"]["value"]
            == json!(format!(
                "sb://{}:{}/{HUB}",
                w.info.namespace,
                w.info.amqps.port()
            )),
        "audience form: {:?}",
        first.props["name"]
    );
    ensure!(first.section == "Value", "the token goes as an amqp-value");
    // Both send the token's expiry as `expiration` (ms); both tokens come from the same
    // endpoint, so each matches its own token's `exp` within a few seconds.
    for p in sdk.iter().chain(ours) {
        let exp_ms = exp_of(&p.token).context("the body is not a JWT")? * 1000;
        let sent = p.props["expiration"]["value"].as_i64().unwrap_or_default();
        ensure!(
            (sent - exp_ms).abs() <= 2000,
            "expiration {sent} for a token expiring at {exp_ms}"
        );
    }
    // Deliberate difference (as for SAS, see client_sdk_interop.rs): our request carries
    // `reply-to`, pyamqp's does not; the service answers on the link either way.
    w.shutdown().await;
    Ok(())
}

/// The `tcpulse-hub` binary with the `--entra-*` flags (a PEM key file this time), as the
/// agent and collector tests start it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_entra_binary_flags_take_a_pem_key_and_the_role_table() -> Result<()> {
    use tcpulse_tests::hub::{HubOptions, HubProcess};
    init_tracing();
    let dir = tempfile::TempDir::new()?;
    let issuer = TestIssuer::generate()?;
    let sender = Principal::random();
    let pem = dir.path().join("issuer.pem");
    std::fs::write(&pem, issuer.public_key_pem()?)?;
    let roles = dir.path().join("roles");
    std::fs::write(
        &roles,
        sender.role_assignment("Azure Event Hubs Data Sender", None),
    )?;
    let server = TokenServer::start(
        &issuer,
        TokenServerOptions {
            client_secrets: vec![(sender.clone(), secret_of(&sender))],
            ..TokenServerOptions::default()
        },
    )
    .await?;
    let hub = HubProcess::spawn(HubOptions {
        hubs: vec![(HUB.into(), 2)],
        plain: false,
        entra: EntraConfig {
            jwks_file: Some(pem),
            issuer: Some(issuer.issuer()),
            role_assignments: Some(roles),
            ..EntraConfig::default()
        },
        ..HubOptions::default()
    })
    .await?;
    send(
        config_with(&hub.info, &server, &sender)?,
        "0",
        &["bin".into()],
    )
    .await?;
    let err = match receive(config_with(&hub.info, &server, &sender)?, "0", 1).await {
        Ok(got) => bail!("a Sender received {got:?}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("'Listen' claim(s) are required"), "{err}");
    drop(hub);
    server.shutdown().await;
    Ok(())
}
