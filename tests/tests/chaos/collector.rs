//! Chaos cases: collector.
