//! `http`: GET a local JSON status URL.

pub mod config;
pub mod source;

pub use config::HttpConfig;
pub use source::HttpSource;
