//! The workshop simulator: N machines of several kinds, members with habits, opening hours, each
//! machine the firmware's device core behind its own real MQTT connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fabmeter_agent::sim::SimError> {
//! use fabmeter_agent::sim::{run, SimConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let cfg = SimConfig::demo("demo", 1883);
//! let report = run(cfg, CancellationToken::new()).await?;
//! println!("{} events acknowledged", report.events_acked());
//! # Ok(()) }
//! ```
//!
//! - **Devices.** Each machine is a [`fabmeter_firmware::device::Device`] on a sparse RAM flash
//!   ([`flash::SparseFlash`]) with a relay pin that drives nothing, fed simulated RMS current through
//!   `on_current` and badges through `on_badge`. Its MQTT path is the device path of
//!   `docs/PROTOCOL.md`: last will `offline` (retained), retained birth, subscriptions to its
//!   `config` and `cmd`, events at QoS 1 one in flight, PUBACK → `on_puback`, telemetry at QoS 0.
//! - **Time.** Sim time is each device's uptime; `speed` sim milliseconds pass per wall
//!   millisecond (1440: a simulated day per minute). A machine's clock starts once its retained
//!   config arrived, so inputs never depend on network timing.
//! - **Determinism.** Same seed and config → same events (boot, seq, uptime and body) per machine;
//!   only `sent_uptime_ms` and the number of resends depend on the network. Each machine draws from
//!   its own generator derived from `(seed, machine id)`.
//! - **Scale.** Each machine is one task plus one connection task; connections are ramped at
//!   `connect_rate` per second (Mosquitto's listen backlog is 100). One connection per machine means
//!   one file descriptor per machine in this process and in the broker: see the agent README.
//!   With `machines_per_connection` k above 1, k machines share one connection (a
//!   [`crate::link::Mux`], as a gateway would): same device path per machine, one socket per k
//!   machines, no last will.

pub mod feed;
pub mod flash;
mod machine;
pub mod rng;
pub mod workshop;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fabmeter_protocol::message::DeviceConfig;
use fabmeter_protocol::sig::EventSigner;
use fabmeter_protocol::{encode_to_vec, BadgeHash, BadgeKey, DeviceKey, Id, SCHEMA_VERSION};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use machine::{NoRelay, SimDevice, FLASH_SECTORS, SECTOR, SIM_FW, SIM_JOURNAL_CAP};
pub use workshop::{MachineKind, OpeningHours, SimMachine, SimMember, UnknownKind, STRANGER_UID};

use crate::link::Mux;
use machine::{run_machine, MachineSetup};
use rng::Rng;
use workshop::Timeline;

/// The demo site's badge key: the protocol's public test-vector key, bytes `00 01 02 … 1f`
/// (`000102…1f` in hex). **Public: never use it for a real site.** With it, the UID `04 a1 b2 c3`
/// hashes to `ba279e0c1e5c2464` (`docs/PROTOCOL.md`, "Badges").
pub const DEMO_BADGE_KEY_HEX: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The demo badge key ([`DEMO_BADGE_KEY_HEX`]).
pub fn demo_badge_key() -> BadgeKey {
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8;
    }
    BadgeKey::new(b)
}

/// Monday 2025-12-01 08:45 UTC: the default start of simulated time (a quarter of an hour before
/// the workshop opens).
pub const DEFAULT_START_UNIX_MS: u64 = 1_764_578_700_000;

/// A simulated crash of one machine: at `at_ms` (its sim time) the device loses power and its
/// connection drops without DISCONNECT (the broker publishes its last will); `down_ms` later it
/// boots again (boot + 1) from the same flash, and sends what its journal kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    /// Machine id.
    pub machine: String,
    /// Sim time of the crash, ms since the machine started.
    pub at_ms: u64,
    /// How long it stays off, sim ms.
    pub down_ms: u64,
}

/// What to simulate, against which broker.
#[derive(Clone)]
pub struct SimConfig {
    /// Broker host (plain TCP).
    pub broker_host: String,
    /// Broker port.
    pub broker_port: u16,
    /// Site id (`[a-z0-9][a-z0-9-]{0,31}`).
    pub site: String,
    /// The machines.
    pub machines: Vec<SimMachine>,
    /// The members.
    pub members: Vec<SimMember>,
    /// Opening hours (UTC).
    pub hours: OpeningHours,
    /// The site key that devices hash badge UIDs with.
    pub badge_key: BadgeKey,
    /// Seed of every random choice.
    pub seed: u64,
    /// Sim ms per wall ms (1440: a day per minute). Must be > 0.
    pub speed: f64,
    /// Wall time of sim time 0 (decides weekdays and opening hours), unix ms.
    pub start_unix_ms: u64,
    /// Publish each machine's retained config (sensing for its kind, allow-list of the members
    /// who use its kind) before the machines start. Off when a collector publishes configs.
    pub publish_configs: bool,
    /// Sim time to run; `None`: until cancelled.
    pub duration_ms: Option<u64>,
    /// Sim ms between current readings while the load changes (readings are taken at every level
    /// change too, and every minute when the level is steady).
    pub step_ms: u64,
    /// `progress_s` of the published configs.
    pub progress_s: u32,
    /// `telemetry_s` of the published configs (0: no telemetry).
    pub telemetry_s: u32,
    /// New connections per second (ramp).
    pub connect_rate: u32,
    /// How long a machine waits for its retained config before its clock starts anyway.
    pub config_wait: Duration,
    /// At the end, how long machines may take to empty their journals.
    pub drain_timeout: Duration,
    /// Simulated crashes.
    pub crashes: Vec<Crash>,
    /// Machines sharing one MQTT connection (1: each machine its own, as a real device). Above 1,
    /// machines `0..k`, `k..2k`, … each share one connection ([`crate::link::Mux`]), so a process
    /// limited to F open files can host about `F × k` machines; such machines have no last will
    /// (a connection carries one), so a crash leaves their retained status `online`.
    pub machines_per_connection: usize,
    /// Sign events (docs/PROTOCOL.md "Signatures"): each machine's device key is
    /// [`DeviceKey::derive`]`(secret, machine id)`, so a collector holding the same derived keys
    /// verifies them. `None`: unsigned events.
    pub device_key_secret: Option<[u8; 32]>,
    /// Devices keep each event until the collector confirms it on `ack`
    /// (`Device::set_confirmations`, docs/PROTOCOL.md "ack"); off: a PUBACK removes it.
    pub confirm: bool,
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field(
                "broker",
                &format_args!("{}:{}", self.broker_host, self.broker_port),
            )
            .field("site", &self.site)
            .field("machines", &self.machines.len())
            .field("members", &self.members.len())
            .field("seed", &self.seed)
            .field("speed", &self.speed)
            .field("duration_ms", &self.duration_ms)
            .finish_non_exhaustive()
    }
}

const ALL_DAYS: u8 = 0x7f;
const WEEKDAYS: u8 = 0x1f;

pub(crate) fn demo_member_table() -> Vec<SimMember> {
    use MachineKind::*;
    let m = |id: &str, name: &str, uid: &[u8], kinds: &[MachineKind], days: u8, hours: (u8, u8)| {
        SimMember {
            id: id.into(),
            name: name.into(),
            uid: uid.to_vec(),
            kinds: kinds.to_vec(),
            days,
            hours,
        }
    };
    vec![
        m(
            "alice",
            "Alice Martin",
            &[0x04, 0xa1, 0xb2, 0xc3],
            &[Printer3d, LaserCutter],
            WEEKDAYS,
            (9, 15),
        ),
        m(
            "bruno",
            "Bruno Leroy",
            &[0x04, 0xd2, 0xe3, 0xf4, 0xa5, 0xb6, 0x07],
            &[CncRouter, TableSaw],
            0b0011_1110,
            (13, 20),
        ),
        m(
            "chloe",
            "Chloé Garnier",
            &[0x04, 0x11, 0x22, 0x33],
            &[LaserCutter, Printer3d],
            0b0010_0101,
            (10, 18),
        ),
        m(
            "david",
            "David Nguyen",
            &[0x04, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99],
            &[TableSaw, CncRouter, LaserCutter],
            WEEKDAYS,
            (16, 20),
        ),
        m(
            "emma",
            "Emma Petit",
            &[0x04, 0xaa, 0xbb, 0xcc],
            &[Printer3d],
            ALL_DAYS,
            (9, 20),
        ),
        m(
            "farid",
            "Farid Benali",
            &[0x04, 0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a],
            &[Printer3d, LaserCutter, CncRouter, TableSaw],
            0b0010_0000,
            (9, 19),
        ),
    ]
}

fn demo_machine_table() -> Vec<SimMachine> {
    use MachineKind::*;
    [
        ("printer-1", "Prusa MK4 #1", Printer3d),
        ("printer-2", "Prusa MK4 #2", Printer3d),
        ("printer-3", "Bambu X1C", Printer3d),
        ("laser-1", "Laser CO2 100 W", LaserCutter),
        ("laser-2", "Laser CO2 60 W", LaserCutter),
        ("cnc-1", "CNC router 1200x2400", CncRouter),
        ("saw-1", "Table saw", TableSaw),
        ("saw-2", "Panel saw", TableSaw),
    ]
    .into_iter()
    .map(|(id, name, kind)| SimMachine {
        id: id.into(),
        name: name.into(),
        kind,
    })
    .collect()
}

/// The demo's members: `(member id, name, badge hash hex)`, the hash under [`demo_badge_key`], for
/// the collector's site file (`[[members]] id, name, badges = [hash]`).
pub fn demo_members() -> Vec<(String, String, String)> {
    let key = demo_badge_key();
    demo_member_table()
        .into_iter()
        .map(|m| (m.id, m.name, key.hash(&m.uid).to_hex().to_string()))
        .collect()
}

/// The demo's machines: `(machine id, name, kind)`; `kind.as_str()` is the collector's kind name
/// and `kind.sensing()` the sensing its config should carry.
pub fn demo_machines() -> Vec<(String, String, MachineKind)> {
    demo_machine_table()
        .into_iter()
        .map(|m| (m.id, m.name, m.kind))
        .collect()
}

impl SimConfig {
    /// The one-command demo's workshop: 8 machines (3 printers, 2 lasers, a CNC router, 2 saws) and
    /// 6 members ([`demo_machines`], [`demo_members`]), broker on `127.0.0.1:broker_port`, seed 1,
    /// a simulated day per minute, publishing configs itself, running until cancelled.
    pub fn demo(site: &str, broker_port: u16) -> SimConfig {
        SimConfig {
            broker_host: "127.0.0.1".into(),
            broker_port,
            site: site.into(),
            machines: demo_machine_table(),
            members: demo_member_table(),
            hours: OpeningHours::default(),
            badge_key: demo_badge_key(),
            seed: 1,
            speed: 1440.0,
            start_unix_ms: DEFAULT_START_UNIX_MS,
            publish_configs: true,
            duration_ms: None,
            step_ms: 1000,
            progress_s: 300,
            telemetry_s: 60,
            connect_rate: 500,
            config_wait: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            crashes: Vec::new(),
            device_key_secret: None,
            machines_per_connection: 1,
            confirm: false,
        }
    }

    /// A generated workshop of `machines` machines (kinds in turn: printer, laser, CNC, saw; ids
    /// `printer-1`, `laser-1`, …) and `clamp(machines × 3 / 2, 6, 120)` members with random habits
    /// drawn from `seed`; otherwise as [`SimConfig::demo`], on `host:port`.
    pub fn workshop(site: &str, host: &str, port: u16, machines: usize, seed: u64) -> SimConfig {
        let mut counts = HashMap::new();
        let list = (0..machines)
            .map(|i| {
                let kind = MachineKind::ALL[i % MachineKind::ALL.len()];
                let n = counts.entry(kind).or_insert(0u32);
                *n += 1;
                let short = match kind {
                    MachineKind::Printer3d => "printer",
                    MachineKind::LaserCutter => "laser",
                    MachineKind::CncRouter => "cnc",
                    MachineKind::TableSaw => "saw",
                };
                SimMachine {
                    id: format!("{short}-{n}"),
                    name: format!("{kind} {n}"),
                    kind,
                }
            })
            .collect();
        let n_members = (machines * 3 / 2).clamp(6, 120);
        let mut rng = Rng::derive(seed, "members");
        let members = (0..n_members)
            .map(|i| {
                let mut uid = vec![0x04];
                uid.extend((0..6).map(|_| rng.next_u64() as u8));
                let mut kinds: Vec<MachineKind> = MachineKind::ALL
                    .into_iter()
                    .filter(|_| rng.chance(0.5))
                    .collect();
                if kinds.is_empty() {
                    kinds.push(MachineKind::ALL[i % 4]);
                }
                let mut days = 0u8;
                while days.count_ones() < 3 {
                    days |= 1 << rng.range(0, 6);
                }
                let from = rng.range(9, 17) as u8;
                SimMember {
                    id: format!("member-{:03}", i + 1),
                    name: format!("Member {}", i + 1),
                    uid,
                    kinds,
                    days,
                    hours: (from, (from + rng.range(2, 5) as u8).min(21)),
                }
            })
            .collect();
        SimConfig {
            broker_host: host.into(),
            machines: list,
            members,
            seed,
            ..SimConfig::demo(site, port)
        }
    }

    /// The retained config the simulator publishes for `machine`.
    pub fn device_config(&self, machine: &SimMachine) -> DeviceConfig {
        let mut allow = heapless::Vec::new();
        for m in self
            .members
            .iter()
            .filter(|m| m.kinds.contains(&machine.kind))
        {
            let h: BadgeHash = self.badge_key.hash(&m.uid);
            if !allow.contains(&h) {
                // validate() guarantees the list fits.
                let _ = allow.push(h);
            }
        }
        DeviceConfig {
            v: SCHEMA_VERSION,
            sensing: machine.kind.sensing(),
            allow,
            progress_s: self.progress_s,
            idle_timeout_s: 900,
            max_session_s: 12 * 3600,
            telemetry_s: self.telemetry_s,
            lock: None,
        }
    }

    /// Checks the config; the error names the field and the problem.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |what: String| Err(SimError::InvalidConfig(what));
        if let Err(e) = Id::new(&self.site) {
            return bad(format!("site {:?}: {e}", self.site));
        }
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return bad(format!(
                "speed {}: must be a number above 0, e.g. 1440",
                self.speed
            ));
        }
        if self.step_ms == 0 {
            return bad("step_ms: must be at least 1".into());
        }
        if !(1..=1000).contains(&self.machines_per_connection) {
            return bad(format!(
                "machines_per_connection {}: must be 1..=1000 (1: a connection per machine)",
                self.machines_per_connection
            ));
        }
        if self.connect_rate == 0 {
            return bad("connect_rate: must be at least 1 connection per second".into());
        }
        if !(1..=3600).contains(&self.progress_s) {
            return bad(format!("progress_s {}: must be 1..=3600", self.progress_s));
        }
        let mut ids = HashSet::new();
        for m in &self.machines {
            if let Err(e) = Id::new(&m.id) {
                return bad(format!("machine id {:?}: {e}", m.id));
            }
            if !ids.insert(m.id.as_str()) {
                return bad(format!("machine id {:?} appears twice", m.id));
            }
            let allowed = self
                .members
                .iter()
                .filter(|x| x.kinds.contains(&m.kind))
                .count();
            if allowed > fabmeter_protocol::message::MAX_ALLOW_LIST {
                return bad(format!(
                    "machine {:?}: {allowed} members use its kind, an allow-list holds at most {}",
                    m.id,
                    fabmeter_protocol::message::MAX_ALLOW_LIST
                ));
            }
        }
        for m in &self.members {
            if m.uid.is_empty() || m.uid.len() > 10 {
                return bad(format!("member {:?}: a badge UID has 1 to 10 bytes", m.id));
            }
        }
        for c in &self.crashes {
            if !ids.contains(c.machine.as_str()) {
                return bad(format!("crash of unknown machine {:?}", c.machine));
            }
        }
        Ok(())
    }
}

/// Why the simulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The config is invalid (the caller's input).
    #[error("invalid simulator config: {0}")]
    InvalidConfig(String),
    /// The broker could not be reached or refused the configs (peer down).
    #[error("broker {0}")]
    Broker(String),
    /// A machine task failed (our fault).
    #[error("simulator task failed: {0}")]
    Task(String),
}

/// Live counters of a run, for progress output.
#[derive(Debug)]
pub struct SimStats {
    /// Events handed to MQTT (resends included).
    pub events_published: AtomicU64,
    /// Events acknowledged by the broker.
    pub events_acked: AtomicU64,
    /// Machines whose MQTT connection is up now.
    pub connected: AtomicU64,
    sim_ms: Vec<AtomicU64>,
}

impl SimStats {
    /// Counters for `machines` machines.
    pub fn new(machines: usize) -> SimStats {
        SimStats {
            events_published: AtomicU64::new(0),
            events_acked: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            sim_ms: (0..machines).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The sim time every machine has reached, ms.
    pub fn sim_ms(&self) -> u64 {
        self.sim_ms
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

/// What one machine did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineReport {
    /// Machine id.
    pub id: String,
    /// Boots after the first one (simulated crashes).
    pub boots: u32,
    /// The boot counter at the end.
    pub last_boot: u32,
    /// Accepted CONNACKs.
    pub connects: u32,
    /// Events handed to MQTT, resends included.
    pub events_published: u64,
    /// Events the broker acknowledged.
    pub events_acked: u64,
    /// Distinct events the broker acknowledged (an event resent after a lost PUBACK counts once):
    /// what a deduplicating consumer must end up with.
    pub events_distinct: u64,
    /// Events still in the journal at the end (not acknowledged within the drain timeout).
    pub journal_left: usize,
    /// Why the machine stopped early, if it did.
    pub error: Option<String>,
}

/// What a run did, per machine.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// One report per machine, in config order.
    pub machines: Vec<MachineReport>,
    /// Wall time of the run.
    pub wall: Duration,
}

impl SimReport {
    /// Events published, all machines.
    pub fn events_published(&self) -> u64 {
        self.machines.iter().map(|m| m.events_published).sum()
    }
    /// Events acknowledged, all machines.
    pub fn events_acked(&self) -> u64 {
        self.machines.iter().map(|m| m.events_acked).sum()
    }
    /// Distinct events acknowledged, all machines.
    pub fn events_distinct(&self) -> u64 {
        self.machines.iter().map(|m| m.events_distinct).sum()
    }
    /// Events left in journals, all machines.
    pub fn journal_left(&self) -> usize {
        self.machines.iter().map(|m| m.journal_left).sum()
    }
}

/// Runs the simulated workshop until `shutdown` is cancelled or `cfg.duration_ms` of sim time
/// passed; then each machine switches off, empties its journal (up to `drain_timeout`), publishes
/// its offline status and disconnects.
pub async fn run(cfg: SimConfig, shutdown: CancellationToken) -> Result<SimReport, SimError> {
    let stats = Arc::new(SimStats::new(cfg.machines.len()));
    run_with_stats(cfg, shutdown, stats).await
}

/// [`run`], updating `stats` (made with [`SimStats::new`] for `cfg.machines.len()`) as it goes.
pub async fn run_with_stats(
    cfg: SimConfig,
    shutdown: CancellationToken,
    stats: Arc<SimStats>,
) -> Result<SimReport, SimError> {
    cfg.validate()?;
    if stats.sim_ms.len() != cfg.machines.len() {
        return Err(SimError::InvalidConfig(format!(
            "stats made for {} machines, config has {}",
            stats.sim_ms.len(),
            cfg.machines.len()
        )));
    }
    let started = Instant::now();
    if cfg.publish_configs {
        publish_configs(&cfg).await?;
    }
    let per_conn = cfg.machines_per_connection;
    let muxes: Vec<Arc<Mux>> = if per_conn > 1 {
        (0..cfg.machines.len().div_ceil(per_conn))
            .map(|i| {
                let mut opts = MqttOptions::new(
                    format!("fm-{}-mux-{}", cfg.site, i + 1),
                    cfg.broker_host.clone(),
                    cfg.broker_port,
                );
                opts.set_keep_alive(Duration::from_secs(30));
                Mux::start(
                    opts,
                    per_conn,
                    Duration::from_secs_f64(i as f64 / f64::from(cfg.connect_rate)),
                    Duration::from_secs(5),
                    Rng::derive(cfg.seed ^ 0x6d75_7800, &i.to_string()).next_u64(),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut tasks = Vec::with_capacity(cfg.machines.len());
    for (index, m) in cfg.machines.iter().enumerate() {
        // A connection's machines all start when it is due.
        let conn_index = index / per_conn;
        let setup = MachineSetup {
            index,
            id: m.id.clone(),
            site: cfg.site.clone(),
            host: cfg.broker_host.clone(),
            port: cfg.broker_port,
            key: cfg.badge_key.clone(),
            timeline: Some(Timeline::new(
                cfg.seed,
                m,
                &cfg.members,
                cfg.hours,
                cfg.start_unix_ms,
            )),
            seed: cfg.seed,
            speed: cfg.speed,
            step_ms: cfg.step_ms,
            duration_ms: cfg.duration_ms,
            connect_delay: Duration::from_secs_f64(conn_index as f64 / f64::from(cfg.connect_rate)),
            mux: muxes
                .get(conn_index)
                .map(|mux| (mux.clone(), index % per_conn)),
            config_wait: cfg.config_wait,
            drain_timeout: cfg.drain_timeout,
            confirm: cfg.confirm,
            crashes: cfg
                .crashes
                .iter()
                .filter(|c| c.machine == m.id)
                .cloned()
                .collect(),
            stats: stats.clone(),
            signer: cfg.device_key_secret.as_ref().and_then(|secret| {
                let site = Id::new(&cfg.site).ok()?;
                let machine = Id::new(&m.id).ok()?;
                Some(EventSigner::new(
                    DeviceKey::derive(secret, &m.id),
                    &site,
                    &machine,
                ))
            }),
        };
        tasks.push(tokio::spawn(run_machine(setup, shutdown.clone())));
    }
    let mut report = SimReport::default();
    for t in tasks {
        report
            .machines
            .push(t.await.map_err(|e| SimError::Task(e.to_string()))?);
    }
    drop(muxes);
    report.wall = started.elapsed();
    Ok(report)
}

/// Publishes every machine's retained config and waits for the broker's acknowledgements.
async fn publish_configs(cfg: &SimConfig) -> Result<(), SimError> {
    let mut opts = MqttOptions::new(
        format!("fm-sim-{}-configs", cfg.site),
        cfg.broker_host.clone(),
        cfg.broker_port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(
        fabmeter_protocol::MAX_CONFIG_PAYLOAD + 1024,
        fabmeter_protocol::MAX_CONFIG_PAYLOAD + 1024,
    );
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut payloads = Vec::with_capacity(cfg.machines.len());
    for m in &cfg.machines {
        let payload = encode_to_vec(&cfg.device_config(m))
            .map_err(|e| SimError::InvalidConfig(format!("config of {}: {e}", m.id)))?;
        payloads.push((format!("fabmeter/v1/{}/{}/config", cfg.site, m.id), payload));
    }
    let total = payloads.len();
    let deadline = Instant::now() + Duration::from_secs(30) + Duration::from_millis(total as u64);
    let publisher = tokio::spawn(async move {
        for (topic, payload) in payloads {
            if client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut acked = 0;
    let result = loop {
        if acked == total {
            break Ok(());
        }
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                break Err(SimError::Broker(format!(
                    "{}:{}: publishing configs: {e}",
                    cfg.broker_host, cfg.broker_port
                )))
            }
            Err(_) => {
                break Err(SimError::Broker(format!(
                    "{}:{}: {acked} of {total} configs acknowledged in time",
                    cfg.broker_host, cfg.broker_port
                )))
            }
        }
    };
    if let Ok(client) = publisher.await {
        let _ = client.try_disconnect();
        // Let the DISCONNECT out (bounded).
        let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
    }
    result
}

/// Parses a sim duration: a number with a unit `ms`, `s`, `m`, `h` or `d` (`90m`, `1d`, `36h`).
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 1d, 6h, 90m, 30s"))?;
    let mult = match unit {
        "ms" => 1.0,
        "s" => 1e3,
        "m" | "min" => 60e3,
        "h" => 3600e3,
        "d" => 86400e3,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use ms, s, m, h or d"
            ))
        }
    };
    Ok((n * mult).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_members_hash_with_the_demo_key() {
        let m = demo_members();
        assert_eq!(m.len(), 6);
        assert_eq!(m[0].2, "ba279e0c1e5c2464");
        assert_eq!(m[1].2, "05a58c24861524d1");
        assert_eq!(demo_machines().len(), 8);
        SimConfig::demo("demo", 1883).validate().expect("valid");
    }

    #[test]
    fn generated_workshops_are_valid() {
        for n in [1, 8, 100, 1000] {
            let c = SimConfig::workshop("w", "127.0.0.1", 1883, n, 3);
            c.validate().expect("valid");
            assert_eq!(c.machines.len(), n);
            for m in &c.machines {
                let bytes = encode_to_vec(&c.device_config(m)).expect("encodes");
                assert!(bytes.len() <= fabmeter_protocol::MAX_CONFIG_PAYLOAD);
            }
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("90m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000));
        assert!(parse_duration_ms("3 weeks").is_err());
        assert!(parse_duration_ms("h").is_err());
    }
}
