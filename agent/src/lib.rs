//! tcpulse-agent: reads call counts and health of a Pexip Teams Connector instance (or, via
//! the Management Node, of a whole fleet) and publishes them as status events.
//!
//! # Layout
//!
//! | module | job | must not |
//! | --- | --- | --- |
//! | [`internal_events`] | named telemetry events: log once, count once | decide anything |
//! | [`publish`] | the [`Publisher`](publish::Publisher) seam to Event Hubs; file and null publishers | know the schema or the spool |
//! | [`spool`] | crash-safe, bounded on-disk queue (redb) | send anything |
#![deny(missing_docs, missing_debug_implementations)]

pub mod check_cert;
pub mod health;
pub mod internal_events;
pub mod publish;
pub mod sources;
pub mod spool;
