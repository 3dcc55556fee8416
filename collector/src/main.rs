//! `fabmeter-collector`: parses arguments and calls the library (anyhow only here).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use fabmeter_collector::app::Application;
use fabmeter_collector::config::{Config, TimeSeriesSettings};
use tokio_util::sync::CancellationToken;

/// fabmeter collector: MQTT ingest into an exactly-once ledger, time series, HTTP API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the collector.
    Run(Overrides),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    PrintConfig(Overrides),
    /// Check a configuration and exit (0 if valid).
    CheckConfig(Overrides),
}

/// Settings that override the file; each also reads a FABMETER_* environment variable.
#[derive(Args, Debug)]
struct Overrides {
    /// The site file (TOML). Without it: defaults, and `--site` is required.
    #[arg(long, env = "FABMETER_CONFIG")]
    config: Option<PathBuf>,
    /// Site id (overrides `site.id`).
    #[arg(long, env = "FABMETER_SITE")]
    site: Option<String>,
    /// Broker URL, mqtt://host:port or mqtts://host:port (overrides `mqtt.url`).
    #[arg(long, env = "FABMETER_MQTT_URL")]
    mqtt_url: Option<String>,
    /// Broker user name (overrides `mqtt.username`).
    #[arg(long, env = "FABMETER_MQTT_USERNAME")]
    mqtt_username: Option<String>,
    /// Broker password (overrides `mqtt.password`).
    #[arg(long, env = "FABMETER_MQTT_PASSWORD", hide_env_values = true)]
    mqtt_password: Option<String>,
    /// Ledger file (overrides `ledger.path`).
    #[arg(long, env = "FABMETER_LEDGER_PATH")]
    ledger_path: Option<PathBuf>,
    /// HTTP listen address; port 0 picks a free port (overrides `http.listen`).
    #[arg(long, env = "FABMETER_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// InfluxDB 2 API URL (overrides `timeseries.url`; enables time series).
    #[arg(long, env = "FABMETER_INFLUX_URL")]
    influx_url: Option<String>,
    /// InfluxDB token (overrides `timeseries.token`).
    #[arg(long, env = "FABMETER_INFLUX_TOKEN", hide_env_values = true)]
    influx_token: Option<String>,
}

impl Overrides {
    fn load(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the config file {}", path.display()))?;
                Config::from_toml(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => match &self.site {
                Some(site) => Config::for_site(site),
                None => anyhow::bail!(
                    "no configuration: pass --config site.toml (see `print-config --site my-site` for a template) or at least --site"
                ),
            },
        };
        if let Some(v) = self.site {
            config.site.id = v;
        }
        if let Some(v) = self.mqtt_url {
            config.mqtt.url = v;
        }
        if let Some(v) = self.mqtt_username {
            config.mqtt.username = Some(v);
        }
        if let Some(v) = self.mqtt_password {
            config.mqtt.password = Some(v);
        }
        if let Some(v) = self.ledger_path {
            config.ledger.path = v;
        }
        if let Some(v) = self.http_listen {
            config.http.listen = v;
        }
        if let Some(url) = self.influx_url {
            let ts = config.timeseries.get_or_insert_with(|| TimeSeriesSettings {
                url: String::new(),
                org: "fabmeter".into(),
                bucket: "fabmeter".into(),
                token: String::new(),
                backlog_dir: None,
                backlog_max_mib: 256,
            });
            ts.url = url;
        }
        if let (Some(token), Some(ts)) = (self.influx_token, config.timeseries.as_mut()) {
            ts.token = token;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttc=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::PrintConfig(o) => {
            print!("{}", o.load()?.to_toml());
            Ok(())
        }
        Command::CheckConfig(o) => {
            let c = o.load()?;
            println!(
                "config ok: site {}, {} machines, {} members",
                c.site.id,
                c.machines.len(),
                c.members.len()
            );
            Ok(())
        }
        Command::Run(o) => {
            let config = o.load()?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(run(config))
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    println!("fabmeter collector: http://{}/", app.http_addr());
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: finishing what was received");
        signal.cancel();
    });
    app.run(shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
