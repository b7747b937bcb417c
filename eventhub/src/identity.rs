//! Entra ID (Azure AD) credentials: where an access token for a scope comes from, without a
//! shared access key on the machine.
//!
//! Event Hubs takes these tokens over CBS like SAS tokens (`put-token` with `type = "jwt"`;
//! see [`crate::client::EntraTokenSource`]); the Blob checkpoint store can take them as
//! `Authorization: Bearer`. The flows are the few HTTP requests the Azure SDKs make, written
//! here rather than taken from Microsoft's `azure_identity` crate (1.0.0, checked
//! 2026-12-07): its IMDS address is a constant (`http://169.254.169.254/…`,
//! `virtual_machine_managed_identity_credential.rs:16`), so the VM path, the one the agents
//! use, could not be tested against a loopback endpoint; its certificate credential needs
//! OpenSSL (feature `client_certificate = ["openssl"]`), a second crypto stack; and it would
//! bring reqwest and hyper into the agent, which uses the small blocking `ureq`.
//!
//! # Layout
//!
//! - [`config`]: [`IdentityConfig`], the user-facing settings (flags, environment, file),
//!   and [`AuthMethod`]; [`IdentityConfig::credential`] builds the credential.
//! - [`http`]: the token requests (GET for managed identity, form POST for client
//!   credentials), response parsing and error mapping, on `ureq` run on tokio's blocking pool.
//! - [`managed`]: managed identity (App Service's `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`,
//!   else IMDS), system- or user-assigned.
//! - [`client`]: a service principal's client-credentials grant with a secret, a
//!   certificate (a signed RS256 assertion) or a federated token file (workload identity).
//! - [`cache`]: [`CachedCredential`], one token per scope, renewed before expiry, with
//!   [`CredentialStats`] (expiry, failures) for the `credential_expires_in_seconds` gauge.
//!
//! Tokens, secrets and assertions never appear in `Debug` output, logs or errors.

pub mod cache;
pub mod client;
pub mod config;
pub mod http;
pub mod managed;

use std::{fmt, time::SystemTime};

use futures::future::BoxFuture;

pub use cache::{CachedCredential, CredentialStats};
pub use config::{AuthMethod, IdentityConfig};

/// The scope of Event Hubs data-plane tokens (`https://eventhubs.azure.net/.default`;
/// Python, Go, Java and JS send a double slash, `.../eventhubs.azure.net//.default`, which
/// Entra treats the same; .NET and the Rust SDK send this form).
pub const EVENTHUBS_SCOPE: &str = "https://eventhubs.azure.net/.default";
/// The scope of Blob storage tokens.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// An access token for one scope.
#[derive(Clone)]
pub struct AccessToken {
    /// The token (secret).
    pub token: String,
    /// When it stops being honoured.
    pub expires_at: SystemTime,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Produces access tokens. Implementations never log a token or a secret.
pub trait TokenCredential: Send + Sync + fmt::Debug {
    /// A fresh token for `scope` (e.g. [`EVENTHUBS_SCOPE`]).
    fn get_token<'a>(&'a self, scope: &'a str)
        -> BoxFuture<'a, Result<AccessToken, IdentityError>>;
}

/// Why no token could be had. Messages name the endpoint (without query) and what to check,
/// never a secret or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The settings cannot work (a missing tenant, an unreadable certificate, …).
    #[error("invalid Entra ID credential settings: {0}")]
    Config(String),
    /// The token endpoint could not be reached or did not answer in time.
    #[error("token endpoint {endpoint} unreachable: {why}; {hint}")]
    Unreachable {
        /// The endpoint (scheme, host, path).
        endpoint: String,
        /// The transport error.
        why: String,
        /// What to check.
        hint: &'static str,
    },
    /// The token endpoint answered with an error.
    #[error("token endpoint {endpoint} refused: HTTP {status} {error}: {description}")]
    Refused {
        /// The endpoint (scheme, host, path).
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` code (`invalid_client`, …) or `-`.
        error: String,
        /// The `error_description` (Entra's AADSTS text) or the body's start.
        description: String,
    },
    /// The endpoint answered 2xx with something that is not a token.
    #[error("token endpoint {endpoint} answered without a usable token: {why}")]
    BadResponse {
        /// The endpoint.
        endpoint: String,
        /// What was wrong.
        why: String,
    },
}

impl IdentityError {
    /// True when asking again later may succeed: the endpoint unreachable, throttling
    /// (429), a server error (5xx) or a timeout (408). (IMDS's 404/410 while an identity is
    /// being assigned arrive as [`IdentityError::Unreachable`]; see [`managed`].)
    pub fn is_transient(&self) -> bool {
        match self {
            IdentityError::Unreachable { .. } => true,
            IdentityError::Refused { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            IdentityError::Config(_) | IdentityError::BadResponse { .. } => false,
        }
    }
}
