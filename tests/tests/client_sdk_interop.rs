//! Our Event Hubs client (`tcpulse_eventhub::client`) against the official `azure-eventhub`
//! Python SDK, through the hub over TLS (issue 3):
//!
//! - the SDK sends (single events, batches, partition keys, partition ids, typed
//!   properties) and our `Consumer` hands out exactly what the SDK's own consumer sees;
//! - our `Producer` sends and the SDK's consumer receives our bodies, properties, partition
//!   keys;
//! - with a capturing hub, the CBS `put-token` request and the producer/consumer link
//!   attaches our client sends are compared field for field with the SDK's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use fe2o3_amqp::types::primitives::{SimpleValue, Value as AmqpValue};
use serde_json::{json, Value};
use tcpulse_eventhub::client::{
    BatchOptions, Consumer, ConsumerOptions, EventData, Producer, ReceivedEvent, SendOptions,
    StartPosition,
};
use tcpulse_hub::{Captured, Hub, HubConfig, HubSpec};
use tcpulse_tests::client::client_config;
use tcpulse_tests::hub::{init_tracing, HubInfo, Mode, Policy, TestHub};
use tcpulse_tests::python::run_script;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

/// Every event of `partition` from earliest until it is quiet for 1.5 s.
async fn our_read(info: &HubInfo, partition: &str) -> Result<Vec<ReceivedEvent>> {
    let mut opts = ConsumerOptions::new(partition);
    opts.start = StartPosition::Earliest;
    let mut c = tokio::time::timeout(
        Duration::from_secs(20),
        Consumer::connect(client_config(info, Policy::Listen)?, opts),
    )
    .await
    .map_err(|_| anyhow!("connect timed out"))??;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(1500), c.recv()).await {
            Ok(e) => out.push(e?),
            Err(_) => break,
        }
    }
    c.close().await;
    Ok(out)
}

/// Every event the SDK's consumer sees, from earliest, in all partitions.
async fn sdk_read(info: &HubInfo) -> Result<Vec<Value>> {
    let r = run_script(
        "receive",
        json!({
            "conn": info.conn(Mode::Tls, Policy::Listen)?,
            "position": {"kind": "earliest"},
            "expect": null,
            "idle_seconds": 2.0,
            "max_seconds": 40,
            "settle_seconds": 0,
        }),
        SCRIPT_TIMEOUT,
    )
    .await?;
    Ok(r["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["events"].as_array().cloned().unwrap_or_default())
        .collect())
}

/// A property value as the SDK's JSON shows it, and the Python type name it decodes to.
fn simple_json(v: &SimpleValue) -> (Value, &'static str) {
    match v {
        SimpleValue::Bool(b) => (json!(b), "bool"),
        // pyamqp hands AMQP strings in application properties back as `bytes` (its own
        // strings too), so that is the type name the SDK's view shows for them.
        SimpleValue::String(s) => (json!(s), "bytes"),
        SimpleValue::Symbol(s) => (json!(s.0), "bytes"),
        SimpleValue::Long(n) => (json!(n), "int"),
        SimpleValue::Int(n) => (json!(n), "int"),
        SimpleValue::Short(n) => (json!(n), "int"),
        SimpleValue::Byte(n) => (json!(n), "int"),
        SimpleValue::Ulong(n) => (json!(n), "int"),
        SimpleValue::Uint(n) => (json!(n), "int"),
        SimpleValue::Ushort(n) => (json!(n), "int"),
        SimpleValue::Ubyte(n) => (json!(n), "int"),
        SimpleValue::Double(d) => (json!(d.into_inner()), "float"),
        SimpleValue::Float(f) => (json!(f.into_inner()), "float"),
        SimpleValue::Binary(b) => (json!(String::from_utf8_lossy(b.as_ref())), "bytes"),
        other => (json!(format!("{other:?}")), "other"),
    }
}

/// Our event in the shape `_common.describe_event` gives the SDK's.
fn describe_ours(e: &ReceivedEvent) -> Value {
    let mut props = serde_json::Map::new();
    let mut types = serde_json::Map::new();
    for (k, v) in e.properties.iter() {
        let (j, t) = simple_json(v);
        props.insert(k.clone(), j);
        types.insert(k.clone(), json!(t));
    }
    json!({
        "partition_id": e.partition_id,
        "body": String::from_utf8_lossy(&e.body),
        "sequence_number": e.sequence_number,
        "offset": e.offset,
        "enqueued_time_ms": e.enqueued_time.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
        "partition_key": e.partition_key,
        "properties": props,
        "property_types": types,
        "content_type": e.content_type,
        "correlation_id": e.correlation_id,
        "message_id": e.message_id,
    })
}

const COMPARED: [&str; 11] = [
    "partition_id",
    "body",
    "sequence_number",
    "offset",
    "enqueued_time_ms",
    "partition_key",
    "properties",
    "property_types",
    "content_type",
    "correlation_id",
    "message_id",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_consumer_receives_what_the_python_sdk_sent() -> Result<()> {
    let t0 = Instant::now();
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    // (An int beyond 32 bits is refused by the SDK itself: "Value supplied for int invalid".)
    let props = json!({"s": "text", "i": 42, "neg": -7, "f": 1.5, "b": true});
    let sends = json!([
        {"how": "event", "events": [{"body": "single-no-routing"}]},
        {"how": "event", "partition_id": "1", "events": [
            {"body": "single-p1", "properties": props, "content_type": "application/json",
             "correlation_id": "corr-1", "message_id": "msg-1"}]},
        {"how": "batch", "partition_key": "tc-key.example.com", "events": [
            {"body": "batch-key-0", "properties": {"n": 0}},
            {"body": "batch-key-1", "properties": {"n": 1, "s": "x"}},
            {"body": "batch-key-2"}]},
        {"how": "batch", "partition_id": "2", "events": [
            {"body": "batch-p2-0", "properties": props}, {"body": "batch-p2-1"}]},
        {"how": "event", "partition_key": "single-key", "events": [{"body": "single-key"}]},
        {"how": "batch", "events": [{"body": {"size": 2000, "fill": "ab"}}]},
    ]);
    let r = run_script(
        "send",
        json!({"conn": info.conn(Mode::Tls, Policy::Send)?, "sends": sends}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    for (i, res) in r["results"].as_array().into_iter().flatten().enumerate() {
        ensure!(res["ok"] == true, "SDK send {i} failed: {res}");
    }
    let sdk = sdk_read(&info).await?;
    ensure!(
        sdk.len() == 9,
        "the SDK consumer saw {} events: {sdk:?}",
        sdk.len()
    );
    let mut ours = Vec::new();
    for p in info.partition_ids() {
        ours.extend(our_read(&info, &p).await?);
    }
    ensure!(ours.len() == 9, "our consumer saw {} events", ours.len());
    let key = |v: &Value| {
        (
            v["partition_id"].as_str().unwrap_or_default().to_string(),
            v["sequence_number"].as_i64().unwrap_or(-1),
        )
    };
    let sdk_by: BTreeMap<_, _> = sdk.iter().map(|e| (key(e), e)).collect();
    for e in &ours {
        let mine = describe_ours(e);
        let theirs = sdk_by
            .get(&key(&mine))
            .ok_or_else(|| anyhow!("the SDK did not see {mine}"))?;
        for f in COMPARED {
            ensure!(
                mine[f] == theirs[f],
                "{f} differs for {:?}:\n ours {}\n SDK  {}",
                key(&mine),
                mine[f],
                theirs[f]
            );
        }
        // Service annotations are there (the SDK lists the system property keys).
        for a in [
            "x-opt-sequence-number",
            "x-opt-offset",
            "x-opt-enqueued-time",
        ] {
            ensure!(
                e.annotation(a).is_some(),
                "{a} missing: {:?}",
                e.annotations
            );
            ensure!(
                theirs["system_property_keys"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == a)),
                "the SDK lacks {a}: {theirs}"
            );
        }
    }
    // Routing: one key → one partition; the keyed batch keeps its order.
    let keyed: Vec<&ReceivedEvent> = ours
        .iter()
        .filter(|e| e.partition_key.as_deref() == Some("tc-key.example.com"))
        .collect();
    ensure!(keyed.len() == 3, "keyed batch: {}", keyed.len());
    ensure!(
        keyed
            .iter()
            .all(|e| e.partition_id == keyed[0].partition_id),
        "one key, one partition"
    );
    ensure!(
        ours.iter()
            .any(|e| e.body.len() == 2000 && e.body.starts_with(b"abab")),
        "the 2000-byte body arrived whole"
    );
    hub.shutdown().await;
    eprintln!(
        "SDK → our consumer: 9 events identical in {:?}",
        t0.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_producer_events_reach_the_python_sdk() -> Result<()> {
    let t0 = Instant::now();
    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let mut p = tokio::time::timeout(
        Duration::from_secs(20),
        Producer::connect(client_config(&info, Policy::Send)?),
    )
    .await
    .map_err(|_| anyhow!("producer connect timed out"))??;
    p.send(
        EventData::new(&b"ours-single-key"[..])
            .with_property("schema", "tcpulse.status.v1")
            .with_property("n", 7i64)
            .with_property("f", 2.5f64)
            .with_property("ok", true)
            .with_content_type("application/json"),
        SendOptions {
            partition_key: Some("tc-ours.example.com".into()),
            partition_id: None,
        },
    )
    .await?;
    p.send(
        EventData::new(&b"ours-single-p3"[..]),
        SendOptions {
            partition_key: None,
            partition_id: Some("3".into()),
        },
    )
    .await?;
    let mut batch = p.create_batch(BatchOptions {
        partition_key: Some("tc-batch.example.com".into()),
        ..Default::default()
    })?;
    for i in 0..5 {
        batch
            .try_add(
                EventData::new(format!("ours-batch-{i}").into_bytes()).with_property("i", i as i64),
            )
            .map_err(|e| anyhow!("try_add: {e}"))?;
    }
    p.send_batch(&batch).await?;
    p.close().await;

    let sdk = sdk_read(&info).await?;
    ensure!(sdk.len() == 7, "the SDK saw {} events: {sdk:?}", sdk.len());
    let by_body: BTreeMap<String, &Value> = sdk
        .iter()
        .map(|e| (e["body"].as_str().unwrap_or_default().to_string(), e))
        .collect();
    let e = by_body
        .get("ours-single-key")
        .ok_or_else(|| anyhow!("single keyed event missing"))?;
    ensure!(e["partition_key"] == "tc-ours.example.com", "{e}");
    ensure!(e["content_type"] == "application/json", "{e}");
    ensure!(
        e["properties"] == json!({"schema": "tcpulse.status.v1", "n": 7, "f": 2.5, "ok": true}),
        "{e}"
    );
    ensure!(
        e["property_types"] == json!({"schema": "bytes", "n": "int", "f": "float", "ok": "bool"}),
        "{e}"
    );
    let e = by_body
        .get("ours-single-p3")
        .ok_or_else(|| anyhow!("partition-id event missing"))?;
    ensure!(
        e["partition_id"] == "3" && e["partition_key"].is_null(),
        "{e}"
    );
    let batch_events: Vec<&&Value> = (0..5)
        .map(|i| {
            by_body
                .get(&format!("ours-batch-{i}"))
                .ok_or_else(|| anyhow!("batch {i} missing"))
        })
        .collect::<Result<_>>()?;
    for (i, e) in batch_events.iter().enumerate() {
        ensure!(e["partition_key"] == "tc-batch.example.com", "{e}");
        ensure!(e["properties"] == json!({"i": i}), "{e}");
        ensure!(
            e["partition_id"] == batch_events[0]["partition_id"],
            "a batch lands in one partition"
        );
        if i > 0 {
            ensure!(
                e["sequence_number"].as_i64() > batch_events[i - 1]["sequence_number"].as_i64(),
                "batch order kept"
            );
        }
    }
    hub.shutdown().await;
    eprintln!("our producer → SDK: 7 events intact in {:?}", t0.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// wire comparison through a capturing hub
// ---------------------------------------------------------------------------------------

async fn capturing_hub(dir: &std::path::Path) -> Result<(Hub, HubInfo)> {
    init_tracing();
    let hub = Hub::start(HubConfig {
        listen: "127.0.0.1:0".parse()?,
        plain_listen: None,
        hubs: vec![HubSpec {
            name: "tcpulse".into(),
            partitions: 2,
        }],
        tls_dir: Some(dir.join("tls")),
        capture: true,
        ..HubConfig::default()
    })
    .await?;
    let info = HubInfo::from_ready(&hub.ready_info())?;
    Ok((hub, info))
}

fn amqp_type(v: &AmqpValue) -> String {
    let d = format!("{v:?}");
    d.split('(').next().unwrap_or_default().to_string()
}

/// The parts of a CBS put-token request the service reads.
fn cbs_profile(c: &Captured) -> Option<Value> {
    let Captured::CbsRequest { message, .. } = c else {
        return None;
    };
    let props: BTreeMap<String, String> = message
        .application_properties
        .as_ref()
        .map(|ap| {
            ap.0.iter()
                .map(|(k, v)| (k.clone(), simple_type(v)))
                .collect()
        })
        .unwrap_or_default();
    let values: BTreeMap<String, String> = message
        .application_properties
        .as_ref()
        .map(|ap| {
            ap.0.iter()
                .filter(|(k, _)| k.as_str() != "name" && k.as_str() != "expiration")
                .map(|(k, v)| (k.clone(), simple_json(v).0.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let name = message
        .application_properties
        .as_ref()
        .and_then(|ap| ap.0.get("name").map(|v| simple_json(v).0));
    let p = message.properties.as_ref();
    Some(json!({
        "app_property_types": props,
        "app_property_values": values,
        "name": name,
        "body": format!("{:?}", message.body).split('(').next().unwrap_or_default(),
        "has_message_id": p.is_some_and(|p| p.message_id.is_some()),
        "has_reply_to": p.is_some_and(|p| p.reply_to.is_some()),
    }))
}

fn simple_type(v: &SimpleValue) -> String {
    format!("{v:?}")
        .split('(')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The parts of a link attach the service reads.
fn attach_profile(c: &Captured) -> Option<Value> {
    let Captured::Attach { attach, .. } = c else {
        return None;
    };
    let source = attach.source.as_ref();
    let target = format!("{:?}", attach.target);
    let props: BTreeMap<String, String> = attach
        .properties
        .as_ref()
        .map(|p| p.iter().map(|(k, v)| (k.0.clone(), amqp_type(v))).collect())
        .unwrap_or_default();
    let filter = source.and_then(|s| s.filter.as_ref());
    let (filter_key, filter_descriptor, filter_value) = match filter.and_then(|f| f.iter().next()) {
        Some((k, v)) => {
            let d = format!("{v:?}");
            let value = d
                .split("value: String(\"")
                .nth(1)
                .and_then(|r| r.split("\")").next())
                .map(str::to_string);
            let descriptor = d
                .split("descriptor: ")
                .nth(1)
                .and_then(|r| r.split(", value").next())
                .map(str::to_string);
            (Some(k.0.clone()), descriptor, value)
        }
        None => (None, None, None),
    };
    let target_address = target
        .split("address: Some(\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .map(str::to_string);
    let caps = |c: &Option<
        fe2o3_amqp::types::primitives::Array<fe2o3_amqp::types::primitives::Symbol>,
    >| {
        c.as_ref()
            .map(|a| a.0.iter().map(|s| s.0.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    Some(json!({
        "role": format!("{:?}", attach.role),
        "snd_settle_mode": format!("{:?}", attach.snd_settle_mode),
        "rcv_settle_mode": format!("{:?}", attach.rcv_settle_mode),
        "source_address": source.and_then(|s| s.address.clone()),
        "target_address": target_address,
        "filter_key": filter_key,
        "filter_descriptor": filter_descriptor,
        "filter_value": filter_value,
        "properties": props,
        "desired_capabilities": caps(&attach.desired_capabilities),
        "offered_capabilities": caps(&attach.offered_capabilities),
        "max_message_size": attach.max_message_size,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_wire_put_token_and_attaches_match_the_python_sdk() -> Result<()> {
    let tmp = tempfile::TempDir::new()?;
    let (hub, info) = capturing_hub(tmp.path()).await?;

    // The SDK: a producer sending one keyed event, then a consumer on partition 0.
    let r = run_script(
        "send",
        json!({"conn": info.conn(Mode::Tls, Policy::Send)?, "sends": [
            {"how": "batch", "partition_key": "k", "events": [{"body": "py"}]}]}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    ensure!(r["results"][0]["ok"] == true, "{r}");
    let r = run_script(
        "receive",
        json!({"conn": info.conn(Mode::Tls, Policy::Listen)?, "partitions": ["0"],
               "position": {"kind": "earliest"}, "expect": null, "idle_seconds": 1.0,
               "max_seconds": 20, "settle_seconds": 0}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    ensure!(r["partitions"][0]["attached"] == true, "{r}");
    let sdk_caps = hub.captured();

    // Ours: the same two operations.
    let mut p = Producer::connect(client_config(&info, Policy::Send)?).await?;
    p.send(
        EventData::new(&b"rs"[..]),
        SendOptions {
            partition_key: Some("k".into()),
            partition_id: None,
        },
    )
    .await?;
    p.close().await;
    let mut opts = ConsumerOptions::new("0");
    opts.start = StartPosition::Earliest;
    let mut c = Consumer::connect(client_config(&info, Policy::Listen)?, opts).await?;
    let _ = tokio::time::timeout(Duration::from_secs(3), c.recv()).await;
    c.close().await;
    let all = hub.captured();
    let our_caps = &all[sdk_caps.len()..];

    let sdk = WireView::of(&sdk_caps)?;
    let ours = WireView::of(our_caps)?;
    hub.shutdown().await;
    eprintln!(
        "SDK:\n{}\nours:\n{}",
        serde_json::to_string_pretty(&sdk.json())?,
        serde_json::to_string_pretty(&ours.json())?
    );

    // CBS put-token: the service reads the application properties (keys, types, and the
    // values of `operation` and `type`), the audience in `name`, and the token as an
    // amqp-value string body.
    // (The SDK's consumer also opens `$management` and puts a token for it: 3 requests to
    // our 2, so compare every request against the SDK's and the audiences as sets.)
    for field in [
        "app_property_types",
        "app_property_values",
        "body",
        "has_message_id",
    ] {
        for b in &ours.cbs {
            for a in &sdk.cbs {
                ensure!(
                    a[field] == b[field],
                    "put-token {field}: SDK {} ours {}",
                    a[field],
                    b[field]
                );
            }
        }
    }
    let audiences = |v: &WireView| {
        v.cbs
            .iter()
            .map(|c| c["name"].to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    ensure!(
        audiences(&sdk) == audiences(&ours),
        "token audiences: SDK {:?} ours {:?}",
        audiences(&sdk),
        audiences(&ours)
    );
    // Deliberate difference: our put-token sets `reply-to` (the AMQP request/response
    // pattern fe2o3-amqp's CBS client follows); pyamqp leaves it out. The service answers on
    // the link either way. Our `$cbs` links also differ in link-local details (sender
    // snd-settle-mode `mixed`, receiver target `cbs-client-node`, no sender source), which
    // the service does not read.

    // Producer link: the service routes by the target address (same form: the full
    // `amqps://<namespace>/<hub>` URI) and reports outcomes only to unsettled senders.
    for f in ["role", "snd_settle_mode", "target_address"] {
        ensure!(
            sdk.producer[f] == ours.producer[f],
            "producer attach {f}: SDK {} ours {}",
            sdk.producer[f],
            ours.producer[f]
        );
    }
    ensure!(
        ours.producer["snd_settle_mode"] == "Unsettled",
        "send outcomes need unsettled sends"
    );
    // Deliberate differences on the producer attach: pyamqp asks rcv-settle-mode `second`
    // (the service settles first anyway), sends `com.microsoft:timeout` and
    // max-message-size 0 (= no limit, as our absent field means); we send neither.

    // Consumer link: the service reads the source address, the selector filter (key and
    // expression) and, with an owner level, `com.microsoft:epoch`.
    for f in [
        "role",
        "source_address",
        "rcv_settle_mode",
        "filter_key",
        "filter_value",
    ] {
        ensure!(
            sdk.consumer[f] == ours.consumer[f],
            "consumer attach {f}: SDK {} ours {}",
            sdk.consumer[f],
            ours.consumer[f]
        );
    }
    // Deliberate differences on the consumer attach:
    // - the filter's descriptor: pyamqp writes the symbol `apache.org:selector-filter:string`,
    //   we write its registered code 0x0000468C00000004 (77567109365764); AMQP treats the two
    //   descriptors as the same type, and the service accepts both;
    // - snd-settle-mode: pyamqp asks `unsettled` and settles each delivery, we ask `settled`
    //   (pre-settled deliveries): Event Hubs keeps no per-delivery state, the position is
    //   the client's;
    // - pyamqp desires `com.microsoft:georeplication`, sends `com.microsoft:timeout` and
    //   max-message-size 1 MiB; we send none of them.
    let descriptor = |v: &WireView| {
        v.consumer["filter_descriptor"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    ensure!(
        descriptor(&sdk).contains("apache.org:selector-filter:string")
            && (descriptor(&ours).contains("77567109365764")
                || descriptor(&ours).contains("apache.org:selector-filter:string")),
        "filter descriptors: SDK {} ours {}",
        descriptor(&sdk),
        descriptor(&ours)
    );
    Ok(())
}

/// What one client sent: its put-token requests and its producer and consumer attaches.
struct WireView {
    cbs: Vec<Value>,
    producer: Value,
    consumer: Value,
}

impl WireView {
    fn of(caps: &[Captured]) -> Result<WireView> {
        let cbs: Vec<Value> = caps.iter().filter_map(cbs_profile).collect();
        ensure!(
            cbs.len() >= 2,
            "expected a put-token per link, got {}",
            cbs.len()
        );
        let attaches: Vec<Value> = caps.iter().filter_map(attach_profile).collect();
        let producer = attaches
            .iter()
            .find(|a| {
                a["role"] == "Sender"
                    && a["target_address"]
                        .as_str()
                        .is_some_and(|t| t.contains("://"))
            })
            .cloned()
            .ok_or_else(|| anyhow!("no producer attach in {attaches:?}"))?;
        let consumer = attaches
            .iter()
            .find(|a| {
                a["role"] == "Receiver"
                    && a["source_address"]
                        .as_str()
                        .is_some_and(|t| t.contains("/Partitions/"))
            })
            .cloned()
            .ok_or_else(|| anyhow!("no consumer attach in {attaches:?}"))?;
        Ok(WireView {
            cbs,
            producer,
            consumer,
        })
    }

    fn json(&self) -> Value {
        json!({"cbs": self.cbs, "producer": self.producer, "consumer": self.consumer})
    }
}
