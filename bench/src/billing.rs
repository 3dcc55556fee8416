//! A year of a workshop's sessions, written straight into a ledger through the ledger API (not
//! through MQTT), with the site file that invoices it (`fabmeter-collector invoice`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use fabmeter_collector::ledger::{Ledger, MachineInfo, Record, SqliteLedger};
use fabmeter_protocol::message::{EndReason, Event, EventBody};
use fabmeter_protocol::Id;

use crate::workload::badge;

/// `billing-ledger` options.
#[derive(clap::Args)]
pub struct Args {
    /// Directory for `ledger.sqlite` and `site.toml` (created; must not hold a ledger yet).
    #[arg(long)]
    dir: PathBuf,
    /// Machines.
    #[arg(long, default_value_t = 50)]
    machines: usize,
    /// Members.
    #[arg(long, default_value_t = 300)]
    members: usize,
    /// Sessions over the year, spread evenly over the machines.
    #[arg(long, default_value_t = 500_000)]
    sessions: usize,
    /// First day of the year, unix ms (default 2025-12-01T00:00:00Z, so that the twelve months
    /// 2025-12 ... 2026-11 are all closed on 2026-12-01).
    #[arg(long, default_value_t = 1_764_547_200_000)]
    from_ms: u64,
}

const SITE: &str = "bench";
const YEAR_MS: u64 = 365 * 86_400_000;
/// Events per boot before the simulated device reboots.
const EVENTS_PER_BOOT: u32 = 2_000;

/// Writes the ledger and the site file, and prints how long it took.
pub fn run(a: &Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir)?;
    let ledger_path = a.dir.join("ledger.sqlite");
    anyhow::ensure!(
        !ledger_path.exists(),
        "{} exists: give an empty --dir",
        ledger_path.display()
    );
    let machines: Vec<String> = (1..=a.machines).map(|i| format!("m-{i:03}")).collect();
    let badges: HashMap<String, String> = (1..=a.members)
        .map(|i| (badge(i).to_string(), format!("member-{i}")))
        .collect();
    std::fs::write(
        a.dir.join("site.toml"),
        site_toml(SITE, Some(&ledger_path), &machines, a.members),
    )?;
    let site = Id::new(SITE).map_err(|e| anyhow::anyhow!("site id: {e:?}"))?;
    let mut ledger = SqliteLedger::open(&ledger_path, &site, badges)?;
    ledger.register_machines(&machine_infos(&machines), a.from_ms)?;

    let started = Instant::now();
    let per_machine = a.sessions / a.machines.max(1);
    let mut events = 0usize;
    for (mi, m) in machines.iter().enumerate() {
        let records = machine_records(mi, m, per_machine, a.from_ms, YEAR_MS, a.members)?;
        events += records.len();
        for batch in records.chunks(1000) {
            ledger.commit(batch)?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ledger: {} sessions ({events} events) of {} machines and {} members in {secs:.1} s ({:.0} events/s through Ledger::commit, batches of 1000); {}",
        per_machine * a.machines,
        a.machines,
        a.members,
        events as f64 / secs,
        ledger_path.display()
    );
    Ok(())
}

/// The records of machine number `mi` (id `m`): `per_machine` sessions of one member each
/// (a start and an end, 300 to 3,299 s busy and 60 s idle), spread evenly over `span_ms` from
/// `from_ms`, the device rebooting every [`EVENTS_PER_BOOT`] events.
pub fn machine_records(
    mi: usize,
    m: &str,
    per_machine: usize,
    from_ms: u64,
    span_ms: u64,
    members: usize,
) -> anyhow::Result<Vec<Record>> {
    let machine = Id::new(m).map_err(|e| anyhow::anyhow!("machine id {m}: {e:?}"))?;
    let spacing = span_ms / per_machine.max(1) as u64;
    let (mut boot, mut seq) = (1u32, 0u32);
    let mut uptime_base = 0u64;
    let mut out = Vec::with_capacity(per_machine * 2);
    for s in 0..per_machine {
        if seq + 2 > EVENTS_PER_BOOT {
            boot += 1;
            seq = 0;
            uptime_base = s as u64 * spacing;
        }
        let start_ms = from_ms + s as u64 * spacing + (mi as u64 * 7_919) % 600_000;
        let busy_s = 300 + ((s * 37 + mi * 13) % 3_000) as u32;
        let member = (s * 11 + mi * 5) % members.max(1) + 1;
        let b = badge(member);
        let up = |wall: u64| wall - from_ms - uptime_base;
        seq += 1;
        let session = seq;
        for (wall, body) in [
            (start_ms, EventBody::SessionStarted { badge: b }),
            (
                start_ms + u64::from(busy_s + 60) * 1000,
                EventBody::SessionEnded {
                    session,
                    badge: b,
                    busy_s,
                    idle_s: 60,
                    energy_wh: busy_s / 30,
                    reason: EndReason::BadgeOut,
                },
            ),
        ] {
            if !matches!(body, EventBody::SessionStarted { .. }) {
                seq += 1;
            }
            out.push(record(&machine, boot, seq, up(wall), wall, body)?);
        }
    }
    Ok(out)
}

/// An event of a device with a clock, sent and received at its wall time `wall`.
pub fn record(
    machine: &Id,
    boot: u32,
    seq: u32,
    uptime_ms: u64,
    wall: u64,
    body: EventBody,
) -> anyhow::Result<Record> {
    let ev = Event {
        v: 1,
        box_id: None,
        boot,
        seq,
        uptime_ms,
        sent_uptime_ms: uptime_ms,
        ts: Some(wall),
        event: body,
    };
    let payload =
        fabmeter_protocol::encode_to_vec(&ev).context("the generator makes valid events")?;
    Ok(Record::Event {
        machine: machine.clone(),
        event: ev,
        payload,
        received_ms: wall,
    })
}

/// The machine infos of `machines` (kinds alternating laser and 3D printer).
pub fn machine_infos(machines: &[String]) -> Vec<MachineInfo> {
    machines
        .iter()
        .enumerate()
        .map(|(i, m)| MachineInfo {
            id: m.clone(),
            name: m.clone(),
            kind: kind(i).into(),
            source: "config".into(),
        })
        .collect()
}

fn kind(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "laser"
    } else {
        "printer-3d"
    }
}

/// The site file of site `site` (`ledger`: its SQLite file; `None` for a site file of a network,
/// whose network file names the ledger).
pub fn site_toml(
    site: &str,
    ledger: Option<&std::path::Path>,
    machines: &[String],
    members: usize,
) -> String {
    let ledger = ledger.map_or_else(String::new, |p| {
        format!(
            "[ledger]\npath = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
            p.display()
        )
    });
    let mut t = format!(
        r#"[site]
id = "{site}"
name = "Atelier {site}"

{ledger}
# More members than a device allow-list holds (128): no device configs for this site.
[devices]
publish_configs = false

[billing]
invoice_prefix = "BEN"
timezone = "Europe/Paris"
vat_rate = "20"
default_plan = "visitor"

[billing.seller]
name = "Bench workshop"
address = "1 rue du Banc"

[[billing.tariffs]]
name = "laser"
valid_from = "2025-01-01"
busy_per_min = "0.50"
idle_per_min = "0"
increment_min = 1
minimum = "2.00"

[[billing.tariffs]]
name = "printer-3d"
valid_from = "2025-01-01"
busy_per_min = "0.02"
idle_per_min = "0"
increment_min = 15

[[billing.plans]]
name = "resident"
discount_percent = 20
allowances = [{{ tariff = "laser", minutes = 600 }}]

[[billing.plans]]
name = "visitor"
"#
    );
    for (i, m) in machines.iter().enumerate() {
        let k = kind(i);
        let _ = write!(
            t,
            "\n[[machines]]\nid = \"{m}\"\nname = \"{m}\"\nkind = \"{k}\"\ntariff = \"{k}\"\n"
        );
    }
    for i in 1..=members {
        let _ = write!(
            t,
            "\n[[members]]\nid = \"member-{i}\"\nname = \"Member {i}\"\nbadges = [\"{}\"]\n",
            badge(i)
        );
        if i.is_multiple_of(3) {
            let _ = write!(
                t,
                "\n[[billing.memberships]]\nmember = \"member-{i}\"\nplan = \"resident\"\nvalid_from = \"2025-01-01\"\n"
            );
        }
    }
    t
}
