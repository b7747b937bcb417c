//! [`TestCertificate`]: a service principal's self-signed RSA certificate and key, and the
//! client assertion it signs for the client-credentials flow.
//!
//! The assertion is what MSAL sends ("certificate credentials",
//! `learn.microsoft.com/entra/identity-platform/certificate-credentials`): an RS256 JWT whose
//! header names the certificate by `x5t` (base64url SHA-1 of its DER) or `x5t#S256`
//! (SHA-256; MicrosoftDocs/entra-docs#1301 reports Entra finding the key only by `x5t`),
//! with `aud` = the token endpoint URL, `iss` = `sub` = the client id, `jti`, `nbf`, `exp`.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use aws_lc_rs::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY, SHA256};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::issuer::unix_now;

/// A self-signed certificate with an RSA-2048 key. `Debug` never shows the key.
#[derive(Clone)]
pub struct TestCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub key_pem: String,
    der: Vec<u8>,
    key: Arc<RsaKeyPair>,
}

impl std::fmt::Debug for TestCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCertificate")
            .field("x5t", &self.x5t())
            .finish_non_exhaustive()
    }
}

/// `header.claims.signature`: an RS256 JWT signed with `key` (aws-lc-rs directly, so the
/// tokens the tests make do not share a JWT implementation with the hub's checks).
pub(crate) fn sign_rs256(key: &RsaKeyPair, header: &Value, claims: &Value) -> Result<String> {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|e| anyhow!("RS256 signing failed: {e}"))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Base64url (no padding) of a digest of `der`, as `x5t` / `x5t#S256` carry it.
pub(crate) fn thumbprint(der: &[u8], sha256: bool) -> String {
    let d = if sha256 {
        digest(&SHA256, der)
    } else {
        digest(&SHA1_FOR_LEGACY_USE_ONLY, der)
    };
    URL_SAFE_NO_PAD.encode(d.as_ref())
}

impl TestCertificate {
    /// A new key and a self-signed certificate for `common_name`.
    pub fn generate(common_name: &str) -> Result<TestCertificate> {
        let key = RsaKeyPair::generate(KeySize::Rsa2048)
            .map_err(|e| anyhow!("generate an RSA-2048 key: {e}"))?;
        let pkcs8: Pkcs8V1Der<'static> = key
            .as_der()
            .map_err(|e| anyhow!("encode the key as PKCS#8: {e}"))?;
        let pkcs8_der =
            tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec());
        let signer =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8_der, &rcgen::PKCS_RSA_SHA256)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.self_signed(&signer)?;
        Ok(TestCertificate {
            cert_pem: cert.pem(),
            key_pem: signer.serialize_pem(),
            der: cert.der().to_vec(),
            key: Arc::new(key),
        })
    }

    /// `x5t`: base64url SHA-1 of the certificate.
    pub fn x5t(&self) -> String {
        thumbprint(&self.der, false)
    }

    /// `x5t#S256`: base64url SHA-256 of the certificate.
    pub fn x5t_s256(&self) -> String {
        thumbprint(&self.der, true)
    }

    /// Signs `claims` with this certificate's key under `header`.
    pub fn sign(&self, header: &Value, claims: &Value) -> Result<String> {
        sign_rs256(&self.key, header, claims)
    }

    /// The client assertion MSAL would send for `client_id` to `token_url`, valid 10 min,
    /// naming the certificate by `x5t` (or `x5t#S256` when `sha256`).
    pub fn client_assertion(
        &self,
        client_id: &str,
        token_url: &str,
        sha256: bool,
    ) -> Result<String> {
        let header = if sha256 {
            json!({"alg": "RS256", "typ": "JWT", "x5t#S256": self.x5t_s256()})
        } else {
            json!({"alg": "RS256", "typ": "JWT", "x5t": self.x5t()})
        };
        let now = unix_now();
        let claims = json!({"aud": token_url, "iss": client_id, "sub": client_id,
                            "jti": uuid::Uuid::new_v4().to_string(), "nbf": now, "iat": now,
                            "exp": now + 600});
        self.sign(&header, &claims)
    }
}
