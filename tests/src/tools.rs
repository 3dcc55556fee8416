//! Locating the external executables the harness drives.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::HarnessError;

/// Directories searched after `PATH` (Debian puts `mosquitto` in `/usr/sbin`, which is
/// not on a normal user's `PATH`).
pub const FALLBACK_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
    "/sbin",
    "/bin",
];

/// An external executable the harness runs, with the Debian package providing it.
///
/// Every tool can be overridden with an environment variable ([`Tool::env_var`]) holding
/// the path of the executable; otherwise it is looked up on `PATH`, then in [`FALLBACK_DIRS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tool {
    /// The MQTT broker, `/usr/sbin/mosquitto` (package `mosquitto`).
    Mosquitto,
    /// Password file tool `mosquitto_passwd` (package `mosquitto`).
    MosquittoPasswd,
    /// CLI publisher `mosquitto_pub` (package `mosquitto-clients`).
    MosquittoPub,
    /// CLI subscriber `mosquitto_sub` (package `mosquitto-clients`).
    MosquittoSub,
    /// Single-node VictoriaMetrics, `/usr/bin/victoria-metrics` (package `victoria-metrics`).
    VictoriaMetrics,
    /// `openssl` CLI used to generate test certificates (package `openssl`).
    Openssl,
    /// `stdbuf`, used to line-buffer `mosquitto_sub` output (package `coreutils`).
    Stdbuf,
}

impl Tool {
    /// File name of the executable.
    pub fn binary_name(self) -> &'static str {
        match self {
            Tool::Mosquitto => "mosquitto",
            Tool::MosquittoPasswd => "mosquitto_passwd",
            Tool::MosquittoPub => "mosquitto_pub",
            Tool::MosquittoSub => "mosquitto_sub",
            Tool::VictoriaMetrics => "victoria-metrics",
            Tool::Openssl => "openssl",
            Tool::Stdbuf => "stdbuf",
        }
    }

    /// Debian package to `apt-get install` when the executable is missing.
    pub fn apt_package(self) -> &'static str {
        match self {
            Tool::Mosquitto | Tool::MosquittoPasswd => "mosquitto",
            Tool::MosquittoPub | Tool::MosquittoSub => "mosquitto-clients",
            Tool::VictoriaMetrics => "victoria-metrics",
            Tool::Openssl => "openssl",
            Tool::Stdbuf => "coreutils",
        }
    }

    /// Environment variable that overrides the executable's path, e.g. `FABMETER_MOSQUITTO_BIN`.
    pub fn env_var(self) -> &'static str {
        match self {
            Tool::Mosquitto => "FABMETER_MOSQUITTO_BIN",
            Tool::MosquittoPasswd => "FABMETER_MOSQUITTO_PASSWD_BIN",
            Tool::MosquittoPub => "FABMETER_MOSQUITTO_PUB_BIN",
            Tool::MosquittoSub => "FABMETER_MOSQUITTO_SUB_BIN",
            Tool::VictoriaMetrics => "FABMETER_VICTORIA_METRICS_BIN",
            Tool::Openssl => "FABMETER_OPENSSL_BIN",
            Tool::Stdbuf => "FABMETER_STDBUF_BIN",
        }
    }

    /// Finds the executable using the real process environment (see [`Tool::locate_with`]).
    pub fn locate(self) -> Result<PathBuf, HarnessError> {
        self.locate_with(|name| std::env::var_os(name))
    }

    /// Finds the executable, reading environment variables through `env` (so the lookup
    /// can be tested without mutating the process environment).
    ///
    /// Order: the override variable [`Tool::env_var`] if set and non-empty (it must then
    /// name an executable file, no fallback), then each directory of `PATH`, then
    /// [`FALLBACK_DIRS`].
    pub fn locate_with(
        self,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<PathBuf, HarnessError> {
        if let Some(path) = env(self.env_var()).filter(|p| !p.is_empty()) {
            return self.locate_at_with_hint(
                Path::new(&path),
                format!(
                    " or fix {} (currently {})",
                    self.env_var(),
                    Path::new(&path).display()
                ),
            );
        }
        let path_dirs: Vec<PathBuf> = env("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let fallback = FALLBACK_DIRS.iter().map(PathBuf::from);
        for dir in path_dirs.into_iter().chain(fallback) {
            let candidate = dir.join(self.binary_name());
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
        }
        Err(HarnessError::MissingBinary {
            binary: self.binary_name(),
            package: self.apt_package(),
            looked: format!("looked in PATH and {}", FALLBACK_DIRS.join(", ")),
            hint: format!(", or point {} at the executable", self.env_var()),
        })
    }

    /// Checks that an explicitly given path is an executable file.
    pub fn locate_at(self, path: &Path) -> Result<PathBuf, HarnessError> {
        self.locate_at_with_hint(path, String::new())
    }

    fn locate_at_with_hint(self, path: &Path, hint: String) -> Result<PathBuf, HarnessError> {
        if is_executable_file(path) {
            Ok(path.to_path_buf())
        } else {
            Err(HarnessError::MissingBinary {
                binary: self.binary_name(),
                package: self.apt_package(),
                looked: format!("{} is not an executable file", path.display()),
                hint,
            })
        }
    }
}

/// True if `path` is a regular file (after following symlinks) with an execute bit set.
pub fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
