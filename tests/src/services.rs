//! Real external services as child processes on loopback.
