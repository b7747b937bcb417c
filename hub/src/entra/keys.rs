//! The issuer's RS256 verification keys, from a JWKS document or PEM public keys.
//!
//! JWKS is what Entra publishes at the `jwks_uri` of its OpenID configuration
//! (`https://login.microsoftonline.com/<tenant>/discovery/keys`): RSA keys with `kid`, `n`,
//! `e`, `use: "sig"`. Keys of another type or algorithm, or for encryption, are skipped. PEM
//! keys have no `kid` and are tried for any token.

use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One verification key.
struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// The keys tokens may be signed with.
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("<pem>"))
            .collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Reads `path`: JSON (a JWKS, or one JWK) or PEM.
    pub(crate) fn load(path: &Path) -> Result<KeySet, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        KeySet::parse(&text)
    }

    pub(crate) fn parse(text: &str) -> Result<KeySet, String> {
        let keys = if text.trim_start().starts_with('{') {
            from_jwks(text)?
        } else {
            from_pem(text)?
        };
        if keys.is_empty() {
            return Err("no RSA signing key in it (expected a JWKS with RSA keys, or PEM 'PUBLIC KEY' blocks)".into());
        }
        Ok(KeySet { keys })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys to try for a token whose header names `kid`: the key with that `kid`, else
    /// every key without one (PEM).
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        let named = kid.and_then(|kid| self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)));
        let unnamed = self.keys.iter().filter(|k| k.kid.is_none());
        named
            .into_iter()
            .chain(unnamed.filter(move |_| named.is_none()))
            .map(|k| &k.key)
    }
}

fn from_jwks(text: &str) -> Result<Vec<Key>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let set: JwkSet = if value.get("keys").is_some() {
        serde_json::from_value(value).map_err(|e| format!("not a JWKS: {e}"))?
    } else {
        let one: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
        JwkSet { keys: vec![one] }
    };
    let mut out = Vec::new();
    for jwk in &set.keys {
        if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_))
            || jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != PublicKeyUse::Signature)
            || jwk
                .common
                .key_algorithm
                .is_some_and(|a| a != KeyAlgorithm::RS256)
        {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("key '{}': {e}", jwk.common.key_id.as_deref().unwrap_or("?")))?;
        out.push(Key {
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    Ok(out)
}

/// PEM blocks `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY` (PKCS#1); aws-lc-rs
/// reads either DER form when verifying. Each key is checked to be RSA here.
fn from_pem(text: &str) -> Result<Vec<Key>, String> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            body = matches!(label, "PUBLIC KEY" | "RSA PUBLIC KEY").then(String::new);
        } else if line.starts_with("-----END ") {
            if let Some(b64) = body.take() {
                out.push(pem_key(&b64, out.len() + 1)?);
            }
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    Ok(out)
}

fn pem_key(b64: &str, n: usize) -> Result<Key, String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("PEM key {n}: bad base64: {e}"))?;
    let key = DecodingKey::from_rsa_der(&der);
    // Parses the DER as an RSA public key (PKCS#1 or SubjectPublicKeyInfo).
    Jwk::from_decoding_key(&key, Some(Algorithm::RS256))
        .map_err(|e| format!("PEM key {n} is not an RSA public key: {e}"))?;
    Ok(Key { kid: None, key })
}
