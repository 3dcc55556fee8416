//! `fabmeter-collector`: parses arguments and calls the library (anyhow only here).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use fabmeter_collector::app::Application;
use fabmeter_collector::config::{Config, TimeSeriesSettings};
use fabmeter_collector::network::Network;
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
    /// Issue the invoices of a period, one per member (docs/BILLING.md); a second run is a no-op.
    Invoice(InvoiceArgs),
    /// Cancel an issued invoice with a credit note.
    CreditNote(CreditNoteArgs),
    /// Recompute every issued invoice from the ledger; exit 1 on any difference.
    Audit(Overrides),
    /// Maintenance: record a service, mark a machine out of order or back in service, show status
    /// (docs/MAINTENANCE.md). Works while the collector runs.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Broker accounts: device credentials, Mosquitto's password and ACL files (docs/SECURITY.md).
    #[command(subcommand)]
    Provision(ProvisionCommand),
    /// HTTP API tokens: create (shown once), list, revoke (docs/SECURITY.md).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Personal data of a member (docs/SECURITY.md "Personal data").
    #[command(subcommand)]
    Member(MemberCommand),
    /// Retention of personal data (docs/SECURITY.md "Retention, purge and erasure").
    #[command(subcommand)]
    Privacy(PrivacyCommand),
    /// Cost recovery per machine: depreciation, maintenance, consumables, revenue billed,
    /// utilisation and months to pay back (docs/COSTS.md).
    CostRecovery(CostRecoveryArgs),
    /// The accounting export of the documents issued in a month: CSV (one line per document and
    /// VAT rate) or the French FEC of the sales journal (docs/BILLING.md "Accounting export").
    ExportAccounting(ExportAccountingArgs),
    /// A new site in one step: a commented site file, Mosquitto's configuration, password and
    /// ACL files, and each machine's device credentials (docs/COLLECTOR.md "A new site").
    Init(InitArgs),
}

/// `export-accounting` arguments.
#[derive(Args, Debug)]
struct ExportAccountingArgs {
    #[command(flatten)]
    o: Overrides,
    /// The month of issue, e.g. 2026-11 (default: the previous month).
    #[arg(long)]
    period: Option<String>,
    /// csv or fec.
    #[arg(long)]
    format: AccountingFormat,
    /// The file to write (atomically: a temporary file renamed once complete).
    #[arg(long)]
    out: PathBuf,
}

/// Output format of `export-accounting`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum AccountingFormat {
    Csv,
    Fec,
}

/// `cost-recovery` arguments.
#[derive(Args, Debug)]
struct CostRecoveryArgs {
    #[command(flatten)]
    o: Overrides,
    /// Start of the range: a local date (2026-09-01), a UTC date-time or unix ms (default: 90
    /// days before --to).
    #[arg(long)]
    from: Option<String>,
    /// End of the range, exclusive (default: now).
    #[arg(long)]
    to: Option<String>,
    /// table, json or csv.
    #[arg(long, default_value = "table")]
    format: ReportFormat,
}

/// Output format of `cost-recovery`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ReportFormat {
    Table,
    Json,
    Csv,
}

/// `init` arguments.
#[derive(Args, Debug)]
struct InitArgs {
    /// The site id, e.g. atelier-lyon.
    #[arg(long)]
    site: String,
    /// The machines, comma-separated, each `id` or `id:kind`, e.g. laser-1:laser,printer-1:printer-3d.
    #[arg(long, value_delimiter = ',', required = true)]
    machines: Vec<String>,
    /// Where to write site.toml, mosquitto.conf, the password and ACL files and devices/*.toml.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Where the ledger and the device keys go (named in site.toml).
    #[arg(long, default_value = "/var/lib/fabmeter")]
    data_dir: PathBuf,
    /// The broker as the collector reaches it (mqtt.url).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    mqtt_url: String,
    /// The broker as devices on other boards reach it (broker.device_url), e.g.
    /// mqtt://workshop.local:1884 (a port of its own: the collector's listener is local only).
    #[arg(long)]
    device_url: Option<String>,
    /// Mosquitto's persistence_location.
    #[arg(long, default_value = fabmeter_collector::provision::DEFAULT_PERSISTENCE_LOCATION)]
    broker_data_dir: PathBuf,
    /// The collector's HTTP address (http.listen).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// Replace existing files (the old broker passwords and device keys stop working).
    #[arg(long)]
    force: bool,
}

/// `privacy` subcommands.
#[derive(Subcommand, Debug)]
enum PrivacyCommand {
    /// Delete the sessions, their raw events and the access_denied events older than
    /// `[privacy] retention_days` that no billing run settled (the collector also does it daily).
    Purge {
        #[command(flatten)]
        o: Overrides,
        /// Print what would go, per machine and month, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `member` subcommands.
#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// Everything held about one member as one JSON document: the configuration entry (badge
    /// hashes), sessions with their raw events, invoices and credit notes issued to them.
    Export {
        #[command(flatten)]
        o: Overrides,
        /// The member id, e.g. alice.
        #[arg(long)]
        member: String,
        /// Write the document to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Erase a member's personal data that no invoice needs (unbilled sessions with their raw
    /// events, access_denied events of their badges), recording who asked and why; invoices and
    /// the sessions they bill stay for 10 years. Then remove the member from the site file.
    Erase {
        #[command(flatten)]
        o: Overrides,
        /// The member id, e.g. alice.
        #[arg(long)]
        member: String,
        /// Who erases (recorded).
        #[arg(long)]
        by: String,
        /// Why, e.g. "request of 2026-11-30" (recorded).
        #[arg(long)]
        reason: String,
    },
}

/// `maintenance` subcommands.
#[derive(Subcommand, Debug)]
enum MaintenanceCommand {
    /// Record a service: the plan's count restarts (and its lock, if any, is released).
    Done {
        #[command(flatten)]
        o: Overrides,
        /// The machine, e.g. laser-1.
        #[arg(long)]
        machine: String,
        /// The plan, e.g. lens-cleaning.
        #[arg(long)]
        plan: String,
        /// Who did it.
        #[arg(long)]
        by: String,
        /// What was done.
        #[arg(long, default_value = "")]
        note: String,
        /// What it cost, in cents excl. VAT (e.g. 12050 for 120.50 EUR): counted by
        /// `cost-recovery` (docs/COSTS.md).
        #[arg(long)]
        cost_cents: Option<u64>,
    },
    /// Mark a machine out of order: its device refuses new sessions until back in service.
    OutOfOrder {
        #[command(flatten)]
        o: Overrides,
        /// The machine.
        #[arg(long)]
        machine: String,
        /// Why (shown to members who badge).
        #[arg(long)]
        reason: String,
        /// Who marks it.
        #[arg(long, default_value = "staff")]
        by: String,
    },
    /// End a machine's out-of-order mark.
    BackInService {
        #[command(flatten)]
        o: Overrides,
        /// The machine.
        #[arg(long)]
        machine: String,
    },
    /// Print every machine's plans, lock and availability (the JSON of GET /api/maintenance).
    Status(Overrides),
}

/// `token` subcommands.
#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token and print it (only its hash is kept).
    Create(TokenCreateArgs),
    /// List the tokens (names, roles, members; never the tokens).
    List(Overrides),
    /// Revoke a token by name.
    Revoke(TokenRevokeArgs),
}

/// `token create` arguments.
#[derive(Args, Debug)]
struct TokenCreateArgs {
    #[command(flatten)]
    o: Overrides,
    /// Who or what uses it, unique (e.g. "claire", "prometheus", "alice-phone").
    #[arg(long)]
    name: String,
    /// manager (everything), member (own statement) or monitor (metrics).
    #[arg(long)]
    role: fabmeter_collector::auth::Role,
    /// The member a `member` token may read.
    #[arg(long)]
    member: Option<String>,
}

/// `token revoke` arguments.
#[derive(Args, Debug)]
struct TokenRevokeArgs {
    #[command(flatten)]
    o: Overrides,
    /// The token's name.
    #[arg(long)]
    name: String,
}

/// `provision` subcommands.
#[derive(Subcommand, Debug)]
enum ProvisionCommand {
    /// Create (or renew) the broker account of a machine's device and write its credentials.
    Device(ProvisionDeviceArgs),
    /// Create (or renew) the collector's own broker account.
    Collector(Overrides),
    /// Rewrite the ACL file from the machines of the site file, and the broker's mosquitto.conf
    /// (`broker.conf_file`, docs/COLLECTOR.md "Broker setup").
    Acl(Overrides),
}

/// `provision device` arguments.
#[derive(Args, Debug)]
struct ProvisionDeviceArgs {
    #[command(flatten)]
    o: Overrides,
    /// The machine the device serves (an id of the site file).
    #[arg(long)]
    machine: String,
    /// Write the credentials to this file (mode 0600) instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `invoice` arguments.
#[derive(Args, Debug)]
struct InvoiceArgs {
    #[command(flatten)]
    o: Overrides,
    /// The month to invoice, e.g. 2026-11 (default: the previous month), or a year, e.g. 2026:
    /// each of its months that has ended, in order.
    #[arg(long)]
    period: Option<String>,
    /// Show what would be issued; store nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write {number}.json, {number}.html and accounting-{period}.csv into this directory (with
    /// `billing.facturx`, also the Factur-X {number}.xml and {number}.pdf).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `credit-note` arguments.
#[derive(Args, Debug)]
struct CreditNoteArgs {
    #[command(flatten)]
    o: Overrides,
    /// The invoice to cancel, e.g. ATL-2026-000007.
    #[arg(long)]
    invoice: String,
    /// Why (printed on the credit note).
    #[arg(long)]
    reason: String,
    /// Write {number}.json and {number}.html into this directory (with `billing.facturx`, also
    /// {number}.xml and {number}.pdf).
    #[arg(long)]
    out: Option<PathBuf>,
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
    /// The configuration to run: one site's, or a network collector's every site (with the
    /// overrides applied to each).
    fn load_run(self) -> anyhow::Result<Loaded> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?;
            if fabmeter_collector::network::is_network_file(&text) {
                let mut network = Network::load(path, &text)?;
                if let Some(only) = &self.site {
                    network.sites.retain(|s| &s.site.id == only);
                    anyhow::ensure!(
                        !network.sites.is_empty(),
                        "--site {only}: the network collector file serves no such site"
                    );
                }
                for site in &mut network.sites {
                    self.apply(site);
                    site.validate()
                        .map_err(|e| e.in_file(path.display().to_string()))?;
                }
                return Ok(Loaded::Network(network));
            }
        }
        Ok(Loaded::Site(Box::new(self.load()?)))
    }

    fn load(self) -> anyhow::Result<Config> {
        let mut text = String::new();
        let mut config = match &self.config {
            Some(path) => {
                text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the config file {}", path.display()))?;
                if fabmeter_collector::network::is_network_file(&text) {
                    // A command of one site on a network collector's file: `--site` picks it.
                    let mut config = Network::load(path, &text)?.take_site(self.site.as_deref())?;
                    self.apply(&mut config);
                    config
                        .validate()
                        .map_err(|e| e.in_file(path.display().to_string()))?;
                    return Ok(config);
                }
                Config::from_toml(&text).map_err(|e| e.in_file(path.display().to_string()))?
            }
            None => match &self.site {
                Some(site) => Config::for_site(site),
                None => anyhow::bail!(
                    "no configuration: pass --config site.toml (see `print-config --site my-site` for a template) or at least --site"
                ),
            },
        };
        if let Some(v) = &self.site {
            config.site.id = v.clone();
        }
        self.apply(&mut config);
        config.validate().map_err(|e| match &self.config {
            Some(path) => e.located(&text).in_file(path.display().to_string()),
            None => e,
        })?;
        Ok(config)
    }

    /// Applies the process overrides (broker, ledger file, HTTP, time series) to `config`.
    fn apply(&self, config: &mut Config) {
        if let Some(v) = self.mqtt_url.clone() {
            config.mqtt.url = v;
        }
        if let Some(v) = self.mqtt_username.clone() {
            config.mqtt.username = Some(v);
        }
        if let Some(v) = self.mqtt_password.clone() {
            config.mqtt.password = Some(v);
        }
        if let Some(v) = self.ledger_path.clone() {
            config.ledger.path = v;
        }
        if let Some(v) = self.http_listen {
            config.http.listen = v;
        }
        if let Some(url) = self.influx_url.clone() {
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
        if let (Some(token), Some(ts)) = (self.influx_token.clone(), config.timeseries.as_mut()) {
            ts.token = token;
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttc=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::PrintConfig(o) => {
            if o.config.is_none() && o.site.is_none() {
                // Nothing to read: the defaults, for a placeholder site, as a file to start from.
                println!("# No --config and no --site given: the defaults for a site \"my-site\".");
                println!(
                    "# Save with `fabmeter-collector print-config --site <your-site> > site.toml`,"
                );
                println!("# add [[machines]] and [[members]] (collector/site.example.toml, docs/COLLECTOR.md),");
                println!(
                    "# then check it with `fabmeter-collector check-config --config site.toml`.\n"
                );
            }
            let o = if o.config.is_none() && o.site.is_none() {
                Overrides {
                    site: Some("my-site".into()),
                    ..o
                }
            } else {
                o
            };
            print!("{}", o.load()?.to_toml());
            Ok(())
        }
        Command::CheckConfig(o) => {
            let sites = match o.load_run()? {
                Loaded::Site(c) => vec![*c],
                Loaded::Network(n) => {
                    println!("network collector {}: {} sites", n.name, n.sites.len());
                    n.sites
                }
            };
            for c in sites {
                for w in c.warnings() {
                    eprintln!("warning: site {}: {w}", c.site.id);
                }
                println!(
                    "config ok: site {}, {} machines, {} members",
                    c.site.id,
                    c.machines.len(),
                    c.members.len()
                );
            }
            Ok(())
        }
        Command::Invoice(a) => billing::invoice(a),
        Command::CreditNote(a) => billing::credit_note(a),
        Command::Audit(o) => billing::audit(o),
        Command::Maintenance(c) => maintenance::run(c),
        Command::Provision(p) => provision(p),
        Command::Token(t) => token(t),
        Command::Member(m) => member(m),
        Command::Privacy(PrivacyCommand::Purge { o, dry_run }) => {
            let config = o.load()?;
            let mut ledger = open_ledger(&config)?;
            let mut progress = fabmeter_collector::progress::Progress::start("purge", 0);
            progress.step(&format!(
                "{} what is older than {} days",
                if dry_run { "counting" } else { "deleting" },
                config.privacy.retention_days
            ));
            let r = fabmeter_collector::privacy::purge(
                &config,
                &mut ledger,
                fabmeter_collector::ingest::now_ms(),
                dry_run,
            )?;
            progress.finish(&format!("{} sessions", r.total.sessions));
            print!("{}", fabmeter_collector::privacy::describe_purge(&r));
            Ok(())
        }
        Command::CostRecovery(a) => cost_recovery(a),
        Command::ExportAccounting(a) => billing::export_accounting(a),
        Command::Init(a) => {
            let report = fabmeter_collector::init::init(&fabmeter_collector::init::InitOptions {
                site: a.site,
                machines: a.machines,
                dir: a.dir,
                data_dir: a.data_dir,
                mqtt_url: a.mqtt_url,
                device_url: a.device_url,
                broker_data_dir: a.broker_data_dir,
                http_listen: a.http_listen,
                force: a.force,
            })?;
            print!("{}", fabmeter_collector::init::next_steps(&report));
            Ok(())
        }
        Command::Run(o) => {
            let loaded = o.load_run()?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(run(loaded))
        }
    }
}

/// What `run` serves: one site, or a network collector's sites.
enum Loaded {
    Site(Box<Config>),
    Network(Network),
}

async fn run(loaded: Loaded) -> anyhow::Result<()> {
    let app = match loaded {
        Loaded::Site(config) => {
            for w in config.warnings() {
                tracing::warn!("{w}");
            }
            Application::build(*config).await?
        }
        Loaded::Network(network) => {
            // The same warning of many sites once, with the sites it concerns.
            let mut warnings: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
            for site in &network.sites {
                for w in site.warnings() {
                    warnings.entry(w).or_default().push(&site.site.id);
                }
            }
            for (w, sites) in &warnings {
                tracing::warn!(sites = sites.len(), first = sites[0], "{w}");
            }
            tracing::info!(
                collector = %network.name,
                sites = network.sites.len(),
                "network collector"
            );
            Application::build_network(network).await?
        }
    };
    println!("fabmeter collector: http://{}/", app.http_addr());
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        fabmeter_collector::app::shutdown_signal().await;
        tracing::info!("shutdown requested: finishing what was received");
        signal.cancel();
    });
    app.run(shutdown).await?;
    Ok(())
}

/// The ledger the configuration names (SQLite or PostgreSQL).
fn open_ledger(config: &Config) -> anyhow::Result<fabmeter_collector::ledger::AnyLedger> {
    Ok(fabmeter_collector::ledger::AnyLedger::open(
        &config.ledger,
        &config.site_id()?,
        config.badge_directory(),
    )?)
}

fn member(m: MemberCommand) -> anyhow::Result<()> {
    match m {
        MemberCommand::Erase {
            o,
            member,
            by,
            reason,
        } => {
            let config = o.load()?;
            let mut ledger = open_ledger(&config)?;
            let r = fabmeter_collector::privacy::erase_member(
                &config,
                &mut ledger,
                &member,
                &by,
                &reason,
                fabmeter_collector::ingest::now_ms(),
            )?;
            println!(
                "member {member} erased by {by}: {} unbilled sessions, {} session events, {} access_denied events deleted; {} billed sessions kept with their invoices",
                r.sessions, r.events, r.access_denied, r.billed_kept
            );
            let entry = config.members.iter().find(|m| m.id == member);
            println!("now remove this entry from the site file (and restart the collector):");
            if let Some(e) = entry {
                println!(
                    "[[members]]\nid = {:?}\nname = {:?}\nbadges = {:?}",
                    e.id, e.name, e.badges
                );
            }
            Ok(())
        }
        MemberCommand::Export { o, member, out } => {
            let config = o.load()?;
            let ledger = open_ledger(&config)?;
            let doc = fabmeter_collector::privacy::export_member(
                &config,
                &ledger,
                &member,
                fabmeter_collector::ingest::now_ms(),
            )?;
            let json = serde_json::to_string_pretty(&doc)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, json + "\n")
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "member {member}: {} sessions, {} documents written to {}",
                        doc.sessions.len(),
                        doc.documents.len(),
                        path.display()
                    );
                }
                None => println!("{json}"),
            }
            Ok(())
        }
    }
}

fn tokens_path(config: &Config) -> anyhow::Result<PathBuf> {
    config.http.tokens_file.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "http.tokens_file is not set: add `tokens_file = \"/var/lib/fabmeter/api-tokens.toml\"` under [http] in the site file"
        )
    })
}

fn token(t: TokenCommand) -> anyhow::Result<()> {
    use fabmeter_collector::auth::TokenFile;
    match t {
        TokenCommand::Create(a) => {
            let config = a.o.load()?;
            let path = tokens_path(&config)?;
            if let Some(m) = &a.member {
                anyhow::ensure!(
                    config.members.iter().any(|x| &x.id == m),
                    "unknown member {m:?}: members are listed under [[members]] in the site file"
                );
            }
            let mut file = TokenFile::load(&path)?;
            let now = fabmeter_collector::api::format_utc(fabmeter_collector::ingest::now_ms());
            let token = file
                .create(&a.name, a.role, a.member.as_deref(), &now)
                .map_err(|e| anyhow::anyhow!(e))?;
            file.save(&path)?;
            eprintln!("token {:?} created; it is shown only now:", a.name);
            println!("{token}");
        }
        TokenCommand::List(o) => {
            let config = o.load()?;
            let file = TokenFile::load(&tokens_path(&config)?)?;
            for t in &file.tokens {
                println!(
                    "{}\t{:?}\t{}\t{}",
                    t.name,
                    t.role,
                    t.member.as_deref().unwrap_or("-"),
                    t.created
                );
            }
            println!("{} tokens", file.tokens.len());
        }
        TokenCommand::Revoke(a) => {
            let config = a.o.load()?;
            let path = tokens_path(&config)?;
            let mut file = TokenFile::load(&path)?;
            anyhow::ensure!(
                file.revoke(&a.name),
                "no token named {:?} (see `token list`)",
                a.name
            );
            file.save(&path)?;
            println!("token {:?} revoked", a.name);
        }
    }
    Ok(())
}

fn provision(p: ProvisionCommand) -> anyhow::Result<()> {
    use fabmeter_collector::provision as pv;
    const RELOAD: &str =
        "reload the broker to apply: `systemctl reload mosquitto` (or send it SIGHUP)";
    let conf_note = |config: &Config| {
        match &config.broker.conf_file {
        Some(path) => eprintln!(
            "broker configuration written to {} (the broker must read it: `mosquitto -c {}`; a changed listener or limit needs a restart, not a reload)",
            path.display(),
            path.display()
        ),
        None => eprintln!(
            "broker.conf_file is not set: no mosquitto.conf written; set it to get the settings of docs/COLLECTOR.md \"Broker setup\""
        ),
    }
    };
    match p {
        ProvisionCommand::Device(a) => {
            let config = a.o.load()?;
            let creds = pv::provision_device(&config, &a.machine)?;
            match &a.out {
                Some(path) => {
                    pv::write_atomic(path, &creds.to_toml(), 0o600)?;
                    println!(
                        "device account {} created; credentials written to {} (copy them to the device, then delete them)",
                        creds.username,
                        path.display()
                    );
                }
                None => print!("{}", creds.to_toml()),
            }
            conf_note(&config);
            eprintln!("{RELOAD}");
        }
        ProvisionCommand::Collector(o) => {
            let config = o.load()?;
            let (user, password) = pv::provision_collector(&config)?;
            println!("# add to the [mqtt] section of the site file (or FABMETER_MQTT_USERNAME / FABMETER_MQTT_PASSWORD):");
            println!("username = \"{user}\"\npassword = \"{password}\"");
            conf_note(&config);
            eprintln!("{RELOAD}");
        }
        ProvisionCommand::Acl(o) => {
            let config = o.load()?;
            let path = pv::write_acl(&config)?;
            println!(
                "ACL for {} machines written to {}",
                config.machines.len(),
                path.display()
            );
            conf_note(&config);
            eprintln!("{RELOAD}");
        }
    }
    Ok(())
}

/// A range bound: a local date (midnight in the costs' zone), else what the API takes.
fn parse_bound(
    s: &str,
    zone: fabmeter_collector::billing::Zone,
    flag: &str,
) -> anyhow::Result<u64> {
    if let Ok(d) = fabmeter_collector::billing::Date::parse(s) {
        return Ok(zone.midnight(d));
    }
    fabmeter_collector::api::parse_time(s).ok_or_else(|| {
        anyhow::anyhow!("{flag} {s:?}: give a date (2026-11-01), a UTC date-time (2026-11-01T08:00:00Z) or unix ms")
    })
}

fn cost_recovery(a: CostRecoveryArgs) -> anyhow::Result<()> {
    use fabmeter_collector::costs;
    let config = a.o.load()?;
    let zone = config.costs.clone().unwrap_or_default().zone(&config)?;
    let to = match &a.to {
        Some(s) => parse_bound(s, zone, "--to")?,
        None => fabmeter_collector::ingest::now_ms(),
    };
    let from = match &a.from {
        Some(s) => parse_bound(s, zone, "--from")?,
        None => to.saturating_sub(90 * 86_400_000),
    };
    let ledger = open_ledger(&config)?;
    let report = costs::report(&config, &ledger, from, to)?;
    match a.format {
        ReportFormat::Table => print!("{}", costs::to_table(&report)),
        ReportFormat::Csv => print!("{}", costs::to_csv(&report)),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

/// The billing subcommands: open the ledger, call the library, print and write files.
mod billing {
    use super::*;
    use fabmeter_collector::billing::invoice::{accounting_csv, to_html, Billing, Invoice};
    use fabmeter_collector::billing::money::format_cents;
    use fabmeter_collector::billing::Period;
    use fabmeter_collector::ledger::{AnyLedger, Ledger};
    use fabmeter_collector::progress::Progress;

    fn open(o: Overrides) -> anyhow::Result<(Billing, AnyLedger)> {
        let config = o.load()?;
        let billing = Billing::from_config(&config)?.ok_or_else(|| {
            anyhow::anyhow!("no [billing] section in the configuration; see docs/BILLING.md")
        })?;
        let ledger = super::open_ledger(&config)?;
        Ok((billing, ledger))
    }

    fn summary(d: &Invoice) -> String {
        format!(
            "{} {:?} {} ({}): {} lines, {} EUR excl. VAT, {} EUR incl. VAT, prepaid {}, due {}",
            d.number,
            d.kind,
            d.buyer.id,
            d.period,
            d.lines.len(),
            format_cents(d.totals.excl_cents),
            format_cents(d.totals.incl_cents),
            format_cents(d.prepaid_cents),
            format_cents(d.due_cents)
        )
    }

    fn write(dir: &std::path::Path, docs: &[Invoice], facturx: bool) -> anyhow::Result<()> {
        use fabmeter_collector::billing::facturx::{cii_xml, write_new};
        use fabmeter_collector::billing::pdf::facturx_pdf;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for d in docs {
            // Rendered before anything is written: a document that cannot be rendered leaves
            // no file of it behind.
            let facturx = if facturx {
                Some((cii_xml(d)?, facturx_pdf(d)?))
            } else {
                None
            };
            std::fs::write(dir.join(format!("{}.json", d.number)), d.to_json())?;
            std::fs::write(dir.join(format!("{}.html", d.number)), to_html(d))?;
            if let Some((xml, pdf)) = facturx {
                write_new(&dir.join(format!("{}.xml", d.number)), &xml)?;
                write_new(&dir.join(format!("{}.pdf", d.number)), &pdf)?;
            }
        }
        Ok(())
    }

    fn now_ms() -> u64 {
        fabmeter_collector::ingest::now_ms()
    }

    pub(super) fn invoice(a: InvoiceArgs) -> anyhow::Result<()> {
        let config = match a.o.load_run()? {
            super::Loaded::Network(n) => {
                return invoice_network(n, a.period.as_deref(), a.dry_run, a.out.as_deref())
            }
            super::Loaded::Site(config) => config,
        };
        let billing = Billing::from_config(&config)?.ok_or_else(|| {
            anyhow::anyhow!("no [billing] section in the configuration; see docs/BILLING.md")
        })?;
        let mut ledger = super::open_ledger(&config)?;
        invoice_site(
            &billing,
            &mut ledger,
            a.period.as_deref(),
            a.dry_run,
            a.out.as_deref(),
        )
    }

    /// Invoices every site a network collector file serves (or the one `--site` names), one
    /// after the other on one PostgreSQL connection; a site without `[billing]` is skipped and
    /// said so. The documents of a site go to `out/{site}/`.
    fn invoice_network(
        n: super::Network,
        period: Option<&str>,
        dry_run: bool,
        out: Option<&std::path::Path>,
    ) -> anyhow::Result<()> {
        let url = n
            .sites
            .first()
            .and_then(|c| c.ledger.url.clone())
            .context("a network collector file needs ledger.url")?;
        let conn = fabmeter_collector::ledger::PgConnection::connect(&url)?;
        let (mut billed, mut skipped) = (0, 0);
        let mut progress = Progress::start("invoice", n.sites.len() as u64);
        for config in &n.sites {
            progress.step(&format!("site {}", config.site.id));
            let Some(billing) = Billing::from_config(config)? else {
                progress.out(&format!(
                    "site {}: no [billing] section, skipped",
                    config.site.id
                ));
                skipped += 1;
                progress.advance();
                continue;
            };
            progress.out(&format!("site {}:", config.site.id));
            let mut ledger =
                AnyLedger::Postgres(Box::new(fabmeter_collector::ledger::PgLedger::on(
                    &conn,
                    &config.site_id()?,
                    config.badge_directory(),
                )?));
            let dir = out.map(|d| d.join(&config.site.id));
            let periods = periods(&billing, period)?;
            for p in periods {
                invoice_period(&billing, &mut ledger, p, dry_run, dir.as_deref(), &progress)
                    .with_context(|| format!("site {}", config.site.id))?;
            }
            billed += 1;
            progress.advance();
        }
        let summary = format!("{billed} sites invoiced, {skipped} without billing");
        // The outcome is a result (standard output); the progress line says how long it took.
        progress.out(&format!("network collector {}: {summary}", n.name));
        progress.finish(&summary);
        Ok(())
    }

    /// The periods `--period` names: a month, or the months of a year that have ended; without
    /// it, the previous month.
    fn periods(billing: &Billing, period: Option<&str>) -> anyhow::Result<Vec<Period>> {
        let current = Period::of(billing.rules.zone.date_of(now_ms()));
        match period {
            None => Ok(vec![current.prev()]),
            Some(y) if y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()) => {
                let first = Period::parse(&format!("{y}-01"))
                    .map_err(|e| anyhow::anyhow!("--period: {e}"))?;
                let months: Vec<Period> = std::iter::successors(Some(first), |p| Some(p.next()))
                    .take(12)
                    .filter(|p| *p < current)
                    .collect();
                anyhow::ensure!(
                    !months.is_empty(),
                    "--period {y}: no month of that year has ended yet; invoice a past month, e.g. --period {}",
                    current.prev()
                );
                Ok(months)
            }
            Some(p) => Ok(vec![Period::parse(p).map_err(|e| {
                anyhow::anyhow!("--period: {e}, or a year like \"2026\"")
            })?]),
        }
    }

    /// Invoices the periods of one site, with their progress.
    fn invoice_site(
        billing: &Billing,
        ledger: &mut AnyLedger,
        period: Option<&str>,
        dry_run: bool,
        out: Option<&std::path::Path>,
    ) -> anyhow::Result<()> {
        let periods = periods(billing, period)?;
        let mut progress = Progress::start("invoice", periods.len() as u64);
        let mut issued = 0;
        for &p in &periods {
            progress.step(&p.to_string());
            issued += invoice_period(billing, ledger, p, dry_run, out, &progress)?;
            progress.advance();
        }
        progress.finish(&format!(
            "{} {issued} documents for {} period{}",
            if dry_run { "would issue" } else { "issued" },
            periods.len(),
            if periods.len() == 1 { "" } else { "s" }
        ));
        Ok(())
    }

    /// Invoices one period; returns the number of documents issued.
    fn invoice_period(
        billing: &Billing,
        ledger: &mut AnyLedger,
        period: Period,
        dry_run: bool,
        out: Option<&std::path::Path>,
        progress: &Progress,
    ) -> anyhow::Result<usize> {
        let now = now_ms();
        let report = ledger.issue_invoices(billing, period, now, dry_run)?;
        if report.already_issued {
            progress.out(&format!("period {period} was already invoiced: nothing new (late sessions go on the next period's invoices)"));
        }
        for d in &report.invoices {
            progress.out(&format!(
                "{}{}",
                if dry_run { "would issue " } else { "issued " },
                summary(d)
            ));
        }
        for m in &report.settled_at_zero {
            progress.out(&format!("{m}: total 0.00, no invoice (sessions settled)"));
        }
        if let Some(dir) = out {
            write(dir, &report.invoices, billing.config.facturx)?;
            // The period's documents only (the ones just issued are among them), not every
            // document ever issued: the run's memory does not grow with the history.
            let docs: Vec<Invoice> = if dry_run {
                report.invoices.clone()
            } else {
                ledger.period_documents(period)?
            };
            std::fs::write(
                dir.join(format!("accounting-{period}.csv")),
                accounting_csv(&docs, &billing.config.accounts),
            )?;
            progress.out(&format!("written to {}", dir.display()));
        }
        Ok(report.invoices.len())
    }

    pub(super) fn export_accounting(a: ExportAccountingArgs) -> anyhow::Result<()> {
        use fabmeter_collector::accounting;
        let (billing, ledger) = open(a.o)?;
        let period = match &a.period {
            Some(p) => Period::parse(p).map_err(|e| anyhow::anyhow!("--period: {e}"))?,
            None => Period::of(billing.rules.zone.date_of(now_ms())).prev(),
        };
        let docs = accounting::issued_in(ledger.documents()?, period);
        let bytes = match a.format {
            AccountingFormat::Csv => accounting::vat_csv(&docs).into_bytes(),
            AccountingFormat::Fec => {
                accounting::latin9(&accounting::fec(&docs, &billing.config.accounts))
            }
        };
        fabmeter_collector::provision::write_atomic_bytes(&a.out, &bytes, 0o644)?;
        let sum = |f: fn(&Invoice) -> i64| format_cents(docs.iter().map(f).sum());
        println!(
            "{} documents issued in {period} ({} credit notes): {} EUR excl. VAT, {} EUR VAT, {} EUR incl. VAT; written to {}",
            docs.len(),
            docs.iter()
                .filter(|d| d.kind == fabmeter_collector::billing::invoice::DocKind::CreditNote)
                .count(),
            sum(|d| d.totals.excl_cents),
            sum(|d| d.totals.vat_cents),
            sum(|d| d.totals.incl_cents),
            a.out.display()
        );
        Ok(())
    }

    pub(super) fn credit_note(a: CreditNoteArgs) -> anyhow::Result<()> {
        let (billing, mut ledger) = open(a.o)?;
        let d = ledger.credit_note(&billing, &a.invoice, &a.reason, now_ms())?;
        println!("issued {}", summary(&d));
        if let Some(dir) = &a.out {
            write(dir, std::slice::from_ref(&d), billing.config.facturx)?;
        }
        Ok(())
    }

    pub(super) fn audit(o: Overrides) -> anyhow::Result<()> {
        let (billing, ledger) = open(o)?;
        let mut progress = Progress::start("audit", 0);
        progress.step("counting the documents");
        let n = ledger.document_count()?;
        progress.step(&format!(
            "recomputing {n} documents from the raw events (long on a big ledger)"
        ));
        let diffs = ledger.audit(&billing)?;
        progress.finish(&format!("{n} documents recomputed"));
        for d in &diffs {
            println!(
                "{} {}{}: issued {} / recomputed {}",
                d.number,
                d.field,
                d.line
                    .as_deref()
                    .map(|l| format!(" [{l}]"))
                    .unwrap_or_default(),
                d.issued,
                d.recomputed
            );
        }
        println!("audit: {n} documents, {} differences", diffs.len());
        if diffs.is_empty() {
            Ok(())
        } else {
            std::process::exit(1)
        }
    }
}

/// The maintenance subcommands: check against the site file, write to the ledger.
mod maintenance {
    use super::*;
    use fabmeter_collector::ledger::AnyLedger;
    use fabmeter_collector::maintenance::{admin, task};

    fn open(o: Overrides) -> anyhow::Result<(Config, AnyLedger)> {
        let config = o.load()?;
        let mut ledger =
            AnyLedger::open(&config.ledger, &config.site_id()?, config.badge_directory())?;
        fabmeter_collector::app::register_configured_machines(&config, &mut ledger)?;
        Ok((config, ledger))
    }

    fn now_ms() -> u64 {
        fabmeter_collector::ingest::now_ms()
    }

    pub(super) fn run(c: MaintenanceCommand) -> anyhow::Result<()> {
        match c {
            MaintenanceCommand::Done {
                o,
                machine,
                plan,
                by,
                note,
                cost_cents,
            } => {
                let (config, mut ledger) = open(o)?;
                let s = admin::record_service(
                    &config,
                    &mut ledger,
                    &machine,
                    &plan,
                    &by,
                    &note,
                    cost_cents,
                    now_ms(),
                )?;
                println!(
                    "service of {} on {} recorded by {} at {:.3} busy hours",
                    s.plan,
                    s.machine,
                    s.by,
                    s.busy_s_at as f64 / 3600.0
                );
            }
            MaintenanceCommand::OutOfOrder {
                o,
                machine,
                reason,
                by,
            } => {
                let (config, mut ledger) = open(o)?;
                if admin::out_of_order(&config, &mut ledger, &machine, &reason, &by, now_ms())? {
                    println!("{machine} is out of order: {reason}");
                } else {
                    println!("{machine} was already out of order; nothing changed");
                }
            }
            MaintenanceCommand::BackInService { o, machine } => {
                let (config, mut ledger) = open(o)?;
                if admin::back_in_service(&config, &mut ledger, &machine, now_ms())? {
                    println!("{machine} is back in service");
                } else {
                    println!("{machine} was not out of order; nothing changed");
                }
            }
            MaintenanceCommand::Status(o) => {
                let (config, ledger) = open(o)?;
                let now = now_ms();
                let machines = task::status(&config, &ledger, now)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "now_ms": now, "machines": machines })
                    )?
                );
            }
        }
        Ok(())
    }
}
