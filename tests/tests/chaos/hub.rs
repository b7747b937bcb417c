//! Chaos cases: hub.
