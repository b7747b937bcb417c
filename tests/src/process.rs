//! The workspace's binaries as child processes: the one place that finds them
//! ([`workspace_binary`]) and the one wrapper that runs them ([`ChildProcess`]: stdout and
//! stderr in a log file, SIGTERM with a bounded grace, SIGKILL on drop).
//!
//! Every wait here is bounded and blocking (a few milliseconds between polls); async tests
//! call them from a multi-threaded runtime.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// How often the waits below look at the process.
const POLL: Duration = Duration::from_millis(20);

/// Path of a workspace binary next to the running test executable (`scripts/test` builds
/// them).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let p = crate::python::profile_dir()?.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --all-features --bins` (scripts/test does; add --release for a bench)",
        p.display()
    );
    Ok(p)
}

/// A running child process, its stdout and stderr in one log file; SIGKILLed on drop.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts `cmd` with stdin closed and stdout+stderr written to `log` (created afresh).
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<ChildProcess> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(ChildProcess {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// The process id, until the test stopped it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True until the test stopped or killed it (an exit on its own does not count).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// Its exit status if it has exited on its own; `None` while it runs or once the test
    /// stopped it.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// Fails with the log if the process exited on its own (one the test stopped is fine).
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!("{} exited ({status}); log:\n{}", self.name, self.log());
        }
        Ok(())
    }

    /// SIGKILL (a crash), and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then its exit status; after `grace` a SIGKILL and an error with the log
    /// tail. Already stopped: an error.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("{} not running", self.name);
        };
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()?;
        let t = Instant::now();
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if t.elapsed() > grace {
                let _ = c.kill();
                let _ = c.wait();
                bail!(
                    "{} did not stop within {grace:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (at most `max`) for the process to exit by itself.
    pub fn wait_exit(&mut self, max: Duration) -> Result<ExitStatus> {
        let t = Instant::now();
        loop {
            let Some(c) = self.child.as_mut() else {
                bail!("{} not running", self.name);
            };
            if let Some(status) = c.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if t.elapsed() > max {
                bail!(
                    "{} still running after {max:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
