//! How requests to the Blob service are authorized: [`BlobAuth`].
//!
//! - [`BlobAuth::SharedKey`]: the storage account's key signs each request (Shared Key
//!   authorization, HMAC-SHA256 with aws-lc-rs, the process's one crypto provider). This is
//!   what Azurite's development account and a connection string give.
//! - [`BlobAuth::Bearer`]: an Entra ID access token for `https://storage.azure.com/`, sent as
//!   `Authorization: Bearer …` (the role the identity needs: *Storage Blob Data
//!   Contributor* on the container), from the same Entra ID credentials the Event Hubs side
//!   uses (`checkpoint.azure_blob.auth`, built in [`super::config`]).
//!
//! The Shared Key string to sign, from "Authorize with Shared Key"
//! (<https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key>,
//! "Blob, Queue, and File services (Shared Key authorization)"):
//!
//! ```text
//! VERB \n Content-Encoding \n Content-Language \n Content-Length (empty when 0) \n
//! Content-MD5 \n Content-Type \n Date (empty: x-ms-date is sent) \n If-Modified-Since \n
//! If-Match \n If-None-Match \n If-Unmodified-Since \n Range \n
//! CanonicalizedHeaders (x-ms-* lower-cased, sorted, `name:value\n`)
//! CanonicalizedResource (`/<account><encoded path>` then `\n<param>:<value>` per query
//! parameter, names lower-cased and sorted, values decoded)
//! ```
//!
//! The signature is `Base64(HMAC-SHA256(Base64Decode(key), UTF8(string to sign)))`, sent as
//! `Authorization: SharedKey <account>:<signature>`. For Azurite's path-style URLs the
//! account appears twice in the resource (`/devstoreaccount1/devstoreaccount1/<container>`):
//! the path already starts with it, as the same page says for the emulator.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use futures::future::BoxFuture;

/// Supplies Entra ID access tokens for Azure Storage (scope
/// `https://storage.azure.com/.default`), refreshing them as needed.
pub trait BearerTokenSource: Send + Sync + fmt::Debug + 'static {
    /// A token valid for at least the next request.
    fn token(&self) -> BoxFuture<'_, Result<String, String>>;
}

/// How requests are authorized.
#[derive(Clone)]
pub enum BlobAuth {
    /// The storage account's shared key.
    SharedKey(SharedKey),
    /// An Entra ID bearer token.
    Bearer(Arc<dyn BearerTokenSource>),
}

impl fmt::Debug for BlobAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobAuth::SharedKey(k) => f.debug_tuple("SharedKey").field(k).finish(),
            BlobAuth::Bearer(s) => f.debug_tuple("Bearer").field(s).finish(),
        }
    }
}

/// An account name and its decoded key. `Debug` never shows the key.
#[derive(Clone)]
pub struct SharedKey {
    account: String,
    key: Vec<u8>,
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKey")
            .field("account", &self.account)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SharedKey {
    /// `account` with its Base64 `key` (as the portal and connection strings show it).
    pub fn new(account: &str, key_base64: &str) -> Result<Self, String> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(key_base64.trim())
            .map_err(|_| {
                "the account key is not Base64 (copy key1 or key2 of the storage account as shown)"
                    .to_string()
            })?;
        if account.is_empty() {
            return Err("no account name".into());
        }
        Ok(SharedKey {
            account: account.to_owned(),
            key,
        })
    }

    /// The account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The `Authorization` header value for `request`.
    pub fn authorization(&self, request: &SignedParts<'_>) -> String {
        let to_sign = string_to_sign(&self.account, request);
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.key);
        let tag = aws_lc_rs::hmac::sign(&key, to_sign.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        format!("SharedKey {}:{sig}", self.account)
    }
}

/// The parts of a request that Shared Key signs.
#[derive(Debug, Clone, Default)]
pub struct SignedParts<'a> {
    /// `GET`, `PUT`, `DELETE`, …
    pub method: &'a str,
    /// Body length in bytes.
    pub content_length: usize,
    /// `Content-Type`, when sent.
    pub content_type: Option<&'a str>,
    /// `If-Match`, when sent.
    pub if_match: Option<&'a str>,
    /// `If-None-Match`, when sent.
    pub if_none_match: Option<&'a str>,
    /// Every `x-ms-*` header sent (any case).
    pub ms_headers: &'a [(String, String)],
    /// The URL path exactly as sent (percent-encoded).
    pub path: &'a str,
    /// Query parameters, decoded.
    pub query: &'a [(String, String)],
}

/// The Shared Key string to sign (see the module docs).
pub fn string_to_sign(account: &str, r: &SignedParts<'_>) -> String {
    let length = if r.content_length == 0 {
        String::new()
    } else {
        r.content_length.to_string()
    };
    let mut s = format!(
        "{}\n\n\n{length}\n\n{}\n\n\n{}\n{}\n\n\n",
        r.method,
        r.content_type.unwrap_or(""),
        r.if_match.unwrap_or(""),
        r.if_none_match.unwrap_or(""),
    );
    let mut headers: Vec<(String, String)> = r
        .ms_headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), fold_whitespace(v)))
        .collect();
    headers.sort();
    for (k, v) in headers {
        s.push_str(&format!("{k}:{v}\n"));
    }
    s.push('/');
    s.push_str(account);
    s.push_str(r.path);
    let mut params: Vec<(String, String)> = r
        .query
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    params.sort();
    for (k, v) in params {
        s.push_str(&format!("\n{k}:{v}"));
    }
    s
}

/// A header value with runs of whitespace folded to one space and the ends trimmed.
fn fold_whitespace(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_to_sign_follows_the_documented_order() {
        let ms = vec![
            ("x-ms-version".to_string(), "2023-11-03".to_string()),
            (
                "x-ms-date".to_string(),
                "Fri, 26 Jun 2015 23:39:12 GMT".to_string(),
            ),
            ("x-ms-meta-ownerid".to_string(), "c1  /x".to_string()),
        ];
        let query = vec![
            ("restype".to_string(), "container".to_string()),
            ("comp".to_string(), "list".to_string()),
            (
                "prefix".to_string(),
                "ns/hub/$default/ownership/".to_string(),
            ),
        ];
        let parts = SignedParts {
            method: "GET",
            if_match: Some("\"0x1\""),
            ms_headers: &ms,
            path: "/devstoreaccount1/checkpoints",
            query: &query,
            ..SignedParts::default()
        };
        assert_eq!(
            string_to_sign("devstoreaccount1", &parts),
            "GET\n\n\n\n\n\n\n\n\"0x1\"\n\n\n\n\
             x-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\nx-ms-meta-ownerid:c1 /x\nx-ms-version:2023-11-03\n\
             /devstoreaccount1/devstoreaccount1/checkpoints\ncomp:list\nprefix:ns/hub/$default/ownership/\nrestype:container"
        );
    }

    /// HMAC-SHA256 known answer (RFC 4231 test case 2: key "Jefe"), through the Shared Key
    /// path: the signature is Base64 of the tag.
    #[test]
    fn the_signature_is_base64_hmac_sha256_of_the_string() {
        let key = SharedKey::new(
            "acct",
            &base64::engine::general_purpose::STANDARD.encode("Jefe"),
        )
        .unwrap();
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key.key),
            b"what do ya want for nothing?",
        );
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(format!("{key:?}").contains("<redacted>"));
        assert!(SharedKey::new("acct", "not base64!").is_err());
    }
}
