//! The `tcpulse-hub` command line. Flag docs are the `--help` text.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::config::{self, HubConfig, HubSpec, POLICIES_ENV};
use crate::entra::{config::default_audience, EntraConfig};

/// An Event Hubs-compatible AMQP 1.0 broker for development, tests and demos.
///
/// Speaks AMQP over TLS like Azure Event Hubs on port 5671 (TLS first, then SASL and AMQP),
/// optionally AMQP over WebSockets like its port 443, and optionally plain AMQP for clients
/// in UseDevelopmentEmulator=true mode. Checks shared
/// access signatures like the service. When ready it prints one JSON line to stdout with the
/// bound addresses, the CA file to trust and ready-made connection strings; logs go to stderr.
///
/// Keys: set TCPULSE_HUB_POLICIES="NAME:RIGHTS:KEY;..." (RIGHTS = Send, Listen, Manage or
/// e.g. Send+Listen) or --policies-file (which wins when both are set); otherwise keys are
/// generated (and kept in --data-dir, so a restart keeps them).
///
/// Entra ID: with --entra-jwks-file the hub also accepts put-tokens of type jwt (access tokens
/// for the scope of eventhubs.azure.net), checks their RS256 signature, expiry, audience
/// and (with --entra-issuer) issuer like the service, and gives the principal (the token's
/// oid) the rights of its roles in --entra-role-assignments.
#[derive(Debug, Parser)]
#[command(
    name = "tcpulse-hub",
    version,
    after_help = tcpulse_eventhub::cli_support::after_help()
)]
pub struct Args {
    /// AMQPS (TLS) listen address; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value_t = config::default_listen())]
    pub listen: SocketAddr,

    /// Also listen for plain AMQP (for clients with UseDevelopmentEmulator=true), e.g.
    /// 127.0.0.1:5672. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub plain_listen: Option<SocketAddr>,

    /// Also listen for AMQP over WebSockets (TLS with the same certificate, then the
    /// upgrade on /$servicebus/websocket, subprotocol AMQPWSB10 or amqp), as Event Hubs does
    /// on port 443, e.g. 127.0.0.1:8443. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub ws_listen: Option<SocketAddr>,

    /// An event hub as NAME or NAME:PARTITIONS (default partitions: 4). Repeatable.
    /// Default: tcpulse:4.
    #[arg(long = "hub", value_name = "NAME[:PARTITIONS]")]
    pub hubs: Vec<HubSpec>,

    /// A consumer group on every hub besides $Default. Repeatable.
    #[arg(long = "consumer-group", value_name = "NAME")]
    pub consumer_groups: Vec<String>,

    /// Keep partitions, generated keys and certificates here, so they survive a restart.
    /// Without it, events live in memory only.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where the generated CA and server certificate are kept and reused.
    /// Default: DATA_DIR/tls, or a tcpulse-hub folder in the temp dir.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,

    /// Serve this PEM certificate chain instead of a generated one (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Host name put in the printed connection strings.
    #[arg(long, value_name = "HOST", default_value = "localhost")]
    pub namespace: String,

    /// File with shared access policies, one NAME:RIGHTS:KEY per line; it wins over
    /// TCPULSE_HUB_POLICIES (one WARN when both are set).
    #[arg(long, value_name = "FILE")]
    pub policies_file: Option<PathBuf>,

    /// Largest message or batch accepted, in bytes (advertised to clients).
    #[arg(long, value_name = "BYTES", default_value_t = config::default_max_message_bytes())]
    pub max_message_bytes: u64,

    /// Events kept per partition.
    #[arg(long, value_name = "N", default_value_t = config::default_retention_events())]
    pub retention_events: usize,

    /// How long events are kept, e.g. 24h, 90m.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retention_age: Duration,

    /// Retention by size, per partition, in bytes: the oldest events are dropped beyond it.
    /// Without --data-dir a partition keeps at most its share of --memory-budget-bytes.
    #[arg(long, value_name = "BYTES", default_value_t = config::default_retention_bytes())]
    pub retention_bytes: u64,

    /// Memory for event bodies, whole hub, in bytes, split evenly across all partitions.
    /// With --data-dir, older events are read back from disk when a consumer asks; without
    /// it, the budget bounds retention.
    #[arg(long, value_name = "BYTES", default_value_t = config::default_memory_budget_bytes())]
    pub memory_budget_bytes: u64,

    /// Close a connection that has not put a valid token this long after opening (as
    /// Event Hubs does after 20 s).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub auth_timeout: Duration,

    /// Idle timeout announced to clients in the AMQP Open frame; a connection silent for
    /// longer is closed.
    #[arg(long, value_name = "DURATION", default_value = "240s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Honour CBS tokens for at most this long (e.g. 5s) to exercise client token refresh.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_token_lifetime: Option<Duration>,

    /// The Entra ID token issuer's signing keys: a JWKS file ({"keys":[{"kty":"RSA","kid",
    /// "n","e"}]}) or PEM RSA public keys. With it the hub accepts put-tokens of type jwt;
    /// without it they are refused.
    #[arg(long, value_name = "FILE", env = "TCPULSE_HUB_ENTRA_JWKS_FILE")]
    pub entra_jwks_file: Option<PathBuf>,

    /// The audience (aud) Entra ID tokens must carry; a trailing / does not matter.
    #[arg(long, value_name = "AUD", env = "TCPULSE_HUB_ENTRA_AUDIENCE", default_value_t = default_audience())]
    pub entra_audience: String,

    /// The issuer (iss) Entra ID tokens must carry, e.g. `https://sts.windows.net/TENANT/`.
    /// Default: any issuer whose key is in --entra-jwks-file.
    #[arg(
        long,
        value_name = "ISS",
        env = "TCPULSE_HUB_ENTRA_ISSUER",
        requires = "entra_jwks_file"
    )]
    pub entra_issuer: Option<String>,

    /// Role assignments for Entra ID principals, one PRINCIPAL_OBJECT_ID:ROLE or
    /// PRINCIPAL_OBJECT_ID:ROLE:SCOPE per line; ROLE = Azure Event Hubs Data Sender | Data Receiver | Data Owner, SCOPE = an
    /// event hub (or HUB/consumergroups/GROUP); no SCOPE = the whole namespace.
    #[arg(
        long,
        value_name = "FILE",
        env = "TCPULSE_HUB_ENTRA_ROLE_ASSIGNMENTS",
        requires = "entra_jwks_file"
    )]
    pub entra_role_assignments: Option<PathBuf>,

    /// fsync every append (survives power loss; slower).
    #[arg(long)]
    pub fsync: bool,

    /// Log format (level from RUST_LOG, default info,fe2o3_amqp=off).
    #[command(flatten)]
    pub log: tcpulse_eventhub::cli_support::logging::LogFormatArg,
}

impl Args {
    /// Turns the flags (and `TCPULSE_HUB_POLICIES`) into a hub configuration.
    pub fn into_config(self) -> HubConfig {
        let defaults = HubConfig::default();
        HubConfig {
            listen: self.listen,
            plain_listen: self.plain_listen,
            ws_listen: self.ws_listen,
            hubs: if self.hubs.is_empty() {
                defaults.hubs
            } else {
                self.hubs
            },
            consumer_groups: self.consumer_groups,
            data_dir: self.data_dir,
            tls_dir: self.tls_dir,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            namespace: self.namespace,
            policies: std::env::var(POLICIES_ENV)
                .ok()
                .filter(|v| !v.trim().is_empty()),
            policies_file: self.policies_file,
            max_message_bytes: self.max_message_bytes,
            retention_events: self.retention_events,
            retention_age: self.retention_age,
            retention_bytes: self.retention_bytes,
            memory_budget_bytes: self.memory_budget_bytes,
            auth_timeout: self.auth_timeout,
            idle_timeout: self.idle_timeout,
            max_token_lifetime: self.max_token_lifetime,
            entra: EntraConfig {
                jwks_file: self.entra_jwks_file,
                audience: self.entra_audience,
                issuer: self.entra_issuer,
                role_assignments: self.entra_role_assignments,
            },
            fsync: self.fsync,
            ..defaults
        }
    }
}
