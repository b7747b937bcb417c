//! Chaos cases: TLS hints (issue 12, fault 9c). A failed TLS handshake is reported with its
//! real cause, against real servers on loopback: an `openssl s_server` whose self-signed
//! certificate is not trusted, one that speaks only TLS 1.0 or 1.1 (dialled by the client
//! library), and the real `tcpulse-hub` dialled by an `openssl s_client` that offers only
//! TLS 1.0 (read in the hub's log). Each records one row: no events, the hint asserted as
//! the outcome.
//!
//! Needs the `openssl` CLI (Debian `openssl`); the hub case needs `tcpulse-hub` built
//! (`cargo build -p tcpulse-hub --bin tcpulse-hub`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tcpulse_eventhub::client::{ClientConfig, ClientOptions, Producer, RetryOptions};
use tcpulse_tests::chaos::{record, Row};
use tcpulse_tests::hub::{HubOptions, HubProcess};

const KEY: &str = "q3Jm0F9vNwX2bC8dE1fG4hI7jK0lM3nO6pQ9rS2tU5v=";

fn openssl() -> Command {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "the openssl CLI is needed: apt-get install -y openssl");
    Command::new("openssl")
}

/// A self-signed end-entity certificate for `localhost` (not a CA, so the only fault is
/// that nobody trusts its issuer).
fn self_signed(dir: &Path) {
    let out = openssl()
        .current_dir(dir)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            // Not `CN=localhost`: the client now checks the system trust store, which may
            // hold a CA of that name, and then the fault is a bad signature, not an unknown
            // issuer.
            "-subj",
            "/CN=tcpulse tls_hints untrusted leaf",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl s_server` on an ephemeral loopback port with `extra` flags; killed on drop.
struct SServer {
    child: Child,
    addr: String,
}

impl SServer {
    fn start(dir: &Path, extra: &[&str]) -> SServer {
        let mut child = openssl()
            .current_dir(dir)
            .args(["s_server", "-accept", "127.0.0.1:0", "-cert", "cert.pem"])
            .args(["-key", "key.pem"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // s_server prints `ACCEPT 127.0.0.1:PORT` once it listens (bounded: 20 lines).
        let addr = BufReader::new(stdout)
            .lines()
            .take(20)
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("ACCEPT ").map(str::to_owned));
        let Some(addr) = addr else {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "openssl s_server {extra:?} did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        SServer { child, addr }
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the client library says when it dials `addr` (no retries).
async fn connect_error(addr: &str) -> String {
    let cs = format!(
        "Endpoint=sb://localhost/;SharedAccessKeyName=send;SharedAccessKey={KEY};EntityPath=tc"
    );
    let options = ClientOptions {
        custom_endpoint: Some(addr.to_owned()),
        connect_timeout_secs: 10,
        retry: RetryOptions {
            max_retries: 0,
            ..RetryOptions::default()
        },
        ..ClientOptions::default()
    };
    let config = ClientConfig::from_connection_string(&cs, None, options).unwrap();
    match Producer::connect(config).await {
        Ok(_) => panic!("{addr}: connected to a server that should have been refused"),
        Err(e) => e.to_string(),
    }
}

/// The row of a hint case: no events, the hint asserted as the outcome.
fn hint_row(fault: &str, hint: &str) {
    record(&Row {
        fault: fault.into(),
        outcome: hint.into(),
        ..Row::default()
    })
    .unwrap();
}

#[tokio::test]
async fn chaos_tls_untrusted_certificate_hint_names_the_ca_not_the_port() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path());
    let server = SServer::start(dir.path(), &[]);
    let e = connect_error(&server.addr).await;
    assert!(
        e.contains("TLS handshake with")
            && e.contains("UnknownIssuer")
            && e.contains("the server's certificate is not trusted")
            && e.contains("extra_ca_file"),
        "{e}"
    );
    assert!(!e.contains("port 5671 is open"), "{e}");
    hint_row(
        "TLS: server certificate not trusted (client side)",
        "hint: the server's certificate is not trusted (UnknownIssuer); set extra_ca_file",
    );
}

#[tokio::test]
async fn chaos_tls_server_offering_only_tls1_0_or_1_1_hint_says_so() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path());
    // OpenSSL 3 refuses TLS < 1.2 at its default security level; level 0 allows it.
    for version in ["-tls1", "-tls1_1"] {
        let server = SServer::start(dir.path(), &[version, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        let e = connect_error(&server.addr).await;
        assert!(
            e.contains("the server offered TLS < 1.2; Event Hubs requires TLS 1.2+"),
            "{version}: {e}"
        );
        assert!(!e.contains("port 5671 is open"), "{version}: {e}");
    }
    hint_row(
        "TLS: server offers only TLS 1.0/1.1 (client side)",
        "hint: the server offered TLS < 1.2; Event Hubs requires TLS 1.2+",
    );
}

#[tokio::test]
async fn chaos_tls_hub_log_names_a_tls1_0_client() {
    let mut hub = HubProcess::spawn(HubOptions::default()).await.unwrap();
    let addr = hub.info.amqps.to_string();
    let out = openssl()
        .args([
            "s_client",
            "-connect",
            &addr,
            "-tls1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hub accepted TLS 1.0");
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = hub.current_log();
        if log.contains("TLS handshake failed") || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        log.contains("the client offered TLS < 1.2")
            && log.contains("Event Hubs requires TLS 1.2+"),
        "{log}"
    );
    hub.stop(Duration::from_secs(5)).await.unwrap();
    hint_row(
        "TLS: client offers only TLS 1.0 (hub log)",
        "hub log: the client offered TLS < 1.2; Event Hubs requires TLS 1.2+",
    );
}
