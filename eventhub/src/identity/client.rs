//! A service principal's client-credentials grant: `POST
//! {authority}/{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials`,
//! `client_id`, `scope` and one proof of identity:
//! - a client secret (`client_secret`);
//! - a certificate: `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:
//!   jwt-bearer` and `client_assertion`, a JWT signed RS256 with the certificate's key, with
//!   `aud` = the token endpoint, `iss` = `sub` = the client id, a fresh `jti`, `nbf`/`exp`
//!   around now, and the certificate's thumbprints in `x5t` (SHA-1) and `x5t#S256`
//!   (Microsoft identity platform docs, "Certificate credentials", and MSAL's
//!   `oauth2cli/assertion.py`);
//! - a federated token (workload identity): the same assertion fields, the assertion being
//!   the text of `AZURE_FEDERATED_TOKEN_FILE`, re-read for every request because the
//!   platform rotates it (azure-identity `workload_identity.py`).
//!
//! The authority host is `https://login.microsoftonline.com` unless configured
//! (`AZURE_AUTHORITY_HOST`, as the SDKs read it); plain `http://` is accepted only for a
//! loopback host (tests), never to send a secret across a network.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures::future::BoxFuture;
use sha1::Digest as _;

use super::http::{is_loopback_url, TokenHttp, TokenRequest};
use super::{AccessToken, IdentityError, TokenCredential};

/// The public cloud's authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of a certificate assertion, seconds (MSAL uses 10 min).
const ASSERTION_LIFETIME_SECS: u64 = 600;

/// How the principal proves itself.
#[derive(Clone)]
pub enum Proof {
    /// A client secret.
    Secret(String),
    /// A certificate and its private key.
    Certificate(Box<Certificate>),
    /// A federated token file (workload identity), read per request.
    FederatedTokenFile(PathBuf),
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::Secret(_) => f.write_str("client secret"),
            Proof::Certificate(c) => write!(f, "certificate x5t#S256={}", c.x5t_s256),
            Proof::FederatedTokenFile(p) => write!(f, "federated token file {}", p.display()),
        }
    }
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("x5t#S256", &self.x5t_s256)
            .finish_non_exhaustive()
    }
}

/// A loaded client certificate: the key that signs assertions and the thumbprints.
#[derive(Clone)]
pub struct Certificate {
    key: jsonwebtoken::EncodingKey,
    x5t: String,
    x5t_s256: String,
}

impl Certificate {
    /// Loads a PEM file holding the certificate and its RSA private key (PKCS#8 `PRIVATE
    /// KEY` or PKCS#1 `RSA PRIVATE KEY`), as Azure's "PEM certificate" downloads are.
    pub fn from_pem_file(path: &Path) -> Result<Certificate, IdentityError> {
        let bad = |why: String| {
            IdentityError::Config(format!("client certificate {}: {why}", path.display()))
        };
        let pem = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let cert = ureq::tls::parse_pem(pem.as_bytes())
            .find_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .ok_or_else(|| bad("no -----BEGIN CERTIFICATE----- block".into()))?;
        let key_pem = private_key_block(&pem).ok_or_else(|| {
            bad("no -----BEGIN PRIVATE KEY----- (or RSA PRIVATE KEY) block".into())
        })?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes())
            .map_err(|e| bad(format!("the private key is not a usable RSA key ({e})")))?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Ok(Certificate {
            key,
            x5t: b64.encode(sha1::Sha1::digest(cert.der())),
            x5t_s256: b64.encode(sha2::Sha256::digest(cert.der())),
        })
    }

    /// A signed assertion for `client_id` at `token_endpoint`.
    fn assertion(&self, client_id: &str, token_endpoint: &str) -> Result<String, IdentityError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t = Some(self.x5t.clone());
        header.x5t_s256 = Some(self.x5t_s256.clone());
        let claims = serde_json::json!({
            "aud": token_endpoint,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| IdentityError::Config(format!("cannot sign the client assertion: {e}")))
    }
}

/// The first private key PEM block of `pem`, whole (BEGIN to END line).
fn private_key_block(pem: &str) -> Option<&str> {
    for label in ["PRIVATE KEY", "RSA PRIVATE KEY"] {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(start) = pem.find(&begin) {
            let stop = pem[start..].find(&end)? + start + end.len();
            return Some(&pem[start..stop]);
        }
    }
    None
}

/// A service principal (an app registration) of a tenant.
#[derive(Clone)]
pub struct ClientCredential {
    token_endpoint: String,
    client_id: String,
    proof: Proof,
    http: TokenHttp,
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredential")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("proof", &self.proof)
            .finish()
    }
}

impl ClientCredential {
    /// A credential for `client_id` of `tenant_id` at `authority_host`.
    pub fn new(
        authority_host: &str,
        tenant_id: &str,
        client_id: &str,
        proof: Proof,
    ) -> Result<ClientCredential, IdentityError> {
        let host = authority_host.trim_end_matches('/');
        if !(host.starts_with("https://") || host.starts_with("http://") && is_loopback_url(host)) {
            return Err(IdentityError::Config(format!(
                "authority host {host} must be https:// (plain http only for a loopback test server)"
            )));
        }
        let tenant_ok = !tenant_id.is_empty()
            && tenant_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
        if !tenant_ok {
            return Err(IdentityError::Config(format!(
                "tenant id '{tenant_id}' is not a tenant GUID or domain name"
            )));
        }
        if client_id.trim().is_empty() {
            return Err(IdentityError::Config("the client id is empty".into()));
        }
        Ok(ClientCredential {
            token_endpoint: format!("{host}/{tenant_id}/oauth2/v2.0/token"),
            client_id: client_id.trim().to_string(),
            proof,
            http: TokenHttp::new(),
        })
    }

    /// Where tokens come from, for the start-up log (no secret).
    pub fn describe(&self) -> String {
        format!("{:?}", self)
    }

    fn form(&self, scope: &str) -> Result<Vec<(&'static str, String)>, IdentityError> {
        let mut form = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", self.client_id.clone()),
            ("scope", scope.to_string()),
        ];
        match &self.proof {
            Proof::Secret(s) => form.push(("client_secret", s.clone())),
            Proof::Certificate(c) => {
                form.push(("client_assertion_type", ASSERTION_TYPE.into()));
                form.push((
                    "client_assertion",
                    c.assertion(&self.client_id, &self.token_endpoint)?,
                ));
            }
            Proof::FederatedTokenFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    IdentityError::Config(format!(
                        "cannot read the federated token file {}: {e}",
                        path.display()
                    ))
                })?;
                if text.trim().is_empty() {
                    return Err(IdentityError::Config(format!(
                        "the federated token file {} is empty",
                        path.display()
                    )));
                }
                form.push(("client_assertion_type", ASSERTION_TYPE.into()));
                form.push(("client_assertion", text.trim().to_string()));
            }
        }
        Ok(form)
    }
}

impl TokenCredential for ClientCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<AccessToken, IdentityError>> {
        Box::pin(async move {
            let request = TokenRequest {
                url: self.token_endpoint.clone(),
                headers: vec![("Accept", "application/json".into())],
                form: Some(self.form(scope)?),
            };
            self.http.fetch(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_authority_is_refused_unless_loopback() {
        let p = || Proof::Secret("S3CRET".into());
        assert!(ClientCredential::new("http://login.example", "t", "c", p()).is_err());
        assert!(ClientCredential::new("http://127.0.0.1:9", "t", "c", p()).is_ok());
        let c = ClientCredential::new(DEFAULT_AUTHORITY_HOST, "contoso.onmicrosoft.com", "c", p())
            .unwrap();
        assert_eq!(
            c.token_endpoint,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert!(!format!("{c:?}").contains("S3CRET"));
        assert!(ClientCredential::new(DEFAULT_AUTHORITY_HOST, "a/../b", "c", p()).is_err());
        assert!(ClientCredential::new(DEFAULT_AUTHORITY_HOST, "t", " ", p()).is_err());
    }

    #[test]
    fn a_certificate_assertion_is_signed_for_the_endpoint() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["sp".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sp.pem");
        std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        let c = Certificate::from_pem_file(&path).unwrap();
        let jwt = c
            .assertion("app-1", "http://127.0.0.1:1/t/oauth2/v2.0/token")
            .unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(header.x5t_s256.as_deref(), Some(c.x5t_s256.as_str()));
        let public =
            jsonwebtoken::DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&["http://127.0.0.1:1/t/oauth2/v2.0/token"]);
        v.set_issuer(&["app-1"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&jwt, &public, &v).unwrap();
        assert_eq!(data.claims["sub"], "app-1");
        std::fs::write(&path, cert.pem()).unwrap();
        let e = Certificate::from_pem_file(&path).err().unwrap().to_string();
        assert!(e.contains("PRIVATE KEY"), "{e}");
    }
}
