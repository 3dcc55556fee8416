//! Billing storage on the SQLite ledger: issuing a period's invoices (numbered without gaps per
//! site and year, hash-chained, immutable), credit notes, and the audit that recomputes every
//! issued document. The pricing itself is the pure engine of `crate::billing`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{fold_stored, i64_of, member_of, u64_of, SqliteLedger};
use crate::billing::calendar::{Period, Zone};
use crate::billing::engine::{price, BillableSession, PricedLine, SessionKey};
use crate::billing::invoice::{apply_prepaid, Billing, DocKind, Invoice, Totals, GENESIS};
use crate::billing::money::to_cents;
use crate::ledger::LedgerError;

/// Why billing could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The period has not ended yet.
    #[error(
        "period {period} ends at {end}; invoice it after that (or use --dry-run for a preview)"
    )]
    PeriodNotOver {
        /// The period.
        period: Period,
        /// Its end, UTC.
        end: String,
    },
    /// No such document, or not an invoice.
    #[error("{0}")]
    NotFound(String),
    /// A stored document does not parse.
    #[error("stored document {number} does not parse: {detail}")]
    Corrupt {
        /// Its number.
        number: String,
        /// Why.
        detail: String,
    },
}

impl From<rusqlite::Error> for BillingError {
    fn from(e: rusqlite::Error) -> Self {
        BillingError::Ledger(LedgerError::Database(e))
    }
}

/// What an invoice run did.
#[derive(Debug, Clone, Serialize)]
pub struct IssueReport {
    /// The period.
    pub period: Period,
    /// Nothing was stored (preview).
    pub dry_run: bool,
    /// The period had been run already: nothing new (issuing twice is a no-op).
    pub already_issued: bool,
    /// Documents issued (or that would be).
    pub invoices: Vec<Invoice>,
    /// Members whose total was zero: no invoice, their sessions settled.
    pub settled_at_zero: Vec<String>,
}

/// One difference found by the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditDifference {
    /// The document.
    pub number: String,
    /// What differs: `hash`, `chain`, `numbering`, `line`, `total`...
    pub field: String,
    /// The line (its sessions), when about a line.
    pub line: Option<String>,
    /// As issued.
    pub issued: String,
    /// As recomputed.
    pub recomputed: String,
}

/// The session key in columns `i`, `i + 1`, `i + 2` (machine, boot, session) of a row.
fn key_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<SessionKey> {
    Ok(SessionKey {
        machine: r.get(i)?,
        boot: r.get(i + 1)?,
        session: r.get(i + 2)?,
    })
}

/// A stored session as billing reads it.
#[derive(Debug, Clone)]
struct Row {
    s: BillableSession,
    open: bool,
}

/// The columns billing reads from `sessions` (aliased `s`), in the order [`row_at`] reads them.
const SESSION_COLUMNS: &str =
    "s.machine, s.boot, s.session, s.member, s.start_ms, s.busy_s, s.idle_s, s.status";

/// A stored session from the first columns of a row ([`SESSION_COLUMNS`]); `None` for a session
/// of an unknown badge (`badge:<hash>`), which is never billed.
fn row_at(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Row>> {
    let member: String = r.get(3)?;
    if member.starts_with("badge:") {
        return Ok(None);
    }
    Ok(Some(Row {
        s: BillableSession {
            key: key_at(r, 0)?,
            member,
            start_ms: u64_of(r.get(4)?),
            busy_s: r.get(5)?,
            idle_s: r.get(6)?,
        },
        open: r.get::<_, String>(7)? == "open",
    }))
}

/// Every stored session with a start and a known member (the audit compares them all).
fn load_sessions(conn: &Connection, site: &str) -> Result<Vec<Row>, rusqlite::Error> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s
         WHERE s.site=?1 AND s.start_ms IS NOT NULL AND s.member IS NOT NULL"
    ))?;
    let rows = stmt.query_map(params![site], row_at)?;
    let mut out = Vec::new();
    for row in rows {
        out.extend(row?);
    }
    Ok(out)
}

/// The closed sessions with a known member started in `[from, to)` and in `period` (of `member`
/// only, if given), each with whether it is billed already (on a document, or settled at zero).
/// Reads the range of the `sessions_start` (or `sessions_member`) index, not the whole table.
fn closed_sessions_in(
    conn: &Connection,
    site: &str,
    zone: Zone,
    period: Period,
    member: Option<&str>,
) -> Result<Vec<(Row, bool)>, rusqlite::Error> {
    let (from, to) = period.bounds(zone);
    let sql = format!(
        "SELECT {SESSION_COLUMNS}, b.session IS NOT NULL FROM sessions s
         LEFT JOIN billed_sessions b ON b.site = s.site AND b.machine = s.machine
             AND b.boot = s.boot AND b.session = s.session
         WHERE s.site = ?1 AND s.start_ms >= ?2 AND s.start_ms < ?3 AND s.member {}",
        if member.is_some() {
            "= ?4"
        } else {
            "IS NOT NULL"
        }
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Option<(Row, bool)>> {
        let billed: bool = r.get(8)?;
        Ok(row_at(r)?.map(|row| (row, billed)))
    };
    let rows = match member {
        Some(m) => stmt
            .query_map(params![site, i64_of(from), i64_of(to), m], map)?
            .collect::<Result<Vec<_>, _>>()?,
        None => stmt
            .query_map(params![site, i64_of(from), i64_of(to)], map)?
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(rows
        .into_iter()
        .flatten()
        .filter(|(r, _)| !r.open && Period::of(zone.date_of(r.s.start_ms)) == period)
        .collect())
}

/// The (member, period) pairs with closed sessions not billed yet in a period before `period`
/// that was already run: those sessions go, late, on this period's invoices. One pass over the
/// `sessions_start` index before the period's end, keeping nothing but the pairs.
fn late_pairs(
    conn: &Connection,
    site: &str,
    zone: Zone,
    period: Period,
    run_periods: &BTreeSet<Period>,
) -> Result<BTreeSet<(String, Period)>, rusqlite::Error> {
    let mut out = BTreeSet::new();
    if !run_periods.iter().any(|p| *p < period) {
        return Ok(out);
    }
    let (_, to) = period.bounds(zone);
    let mut stmt = conn.prepare(
        "SELECT s.member, s.start_ms FROM sessions s
         WHERE s.site = ?1 AND s.start_ms < ?2 AND s.member IS NOT NULL AND s.status != 'open'
           AND NOT EXISTS (SELECT 1 FROM billed_sessions b WHERE b.site = s.site
               AND b.machine = s.machine AND b.boot = s.boot AND b.session = s.session)",
    )?;
    let mut rows = stmt.query(params![site, i64_of(to)])?;
    while let Some(r) = rows.next()? {
        let member: String = r.get(0)?;
        if member.starts_with("badge:") {
            continue;
        }
        let p = Period::of(zone.date_of(u64_of(r.get(1)?)));
        if p < period && run_periods.contains(&p) {
            out.insert((member, p));
        }
    }
    Ok(out)
}

/// The billable sessions folded again from the raw events (not from the derived `sessions`
/// table), as the audit sees them.
fn refold_sessions(
    conn: &Connection,
    site: &str,
    badges: &HashMap<String, String>,
) -> Result<Vec<Row>, LedgerError> {
    let latest: HashMap<String, u32> = {
        let mut stmt =
            conn.prepare("SELECT machine, MAX(boot) FROM boots WHERE site=?1 GROUP BY machine")?;
        let v = stmt
            .query_map(params![site], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        v
    };
    let keys: Vec<SessionKey> = {
        let mut stmt = conn.prepare(
            "SELECT DISTINCT machine, boot, session FROM events
             WHERE site=?1 AND session IS NOT NULL ORDER BY machine, boot, session",
        )?;
        let v = stmt
            .query_map(params![site], |r| key_at(r, 0))?
            .collect::<Result<_, _>>()?;
        v
    };
    let mut out = Vec::new();
    for key in keys {
        let newer = latest.get(&key.machine).is_some_and(|b| *b > key.boot);
        let Some(f) = fold_stored(
            &mut super::Lite(conn),
            site,
            &key.machine,
            key.boot,
            key.session,
            newer,
        )?
        else {
            continue;
        };
        let (Some(start_ms), Some(badge)) = (f.start_ms, f.badge.as_deref()) else {
            continue;
        };
        let member = member_of(badges, badge);
        if member.starts_with("badge:") {
            continue;
        }
        out.push(Row {
            s: BillableSession {
                key,
                member,
                start_ms,
                busy_s: f.busy_s,
                idle_s: f.idle_s,
            },
            open: f.status == crate::session::SessionStatus::Open,
        });
    }
    Ok(out)
}

/// How a session reads in a difference: member, start, busy and idle seconds, open or not.
fn describe(r: &Row) -> String {
    format!(
        "member {}, start {}, busy {} s, idle {} s{}",
        r.s.member,
        crate::api::format_utc(r.s.start_ms),
        r.s.busy_s,
        r.s.idle_s,
        if r.open { ", open" } else { "" }
    )
}

/// A stored document from its (number, JSON).
fn parse_document((number, doc): (String, String)) -> Result<Invoice, BillingError> {
    serde_json::from_str(&doc).map_err(|e| BillingError::Corrupt {
        number,
        detail: e.to_string(),
    })
}

fn load_documents(conn: &Connection, site: &str) -> Result<Vec<(i64, Invoice)>, BillingError> {
    let mut stmt =
        conn.prepare("SELECT chain, number, document FROM invoices WHERE site=?1 ORDER BY chain")?;
    let rows = stmt
        .query_map(params![site], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(chain, number, doc)| parse_document((number, doc)).map(|d| (chain, d)))
        .collect()
}

fn store(
    conn: &Connection,
    doc: &Invoice,
    chain: i64,
    year: i32,
    seq: u32,
) -> Result<(), BillingError> {
    conn.execute(
        "INSERT INTO invoices (site, number, chain, year, seq, kind, member, period, issued_ms,
            refers_to, excl_cents, vat_cents, incl_cents, prepaid_cents, document, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        params![
            doc.site,
            doc.number,
            chain,
            year,
            seq,
            match doc.kind {
                DocKind::Invoice => "invoice",
                DocKind::CreditNote => "credit_note",
            },
            doc.buyer.id,
            doc.period.to_string(),
            i64_of(doc.issued_ms),
            doc.refers_to,
            doc.totals.excl_cents,
            doc.totals.vat_cents,
            doc.totals.incl_cents,
            doc.prepaid_cents,
            serde_json::to_string(doc).unwrap_or_default(),
            doc.prev_hash,
            doc.hash,
        ],
    )?;
    Ok(())
}

/// The next (chain position, previous hash, sequence number in `year`).
fn next_slot(
    conn: &Connection,
    site: &str,
    year: i32,
) -> Result<(i64, String, u32), rusqlite::Error> {
    let last: Option<(i64, String)> = conn
        .query_row(
            "SELECT chain, hash FROM invoices WHERE site=?1 ORDER BY chain DESC LIMIT 1",
            params![site],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let seq: u32 = conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM invoices WHERE site=?1 AND year=?2",
        params![site, year],
        |r| r.get(0),
    )?;
    let (chain, prev) = last.map_or((1, GENESIS.to_owned()), |(c, h)| (c + 1, h));
    Ok((chain, prev, seq))
}

/// Lines of `member`: for `period` and, marked late, for the earlier run periods in `by_period`
/// (each period's closed sessions of the member, with whether each is billed already).
fn lines_for(
    b: &Billing,
    member: &str,
    period: Period,
    by_period: &BTreeMap<Period, Vec<(Row, bool)>>,
) -> Vec<PricedLine> {
    let mut lines = Vec::new();
    for (p, rows) in by_period {
        let late = *p < period;
        let sessions: Vec<BillableSession> = rows.iter().map(|(r, _)| r.s.clone()).collect();
        let billed: BTreeSet<SessionKey> = rows
            .iter()
            .filter(|(_, billed)| *billed)
            .map(|(r, _)| r.s.key.clone())
            .collect();
        let mut priced = price(&b.rules, member, *p, &sessions, &billed).lines;
        for l in &mut priced {
            if late {
                l.late = true;
                l.description = format!("[late, {p}] {}", l.description);
            }
        }
        lines.extend(priced);
    }
    lines
}

impl SqliteLedger {
    /// Issues the invoices of `period` (see docs/BILLING.md "Invoices"): one per member with a
    /// non-zero total, with the member's late sessions. `now_ms` is the issue instant; the period
    /// must be over. Running a period again issues nothing. With `dry_run`, nothing is stored.
    pub fn issue_invoices(
        &mut self,
        b: &Billing,
        period: Period,
        now_ms: u64,
        dry_run: bool,
    ) -> Result<IssueReport, BillingError> {
        let zone = b.rules.zone;
        let (_, end) = period.bounds(zone);
        if now_ms < end && !dry_run {
            return Err(BillingError::PeriodNotOver {
                period,
                end: crate::api::format_utc(end),
            });
        }
        let site = self.site.clone();
        let tx = self.conn.transaction()?;
        let run_periods: BTreeSet<Period> = {
            let mut stmt = tx.prepare("SELECT period FROM billing_runs WHERE site=?1")?;
            let v = stmt
                .query_map(params![site], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            v.iter().filter_map(|p| Period::parse(p).ok()).collect()
        };
        let mut report = IssueReport {
            period,
            dry_run,
            already_issued: run_periods.contains(&period),
            invoices: Vec::new(),
            settled_at_zero: Vec::new(),
        };
        if report.already_issued {
            return Ok(report);
        }
        // Only this period's sessions and those of the (member, earlier period) pairs with late
        // sessions are read: time and memory follow the period, not the ledger's history.
        let mut todo: BTreeMap<String, BTreeMap<Period, Vec<(Row, bool)>>> = BTreeMap::new();
        for (r, billed) in closed_sessions_in(&tx, &site, zone, period, None)? {
            todo.entry(r.s.member.clone())
                .or_default()
                .entry(period)
                .or_default()
                .push((r, billed));
        }
        for (member, p) in late_pairs(&tx, &site, zone, period, &run_periods)? {
            let rows = closed_sessions_in(&tx, &site, zone, p, Some(&member))?;
            todo.entry(member).or_default().insert(p, rows);
        }
        let issue_date = zone.date_of(now_ms);
        for (member, by_period) in todo {
            let lines = lines_for(b, &member, period, &by_period);
            if lines.is_empty() {
                continue;
            }
            let totals = Totals::of(&lines);
            let (chain, prev, seq) = next_slot(&tx, &site, issue_date.y)?;
            if totals.excl_cents != 0 {
                let used: i64 = tx.query_row(
                    "SELECT COALESCE(SUM(prepaid_cents), 0) FROM invoices WHERE site=?1 AND member=?2",
                    params![site, member],
                    |r| r.get(0),
                )?;
                let available = to_cents(b.config.credit_bought(&member)) - used;
                let (prepaid, due) = apply_prepaid(totals.incl_cents, available);
                let mut doc = Invoice {
                    number: b.number(issue_date.y, seq),
                    kind: DocKind::Invoice,
                    site: site.clone(),
                    period,
                    issue_date,
                    issued_ms: now_ms,
                    seller: b.config.seller.clone(),
                    buyer: b.buyer(&member),
                    currency: "EUR".into(),
                    lines: lines.clone(),
                    totals,
                    prepaid_cents: prepaid,
                    due_cents: due,
                    refers_to: None,
                    reason: None,
                    prev_hash: String::new(),
                    hash: String::new(),
                };
                doc.seal(&prev);
                store(&tx, &doc, chain, issue_date.y, seq)?;
                report.invoices.push(doc.clone());
                mark_billed(
                    &tx,
                    &site,
                    b,
                    &member,
                    &lines,
                    &by_period,
                    Some(&doc.number),
                    chain,
                )?;
            } else {
                report.settled_at_zero.push(member.clone());
                mark_billed(&tx, &site, b, &member, &lines, &by_period, None, chain - 1)?;
            }
        }
        tx.execute(
            "INSERT INTO billing_runs (site, period, run_ms) VALUES (?1, ?2, ?3)",
            params![site, period.to_string(), i64_of(now_ms)],
        )?;
        if dry_run {
            tx.rollback()?;
        } else {
            tx.commit()?;
        }
        Ok(report)
    }

    /// Issues a credit note cancelling invoice `number` (every line negated); its sessions are
    /// released and go, marked late, on the member's next invoice.
    pub fn credit_note(
        &mut self,
        b: &Billing,
        number: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<Invoice, BillingError> {
        let site = self.site.clone();
        let tx = self.conn.transaction()?;
        let original: Option<(String, String)> = tx
            .query_row(
                "SELECT number, document FROM invoices
                 WHERE site=?1 AND number=?2 AND kind='invoice'",
                params![site, number],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some(original) = original else {
            return Err(BillingError::NotFound(format!(
                "no invoice {number:?}; `fabmeter-collector invoice --dry-run` lists documents"
            )));
        };
        let original = parse_document(original)?;
        let credited: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM invoices WHERE site=?1 AND refers_to=?2)",
            params![site, number],
            |r| r.get(0),
        )?;
        if credited {
            return Err(BillingError::NotFound(format!(
                "invoice {number} already has a credit note"
            )));
        }
        let issue_date = b.rules.zone.date_of(now_ms);
        let (chain, prev, seq) = next_slot(&tx, &site, issue_date.y)?;
        let mut doc = original.credit_note(b.number(issue_date.y, seq), now_ms, issue_date, reason);
        doc.seal(&prev);
        store(&tx, &doc, chain, issue_date.y, seq)?;
        tx.execute(
            "DELETE FROM billed_sessions WHERE site=?1 AND number=?2",
            params![site, number],
        )?;
        tx.commit()?;
        Ok(doc)
    }

    /// Every issued document, in chain order.
    pub fn documents(&self) -> Result<Vec<Invoice>, BillingError> {
        Ok(load_documents(&self.conn, &self.site)?
            .into_iter()
            .map(|(_, d)| d)
            .collect())
    }

    /// The documents of `period` (its invoices and the credit notes cancelling them), in chain
    /// order; reads only those (index `invoices_period`), not the whole history.
    pub fn period_documents(&self, period: Period) -> Result<Vec<Invoice>, BillingError> {
        let mut stmt = self.conn.prepare(
            "SELECT number, document FROM invoices WHERE site=?1 AND period=?2 ORDER BY chain",
        )?;
        let rows = stmt
            .query_map(params![self.site, period.to_string()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(parse_document).collect()
    }

    /// Recomputes every issued document from the raw events stored in the ledger (each session
    /// folded again, not read from the derived `sessions` table), checks the hash chain and the
    /// numbering, and compares the derived session rows with the events; returns each difference
    /// (none: all is well).
    pub fn audit(&self, b: &Billing) -> Result<Vec<AuditDifference>, BillingError> {
        let docs = load_documents(&self.conn, &self.site)?;
        let rows = refold_sessions(&self.conn, &self.site, &self.badges)?;
        let settled: Vec<(i64, SessionKey)> = {
            let mut stmt = self.conn.prepare(
                "SELECT chain, machine, boot, session FROM billed_sessions
                 WHERE site=?1 AND number IS NULL",
            )?;
            let v = stmt
                .query_map(params![self.site], |r| Ok((r.get(0)?, key_at(r, 1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            v
        };
        let mut diffs = Vec::new();
        let mut diff = |number: &str,
                        field: &str,
                        line: Option<String>,
                        issued: String,
                        recomputed: String| {
            diffs.push(AuditDifference {
                number: number.to_owned(),
                field: field.to_owned(),
                line,
                issued,
                recomputed,
            });
        };
        let mut prev_hash = GENESIS.to_owned();
        let mut seqs: BTreeMap<String, u32> = BTreeMap::new();
        let mut billed: BTreeMap<SessionKey, String> = BTreeMap::new();
        let by_key: BTreeMap<&SessionKey, &Row> = rows.iter().map(|r| (&r.s.key, r)).collect();
        for (chain, d) in &docs {
            for (c, k) in &settled {
                if c < chain {
                    billed.entry(k.clone()).or_default();
                }
            }
            if !d.hash_ok() {
                diff(&d.number, "hash", None, d.hash.clone(), d.content_hash());
            }
            if d.prev_hash != prev_hash {
                diff(
                    &d.number,
                    "chain",
                    None,
                    d.prev_hash.clone(),
                    prev_hash.clone(),
                );
            }
            prev_hash = d.hash.clone();
            let year = d.issue_date.y.to_string();
            let expected = seqs.get(&year).copied().unwrap_or(0) + 1;
            seqs.insert(year.clone(), expected);
            let want = b.number(d.issue_date.y, expected);
            if d.number != want {
                diff(&d.number, "numbering", None, d.number.clone(), want);
            }
            match d.kind {
                DocKind::CreditNote => {
                    if let Some(orig) = &d.refers_to {
                        billed.retain(|_, n| n != orig);
                    }
                }
                DocKind::Invoice => {
                    let keys: BTreeSet<SessionKey> = d
                        .lines
                        .iter()
                        .flat_map(|l| l.sessions.iter().cloned())
                        .collect();
                    let before: BTreeSet<SessionKey> = billed.keys().cloned().collect();
                    let mut periods: BTreeMap<Period, Vec<BillableSession>> = BTreeMap::new();
                    for k in keys.iter().chain(before.iter()) {
                        let Some(r) = by_key.get(k) else { continue };
                        if r.s.member != d.buyer.id {
                            continue;
                        }
                        let p = Period::of(b.rules.zone.date_of(r.s.start_ms));
                        periods.entry(p).or_default().push(r.s.clone());
                    }
                    for k in &keys {
                        if !by_key.contains_key(k) {
                            diff(
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
                        let mut ls = price(&b.rules, &d.buyer.id, *p, sessions, &before).lines;
                        for l in &mut ls {
                            l.late = *p != d.period;
                        }
                        again.extend(ls);
                    }
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
                        match recomputed.get(k) {
                            None => diff(
                                &d.number,
                                "line",
                                Some(k.clone()),
                                crate::billing::money::format_cents(l.amount_cents),
                                "absent".into(),
                            ),
                            Some(r) => {
                                if r.amount_cents != l.amount_cents {
                                    diff(
                                        &d.number,
                                        "amount",
                                        Some(k.clone()),
                                        crate::billing::money::format_cents(l.amount_cents),
                                        crate::billing::money::format_cents(r.amount_cents),
                                    );
                                }
                                if r.parts != l.parts {
                                    diff(
                                        &d.number,
                                        "parts",
                                        Some(k.clone()),
                                        format!("{:?}", l.parts),
                                        format!("{:?}", r.parts),
                                    );
                                }
                            }
                        }
                    }
                    for (k, r) in &recomputed {
                        if !issued.contains_key(k) && r.sessions.iter().all(|s| keys.contains(s)) {
                            diff(
                                &d.number,
                                "line",
                                Some(k.clone()),
                                "absent".into(),
                                crate::billing::money::format_cents(r.amount_cents),
                            );
                        }
                    }
                    let t = Totals::of(&d.lines);
                    if t != d.totals {
                        diff(
                            &d.number,
                            "totals",
                            None,
                            format!("{:?}", d.totals),
                            format!("{t:?}"),
                        );
                    }
                    for k in keys {
                        billed.insert(k, d.number.clone());
                    }
                }
            }
        }
        // The derived session rows (what invoicing reads) must say what the events say.
        let stored: BTreeMap<SessionKey, Row> = load_sessions(&self.conn, &self.site)?
            .into_iter()
            .map(|r| (r.s.key.clone(), r))
            .collect();
        let folded: BTreeMap<&SessionKey, &Row> = by_key;
        let all: BTreeSet<&SessionKey> = stored.keys().chain(folded.keys().copied()).collect();
        for k in all {
            let was = stored.get(k).map_or_else(|| "absent".to_owned(), describe);
            let is = folded
                .get(k)
                .map_or_else(|| "absent".to_owned(), |r| describe(r));
            if was != is {
                let number = billed
                    .get(k)
                    .filter(|n| !n.is_empty())
                    .map_or("-", String::as_str);
                diff(number, "session", Some(k.to_string()), was, is);
            }
        }
        Ok(diffs)
    }
}

#[allow(clippy::too_many_arguments)]
fn mark_billed(
    conn: &Connection,
    site: &str,
    b: &Billing,
    member: &str,
    lines: &[PricedLine],
    by_period: &BTreeMap<Period, Vec<(Row, bool)>>,
    number: Option<&str>,
    chain: i64,
) -> Result<(), rusqlite::Error> {
    let starts: BTreeMap<&SessionKey, u64> = by_period
        .values()
        .flatten()
        .map(|(r, _)| (&r.s.key, r.s.start_ms))
        .collect();
    let keys: BTreeSet<&SessionKey> = lines.iter().flat_map(|l| l.sessions.iter()).collect();
    for k in keys {
        let period = starts
            .get(k)
            .map(|s| Period::of(b.rules.zone.date_of(*s)).to_string())
            .unwrap_or_default();
        conn.prepare_cached(
            "INSERT OR REPLACE INTO billed_sessions (site, machine, boot, session, member, period, number, chain)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            site, k.machine, k.boot, k.session, member, period, number, chain
        ])?;
    }
    Ok(())
}
