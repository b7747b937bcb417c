//! What a source read yields ([`Sample`]) and how it fails ([`SourceError`]).

use std::time::Duration;

use tcpulse_schema::{Calls, State, Timestamp};

/// One instance's state as a source read it. Identity fields left `None` come from the
/// agent's `[identity]` config; the `pexip` source fills them per Teams Connector node.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Instance name (Pexip node `name`), when the source knows it.
    pub instance: Option<String>,
    /// Scale set (Pexip `scaleset_id`), when the source knows it.
    pub scaleset: Option<String>,
    /// Connector FQDN, when the source maps the node to one.
    pub connector: Option<String>,
    /// Instance state.
    pub state: State,
    /// Call counters.
    pub calls: Option<Calls>,
    /// Instance start-up time, when known.
    pub start_time: Option<Timestamp>,
}

impl Sample {
    /// A sample of this agent's own instance with these counters and state `active`.
    pub fn local(calls: Calls) -> Sample {
        Sample {
            instance: None,
            scaleset: None,
            connector: None,
            state: State::Active,
            calls: Some(calls),
            start_time: None,
        }
    }
}

/// A failed source read. The report still goes out, with `state = unknown`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading a file failed.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP request failed before a response (connect, TLS, timeout, …).
    #[error("GET {url} failed")]
    Http {
        /// The URL (never with credentials).
        url: String,
        /// Why.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The server answered with a non-success status.
    #[error("GET {url} answered HTTP {status}{hint}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// What to do about it (for 401/403).
        hint: &'static str,
    },
    /// The command could not be started or failed.
    #[error("command {program:?} failed: {why}")]
    Command {
        /// The program.
        program: String,
        /// Exit status, stderr excerpt or start error.
        why: String,
    },
    /// The read took longer than allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The value could not be understood.
    #[error("cannot parse the reading: {0}")]
    Parse(String),
}

impl SourceError {
    /// Stable error kind: the `error_type` label of the source-error counter.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Io { .. } => "io",
            SourceError::Http { .. } => "http",
            SourceError::Status { .. } => "status",
            SourceError::Command { .. } => "command",
            SourceError::Timeout(_) => "timeout",
            SourceError::Parse(_) => "parse",
        }
    }
}
