//! Chaos cases: sinks.
