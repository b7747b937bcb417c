//! When to report, and the status event of one report.
//!
//! [`Reporter`] is pure bookkeeping (no I/O, clock passed in), so its rules are unit-tested:
//! - an instance is reported every `interval`, and at once when its call count or state
//!   changes (the run loop reads the source every `poll_interval`);
//! - a failed read reports every instance of the last good read (or this agent's own
//!   instance if there was none) with `state = unknown` and no counters;
//! - every event carries `(instance, boot, seq)`: `boot` is a random UUID per agent start,
//!   `seq` increases by one per event and starts above the highest `seq` in the spool, so
//!   it never repeats, not even across restarts;
//! - the partition key is the connector FQDN.
//!
//! Its settings, the `[identity]` and `[report]` sections, are in [`config`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tcpulse_schema::{AgentInfo, Health, State, StatusEvent, Timestamp, SCHEMA_V1};
use uuid::Uuid;

use crate::sources::Sample;

pub mod config;
use config::Identity;

/// Agent version written into `agent.version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Scale set written when neither the source nor the config names one.
const UNKNOWN_SCALESET: &str = "unknown";

#[derive(Debug, Clone, Copy)]
struct Last {
    call_count: Option<u32>,
    state: State,
    at: Instant,
}

/// Decides which samples are due and turns them into events.
#[derive(Debug)]
pub struct Reporter {
    identity: Identity,
    boot: Uuid,
    next_seq: u64,
    interval: Duration,
    slack: Duration,
    local_start_time: Option<Timestamp>,
    last: HashMap<String, Last>,
    known: Vec<Sample>,
}

impl Reporter {
    /// A reporter for a new agent start: `boot` is this start's id, `first_seq` the first
    /// sequence number to use, `local_start_time` the host's boot time (for local sources).
    pub fn new(
        identity: Identity,
        boot: Uuid,
        first_seq: u64,
        interval: Duration,
        local_start_time: Option<Timestamp>,
    ) -> Self {
        Reporter {
            identity,
            boot,
            next_seq: first_seq,
            interval,
            slack: Duration::ZERO,
            local_start_time,
            last: HashMap::new(),
            known: Vec::new(),
        }
    }

    /// Treats an instance as due when its interval elapses within `slack` from now. Set it
    /// to half the poll interval, so timer jitter does not push a report a whole poll late.
    pub fn with_slack(mut self, slack: Duration) -> Self {
        self.slack = slack;
        self
    }

    /// This start's id.
    pub fn boot(&self) -> Uuid {
        self.boot
    }

    /// The `seq` the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn instance_of<'a>(&'a self, s: &'a Sample) -> &'a str {
        s.instance.as_deref().unwrap_or(&self.identity.instance)
    }

    /// The samples to report now, given the outcome of a source read at `now`.
    pub fn due(&mut self, read: Result<Vec<Sample>, ()>, now: Instant) -> Vec<Sample> {
        let samples = match read {
            Ok(samples) => {
                self.known = samples.clone();
                samples
            }
            Err(()) if self.known.is_empty() => vec![Sample {
                instance: None,
                scaleset: None,
                connector: None,
                state: State::Unknown,
                calls: None,
                start_time: None,
            }],
            Err(()) => self
                .known
                .iter()
                .map(|s| Sample {
                    state: State::Unknown,
                    calls: None,
                    ..s.clone()
                })
                .collect(),
        };
        let mut due = Vec::new();
        for s in samples {
            let key = self.instance_of(&s).to_owned();
            let call_count = s.calls.map(|c| c.call_count);
            let is_due = match self.last.get(&key) {
                None => true,
                Some(l) => {
                    l.call_count != call_count
                        || l.state != s.state
                        || now.duration_since(l.at) + self.slack >= self.interval
                }
            };
            if is_due {
                self.last.insert(
                    key,
                    Last {
                        call_count,
                        state: s.state,
                        at: now,
                    },
                );
                due.push(s);
            }
        }
        due
    }

    /// The event for `sample`, taking the next `seq`. `health` is used only for samples of
    /// this agent's own instance.
    pub fn event(
        &mut self,
        sample: &Sample,
        health: Health,
        agent: AgentInfo,
        time: Timestamp,
    ) -> StatusEvent {
        let seq = self.next_seq;
        self.next_seq += 1;
        let local = sample.instance.is_none();
        let scaleset = sample
            .scaleset
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                if self.identity.scaleset.is_empty() {
                    UNKNOWN_SCALESET.to_owned()
                } else {
                    self.identity.scaleset.clone()
                }
            });
        StatusEvent {
            schema: SCHEMA_V1.to_owned(),
            connector: sample
                .connector
                .clone()
                .unwrap_or_else(|| self.identity.connector.clone()),
            deployment: self.identity.deployment.clone(),
            region: self.identity.region.clone(),
            scaleset,
            instance: self.instance_of(sample).to_owned(),
            boot: self.boot,
            seq,
            time,
            start_time: sample
                .start_time
                .or(if local { self.local_start_time } else { None }),
            state: sample.state,
            calls: sample.calls,
            health: if local { health } else { Health::default() },
            agent: Some(agent),
        }
    }
}

/// `agent` for an event: this version with the spool's backlog, the drops since start and
/// how long publishing has been failing with a fatal error (seconds, 0 when it works).
pub fn agent_info(spooled: u64, dropped: u64, publish_failing_seconds: u64) -> AgentInfo {
    AgentInfo {
        version: AGENT_VERSION.to_owned(),
        spooled,
        dropped,
        publish_failing_seconds: Some(publish_failing_seconds),
        credential_expires_in_seconds: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpulse_schema::Calls;

    fn identity() -> Identity {
        Identity {
            connector: "tc-eu.example.com".into(),
            deployment: "blue".into(),
            region: "westeurope".into(),
            scaleset: "tc-eu-vmss".into(),
            instance: "tc-eu-vmss_3".into(),
        }
    }

    fn calls(n: u32) -> Vec<Sample> {
        vec![Sample::local(Calls {
            call_count: n,
            max_calls: 16,
            planned_calls: None,
            media_load: Some(50),
        })]
    }

    #[test]
    fn reports_every_interval_and_at_once_on_change() {
        let mut r = Reporter::new(identity(), Uuid::nil(), 0, Duration::from_secs(10), None);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(r.due(Ok(calls(3)), t0).len(), 1, "first read is reported");
        assert!(
            r.due(Ok(calls(3)), t0 + s).is_empty(),
            "unchanged within the interval"
        );
        assert_eq!(
            r.due(Ok(calls(4)), t0 + 2 * s).len(),
            1,
            "changed count: at once"
        );
        assert!(
            r.due(Ok(calls(4)), t0 + 11 * s).is_empty(),
            "interval counts from the last report"
        );
        assert_eq!(
            r.due(Ok(calls(4)), t0 + 12 * s).len(),
            1,
            "interval elapsed"
        );
        let failed = r.due(Err(()), t0 + 13 * s);
        assert_eq!(failed.len(), 1, "failure changes state: at once");
        assert_eq!((failed[0].state, failed[0].calls), (State::Unknown, None));
        assert!(
            r.due(Err(()), t0 + 14 * s).is_empty(),
            "still failing: the interval applies"
        );
    }

    #[test]
    fn failure_before_any_read_reports_own_instance_unknown() {
        let mut r = Reporter::new(identity(), Uuid::nil(), 0, Duration::from_secs(10), None);
        let due = r.due(Err(()), Instant::now());
        let ev = r.event(
            &due[0],
            Health::default(),
            agent_info(0, 0, 0),
            Timestamp::EPOCH,
        );
        assert_eq!(
            (ev.instance.as_str(), ev.state, ev.calls),
            ("tc-eu-vmss_3", State::Unknown, None)
        );
        ev.validate().unwrap();
    }

    #[test]
    fn events_carry_identity_boot_and_rising_seq() {
        let boot = Uuid::from_u128(42);
        let mut r = Reporter::new(
            identity(),
            boot,
            100,
            Duration::from_secs(10),
            Timestamp::from_unix_millis(5),
        );
        let health = Health {
            cpu: Some(0.5),
            ..Health::default()
        };
        let due = r.due(Ok(calls(7)), Instant::now());
        let a = r.event(&due[0], health, agent_info(2, 1, 0), Timestamp::EPOCH);
        let b = r.event(&due[0], health, agent_info(2, 1, 0), Timestamp::EPOCH);
        assert_eq!((a.seq, b.seq, r.next_seq()), (100, 101, 102));
        assert_eq!(
            (a.boot, a.connector.as_str(), a.scaleset.as_str()),
            (boot, "tc-eu.example.com", "tc-eu-vmss")
        );
        assert_eq!(a.health.cpu, Some(0.5));
        assert_eq!(a.start_time, Timestamp::from_unix_millis(5));
        assert_eq!(
            a.agent.as_ref().map(|x| (x.spooled, x.dropped)),
            Some((2, 1))
        );
        a.validate().unwrap();
    }

    #[test]
    fn fleet_samples_keep_their_own_identity_and_no_host_health() {
        let mut r = Reporter::new(
            Identity {
                scaleset: String::new(),
                ..identity()
            },
            Uuid::nil(),
            0,
            Duration::from_secs(10),
            None,
        );
        let node = |name: &str, n| Sample {
            instance: Some(name.into()),
            scaleset: Some("tc-us-vmss".into()),
            connector: Some("tc-us.example.com".into()),
            ..calls(n).remove(0)
        };
        let t0 = Instant::now();
        assert_eq!(r.due(Ok(vec![node("a", 1), node("b", 2)]), t0).len(), 2);
        let due = r.due(
            Ok(vec![node("a", 1), node("b", 3)]),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(due.len(), 1, "only the changed node");
        let ev = r.event(
            &due[0],
            Health {
                cpu: Some(0.9),
                ..Health::default()
            },
            agent_info(0, 0, 0),
            Timestamp::EPOCH,
        );
        assert_eq!(
            (ev.instance.as_str(), ev.connector.as_str(), ev.health.cpu),
            ("b", "tc-us.example.com", None)
        );
        // Source fails: both known nodes go unknown at once.
        let failed = r.due(Err(()), t0 + Duration::from_secs(2));
        assert_eq!(
            failed.iter().filter(|s| s.state == State::Unknown).count(),
            2
        );
    }
}
