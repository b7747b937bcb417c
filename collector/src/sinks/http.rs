//! One HTTP write of line protocol, shared by the InfluxDB v1 and v2 sinks: optional gzip,
//! status classification, and `Retry-After` parsing.
//!
//! | status | outcome |
//! | --- | --- |
//! | 2xx | stored |
//! | 400, 422 | [`WriteError::Rejected`]: split to isolate the refused lines, which are dead-lettered with the server's message |
//! | 413 | [`WriteError::TooLarge`]: split and resent |
//! | 429, 503 | retried after `Retry-After` (else backoff) |
//! | 401, 403, 404, other 4xx, 5xx | retried with backoff and a hint (fix token, org, bucket or database; nothing is dropped meanwhile) |

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};

use super::WriteError;

/// Longest server message kept, in bytes.
const MAX_MESSAGE_BYTES: usize = 2048;

/// A prepared write endpoint: URL with query, auth header, gzip on or off.
#[derive(Clone)]
pub struct HttpWriter {
    client: reqwest::Client,
    url: reqwest::Url,
    authorization: Option<HeaderValue>,
    gzip: bool,
}

impl std::fmt::Debug for HttpWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the authorization header.
        f.debug_struct("HttpWriter")
            .field("url", &self.url.as_str())
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("gzip", &self.gzip)
            .finish()
    }
}

/// Why an HTTP writer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpBuildError {
    /// The URL does not parse or is not http(s).
    #[error("invalid store URL {url:?}: {why}")]
    Url {
        /// The URL as configured.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The secret has characters a header cannot carry.
    #[error("the store credential contains characters that cannot be sent in an HTTP header")]
    Credential,
    /// The HTTP client could not be created (TLS setup).
    #[error("cannot create the HTTP client: {0}")]
    Client(String),
}

/// An HTTP client with the given request timeout (rustls, the OS trust store).
pub fn client(timeout: Duration) -> Result<reqwest::Client, HttpBuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| HttpBuildError::Client(e.to_string()))
}

/// `base` joined with `path` and `query`, checking the scheme.
pub fn endpoint(
    base: &str,
    path: &str,
    query: &[(&str, &str)],
) -> Result<reqwest::Url, HttpBuildError> {
    let bad = |why: String| HttpBuildError::Url {
        url: base.to_owned(),
        why,
    };
    let mut url = reqwest::Url::parse(base).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "put credentials in the token/password settings (env or file), not in the URL".into(),
        ));
    }
    let joined = format!(
        "{}/{}",
        url.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url.set_query(None);
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            if !v.is_empty() {
                pairs.append_pair(k, v);
            }
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

impl HttpWriter {
    /// A writer posting to `url` with an optional `Authorization` header value.
    pub fn new(
        client: reqwest::Client,
        url: reqwest::Url,
        authorization: Option<String>,
        gzip: bool,
    ) -> Result<Self, HttpBuildError> {
        let authorization = match authorization {
            Some(a) => {
                let mut v = HeaderValue::from_str(&a).map_err(|_| HttpBuildError::Credential)?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(HttpWriter {
            client,
            url,
            authorization,
            gzip,
        })
    }

    /// The endpoint (without credentials).
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// True when requests carry an `Authorization` header.
    pub fn has_credential(&self) -> bool {
        self.authorization.is_some()
    }

    /// POSTs `body` once and classifies the answer.
    pub async fn post(&self, body: &Bytes) -> Result<(), WriteError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(auth) = &self.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        let payload = if self.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            gzip(body).map_err(|e| WriteError::Retryable {
                error_type: "gzip".into(),
                message: e.to_string(),
                retry_after: None,
            })?
        } else {
            body.clone()
        };
        let response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(payload)
            .send()
            .await
            .map_err(|e| {
                let error_type = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                WriteError::Retryable {
                    error_type: error_type.into(),
                    message: format!("{}: {}", self.url, error_chain(&e)),
                    retry_after: None,
                }
            })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let text = response.text().await.unwrap_or_default();
        Err(classify(status, &text, retry_after))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// gzip at the fastest level: line protocol compresses ~10x even so.
pub fn gzip(body: &[u8]) -> std::io::Result<Bytes> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body)?;
    Ok(Bytes::from(enc.finish()?))
}

/// The outcome of a non-2xx answer. See the module docs.
pub fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> WriteError {
    let message = server_message(body);
    match status {
        400 | 422 => WriteError::Rejected { status, message },
        413 => WriteError::TooLarge { message },
        _ => {
            let hint = match status {
                401 | 403 => " (check the token or user/password)",
                404 => " (check the URL, org and bucket, or create the database)",
                _ => "",
            };
            WriteError::Retryable {
                error_type: format!("http_{status}"),
                message: format!("HTTP {status}{hint}: {message}"),
                retry_after,
            }
        }
    }
}

/// The useful part of an error body: InfluxDB's JSON `message`/`error`, else the text,
/// capped.
pub fn server_message(body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "error"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_owned))
        });
    let mut msg = from_json.unwrap_or_else(|| body.trim().to_owned());
    if msg.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
    }
    msg
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
/// A date in the past is zero; anything else unparsable is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Thu, 26 Nov 2026 10:00:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn statuses_map_to_reject_split_or_retry() {
        assert_eq!(
            classify(
                400,
                r#"{"code":"invalid","message":"unable to parse 'x': missing fields"}"#,
                None
            ),
            WriteError::Rejected {
                status: 400,
                message: "unable to parse 'x': missing fields".into()
            }
        );
        assert_eq!(
            classify(
                400,
                r#"{"error":"partial write: field type conflict"}"#,
                None
            ),
            WriteError::Rejected {
                status: 400,
                message: "partial write: field type conflict".into()
            }
        );
        assert!(matches!(
            classify(422, "", None),
            WriteError::Rejected { status: 422, .. }
        ));
        assert!(matches!(
            classify(413, "too big", None),
            WriteError::TooLarge { .. }
        ));
        match classify(429, "slow down", Some(Duration::from_secs(7))) {
            WriteError::Retryable {
                error_type,
                retry_after,
                ..
            } => {
                assert_eq!(error_type, "http_429");
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
            }
            other => panic!("{other:?}"),
        }
        for status in [401, 403, 404, 500, 502, 503, 504] {
            assert!(
                matches!(classify(status, "", None), WriteError::Retryable { .. }),
                "{status}"
            );
        }
        match classify(404, "database not found: \"x\"", None) {
            WriteError::Retryable { message, .. } => {
                assert!(message.contains("create the database"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let long = "é".repeat(5000);
        assert!(server_message(&long).len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn endpoints_join_paths_and_refuse_credentials_in_urls() {
        let u = endpoint(
            "http://127.0.0.1:8428/",
            "/api/v2/write",
            &[("org", "o"), ("bucket", "b c"), ("precision", "ns")],
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:8428/api/v2/write?org=o&bucket=b+c&precision=ns"
        );
        let u = endpoint("https://host/influx", "write", &[("db", "tc"), ("rp", "")]).unwrap();
        assert_eq!(u.as_str(), "https://host/influx/write?db=tc");
        assert!(endpoint("ftp://x", "write", &[]).is_err());
        assert!(endpoint("http://user:pw@x", "write", &[]).is_err());
        assert!(endpoint("not a url", "write", &[]).is_err());
    }

    #[test]
    fn gzip_round_trips() {
        let body = b"tc_instance,connector=c up=1i 1\n".repeat(100);
        let gz = gzip(&body).unwrap();
        assert!(gz.len() < body.len() / 5);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
