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
fn cli_check_config_accepts_the_example_and_rejects_errors_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, tcpulse_collector::config::EXAMPLE_CONFIG).unwrap();
    let out = bin()
        .args(["check-config", "--config", good.to_str().unwrap()])
        .env(
            "TCPULSE_EVENTHUB_CONNECTION_STRING",
            "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=q3Jm0F9vNwX2bC8dE1fG4hI7jK0lM3nO6pQ9rS2tU5v=;EntityPath=h",
        )
        .env_remove("TCPULSE_INFLUXDB_URL")
        .env_remove("TCPULSE_INFLUXDB_TOKEN")
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
    assert_eq!(out.status.code(), Some(78));
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
    assert_eq!(out.status.code(), Some(78));
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

/// A config file, its environment, and the text the refusal must contain.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);

/// r12 (9b): `check-config` validates every secret's presence and shape without connecting:
/// a garbage or keyless connection string, a missing hub, a v2 token with a pasted `Token `
/// prefix, a v1 username without a password are refused (exit 78, one line naming the
/// setting, never the secret); a missing v2 token is a note (VictoriaMetrics needs none).
#[test]
fn r12_collector_check_config_refuses_unusable_secrets() {
    const KEY: &str = "q3Jm0F9vNwX2bC8dE1fG4hI7jK0lM3nO6pQ9rS2tU5v=";
    let good_cs = format!("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey={KEY};EntityPath=tc");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let v2 = write("v2.toml", tcpulse_collector::config::EXAMPLE_CONFIG);
    let v1 = write(
        "v1.toml",
        "[source.eventhub]\n[sinks.influxdb_v1]\nurl = \"http://127.0.0.1:8086\"\ndatabase = \"tcpulse\"\nusername = \"tcpulse\"\n",
    );
    let check = |config: &str, env: &[(&str, &str)]| {
        let mut cmd = bin();
        cmd.args(["check-config", "--config", config]);
        for var in [
            "TCPULSE_EVENTHUB_CONNECTION_STRING",
            "TCPULSE_INFLUXDB_TOKEN",
            "TCPULSE_INFLUXDB_PASSWORD",
            "TCPULSE_INFLUXDB_URL",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        let out = cmd.output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), said)
    };
    let cs = "TCPULSE_EVENTHUB_CONNECTION_STRING";
    let refused: Vec<Case> = vec![
        (&v2, vec![(cs, "garbage".into())], "part 1 has no '='"),
        (
            &v2,
            vec![(cs, "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;EntityPath=tc".into())],
            "has SharedAccessKeyName but not SharedAccessKey",
        ),
        (
            &v2,
            vec![(cs, good_cs.replace(KEY, "TOPSECRET\"quoted\""))],
            "SharedAccessKey is not a key",
        ),
        (
            &v2,
            vec![(cs, good_cs.replace(";EntityPath=tc", ""))],
            "no event hub: add EntityPath=<hub> to the connection string or set `source.eventhub.event_hub`",
        ),
        (
            &v2,
            vec![(cs, good_cs.clone()), ("TCPULSE_INFLUXDB_TOKEN", "Token TOPSECRET".into())],
            "config field `sinks.influxdb_v2`: the token from environment variable TCPULSE_INFLUXDB_TOKEN contains whitespace",
        ),
        (
            &v1,
            vec![(cs, good_cs.clone())],
            "config field `sinks.influxdb_v1`: username \"tcpulse\" is set but there is no password: export TCPULSE_INFLUXDB_PASSWORD",
        ),
        (
            &v1,
            vec![(cs, good_cs.clone()), ("TCPULSE_INFLUXDB_PASSWORD", "<password>".into())],
            "the password from environment variable TCPULSE_INFLUXDB_PASSWORD still holds the example placeholder",
        ),
    ];
    for (config, env, needle) in &refused {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, said) = check(config, &env);
        assert_eq!(code, Some(78), "{needle}: {said}");
        assert!(
            said.starts_with("tcpulse-collector: ") && said.contains(needle),
            "{needle}: {said}"
        );
        assert_eq!(said.lines().count(), 1, "one line: {said}");
        assert!(!said.contains("TOPSECRET") && !said.contains(KEY), "{said}");
    }
    let (code, said) = check(&v2, &[(cs, &good_cs)]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("note: no InfluxDB token in $TCPULSE_INFLUXDB_TOKEN")
            && said.contains("config OK"),
        "{said}"
    );
    let (code, said) = check(
        &v1,
        &[(cs, &good_cs), ("TCPULSE_INFLUXDB_PASSWORD", "s3cret-pw")],
    );
    assert_eq!(code, Some(0), "{said}");
    assert!(
        !said.contains("s3cret-pw") && !said.contains("note:"),
        "{said}"
    );
}

/// #13: a configured secret file wins over the secret's environment variable, with one WARN
/// per secret naming both (never the value): the connection string and the v2 token here,
/// each with a usable file and an unusable variable.
#[test]
fn collector_config_secret_files_win_over_the_variables_with_one_warn_each() {
    const KEY: &str = "q3Jm0F9vNwX2bC8dE1fG4hI7jK0lM3nO6pQ9rS2tU5v=";
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let cs_file = write(
        "cs.txt",
        &format!("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey={KEY};EntityPath=tc\n"),
    );
    let token_file = write("token.txt", "tok-from-file\n");
    let config = write(
        "c.toml",
        &format!(
            "[source.eventhub]\nconnection_string_file = {cs_file:?}\n[sinks.influxdb_v2]\nurl = \"http://127.0.0.1:8086\"\norg = \"o\"\nbucket = \"b\"\ntoken_file = {token_file:?}\n"
        ),
    );
    let out = bin()
        .args(["check-config", "--config", &config])
        .env("TCPULSE_EVENTHUB_CONNECTION_STRING", "garbage-from-env")
        .env("TCPULSE_INFLUXDB_TOKEN", "Token with-space-from-env")
        .env_remove("TCPULSE_INFLUXDB_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the files are used: {stdout}{stderr}"
    );
    let warns: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warns.len(), 2, "one WARN per secret: {stderr}");
    for (file, var) in [
        (&cs_file, "TCPULSE_EVENTHUB_CONNECTION_STRING"),
        (&token_file, "TCPULSE_INFLUXDB_TOKEN"),
    ] {
        assert!(
            warns.iter().any(|w| w.contains(file.as_str())
                && w.contains(var)
                && w.contains("using the file")),
            "{var}: {stderr}"
        );
    }
    for value in [
        "garbage-from-env",
        "with-space-from-env",
        "tok-from-file",
        KEY,
    ] {
        assert!(
            !stderr.contains(value) && !stdout.contains(value),
            "{value}: {stderr}"
        );
    }
}

/// Runs the collector over a one-event file source with stderr going to a file; returns
/// the exit code and what it logged.
fn logged_run(extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, fixture("valid_full.json")).unwrap();
    let log_path = dir.path().join("stderr.log");
    let status = bin()
        .arg("run")
        .args(["--source-file", events.to_str().unwrap()])
        .args(["--points-file", dir.path().join("p.lp").to_str().unwrap()])
        .args(["--checkpoint-dir", dir.path().join("cp").to_str().unwrap()])
        .args([
            "--dead-letter-path",
            dir.path().join("dl").to_str().unwrap(),
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("TCPULSE_LOG_FORMAT")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .status()
        .unwrap();
    (status.code(), std::fs::read_to_string(&log_path).unwrap())
}

#[test]
fn cli_log_to_a_file_has_no_ansi_escapes() {
    let (code, log) = logged_run(&[]);
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.trim().is_empty(), "the collector logged nothing");
    assert!(!log.contains("\x1b["), "ANSI escape in:\n{log}");
}

#[test]
fn cli_log_format_json_gives_one_object_per_line_with_utc_timestamps() {
    let (code, log) = logged_run(&["--log-format", "json"]);
    assert_eq!(code, Some(0), "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the collector logged nothing");
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
fn cli_bad_run_config_exits_78_and_usage_errors_stay_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[aggregate]\nrollup_intervall = \"10s\"\n").unwrap();
    let out = bin()
        .args(["run", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("rollup_intervall"), "{err}");
    let out = bin()
        .args(["run", "--log-format", "yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

/// #13: `tcpulse-collector config` prints the reference config, which parses to the
/// defaults; `--help` names the subcommand and the secrets rule.
#[test]
fn cli_config_prints_the_reference_which_parses_to_the_defaults() {
    let out = bin().arg("config").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed =
        tcpulse_collector::config::Config::from_toml(&text, std::path::Path::new("reference.toml"))
            .unwrap();
    assert_eq!(parsed, tcpulse_collector::config::Config::default());
    assert!(text.contains("# [source.eventhub]"), "{text}");
    let help = bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("config ") && help.contains("reference config"),
        "{help}"
    );
    assert!(help.contains("secret file"), "{help}");
}

/// #14: the demo moved to the `tcpulse-demo` crate. `tcpulse-collector demo`, with or without
/// the old flags (`--help` included), says in one line on stderr how to run it now, starts
/// nothing and exits 2; `--help` no longer lists it.
#[test]
fn cli_demo_says_where_the_demo_moved_and_exits_2() {
    for argv in [
        &["demo"][..],
        &["demo", "--duration", "25s", "--dir", "/nonexistent/x"],
        &["demo", "--help"],
        &["demo", "--no-such-flag", "value"],
    ] {
        let out = bin().args(argv).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {err}");
        assert!(out.stdout.is_empty(), "{argv:?}: nothing on stdout");
        assert_eq!(err.lines().count(), 1, "{argv:?}: one line: {err}");
        assert!(
            err.starts_with("tcpulse-collector: the demo moved to its own binary: run `cargo run --release -p tcpulse-demo` (or `tcpulse-demo` if installed)"),
            "{argv:?}: {err}"
        );
    }
    let help = bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        !help.lines().any(|l| l.trim_start().starts_with("demo")),
        "{help}"
    );
}
