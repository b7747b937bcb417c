//! tcpulse-agent: reads call counts and health of a Pexip Teams Connector instance (or, via
//! the Management Node, of a whole fleet) and publishes them as status events.
//!
//! # Layout
//!
//! | module | job | must not |
//! | --- | --- | --- |
//! | [`config`] | flags, `TCPULSE_*` variables and the TOML file → resolved [`Config`](config::Config); secrets only from env or files | open connections or files other than secrets |
//! | [`sources`] | one folder per call-count source (`command`, `file`, `http`, `pexip`, `simulate`) → [`Sample`](sources::Sample)s | know about events, spool or transport |
//! | [`health`] | CPU, memory, disk, `service_up`, `cert_expiry_days` via sysinfo | report 0 for unknown |
//! | [`report`] | when an instance is due; `(instance, boot, seq)`; builds the status event | do I/O |
//! | [`spool`] | crash-safe, bounded, ordered on-disk queue (redb) | send anything |
//! | [`publish`] | the [`Publisher`](publish::Publisher) seam to Event Hubs; file and null publishers | know the schema or the spool |
//! | [`run`] | the run loop: reporter and sender tasks, backoff, shutdown | parse config |
//! | [`check_cert`] | Pexip's certificate requirements, `check-cert` report, expiry | touch the network |
//! | [`internal_events`] | named telemetry events: log once, count once | decide anything |
//! | [`cli`] | clap definitions (the `--help` text), logging, signals, the commands' glue | hold logic the library needs |
//! | [`event_log`] | the service's Windows event log entries (start, clean stop, failure with its reason); on Windows the source's registration and the writing | decide when to write |
//! | `windows_service` | (Windows only) install/start/stop, service entry point, file logging | run elsewhere |
//!
//! The agent never compiles the Event Hubs hub: only the transport seam in [`publish`]
//! touches the producer.
#![deny(missing_docs, missing_debug_implementations)]

pub mod check_cert;
pub mod cli;
pub mod config;
pub mod event_log;
pub mod health;
pub mod internal_events;
mod merge;
pub mod publish;
pub mod report;
pub mod run;
pub mod sources;
pub mod spool;
#[cfg(windows)]
pub mod windows_service;
