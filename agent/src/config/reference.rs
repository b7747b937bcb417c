//! The annotated reference config (`tcpulse-agent config`), generated from the file's
//! structs: their JSON Schema (doc comments, serde attributes) and [`FileConfig::defaults`],
//! rendered by [`tcpulse_eventhub::cli_support::reference`].
//!
//! The file's fields are all `Option`s (flags and variables override them, then
//! [`Config::resolve`](super::Config::resolve) applies the `default_*` functions), so the
//! defaults shown are built here from those same functions. Settings without a default
//! (identity, the source, secret files) are written commented out.

use std::path::PathBuf;

use super::{FileConfig, LogArgs};
use crate::health::config::{default_disk_path, HealthArgs};
use crate::publish::config::{
    default_fatal_retry_initial, default_fatal_retry_max, default_max_batch_bytes,
    default_max_batch_events, default_retry_initial, default_retry_max, default_shutdown_flush,
    PublishArgs,
};
use crate::report::config::{
    default_deployment, default_interval, default_poll_interval, IdentityArgs, ReportArgs,
};
use crate::spool::config::{default_spool_dir, default_spool_max_bytes, SpoolArgs};
use tcpulse_eventhub::cli_support::logging::LogFormat;

/// The first lines of [`reference`].
const HEADER: &str = "tcpulse-agent reference configuration: every setting, printed by \
    `tcpulse-agent config` from the config structs' docs and defaults.\n\n\
    Lines without `#` are the defaults: this file as it is configures nothing else. \
    `# key = …` lines and `# [table]` sections have no default (the identity, the source, \
    a secret file): uncomment and fill them in. Flags and TCPULSE_* variables override \
    the file. Secrets never go in this file: set the `*_file` settings or the environment \
    variables they name.";

impl FileConfig {
    /// The file a user who sets nothing gets: every setting that has a default set to it
    /// (the `default_*` functions `resolve` applies), the rest `None`. `log.level` stays
    /// unset, since a level in the file would override `RUST_LOG`; `identity.instance`
    /// (the host name) and `health.disk_path` depend on the host.
    pub fn defaults() -> FileConfig {
        FileConfig {
            identity: IdentityArgs {
                deployment: Some(default_deployment()),
                ..IdentityArgs::default()
            },
            report: ReportArgs {
                interval: Some(default_interval()),
                poll_interval: Some(default_poll_interval()),
            },
            source: None,
            health: HealthArgs {
                enabled: Some(true),
                disk_path: Some(default_disk_path()),
                ..HealthArgs::default()
            },
            spool: SpoolArgs {
                dir: Some(default_spool_dir()),
                max_bytes: Some(default_spool_max_bytes()),
            },
            publish: PublishArgs {
                max_batch_events: Some(default_max_batch_events()),
                max_batch_bytes: Some(default_max_batch_bytes()),
                retry_initial: Some(default_retry_initial()),
                retry_max: Some(default_retry_max()),
                shutdown_flush: Some(default_shutdown_flush()),
                fatal_retry_initial: Some(default_fatal_retry_initial()),
                fatal_retry_max: Some(default_fatal_retry_max()),
                ..PublishArgs::default()
            },
            log: LogArgs {
                format: Some(LogFormat::default()),
                file: None::<PathBuf>,
                level: None,
            },
        }
    }
}

/// The annotated reference config: every setting with its doc comment; defaults active,
/// settings without a default commented out. It parses to [`FileConfig::defaults`].
pub fn reference() -> String {
    let schema = schemars::schema_for!(FileConfig);
    let defaults = serde_json::to_value(FileConfig::defaults()).unwrap_or_default();
    tcpulse_eventhub::cli_support::reference::render(&schema, &defaults, HEADER)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse_file, Config, RunArgs};

    #[test]
    fn reference_parses_to_the_defaults() {
        let text = reference();
        let parsed = parse_file(Path::new("reference.toml"), &text).unwrap();
        assert_eq!(parsed, FileConfig::defaults(), "{text}");
        assert!(text.contains("\n# connector = "), "{text}");
        assert!(
            text.contains("\n# [source]\n# type = \"pexip\"\n"),
            "{text}"
        );
        assert!(text.contains("\n# password_file = "), "{text}");
        assert!(
            text.contains("\n# level = "),
            "log.level stays commented: {text}"
        );
    }

    /// The defaults are the ones `resolve` applies to an empty file: resolving either
    /// gives the same `Config`.
    #[test]
    fn defaults_resolve_like_an_empty_file() {
        let args = RunArgs {
            source: Some("simulate".into()),
            identity: IdentityArgs {
                connector: Some("tc.example.com".into()),
                region: Some("westeurope".into()),
                scaleset: Some("vmss".into()),
                instance: Some("vmss_0".into()),
                ..IdentityArgs::default()
            },
            publish: PublishArgs {
                file: Some("/tmp/events.jsonl".into()),
                ..PublishArgs::default()
            },
            ..RunArgs::default()
        };
        let from_defaults = Config::resolve(&args, FileConfig::defaults()).unwrap();
        let from_empty = Config::resolve(&args, FileConfig::default()).unwrap();
        assert_eq!(format!("{from_defaults:?}"), format!("{from_empty:?}"));
    }

    /// #13: a field without a doc comment, or a table the generator drops, fails here.
    #[test]
    fn reference_documents_every_field_of_every_struct() {
        let schema = schemars::schema_for!(FileConfig);
        let problems =
            tcpulse_eventhub::cli_support::reference::undocumented(&schema, &reference());
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
