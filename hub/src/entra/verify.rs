//! Checking one Entra ID access token, and the service's words for each refusal.
//!
//! Order (Microsoft.IdentityModel's `JsonWebTokenHandler`: signature, then lifetime, audience,
//! issuer): the header (`alg` must be RS256), the signature against the key the `kid` names,
//! `exp`, `nbf`, `aud`, `iss`. The claims the hub reads: `exp` (required), `nbf`, `aud`
//! (a string or an array), `iss`, `oid` (else `sub`) for the principal.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::keys::KeySet;

/// How far in the future `nbf` may be (the issuer's clock ahead of the hub's), seconds.
/// `exp` gets no leeway: a token is honoured until its `exp` exactly, so a client that
/// refreshes late sees its links dropped in tests. (Microsoft.IdentityModel's default clock
/// skew is 5 minutes; the service may well be that lenient. Verified only against the hub.)
pub const NBF_LEEWAY_SECS: u64 = 5;

/// Why a `jwt` put-token is refused. Every refusal is answered with status 401 (the status
/// the service gives each of the texts below where a source shows one) and
/// [`Refusal::description`] as `status-description`, which the SDKs display ("Put token
/// failed. status-code: 401, status-description: …" in .NET, "CBS Token authentication
/// failed. Status code: 401 Description: …" in Python).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The hub has no Entra ID issuer configured.
    #[error("no Entra ID issuer configured")]
    NotConfigured,
    /// Not a JWT (three base64url parts, a JSON header and claims, an `exp`).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Not RS256, no key with that `kid`, or the signature does not verify.
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    /// `exp` has passed.
    #[error("expired at unix time {exp}")]
    Expired {
        /// The token's `exp`.
        exp: u64,
    },
    /// `nbf` is still ahead.
    #[error("not valid before unix time {nbf}")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
    },
    /// `aud` is not the configured audience.
    #[error("audience {aud} is not the configured one")]
    InvalidAudience {
        /// The token's `aud`.
        aud: String,
    },
    /// `iss` is not the configured issuer.
    #[error("issuer {iss} is not the configured one")]
    InvalidIssuer {
        /// The token's `iss`.
        iss: String,
    },
}

impl Refusal {
    /// The CBS `status-code`.
    pub fn status(&self) -> i32 {
        401
    }

    /// The CBS `status-description`: the service's text where one was found (the source
    /// is on each arm), the SAS refusals' style otherwise. Sent without the service's
    /// `TrackingId:…, SystemTracker:…, Timestamp:…` suffix, like the hub's SAS refusals.
    pub fn description(&self) -> String {
        match self {
            // Not a service text (the service always accepts `jwt`): says what to change.
            Refusal::NotConfigured => "tcpulse-hub has no Entra ID issuer configured, so it cannot accept 'jwt' tokens: start it with --entra-jwks-file (and --entra-role-assignments), or put a shared access signature (servicebus.windows.net:sastoken)".into(),
            // Service text for a malformed token, seen for a SAS ("Put token failed.
            // status-code: 401, status-description: Malformed authorization token.",
            // Azure/azure-sdk-for-net#26136); no source for a malformed JWT was found.
            Refusal::Malformed(_) => "MalformedToken: Malformed authorization token.".into(),
            // No source found for a JWT signed by an unknown key or with a bad signature:
            // the SAS refusal's text ("InvalidSignature: The token has an invalid
            // signature.", sandrinodimattia/RedDog#4), as the hub answers for SAS.
            Refusal::InvalidSignature(_) => "InvalidSignature: The token has an invalid signature.".into(),
            // "Status code: 401 Description: ExpiredToken: The token is expired." for a
            // DefaultAzureCredential (jwt) client (Azure/azure-sdk-for-python#23487); the
            // SAS variant appends "Expiration time: '…'".
            Refusal::Expired { .. } => "ExpiredToken: The token is expired.".into(),
            // No source found; the expiry refusal's style.
            Refusal::NotYetValid { .. } => "InvalidToken: The token is not yet valid.".into(),
            // "InvalidAudience: Invalid authorization token audience." for an Entra token
            // with a wrong audience (MicrosoftDocs/azure-docs#19707; a managed identity,
            // Azure/azure-sdk-for-js#26360). The SAS text differs ("…The authorization
            // header contains a token with a wrong audience.").
            Refusal::InvalidAudience { .. } => "InvalidAudience: Invalid authorization token audience.".into(),
            // "Put token failed. status-code: 401, status-description: InvalidIssuer: Token
            // issuer is invalid." (Azure/azure-sdk-for-net#25306, #8627; Azure/logicapps#1390).
            Refusal::InvalidIssuer { .. } => "InvalidIssuer: Token issuer is invalid.".into(),
        }
    }

    /// The `error_type` logged with the refusal.
    pub fn error_type(&self) -> &'static str {
        match self {
            Refusal::NotConfigured => "jwt_not_configured",
            Refusal::Malformed(_) => "malformed_token",
            Refusal::InvalidSignature(_) => "invalid_signature",
            Refusal::Expired { .. } => "expired_token",
            Refusal::NotYetValid { .. } => "token_not_yet_valid",
            Refusal::InvalidAudience { .. } => "invalid_audience",
            Refusal::InvalidIssuer { .. } => "invalid_issuer",
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The principal's object id (`oid`, else `sub`).
    pub principal: String,
    /// `exp`.
    pub expires_unix: u64,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<u64>,
    nbf: Option<u64>,
    #[serde(default)]
    aud: serde_json::Value,
    iss: Option<String>,
    oid: Option<String>,
    sub: Option<String>,
}

/// Checks tokens against one issuer's keys, audience and (optionally) issuer name.
#[derive(Debug)]
pub(crate) struct Verifier {
    keys: KeySet,
    audience: String,
    issuer: Option<String>,
}

fn trim_slash(s: &str) -> &str {
    s.trim().trim_end_matches('/')
}

impl Verifier {
    pub(crate) fn new(keys: KeySet, audience: &str, issuer: Option<&str>) -> Verifier {
        Verifier {
            keys,
            audience: trim_slash(audience).to_string(),
            issuer: issuer.map(|i| trim_slash(i).to_string()),
        }
    }

    /// Checks `token` at unix time `now`.
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<Verified, Refusal> {
        let claims = self.signed_claims(token)?;
        let exp = claims
            .exp
            .ok_or_else(|| Refusal::Malformed("no 'exp' claim".into()))?;
        if now >= exp {
            return Err(Refusal::Expired { exp });
        }
        if let Some(nbf) = claims.nbf.filter(|nbf| *nbf > now + NBF_LEEWAY_SECS) {
            return Err(Refusal::NotYetValid { nbf });
        }
        if !self.audience_matches(&claims.aud) {
            return Err(Refusal::InvalidAudience {
                aud: claims.aud.to_string(),
            });
        }
        if let Some(want) = &self.issuer {
            let iss = claims.iss.unwrap_or_default();
            if trim_slash(&iss) != want {
                return Err(Refusal::InvalidIssuer { iss });
            }
        }
        let principal = claims
            .oid
            .or(claims.sub)
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| {
                Refusal::Malformed("neither 'oid' nor 'sub' names a principal".into())
            })?;
        Ok(Verified {
            principal,
            expires_unix: exp,
        })
    }

    /// The claims, once the signature verified with a key the header's `kid` selects.
    fn signed_claims(&self, token: &str) -> Result<Claims, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refusal::Malformed(format!("header: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(Refusal::InvalidSignature(format!(
                "algorithm {:?}; only RS256 is accepted",
                header.alg
            )));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let kid = header.kid.as_deref();
        let mut last =
            Refusal::InvalidSignature(format!("no key with kid {kid:?} in --entra-jwks-file"));
        for key in self.keys.candidates(kid) {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature
                        | ErrorKind::InvalidAlgorithm
                        | ErrorKind::InvalidRsaKey(_)
                        | ErrorKind::InvalidKeyFormat => {
                            Refusal::InvalidSignature(format!("kid {kid:?}: {e}"))
                        }
                        _ => Refusal::Malformed(e.to_string()),
                    };
                }
            }
        }
        Err(last)
    }

    fn audience_matches(&self, aud: &serde_json::Value) -> bool {
        match aud {
            serde_json::Value::String(a) => trim_slash(a).eq_ignore_ascii_case(&self.audience),
            serde_json::Value::Array(all) => all.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| trim_slash(a).eq_ignore_ascii_case(&self.audience))
            }),
            _ => false,
        }
    }
}
