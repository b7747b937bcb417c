//! The Windows event log entries of the service: what it writes when it starts, when it
//! stops cleanly and when it stops on a failure (the reason text, as printed on stderr), and
//! on Windows the registration of the event source and the writing itself (the `winsafe`
//! crate's safe wrappers of `RegisterEventSourceW`, `ReportEventW` and the registry calls).
//!
//! The source `tcpulse-agent` lives in the Application log, registered under
//! [`REGISTRY_KEY`] by `tcpulse-agent install` and by the MSI, removed by `uninstall`. Its
//! `EventMessageFile` is the .NET Framework's `EventLogMessages.dll`, whose message for every
//! event ID is the inserted text alone (`%1`): the same registration PowerShell's
//! `New-EventLog` makes, so Event Viewer shows the text as is.
//!
//! | event ID | type | when |
//! | --- | --- | --- |
//! | 1 | Information | the service started |
//! | 2 | Information | the service stopped cleanly (exit 0) |
//! | 3 | Error | the service stopped on a runtime failure (exit 1) |
//! | 4 | Error | the service stopped on a configuration error (exit 78) |

use std::path::Path;

use tcpulse_eventhub::cli_support::exit::Failure;

/// The event source's name (the service's name).
pub const SOURCE: &str = "tcpulse-agent";
/// Where the source is registered, under `HKEY_LOCAL_MACHINE`.
pub const REGISTRY_KEY: &str =
    r"SYSTEM\CurrentControlSet\Services\EventLog\Application\tcpulse-agent";
/// The message file: every event ID's message is `%1`, the text we insert.
pub const MESSAGE_FILE: &str =
    r"%SystemRoot%\Microsoft.NET\Framework64\v4.0.30319\EventLogMessages.dll";

/// One entry the service writes.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// The service started with this config file.
    Started {
        /// The `--config` file, if any.
        config: Option<&'a Path>,
    },
    /// The service stopped cleanly.
    Stopped,
    /// The service stopped on a failure; `reason` is the error as printed on stderr.
    Failed {
        /// Configuration error (exit 78) or runtime failure (exit 1).
        failure: Failure,
        /// The whole cause chain.
        reason: &'a str,
    },
}

impl Entry<'_> {
    /// The event ID (see the table in the module docs).
    pub fn id(&self) -> u32 {
        match self {
            Entry::Started { .. } => 1,
            Entry::Stopped => 2,
            Entry::Failed {
                failure: Failure::Runtime,
                ..
            } => 3,
            Entry::Failed {
                failure: Failure::Config,
                ..
            } => 4,
        }
    }

    /// Error or Information.
    pub fn is_error(&self) -> bool {
        matches!(self, Entry::Failed { .. })
    }

    /// The text Event Viewer shows.
    pub fn text(&self) -> String {
        match self {
            Entry::Started { config: Some(c) } => {
                format!("{SOURCE} service started (config {})", c.display())
            }
            Entry::Started { config: None } => format!("{SOURCE} service started"),
            Entry::Stopped => format!("{SOURCE} service stopped"),
            Entry::Failed { failure, reason } => {
                let what = match failure {
                    Failure::Config => "configuration error",
                    Failure::Runtime => "runtime failure",
                };
                format!(
                    "{SOURCE} service stopped on a {what} (exit {}): {reason}",
                    failure.code()
                )
            }
        }
    }
}

#[cfg(windows)]
pub use sys::{deregister, register, write};

#[cfg(windows)]
mod sys {
    use winsafe::{co, RegistryValue, HEVENTLOG, HKEY};

    use super::{Entry, MESSAGE_FILE, REGISTRY_KEY, SOURCE};

    /// Registers the event source (needs Administrator rights).
    pub fn register() -> Result<(), co::ERROR> {
        let (key, _) = HKEY::LOCAL_MACHINE.RegCreateKeyEx(
            REGISTRY_KEY,
            None,
            co::REG_OPTION::NON_VOLATILE,
            co::KEY::SET_VALUE,
            None,
        )?;
        key.RegSetValueEx(
            Some("EventMessageFile"),
            RegistryValue::ExpandSz(MESSAGE_FILE.to_owned()),
        )?;
        // Error, warning and information entries.
        key.RegSetValueEx(Some("TypesSupported"), RegistryValue::Dword(7))
    }

    /// Removes the event source's registration; a missing one is not an error.
    pub fn deregister() -> Result<(), co::ERROR> {
        match HKEY::LOCAL_MACHINE.RegDeleteTree(Some(REGISTRY_KEY)) {
            Err(co::ERROR::FILE_NOT_FOUND) => Ok(()),
            other => other,
        }
    }

    /// Writes `entry`. The event log is a second channel beside the log file: a failure
    /// to write is logged there and otherwise ignored.
    pub fn write(entry: &Entry<'_>) {
        let kind = if entry.is_error() {
            co::EVENTLOG::ERROR_TYPE
        } else {
            co::EVENTLOG::INFORMATION_TYPE
        };
        let text = entry.text();
        let written = HEVENTLOG::RegisterEventSource(None, SOURCE)
            .and_then(|log| log.ReportEvent(kind, 0, entry.id(), None, &[&text], &[]));
        if let Err(e) = written {
            tracing::warn!("cannot write to the Windows event log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_error_is_an_error_entry_with_its_reason_and_exit_code() {
        let entry = Entry::Failed {
            failure: Failure::Config,
            reason: "config agent.toml: unknown field `colour`",
        };
        assert!(entry.is_error());
        assert_eq!(entry.id(), 4);
        assert_eq!(
            entry.text(),
            "tcpulse-agent service stopped on a configuration error (exit 78): \
             config agent.toml: unknown field `colour`"
        );
    }

    #[test]
    fn start_and_clean_stop_are_information_entries() {
        let started = Entry::Started {
            config: Some(Path::new("agent.toml")),
        };
        assert!(!started.is_error() && !Entry::Stopped.is_error());
        assert_eq!(
            started.text(),
            "tcpulse-agent service started (config agent.toml)"
        );
        let runtime = Entry::Failed {
            failure: Failure::Runtime,
            reason: "spool locked",
        };
        let ids = [started.id(), Entry::Stopped.id(), runtime.id()];
        assert_eq!(ids, [1, 2, 3]);
    }
}
