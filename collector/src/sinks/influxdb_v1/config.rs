//! Settings of the InfluxDB v1 `/write` sink.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::sink::InfluxDbV1Sink;
use crate::sinks::http::{client, endpoint, HttpBuildError, HttpWriter};
use tcpulse_eventhub::secret::{load_logged, SecretError};

/// What the InfluxDB v1 password is called in messages.
pub const V1_PASSWORD: &str = "InfluxDB v1 password";

/// Writes to `POST /write?db=&rp=` (InfluxDB 1.x, the v1 compatibility endpoint of 2.x and
/// 3.x, VictoriaMetrics). Credentials go in a Basic `Authorization` header, never in the
/// URL; the password comes from the environment or a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InfluxDbV1SinkConfig {
    /// Base URL of the store, e.g. `http://127.0.0.1:8086`. Required.
    pub url: String,
    /// Database. Required.
    pub database: String,
    /// Retention policy; empty for the database's default. Default: empty.
    #[serde(default)]
    pub retention_policy: String,
    /// User name; empty for no authentication. Default: empty.
    #[serde(default)]
    pub username: String,
    /// Environment variable holding the password. Default: `TCPULSE_INFLUXDB_PASSWORD`.
    #[serde(default = "default_password_env")]
    pub password_env: String,
    /// File holding the password (first line); a configured file wins over
    /// `password_env` (one WARN when both are set). Default: none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Compress request bodies with gzip. Default: true.
    #[serde(default = "default_gzip")]
    pub gzip: bool,
    /// Timeout of one write request. Default: 30s.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
}

fn default_password_env() -> String {
    "TCPULSE_INFLUXDB_PASSWORD".into()
}

const fn default_gzip() -> bool {
    true
}

const fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Why the v1 sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InfluxDbV1BuildError {
    /// Reading the password failed.
    #[error("influxdb_v1 sink: {0}")]
    Secret(#[from] SecretError),
    /// URL or client problem.
    #[error("influxdb_v1 sink: {0}")]
    Http(#[from] HttpBuildError),
}

impl InfluxDbV1SinkConfig {
    /// A config with the defaults for everything but URL and database.
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        InfluxDbV1SinkConfig {
            url: url.into(),
            database: database.into(),
            retention_policy: String::new(),
            username: String::new(),
            password_env: default_password_env(),
            password_file: None,
            gzip: default_gzip(),
            request_timeout: default_request_timeout(),
        }
    }

    /// Resolves the password and prepares the endpoint (no connection is made).
    pub fn build(&self) -> Result<InfluxDbV1Sink, InfluxDbV1BuildError> {
        let url = endpoint(
            &self.url,
            "write",
            &[
                ("db", &self.database),
                ("rp", &self.retention_policy),
                ("precision", "ns"),
            ],
        )?;
        let authorization = if self.username.is_empty() {
            None
        } else {
            let password = load_logged(
                V1_PASSWORD,
                &self.password_env,
                self.password_file.as_deref(),
            )?
            .unwrap_or_default();
            let pair = format!("{}:{password}", self.username);
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
        };
        let writer = HttpWriter::new(client(self.request_timeout)?, url, authorization, self.gzip)?;
        Ok(InfluxDbV1Sink::new(writer))
    }
}
