//! The chaos suite's shared parts: one summary row per fault case, and a small tmpfs for
//! disk-full cases.
//!
//! Every case in `tests/tests/chaos/` calls [`record`] once with what it sent and what the
//! store (or the hub) kept. Rows are appended as JSON lines to `<target>/chaos-summary.jsonl`
//! (one file for every test process, appends of one short line are atomic); `scripts/test`
//! empties it before the run and prints it as one table at the end
//! (`cargo run -p tcpulse-tests --bin chaos-summary`).
//!
//! [`Tmpfs`] mounts a tmpfs of a given size (root only, as on these machines and in CI) and
//! unmounts it on drop, on every path: a case that cannot mount fails with the reason, never
//! a silent skip.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One chaos case's outcome, as the summary table shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// The fault tried, short (`agent disk full during spool append`).
    pub fault: String,
    /// Events (reports) the case produced.
    pub events_sent: u64,
    /// Distinct points (or events) the store or hub kept.
    pub points_stored: u64,
    /// Events neither stored nor counted as dropped or dead-lettered.
    pub lost: u64,
    /// Points stored more than once (same series and timestamp written twice with another
    /// value, or a repeated event counted twice).
    pub duplicated: u64,
    /// Events the product counted as dropped or dead-lettered (and so, not lost silently).
    pub counted_dropped: u64,
    /// One line on the outcome a user sees (log line, exit code).
    pub outcome: String,
}

/// The summary file every case appends to.
pub fn summary_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TCPULSE_CHAOS_SUMMARY") {
        return Ok(PathBuf::from(p));
    }
    Ok(crate::python::target_dir()?.join("chaos-summary.jsonl"))
}

/// Appends one row to the summary file.
pub fn record(row: &Row) -> Result<()> {
    let path = summary_path()?;
    let mut line = serde_json::to_string(row)?;
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    f.write_all(line.as_bytes())
        .with_context(|| format!("append to {}", path.display()))?;
    Ok(())
}

/// Reads every row recorded so far (lines that do not parse are skipped).
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The rows as one plain-text table, with a totals line.
pub fn table(rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| r.fault.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "{:<width$}  {:>8}  {:>8}  {:>6}  {:>6}  {:>8}  outcome\n",
        "fault", "sent", "stored", "lost", "dup", "counted"
    );
    let mut total = Row::default();
    for r in rows {
        out.push_str(&format!(
            "{:<width$}  {:>8}  {:>8}  {:>6}  {:>6}  {:>8}  {}\n",
            r.fault,
            r.events_sent,
            r.points_stored,
            r.lost,
            r.duplicated,
            r.counted_dropped,
            r.outcome
        ));
        total.events_sent += r.events_sent;
        total.points_stored += r.points_stored;
        total.lost += r.lost;
        total.duplicated += r.duplicated;
        total.counted_dropped += r.counted_dropped;
    }
    out.push_str(&format!(
        "{:<width$}  {:>8}  {:>8}  {:>6}  {:>6}  {:>8}  {} faults tried\n",
        "total",
        total.events_sent,
        total.points_stored,
        total.lost,
        total.duplicated,
        total.counted_dropped,
        rows.len()
    ));
    out
}

/// A tmpfs mounted for one case (disk full); unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` (rounded up to 4 KiB pages by the kernel) on a new
    /// temporary directory. Needs root (CI and these machines run as root); fails with the
    /// reason otherwise.
    pub fn mount(bytes: u64) -> Result<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("tcpulse-tmpfs-")
            .tempdir()
            .context("temporary mount point")?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0755"))
            .arg("tcpulse-chaos")
            .arg(dir.path())
            .output()
            .context("run mount (the disk-full chaos cases need root and util-linux's mount)")?;
        if !out.status.success() {
            bail!(
                "mounting a {bytes}-byte tmpfs on {} failed ({}): {}; the disk-full cases need \
                 root (CI runs as root)",
                dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system: writes `path` until `ENOSPC`, returns the bytes written.
    pub fn fill(&self, name: &str) -> Result<u64> {
        let path = self.path().join(name);
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e).with_context(|| format!("fill {}", path.display())),
            }
        }
        // Fill the last partial page too.
        loop {
            match f.write(&[0u8; 512]) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(_) => break,
            }
        }
        Ok(written)
    }

    /// Frees what [`Tmpfs::fill`] wrote.
    pub fn free(&self, name: &str) -> Result<()> {
        let path = self.path().join(name);
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.dir.path();
        let ok = Command::new("umount")
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // A process still holding a file open: detach lazily so nothing stays mounted.
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_totals_every_column() {
        let rows = vec![
            Row {
                fault: "a".into(),
                events_sent: 10,
                points_stored: 9,
                lost: 0,
                duplicated: 0,
                counted_dropped: 1,
                outcome: "ok".into(),
            },
            Row {
                fault: "longer fault".into(),
                events_sent: 5,
                points_stored: 5,
                lost: 0,
                duplicated: 2,
                counted_dropped: 0,
                outcome: "ok".into(),
            },
        ];
        let t = table(&rows);
        let last = t.lines().last().unwrap_or_default();
        let cols: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(cols[..6], ["total", "15", "14", "0", "2", "1"]);
        assert!(last.ends_with("2 faults tried"));
    }
}
