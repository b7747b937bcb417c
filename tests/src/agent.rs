//! The `tcpulse-agent` binary as a test peer: one simulated Teams Connector instance reading
//! its call count from a file the test writes (`file` source, health collection off),
//! publishing to a [`Target`], restartable on the same spool.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::Result;

use crate::hub::{HubInfo, Mode, Policy};
use crate::process::{workspace_binary, ChildProcess};

/// The region every test agent reports.
pub const REGION: &str = "westeurope";

/// A well-formed key that no hub here knows.
pub const OTHER_KEY: &str = "q2VxTmV2ZXJVc2VkS2V5Rm9yVGNwdWxzZUNoYW9zMDA=";

/// Where the agent publishes.
#[derive(Debug)]
pub enum Target<'a> {
    /// The hub over TLS with this connection string.
    Hub(&'a HubInfo, String),
    /// The hub over TLS with no connection string: the Entra ID settings (`auth`,
    /// `namespace`, `event_hub`, a `[publish.identity]` table) come from
    /// [`AgentOptions::publish`].
    Entra(&'a HubInfo),
    /// Event Hubs on a loopback port where nothing listens (every send fails, transient).
    Unreachable,
    /// JSON lines in this file.
    File(PathBuf),
}

/// What the agent says about itself, and how fast.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--connector`.
    pub connector: String,
    /// `--deployment` (left out when `None`).
    pub deployment: Option<String>,
    /// `--region`.
    pub region: String,
    /// `--scaleset`.
    pub scaleset: String,
    /// `--instance`.
    pub instance: String,
    /// The call count in the file at start.
    pub calls: u32,
    /// `--interval` (humantime).
    pub interval: String,
    /// `--poll-interval` (humantime).
    pub poll_interval: String,
    /// `--spool-dir`.
    pub spool_dir: PathBuf,
    /// More lines for the `[publish]` table (after `retry_initial`/`retry_max`).
    pub publish: String,
}

impl AgentOptions {
    /// An instance of `connector` (scale set `<connector>-vmss`) in [`REGION`] reporting
    /// every second, its file polled every 200 ms, spooling in `spool_dir`.
    pub fn every_second(
        connector: &str,
        deployment: &str,
        instance: &str,
        calls: u32,
        spool_dir: PathBuf,
    ) -> AgentOptions {
        AgentOptions {
            connector: connector.into(),
            deployment: Some(deployment.into()),
            region: REGION.into(),
            scaleset: format!("{connector}-vmss"),
            instance: instance.into(),
            calls,
            interval: "1s".into(),
            poll_interval: "200ms".into(),
            spool_dir,
            publish: String::new(),
        }
    }
}

/// A running `tcpulse-agent run` with its files in one directory; each run's log is
/// `agent-<run>.log` there.
#[derive(Debug)]
pub struct AgentProcess {
    instance: String,
    dir: PathBuf,
    calls_file: PathBuf,
    args: Vec<String>,
    proc: ChildProcess,
    first_run: usize,
    run: usize,
}

impl AgentProcess {
    /// Writes the calls file, the config and the connection string into `dir` (created)
    /// and starts the agent as run 0.
    pub fn start(dir: &Path, opts: &AgentOptions, target: Target<'_>) -> Result<AgentProcess> {
        AgentProcess::start_as_run(dir, opts, target, 0)
    }

    /// An [`AgentOptions::every_second`] instance in `dir/<instance>` publishing to `info`'s
    /// hub over TLS with the Send policy.
    pub fn start_on_hub(
        dir: &Path,
        info: &HubInfo,
        connector: &str,
        deployment: &str,
        instance: &str,
        calls: u32,
    ) -> Result<AgentProcess> {
        let d = dir.join(instance);
        let opts =
            AgentOptions::every_second(connector, deployment, instance, calls, d.join("spool"));
        let cs = info.connection_string(Mode::Tls, Policy::Send)?.to_string();
        AgentProcess::start(&d, &opts, Target::Hub(info, cs))
    }

    /// As [`start`](Self::start), its log numbered `run` (a new process on a directory an
    /// earlier one used keeps that one's log).
    pub fn start_as_run(
        dir: &Path,
        opts: &AgentOptions,
        target: Target<'_>,
        run: usize,
    ) -> Result<AgentProcess> {
        std::fs::create_dir_all(dir)?;
        let calls_file = dir.join("calls");
        std::fs::write(&calls_file, format!("{}\n", opts.calls))?;
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\ntype = \"file\"\npath = {:?}\n[health]\nenabled = false\n\
                 [publish]\nretry_initial = \"200ms\"\nretry_max = \"1s\"\n{}",
                calls_file.display().to_string(),
                opts.publish
            ),
        )?;
        let mut args: Vec<String> = ["run", "--config"].map(String::from).to_vec();
        args.push(config.display().to_string());
        let mut flag = |name: &str, value: &str| {
            args.push(format!("--{name}"));
            args.push(value.to_string());
        };
        flag("connector", &opts.connector);
        if let Some(d) = &opts.deployment {
            flag("deployment", d);
        }
        flag("region", &opts.region);
        flag("scaleset", &opts.scaleset);
        flag("instance", &opts.instance);
        flag("interval", &opts.interval);
        flag("poll-interval", &opts.poll_interval);
        flag("spool-dir", &opts.spool_dir.display().to_string());
        let cs_file = dir.join("send.cs");
        // The secret goes in a file, never on a command line.
        match target {
            Target::Hub(info, cs) => {
                std::fs::write(&cs_file, cs)?;
                flag("connection-string-file", &cs_file.display().to_string());
                flag("eventhub-ca-file", &info.ca_pem.display().to_string());
            }
            Target::Entra(info) => {
                flag("eventhub-ca-file", &info.ca_pem.display().to_string());
            }
            Target::Unreachable => {
                let port = crate::services::free_port()?;
                std::fs::write(
                    &cs_file,
                    format!(
                        "Endpoint=sb://chaos.servicebus.windows.net/;SharedAccessKeyName=send;\
                         SharedAccessKey={OTHER_KEY};EntityPath=tcpulse"
                    ),
                )?;
                flag("connection-string-file", &cs_file.display().to_string());
                flag("eventhub-endpoint", &format!("127.0.0.1:{port}"));
            }
            Target::File(p) => flag("publish-file", &p.display().to_string()),
        }
        let proc = launch(&opts.instance, dir, &args, run)?;
        Ok(AgentProcess {
            instance: opts.instance.clone(),
            dir: dir.to_path_buf(),
            calls_file,
            args,
            proc,
            first_run: run,
            run,
        })
    }

    /// Starts the next run with the same arguments and spool (a live run is killed first).
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill()?;
        self.run += 1;
        self.proc = launch(&self.instance, &self.dir, &self.args, self.run)?;
        Ok(())
    }

    /// Writes a new call count (write-then-rename, so the agent never reads half a number).
    pub fn set_calls(&self, calls: u32) -> Result<()> {
        let tmp = self.calls_file.with_extension("tmp");
        std::fs::write(&tmp, format!("{calls}\n"))?;
        std::fs::rename(&tmp, &self.calls_file)?;
        Ok(())
    }

    /// The current run's process.
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.proc
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Every run's log, oldest first.
    pub fn logs(&self) -> String {
        (self.first_run..=self.run)
            .map(|r| std::fs::read_to_string(log_path(&self.dir, r)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Fails with the log if the current run exited on its own.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }

    /// SIGTERM, then the exit status (SIGKILL and an error after `grace`).
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.proc.stop(grace)
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) -> Result<()> {
        self.proc.kill()
    }
}

fn log_path(dir: &Path, run: usize) -> PathBuf {
    dir.join(format!("agent-{run}.log"))
}

fn launch(instance: &str, dir: &Path, args: &[String], run: usize) -> Result<ChildProcess> {
    let mut cmd = Command::new(workspace_binary("tcpulse-agent")?);
    cmd.args(args)
        .env_remove("TCPULSE_EVENTHUB_CONNECTION_STRING")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    ChildProcess::spawn(
        &format!("tcpulse-agent {instance}"),
        cmd,
        log_path(dir, run),
    )
}
