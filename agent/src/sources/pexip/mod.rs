//! `pexip`: poll the Pexip Management Node status API, one event per Teams Connector node.

pub mod config;
pub mod source;

pub use config::PexipConfig;
pub use source::PexipSource;
