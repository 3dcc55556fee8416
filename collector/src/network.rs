//! A network collector: one process serving many sites from one shared PostgreSQL ledger
//! (docs/SCALING.md).
//!
//! Its file holds what belongs to the process (`[network]`, `[mqtt]`, `[ledger]`, `[http]`,
//! `[timeseries]`); each site keeps its own site file (`[site]`, `[[machines]]`, `[[members]]`,
//! `[billing]`, `[maintenance]`, ...) in `network.sites_dir`, the same file a single-site collector
//! reads, without the process tables. Several collectors may share one directory, each serving
//! the sites `network.sites` lists (or all of them, with a shared MQTT subscription group).
//!
//! ```toml
//! [network]
//! name = "collector-a"
//! sites_dir = "/etc/fabmeter/sites"
//! sites = ["atelier-lyon", "atelier-brest"]   # empty or absent: every site file
//!
//! [ledger]
//! url = "postgres://fabmeter@db/fabmeter"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{
    err, parse_toml, Config, ConfigError, HttpConfig, LedgerConfig, MqttConfig, TimeSeriesSettings,
};

/// `[network]` of a collector file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// This collector's name: its MQTT client id is `fm-collector-{name}` unless
    /// `mqtt.client_id` is set, and the network page shows it.
    pub name: String,
    /// The directory of the site files (`*.toml`, one site each); relative to the collector file.
    pub sites_dir: PathBuf,
    /// The site ids this collector serves; empty: every site file of `sites_dir`.
    #[serde(default)]
    pub sites: Vec<String>,
}

/// A collector file in network mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorFile {
    /// The sites served.
    pub network: NetworkConfig,
    /// The broker.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The shared ledger (`url` required).
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// The time-series store; `{site}` in its `url`, `org` or `bucket` gives each site its own
    /// tenant (a VictoriaMetrics account, an InfluxDB org or bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeseries: Option<TimeSeriesSettings>,
    /// The HTTP API and pages.
    #[serde(default)]
    pub http: HttpConfig,
}

/// The tables of a site file that belong to the collector file in network mode.
const PROCESS_TABLES: &[&str] = &["network", "mqtt", "ledger", "timeseries", "http"];

/// A network collector's configuration: its name and every site it serves, each a complete
/// [`Config`] (the site file with the collector's process tables).
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// The collector's name (`network.name`).
    pub name: String,
    /// The sites, sorted by id.
    pub sites: Vec<Config>,
}

/// Whether TOML text is a network collector file (it has a `[network]` table).
pub fn is_network_file(text: &str) -> bool {
    text.parse::<toml::Table>()
        .map(|t| t.contains_key("network"))
        .unwrap_or(false)
}

impl Network {
    /// Reads the collector file at `path` (its text `text`) and the site files it names; every
    /// error names the file, the key and a fix.
    pub fn load(path: &Path, text: &str) -> Result<Network, ConfigError> {
        let file_name = path.display().to_string();
        let mut c: CollectorFile = parse_toml(text).map_err(|e| e.in_file(&file_name))?;
        let located = |e: ConfigError| e.located(text).in_file(&file_name);
        if c.network.name.trim().is_empty() {
            return Err(located(err(
                "network.name",
                "is empty",
                "name = \"collector-a\"",
            )));
        }
        if c.ledger.url.is_none() {
            return Err(located(err(
                "ledger.url",
                "a network collector needs the shared PostgreSQL ledger (one SQLite file serves one site)",
                "[ledger] url = \"postgres://fabmeter@127.0.0.1:5432/fabmeter\"",
            )));
        }
        if c.mqtt.client_id.is_empty() {
            c.mqtt.client_id = format!("fm-collector-{}", c.network.name);
        }
        let dir = if c.network.sites_dir.is_relative() {
            path.parent()
                .unwrap_or(Path::new("."))
                .join(&c.network.sites_dir)
        } else {
            c.network.sites_dir.clone()
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| {
                located(err(
                    "network.sites_dir",
                    format!("cannot read the directory {}: {e}", dir.display()),
                    "sites_dir = \"sites\" (a directory of site files, one per site)",
                ))
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut sites: Vec<(Config, String)> = Vec::new();
        for f in &files {
            let name = f.display().to_string();
            let site_text = std::fs::read_to_string(f).map_err(|e| {
                err(
                    "(file)",
                    format!("cannot read it: {e}"),
                    "a readable site file",
                )
                .in_file(&name)
            })?;
            let site = Network::site(&c, &site_text).map_err(|e| e.in_file(&name))?;
            if let Some((_, other)) = sites.iter().find(|(s, _)| s.site.id == site.site.id) {
                return Err(err(
                    "site.id",
                    format!("site {} is also the site of {other}", site.site.id),
                    "one file per site, each with its own site.id",
                )
                .located(&site_text)
                .in_file(&name));
            }
            sites.push((site, name));
        }
        if !c.network.sites.is_empty() {
            for id in &c.network.sites {
                if !sites.iter().any(|(s, _)| &s.site.id == id) {
                    return Err(located(err(
                        "network.sites",
                        format!("no site file in {} has site.id = \"{id}\"", dir.display()),
                        "list the ids of site files of network.sites_dir",
                    )));
                }
            }
            sites.retain(|(s, _)| c.network.sites.contains(&s.site.id));
        }
        if sites.is_empty() {
            return Err(located(err(
                "network.sites_dir",
                format!("{} holds no site file (*.toml)", dir.display()),
                "put one site file per site there (`fabmeter-collector print-config --site atelier-lyon` prints one)",
            )));
        }
        sites.sort_by(|a, b| a.0.site.id.cmp(&b.0.site.id));
        Ok(Network {
            name: c.network.name,
            sites: sites.into_iter().map(|(s, _)| s).collect(),
        })
    }

    /// One site file, completed with the collector's process tables and validated.
    fn site(c: &CollectorFile, text: &str) -> Result<Config, ConfigError> {
        if let Ok(table) = text.parse::<toml::Table>() {
            if let Some(t) = PROCESS_TABLES.iter().find(|t| table.contains_key(**t)) {
                return Err(err(
                    *t,
                    format!("[{t}] belongs in the network collector's file, not in a site file"),
                    "move it to the collector file (one [mqtt], [ledger], [http], [timeseries] for every site it serves)",
                )
                .located(text));
            }
        }
        let mut site = Config::from_toml(text)?;
        site.mqtt = c.mqtt.clone();
        site.ledger = c.ledger.clone();
        site.http = c.http.clone();
        site.timeseries = c.timeseries.clone();
        site.validate().map_err(|e| e.located(text))?;
        Ok(site)
    }

    /// The site `id`, for the commands of one site (`invoice --site ID`, ...); the error lists
    /// the sites there are.
    pub fn take_site(self, id: Option<&str>) -> Result<Config, ConfigError> {
        let ids: Vec<String> = self.sites.iter().map(|s| s.site.id.clone()).collect();
        let Some(id) = id else {
            return Err(err(
                "--site",
                "this is a network collector file: name the site the command is for",
                &format!(
                    "--site {}",
                    ids.first().map_or("atelier-lyon", String::as_str)
                ),
            ));
        };
        self.sites
            .into_iter()
            .find(|s| s.site.id == id)
            .ok_or_else(|| {
                err(
                    "--site",
                    format!(
                        "this collector serves no site {id}; it serves {}",
                        ids.join(", ")
                    ),
                    &format!(
                        "--site {}",
                        ids.first().map_or("atelier-lyon", String::as_str)
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    const COLLECTOR: &str = r#"
[network]
name = "a"
sites_dir = "sites"

[ledger]
url = "postgres://fabmeter@127.0.0.1:5432/fabmeter"
"#;

    #[test]
    fn loads_every_site_file_with_the_process_tables_of_the_collector() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("sites")).expect("mkdir");
        write(
            &dir.path().join("sites"),
            "b.toml",
            "[site]\nid = \"site-b\"\n[[machines]]\nid = \"laser\"\n",
        );
        write(
            &dir.path().join("sites"),
            "a.toml",
            "[site]\nid = \"site-a\"\n",
        );
        write(&dir.path().join("sites"), "notes.txt", "not a site");
        let path = write(dir.path(), "collector.toml", COLLECTOR);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(is_network_file(&text));
        let n = Network::load(&path, &text).expect("load");
        assert_eq!(n.name, "a");
        let ids: Vec<&str> = n.sites.iter().map(|s| s.site.id.as_str()).collect();
        assert_eq!(ids, ["site-a", "site-b"]);
        for s in &n.sites {
            assert_eq!(
                s.ledger.url.as_deref(),
                Some("postgres://fabmeter@127.0.0.1:5432/fabmeter")
            );
            assert_eq!(s.client_id(), "fm-collector-a");
        }
        assert_eq!(n.sites[1].machines.len(), 1);
        let b = n.clone().take_site(Some("site-b")).expect("site b");
        assert_eq!(b.site.id, "site-b");
        let e = n
            .clone()
            .take_site(Some("site-c"))
            .expect_err("no such site");
        assert!(e.to_string().contains("serves site-a, site-b"), "{e}");
        assert!(n
            .take_site(None)
            .expect_err("no --site")
            .to_string()
            .contains("--site site-a"));
    }

    #[test]
    fn the_example_network_file_loads() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("sites")).expect("mkdir");
        std::fs::write(
            dir.path().join("sites").join("lyon.toml"),
            "[site]\nid = \"atelier-lyon\"\n",
        )
        .expect("site");
        let text = include_str!("../network.example.toml");
        let path = write(dir.path(), "collector.toml", text);
        let n = Network::load(&path, text).expect("network.example.toml loads");
        assert_eq!(n.name, "collector-a");
        assert_eq!(n.sites[0].client_id(), "fm-collector-collector-a");
        assert_eq!(n.sites[0].ledger.batch_max, 2000);
    }

    #[test]
    fn bad_network_files_name_the_key_and_the_fix() {
        let dir = tempfile::tempdir().expect("tmp");
        let sites = dir.path().join("sites");
        std::fs::create_dir(&sites).expect("mkdir");
        let load = |text: &str| {
            let path = write(dir.path(), "collector.toml", text);
            Network::load(&path, text)
                .expect_err("must fail")
                .to_string()
        };
        // No site file at all.
        assert!(load(COLLECTOR).contains("holds no site file"));
        // SQLite cannot serve a network.
        let e = load("[network]\nname = \"a\"\nsites_dir = \"sites\"\n");
        assert!(e.contains("ledger.url") && e.contains("postgres://"), "{e}");
        // A process table in a site file.
        write(
            &sites,
            "a.toml",
            "[site]\nid = \"site-a\"\n[mqtt]\nurl = \"mqtt://x:1883\"\n",
        );
        let e = load(COLLECTOR);
        assert!(
            e.contains("a.toml") && e.contains("[mqtt] belongs in the network collector"),
            "{e}"
        );
        // Two files of one site.
        write(&sites, "a.toml", "[site]\nid = \"site-a\"\n");
        write(&sites, "a2.toml", "[site]\nid = \"site-a\"\n");
        let e = load(COLLECTOR);
        assert!(
            e.contains("a2.toml") && e.contains("also the site of"),
            "{e}"
        );
        std::fs::remove_file(sites.join("a2.toml")).expect("rm");
        // A listed site without a file.
        let e = load(&format!("{COLLECTOR}\n").replace(
            "sites_dir = \"sites\"",
            "sites_dir = \"sites\"\nsites = [\"site-z\"]",
        ));
        assert!(e.contains("network.sites") && e.contains("site-z"), "{e}");
        // A bad site file is reported with its own name.
        write(&sites, "b.toml", "[site]\nid = \"Bad Id\"\n");
        let e = load(COLLECTOR);
        assert!(e.contains("b.toml") && e.contains("site.id"), "{e}");
    }
}
