//! A private PostgreSQL cluster per test: `initdb` into a temp dir, the server on a free port of
//! 127.0.0.1 (its socket in the same dir), trust authentication for the role `fabmeter`.
//!
//! The binaries come from `FABMETER_PG_BIN` (a directory), else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package), else `PATH`. PostgreSQL refuses to
//! run as root: as root, the cluster runs as the `postgres` user the package creates.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::ServiceProcess;
use crate::util::{keep_temp_dirs, poll_until, running_as_root, try_free_port};
use crate::HarnessError;

/// The role tests connect as (superuser of the private cluster).
pub const PG_USER: &str = "fabmeter";

/// How long [`Postgres::start`] waits for the server to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running private PostgreSQL server; stopped (SIGKILL) and its files removed on drop.
#[derive(Debug)]
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    /// The uid/gid the server runs as (the `postgres` user when the tests run as root).
    run_as: Option<(u32, u32)>,
    process: ServiceProcess,
}

/// The directory of the PostgreSQL server binaries.
pub fn pg_bin_dir() -> Result<PathBuf, HarnessError> {
    let missing = |looked: String| HarnessError::MissingBinary {
        binary: "initdb",
        package: "postgresql",
        looked,
        hint: " or set FABMETER_PG_BIN to the directory of initdb and postgres".into(),
    };
    if let Some(dir) = std::env::var_os("FABMETER_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if crate::is_executable_file(&dir.join("initdb")) {
            Ok(dir)
        } else {
            Err(missing(format!("FABMETER_PG_BIN={}", dir.display())))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            crate::is_executable_file(&bin.join("initdb")).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| crate::is_executable_file(&d.join("initdb")))
        .ok_or_else(|| missing("/usr/lib/postgresql/*/bin and PATH".into()))
}

/// uid and gid of a user, from the password database.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam(3) with a valid C string; the result is read at once, before any other
    // call that could reuse its static buffer.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

impl Postgres {
    /// Creates a cluster and starts its server (fsync on, as in production).
    pub fn start() -> Result<Postgres, HarnessError> {
        let bin = pg_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("fabmeter-pg-")
            .tempdir()
            .map_err(HarnessError::io("creating the PostgreSQL temp dir"))?;
        let run_as = if running_as_root() {
            let ids = user_ids("postgres").ok_or_else(|| HarnessError::ServiceFailed {
                service: "postgres",
                reason: "running as root and there is no `postgres` user to run the server as: \
                         apt-get install postgresql (it creates the user)"
                    .into(),
                log_tail: String::new(),
            })?;
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))
                .map_err(HarnessError::io("handing the temp dir to postgres"))?;
            Some(ids)
        } else {
            None
        };
        let mut pg = Postgres {
            process: ServiceProcess::new("postgres", vec![dir.path().join("server.log")]),
            dir,
            bin,
            port: 0,
            run_as,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.data_dir())
            .args([
                "-A",
                "trust",
                "-U",
                PG_USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .map_err(HarnessError::io("running initdb"))?;
        if !out.status.success() {
            return Err(HarnessError::CommandFailed {
                command: "initdb".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        pg.port = try_free_port()?;
        pg.launch()?;
        Ok(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        c
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server on its port and waits until it accepts connections.
    fn launch(&mut self) -> Result<(), HarnessError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .map_err(HarnessError::io("opening the PostgreSQL log"))?;
        let err = log
            .try_clone()
            .map_err(HarnessError::io("opening the PostgreSQL log"))?;
        let mut c = self.command("postgres");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        // The server dies with the test thread that started it, even if the test is killed.
        // SAFETY: prctl(2) is async-signal-safe; set after the uid change, which clears it.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = c.spawn().map_err(HarnessError::io("starting postgres"))?;
        self.process.set(child);
        let ready = self.bin.join("pg_isready");
        let port = self.port;
        let process = &self.process;
        poll_until(STARTUP_TIMEOUT, "PostgreSQL to accept connections", || {
            if !process.is_running() {
                return Some(false);
            }
            Command::new(&ready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .ok()
                .filter(|s| s.success())
                .map(|_| true)
        })
        .and_then(|up| {
            if up {
                Ok(())
            } else {
                Err(self.process.failure("exited during startup"))
            }
        })
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` (see [`Postgres::create_database`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, HarnessError> {
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
                name,
            ])
            .output()
            .map_err(HarnessError::io("running createdb"))?;
        if !out.status.success() {
            return Err(HarnessError::CommandFailed {
                command: format!("createdb {name}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(self.url(name))
    }

    /// Runs SQL through `psql` on database `db`; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, HarnessError> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .map_err(HarnessError::io("running psql"))?;
        if !out.status.success() {
            return Err(HarnessError::CommandFailed {
                command: format!("psql -c {sql}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// SIGKILLs the server (a crash: no shutdown checkpoint; its committed data survives).
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        self.process.kill()?;
        Ok(())
    }

    /// Starts the server again on the same port and data (after [`Postgres::kill`]).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.process.kill()?;
        // The killed server's backends may hold its shared memory for a moment: a start then
        // exits at once, and is retried (a back-off, not a synchronisation sleep).
        let mut pause = Duration::from_millis(50);
        for _ in 0..20 {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(HarnessError::ServiceFailed { .. }) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
        self.launch()
    }

    /// The data directory's parent (logs, socket), kept when `FABMETER_E2E_KEEP_TMP` is set.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.process.kill();
        if keep_temp_dirs() {
            let path = std::mem::replace(
                &mut self.dir,
                match TempDir::new() {
                    Ok(d) => d,
                    Err(_) => return,
                },
            )
            .keep();
            eprintln!("kept PostgreSQL dir {}", path.display());
        }
    }
}
