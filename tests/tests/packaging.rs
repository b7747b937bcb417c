//! Tests for `packaging/`: the systemd units (`systemd-analyze verify`, with a broken copy
//! proving the verifier bites), the example configs against the real binaries'
//! `check-config`, the compose file and Dockerfile (parsed, cross-checked against the
//! binaries, the hub and the files they reference; Docker itself does not run here), and
//! the Debian packages (`packaging/debian/build-debs.sh`, which runs `cargo deb`, then
//! `dpkg-deb --info`/`--contents`, `dpkg -x` into a temporary root and the extracted
//! binaries, reference config and unit checked from there).
//!
//! Cost: `packaging_debian_packages_build_install_and_run` builds both binaries in the
//! release profile (as `cargo deb` does): about 4-5 minutes per package on 2 cores from
//! a cold cache, seconds when target/release is warm. It is the only test that runs
//! `cargo deb`, so no two release builds of these tests run at once.
//!
//! Tools: `systemd-analyze` (Debian `systemd`), `dpkg-deb` (`dpkg`), `docker-compose`
//! (Debian `docker-compose`, used offline to validate the compose schema) and `cargo-deb`
//! (`cargo install --locked cargo-deb`). A missing tool fails the test with its install
//! command.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use tcpulse_tests::process::workspace_binary;
use tcpulse_tests::services;

const UNITS: [&str; 2] = ["tcpulse-agent", "tcpulse-collector"];

/// Hardening every unit must keep (key, value); `systemd-analyze verify` checks syntax,
/// this checks intent.
const HARDENING: &[(&str, &str)] = &[
    ("DynamicUser", "yes"),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("SystemCallFilter", "@system-service"),
    ("MemoryDenyWriteExecute", "yes"),
    ("LockPersonality", "yes"),
    ("Restart", "on-failure"),
    ("KillSignal", "SIGTERM"),
];

/// Highest `systemd-analyze security --offline` exposure accepted (0 = locked down, 10 =
/// unprotected; both units score 1.4-1.5 today).
const MAX_EXPOSURE: f64 = 2.0;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn packaging() -> PathBuf {
    root().join("packaging")
}

fn tool(name: &str, install: &str) -> Result<PathBuf> {
    services::binary(name, install).map_err(|_| anyhow!("`{name}` not found: {install}"))
}

fn systemd_analyze() -> Result<PathBuf> {
    tool("systemd-analyze", "apt-get install -y systemd")
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    Ok(out)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// `key=value` settings of a unit file's section (repeated keys keep every value).
fn unit_settings(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            current = line.trim_matches(['[', ']']).to_owned();
        } else if current == section {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
    }
    out
}

/// Runs `systemd-analyze verify` on `unit`. systemd reports unknown keys and unparsable
/// values on stderr but still exits 0 ("…, ignoring"), so any output is a failure too.
fn verify_unit(unit: &Path) -> Result<()> {
    let dir = unit.parent().context("unit has a directory")?;
    let name = unit.file_name().context("unit has a name")?;
    let out = run(Command::new(systemd_analyze()?)
        .arg("verify")
        .arg(Path::new(".").join(name))
        .current_dir(dir)
        .env("SYSTEMD_LOG_COLOR", "0"))?;
    let said = text(&out);
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {} ({}): {said}",
        unit.display(),
        out.status
    );
    Ok(())
}

/// Copies `unit_text` into `dir/name` with ExecStart pointing at `binary` instead of the
/// packaged `/usr/bin/…` path (the verifier checks that the command is executable, and the
/// tests must check the binary they built, not whatever an earlier install left there).
fn place_unit(dir: &Path, name: &str, unit_text: &str, binary: &Path) -> Result<PathBuf> {
    let packaged = format!("ExecStart=/usr/bin/{} ", name.trim_end_matches(".service"));
    ensure!(
        unit_text.contains(&packaged),
        "{name}: ExecStart does not start {packaged}"
    );
    let pre = format!(
        "ExecStartPre=/usr/bin/{} ",
        name.trim_end_matches(".service")
    );
    let text = unit_text
        .replace(&packaged, &format!("ExecStart={} ", binary.display()))
        .replace(&pre, &format!("ExecStartPre={} ", binary.display()));
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn exposure(unit: &Path) -> Result<f64> {
    let out = run(Command::new(systemd_analyze()?)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .env("SYSTEMD_LOG_COLOR", "0"))?;
    let said = text(&out);
    let line = said
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .ok_or_else(|| anyhow!("no exposure level in: {said}"))?;
    let value = line
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("unparsable exposure line: {line}"))?;
    Ok(value)
}

#[test]
fn packaging_systemd_units_pass_systemd_analyze_verify() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    for name in UNITS {
        let source = packaging().join(format!("systemd/{name}.service"));
        let unit_text = read(&source)?;
        let binary = workspace_binary(name)?;

        // Intent: the hardening and the stop behaviour are all there.
        let settings = unit_settings(&unit_text, "Service");
        for (key, want) in HARDENING {
            ensure!(
                settings.iter().any(|(k, v)| k == key && v == want),
                "{name}: missing `{key}={want}`"
            );
        }
        // A bad config fails check-config with 78 and is not restarted in a loop.
        let start = settings
            .iter()
            .find(|(k, _)| k == "ExecStart")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let check = start.replacen(" run ", " check-config ", 1);
        ensure!(
            settings
                .iter()
                .any(|(k, v)| k == "ExecStartPre" && *v == check),
            "{name}: missing `ExecStartPre={check}`"
        );
        ensure!(
            settings
                .iter()
                .any(|(k, v)| k == "RestartPreventExitStatus" && v == "78"),
            "{name}: missing `RestartPreventExitStatus=78`"
        );
        for key in ["StateDirectory", "ConfigurationDirectory", "TimeoutStopSec"] {
            ensure!(
                settings.iter().any(|(k, _)| k == key),
                "{name}: missing {key}="
            );
        }
        let env_file = format!("-/etc/tcpulse/{}.env", name.trim_start_matches("tcpulse-"));
        ensure!(
            settings
                .iter()
                .any(|(k, v)| k == "EnvironmentFile" && *v == env_file),
            "{name}: secrets come from EnvironmentFile={env_file}"
        );
        ensure!(
            !unit_text.contains("SharedAccessKey="),
            "{name}: no secret in the unit"
        );

        // The unit as shipped.
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let unit = place_unit(&dir, &format!("{name}.service"), &unit_text, &binary)?;
        verify_unit(&unit)?;
        let score = exposure(&unit)?;
        ensure!(
            score <= MAX_EXPOSURE,
            "{name}: exposure {score} > {MAX_EXPOSURE}"
        );
        eprintln!("{name}: systemd-analyze verify clean, security exposure {score}");

        // With the credentials drop-in the packages ship as an example (read from
        // <unit>.d/ beside the unit, as systemd does).
        let dropin_dir = dir.join(format!("{name}.service.d"));
        std::fs::create_dir_all(&dropin_dir)?;
        let dropin = read(&packaging().join(format!("systemd/{name}.credentials.conf")))?;
        ensure!(
            dropin.contains("LoadCredential="),
            "{name}: the credentials drop-in uses LoadCredential="
        );
        std::fs::write(dropin_dir.join("credentials.conf"), &dropin)?;
        verify_unit(&unit).context("with the credentials drop-in")?;

        // The verifier bites: a misspelt key (systemd ignores it and exits 0, we must not)…
        let broken = tmp.path().join(format!("broken-key-{name}"));
        std::fs::create_dir_all(&broken)?;
        let typo = unit_text.replacen("ProtectHome=yes", "ProtectHomme=yes", 1);
        ensure!(typo != unit_text, "the typo was applied");
        let unit = place_unit(&broken, &format!("{name}.service"), &typo, &binary)?;
        let err = verify_unit(&unit).expect_err("a misspelt key must fail verification");
        ensure!(
            format!("{err:#}").contains("ProtectHomme"),
            "unexpected: {err:#}"
        );
        // …an unparsable value…
        let bad_family = unit_text.replacen(
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "RestrictAddressFamilies=AF_INET AF_INTE6 AF_UNIX",
            1,
        );
        let unit = place_unit(&broken, &format!("{name}.service"), &bad_family, &binary)?;
        ensure!(
            verify_unit(&unit).is_err(),
            "an unknown address family must fail"
        );
        // …and a missing executable (non-zero exit).
        let missing = unit_text.replace("ExecStart=/usr/bin/", "ExecStart=/nonexistent/");
        let path = broken.join(format!("{name}.service"));
        std::fs::write(&path, missing)?;
        let err = verify_unit(&path).expect_err("a missing ExecStart binary must fail");
        ensure!(
            format!("{err:#}").contains("/nonexistent/"),
            "unexpected: {err:#}"
        );
    }
    Ok(())
}

/// `KEY=value` lines of an `*.env.example`, uncommented: what an operator fills in.
fn env_example(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for line in read(path)?.lines() {
        let line = line.trim().trim_start_matches('#');
        if let Some((k, v)) = line.split_once('=') {
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                vars.insert(k.to_owned(), fill_placeholders(v));
            }
        }
    }
    ensure!(!vars.is_empty(), "{}: no KEY=value lines", path.display());
    Ok(vars)
}

/// The example's placeholders filled in as an operator would: `<hub>` becomes `hub`
/// (check-config refuses a value that still holds a placeholder, issue 12).
fn fill_placeholders(v: &str) -> String {
    v.replace(['<', '>'], "")
}

/// Runs `binary check-config` with exactly `env` (plus PATH), optionally on `config`.
fn check_config(
    binary: &Path,
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Output> {
    let mut cmd = Command::new(binary);
    cmd.arg("check-config").env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.envs(env);
    run(&mut cmd)
}

fn expect_config_ok(
    binary: &Path,
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<String> {
    let out = check_config(binary, config, env)?;
    let said = text(&out);
    ensure!(
        out.status.success() && said.contains("config OK"),
        "{} check-config {config:?} with {:?}: {said}",
        binary.display(),
        env.keys().collect::<Vec<_>>()
    );
    for value in env.values().filter(|v| v.contains("SharedAccessKey=")) {
        ensure!(
            !said.contains(value.as_str()),
            "check-config printed a secret"
        );
    }
    Ok(said)
}

fn expect_config_err(
    binary: &Path,
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
    needle: &str,
) -> Result<()> {
    let out = check_config(binary, config, env)?;
    let said = text(&out);
    ensure!(
        out.status.code() == Some(78) && said.contains(needle),
        "{} check-config {config:?} without secrets should fail naming {needle}: {} {said}",
        binary.display(),
        out.status
    );
    Ok(())
}

#[test]
fn packaging_example_configs_pass_check_config() -> Result<()> {
    let config = packaging().join("config");
    let collector = workspace_binary("tcpulse-collector")?;
    let agent = workspace_binary("tcpulse-agent")?;
    let none = BTreeMap::new();

    // Linux packages: the TOML plus the env example filled in (systemd's EnvironmentFile).
    let env = env_example(&config.join("collector.env.example"))?;
    let said = expect_config_ok(&collector, Some(&config.join("collector.toml")), &env)?;
    for line in [
        "source: eventhub",
        "sink: influxdb_v2",
        "/var/lib/tcpulse-collector/checkpoints",
    ] {
        ensure!(
            said.contains(line),
            "collector summary lacks {line}: {said}"
        );
    }
    expect_config_err(
        &collector,
        Some(&config.join("collector.toml")),
        &none,
        "TCPULSE_EVENTHUB_CONNECTION_STRING",
    )?;

    let env = env_example(&config.join("agent.env.example"))?;
    let said = expect_config_ok(&agent, Some(&config.join("agent.toml")), &env)?;
    ensure!(
        said.contains("/var/lib/tcpulse-agent"),
        "agent spool is the unit's StateDirectory: {said}"
    );
    let mut only_cs = env.clone();
    only_cs.remove("TCPULSE_PEXIP_PASSWORD");
    expect_config_err(
        &agent,
        Some(&config.join("agent.toml")),
        &only_cs,
        "TCPULSE_PEXIP_PASSWORD",
    )?;
    expect_config_err(
        &agent,
        Some(&config.join("agent.toml")),
        &none,
        "TCPULSE_PEXIP_PASSWORD",
    )?;

    // Windows template (the installer stores the connection string in a file under
    // C:\ProgramData; a file named by the variable, which overrides the config file's
    // setting, stands in for it here).
    let win_dir = tempfile::tempdir()?;
    let win_cs = win_dir.path().join("eventhub-connection-string.txt");
    std::fs::write(
        &win_cs,
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=k;EntityPath=tcpulse\n",
    )?;
    let mut win_env = BTreeMap::new();
    win_env.insert(
        "TCPULSE_EVENTHUB_CONNECTION_STRING_FILE".to_owned(),
        win_cs.display().to_string(),
    );
    expect_config_ok(
        &agent,
        Some(&packaging().join("windows/agent.toml")),
        &win_env,
    )?;

    // Container image config with the compose file's collector environment, and the
    // agents' environment alone (they have no config file).
    let compose = compose()?;
    let collector_env = service_env(&compose, "collector")?;
    let said = expect_config_ok(
        &collector,
        Some(&packaging().join("container/collector.toml")),
        &collector_env,
    )?;
    ensure!(
        said.contains("sink: influxdb_v2 http://influxdb:8086"),
        "compose env makes the v2 sink: {said}"
    );
    for service in ["agent-blue", "agent-green"] {
        expect_config_ok(&agent, None, &service_env(&compose, service)?)
            .with_context(|| format!("compose service {service}"))?;
    }
    Ok(())
}

/// The compose file as JSON, with YAML merge keys (`<<: *anchor`) applied as compose does.
fn compose() -> Result<Value> {
    let path = packaging().join("compose/compose.yaml");
    let mut yaml: serde_norway::Value = serde_norway::from_str(&read(&path)?)
        .with_context(|| format!("parse {}", path.display()))?;
    yaml.apply_merge()
        .with_context(|| format!("merge keys in {}", path.display()))?;
    // Nested merges (an anchor that itself merges) need a second pass.
    yaml.apply_merge()?;
    serde_json::to_value(&yaml).context("compose as JSON")
}

/// Expands compose's `${VAR:-default}` with the defaults.
fn compose_defaults(s: &str) -> Result<String> {
    let re = regex::Regex::new(r"\$\{[A-Z0-9_]+:-([^}]*)\}")?;
    Ok(re.replace_all(s, "$1").into_owned())
}

fn service_env(compose: &Value, service: &str) -> Result<BTreeMap<String, String>> {
    let env = compose["services"][service]["environment"]
        .as_object()
        .ok_or_else(|| anyhow!("compose service {service} has no environment map"))?;
    env.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Ok((k.clone(), compose_defaults(&v)?))
        })
        .collect()
}

/// The string value of the first `key = "value"` line of a TOML file (enough for the
/// flat, one-occurrence keys checked here; `check-config` validates the file as a whole).
fn toml_string(path: &Path, key: &str) -> Result<String> {
    let re = regex::Regex::new(&format!(r#"(?m)^\s*{key}\s*=\s*"([^"]*)""#))?;
    let text = read(path)?;
    let caps = re
        .captures(&text)
        .ok_or_else(|| anyhow!("{}: no {key} = \"…\"", path.display()))?;
    Ok(caps[1].to_owned())
}

/// Stages (`FROM … AS name`) and the paths `COPY` takes from the build context.
struct Dockerfile {
    stages: Vec<String>,
    context_copies: Vec<String>,
    /// Instructions of the last stage, e.g. ("USER", "10001:10001").
    final_stage: Vec<(String, String)>,
}

fn parse_dockerfile(text: &str) -> Result<Dockerfile> {
    // Join continuation lines, drop comments.
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    ensure!(current.is_empty(), "Dockerfile ends inside a continuation");
    let mut df = Dockerfile {
        stages: Vec::new(),
        context_copies: Vec::new(),
        final_stage: Vec::new(),
    };
    let known = [
        "FROM",
        "ARG",
        "RUN",
        "COPY",
        "ADD",
        "WORKDIR",
        "ENV",
        "USER",
        "VOLUME",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
        "HEALTHCHECK",
        "STOPSIGNAL",
        "LABEL",
        "SHELL",
    ];
    for line in logical {
        let (instr, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instr = instr.to_ascii_uppercase();
        ensure!(
            known.contains(&instr.as_str()),
            "unknown Dockerfile instruction {instr}"
        );
        let args = args.trim().to_owned();
        if instr == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            match words.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    df.stages.push((*name).to_owned())
                }
                _ => bail!("every stage is named: FROM {args}"),
            }
            df.final_stage.clear();
            continue;
        }
        if instr == "COPY" && !args.contains("--from=") {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            ensure!(words.len() >= 2, "COPY {args}: source and destination");
            df.context_copies
                .extend(words[..words.len() - 1].iter().map(|s| (*s).to_owned()));
        }
        df.final_stage.push((instr, args));
    }
    Ok(df)
}

#[test]
fn packaging_compose_and_dockerfile_reference_existing_files() -> Result<()> {
    let compose_path = packaging().join("compose/compose.yaml");
    let compose_dir = compose_path.parent().context("compose dir")?;
    let compose = compose()?;

    // The compose schema, checked offline by docker-compose (no daemon needed for `config`).
    let dc = tool("docker-compose", "apt-get install -y docker-compose")?;
    let out = run(Command::new(dc)
        .args(["-f"])
        .arg(&compose_path)
        .args(["config", "-q"]))?;
    ensure!(
        out.status.success() && text(&out).trim().is_empty(),
        "docker-compose config: {}",
        text(&out)
    );

    let services = compose["services"]
        .as_object()
        .ok_or_else(|| anyhow!("compose has no services"))?;
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for want in [
        "hub",
        "agent-blue",
        "agent-green",
        "collector",
        "influxdb",
        "grafana",
    ] {
        ensure!(names.contains(want), "compose lacks service {want}");
    }

    // Every build points at an existing context, Dockerfile and stage.
    let mut dockerfiles = BTreeMap::new();
    for (name, service) in services {
        let Some(build) = service.get("build") else {
            continue;
        };
        let context = compose_dir.join(build["context"].as_str().context("build.context")?);
        ensure!(
            context.join("Cargo.toml").is_file(),
            "{name}: build context {} is not the repository root",
            context.display()
        );
        let dockerfile = context.join(build["dockerfile"].as_str().context("build.dockerfile")?);
        let parsed = match dockerfiles.get(&dockerfile) {
            Some(p) => p,
            None => {
                let df = parse_dockerfile(&read(&dockerfile)?)?;
                // Every COPY source exists in the context.
                for src in &df.context_copies {
                    ensure!(
                        context.join(src).exists(),
                        "Dockerfile COPY {src}: not in the build context"
                    );
                }
                dockerfiles.entry(dockerfile.clone()).or_insert(df)
            }
        };
        let target = build["target"].as_str().context("build.target")?;
        ensure!(
            parsed.stages.iter().any(|s| s == target),
            "{name}: target {target} is not a stage of {}",
            dockerfile.display()
        );
    }
    ensure!(!dockerfiles.is_empty(), "no service is built from the repo");

    // Bind mounts exist; Grafana gets the provisioning and the dashboards where the
    // provider looks for them.
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let spec = volume.as_str().context("short volume syntax")?;
            let source = spec.split(':').next().unwrap_or("");
            if source.starts_with('.') || source.starts_with('/') {
                ensure!(
                    compose_dir.join(source).exists(),
                    "{name}: mount source {source} does not exist"
                );
            }
        }
    }
    let provider = read(&root().join("dashboards/grafana/provisioning/dashboards/tcpulse.yaml"))?;
    let grafana_mounts: Vec<String> = services["grafana"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let dash_mount = grafana_mounts
        .iter()
        .find(|m| m.contains("dashboards/grafana/dashboards:"))
        .ok_or_else(|| anyhow!("grafana does not mount the dashboards"))?;
    let in_container = dash_mount.split(':').nth(1).unwrap_or("");
    ensure!(
        provider.contains(&format!("path: {in_container}")),
        "dashboards mounted at {in_container}, provider reads elsewhere"
    );
    ensure!(
        grafana_mounts
            .iter()
            .any(|m| m.contains("dashboards/grafana/provisioning:/etc/grafana/provisioning")),
        "grafana gets the provisioning"
    );
    // The data source's variables are all set.
    let datasource =
        read(&root().join("dashboards/grafana/provisioning/datasources/influxdb.yaml"))?;
    let grafana_env = service_env(&compose, "grafana")?;
    for var in regex::Regex::new(r"\$\{([A-Z_]+)\}")?
        .captures_iter(&datasource)
        .map(|c| c[1].to_owned())
    {
        ensure!(
            grafana_env.contains_key(&var),
            "grafana lacks {var} for the data source"
        );
    }

    // The collector image: non-root, health check on /healthz at the port it listens on.
    let df = parse_dockerfile(&read(&packaging().join("container/Dockerfile"))?)?;
    ensure!(
        df.stages.last().map(String::as_str) == Some("collector"),
        "the collector is the default (last) stage"
    );
    let user = df
        .final_stage
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone())
        .ok_or_else(|| anyhow!("collector stage sets no USER"))?;
    ensure!(
        !user.starts_with("root") && !user.starts_with("0"),
        "collector runs as root ({user})"
    );
    let health = df
        .final_stage
        .iter()
        .find(|(i, _)| i == "HEALTHCHECK")
        .map(|(_, a)| a.clone())
        .ok_or_else(|| anyhow!("collector stage has no HEALTHCHECK"))?;
    let listen = toml_string(&packaging().join("container/collector.toml"), "listen")?;
    let port = listen.rsplit(':').next().unwrap_or("");
    ensure!(
        health.contains(&format!(":{port}/healthz")),
        "HEALTHCHECK ({health}) does not ask /healthz on port {port}"
    );
    // The image exposes that port, compose publishes it on loopback, and the packaged
    // config listens where the collector does by default.
    ensure!(
        df.final_stage
            .iter()
            .any(|(i, a)| i == "EXPOSE" && a.split_whitespace().any(|p| p == port)),
        "collector stage does not EXPOSE {port}"
    );
    let published = compose["services"]["collector"]["ports"].to_string();
    ensure!(
        published.contains(&format!("\"127.0.0.1:{port}:{port}\"")),
        "compose publishes {published}, not 127.0.0.1:{port}:{port}"
    );
    let default = tcpulse_collector::config::HttpConfig::default().listen;
    ensure!(
        toml_string(&packaging().join("config/collector.toml"), "listen")? == default.to_string()
            && default.port().to_string() == port,
        "config/collector.toml, container/collector.toml and the default ({default}) disagree on the /metrics port"
    );

    // The hub service's command and policies, run for real on loopback.
    hub_accepts_compose_command(&compose)?;
    Ok(())
}

/// Starts the `tcpulse-hub` binary with the compose file's hub command (addresses moved to
/// 127.0.0.1:0) and environment, and checks the ready line: the hub, its partitions, the
/// consumer group the collector uses, and the policies the connection strings name.
fn hub_accepts_compose_command(compose: &Value) -> Result<()> {
    let hub = &compose["services"]["hub"];
    let args: Vec<String> = hub["command"]
        .as_array()
        .context("hub command is a list")?
        .iter()
        .map(|a| a.as_str().map(str::to_owned).context("string argument"))
        .collect::<Result<_>>()?;
    let data = tempfile::tempdir()?;
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with("0.0.0.0:") {
                "127.0.0.1:0".to_owned()
            } else if a == "/var/lib/tcpulse-hub" {
                data.path().display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let env = service_env(compose, "hub")?;
    let mut child = Command::new(tcpulse_tests::hub::hub_binary()?)
        .args(&args)
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start tcpulse-hub")?;
    let stdout = child.stdout.take().context("hub stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.context("tcpulse-hub printed no ready line within 30 s")?;
    let ready: Value = serde_json::from_str(&line).with_context(|| format!("ready line {line}"))?;
    ensure!(
        ready["hubs"][0]["name"] == "tcpulse" && ready["hubs"][0]["partitions"] == 4,
        "hub serves {}, want tcpulse with 4 partitions",
        ready["hubs"]
    );
    ensure!(
        ready["consumer_groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "collector")),
        "hub consumer groups {}, want collector",
        ready["consumer_groups"]
    );
    // The collector's consumer group (container config) is one the hub has.
    ensure!(
        toml_string(
            &packaging().join("container/collector.toml"),
            "consumer_group"
        )? == "collector",
        "container config consumer group"
    );
    // The policies in the agents' and collector's strings exist with the same keys.
    let strings = ready["connection_strings"].to_string();
    for service in ["agent-blue", "collector"] {
        let cs = &service_env(compose, service)?["TCPULSE_EVENTHUB_CONNECTION_STRING"];
        let key_part = cs
            .split(';')
            .filter(|p| p.starts_with("SharedAccessKeyName=") || p.starts_with("SharedAccessKey="))
            .collect::<Vec<_>>()
            .join(";");
        ensure!(
            strings.contains(&key_part),
            "{service}'s policy/key ({}) is not one the hub serves",
            key_part.split(';').next().unwrap_or("")
        );
    }
    Ok(())
}

// ---- Debian packages ----------------------------------------------------------------

fn dpkg_field(deb: &Path, field: &str) -> Result<String> {
    let out = run(Command::new("dpkg-deb").arg("--field").arg(deb).arg(field))?;
    ensure!(out.status.success(), "dpkg-deb --field: {}", text(&out));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `dpkg-deb --contents` as (path without the leading `.`, mode string, owner).
fn deb_contents(deb: &Path) -> Result<BTreeMap<String, (String, String)>> {
    let out = run(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    ensure!(out.status.success(), "dpkg-deb --contents: {}", text(&out));
    let mut files = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() >= 6 {
            let path = cols[5].trim_start_matches('.').to_owned();
            files.insert(path, (cols[0].to_owned(), cols[1].to_owned()));
        }
    }
    Ok(files)
}

fn control_file(deb: &Path, name: &str) -> Result<Option<String>> {
    let tmp = tempfile::tempdir()?;
    let out = run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(deb)
        .arg(tmp.path()))?;
    ensure!(out.status.success(), "dpkg-deb --control: {}", text(&out));
    let path = tmp.path().join(name);
    Ok(if path.is_file() {
        Some(read(&path)?)
    } else {
        None
    })
}

/// Builds `package` with `packaging/debian/build-debs.sh` (the release build, the
/// reference config asset, then `cargo deb --no-build`) into `out_dir`; returns the .deb
/// and the build time.
fn cargo_deb(package: &str, out_dir: &Path) -> Result<(PathBuf, Duration)> {
    let started = Instant::now();
    let mut cmd = Command::new(packaging().join("debian/build-debs.sh"));
    cmd.arg("--output")
        .arg(out_dir)
        .arg(package)
        .env("CARGO", env!("CARGO"))
        .current_dir(root());
    // The variables cargo sets for this test describe tcpulse-tests, not the package.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| {
            k.starts_with("CARGO_PKG_")
                || matches!(
                    k,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                )
        }) {
            cmd.env_remove(key);
        }
    }
    let out = run(&mut cmd)?;
    let took = started.elapsed();
    let said = text(&out);
    if said.contains("no such command") {
        bail!("cargo-deb is not installed: cargo install --locked cargo-deb");
    }
    ensure!(
        out.status.success(),
        "cargo deb -p {package} ({}): {said}",
        out.status
    );
    let deb = std::fs::read_dir(out_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| anyhow!("cargo deb printed success but no {package}_*.deb: {said}"))?;
    Ok((deb, took))
}

#[test]
fn packaging_debian_packages_build_install_and_run() -> Result<()> {
    tool("dpkg-deb", "apt-get install -y dpkg")?;
    let version = env!("CARGO_PKG_VERSION");
    let out_dir = tempfile::tempdir()?;
    let root_dir = tempfile::tempdir()?;
    let units = tempfile::tempdir()?;

    for package in ["tcpulse-collector", "tcpulse-agent"] {
        let short = package.trim_start_matches("tcpulse-");
        let (deb, took) = cargo_deb(package, out_dir.path())?;
        let size = std::fs::metadata(&deb)?.len();
        eprintln!(
            "{package}: cargo deb {:.0} s, {} ({size} bytes)",
            took.as_secs_f64(),
            deb.display()
        );

        // Control data.
        ensure!(dpkg_field(&deb, "Package")? == package);
        ensure!(dpkg_field(&deb, "Version")?.starts_with(version));
        let depends = dpkg_field(&deb, "Depends")?;
        ensure!(depends.contains("libc6"), "{package} Depends: {depends}");
        let conffiles = control_file(&deb, "conffiles")?.unwrap_or_default();
        for want in [
            format!("/etc/tcpulse/{short}.toml"),
            format!("/etc/tcpulse/{short}.env"),
        ] {
            ensure!(
                conffiles.lines().any(|l| l.trim() == want),
                "{package}: {want} is not a conffile: {conffiles}"
            );
        }
        for script in ["postinst", "prerm", "postrm"] {
            let body =
                control_file(&deb, script)?.ok_or_else(|| anyhow!("{package} has no {script}"))?;
            ensure!(
                body.contains(&format!("{package}.service")),
                "{package} {script} does not handle the unit"
            );
            let tmp = out_dir.path().join(format!("{package}.{script}"));
            std::fs::write(&tmp, &body)?;
            let sh = run(Command::new("sh").arg("-n").arg(&tmp))?;
            ensure!(sh.status.success(), "{package} {script}: {}", text(&sh));
        }
        let postinst = control_file(&deb, "postinst")?.unwrap_or_default();
        ensure!(
            !postinst.contains(&format!("deb-systemd-invoke start {package}.service")),
            "{package}: not started before it is configured"
        );

        // Files, modes, owners.
        let files = deb_contents(&deb)?;
        let expect = |path: &str, mode: &str| -> Result<()> {
            let (m, owner) = files
                .get(path)
                .ok_or_else(|| anyhow!("{package} lacks {path}"))?;
            ensure!(
                m == mode && owner == "0/0",
                "{package} {path}: {m} {owner}, want {mode} 0/0"
            );
            Ok(())
        };
        expect(&format!("/usr/bin/{package}"), "-rwxr-xr-x")?;
        expect(&format!("/etc/tcpulse/{short}.toml"), "-rw-r--r--")?;
        expect(&format!("/etc/tcpulse/{short}.env"), "-rw-------")?;
        expect(
            &format!("/usr/lib/systemd/system/{package}.service"),
            "-rw-r--r--",
        )?;
        expect(
            &format!("/usr/share/doc/{package}/examples/credentials.conf"),
            "-rw-r--r--",
        )?;
        expect(
            &format!("/usr/share/doc/{package}/reference.toml"),
            "-rw-r--r--",
        )?;
        if package == "tcpulse-collector" {
            for path in [
                "/usr/share/tcpulse/grafana/dashboards/fleet-capacity.json",
                "/usr/share/tcpulse/grafana/provisioning/dashboards/tcpulse.yaml",
                "/usr/share/tcpulse/grafana/provisioning/datasources/influxdb.yaml",
                "/usr/share/tcpulse/grafana/provisioning/alerting/tcpulse-rules.yaml",
            ] {
                expect(path, "-rw-r--r--")?;
            }
        }

        // Install into a temporary root (dpkg -x: no maintainer scripts, the machine's
        // dpkg database untouched) and run from there.
        let x = run(Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(root_dir.path()))?;
        ensure!(x.status.success(), "dpkg -x: {}", text(&x));
        let bin = root_dir.path().join(format!("usr/bin/{package}"));
        let help = run(Command::new(&bin).arg("--help"))?;
        ensure!(
            help.status.success() && text(&help).contains("check-config"),
            "{package} --help from the package: {}",
            text(&help)
        );
        if package == "tcpulse-collector" {
            // The production build: no `demo` (embedded hub and simulated agents).
            ensure!(
                !text(&help)
                    .lines()
                    .any(|l| l.trim_start().starts_with("demo")),
                "the packaged collector has the demo subcommand: {}",
                text(&help)
            );
        }
        let v = run(Command::new(&bin).arg("--version"))?;
        ensure!(
            text(&v).contains(version),
            "{package} --version: {}",
            text(&v)
        );

        // #13: the packaged reference config is what the packaged binary prints, and it
        // parses.
        let reference = root_dir
            .path()
            .join(format!("usr/share/doc/{package}/reference.toml"));
        check_packaged_reference(&bin, &reference, out_dir.path())?;

        // The packaged config and env file work with the packaged binary.
        let env = env_example(&root_dir.path().join(format!("etc/tcpulse/{short}.env")))?;
        expect_config_ok(
            &bin,
            Some(&root_dir.path().join(format!("etc/tcpulse/{short}.toml"))),
            &env,
        )?;

        // The packaged unit verifies against the packaged binary.
        let unit_text = read(
            &root_dir
                .path()
                .join(format!("usr/lib/systemd/system/{package}.service")),
        )?;
        let unit = place_unit(
            units.path(),
            &format!("{package}.service"),
            &unit_text,
            &bin,
        )?;
        verify_unit(&unit)?;
    }
    Ok(())
}

/// The reference config in a package is the packaged binary's `config` output and parses:
/// the collector's to its defaults (through the library), the agent's through
/// `check-config` with the settings that have no default given as flags.
fn check_packaged_reference(bin: &Path, reference: &Path, scratch: &Path) -> Result<()> {
    let shipped = read(reference)?;
    let printed = run(Command::new(bin).arg("config"))?;
    ensure!(
        printed.status.success(),
        "{} config: {}",
        bin.display(),
        text(&printed)
    );
    ensure!(
        String::from_utf8_lossy(&printed.stdout) == shipped,
        "{} is not what `{} config` prints",
        reference.display(),
        bin.display()
    );
    if bin.ends_with("tcpulse-collector") {
        let parsed = tcpulse_collector::config::Config::from_toml(&shipped, reference)?;
        ensure!(
            parsed == tcpulse_collector::config::Config::default(),
            "{} does not parse to the defaults",
            reference.display()
        );
        return Ok(());
    }
    let out = run(Command::new(bin)
        .arg("check-config")
        .arg("--config")
        .arg(reference)
        .args(["--source", "simulate", "--connector", "tc.example.com"])
        .args([
            "--region",
            "westeurope",
            "--scaleset",
            "vmss",
            "--instance",
            "vmss_0",
        ])
        .arg("--publish-file")
        .arg(scratch.join("events.jsonl"))
        .arg("--spool-dir")
        .arg(scratch.join("spool")))?;
    ensure!(
        out.status.success() && text(&out).contains("config OK"),
        "{} check-config --config {}: {}",
        bin.display(),
        reference.display(),
        text(&out)
    );
    Ok(())
}
