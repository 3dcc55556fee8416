//! `fabmeter-collector init`: a new site in one step (docs/COLLECTOR.md "A new
//! site"). Writes a commented site file, and through [`crate::provision`] (the same code as the
//! `provision` commands) the broker's `mosquitto.conf`, its password and ACL files with an account
//! for the collector and one per machine, each device's credentials and the devices' signing keys.
//!
//! Nothing is overwritten unless asked ([`InitOptions::force`]): an existing file is an error
//! that names it.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, MachineConfig};
use crate::provision::{self, ProvisionError};

/// What `init` writes and where.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Site id, e.g. `atelier-lyon`.
    pub site: String,
    /// Machines as `id` or `id:kind`, e.g. `laser-1:laser`.
    pub machines: Vec<String>,
    /// Directory of the site file, broker files and device credentials (created if missing).
    pub dir: PathBuf,
    /// Directory of the ledger and the device keys (created if missing).
    pub data_dir: PathBuf,
    /// The broker as the collector reaches it (`mqtt.url`).
    pub mqtt_url: String,
    /// The broker as devices reach it (`broker.device_url`), when not `mqtt_url`.
    pub device_url: Option<String>,
    /// Mosquitto's `persistence_location`.
    pub broker_data_dir: PathBuf,
    /// The collector's HTTP address (`http.listen`).
    pub http_listen: std::net::SocketAddr,
    /// Replace existing files (the old broker passwords stop working).
    pub force: bool,
}

/// The files `init` wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The site file.
    pub site_file: PathBuf,
    /// Mosquitto's configuration.
    pub mosquitto_conf: PathBuf,
    /// Mosquitto's password file.
    pub password_file: PathBuf,
    /// Mosquitto's ACL file.
    pub acl_file: PathBuf,
    /// The devices' signing keys (the collector's copy).
    pub device_keys_file: PathBuf,
    /// Each machine's device credentials: (machine, file).
    pub devices: Vec<(String, PathBuf)>,
    /// The ledger the site file names.
    pub ledger: PathBuf,
    /// The collector's broker account.
    pub collector_username: String,
}

/// Why `init` wrote nothing (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Files that `init` would replace.
    #[error(
        "{} already exist{}: {}; nothing written. Pass --force to replace them (the old broker passwords and device keys stop working), or --dir another directory",
        if .0.len() == 1 { "this file" } else { "these files" },
        if .0.len() == 1 { "s" } else { "" },
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Exists(Vec<PathBuf>),
    /// A `--machines` entry that is not `id` or `id:kind`.
    #[error("--machines: {0:?} is not `id` or `id:kind`; example: --machines laser-1:laser,printer-1:printer-3d,saw-1")]
    BadMachine(String),
    /// No machine given.
    #[error(
        "--machines: no machine given; example: --machines laser-1:laser,printer-1:printer-3d"
    )]
    NoMachines,
    /// The same machine twice.
    #[error("--machines: {0:?} is listed twice")]
    DuplicateMachine(String),
    /// Devices would reach the broker on the collector's local-only listener.
    #[error("--device-url {device} uses port {port}, the port of --mqtt-url {mqtt}, whose listener is on this host only: devices elsewhere could not connect. Give the devices' listener a port of its own, e.g. --device-url mqtt://workshop.local:1884")]
    SharedLocalPort {
        /// `--device-url`.
        device: String,
        /// `--mqtt-url`.
        mqtt: String,
        /// The port both name.
        port: u16,
    },
    /// The resulting configuration is not valid (a bad id, URL...).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Writing the broker files or credentials failed.
    #[error("{0}")]
    Provision(#[from] ProvisionError),
    /// A directory could not be created or read.
    #[error("{path}: {source}")]
    Io {
        /// The directory or file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Parses `--machines` entries (`id` or `id:kind`).
pub fn parse_machines(entries: &[String]) -> Result<Vec<MachineConfig>, InitError> {
    let mut out: Vec<MachineConfig> = Vec::new();
    for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (id, kind) = match e.split_once(':') {
            Some((id, kind)) if !id.is_empty() && !kind.is_empty() && !kind.contains(':') => {
                (id, kind)
            }
            Some(_) => return Err(InitError::BadMachine(e.to_owned())),
            None => (e, "machine"),
        };
        if out.iter().any(|m| m.id == id) {
            return Err(InitError::DuplicateMachine(id.to_owned()));
        }
        out.push(MachineConfig {
            id: id.to_owned(),
            name: id.to_owned(),
            kind: kind.to_owned(),
            tariff: None,
            sensing: None,
        });
    }
    if out.is_empty() {
        return Err(InitError::NoMachines);
    }
    Ok(out)
}

/// An absolute form of `path` (relative to the current directory), for the paths written into
/// the site file and `mosquitto.conf`, which other processes read from elsewhere.
fn absolute(path: &Path) -> Result<PathBuf, InitError> {
    std::path::absolute(path).map_err(io(path))
}

/// Writes the site: see the module documentation. Checks everything before writing anything.
pub fn init(o: &InitOptions) -> Result<InitReport, InitError> {
    let machines = parse_machines(&o.machines)?;
    let dir = absolute(&o.dir)?;
    let data_dir = absolute(&o.data_dir)?;
    let mut config = Config::for_site(&o.site);
    config.site.name = o.site.clone();
    config.mqtt.url = o.mqtt_url.clone();
    config.broker.device_url = o.device_url.clone();
    config.broker.password_file = Some(dir.join("fabmeter.passwd"));
    config.broker.acl_file = Some(dir.join("fabmeter.acl"));
    config.broker.conf_file = Some(dir.join("mosquitto.conf"));
    config.broker.persistence_location = Some(absolute(&o.broker_data_dir)?);
    config.security.device_keys_file = Some(data_dir.join("device-keys.toml"));
    config.security.require_signed_events = true;
    config.ledger.path = data_dir.join("ledger.sqlite");
    config.http.listen = o.http_listen;
    config.machines = machines;
    config.validate()?;
    let local = |h: &str| h == "127.0.0.1" || h == "localhost";
    if let (Some(device), Some((mqtt_host, port, _))) =
        (&o.device_url, crate::config::mqtt_host_port(&o.mqtt_url))
    {
        if let Some((device_host, device_port, _)) = crate::config::mqtt_host_port(device) {
            if device_port == port && local(&mqtt_host) && !local(&device_host) {
                return Err(InitError::SharedLocalPort {
                    device: device.clone(),
                    mqtt: o.mqtt_url.clone(),
                    port,
                });
            }
        }
    }
    // The listeners too: a URL mosquitto.conf cannot be written for fails here, before any file.
    provision::mosquitto_conf(&config)?;

    let report = InitReport {
        site_file: dir.join("site.toml"),
        mosquitto_conf: dir.join("mosquitto.conf"),
        password_file: dir.join("fabmeter.passwd"),
        acl_file: dir.join("fabmeter.acl"),
        device_keys_file: data_dir.join("device-keys.toml"),
        devices: config
            .machines
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    dir.join("devices").join(format!("{}.toml", m.id)),
                )
            })
            .collect(),
        ledger: config.ledger.path.clone(),
        collector_username: provision::collector_username(&o.site),
    };
    let mut targets = vec![
        &report.site_file,
        &report.mosquitto_conf,
        &report.password_file,
        &report.acl_file,
        &report.device_keys_file,
    ];
    targets.extend(report.devices.iter().map(|(_, p)| p));
    let existing: Vec<PathBuf> = targets
        .into_iter()
        .filter(|p| p.exists())
        .cloned()
        .collect();
    if !existing.is_empty() && !o.force {
        return Err(InitError::Exists(existing));
    }
    let broker_data = absolute(&o.broker_data_dir)?;
    for d in [&dir, &dir.join("devices"), &data_dir, &broker_data] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    if o.force {
        // Fresh accounts and keys: no account or key of an earlier init survives.
        for p in [&report.password_file, &report.device_keys_file] {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(p)(e)),
                _ => {}
            }
        }
    }

    // Accounts, ACL, mosquitto.conf and keys: the `provision` commands' code.
    let (user, password) = provision::provision_collector(&config)?;
    config.mqtt.username = Some(user);
    config.mqtt.password = Some(password);
    for (machine, path) in &report.devices {
        let creds = provision::provision_device(&config, machine)?;
        provision::write_atomic(path, &creds.to_toml(), 0o600)?;
    }
    let text = site_toml(&config);
    // What is written must load as it is (a template that drifted from the parser fails here).
    Config::from_toml(&text)
        .and_then(|c| c.validate())
        .map_err(|e| e.in_file(report.site_file.display().to_string()))?;
    // The collector's broker password is in it: readable by its owner only.
    provision::write_atomic(&report.site_file, &text, 0o600)?;
    Ok(report)
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn qp(p: Option<&Path>) -> String {
    q(&p.map(|p| p.display().to_string()).unwrap_or_default())
}

/// The commented site file of a new site (the keys of collector/site.example.toml that a new
/// site needs, with its values).
pub fn site_toml(c: &Config) -> String {
    let mut s = format!(
        "# fabmeter collector: site {site}, written by `fabmeter-collector init`.\n\
         # Every key with its default and meaning: collector/site.example.toml and docs/COLLECTOR.md.\n\
         # Check it after an edit: fabmeter-collector check-config --config <this file>\n\
         # Secret: [mqtt] password. Keep the file readable by the collector's user only.\n\
         \n\
         [site]\n\
         id = {id}                  # as in topics: a-z, 0-9, '-', up to 32 characters\n\
         name = {name}\n\
         auto_register = false            # true: machines that publish but are not listed are registered\n\
         \n\
         [mqtt]\n\
         url = {url}\n\
         username = {user}   # the collector's broker account (`provision collector` renews it)\n\
         password = {password}\n\
         # ca_file = \"/etc/fabmeter/ca.pem\"   # with an mqtts:// url\n\
         \n\
         [broker]                         # files `init` and `provision` maintain (docs/SECURITY.md)\n\
         password_file = {pw}\n\
         acl_file = {acl}\n\
         conf_file = {conf}   # the broker's whole configuration: mosquitto -c <this file>\n\
         persistence_location = {persist}\n",
        site = c.site.id,
        id = q(&c.site.id),
        name = q(&c.site.name),
        url = q(&c.mqtt.url),
        user = q(c.mqtt.username.as_deref().unwrap_or_default()),
        password = q(c.mqtt.password.as_deref().unwrap_or_default()),
        pw = qp(c.broker.password_file.as_deref()),
        acl = qp(c.broker.acl_file.as_deref()),
        conf = qp(c.broker.conf_file.as_deref()),
        persist = qp(c.broker.persistence_location.as_deref()),
    );
    match &c.broker.device_url {
        Some(u) => s += &format!("device_url = {}   # as devices reach the broker\n", q(u)),
        None => s += "# device_url = \"mqtt://workshop.local:1884\"   # as devices on other boards reach the broker; default mqtt.url\n",
    }
    s += &format!(
        "\n[security]                       # event signatures (docs/SECURITY.md)\n\
         device_keys_file = {keys}   # written by `init` and `provision device`\n\
         require_signed_events = true     # refuse every event without a valid signature\n\
         \n\
         [ledger]\n\
         path = {ledger}\n\
         \n\
         # Time series for Grafana (docs/DASHBOARDS.md); without this section there are none.\n\
         # [timeseries]\n\
         # url = \"http://127.0.0.1:8086\"   # InfluxDB 2, or VictoriaMetrics\n\
         # org = \"fabmeter\"\n\
         # bucket = \"fabmeter\"\n\
         # token = \"\"\n\
         \n\
         [http]\n\
         listen = {listen}   # \"0.0.0.0:8080\" shows the board to the workshop's network\n\
         # tokens_file = \"/var/lib/fabmeter/api-tokens.toml\"   # require API tokens (docs/SECURITY.md)\n",
        keys = qp(c.security.device_keys_file.as_deref()),
        ledger = q(&c.ledger.path.display().to_string()),
        listen = q(&c.http.listen.to_string()),
    );
    for m in &c.machines {
        s += &format!(
            "\n[[machines]]\n\
             id = {}\n\
             name = {}                  # shown on the board and invoices\n\
             kind = {}                  # laser, printer-3d, cnc, saw...: the key of tariffs and service plans\n\
             # tariff = \"laser\"           # billing (docs/BILLING.md)\n\
             # [machines.sensing.current]  # a current clamp: thresholds in mA (docs/PROTOCOL.md \"config\")\n\
             # idle_ma = 300\n\
             # busy_ma = 2000\n",
            q(&m.id),
            q(&m.name),
            q(&m.kind)
        );
    }
    s += "\n# Members and their badges (docs/PROTOCOL.md \"Badges\"):\n\
          # [[members]]\n\
          # id = \"alice\"\n\
          # name = \"Alice Martin\"\n\
          # badges = [\"ba279e0c1e5c2464\"]\n\
          \n\
          # Billing, maintenance plans, retention: see collector/site.example.toml, docs/BILLING.md,\n\
          # docs/MAINTENANCE.md and docs/SECURITY.md.\n";
    s
}

/// What to do after `init`, as printed by the command.
pub fn next_steps(r: &InitReport) -> String {
    let site = r.site_file.display();
    let conf = r.mosquitto_conf.display();
    let mut s = format!(
        "site written:\n  {site}  (site file; holds the collector's broker password)\n  {conf}  (Mosquitto configuration)\n  {}  (broker accounts: {} and one per machine)\n  {}  (what each account may publish and read)\n  {}  (the devices' signing keys, the collector's copy)\n",
        r.password_file.display(),
        r.collector_username,
        r.acl_file.display(),
        r.device_keys_file.display()
    );
    for (m, p) in &r.devices {
        s += &format!("  {}  (credentials of {m}'s device)\n", p.display());
    }
    s += &format!(
        "\nnext steps:\n\
         1. check the site file, then add members and tariffs:\n     fabmeter-collector check-config --config {site}\n\
         2. start Mosquitto on its configuration (as root it reads the password, ACL and persistence\n   files as user mosquitto: give them to it):\n     chown mosquitto: {pw} {acl}\n     mosquitto -c {conf}   (or point the mosquitto service at it: docs/INSTALL.md)\n\
         3. give the collector's user (the Debian package's is `fabmeter`) the site file and the data,\n   then start it:\n     chown fabmeter: {site}\n     chown -R fabmeter: {data}\n     systemctl restart fabmeter-collector   (or: fabmeter-collector run --config {site})\n\
         4. copy each device's credentials file to its board (mode 0600, owned by the agent's user)\n   and name it in that machine's `credentials_file` in agent.toml (docs/AGENT.md\n   \"Credentials and TLS\"), then delete it here\n",
        pw = r.password_file.display(),
        acl = r.acl_file.display(),
        data = r
            .ledger
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_parse_with_and_without_kind() {
        let m = parse_machines(&["laser-1:laser".into(), " saw-1 ".into(), "".into()]).unwrap();
        assert_eq!(
            m.iter()
                .map(|m| (m.id.as_str(), m.kind.as_str()))
                .collect::<Vec<_>>(),
            [("laser-1", "laser"), ("saw-1", "machine")]
        );
        assert!(matches!(
            parse_machines(&["a:".into()]),
            Err(InitError::BadMachine(_))
        ));
        assert!(matches!(
            parse_machines(&["a".into(), "a:laser".into()]),
            Err(InitError::DuplicateMachine(_))
        ));
        assert!(matches!(parse_machines(&[]), Err(InitError::NoMachines)));
    }
}
