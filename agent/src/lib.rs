//! tcpulse-agent: reads call counts and health of a Pexip Teams Connector instance (or, via
//! the Management Node, of a whole fleet) and publishes them as status events.
//!
//! # Layout
//!
//! | module | job | must not |
//! | --- | --- | --- |
//! | [`config`] | flags, `TCPULSE_*` variables and the TOML file → resolved [`Config`](config::Config): the file and flag structs, `[log]`, and [`Config::resolve`](config::Config::resolve) calling each section's resolve | hold a component's section; open connections or files other than secrets |
//! | [`sources`] | one folder per call-count source (`command`, `file`, `http`, `pexip`, `simulate`) → [`Sample`](sources::Sample)s | know about events, spool or transport |
//! | [`health`] | CPU, memory, disk, `service_up`, `cert_expiry_days` via sysinfo; `[health]` in [`health::config`] | report 0 for unknown |
//! | [`report`] | when an instance is due; `(instance, boot, seq)`; builds the status event; `[identity]` and `[report]` in [`report::config`] | do I/O |
//! | [`spool`] | crash-safe, bounded, ordered on-disk queue (redb); `[spool]` in [`spool::config`] | send anything |
//! | [`publish`] | the [`Publisher`](publish::Publisher) seam to Event Hubs; file and null publishers; `[publish]` in [`publish::config`], with the connection string only from env or a file | know the schema or the spool |
//! | [`run`] | the run loop: reporter and sender tasks, backoff, shutdown | parse config |
//! | [`check_cert`] | Pexip's certificate requirements, `check-cert` report, expiry | touch the network |
//! | [`internal_events`] | named telemetry events: log once, count once | decide anything |
//! | `merge` | the rule every section's resolve shares: a blank string is unset | know any section |
//! | [`cli`] | clap definitions (the `--help` text), logging, signals, the commands' glue | hold logic the library needs |
//! | [`event_log`] | the service's Windows event log entries (start, clean stop, failure with its reason); on Windows the source's registration and the writing | decide when to write |
//! | `windows_service` | (Windows only) install/start/stop, service entry point, file logging | run elsewhere |
//!
//! A component's `config` module imports nothing from [`config`], which imports them: the
//! sections form no cycle with the assembly.
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
