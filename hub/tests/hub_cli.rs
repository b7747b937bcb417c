//! The built `tcpulse-hub`: logs without colour codes when stderr is a file, JSON lines with
//! UTC timestamps under `--log-format json`, and exit 78 for a configuration error.

#![allow(clippy::unwrap_used)] // a test binary: a failed step is a failed test

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

const HUB: &str = env!("CARGO_BIN_EXE_tcpulse-hub");

/// Starts the hub on a free port with stderr going to a file, waits for its ready line,
/// stops it and returns what it logged.
fn log_of_one_start(extra: &[&str]) -> String {
    start_once(extra, None).1
}

/// Like [`log_of_one_start`] with `TCPULSE_HUB_POLICIES` set to `policies`; returns the
/// ready line too.
fn start_once(extra: &[&str], policies: Option<&str>) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(HUB)
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(dir.path().join("tls"))
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("TCPULSE_LOG_FORMAT")
        .env_remove("TCPULSE_HUB_POLICIES")
        .envs(policies.map(|p| ("TCPULSE_HUB_POLICIES", p)))
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with('{'), "ready line: {ready:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    (ready, std::fs::read_to_string(&log_path).unwrap())
}

#[test]
fn hub_log_to_a_file_has_no_ansi_escapes() {
    let log = log_of_one_start(&[]);
    assert!(!log.trim().is_empty(), "the hub logged nothing");
    assert!(!log.contains("\x1b["), "ANSI escape in:\n{log}");
}

#[test]
fn hub_log_format_json_gives_one_object_per_line_with_utc_timestamps() {
    let log = log_of_one_start(&["--log-format", "json"]);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the hub logged nothing");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let ts = v["timestamp"].as_str().unwrap_or_default();
        assert!(
            ts.ends_with('Z') && ts.contains('T'),
            "timestamp {ts:?} in {line}"
        );
    }
}

#[test]
fn hub_bad_policies_exit_78_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(HUB)
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(dir.path())
        .env("TCPULSE_HUB_POLICIES", "not-a-policy")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("policies"), "{err}");
}

/// An unreadable or wrong Entra ID file, given by flag or by its variable, is a configuration
/// error naming the flag and the file.
#[test]
fn hub_bad_entra_files_exit_78_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("jwks.json");
    std::fs::write(&junk, "{\"keys\": []}").unwrap();
    let by_flag = Command::new(HUB)
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(dir.path().join("tls"))
        .arg("--entra-jwks-file")
        .arg(&junk)
        .output()
        .unwrap();
    let by_env = Command::new(HUB)
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(dir.path().join("tls"))
        .env("TCPULSE_HUB_ENTRA_JWKS_FILE", &junk)
        .output()
        .unwrap();
    for out in [by_flag, by_env] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(
            err.contains("--entra-jwks-file") && err.contains("no RSA signing key"),
            "{err}"
        );
    }
    // A good key (PEM, PKCS#1) and a role table with an unknown role.
    use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
    use base64::Engine as _;
    let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(
        &pem,
        format!(
            "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(key.public_key().as_ref())
        ),
    )
    .unwrap();
    let roles = dir.path().join("roles");
    std::fs::write(&roles, "someone:Contributor").unwrap();
    let out = Command::new(HUB)
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(dir.path().join("tls"))
        .arg("--entra-jwks-file")
        .arg(&pem)
        .arg("--entra-role-assignments")
        .arg(&roles)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("--entra-role-assignments") && err.contains("unknown role 'Contributor'"),
        "{err}"
    );
}

#[test]
fn hub_unknown_flag_is_clap_usage_exit_2() {
    let out = Command::new(HUB).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// #13: the secrets rule, as in the agent and the collector: `--policies-file` wins over
/// `TCPULSE_HUB_POLICIES`, with one WARN naming both and neither key; `--help` states it.
#[test]
fn hub_policies_file_wins_over_the_variable_with_one_warn() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies");
    std::fs::write(&file, "fromfile:Send:filekey1\nfromfile2:Listen:filekey2\n").unwrap();
    let (ready, log) = start_once(
        &["--policies-file", file.to_str().unwrap()],
        Some("fromenv:Send:envkey"),
    );
    assert!(
        ready.contains("fromfile") && ready.contains("fromfile2") && !ready.contains("fromenv"),
        "the file's policies are used: {ready}"
    );
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warns.len(), 1, "one WARN:\n{log}");
    let warn = warns[0];
    assert!(
        warn.contains("TCPULSE_HUB_POLICIES") && warn.contains(file.to_str().unwrap()),
        "{warn}"
    );
    assert!(!log.contains("filekey") && !log.contains("envkey"), "{log}");
    let help = Command::new(HUB).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("secret file") && help.contains("Exit status"),
        "{help}"
    );
}
