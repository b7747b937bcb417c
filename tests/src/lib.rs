//! Helpers for tcpulse's end-to-end and interop tests.
//!
//! # Layout
//!
//! - [`process`]: the one binary locator ([`process::workspace_binary`]) and the one
//!   child-process wrapper (log file, SIGTERM with a bounded grace, SIGKILL on drop).
//! - [`wait`]: the one bounded wait for a condition, async or blocking.
//! - [`hub`]: tcpulse-hub in-process (library) or as the `tcpulse-hub` binary in a child
//!   process, and the connection objects the Python scripts take.
//! - [`python`]: the official `azure-eventhub` Python SDK in a venv this crate creates,
//!   and a runner for the scripts in `tests/python/`.
//! - [`stores`]: time-series stores for the collector tests: a VictoriaMetrics that can be
//!   stopped and restarted on the same port and data, and readers for VictoriaMetrics
//!   exports and InfluxDB 1.x queries.
//! - [`dashboards`]: the shipped `dashboards/` as the tests read them, and the engines the
//!   dashboard tests compute expectations with (a fleet simulator, InfluxQL parts, Grafana
//!   math).
//! - [`alerting`]: the shipped Prometheus rules with a short `for`, and Alertmanager's
//!   active alerts.
//! - [`chaos`]: the chaos suite's summary rows and a tmpfs for disk-full cases.
//! - [`client`]: our Event Hubs client against a test hub: its config per policy,
//!   publishing to chosen partitions, reading everything back from earliest.
//! - [`agent`]: the `tcpulse-agent` binary as one simulated instance (a call count in a
//!   file), publishing to the hub, a dead endpoint or a file; restartable on its spool.
//! - [`collector`]: the `tcpulse-collector` binary reading a hub over TLS, with a config
//!   the test writes and a known `/metrics` port; restartable.
//! - [`entra`]: Entra ID on loopback: a test token issuer (RSA key, JWKS, RS256 tokens) and a
//!   real HTTP token server with the managed-identity (App Service, IMDS) and
//!   client-credentials endpoints, for the `jwt` tests of hub, client, agent and collector.
//! - [`proxy`]: Debian's `tinyproxy` as a real HTTP CONNECT proxy on a loopback port, with or
//!   without Basic authentication, whose log shows what was tunnelled.
//! - [`faults`]: a TCP forwarder in front of a real service that can drop and refuse
//!   connections (a store restarting), counting exactly how many it refused.
//! - [`services`]: real external services (VictoriaMetrics, InfluxDB, vmalert, Alertmanager,
//!   promtool) started as child processes on ephemeral loopback ports.
//! - [`azurite`]: Azurite (the Azure Storage emulator, npm, on Node.js 20) as the Blob service
//!   of the checkpoint-store tests; stoppable and restartable on its port and data.
//!
//! A missing service binary fails the test with the command that installs it; nothing is
//! skipped silently.

pub mod agent;
pub mod alerting;
pub mod azurite;
pub mod chaos;
pub mod client;
pub mod collector;
pub mod dashboards;
pub mod entra;
pub mod faults;
pub mod hub;
pub mod process;
pub mod proxy;
pub mod python;
pub mod services;
pub mod stores;
pub mod wait;
