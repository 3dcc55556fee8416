//! The ledger: the system of record. Everything members pay for is derived from what it holds.
//!
//! One narrow interface, [`Ledger`] (ingest, reads, maintenance, invoicing, personal data), with
//! two implementations running the same logic: a SQLite file per site ([`SqliteLedger`]) and a
//! shared PostgreSQL database ([`PgLedger`]) for several sites and collectors; [`AnyLedger`] is
//! whichever the configuration names.
//! Nothing outside this module assumes SQLite, and nothing assumes this process is the only writer:
//! per-machine state is derived from stored events on every read, or kept beside them in the
//! transaction that stores them (a boot's time per state, in `boots`).
//!
//! Invariants:
//! - each event key (site, machine, boot, seq) is stored once; a replay is a no-op reported as
//!   [`Outcome::Duplicate`]; another event under a stored key is a conflict ([`Outcome::Conflict`]):
//!   the first copy wins and the other is a dead letter, so a key is never counted twice;
//! - a batch is one transaction: when [`Ledger::commit`] returns, every record of the batch is
//!   durable (WAL, `synchronous=FULL`), so the caller may acknowledge the MQTT messages;
//! - bad input is kept as a dead letter with its reason, in the same transaction.

/// The SQL that folds each boot's state events into its `boots` row (`busy_ms`, `idle_ms`: the
/// time between a state event and the boot's next one, summed per state; `last_state*`: the
/// boot's last state event, whose time runs to the boot's highest uptime), for every boot at
/// once: the schema migration that added the columns (SQLite 10, PostgreSQL 4) runs it on what
/// was stored before; commits then keep the columns up to date (`ops::fold_boot_states`).
macro_rules! backfill_boot_states {
    () => {
        "UPDATE boots SET busy_ms = s.busy_ms, idle_ms = s.idle_ms, last_state = s.last_state,
            last_state_seq = s.last_seq, last_state_up = s.last_up
         FROM (SELECT site, machine, boot,
                 CAST(SUM(CASE WHEN state = 'busy' THEN COALESCE(next_up - uptime_ms, 0)
                     ELSE 0 END) AS BIGINT) AS busy_ms,
                 CAST(SUM(CASE WHEN state = 'idle' THEN COALESCE(next_up - uptime_ms, 0)
                     ELSE 0 END) AS BIGINT) AS idle_ms,
                 MAX(CASE WHEN next_up IS NULL THEN state END) AS last_state,
                 MAX(seq) AS last_seq,
                 MAX(CASE WHEN next_up IS NULL THEN uptime_ms END) AS last_up
               FROM (SELECT site, machine, boot, seq, state, uptime_ms,
                       LEAD(uptime_ms) OVER (PARTITION BY site, machine, boot ORDER BY seq)
                         AS next_up
                     FROM events WHERE state IS NOT NULL) e
               GROUP BY site, machine, boot) s
         WHERE boots.site = s.site AND boots.machine = s.machine AND boots.boot = s.boot;"
    };
}

mod ops;
mod pg;
mod sql;
mod sqlite;

pub use ops::invoices::{AuditDifference, BillingError, IssueReport, MEMBER_DOCUMENTS_SQL};
pub use ops::maintenance::REFUSED_LOCKED_SQL;
pub use ops::privacy::{ByMachineMonth, ErasureReport, PurgeReport, PurgedCounts, StoredEvent};
pub use pg::{parse_url as parse_postgres_url, BadUrl, PgConnection, PgLedger, SiteBatch};
pub use sqlite::SqliteLedger;

/// A ledger of either engine, as `[ledger]` selects it: PostgreSQL when `url` is set, else the
/// SQLite file at `path`.
#[derive(Debug)]
pub enum AnyLedger {
    /// The SQLite file of one site.
    Sqlite(SqliteLedger),
    /// A shared PostgreSQL database (boxed: its client configuration is large).
    Postgres(Box<PgLedger>),
}

impl AnyLedger {
    /// Opens the ledger `config` names for `site` (migrating its schema).
    pub fn open(
        config: &crate::config::LedgerConfig,
        site: &Id,
        badges: std::collections::HashMap<String, String>,
    ) -> Result<AnyLedger, LedgerError> {
        Ok(match &config.url {
            Some(url) => AnyLedger::Postgres(Box::new(PgLedger::open(url, site, badges)?)),
            None => AnyLedger::Sqlite(SqliteLedger::open(&config.path, site, badges)?),
        })
    }
}

impl ops::Engine for AnyLedger {
    fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut dyn sql::Db, &ops::Ctx<'_>) -> Result<(T, ops::End), LedgerError>,
    ) -> Result<T, LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.transaction(f),
            AnyLedger::Postgres(l) => l.transaction(f),
        }
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn sql::Db, &str) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.read(f),
            AnyLedger::Postgres(l) => l.read(f),
        }
    }

    fn snapshot<T>(
        &self,
        f: impl FnOnce(&mut dyn sql::Db, &ops::Ctx<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        match self {
            AnyLedger::Sqlite(l) => l.snapshot(f),
            AnyLedger::Postgres(l) => l.snapshot(f),
        }
    }
}

use fabmeter_protocol::message::{Event, Status};
use fabmeter_protocol::Id;
use serde::Serialize;

use crate::billing::invoice::{Billing, Invoice};
use crate::billing::Period;

/// Why the ledger failed. Always our side (disk, database), never the input: bad input becomes a
/// dead letter, not an error.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database refused an operation.
    #[error("ledger database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL refused an operation or cannot be reached.
    #[error("PostgreSQL ledger error: {}", pg_detail(.0))]
    Postgres(#[from] postgres::Error),
    /// `ledger.url` cannot be used.
    #[error(transparent)]
    BadUrl(#[from] pg::BadUrl),
    /// A stored value is not of the type the ledger expects (a schema from another build?).
    #[error("ledger value: {0}")]
    Column(String),
    /// The ledger file or its directory could not be created or opened.
    #[error("cannot open the ledger at {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds a schema newer than this build knows.
    #[error(
        "ledger schema version {found} is newer than this build's {supported}; upgrade fabmeter"
    )]
    SchemaTooNew {
        /// Version found in the file.
        found: i64,
        /// Latest version this build knows.
        supported: i64,
    },
}

/// A PostgreSQL error with the server's message, detail and hint when there is one.
fn pg_detail(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => e.to_string(),
    }
}

/// One thing to record, already decoded and checked by the ingest.
#[derive(Debug, Clone)]
pub enum Record {
    /// A device event.
    Event {
        /// The machine of the topic.
        machine: Id,
        /// The decoded event.
        event: Event,
        /// The payload as received.
        payload: Vec<u8>,
        /// Collector wall time at reception, unix ms.
        received_ms: u64,
    },
    /// A birth or last will.
    Status {
        /// The machine of the topic.
        machine: Id,
        /// The decoded status.
        status: Status,
        /// Collector wall time at reception, unix ms.
        received_ms: u64,
    },
    /// Input that was refused, kept with its reason.
    DeadLetter {
        /// The topic, as received.
        topic: String,
        /// The payload, truncated to the channel limit.
        payload: Vec<u8>,
        /// Stable reason (metrics label).
        reason: String,
        /// Human-readable detail naming the problem.
        detail: String,
        /// Collector wall time at reception, unix ms.
        received_ms: u64,
    },
}

/// What became of one record, with the wall time the ledger assigned to an accepted event (its
/// `ts`, or its boot's anchor plus its uptime: see `fabmeter_protocol::clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// What became of it.
    pub outcome: Outcome,
    /// Wall time of an accepted or duplicate event, unix ms.
    pub wall_ms: Option<u64>,
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// New, stored and applied.
    Accepted,
    /// Already stored (same key): nothing changed.
    Duplicate,
    /// Stored as a dead letter.
    DeadLettered,
    /// An event whose key is already stored with other content (not a resend): the first copy
    /// wins, this one is kept as a dead letter with reason [`CONFLICT`] and never applied. The
    /// caller still acknowledges it.
    Conflict,
}

/// The dead-letter reason of an event whose key is already stored with other content.
pub const CONFLICT: &str = "conflict";

/// A machine as the site knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineInfo {
    /// Machine id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// `config` or `auto` (registered when it first published).
    pub source: String,
}

/// The live view of one machine, derived from the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineView {
    /// Machine id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// `off`, `idle`, `busy`, or `offline` (device gone) or `unknown` (never heard).
    pub state: String,
    /// Wall time since when, unix ms.
    pub since_ms: Option<u64>,
    /// Member of the open session, if any (or the badge hash when the badge is unknown).
    pub member: Option<String>,
    /// Whether the device is connected (its last status).
    pub online: bool,
    /// Highest boot seen.
    pub boot: Option<u32>,
    /// Firmware version from the last birth.
    pub fw: Option<String>,
}

/// Use of a site's machines over a period ([`Ledger::usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Sessions started in the period.
    pub sessions: u64,
    /// Their busy seconds.
    pub busy_s: u64,
    /// Their idle seconds.
    pub idle_s: u64,
    /// Distinct members who used a machine (unknown badges count each).
    pub members: u64,
}

/// A session, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView {
    /// Machine id.
    pub machine: String,
    /// Boot of the device during the session.
    pub boot: u32,
    /// Session id (seq of its start event).
    pub session: u32,
    /// Member id, when the badge is known.
    pub member: Option<String>,
    /// Badge hash.
    pub badge: Option<String>,
    /// Start, unix ms.
    pub start_ms: Option<u64>,
    /// End (or last progress while open), unix ms.
    pub end_ms: Option<u64>,
    /// Busy seconds.
    pub busy_s: u32,
    /// Idle seconds.
    pub idle_s: u32,
    /// Energy, Wh.
    pub energy_wh: u32,
    /// `open`, `closed` or `interrupted`.
    pub status: String,
    /// End reason.
    pub reason: Option<String>,
    /// Seqs of the events it came from: its start and the last event used (same boot).
    pub first_seq: u32,
    /// See `first_seq`.
    pub last_seq: u32,
}

/// Filter for [`Ledger::sessions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    /// Only this machine.
    pub machine: Option<String>,
    /// Only this member.
    pub member: Option<String>,
    /// Sessions starting at or after, unix ms.
    pub from_ms: Option<u64>,
    /// Sessions starting before, unix ms.
    pub to_ms: Option<u64>,
    /// At most this many, newest first.
    pub limit: Option<u32>,
}

/// Lifetime counters of a machine (not of the device attached to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineCounters {
    /// Machine id.
    pub machine: String,
    /// Seconds powered (idle or busy), from state changes.
    pub on_s: u64,
    /// Seconds busy, from state changes.
    pub busy_s: u64,
    /// Seconds idle, from state changes.
    pub idle_s: u64,
    /// Sessions seen.
    pub sessions: u64,
    /// Busy seconds within sessions.
    pub session_busy_s: u64,
    /// Energy within sessions, Wh.
    pub session_energy_wh: u64,
    /// Boots of the devices that served this machine.
    pub boots: u64,
    /// Events stored.
    pub events: u64,
}

/// Sessions and busy time of one machine over a range ([`Ledger::busy_by_machine`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineBusy {
    /// Machine id.
    pub machine: String,
    /// Sessions started in the range.
    pub sessions: u64,
    /// Their busy seconds.
    pub busy_s: u64,
}

/// A dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// Reception, unix ms.
    pub received_ms: u64,
    /// Topic.
    pub topic: String,
    /// Payload, lossy UTF-8.
    pub payload: String,
    /// Stable reason.
    pub reason: String,
    /// Detail.
    pub detail: String,
}

/// A recorded service of one plan on one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceRecord {
    /// Machine id.
    pub machine: String,
    /// Plan name.
    pub plan: String,
    /// When it was recorded, unix ms.
    pub done_ms: u64,
    /// Who did it.
    pub by: String,
    /// Free text.
    pub note: String,
    /// The machine's lifetime busy seconds when it was recorded: the plan's busy hours count from
    /// here.
    pub busy_s_at: u64,
    /// What the service cost, cents excl. VAT, when given (`maintenance done --cost-cents`):
    /// counted by cost recovery (docs/COSTS.md).
    pub cost_cents: Option<u64>,
}

/// The outage source of a machine marked out of order by a person.
pub const OUT_OF_ORDER: &str = "out_of_order";

/// A downtime period of a machine: marked out of order, or locked by an overdue plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outage {
    /// Machine id.
    pub machine: String,
    /// [`OUT_OF_ORDER`] or `plan:{name}`.
    pub source: String,
    /// Why.
    pub reason: String,
    /// Who marked it.
    pub by: String,
    /// Start, unix ms.
    pub from_ms: u64,
    /// End, unix ms; `None` while the machine is still out of order.
    pub to_ms: Option<u64>,
}

/// What the ledger holds about one machine's maintenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceRecords {
    /// Lifetime counters of the machine.
    pub counters: MachineCounters,
    /// Services, oldest first.
    pub services: Vec<ServiceRecord>,
    /// Downtime periods, oldest first.
    pub outages: Vec<Outage>,
    /// When the machine was registered in the ledger, unix ms (calendar intervals start here
    /// before the first service).
    pub registered_ms: u64,
    /// Badges the device refused with `maintenance_lock`.
    pub refused_locked: u64,
}

/// Totals of the ledger's tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LedgerTotals {
    /// Stored events.
    pub events: u64,
    /// Sessions.
    pub sessions: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

/// The system of record, behind one narrow interface.
pub trait Ledger: Send {
    /// Registers (or updates) machines known from configuration.
    fn register_machines(
        &mut self,
        machines: &[MachineInfo],
        now_ms: u64,
    ) -> Result<(), LedgerError>;
    /// Stores a batch in one transaction and returns what became of each record, in order.
    fn commit(&mut self, batch: &[Record]) -> Result<Vec<Committed>, LedgerError>;
    /// Whether a machine is registered.
    fn has_machine(&self, machine: &str) -> Result<bool, LedgerError>;
    /// Live view of every registered machine.
    fn machines(&self) -> Result<Vec<MachineView>, LedgerError>;
    /// Sessions matching a filter, newest first.
    fn sessions(&self, query: &SessionQuery) -> Result<Vec<SessionView>, LedgerError>;
    /// Lifetime counters of one machine; `None` if unknown.
    fn counters(&self, machine: &str) -> Result<Option<MachineCounters>, LedgerError>;
    /// The latest dead letters, newest first.
    fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, LedgerError>;
    /// Table totals.
    fn totals(&self) -> Result<LedgerTotals, LedgerError>;
    /// Use of the site's machines by sessions starting at or after `from_ms` (the network view).
    fn usage(&self, from_ms: u64) -> Result<Usage, LedgerError>;
    /// Per machine: the sessions starting in `[from_ms, to_ms)` and their busy seconds, sorted by
    /// machine (cost recovery, docs/COSTS.md); machines without such sessions are absent.
    fn busy_by_machine(&self, from_ms: u64, to_ms: u64) -> Result<Vec<MachineBusy>, LedgerError>;
    /// The machines with an open downtime period (out of order or locked), sorted.
    fn unavailable(&self) -> Result<Vec<String>, LedgerError>;
    /// Records a service of `plan` on `machine` at `at_ms`, with the machine's busy counter then
    /// and what it cost (cents excl. VAT, optional); `None` if the machine is unknown.
    fn record_service(
        &mut self,
        machine: &str,
        plan: &str,
        by: &str,
        note: &str,
        cost_cents: Option<u64>,
        at_ms: u64,
    ) -> Result<Option<ServiceRecord>, LedgerError>;
    /// Opens a downtime period of a machine from `at_ms`: `source` is [`OUT_OF_ORDER`] (marked by
    /// a person) or `plan:{name}` (locked because the plan is overdue). `false` if one of this
    /// source is already open (nothing changes).
    fn open_outage(
        &mut self,
        machine: &str,
        source: &str,
        reason: &str,
        by: &str,
        at_ms: u64,
    ) -> Result<bool, LedgerError>;
    /// Closes the open downtime period of this source at `at_ms`; `false` if none was open.
    fn close_outage(
        &mut self,
        machine: &str,
        source: &str,
        at_ms: u64,
    ) -> Result<bool, LedgerError>;
    /// Counters, services and outages of a machine; `None` if unknown.
    fn maintenance_records(&self, machine: &str)
        -> Result<Option<MaintenanceRecords>, LedgerError>;
    /// The config hash (16 hex digits) the machine's device reported in its latest birth, if any.
    fn reported_config_hash(&self, machine: &str) -> Result<Option<String>, LedgerError>;
    /// The last alerted state of every (machine, plan), so that a restart does not alert again.
    fn alert_states(&self) -> Result<Vec<(String, String, String)>, LedgerError>;
    /// Stores the last alerted state of a (machine, plan).
    fn set_alert_state(
        &mut self,
        machine: &str,
        plan: &str,
        state: &str,
        at_ms: u64,
    ) -> Result<(), LedgerError>;

    /// Issues the invoices of `period` (see docs/BILLING.md "Invoices"): one per member with a
    /// non-zero total, with the member's late sessions. `now_ms` is the issue instant; the period
    /// must be over. Running a period again issues nothing. With `dry_run`, nothing is stored.
    /// Numbers (gapless per site and year) and the hash chain are read and written in one
    /// transaction, so concurrent issuers of one site take turns.
    fn issue_invoices(
        &mut self,
        billing: &Billing,
        period: Period,
        now_ms: u64,
        dry_run: bool,
    ) -> Result<IssueReport, BillingError>;
    /// Issues a credit note cancelling invoice `number` (every line negated); its sessions are
    /// released and go, marked late, on the member's next invoice.
    fn credit_note(
        &mut self,
        billing: &Billing,
        number: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<Invoice, BillingError>;
    /// Every issued document, in chain order.
    fn documents(&self) -> Result<Vec<Invoice>, BillingError>;
    /// How many documents (invoices and credit notes) were issued, read without reading them.
    fn document_count(&self) -> Result<u64, BillingError>;
    /// The documents of `period` (its invoices and the credit notes cancelling them), in chain
    /// order; reads only those (index `invoices_period`), not the whole history.
    fn period_documents(&self, period: Period) -> Result<Vec<Invoice>, BillingError>;
    /// The documents issued to `member` (its invoices and its credit notes), in chain order;
    /// reads only those (index `invoices_member`), not the site's whole history.
    fn member_documents(&self, member: &str) -> Result<Vec<Invoice>, BillingError>;
    /// Recomputes every issued document from the raw events stored in the ledger (each session
    /// folded again, not read from the derived `sessions` table), checks the hash chain and the
    /// numbering, and compares the derived session rows with the events; returns each difference
    /// (none: all is well). Reads one consistent snapshot, streamed: one boot's events and one
    /// chunk of documents at a time (`ledger/audit.rs`).
    fn audit(&self, billing: &Billing) -> Result<Vec<AuditDifference>, BillingError>;
    /// The stored events of one session (its start, progress and end), in order.
    fn session_events(
        &self,
        machine: &str,
        boot: u32,
        session: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError>;
    /// Deletes, in one transaction, the personal data older than `retention_days` before
    /// `now_ms` that no billing run settled: closed sessions whose last event is older, with
    /// their raw events, and `access_denied` events. Each machine keeps a tombstone per boot (a
    /// resent deleted event stays a duplicate) and a baseline of what the sessions counted (its
    /// lifetime counters do not drop). With `dry_run`, reports and changes nothing.
    fn purge(
        &mut self,
        now_ms: u64,
        retention_days: u32,
        dry_run: bool,
    ) -> Result<PurgeReport, LedgerError>;
    /// Erases, in one transaction, a member's personal data that no invoice needs: their closed
    /// sessions no billing run settled, with the raw events, and the `access_denied` events of
    /// `badges`; records the erasure (who, when, why, counts) in the append-only `erasures`
    /// table. Settled sessions and their events stay for the invoices (10 years), and their
    /// badges are kept in `erased_badges` so they remain attributed once the member has left
    /// the site file. With an open session nothing is done (`open_sessions` says how many).
    fn erase_member(
        &mut self,
        member: &str,
        badges: &[String],
        by: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<ErasureReport, LedgerError>;
}

#[cfg(test)]
mod tests;
