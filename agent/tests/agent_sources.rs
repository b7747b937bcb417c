//! Each source against a real local thing: loopback HTTP servers (tiny_http) for `http`
//! and `pexip`, a real file, a real command; and the reporting delay of a change.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use tcpulse_agent::config::{parse_file, Config, RunArgs};
use tcpulse_agent::publish::{PublishError, Publisher};
use tcpulse_agent::sources::{SourceConfig, SourceError};
use tcpulse_schema::State;

/// A loopback HTTP server answering each request with `respond(url, authorization)`.
struct Server {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    _thread: std::thread::JoinHandle<()>,
}

fn serve(respond: impl Fn(&str, Option<&str>) -> (u16, String) + Send + 'static) -> Server {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    let thread = std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let auth = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .map(|h| h.value.as_str().to_owned());
            log.lock().unwrap().push(req.url().to_owned());
            let (status, body) = respond(req.url(), auth.as_deref());
            let resp = tiny_http::Response::from_string(body).with_status_code(status);
            let _ = req.respond(resp);
        }
    });
    Server {
        url,
        requests,
        _thread: thread,
    }
}

fn source(toml_text: &str) -> SourceConfig {
    toml::from_str(toml_text).unwrap()
}

async fn read(cfg: &SourceConfig) -> Result<Vec<tcpulse_agent::sources::Sample>, SourceError> {
    cfg.build("tc-eu-vmss_0").unwrap().sample().await
}

#[tokio::test]
async fn agent_source_http_reads_json_pointers_and_reports_failures() {
    let body = Arc::new(Mutex::new((
        200u16,
        r#"{"status":{"calls":7,"load":63.4},"state":"active"}"#.to_owned(),
    )));
    let b = body.clone();
    let server = serve(move |_, _| b.lock().unwrap().clone());
    let cfg = source(&format!(
        "type = \"http\"\nurl = \"{}/status\"\n[pointers]\ncall_count = \"/status/calls\"\nmedia_load = \"/status/load\"\n",
        server.url
    ));
    let s = read(&cfg).await.unwrap();
    let calls = s[0].calls.unwrap();
    assert_eq!(
        (
            calls.call_count,
            calls.max_calls,
            calls.media_load,
            s[0].state
        ),
        (7, 16, Some(63), State::Active)
    );
    assert_eq!(server.requests.lock().unwrap().as_slice(), ["/status"]);

    *body.lock().unwrap() = (503, "busy".into());
    let e = read(&cfg).await.unwrap_err();
    assert_eq!(e.kind(), "status", "{e}");
    *body.lock().unwrap() = (200, "<html>".into());
    assert_eq!(read(&cfg).await.unwrap_err().kind(), "parse");

    // Nothing listening: a connection error, not a crash.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = source(&format!(
        "type = \"http\"\nurl = \"http://{dead}/status\"\ntimeout = \"1s\"\n"
    ));
    assert_eq!(read(&cfg).await.unwrap_err().kind(), "http");
}

fn node(name: &str, calls: u32, state: &str) -> serde_json::Value {
    serde_json::json!({
        "call_count": calls, "max_calls": 16, "media_load": calls * 6, "name": name,
        "scaleset_id": "tc-eu-vmss", "state": state, "instance_status": "Running",
        "start_time": "2026-11-26T07:41:12.000123", "heartbeat_time": "2026-11-26T10:00:00",
        "id": format!("id-{name}"), "ip_address": "192.0.2.4", "private_ip_address": "192.0.2.4",
        "resource_uri": format!("/api/admin/status/v1/teamsnode/id-{name}/"), "eventhub_id": "eh"
    })
}

#[tokio::test]
async fn agent_source_pexip_pages_through_teamsnode_with_basic_auth() {
    let expected = format!(
        "Basic {}",
        <base64::engine::GeneralPurpose as base64::Engine>::encode(
            &base64::engine::general_purpose::STANDARD,
            "tcpulse:pa55"
        )
    );
    let server = serve(move |url, auth| {
        if auth != Some(expected.as_str()) {
            return (401, "{}".into());
        }
        let page = if url.contains("offset=2") {
            serde_json::json!({"meta": {"next": null, "total_count": 3}, "objects": [node("tc-eu-vmss_2", 0, "Maintenance")]})
        } else {
            serde_json::json!({"meta": {"next": "/api/admin/status/v1/teamsnode/?limit=500&offset=2", "total_count": 3},
                "objects": [node("tc-eu-vmss_0", 12, "Active"), node("tc-eu-vmss_1", 3, "Waiting for termination")]})
        };
        (200, page.to_string())
    });
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pa55\n").unwrap();
    let cfg = source(&format!(
        "type = \"pexip\"\nurl = \"{}\"\nusername = \"tcpulse\"\npassword_file = {pw:?}\n[connectors]\n\"tc-eu-vmss\" = \"tc-eu.example.com\"\n",
        server.url
    ));
    let nodes = read(&cfg).await.unwrap();
    let summary: Vec<(String, State, u32)> = nodes
        .iter()
        .map(|n| {
            (
                n.instance.clone().unwrap(),
                n.state,
                n.calls.unwrap().call_count,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("tc-eu-vmss_0".to_owned(), State::Active, 12),
            ("tc-eu-vmss_1".to_owned(), State::WaitingForTermination, 3),
            ("tc-eu-vmss_2".to_owned(), State::Maintenance, 0)
        ]
    );
    assert_eq!(nodes[0].connector.as_deref(), Some("tc-eu.example.com"));
    assert_eq!(nodes[0].calls.unwrap().media_load, Some(72));
    assert_eq!(
        nodes[0].start_time.unwrap().to_string(),
        "2026-11-26T07:41:12.000Z"
    );
    let reqs = server.requests.lock().unwrap().clone();
    assert_eq!(reqs[0], "/api/admin/status/v1/teamsnode/?limit=500");
    assert_eq!(reqs.len(), 2, "followed meta.next once");

    std::fs::write(&pw, "wrong\n").unwrap();
    let e = read(&cfg).await.unwrap_err();
    assert!(
        e.to_string().contains("401") && e.to_string().contains("password"),
        "{e}"
    );
}

#[tokio::test]
async fn agent_source_file_reads_number_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("calls");
    let cfg = source(&format!("type = \"file\"\npath = {f:?}\n"));
    assert_eq!(read(&cfg).await.unwrap_err().kind(), "io", "missing file");
    std::fs::write(&f, "9\n").unwrap();
    assert_eq!(read(&cfg).await.unwrap()[0].calls.unwrap().call_count, 9);
    std::fs::write(
        &f,
        r#"{"call_count": 4, "max_calls": 15, "state": "maintenance"}"#,
    )
    .unwrap();
    let s = read(&cfg).await.unwrap();
    assert_eq!(
        (
            s[0].calls.unwrap().call_count,
            s[0].calls.unwrap().max_calls,
            s[0].state
        ),
        (4, 15, State::Maintenance)
    );
    std::fs::write(&f, "{\"calls\": 4}").unwrap();
    assert_eq!(read(&cfg).await.unwrap_err().kind(), "parse");
}

#[cfg(unix)]
#[tokio::test]
async fn agent_source_command_parses_output_fails_and_times_out() {
    let ok = source(
        "type = \"command\"\ncommand = [\"sh\", \"-c\", \"echo '{\\\"call_count\\\": 6}'\"]\n",
    );
    assert_eq!(read(&ok).await.unwrap()[0].calls.unwrap().call_count, 6);
    let failing =
        source("type = \"command\"\ncommand = [\"sh\", \"-c\", \"echo broken >&2; exit 3\"]\n");
    let e = read(&failing).await.unwrap_err();
    assert!(
        e.kind() == "command" && e.to_string().contains("broken"),
        "{e}"
    );
    let slow = source("type = \"command\"\ncommand = [\"sleep\", \"5\"]\ntimeout = \"200ms\"\n");
    let t = Instant::now();
    assert_eq!(read(&slow).await.unwrap_err().kind(), "timeout");
    assert!(t.elapsed() < Duration::from_secs(2));
    let missing = source("type = \"command\"\ncommand = [\"/nonexistent/tcpulse-calls\"]\n");
    assert_eq!(read(&missing).await.unwrap_err().kind(), "command");
}

/// Collects every accepted event with its arrival time.
#[derive(Default)]
struct Collect(Mutex<VecDeque<(Instant, tcpulse_schema::StatusEvent)>>);

impl Publisher for Collect {
    fn send<'a>(
        &'a self,
        _key: &'a str,
        bodies: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        let now = Instant::now();
        let mut q = self.0.lock().unwrap();
        for b in bodies {
            q.push_back((now, tcpulse_schema::decode(&b).unwrap()));
        }
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_report_call_count_change_is_sent_within_one_second() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("calls");
    std::fs::write(&f, "3").unwrap();
    let text = format!(
        "[identity]\nconnector = \"tc.example.com\"\nregion = \"r\"\nscaleset = \"s\"\ninstance = \"i\"\n\
         [report]\ninterval = \"60s\"\n[spool]\ndir = {:?}\n[publish]\nfile = \"/unused\"\n\
         [source]\ntype = \"file\"\npath = {f:?}\n",
        dir.path().join("spool")
    );
    let cfg = Config::resolve(
        &RunArgs::default(),
        parse_file(Path::new("t"), &text).unwrap(),
    )
    .unwrap();
    let sink = Arc::new(Collect::default());
    let token = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(tcpulse_agent::run::run(cfg, sink.clone(), token.clone()));
    let wait_for = |n: u32| {
        let sink = sink.clone();
        async move {
            for _ in 0..400 {
                if let Some((t, _)) = sink
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(_, e)| e.calls.is_some_and(|c| c.call_count == n))
                {
                    return *t;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("no event with {n} calls");
        }
    };
    wait_for(3).await;
    let mut worst = Duration::ZERO;
    for n in [4, 5, 2] {
        std::fs::write(&f, n.to_string()).unwrap();
        let changed = Instant::now();
        let arrived = wait_for(n).await;
        worst = worst.max(arrived.duration_since(changed));
    }
    token.cancel();
    let summary = run.await.unwrap().unwrap();
    assert!(
        worst < Duration::from_secs(1),
        "change reported after {worst:?}"
    );
    assert_eq!(
        summary.events_sent, 4,
        "only the first read and the three changes (interval 60 s)"
    );
    eprintln!("worst change-to-publish delay: {worst:?}");
}
