//! The Grafana dashboards under `dashboards/`, checked from the real files (no network):
//!
//! - docs/SCHEMA.md, parsed here, lists exactly the measurements, tags and fields that
//!   collector/src/series.rs writes;
//! - the provisioning files declare the InfluxDB (Flux) datasource and a file provider;
//! - every dashboard follows Grafana's dashboard model (unique uid, schemaVersion, unique panel ids,
//!   gridPos inside the 24 columns without overlaps, datasource refs that the provisioning file
//!   declares, template variables that exist);
//! - every Flux query names only measurements, fields and tags that docs/SCHEMA.md lists;
//! - every Flux query parses and type-checks with InfluxData's Flux parser (flux-lsp as WASM, run
//!   by `dashboards/tools/check-flux.js`) when node and the package are installed; with `CI=true`
//!   their absence is a failure.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod names;
use names::*;

const NPM_INSTALL: &str = "npm ci --prefix dashboards/tools";
const GRID_COLUMNS: i64 = 24;
/// Grafana's own datasources.
const BUILTIN_DATASOURCES: &[&str] =
    &["-- Grafana --", "-- Mixed --", "-- Dashboard --", "grafana"];
/// Grafana's built-in variables.
const BUILTIN_VARIABLES: &[&str] = &[
    "__all",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__rate_interval",
    "__from",
    "__to",
    "__dashboard",
    "__org",
    "__user",
    "__field",
    "__series",
    "__value",
    "__data",
    "timeFilter",
    "__timeFilter",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// docs/SCHEMA.md

fn schema() -> Schema {
    parse_schema(&read("docs/SCHEMA.md"))
}

/// String literals following `marker` in Rust source: `.tag("site"` → site.
fn literals_after(src: &str, marker: &str) -> BTreeSet<String> {
    src.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &src[i + marker.len()..];
            let rest = rest.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

#[test]
fn schema_doc_lists_what_the_collector_writes() {
    let s = schema();
    let code = read("collector/src/series.rs");
    let measurements: BTreeSet<String> = code
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const ") && l.contains(": &str = \""))
        .map(|l| {
            let v = &l[l.find('"').expect("quote") + 1..];
            v[..v.find('"').expect("closing quote")].to_string()
        })
        .collect();
    let documented: BTreeSet<String> = s.measurements.keys().cloned().collect();
    assert_eq!(
        measurements, documented,
        "measurements of collector/src/series.rs vs docs/SCHEMA.md"
    );
    assert_eq!(
        literals_after(&code, ".tag("),
        s.all_tags(),
        "tags written by series.rs vs documented"
    );
    assert_eq!(
        literals_after(&code, ".field("),
        s.all_fields(),
        "fields written by series.rs vs documented"
    );
    assert_eq!(
        s.common_tags,
        BTreeSet::from(["site".into(), "machine".into(), "kind".into()])
    );
}

// ---------------------------------------------------------------------------------------------
// Provisioning YAML (the block subset Grafana's examples use: mappings, lists of mappings, scalars)

/// Flattens block YAML to `path → scalar`: `datasources[0].jsonData.version` → `Flux`.
fn flatten_yaml(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    // (indent of the key, path of the key)
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut counters: BTreeMap<String, usize> = BTreeMap::new();
    for raw in text.lines() {
        let no_comment = match raw.find(" #") {
            Some(i) => &raw[..i],
            None if raw.trim_start().starts_with('#') => "",
            None => raw,
        };
        if no_comment.trim().is_empty() {
            continue;
        }
        let mut indent = no_comment.len() - no_comment.trim_start().len();
        let mut line = no_comment.trim();
        let mut new_item = false;
        if let Some(rest) = line.strip_prefix("- ") {
            new_item = true;
            line = rest.trim();
            indent += 2;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent && !new_item)
            || stack
                .last()
                .is_some_and(|(i, _)| new_item && *i >= indent - 2)
        {
            stack.pop();
        }
        let mut parent = stack.last().map(|(_, p)| p.clone()).unwrap_or_default();
        if new_item {
            let n = counters.entry(parent.clone()).or_insert(0);
            parent = format!("{parent}[{n}]");
            *n += 1;
            stack.push((indent - 1, parent.clone()));
        }
        let (key, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("unsupported YAML line: {raw}"));
        let path = if parent.is_empty() {
            key.trim().to_string()
        } else {
            format!("{parent}.{}", key.trim())
        };
        let value = value.trim().trim_matches('"').trim_matches('\'');
        if value.is_empty() {
            stack.push((indent, path));
        } else {
            out.insert(path, value.to_string());
        }
    }
    out
}

/// The uids the datasource provisioning file declares.
fn provisioned_datasources() -> BTreeSet<String> {
    let y = flatten_yaml(&read("dashboards/provisioning/datasources/fabmeter.yaml"));
    (0..)
        .map_while(|i| y.get(&format!("datasources[{i}].uid")).cloned())
        .collect()
}

#[test]
fn provisioning_files_declare_the_flux_datasource_and_the_provider() {
    let y = flatten_yaml(&read("dashboards/provisioning/datasources/fabmeter.yaml"));
    let get = |k: &str| {
        y.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("datasource YAML has no {k}: {y:#?}"))
    };
    assert_eq!(get("apiVersion"), "1");
    assert_eq!(get("datasources[0].uid"), "fabmeter-influx");
    assert_eq!(get("datasources[0].type"), "influxdb");
    assert_eq!(get("datasources[0].jsonData.version"), "Flux");
    assert!(get("datasources[0].url").starts_with("http"));
    assert!(!get("datasources[0].jsonData.organization").is_empty());
    assert!(!get("datasources[0].jsonData.defaultBucket").is_empty());
    let token = get("datasources[0].secureJsonData.token");
    assert!(
        token == "$INFLUX_TOKEN" || token == "${INFLUX_TOKEN}",
        "the token comes from the environment, never the file: {token}"
    );
    let uids = provisioned_datasources();
    assert_eq!(uids.len(), 1, "{uids:?}");

    let p = flatten_yaml(&read("dashboards/provisioning/dashboards/fabmeter.yaml"));
    assert_eq!(p.get("apiVersion").map(String::as_str), Some("1"));
    assert_eq!(p.get("providers[0].type").map(String::as_str), Some("file"));
    assert!(p
        .get("providers[0].options.path")
        .is_some_and(|v| v.starts_with('/')));
}

#[test]
fn flatten_yaml_reads_lists_of_mappings() {
    let y = flatten_yaml(
        "apiVersion: 1\n# c\nitems:\n  - name: a # note\n    sub:\n      k: v\n  - name: 'b'\n    x: \"1\"\nlast: z\n",
    );
    let want: BTreeMap<String, String> = [
        ("apiVersion", "1"),
        ("items[0].name", "a"),
        ("items[0].sub.k", "v"),
        ("items[1].name", "b"),
        ("items[1].x", "1"),
        ("last", "z"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(y, want);
}

// ---------------------------------------------------------------------------------------------
// Dashboards

fn dashboards() -> Vec<Dashboard> {
    let all = dashboards_in(&repo().join("dashboards/dashboards"));
    assert!(all.len() >= 5, "five dashboards expected");
    all
}

/// Variable names a text refers to: `$name`, `${name}`, `${name:format}`, `[[name]]`.
fn referenced_variables(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let ident = |from: usize| {
        let len = b[from..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count();
        std::str::from_utf8(&b[from..from + len])
            .expect("ascii")
            .to_string()
    };
    for i in 0..b.len() {
        let name = match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => ident(i + 2),
            b'$' => ident(i + 1),
            b'[' if b.get(i + 1) == Some(&b'[') => ident(i + 2),
            _ => continue,
        };
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn datasource_uid(ds: &Value) -> Option<String> {
    match ds {
        Value::Null => None,
        Value::Object(_) => Some(ds["uid"].as_str().unwrap_or("").to_string()),
        other => Some(format!("<not a {{type, uid}} reference: {other}>")),
    }
}

fn check_model(d: &Dashboard, datasources: &BTreeSet<String>) -> Vec<String> {
    let mut errs = Vec::new();
    let m = &d.model;
    let f = &d.file;
    let uid = m["uid"].as_str().unwrap_or("");
    if uid.is_empty()
        || uid.len() > 40
        || !uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        errs.push(format!("{f}: uid {uid:?} must be 1-40 of [A-Za-z0-9-_]"));
    }
    if m["title"].as_str().unwrap_or("").is_empty() {
        errs.push(format!("{f}: no title"));
    }
    match m["schemaVersion"].as_i64() {
        Some(v) if (36..=41).contains(&v) => {}
        other => errs.push(format!("{f}: schemaVersion {other:?}, expected 36..=41")),
    }
    if !m["panels"].is_array() || !m["templating"]["list"].is_array() {
        errs.push(format!("{f}: panels and templating.list must be arrays"));
    }
    let ds_ok = |uid: &str| datasources.contains(uid) || BUILTIN_DATASOURCES.contains(&uid);

    // Variables.
    let mut names = HashSet::new();
    for v in d.variables() {
        let name = v["name"].as_str().unwrap_or("");
        if name.is_empty() || !names.insert(name.to_string()) {
            errs.push(format!("{f}: variable name {name:?} empty or repeated"));
        }
        if v["type"] == "query" {
            match datasource_uid(&v["datasource"]) {
                Some(u) if ds_ok(&u) => {}
                other => errs.push(format!(
                    "{f}: variable {name}: datasource {other:?} is not provisioned"
                )),
            }
        }
    }
    let variables = d.variable_names();
    let known = |n: &String| variables.contains(n) || BUILTIN_VARIABLES.contains(&n.as_str());

    // Panels.
    let mut ids = HashSet::new();
    let mut boxes: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    for p in d.panels() {
        let title = p["title"].as_str().unwrap_or("");
        let at = format!("{f}: panel {} {title:?}", p["id"]);
        match p["id"].as_i64() {
            Some(id) if id > 0 => {
                if !ids.insert(id) {
                    errs.push(format!("{at}: id repeated"));
                }
            }
            _ => errs.push(format!("{at}: id must be a positive integer")),
        }
        if p["type"].as_str().unwrap_or("").is_empty() {
            errs.push(format!("{at}: no type"));
        }
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_i64(),
            g["y"].as_i64(),
            g["w"].as_i64(),
            g["h"].as_i64(),
        );
        match (x, y, w, h) {
            (Some(x), Some(y), Some(w), Some(h))
                if x >= 0 && y >= 0 && w >= 1 && h >= 1 && x + w <= GRID_COLUMNS =>
            {
                if p["type"] != "row" || p["collapsed"] != true {
                    for (bx, by, bw, bh, other) in &boxes {
                        if x < bx + bw && *bx < x + w && y < by + bh && *by < y + h {
                            errs.push(format!("{at}: gridPos overlaps {other}"));
                        }
                    }
                    boxes.push((x, y, w, h, at.clone()));
                }
            }
            _ => errs.push(format!(
                "{at}: gridPos {g} needs integers x,y>=0, w,h>=1, x+w<={GRID_COLUMNS}"
            )),
        }
        if let Some(uid) = datasource_uid(&p["datasource"]) {
            if !ds_ok(&uid) {
                errs.push(format!("{at}: datasource {uid:?} is not provisioned"));
            }
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        let mut refs = HashSet::new();
        for t in &targets {
            let r = t["refId"].as_str().unwrap_or("");
            if r.is_empty() || !refs.insert(r.to_string()) {
                errs.push(format!("{at}: target refId {r:?} empty or repeated"));
            }
            let uid = datasource_uid(&t["datasource"]).or_else(|| datasource_uid(&p["datasource"]));
            match uid {
                Some(u) if ds_ok(&u) => {}
                other => errs.push(format!(
                    "{at}: target {r}: datasource {other:?} is not provisioned"
                )),
            }
            if t["query"].as_str().unwrap_or("").trim().is_empty() {
                errs.push(format!("{at}: target {r}: no Flux query"));
            }
        }
        if p["type"] != "text" && p["type"] != "row" && targets.is_empty() {
            errs.push(format!("{at}: a {} panel without queries", p["type"]));
        }
        if let Some(r) = p["repeat"].as_str() {
            if !variables.contains(r) {
                errs.push(format!("{at}: repeats over unknown variable {r}"));
            }
        }
        for n in referenced_variables(title) {
            if !known(&n) {
                errs.push(format!("{at}: title uses unknown variable ${n}"));
            }
        }
    }
    for (at, q) in d.queries() {
        for n in referenced_variables(&q) {
            if !known(&n) {
                errs.push(format!("{at}: query uses unknown variable ${n}"));
            }
        }
    }
    errs
}

#[test]
fn dashboards_follow_the_grafana_model() {
    let datasources = provisioned_datasources();
    let all = dashboards();
    let mut errs = Vec::new();
    let mut uids = HashSet::new();
    for d in &all {
        errs.extend(check_model(d, &datasources));
        let uid = d.model["uid"].as_str().unwrap_or("").to_string();
        if !uids.insert(uid.clone()) {
            errs.push(format!("{}: uid {uid} used by another dashboard", d.file));
        }
        let names = d.variable_names();
        for v in ["site", "machine"] {
            if !names.contains(v) {
                errs.push(format!("{}: no template variable {v}", d.file));
            }
        }
    }
    assert!(errs.is_empty(), "dashboard model:\n{}", errs.join("\n"));
}

#[test]
fn model_check_catches_broken_dashboards() {
    let datasources = provisioned_datasources();
    let model = serde_json::json!({
        "uid": "x y", "title": "t", "schemaVersion": 12,
        "templating": {"list": [{"name": "site", "type": "query", "query": "q",
                                 "datasource": {"type": "influxdb", "uid": "nope"}}]},
        "panels": [
            {"id": 1, "type": "stat", "title": "a $zone", "gridPos": {"x": 20, "y": 0, "w": 6, "h": 2},
             "datasource": {"uid": "fabmeter-influx"},
             "targets": [{"refId": "A", "query": "from(bucket: \"${nosuch}\")"}]},
            {"id": 1, "type": "stat", "title": "b", "gridPos": {"x": 0, "y": 0, "w": 21, "h": 2},
             "targets": [{"refId": "A", "query": "x", "datasource": "InfluxDB"}]},
            {"id": 3, "type": "timeseries", "title": "c", "gridPos": {"x": 0, "y": 9, "w": 4, "h": 2},
             "repeat": "machine"}
        ]
    });
    let errs = check_model(
        &Dashboard {
            file: "bad.json".into(),
            model,
        },
        &datasources,
    )
    .join("\n");
    for want in [
        "uid \"x y\"",
        "schemaVersion",
        "variable site: datasource",
        "x+w<=24",
        "id repeated",
        "not a {type, uid} reference",
        "without queries",
        "unknown variable machine",
        "title uses unknown variable $zone",
        "query uses unknown variable $nosuch",
    ] {
        assert!(errs.contains(want), "expected {want:?} in:\n{errs}");
    }
    let errs = check_model(
        &Dashboard {
            file: "overlap.json".into(),
            model: serde_json::json!({"uid": "o", "title": "o", "schemaVersion": 39,
                "templating": {"list": []},
                "panels": [{"id": 1, "type": "text", "title": "a", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 4}},
                           {"id": 2, "type": "text", "title": "b", "gridPos": {"x": 6, "y": 2, "w": 12, "h": 4}}]}),
        },
        &datasources,
    );
    assert!(errs.iter().any(|e| e.contains("overlaps")), "{errs:?}");
}

// ---------------------------------------------------------------------------------------------
// Names used by the Flux queries

/// Problems of one query against the schema.
fn check_names(query: &str, s: &Schema) -> Vec<String> {
    let n = names_of(query);
    let mut errs = n.errors.clone();
    for m in &n.measurements {
        if !s.measurements.contains_key(m) {
            errs.push(format!("measurement {m:?} is not in docs/SCHEMA.md"));
        }
    }
    let named: Vec<&(BTreeSet<String>, BTreeSet<String>)> = n
        .measurements
        .iter()
        .filter_map(|m| s.measurements.get(m))
        .collect();
    let fields_here: BTreeSet<&String> = named.iter().flat_map(|(_, f)| f.iter()).collect();
    let tags_here: BTreeSet<&String> = named.iter().flat_map(|(t, _)| t.iter()).collect();
    for f in &n.fields {
        if !s.all_fields().contains(f) {
            errs.push(format!("field {f:?} is not in docs/SCHEMA.md"));
        } else if !fields_here.contains(f) {
            errs.push(format!(
                "field {f:?} belongs to none of the measurements the query names {:?}",
                n.measurements
            ));
        }
    }
    let all_tags = s.all_tags();
    let all_fields = s.all_fields();
    for c in &n.columns {
        let known = STANDARD_COLUMNS.contains(&c.as_str())
            || all_tags.contains(c)
            || all_fields.contains(c)
            || n.declared.contains(c);
        if !known {
            errs.push(format!(
                "column {c:?} is neither a tag or field of docs/SCHEMA.md nor created by the query"
            ));
        } else if !s.common_tags.contains(c)
            && all_tags.contains(c)
            && !n.declared.contains(c)
            && !tags_here.contains(c)
        {
            errs.push(format!(
                "tag {c:?} belongs to none of the measurements the query names {:?}",
                n.measurements
            ));
        }
    }
    for t in &n.tag_args {
        if !all_tags.contains(t) {
            errs.push(format!("tag {t:?} is not in docs/SCHEMA.md"));
        }
    }
    if n.reads_data && n.measurements.is_empty() {
        errs.push("from() without a filter on r._measurement".into());
    }
    if n.reads_data && n.fields.is_empty() {
        errs.push("from() without a filter on r._field".into());
    }
    for b in &n.buckets {
        if b != "v.defaultBucket" {
            errs.push(format!(
                "bucket: {b}: use v.defaultBucket (the provisioned datasource's bucket)"
            ));
        }
    }
    errs
}

#[test]
fn queries_use_only_what_the_schema_lists() {
    let s = schema();
    let mut errs = Vec::new();
    let mut count = 0;
    for d in dashboards() {
        for (at, q) in d.queries() {
            count += 1;
            errs.extend(
                check_names(&q, &s)
                    .into_iter()
                    .map(|e| format!("{at}: {e}")),
            );
        }
    }
    assert!(count >= 20, "only {count} queries found");
    assert!(
        errs.is_empty(),
        "queries vs docs/SCHEMA.md:\n{}",
        errs.join("\n")
    );
}

#[test]
fn name_check_catches_invented_names() {
    let s = schema();
    let ok = r#"from(bucket: v.defaultBucket)
  |> range(start: v.timeRangeStart)
  |> filter(fn: (r) => r._measurement == "session" and r._field == "busy_s" and r.member =~ /^a|b$/)
  |> map(fn: (r) => ({r with hours: float(v: r._value) / 3600.0}))
  |> group(columns: ["machine", "hours", "reason"])"#;
    assert_eq!(check_names(ok, &s), Vec::<String>::new());
    for (query, want) in [
        (
            r#"from(bucket: v.defaultBucket) |> filter(fn: (r) => r._measurement == "sessions" and r._field == "busy_s")"#,
            "measurement \"sessions\"",
        ),
        (
            r#"from(bucket: v.defaultBucket) |> filter(fn: (r) => r._measurement == "fault" and r._field == "busy_s")"#,
            "field \"busy_s\" belongs to none",
        ),
        (
            r#"from(bucket: v.defaultBucket) |> filter(fn: (r) => r._measurement == "fault" and r._field == "charge")"#,
            "field \"charge\" is not",
        ),
        (
            r#"from(bucket: v.defaultBucket) |> filter(fn: (r) => r._measurement == "fault" and r._field == "count" and r.tool == "x")"#,
            "column \"tool\"",
        ),
        (
            r#"from(bucket: v.defaultBucket) |> filter(fn: (r) => r._measurement == "fault" and r._field == "count") |> group(columns: ["member"])"#,
            "tag \"member\" belongs to none",
        ),
        (
            r#"from(bucket: v.defaultBucket) |> filter(fn: (r) => r["_measurement"] == "fault")"#,
            "r[\"...\"]",
        ),
        (
            r#"from(bucket: v.defaultBucket) |> filter(fn: (x) => x._measurement == "fault")"#,
            "lambda parameter `x`",
        ),
        (
            r#"from(bucket: v.defaultBucket) |> filter(fn: (r) => r._measurement =~ /fault/)"#,
            "compare r._measurement",
        ),
        (
            r#"from(bucket: "other") |> filter(fn: (r) => r._measurement == "fault" and r._field == "count")"#,
            "use v.defaultBucket",
        ),
        (
            r#"import "influxdata/influxdb/schema" schema.tagValues(bucket: v.defaultBucket, tag: "room")"#,
            "tag \"room\"",
        ),
    ] {
        let errs = check_names(query, &s).join("\n");
        assert!(errs.contains(want), "{query}\nexpected {want:?} in: {errs}");
    }
}

// ---------------------------------------------------------------------------------------------
// A real Flux parser

fn flux_checker() -> Option<PathBuf> {
    let tools = repo().join("dashboards/tools");
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let package = tools.join("node_modules/@influxdata/flux-lsp-node/package.json");
    if node_ok && package.is_file() {
        return Some(tools.join("check-flux.js"));
    }
    let why = if node_ok {
        format!("{} is missing", package.display())
    } else {
        "`node` is not on PATH".to_string()
    };
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(
        !ci,
        "CI is set, so the Flux queries must be checked with the real parser, but {why}. \
         Install node (v18 or later) and run `{NPM_INSTALL}` from the repository root."
    );
    eprintln!(
        "SKIPPED: Flux parser check ({why}); run `{NPM_INSTALL}` to enable it (CI=true makes this a failure)"
    );
    None
}

fn run_checker(script: &Path, dir: &Path) -> (bool, String, String) {
    let out = Command::new("node")
        .arg(script)
        .arg(dir)
        .output()
        .expect("run node");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flux_queries_parse_with_the_flux_parser() {
    let Some(script) = flux_checker() else {
        return;
    };
    let dir = repo().join("dashboards/dashboards");
    let expected: usize = dashboards().iter().map(|d| d.queries().len()).sum();
    let (ok, stdout, stderr) = run_checker(&script, &dir);
    assert!(ok, "Flux parser refuses queries:\n{stderr}\n{stdout}");
    assert!(
        stdout.contains(&format!("flux-check: {expected} queries OK")),
        "the checker must check all {expected} queries: {stdout}"
    );

    // The checker is not a no-op: a dashboard with a misspelt function and a wrongly typed
    // argument is refused, with the reason.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut d = dashboards().remove(0);
    let panels = d.model["panels"].as_array_mut().expect("panels");
    let target = panels
        .iter_mut()
        .find(|p| p["targets"].is_array())
        .expect("a panel with a query");
    let q = target["targets"][0]["query"].as_str().expect("query");
    let broken = q.replacen("|> range(", "|> rnage(", 1) + "\n  |> limit(n: \"3\")";
    target["targets"][0]["query"] = Value::String(broken);
    std::fs::write(
        tmp.path().join("broken.json"),
        serde_json::to_string(&d.model).expect("json"),
    )
    .expect("write");
    let (ok, _, stderr) = run_checker(&script, tmp.path());
    assert!(!ok, "a broken query must fail the check");
    assert!(
        stderr.contains("rnage") && stderr.contains("expected int but found string"),
        "{stderr}"
    );
}
