//! The board's maintenance table on a phone: a real SQLite ledger with sessions (busy hours),
//! services and an out-of-order mark, the real routes on port 0, the board in headless Chromium
//! at 390 px. Every cell is checked against `GET /api/maintenance`, and none lies sideways
//! outside the viewport.

use fabmeter_collector::billing::Date;
use fabmeter_collector::config::Config;
use fabmeter_collector::ledger::{Ledger, Record, OUT_OF_ORDER};
use fabmeter_collector::protocol::message::{EndReason, EventBody, MachineState};
use fabmeter_collector::protocol::BadgeHash;
use serde_json::{json, Value};

#[path = "support/ledger.rs"]
#[allow(dead_code)]
mod support;
use support::event;
#[path = "support/sites.rs"]
#[allow(dead_code)]
mod sites;
use sites::{SiteFile, ALICE, BOB};
#[path = "support/browser.rs"]
#[allow(dead_code)]
mod browser;
use browser::{board, to_fixed, Board};

const DAY_MS: u64 = 86_400_000;

/// A laser with a busy-hour plan that locks when overdue and a calendar plan, a 3D printer with
/// a long name and a busy-hour plan, a saw without plans.
fn site(dir: &std::path::Path) -> Config {
    let text = SiteFile::new("atelier-lyon")
        .machine("laser-1", "Laser", "laser")
        .machine("printer-1", "Prusa MK4 (left bench)", "printer-3d")
        .machine("saw-1", "Panel saw", "saw")
        .alice_and_bob()
        .toml(
            r#"
[[maintenance.plans]]
name = "lens-cleaning"
kinds = ["laser"]
every_busy_h = 40.0
lock_when_overdue = true

[[maintenance.plans]]
name = "extraction-filter"
kinds = ["laser"]
every_days = 30.0
warn_before = 0.2

[[maintenance.plans]]
name = "nozzle-check"
machines = ["printer-1"]
every_busy_h = 10.0
"#,
        )
        .text();
    sites::config(dir, &text)
}

/// The workshop's last 25 days up to `now`: the laser ran 42 busy hours (its 40-hour plan is
/// overdue, so it is locked) and its filter was changed 25 days ago (due soon, in 5 days); the
/// printer ran 3.5 busy hours; the saw has been out of order for 3 days, for `out_of_order`.
fn workload(c: &Config, now: u64, out_of_order: &str) -> Box<dyn Ledger> {
    let mut l = support::open(c);
    let mut batch = Vec::new();
    for (machine, seq, badge, days_ago, busy_s) in [
        ("laser-1", 1, ALICE, 20, 50_400),
        ("laser-1", 5, BOB, 15, 50_400),
        ("laser-1", 9, ALICE, 10, 50_400),
        ("printer-1", 1, BOB, 12, 12_600),
    ] {
        batch.extend(run(machine, seq, badge, now - days_ago * DAY_MS, busy_s));
    }
    l.commit(&batch).expect("commit");
    l.record_service(
        "laser-1",
        "extraction-filter",
        "sam",
        "filter changed",
        None,
        now - 25 * DAY_MS,
    )
    .expect("service")
    .expect("known machine");
    assert!(l
        .open_outage("saw-1", OUT_OF_ORDER, out_of_order, "sam", now - 3 * DAY_MS,)
        .expect("out of order"));
    Box::new(l)
}

/// A session of `badge` from `t0` in which the machine runs `busy_s` seconds: the device's events
/// `seq` to `seq + 3` of boot 1 (session started, busy, idle, session ended). The busy state
/// makes the machine's lifetime busy hours; the session, its session count.
fn run(machine: &str, seq: u32, badge: &str, t0: u64, busy_s: u32) -> [Record; 4] {
    let badge = BadgeHash::from_hex(badge).expect("badge");
    let t1 = t0 + u64::from(busy_s) * 1000;
    let state = |from, to| EventBody::State { from, to };
    [
        event(machine, 1, seq, t0, EventBody::SessionStarted { badge }),
        event(
            machine,
            1,
            seq + 1,
            t0,
            state(MachineState::Idle, MachineState::Busy),
        ),
        event(
            machine,
            1,
            seq + 2,
            t1,
            state(MachineState::Busy, MachineState::Idle),
        ),
        event(
            machine,
            1,
            seq + 3,
            t1,
            EventBody::SessionEnded {
                session: seq,
                badge,
                busy_s,
                idle_s: 0,
                energy_wh: 1,
                reason: EndReason::BadgeOut,
            },
        ),
    ]
}

/// The rows the board's maintenance table should show for a `GET /api/maintenance` answer, as
/// the page formats them: per machine, one row a plan (a machine without plans: one row if it is
/// locked, none otherwise); each row its machine, its cells' text and classes.
fn expected_rows(answer: &Value) -> Value {
    let fixed1 = |v: &Value| v.as_f64().map_or(String::new(), |x| to_fixed(x, 1));
    let mut out = Vec::new();
    for m in answer["machines"].as_array().expect("machines") {
        let plans = m["plans"].as_array().expect("plans");
        let lock = m["lock"].as_str().unwrap_or("");
        if plans.is_empty() && lock.is_empty() {
            continue;
        }
        let none = [Value::Null];
        let plans = if plans.is_empty() { &none[..] } else { plans };
        for p in plans {
            let state = p["state"].as_str();
            let due = p["due_ms"].as_u64().map_or(String::new(), |ms| {
                Date::from_days((ms / DAY_MS) as i64).to_string()
            });
            let availability = m["availability"]["availability"]
                .as_f64()
                .expect("availability");
            let cells = [
                m["name"].as_str().expect("name").to_owned(),
                p["plan"].as_str().unwrap_or("-").to_owned(),
                state.map_or("-".to_owned(), |s| s.replacen('_', " ", 1)),
                fixed1(&p["busy_h_left"]),
                due,
                fixed1(&m["counters"]["busy_h"]),
                format!("{} %", to_fixed(availability * 100.0, 1)),
                lock.to_owned(),
            ];
            let classes = [
                "",
                "",
                state.unwrap_or(""),
                "",
                "",
                "",
                "",
                if lock.is_empty() { "" } else { "locked" },
            ];
            out.push(json!({"machine": m["machine"], "cells": cells, "classes": classes}));
        }
    }
    Value::from(out)
}

/// The board in headless Chromium at a phone's 390 px width, served with the real routes on
/// port 0 from a real SQLite ledger: the maintenance table shows every plan and lock of
/// `GET /api/maintenance` with the figures the API gives, and neither the page nor the table
/// overflows sideways (every cell within the viewport, no scrolling inside the table).
#[test]
fn the_board_shows_the_maintenance_table_at_390_px() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = site(dir.path());
    let now = fabmeter_collector::ingest::now_ms();
    // The API's answers may differ: availability runs on with the clock while the saw is out
    // of order.
    let b = Board::load(
        board(
            c.clone(),
            workload(&c, now, "blade chipped, waiting for the spare part"),
        ),
        390,
        "/api/maintenance",
        "maintenance",
    );
    let rows = &b.found["rows"];
    b.assert_shows(rows, expected_rows);

    // The workload shows: the laser's two plans (one overdue, locking it; one due soon), the
    // printer's plan, the saw out of order.
    let shown: Vec<(&str, &str, &str)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let cell = |i: usize| r["cells"][i].as_str().expect("text");
            (cell(0), cell(1), cell(2))
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("Laser", "lens-cleaning", "overdue"),
            ("Laser", "extraction-filter", "due soon"),
            ("Prusa MK4 (left bench)", "nozzle-check", "ok"),
            ("Panel saw", "-", "-"),
        ],
        "{rows}"
    );
    assert_eq!(
        rows[0]["cells"][3], "-2.0",
        "40 - 3 × 14 busy hours: {rows}"
    );
    assert_eq!(rows[0]["cells"][7], "service overdue: lens-cleaning");
    let due = Date::from_days(((now + 5 * DAY_MS) / DAY_MS) as i64).to_string();
    assert_eq!(rows[1]["cells"][4], due.as_str(), "{rows}");
    assert_eq!(rows[2]["cells"][3], "6.5", "{rows}");
    assert_eq!(
        rows[3]["cells"][7],
        "out of order: blade chipped, waiting for the spare part"
    );
    assert_eq!(rows[3]["cells"][6], "90.0 %", "3 days out of 30: {rows}");

    // Nothing overflows at 390 px: not the page, not the section, not one cell.
    b.assert_fits(8.0);
}

/// The same table on a laptop's 1280 px, with a lock reason of several sentences (an
/// out-of-order mark explained at length): the reason wraps inside its column instead of
/// widening the table past the screen, and every row still shows the API's figures.
#[test]
fn a_long_lock_reason_wraps_within_a_wide_screen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = site(dir.path());
    let now = fabmeter_collector::ingest::now_ms();
    let reason = "blade chipped on a nail hidden in a reclaimed oak board; the spare blade is \
                  ordered from the supplier in Lyon and expected within the week, do not use \
                  the saw until Sam has fitted and tested it, ask at the desk for the hand saws";
    let b = Board::load(
        board(c.clone(), workload(&c, now, reason)),
        1280,
        "/api/maintenance",
        "maintenance",
    );
    let rows = &b.found["rows"];
    b.assert_shows(rows, expected_rows);
    assert_eq!(
        rows[3]["cells"][7],
        format!("out of order: {reason}").as_str(),
        "{rows}"
    );
    b.assert_fits(30.0);
}
