//! The merge rule every config section shares: a flag or `TCPULSE_*` variable wins over the
//! file's value, and a string that is blank after trimming counts as unset.

/// `v` trimmed, or `None` when it is missing or blank.
pub(crate) fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}
