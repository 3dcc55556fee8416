//! A month of many busy sites on one PostgreSQL ledger, then invoiced by one
//! `fabmeter-collector invoice` on a network file serving them all (docs/BENCHMARKS.md
//! "Invoicing a month of a network").
//!
//! Starts a private PostgreSQL cluster, writes every site's sessions straight through the ledger
//! API (`PgConnection::commit_sites`, as the network collectors do, not through MQTT) from
//! several writer threads, each on its own connection, then runs the invoice command under GNU
//! time (elapsed, peak RSS) and checks it issued one invoice per member who used a machine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use fabmeter_collector::ledger::{Ledger, PgConnection, PgLedger, Record, SiteBatch};
use fabmeter_e2e::Postgres;
use fabmeter_protocol::Id;

use crate::billing::{machine_infos, machine_records, site_toml};
use crate::load_average;
use crate::workload::badge;

/// `network-month` options.
#[derive(clap::Args)]
pub struct Args {
    /// Sites.
    #[arg(long, default_value_t = 500)]
    sites: usize,
    /// Machines per site.
    #[arg(long, default_value_t = 50)]
    machines: usize,
    /// Members per site.
    #[arg(long, default_value_t = 300)]
    members: usize,
    /// Sessions per site over the month (41,700: the busy workshop of `billing-ledger`, 500,000
    /// sessions a year).
    #[arg(long, default_value_t = 41_700)]
    sessions: usize,
    /// Writer threads, each with its own PostgreSQL connection and its share of the sites.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Records of one site per commit.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// The collector binary (a release build).
    #[arg(long, default_value = "target/release/fabmeter-collector")]
    collector_bin: PathBuf,
}

/// 2025-11-01T00:00:00Z: the month invoiced is 2025-11.
const FROM_MS: u64 = 1_761_955_200_000;
/// The sessions are spread over 29 days, so that the last ends in November in Paris too.
const SPAN_MS: u64 = 29 * 86_400_000;
const PERIOD: &str = "2025-11";

fn site_id(i: usize) -> String {
    format!("s{i:03}")
}

/// Writes the month, invoices it, prints the figures as table rows.
pub fn run(a: &Args) -> anyhow::Result<()> {
    if a.sites == 0 || a.machines == 0 || a.members == 0 || a.writers == 0 || a.batch == 0 {
        bail!("--sites, --machines, --members, --writers and --batch must be at least 1");
    }
    let pg = Postgres::start().context("starting PostgreSQL")?;
    let url = pg.create_database("month").context("createdb")?;
    let dir = tempfile::tempdir()?;
    let sites_dir = dir.path().join("sites");
    std::fs::create_dir(&sites_dir)?;
    let machines: Vec<String> = (1..=a.machines).map(|i| format!("m-{i:03}")).collect();
    let sites: Vec<String> = (1..=a.sites).map(site_id).collect();
    for s in &sites {
        std::fs::write(
            sites_dir.join(format!("{s}.toml")),
            site_toml(s, None, &machines, a.members),
        )?;
    }
    let per_machine = a.sessions / a.machines;
    let started = Instant::now();
    let written = std::thread::scope(|scope| -> anyhow::Result<usize> {
        let handles: Vec<_> = (0..a.writers)
            .map(|w| {
                let mine: Vec<&String> = sites.iter().skip(w).step_by(a.writers).collect();
                let (url, machines) = (&url, &machines);
                scope.spawn(move || write_sites(url, &mine, machines, per_machine, a))
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h
                .join()
                .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
        }
        Ok(total)
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "| writing the month: {} sites x {} sessions ({written} events) | {secs:.1} s, {:.0} events/s through PgConnection::commit_sites, {} writers | load {} |",
        a.sites,
        per_machine * a.machines,
        written as f64 / secs,
        a.writers,
        load_average()
    );

    let (issued, timing) = crate::network::invoice_all(
        dir.path(),
        "mqtt://127.0.0.1:1",
        &url,
        &a.collector_bin,
        PERIOD,
    )?;
    // Every member of every site used a machine this month (the generator rotates them).
    let expected = a.sites * a.members.min(per_machine * a.machines);
    println!(
        "| invoicing {PERIOD} of {} sites ({} sessions) | {issued} invoices (expected {expected}), {timing} peak RSS | load {} |",
        a.sites,
        per_machine * a.machines * a.sites,
        load_average()
    );
    if issued != expected {
        bail!("{issued} invoices issued, {expected} expected");
    }
    drop(pg);
    Ok(())
}

/// One writer: registers the machines of its sites and commits their sessions, `a.batch` records
/// of each of a few sites per transaction. Returns the events written.
fn write_sites(
    url: &str,
    sites: &[&String],
    machines: &[String],
    per_machine: usize,
    a: &Args,
) -> anyhow::Result<usize> {
    let conn: Arc<PgConnection> = PgConnection::connect(url)?;
    let badges: HashMap<String, String> = (1..=a.members)
        .map(|i| (badge(i).to_string(), format!("member-{i}")))
        .collect();
    let infos = machine_infos(machines);
    let mut written = 0;
    for site in sites {
        let id = Id::new(site.as_str()).map_err(|e| anyhow::anyhow!("site id: {e:?}"))?;
        let mut ledger = PgLedger::on(&conn, &id, badges.clone())?;
        ledger.register_machines(&infos, FROM_MS)?;
        let mut records: Vec<Record> = Vec::with_capacity(per_machine * machines.len() * 2);
        for (mi, m) in machines.iter().enumerate() {
            records.extend(machine_records(
                mi,
                m,
                per_machine,
                FROM_MS,
                SPAN_MS,
                a.members,
            )?);
        }
        for chunk in records.chunks(a.batch) {
            let done = conn.commit_sites(
                &[SiteBatch {
                    ledger: &ledger,
                    register: &[],
                    records: chunk,
                }],
                FROM_MS + SPAN_MS,
            )?;
            written += done.iter().map(Vec::len).sum::<usize>();
        }
    }
    Ok(written)
}
