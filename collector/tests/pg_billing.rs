//! Invoicing and personal data on the PostgreSQL ledger, against a private PostgreSQL cluster
//! (initdb + postgres on a free port): the same sessions give the same documents (numbers, lines,
//! totals, hashes), the same audit and the same purge and erasure reports as on the SQLite ledger;
//! two connections issuing for one site at once number without gap or duplicate and keep one
//! unbroken chain; two sites in one database number independently; issued invoices and erasure
//! records cannot be changed; the commands (`invoice`, `audit`, `credit-note`, `privacy purge`,
//! `member export`, `member erase`) run on PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};

use fabmeter_collector::billing::engine::SessionKey;
use fabmeter_collector::billing::invoice::{Billing, DocKind, Invoice, GENESIS};
use fabmeter_collector::billing::Period;
use fabmeter_collector::config::Config;
use fabmeter_collector::ledger::{
    AnyLedger, AuditDifference, BillingError, Ledger, MachineInfo, Outcome, PgLedger, Record,
    MEMBER_DOCUMENTS_SQL,
};
use fabmeter_collector::protocol::message::{DenyReason, EventBody};
use fabmeter_collector::protocol::BadgeHash;
use fabmeter_e2e::Postgres;

#[path = "support/ledger.rs"]
#[allow(dead_code)]
mod support;
use support::{closed_session as session, event};
#[path = "support/sites.rs"]
#[allow(dead_code)]
mod sites;
use sites::{ms, seller, SiteFile, Tariff, ALICE, BOB};

const CAROL: &str = "5c0ffee5c0ffee55";
/// Dave, resident, within the allowance: settled at zero.
const DAVE: &str = "d0d0d0d0d0d0d0d0";
/// A badge no member holds.
const STRANGER: &str = "0123456789abcdef";

/// A site with a plan (allowance, discount), a daily cap, prepaid credit and a member settled at
/// zero, in a zone with a DST change.
fn site_text() -> String {
    SiteFile::new("atelier-lyon")
        .machine("laser-1", "", "laser")
        .machine("printer-1", "", "printer-3d")
        .alice_and_bob()
        .member("carol", "", CAROL)
        .member("dave", "", DAVE)
        .billing("Europe/Paris", false, seller())
        .tariff(
            Tariff::new("laser", "2025-01-01", "0.50")
                .idle("0.10")
                .increment(5)
                .daily_cap("20.00"),
        )
        .tariff(Tariff::new("printer-3d", "2025-01-01", "0.02").setup("1.00"))
        .credit("bob", "2025-12-01", "30.00")
        .toml(
            r#"
[[billing.plans]]
name = "resident"
discount_percent = 10
allowances = [{ tariff = "laser", minutes = 30 }]
[[billing.memberships]]
member = "alice"
plan = "resident"
valid_from = "2025-01-01"
[[billing.memberships]]
member = "dave"
plan = "resident"
valid_from = "2025-01-01"
"#,
        )
        .text()
}

fn period(s: &str) -> Period {
    Period::parse(s).expect("period")
}

/// The site `site` with its ledger in `dir` (SQLite) or, with `url`, on PostgreSQL.
fn config(site: &str, dir: &std::path::Path, url: Option<String>) -> Config {
    let mut c = Config::from_toml(&site_text().replace("atelier-lyon", site)).expect("config");
    c.ledger.path = dir.join(format!("{site}.sqlite"));
    c.ledger.url = url;
    c.validate().expect("valid");
    c
}

/// The ledger `c` names, its machines registered.
fn open(c: &Config) -> AnyLedger {
    let mut l = AnyLedger::open(&c.ledger, &c.site_id().expect("site"), c.badge_directory())
        .expect("open the ledger");
    register(&mut l, c);
    l
}

fn register(l: &mut dyn Ledger, c: &Config) {
    let machines: Vec<MachineInfo> = c
        .machines
        .iter()
        .map(|m| MachineInfo {
            id: m.id.clone(),
            name: m.name.clone(),
            kind: m.kind.clone(),
            source: "config".into(),
        })
        .collect();
    l.register_machines(&machines, 0).expect("register");
}

fn billing(c: &Config) -> Billing {
    Billing::from_config(c).expect("rules").expect("billing")
}

/// Both events of a session.
fn both(s: (Record, Record)) -> Vec<Record> {
    vec![s.0, s.1]
}

/// A refused badge at `t`.
fn denied(machine: &str, boot: u32, seq: u32, t: u64, badge: &str, reason: DenyReason) -> Record {
    let badge = BadgeHash::from_hex(badge).expect("badge");
    event(
        machine,
        boot,
        seq,
        t,
        EventBody::AccessDenied { badge, reason },
    )
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

/// `n` sessions of random members (the stranger too) in month `month` (`YYYY-MM`), on boot
/// `boot` of both machines, then Dave's ten minutes on the laser (within his allowance).
fn month(rng: &mut Lcg, month: &str, boot: u32, n: u32) -> Vec<Record> {
    let badges = [ALICE, BOB, CAROL, STRANGER];
    let first = ms(&format!("{month}-01T00:00:00Z"));
    let mut out = Vec::new();
    for i in 0..n {
        let machine = if rng.below(3) == 0 {
            "printer-1"
        } else {
            "laser-1"
        };
        let badge = badges[usize::try_from(rng.below(4)).expect("index")];
        // From 06:00 UTC on a day of 1..=28: always inside the local month.
        let t0 = first + rng.below(28) * 86_400_000 + 6 * 3_600_000 + u64::from(i) * 60_000;
        let busy_s = 60 + u32::try_from(rng.below(3_600)).expect("busy");
        let idle_s = u32::try_from(rng.below(600)).expect("idle");
        out.extend(both(session(
            machine,
            boot,
            2 * i + 1,
            badge,
            t0,
            busy_s,
            idle_s,
        )));
    }
    let t0 = first + 27 * 86_400_000 + 20 * 3_600_000;
    out.extend(both(session("laser-1", boot, 2 * n + 1, DAVE, t0, 600, 0)));
    out
}

/// Both ledgers, to run the same steps on.
fn ledgers<'a>(lite: &'a mut AnyLedger, post: &'a mut AnyLedger) -> [&'a mut dyn Ledger; 2] {
    [lite, post]
}

/// The documents of a ledger, checked: numbered `ATL-<year>-000001` on without gap or
/// duplicate per year of issue, each hash right and chained to the one before.
fn check_chain(docs: &[Invoice]) {
    let mut prev = GENESIS.to_owned();
    let mut seqs: BTreeMap<i32, u32> = BTreeMap::new();
    let mut numbers = BTreeSet::new();
    for d in docs {
        let seq = seqs.entry(d.issue_date.y).or_default();
        *seq += 1;
        assert_eq!(d.number, format!("ATL-{}-{:06}", d.issue_date.y, seq));
        assert!(numbers.insert(d.number.clone()), "{} twice", d.number);
        assert!(d.hash_ok(), "{}: hash", d.number);
        assert_eq!(d.prev_hash, prev, "{}: chain", d.number);
        prev = d.hash.clone();
    }
}

/// Checks that each member's documents read from `l` by (site, member) are exactly its
/// documents among `docs` (all the site's), in chain order: none of another member's, and all
/// the members' together are all the documents.
fn check_member_documents(l: &dyn Ledger, docs: &[Invoice]) {
    let mut read = 0;
    for member in ["alice", "bob", "carol", "dave"] {
        let mine: Vec<Invoice> = docs
            .iter()
            .filter(|d| d.buyer.id == member)
            .cloned()
            .collect();
        let got = l.member_documents(member).expect("member documents");
        assert_eq!(got, mine, "{member}");
        read += got.len();
    }
    assert_eq!(read, docs.len());
    assert!(l.member_documents("nobody").expect("none").is_empty());
}

/// The same sessions on SQLite and on PostgreSQL, through three invoice runs (with late sessions,
/// a session open across a run, members settled at zero, prepaid credit), a credit note and the
/// refused operations: every report and document is the same, byte for byte, and so is the audit,
/// clean and then with a tampered session row.
#[test]
fn sqlite_and_postgresql_issue_the_same_documents_and_audit_alike() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("same").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let lite_c = config("atelier-lyon", dir.path(), None);
    let pg_c = config("atelier-lyon", dir.path(), Some(pg.url("same")));
    let b = billing(&lite_c);
    let mut lite = open(&lite_c);
    let mut post = open(&pg_c);
    assert!(matches!(lite, AnyLedger::Sqlite(_)));
    assert!(matches!(post, AnyLedger::Postgres(_)));
    let same = |what: &str, a: String, b: String| {
        assert_eq!(a, b, "{what}: SQLite and PostgreSQL differ");
    };

    let mut rng = Lcg(15);
    let mut oct = month(&mut rng, "2026-10", 1, 24);
    // Three October sessions arrive after October was invoiced.
    let late_oct = oct.split_off(oct.len() - 6);
    let mut nov = month(&mut rng, "2026-11", 2, 24);
    nov.extend(late_oct);
    // Carol's session open across November's run (ended in December): late on December's.
    let (open_start, open_end) = session(
        "printer-1",
        2,
        1001,
        CAROL,
        ms("2026-11-29T21:00:00Z"),
        5_400,
        0,
    );
    nov.push(open_start);
    let mut dec = month(&mut rng, "2026-12", 3, 24);
    dec.push(open_end);

    let runs = [
        (&oct, "2026-10", "2026-11-02T10:00:00Z"),
        (&nov, "2026-11", "2026-12-01T10:00:00Z"),
        (&dec, "2026-12", "2027-01-04T10:00:00Z"),
    ];
    let mut late_lines = 0;
    let mut settled = 0;
    for (batch, p, at) in runs {
        let mut reports = Vec::new();
        for l in ledgers(&mut lite, &mut post) {
            let outcomes = l.commit(batch).expect("commit");
            assert!(outcomes.iter().all(|o| o.outcome == Outcome::Accepted));
            // Before the period's end: refused, nothing stored.
            let e = l
                .issue_invoices(&b, period(p), ms(&format!("{p}-15T00:00:00Z")), false)
                .expect_err("the period is not over");
            assert!(matches!(e, BillingError::PeriodNotOver { .. }), "{e:?}");
            let before = l.documents().expect("documents").len();
            let dry = l
                .issue_invoices(&b, period(p), ms(at), true)
                .expect("dry run");
            assert!(dry.dry_run && !dry.invoices.is_empty());
            assert_eq!(l.documents().expect("documents").len(), before, "dry run");
            let r = l
                .issue_invoices(&b, period(p), ms(at), false)
                .expect("issue");
            assert_eq!(
                serde_json::to_string(&dry.invoices).expect("json"),
                serde_json::to_string(&r.invoices).expect("json"),
                "the dry run previews what is issued"
            );
            let again = l
                .issue_invoices(&b, period(p), ms(at) + 1, false)
                .expect("again");
            assert!(again.already_issued && again.invoices.is_empty());
            reports.push(serde_json::to_string_pretty(&r).expect("json"));
            late_lines += r
                .invoices
                .iter()
                .flat_map(|d| &d.lines)
                .filter(|l| l.late)
                .count();
            settled += r.settled_at_zero.len();
        }
        let post_report = reports.pop().expect("PostgreSQL");
        same(p, reports.pop().expect("SQLite"), post_report);
    }
    assert!(late_lines > 0, "the workload has late sessions");
    assert!(settled > 0, "the workload settles a member at zero");

    // A credit note; a second one, and one for a number that is not an invoice, are refused and
    // leave the chain as it was.
    let number = lite.documents().expect("documents")[1].number.clone();
    let mut notes = Vec::new();
    for l in ledgers(&mut lite, &mut post) {
        let cn = l
            .credit_note(&b, &number, "wrong member", ms("2027-01-05T09:00:00Z"))
            .expect("credit note");
        assert_eq!(cn.kind, DocKind::CreditNote);
        let n = l.documents().expect("documents").len();
        for bad in [number.as_str(), cn.number.as_str(), "ATL-2026-999999"] {
            let e = l
                .credit_note(&b, bad, "again", ms("2027-01-05T10:00:00Z"))
                .expect_err("refused");
            assert!(matches!(e, BillingError::NotFound(_)), "{e:?}");
        }
        assert_eq!(l.documents().expect("documents").len(), n);
        notes.push(serde_json::to_string(&cn).expect("json"));
    }
    same("credit note", notes.remove(0), notes.remove(0));
    // Its sessions go, late, on January's invoices.
    let mut jan = Vec::new();
    for l in ledgers(&mut lite, &mut post) {
        let r = l
            .issue_invoices(&b, period("2027-01"), ms("2027-02-01T10:00:00Z"), false)
            .expect("january");
        assert!(r.invoices.iter().any(|d| d.lines.iter().all(|l| l.late)));
        jan.push(serde_json::to_string(&r).expect("json"));
    }
    same("2027-01", jan.remove(0), jan.remove(0));

    let docs = lite.documents().expect("documents");
    assert!(docs.len() > 8, "{} documents", docs.len());
    check_chain(&docs);
    same(
        "documents",
        serde_json::to_string(&docs).expect("json"),
        serde_json::to_string(&post.documents().expect("documents")).expect("json"),
    );
    // Each member's documents, read by (site, member): the same on both engines, the member's
    // own only, the credit note with its member's.
    check_member_documents(&lite, &docs);
    check_member_documents(&post, &docs);
    let cn = docs
        .iter()
        .find(|d| d.kind == DocKind::CreditNote)
        .expect("the credit note");
    assert!(post
        .member_documents(&cn.buyer.id)
        .expect("member")
        .contains(cn));
    for p in ["2026-10", "2026-11", "2026-12", "2027-01"] {
        let a = lite.period_documents(period(p)).expect("period");
        assert!(!a.is_empty());
        assert_eq!(a, post.period_documents(period(p)).expect("period"), "{p}");
    }
    assert_eq!(lite.audit(&b).expect("audit"), vec![]);
    assert_eq!(post.audit(&b).expect("audit"), vec![]);

    // The same derived row of a billed session tampered with on both: the same difference,
    // naming it.
    let key = docs[0].lines[0].sessions[0].clone();
    let tamper = format!(
        "UPDATE sessions SET busy_s = busy_s + 600
         WHERE machine = '{}' AND boot = {} AND session = {}",
        key.machine, key.boot, key.session
    );
    let raw = rusqlite::Connection::open(&lite_c.ledger.path).expect("raw");
    assert_eq!(raw.execute(&tamper, []).expect("tamper SQLite"), 1);
    pg.psql("same", &tamper).expect("tamper PostgreSQL");
    let diffs: Vec<AuditDifference> = lite.audit(&b).expect("audit");
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    assert_eq!(diffs[0].field, "session");
    assert_eq!(diffs[0].line, Some(key.to_string()));
    assert_eq!(post.audit(&b).expect("audit"), diffs);

    // Then, on both, an October document altered (its hash no longer matches) and the end event
    // of an October printer session billed late on a November invoice (ten busy minutes more): the
    // streamed audit of each engine reports the same differences, and exactly those (the
    // November invoice recomputed from October's events, the rows named by their invoices).
    let named = |k: &SessionKey| {
        docs.iter()
            .filter(|d| d.lines.iter().any(|l| l.sessions.contains(k)))
            .count()
    };
    let oct = docs
        .iter()
        .find(|d| d.period == period("2026-10") && d.kind == DocKind::Invoice)
        .expect("an October invoice");
    // A printer session: no allowance and no cap, so that only its own line changes.
    let (nov, late) = docs
        .iter()
        .filter(|d| d.period == period("2026-11"))
        .flat_map(|d| d.lines.iter().map(move |l| (d, l)))
        .find(|(_, l)| {
            l.late
                && l.sessions.len() == 1
                && l.sessions[0].machine == "printer-1"
                && named(&l.sessions[0]) == 1
        })
        .map(|(d, l)| (d, l.sessions[0].clone()))
        .expect("a late printer line in November");
    assert_ne!(late, key);
    let busy: i64 = raw
        .query_row(
            "SELECT busy_s FROM sessions WHERE machine=?1 AND boot=?2 AND session=?3",
            rusqlite::params![late.machine, late.boot, late.session],
            |r| r.get(0),
        )
        .expect("busy");
    let forge = [
        "DROP TRIGGER invoices_never_change ON invoices".to_owned(),
        format!(
            "UPDATE invoices SET document = replace(document, '\"period\":\"2026-10\"', \
             '\"period\":\"2026-09\"') WHERE number = '{}'",
            oct.number
        ),
        format!(
            "UPDATE events SET payload = replace(payload, '\"busy_s\":{busy}', '\"busy_s\":{}')
             WHERE machine = '{}' AND boot = {} AND session = {} AND kind = 'session_ended'",
            busy + 600,
            late.machine,
            late.boot,
            late.session
        ),
    ];
    for sql in &forge {
        let lite_sql = sql.replace(" ON invoices", "");
        assert!(raw.execute(&lite_sql, []).expect("tamper SQLite") <= 1);
        pg.psql("same", sql).expect("tamper PostgreSQL");
    }
    let diffs: Vec<AuditDifference> = lite.audit(&b).expect("audit");
    assert_eq!(post.audit(&b).expect("audit"), diffs);
    let fields: Vec<(&str, &str)> = diffs
        .iter()
        .map(|d| (d.number.as_str(), d.field.as_str()))
        .collect();
    let chain: Vec<&str> = docs.iter().map(|d| d.number.as_str()).collect();
    let mut want = vec![
        (oct.number.as_str(), "hash"),
        (nov.number.as_str(), "amount"),
        (nov.number.as_str(), "parts"),
    ];
    want.sort_by_key(|(n, _)| chain.iter().position(|c| c == n));
    let mut rows = [
        (&key, docs[0].number.as_str()),
        (&late, nov.number.as_str()),
    ];
    rows.sort();
    want.extend(rows.iter().map(|(_, n)| (*n, "session")));
    assert_eq!(fields, want, "{diffs:#?}");
    let late_row = diffs
        .iter()
        .find(|d| d.line == Some(late.to_string()))
        .expect("the late row");
    assert!(
        late_row
            .recomputed
            .contains(&format!("busy {} s", busy + 600)),
        "{late_row:?}"
    );
}

/// Two ledgers of one site on two connections issue invoices from two threads at once: every
/// period once (the other finds it already issued), then credit notes for the same invoices
/// (each invoice credited once, the other refused). The documents are numbered without gap or
/// duplicate and chained without a break, and the audit finds nothing.
#[test]
fn two_connections_issuing_for_one_site_number_without_gaps_and_chain_unbroken() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("race").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config("atelier-lyon", dir.path(), Some(pg.url("race")));
    let b = Arc::new(billing(&c));
    let mut first = open(&c);
    let mut rng = Lcg(7);
    let months: Vec<String> = (1..=12).map(|m| format!("2026-{m:02}")).collect();
    for (i, m) in months.iter().enumerate() {
        let boot = u32::try_from(i + 1).expect("boot");
        first.commit(&month(&mut rng, m, boot, 8)).expect("commit");
    }
    drop(first);
    let site = c.site_id().expect("site");
    let handles: Vec<PgLedger> = (0..2)
        .map(|_| PgLedger::open(&pg.url("race"), &site, c.badge_directory()).expect("open"))
        .collect();
    assert!(!handles[0].connection().same(handles[1].connection()));
    let now = ms("2027-01-10T09:00:00Z");
    let start = Arc::new(Barrier::new(2));
    let threads: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(i, mut l)| {
            let (b, start) = (b.clone(), start.clone());
            let mut order: Vec<Period> = months.iter().map(|m| period(m)).collect();
            if i == 1 {
                order.reverse();
            }
            std::thread::spawn(move || {
                start.wait();
                let reports: Vec<_> = order
                    .into_iter()
                    .map(|p| l.issue_invoices(&b, p, now, false).expect("issue"))
                    .collect();
                (l, reports)
            })
        })
        .collect();
    let mut ledgers = Vec::new();
    let mut issued_by: BTreeMap<Period, usize> = BTreeMap::new();
    let mut invoices = 0;
    for t in threads {
        let (l, reports) = t.join().expect("thread");
        for r in reports {
            if !r.already_issued {
                *issued_by.entry(r.period).or_default() += 1;
                invoices += r.invoices.len();
            }
        }
        ledgers.push(l);
    }
    assert_eq!(issued_by.len(), 12, "{issued_by:?}");
    assert!(
        issued_by.values().all(|n| *n == 1),
        "each period once: {issued_by:?}"
    );
    let docs = ledgers[0].documents().expect("documents");
    assert_eq!(docs.len(), invoices);
    assert!(invoices >= 24, "{invoices} invoices");
    check_chain(&docs);
    assert_eq!(ledgers[1].documents().expect("documents"), docs);

    // Both credit the same twelve invoices, in opposite orders.
    let targets: Vec<String> = docs.iter().take(12).map(|d| d.number.clone()).collect();
    let start = Arc::new(Barrier::new(2));
    let threads: Vec<_> = ledgers
        .into_iter()
        .enumerate()
        .map(|(i, mut l)| {
            let (b, start) = (b.clone(), start.clone());
            let mut targets = targets.clone();
            if i == 1 {
                targets.reverse();
            }
            std::thread::spawn(move || {
                start.wait();
                let results: Vec<_> = targets
                    .iter()
                    .map(|n| l.credit_note(&b, n, "race", now + 1000))
                    .collect();
                (l, results)
            })
        })
        .collect();
    let mut credited = 0;
    let mut ledgers = Vec::new();
    for t in threads {
        let (l, results) = t.join().expect("thread");
        for r in results {
            match r {
                Ok(d) => {
                    assert_eq!(d.kind, DocKind::CreditNote);
                    credited += 1;
                }
                Err(BillingError::NotFound(m)) => {
                    assert!(m.contains("already has a credit note"), "{m}");
                }
                Err(e) => panic!("credit note: {e}"),
            }
        }
        ledgers.push(l);
    }
    assert_eq!(credited, 12, "each invoice credited once");
    let docs = ledgers[1].documents().expect("documents");
    assert_eq!(docs.len(), invoices + 12);
    check_chain(&docs);
    let refers: BTreeSet<&str> = docs.iter().filter_map(|d| d.refers_to.as_deref()).collect();
    assert_eq!(refers.len(), 12);
    assert_eq!(ledgers[0].audit(&b).expect("audit"), vec![]);
}

/// Two sites in one database, the same machines and event keys: each numbers its own documents
/// from 1 and chains them from the genesis hash, whatever the other issued in between; neither
/// sees nor credits the other's documents.
#[test]
fn two_sites_in_one_database_number_independently() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("shared").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = config("site-a", dir.path(), Some(pg.url("shared")));
    let cb = config("site-b", dir.path(), Some(pg.url("shared")));
    let b = billing(&ca);
    let (mut a, mut bl) = (open(&ca), open(&cb));
    let mut rng = Lcg(3);
    let oct = month(&mut rng, "2026-10", 1, 10);
    let nov = month(&mut rng, "2026-11", 2, 10);
    let dec = month(&mut rng, "2026-12", 3, 10);
    for l in [&mut a, &mut bl] {
        l.commit(&oct).expect("commit");
        l.commit(&nov).expect("commit");
    }
    a.commit(&dec).expect("commit");
    let issue = |l: &mut AnyLedger, p: &str, at: &str| {
        l.issue_invoices(&b, period(p), ms(at), false)
            .expect("issue")
    };
    let a_oct = issue(&mut a, "2026-10", "2026-11-02T10:00:00Z");
    let b_oct = issue(&mut bl, "2026-10", "2026-11-02T11:00:00Z");
    let b_nov = issue(&mut bl, "2026-11", "2026-12-01T10:00:00Z");
    let a_nov = issue(&mut a, "2026-11", "2026-12-01T11:00:00Z");
    assert!(!b_nov.already_issued && !a_nov.already_issued);
    let a_cn = a
        .credit_note(
            &b,
            &a_oct.invoices[0].number,
            "test",
            ms("2026-12-02T10:00:00Z"),
        )
        .expect("credit note");
    // Only site-a has December.
    let a_dec = issue(&mut a, "2026-12", "2027-01-04T10:00:00Z");
    assert!(!a_dec.invoices.is_empty());

    let (da, db) = (a.documents().expect("a"), bl.documents().expect("b"));
    check_chain(&da);
    check_chain(&db);
    assert_eq!(da[0].number, "ATL-2026-000001");
    assert_eq!(db[0].number, "ATL-2026-000001");
    assert_eq!(da[0].prev_hash, GENESIS);
    assert_eq!(db[0].prev_hash, GENESIS);
    assert!(da.iter().all(|d| d.site == "site-a"));
    assert!(db.iter().all(|d| d.site == "site-b"));
    assert_eq!(
        da.len(),
        a_oct.invoices.len() + a_nov.invoices.len() + 1 + a_dec.invoices.len()
    );
    assert_eq!(db.len(), b_oct.invoices.len() + b_nov.invoices.len());
    // The same sessions, priced alike: site-b's documents are site-a's but for the site.
    for (x, y) in a_oct.invoices.iter().zip(&b_oct.invoices) {
        assert_eq!(
            (&x.number, &x.lines, &x.totals),
            (&y.number, &y.lines, &y.totals)
        );
        assert_ne!(x.hash, y.hash, "the site is in the hash");
    }
    assert_eq!(
        bl.period_documents(period("2026-12")).expect("b dec"),
        vec![]
    );
    // site-a's credit note number and its December invoices are not site-b's.
    let e = bl
        .credit_note(&b, &a_cn.number, "x", ms("2027-01-05T10:00:00Z"))
        .expect_err("not on site-b");
    assert!(matches!(e, BillingError::NotFound(_)), "{e:?}");
    let e = bl
        .credit_note(
            &b,
            &a_dec.invoices[0].number,
            "x",
            ms("2027-01-05T10:00:00Z"),
        )
        .expect_err("not on site-b");
    assert!(matches!(e, BillingError::NotFound(_)), "{e:?}");
    assert_eq!(bl.documents().expect("b"), db);
    // Per member, read by (site, member) through the index `invoices_member`: each site returns
    // its own documents of the member only (the member ids are the same on both sites), site-a's
    // credit note with its member's, on site-a only.
    check_member_documents(&a, &da);
    check_member_documents(&bl, &db);
    let member = a_cn.buyer.id.as_str();
    assert!(a.member_documents(member).expect("a").contains(&a_cn));
    assert!(!bl
        .member_documents(member)
        .expect("b")
        .iter()
        .any(|d| d.hash == a_cn.hash));
    // The plan of the query, once the table has statistics (as autovacuum gives a ledger in
    // use) and a sequential scan is ruled out (on so small a table it would be the cheapest).
    let plan = pg
        .psql(
            "shared",
            &format!(
                "ANALYZE invoices; SET enable_seqscan = off; EXPLAIN {}",
                MEMBER_DOCUMENTS_SQL
                    .replace("?1", "'site-a'")
                    .replace("?2", &format!("'{member}'"))
            ),
        )
        .expect("explain");
    assert!(plan.contains("invoices_member"), "{plan}");
    assert_eq!(a.audit(&b).expect("audit a"), vec![]);
    assert_eq!(bl.audit(&b).expect("audit b"), vec![]);
}

/// The retention purge and the erasure of a member on both engines, from the same data: the same
/// reports (dry run, purge, erasure refused for an open session, erasure), counters, exports and
/// audits; purged and erased events sent again are duplicates; on PostgreSQL the issued invoices
/// survive the erasure and neither they nor the erasure record can be changed or deleted; with
/// the member gone from the site file the audit still verifies.
#[test]
fn purge_and_erasure_on_postgresql_report_as_on_sqlite_and_keep_the_invoices() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("privacy").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let lite_c = config("atelier-lyon", dir.path(), None);
    let pg_c = config("atelier-lyon", dir.path(), Some(pg.url("privacy")));
    let b = billing(&lite_c);
    let mut lite = open(&lite_c);
    let mut post = open(&pg_c);

    let stranger = both(session(
        "laser-1",
        1,
        3,
        STRANGER,
        ms("2026-10-04T09:00:00Z"),
        300,
        60,
    ));
    let locked = denied(
        "laser-1",
        1,
        5,
        ms("2026-10-05T09:00:00Z"),
        BOB,
        DenyReason::MaintenanceLock,
    );
    let alice_nov = both(session(
        "printer-1",
        1,
        1,
        ALICE,
        ms("2026-11-05T09:00:00Z"),
        900,
        0,
    ));
    let alice_denied = denied(
        "laser-1",
        1,
        7,
        ms("2026-11-06T09:00:00Z"),
        ALICE,
        DenyReason::InUse,
    );
    let mut batch = both(session(
        "laser-1",
        1,
        1,
        ALICE,
        ms("2026-10-03T09:00:00Z"),
        2_400,
        0,
    ));
    batch.extend(stranger.clone());
    batch.push(locked.clone());
    batch.extend(alice_nov.clone());
    batch.push(alice_denied.clone());
    batch.extend(both(session(
        "laser-1",
        1,
        8,
        BOB,
        ms("2026-11-07T09:00:00Z"),
        600,
        0,
    )));
    batch.extend(both(session(
        "laser-1",
        1,
        10,
        STRANGER,
        ms("2027-11-20T09:00:00Z"),
        120,
        0,
    )));
    let (alice_open, alice_close) =
        session("printer-1", 1, 20, ALICE, ms("2027-11-25T09:00:00Z"), 60, 0);
    batch.push(alice_open);

    let now = ms("2027-12-01T00:00:00Z");
    let mut seen: Vec<String> = Vec::new();
    let mut invoices = Vec::new();
    for (l, c) in [(&mut lite, &lite_c), (&mut post, &pg_c)] {
        let l: &mut dyn Ledger = l;
        l.commit(&batch).expect("commit");
        let r = l
            .issue_invoices(&b, period("2026-10"), ms("2026-11-02T10:00:00Z"), false)
            .expect("issue");
        assert_eq!(r.invoices.len(), 1);
        let counters = l.counters("laser-1").expect("counters");
        let records = l.maintenance_records("laser-1").expect("records");
        let totals = l.totals().expect("totals");
        let mut s = String::new();

        // 400 days before `now` is 2026-10-27: October's unbilled data goes.
        let dry = l.purge(now, 400, true).expect("dry run");
        assert_eq!(
            (dry.total.sessions, dry.total.access_denied),
            (1, 1),
            "{dry:?}"
        );
        assert_eq!(
            l.totals().expect("totals"),
            totals,
            "a dry run changes nothing"
        );
        let done = l.purge(now, 400, false).expect("purge");
        assert_eq!(done.by_machine_month, dry.by_machine_month);
        assert_eq!(l.counters("laser-1").expect("counters"), counters);
        assert_eq!(
            l.maintenance_records("laser-1").expect("records"),
            records,
            "counters and the maintenance-lock count stay"
        );
        let mut again = stranger.clone();
        again.push(locked.clone());
        let outcomes = l.commit(&again).expect("resend");
        assert!(outcomes.iter().all(|o| o.outcome == Outcome::Duplicate));
        assert_eq!(
            l.purge(now, 400, false).expect("purge").total,
            Default::default()
        );
        assert_eq!(l.audit(&b).expect("audit"), vec![]);
        s += &format!("{dry:?}\n{done:?}\n{:?}\n", l.totals().expect("totals"));

        // Alice's session in progress: nothing is erased.
        let badges = vec![ALICE.to_owned()];
        let purged = l.totals().expect("totals");
        let refused = l
            .erase_member("alice", &badges, "claire", "request", now)
            .expect("erase");
        assert_eq!(refused.open_sessions, 1);
        assert_eq!(refused.sessions + refused.events + refused.access_denied, 0);
        assert_eq!(l.totals().expect("totals"), purged, "nothing erased");
        l.commit(std::slice::from_ref(&alice_close)).expect("close");
        let before = l.totals().expect("totals");
        let docs = l.documents().expect("documents");
        let export =
            fabmeter_collector::privacy::export_member(c, l, "alice", now).expect("export before");
        assert_eq!(export.sessions.len(), 3, "{export:?}");
        let r = l
            .erase_member("alice", &badges, "claire", "request", now)
            .expect("erase");
        assert_eq!(r.open_sessions, 0);
        assert_eq!(
            (r.sessions, r.events, r.access_denied, r.billed_kept),
            (2, 4, 1, 1),
            "{r:?}"
        );
        assert_eq!(l.totals().expect("totals").events, before.events - 5);
        assert_eq!(l.documents().expect("documents"), docs, "invoices stay");
        let after =
            fabmeter_collector::privacy::export_member(c, l, "alice", now).expect("export after");
        assert_eq!(after.sessions.len(), 1, "the billed session only");
        assert_eq!(after.documents, docs);
        let mut erased = alice_nov.clone();
        erased.push(alice_denied.clone());
        let outcomes = l.commit(&erased).expect("resend");
        assert!(outcomes.iter().all(|o| o.outcome == Outcome::Duplicate));
        s += &format!(
            "{refused:?}\n{r:?}\n{}\n{}\n{:?}\n",
            serde_json::to_string(&export).expect("json"),
            serde_json::to_string(&after).expect("json"),
            l.totals().expect("totals")
        );
        seen.push(s);
        invoices.push(docs);
    }
    assert_eq!(seen[0], seen[1], "SQLite and PostgreSQL differ");
    assert_eq!(invoices[0], invoices[1]);

    // PostgreSQL refuses to change or delete an issued invoice or an erasure record.
    for sql in [
        "UPDATE invoices SET excl_cents = 0",
        "DELETE FROM invoices",
        "UPDATE erasures SET reason = 'x'",
        "DELETE FROM erasures",
    ] {
        let e = pg.psql("privacy", sql).expect_err(sql);
        assert!(e.to_string().contains("never"), "{sql}: {e}");
    }
    assert_eq!(
        pg.psql(
            "privacy",
            "SELECT member, erased_by, sessions, events, access_denied, billed_kept FROM erasures"
        )
        .expect("erasures")
        .trim(),
        "alice|claire|2|4|1|1"
    );
    assert_eq!(post.documents().expect("documents"), invoices[1]);

    // Alice leaves the site file: her billed session stays hers (erased_badges), the audit
    // verifies on both engines.
    drop((lite, post));
    for mut c in [lite_c, pg_c] {
        c.members.retain(|m| m.id != "alice");
        let l = open(&c);
        assert_eq!(l.audit(&b).expect("audit"), vec![]);
    }
}

/// The commands on a PostgreSQL ledger: `invoice` (with its files), `credit-note`, `audit`,
/// `privacy purge`, `member export` and `member erase` run and report as on SQLite.
#[test]
fn the_billing_and_privacy_commands_run_on_postgresql() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("cli").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config("atelier-lyon", dir.path(), Some(pg.url("cli")));
    {
        let mut l = open(&c);
        let mut batch = both(session(
            "laser-1",
            1,
            1,
            ALICE,
            ms("2026-10-03T09:00:00Z"),
            2_400,
            0,
        ));
        batch.extend(both(session(
            "laser-1",
            1,
            3,
            BOB,
            ms("2026-10-04T09:00:00Z"),
            600,
            0,
        )));
        batch.extend(both(session(
            "printer-1",
            1,
            1,
            ALICE,
            ms("2026-11-05T09:00:00Z"),
            900,
            0,
        )));
        l.commit(&batch).expect("commit");
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
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(!text.contains("SQLite ledger only"), "{text}");
        text
    };
    let out = dir.path().join("out");
    let text = run(&[
        "invoice",
        "--period",
        "2026-10",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(
        text.contains("issued ATL-2026-000001") && text.contains("issued ATL-2026-000002"),
        "{text}"
    );
    assert!(out.join("ATL-2026-000001.json").exists());
    let csv = std::fs::read_to_string(out.join("accounting-2026-10.csv")).expect("csv");
    assert!(csv.contains("ATL-2026-000002"), "{csv}");
    let text = run(&[
        "credit-note",
        "--invoice",
        "ATL-2026-000002",
        "--reason",
        "wrong member",
    ]);
    assert!(text.contains("issued ATL-"), "{text}");
    let text = run(&["audit"]);
    assert!(text.contains("3 documents, 0 differences"), "{text}");
    let text = run(&["privacy", "purge", "--dry-run"]);
    assert!(text.contains("would purge before"), "{text}");
    let export = dir.path().join("alice.json");
    run(&[
        "member",
        "export",
        "--member",
        "alice",
        "--out",
        export.to_str().expect("utf-8"),
    ]);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).expect("export")).expect("json");
    assert_eq!(doc["sessions"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["documents"][0]["number"], "ATL-2026-000001");
    let text = run(&[
        "member", "erase", "--member", "alice", "--by", "claire", "--reason", "request",
    ]);
    assert!(
        text.contains("1 unbilled sessions, 2 session events, 0 access_denied events deleted; 1 billed sessions kept"),
        "{text}"
    );
}
