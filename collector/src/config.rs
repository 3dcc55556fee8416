//! The collector's one typed configuration: defaults, then a TOML file, then `FABMETER_*`
//! environment variables and command-line flags (see `main.rs`), validated before start.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fabmeter_protocol::message::Sensing;
use fabmeter_protocol::{BadgeHash, Id};
use serde::{Deserialize, Serialize};

/// A configuration problem: which key (with its table), where in the file, what is wrong, and a
/// valid example. Displayed as `site.toml:6:16: config key `mqtt.keep_alive_s`: ...; for example:
/// ...` when the file and position are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `machines[2].id`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// A valid example value.
    pub example: String,
    /// 1-based (line, column) in the TOML text, when the problem was found while parsing.
    pub at: Option<(usize, usize)>,
    /// The file, when known (see [`ConfigError::in_file`]).
    pub file: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.at) {
            (Some(file), Some((line, col))) => write!(f, "{file}:{line}:{col}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some((line, col))) => write!(f, "line {line}, column {col}: ")?,
            (None, None) => {}
        }
        write!(
            f,
            "config key `{}`: {}; for example: {}",
            self.key, self.problem, self.example
        )
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// The same error with the line and column of its key in `text` (for an error of
    /// [`Config::validate`], found after parsing), when the key is written there.
    pub fn located(mut self, text: &str) -> Self {
        if self.at.is_none() {
            self.at = find_key(text, &self.key);
        }
        self
    }

    /// The same error, naming the file it was found in.
    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }
}

pub(crate) fn err(
    key: impl Into<String>,
    problem: impl Into<String>,
    example: &str,
) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
        example: example.into(),
        at: None,
        file: None,
    }
}

/// 1-based (line, column) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The dotted key written on the line holding byte `offset` (`mqtt.keep_alive_s`,
/// `machines[1].tariff`), from the table headers above it; empty when the line holds none.
fn key_at(text: &str, offset: usize) -> String {
    let (line_no, _) = line_col(text, offset);
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut key = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = arrays.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
        } else if i + 1 == line_no {
            if let Some((k, _)) = t.split_once('=') {
                key = k.trim().trim_matches('"').to_owned();
            }
        }
        if i + 1 == line_no {
            break;
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key,
        (false, false) => format!("{table}.{key}"),
    }
}

/// 1-based (line, column) where the dotted `key` is written in `text` (`machines[1].tariff`), or
/// the header of its table when the key itself is not written.
fn find_key(text: &str, key: &str) -> Option<(usize, usize)> {
    let mut offset = 0;
    let mut table_at = None;
    for line in text.split_inclusive('\n') {
        let here = key_at(text, offset);
        let t = line.trim_start();
        let col = line.len() - t.len() + 1;
        let line_no = text[..offset].matches('\n').count() + 1;
        if here == key && !t.starts_with('[') && t.contains('=') {
            return Some((line_no, col));
        }
        if t.starts_with('[')
            && table_at.is_none()
            && key.starts_with(here.as_str())
            && !here.is_empty()
        {
            table_at = Some((line_no, col));
        }
        offset += line.len();
    }
    table_at
}

/// The default value of a dotted key, as TOML (`30` for `mqtt.keep_alive_s`), if it has one.
fn default_of(key: &str) -> Option<String> {
    let defaults: toml::Table = toml::from_str(&Config::for_site("atelier").to_toml()).ok()?;
    let mut v = defaults.get(key.split('.').next()?)?;
    for part in key.split('.').skip(1) {
        v = v.get(part)?;
    }
    Some(v.to_string())
}

/// Parses TOML text into `T` (a site file, a network collector file), with the errors of
/// [`Config::from_toml`].
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = match toml::Deserializer::parse(text) {
        Ok(de) => de,
        Err(e) => {
            let at = e.span().map(|s| line_col(text, s.start));
            let key = e
                .span()
                .map(|s| key_at(text, s.start))
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| "(syntax)".into());
            return Err(ConfigError {
                key,
                problem: format!("TOML syntax: {}", e.message().trim().replace('\n', "; ")),
                example:
                    "fix the syntax at that position: strings in double quotes (name = \"Laser\"), \
                          numbers bare (keep_alive_s = 30), tables as [mqtt] or [[machines]]"
                        .into(),
                at,
                file: None,
            });
        }
    };
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let span = inner.span();
        let at = span.as_ref().map(|s| line_col(text, s.start));
        let message = inner.message().trim().replace('\n', "; ");
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            let table = if path == "." || path.is_empty() {
                span.as_ref()
                    .map(|s| key_at(text, s.start))
                    .and_then(|k| k.rsplit_once('.').map(|(t, _)| t.to_owned()))
                    .unwrap_or_default()
            } else {
                // serde's path ends at the unknown key itself.
                let suffix = format!(".{field}");
                match path.strip_suffix(&suffix) {
                    Some(t) => t.to_owned(),
                    None if path == field => String::new(),
                    None => path.clone(),
                }
            };
            let key = if table.is_empty() {
                field.to_owned()
            } else {
                format!("{table}.{field}")
            };
            let expected = message.split_once(", expected ").map_or("", |(_, x)| x);
            let place = if table.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in [{table}]")
            };
            return ConfigError {
                key,
                problem: format!("unknown key `{field}` {place}"),
                example: format!(
                    "remove it or correct its spelling; the keys {place} are {expected} \
                     (`fabmeter-collector print-config` prints every key with its default)"
                ),
                at,
                file: None,
            };
        }
        let key = if path == "." || path.is_empty() {
            span.as_ref()
                .map(|s| key_at(text, s.start))
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| "(file)".into())
        } else {
            path
        };
        let example = match default_of(&key) {
            Some(d) => format!("{key} = {d} (the default)"),
            None => "see `fabmeter-collector print-config` for every key with its default".into(),
        };
        let problem = match message.strip_prefix("invalid type: ") {
            Some(rest) => match rest.split_once(", expected ") {
                Some((got, want)) => {
                    let got = got.split(' ').next().unwrap_or(got);
                    format!("wrong type: expected {want}, found a {got}")
                }
                None => format!("wrong type: {rest}"),
            },
            None => message,
        };
        ConfigError {
            key,
            problem,
            example,
            at,
            file: None,
        }
    })
}

/// The whole collector configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The workshop this collector serves.
    pub site: SiteConfig,
    /// The MQTT broker.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The broker accounts this site manages (`fabmeter-collector provision`, docs/SECURITY.md).
    #[serde(default)]
    pub broker: BrokerConfig,
    /// The ledger (system of record).
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// The time-series store; absent: the collector runs without one and says so at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeseries: Option<TimeSeriesSettings>,
    /// The HTTP API and web page.
    #[serde(default)]
    pub http: HttpConfig,
    /// The machines of the site.
    #[serde(default)]
    pub machines: Vec<MachineConfig>,
    /// The members of the site.
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    /// Billing (tariffs, plans, invoices: docs/BILLING.md); absent: no billing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<crate::billing::BillingConfig>,
    /// The retained configs the collector publishes to devices.
    #[serde(default)]
    pub devices: DevicesConfig,
    /// Service plans, alerts and locks (docs/MAINTENANCE.md).
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// Event signatures (docs/SECURITY.md, docs/PROTOCOL.md "Signatures").
    #[serde(default)]
    pub security: SecurityConfig,
    /// Retention of personal data (docs/SECURITY.md "Personal data").
    #[serde(default)]
    pub privacy: PrivacyConfig,
    /// Cost recovery: opening hours and machine costs (docs/COSTS.md); absent: no costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub costs: Option<crate::costs::CostsConfig>,
}

/// `[security]`: per-device keys that sign events.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Refuse every event without a valid signature (reason `signature`). Off (the default, while
    /// devices are being provisioned): unsigned events are accepted, and a signed event must
    /// verify against its machine's key when the machine has one. The default stays off so that
    /// an upgrade never starts refusing an existing unsigned site's events; new sites turn it on
    /// (site.example.toml and docs/SECURITY.md do).
    pub require_signed_events: bool,
    /// The device keys (`machine = "<64 hex digits>"`, mode 0600), written by `fabmeter-collector
    /// provision device` and re-read when it changes. Absent: no keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_keys_file: Option<PathBuf>,
}

/// Shortest retention: a 31-day billing period, the invoice run a few days after, a margin.
pub const MIN_RETENTION_DAYS: u32 = 62;

/// `[privacy]`: how long personal data no invoice needs is kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Days after which sessions, their raw events and `access_denied` events that no billing
    /// run settled are purged (daily, and by `privacy purge`); at least [`MIN_RETENTION_DAYS`].
    pub retention_days: u32,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            retention_days: 400,
        }
    }
}

/// `[devices]`: what goes into each machine's retained `config` (docs/PROTOCOL.md "config").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Publish each configured machine's retained config (sensing, allow-list, lock). Off when
    /// something else (e.g. the simulator) publishes configs.
    pub publish_configs: bool,
    /// Seconds between `session_progress` events (1 to 3600).
    pub progress_s: u32,
    /// Idle seconds that end a session; 0: never.
    pub idle_timeout_s: u32,
    /// Longest session, seconds; 0: never.
    pub max_session_s: u32,
    /// Seconds between telemetry samples; 0: none.
    pub telemetry_s: u32,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            publish_configs: true,
            progress_s: 60,
            idle_timeout_s: 900,
            max_session_s: 43_200,
            telemetry_s: 0,
        }
    }
}

/// `[maintenance]`: service plans, alerts and the webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Seconds between two evaluations of every plan (also re-evaluated after each commit).
    pub check_s: u64,
    /// URL that receives each alert as a JSON POST; absent: MQTT alerts only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Attempts per alert before the webhook gives up (backoff doubles from 1 s, at most 60 s).
    pub webhook_attempts: u32,
    /// The service plans.
    pub plans: Vec<PlanConfig>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            check_s: 30,
            webhook_url: None,
            webhook_attempts: 5,
            plans: Vec::new(),
        }
    }
}

/// `[[maintenance.plans]]`: a service every N busy hours and/or every N days.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Plan name, e.g. `lens-cleaning` (same rules as ids).
    pub name: String,
    /// The machines it applies to (ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<String>,
    /// The kinds it applies to (every machine of these kinds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Due after this many busy hours since the last service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_busy_h: Option<f64>,
    /// Due this many days after the last service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_days: Option<f64>,
    /// "Due soon" once this fraction of an interval is left (0.1: the last 10 %).
    #[serde(default = "default_warn_before")]
    pub warn_before: f64,
    /// When overdue, lock the machine (new sessions refused with `maintenance_lock`).
    #[serde(default)]
    pub lock_when_overdue: bool,
}

fn default_warn_before() -> f64 {
    0.1
}

/// `[site]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Site id as in topics, e.g. `atelier-lyon`.
    pub id: String,
    /// Human name.
    #[serde(default)]
    pub name: String,
    /// Register machines that publish but are not listed (true), or dead-letter their messages (false).
    #[serde(default)]
    pub auto_register: bool,
    /// The site's time-series tenant, put for `{tenant}` in `timeseries.url`, `org` or `bucket`:
    /// a VictoriaMetrics cluster account (`/insert/{tenant}/influx`, a number), an InfluxDB org
    /// or bucket (docs/SCALING.md "Time series").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// `[mqtt]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    pub url: String,
    /// Fixed client id, so the broker keeps the session (and queued QoS 1 messages) across restarts.
    /// Empty: `fm-collector-{site}`.
    pub client_id: String,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, if the broker wants one.
    pub password: Option<String>,
    /// PEM file of the CA that signed the broker's certificate (TLS); absent: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Keep-alive interval, seconds.
    pub keep_alive_s: u64,
    /// MQTT 5 shared-subscription group for several collectors of one site (`$share/{group}/...`);
    /// absent: a plain subscription.
    pub shared_group: Option<String>,
    /// Largest MQTT packet the collector reads (default 2 MiB). A payload over its channel's
    /// limit but within this is a dead letter `too_large`; a packet over this cannot be read at
    /// all (the connection fails and the broker redelivers it), so the broker must refuse
    /// messages well below it: the `message_size_limit` that `provision` writes is
    /// [`BROKER_MESSAGE_SIZE_LIMIT`].
    pub max_packet_bytes: usize,
}

/// The `message_size_limit` `provision` writes into `mosquitto.conf`: 16 KiB, four times the
/// largest legitimate payload (`MAX_CONFIG_PAYLOAD`, 4 KiB), far below `mqtt.max_packet_bytes`.
pub const BROKER_MESSAGE_SIZE_LIMIT: usize = 16 * 1024;

/// Default `mqtt.max_packet_bytes`.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 2 * 1024 * 1024;

/// Largest `mqtt.max_packet_bytes` (MQTT's own packet limit is 256 MiB).
pub const MAX_MAX_PACKET_BYTES: usize = 256 * 1024 * 1024;

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: String::new(),
            username: None,
            password: None,
            ca_file: None,
            keep_alive_s: 30,
            shared_group: None,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
        }
    }
}

/// `[broker]`: the Mosquitto files that `fabmeter-collector provision` maintains.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Mosquitto `password_file` (mosquitto_passwd format); created if missing.
    pub password_file: Option<PathBuf>,
    /// Mosquitto `acl_file`, rewritten from the machines of the site file.
    pub acl_file: Option<PathBuf>,
    /// The broker URL as devices reach it (written into their credentials); absent: `mqtt.url`.
    pub device_url: Option<String>,
    /// The CA file devices verify the broker with (written into their credentials).
    pub device_ca_file: Option<PathBuf>,
    /// The whole `mosquitto.conf` that `provision` writes (listeners, authentication, ACL,
    /// persistence on every change, queue and size limits, client ids confined to usernames:
    /// docs/COLLECTOR.md "Broker setup"); absent: none is written.
    pub conf_file: Option<PathBuf>,
    /// Mosquitto's `persistence_location` in that file; absent: `/var/lib/mosquitto/`.
    pub persistence_location: Option<PathBuf>,
    /// Certificate of an `mqtts://` listener (PEM), required when `mqtt.url` or
    /// `broker.device_url` is `mqtts://`.
    pub tls_certfile: Option<PathBuf>,
    /// Private key of an `mqtts://` listener (PEM).
    pub tls_keyfile: Option<PathBuf>,
}

/// `[ledger]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// SQLite file (created with its directory if missing); unused when `url` is set.
    pub path: PathBuf,
    /// A shared PostgreSQL ledger instead of the SQLite file, e.g.
    /// `postgres://fabmeter@db.example/fabmeter` (docs/SCALING.md): one database for many sites
    /// and several collectors. The schema is created or migrated at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Most messages committed in one transaction (default 16000: larger transactions write fewer
    /// pages per event, docs/BENCHMARKS.md "Ingest"; at low rates batches stay small anyway).
    pub batch_max: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            path: PathBuf::from("fabmeter-data/ledger.sqlite"),
            url: None,
            batch_max: 16_000,
        }
    }
}

/// `[timeseries]`: an InfluxDB 2 API endpoint (InfluxDB 2.x/3.x, or VictoriaMetrics).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimeSeriesSettings {
    /// Base URL, e.g. `http://127.0.0.1:8086` (a path in it is ignored by the client).
    pub url: String,
    /// Organisation.
    #[serde(default = "default_org")]
    pub org: String,
    /// Bucket.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// API token.
    #[serde(default)]
    pub token: String,
    /// Directory of the on-disk backlog kept while the store is down; default: beside the ledger.
    #[serde(default)]
    pub backlog_dir: Option<PathBuf>,
    /// Largest backlog in MiB.
    #[serde(default = "default_backlog_mib")]
    pub backlog_max_mib: u64,
}

fn default_org() -> String {
    "fabmeter".into()
}
fn default_bucket() -> String {
    "fabmeter".into()
}
fn default_backlog_mib() -> u64 {
    256
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// API tokens (hashes), managed by `fabmeter-collector token`; when set, the API requires a
    /// bearer token (docs/SECURITY.md). Absent: the API is open.
    pub tokens_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens_file: None,
        }
    }
}

/// `[[machines]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Machine id as in topics, e.g. `laser-1`.
    pub id: String,
    /// Human name.
    #[serde(default)]
    pub name: String,
    /// Kind (`laser`, `printer-3d`, `cnc`, `saw`...): a low-cardinality tag in time series, and the
    /// key of tariffs and service plans.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Tariff name (billing).
    #[serde(default)]
    pub tariff: Option<String>,
    /// Sensing parameters sent to the device in its retained config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensing: Option<Sensing>,
}

fn default_kind() -> String {
    "machine".into()
}

/// `[[members]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Member id, e.g. `alice`.
    pub id: String,
    /// Human name.
    #[serde(default)]
    pub name: String,
    /// Badge hashes (16 hex digits, see docs/PROTOCOL.md "Badges").
    #[serde(default)]
    pub badges: Vec<String>,
}

impl Config {
    /// A minimal valid configuration for `site`, all else default.
    pub fn for_site(site: &str) -> Self {
        Config {
            site: SiteConfig {
                id: site.into(),
                name: String::new(),
                auto_register: false,
                tenant: None,
            },
            mqtt: MqttConfig::default(),
            broker: BrokerConfig::default(),
            ledger: LedgerConfig::default(),
            timeseries: None,
            http: HttpConfig::default(),
            machines: Vec::new(),
            members: Vec::new(),
            billing: None,
            devices: DevicesConfig::default(),
            maintenance: MaintenanceConfig::default(),
            security: SecurityConfig::default(),
            privacy: PrivacyConfig::default(),
            costs: None,
        }
    }

    /// Parses TOML text. Every error names the key with its table (`mqtt.keep_alive_s`), its
    /// line and column, and a fix: a value of the wrong type, an unknown key, a TOML syntax error.
    /// [`ConfigError::in_file`] adds the file name.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        parse_toml(text)
    }

    /// The configuration as TOML (for `print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// Checks everything that types cannot; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Id::new(&self.site.id)
            .map_err(|e| err("site.id", format!("site id {e}"), "\"atelier-lyon\""))?;
        let url = &self.mqtt.url;
        if !(url.starts_with("mqtt://") || url.starts_with("mqtts://")) {
            return Err(err(
                "mqtt.url",
                format!("{url:?} is not an mqtt:// or mqtts:// URL"),
                "\"mqtt://127.0.0.1:1883\"",
            ));
        }
        if mqtt_host_port(url).is_none() {
            return Err(err(
                "mqtt.url",
                format!("{url:?} has no host:port"),
                "\"mqtt://127.0.0.1:1883\"",
            ));
        }
        if self.security.require_signed_events && self.security.device_keys_file.is_none() {
            return Err(err(
                "security.device_keys_file",
                "is required when security.require_signed_events is true (every event would be refused)",
                "\"/etc/fabmeter/device-keys.toml\"",
            ));
        }
        if let Some(u) = &self.broker.device_url {
            if !(u.starts_with("mqtt://") || u.starts_with("mqtts://"))
                || mqtt_host_port(u).is_none()
            {
                return Err(err(
                    "broker.device_url",
                    format!("{u:?} is not an mqtt://host:port or mqtts://host:port URL"),
                    "\"mqtts://workshop.example:8883\"",
                ));
            }
        }
        let limit = BROKER_MESSAGE_SIZE_LIMIT + 1024;
        if !(limit..=MAX_MAX_PACKET_BYTES).contains(&self.mqtt.max_packet_bytes) {
            return Err(err(
                "mqtt.max_packet_bytes",
                format!(
                    "{} is outside {limit} to {MAX_MAX_PACKET_BYTES}: the collector must read every message the broker lets through (its message_size_limit is {BROKER_MESSAGE_SIZE_LIMIT} bytes plus the topic), or a bigger one wedges the connection",
                    self.mqtt.max_packet_bytes
                ),
                &DEFAULT_MAX_PACKET_BYTES.to_string(),
            ));
        }
        if self.mqtt.keep_alive_s < 5 {
            return Err(err("mqtt.keep_alive_s", "must be at least 5 seconds", "30"));
        }
        if self.ledger.batch_max == 0 {
            return Err(err("ledger.batch_max", "must be at least 1", "1000"));
        }
        if let Some(url) = &self.ledger.url {
            const EXAMPLE: &str = "\"postgres://fabmeter@127.0.0.1:5432/fabmeter\"";
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(err(
                    "ledger.url",
                    "is not a postgres:// URL (for the SQLite ledger, remove it and set ledger.path)",
                    EXAMPLE,
                ));
            }
            if let Err(e) = crate::ledger::parse_postgres_url(url) {
                return Err(err("ledger.url", e.to_string(), EXAMPLE));
            }
        }
        if let Some(ts) = &self.timeseries {
            if !(ts.url.starts_with("http://") || ts.url.starts_with("https://")) {
                return Err(err(
                    "timeseries.url",
                    format!("{:?} is not an http(s) URL", ts.url),
                    "\"http://127.0.0.1:8086\"",
                ));
            }
            let uses_tenant = [&ts.url, &ts.org, &ts.bucket]
                .iter()
                .any(|v| v.contains("{tenant}"));
            match &self.site.tenant {
                None if uses_tenant => {
                    return Err(err(
                        "site.tenant",
                        "timeseries names {tenant} but this site has no tenant",
                        "[site] tenant = \"17\" (its VictoriaMetrics account, or InfluxDB org/bucket)",
                    ));
                }
                Some(t)
                    if t.is_empty()
                        || !t
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c)) =>
                {
                    return Err(err(
                        "site.tenant",
                        format!("{t:?} is not a tenant: letters, digits, - _ : . only"),
                        "tenant = \"17\"",
                    ));
                }
                _ => {}
            }
        }
        let mut ids = HashSet::new();
        for (i, m) in self.machines.iter().enumerate() {
            Id::new(&m.id).map_err(|e| {
                err(
                    format!("machines[{i}].id"),
                    format!("machine id {e}"),
                    "\"laser-1\"",
                )
            })?;
            if !ids.insert(m.id.as_str()) {
                return Err(err(
                    format!("machines[{i}].id"),
                    format!("{:?} is listed twice", m.id),
                    "a distinct id per machine",
                ));
            }
            if let Some(sensing) = &m.sensing {
                use fabmeter_protocol::Message as _;
                let probe = fabmeter_protocol::message::DeviceConfig {
                    v: fabmeter_protocol::SCHEMA_VERSION,
                    sensing: sensing.clone(),
                    allow: heapless::Vec::new(),
                    progress_s: 60,
                    idle_timeout_s: 900,
                    max_session_s: 43_200,
                    telemetry_s: 0,
                    lock: None,
                };
                probe.validate().map_err(|inv| {
                    err(
                        format!("machines[{i}].{}", inv.field),
                        inv.problem,
                        "idle_ma = 300, busy_ma = 2000, hysteresis_ma = 150 (integer milliamperes; see docs/PROTOCOL.md \"config\")",
                    )
                })?;
            }
            if m.kind.is_empty() || m.kind.len() > 32 || m.kind.contains(['\n', '\r', '\\', ' ']) {
                return Err(err(
                    format!("machines[{i}].kind"),
                    "must be 1 to 32 characters without spaces, backslashes or newlines",
                    "\"laser\"",
                ));
            }
        }
        let mut members = HashSet::new();
        let mut badges = HashSet::new();
        for (i, m) in self.members.iter().enumerate() {
            Id::new(&m.id).map_err(|e| {
                err(
                    format!("members[{i}].id"),
                    format!("member id {e}"),
                    "\"alice\"",
                )
            })?;
            if !members.insert(m.id.as_str()) {
                return Err(err(
                    format!("members[{i}].id"),
                    format!("{:?} is listed twice", m.id),
                    "a distinct id per member",
                ));
            }
            for (j, b) in m.badges.iter().enumerate() {
                let key = format!("members[{i}].badges[{j}]");
                BadgeHash::from_hex(b)
                    .map_err(|e| err(&key, format!("badge hash {e}"), "\"ba279e0c1e5c2464\""))?;
                if !badges.insert(b.as_str()) {
                    return Err(err(
                        key,
                        format!("badge {b} belongs to two members"),
                        "each badge hash once",
                    ));
                }
            }
        }
        if self.billing.is_some() {
            self.billing_rules()?;
        } else if let Some((i, m)) = self
            .machines
            .iter()
            .enumerate()
            .find(|(_, m)| m.tariff.is_some())
        {
            let tariff = m.tariff.as_deref().unwrap_or_default();
            return Err(err(
                format!("machines[{i}].tariff"),
                format!(
                    "machine {} has tariff = {tariff:?} but the site file has no [billing] section, so no tariff exists",
                    m.id
                ),
                &format!(
                    "add a [billing] section with [[billing.tariffs]] name = {tariff:?} (docs/BILLING.md \"Configuration\"), or remove `tariff` from the machine"
                ),
            ));
        }
        self.validate_devices()?;
        if self.privacy.retention_days < MIN_RETENTION_DAYS {
            return Err(err(
                "privacy.retention_days",
                format!(
                    "{} days would purge sessions before they are invoiced: set at least {MIN_RETENTION_DAYS}",
                    self.privacy.retention_days
                ),
                "400",
            ));
        }
        self.validate_maintenance()?;
        match &self.costs {
            Some(c) => c.validate(self),
            None => Ok(()),
        }
    }

    fn validate_devices(&self) -> Result<(), ConfigError> {
        let d = &self.devices;
        if !(1..=3600).contains(&d.progress_s) {
            return Err(err("devices.progress_s", "must be 1 to 3600 seconds", "60"));
        }
        let badges: usize = self.members.iter().map(|m| m.badges.len()).sum();
        let max = fabmeter_protocol::message::MAX_ALLOW_LIST;
        if d.publish_configs && badges > max {
            return Err(err(
                "members",
                format!("{badges} badges, but a device allow-list holds at most {max}"),
                "fewer badges, or devices.publish_configs = false",
            ));
        }
        Ok(())
    }

    fn validate_maintenance(&self) -> Result<(), ConfigError> {
        let m = &self.maintenance;
        if m.check_s == 0 {
            return Err(err(
                "maintenance.check_s",
                "must be at least 1 second",
                "30",
            ));
        }
        if let Some(url) = &m.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(err(
                    "maintenance.webhook_url",
                    format!("{url:?} is not an http(s) URL"),
                    "\"https://hooks.example.org/fabmeter\"",
                ));
            }
        }
        if m.webhook_attempts == 0 {
            return Err(err(
                "maintenance.webhook_attempts",
                "must be at least 1",
                "5",
            ));
        }
        let mut names = HashSet::new();
        for (i, p) in m.plans.iter().enumerate() {
            let key = |k: &str| format!("maintenance.plans[{i}].{k}");
            Id::new(&p.name)
                .map_err(|e| err(key("name"), format!("plan name {e}"), "\"lens-cleaning\""))?;
            if !names.insert(p.name.as_str()) {
                return Err(err(
                    key("name"),
                    format!("{:?} is listed twice", p.name),
                    "a distinct name per plan",
                ));
            }
            if p.machines.is_empty() && p.kinds.is_empty() {
                return Err(err(
                    key("machines"),
                    "the plan applies to no machine: give machines or kinds",
                    "machines = [\"laser-1\"] or kinds = [\"laser\"]",
                ));
            }
            for (j, id) in p.machines.iter().enumerate() {
                if self.machine(id).is_none() {
                    return Err(err(
                        format!("maintenance.plans[{i}].machines[{j}]"),
                        format!("{id:?} is not a configured machine"),
                        "an id from [[machines]]",
                    ));
                }
            }
            for (j, k) in p.kinds.iter().enumerate() {
                if !self.machines.iter().any(|x| &x.kind == k) {
                    return Err(err(
                        format!("maintenance.plans[{i}].kinds[{j}]"),
                        format!("no configured machine has kind {k:?}"),
                        "a kind from [[machines]]",
                    ));
                }
            }
            if p.every_busy_h.is_none() && p.every_days.is_none() {
                return Err(err(
                    key("every_busy_h"),
                    "the plan has no interval: give every_busy_h, every_days or both",
                    "every_busy_h = 200.0",
                ));
            }
            for (k, v) in [
                ("every_busy_h", p.every_busy_h),
                ("every_days", p.every_days),
            ] {
                if let Some(v) = v {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(err(
                            key(k),
                            format!("{v} is not a positive number"),
                            "200.0",
                        ));
                    }
                }
            }
            if !(p.warn_before.is_finite() && (0.0..1.0).contains(&p.warn_before)) {
                return Err(err(
                    key("warn_before"),
                    format!("{} is not a fraction in [0, 1)", p.warn_before),
                    "0.1 (due soon in the last 10 % of the interval)",
                ));
            }
        }
        Ok(())
    }

    /// The plans that apply to a machine (by id or by kind), in configuration order.
    pub fn plans_of(&self, machine: &MachineConfig) -> Vec<&PlanConfig> {
        self.maintenance
            .plans
            .iter()
            .filter(|p| p.machines.contains(&machine.id) || p.kinds.contains(&machine.kind))
            .collect()
    }

    /// The parsed billing rules; `Ok(None)` without a `[billing]` section.
    pub fn billing_rules(&self) -> Result<Option<crate::billing::BillingRules>, ConfigError> {
        let Some(b) = &self.billing else {
            return Ok(None);
        };
        let machines: Vec<(String, String, String, Option<String>)> = self
            .machines
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    m.name.clone(),
                    m.kind.clone(),
                    m.tariff.clone(),
                )
            })
            .collect();
        let rules = crate::billing::BillingRules::new(b, &machines)
            .map_err(|e| err(e.key, e.problem, "see docs/BILLING.md \"Configuration\""))?;
        let members: Vec<String> = self.members.iter().map(|m| m.id.clone()).collect();
        crate::billing::identity::check(b, &members)
            .map_err(|e| err(e.key, e.problem, "see docs/BILLING.md \"Factur-X\""))?;
        Ok(Some(rules))
    }

    /// The site id, validated.
    pub fn site_id(&self) -> Result<Id, ConfigError> {
        Id::new(&self.site.id)
            .map_err(|e| err("site.id", format!("site id {e}"), "\"atelier-lyon\""))
    }

    /// The MQTT client id (the configured one, or `fm-collector-{site}`).
    pub fn client_id(&self) -> String {
        if self.mqtt.client_id.is_empty() {
            format!("fm-collector-{}", self.site.id)
        } else {
            self.mqtt.client_id.clone()
        }
    }

    /// Badge hash to member id, for every badge of every member.
    pub fn badge_directory(&self) -> std::collections::HashMap<String, String> {
        self.members
            .iter()
            .flat_map(|m| m.badges.iter().map(|b| (b.clone(), m.id.clone())))
            .collect()
    }

    /// The member owning a badge hash, if any.
    pub fn member_of(&self, badge: &str) -> Option<&MemberConfig> {
        self.members
            .iter()
            .find(|m| m.badges.iter().any(|b| b == badge))
    }

    /// The configured machine with this id.
    pub fn machine(&self, id: &str) -> Option<&MachineConfig> {
        self.machines.iter().find(|m| m.id == id)
    }

    /// What `check-config` (and `run` at start) warns about without refusing the file: a broker
    /// whose size cap is not known to be below `mqtt.max_packet_bytes` (a bigger message cannot
    /// be read, fails the connection and is redelivered at every reconnect, stopping ingest for
    /// every machine), and client ids that are not confined to usernames. Each names the fix.
    pub fn warnings(&self) -> Vec<String> {
        let max = self.mqtt.max_packet_bytes;
        let Some(path) = &self.broker.conf_file else {
            return vec![format!(
                "broker.conf_file is not set, so nothing says the broker refuses messages the collector cannot read: \
                 one message over mqtt.max_packet_bytes ({max} bytes) fails the collector's connection at every \
                 redelivery and stops ingest for every machine. Set broker.conf_file and run \
                 `fabmeter-collector provision acl` (it writes message_size_limit {BROKER_MESSAGE_SIZE_LIMIT} and \
                 use_username_as_clientid true), or set both in your broker (docs/COLLECTOR.md \"Broker setup\")"
            )];
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return vec![format!(
                "broker.conf_file {} cannot be read: run `fabmeter-collector provision acl` to write it",
                path.display()
            )];
        };
        let value = |key: &str| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix(key))
                .filter_map(|v| v.strip_prefix(' '))
                .next_back()
                .map(|v| v.trim().to_owned())
        };
        let mut out = Vec::new();
        match value("message_size_limit").and_then(|v| v.parse::<usize>().ok()) {
            Some(n) if n > 0 && n + 1024 <= max => {}
            other => out.push(format!(
                "{}: message_size_limit is {} but must be 1 to {} (mqtt.max_packet_bytes {max} minus room for the topic): \
                 a bigger message stops ingest; run `fabmeter-collector provision acl` to rewrite the file",
                path.display(),
                other.map_or("not set".to_owned(), |n| n.to_string()),
                max - 1024
            )),
        }
        if value("use_username_as_clientid").as_deref() != Some("true") {
            out.push(format!(
                "{}: use_username_as_clientid is not true: a device account can take over the collector's session \
                 with its client id; run `fabmeter-collector provision acl` to rewrite the file",
                path.display()
            ));
        }
        out
    }

    /// Keep-alive as a duration.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.mqtt.keep_alive_s)
    }
}

/// `mqtt://host:port` or `mqtts://host:port` → (host, port, tls); shared with the agent.
pub use fabmeter_protocol::topic::parse_broker_url as mqtt_host_port;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[site]
id = "atelier-lyon"
name = "Atelier de Lyon"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[[machines]]
id = "laser-1"
name = "Laser"
kind = "laser"

[[members]]
id = "alice"
badges = ["ba279e0c1e5c2464"]
"#;

    #[test]
    fn parses_and_validates_a_good_file() {
        let c = Config::from_toml(GOOD).expect("parses");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.client_id(), "fm-collector-atelier-lyon");
        assert_eq!(
            c.member_of("ba279e0c1e5c2464").map(|m| m.id.as_str()),
            Some("alice")
        );
        assert_eq!(c.ledger.batch_max, 16_000);
        // print-config output parses back to the same config.
        assert_eq!(Config::from_toml(&c.to_toml()), Ok(c));
    }

    #[test]
    fn errors_name_key_problem_and_example() {
        let e =
            Config::from_toml(&GOOD.replace("name = \"Laser\"", "nmae = \"Laser\"")).unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");

        let bad = |from: &str, to: &str| {
            let c = Config::from_toml(&GOOD.replace(from, to)).expect("parses");
            c.validate().unwrap_err()
        };
        let e = bad("id = \"laser-1\"", "id = \"Laser 1\"");
        assert_eq!(e.key, "machines[0].id");
        assert!(e.to_string().contains("for example: \"laser-1\""), "{e}");
        let e = bad("mqtt://127.0.0.1:1883", "tcp://x");
        assert_eq!(e.key, "mqtt.url");
        let e = bad("ba279e0c1e5c2464", "ba27");
        assert_eq!(e.key, "members[0].badges[0]");
        assert!(e.problem.contains("16 lowercase hex digits"), "{e}");
        let e = bad("id = \"atelier-lyon\"", "id = \"\"");
        assert_eq!(e.key, "site.id");
        let e = bad(
            "kind = \"laser\"",
            "kind = \"laser\"\n[machines.sensing.run_signal]\nactive_low = true\ndwell_ms = 900000",
        );
        assert_eq!(e.key, "machines[0].sensing.run_signal.dwell_ms");
        let mut c = Config::from_toml(GOOD).expect("parses");
        assert_eq!(c.privacy.retention_days, 400);
        c.privacy.retention_days = 30;
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "privacy.retention_days");
        assert!(e.problem.contains("set at least 62"), "{e}");
        c.privacy.retention_days = 62;
        c.security.require_signed_events = true;
        assert_eq!(c.validate().unwrap_err().key, "security.device_keys_file");
        c.security.device_keys_file = Some("keys.toml".into());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn parse_errors_name_the_key_its_table_the_line_and_the_fix() {
        // A wrong type: the key with its table and the line, not the value.
        let text = GOOD.replace(
            "url = \"mqtt://127.0.0.1:1883\"",
            "url = \"mqtt://127.0.0.1:1883\"\nkeep_alive_s = \"five\"",
        );
        let e = Config::from_toml(&text).unwrap_err();
        assert_eq!(e.key, "mqtt.keep_alive_s", "{e}");
        assert_eq!(e.at.map(|a| a.0), Some(8), "{e}");
        let shown = e.clone().in_file("site.toml").to_string();
        assert!(shown.starts_with("site.toml:8:16: config key `mqtt.keep_alive_s`: wrong type: expected u64, found a string"), "{shown}");
        assert!(
            !shown.contains("five"),
            "names the key, not the value: {shown}"
        );
        assert!(shown.contains("keep_alive_s = 30 (the default)"), "{shown}");
        // An unknown key: its table and line.
        let e =
            Config::from_toml(&GOOD.replace("name = \"Laser\"", "nmae = \"Laser\"")).unwrap_err();
        assert_eq!(e.key, "machines[0].nmae", "{e}");
        assert_eq!(e.at.map(|a| a.0), Some(11), "{e}");
        assert!(
            e.problem.contains("unknown key `nmae` in [machines[0]]"),
            "{e}"
        );
        assert!(e.example.contains("`name`"), "lists the valid keys: {e}");
        let e = Config::from_toml(&GOOD.replace("[mqtt]", "[mqtt]\nport = 1883")).unwrap_err();
        assert_eq!(e.key, "mqtt.port", "{e}");
        assert!(e.problem.contains("in [mqtt]"), "{e}");
        // A syntax error: line and column, and the key of that line.
        let e = Config::from_toml(&GOOD.replace("kind = \"laser\"", "kind = laser")).unwrap_err();
        let shown = e.clone().in_file("site.toml").to_string();
        assert_eq!(e.key, "machines[0].kind", "{e}");
        assert!(
            shown.starts_with("site.toml:12:8: config key `machines[0].kind`: TOML syntax"),
            "{shown}"
        );
        assert!(shown.contains("strings in double quotes"), "{shown}");
    }

    #[test]
    fn a_tariff_without_billing_is_refused_with_the_fix() {
        let c = Config::from_toml(
            &GOOD.replace("kind = \"laser\"", "kind = \"laser\"\ntariff = \"nope\""),
        )
        .expect("parses");
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "machines[0].tariff");
        assert!(e.problem.contains("no [billing] section"), "{e}");
        assert!(
            e.example
                .contains("add a [billing] section with [[billing.tariffs]] name = \"nope\""),
            "{e}"
        );
    }

    #[test]
    fn maintenance_plans_are_checked_against_the_machines() {
        let with = |plan: &str| {
            let c = Config::from_toml(&format!("{GOOD}\n[[maintenance.plans]]\n{plan}"))
                .expect("parses");
            c.validate()
        };
        assert_eq!(
            with("name = \"lens\"\nkinds = [\"laser\"]\nevery_busy_h = 40.0\nlock_when_overdue = true"),
            Ok(())
        );
        let e = with("name = \"lens\"\nmachines = [\"cnc-9\"]\nevery_days = 7.0").unwrap_err();
        assert_eq!(e.key, "maintenance.plans[0].machines[0]");
        assert!(
            e.problem.contains("\"cnc-9\" is not a configured machine"),
            "{e}"
        );
        let e = with("name = \"lens\"\nkinds = [\"laser\"]").unwrap_err();
        assert_eq!(e.key, "maintenance.plans[0].every_busy_h");
        let e = with("name = \"lens\"\nevery_days = 7.0").unwrap_err();
        assert!(e.problem.contains("applies to no machine"), "{e}");
        let e =
            with("name = \"Lens Cleaning\"\nkinds = [\"laser\"]\nevery_days = 7.0").unwrap_err();
        assert_eq!(e.key, "maintenance.plans[0].name");
        let e = with("name = \"lens\"\nkinds = [\"laser\"]\nevery_days = -1.0").unwrap_err();
        assert_eq!(e.key, "maintenance.plans[0].every_days");
        let e = with("name = \"lens\"\nkinds = [\"laser\"]\nevery_days = 7.0\nwarn_before = 1.5")
            .unwrap_err();
        assert_eq!(e.key, "maintenance.plans[0].warn_before");
        let e = Config::from_toml(&format!("{GOOD}\n[maintenance]\nwebhook_url = \"ftp://x\""))
            .expect("parses")
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "maintenance.webhook_url");
    }

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            mqtt_host_port("mqtt://h:1884"),
            Some(("h".into(), 1884, false))
        );
        assert_eq!(mqtt_host_port("mqtts://h"), Some(("h".into(), 8883, true)));
        assert_eq!(mqtt_host_port("mqtt://"), None);
        assert_eq!(mqtt_host_port("http://h"), None);
    }
}

#[cfg(test)]
mod example_file {
    use super::Config;

    #[test]
    fn the_example_site_file_is_valid() {
        let text = include_str!("../site.example.toml");
        let c = Config::from_toml(text).expect("site.example.toml parses");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.machines.len(), 3);
        assert!(c.machines[0].sensing.is_some() && c.timeseries.is_some());
        assert!(c.billing.is_some(), "the example shows billing too");
        assert!(
            c.security.require_signed_events && c.security.device_keys_file.is_some(),
            "a new site starts signed"
        );
        assert_eq!(c.maintenance.plans.len(), 2, "and maintenance plans");
        assert_eq!(
            c.plans_of(&c.machines[0]).len(),
            1,
            "laser-1 gets the laser plan"
        );
    }
}
