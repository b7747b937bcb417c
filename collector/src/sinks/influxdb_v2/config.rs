//! Settings of the InfluxDB v2 write-API sink.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sink::InfluxDbV2Sink;
use crate::sinks::http::{client, endpoint, HttpBuildError, HttpWriter};
use tcpulse_eventhub::secret::{load_logged, SecretError};

/// What the InfluxDB v2 token is called in messages.
pub const V2_TOKEN: &str = "InfluxDB v2 token";

/// Writes to `POST /api/v2/write` (InfluxDB 2.x, 3.x, Cloud, InfluxDB 1.8+ with
/// `bucket = "db/rp"`, VictoriaMetrics). The token comes from the environment or a file,
/// never from the config file or a flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InfluxDbV2SinkConfig {
    /// Base URL of the store, e.g. `https://influx.example.com:8086` or
    /// `http://127.0.0.1:8428` (VictoriaMetrics). Required.
    pub url: String,
    /// Organization name (ignored by 3.x, Cloud Serverless and VictoriaMetrics). Required.
    pub org: String,
    /// Bucket (3.x: database; 1.8: `db/rp`). Required.
    pub bucket: String,
    /// Environment variable holding the API token. Default: `TCPULSE_INFLUXDB_TOKEN`.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// File holding the token (first line); a configured file wins over
    /// `token_env` (one WARN when both are set). Default: none.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Compress request bodies with gzip. Default: true.
    #[serde(default = "default_gzip")]
    pub gzip: bool,
    /// Timeout of one write request. Default: 30s.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
}

fn default_token_env() -> String {
    "TCPULSE_INFLUXDB_TOKEN".into()
}

const fn default_gzip() -> bool {
    true
}

const fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Why the v2 sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InfluxDbV2BuildError {
    /// Reading the token failed.
    #[error("influxdb_v2 sink: {0}")]
    Secret(#[from] SecretError),
    /// URL or client problem.
    #[error("influxdb_v2 sink: {0}")]
    Http(#[from] HttpBuildError),
}

impl InfluxDbV2SinkConfig {
    /// A config with the defaults for everything but the three required fields.
    pub fn new(url: impl Into<String>, org: impl Into<String>, bucket: impl Into<String>) -> Self {
        InfluxDbV2SinkConfig {
            url: url.into(),
            org: org.into(),
            bucket: bucket.into(),
            token_env: default_token_env(),
            token_file: None,
            gzip: default_gzip(),
            request_timeout: default_request_timeout(),
        }
    }

    /// Resolves the token and prepares the endpoint (no connection is made). Without a
    /// token the sink writes unauthenticated ([`InfluxDbV2Sink::has_token`]; the collector
    /// reports it as `SinkWithoutToken`).
    pub fn build(&self) -> Result<InfluxDbV2Sink, InfluxDbV2BuildError> {
        let token = load_logged(V2_TOKEN, &self.token_env, self.token_file.as_deref())?;
        let url = endpoint(
            &self.url,
            "api/v2/write",
            &[
                ("org", &self.org),
                ("bucket", &self.bucket),
                ("precision", "ns"),
            ],
        )?;
        let writer = HttpWriter::new(
            client(self.request_timeout)?,
            url,
            token.map(|t| format!("Token {t}")),
            self.gzip,
        )?;
        Ok(InfluxDbV2Sink::new(writer))
    }
}
