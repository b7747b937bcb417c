//! The tcpulse status event and everything derived from it, shared by the agent and the
//! collector.
//!
//! # Layout
//!
//! | module | job | must not |
//! | --- | --- | --- |
//! | [`event`] | the v1 event types ([`StatusEvent`], [`State`], [`Timestamp`]) with serde, named as in DESIGN.md / Pexip's `teamsnode` | parse or validate bytes |
//! | [`decode`] | bytes → validated event or [`DeadLetter`] with a countable [`DeadLetterReason::kind`]; schema versioning; [`encode`] | panic or stop on any input |
//! | [`dedup`] | the dedupe key [`EventKey`] `(instance, boot, seq)` and the bounded [`DedupWindow`] | grow with the number of events |
//! | [`capacity`] | the capacity model (16/15 calls, 4 vCPU), every alert threshold, [`ConnectorRollup`], quota advice | know about storage or transport |
#![deny(missing_docs, missing_debug_implementations)]

pub mod capacity;
pub mod decode;
pub mod dedup;
pub mod event;

pub use capacity::{vcpu_quota_advice, ConnectorRollup, VcpuQuotaAdvice};
pub use decode::{decode, encode, DeadLetter, DeadLetterReason, MAX_BODY_BYTES};
pub use dedup::{DedupWindow, EventKey, Seen};
pub use event::{
    AgentInfo, Calls, ConnectorKey, Health, State, StatusEvent, Timestamp, SCHEMA_V1,
};
