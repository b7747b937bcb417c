//! InfluxDB line protocol: a small [`Point`] type and the mapping of events and rollups
//! onto the three measurements of DESIGN.md "Stored data".
//!
//! | measurement | tags | built by |
//! | --- | --- | --- |
//! | `tc_instance` | [`INSTANCE_TAGS`] | [`instance_point`], [`instance_down_point`] |
//! | `tc_connector` | [`CONNECTOR_TAGS`] | [`connector_point`] |
//! | `tc_pipeline` | [`PIPELINE_TAGS`] | [`pipeline_point`] |
//!
//! Type rules, so a field's type never changes between writes: counts and booleans-as-0/1
//! are integers (`i` suffix, which InfluxDB 1.x, 2.x, 3.x and VictoriaMetrics all read;
//! `u` is not accepted by 1.x), ratios and days are floats. Unknown values are left out,
//! never written as 0. Tags are only the low-cardinality identity names: never a call id,
//! an IP address or free text.
//!
//! Escaping ([`Point::to_line`]), per the line-protocol reference:
//! - measurement: `,` and space;
//! - tag keys, tag values and field keys: `,`, `=` and space;
//! - a backslash is written as itself only where every parser reads it as a plain
//!   character: followed by a character that is neither a backslash nor escaped. Anywhere
//!   else (last in the token, before another backslash, before an escaped character) it
//!   becomes [`BACKSLASH_STAND_IN`], because no encoding of it reads back the same in every
//!   store (measured against InfluxDB 1.6 and VictoriaMetrics; 2.x shares 1.x's parser):
//!   InfluxDB takes any `\` before `,`, `=` or space as an escape, even a doubled one (so
//!   `a\\` swallows the separator after it, `invalid tag format`, and `a\\,b` reads back
//!   `a\,b`), and keeps `\\` as two backslashes, while VictoriaMetrics reads `\\` as one.
//!   [`stored_tag_value`] is the value a store keeps;
//! - string field values: `"` and `\`;
//! - control characters (which line protocol cannot carry in names, and newlines which end
//!   a line) are replaced by a space before escaping.
//!
//! A tag with an empty key or value is left out (InfluxDB rejects empty tag values); so
//! is a field with an empty key or a non-finite float. A point left with no field renders
//! as the empty string, which callers skip.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::capacity::ConnectorRollup;
use crate::event::{ConnectorKey, StatusEvent, Timestamp};

/// Measurement of per-instance points.
pub const MEASUREMENT_INSTANCE: &str = "tc_instance";
/// Measurement of per-connector rollups.
pub const MEASUREMENT_CONNECTOR: &str = "tc_connector";
/// Measurement of the collector's own pipeline health.
pub const MEASUREMENT_PIPELINE: &str = "tc_pipeline";

/// Tags of `tc_instance`.
pub const INSTANCE_TAGS: [&str; 5] = ["connector", "deployment", "region", "scaleset", "instance"];
/// Every field `tc_instance` can carry (present only when known), each the event value
/// of the same name unless said otherwise:
///
/// - `call_count`, `max_calls`, `planned_calls` (the default 15 when the event has none),
///   `media_load`: from `calls`;
/// - `utilization`: `call_count / planned_calls`, absent when `planned_calls` is 0;
/// - `up`: 1 for a report (0 is written alone by [`instance_down_point`] when the
///   instance went stale); `state_code`: [`State::state_code`](crate::State::state_code);
/// - `cpu`, `mem_used_bytes`, `mem_total_bytes`, `disk_free_bytes`, `service_up` (0/1),
///   `cert_expiry_days`: from `health`;
/// - `agent_spooled`, `agent_dropped` (reports the agent lost to a full spool since it
///   started), `agent_publish_failing_seconds` (how long the agent's publishing had been
///   refused when it made the report; 0 = it works, absent from older agents),
///   `agent_credential_expires_in_seconds` (the agent's Entra ID token; absent with SAS):
///   from `agent`;
/// - `clock_skew_seconds`: sample time − enqueued time, added by
///   [`instance_point_received`].
pub const INSTANCE_FIELDS: [&str; 18] = [
    "call_count",
    "max_calls",
    "planned_calls",
    "media_load",
    "utilization",
    "up",
    "state_code",
    "cpu",
    "mem_used_bytes",
    "mem_total_bytes",
    "disk_free_bytes",
    "service_up",
    "cert_expiry_days",
    "agent_spooled",
    "agent_dropped",
    "agent_publish_failing_seconds",
    "agent_credential_expires_in_seconds",
    "clock_skew_seconds",
];
/// Tags of `tc_connector`.
pub const CONNECTOR_TAGS: [&str; 3] = ["connector", "deployment", "region"];
/// Fields of `tc_connector`.
pub const CONNECTOR_FIELDS: [&str; 9] = [
    "instances_online",
    "call_count",
    "capacity_planned",
    "capacity_max",
    "utilization",
    "headroom_calls",
    "peak_calls",
    "instances_needed",
    "vcpu_needed",
];
/// Tags of `tc_pipeline`.
pub const PIPELINE_TAGS: [&str; 2] = ["collector", "partition"];
/// Fields of `tc_pipeline` (the two ages only when known).
pub const PIPELINE_FIELDS: [&str; 5] = [
    "events",
    "dead_letters",
    "duplicates",
    "lag_seconds",
    "checkpoint_age_seconds",
];

/// A typed field value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// 64-bit float, written without suffix.
    Float(f64),
    /// Signed integer, written with the `i` suffix.
    Int(i64),
    /// Unsigned integer, written with the `u` suffix (not readable by InfluxDB 1.x; the
    /// tcpulse mappings never use it).
    UInt(u64),
    /// Boolean, written `true` / `false`.
    Bool(bool),
    /// String, written quoted.
    Str(String),
}

impl From<f64> for FieldValue {
    fn from(v: f64) -> Self {
        FieldValue::Float(v)
    }
}
impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::Int(v)
    }
}
impl From<u64> for FieldValue {
    fn from(v: u64) -> Self {
        FieldValue::UInt(v)
    }
}
impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue::Bool(v)
    }
}
impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::Str(v.to_owned())
    }
}
impl From<String> for FieldValue {
    fn from(v: String) -> Self {
        FieldValue::Str(v)
    }
}

/// One line-protocol point: measurement, tags (sorted by key), fields (sorted by key) and
/// a timestamp in nanoseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    measurement: Cow<'static, str>,
    /// Tag and field keys are borrowed when they are literals (every tcpulse mapping): an
    /// instance point has five tags and up to twenty fields, and allocating each key was a
    /// visible cost (issue #17).
    tags: BTreeMap<Cow<'static, str>, String>,
    fields: BTreeMap<Cow<'static, str>, FieldValue>,
    timestamp_ns: i64,
}

impl Point {
    /// An empty point of `measurement` at `timestamp_ns`.
    pub fn new(measurement: impl Into<Cow<'static, str>>, timestamp_ns: i64) -> Point {
        Point {
            measurement: measurement.into(),
            tags: BTreeMap::new(),
            fields: BTreeMap::new(),
            timestamp_ns,
        }
    }

    /// Adds (or replaces) a tag.
    pub fn tag(mut self, key: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Point {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Adds (or replaces) a field.
    pub fn field(
        mut self,
        key: impl Into<Cow<'static, str>>,
        value: impl Into<FieldValue>,
    ) -> Point {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Adds a field only when `value` is known.
    pub fn field_opt<V: Into<FieldValue>>(self, key: &'static str, value: Option<V>) -> Point {
        match value {
            Some(v) => self.field(key, v),
            None => self,
        }
    }

    /// The measurement name.
    pub fn measurement(&self) -> &str {
        &self.measurement
    }

    /// Tags, sorted by key.
    pub fn tags(&self) -> &BTreeMap<Cow<'static, str>, String> {
        &self.tags
    }

    /// Fields, sorted by key.
    pub fn fields(&self) -> &BTreeMap<Cow<'static, str>, FieldValue> {
        &self.fields
    }

    /// One tag's value.
    pub fn get_tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// One field's value.
    pub fn get_field(&self, key: &str) -> Option<&FieldValue> {
        self.fields.get(key)
    }

    /// Nanoseconds since the Unix epoch.
    pub fn timestamp_ns(&self) -> i64 {
        self.timestamp_ns
    }

    /// The point as one line of line protocol, without a trailing newline; the empty
    /// string if no field can be written. See the module docs for escaping.
    pub fn to_line(&self) -> String {
        let mut line = String::with_capacity(256);
        self.write_line(&mut line);
        line
    }

    /// Appends [`Point::to_line`] to `out` (no newline) and says whether it did: nothing is
    /// appended when no field can be written. Writing straight into the caller's buffer
    /// (the collector's open batch) saves the two strings per point `to_line` returns, and
    /// integers skip `core::fmt` (issue #17: line building was 13 % of the collector's CPU).
    pub fn write_line(&self, out: &mut String) -> bool {
        let mut w = LineWriter::new(out, &self.measurement);
        for (key, value) in &self.tags {
            w.tag(Key::Given(key), value);
        }
        for (key, value) in &self.fields {
            w.field(Key::Given(key), value);
        }
        w.finish(self.timestamp_ns)
    }
}

/// Writes a field value as line protocol types it (`1.5`, `3i`, `3u`, `true`, `"s"`).
fn write_field_value(out: &mut String, value: &FieldValue) {
    match value {
        FieldValue::Float(f) => push_float(out, *f),
        FieldValue::Int(i) => {
            push_integer(out, *i);
            out.push('i');
        }
        FieldValue::UInt(u) => {
            push_integer(out, *u);
            out.push('u');
        }
        FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        FieldValue::Str(s) => escape_string(out, s),
    }
}

/// Appends `f` as `{f}` would (the shortest digits that read back as `f`, no exponent, no
/// `.0` on whole numbers), through zmij rather than `core::fmt`, which cost about 1,400
/// instructions a float (issue #17). zmij writes the same shortest digits (on an exact tie
/// between two shortest strings it may pick the other one; both read back as `f`); where
/// it would use an exponent (below 1e-5 or from 1e16 on) `{f}` writes them out instead.
fn push_float(out: &mut String, f: f64) {
    if f.is_finite() {
        let mut buf = zmij::Buffer::new();
        let s = buf.format_finite(f);
        if !s.contains('e') {
            out.push_str(s.strip_suffix(".0").unwrap_or(s));
            return;
        }
    }
    // Writing to a String cannot fail.
    let _ = write!(out, "{f}");
}

/// Appends `v` in decimal, as `{v}` would, without `core::fmt`.
fn push_integer(out: &mut String, v: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Characters escaped in tag keys, tag values and field keys.
const TAG_SPECIAL: [char; 3] = [',', '=', ' '];

/// What a backslash becomes where line protocol cannot carry it (see the module docs):
/// U+FF3C FULLWIDTH REVERSE SOLIDUS, which reads as a backslash on a dashboard and which
/// every store keeps as it is.
pub const BACKSLASH_STAND_IN: char = '\u{FF3C}';

/// The tag value a store keeps for `value` (what a query must ask for): `value` itself
/// unless it has control characters (kept as spaces) or a backslash line protocol cannot
/// carry (kept as [`BACKSLASH_STAND_IN`]). See the module docs.
pub fn stored_tag_value(value: &str) -> String {
    stored_chars(value, &TAG_SPECIAL).collect()
}

/// The characters of a name as a store keeps them: control characters become spaces, and
/// a backslash that is last or precedes another backslash or a `special` character becomes
/// [`BACKSLASH_STAND_IN`].
fn stored_chars<'a>(s: &'a str, special: &'a [char]) -> impl Iterator<Item = char> + 'a {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    let mut chars = s.chars().map(clean).peekable();
    std::iter::from_fn(move || {
        let c = chars.next()?;
        if c != '\\' {
            return Some(c);
        }
        let plain = chars
            .peek()
            .is_some_and(|next| *next != '\\' && !special.contains(next));
        Some(if plain { c } else { BACKSLASH_STAND_IN })
    })
}

/// Escapes a measurement, tag key/value or field key: the characters of [`stored_chars`],
/// with a backslash before each `special` one.
fn escape_name(out: &mut String, s: &str, special: &[char]) {
    // Almost every name is plain printable ASCII with nothing to escape: copy it whole.
    // Printable ASCII other than `\`, `,`, `=` and space is never escaped by any `special`
    // set; anything else takes the careful path below, which is right for every input.
    let plain = s
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) && !matches!(b, b'\\' | b',' | b'='));
    if plain {
        out.push_str(s);
        return;
    }
    for c in stored_chars(s, special) {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Writes a quoted string field value, escaping `"` and `\`; newlines become spaces.
fn escape_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn int(v: u64) -> FieldValue {
    FieldValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn flag(v: bool) -> FieldValue {
    FieldValue::Int(i64::from(v))
}

/// Receives a point's tags, then its fields, each in key order: [`Point`] keeps them,
/// [`LineWriter`] writes them as line protocol. The `tc_instance` mapping is declared once,
/// in [`instance_tags`] and [`instance_fields`], and both take it from there.
trait Members {
    fn tag(&mut self, key: &'static str, value: &str);
    fn field(&mut self, key: &'static str, value: FieldValue);

    fn field_opt(&mut self, key: &'static str, value: Option<FieldValue>) {
        if let Some(v) = value {
            self.field(key, v);
        }
    }
}

impl Members for Point {
    fn tag(&mut self, key: &'static str, value: &str) {
        self.tags.insert(Cow::Borrowed(key), value.to_owned());
    }

    fn field(&mut self, key: &'static str, value: FieldValue) {
        self.fields.insert(Cow::Borrowed(key), value);
    }
}

/// A tag or field key as [`LineWriter`] takes it.
#[derive(Clone, Copy)]
enum Key<'k> {
    /// Any key: escaped (see the module docs); an empty one leaves its member out.
    Given(&'k str),
    /// A literal of this module (`tc_instance`'s keys): plain by construction, copied as is.
    Literal(&'static str),
}

/// Writes one point as line protocol into a buffer, member by member: the module's rules
/// (escaping, empty tags and non-finite floats left out, nothing written without a field)
/// in one place, for [`Point::write_line`] and for [`write_instance_line`], which writes
/// an event's line without building a [`Point`]. Tags first, then fields, each in key
/// order as a [`Point`]'s maps sort them.
struct LineWriter<'a> {
    out: &'a mut String,
    start: usize,
    /// Where the fields begin, once the first one is written.
    fields_at: Option<usize>,
}

impl<'a> LineWriter<'a> {
    fn new(out: &'a mut String, measurement: &str) -> Self {
        let start = out.len();
        escape_name(out, measurement, &[',', ' ']);
        LineWriter {
            out,
            start,
            fields_at: None,
        }
    }

    /// Writes `key=`: a given key escaped, a literal as it is.
    fn key(&mut self, key: Key<'_>) {
        match key {
            Key::Given(k) => escape_name(self.out, k, &TAG_SPECIAL),
            Key::Literal(k) => {
                debug_assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
                self.out.push_str(k);
            }
        }
        self.out.push('=');
    }

    fn tag(&mut self, key: Key<'_>, value: &str) {
        if value.is_empty() || matches!(key, Key::Given("")) {
            return;
        }
        self.out.push(',');
        self.key(key);
        escape_name(self.out, value, &TAG_SPECIAL);
    }

    fn field(&mut self, key: Key<'_>, value: &FieldValue) {
        if matches!(key, Key::Given("")) || matches!(value, FieldValue::Float(f) if !f.is_finite())
        {
            return;
        }
        match self.fields_at {
            None => {
                self.out.push(' ');
                self.fields_at = Some(self.out.len());
            }
            Some(_) => self.out.push(','),
        }
        self.key(key);
        write_field_value(self.out, value);
    }

    /// Ends the line with its timestamp; false (and nothing written) if no field was.
    fn finish(self, timestamp_ns: i64) -> bool {
        if self.fields_at.is_none() {
            self.out.truncate(self.start);
            return false;
        }
        self.out.push(' ');
        push_integer(self.out, timestamp_ns);
        true
    }
}

impl Members for LineWriter<'_> {
    fn tag(&mut self, key: &'static str, value: &str) {
        LineWriter::tag(self, Key::Literal(key), value);
    }

    fn field(&mut self, key: &'static str, value: FieldValue) {
        LineWriter::field(self, Key::Literal(key), &value);
    }
}

/// The identity tags of an instance's series, in key order.
fn instance_tags(ev: &StatusEvent, m: &mut impl Members) {
    m.tag("connector", &ev.connector);
    m.tag("deployment", &ev.deployment);
    m.tag("instance", &ev.instance);
    m.tag("region", &ev.region);
    m.tag("scaleset", &ev.scaleset);
}

/// The fields of an event's `tc_instance` point, in key order (see [`instance_point`]);
/// `skew_ms`, when given, is written as `clock_skew_seconds`.
fn instance_fields(ev: &StatusEvent, up: bool, skew_ms: Option<i64>, m: &mut impl Members) {
    let agent = ev.agent.as_ref();
    let calls = ev.calls.as_ref();
    let h = &ev.health;
    m.field_opt(
        "agent_credential_expires_in_seconds",
        agent
            .and_then(|a| a.credential_expires_in_seconds)
            .map(FieldValue::Int),
    );
    m.field_opt("agent_dropped", agent.map(|a| int(a.dropped)));
    m.field_opt(
        "agent_publish_failing_seconds",
        agent.and_then(|a| a.publish_failing_seconds).map(int),
    );
    m.field_opt("agent_spooled", agent.map(|a| int(a.spooled)));
    m.field_opt(
        "call_count",
        calls.map(|c| FieldValue::Int(c.call_count.into())),
    );
    m.field_opt(
        "cert_expiry_days",
        h.cert_expiry_days.map(FieldValue::Float),
    );
    m.field_opt(
        "clock_skew_seconds",
        skew_ms.map(|ms| FieldValue::Float(ms as f64 / 1000.0)),
    );
    m.field_opt("cpu", h.cpu.map(FieldValue::Float));
    m.field_opt("disk_free_bytes", h.disk_free_bytes.map(int));
    m.field_opt(
        "max_calls",
        calls.map(|c| FieldValue::Int(c.max_calls.into())),
    );
    m.field_opt(
        "media_load",
        calls
            .and_then(|c| c.media_load)
            .map(|l| FieldValue::Int(l.into())),
    );
    m.field_opt("mem_total_bytes", h.mem_total_bytes.map(int));
    m.field_opt("mem_used_bytes", h.mem_used_bytes.map(int));
    m.field_opt(
        "planned_calls",
        calls.map(|c| FieldValue::Int(c.planned_calls_or_default().into())),
    );
    m.field_opt("service_up", h.service_up.map(flag));
    m.field("state_code", FieldValue::Int(ev.state.state_code().into()));
    m.field("up", flag(up));
    m.field_opt(
        "utilization",
        calls.and_then(|c| c.utilization()).map(FieldValue::Float),
    );
}

fn instance_series(ev: &StatusEvent, at: Timestamp) -> Point {
    let mut p = Point::new(MEASUREMENT_INSTANCE, at.unix_nanos());
    instance_tags(ev, &mut p);
    p
}

/// The `tc_instance` point of one event, at the event's sample time.
///
/// `up` is the collector's verdict that the instance is reporting (the event is fresh);
/// it is written as `up=1i`/`up=0i`. Call fields are present only if the event carried
/// `calls`; each health field only if known. `utilization` is `call_count / planned_calls`.
pub fn instance_point(ev: &StatusEvent, up: bool) -> Point {
    let mut p = instance_series(ev, ev.time);
    instance_fields(ev, up, None, &mut p);
    p
}

/// [`instance_point`] of an event Event Hubs enqueued at `enqueued`, with the field
/// `clock_skew_seconds` = sample time − enqueued time (float seconds): positive when the
/// instance's clock runs ahead, a little negative normally (transport), more negative for
/// a slow clock or a report replayed from the agent's spool. A dashboard shows the VM with
/// a bad clock from it.
pub fn instance_point_received(ev: &StatusEvent, up: bool, enqueued: Timestamp) -> Point {
    let mut p = instance_series(ev, ev.time);
    instance_fields(ev, up, Some(skew_ms(ev, enqueued)), &mut p);
    p
}

/// Appends `instance_point_received(ev, true, enqueued).write_line(out)`'s line to `out`
/// without building the [`Point`] (issue #17: building it, five tag strings and two maps
/// per event, was about 8 % of the collector's CPU). Returns true: the line always has
/// fields.
pub fn write_instance_line(out: &mut String, ev: &StatusEvent, enqueued: Timestamp) -> bool {
    let mut w = LineWriter::new(out, MEASUREMENT_INSTANCE);
    instance_tags(ev, &mut w);
    instance_fields(ev, true, Some(skew_ms(ev, enqueued)), &mut w);
    w.finish(ev.time.unix_nanos())
}

/// Where an aggregator's points go: kept as [`Point`]s (`Vec<Point>`: tests, the demo) or
/// written as line protocol into a batch (the collector).
pub trait PointSink {
    /// Takes one point.
    fn point(&mut self, point: Point);

    /// Takes `instance_point_received(ev, true, enqueued)`, the point of every event
    /// received; a line writer overrides it with [`write_instance_line`].
    fn instance_received(&mut self, ev: &StatusEvent, enqueued: Timestamp) {
        self.point(instance_point_received(ev, true, enqueued));
    }
}

impl PointSink for Vec<Point> {
    fn point(&mut self, point: Point) {
        self.push(point);
    }
}

fn skew_ms(ev: &StatusEvent, enqueued: Timestamp) -> i64 {
    ev.time.unix_millis() - enqueued.unix_millis()
}

/// A `tc_instance` point with only `up=0i`, for an instance that stopped reporting: same
/// series as `last` (its latest event), stamped `at` (when the collector declared it
/// stale). Stamping it at `last.time` instead would overwrite the last real sample.
pub fn instance_down_point(last: &StatusEvent, at: Timestamp) -> Point {
    instance_series(last, at).field("up", flag(false))
}

/// The `tc_connector` point of one rollup window, stamped at the window end (aligned to
/// the rollup interval, so replays rewrite the same point).
pub fn connector_point(
    key: &ConnectorKey,
    rollup: &ConnectorRollup,
    window_end: Timestamp,
) -> Point {
    Point::new(MEASUREMENT_CONNECTOR, window_end.unix_nanos())
        .tag("connector", key.connector.as_str())
        .tag("deployment", key.deployment.as_str())
        .tag("region", key.region.as_str())
        .field("instances_online", int(rollup.instances_online))
        .field("call_count", int(rollup.call_count))
        .field("capacity_planned", int(rollup.capacity_planned))
        .field("capacity_max", int(rollup.capacity_max))
        .field_opt("utilization", rollup.utilization)
        .field("headroom_calls", FieldValue::Int(rollup.headroom_calls))
        .field("peak_calls", int(rollup.peak_calls))
        .field("instances_needed", int(rollup.instances_needed))
        .field("vcpu_needed", int(rollup.vcpu_needed))
}

/// The collector's per-partition pipeline counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PipelineStats {
    /// Events decoded and new (not duplicates), total since the collector started.
    pub events: u64,
    /// Dead letters, total since the collector started.
    pub dead_letters: u64,
    /// Duplicates dropped (including beyond-window repeats), total since start.
    pub duplicates: u64,
    /// Seconds from the newest processed event's enqueue time to processing; absent until
    /// an event was processed.
    pub lag_seconds: Option<f64>,
    /// Seconds since the partition's checkpoint last advanced; absent before the first.
    pub checkpoint_age_seconds: Option<f64>,
}

/// The `tc_pipeline` point of one collector partition at `at`.
pub fn pipeline_point(
    collector: &str,
    partition: &str,
    stats: &PipelineStats,
    at: Timestamp,
) -> Point {
    Point::new(MEASUREMENT_PIPELINE, at.unix_nanos())
        .tag("collector", collector)
        .tag("partition", partition)
        .field("events", int(stats.events))
        .field("dead_letters", int(stats.dead_letters))
        .field("duplicates", int(stats.duplicates))
        .field_opt("lag_seconds", stats.lag_seconds)
        .field_opt("checkpoint_age_seconds", stats.checkpoint_age_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;

    fn fixture_event(name: &str) -> StatusEvent {
        let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        decode(&std::fs::read(path).unwrap()).unwrap()
    }

    fn one_tag(value: &str) -> String {
        Point::new("m", 1)
            .tag("t", value)
            .field("f", 1i64)
            .to_line()
    }

    #[test]
    fn measurement_escapes_commas_and_spaces_only() {
        let p = Point::new("my meas,ure=ment", 5).field("v", 1.5);
        assert_eq!(p.to_line(), r"my\ meas\,ure=ment v=1.5 5");
    }

    #[test]
    fn tag_keys_and_values_escape_commas_equals_spaces() {
        let p = Point::new("m", 0).tag("k y,=", "v a,l=ue").field("f", 1i64);
        assert_eq!(p.to_line(), r"m,k\ y\,\==v\ a\,l\=ue f=1i 0");
    }

    #[test]
    fn r12_backslashes_never_escape_a_separator() {
        // A backslash before a plain character is kept as it is.
        assert_eq!(one_tag(r"a\b"), r"m,t=a\b f=1i 1");
        assert_eq!(one_tag(r"\a"), r"m,t=\a f=1i 1");
        // Where no encoding reads back the same everywhere, the stand-in replaces it.
        assert_eq!(one_tag(r"blue\"), "m,t=blue\u{FF3C} f=1i 1");
        assert_eq!(one_tag(r"\"), "m,t=\u{FF3C} f=1i 1");
        assert_eq!(one_tag(r"a\,b"), "m,t=a\u{FF3C}\\,b f=1i 1");
        assert_eq!(one_tag(r"a\ b"), "m,t=a\u{FF3C}\\ b f=1i 1");
        assert_eq!(one_tag(r"a\=b"), "m,t=a\u{FF3C}\\=b f=1i 1");
        assert_eq!(one_tag(r"a\\b"), "m,t=a\u{FF3C}\\b f=1i 1");
        assert_eq!(one_tag("a\\\n"), "m,t=a\u{FF3C}\\  f=1i 1");
        assert_eq!(stored_tag_value(r"a\\b\"), "a\u{FF3C}\\b\u{FF3C}");
        assert_eq!(stored_tag_value("blue"), "blue");
    }

    /// How InfluxDB 1.x/2.x reads the tag value at the start of `s` (models/points.go: a
    /// `,` or space not right after a `\` ends it; `\,` `\=` `\ ` are unescaped, `\\` is
    /// not), and what follows; `None` where it answers `invalid tag format`.
    fn influxdb_reads(s: &str) -> Option<(String, &str)> {
        let b = s.as_bytes();
        let mut end = 0;
        while end < b.len() {
            let escaped = end > 0 && b[end - 1] == b'\\';
            match b[end] {
                b',' | b' ' if !escaped => break,
                b'=' if !escaped => return None,
                _ => end += 1,
            }
        }
        let mut value = s[..end].to_owned();
        for c in [",", "=", " "] {
            value = value.replace(&format!("\\{c}"), c);
        }
        Some((value, &s[end..]))
    }

    /// How VictoriaMetrics reads it (lib/protoparser/influx: a `,` or space after an even
    /// run of backslashes ends it; `\` before `,` `=` space or `\` is dropped, else kept).
    fn victoria_metrics_reads(s: &str) -> (String, &str) {
        let b = s.as_bytes();
        let mut end = 0;
        let mut run = 0;
        while end < b.len() && !(matches!(b[end], b',' | b' ') && run % 2 == 0) {
            run = if b[end] == b'\\' { run + 1 } else { 0 };
            end += 1;
        }
        let mut value = String::new();
        let mut chars = s[..end].chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('\\', Some(&n)) if matches!(n, ',' | '=' | ' ' | '\\') => {
                    value.push(n);
                    chars.next();
                }
                _ => value.push(c),
            }
        }
        (value, &s[end..])
    }

    #[test]
    fn r12_every_store_reads_back_the_stored_tag_value() {
        // Every value of up to 5 characters over an alphabet of the troublesome ones.
        let alphabet = ['\\', ',', '=', ' ', 'a', '"', 'ü'];
        let mut values = vec![String::new()];
        let mut checked = 0;
        for _ in 0..5 {
            values = values
                .iter()
                .flat_map(|v| alphabet.iter().map(move |c| format!("{v}{c}")))
                .collect();
            for v in &values {
                let line = one_tag(v);
                let tag = line
                    .strip_prefix("m,t=")
                    .unwrap_or_else(|| panic!("{line}"));
                let want = stored_tag_value(v);
                let expect_rest = " f=1i 1";
                assert_eq!(
                    influxdb_reads(tag),
                    Some((want.clone(), expect_rest)),
                    "InfluxDB, value {v:?}, line {line:?}"
                );
                assert_eq!(
                    victoria_metrics_reads(tag),
                    (want.clone(), expect_rest),
                    "VictoriaMetrics, value {v:?}, line {line:?}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 7 + 49 + 343 + 2401 + 16807);
    }

    #[test]
    fn control_characters_become_escaped_spaces() {
        assert_eq!(one_tag("a\nb\tc"), r"m,t=a\ b\ c f=1i 1");
        // DEL and a C1 control (two bytes in UTF-8) too; other non-ASCII is kept.
        assert_eq!(one_tag("a\u{7f}b\u{85}c"), r"m,t=a\ b\ c f=1i 1");
        assert_eq!(one_tag("zürich-1"), "m,t=zürich-1 f=1i 1");
    }

    #[test]
    fn empty_tags_are_omitted_and_tags_sorted() {
        let p = Point::new("m", 1)
            .tag("zeta", "1")
            .tag("alpha", "2")
            .tag("empty", "")
            .tag("", "nokey")
            .tag("Beta", "3")
            .field("f", 1i64);
        assert_eq!(p.to_line(), "m,Beta=3,alpha=2,zeta=1 f=1i 1");
    }

    #[test]
    fn field_types_and_string_escaping() {
        let p = Point::new("m", -1)
            .field("s", r#"say "hi" \ bye"#)
            .field("i", -42i64)
            .field("u", 42u64)
            .field("b", true)
            .field("f", 71.0)
            .field("g", 0.41)
            .field("k e=y,", false)
            .field("nan", f64::NAN)
            .field("inf", f64::INFINITY)
            .field("nl", "a\nb");
        assert_eq!(
            p.to_line(),
            r#"m b=true,f=71,g=0.41,i=-42i,k\ e\=y\,=false,nl="a b",s="say \"hi\" \\ bye",u=42u -1"#
        );
    }

    #[test]
    fn point_without_writable_fields_renders_empty() {
        assert_eq!(Point::new("m", 1).tag("t", "v").to_line(), "");
        assert_eq!(Point::new("m", 1).field("x", f64::NAN).to_line(), "");
    }

    #[test]
    fn full_event_maps_to_every_instance_field() {
        let ev = fixture_event("valid_full.json");
        let p = instance_point(&ev, true);
        let enqueued = Timestamp::from_unix_millis(ev.time.unix_millis() - 49_500).unwrap();
        let received = instance_point_received(&ev, true, enqueued);
        assert_eq!(
            received.get_field("clock_skew_seconds"),
            Some(&FieldValue::Float(49.5)),
            "sample time 49.5 s after the enqueued time: the clock runs ahead"
        );
        assert_eq!(
            p.to_line(),
            "tc_instance,connector=tc-eu.example.com,deployment=blue,instance=tc-eu-vmss_3,\
             region=westeurope,scaleset=tc-eu-vmss \
             agent_credential_expires_in_seconds=2875i,agent_dropped=0i,agent_publish_failing_seconds=0i,agent_spooled=0i,call_count=12i,cert_expiry_days=41.5,cpu=0.41,\
             disk_free_bytes=53687091200i,max_calls=16i,media_load=71i,mem_total_bytes=17179869184i,\
             mem_used_bytes=6442450944i,planned_calls=15i,service_up=1i,state_code=1i,up=1i,\
             utilization=0.8 1795687200123000000"
        );
        let mut fields: Vec<&str> = received.fields().keys().map(|k| k.as_ref()).collect();
        let mut expected = INSTANCE_FIELDS.to_vec();
        fields.sort_unstable();
        expected.sort_unstable();
        assert_eq!(fields, expected);
        let mut tags: Vec<&str> = p.tags().keys().map(|k| k.as_ref()).collect();
        let mut expected = INSTANCE_TAGS.to_vec();
        tags.sort_unstable();
        expected.sort_unstable();
        assert_eq!(tags, expected);
    }

    /// The collector writes each event's line with [`write_instance_line`], not through a
    /// [`Point`]: it must write the very bytes the point would, for every shape of event.
    #[test]
    fn instance_line_written_directly_is_the_points_line() {
        let full = fixture_event("valid_full.json");
        let mut odd = full.clone();
        odd.instance = r"tc eu,vmss=3\".to_owned();
        odd.deployment = String::new();
        odd.region = "west\neurope\u{7f}".to_owned();
        odd.health.cpu = Some(f64::NAN);
        odd.health.cert_expiry_days = Some(-0.25);
        if let Some(a) = odd.agent.as_mut() {
            a.credential_expires_in_seconds = Some(i64::MIN);
            a.spooled = u64::MAX;
        }
        let mut no_plan = full.clone();
        if let Some(c) = no_plan.calls.as_mut() {
            c.planned_calls = Some(0);
            c.call_count = u32::MAX;
        }
        let events = [
            full,
            odd,
            no_plan,
            fixture_event("valid_minimal.json"),
            fixture_event("valid_minor_version.json"),
        ];
        for ev in &events {
            for skew_ms in [-49_500, 0, 1, 600_000] {
                let enqueued =
                    Timestamp::from_unix_millis(ev.time.unix_millis() - skew_ms).unwrap();
                let mut direct = "before\n".to_owned();
                assert!(write_instance_line(&mut direct, ev, enqueued));
                let mut via_point = "before\n".to_owned();
                assert!(instance_point_received(ev, true, enqueued).write_line(&mut via_point));
                assert_eq!(direct, via_point, "{ev:?}");
            }
        }
    }

    #[test]
    fn integers_are_written_as_display_writes_them() {
        for v in [
            0,
            1,
            -1,
            9,
            10,
            -10,
            1_795_687_200_123_000_000,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = String::new();
            push_integer(&mut out, v);
            assert_eq!(out, v.to_string());
        }
        for v in [0, 7, 10, 4_294_967_295, u64::MAX] {
            let mut out = String::new();
            push_integer(&mut out, v);
            assert_eq!(out, v.to_string());
        }
    }

    /// Floats are written by zmij, not `core::fmt`: the text must stay what `{f}` writes
    /// for the values events carry (ms/1000 skews, k/15 utilizations, CPU ratios, days),
    /// and any float must read back as itself, so a stored value never changes with the
    /// writer.
    #[test]
    fn floats_are_written_as_display_writes_them() {
        let mut values: Vec<f64> = vec![
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            1e-5,
            9.999_999e-6,
            1e15,
            9_999_999_999_999_998.0,
            1e16,
            1e17,
            5e-324,
            0.1 + 0.2,
        ];
        values.extend((-100_000..100_000).map(|ms| f64::from(ms) / 1000.0));
        values.extend((0..=16).map(|k| f64::from(k) / 15.0));
        values.extend((0..=1000).map(|k| f64::from(k) * 0.001_234_5));
        for f in values {
            let mut out = String::new();
            push_float(&mut out, f);
            assert_eq!(out, format!("{f}"), "bits {:#x}", f.to_bits());
        }
        // Any bit pattern: the value a store reads back is exactly `f`, in as few digits
        // and the same notation as `{f}`. (On an exact tie between two shortest digit
        // strings, e.g. 1658206780088562.25, zmij may pick the other one.)
        let mut bits: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            let f = f64::from_bits(bits);
            if !f.is_finite() {
                continue;
            }
            let mut out = String::new();
            push_float(&mut out, f);
            let display = format!("{f}");
            assert_eq!(out.parse::<f64>().ok(), Some(f), "bits {bits:#x}: {out}");
            assert_eq!(
                out.len(),
                display.len(),
                "bits {bits:#x}: {out} vs {display}"
            );
            assert!(!out.contains('e'), "{out}");
        }
    }

    #[test]
    fn unknown_values_are_left_out_not_zeroed() {
        let ev = fixture_event("valid_minimal.json");
        assert_eq!(
            instance_point(&ev, false).to_line(),
            "tc_instance,connector=tc-eu.example.com,deployment=blue,instance=tc-eu-vmss_0,\
             region=westeurope,scaleset=tc-eu-vmss state_code=0i,up=0i 1795687205000000000"
        );
        // Calls without planned_calls or media_load: planned defaults to 15, media_load absent.
        let ev = fixture_event("valid_minor_version.json");
        let p = instance_point(&ev, true);
        assert_eq!(p.get_field("planned_calls"), Some(&FieldValue::Int(15)));
        assert_eq!(p.get_field("media_load"), None);
        assert_eq!(p.get_field("utilization"), Some(&FieldValue::Float(0.0)));
    }

    /// r13: the agent's drop counter (reports lost to a full spool) is stored beside its
    /// backlog, each from its own field; an event without `agent` has neither.
    #[test]
    fn agent_dropped_is_stored_next_to_agent_spooled() {
        let mut ev = fixture_event("valid_full.json");
        if let Some(a) = ev.agent.as_mut() {
            a.spooled = 7;
            a.dropped = 3;
        }
        let p = instance_point(&ev, true);
        assert_eq!(p.get_field("agent_spooled"), Some(&FieldValue::Int(7)));
        assert_eq!(p.get_field("agent_dropped"), Some(&FieldValue::Int(3)));
        assert!(p
            .to_line()
            .contains("agent_dropped=3i,agent_publish_failing_seconds=0i,agent_spooled=7i,"));
        ev.agent = None;
        let p = instance_point(&ev, true);
        assert_eq!(p.get_field("agent_dropped"), None);
        assert_eq!(p.get_field("agent_spooled"), None);
    }

    /// r12 fault 10: how long publishing had been failing is stored beside the backlog it
    /// causes; an agent that does not send it (older versions) leaves it out, not 0.
    #[test]
    fn agent_publish_failing_seconds_is_stored_when_sent() {
        let mut ev = fixture_event("valid_full.json");
        if let Some(a) = ev.agent.as_mut() {
            a.publish_failing_seconds = Some(900);
        }
        let p = instance_point(&ev, true);
        assert_eq!(
            p.get_field("agent_publish_failing_seconds"),
            Some(&FieldValue::Int(900))
        );
        if let Some(a) = ev.agent.as_mut() {
            a.publish_failing_seconds = None;
        }
        let p = instance_point(&ev, true);
        assert_eq!(p.get_field("agent_publish_failing_seconds"), None);
        assert_eq!(p.get_field("agent_spooled"), Some(&FieldValue::Int(0)));
    }

    /// r12 fault 5: a ratio without a denominator is unknown (left out), never 0.
    #[test]
    fn utilization_without_planned_capacity_is_left_out() {
        let mut ev = fixture_event("valid_full.json");
        if let Some(c) = ev.calls.as_mut() {
            c.planned_calls = Some(0);
            c.call_count = 0;
        }
        let p = instance_point(&ev, true);
        assert_eq!(p.get_field("planned_calls"), Some(&FieldValue::Int(0)));
        assert_eq!(p.get_field("utilization"), None);
        let at = Timestamp::parse_rfc3339("2026-11-26T10:01:00Z").unwrap();
        let none_online =
            connector_point(&ev.connector_key(), &ConnectorRollup::compute(&[], 31), at);
        assert_eq!(
            none_online.get_field("capacity_planned"),
            Some(&FieldValue::Int(0))
        );
        assert_eq!(none_online.get_field("utilization"), None);
        assert!(!none_online.to_line().contains("utilization"));
    }

    #[test]
    fn down_point_is_stamped_when_declared_stale() {
        let ev = fixture_event("valid_full.json");
        let at = Timestamp::parse_rfc3339("2026-11-26T10:01:00Z").unwrap();
        assert_eq!(
            instance_down_point(&ev, at).to_line(),
            "tc_instance,connector=tc-eu.example.com,deployment=blue,instance=tc-eu-vmss_3,\
             region=westeurope,scaleset=tc-eu-vmss up=0i 1795687260000000000"
        );
    }

    #[test]
    fn connector_point_carries_the_rollup() {
        let ev = fixture_event("valid_full.json");
        let rollup = ConnectorRollup::compute(&[16, 16], 32);
        let end = Timestamp::parse_rfc3339("2026-11-26T10:01:00Z").unwrap();
        let p = connector_point(&ev.connector_key(), &rollup, end);
        assert_eq!(
            p.to_line(),
            "tc_connector,connector=tc-eu.example.com,deployment=blue,region=westeurope \
             call_count=32i,capacity_max=32i,capacity_planned=30i,headroom_calls=-2i,\
             instances_needed=3i,instances_online=2i,peak_calls=32i,utilization=1.0666666666666667,\
             vcpu_needed=12i 1795687260000000000"
        );
        let mut fields: Vec<&str> = p.fields().keys().map(|k| k.as_ref()).collect();
        let mut expected = CONNECTOR_FIELDS.to_vec();
        fields.sort_unstable();
        expected.sort_unstable();
        assert_eq!(fields, expected);
    }

    #[test]
    fn pipeline_point_omits_unknown_ages() {
        let at = Timestamp::from_unix_millis(1_000).unwrap();
        let stats = PipelineStats {
            events: 10,
            dead_letters: 2,
            duplicates: 1,
            lag_seconds: Some(0.25),
            checkpoint_age_seconds: None,
        };
        assert_eq!(
            pipeline_point("col-1", "3", &stats, at).to_line(),
            "tc_pipeline,collector=col-1,partition=3 dead_letters=2i,duplicates=1i,events=10i,\
             lag_seconds=0.25 1000000000"
        );
    }

    #[test]
    fn no_tag_carries_per_call_or_free_text_data() {
        for name in INSTANCE_TAGS
            .iter()
            .chain(&CONNECTOR_TAGS)
            .chain(&PIPELINE_TAGS)
        {
            assert!(
                !["ip", "call", "message", "source", "destination"]
                    .iter()
                    .any(|bad| name.contains(bad)),
                "{name}"
            );
        }
    }
}
