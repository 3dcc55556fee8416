//! `counters`: a year of state changes of a workshop's machines written into a SQLite ledger
//! through `Ledger::commit`, then the read a maintenance evaluation makes for each machine
//! (`Ledger::counters`: each boot's time per state, kept in `boots` at commit) timed against the
//! per-event sum it replaced (every state event of the machine, `LEAD` over each boot), both on
//! the same file in the same run. The two must give the same busy and idle time.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;
use fabmeter_collector::ledger::{Ledger, Record, SqliteLedger};
use fabmeter_protocol::message::{EventBody, MachineState};
use fabmeter_protocol::Id;

use crate::billing::{machine_infos, record};
use crate::median;

/// `counters` options.
#[derive(clap::Args)]
pub struct Args {
    /// Machines.
    #[arg(long, default_value_t = 20)]
    machines: usize,
    /// Days of history; each machine's device boots once a day.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// State changes per machine and day (busy and idle in turn).
    #[arg(long, default_value_t = 200)]
    changes_per_day: u32,
    /// Timed rounds of reading every machine's counters, each way.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

const SITE: &str = "bench";
const DAY_MS: u64 = 86_400_000;
/// 2025-12-01T00:00:00Z.
const FROM_MS: u64 = 1_764_547_200_000;

/// The per-event sum the ledger computed before its boots kept their time per state.
const PER_EVENT_SQL: &str =
    "SELECT e.state, SUM(COALESCE(e.next_up, b.max_uptime_ms) - e.uptime_ms)
     FROM (SELECT boot, state, uptime_ms,
             LEAD(uptime_ms) OVER (PARTITION BY boot ORDER BY seq) AS next_up
           FROM events WHERE site=?1 AND machine=?2 AND state IS NOT NULL) e
     JOIN boots b ON b.site=?1 AND b.machine=?2 AND b.boot=e.boot
     GROUP BY e.state";

/// One machine's state changes: a boot a day, `changes` a day spread over it.
fn machine_records(m: &str, days: u32, changes: u32) -> anyhow::Result<Vec<Record>> {
    let machine = Id::new(m).map_err(|e| anyhow::anyhow!("machine id {m}: {e:?}"))?;
    let spacing = DAY_MS / u64::from(changes.max(1));
    let mut out = Vec::with_capacity((days * changes) as usize);
    for day in 0..days {
        for k in 0..changes {
            let (from, to) = if k % 2 == 0 {
                (MachineState::Idle, MachineState::Busy)
            } else {
                (MachineState::Busy, MachineState::Idle)
            };
            let uptime_ms = u64::from(k) * spacing;
            let wall = FROM_MS + u64::from(day) * DAY_MS + uptime_ms;
            let body = EventBody::State { from, to };
            out.push(record(&machine, day + 1, k + 1, uptime_ms, wall, body)?);
        }
    }
    Ok(out)
}

/// Writes the history, then times both reads; prints the figures.
pub fn run(a: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ledger.sqlite");
    let site = Id::new(SITE).map_err(|e| anyhow::anyhow!("site id: {e:?}"))?;
    let mut ledger = SqliteLedger::open(&path, &site, HashMap::new())?;
    let machines: Vec<String> = (1..=a.machines).map(|i| format!("m-{i:03}")).collect();
    ledger.register_machines(&machine_infos(&machines), FROM_MS)?;
    let started = Instant::now();
    let mut events = 0usize;
    for m in &machines {
        let records = machine_records(m, a.days, a.changes_per_day)?;
        events += records.len();
        for batch in records.chunks(1000) {
            ledger.commit(batch)?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "history: {events} state events ({} machines x {} days x {} changes, a boot a day) in {secs:.1} s ({:.0} events/s through Ledger::commit, batches of 1000); load {}",
        a.machines,
        a.days,
        a.changes_per_day,
        events as f64 / secs,
        crate::load_average()
    );

    let conn = rusqlite::Connection::open(&path)?;
    let mut per_event = conn.prepare(PER_EVENT_SQL)?;
    let (mut kept_ms, mut summed_ms) = (Vec::new(), Vec::new());
    for round in 0..a.rounds.max(1) {
        let t = Instant::now();
        let mut kept = Vec::with_capacity(machines.len());
        for m in &machines {
            let c = ledger.counters(m)?.context("a registered machine")?;
            kept.push((c.busy_s, c.idle_s));
        }
        kept_ms.push(t.elapsed().as_secs_f64() * 1000.0 / machines.len() as f64);
        let t = Instant::now();
        let mut summed = Vec::with_capacity(machines.len());
        for m in &machines {
            let mut by_state: HashMap<String, i64> = HashMap::new();
            let mut rows = per_event.query(rusqlite::params![SITE, m])?;
            while let Some(r) = rows.next()? {
                by_state.insert(r.get(0)?, r.get(1)?);
            }
            let s = |k: &str| u64::try_from(by_state.get(k).copied().unwrap_or(0) / 1000);
            summed.push((s("busy")?, s("idle")?));
        }
        summed_ms.push(t.elapsed().as_secs_f64() * 1000.0 / machines.len() as f64);
        anyhow::ensure!(
            kept == summed,
            "round {round}: the counters read from boots differ from the per-event sums"
        );
    }
    let (kept, summed) = (median(&kept_ms), median(&summed_ms));
    println!(
        "counters of one machine, median of {} rounds over {} machines: {kept:.3} ms from the boots' time per state, {summed:.1} ms summing every state event (baseline, same file): {:.0}x; same busy and idle time; load {}",
        a.rounds.max(1),
        a.machines,
        summed / kept.max(f64::MIN_POSITIVE),
        crate::load_average()
    );
    Ok(())
}
