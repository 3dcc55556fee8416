//! The SQLite ledger: one file per site, WAL mode, versioned migrations. Its logic, invoicing and
//! privacy included, is the one it shares with the PostgreSQL ledger (`ops`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use fabmeter_protocol::Id;
use rusqlite::Connection;

use super::ops::{privacy, Ctx, End, Engine};
use super::sql::{Db, Lite};
use super::LedgerError;

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied.
/// Never edit a released migration: add a new one.
pub(in crate::ledger) const MIGRATIONS: &[&str] = &[
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
    // 7: dead letters name their site, like every other table, so that the queries are the
    // PostgreSQL ledger's (one database for many sites); a file holds one site's, filled in at
    // open.
    r#"
    ALTER TABLE dead_letters ADD COLUMN site TEXT;
    "#,
    // 8: what a service cost, cents excl. VAT (`maintenance done --cost-cents`, docs/COSTS.md);
    // NULL when not given.
    r#"
    ALTER TABLE services ADD COLUMN cost_cents INTEGER;
    "#,
    // 9: a machine's refused badges (`access_denied`, a few among its events), found without
    // reading every event of the machine at each maintenance evaluation.
    r#"
    CREATE INDEX events_denied ON events (site, machine) WHERE kind = 'access_denied';
    "#,
    // 10: each boot's time per state, kept at commit (ops::fold_boot_states), so that a
    // machine's busy and idle hours are read from its boots, not from all its state events.
    concat!(
        "ALTER TABLE boots ADD COLUMN busy_ms INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE boots ADD COLUMN idle_ms INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE boots ADD COLUMN last_state TEXT;
         ALTER TABLE boots ADD COLUMN last_state_seq INTEGER;
         ALTER TABLE boots ADD COLUMN last_state_up INTEGER;
         ",
        backfill_boot_states!()
    ),
];

/// The SQLite implementation of [`Ledger`](super::Ledger). Open one for the writer and one per
/// reader thread: WAL lets readers run while the writer commits.
pub struct SqliteLedger {
    pub(in crate::ledger) conn: Connection,
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
        // The write path's multi-key statements come in a few shapes each (`batch_reads`): keep
        // them all prepared (rusqlite keeps 16 by default).
        conn.set_prepared_statement_cache_capacity(256);
        migrate(&mut conn)?;
        // Dead letters stored before they named their site (schema 7) are this file's site's.
        conn.execute(
            "UPDATE dead_letters SET site=?1 WHERE site IS NULL",
            [site.as_str()],
        )?;
        let mut badges = badges;
        privacy::add_erased_badges(&mut Lite(&conn), site.as_str(), &mut badges)?;
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

    /// Recompute every touched session from all its stored events (the reference) instead of
    /// incrementally: for the equivalence tests.
    #[cfg(test)]
    pub(super) fn set_full_session_recompute(&mut self, on: bool) {
        self.full_session_recompute = on;
    }
}

impl Engine for SqliteLedger {
    fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Db, &Ctx<'_>) -> Result<(T, End), LedgerError>,
    ) -> Result<T, LedgerError> {
        let tx = self.conn.transaction()?;
        let ctx = Ctx {
            site: &self.site,
            badges: &self.badges,
            full_session_recompute: self.full_session_recompute,
        };
        let (out, end) = f(&mut Lite(&tx), &ctx)?;
        match end {
            End::Commit => tx.commit()?,
            End::Rollback => tx.rollback()?,
        }
        Ok(out)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Db, &str) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        f(&mut Lite(&self.conn), &self.site)
    }

    fn snapshot<T>(
        &self,
        f: impl FnOnce(&mut dyn Db, &Ctx<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        // A read transaction: in WAL mode its first read fixes the snapshot it sees.
        let tx = self.conn.unchecked_transaction()?;
        let ctx = Ctx {
            site: &self.site,
            badges: &self.badges,
            full_session_recompute: self.full_session_recompute,
        };
        let out = f(&mut Lite(&tx), &ctx)?;
        tx.rollback()?;
        Ok(out)
    }
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
