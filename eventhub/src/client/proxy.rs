//! HTTP CONNECT proxies: which proxy a connection goes through ([`ProxyOptions`], the
//! `HTTPS_PROXY` and `NO_PROXY` variables) and the CONNECT handshake that turns a TCP
//! connection to the proxy into a tunnel to the service.
//!
//! The handshake is written here rather than taken from a crate: the one crate that does
//! CONNECT over tokio (async-http-proxy 1.2.5) was last released in 2021, brings second copies
//! of base64 and thiserror, and reads the reply through a buffer that may keep bytes meant for
//! the tunnel. The handshake is one request and one status line.
//!
//! The proxy password is read with the shared secret loader ([`crate::secret`]) and sent only
//! in the `Proxy-Authorization` header: never logged, never in `Debug` output.

use std::{fmt, path::PathBuf, sync::atomic::AtomicBool};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::error::ConnectError;
use crate::secret;

/// Default of [`ProxyOptions::password_env`].
pub const DEFAULT_PROXY_PASSWORD_ENV: &str = "TCPULSE_EVENTHUB_PROXY_PASSWORD";
/// What the proxy password is called in messages.
const PASSWORD_SECRET: &str = "HTTP proxy password";
/// The longest proxy reply header read before giving up.
const MAX_REPLY_BYTES: usize = 16 * 1024;

fn default_password_env() -> String {
    DEFAULT_PROXY_PASSWORD_ENV.to_string()
}

/// An HTTP proxy that tunnels connections with CONNECT. Every field has a default; with
/// none set, WebSocket connections use the `HTTPS_PROXY` variable when it is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "cli", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ProxyOptions {
    /// `http://host:port` (or `host:port`) of an HTTP proxy that allows CONNECT. A proxy set
    /// here carries both transports (AMQP to port 5671 and WebSocket to 443); `none` turns
    /// proxies off, the environment's too. No credentials in it: see `username` and
    /// `password_file`. Default: the `HTTPS_PROXY` (or `https_proxy`) variable, for WebSocket
    /// connections only (as the Azure SDKs do: proxies seldom allow port 5671).
    #[serde(default)]
    pub url: Option<String>,
    /// Hosts reached without the proxy, comma-separated: `*` (every host), a name (it and
    /// its subdomains), `.suffix`, or an IP address. Default: the `NO_PROXY` (or `no_proxy`)
    /// variable.
    #[serde(default)]
    pub no_proxy: Option<String>,
    /// User name for Basic authentication to the proxy. Default: none (or the user in
    /// `HTTPS_PROXY`).
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the proxy password; it wins over `password_env` (one WARN
    /// when both are set). Default: none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the proxy password. Default:
    /// `TCPULSE_EVENTHUB_PROXY_PASSWORD`.
    #[serde(default = "default_password_env")]
    pub password_env: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            url: None,
            no_proxy: None,
            username: None,
            password_file: None,
            password_env: default_password_env(),
        }
    }
}

/// A proxy a connection goes through. `Debug` hides the credentials.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    host: String,
    port: u16,
    /// base64 of `user:password`.
    basic: Option<String>,
    /// Where it came from, for messages: `proxy.url` or `HTTPS_PROXY`.
    origin: &'static str,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("endpoint", &self.endpoint())
            .field("basic_auth", &self.basic.as_ref().map(|_| "***"))
            .field("origin", &self.origin)
            .finish()
    }
}

impl Proxy {
    /// `host:port` of the proxy.
    pub(crate) fn endpoint(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// `host:port`, brackets around an IPv6 host.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A parsed proxy URL: host, port and the credentials in it, if any.
#[derive(Debug, PartialEq, Eq)]
struct ProxyUrl {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
}

/// Parses `http://[user[:password]@]host[:port][/]` or `host:port`; the port defaults to 80.
/// Errors never quote the URL (it may hold a password).
fn parse_url(s: &str, origin: &str) -> Result<ProxyUrl, String> {
    let s = s.trim();
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{origin}: a {scheme}:// proxy is not supported; give the proxy as http://host:port (the tunnel to Event Hubs is TLS either way)"
            ))
        }
        None => s,
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(format!(
            "{origin}: a proxy URL has no path; give http://host:port"
        ));
    }
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let bad_port = || format!("{origin}: the proxy port is not a number from 1 to 65535");
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{origin}: unclosed '[' in the proxy host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad_port())?,
            None => 80,
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad_port())?),
            None => (hostport.to_string(), 80),
        }
    };
    if host.is_empty() {
        return Err(format!("{origin}: the proxy URL has no host"));
    }
    if port == 0 {
        return Err(bad_port());
    }
    let decode = |v: &str| {
        percent_encoding::percent_decode_str(v)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (Some(decode(user)), Some(decode(pass))),
            None => (Some(decode(u)), None),
        },
    };
    Ok(ProxyUrl {
        host,
        port,
        user,
        password,
    })
}

/// True when `host` matches an entry of a `NO_PROXY` list.
fn bypassed(no_proxy: &str, host: &str) -> bool {
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.trim_matches(['[', ']']);
            // `name:port` entries: the port does not matter here (one service, one name).
            let entry = match entry.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
                _ => entry,
            };
            let entry = entry.trim_start_matches('*').trim_start_matches('.');
            let entry = entry.to_ascii_lowercase();
            !entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}")))
        })
}

/// Set once a file/variable conflict of the password was logged (once per process).
static CONFLICT_LOGGED: AtomicBool = AtomicBool::new(false);

impl ProxyOptions {
    /// The proxy for a connection to `host` (`websocket`: over the WebSocket transport),
    /// with the environment read through `var`; `None` means direct. Reads the password
    /// (file or variable) when a user name is set.
    pub(crate) fn resolve(
        &self,
        host: &str,
        websocket: bool,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Proxy>, ConnectError> {
        let nonempty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let (url, origin) = match self.url.as_deref().map(str::trim) {
            Some(u) if u.is_empty() || u.eq_ignore_ascii_case("none") => return Ok(None),
            Some(u) => {
                let parsed = parse_url(u, "proxy.url").map_err(ConnectError::Config)?;
                if parsed.user.is_some() || parsed.password.is_some() {
                    return Err(ConnectError::Config(
                        "proxy.url must not hold credentials: set proxy.username and put the password in proxy.password_file or the proxy.password_env variable".into(),
                    ));
                }
                (parsed, "proxy.url")
            }
            None if !websocket => return Ok(None),
            None => match nonempty(var("HTTPS_PROXY")).or_else(|| nonempty(var("https_proxy"))) {
                Some(u) => (
                    parse_url(&u, "HTTPS_PROXY").map_err(ConnectError::Config)?,
                    "HTTPS_PROXY",
                ),
                None => return Ok(None),
            },
        };
        let no_proxy = nonempty(self.no_proxy.clone())
            .or_else(|| nonempty(var("NO_PROXY")))
            .or_else(|| nonempty(var("no_proxy")));
        if no_proxy.is_some_and(|n| bypassed(&n, host)) {
            return Ok(None);
        }
        let basic = self.basic_auth(url.user, url.password, var)?;
        Ok(Some(Proxy {
            host: url.host,
            port: url.port,
            basic,
            origin,
        }))
    }

    /// base64 `user:password` for Basic authentication, if a user is set. The configured
    /// user and password (file or variable) win over the ones in `HTTPS_PROXY`.
    fn basic_auth(
        &self,
        url_user: Option<String>,
        url_password: Option<String>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, ConnectError> {
        let user = self
            .username
            .clone()
            .filter(|u| !u.trim().is_empty())
            .or(url_user);
        let Some(user) = user else {
            if let Some(file) = &self.password_file {
                return Err(ConnectError::Config(format!(
                    "proxy.password_file {} is set but no proxy user name: set proxy.username",
                    file.display()
                )));
            }
            return Ok(None);
        };
        let loaded = secret::load_with(
            PASSWORD_SECRET,
            Some(&self.password_env),
            self.password_file.as_deref(),
            var,
        )
        .map_err(|e| ConnectError::Config(format!("proxy.password_file: {e}")))?;
        let password = match loaded {
            Some(l) => {
                if let Some(c) = l.conflict() {
                    if !CONFLICT_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        c.log();
                    }
                }
                l.into_value()
            }
            None => url_password.ok_or_else(|| {
                ConnectError::Config(format!(
                    "proxy user {user:?} has no password: put it in proxy.password_file or the {} variable",
                    self.password_env
                ))
            })?,
        };
        Ok(Some(
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
        ))
    }
}

/// Opens a TCP connection to `proxy` and asks it for a tunnel to `host:port`; returns the
/// stream once the proxy answered 2xx. A refusal is [`ConnectError::Proxy`] with its status.
pub(crate) async fn tunnel(
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<TcpStream, ConnectError> {
    let proxy_endpoint = proxy.endpoint();
    let target = authority(host.trim_matches(['[', ']']), port);
    let io_error = |e: std::io::Error| ConnectError::Io {
        endpoint: format!("HTTP proxy {proxy_endpoint} (from {})", proxy.origin),
        why: e.to_string(),
    };
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(io_error)?;
    let _ = tcp.set_nodelay(true);
    let mut request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: tcpulse-eventhub/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(basic) = &proxy.basic {
        request.push_str("Proxy-Authorization: Basic ");
        request.push_str(basic);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.map_err(io_error)?;
    let head = read_reply_head(&mut tcp).await.map_err(io_error)?;
    let (status, reason) = parse_status(&head).ok_or_else(|| ConnectError::Handshake {
        endpoint: format!("HTTP proxy {proxy_endpoint}"),
        why: "the reply to CONNECT is not HTTP; check that the proxy address is an HTTP proxy"
            .into(),
    })?;
    if (200..300).contains(&status) {
        tracing::debug!(proxy = %proxy_endpoint, %target, "proxy tunnel open");
        return Ok(tcp);
    }
    Err(ConnectError::Proxy {
        proxy: proxy_endpoint,
        target,
        status,
        reason,
    })
}

/// Reads the reply up to and including the blank line, one byte at a time so that nothing
/// after it (the tunnel's first bytes) is consumed.
async fn read_reply_head(tcp: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_REPLY_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the proxy's reply header is longer than 16 KiB",
            ));
        }
        if tcp.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the proxy closed the connection before answering CONNECT",
            ));
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// Status code and reason phrase of an HTTP reply's first line.
fn parse_status(head: &[u8]) -> Option<(u16, String)> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let reason = parts.next().unwrap_or("").trim().to_string();
    Some((status, reason))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn urls_parse_with_and_without_scheme_and_credentials() {
        let u = parse_url("http://u%40x:p%3As@proxy.corp:3128/", "t").unwrap();
        assert_eq!(
            u,
            ProxyUrl {
                host: "proxy.corp".into(),
                port: 3128,
                user: Some("u@x".into()),
                password: Some("p:s".into()),
            }
        );
        assert_eq!(parse_url("10.0.0.1:8080", "t").unwrap().port, 8080);
        assert_eq!(parse_url("http://proxy", "t").unwrap().port, 80);
        assert_eq!(parse_url("[::1]:3128", "t").unwrap().host, "::1");
        let e = parse_url("https://u:SECRET@p:1", "t").unwrap_err();
        assert!(e.contains("not supported") && !e.contains("SECRET"), "{e}");
        let e = parse_url("http://u:SECRET@p:nope", "t").unwrap_err();
        assert!(e.contains("port") && !e.contains("SECRET"), "{e}");
        assert!(parse_url("http://p:1/path", "t").is_err());
    }

    #[test]
    fn no_proxy_matches_names_suffixes_ips_and_star() {
        let list = "localhost, .corp.example,servicebus.windows.net:443,10.1.2.3,[::1]";
        assert!(bypassed(list, "localhost"));
        assert!(bypassed(list, "a.corp.example"));
        assert!(bypassed(list, "ns.servicebus.windows.net"));
        assert!(bypassed(list, "10.1.2.3"));
        assert!(bypassed(list, "::1"));
        assert!(!bypassed(list, "corp.example.org"));
        assert!(!bypassed(list, "10.1.2.30"));
        assert!(bypassed("*", "anything"));
    }

    #[test]
    fn the_environment_proxy_serves_websocket_only_and_no_proxy_wins() {
        let o = ProxyOptions::default();
        let var = env(&[("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", "internal")]);
        assert!(o
            .resolve("ns.servicebus.windows.net", false, &var)
            .unwrap()
            .is_none());
        let p = o
            .resolve("ns.servicebus.windows.net", true, &var)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.endpoint(), p.origin),
            ("p:3128".to_string(), "HTTPS_PROXY")
        );
        assert!(o.resolve("ns.internal", true, &var).unwrap().is_none());
        let lower = env(&[("https_proxy", "p2:1")]);
        assert_eq!(o.resolve("h", true, &lower).unwrap().unwrap().port, 1);
    }

    #[test]
    fn a_configured_proxy_serves_both_transports_and_none_turns_proxies_off() {
        let var = env(&[("HTTPS_PROXY", "http://envproxy:1")]);
        let o = ProxyOptions {
            url: Some("http://cfg:3128".into()),
            ..ProxyOptions::default()
        };
        assert_eq!(o.resolve("h", false, &var).unwrap().unwrap().host, "cfg");
        let off = ProxyOptions {
            url: Some("none".into()),
            ..ProxyOptions::default()
        };
        assert!(off.resolve("h", true, &var).unwrap().is_none());
        let creds = ProxyOptions {
            url: Some("http://u:SECRET@cfg:3128".into()),
            ..ProxyOptions::default()
        };
        let e = creds.resolve("h", true, &var).unwrap_err().to_string();
        assert!(e.contains("password_file") && !e.contains("SECRET"), "{e}");
    }

    #[test]
    fn basic_auth_takes_the_password_from_the_file_then_the_variable_never_debug() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let o = ProxyOptions {
            url: Some("p:1".into()),
            username: Some("alice".into()),
            password_file: Some(file),
            ..ProxyOptions::default()
        };
        let var = env(&[(DEFAULT_PROXY_PASSWORD_ENV, "from-env")]);
        let p = o.resolve("h", true, &var).unwrap().unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        assert_eq!(p.basic.as_deref(), Some(expected.as_str()));
        assert!(!format!("{p:?}").contains(&expected));
        let from_env = ProxyOptions {
            password_file: None,
            ..o.clone()
        };
        let p = from_env.resolve("h", true, &var).unwrap().unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("alice:from-env");
        assert_eq!(p.basic.as_deref(), Some(expected.as_str()));
        let e = from_env
            .resolve("h", true, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(DEFAULT_PROXY_PASSWORD_ENV), "{e}");
        let no_user = ProxyOptions {
            username: None,
            ..o
        };
        assert!(no_user.resolve("h", true, &env(&[])).is_err());
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            parse_status(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
            Some((407, "Proxy Authentication Required".into()))
        );
        assert_eq!(
            parse_status(b"HTTP/1.0 200 Connection established\r\n\r\n"),
            Some((200, "Connection established".into()))
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
    }
}
