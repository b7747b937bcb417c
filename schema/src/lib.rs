//! The tcpulse status event and everything derived from it, shared by the agent (which
//! encodes events) and the collector (which decodes, deduplicates, aggregates and writes
//! line protocol).
//!
//! # Layout
//!
//! | module | job | must not |
//! | --- | --- | --- |
//! | [`event`] | the v1 event types ([`StatusEvent`], [`State`], [`Timestamp`]) with serde, named as in DESIGN.md / Pexip's `teamsnode` | parse or validate bytes |
//! | [`decode`](mod@decode) | bytes → validated event or [`DeadLetter`] with a countable [`DeadLetterReason::kind`]; schema versioning; [`encode`] | panic or stop on any input |
//! | [`dedup`] | the dedupe key [`EventKey`] `(instance, boot, seq)` and the bounded [`DedupWindow`] | grow with the number of events |
//! | [`capacity`] | the capacity model (16/15 calls, 4 vCPU), every alert threshold, [`ConnectorRollup`], quota advice | know about storage or transport |
//! | [`line`](mod@line) | InfluxDB line protocol: [`Point`] with escaping, the `tc_instance` / `tc_connector` / `tc_pipeline` mappings | tag call ids, IPs or free text |
//!
//! The crate depends on neither tokio nor AMQP: it is pure data and arithmetic, so the
//! agent, the collector, the tests and any tool can share it.
//!
//! ```
//! use tcpulse_schema::{decode, instance_point};
//!
//! let body = br#"{"schema":"tcpulse.status.v1","connector":"tc-eu.example.com",
//!   "deployment":"blue","region":"westeurope","scaleset":"tc-eu-vmss",
//!   "instance":"tc-eu-vmss_3","boot":"6f1c2a4e-8b1d-4c3e-9f70-2d5b8a9e0c11","seq":1,
//!   "time":"2026-11-26T10:00:00.123Z","state":"active",
//!   "calls":{"call_count":12,"max_calls":16}}"#;
//! let event = decode(body)?;
//! assert_eq!(
//!     instance_point(&event, true).to_line(),
//!     "tc_instance,connector=tc-eu.example.com,deployment=blue,instance=tc-eu-vmss_3,\
//!      region=westeurope,scaleset=tc-eu-vmss call_count=12i,max_calls=16i,\
//!      planned_calls=15i,state_code=1i,up=1i,utilization=0.8 1795687200123000000"
//! );
//! # Ok::<(), tcpulse_schema::DeadLetter>(())
//! ```
#![deny(missing_docs, missing_debug_implementations)]

pub mod capacity;
pub mod decode;
pub mod dedup;
pub mod event;
pub mod line;

pub use capacity::{vcpu_quota_advice, ConnectorRollup, VcpuQuotaAdvice};
pub use decode::{
    check_sample_time, decode, encode, DeadLetter, DeadLetterReason, TimeBounds, MAX_BODY_BYTES,
};
pub use dedup::{DedupWindow, EventKey, Seen};
pub use event::{AgentInfo, Calls, ConnectorKey, Health, State, StatusEvent, Timestamp, SCHEMA_V1};
pub use line::{
    connector_point, instance_down_point, instance_point, instance_point_received, pipeline_point,
    write_instance_line, FieldValue, PipelineStats, Point, PointSink,
};
