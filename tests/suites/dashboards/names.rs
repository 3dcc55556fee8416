//! What the dashboards' Flux queries and docs/SCHEMA.md name, shared by the dashboards suite and
//! the read-back test of the root package (`tests/suites/series`), which includes this file with
//! `#[path]`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Columns every Flux table may carry.
pub const STANDARD_COLUMNS: &[&str] = &[
    "_time",
    "_value",
    "_field",
    "_measurement",
    "_start",
    "_stop",
];

#[derive(Debug, Default)]
pub struct Schema {
    /// Tags on every point.
    pub common_tags: BTreeSet<String>,
    /// Measurement → (extra tags, fields).
    pub measurements: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
}

impl Schema {
    pub fn all_tags(&self) -> BTreeSet<String> {
        let mut t = self.common_tags.clone();
        for (tags, _) in self.measurements.values() {
            t.extend(tags.iter().cloned());
        }
        t
    }

    pub fn all_fields(&self) -> BTreeSet<String> {
        self.measurements
            .values()
            .flat_map(|(_, f)| f.iter().cloned())
            .collect()
    }
}

/// Backticked words outside parentheses: "`a` (x, `y`), `b`" → [a, b].
pub fn top_level_code(cell: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut rest = cell;
    while let Some(c) = rest.chars().next() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '`' => {
                let end = rest[1..].find('`').map(|i| i + 1).unwrap_or(rest.len());
                if depth == 0 {
                    out.push(rest[1..end].to_string());
                }
                rest = &rest[(end + 1).min(rest.len())..];
                continue;
            }
            _ => {}
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

pub fn parse_schema(md: &str) -> Schema {
    let mut schema = Schema::default();
    let mut header: Option<Vec<String>> = None;
    for line in md.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            header = None;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        let Some(h) = &header else {
            header = Some(cells.iter().map(|c| c.to_lowercase()).collect());
            continue;
        };
        let col = |name: &str| h.iter().position(|c| c == name).map(|i| cells[i]);
        match (h.first().map(String::as_str), col("fields")) {
            (Some("tag"), _) => schema.common_tags.extend(top_level_code(cells[0])),
            (Some("measurement"), Some(fields)) => {
                let name = top_level_code(cells[0]);
                assert_eq!(
                    name.len(),
                    1,
                    "SCHEMA.md row without one measurement: {line}"
                );
                let tags = top_level_code(col("extra tags").unwrap_or(""));
                schema.measurements.insert(
                    name[0].clone(),
                    (
                        tags.into_iter().collect(),
                        top_level_code(fields).into_iter().collect(),
                    ),
                );
            }
            _ => {}
        }
    }
    assert!(
        !schema.common_tags.is_empty() && !schema.measurements.is_empty(),
        "docs/SCHEMA.md: found no tag table or no measurement table: {schema:?}"
    );
    schema
}

pub struct Dashboard {
    pub file: String,
    pub model: Value,
}

impl Dashboard {
    /// Every panel, rows' nested panels included.
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
            for p in v.as_array().into_iter().flatten() {
                out.push(p);
                walk(&p["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.model["panels"], &mut out);
        out
    }

    pub fn variables(&self) -> Vec<&Value> {
        self.model["templating"]["list"]
            .as_array()
            .map(|l| l.iter().collect())
            .unwrap_or_default()
    }

    pub fn variable_names(&self) -> BTreeSet<String> {
        self.variables()
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// (where, Flux text) of every query: panel targets and query variables.
    pub fn queries(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for v in self.variables() {
            if v["type"] == "query" {
                let q = v["query"].as_str().or_else(|| v["query"]["query"].as_str());
                if let Some(q) = q {
                    out.push((
                        format!("{}: variable {}", self.file, v["name"]),
                        q.to_owned(),
                    ));
                }
            }
        }
        for p in self.panels() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(q) = t["query"].as_str() {
                    out.push((
                        format!(
                            "{}: panel {} {} target {}",
                            self.file, p["id"], p["title"], t["refId"]
                        ),
                        q.to_owned(),
                    ));
                }
            }
        }
        out
    }
}

pub fn dashboards_in(dir: &Path) -> Vec<Dashboard> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let model = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            Dashboard {
                file: path.file_name().expect("name").to_string_lossy().into(),
                model,
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Ident(String),
    Str(String),
    Regex,
    Num,
    Punct(&'static str),
}

pub const PUNCTS: &[&str] = &[
    "|>", "=>", "==", "!=", "=~", "!~", "<=", ">=", "<-", "(", ")", "[", "]", "{", "}", ",", ":",
    ".", "=", "+", "-", "*", "/", "%", "<", ">", "^", "?",
];

/// Flux tokens, enough to find names: strings (with `${...}` kept as text), regex literals after
/// `=~`/`!~`, identifiers, numbers and durations, punctuation; comments skipped.
pub fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if src[i..].starts_with("//") {
            i += src[i..].find('\n').unwrap_or(src.len() - i);
        } else if c == b'"' {
            let mut s = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated string".into()),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        s.push(*b.get(i + 1).ok_or("bad escape")? as char);
                        i += 2;
                    }
                    Some(_) => {
                        let ch = src[i..].chars().next().expect("char");
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if c == b'/' && matches!(out.last(), Some(Tok::Punct("=~" | "!~"))) {
            i += 1;
            while i < b.len() && b[i] != b'/' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            if i >= b.len() {
                return Err("unterminated regex".into());
            }
            i += 1;
            out.push(Tok::Regex);
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let len = b[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                .count();
            out.push(Tok::Ident(src[i..i + len].to_string()));
            i += len;
        } else if c.is_ascii_digit() {
            let len = b[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(**c, b'.' | b':' | b'-'))
                .count();
            // `1.0 / 60.0` vs time literals: a number followed by ':' only inside time literals.
            let tok = &src[i..i + len];
            let len = if tok.contains('T') {
                len
            } else {
                tok.find([':', '-']).unwrap_or(len)
            };
            out.push(Tok::Num);
            i += len;
        } else if let Some(p) = PUNCTS.iter().find(|p| src[i..].starts_with(**p)) {
            out.push(Tok::Punct(p));
            i += p.len();
        } else {
            return Err(format!(
                "unexpected character {:?} at byte {i}",
                &src[i..i + 1]
            ));
        }
    }
    Ok(out)
}

/// What one query names.
#[derive(Debug, Default)]
pub struct Names {
    pub measurements: BTreeSet<String>,
    pub fields: BTreeSet<String>,
    /// Columns read: `r.x`, `group(columns: [...])`, `pivot(rowKey:...)`, `sum(column:...)`...
    pub columns: BTreeSet<String>,
    /// `schema.tagValues(tag: "...")`.
    pub tag_args: BTreeSet<String>,
    /// Columns the query creates: record keys in map/reduce, `columnName:`, `as:`.
    pub declared: BTreeSet<String>,
    pub buckets: Vec<String>,
    pub reads_data: bool,
    pub errors: Vec<String>,
}

pub const COLUMN_ARGS: &[&str] = &[
    "columns",
    "rowKey",
    "columnKey",
    "valueColumn",
    "column",
    "timeColumn",
    "stopColumn",
];
pub const LAMBDA_PARAMS: &[&str] = &["r", "accumulator"];

pub fn names_of(query: &str) -> Names {
    let mut n = Names::default();
    let toks = match lex(query) {
        Ok(t) => t,
        Err(e) => {
            n.errors.push(format!("cannot tokenize: {e}"));
            return n;
        }
    };
    let ident = |i: usize| match toks.get(i) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let punct = |i: usize, p: &str| matches!(toks.get(i), Some(Tok::Punct(q)) if *q == p);
    let string = |i: usize| match toks.get(i) {
        Some(Tok::Str(s)) => Some(s.clone()),
        _ => None,
    };
    // Open delimiters: '(', '[', 'r' (record literal), 'b' (block).
    let mut stack: Vec<char> = Vec::new();
    for i in 0..toks.len() {
        match &toks[i] {
            Tok::Punct("(") => stack.push('('),
            Tok::Punct("[") => stack.push('['),
            Tok::Punct("{") => {
                let block = i > 0 && punct(i - 1, "=>");
                stack.push(if block { 'b' } else { 'r' });
            }
            Tok::Punct(")" | "]" | "}") => {
                stack.pop();
            }
            Tok::Punct("=>") => {
                // Lambda parameters: `(a, b) =>`; only r and accumulator, so that `r.x` below sees
                // every column access.
                if i == 0 || !punct(i - 1, ")") {
                    continue;
                }
                let mut j = i - 1;
                let mut depth = 0;
                loop {
                    if punct(j, ")") {
                        depth += 1;
                    } else if punct(j, "(") {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    } else if depth == 1 && (punct(j - 1, "(") || punct(j - 1, ",")) {
                        if let Some(p) = ident(j) {
                            if !LAMBDA_PARAMS.contains(&p) {
                                n.errors.push(format!(
                                    "lambda parameter `{p}`: name it `r` (or `accumulator`) so its columns are checked"
                                ));
                            }
                        }
                    }
                    if j == 0 {
                        break;
                    }
                    j -= 1;
                }
            }
            Tok::Ident(id) => {
                let prev_dot = i > 0 && punct(i - 1, ".");
                if id == "from" && punct(i + 1, "(") && !prev_dot {
                    n.reads_data = true;
                }
                if id == "r" && !prev_dot {
                    if punct(i + 1, "[") {
                        n.errors
                            .push("`r[\"...\"]`: write `r.name` so the name is checked".into());
                    }
                    if punct(i + 1, ".") {
                        let Some(col) = ident(i + 2) else { continue };
                        let cmp_eq = punct(i + 3, "==");
                        match col {
                            "_measurement" | "_field" => {
                                let Some(v) = string(i + 4).filter(|_| cmp_eq) else {
                                    n.errors.push(format!(
                                        "compare r.{col} with == and a string literal so the name is checked"
                                    ));
                                    continue;
                                };
                                if col == "_measurement" {
                                    n.measurements.insert(v);
                                } else {
                                    n.fields.insert(v);
                                }
                            }
                            _ => {
                                n.columns.insert(col.to_string());
                            }
                        }
                    }
                }
                // Record keys: `{k: ..`, `, k: ..`, `{r with k: ..` directly inside a record.
                if punct(i + 1, ":") && stack.last() == Some(&'r') && i > 0 {
                    let after_with = matches!(toks.get(i - 1), Some(Tok::Ident(w)) if w == "with");
                    if punct(i - 1, "{") || punct(i - 1, ",") || after_with {
                        n.declared.insert(id.clone());
                    }
                }
                // Named arguments that name columns.
                if punct(i + 1, ":") && stack.last() == Some(&'(') {
                    let a = id.as_str();
                    if let Some(s) = string(i + 2) {
                        match a {
                            "columnName" | "as" => {
                                n.declared.insert(s);
                            }
                            "tag" => {
                                n.tag_args.insert(s);
                            }
                            _ if COLUMN_ARGS.contains(&a) => {
                                n.columns.insert(s);
                            }
                            _ => {}
                        }
                    } else if punct(i + 2, "[") && COLUMN_ARGS.contains(&a) {
                        let mut j = i + 3;
                        while let Some(s) = string(j) {
                            n.columns.insert(s);
                            j += if punct(j + 1, ",") { 2 } else { 1 };
                        }
                        if !punct(j, "]") {
                            n.errors.push(format!("{a}: list only string literals"));
                        }
                    }
                    if a == "bucket" {
                        let b: Vec<String> = toks[i + 2..]
                            .iter()
                            .take(3)
                            .map(|t| match t {
                                Tok::Ident(s) => s.clone(),
                                Tok::Str(s) => format!("{s:?}"),
                                Tok::Punct(p) => (*p).to_string(),
                                _ => "?".into(),
                            })
                            .collect();
                        n.buckets.push(b.concat());
                    }
                }
            }
            _ => {}
        }
    }
    n
}
