//! The ledger's logic, written once for both engines over [`Db`]: an engine ([`Engine`]) only
//! says how to open a transaction and a read; every [`Engine`] is a [`Ledger`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fabmeter_protocol::clock::ClockAnchor;
use fabmeter_protocol::decode;
use fabmeter_protocol::message::{EventBody, Presence};

use self::batch_reads::StoredStates;
use super::sql::{args, Db, Val};
use super::{
    AuditDifference, BillingError, Committed, DeadLetter, ErasureReport, IssueReport, Ledger,
    LedgerError, LedgerTotals, MachineBusy, MachineCounters, MachineInfo, MachineView,
    MaintenanceRecords, Outcome, PurgeReport, Record, ServiceRecord, SessionQuery, SessionView,
    StoredEvent, Usage, CONFLICT,
};
use crate::billing::invoice::{Billing, Invoice};
use crate::billing::Period;
use crate::session::{fold, SessionEvent, SessionFold};

pub(super) fn u64_of(x: i64) -> u64 {
    u64::try_from(x).unwrap_or(0)
}

pub(super) fn i64_of(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

/// How a transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Commit what it did.
    Commit,
    /// Roll it back (a dry run, or nothing to keep).
    Rollback,
}

/// What the shared logic needs of a ledger's engine: its site, its badge directory, and a
/// transaction or a read on its database.
pub(crate) trait Engine: Send {
    /// Runs `f` in one transaction, which `f` says how to end (an `Err` rolls it back); `f` gets
    /// the site, the badge directory and whether sessions are folded in full (tests). On
    /// PostgreSQL the site's advisory lock is taken first: writers of one site take turns.
    fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Db, &Ctx<'_>) -> Result<(T, End), LedgerError>,
    ) -> Result<T, LedgerError>;
    /// Runs `f` in one transaction, committed when it returns `Ok`.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Db, &Ctx<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.transaction(|db, ctx| Ok((f(db, ctx)?, End::Commit)))
    }
    /// Runs `f` on a read connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Db, &str) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError>;
    /// Runs `f` on one consistent snapshot of the database (a read-only transaction): several
    /// queries that must agree with each other (the audit) see no commit made meanwhile.
    fn snapshot<T>(
        &self,
        f: impl FnOnce(&mut dyn Db, &Ctx<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError>;
}

/// What a write knows besides the database.
pub(crate) struct Ctx<'a> {
    pub(super) site: &'a str,
    pub(super) badges: &'a HashMap<String, String>,
    pub(super) full_session_recompute: bool,
}

/// The member a badge hash (hex) belongs to, or `badge:<hash>` when the badge is unknown.
pub(super) fn member_of(badges: &HashMap<String, String>, badge: &str) -> String {
    badges
        .get(badge)
        .cloned()
        .unwrap_or_else(|| format!("badge:{badge}"))
}

/// Folds one session from its stored raw events (see `crate::session`). `newer_boot`: the
/// machine has a later boot. `None` when no stored event names the session.
pub(super) fn fold_stored(
    db: &mut dyn Db,
    site: &str,
    machine: &str,
    boot: u32,
    session: u32,
    newer_boot: bool,
) -> Result<Option<SessionFold>, LedgerError> {
    let anchor = db
        .row(
            "SELECT anchor_ms FROM boots WHERE site=?1 AND machine=?2 AND boot=?3",
            args![site, machine, boot],
        )?
        .map(|r| r.i64(0))
        .transpose()?;
    let anchor = boot_anchor(anchor);
    let rows = db.rows(
        // The session index, named: without statistics SQLite prefers the primary key's
        // (site, machine, boot) prefix, which reads every event of the boot to keep the
        // session's few (328 µs against 13 µs per session on a year's ledger, docs/BENCHMARKS.md).
        "SELECT seq, uptime_ms, ts_ms, payload FROM events INDEXED BY events_session
         WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4",
        args![site, machine, boot, session],
    )?;
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        events.extend(session_event(&row, 0, &anchor, machine, boot)?);
    }
    Ok(fold(session, &events, newer_boot))
}

/// The clock anchor of a boot from its stored `anchor_ms` (none stored: an unanchored clock).
pub(super) fn boot_anchor(anchor_ms: Option<i64>) -> ClockAnchor {
    anchor_ms.map_or_else(ClockAnchor::new, |a| {
        ClockAnchor::from_boot_wall_ms(u64_of(a))
    })
}

/// A stored event of a session from the columns `seq, uptime_ms, ts_ms, payload` of `row`,
/// starting at column `at`, dated by its device clock or else by the boot's `anchor`. `None`
/// when the payload no longer decodes (a future schema?): stored payloads were validated on the
/// way in, so such an event is skipped (with a warning) rather than failing the read.
pub(super) fn session_event(
    row: &super::sql::Row,
    at: usize,
    anchor: &ClockAnchor,
    machine: &str,
    boot: u32,
) -> Result<Option<SessionEvent>, LedgerError> {
    let (seq, uptime, ts, payload) = (
        row.u32(at)?,
        row.i64(at + 1)?,
        row.opt_i64(at + 2)?,
        row.text(at + 3)?,
    );
    let Ok(ev) = decode::<fabmeter_protocol::message::Event>(payload.as_bytes()) else {
        tracing::warn!(
            machine,
            boot,
            seq,
            "stored event no longer decodes; skipped"
        );
        return Ok(None);
    };
    let uptime_ms = u64_of(uptime);
    Ok(Some(SessionEvent {
        seq,
        uptime_ms,
        wall_ms: ts.map(u64_of).or_else(|| anchor.wall_time(uptime_ms)),
        body: ev.event,
    }))
}

/// A machine's highest ledger boot and current boot offset, as a commit has read and changed them,
/// and its boots this commit touched.
pub(super) struct KnownBoots {
    pub(super) max_boot: Option<u32>,
    /// The offset of the machine's latest epoch.
    pub(super) offset: u32,
    /// The epoch offset of each box id this transaction resolved.
    pub(super) boxes: HashMap<u32, u32>,
    /// Whether `boxes` holds every stored box of the machine ([`prefetch`]): a box not in it is
    /// new, and the machine has a box id if and only if `boxes` is not empty.
    pub(super) boxes_read: bool,
    boots: HashMap<u32, BootState>,
}

/// One boot of a machine as a commit sees it: its stored anchor and tombstone, read once, and
/// what the batch's events add to its `boots` row, written once at the end of the batch
/// ([`flush_boots`]) instead of once per event.
#[derive(Debug, Default)]
struct BootState {
    /// The boot's anchor: the stored one, lowered by the batch's events (`MIN`, as the row).
    anchor: Option<i64>,
    /// The highest seq purged or erased in this boot (docs/SECURITY.md): at or below it, a
    /// resend is a duplicate.
    tombstone: Option<u32>,
    /// Whether an event of the batch went to this boot (the row is then written).
    dirty: bool,
    /// Reception of the first such event (for a new row).
    first_received_ms: i64,
    /// Highest uptime and seq of the batch's new events, and how many there were.
    max_uptime_ms: i64,
    max_seq: u32,
    events: i64,
    /// The boot's time per state as stored before the batch.
    stored_states: StoredStates,
    /// The lowest seq of the batch's new state events (absent: none).
    first_new_state: Option<u32>,
    /// The boot's time per state with the batch's state events ([`fold_boot_states`]).
    states: Option<FoldedStates>,
}

/// A boot's time per state after a batch: what `boots` then holds (`backfill_boot_states!`).
#[derive(Debug)]
struct FoldedStates {
    busy_ms: i64,
    idle_ms: i64,
    last_state: String,
    last_seq: u32,
    last_up: i64,
}

impl BootState {
    /// Whether `seq` is at or below the boot's tombstone.
    fn purged(&self, seq: u32) -> bool {
        self.tombstone.is_some_and(|max| max >= seq)
    }

    /// Takes an event of the batch into account: its anchor candidate always (a duplicate too,
    /// as the per-event upsert did), its uptime, seq and count when it was new.
    fn observe(&mut self, anchor: i64, received_ms: u64, new: Option<(u64, u32)>) {
        if !self.dirty {
            self.dirty = true;
            self.first_received_ms = i64_of(received_ms);
        }
        self.anchor = Some(anchor);
        if let Some((uptime_ms, seq)) = new {
            self.max_uptime_ms = self.max_uptime_ms.max(i64_of(uptime_ms));
            self.max_seq = self.max_seq.max(seq);
            self.events += 1;
        }
    }
}

/// The boots of `machine` known to this transaction, read from the ledger on first use.
fn machine_state<'a>(
    machines: &'a mut HashMap<String, KnownBoots>,
    tx: &mut dyn Db,
    site: &str,
    machine: &str,
) -> Result<&'a mut KnownBoots, LedgerError> {
    if !machines.contains_key(machine) {
        let max_boot = tx
            .one(
                "SELECT MAX(boot) FROM boots WHERE site=?1 AND machine=?2",
                args![site, machine],
            )?
            .opt_u32(0)?;
        let offset = maintenance::boot_offset(tx, site, machine)?;
        machines.insert(
            machine.to_owned(),
            KnownBoots {
                max_boot,
                offset,
                boxes: HashMap::new(),
                boxes_read: false,
                boots: HashMap::new(),
            },
        );
    }
    machines
        .get_mut(machine)
        // Never: inserted just above.
        .ok_or_else(|| LedgerError::Column("machine state vanished".into()))
}

/// One boot of a machine as this transaction knows it, its anchor and tombstone read on first use.
fn boot_state<'a>(
    known: &'a mut KnownBoots,
    tx: &mut dyn Db,
    site: &str,
    machine: &str,
    boot: u32,
) -> Result<&'a mut BootState, LedgerError> {
    if let std::collections::hash_map::Entry::Vacant(v) = known.boots.entry(boot) {
        let r = tx.one(
            "SELECT b.anchor_ms, b.busy_ms, b.idle_ms, b.last_state_seq,
                (SELECT max_seq FROM purged_keys WHERE site=?1 AND machine=?2 AND boot=?3)
             FROM (SELECT 1 AS one) o LEFT JOIN boots b
                ON b.site=?1 AND b.machine=?2 AND b.boot=?3",
            args![site, machine, boot],
        )?;
        v.insert(BootState {
            anchor: r.opt_i64(0)?,
            tombstone: r.opt_u32(4)?,
            stored_states: StoredStates {
                busy_ms: r.opt_i64(1)?.unwrap_or(0),
                idle_ms: r.opt_i64(2)?.unwrap_or(0),
                last_seq: r.opt_u32(3)?,
            },
            ..BootState::default()
        });
    }
    known
        .boots
        .get_mut(&boot)
        // Never: inserted just above.
        .ok_or_else(|| LedgerError::Column("boot state vanished".into()))
}

/// Folds the batch's new state events (already inserted) into their boots' time per state, one
/// statement for every boot of the batch: from the boot's last stored state event on when the
/// new ones all come after it (the usual case: its interval closes at the first new one), else
/// the whole boot again (a late replay of older events).
fn fold_boot_states(tx: &mut dyn Db, work: &mut [SiteCommit<'_, '_>]) -> Result<(), LedgerError> {
    let mut keys: Vec<[Val; 4]> = Vec::new();
    for w in work.iter() {
        for (machine, known) in &w.machines {
            for (boot, b) in &known.boots {
                let Some(first) = b.first_new_state else {
                    continue;
                };
                let from = match b.stored_states.last_seq {
                    Some(last) if last < first => last,
                    _ => 0,
                };
                keys.push([
                    Val::from(w.ctx.site),
                    Val::from(machine.as_str()),
                    Val::from(*boot),
                    Val::from(from),
                ]);
            }
        }
    }
    if keys.is_empty() {
        return Ok(());
    }
    let rows = batch_reads::chunked(
        tx,
        "WITH {keys} SELECT site, machine, boot, from_seq,
            CAST(SUM(CASE WHEN state = 'busy' THEN COALESCE(next_up - uptime_ms, 0)
                ELSE 0 END) AS BIGINT),
            CAST(SUM(CASE WHEN state = 'idle' THEN COALESCE(next_up - uptime_ms, 0)
                ELSE 0 END) AS BIGINT),
            MAX(CASE WHEN next_up IS NULL THEN state END),
            MAX(seq),
            MAX(CASE WHEN next_up IS NULL THEN uptime_ms END)
         FROM (SELECT t.site, t.machine, t.boot, k.from_seq, t.seq, t.state, t.uptime_ms,
                 LEAD(t.uptime_ms) OVER (PARTITION BY t.site, t.machine, t.boot ORDER BY t.seq)
                   AS next_up
               FROM k CROSS JOIN events t
               WHERE t.site=k.site AND t.machine=k.machine AND t.boot=k.boot
                 AND t.seq >= k.from_seq AND t.state IS NOT NULL) e
         GROUP BY site, machine, boot, from_seq",
        "site, machine, boot, from_seq",
        ["TEXT", "TEXT", "BIGINT", "BIGINT"],
        &keys,
    )?;
    let at: HashMap<&str, usize> = work
        .iter()
        .enumerate()
        .map(|(i, w)| (w.ctx.site, i))
        .collect();
    let mut folded = Vec::with_capacity(rows.len());
    for r in &rows {
        let (site, machine, boot, from) = (r.text(0)?, r.text(1)?, r.u32(2)?, r.u32(3)?);
        let Some(&i) = at.get(site.as_str()) else {
            continue;
        };
        folded.push((i, machine, boot, from, r));
    }
    for (i, machine, boot, from, r) in folded {
        let Some(b) = work
            .get_mut(i)
            .and_then(|w| w.machines.get_mut(&machine))
            .and_then(|k| k.boots.get_mut(&boot))
        else {
            continue;
        };
        // From the last stored state event: its closed interval and the new ones add to what
        // the row holds; from the start: they are the whole boot.
        let base = match b.stored_states.last_seq {
            Some(last) if last == from && b.first_new_state.is_some_and(|f| f > last) => {
                b.stored_states
            }
            _ => StoredStates::default(),
        };
        b.states = Some(FoldedStates {
            busy_ms: base.busy_ms + r.i64(4)?,
            idle_ms: base.idle_ms + r.i64(5)?,
            last_state: r.text(6)?,
            last_seq: r.u32(7)?,
            last_up: r.i64(8)?,
        });
    }
    Ok(())
}

/// Writes the `boots` rows the batches touched: one multi-row upsert. A boot without new state
/// events keeps its time per state (its `last_state_seq` is written NULL, which keeps them all).
fn flush_boots(tx: &mut dyn Db, work: &[SiteCommit<'_, '_>]) -> Result<(), LedgerError> {
    let mut rows: Vec<[Val; 13]> = Vec::new();
    for w in work {
        for (machine, known) in &w.machines {
            for (boot, b) in known.boots.iter().filter(|(_, b)| b.dirty) {
                let s = b.states.as_ref();
                rows.push([
                    Val::from(w.ctx.site),
                    Val::from(machine.as_str()),
                    Val::from(*boot),
                    Val::from(b.anchor),
                    Val::from(b.first_received_ms),
                    Val::from(b.max_uptime_ms),
                    Val::from(b.max_seq),
                    Val::from(b.events),
                    Val::from(s.map_or(0, |s| s.busy_ms)),
                    Val::from(s.map_or(0, |s| s.idle_ms)),
                    Val::from(s.map(|s| s.last_state.as_str())),
                    Val::from(s.map(|s| s.last_seq)),
                    Val::from(s.map(|s| s.last_up)),
                ]);
            }
        }
    }
    insert_rows(
        tx,
        "INSERT INTO boots (site, machine, boot, anchor_ms, first_received_ms, max_uptime_ms,
            max_seq, events, busy_ms, idle_ms, last_state, last_state_seq, last_state_up) VALUES ",
        " ON CONFLICT (site, machine, boot) DO UPDATE SET
            anchor_ms = MIN(boots.anchor_ms, excluded.anchor_ms),
            max_uptime_ms = MAX(boots.max_uptime_ms, excluded.max_uptime_ms),
            max_seq = MAX(boots.max_seq, excluded.max_seq),
            events = boots.events + excluded.events,
            busy_ms = CASE WHEN excluded.last_state_seq IS NULL THEN boots.busy_ms
                ELSE excluded.busy_ms END,
            idle_ms = CASE WHEN excluded.last_state_seq IS NULL THEN boots.idle_ms
                ELSE excluded.idle_ms END,
            last_state = CASE WHEN excluded.last_state_seq IS NULL THEN boots.last_state
                ELSE excluded.last_state END,
            last_state_up = CASE WHEN excluded.last_state_seq IS NULL THEN boots.last_state_up
                ELSE excluded.last_state_up END,
            last_state_seq = COALESCE(excluded.last_state_seq, boots.last_state_seq)",
        &rows,
    )
}

/// Reads what the batches need of their machines with a few statements instead of a few per
/// machine (see `batch_reads`): each machine's boots and epochs, and for the ledger boot each
/// event most likely goes to (its box's epoch, else the machine's latest), the boot's anchor and
/// tombstone and the stored seqs over the span of the batch's events. What it did not foresee is
/// read on first use, key by key, as before.
fn prefetch<'b>(tx: &mut dyn Db, work: &mut [SiteCommit<'b, '_>]) -> Result<(), LedgerError> {
    let mut names: Vec<(&str, &str)> = work
        .iter()
        .flat_map(|w| {
            w.batch.iter().filter_map(|r| match r {
                Record::Event { machine, .. } | Record::Status { machine, .. } => {
                    Some((w.ctx.site, machine.as_str()))
                }
                Record::DeadLetter { .. } => None,
            })
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Ok(());
    }
    let mut read = batch_reads::machines(tx, &names)?;
    let at: HashMap<&str, usize> = work
        .iter()
        .enumerate()
        .map(|(i, w)| (w.ctx.site, i))
        .collect();
    for (site, m) in &names {
        let key = ((*site).to_owned(), (*m).to_owned());
        let Some(w) = at.get(site).and_then(|i| work.get_mut(*i)) else {
            continue;
        };
        w.machines.insert(
            (*m).to_owned(),
            KnownBoots {
                max_boot: read.max_boot.get(&key).copied(),
                offset: read.offset.get(&key).copied().unwrap_or(0),
                boxes: read.boxes.remove(&key).unwrap_or_default(),
                boxes_read: true,
                boots: HashMap::new(),
            },
        );
    }
    // Per (site index, machine, ledger boot): the seq span of the batch's events.
    let mut spans: BTreeMap<(usize, &'b str, u32), (u32, u32)> = BTreeMap::new();
    for (i, w) in work.iter().enumerate() {
        let batch: &'b [Record] = w.batch;
        for r in batch {
            let Record::Event { machine, event, .. } = r else {
                continue;
            };
            let Some(known) = w.machines.get(machine.as_str()) else {
                continue;
            };
            let offset = event
                .box_id
                .and_then(|b| known.boxes.get(&b).copied())
                .unwrap_or(known.offset);
            let span = spans
                .entry((i, machine.as_str(), event.boot.saturating_add(offset)))
                .or_insert((event.seq, event.seq));
            span.0 = span.0.min(event.seq);
            span.1 = span.1.max(event.seq);
        }
    }
    let site_of = |i: usize| work.get(i).map_or("", |w| w.ctx.site);
    let keys: Vec<(&str, &str, u32)> = spans
        .keys()
        .map(|(i, m, b)| (site_of(*i), *m, *b))
        .collect();
    let boots = batch_reads::boots(tx, &keys)?;
    // Stored keys can only lie at or below the boot's highest stored seq: events arriving in
    // order (the usual batch) need no read, a resend or a late replay reads only up to it.
    let spans_read: Vec<(&str, &str, u32, u32, u32)> = spans
        .iter()
        .filter_map(|((i, m, b), (lo, hi))| {
            let site = site_of(*i);
            let key = (site.to_owned(), (*m).to_owned(), *b);
            let max = boots.get(&key).and_then(|s| s.max_seq)?;
            (*lo <= max).then_some((site, *m, *b, *lo, (*hi).min(max)))
        })
        .collect();
    let mut seqs = batch_reads::stored_seqs(tx, &spans_read)?;
    for ((i, m, b), (lo, hi)) in spans {
        let Some(w) = work.get_mut(i) else { continue };
        let key = (w.ctx.site.to_owned(), m.to_owned(), b);
        let stored = boots.get(&key).copied().unwrap_or_default();
        if let Some(known) = w.machines.get_mut(m) {
            known.boots.insert(
                b,
                BootState {
                    anchor: stored.anchor,
                    tombstone: stored.tombstone,
                    stored_states: stored.states,
                    ..BootState::default()
                },
            );
        }
        let seqs = seqs.remove(&key).unwrap_or_default();
        w.new_events.stored.insert((m, b), (lo, hi, seqs));
    }
    Ok(())
}

/// Writes `rows` with multi-row statements `{head}(?1, ...), (...){tail}` of 128, 64, ... 1 rows,
/// so that a few statement shapes serve every batch (PostgreSQL prepares each once per
/// connection); every row must be written (an upsert's `tail` writes each).
fn insert_rows<const N: usize>(
    tx: &mut dyn Db,
    head: &str,
    tail: &str,
    rows: &[[Val; N]],
) -> Result<(), LedgerError> {
    let mut rows = rows;
    let mut shapes: HashMap<usize, String> = HashMap::new();
    while !rows.is_empty() {
        let n = 1usize << rows.len().min(128).ilog2();
        let (chunk, rest) = rows.split_at(n);
        let sql = shapes.entry(n).or_insert_with(|| {
            let tuples: Vec<String> = (0..n)
                .map(|r| {
                    let cols: Vec<String> = (1..=N).map(|c| format!("?{}", r * N + c)).collect();
                    format!("({})", cols.join(", "))
                })
                .collect();
            format!("{head}{}{tail}", tuples.join(", "))
        });
        let written = tx.exec(sql, chunk.as_flattened())?;
        if written != u64::try_from(n).unwrap_or(u64::MAX) {
            return Err(LedgerError::Column(format!(
                "{written} of {n} rows written"
            )));
        }
        rows = rest;
    }
    Ok(())
}

/// The columns of an `events` row, in the order of [`NewEvents::rows`].
const EVENT_COLUMN_NAMES: [&str; EVENT_COLUMNS] = [
    "site",
    "machine",
    "boot",
    "seq",
    "kind",
    "state",
    "session",
    "uptime_ms",
    "ts_ms",
    "wall_ms",
    "received_ms",
    "payload",
];

/// Inserts the batch's new events (their keys are free: see [`NewEvents`]): in bulk where the
/// engine can (PostgreSQL's `COPY`), else with multi-row `INSERT`s.
fn insert_events(tx: &mut dyn Db, rows: Vec<[Val; EVENT_COLUMNS]>) -> Result<(), LedgerError> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let refs: Vec<&[Val]> = rows.iter().map(|r| r.as_slice()).collect();
    match tx.copy_rows("events", &EVENT_COLUMN_NAMES, &refs)? {
        Some(copied) if copied == u64::try_from(n).unwrap_or(u64::MAX) => Ok(()),
        Some(copied) => Err(LedgerError::Column(format!(
            "{copied} of {n} events copied"
        ))),
        None => insert_rows(
            tx,
            &format!(
                "INSERT INTO events ({}) VALUES ",
                EVENT_COLUMN_NAMES.join(", ")
            ),
            "",
            &rows,
        ),
    }
}

/// Where an event's key stands in this transaction.
enum Taken {
    /// Free: the event is new.
    Free,
    /// Taken by a new event of this batch (its index in [`NewEvents::rows`]).
    Batch(usize),
    /// Taken by a stored event.
    Stored,
}

/// The batch's new events, written together at the end of the batch ([`NewEvents::flush`])
/// instead of one statement each: a key is known free or taken by reading the stored keys of a
/// (machine, boot) once per batch, over the seq range the batch's events of that boot span.
/// Only the writer inserts events of its site (the transaction holds the site), so a key found
/// free stays free until the flush.
#[derive(Default)]
struct NewEvents<'b> {
    /// Per (machine, device boot): the lowest and highest seq of the batch's events.
    spans: HashMap<(&'b str, u32), (u32, u32)>,
    /// Per (machine, ledger boot): the seq range read and the stored seqs in it.
    stored: HashMap<(&'b str, u32), (u32, u32, std::collections::HashSet<u32>)>,
    /// The new events' keys (machine, ledger boot, seq), to their row.
    keys: HashMap<(&'b str, u32, u32), usize>,
    /// The rows to insert, in the order of the batch.
    rows: Vec<[Val; EVENT_COLUMNS]>,
}

/// The columns of an `events` row, as [`NewEvents::flush`] writes them.
const EVENT_COLUMNS: usize = 12;
/// Where the payload is in a row of [`NewEvents::rows`].
const PAYLOAD_COLUMN: usize = 11;

impl<'b> NewEvents<'b> {
    fn new(batch: &'b [Record]) -> Self {
        let mut spans: HashMap<(&str, u32), (u32, u32)> = HashMap::new();
        for r in batch {
            if let Record::Event { machine, event, .. } = r {
                let s = spans
                    .entry((machine.as_str(), event.boot))
                    .or_insert((event.seq, event.seq));
                s.0 = s.0.min(event.seq);
                s.1 = s.1.max(event.seq);
            }
        }
        NewEvents {
            spans,
            ..NewEvents::default()
        }
    }

    /// Whether the key (machine, ledger `boot`, `seq`) of an event of device boot `device_boot`
    /// is free, taken by this batch or stored.
    fn taken(
        &mut self,
        tx: &mut dyn Db,
        site: &str,
        machine: &'b str,
        device_boot: u32,
        boot: u32,
        seq: u32,
    ) -> Result<Taken, LedgerError> {
        if let Some(&i) = self.keys.get(&(machine, boot, seq)) {
            return Ok(Taken::Batch(i));
        }
        if let Some((lo, hi, seqs)) = self.stored.get(&(machine, boot)) {
            if (*lo..=*hi).contains(&seq) {
                return Ok(if seqs.contains(&seq) {
                    Taken::Stored
                } else {
                    Taken::Free
                });
            }
            // Outside the range read (a boot reached from two device boots, through two box
            // epochs): this key alone.
            let stored = tx
                .row(
                    "SELECT 1 FROM events WHERE site=?1 AND machine=?2 AND boot=?3 AND seq=?4",
                    args![site, machine, boot, seq],
                )?
                .is_some();
            return Ok(if stored { Taken::Stored } else { Taken::Free });
        }
        let (lo, hi) = self
            .spans
            .get(&(machine, device_boot))
            .copied()
            .unwrap_or((seq, seq));
        let (lo, hi) = (lo.min(seq), hi.max(seq));
        let seqs = tx
            .rows(
                "SELECT seq FROM events
                 WHERE site=?1 AND machine=?2 AND boot=?3 AND seq BETWEEN ?4 AND ?5",
                args![site, machine, boot, lo, hi],
            )?
            .iter()
            .map(|r| r.u32(0))
            .collect::<Result<std::collections::HashSet<u32>, _>>()?;
        let taken = seqs.contains(&seq);
        self.stored.insert((machine, boot), (lo, hi, seqs));
        Ok(if taken { Taken::Stored } else { Taken::Free })
    }

    /// The payload under a taken key.
    fn payload(
        &self,
        tx: &mut dyn Db,
        site: &str,
        machine: &str,
        boot: u32,
        seq: u32,
        taken: &Taken,
    ) -> Result<Option<String>, LedgerError> {
        match taken {
            Taken::Free => Ok(None),
            Taken::Batch(i) => Ok(match self.rows.get(*i).map(|r| &r[PAYLOAD_COLUMN]) {
                Some(Val::Text(p)) => Some(p.clone()),
                _ => None,
            }),
            Taken::Stored => tx
                .row(
                    "SELECT payload FROM events WHERE site=?1 AND machine=?2 AND boot=?3 AND seq=?4",
                    args![site, machine, boot, seq],
                )?
                .map(|r| r.text(0))
                .transpose(),
        }
    }

    /// Takes a new event (its key was free).
    fn insert(&mut self, machine: &'b str, boot: u32, seq: u32, row: [Val; EVENT_COLUMNS]) {
        self.keys.insert((machine, boot, seq), self.rows.len());
        self.rows.push(row);
    }
}

fn session_of(body: &EventBody, seq: u32) -> Option<u32> {
    match body {
        EventBody::SessionStarted { .. } => Some(seq),
        EventBody::SessionProgress { session, .. } | EventBody::SessionEnded { session, .. } => {
            Some(*session)
        }
        _ => None,
    }
}

/// A session's row as [`write_sessions`] writes it.
fn session_values(
    badges: &HashMap<String, String>,
    k: &session_rows::Key<'_>,
    f: &session_rows::SessionRow,
) -> [Val; 14] {
    let member = f.badge.as_deref().map(|b| member_of(badges, b));
    [
        Val::from(k.site),
        Val::from(k.machine),
        Val::from(k.boot),
        Val::from(k.session),
        Val::from(f.badge.as_deref()),
        Val::from(member),
        Val::from(f.start_ms),
        Val::from(f.end_ms),
        Val::from(f.busy_s),
        Val::from(f.idle_s),
        Val::from(f.energy_wh),
        Val::from(f.status.as_str()),
        Val::from(f.reason.as_deref()),
        Val::from(f.last_seq),
    ]
}

/// Writes the batch's session rows (each session once).
fn write_sessions(tx: &mut dyn Db, rows: &[[Val; 14]]) -> Result<(), LedgerError> {
    insert_rows(
        tx,
        "INSERT INTO sessions (site, machine, boot, session, badge, member, start_ms, end_ms,
            busy_s, idle_s, energy_wh, status, reason, last_seq) VALUES ",
        " ON CONFLICT (site, machine, boot, session) DO UPDATE SET
            badge=excluded.badge, member=excluded.member, start_ms=excluded.start_ms,
            end_ms=excluded.end_ms, busy_s=excluded.busy_s, idle_s=excluded.idle_s,
            energy_wh=excluded.energy_wh, status=excluded.status, reason=excluded.reason,
            last_seq=excluded.last_seq",
        rows,
    )
}

/// Stores a batch (see [`Ledger::commit`]) in the caller's transaction.
pub(super) fn commit(
    tx: &mut dyn Db,
    ctx: &Ctx<'_>,
    batch: &[Record],
) -> Result<Vec<Committed>, LedgerError> {
    Ok(commit_sites(tx, &[(ctx, batch)])?.pop().unwrap_or_default())
}

/// One site's part of a commit: its batch and what the transaction learns of it.
struct SiteCommit<'b, 'c> {
    ctx: &'c Ctx<'c>,
    batch: &'b [Record],
    /// What this transaction knows of each machine's boots (only the writer changes them).
    machines: HashMap<String, KnownBoots>,
    new_events: NewEvents<'b>,
    /// The sessions the batch touched, with the batch's new events naming them.
    touched: BTreeMap<session_rows::SessionKey, Vec<session_rows::NewEvent<'b>>>,
    rebooted: BTreeSet<String>,
    outcomes: Vec<Committed>,
}

/// Stores the batches of several sites in the caller's transaction (which holds their sites) and
/// returns what became of each record, batch by batch: the sites' reads and writes share their
/// statements (`batch_reads`, multi-row inserts), so that a batch spanning hundreds of sites costs
/// a few dozen round trips, not a few per machine.
pub(super) fn commit_sites<'b, 'c>(
    tx: &mut dyn Db,
    batches: &[(&'c Ctx<'c>, &'b [Record])],
) -> Result<Vec<Vec<Committed>>, LedgerError> {
    let sites: BTreeSet<&str> = batches.iter().map(|(ctx, _)| ctx.site).collect();
    if sites.len() < batches.len() {
        // A site twice: its second batch must see the first one's events, written at the end.
        return batches
            .iter()
            .map(|b| Ok(commit_sites(tx, &[*b])?.pop().unwrap_or_default()))
            .collect();
    }
    let mut work: Vec<SiteCommit<'b, 'c>> = batches
        .iter()
        .map(|(ctx, batch)| SiteCommit {
            ctx,
            batch,
            machines: HashMap::new(),
            new_events: NewEvents::new(batch),
            touched: BTreeMap::new(),
            rebooted: BTreeSet::new(),
            outcomes: Vec::with_capacity(batch.len()),
        })
        .collect();
    tx.keyed_lookups()?;
    prefetch(tx, &mut work)?;
    for w in &mut work {
        w.apply(tx)?;
    }
    let rows: Vec<[Val; EVENT_COLUMNS]> = work
        .iter_mut()
        .flat_map(|w| std::mem::take(&mut w.new_events.rows))
        .collect();
    insert_events(tx, rows)?;
    fold_boot_states(tx, &mut work)?;
    flush_boots(tx, &work)?;
    for w in &mut work {
        w.close_rebooted(tx)?;
    }
    let keys: Vec<(&str, Vec<&session_rows::SessionKey>)> = work
        .iter()
        .filter(|w| !w.ctx.full_session_recompute)
        .map(|w| (w.ctx.site, w.touched.keys().collect()))
        .collect();
    let mut stored = session_rows::Stored::read_sites(tx, &keys)?;
    let mut rows = Vec::new();
    for w in &mut work {
        let s = if w.ctx.full_session_recompute {
            session_rows::Stored::default()
        } else {
            stored.remove(w.ctx.site).unwrap_or_default()
        };
        w.session_rows(tx, &s, &mut rows)?;
    }
    write_sessions(tx, &rows)?;
    Ok(work.into_iter().map(|w| w.outcomes).collect())
}

impl<'b> SiteCommit<'b, '_> {
    /// Decides each record of the batch; the new events and boot rows are written afterwards.
    fn apply(&mut self, tx: &mut dyn Db) -> Result<(), LedgerError> {
        let SiteCommit {
            ctx,
            batch,
            machines,
            new_events,
            touched,
            rebooted,
            outcomes,
        } = self;
        let site = ctx.site;
        let batch: &'b [Record] = batch;
        for record in batch {
            let mut wall_ms = None;
            let outcome = match record {
                Record::Event {
                    machine,
                    event,
                    payload,
                    received_ms,
                } => 'event: {
                    let machine = machine.as_str();
                    let known = machine_state(machines, tx, site, machine)?;
                    let max_boot = known.max_boot;
                    // The ledger's boot: the device's, shifted by the offset of the epoch of the
                    // box that counted it (see maintenance::epoch_of). Insert first; only a key
                    // already taken is read back, to tell a resend (a duplicate) from another
                    // event under the same key (a conflict: the first copy wins).
                    let mut epoch = maintenance::epoch_of(tx, site, known, machine, event.box_id)?;
                    let mut boot = event.boot.saturating_add(epoch.offset);
                    if boot_state(known, tx, site, machine, boot)?.purged(event.seq) {
                        // Purged or erased (docs/SECURITY.md): its key is gone, its tombstone stays.
                        maintenance::settle(tx, site, known, machine, epoch, *received_ms)?;
                        break 'event Outcome::Duplicate;
                    }
                    let state = match &event.event {
                        EventBody::State { to, .. } => Some(to.as_str()),
                        _ => None,
                    };
                    let session = session_of(&event.event, event.seq);
                    let candidate = i64_of(received_ms.saturating_sub(event.sent_uptime_ms));
                    let inserted = loop {
                        known.max_boot = Some(known.max_boot.map_or(boot, |b| b.max(boot)));
                        let b = boot_state(known, tx, site, machine, boot)?;
                        // The boot's anchor after this event.
                        let anchor = b.anchor.map_or(candidate, |a| a.min(candidate));
                        let wall = event
                            .ts
                            .unwrap_or_else(|| u64_of(anchor).saturating_add(event.uptime_ms));
                        wall_ms = Some(wall);
                        let taken =
                            new_events.taken(tx, site, machine, event.boot, boot, event.seq)?;
                        if matches!(taken, Taken::Free) {
                            new_events.insert(
                                machine,
                                boot,
                                event.seq,
                                [
                                    Val::from(site),
                                    Val::from(machine),
                                    Val::from(boot),
                                    Val::from(event.seq),
                                    Val::from(event.event.kind()),
                                    Val::from(state),
                                    Val::from(session),
                                    Val::from(event.uptime_ms),
                                    Val::from(event.ts),
                                    Val::from(wall),
                                    Val::from(*received_ms),
                                    Val::from(String::from_utf8_lossy(payload).into_owned()),
                                ],
                            );
                            let b = boot_state(known, tx, site, machine, boot)?;
                            b.observe(anchor, *received_ms, Some((event.uptime_ms, event.seq)));
                            if state.is_some() {
                                b.first_new_state =
                                    Some(b.first_new_state.map_or(event.seq, |s| s.min(event.seq)));
                            }
                            break true;
                        }
                        let stored =
                            new_events.payload(tx, site, machine, boot, event.seq, &taken)?;
                        // Not stored (only its tombstone is): nothing to compare, a duplicate.
                        let differs = stored
                            .as_deref()
                            .and_then(|p| maintenance::stored_differs(p, event));
                        let Some(field) = differs else {
                            // A resend: its anchor candidate counts, as it always did.
                            let b = boot_state(known, tx, site, machine, boot)?;
                            b.observe(anchor, *received_ms, None);
                            break false;
                        };
                        if let Some(maintenance::Pending::Adopt(b)) = epoch.pending {
                            // The machine's first box id, counting boots the machine already
                            // had: a replacement of a box older than box ids, not a resend.
                            epoch = maintenance::new_epoch(known, b);
                            boot = event.boot.saturating_add(epoch.offset);
                            if boot_state(known, tx, site, machine, boot)?.purged(event.seq) {
                                maintenance::settle(tx, site, known, machine, epoch, *received_ms)?;
                                wall_ms = None;
                                break 'event Outcome::Duplicate;
                            }
                            continue;
                        }
                        // The same key, another event: the first copy wins, this one is kept
                        // aside and never applied (docs/PROTOCOL.md: it cannot double-bill).
                        maintenance::settle(tx, site, known, machine, epoch, *received_ms)?;
                        wall_ms = None;
                        let detail = format!(
                            "machine {machine} boot {} seq {} (ledger boot {boot}) is already \
                             stored with another {field}: the first copy is kept and this one is \
                             not counted. A device resends an event unchanged but for \
                             sent_uptime_ms; a replacement box sends its own `box` id",
                            event.boot, event.seq
                        );
                        tracing::warn!(
                            machine,
                            boot,
                            seq = event.seq,
                            field,
                            "conflicting copy of a stored event kept as a dead letter"
                        );
                        let keep = payload.len().min(fabmeter_protocol::MAX_CONFIG_PAYLOAD);
                        dead_letter(
                            tx,
                            site,
                            *received_ms,
                            &format!("fabmeter/v1/{site}/{machine}/event"),
                            &payload[..keep],
                            CONFLICT,
                            &detail,
                        )?;
                        break 'event Outcome::Conflict;
                    };
                    maintenance::settle(tx, site, known, machine, epoch, *received_ms)?;
                    if !inserted {
                        break 'event Outcome::Duplicate;
                    }
                    if let Some(s) = session {
                        touched
                            .entry((machine.to_owned(), boot, s))
                            .or_default()
                            .push(session_rows::NewEvent {
                                seq: event.seq,
                                // As stored and read back by the full fold.
                                uptime_ms: u64_of(i64_of(event.uptime_ms)),
                                ts: event.ts.map(|t| u64_of(i64_of(t))),
                                body: &event.event,
                            });
                    }
                    if max_boot.is_some_and(|b| boot > b) {
                        rebooted.insert(machine.to_owned());
                    }
                    Outcome::Accepted
                }
                Record::Status {
                    machine,
                    status,
                    received_ms,
                } => {
                    let caps = status
                        .caps
                        .as_ref()
                        .map(|c| serde_json::to_string(c).unwrap_or_default());
                    let offset = machine_state(machines, tx, site, machine.as_str())?.offset;
                    // A status of an older boot (a late last will) never overrides a newer one.
                    tx.exec(
                        "INSERT INTO presence (site, machine, boot, online, fw, config_hash, caps,
                            changed_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (site, machine) DO UPDATE SET
                            boot=excluded.boot, online=excluded.online,
                            fw=COALESCE(excluded.fw, presence.fw),
                            config_hash=COALESCE(excluded.config_hash, presence.config_hash),
                            caps=COALESCE(excluded.caps, presence.caps),
                            changed_ms=excluded.changed_ms
                         WHERE excluded.boot >= presence.boot",
                        args![
                            site,
                            machine.as_str(),
                            status.boot.saturating_add(offset),
                            status.status == Presence::Online,
                            status.fw.as_ref().map(|f| f.as_str()),
                            status.config_hash.map(|h| h.to_hex().as_str().to_owned()),
                            caps,
                            *received_ms,
                        ],
                    )?;
                    Outcome::Accepted
                }
                Record::DeadLetter {
                    topic,
                    payload,
                    reason,
                    detail,
                    received_ms,
                } => {
                    dead_letter(tx, site, *received_ms, topic, payload, reason, detail)?;
                    Outcome::DeadLettered
                }
            };
            outcomes.push(Committed { outcome, wall_ms });
        }
        Ok(())
    }

    /// A newer boot closes the open sessions of the older boots (at their last progress).
    fn close_rebooted(&mut self, tx: &mut dyn Db) -> Result<(), LedgerError> {
        for machine in &self.rebooted {
            let open = tx.rows(
                "SELECT boot, session FROM sessions WHERE site=?1 AND machine=?2 AND status='open'",
                args![self.ctx.site, machine.as_str()],
            )?;
            for r in open {
                self.touched
                    .entry((machine.clone(), r.u32(0)?, r.u32(1)?))
                    .or_default();
            }
        }
        Ok(())
    }

    /// The rows of the sessions the batch touched, after it, added to `rows`.
    fn session_rows(
        &mut self,
        tx: &mut dyn Db,
        stored: &session_rows::Stored,
        rows: &mut Vec<[Val; 14]>,
    ) -> Result<(), LedgerError> {
        let site = self.ctx.site;
        for ((machine, boot, session), new) in &self.touched {
            let known = machine_state(&mut self.machines, tx, site, machine)?;
            let newer = known.max_boot.is_some_and(|b| b > *boot);
            let anchor = boot_state(known, tx, site, machine, *boot)?
                .anchor
                .map(u64_of);
            let key = session_rows::Key {
                site,
                machine,
                boot: *boot,
                session: *session,
            };
            let row = if self.ctx.full_session_recompute {
                session_rows::full(tx, &key, newer)?
            } else {
                session_rows::recompute(tx, &key, new, anchor, newer, stored)?
            };
            if let Some(row) = row {
                rows.push(session_values(self.ctx.badges, &key, &row));
            }
        }
        Ok(())
    }
}

fn dead_letter(
    tx: &mut dyn Db,
    site: &str,
    received_ms: u64,
    topic: &str,
    payload: &[u8],
    reason: &str,
    detail: &str,
) -> Result<(), LedgerError> {
    tx.exec(
        "INSERT INTO dead_letters (site, received_ms, topic, payload, reason, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![site, received_ms, topic, payload, reason, detail],
    )?;
    Ok(())
}

fn has_machine(db: &mut dyn Db, site: &str, machine: &str) -> Result<bool, LedgerError> {
    Ok(db
        .row(
            "SELECT 1 FROM machines WHERE site=?1 AND machine=?2",
            args![site, machine],
        )?
        .is_some())
}

fn machines(db: &mut dyn Db, site: &str) -> Result<Vec<MachineView>, LedgerError> {
    let rows = db.rows(
        "SELECT m.machine, m.name, m.kind,
            (SELECT MAX(boot) FROM boots b WHERE b.site=m.site AND b.machine=m.machine),
            p.online, p.fw, p.changed_ms
         FROM machines m
         LEFT JOIN presence p ON p.site=m.site AND p.machine=m.machine
         WHERE m.site=?1 ORDER BY m.machine",
        args![site],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (id, name, kind) = (r.text(0)?, r.text(1)?, r.text(2)?);
        let (boot, online, fw, changed) =
            (r.opt_u32(3)?, r.opt_bool(4)?, r.opt_text(5)?, r.opt_i64(6)?);
        let last_state = db
            .row(
                "SELECT boot, state, wall_ms FROM events
                 WHERE site=?1 AND machine=?2 AND state IS NOT NULL
                 ORDER BY boot DESC, seq DESC LIMIT 1",
                args![site, id.as_str()],
            )?
            .map(|r| Ok::<_, LedgerError>((r.u32(0)?, r.text(1)?, r.i64(2)?)))
            .transpose()?;
        let member = db
            .row(
                "SELECT member FROM sessions WHERE site=?1 AND machine=?2 AND status='open'
                 ORDER BY boot DESC, session DESC LIMIT 1",
                args![site, id.as_str()],
            )?
            .map(|r| r.opt_text(0))
            .transpose()?
            .flatten();
        let online = online.unwrap_or(false);
        let (state, since_ms) = match (&last_state, online, boot) {
            (_, false, _) if changed.is_some() => ("offline".to_owned(), changed.map(u64_of)),
            (Some((b, s, at)), _, Some(max)) if *b == max => (s.clone(), Some(u64_of(*at))),
            // The newest boot has not reported a state change yet: devices start off.
            (_, _, Some(_)) => ("off".to_owned(), changed.map(u64_of)),
            _ => ("unknown".to_owned(), None),
        };
        out.push(MachineView {
            id,
            name,
            kind,
            state,
            since_ms,
            member,
            online,
            boot,
            fw,
        });
    }
    Ok(out)
}

fn sessions(
    db: &mut dyn Db,
    site: &str,
    q: &SessionQuery,
) -> Result<Vec<SessionView>, LedgerError> {
    let mut sql = String::from(
        "SELECT machine, boot, session, member, badge, start_ms, end_ms, busy_s, idle_s,
            energy_wh, status, reason, last_seq
         FROM sessions WHERE site=?1",
    );
    let mut args: Vec<Val> = vec![site.into()];
    if let Some(m) = &q.machine {
        args.push(m.into());
        sql.push_str(&format!(" AND machine=?{}", args.len()));
    }
    if let Some(m) = &q.member {
        args.push(m.into());
        sql.push_str(&format!(" AND member=?{}", args.len()));
    }
    if let Some(f) = q.from_ms {
        args.push(f.into());
        sql.push_str(&format!(" AND start_ms >= ?{}", args.len()));
    }
    if let Some(t) = q.to_ms {
        args.push(t.into());
        sql.push_str(&format!(" AND start_ms < ?{}", args.len()));
    }
    sql.push_str(" ORDER BY start_ms DESC, machine, boot DESC, session DESC");
    if let Some(l) = q.limit {
        sql.push_str(&format!(" LIMIT {l}"));
    }
    db.rows(&sql, &args)?
        .into_iter()
        .map(|r| {
            Ok(SessionView {
                machine: r.text(0)?,
                boot: r.u32(1)?,
                session: r.u32(2)?,
                member: r.opt_text(3)?,
                badge: r.opt_text(4)?,
                start_ms: r.opt_u64(5)?,
                end_ms: r.opt_u64(6)?,
                busy_s: r.u32(7)?,
                idle_s: r.u32(8)?,
                energy_wh: r.u32(9)?,
                status: r.text(10)?,
                reason: r.opt_text(11)?,
                first_seq: r.u32(2)?,
                last_seq: r.u32(12)?,
            })
        })
        .collect()
}

pub(super) fn counters(
    db: &mut dyn Db,
    site: &str,
    machine: &str,
) -> Result<Option<MachineCounters>, LedgerError> {
    if !has_machine(db, site, machine)? {
        return Ok(None);
    }
    // Each boot's closed time per state, kept at commit ([`fold_boot_states`]), plus its last
    // state's time up to the boot's highest uptime: one row per boot, not per state event.
    let r = db.one(
        "SELECT CAST(COALESCE(SUM(busy_ms + CASE WHEN last_state = 'busy'
                THEN max_uptime_ms - last_state_up ELSE 0 END), 0) AS BIGINT),
            CAST(COALESCE(SUM(idle_ms + CASE WHEN last_state = 'idle'
                THEN max_uptime_ms - last_state_up ELSE 0 END), 0) AS BIGINT)
         FROM boots WHERE site=?1 AND machine=?2",
        args![site, machine],
    )?;
    let (busy_ms, idle_ms) = (r.u64(0)?, r.u64(1)?);
    // Purged sessions count through their machine's baseline (docs/SECURITY.md).
    let r = db.one(
        "SELECT COUNT(*) + COALESCE((SELECT sessions FROM purged_totals p
                WHERE p.site=?1 AND p.machine=?2), 0),
            CAST(COALESCE(SUM(busy_s), 0) + COALESCE((SELECT busy_s FROM purged_totals p
                WHERE p.site=?1 AND p.machine=?2), 0) AS BIGINT),
            CAST(COALESCE(SUM(energy_wh), 0) + COALESCE((SELECT energy_wh FROM purged_totals p
                WHERE p.site=?1 AND p.machine=?2), 0) AS BIGINT)
         FROM sessions WHERE site=?1 AND machine=?2",
        args![site, machine],
    )?;
    let (sessions, session_busy_s, session_energy_wh) = (r.u64(0)?, r.u64(1)?, r.u64(2)?);
    let r = db.one(
        "SELECT COUNT(*), CAST(COALESCE(SUM(events), 0) AS BIGINT) FROM boots
         WHERE site=?1 AND machine=?2",
        args![site, machine],
    )?;
    Ok(Some(MachineCounters {
        machine: machine.to_owned(),
        on_s: (busy_ms + idle_ms) / 1000,
        busy_s: busy_ms / 1000,
        idle_s: idle_ms / 1000,
        sessions,
        session_busy_s,
        session_energy_wh,
        boots: r.u64(0)?,
        events: r.u64(1)?,
    }))
}

fn dead_letters(db: &mut dyn Db, site: &str, limit: u32) -> Result<Vec<DeadLetter>, LedgerError> {
    db.rows(
        "SELECT id, received_ms, topic, payload, reason, detail FROM dead_letters
         WHERE site=?1 ORDER BY id DESC LIMIT ?2",
        args![site, limit],
    )?
    .into_iter()
    .map(|r| {
        Ok(DeadLetter {
            id: r.i64(0)?,
            received_ms: r.u64(1)?,
            topic: r.text(2)?,
            payload: String::from_utf8_lossy(&r.blob(3)?).into_owned(),
            reason: r.text(4)?,
            detail: r.text(5)?,
        })
    })
    .collect()
}

fn totals(db: &mut dyn Db, site: &str) -> Result<LedgerTotals, LedgerError> {
    let r = db.one(
        "SELECT (SELECT COUNT(*) FROM events WHERE site=?1),
            (SELECT COUNT(*) FROM sessions WHERE site=?1),
            (SELECT COUNT(*) FROM dead_letters WHERE site=?1)",
        args![site],
    )?;
    Ok(LedgerTotals {
        events: r.u64(0)?,
        sessions: r.u64(1)?,
        dead_letters: r.u64(2)?,
    })
}

/// Registers (or renames) machines of `site`.
pub(super) fn register(
    tx: &mut dyn Db,
    site: &str,
    machines: &[MachineInfo],
    now_ms: u64,
) -> Result<(), LedgerError> {
    for m in machines {
        tx.exec(
            "INSERT INTO machines (site, machine, name, kind, source, registered_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (site, machine) DO UPDATE SET
                name=excluded.name, kind=excluded.kind, source=excluded.source",
            args![site, &m.id, &m.name, &m.kind, &m.source, now_ms],
        )?;
    }
    Ok(())
}

impl<E: Engine> Ledger for E {
    fn register_machines(
        &mut self,
        machines: &[MachineInfo],
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        self.write(|tx, ctx| register(tx, ctx.site, machines, now_ms))
    }

    fn commit(&mut self, batch: &[Record]) -> Result<Vec<Committed>, LedgerError> {
        self.write(|tx, ctx| commit(tx, ctx, batch))
    }

    fn has_machine(&self, machine: &str) -> Result<bool, LedgerError> {
        self.read(|db, site| has_machine(db, site, machine))
    }

    fn machines(&self) -> Result<Vec<MachineView>, LedgerError> {
        self.read(machines)
    }

    fn sessions(&self, q: &SessionQuery) -> Result<Vec<SessionView>, LedgerError> {
        self.read(|db, site| sessions(db, site, q))
    }

    fn counters(&self, machine: &str) -> Result<Option<MachineCounters>, LedgerError> {
        self.read(|db, site| counters(db, site, machine))
    }

    fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, LedgerError> {
        self.read(|db, site| dead_letters(db, site, limit))
    }

    fn usage(&self, from_ms: u64) -> Result<Usage, LedgerError> {
        self.read(|db, site| {
            let r = db.one(
                "SELECT COUNT(*), CAST(COALESCE(SUM(busy_s), 0) AS BIGINT),
                    CAST(COALESCE(SUM(idle_s), 0) AS BIGINT),
                    COUNT(DISTINCT COALESCE(member, badge))
                 FROM sessions WHERE site=?1 AND start_ms>=?2",
                args![site, from_ms],
            )?;
            Ok(Usage {
                sessions: r.u64(0)?,
                busy_s: r.u64(1)?,
                idle_s: r.u64(2)?,
                members: r.u64(3)?,
            })
        })
    }

    fn busy_by_machine(&self, from_ms: u64, to_ms: u64) -> Result<Vec<MachineBusy>, LedgerError> {
        self.read(|db, site| {
            db.rows(
                "SELECT machine, COUNT(*), CAST(COALESCE(SUM(busy_s), 0) AS BIGINT)
                 FROM sessions WHERE site=?1 AND start_ms>=?2 AND start_ms<?3
                 GROUP BY machine ORDER BY machine",
                args![site, from_ms, to_ms],
            )?
            .iter()
            .map(|r| {
                Ok(MachineBusy {
                    machine: r.text(0)?,
                    sessions: r.u64(1)?,
                    busy_s: r.u64(2)?,
                })
            })
            .collect()
        })
    }

    fn unavailable(&self) -> Result<Vec<String>, LedgerError> {
        self.read(|db, site| {
            db.rows(
                "SELECT DISTINCT machine FROM outages WHERE site=?1 AND to_ms IS NULL
                 ORDER BY machine",
                args![site],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect()
        })
    }

    fn totals(&self) -> Result<LedgerTotals, LedgerError> {
        self.read(totals)
    }

    fn record_service(
        &mut self,
        machine: &str,
        plan: &str,
        by: &str,
        note: &str,
        cost_cents: Option<u64>,
        at_ms: u64,
    ) -> Result<Option<ServiceRecord>, LedgerError> {
        self.write(|tx, ctx| {
            let service = maintenance::Service {
                plan,
                by,
                note,
                cost_cents,
            };
            maintenance::record_service(tx, ctx.site, machine, &service, at_ms)
        })
    }

    fn open_outage(
        &mut self,
        machine: &str,
        source: &str,
        reason: &str,
        by: &str,
        at_ms: u64,
    ) -> Result<bool, LedgerError> {
        self.write(|tx, ctx| {
            maintenance::open_outage(tx, ctx.site, machine, source, reason, by, at_ms)
        })
    }

    fn close_outage(
        &mut self,
        machine: &str,
        source: &str,
        at_ms: u64,
    ) -> Result<bool, LedgerError> {
        self.write(|tx, ctx| maintenance::close_outage(tx, ctx.site, machine, source, at_ms))
    }

    fn maintenance_records(
        &self,
        machine: &str,
    ) -> Result<Option<MaintenanceRecords>, LedgerError> {
        self.read(|db, site| maintenance::records(db, site, machine))
    }

    fn reported_config_hash(&self, machine: &str) -> Result<Option<String>, LedgerError> {
        self.read(|db, site| {
            Ok(db
                .row(
                    "SELECT config_hash FROM presence WHERE site=?1 AND machine=?2",
                    args![site, machine],
                )?
                .map(|r| r.opt_text(0))
                .transpose()?
                .flatten())
        })
    }

    fn alert_states(&self) -> Result<Vec<(String, String, String)>, LedgerError> {
        self.read(maintenance::alert_states)
    }

    fn set_alert_state(
        &mut self,
        machine: &str,
        plan: &str,
        state: &str,
        at_ms: u64,
    ) -> Result<(), LedgerError> {
        self.write(|tx, ctx| {
            maintenance::set_alert_state(tx, ctx.site, machine, plan, state, at_ms)
        })
    }

    fn issue_invoices(
        &mut self,
        billing: &Billing,
        period: Period,
        now_ms: u64,
        dry_run: bool,
    ) -> Result<IssueReport, BillingError> {
        invoices::issue_invoices(self, billing, period, now_ms, dry_run)
    }

    fn credit_note(
        &mut self,
        billing: &Billing,
        number: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<Invoice, BillingError> {
        invoices::credit_note(self, billing, number, reason, now_ms)
    }

    fn documents(&self) -> Result<Vec<Invoice>, BillingError> {
        invoices::documents(self)
    }

    fn period_documents(&self, period: Period) -> Result<Vec<Invoice>, BillingError> {
        invoices::period_documents(self, period)
    }

    fn document_count(&self) -> Result<u64, BillingError> {
        Ok(self.read(|db, site| {
            db.one("SELECT COUNT(*) FROM invoices WHERE site=?1", args![site])?
                .u64(0)
        })?)
    }

    fn member_documents(&self, member: &str) -> Result<Vec<Invoice>, BillingError> {
        invoices::member_documents(self, member)
    }

    fn audit(&self, billing: &Billing) -> Result<Vec<AuditDifference>, BillingError> {
        audit::audit(self, billing)
    }

    fn session_events(
        &self,
        machine: &str,
        boot: u32,
        session: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        self.read(|db, site| privacy::session_events(db, site, machine, boot, session))
    }

    fn purge(
        &mut self,
        now_ms: u64,
        retention_days: u32,
        dry_run: bool,
    ) -> Result<PurgeReport, LedgerError> {
        privacy::purge(self, now_ms, retention_days, dry_run)
    }

    fn erase_member(
        &mut self,
        member: &str,
        badges: &[String],
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<ErasureReport, LedgerError> {
        privacy::erase_member(self, member, badges, by, reason, now_ms)
    }
}

#[path = "maintenance.rs"]
pub(super) mod maintenance;

#[path = "batch_reads.rs"]
pub(super) mod batch_reads;

#[path = "session_rows.rs"]
pub(super) mod session_rows;

#[path = "invoices.rs"]
pub(super) mod invoices;

#[path = "audit.rs"]
pub(super) mod audit;

#[path = "privacy.rs"]
pub(super) mod privacy;
