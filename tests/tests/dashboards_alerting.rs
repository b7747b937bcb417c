//! The shipped Prometheus rules in vmalert notifying a real Alertmanager: an alert fires
//! for the connector over the threshold, only for it, and resolves when the load drops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use tcpulse_tests::alerting::{am_alerts, rules_with_short_for};
use tcpulse_tests::dashboards::s;
use tcpulse_tests::services;
use tcpulse_tests::wait::{poll_until_blocking, OnError, Poll};

/// Alertmanager is asked every 200 ms; an error from it ends the wait.
const EVERY_200_MS: Poll = Poll::every(200, OnError::Fail);

/// One `tc_connector` line of `connector` at `utilization` of 4 instances × 15 calls.
fn connector_lines(connector: &str, deployment: &str, utilization: f64) -> String {
    let online = 4;
    let calls = (utilization * 60.0).round() as i64;
    format!(
        "tc_connector,connector={connector},deployment={deployment},region=westeurope instances_online={online}i,call_count={calls}i,capacity_planned=60i,capacity_max=64i,utilization={utilization},headroom_calls={}i,peak_calls={calls}i,instances_needed={}i,vcpu_needed={}i\n",
        60 - calls,
        (calls + 14) / 15,
        4 * ((calls + 14) / 15)
    )
}

#[test]
fn dashboards_vmalert_alertmanager_capacity_high_fires_and_resolves() -> Result<()> {
    let started = Instant::now();
    let vm = services::victoria_metrics()?;
    let am = services::alertmanager()?;
    let rules_dir = tempfile::TempDir::new()?;
    let rules = rules_dir.path().join("tcpulse-rules.yml");
    // `for: 2s` instead of minutes (evaluation every 1 s): same expressions, fast test.
    std::fs::write(&rules, rules_with_short_for("2s")?)?;
    let vmalert = services::vmalert(&vm.url(), &am.url(), &[rules], Duration::from_secs(1))?;
    let boot = started.elapsed();

    let hot = "tc-blue.example.com";
    let cool = "tc-green.example.com";
    let hot_util = Arc::new(AtomicU64::new(0.9f64.to_bits()));
    let stop = Arc::new(AtomicBool::new(false));
    let write_url = format!("{}/api/v2/write?org=tcpulse&bucket=tcpulse", vm.url());
    let flush_url = format!("{}/internal/force_flush", vm.url());
    let pusher = {
        let (hot_util, stop, write_url, flush_url) = (
            hot_util.clone(),
            stop.clone(),
            write_url.clone(),
            flush_url.clone(),
        );
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let u = f64::from_bits(hot_util.load(Ordering::Relaxed));
                let body = connector_lines(hot, "blue", u) + &connector_lines(cool, "green", 0.5);
                let (status, text) =
                    services::post(&write_url, "text/plain; charset=utf-8", &body)?;
                ensure!(status == 204, "VictoriaMetrics write: {status} {text}");
                services::get(&flush_url)?;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(())
        })
    };

    let result = (|| -> Result<(Duration, Duration)> {
        let fired = poll_until_blocking(
            "TeamsConnectorCapacityHigh for the hot connector in Alertmanager",
            Duration::from_secs(60),
            EVERY_200_MS,
            || {
                Ok(am_alerts(&am.url(), "TeamsConnectorCapacityHigh")?
                    .iter()
                    .any(|l| s(&l["connector"]) == hot))
            },
        )
        .with_context(|| format!("vmalert log:\n{}", vmalert.log_tail()))?;
        let alerts = am_alerts(&am.url(), "TeamsConnectorCapacityHigh")?;
        let labels = alerts
            .iter()
            .find(|l| s(&l["connector"]) == hot)
            .cloned()
            .unwrap_or_default();
        ensure!(
            s(&labels["deployment"]) == "blue" && s(&labels["severity"]) == "warning",
            "labels: {labels}"
        );
        ensure!(
            !alerts.iter().any(|l| s(&l["connector"]) == cool),
            "the connector at 50 % must not alert: {alerts:?}"
        );
        ensure!(
            !am_alerts(&am.url(), "TeamsConnectorCapacityCritical")?
                .iter()
                .any(|l| s(&l["connector"]) == hot),
            "90 % is below the critical threshold"
        );

        hot_util.store(0.4f64.to_bits(), Ordering::Relaxed);
        let resolved = poll_until_blocking(
            "TeamsConnectorCapacityHigh to resolve in Alertmanager",
            Duration::from_secs(60),
            EVERY_200_MS,
            || {
                Ok(!am_alerts(&am.url(), "TeamsConnectorCapacityHigh")?
                    .iter()
                    .any(|l| s(&l["connector"]) == hot))
            },
        )?;
        Ok((fired, resolved))
    })();
    stop.store(true, Ordering::Relaxed);
    let pushed = pusher.join().map_err(|_| anyhow!("pusher panicked"))?;
    let (fired, resolved) = result?;
    pushed?;
    eprintln!(
        "vmalert/Alertmanager: services ready in {boot:?}; fired after {fired:?}; resolved after {resolved:?}; total {:?}",
        started.elapsed()
    );
    Ok(())
}
