//! [`EntraConfig`]: which Entra ID tokens the hub accepts. The `tcpulse-hub` flags
//! `--entra-*` mirror its fields one for one.

use std::path::PathBuf;

/// The audience Event Hubs access tokens carry (the resource of the scope
/// `https://eventhubs.azure.net/.default`; `MicrosoftDocs/azure-docs@0d051abb
/// articles/event-hubs/authorize-access-azure-active-directory.md`).
pub const DEFAULT_AUDIENCE: &str = "https://eventhubs.azure.net";

/// The default of [`EntraConfig::audience`].
pub fn default_audience() -> String {
    DEFAULT_AUDIENCE.to_string()
}

/// Which Entra ID (`jwt`) put-tokens the hub accepts, and what they allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraConfig {
    /// The token issuer's signing keys: a JWKS document (`{"keys":[{"kty":"RSA","kid",
    /// "n","e",…}]}`) or PEM RSA public keys. Read once at start. Default: none, and
    /// `jwt` put-tokens are refused with a description naming `--entra-jwks-file`.
    pub jwks_file: Option<PathBuf>,
    /// The `aud` tokens must carry, compared without a trailing `/`. Default
    /// `https://eventhubs.azure.net`.
    pub audience: String,
    /// When set, the `iss` tokens must carry (trailing `/` aside), e.g.
    /// `https://sts.windows.net/<tenant id>/`. Default: any issuer whose key is in
    /// `jwks_file`.
    pub issuer: Option<String>,
    /// The role assignments: one `PRINCIPAL_OBJECT_ID:ROLE[:SCOPE]` per line, ROLE one of
    /// `Azure Event Hubs Data Sender`, `Azure Event Hubs Data Receiver`, `Azure Event Hubs
    /// Data Owner`, SCOPE an entity path (`hub`, `hub/consumergroups/cg`) or an Azure
    /// resource id of one; no SCOPE = the whole namespace. Default: none (a valid token
    /// grants nothing).
    pub role_assignments: Option<PathBuf>,
}

impl Default for EntraConfig {
    fn default() -> Self {
        EntraConfig {
            jwks_file: None,
            audience: default_audience(),
            issuer: None,
            role_assignments: None,
        }
    }
}

impl EntraConfig {
    /// Checks the settings without reading the files.
    pub fn validate(&self) -> Result<(), String> {
        if self.jwks_file.is_none() && (self.issuer.is_some() || self.role_assignments.is_some()) {
            return Err("--entra-issuer and --entra-role-assignments need --entra-jwks-file (the issuer's keys)".into());
        }
        if self.audience.trim().is_empty() {
            return Err("--entra-audience must not be empty".into());
        }
        Ok(())
    }
}
