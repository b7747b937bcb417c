//! Fuzzing the spool's record reading with proptest (bounded cases, runs with the ordinary
//! test suite): arbitrary record bytes are written into a spool database's `events` table
//! with redb directly (as a bug, a foreign writer or a half-understood old version might
//! leave them), then read back through the spool's public API ([`Spool::open`],
//! [`Spool::peek`]). The spool never panics, returns every well-formed record exactly as
//! the documented layout says (`[key length: u16 LE][partition key][JSON body]`), and lists
//! every other record's id in `corrupt` so the agent can remove and count it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup is a failed test

use proptest::prelude::*;
use redb::{Database, TableDefinition};
use tcpulse_agent::spool::{Spool, FILE_NAME, MIN_MAX_BYTES};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// What the documented layout says a record holds, or `None` when it is malformed.
fn expected(rec: &[u8]) -> Option<(String, Vec<u8>)> {
    let (len, rest) = rec.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_le_bytes(*len));
    let key = rest.get(..len)?;
    Some((
        std::str::from_utf8(key).ok()?.to_owned(),
        rest[len..].to_vec(),
    ))
}

fn well_formed(key: &str, body: &[u8]) -> Vec<u8> {
    let mut rec = (key.len() as u16).to_le_bytes().to_vec();
    rec.extend_from_slice(key.as_bytes());
    rec.extend_from_slice(body);
    rec
}

fn record() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (
            "[a-z.\u{e9}-]{0,20}",
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(k, b)| well_formed(&k, &b)),
        // A key length that claims more than the record holds, or a non-UTF-8 key.
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(n, rest)| {
            let mut rec = n.to_le_bytes().to_vec();
            rec.extend_from_slice(&rest);
            rec
        }),
    ]
}

fn write_raw(dir: &std::path::Path, records: &[Vec<u8>]) {
    let db = Database::create(dir.join(FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(EVENTS).unwrap();
        for (id, rec) in records.iter().enumerate() {
            t.insert(id as u64, rec.as_slice()).unwrap();
        }
    }
    txn.commit().unwrap();
}

/// A scratch directory in memory when the machine has one (`/dev/shm`): each case commits
/// twice with fsync, which costs tens of milliseconds on a disk.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Each case creates and opens a database file.
        cases: 150,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn r12_fuzz_spool_records_read_back_or_are_listed_corrupt(
        records in proptest::collection::vec(record(), 1..12),
    ) {
        let dir = scratch_dir();
        write_raw(dir.path(), &records);
        let spool = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
        let peeked = spool.peek(usize::MAX, usize::MAX).unwrap();
        let mut entries = peeked.entries.iter();
        let mut corrupt = peeked.corrupt.iter();
        for (id, rec) in records.iter().enumerate() {
            let id = id as u64;
            match expected(rec) {
                Some((key, body)) => {
                    let e = entries.next();
                    prop_assert!(e.is_some(), "record {} missing", id);
                    let e = e.unwrap();
                    prop_assert_eq!(e.id, id);
                    prop_assert_eq!(&e.partition_key, &key);
                    prop_assert_eq!(e.body.as_ref(), body.as_slice());
                }
                None => prop_assert_eq!(corrupt.next(), Some(&id)),
            }
        }
        prop_assert!(entries.next().is_none() && corrupt.next().is_none());
        // The agent's recovery path: removing the corrupt ids leaves only good records.
        spool.remove(&peeked.corrupt).unwrap();
        let again = spool.peek(usize::MAX, usize::MAX).unwrap();
        prop_assert!(again.corrupt.is_empty());
        prop_assert_eq!(again.entries.len(), peeked.entries.len());
    }
}
