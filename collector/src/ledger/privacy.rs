//! Personal data in the ledger, on either engine: the raw events of a member's sessions (for the
//! member export of `crate::privacy`), the retention purge and the erasure of a member, with the
//! tombstones and baselines that keep exactly-once and the lifetime counters without the rows.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{u64_of, End, Engine};
use crate::ledger::sql::{args, Db, Val};
use crate::ledger::LedgerError;

/// One stored event, as received from the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEvent {
    /// Machine id.
    pub machine: String,
    /// Ledger boot.
    pub boot: u32,
    /// Sequence number within the boot.
    pub seq: u32,
    /// Event kind (`session_started`, `session_ended`...).
    pub kind: String,
    /// Wall time, unix ms.
    pub wall_ms: u64,
    /// Reception, unix ms.
    pub received_ms: u64,
    /// The payload as received (JSON text).
    pub payload: String,
}

/// See [`Ledger::session_events`](crate::ledger::Ledger::session_events).
pub(in crate::ledger) fn session_events(
    db: &mut dyn Db,
    site: &str,
    machine: &str,
    boot: u32,
    session: u32,
) -> Result<Vec<StoredEvent>, LedgerError> {
    db.rows(
        "SELECT machine, boot, seq, kind, wall_ms, received_ms, payload FROM events
         WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4 ORDER BY seq",
        args![site, machine, boot, session],
    )?
    .iter()
    .map(|r| {
        Ok(StoredEvent {
            machine: r.text(0)?,
            boot: r.u32(1)?,
            seq: r.u32(2)?,
            kind: r.text(3)?,
            wall_ms: r.u64(4)?,
            received_ms: r.u64(5)?,
            payload: r.text(6)?,
        })
    })
    .collect()
}

/// Adds the badges of erased members' billed sessions to `badges` (the site file wins).
pub(in crate::ledger) fn add_erased_badges(
    db: &mut dyn Db,
    site: &str,
    badges: &mut HashMap<String, String>,
) -> Result<(), LedgerError> {
    for r in db.rows(
        "SELECT badge, member FROM erased_badges WHERE site=?1",
        args![site],
    )? {
        badges.entry(r.text(0)?).or_insert(r.text(1)?);
    }
    Ok(())
}

/// What a purge deleted (or would delete) in one machine and month (UTC, of the data's time).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PurgedCounts {
    /// Sessions.
    pub sessions: u64,
    /// Their raw events.
    pub session_events: u64,
    /// `access_denied` events.
    pub access_denied: u64,
}

impl PurgedCounts {
    fn add(&mut self, o: &PurgedCounts) {
        self.sessions += o.sessions;
        self.session_events += o.session_events;
        self.access_denied += o.access_denied;
    }
}

/// Counts per machine, then per month (`YYYY-MM`, UTC).
pub type ByMachineMonth = BTreeMap<String, BTreeMap<String, PurgedCounts>>;

/// What a retention purge did (see [`Ledger::purge`](crate::ledger::Ledger::purge)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Data older than this was purged, unix ms.
    pub cutoff_ms: u64,
    /// Per machine and month.
    pub by_machine_month: ByMachineMonth,
    /// The sum.
    pub total: PurgedCounts,
}

/// What an erasure did (see [`Ledger::erase_member`](crate::ledger::Ledger::erase_member)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    /// The member.
    pub member: String,
    /// Unbilled sessions deleted.
    pub sessions: u64,
    /// Their raw events deleted.
    pub events: u64,
    /// `access_denied` events of the member's badges deleted.
    pub access_denied: u64,
    /// Sessions kept because a billing run settled them (invoice or zero), with their events.
    pub billed_kept: u64,
    /// Open sessions: when non-zero nothing was erased (end them first).
    pub open_sessions: u64,
}

/// A session to delete, with what it counted.
struct Doomed {
    machine: String,
    boot: u32,
    session: u32,
    busy_s: i64,
    energy_wh: i64,
    month: String,
}

/// `YYYY-MM` (UTC) of a unix ms instant.
fn month_of(ms: u64) -> String {
    crate::api::format_utc(ms).chars().take(7).collect()
}

/// Deletes the sessions and their raw events, raising the machines' tombstones and baselines in
/// the same transaction; returns the counts per (machine, month).
fn forget_sessions(
    tx: &mut dyn Db,
    site: &str,
    doomed: &[Doomed],
    out: &mut ByMachineMonth,
) -> Result<(), LedgerError> {
    for d in doomed {
        let max_seq = tx
            .one(
                "SELECT MAX(seq) FROM events INDEXED BY events_session
                 WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4",
                args![site, &d.machine, d.boot, d.session],
            )?
            .opt_u32(0)?;
        let events = tx.exec(
            "DELETE FROM events INDEXED BY events_session
             WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4",
            args![site, &d.machine, d.boot, d.session],
        )?;
        tx.exec(
            "DELETE FROM sessions WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4",
            args![site, &d.machine, d.boot, d.session],
        )?;
        if let Some(seq) = max_seq {
            tombstone(tx, site, &d.machine, d.boot, seq)?;
        }
        tx.exec(
            "INSERT INTO purged_totals (site, machine, sessions, busy_s, energy_wh, refused_locked)
             VALUES (?1, ?2, 1, ?3, ?4, 0)
             ON CONFLICT (site, machine) DO UPDATE SET sessions = purged_totals.sessions + 1,
                busy_s = purged_totals.busy_s + excluded.busy_s,
                energy_wh = purged_totals.energy_wh + excluded.energy_wh",
            args![site, &d.machine, d.busy_s, d.energy_wh],
        )?;
        let c = out
            .entry(d.machine.clone())
            .or_default()
            .entry(d.month.clone())
            .or_default();
        c.sessions += 1;
        c.session_events += events;
    }
    Ok(())
}

fn tombstone(
    tx: &mut dyn Db,
    site: &str,
    machine: &str,
    boot: u32,
    seq: u32,
) -> Result<(), LedgerError> {
    tx.exec(
        "INSERT INTO purged_keys (site, machine, boot, max_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (site, machine, boot) DO UPDATE SET
            max_seq = MAX(purged_keys.max_seq, excluded.max_seq)",
        args![site, machine, boot, seq],
    )?;
    Ok(())
}

/// Deletes `access_denied` events matching `filter` (an SQL condition on `events`, parameters
/// `?1` the site and `?2` its argument), with tombstones and the maintenance-lock baseline.
fn forget_access_denied(
    tx: &mut dyn Db,
    site: &str,
    filter: &str,
    arg: &Val,
    out: &mut ByMachineMonth,
) -> Result<(), LedgerError> {
    let rows = tx.rows(
        &format!(
            "SELECT machine, boot, seq, wall_ms, payload LIKE '%\"maintenance_lock\"%' FROM events
             WHERE site=?1 AND kind='access_denied' AND {filter}"
        ),
        &[Val::from(site), arg.clone()],
    )?;
    for r in rows {
        let (machine, boot, seq, wall, locked) =
            (r.text(0)?, r.u32(1)?, r.u32(2)?, r.i64(3)?, r.bool(4)?);
        tx.exec(
            "DELETE FROM events WHERE site=?1 AND machine=?2 AND boot=?3 AND seq=?4",
            args![site, &machine, boot, seq],
        )?;
        tombstone(tx, site, &machine, boot, seq)?;
        tx.exec(
            "INSERT INTO purged_totals (site, machine, sessions, busy_s, energy_wh, refused_locked)
             VALUES (?1, ?2, 0, 0, 0, ?3)
             ON CONFLICT (site, machine) DO UPDATE SET
                refused_locked = purged_totals.refused_locked + excluded.refused_locked",
            args![site, &machine, i64::from(locked)],
        )?;
        out.entry(machine)
            .or_default()
            .entry(month_of(u64_of(wall)))
            .or_default()
            .access_denied += 1;
    }
    Ok(())
}

/// The closed sessions matching `filter` (an SQL condition on `sessions s`, parameters `?1` the
/// site and `?2` its argument) that no billing run settled.
fn unbilled_sessions(
    tx: &mut dyn Db,
    filter: &str,
    site: &str,
    arg: &Val,
) -> Result<Vec<Doomed>, LedgerError> {
    tx.rows(
        &format!(
            "SELECT s.machine, s.boot, s.session, s.busy_s, s.energy_wh,
                COALESCE(s.start_ms, (SELECT MIN(wall_ms) FROM events e INDEXED BY events_session
                    WHERE e.site=s.site AND e.machine=s.machine AND e.boot=s.boot
                    AND e.session=s.session), 0)
             FROM sessions s
             WHERE s.site=?1 AND s.status != 'open' AND {filter}
               AND NOT EXISTS (SELECT 1 FROM billed_sessions b WHERE b.site=s.site
                    AND b.machine=s.machine AND b.boot=s.boot AND b.session=s.session)
             ORDER BY s.machine, s.boot, s.session"
        ),
        &[Val::from(site), arg.clone()],
    )?
    .iter()
    .map(|r| {
        Ok(Doomed {
            machine: r.text(0)?,
            boot: r.u32(1)?,
            session: r.u32(2)?,
            busy_s: r.i64(3)?,
            energy_wh: r.i64(4)?,
            month: month_of(r.u64(5)?),
        })
    })
    .collect()
}

fn total(by: &ByMachineMonth) -> PurgedCounts {
    let mut t = PurgedCounts::default();
    for c in by.values().flat_map(BTreeMap::values) {
        t.add(c);
    }
    t
}

/// See [`Ledger::purge`](crate::ledger::Ledger::purge).
pub(in crate::ledger) fn purge<E: Engine + ?Sized>(
    e: &mut E,
    now_ms: u64,
    retention_days: u32,
    dry_run: bool,
) -> Result<PurgeReport, LedgerError> {
    let cutoff_ms = now_ms.saturating_sub(u64::from(retention_days) * 86_400_000);
    let cutoff = Val::from(cutoff_ms);
    e.transaction(|tx, ctx| {
        let doomed = unbilled_sessions(
            tx,
            "(SELECT MAX(wall_ms) FROM events e INDEXED BY events_session WHERE e.site=s.site
                AND e.machine=s.machine AND e.boot=s.boot AND e.session=s.session) < ?2",
            ctx.site,
            &cutoff,
        )?;
        let mut by = BTreeMap::new();
        forget_sessions(tx, ctx.site, &doomed, &mut by)?;
        forget_access_denied(tx, ctx.site, "wall_ms < ?2", &cutoff, &mut by)?;
        let report = PurgeReport {
            dry_run,
            cutoff_ms,
            total: total(&by),
            by_machine_month: by,
        };
        Ok((report, if dry_run { End::Rollback } else { End::Commit }))
    })
}

/// See [`Ledger::erase_member`](crate::ledger::Ledger::erase_member).
pub(in crate::ledger) fn erase_member<E: Engine + ?Sized>(
    e: &mut E,
    member: &str,
    badges: &[String],
    by: &str,
    reason: &str,
    now_ms: u64,
) -> Result<ErasureReport, LedgerError> {
    let mut report = ErasureReport {
        member: member.to_owned(),
        sessions: 0,
        events: 0,
        access_denied: 0,
        billed_kept: 0,
        open_sessions: 0,
    };
    let mine = Val::from(member);
    // Badge hashes are hex (anything else is left out), so they are spelled in the query. With
    // none, the condition is on the member alone (PostgreSQL has no empty `IN ()`).
    let hex: Vec<String> = badges
        .iter()
        .filter(|b| b.chars().all(|c| c.is_ascii_hexdigit()))
        .map(|b| format!("'{b}'"))
        .collect();
    let of_member = |s: &str| {
        if hex.is_empty() {
            format!("({s}member=?2)")
        } else {
            format!("({s}member=?2 OR {s}badge IN ({}))", hex.join(","))
        }
    };
    e.transaction(|tx, ctx| {
        let site = ctx.site;
        report.open_sessions = tx
            .one(
                &format!(
                    "SELECT COUNT(*) FROM sessions WHERE site=?1 AND status='open' AND {}",
                    of_member("")
                ),
                args![site, mine.clone()],
            )?
            .u64(0)?;
        if report.open_sessions > 0 {
            return Ok((report, End::Rollback));
        }
        let doomed = unbilled_sessions(tx, &of_member("s."), site, &mine)?;
        let mut counts = BTreeMap::new();
        forget_sessions(tx, site, &doomed, &mut counts)?;
        for badge in badges {
            // Case aside, as SQLite's LIKE compares (PostgreSQL's does not).
            let pattern = Val::from(format!("%{}%", badge.to_ascii_lowercase()));
            forget_access_denied(tx, site, "LOWER(payload) LIKE ?2", &pattern, &mut counts)?;
        }
        let t = total(&counts);
        report.sessions = t.sessions;
        report.events = t.session_events;
        report.access_denied = t.access_denied;
        report.billed_kept = tx
            .one(
                &format!(
                    "SELECT COUNT(*) FROM sessions WHERE site=?1 AND {}",
                    of_member("")
                ),
                args![site, mine.clone()],
            )?
            .u64(0)?;
        tx.exec(
            &format!(
                "INSERT OR IGNORE INTO erased_badges (site, badge, member)
                 SELECT DISTINCT site, badge, member FROM sessions
                 WHERE site=?1 AND badge IS NOT NULL AND member IS NOT NULL AND {}",
                of_member("")
            ),
            args![site, mine.clone()],
        )?;
        tx.exec(
            "INSERT INTO erasures (site, member, erased_by, reason, at_ms, sessions, events,
                access_denied, billed_kept)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            args![
                site,
                member,
                by,
                reason,
                now_ms,
                report.sessions,
                report.events,
                report.access_denied,
                report.billed_kept
            ],
        )?;
        Ok((report, End::Commit))
    })
}
