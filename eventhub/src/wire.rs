//! Event Hubs wire constants shared by the client and the hub.

/// Message format of an Event Hubs batch: the body is N data sections, each a whole encoded
/// AMQP message.
pub const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;

/// Message annotation: the event's sequence number in its partition (long).
pub const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
/// Message annotation: the event's offset in its partition (string, opaque).
pub const OFFSET: &str = "x-opt-offset";
/// Message annotation: when the service accepted the event (timestamp, ms).
pub const ENQUEUED_TIME: &str = "x-opt-enqueued-time";
/// Message annotation: the partition key the producer set (string).
pub const PARTITION_KEY: &str = "x-opt-partition-key";

/// Link property: the owner level (epoch) of an exclusive receiver (long).
pub const EPOCH: &str = "com.microsoft:epoch";
/// Descriptor name of the selector filter used to position a consumer.
pub const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
/// Descriptor code of the selector filter (apache.org registry).
pub const SELECTOR_FILTER_CODE: u64 = 0x0000_468C_0000_0004;

/// CBS token type for shared access signatures.
pub const SAS_TOKEN_TYPE: &str = "servicebus.windows.net:sastoken";
/// CBS token type for Entra ID (JWT) tokens.
pub const JWT_TOKEN_TYPE: &str = "jwt";

/// Management entity type of an event hub.
pub const EVENTHUB_ENTITY_TYPE: &str = "com.microsoft:eventhub";
/// Management entity type of a partition.
pub const PARTITION_ENTITY_TYPE: &str = "com.microsoft:partition";

/// Largest message the service accepts on Standard, Premium and Dedicated tiers (bytes).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 1_048_576;

/// Error conditions Event Hubs uses.
pub mod condition {
    /// Bad or expired token, or a key without the right.
    pub const UNAUTHORIZED: &str = "amqp:unauthorized-access";
    /// Unknown hub, partition or consumer group.
    pub const NOT_FOUND: &str = "amqp:not-found";
    /// A receiver with a higher epoch took the partition.
    pub const LINK_STOLEN: &str = "amqp:link:stolen";
    /// A message larger than the link's max-message-size.
    pub const MESSAGE_SIZE_EXCEEDED: &str = "amqp:link:message-size-exceeded";
    /// Malformed request or argument.
    pub const ARGUMENT_ERROR: &str = "com.microsoft:argument-error";
    /// Position outside the retained range.
    pub const ARGUMENT_OUT_OF_RANGE: &str = "com.microsoft:argument-out-of-range";
    /// The service is overloaded; retry later.
    pub const SERVER_BUSY: &str = "com.microsoft:server-busy";
    /// The operation timed out on the service; retry.
    pub const TIMEOUT: &str = "com.microsoft:timeout";
    /// Internal failure.
    pub const INTERNAL_ERROR: &str = "amqp:internal-error";
    /// Operation not allowed in this state.
    pub const NOT_ALLOWED: &str = "amqp:not-allowed";
    /// Decoding a frame or message failed.
    pub const DECODE_ERROR: &str = "amqp:decode-error";
    /// The connection is being shut down by the service.
    pub const CONNECTION_FORCED: &str = "amqp:connection:forced";
    /// The link was detached by the service (e.g. shutdown).
    pub const DETACH_FORCED: &str = "amqp:link:detach-forced";
}
