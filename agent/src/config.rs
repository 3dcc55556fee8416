//! `agent.toml`: what `fabmeter-agent run` hosts (docs/AGENT.md is the reference).
//!
//! Every section refuses unknown keys; [`AgentConfig::load`] reads the file and every file it names
//! (password file, credentials file, badge key file, CA file) and validates everything, with
//! errors that name the key and the fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fabmeter_protocol::{BadgeKey, DeviceKey};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

use crate::input::InputsConfig;
use crate::sim::MachineKind;

/// A config problem: the key, what is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}; {fix}")]
pub struct ConfigError {
    /// The key (e.g. `mqtt.url`, `machines[1].id`).
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

fn err(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The agent config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Site id (`[a-z0-9][a-z0-9-]{0,31}`); may come from the credentials file instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Directory of the machines' journal files (`<machine>.flash`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The site's badge key, 64 hex digits (or `badge_key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub badge_key: Option<String>,
    /// A file holding the badge key in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub badge_key_file: Option<PathBuf>,
    /// How often the devices' timers run, ms.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// The broker.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Test and demo feature: drive machines that have `simulate` from the simulator's timeline.
    #[serde(default)]
    pub simulate: SimulateConfig,
    /// The machines this agent serves.
    #[serde(default)]
    pub machines: Vec<MachineConfig>,
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Broker username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Broker password (or `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file whose first line is the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the broker's certificate (`mqtts://` only); the system
    /// roots are used without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The file `fabmeter-collector provision device` wrote (`[device]` site and machine,
    /// `[mqtt]` url, username, password, ca_file); only with one machine (else per machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Longest delay between two connection attempts, seconds (jitter adds up to half).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_s: u64,
    /// Keep each event in the journal until the collector confirms it on the machine's `ack`
    /// topic, not just until the broker's PUBACK: a broker crash then loses nothing
    /// (docs/PROTOCOL.md "ack"). On by default; needs a collector that confirms
    /// (fabmeter-collector does). Off only for a broker without such a collector (then a PUBACK
    /// removes the event, and a broker crash can lose what it acknowledged).
    #[serde(default = "default_confirm")]
    pub confirm: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            credentials_file: None,
            keep_alive_s: default_keep_alive(),
            reconnect_max_s: default_reconnect_max(),
            confirm: default_confirm(),
        }
    }
}

fn default_confirm() -> bool {
    true
}

/// `[simulate]`: time acceleration and seed of simulated machines (a test and demo feature).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateConfig {
    /// Device ms per wall ms of simulated machines (3600: an hour per second).
    #[serde(default = "default_speed")]
    pub speed: f64,
    /// Seed of the simulated timelines.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            speed: default_speed(),
            seed: default_seed(),
        }
    }
}

/// `[[machines]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Machine id as in topics and the collector's site file.
    pub id: String,
    /// This machine's credentials file (`fabmeter-collector provision device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Test and demo feature: feed this machine from the simulator's timeline of this kind
    /// (`printer-3d`, `laser`, `cnc`, `saw`) instead of its inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate: Option<String>,
    /// Where use, badges and the relay are.
    #[serde(default)]
    pub inputs: InputsConfig,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/fabmeter-agent")
}
fn default_tick_ms() -> u64 {
    200
}
fn default_keep_alive() -> u64 {
    30
}
fn default_reconnect_max() -> u64 {
    30
}
fn default_speed() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    1
}

/// Broker connection of one machine, resolved from the config and the files it names.
#[derive(Clone)]
pub struct Broker {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS.
    pub tls: bool,
    /// Username.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// CA certificate bytes (PEM).
    pub ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// One machine, ready to run.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Machine id.
    pub id: String,
    /// Its broker connection.
    pub broker: Broker,
    /// Simulated kind, if any.
    pub simulate: Option<MachineKind>,
    /// Inputs.
    pub inputs: InputsConfig,
    /// The key that signs this machine's events, from its credentials file.
    pub device_key: Option<DeviceKey>,
    /// The box id set in its credentials file (`[device] box`), overriding the drawn one.
    pub box_id: Option<u32>,
}

/// The loaded, validated config.
pub struct Loaded {
    /// The file as read (defaults applied).
    pub config: AgentConfig,
    /// Site id.
    pub site: String,
    /// Badge key.
    pub key: BadgeKey,
    /// Machines.
    pub machines: Vec<Machine>,
}

/// `[device]` + `[mqtt]` of a credentials file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    device: CredDevice,
    mqtt: CredMqtt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredDevice {
    site: String,
    machine: String,
    /// The device key that signs events (docs/PROTOCOL.md "Signatures"), 64 hex digits; present
    /// when the site keeps device keys.
    #[serde(default)]
    key: Option<String>,
    /// The box id (docs/PROTOCOL.md `box`), nonzero: overrides the one the agent draws and keeps
    /// in its data dir. Only for a box whose data dir (its boot counter) is restored or moved.
    #[serde(default, rename = "box")]
    box_id: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredMqtt {
    url: String,
    username: String,
    password: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub use fabmeter_protocol::topic::parse_broker_url as parse_url;

fn read_text(key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        err(
            key,
            format!("cannot read {}: {e}", path.display()),
            "give the path of a readable file (relative paths are relative to the config file)",
        )
    })
}

/// `path` relative to the config file's directory.
fn rel(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn parse_key(key: &str, hex: &str) -> Result<BadgeKey, ConfigError> {
    let hex = hex.trim();
    let fix = "64 hex digits, the site's badge key (the collector's site file [site] badge_key)";
    if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(err(
            key,
            format!("{} characters, not 64 hex digits", hex.len()),
            fix,
        ));
    }
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x =
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| err(key, "not hex", fix))?;
    }
    Ok(BadgeKey::new(b))
}

/// A commented `agent.toml` to start from (the shipped `agent.example.toml`), printed by
/// `fabmeter-agent print-config` when there is no config yet.
pub fn template() -> String {
    format!(
        "# No --config given and no agent.toml here: a template to start from.\n\
         # Save it with `fabmeter-agent print-config > agent.toml`, edit it (docs/AGENT.md),\n\
         # then check it with `fabmeter-agent check-config`.\n\n{}",
        include_str!("../agent.example.toml")
    )
}

impl AgentConfig {
    /// Parses `agent.toml` text.
    pub fn from_toml(text: &str) -> Result<AgentConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            err(
                line.map_or("agent.toml".to_string(), |l| format!("agent.toml line {l}")),
                e.message().to_string(),
                "see docs/AGENT.md for the keys and their values",
            )
        })
    }

    /// The config as TOML with secrets replaced by `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        if c.mqtt.password.is_some() {
            c.mqtt.password = Some("<redacted>".into());
        }
        if c.badge_key.is_some() {
            c.badge_key = Some("<redacted>".into());
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// Reads the config file and everything it names, and validates it all.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = read_text("--config", path)?;
        let config = AgentConfig::from_toml(&text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base)
    }

    /// Validates the config; files are relative to `base`.
    pub fn resolve(self, base: &Path) -> Result<Loaded, ConfigError> {
        let key = match (&self.badge_key, &self.badge_key_file) {
            (Some(k), None) => parse_key("badge_key", k)?,
            (None, Some(f)) => parse_key("badge_key_file", &read_text("badge_key_file", &rel(base, f))?)?,
            (Some(_), Some(_)) => {
                return Err(err(
                    "badge_key",
                    "both badge_key and badge_key_file are set",
                    "keep one of them",
                ))
            }
            (None, None) => {
                return Err(err(
                    "badge_key",
                    "missing",
                    "set badge_key = \"<64 hex digits>\" or badge_key_file = \"/etc/fabmeter/badge.key\"",
                ))
            }
        };
        if self.machines.is_empty() {
            return Err(err(
                "machines",
                "no machine",
                "add a [[machines]] section with id = \"laser-1\"",
            ));
        }
        if !(10..=60_000).contains(&self.tick_ms) {
            return Err(err(
                "tick_ms",
                format!("{} is out of range", self.tick_ms),
                "use 10 to 60000 (200 by default)",
            ));
        }
        if !(1..=3600).contains(&self.mqtt.keep_alive_s) {
            return Err(err(
                "mqtt.keep_alive_s",
                format!("{} is out of range", self.mqtt.keep_alive_s),
                "use 1 to 3600 (30 by default)",
            ));
        }
        if !(1..=3600).contains(&self.mqtt.reconnect_max_s) {
            return Err(err(
                "mqtt.reconnect_max_s",
                format!("{} is out of range", self.mqtt.reconnect_max_s),
                "use 1 to 3600 (30 by default)",
            ));
        }
        if !(self.simulate.speed > 0.0 && self.simulate.speed <= 1e6) {
            return Err(err(
                "simulate.speed",
                format!("{} is out of range", self.simulate.speed),
                "use a number > 0, e.g. 3600 for an hour per second",
            ));
        }
        if self.mqtt.credentials_file.is_some() && self.machines.len() > 1 {
            return Err(err(
                "mqtt.credentials_file",
                "one credentials file serves one machine, and this agent has several",
                "set credentials_file in each [[machines]] section instead",
            ));
        }
        if self.mqtt.password.is_some() && self.mqtt.password_file.is_some() {
            return Err(err(
                "mqtt.password",
                "both password and password_file are set",
                "keep one of them",
            ));
        }
        let mut site = self.site.clone();
        if let Some(s) = &site {
            if !valid_id(s) {
                return Err(err(
                    "site",
                    format!("{s:?} is not a site id"),
                    "use [a-z0-9][a-z0-9-]{0,31}, as in the collector's site file",
                ));
            }
        }
        let mut machines = Vec::new();
        for (i, m) in self.machines.iter().enumerate() {
            let k = format!("machines[{i}]");
            if !valid_id(&m.id) {
                return Err(err(
                    format!("{k}.id"),
                    format!("{:?} is not a machine id", m.id),
                    "use [a-z0-9][a-z0-9-]{0,31}, as in the collector's site file",
                ));
            }
            if self.machines[..i].iter().any(|o| o.id == m.id) {
                return Err(err(
                    format!("{k}.id"),
                    format!("{:?} appears twice", m.id),
                    "give each machine its own id",
                ));
            }
            let simulate = match &m.simulate {
                None => None,
                Some(s) => Some(s.parse::<MachineKind>().map_err(|_| {
                    err(
                        format!("{k}.simulate"),
                        format!("{s:?} is not a machine kind"),
                        "use printer-3d, laser, cnc or saw",
                    )
                })?),
            };
            let cred_path = m
                .credentials_file
                .as_ref()
                .or(self.mqtt.credentials_file.as_ref());
            let mut device_key = None;
            let mut box_id = None;
            let broker = match cred_path {
                Some(p) => {
                    let ck = if m.credentials_file.is_some() {
                        format!("{k}.credentials_file")
                    } else {
                        "mqtt.credentials_file".into()
                    };
                    let c: Credentials = toml::from_str(&read_text(&ck, &rel(base, p))?).map_err(|e| {
                        err(&ck, format!("{}: {}", p.display(), e.message()), "use the file `fabmeter-collector provision device` wrote, unchanged")
                    })?;
                    if c.device.machine != m.id {
                        return Err(err(
                            &ck,
                            format!(
                                "the file is for machine {:?}, not {:?}",
                                c.device.machine, m.id
                            ),
                            "give each machine the credentials provisioned for it",
                        ));
                    }
                    match &site {
                        Some(s) if *s != c.device.site => {
                            return Err(err(
                                &ck,
                                format!("the file is for site {:?}, not {s:?}", c.device.site),
                                "provision the device for this site, or fix `site`",
                            ));
                        }
                        _ => site = Some(c.device.site.clone()),
                    }
                    if c.device.box_id == Some(0) {
                        return Err(err(
                            &ck,
                            "[device] box is 0",
                            "give a box id from 1 to 4294967295, or remove the line to let the agent draw one",
                        ));
                    }
                    box_id = c.device.box_id;
                    if let Some(hex) = &c.device.key {
                        device_key = Some(DeviceKey::from_hex(hex.trim()).map_err(|_| {
                            err(
                                &ck,
                                "[device] key is not 64 hex digits",
                                "use the file `fabmeter-collector provision device` wrote, unchanged",
                            )
                        })?);
                    }
                    let (host, port, tls) = parse_url(&c.mqtt.url).ok_or_else(|| {
                        err(
                            &ck,
                            format!("url {:?} is not an mqtt:// or mqtts:// URL", c.mqtt.url),
                            "provision the device again",
                        )
                    })?;
                    let ca = match c.mqtt.ca_file.as_ref().or(self.mqtt.ca_file.as_ref()) {
                        Some(f) => Some(read_bytes(&ck, &rel(base, f))?),
                        None => None,
                    };
                    Broker {
                        host,
                        port,
                        tls,
                        username: Some(c.mqtt.username),
                        password: Some(c.mqtt.password),
                        ca,
                    }
                }
                None => self.broker_from_mqtt(base)?,
            };
            if broker.ca.is_some() && !broker.tls {
                return Err(err(
                    "mqtt.ca_file",
                    "a CA file is set but the URL is mqtt:// (plain TCP)",
                    "use an mqtts:// URL, or remove ca_file",
                ));
            }
            machines.push(Machine {
                id: m.id.clone(),
                broker,
                simulate,
                inputs: m.inputs.clone(),
                device_key,
                box_id,
            });
        }
        let site = site.ok_or_else(|| {
            err(
                "site",
                "missing",
                "set site = \"<site id>\" or use a credentials file",
            )
        })?;
        Ok(Loaded {
            config: self,
            site,
            key,
            machines,
        })
    }

    fn broker_from_mqtt(&self, base: &Path) -> Result<Broker, ConfigError> {
        let url = self.mqtt.url.as_deref().ok_or_else(|| {
            err(
                "mqtt.url",
                "missing",
                "set url = \"mqtts://broker.example:8883\" in [mqtt], or credentials_file",
            )
        })?;
        let (host, port, tls) = parse_url(url).ok_or_else(|| {
            err(
                "mqtt.url",
                format!("{url:?} is not an mqtt:// or mqtts:// URL"),
                "e.g. \"mqtts://broker.example:8883\" or \"mqtt://127.0.0.1:1883\"",
            )
        })?;
        let password = match (&self.mqtt.password, &self.mqtt.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                read_text("mqtt.password_file", &rel(base, f))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            (None, None) => None,
        };
        if password.is_some() && self.mqtt.username.is_none() {
            return Err(err(
                "mqtt.username",
                "a password is set without a username",
                "set username",
            ));
        }
        let ca = match &self.mqtt.ca_file {
            Some(f) => Some(read_bytes("mqtt.ca_file", &rel(base, f))?),
            None => None,
        };
        Ok(Broker {
            host,
            port,
            tls,
            username: self.mqtt.username.clone(),
            password,
            ca,
        })
    }
}

fn read_bytes(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| {
        err(
            key,
            format!("cannot read {}: {e}", path.display()),
            "give the path of a readable PEM file",
        )
    })
}

impl Broker {
    /// rumqttc options for the client id `client_id`: transport (TLS with the CA or the system
    /// roots), credentials and keep-alive. The last will is set by the link.
    pub fn options(&self, client_id: &str, keep_alive: Duration) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(keep_alive);
        if let Some(u) = &self.username {
            o.set_credentials(u.clone(), self.password.clone().unwrap_or_default());
        }
        if self.tls {
            // rustls needs a process-wide crypto provider; ring is the one in the graph.
            let _ = rustls::crypto::ring::default_provider().install_default();
            o.set_transport(match &self.ca {
                Some(ca) => Transport::tls_with_config(TlsConfiguration::Simple {
                    ca: ca.clone(),
                    alpn: None,
                    client_auth: None,
                }),
                None => Transport::tls_with_default_config(),
            });
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn good() -> String {
        format!(
            "site = \"lab\"\ndata_dir = \"/tmp/x\"\nbadge_key = \"{KEY}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n\n[[machines]]\nid = \"laser-1\"\n[machines.inputs.usage]\nkind = \"gpio\"\nchip = \"/dev/gpiochip0\"\nline = 17\n"
        )
    }

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = AgentConfig::from_toml(&good()).unwrap();
        assert_eq!(c.tick_ms, 200);
        assert_eq!(c.mqtt.keep_alive_s, 30);
        let l = c.resolve(Path::new(".")).unwrap();
        assert_eq!(l.site, "lab");
        assert_eq!(l.machines[0].broker.port, 1883);
        assert!(!l.machines[0].broker.tls);
        assert!(l.machines[0].inputs.usage.is_some());
    }

    #[test]
    fn bad_configs_name_the_key_and_the_fix() {
        let e = AgentConfig::from_toml(&good().replace("data_dir", "datadir")).unwrap_err();
        assert!(e.to_string().contains("datadir"), "{e}");
        let cases = [
            (good().replace("mqtt://", "http://"), "mqtt.url"),
            (good().replace(KEY, "abcd"), "badge_key"),
            (good().replace("laser-1", "Laser 1"), "machines[0].id"),
            (good().replace("site = \"lab\"\n", ""), "site"),
            (
                good().replace(
                    "id = \"laser-1\"\n",
                    "id = \"laser-1\"\nsimulate = \"toaster\"\n",
                ),
                "machines[0].simulate",
            ),
        ];
        for (text, key) in cases {
            let e = AgentConfig::from_toml(&text)
                .and_then(|c| c.resolve(Path::new(".")).map(|_| ()))
                .unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(!e.fix.is_empty());
        }
    }

    #[test]
    fn credentials_file_as_provision_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("laser-1.toml"),
            "# fabmeter device credentials\n[device]\nsite = \"lab\"\nmachine = \"laser-1\"\n\n[mqtt]\nurl = \"mqtts://broker.lab:8883\"\nusername = \"dev-lab-laser-1\"\npassword = \"s3cret\"\nca_file = \"ca.pem\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.pem"), "PEM").unwrap();
        let text = format!(
            "badge_key = \"{KEY}\"\n[[machines]]\nid = \"laser-1\"\ncredentials_file = \"laser-1.toml\"\n"
        );
        let l = AgentConfig::from_toml(&text)
            .unwrap()
            .resolve(dir.path())
            .unwrap();
        assert_eq!(l.site, "lab");
        let b = &l.machines[0].broker;
        assert_eq!((b.host.as_str(), b.port, b.tls), ("broker.lab", 8883, true));
        assert_eq!(b.password.as_deref(), Some("s3cret"));
        assert_eq!(b.ca.as_deref(), Some(&b"PEM"[..]));
        // For another machine: refused.
        let e = AgentConfig::from_toml(&text.replace("id = \"laser-1\"", "id = \"saw-1\""))
            .unwrap()
            .resolve(dir.path())
            .err()
            .unwrap();
        assert!(e.problem.contains("not \"saw-1\""), "{e}");
        assert_eq!(
            l.machines[0].box_id, None,
            "drawn by the agent, not set here"
        );
        // `[device] box` overrides the drawn box id; 0 is refused with the fix.
        let cred = |line: &str| {
            std::fs::write(
                dir.path().join("laser-1.toml"),
                format!("[device]\nsite = \"lab\"\nmachine = \"laser-1\"\n{line}\n[mqtt]\nurl = \"mqtt://b:1883\"\nusername = \"u\"\npassword = \"p\"\n"),
            )
            .unwrap();
            AgentConfig::from_toml(&text).unwrap().resolve(dir.path())
        };
        assert_eq!(cred("box = 4711").unwrap().machines[0].box_id, Some(4711));
        let e = cred("box = 0").err().unwrap();
        assert!(
            e.problem.contains("[device] box is 0") && e.fix.contains("remove the line"),
            "{e}"
        );
    }

    #[test]
    fn the_example_config_parses() {
        let c = AgentConfig::from_toml(include_str!("../agent.example.toml")).unwrap();
        assert_eq!(c.machines.len(), 2);
        assert!(c.machines.iter().all(|m| m.inputs.usage.is_some()));
    }

    #[test]
    fn print_config_redacts_secrets() {
        let c = AgentConfig::from_toml(&good().replace(
            "url = \"mqtt://127.0.0.1:1883\"",
            "url = \"mqtt://127.0.0.1:1883\"\nusername = \"u\"\npassword = \"hunter2\"",
        ))
        .unwrap();
        let t = c.to_redacted_toml();
        assert!(!t.contains("hunter2") && !t.contains(KEY), "{t}");
        assert!(t.contains("tick_ms = 200"), "{t}");
        assert_eq!(
            AgentConfig::from_toml(&t).unwrap().machines,
            c.machines,
            "the printed config reads back"
        );
    }
}
