//! Shared access policies and what a connection is allowed to do.
//!
//! Policies come from `TCPULSE_HUB_POLICIES`, a policies file, or are generated (and kept in
//! the data directory so a restart keeps the keys). Format, one policy per line or separated
//! by `;`: `NAME:RIGHTS:KEY` where RIGHTS is `Send`, `Listen`, `Manage` or a `+`-joined
//! combination (`Manage` implies the other two). `#` starts a comment line.
//!
//! A connection gains rights either by SASL PLAIN (policy name and key: the whole namespace,
//! no expiry), by CBS `put-token` of a SAS token (the token's audience, until it expires), or
//! by CBS `put-token` of an Entra ID token (`jwt`, see [`crate::entra`]: the audience, with the
//! principal's role assignments, until the token expires). Every way ends in one
//! [`ConnAuth::grant`]: an entity path, rights, an expiry. Keys and tokens are never logged.

use std::{
    fmt,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use rand::RngCore;

use tcpulse_eventhub::sas::{self, SasToken};

use crate::HubError;

/// What a policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    /// Send events.
    pub send: bool,
    /// Receive events.
    pub listen: bool,
    /// Manage (implies send and listen).
    pub manage: bool,
}

impl Rights {
    /// Nothing (a valid Entra ID token whose principal has no role on the entity).
    pub const NONE: Rights = Rights {
        send: false,
        listen: false,
        manage: false,
    };
    /// Send only.
    pub const SEND: Rights = Rights {
        send: true,
        listen: false,
        manage: false,
    };
    /// Listen only.
    pub const LISTEN: Rights = Rights {
        send: false,
        listen: true,
        manage: false,
    };
    /// Everything.
    pub const MANAGE: Rights = Rights {
        send: true,
        listen: true,
        manage: true,
    };

    /// True when these rights include `need`.
    pub fn allows(&self, need: Right) -> bool {
        self.manage
            || match need {
                Right::Send => self.send,
                Right::Listen => self.listen,
                Right::Manage => false,
            }
    }

    fn parse(s: &str) -> Option<Rights> {
        let mut r = Rights::default();
        for part in s.split('+') {
            match part.trim().to_ascii_lowercase().as_str() {
                "send" => r.send = true,
                "listen" => r.listen = true,
                "manage" => r = Rights::MANAGE,
                _ => return None,
            }
        }
        Some(r)
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.manage {
            return f.write_str("Manage");
        }
        match (self.send, self.listen) {
            (true, true) => f.write_str("Send+Listen"),
            (true, false) => f.write_str("Send"),
            (false, true) => f.write_str("Listen"),
            (false, false) => f.write_str("None"),
        }
    }
}

/// One right an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Sending.
    Send,
    /// Receiving.
    Listen,
    /// Managing.
    Manage,
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::Send => "Send",
            Right::Listen => "Listen",
            Right::Manage => "Manage",
        })
    }
}

/// A shared access policy.
#[derive(Clone, PartialEq, Eq)]
pub struct Policy {
    /// Policy (key) name.
    pub name: String,
    /// What it allows.
    pub rights: Rights,
    /// The key.
    pub key: String,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Name of the generated send-only policy.
pub const SEND_POLICY: &str = "send";
/// Name of the generated listen-only policy.
pub const LISTEN_POLICY: &str = "listen";
/// Name of the generated manage policy (Azure's default name).
pub const MANAGE_POLICY: &str = "RootManageSharedAccessKey";

/// Parses the policy list format (see module docs). `origin` names the source in errors.
pub fn parse_policies(text: &str, origin: &str) -> Result<Vec<Policy>, HubError> {
    let mut out: Vec<Policy> = Vec::new();
    for (i, item) in text
        .split(['\n', ';'])
        .map(str::trim)
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
    {
        let bad = |why: &str| {
            HubError::Policies {
            origin: origin.to_string(),
            why: format!("entry {}: {why} (expected NAME:RIGHTS:KEY, RIGHTS = Send, Listen, Manage or e.g. Send+Listen)", i + 1),
        }
        };
        let mut parts = item.splitn(3, ':');
        let (Some(name), Some(rights), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not three ':'-separated fields"));
        };
        let rights = Rights::parse(rights).ok_or_else(|| bad("unknown right"))?;
        if name.trim().is_empty() || key.trim().is_empty() {
            return Err(bad("empty name or key"));
        }
        if out.iter().any(|p| p.name == name.trim()) {
            return Err(bad("duplicate policy name"));
        }
        out.push(Policy {
            name: name.trim().to_string(),
            rights,
            key: key.trim().to_string(),
        });
    }
    if out.is_empty() {
        return Err(HubError::Policies {
            origin: origin.to_string(),
            why: "no policies".into(),
        });
    }
    Ok(out)
}

/// Formats policies in the list format (contains keys: write only to private files).
pub fn format_policies(policies: &[Policy]) -> String {
    let mut s = String::from("# tcpulse-hub shared access policies: NAME:RIGHTS:KEY\n");
    for p in policies {
        s.push_str(&format!("{}:{}:{}\n", p.name, p.rights, p.key));
    }
    s
}

fn random_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Three fresh policies: send, listen and manage.
pub fn generate_policies() -> Vec<Policy> {
    vec![
        Policy {
            name: SEND_POLICY.into(),
            rights: Rights::SEND,
            key: random_key(),
        },
        Policy {
            name: LISTEN_POLICY.into(),
            rights: Rights::LISTEN,
            key: random_key(),
        },
        Policy {
            name: MANAGE_POLICY.into(),
            rights: Rights::MANAGE,
            key: random_key(),
        },
    ]
}

/// Loads generated policies kept in `path`, or generates and keeps them there (mode 0600).
pub fn load_or_generate(path: &Path) -> Result<Vec<Policy>, HubError> {
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| HubError::Policies {
            origin: path.display().to_string(),
            why: e.to_string(),
        })?;
        return parse_policies(&text, &path.display().to_string());
    }
    let policies = generate_policies();
    let io = |e: std::io::Error| HubError::Policies {
        origin: path.display().to_string(),
        why: format!("cannot write generated keys: {e}"),
    };
    std::fs::write(path, format_policies(&policies)).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(policies)
}

/// True when a grant on the entity path `own` (normalised: lower case, no outer `/`; empty =
/// the namespace) covers the entity path `path`: the same entity or one below it. Entity
/// paths, unlike audiences, are never read as host names, so a hub named `my.hub` covers
/// only itself.
pub fn path_covers(own: &str, path: &str) -> bool {
    let path = path.trim_matches('/').to_ascii_lowercase();
    own.is_empty() || path == own || path.starts_with(&format!("{own}/"))
}

/// The longest a token is honoured, whatever its expiry says: a year. An expiry at the
/// edge of its type (`se` or `exp` near `u64::MAX`, in a token signed with a valid key)
/// would otherwise overflow the monotonic clock.
pub const MAX_GRANT: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a grant for a token valid `secs` more seconds ends: capped by `max_lifetime` (the
/// hub's `--max-token-lifetime`) and [`MAX_GRANT`].
pub fn grant_deadline(secs: u64, max_lifetime: Option<Duration>) -> Instant {
    let lifetime = Duration::from_secs(secs)
        .min(max_lifetime.unwrap_or(MAX_GRANT))
        .min(MAX_GRANT);
    Instant::now() + lifetime
}

/// Why an operation is not allowed. The text goes to the client; it names no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

#[derive(Debug, Clone)]
struct Grant {
    path: String,
    rights: Rights,
    expires: Option<Instant>,
}

/// What one connection may do: grants from SASL PLAIN and CBS tokens.
#[derive(Debug, Default)]
pub struct ConnAuth {
    grants: Mutex<Vec<Grant>>,
    /// Set by the first grant.
    granted: AtomicBool,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ConnAuth {
    /// Grants `rights` on the whole namespace with no expiry (SASL PLAIN).
    pub fn grant_namespace(&self, rights: Rights) {
        self.grant("", rights, None);
    }

    /// Grants `rights` on the entity at `path` (an entity path such as `hub` or
    /// `hub/consumergroups/cg`; empty = the whole namespace; compared without case) until
    /// `expires` (`None`: no expiry). Expired grants are dropped on the way. A grant of
    /// [`Rights::NONE`] still marks the connection authenticated (see [`Self::was_granted`])
    /// and makes [`Self::check`] name the missing claim.
    pub fn grant(&self, path: &str, rights: Rights, expires: Option<Instant>) {
        if let Ok(mut g) = self.grants.lock() {
            let now = Instant::now();
            g.retain(|x| x.expires.is_none_or(|e| e > now));
            g.push(Grant {
                path: path.trim_matches('/').to_ascii_lowercase(),
                rights,
                expires,
            });
            self.granted.store(true, Ordering::Relaxed);
        }
    }

    /// True once the connection was granted anything (a valid put-token, or SASL PLAIN),
    /// even if that grant has expired since: Event Hubs' 20 s rule is about authenticating
    /// at all; an expired token detaches the links it covered instead.
    pub fn was_granted(&self) -> bool {
        self.granted.load(Ordering::Relaxed)
    }

    /// Validates a CBS put-token and records the grant. `max_lifetime` caps how long the
    /// hub honours a token (to exercise client refresh).
    pub fn put_token(
        &self,
        policies: &[Policy],
        audience: &str,
        token: &str,
        max_lifetime: Option<Duration>,
    ) -> Result<Instant, Denied> {
        let t = SasToken::parse(token).map_err(|e| Denied(format!("InvalidSignature: {e}")))?;
        let policy = policies
            .iter()
            .find(|p| p.name == t.key_name)
            .ok_or_else(|| {
                Denied(format!(
                    "InvalidSignature: the token names an unknown shared access policy '{}'",
                    t.key_name
                ))
            })?;
        if !t.verify(&policy.key) {
            return Err(Denied(
                "InvalidSignature: The token has an invalid signature.".into(),
            ));
        }
        let now = now_unix();
        if t.expiry_unix <= now {
            return Err(Denied(format!(
                "ExpiredToken: The token is expired. Expiration time: {}",
                t.expiry_unix
            )));
        }
        let audience_path = sas::resource_path(audience);
        if !t.covers(&audience_path) {
            return Err(Denied(format!(
                "InvalidAudience: the token's resource does not cover the audience '{audience}'"
            )));
        }
        let expires = grant_deadline(t.expiry_unix - now, max_lifetime);
        self.grant(&audience_path, policy.rights, Some(expires));
        Ok(expires)
    }

    /// Whether `right` on the entity at `path` is allowed now. `Ok(None)` means without
    /// expiry; `Ok(Some(t))` until `t` (the latest of the covering grants).
    pub fn check(&self, path: &str, right: Right) -> Result<Option<Instant>, Denied> {
        let now = Instant::now();
        let grants = self
            .grants
            .lock()
            .map_err(|_| Denied("internal error: auth state poisoned".into()))?;
        let mut best: Option<Option<Instant>> = None;
        let mut covered_without_right = false;
        for g in grants.iter() {
            if g.expires.is_some_and(|e| e <= now) || !path_covers(&g.path, path) {
                continue;
            }
            if !g.rights.allows(right) {
                covered_without_right = true;
                continue;
            }
            best = Some(match (best, g.expires) {
                (_, None) | (Some(None), _) => None,
                (Some(Some(a)), Some(b)) => Some(a.max(b)),
                (None, Some(b)) => Some(b),
            });
        }
        match best {
            Some(exp) => Ok(exp),
            None if covered_without_right => Err(Denied(format!(
                "Unauthorized access. '{right}' claim(s) are required to perform this operation. Resource: '{path}'."
            ))),
            None => Err(Denied(format!(
                "Unauthorized access. No valid token for '{path}': put a token on $cbs (or use SASL PLAIN) before attaching."
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> Vec<Policy> {
        parse_policies("send:Send:k1\nlisten:Listen:k2;root:Manage:k3", "test").unwrap()
    }

    #[test]
    fn policy_list_parses_and_rejects_bad_entries() {
        let p = policies();
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].rights, Rights::MANAGE);
        assert!(parse_policies("a:Send", "x").is_err());
        assert!(parse_policies("a:Fly:k", "x").is_err());
        assert!(parse_policies("a:Send:k;a:Listen:k", "x").is_err());
        let e = parse_policies("a:Fly:SECRET", "x").unwrap_err().to_string();
        assert!(!e.contains("SECRET"), "{e}");
        assert_eq!(parse_policies(&format_policies(&p), "x").unwrap(), p);
    }

    #[test]
    fn put_token_grants_the_audience_with_the_policy_rights() {
        let auth = ConnAuth::default();
        let se = now_unix() + 3600;
        let t = sas::sign("sb://localhost:5671/hub", "send", "k1", se).unwrap();
        auth.put_token(&policies(), "sb://localhost:5671/hub", &t, None)
            .unwrap();
        assert!(auth.check("hub/partitions/0", Right::Send).is_ok());
        let e = auth.check("hub/consumergroups/$default/partitions/0", Right::Listen);
        assert!(e.unwrap_err().0.contains("'Listen' claim(s) are required"));
        assert!(auth.check("other", Right::Send).is_err());
    }

    #[test]
    fn bad_signature_expired_and_wrong_audience_are_denied() {
        let auth = ConnAuth::default();
        let p = policies();
        let se = now_unix() + 3600;
        let wrong_key = sas::sign("sb://h/hub", "send", "nope", se).unwrap();
        assert!(auth
            .put_token(&p, "sb://h/hub", &wrong_key, None)
            .unwrap_err()
            .0
            .contains("InvalidSignature"));
        let expired = sas::sign("sb://h/hub", "send", "k1", now_unix() - 5).unwrap();
        assert!(auth
            .put_token(&p, "sb://h/hub", &expired, None)
            .unwrap_err()
            .0
            .contains("Expired"));
        let other = sas::sign("sb://h/hub", "send", "k1", se).unwrap();
        assert!(auth.put_token(&p, "sb://h/hub2", &other, None).is_err());
        let unknown = sas::sign("sb://h/hub", "ghost", "k1", se).unwrap();
        assert!(auth.put_token(&p, "sb://h/hub", &unknown, None).is_err());
    }

    #[test]
    fn an_expiry_at_the_edge_of_its_type_is_capped_not_a_panic() {
        let auth = ConnAuth::default();
        let t = sas::sign("sb://h/hub", "root", "k3", u64::MAX).unwrap();
        let exp = auth.put_token(&policies(), "sb://h/hub", &t, None).unwrap();
        assert!(exp <= Instant::now() + MAX_GRANT);
        assert!(auth.check("hub", Right::Send).is_ok());
    }

    #[test]
    fn max_lifetime_caps_the_grant() {
        let auth = ConnAuth::default();
        let t = sas::sign("sb://h/hub", "root", "k3", now_unix() + 3600).unwrap();
        let exp = auth
            .put_token(&policies(), "sb://h/hub", &t, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(exp <= Instant::now() + Duration::from_secs(5));
        assert!(auth.check("hub", Right::Manage).is_ok());
    }

    #[test]
    fn r12_was_granted_only_after_a_valid_token_or_plain() {
        let a = ConnAuth::default();
        assert!(!a.was_granted());
        assert!(a
            .put_token(&policies(), "sb://h/hub", "garbage", None)
            .is_err());
        assert!(!a.was_granted(), "a refused token grants nothing");
        let b = ConnAuth::default();
        b.grant_namespace(Rights::SEND);
        assert!(b.was_granted());
    }

    /// A grant on a hub whose name has a dot used to be read as a host name (an empty
    /// path), so a SAS token for `my.hub` granted its rights on every hub.
    #[test]
    fn r15_grant_on_a_dotted_hub_name_covers_only_that_hub() {
        let auth = ConnAuth::default();
        let t = sas::sign("sb://h/my.hub", "send", "k1", now_unix() + 3600).unwrap();
        auth.put_token(&policies(), "sb://h/my.hub", &t, None)
            .unwrap();
        assert!(auth.check("my.hub/partitions/0", Right::Send).is_ok());
        assert!(auth.check("other/partitions/0", Right::Send).is_err());
        assert!(auth.check("my.hub2", Right::Send).is_err());
    }

    #[test]
    fn a_grant_of_no_rights_authenticates_and_names_the_missing_claim() {
        let auth = ConnAuth::default();
        auth.grant(
            "hub",
            Rights::NONE,
            Some(Instant::now() + Duration::from_secs(60)),
        );
        assert!(auth.was_granted());
        let e = auth.check("hub/partitions/0", Right::Send).unwrap_err().0;
        assert_eq!(
            e,
            "Unauthorized access. 'Send' claim(s) are required to perform this operation. Resource: 'hub/partitions/0'."
        );
    }

    #[test]
    fn sasl_plain_grants_the_namespace_forever() {
        let auth = ConnAuth::default();
        auth.grant_namespace(Rights::LISTEN);
        assert_eq!(
            auth.check("any/consumergroups/x/partitions/1", Right::Listen),
            Ok(None)
        );
        assert!(auth.check("any", Right::Send).is_err());
    }
}
