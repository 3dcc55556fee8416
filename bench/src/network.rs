//! A network of sites through several collector processes on one PostgreSQL ledger
//! (docs/SCALING.md): events/s, events lost and doubled, each collector's peak RSS.
//!
//! Starts a private PostgreSQL cluster and a Mosquitto, writes one site file per site (its
//! machines and members) and one network collector file per collector, starts the collectors
//! (`fabmeter-collector run`, release build), publishes every site's events at QoS 1 from several
//! publishers as fast as the broker acknowledges, and waits until the ledger holds them.
//! `--mode split`: each collector serves its share of the sites (`network.sites`); `--mode
//! shared`: every collector serves every site through one MQTT shared subscription group.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fabmeter_e2e::{KillOnDrop, Mosquitto, Postgres};

use crate::load_average;
use crate::workload::{self, Msg};

/// How the collectors share the sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Each collector serves a fixed share of the sites.
    Split,
    /// Every collector serves every site, through an MQTT shared subscription.
    Shared,
}

/// `network` options.
#[derive(clap::Args)]
pub struct Args {
    /// Sites.
    #[arg(long, default_value_t = 500)]
    sites: usize,
    /// Machines per site.
    #[arg(long, default_value_t = 50)]
    machines: usize,
    /// Members per site.
    #[arg(long, default_value_t = 50)]
    members: usize,
    /// Events per machine (8 make one session with its state changes).
    #[arg(long, default_value_t = 16)]
    events_per_machine: usize,
    /// Collector processes.
    #[arg(long, default_value_t = 3)]
    collectors: usize,
    /// Publishing MQTT clients.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// How the collectors share the sites.
    #[arg(long, value_enum, default_value = "split")]
    mode: Mode,
    /// The collector binary (a release build).
    #[arg(long, default_value = "target/release/fabmeter-collector")]
    collector_bin: PathBuf,
    /// The collectors' `ledger.batch_max`.
    #[arg(long, default_value_t = 2000)]
    batch_max: usize,
    /// Mosquitto `max_inflight_messages`: QoS 1 messages in flight to each collector, i.e. the
    /// largest batch a collector can commit (Mosquitto's default is 20).
    #[arg(long, default_value_t = 1000)]
    broker_inflight: u32,
    /// Then invoice the workload's month for every site (`fabmeter-collector invoice` on a
    /// network file serving them all, under GNU time: elapsed and peak RSS).
    #[arg(long)]
    invoice: bool,
    /// Longest wait for the ledger to hold every event, seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
}

fn site_id(i: usize) -> String {
    format!("site-{i:04}")
}

/// Every site bills the same way: 0.50 EUR a busy minute on its lasers, members on no plan.
const BILLING: &str = r#"
[billing]
invoice_prefix = "INV"
timezone = "Europe/Paris"
vat_rate = "20"
default_plan = "visitor"

[billing.seller]
name = "Atelier SAS"
address = "1 rue de l'Atelier\n69001 Lyon"
siret = "123 456 789 00012"
vat_id = "FR12123456789"

[[billing.tariffs]]
name = "laser"
valid_from = "2020-01-01"
busy_per_min = "0.50"
idle_per_min = "0"
increment_min = 1
label = "Laser"

[[billing.plans]]
name = "visitor"
"#;

fn write_site(
    dir: &Path,
    site: &str,
    machines: &[String],
    members: usize,
    billing: bool,
) -> anyhow::Result<()> {
    // The simulated devices take no retained config: the collectors publish none (25,000
    // retained configs at start are measured apart, docs/BENCHMARKS.md "Network").
    let mut t = format!(
        "[site]\nid = \"{site}\"\nname = \"Atelier {site}\"\n\n[devices]\npublish_configs = false\n"
    );
    for m in machines {
        t.push_str(&format!("\n[[machines]]\nid = \"{m}\"\nkind = \"laser\"\n"));
    }
    for i in 1..=members {
        t.push_str(&format!(
            "\n[[members]]\nid = \"member-{i}\"\nname = \"Member {i}\"\nbadges = [\"{}\"]\n",
            workload::badge(i)
        ));
    }
    if billing {
        t.push_str(BILLING);
    }
    std::fs::write(dir.join(format!("{site}.toml")), t).context("writing a site file")
}

/// A running collector process.
struct Proc {
    child: KillOnDrop,
    port: u16,
    name: String,
}

impl Proc {
    fn start(bin: &Path, file: &Path, name: &str) -> anyhow::Result<Proc> {
        let mut child = std::process::Command::new(bin)
            .args(["run", "--config"])
            .arg(file)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it: cargo build --release -p fabmeter-collector)",
                    bin.display()
                )
            })?;
        let stdout = child.stdout.take().context("collector stdout")?;
        let child = KillOnDrop(child);
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the collector's start line")?;
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .with_context(|| format!("unexpected start line {line:?}"))?;
        Ok(Proc {
            child,
            port,
            name: name.to_owned(),
        })
    }

    fn get(&self, path: &str) -> Option<String> {
        fabmeter_e2e::http::get("127.0.0.1", self.port, path)
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.text())
    }

    fn metric(&self, name: &str) -> u64 {
        self.get("/metrics")
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .map_or(0, |v| v as u64)
    }

    /// Peak resident memory (VmHWM), MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// Runs the benchmark and prints its figures.
pub fn run(a: &Args) -> anyhow::Result<()> {
    if a.sites == 0 || a.machines == 0 || a.collectors == 0 || a.publishers == 0 {
        bail!("--sites, --machines, --collectors and --publishers must be at least 1");
    }
    let pg = Postgres::start().context("starting PostgreSQL")?;
    let url = pg.create_database("network").context("createdb")?;
    let broker = Mosquitto::builder()
        .max_queued_messages(0)
        .max_inflight_messages(a.broker_inflight)
        .start()
        .context("starting mosquitto")?;
    let dir = tempfile::tempdir()?;
    let sites_dir = dir.path().join("sites");
    std::fs::create_dir(&sites_dir)?;
    let machines = workload::machine_ids(a.machines);
    let sites: Vec<String> = (1..=a.sites).map(site_id).collect();
    for s in &sites {
        write_site(&sites_dir, s, &machines, a.members, a.invoice)?;
    }
    let mut procs = Vec::new();
    let started = Instant::now();
    for c in 0..a.collectors {
        let name = format!("c{}", c + 1);
        let (served, extra) = match a.mode {
            Mode::Split => (
                sites
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % a.collectors == c)
                    .map(|(_, s)| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                String::new(),
            ),
            Mode::Shared => (String::new(), "shared_group = \"fm\"\n".to_owned()),
        };
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[network]\nname = \"{name}\"\nsites_dir = \"sites\"\nsites = [{served}]\n\n\
                 [mqtt]\nurl = \"{}\"\n{extra}\n[ledger]\nurl = \"{url}\"\nbatch_max = {}\n\n\
                 [http]\nlisten = \"127.0.0.1:0\"\n",
                broker.url(),
                a.batch_max
            ),
        )?;
        procs.push(Proc::start(&a.collector_bin, &file, &name)?);
    }
    for p in &procs {
        let deadline = Instant::now() + Duration::from_secs(300);
        while p.get("/readyz").is_none() {
            if Instant::now() > deadline {
                bail!("collector {} not ready in 300 s", p.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let start_s = started.elapsed().as_secs_f64();

    // Every machine of every site on one publisher; the publishers interleave their machines.
    let mut work: Vec<Vec<Msg>> = vec![Vec::new(); a.publishers];
    let mut per_machine = Vec::with_capacity(a.sites * a.machines);
    for s in &sites {
        for (i, m) in machines.iter().enumerate() {
            per_machine.push(workload::machine_events_at(
                s,
                m,
                i,
                a.events_per_machine,
                a.members,
            ));
        }
    }
    for k in 0..a.events_per_machine {
        for (i, msgs) in per_machine.iter().enumerate() {
            if let Some(m) = msgs.get(k) {
                work[i % a.publishers].push(m.clone());
            }
        }
    }
    drop(per_machine);
    let total: usize = work.iter().map(Vec::len).sum();
    println!(
        "network: {} sites x {} machines, {} events ({} per machine), {} collectors ({:?}), {} publishers, batch_max {}, broker max_inflight_messages {}; collectors ready in {start_s:.1} s; load {}",
        a.sites,
        a.machines,
        total,
        a.events_per_machine,
        a.collectors,
        a.mode,
        a.publishers,
        a.batch_max,
        a.broker_inflight,
        load_average()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let t0 = Instant::now();
    let port = broker.port();
    let tasks: Vec<_> = work
        .into_iter()
        .enumerate()
        .map(|(i, msgs)| rt.spawn(crate::ingest::publish(port, format!("pub-{i}"), msgs, None)))
        .collect();
    let publish = std::thread::spawn(move || {
        rt.block_on(async {
            for t in tasks {
                t.await.context("publisher task")??;
            }
            anyhow::Ok(Instant::now())
        })
    });
    let deadline = t0 + Duration::from_secs(a.timeout_s);
    let mut accepted;
    loop {
        accepted = procs
            .iter()
            .map(|p| p.metric("fabmeter_accepted_total"))
            .sum::<u64>();
        if accepted >= total as u64 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let all_in = t0.elapsed();
    let published = publish
        .join()
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    let publish_s = published.duration_since(t0).as_secs_f64();
    let stored: u64 = pg
        .psql("network", "SELECT COUNT(*) FROM events")
        .context("counting events")?
        .trim()
        .parse()
        .context("event count")?;
    let sessions: u64 = pg
        .psql(
            "network",
            "SELECT COUNT(*) FROM sessions WHERE status = 'closed'",
        )
        .context("counting sessions")?
        .trim()
        .parse()
        .context("session count")?;
    let duplicates: u64 = procs
        .iter()
        .map(|p| p.metric("fabmeter_duplicate_total"))
        .sum();
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| events committed / published | {stored} / {total} (lost {}, doubled {}) |",
        (total as u64).saturating_sub(stored),
        accepted.saturating_sub(stored)
    );
    println!("| closed sessions | {sessions} |");
    println!("| redelivered duplicates refused | {duplicates} |");
    println!(
        "| publish → every event committed | {:.1} s: **{:.0} events/s** (publishers done at {publish_s:.1} s) |",
        all_in.as_secs_f64(),
        stored as f64 / all_in.as_secs_f64().max(1e-9)
    );
    for p in &procs {
        println!(
            "| collector {} | accepted {}, commits {}, peak RSS {:.0} MiB |",
            p.name,
            p.metric("fabmeter_accepted_total"),
            p.metric("fabmeter_commits_total"),
            p.peak_rss_mib()
        );
    }
    println!("| load average at the end | {} |", load_average());
    if stored != total as u64 {
        bail!("the ledger holds {stored} events of {total}");
    }
    drop(procs);
    if a.invoice {
        // The workload's month (workload::T0 is 2025-11-24).
        let (issued, timing) =
            invoice_all(dir.path(), &broker.url(), &url, &a.collector_bin, "2025-11")?;
        println!(
            "| invoicing the month of {} sites ({sessions} sessions) | {issued} invoices, {timing} peak RSS |",
            a.sites
        );
    }
    drop(dir);
    Ok(())
}

/// Writes `all.toml` in `dir`, a network file serving every site of `dir/sites` (for the command
/// only: no collector runs on it), and runs `fabmeter-collector invoice --period` on it under GNU
/// time. Returns the invoices issued and the time's "elapsed s peak KiB".
pub fn invoice_all(
    dir: &Path,
    mqtt_url: &str,
    ledger_url: &str,
    collector_bin: &Path,
    period: &str,
) -> anyhow::Result<(usize, String)> {
    let all = dir.join("all.toml");
    std::fs::write(
        &all,
        format!(
            "[network]\nname = \"all\"\nsites_dir = \"sites\"\n\n[mqtt]\nurl = \"{mqtt_url}\"\n\n[ledger]\nurl = \"{ledger_url}\"\n"
        ),
    )?;
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "BENCH_TIME %e s %M KiB"])
        .arg(collector_bin)
        .args(["invoice", "--period", period, "--config"])
        .arg(&all)
        .env("RUST_LOG", "warn")
        .output()
        .context("running the invoice command under /usr/bin/time (package `time`)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("invoice failed: {stderr}");
    }
    let issued = stdout.lines().filter(|l| l.starts_with("issued ")).count();
    let timing = stderr
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_TIME "))
        .unwrap_or("?")
        .to_owned();
    Ok((issued, timing))
}
