//! Broker accounts of a site (docs/SECURITY.md, "Broker accounts"): device credentials, and the
//! Mosquitto `password_file` and `acl_file` that confine each device to its own topics.
//!
//! - Usernames: `{machine}@{site}` for a device, `_collector@{site}` for the collector (`_` is not
//!   allowed in an id, so no machine can take the collector's name).
//! - Passwords: 24 random bytes, URL-safe base64 (32 characters), shown once; only their hash is
//!   kept, in Mosquitto's own `mosquitto_passwd` format (`$7$`: PBKDF2-HMAC-SHA512, 101
//!   iterations, 12-byte salt), so the broker reads the file as it is.
//! - ACL: a device writes its own `status`, `event` and `telemetry` and reads its own `config` and
//!   `cmd`, nothing else; the collector reads everything of the site and writes `config`, `cmd`
//!   and `alert`. The lists follow [`Channel::direction`], so a new channel is covered by its
//!   declared direction.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine as _;

use crate::config::{Config, BROKER_MESSAGE_SIZE_LIMIT};
use fabmeter_protocol::topic::{Channel, Direction};
use fabmeter_protocol::MAX_CONFIG_PAYLOAD;
use ring::rand::SecureRandom as _;

/// Iterations Mosquitto uses for `$7$` hashes (`mosquitto_passwd`'s default).
pub const PBKDF2_ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of the password file is not `user:hash`.
    #[error(
        "{path} line {line}: not a `username:hash` line of mosquitto_passwd; fix or remove it"
    )]
    BadLine {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// The machine is not in the site configuration.
    #[error("unknown machine {0:?}: add it under [[machines]] in the site file first")]
    UnknownMachine(String),
    /// No random numbers.
    #[error("the system random number generator failed")]
    Random,
    /// A `[broker]` key that provisioning needs is not set.
    #[error("`{0}` is not set: add it under [broker] in the site file (docs/SECURITY.md)")]
    NotConfigured(&'static str),
}

/// What a device needs to reach the broker: written once, to be copied onto the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCredentials {
    /// Site id.
    pub site: String,
    /// Machine id.
    pub machine: String,
    /// Broker URL as devices reach it.
    pub url: String,
    /// Broker username.
    pub username: String,
    /// Broker password (in clear: this is the only copy).
    pub password: String,
    /// CA file to verify the broker with, if any.
    pub ca_file: Option<std::path::PathBuf>,
    /// The device key that signs its events, 64 hex digits (docs/PROTOCOL.md "Signatures"); set
    /// when the site has a `[security] device_keys_file`, which holds the collector's copy.
    pub key: Option<String>,
}

impl DeviceCredentials {
    /// The credentials as the agent's `[device]` and `[mqtt]` sections (TOML).
    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let mut out = format!(
            "# fabmeter device credentials: machine {} of site {}. Secret: keep it on the device only.\n\
             [device]\nsite = {}\nmachine = {}\n{}\n[mqtt]\nurl = {}\nusername = {}\npassword = {}\n",
            self.machine,
            self.site,
            q(&self.site),
            q(&self.machine),
            self.key
                .as_deref()
                .map_or(String::new(), |k| format!("key = {}\n", q(k))),
            q(&self.url),
            q(&self.username),
            q(&self.password)
        );
        if let Some(ca) = &self.ca_file {
            out += &format!("ca_file = {}\n", q(&ca.display().to_string()));
        }
        out
    }
}

fn files(config: &Config) -> Result<(&Path, &Path), ProvisionError> {
    let pw = config
        .broker
        .password_file
        .as_deref()
        .ok_or(ProvisionError::NotConfigured("broker.password_file"))?;
    let acl = config
        .broker
        .acl_file
        .as_deref()
        .ok_or(ProvisionError::NotConfigured("broker.acl_file"))?;
    Ok((pw, acl))
}

fn machine_ids(config: &Config) -> Vec<String> {
    config.machines.iter().map(|m| m.id.clone()).collect()
}

/// Writes the site's ACL file from its machines, and its `mosquitto.conf` when
/// `broker.conf_file` is set; returns the ACL's path.
pub fn write_acl(config: &Config) -> Result<std::path::PathBuf, ProvisionError> {
    let (_, acl_path) = files(config)?;
    write_atomic(acl_path, &acl(&config.site.id, &machine_ids(config)), 0o644)?;
    write_mosquitto_conf(config)?;
    Ok(acl_path.to_owned())
}

/// Writes `broker.conf_file` (see [`mosquitto_conf`]) when it is set; returns its path.
pub fn write_mosquitto_conf(config: &Config) -> Result<Option<std::path::PathBuf>, ProvisionError> {
    let Some(path) = &config.broker.conf_file else {
        return Ok(None);
    };
    write_atomic(path, &mosquitto_conf(config)?, 0o644)?;
    Ok(Some(path.clone()))
}

/// `persistence_location` when `broker.persistence_location` is not set (Debian's).
pub const DEFAULT_PERSISTENCE_LOCATION: &str = "/var/lib/mosquitto/";

/// The whole `mosquitto.conf` of a site (Mosquitto 2.x), each line with the reason it is there
/// (docs/COLLECTOR.md "Broker setup"):
///
/// - one listener per distinct port of `mqtt.url` and `broker.device_url`: an `mqtt://` URL on
///   127.0.0.1 or localhost binds the loopback only, another `mqtt://` every interface, an
///   `mqtts://` one gets `certfile`/`keyfile` (`broker.tls_certfile`, `broker.tls_keyfile`);
/// - `allow_anonymous false`, `password_file`, `acl_file`;
/// - `persistence true`, `persistence_location`, `autosave_on_changes true` and
///   `autosave_interval 1`: the queue of the collector's session is saved at every change, so a
///   broker crash (`kill -9`) keeps what it had acknowledged to devices;
/// - `max_queued_messages 0`, `max_queued_bytes 0`: no silent drop of acknowledged events while
///   the collector is behind or down;
/// - `message_size_limit` [`BROKER_MESSAGE_SIZE_LIMIT`]: the broker refuses bigger messages (and
///   still acknowledges them, so a device does not resend them forever), far below what the
///   collector reads (`mqtt.max_packet_bytes`);
/// - `use_username_as_clientid true`: a client's id is its username, so no account can take
///   over another's session (the collector's session is keyed `_collector@{site}`).
pub fn mosquitto_conf(config: &Config) -> Result<String, ProvisionError> {
    use std::fmt::Write as _;
    let (pw, acl) = files(config)?;
    let site = &config.site.id;
    let mut out = format!(
        "# Mosquitto configuration of site {site}: generated by `fabmeter-collector provision`; edits are lost.\n\
         # Why each line is here: docs/COLLECTOR.md \"Broker setup\".\n\
         per_listener_settings false\n"
    );
    let mut ports = Vec::new();
    let urls = std::iter::once(config.mqtt.url.as_str()).chain(config.broker.device_url.as_deref());
    for url in urls {
        let Some((host, port, tls)) = crate::config::mqtt_host_port(url) else {
            return Err(ProvisionError::NotConfigured("mqtt.url"));
        };
        if ports.contains(&port) {
            continue;
        }
        ports.push(port);
        if tls {
            let cert = config
                .broker
                .tls_certfile
                .as_deref()
                .ok_or(ProvisionError::NotConfigured("broker.tls_certfile"))?;
            let key = config
                .broker
                .tls_keyfile
                .as_deref()
                .ok_or(ProvisionError::NotConfigured("broker.tls_keyfile"))?;
            let _ = writeln!(
                out,
                "\n# {url}: TLS\nlistener {port}\ncertfile {}\nkeyfile {}",
                cert.display(),
                key.display()
            );
        } else if host == "127.0.0.1" || host == "localhost" {
            let _ = writeln!(
                out,
                "\n# {url}: plain MQTT, this host only\nlistener {port} 127.0.0.1"
            );
        } else {
            let _ = writeln!(out, "\n# {url}: plain MQTT\nlistener {port}");
        }
    }
    let persistence = config.broker.persistence_location.as_deref().map_or(
        DEFAULT_PERSISTENCE_LOCATION.to_owned(),
        |p| {
            let p = p.display().to_string();
            if p.ends_with('/') {
                p
            } else {
                p + "/"
            }
        },
    );
    let _ = write!(
        out,
        "\n# Accounts and ACL maintained by `fabmeter-collector provision`.\n\
         allow_anonymous false\n\
         password_file {}\n\
         acl_file {}\n\
         # A client's id is its username: no account can take over another's session (the collector's).\n\
         use_username_as_clientid true\n\
         \n# Queued events survive a crash: saved at every change, not every 30 minutes.\n\
         persistence true\n\
         persistence_location {persistence}\n\
         autosave_on_changes true\n\
         autosave_interval 1\n\
         # Never drop an acknowledged event while the collector is behind or down.\n\
         max_queued_messages 0\n\
         max_queued_bytes 0\n\
         # Refuse messages over {BROKER_MESSAGE_SIZE_LIMIT} bytes (the largest legitimate payload is {MAX_CONFIG_PAYLOAD}; the collector reads up to mqtt.max_packet_bytes).\n\
         message_size_limit {BROKER_MESSAGE_SIZE_LIMIT}\n\
         # Not `information`: it logs each of those saves.\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n",
        pw.display(),
        acl.display(),
    );
    Ok(out)
}

/// Creates (or replaces: the old password stops working) the broker account of the device of
/// `machine`, rewrites the password and ACL files, and returns the credentials to install.
pub fn provision_device(
    config: &Config,
    machine: &str,
) -> Result<DeviceCredentials, ProvisionError> {
    if !config.machines.iter().any(|m| m.id == machine) {
        return Err(ProvisionError::UnknownMachine(machine.to_owned()));
    }
    let site = &config.site.id;
    let username = device_username(site, machine);
    let password = set_account(config, &username)?;
    let key = match &config.security.device_keys_file {
        Some(path) => {
            let key = new_device_key()?;
            crate::device_keys::store(path, machine, &key)?;
            Some(key.to_hex().to_string())
        }
        None => None,
    };
    Ok(DeviceCredentials {
        site: site.clone(),
        machine: machine.to_owned(),
        url: config
            .broker
            .device_url
            .clone()
            .unwrap_or_else(|| config.mqtt.url.clone()),
        username,
        password,
        ca_file: config.broker.device_ca_file.clone(),
        key,
    })
}

/// Creates (or replaces) the collector's broker account; returns (username, password) for the
/// `[mqtt]` section of the site file.
pub fn provision_collector(config: &Config) -> Result<(String, String), ProvisionError> {
    let username = collector_username(&config.site.id);
    let password = set_account(config, &username)?;
    Ok((username, password))
}

/// Gives `username` a new random password in the password file, rewrites the ACL, and returns
/// the password.
fn set_account(config: &Config, username: &str) -> Result<String, ProvisionError> {
    let (pw_path, _) = files(config)?;
    let password = new_password()?;
    let mut pw = PasswordFile::load(pw_path)?;
    pw.entries
        .insert(username.to_owned(), hash_password(&password)?);
    pw.save(pw_path)?;
    write_acl(config)?;
    Ok(password)
}

/// The broker username of a device serving `machine`.
pub fn device_username(site: &str, machine: &str) -> String {
    format!("{machine}@{site}")
}

/// The broker username of the site's collector.
pub fn collector_username(site: &str) -> String {
    format!("_collector@{site}")
}

/// A new random password: 24 bytes from the system generator, URL-safe base64 (32 characters).
pub fn new_password() -> Result<String, ProvisionError> {
    let mut b = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| ProvisionError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// 32 random bytes from the system's generator: a device key, or a secret device keys are
/// derived from ([`DeviceKey::derive`](fabmeter_protocol::DeviceKey::derive)).
pub fn new_secret() -> Result<[u8; fabmeter_protocol::sig::DEVICE_KEY_LEN], ProvisionError> {
    let mut b = [0u8; fabmeter_protocol::sig::DEVICE_KEY_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| ProvisionError::Random)?;
    Ok(b)
}

/// A new random device key (32 bytes from the system's generator).
pub fn new_device_key() -> Result<fabmeter_protocol::DeviceKey, ProvisionError> {
    Ok(fabmeter_protocol::DeviceKey::new(new_secret()?))
}

fn iterations() -> NonZeroU32 {
    NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(NonZeroU32::MIN)
}

/// The `mosquitto_passwd` hash of `password` with `salt`: `$7$101$<salt>$<hash>` (standard
/// base64).
pub fn hash_password_with_salt(password: &str, salt: &[u8; SALT_LEN]) -> String {
    let mut out = [0u8; HASH_LEN];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        iterations(),
        salt,
        password.as_bytes(),
        &mut out,
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "$7${PBKDF2_ITERATIONS}${}${}",
        b64.encode(salt),
        b64.encode(out)
    )
}

/// The `mosquitto_passwd` hash of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, ProvisionError> {
    let mut salt = [0u8; SALT_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| ProvisionError::Random)?;
    Ok(hash_password_with_salt(password, &salt))
}

/// Whether `password` matches a `$7$` hash.
pub fn verify_password(hash: &str, password: &str) -> bool {
    let mut parts = hash.split('$');
    let (Some(""), Some("7"), Some(iter), Some(salt), Some(want), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(want), Some(iter)) = (
        b64.decode(salt),
        b64.decode(want),
        iter.parse::<u32>().ok().and_then(NonZeroU32::new),
    ) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        iter,
        &salt,
        password.as_bytes(),
        &want,
    )
    .is_ok()
}

/// A Mosquitto password file: username → hash, kept sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    /// Username → `$7$...` hash.
    pub entries: BTreeMap<String, String>,
}

impl PasswordFile {
    /// Parses a `mosquitto_passwd` file (`username:hash` lines; blank lines and `#` comments
    /// are skipped).
    pub fn parse(text: &str, path: &str) -> Result<Self, ProvisionError> {
        let mut entries = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line.split_once(':').ok_or(ProvisionError::BadLine {
                path: path.to_owned(),
                line: i + 1,
            })?;
            if user.is_empty() || hash.is_empty() {
                return Err(ProvisionError::BadLine {
                    path: path.to_owned(),
                    line: i + 1,
                });
            }
            entries.insert(user.to_owned(), hash.to_owned());
        }
        Ok(PasswordFile { entries })
    }

    /// Reads `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Self, ProvisionError> {
        match std::fs::read_to_string(path) {
            Ok(t) => Self::parse(&t, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ProvisionError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        self.entries
            .iter()
            .map(|(u, h)| format!("{u}:{h}\n"))
            .collect()
    }

    /// Writes the file atomically (temporary file, then rename), readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), ProvisionError> {
        write_atomic(path, &self.render(), 0o600)
    }
}

/// The ACL file of a site with these machines.
pub fn acl(site: &str, machines: &[String]) -> String {
    let base = |m: &str, c: Channel| format!("fabmeter/v1/{site}/{m}/{}", c.as_str());
    let mut out = format!(
        "# Broker ACL of site {site}: generated by `fabmeter-collector provision`; edits are lost.\n\
         # A device writes its own status, event and telemetry and reads its own config, cmd and ack.\n\n\
         user {}\n\
         topic read fabmeter/v1/{site}/#\n",
        collector_username(site)
    );
    for c in Channel::ALL {
        if c.direction() != Direction::DeviceToCollector {
            out += &format!("topic write {}\n", base("+", c));
        }
    }
    for m in machines {
        out += &format!("\nuser {}\n", device_username(site, m));
        for c in Channel::ALL {
            match c.direction() {
                Direction::DeviceToCollector => out += &format!("topic write {}\n", base(m, c)),
                Direction::CollectorToDevice => out += &format!("topic read {}\n", base(m, c)),
                Direction::CollectorOut => {}
            }
        }
    }
    out
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename, with
/// the given Unix mode.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), ProvisionError> {
    write_atomic_bytes(path, text.as_bytes(), mode)
}

/// [`write_atomic`] of bytes: a failed write leaves `path` as it was (the temporary file is
/// removed).
pub fn write_atomic_bytes(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ProvisionError> {
    let io = |source| ProvisionError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(io)?;
    let written = std::io::Write::write_all(&mut f, bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash_password("s3cret").expect("hash");
        let b = hash_password("s3cret").expect("hash");
        assert_ne!(a, b, "fresh salt each time");
        assert!(a.starts_with("$7$101$"));
        assert!(verify_password(&a, "s3cret"));
        assert!(!verify_password(&a, "s3cret "));
        assert!(!verify_password("$6$abc$def", "s3cret"));
    }

    #[test]
    fn password_file_round_trips_and_names_bad_lines() {
        let mut f = PasswordFile::default();
        f.entries.insert("b@x".into(), "$7$1$a$b".into());
        f.entries.insert("a@x".into(), "$7$1$c$d".into());
        let text = f.render();
        assert_eq!(text, "a@x:$7$1$c$d\nb@x:$7$1$a$b\n");
        assert_eq!(PasswordFile::parse(&text, "p").expect("parse"), f);
        let e = PasswordFile::parse("# c\n\nnocolon\n", "pw").expect_err("bad");
        assert_eq!(
            e.to_string(),
            "pw line 3: not a `username:hash` line of mosquitto_passwd; fix or remove it"
        );
    }

    #[test]
    fn the_mosquitto_conf_has_every_line_the_guarantees_need() {
        let mut c = Config::for_site("atelier");
        c.mqtt.url = "mqtt://127.0.0.1:1883".into();
        c.broker.password_file = Some("/etc/mosquitto/fabmeter.passwd".into());
        c.broker.acl_file = Some("/etc/mosquitto/fabmeter.acl".into());
        c.broker.device_url = Some("mqtts://workshop.example:8883".into());
        assert_eq!(
            mosquitto_conf(&c).expect_err("a TLS listener needs its certificate").to_string(),
            "`broker.tls_certfile` is not set: add it under [broker] in the site file (docs/SECURITY.md)"
        );
        c.broker.tls_certfile = Some("/etc/mosquitto/certs/broker.pem".into());
        c.broker.tls_keyfile = Some("/etc/mosquitto/certs/broker.key".into());
        let text = mosquitto_conf(&c).expect("conf");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(
            lines,
            [
                "per_listener_settings false",
                "listener 1883 127.0.0.1",
                "listener 8883",
                "certfile /etc/mosquitto/certs/broker.pem",
                "keyfile /etc/mosquitto/certs/broker.key",
                "allow_anonymous false",
                "password_file /etc/mosquitto/fabmeter.passwd",
                "acl_file /etc/mosquitto/fabmeter.acl",
                "use_username_as_clientid true",
                "persistence true",
                "persistence_location /var/lib/mosquitto/",
                "autosave_on_changes true",
                "autosave_interval 1",
                "max_queued_messages 0",
                "max_queued_bytes 0",
                "message_size_limit 16384",
                "log_type error",
                "log_type warning",
                "log_type notice",
            ]
        );
        const { assert!(BROKER_MESSAGE_SIZE_LIMIT >= MAX_CONFIG_PAYLOAD) };
        assert!(BROKER_MESSAGE_SIZE_LIMIT + 1024 <= c.mqtt.max_packet_bytes);
    }

    #[test]
    fn the_acl_confines_each_device_to_its_own_topics() {
        let text = acl("atelier", &["laser-1".into()]);
        let dev: Vec<&str> = text
            .split("user laser-1@atelier\n")
            .nth(1)
            .expect("device section")
            .lines()
            .collect();
        assert_eq!(
            dev,
            [
                "topic write fabmeter/v1/atelier/laser-1/status",
                "topic write fabmeter/v1/atelier/laser-1/event",
                "topic write fabmeter/v1/atelier/laser-1/telemetry",
                "topic read fabmeter/v1/atelier/laser-1/config",
                "topic read fabmeter/v1/atelier/laser-1/cmd",
                "topic read fabmeter/v1/atelier/laser-1/ack",
            ]
        );
        assert!(text.contains(
            "user _collector@atelier\ntopic read fabmeter/v1/atelier/#\n\
             topic write fabmeter/v1/atelier/+/config\ntopic write fabmeter/v1/atelier/+/cmd\n\
             topic write fabmeter/v1/atelier/+/alert\ntopic write fabmeter/v1/atelier/+/ack\n"
        ));
    }
}
