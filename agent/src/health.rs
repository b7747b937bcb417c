//! Host health for the status event: CPU, memory, disk free, whether the Teams Connector
//! process runs, and days until the connector certificate expires.
//!
//! Every value is optional: one that cannot be measured is left out (unknown), never 0,
//! and a [`HealthFailed`] event is emitted. The certificate is re-read only when its file
//! changes (modification time), so a report costs a few `/proc` reads (Linux) or
//! performance-counter calls (Windows).
//!
//! What to measure is the `[health]` section in [`config`].

use std::path::Path;
use std::time::SystemTime;

use sysinfo::{Disks, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
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

    fn service_up(&mut self) -> Option<bool> {
        let wanted = self.cfg.service_process.as_deref()?;
        // The executable path is read once per process (names can be truncated on Linux).
        let kind = ProcessRefreshKind::nothing().with_exe(UpdateKind::OnlyIfNotSet);
        self.sys
            .refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
        Some(self.sys.processes().values().any(|p| {
            process_name_matches(&p.name().to_string_lossy(), wanted)
                || p.exe()
                    .and_then(|e| e.file_name())
                    .is_some_and(|f| process_name_matches(&f.to_string_lossy(), wanted))
        }))
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
}
