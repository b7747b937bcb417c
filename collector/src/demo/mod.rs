//! `tcpulse-collector demo`: the whole pipeline in one process on loopback.
//!
//! The embedded Event Hubs-compatible hub listens with TLS on `127.0.0.1`; simulated
//! agents (the real `tcpulse-agent` run loop, spool and Event Hubs publisher) publish to it
//! over AMQPS; this crate's collector consumes every partition and writes line protocol to
//! a file (and to InfluxDB or VictoriaMetrics when asked); the fleet view follows that file
//! and shows per connector what the dashboards and alert rules would.
//!
//! | module | job | must not |
//! | --- | --- | --- |
//! | [`config`] | the flags (`--help` text), validated into a [`config::DemoPlan`] | start anything |
//! | [`run`] | start hub, agents, collector and view; the load shifter; ordered shutdown | compute what the view shows |
//! | [`view`] | parse the line-protocol file, keep the fleet state, evaluate alerts, render | read anything but what the collector stored |

pub mod config;
pub mod run;
pub mod view;
