//! Issue 13, "Dashboards anyone can import": the Grafana dashboards checked against Grafana's
//! own published schema, and their datasource wiring for import and for provisioning.
//!
//! - Schema: `dashboards/schema-check` (pinned `typescript` and `@grafana/schema`, installed
//!   by `scripts/test` with `npm ci`) wraps each dashboard as `const dashboard: DashboardJson =
//!   <object literal>` and type-checks it with `tsc`. Object literals get TypeScript's
//!   excess-property check, so a misspelled field fails, not only a wrong type. What the
//!   schema cannot see: panel `options` and `fieldConfig.defaults.custom` (plugin-specific,
//!   typed as open records) and query `targets` (open records too), so a misspelled panel
//!   option or InfluxQL target field still passes; `dashboards_json.rs` and
//!   `dashboards_influxql.rs` check the targets.
//! - Import: each dashboard carries `__inputs` (one `DS_INFLUXDB` data source input, the
//!   shape Grafana's "Export for sharing externally" writes). Grafana's import replaces every
//!   `${DS_INFLUXDB}` with the uid picked in its form and drops `__inputs`; the test does the
//!   same with another uid and follows every reference.
//! - Provisioning: file provisioning does not substitute `${DS_...}`, so panels reference the
//!   `datasource` template variable, whose saved selection names the provisioned data source.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{anyhow, bail, ensure, Context, Result};
use regex::Regex;
use serde_json::{Map, Value};
use tcpulse_tests::services;

/// The import input every dashboard declares.
const INPUT: &str = "DS_INFLUXDB";
/// How panels, targets and query variables name their data source.
const VARIABLE_REF: &str = "${datasource}";
/// The data source uid an importing instance picks in the import form.
const OTHER_UID: &str = "other-uid-123";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dashboards_dir() -> PathBuf {
    repo().join("dashboards/grafana/dashboards")
}

fn schema_check_dir() -> PathBuf {
    repo().join("dashboards/schema-check")
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse JSON {}", path.display()))
}

/// (file name, JSON) of every dashboard.
fn dashboards() -> Result<Vec<(String, Value)>> {
    let dir = dashboards_dir();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((name, read_json(&path)?));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    ensure!(
        out.len() >= 3,
        "expected the three dashboards in {}",
        dir.display()
    );
    Ok(out)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

// ---------------------------------------------------------------------------------------
// Schema check (tsc against @grafana/schema)
// ---------------------------------------------------------------------------------------

/// One `tsc --pretty false` diagnostic: `file(line,col): error TSnnnn: message`.
#[derive(Debug)]
struct Diagnostic {
    file: String,
    line: usize,
    message: String,
}

struct TscRun {
    ok: bool,
    diagnostics: Vec<Diagnostic>,
    output: String,
    out_dir: PathBuf,
}

impl TscRun {
    /// The source line of the generated file a diagnostic points at.
    fn source_line(&self, d: &Diagnostic) -> Result<String> {
        let path = self.out_dir.join(&d.file);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.lines()
            .nth(d.line.saturating_sub(1))
            .map(|l| l.trim().to_string())
            .ok_or_else(|| anyhow!("{}: no line {}", path.display(), d.line))
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    cmd.output().with_context(|| format!("run {what}"))
}

/// Generates the typed wrappers for the dashboards in `json_dir` into `out_dir` and
/// type-checks them.
fn schema_check(json_dir: &Path, out_dir: &Path) -> Result<TscRun> {
    let pkg = schema_check_dir();
    let tsc = pkg.join("node_modules/typescript/bin/tsc");
    let schema = pkg.join("node_modules/@grafana/schema/package.json");
    ensure!(
        tsc.is_file() && schema.is_file(),
        "dashboards/schema-check has no node_modules: run `scripts/test` once, or `(cd {} && npm ci)`",
        pkg.display()
    );
    let node = services::binary("node", "nodejs")?;

    let gen = run(
        Command::new(&node)
            .arg(pkg.join("generate.mjs"))
            .arg(json_dir)
            .arg(out_dir),
        "generate.mjs",
    )?;
    ensure!(
        gen.status.success(),
        "generate.mjs failed:\n{}{}",
        String::from_utf8_lossy(&gen.stdout),
        String::from_utf8_lossy(&gen.stderr)
    );

    let check = run(
        Command::new(&node)
            .arg(&tsc)
            .args(["-p", "tsconfig.json", "--pretty", "false"])
            .current_dir(out_dir),
        "tsc",
    )?;
    let output = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    let re = Regex::new(r"^(.+?)\((\d+),\d+\): error TS\d+: (.*)$")?;
    let diagnostics = output
        .lines()
        .filter_map(|l| re.captures(l))
        .map(|c| Diagnostic {
            file: c[1].to_string(),
            line: c[2].parse().unwrap_or(0),
            message: c[3].to_string(),
        })
        .collect();
    Ok(TscRun {
        ok: check.status.success(),
        diagnostics,
        output,
        out_dir: out_dir.to_path_buf(),
    })
}

#[test]
fn r13_dashboards_schema_every_dashboard_type_checks() -> Result<()> {
    let out = tempfile::tempdir()?;
    let run = schema_check(&dashboards_dir(), out.path())?;
    ensure!(
        run.ok && run.diagnostics.is_empty(),
        "dashboards do not type-check against @grafana/schema:\n{}",
        run.output
    );
    // Every dashboard was wrapped, so tsc saw them all.
    for (file, _) in dashboards()? {
        let ts = out.path().join(file.replace(".json", ".ts"));
        ensure!(ts.is_file(), "no generated {}", ts.display());
    }
    Ok(())
}

/// Plants `mutate`'s mistake in a temp copy of `file` and returns tsc's run over the copy
/// (and the temp dir, which holds the generated files the diagnostics point at).
fn planted(
    file: &str,
    mutate: impl FnOnce(&mut Value) -> Result<()>,
) -> Result<(tempfile::TempDir, TscRun)> {
    let dir = tempfile::tempdir()?;
    let json_dir = dir.path().join("json");
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&json_dir)?;
    let mut d = read_json(&dashboards_dir().join(file))?;
    mutate(&mut d)?;
    std::fs::write(json_dir.join(file), serde_json::to_string_pretty(&d)?)?;
    let run = schema_check(&json_dir, &out_dir)?;
    Ok((dir, run))
}

fn panel_mut(d: &mut Value, index: usize) -> Result<&mut Map<String, Value>> {
    d["panels"]
        .get_mut(index)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| anyhow!("no panel {index}"))
}

/// tsc fails on the planted mistake, with a diagnostic on the line that holds it.
fn assert_caught(run: &TscRun, line_has: &str, message_has: &str) -> Result<()> {
    ensure!(
        !run.ok,
        "tsc accepted the planted mistake {line_has}:\n{}",
        run.output
    );
    for d in &run.diagnostics {
        let line = run.source_line(d)?;
        if line.contains(line_has) && d.message.contains(message_has) {
            println!("caught {line_has}: {}:{}: {}", d.file, d.line, d.message);
            return Ok(());
        }
    }
    bail!(
        "no diagnostic names {line_has} ({message_has}); tsc said:\n{}",
        run.output
    )
}

#[test]
fn r13_dashboards_schema_planted_misspelled_panel_field_fails() -> Result<()> {
    let (_dir, run) = planted("pipeline.json", |d| {
        let p = panel_mut(d, 1)?;
        let grid = p
            .remove("gridPos")
            .ok_or_else(|| anyhow!("panel without gridPos"))?;
        p.insert("gridPoss".into(), grid);
        Ok(())
    })?;
    assert_caught(&run, "\"gridPoss\"", "'\"gridPoss\"' does not exist")
}

#[test]
fn r13_dashboards_schema_planted_wrong_type_fails() -> Result<()> {
    let (_dir, run) = planted("fleet-capacity.json", |d| {
        let p = panel_mut(d, 2)?;
        p["gridPos"]["h"] = Value::from("8");
        Ok(())
    })?;
    assert_caught(&run, "\"h\": \"8\"", "not assignable to type 'number'")
}

/// String enums (ThresholdsMode, MappingType, ...) stay closed sets after the JSON mapping.
#[test]
fn r13_dashboards_schema_planted_unknown_enum_value_fails() -> Result<()> {
    let (_dir, run) = planted("instance.json", |d| {
        let p = panel_mut(d, 1)?;
        let mode = p
            .get_mut("fieldConfig")
            .and_then(|f| f.pointer_mut("/defaults/thresholds/mode"))
            .ok_or_else(|| anyhow!("panel 1 has no thresholds mode"))?;
        *mode = Value::from("absolut");
        Ok(())
    })?;
    assert_caught(&run, "\"absolut\"", "not assignable")
}

// ---------------------------------------------------------------------------------------
// Import with another datasource uid; provisioning unchanged
// ---------------------------------------------------------------------------------------

/// What Grafana's dashboard import does with `__inputs` (its dash template evaluator): every
/// declared input needs a value; each `${NAME}` in any string becomes that value; `__inputs`
/// is dropped.
fn grafana_import(dashboard: &Value, values: &[(&str, &str, &str)]) -> Result<Value> {
    let mut vars = Vec::new();
    for input in dashboard["__inputs"].as_array().into_iter().flatten() {
        let (name, kind) = (s(&input["name"]), s(&input["type"]));
        let value = values
            .iter()
            .find(|(n, t, _)| *n == name && *t == kind)
            .map(|(_, _, v)| *v)
            .ok_or_else(|| {
                anyhow!("Dashboard input variable: {name} missing from import command")
            })?;
        vars.push((format!("${{{name}}}"), value.to_string()));
    }
    fn eval(v: &Value, vars: &[(String, String)]) -> Value {
        match v {
            Value::String(text) => {
                let mut out = text.clone();
                for (k, val) in vars {
                    out = out.replace(k, val);
                }
                Value::String(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| eval(x, vars)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .filter(|(k, _)| k.as_str() != "__inputs")
                    .map(|(k, x)| (k.clone(), eval(x, vars)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    Ok(eval(dashboard, &vars))
}

/// A data source of an instance: (name, uid).
type DataSource<'a> = (&'a str, &'a str);

/// The uid a `datasource` variable selects on load: the saved selection if it matches an
/// option by text (name) or value (uid), else the first option (Grafana's variable
/// validation).
fn select_datasource(variable: &Value, instance: &[DataSource]) -> Result<String> {
    let (text, value) = (
        s(&variable["current"]["text"]),
        s(&variable["current"]["value"]),
    );
    instance
        .iter()
        .find(|(name, uid)| *name == text || *uid == value)
        .or_else(|| instance.first())
        .map(|(_, uid)| uid.to_string())
        .ok_or_else(|| anyhow!("no data source of type {}", variable["query"]))
}

/// The `datasource` template variable: a data source variable over InfluxDB.
fn datasource_variable<'a>(file: &str, d: &'a Value) -> Result<&'a Value> {
    let v = d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| s(&v["name"]) == "datasource")
        .ok_or_else(|| anyhow!("{file}: no `datasource` template variable"))?;
    ensure!(
        s(&v["type"]) == "datasource" && s(&v["query"]) == "influxdb",
        "{file}: `datasource` must be a data source variable over influxdb: {v}"
    );
    ensure!(
        v["multi"] != true && v["includeAll"] != true,
        "{file}: `datasource` must select exactly one data source"
    );
    Ok(v)
}

/// Every InfluxDB data source reference (panels, targets, query variables), as its uid.
fn influx_refs(d: &Value) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![d];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => {
                if let Some(ds) = o.get("datasource") {
                    match s(&ds["type"]) {
                        "influxdb" => out.push(s(&ds["uid"]).to_string()),
                        "grafana" if o.get("builtIn").is_some() => {}
                        _ => bail!("datasource reference {ds} is not InfluxDB"),
                    }
                }
                stack.extend(o.values());
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Every `${DS_...}` placeholder in the dashboard's strings.
fn placeholders(v: &Value, re: &Regex, out: &mut Vec<String>) {
    match v {
        Value::String(t) => out.extend(re.captures_iter(t).map(|c| c[1].to_string())),
        Value::Array(a) => a.iter().for_each(|x| placeholders(x, re, out)),
        Value::Object(o) => o.values().for_each(|x| placeholders(x, re, out)),
        _ => {}
    }
}

#[test]
fn r13_dashboards_inputs_are_what_grafana_export_writes() -> Result<()> {
    let re = Regex::new(r"\$\{(DS_[A-Z0-9_]+)\}")?;
    for (file, d) in dashboards()? {
        let inputs = d["__inputs"]
            .as_array()
            .ok_or_else(|| anyhow!("{file}: no __inputs"))?;
        ensure!(
            inputs.len() == 1,
            "{file}: expected one input, got {inputs:?}"
        );
        let i = &inputs[0];
        ensure!(
            s(&i["name"]) == INPUT
                && s(&i["type"]) == "datasource"
                && s(&i["pluginId"]) == "influxdb"
                && s(&i["pluginName"]) == "InfluxDB"
                && !s(&i["label"]).is_empty(),
            "{file}: input {i}"
        );
        let mut used = Vec::new();
        placeholders(&d, &re, &mut used);
        ensure!(
            !used.is_empty() && used.iter().all(|u| u == INPUT),
            "{file}: ${{DS_...}} placeholders {used:?}; the only declared input is {INPUT}"
        );
    }
    Ok(())
}

#[test]
fn r13_dashboards_import_with_another_datasource_uid() -> Result<()> {
    // The importing instance: its InfluxDB has another uid and name, and a second InfluxDB
    // sorts first, so a fallback to the first option would show.
    let instance = [
        ("A decoy InfluxDB", "decoy-uid"),
        ("Fleet Influx", OTHER_UID),
    ];
    for (file, d) in dashboards()? {
        // An import without the data source is refused, as in Grafana.
        let err = grafana_import(&d, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        ensure!(
            err.contains(INPUT),
            "{file}: import without inputs: {err:?}"
        );

        let imported = grafana_import(&d, &[(INPUT, "datasource", OTHER_UID)])?;
        println!(
            "--- {file} as imported with {INPUT} = {OTHER_UID}:\n{}",
            serde_json::to_string_pretty(&imported)?
        );
        let text = imported.to_string();
        ensure!(
            !text.contains("${DS_"),
            "{file}: an input placeholder survived the import"
        );
        ensure!(
            imported.get("__inputs").is_none(),
            "{file}: __inputs survived"
        );
        ensure!(
            !text.contains("tcpulse-influxdb"),
            "{file}: the imported dashboard still names the provisioned uid"
        );

        let var = datasource_variable(&file, &imported)?;
        ensure!(
            s(&var["current"]["value"]) == OTHER_UID,
            "{file}: `datasource` defaults to {}, not the uid picked at import",
            var["current"]
        );
        let selected = select_datasource(var, &instance)?;
        ensure!(
            selected == OTHER_UID,
            "{file}: `datasource` selects {selected}"
        );

        let refs = influx_refs(&imported)?;
        ensure!(!refs.is_empty(), "{file}: no InfluxDB references");
        for uid in refs {
            let resolved = if uid == VARIABLE_REF {
                selected.clone()
            } else {
                uid
            };
            ensure!(
                resolved == OTHER_UID,
                "{file}: a reference resolves to {resolved}, not {OTHER_UID}"
            );
        }
    }
    Ok(())
}

#[test]
fn r13_dashboards_provisioning_still_resolves_the_provisioned_datasource() -> Result<()> {
    let prov = repo().join("dashboards/grafana/provisioning");
    let yaml = std::fs::read_to_string(prov.join("datasources/influxdb.yaml"))?;
    let doc: Value = serde_norway::from_str(&yaml).context("parse datasources/influxdb.yaml")?;
    let ds = &doc["datasources"][0];
    let (name, uid) = (s(&ds["name"]), s(&ds["uid"]));
    ensure!(
        uid == "tcpulse-influxdb" && s(&ds["type"]) == "influxdb",
        "provisioned data source: {ds}"
    );
    // Provisioning loads the file as it is: `${DS_INFLUXDB}` stays literal, so the variable's
    // saved value matches nothing and its saved text (the provisioned name) must.
    let instance = [("A decoy InfluxDB", "decoy-uid"), (name, uid)];
    for (file, d) in dashboards()? {
        let var = datasource_variable(&file, &d)?;
        ensure!(
            s(&var["current"]["text"]) == name,
            "{file}: `datasource` saved text {:?} is not the provisioned name {name:?}",
            var["current"]["text"]
        );
        let selected = select_datasource(var, &instance)?;
        ensure!(
            selected == uid,
            "{file}: `datasource` selects {selected}, not {uid}"
        );
        for r in influx_refs(&d)? {
            ensure!(
                r == VARIABLE_REF,
                "{file}: InfluxDB reference {r:?}; every one must go through {VARIABLE_REF}"
            );
        }
    }
    Ok(())
}
