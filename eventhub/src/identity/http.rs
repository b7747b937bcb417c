//! The token requests: a blocking `ureq` agent (rustls on the process's aws-lc-rs provider,
//! the platform verifier) run on tokio's blocking pool, response parsing and error mapping.
//!
//! Token responses come in three shapes, all read by [`parse_token`]:
//! - Entra's v2 token endpoint: `{"token_type","expires_in": 3599, "access_token"}` (numbers);
//! - IMDS (api-version 2018-02-01): `expires_in` and `expires_on` as decimal strings;
//! - App Service (2019-08-01): `expires_on` as a decimal string (unix seconds).
//!
//! (azure-identity 1.27.0 `_internal/managed_identity_client.py:76-80` and
//! `_credentials/imds.py` read the same fields.) `expires_in` wins when both are present:
//! it does not depend on this machine's clock agreeing with the endpoint's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use ureq::tls::{RootCerts, TlsConfig};

use super::{AccessToken, IdentityError};

/// Longest a token request may take (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest token response read.
const MAX_BODY_BYTES: u64 = 64 << 10;

/// A request to make: method, URL, headers, form body.
#[derive(Clone)]
pub struct TokenRequest {
    /// The URL (with its query).
    pub url: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// `application/x-www-form-urlencoded` pairs for a POST; `None` makes a GET.
    pub form: Option<Vec<(&'static str, String)>>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("endpoint", &endpoint_of(&self.url))
            .finish_non_exhaustive()
    }
}

/// The HTTP client of the credentials.
#[derive(Debug, Clone)]
pub struct TokenHttp {
    agent: ureq::Agent,
}

impl Default for TokenHttp {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenHttp {
    /// A client with [`REQUEST_TIMEOUT`], no redirects (credentials must not travel), the
    /// operating system's trust store.
    pub fn new() -> TokenHttp {
        let tls = TlsConfig::builder()
            .unversioned_rustls_crypto_provider(crate::tls::crypto_provider())
            .root_certs(RootCerts::PlatformVerifier)
            .build();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("tcpulse/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build();
        TokenHttp {
            agent: agent.into(),
        }
    }

    /// Sends `request` and parses the token it answers.
    pub async fn fetch(&self, request: TokenRequest) -> Result<AccessToken, IdentityError> {
        let this = self.clone();
        let endpoint = endpoint_of(&request.url);
        let task = tokio::task::spawn_blocking(move || this.fetch_blocking(&request));
        match task.await {
            Ok(r) => r,
            Err(e) => Err(IdentityError::Unreachable {
                endpoint,
                why: format!("request task failed: {e}"),
                hint: "retrying",
            }),
        }
    }

    fn fetch_blocking(&self, request: &TokenRequest) -> Result<AccessToken, IdentityError> {
        let endpoint = endpoint_of(&request.url);
        let unreachable = |e: ureq::Error| IdentityError::Unreachable {
            endpoint: endpoint.clone(),
            why: e.to_string(),
            hint: "check the endpoint address, the network and any proxy in between",
        };
        let mut response = match &request.form {
            None => {
                let mut req = self.agent.get(&request.url);
                for (k, v) in &request.headers {
                    req = req.header(*k, v);
                }
                req.call().map_err(unreachable)?
            }
            Some(form) => {
                let mut req = self.agent.post(&request.url);
                for (k, v) in &request.headers {
                    req = req.header(*k, v);
                }
                req.send_form(form.iter().map(|(k, v)| (*k, v.as_str())))
                    .map_err(unreachable)?
            }
        };
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_string()
            .map_err(unreachable)?;
        if !(200..300).contains(&status) {
            return Err(refused(&endpoint, status, &body));
        }
        parse_token(&body, SystemTime::now()).map_err(|why| IdentityError::BadResponse {
            endpoint: endpoint.clone(),
            why,
        })
    }
}

/// `scheme://host[:port]/path` of a URL: what errors and logs may name (no query: it can
/// carry a client id, and a secret must never be in one anyway).
pub fn endpoint_of(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_string()
}

/// An error answer: the OAuth `error` and `error_description` when the body is JSON (Entra,
/// IMDS and App Service all answer so), else the body's first 200 characters.
pub fn refused(endpoint: &str, status: u16, body: &str) -> IdentityError {
    let json: Option<Value> = serde_json::from_str(body).ok();
    let field = |k: &str| {
        json.as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let error = field("error").unwrap_or_else(|| "-".into());
    let description = field("error_description")
        .or_else(|| field("message"))
        .unwrap_or_else(|| body.chars().take(200).collect::<String>());
    IdentityError::Refused {
        endpoint: endpoint.to_string(),
        status,
        error,
        description: description.lines().next().unwrap_or_default().to_string(),
    }
}

fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads `access_token` and its expiry (`expires_on`, unix seconds, else `now +
/// expires_in`) from a token response.
pub fn parse_token(body: &str, now: SystemTime) -> Result<AccessToken, String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("the answer is not JSON ({e})"))?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("no access_token in the answer")?;
    // `expires_in` (relative) wins: it stays right when this machine's clock is off, where
    // `expires_on` (the endpoint's clock) would make a renewal early or late by the skew.
    let expires_at = match (number(v.get("expires_in")), number(v.get("expires_on"))) {
        (Some(secs), _) => now.checked_add(Duration::from_secs(secs)),
        (None, Some(on)) => UNIX_EPOCH.checked_add(Duration::from_secs(on)),
        (None, None) => return Err("neither expires_in nor expires_on in the answer".into()),
    }
    .ok_or("the token's expiry is out of range")?;
    Ok(AccessToken {
        token: token.to_string(),
        expires_at,
    })
}

/// True for `localhost`, `127.0.0.0/8` and `[::1]` URLs: the only hosts a secret may be
/// sent to over plain HTTP (tests and local token servers).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_response_shapes_parse() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let entra = r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"a.b.c"}"#;
        let t = parse_token(entra, now).unwrap();
        assert_eq!(t.expires_at, now + Duration::from_secs(3599));
        // IMDS sends both; the relative one is used (this clock may be minutes off).
        let imds = r#"{"access_token":"x","expires_in":"60","expires_on":"2000","resource":"r","token_type":"Bearer"}"#;
        assert_eq!(
            parse_token(imds, now).unwrap().expires_at,
            now + Duration::from_secs(60)
        );
        let app = r#"{"access_token":"x","expires_on":"1586984735","token_type":"Bearer"}"#;
        assert_eq!(
            parse_token(app, now).unwrap().expires_at,
            UNIX_EPOCH + Duration::from_secs(1_586_984_735)
        );
        // Values at the edge of the type are refused, not a panic.
        let huge = format!(r#"{{"access_token":"x","expires_on":"{}"}}"#, u64::MAX);
        assert!(parse_token(&huge, now).is_err());
        let huge = format!(r#"{{"access_token":"x","expires_in":{}}}"#, u64::MAX);
        assert!(parse_token(&huge, now).is_err());
        assert!(parse_token(r#"{"access_token":"x","expires_in":-5}"#, now).is_err());
        assert!(parse_token(r#"{"access_token":""}"#, now).is_err());
        assert!(parse_token(r#"{"access_token":"x"}"#, now).is_err());
        assert!(parse_token("<html>", now).is_err());
    }

    #[test]
    fn refusals_name_the_oauth_error_and_not_the_query() {
        let e = refused(
            &endpoint_of("http://h/t/oauth2/v2.0/token?x=1"),
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1"}"#,
        );
        let text = e.to_string();
        assert!(
            text.contains("HTTP 401 invalid_client: AADSTS7000215"),
            "{text}"
        );
        assert!(!text.contains("x=1") && !text.contains("Trace"), "{text}");
        assert!(!e.is_transient());
        assert!(refused("e", 503, "busy").is_transient());
        assert!(refused("e", 429, "{}").is_transient());
    }

    #[test]
    fn only_loopback_hosts_count_as_loopback() {
        for u in [
            "http://127.0.0.1:8080/x",
            "http://localhost/x",
            "http://[::1]:1/",
            "http://127.1.2.3",
        ] {
            assert!(is_loopback_url(u), "{u}");
        }
        for u in [
            "http://169.254.169.254/x",
            "http://login.microsoftonline.com",
            "http://127.0.0.1.evil.com/",
            "http://[::2]/",
        ] {
            assert!(!is_loopback_url(u), "{u}");
        }
    }
}
