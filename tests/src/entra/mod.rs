//! Entra ID on loopback: a test token issuer and a real HTTP token server that hands out its
//! tokens the three ways Azure does, for the Entra ID (`jwt`) tests of the hub, our client,
//! the agent and the collector. Nothing here talks to anything but 127.0.0.1.
//!
//! - [`TestIssuer`] (`issuer`): an RSA-2048 key per test run, its JWKS (for the hub's
//!   `--entra-jwks-file`), RS256 signing of Entra v1-style access tokens.
//! - [`TokenServer`] (`server`): an axum server on `127.0.0.1:0` with the managed-identity
//!   endpoints of App Service (`IDENTITY_ENDPOINT` + `X-IDENTITY-HEADER`) and of IMDS
//!   (`/metadata/identity/oauth2/token` + `Metadata: true`), and the client-credentials
//!   endpoint of the Microsoft identity platform (`/{tenant}/oauth2/v2.0/token` with a client
//!   secret, a certificate-signed client assertion, or a federated token). It can fail on
//!   purpose, change the audience or lifetime of what it issues, and counts what it issued.
//!   How each client is authenticated is in `client_auth`.
//! - [`TestCertificate`] (`cert`): a service principal's self-signed certificate, its key
//!   (PEM) and the client assertion it signs.
//! - [`ClientSecretSource`] (`source`): our Event Hubs client's `TokenSource` fetching from
//!   the server with a client secret, returning `jwt` tokens, for tests of the hub.
//!
//! The wire formats (query parameters, form fields, JSON fields, error bodies) are those
//! azure-identity and MSAL send and expect (reference `azure-blob-identity-websocket.md` §3);
//! each error text names its source where one was found, and says so where it is modelled.

mod cert;
mod client_auth;
mod issuer;
mod server;
mod source;

pub use cert::TestCertificate;
pub use client_auth::JWT_BEARER;
pub use issuer::TestIssuer;
pub use server::{TokenServer, TokenServerOptions};
pub use source::ClientSecretSource;

/// The audience (and resource) of Event Hubs access tokens.
pub const EVENTHUBS_AUDIENCE: &str = "https://eventhubs.azure.net";

/// An identity: a managed identity or a service principal (app registration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The object id (principal id): the `oid` and `sub` of its tokens, what role
    /// assignments name.
    pub object_id: String,
    /// The client id (application id): the `appid` of its tokens, how clients select it.
    pub client_id: String,
}

impl Principal {
    /// A principal with fresh random ids.
    pub fn random() -> Principal {
        Principal {
            object_id: uuid::Uuid::new_v4().to_string(),
            client_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Its Azure resource id as a user-assigned identity (what `msi_res_id` / `mi_res_id`
    /// select): `/subscriptions/…/resourcegroups/tcpulse-test/providers/
    /// Microsoft.ManagedIdentity/userAssignedIdentities/<client id>`.
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/tcpulse-test/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            self.client_id
        )
    }

    /// Its line in the hub's `--entra-role-assignments` file: `OID:ROLE[:SCOPE]`.
    pub fn role_assignment(&self, role: &str, scope: Option<&str>) -> String {
        match scope {
            Some(s) => format!("{}:{role}:{s}", self.object_id),
            None => format!("{}:{role}", self.object_id),
        }
    }
}

#[cfg(test)]
mod tests;
