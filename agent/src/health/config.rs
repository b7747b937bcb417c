//! The `[health]` section: its flags and file table ([`HealthArgs`]), the resolved
//! [`HealthConfig`] and its defaults.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::merge::nonempty;

/// Host health measured with each report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct HealthArgs {
    /// Measure host health (CPU, memory, disk, service, certificate). Default: true
    /// (always off with the pexip source).
    #[arg(skip)]
    pub enabled: Option<bool>,
    /// Process whose presence sets service_up, e.g. TeamsConnector.exe (case and .exe
    /// ignored). Default: none (service_up not reported).
    #[arg(long, env = "TCPULSE_SERVICE_PROCESS", value_name = "NAME")]
    pub service_process: Option<String>,
    /// A path on the disk whose free space is reported. Default: C:\ on Windows, / elsewhere.
    #[arg(long, env = "TCPULSE_DISK_PATH", value_name = "PATH")]
    pub disk_path: Option<PathBuf>,
    /// The connector certificate, PFX (password in TCPULSE_CERT_PASSWORD) or PEM, for
    /// cert_expiry_days. Default: none (not reported).
    #[arg(long, env = "TCPULSE_CERT_FILE", value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
}

/// What to measure (resolved from `[health]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Measure host health at all (false for the `pexip` source, which runs elsewhere).
    pub enabled: bool,
    /// Process whose presence sets `service_up` (e.g. `TeamsConnector.exe`).
    pub service_process: Option<String>,
    /// A path on the disk whose free space is reported.
    pub disk_path: PathBuf,
    /// The connector certificate (PFX with password in `TCPULSE_CERT_PASSWORD`, or PEM).
    pub cert_file: Option<PathBuf>,
}

/// The default disk to watch: the system drive on Windows, `/` elsewhere.
pub fn default_disk_path() -> PathBuf {
    if cfg!(windows) {
        PathBuf::from("C:\\")
    } else {
        PathBuf::from("/")
    }
}

/// `[health]`: host health, measured only for a local source (`source_is_local`; the
/// `pexip` source runs elsewhere). `a` (flags and variables) wins over `f` (the file).
pub(crate) fn resolve_health(a: &HealthArgs, f: HealthArgs, source_is_local: bool) -> HealthConfig {
    HealthConfig {
        enabled: source_is_local && a.enabled.or(f.enabled).unwrap_or(true),
        service_process: nonempty(a.service_process.clone().or(f.service_process)),
        disk_path: a
            .disk_path
            .clone()
            .or(f.disk_path)
            .unwrap_or_else(default_disk_path),
        cert_file: a.cert_file.clone().or(f.cert_file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_file_and_a_remote_source_has_no_health() {
        let file = HealthArgs {
            service_process: Some("file.exe".into()),
            disk_path: Some("/file".into()),
            ..HealthArgs::default()
        };
        let flags = HealthArgs {
            service_process: Some("  ".into()),
            cert_file: Some("/flag.pfx".into()),
            ..HealthArgs::default()
        };
        let c = resolve_health(&flags, file.clone(), true);
        assert_eq!(
            c,
            HealthConfig {
                enabled: true,
                service_process: None,
                disk_path: "/file".into(),
                cert_file: Some("/flag.pfx".into()),
            },
            "a blank flag counts as unset"
        );
        assert!(!resolve_health(&HealthArgs::default(), file, false).enabled);
        let off = HealthArgs {
            enabled: Some(false),
            ..HealthArgs::default()
        };
        let c = resolve_health(&HealthArgs::default(), off, true);
        assert_eq!((c.enabled, c.disk_path), (false, default_disk_path()));
    }
}
