//! Call-count sources: one per agent, chosen with `[source] type = "…"`.
//!
//! Each source has a folder: `config.rs` (the config struct, its defaults, `validate`) and
//! `source.rs` (the read). Registered below in alphabetical order. A failed read returns
//! a [`SourceError`]; the reporter turns it into an event with `state = unknown`.

pub mod command;
pub mod extract;
pub mod fetch;
pub mod file;
pub mod http;
pub mod pexip;
mod sample;
pub mod simulate;

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use sample::{Sample, SourceError};

/// The `[source]` table: which source, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// Run a program, parse its output.
    Command(command::CommandConfig),
    /// Read a number or JSON document from a file.
    File(file::FileConfig),
    /// GET a local JSON status URL.
    Http(http::HttpConfig),
    /// Poll the Pexip Management Node status API (one event per node).
    Pexip(pexip::PexipConfig),
    /// A believable simulated daily pattern.
    Simulate(simulate::SimulateConfig),
}

/// Every source type name, in registration order.
pub const SOURCE_TYPES: [&str; 5] = ["command", "file", "http", "pexip", "simulate"];

/// A source could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is invalid.
    #[error("source {source_type}: {message}")]
    Invalid {
        /// Source type.
        source_type: &'static str,
        /// What to fix.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("source {source_type}: cannot set up HTTP client")]
    Fetcher {
        /// Source type.
        source_type: &'static str,
        /// Why.
        #[source]
        source: fetch::FetcherError,
    },
}

impl SourceConfig {
    /// The `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::Command(_) => "command",
            SourceConfig::File(_) => "file",
            SourceConfig::Http(_) => "http",
            SourceConfig::Pexip(_) => "pexip",
            SourceConfig::Simulate(_) => "simulate",
        }
    }

    /// The default config of a source type that needs no required setting.
    pub fn default_of(type_name: &str) -> Option<SourceConfig> {
        match type_name {
            "simulate" => Some(SourceConfig::Simulate(simulate::SimulateConfig::default())),
            _ => None,
        }
    }

    /// Checks the settings without touching anything outside the process.
    pub fn validate(&self) -> Result<(), BuildError> {
        let r = match self {
            SourceConfig::Command(c) => c.validate(),
            SourceConfig::File(c) => c.validate(),
            SourceConfig::Http(c) => c.validate(),
            SourceConfig::Pexip(c) => c.validate().and_then(|()| c.password().map(drop)),
            SourceConfig::Simulate(c) => c.validate(),
        };
        r.map_err(|message| BuildError::Invalid {
            source_type: self.type_name(),
            message,
        })
    }

    /// Builds the source. `instance` is the agent's instance name (it seeds `simulate`).
    pub fn build(&self, instance: &str) -> Result<Source, BuildError> {
        self.validate()?;
        let fetcher_err = |source| BuildError::Fetcher {
            source_type: self.type_name(),
            source,
        };
        Ok(match self {
            SourceConfig::Command(c) => Source::Command(command::CommandSource::new(c.clone())),
            SourceConfig::File(c) => Source::File(file::FileSource::new(c.clone())),
            SourceConfig::Http(c) => {
                Source::Http(http::HttpSource::new(c.clone()).map_err(fetcher_err)?)
            }
            SourceConfig::Pexip(c) => {
                let password = c.password().map_err(|message| BuildError::Invalid {
                    source_type: "pexip",
                    message,
                })?;
                Source::Pexip(pexip::PexipSource::new(c, password.expose()).map_err(fetcher_err)?)
            }
            SourceConfig::Simulate(c) => {
                Source::Simulate(simulate::SimulateSource::new(c.clone(), instance))
            }
        })
    }

    /// The poll interval this source insists on, replacing `report.poll_interval`.
    pub fn poll_interval(&self) -> Option<Duration> {
        match self {
            SourceConfig::Pexip(c) => Some(c.poll_interval),
            _ => None,
        }
    }

    /// A secret of this source found both in a file and in its variable (the file is
    /// used), to log once logging is set up.
    pub fn secret_conflict(&self) -> Option<tcpulse_eventhub::cli_support::secret::Conflict> {
        match self {
            SourceConfig::Pexip(c) => c.password().ok()?.conflict().cloned(),
            _ => None,
        }
    }

    /// Whether events describe the host the agent runs on (so host health belongs in them).
    pub fn is_local(&self) -> bool {
        !matches!(self, SourceConfig::Pexip(_))
    }
}

/// A built source, ready to read.
#[derive(Debug)]
pub enum Source {
    /// See [`command`].
    Command(command::CommandSource),
    /// See [`file`].
    File(file::FileSource),
    /// See [`http`].
    Http(http::HttpSource),
    /// See [`pexip`].
    Pexip(pexip::PexipSource),
    /// See [`simulate`].
    Simulate(simulate::SimulateSource),
}

impl Source {
    /// Reads the source once.
    pub async fn sample(&mut self) -> Result<Vec<Sample>, SourceError> {
        match self {
            Source::Command(s) => s.sample().await,
            Source::File(s) => s.sample().await,
            Source::Http(s) => s.sample().await,
            Source::Pexip(s) => s.sample().await,
            Source::Simulate(s) => s.sample().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_table_is_tagged_by_type_and_strict() {
        let c: SourceConfig = toml::from_str("type = \"file\"\npath = \"/x\"").unwrap();
        assert_eq!(c.type_name(), "file");
        let err = toml::from_str::<SourceConfig>("type = \"carrier-pigeon\"").unwrap_err();
        assert!(err.message().contains("unknown variant"), "{err}");
        for t in SOURCE_TYPES {
            assert!(err.message().contains(t), "the error lists {t}: {err}");
        }
        let err = toml::from_str::<SourceConfig>("type = \"file\"\npath = \"/x\"\nbogus = 1")
            .unwrap_err();
        assert!(err.message().contains("unknown field"), "{err}");
        assert_eq!(
            SourceConfig::default_of("simulate").map(|c| c.type_name()),
            Some("simulate")
        );
    }
}
