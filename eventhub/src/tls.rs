//! The process's one TLS crypto provider.
//!
//! Every TLS connection (the AMQP client, the agent's HTTP sources, the hub) uses aws-lc-rs:
//! fe2o3-amqp's rustls requires it, so ring is not linked at all (`deny.toml` bans it).

use std::sync::{Arc, OnceLock};

use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};

/// The aws-lc-rs provider, installed as the process default on first use so libraries that
/// look for the default (ureq, rustls' own builders) find the same one.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            // Err means another provider is the default already; use ours explicitly then.
            let _ = aws_lc_rs::default_provider().install_default();
            CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(aws_lc_rs::default_provider()))
        })
        .clone()
}
