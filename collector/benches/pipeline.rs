//! Throughput and memory of the collector's CPU path, without network:
//! decode → dedup → aggregate → line protocol into batch buffers.
//!
//! `cargo bench -p tcpulse-collector --bench pipeline` (N from `TCPULSE_BENCH_EVENTS`,
//! default 2,000,000; instances from `TCPULSE_BENCH_INSTANCES`, default 200). Events come
//! from a simulated fleet (4 connectors, 15 s reports, a call-count random walk); bodies are
//! encoded in chunks outside the timed section. RSS is read from /proc/self/status after
//! each chunk, so a flat line means memory grows with instances, not events.

use std::time::{Duration, Instant};

use tcpulse_collector::aggregate::{AggregateSettings, Aggregator};
use tcpulse_schema::{
    decode, encode, write_instance_line, Calls, DedupWindow, Health, Point, PointSink, StatusEvent,
    Timestamp,
};
use uuid::Uuid;

/// The allocator the `tcpulse-collector` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHUNK: usize = 100_000;
const T0: i64 = 1_795_687_200_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The open batch, written as the collector's batch builder writes it.
struct Batch {
    buf: String,
    lines: u64,
}

impl PointSink for Batch {
    fn point(&mut self, p: Point) {
        if p.write_line(&mut self.buf) {
            self.buf.push('\n');
            self.lines += 1;
        }
    }

    fn instance_received(&mut self, ev: &StatusEvent, enqueued: Timestamp) {
        if write_instance_line(&mut self.buf, ev, enqueued) {
            self.buf.push('\n');
            self.lines += 1;
        }
    }
}

struct Fleet {
    instances: usize,
    calls: Vec<u32>,
    boots: Vec<Uuid>,
    rng: u64,
}

impl Fleet {
    fn new(instances: usize) -> Self {
        Fleet {
            instances,
            calls: vec![8; instances],
            boots: (0..instances)
                .map(|i| Uuid::from_u128(0xb007_0000 + i as u128))
                .collect(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Event `k`: instance `k % instances`, report `k / instances` (every 15 s).
    fn event(&mut self, k: usize) -> StatusEvent {
        let i = k % self.instances;
        let round = (k / self.instances) as i64;
        let step = (self.next_rand() % 3) as i64 - 1;
        self.calls[i] = (self.calls[i] as i64 + step).clamp(0, 16) as u32;
        let connector = format!("tc-{}.example.com", i % 4);
        StatusEvent {
            connector,
            scaleset: format!("tc-{}-vmss", i % 4),
            instance: format!("tc-{}-vmss_{}", i % 4, i),
            boot: self.boots[i],
            seq: round as u64,
            time: Timestamp::from_unix_millis(T0 + round * 15_000 + (i as i64 * 37) % 15_000)
                .unwrap_or(Timestamp::EPOCH),
            start_time: None,
            calls: Some(Calls {
                call_count: self.calls[i],
                media_load: Some(40),
                ..Calls::example()
            }),
            health: Health {
                cpu: Some(0.4),
                mem_used_bytes: Some(6 << 30),
                mem_total_bytes: Some(16 << 30),
                disk_free_bytes: Some(50 << 30),
                ..Health::example()
            },
            agent: None,
            ..StatusEvent::example()
        }
    }
}

fn main() {
    let total = env_usize("TCPULSE_BENCH_EVENTS", 2_000_000);
    let instances = env_usize("TCPULSE_BENCH_INSTANCES", 200);
    let mut fleet = Fleet::new(instances);
    let mut agg = Aggregator::new(AggregateSettings {
        rollup_interval_ms: 10_000,
        ..AggregateSettings::default()
    });
    let mut dedup = DedupWindow::default();
    let mut batch = Batch {
        buf: String::with_capacity(1 << 20),
        lines: 0,
    };
    let (mut bytes, mut batches) = (0u64, 0u64);
    let mut busy = Duration::ZERO;
    let (rss0, _) = rss_kib();
    println!("collector pipeline bench: {total} events, {instances} instances, no network");
    println!(
        "{:>12} {:>12} {:>10} {:>10}",
        "events", "events/s", "rss_kib", "hwm_kib"
    );
    let mut done = 0usize;
    while done < total {
        let n = CHUNK.min(total - done);
        let bodies: Vec<(Vec<u8>, i64)> = (done..done + n)
            .map(|k| {
                let ev = fleet.event(k);
                let enq = ev.time.unix_millis() + 50;
                (encode(&ev), enq)
            })
            .collect();
        let started = Instant::now();
        for (body, enq) in &bodies {
            let Ok(ev) = decode(body) else { continue };
            if !dedup.observe_parts(&ev.instance, ev.boot, ev.seq).is_new() {
                continue;
            }
            agg.apply(ev, *enq, &mut batch);
            if batch.buf.len() >= 1 << 20 {
                bytes += batch.buf.len() as u64;
                batches += 1;
                batch.buf.clear();
            }
        }
        busy += started.elapsed();
        done += n;
        if done.is_multiple_of(1_000_000) || done == total {
            let (rss, hwm) = rss_kib();
            println!(
                "{done:>12} {:>12.0} {rss:>10} {hwm:>10}",
                done as f64 / busy.as_secs_f64()
            );
        }
    }
    bytes += batch.buf.len() as u64;
    let lines = batch.lines;
    let (rss, hwm) = rss_kib();
    println!(
        "total: {done} events in {:.2}s busy = {:.0} events/s; {lines} lines, {:.1} MiB line protocol in {batches} full batches; {} instances, {} connectors tracked; RSS start {rss0} KiB, end {rss} KiB, peak {hwm} KiB",
        busy.as_secs_f64(),
        done as f64 / busy.as_secs_f64(),
        bytes as f64 / (1 << 20) as f64,
        agg.instances(),
        agg.connectors(),
    );
}
