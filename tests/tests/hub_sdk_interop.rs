//! The official `azure-eventhub` Python SDK (5.15.1) against tcpulse-hub (issue 2, part 3).
//!
//! Each test runs over AMQP-over-TLS (`custom_endpoint_address` + `connection_verify`) and
//! in development-emulator mode (plain AMQP, `UseDevelopmentEmulator=true`). The hub runs
//! in-process, except where a restart or the process's survival is the point: there the
//! `tcpulse-hub` binary runs as a child process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use tcpulse_tests::hub::{with_key, HubInfo, HubOptions, HubProcess, Mode, Policy, TestHub};
use tcpulse_tests::python::run_script;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
const BULK_TIMEOUT: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------------------
// result types of the scripts

#[derive(Debug, Clone, Deserialize)]
struct Ev {
    partition_id: String,
    body: Value,
    sequence_number: i64,
    offset: Option<String>,
    offset_type: String,
    enqueued_time_ms: Option<i64>,
    partition_key: Option<Value>,
    properties: serde_json::Map<String, Value>,
    property_types: serde_json::Map<String, Value>,
    content_type: Option<Value>,
    correlation_id: Option<Value>,
    message_id: Option<Value>,
}

impl Ev {
    fn body_str(&self) -> String {
        self.body
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| self.body.to_string())
    }
}

#[derive(Debug, Clone, Deserialize)]
struct CompactEv {
    p: String,
    seq: i64,
    off: Option<String>,
    body: String,
}

#[derive(Debug, Clone, Deserialize)]
struct ErrInfo {
    #[serde(rename = "type")]
    ty: String,
    classes: Vec<String>,
    message: String,
    error: Option<String>,
    condition: Option<String>,
}

impl ErrInfo {
    fn is_auth_error(&self) -> bool {
        self.classes.iter().any(|c| c == "AuthenticationError")
            || self.mentions("unauthorized-access")
            || self.mentions("auth-failed")
    }
    fn mentions(&self, what: &str) -> bool {
        self.condition.as_deref().is_some_and(|c| c.contains(what))
            || self.error.as_deref().is_some_and(|c| c.contains(what))
            || self.message.contains(what)
    }
}

#[derive(Debug, Clone, Deserialize)]
struct SendResult {
    ok: bool,
    error: Option<ErrInfo>,
    elapsed_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct ReaderSummary<E> {
    partition_id: String,
    attached: bool,
    events: Vec<E>,
    /// What the SDK's on_error callback got.
    errors: Vec<ErrInfo>,
    /// What the SDK raised while opening the consumer link (it swallows these and reopens;
    /// see tests/python/_common.py).
    #[serde(default)]
    open_errors: Vec<ErrInfo>,
}

#[derive(Debug, Clone, Deserialize)]
struct Received<E> {
    partitions: Vec<ReaderSummary<E>>,
    total: usize,
    #[serde(default)]
    sent: Vec<SendResult>,
}

impl<E: Clone> Received<E> {
    fn open_errors(&self) -> Vec<ErrInfo> {
        self.partitions
            .iter()
            .flat_map(|p| p.open_errors.clone())
            .collect()
    }
    fn all(&self) -> Vec<E> {
        self.partitions
            .iter()
            .flat_map(|p| p.events.clone())
            .collect()
    }
    fn errors(&self) -> Vec<ErrInfo> {
        self.partitions
            .iter()
            .flat_map(|p| p.errors.clone())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// helpers

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ev(body: &str) -> Value {
    json!({ "body": body })
}

async fn send(conn: Value, sends: Value) -> Result<Vec<SendResult>> {
    let out = run_script(
        "send",
        json!({ "conn": conn, "sends": sends }),
        SCRIPT_TIMEOUT,
    )
    .await?;
    Ok(serde_json::from_value(out["results"].clone())?)
}

async fn send_ok(conn: Value, sends: Value) -> Result<()> {
    let results = send(conn, sends).await?;
    for (i, r) in results.iter().enumerate() {
        ensure!(r.ok, "send op {i} failed: {:?}", r.error);
    }
    Ok(())
}

async fn receive(args: Value) -> Result<Received<Ev>> {
    let out = run_script("receive", args, SCRIPT_TIMEOUT).await?;
    Ok(serde_json::from_value(out)?)
}

/// Everything from the start of `partitions` (all if None): until `expect` events arrived,
/// or with `expect` None until nothing new arrived for 2 s.
async fn receive_all(
    conn: Value,
    partitions: Option<Vec<&str>>,
    expect: impl Into<Option<usize>>,
) -> Result<Received<Ev>> {
    let r = receive(json!({
        "conn": conn,
        "partitions": partitions,
        "position": {"kind": "earliest"},
        "expect": expect.into(),
        "idle_seconds": 2.0,
        "max_seconds": 30,
        "settle_seconds": 1.0,
    }))
    .await?;
    ensure!(r.errors().is_empty(), "receive errors: {:?}", r.errors());
    ensure!(
        r.partitions.iter().all(|p| p.attached),
        "a reader never attached: {:?}",
        r.open_errors()
    );
    Ok(r)
}

fn bodies(events: &[Ev]) -> Vec<String> {
    events.iter().map(Ev::body_str).collect()
}

/// Sequence numbers 0..n in order, distinct string offsets increasing in arrival order
/// (numerically when they parse as numbers), enqueued times non-decreasing.
fn check_partition_stream(p: &str, events: &[Ev]) -> Result<()> {
    for (i, e) in events.iter().enumerate() {
        ensure!(
            e.partition_id == p,
            "event from {} in reader {p}",
            e.partition_id
        );
        ensure!(
            e.sequence_number == i as i64,
            "partition {p}: event {i} has sequence number {}",
            e.sequence_number
        );
        ensure!(
            e.offset_type == "str",
            "partition {p}: offset is a {} (must be str)",
            e.offset_type
        );
        ensure!(e.offset.is_some(), "partition {p}: event {i} has no offset");
        ensure!(
            e.enqueued_time_ms.is_some(),
            "partition {p}: event {i} has no enqueued time"
        );
    }
    let offsets: Vec<&str> = events.iter().filter_map(|e| e.offset.as_deref()).collect();
    check_offsets_increase(p, &offsets)?;
    for w in events.windows(2) {
        ensure!(
            w[0].enqueued_time_ms <= w[1].enqueued_time_ms,
            "partition {p}: enqueued time goes back at seq {}",
            w[1].sequence_number
        );
    }
    Ok(())
}

fn check_offsets_increase(p: &str, offsets: &[&str]) -> Result<()> {
    let distinct: BTreeSet<&str> = offsets.iter().copied().collect();
    ensure!(
        distinct.len() == offsets.len(),
        "partition {p}: duplicate offsets"
    );
    let numeric: Option<Vec<i128>> = offsets.iter().map(|o| o.parse::<i128>().ok()).collect();
    if let Some(n) = numeric {
        for w in n.windows(2) {
            ensure!(
                w[0] < w[1],
                "partition {p}: offsets not increasing: {} then {}",
                w[0],
                w[1]
            );
        }
    }
    Ok(())
}

async fn fresh_hub() -> Result<TestHub> {
    TestHub::start().await
}

fn conn(info: &HubInfo, mode: Mode, policy: Policy) -> Value {
    info.conn(mode, policy).unwrap_or_else(|e| panic!("{e:#}"))
}

// ---------------------------------------------------------------------------------------
// properties

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sdk_reads_hub_and_partition_properties() -> Result<()> {
    for mode in Mode::ALL {
        reads_properties(mode)
            .await
            .with_context(|| format!("mode {mode:?}"))?;
    }
    Ok(())
}

async fn reads_properties(mode: Mode) -> Result<()> {
    let hub = fresh_hub().await?;
    let info = &hub.info;
    let before = now_ms();
    let empty = run_script(
        "properties",
        json!({ "conn": conn(info, mode, Policy::Listen), "client": "consumer" }),
        SCRIPT_TIMEOUT,
    )
    .await?;
    ensure!(
        empty["hub"]["eventhub_name"] == json!(info.hub_name()),
        "hub name: {}",
        empty["hub"]
    );
    ensure!(
        empty["hub"]["partition_ids"] == json!(["0", "1", "2", "3"]),
        "partition ids: {}",
        empty["hub"]
    );
    let created = empty["hub"]["created_at"]
        .as_i64()
        .context("created_at (ms) missing")?;
    ensure!(
        created > 1_600_000_000_000 && created <= now_ms() + 1000,
        "created_at {created}"
    );
    for pid in info.partition_ids() {
        let p = &empty["partitions"][&pid];
        ensure!(p["id"] == json!(pid), "partition {pid}: id {}", p["id"]);
        ensure!(
            p["eventhub_name"] == json!(info.hub_name()),
            "partition {pid}: {}",
            p
        );
        ensure!(
            p["is_empty"] == json!(true),
            "partition {pid} of a new hub not empty: {p}"
        );
        let t = &empty["types"][&pid];
        ensure!(t["is_empty"] == "bool", "is_empty type {}", t["is_empty"]);
        ensure!(t["beginning_sequence_number"] == "int", "types {t}");
        ensure!(t["last_enqueued_sequence_number"] == "int", "types {t}");
        ensure!(
            t["last_enqueued_offset"] == "str",
            "last_enqueued_offset type: {t}"
        );
    }

    // Three events into partition 2; its properties must describe exactly them.
    send_ok(
        conn(info, mode, Policy::Send),
        json!([{"how": "batch", "partition_id": "2", "events": [ev("p-a"), ev("p-b"), ev("p-c")]}]),
    )
    .await?;
    let got = receive_all(conn(info, mode, Policy::Listen), Some(vec!["2"]), 3).await?;
    let events = got.all();
    ensure!(
        bodies(&events) == ["p-a", "p-b", "p-c"],
        "events: {:?}",
        bodies(&events)
    );
    let last = &events[2];
    for policy in [Policy::Manage, Policy::Send] {
        let props = run_script(
            "properties",
            json!({ "conn": conn(info, mode, policy) }),
            SCRIPT_TIMEOUT,
        )
        .await?;
        let p = &props["partitions"]["2"];
        ensure!(
            p["is_empty"] == json!(false),
            "{policy:?}: partition 2 after 3 sends: {p}"
        );
        ensure!(
            p["beginning_sequence_number"] == json!(0),
            "{policy:?}: begin seq: {p}"
        );
        ensure!(
            p["last_enqueued_sequence_number"] == json!(2),
            "{policy:?}: last seq: {p}"
        );
        ensure!(
            p["last_enqueued_offset"] == json!(last.offset),
            "{policy:?}: last offset {} vs received {:?}",
            p["last_enqueued_offset"],
            last.offset
        );
        let t = p["last_enqueued_time_utc"]
            .as_i64()
            .context("last_enqueued_time_utc")?;
        ensure!(
            Some(t) == last.enqueued_time_ms,
            "{policy:?}: last enqueued time {t} vs {:?}",
            last.enqueued_time_ms
        );
        ensure!(
            t >= before - 1000 && t <= now_ms() + 1000,
            "enqueued time {t} not now"
        );
        ensure!(
            props["types"]["2"]["last_enqueued_time_utc"] == "datetime",
            "types {}",
            props["types"]["2"]
        );
        for other in ["0", "1", "3"] {
            ensure!(
                props["partitions"][other]["is_empty"] == json!(true),
                "partition {other}: {}",
                props["partitions"][other]
            );
        }
    }
    hub.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// sending

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sdk_sends_single_events_batches_keys_and_partition_ids() -> Result<()> {
    for mode in Mode::ALL {
        sends(mode)
            .await
            .with_context(|| format!("mode {mode:?}"))?;
    }
    Ok(())
}

async fn sends(mode: Mode) -> Result<()> {
    let hub = fresh_hub().await?;
    let info = &hub.info;
    let t0 = now_ms();
    let single = json!({
        "body": "{\"x\":1}",
        "properties": {"kind": "single", "n": 7, "f": 1.5, "yes": true},
        "content_type": "application/json",
        "message_id": "m-1",
        "correlation_id": "c-1",
    });
    send_ok(
        conn(info, mode, Policy::Send),
        json!([
            {"how": "event", "partition_id": "0", "events": [single]},
            {"how": "batch", "partition_id": "1", "events": [
                {"body": "b-1", "properties": {"i": 1}}, {"body": "b-2", "properties": {"i": 2}}, {"body": "b-3", "properties": {"i": 3}}]},
            {"how": "batch", "partition_key": "connector-a", "events": [ev("ka-1"), ev("ka-2")]},
            {"how": "list", "partition_key": "connector-a", "events": [ev("ka-3"), ev("ka-4")]},
            {"how": "event", "partition_key": "connector-a", "events": [ev("ka-5")]},
            {"how": "list", "events": [ev("free-1"), ev("free-2")]},
            {"how": "batch", "partition_key": "connector-b", "events": [ev("kb-1")]},
            {"how": "event", "partition_id": "3", "events": [ev("s3-1"), ev("s3-2")]},
        ]),
    )
    .await?;
    let t1 = now_ms();
    let got = receive_all(conn(info, mode, Policy::Listen), None, 14).await?;
    ensure!(got.total == 14, "received {} events, sent 14", got.total);
    let mut all = bodies(&got.all());
    all.sort();
    let mut want: Vec<String> = [
        "{\"x\":1}",
        "b-1",
        "b-2",
        "b-3",
        "ka-1",
        "ka-2",
        "ka-3",
        "ka-4",
        "ka-5",
        "free-1",
        "free-2",
        "kb-1",
        "s3-1",
        "s3-2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.sort();
    ensure!(all == want, "bodies: {all:?}");

    let by_body: HashMap<String, Ev> = got.all().into_iter().map(|e| (e.body_str(), e)).collect();
    for part in &got.partitions {
        check_partition_stream(&part.partition_id, &part.events)?;
        for e in &part.events {
            let t = e.enqueued_time_ms.unwrap_or(0);
            ensure!(
                t >= t0 - 1000 && t <= t1 + 1000,
                "enqueued time {t} outside the send window"
            );
        }
    }
    // The single event: partition 0, all its properties and their types (pyamqp decodes
    // every AMQP string, str8/str32 included, to Python bytes).
    let s = &by_body["{\"x\":1}"];
    ensure!(
        s.partition_id == "0",
        "single event in partition {}",
        s.partition_id
    );
    ensure!(
        s.properties
            == *json!({"kind": "single", "n": 7, "f": 1.5, "yes": true})
                .as_object()
                .context("obj")?,
        "properties {:?}",
        s.properties
    );
    ensure!(
        s.property_types
            == *json!({"kind": "bytes", "n": "int", "f": "float", "yes": "bool"})
                .as_object()
                .context("obj")?,
        "property types {:?}",
        s.property_types
    );
    ensure!(
        s.content_type == Some(json!("application/json")),
        "content type {:?}",
        s.content_type
    );
    ensure!(
        s.message_id == Some(json!("m-1")),
        "message id {:?}",
        s.message_id
    );
    ensure!(
        s.correlation_id == Some(json!("c-1")),
        "correlation id {:?}",
        s.correlation_id
    );
    ensure!(
        s.partition_key.is_none(),
        "unkeyed event has partition key {:?}",
        s.partition_key
    );
    // The batch to partition 1: in order, with their properties.
    let p1: Vec<&Ev> = by_body
        .values()
        .filter(|e| e.body_str().starts_with("b-"))
        .collect();
    for e in &p1 {
        ensure!(
            e.partition_id == "1",
            "{} in partition {}",
            e.body_str(),
            e.partition_id
        );
        let i: i64 = e.body_str()[2..].parse()?;
        ensure!(
            e.properties.get("i") == Some(&json!(i)),
            "{} properties {:?}",
            e.body_str(),
            e.properties
        );
    }
    // Same key → same partition, and the key is on every keyed event.
    let ka: BTreeSet<&str> = ["ka-1", "ka-2", "ka-3", "ka-4", "ka-5"]
        .iter()
        .map(|b| by_body[*b].partition_id.as_str())
        .collect();
    ensure!(
        ka.len() == 1,
        "key connector-a spread over partitions {ka:?}"
    );
    for b in ["ka-1", "ka-2", "ka-3", "ka-4", "ka-5"] {
        ensure!(
            by_body[b].partition_key == Some(json!("connector-a")),
            "{b}: partition key {:?}",
            by_body[b].partition_key
        );
    }
    ensure!(
        by_body["kb-1"].partition_key == Some(json!("connector-b")),
        "kb-1 key {:?}",
        by_body["kb-1"].partition_key
    );
    for b in ["s3-1", "s3-2"] {
        ensure!(
            by_body[b].partition_id == "3",
            "{b} in partition {}",
            by_body[b].partition_id
        );
    }
    // The key routes stably: the same key sent again lands with the others.
    send_ok(
        conn(info, mode, Policy::Send),
        json!([{"how": "batch", "partition_key": "connector-a", "events": [ev("ka-6")]}]),
    )
    .await?;
    let pid = ka.iter().next().copied().unwrap_or("?");
    let again = receive_all(conn(info, mode, Policy::Listen), Some(vec![pid]), None).await;
    let again = again?;
    ensure!(
        bodies(&again.all()).iter().any(|b| b == "ka-6"),
        "ka-6 not in partition {pid} with the rest of connector-a"
    );
    hub.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// receiving from each start position

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sdk_receives_from_each_start_position() -> Result<()> {
    for mode in Mode::ALL {
        start_positions(mode)
            .await
            .with_context(|| format!("mode {mode:?}"))?;
    }
    Ok(())
}

async fn start_positions(mode: Mode) -> Result<()> {
    let hub = fresh_hub().await?;
    let info = &hub.info;
    // Ten events into partition 0, one at a time with a pause so enqueued times differ.
    let ops: Vec<Value> = (0..10)
        .map(|i| json!({"how": "event", "partition_id": "0", "events": [ev(&format!("sp-{i}"))], "pause_ms": 15}))
        .collect();
    send_ok(conn(info, mode, Policy::Send), Value::Array(ops)).await?;
    let listen = conn(info, mode, Policy::Listen);
    let all = receive_all(listen.clone(), Some(vec!["0"]), 10)
        .await?
        .all();
    ensure!(
        bodies(&all) == (0..10).map(|i| format!("sp-{i}")).collect::<Vec<_>>(),
        "earliest: {:?}",
        bodies(&all)
    );
    check_partition_stream("0", &all)?;

    // An event whose enqueued time is later than its predecessor's.
    let k = (5..10)
        .find(|&k| all[k].enqueued_time_ms > all[k - 1].enqueued_time_ms)
        .context("no two events with distinct enqueued times")?;
    let tk = all[k].enqueued_time_ms.context("time")?;
    let expect_by = |pred: &dyn Fn(&Ev) -> bool| -> Vec<String> {
        all.iter().filter(|e| pred(e)).map(Ev::body_str).collect()
    };

    let off3 = all[3].offset.clone().context("offset")?;
    let cases: Vec<(&str, Value, Vec<String>)> = vec![
        (
            "offset exclusive",
            json!({"kind": "offset", "value": off3, "inclusive": false}),
            expect_by(&|e| e.sequence_number > 3),
        ),
        (
            "offset inclusive",
            json!({"kind": "offset", "value": off3, "inclusive": true}),
            expect_by(&|e| e.sequence_number >= 3),
        ),
        (
            "sequence exclusive",
            json!({"kind": "sequence", "value": 5, "inclusive": false}),
            expect_by(&|e| e.sequence_number > 5),
        ),
        (
            "sequence inclusive",
            json!({"kind": "sequence", "value": 5, "inclusive": true}),
            expect_by(&|e| e.sequence_number >= 5),
        ),
        (
            "time exclusive",
            json!({"kind": "time", "value": tk, "inclusive": false}),
            expect_by(&|e| e.enqueued_time_ms.unwrap_or(0) > tk),
        ),
        (
            "time inclusive",
            json!({"kind": "time", "value": tk, "inclusive": true}),
            expect_by(&|e| e.enqueued_time_ms.unwrap_or(0) >= tk),
        ),
    ];
    let runs = cases.iter().map(|(name, pos, want)| {
        let listen = listen.clone();
        let (name, pos, want) = (name.to_string(), pos.clone(), want.clone());
        async move {
            let r = receive(json!({
                "conn": listen, "partitions": ["0"], "position": pos,
                "expect": want.len(), "max_seconds": 20, "settle_seconds": 1.0,
            }))
            .await
            .with_context(|| name.clone())?;
            Ok::<_, anyhow::Error>((name, r))
        }
    });
    let results = futures_join_all(runs).await;
    let by_seq: HashMap<i64, &Ev> = all.iter().map(|e| (e.sequence_number, e)).collect();
    for ((name, _, want), r) in cases.iter().zip(results) {
        let r = r?.1;
        ensure!(r.errors().is_empty(), "{name}: errors {:?}", r.errors());
        let got = r.all();
        ensure!(
            bodies(&got) == *want,
            "{name}: got {:?}, want {want:?}",
            bodies(&got)
        );
        for e in &got {
            let orig = by_seq.get(&e.sequence_number).context("unknown seq")?;
            ensure!(
                e.offset == orig.offset
                    && e.enqueued_time_ms == orig.enqueued_time_ms
                    && e.body == orig.body,
                "{name}: seq {} annotations differ from the first read",
                e.sequence_number
            );
        }
    }

    // @latest: only what is sent after the receiver attached.
    let r = receive(json!({
        "conn": listen, "partitions": ["0"], "position": {"kind": "latest"},
        "expect": 2, "max_seconds": 20, "settle_seconds": 1.0,
        "then_send": {"conn": conn(info, mode, Policy::Send), "sends": [
            {"how": "batch", "partition_id": "0", "events": [ev("late-1"), ev("late-2")]}]},
    }))
    .await?;
    ensure!(r.errors().is_empty(), "@latest: errors {:?}", r.errors());
    ensure!(
        r.sent.iter().all(|s| s.ok),
        "@latest: send failed {:?}",
        r.sent
    );
    let got = r.all();
    ensure!(
        bodies(&got) == ["late-1", "late-2"],
        "@latest got {:?}",
        bodies(&got)
    );
    ensure!(
        got[0].sequence_number == 10 && got[1].sequence_number == 11,
        "@latest seqs {} {}",
        got[0].sequence_number,
        got[1].sequence_number
    );
    hub.shutdown().await;
    Ok(())
}

async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| panic!("task: {e}")));
    }
    out
}

// ---------------------------------------------------------------------------------------
// epoch receivers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sdk_epoch_receiver_wins() -> Result<()> {
    for mode in Mode::ALL {
        epoch(mode)
            .await
            .with_context(|| format!("mode {mode:?}"))?;
    }
    Ok(())
}

async fn epoch(mode: Mode) -> Result<()> {
    let hub = fresh_hub().await?;
    let info = &hub.info;
    let out = run_script(
        "epoch",
        json!({
            "conn": conn(info, mode, Policy::Listen),
            "send_conn": conn(info, mode, Policy::Send),
            "partition_id": "1",
            "body": "epoch-event",
            "step_timeout_s": 15,
        }),
        SCRIPT_TIMEOUT,
    )
    .await?;
    let a: ReaderSummary<Ev> = serde_json::from_value(out["a"].clone())?;
    let b: ReaderSummary<Ev> = serde_json::from_value(out["b"].clone())?;
    let c: ReaderSummary<Ev> = serde_json::from_value(out["c"].clone())?;
    let d: ReaderSummary<Ev> = serde_json::from_value(out["d"].clone())?;
    ensure!(
        a.attached,
        "A (owner level 1) never attached: {:?}",
        a.errors
    );
    ensure!(
        b.attached && b.errors.is_empty(),
        "B (owner level 2): attached {} errors {:?}",
        b.attached,
        b.errors
    );
    let stolen = a
        .errors
        .first()
        .context("A was not disconnected when B attached")?;
    ensure!(
        stolen.mentions("link:stolen"),
        "A's error is not link:stolen: {stolen:?}"
    );
    ensure!(
        bodies(&b.events) == ["epoch-event"],
        "B got {:?}",
        bodies(&b.events)
    );
    ensure!(
        a.events.is_empty(),
        "A (displaced) still got {:?}",
        bodies(&a.events)
    );
    let c_err = c
        .errors
        .first()
        .context("C (owner level 1 < 2) was allowed to attach")?;
    ensure!(c.events.is_empty(), "C got events");
    let d_err = d
        .errors
        .first()
        .context("D (no owner level) was allowed next to an epoch receiver")?;
    eprintln!(
        "epoch {mode:?}: A: {} / C: {} {:?} / D: {} {:?}",
        stolen.ty, c_err.ty, c_err.condition, d_err.ty, d_err.condition
    );
    hub.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// authentication

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sdk_auth_errors_surface_quickly() -> Result<()> {
    let hub = fresh_hub().await?;
    let mut failures = Vec::new();
    for mode in Mode::ALL {
        if let Err(e) = auth_errors(&hub.info, mode).await {
            failures.push(format!("mode {mode:?}: {e:#}"));
        }
    }
    hub.shutdown().await;
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

async fn auth_errors(info: &HubInfo, mode: Mode) -> Result<()> {
    const QUICK: f64 = 12.0;
    // Something to read, so a receiver that should be refused has something to leak.
    send_ok(
        conn(info, mode, Policy::Send),
        json!([{"how": "batch", "partition_id": "0", "events": [ev("present")]}]),
    )
    .await?;
    // A wrong key: management read and send both fail as authentication errors.
    let wrong = with_key(
        info.connection_string(mode, Policy::Manage)?,
        "d3Jvbmcta2V5LW5vdC10aGUtcmVhbC1vbmU=",
    );
    let wrong_conn = info.conn_with(mode, wrong);
    let out = run_script(
        "properties",
        json!({"conn": wrong_conn, "expect_error": true}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    let err: ErrInfo = serde_json::from_value(out["raised"].clone())
        .context("wrong key: properties did not fail")?;
    ensure!(
        err.is_auth_error(),
        "wrong key, get_eventhub_properties: not an auth error: {err:?}"
    );
    // r12 (issue 12, fault 9a): the SDK shows the refusal's status and description, not
    // "Status code: None" (which it prints when the put-token reply has an error-condition).
    check_token_refusal_is_described("wrong key, get_eventhub_properties", &err)?;
    ensure!(
        out["elapsed_s"].as_f64().unwrap_or(99.0) < QUICK,
        "wrong key: took {}s",
        out["elapsed_s"]
    );

    let t = Instant::now();
    let r = send(
        wrong_conn.clone(),
        json!([{"how": "batch", "partition_id": "0", "events": [ev("nope")]}]),
    )
    .await?;
    let e = r[0].error.clone().context("wrong key: send succeeded")?;
    ensure!(
        e.is_auth_error(),
        "wrong key, send_batch: not an auth error: {e:?}"
    );
    check_token_refusal_is_described("wrong key, send_batch", &e)?;
    ensure!(
        t.elapsed().as_secs_f64() < QUICK + 3.0,
        "wrong key send took {:?}",
        t.elapsed()
    );

    // A Send-only key on a receiver.
    let t = Instant::now();
    let r = receive(json!({
        "conn": conn(info, mode, Policy::Send), "partitions": ["0"], "position": {"kind": "earliest"},
        "expect": 1, "max_seconds": 15, "stop_on_error": true, "attach_timeout_s": 15, "settle_seconds": 0,
    }))
    .await?;
    // The refusal reaches on_error, or (EventHubConsumer.receive swallows errors raised
    // while its link opens, SDK issue #27137) is what the SDK raised internally.
    let e = r
        .errors()
        .first()
        .or(r.open_errors().first())
        .cloned()
        .context("Send-only key: receiver was not refused")?;
    ensure!(
        e.is_auth_error(),
        "Send-only key on a receiver: not an auth error: {e:?}"
    );
    ensure!(
        r.partitions.iter().all(|p| p.events.is_empty()),
        "Send-only key received events"
    );
    ensure!(
        t.elapsed().as_secs_f64() < QUICK + 5.0,
        "Send-only receive refusal took {:?}",
        t.elapsed()
    );
    eprintln!(
        "auth {mode:?}: send-key receiver → {} {:?}",
        e.ty, e.condition
    );

    // Nothing of the refused sends arrived.
    let got = receive_all(conn(info, mode, Policy::Listen), Some(vec!["0"]), None).await?;
    ensure!(
        !bodies(&got.all()).iter().any(|b| b == "nope"),
        "a refused send was stored"
    );

    // A Listen-only key sending.
    let r = send(
        conn(info, mode, Policy::Listen),
        json!([{"how": "batch", "partition_id": "0", "events": [ev("nope")]}]),
    )
    .await?;
    let e = r[0]
        .error
        .clone()
        .context("Listen-only key: send succeeded")?;
    ensure!(
        e.is_auth_error(),
        "Listen-only key sending: not an auth error: {e:?}"
    );
    ensure!(
        r[0].elapsed_ms < (QUICK * 1000.0) as u64,
        "Listen-only send refusal took {} ms",
        r[0].elapsed_ms
    );
    eprintln!(
        "auth {mode:?}: listen-key sender → {} {:?}",
        e.ty, e.condition
    );

    Ok(())
}

/// r12 (issue 12, fault 9a): with the `$cbs` reply carrying only `status-code` and
/// `status-description`, tcpulse's own client still reports a refused token as such, with
/// the hub's reason and the condition mapped from the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_cbs_refusal_reaches_our_client_with_reason() -> Result<()> {
    use tcpulse_eventhub::client::{
        BatchOptions, ClientConfig, ClientOptions, EventData, Producer,
    };
    let hub = fresh_hub().await?;
    let wrong = with_key(
        hub.info.connection_string(Mode::Tls, Policy::Send)?,
        "d3Jvbmcta2V5LW5vdC10aGUtcmVhbC1vbmU=",
    );
    let config = ClientConfig::from_connection_string(
        &wrong,
        None,
        ClientOptions {
            extra_ca_file: Some(hub.info.ca_pem.clone()),
            ..ClientOptions::default()
        },
    )?;
    let outcome = async {
        let mut producer = Producer::connect(config).await?;
        let mut batch = producer.create_batch(BatchOptions::default())?;
        batch.try_add(EventData::new(bytes::Bytes::from_static(b"nope")))?;
        producer.send_batch(&batch).await?;
        anyhow::Ok(())
    };
    let result = tokio::time::timeout(Duration::from_secs(60), outcome).await;
    hub.shutdown().await;
    let err = match result {
        Err(_) => bail!("a wrong key was neither refused nor accepted within 60 s"),
        Ok(Ok(())) => bail!("a wrong key was accepted"),
        Ok(Err(e)) => format!("{e:#}"),
    };
    ensure!(
        err.contains("refused the token"),
        "not reported as a refused token: {err}"
    );
    ensure!(
        err.contains("InvalidSignature"),
        "the hub's reason is missing: {err}"
    );
    ensure!(
        err.contains("amqp:unauthorized-access"),
        "no condition: {err}"
    );
    Ok(())
}

/// The SDK's message for a refused put-token names the status (401) and the hub's
/// description (the token's signature is invalid).
fn check_token_refusal_is_described(what: &str, e: &ErrInfo) -> Result<()> {
    ensure!(
        e.message.contains("Status code: 401"),
        "{what}: the SDK does not show the put-token status: {:?}",
        e.message
    );
    ensure!(
        e.message.contains("InvalidSignature"),
        "{what}: the SDK does not show the put-token description: {:?}",
        e.message
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// oversize

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sdk_oversize_event_is_rejected_clearly() -> Result<()> {
    let hub = fresh_hub().await?;
    let info = &hub.info;
    for mode in Mode::ALL {
        let pid = if mode == Mode::Tls { "0" } else { "1" };
        let r = send(
            conn(info, mode, Policy::Send),
            json!([
                {"how": "event", "partition_id": pid, "events": [{"body": {"size": 1_100_000}}]},
                {"how": "event", "partition_id": pid, "events": [ev("small-after-big")]},
            ]),
        )
        .await?;
        let e = r[0]
            .error
            .clone()
            .with_context(|| format!("{mode:?}: a 1.1 MB event was accepted"))?;
        ensure!(
            r[0].elapsed_ms < 15_000,
            "{mode:?}: oversize refusal took {} ms",
            r[0].elapsed_ms
        );
        ensure!(
            r[1].ok,
            "{mode:?}: a small send after the oversize one failed: {:?}",
            r[1].error
        );
        let got = receive_all(conn(info, mode, Policy::Listen), Some(vec![pid]), 1).await?;
        ensure!(
            bodies(&got.all()) == ["small-after-big"],
            "{mode:?}: partition holds {:?}",
            bodies(&got.all())
                .iter()
                .map(|b| b.len())
                .collect::<Vec<_>>()
        );
        eprintln!("oversize {mode:?}: {} {:?}", e.ty, e.condition);
        ensure!(
            e.mentions("message-size-exceeded"),
            "{mode:?}: oversize error is not message-size-exceeded: {e:?}"
        );
    }
    hub.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bulk round trips

async fn generate(conn: Value, start: usize, count: usize, routing: &str) -> Result<()> {
    let out = run_script(
        "send",
        json!({"conn": conn, "generate": {"count": count, "start": start, "prefix": "rt", "batch_size": 250, "routing": routing, "partitions": 4}}),
        BULK_TIMEOUT,
    )
    .await?;
    let g = &out["generated"];
    ensure!(
        g["failures"] == json!([]),
        "send failures: {}",
        g["failures"]
    );
    ensure!(g["sent"] == json!(count), "sent {} of {count}", g["sent"]);
    eprintln!("sent {count} events in {}s", g["elapsed_s"]);
    Ok(())
}

async fn receive_compact(conn: Value, expect: usize) -> Result<Received<CompactEv>> {
    let t = Instant::now();
    let out = run_script(
        "receive",
        json!({"conn": conn, "partitions": null, "position": {"kind": "earliest"}, "expect": expect,
               "max_seconds": 150, "settle_seconds": 2.0, "compact": true, "prefetch": 500}),
        BULK_TIMEOUT,
    )
    .await?;
    let r: Received<CompactEv> = serde_json::from_value(out)?;
    ensure!(r.errors().is_empty(), "receive errors: {:?}", r.errors());
    eprintln!(
        "received {} events in {:.1}s",
        r.total,
        t.elapsed().as_secs_f64()
    );
    Ok(r)
}

/// Exactly bodies rt-000000..rt-<n-1>, once each; every partition used; each partition's
/// sequence numbers 0..k in order with distinct increasing offsets.
fn check_round_trip(r: &Received<CompactEv>, n: usize) -> Result<BTreeMap<String, Vec<CompactEv>>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in r.all() {
        *seen.entry(e.body.clone()).or_default() += 1;
    }
    let dups: Vec<_> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(b, c)| format!("{b}×{c}"))
        .take(10)
        .collect();
    ensure!(dups.is_empty(), "duplicates: {dups:?}");
    let missing: Vec<String> = (0..n)
        .map(|i| format!("rt-{i:06}"))
        .filter(|b| !seen.contains_key(b))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    ensure!(
        seen.len() == n,
        "{} distinct bodies, expected {n}",
        seen.len()
    );
    let mut by_p = BTreeMap::new();
    for part in &r.partitions {
        ensure!(
            !part.events.is_empty(),
            "partition {} got no events",
            part.partition_id
        );
        for (i, e) in part.events.iter().enumerate() {
            ensure!(
                e.p == part.partition_id,
                "event of {} in reader {}",
                e.p,
                part.partition_id
            );
            ensure!(
                e.seq == i as i64,
                "partition {}: event {i} has seq {}",
                part.partition_id,
                e.seq
            );
        }
        let offs: Vec<&str> = part
            .events
            .iter()
            .map(|e| e.off.as_deref().unwrap_or(""))
            .collect();
        check_offsets_increase(&part.partition_id, &offs)?;
        by_p.insert(part.partition_id.clone(), part.events.clone());
    }
    Ok(by_p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sdk_round_trips_20000_events_across_all_partitions() -> Result<()> {
    for mode in Mode::ALL {
        let hub = fresh_hub().await?;
        generate(conn(&hub.info, mode, Policy::Send), 0, 20_000, "mixed")
            .await
            .with_context(|| format!("{mode:?}"))?;
        let r = receive_compact(conn(&hub.info, mode, Policy::Listen), 20_000)
            .await
            .with_context(|| format!("{mode:?}"))?;
        let by_p = check_round_trip(&r, 20_000).with_context(|| format!("{mode:?}"))?;
        eprintln!(
            "{mode:?}: per partition {:?}",
            by_p.iter()
                .map(|(p, v)| (p.clone(), v.len()))
                .collect::<Vec<_>>()
        );
        hub.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sdk_round_trips_20000_events_across_a_binary_restart() -> Result<()> {
    let mut hub = HubProcess::spawn(HubOptions::default()).await?;
    let first = hub.info.clone();
    // First half over TLS.
    generate(conn(&first, Mode::Tls, Policy::Send), 0, 10_000, "mixed").await?;
    let before = run_script(
        "properties",
        json!({"conn": conn(&first, Mode::Tls, Policy::Manage)}),
        SCRIPT_TIMEOUT,
    )
    .await?;

    let status = hub.stop(Duration::from_secs(15)).await?;
    ensure!(
        status.success(),
        "hub exited with {status} on SIGTERM\n{}",
        hub.current_log()
    );
    hub.restart().await?;
    let second = hub.info.clone();
    ensure!(
        second.amqps == first.amqps && second.amqp == first.amqp,
        "restart moved the listeners"
    );
    ensure!(
        second.connection_string(Mode::Tls, Policy::Manage)?
            == first.connection_string(Mode::Tls, Policy::Manage)?,
        "the keys changed across a restart with --data-dir"
    );
    // The partitions came back exactly as they were.
    let after = run_script(
        "properties",
        json!({"conn": conn(&second, Mode::Tls, Policy::Manage)}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    for pid in second.partition_ids() {
        for field in [
            "beginning_sequence_number",
            "last_enqueued_sequence_number",
            "last_enqueued_offset",
            "last_enqueued_time_utc",
            "is_empty",
        ] {
            ensure!(
                before["partitions"][&pid][field] == after["partitions"][&pid][field],
                "partition {pid} {field}: {} before the restart, {} after",
                before["partitions"][&pid][field],
                after["partitions"][&pid][field]
            );
        }
    }
    // Second half in emulator mode (same process, plain listener).
    generate(
        conn(&second, Mode::Emulator, Policy::Send),
        10_000,
        10_000,
        "mixed",
    )
    .await?;
    let r = receive_compact(conn(&second, Mode::Tls, Policy::Listen), 20_000).await?;
    let by_p = check_round_trip(&r, 20_000)?;
    // Sequence numbers and offsets continue where the first run stopped.
    for (pid, events) in &by_p {
        let last_before = before["partitions"][pid]["last_enqueued_sequence_number"]
            .as_i64()
            .unwrap_or(-1);
        let off_before = before["partitions"][pid]["last_enqueued_offset"].clone();
        if last_before >= 0 {
            let e = events
                .get(last_before as usize)
                .context("event before restart missing")?;
            ensure!(
                json!(e.off) == off_before,
                "partition {pid}: offset of seq {last_before} changed: {:?} vs {off_before}",
                e.off
            );
            ensure!(
                e.body.as_str() < "rt-010000",
                "partition {pid}: seq {last_before} is {}, sent after the restart",
                e.body
            );
            if let Some(next) = events.get(last_before as usize + 1) {
                ensure!(
                    next.body.as_str() >= "rt-010000",
                    "partition {pid}: seq {} is {}",
                    next.seq,
                    next.body
                );
            }
        }
    }
    ensure!(hub.is_running(), "hub exited\n{}", hub.current_log());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bad input

mod raw {
    //! Raw AMQP frames, for clients that misbehave on purpose.
    use anyhow::{bail, Context, Result};
    use fe2o3_amqp_types::performatives::{Attach, Begin, Open, Transfer};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
    pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

    /// One frame: size, doff 2, type, channel, body.
    pub fn frame(kind: u8, channel: u16, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(8 + body.len());
        f.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
        f.push(2);
        f.push(kind);
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    pub fn performative<T: serde::Serialize>(p: &T) -> Result<Vec<u8>> {
        serde_amqp::to_vec(p).context("encode performative")
    }

    /// Reads until the peer closes; true if it closed (EOF or reset) within `within`.
    pub async fn closes_within(s: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return (false, got),
                Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads one frame (after the 8-byte protocol header has been consumed).
    pub async fn read_frame(s: &mut TcpStream) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
            .await
            .context("frame timeout")??;
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let doff = head[4] as usize * 4;
        if size < doff {
            bail!("bad frame size {size}");
        }
        let mut rest = vec![0u8; size - 8];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut rest))
            .await
            .context("frame timeout")??;
        Ok((head[5], rest[doff - 8..].to_vec()))
    }

    /// SASL PLAIN, Open, Begin, Attach a sender to `target`; returns the open stream once
    /// the hub answered the attach and granted credit (or after a short wait).
    pub async fn attach_sender(
        addr: std::net::SocketAddr,
        user: &str,
        key: &str,
        target: &str,
    ) -> Result<TcpStream> {
        use fe2o3_amqp_types::definitions::{ReceiverSettleMode, Role, SenderSettleMode};
        use fe2o3_amqp_types::messaging::{Source, Target};
        use fe2o3_amqp_types::primitives::{Binary, Symbol};
        use fe2o3_amqp_types::sasl::{SaslCode, SaslInit, SaslOutcome};

        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&SASL_HEADER).await?;
        let mut hdr = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut hdr))
            .await
            .context("sasl header")??;
        let _mechanisms = read_frame(&mut s).await?;
        let mut response = vec![0u8];
        response.extend_from_slice(user.as_bytes());
        response.push(0);
        response.extend_from_slice(key.as_bytes());
        let init = SaslInit {
            mechanism: Symbol::from("PLAIN"),
            initial_response: Some(Binary::from(response)),
            hostname: Some("localhost".into()),
        };
        s.write_all(&frame(1, 0, &performative(&init)?)).await?;
        let (_, outcome) = read_frame(&mut s).await?;
        let outcome: SaslOutcome =
            serde_amqp::from_slice(&outcome).context("decode sasl-outcome")?;
        if !matches!(outcome.code, SaslCode::Ok) {
            bail!("SASL PLAIN refused: {:?}", outcome.code);
        }
        s.write_all(&AMQP_HEADER).await?;
        let open = Open {
            container_id: "raw-vanishing-client".into(),
            hostname: Some("localhost".into()),
            max_frame_size: 65536.into(),
            channel_max: 8.into(),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        s.write_all(&frame(0, 0, &performative(&open)?)).await?;
        let begin = Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: 1000,
            outgoing_window: 1000,
            handle_max: 16.into(),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        s.write_all(&frame(0, 0, &performative(&begin)?)).await?;
        let attach = Attach {
            name: "raw-sender".into(),
            handle: 0.into(),
            role: Role::Sender,
            snd_settle_mode: SenderSettleMode::Unsettled,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Box::new(Source::builder().address("raw-source").build())),
            target: Some(Box::new(
                Target::builder().address(target.to_string()).build().into(),
            )),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: Some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        s.write_all(&frame(0, 0, &performative(&attach)?)).await?;
        // Read the hub's header, open, begin, attach (and flow); 0x12 = attach.
        let mut hdr = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut hdr))
            .await
            .context("amqp header")??;
        for _ in 0..6 {
            let (_, body) = read_frame(&mut s).await?;
            if body.len() > 2 && body[0] == 0 && body[1] == 0x53 && body[2] == 0x12 {
                return Ok(s);
            }
            if body.len() > 2
                && body[0] == 0
                && body[1] == 0x53
                && (body[2] == 0x16 || body[2] == 0x18)
            {
                bail!("hub detached/closed the raw sender: {body:02x?}");
            }
        }
        bail!("no attach reply from the hub")
    }

    /// A transfer frame carrying `payload` (a slice of an encoded message), `more` set.
    pub fn transfer(payload: &[u8], more: bool) -> Result<Vec<u8>> {
        let t = Transfer {
            handle: 0.into(),
            delivery_id: Some(0),
            delivery_tag: Some(vec![1, 2, 3, 4].into()),
            message_format: Some(0),
            settled: Some(false),
            more,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let mut body = performative(&t)?;
        body.extend_from_slice(payload);
        Ok(frame(0, 0, &body))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sdk_bad_input_does_not_disturb_a_healthy_client() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let mut hub = HubProcess::spawn(HubOptions::default()).await?;
    let info = hub.info.clone();
    let plain = info.amqp.context("plain listener")?;
    let tls = info.amqps;
    let hub_name = info.hub_name().to_string();
    let (user, key) = info.key(Policy::Send)?;

    // The healthy client: a receiver on partition 0 and a producer sending 300 events to it
    // in batches of 10, both over TLS, while the abuse below runs.
    let healthy_recv = tokio::spawn(run_script(
        "receive",
        json!({"conn": conn(&info, Mode::Tls, Policy::Listen), "partitions": ["0"], "position": {"kind": "earliest"},
               "expect": 300, "max_seconds": 60, "settle_seconds": 2.0, "compact": true}),
        SCRIPT_TIMEOUT,
    ));
    let healthy_send = tokio::spawn(run_script(
        "send",
        json!({"conn": conn(&info, Mode::Tls, Policy::Send),
               "generate": {"count": 300, "prefix": "ok", "batch_size": 10, "routing": "partition_id", "partitions": 1}}),
        SCRIPT_TIMEOUT,
    ));

    let mut report = Vec::new();
    for round in 0..3 {
        // 1. Garbage bytes on the plain port.
        let mut s = TcpStream::connect(plain).await?;
        let garbage: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = s.write_all(&garbage).await;
        let (closed, _) = raw::closes_within(&mut s, Duration::from_secs(10)).await;
        ensure!(
            closed,
            "round {round}: garbage on the plain port: connection left open"
        );
        // 2. A wrong protocol header (HTTP) on the plain port: the hub answers with its own
        //    header (or nothing) and closes.
        let mut s = TcpStream::connect(plain).await?;
        let _ = s
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let (closed, got) = raw::closes_within(&mut s, Duration::from_secs(10)).await;
        ensure!(
            closed,
            "round {round}: HTTP on the plain port: connection left open"
        );
        ensure!(
            got.is_empty() || got.starts_with(b"AMQP"),
            "HTTP probe answered with {:02x?}",
            &got[..got.len().min(16)]
        );
        // 3. An unsupported AMQP version header.
        let mut s = TcpStream::connect(plain).await?;
        let _ = s.write_all(b"AMQP\x09\x01\x00\x00").await;
        let (closed, _) = raw::closes_within(&mut s, Duration::from_secs(10)).await;
        ensure!(
            closed,
            "round {round}: bad AMQP version header: connection left open"
        );
        // 4. Garbage instead of a TLS ClientHello on the TLS port.
        let mut s = TcpStream::connect(tls).await?;
        let _ = s.write_all(&garbage[..4096]).await;
        let (closed, _) = raw::closes_within(&mut s, Duration::from_secs(10)).await;
        ensure!(
            closed,
            "round {round}: garbage on the TLS port: connection left open"
        );
        // 5. Plain AMQP on the TLS port (no TLS).
        let mut s = TcpStream::connect(tls).await?;
        let _ = s.write_all(&raw::SASL_HEADER).await;
        let (closed, _) = raw::closes_within(&mut s, Duration::from_secs(10)).await;
        ensure!(
            closed,
            "round {round}: plain AMQP on the TLS port: connection left open"
        );
        // 6. A client that vanishes after the SASL header.
        let mut s = TcpStream::connect(plain).await?;
        let _ = s.write_all(&raw::SASL_HEADER).await;
        drop(s);
        // 7. A client that vanishes in the middle of a transfer: a frame that announces
        //    more bytes than it carries, then a multi-frame delivery cut after its first frame.
        let target = format!("{hub_name}/Partitions/0");
        // An encoded message: one data section (0x75, vbin32) of 30,000 bytes.
        let mut message = vec![0x00, 0x53, 0x75, 0xb0];
        message.extend_from_slice(&30_000u32.to_be_bytes());
        message.extend_from_slice(&[b'Z'; 30_000]);
        let mut s = raw::attach_sender(plain, &user, &key, &target)
            .await
            .context("raw attach (mid-frame)")?;
        let t = raw::transfer(&message, false)?;
        let _ = s.write_all(&t[..t.len() / 2]).await;
        drop(s);
        let mut s = raw::attach_sender(plain, &user, &key, &target)
            .await
            .context("raw attach (mid-delivery)")?;
        let t = raw::transfer(&message[..message.len() / 3], true)?;
        let _ = s.write_all(&t).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
        ensure!(
            hub.is_running(),
            "round {round}: the hub exited\n{}",
            hub.current_log()
        );
        report.push(round);
    }

    let sent = healthy_send.await??;
    ensure!(
        sent["generated"]["sent"] == json!(300) && sent["generated"]["failures"] == json!([]),
        "healthy producer: {}",
        sent["generated"]
    );
    let got: Received<CompactEv> = serde_json::from_value(healthy_recv.await??)?;
    ensure!(
        got.errors().is_empty(),
        "healthy receiver errors: {:?}",
        got.errors()
    );
    let bodies: Vec<String> = got.all().into_iter().map(|e| e.body).collect();
    let want: Vec<String> = (0..300).map(|i| format!("ok-{i:06}")).collect();
    ensure!(
        bodies == want,
        "healthy receiver got {} events (first extra/missing: {:?})",
        bodies.len(),
        bodies.iter().zip(&want).find(|(a, b)| a != b)
    );
    // Nothing of the broken deliveries was stored: partition 0 holds exactly the 300.
    let props = run_script(
        "properties",
        json!({"conn": conn(&info, Mode::Tls, Policy::Manage)}),
        SCRIPT_TIMEOUT,
    )
    .await?;
    ensure!(
        props["partitions"]["0"]["last_enqueued_sequence_number"] == json!(299),
        "partition 0: {}",
        props["partitions"]["0"]
    );
    ensure!(hub.is_running(), "the hub exited\n{}", hub.current_log());
    let status = hub.stop(Duration::from_secs(15)).await?;
    ensure!(status.success(), "hub exit status {status} after the abuse");
    Ok(())
}

#[test]
fn helpers_parse_connection_strings() -> Result<()> {
    let cs = "Endpoint=sb://localhost:1/;SharedAccessKeyName=send;SharedAccessKey=abc=;EntityPath=tcpulse";
    let replaced = with_key(cs, "xyz");
    if replaced != "Endpoint=sb://localhost:1/;SharedAccessKeyName=send;SharedAccessKey=xyz;EntityPath=tcpulse" {
        bail!("with_key: {replaced}");
    }
    Ok(())
}
