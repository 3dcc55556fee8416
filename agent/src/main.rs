//! `fabmeter-agent`: parses arguments and calls the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fabmeter_agent::run::{self as agent, Exit};
use fabmeter_agent::sim::{self, SimConfig, SimStats};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fabmeter-agent",
    version,
    about = "fabmeter agent and workshop simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent for the machines of a config file (docs/AGENT.md).
    Run {
        /// Agent config file.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
    },
    /// Print the effective config (defaults filled in, secrets redacted) and what it resolves to;
    /// with no `--config` and no `agent.toml` here, a commented template to start from.
    PrintConfig {
        /// Agent config file [default: agent.toml, if it exists].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a config file and every file it names; exit status 0 if it is valid.
    CheckConfig {
        /// Agent config file.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
    },
    /// Simulate a workshop of machines, each a real MQTT client.
    Simulate(SimulateArgs),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Broker URL, plain TCP: mqtt://host:port.
    #[arg(
        long,
        env = "FABMETER_SIM_BROKER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    broker: String,
    /// Site id.
    #[arg(long, env = "FABMETER_SIM_SITE", default_value = "demo")]
    site: String,
    /// Number of machines (ignored with --demo).
    #[arg(long, default_value_t = 8)]
    machines: usize,
    /// The demo workshop (8 named machines, 6 members) instead of a generated one.
    #[arg(long)]
    demo: bool,
    /// Seed: same seed, same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sim seconds per wall second (1440: a day per minute).
    #[arg(long, default_value_t = 1440.0)]
    speed: f64,
    /// Sim time to run (e.g. 1d, 6h, 90m); until Ctrl-C if absent.
    #[arg(long)]
    duration: Option<String>,
    /// Do not publish the machines' retained configs (a collector does).
    #[arg(long)]
    no_configs: bool,
    /// Telemetry period in sim seconds in the published configs (0: off).
    #[arg(long, default_value_t = 60)]
    telemetry_s: u32,
    /// New connections per second.
    #[arg(long, default_value_t = 500)]
    connect_rate: u32,
    /// Machines sharing one MQTT connection (1: a connection per machine, as real devices). Use
    /// 2 or more to simulate more machines than the open-file limit (`ulimit -n`) allows; machines
    /// on a shared connection have no last will.
    #[arg(long, default_value_t = 1)]
    machines_per_connection: usize,
    /// Start sim time this long after Monday 2025-12-01 08:45 UTC (e.g. 5h: 13:45, mid-afternoon
    /// in a busy workshop).
    #[arg(long)]
    start_after: Option<String>,
}

fn parse_broker(url: &str) -> anyhow::Result<(String, u16)> {
    match fabmeter_agent::protocol::topic::parse_broker_url(url) {
        Some((host, port, false)) => Ok((host, port)),
        Some((_, _, true)) => bail!("--broker {url:?}: TLS is not supported by the simulator; use mqtt://host:port, e.g. mqtt://127.0.0.1:1883"),
        None => bail!("--broker {url:?}: expected mqtt://host:port, e.g. mqtt://127.0.0.1:1883"),
    }
}

async fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    let (host, port) = parse_broker(&a.broker)?;
    let mut cfg = if a.demo {
        SimConfig {
            broker_host: host,
            ..SimConfig::demo(&a.site, port)
        }
    } else {
        SimConfig::workshop(&a.site, &host, port, a.machines, a.seed)
    };
    cfg.seed = a.seed;
    cfg.speed = a.speed;
    cfg.publish_configs = !a.no_configs;
    cfg.telemetry_s = a.telemetry_s;
    cfg.connect_rate = a.connect_rate;
    cfg.machines_per_connection = a.machines_per_connection;
    cfg.duration_ms = match &a.duration {
        Some(d) => Some(sim::parse_duration_ms(d).map_err(|e| anyhow::anyhow!("--duration {e}"))?),
        None => None,
    };
    if let Some(d) = &a.start_after {
        cfg.start_unix_ms = sim::DEFAULT_START_UNIX_MS
            + sim::parse_duration_ms(d).map_err(|e| anyhow::anyhow!("--start-after {e}"))?;
    }
    cfg.validate()?;
    let n = cfg.machines.len();
    let total = cfg.duration_ms;
    let sharing = match cfg.machines_per_connection {
        1 => String::new(),
        k => format!(", {} shared connections", n.div_ceil(k)),
    };
    eprintln!(
        "simulating {n} machines of site {:?} on {}:{} (seed {}, speed {}x{}{sharing}); Ctrl-C stops",
        cfg.site,
        cfg.broker_host,
        cfg.broker_port,
        cfg.seed,
        cfg.speed,
        total.map_or(String::new(), |t| format!(
            ", {} sim hours",
            t as f64 / 3.6e6
        )),
    );
    let shutdown = CancellationToken::new();
    let stats = Arc::new(SimStats::new(n));
    let run = tokio::spawn(sim::run_with_stats(cfg, shutdown.clone(), stats.clone()));
    let progress = tokio::spawn(show_progress(stats.clone(), n, total));
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: switching machines off and emptying journals");
                shutdown.cancel();
            }
        });
    }
    let report = run.await.context("simulator task")??;
    progress.abort();
    // The bar (if any) is cleared when its task is dropped; wait for that before the summary.
    let _ = progress.await;
    eprintln!(
        "done in {:.1} s: {} events published, {} acknowledged ({} distinct), {} left in journals",
        report.wall.as_secs_f64(),
        report.events_published(),
        report.events_acked(),
        report
            .machines
            .iter()
            .map(|m| m.events_distinct)
            .sum::<u64>(),
        report.journal_left()
    );
    for m in report.machines.iter().filter(|m| m.error.is_some()) {
        eprintln!("machine {}: {}", m.id, m.error.as_deref().unwrap_or(""));
    }
    Ok(())
}

/// Shows the simulator's progress on stderr until aborted: a bar (sim time out of `total_ms`, or a
/// spinner without a duration) with connected machines and events published/acknowledged when
/// stderr is a terminal, a plain line every 2 s otherwise (logs, pipes, CI).
async fn show_progress(stats: Arc<SimStats>, machines: usize, total_ms: Option<u64>) {
    use std::sync::atomic::Ordering::Relaxed;
    let line = |stats: &SimStats| {
        format!(
            "{}/{machines} connected, {} events published, {} acknowledged",
            stats.connected.load(Relaxed),
            stats.events_published.load(Relaxed),
            stats.events_acked.load(Relaxed),
        )
    };
    let sim_h = |ms: u64| ms as f64 / 3.6e6;
    let started = tokio::time::Instant::now();
    let mut all_connected = false;
    // Once, when every machine is connected: the ramp's duration.
    let mut check_connected = |stats: &SimStats| -> Option<String> {
        if all_connected || stats.connected.load(Relaxed) < machines as u64 {
            return None;
        }
        all_connected = true;
        Some(format!(
            "all {machines} machines connected after {:.1} s",
            started.elapsed().as_secs_f64()
        ))
    };
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        // Checked every 200 ms (the connect time), printed every 2 s.
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        for i in 0u64.. {
            tick.tick().await;
            if let Some(l) = check_connected(&stats) {
                eprintln!("{l}");
            }
            if i % 10 != 0 {
                continue;
            }
            let t = stats.sim_ms();
            let pct = total_ms.map_or(String::new(), |d| {
                format!(" ({:.0}%)", 100.0 * t as f64 / d.max(1) as f64)
            });
            eprintln!("sim time {:>6.2} h{pct}: {}", sim_h(t), line(&stats));
        }
    }
    let bar = match total_ms {
        Some(d) => indicatif::ProgressBar::new(d / 1000).with_style(
            indicatif::ProgressStyle::with_template("{bar:30} {percent:>3}% sim {msg} (eta {eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::new_spinner(),
    };
    // Cleared when the task is aborted (dropped with it).
    struct Clear(indicatif::ProgressBar);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.finish_and_clear();
        }
    }
    let bar = Clear(bar);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let t = stats.sim_ms();
        if let Some(l) = check_connected(&stats) {
            bar.0.println(l);
        }
        bar.0.set_position(t / 1000);
        bar.0
            .set_message(format!("{:.2} h: {}", sim_h(t), line(&stats)));
    }
}

/// Exit status after a `reboot` command: the service manager starts the agent again.
const EXIT_REBOOT: i32 = 75;

/// The config `print-config` reads when none is named and it exists.
const DEFAULT_CONFIG: &str = "agent.toml";

async fn run_agent(config: PathBuf) -> anyhow::Result<Exit> {
    let loaded = agent::load(&config)?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!("cannot listen for SIGTERM: {e}");
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping: sending the journals, then offline");
            shutdown.cancel();
        });
    }
    agent::run(loaded, shutdown).await
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttc=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run { config } => {
            if rt.block_on(run_agent(config))? == Exit::Reboot {
                drop(rt);
                std::process::exit(EXIT_REBOOT);
            }
            Ok(())
        }
        Command::PrintConfig { config } => {
            let config = match config {
                Some(path) => path,
                None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
                None => {
                    print!("{}", fabmeter_agent::config::template());
                    return Ok(());
                }
            };
            let loaded = agent::load(&config)?;
            print!("{}", loaded.config.to_redacted_toml());
            println!(
                "\n# site {}: {} machine(s)",
                loaded.site,
                loaded.machines.len()
            );
            for m in &loaded.machines {
                println!("#   {}", agent::describe(m));
            }
            Ok(())
        }
        Command::CheckConfig { config } => {
            let loaded = agent::load(&config)?;
            eprintln!(
                "{}: valid, site {}, {} machine(s)",
                config.display(),
                loaded.site,
                loaded.machines.len()
            );
            Ok(())
        }
        Command::Simulate(a) => rt.block_on(simulate(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_broker;

    #[test]
    fn broker_urls() {
        assert_eq!(parse_broker("mqtt://h:1884").unwrap(), ("h".into(), 1884));
        assert_eq!(parse_broker("mqtt://h").unwrap(), ("h".into(), 1883));
        assert!(parse_broker("mqtts://h:8883").is_err());
        assert!(parse_broker("mqtt://h:x").is_err());
    }
}
