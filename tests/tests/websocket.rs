//! The 443 path (issue 15): AMQP over WebSockets and HTTP CONNECT proxies, against the hub's
//! WebSocket listener on loopback.
//!
//! - the official Python SDK (`TransportType.AmqpOverWebsocket`, subprotocol `AMQPWSB10`)
//!   sends and receives, directly and through a real proxy (Debian's `tinyproxy`), with and
//!   without Basic authentication;
//! - our client (fe2o3-amqp-ws, subprotocol `amqp`) does the same, with the proxy password
//!   from a file; a wrong password is a distinct, fatal error;
//! - `transport = "auto"` reaches the hub over WebSocket when the AMQP port is refused or
//!   silent, logs the choice and keeps it for the next connection; with AMQP up it uses AMQP;
//! - the agent and the collector run end to end with `transport = "websocket"`.
//!
//! Where AMQP must not be used, `custom_endpoint` points at a loopback port where nothing
//! listens, so a test passes only over the WebSocket.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::{json, Value};
use tcpulse_eventhub::client::{
    BatchOptions, ClientConfig, ClientOptions, ConnectError, Consumer, ConsumerOptions, EventData,
    Producer, ProxyOptions, SendError, StartPosition, Transport,
};
use tcpulse_tests::agent::{AgentOptions, AgentProcess, Target};
use tcpulse_tests::collector::{CollectorOptions, CollectorProcess};
use tcpulse_tests::hub::{HubInfo, HubOptions, Mode, Policy, TestHub};
use tcpulse_tests::proxy::Tinyproxy;
use tcpulse_tests::python::run_script;
use tcpulse_tests::services::free_port;
use tcpulse_tests::wait::{poll_until, OnError, Poll};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

async fn ws_hub() -> Result<TestHub> {
    TestHub::start_with(HubOptions {
        websocket: true,
        plain: false,
        ..HubOptions::default()
    })
    .await
}

fn ws_addr(info: &HubInfo) -> Result<String> {
    Ok(info
        .websocket
        .ok_or_else(|| anyhow!("the hub has no WebSocket listener"))?
        .to_string())
}

/// A loopback `host:port` where nothing listens.
fn nothing_listens() -> Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// Options for `transport`: the hub's CA, short timeouts, no proxy from the environment,
/// the AMQP port dead unless `amqp_up`, the WebSocket at the hub's listener.
fn options(info: &HubInfo, transport: Transport, amqp_up: bool) -> Result<ClientOptions> {
    Ok(ClientOptions {
        extra_ca_file: Some(info.ca_pem.clone()),
        transport,
        custom_endpoint: if amqp_up {
            None
        } else {
            Some(nothing_listens()?)
        },
        websocket_endpoint: Some(ws_addr(info)?),
        proxy: ProxyOptions {
            url: Some("none".into()),
            ..ProxyOptions::default()
        },
        connect_timeout_secs: 15,
        operation_timeout_secs: 10,
        ..ClientOptions::default()
    })
}

fn config(info: &HubInfo, policy: Policy, options: ClientOptions) -> Result<ClientConfig> {
    Ok(ClientConfig::from_connection_string(
        info.connection_string(Mode::Tls, policy)?,
        None,
        options,
    )?)
}

/// Sends `bodies` to partition `partition` with the Send policy and reads them back from
/// earliest with the Listen policy, both with `options`.
async fn send_and_receive(
    info: &HubInfo,
    options: &ClientOptions,
    partition: &str,
    bodies: &[String],
) -> Result<()> {
    let mut producer = Producer::connect(config(info, Policy::Send, options.clone())?)
        .await
        .context("producer connect")?;
    let mut batch = producer.create_batch(BatchOptions {
        partition_id: Some(partition.into()),
        ..BatchOptions::default()
    })?;
    for b in bodies {
        batch
            .try_add(EventData::new(b.clone().into_bytes()))
            .map_err(|e| anyhow!("{e}"))?;
    }
    producer.send_batch(&batch).await.context("send")?;
    producer.close().await;
    let mut consumer = Consumer::connect(
        config(info, Policy::Listen, options.clone())?,
        ConsumerOptions {
            start: StartPosition::Earliest,
            ..ConsumerOptions::new(partition)
        },
    )
    .await
    .context("consumer connect")?;
    let mut got = Vec::new();
    while got.len() < bodies.len() {
        let ev = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .map_err(|_| anyhow!("only {} of {} events came back", got.len(), bodies.len()))??;
        got.push(String::from_utf8_lossy(&ev.body).into_owned());
    }
    consumer.close().await;
    ensure!(got == bodies, "received {got:?}, sent {bodies:?}");
    Ok(())
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Log lines of `tcpulse_eventhub` at INFO, captured on this thread (a current-thread
/// runtime keeps every client future on it).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("tcpulse_eventhub=info"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        self.0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }

    fn count(&self, what: &str) -> usize {
        self.text().lines().filter(|l| l.contains(what)).count()
    }
}

// ---------------------------------------------------------------------------------------
// the official Python SDK

fn sdk_events(prefix: &str, n: usize) -> Value {
    Value::Array(
        bodies(prefix, n)
            .into_iter()
            .map(|b| json!({ "body": b }))
            .collect(),
    )
}

/// Sends `n` events to `partition` (empty before) and reads them back with the SDK over
/// the `send` and `listen` conns.
async fn sdk_send_and_receive(
    send: Value,
    listen: Value,
    partition: &str,
    prefix: &str,
    n: usize,
) -> Result<()> {
    let out = run_script(
        "send",
        json!({ "conn": send, "sends": [{"how": "batch", "partition_id": partition, "events": sdk_events(prefix, n)}] }),
        SCRIPT_TIMEOUT,
    )
    .await?;
    ensure!(
        out["results"][0]["ok"] == json!(true),
        "SDK send over WebSocket failed: {}",
        out["results"][0]
    );
    let out = run_script(
        "receive",
        json!({
            "conn": listen,
            "partitions": [partition],
            "position": {"kind": "earliest"},
            "expect": n,
            "max_seconds": 30,
            "settle_seconds": 0.5,
            "compact": true,
        }),
        SCRIPT_TIMEOUT,
    )
    .await?;
    let got: Vec<String> = out["partitions"][0]["events"]
        .as_array()
        .ok_or_else(|| anyhow!("no events in {out}"))?
        .iter()
        .filter_map(|e| e["body"].as_str().map(str::to_string))
        .collect();
    ensure!(
        got == bodies(prefix, n),
        "SDK received {got:?}; errors: {} {}",
        out["partitions"][0]["errors"],
        out["partitions"][0]["open_errors"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_websocket_sdk_sends_and_receives() -> Result<()> {
    let hub = ws_hub().await?;
    let info = &hub.info;
    sdk_send_and_receive(
        info.conn_websocket(Policy::Send, None)?,
        info.conn_websocket(Policy::Listen, None)?,
        "1",
        "sdk-ws",
        5,
    )
    .await?;
    // What the SDK sent over the WebSocket, our client reads over AMQP: one broker.
    let mut c = Consumer::connect(
        config(info, Policy::Listen, options(info, Transport::Amqp, true)?)?,
        ConsumerOptions {
            start: StartPosition::Earliest,
            ..ConsumerOptions::new("1")
        },
    )
    .await?;
    let ev = tokio::time::timeout(Duration::from_secs(10), c.recv()).await??;
    ensure!(&ev.body[..] == b"sdk-ws-0", "{:?}", ev.body);
    c.close().await;
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_websocket_sdk_through_tinyproxy_with_and_without_basic_auth() -> Result<()> {
    let hub = ws_hub().await?;
    let info = &hub.info;
    let target = ws_addr(info)?;

    let open = Tinyproxy::start(None)?;
    let via = json!({"proxy_hostname": "127.0.0.1", "proxy_port": open.port()});
    sdk_send_and_receive(
        info.conn_websocket(Policy::Send, Some(via.clone()))?,
        info.conn_websocket(Policy::Listen, Some(via))?,
        "2",
        "sdk-proxy",
        3,
    )
    .await?;
    ensure!(
        open.connects_to(&target) >= 2,
        "tinyproxy tunnelled no SDK connection to {target}:\n{}",
        open.log()
    );

    let guarded = Tinyproxy::start(Some(("sdk", "proxy-pass-1")))?;
    let via = json!({"proxy_hostname": "127.0.0.1", "proxy_port": guarded.port(),
                     "username": "sdk", "password": "proxy-pass-1"});
    sdk_send_and_receive(
        info.conn_websocket(Policy::Send, Some(via.clone()))?,
        info.conn_websocket(Policy::Listen, Some(via))?,
        "3",
        "sdk-auth",
        3,
    )
    .await
    .context("the SDK through tinyproxy with Basic auth")?;
    ensure!(guarded.connects_to(&target) >= 2, "{}", guarded.log());
    hub.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// our client

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_websocket_sends_and_receives_with_the_amqp_port_dead() -> Result<()> {
    let hub = ws_hub().await?;
    let opts = options(&hub.info, Transport::WebSocket, false)?;
    send_and_receive(&hub.info, &opts, "0", &bodies("ws", 10)).await?;
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_websocket_through_tinyproxy_with_basic_auth_from_a_file() -> Result<()> {
    let hub = ws_hub().await?;
    let info = &hub.info;
    let proxy = Tinyproxy::start(Some(("agent", "Pr0xy-Secret")))?;
    let dir = tempfile::tempdir()?;
    let password_file = dir.path().join("proxy-password");
    std::fs::write(&password_file, "Pr0xy-Secret\n")?;
    let mut opts = options(info, Transport::WebSocket, false)?;
    opts.proxy = ProxyOptions {
        url: Some(proxy.url()),
        username: Some("agent".into()),
        password_file: Some(password_file),
        ..ProxyOptions::default()
    };
    send_and_receive(info, &opts, "2", &bodies("ws-proxy", 4)).await?;
    let target = ws_addr(info)?;
    ensure!(
        proxy.connects_to(&target) >= 2,
        "no tunnel to {target} in the proxy's log:\n{}",
        proxy.log()
    );
    hub.shutdown().await;
    Ok(())
}

/// Connecting through `proxy` with `opts`; the error it fails with.
async fn connect_error(info: &HubInfo, opts: ClientOptions) -> Result<SendError> {
    match Producer::connect(config(info, Policy::Send, opts)?).await {
        Ok(p) => {
            p.close().await;
            Err(anyhow!("connected although the proxy should have refused"))
        }
        Err(e) => Ok(e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_wrong_or_missing_proxy_password_is_a_distinct_fatal_error() -> Result<()> {
    let hub = ws_hub().await?;
    let info = &hub.info;
    let proxy = Tinyproxy::start(Some(("agent", "right-password")))?;
    let dir = tempfile::tempdir()?;
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "WRONG-PASSWORD-123\n")?;
    let mut opts = options(info, Transport::WebSocket, false)?;
    opts.proxy = ProxyOptions {
        url: Some(proxy.url()),
        username: Some("agent".into()),
        password_file: Some(wrong),
        ..ProxyOptions::default()
    };
    let t0 = Instant::now();
    let e = connect_error(info, opts.clone()).await?;
    let text = e.to_string();
    // tinyproxy answers 401 to wrong credentials (407 to none).
    ensure!(
        matches!(
            e,
            SendError::Connect(ConnectError::Proxy { status: 401, .. })
        ),
        "{e:?}"
    );
    ensure!(
        e.is_fatal(),
        "a refused password is not worth retrying: {e:?}"
    );
    ensure!(
        text.contains("refused CONNECT") && text.contains("user name and its password"),
        "{text}"
    );
    ensure!(!text.contains("WRONG-PASSWORD-123"), "{text}");
    ensure!(
        t0.elapsed() < Duration::from_secs(5),
        "a fatal error must not be retried"
    );

    opts.proxy.username = None;
    opts.proxy.password_file = None;
    let e = connect_error(info, opts).await?;
    ensure!(
        matches!(
            e,
            SendError::Connect(ConnectError::Proxy { status: 407, .. })
        ),
        "{e:?}"
    );
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_amqp_through_a_configured_proxy() -> Result<()> {
    let hub = ws_hub().await?;
    let info = &hub.info;
    let proxy = Tinyproxy::start(None)?;
    let mut opts = options(info, Transport::Amqp, true)?;
    opts.websocket_endpoint = Some(nothing_listens()?);
    opts.proxy.url = Some(proxy.url());
    send_and_receive(info, &opts, "3", &bodies("amqp-proxy", 3)).await?;
    // The connection string's host and AMQP port, tunnelled.
    let target = format!("{}:{}", info.namespace, info.amqps.port());
    ensure!(
        proxy.connects_to(&target) >= 2,
        "no tunnel to {target}:\n{}",
        proxy.log()
    );
    hub.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// auto

#[tokio::test]
async fn client_auto_falls_back_to_websocket_when_the_amqp_port_is_refused_and_keeps_it(
) -> Result<()> {
    let hub = ws_hub().await?;
    let (logs, _guard) = Logs::capture();
    let opts = options(&hub.info, Transport::Auto, false)?;
    let t0 = Instant::now();
    send_and_receive(&hub.info, &opts, "0", &bodies("auto", 3)).await?;
    ensure!(
        t0.elapsed() < Duration::from_secs(5),
        "a refused port needs no probe timeout"
    );
    let text = logs.text();
    ensure!(
        logs.count("auto transport: the AMQP port is unreachable") == 1,
        "one probe for two connections (producer, consumer):\n{text}"
    );
    ensure!(
        logs.count("auto transport: using AMQP over WebSocket") == 1,
        "{text}"
    );
    ensure!(
        logs.count("event hubs connection open") == 2 && logs.count("transport=websocket") == 2,
        "both connections over the WebSocket:\n{text}"
    );
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn client_auto_falls_back_when_the_amqp_port_is_silent_for_five_seconds() -> Result<()> {
    let hub = ws_hub().await?;
    // Accepts TCP, never answers TLS: a black hole behind a middlebox.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (logs, _guard) = Logs::capture();
    let mut opts = options(&hub.info, Transport::Auto, false)?;
    opts.custom_endpoint = Some(silent.local_addr()?.to_string());
    let t0 = Instant::now();
    let producer = Producer::connect(config(&hub.info, Policy::Send, opts)?).await?;
    let took = t0.elapsed();
    producer.close().await;
    ensure!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(12),
        "fell back after {took:?}"
    );
    ensure!(
        logs.count("no answer within 5 s") == 1 && logs.count("transport=websocket") == 1,
        "{}",
        logs.text()
    );
    drop(silent);
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn client_auto_uses_amqp_when_its_port_answers() -> Result<()> {
    let hub = ws_hub().await?;
    let (logs, _guard) = Logs::capture();
    let mut opts = options(&hub.info, Transport::Auto, true)?;
    opts.websocket_endpoint = Some(nothing_listens()?);
    send_and_receive(&hub.info, &opts, "1", &bodies("auto-amqp", 2)).await?;
    let text = logs.text();
    ensure!(
        logs.count("auto transport: the AMQP port answered") == 1
            && logs.count("transport=amqp") == 2
            && logs.count("transport=websocket") == 0,
        "{text}"
    );
    hub.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// agent and collector

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_collector_over_websocket_end_to_end() -> Result<()> {
    let hub = ws_hub().await?;
    let info = hub.info.clone();
    let ws = ws_addr(&info)?;
    let tmp = tempfile::tempdir()?;
    let proxy = Tinyproxy::start(Some(("agent", "agent-proxy-pw")))?;
    let password_file = tmp.path().join("proxy-password");
    std::fs::write(&password_file, "agent-proxy-pw\n")?;

    // The agent: WebSocket through the proxy (Basic auth from a file); its AMQP port dead.
    let mut opts = AgentOptions::every_second(
        "k-ws",
        "eu",
        "tc-ws-1",
        4,
        tmp.path().join("agent").join("spool"),
    );
    opts.publish = format!(
        "transport = \"websocket\"\ncustom_endpoint = {:?}\nwebsocket_endpoint = {ws:?}\n\
         proxy = {:?}\nproxy_username = \"agent\"\nproxy_password_file = {:?}\n",
        nothing_listens()?,
        proxy.url(),
        password_file.display().to_string()
    );
    let cs = info.connection_string(Mode::Tls, Policy::Send)?.to_string();
    let mut agent = AgentProcess::start(&tmp.path().join("agent"), &opts, Target::Hub(&info, cs))?;

    // The collector: WebSocket directly; its AMQP port dead too.
    let out = tmp.path().join("points.lp");
    let copts = CollectorOptions {
        client: format!(
            "transport = \"websocket\"\ncustom_endpoint = {:?}\nwebsocket_endpoint = {ws:?}\n\
             [source.eventhub.client.proxy]\nurl = \"none\"\n",
            nothing_listens()?
        ),
        sinks: format!("[sinks.file]\npath = {:?}\n", out.display().to_string()),
        ..CollectorOptions::default()
    };
    let mut collector = CollectorProcess::start(&tmp.path().join("collector"), &info, &copts)?;
    poll_until(
        "the agent's instance in the collector's points",
        Duration::from_secs(60),
        Poll::every(250, OnError::Retry),
        || {
            agent.ensure_running()?;
            collector.ensure_running()?;
            Ok(std::fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("tc_instance,") && l.contains("instance=tc-ws-1")))
        },
    )
    .await
    .with_context(|| {
        format!(
            "agent log:\n{}\ncollector log:\n{}",
            agent.log(),
            collector.log_tail(40)
        )
    })?;
    ensure!(
        proxy.connects_to(&ws) >= 1,
        "the agent did not go through the proxy:\n{}",
        proxy.log()
    );
    let agent_log = agent.log();
    ensure!(
        agent_log.contains("transport=websocket") && !agent_log.contains("agent-proxy-pw"),
        "{agent_log}"
    );
    ensure!(
        collector.log().contains("transport=websocket"),
        "{}",
        collector.log_tail(40)
    );
    agent.stop(Duration::from_secs(15))?;
    collector.stop(Duration::from_secs(15))?;
    hub.shutdown().await;
    Ok(())
}
