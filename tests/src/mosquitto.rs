//! A private Mosquitto broker per test.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::mqtt_cli::MqttCli;
use crate::process::{relaunch_until_ready, Launch, ServiceProcess};
use crate::util::{
    keep_temp_dirs, poll_until, port_accepts_connections, running_as_root, try_free_port,
};
use crate::{HarnessError, Tool};

/// Host every service binds to.
pub const LOCALHOST: &str = "127.0.0.1";

/// Default `max_queued_messages`: large enough that tests pushing 20,000 QoS 1 messages
/// through a persistent session are never silently truncated by the broker's default (1000).
pub const DEFAULT_MAX_QUEUED_MESSAGES: u32 = 100_000;

/// How many fresh ports [`MosquittoBuilder::start`] tries when it loses a port race.
const PORT_ATTEMPTS: usize = 8;

/// How long [`Mosquitto::stop`] waits for the broker to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Certificate files for a TLS listener (PEM paths chosen by the test, e.g. from
/// [`crate::TestPki`]).
///
/// Becomes a second listener on its own port ([`Mosquitto::tls_port`]) next to the plain
/// one, with mosquitto's per-listener options `cafile`, `certfile`, `keyfile` and
/// `require_certificate`.
#[derive(Clone, Debug)]
pub struct TlsListener {
    /// CA certificate(s) used to verify client certificates.
    pub cafile: PathBuf,
    /// Server certificate.
    pub certfile: PathBuf,
    /// Server private key.
    pub keyfile: PathBuf,
    /// Whether clients must present a certificate signed by `cafile`.
    pub require_certificate: bool,
}

impl TlsListener {
    /// A TLS listener that does not require client certificates.
    pub fn new(
        cafile: impl Into<PathBuf>,
        certfile: impl Into<PathBuf>,
        keyfile: impl Into<PathBuf>,
    ) -> Self {
        TlsListener {
            cafile: cafile.into(),
            certfile: certfile.into(),
            keyfile: keyfile.into(),
            require_certificate: false,
        }
    }

    /// Requires (or not) a client certificate signed by the CA.
    pub fn require_certificate(mut self, required: bool) -> Self {
        self.require_certificate = required;
        self
    }
}

/// Options for a [`Mosquitto`] broker; obtain with [`Mosquitto::builder`].
#[derive(Clone, Debug)]
pub struct MosquittoBuilder {
    binary: Option<PathBuf>,
    persistence: bool,
    password_file: Option<PathBuf>,
    users: Vec<(String, String)>,
    acl_file: Option<PathBuf>,
    acl_text: Option<String>,
    allow_anonymous: Option<bool>,
    tls: Option<TlsListener>,
    max_queued_messages: u32,
    max_inflight_messages: Option<u32>,
    verbose_log: bool,
    extra_config: Vec<String>,
    startup_timeout: Duration,
    /// Set by [`Mosquitto::start_from_config`]: the broker reads this file as it is.
    given_config: Option<PathBuf>,
}

impl Default for MosquittoBuilder {
    fn default() -> Self {
        MosquittoBuilder {
            binary: None,
            persistence: false,
            password_file: None,
            users: Vec::new(),
            acl_file: None,
            acl_text: None,
            allow_anonymous: None,
            tls: None,
            max_queued_messages: DEFAULT_MAX_QUEUED_MESSAGES,
            max_inflight_messages: None,
            verbose_log: false,
            extra_config: Vec::new(),
            startup_timeout: Duration::from_secs(10),
            given_config: None,
        }
    }
}

impl MosquittoBuilder {
    /// Uses this executable instead of looking up [`Tool::Mosquitto`]
    /// (`FABMETER_MOSQUITTO_BIN`, `PATH`, `/usr/sbin`).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Turns persistence on or off (default off). When on, `persistence_location` is a
    /// directory inside the broker's temp dir ([`Mosquitto::persistence_dir`]); mosquitto
    /// writes `mosquitto.db` there on a clean exit ([`Mosquitto::stop`]), not on
    /// [`Mosquitto::kill`].
    pub fn persistence(mut self, enabled: bool) -> Self {
        self.persistence = enabled;
        self
    }

    /// Uses an existing mosquitto password file (hashed, see `mosquitto_passwd`).
    /// Disables anonymous access unless [`MosquittoBuilder::allow_anonymous`] says otherwise.
    pub fn password_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.password_file = Some(path.into());
        self
    }

    /// Adds a user; the harness writes the password file into the temp dir with
    /// `mosquitto_passwd -U`. Disables anonymous access unless
    /// [`MosquittoBuilder::allow_anonymous`] says otherwise. Exclusive with
    /// [`MosquittoBuilder::password_file`].
    pub fn user(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.push((username.into(), password.into()));
        self
    }

    /// Uses an existing ACL file.
    pub fn acl_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.acl_file = Some(path.into());
        self
    }

    /// Writes `text` as the ACL file (mosquitto `acl_file` syntax: `user NAME` then
    /// `topic [read|write|readwrite|deny] FILTER` lines; lines before the first `user`
    /// apply to anonymous clients). Exclusive with [`MosquittoBuilder::acl_file`].
    pub fn acl(mut self, text: impl Into<String>) -> Self {
        self.acl_text = Some(text.into());
        self
    }

    /// Overrides `allow_anonymous` (default: true, unless a password file or users are set).
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = Some(allow);
        self
    }

    /// Adds a TLS listener on a second free port.
    pub fn tls(mut self, listener: TlsListener) -> Self {
        self.tls = Some(listener);
        self
    }

    /// Sets `max_queued_messages` (per-client queue of QoS 1/2 messages while offline or
    /// in flight; 0 = unlimited). Default [`DEFAULT_MAX_QUEUED_MESSAGES`].
    pub fn max_queued_messages(mut self, count: u32) -> Self {
        self.max_queued_messages = count;
        self
    }

    /// Sets `max_inflight_messages` (QoS 1/2 messages in flight per client; 0 = unlimited).
    /// Default: mosquitto's own (20).
    pub fn max_inflight_messages(mut self, count: u32) -> Self {
        self.max_inflight_messages = Some(count);
        self
    }

    /// Logs `log_type all` (every packet) instead of errors, warnings, notices and information.
    pub fn verbose_log(mut self, verbose: bool) -> Self {
        self.verbose_log = verbose;
        self
    }

    /// Appends a raw line to the global section of `mosquitto.conf` (before the listeners),
    /// e.g. `"autosave_interval 1"` or `"persistent_client_expiration 1h"`.
    pub fn extra_config(mut self, line: impl Into<String>) -> Self {
        self.extra_config.push(line.into());
        self
    }

    /// How long to wait for the broker to accept connections (default 10 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Creates the temp dir, writes the config (and password/ACL files), starts the broker
    /// on a free port and waits (polling, startup timeout) until the process is alive, has
    /// logged `... running` in this run and accepts TCP connections on every listener (the log
    /// check guards against connecting to whoever won a port race). If the broker loses a
    /// race for the port (`Address already in use`) it is retried on a new port.
    pub fn start(self) -> Result<Mosquitto, HarnessError> {
        if self.password_file.is_some() && !self.users.is_empty() {
            return Err(HarnessError::Usage(
                "set either password_file() or user(), not both".into(),
            ));
        }
        if self.acl_file.is_some() && self.acl_text.is_some() {
            return Err(HarnessError::Usage(
                "set either acl_file() or acl(), not both".into(),
            ));
        }
        let binary = match &self.binary {
            Some(path) => Tool::Mosquitto.locate_at(path)?,
            None => Tool::Mosquitto.locate()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("fabmeter-mosquitto-")
            .tempdir()
            .map_err(HarnessError::io("creating the mosquitto temp dir"))?;
        let dir_path = dir.path().to_path_buf();
        let persistence_dir = dir_path.join("persistence");
        std::fs::create_dir(&persistence_dir)
            .map_err(HarnessError::io("creating the persistence dir"))?;

        let password_file = match (&self.password_file, self.users.is_empty()) {
            (Some(path), _) => Some(absolute(path, "password file")?),
            (None, false) => {
                let path = dir_path.join("passwd");
                let users: Vec<(&str, &str)> = self
                    .users
                    .iter()
                    .map(|(u, p)| (u.as_str(), p.as_str()))
                    .collect();
                write_password_file(&path, &users)?;
                Some(path)
            }
            (None, true) => None,
        };
        let acl_file = match (&self.acl_file, &self.acl_text) {
            (Some(path), _) => Some(absolute(path, "ACL file")?),
            (None, Some(text)) => {
                let path = dir_path.join("acl");
                write_acl_file(&path, text)?;
                Some(path)
            }
            (None, None) => None,
        };
        let tls = match &self.tls {
            Some(t) => Some(TlsListener {
                cafile: absolute(&t.cafile, "TLS cafile")?,
                certfile: absolute(&t.certfile, "TLS certfile")?,
                keyfile: absolute(&t.keyfile, "TLS keyfile")?,
                require_certificate: t.require_certificate,
            }),
            None => None,
        };

        let log_path = dir_path.join("mosquitto.log");
        let stderr_path = dir_path.join("mosquitto.stderr.log");
        let mut broker = Mosquitto {
            process: ServiceProcess::new("mosquitto", vec![log_path.clone(), stderr_path.clone()]),
            binary,
            config_path: dir_path.join("mosquitto.conf"),
            log_path,
            stderr_path,
            persistence_dir,
            password_file,
            acl_file,
            tls,
            port: 0,
            tls_port: None,
            options: self,
            dir_path,
            dir: Some(dir),
        };
        for _ in 0..PORT_ATTEMPTS {
            broker.port = try_free_port()?;
            broker.tls_port = match broker.tls {
                Some(_) => Some(try_free_port()?),
                None => None,
            };
            if broker.launch_once()? == Launch::Ready {
                return Ok(broker);
            }
        }
        Err(broker.process.failure(format!(
            "failed to bind a free port in {PORT_ATTEMPTS} attempts (Address already in use)"
        )))
    }
}

/// A mosquitto broker owned by one test: its own port on 127.0.0.1, its own temp dir
/// (config, log, persistence DB, password and ACL files).
///
/// Dropping it kills the broker and deletes the temp dir (set `FABMETER_E2E_KEEP_TMP=1`
/// to keep the dir for debugging; its path is printed on stderr).
///
/// ```no_run
/// use fabmeter_e2e::Mosquitto;
/// let broker = Mosquitto::builder().persistence(true).start().expect("mosquitto");
/// let client = broker.client();
/// client.publish("fab/hello", "hi", 1, true).expect("publish");
/// ```
#[derive(Debug)]
pub struct Mosquitto {
    process: ServiceProcess,
    options: MosquittoBuilder,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    persistence_dir: PathBuf,
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    tls: Option<TlsListener>,
    port: u16,
    tls_port: Option<u16>,
    dir_path: PathBuf,
    dir: Option<TempDir>,
}

impl Mosquitto {
    /// Options for a new broker.
    pub fn builder() -> MosquittoBuilder {
        MosquittoBuilder::default()
    }

    /// Starts Mosquitto on a configuration file written by someone else (e.g. `fabmeter-collector
    /// provision`), exactly as it is: `mosquitto -c config`. `port` is the port of a listener the
    /// file declares, polled for readiness (with the ` running` line of the broker's own log,
    /// which goes to stderr when the file sets no `log_dest`, captured in the harness's temp
    /// dir). [`Mosquitto::kill`], [`Mosquitto::stop`] and [`Mosquitto::start_again`] work as for
    /// a built broker; [`Mosquitto::persistence_dir`] is not the file's.
    ///
    /// As root, Mosquitto 2 drops privileges to user `mosquitto` before it opens the password,
    /// ACL and persistence files: hand them to that user first, as on a real site
    /// ([`hand_to_broker_user`]).
    pub fn start_from_config(config: &Path, port: u16) -> Result<Mosquitto, HarnessError> {
        let binary = Tool::Mosquitto.locate()?;
        let config = absolute(config, "mosquitto config")?;
        let dir = tempfile::Builder::new()
            .prefix("fabmeter-mosquitto-")
            .tempdir()
            .map_err(HarnessError::io("creating the mosquitto temp dir"))?;
        let dir_path = dir.path().to_path_buf();
        let stderr_path = dir_path.join("mosquitto.stderr.log");
        let options = MosquittoBuilder {
            given_config: Some(config.clone()),
            ..MosquittoBuilder::default()
        };
        let mut broker = Mosquitto {
            process: ServiceProcess::new("mosquitto", vec![stderr_path.clone()]),
            binary,
            config_path: config,
            log_path: stderr_path.clone(),
            stderr_path,
            persistence_dir: dir_path.join("persistence"),
            password_file: None,
            acl_file: None,
            tls: None,
            port,
            tls_port: None,
            options,
            dir_path,
            dir: Some(dir),
        };
        match broker.launch_once()? {
            Launch::Ready => Ok(broker),
            Launch::PortInUse => Err(broker
                .process
                .failure(format!("port {port} of the given config is in use"))),
        }
    }

    /// Starts a broker with default options (anonymous, no persistence).
    pub fn start() -> Result<Mosquitto, HarnessError> {
        Self::builder().start()
    }

    /// Port of the plain MQTT listener.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host of the listeners: always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        LOCALHOST
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://{LOCALHOST}:{}", self.port)
    }

    /// Port of the TLS listener, if one was configured.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `mqtts://127.0.0.1:TLS_PORT`, if a TLS listener was configured.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("mqtts://{LOCALHOST}:{port}"))
    }

    /// The broker's temp dir (config, logs, `persistence/`, generated password/ACL files).
    pub fn data_dir(&self) -> &Path {
        &self.dir_path
    }

    /// The `persistence_location` directory.
    pub fn persistence_dir(&self) -> &Path {
        &self.persistence_dir
    }

    /// The persistence DB file mosquitto writes on a clean exit.
    pub fn persistence_db_path(&self) -> PathBuf {
        self.persistence_dir.join("mosquitto.db")
    }

    /// The generated `mosquitto.conf`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The broker's log file (`log_dest file`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The password file in use, if any.
    pub fn password_file_path(&self) -> Option<&Path> {
        self.password_file.as_deref()
    }

    /// The ACL file in use, if any.
    pub fn acl_file_path(&self) -> Option<&Path> {
        self.acl_file.as_deref()
    }

    /// The whole log so far (all runs), lossy UTF-8; empty if it cannot be read.
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Pid of the broker while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// True while the broker process is alive.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// A `mosquitto_pub`/`mosquitto_sub` client for the plain listener.
    pub fn client(&self) -> MqttCli {
        MqttCli::new(LOCALHOST, self.port)
    }

    /// A client for the TLS listener, verifying the server with `cafile`.
    pub fn tls_client(&self, cafile: impl Into<PathBuf>) -> Result<MqttCli, HarnessError> {
        let port = self.tls_port.ok_or_else(|| {
            HarnessError::Usage(
                "this broker has no TLS listener (see MosquittoBuilder::tls)".into(),
            )
        })?;
        Ok(MqttCli::new(LOCALHOST, port).cafile(cafile))
    }

    /// SIGTERM and wait for a clean exit (mosquitto saves its persistence DB). Errors if the
    /// broker had died on its own, exits non-zero or needs SIGKILL. No-op if not running.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        self.process.stop(STOP_TIMEOUT)
    }

    /// SIGKILL (no persistence DB is written) and reap. No-op if not running.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        self.process.kill()
    }

    /// Starts the stopped/killed broker again with the same port(s), data dir and config,
    /// retrying while the port is still taken, up to the startup timeout.
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        if self.process.is_running() {
            return Err(HarnessError::Usage(
                "mosquitto is still running: stop() or kill() it first".into(),
            ));
        }
        // Reap a broker that died on its own.
        self.process.kill()?;
        let timeout = self.options.startup_timeout;
        if relaunch_until_ready(timeout, || self.launch_once())? {
            return Ok(());
        }
        Err(self.process.failure(format!(
            "port {} still in use after {timeout:?} of retries",
            self.port
        )))
    }

    /// Changes how long [`Mosquitto::start_again`] keeps trying (default: the builder's
    /// startup timeout, 10 s).
    pub fn set_startup_timeout(&mut self, timeout: Duration) {
        self.options.startup_timeout = timeout;
    }

    /// [`Mosquitto::stop`] then [`Mosquitto::start_again`].
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start_again()
    }

    fn write_config(&self) -> Result<(), HarnessError> {
        let o = &self.options;
        let mut conf = String::from("# generated by fabmeter-e2e\nper_listener_settings false\n");
        if running_as_root() {
            // Otherwise mosquitto drops privileges to user `mosquitto`, which cannot open
            // files in the harness's temp dir.
            conf.push_str("user root\n");
        }
        let anonymous = o.allow_anonymous.unwrap_or(self.password_file.is_none());
        let _ = writeln!(conf, "allow_anonymous {anonymous}");
        if let Some(path) = &self.password_file {
            let _ = writeln!(conf, "password_file {}", conf_value(path)?);
        }
        if let Some(path) = &self.acl_file {
            let _ = writeln!(conf, "acl_file {}", conf_value(path)?);
        }
        let _ = writeln!(conf, "persistence {}", o.persistence);
        if o.persistence {
            let _ = writeln!(
                conf,
                "persistence_location {}/",
                conf_value(&self.persistence_dir)?
            );
        }
        let _ = writeln!(conf, "log_dest file {}", conf_value(&self.log_path)?);
        if o.verbose_log {
            conf.push_str("log_type all\n");
        } else {
            conf.push_str(
                "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            );
        }
        conf.push_str("log_timestamp_format %Y-%m-%dT%H:%M:%S\n");
        let _ = writeln!(conf, "max_queued_messages {}", o.max_queued_messages);
        if let Some(n) = o.max_inflight_messages {
            let _ = writeln!(conf, "max_inflight_messages {n}");
        }
        for line in &o.extra_config {
            if line.contains('\n') {
                return Err(HarnessError::Usage(format!(
                    "extra_config line contains a newline: {line:?}"
                )));
            }
            let _ = writeln!(conf, "{line}");
        }
        let _ = writeln!(conf, "\nlistener {} {LOCALHOST}", self.port);
        if let (Some(tls), Some(port)) = (&self.tls, self.tls_port) {
            let _ = writeln!(conf, "\nlistener {port} {LOCALHOST}");
            let _ = writeln!(conf, "cafile {}", conf_value(&tls.cafile)?);
            let _ = writeln!(conf, "certfile {}", conf_value(&tls.certfile)?);
            let _ = writeln!(conf, "keyfile {}", conf_value(&tls.keyfile)?);
            let _ = writeln!(conf, "require_certificate {}", tls.require_certificate);
        }
        std::fs::write(&self.config_path, conf).map_err(HarnessError::io("writing mosquitto.conf"))
    }

    /// Spawns the broker once on the current port(s) and waits for readiness.
    fn launch_once(&mut self) -> Result<Launch, HarnessError> {
        if self.options.given_config.is_none() {
            self.write_config()?;
        }
        let log_offset = std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .map_err(HarnessError::io("opening mosquitto.stderr.log"))?;
        let stdout = stderr
            .try_clone()
            .map_err(HarnessError::io("duplicating the stderr log handle"))?;
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(HarnessError::io(format!(
                "spawning {}",
                self.binary.display()
            )))?;

        let ports: Vec<u16> = std::iter::once(self.port).chain(self.tls_port).collect();
        let given = self.options.given_config.is_some();
        let log_path = &self.log_path;
        let outcome = poll_until(
            self.options.startup_timeout,
            &format!("mosquitto to accept connections on port(s) {ports:?}"),
            || match child.try_wait() {
                Ok(None) => {
                    // A given config may log below `information` (no ` running` line): the
                    // port, which the harness did not choose, then stands alone.
                    let ready = (given || log_since(log_path, log_offset).contains(" running"))
                        && ports.iter().all(|&p| port_accepts_connections(p));
                    ready.then_some(Ok(None))
                }
                Ok(Some(status)) => Some(Ok(Some(status))),
                Err(e) => Some(Err(e)),
            },
        );
        match outcome {
            Ok(Ok(None)) => {
                self.process.set(child);
                Ok(Launch::Ready)
            }
            Ok(Ok(Some(status))) => {
                if log_since(log_path, log_offset).contains("Address already in use") {
                    Ok(Launch::PortInUse)
                } else {
                    Err(self
                        .process
                        .failure(format!("exited during startup ({status})")))
                }
            }
            Ok(Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(HarnessError::Io {
                    what: "waiting for mosquitto".into(),
                    source: e,
                })
            }
            Err(timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(self.process.failure(timeout.to_string()))
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.process.kill();
        if keep_temp_dirs() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "fabmeter-e2e: keeping mosquitto dir {}",
                    dir.keep().display()
                );
            }
        }
    }
}

/// Writes a mosquitto password file for `users` (`(username, password)` pairs): the plain
/// `user:password` lines are written, then hashed in place with `mosquitto_passwd -U`.
pub fn write_password_file(path: &Path, users: &[(&str, &str)]) -> Result<(), HarnessError> {
    let mut plain = String::new();
    for (user, password) in users {
        if user.is_empty() || user.contains([':', '\n', '\r']) || password.contains(['\n', '\r']) {
            return Err(HarnessError::Usage(format!(
                "invalid MQTT test credentials for user {user:?}"
            )));
        }
        let _ = writeln!(plain, "{user}:{password}");
    }
    std::fs::write(path, plain).map_err(HarnessError::io(format!("writing {}", path.display())))?;
    let tool = Tool::MosquittoPasswd.locate()?;
    let output = Command::new(&tool)
        .arg("-U")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(HarnessError::io(format!("running {}", tool.display())))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::CommandFailed {
            command: format!("{} -U {}", tool.display(), path.display()),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// As root, hands `paths` (files or directories, recursively) to user `mosquitto`, which
/// Mosquitto 2 runs as once it dropped its privileges, as an operator does on a real site; not
/// root, does nothing (the broker then runs as the caller and reads what the caller wrote).
pub fn hand_to_broker_user(paths: &[&Path]) -> Result<(), HarnessError> {
    if !running_as_root() {
        return Ok(());
    }
    for path in paths {
        let status = Command::new("chown")
            .args(["-R", "mosquitto:"])
            .arg(path)
            .status()
            .map_err(HarnessError::io("running chown"))?;
        if !status.success() {
            return Err(HarnessError::CommandFailed {
                command: format!("chown -R mosquitto: {}", path.display()),
                status: status.to_string(),
                stderr: String::new(),
            });
        }
    }
    Ok(())
}

/// Writes `text` as a mosquitto ACL file.
pub fn write_acl_file(path: &Path, text: &str) -> Result<(), HarnessError> {
    std::fs::write(path, text).map_err(HarnessError::io(format!("writing {}", path.display())))
}

/// Log text written after byte `offset` (lossy UTF-8; empty if unreadable).
fn log_since(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Canonical absolute path of a file given by the test (so mosquitto's cwd does not matter).
fn absolute(path: &Path, what: &str) -> Result<PathBuf, HarnessError> {
    std::fs::canonicalize(path).map_err(HarnessError::io(format!("{what} {}", path.display())))
}

/// A path as a mosquitto.conf value (UTF-8, single line).
fn conf_value(path: &Path) -> Result<&str, HarnessError> {
    path.to_str()
        .filter(|s| !s.contains(['\n', '\r']))
        .ok_or_else(|| {
            HarnessError::Usage(format!(
                "path not usable in mosquitto.conf: {}",
                path.display()
            ))
        })
}
