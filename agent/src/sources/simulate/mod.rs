//! `simulate`: a believable daily call pattern, for demos and load tests.

pub mod config;
pub mod source;

pub use config::SimulateConfig;
pub use source::SimulateSource;
