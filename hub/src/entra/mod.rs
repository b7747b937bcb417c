//! Entra ID (`jwt`) put-tokens: the hub checks them the way Event Hubs does, against a
//! configured test issuer instead of Microsoft's.
//!
//! An Event Hubs client with an Entra ID credential (managed identity, service principal,
//! workload identity) gets an access token for the scope `https://eventhubs.azure.net/.default`
//! and puts it on `$cbs` with `type = "jwt"`, `name` = the entity's audience URI
//! (`sb://<host>/<hub>`), the token as an amqp-value string body; the service answers 202
//! and lets the connection use that entity with the rights of the principal's Azure role
//! assignments until the token expires (reference `azure-blob-identity-websocket.md` §3:
//! DOC-AMQP "Claims-based authorization"; azure-eventhub 5.15.1 `_client_base.py:316,357-375`;
//! the roles: `MicrosoftDocs/azure-docs articles/event-hubs/authorize-access-azure-active-directory.md`).
//!
//! # Configuration (`tcpulse-hub` flags, environment, [`EntraConfig`])
//!
//! - `--entra-jwks-file FILE` (`TCPULSE_HUB_ENTRA_JWKS_FILE`): the issuer's signing keys, a
//!   JWKS document (`{"keys":[{"kty":"RSA","kid":…,"n":…,"e":…}]}`, as Entra publishes at its
//!   `jwks_uri`) or PEM RSA public keys (`BEGIN PUBLIC KEY` / `BEGIN RSA PUBLIC KEY`). Without
//!   it `jwt` put-tokens are refused, naming this flag.
//! - `--entra-audience AUD` (`TCPULSE_HUB_ENTRA_AUDIENCE`, default `https://eventhubs.azure.net`):
//!   the `aud` tokens must carry; a trailing `/` on either side does not matter (the docs name
//!   the resource `https://eventhubs.azure.net/`, tokens for the `.default` scope carry it
//!   without the slash).
//! - `--entra-issuer ISS` (`TCPULSE_HUB_ENTRA_ISSUER`): when set, `iss` must match (trailing
//!   `/` aside), e.g. `https://sts.windows.net/<tenant>/`.
//! - `--entra-role-assignments FILE` (`TCPULSE_HUB_ENTRA_ROLE_ASSIGNMENTS`): the role
//!   assignments, one `PRINCIPAL_OBJECT_ID:ROLE[:SCOPE]` per line (see [`roles`]).
//!
//! # What a `jwt` put-token does
//!
//! 1. The token is checked in the order of Microsoft.IdentityModel's `JsonWebTokenHandler`
//!    (signature, then lifetime, audience, issuer; whether the service checks in this order
//!    is not known): RS256 signature against the key named by the header's `kid` (a key
//!    without a `kid`, e.g. from PEM, is tried for any `kid`); `exp` (no leeway, so a late
//!    refresh shows as dropped links) and `nbf` ([`verify::NBF_LEEWAY_SECS`]); `aud`; `iss`.
//!    A refusal is answered with status 401 and the service's description (see
//!    [`verify::Refusal`], each text with its source).
//! 2. The principal is the token's `oid` (object id; `sub` when absent, as for some
//!    app-only tokens). Its role assignments that cover the audience's entity give the
//!    connection that entity with their rights; assignments scoped below it (a hub when
//!    the audience is the namespace) give their own scope. All until the token's `exp`,
//!    capped by `--max-token-lifetime`.
//! 3. A valid token whose principal has no covering role is accepted (202) and grants
//!    nothing: the attach then fails with the service's "Unauthorized access. 'Send'
//!    claim(s) are required …" (from [`crate::auth::ConnAuth::check`]), as on Azure, where
//!    role assignments are not in the token either.
//!
//! The token is never logged; refusals are logged at info with `error_type` and a detail
//! (which `kid`, which `aud`) that the client is not told.

pub mod config;
mod keys;
pub mod roles;
pub mod verify;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use config::EntraConfig;
pub use verify::Refusal;

use crate::auth::{path_covers, ConnAuth, Rights};
use crate::HubError;
use roles::Assignment;
use tcpulse_eventhub::sas;
use verify::Verifier;

/// A loaded Entra ID configuration: the issuer's keys and the role assignments.
#[derive(Debug)]
pub struct Entra {
    verifier: Verifier,
    assignments: Vec<Assignment>,
}

/// What an accepted `jwt` put-token granted (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The principal (`oid`).
    pub principal: String,
    /// Its rights on the audience's entity ([`Rights::NONE`] without a covering role).
    pub rights: Rights,
    /// Until when.
    pub expires: Instant,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Entra {
    /// Reads the key file and the role assignments. `Ok(None)` when no key file is set.
    pub fn load(config: &EntraConfig) -> Result<Option<Entra>, HubError> {
        let Some(keys_path) = &config.jwks_file else {
            return Ok(None);
        };
        let keys = keys::KeySet::load(keys_path).map_err(|why| HubError::Entra {
            what: "--entra-jwks-file",
            path: keys_path.clone(),
            why,
        })?;
        let assignments = match &config.role_assignments {
            Some(path) => roles::load(path).map_err(|why| HubError::Entra {
                what: "--entra-role-assignments",
                path: path.clone(),
                why,
            })?,
            None => Vec::new(),
        };
        if assignments.is_empty() {
            tracing::warn!("Entra ID tokens are verified but no role assignments are configured (--entra-role-assignments): a valid token grants nothing");
        }
        tracing::info!(
            keys = keys.len(),
            role_assignments = assignments.len(),
            audience = %config.audience,
            issuer = ?config.issuer,
            "Entra ID (jwt) put-tokens accepted"
        );
        Ok(Some(Entra {
            verifier: Verifier::new(keys, &config.audience, config.issuer.as_deref()),
            assignments,
        }))
    }

    /// Checks `token` and records on `auth` what its principal may do on the entity of
    /// `audience` (see the module docs). `max_lifetime` caps the grant.
    pub fn put_token(
        &self,
        auth: &ConnAuth,
        audience: &str,
        token: &str,
        max_lifetime: Option<Duration>,
    ) -> Result<Accepted, Refusal> {
        let now = now_unix();
        let verified = self.verifier.verify(token, now)?;
        let expires =
            crate::auth::grant_deadline(verified.expires_unix.saturating_sub(now), max_lifetime);
        let path = sas::resource_path(audience);
        let grants = roles::grants_for(&self.assignments, &verified.principal, &path);
        for (scope, rights) in &grants {
            auth.grant(scope, *rights, Some(expires));
        }
        let rights = grants
            .iter()
            .find(|(scope, _)| path_covers(scope, &path))
            .map(|(_, r)| *r)
            .unwrap_or(Rights::NONE);
        Ok(Accepted {
            principal: verified.principal,
            rights,
            expires,
        })
    }
}

#[cfg(test)]
mod tests;
