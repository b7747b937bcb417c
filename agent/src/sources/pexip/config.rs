//! Configuration of the `pexip` source.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tcpulse_eventhub::cli_support::secret::{self, Loaded};

/// Environment variable holding the Management Node API password.
pub const ENV_PEXIP_PASSWORD: &str = "TCPULSE_PEXIP_PASSWORD";

/// `[source] type = "pexip"`: for sites where nothing may be installed on the connector
/// VMs. Polls the Management Node's `GET /api/admin/status/v1/teamsnode/` (basic auth) and
/// reports one event per Teams Connector node: `name` becomes `instance`, `scaleset_id`
/// becomes `scaleset`, and `call_count`, `max_calls`, `media_load`, `state`, `start_time`
/// keep their names. Host health is not reported (the agent does not run on the nodes).
///
/// ```toml
/// [source]
/// type = "pexip"
/// url = "https://mgr.example.com"
/// username = "tcpulse"
/// # password: TCPULSE_PEXIP_PASSWORD, or
/// password_file = "/etc/tcpulse/pexip-password"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PexipConfig {
    /// Management Node base URL, e.g. `https://mgr.example.com`. Must be `https://`
    /// (`http://` is accepted only for a loopback address). Required.
    pub url: String,
    /// API user name (an administrator or read-only account). Default: `admin`.
    #[serde(default = "default_username")]
    pub username: String,
    /// File whose first line is the API password; a configured file wins over the
    /// environment variable `TCPULSE_PEXIP_PASSWORD` (one WARN when both are set). One of
    /// the two is required. Default: none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the Management Node (for example its own
    /// self-signed certificate). Default: the public web PKI roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Longest a request may take (humantime). Default: `10s`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Time between two polls of the Management Node (humantime), at least `1s`; it
    /// replaces `report.poll_interval` for this source. Default: `10s`.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Connector FQDN per `scaleset_id`, for a Management Node serving several Teams
    /// Connectors; nodes of other scale sets report under `identity.connector`.
    /// Default: empty.
    #[serde(default)]
    pub connectors: BTreeMap<String, String>,
}

/// Default of [`PexipConfig::username`].
pub fn default_username() -> String {
    "admin".to_owned()
}
/// Default of [`PexipConfig::timeout`].
pub const fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
/// Default of [`PexipConfig::poll_interval`].
pub const fn default_poll_interval() -> Duration {
    Duration::from_secs(10)
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.trim_start_matches("http://");
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl PexipConfig {
    /// Checks the values; the message says which setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        let https = self.url.starts_with("https://");
        let local_http = self.url.starts_with("http://") && is_loopback_url(&self.url);
        if !(https || local_http) {
            return Err(format!(
                "source.url = {:?} must start with https:// (the password travels with every request)",
                self.url
            ));
        }
        if self.poll_interval < Duration::from_secs(1) {
            return Err("source.poll_interval must be at least 1s".to_owned());
        }
        if self.timeout.is_zero() {
            return Err("source.timeout must be more than 0s".to_owned());
        }
        Ok(())
    }

    /// The API password: the first line of `password_file`, else `TCPULSE_PEXIP_PASSWORD`
    /// (the rule of [`secret`]).
    pub fn password(&self) -> Result<Loaded, String> {
        secret::load(
            "Pexip Management Node password",
            Some(ENV_PEXIP_PASSWORD),
            self.password_file.as_deref(),
        )
        .map_err(|e| format!("source.password_file: {e}"))?
        .ok_or_else(|| {
            format!("no Management Node password: set {ENV_PEXIP_PASSWORD} or source.password_file")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_example_parses_and_https_is_required() {
        let c: PexipConfig = toml::from_str("url = \"https://mgr.example.com\"").unwrap();
        assert_eq!(
            (c.username.as_str(), c.poll_interval.as_secs()),
            ("admin", 10)
        );
        c.validate().unwrap();
        let plain = PexipConfig {
            url: "http://mgr.example.com".into(),
            ..c.clone()
        };
        assert!(plain.validate().unwrap_err().contains("https://"));
        let local = PexipConfig {
            url: "http://127.0.0.1:8080".into(),
            ..c.clone()
        };
        local.validate().unwrap();
        let tricky = PexipConfig {
            url: "http://127.0.0.1.evil.com/".into(),
            ..c
        };
        assert!(tricky.validate().is_err());
    }

    #[test]
    fn password_from_file_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\r\nignored\n").unwrap();
        let c = PexipConfig {
            password_file: Some(f),
            ..toml::from_str("url = \"https://m\"").unwrap()
        };
        // The file wins whether or not the variable is set.
        assert_eq!(c.password().unwrap().expose(), "s3cret");
    }
}
