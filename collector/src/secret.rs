//! Secrets of a run: the one loader the sinks and the source use, so none of them needs
//! the config module (which imports theirs). The rule is the workspace's
//! ([`tcpulse_eventhub::cli_support::secret`]): a configured file wins over the
//! environment variable, and when both are set one WARN names both sources, never the
//! value.

use std::path::Path;

pub use tcpulse_eventhub::cli_support::secret::SecretError;
use tcpulse_eventhub::cli_support::secret::{self, Loaded};

/// Loads a secret for a run (see the module docs for the rule) and logs a file/variable
/// conflict as one WARN.
pub fn load_secret(
    what: &str,
    env: &str,
    file: Option<&Path>,
) -> Result<Option<String>, SecretError> {
    let loaded = secret::load(what, Some(env), file)?;
    if let Some(conflict) = loaded.as_ref().and_then(Loaded::conflict) {
        conflict.log();
    }
    Ok(loaded.map(Loaded::into_value))
}
