//! [`TestIssuer`]: an Entra ID-like token issuer with a fresh RSA-2048 key per test run.
//!
//! Tokens are signed here with aws-lc-rs directly (RSASSA-PKCS1-v1_5 with SHA-256, i.e. JWS
//! `RS256`) and verified by the hub with `jsonwebtoken`, so the two sides of the tests do not
//! share a JWT implementation. The header is Entra's: `typ: JWT`, `alg: RS256`, and `kid` =
//! `x5t` (Entra sets both to the signing certificate's thumbprint; here a base64url SHA-1 of
//! the public key).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use aws_lc_rs::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair, RsaPublicKeyComponents};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

use super::Principal;

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A token issuer: an RSA-2048 key pair, its `kid`, a tenant id. Cheap to clone (the key is
/// shared). `Debug` never shows the key.
#[derive(Clone)]
pub struct TestIssuer {
    key: Arc<RsaKeyPair>,
    kid: String,
    tenant: String,
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer")
            .field("kid", &self.kid)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl TestIssuer {
    /// A new key pair (RSA-2048) and a random tenant id.
    pub fn generate() -> Result<TestIssuer> {
        let key = RsaKeyPair::generate(KeySize::Rsa2048)
            .map_err(|e| anyhow!("generate an RSA-2048 key: {e}"))?;
        let thumb = digest(&SHA1_FOR_LEGACY_USE_ONLY, key.public_key().as_ref());
        Ok(TestIssuer {
            kid: URL_SAFE_NO_PAD.encode(thumb.as_ref()),
            key: Arc::new(key),
            tenant: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// The tenant id (a GUID), the `tid` of issued tokens.
    pub fn tenant_id(&self) -> &str {
        &self.tenant
    }

    /// The key id in token headers and the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `https://sts.windows.net/{tenant}/`, the `iss` of Entra v1 access tokens (the
    /// version Event Hubs tokens have).
    pub fn issuer(&self) -> String {
        format!("https://sts.windows.net/{}/", self.tenant)
    }

    /// The JWKS document: `{"keys":[{kty,use,alg,kid,x5t,n,e}]}`.
    pub fn jwks_json(&self) -> String {
        let c = RsaPublicKeyComponents::<Vec<u8>>::from(self.key.public_key());
        json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "x5t": self.kid,
            "n": URL_SAFE_NO_PAD.encode(c.n), "e": URL_SAFE_NO_PAD.encode(c.e),
        }]})
        .to_string()
    }

    /// Writes [`Self::jwks_json`] to `path` (for `--entra-jwks-file`).
    pub fn write_jwks(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.jwks_json())
            .with_context(|| format!("write the JWKS to {}", path.display()))
    }

    /// The public key as PEM (`BEGIN PUBLIC KEY`, SubjectPublicKeyInfo), the other form
    /// `--entra-jwks-file` takes.
    pub fn public_key_pem(&self) -> Result<String> {
        let der: PublicKeyX509Der<'static> = self
            .key
            .public_key()
            .as_der()
            .map_err(|e| anyhow!("encode the public key: {e}"))?;
        let b64 = STANDARD.encode(der.as_ref());
        let lines: Vec<String> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        Ok(format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        ))
    }

    /// The claims of `token` if this issuer's JWKS verifies its RS256 signature (any
    /// audience, expiry unchecked): what a test asks of a token a credential fetched.
    pub fn verify(&self, token: &str) -> Result<Value> {
        use jsonwebtoken::{jwk::JwkSet, Algorithm, DecodingKey, Validation};
        let set: JwkSet = serde_json::from_str(&self.jwks_json())?;
        let kid = jsonwebtoken::decode_header(token)?.kid.unwrap_or_default();
        let jwk = set
            .find(&kid)
            .ok_or_else(|| anyhow::anyhow!("kid {kid} not in the JWKS"))?;
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_aud = false;
        v.validate_exp = false;
        v.required_spec_claims.clear();
        Ok(jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &v)?.claims)
    }

    /// Signs `claims` as an RS256 JWT with this issuer's `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({"typ": "JWT", "alg": "RS256", "x5t": self.kid, "kid": self.kid});
        super::cert::sign_rs256(&self.key, &header, claims)
    }

    /// The claims of an access token for `principal`: `aud`, `iss`, `iat`, `nbf`, `exp`,
    /// `oid`, `tid`, `appid`, `sub`, `ver: "1.0"` (and `idtyp: app`), valid for `lifetime`
    /// from now. `Duration::ZERO` gives a token that expired a minute ago.
    pub fn access_claims(
        &self,
        principal: &Principal,
        audience: &str,
        lifetime: Duration,
    ) -> Value {
        let now = unix_now();
        let (iat, exp) = if lifetime.is_zero() {
            (now.saturating_sub(120), now.saturating_sub(60))
        } else {
            (now, now + lifetime.as_secs().max(1))
        };
        json!({
            "aud": audience, "iss": self.issuer(), "iat": iat, "nbf": iat, "exp": exp,
            "oid": principal.object_id, "sub": principal.object_id, "tid": self.tenant,
            "appid": principal.client_id, "appidacr": "1", "idtyp": "app", "ver": "1.0",
        })
    }

    /// A signed access token for `principal` (see [`Self::access_claims`]).
    pub fn access_token(
        &self,
        principal: &Principal,
        audience: &str,
        lifetime: Duration,
    ) -> Result<String> {
        self.sign(&self.access_claims(principal, audience, lifetime))
    }
}
