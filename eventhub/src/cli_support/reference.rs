//! The annotated reference config a binary prints with its `config` subcommand, generated
//! from its config structs: their JSON Schema (schemars, which reads the doc comments and
//! serde attributes) for the docs and the tables, and a value of the structs for the
//! defaults (so the text never drifts from the code).
//!
//! A key with a default is written active (`key = value`), so the printed text parses to
//! the defaults. A key or table without a default (a sink, an optional source, a secret
//! file) is written commented out with its docs and a placeholder of its type, ready to
//! uncomment. Keys come in schema order: required ones first, then alphabetical (the
//! schema's maps are sorted), tables after the keys of their parent.

use serde_json::Value;

/// Width of the comment lines.
const WIDTH: usize = 88;

/// Renders the reference of `schema` with `defaults` (the structs' values, serialized)
/// under `header` (comment lines, without `#`).
pub fn render(schema: &schemars::Schema, defaults: &Value, header: &str) -> String {
    let root = schema.as_value();
    let mut out = Renderer {
        root,
        text: String::new(),
    };
    for line in wrap(header) {
        out.line(false, &line);
    }
    out.table(root, Some(defaults), &[], true);
    out.text
}

struct Renderer<'a> {
    root: &'a Value,
    text: String,
}

/// One property of a table, resolved.
struct Field {
    name: String,
    schema: Value,
    docs: String,
    required: bool,
}

impl<'a> Renderer<'a> {
    fn line(&mut self, commented: bool, text: &str) {
        match (commented, text.is_empty()) {
            (false, true) => self.text.push_str("#\n"),
            (false, false) => self.text.push_str(&format!("# {text}\n")),
            (true, true) => self.text.push_str("##\n"),
            (true, false) => self.text.push_str(&format!("## {text}\n")),
        }
    }

    fn docs(&mut self, commented: bool, docs: &str) {
        for line in wrap(docs) {
            self.line(commented, &line);
        }
    }

    fn entry(&mut self, active: bool, text: &str) {
        if active {
            self.text.push_str(&format!("{text}\n"));
        } else {
            self.text.push_str(&format!("# {text}\n"));
        }
    }

    /// Writes the keys of the object `schema` at `path`, then its sub-tables. `value` is
    /// the defaults at this path; `active` whether this table is written uncommented.
    fn table(&mut self, schema: &Value, value: Option<&Value>, path: &[&str], active: bool) {
        let fields = self.fields(schema);
        let mut tables = Vec::new();
        for field in &fields {
            let default = value
                .and_then(|v| v.get(&field.name))
                .filter(|v| !v.is_null())
                .or_else(|| field.schema.get("default").filter(|v| !v.is_null()));
            if let Some(variants) = self.tagged_variants(&field.schema) {
                tables.push((field, None, Some(variants)));
            } else if is_table(&field.schema) {
                tables.push((field, default, None));
            } else {
                self.text.push('\n');
                self.docs(false, &field.docs);
                let shown = default.and_then(toml_value);
                let is_active = active && shown.is_some();
                let text = shown.unwrap_or_else(|| placeholder(&field.schema));
                self.entry(is_active, &format!("{} = {text}", field.name));
            }
        }
        for (field, default, variants) in tables {
            let mut sub: Vec<&str> = path.to_vec();
            sub.push(&field.name);
            match variants {
                Some(variants) => self.variants(field, &sub, &variants),
                None => {
                    let sub_active = active && default.is_some_and(Value::is_object);
                    self.text.push('\n');
                    self.docs(false, &field.docs);
                    self.entry(sub_active, &format!("[{}]", sub.join(".")));
                    self.table(&field.schema, default, &sub, sub_active);
                }
            }
        }
    }

    /// An internally tagged enum (`[source] type = "…"`): one commented table per variant.
    fn variants(&mut self, field: &Field, path: &[&str], variants: &[(String, Value)]) {
        self.text.push('\n');
        self.docs(false, &field.docs);
        for (tag, schema) in variants {
            self.text.push('\n');
            if let Some(d) = schema.get("description").and_then(Value::as_str) {
                self.docs(true, d);
            }
            self.entry(false, &format!("[{}]", path.join(".")));
            self.entry(false, &format!("type = {}", quoted(tag)));
            self.table(schema, None, path, false);
        }
    }

    /// The properties of an object schema (after `$ref` and `allOf`), required first.
    fn fields(&self, schema: &Value) -> Vec<Field> {
        let schema = self.resolve(schema);
        let required: Vec<String> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            return Vec::new();
        };
        let mut fields: Vec<Field> = props
            .iter()
            .filter(|(name, p)| !is_tag(name, p))
            .map(|(name, prop)| {
                let docs = docs_of(prop);
                let inner = self.resolve(&self.unwrap_option(prop));
                let docs = match docs_of(&inner) {
                    d if d.is_empty() || d == docs => docs,
                    d if docs.is_empty() || d.starts_with(&docs) => d,
                    d => format!("{docs}\n\n{d}"),
                };
                Field {
                    name: name.clone(),
                    schema: with_default(inner, prop),
                    docs,
                    required: required.contains(name),
                }
            })
            .collect();
        fields.sort_by_key(|f| !f.required);
        fields
    }

    /// Follows `$ref` and merges `allOf`, keeping the outer keys.
    fn resolve(&self, schema: &Value) -> Value {
        let mut out = schema.clone();
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            if let Some(target) = self.lookup(r) {
                out = merge(self.resolve(target), schema);
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for part in all {
                out = merge(self.resolve(part), &out);
            }
        }
        if let Some(o) = out.as_object_mut() {
            o.remove("$ref");
            o.remove("allOf");
        }
        out
    }

    fn lookup(&self, reference: &str) -> Option<&'a Value> {
        let path = reference.strip_prefix("#/")?;
        path.split('/').try_fold(self.root, |v, part| v.get(part))
    }

    /// `Option<T>`: the `T` of `anyOf [T, null]` or `type: [t, "null"]`.
    fn unwrap_option(&self, schema: &Value) -> Value {
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
            let non_null: Vec<&Value> = any.iter().filter(|s| !is_null(s)).collect();
            if non_null.len() == 1 && any.len() == 2 {
                return merge(self.resolve(non_null[0]), schema);
            }
        }
        let mut out = schema.clone();
        if let Some(types) = schema.get("type").and_then(Value::as_array) {
            let rest: Vec<&Value> = types
                .iter()
                .filter(|t| t.as_str() != Some("null"))
                .collect();
            if rest.len() == 1 {
                out["type"] = rest[0].clone();
            }
        }
        if let Some(o) = out.as_object_mut() {
            o.remove("anyOf");
        }
        out
    }

    /// The variants of an internally tagged enum: `(tag, object schema)`.
    fn tagged_variants(&self, schema: &Value) -> Option<Vec<(String, Value)>> {
        let list = schema
            .get("oneOf")
            .or_else(|| schema.get("anyOf"))?
            .as_array()?;
        let variants: Vec<(String, Value)> = list
            .iter()
            .map(|v| self.resolve(v))
            .filter_map(|v| Some((tag_of(&v)?, v)))
            .collect();
        (!variants.is_empty() && variants.len() == list.len()).then_some(variants)
    }
}

/// `base` with the keys of `over` on top (`over` wins).
fn merge(mut base: Value, over: &Value) -> Value {
    if let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) {
        for (k, v) in o {
            if k == "properties" {
                if let (Some(bp), Some(op)) = (
                    b.get_mut("properties").and_then(Value::as_object_mut),
                    v.as_object(),
                ) {
                    bp.extend(op.iter().map(|(k, v)| (k.clone(), v.clone())));
                    continue;
                }
            }
            if k == "required" {
                if let (Some(br), Some(or)) = (
                    b.get_mut("required").and_then(Value::as_array_mut),
                    v.as_array(),
                ) {
                    br.extend(or.iter().cloned());
                    continue;
                }
            }
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// Keeps the property's own `default` (set on the field, not on its type).
fn with_default(mut inner: Value, prop: &Value) -> Value {
    if let (Some(o), Some(d)) = (inner.as_object_mut(), prop.get("default")) {
        o.insert("default".into(), d.clone());
    }
    inner
}

fn is_null(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

fn is_table(schema: &Value) -> bool {
    schema.get("properties").is_some_and(Value::is_object)
}

/// The `type` property of an internally tagged variant: `{"const": "name"}`.
fn tag_of(schema: &Value) -> Option<String> {
    let t = schema.get("properties")?.get("type")?;
    t.get("const")
        .or_else(|| t.get("enum")?.as_array()?.first())?
        .as_str()
        .map(str::to_owned)
}

fn is_tag(name: &str, prop: &Value) -> bool {
    name == "type"
        && (prop.get("const").is_some()
            || prop
                .get("enum")
                .is_some_and(|e| e.as_array().is_some_and(|a| a.len() == 1)))
}

/// The doc comment schemars stored: title and description.
fn docs_of(schema: &Value) -> String {
    let get = |k: &str| schema.get(k).and_then(Value::as_str).unwrap_or("");
    let mut docs = match (get("title"), get("description")) {
        ("", d) => d.to_owned(),
        (t, "") => t.to_owned(),
        (t, d) => format!("{t}\n\n{d}"),
    };
    if let Some(choices) = enum_choices(schema) {
        docs.push_str(&format!("\n\nOne of: {}.", choices.join(", ")));
    }
    docs
}

/// The values of a string enum (`enum`, or `oneOf` of `const`s).
fn enum_choices(schema: &Value) -> Option<Vec<String>> {
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        return Some(
            e.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        );
    }
    let list = schema.get("oneOf")?.as_array()?;
    list.iter()
        .map(|v| v.get("const").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// A value as TOML (inline form), or `None` for what TOML cannot hold (null).
fn toml_value(v: &Value) -> Option<String> {
    toml::Value::try_from(v).ok().map(|t| t.to_string())
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A value of the schema's type to stand in for a key without a default.
fn placeholder(schema: &Value) -> String {
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    if let Some(choice) = enum_choices(schema).and_then(|c| c.into_iter().next()) {
        return quoted(&choice);
    }
    match ty {
        "integer" | "number" => "0".into(),
        "boolean" => "false".into(),
        "array" => "[]".into(),
        "object" => "{}".into(),
        _ => quoted(""),
    }
}

/// Splits `text` into paragraphs and wraps each at [`WIDTH`]; paragraphs are separated by
/// an empty line, and lines of a code block are kept as they are.
fn wrap(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, para) in text.split("\n\n").enumerate() {
        if i > 0 {
            out.push(String::new());
        }
        if para.trim_start().starts_with("```") || para.lines().any(|l| l.starts_with("    ")) {
            out.extend(para.lines().map(str::to_owned));
            continue;
        }
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > WIDTH {
                out.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            out.push(line);
        }
    }
    out
}

/// Every key the reference of `schema` documents, as `(table path, key, docs)`, walking
/// the schema itself (not the text).
fn documented_keys(schema: &schemars::Schema) -> Vec<(String, String, String)> {
    let r = Renderer {
        root: schema.as_value(),
        text: String::new(),
    };
    let mut out = Vec::new();
    collect(&r, schema.as_value(), "", &mut out);
    out
}

fn collect(r: &Renderer<'_>, schema: &Value, path: &str, out: &mut Vec<(String, String, String)>) {
    for field in r.fields(schema) {
        let sub = if path.is_empty() {
            field.name.clone()
        } else {
            format!("{path}.{}", field.name)
        };
        out.push((path.to_owned(), field.name.clone(), field.docs.clone()));
        if let Some(variants) = r.tagged_variants(&field.schema) {
            for (_, v) in variants {
                collect(r, &v, &sub, out);
            }
        } else if is_table(&field.schema) {
            collect(r, &field.schema, &sub, out);
        }
    }
}

/// What the reference `text` rendered from `schema` fails to document, one line each: a
/// property of a struct that no key stands for, a key without a doc comment, a key missing
/// from its table in the text, or a key whose docs are not right before it. Empty when
/// every setting is documented; the binaries' tests assert that.
pub fn undocumented(schema: &schemars::Schema, text: &str) -> Vec<String> {
    let keys = documented_keys(schema);
    let mut problems = Vec::new();
    let root = schema.as_value();
    let defs = root.get("$defs").and_then(Value::as_object);
    for def in std::iter::once(root).chain(defs.into_iter().flat_map(|d| d.values())) {
        let names = def.get("properties").and_then(Value::as_object);
        for name in names.into_iter().flat_map(|p| p.keys()) {
            if !keys.iter().any(|(_, k, _)| k == name) {
                problems.push(format!("{name} not listed"));
            }
        }
    }
    for (path, key, docs) in &keys {
        if docs.trim().is_empty() {
            problems.push(format!("{path}.{key} has no doc comment"));
            continue;
        }
        let first_words = docs
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ");
        let found = key_positions(text, path, key);
        if found.is_empty() {
            problems.push(format!("{path}.{key} missing from the reference"));
        } else if !found
            .iter()
            .any(|&at| docs_before(text, at).contains(&first_words))
        {
            problems.push(format!("{path}.{key}: docs missing"));
        }
    }
    problems
}

/// Where `key` (a key line or a sub-table header, commented out or not) appears after the
/// header of the table `path` (from the start for the root).
fn key_positions(text: &str, path: &str, key: &str) -> Vec<usize> {
    let (from, sub) = if path.is_empty() {
        (Some(0), format!("[{key}]"))
    } else {
        let header = [format!("\n[{path}]\n"), format!("\n# [{path}]\n")];
        let from = header.iter().filter_map(|h| text.find(h.as_str())).min();
        (from, format!("[{path}.{key}]"))
    };
    let Some(from) = from else { return Vec::new() };
    let needles = [
        format!("\n{key} = "),
        format!("\n# {key} = "),
        format!("\n{sub}\n"),
        format!("\n# {sub}\n"),
    ];
    needles
        .iter()
        .flat_map(|n| {
            text[from..]
                .match_indices(n.as_str())
                .map(|(i, _)| i + from)
        })
        .collect()
}

/// The words of the two paragraphs before `at` (a tagged table's docs come before the
/// description of its first variant).
fn docs_before(text: &str, at: usize) -> String {
    let paragraphs: Vec<&str> = text[..at].rsplitn(3, "\n\n").take(2).collect();
    let words: Vec<&str> = paragraphs
        .iter()
        .rev()
        .flat_map(|p| p.split_whitespace())
        .collect();
    words.join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A table with a default, an optional table, a tagged enum.
    #[derive(
        Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
    )]
    #[serde(deny_unknown_fields)]
    struct Root {
        /// How many. Default: 3.
        #[serde(default = "three")]
        count: u32,
        /// The optional table.
        #[serde(default)]
        extra: Option<Extra>,
        /// Which kind.
        #[serde(default)]
        kind: Option<Kind>,
    }

    fn three() -> u32 {
        3
    }

    /// Extra settings.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Extra {
        /// The URL. Required.
        url: String,
        /// Whether to zip. Default: true.
        #[serde(default = "yes")]
        zip: bool,
    }

    fn yes() -> bool {
        true
    }

    /// A tagged choice.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Kind {
        /// The first kind.
        First(Extra),
    }

    #[test]
    fn defaults_are_active_and_optional_tables_and_variants_commented() {
        let defaults = Root {
            count: 3,
            ..Root::default()
        };
        let schema = schemars::schema_for!(Root);
        let text = render(
            &schema,
            &serde_json::to_value(&defaults).unwrap(),
            "Header.",
        );
        let parsed: Root = toml::from_str(&text).unwrap();
        assert_eq!(parsed, defaults, "{text}");
        for needle in [
            "# Header.\n",
            "# How many. Default: 3.\ncount = 3\n",
            "# The optional table.\n# [extra]\n",
            "# The URL. Required.\n# url = \"\"\n",
            "# zip = true\n",
            "## The first kind.\n# [kind]\n# type = \"first\"\n",
        ] {
            assert!(text.contains(needle), "{needle:?} in:\n{text}");
        }
        let keys = documented_keys(&schema);
        assert!(
            keys.iter().any(|(p, k, _)| p == "kind" && k == "zip"),
            "{keys:?}"
        );
    }
}
