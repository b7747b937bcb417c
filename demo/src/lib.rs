//! `tcpulse-demo`: the whole pipeline in one process on loopback.
//!
//! The embedded Event Hubs-compatible hub (`tcpulse-hub`) listens with TLS on `127.0.0.1`;
//! simulated agents (the real `tcpulse-agent` run loop, spool and Event Hubs publisher)
//! publish to it over AMQPS; the collector (`tcpulse-collector`) consumes every partition and
//! writes line protocol to a file (and to InfluxDB or VictoriaMetrics when asked); the fleet
//! view follows that file and shows per connector what the dashboards and alert rules would.
//!
//! This crate only composes the three product crates, so none of them depends on another
//! for the demo. The `tcpulse-demo` binary (`src/main.rs`) parses [`config::DemoArgs`], sets
//! up logging and the shutdown token, and calls [`run::run`].
//!
//! # Layout
//!
//! | module | job | must not |
//! | --- | --- | --- |
//! | [`config`] | the flags (`--help` text), validated into a [`config::DemoPlan`] | start anything |
//! | [`run`] | start hub, agents, collector and view; the load shifter; ordered shutdown | compute what the view shows |
//! | [`view`] | parse the line-protocol file, keep the fleet state, evaluate alerts, render | read anything but what the collector stored |

pub mod config;
pub mod run;
pub mod view;
