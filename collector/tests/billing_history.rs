//! Invoicing reads only the period's sessions and the late ones (not the whole ledger): here
//! against an oracle, the first implementation that priced from every stored session, every
//! billed session and every run period. Six months of a small site in Europe/Paris (a DST change
//! inside), with sessions arriving late (after their month was invoiced), open sessions closed
//! later, unknown badges, a plan with an allowance and a daily cap (so that billed sessions change
//! the price of late ones), members settled at zero, and credit notes releasing sessions. On the
//! same six months, the streamed audit reports exactly what was tampered with.

use std::collections::{BTreeMap, BTreeSet};

use fabmeter_collector::api;
use fabmeter_collector::billing::engine::{
    price, BillableSession, LineKind, PricedLine, SessionKey,
};
use fabmeter_collector::billing::invoice::{Billing, DocKind, Totals};
use fabmeter_collector::billing::money::format_cents;
use fabmeter_collector::billing::Period;
use fabmeter_collector::config::Config;
use fabmeter_collector::ledger::{AuditDifference, Ledger, Record, SqliteLedger};

#[path = "support/ledger.rs"]
mod support;
use support::{closed_session, open};

const BADGES: [&str; 4] = [
    "ba279e0c1e5c2464", // alice, resident
    "a70e24fcac6bc0a8", // bob, no plan
    "5c0ffee5c0ffee55", // carol, resident
    "0123456789abcdef", // nobody's
];
/// Dave, resident, uses the laser a few minutes a month: within the allowance, settled at zero.
const DAVE: &str = "d0d0d0d0d0d0d0d0";

const SITE: &str = r#"
[site]
id = "atelier-lyon"

[[machines]]
id = "laser-1"
kind = "laser"
[[machines]]
id = "printer-1"
kind = "printer-3d"

[[members]]
id = "alice"
badges = ["ba279e0c1e5c2464"]
[[members]]
id = "bob"
badges = ["a70e24fcac6bc0a8"]
[[members]]
id = "carol"
badges = ["5c0ffee5c0ffee55"]
[[members]]
id = "dave"
badges = ["d0d0d0d0d0d0d0d0"]

[billing]
invoice_prefix = "ATL"
timezone = "Europe/Paris"
[billing.seller]
name = "Atelier de Lyon SAS"
[[billing.tariffs]]
name = "laser"
valid_from = "2025-01-01"
busy_per_min = "0.50"
idle_per_min = "0.10"
increment_min = 5
daily_cap = "20.00"
[[billing.tariffs]]
name = "printer-3d"
valid_from = "2025-01-01"
busy_per_min = "0.02"
setup = "1.00"
[[billing.plans]]
name = "resident"
discount_percent = 10
allowances = [{ tariff = "laser", minutes = 30 }]
[[billing.memberships]]
member = "alice"
plan = "resident"
valid_from = "2025-01-01"
[[billing.memberships]]
member = "carol"
plan = "resident"
valid_from = "2025-01-01"
[[billing.memberships]]
member = "dave"
plan = "resident"
valid_from = "2025-01-01"
[[billing.credits]]
member = "bob"
date = "2025-12-01"
amount = "30.00"
"#;

fn ms(s: &str) -> u64 {
    api::parse_time(s).expect("time")
}

/// The two events of a session: its start and its end.
struct Planned {
    start: Record,
    end: Record,
}

impl From<(Record, Record)> for Planned {
    fn from((start, end): (Record, Record)) -> Self {
        Planned { start, end }
    }
}

/// Deterministic pseudo-random numbers (an LCG): the same site every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// `n` random sessions in `period` (local days 1 to 28) on boot `boot` of each machine, then
/// Dave's ten minutes on the laser on the 28th.
fn month(rng: &mut Lcg, period: &str, boot: u32, n: u32) -> Vec<Planned> {
    let first = ms(&format!("{period}-01T00:00:00Z"));
    let mut out: Vec<Planned> = (0..n)
        .map(|i| {
            let machine = if rng.below(3) == 0 {
                "printer-1"
            } else {
                "laser-1"
            };
            let badge = BADGES[rng.below(4) as usize];
            // From 06:00 UTC on a day of 1..=28: always inside the local month.
            let t0 = first + rng.below(28) * 86_400_000 + 6 * 3_600_000 + u64::from(i) * 60_000;
            let busy_s = 60 + rng.below(3_600) as u32;
            let idle_s = rng.below(600) as u32;
            closed_session(machine, boot, 2 * i + 1, badge, t0, busy_s, idle_s).into()
        })
        .collect();
    let t0 = first + 27 * 86_400_000 + 20 * 3_600_000;
    out.push(closed_session("laser-1", boot, 2 * n + 1, DAVE, t0, 600, 0).into());
    out
}

/// What the first implementation put on each member's invoice for `period`: every stored
/// session, every billed one and every run period read, then grouped by member and period.
fn oracle(c: &Config, b: &Billing, period: Period) -> BTreeMap<String, Vec<PricedLine>> {
    let conn = rusqlite::Connection::open(&c.ledger.path).expect("raw");
    let site = c.site_id().expect("site").as_str().to_owned();
    let zone = b.rules.zone;
    let mut stmt = conn
        .prepare(
            "SELECT machine, boot, session, member, start_ms, busy_s, idle_s, status FROM sessions
             WHERE site=?1 AND start_ms IS NOT NULL AND member IS NOT NULL",
        )
        .expect("prepare");
    let rows: Vec<(BillableSession, bool)> = stmt
        .query_map([&site], |r| {
            Ok((
                BillableSession {
                    key: SessionKey {
                        machine: r.get(0)?,
                        boot: r.get(1)?,
                        session: r.get(2)?,
                    },
                    member: r.get(3)?,
                    start_ms: r.get::<_, i64>(4)? as u64,
                    busy_s: r.get(5)?,
                    idle_s: r.get(6)?,
                },
                r.get::<_, String>(7)? == "open",
            ))
        })
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    let rows: Vec<(BillableSession, bool)> = rows
        .into_iter()
        .filter(|(s, _)| !s.member.starts_with("badge:"))
        .collect();
    let billed: BTreeSet<SessionKey> = conn
        .prepare("SELECT machine, boot, session FROM billed_sessions WHERE site=?1")
        .expect("prepare")
        .query_map([&site], |r| {
            Ok(SessionKey {
                machine: r.get(0)?,
                boot: r.get(1)?,
                session: r.get(2)?,
            })
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("billed");
    let run: BTreeSet<Period> = conn
        .prepare("SELECT period FROM billing_runs WHERE site=?1")
        .expect("prepare")
        .query_map([&site], |r| r.get::<_, String>(0))
        .expect("query")
        .map(|p| Period::parse(&p.expect("row")).expect("period"))
        .collect();
    let members: BTreeSet<&str> = rows.iter().map(|(s, _)| s.member.as_str()).collect();
    let mut out = BTreeMap::new();
    for member in members {
        let mut by_period: BTreeMap<Period, Vec<BillableSession>> = BTreeMap::new();
        for (s, _) in rows.iter().filter(|(s, open)| !open && s.member == member) {
            let p = Period::of(zone.date_of(s.start_ms));
            by_period.entry(p).or_default().push(s.clone());
        }
        let mut lines = Vec::new();
        for (p, sessions) in &by_period {
            let late = *p < period && run.contains(p);
            if !(late || *p == period) {
                continue;
            }
            for mut l in price(&b.rules, member, *p, sessions, &billed).lines {
                if late {
                    l.late = true;
                    l.description = format!("[late, {p}] {}", l.description);
                }
                lines.push(l);
            }
        }
        if !lines.is_empty() {
            out.insert(member.to_owned(), lines);
        }
    }
    out
}

/// What a run of [`six_months`] went through.
struct Run {
    late_lines: usize,
    settled_at_zero: usize,
    credit_notes: usize,
    /// Late lines on Dave's invoices (his month settled at zero before).
    after_settled: usize,
}

/// Six months of the site into the ledger `l`, each invoiced (2026-01 to 2026-06): a sixth of
/// the sessions arrive one or two months late, another sixth stays open across its month's run,
/// from the third month on a credit note cancels Alice's invoice of two months back, and a late
/// session of March goes on an invoice of Dave's, settled at zero for March. With
/// `check`, each month's invoices are compared with the oracle's.
fn six_months(c: &Config, billing: &Billing, l: &mut SqliteLedger, check: bool) -> Run {
    let mut rng = Lcg(7);
    let months = [
        "2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06",
    ];
    // Events held back, committed after their month was invoiced: (commit before month i, event).
    let mut held: Vec<(usize, Record)> = Vec::new();
    let mut run = Run {
        late_lines: 0,
        settled_at_zero: 0,
        credit_notes: 0,
        after_settled: 0,
    };
    for (i, m) in months.iter().enumerate() {
        let mut batch: Vec<Record> = held
            .iter()
            .filter(|(at, _)| *at == i)
            .map(|(_, r)| r.clone())
            .collect();
        held.retain(|(at, _)| *at != i);
        for (k, s) in month(&mut rng, m, i as u32 + 1, 24).into_iter().enumerate() {
            match k % 6 {
                // Arrives one or two months late, whole.
                0 => {
                    held.push((i + 1 + k % 2, s.start));
                    held.push((i + 1 + k % 2, s.end));
                }
                // Still open when the month is invoiced: its end arrives a month later.
                1 => {
                    batch.push(s.start);
                    held.push((i + 1, s.end));
                }
                _ => batch.extend([s.start, s.end]),
            }
        }
        if i == 2 {
            // Dave's ten minutes of March arrive in April (as every month's: see `month`) and
            // are settled at zero then; forty more laser minutes of March arrive in May, priced
            // late after the settled ten, which used the allowance first.
            let t0 = ms("2026-03-20T16:00:00Z");
            let s = Planned::from(closed_session(
                "laser-1",
                i as u32 + 1,
                101,
                DAVE,
                t0,
                2_400,
                0,
            ));
            held.push((i + 2, s.start));
            held.push((i + 2, s.end));
        }
        l.commit(&batch).expect("commit");
        let period = Period::parse(m).expect("period");
        let now = ms(&format!("{}-02T09:00:00Z", period.next()));
        // A credit note on an invoice of two months back: its sessions go, late, on this month.
        if i >= 2 {
            let back = months[i - 2];
            let docs = l.documents().expect("docs");
            if let Some(d) = docs
                .iter()
                .find(|d| d.period.to_string() == back && d.buyer.id == "alice")
            {
                l.credit_note(billing, &d.number, "test", now - 1000)
                    .expect("credit note");
                run.credit_notes += 1;
            }
        }
        let expected = check.then(|| oracle(c, billing, period));
        let r = l
            .issue_invoices(billing, period, now, false)
            .expect("issue");
        let issued: BTreeMap<String, Vec<PricedLine>> = r
            .invoices
            .iter()
            .map(|d| (d.buyer.id.clone(), d.lines.clone()))
            .collect();
        run.late_lines += issued.values().flatten().filter(|l| l.late).count();
        run.settled_at_zero += r.settled_at_zero.len();
        run.after_settled += r
            .invoices
            .iter()
            .filter(|d| d.buyer.id == "dave")
            .flat_map(|d| &d.lines)
            .filter(|l| l.late)
            .count();
        let Some(expected) = expected else { continue };
        let (want_issued, want_zero): (BTreeMap<_, _>, BTreeMap<_, _>) = expected
            .into_iter()
            .partition(|(_, lines)| Totals::of(lines).excl_cents != 0);
        assert_eq!(issued, want_issued, "{m}");
        assert_eq!(
            r.settled_at_zero,
            want_zero.keys().cloned().collect::<Vec<_>>(),
            "{m}"
        );
        // The documents of the period are those of the whole list that belong to it.
        let all = l.documents().expect("docs");
        let of_period: Vec<_> = all.into_iter().filter(|d| d.period == period).collect();
        assert_eq!(l.period_documents(period).expect("docs"), of_period, "{m}");
    }
    // The run exercised what it is about.
    assert!(run.late_lines >= 10, "late lines: {}", run.late_lines);
    assert!(
        run.after_settled >= 1,
        "late after settled: {}",
        run.after_settled
    );
    assert!(run.credit_notes >= 2, "credit notes: {}", run.credit_notes);
    assert!(
        run.settled_at_zero >= 3,
        "settled at zero: {}",
        run.settled_at_zero
    );
    run
}

/// A fresh site (its ledger in a new temporary directory, returned to be kept) through
/// [`six_months`], audited without a difference: its config, billing rules and ledger.
fn six_months_site(check: bool) -> (tempfile::TempDir, Config, Billing, SqliteLedger) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Config::from_toml(SITE).expect("config");
    c.ledger.path = dir.path().join("ledger.sqlite");
    c.validate().expect("valid");
    let billing = Billing::from_config(&c).expect("rules").expect("billing");
    let mut l = open(&c);
    six_months(&c, &billing, &mut l, check);
    assert_eq!(l.audit(&billing).expect("audit"), vec![]);
    (dir, c, billing, l)
}

#[test]
fn invoices_from_bounded_reads_are_those_of_the_whole_ledger() {
    six_months_site(true);
}

/// How the audit describes a derived row or a fold (docs/BILLING.md "Audit").
fn described(member: &str, start_ms: u64, busy_s: i64, idle_s: i64) -> String {
    format!(
        "member {member}, start {}, busy {busy_s} s, idle {idle_s} s",
        api::format_utc(start_ms)
    )
}

/// The derived row of `k`: (member, start, busy, idle).
fn row_of(raw: &rusqlite::Connection, k: &SessionKey) -> (String, u64, i64, i64) {
    raw.query_row(
        "SELECT member, start_ms, busy_s, idle_s FROM sessions
         WHERE machine=?1 AND boot=?2 AND session=?3",
        rusqlite::params![k.machine, k.boot, k.session],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?)),
    )
    .expect("session row")
}

/// The audit streams the ledger (one boot's events, then the documents in chain order a few at a
/// time): over six months with late sessions, credit notes and sessions settled at zero, it
/// reports exactly what was tampered with, in four different periods: a document of February
/// (its hash, the line and its totals), the end event of a session billed late on a later
/// month's invoice (that invoice's line, recomputed from the events of an earlier period, and
/// the session row, named with the document that billed it last), the derived row of a session
/// billed in its own month, and that of a session settled at zero (named by no document).
#[test]
fn the_streamed_audit_reports_exactly_what_was_tampered_with() {
    let (_dir, c, billing, l) = six_months_site(false);
    let docs = l.documents().expect("documents");
    let raw = rusqlite::Connection::open(&c.ledger.path).expect("raw");
    let zone = billing.rules.zone;
    let period_of = |start_ms: u64| Period::of(zone.date_of(start_ms));
    let line_key = |l: &PricedLine| {
        let keys: Vec<String> = l.sessions.iter().map(ToString::to_string).collect();
        format!("{:?} {}", l.kind, keys.join(","))
    };
    // The sessions billed by an invoice not cancelled: the last document to bill each.
    let credited: BTreeSet<&str> = docs.iter().filter_map(|d| d.refers_to.as_deref()).collect();
    let mut billed_by: BTreeMap<SessionKey, &str> = BTreeMap::new();
    // How many invoices name each session (a credited one, then the one billing it again: 2).
    let mut named: BTreeMap<SessionKey, usize> = BTreeMap::new();
    for d in docs.iter().filter(|d| d.kind == DocKind::Invoice) {
        for k in d.lines.iter().flat_map(|l| &l.sessions) {
            billed_by.insert(k.clone(), &d.number);
            *named.entry(k.clone()).or_default() += 1;
        }
    }
    billed_by.retain(|_, n| !credited.contains(n));
    let invoices = || {
        docs.iter()
            .filter(|d| d.kind == DocKind::Invoice && !credited.contains(d.number.as_str()))
    };
    let mut want: Vec<AuditDifference> = Vec::new();
    let mut sessions: Vec<(SessionKey, AuditDifference)> = Vec::new();
    let feb = Period::parse("2026-02").expect("period");

    // 1. A February invoice's first session line billed one euro more, the document not sealed
    //    again: its hash, that line, its totals.
    let d = invoices()
        .find(|d| d.period == feb && d.lines.iter().any(|l| l.kind == LineKind::Session))
        .expect("a February invoice");
    let mut forged = d.clone();
    let line = forged
        .lines
        .iter_mut()
        .find(|l| l.kind == LineKind::Session)
        .expect("a session line");
    line.amount_cents += 100;
    let (forged_line, was_cents) = (line_key(line), line.amount_cents);
    raw.execute("DROP TRIGGER invoices_never_change", [])
        .expect("drop trigger");
    let n = raw
        .execute(
            "UPDATE invoices SET document=?1 WHERE number=?2",
            rusqlite::params![serde_json::to_string(&forged).expect("json"), d.number],
        )
        .expect("forge");
    assert_eq!(n, 1);
    want.push(diff(
        &d.number,
        "hash",
        None,
        &d.hash,
        &forged.content_hash(),
    ));
    want.push(diff(
        &d.number,
        "amount",
        Some(forged_line),
        &format_cents(was_cents),
        &format_cents(was_cents - 100),
    ));
    want.push(diff(
        &d.number,
        "totals",
        None,
        &format!("{:?}", d.totals),
        &format!("{:?}", Totals::of(&forged.lines)),
    ));

    // 2. A printer session (no allowance, no cap: priced alone) billed late on an invoice of a
    //    month after March, from a month other than February, on no other invoice: ten busy
    //    minutes more in its end event. That line is priced again from the events, and the row
    //    is named with that invoice.
    let (late_doc, late_line) = invoices()
        .filter(|d| d.period > Period::parse("2026-03").expect("period"))
        .flat_map(|d| d.lines.iter().map(move |l| (d, l)))
        .find(|(d, l)| {
            l.late
                && l.kind == LineKind::Session
                && l.sessions[0].machine == "printer-1"
                && period_of(l.start_ms.expect("start")) != feb
                && billed_by.get(&l.sessions[0]) == Some(&d.number.as_str())
                && named.get(&l.sessions[0]) == Some(&1)
        })
        .expect("a late printer line");
    let k = late_line.sessions[0].clone();
    let (member, start_ms, busy_s, idle_s) = row_of(&raw, &k);
    let n = raw
        .execute(
            "UPDATE events SET payload = replace(payload, ?1, ?2)
             WHERE machine=?3 AND boot=?4 AND session=?5 AND kind='session_ended'",
            rusqlite::params![
                format!("\"busy_s\":{busy_s}"),
                format!("\"busy_s\":{}", busy_s + 600),
                k.machine,
                k.boot,
                k.session
            ],
        )
        .expect("tamper event");
    assert_eq!(n, 1);
    let tampered = BillableSession {
        key: k.clone(),
        member: member.clone(),
        start_ms,
        busy_s: u32::try_from(busy_s + 600).expect("busy"),
        idle_s: u32::try_from(idle_s).expect("idle"),
    };
    let again = price(
        &billing.rules,
        &member,
        period_of(start_ms),
        &[tampered],
        &BTreeSet::new(),
    )
    .lines;
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].amount_cents, late_line.amount_cents);
    want.push(diff(
        &late_doc.number,
        "amount",
        Some(line_key(late_line)),
        &format_cents(late_line.amount_cents),
        &format_cents(again[0].amount_cents),
    ));
    want.push(diff(
        &late_doc.number,
        "parts",
        Some(line_key(late_line)),
        &format!("{:?}", late_line.parts),
        &format!("{:?}", again[0].parts),
    ));
    sessions.push((
        k.clone(),
        diff(
            &late_doc.number,
            "session",
            Some(k.to_string()),
            &described(&member, start_ms, busy_s, idle_s),
            &described(&member, start_ms, busy_s + 600, idle_s),
        ),
    ));

    // 3. The derived row of a session billed in its own month (May), a minute more idle.
    let (may_doc, may_key) = invoices()
        .filter(|d| d.period == Period::parse("2026-05").expect("period"))
        .flat_map(|d| d.lines.iter().map(move |l| (d, l)))
        .find(|(d, l)| {
            !l.late
                && l.kind == LineKind::Session
                && billed_by.get(&l.sessions[0]) == Some(&d.number.as_str())
        })
        .map(|(d, l)| (d, l.sessions[0].clone()))
        .expect("a May line");
    // 4. The derived row of a session settled at zero, a minute more busy.
    let settled: SessionKey = raw
        .query_row(
            "SELECT machine, boot, session FROM billed_sessions WHERE number IS NULL
             ORDER BY chain DESC LIMIT 1",
            [],
            |r| {
                Ok(SessionKey {
                    machine: r.get(0)?,
                    boot: r.get(1)?,
                    session: r.get(2)?,
                })
            },
        )
        .expect("a session settled at zero");
    for (k, number, busy, idle) in [
        (&may_key, may_doc.number.as_str(), 0, 60),
        (&settled, "-", 60, 0),
    ] {
        let (member, start_ms, busy_s, idle_s) = row_of(&raw, k);
        let n = raw
            .execute(
                "UPDATE sessions SET busy_s = busy_s + ?1, idle_s = idle_s + ?2
                 WHERE machine=?3 AND boot=?4 AND session=?5",
                rusqlite::params![busy, idle, k.machine, k.boot, k.session],
            )
            .expect("tamper row");
        assert_eq!(n, 1);
        sessions.push((
            k.clone(),
            diff(
                number,
                "session",
                Some(k.to_string()),
                &described(&member, start_ms, busy_s + busy, idle_s + idle),
                &described(&member, start_ms, busy_s, idle_s),
            ),
        ));
    }
    // Four different periods.
    let periods: BTreeSet<Period> = [
        feb,
        period_of(start_ms),
        Period::parse("2026-05").expect("period"),
        period_of(row_of(&raw, &settled).1),
    ]
    .into();
    assert!(periods.len() >= 3, "{periods:?}");

    // Documents in chain order, then the session rows in key order.
    let chain: Vec<&str> = docs.iter().map(|d| d.number.as_str()).collect();
    want.sort_by_key(|d| chain.iter().position(|n| *n == d.number));
    sessions.sort_by(|a, b| a.0.cmp(&b.0));
    want.extend(sessions.into_iter().map(|(_, d)| d));
    assert_eq!(l.audit(&billing).expect("audit"), want);
}

/// An audit difference as expected.
fn diff(
    number: &str,
    field: &str,
    line: Option<String>,
    issued: &str,
    recomputed: &str,
) -> AuditDifference {
    AuditDifference {
        number: number.to_owned(),
        field: field.to_owned(),
        line,
        issued: issued.to_owned(),
        recomputed: recomputed.to_owned(),
    }
}
