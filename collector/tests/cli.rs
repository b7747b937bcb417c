//! The `tcpulse-collector` binary: `check-config` and a `run` over a file source into a
//! line-protocol file (no store, no network beyond the loopback metrics listener).

#![allow(clippy::unwrap_used)] // a test binary: a failed read is a failed test

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tcpulse-collector"))
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../schema/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace('\n', "")
}

#[test]
fn cli_check_config_accepts_the_example_and_rejects_errors_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, tcpulse_collector::config::EXAMPLE_CONFIG).unwrap();
    let out = bin()
        .args(["check-config", "--config", good.to_str().unwrap()])
        .env(
            "TCPULSE_EVENTHUB_CONNECTION_STRING",
            "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=s;EntityPath=h",
        )
        .env_remove("TCPULSE_INFLUXDB_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "sink: influxdb_v2 https://influx.example.com:8086/api/v2/write?org=noc&bucket=tcpulse"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("SharedAccessKey"), "no secret printed");

    let out = bin()
        .args(["check-config", "--config", good.to_str().unwrap()])
        .env_remove("TCPULSE_EVENTHUB_CONNECTION_STRING")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("tcpulse-collector: "), "{stderr}");
    assert!(
        stderr.contains("export TCPULSE_EVENTHUB_CONNECTION_STRING"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "printed once: {stderr}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[aggregate]\nrollup_intervall = \"10s\"\n").unwrap();
    let out = bin()
        .args(["check-config", "-c", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `rollup_intervall`"));
}

#[test]
fn cli_run_reads_a_file_source_writes_points_and_dead_letters_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let lines = [
        fixture("valid_full.json"),
        fixture("invalid_json.json"),
        fixture("valid_minimal.json"),
        fixture("valid_full.json"),
    ];
    std::fs::write(&events, lines.join("\n")).unwrap();
    let points = dir.path().join("points.lp");
    let out = bin()
        .args([
            "run",
            "--source-file",
            events.to_str().unwrap(),
            "--points-file",
            points.to_str().unwrap(),
        ])
        .args(["--checkpoint-dir", dir.path().join("cp").to_str().unwrap()])
        .args([
            "--dead-letter-path",
            dir.path().join("dl.jsonl").to_str().unwrap(),
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&points).unwrap();
    let instance_lines: Vec<&str> = written
        .lines()
        .filter(|l| l.starts_with("tc_instance,"))
        .collect();
    assert_eq!(
        instance_lines.len(),
        2,
        "two valid events, the repeat dropped: {written}"
    );
    assert!(written.lines().any(|l| l.starts_with("tc_pipeline,collector=tcpulse-collector,partition=0 dead_letters=1i,duplicates=1i,events=2i")), "{written}");
    let dl = std::fs::read_to_string(dir.path().join("dl.jsonl")).unwrap();
    assert!(dl.contains("\"kind\":\"invalid_json\""), "{dl}");
    let cp = std::fs::read_to_string(dir.path().join("cp/file/events/$default/checkpoint/0.json"))
        .unwrap();
    assert!(cp.contains("\"sequence_number\":3"), "{cp}");
}
