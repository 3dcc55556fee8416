//! The PostgreSQL ledger: one database for many sites and several collectors (docs/SCALING.md).
//!
//! The same logic as the SQLite ledger (`ops`), on the same tables, each keyed by site first;
//! `events`, the largest, is hash-partitioned by site. Exactly-once is the primary key (site,
//! machine, boot, seq) with `INSERT ... ON CONFLICT DO NOTHING`; a batch is one transaction, so
//! the ingest acknowledges only after `COMMIT` (synchronous commit, the server's default). Each
//! write transaction first takes a transaction-scoped advisory lock on its site: two collectors
//! writing one site (MQTT shared subscriptions) take turns, collectors of different sites never
//! wait on each other. A lost connection is reopened on the next call, so a database that went
//! away mid-run only fails commits (the ingest then acknowledges nothing and retries) until it
//! is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabmeter_protocol::Id;

use super::ops::{privacy, Ctx, End, Engine};
use super::sql::{Db, Pg};
use super::{Committed, LedgerError, MachineInfo, Record};

/// Schema migrations, applied in order under an advisory lock (several collectors may start at
/// once); `fabmeter_schema.version` is the number applied. Never edit a released migration.
/// Version 1 is the SQLite ledger's schema 7, with 64-bit integers.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE machines (
        site TEXT NOT NULL, machine TEXT NOT NULL,
        name TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL,
        registered_ms BIGINT NOT NULL,
        PRIMARY KEY (site, machine)
    );
    CREATE TABLE boots (
        site TEXT NOT NULL, machine TEXT NOT NULL, boot BIGINT NOT NULL,
        anchor_ms BIGINT NOT NULL,
        first_received_ms BIGINT NOT NULL,
        max_uptime_ms BIGINT NOT NULL,
        max_seq BIGINT NOT NULL,
        events BIGINT NOT NULL,
        PRIMARY KEY (site, machine, boot)
    );
    CREATE TABLE events (
        site TEXT NOT NULL, machine TEXT NOT NULL, boot BIGINT NOT NULL, seq BIGINT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT,
        session BIGINT,
        uptime_ms BIGINT NOT NULL,
        ts_ms BIGINT,
        wall_ms BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (site, machine, boot, seq)
    ) PARTITION BY HASH (site);
    DO $$ BEGIN
        FOR i IN 0..7 LOOP
            EXECUTE format('CREATE TABLE events_p%s PARTITION OF events
                FOR VALUES WITH (MODULUS 8, REMAINDER %s)', i, i);
        END LOOP;
    END $$;
    CREATE INDEX events_state ON events (site, machine, boot, seq) WHERE state IS NOT NULL;
    CREATE INDEX events_session ON events (site, machine, boot, session)
        WHERE session IS NOT NULL;
    CREATE TABLE sessions (
        site TEXT NOT NULL, machine TEXT NOT NULL, boot BIGINT NOT NULL, session BIGINT NOT NULL,
        badge TEXT, member TEXT,
        start_ms BIGINT, end_ms BIGINT,
        busy_s BIGINT NOT NULL, idle_s BIGINT NOT NULL, energy_wh BIGINT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'closed', 'interrupted')),
        reason TEXT,
        last_seq BIGINT NOT NULL,
        PRIMARY KEY (site, machine, boot, session)
    );
    CREATE INDEX sessions_start ON sessions (site, start_ms);
    CREATE INDEX sessions_member ON sessions (site, member, start_ms);
    CREATE INDEX sessions_open ON sessions (site, machine) WHERE status = 'open';
    CREATE TABLE presence (
        site TEXT NOT NULL, machine TEXT NOT NULL,
        boot BIGINT NOT NULL, online BIGINT NOT NULL,
        fw TEXT, config_hash TEXT, caps TEXT,
        changed_ms BIGINT NOT NULL,
        PRIMARY KEY (site, machine)
    );
    CREATE TABLE dead_letters (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        site TEXT NOT NULL,
        received_ms BIGINT NOT NULL,
        topic TEXT NOT NULL,
        payload BYTEA NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX dead_letters_site ON dead_letters (site, id);
    CREATE TABLE invoices (
        site TEXT NOT NULL, number TEXT NOT NULL,
        chain BIGINT NOT NULL,
        year BIGINT NOT NULL, seq BIGINT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('invoice', 'credit_note')),
        member TEXT NOT NULL, period TEXT NOT NULL, issued_ms BIGINT NOT NULL,
        refers_to TEXT,
        excl_cents BIGINT NOT NULL, vat_cents BIGINT NOT NULL, incl_cents BIGINT NOT NULL,
        prepaid_cents BIGINT NOT NULL,
        document TEXT NOT NULL,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
        PRIMARY KEY (site, number),
        UNIQUE (site, chain),
        UNIQUE (site, year, seq)
    );
    CREATE INDEX invoices_member ON invoices (site, member);
    CREATE INDEX invoices_period ON invoices (site, period, chain);
    CREATE FUNCTION fabmeter_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '%', TG_ARGV[0]; END $$;
    CREATE TRIGGER invoices_never_change BEFORE UPDATE ON invoices FOR EACH ROW
        EXECUTE FUNCTION fabmeter_refuse('issued invoices never change: issue a credit note');
    CREATE TRIGGER invoices_never_go BEFORE DELETE ON invoices FOR EACH ROW
        EXECUTE FUNCTION fabmeter_refuse('issued invoices are never deleted: issue a credit note');
    CREATE TABLE billed_sessions (
        site TEXT NOT NULL, machine TEXT NOT NULL, boot BIGINT NOT NULL, session BIGINT NOT NULL,
        member TEXT NOT NULL,
        period TEXT NOT NULL,
        number TEXT,
        chain BIGINT NOT NULL,
        PRIMARY KEY (site, machine, boot, session)
    );
    CREATE INDEX billed_sessions_number ON billed_sessions (site, number);
    CREATE TABLE billing_runs (
        site TEXT NOT NULL, period TEXT NOT NULL, run_ms BIGINT NOT NULL,
        PRIMARY KEY (site, period)
    );
    CREATE TABLE services (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        site TEXT NOT NULL, machine TEXT NOT NULL, plan TEXT NOT NULL,
        done_ms BIGINT NOT NULL, done_by TEXT NOT NULL, note TEXT NOT NULL,
        busy_s_at BIGINT NOT NULL
    );
    CREATE INDEX services_machine ON services (site, machine, plan, done_ms);
    CREATE TABLE outages (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        site TEXT NOT NULL, machine TEXT NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL, marked_by TEXT NOT NULL,
        from_ms BIGINT NOT NULL, to_ms BIGINT
    );
    CREATE UNIQUE INDEX outages_open ON outages (site, machine, source) WHERE to_ms IS NULL;
    CREATE TABLE boot_epochs (
        site TEXT NOT NULL, machine TEXT NOT NULL,
        boot_offset BIGINT NOT NULL, since_ms BIGINT NOT NULL,
        box BIGINT,
        PRIMARY KEY (site, machine, boot_offset)
    );
    CREATE UNIQUE INDEX boot_epochs_box ON boot_epochs (site, machine, box) WHERE box IS NOT NULL;
    CREATE TABLE maintenance_alerts (
        site TEXT NOT NULL, machine TEXT NOT NULL, plan TEXT NOT NULL,
        state TEXT NOT NULL, changed_ms BIGINT NOT NULL,
        PRIMARY KEY (site, machine, plan)
    );
    CREATE TABLE purged_keys (
        site TEXT NOT NULL, machine TEXT NOT NULL, boot BIGINT NOT NULL,
        max_seq BIGINT NOT NULL,
        PRIMARY KEY (site, machine, boot)
    );
    CREATE TABLE purged_totals (
        site TEXT NOT NULL, machine TEXT NOT NULL,
        sessions BIGINT NOT NULL, busy_s BIGINT NOT NULL, energy_wh BIGINT NOT NULL,
        refused_locked BIGINT NOT NULL,
        PRIMARY KEY (site, machine)
    );
    CREATE TABLE erasures (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        site TEXT NOT NULL, member TEXT NOT NULL, erased_by TEXT NOT NULL, reason TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        sessions BIGINT NOT NULL, events BIGINT NOT NULL, access_denied BIGINT NOT NULL,
        billed_kept BIGINT NOT NULL
    );
    CREATE TRIGGER erasures_never_change BEFORE UPDATE ON erasures FOR EACH ROW
        EXECUTE FUNCTION fabmeter_refuse('erasure records never change');
    CREATE TRIGGER erasures_never_go BEFORE DELETE ON erasures FOR EACH ROW
        EXECUTE FUNCTION fabmeter_refuse('erasure records are never deleted');
    CREATE TABLE erased_badges (
        site TEXT NOT NULL, badge TEXT NOT NULL, member TEXT NOT NULL,
        PRIMARY KEY (site, badge)
    );
"#,
    // 2: what a service cost, cents excl. VAT (`maintenance done --cost-cents`, docs/COSTS.md).
    r#"
    ALTER TABLE services ADD COLUMN cost_cents BIGINT;
"#,
    // 3: a machine's refused badges (`access_denied`, a few among its events), found without
    // reading every event of the machine at each maintenance evaluation.
    r#"
    CREATE INDEX events_denied ON events (site, machine) WHERE kind = 'access_denied';
"#,
    // 4: each boot's time per state, kept at commit (as the SQLite ledger's schema 10).
    concat!(
        "ALTER TABLE boots ADD COLUMN busy_ms BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN idle_ms BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN last_state TEXT,
            ADD COLUMN last_state_seq BIGINT,
            ADD COLUMN last_state_up BIGINT;
         ",
        backfill_boot_states!()
    ),
];

/// The advisory lock key of the schema migrations (any constant; "fabmeter" in ASCII).
const MIGRATION_LOCK: i64 = 0x6661_626d_6574_6572;

/// One PostgreSQL connection with its prepared statements, reopened on the next call when it
/// was lost; shared by the ledgers of the sites one collector serves ([`PgLedger::on`]), so that a
/// collector of hundreds of sites holds a few connections, not a few per site. Calls take turns.
pub struct PgConnection {
    config: postgres::Config,
    slot: Mutex<PgSlot>,
}

/// The live client and its statement cache.
#[derive(Default)]
struct PgSlot {
    client: Option<postgres::Client>,
    /// Prepared statements of the current connection, by their shared text.
    cache: HashMap<String, postgres::Statement>,
}

impl std::fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnection")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish()
    }
}

impl Drop for PgConnection {
    /// The synchronous client closes its connection by blocking on its own runtime, which
    /// tokio forbids on an async thread: there, the connection is closed on a thread of its own.
    fn drop(&mut self) {
        let slot = self
            .slot
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = slot.client.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("pg-close".into())
                    .spawn(move || drop(client));
            }
        }
    }
}

impl PgConnection {
    /// Connects to the database of `url` and applies pending migrations (once, whichever
    /// collector comes first).
    pub fn connect(url: &str) -> Result<Arc<PgConnection>, LedgerError> {
        let config = parse_url(url)?;
        let mut client = config.connect(postgres::NoTls)?;
        migrate(&mut client)?;
        Ok(Arc::new(PgConnection {
            config,
            slot: Mutex::new(PgSlot {
                client: Some(client),
                cache: HashMap::new(),
            }),
        }))
    }

    /// Runs `f` on the connection, reopened first when the last one was lost (the statement
    /// cache goes with it).
    fn with_client<T>(
        &self,
        f: impl FnOnce(
            &mut postgres::Client,
            &mut HashMap<String, postgres::Statement>,
        ) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut slot = self
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let PgSlot { client, cache } = &mut *slot;
        if client.as_ref().is_none_or(postgres::Client::is_closed) {
            *client = None;
            cache.clear();
            *client = Some(self.config.connect(postgres::NoTls)?);
            tracing::info!("PostgreSQL ledger connection reopened");
        }
        let Some(c) = client.as_mut() else {
            return Err(LedgerError::Column("no PostgreSQL connection".into()));
        };
        let out = f(c, cache);
        if c.is_closed() {
            *client = None;
            cache.clear();
        }
        out
    }

    /// Runs `f` once, with every site's context, in one transaction that holds the sites'
    /// advisory locks (taken first, in order: two collectors locking overlapping sets never
    /// deadlock); `f` says how it ends.
    fn transaction_all<T>(
        &self,
        sites: &[&PgLedger],
        f: impl FnOnce(&mut dyn Db, &[Ctx<'_>]) -> Result<(T, End), LedgerError>,
    ) -> Result<T, LedgerError> {
        self.with_client(|client, cache| {
            let mut tx = client.transaction()?;
            // One round trip for every site's lock, taken in the order of the lock keys (the
            // same order in every transaction: two collectors never deadlock).
            let names: Vec<&str> = sites.iter().map(|l| l.site.as_str()).collect();
            tx.execute(
                "SELECT pg_advisory_xact_lock(k) FROM (
                    SELECT DISTINCT hashtextextended(s, 0) AS k FROM unnest($1::text[]) AS s
                    ORDER BY k
                 ) AS keys",
                &[&names],
            )?;
            let ctxs: Vec<Ctx<'_>> = sites
                .iter()
                .map(|l| Ctx {
                    site: &l.site,
                    badges: &l.badges,
                    full_session_recompute: false,
                })
                .collect();
            let (t, end) = f(
                &mut Pg {
                    client: &mut tx,
                    cache,
                },
                &ctxs,
            )?;
            match end {
                End::Commit => tx.commit()?,
                End::Rollback => tx.rollback()?,
            }
            Ok(t)
        })
    }

    /// Stores the batches of several sites (each a ledger on this connection, with the machines
    /// to register first) in one transaction and returns what became of each record, batch by
    /// batch (see [`Ledger::commit`](super::Ledger::commit)).
    pub fn commit_sites(
        self: &Arc<Self>,
        batches: &[SiteBatch<'_>],
        now_ms: u64,
    ) -> Result<Vec<Vec<Committed>>, LedgerError> {
        if let Some(b) = batches.iter().find(|b| !self.same(&b.ledger.conn)) {
            return Err(LedgerError::Column(format!(
                "the ledger of site {} is not on this connection",
                b.ledger.site
            )));
        }
        let ledgers: Vec<&PgLedger> = batches.iter().map(|b| b.ledger).collect();
        // Every site's batch in one pass (`ops::commit_sites`): their reads and writes share
        // statements.
        self.transaction_all(&ledgers, |db, ctxs| {
            for (b, ctx) in batches.iter().zip(ctxs) {
                if !b.register.is_empty() {
                    super::ops::register(db, ctx.site, b.register, now_ms)?;
                }
            }
            let work: Vec<(&Ctx<'_>, &[Record])> = ctxs
                .iter()
                .zip(batches)
                .map(|(ctx, b)| (ctx, b.records))
                .collect();
            Ok((super::ops::commit_sites(db, &work)?, End::Commit))
        })
    }

    /// Whether `self` and `other` are the same shared connection.
    pub fn same(self: &Arc<Self>, other: &Arc<Self>) -> bool {
        Arc::ptr_eq(self, other)
    }
}

/// One site's part of a batch for [`PgConnection::commit_sites`].
#[derive(Debug, Clone, Copy)]
pub struct SiteBatch<'a> {
    /// The site's ledger.
    pub ledger: &'a PgLedger,
    /// Machines to register (or rename) before the records.
    pub register: &'a [MachineInfo],
    /// The records.
    pub records: &'a [Record],
}

/// The PostgreSQL implementation of [`Ledger`](super::Ledger) for one site, on a connection of
/// its own ([`PgLedger::open`]) or shared with other sites' ledgers ([`PgLedger::on`]). Open one
/// per role (the writer, the API reader, the maintenance task), like the SQLite ledger.
pub struct PgLedger {
    conn: Arc<PgConnection>,
    site: String,
    badges: HashMap<String, String>,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger")
            .field("site", &self.site)
            .finish()
    }
}

/// Why a `ledger.url` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("ledger.url is not a usable PostgreSQL URL ({0}); write it as postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, e.g. postgres://fabmeter@127.0.0.1:5432/fabmeter")]
pub struct BadUrl(String);

/// Parses a `postgres://` URL (or a `key=value` connection string) into a client configuration,
/// with a 10 s connect timeout unless the URL sets one.
pub fn parse_url(url: &str) -> Result<postgres::Config, BadUrl> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| BadUrl(e.to_string()))?;
    if config.get_hosts().is_empty() {
        return Err(BadUrl("it names no host".into()));
    }
    if config.get_dbname().is_none() {
        return Err(BadUrl("it names no database".into()));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("fabmeter-collector");
    }
    Ok(config)
}

impl PgLedger {
    /// Connects to the database of `url`, applies pending migrations (once, whichever collector
    /// comes first) and serves `site`. `badges` maps badge hashes to member ids.
    pub fn open(
        url: &str,
        site: &Id,
        badges: HashMap<String, String>,
    ) -> Result<Self, LedgerError> {
        PgLedger::on(&PgConnection::connect(url)?, site, badges)
    }

    /// The ledger of `site` on a connection shared with other sites' ledgers.
    pub fn on(
        conn: &Arc<PgConnection>,
        site: &Id,
        badges: HashMap<String, String>,
    ) -> Result<Self, LedgerError> {
        let mut badges = badges;
        conn.with_client(|client, cache| {
            privacy::add_erased_badges(&mut Pg { client, cache }, site.as_str(), &mut badges)
        })?;
        Ok(PgLedger {
            conn: conn.clone(),
            site: site.as_str().to_owned(),
            badges,
        })
    }

    /// The connection this ledger runs on.
    pub fn connection(&self) -> &Arc<PgConnection> {
        &self.conn
    }

    /// The site it serves.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The schema version of the database.
    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        self.conn.with_client(|c, _| {
            Ok(c.query_one("SELECT version FROM fabmeter_schema", &[])?
                .try_get(0)?)
        })
    }
}

fn migrate(client: &mut postgres::Client) -> Result<(), LedgerError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS fabmeter_schema (version BIGINT NOT NULL)")?;
    let current: i64 = match tx.query_opt("SELECT version FROM fabmeter_schema", &[])? {
        Some(r) => r.try_get(0)?,
        None => {
            tx.execute("INSERT INTO fabmeter_schema (version) VALUES (0)", &[])?;
            0
        }
    };
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
        tx.batch_execute(sql)?;
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.execute("UPDATE fabmeter_schema SET version = $1", &[&version])?;
        tracing::info!(version, "PostgreSQL ledger schema migrated");
    }
    tx.commit()?;
    Ok(())
}

impl Engine for PgLedger {
    fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Db, &Ctx<'_>) -> Result<(T, End), LedgerError>,
    ) -> Result<T, LedgerError> {
        // One writer per site at a time (see the module's doc).
        self.conn
            .transaction_all(&[&*self], |db, ctxs| match ctxs.first() {
                Some(ctx) => f(db, ctx),
                None => Err(LedgerError::Column("a write without its site".into())),
            })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Db, &str) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.conn
            .with_client(|client, cache| f(&mut Pg { client, cache }, &self.site))
    }

    fn snapshot<T>(
        &self,
        f: impl FnOnce(&mut dyn Db, &Ctx<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.conn.with_client(|client, cache| {
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let ctx = Ctx {
                site: &self.site,
                badges: &self.badges,
                full_session_recompute: false,
            };
            let out = f(
                &mut Pg {
                    client: &mut tx,
                    cache,
                },
                &ctx,
            )?;
            tx.commit()?;
            Ok(out)
        })
    }
}
