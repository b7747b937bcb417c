//! The built binary: bad configs give one clear line and exit 78; a real run with a file
//! source and the file publisher reports, and stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures

use std::path::Path;
use std::process::{Command, Output};
#[cfg(unix)]
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tcpulse-agent");

fn agent(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("TCPULSE_EVENTHUB_CONNECTION_STRING")
        .env_remove("TCPULSE_CONFIG")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[identity]\nconnector = \"tc-eu.example.com\"\nregion = \"westeurope\"\nscaleset = \"tc-eu-vmss\"\ninstance = \"tc-eu-vmss_0\"\n\
             [spool]\ndir = {:?}\n{body}",
            dir.join("spool")
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn assert_one_line_exit_78(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("tcpulse-agent: ") && err.contains(needle),
        "{err}"
    );
}

#[test]
fn agent_config_missing_connection_string_is_one_line_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[source]\ntype = \"simulate\"\n");
    let out = agent(&["run", "--config", &cfg], dir.path());
    assert_one_line_exit_78(
        &out,
        "no Event Hubs connection string: set TCPULSE_EVENTHUB_CONNECTION_STRING",
    );
    let out = agent(&["check-config", "--config", &cfg], dir.path());
    assert_one_line_exit_78(&out, "TCPULSE_EVENTHUB_CONNECTION_STRING");
}

#[test]
fn agent_config_unknown_source_is_one_line_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[source]\ntype = \"carrier_pigeon\"\n");
    let out = agent(&["check-config", "--config", &cfg], dir.path());
    assert_one_line_exit_78(&out, "unknown variant `carrier_pigeon`");
    let cfg = write_config(dir.path(), "[publish]\nfile = \"out.jsonl\"\n");
    let out = agent(
        &[
            "check-config",
            "--config",
            &cfg,
            "--source",
            "smoke-signals",
        ],
        dir.path(),
    );
    assert_one_line_exit_78(&out, "unknown source type \"smoke-signals\"; expected one of command, file, http, pexip, simulate");
}

#[test]
fn agent_config_bad_duration_is_one_line_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[report]\ninterval = \"10 parsecs\"\n[source]\ntype = \"simulate\"\n",
    );
    let out = agent(&["run", "--config", &cfg], dir.path());
    assert_one_line_exit_78(&out, "interval = \"10 parsecs\"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 9") && err.contains("parsecs"), "{err}");
}

#[test]
fn agent_config_secret_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[source]\ntype = \"simulate\"\n");
    let secret = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=TOPSECRETKEY=;EntityPath=tc";
    let out = Command::new(BIN)
        .args(["check-config", "--config", &cfg])
        .env("TCPULSE_EVENTHUB_CONNECTION_STRING", secret)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(
            "connection string from environment variable TCPULSE_EVENTHUB_CONNECTION_STRING"
        ),
        "{all}"
    );
    assert!(!all.contains("TOPSECRETKEY"), "{all}");
    let help = agent(&["run", "--help"], dir.path());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--connection-string-file") && !help.contains("--connection-string <"),
        "{help}"
    );
    assert!(
        help.contains("--interval <DURATION>") && help.contains("Default: 10s"),
        "{help}"
    );
}

#[cfg(unix)]
#[test]
fn agent_run_reports_to_file_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("calls"),
        "{\"call_count\": 5, \"media_load\": 40}",
    )
    .unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[report]\ninterval = \"200ms\"\npoll_interval = \"100ms\"\n[source]\ntype = \"file\"\npath = {:?}\n[publish]\nfile = {:?}\n",
            dir.path().join("calls"),
            dir.path().join("out.jsonl")
        ),
    );
    let child = Command::new(BIN)
        .args(["run", "--config", &cfg])
        .env_remove("TCPULSE_EVENTHUB_CONNECTION_STRING")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() >= 4, "{} events", events.len());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["partition_key"], "tc-eu.example.com");
        let ev = tcpulse_schema::decode(e["event"].to_string().as_bytes()).unwrap();
        assert_eq!(
            (
                ev.seq,
                ev.calls.unwrap().call_count,
                ev.calls.unwrap().media_load
            ),
            (i as u64, 5, Some(40))
        );
        assert!(ev.health.mem_total_bytes.is_some());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tcpulse-agent stopped") && stderr.contains("spooled=0"),
        "{stderr}"
    );
}

/// r12 (9b): `check-config` refuses connection strings that cannot work — garbage, no key,
/// a key that is not base64, a placeholder, no hub — naming the part, never the key, exit 78
/// (as for every config error); a valid one passes, with a note for an unusual key length.
#[test]
fn r12_agent_check_config_refuses_unusable_connection_strings() {
    const KEY: &str = "q3Jm0F9vNwX2bC8dE1fG4hI7jK0lM3nO6pQ9rS2tU5v=";
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[source]\ntype = \"simulate\"\n");
    let ep = "Endpoint=sb://ns.servicebus.windows.net/";
    let check = |cs: &str, extra: &[&str]| {
        let mut args = vec!["check-config", "--config", &cfg];
        args.extend_from_slice(extra);
        Command::new(BIN)
            .args(&args)
            .current_dir(dir.path())
            .env("TCPULSE_EVENTHUB_CONNECTION_STRING", cs)
            .env_remove("TCPULSE_CONFIG")
            .env_remove("TCPULSE_EVENT_HUB")
            .output()
            .unwrap()
    };
    let refused = [
        ("garbage".to_owned(), "part 1 has no '='"),
        (
            "Endpoint=garbage;SharedAccessKeyName=send;SharedAccessKey=TOPSECRET".to_owned(),
            "Endpoint is not of the form sb://",
        ),
        (
            format!("{ep};SharedAccessKeyName=send;EntityPath=tc"),
            "has SharedAccessKeyName but not SharedAccessKey",
        ),
        (format!("{ep};EntityPath=tc"), "has no credential"),
        (
            format!("{ep};SharedAccessKeyName=send;SharedAccessKey=TOPSECRET key!;EntityPath=tc"),
            "SharedAccessKey is not a key",
        ),
        (
            format!("{ep};SharedAccessKeyName=send;SharedAccessKey=<key>;EntityPath=tc"),
            "SharedAccessKey is an example placeholder",
        ),
        (
            format!("{ep};SharedAccessKeyName=send;SharedAccessKey={KEY}"),
            "no event hub: add EntityPath=<hub> to the connection string or set publish.event_hub",
        ),
    ];
    for (cs, needle) in &refused {
        let out = check(cs, &[]);
        assert_one_line_exit_78(&out, needle);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            all.contains(
                "connection string from environment variable TCPULSE_EVENTHUB_CONNECTION_STRING"
            ),
            "names the origin: {all}"
        );
        assert!(!all.contains("TOPSECRET") && !all.contains(KEY), "{all}");
    }
    // The hub may come from the configuration instead of EntityPath.
    let out = check(
        &format!("{ep};SharedAccessKeyName=send;SharedAccessKey={KEY}"),
        &["--event-hub", "tc"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("config OK") && !stdout.contains("note:"),
        "{stdout}"
    );
    // An unusual key length is allowed, with a note.
    let out = check(
        &format!(
            "{ep};SharedAccessKeyName=send;SharedAccessKey={};EntityPath=tc",
            &KEY[..30]
        ),
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout
            .contains("note: SharedAccessKey has 30 characters where keys Azure generates have 44"),
        "{stdout}"
    );
}

/// Runs the agent (file source, file publisher) with stderr going to a file until it has
/// logged a report, stops it with SIGTERM and returns the exit code and the log.
#[cfg(unix)]
fn logged_run(extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("calls"), "{\"call_count\": 1}").unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[report]\ninterval = \"200ms\"\npoll_interval = \"100ms\"\n[source]\ntype = \"file\"\npath = {:?}\n[publish]\nfile = {:?}\n",
            dir.path().join("calls"),
            dir.path().join("out.jsonl")
        ),
    );
    let log_path = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["run", "--config", &cfg])
        .args(extra)
        .env_remove("TCPULSE_EVENTHUB_CONNECTION_STRING")
        .env_remove("TCPULSE_LOG")
        .env_remove("TCPULSE_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let out = dir.path().join("out.jsonl");
    for _ in 0..200 {
        if std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() >= 2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    (status.code(), std::fs::read_to_string(&log_path).unwrap())
}

#[cfg(unix)]
#[test]
fn agent_log_to_a_file_has_no_ansi_escapes() {
    let (code, log) = logged_run(&[]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("tcpulse-agent stopped"), "{log}");
    assert!(!log.contains("\x1b["), "ANSI escape in:\n{log}");
}

#[cfg(unix)]
#[test]
fn agent_log_format_json_gives_one_object_per_line_with_utc_timestamps() {
    let (code, log) = logged_run(&["--log-format", "json"]);
    assert_eq!(code, Some(0), "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "too little logged: {log}");
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
fn agent_bad_log_level_exits_78_and_usage_errors_stay_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[source]\ntype = \"simulate\"\n[publish]\nfile = \"/dev/null\"\n",
    );
    let out = agent(
        &["run", "--config", &cfg, "--log-level", "info,=[bad"],
        dir.path(),
    );
    assert_one_line_exit_78(&out, "log level");
    let out = agent(
        &["run", "--config", &cfg, "--log-format", "yaml"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

/// #13: a configured secret file wins over the secret's environment variable, and the
/// agent logs one WARN naming both (never the value).
#[test]
fn agent_config_secret_file_wins_over_the_variable_with_one_warn() {
    const KEY: &str = "q3Jm0F9vNwX2bC8dE1fG4hI7jK0lM3nO6pQ9rS2tU5v=";
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[source]\ntype = \"simulate\"\n");
    let cs_file = dir.path().join("cs.txt");
    std::fs::write(
        &cs_file,
        format!("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={KEY};EntityPath=tc\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config", &cfg])
        .current_dir(dir.path())
        .env("TCPULSE_EVENTHUB_CONNECTION_STRING", "garbage-from-env")
        .env("TCPULSE_EVENTHUB_CONNECTION_STRING_FILE", &cs_file)
        .env_remove("TCPULSE_CONFIG")
        .env_remove("TCPULSE_LOG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the file is used: {stdout}{stderr}"
    );
    let file = cs_file.display().to_string();
    assert!(
        stdout.contains(&format!("connection string from file {file}")),
        "{stdout}"
    );
    let warns: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warns.len(), 1, "one WARN: {stderr}");
    assert!(
        warns[0].contains(&file)
            && warns[0].contains("TCPULSE_EVENTHUB_CONNECTION_STRING")
            && warns[0].contains("using the file"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("garbage-from-env") && !stderr.contains(KEY),
        "{stderr}"
    );
}

/// #13: `tcpulse-agent config` prints the reference config, which parses to the defaults;
/// `--help` names the subcommand and the secrets rule.
#[test]
fn agent_config_prints_the_reference_which_parses_to_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&["config"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed = tcpulse_agent::config::parse_file(Path::new("reference.toml"), &text).unwrap();
    assert_eq!(parsed, tcpulse_agent::config::FileConfig::defaults());
    assert!(text.contains("# [source]\n# type = \"simulate\""), "{text}");
    let help = agent(&["--help"], dir.path());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("config ") && help.contains("reference config"),
        "{help}"
    );
    assert!(help.contains("secret file"), "{help}");
}
