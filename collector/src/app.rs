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
use crate::ledger::{AnyLedger, Ledger, LedgerError, MachineInfo};
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
    config: Config,
    listener: TcpListener,
    http_addr: SocketAddr,
    writer_ledger: AnyLedger,
    reader_ledger: AnyLedger,
    maintenance_ledger: AnyLedger,
    privacy_ledger: AnyLedger,
    metrics: Arc<Metrics>,
    series: TimeSeriesHandle,
    series_task: Option<tokio::task::JoinHandle<crate::timeseries::TimeSeriesStats>>,
}

impl Application {
    /// Validates the config, opens the ledger (migrating it), registers the configured machines,
    /// starts the time-series sink (or says it runs without one) and binds the HTTP port.
    pub async fn build(config: Config) -> Result<Application, StartError> {
        config.validate()?;
        let site = config.site_id()?;
        let badges = config.badge_directory();
        // Opened off the async threads: the PostgreSQL client blocks.
        let (writer_ledger, reader_ledger, maintenance_ledger, privacy_ledger) = {
            let (config, site) = (config.clone(), site.clone());
            tokio::task::spawn_blocking(move || -> Result<_, LedgerError> {
                let mut writer = AnyLedger::open(&config.ledger, &site, badges.clone())?;
                register_configured_machines(&config, &mut writer)?;
                let reader = AnyLedger::open(&config.ledger, &site, badges.clone())?;
                let maintenance = AnyLedger::open(&config.ledger, &site, badges.clone())?;
                let privacy = AnyLedger::open(&config.ledger, &site, badges)?;
                Ok((writer, reader, maintenance, privacy))
            })
            .await
            .map_err(|e| LedgerError::Column(format!("opening the ledger: {e}")))??
        };
        if config.ledger.url.is_some() {
            tracing::info!(site = %site, "ledger: PostgreSQL (ledger.url)");
        }

        let (series, series_task) = match &config.timeseries {
            Some(ts) => {
                let backlog_dir = ts.backlog_dir.clone().unwrap_or_else(|| {
                    config.ledger.path.parent().map_or_else(
                        || "timeseries-backlog".into(),
                        |p| p.join("timeseries-backlog"),
                    )
                });
                let mut tc =
                    TimeSeriesConfig::new(&ts.url, &ts.org, &ts.bucket, &ts.token, backlog_dir);
                tc.backlog_max_bytes = ts.backlog_max_mib.saturating_mul(1024 * 1024);
                tc.validate()
                    .map_err(|e| StartError::TimeSeries(e.to_string()))?;
                let (h, task) =
                    TimeSeries::spawn(tc).map_err(|e| StartError::TimeSeries(e.to_string()))?;
                tracing::info!(url = %ts.url, bucket = %ts.bucket, "time series enabled");
                (h, Some(task))
            }
            None => {
                tracing::warn!("no [timeseries] configured: running without a time-series store (no Grafana data)");
                (TimeSeriesHandle::disabled(), None)
            }
        };

        let listener = TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.http.listen,
            source,
        })?;
        Ok(Application {
            config,
            listener,
            http_addr,
            writer_ledger,
            reader_ledger,
            maintenance_ledger,
            privacy_ledger,
            metrics: Arc::new(Metrics::default()),
            series,
            series_task,
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
        let c = &self.config;
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
            config,
            listener,
            writer_ledger,
            reader_ledger,
            maintenance_ledger,
            privacy_ledger,
            metrics,
            series,
            series_task,
            ..
        } = self;
        let config = Arc::new(config);
        let site = config.site_id()?;
        let topics = ingest::subscriptions(&site, config.mqtt.shared_group.as_deref());
        let (client, eventloop) = AsyncClient::new(options, 10_000);
        let (tx, rx) = mpsc::channel(config.ledger.batch_max.saturating_mul(4).max(64));
        let writer_done = CancellationToken::new();

        let device_keys = match &config.security.device_keys_file {
            Some(path) => {
                let keys = DeviceKeys::new(path.clone()).map_err(StartError::DeviceKeys)?;
                tracing::info!(
                    path = %path.display(),
                    machines = keys.current().len(),
                    required = config.security.require_signed_events,
                    "event signatures checked with the device keys file"
                );
                Some(keys)
            }
            None => {
                tracing::info!("no security.device_keys_file: event signatures are not checked");
                None
            }
        };
        let writer = Writer {
            ledger: writer_ledger,
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
            client: client.clone(),
            series: series.clone(),
            metrics: metrics.clone(),
            batch_max: config.ledger.batch_max,
            device_keys,
        };
        let rt = tokio::runtime::Handle::current();
        let done = writer_done.clone();
        let writer_thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || ingest::run_writer(writer, rx, rt, done))
            .map_err(|source| StartError::Listen {
                addr: config.http.listen,
                source,
            })?;

        let maintenance = tokio::spawn(
            MaintenanceTask {
                config: config.clone(),
                ledger: Box::new(maintenance_ledger),
                client: client.clone(),
                metrics: metrics.clone(),
                series: series.clone(),
                now_ms: ingest::now_ms,
            }
            .run(shutdown.clone()),
        );

        let purges = tokio::spawn(crate::privacy::run_purges(
            config.clone(),
            privacy_ledger,
            ingest::now_ms,
            shutdown.clone(),
        ));

        let mqtt = tokio::spawn(ingest::run_mqtt(
            client,
            eventloop,
            topics,
            tx,
            metrics.clone(),
            shutdown.clone(),
            writer_done.clone(),
        ));

        let state = ApiState {
            ledger: Arc::new(Mutex::new(Box::new(reader_ledger) as Box<dyn Ledger>)),
            metrics: metrics.clone(),
            series: series.clone(),
            site: (config.site.id.clone(), config.site.name.clone()),
            billing: crate::billing::invoice::Billing::from_config(&config)?.map(Arc::new),
        };
        let maintenance_routes = api::maintenance_router(state.ledger.clone(), config.clone());
        let routes = api::router(state)
            .merge(maintenance_routes)
            .merge(api::privacy_router(config.clone()));
        let app = match &config.http.tokens_file {
            Some(path) => {
                let tokens = Arc::new(crate::auth::Tokens::new(path.clone())?);
                routes.layer(axum::middleware::from_fn_with_state(
                    tokens,
                    crate::auth::require_token,
                ))
            }
            None => {
                if !config.http.listen.ip().is_loopback() {
                    tracing::warn!(
                        listen = %config.http.listen,
                        "the HTTP API is open to the network without tokens: set http.tokens_file (docs/SECURITY.md)"
                    );
                }
                routes
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

        let _ = maintenance.await;
        let _ = purges.await;
        let _ = mqtt.await;
        // The MQTT task ends after the writer finished (or the connection is gone).
        let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        writer_done.cancel();
        let _ = http.await;
        series.close();
        drop(series);
        if let Some(task) = series_task {
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
