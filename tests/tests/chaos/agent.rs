//! Chaos cases: agent (issue 12, faults 1, 2 and 10, and the SIGKILL during a hub outage
//! that already held). Each runs the real `tcpulse-agent` binary (file source, health off)
//! and reads what reached the hub back with our consumer from earliest.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use tcpulse_tests::agent::{AgentOptions, AgentProcess, Target, OTHER_KEY};
use tcpulse_tests::chaos::{record, Row, Tmpfs};
use tcpulse_tests::client;
use tcpulse_tests::hub::{with_key, HubInfo, HubOptions, HubProcess, Mode, Policy};
use tcpulse_tests::wait::wait_for;

const CONNECTOR: &str = "tc-chaos.example.com";

/// One `tcpulse-agent run` of the chaos connector, reporting every 200 ms from `dir`, its
/// log `agent-<run>.log` there.
pub(crate) fn start_agent(
    dir: &Path,
    spool: &Path,
    instance: &str,
    target: Target<'_>,
    run: usize,
) -> Result<AgentProcess> {
    let opts = AgentOptions {
        connector: CONNECTOR.into(),
        deployment: None,
        region: "westeurope".into(),
        scaleset: "vmss".into(),
        instance: instance.into(),
        calls: 3,
        interval: "200ms".into(),
        poll_interval: "100ms".into(),
        spool_dir: spool.to_path_buf(),
        publish:
            "fatal_retry_initial = \"1s\"\nfatal_retry_max = \"2s\"\nshutdown_flush = \"5s\"\n"
                .into(),
    };
    AgentProcess::start_as_run(dir, &opts, target, run)
}

/// How long a SIGTERMed agent may take to flush and exit.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(20);

/// [`wait_for`] over a plain predicate.
async fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration> {
    wait_for(what, timeout, || Ok(cond())).await
}

/// Every status body of every partition, from earliest, until each is quiet for `idle`.
pub(crate) async fn read_all(info: &HubInfo, idle: Duration) -> Result<Vec<Value>> {
    client::read_all(info, idle, Duration::from_secs(60))
        .await?
        .iter()
        .map(|ev| serde_json::from_slice(&ev.body).context("body is not JSON"))
        .collect()
}

/// Per boot: the seqs received (with repeats), and the highest `agent.dropped` reported.
#[derive(Debug, Default)]
pub(crate) struct BootTally {
    seqs: Vec<u64>,
    pub(crate) dropped: u64,
}

pub(crate) fn tally(events: &[Value], instance: &str) -> BTreeMap<String, BootTally> {
    let mut per: BTreeMap<String, BootTally> = BTreeMap::new();
    for e in events.iter().filter(|e| e["instance"] == instance) {
        let t = per
            .entry(e["boot"].as_str().unwrap_or_default().to_string())
            .or_default();
        t.seqs.push(e["seq"].as_u64().unwrap_or(u64::MAX));
        t.dropped = t.dropped.max(e["agent"]["dropped"].as_u64().unwrap_or(0));
    }
    per
}

impl BootTally {
    pub(crate) fn distinct(&self) -> BTreeSet<u64> {
        self.seqs.iter().copied().collect()
    }
    pub(crate) fn duplicates(&self) -> u64 {
        (self.seqs.len() - self.distinct().len()) as u64
    }
    /// Seqs between the lowest and highest received that never arrived.
    fn gaps(&self) -> u64 {
        let d = self.distinct();
        match (d.first(), d.last()) {
            (Some(a), Some(b)) => b - a + 1 - d.len() as u64,
            _ => 0,
        }
    }
}

/// `agent.publish_failing_seconds` of each report of `instance`, by seq; an error names
/// the first report without it.
fn publish_failing_by_seq(events: &[Value], instance: &str) -> Result<BTreeMap<u64, u64>> {
    events
        .iter()
        .filter(|e| e["instance"] == instance)
        .map(|e| {
            let seq = e["seq"].as_u64().context("seq")?;
            let failing = e["agent"]["publish_failing_seconds"]
                .as_u64()
                .with_context(|| format!("report {seq} lacks agent.publish_failing_seconds"))?;
            Ok((seq, failing))
        })
        .collect()
}

pub(crate) fn field_u64(log: &str, line_has: &str, field: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find(|l| l.contains(line_has))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{field}=")))
                .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        })
}

// ---------------------------------------------------------------------------------------
// fault 1: disk full
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_agent_disk_full() -> Result<()> {
    let mut hub = HubProcess::spawn(HubOptions {
        hubs: vec![("tcpulse".into(), 2)],
        plain: false,
        ..HubOptions::default()
    })
    .await?;
    let info = hub.info.clone();
    let tmp = tempfile::tempdir()?;
    let fs = Tmpfs::mount(16 << 20)?;
    let spool = fs.path().join("spool");
    let cs = info.connection_string(Mode::Tls, Policy::Send)?.to_string();
    let mut agent = start_agent(tmp.path(), &spool, "df1", Target::Hub(&info, cs), 0)?;
    wait_until("the agent to connect", Duration::from_secs(20), || {
        agent.log().contains("event hubs connection open")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The hub goes away (the spool must grow), and the disk fills up.
    hub.stop(Duration::from_secs(15)).await?;
    let filled = fs.fill("filler")?;
    wait_until(
        "the agent to log the failing append",
        Duration::from_secs(25),
        || agent.log().contains("spool append failed"),
    )
    .await
    .with_context(|| format!("log:\n{}", agent.log()))?;
    // The hub comes back while the disk is still full: whatever the agent can read it may
    // send, but what it cannot remove it must not send again and again.
    hub.restart().await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    agent.ensure_running()?;
    fs.free("filler")?;
    let freed = Instant::now();
    wait_until("the spool to recover", Duration::from_secs(20), || {
        agent.log().contains("spool writable again")
    })
    .await
    .with_context(|| format!("log:\n{}", agent.log()))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.ensure_running()?;
    let status = agent.stop(STOP_GRACE)?;
    let log = agent.log();
    let since_free = freed.elapsed();
    ensure!(status.success(), "agent exit {status}; log:\n{log}");
    ensure!(
        log.contains("spool cannot remove") || log.contains("spool append failed"),
        "the failure was logged"
    );
    let spooled_at_exit = field_u64(&log, "tcpulse-agent stopped", "spooled").unwrap_or(u64::MAX);
    ensure!(
        spooled_at_exit == 0,
        "left {spooled_at_exit} spooled; log:\n{log}"
    );
    let failed = if log.contains("spool cannot remove") {
        "append and removal of sent events failed (logged; sending paused, nothing re-sent)"
    } else {
        "append failed (logged; reports held in memory)"
    };
    let info = hub.info.clone();

    let events = read_all(&info, Duration::from_secs(2)).await?;
    let per = tally(&events, "df1");
    ensure!(per.len() == 1, "one boot expected: {per:?}");
    let t = per.values().next().unwrap();
    let d = t.distinct();
    let made = d.last().map_or(0, |m| m + 1);
    let dup = t.duplicates();
    let lost = (made - d.len() as u64).saturating_sub(t.dropped);
    ensure!(d.first() == Some(&0), "first seq {:?}", d.first());
    ensure!(
        lost == 0,
        "{lost} reports lost uncounted (gaps {}, dropped {}); log:\n{log}",
        t.gaps(),
        t.dropped
    );
    // No duplicate storm: at most one batch re-sent.
    ensure!(dup <= 256, "{dup} duplicate sends (storm); log:\n{log}");
    ensure!(
        t.seqs.len() as u64 <= made + 256,
        "{} sends for {made} reports",
        t.seqs.len()
    );
    record(&Row {
        fault: "agent disk full during spool append".into(),
        events_sent: made,
        points_stored: d.len() as u64,
        lost,
        duplicated: dup,
        counted_dropped: t.dropped,
        outcome: format!(
            "filled {filled} B; {failed}; reopened by itself; stopped {since_free:.1?} after space came back with nothing left spooled; exit 0"
        ),
    })?;
    drop(fs);
    hub.stop(Duration::from_secs(15)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_agent_starts_on_a_full_disk() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let fs = Tmpfs::mount(4 << 20)?;
    fs.fill("filler")?;
    let out = tmp.path().join("events.jsonl");
    let spool = fs.path().join("spool");
    let mut agent = start_agent(tmp.path(), &spool, "fd1", Target::File(out.clone()), 0)?;
    wait_until("the failing append", Duration::from_secs(15), || {
        agent.log().contains("spool append failed")
    })
    .await
    .with_context(|| agent.log())?;
    // Reports keep coming against the full disk.
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.ensure_running()?;
    fs.free("filler")?;
    wait_until("the spool to recover", Duration::from_secs(15), || {
        agent.log().contains("spool writable again")
    })
    .await
    .with_context(|| agent.log())?;
    let status = agent.stop(STOP_GRACE)?;
    let log = agent.log();
    ensure!(status.success(), "exit {status}; log:\n{log}");
    let seqs: BTreeSet<u64> = std::fs::read_to_string(&out)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["event"]["seq"].as_u64())
        .collect();
    let made = seqs.last().map_or(0, |m| m + 1);
    ensure!(
        made > 0 && seqs.len() as u64 == made,
        "reports made while full arrive: {seqs:?}"
    );
    record(&Row {
        fault: "agent started on a full disk".into(),
        events_sent: made,
        points_stored: seqs.len() as u64,
        lost: made - seqs.len() as u64,
        duplicated: 0,
        counted_dropped: 0,
        outcome: "ran with reports held in memory, wrote them when space came back; exit 0".into(),
    })?;
    drop(fs);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// fault 2: corrupt, truncated or random spool; lock contention
// ---------------------------------------------------------------------------------------

fn damage(path: &Path, how: &str) -> Result<()> {
    let mut b = std::fs::read(path)?;
    match how {
        "flipped bytes" => {
            let n = b.len();
            for i in (64..n).step_by(61) {
                b[i] ^= 0x5A;
            }
        }
        "truncated" => b.truncate(b.len() / 2),
        "random bytes" => {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for v in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = x as u8;
            }
        }
        _ => bail!("unknown damage {how}"),
    }
    std::fs::write(path, b)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_agent_corrupt_spool() -> Result<()> {
    for how in ["flipped bytes", "truncated", "random bytes"] {
        let tmp = tempfile::tempdir()?;
        let spool = tmp.path().join("spool");
        // A backlog: Event Hubs unreachable, so every report stays spooled.
        let mut a = start_agent(tmp.path(), &spool, "cs1", Target::Unreachable, 0)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        a.stop(STOP_GRACE)?;
        let backlog = field_u64(&a.log(), "tcpulse-agent stopped", "spooled")
            .ok_or_else(|| anyhow!("no stop line; log:\n{}", a.log()))?;
        ensure!(backlog >= 3, "{how}: backlog {backlog}");
        let file = spool.join("spool.redb");
        damage(&file, how)?;

        let out = tmp.path().join("events.jsonl");
        let mut b = start_agent(tmp.path(), &spool, "cs1", Target::File(out.clone()), 1)?;
        let started = wait_until("the agent to start", Duration::from_secs(10), || {
            b.log().contains("tcpulse-agent started")
                || matches!(b.process().try_wait(), Ok(Some(_)))
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log_b = b.log();
        let status = match b.process().try_wait() {
            Ok(Some(s)) => s,
            _ => b.stop(STOP_GRACE)?,
        };
        ensure!(
            started.is_ok() && status.success(),
            "{how}: exit {status}; log:\n{log_b}"
        );
        ensure!(
            !log_b.contains("panicked at"),
            "{how}: a panic message; log:\n{log_b}"
        );
        let moved: Vec<_> = std::fs::read_dir(&spool)?
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("spool.redb.corrupt-")
            })
            .collect();
        let quarantined = log_b.contains("cannot be read") && log_b.contains("moved it to");
        // redb may read lightly damaged files as valid; then the backlog must be sent.
        let sent = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count() as u64;
        if how != "flipped bytes" || !moved.is_empty() {
            ensure!(
                moved.len() == 1 && quarantined,
                "{how}: not moved aside; log:\n{log_b}"
            );
        }
        // The second start works and moves nothing.
        let mut c = start_agent(tmp.path(), &spool, "cs1", Target::File(out.clone()), 2)?;
        wait_until("the second start", Duration::from_secs(10), || {
            c.log().contains("tcpulse-agent started")
        })
        .await
        .with_context(|| format!("{how}: {}", c.log()))?;
        let status2 = c.stop(STOP_GRACE)?;
        ensure!(
            status2.success(),
            "{how}: second start exit {status2}; log:\n{}",
            c.log()
        );
        ensure!(
            !c.log().contains("moved it to"),
            "{how}: second start moved a file again"
        );
        let (lost, counted) = if moved.is_empty() {
            (backlog.saturating_sub(sent), 0)
        } else {
            (0, backlog)
        };
        record(&Row {
            fault: format!("agent spool file {how}"),
            events_sent: backlog,
            points_stored: if moved.is_empty() {
                sent.min(backlog)
            } else {
                0
            },
            lost,
            duplicated: 0,
            counted_dropped: counted,
            outcome: if moved.is_empty() {
                "read as valid by redb; started, sent the backlog; exit 0 twice".into()
            } else {
                format!("moved aside, one ERROR naming the file and {} bytes; started fresh; exit 0 twice", std::fs::metadata(moved[0].path()).map(|m| m.len()).unwrap_or(0))
            },
        })?;
    }

    // Lock contention: a second agent on the same spool keeps its own message, exit 1 (a
    // runtime start-up failure, not a configuration error: systemd may restart it).
    let tmp = tempfile::tempdir()?;
    let spool = tmp.path().join("spool");
    let mut first = start_agent(&tmp.path().join("a"), &spool, "lk1", Target::Unreachable, 0)?;
    wait_until("the first agent", Duration::from_secs(10), || {
        first.log().contains("tcpulse-agent started")
    })
    .await?;
    let mut second = start_agent(&tmp.path().join("b"), &spool, "lk2", Target::Unreachable, 0)?;
    let st = second.process().wait_exit(Duration::from_secs(10))?;
    let log2 = second.log();
    ensure!(st.code() == Some(1), "second agent exit {st}; log:\n{log2}");
    ensure!(log2.contains("another tcpulse-agent"), "{log2}");
    first.ensure_running()?;
    first.stop(STOP_GRACE)?;
    ensure!(
        std::fs::read_dir(&spool)?.count() == 1,
        "the locked spool was moved aside"
    );
    record(&Row {
        fault: "agent spool locked by a second agent".into(),
        outcome: "second agent exit 1: \"is another tcpulse-agent using it?\"; first unaffected"
            .into(),
        ..Row::default()
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// fault 10: wrong key, then the right one
// ---------------------------------------------------------------------------------------

/// Replaces the key of the `send` policy in the hub's policies file.
fn set_send_key(policies: &Path, key: &str) -> Result<String> {
    let text = std::fs::read_to_string(policies)?;
    let mut old = None;
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.splitn(3, ':').collect::<Vec<_>>()[..] {
            ["send", rights, k] => {
                old = Some(k.to_string());
                format!("send:{rights}:{key}")
            }
            _ => l.to_string(),
        })
        .collect();
    std::fs::write(policies, out.join("\n") + "\n")?;
    old.ok_or_else(|| anyhow!("no send policy in {}", policies.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_agent_wrong_key_then_right_key() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("hubdata");
    let mut hub = HubProcess::spawn(HubOptions {
        hubs: vec![("tcpulse".into(), 2)],
        plain: false,
        data_dir: Some(data.clone()),
        ..HubOptions::default()
    })
    .await?;
    let info = hub.info.clone();
    let right = info.connection_string(Mode::Tls, Policy::Send)?.to_string();
    let agent_key = OTHER_KEY;
    let started = Instant::now();
    let mut agent = start_agent(
        &tmp.path().join("agent"),
        &tmp.path().join("spool"),
        "wk1",
        Target::Hub(&info, with_key(&right, agent_key)),
        0,
    )?;
    wait_until("two fatal attempts", Duration::from_secs(20), || {
        agent
            .log()
            .matches("sending paused, reports keep being spooled")
            .count()
            >= 2
    })
    .await
    .with_context(|| format!("log:\n{}", agent.log()))?;
    agent.ensure_running()?;

    // The operator restores the key the agent has (rotation done): the hub accepts it.
    set_send_key(&data.join("policies"), agent_key)?;
    hub.restart().await?;
    let resumed = wait_until("sending to resume", Duration::from_secs(20), || {
        agent.log().contains("publishing works again")
    })
    .await
    .with_context(|| format!("log:\n{}", agent.log()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = agent.stop(STOP_GRACE)?;
    let log = agent.log();
    ensure!(status.success(), "exit {status}");
    let fatal_lines = log
        .matches("sending paused, reports keep being spooled")
        .count();
    ensure!(
        log.contains("retrying in") && log.contains("SharedAccessKey"),
        "the fatal line names the retry and what to check:\n{log}"
    );
    let events = read_all(&hub.info, Duration::from_secs(2)).await?;
    let per = tally(&events, "wk1");
    ensure!(per.len() == 1, "one boot (no restart): {per:?}");
    let t = per.values().next().unwrap();
    let d = t.distinct();
    let made = d.last().map_or(0, |m| m + 1);
    ensure!(
        d.first() == Some(&0) && t.gaps() == 0,
        "reports spooled during the refusal arrive: {d:?}"
    );
    let failing = publish_failing_by_seq(&events, "wk1")?;
    let during = failing.values().filter(|&&f| f > 0).count();
    let longest = failing.values().copied().max().unwrap_or(0);
    ensure!(
        during >= 2 && failing.values().last() == Some(&0),
        "reports made during the refusal say publishing failed, the last ones that it works: {failing:?}"
    );
    ensure!(
        longest <= started.elapsed().as_secs() + 1,
        "failing for {longest} s, longer than the agent ran: {failing:?}"
    );
    record(&Row {
        fault: "agent wrong key, then the key restored".into(),
        events_sent: made,
        points_stored: d.len() as u64,
        lost: made - d.len() as u64,
        duplicated: t.duplicates(),
        counted_dropped: t.dropped,
        outcome: format!(
            "{fatal_lines} fatal ERROR lines (slow retry), resumed {resumed:.1?} after the hub took the key, no restart; {during} reports say publishing failed (up to {longest} s), the last say 0"
        ),
    })?;
    hub.stop(Duration::from_secs(15)).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// held already: SIGKILL during a hub outage
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_agent_sigkill_during_hub_outage() -> Result<()> {
    let mut hub = HubProcess::spawn(HubOptions {
        hubs: vec![("tcpulse".into(), 2)],
        plain: false,
        ..HubOptions::default()
    })
    .await?;
    let info = hub.info.clone();
    let tmp = tempfile::tempdir()?;
    let spool = tmp.path().join("spool");
    let cs = info.connection_string(Mode::Tls, Policy::Send)?.to_string();
    let mut a = start_agent(tmp.path(), &spool, "sk1", Target::Hub(&info, cs.clone()), 0)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hub.stop(Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.kill()?;
    let mut b = start_agent(tmp.path(), &spool, "sk1", Target::Hub(&info, cs), 1)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hub.restart().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = b.stop(STOP_GRACE)?;
    ensure!(status.success(), "exit {status}; log:\n{}", b.log());
    let events = read_all(&hub.info, Duration::from_secs(2)).await?;
    let per = tally(&events, "sk1");
    ensure!(per.len() == 2, "two boots: {per:?}");
    let mut all = BTreeSet::new();
    let mut dup = 0;
    for t in per.values() {
        dup += t.duplicates();
        all.extend(t.distinct());
    }
    let made = all.last().map_or(0, |m| m + 1);
    let lost = made - all.len() as u64;
    ensure!(
        lost == 0 && dup == 0,
        "lost {lost}, duplicated {dup}: {per:?}"
    );
    record(&Row {
        fault: "agent SIGKILL during a hub outage".into(),
        events_sent: made,
        points_stored: all.len() as u64,
        lost,
        duplicated: dup,
        counted_dropped: 0,
        outcome: "spool replayed after restart, seq continued across boots; exit 0".into(),
    })?;
    hub.stop(Duration::from_secs(15)).await?;
    Ok(())
}
