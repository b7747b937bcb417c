//! A simulated fleet of Teams Connector instances: two connectors, one instance whose Teams
//! service stops, one full, one with an expiring certificate and a growing spool, one that
//! goes silent, one whose spool is full and drops reports. It gives the schema-v1 events
//! each instance sends and, from them alone, every value the stores must then hold.

use anyhow::{anyhow, Result};
use tcpulse_schema::line::FieldValue;
use tcpulse_schema::{AgentInfo, Calls, Health, State, StatusEvent, Timestamp};

/// Report interval of the simulated agents, the collector's rollup interval and Grafana's
/// `$__interval` in the test, seconds.
pub const STEP_S: i64 = 10;
/// Reports published before the collector starts: 15 minutes of history.
pub const HISTORY_STEPS: i64 = 90;
/// The silent instance stops reporting this long before the end of the history.
pub const SILENT_FOR_S: i64 = 8 * 60;
/// The collector's `aggregate.stale_after`, seconds (three report intervals).
pub const STALE_AFTER_S: i64 = 30;
pub const MEM_TOTAL: i64 = 17_179_869_184;
pub const MEM_USED: i64 = 6_442_450_944;
pub const DISK_FREE: i64 = 40_000_000_000;
/// Reports in a full agent spool (the default `spool.max_bytes` holds about 100 000).
pub const SPOOL_FULL: i64 = 100_000;

#[derive(Debug, Clone)]
/// One instance and how it behaves over the history.
pub struct Inst {
    pub connector: &'static str,
    pub deployment: &'static str,
    pub region: &'static str,
    pub scaleset: &'static str,
    pub name: String,
    pub partition: &'static str,
    pub boot: String,
    /// Calls in the first half of the history, then from the second half on.
    pub calls_before: u32,
    pub calls_after: u32,
    /// `service_up` in the first half of the history, then from the second half on.
    pub service_up_before: bool,
    pub service_up_after: bool,
    pub cert_days: f64,
    /// Reports in the agent's spool at report 0.
    pub spool_base: i64,
    /// Reports added to the agent's spool per report (0 = a spool that does not grow).
    pub spool_growth: i64,
    /// Reports the agent drops per report because its spool is full (0 = none).
    pub drop_growth: i64,
    /// Stops reporting this long before the end of the history (0 = keeps reporting).
    pub silent_for: i64,
}

#[derive(Debug, Clone)]
/// A connector rollup as the capacity model defines it.
pub struct Conn {
    pub connector: &'static str,
    pub deployment: &'static str,
    pub region: &'static str,
    pub online: i64,
    pub calls: i64,
    pub peak: i64,
}

impl Conn {
    /// Instances the peak needs.
    pub fn needed(&self) -> i64 {
        (self.peak + 14) / 15
    }
    /// A `tc_connector` field.
    pub fn field(&self, f: &str) -> Option<f64> {
        Some(match f {
            "instances_online" => self.online as f64,
            "call_count" => self.calls as f64,
            "capacity_planned" => (self.online * 15) as f64,
            "capacity_max" => (self.online * 16) as f64,
            "utilization" => self.calls as f64 / (self.online * 15) as f64,
            "headroom_calls" => (self.online * 15 - self.calls) as f64,
            "peak_calls" => self.peak as f64,
            "instances_needed" => self.needed() as f64,
            "vcpu_needed" => (4 * self.needed()) as f64,
            _ => return None,
        })
    }
}

/// The simulated fleet: reports every `STEP_S` at `t(k)`, `k = 0..=steps`.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub instances: Vec<Inst>,
    /// Time of report 0, ms (5 s past a multiple of `STEP_S`, so reports fall between
    /// rollup window ends).
    pub base_ms: i64,
    /// Index of the newest report of the reporting instances.
    pub steps: i64,
    /// Partitions of the hub (each connector has its own).
    pub partitions: Vec<&'static str>,
}

impl Fleet {
    /// The fleet whose history ends within a report interval before `now_ms`.
    pub fn new(now_ms: i64) -> Fleet {
        let step_ms = STEP_S * 1000;
        // The newest report of the history lies 5 s past a window end and in the past.
        let end_ms = (now_ms - 5_000).div_euclid(step_ms) * step_ms + 5_000;
        let base_ms = end_ms - HISTORY_STEPS * step_ms;
        let mut n = 0;
        let mut inst = |connector,
                        deployment,
                        region,
                        scaleset: &'static str,
                        partition,
                        i: usize,
                        (calls_before, calls_after): (u32, u32),
                        (service_up_before, service_up_after): (bool, bool),
                        cert_days,
                        spool_growth,
                        silent_for| {
            n += 1;
            Inst {
                connector,
                deployment,
                region,
                scaleset,
                name: format!("{scaleset}_{i}"),
                partition,
                boot: format!("6f1c2a4e-8b1d-4c3e-9f70-2d5b8a9e0c{n:02x}"),
                calls_before,
                calls_after,
                service_up_before,
                service_up_after,
                cert_days,
                spool_base: 0,
                spool_growth,
                drop_growth: 0,
                silent_for,
            }
        };
        let blue = "tc-blue.example.com";
        let green = "tc-green.example.com";
        let (bd, br, bs) = ("blue", "westeurope", "tc-blue-vmss");
        let (gd, gr, gs) = ("green", "northeurope", "tc-green-vmss");
        let up = (true, true);
        let instances = vec![
            inst(blue, bd, br, bs, "0", 0, (16, 15), up, 41.5, 0, 0),
            // its Teams service stops in the second half
            inst(
                blue,
                bd,
                br,
                bs,
                "0",
                1,
                (15, 12),
                (true, false),
                41.5,
                0,
                0,
            ),
            // full
            inst(blue, bd, br, bs, "0", 2, (15, 16), up, 41.5, 0, 0),
            inst(green, gd, gr, gs, "1", 0, (6, 5), up, 20.0, 0, 0),
            inst(green, gd, gr, gs, "1", 1, (6, 6), up, 20.0, 0, 0),
            // certificate not renewed; spool growing
            inst(green, gd, gr, gs, "1", 2, (8, 7), up, 5.0, 1, 0),
            // stops reporting 8 minutes before the end of the history
            inst(green, gd, gr, gs, "1", 3, (0, 0), up, 20.0, 0, SILENT_FOR_S),
            // cut off from Event Hubs for days: its spool is full (it no longer grows) and
            // the agent drops 2 reports per report (issue 13)
            Inst {
                spool_base: SPOOL_FULL,
                drop_growth: 2,
                ..inst(green, gd, gr, gs, "1", 4, (5, 5), up, 20.0, 0, 0)
            },
        ];
        Fleet {
            instances,
            base_ms,
            steps: HISTORY_STEPS,
            partitions: vec!["0", "1"],
        }
    }

    /// Time of report `k`, ms.
    pub fn t_ms(&self, k: i64) -> i64 {
        self.base_ms + k * STEP_S * 1000
    }

    /// Index of an instance's newest report.
    pub fn last_k(&self, i: &Inst) -> i64 {
        if i.silent_for > 0 {
            HISTORY_STEPS - i.silent_for / STEP_S
        } else {
            self.steps
        }
    }

    /// True for the instance that goes silent.
    pub fn silent(&self, i: &Inst) -> bool {
        i.silent_for > 0
    }

    /// Seconds between an instance's newest report and the newest report of the fleet.
    pub fn silent_secs(&self, i: &Inst) -> i64 {
        (self.steps - self.last_k(i)) * STEP_S
    }

    /// Its call count at report `k`.
    pub fn calls_at(i: &Inst, k: i64) -> u32 {
        if k < HISTORY_STEPS / 2 {
            i.calls_before
        } else {
            i.calls_after
        }
    }

    /// Its `service_up` at report `k`.
    pub fn service_up_at(i: &Inst, k: i64) -> bool {
        if k < HISTORY_STEPS / 2 {
            i.service_up_before
        } else {
            i.service_up_after
        }
    }

    /// The schema-v1 event instance `i` sends as report `k`: built from
    /// [`StatusEvent::example`] with this fleet's values, so an event field added to the
    /// schema reaches the store (with its example value) without an edit here.
    pub fn event(&self, i: &Inst, k: i64) -> Result<Vec<u8>> {
        Ok(tcpulse_schema::encode(&self.status(i, k)?))
    }

    /// The event behind [`Fleet::event`].
    // Every health and agent value of today's schema is set here; the struct updates are
    // for the fields the schema gains later.
    #[allow(clippy::needless_update)]
    pub fn status(&self, i: &Inst, k: i64) -> Result<StatusEvent> {
        let ts = |ms: i64| {
            Timestamp::from_unix_millis(ms).ok_or_else(|| anyhow!("time {ms} out of range"))
        };
        let calls = Self::calls_at(i, k);
        let event = StatusEvent {
            connector: i.connector.into(),
            deployment: i.deployment.into(),
            region: i.region.into(),
            scaleset: i.scaleset.into(),
            instance: i.name.clone(),
            boot: i.boot.parse()?,
            seq: u64::try_from(k + 1)?,
            time: ts(self.t_ms(k))?,
            start_time: Some(ts(self.base_ms - 3_600_000)?),
            state: State::Active,
            calls: Some(Calls {
                call_count: calls,
                max_calls: 16,
                planned_calls: Some(15),
                media_load: Some(u8::try_from(20 + 4 * calls)?),
            }),
            health: Health {
                cpu: Some(0.4),
                mem_used_bytes: Some(u64::try_from(MEM_USED)?),
                mem_total_bytes: Some(u64::try_from(MEM_TOTAL)?),
                disk_free_bytes: Some(u64::try_from(DISK_FREE)?),
                service_up: Some(Self::service_up_at(i, k)),
                cert_expiry_days: Some(i.cert_days),
                ..Health::example()
            },
            agent: Some(AgentInfo {
                version: "0.1.0".into(),
                spooled: u64::try_from(i.spool_base + i.spool_growth * k)?,
                dropped: u64::try_from(i.drop_growth * k)?,
                publish_failing_seconds: None,
                ..AgentInfo::example()
            }),
            ..StatusEvent::example()
        };
        Ok(event)
    }

    /// Reports `from..=to` of every instance that still reports then, per partition in
    /// time order: `(partition, body)`.
    pub fn reports(&self, from: i64, to: i64) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let mut out = Vec::new();
        for k in from..=to {
            for i in &self.instances {
                if k <= self.last_k(i) {
                    out.push((i.partition, self.event(i, k)?));
                }
            }
        }
        Ok(out)
    }

    /// The value of `field` in an instance's newest `tc_instance` point that has it.
    pub fn inst_field(&self, i: &Inst, f: &str) -> Option<f64> {
        let k = self.last_k(i);
        let calls = Self::calls_at(i, k) as f64;
        Some(match f {
            "call_count" => calls,
            "max_calls" => 16.0,
            "planned_calls" => 15.0,
            "media_load" => 20.0 + 4.0 * calls,
            "utilization" => calls / 15.0,
            // The collector writes `up=0` alone once the instance is stale.
            "up" => {
                if self.silent(i) {
                    0.0
                } else {
                    1.0
                }
            }
            "state_code" => 1.0,
            "cpu" => 0.4,
            "mem_used_bytes" => MEM_USED as f64,
            "mem_total_bytes" => MEM_TOTAL as f64,
            "disk_free_bytes" => DISK_FREE as f64,
            "service_up" => f64::from(u8::from(Self::service_up_at(i, k))),
            "cert_expiry_days" => i.cert_days,
            "agent_spooled" => (i.spool_base + i.spool_growth * k) as f64,
            "agent_dropped" => (i.drop_growth * k) as f64,
            // Any other field (one added to the schema after these checks were written):
            // what the line mapping writes for this instance's newest report.
            other => return self.mapped_field(i, k, other),
        })
    }

    /// `field` of the `tc_instance` point the collector writes for report `k` of `i`.
    fn mapped_field(&self, i: &Inst, k: i64, field: &str) -> Option<f64> {
        let event = self.status(i, k).ok()?;
        match tcpulse_schema::line::instance_point(&event, true).get_field(field)? {
            FieldValue::Float(v) => Some(*v),
            FieldValue::Int(v) => Some(*v as f64),
            FieldValue::UInt(v) => Some(*v as f64),
            FieldValue::Bool(v) => Some(f64::from(u8::from(*v))),
            FieldValue::Str(_) => None,
        }
    }

    /// The connector rollups as the capacity model defines them, from the reports: online
    /// = fresh instances now; `peak` = the highest call count of any rollup window (a
    /// window ending 5 s after report `k` sees report `k` of every instance that reported
    /// within `STALE_AFTER_S` of its end).
    pub fn connectors(&self) -> Vec<Conn> {
        let mut out: Vec<Conn> = Vec::new();
        for i in &self.instances {
            if out.iter().any(|c| c.connector == i.connector) {
                continue;
            }
            let members: Vec<&Inst> = self
                .instances
                .iter()
                .filter(|m| m.connector == i.connector)
                .collect();
            let window_calls = |k: i64| -> i64 {
                members
                    .iter()
                    .filter(|m| (k - self.last_k(m)) * STEP_S + 5 <= STALE_AFTER_S)
                    .map(|m| i64::from(Self::calls_at(m, k.min(self.last_k(m)))))
                    .sum()
            };
            let online = members.iter().filter(|m| !self.silent(m)).count() as i64;
            out.push(Conn {
                connector: i.connector,
                deployment: i.deployment,
                region: i.region,
                online,
                calls: window_calls(self.steps),
                peak: (0..=self.steps).map(window_calls).max().unwrap_or(0),
            });
        }
        out
    }

    /// Valid events (not duplicates) sent to `partition`.
    pub fn events_in(&self, partition: &str) -> i64 {
        self.instances
            .iter()
            .filter(|i| i.partition == partition)
            .map(|i| self.last_k(i) + 1)
            .sum()
    }
}
