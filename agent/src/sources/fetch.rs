//! HTTP GET for the `http` and `pexip` sources: a small blocking client (ureq, rustls) run
//! on tokio's blocking pool, with a body limit and errors mapped onto [`SourceError`].

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};

use super::SourceError;

/// Largest response body read, bytes.
pub const MAX_BODY_BYTES: u64 = 4 << 20;

/// A configured HTTP client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
    timeout: Duration,
    authorization: Option<String>,
}

/// Why a client could not be built (read at start-up, not per request).
#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    /// The CA file could not be read.
    #[error("cannot read CA file {path}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate.
    #[error("CA file {0} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate(String),
}

impl Fetcher {
    /// A client with this timeout per request, trusting `ca_file` (PEM) if given, else the
    /// operating system's trust store (platform verifier). Redirects are not followed (credentials must not travel).
    pub fn new(timeout: Duration, ca_file: Option<&Path>) -> Result<Fetcher, FetcherError> {
        let builder = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("tcpulse-agent/", env!("CARGO_PKG_VERSION")));
        let tls = TlsConfig::builder()
            .unversioned_rustls_crypto_provider(tcpulse_eventhub::tls::crypto_provider());
        let mut roots = RootCerts::PlatformVerifier;
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|source| FetcherError::CaFile {
                path: path.display().to_string(),
                source,
            })?;
            let certs: Vec<_> = parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(FetcherError::NoCertificate(path.display().to_string()));
            }
            roots = RootCerts::new_with_certs(&certs);
        }
        Ok(Fetcher {
            agent: builder
                .tls_config(tls.root_certs(roots).build())
                .build()
                .into(),
            timeout,
            authorization: None,
        })
    }

    /// Sends HTTP basic credentials with every request.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Fetcher {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorization = Some(format!("Basic {token}"));
        self
    }

    /// GETs `url` and returns the body of a 2xx answer as text.
    pub async fn get_text(&self, url: &str) -> Result<String, SourceError> {
        let this = self.clone();
        let url_owned = url.to_owned();
        let task = tokio::task::spawn_blocking(move || this.get_blocking(&url_owned));
        match task.await {
            Ok(r) => r,
            Err(e) => Err(SourceError::Parse(format!("HTTP task failed: {e}"))),
        }
    }

    fn get_blocking(&self, url: &str) -> Result<String, SourceError> {
        let http = |e: ureq::Error| match e {
            ureq::Error::Timeout(_) => SourceError::Timeout(self.timeout),
            e => SourceError::Http {
                url: url.to_owned(),
                source: Box::new(e),
            },
        };
        let mut req = self.agent.get(url).header("Accept", "application/json");
        if let Some(auth) = &self.authorization {
            req = req.header("Authorization", auth);
        }
        let mut resp = req.call().map_err(http)?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let hint = match status {
                401 | 403 => "; check the user name and password",
                404 => "; check the URL",
                _ => "",
            };
            return Err(SourceError::Status {
                url: url.to_owned(),
                status,
                hint,
            });
        }
        resp.body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_string()
            .map_err(http)
    }
}
