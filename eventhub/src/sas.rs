//! Shared access signatures (SAS), as Azure makes and checks them.
//!
//! A token is `SharedAccessSignature sr=<url-encoded resource>&sig=<url-encoded base64
//! HMAC-SHA256>&se=<unix expiry>&skn=<policy name>`. The signed string is
//! `<sr as sent>\n<se>`; the HMAC key is the UTF-8 bytes of the policy key as written (not
//! base64-decoded). Every SDK signs exactly the `sr` it sends, with its own percent-encoding
//! (Python upper-case hex, Go and Rust lower-case), so a verifier must HMAC the value as
//! received and never re-encode it.
//!
//! Nothing here logs or formats a key or a signature: [`SasToken`]'s `Debug` redacts `sig`.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Characters left unencoded: RFC 3986 unreserved, like `quote_plus`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes with lower-case hex digits for the resource, as the Go and Rust SDKs do.
fn encode_lower(s: &str) -> String {
    let upper = utf8_percent_encode(s, UNRESERVED).to_string();
    // Lower-case only the two hex digits after each '%'.
    let mut out = String::with_capacity(upper.len());
    let mut chars = upper.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(h) = chars.next() {
                    out.push(h.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

fn hmac_b64(key: &str, message: &str) -> Result<String, SasError> {
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).map_err(|_| SasError::BadKey)?;
    mac.update(message.as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Signs a token for `resource_uri` (e.g. `sb://ns.servicebus.windows.net/hub`) that expires at
/// `expiry_unix` (seconds since the epoch).
pub fn sign(
    resource_uri: &str,
    key_name: &str,
    key: &str,
    expiry_unix: u64,
) -> Result<String, SasError> {
    let sr = encode_lower(resource_uri);
    let sig = hmac_b64(key, &format!("{sr}\n{expiry_unix}"))?;
    Ok(format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry_unix}&skn={}",
        utf8_percent_encode(&sig, UNRESERVED),
        utf8_percent_encode(key_name, UNRESERVED)
    ))
}

/// A parsed token. `sr_raw` and `se_raw` are kept exactly as received, for verification.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    /// The resource as sent (still percent-encoded).
    pub sr_raw: String,
    /// The resource, percent-decoded.
    pub resource: String,
    /// Expiry, unix seconds.
    pub expiry_unix: u64,
    /// The expiry field as sent.
    se_raw: String,
    /// The signature, percent-decoded (base64 text).
    signature: String,
    /// The policy (key) name, percent-decoded.
    pub key_name: String,
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("resource", &self.resource)
            .field("expiry_unix", &self.expiry_unix)
            .field("key_name", &self.key_name)
            .field("signature", &"<redacted>")
            .finish()
    }
}

/// Why a token is not acceptable. Messages never contain a key or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// Not of the form `SharedAccessSignature k=v&k=v…`.
    #[error("token is not a shared access signature (expected 'SharedAccessSignature sr=…&sig=…&se=…&skn=…')")]
    NotSas,
    /// A required field is missing.
    #[error("token has no '{0}' field")]
    MissingField(&'static str),
    /// `se` is not a number.
    #[error("token expiry 'se' is not a unix time in seconds")]
    BadExpiry,
    /// A field is not valid percent-encoded UTF-8.
    #[error("token field '{0}' is not valid percent-encoded UTF-8")]
    BadEncoding(&'static str),
    /// The key cannot be used as an HMAC key.
    #[error("the shared access key cannot be used as an HMAC key")]
    BadKey,
}

impl SasToken {
    /// Parses a token; the parameter order does not matter.
    pub fn parse(token: &str) -> Result<SasToken, SasError> {
        let rest = token
            .trim()
            .strip_prefix("SharedAccessSignature ")
            .ok_or(SasError::NotSas)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for pair in rest.trim().split('&') {
            let (k, v) = pair.split_once('=').ok_or(SasError::NotSas)?;
            match k {
                "sr" => sr = Some(v),
                "sig" => sig = Some(v),
                "se" => se = Some(v),
                "skn" => skn = Some(v),
                _ => {}
            }
        }
        let sr_raw = sr.ok_or(SasError::MissingField("sr"))?;
        let sig = sig.ok_or(SasError::MissingField("sig"))?;
        let se_raw = se.ok_or(SasError::MissingField("se"))?;
        let skn = skn.ok_or(SasError::MissingField("skn"))?;
        let decode = |v: &str, field: &'static str| {
            percent_decode_str(v)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| SasError::BadEncoding(field))
        };
        Ok(SasToken {
            sr_raw: sr_raw.to_string(),
            resource: decode(sr_raw, "sr")?,
            expiry_unix: se_raw.parse().map_err(|_| SasError::BadExpiry)?,
            se_raw: se_raw.to_string(),
            signature: decode(sig, "sig")?,
            key_name: decode(skn, "skn")?,
        })
    }

    /// True when the signature was made with `key`. Compares in constant time.
    pub fn verify(&self, key: &str) -> bool {
        let Ok(mut mac) = HmacSha256::new_from_slice(key.as_bytes()) else {
            return false;
        };
        mac.update(format!("{}\n{}", self.sr_raw, self.se_raw).as_bytes());
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(self.signature.as_bytes())
        else {
            return false;
        };
        mac.verify_slice(&sig).is_ok()
    }

    /// True when this token's resource covers `path` (an entity path such as
    /// `hub/consumergroups/$default/partitions/0`): scheme, host and port are ignored and the
    /// token's path must be a case-insensitive prefix of it on a segment boundary.
    pub fn covers(&self, path: &str) -> bool {
        covers(&self.resource, path)
    }
}

/// True when the resource URI (or audience) `resource` covers the entity path `path`.
pub fn covers(resource: &str, path: &str) -> bool {
    let own = resource_path(resource);
    let path = path.trim_matches('/').to_ascii_lowercase();
    own.is_empty() || path == own || path.starts_with(&format!("{own}/"))
}

/// The lower-case path of a resource URI or audience, without scheme, host and port.
pub fn resource_path(resource: &str) -> String {
    let r = resource.trim();
    let path = match r.find("://") {
        Some(i) => match r[i + 3..].find('/') {
            Some(j) => &r[i + 3 + j..],
            None => "",
        },
        // A bare host ("ns.servicebus.windows.net/hub") or a bare path.
        None => match r.find('/') {
            Some(j) if r[..j].contains('.') || r[..j].contains(':') => &r[j..],
            Some(_) => r,
            None if r.contains('.') || r.contains(':') => "",
            None => r,
        },
    };
    path.trim_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vector from the reference notes (verified with Python hmac).
    #[test]
    fn sign_matches_reference_vector() {
        let t = sign(
            "amqps://example.servicebus.windows.net/myhub",
            "RootManageSharedAccessKey",
            "mykey",
            1_700_000_000,
        )
        .unwrap();
        assert!(t.starts_with("SharedAccessSignature sr=amqps%3a%2f%2fexample.servicebus.windows.net%2fmyhub&sig=SgJoMn7K6nWDCF6e1%2BfsxrmJLsorqPeZ3B8N1uQ31dc%3D&se=1700000000&skn=RootManageSharedAccessKey"), "{t}");
    }

    #[test]
    fn parse_and_verify_round_trip_and_detect_tampering() {
        let t = sign("sb://h:5671/hub", "send", "k1", 4_000_000_000).unwrap();
        let p = SasToken::parse(&t).unwrap();
        assert_eq!(p.resource, "sb://h:5671/hub");
        assert_eq!(p.key_name, "send");
        assert!(p.verify("k1"));
        assert!(!p.verify("k2"));
        let tampered = t.replace("se=4000000000", "se=4000000001");
        assert!(!SasToken::parse(&tampered).unwrap().verify("k1"));
    }

    /// Python signs with upper-case percent-encoding; the verifier must HMAC `sr` as sent.
    #[test]
    fn verifies_upper_case_encoded_resource_as_sent() {
        let sr = "sb%3A%2F%2F127.0.0.1%3A5674%2Fhub";
        let sig = hmac_b64("v", &format!("{sr}\n1795694815")).unwrap();
        let token = format!(
            "SharedAccessSignature sr={sr}&sig={}&se=1795694815&skn=k",
            utf8_percent_encode(&sig, UNRESERVED)
        );
        let p = SasToken::parse(&token).unwrap();
        assert!(p.verify("v"));
        assert_eq!(p.resource, "sb://127.0.0.1:5674/hub");
    }

    #[test]
    fn parse_errors_name_the_field_and_never_echo_secrets() {
        let e = SasToken::parse("SharedAccessSignature sr=x&se=1&skn=k").unwrap_err();
        assert_eq!(e, SasError::MissingField("sig"));
        assert_eq!(SasToken::parse("Bearer abc").unwrap_err(), SasError::NotSas);
        let e = SasToken::parse("SharedAccessSignature sr=x&sig=SECRET&se=soon&skn=k").unwrap_err();
        assert!(!e.to_string().contains("SECRET"));
        let p = SasToken::parse("SharedAccessSignature sr=x&sig=SECRET&se=1&skn=k").unwrap();
        assert!(!format!("{p:?}").contains("SECRET"));
    }

    #[test]
    fn audiences_cover_by_path_prefix_ignoring_scheme_host_and_case() {
        assert!(covers("sb://localhost:5671/hub", "hub/partitions/0"));
        assert!(covers("amqps://x/Hub", "hub"));
        assert!(covers(
            "sb://ns.servicebus.windows.net/",
            "other/partitions/1"
        ));
        assert!(covers(
            "sb://h/hub/consumergroups/$default",
            "hub/consumergroups/$default/partitions/2"
        ));
        assert!(!covers("sb://h/hub", "hub2"));
        assert!(!covers(
            "sb://h/hub/consumergroups/a",
            "hub/consumergroups/b/partitions/0"
        ));
        assert!(covers("ns.servicebus.windows.net/hub", "hub"));
    }
}
