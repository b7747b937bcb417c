//! One stored event, [`Record`], and its frame on disk (the table in the `store` docs):
//! encoding, the framed size (which is also how far a record advances the offset), and
//! decoding one frame with every check (magic, lengths, CRC, UTF-8 key). Knows no files or
//! segments: callers hand it bytes or a reader.

use std::io::{self, Read};

use bytes::Bytes;

/// Record magic: the ASCII bytes `TPE1` read as a little-endian `u32`.
const MAGIC: u32 = u32::from_le_bytes(*b"TPE1");
/// Magic, header length and CRC.
const PREFIX_LEN: usize = 12;
/// Sequence number, offset, enqueued time and key length.
const HEADER_FIXED_LEN: usize = 28;
/// Key length value that marks "no partition key".
const NO_KEY: u32 = u32::MAX;

/// Largest partition key this store accepts, in bytes (Event Hubs itself allows 128 characters).
pub const MAX_KEY_LEN: usize = 64 * 1024;

/// One stored event. `offset` is the byte position of the event in the partition's log
/// (like Event Hubs: opaque to clients, served as a decimal string); sequence numbers start
/// at 0 and are contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Sequence number within the partition, from 0, contiguous.
    pub sequence_number: i64,
    /// Byte position of the record in the partition's logical log (see the module docs).
    pub offset: i64,
    /// Unix milliseconds, assigned by the store at append; never decreases within a partition.
    pub enqueued_time_ms: i64,
    /// The partition key the event was sent with, if any.
    pub partition_key: Option<String>,
    /// The client's encoded AMQP message, opaque here.
    pub payload: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DamageKind {
    /// The file ends inside a record.
    Torn,
    /// A record fails its checks.
    Corrupt,
}

impl DamageKind {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Self::Torn => "incomplete record",
            Self::Corrupt => "corrupt record",
        }
    }
}

pub(super) struct Damage {
    pub(super) kind: DamageKind,
    pub(super) detail: String,
}

/// Framed size of a record on disk, which is also how far it advances the offset.
pub(super) fn framed_len(record: &Record) -> u64 {
    let key_len = record.partition_key.as_ref().map_or(0, String::len);
    (PREFIX_LEN + HEADER_FIXED_LEN + key_len + 4 + record.payload.len()) as u64
}

/// Append the frame of `record` to `buf`; returns its size. Lengths are checked by `append`.
pub(super) fn encode_record(buf: &mut Vec<u8>, record: &Record) -> u64 {
    let key = record.partition_key.as_deref().map(str::as_bytes);
    let key_len = key.map_or(0, <[u8]>::len);
    let start = buf.len();
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&((HEADER_FIXED_LEN + key_len) as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]); // CRC, filled in below
    let body = buf.len();
    buf.extend_from_slice(&record.sequence_number.to_le_bytes());
    buf.extend_from_slice(&record.offset.to_le_bytes());
    buf.extend_from_slice(&record.enqueued_time_ms.to_le_bytes());
    buf.extend_from_slice(&key.map_or(NO_KEY, |k| k.len() as u32).to_le_bytes());
    buf.extend_from_slice(key.unwrap_or_default());
    buf.extend_from_slice(&(record.payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&record.payload);
    let crc = crc32fast::hash(&buf[body..]);
    buf[body - 4..body].copy_from_slice(&crc.to_le_bytes());
    (buf.len() - start) as u64
}

/// Read one record with `remaining` bytes left in the file. The outer error is an I/O
/// failure; the inner one describes a damaged record. Returns the record and its framed size.
pub(super) fn read_record(
    reader: &mut impl Read,
    remaining: u64,
) -> io::Result<Result<(Record, u64), Damage>> {
    let torn = |detail: String| {
        Ok(Err(Damage {
            kind: DamageKind::Torn,
            detail,
        }))
    };
    let corrupt = |detail: String| {
        Ok(Err(Damage {
            kind: DamageKind::Corrupt,
            detail,
        }))
    };
    if remaining < PREFIX_LEN as u64 {
        return torn(format!(
            "{remaining} bytes left, a record needs at least {PREFIX_LEN}"
        ));
    }
    let mut prefix = [0u8; PREFIX_LEN];
    if !read_full(reader, &mut prefix)? {
        return torn("file ended while reading".into());
    }
    let magic = le_u32(&prefix[0..4]);
    let header_len = le_u32(&prefix[4..8]) as usize;
    let crc = le_u32(&prefix[8..12]);
    if magic != MAGIC {
        return corrupt(format!("bad magic {magic:#010x}"));
    }
    if !(HEADER_FIXED_LEN..=HEADER_FIXED_LEN + MAX_KEY_LEN).contains(&header_len) {
        return corrupt(format!("bad header length {header_len}"));
    }
    let needed = (PREFIX_LEN + header_len + 4) as u64;
    if needed > remaining {
        return torn(format!("header needs {needed} bytes, {remaining} left"));
    }
    let mut header = vec![0u8; header_len + 4];
    if !read_full(reader, &mut header)? {
        return torn("file ended while reading".into());
    }
    let payload_len = le_u32(&header[header_len..]) as u64;
    let size = needed + payload_len;
    if size > remaining {
        return torn(format!("record needs {size} bytes, {remaining} left"));
    }
    let mut payload = vec![0u8; payload_len as usize];
    if !read_full(reader, &mut payload)? {
        return torn("file ended while reading".into());
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header);
    hasher.update(&payload);
    let actual = hasher.finalize();
    if actual != crc {
        return corrupt(format!(
            "CRC {actual:#010x} does not match stored {crc:#010x}"
        ));
    }
    let sequence_number = le_i64(&header[0..8]);
    let offset = le_i64(&header[8..16]);
    let enqueued_time_ms = le_i64(&header[16..24]);
    let key_len = le_u32(&header[24..28]);
    let partition_key = if key_len == NO_KEY {
        if header_len != HEADER_FIXED_LEN {
            return corrupt(format!(
                "header length {header_len} for a record without key"
            ));
        }
        None
    } else {
        if header_len != HEADER_FIXED_LEN + key_len as usize {
            return corrupt(format!(
                "header length {header_len} for a key of {key_len} bytes"
            ));
        }
        match std::str::from_utf8(&header[HEADER_FIXED_LEN..header_len]) {
            Ok(key) => Some(key.to_owned()),
            Err(_) => return corrupt("partition key is not UTF-8".into()),
        }
    };
    if sequence_number < 0 {
        return corrupt(format!("negative sequence number {sequence_number}"));
    }
    let record = Record {
        sequence_number,
        offset,
        enqueued_time_ms,
        partition_key,
        payload: Bytes::from(payload),
    };
    Ok(Ok((record, size)))
}

/// `read_exact` that reports a short file as `false` instead of an error.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

pub(super) fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

pub(super) fn le_i64(bytes: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    i64::from_le_bytes(b)
}
