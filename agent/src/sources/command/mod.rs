//! `command`: run a program and parse what it prints.

pub mod config;
pub mod source;

pub use config::CommandConfig;
pub use source::CommandSource;
