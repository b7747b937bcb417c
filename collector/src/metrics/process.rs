//! The process metrics every Prometheus client library exports, read at scrape time:
//! `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`.
//!
//! On Linux they come from `/proc/self` (`stat`, `status`, `fd/`, `limits`) and `/proc/stat`
//! (boot time), as client_golang reads them. A value that cannot be read (another platform,
//! a `/proc` without that file, an unlimited fd limit) is left out of the scrape, never
//! reported as 0.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Registered once in the [`super::Metrics`] registry; reads the numbers on each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of this process; `None` where it could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    pub resident_memory_bytes: Option<u64>,
    /// Virtual memory size, bytes.
    pub virtual_memory_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        if let Some(v) = s.cpu_seconds {
            let m = ConstCounter::new(v);
            // The encoder appends `_total` to a counter's name.
            m.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                m.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                s.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                s.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                s.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            encode_gauge(&mut encoder, name, help, value)?;
        }
        encode_gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            s.start_time_seconds,
        )?;
        Ok(())
    }
}

/// Encodes one gauge `name` when its `value` is known.
fn encode_gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<N>,
) -> Result<(), std::fmt::Error> {
    let Some(v) = value else {
        return Ok(());
    };
    let m = ConstGauge::new(v);
    m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)
}

impl ProcessStats {
    /// Reads this process's numbers (all `None` off Linux).
    pub fn read() -> Self {
        #[cfg(target_os = "linux")]
        {
            linux::read()
        }
        #[cfg(not(target_os = "linux"))]
        {
            ProcessStats::default()
        }
    }
}

/// The clock ticks per second of `/proc/*/stat` times (`USER_HZ`): 100 in the kernel's
/// user-space ABI on every architecture Linux builds for today (client_golang's procfs
/// assumes the same; reading `sysconf(_SC_CLK_TCK)` would need `unsafe` or another crate).
const USER_HZ: f64 = 100.0;

/// From `/proc/self/stat`: user + system CPU seconds and the start time in ticks since boot.
fn parse_stat(text: &str) -> Option<(f64, u64)> {
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split after the
    // last `)`. Field 3 (state) is then index 0; utime is field 14, stime 15, starttime 22.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let cpu_ticks = field(14)? + field(15)?;
    Some((cpu_ticks as f64 / USER_HZ, field(22)?))
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A `kB` line such as `VmRSS:    1234 kB` of `/proc/self/status`, in bytes.
fn parse_status_bytes(text: &str, key: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let mut parts = line.split_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(kib * 1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `None` when unlimited.
fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;

    pub(super) fn read() -> ProcessStats {
        let file = |p: &str| std::fs::read_to_string(p).ok();
        let stat = file("/proc/self/stat").as_deref().and_then(parse_stat);
        let boot = file("/proc/stat").as_deref().and_then(parse_boot_time);
        let status = file("/proc/self/status").unwrap_or_default();
        ProcessStats {
            cpu_seconds: stat.map(|(cpu, _)| cpu),
            resident_memory_bytes: parse_status_bytes(&status, "VmRSS"),
            virtual_memory_bytes: parse_status_bytes(&status, "VmSize"),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: file("/proc/self/limits")
                .as_deref()
                .and_then(parse_max_open_files),
            start_time_seconds: stat
                .zip(boot)
                .map(|((_, ticks), boot)| boot as f64 + ticks as f64 / USER_HZ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_is_split_after_the_last_parenthesis_of_the_command() {
        let stat = "4242 (tcp (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 130 0 0 20 0 9 0 123456 1000 200";
        let (cpu, start) = parse_stat(stat).unwrap();
        assert!((cpu - 3.8).abs() < 1e-9, "(250 + 130) / 100 s, got {cpu}");
        assert_eq!(start, 123456);
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
    }

    #[test]
    fn proc_status_limits_and_boot_time_parse_in_base_units() {
        let status = "Name:\ttcpulse\nVmSize:\t  204800 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_bytes(status, "VmRSS"), Some(10240 * 1024));
        assert_eq!(parse_status_bytes(status, "VmSize"), Some(204800 * 1024));
        assert_eq!(parse_status_bytes(status, "VmSwap"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), None, "absent, not 0");
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausible_numbers() {
        let s = ProcessStats::read();
        assert!(s.resident_memory_bytes.unwrap() > 0, "{s:?}");
        assert!(s.virtual_memory_bytes.unwrap() >= s.resident_memory_bytes.unwrap());
        assert!(s.open_fds.unwrap() > 0);
        assert!(s.cpu_seconds.unwrap() >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = s.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
    }
}
