//! Chaos cases: agent.
