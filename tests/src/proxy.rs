//! A real HTTP CONNECT proxy for the 443-path tests: Debian's `tinyproxy`, started on a free
//! loopback port with a config written into its own temporary directory, optionally with
//! Basic authentication, logging every request so a test can see that a connection really
//! went through it. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::ChildProcess;
use crate::services::{binary, free_port};
use crate::wait::{poll_until_blocking, OnError, Poll};

/// How long tinyproxy may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with a new port when tinyproxy exits at start (the port was taken meanwhile).
const START_ATTEMPTS: usize = 3;

/// A running tinyproxy.
#[derive(Debug)]
pub struct Tinyproxy {
    proc: ChildProcess,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts tinyproxy on `127.0.0.1:<free port>`, allowing CONNECT to any port; with
    /// `basic_auth = Some((user, password))` it answers 407 without credentials and 401
    /// with wrong ones.
    pub fn start(basic_auth: Option<(&str, &str)>) -> Result<Tinyproxy> {
        let program = binary("tinyproxy", "tinyproxy")?;
        let dir = tempfile::Builder::new()
            .prefix("tcpulse-tinyproxy-")
            .tempdir()
            .context("temp dir")?;
        let mut last = None;
        for attempt in 0..START_ATTEMPTS {
            let port = free_port()?;
            let config = write_config(dir.path(), port, basic_auth)?;
            let mut cmd = Command::new(&program);
            cmd.arg("-d").arg("-c").arg(&config);
            let log = dir.path().join(format!("tinyproxy-{attempt}.log"));
            let mut proc = ChildProcess::spawn("tinyproxy", cmd, log)?;
            let ready = poll_until_blocking(
                &format!("tinyproxy to accept on 127.0.0.1:{port}"),
                READY_TIMEOUT,
                Poll::every(20, OnError::Retry),
                || {
                    proc.ensure_running()?;
                    Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
                },
            );
            match ready {
                Ok(_) => {
                    return Ok(Tinyproxy {
                        proc,
                        port,
                        _dir: dir,
                    })
                }
                Err(e) => last = Some(e.context(proc.log_tail(20))),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("tinyproxy did not start")))
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many CONNECT requests for `target` (`host:port`) it has logged.
    pub fn connects_to(&self, target: &str) -> usize {
        let needle = format!("CONNECT {target} ");
        self.proc
            .log()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}

fn write_config(dir: &Path, port: u16, basic_auth: Option<(&str, &str)>) -> Result<PathBuf> {
    let mut text = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogLevel Connect\nMaxClients 50\n\
         Allow 127.0.0.1\nDisableViaHeader Yes\n"
    );
    if let Some((user, password)) = basic_auth {
        text.push_str(&format!("BasicAuth {user} {password}\n"));
    }
    let path = dir.join("tinyproxy.conf");
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}
