//! Highly available collectors (issue 16): the Azure Blob checkpoint store and partition
//! ownership, against Azurite (the Azure Storage emulator) on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures

use std::time::Duration;

use anyhow::{ensure, Result};
use tcpulse_collector::checkpoint::{
    Checkpoint, CheckpointScope, CheckpointStore, CHECKPOINT_VERSION,
};
use tcpulse_tests::azurite::Azurite;
use tcpulse_tests::services::get;

/// Azurite answers on its port, goes away on stop, and comes back on the same port: what
/// the Blob outage cases rely on.
#[test]
fn azurite_starts_stops_and_restarts_on_its_port() -> Result<()> {
    let mut azurite = Azurite::start()?;
    let url = format!("{}?comp=list", azurite.blob_endpoint());
    // Unsigned: refused, but by Azurite (an HTTP answer, not a connection error).
    let (status, body) = get(&url)?;
    ensure!(
        status == 403 || status == 401,
        "unsigned list: {status} {body}"
    );
    let port = azurite.port();
    azurite.stop()?;
    ensure!(get(&url).is_err(), "still answering after stop");
    std::thread::sleep(Duration::from_millis(200));
    azurite.start_again()?;
    ensure!(azurite.port() == port, "port changed on restart");
    let (status, _) = get(&url)?;
    ensure!(status == 403 || status == 401, "after restart: {status}");
    ensure!(
        azurite.log().contains("successfully listens"),
        "{}",
        azurite.log()
    );
    Ok(())
}

fn scope() -> CheckpointScope {
    CheckpointScope::new("HA-NS.servicebus.windows.net", "Telemetry", "$Default")
}

fn checkpoint(partition: &str, seq: i64) -> Checkpoint {
    Checkpoint {
        version: CHECKPOINT_VERSION,
        partition: partition.into(),
        sequence_number: seq,
        offset: (seq * 100).to_string(),
        enqueued_time_ms: Some(1_000 + seq),
        updated_at_ms: 2_000,
        state: Some(serde_json::json!({"connectors": [], "n": seq})),
    }
}

/// A checkpoint written to Azurite reads back whole (aggregator state included), under the
/// lower-cased SDK name, with the SDK's metadata in decimal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_blob_checkpoints_round_trip_in_the_sdk_layout() -> Result<()> {
    let azurite = Azurite::start()?;
    let store = azurite.checkpoint_store("checkpoints").await?;
    ensure!(store.load(&scope(), "0").await?.is_none(), "empty store");
    store.store(&scope(), &checkpoint("0", 41)).await?;
    store.store(&scope(), &checkpoint("0", 42)).await?;
    ensure!(store.load(&scope(), "0").await? == Some(checkpoint("0", 42)));
    let listing = store
        .client()
        .list("ha-ns.servicebus.windows.net/telemetry/$default/")
        .await?;
    let names: Vec<&str> = listing.blobs.iter().map(|b| b.name.as_str()).collect();
    ensure!(
        names == ["ha-ns.servicebus.windows.net/telemetry/$default/checkpoint/0"],
        "{names:?}"
    );
    let mut meta = listing.blobs[0].metadata.clone();
    meta.sort();
    ensure!(
        meta == [
            ("offset".to_string(), "4200".to_string()),
            ("sequencenumber".to_string(), "42".to_string())
        ],
        "{meta:?}"
    );
    Ok(())
}

/// Two claimants race for the same partition, from nothing (`If-None-Match: *`) and from
/// the same ETag (`If-Match`): exactly one wins each time, the other sees a lost race
/// (409/412), not an error; the loser's renewal with its stale ETag fails the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_blob_claim_race_has_exactly_one_winner() -> Result<()> {
    let azurite = Azurite::start()?;
    let store = azurite.checkpoint_store("race").await?;
    let s = scope();
    let (a, b) = tokio::join!(
        store.claim(&s, "3", "owner-a", None),
        store.claim(&s, "3", "owner-b", None)
    );
    let (a, b) = (a?, b?);
    ensure!(a.is_some() != b.is_some(), "create race: {a:?} {b:?}");
    let first = a.or(b).unwrap();
    let listing = store.list_ownership(&s).await?;
    ensure!(listing.ownerships.len() == 1 && listing.ownerships[0].owner_id == first.owner_id);
    ensure!(
        listing.ownerships[0].etag == first.etag,
        "{listing:?} vs {first:?}"
    );
    ensure!(listing.server_time_ms > 0);
    // Both steal from the same ETag.
    let (c, d) = tokio::join!(
        store.claim(&s, "3", "owner-c", Some(&first.etag)),
        store.claim(&s, "3", "owner-d", Some(&first.etag))
    );
    let (c, d) = (c?, d?);
    ensure!(c.is_some() != d.is_some(), "steal race: {c:?} {d:?}");
    // The first owner's renewal with its old ETag: lost.
    ensure!(store
        .claim(&s, "3", &first.owner_id, Some(&first.etag))
        .await?
        .is_none());
    // Release (empty owner id) with the winner's ETag.
    let winner = c.or(d).unwrap();
    let released = store.claim(&s, "3", "", Some(&winner.etag)).await?.unwrap();
    let listing = store.list_ownership(&s).await?;
    ensure!(
        listing.ownerships[0].owner_id.is_empty() && listing.ownerships[0].etag == released.etag
    );
    Ok(())
}
