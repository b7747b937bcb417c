//! The role-assignment table: which principal has which Event Hubs data role, where.
//!
//! On Azure, a role assignment gives a principal (by object id) a built-in role at a scope;
//! the roles for Event Hubs data are Azure Event Hubs Data Sender (send), Data Receiver
//! (receive) and Data Owner (everything). A scope covers the entity and everything below
//! it: a namespace its event hubs and their consumer groups, an event hub its consumer
//! groups, a consumer group only itself (`learn.microsoft.com/azure/event-hubs/
//! troubleshoot-authentication-authorization`, "Resource scopes"). Resource groups and
//! subscriptions are above the namespace: write them as the namespace (no scope).
//!
//! File format, one assignment per line (or separated by `;`), `#` starts a comment line:
//!
//! ```text
//! # PRINCIPAL_OBJECT_ID:ROLE[:SCOPE]
//! 11111111-1111-1111-1111-111111111111:Azure Event Hubs Data Sender:tcpulse
//! 22222222-2222-2222-2222-222222222222:Azure Event Hubs Data Receiver:tcpulse/consumergroups/collector
//! 33333333-3333-3333-3333-333333333333:Azure Event Hubs Data Owner
//! ```
//!
//! ROLE is matched without case, with or without the `Azure Event Hubs ` prefix. SCOPE is an
//! entity path (`hub`, `hub/consumergroups/cg`), or an Azure resource id of a namespace, an
//! event hub or a consumer group (`/subscriptions/…/providers/Microsoft.EventHub/namespaces/ns/eventhubs/hub`),
//! as `az role assignment list` prints it.

use std::path::Path;

use crate::auth::{path_covers, Rights};

/// A built-in Event Hubs data role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Azure Event Hubs Data Sender: send.
    DataSender,
    /// Azure Event Hubs Data Receiver: receive.
    DataReceiver,
    /// Azure Event Hubs Data Owner: send, receive, manage.
    DataOwner,
}

impl Role {
    /// The role's name on Azure.
    pub fn name(self) -> &'static str {
        match self {
            Role::DataSender => "Azure Event Hubs Data Sender",
            Role::DataReceiver => "Azure Event Hubs Data Receiver",
            Role::DataOwner => "Azure Event Hubs Data Owner",
        }
    }

    /// What the role allows, as SAS rights (Send, Listen, Manage).
    pub fn rights(self) -> Rights {
        match self {
            Role::DataSender => Rights::SEND,
            Role::DataReceiver => Rights::LISTEN,
            Role::DataOwner => Rights::MANAGE,
        }
    }

    fn parse(s: &str) -> Option<Role> {
        let s = s.trim().to_ascii_lowercase();
        let short = s.strip_prefix("azure event hubs ").unwrap_or(&s);
        match short {
            "data sender" => Some(Role::DataSender),
            "data receiver" => Some(Role::DataReceiver),
            "data owner" => Some(Role::DataOwner),
            _ => None,
        }
    }
}

/// One role assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The principal's object id (lower case).
    pub principal: String,
    /// The role.
    pub role: Role,
    /// The entity path it covers (lower case; empty = the namespace).
    pub scope: String,
}

/// Reads the table from `path`.
pub fn load(path: &Path) -> Result<Vec<Assignment>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    parse(&text)
}

/// Parses the table format (module docs).
pub fn parse(text: &str) -> Result<Vec<Assignment>, String> {
    let mut out = Vec::new();
    for (i, item) in text
        .split(['\n', ';'])
        .map(str::trim)
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
    {
        let bad = |why: String| {
            format!(
                "entry {}: {why} (expected PRINCIPAL_OBJECT_ID:ROLE[:SCOPE], ROLE = {}, {} or {})",
                i + 1,
                Role::DataSender.name(),
                Role::DataReceiver.name(),
                Role::DataOwner.name()
            )
        };
        let mut parts = item.splitn(3, ':');
        let principal = parts.next().unwrap_or_default().trim();
        let role = parts.next().unwrap_or_default();
        let scope = parts.next().unwrap_or_default();
        if principal.is_empty() || principal.contains(char::is_whitespace) {
            return Err(bad(format!("'{principal}' is not an object id")));
        }
        let role =
            Role::parse(role).ok_or_else(|| bad(format!("unknown role '{}'", role.trim())))?;
        out.push(Assignment {
            principal: principal.to_ascii_lowercase(),
            role,
            scope: scope_path(scope).map_err(bad)?,
        });
    }
    Ok(out)
}

/// An entity path or an Azure resource id as an entity path.
fn scope_path(scope: &str) -> Result<String, String> {
    let s = scope.trim().trim_matches('/').to_ascii_lowercase();
    const MARK: &str = "providers/microsoft.eventhub/namespaces/";
    let Some(at) = s.find(MARK) else {
        if s.contains("providers/") || s.starts_with("subscriptions/") {
            return Err(format!(
                "scope '{}' is not an Event Hubs namespace, event hub or consumer group",
                scope.trim()
            ));
        }
        return Ok(s);
    };
    // `<ns>[/eventhubs/<hub>[/consumergroups/<cg>]]`
    let parts: Vec<&str> = s[at + MARK.len()..].split('/').collect();
    match parts.as_slice() {
        [_ns] => Ok(String::new()),
        [_ns, "eventhubs", hub] => Ok((*hub).to_string()),
        [_ns, "eventhubs", hub, "consumergroups", cg] => Ok(format!("{hub}/consumergroups/{cg}")),
        _ => Err(format!(
            "scope '{}' is not an Event Hubs namespace, event hub or consumer group",
            scope.trim()
        )),
    }
}

/// What `principal` may do, for a token put for the entity at `path`: first `(path, the
/// union of the rights of the assignments covering it)` (possibly [`Rights::NONE`]), then
/// `(scope, rights)` for each assignment scoped below `path`.
pub fn grants_for(
    assignments: &[Assignment],
    principal: &str,
    path: &str,
) -> Vec<(String, Rights)> {
    let principal = principal.to_ascii_lowercase();
    let path = path.trim_matches('/').to_ascii_lowercase();
    let mine = assignments.iter().filter(|a| a.principal == principal);
    let mut on_path = Rights::NONE;
    let mut below = Vec::new();
    for a in mine {
        if path_covers(&a.scope, &path) {
            on_path = union(on_path, a.role.rights());
        } else if path_covers(&path, &a.scope) {
            below.push((a.scope.clone(), a.role.rights()));
        }
    }
    std::iter::once((path, on_path)).chain(below).collect()
}

fn union(a: Rights, b: Rights) -> Rights {
    Rights {
        send: a.send || b.send,
        listen: a.listen || b.listen,
        manage: a.manage || b.manage,
    }
}
