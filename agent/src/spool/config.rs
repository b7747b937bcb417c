//! The `[spool]` section: its flags and file table ([`SpoolArgs`]), the resolved
//! [`SpoolConfig`] and its defaults.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::MIN_MAX_BYTES;

/// The on-disk spool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SpoolArgs {
    /// Directory of the spool database (spool.redb). Default: /var/lib/tcpulse-agent, or
    /// C:\ProgramData\tcpulse-agent\spool on Windows.
    #[arg(
        id = "spool_dir",
        long = "spool-dir",
        env = "TCPULSE_SPOOL_DIR",
        value_name = "DIR"
    )]
    pub dir: Option<PathBuf>,
    /// Largest size of the spooled events, bytes (at least 131072); when full, the oldest
    /// are dropped and counted in agent.dropped. Default: 67108864 (64 MiB, about 100 000
    /// reports: 11 days at one report per 10 s).
    #[arg(
        id = "spool_max_bytes",
        long = "spool-max-bytes",
        env = "TCPULSE_SPOOL_MAX_BYTES",
        value_name = "BYTES"
    )]
    pub max_bytes: Option<u64>,
}

/// The resolved spool settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Directory of the database.
    pub dir: PathBuf,
    /// Bound, bytes.
    pub max_bytes: u64,
}

/// Default of `spool.max_bytes`.
pub const fn default_spool_max_bytes() -> u64 {
    64 << 20
}

/// Default of `spool.dir`.
pub fn default_spool_dir() -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(r"C:\ProgramData\tcpulse-agent\spool")
    } else {
        PathBuf::from("/var/lib/tcpulse-agent")
    }
}

/// Spool settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolConfigError {
    /// `spool.max_bytes` is below [`MIN_MAX_BYTES`].
    #[error("spool.max_bytes = {max_bytes} is below the minimum of {MIN_MAX_BYTES} bytes")]
    MaxBytesTooSmall {
        /// The configured bound.
        max_bytes: u64,
    },
}

/// `[spool]`: where reports wait, and how much disk they may take. `a` (flags and
/// variables) wins over `f` (the file).
pub(crate) fn resolve_spool(a: &SpoolArgs, f: SpoolArgs) -> Result<SpoolConfig, SpoolConfigError> {
    let spool = SpoolConfig {
        dir: a.dir.clone().or(f.dir).unwrap_or_else(default_spool_dir),
        max_bytes: a
            .max_bytes
            .or(f.max_bytes)
            .unwrap_or(default_spool_max_bytes()),
    };
    if spool.max_bytes < MIN_MAX_BYTES {
        return Err(SpoolConfigError::MaxBytesTooSmall {
            max_bytes: spool.max_bytes,
        });
    }
    Ok(spool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_file_and_the_bound_has_a_minimum() {
        let file = SpoolArgs {
            dir: Some("/file".into()),
            max_bytes: Some(1 << 20),
        };
        let flags = SpoolArgs {
            dir: Some("/flag".into()),
            max_bytes: None,
        };
        let c = resolve_spool(&flags, file).unwrap();
        assert_eq!((c.dir, c.max_bytes), (PathBuf::from("/flag"), 1 << 20));
        let c = resolve_spool(&SpoolArgs::default(), SpoolArgs::default()).unwrap();
        assert_eq!(
            (c.dir, c.max_bytes),
            (default_spool_dir(), default_spool_max_bytes())
        );
        let small = SpoolArgs {
            max_bytes: Some(MIN_MAX_BYTES - 1),
            ..SpoolArgs::default()
        };
        let e = resolve_spool(&small, SpoolArgs::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spool.max_bytes = 131071 is below the minimum of 131072 bytes"
        );
    }
}
