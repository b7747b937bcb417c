//! Where CBS tokens come from: a pluggable, async [`TokenSource`].
//!
//! Shipped sources: [`SasKeySource`] (signs a fresh SAS per audience with `sas::sign`, like
//! every SDK does with a connection-string key), [`FixedSignature`] (a ready-made
//! `SharedAccessSignature`, used until its `se`) and [`EntraTokenSource`] (an Entra ID access
//! token from a [`crate::identity`] credential, put as `jwt`).
//!
//! `Debug` never shows a key or a token.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::future::BoxFuture;

use super::error::TokenError;
use crate::{identity, sas, wire};

/// The CBS token type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// A shared access signature (`servicebus.windows.net:sastoken`).
    Sas,
    /// An Entra ID access token (`jwt`).
    Jwt,
}

impl TokenType {
    /// The CBS `type` application property.
    pub fn as_cbs_type(self) -> &'static str {
        match self {
            TokenType::Sas => wire::SAS_TOKEN_TYPE,
            TokenType::Jwt => wire::JWT_TOKEN_TYPE,
        }
    }
}

/// A token for one audience.
#[derive(Clone)]
pub struct AccessToken {
    /// The token text (secret).
    pub token: String,
    /// Its CBS type.
    pub token_type: TokenType,
    /// When the service stops honouring it.
    pub expires_at: SystemTime,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Produces tokens for audiences (`sb://<namespace>/<hub>[/consumergroups/<cg>]`).
///
/// Called once per audience when a link needs it, then again before each token expires.
/// Implementations must be cheap to call repeatedly and must never log the token.
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// A token valid for `audience`.
    fn token<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<AccessToken, TokenError>>;
}

/// Default lifetime of a signed SAS token, seconds (the Python SDK's default).
pub const fn default_token_lifetime_secs() -> u64 {
    3600
}

/// Signs a SAS token per audience from a policy name and key.
#[derive(Clone)]
pub struct SasKeySource {
    key_name: String,
    key: String,
    lifetime: Duration,
}

impl SasKeySource {
    /// A source signing tokens valid for `lifetime` (at least one second).
    pub fn new(key_name: impl Into<String>, key: impl Into<String>, lifetime: Duration) -> Self {
        SasKeySource {
            key_name: key_name.into(),
            key: key.into(),
            lifetime: lifetime.max(Duration::from_secs(1)),
        }
    }
}

impl fmt::Debug for SasKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasKeySource")
            .field("key_name", &self.key_name)
            .field("key", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenSource for SasKeySource {
    fn token<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<AccessToken, TokenError>> {
        Box::pin(async move {
            let expiry = unix_now() + self.lifetime.as_secs();
            let token = sas::sign(audience, &self.key_name, &self.key, expiry)
                .map_err(|e| TokenError::fatal(format!("cannot sign a SAS token: {e}")))?;
            Ok(AccessToken {
                token,
                token_type: TokenType::Sas,
                expires_at: UNIX_EPOCH + Duration::from_secs(expiry),
            })
        })
    }
}

/// A ready-made `SharedAccessSignature` (from a connection string), used until it expires.
#[derive(Clone)]
pub struct FixedSignature {
    token: String,
    expiry_unix: u64,
}

impl FixedSignature {
    /// Parses the signature to learn its expiry; the text is never echoed in errors.
    pub fn new(signature: impl Into<String>) -> Result<Self, TokenError> {
        let token = signature.into();
        let parsed = sas::SasToken::parse(&token).map_err(|e| {
            TokenError::fatal(format!("the SharedAccessSignature cannot be used: {e}"))
        })?;
        Ok(FixedSignature {
            token,
            expiry_unix: parsed.expiry_unix,
        })
    }
}

impl fmt::Debug for FixedSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedSignature")
            .field("token", &"<redacted>")
            .field("expiry_unix", &self.expiry_unix)
            .finish()
    }
}

impl TokenSource for FixedSignature {
    fn token<'a>(&'a self, _audience: &'a str) -> BoxFuture<'a, Result<AccessToken, TokenError>> {
        Box::pin(async move {
            if self.expiry_unix <= unix_now() {
                return Err(TokenError::fatal(format!(
                    "the SharedAccessSignature expired at unix time {}; configure a new one or use a key",
                    self.expiry_unix
                )));
            }
            Ok(AccessToken {
                token: self.token.clone(),
                token_type: TokenType::Sas,
                expires_at: UNIX_EPOCH + Duration::from_secs(self.expiry_unix),
            })
        })
    }
}

/// Entra ID access tokens for every audience of a namespace: one token of scope
/// [`identity::EVENTHUBS_SCOPE`] serves them all (the service checks the principal's roles
/// against the entity the audience names). Put as `type = "jwt"` (azure-eventhub 5.15.1
/// `_client_base.py:357-375`; Go `sbauth/token_provider.go`).
#[derive(Debug, Clone)]
pub struct EntraTokenSource {
    credential: Arc<dyn identity::TokenCredential>,
}

impl EntraTokenSource {
    /// A source fetching from `credential` (usually an [`identity::CachedCredential`]).
    pub fn new(credential: Arc<dyn identity::TokenCredential>) -> Self {
        EntraTokenSource { credential }
    }
}

impl TokenSource for EntraTokenSource {
    fn token<'a>(&'a self, _audience: &'a str) -> BoxFuture<'a, Result<AccessToken, TokenError>> {
        Box::pin(async move {
            let t = self
                .credential
                .get_token(identity::EVENTHUBS_SCOPE)
                .await
                .map_err(|e| {
                    if e.is_transient() {
                        TokenError::transient(e.to_string())
                    } else {
                        TokenError::fatal(e.to_string())
                    }
                })?;
            Ok(AccessToken {
                token: t.token,
                token_type: TokenType::Jwt,
                expires_at: t.expires_at,
            })
        })
    }
}

/// How long before expiry a token is renewed: a third of its lifetime, at most five minutes
/// (.NET renews 5 min before expiry; a 1 h SAS is renewed after 55 min).
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 3).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sas_key_source_signs_for_the_audience_and_hides_the_key() {
        let s = SasKeySource::new("send", "TOPSECRET", Duration::from_secs(60));
        assert!(!format!("{s:?}").contains("TOPSECRET"));
        let t = s.token("sb://localhost:5671/hub").await.unwrap();
        let parsed = sas::SasToken::parse(&t.token).unwrap();
        assert!(parsed.verify("TOPSECRET"));
        assert_eq!(parsed.resource, "sb://localhost:5671/hub");
        assert_eq!(parsed.key_name, "send");
        let left = t.expires_at.duration_since(SystemTime::now()).unwrap();
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(55));
        assert!(!format!("{t:?}").contains("sig="));
    }

    #[tokio::test]
    async fn fixed_signature_reports_expiry_without_echoing_the_token() {
        let live = sas::sign("sb://h/hub", "k", "v", unix_now() + 100).unwrap();
        let f = FixedSignature::new(live.clone()).unwrap();
        assert_eq!(f.token("sb://h/hub").await.unwrap().token, live);
        let dead = sas::sign("sb://h/hub", "k", "v", unix_now() - 1).unwrap();
        let e = FixedSignature::new(dead.clone())
            .unwrap()
            .token("x")
            .await
            .unwrap_err();
        assert!(!e.transient);
        assert!(!e.message.contains(&dead));
        assert!(FixedSignature::new("garbage").is_err());
    }

    #[test]
    fn refresh_margin_is_a_third_capped_at_five_minutes() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(6)),
            Duration::from_secs(2)
        );
    }
}
