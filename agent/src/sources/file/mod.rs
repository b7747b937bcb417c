//! `file`: a number or a JSON document that the connector (or a script) writes.

pub mod config;
pub mod source;

pub use config::FileConfig;
pub use source::FileSource;
