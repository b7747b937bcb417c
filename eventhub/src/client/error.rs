//! Typed errors, one per operation, each carrying the Event Hubs condition and a
//! transient/fatal classification (reference notes, section 7).
//!
//! Transient: worth retrying on a new link or connection (I/O, timeouts, `server-busy`,
//! `com.microsoft:timeout`, `detach-forced`, `connection:forced`, `internal-error`, and
//! conditions nobody lists). Fatal: retrying cannot help (`unauthorized-access`, `not-found`,
//! `message-size-exceeded`, `link:stolen`, argument errors, `entity-disabled`, `not-allowed`).

use std::{fmt, time::Duration};

use fe2o3_amqp::types::definitions;

use crate::wire::condition;

/// Conditions that retrying cannot fix.
const FATAL_CONDITIONS: &[&str] = &[
    condition::UNAUTHORIZED,
    condition::NOT_FOUND,
    condition::LINK_STOLEN,
    condition::MESSAGE_SIZE_EXCEEDED,
    condition::ARGUMENT_ERROR,
    condition::ARGUMENT_OUT_OF_RANGE,
    condition::NOT_ALLOWED,
    condition::DECODE_ERROR,
    "amqp:not-implemented",
    "amqp:invalid-field",
    "amqp:precondition-failed",
    "amqp:resource-deleted",
    "amqp:resource-limit-exceeded",
    "amqp:frame-size-too-small",
    "com.microsoft:entity-disabled",
    "com.microsoft:auth-failed",
    "com.microsoft:precondition-failed",
    "com.microsoft:producer-epoch-stolen",
];

/// True when `condition` is worth retrying (unknown conditions are: the Go SDK recovers the
/// connection on anything it does not list).
pub fn is_transient_condition(condition: &str) -> bool {
    !FATAL_CONDITIONS.contains(&condition)
}

/// An error condition sent by the service (or the hub): a symbol such as
/// `amqp:unauthorized-access` plus its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// The AMQP error condition.
    pub condition: String,
    /// The service's description, if any.
    pub description: Option<String>,
}

impl ServiceError {
    /// A service error from a condition and description.
    pub fn new(condition: impl Into<String>, description: Option<String>) -> Self {
        ServiceError {
            condition: condition.into(),
            description,
        }
    }

    /// True when retrying may help.
    pub fn is_transient(&self) -> bool {
        is_transient_condition(&self.condition)
    }
}

impl From<&definitions::Error> for ServiceError {
    fn from(e: &definitions::Error) -> Self {
        ServiceError {
            condition: condition_str(&e.condition),
            description: e.description.clone(),
        }
    }
}

impl From<definitions::Error> for ServiceError {
    fn from(e: definitions::Error) -> Self {
        ServiceError::from(&e)
    }
}

/// The symbol of an fe2o3 error condition, as sent on the wire.
pub(crate) fn condition_str(c: &definitions::ErrorCondition) -> String {
    use definitions::{AmqpError, ConnectionError, ErrorCondition, LinkError, SessionError};
    let s: &str = match c {
        ErrorCondition::AmqpError(e) => match e {
            AmqpError::InternalError => "amqp:internal-error",
            AmqpError::NotFound => "amqp:not-found",
            AmqpError::UnauthorizedAccess => "amqp:unauthorized-access",
            AmqpError::DecodeError => "amqp:decode-error",
            AmqpError::ResourceLimitExceeded => "amqp:resource-limit-exceeded",
            AmqpError::NotAllowed => "amqp:not-allowed",
            AmqpError::InvalidField => "amqp:invalid-field",
            AmqpError::NotImplemented => "amqp:not-implemented",
            AmqpError::ResourceLocked => "amqp:resource-locked",
            AmqpError::PreconditionFailed => "amqp:precondition-failed",
            AmqpError::ResourceDeleted => "amqp:resource-deleted",
            AmqpError::IllegalState => "amqp:illegal-state",
            AmqpError::FrameSizeTooSmall => "amqp:frame-size-too-small",
        },
        ErrorCondition::ConnectionError(e) => match e {
            ConnectionError::ConnectionForced => "amqp:connection:forced",
            ConnectionError::FramingError => "amqp:connection:framing-error",
            ConnectionError::Redirect => "amqp:connection:redirect",
        },
        ErrorCondition::SessionError(e) => match e {
            SessionError::WindowViolation => "amqp:session:window-violation",
            SessionError::ErrantLink => "amqp:session:errant-link",
            SessionError::HandleInUse => "amqp:session:handle-in-use",
            SessionError::UnattachedHandle => "amqp:session:unattached-handle",
        },
        ErrorCondition::LinkError(e) => match e {
            LinkError::DetachForced => "amqp:link:detach-forced",
            LinkError::TransferLimitExceeded => "amqp:link:transfer-limit-exceeded",
            LinkError::MessageSizeExceeded => "amqp:link:message-size-exceeded",
            LinkError::Redirect => "amqp:link:redirect",
            LinkError::Stolen => "amqp:link:stolen",
        },
        ErrorCondition::Custom(s) => return s.0.clone(),
    };
    s.to_string()
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.description {
            Some(d) => write!(f, "{}: {d}", self.condition),
            None => f.write_str(&self.condition),
        }
    }
}

/// Why a token could not be obtained from a [`TokenSource`](super::TokenSource).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    /// What went wrong (never contains a key or a token).
    pub message: String,
    /// True when asking again later may succeed (e.g. an identity endpoint was unreachable).
    pub transient: bool,
}

impl TokenError {
    /// A token error that will not go away by itself.
    pub fn fatal(message: impl Into<String>) -> Self {
        TokenError {
            message: message.into(),
            transient: false,
        }
    }

    /// A token error worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        TokenError {
            message: message.into(),
            transient: true,
        }
    }
}

/// Connecting (TCP, TLS, AMQP open, session, CBS authorization) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The configuration cannot work (connection string, endpoint, CA file, options).
    #[error("invalid Event Hubs client configuration: {0}")]
    Config(String),
    /// TCP connect, TLS or the AMQP handshake failed at the transport level.
    #[error("cannot connect to {endpoint}: {why}; check the endpoint, the network and that the port is open (5671 for AMQP, 443 for WebSocket)")]
    Io {
        /// `host:port` dialled.
        endpoint: String,
        /// The cause.
        why: String,
    },
    /// The TLS handshake failed; `hint` names the likely cause (an untrusted certificate, a
    /// server that speaks only TLS < 1.2, …) and what to do.
    #[error("TLS handshake with {endpoint} failed: {why}; {hint}")]
    Tls {
        /// `host:port` dialled.
        endpoint: String,
        /// The TLS library's error.
        why: String,
        /// Cause and remedy, from [`tls_hint`].
        hint: &'static str,
    },
    /// The peer refused or broke the AMQP open (including SASL).
    #[error("AMQP handshake with {endpoint} failed: {why}")]
    Handshake {
        /// `host:port` dialled.
        endpoint: String,
        /// The cause.
        why: String,
    },
    /// The HTTP proxy answered CONNECT with an error status: 407 (wrong or missing
    /// credentials), 403 (the proxy does not allow that destination), 5xx (it cannot reach
    /// the service).
    #[error("HTTP proxy {proxy} refused CONNECT to {target}: {status} {reason}; {}", proxy_hint(*.status))]
    Proxy {
        /// The proxy's `host:port` (never its credentials).
        proxy: String,
        /// The `host:port` the tunnel was asked for.
        target: String,
        /// The HTTP status the proxy answered.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// A step did not finish in time.
    #[error("{step} timed out after {after:?}")]
    Timeout {
        /// The step (e.g. "TCP connect", "put-token").
        step: &'static str,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The token source failed.
    #[error("cannot get a token: {0}")]
    Token(#[from] TokenError),
    /// The service refused the token (`put-token` status 401).
    #[error("the service refused the token for {audience}: {error}; check the key name, the key and its rights")]
    Unauthorized {
        /// The audience the token was for.
        audience: String,
        /// The refusal.
        error: ServiceError,
    },
    /// The service closed the connection or session with an error, or a CBS call failed.
    #[error("{step}: {error}")]
    Service {
        /// What was being done.
        step: &'static str,
        /// The service's error.
        error: ServiceError,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl ConnectError {
    /// The Event Hubs condition, if the service sent one.
    pub fn condition(&self) -> Option<&str> {
        match self {
            ConnectError::Unauthorized { error, .. } | ConnectError::Service { error, .. } => {
                Some(&error.condition)
            }
            _ => None,
        }
    }

    /// True when retrying (after a backoff) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Io { .. } | ConnectError::Timeout { .. } => true,
            // As transient as before it had its own variant: a proxy may be fixed meanwhile.
            ConnectError::Tls { .. } => true,
            ConnectError::Handshake { .. } => true,
            // Wrong credentials or a forbidden port stay so; a proxy that cannot reach the
            // service now may later.
            ConnectError::Proxy { status, .. } => !matches!(status, 401 | 403 | 407),
            ConnectError::Token(e) => e.transient,
            ConnectError::Service { error, .. } => error.is_transient(),
            ConnectError::Config(_) | ConnectError::Unauthorized { .. } | ConnectError::Closed => {
                false
            }
        }
    }

    /// True when retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        !self.is_transient()
    }
}

/// What to do about a proxy's refusal with `status`.
fn proxy_hint(status: u16) -> &'static str {
    match status {
        407 | 401 => "the proxy wants other credentials: check the proxy user name and its password (file or variable)",
        403 => "the proxy does not allow this destination (proxies often allow only port 443): use transport = \"websocket\", or ask for the destination to be allowed",
        500..=599 => "the proxy cannot reach the service: check the proxy's DNS and outbound access",
        _ => "check the proxy settings",
    }
}

/// Which end of a TLS handshake this process is, for [`tls_hint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    /// We dialled (agent, collector).
    Client,
    /// We accepted (tcpulse-hub).
    Server,
}

/// The server certificate is not signed by a CA we trust.
const HINT_UNTRUSTED: &str = "the server's certificate is not trusted (a TLS-inspecting proxy, or a private CA?): add that CA's PEM certificate with extra_ca_file (agent: publish.ca_file / TCPULSE_EVENTHUB_CA_FILE; collector: source.eventhub.client.extra_ca_file)";
/// The server certificate is for another name.
const HINT_NAME: &str = "the server's certificate is for another name: check the namespace host in the connection string, and that custom_endpoint dials the right server";
/// The server certificate is out of its validity period.
const HINT_VALIDITY: &str = "the server's certificate is expired or not yet valid: check this machine's clock, then the server's certificate";
/// The server speaks only TLS 1.0/1.1.
const HINT_OLD_SERVER: &str = "the server offered TLS < 1.2; Event Hubs requires TLS 1.2+ (an old proxy or server on the path?)";
/// The client speaks only TLS 1.0/1.1.
const HINT_OLD_CLIENT: &str = "the client offered TLS < 1.2 (TLS 1.0/1.1 clients send no signature algorithms); Event Hubs requires TLS 1.2+: upgrade the client or enable TLS 1.2 in it";
/// The bytes were not TLS.
const HINT_NOT_TLS: &str = "the peer does not speak TLS: check the port (AMQPS is 5671; a plain AMQP port needs UseDevelopmentEmulator=true)";
/// Anything else.
const HINT_OTHER_TLS: &str = "check that the endpoint is an Event Hubs namespace (AMQPS, port 5671) and that no proxy interferes";

/// The rustls error inside an I/O error from a TLS handshake, if it is one.
pub fn tls_error(io: &std::io::Error) -> Option<&tokio_rustls::rustls::Error> {
    io.get_ref()?.downcast_ref::<tokio_rustls::rustls::Error>()
}

/// The likely cause of a failed TLS handshake and what to do, as seen from `side`.
pub fn tls_hint(e: &tokio_rustls::rustls::Error, side: TlsSide) -> &'static str {
    use tokio_rustls::rustls::{AlertDescription, CertificateError, Error, PeerIncompatible};
    match (side, e) {
        (_, Error::InvalidCertificate(c)) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => HINT_UNTRUSTED,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                HINT_NAME
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => HINT_VALIDITY,
            _ => HINT_OTHER_TLS,
        },
        (
            TlsSide::Client,
            Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13),
        )
        | (TlsSide::Client, Error::AlertReceived(AlertDescription::ProtocolVersion)) => {
            HINT_OLD_SERVER
        }
        (
            TlsSide::Server,
            Error::PeerIncompatible(
                PeerIncompatible::SignatureAlgorithmsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled,
            ),
        ) => HINT_OLD_CLIENT,
        (_, Error::InvalidMessage(_)) => HINT_NOT_TLS,
        _ => HINT_OTHER_TLS,
    }
}

/// One line for a TLS handshake failure in `io`, with its cause and remedy; `None` when
/// `io` is not a TLS error.
pub fn describe_tls_failure(io: &std::io::Error, side: TlsSide) -> Option<String> {
    tls_error(io).map(|e| format!("{e}; {}", tls_hint(e, side)))
}

/// A transport failure while connecting to `endpoint`: a TLS error gets its own variant
/// and hint; anything else is I/O (refused, reset, unreachable).
pub(crate) fn connect_io_error(endpoint: &str, io: &std::io::Error) -> ConnectError {
    match tls_error(io) {
        Some(e) => ConnectError::Tls {
            endpoint: endpoint.to_string(),
            why: e.to_string(),
            hint: tls_hint(e, TlsSide::Client),
        },
        None => ConnectError::Io {
            endpoint: endpoint.to_string(),
            why: io.to_string(),
        },
    }
}

/// Sending an event or a batch failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Connecting or authorizing failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The service refused access to the hub (`amqp:unauthorized-access`).
    #[error("not authorized to send to {entity}: {error}; the policy needs the Send right")]
    Unauthorized {
        /// The entity (hub or partition).
        entity: String,
        /// The service's error.
        error: ServiceError,
    },
    /// The hub or partition does not exist (`amqp:not-found`).
    #[error(
        "{entity} does not exist: {error}; check EntityPath / the hub name and the partition id"
    )]
    NotFound {
        /// The entity (hub or partition).
        entity: String,
        /// The service's error.
        error: ServiceError,
    },
    /// The message is larger than the link allows (`amqp:link:message-size-exceeded`).
    #[error("message of {size:?} bytes exceeds the maximum of {max_size:?} bytes{}; send smaller events or smaller batches", .error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    MessageTooLarge {
        /// Encoded size, when known.
        size: Option<u64>,
        /// The link's maximum, when known.
        max_size: Option<u64>,
        /// The service's error, if it detached or rejected.
        error: Option<ServiceError>,
    },
    /// The service rejected the delivery or detached the link with another condition.
    #[error("the service refused the send: {0}")]
    Service(ServiceError),
    /// The link, session or connection went away without a condition.
    #[error("the link was lost: {0}")]
    LinkLost(String),
    /// No outcome arrived in time.
    #[error("no outcome within {0:?}")]
    Timeout(Duration),
    /// The call itself is wrong (e.g. a partition key and a partition id together).
    #[error("invalid send: {0}")]
    InvalidArgument(String),
}

impl SendError {
    /// The Event Hubs condition, if the service sent one.
    pub fn condition(&self) -> Option<&str> {
        match self {
            SendError::Connect(e) => e.condition(),
            SendError::Unauthorized { .. } => Some(condition::UNAUTHORIZED),
            SendError::NotFound { .. } => Some(condition::NOT_FOUND),
            SendError::MessageTooLarge { .. } => Some(condition::MESSAGE_SIZE_EXCEEDED),
            SendError::Service(e) => Some(&e.condition),
            _ => None,
        }
    }

    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SendError::Connect(e) => e.is_transient(),
            SendError::Service(e) => e.is_transient(),
            SendError::LinkLost(_) | SendError::Timeout(_) => true,
            SendError::Unauthorized { .. }
            | SendError::NotFound { .. }
            | SendError::MessageTooLarge { .. }
            | SendError::InvalidArgument(_) => false,
        }
    }

    /// True when retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        !self.is_transient()
    }
}

/// Receiving events failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReceiveError {
    /// Connecting or authorizing failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The service refused access (`amqp:unauthorized-access`).
    #[error("not authorized to receive from {entity}: {error}; the policy needs the Listen right")]
    Unauthorized {
        /// The consumer-group partition address.
        entity: String,
        /// The service's error.
        error: ServiceError,
    },
    /// The hub, consumer group or partition does not exist (`amqp:not-found`).
    #[error(
        "{entity} does not exist: {error}; check the hub name, consumer group and partition id"
    )]
    NotFound {
        /// The consumer-group partition address.
        entity: String,
        /// The service's error.
        error: ServiceError,
    },
    /// Another receiver with a higher (or any) epoch owns the partition (`amqp:link:stolen`).
    /// Not retried: another process owns this partition now.
    #[error("receiver for {entity} was displaced by another with a higher epoch: {error}")]
    LinkStolen {
        /// The consumer-group partition address.
        entity: String,
        /// The service's error.
        error: ServiceError,
    },
    /// The service detached the link with another condition.
    #[error("the service ended the receive: {0}")]
    Service(ServiceError),
    /// The link, session or connection went away without a condition.
    #[error("the link was lost: {0}")]
    LinkLost(String),
    /// The call itself is wrong.
    #[error("invalid receive: {0}")]
    InvalidArgument(String),
}

impl ReceiveError {
    /// The Event Hubs condition, if the service sent one.
    pub fn condition(&self) -> Option<&str> {
        match self {
            ReceiveError::Connect(e) => e.condition(),
            ReceiveError::Unauthorized { .. } => Some(condition::UNAUTHORIZED),
            ReceiveError::NotFound { .. } => Some(condition::NOT_FOUND),
            ReceiveError::LinkStolen { .. } => Some(condition::LINK_STOLEN),
            ReceiveError::Service(e) => Some(&e.condition),
            _ => None,
        }
    }

    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ReceiveError::Connect(e) => e.is_transient(),
            ReceiveError::Service(e) => e.is_transient(),
            ReceiveError::LinkLost(_) => true,
            ReceiveError::Unauthorized { .. }
            | ReceiveError::NotFound { .. }
            | ReceiveError::LinkStolen { .. }
            | ReceiveError::InvalidArgument(_) => false,
        }
    }

    /// True when retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        !self.is_transient()
    }
}

/// A management request (hub or partition properties) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManagementError {
    /// Connecting or authorizing failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The request was answered with a failure status.
    #[error("management request failed with status {status}: {error}")]
    Status {
        /// The `status-code` of the response.
        status: u16,
        /// The condition (mapped from the status code as .NET does) and description.
        error: ServiceError,
    },
    /// The link, session or connection went away.
    #[error("the management link was lost: {0}")]
    LinkLost(String),
    /// No response in time.
    #[error("no management response within {0:?}")]
    Timeout(Duration),
    /// The response lacked a field or had a wrong type.
    #[error("unexpected management response: {0}")]
    Decode(String),
}

impl ManagementError {
    /// The Event Hubs condition, if any.
    pub fn condition(&self) -> Option<&str> {
        match self {
            ManagementError::Connect(e) => e.condition(),
            ManagementError::Status { error, .. } => Some(&error.condition),
            _ => None,
        }
    }

    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ManagementError::Connect(e) => e.is_transient(),
            ManagementError::Status { error, .. } => error.is_transient(),
            ManagementError::LinkLost(_) | ManagementError::Timeout(_) => true,
            ManagementError::Decode(_) => false,
        }
    }

    /// True when retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        !self.is_transient()
    }
}

/// The condition .NET assigns to a management status code without `error-condition`.
pub(crate) fn condition_for_status(status: u16) -> &'static str {
    match status {
        400 => condition::ARGUMENT_ERROR,
        401 => condition::UNAUTHORIZED,
        403 => "amqp:resource-limit-exceeded",
        404 => condition::NOT_FOUND,
        408 => condition::TIMEOUT,
        410 => condition::LINK_STOLEN,
        503 => condition::SERVER_BUSY,
        _ => condition::INTERNAL_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_sdks() {
        for c in [
            condition::SERVER_BUSY,
            condition::TIMEOUT,
            condition::DETACH_FORCED,
            condition::CONNECTION_FORCED,
            condition::INTERNAL_ERROR,
            "com.microsoft:something-new",
        ] {
            assert!(is_transient_condition(c), "{c}");
        }
        for c in [
            condition::UNAUTHORIZED,
            condition::NOT_FOUND,
            condition::LINK_STOLEN,
            condition::MESSAGE_SIZE_EXCEEDED,
            condition::ARGUMENT_OUT_OF_RANGE,
        ] {
            assert!(!is_transient_condition(c), "{c}");
        }
        let e = SendError::MessageTooLarge {
            size: Some(2),
            max_size: Some(1),
            error: None,
        };
        assert!(e.is_fatal());
        assert_eq!(e.condition(), Some(condition::MESSAGE_SIZE_EXCEEDED));
        assert!(SendError::Timeout(Duration::from_secs(1)).is_transient());
        let stolen = ReceiveError::LinkStolen {
            entity: "h".into(),
            error: ServiceError::new(condition::LINK_STOLEN, None),
        };
        assert!(stolen.is_fatal());
        assert_eq!(condition_for_status(404), condition::NOT_FOUND);
        assert_eq!(condition_for_status(503), condition::SERVER_BUSY);
    }

    #[test]
    fn fe2o3_conditions_map_to_wire_symbols() {
        use definitions::{ErrorCondition, LinkError};
        assert_eq!(
            condition_str(&ErrorCondition::LinkError(LinkError::Stolen)),
            condition::LINK_STOLEN
        );
        assert_eq!(
            condition_str(&ErrorCondition::Custom("com.microsoft:server-busy".into())),
            condition::SERVER_BUSY
        );
    }
}
