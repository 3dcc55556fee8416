//! Billing storage in the ledger, on either engine: issuing a period's invoices (numbered without
//! gaps per site and year, hash-chained, immutable), credit notes, and the audit that recomputes
//! every issued document. The pricing itself is the pure engine of `crate::billing`.
//!
//! Numbering and the chain: the next number and the previous hash are read, and the document
//! inserted, in the same write transaction, which on PostgreSQL holds the site's advisory lock
//! from its first statement (`pg.rs`), so issuers of one site on several connections take turns;
//! the schema's unique (site, chain) and (site, year, seq) refuse a duplicate in any case.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Ctx, End, Engine};
use crate::billing::calendar::{Period, Zone};
use crate::billing::engine::{price, BillableSession, PricedLine, SessionKey};
use crate::billing::invoice::{apply_prepaid, Billing, DocKind, Invoice, Totals, GENESIS};
use crate::billing::money::to_cents;
use crate::ledger::sql::{args, Db, Row, Val};
use crate::ledger::LedgerError;

/// Why billing could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The ledger failed (SQLite or PostgreSQL).
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

impl From<postgres::Error> for BillingError {
    fn from(e: postgres::Error) -> Self {
        BillingError::Ledger(LedgerError::Postgres(e))
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

/// Runs `f` in one write transaction of `e`, ended as `f` says; a billing error that is not the
/// ledger's (nothing found, a corrupt document) rolls it back and is returned as is.
fn billing_transaction<E: Engine + ?Sized, T>(
    e: &mut E,
    f: impl FnOnce(&mut dyn Db, &Ctx<'_>) -> Result<(T, End), BillingError>,
) -> Result<T, BillingError> {
    e.transaction(|db, ctx| match f(db, ctx) {
        Ok((t, end)) => Ok((Ok(t), end)),
        Err(BillingError::Ledger(err)) => Err(err),
        Err(other) => Ok((Err(other), End::Rollback)),
    })?
}

/// The session key in columns `i`, `i + 1`, `i + 2` (machine, boot, session) of a row.
pub(super) fn key_at(r: &Row, i: usize) -> Result<SessionKey, LedgerError> {
    Ok(SessionKey {
        machine: r.text(i)?,
        boot: r.u32(i + 1)?,
        session: r.u32(i + 2)?,
    })
}

/// A stored session as billing reads it.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    /// The session.
    pub(super) s: BillableSession,
    /// Whether it is still open.
    pub(super) open: bool,
}

/// The columns billing reads from `sessions` (aliased `s`), in the order [`stored_at`] reads
/// them.
pub(super) const SESSION_COLUMNS: &str =
    "s.machine, s.boot, s.session, s.member, s.start_ms, s.busy_s, s.idle_s, s.status";

/// A stored session from the first columns of a row ([`SESSION_COLUMNS`]); `None` for a session
/// of an unknown badge (`badge:<hash>`), which is never billed.
pub(super) fn stored_at(r: &Row) -> Result<Option<Stored>, LedgerError> {
    let member = r.text(3)?;
    if member.starts_with("badge:") {
        return Ok(None);
    }
    Ok(Some(Stored {
        s: BillableSession {
            key: key_at(r, 0)?,
            member,
            start_ms: r.u64(4)?,
            busy_s: r.u32(5)?,
            idle_s: r.u32(6)?,
        },
        open: r.text(7)? == "open",
    }))
}

/// The closed sessions with a known member started in `[from, to)` and in `period` (of `member`
/// only, if given), each with whether it is billed already (on a document, or settled at zero).
/// Reads the range of the `sessions_start` (or `sessions_member`) index, not the whole table.
fn closed_sessions_in(
    db: &mut dyn Db,
    site: &str,
    zone: Zone,
    period: Period,
    member: Option<&str>,
) -> Result<Vec<(Stored, bool)>, LedgerError> {
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
    let rows = match member {
        Some(m) => db.rows(&sql, args![site, from, to, m])?,
        None => db.rows(&sql, args![site, from, to])?,
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let billed = r.bool(8)?;
        if let Some(row) = stored_at(&r)? {
            if !row.open && Period::of(zone.date_of(row.s.start_ms)) == period {
                out.push((row, billed));
            }
        }
    }
    Ok(out)
}

/// The (member, period) pairs with closed sessions not billed yet in a period before `period`
/// that was already run: those sessions go, late, on this period's invoices. One pass over the
/// `sessions_start` index before the period's end, keeping nothing but the pairs.
fn late_pairs(
    db: &mut dyn Db,
    site: &str,
    zone: Zone,
    period: Period,
    run_periods: &BTreeSet<Period>,
) -> Result<BTreeSet<(String, Period)>, LedgerError> {
    let mut out = BTreeSet::new();
    if !run_periods.iter().any(|p| *p < period) {
        return Ok(out);
    }
    let (_, to) = period.bounds(zone);
    for r in db.rows(
        "SELECT s.member, s.start_ms FROM sessions s
         WHERE s.site = ?1 AND s.start_ms < ?2 AND s.member IS NOT NULL AND s.status != 'open'
           AND NOT EXISTS (SELECT 1 FROM billed_sessions b WHERE b.site = s.site
               AND b.machine = s.machine AND b.boot = s.boot AND b.session = s.session)",
        args![site, to],
    )? {
        let member = r.text(0)?;
        if member.starts_with("badge:") {
            continue;
        }
        let p = Period::of(zone.date_of(r.u64(1)?));
        if p < period && run_periods.contains(&p) {
            out.insert((member, p));
        }
    }
    Ok(out)
}

/// How a session reads in a difference: member, start, busy and idle seconds, open or not.
pub(super) fn describe(r: &Stored) -> String {
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
pub(super) fn parse_document((number, doc): (String, String)) -> Result<Invoice, BillingError> {
    serde_json::from_str(&doc).map_err(|e| BillingError::Corrupt {
        number,
        detail: e.to_string(),
    })
}

/// Every stored document of the site as (chain position, number, JSON), in chain order.
fn document_rows(db: &mut dyn Db, site: &str) -> Result<Vec<(i64, String, String)>, LedgerError> {
    db.rows(
        "SELECT chain, number, document FROM invoices WHERE site=?1 ORDER BY chain",
        args![site],
    )?
    .iter()
    .map(|r| Ok((r.i64(0)?, r.text(1)?, r.text(2)?)))
    .collect()
}

fn store(
    db: &mut dyn Db,
    doc: &Invoice,
    chain: i64,
    year: i32,
    seq: u32,
) -> Result<(), LedgerError> {
    db.exec(
        "INSERT INTO invoices (site, number, chain, year, seq, kind, member, period, issued_ms,
            refers_to, excl_cents, vat_cents, incl_cents, prepaid_cents, document, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        args![
            &doc.site,
            &doc.number,
            chain,
            year,
            seq,
            match doc.kind {
                DocKind::Invoice => "invoice",
                DocKind::CreditNote => "credit_note",
            },
            &doc.buyer.id,
            doc.period.to_string(),
            doc.issued_ms,
            doc.refers_to.as_deref(),
            doc.totals.excl_cents,
            doc.totals.vat_cents,
            doc.totals.incl_cents,
            doc.prepaid_cents,
            serde_json::to_string(doc).unwrap_or_default(),
            &doc.prev_hash,
            &doc.hash,
        ],
    )?;
    Ok(())
}

/// The next (chain position, previous hash, sequence number in `year`), read in the transaction
/// that stores the document.
fn next_slot(db: &mut dyn Db, site: &str, year: i32) -> Result<(i64, String, u32), LedgerError> {
    let last = db
        .row(
            "SELECT chain, hash FROM invoices WHERE site=?1 ORDER BY chain DESC LIMIT 1",
            args![site],
        )?
        .map(|r| Ok::<_, LedgerError>((r.i64(0)?, r.text(1)?)))
        .transpose()?;
    let seq = db
        .one(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM invoices WHERE site=?1 AND year=?2",
            args![site, year],
        )?
        .u32(0)?;
    let (chain, prev) = last.map_or((1, GENESIS.to_owned()), |(c, h)| (c + 1, h));
    Ok((chain, prev, seq))
}

/// Lines of `member`: for `period` and, marked late, for the earlier run periods in `by_period`
/// (each period's closed sessions of the member, with whether each is billed already).
fn lines_for(
    b: &Billing,
    member: &str,
    period: Period,
    by_period: &BTreeMap<Period, Vec<(Stored, bool)>>,
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

/// See [`Ledger::issue_invoices`](crate::ledger::Ledger::issue_invoices).
pub(super) fn issue_invoices<E: Engine + ?Sized>(
    e: &mut E,
    b: &Billing,
    period: Period,
    now_ms: u64,
    dry_run: bool,
) -> Result<IssueReport, BillingError> {
    let (_, end) = period.bounds(b.rules.zone);
    if now_ms < end && !dry_run {
        return Err(BillingError::PeriodNotOver {
            period,
            end: crate::api::format_utc(end),
        });
    }
    billing_transaction(e, |db, ctx| {
        let report = issue(db, ctx.site, b, period, now_ms, dry_run)?;
        let end = if dry_run || report.already_issued {
            End::Rollback
        } else {
            End::Commit
        };
        Ok((report, end))
    })
}

/// The invoice run of `period` in the transaction `db` (the caller commits or rolls back).
fn issue(
    db: &mut dyn Db,
    site: &str,
    b: &Billing,
    period: Period,
    now_ms: u64,
    dry_run: bool,
) -> Result<IssueReport, BillingError> {
    let zone = b.rules.zone;
    let mut run_periods = BTreeSet::new();
    for r in db.rows("SELECT period FROM billing_runs WHERE site=?1", args![site])? {
        if let Ok(p) = Period::parse(&r.text(0)?) {
            run_periods.insert(p);
        }
    }
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
    let mut todo: BTreeMap<String, BTreeMap<Period, Vec<(Stored, bool)>>> = BTreeMap::new();
    for (r, billed) in closed_sessions_in(db, site, zone, period, None)? {
        todo.entry(r.s.member.clone())
            .or_default()
            .entry(period)
            .or_default()
            .push((r, billed));
    }
    for (member, p) in late_pairs(db, site, zone, period, &run_periods)? {
        let rows = closed_sessions_in(db, site, zone, p, Some(&member))?;
        todo.entry(member).or_default().insert(p, rows);
    }
    let issue_date = zone.date_of(now_ms);
    for (member, by_period) in todo {
        let lines = lines_for(b, &member, period, &by_period);
        if lines.is_empty() {
            continue;
        }
        let totals = Totals::of(&lines);
        let (chain, prev, seq) = next_slot(db, site, issue_date.y)?;
        if totals.excl_cents != 0 {
            let used = db
                .one(
                    "SELECT CAST(COALESCE(SUM(prepaid_cents), 0) AS BIGINT) FROM invoices
                     WHERE site=?1 AND member=?2",
                    args![site, &member],
                )?
                .i64(0)?;
            let available = to_cents(b.config.credit_bought(&member)) - used;
            let (prepaid, due) = apply_prepaid(totals.incl_cents, available);
            let mut doc = Invoice {
                number: b.number(issue_date.y, seq),
                kind: DocKind::Invoice,
                site: site.to_owned(),
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
                refers_to_date: None,
                reason: None,
                prev_hash: String::new(),
                hash: String::new(),
            };
            doc.seal(&prev);
            store(db, &doc, chain, issue_date.y, seq)?;
            report.invoices.push(doc.clone());
            mark_billed(
                db,
                site,
                b,
                &member,
                &lines,
                &by_period,
                Some(&doc.number),
                chain,
            )?;
        } else {
            report.settled_at_zero.push(member.clone());
            mark_billed(db, site, b, &member, &lines, &by_period, None, chain - 1)?;
        }
    }
    db.exec(
        "INSERT INTO billing_runs (site, period, run_ms) VALUES (?1, ?2, ?3)",
        args![site, period.to_string(), now_ms],
    )?;
    Ok(report)
}

/// See [`Ledger::credit_note`](crate::ledger::Ledger::credit_note).
pub(super) fn credit_note<E: Engine + ?Sized>(
    e: &mut E,
    b: &Billing,
    number: &str,
    reason: &str,
    now_ms: u64,
) -> Result<Invoice, BillingError> {
    billing_transaction(e, |db, ctx| {
        let site = ctx.site;
        let original = db.row(
            "SELECT number, document FROM invoices
             WHERE site=?1 AND number=?2 AND kind='invoice'",
            args![site, number],
        )?;
        let Some(original) = original else {
            return Err(BillingError::NotFound(format!(
                "no invoice {number:?}; `fabmeter-collector invoice --dry-run` lists documents"
            )));
        };
        let original = parse_document((original.text(0)?, original.text(1)?))?;
        let credited = db
            .one(
                "SELECT EXISTS (SELECT 1 FROM invoices WHERE site=?1 AND refers_to=?2)",
                args![site, number],
            )?
            .bool(0)?;
        if credited {
            return Err(BillingError::NotFound(format!(
                "invoice {number} already has a credit note"
            )));
        }
        let issue_date = b.rules.zone.date_of(now_ms);
        let (chain, prev, seq) = next_slot(db, site, issue_date.y)?;
        let mut doc = original.credit_note(b.number(issue_date.y, seq), now_ms, issue_date, reason);
        doc.seal(&prev);
        store(db, &doc, chain, issue_date.y, seq)?;
        db.exec(
            "DELETE FROM billed_sessions WHERE site=?1 AND number=?2",
            args![site, number],
        )?;
        Ok((doc, End::Commit))
    })
}

/// See [`Ledger::documents`](crate::ledger::Ledger::documents).
pub(super) fn documents<E: Engine + ?Sized>(e: &E) -> Result<Vec<Invoice>, BillingError> {
    e.read(document_rows)?
        .into_iter()
        .map(|(_, number, doc)| parse_document((number, doc)))
        .collect()
}

/// See [`Ledger::period_documents`](crate::ledger::Ledger::period_documents).
pub(super) fn period_documents<E: Engine + ?Sized>(
    e: &E,
    period: Period,
) -> Result<Vec<Invoice>, BillingError> {
    let rows = e.read(|db, site| {
        db.rows(
            "SELECT number, document FROM invoices WHERE site=?1 AND period=?2 ORDER BY chain",
            args![site, period.to_string()],
        )?
        .iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?)))
        .collect::<Result<Vec<_>, LedgerError>>()
    })?;
    rows.into_iter().map(parse_document).collect()
}

/// The query of [`Ledger::member_documents`](crate::ledger::Ledger::member_documents): one
/// member's documents of the site with their chain positions, read through the index
/// `invoices_member (site, member)` (`?1` the site, `?2` the member). It has no `ORDER BY
/// chain`: with one, SQLite reads the site's whole chain through the unique (site, chain) index
/// to avoid a sort; the few rows are sorted after.
pub const MEMBER_DOCUMENTS_SQL: &str =
    "SELECT chain, number, document FROM invoices WHERE site=?1 AND member=?2";

/// See [`Ledger::member_documents`](crate::ledger::Ledger::member_documents).
pub(super) fn member_documents<E: Engine + ?Sized>(
    e: &E,
    member: &str,
) -> Result<Vec<Invoice>, BillingError> {
    let mut rows = e.read(|db, site| {
        db.rows(MEMBER_DOCUMENTS_SQL, args![site, member])?
            .iter()
            .map(|r| Ok((r.i64(0)?, r.text(1)?, r.text(2)?)))
            .collect::<Result<Vec<_>, LedgerError>>()
    })?;
    rows.sort_unstable_by_key(|(chain, _, _)| *chain);
    rows.into_iter()
        .map(|(_, number, doc)| parse_document((number, doc)))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn mark_billed(
    db: &mut dyn Db,
    site: &str,
    b: &Billing,
    member: &str,
    lines: &[PricedLine],
    by_period: &BTreeMap<Period, Vec<(Stored, bool)>>,
    number: Option<&str>,
    chain: i64,
) -> Result<(), LedgerError> {
    let starts: BTreeMap<&SessionKey, u64> = by_period
        .values()
        .flatten()
        .map(|(r, _)| (&r.s.key, r.s.start_ms))
        .collect();
    let keys: BTreeSet<&SessionKey> = lines.iter().flat_map(|l| l.sessions.iter()).collect();
    let rows: Vec<[Val; 8]> = keys
        .into_iter()
        .map(|k| {
            let period = starts
                .get(k)
                .map(|s| Period::of(b.rules.zone.date_of(*s)).to_string())
                .unwrap_or_default();
            [
                Val::from(site),
                Val::from(k.machine.as_str()),
                Val::from(k.boot),
                Val::from(k.session),
                Val::from(member),
                Val::from(period),
                Val::from(number),
                Val::from(chain),
            ]
        })
        .collect();
    // Multi-row statements: a member's sessions in a few round trips, not one each (a busy
    // site's month is ~41,700 sessions). A session released by a credit note is billed again:
    // its row is replaced.
    super::insert_rows(
        db,
        "INSERT INTO billed_sessions (site, machine, boot, session, member, period, number, chain)
         VALUES ",
        " ON CONFLICT (site, machine, boot, session) DO UPDATE SET member=excluded.member,
            period=excluded.period, number=excluded.number, chain=excluded.chain",
        &rows,
    )
}
