//! Highly available collectors (issue 16): the Azure Blob checkpoint store and partition
//! ownership, against Azurite (the Azure Storage emulator) on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures

use std::time::Duration;

use anyhow::{ensure, Result};
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
