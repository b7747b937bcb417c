//! The official `azure-eventhub` Python SDK as a test peer.
//!
//! [`run_script`] runs `tests/python/<name>.py` with an interpreter that has
//! `azure-eventhub==5.15.1` installed:
//!
//! - `TCPULSE_PYTHON=/path/to/python`: a prepared interpreter (checked once that it can
//!   `import azure.eventhub`);
//! - otherwise a venv at `<target dir>/tcpulse-pyenv`, created once with the system
//!   `python3 -m venv` and `pip install azure-eventhub==5.15.1 websocket-client==1.9.2
//!   azure-eventhub-checkpointstoreblob==1.2.0` (the SDK's WebSocket transport needs the
//!   second, the ownership interop tests the third). Parallel test processes
//!   serialise on a lock file next to it; a marker file written last says the venv is
//!   complete, so a half-built venv (a killed install) is rebuilt, never used.
//!
//! The script protocol: arguments go to the script as one JSON object on **stdin** (they
//! carry connection strings with keys, which must never appear on a command line); the
//! script prints one JSON line on stdout; stderr is captured and quoted in errors. The
//! child is killed when the timeout passes or when the returned future is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The SDK requirement installed into the venv (it pulls azure-core and typing-extensions).
pub const SDK_REQUIREMENT: &str = "azure-eventhub==5.15.1";
/// What the SDK needs for `TransportType.AmqpOverWebsocket` (an optional dependency it
/// imports only then), installed into the venv too.
pub const WEBSOCKET_REQUIREMENT: &str = "websocket-client==1.9.2";

/// The SDK's Blob checkpoint store (`BlobCheckpointStore`), for the partition-ownership
/// interop tests (tests/tests/collector_ha.rs); it pulls azure-storage-blob.
pub const CHECKPOINT_STORE_REQUIREMENT: &str = "azure-eventhub-checkpointstoreblob==1.2.0";

/// What the venv's marker file holds once everything is installed.
fn venv_marker_text() -> String {
    format!("{SDK_REQUIREMENT} {WEBSOCKET_REQUIREMENT} {CHECKPOINT_STORE_REQUIREMENT}")
}

/// Directory of the scripts: `tests/python/`.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// The cargo target directory of the running test or bench executable
/// (`.../target/<profile>/deps/<exe>` → `.../target`).
pub fn target_dir() -> Result<PathBuf> {
    let profile = profile_dir()?;
    profile
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("profile dir {} has no parent", profile.display()))
}

/// The profile directory of the running executable (`.../target/debug`), where cargo puts
/// the workspace's binaries.
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent", dir.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// The Python interpreter to run scripts with; creates the venv on first use (blocking;
/// call from `spawn_blocking` in async code, as [`run_script`] does).
pub fn python() -> Result<PathBuf> {
    static PYTHON: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| resolve_python().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn resolve_python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TCPULSE_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        let out = std::process::Command::new(&p)
            .args([
                "-c",
                "import azure.eventhub, sys; print(azure.eventhub.__version__)",
            ])
            .output()
            .with_context(|| format!("TCPULSE_PYTHON={}: cannot run it", p.display()))?;
        if !out.status.success() {
            bail!(
                "TCPULSE_PYTHON={} cannot import azure.eventhub; install it with `{} -m pip install {SDK_REQUIREMENT}` or unset TCPULSE_PYTHON\n{}",
                p.display(),
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        return Ok(p);
    }
    let venv = target_dir()?.join("tcpulse-pyenv");
    ensure_venv(&venv)?;
    Ok(venv.join("bin").join("python"))
}

/// Creates `venv` with the SDK unless its marker says it is complete. Safe to call from
/// several processes at once: they serialise on `<venv>.lock`.
pub fn ensure_venv(venv: &Path) -> Result<()> {
    let marker = venv.join(".tcpulse-ready");
    let is_ready = || {
        std::fs::read_to_string(&marker)
            .map(|s| s.trim() == venv_marker_text())
            .unwrap_or(false)
    };
    if is_ready() {
        return Ok(());
    }
    let parent = venv
        .parent()
        .ok_or_else(|| anyhow!("venv path {} has no parent", venv.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    let lock_path = venv.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("open lock file {}", lock_path.display()))?;
    fs4::FileExt::lock(&lock).with_context(|| format!("lock {}", lock_path.display()))?;
    let result = (|| {
        if is_ready() {
            return Ok(());
        }
        if venv.exists() {
            std::fs::remove_dir_all(venv)
                .with_context(|| format!("remove incomplete venv {}", venv.display()))?;
        }
        let t0 = Instant::now();
        run_checked(
            std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(venv),
            "python3 -m venv (install Python 3 with venv: `apt-get install python3 python3-venv`)",
        )?;
        run_checked(
            std::process::Command::new(venv.join("bin").join("python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    SDK_REQUIREMENT,
                    WEBSOCKET_REQUIREMENT,
                    CHECKPOINT_STORE_REQUIREMENT,
                ]),
            &format!("pip install {SDK_REQUIREMENT} {WEBSOCKET_REQUIREMENT} {CHECKPOINT_STORE_REQUIREMENT} (needs PyPI; or set TCPULSE_PYTHON to an interpreter that has them)"),
        )?;
        std::fs::write(&marker, format!("{}\n", venv_marker_text()))
            .with_context(|| format!("write {}", marker.display()))?;
        eprintln!(
            "tcpulse-tests: created {} with {SDK_REQUIREMENT} in {:.1}s",
            venv.display(),
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    })();
    let _ = fs4::FileExt::unlock(&lock);
    result
}

fn run_checked(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs `tests/python/<name>.py` with `args` (a JSON object, sent on stdin) and returns the
/// JSON line it printed. Fails with the script's stderr when it exits non-zero, prints no
/// JSON, or outlives `timeout` (then it is killed). `_deadline_s` is added to `args` so the
/// script's watchdog reports what it was doing shortly before the kill.
pub async fn run_script(name: &str, args: Value, timeout: Duration) -> Result<Value> {
    let python = tokio::task::spawn_blocking(python)
        .await
        .context("venv setup task")??;
    let script = scripts_dir().join(format!("{name}.py"));
    if !script.is_file() {
        bail!("no script {}", script.display());
    }
    let mut args = args;
    if let Value::Object(map) = &mut args {
        let secs = timeout.as_secs_f64();
        let deadline = if secs > 10.0 { secs - 3.0 } else { secs * 0.8 };
        map.entry("_deadline_s").or_insert(Value::from(deadline));
    }
    let input = serde_json::to_vec(&args)?;

    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .current_dir(scripts_dir())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {} {}", python.display(), script.display()))?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let mut stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let writer = async move {
        stdin.write_all(&input).await?;
        stdin.shutdown().await?;
        drop(stdin);
        std::io::Result::Ok(())
    };
    let read_out = async move {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).await.map(|_| buf)
    };
    let read_err = async move {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).await.map(|_| buf)
    };
    let all = async {
        let (w, out, err, status) = tokio::join!(writer, read_out, read_err, child.wait());
        (w, out, err, status)
    };
    let (w, out, err, status) = match tokio::time::timeout(timeout, all).await {
        Ok(r) => r,
        Err(_) => {
            // `child` is dropped at the end of this function: kill_on_drop ends it.
            bail!(
                "python script {name} timed out after {:.0}s and was killed",
                timeout.as_secs_f64()
            );
        }
    };
    let out = out.context("read script stdout")?;
    let err = err.unwrap_or_default();
    let status = status.context("wait for script")?;
    let stderr_text = String::from_utf8_lossy(&err);
    let stderr_tail = tail(&stderr_text, 6000);
    if let Err(e) = w {
        // A broken pipe only means the script exited early; its output says why.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            bail!("write args to script {name}: {e}\nstderr:\n{stderr_tail}");
        }
    }
    let stdout_text = String::from_utf8_lossy(&out);
    let line = stdout_text.lines().rev().find(|l| !l.trim().is_empty());
    let value: Option<Value> = line.and_then(|l| serde_json::from_str(l).ok());
    match (status.success(), value) {
        (true, Some(v)) => {
            tracing::debug!(script = name, secs = t0.elapsed().as_secs_f64(), "python script ok");
            Ok(v)
        }
        (ok, v) => bail!(
            "python script {name} failed ({status}{}) after {:.1}s\nresult: {}\nstdout:\n{}\nstderr:\n{stderr_tail}",
            if ok { ", no JSON result line" } else { "" },
            t0.elapsed().as_secs_f64(),
            v.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            tail(&stdout_text, 2000),
        ),
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
