//! Azurite, Microsoft's Azure Storage emulator, as the Blob service of the checkpoint-store
//! tests: the Blob service alone (`azurite-blob`), on Node.js 20, both from npm and pinned in
//! `tests/azurite/package-lock.json` (`scripts/test-deps` installs them there with `npm ci`).
//!
//! [`Azurite::start`] runs it bound to `127.0.0.1` on an ephemeral port (`--blobPort 0`: the
//! port is read from its "successfully listens on" line, so no port race), with its data in
//! a temporary `--location`, **always `--disableTelemetry`** (without it Azurite sends usage
//! data to Application Insights), `--skipApiVersionCheck` (clients newer than the emulator
//! still work) and `--loose` (headers it does not implement are ignored). It waits until
//! the port accepts connections. [`Azurite::stop`] (SIGTERM: Azurite saves its metadata
//! database on the way out) and [`Azurite::start_again`] (same port, same data) make a Blob
//! outage; the process is SIGKILLed on drop.
//!
//! The account is Azurite's well-known development account ([`ACCOUNT`], [`ACCOUNT_KEY`]:
//! published by Microsoft in the Azurite README, a test key for the emulator and nothing
//! else), reached path-style: `http://127.0.0.1:<port>/devstoreaccount1/<container>`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tcpulse_collector::checkpoint::blob::{BlobAuth, BlobClient, SharedKey};
use tcpulse_collector::checkpoint::BlobCheckpointStore;
use tempfile::TempDir;

/// Azurite's development account name.
pub const ACCOUNT: &str = "devstoreaccount1";
/// The development account's key (public: Azurite's README; valid only for the emulator).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How long Azurite may take to listen (it does in about a second here).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `scripts/test-deps` installs Azurite and Node.js 20.
pub fn install_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("azurite")
}

/// `(node, azurite-blob entry point)`, or an error with the command that installs them.
fn programs() -> Result<(PathBuf, PathBuf)> {
    let dir = install_dir();
    let node = dir.join("node_modules/.bin/node");
    let main = dir.join("node_modules/azurite/dist/src/blob/main.js");
    ensure!(
        node.is_file() && main.is_file(),
        "Azurite is not installed in {}: run `scripts/test-deps` (or `cd tests/azurite && npm ci`)",
        dir.display()
    );
    Ok((node, main))
}

/// A running Azurite Blob service; SIGKILLed on drop.
#[derive(Debug)]
pub struct Azurite {
    node: PathBuf,
    main: PathBuf,
    dir: TempDir,
    /// With [`Azurite::start_oauth`]: its self-signed certificate (PEM), served over HTTPS
    /// with `--oauth basic`.
    tls_cert: Option<PathBuf>,
    port: u16,
    child: Option<Child>,
    runs: usize,
}

impl Azurite {
    /// Starts it on a free loopback port with an empty data directory.
    pub fn start() -> Result<Self> {
        let (node, main) = programs()?;
        let mut a = Azurite {
            node,
            main,
            dir: TempDir::with_prefix("tcpulse-azurite-")?,
            tls_cert: None,
            port: 0,
            child: None,
            runs: 0,
        };
        a.launch()?;
        Ok(a)
    }

    /// Starts it over HTTPS (a self-signed certificate for 127.0.0.1, [`Self::ca_pem`]) with
    /// `--oauth basic`: Bearer tokens are accepted when their issuer is an Entra one
    /// (`https://sts.windows.net/…`), their audience Storage's and they are within their
    /// lifetime; Azurite does not check signatures (its docs: "basic" OAuth).
    pub fn start_oauth() -> Result<Self> {
        let (node, main) = programs()?;
        let dir = TempDir::with_prefix("tcpulse-azurite-")?;
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        let cert = params.self_signed(&key)?;
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem())?;
        let mut a = Azurite {
            node,
            main,
            dir,
            tls_cert: Some(cert_path),
            port: 0,
            child: None,
            runs: 0,
        };
        a.launch()?;
        Ok(a)
    }

    /// The HTTPS certificate to trust, with [`Self::start_oauth`].
    pub fn ca_pem(&self) -> Option<&Path> {
        self.tls_cert.as_deref()
    }

    /// `http(s)://127.0.0.1:<port>/devstoreaccount1`: the account's Blob endpoint.
    pub fn blob_endpoint(&self) -> String {
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// The URL of `container`.
    pub fn container_url(&self, container: &str) -> String {
        format!("{}/{container}", self.blob_endpoint())
    }

    /// A storage connection string for the development account (it holds the key: write it
    /// to a file or the environment, never a command line).
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint={};",
            self.blob_endpoint()
        )
    }

    /// The collector's Blob store on `container` of the development account, the container
    /// created if needed.
    pub async fn checkpoint_store(&self, container: &str) -> Result<BlobCheckpointStore> {
        let url = reqwest_url(&self.container_url(container))?;
        let key = SharedKey::new(ACCOUNT, ACCOUNT_KEY).map_err(anyhow::Error::msg)?;
        let client = BlobClient::new(url, BlobAuth::SharedKey(key), Duration::from_secs(10))
            .map_err(anyhow::Error::msg)?;
        client
            .create_container()
            .await
            .with_context(|| format!("create container {container}"))?;
        Ok(BlobCheckpointStore::new(client))
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops it with SIGTERM (it saves its metadata database) and waits for the exit.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("azurite did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts it again on the same port and data after [`Azurite::stop`].
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.launch()
    }

    /// Every run's log (Azurite's access log and messages), oldest first.
    pub fn log(&self) -> String {
        (0..self.runs)
            .map(|r| std::fs::read_to_string(self.log_path(r)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("azurite-{run}.log"))
    }

    /// Starts a run: on `self.port` when set (a restart), else on an ephemeral one read
    /// from the log; waits until the port accepts connections.
    fn launch(&mut self) -> Result<()> {
        let log = self.log_path(self.runs);
        self.runs += 1;
        let out =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let mut cmd = Command::new(&self.node);
        cmd.arg(&self.main)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(&data)
            .args(["--disableTelemetry", "--skipApiVersionCheck", "--loose"]);
        if let Some(cert) = &self.tls_cert {
            cmd.arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(self.dir.path().join("key.pem"))
                .args(["--oauth", "basic"]);
        }
        let child = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("spawn {} {}", self.node.display(), self.main.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "azurite exited on start ({status}); log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(port) = listening_port(&text) {
                self.port = port;
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(());
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("azurite not listening after {READY_TIMEOUT:?}; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn reqwest_url(s: &str) -> Result<tcpulse_collector::checkpoint::blob::client::Url> {
    tcpulse_collector::checkpoint::blob::client::Url::parse(s).with_context(|| format!("URL {s}"))
}

/// The port of Azurite's "successfully listens on http(s)://127.0.0.1:<port>" line.
fn listening_port(log: &str) -> Option<u16> {
    log.lines()
        .find_map(|l| {
            l.split("successfully listens on http://127.0.0.1:")
                .nth(1)
                .or_else(|| l.split("successfully listens on https://127.0.0.1:").nth(1))
        })
        .and_then(|rest| rest.trim().trim_end_matches('/').parse().ok())
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_read_from_the_listening_line() {
        let log = "Azurite Blob service is starting on 127.0.0.1:0\nAzurite Blob service successfully listens on http://127.0.0.1:41465\n";
        assert_eq!(listening_port(log), Some(41465));
        assert_eq!(listening_port("starting"), None);
    }
}
