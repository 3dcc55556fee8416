//! The fault-injection suite's tools: the real `fabmeter-collector` binary as a child process that
//! can be SIGKILLed and started again on the same ledger, and the tally that compares what the
//! devices sent with what the ledger holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fabmeter_collector::config::Config;
use fabmeter_e2e::{send_signal, wait_for_exit, wait_until, KillOnDrop, Signal};

use crate::helpers::{metric_of, Expected, SITE};

/// Long enough for anything in this suite on a loaded 2-core machine.
pub const LONG: Duration = Duration::from_secs(120);

/// The collector binary, run with a site file; killed and started again on the same ledger.
pub struct CollectorProc {
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<KillOnDrop>,
    /// HTTP port of the running process.
    pub port: u16,
    /// `fabmeter_duplicate_total` of the processes that ended, as last read before they ended.
    duplicates_before: u64,
    /// How many times the process was SIGKILLed (and really died of it).
    pub kills: u32,
    /// A command line the binary runs under (e.g. `unshare … sh -c …`), or empty.
    wrapper: Vec<String>,
}

impl CollectorProc {
    /// Writes `config` as `site.toml` in `dir` and starts the binary (stderr to `collector.log`).
    pub fn start(config: &Config, dir: &Path) -> CollectorProc {
        CollectorProc::start_wrapped(config, dir, Vec::new())
    }

    /// [`CollectorProc::start`], the binary run as the last arguments of `wrapper`.
    pub fn start_wrapped(config: &Config, dir: &Path, wrapper: Vec<String>) -> CollectorProc {
        let config_path = dir.join("site.toml");
        std::fs::write(&config_path, config.to_toml()).expect("write the site file");
        let mut c = CollectorProc {
            config_path,
            log_path: dir.join("collector.log"),
            child: None,
            port: 0,
            duplicates_before: 0,
            kills: 0,
            wrapper,
        };
        c.spawn();
        c
    }

    /// Starts the process (again).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the collector is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the collector log");
        let bin = env!("CARGO_BIN_EXE_fabmeter-collector");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = KillOnDrop(
            command
                .args(["run", "--config"])
                .arg(&self.config_path)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("spawn the collector binary"),
        );
        // The first line of stdout names the HTTP address.
        use std::io::BufRead as _;
        let out = child.0.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("first line of the collector");
        self.port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no port in {line:?}; log: {}",
                    fabmeter_e2e::tail_of_file(&self.log_path, 20)
                )
            });
        self.child = Some(child);
    }

    /// Pid of the running process (the binary itself: a wrapper `exec`s it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.0.id())
    }

    /// `/metrics` as text ("" while unreachable).
    pub fn metrics(&self) -> String {
        fabmeter_e2e::http::get("127.0.0.1", self.port, "/metrics")
            .map(|r| r.text())
            .unwrap_or_default()
    }

    /// One counter or gauge of `/metrics` (0 while unreachable).
    pub fn metric(&self, name: &str) -> u64 {
        metric_of(&self.metrics(), name)
    }

    /// Waits until the collector is connected and subscribed (`/readyz` is 200).
    pub fn wait_ready(&self) {
        wait_until(LONG, "collector ready", || {
            fabmeter_e2e::http::get("127.0.0.1", self.port, "/readyz")
                .is_ok_and(|r| r.status == 200)
        });
    }

    /// Duplicates counted by every process so far, the running one included.
    pub fn duplicates(&self) -> u64 {
        self.duplicates_before
            + if self.child.is_some() {
                self.metric("fabmeter_duplicate_total")
            } else {
                0
            }
    }

    /// SIGKILL: no shutdown, nothing flushed, nothing acknowledged that was not committed.
    pub fn kill(&mut self) {
        let dups = self.metric("fabmeter_duplicate_total");
        let mut child = self.child.take().expect("a running collector");
        send_signal(child.0.id(), Signal::Kill).expect("SIGKILL the collector");
        let status = wait_for_exit(&mut child.0, LONG).expect("the collector dies");
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
        self.duplicates_before += dups;
        self.kills += 1;
    }

    /// SIGTERM and a clean exit.
    pub fn stop(&mut self) {
        let dups = self.metric("fabmeter_duplicate_total");
        let mut child = self.child.take().expect("a running collector");
        send_signal(child.0.id(), Signal::Term).expect("SIGTERM the collector");
        let status = wait_for_exit(&mut child.0, LONG).expect("the collector exits");
        assert!(
            status.success(),
            "graceful exit on SIGTERM: {status}; log: {}",
            self.log()
        );
        self.duplicates_before += dups;
    }

    /// Freezes (SIGSTOP) or resumes (SIGCONT) the running collector: a collector that falls
    /// behind, its connection open and the broker queueing for it.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("the collector runs").0.id();
        let signal = if frozen { Signal::Stop } else { Signal::Cont };
        send_signal(pid, signal).expect("signal the collector");
    }

    /// The collector's log (stderr of every run).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// What the ledger holds, read from its SQLite file (read-only).
pub struct LedgerView {
    /// Rows per event key.
    pub keys: BTreeMap<(String, u32, u32), u32>,
    /// (machine, boot, session) -> (busy_s, status).
    pub sessions: BTreeMap<(String, u32, u32), (u32, String)>,
    /// Closed sessions whose busy seconds differ from those of their `session_ended` event.
    pub sessions_off_their_end: Vec<String>,
}

/// Reads the ledger in `dir` (`ledger.sqlite`), read-only (the collector may still run).
pub fn read_ledger(dir: &Path) -> LedgerView {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("ledger.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the ledger read-only");
    let mut keys = BTreeMap::new();
    let mut q = db
        .prepare("SELECT machine, boot, seq, COUNT(*) FROM events WHERE site = ?1 GROUP BY 1, 2, 3")
        .expect("events query");
    let rows = q
        .query_map([SITE], |r| {
            Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get::<_, u32>(3)?))
        })
        .expect("events");
    for row in rows {
        let (k, n) = row.expect("event row");
        keys.insert(k, n);
    }
    let mut sessions = BTreeMap::new();
    let mut q = db
        .prepare("SELECT machine, boot, session, busy_s, status FROM sessions WHERE site = ?1")
        .expect("sessions query");
    let rows = q
        .query_map([SITE], |r| {
            Ok((
                (r.get(0)?, r.get(1)?, r.get(2)?),
                (r.get(3)?, r.get::<_, String>(4)?),
            ))
        })
        .expect("sessions");
    for row in rows {
        let (k, v) = row.expect("session row");
        sessions.insert(k, v);
    }
    let mut q = db
        .prepare(
            "SELECT s.machine, s.boot, s.session, s.busy_s, json_extract(e.payload, '$.event.session_ended.busy_s')
             FROM sessions s JOIN events e
               ON e.site = s.site AND e.machine = s.machine AND e.boot = s.boot
              AND e.session = s.session AND e.kind = 'session_ended'
             WHERE s.site = ?1 AND s.status = 'closed'",
        )
        .expect("session ends query");
    let rows = q
        .query_map([SITE], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .expect("session ends");
    let mut off = Vec::new();
    for row in rows {
        let (m, b, s, busy, ended) = row.expect("session end row");
        if Some(busy) != ended {
            off.push(format!(
                "{m} boot {b} session {s}: ledger {busy} s, its end {ended:?} s"
            ));
        }
    }
    LedgerView {
        keys,
        sessions,
        sessions_off_their_end: off,
    }
}

/// One fault's tally: what was sent, what the ledger accepted, what it counted as duplicates,
/// what is missing and what is counted twice.
#[derive(Debug)]
pub struct Tally {
    /// The fault's name.
    pub fault: &'static str,
    /// Distinct events the devices sent (and the broker acknowledged).
    pub sent: u64,
    /// Distinct event keys in the ledger.
    pub accepted: u64,
    /// Deliveries the collector counted as duplicates.
    pub duplicates: u64,
    /// Sent keys missing from the ledger.
    pub lost: u64,
    /// Keys stored more than once, keys nobody sent, and sessions whose busy seconds exceed what
    /// the device measured.
    pub double: u64,
    /// What `lost` and `double` are made of, for the assertion message.
    pub detail: Vec<String>,
}

impl Tally {
    /// Prints the tally line and asserts nothing was lost or counted twice.
    pub fn check(&self) {
        let line = format!(
            "tally {}: sent={} accepted={} duplicates={} lost={} double-counted={}",
            self.fault, self.sent, self.accepted, self.duplicates, self.lost, self.double
        );
        println!("{line}");
        record_tally(&line);
        assert!(
            self.lost == 0 && self.double == 0,
            "{}: lost {} double-counted {}: {:?}",
            self.fault,
            self.lost,
            self.double,
            &self.detail[..self.detail.len().min(20)]
        );
    }
}

/// Where tally lines are also appended, so that CI can print them after a captured test run.
pub const TALLY_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/fault-tallies.txt");

/// Appends one line to [`TALLY_FILE`] (best effort: the line was printed already).
pub fn record_tally(line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(TALLY_FILE)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The tally of a workload whose every event is known (`exp`).
pub fn tally(fault: &'static str, dir: &Path, exp: &Expected, duplicates: u64) -> Tally {
    let view = read_ledger(dir);
    let mut detail = Vec::new();
    let mut lost = 0;
    for k in &exp.keys {
        if !view.keys.contains_key(k) {
            lost += 1;
            detail.push(format!("lost {k:?}"));
        }
    }
    let mut double = 0;
    for (k, n) in &view.keys {
        if *n > 1 || !exp.keys.contains(k) {
            double += 1;
            detail.push(format!("{k:?}: {n} row(s), sent: {}", exp.keys.contains(k)));
        }
    }
    for (k, (busy, status)) in &view.sessions {
        match exp.sessions.get(k) {
            Some(want) if busy <= want => {}
            want => {
                double += 1;
                detail.push(format!(
                    "session {k:?} ({status}): {busy} s, device {want:?}"
                ));
            }
        }
    }
    double += view.sessions_off_their_end.len() as u64;
    detail.extend(view.sessions_off_their_end.iter().cloned());
    Tally {
        fault,
        sent: exp.keys.len() as u64,
        accepted: view.keys.len() as u64,
        duplicates,
        lost,
        double,
        detail,
    }
}

/// Distinct event keys in `keys`, per machine: for the simulator, whose report counts events.
pub fn per_machine(keys: &BTreeSet<(String, u32, u32)>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (m, _, _) in keys {
        *out.entry(m.clone()).or_insert(0) += 1;
    }
    out
}

/// A TCP proxy between devices and the broker that can cut the network: [`TcpProxy::cut`] closes
/// every connection through it and refuses new ones until [`TcpProxy::restore`].
pub struct TcpProxy {
    /// The port devices connect to.
    pub port: u16,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
    stop: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct ProxyState {
    down: bool,
    /// Cancelled to close the connections of the current generation.
    generation: tokio_util::sync::CancellationToken,
    /// Connections closed by cuts.
    closed: u64,
    /// Connections refused while cut.
    refused: u64,
    /// Connections open now.
    open: u64,
}

impl TcpProxy {
    /// Starts a proxy on a free port of 127.0.0.1 to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> TcpProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("proxy address").port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState {
            down: false,
            generation: tokio_util::sync::CancellationToken::new(),
            closed: 0,
            refused: 0,
            open: 0,
        }));
        let stop = tokio_util::sync::CancellationToken::new();
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let (mut inbound, _) = tokio::select! {
                        _ = sp.cancelled() => return,
                        r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    };
                    let generation = {
                        let mut s = st.lock().expect("proxy state");
                        if s.down {
                            s.refused += 1;
                            continue; // dropped: the device sees its connection closed
                        }
                        s.open += 1;
                        s.generation.clone()
                    };
                    let st = st.clone();
                    tokio::spawn(async move {
                        if let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        {
                            tokio::select! {
                                _ = generation.cancelled() => {
                                    st.lock().expect("proxy state").closed += 1;
                                }
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            }
                        }
                        st.lock().expect("proxy state").open -= 1;
                    });
                }
            });
        });
        TcpProxy {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Cuts the network: closes every connection, refuses new ones.
    pub fn cut(&self) {
        let mut s = self.state.lock().expect("proxy state");
        s.down = true;
        s.generation.cancel();
        s.generation = tokio_util::sync::CancellationToken::new();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.lock().expect("proxy state").down = false;
    }

    /// (connections closed by cuts, connections refused while cut, connections open now).
    pub fn counts(&self) -> (u64, u64, u64) {
        let s = self.state.lock().expect("proxy state");
        (s.closed, s.refused, s.open)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.lock().map(|s| s.generation.cancel()).ok();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The tally of a simulated run: the simulator's report says how many distinct events each
/// machine got acknowledged; its events are numbered 1, 2, 3… per boot.
pub fn sim_tally(
    fault: &'static str,
    dir: &Path,
    report: &fabmeter_agent::sim::SimReport,
    duplicates: u64,
) -> Tally {
    let view = read_ledger(dir);
    let keys: BTreeSet<(String, u32, u32)> = view.keys.keys().cloned().collect();
    let stored = per_machine(&keys);
    let mut detail = Vec::new();
    let (mut lost, mut double) = (0, 0);
    for m in &report.machines {
        let got = stored.get(&m.id).copied().unwrap_or(0);
        if got < m.events_distinct {
            lost += m.events_distinct - got;
            detail.push(format!("{}: sent {} stored {got}", m.id, m.events_distinct));
        }
        if got > m.events_distinct {
            double += got - m.events_distinct;
            detail.push(format!("{}: sent {} stored {got}", m.id, m.events_distinct));
        }
    }
    // Gaps in a boot's numbering are events lost on the way.
    let mut max_seq: BTreeMap<(String, u32), (u32, u32)> = BTreeMap::new();
    for (m, b, s) in &keys {
        let e = max_seq.entry((m.clone(), *b)).or_insert((0, 0));
        e.0 = e.0.max(*s);
        e.1 += 1;
    }
    for ((m, b), (max, n)) in max_seq {
        if max != n {
            lost += u64::from(max - n);
            detail.push(format!("{m} boot {b}: {n} events up to seq {max}"));
        }
    }
    for (k, n) in &view.keys {
        if *n > 1 {
            double += 1;
            detail.push(format!("{k:?}: {n} rows"));
        }
    }
    double += view.sessions_off_their_end.len() as u64;
    detail.extend(view.sessions_off_their_end.iter().cloned());
    Tally {
        fault,
        sent: report.events_distinct(),
        accepted: view.keys.len() as u64,
        duplicates,
        lost,
        double,
        detail,
    }
}

/// A site whose broker runs on exactly the files `fabmeter-collector provision` wrote (password
/// file, ACL, `mosquitto.conf`), on a free port of 127.0.0.1.
pub struct ProvisionedSite {
    /// The broker, started with `mosquitto -c` on the written `mosquitto.conf`.
    pub broker: fabmeter_e2e::Mosquitto,
    /// The collector's site configuration, its broker account filled in.
    pub config: Config,
    /// Machine → (username, password) of its device account.
    pub devices: BTreeMap<String, (String, String)>,
    /// The written `mosquitto.conf`.
    pub conf_text: String,
    _dir: tempfile::TempDir,
}

impl ProvisionedSite {
    /// The device account of `machine`, as rumqttc credentials.
    pub fn creds(&self, machine: &str) -> Option<(&str, &str)> {
        self.devices
            .get(machine)
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }
}

/// Value of `key = "..."` in TOML-like text.
fn value_of(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
        .to_owned()
}

/// Provisions the collector and one device account per machine with the real binary, then
/// starts Mosquitto on what it wrote. The collector's ledger goes to `data_dir`.
pub fn provisioned_site(machines: &[&str], data_dir: &Path) -> ProvisionedSite {
    let dir = tempfile::tempdir().expect("broker tempdir");
    let d = dir.path();
    let port = fabmeter_e2e::free_port();
    let mut c = Config::for_site(SITE);
    c.mqtt.url = format!("mqtt://127.0.0.1:{port}");
    c.ledger.path = data_dir.join("ledger.sqlite");
    c.http.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    c.machines = machines
        .iter()
        .map(|m| fabmeter_collector::config::MachineConfig {
            id: (*m).into(),
            name: format!("Machine {m}"),
            kind: "laser".into(),
            tariff: None,
            sensing: None,
        })
        .collect();
    c.members = vec![fabmeter_collector::config::MemberConfig {
        id: "alice".into(),
        name: "Alice".into(),
        badges: vec![crate::helpers::badge().to_string()],
    }];
    c.broker.password_file = Some(d.join("fabmeter.passwd"));
    c.broker.acl_file = Some(d.join("fabmeter.acl"));
    c.broker.conf_file = Some(d.join("mosquitto.conf"));
    c.broker.persistence_location = Some(d.join("persistence"));
    std::fs::create_dir(d.join("persistence")).expect("persistence dir");
    let site = d.join("site.toml");
    std::fs::write(&site, c.to_toml()).expect("site file");
    let cli = |args: &[&str]| {
        let (ok, out, err) = crate::helpers::collector_cli(&site, args);
        assert!(ok, "provision {args:?}: {err}");
        (out, err)
    };
    let (out, err) = cli(&["provision", "collector"]);
    assert!(
        err.contains("broker configuration written to"),
        "provision says where the broker config went: {err}"
    );
    c.mqtt.username = Some(value_of(&out, "username"));
    c.mqtt.password = Some(value_of(&out, "password"));
    let mut devices = BTreeMap::new();
    for m in machines {
        let file = d.join(format!("{m}.toml"));
        cli(&[
            "provision",
            "device",
            "--machine",
            m,
            "--out",
            &file.display().to_string(),
        ]);
        let text = std::fs::read_to_string(&file).expect("device credentials");
        devices.insert(
            (*m).to_owned(),
            (value_of(&text, "username"), value_of(&text, "password")),
        );
    }
    let conf = d.join("mosquitto.conf");
    let conf_text = std::fs::read_to_string(&conf).expect("provision wrote mosquitto.conf");
    // As root, Mosquitto runs as user mosquitto: the operator hands it the files (SECURITY.md).
    fabmeter_e2e::hand_to_broker_user(&[d]).expect("hand the broker files to mosquitto");
    let broker = fabmeter_e2e::Mosquitto::start_from_config(&conf, port)
        .expect("mosquitto starts on the provisioned config");
    ProvisionedSite {
        broker,
        config: c,
        devices,
        conf_text,
        _dir: dir,
    }
}
