//! The `[identity]` and `[report]` sections: who the events describe ([`IdentityArgs`] →
//! [`Identity`]) and when they are made ([`ReportArgs`] → [`ReportConfig`]), with their
//! defaults.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::merge::nonempty;

/// Identity of the instance the events describe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct IdentityArgs {
    /// Teams Connector FQDN ($PxTeamsConnFqdn), e.g. tc-eu.example.com; the Event Hubs
    /// partition key. Required.
    #[arg(long, env = "TCPULSE_CONNECTOR", value_name = "FQDN")]
    pub connector: Option<String>,
    /// Deployment label, e.g. blue or green (free text). Default: default.
    #[arg(long, env = "TCPULSE_DEPLOYMENT", value_name = "LABEL")]
    pub deployment: Option<String>,
    /// Azure region of the scale set, e.g. westeurope. Required.
    #[arg(long, env = "TCPULSE_REGION", value_name = "REGION")]
    pub region: Option<String>,
    /// VM scale set name (Pexip's scaleset_id). Required, except with the pexip source
    /// (which takes it from each node).
    #[arg(long, env = "TCPULSE_SCALESET", value_name = "NAME")]
    pub scaleset: Option<String>,
    /// VMSS instance name, e.g. tc-eu-vmss_3. Default: this host's name.
    #[arg(long, env = "TCPULSE_INSTANCE", value_name = "NAME")]
    pub instance: Option<String>,
}

/// When reports are made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ReportArgs {
    /// Time between two reports of an unchanged instance (humantime: 10s, 1m). Default: 10s.
    #[arg(long, env = "TCPULSE_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub interval: Option<Duration>,
    /// Time between two reads of the source (humantime); a changed call count or state is
    /// reported at the next read, so this bounds the reporting delay. Default: 500ms.
    #[arg(long, env = "TCPULSE_POLL_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub poll_interval: Option<Duration>,
}

/// The resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Teams Connector FQDN; the partition key.
    pub connector: String,
    /// Deployment label.
    pub deployment: String,
    /// Azure region.
    pub region: String,
    /// Scale set name (empty only with the pexip source, which fills it per node).
    pub scaleset: String,
    /// Instance name.
    pub instance: String,
}

/// The resolved reporting settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportConfig {
    /// Time between two reports of an unchanged instance.
    pub interval: Duration,
    /// Time between two reads of the source.
    pub poll_interval: Duration,
}

/// Default of `identity.deployment`.
pub fn default_deployment() -> String {
    "default".to_owned()
}
/// Default of `report.interval` (`tcpulse_schema::capacity::REPORT_INTERVAL_SECONDS`, which
/// the collector's staleness and lateness defaults are built on).
pub const fn default_interval() -> Duration {
    Duration::from_secs(tcpulse_schema::capacity::REPORT_INTERVAL_SECONDS)
}
/// Default of `report.poll_interval`.
pub const fn default_poll_interval() -> Duration {
    Duration::from_millis(500)
}

/// `[identity]` or `[report]` settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReportConfigError {
    /// A required setting is missing.
    #[error("{setting} is not set; {hint}")]
    Missing {
        /// The setting.
        setting: &'static str,
        /// How to set it.
        hint: &'static str,
    },
    /// `report.interval` or `report.poll_interval` is too short.
    #[error("report.interval must be at least 100ms and report.poll_interval at least 50ms")]
    IntervalTooShort,
}

/// `[identity]`: who this instance is; the instance name defaults to the host name, and
/// the scale set may stay empty only for a remote source (`source_is_local` false: the
/// pexip source names it per node). `a` (flags and variables) wins over `f` (the file).
pub(crate) fn resolve_identity(
    a: &IdentityArgs,
    f: IdentityArgs,
    source_is_local: bool,
) -> Result<Identity, ReportConfigError> {
    let connector = nonempty(a.connector.clone().or(f.connector)).ok_or(ReportConfigError::Missing {
        setting: "identity.connector",
        hint: "set it in the config file, with --connector or TCPULSE_CONNECTOR (the Teams Connector FQDN)",
    })?;
    let region = nonempty(a.region.clone().or(f.region)).ok_or(ReportConfigError::Missing {
        setting: "identity.region",
        hint: "set it in the config file, with --region or TCPULSE_REGION (e.g. westeurope)",
    })?;
    let scaleset = match nonempty(a.scaleset.clone().or(f.scaleset)) {
        Some(s) => s,
        None if !source_is_local => String::new(),
        None => {
            return Err(ReportConfigError::Missing {
                setting: "identity.scaleset",
                hint: "set it in the config file, with --scaleset or TCPULSE_SCALESET (the VM scale set name)",
            })
        }
    };
    let instance = match nonempty(a.instance.clone().or(f.instance)) {
        Some(i) => i,
        None => sysinfo::System::host_name()
            .and_then(|h| nonempty(Some(h)))
            .ok_or(ReportConfigError::Missing {
                setting: "identity.instance",
                hint: "the host name is unknown; set it with --instance or TCPULSE_INSTANCE",
            })?,
    };
    Ok(Identity {
        connector,
        deployment: nonempty(a.deployment.clone().or(f.deployment))
            .unwrap_or_else(default_deployment),
        region,
        scaleset,
        instance,
    })
}

/// `[report]`: the report interval and how often the source is read; a source that sets
/// its own read interval (`source_poll_interval`) wins over both. `a` (flags and variables)
/// wins over `f` (the file).
pub(crate) fn resolve_report(
    a: &ReportArgs,
    f: &ReportArgs,
    source_poll_interval: Option<Duration>,
) -> Result<ReportConfig, ReportConfigError> {
    let report = ReportConfig {
        interval: a.interval.or(f.interval).unwrap_or(default_interval()),
        poll_interval: source_poll_interval
            .or(a.poll_interval)
            .or(f.poll_interval)
            .unwrap_or(default_poll_interval()),
    };
    if report.interval < Duration::from_millis(100)
        || report.poll_interval < Duration::from_millis(50)
    {
        return Err(ReportConfigError::IntervalTooShort);
    }

    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> IdentityArgs {
        IdentityArgs {
            connector: Some("tc.example.com".into()),
            region: Some("westeurope".into()),
            scaleset: Some("vmss".into()),
            instance: Some("vmss_0".into()),
            deployment: None,
        }
    }

    #[test]
    fn identity_flags_win_and_the_scaleset_is_needed_only_for_a_local_source() {
        let flags = IdentityArgs {
            deployment: Some("green".into()),
            region: Some(" ".into()),
            ..IdentityArgs::default()
        };
        let e = resolve_identity(&flags, identity(), true)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("identity.region is not set; "), "{e}");
        let flags = IdentityArgs {
            deployment: Some("green".into()),
            ..IdentityArgs::default()
        };
        let i = resolve_identity(&flags, identity(), true).unwrap();
        assert_eq!(
            (i.deployment.as_str(), i.scaleset.as_str()),
            ("green", "vmss")
        );
        let no_scaleset = IdentityArgs {
            scaleset: None,
            ..identity()
        };
        let i = resolve_identity(&IdentityArgs::default(), no_scaleset.clone(), false).unwrap();
        assert_eq!(
            (i.deployment, i.scaleset),
            (default_deployment(), String::new())
        );
        let e = resolve_identity(&IdentityArgs::default(), no_scaleset, true)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("identity.scaleset is not set; "), "{e}");
    }

    #[test]
    fn report_intervals_default_and_the_source_sets_its_own_read_interval() {
        let none = ReportArgs::default();
        let r = resolve_report(&none, &none, None).unwrap();
        assert_eq!(
            (r.interval, r.poll_interval),
            (default_interval(), default_poll_interval())
        );
        let flags = ReportArgs {
            poll_interval: Some(Duration::from_millis(200)),
            ..ReportArgs::default()
        };
        let r = resolve_report(&flags, &none, Some(Duration::from_secs(2))).unwrap();
        assert_eq!(r.poll_interval, Duration::from_secs(2));
        let short = ReportArgs {
            interval: Some(Duration::from_millis(99)),
            ..ReportArgs::default()
        };
        let e = resolve_report(&none, &short, None).unwrap_err().to_string();
        assert_eq!(
            e,
            "report.interval must be at least 100ms and report.poll_interval at least 50ms"
        );
    }
}
