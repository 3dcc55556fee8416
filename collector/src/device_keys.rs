//! The collector's device keys: one secret per machine, which that machine's device signs its
//! events with (docs/PROTOCOL.md "Signatures", docs/SECURITY.md).
//!
//! The file (`[security] device_keys_file`) is TOML, one `machine = "<64 hex digits>"` line per
//! machine, mode 0600, written atomically by `fabmeter-collector provision device`. The ingest
//! re-reads it when its modification time changes, so a newly provisioned device is recognised
//! without a restart; a bad edit keeps the keys read before (and says so in the log).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fabmeter_protocol::DeviceKey;

use crate::provision::{write_atomic, ProvisionError};

/// The keys of a site's machines, by machine id.
pub type KeyMap = HashMap<String, DeviceKey>;

fn invalid(path: &Path, msg: String) -> ProvisionError {
    ProvisionError::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
    }
}

/// Reads a key file; a missing file holds no key. A bad line is an error naming the machine.
pub fn load(path: &Path) -> Result<KeyMap, ProvisionError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeyMap::new()),
        Err(source) => {
            return Err(ProvisionError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let table: BTreeMap<String, String> = toml::from_str(&text).map_err(|e| {
        invalid(
            path,
            format!(
                "{}; expected lines like laser-1 = \"<64 hex digits>\"",
                e.message()
            ),
        )
    })?;
    table
        .into_iter()
        .map(|(machine, hex)| {
            let key = DeviceKey::from_hex(&hex).map_err(|e| {
                invalid(
                    path,
                    format!("key of machine {machine:?} {e}; re-provision it with `fabmeter-collector provision device --machine {machine}`"),
                )
            })?;
            Ok((machine, key))
        })
        .collect()
}

/// Sets the key of `machine` in the file at `path` (created if missing), keeping the others;
/// written atomically with mode 0600.
pub fn store(path: &Path, machine: &str, key: &DeviceKey) -> Result<(), ProvisionError> {
    let mut table: BTreeMap<String, String> = load(path)?
        .into_iter()
        .map(|(m, k)| (m, k.to_hex().to_string()))
        .collect();
    table.insert(machine.to_owned(), key.to_hex().to_string());
    let mut text = String::from(
        "# fabmeter device keys (docs/PROTOCOL.md \"Signatures\"): managed by `fabmeter-collector provision device`.\n\
         # Secret: each line is the key one device signs its events with.\n",
    );
    for (m, k) in &table {
        text += &format!("{} = \"{k}\"\n", toml::Value::String(m.clone()));
    }
    write_atomic(path, &text, 0o600)
}

/// A key file, re-read whenever its modification time changes.
#[derive(Debug)]
pub struct DeviceKeys {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Arc<KeyMap>)>,
}

impl DeviceKeys {
    /// Keys from `path` (read now, then whenever its modification time changes).
    pub fn new(path: PathBuf) -> Result<Self, ProvisionError> {
        let keys = load(&path)?;
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Ok(DeviceKeys {
            path,
            cache: Mutex::new((mtime, Arc::new(keys))),
        })
    }

    /// The keys now (re-reads the file if it changed).
    pub fn current(&self) -> Arc<KeyMap> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 != mtime {
            match load(&self.path) {
                Ok(k) => {
                    tracing::info!(path = %self.path.display(), machines = k.len(), "device keys reloaded");
                    *c = (mtime, Arc::new(k));
                }
                Err(e) => {
                    tracing::error!(error = %e, "device keys file unreadable; keeping the previous keys")
                }
            }
        }
        c.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_loads_and_names_bad_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("device-keys.toml");
        assert!(load(&path).expect("missing is empty").is_empty());
        let a = DeviceKey::new([1; 32]);
        let b = DeviceKey::new([2; 32]);
        store(&path, "laser-1", &a).expect("store");
        store(&path, "cnc-2", &b).expect("store");
        store(&path, "laser-1", &b).expect("replace");
        let keys = load(&path).expect("load");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["laser-1"].to_hex(), b.to_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "laser-1 = \"abc\"\n").expect("write");
        let e = load(&path).expect_err("bad key").to_string();
        assert!(
            e.contains("laser-1") && e.contains("provision device"),
            "{e}"
        );
    }

    #[test]
    fn reloads_when_the_file_changes_and_keeps_keys_on_a_bad_edit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.toml");
        let keys = DeviceKeys::new(path.clone()).expect("new");
        assert!(keys.current().is_empty());
        store(&path, "laser-1", &DeviceKey::new([1; 32])).expect("store");
        assert!(keys.current().contains_key("laser-1"));
        std::fs::write(&path, "not toml [").expect("write");
        // Make sure the modification time differs even on coarse clocks.
        let f = std::fs::File::options()
            .append(true)
            .open(&path)
            .expect("open");
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .expect("set mtime");
        assert!(keys.current().contains_key("laser-1"));
    }
}
