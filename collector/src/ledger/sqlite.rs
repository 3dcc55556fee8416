//! The SQLite ledger: one file per site, WAL mode, versioned migrations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use fabmeter_protocol::clock::ClockAnchor;
use fabmeter_protocol::message::{EventBody, Presence};
use fabmeter_protocol::{decode, Id};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    Committed, DeadLetter, Ledger, LedgerError, LedgerTotals, MachineCounters, MachineInfo,
    MachineView, MaintenanceRecords, Outcome, Record, ServiceRecord, SessionQuery, SessionView,
    CONFLICT,
};
use crate::session::{fold, SessionEvent, SessionFold};

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied.
/// Never edit a released migration: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE machines (
        site TEXT NOT NULL, machine TEXT NOT NULL,
        name TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL,
        registered_ms INTEGER NOT NULL,
        PRIMARY KEY (site, machine)
    ) WITHOUT ROWID;
    CREATE TABLE boots (
        site TEXT NOT NULL, machine TEXT NOT NULL, boot INTEGER NOT NULL,
        anchor_ms INTEGER NOT NULL,          -- min(received - sent uptime): see protocol::clock
        first_received_ms INTEGER NOT NULL,
        max_uptime_ms INTEGER NOT NULL,
        max_seq INTEGER NOT NULL,
        events INTEGER NOT NULL,
        PRIMARY KEY (site, machine, boot)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        site TEXT NOT NULL, machine TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        state TEXT,                          -- the new state, for state events
        session INTEGER,                     -- the session the event belongs to, if any
        uptime_ms INTEGER NOT NULL,
        ts_ms INTEGER,                       -- device clock, when it has one
        wall_ms INTEGER NOT NULL,            -- ts_ms, or the boot anchor + uptime at insert
        received_ms INTEGER NOT NULL,
        payload TEXT NOT NULL,               -- as received
        PRIMARY KEY (site, machine, boot, seq)
    ) WITHOUT ROWID;
    CREATE INDEX events_state ON events (site, machine, boot, seq) WHERE state IS NOT NULL;
    CREATE INDEX events_session ON events (site, machine, boot, session) WHERE session IS NOT NULL;
    CREATE TABLE sessions (
        site TEXT NOT NULL, machine TEXT NOT NULL, boot INTEGER NOT NULL, session INTEGER NOT NULL,
        badge TEXT, member TEXT,
        start_ms INTEGER, end_ms INTEGER,
        busy_s INTEGER NOT NULL, idle_s INTEGER NOT NULL, energy_wh INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'closed', 'interrupted')),
        reason TEXT,
        last_seq INTEGER NOT NULL,
        PRIMARY KEY (site, machine, boot, session)
    ) WITHOUT ROWID;
    CREATE INDEX sessions_start ON sessions (site, start_ms);
    CREATE INDEX sessions_member ON sessions (site, member, start_ms);
    CREATE INDEX sessions_open ON sessions (site, machine) WHERE status = 'open';
    CREATE TABLE presence (
        site TEXT NOT NULL, machine TEXT NOT NULL,
        boot INTEGER NOT NULL, online INTEGER NOT NULL,
        fw TEXT, config_hash TEXT, caps TEXT,
        changed_ms INTEGER NOT NULL,
        PRIMARY KEY (site, machine)
    ) WITHOUT ROWID;
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        received_ms INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    "#,
    // 2: billing (docs/BILLING.md): issued documents, hash-chained and immutable; which sessions
    // they billed; which periods were run.
    r#"
    CREATE TABLE invoices (
        site TEXT NOT NULL, number TEXT NOT NULL,
        chain INTEGER NOT NULL,              -- position in the site's hash chain, from 1
        year INTEGER NOT NULL, seq INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('invoice', 'credit_note')),
        member TEXT NOT NULL, period TEXT NOT NULL, issued_ms INTEGER NOT NULL,
        refers_to TEXT,
        excl_cents INTEGER NOT NULL, vat_cents INTEGER NOT NULL, incl_cents INTEGER NOT NULL,
        prepaid_cents INTEGER NOT NULL,
        document TEXT NOT NULL,              -- the JSON as issued
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
        PRIMARY KEY (site, number),
        UNIQUE (site, chain),
        UNIQUE (site, year, seq)
    );
    CREATE TRIGGER invoices_never_change BEFORE UPDATE ON invoices
        BEGIN SELECT RAISE(ABORT, 'issued invoices never change: issue a credit note'); END;
    CREATE TRIGGER invoices_never_go BEFORE DELETE ON invoices
        BEGIN SELECT RAISE(ABORT, 'issued invoices are never deleted: issue a credit note'); END;
    CREATE TABLE billed_sessions (
        site TEXT NOT NULL, machine TEXT NOT NULL, boot INTEGER NOT NULL, session INTEGER NOT NULL,
        member TEXT NOT NULL,
        period TEXT NOT NULL,                -- the period of the session's start
        number TEXT,                         -- the invoice; NULL: settled at zero (no invoice)
        chain INTEGER NOT NULL,              -- documents in the chain when it was billed
        PRIMARY KEY (site, machine, boot, session)
    ) WITHOUT ROWID;
    CREATE INDEX billed_sessions_number ON billed_sessions (site, number);
    CREATE TABLE billing_runs (
        site TEXT NOT NULL, period TEXT NOT NULL, run_ms INTEGER NOT NULL,
        PRIMARY KEY (site, period)
    ) WITHOUT ROWID;
    "#,
    // 3: maintenance (docs/MAINTENANCE.md): services recorded, out-of-order periods, and the last
    // state alerted per (machine, plan) so that a restart does not alert twice.
    r#"
    CREATE TABLE services (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL, machine TEXT NOT NULL, plan TEXT NOT NULL,
        done_ms INTEGER NOT NULL, done_by TEXT NOT NULL, note TEXT NOT NULL,
        busy_s_at INTEGER NOT NULL           -- the machine's lifetime busy seconds then
    );
    CREATE INDEX services_machine ON services (site, machine, plan, done_ms);
    CREATE TABLE outages (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL, machine TEXT NOT NULL,
        source TEXT NOT NULL,                -- 'out_of_order' (marked by a person) or 'plan:{name}' (locked, overdue)
        reason TEXT NOT NULL, marked_by TEXT NOT NULL,
        from_ms INTEGER NOT NULL, to_ms INTEGER  -- NULL while it lasts
    );
    CREATE UNIQUE INDEX outages_open ON outages (site, machine, source) WHERE to_ms IS NULL;
    -- A box that replaced another on a machine and counts its boots from 1 again: its boot b is
    -- stored as b + boot_offset of the latest epoch, so that its events do not collide with the
    -- old box's and the machine's counts go on.
    CREATE TABLE boot_epochs (
        site TEXT NOT NULL, machine TEXT NOT NULL,
        boot_offset INTEGER NOT NULL, since_ms INTEGER NOT NULL,
        PRIMARY KEY (site, machine, boot_offset)
    ) WITHOUT ROWID;
    CREATE TABLE maintenance_alerts (
        site TEXT NOT NULL, machine TEXT NOT NULL, plan TEXT NOT NULL,
        state TEXT NOT NULL, changed_ms INTEGER NOT NULL,
        PRIMARY KEY (site, machine, plan)
    ) WITHOUT ROWID;
    "#,
    // 4: retention and erasure (docs/SECURITY.md "Personal data"): what a purge or an erasure
    // leaves behind so that exactly-once and the lifetime counters hold without the rows.
    r#"
    -- The highest seq deleted per (machine, ledger boot): a resend at or below it is a duplicate.
    CREATE TABLE purged_keys (
        site TEXT NOT NULL, machine TEXT NOT NULL, boot INTEGER NOT NULL,
        max_seq INTEGER NOT NULL,
        PRIMARY KEY (site, machine, boot)
    ) WITHOUT ROWID;
    -- What the deleted sessions and access_denied events counted, added to the live tables' sums.
    CREATE TABLE purged_totals (
        site TEXT NOT NULL, machine TEXT NOT NULL,
        sessions INTEGER NOT NULL, busy_s INTEGER NOT NULL, energy_wh INTEGER NOT NULL,
        refused_locked INTEGER NOT NULL,
        PRIMARY KEY (site, machine)
    ) WITHOUT ROWID;
    -- Each erasure of a member's personal data: who, when, why, how much. Append-only.
    CREATE TABLE erasures (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL, member TEXT NOT NULL, erased_by TEXT NOT NULL, reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        sessions INTEGER NOT NULL, events INTEGER NOT NULL, access_denied INTEGER NOT NULL,
        billed_kept INTEGER NOT NULL
    );
    CREATE TRIGGER erasures_never_change BEFORE UPDATE ON erasures
        BEGIN SELECT RAISE(ABORT, 'erasure records never change'); END;
    CREATE TRIGGER erasures_never_go BEFORE DELETE ON erasures
        BEGIN SELECT RAISE(ABORT, 'erasure records are never deleted'); END;
    -- The badges of an erased member's billed sessions (kept for the invoices): they still
    -- attribute those sessions once the member left the site file, so that the audit verifies.
    CREATE TABLE erased_badges (
        site TEXT NOT NULL, badge TEXT NOT NULL, member TEXT NOT NULL,
        PRIMARY KEY (site, badge)
    ) WITHOUT ROWID;
    "#,
    // 5: billing reads by member and by period (docs/BENCHMARKS.md "Billing"): the prepaid credit
    // a member already used, on each invoice run, and the documents of one period; without these
    // each of those reads scans every document ever issued.
    r#"
    CREATE INDEX invoices_member ON invoices (site, member);
    CREATE INDEX invoices_period ON invoices (site, period, chain);
    "#,
    // 6: epochs keyed by (machine, box) (docs/PROTOCOL.md "Identity, ordering, duplicates"): the
    // box id whose boots an epoch counts. Epochs opened before box ids keep their offsets and
    // have no box (NULL); the machine's first box id adopts its latest one.
    r#"
    ALTER TABLE boot_epochs ADD COLUMN box INTEGER;
    CREATE UNIQUE INDEX boot_epochs_box ON boot_epochs (site, machine, box) WHERE box IS NOT NULL;
    "#,
];

/// The SQLite implementation of [`Ledger`]. Open one for the writer and one per reader thread:
/// WAL lets readers run while the writer commits.
pub struct SqliteLedger {
    conn: Connection,
    site: String,
    badges: HashMap<String, String>,
    /// Sessions from all their stored events instead of incrementally (tests only).
    full_session_recompute: bool,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger")
            .field("site", &self.site)
            .finish()
    }
}

fn u64_of(x: i64) -> u64 {
    u64::try_from(x).unwrap_or(0)
}

fn i64_of(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

impl SqliteLedger {
    /// Opens (creating if needed) the ledger of `site` at `path` and applies pending migrations.
    /// `badges` maps badge hashes to member ids, used to attribute sessions.
    pub fn open(
        path: &Path,
        site: &Id,
        badges: HashMap<String, String>,
    ) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LedgerError::Open {
                path: path.display().to_string(),
                source,
            })?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 32 MiB of page cache (SQLite's default is 2 MiB): the ingest writer otherwise reads the
        // event and boot indexes back from the OS for every batch (docs/BENCHMARKS.md "Ingest").
        conn.pragma_update(None, "cache_size", -32_768)?;
        migrate(&mut conn)?;
        let mut badges = badges;
        privacy::add_erased_badges(&conn, site.as_str(), &mut badges)?;
        Ok(SqliteLedger {
            conn,
            site: site.as_str().to_owned(),
            badges,
            full_session_recompute: false,
        })
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Writes a session's row.
    fn write_session(
        badges: &HashMap<String, String>,
        tx: &Transaction<'_>,
        k: &session_rows::Key<'_>,
        f: &session_rows::SessionRow,
    ) -> Result<(), LedgerError> {
        let member = f.badge.as_deref().map(|b| member_of(badges, b));
        tx.prepare_cached(
            "INSERT INTO sessions (site, machine, boot, session, badge, member, start_ms, end_ms,
                busy_s, idle_s, energy_wh, status, reason, last_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (site, machine, boot, session) DO UPDATE SET
                badge=excluded.badge, member=excluded.member, start_ms=excluded.start_ms,
                end_ms=excluded.end_ms, busy_s=excluded.busy_s, idle_s=excluded.idle_s,
                energy_wh=excluded.energy_wh, status=excluded.status, reason=excluded.reason,
                last_seq=excluded.last_seq",
        )?
        .execute(params![
            k.site,
            k.machine,
            k.boot,
            k.session,
            f.badge,
            member,
            f.start_ms.map(i64_of),
            f.end_ms.map(i64_of),
            f.busy_s,
            f.idle_s,
            f.energy_wh,
            f.status,
            f.reason,
            f.last_seq,
        ])?;
        Ok(())
    }

    /// Recompute every touched session from all its stored events (the reference) instead of
    /// incrementally: for the equivalence tests.
    #[cfg(test)]
    pub(super) fn set_full_session_recompute(&mut self, on: bool) {
        self.full_session_recompute = on;
    }
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
    conn: &Connection,
    site: &str,
    machine: &str,
    boot: u32,
    session: u32,
    newer_boot: bool,
) -> Result<Option<SessionFold>, LedgerError> {
    let anchor: Option<i64> = conn
        .query_row(
            "SELECT anchor_ms FROM boots WHERE site=?1 AND machine=?2 AND boot=?3",
            params![site, machine, boot],
            |r| r.get(0),
        )
        .optional()?;
    let anchor = anchor.map_or_else(ClockAnchor::new, |a| {
        ClockAnchor::from_boot_wall_ms(u64_of(a))
    });
    let mut stmt = conn.prepare_cached(
        // The session index, named: without statistics SQLite prefers the primary key's
        // (site, machine, boot) prefix, which reads every event of the boot to keep the
        // session's few (328 µs against 13 µs per session on a year's ledger, docs/BENCHMARKS.md).
        "SELECT seq, uptime_ms, ts_ms, payload FROM events INDEXED BY events_session
         WHERE site=?1 AND machine=?2 AND boot=?3 AND session=?4",
    )?;
    let rows = stmt.query_map(params![site, machine, boot, session], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut events = Vec::new();
    for row in rows {
        let (seq, uptime, ts, payload) = row?;
        // Stored payloads were validated on the way in; one that no longer decodes (a
        // future schema?) is skipped rather than failing the batch.
        let Ok(ev) = decode::<fabmeter_protocol::message::Event>(payload.as_bytes()) else {
            tracing::warn!(
                machine,
                boot,
                seq,
                "stored event no longer decodes; skipped"
            );
            continue;
        };
        let uptime_ms = u64_of(uptime);
        events.push(SessionEvent {
            seq,
            uptime_ms,
            wall_ms: ts.map(u64_of).or_else(|| anchor.wall_time(uptime_ms)),
            body: ev.event,
        });
    }
    Ok(fold(session, &events, newer_boot))
}

fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let latest = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if current > latest {
        return Err(LedgerError::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "ledger schema migrated");
    }
    Ok(())
}

/// A machine's highest ledger boot and current boot offset, as a commit has read and changed them,
/// and its boots this commit touched.
struct KnownBoots {
    max_boot: Option<u32>,
    /// The offset of the machine's latest epoch.
    offset: u32,
    /// The epoch offset of each box id this transaction resolved.
    boxes: HashMap<u32, u32>,
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
    tx: &Transaction<'_>,
    site: &str,
    machine: &str,
) -> Result<&'a mut KnownBoots, LedgerError> {
    if !machines.contains_key(machine) {
        let max_boot: Option<u32> = tx
            .prepare_cached("SELECT MAX(boot) FROM boots WHERE site=?1 AND machine=?2")?
            .query_row(params![site, machine], |r| r.get(0))?;
        let offset = maintenance::boot_offset(tx, site, machine)?;
        machines.insert(
            machine.to_owned(),
            KnownBoots {
                max_boot,
                offset,
                boxes: HashMap::new(),
                boots: HashMap::new(),
            },
        );
    }
    machines
        .get_mut(machine)
        // Never: inserted just above.
        .ok_or(LedgerError::Database(rusqlite::Error::QueryReturnedNoRows))
}

/// One boot of a machine as this transaction knows it, its anchor and tombstone read on first use.
fn boot_state<'a>(
    known: &'a mut KnownBoots,
    tx: &Transaction<'_>,
    site: &str,
    machine: &str,
    boot: u32,
) -> Result<&'a mut BootState, LedgerError> {
    if let std::collections::hash_map::Entry::Vacant(v) = known.boots.entry(boot) {
        let (anchor, tombstone) = tx
            .prepare_cached(
                "SELECT (SELECT anchor_ms FROM boots WHERE site=?1 AND machine=?2 AND boot=?3),
                    (SELECT max_seq FROM purged_keys WHERE site=?1 AND machine=?2 AND boot=?3)",
            )?
            .query_row(params![site, machine, boot], |r| Ok((r.get(0)?, r.get(1)?)))?;
        v.insert(BootState {
            anchor,
            tombstone,
            ..BootState::default()
        });
    }
    known
        .boots
        .get_mut(&boot)
        // Never: inserted just above.
        .ok_or(LedgerError::Database(rusqlite::Error::QueryReturnedNoRows))
}

/// Writes the `boots` rows the batch touched: one upsert per (machine, boot).
fn flush_boots(
    tx: &Transaction<'_>,
    site: &str,
    machines: &HashMap<String, KnownBoots>,
) -> Result<(), LedgerError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO boots (site, machine, boot, anchor_ms, first_received_ms, max_uptime_ms,
            max_seq, events)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (site, machine, boot) DO UPDATE SET
            anchor_ms = MIN(anchor_ms, excluded.anchor_ms),
            max_uptime_ms = MAX(max_uptime_ms, excluded.max_uptime_ms),
            max_seq = MAX(max_seq, excluded.max_seq),
            events = events + excluded.events",
    )?;
    for (machine, known) in machines {
        for (boot, b) in known.boots.iter().filter(|(_, b)| b.dirty) {
            stmt.execute(params![
                site,
                machine,
                boot,
                b.anchor,
                b.first_received_ms,
                b.max_uptime_ms,
                b.max_seq,
                b.events
            ])?;
        }
    }
    Ok(())
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

impl Ledger for SqliteLedger {
    fn register_machines(
        &mut self,
        machines: &[MachineInfo],
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        let tx = self.conn.transaction()?;
        for m in machines {
            tx.execute(
                "INSERT INTO machines (site, machine, name, kind, source, registered_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (site, machine) DO UPDATE SET
                    name=excluded.name, kind=excluded.kind, source=excluded.source",
                params![self.site, m.id, m.name, m.kind, m.source, i64_of(now_ms)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn commit(&mut self, batch: &[Record]) -> Result<Vec<Committed>, LedgerError> {
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(batch.len());
        // The sessions the batch touched, with the batch's new events naming them.
        let mut touched: BTreeMap<(String, u32, u32), Vec<session_rows::NewEvent<'_>>> =
            BTreeMap::new();
        let mut rebooted: BTreeSet<String> = BTreeSet::new();
        // What this transaction knows of each machine's boots (only the writer changes them).
        let mut machines: HashMap<String, KnownBoots> = HashMap::new();
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
                    let known = machine_state(&mut machines, &tx, &self.site, machine)?;
                    let max_boot = known.max_boot;
                    // The ledger's boot: the device's, shifted by the offset of the epoch of the
                    // box that counted it (see maintenance::epoch_of). Insert first; only a key
                    // already taken is read back, to tell a resend (a duplicate) from another
                    // event under the same key (a conflict: the first copy wins).
                    let mut epoch =
                        maintenance::epoch_of(&tx, &self.site, known, machine, event.box_id)?;
                    let mut boot = event.boot.saturating_add(epoch.offset);
                    if boot_state(known, &tx, &self.site, machine, boot)?.purged(event.seq) {
                        // Purged or erased (docs/SECURITY.md): its key is gone, its tombstone
                        // stays.
                        maintenance::settle(&tx, &self.site, known, machine, epoch, *received_ms)?;
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
                        let b = boot_state(known, &tx, &self.site, machine, boot)?;
                        // The boot's anchor after this event.
                        let anchor = b.anchor.map_or(candidate, |a| a.min(candidate));
                        let wall = event
                            .ts
                            .unwrap_or_else(|| u64_of(anchor).saturating_add(event.uptime_ms));
                        wall_ms = Some(wall);
                        let inserted =
                            tx.prepare_cached(
                                "INSERT OR IGNORE INTO events (site, machine, boot, seq, kind,
                                    state, session, uptime_ms, ts_ms, wall_ms, received_ms, payload)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                            )?
                            .execute(params![
                                self.site,
                                machine,
                                boot,
                                event.seq,
                                event.event.kind(),
                                state,
                                session,
                                i64_of(event.uptime_ms),
                                event.ts.map(i64_of),
                                i64_of(wall),
                                i64_of(*received_ms),
                                String::from_utf8_lossy(payload),
                            ])? == 1;
                        if inserted {
                            b.observe(anchor, *received_ms, Some((event.uptime_ms, event.seq)));
                            break true;
                        }
                        let Some(field) =
                            maintenance::stored_differs(&tx, &self.site, machine, boot, event)?
                        else {
                            // A resend: its anchor candidate counts, as it always did.
                            let b = boot_state(known, &tx, &self.site, machine, boot)?;
                            b.observe(anchor, *received_ms, None);
                            break false;
                        };
                        if let Some(maintenance::Pending::Adopt(b)) = epoch.pending {
                            // The machine's first box id, counting boots the machine already
                            // had: a replacement of a box older than box ids, not a resend.
                            epoch = maintenance::new_epoch(known, b);
                            boot = event.boot.saturating_add(epoch.offset);
                            if boot_state(known, &tx, &self.site, machine, boot)?.purged(event.seq)
                            {
                                maintenance::settle(
                                    &tx,
                                    &self.site,
                                    known,
                                    machine,
                                    epoch,
                                    *received_ms,
                                )?;
                                wall_ms = None;
                                break 'event Outcome::Duplicate;
                            }
                            continue;
                        }
                        // The same key, another event: the first copy wins, this one is kept
                        // aside and never applied (docs/PROTOCOL.md: it cannot double-bill).
                        maintenance::settle(&tx, &self.site, known, machine, epoch, *received_ms)?;
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
                        tx.prepare_cached(
                            "INSERT INTO dead_letters (received_ms, topic, payload, reason, detail)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![
                            i64_of(*received_ms),
                            format!("fabmeter/v1/{}/{machine}/event", self.site),
                            &payload[..keep],
                            CONFLICT,
                            detail
                        ])?;
                        break 'event Outcome::Conflict;
                    };
                    maintenance::settle(&tx, &self.site, known, machine, epoch, *received_ms)?;
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
                    // A status of an older boot (a late last will) never overrides a newer one.
                    tx.prepare_cached(
                        "INSERT INTO presence (site, machine, boot, online, fw, config_hash, caps, changed_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (site, machine) DO UPDATE SET
                            boot=excluded.boot, online=excluded.online,
                            fw=COALESCE(excluded.fw, fw), config_hash=COALESCE(excluded.config_hash, config_hash),
                            caps=COALESCE(excluded.caps, caps), changed_ms=excluded.changed_ms
                         WHERE excluded.boot >= presence.boot",
                    )?
                    .execute(params![
                        self.site,
                        machine.as_str(),
                        status.boot.saturating_add(
                            machine_state(&mut machines, &tx, &self.site, machine.as_str())?.offset
                        ),
                        status.status == Presence::Online,
                        status.fw.as_ref().map(|f| f.as_str()),
                        status.config_hash.map(|h| h.to_hex().as_str().to_owned()),
                        caps,
                        i64_of(*received_ms),
                    ])?;
                    Outcome::Accepted
                }
                Record::DeadLetter {
                    topic,
                    payload,
                    reason,
                    detail,
                    received_ms,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO dead_letters (received_ms, topic, payload, reason, detail)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        i64_of(*received_ms),
                        topic,
                        payload,
                        reason,
                        detail
                    ])?;
                    Outcome::DeadLettered
                }
            };
            outcomes.push(Committed { outcome, wall_ms });
        }
        flush_boots(&tx, &self.site, &machines)?;
        // A newer boot closes the open sessions of the older boots (at their last progress).
        for machine in &rebooted {
            let mut stmt = tx.prepare_cached(
                "SELECT boot, session FROM sessions WHERE site=?1 AND machine=?2 AND status='open'",
            )?;
            let open = stmt
                .query_map(params![self.site, machine], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<(u32, u32)>, _>>()?;
            for (boot, session) in open {
                touched.entry((machine.clone(), boot, session)).or_default();
            }
        }
        for ((machine, boot, session), new) in &touched {
            let known = machine_state(&mut machines, &tx, &self.site, machine)?;
            let newer = known.max_boot.is_some_and(|b| b > *boot);
            let anchor = boot_state(known, &tx, &self.site, machine, *boot)?
                .anchor
                .map(u64_of);
            let key = session_rows::Key {
                site: &self.site,
                machine,
                boot: *boot,
                session: *session,
            };
            let row = if self.full_session_recompute {
                session_rows::full(&tx, &key, newer)?
            } else {
                session_rows::recompute(&tx, &key, new, anchor, newer)?
            };
            if let Some(row) = row {
                Self::write_session(&self.badges, &tx, &key, &row)?;
            }
        }
        tx.commit()?;
        Ok(outcomes)
    }

    fn has_machine(&self, machine: &str) -> Result<bool, LedgerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM machines WHERE site=?1 AND machine=?2")?
            .exists(params![self.site, machine])?)
    }

    fn machines(&self) -> Result<Vec<MachineView>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT m.machine, m.name, m.kind,
                (SELECT MAX(boot) FROM boots b WHERE b.site=m.site AND b.machine=m.machine),
                p.online, p.fw, p.changed_ms
             FROM machines m
             LEFT JOIN presence p ON p.site=m.site AND p.machine=m.machine
             WHERE m.site=?1 ORDER BY m.machine",
        )?;
        let rows = stmt
            .query_map(params![self.site], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<u32>>(3)?,
                    r.get::<_, Option<bool>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, name, kind, boot, online, fw, changed) in rows {
            let last_state: Option<(u32, String, i64)> = self
                .conn
                .prepare_cached(
                    "SELECT boot, state, wall_ms FROM events
                     WHERE site=?1 AND machine=?2 AND state IS NOT NULL
                     ORDER BY boot DESC, seq DESC LIMIT 1",
                )?
                .query_row(params![self.site, id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let member: Option<String> = self
                .conn
                .prepare_cached(
                    "SELECT member FROM sessions WHERE site=?1 AND machine=?2 AND status='open'
                     ORDER BY boot DESC, session DESC LIMIT 1",
                )?
                .query_row(params![self.site, id], |r| r.get(0))
                .optional()?
                .flatten();
            let online = online.unwrap_or(false);
            let (state, since_ms) = match (&last_state, online, boot) {
                (_, false, _) if online_known(changed) => {
                    ("offline".to_owned(), changed.map(u64_of))
                }
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

    fn sessions(&self, q: &SessionQuery) -> Result<Vec<SessionView>, LedgerError> {
        let mut sql = String::from(
            "SELECT machine, boot, session, member, badge, start_ms, end_ms, busy_s, idle_s,
                energy_wh, status, reason, last_seq
             FROM sessions WHERE site=?1",
        );
        let mut args: Vec<rusqlite::types::Value> = vec![self.site.clone().into()];
        if let Some(m) = &q.machine {
            args.push(m.clone().into());
            sql.push_str(&format!(" AND machine=?{}", args.len()));
        }
        if let Some(m) = &q.member {
            args.push(m.clone().into());
            sql.push_str(&format!(" AND member=?{}", args.len()));
        }
        if let Some(f) = q.from_ms {
            args.push(i64_of(f).into());
            sql.push_str(&format!(" AND start_ms >= ?{}", args.len()));
        }
        if let Some(t) = q.to_ms {
            args.push(i64_of(t).into());
            sql.push_str(&format!(" AND start_ms < ?{}", args.len()));
        }
        sql.push_str(" ORDER BY start_ms DESC, machine, boot DESC, session DESC");
        if let Some(l) = q.limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(SessionView {
                machine: r.get(0)?,
                boot: r.get(1)?,
                session: r.get(2)?,
                member: r.get(3)?,
                badge: r.get(4)?,
                start_ms: r.get::<_, Option<i64>>(5)?.map(u64_of),
                end_ms: r.get::<_, Option<i64>>(6)?.map(u64_of),
                busy_s: r.get(7)?,
                idle_s: r.get(8)?,
                energy_wh: r.get(9)?,
                status: r.get(10)?,
                reason: r.get(11)?,
                first_seq: r.get(2)?,
                last_seq: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn counters(&self, machine: &str) -> Result<Option<MachineCounters>, LedgerError> {
        if !self.has_machine(machine)? {
            return Ok(None);
        }
        let mut busy_ms = 0u64;
        let mut idle_ms = 0u64;
        let mut stmt = self.conn.prepare_cached(
            "SELECT e.state, SUM(COALESCE(e.next_up, b.max_uptime_ms) - e.uptime_ms)
             FROM (SELECT boot, state, uptime_ms,
                     LEAD(uptime_ms) OVER (PARTITION BY boot ORDER BY seq) AS next_up
                   FROM events WHERE site=?1 AND machine=?2 AND state IS NOT NULL) e
             JOIN boots b ON b.site=?1 AND b.machine=?2 AND b.boot=e.boot
             GROUP BY e.state",
        )?;
        let rows = stmt.query_map(params![self.site, machine], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (state, ms) = row?;
            match state.as_str() {
                "busy" => busy_ms += u64_of(ms),
                "idle" => idle_ms += u64_of(ms),
                _ => {}
            }
        }
        // Purged sessions count through their machine's baseline (docs/SECURITY.md).
        let (sessions, session_busy_s, session_energy_wh): (i64, i64, i64) = self.conn.query_row(
            "SELECT COUNT(*) + COALESCE((SELECT sessions FROM purged_totals p
                    WHERE p.site=?1 AND p.machine=?2), 0),
                COALESCE(SUM(busy_s), 0) + COALESCE((SELECT busy_s FROM purged_totals p
                    WHERE p.site=?1 AND p.machine=?2), 0),
                COALESCE(SUM(energy_wh), 0) + COALESCE((SELECT energy_wh FROM purged_totals p
                    WHERE p.site=?1 AND p.machine=?2), 0)
             FROM sessions WHERE site=?1 AND machine=?2",
            params![self.site, machine],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let (boots, events): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(events), 0) FROM boots WHERE site=?1 AND machine=?2",
            params![self.site, machine],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Some(MachineCounters {
            machine: machine.to_owned(),
            on_s: (busy_ms + idle_ms) / 1000,
            busy_s: busy_ms / 1000,
            idle_s: idle_ms / 1000,
            sessions: u64_of(sessions),
            session_busy_s: u64_of(session_busy_s),
            session_energy_wh: u64_of(session_energy_wh),
            boots: u64_of(boots),
            events: u64_of(events),
        }))
    }

    fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, received_ms, topic, payload, reason, detail FROM dead_letters
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit], |r| {
            Ok(DeadLetter {
                id: r.get(0)?,
                received_ms: u64_of(r.get(1)?),
                topic: r.get(2)?,
                payload: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(3)?).into_owned(),
                reason: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn record_service(
        &mut self,
        machine: &str,
        plan: &str,
        by: &str,
        note: &str,
        at_ms: u64,
    ) -> Result<Option<ServiceRecord>, LedgerError> {
        maintenance::record_service(self, machine, plan, by, note, at_ms)
    }

    fn open_outage(
        &mut self,
        machine: &str,
        source: &str,
        reason: &str,
        by: &str,
        at_ms: u64,
    ) -> Result<bool, LedgerError> {
        maintenance::open_outage(self, machine, source, reason, by, at_ms)
    }

    fn close_outage(
        &mut self,
        machine: &str,
        source: &str,
        at_ms: u64,
    ) -> Result<bool, LedgerError> {
        maintenance::close_outage(self, machine, source, at_ms)
    }

    fn maintenance_records(
        &self,
        machine: &str,
    ) -> Result<Option<MaintenanceRecords>, LedgerError> {
        maintenance::records(self, machine)
    }

    fn reported_config_hash(&self, machine: &str) -> Result<Option<String>, LedgerError> {
        Ok(self
            .conn
            .prepare_cached("SELECT config_hash FROM presence WHERE site=?1 AND machine=?2")?
            .query_row(params![self.site, machine], |r| r.get(0))
            .optional()?
            .flatten())
    }

    fn alert_states(&self) -> Result<Vec<(String, String, String)>, LedgerError> {
        maintenance::alert_states(self)
    }

    fn set_alert_state(
        &mut self,
        machine: &str,
        plan: &str,
        state: &str,
        at_ms: u64,
    ) -> Result<(), LedgerError> {
        maintenance::set_alert_state(self, machine, plan, state, at_ms)
    }

    fn totals(&self) -> Result<LedgerTotals, LedgerError> {
        let count = |sql: &str| -> Result<u64, LedgerError> {
            Ok(u64_of(self.conn.query_row(sql, [], |r| r.get(0))?))
        };
        Ok(LedgerTotals {
            events: count("SELECT COUNT(*) FROM events")?,
            sessions: count("SELECT COUNT(*) FROM sessions")?,
            dead_letters: count("SELECT COUNT(*) FROM dead_letters")?,
        })
    }
}

fn online_known(changed: Option<i64>) -> bool {
    changed.is_some()
}

#[path = "invoices.rs"]
pub(super) mod invoices;

#[path = "maintenance.rs"]
mod maintenance;

#[path = "privacy.rs"]
pub(super) mod privacy;

#[path = "session_rows.rs"]
mod session_rows;
