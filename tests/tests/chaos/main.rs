//! The chaos suite (issue 12): each case drives the real binaries and real services on
//! loopback into one fault a VM really sees, asserts what a user relies on (events sent =
//! distinct points stored, no duplicates, rollups equal to what the events say, the process
//! alive or exited with a clear code, the log line a user would search for) and records one
//! row with [`tcpulse_tests::chaos::record`]. `scripts/test` prints the rows as one table.
//!
//! One module per area; each case is named `chaos_<area>_<fault>`.

mod agent;
mod collector;
mod config;
mod hub;
mod restart;
mod sinks;
mod skew;
mod tls;
