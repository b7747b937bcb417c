//! Chaos cases: skew.
