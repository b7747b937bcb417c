//! Event Hubs connection strings.
//!
//! Forms Azure hands out (keys matched case-insensitively, split at the first `=`):
//!
//! - `Endpoint=sb://<ns>/;SharedAccessKeyName=<policy>;SharedAccessKey=<key>[;EntityPath=<hub>]`
//! - `Endpoint=sb://<ns>/;SharedAccessSignature=SharedAccessSignature sr=…[;EntityPath=<hub>]`
//! - either of the above plus `UseDevelopmentEmulator=true` (plain AMQP, port from the endpoint,
//!   5672 by default).
//!
//! Parsing checks the shape of every part without connecting: the endpoint is `sb://` and a
//! host name, the policy name is a valid Azure name, the key is base64 (Azure generates 44
//! characters, the encoding of 32 random bytes; other lengths are accepted with a note from
//! [`ConnectionString::notes`]), a signature has `sr`, `sig`, `se` and `skn`, and no value is
//! an example placeholder such as `<key>`. Errors name the part that is wrong and never echo
//! a key; `Debug` redacts secrets. The one way to get the secret text back is
//! [`ConnectionString::expose`].

use std::fmt;

/// How a connection string authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A shared access policy name and key: tokens are signed locally.
    Key {
        /// Policy name (`SharedAccessKeyName`).
        key_name: String,
        /// Policy key (`SharedAccessKey`).
        key: String,
    },
    /// A ready-made token (`SharedAccessSignature`), used until its expiry.
    Signature(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Key { key_name, .. } => f
                .debug_struct("Key")
                .field("key_name", key_name)
                .field("key", &"<redacted>")
                .finish(),
            Credential::Signature(_) => f.write_str("Signature(<redacted>)"),
        }
    }
}

/// A parsed connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// Host of the namespace, e.g. `ns.servicebus.windows.net`.
    pub host: String,
    /// Port given in the endpoint, if any.
    pub port: Option<u16>,
    /// The credential.
    pub credential: Credential,
    /// The hub (`EntityPath`), if given.
    pub entity_path: Option<String>,
    /// `UseDevelopmentEmulator=true`: plain AMQP, no TLS.
    pub use_development_emulator: bool,
}

/// A connection string that cannot be used. Never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// A `;`-separated part has no `=`.
    #[error(
        "connection string part {index} has no '=' (expected Key=Value pairs separated by ';')"
    )]
    MalformedPart {
        /// 1-based position of the part.
        index: usize,
    },
    /// No `Endpoint=`.
    #[error("connection string has no Endpoint (expected Endpoint=sb://<namespace>/)")]
    MissingEndpoint,
    /// The endpoint is not `sb://host[:port][/]`.
    #[error("connection string Endpoint is not of the form sb://<host>[:port]/: {0}")]
    BadEndpoint(String),
    /// Only one of key name and key.
    #[error(
        "connection string has {present} but not {missing}; give both, or a SharedAccessSignature"
    )]
    IncompleteKey {
        /// The part that is present.
        present: &'static str,
        /// The part that is missing.
        missing: &'static str,
    },
    /// Neither a key nor a signature.
    #[error("connection string has no credential: give SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature")]
    MissingCredential,
    /// `UseDevelopmentEmulator` is not `true`/`false`.
    #[error("connection string UseDevelopmentEmulator must be 'true' or 'false'")]
    BadEmulatorFlag,
    /// A part is present but empty, or still holds an example placeholder such as `<key>`.
    #[error("connection string {part} is {what}; copy the connection string of a shared access policy from the Azure portal (Event Hubs namespace > Shared access policies)")]
    Placeholder {
        /// The part (`SharedAccessKeyName`, `SharedAccessKey`, …).
        part: &'static str,
        /// `empty` or `an example placeholder`.
        what: &'static str,
    },
    /// `SharedAccessKeyName` is not a policy name Azure allows.
    #[error("connection string SharedAccessKeyName {0:?} is not a policy name (letters, digits, '.', '-', '_', at most 256)")]
    BadKeyName(String),
    /// `SharedAccessKey` is not base64 (its text is never shown).
    #[error("connection string SharedAccessKey is not a key: {0}; Azure keys are 44 characters of base64 (A-Z a-z 0-9 + / =): copy the policy's primary key again")]
    BadKey(&'static str),
    /// `SharedAccessSignature` is not `SharedAccessSignature sr=…&sig=…&se=…&skn=…`.
    #[error("connection string SharedAccessSignature is not usable: {0}; generate a new one, or use SharedAccessKeyName and SharedAccessKey")]
    BadSignature(String),
}

/// Length of the keys Azure generates: base64 of 32 bytes.
pub const AZURE_KEY_CHARS: usize = 44;

/// True for text an example carries where a real value belongs: `<key>`, `...`, `…`.
fn is_placeholder(v: &str) -> bool {
    (v.starts_with('<') && v.ends_with('>')) || v.contains("...") || v.contains('…')
}

fn check_filled(part: &'static str, v: &str) -> Result<(), ConnectionStringError> {
    let what = if v.is_empty() {
        "empty"
    } else if is_placeholder(v) {
        "an example placeholder"
    } else {
        return Ok(());
    };
    Err(ConnectionStringError::Placeholder { part, what })
}

fn check_key_name(name: &str) -> Result<(), ConnectionStringError> {
    check_filled("SharedAccessKeyName", name)?;
    let ok = name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ConnectionStringError::BadKeyName(
            name.chars().take(64).collect(),
        ))
    }
}

/// Base64 shape of a key: the standard or URL-safe alphabet, `=` only as trailing padding
/// (at most two). Tolerant of other lengths and of hand-made keys such as a demo's
/// `demo-send-key-change-me` (the service uses the text as it is); rejects what no key has:
/// spaces, quotes, other punctuation, non-ASCII. Never echoes the key.
fn check_key(key: &str) -> Result<(), ConnectionStringError> {
    check_filled("SharedAccessKey", key)?;
    let body = key.trim_end_matches('=');
    let padding = key.len() - body.len();
    if !body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
    {
        return Err(ConnectionStringError::BadKey(
            "it contains characters that are not base64",
        ));
    }
    if padding > 2 {
        return Err(ConnectionStringError::BadKey("its '=' padding is wrong"));
    }
    Ok(())
}

fn check_signature(sig: &str) -> Result<(), ConnectionStringError> {
    check_filled("SharedAccessSignature", sig)?;
    crate::sas::SasToken::parse(sig)
        .map(drop)
        .map_err(|e| ConnectionStringError::BadSignature(e.to_string()))
}

impl ConnectionString {
    /// Parses a connection string.
    pub fn parse(s: &str) -> Result<Self, ConnectionStringError> {
        let (mut endpoint, mut key_name, mut key, mut sig, mut entity, mut emulator) =
            (None, None, None, None, None, false);
        for (i, part) in s.split(';').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (k, v) = part
                .split_once('=')
                .ok_or(ConnectionStringError::MalformedPart { index: i + 1 })?;
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(v.to_string()),
                "sharedaccesskeyname" => key_name = Some(v.to_string()),
                "sharedaccesskey" => key = Some(v.to_string()),
                "sharedaccesssignature" => sig = Some(v.to_string()),
                "entitypath" => entity = Some(v.to_string()).filter(|e| !e.is_empty()),
                "usedevelopmentemulator" => {
                    emulator = match v.to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(ConnectionStringError::BadEmulatorFlag),
                    }
                }
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or(ConnectionStringError::MissingEndpoint)?;
        let (host, port) = parse_endpoint(&endpoint)?;
        let credential = match (key_name, key, sig) {
            (Some(key_name), Some(key), _) => {
                check_key_name(&key_name)?;
                check_key(&key)?;
                Credential::Key { key_name, key }
            }
            (Some(_), None, None) => {
                return Err(ConnectionStringError::IncompleteKey {
                    present: "SharedAccessKeyName",
                    missing: "SharedAccessKey",
                })
            }
            (None, Some(_), None) => {
                return Err(ConnectionStringError::IncompleteKey {
                    present: "SharedAccessKey",
                    missing: "SharedAccessKeyName",
                })
            }
            (_, _, Some(sig)) => {
                check_signature(&sig)?;
                Credential::Signature(sig)
            }
            (None, None, None) => return Err(ConnectionStringError::MissingCredential),
        };
        Ok(ConnectionString {
            host,
            port,
            credential,
            entity_path: entity,
            use_development_emulator: emulator,
        })
    }

    /// Remarks on a string that parses but looks unlike what Azure hands out (a key of another
    /// length than [`AZURE_KEY_CHARS`], often one copied incompletely). Never contain a secret.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Credential::Key { key, .. } = &self.credential {
            if key.len() != AZURE_KEY_CHARS {
                notes.push(format!(
                    "SharedAccessKey has {} characters where keys Azure generates have {AZURE_KEY_CHARS}; if authentication fails, check that it was copied whole",
                    key.len()
                ));
            }
        }
        notes
    }

    /// `host[:port]`, the fully qualified namespace as the SDKs use it in audiences.
    pub fn namespace(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// The full connection string, secrets included. Use only to hand it to a user on purpose.
    pub fn expose(&self) -> String {
        let mut s = format!("Endpoint=sb://{}/", self.namespace());
        match &self.credential {
            Credential::Key { key_name, key } => s.push_str(&format!(
                ";SharedAccessKeyName={key_name};SharedAccessKey={key}"
            )),
            Credential::Signature(sig) => s.push_str(&format!(";SharedAccessSignature={sig}")),
        }
        if let Some(e) = &self.entity_path {
            s.push_str(&format!(";EntityPath={e}"));
        }
        if self.use_development_emulator {
            s.push_str(";UseDevelopmentEmulator=true");
        }
        s
    }
}

fn parse_endpoint(endpoint: &str) -> Result<(String, Option<u16>), ConnectionStringError> {
    let bad = || ConnectionStringError::BadEndpoint(endpoint.to_string());
    let rest = endpoint
        .strip_prefix("sb://")
        .or_else(|| endpoint.strip_prefix("amqps://"))
        .or_else(|| endpoint.strip_prefix("amqp://"))
        .ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad());
    }
    // IPv6 literals: [::1]:5671
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let (h, after) = stripped.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (format!("[{h}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse().map_err(|_| bad())?)),
            None => (authority.to_string(), None),
        }
    };
    let host_chars_ok = |h: &str| {
        h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    };
    let inner = host.trim_start_matches('[').trim_end_matches(']');
    if inner.is_empty() || !host_chars_ok(inner) || (!host.starts_with('[') && inner.contains(':'))
    {
        return Err(bad());
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_form_with_entity_path() {
        let c = ConnectionString::parse(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc=;EntityPath=hub",
        )
        .unwrap();
        assert_eq!(c.host, "ns.servicebus.windows.net");
        assert_eq!(c.port, None);
        assert_eq!(
            c.credential,
            Credential::Key {
                key_name: "send".into(),
                key: "abc=".into()
            }
        );
        assert_eq!(c.entity_path.as_deref(), Some("hub"));
        assert!(!c.use_development_emulator);
    }

    #[test]
    fn parses_signature_and_emulator_forms() {
        let c = ConnectionString::parse(
            "endpoint=sb://127.0.0.1:5672;SharedAccessSignature=SharedAccessSignature sr=a&sig=b&se=1&skn=k;UseDevelopmentEmulator=true",
        )
        .unwrap();
        assert_eq!(c.namespace(), "127.0.0.1:5672");
        assert!(matches!(c.credential, Credential::Signature(_)));
        assert!(c.use_development_emulator);
        let c = ConnectionString::parse(
            "Endpoint=sb://[::1]:5671/;SharedAccessKeyName=a;SharedAccessKey=b",
        )
        .unwrap();
        assert_eq!(c.namespace(), "[::1]:5671");
    }

    #[test]
    fn errors_name_the_part_and_never_echo_the_key() {
        let e = ConnectionString::parse("Endpoint=sb://h/;SharedAccessKey=TOPSECRET").unwrap_err();
        assert_eq!(
            e,
            ConnectionStringError::IncompleteKey {
                present: "SharedAccessKey",
                missing: "SharedAccessKeyName"
            }
        );
        assert!(!e.to_string().contains("TOPSECRET"));
        assert_eq!(
            ConnectionString::parse("SharedAccessKeyName=a;SharedAccessKey=b").unwrap_err(),
            ConnectionStringError::MissingEndpoint
        );
        assert!(matches!(
            ConnectionString::parse("Endpoint=http://h/;SharedAccessKeyName=a;SharedAccessKey=b"),
            Err(ConnectionStringError::BadEndpoint(_))
        ));
        assert_eq!(
            ConnectionString::parse("Endpoint=sb://h/;garbage").unwrap_err(),
            ConnectionStringError::MalformedPart { index: 2 }
        );
        let c = ConnectionString::parse(
            "Endpoint=sb://h/;SharedAccessKeyName=a;SharedAccessKey=TOPSECRET",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("TOPSECRET"));
    }

    /// r12 (9b): garbage, placeholders and malformed keys are refused at parse, naming the
    /// part and never showing the key.
    #[test]
    fn r12_shape_of_every_part_is_checked_without_echoing_the_key() {
        const KEY: &str = "q3Jm0F9vNwX2bC8dE1fG4hI7jK0lM3nO6pQ9rS2tU5v=";
        assert_eq!(KEY.len(), AZURE_KEY_CHARS);
        let cs = |name: &str, key: &str| {
            format!("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName={name};SharedAccessKey={key};EntityPath=hub")
        };
        let ok = ConnectionString::parse(&cs("send", KEY)).unwrap();
        assert!(ok.notes().is_empty(), "{:?}", ok.notes());
        let short = ConnectionString::parse(&cs("send", &KEY[..20])).unwrap();
        assert!(
            short.notes()[0].contains("20 characters"),
            "{:?}",
            short.notes()
        );

        assert_eq!(
            ConnectionString::parse("garbage").unwrap_err(),
            ConnectionStringError::MalformedPart { index: 1 }
        );
        let cases: &[(String, &str)] = &[
            (cs("send", "TOP SECRET key!"), "not base64"),
            (cs("send", "TOPSECRET\u{e9}"), "not base64"),
            (cs("send", "TOPSECRET===="), "padding"),
            (cs("send", "TOP=SECRET"), "not base64"),
            (cs("send", "<TOPSECRET>"), "placeholder"),
            (cs("send", ""), "SharedAccessKey is empty"),
            (cs("", KEY), "SharedAccessKeyName is empty"),
            (cs("my policy", KEY), "not a policy name"),
            (cs("<policy-name>", KEY), "placeholder"),
            (
                format!("Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey={KEY}"),
                "Endpoint",
            ),
            (
                "Endpoint=sb://h/;SharedAccessSignature=TOPSECRET".to_string(),
                "SharedAccessSignature is not usable",
            ),
            (
                "Endpoint=sb://h/;SharedAccessSignature=SharedAccessSignature sr=a&sig=TOPSECRET".to_string(),
                "SharedAccessSignature is not usable",
            ),
        ];
        for (text, expected) in cases {
            let e = ConnectionString::parse(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
            assert!(!e.contains("TOPSECRET") && !e.contains(KEY), "{e}");
        }
    }

    #[test]
    fn expose_round_trips() {
        let s = "Endpoint=sb://localhost:5671/;SharedAccessKeyName=send;SharedAccessKey=k;EntityPath=hub";
        assert_eq!(ConnectionString::parse(s).unwrap().expose(), s);
    }
}
