//! Cost recovery and the accounting export against real ledgers: a workshop's October and
//! November (sessions of members and of an unknown badge, services with and without a cost,
//! invoices, a credit note) on a SQLite file and on a private PostgreSQL cluster. Every figure is
//! checked against an expectation computed here from the workload, independently of the library.

use std::collections::HashMap;

use fabmeter_collector::api;
use fabmeter_collector::billing::invoice::{Billing, DocKind};
use fabmeter_collector::billing::Period;
use fabmeter_collector::config::Config;
use fabmeter_collector::costs::{self, CostReport, CostRow};
use fabmeter_collector::ledger::{Ledger, MachineInfo, PgLedger, Record, SqliteLedger};

#[path = "support/ledger.rs"]
#[allow(dead_code)]
mod support;
use support::closed_session;
#[path = "support/sites.rs"]
#[allow(dead_code)]
mod sites;
use sites::{ms, seller, SiteFile, Tariff, ALICE, BOB};
#[path = "support/browser.rs"]
#[allow(dead_code)]
mod browser;
use browser::{board, to_fixed, Board};

const STRANGER: &str = "0123456789abcdef";

/// The site: a laser, a 3D printer and a saw (without a cost entry), alice (a name with an
/// accent, for the FEC's encoding) and bob, a seller without Factur-X, a maintenance plan and
/// the machines' costs.
fn site_text() -> String {
    SiteFile::new("atelier-lyon")
        .machine("laser-1", "Laser", "laser")
        .machine("printer-1", "", "printer-3d")
        .machine("saw-1", "", "saw")
        .member("alice", "Alice Martin-Léger", ALICE)
        .member("bob", "Bob Durand", BOB)
        .billing("UTC", false, seller())
        .tariff(Tariff::new("laser", "2026-01-01", "0.50"))
        .tariff(
            Tariff::new("printer-3d", "2026-01-01", "0.02")
                .setup("1.00")
                .vat("5.5"),
        )
        .toml(
            r#"
[[maintenance.plans]]
name = "lens"
kinds = ["laser"]
every_busy_h = 40.0

[costs]
opening_hours = "Mon-Fri 08:00-19:00, Sat 09:00-13:00"
[[costs.machines]]
machine = "laser-1"
purchase_price_cents = 1200000
purchase_date = "2026-01-01"
life_months = 60
consumables_cents_per_busy_h = 150
[[costs.machines]]
machine = "printer-1"
purchase_price_cents = 250000
purchase_date = "2026-10-15"
life_months = 36
"#,
        )
        .text()
}

fn config(dir: &std::path::Path) -> Config {
    sites::config(dir, &site_text())
}

/// One session of the workload: machine, boot, seq of its start, badge, start, busy seconds.
type S = (&'static str, u32, u32, &'static str, &'static str, u32);

const OCTOBER: [S; 2] = [
    ("laser-1", 1, 1, ALICE, "2026-10-20T09:00:00Z", 3_600),
    ("printer-1", 1, 1, BOB, "2026-10-20T10:00:00Z", 7_200),
];
const NOVEMBER: [S; 6] = [
    ("laser-1", 1, 3, ALICE, "2026-11-03T09:00:00Z", 5_400),
    ("laser-1", 1, 5, BOB, "2026-11-05T14:00:00Z", 1_830),
    ("laser-1", 1, 7, ALICE, "2026-11-20T08:30:00Z", 900),
    ("laser-1", 1, 9, STRANGER, "2026-11-21T10:00:00Z", 1_200),
    ("printer-1", 1, 3, ALICE, "2026-11-10T08:00:00Z", 36_000),
    ("printer-1", 1, 5, BOB, "2026-11-12T08:00:00Z", 18_000),
];
/// After the range: counts nowhere.
const DECEMBER: [S; 1] = [("laser-1", 1, 11, ALICE, "2026-12-01T10:00:00Z", 600)];

/// Price of a session, computed here: laser 0.50 per started busy minute; printer 0.02 per
/// started minute plus 1.00; saw and unknown badges: not billed.
fn price(s: &S) -> i64 {
    let minutes = i64::from(s.5.div_ceil(60));
    match (s.0, s.3) {
        (_, STRANGER) => 0,
        ("laser-1", _) => minutes * 50,
        _ => minutes * 2 + 100,
    }
}

fn records(sessions: &[S]) -> Vec<Record> {
    let mut out = Vec::new();
    for &(machine, boot, seq, badge, start, busy_s) in sessions {
        let (start, end) = closed_session(machine, boot, seq, badge, ms(start), busy_s, 0);
        out.extend([start, end]);
    }
    out
}

fn machines(c: &Config) -> Vec<MachineInfo> {
    c.machines
        .iter()
        .map(|m| MachineInfo {
            id: m.id.clone(),
            name: m.name.clone(),
            kind: m.kind.clone(),
            source: "config".into(),
        })
        .collect()
}

/// Laser services: 50.00 in October, 120.00 and one without a cost in November.
const SERVICES: [(&str, Option<u64>); 3] = [
    ("2026-10-25T12:00:00Z", Some(5_000)),
    ("2026-11-15T12:00:00Z", Some(12_000)),
    ("2026-11-25T12:00:00Z", None),
];

/// The workload on a ledger: sessions, services, October and November invoiced, Bob's November
/// invoice cancelled by a credit note (its sessions wait, unbilled, for December's run).
fn workload(l: &mut dyn Ledger, c: &Config) -> Billing {
    let billing = Billing::from_config(c).expect("rules").expect("billing");
    l.register_machines(&machines(c), ms("2026-01-01T00:00:00Z"))
        .expect("register");
    let mut all = records(&OCTOBER);
    all.extend(records(&NOVEMBER));
    all.extend(records(&DECEMBER));
    l.commit(&all).expect("commit");
    for (at, cost) in SERVICES {
        l.record_service("laser-1", "lens", "sam", "lens", cost, ms(at))
            .expect("service")
            .expect("known machine");
    }
    for (p, now) in [
        ("2026-10", "2026-11-02T09:00:00Z"),
        ("2026-11", "2026-12-02T09:00:00Z"),
    ] {
        let period = Period::parse(p).expect("period");
        l.issue_invoices(&billing, period, ms(now), false)
            .expect("issue");
    }
    let bob = l
        .documents()
        .expect("docs")
        .into_iter()
        .find(|d| d.buyer.id == "bob" && d.period.to_string() == "2026-11")
        .expect("bob's November invoice");
    l.credit_note(
        &billing,
        &bob.number,
        "wrong badge",
        ms("2026-12-03T09:00:00Z"),
    )
    .expect("credit note");
    billing
}

fn day_ms(days: i64) -> i128 {
    i128::from(days) * 86_400_000
}

/// `a / b` rounded half up (a, b > 0).
fn round(a: i128, b: i128) -> i64 {
    i64::try_from((2 * a + b) / (2 * b)).expect("fits")
}

/// The expected report over November, computed from the workload.
fn check_november(r: &CostReport) {
    let from = ms("2026-11-01T00:00:00Z");
    let to = ms("2026-12-01T00:00:00Z");
    assert_eq!((r.from_ms, r.to_ms), (from, to));
    // November 2026: the 1st is a Sunday, so 5 Sundays, 4 Saturdays and 21 weekdays; open 11 h
    // on weekdays and 4 h on Saturdays.
    let opening_s: u64 = (21 * 11 + 4 * 4) * 3600;
    assert_eq!(r.opening_s, Some(opening_s));
    let get = |m: &str| -> &CostRow {
        r.machines
            .iter()
            .find(|x| x.machine == m)
            .unwrap_or_else(|| panic!("{m} in the report"))
    };
    let busy = |set: &[S], m: &str| -> u64 {
        set.iter()
            .filter(|s| s.0 == m)
            .map(|s| u64::from(s.5))
            .sum()
    };
    // Revenue: invoiced sessions, less Bob's November invoice (cancelled).
    let revenue = |set: &[S], m: &str, credited: bool| -> i64 {
        set.iter()
            .filter(|s| s.0 == m && !(credited && s.3 == BOB))
            .map(price)
            .sum()
    };

    // Laser: bought 2026-01-01 for 12,000.00 over 60 months (to 2031-01-01: 1826 days).
    let laser = get("laser-1");
    let busy_l = busy(&NOVEMBER, "laser-1");
    assert_eq!(busy_l, 5_400 + 1_830 + 900 + 1_200);
    assert_eq!((laser.busy_s, laser.sessions), (busy_l, 4));
    let dep = round(1_200_000 * day_ms(30), day_ms(1826));
    let cons = round(150 * i128::from(busy_l), 3600);
    let maint = 12_000;
    let cost = dep + maint + cons;
    assert_eq!(laser.depreciation_cents, Some(dep));
    assert_eq!(laser.maintenance_cents, maint);
    assert_eq!(laser.services_without_cost, 1);
    assert_eq!(laser.consumables_cents, Some(cons));
    assert_eq!(laser.cost_cents, Some(cost));
    let rev_l = revenue(&NOVEMBER, "laser-1", true);
    assert_eq!(rev_l, 4_500 + 750);
    assert_eq!(laser.revenue_cents, rev_l);
    assert_eq!(
        laser.cost_per_busy_h_cents,
        Some(round(i128::from(dep + maint) * 3600, i128::from(busy_l)))
    );
    assert_eq!(
        laser.break_even_per_busy_h_cents,
        Some(round(i128::from(cost) * 3600, i128::from(busy_l)))
    );
    assert_eq!(laser.margin_cents, Some(rev_l - cost));
    assert_eq!(
        laser.utilisation_bp,
        Some(u64::try_from(round(i128::from(busy_l) * 10_000, i128::from(opening_s))).expect("bp"))
    );
    // Since the purchase: October too (a 50.00 service, 1 h of laser billed 30.00).
    let busy_life = busy_l + busy(&OCTOBER, "laser-1");
    let recovered = rev_l + revenue(&OCTOBER, "laser-1", false)
        - (maint + 5_000)
        - round(150 * i128::from(busy_life), 3600);
    assert_eq!(laser.recovered_cents, Some(recovered));
    // November's revenue does not cover its maintenance and consumables: never at this use.
    assert!(rev_l - maint - cons < 0);
    assert_eq!(laser.payback_months_x10, None);

    // Printer: bought 2026-10-15 for 2,500.00 over 36 months (to 2029-10-15: 1096 days).
    let printer = get("printer-1");
    let busy_p = busy(&NOVEMBER, "printer-1");
    assert_eq!(printer.busy_s, busy_p);
    let dep = round(250_000 * day_ms(30), day_ms(1096));
    assert_eq!(printer.depreciation_cents, Some(dep));
    assert_eq!(
        (printer.maintenance_cents, printer.consumables_cents),
        (0, Some(0))
    );
    let rev_p = revenue(&NOVEMBER, "printer-1", true);
    assert_eq!(rev_p, 600 * 2 + 100);
    assert_eq!(printer.revenue_cents, rev_p);
    let recovered = rev_p + revenue(&OCTOBER, "printer-1", false);
    assert_eq!(printer.recovered_cents, Some(recovered));
    // Left to recover at November's net revenue per average month (30.436875 days), in tenths,
    // rounded up.
    let left = 250_000 - i128::from(recovered);
    let month_ms: i128 = 2_629_746_000;
    let per_month_x10 = i128::from(rev_p) * month_ms;
    let x10 = (left * day_ms(30) * 10 + per_month_x10 - 1) / per_month_x10;
    assert_eq!(
        printer.payback_months_x10,
        Some(i64::try_from(x10).expect("fits"))
    );

    // The saw has no cost entry: its row says how to add one, and still shows its use.
    let saw = get("saw-1");
    let problem = saw.problem.as_deref().expect("a problem");
    assert!(
        problem.contains("no purchase price")
            && problem.contains("machine = \"saw-1\", purchase_price_cents = 1200000"),
        "{problem}"
    );
    assert_eq!((saw.cost_cents, saw.payback_months_x10), (None, None));
}

fn november(c: &Config, l: &dyn Ledger) -> CostReport {
    costs::report(c, l, ms("2026-11-01T00:00:00Z"), ms("2026-12-01T00:00:00Z")).expect("report")
}

/// The site file for the commands, naming the test's ledger.
fn site_file(dir: &std::path::Path, c: &Config) -> std::path::PathBuf {
    let toml = dir.join("site.toml");
    let ledger = c.ledger.path.display().to_string();
    std::fs::write(
        &toml,
        format!("{}\n[ledger]\npath = {ledger:?}\n", site_text()),
    )
    .expect("write site");
    toml
}

fn badges(c: &Config) -> HashMap<String, String> {
    c.badge_directory()
}

/// The site's config and its SQLite ledger in `dir`.
fn open_sqlite(dir: &std::path::Path) -> (Config, SqliteLedger) {
    let c = config(dir);
    let l =
        SqliteLedger::open(&c.ledger.path, &c.site_id().expect("site"), badges(&c)).expect("open");
    (c, l)
}

#[test]
fn cost_recovery_on_sqlite_matches_the_workload_and_the_command_prints_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, mut l) = open_sqlite(dir.path());
    let billing = workload(&mut l, &c);
    let docs = l.documents().expect("docs");
    assert_eq!(
        docs.iter()
            .filter(|d| d.kind == DocKind::CreditNote)
            .count(),
        1
    );
    drop(billing);
    let r = november(&c, &l);
    check_november(&r);

    // The command, on the same file: JSON equals the library's report; the table names the fix.
    let toml = site_file(dir.path(), &c);
    let run = |format: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
            .args(["cost-recovery", "--config"])
            .arg(&toml)
            .args([
                "--from",
                "2026-11-01",
                "--to",
                "2026-12-01",
                "--format",
                format,
            ])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let json: serde_json::Value = serde_json::from_str(&run("json")).expect("json");
    assert_eq!(json, serde_json::to_value(&r).expect("value"));
    let table = run("table");
    assert!(
        table.contains("saw-1: no purchase price: add [[costs.machines]] machine = \"saw-1\""),
        "{table}"
    );
    assert!(table.contains("laser-1: 1 services in the range were recorded without a cost"));
    let csv = run("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("machine,busy_h,utilisation_pct,"));
    let printer = lines
        .iter()
        .find(|l| l.starts_with("printer-1,"))
        .expect("row");
    // 54,000 busy seconds = 15.00 h.
    assert!(printer.starts_with("printer-1,15.00,"), "{printer}");

    // `maintenance done --cost-cents` stores the cost.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
        .args(["maintenance", "done", "--config"])
        .arg(&toml)
        .args([
            "--machine",
            "laser-1",
            "--plan",
            "lens",
            "--by",
            "sam",
            "--cost-cents",
            "4550",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services = l
        .maintenance_records("laser-1")
        .expect("read")
        .expect("known")
        .services;
    assert_eq!(services.last().and_then(|s| s.cost_cents), Some(4550));
    assert_eq!(services.len(), SERVICES.len() + 1);

    // A range that ends before it starts is refused with the fix.
    let e = costs::report(
        &c,
        &l,
        ms("2026-12-01T00:00:00Z"),
        ms("2026-11-01T00:00:00Z"),
    )
    .expect_err("bad range");
    assert!(e.to_string().contains("give --from before --to"), "{e}");
}

#[test]
fn a_cost_entry_for_an_unknown_machine_or_bad_hours_is_refused_with_the_key() {
    for (bad, key) in [
        (
            site_text().replace("machine = \"printer-1\"", "machine = \"printer-9\""),
            "costs.machines[1].machine",
        ),
        (
            site_text().replace("Sat 09:00-13:00", "Sat 9-13"),
            "costs.opening_hours",
        ),
        (
            site_text().replace("life_months = 36", "life_months = 0"),
            "costs.machines[1].life_months",
        ),
    ] {
        let e = Config::from_toml(&bad)
            .and_then(|c| c.validate())
            .expect_err("refused");
        assert_eq!(e.key, key, "{e}");
        assert!(!e.example.is_empty());
    }
}

#[test]
fn cost_recovery_on_postgresql_equals_sqlite() {
    let pg = fabmeter_e2e::Postgres::start().expect("start PostgreSQL");
    let url = pg.create_database("costs").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path());
    let mut p = PgLedger::open(&url, &c.site_id().expect("site"), badges(&c)).expect("open");
    workload(&mut p, &c);
    let on_pg = november(&c, &p);
    check_november(&on_pg);
    let mut s =
        SqliteLedger::open(&c.ledger.path, &c.site_id().expect("site"), badges(&c)).expect("open");
    workload(&mut s, &c);
    assert_eq!(on_pg, november(&c, &s));
}

#[test]
fn the_api_serves_the_report_and_refuses_a_bad_range() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, mut l) = open_sqlite(dir.path());
    workload(&mut l, &c);
    let expected = serde_json::to_value(november(&c, &l)).expect("value");
    let reader: Box<dyn Ledger> = Box::new(l);
    let app = api::costs_router(Arc::new(Mutex::new(reader)), Arc::new(c));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(async move { axum::serve(listener, app).await });
    let get = |path: &str| fabmeter_e2e::http::get("127.0.0.1", port, path).expect("GET");
    let r = get("/api/costs?from=2026-11-01&to=2026-12-01");
    assert_eq!(r.status, 200, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(body, expected);
    let r = get("/api/costs?from=2026-12-01&to=2026-11-01");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("give --from before --to"), "{}", r.text());
    let r = get("/api/costs?from=yesterday");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("from=\\\"yesterday\\\""), "{}", r.text());
}

/// A workload within the board's range (the 90 days before `now`): sessions and a laser
/// service on the day 35 days before `now`, whose month is over and invoiced.
fn recent_workload(l: &mut dyn Ledger, c: &Config, now: u64) {
    let billing = Billing::from_config(c).expect("rules").expect("billing");
    l.register_machines(&machines(c), ms("2026-01-01T00:00:00Z"))
        .expect("register");
    let day = (now / 86_400_000 - 35) * 86_400_000;
    let at = |h: u64| day + h * 3_600_000;
    let mut batch = Vec::new();
    for (machine, seq, badge, hour, busy_s) in [
        ("laser-1", 1, ALICE, 9, 5_400),
        ("laser-1", 3, BOB, 14, 1_830),
        ("printer-1", 1, ALICE, 8, 36_000),
        ("printer-1", 3, BOB, 19, 14_400),
    ] {
        let (start, end) = closed_session(machine, 1, seq, badge, at(hour), busy_s, 0);
        batch.extend([start, end]);
    }
    l.commit(&batch).expect("commit");
    l.record_service("laser-1", "lens", "sam", "lens", Some(8_000), at(20))
        .expect("service")
        .expect("known machine");
    let period = Period::of(billing.rules.zone.date_of(day));
    let r = l
        .issue_invoices(&billing, period, now, false)
        .expect("issue");
    assert_eq!(r.invoices.len(), 2, "alice's and bob's");
}

#[test]
fn to_fixed_rounds_as_javascript_does() {
    assert_eq!(to_fixed(0.25, 1), "0.3", "an exact tie goes up");
    assert_eq!(to_fixed(0.15, 1), "0.1", "0.15 is 0.1499... in binary");
    assert_eq!(to_fixed(9.96, 1), "10.0");
    assert_eq!(to_fixed(-12.345, 2), "-12.35");
    assert_eq!(to_fixed(1234.0 / 100.0, 2), "12.34");
}

/// The rows the board's cost recovery table should show for a `GET /api/costs` answer: per
/// machine its cells as text and whether the margin is marked a loss; a machine with a problem
/// is followed by a note row naming it.
fn expected_rows(report: &serde_json::Value) -> Vec<serde_json::Value> {
    use serde_json::json;
    let eur = |v: &serde_json::Value| {
        v.as_i64()
            .map_or(String::new(), |c| to_fixed(c as f64 / 100.0, 2))
    };
    let mut out = Vec::new();
    for m in report["machines"].as_array().expect("machines") {
        let payback = match (
            m["payback_months"].as_f64(),
            m["purchase_price_cents"].is_null(),
        ) {
            (Some(p), _) => to_fixed(p, 1),
            (None, false) => "never".to_owned(),
            (None, true) => String::new(),
        };
        let busy_s = m["busy_s"].as_u64().expect("busy_s");
        let cells = [
            m["name"].as_str().expect("name").to_owned(),
            to_fixed(busy_s as f64 / 3600.0, 1),
            m["utilisation_bp"].as_u64().map_or(String::new(), |bp| {
                format!("{} %", to_fixed(bp as f64 / 100.0, 1))
            }),
            eur(&m["cost_cents"]),
            eur(&m["cost_per_busy_h_cents"]),
            eur(&m["break_even_per_busy_h_cents"]),
            eur(&m["revenue_cents"]),
            eur(&m["margin_cents"]),
            payback,
        ];
        let loss = m["margin_cents"].as_i64().is_some_and(|c| c < 0);
        out.push(json!({"machine": m["machine"], "cells": cells, "loss": loss}));
        if let Some(p) = m["problem"].as_str() {
            out.push(json!({"machine": null, "cells": [format!("{}: {p}", m["machine"].as_str().unwrap_or(""))], "loss": false}));
        }
    }
    out
}

/// The board in headless Chromium at a phone's 390 px width, served with the real routes on
/// port 0 from a real SQLite ledger: the cost recovery table shows every machine of
/// `GET /api/costs` with the figures the API gives, and neither the page nor the table
/// overflows sideways (every cell within the viewport, no scrolling inside the table).
#[test]
fn the_board_shows_the_cost_recovery_table_at_390_px() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, mut l) = open_sqlite(dir.path());
    recent_workload(&mut l, &c, fabmeter_collector::ingest::now_ms());
    let b = Board::load(board(c, Box::new(l)), 390, "/api/costs", "costs");
    let found = &b.found;
    let rows: serde_json::Value = found["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let loss = r["classes"]
                .as_array()
                .expect("classes")
                .iter()
                .any(|c| c == "loss");
            serde_json::json!({"machine": r["machine"], "cells": r["cells"], "loss": loss})
        })
        .collect();
    b.assert_shows(&rows, |a| expected_rows(a).into());
    // The workload shows: three machines (the saw with its note), hours and money on the laser.
    let machines: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["machine"].as_str())
        .collect();
    assert_eq!(machines, ["laser-1", "printer-1", "saw-1"]);
    let laser = &rows[0]["cells"];
    assert_eq!(laser[0], "Laser");
    assert_eq!(laser[1], "2.0", "5,400 + 1,830 busy seconds: {laser}");
    assert!(
        rows.as_array().expect("rows").iter().any(|r| r["cells"][0]
            .as_str()
            .is_some_and(|t| t.starts_with("saw-1: no purchase price"))),
        "{rows}"
    );

    // Nothing overflows at 390 px: not the page, not the section, not one cell.
    b.assert_fits(9.0);
}

/// `1234,56` → cents.
fn fec_cents(s: &str) -> i64 {
    let (e, c) = s.split_once(',').expect("comma decimal");
    assert_eq!(c.len(), 2, "{s}");
    e.parse::<i64>().expect("euros") * 100 + c.parse::<i64>().expect("cents")
}

/// VAT of a base at a rate in basis points, half up (bases here are positive).
fn vat(base: i64, bp: i64) -> i64 {
    (base * bp + 5_000) / 10_000
}

#[test]
fn the_accounting_export_balances_and_equals_the_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, mut l) = open_sqlite(dir.path());
    workload(&mut l, &c);
    let toml = site_file(dir.path(), &c);
    let export = |period: &str, format: &str, out: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
            .args(["export-accounting", "--config"])
            .arg(&toml)
            .args(["--period", period, "--format", format, "--out"])
            .arg(out)
            .output()
            .expect("run")
    };
    // December holds November's invoices (issued on the 2nd) and the credit note of Bob's.
    let docs: Vec<_> = l
        .documents()
        .expect("docs")
        .into_iter()
        .filter(|d| d.issue_date.to_string().starts_with("2026-12"))
        .collect();
    assert_eq!(docs.len(), 3);
    assert_eq!(
        docs.iter()
            .filter(|d| d.kind == DocKind::CreditNote)
            .count(),
        1
    );
    // Expected per member and rate from the workload: laser at 20 %, printer at 5.5 %.
    let base = |badge: &str, machine: &str| -> i64 {
        NOVEMBER
            .iter()
            .filter(|s| s.3 == badge && s.0 == machine)
            .map(price)
            .sum()
    };
    let gross = |badge: &str| {
        let (laser, printer) = (base(badge, "laser-1"), base(badge, "printer-1"));
        laser + vat(laser, 2000) + printer + vat(printer, 550)
    };
    let net_all = base(ALICE, "laser-1") + base(ALICE, "printer-1");
    let gross_all = gross(ALICE);

    // FEC: 18 columns, every entry balanced, the customer account carries the ledger's totals.
    let fec_path = dir.path().join("FEC-2026-12.txt");
    let out = export("2026-12", "fec", &fec_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&fec_path).expect("fec");
    // ISO 8859-15: the é of Martin-Léger is one byte.
    assert!(bytes.windows(2).any(|w| w == [b'L', 0xE9]));
    let text: String = bytes.iter().map(|&b| char::from(b)).collect();
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let header: Vec<&str> = lines.next().expect("header").split('|').collect();
    assert_eq!(
        header,
        [
            "JournalCode",
            "JournalLib",
            "EcritureNum",
            "EcritureDate",
            "CompteNum",
            "CompteLib",
            "CompAuxNum",
            "CompAuxLib",
            "PieceRef",
            "PieceDate",
            "EcritureLib",
            "Debit",
            "Credit",
            "EcritureLet",
            "DateLet",
            "ValidDate",
            "Montantdevise",
            "Idevise"
        ]
    );
    let mut balance: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    let (mut customer, mut sales, mut vat_collected) = (0i64, 0i64, 0i64);
    for line in lines {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 18, "{line}");
        assert_eq!(
            (f[0], f[3].len(), f[9], f[15]),
            ("VT", 8, f[3], f[3]),
            "{line}"
        );
        assert!(f[3].starts_with("202612"), "{line}");
        let (d, cr) = (fec_cents(f[11]), fec_cents(f[12]));
        assert!(d >= 0 && cr >= 0 && (d == 0 || cr == 0), "{line}");
        let e = balance.entry(f[2].to_owned()).or_default();
        e.0 += d;
        e.1 += cr;
        match &f[4][..3] {
            "411" => {
                customer += d - cr;
                assert!(!f[6].is_empty(), "customer lines name the member: {line}");
            }
            "706" => sales += cr - d,
            "445" => vat_collected += cr - d,
            other => panic!("unexpected account {other}: {line}"),
        }
    }
    assert_eq!(balance.len(), 3, "one entry per document");
    for (n, (d, cr)) in &balance {
        assert_eq!(d, cr, "entry {n} balances");
    }
    let ledger_incl: i64 = docs.iter().map(|d| d.totals.incl_cents).sum();
    let ledger_excl: i64 = docs.iter().map(|d| d.totals.excl_cents).sum();
    assert_eq!((customer, sales), (ledger_incl, ledger_excl));
    assert_eq!((customer, sales), (gross_all, net_all));
    assert_eq!(vat_collected, gross_all - net_all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("3 documents issued in 2026-12 (1 credit notes)"),
        "{stdout}"
    );

    // CSV: one line per document and rate, credit notes negative, totals equal the ledger's.
    let csv_path = dir.path().join("sales-2026-12.csv");
    let out = export("2026-12", "csv", &csv_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(&csv_path).expect("csv");
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some("number,kind,date,period,member,member_name,vat_rate,net,vat,gross,refers_to")
    );
    let cents = |s: &str| -> i64 {
        let neg = s.starts_with('-');
        let v: i64 = s
            .trim_start_matches('-')
            .replace('.', "")
            .parse()
            .expect("amount");
        if neg {
            -v
        } else {
            v
        }
    };
    let (mut n, mut net, mut total) = (0, 0i64, 0i64);
    for r in rows {
        let f: Vec<&str> = r.split(',').collect();
        assert_eq!(f.len(), 11, "{r}");
        let (b, v, g) = (cents(f[7]), cents(f[8]), cents(f[9]));
        assert_eq!(b + v, g, "{r}");
        let bp: i64 = if f[6] == "20" { 2000 } else { 550 };
        assert_eq!(v.abs(), vat(b.abs(), bp), "{r}");
        if f[1] == "credit_note" {
            assert!(
                b < 0 && g < 0 && !f[10].is_empty(),
                "negative, naming the invoice: {r}"
            );
        } else {
            assert!(b > 0, "{r}");
        }
        n += 1;
        net += b;
        total += g;
    }
    assert_eq!(n, 6, "3 documents x 2 rates");
    assert_eq!((net, total), (net_all, gross_all));

    // November holds October's two invoices, no credit note.
    let out = export("2026-11", "csv", &dir.path().join("sales-2026-11.csv"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout)
        .starts_with("2 documents issued in 2026-11 (0 credit notes)"));

    // Never a half file: a directory that does not exist gets nothing, and no temporary file is
    // left beside the files written.
    let missing = dir.path().join("no-such-dir").join("fec.txt");
    let out = export("2026-12", "fec", &missing);
    assert!(!out.status.success());
    assert!(!missing.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
