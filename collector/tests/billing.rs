//! Billing against a real SQLite ledger: sessions from device events, invoices for a month
//! (totals checked against an expectation computed here independently), idempotency, a late
//! session, credit notes, exports, the audit (zero differences, then the exact difference of a
//! tampered row), the member statement over HTTP, and personal data: the retention purge and
//! the erasure of a member leave the invoices, the audit, the counters and exactly-once intact.

use std::sync::{Arc, Mutex};

use fabmeter_collector::api::{self, ApiState};
use fabmeter_collector::billing::invoice::{accounting_csv, to_html, Billing, DocKind};
use fabmeter_collector::billing::Period;
use fabmeter_collector::config::Config;
use fabmeter_collector::ledger::{Ledger, Record, SqliteLedger};
use fabmeter_collector::ledger::{Outcome, PurgedCounts, SessionQuery};
use fabmeter_collector::metrics::Metrics;
use fabmeter_collector::protocol::message::{DenyReason, EventBody};
use fabmeter_collector::protocol::BadgeHash;
use fabmeter_collector::timeseries::TimeSeriesHandle;

#[path = "support/ledger.rs"]
mod support;
use support::{closed_session, event, open};
#[path = "support/sites.rs"]
#[allow(dead_code)]
mod sites;
use sites::{ms, seller, Identity, SiteFile, Tariff, ALICE, BOB};

/// A badge no member holds.
const STRANGER: &str = "0123456789abcdef";

/// The site: a laser and a 3D printer, alice and bob, a seller without Factur-X.
fn site_text() -> String {
    SiteFile::new("atelier-lyon")
        .machine("laser-1", "", "laser")
        .machine("printer-1", "", "printer-3d")
        .alice_and_bob()
        .billing(
            "UTC",
            false,
            Identity {
                siret: "123 456 789 00012",
                ..seller()
            },
        )
        .tariff(
            Tariff::new("laser", "2026-01-01", "0.50")
                .idle("0.10")
                .increment(5),
        )
        .tariff(Tariff::new("printer-3d", "2026-01-01", "0.02").setup("1.00"))
        .credit("bob", "2026-10-01", "5.00")
        .text()
}

fn config(dir: &std::path::Path) -> Config {
    sites::config(dir, &site_text())
}

/// The start and end events of one session, with device clock times.
fn session(
    machine: &str,
    boot: u32,
    seq: u32,
    badge: &str,
    start: &str,
    busy_s: u32,
    idle_s: u32,
) -> Vec<Record> {
    let (start, end) = closed_session(machine, boot, seq, badge, ms(start), busy_s, idle_s);
    vec![start, end]
}

/// Price of one session computed independently: laser 0.50/busy and 0.10/idle minute per
/// started 5 minutes; printer 0.02 per minute plus 1.00.
fn expected_cents(machine: &str, busy_s: u32, idle_s: u32) -> i64 {
    let up = |s: u32, inc: u32| i64::from(s.div_ceil(inc * 60) * inc);
    match machine {
        "laser-1" => up(busy_s, 5) * 50 + up(idle_s, 5) * 10,
        _ => up(busy_s, 1) * 2 + 100,
    }
}

#[test]
fn a_month_of_invoices_late_sessions_credit_notes_and_audit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path());
    let billing = Billing::from_config(&c).expect("rules").expect("billing");
    let mut l = open(&c);

    // November: a few sessions of alice and bob; one open session of bob is not invoiced.
    let month: Vec<(&str, u32, u32, &str, &str, u32, u32)> = vec![
        ("laser-1", 1, 1, ALICE, "2026-11-03T09:00:00Z", 1_260, 300),
        ("laser-1", 1, 3, BOB, "2026-11-03T14:00:00Z", 600, 0),
        ("printer-1", 1, 1, ALICE, "2026-11-05T08:00:00Z", 14_400, 0),
        ("laser-1", 1, 5, ALICE, "2026-11-20T10:00:00Z", 61, 59),
        ("printer-1", 1, 3, BOB, "2026-11-30T22:00:00Z", 3_000, 0),
    ];
    let mut batch = Vec::new();
    for (m, boot, seq, badge, start, busy, idle) in &month {
        batch.extend(session(m, *boot, *seq, badge, start, *busy, *idle));
    }
    // Every event twice, in reverse order: nothing changes.
    let mut again = batch.clone();
    again.reverse();
    batch.extend(again);
    l.commit(&batch).expect("commit");

    let expect = |member_badge: &str| -> i64 {
        month
            .iter()
            .filter(|s| s.3 == member_badge)
            .map(|s| expected_cents(s.0, s.5, s.6))
            .sum()
    };
    let nov = Period::parse("2026-11").expect("period");
    let dec2 = ms("2026-12-02T10:00:00Z");

    // Too early: the month is not over.
    assert!(l
        .issue_invoices(&billing, nov, ms("2026-11-30T12:00:00Z"), false)
        .is_err());
    // A dry run stores nothing.
    let dry = l
        .issue_invoices(&billing, nov, dec2, true)
        .expect("dry run");
    assert_eq!(dry.invoices.len(), 2);
    assert!(l.documents().expect("docs").is_empty());

    let r = l.issue_invoices(&billing, nov, dec2, false).expect("issue");
    assert_eq!(r.invoices.len(), 2);
    let alice = r
        .invoices
        .iter()
        .find(|d| d.buyer.id == "alice")
        .expect("alice");
    let bob = r
        .invoices
        .iter()
        .find(|d| d.buyer.id == "bob")
        .expect("bob");
    assert_eq!(alice.number, "ATL-2026-000001");
    assert_eq!(bob.number, "ATL-2026-000002");
    assert_eq!(alice.totals.excl_cents, expect(ALICE));
    assert_eq!(bob.totals.excl_cents, expect(BOB));
    for d in [alice, bob] {
        let vat = (d.totals.excl_cents * 2000 + 5_000) / 10_000;
        assert_eq!(d.totals.vat_cents, vat);
        assert_eq!(d.totals.incl_cents, d.totals.excl_cents + vat);
        assert!(d.hash_ok());
        assert!(d.lines.iter().all(|l| !l.sessions.is_empty()));
    }
    assert_eq!(alice.buyer.name, "Alice Martin");
    assert_eq!(alice.lines.len(), 3);
    // Bob's prepaid credit of 5.00 is used.
    assert_eq!(bob.prepaid_cents, 500);
    assert_eq!(bob.due_cents, bob.totals.incl_cents - 500);
    assert_eq!(bob.prev_hash, alice.hash);

    // Issuing twice is a no-op.
    let twice = l
        .issue_invoices(&billing, nov, dec2 + 1000, false)
        .expect("again");
    assert!(twice.already_issued && twice.invoices.is_empty());
    assert_eq!(l.documents().expect("docs").len(), 2);

    // The ledger refuses to change an issued invoice.
    let raw = rusqlite::Connection::open(&c.ledger.path).expect("raw");
    assert!(raw
        .execute(
            "UPDATE invoices SET excl_cents = 0 WHERE number = 'ATL-2026-000001'",
            []
        )
        .is_err());
    assert!(raw.execute("DELETE FROM invoices", []).is_err());

    // A late November session of alice arrives in December, with a December one.
    let mut late = session("laser-1", 1, 7, ALICE, "2026-11-28T09:00:00Z", 600, 0);
    late.extend(session(
        "laser-1",
        2,
        1,
        ALICE,
        "2026-12-10T09:00:00Z",
        300,
        0,
    ));
    l.commit(&late).expect("commit late");
    assert!(l.audit(&billing).expect("audit").is_empty());
    let dec = Period::parse("2026-12").expect("period");
    let r = l
        .issue_invoices(&billing, dec, ms("2027-01-03T09:00:00Z"), false)
        .expect("december");
    assert_eq!(r.invoices.len(), 1);
    let d = &r.invoices[0];
    assert_eq!(
        d.number, "ATL-2027-000001",
        "numbering restarts with the year of issue"
    );
    assert_eq!(d.totals.excl_cents, 500 + 250);
    let late_line = d.lines.iter().find(|l| l.late).expect("a late line");
    assert_eq!(late_line.sessions[0].to_string(), "laser-1/1/7");
    assert_eq!(late_line.amount_cents, 500);
    assert_eq!(d.lines.iter().filter(|l| !l.late).count(), 1);

    // A credit note cancels bob's invoice; his sessions come back, late, in January.
    let cn = l
        .credit_note(
            &billing,
            "ATL-2026-000002",
            "wrong member",
            ms("2027-01-04T09:00:00Z"),
        )
        .expect("credit note");
    assert_eq!(cn.kind, DocKind::CreditNote);
    assert_eq!(cn.number, "ATL-2027-000002");
    assert_eq!(cn.refers_to.as_deref(), Some("ATL-2026-000002"));
    assert_eq!(cn.totals.excl_cents, -bob.totals.excl_cents);
    assert_eq!(cn.totals.vat_cents, -bob.totals.vat_cents);
    assert_eq!(cn.prepaid_cents, -500);
    assert!(l
        .credit_note(
            &billing,
            "ATL-2026-000002",
            "again",
            ms("2027-01-04T10:00:00Z")
        )
        .is_err());
    let jan = Period::parse("2027-01").expect("period");
    let r = l
        .issue_invoices(&billing, jan, ms("2027-02-01T09:00:00Z"), false)
        .expect("january");
    assert_eq!(r.invoices.len(), 1);
    assert_eq!(r.invoices[0].buyer.id, "bob");
    assert!(r.invoices[0].lines.iter().all(|l| l.late));
    assert_eq!(r.invoices[0].totals.excl_cents, bob.totals.excl_cents);
    assert_eq!(
        r.invoices[0].prepaid_cents, 500,
        "the credit note gave the prepaid credit back"
    );

    // Exports.
    let docs = l.documents().expect("docs");
    assert_eq!(docs.len(), 5);
    let csv = accounting_csv(&docs, &billing.config.accounts);
    let (mut debit, mut credit) = (0i64, 0i64);
    for row in csv.lines().skip(1) {
        let f: Vec<&str> = row.split(',').collect();
        let cents = |s: &str| (s.parse::<f64>().expect("amount") * 100.0).round() as i64;
        debit += cents(f[8]);
        credit += cents(f[9]);
    }
    assert_eq!(debit, credit, "balanced journal:\n{csv}");
    assert!(csv.contains("445710") && csv.contains("706000") && csv.contains("419100"));
    let html = to_html(&docs[0]);
    assert!(html.contains("ATL-2026-000001") && html.contains("Total TTC"));
    let json: serde_json::Value = serde_json::from_str(&docs[0].to_json()).expect("json");
    assert_eq!(json["number"], "ATL-2026-000001");

    // Audit: all recomputes from the raw events.
    assert_eq!(l.audit(&billing).expect("audit"), vec![]);
    // A tampered derived session row: the events still price the invoice as issued, and the
    // audit names the row that no longer says what its events say.
    raw.execute(
        "UPDATE sessions SET busy_s = 1560 WHERE machine = 'laser-1' AND boot = 1 AND session = 1",
        [],
    )
    .expect("tamper session");
    let diffs = l.audit(&billing).expect("audit");
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    assert_eq!(
        (diffs[0].number.as_str(), diffs[0].field.as_str()),
        ("ATL-2026-000001", "session")
    );
    assert_eq!(diffs[0].line.as_deref(), Some("laser-1/1/1"));
    assert_eq!(
        (diffs[0].issued.as_str(), diffs[0].recomputed.as_str()),
        (
            "member alice, start 2026-11-03T09:00:00Z, busy 1560 s, idle 300 s",
            "member alice, start 2026-11-03T09:00:00Z, busy 1260 s, idle 300 s"
        )
    );
    raw.execute(
        "UPDATE sessions SET busy_s = 1260 WHERE machine = 'laser-1' AND boot = 1 AND session = 1",
        [],
    )
    .expect("restore session");
    assert_eq!(l.audit(&billing).expect("audit"), vec![]);
    // A tampered raw event: the invoice recomputed from the events differs by exactly that.
    let n = raw
        .execute(
            "UPDATE events SET payload = replace(payload, '\"busy_s\":1260', '\"busy_s\":1560')
             WHERE machine = 'laser-1' AND boot = 1 AND seq = 2",
            [],
        )
        .expect("tamper event");
    assert_eq!(n, 1);
    let diffs = l.audit(&billing).expect("audit");
    assert_eq!(diffs.len(), 3, "{diffs:#?}");
    assert_eq!(diffs[0].number, "ATL-2026-000001");
    assert_eq!(diffs[0].field, "amount");
    assert_eq!(diffs[0].line.as_deref(), Some("Session laser-1/1/1"));
    // Busy 1 260 s is billed 25 min, 1 560 s 30 min (plus 5 idle minutes): 2.50 more.
    assert_eq!(
        (diffs[0].issued.as_str(), diffs[0].recomputed.as_str()),
        ("13.00", "15.50")
    );
    assert_eq!(diffs[1].field, "parts");
    assert_eq!(diffs[2].field, "session");
    assert!(diffs[2].recomputed.contains("busy 1560 s"), "{diffs:#?}");

    // A tampered document breaks its hash and the chain after it.
    raw.execute("DROP TRIGGER invoices_never_change", [])
        .expect("drop trigger");
    raw.execute(
        "UPDATE invoices SET document = replace(document, 'Alice Martin', 'Eve') WHERE number = 'ATL-2026-000001'",
        [],
    )
    .expect("tamper document");
    let diffs = l.audit(&billing).expect("audit");
    assert!(
        diffs
            .iter()
            .any(|d| d.number == "ATL-2026-000001" && d.field == "hash"),
        "{diffs:#?}"
    );
}

#[tokio::test]
async fn the_statement_shows_the_month_so_far() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path());
    let mut l = open(&c);
    let now = fabmeter_collector::ingest::now_ms();
    let start = api::format_utc(now - 3_600_000);
    // Within the current month unless the test runs in its first hour.
    l.commit(&session("laser-1", 1, 1, ALICE, &start, 600, 0))
        .expect("commit");
    let state = ApiState {
        ledger: Arc::new(Mutex::new(Box::new(open(&c)) as Box<dyn Ledger>)),
        metrics: Arc::new(Metrics::default()),
        series: TimeSeriesHandle::disabled(),
        site: ("atelier-lyon".into(), String::new()),
        billing: Billing::from_config(&c).expect("rules").map(Arc::new),
        base: "/".into(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
    let get = |path: String| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let (head, body) = out.split_once("\r\n\r\n").expect("response");
        (head.to_owned(), body.to_owned())
    };
    let period = api::format_utc(now - 3_600_000)[..7].to_owned();
    let (head, body) = get(format!("/api/members/alice/statement?period={period}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["sessions"], 1);
    assert_eq!(v["totals"]["excl_cents"], 500);
    assert_eq!(v["provisional"], true);
    assert_eq!(v["lines"][0]["sessions"][0]["machine"], "laser-1");
    let (head, _) = get("/api/members/mallory/statement".into()).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = get("/api/members/alice/statement?period=2026-13".into()).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[test]
fn the_invoice_and_audit_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path());
    {
        let mut l = open(&c);
        l.commit(&session(
            "laser-1",
            1,
            1,
            ALICE,
            "2026-10-03T09:00:00Z",
            600,
            0,
        ))
        .expect("commit");
    }
    let file = dir.path().join("site.toml");
    std::fs::write(&file, c.to_toml()).expect("write config");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
            .args(args)
            .arg("--config")
            .arg(&file)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let out_dir = dir.path().join("out");
    let out = out_dir.to_str().expect("utf-8 path");
    let (ok, stdout, stderr) = run(&["invoice", "--period", "2026-10", "--dry-run"]);
    assert!(
        ok && stdout.contains("would issue ATL-"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, stderr) = run(&["invoice", "--period", "2026-10", "--out", out]);
    assert!(ok && stdout.contains("issued ATL-"), "{stdout}{stderr}");
    let number = stdout
        .split_whitespace()
        .nth(1)
        .expect("a number")
        .to_owned();
    assert!(out_dir.join(format!("{number}.json")).exists());
    assert!(out_dir.join(format!("{number}.html")).exists());
    let csv = std::fs::read_to_string(out_dir.join("accounting-2026-10.csv")).expect("csv");
    assert!(csv.contains(&number), "{csv}");
    let (ok, stdout, _) = run(&["invoice", "--period", "2026-10"]);
    assert!(ok && stdout.contains("already invoiced"), "{stdout}");
    let (ok, stdout, stderr) = run(&["audit"]);
    assert!(
        ok && stdout.contains("1 documents, 0 differences"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, stderr) = run(&["credit-note", "--invoice", &number, "--reason", "test"]);
    assert!(ok && stdout.contains("CreditNote"), "{stdout}{stderr}");
    let (ok, _, stderr) = run(&["invoice", "--period", "2026-13"]);
    assert!(!ok && stderr.contains("2026-13"), "{stderr}");
}

/// `member export`: one JSON document with the member's configuration entry, their sessions with
/// the raw events, and the documents issued to them; nothing about another member.
#[test]
fn member_export_holds_the_members_sessions_events_and_invoices_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path());
    {
        let mut l = open(&c);
        let mut batch = session("laser-1", 1, 1, ALICE, "2026-10-03T09:00:00Z", 600, 0);
        batch.extend(session(
            "laser-1",
            1,
            3,
            BOB,
            "2026-10-04T09:00:00Z",
            300,
            0,
        ));
        batch.extend(session(
            "printer-1",
            1,
            1,
            ALICE,
            "2026-10-05T09:00:00Z",
            900,
            60,
        ));
        l.commit(&batch).expect("commit");
        let billing = Billing::from_config(&c).expect("rules").expect("billing");
        let oct = Period::parse("2026-10").expect("period");
        let r = l
            .issue_invoices(&billing, oct, ms("2026-11-02T10:00:00Z"), false)
            .expect("issue");
        assert_eq!(r.invoices.len(), 2);
    }
    let file = dir.path().join("site.toml");
    std::fs::write(&file, c.to_toml()).expect("write config");
    let out = dir.path().join("alice.json");
    let run = |member: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
            .args(["member", "export", "--member", member, "--out"])
            .arg(&out)
            .arg("--config")
            .arg(&file)
            .output()
            .expect("run")
    };
    let o = run("alice");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("2 sessions, 1 documents"), "{stderr}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("export")).expect("json");
    assert_eq!(doc["format"], "fabmeter-member-export/1");
    assert_eq!(doc["site"], "atelier-lyon");
    assert_eq!(doc["member"]["id"], "alice");
    assert_eq!(doc["member"]["name"], "Alice Martin");
    assert_eq!(doc["member"]["badges"][0], ALICE);
    let sessions = doc["sessions"].as_array().expect("sessions");
    let machines: Vec<&str> = sessions
        .iter()
        .map(|s| s["machine"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(machines, ["laser-1", "printer-1"]);
    for s in sessions {
        assert_eq!(s["member"], "alice");
        assert_eq!(s["badge"], ALICE);
        let kinds: Vec<&str> = s["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(kinds, ["session_started", "session_ended"], "{s}");
        let payload: serde_json::Value =
            serde_json::from_str(s["events"][1]["payload"].as_str().expect("payload"))
                .expect("payload json");
        assert_eq!(payload["event"]["session_ended"]["busy_s"], s["busy_s"]);
    }
    assert_eq!(sessions[1]["busy_s"], 900);
    assert_eq!(sessions[1]["idle_s"], 60);
    let docs = doc["documents"].as_array().expect("documents");
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["buyer"]["id"], "alice");
    let text = std::fs::read_to_string(&out).expect("export");
    assert!(
        !text.contains(BOB) && !text.contains("Bob Durand"),
        "nothing about bob"
    );
    // An unknown member: a clear error, no file.
    std::fs::remove_file(&out).expect("remove");
    let o = run("carol");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("unknown member \"carol\""),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[tokio::test]
async fn the_member_export_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path());
    open(&c)
        .commit(&session(
            "laser-1",
            1,
            1,
            ALICE,
            "2026-10-03T09:00:00Z",
            600,
            0,
        ))
        .expect("commit");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = api::privacy_router(Arc::new(c));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let get = |path: &'static str| {
        tokio::task::spawn_blocking(move || {
            fabmeter_e2e::http::get("127.0.0.1", port, path).expect("GET")
        })
    };
    let r = get("/api/members/alice/export").await.expect("join");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_str(&r.text()).expect("json");
    assert_eq!(v["member"]["id"], "alice");
    assert_eq!(v["sessions"][0]["busy_s"], 600);
    assert_eq!(v["sessions"][0]["events"].as_array().map(Vec::len), Some(2));
    let r = get("/api/members/carol/export").await.expect("join");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("unknown member"), "{}", r.text());
}

/// A refused badge at `at`.
fn denied(machine: &str, seq: u32, at: &str, badge: &str, reason: DenyReason) -> Record {
    let badge = BadgeHash::from_hex(badge).expect("badge");
    event(
        machine,
        1,
        seq,
        ms(at),
        EventBody::AccessDenied { badge, reason },
    )
}

fn keys(l: &SqliteLedger) -> Vec<(String, u32)> {
    let mut k: Vec<(String, u32)> = l
        .sessions(&SessionQuery::default())
        .expect("sessions")
        .into_iter()
        .map(|s| (s.machine, s.session))
        .collect();
    k.sort();
    k
}

/// The retention purge (docs/SECURITY.md "Retention, purge and erasure"): a dry run reports per
/// machine and month and changes nothing; the purge deletes the old unbilled session with its
/// events and the old access_denied event, keeps the invoiced session and the recent one; the
/// lifetime counters and the maintenance-lock count stay as they were, the audit finds nothing,
/// and the purged events sent again are duplicates that change nothing.
#[test]
fn the_retention_purge_keeps_invoices_counters_audit_and_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path());
    let billing = Billing::from_config(&c).expect("rules").expect("billing");
    let mut l = open(&c);
    let stranger = session("laser-1", 1, 3, STRANGER, "2026-10-04T09:00:00Z", 300, 60);
    let locked = denied(
        "laser-1",
        5,
        "2026-10-05T09:00:00Z",
        BOB,
        DenyReason::MaintenanceLock,
    );
    let mut batch = session("laser-1", 1, 1, ALICE, "2026-10-03T09:00:00Z", 600, 0);
    batch.extend(stranger.clone());
    batch.push(locked.clone());
    batch.extend(session(
        "laser-1",
        1,
        6,
        STRANGER,
        "2027-11-20T09:00:00Z",
        120,
        0,
    ));
    l.commit(&batch).expect("commit");
    let oct = Period::parse("2026-10").expect("period");
    let r = l
        .issue_invoices(&billing, oct, ms("2026-11-02T10:00:00Z"), false)
        .expect("issue");
    assert_eq!(r.invoices.len(), 1);
    let counters = l.counters("laser-1").expect("counters").expect("machine");
    assert_eq!(counters.sessions, 3);
    let locks = |l: &SqliteLedger| {
        l.maintenance_records("laser-1")
            .expect("records")
            .expect("machine")
            .refused_locked
    };
    assert_eq!(locks(&l), 1);
    let totals = l.totals().expect("totals");
    assert_eq!(l.audit(&billing).expect("audit"), vec![]);

    // 400 days before this is 2026-10-27: October's data is past retention.
    let now = ms("2027-12-01T00:00:00Z");
    let gone = PurgedCounts {
        sessions: 1,
        session_events: 2,
        access_denied: 1,
    };
    let dry = l.purge(now, 400, true).expect("dry run");
    assert_eq!(dry.total, gone);
    assert_eq!(dry.by_machine_month["laser-1"]["2026-10"], gone);
    let text = fabmeter_collector::privacy::describe_purge(&dry);
    assert!(
        text.contains("laser-1 2026-10: 1 sessions, 2 session events, 1 access_denied")
            && text.contains("would purge before 2026-10-27")
            && text.contains("nothing changed"),
        "{text}"
    );
    assert_eq!(
        l.totals().expect("totals"),
        totals,
        "a dry run changes nothing"
    );

    let done = l.purge(now, 400, false).expect("purge");
    assert_eq!(done.total, gone);
    let after = l.totals().expect("totals");
    assert_eq!(after.events, totals.events - 3);
    assert_eq!(after.sessions, totals.sessions - 1);
    assert_eq!(
        keys(&l),
        [("laser-1".to_owned(), 1), ("laser-1".to_owned(), 6)],
        "the invoiced and the recent sessions stay"
    );
    assert_eq!(
        l.counters("laser-1").expect("counters"),
        Some(counters.clone())
    );
    assert_eq!(locks(&l), 1);
    assert_eq!(l.audit(&billing).expect("audit"), vec![]);

    // The purged events sent again (a device journal replaying): duplicates, nothing changes.
    let mut again = stranger;
    again.push(locked);
    let outcomes = l.commit(&again).expect("commit");
    assert!(
        outcomes.iter().all(|o| o.outcome == Outcome::Duplicate),
        "{outcomes:?}"
    );
    assert_eq!(l.totals().expect("totals"), after);
    assert_eq!(keys(&l).len(), 2);
    drop(l);
    // Reopened (the tombstones and baselines are in the file): same counters; a later event of
    // the same boot is accepted; a second purge finds nothing.
    let mut l = open(&c);
    assert_eq!(l.counters("laser-1").expect("counters"), Some(counters));
    let later = session("laser-1", 1, 8, STRANGER, "2027-11-25T09:00:00Z", 60, 0);
    let outcomes = l.commit(&later).expect("commit");
    assert!(outcomes.iter().all(|o| o.outcome == Outcome::Accepted));
    let r = l.purge(now, 400, false).expect("purge");
    assert_eq!(r.total, PurgedCounts::default());
    assert_eq!(l.audit(&billing).expect("audit"), vec![]);
}

/// `member erase`: the member's unbilled session and their refused badge go, the invoiced
/// session and the invoices stay; the erasure is recorded and cannot be changed; an export then
/// holds only the invoices and the sessions they bill; with the member removed from the site file
/// the audit still finds 0 differences; the erased events sent again are duplicates.
#[test]
fn erasing_a_member_keeps_the_invoices_and_what_they_bill_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path());
    let alice_nov = session("printer-1", 1, 1, ALICE, "2026-11-05T09:00:00Z", 900, 0);
    {
        let mut l = open(&c);
        let mut batch = session("laser-1", 1, 1, ALICE, "2026-10-03T09:00:00Z", 600, 0);
        batch.extend(session(
            "laser-1",
            1,
            3,
            BOB,
            "2026-10-04T09:00:00Z",
            300,
            0,
        ));
        batch.extend(alice_nov.clone());
        batch.push(denied(
            "laser-1",
            5,
            "2026-11-06T09:00:00Z",
            ALICE,
            DenyReason::InUse,
        ));
        batch.push(denied(
            "laser-1",
            6,
            "2026-11-06T10:00:00Z",
            BOB,
            DenyReason::InUse,
        ));
        l.commit(&batch).expect("commit");
        let billing = Billing::from_config(&c).expect("rules").expect("billing");
        let oct = Period::parse("2026-10").expect("period");
        let r = l
            .issue_invoices(&billing, oct, ms("2026-11-02T10:00:00Z"), false)
            .expect("issue");
        assert_eq!(r.invoices.len(), 2);
    }
    let file = dir.path().join("site.toml");
    std::fs::write(&file, c.to_toml()).expect("write config");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
            .args(args)
            .arg("--config")
            .arg(&file)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, stderr) = run(&[
        "member", "erase", "--member", "alice", "--by", "claire", "--reason", " ",
    ]);
    assert!(!ok && stderr.contains("--reason"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "member", "erase", "--member", "carol", "--by", "claire", "--reason", "x",
    ]);
    assert!(
        !ok && stderr.contains("unknown member \"carol\""),
        "{stderr}"
    );
    let (ok, stdout, stderr) = run(&[
        "member",
        "erase",
        "--member",
        "alice",
        "--by",
        "claire",
        "--reason",
        "request of 2026-11-30",
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("1 unbilled sessions, 2 session events, 1 access_denied events deleted; 1 billed sessions kept"),
        "{stdout}"
    );
    assert!(
        stdout.contains("remove this entry") && stdout.contains(ALICE),
        "{stdout}"
    );

    // The export: the invoice and the session it bills, nothing else.
    let out = dir.path().join("alice.json");
    let (ok, _, stderr) = run(&[
        "member",
        "export",
        "--member",
        "alice",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&out).expect("export");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let sessions = doc["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{text}");
    assert_eq!(sessions[0]["machine"], "laser-1");
    let billed = doc["documents"][0]["lines"].to_string();
    assert!(billed.contains("laser-1/1/1"), "{billed}");
    assert!(
        !text.contains("printer-1") && !text.contains("access_denied"),
        "{text}"
    );

    // The record: append-only.
    {
        let db = rusqlite::Connection::open(&c.ledger.path).expect("db");
        let row: (String, String, String, i64, i64, i64, i64) = db
            .query_row(
                "SELECT member, erased_by, reason, sessions, events, access_denied, billed_kept
                 FROM erasures",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .expect("one erasure");
        assert_eq!(
            row,
            (
                "alice".into(),
                "claire".into(),
                "request of 2026-11-30".into(),
                1,
                2,
                1,
                1
            )
        );
        assert!(db.execute("UPDATE erasures SET reason='x'", []).is_err());
        assert!(db.execute("DELETE FROM erasures", []).is_err());
    }

    // The operator removes alice from the site file: the audit still verifies everything.
    let mut without = c.clone();
    without.members.retain(|m| m.id != "alice");
    std::fs::write(&file, without.to_toml()).expect("write config");
    let (ok, stdout, stderr) = run(&["audit"]);
    assert!(
        ok && stdout.contains("2 documents, 0 differences"),
        "{stdout}{stderr}"
    );
    let mut l = open(&without);
    let before = l.totals().expect("totals");
    let outcomes = l.commit(&alice_nov).expect("commit");
    assert!(
        outcomes.iter().all(|o| o.outcome == Outcome::Duplicate),
        "{outcomes:?}"
    );
    assert_eq!(l.totals().expect("totals"), before);
}

/// `privacy purge --dry-run` on the command line: prints the cutoff and the totals and changes
/// nothing (the data here is recent: nothing is past retention).
#[test]
fn the_purge_command_dry_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path());
    c.privacy.retention_days = 62;
    let now = fabmeter_collector::ingest::now_ms();
    {
        let mut l = open(&c);
        let at = api::format_utc(now - 3_600_000);
        l.commit(&session("laser-1", 1, 1, STRANGER, &at, 60, 0))
            .expect("commit");
    }
    let file = dir.path().join("site.toml");
    std::fs::write(&file, c.to_toml()).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
        .args(["privacy", "purge", "--dry-run", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("would purge before")
            && stdout.contains(": 0 sessions, 0 session events, 0 access_denied (dry run"),
        "{stdout}"
    );
    let l = open(&c);
    assert_eq!(l.totals().expect("totals").events, 2);
}
