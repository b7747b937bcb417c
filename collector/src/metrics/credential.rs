//! The `credential_*` metrics: an Entra ID credential's numbers, read at scrape time from
//! its [`CredentialStats`]. Nothing is exported until the source sets one (a connection
//! string has none).

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tcpulse_eventhub::identity::CredentialStats;

/// Registered once; filled by [`super::Metrics::set_credential`].
#[derive(Debug, Clone, Default)]
pub struct CredentialSlot(Arc<OnceLock<Arc<CredentialStats>>>);

impl CredentialSlot {
    /// Sets the credential (the first one wins; a run has one).
    pub fn set(&self, stats: Arc<CredentialStats>) {
        let _ = self.0.set(stats);
    }
}

impl Collector for CredentialSlot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = self.0.get() else {
            return Ok(());
        };
        if let Some(secs) = stats.expires_in_seconds() {
            let g = ConstGauge::new(secs);
            g.encode(encoder.encode_descriptor(
                "tcpulse_collector_credential_expires_in_seconds",
                "Seconds until the newest Entra ID token expires (negative once it has)",
                None,
                g.metric_type(),
            )?)?;
        }
        // The encoder appends `_total` to a counter's name.
        for (name, help, value) in [
            (
                "tcpulse_collector_credential_tokens",
                "Entra ID tokens obtained from the token endpoint",
                stats.fetched(),
            ),
            (
                "tcpulse_collector_credential_refresh_failures",
                "Failed Entra ID token requests",
                stats.failures(),
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}
