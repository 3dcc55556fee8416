//! The collector as a whole: [`Application::build`] opens everything and binds the HTTP port (port
//! 0 picks a free one, exposed by [`Application::http_addr`]); [`Application::run`] runs until a
//! shutdown signal, then stops reading, lets the writer commit and acknowledge what it holds, and
//! closes the time-series backlog cleanly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, TlsConfiguration, Transport};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::{mqtt_host_port, Config, ConfigError};
use crate::device_keys::DeviceKeys;
use crate::ingest::{self, SiteRules, Writer};
use crate::ledger::{AnyLedger, Ledger, LedgerError, MachineInfo, PgConnection, PgLedger};
use crate::maintenance::task::MaintenanceTask;
use crate::metrics::Metrics;
use crate::timeseries::{TimeSeries, TimeSeriesConfig, TimeSeriesHandle};

/// Why the collector could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}; set http.listen (or --http-listen) to a free address, or port 0 for any")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA file of the broker could not be read.
    #[error("cannot read mqtt.ca_file {path}: {source}")]
    CaFile {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The time-series settings are invalid.
    #[error("timeseries: {0}")]
    TimeSeries(String),
    /// The API tokens file cannot be read.
    #[error("http.tokens_file: {0}")]
    Tokens(#[from] crate::provision::ProvisionError),
    /// The device keys file cannot be read.
    #[error("security.device_keys_file: {0}")]
    DeviceKeys(crate::provision::ProvisionError),
}

/// A collector, built and bound, not yet running.
pub struct Application {
    /// The sites served (one, or a network's); the first carries the process settings
    /// (`[mqtt]`, `[ledger]`, `[http]`), the same in every site of a network.
    sites: Vec<Arc<Config>>,
    /// The network collector's name (`network.name`), in network mode.
    network: Option<String>,
    listener: TcpListener,
    http_addr: SocketAddr,
    store: WriterStore,
    readers: Vec<AnyLedger>,
    maintenance: Vec<AnyLedger>,
    privacy: Vec<AnyLedger>,
    metrics: Arc<Metrics>,
    /// Each site's time-series sink (sites of one tenant share one).
    series: Vec<TimeSeriesHandle>,
    series_tasks: Vec<tokio::task::JoinHandle<crate::timeseries::TimeSeriesStats>>,
}

/// The writer's ledger: one site's, or a network's sites on one PostgreSQL connection.
enum WriterStore {
    One(ingest::OneSite<AnyLedger>),
    Pg(ingest::PgSites),
}

impl ingest::Store for WriterStore {
    fn has_machine(&self, site: usize, machine: &str) -> Result<bool, LedgerError> {
        match self {
            WriterStore::One(s) => s.has_machine(site, machine),
            WriterStore::Pg(s) => s.has_machine(site, machine),
        }
    }

    fn commit(
        &mut self,
        work: &[ingest::SiteWork],
    ) -> Result<Vec<Vec<crate::ledger::Committed>>, LedgerError> {
        match self {
            WriterStore::One(s) => s.commit(work),
            WriterStore::Pg(s) => s.commit(work),
        }
    }
}

/// The ledgers of every role of a network's sites: four PostgreSQL connections in all (writer,
/// API readers, maintenance, purges), each shared by every site.
type RoleLedgers = (WriterStore, Vec<AnyLedger>, Vec<AnyLedger>, Vec<AnyLedger>);

fn open_network_ledgers(sites: &[Arc<Config>]) -> Result<RoleLedgers, StartError> {
    let url = sites
        .first()
        .and_then(|c| c.ledger.url.clone())
        .ok_or_else(|| {
            LedgerError::Column("a network collector needs ledger.url (PostgreSQL)".into())
        })?;
    let writer = PgConnection::connect(&url)?;
    let on_each = |conn: &Arc<PgConnection>| -> Result<Vec<PgLedger>, StartError> {
        sites
            .iter()
            .map(|c| Ok(PgLedger::on(conn, &c.site_id()?, c.badge_directory())?))
            .collect()
    };
    let mut writers = on_each(&writer)?;
    for (c, l) in sites.iter().zip(writers.iter_mut()) {
        register_configured_machines(c, l)?;
    }
    let role = || -> Result<Vec<AnyLedger>, StartError> {
        let conn = PgConnection::connect(&url)?;
        Ok(on_each(&conn)?
            .into_iter()
            .map(|l| AnyLedger::Postgres(Box::new(l)))
            .collect())
    };
    let (readers, maintenance, privacy) = (role()?, role()?, role()?);
    Ok((
        WriterStore::Pg(ingest::PgSites {
            conn: writer,
            sites: writers,
        }),
        readers,
        maintenance,
        privacy,
    ))
}

fn open_site_ledgers(config: &Config) -> Result<RoleLedgers, StartError> {
    let site = config.site_id()?;
    let badges = config.badge_directory();
    let mut writer = AnyLedger::open(&config.ledger, &site, badges.clone())?;
    register_configured_machines(config, &mut writer)?;
    let reader = AnyLedger::open(&config.ledger, &site, badges.clone())?;
    let maintenance = AnyLedger::open(&config.ledger, &site, badges.clone())?;
    let privacy = AnyLedger::open(&config.ledger, &site, badges)?;
    Ok((
        WriterStore::One(ingest::OneSite(writer)),
        vec![reader],
        vec![maintenance],
        vec![privacy],
    ))
}

/// The time-series settings of `config`'s site: `{site}` in `url`, `org` or `bucket` replaced by
/// the site id and `{tenant}` by `site.tenant` (one tenant per site, its backlog in a directory
/// of its own).
pub fn site_timeseries(config: &Config) -> Option<crate::config::TimeSeriesSettings> {
    let mut ts = config.timeseries.clone()?;
    let tenant = config.site.tenant.as_deref().unwrap_or("");
    let backlog = ts.backlog_dir.clone().unwrap_or_else(|| {
        config.ledger.path.parent().map_or_else(
            || "timeseries-backlog".into(),
            |p| p.join("timeseries-backlog"),
        )
    });
    let mut per_site = false;
    for v in [&mut ts.url, &mut ts.org, &mut ts.bucket] {
        let x = v
            .replace("{site}", &config.site.id)
            .replace("{tenant}", tenant);
        per_site |= x != *v;
        *v = x;
    }
    ts.backlog_dir = Some(if per_site {
        backlog.join(&config.site.id)
    } else {
        backlog
    });
    Some(ts)
}

/// One sink per distinct time-series target of `sites`; each site's handle, in order.
type Sinks = (
    Vec<TimeSeriesHandle>,
    Vec<tokio::task::JoinHandle<crate::timeseries::TimeSeriesStats>>,
);

fn start_sinks(sites: &[Arc<Config>]) -> Result<Sinks, StartError> {
    let mut targets: Vec<(crate::config::TimeSeriesSettings, TimeSeriesHandle)> = Vec::new();
    let mut handles = Vec::with_capacity(sites.len());
    let mut tasks = Vec::new();
    for c in sites {
        let Some(ts) = site_timeseries(c) else {
            handles.push(TimeSeriesHandle::disabled());
            continue;
        };
        if let Some((_, h)) = targets.iter().find(|(t, _)| *t == ts) {
            handles.push(h.clone());
            continue;
        }
        let mut tc = TimeSeriesConfig::new(
            &ts.url,
            &ts.org,
            &ts.bucket,
            &ts.token,
            ts.backlog_dir.clone().unwrap_or_default(),
        );
        tc.backlog_max_bytes = ts.backlog_max_mib.saturating_mul(1024 * 1024);
        tc.validate()
            .map_err(|e| StartError::TimeSeries(e.to_string()))?;
        let (h, task) = TimeSeries::spawn(tc).map_err(|e| StartError::TimeSeries(e.to_string()))?;
        tracing::info!(url = %ts.url, org = %ts.org, bucket = %ts.bucket, "time series enabled");
        handles.push(h.clone());
        tasks.push(task);
        targets.push((ts, h));
    }
    if targets.is_empty() {
        tracing::warn!(
            "no [timeseries] configured: running without a time-series store (no Grafana data)"
        );
    }
    Ok((handles, tasks))
}

impl Application {
    /// Validates the config, opens the ledger (migrating it), registers the configured machines,
    /// starts the time-series sink (or says it runs without one) and binds the HTTP port.
    pub async fn build(config: Config) -> Result<Application, StartError> {
        config.validate()?;
        Application::build_sites(vec![Arc::new(config)], None).await
    }

    /// A network collector ([`crate::network`]): every site of `network` on its shared
    /// PostgreSQL ledger, through one MQTT connection, one writer and one HTTP port (the network
    /// view at `/`, each site's API and page under `/sites/{id}/`).
    pub async fn build_network(
        network: crate::network::Network,
    ) -> Result<Application, StartError> {
        for c in &network.sites {
            c.validate()?;
        }
        let sites = network.sites.into_iter().map(Arc::new).collect();
        Application::build_sites(sites, Some(network.name)).await
    }

    async fn build_sites(
        sites: Vec<Arc<Config>>,
        network: Option<String>,
    ) -> Result<Application, StartError> {
        let Some(first) = sites.first().cloned() else {
            return Err(StartError::Config(crate::config::err(
                "network.sites",
                "no site to serve",
                "sites = [\"atelier-lyon\"]",
            )));
        };
        // Opened off the async threads: the PostgreSQL client blocks.
        let (store, readers, maintenance, privacy) = {
            let (sites, network) = (sites.clone(), network.is_some());
            tokio::task::spawn_blocking(move || {
                if network {
                    open_network_ledgers(&sites)
                } else {
                    open_site_ledgers(&sites[0])
                }
            })
            .await
            .map_err(|e| LedgerError::Column(format!("opening the ledger: {e}")))??
        };
        if first.ledger.url.is_some() {
            tracing::info!(sites = sites.len(), "ledger: PostgreSQL (ledger.url)");
        }
        let (series, series_tasks) = start_sinks(&sites)?;

        let listen = first.http.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
        Ok(Application {
            sites,
            network,
            listener,
            http_addr,
            store,
            readers,
            maintenance,
            privacy,
            metrics: Arc::new(Metrics::default()),
            series,
            series_tasks,
        })
    }

    /// The bound HTTP address (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The collector's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    fn mqtt_options(&self) -> Result<MqttOptions, StartError> {
        let c = &self.sites[0];
        // Validated in build().
        let (host, port, tls) =
            mqtt_host_port(&c.mqtt.url).unwrap_or(("127.0.0.1".into(), 1883, false));
        let mut o = MqttOptions::new(c.client_id(), host, port);
        o.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(c.keep_alive())
            .set_max_packet_size(c.mqtt.max_packet_bytes, 64 * 1024)
            .set_request_channel_capacity(10_000)
            .set_inflight(100);
        if let (Some(u), p) = (&c.mqtt.username, &c.mqtt.password) {
            o.set_credentials(u.clone(), p.clone().unwrap_or_default());
        }
        if tls {
            let transport = match &c.mqtt.ca_file {
                Some(path) => {
                    let ca = std::fs::read(path).map_err(|source| StartError::CaFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                    Transport::tls_with_config(TlsConfiguration::Simple {
                        ca,
                        alpn: None,
                        client_auth: None,
                    })
                }
                None => Transport::tls_with_default_config(),
            };
            o.set_transport(transport);
        }
        Ok(o)
    }

    /// Runs until `shutdown` is cancelled, then stops in order: stop reading from the broker, let
    /// the writer commit and acknowledge, stop the HTTP server, flush the time series.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        // rustls needs a process-wide crypto provider; ring is the one in the graph.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = self.mqtt_options()?;
        let Application {
            sites,
            network,
            listener,
            store,
            readers,
            maintenance,
            privacy,
            metrics,
            series,
            series_tasks,
            ..
        } = self;
        let config = sites[0].clone();
        let site_ids = sites
            .iter()
            .map(|c| c.site_id())
            .collect::<Result<Vec<_>, _>>()?;
        let topics = ingest::subscriptions_of(&site_ids, config.mqtt.shared_group.as_deref());
        let (client, eventloop) = AsyncClient::new(options, 10_000);
        let (tx, rx) = mpsc::channel(config.ledger.batch_max.saturating_mul(4).max(64));
        let writer_done = CancellationToken::new();

        let mut ingests = Vec::with_capacity(sites.len());
        for ((c, site), series) in sites.iter().zip(&site_ids).zip(&series) {
            ingests.push(site_ingest(c, site, series.clone())?);
        }
        let activity: Vec<_> = ingests.iter().map(|i| i.activity.clone()).collect();
        // One site reacts within a second; a network collector spaces each site's evaluations.
        let react = Duration::from_secs(if network.is_some() { 10 } else { 1 });
        let writer = Writer::new(
            store,
            ingests,
            client.clone(),
            metrics.clone(),
            config.ledger.batch_max,
        )
        .stop_retrying_on(shutdown.clone());
        let rt = tokio::runtime::Handle::current();
        let done = writer_done.clone();
        let writer_thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || ingest::run_writer(writer, rx, rt, done))
            .map_err(|source| StartError::Listen {
                addr: config.http.listen,
                source,
            })?;

        let mut tasks = Vec::new();
        for (((c, ledger), series), activity) in
            sites.iter().zip(maintenance).zip(&series).zip(activity)
        {
            tasks.push(tokio::spawn(
                MaintenanceTask {
                    config: c.clone(),
                    ledger: Box::new(ledger),
                    client: client.clone(),
                    metrics: metrics.clone(),
                    series: series.clone(),
                    now_ms: ingest::now_ms,
                    activity,
                    react,
                }
                .run(shutdown.clone()),
            ));
        }
        for (c, ledger) in sites.iter().zip(privacy) {
            tasks.push(tokio::spawn(crate::privacy::run_purges(
                c.clone(),
                ledger,
                ingest::now_ms,
                shutdown.clone(),
            )));
        }

        let mqtt = tokio::spawn(ingest::run_mqtt(
            client,
            eventloop,
            topics,
            tx,
            metrics.clone(),
            shutdown.clone(),
            writer_done.clone(),
        ));

        let tokens = match &config.http.tokens_file {
            Some(path) => Some(Arc::new(crate::auth::Tokens::new(path.clone())?)),
            None => {
                if !config.http.listen.ip().is_loopback() {
                    tracing::warn!(
                        listen = %config.http.listen,
                        "the HTTP API is open to the network without tokens: set http.tokens_file (docs/SECURITY.md)"
                    );
                }
                None
            }
        };
        let guard = |routes: axum::Router| match &tokens {
            Some(t) => routes.layer(axum::middleware::from_fn_with_state(
                t.clone(),
                crate::auth::require_token,
            )),
            None => routes,
        };
        let mut site_readers = Vec::with_capacity(sites.len());
        let mut site_routes = Vec::with_capacity(sites.len());
        let mut process = None;
        for ((c, reader), series) in sites.iter().zip(readers).zip(&series) {
            let state = ApiState {
                ledger: Arc::new(Mutex::new(Box::new(reader) as Box<dyn Ledger>)),
                metrics: metrics.clone(),
                series: series.clone(),
                site: (c.site.id.clone(), c.site.name.clone()),
                billing: crate::billing::invoice::Billing::from_config(c)?.map(Arc::new),
                base: match &network {
                    Some(_) => format!("/sites/{}/", c.site.id),
                    None => "/".into(),
                },
            };
            site_readers.push((c.clone(), state.ledger.clone()));
            process.get_or_insert_with(|| api::process_router(state.clone()));
            let maintenance_routes = api::maintenance_router(state.ledger.clone(), c.clone());
            let state_ledger = state.ledger.clone();
            site_routes.push((
                c.site.id.clone(),
                guard(
                    api::router(state)
                        .merge(maintenance_routes)
                        .merge(api::costs_router(state_ledger, c.clone()))
                        .merge(api::privacy_router(c.clone())),
                ),
            ));
        }
        let app = match &network {
            None => site_routes.pop().map(|(_, r)| r).unwrap_or_default(),
            Some(name) => {
                let mut root = guard(
                    crate::netview::router(crate::netview::NetState {
                        name: name.clone(),
                        sites: site_readers,
                        now_ms: ingest::now_ms,
                    })
                    .merge(process.unwrap_or_default()),
                );
                for (id, r) in site_routes {
                    // The page is at /sites/{id} (its links are relative to <base>); with a
                    // trailing slash, redirected there.
                    let page = format!("/sites/{id}");
                    root = root.nest(&page, r).route(
                        &format!("{page}/"),
                        axum::routing::get(move || async move {
                            axum::response::Redirect::permanent(&page)
                        }),
                    );
                }
                root
            }
        };
        let http_shutdown = writer_done.clone();
        let http = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(http_shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });

        for t in tasks {
            let _ = t.await;
        }
        let _ = mqtt.await;
        // The MQTT task ends after the writer finished (or the connection is gone).
        let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        writer_done.cancel();
        let _ = http.await;
        for s in &series {
            s.close();
        }
        drop(series);
        for task in series_tasks {
            if tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .is_err()
            {
                tracing::warn!("time-series sink did not finish within 15 s");
            }
        }
        tracing::info!("collector stopped");
        Ok(())
    }
}

/// What the writer knows of one site: its rules, machines, members, sink and device keys.
fn site_ingest(
    config: &Config,
    site: &fabmeter_protocol::Id,
    series: TimeSeriesHandle,
) -> Result<ingest::SiteIngest, StartError> {
    let device_keys = match &config.security.device_keys_file {
        Some(path) => {
            let keys = DeviceKeys::new(path.clone()).map_err(StartError::DeviceKeys)?;
            tracing::info!(
                site = %site,
                path = %path.display(),
                machines = keys.current().len(),
                required = config.security.require_signed_events,
                "event signatures checked with the device keys file"
            );
            Some(keys)
        }
        None => {
            tracing::info!(site = %site, "no security.device_keys_file: event signatures are not checked");
            None
        }
    };
    Ok(ingest::SiteIngest {
        rules: SiteRules {
            site: site.clone(),
            auto_register: config.site.auto_register,
            signing: ingest::Signing {
                required: config.security.require_signed_events,
                keys: Arc::default(),
            },
        },
        kinds: config
            .machines
            .iter()
            .map(|m| (m.id.clone(), m.kind.clone()))
            .collect(),
        members: config.badge_directory(),
        series,
        device_keys,
        activity: Arc::default(),
    })
}

/// Registers (or updates) the machines of the configuration in the ledger.
pub fn register_configured_machines(
    config: &Config,
    ledger: &mut dyn Ledger,
) -> Result<(), LedgerError> {
    let machines: Vec<MachineInfo> = config
        .machines
        .iter()
        .map(|m| MachineInfo {
            id: m.id.clone(),
            name: if m.name.is_empty() {
                m.id.clone()
            } else {
                m.name.clone()
            },
            kind: m.kind.clone(),
            source: "config".into(),
        })
        .collect();
    ledger.register_machines(&machines, ingest::now_ms())
}

/// Resolves on Ctrl-C or SIGTERM: the signal to stop gracefully (for the binaries).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ts(site: &str, tenant: Option<&str>, url: &str, bucket: &str) -> Config {
        let mut c = Config::for_site(site);
        c.site.tenant = tenant.map(str::to_owned);
        c.ledger.path = "/data/ledger.sqlite".into();
        c.timeseries = Some(crate::config::TimeSeriesSettings {
            url: url.into(),
            org: "fabmeter".into(),
            bucket: bucket.into(),
            token: String::new(),
            backlog_dir: None,
            backlog_max_mib: 1,
        });
        c
    }

    #[test]
    fn each_site_gets_its_tenant_and_backlog() {
        let c = with_ts(
            "lyon",
            Some("17"),
            "http://vm:8480/insert/{tenant}/influx",
            "fm",
        );
        c.validate().expect("valid");
        let ts = site_timeseries(&c).expect("timeseries");
        assert_eq!(ts.url, "http://vm:8480/insert/17/influx");
        assert_eq!(
            ts.backlog_dir.as_deref(),
            Some(std::path::Path::new("/data/timeseries-backlog/lyon"))
        );
        let c = with_ts("brest", None, "http://influx:8086", "fm-{site}");
        let ts = site_timeseries(&c).expect("timeseries");
        assert_eq!(
            (ts.url.as_str(), ts.bucket.as_str()),
            ("http://influx:8086", "fm-brest")
        );
        // One shared target: one shared backlog.
        let c = with_ts("brest", None, "http://influx:8086", "fm");
        let ts = site_timeseries(&c).expect("timeseries");
        assert_eq!(
            ts.backlog_dir.as_deref(),
            Some(std::path::Path::new("/data/timeseries-backlog"))
        );
        // {tenant} without a tenant, or a tenant that would change the URL's shape.
        let e = with_ts("brest", None, "http://vm/insert/{tenant}/influx", "fm")
            .validate()
            .expect_err("no tenant");
        assert!(e.to_string().contains("site.tenant"), "{e}");
        let e = with_ts(
            "brest",
            Some("1/../2"),
            "http://vm/insert/{tenant}/influx",
            "fm",
        )
        .validate()
        .expect_err("bad tenant");
        assert!(e.to_string().contains("not a tenant"), "{e}");
    }
}
