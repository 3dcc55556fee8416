//! Personal data in the SQLite ledger: the raw events of a member's sessions (for the member
//! export of `crate::privacy`), the retention purge and the erasure of a member, with the
//! tombstones and baselines that keep exactly-once and the lifetime counters without the rows.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{i64_of, u64_of, SqliteLedger};
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

impl SqliteLedger {
    /// The stored events of one session (its start, progress and end), in order.
    pub fn session_events(
        &self,
        machine: &str,
        boot: u32,
        session: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT machine, boot, seq, kind, wall_ms, received_ms, payload FROM events
             WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![self.site, machine, boot, session], |r| {
            Ok(StoredEvent {
                machine: r.get(0)?,
                boot: r.get(1)?,
                seq: r.get(2)?,
                kind: r.get(3)?,
                wall_ms: u64_of(r.get(4)?),
                received_ms: u64_of(r.get(5)?),
                payload: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Adds the badges of erased members' billed sessions to `badges` (the site file wins).
pub(super) fn add_erased_badges(
    conn: &Connection,
    site: &str,
    badges: &mut HashMap<String, String>,
) -> Result<(), LedgerError> {
    let mut stmt = conn.prepare("SELECT badge, member FROM erased_badges WHERE site=?1")?;
    let rows = stmt.query_map(params![site], |r| Ok((r.get(0)?, r.get(1)?)))?;
    for row in rows {
        let (badge, member): (String, String) = row?;
        badges.entry(badge).or_insert(member);
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

/// What a retention purge did (see [`SqliteLedger::purge`]).
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

/// What an erasure did (see [`SqliteLedger::erase_member`]).
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
    tx: &Connection,
    site: &str,
    doomed: &[Doomed],
    out: &mut ByMachineMonth,
) -> Result<(), LedgerError> {
    for d in doomed {
        let max_seq: Option<u32> = tx
            .prepare_cached(
                "SELECT MAX(seq) FROM events INDEXED BY events_session WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4",
            )?
            .query_row(params![site, d.machine, d.boot, d.session], |r| r.get(0))?;
        let events = tx
            .prepare_cached(
                "DELETE FROM events INDEXED BY events_session WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4",
            )?
            .execute(params![site, d.machine, d.boot, d.session])?;
        tx.prepare_cached(
            "DELETE FROM sessions WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4",
        )?
        .execute(params![site, d.machine, d.boot, d.session])?;
        if let Some(seq) = max_seq {
            tombstone(tx, site, &d.machine, d.boot, seq)?;
        }
        tx.prepare_cached(
            "INSERT INTO purged_totals (site, machine, sessions, busy_s, energy_wh, refused_locked)
             VALUES (?1, ?2, 1, ?3, ?4, 0)
             ON CONFLICT (site, machine) DO UPDATE SET sessions = sessions + 1,
                busy_s = busy_s + excluded.busy_s, energy_wh = energy_wh + excluded.energy_wh",
        )?
        .execute(params![site, d.machine, d.busy_s, d.energy_wh])?;
        let c = out
            .entry(d.machine.clone())
            .or_default()
            .entry(d.month.clone())
            .or_default();
        c.sessions += 1;
        c.session_events += events as u64;
    }
    Ok(())
}

fn tombstone(
    tx: &Connection,
    site: &str,
    machine: &str,
    boot: u32,
    seq: u32,
) -> Result<(), LedgerError> {
    tx.prepare_cached(
        "INSERT INTO purged_keys (site, machine, boot, max_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (site, machine, boot) DO UPDATE SET max_seq = MAX(max_seq, excluded.max_seq)",
    )?
    .execute(params![site, machine, boot, seq])?;
    Ok(())
}

/// Deletes `access_denied` events matching `filter` (an SQL condition on `events`, parameters
/// `?1` the site and `?2` its argument), with tombstones and the maintenance-lock baseline.
fn forget_access_denied(
    tx: &Connection,
    site: &str,
    filter: &str,
    arg: &rusqlite::types::Value,
    out: &mut ByMachineMonth,
) -> Result<(), LedgerError> {
    let rows: Vec<(String, u32, u32, i64, bool)> = tx
        .prepare(&format!(
            "SELECT machine, boot, seq, wall_ms, payload LIKE '%\"maintenance_lock\"%' FROM events
             WHERE site=?1 AND kind='access_denied' AND {filter}"
        ))?
        .query_map(params![site, arg], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    for (machine, boot, seq, wall, locked) in rows {
        tx.prepare_cached(
            "DELETE FROM events WHERE site=?1 AND machine=?2 AND boot=?3 AND seq=?4",
        )?
        .execute(params![site, machine, boot, seq])?;
        tombstone(tx, site, &machine, boot, seq)?;
        tx.prepare_cached(
            "INSERT INTO purged_totals (site, machine, sessions, busy_s, energy_wh, refused_locked)
             VALUES (?1, ?2, 0, 0, 0, ?3)
             ON CONFLICT (site, machine) DO UPDATE SET
                refused_locked = refused_locked + excluded.refused_locked",
        )?
        .execute(params![site, machine, i64::from(locked)])?;
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
    tx: &Connection,
    filter: &str,
    site: &str,
    arg: &rusqlite::types::Value,
) -> Result<Vec<Doomed>, LedgerError> {
    let mut stmt = tx.prepare(&format!(
        "SELECT s.machine, s.boot, s.session, s.busy_s, s.energy_wh,
            COALESCE(s.start_ms, (SELECT MIN(wall_ms) FROM events e INDEXED BY events_session WHERE e.site=s.site
                AND e.machine=s.machine AND e.boot=s.boot AND e.session=s.session), 0)
         FROM sessions s
         WHERE s.site=?1 AND s.status != 'open' AND {filter}
           AND NOT EXISTS (SELECT 1 FROM billed_sessions b WHERE b.site=s.site
                AND b.machine=s.machine AND b.boot=s.boot AND b.session=s.session)
         ORDER BY s.machine, s.boot, s.session"
    ))?;
    let rows = stmt.query_map(params![site, arg], |r| {
        Ok(Doomed {
            machine: r.get(0)?,
            boot: r.get(1)?,
            session: r.get(2)?,
            busy_s: r.get(3)?,
            energy_wh: r.get(4)?,
            month: month_of(u64_of(r.get(5)?)),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn total(by: &ByMachineMonth) -> PurgedCounts {
    let mut t = PurgedCounts::default();
    for c in by.values().flat_map(BTreeMap::values) {
        t.add(c);
    }
    t
}

impl SqliteLedger {
    /// Deletes, in one transaction, the personal data older than `retention_days` before
    /// `now_ms` that no billing run settled: closed sessions whose last event is older, with
    /// their raw events, and `access_denied` events. Each machine keeps a tombstone per boot (a
    /// resent deleted event stays a duplicate) and a baseline of what the sessions counted (its
    /// lifetime counters do not drop). With `dry_run`, reports and changes nothing.
    pub fn purge(
        &mut self,
        now_ms: u64,
        retention_days: u32,
        dry_run: bool,
    ) -> Result<PurgeReport, LedgerError> {
        let cutoff_ms = now_ms.saturating_sub(u64::from(retention_days) * 86_400_000);
        let cutoff: rusqlite::types::Value = i64_of(cutoff_ms).into();
        let tx = self.conn.transaction()?;
        let doomed = unbilled_sessions(
            &tx,
            "(SELECT MAX(wall_ms) FROM events e INDEXED BY events_session WHERE e.site=s.site AND e.machine=s.machine
                AND e.boot=s.boot AND e.session=s.session) < ?2",
            &self.site,
            &cutoff,
        )?;
        let mut by = BTreeMap::new();
        forget_sessions(&tx, &self.site, &doomed, &mut by)?;
        forget_access_denied(&tx, &self.site, "wall_ms < ?2", &cutoff, &mut by)?;
        if dry_run {
            tx.rollback()?;
        } else {
            tx.commit()?;
        }
        Ok(PurgeReport {
            dry_run,
            cutoff_ms,
            total: total(&by),
            by_machine_month: by,
        })
    }

    /// Erases, in one transaction, a member's personal data that no invoice needs: their closed
    /// sessions no billing run settled, with the raw events, and the `access_denied` events of
    /// `badges`; records the erasure (who, when, why, counts) in the append-only `erasures`
    /// table. Settled sessions and their events stay for the invoices (10 years), and their
    /// badges are kept in `erased_badges` so they remain attributed once the member has left
    /// the site file. With an open session nothing is done (`open_sessions` says how many).
    pub fn erase_member(
        &mut self,
        member: &str,
        badges: &[String],
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<ErasureReport, LedgerError> {
        let tx = self.conn.transaction()?;
        let site = self.site.clone();
        let mut report = ErasureReport {
            member: member.to_owned(),
            sessions: 0,
            events: 0,
            access_denied: 0,
            billed_kept: 0,
            open_sessions: 0,
        };
        let mine: rusqlite::types::Value = member.to_owned().into();
        let of_member = |s: &str| {
            format!(
                "({s}member=?2 OR {s}badge IN ({}))",
                badges
                    .iter()
                    .filter(|b| b.chars().all(|c| c.is_ascii_hexdigit()))
                    .map(|b| format!("'{b}'"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        report.open_sessions = u64_of(tx.query_row(
            &format!(
                "SELECT COUNT(*) FROM sessions WHERE site=?1 AND status='open' AND {}",
                of_member("")
            ),
            params![site, mine],
            |r| r.get(0),
        )?);
        if report.open_sessions > 0 {
            return Ok(report);
        }
        let doomed = unbilled_sessions(&tx, &of_member("s."), &site, &mine)?;
        let mut counts = BTreeMap::new();
        forget_sessions(&tx, &site, &doomed, &mut counts)?;
        for badge in badges {
            let hex: rusqlite::types::Value = format!("%{badge}%").into();
            forget_access_denied(&tx, &site, "payload LIKE ?2", &hex, &mut counts)?;
        }
        let t = total(&counts);
        report.sessions = t.sessions;
        report.events = t.session_events;
        report.access_denied = t.access_denied;
        report.billed_kept = u64_of(tx.query_row(
            &format!(
                "SELECT COUNT(*) FROM sessions WHERE site=?1 AND {}",
                of_member("")
            ),
            params![site, mine],
            |r| r.get(0),
        )?);
        tx.execute(
            &format!(
                "INSERT OR IGNORE INTO erased_badges (site, badge, member)
                 SELECT DISTINCT site, badge, member FROM sessions
                 WHERE site=?1 AND badge IS NOT NULL AND member IS NOT NULL AND {}",
                of_member("")
            ),
            params![site, mine],
        )?;
        tx.execute(
            "INSERT INTO erasures (site, member, erased_by, reason, at_ms, sessions, events,
                access_denied, billed_kept)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                site,
                member,
                by,
                reason,
                i64_of(now_ms),
                i64_of(report.sessions),
                i64_of(report.events),
                i64_of(report.access_denied),
                i64_of(report.billed_kept)
            ],
        )?;
        tx.commit()?;
        Ok(report)
    }
}
