//! The audit ([`Ledger::audit`](crate::ledger::Ledger::audit)), streamed so that its memory does
//! not hold the ledger (docs/BENCHMARKS.md "Audit of a year"). On one snapshot, in two passes:
//!
//! 1. **Sessions, one boot of one machine at a time**: the boot's raw events are read in one
//!    query and each of its sessions folded again; the derived rows of the boot are compared
//!    with the folds (a difference is kept to be reported last, when the final billed state
//!    names its document). What is kept of each billable fold is a compact record (interned
//!    machine and member, start, busy and idle seconds, the document billing it: 40 bytes).
//! 2. **Documents, in chain order, [`DOCUMENTS_PER_READ`] at a time**: parsed, checked (hash,
//!    chain, numbering, totals) and recomputed from the compact folds, with the billed state
//!    replayed as the former whole-ledger audit did (settled sessions, invoices, credit notes),
//!    then dropped.
//!
//! The chain order is the one every check depends on: a credit note of an old period comes after
//! later periods' invoices and releases sessions that a later document may bill again, so the
//! documents cannot be regrouped by period. An invoice is recomputed from its buyer's billed
//! sessions of the periods its own sessions fall in: pricing a period whose sessions are all
//! billed gives no line (each session line and each daily-cap adjustment is only for unbilled
//! sessions), so the buyer's other periods, which the former audit also priced, changed nothing.
//!
//! What stays for the whole run is per session of the history, not per document or event: the
//! compact folds and, by (member, period), the indexes of the billed ones (at most 75 bytes a
//! session measured), because any later document may bill or credit any earlier session.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::invoices::{describe, key_at, parse_document, stored_at, Stored, SESSION_COLUMNS};
use super::{boot_anchor, member_of, session_event, Ctx, Engine};
use crate::billing::engine::{price, BillableSession, PricedLine, SessionKey};
use crate::billing::invoice::{Billing, DocKind, Invoice, Totals, GENESIS};
use crate::billing::money::format_cents;
use crate::billing::Period;
use crate::ledger::sql::{args, Db};
use crate::ledger::{AuditDifference, BillingError, LedgerError};
use crate::session::{fold, SessionStatus};

/// Documents parsed and compared per read (a year of 300 members: about 60 KiB of JSON each).
pub(super) const DOCUMENTS_PER_READ: i64 = 64;

/// Strings replaced by small numbers: machine ids, member ids, document numbers.
#[derive(Default)]
struct Names {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    /// The number of `name`, given one if new.
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.ids.insert(name.to_owned(), id);
        self.names.push(name.to_owned());
        id
    }

    /// The number of `name`, if it has one.
    fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The name numbered `id`.
    fn name(&self, id: u32) -> &str {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.names.get(i))
            .map_or("", String::as_str)
    }
}

/// A session key with its machine numbered ([`Names`]): (machine, boot, session).
type Key = (u32, u32, u32);

/// No document bills the session.
const UNBILLED: u32 = u32::MAX;

/// A billable session folded from its events, as the documents pass needs it.
struct Folded {
    key: Key,
    member: u32,
    start_ms: u64,
    busy_s: u32,
    idle_s: u32,
    /// The number ([`Names`]) of the document that bills it, the empty one for a session settled
    /// at zero, or [`UNBILLED`].
    billed: u32,
}

/// A derived session row that does not say what its events say: (key, row, fold), described.
type SessionDifference = (SessionKey, String, String);

/// What the audit knows between the two passes and while replaying the documents.
struct Replay<'a> {
    b: &'a Billing,
    machines: Names,
    members: Names,
    numbers: Names,
    /// Every billable fold, sorted by key.
    folded: Vec<Folded>,
    /// What bills the keys that are not folds (on a document, not in the ledger).
    billed_elsewhere: HashMap<Key, u32>,
    /// The billed folds ([`Replay::folded`] indexes) by (member, period of their start).
    billed_of: HashMap<(u32, Period), BTreeSet<u32>>,
    /// The sessions settled at zero, with the chain length when they were, in chain order.
    settled: Vec<(i64, Key)>,
    /// How many of `settled` precede the current document.
    settled_seen: usize,
    /// The keys of `settled[..settled_seen]`.
    settled_active: HashSet<Key>,
    /// Keys a credit note released since the previous document.
    released: Vec<Key>,
    prev_hash: String,
    seqs: BTreeMap<String, u32>,
    documents: Vec<AuditDifference>,
}

/// See [`Ledger::audit`](crate::ledger::Ledger::audit).
pub(super) fn audit<E: Engine + ?Sized>(
    e: &E,
    b: &Billing,
) -> Result<Vec<AuditDifference>, BillingError> {
    e.snapshot(|db, ctx| match run(db, ctx, b) {
        Ok(diffs) => Ok(Ok(diffs)),
        Err(BillingError::Ledger(err)) => Err(err),
        Err(other) => Ok(Err(other)),
    })?
}

/// Both passes, on the snapshot `db`.
fn run(db: &mut dyn Db, ctx: &Ctx<'_>, b: &Billing) -> Result<Vec<AuditDifference>, BillingError> {
    let mut r = Replay {
        b,
        machines: Names::default(),
        members: Names::default(),
        numbers: Names::default(),
        folded: Vec::new(),
        billed_elsewhere: HashMap::new(),
        billed_of: HashMap::new(),
        settled: Vec::new(),
        settled_seen: 0,
        settled_active: HashSet::new(),
        released: Vec::new(),
        prev_hash: GENESIS.to_owned(),
        seqs: BTreeMap::new(),
        documents: Vec::new(),
    };
    let sessions = r.sessions(db, ctx)?;
    for row in db.rows(
        "SELECT chain, machine, boot, session FROM billed_sessions
         WHERE site=?1 AND number IS NULL ORDER BY chain",
        args![ctx.site],
    )? {
        let key = key_at(&row, 1)?;
        let key = (r.machines.id(&key.machine), key.boot, key.session);
        r.settled.push((row.i64(0)?, key));
    }
    let mut after = i64::MIN;
    loop {
        let rows = db.rows(
            "SELECT chain, number, document FROM invoices WHERE site=?1 AND chain > ?2
             ORDER BY chain LIMIT ?3",
            args![ctx.site, after, DOCUMENTS_PER_READ],
        )?;
        let Some(last) = rows.last() else { break };
        after = last.i64(0)?;
        for row in rows {
            let chain = row.i64(0)?;
            let d = parse_document((row.text(1)?, row.text(2)?))?;
            r.document(chain, &d);
        }
    }
    let mut diffs = std::mem::take(&mut r.documents);
    for (key, was, is) in sessions {
        let number = r.billed_by(&key).filter(|n| !n.is_empty()).unwrap_or("-");
        diffs.push(AuditDifference {
            number: number.to_owned(),
            field: "session".into(),
            line: Some(key.to_string()),
            issued: was,
            recomputed: is,
        });
    }
    Ok(diffs)
}

/// The boots, ascending, of `machine` that have session events or derived session rows.
fn boots_of(db: &mut dyn Db, site: &str, machine: &str) -> Result<BTreeSet<u32>, LedgerError> {
    let mut boots = BTreeSet::new();
    for sql in [
        "SELECT DISTINCT boot FROM events INDEXED BY events_session
         WHERE site=?1 AND machine=?2 AND session IS NOT NULL",
        "SELECT DISTINCT boot FROM sessions WHERE site=?1 AND machine=?2",
    ] {
        for row in db.rows(sql, args![site, machine])? {
            boots.insert(row.u32(0)?);
        }
    }
    Ok(boots)
}

/// The billable sessions of one boot folded again from its raw events (each session's events in
/// seq order, as the session index gives them to `fold_stored`), by session.
fn folds_of_boot(
    db: &mut dyn Db,
    ctx: &Ctx<'_>,
    machine: &str,
    boot: u32,
    anchor: Option<i64>,
    newer: bool,
) -> Result<BTreeMap<u32, Stored>, LedgerError> {
    let anchor = boot_anchor(anchor);
    let rows = db.rows(
        "SELECT session, seq, uptime_ms, ts_ms, payload FROM events INDEXED BY events_session
         WHERE site=?1 AND machine=?2 AND boot=?3 AND session IS NOT NULL ORDER BY session, seq",
        args![ctx.site, machine, boot],
    )?;
    let mut out = BTreeMap::new();
    let mut events = Vec::new();
    let mut rows = rows.iter().peekable();
    while let Some(row) = rows.next() {
        let session = row.u32(0)?;
        events.extend(session_event(row, 1, &anchor, machine, boot)?);
        if let Some(next) = rows.peek() {
            if next.u32(0)? == session {
                continue;
            }
        }
        let folded = fold(session, &events, newer);
        events.clear();
        let Some(f) = folded else { continue };
        let (Some(start_ms), Some(badge)) = (f.start_ms, f.badge.as_deref()) else {
            continue;
        };
        let member = member_of(ctx.badges, badge);
        if member.starts_with("badge:") {
            continue;
        }
        out.insert(
            session,
            Stored {
                s: BillableSession {
                    key: SessionKey {
                        machine: machine.to_owned(),
                        boot,
                        session,
                    },
                    member,
                    start_ms,
                    busy_s: f.busy_s,
                    idle_s: f.idle_s,
                },
                open: f.status == SessionStatus::Open,
            },
        );
    }
    Ok(out)
}

/// The derived session rows of one boot with a start and a known member, by session.
fn rows_of_boot(
    db: &mut dyn Db,
    site: &str,
    machine: &str,
    boot: u32,
) -> Result<BTreeMap<u32, Stored>, LedgerError> {
    let mut out = BTreeMap::new();
    for row in db.rows(
        &format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s
             WHERE s.site=?1 AND s.machine=?2 AND s.boot=?3
               AND s.start_ms IS NOT NULL AND s.member IS NOT NULL"
        ),
        args![site, machine, boot],
    )? {
        if let Some(s) = stored_at(&row)? {
            out.insert(s.s.key.session, s);
        }
    }
    Ok(out)
}

/// How a derived row (`was`) and a fold (`is`) read in a difference, when they read differently
/// (a start differing by less than a second reads the same, as it always did).
fn session_difference(was: Option<&Stored>, is: Option<&Stored>) -> Option<(String, String)> {
    if let (Some(a), Some(b)) = (was, is) {
        let same = a.s.member == b.s.member
            && a.s.start_ms == b.s.start_ms
            && a.s.busy_s == b.s.busy_s
            && a.s.idle_s == b.s.idle_s
            && a.open == b.open;
        if same {
            return None;
        }
    }
    let text = |s: Option<&Stored>| s.map_or_else(|| "absent".to_owned(), describe);
    let (was, is) = (text(was), text(is));
    (was != is).then_some((was, is))
}

impl Replay<'_> {
    /// The first pass: every boot of every machine, its sessions folded again and compared
    /// with its derived rows; the billable folds kept as [`Folded`]. Returns the differences,
    /// in key order.
    fn sessions(
        &mut self,
        db: &mut dyn Db,
        ctx: &Ctx<'_>,
    ) -> Result<Vec<SessionDifference>, LedgerError> {
        // Sorted here, not by SQL: the key order is Rust's (bytes), a collation may not be.
        let mut machines = BTreeSet::new();
        for sql in [
            "SELECT DISTINCT machine FROM events INDEXED BY events_session
             WHERE site=?1 AND session IS NOT NULL",
            "SELECT DISTINCT machine FROM sessions WHERE site=?1",
        ] {
            for row in db.rows(sql, args![ctx.site])? {
                machines.insert(row.text(0)?);
            }
        }
        let mut diffs = Vec::new();
        for machine in &machines {
            let m = self.machines.id(machine);
            let mut anchors = HashMap::new();
            for row in db.rows(
                "SELECT boot, anchor_ms FROM boots WHERE site=?1 AND machine=?2",
                args![ctx.site, machine],
            )? {
                anchors.insert(row.u32(0)?, row.i64(1)?);
            }
            let latest = anchors.keys().max().copied();
            for boot in boots_of(db, ctx.site, machine)? {
                let newer = latest.is_some_and(|b| b > boot);
                let folds =
                    folds_of_boot(db, ctx, machine, boot, anchors.get(&boot).copied(), newer)?;
                let rows = rows_of_boot(db, ctx.site, machine, boot)?;
                let sessions: BTreeSet<u32> = folds.keys().chain(rows.keys()).copied().collect();
                for session in sessions {
                    let (was, is) = (rows.get(&session), folds.get(&session));
                    if let Some((a, b)) = session_difference(was, is) {
                        let key = SessionKey {
                            machine: machine.clone(),
                            boot,
                            session,
                        };
                        diffs.push((key, a, b));
                    }
                }
                for (session, f) in folds {
                    self.folded.push(Folded {
                        key: (m, boot, session),
                        member: self.members.id(&f.s.member),
                        start_ms: f.s.start_ms,
                        busy_s: f.s.busy_s,
                        idle_s: f.s.idle_s,
                        billed: UNBILLED,
                    });
                }
            }
        }
        // Already in key order (machines numbered in order, boots and sessions ascending).
        self.folded.sort_unstable_by_key(|f| f.key);
        self.folded.shrink_to_fit();
        Ok(diffs)
    }

    /// The numbered key of `k`, if its machine has a number.
    fn key(&self, k: &SessionKey) -> Option<Key> {
        Some((self.machines.get(&k.machine)?, k.boot, k.session))
    }

    /// The index in [`Replay::folded`] of the fold of `k`, if it is one.
    fn index(&self, k: &SessionKey) -> Option<usize> {
        self.index_of(self.key(k)?)
    }

    /// The index in [`Replay::folded`] of the fold keyed `key`, if it is one.
    fn index_of(&self, key: Key) -> Option<usize> {
        self.folded.binary_search_by_key(&key, |f| f.key).ok()
    }

    /// The period `f` started in (the site's zone).
    fn period(&self, f: &Folded) -> Period {
        Period::of(self.b.rules.zone.date_of(f.start_ms))
    }

    /// `f` as pricing takes it.
    fn session(&self, f: &Folded) -> BillableSession {
        BillableSession {
            key: SessionKey {
                machine: self.machines.name(f.key.0).to_owned(),
                boot: f.key.1,
                session: f.key.2,
            },
            member: self.members.name(f.member).to_owned(),
            start_ms: f.start_ms,
            busy_s: f.busy_s,
            idle_s: f.idle_s,
        }
    }

    /// The number of the document billing `key` (empty: settled at zero), if billed.
    fn billed_id(&self, key: Key) -> Option<u32> {
        let id = match self.index_of(key) {
            Some(i) => self.folded[i].billed,
            None => *self.billed_elsewhere.get(&key)?,
        };
        (id != UNBILLED).then_some(id)
    }

    /// The number of the document billing `k` (empty: settled at zero), if billed.
    fn billed_by(&self, k: &SessionKey) -> Option<&str> {
        let id = self.billed_id(self.key(k)?)?;
        Some(self.numbers.name(id))
    }

    /// `key` billed by the document numbered `number`.
    fn bill(&mut self, key: Key, number: u32) {
        let Some(i) = self.index_of(key) else {
            self.billed_elsewhere.insert(key, number);
            return;
        };
        let slot = (self.folded[i].member, self.period(&self.folded[i]));
        self.folded[i].billed = number;
        self.billed_of
            .entry(slot)
            .or_default()
            .insert(u32::try_from(i).unwrap_or(u32::MAX));
    }

    /// Every key billed by the document numbered `number` is billed no more.
    fn release(&mut self, number: u32) {
        for i in 0..self.folded.len() {
            if self.folded[i].billed != number {
                continue;
            }
            let slot = (self.folded[i].member, self.period(&self.folded[i]));
            self.folded[i].billed = UNBILLED;
            if let Some(set) = self.billed_of.get_mut(&slot) {
                set.remove(&u32::try_from(i).unwrap_or(u32::MAX));
            }
            self.released.push(self.folded[i].key);
        }
        let released = &mut self.released;
        self.billed_elsewhere.retain(|key, n| {
            let keep = *n != number;
            if !keep {
                released.push(*key);
            }
            keep
        });
    }

    /// Before document `chain`: every session settled at zero before it, and not billed, is
    /// billed by the empty number (as each document found them in the former audit).
    fn settle_before(&mut self, chain: i64) {
        let mut check = std::mem::take(&mut self.released);
        check.retain(|k| self.settled_active.contains(k));
        while let Some((c, key)) = self.settled.get(self.settled_seen).copied() {
            if c >= chain {
                break;
            }
            self.settled_active.insert(key);
            check.push(key);
            self.settled_seen += 1;
        }
        let empty = self.numbers.id("");
        for key in check {
            if self.billed_id(key).is_none() {
                self.bill(key, empty);
            }
        }
    }

    /// A difference found in a document.
    fn diff(
        &mut self,
        number: &str,
        field: &str,
        line: Option<String>,
        issued: String,
        recomputed: String,
    ) {
        self.documents.push(AuditDifference {
            number: number.to_owned(),
            field: field.to_owned(),
            line,
            issued,
            recomputed,
        });
    }

    /// One document, in chain order: its hash, its place in the chain and the numbering, then
    /// what it bills (an invoice) or releases (a credit note).
    fn document(&mut self, chain: i64, d: &Invoice) {
        self.settle_before(chain);
        if !d.hash_ok() {
            self.diff(&d.number, "hash", None, d.hash.clone(), d.content_hash());
        }
        if d.prev_hash != self.prev_hash {
            let expected = self.prev_hash.clone();
            self.diff(&d.number, "chain", None, d.prev_hash.clone(), expected);
        }
        self.prev_hash = d.hash.clone();
        let year = d.issue_date.y.to_string();
        let expected = self.seqs.get(&year).copied().unwrap_or(0) + 1;
        self.seqs.insert(year, expected);
        let want = self.b.number(d.issue_date.y, expected);
        if d.number != want {
            self.diff(&d.number, "numbering", None, d.number.clone(), want);
        }
        match d.kind {
            DocKind::CreditNote => {
                if let Some(number) = d.refers_to.as_deref().and_then(|n| self.numbers.get(n)) {
                    self.release(number);
                }
            }
            DocKind::Invoice => self.invoice(d),
        }
    }

    /// An invoice recomputed from the folds: its buyer's sessions on it and those already
    /// billed in the same periods, priced per period with the billed ones as billed.
    fn invoice(&mut self, d: &Invoice) {
        let keys: BTreeSet<SessionKey> = d
            .lines
            .iter()
            .flat_map(|l| l.sessions.iter().cloned())
            .collect();
        let buyer = self.members.get(&d.buyer.id);
        let mut periods: BTreeMap<Period, Vec<BillableSession>> = BTreeMap::new();
        for k in &keys {
            let Some(f) = self.index(k).map(|i| &self.folded[i]) else {
                continue;
            };
            if Some(f.member) == buyer {
                periods
                    .entry(self.period(f))
                    .or_default()
                    .push(self.session(f));
            }
        }
        let mut before = BTreeSet::new();
        if let Some(buyer) = buyer {
            for (p, sessions) in &mut periods {
                for i in self.billed_of.get(&(buyer, *p)).into_iter().flatten() {
                    let Some(f) = usize::try_from(*i).ok().and_then(|i| self.folded.get(i)) else {
                        continue;
                    };
                    let s = self.session(f);
                    before.insert(s.key.clone());
                    sessions.push(s);
                }
            }
        }
        for k in &keys {
            if self.index(k).is_none() {
                self.diff(
                    &d.number,
                    "session",
                    Some(k.to_string()),
                    "billed".into(),
                    "not in the ledger".into(),
                );
            }
        }
        let mut again = Vec::new();
        for (p, sessions) in &periods {
            let mut ls = price(&self.b.rules, &d.buyer.id, *p, sessions, &before).lines;
            for l in &mut ls {
                l.late = *p != d.period;
            }
            again.extend(ls);
        }
        self.lines(d, &keys, &again);
        let number = self.numbers.id(&d.number);
        for k in &keys {
            let key = (self.machines.id(&k.machine), k.boot, k.session);
            self.bill(key, number);
        }
    }

    /// The lines of `d` against the lines recomputed (`again`) from its sessions (`keys`), and
    /// its totals against its lines.
    fn lines(&mut self, d: &Invoice, keys: &BTreeSet<SessionKey>, again: &[PricedLine]) {
        let line_key = |l: &PricedLine| {
            format!(
                "{:?} {}",
                l.kind,
                l.sessions
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let issued: BTreeMap<String, &PricedLine> =
            d.lines.iter().map(|l| (line_key(l), l)).collect();
        let recomputed: BTreeMap<String, &PricedLine> =
            again.iter().map(|l| (line_key(l), l)).collect();
        for (k, l) in &issued {
            let Some(r) = recomputed.get(k) else {
                let amount = format_cents(l.amount_cents);
                self.diff(&d.number, "line", Some(k.clone()), amount, "absent".into());
                continue;
            };
            if r.amount_cents != l.amount_cents {
                let (was, is) = (format_cents(l.amount_cents), format_cents(r.amount_cents));
                self.diff(&d.number, "amount", Some(k.clone()), was, is);
            }
            if r.parts != l.parts {
                let (was, is) = (format!("{:?}", l.parts), format!("{:?}", r.parts));
                self.diff(&d.number, "parts", Some(k.clone()), was, is);
            }
        }
        for (k, r) in &recomputed {
            if !issued.contains_key(k) && r.sessions.iter().all(|s| keys.contains(s)) {
                let amount = format_cents(r.amount_cents);
                self.diff(&d.number, "line", Some(k.clone()), "absent".into(), amount);
            }
        }
        let t = Totals::of(&d.lines);
        if t != d.totals {
            let (was, is) = (format!("{:?}", d.totals), format!("{t:?}"));
            self.diff(&d.number, "totals", None, was, is);
        }
    }
}
