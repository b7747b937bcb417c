//! The `command` source: spawn, wait with a timeout, parse stdout.

use std::process::Stdio;

use tokio::io::AsyncReadExt;

use super::CommandConfig;
use crate::sources::extract::parse_reading;
use crate::sources::{Sample, SourceError};

/// Largest output read, bytes.
const MAX_OUTPUT_BYTES: u64 = 64 * 1024;

/// Runs the command once per poll.
#[derive(Debug)]
pub struct CommandSource {
    cfg: CommandConfig,
}

impl CommandSource {
    /// A source running `cfg.command`.
    pub fn new(cfg: CommandConfig) -> Self {
        CommandSource { cfg }
    }

    fn failed(&self, why: impl Into<String>) -> SourceError {
        SourceError::Command {
            program: self.cfg.command.first().cloned().unwrap_or_default(),
            why: why.into(),
        }
    }

    /// Runs the command now and parses its output.
    pub async fn sample(&mut self) -> Result<Vec<Sample>, SourceError> {
        let (program, args) = self
            .cfg
            .command
            .split_first()
            .ok_or_else(|| self.failed("no program configured"))?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.failed(format!("cannot start: {e}")))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| self.failed("no stdout"))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| self.failed("no stderr"))?;
        let run = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut stdout = (&mut stdout).take(MAX_OUTPUT_BYTES);
            let mut stderr = (&mut stderr).take(MAX_OUTPUT_BYTES);
            let (r1, r2) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            r1.and(r2)
                .map_err(|e| self.failed(format!("cannot read output: {e}")))?;
            let status = child
                .wait()
                .await
                .map_err(|e| self.failed(format!("wait: {e}")))?;
            Ok::<_, SourceError>((status, out, err))
        };
        let (status, out, err) = match tokio::time::timeout(self.cfg.timeout, run).await {
            Ok(r) => r?,
            // The child is dropped on return, and kill_on_drop kills it.
            Err(_) => return Err(SourceError::Timeout(self.cfg.timeout)),
        };
        if !status.success() {
            let stderr: String = String::from_utf8_lossy(&err)
                .trim()
                .chars()
                .take(200)
                .collect();
            return Err(self.failed(format!("{status}: {stderr}")));
        }
        let text = String::from_utf8_lossy(&out);
        Ok(vec![parse_reading(
            &text,
            &self.cfg.pointers,
            self.cfg.max_calls,
        )?])
    }
}
