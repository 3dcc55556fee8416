//! Invoicing reads only the period's sessions and the late ones (not the whole ledger): here
//! against an oracle, the first implementation that priced from every stored session, every
//! billed session and every run period. Six months of a small site in Europe/Paris (a DST change
//! inside), with sessions arriving late (after their month was invoiced), open sessions closed
//! later, unknown badges, a plan with an allowance and a daily cap (so that billed sessions change
//! the price of late ones), members settled at zero, and credit notes releasing sessions.

use std::collections::{BTreeMap, BTreeSet};

use fabmeter_collector::api;
use fabmeter_collector::billing::engine::{price, BillableSession, PricedLine, SessionKey};
use fabmeter_collector::billing::invoice::{Billing, Totals};
use fabmeter_collector::billing::Period;
use fabmeter_collector::config::Config;
use fabmeter_collector::ledger::{Ledger, Record};

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

#[test]
fn invoices_from_bounded_reads_are_those_of_the_whole_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Config::from_toml(SITE).expect("config");
    c.ledger.path = dir.path().join("ledger.sqlite");
    c.validate().expect("valid");
    let billing = Billing::from_config(&c).expect("rules").expect("billing");
    let mut l = open(&c);

    let mut rng = Lcg(7);
    let months = [
        "2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06",
    ];
    // Events held back, committed after their month was invoiced: (commit before month i, event).
    let mut held: Vec<(usize, Record)> = Vec::new();
    let (mut late_lines, mut zero, mut credited) = (0, 0, 0);
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
                l.credit_note(&billing, &d.number, "test", now - 1000)
                    .expect("credit note");
                credited += 1;
            }
        }
        let expected = oracle(&c, &billing, period);
        let r = l
            .issue_invoices(&billing, period, now, false)
            .expect("issue");
        let issued: BTreeMap<String, Vec<PricedLine>> = r
            .invoices
            .iter()
            .map(|d| (d.buyer.id.clone(), d.lines.clone()))
            .collect();
        let (want_issued, want_zero): (BTreeMap<_, _>, BTreeMap<_, _>) = expected
            .into_iter()
            .partition(|(_, lines)| Totals::of(lines).excl_cents != 0);
        assert_eq!(issued, want_issued, "{m}");
        assert_eq!(
            r.settled_at_zero,
            want_zero.keys().cloned().collect::<Vec<_>>(),
            "{m}"
        );
        late_lines += issued.values().flatten().filter(|l| l.late).count();
        zero += r.settled_at_zero.len();
        // The documents of the period are those of the whole list that belong to it.
        let all = l.documents().expect("docs");
        let of_period: Vec<_> = all.into_iter().filter(|d| d.period == period).collect();
        assert_eq!(l.period_documents(period).expect("docs"), of_period, "{m}");
    }
    // The run exercised what it is about.
    assert!(late_lines >= 10, "late lines: {late_lines}");
    assert!(credited >= 2, "credit notes: {credited}");
    assert!(zero >= 3, "settled at zero: {zero}");
    assert_eq!(l.audit(&billing).expect("audit"), vec![]);
}
