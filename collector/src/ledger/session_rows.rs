//! Session rows kept up to date by the ingest: incrementally from a batch's new events and the
//! stored row, with the full fold over the stored events (`fold_stored`) as the reference and the
//! fallback.
//!
//! A session's fold depends only on a few of its events (`crate::session::fold`): its start (seq =
//! session), the end with the highest seq (else the progress with the highest seq), the badge of
//! the end with the lowest seq when no start arrived, and whether a newer boot exists. The stored
//! row holds the outcome of those as of its last recompute, and `last_seq` names the event its
//! totals came from, so the row plus the batch's new events give the same fold as all the stored
//! events, with two exceptions handled by falling back to the full fold: rows that cannot tell
//! where their values came from (no start and a badge from an end while new ends arrive, or a
//! progress event whose seq is the session's own), and sessions without a row yet whose stored
//! events are not exactly this batch's. Wall times are never taken from the row: the boot's
//! anchor may have moved since (see `protocol::clock`), so the start and the `last_seq` event are
//! re-dated from their stored uptime and `ts` with the current anchor, like the full fold does.

use std::collections::HashMap;

use super::super::sql::{Db, Val};
use super::batch_reads::chunked;
use super::{fold_stored, u64_of, LedgerError};
use crate::session::{fold, SessionEvent, SessionFold, SessionStatus};
use fabmeter_protocol::clock::ClockAnchor;
use fabmeter_protocol::message::EventBody;

/// An event of this batch that names a session (accepted: new in the ledger).
#[derive(Debug, Clone, Copy)]
pub(super) struct NewEvent<'a> {
    pub seq: u32,
    pub uptime_ms: u64,
    pub ts: Option<u64>,
    pub body: &'a EventBody,
}

/// A session row as written to the `sessions` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SessionRow {
    pub badge: Option<String>,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub busy_s: u32,
    pub idle_s: u32,
    pub energy_wh: u32,
    pub status: String,
    pub reason: Option<String>,
    pub last_seq: u32,
}

impl From<SessionFold> for SessionRow {
    fn from(f: SessionFold) -> Self {
        SessionRow {
            badge: f.badge,
            start_ms: f.start_ms,
            end_ms: f.end_ms,
            busy_s: f.busy_s,
            idle_s: f.idle_s,
            energy_wh: f.energy_wh,
            status: f.status.as_str().to_owned(),
            reason: f.reason.as_ref().map(crate::series::wire_name),
            last_seq: f.last_seq,
        }
    }
}

/// A session's place in a batch: (machine, boot, session).
pub(super) type SessionKey = (String, u32, u32);

/// Sessions whose seqs are further apart than this are read by separate queries (a late event
/// of an old session must not make a read span every event in between).
const GAP: u32 = 1024;

/// What the ledger holds of the sessions a batch touched, read with one statement per chunk of
/// (machine, boot, run of nearby sessions) rather than per session (`batch_reads`): their rows,
/// how many stored events name each (after the batch's events were inserted), and the stored
/// uptime and `ts` of the events the rows' wall times come from (the start and `last_seq`).
#[derive(Debug, Default)]
pub(super) struct Stored {
    rows: HashMap<SessionKey, SessionRow>,
    events: HashMap<SessionKey, i64>,
    /// (machine, boot, seq) → (uptime_ms, ts_ms).
    clocks: HashMap<SessionKey, (i64, Option<i64>)>,
}

impl Stored {
    /// Reads the rows and event counts of the sessions of each site of `keys` (each site's keys
    /// sorted, as a `BTreeMap`'s keys are), site by site.
    pub(super) fn read_sites(
        db: &mut dyn Db,
        keys: &[(&str, Vec<&SessionKey>)],
    ) -> Result<HashMap<String, Stored>, LedgerError> {
        let mut out: HashMap<String, Stored> = HashMap::new();
        // Runs (site, machine, boot, first session, last session) of nearby sessions.
        let mut runs: Vec<(&str, &str, u32, u32, u32)> = Vec::new();
        for (site, keys) in keys {
            out.entry((*site).to_owned()).or_default();
            for (machine, boot, session) in keys {
                match runs.last_mut() {
                    Some((s, m, b, _, hi))
                        if s == site
                            && *m == machine.as_str()
                            && *b == *boot
                            && session.saturating_sub(*hi) <= GAP =>
                    {
                        *hi = (*hi).max(*session);
                    }
                    _ => runs.push((site, machine.as_str(), *boot, *session, *session)),
                }
            }
        }
        let runs: Vec<[Val; 5]> = runs
            .into_iter()
            .map(|(s, m, b, lo, hi)| {
                [
                    Val::from(s),
                    Val::from(m),
                    Val::from(b),
                    Val::from(lo),
                    Val::from(hi),
                ]
            })
            .collect();
        const RUN: &str = "site, machine, boot, lo, hi";
        const RUN_TYPES: [&str; 5] = ["TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT"];
        for r in chunked(
            db,
            "WITH {keys} SELECT t.site, t.machine, t.boot, t.session, t.badge, t.start_ms,
                t.end_ms, t.busy_s, t.idle_s, t.energy_wh, t.status, t.reason, t.last_seq
             FROM k CROSS JOIN sessions t
             WHERE t.site=k.site AND t.machine=k.machine AND t.boot=k.boot
                AND t.session BETWEEN k.lo AND k.hi",
            RUN,
            RUN_TYPES,
            &runs,
        )? {
            out.entry(r.text(0)?).or_default().rows.insert(
                (r.text(1)?, r.u32(2)?, r.u32(3)?),
                SessionRow {
                    badge: r.opt_text(4)?,
                    start_ms: r.opt_u64(5)?,
                    end_ms: r.opt_u64(6)?,
                    busy_s: r.u32(7)?,
                    idle_s: r.u32(8)?,
                    energy_wh: r.u32(9)?,
                    status: r.text(10)?,
                    reason: r.opt_text(11)?,
                    last_seq: r.u32(12)?,
                },
            );
        }
        for r in chunked(
            db,
            // The session index, named: without statistics SQLite prefers the primary key's
            // (site, machine, boot) prefix and counts through every event of the boot. It is
            // partial (`session IS NOT NULL`): PostgreSQL uses it only when a condition on the
            // table alone says so (a join's bounds do not).
            "WITH {keys} SELECT t.site, t.machine, t.boot, t.session, COUNT(*)
             FROM k CROSS JOIN events t INDEXED BY events_session
             WHERE t.site=k.site AND t.machine=k.machine AND t.boot=k.boot
                AND t.session IS NOT NULL AND t.session BETWEEN k.lo AND k.hi
             GROUP BY t.site, t.machine, t.boot, t.session",
            RUN,
            RUN_TYPES,
            &runs,
        )? {
            out.entry(r.text(0)?)
                .or_default()
                .events
                .insert((r.text(1)?, r.u32(2)?, r.u32(3)?), r.i64(4)?);
        }
        // The start and `last_seq` event of each row, in key order (as the runs: nearby keys
        // share index pages).
        let mut named: Vec<(&str, &SessionKey, u32)> = out
            .iter()
            .flat_map(|(site, s)| {
                s.rows
                    .iter()
                    .map(move |(k, r)| (site.as_str(), k, r.last_seq))
            })
            .collect();
        named.sort_unstable();
        let wanted: Vec<[Val; 5]> = named
            .into_iter()
            .map(|(site, (m, b, session), last_seq)| {
                [
                    Val::from(site),
                    Val::from(m.as_str()),
                    Val::from(*b),
                    Val::from(*session),
                    Val::from(last_seq),
                ]
            })
            .collect();
        let mut clocks = Vec::new();
        for r in chunked(
            db,
            "WITH {keys} SELECT t.site, t.machine, t.boot, t.seq, t.uptime_ms, t.ts_ms
             FROM k CROSS JOIN events t
             WHERE t.site=k.site AND t.machine=k.machine AND t.boot=k.boot
                AND t.seq IN (k.start_seq, k.last_seq)",
            "site, machine, boot, start_seq, last_seq",
            ["TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT"],
            &wanted,
        )? {
            clocks.push((
                r.text(0)?,
                (r.text(1)?, r.u32(2)?, r.u32(3)?),
                (r.i64(4)?, r.opt_i64(5)?),
            ));
        }
        for (site, key, clock) in clocks {
            out.entry(site).or_default().clocks.insert(key, clock);
        }
        Ok(out)
    }
}

/// Where one session is, for the recompute.
pub(super) struct Key<'a> {
    pub site: &'a str,
    pub machine: &'a str,
    pub boot: u32,
    pub session: u32,
}

/// The session's row after this batch: incrementally when the stored row allows it, otherwise
/// by the full fold. `anchor`: the boot's anchor as it stands now (after this batch); `newer`:
/// the machine has a later boot. `None`: no event names the session.
pub(super) fn recompute(
    db: &mut dyn Db,
    k: &Key<'_>,
    new: &[NewEvent<'_>],
    anchor: Option<u64>,
    newer: bool,
    stored: &Stored,
) -> Result<Option<SessionRow>, LedgerError> {
    if let Some(row) = incremental(k, new, anchor, newer, stored)? {
        return Ok(Some(row));
    }
    full(db, k, newer)
}

/// The reference: the fold of every stored event of the session.
pub(super) fn full(
    db: &mut dyn Db,
    k: &Key<'_>,
    newer: bool,
) -> Result<Option<SessionRow>, LedgerError> {
    Ok(fold_stored(db, k.site, k.machine, k.boot, k.session, newer)?.map(SessionRow::from))
}

fn wall(anchor: Option<u64>, uptime_ms: u64, ts: Option<u64>) -> Option<u64> {
    let anchor = anchor.map_or_else(ClockAnchor::new, ClockAnchor::from_boot_wall_ms);
    ts.or_else(|| anchor.wall_time(uptime_ms))
}

/// `None`: the row does not allow it (see the module's doc); the caller folds the stored events.
fn incremental(
    k: &Key<'_>,
    new: &[NewEvent<'_>],
    anchor: Option<u64>,
    newer: bool,
    stored: &Stored,
) -> Result<Option<SessionRow>, LedgerError> {
    // A progress or end carrying the session's own seq makes `last_seq` ambiguous.
    if new
        .iter()
        .any(|e| e.seq == k.session && !matches!(e.body, EventBody::SessionStarted { .. }))
    {
        return Ok(None);
    }
    let key = (k.machine.to_owned(), k.boot, k.session);
    let row = stored.rows.get(&key).cloned();
    let Some(row) = row else {
        // No row yet: the batch's events are the whole session when the ledger holds no other.
        let stored = stored.events.get(&key).copied().unwrap_or(0);
        if usize::try_from(stored).ok() != Some(new.len()) || new.is_empty() {
            return Ok(None);
        }
        let mut events: Vec<SessionEvent> = new
            .iter()
            .map(|e| SessionEvent {
                seq: e.seq,
                uptime_ms: e.uptime_ms,
                wall_ms: wall(anchor, e.uptime_ms, e.ts),
                body: e.body.clone(),
            })
            .collect();
        // The order the full fold reads them in (by seq), which decides between two ends' badges.
        events.sort_by_key(|e| e.seq);
        return Ok(fold(k.session, &events, newer).map(SessionRow::from));
    };
    let ended = row.status == SessionStatus::Closed.as_str();
    let had_start = row.start_ms.is_some();
    if !had_start && row.last_seq == k.session {
        return Ok(None); // a progress or end with the session's own seq: ambiguous
    }
    let new_start = new.iter().find_map(|e| match e.body {
        EventBody::SessionStarted { badge } if e.seq == k.session => Some((e, badge)),
        _ => None,
    });
    let new_ends = || {
        new.iter().filter_map(|e| match e.body {
            EventBody::SessionEnded {
                session,
                badge,
                busy_s,
                idle_s,
                energy_wh,
                reason,
            } if *session == k.session => Some((e, badge, (*busy_s, *idle_s, *energy_wh), reason)),
            _ => None,
        })
    };
    if new_start.is_none() && !had_start && row.badge.is_some() && new_ends().next().is_some() {
        return Ok(None); // which end's badge comes first is not in the row
    }
    // The stored events the row's wall times came from, re-dated with the current anchor.
    let mut start_at = None;
    let mut last_at = None;
    for seq in [k.session, row.last_seq] {
        if let Some(&(uptime, ts)) = stored.clocks.get(&(k.machine.to_owned(), k.boot, seq)) {
            let at = wall(anchor, u64_of(uptime), ts.map(u64_of));
            if seq == k.session && had_start {
                start_at = Some(at);
            }
            if seq == row.last_seq {
                last_at = Some(at);
            }
        }
    }
    if (had_start && start_at.is_none()) || (row.last_seq != k.session && last_at.is_none()) {
        return Ok(None); // an event the row names is gone (purged): fold what is left
    }
    let mut out = SessionRow {
        badge: row.badge.clone(),
        start_ms: start_at.flatten(),
        end_ms: None,
        busy_s: 0,
        idle_s: 0,
        energy_wh: 0,
        status: SessionStatus::Open.as_str().to_owned(),
        reason: None,
        last_seq: k.session,
    };
    if let Some((e, badge)) = new_start {
        out.badge = Some(badge.to_hex().as_str().to_owned());
        out.start_ms = wall(anchor, e.uptime_ms, e.ts);
    } else if !had_start && row.badge.is_none() {
        // No start anywhere: the badge of the first end (by seq), if one arrived now.
        out.badge = new_ends()
            .min_by_key(|(e, ..)| e.seq)
            .map(|(_, badge, ..)| badge.to_hex().as_str().to_owned());
    }
    let new_end = new_ends().max_by_key(|(e, ..)| e.seq);
    match new_end {
        Some((e, _, (busy, idle, energy), reason)) if !ended || e.seq > row.last_seq => {
            (out.busy_s, out.idle_s, out.energy_wh) = (busy, idle, energy);
            out.reason = Some(crate::series::wire_name(reason));
            out.status = SessionStatus::Closed.as_str().to_owned();
            out.end_ms = wall(anchor, e.uptime_ms, e.ts);
            out.last_seq = e.seq;
            return Ok(Some(out));
        }
        _ if ended => {
            (out.busy_s, out.idle_s, out.energy_wh) = (row.busy_s, row.idle_s, row.energy_wh);
            out.reason = row.reason;
            out.status = row.status;
            out.end_ms = last_at.flatten();
            out.last_seq = row.last_seq;
            return Ok(Some(out));
        }
        _ => {}
    }
    // Not ended: the progress with the highest seq, stored or new.
    let stored_best = (row.last_seq != k.session).then_some(row.last_seq);
    let new_best = new
        .iter()
        .filter_map(|e| match e.body {
            EventBody::SessionProgress {
                session,
                busy_s,
                idle_s,
                energy_wh,
            } if *session == k.session => Some((e, (*busy_s, *idle_s, *energy_wh))),
            _ => None,
        })
        .max_by_key(|(e, _)| e.seq);
    match (new_best, stored_best) {
        (Some((e, (busy, idle, energy))), s) if s.is_none_or(|s| e.seq > s) => {
            (out.busy_s, out.idle_s, out.energy_wh) = (busy, idle, energy);
            out.end_ms = wall(anchor, e.uptime_ms, e.ts);
            out.last_seq = e.seq;
        }
        (_, Some(s)) => {
            (out.busy_s, out.idle_s, out.energy_wh) = (row.busy_s, row.idle_s, row.energy_wh);
            out.end_ms = last_at.flatten();
            out.last_seq = s;
        }
        (_, None) => out.end_ms = out.start_ms,
    }
    if newer {
        out.status = SessionStatus::Interrupted.as_str().to_owned();
        out.reason = Some(crate::series::wire_name(
            &fabmeter_protocol::message::EndReason::Interrupted,
        ));
    }
    Ok(Some(out))
}
