//! Billing storage on the SQLite ledger: issuing a period's invoices (numbered without gaps per
//! site and year, hash-chained, immutable), credit notes, and the audit that recomputes every
//! issued document. The pricing itself is the pure engine of `crate::billing`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{fold_stored, i64_of, member_of, u64_of, SqliteLedger};
use crate::billing::calendar::Period;
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

fn load_sessions(conn: &Connection, site: &str) -> Result<Vec<Row>, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT machine, boot, session, member, start_ms, busy_s, idle_s, status FROM sessions
         WHERE site=?1 AND start_ms IS NOT NULL AND member IS NOT NULL",
    )?;
    let rows = stmt.query_map(params![site], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, u32>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, u32>(5)?,
            r.get::<_, u32>(6)?,
            r.get::<_, String>(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (machine, boot, session, member, start, busy_s, idle_s, status) = row?;
        if member.starts_with("badge:") {
            continue;
        }
        out.push(Row {
            s: BillableSession {
                key: SessionKey {
                    machine,
                    boot,
                    session,
                },
                member,
                start_ms: u64_of(start),
                busy_s,
                idle_s,
            },
            open: status == "open",
        });
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
        let Some(f) = fold_stored(conn, site, &key.machine, key.boot, key.session, newer)? else {
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
        .map(|(chain, number, doc)| {
            serde_json::from_str(&doc)
                .map(|d| (chain, d))
                .map_err(|e| BillingError::Corrupt {
                    number,
                    detail: e.to_string(),
                })
        })
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

/// Lines of `member` for `period` (not yet billed) and late lines of earlier run periods.
fn lines_for(
    b: &Billing,
    member: &str,
    period: Period,
    period_is_new: bool,
    rows: &[Row],
    billed: &BTreeSet<SessionKey>,
    run_periods: &BTreeSet<Period>,
) -> Vec<PricedLine> {
    let zone = b.rules.zone;
    let mut by_period: BTreeMap<Period, Vec<BillableSession>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.open && r.s.member == member) {
        let p = Period::of(zone.date_of(r.s.start_ms));
        by_period.entry(p).or_default().push(r.s.clone());
    }
    let mut lines = Vec::new();
    for (p, sessions) in &by_period {
        let late = *p < period && run_periods.contains(p);
        if !(late || (*p == period && period_is_new)) {
            continue;
        }
        let mut priced = price(&b.rules, member, *p, sessions, billed).lines;
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
        let rows = load_sessions(&tx, &site)?;
        let billed: BTreeSet<SessionKey> = {
            let mut stmt =
                tx.prepare("SELECT machine, boot, session FROM billed_sessions WHERE site=?1")?;
            let v = stmt
                .query_map(params![site], |r| key_at(r, 0))?
                .collect::<Result<BTreeSet<_>, _>>()?;
            v
        };
        let members: BTreeSet<String> = rows.iter().map(|r| r.s.member.clone()).collect();
        let issue_date = zone.date_of(now_ms);
        for member in members {
            let lines = lines_for(b, &member, period, true, &rows, &billed, &run_periods);
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
                    &rows,
                    Some(&doc.number),
                    chain,
                )?;
            } else {
                report.settled_at_zero.push(member.clone());
                mark_billed(&tx, &site, b, &member, &lines, &rows, None, chain - 1)?;
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
        let docs = load_documents(&tx, &site)?;
        let Some((_, original)) = docs
            .iter()
            .find(|(_, d)| d.number == number && d.kind == DocKind::Invoice)
        else {
            return Err(BillingError::NotFound(format!(
                "no invoice {number:?}; `fabmeter-collector invoice --dry-run` lists documents"
            )));
        };
        if docs
            .iter()
            .any(|(_, d)| d.refers_to.as_deref() == Some(number))
        {
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
    rows: &[Row],
    number: Option<&str>,
    chain: i64,
) -> Result<(), rusqlite::Error> {
    let starts: BTreeMap<&SessionKey, u64> =
        rows.iter().map(|r| (&r.s.key, r.s.start_ms)).collect();
    let keys: BTreeSet<&SessionKey> = lines.iter().flat_map(|l| l.sessions.iter()).collect();
    for k in keys {
        let period = starts
            .get(k)
            .map(|s| Period::of(b.rules.zone.date_of(*s)).to_string())
            .unwrap_or_default();
        conn.execute(
            "INSERT OR REPLACE INTO billed_sessions (site, machine, boot, session, member, period, number, chain)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![site, k.machine, k.boot, k.session, member, period, number, chain],
        )?;
    }
    Ok(())
}
