//! The fleet view: follows the line-protocol file the collector writes, keeps the newest
//! `tc_connector` and `tc_instance` values, evaluates the capacity alerts with the
//! thresholds of `tcpulse_schema::capacity` (the same as `dashboards/`), and renders a
//! table (terminal) or one line per connector (logs).
//!
//! Only what the collector stored is shown: no side channel from the agents.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use tcpulse_schema::capacity::{
    MAX_CALLS_PER_INSTANCE, PLANNED_CALLS_PER_INSTANCE, UTILIZATION_CRITICAL, UTILIZATION_HIGH,
};
use tokio_util::sync::CancellationToken;

/// A field value of a parsed line.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A float (`1.5`).
    Float(f64),
    /// An integer (`3i`, `3u`).
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A string (`"x"`).
    Str(String),
}

impl Value {
    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::Bool(_) | Value::Str(_) => None,
        }
    }
}

/// One parsed line of line protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Measurement.
    pub measurement: String,
    /// Tags, unescaped.
    pub tags: BTreeMap<String, String>,
    /// Fields.
    pub fields: BTreeMap<String, Value>,
    /// Timestamp, nanoseconds.
    pub timestamp_ns: i64,
}

impl Line {
    /// A tag's value, or "".
    pub fn tag(&self, key: &str) -> &str {
        self.tags.get(key).map_or("", String::as_str)
    }

    /// A numeric field.
    pub fn num(&self, key: &str) -> Option<f64> {
        self.fields.get(key).and_then(Value::as_f64)
    }
}

/// Splits `s` at unescaped `sep` outside double quotes (quotes only count in fields).
fn split_unescaped(s: &str, sep: char, quotes: bool) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped, mut quoted) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if quotes && c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some(&n) if matches!(n, ',' | '=' | ' ' | '\\' | '"') => {
                    out.push(n);
                    chars.next();
                }
                _ => out.push(c),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_value(v: &str) -> Option<Value> {
    if let Some(q) = v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return Some(Value::Str(unescape(q)));
    }
    if let Some(i) = v.strip_suffix('i') {
        return i.parse().ok().map(Value::Int);
    }
    if let Some(u) = v.strip_suffix('u') {
        return u
            .parse::<u64>()
            .ok()
            .map(|u| Value::Int(u.min(i64::MAX as u64) as i64));
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    v.parse().ok().map(Value::Float)
}

/// Parses one line of line protocol (`measurement,tag=v field=1i 123`); `None` for
/// comments, blank and malformed lines.
pub fn parse_line(line: &str) -> Option<Line> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() || line.starts_with('#') {
        return None;
    }
    let parts = split_unescaped(line, ' ', true);
    let (series, fields, ts) = match parts.as_slice() {
        [s, f, t] => (*s, *f, Some(*t)),
        [s, f] => (*s, *f, None),
        _ => return None,
    };
    let mut series = split_unescaped(series, ',', false).into_iter();
    let measurement = unescape(series.next()?);
    if measurement.is_empty() {
        return None;
    }
    let mut tags = BTreeMap::new();
    for t in series {
        let kv = split_unescaped(t, '=', false);
        let [k, v] = kv.as_slice() else { return None };
        tags.insert(unescape(k), unescape(v));
    }
    let mut out = BTreeMap::new();
    for f in split_unescaped(fields, ',', true) {
        let (k, v) = f.split_once('=')?;
        out.insert(unescape(k), parse_value(v)?);
    }
    if out.is_empty() {
        return None;
    }
    let timestamp_ns = match ts {
        Some(t) => t.parse().ok()?,
        None => 0,
    };
    Some(Line {
        measurement,
        tags,
        fields: out,
        timestamp_ns,
    })
}

/// The newest rollup of one connector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectorRow {
    /// Window end of the rollup, ns.
    pub timestamp_ns: i64,
    /// `instances_online`.
    pub instances_online: f64,
    /// `call_count`.
    pub call_count: f64,
    /// `capacity_planned`.
    pub capacity_planned: f64,
    /// `capacity_max`.
    pub capacity_max: f64,
    /// `utilization` (0..).
    pub utilization: f64,
    /// `instances_needed`.
    pub instances_needed: f64,
    /// `vcpu_needed`.
    pub vcpu_needed: f64,
    /// `peak_calls`.
    pub peak_calls: f64,
}

/// The newest point of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InstanceRow {
    /// Sample time, ns.
    pub timestamp_ns: i64,
    /// `call_count` (absent in `up=0` points: kept from before).
    pub call_count: f64,
    /// `up`.
    pub up: bool,
}

/// What the view knows about one connector and deployment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Group {
    /// The newest rollup, once one arrived.
    pub rollup: Option<ConnectorRow>,
    /// Instances by name.
    pub instances: BTreeMap<String, InstanceRow>,
}

/// An alert condition, named like the rule in `dashboards/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Alert {
    /// `TeamsConnectorCapacityCritical`: utilization ≥ [`UTILIZATION_CRITICAL`].
    CapacityCritical,
    /// `TeamsConnectorCapacityHigh`: utilization ≥ [`UTILIZATION_HIGH`] (shown only below
    /// critical).
    CapacityHigh,
    /// `TeamsConnectorScaleUpNeeded`: instances_needed > instances_online.
    ScaleUpNeeded,
    /// `TeamsConnectorInstanceFull`: instances at [`MAX_CALLS_PER_INSTANCE`] calls.
    InstanceFull(usize),
    /// `TeamsConnectorInstanceAtPlannedCapacity`: instances at [`PLANNED_CALLS_PER_INSTANCE`]
    /// calls (and below the maximum).
    InstanceAtPlannedCapacity(usize),
    /// `TeamsConnectorInstanceDown`: instances written `up=0`.
    InstanceDown(usize),
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alert::CapacityCritical => f.write_str("CapacityCritical"),
            Alert::CapacityHigh => f.write_str("CapacityHigh"),
            Alert::ScaleUpNeeded => f.write_str("ScaleUpNeeded"),
            Alert::InstanceFull(n) => write!(f, "InstanceFull×{n}"),
            Alert::InstanceAtPlannedCapacity(n) => write!(f, "InstanceAtPlanned×{n}"),
            Alert::InstanceDown(n) => write!(f, "InstanceDown×{n}"),
        }
    }
}

impl Alert {
    /// Whether the alert is critical (else a warning).
    pub fn is_critical(&self) -> bool {
        matches!(
            self,
            Alert::CapacityCritical | Alert::InstanceFull(_) | Alert::InstanceDown(_)
        )
    }
}

impl Group {
    /// The alert conditions true now, most severe first. The real rules also wait a
    /// pending period (`for:`) before they fire; the view shows the condition itself.
    pub fn alerts(&self) -> Vec<Alert> {
        let mut out = Vec::new();
        if let Some(r) = &self.rollup {
            if r.utilization >= UTILIZATION_CRITICAL {
                out.push(Alert::CapacityCritical);
            } else if r.utilization >= UTILIZATION_HIGH {
                out.push(Alert::CapacityHigh);
            }
        }
        let count = |pred: &dyn Fn(&InstanceRow) -> bool| {
            self.instances.values().filter(|i| pred(i)).count()
        };
        let full = count(&|i| i.up && i.call_count >= f64::from(MAX_CALLS_PER_INSTANCE));
        if full > 0 {
            out.push(Alert::InstanceFull(full));
        }
        let down = count(&|i| !i.up);
        if down > 0 {
            out.push(Alert::InstanceDown(down));
        }
        if let Some(r) = &self.rollup {
            if r.instances_needed > r.instances_online {
                out.push(Alert::ScaleUpNeeded);
            }
        }
        let planned = count(&|i| {
            i.up && i.call_count >= f64::from(PLANNED_CALLS_PER_INSTANCE)
                && i.call_count < f64::from(MAX_CALLS_PER_INSTANCE)
        });
        if planned > 0 {
            out.push(Alert::InstanceAtPlannedCapacity(planned));
        }
        out
    }
}

/// The fleet: groups by (connector, deployment).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    /// Groups by (connector, deployment).
    pub groups: BTreeMap<(String, String), Group>,
    /// Lines applied.
    pub lines: u64,
}

impl Fleet {
    /// Applies one line; lines of other measurements and older points are ignored.
    pub fn apply(&mut self, line: &Line) {
        let key = (
            line.tag("connector").to_owned(),
            line.tag("deployment").to_owned(),
        );
        match line.measurement.as_str() {
            "tc_connector" => {
                let g = self.groups.entry(key).or_default();
                if g.rollup
                    .as_ref()
                    .is_some_and(|r| r.timestamp_ns > line.timestamp_ns)
                {
                    return;
                }
                let n = |k: &str| line.num(k).unwrap_or(0.0);
                g.rollup = Some(ConnectorRow {
                    timestamp_ns: line.timestamp_ns,
                    instances_online: n("instances_online"),
                    call_count: n("call_count"),
                    capacity_planned: n("capacity_planned"),
                    capacity_max: n("capacity_max"),
                    utilization: n("utilization"),
                    instances_needed: n("instances_needed"),
                    vcpu_needed: n("vcpu_needed"),
                    peak_calls: n("peak_calls"),
                });
            }
            "tc_instance" => {
                let name = line.tag("instance");
                if name.is_empty() {
                    return;
                }
                let g = self.groups.entry(key).or_default();
                let row = g.instances.entry(name.to_owned()).or_default();
                if row.timestamp_ns > line.timestamp_ns {
                    return;
                }
                row.timestamp_ns = line.timestamp_ns;
                row.up = line.num("up").unwrap_or(1.0) > 0.0;
                if let Some(c) = line.num("call_count") {
                    row.call_count = c;
                }
            }
            _ => return,
        }
        self.lines += 1;
    }

    /// Applies every complete line of `text`.
    pub fn apply_text(&mut self, text: &str) {
        for l in text.lines().filter_map(parse_line) {
            self.apply(&l);
        }
    }
}

/// A text bar of `ratio` (0..), `width` cells, full at 1.0.
pub fn bar(ratio: f64, width: usize) -> String {
    let filled = ((ratio.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn alert_text(alerts: &[Alert]) -> String {
    if alerts.is_empty() {
        "-".to_owned()
    } else {
        alerts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One log line per group (no terminal).
pub fn render_lines(fleet: &Fleet) -> Vec<String> {
    fleet
        .groups
        .iter()
        .map(|((connector, deployment), g)| {
            let r = g.rollup.clone().unwrap_or_default();
            let seen = g.instances.len();
            format!(
                "connector={connector} deployment={deployment} online={}/{seen} calls={} planned={} max={} utilization={:.0}% peak={} instances_needed={} vcpu_needed={} alerts={}",
                r.instances_online,
                r.call_count,
                r.capacity_planned,
                r.capacity_max,
                r.utilization * 100.0,
                r.peak_calls,
                r.instances_needed,
                r.vcpu_needed,
                alert_text(&g.alerts()),
            )
        })
        .collect()
}

/// The table (terminal), without the screen-clearing codes.
pub fn render_table(fleet: &Fleet, color: bool) -> String {
    let (red, yellow, green, reset) = if color {
        ("\x1b[31m", "\x1b[33m", "\x1b[32m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:<8} {:>6} {:>6} {:>8} {:>5}  {:<27} {:>5} {:>5}  ALERTS",
        "CONNECTOR", "DEPLOY", "ONLINE", "CALLS", "PLANNED", "MAX", "UTILIZATION", "NEED", "vCPU"
    );
    for ((connector, deployment), g) in &fleet.groups {
        let Some(r) = &g.rollup else {
            let _ = writeln!(
                s,
                "{connector:<24} {deployment:<8} waiting for the first rollup ({} instances reported)",
                g.instances.len()
            );
            continue;
        };
        let alerts = g.alerts();
        let tint = if alerts.iter().any(Alert::is_critical) {
            red
        } else if alerts.is_empty() {
            green
        } else {
            yellow
        };
        let _ = writeln!(
            s,
            "{connector:<24} {deployment:<8} {:>6} {:>6} {:>8} {:>5}  {tint}{}{reset} {:>4.0}% {:>5} {:>5}  {tint}{}{reset}",
            format!("{}/{}", r.instances_online, g.instances.len()),
            r.call_count,
            r.capacity_planned,
            r.capacity_max,
            bar(r.utilization, 20),
            r.utilization * 100.0,
            r.instances_needed,
            r.vcpu_needed,
            alert_text(&alerts),
        );
    }
    s
}

/// Follows the points file from its current end (or start, if `from_start`) and redraws
/// every `refresh` until `stop`; draws once more after it. Returns the fleet it saw.
pub async fn follow(
    path: PathBuf,
    refresh: Duration,
    tty: bool,
    header: Box<dyn Fn() -> String + Send>,
    from_start: bool,
    stop: CancellationToken,
) -> Fleet {
    let mut fleet = Fleet::default();
    let mut offset = if from_start {
        0
    } else {
        std::fs::metadata(&path).map_or(0, |m| m.len())
    };
    let mut partial = String::new();
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        match read_from(&path, offset) {
            Ok(bytes) => {
                offset += bytes.len() as u64;
                partial.push_str(&String::from_utf8_lossy(&bytes));
                if let Some(end) = partial.rfind('\n') {
                    fleet.apply_text(&partial[..end]);
                    partial.drain(..=end);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(stage = "demo_view", error_type = "io", path = %path.display(), error = %e, "cannot read the points file");
            }
        }
        if tty {
            let mut out = String::from("\x1b[H\x1b[2J");
            out.push_str(&header());
            out.push('\n');
            out.push_str(&render_table(&fleet, true));
            print!("{out}");
        } else {
            for l in render_lines(&fleet) {
                println!("{l}");
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        if stopping {
            return fleet;
        }
    }
}

fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len <= offset {
        return Ok(Vec::new());
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity((len - offset) as usize);
    f.take(len - offset).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpulse_schema::Point;

    const CONNECTOR: &str = "tc_connector,connector=tc-blue.example.com,deployment=blue,region=westeurope capacity_max=96i,capacity_planned=90i,call_count=86i,headroom_calls=4i,instances_needed=6i,instances_online=6i,peak_calls=86i,utilization=0.9555555555555556,vcpu_needed=24i 1764151200000000000";

    #[test]
    fn parses_collector_lines() {
        let l = parse_line(CONNECTOR).unwrap();
        assert_eq!(l.measurement, "tc_connector");
        assert_eq!(l.tag("deployment"), "blue");
        assert_eq!(l.num("instances_online"), Some(6.0));
        assert!((l.num("utilization").unwrap() - 0.9556).abs() < 1e-3);
        assert_eq!(l.timestamp_ns, 1_764_151_200_000_000_000);
    }

    #[test]
    fn parses_escapes_strings_and_round_trips_schema_points() {
        let l = parse_line(r#"m\,x,t\ a=b\=c,u=v f="a \"q\", b",g=2u,h=t 5"#).unwrap();
        assert_eq!(l.measurement, "m,x");
        assert_eq!(l.tag("t a"), "b=c");
        assert_eq!(l.fields["f"], Value::Str("a \"q\", b".into()));
        assert_eq!(l.fields["g"], Value::Int(2));
        assert_eq!(l.fields["h"], Value::Bool(true));
        let p = Point::new("tc_instance", 42)
            .tag("connector", "c,1 x")
            .tag("instance", "i=0")
            .field("call_count", 7i64)
            .field("utilization", 0.5f64);
        let l = parse_line(&p.to_line()).unwrap();
        assert_eq!(l.tag("connector"), "c,1 x");
        assert_eq!(l.tag("instance"), "i=0");
        assert_eq!(l.num("call_count"), Some(7.0));
        assert_eq!(l.timestamp_ns, 42);
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "",
            "# c",
            "m",
            "m f",
            "m f=",
            "m,t f=1 x",
            "m f=1 2 3",
            ",t=1 f=1",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    fn instance(name: &str, calls: i64, up: i64, ts: i64) -> String {
        format!("tc_instance,connector=c,deployment=blue,instance={name} call_count={calls}i,up={up}i {ts}")
    }

    fn connector(util: f64, online: i64, needed: i64, ts: i64) -> String {
        format!("tc_connector,connector=c,deployment=blue utilization={util},instances_online={online}i,instances_needed={needed}i {ts}")
    }

    fn alerts_of(text: &str) -> Vec<Alert> {
        let mut f = Fleet::default();
        f.apply_text(text);
        f.groups[&("c".to_owned(), "blue".to_owned())].alerts()
    }

    #[test]
    fn alerts_use_the_rule_thresholds() {
        assert_eq!(alerts_of(&connector(0.79, 6, 6, 1)), []);
        assert_eq!(alerts_of(&connector(0.80, 6, 6, 1)), [Alert::CapacityHigh]);
        assert_eq!(alerts_of(&connector(0.949, 6, 6, 1)), [Alert::CapacityHigh]);
        assert_eq!(
            alerts_of(&connector(0.95, 6, 7, 1)),
            [Alert::CapacityCritical, Alert::ScaleUpNeeded]
        );
        let text = [
            instance("a", 16, 1, 1),
            instance("b", 15, 1, 1),
            instance("c", 14, 1, 1),
            instance("d", 16, 0, 1),
        ]
        .join("\n");
        assert_eq!(
            alerts_of(&text),
            [
                Alert::InstanceFull(1),
                Alert::InstanceDown(1),
                Alert::InstanceAtPlannedCapacity(1)
            ]
        );
    }

    #[test]
    fn newer_points_win_and_alerts_resolve() {
        let text = [
            connector(0.97, 6, 7, 2),
            instance("a", 16, 1, 2),
            connector(0.5, 6, 6, 1), // older: ignored
            instance("a", 3, 1, 1),  // older: ignored
        ]
        .join("\n");
        assert_eq!(
            alerts_of(&text),
            [
                Alert::CapacityCritical,
                Alert::InstanceFull(1),
                Alert::ScaleUpNeeded
            ]
        );
        let resolved = format!(
            "{text}\n{}\n{}",
            connector(0.6, 6, 6, 3),
            instance("a", 9, 1, 3)
        );
        assert_eq!(alerts_of(&resolved), []);
        // An up=0 point without call_count keeps the last count but marks the instance down.
        let down =
            format!("{resolved}\ntc_instance,connector=c,deployment=blue,instance=a up=0i 4");
        assert_eq!(alerts_of(&down), [Alert::InstanceDown(1)]);
    }

    #[test]
    fn renders_rows_and_bars() {
        assert_eq!(bar(0.5, 4), "██░░");
        assert_eq!(bar(1.7, 2), "██");
        let mut f = Fleet::default();
        f.apply_text(CONNECTOR);
        f.apply_text(
            &instance("x", 16, 1, 1).replace("connector=c", "connector=tc-blue.example.com"),
        );
        let lines = render_lines(&f);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("connector=tc-blue.example.com deployment=blue online=6/1 calls=86 planned=90 max=96 utilization=96%"), "{}", lines[0]);
        assert!(
            lines[0].ends_with("alerts=CapacityCritical,InstanceFull×1"),
            "{}",
            lines[0]
        );
        let table = render_table(&f, false);
        assert!(table.contains("tc-blue.example.com"), "{table}");
        assert!(table.contains("CapacityCritical"), "{table}");
    }
}
