//! `fabmeter demo`: an embedded broker, the collector with its web page, and a simulated workshop
//! whose machines are the firmware's device core speaking MQTT, time accelerated so that a
//! workshop day passes in about a minute.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fabmeter_agent::sim;
use fabmeter_collector::app::Application;
use fabmeter_collector::config::{Config, MachineConfig, MemberConfig};
use tokio_util::sync::CancellationToken;

use crate::broker;

/// Options of `fabmeter demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Port of the web page and API (0: any free port). If taken, a free one is used and printed.
    #[arg(long, default_value_t = 8080, env = "FABMETER_DEMO_HTTP_PORT")]
    pub http_port: u16,
    /// Port of the embedded MQTT broker (0: any free port). If taken (a Mosquitto already runs
    /// there), a free one is used and printed.
    #[arg(long, default_value_t = 1883, env = "FABMETER_DEMO_MQTT_PORT")]
    pub mqtt_port: u16,
    /// Where the demo keeps its ledger; emptied at start unless --keep.
    #[arg(long, default_value = "fabmeter-demo-data")]
    pub data_dir: PathBuf,
    /// Keep the ledger of a previous demo run.
    #[arg(long)]
    pub keep: bool,
    /// Time acceleration: simulated seconds per real second (1440: a day per minute).
    #[arg(long, default_value_t = 1440.0)]
    pub speed: f64,
    /// Seed of the simulated workshop (same seed, same events).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this many real seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
}

/// The site id of the demo.
pub const SITE: &str = "demo";

/// The demo's device keys file, in its data directory.
pub const DEVICE_KEYS_FILE: &str = "device-keys.toml";

/// A fresh random secret for this demo run, and each demo machine's key derived from it
/// ([`DeviceKey::derive`](fabmeter_collector::protocol::DeviceKey::derive), as the simulator
/// derives them) written to `path`: the collector then refuses any event a machine did not sign.
pub fn write_device_keys(path: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    use fabmeter_collector::protocol::DeviceKey;
    let secret = fabmeter_collector::provision::new_secret()?;
    for (machine, _, _) in sim::demo_machines() {
        fabmeter_collector::device_keys::store(
            path,
            &machine,
            &DeviceKey::derive(&secret, &machine),
        )?;
    }
    Ok(secret)
}

fn free_or(preferred: u16, what: &str) -> u16 {
    let (port, note) = broker::pick_port(preferred);
    if let Some(note) = note {
        eprintln!("note: {what} {note}");
    }
    port
}

/// The collector configuration matching the simulated workshop.
pub fn collector_config(mqtt_port: u16, http: SocketAddr, data_dir: &std::path::Path) -> Config {
    let mut c = Config::for_site(SITE);
    c.site.name = "fabmeter demo workshop".into();
    c.mqtt.url = format!("mqtt://127.0.0.1:{mqtt_port}");
    c.ledger.path = data_dir.join("ledger.sqlite");
    c.http.listen = http;
    // The simulator publishes the machines' configs itself (per-kind allow-lists).
    c.devices.publish_configs = false;
    // Signed events only, as a real site should run (docs/SECURITY.md): `run` writes the keys.
    c.security.require_signed_events = true;
    c.security.device_keys_file = Some(data_dir.join(DEVICE_KEYS_FILE));
    c.machines = sim::demo_machines()
        .into_iter()
        .map(|(id, name, kind)| MachineConfig {
            id,
            name,
            kind: kind.as_str().to_owned(),
            tariff: None,
            sensing: Some(kind.sensing()),
        })
        .collect();
    c.members = sim::demo_members()
        .into_iter()
        .map(|(id, name, badge)| MemberConfig {
            id,
            name,
            badges: vec![badge],
        })
        .collect();
    c.billing = Config::from_toml(&format!("[site]\nid = \"{SITE}\"\n{DEMO_BILLING}"))
        .ok()
        .and_then(|b| b.billing);
    c
}

/// The demo's tariffs (docs/BILLING.md): one per machine kind, residents 20 % off with 10 h of
/// laser a month included; everyone else pays the visitor prices.
const DEMO_BILLING: &str = r#"
[billing]
invoice_prefix = "DEMO"
timezone = "Europe/Paris"
default_plan = "visitor"
[billing.seller]
name = "fabmeter demo workshop"
[[billing.tariffs]]
name = "printer-3d"
valid_from = "2025-01-01"
busy_per_min = "0.02"
setup = "0.50"
label = "3D printing"
[[billing.tariffs]]
name = "laser"
valid_from = "2025-01-01"
busy_per_min = "0.50"
increment_min = 5
minimum = "2.00"
daily_cap = "40.00"
label = "Laser cutting"
[[billing.tariffs]]
name = "cnc"
valid_from = "2025-01-01"
busy_per_min = "0.80"
idle_per_min = "0.05"
minimum = "5.00"
label = "CNC routing"
[[billing.tariffs]]
name = "saw"
valid_from = "2025-01-01"
busy_per_min = "0.20"
increment_min = 15
label = "Woodworking"
[[billing.plans]]
name = "resident"
discount_percent = 20
allowances = [{ tariff = "laser", minutes = 600 }]
[[billing.plans]]
name = "visitor"
[[billing.memberships]]
member = "alice"
plan = "resident"
valid_from = "2025-01-01"
[[billing.memberships]]
member = "bruno"
plan = "resident"
valid_from = "2025-01-01"
"#;

fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the embedded broker did not open port {port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the demo until Ctrl-C (or `--seconds`).
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mqtt_port = match args.mqtt_port {
        0 => TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port(),
        p => free_or(p, "MQTT"),
    };
    let http_port = match args.http_port {
        0 => 0,
        p => free_or(p, "HTTP"),
    };
    if !args.keep && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("cannot empty {}", args.data_dir.display()))?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;

    let _broker = broker::start(SocketAddr::from(([127, 0, 0, 1], mqtt_port)))?;
    wait_for_port(mqtt_port, Duration::from_secs(10))?;

    let config = collector_config(
        mqtt_port,
        SocketAddr::from(([127, 0, 0, 1], http_port)),
        &args.data_dir,
    );
    let secret = write_device_keys(&args.data_dir.join(DEVICE_KEYS_FILE))
        .context("cannot write the demo's device keys")?;
    let app = Application::build(config).await?;
    let url = format!("http://{}/", app.http_addr());
    println!("fabmeter demo: {url}");
    println!("  live machine board   {url}");
    println!("  machines (JSON)      {url}api/machines");
    println!("  sessions (CSV)       {url}api/sessions.csv");
    println!("  metrics              {url}metrics");
    println!(
        "  MQTT broker          mqtt://127.0.0.1:{mqtt_port}  (watch: mosquitto_sub -p {mqtt_port} -t 'fabmeter/#' -v)"
    );
    println!(
        "  {} simulated machines, time x{}: a workshop day passes in about {:.0} s. Ctrl-C stops.",
        sim::demo_machines().len(),
        args.speed,
        86_400.0 / args.speed
    );
    println!("  This demo uses an embedded broker; real sites use Mosquitto (docs/COLLECTOR.md).");

    let shutdown = CancellationToken::new();
    let collector = tokio::spawn(app.run(shutdown.clone()));
    let mut sim_cfg = sim::SimConfig::demo(SITE, mqtt_port);
    sim_cfg.seed = args.seed;
    sim_cfg.speed = args.speed;
    sim_cfg.device_key_secret = Some(secret);
    // As a site's devices should: keep each event until the collector confirms it.
    sim_cfg.confirm = true;
    let sim_shutdown = shutdown.child_token();
    let simulator = tokio::spawn(sim::run(sim_cfg, sim_shutdown));

    let limit = async {
        match args.seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = fabmeter_collector::app::shutdown_signal() => {}
        () = limit => {}
    }
    println!("stopping…");
    shutdown.cancel();
    match simulator.await {
        Ok(Ok(report)) => tracing::info!(?report, "simulator stopped"),
        Ok(Err(e)) => eprintln!("simulator: {e}"),
        Err(e) => eprintln!("simulator task: {e}"),
    }
    collector.await??;
    println!(
        "stopped; the ledger is in {}",
        args.data_dir.join("ledger.sqlite").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_site_is_valid_and_bills_every_machine_kind() {
        let c = collector_config(
            1883,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            std::path::Path::new("/tmp"),
        );
        assert_eq!(c.validate(), Ok(()));
        assert!(c.security.require_signed_events, "the demo runs signed");
        let billing = c.billing.as_ref().expect("the demo bills");
        for m in &c.machines {
            assert!(
                billing.tariffs.iter().any(|t| t.name == m.kind),
                "no tariff for {}",
                m.kind
            );
        }
        let b = fabmeter_collector::billing::invoice::Billing::from_config(&c);
        assert!(matches!(b, Ok(Some(_))), "{b:?}");
    }
}
