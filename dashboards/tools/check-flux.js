#!/usr/bin/env node
// Checks every Flux query of the fabmeter dashboards with InfluxData's own Flux parser and type
// checker: the flux-lsp language server compiled to WASM (@influxdata/flux-lsp-node). A query is
// good when the server publishes no error diagnostic for it (syntax errors, undefined identifiers,
// unknown functions or packages, wrong argument types) and `is_valid_flux` agrees.
//
//   npm ci --prefix dashboards/tools            # once
//   node dashboards/tools/check-flux.js [DIR]   # DIR: the dashboards JSON (default ../dashboards)
//
// Grafana replaces template variables and the v.* macros before sending a query; this script does
// the same with sample values: `${site}`, `${machine:regex}`... become sample strings, and
// `v = {timeRangeStart: <time>, timeRangeStop: <time>, windowPeriod: <duration>, defaultBucket:
// <string>, organization: <string>}` is declared after the imports, with the types Grafana's
// substitution produces.
//
// Exit status: 0 all good (last line `flux-check: N queries OK`), 1 a query is bad, 2 usage or
// input error, 3 the package is not installed.
"use strict";

const fs = require("fs");
const path = require("path");

let flux;
try {
  flux = require("@influxdata/flux-lsp-node");
} catch (e) {
  console.error(
    "flux-check: @influxdata/flux-lsp-node is not installed; run `npm ci --prefix dashboards/tools` " +
      `(from the repository root). (${e.message.split("\n")[0]})`,
  );
  process.exit(3);
}

const dir = path.resolve(process.argv[2] || path.join(__dirname, "..", "dashboards"));

// Sample values per variable name and Grafana format.
const SAMPLES = { site: ["atelier-lyon"], machine: ["laser-1", "cnc-1"], tz: ["Europe/Paris"] };

function escapeRegex(s) {
  return s.replace(/[\\^$.*+?()[\]{}|/]/g, "\\$&");
}

function render(values, format) {
  switch (format) {
    case "regex":
      return values.length === 1 ? escapeRegex(values[0]) : `(${values.map(escapeRegex).join("|")})`;
    case "pipe":
      return values.join("|");
    case "csv":
      return values.join(",");
    case "json":
      return JSON.stringify(values);
    case "doublequote":
      return values.map((v) => `"${v}"`).join(",");
    case undefined:
    case "raw":
    case "text":
      return values.join(",");
    default:
      return null;
  }
}

// Replaces `${name}`, `${name:format}`, `$name` and `[[name]]`; returns {text, problems}.
function interpolate(query, variables) {
  const problems = [];
  const sub = (whole, name, format) => {
    if (!variables.has(name)) {
      problems.push(`uses $${name}, which is not a template variable of the dashboard`);
      return whole;
    }
    const values = SAMPLES[name] || [`sample-${name}`];
    const out = render(values, format);
    if (out === null) {
      problems.push(`unknown variable format ${format} in ${whole}`);
      return whole;
    }
    return out;
  };
  let text = query.replace(/\$\{(\w+)(?::(\w+))?\}/g, sub);
  text = text.replace(/\[\[(\w+)(?::(\w+))?\]\]/g, sub);
  text = text.replace(/\$(\w+)/g, (whole, name) => sub(whole, name, undefined));
  return { text, problems };
}

const PREAMBLE =
  'v = {timeRangeStart: 2026-01-05T00:00:00Z, timeRangeStop: 2026-02-05T00:00:00Z, windowPeriod: 1m, defaultBucket: "fabmeter", organization: "fabmeter"}';

// Declares `v` after the package clause and imports (Flux requires them first). Returns the script
// and the 0-based line index of the inserted line.
function withMacros(text) {
  const lines = text.split("\n");
  let at = 0;
  for (let i = 0; i < lines.length; i++) {
    const t = lines[i].trim();
    if (t === "" || t.startsWith("//") || t.startsWith("import ") || t.startsWith("package ")) {
      if (t.startsWith("import ") || t.startsWith("package ")) at = i + 1;
      continue;
    }
    break;
  }
  lines.splice(at, 0, PREAMBLE);
  return { script: lines.join("\n"), inserted: at };
}

function collect(file) {
  const model = JSON.parse(fs.readFileSync(file, "utf8"));
  const variables = new Set(((model.templating || {}).list || []).map((v) => v.name));
  const out = [];
  for (const v of (model.templating || {}).list || []) {
    if (v.type !== "query") continue;
    const q = typeof v.query === "string" ? v.query : (v.query || {}).query;
    if (typeof q === "string") out.push({ where: `variable ${v.name}`, query: q });
  }
  const walk = (panels) => {
    for (const p of panels || []) {
      for (const t of p.targets || []) {
        if (typeof t.query === "string") {
          out.push({ where: `panel ${p.id} "${p.title}" target ${t.refId}`, query: t.query });
        }
      }
      walk(p.panels);
    }
  };
  walk(model.panels);
  return { variables, queries: out };
}

async function main() {
  let files;
  try {
    files = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith(".json"))
      .sort();
  } catch (e) {
    console.error(`flux-check: cannot read ${dir}: ${e.message}`);
    process.exit(2);
  }
  if (files.length === 0) {
    console.error(`flux-check: no dashboard JSON in ${dir}`);
    process.exit(2);
  }

  const docs = [];
  const failures = [];
  for (const f of files) {
    let collected;
    try {
      collected = collect(path.join(dir, f));
    } catch (e) {
      console.error(`flux-check: ${f}: ${e.message}`);
      process.exit(2);
    }
    collected.queries.forEach((q, i) => {
      const { text, problems } = interpolate(q.query, collected.variables);
      for (const p of problems) failures.push(`${f}: ${q.where}: ${p}`);
      const { script, inserted } = withMacros(text);
      docs.push({ uri: `file:///flux-check/${docs.length}/query.flux`, file: f, where: q.where, script, inserted });
    });
  }

  // One document at a time, each in its own folder: the server treats the files of a folder as
  // one package (a second query would "reassign" v) and republishes diagnostics as files change,
  // so every error diagnostic published for a document is kept.
  const lsp = new flux.Lsp();
  const diagnostics = new Map();
  lsp.onMessage((raw) => {
    const msg = JSON.parse(raw);
    if (msg.method === "textDocument/publishDiagnostics") {
      const seen = diagnostics.get(msg.params.uri) || [];
      diagnostics.set(msg.params.uri, seen.concat(msg.params.diagnostics));
    }
  });
  lsp.run().catch((e) => {
    console.error(`flux-check: the Flux language server stopped: ${e}`);
    process.exit(2);
  });
  const send = (m) => lsp.send(JSON.stringify({ jsonrpc: "2.0", ...m }));
  await send({ id: 1, method: "initialize", params: { capabilities: {} } });
  await send({ method: "initialized", params: {} });
  for (const d of docs) {
    await send({
      method: "textDocument/didOpen",
      params: { textDocument: { uri: d.uri, languageId: "flux", version: 1, text: d.script } },
    });
    const deadline = Date.now() + 10000;
    while (!diagnostics.has(d.uri) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 5));
    }
    await send({ method: "textDocument/didClose", params: { textDocument: { uri: d.uri } } });
  }

  for (const d of docs) {
    const lines = d.script.split("\n");
    const diags = diagnostics.get(d.uri);
    if (diags === undefined) {
      failures.push(`${d.file}: ${d.where}: the language server published no diagnostics (timeout)`);
      continue;
    }
    const errors = diags.filter((x, i) => {
      const isError = x.severity === 1 || x.severity === undefined;
      const first = diags.findIndex((y) => JSON.stringify(y) === JSON.stringify(x)) === i;
      return isError && first;
    });
    for (const x of errors) {
      const line = x.range.start.line;
      const shown = line > d.inserted ? line : line + 1; // 1-based line of the query as written
      const where = line === d.inserted ? "(Grafana macros v.*)" : `line ${shown}:${x.range.start.character + 1}`;
      failures.push(`${d.file}: ${d.where}: ${where}: ${x.message}\n    | ${(lines[line] || "").trim()}`);
    }
    const valid = flux.is_valid_flux(d.script);
    if (errors.length === 0 && !valid) {
      failures.push(`${d.file}: ${d.where}: is_valid_flux refuses the query (no diagnostic detail)`);
    }
  }

  if (failures.length > 0) {
    const unique = [...new Set(failures)];
    console.error(`flux-check: ${unique.length} problem(s) in ${dir}:`);
    for (const f of unique) console.error(`  ${f}`);
    process.exit(1);
  }
  console.log(`flux-check: ${docs.length} queries OK`);
  process.exit(0);
}

main().catch((e) => {
  console.error(`flux-check: ${e.stack || e}`);
  process.exit(2);
});
