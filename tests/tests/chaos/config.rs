//! Chaos cases: configuration checks (issue 12, faults 9b and 11), against the real
//! binaries. `check-config` of the agent and of the collector refuses a connection string
//! that cannot work (given in `TCPULSE_EVENTHUB_CONNECTION_STRING`, never on the command
//! line): exit 78 (EX_CONFIG), one line naming the part at fault, the secret never echoed.
//! `tcpulse-agent check-cert` fails a PFX whose RSA key has 1024 bits, naming the size.
//!
//! The check-cert case needs the `openssl` CLI (Debian `openssl`).

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use tcpulse_tests::chaos::{record, Row};
use tcpulse_tests::process::workspace_binary;

const ENV_CS: &str = "TCPULSE_EVENTHUB_CONNECTION_STRING";
const EP: &str = "Endpoint=sb://ns.servicebus.windows.net/";
/// A secret that must never appear in what the binaries print.
const SECRET: &str = "TOPSECRET key!";

/// The connection strings refused, and the part each refusal must name.
fn refused() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("garbage", "garbage".into(), "part 1 has no '='"),
        (
            "no key",
            format!("{EP};SharedAccessKeyName=send;EntityPath=tc"),
            "has SharedAccessKeyName but not SharedAccessKey",
        ),
        (
            "a key that is not base64",
            format!("{EP};SharedAccessKeyName=send;SharedAccessKey={SECRET};EntityPath=tc"),
            "SharedAccessKey is not a key",
        ),
    ]
}

/// `<bin> check-config --config <config>` with `cs` in the environment only.
fn check_config(bin: &str, config: &Path, cs: &str) -> Result<Output> {
    Command::new(workspace_binary(bin)?)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .env(ENV_CS, cs)
        .env_remove("TCPULSE_CONFIG")
        .env_remove("TCPULSE_EVENT_HUB")
        .env_remove("TCPULSE_INFLUXDB_TOKEN")
        .env("NO_COLOR", "1")
        .output()
        .with_context(|| format!("run {bin} check-config"))
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn chaos_config_check_config_refuses_unusable_connection_strings() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "[identity]\nconnector = \"tc.example.com\"\nregion = \"westeurope\"\n\
             scaleset = \"vmss\"\ninstance = \"vmss_0\"\n[spool]\ndir = {:?}\n\
             [source]\ntype = \"simulate\"\n",
            dir.path().join("spool").display().to_string()
        ),
    )?;
    let collector_cfg = dir.path().join("collector.toml");
    std::fs::write(
        &collector_cfg,
        format!(
            "[source.eventhub]\n[sinks.file]\npath = {:?}\n",
            dir.path().join("out.lp").display().to_string()
        ),
    )?;
    let mut refusals = 0;
    for (bin, config) in [
        ("tcpulse-agent", &agent_cfg),
        ("tcpulse-collector", &collector_cfg),
    ] {
        for (what, cs, needle) in refused() {
            let out = check_config(bin, config, &cs)?;
            let text = said(&out);
            ensure!(
                out.status.code() == Some(78),
                "{bin}, {what}: exit {} (want 78): {text}",
                out.status
            );
            ensure!(
                text.starts_with(&format!("{bin}: ")) && text.contains(needle),
                "{bin}, {what}: the message does not name {needle:?}: {text}"
            );
            ensure!(text.lines().count() == 1, "{bin}, {what}: one line: {text}");
            ensure!(
                !text.contains("TOPSECRET") && !text.contains(&cs),
                "{bin}, {what}: the secret was echoed: {text}"
            );
            refusals += 1;
        }
    }
    record(&Row {
        fault: "check-config: connection string garbage / without key (9b)".into(),
        outcome: format!(
            "agent and collector: {refusals} refusals, exit 78, one line naming the part \
             (\"part 1 has no '='\", \"has SharedAccessKeyName but not SharedAccessKey\"), \
             secret never echoed"
        ),
        ..Row::default()
    })?;
    Ok(())
}

/// Runs `openssl args` in `dir`; fails with its stderr.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("run openssl (the openssl CLI is needed: apt-get install -y openssl)")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn chaos_config_check_cert_rsa_1024_fails() -> Result<()> {
    const FQDN: &str = "tc-eu.example.com";
    const PASSWORD: &str = "chaos-pfx-password";
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    openssl(d, &["genrsa", "-out", "key.pem", "1024"])?;
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-key",
            "key.pem",
            "-days",
            "30",
            "-sha256",
            "-subj",
            &format!("/CN={FQDN}"),
            "-addext",
            &format!("subjectAltName=DNS:{FQDN}"),
            "-addext",
            "extendedKeyUsage=serverAuth,clientAuth",
            "-out",
            "cert.pem",
        ],
    )?;
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-inkey",
            "key.pem",
            "-in",
            "cert.pem",
            "-passout",
            &format!("pass:{PASSWORD}"),
            "-out",
            "tc.pfx",
        ],
    )?;
    let out = Command::new(workspace_binary("tcpulse-agent")?)
        .args(["check-cert", "--cert"])
        .arg(d.join("tc.pfx"))
        .args(["--fqdn", FQDN])
        .env("TCPULSE_CERT_PASSWORD", PASSWORD)
        .env("NO_COLOR", "1")
        .output()
        .context("run tcpulse-agent check-cert")?;
    let text = said(&out);
    ensure!(out.status.code() == Some(1), "exit {}: {text}", out.status);
    let line = text
        .lines()
        .find(|l| l.contains("FAIL  key type"))
        .with_context(|| format!("no failed key check: {text}"))?;
    ensure!(
        line.contains("RSA 1024 bits is too weak") && line.contains("2048"),
        "the key check does not name the size: {text}"
    );
    ensure!(text.contains("Result: FAILED"), "{text}");
    ensure!(!text.contains(PASSWORD), "the password was echoed: {text}");
    record(&Row {
        fault: "check-cert: PFX with a 1024-bit RSA key (11)".into(),
        outcome: format!("exit 1; {}", line.trim()),
        ..Row::default()
    })?;
    Ok(())
}
