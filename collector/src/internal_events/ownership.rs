//! Events of partition ownership (the Azure Blob store's load balancing): a partition lost
//! to another owner or to expiry, and the ownership store failing.

use std::borrow::Cow;

use tcpulse_eventhub::cli_support::telemetry::{InternalEvent, Line, LogRate};
use tcpulse_eventhub::log_event;
use tracing::Level;

use super::count_component_error;
use crate::metrics::Metrics;

/// This collector stopped reading a partition it owned: another owner took it over
/// (`stolen`: its claim changed the blob's ETag), or its renewals failed until the
/// ownership expired (`expired`: the store was unreachable), or its claim lost a race
/// (`race`: another claimant won the same blob first; nothing was being read).
#[derive(Debug)]
pub struct PartitionOwnershipLost<'a> {
    /// Partition id.
    pub partition: &'a str,
    /// `stolen`, `expired` or `race`.
    pub reason: &'static str,
}

impl InternalEvent for PartitionOwnershipLost<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "ownership"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some(self.reason.into())
    }
    fn level(&self) -> Level {
        match self.reason {
            "race" => Level::DEBUG,
            _ => Level::WARN,
        }
    }
    fn rate(&self) -> LogRate {
        // Each loss is one takeover the operator may want to see.
        LogRate::Every
    }
    fn count(&self, metrics: &Metrics) {
        metrics
            .ownership_lost_claims
            .get_or_create(&vec![("reason".into(), self.reason.into())])
            .inc();
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            partition = self.partition,
            reason = self.reason,
            "partition ownership lost; its receiver stops"
        );
    }
}

/// Listing or claiming ownership in the Blob container failed; owned partitions keep
/// running until their ownership expires, and the cycle is retried.
#[derive(Debug)]
pub struct OwnershipStoreFailed<'a> {
    /// `list`, `claim` or `release`.
    pub operation: &'static str,
    /// The error.
    pub error: &'a str,
}

impl InternalEvent for OwnershipStoreFailed<'_> {
    type Telemetry = Metrics;
    fn stage(&self) -> &'static str {
        "ownership"
    }
    fn error_type(&self) -> Option<Cow<'_, str>> {
        Some(format!("{}_failed", self.operation).into())
    }
    fn level(&self) -> Level {
        Level::ERROR
    }
    fn rate(&self) -> LogRate {
        // Re-armed when a cycle succeeds again.
        LogRate::Limited(format!("ownership/{}", self.operation))
    }
    fn count(&self, metrics: &Metrics) {
        count_component_error(self, metrics);
    }
    fn log(&self, _: &Metrics, line: Line) {
        log_event!(
            self,
            line,
            operation = self.operation,
            error = self.error,
            "partition ownership store failed; owned partitions keep running until their ownership expires"
        );
    }
}
