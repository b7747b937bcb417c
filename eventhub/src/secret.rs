//! Reading a secret (connection string, token, password) the same way in every binary.
//!
//! A secret comes from a file or an environment variable, never from a flag value or the
//! config file itself. **The rule: a configured secret file (by flag, environment variable
//! or config file) wins over the secret's value in an environment variable.** When both are
//! set, [`Loaded::conflict`] says so and [`Conflict::log`] writes one WARN naming both
//! sources and the one used (never the value); the caller logs it once, when its logging is
//! set up.
//!
//! - the file: its first line, trimmed; an empty first line is an error naming the path,
//!   and so is an unreadable file (with the OS error). A secret of several lines (the
//!   hub's policies) is read whole with [`FileFormat::Whole`] instead;
//! - the variable: its value, trimmed; empty counts as unset.

use std::fmt;
use std::path::{Path, PathBuf};

/// The rule, for `--help` (clap's `after_help`) and the docs.
pub const HELP: &str = "Secrets (connection strings, tokens, passwords) come only from a file \
    or an environment variable, never from a flag or the config file. A configured secret \
    file (flag, variable or config file) wins over the secret's variable; when both are set, \
    one WARN names both and the one used.";

/// Why a secret could not be read. Messages name the file, never the content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file's first line is empty.
    #[error("secret file {} is empty; put the secret on its first line", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Where a secret came from (for messages; never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// Both a file and the variable held the secret; the file was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// What the secret is, e.g. `Event Hubs connection string`.
    pub what: String,
    /// The file used.
    pub file: PathBuf,
    /// The variable ignored.
    pub env: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: both file {} and environment variable {} are set; using the file (a configured secret file wins); unset {} or drop the file setting",
            self.what,
            self.file.display(),
            self.env,
            self.env
        )
    }
}

impl Conflict {
    /// Logs the conflict as one WARN.
    pub fn log(&self) {
        tracing::warn!(
            secret = %self.what,
            file = %self.file.display(),
            env = %self.env,
            used = "file",
            "{self}"
        );
    }
}

/// How a secret file holds the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// The first line, trimmed (a key, a connection string, a password).
    FirstLine,
    /// The whole text, trimmed (a list of secrets, one per line).
    Whole,
}

/// A secret that was found.
#[derive(Clone, PartialEq, Eq)]
pub struct Loaded {
    value: String,
    origin: Origin,
    conflict: Option<Conflict>,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("value", &"***")
            .field("origin", &self.origin)
            .field("conflict", &self.conflict)
            .finish()
    }
}

impl Loaded {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The secret, consuming the wrapper.
    pub fn into_value(self) -> String {
        self.value
    }

    /// Where it came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Set when the variable was set too and ignored.
    pub fn conflict(&self) -> Option<&Conflict> {
        self.conflict.as_ref()
    }

    /// Logs the [`Conflict`], if any, as its one WARN.
    pub fn log_conflict(&self) {
        if let Some(conflict) = &self.conflict {
            conflict.log();
        }
    }
}

/// [`load`] for a run: logs a file/variable conflict as one WARN and returns the value.
pub fn load_logged(
    what: &str,
    env: &str,
    file: Option<&Path>,
) -> Result<Option<String>, SecretError> {
    let loaded = load(what, Some(env), file)?;
    if let Some(loaded) = &loaded {
        loaded.log_conflict();
    }
    Ok(loaded.map(Loaded::into_value))
}

/// Loads the secret `what` from `file` or the environment variable `env` (see the module
/// docs for the rule); `None` when neither holds it.
pub fn load(
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Loaded>, SecretError> {
    load_with(what, env, file, |name| std::env::var(name).ok())
}

/// [`load`] with the environment read through `var` (for tests).
pub fn load_with(
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Loaded>, SecretError> {
    load_as(what, env, file, FileFormat::FirstLine, var)
}

/// [`load_with`], reading the file as `format` says.
pub fn load_as(
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
    format: FileFormat,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Loaded>, SecretError> {
    let from_env = env.and_then(|name| {
        var(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(|v| (name, v))
    });
    let Some(path) = file else {
        return Ok(from_env.map(|(name, value)| Loaded {
            value,
            origin: Origin::Env(name.to_owned()),
            conflict: None,
        }));
    };
    let value = read_file(path, format)?;
    Ok(Some(Loaded {
        value,
        origin: Origin::File(path.to_owned()),
        conflict: from_env.map(|(name, _)| Conflict {
            what: what.to_owned(),
            file: path.to_owned(),
            env: name.to_owned(),
        }),
    }))
}

/// The first line (or the whole text) of `path`, trimmed; an error when it is empty or
/// unreadable.
fn read_file(path: &Path, format: FileFormat) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    let first = match format {
        FileFormat::FirstLine => text.lines().next().unwrap_or("").trim(),
        FileFormat::Whole => text.trim(),
    };
    if first.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(first.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const VAR: &str = "TCPULSE_TEST_SECRET";

    fn env_with(value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |name| (name == VAR).then(|| value.to_owned())
    }

    fn file_with(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("secret");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn file_wins_over_the_variable_and_the_conflict_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(&dir, "  from-file \nsecond line\n");
        let got = load_with("token", Some(VAR), Some(&path), env_with("from-env"))
            .unwrap()
            .unwrap();
        assert_eq!(got.expose(), "from-file");
        assert_eq!(got.origin(), &Origin::File(path.clone()));
        let conflict = got.conflict().unwrap().to_string();
        assert!(
            conflict.contains(VAR) && conflict.contains(&path.display().to_string()),
            "{conflict}"
        );
        assert!(conflict.contains("using the file"), "{conflict}");
        assert!(!conflict.contains("from-env") && !conflict.contains("from-file"));
        assert!(!format!("{got:?}").contains("from-file"), "Debug hides it");
    }

    #[test]
    fn variable_alone_is_trimmed_and_empty_means_unset() {
        let got = load_with("token", Some(VAR), None, env_with(" v \n"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.expose(), got.origin(), got.conflict()),
            ("v", &Origin::Env(VAR.to_owned()), None)
        );
        assert!(load_with("token", Some(VAR), None, env_with("  "))
            .unwrap()
            .is_none());
        assert!(load_with("token", None, None, env_with("v"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn file_alone_gives_its_first_line_and_a_blank_variable_is_no_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(&dir, "s3cret\r\n");
        let got = load_with("token", Some(VAR), Some(&path), env_with(""))
            .unwrap()
            .unwrap();
        assert_eq!((got.expose(), got.conflict()), ("s3cret", None));
    }

    #[test]
    fn whole_format_keeps_every_line_and_still_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(&dir, "\na:Send:k1\nb:Listen:k2\n\n");
        let got = load_as(
            "policies",
            Some(VAR),
            Some(&path),
            FileFormat::Whole,
            env_with("e"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.expose(), "a:Send:k1\nb:Listen:k2");
        assert!(got.conflict().is_some());
        let blank = file_with(&dir, " \n\n");
        let err = load_as("p", None, Some(&blank), FileFormat::Whole, env_with("")).unwrap_err();
        assert!(matches!(err, SecretError::Empty { .. }), "{err}");
    }

    #[test]
    fn empty_or_unreadable_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(&dir, " \nsecond\n");
        let err = load_with("token", Some(VAR), Some(&path), env_with("v")).unwrap_err();
        assert!(matches!(err, SecretError::Empty { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        let missing = dir.path().join("missing");
        let err = load_with("token", None, Some(&missing), env_with("v")).unwrap_err();
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let SecretError::Read { source, .. } = err else {
            panic!("read error expected")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    }
}
