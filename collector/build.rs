//! Stamps the git commit the collector is built from into `TCPULSE_GIT_COMMIT`, read by
//! `tcpulse_build_info{version,commit}` on `/metrics`.
//!
//! The commit is, in order: `$TCPULSE_GIT_COMMIT` when set and not empty (a build without
//! `.git`, such as the container image, passes it in); else `git rev-parse --short=12 HEAD`
//! in this crate's directory; else `unknown` (no git, or not a checkout: a crate tarball).
//! Cargo reruns this script when HEAD moves: it watches HEAD, the branch ref HEAD points to
//! and `packed-refs`, whichever exist (a missing path would make it rerun on every build).

use std::path::{Path, PathBuf};
use std::process::Command;

const ENV: &str = "TCPULSE_GIT_COMMIT";

fn main() {
    println!("cargo:rerun-if-env-changed={ENV}");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match std::env::var(ENV) {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            watch_head(&dir);
            git(&dir, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env={ENV}={commit}");
}

/// `git <args>` in `dir`: its trimmed stdout, or `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// Asks cargo to rerun when HEAD, its branch ref or `packed-refs` changes. Paths come from
/// `git rev-parse --git-path`, so linked worktrees (per-worktree HEAD, shared refs) work.
fn watch_head(dir: &Path) {
    let mut files = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    // Detached HEAD: HEAD itself holds the commit.
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        files.push(branch);
    }
    for name in files {
        let Some(path) = git(dir, &["rev-parse", "--git-path", &name]) else {
            continue;
        };
        let path = dir.join(path);
        if path.is_file() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
