//! The Blob service REST calls the store needs, over the collector's reqwest client (rustls
//! on aws-lc-rs), each authorized by [`BlobAuth`]:
//!
//! | call | request | docs |
//! | --- | --- | --- |
//! | [`BlobClient::list`] | `GET <container>?restype=container&comp=list&prefix=…&include=metadata` | List Blobs |
//! | [`BlobClient::get`] | `GET <blob>` (body and `x-ms-meta-*`) | Get Blob |
//! | [`BlobClient::put`] | `PUT <blob>`, `x-ms-blob-type: BlockBlob`, metadata, optional `If-Match`/`If-None-Match` | Put Blob |
//! | [`BlobClient::set_metadata`] | `PUT <blob>?comp=metadata`, optional `If-Match` | Set Blob Metadata |
//! | [`BlobClient::create_container`] | `PUT <container>?restype=container` | Create Container |
//!
//! (<https://learn.microsoft.com/rest/api/storageservices/blob-service-rest-api>.) Every
//! request carries `x-ms-version` [`API_VERSION`] and `x-ms-date`. Blob names are
//! percent-encoded per path segment like the Python SDK does (`quote(name, safe="~/")`:
//! everything but unreserved characters and `/`), and that encoded path is what Shared Key
//! signs.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH};
use reqwest::{Method, StatusCode};

/// The URL type the client takes (reqwest's).
pub use reqwest::Url;

use super::auth::{BlobAuth, SignedParts};
use super::xml::{parse_list, ListedBlob};

/// The REST API version sent (`x-ms-version`); Shared Key and conditional headers work the
/// same in every version since 2015-02-21.
pub const API_VERSION: &str = "2023-11-03";

/// A failed Blob request.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct BlobError {
    /// What was attempted (`list`, `get`, `put`, `set_metadata`, `create_container`).
    pub operation: &'static str,
    /// The HTTP status, when the service answered.
    pub status: Option<u16>,
    /// The service's `x-ms-error-code`, when it gave one.
    pub code: Option<String>,
    /// What went wrong, with what to do.
    pub message: String,
}

impl BlobError {
    fn transport(operation: &'static str, e: &reqwest::Error) -> Self {
        BlobError {
            operation,
            status: None,
            code: None,
            message: format!("request failed: {e}"),
        }
    }

    /// True when another writer won a conditional write (412 `ConditionNotMet`, 409
    /// `BlobAlreadyExists`): a lost race, not a failure.
    pub fn is_lost_race(&self) -> bool {
        matches!(self.status, Some(412 | 409))
    }

    /// True when the blob (or container) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
}

/// What a write or read answered: the blob's new ETag and Last-Modified, and the
/// service's clock (`Date`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The ETag, quoted as the service sends it.
    pub etag: String,
    /// Last-Modified, ms since the Unix epoch.
    pub last_modified_ms: i64,
    /// The service's `Date`, ms since the Unix epoch.
    pub server_time_ms: i64,
}

/// A blob read with [`BlobClient::get`].
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The body.
    pub body: Vec<u8>,
    /// `x-ms-meta-*` without the prefix, lower-cased.
    pub metadata: Vec<(String, String)>,
    /// Last-Modified, ms since the Unix epoch.
    pub last_modified_ms: Option<i64>,
}

/// Every blob under a prefix, and the service's clock when it listed them.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The blobs.
    pub blobs: Vec<ListedBlob>,
    /// The service's `Date` of the last page, ms since the Unix epoch.
    pub server_time_ms: i64,
}

/// A Blob container reached over HTTP(S).
#[derive(Debug, Clone)]
pub struct BlobClient {
    http: reqwest::Client,
    /// The container URL, no trailing slash.
    container: Url,
    auth: BlobAuth,
}

/// One request before it is signed.
struct Request<'a> {
    operation: &'static str,
    method: Method,
    blob: Option<&'a str>,
    query: Vec<(String, String)>,
    ms_headers: Vec<(String, String)>,
    if_match: Option<&'a str>,
    if_none_match: Option<&'a str>,
    content_type: Option<&'a str>,
    body: Vec<u8>,
}

impl<'a> Request<'a> {
    fn new(operation: &'static str, method: Method, blob: Option<&'a str>) -> Self {
        Request {
            operation,
            method,
            blob,
            query: Vec::new(),
            ms_headers: Vec::new(),
            if_match: None,
            if_none_match: None,
            content_type: None,
            body: Vec::new(),
        }
    }

    fn query(mut self, k: &str, v: &str) -> Self {
        self.query.push((k.to_owned(), v.to_owned()));
        self
    }

    fn metadata(mut self, metadata: &[(&str, &str)]) -> Self {
        for (k, v) in metadata {
            self.ms_headers
                .push((format!("x-ms-meta-{k}"), (*v).to_owned()));
        }
        self
    }
}

/// `s` percent-encoded except unreserved characters and `/` (Python's `quote(s, "~/")`).
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_query(s: &str) -> String {
    encode_path(s).replace('/', "%2F")
}

fn http_date_ms(v: Option<&reqwest::header::HeaderValue>) -> Option<i64> {
    let t = httpdate::parse_http_date(v?.to_str().ok()?).ok()?;
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Parses an RFC 1123 date (a listing's `Last-Modified`) to ms since the Unix epoch.
pub fn parse_rfc1123_ms(v: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(v).ok()?;
    i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis()).ok()
}

impl BlobClient {
    /// A client for `container` (`https://<account>.blob.core.windows.net/<container>`, or
    /// Azurite's `http://127.0.0.1:<port>/<account>/<container>`), each request timing out
    /// after `timeout`.
    pub fn new(container: Url, auth: BlobAuth, timeout: Duration) -> Result<Self, String> {
        Self::with_extra_ca(container, auth, timeout, None)
    }

    /// [`new`](Self::new), trusting the certificates of `extra_ca_pem` besides the built-in
    /// roots (a private CA, a TLS-inspecting proxy's).
    pub fn with_extra_ca(
        container: Url,
        auth: BlobAuth,
        timeout: Duration,
        extra_ca_pem: Option<&[u8]>,
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout);
        if let Some(pem) = extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("extra CA file: {e}"))?;
            if certs.is_empty() {
                return Err("extra CA file holds no PEM certificate".into());
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        let mut container = container;
        let path = container.path().trim_end_matches('/').to_owned();
        container.set_path(&path);
        container.set_query(None);
        Ok(BlobClient {
            http,
            container,
            auth,
        })
    }

    /// The container URL.
    pub fn container_url(&self) -> &Url {
        &self.container
    }

    async fn send(&self, req: Request<'_>) -> Result<reqwest::Response, BlobError> {
        let op = req.operation;
        let mut url = self.container.clone();
        let path = match req.blob {
            Some(b) => format!("{}/{}", self.container.path(), encode_path(b)),
            None => self.container.path().to_owned(),
        };
        url.set_path(&path);
        let query: Vec<String> = req
            .query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_query(v)))
            .collect();
        url.set_query((!query.is_empty()).then(|| query.join("&")).as_deref());
        let mut ms = req.ms_headers;
        ms.push(("x-ms-version".into(), API_VERSION.into()));
        ms.push((
            "x-ms-date".into(),
            httpdate::fmt_http_date(SystemTime::now()),
        ));
        let mut headers = HeaderMap::new();
        for (k, v) in &ms {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes());
            let value = reqwest::header::HeaderValue::from_str(v);
            match (name, value) {
                (Ok(n), Ok(v)) => {
                    headers.insert(n, v);
                }
                _ => {
                    return Err(BlobError {
                        operation: op,
                        status: None,
                        code: None,
                        message: format!("header {k} cannot carry its value (ASCII only)"),
                    })
                }
            }
        }
        let authorization = match &self.auth {
            BlobAuth::SharedKey(key) => key.authorization(&SignedParts {
                method: req.method.as_str(),
                content_length: req.body.len(),
                content_type: req.content_type,
                if_match: req.if_match,
                if_none_match: req.if_none_match,
                ms_headers: &ms,
                path: url.path(),
                query: &req.query,
            }),
            BlobAuth::Bearer(source) => {
                let token = source.token().await.map_err(|e| BlobError {
                    operation: op,
                    status: None,
                    code: None,
                    message: format!("no Entra ID token for Azure Storage: {e}"),
                })?;
                format!("Bearer {token}")
            }
        };
        let mut builder = self
            .http
            .request(req.method, url)
            .headers(headers)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(CONTENT_LENGTH, req.body.len());
        if let Some(v) = req.content_type {
            builder = builder.header(CONTENT_TYPE, v);
        }
        if let Some(v) = req.if_match {
            builder = builder.header(IF_MATCH, v);
        }
        if let Some(v) = req.if_none_match {
            builder = builder.header(IF_NONE_MATCH, v);
        }
        let resp = builder
            .body(req.body)
            .send()
            .await
            .map_err(|e| BlobError::transport(op, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(status_error(op, resp).await)
    }

    /// Every blob whose name starts with `prefix`, with metadata (all pages).
    pub async fn list(&self, prefix: &str) -> Result<Listing, BlobError> {
        let mut blobs = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut req = Request::new("list", Method::GET, None)
                .query("restype", "container")
                .query("comp", "list")
                .query("prefix", prefix)
                .query("include", "metadata");
            if let Some(m) = &marker {
                req = req.query("marker", m);
            }
            let resp = self.send(req).await?;
            let server_time_ms = http_date_ms(resp.headers().get("date")).unwrap_or(0);
            let text = resp
                .text()
                .await
                .map_err(|e| BlobError::transport("list", &e))?;
            let page = parse_list(&text).map_err(|e| BlobError {
                operation: "list",
                status: None,
                code: None,
                message: format!("unreadable listing: {e}"),
            })?;
            blobs.extend(page.blobs);
            match page.next_marker {
                Some(m) => marker = Some(m),
                None => {
                    return Ok(Listing {
                        blobs,
                        server_time_ms,
                    })
                }
            }
        }
    }

    /// The blob's body and metadata; `None` when it does not exist.
    pub async fn get(&self, blob: &str) -> Result<Option<Fetched>, BlobError> {
        let resp = match self
            .send(Request::new("get", Method::GET, Some(blob)))
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let metadata = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                let key = k.as_str().strip_prefix("x-ms-meta-")?;
                Some((key.to_ascii_lowercase(), v.to_str().ok()?.to_owned()))
            })
            .collect();
        let last_modified_ms = http_date_ms(resp.headers().get("last-modified"));
        let body = resp
            .bytes()
            .await
            .map_err(|e| BlobError::transport("get", &e))?
            .to_vec();
        Ok(Some(Fetched {
            body,
            metadata,
            last_modified_ms,
        }))
    }

    /// Writes a block blob (replacing it) with `metadata`; `if_match` / `if_none_match`
    /// make it conditional (`*` for "only if it does not exist").
    pub async fn put(
        &self,
        blob: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
        metadata: &[(&str, &str)],
        if_match: Option<&str>,
        if_none_match: Option<&str>,
    ) -> Result<Written, BlobError> {
        let mut req = Request::new("put", Method::PUT, Some(blob)).metadata(metadata);
        req.ms_headers
            .push(("x-ms-blob-type".into(), "BlockBlob".into()));
        req.body = body;
        req.content_type = content_type;
        req.if_match = if_match;
        req.if_none_match = if_none_match;
        let resp = self.send(req).await?;
        Ok(written(&resp))
    }

    /// Replaces the blob's metadata, if its ETag is still `if_match` when given.
    pub async fn set_metadata(
        &self,
        blob: &str,
        metadata: &[(&str, &str)],
        if_match: Option<&str>,
    ) -> Result<Written, BlobError> {
        let mut req = Request::new("set_metadata", Method::PUT, Some(blob))
            .query("comp", "metadata")
            .metadata(metadata);
        req.if_match = if_match;
        let resp = self.send(req).await?;
        Ok(written(&resp))
    }

    /// Creates the container; an existing one is fine.
    pub async fn create_container(&self) -> Result<(), BlobError> {
        let req = Request::new("create_container", Method::PUT, None).query("restype", "container");
        match self.send(req).await {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn written(resp: &reqwest::Response) -> Written {
    let h = resp.headers();
    Written {
        etag: h
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(quote_etag)
            .unwrap_or_default(),
        last_modified_ms: http_date_ms(h.get("last-modified")).unwrap_or(0),
        server_time_ms: http_date_ms(h.get("date")).unwrap_or(0),
    }
}

/// An ETag in the quoted form `If-Match` takes (listings give it bare).
pub fn quote_etag(etag: &str) -> String {
    let t = etag.trim();
    if t.starts_with('"') {
        t.to_owned()
    } else {
        format!("\"{t}\"")
    }
}

/// The first line of the text of `<tag>` in an error body, at most 300 characters.
fn xml_text(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    let text: String = body[start..end]
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(300)
        .collect();
    (!text.is_empty()).then_some(text)
}

async fn status_error(operation: &'static str, resp: reqwest::Response) -> BlobError {
    let status = resp.status();
    let code = resp
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.unwrap_or_default();
    let mut detail = code.clone().unwrap_or_else(|| {
        body.chars()
            .take(200)
            .collect::<String>()
            .replace('\n', " ")
    });
    // The service's reason for a refused authorization (a token's audience, issuer or
    // lifetime; a wrong signature), as the Storage error body carries it.
    if let Some(why) = xml_text(&body, "AuthenticationErrorDetail") {
        detail = format!("{detail} ({why})");
    }
    let hint = match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
            "; check the account key (or the identity's Storage Blob Data Contributor role) and that the machine's clock is right"
        }
        StatusCode::NOT_FOUND if code.as_deref() == Some("ContainerNotFound") => {
            "; create the container (`az storage container create`) or check `checkpoint.azure_blob`"
        }
        _ => "",
    };
    BlobError {
        operation,
        status: Some(status.as_u16()),
        code,
        message: format!("HTTP {} {detail}{hint}", status.as_u16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authentication_detail_is_read_from_the_error_body() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request.\nRequestId:1</Message><AuthenticationErrorDetail>Invalid token audience.</AuthenticationErrorDetail></Error>";
        assert_eq!(
            xml_text(body, "AuthenticationErrorDetail").as_deref(),
            Some("Invalid token audience.")
        );
        assert_eq!(
            xml_text(body, "Message").as_deref(),
            Some("Server failed to authenticate the request.")
        );
        assert_eq!(xml_text("<Error><Code>x</Code></Error>", "Message"), None);
        assert_eq!(xml_text("<Message>unterminated", "Message"), None);
    }

    #[test]
    fn names_are_encoded_like_the_python_sdk() {
        assert_eq!(
            encode_path("ns.servicebus.windows.net/hub/$default/ownership/0"),
            "ns.servicebus.windows.net/hub/%24default/ownership/0"
        );
        assert_eq!(encode_path("a b:1~"), "a%20b%3A1~");
        assert_eq!(encode_query("a/$b"), "a%2F%24b");
        assert_eq!(quote_etag("0x8D1"), "\"0x8D1\"");
        assert_eq!(quote_etag("\"0x8D1\""), "\"0x8D1\"");
        assert_eq!(
            parse_rfc1123_ms("Fri, 26 Jun 2015 23:39:12 GMT"),
            Some(1_435_361_952_000)
        );
    }
}
