//! The shipped Prometheus rules in vmalert notifying a real Alertmanager: an alert fires
//! for the connector over the threshold, only for it, and resolves when the load drops;
//! once with lines the test writes to VictoriaMetrics, once driven by real agents through
//! the hub and the collector.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use tcpulse_tests::agent::{AgentProcess, REGION};
use tcpulse_tests::alerting::{am_alerts, rules_with_short_for};
use tcpulse_tests::collector::{CollectorOptions, CollectorProcess};
use tcpulse_tests::dashboards::s;
use tcpulse_tests::hub::TestHub;
use tcpulse_tests::services::{self, get};
use tcpulse_tests::stores::vm_latest;
use tcpulse_tests::wait::{poll_until, poll_until_blocking, OnError, Poll};

/// Alertmanager is asked every 200 ms; an error from it ends the wait.
const EVERY_200_MS: Poll = Poll::every(200, OnError::Fail);
/// The pipeline's waits: every 250 ms, errors retried (a store not answering yet).
const EVERY_250_MS: Poll = Poll::every(250, OnError::Retry);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_pipeline_drives_vmalert_capacity_high() -> Result<()> {
    let t0 = Instant::now();
    let vm = services::victoria_metrics()?;
    let am = services::alertmanager()?;
    let rules_dir = tempfile::TempDir::new()?;
    let rules = rules_dir.path().join("tcpulse-rules.yml");
    // `for: 2s` instead of minutes (evaluation every 1 s): same expressions, fast test.
    std::fs::write(&rules, rules_with_short_for("2s")?)?;
    let vmalert = services::vmalert(&vm.url(), &am.url(), &[rules], Duration::from_secs(1))?;
    // New series become searchable after a flush; flush every second as a scrape would.
    let stop_flush = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let (stop, url) = (
            stop_flush.clone(),
            format!("{}/internal/force_flush", vm.url()),
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = get(&url);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let hub = TestHub::start().await?;
    let info = hub.info.clone();
    let tmp = tempfile::TempDir::new()?;
    let hot = "tc-hot.example.com";
    let cool = "tc-cool.example.com";
    // hot: 3 × 14 = 42 of 45 planned (93 %); cool: 6 of 15 (40 %).
    let mut agents = vec![
        AgentProcess::start_on_hub(tmp.path(), &info, hot, "blue", "h1", 14)?,
        AgentProcess::start_on_hub(tmp.path(), &info, hot, "blue", "h2", 14)?,
        AgentProcess::start_on_hub(tmp.path(), &info, hot, "blue", "h3", 14)?,
        AgentProcess::start_on_hub(tmp.path(), &info, cool, "green", "c1", 6)?,
    ];
    let sinks = format!(
        "[sinks.influxdb_v2]\nurl = {:?}\norg = \"noc\"\nbucket = \"tcpulse\"\n",
        vm.url()
    );
    let mut collector = CollectorProcess::start(
        &tmp.path().join("collector"),
        &info,
        &CollectorOptions {
            sinks,
            ..CollectorOptions::default()
        },
    )?;

    let result = async {
        let fired = poll_until(
            "TeamsConnectorCapacityHigh for the hot connector in Alertmanager",
            Duration::from_secs(90),
            EVERY_250_MS,
            || {
                collector.ensure_running()?;
                Ok(am_alerts(&am.url(), "TeamsConnectorCapacityHigh")?
                    .iter()
                    .any(|l| l["connector"] == hot))
            },
        )
        .await
        .with_context(|| {
            format!(
                "vmalert log:\n{}\ncollector log:\n{}",
                vmalert.log_tail(),
                collector.log()
            )
        })?;
        let util = vm_latest(
            &vm.url(),
            &format!("tc_connector_utilization{{connector=\"{hot}\"}}"),
        )?;
        let alerts = am_alerts(&am.url(), "TeamsConnectorCapacityHigh")?;
        let labels = alerts
            .iter()
            .find(|l| l["connector"] == hot)
            .cloned()
            .unwrap_or_default();
        ensure!(
            labels["deployment"] == "blue"
                && labels["region"] == REGION
                && labels["severity"] == "warning",
            "labels: {labels}"
        );
        ensure!(
            !alerts.iter().any(|l| l["connector"] == cool),
            "the connector at 40 % must not alert: {alerts:?}"
        );
        // Load drops: 3 × 5 = 15 of 45 (33 %).
        for a in agents.iter().take(3) {
            a.set_calls(5)?;
        }
        let resolved = poll_until(
            "TeamsConnectorCapacityHigh to resolve",
            Duration::from_secs(90),
            EVERY_250_MS,
            || {
                Ok(!am_alerts(&am.url(), "TeamsConnectorCapacityHigh")?
                    .iter()
                    .any(|l| l["connector"] == hot))
            },
        )
        .await?;
        let util_after = vm_latest(
            &vm.url(),
            &format!("tc_connector_utilization{{connector=\"{hot}\"}}"),
        )?;
        Ok::<_, anyhow::Error>((fired, resolved, util, util_after))
    }
    .await;
    stop_flush.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flusher.join();
    let (fired, resolved, util, util_after) = result?;
    ensure!(
        util.is_some_and(|u| (u.1 - 42.0 / 45.0).abs() < 1e-6),
        "utilization stored while firing: {util:?}"
    );
    ensure!(
        util_after.is_some_and(|u| (u.1 - 15.0 / 45.0).abs() < 1e-6),
        "utilization after the drop: {util_after:?}"
    );
    for a in &mut agents {
        a.stop(Duration::from_secs(15))?;
    }
    collector.stop(Duration::from_secs(20))?;
    hub.shutdown().await;
    eprintln!(
        "pipeline → vmalert → Alertmanager: fired {fired:?} after start, resolved {resolved:?} after the drop; total {:?}",
        t0.elapsed()
    );
    Ok(())
}
