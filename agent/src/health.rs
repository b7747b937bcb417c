//! Host health for the status event: CPU, memory, disk free, whether the Teams Connector
//! process runs, and days until the connector certificate expires.
//!
//! Every value is optional: one that cannot be measured is left out (unknown), never 0,
//! and a [`HealthFailed`] event is emitted. The certificate is re-read only when its file
//! changes (modification time), and the service process, once found, is checked alone
//! until it is gone (only then is every process listed again), so a report costs a few
//! `/proc` reads (Linux) or performance-counter calls (Windows).
//!
//! What to measure is the `[health]` section in [`config`].

use std::path::Path;
use std::time::SystemTime;

use sysinfo::{Disks, Pid, Process, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
use tcpulse_schema::Health;

use crate::check_cert::{self, ENV_CERT_PASSWORD};
use crate::internal_events::{Counters, HealthFailed, InternalEvent};

pub mod config;
use config::HealthConfig;

#[derive(Debug)]
struct CertCache {
    modified: Option<SystemTime>,
    not_after_unix: Option<i64>,
}

/// Takes health samples. Create once; each [`HealthProbe::sample`] measures CPU usage
/// since the previous one.
#[derive(Debug)]
pub struct HealthProbe {
    cfg: HealthConfig,
    sys: System,
    /// The processes last listed: all of them while the service process is not found (kept
    /// for the next listing), only that one once it is.
    procs: System,
    /// The service process found by the last sample.
    service_pid: Option<Pid>,
    disks: Disks,
    cert: CertCache,
    cpu_refreshed: std::time::Instant,
}

/// Whether a process name (as the OS reports it) is the configured one: exact, ignoring
/// ASCII case and a trailing `.exe` on either side.
pub fn process_name_matches(actual: &str, wanted: &str) -> bool {
    let strip = |s: &str| {
        let l = s.to_ascii_lowercase();
        l.strip_suffix(".exe").map(str::to_owned).unwrap_or(l)
    };
    !wanted.is_empty() && strip(actual) == strip(wanted)
}

impl HealthProbe {
    /// A probe for `cfg`; takes the first CPU reading.
    pub fn new(cfg: HealthConfig) -> Self {
        let mut sys = System::new();
        let disks = if cfg.enabled {
            Disks::new_with_refreshed_list()
        } else {
            Disks::new()
        };
        if cfg.enabled {
            sys.refresh_cpu_usage();
        }
        HealthProbe {
            cfg,
            sys,
            procs: System::new(),
            service_pid: None,
            disks,
            cert: CertCache {
                modified: None,
                not_after_unix: None,
            },
            cpu_refreshed: std::time::Instant::now(),
        }
    }

    fn disk_free(&mut self) -> Option<u64> {
        self.disks.refresh(true);
        let target: &Path = &self.cfg.disk_path;
        self.disks
            .list()
            .iter()
            .filter(|d| target.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map(|d| d.available_space())
    }

    /// Whether the service process runs. The process found last time is checked alone (its
    /// pid, then its name again, so a reused pid is not taken for it); only when it is gone
    /// is every process listed. Listing every process each report (a `/proc/<pid>/stat`
    /// read, and a directory listing, per process on Linux) was about 40 % of the agent's
    /// CPU time with a report every second.
    fn service_up(&mut self) -> Option<bool> {
        let wanted = self.cfg.service_process.as_deref()?;
        // The executable path is read once per process (names can be truncated on Linux).
        // Threads are not listed: sysinfo lists every process's on Linux otherwise (a
        // directory read per process), and a thread is never the service process.
        let kind = ProcessRefreshKind::nothing()
            .with_exe(UpdateKind::OnlyIfNotSet)
            .without_tasks();
        if let Some(pid) = self.service_pid {
            self.procs
                .refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
            if self
                .procs
                .process(pid)
                .is_some_and(|p| is_service(p, wanted))
            {
                return Some(true);
            }
        }
        self.procs
            .refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
        self.service_pid = self
            .procs
            .processes()
            .iter()
            .find(|(_, p)| is_service(p, wanted))
            .map(|(pid, _)| *pid);
        if let Some(pid) = self.service_pid {
            // Keep only what the next check needs: dropping the full list frees its entries
            // (and, on Linux, the `stat` files sysinfo keeps open for each).
            let mut one = System::new();
            one.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
            self.procs = one;
        }
        Some(self.service_pid.is_some())
    }

    fn cert_days(&mut self, counters: &Counters) -> Option<f64> {
        let path = self.cfg.cert_file.clone()?;
        let modified = match std::fs::metadata(&path).and_then(|m| m.modified()) {
            Ok(m) => Some(m),
            Err(e) => {
                HealthFailed {
                    what: "cert_expiry_days",
                    error: &e,
                }
                .emit(counters);
                self.cert = CertCache {
                    modified: None,
                    not_after_unix: None,
                };
                return None;
            }
        };
        if self.cert.modified != modified || self.cert.not_after_unix.is_none() {
            let password = std::env::var(ENV_CERT_PASSWORD).ok();
            let now = now_unix();
            let result = check_cert::load_bundle(&path, password.as_deref())
                .and_then(|b| check_cert::expiry_days(&path, &b, now));
            self.cert.modified = modified;
            self.cert.not_after_unix = match result {
                Ok(days) => Some(now + (days * 86_400.0) as i64),
                Err(e) => {
                    HealthFailed {
                        what: "cert_expiry_days",
                        error: &e,
                    }
                    .emit(counters);
                    None
                }
            };
        }
        let na = self.cert.not_after_unix?;
        Some(((na - now_unix()) as f64 / 86_400.0 * 10.0).round() / 10.0)
    }

    /// Measures everything configured now.
    pub fn sample(&mut self, counters: &Counters) -> Health {
        if !self.cfg.enabled {
            return Health::default();
        }
        // CPU usage is measured between two refreshes; too close together it is noise.
        let cpu = if self.cpu_refreshed.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            self.sys.refresh_cpu_usage();
            self.cpu_refreshed = std::time::Instant::now();
            f64::from(self.sys.global_cpu_usage()) / 100.0
        } else {
            f64::NAN
        };
        self.sys.refresh_memory();
        let total = self.sys.total_memory();
        // `..Health::default()`: a value the schema gains is unknown here until this agent
        // measures it, and this code compiles unchanged meanwhile.
        #[allow(clippy::needless_update)]
        Health {
            cpu: (cpu.is_finite() && !self.sys.cpus().is_empty())
                .then(|| (cpu.clamp(0.0, 1.0) * 1000.0).round() / 1000.0),
            mem_used_bytes: (total > 0).then(|| self.sys.used_memory()),
            mem_total_bytes: (total > 0).then_some(total),
            disk_free_bytes: self.disk_free(),
            service_up: self.service_up(),
            cert_expiry_days: self.cert_days(counters),
            ..Health::default()
        }
    }
}

/// Whether `p` is the configured service process, by its name or its executable's file name.
fn is_service(p: &Process, wanted: &str) -> bool {
    process_name_matches(&p.name().to_string_lossy(), wanted)
        || p.exe()
            .and_then(|e| e.file_name())
            .is_some_and(|f| process_name_matches(&f.to_string_lossy(), wanted))
}

fn now_unix() -> i64 {
    tcpulse_schema::Timestamp::now().unix_millis() / 1000
}

#[cfg(test)]
mod tests {
    use super::config::default_disk_path;
    use super::*;

    #[test]
    fn process_names_match_ignoring_case_and_exe() {
        assert!(process_name_matches("TeamsConnector.exe", "teamsconnector"));
        assert!(process_name_matches("sshd", "SSHD.EXE"));
        assert!(!process_name_matches("sshd-session", "sshd"));
        assert!(!process_name_matches("x", ""));
    }

    #[test]
    fn samples_this_host_and_finds_its_own_process() {
        let me = std::env::current_exe().unwrap();
        let my_name = me.file_name().unwrap().to_string_lossy().into_owned();
        let mut probe = HealthProbe::new(HealthConfig {
            enabled: true,
            service_process: Some(my_name),
            disk_path: default_disk_path(),
            cert_file: None,
        });
        let c = Counters::default();
        assert_eq!(
            probe.sample(&c).cpu,
            None,
            "too soon after the first reading"
        );
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let h = probe.sample(&c);
        assert!(h.cpu.is_some_and(|c| (0.0..=1.0).contains(&c)));
        assert!(h.mem_total_bytes.unwrap() > h.mem_used_bytes.unwrap());
        assert!(h.disk_free_bytes.unwrap() > 0);
        assert_eq!(h.service_up, Some(true), "the test binary itself runs");
        assert_eq!(h.cert_expiry_days, None);
        let mut off = HealthProbe::new(HealthConfig {
            enabled: true,
            service_process: Some("no-such-process-tcpulse".into()),
            disk_path: default_disk_path(),
            cert_file: Some("/nonexistent/cert.pfx".into()),
        });
        let h = off.sample(&c);
        assert_eq!((h.service_up, h.cert_expiry_days), (Some(false), None));
        assert_eq!(
            c.health_errors.get(),
            1,
            "the missing certificate is counted"
        );
    }

    /// A process of this name (a copy of `sleep`), started and stopped by the test.
    #[cfg(target_os = "linux")]
    struct Named(std::process::Child);

    #[cfg(target_os = "linux")]
    impl Named {
        fn start(bin: &Path) -> Named {
            Named(std::process::Command::new(bin).arg("60").spawn().unwrap())
        }
        fn stop(mut self) {
            self.0.kill().unwrap();
            self.0.wait().unwrap();
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn service_up_follows_the_process_stopping_and_starting_again() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("tcpulse-svc-{}", std::process::id());
        let bin = dir.path().join(&name);
        std::fs::copy("/bin/sleep", &bin).unwrap();
        let mut probe = HealthProbe::new(HealthConfig {
            enabled: true,
            service_process: Some(name),
            disk_path: default_disk_path(),
            cert_file: None,
        });
        let c = Counters::default();
        assert_eq!(probe.sample(&c).service_up, Some(false), "not started yet");
        let first = Named::start(&bin);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(probe.sample(&c).service_up, Some(true));
        assert_eq!(probe.sample(&c).service_up, Some(true), "checked alone now");
        first.stop();
        assert_eq!(probe.sample(&c).service_up, Some(false), "it stopped");
        let second = Named::start(&bin);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(probe.sample(&c).service_up, Some(true), "a new process");
        second.stop();
        assert_eq!(probe.sample(&c).service_up, Some(false));
    }
}
