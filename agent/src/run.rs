//! `fabmeter-agent run`: the firmware's device core for each configured machine, with its journal
//! on disk and its own MQTT connection.
//!
//! Per machine, one task owns a [`Device`] on a [`FileFlash`] (`<data_dir>/<machine>.flash`), the
//! machine's relay, its [`Link`] to the broker and the receiving end of its input sources. The
//! device clock is the agent's uptime in ms (monotonic), times `simulate.speed` for simulated
//! machines. Readings are applied as they arrive, the device's timers every `tick_ms`, and the
//! journal is sent one event in flight in key order; an event leaves the journal (a synced write)
//! only after the broker's PUBACK.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use fabmeter_firmware::device::{Action, Device, DeviceInfo};
use fabmeter_protocol::message::Capability;
use fabmeter_protocol::sig::EventSigner;
use fabmeter_protocol::{BadgeKey, Id};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Loaded, Machine};
use crate::disk::{FileFlash, DISK_SECTOR};
use crate::input::{self, Reading, Relay, SourceContext};
use crate::link::{sleep_opt, Happened, Link, Topics};
use crate::sim::feed::Feed;
use crate::sim::workshop::{SimMachine, Timeline};
use crate::sim::{demo_member_table, OpeningHours, DEFAULT_START_UNIX_MS};

/// Journal capacity of an agent's machine, in events (days of a busy machine without broker).
pub const AGENT_JOURNAL_CAP: usize = 2048;
/// Flash file of a machine, in [`DISK_SECTOR`] sectors: two config slots of 2 sectors, and 720
/// bytes of journal per event of capacity (the largest record with room for compaction), as the
/// simulator sizes its flash.
pub const AGENT_FLASH_SECTORS: usize = 4 + AGENT_JOURNAL_CAP * 720 / DISK_SECTOR;

/// A machine's device: journal on disk, the machine's relay.
pub type AgentDevice = Device<FileFlash, Relay, AGENT_JOURNAL_CAP>;

/// The version reported in births.
pub const AGENT_FW: &str = concat!("fabmeter-agent/", env!("CARGO_PKG_VERSION"));

const INFO: DeviceInfo = DeviceInfo {
    fw: AGENT_FW,
    caps: &[Capability::Current, Capability::Badge, Capability::Relay],
};

/// How long a clean stop may take to empty the journals before publishing offline.
const STOP_DRAIN: Duration = Duration::from_secs(5);

/// Starts a device on `flash` (recovering its journal, bumping its boot counter).
pub fn new_device(
    flash: FileFlash,
    relay: Relay,
    key: &BadgeKey,
    now: u64,
) -> Result<Box<AgentDevice>, String> {
    let path = flash.path().display().to_string();
    Device::start(flash, relay, key.clone(), INFO, now)
        .map(Box::new)
        .map_err(|e| {
            format!("{path}: the journal cannot be opened ({e:?}); move the file away to start with an empty journal (its unsent events are lost)")
        })
}

/// A random nonzero box id, from the system's random source (the clock if it cannot be read).
pub fn draw_box_id() -> u32 {
    use std::io::Read;
    let mut b = [0u8; 4];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    let x = if random {
        u32::from_le_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        (t ^ (t >> 32) ^ (t >> 64)) as u32 ^ std::process::id()
    };
    x.max(1)
}

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped on request (SIGTERM, Ctrl-C).
    Stopped,
    /// A `reboot` command: the agent stopped cleanly and wants to be started again.
    Reboot,
}

/// Runs every machine of the config until `shutdown` (or a reboot command).
pub async fn run(loaded: Loaded, shutdown: CancellationToken) -> anyhow::Result<Exit> {
    let cfg = &loaded.config;
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "data_dir {}: cannot create it; create it writable by the agent's user",
            cfg.data_dir.display()
        )
    })?;
    let anchor = Instant::now();
    let stop = shutdown.child_token();
    let reboot = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut runners = Vec::new();
    // Open everything first: a bad machine stops the agent before any connects.
    for (index, m) in loaded.machines.iter().enumerate() {
        let keep_alive = Duration::from_secs(cfg.mqtt.keep_alive_s);
        let opts = m
            .broker
            .options(&format!("fm-{}-{}", loaded.site, m.id), keep_alive);
        let relay = Relay::open(m.inputs.relay.as_ref())
            .map_err(|e| anyhow::anyhow!("machines[{index}] ({}): {e}", m.id))?;
        let flash = FileFlash::open(
            &cfg.data_dir.join(format!("{}.flash", m.id)),
            AGENT_FLASH_SECTORS,
        )?;
        if flash.repaired() {
            tracing::warn!(machine = %m.id, "{}: shorter than the flash, padded (torn file); intact events are kept", flash.path().display());
        }
        let speed = if m.simulate.is_some() {
            cfg.simulate.speed
        } else {
            1.0
        };
        let mut dev = new_device(flash, relay, &loaded.key, 0).map_err(anyhow::Error::msg)?;
        dev.set_confirmations(cfg.mqtt.confirm);
        if let Some(key) = &m.device_key {
            let signer = match (Id::new(&loaded.site), Id::new(&m.id)) {
                (Ok(site), Ok(machine)) => EventSigner::new(key.clone(), &site, &machine),
                _ => anyhow::bail!(
                    "machines[{index}] ({}): site or machine id is not valid",
                    m.id
                ),
            };
            dev.set_event_key(Some(signer));
        }
        // The box id lives in the machine's flash file with its boot counter: drawn at its first
        // start, kept after (docs/PROTOCOL.md `box`); `[device] box` overrides it.
        match m.box_id {
            Some(b) => dev.set_box_id(b),
            None if dev.box_id().is_none() => dev.set_box_id(draw_box_id()),
            None => {}
        }
        let (tx, rx) = mpsc::channel(256);
        let ctx = SourceContext {
            mqtt: Some(opts.clone()),
        };
        let feed = match m.simulate {
            Some(kind) => Some(Feed::new(
                Timeline::new(
                    cfg.simulate.seed,
                    &SimMachine {
                        id: m.id.clone(),
                        name: m.id.clone(),
                        kind,
                    },
                    &demo_member_table(),
                    OpeningHours::default(),
                    DEFAULT_START_UNIX_MS,
                ),
                1000,
            )),
            None => {
                tasks.extend(
                    input::spawn_sources(index, &m.inputs, &ctx, tx, stop.clone())
                        .map_err(|e| anyhow::anyhow!("machines[{index}] ({}): {e}", m.id))?,
                );
                None
            }
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (index as u64) << 32;
        // Events of earlier boots still in the journal: sent first, in order.
        let pending: Vec<_> = dev
            .journal()
            .entries()
            .iter()
            .map(|e| e.key)
            .filter(|k| k.boot < dev.boot())
            .collect();
        tracing::info!(
            machine = %m.id,
            boot = dev.boot(),
            pending = pending.len(),
            pending_last = %pending.last().map_or("-".to_string(), |k| format!("{}/{}", k.boot, k.seq)),
            "device started"
        );
        runners.push(Runner {
            id: m.id.clone(),
            link: Link::new(
                opts,
                Topics::new(&loaded.site, &m.id),
                Duration::from_secs(cfg.mqtt.reconnect_max_s),
                seed,
            ),
            dev,
            rx,
            feed,
            anchor,
            speed,
            tick: Duration::from_millis(cfg.tick_ms),
            last_error: None,
        });
    }
    tracing::info!(
        machines = runners.len(),
        site = %loaded.site,
        "running; SIGTERM or Ctrl-C stops"
    );
    let handles: Vec<_> = runners
        .into_iter()
        .map(|r| tokio::spawn(r.run(stop.clone(), reboot.clone())))
        .collect();
    {
        let (stop, reboot) = (stop.clone(), reboot.clone());
        tokio::spawn(async move {
            reboot.cancelled().await;
            stop.cancel();
        });
    }
    for h in handles {
        h.await.context("machine task")?;
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(if reboot.is_cancelled() {
        Exit::Reboot
    } else {
        Exit::Stopped
    })
}

struct Runner {
    id: String,
    dev: Box<AgentDevice>,
    link: Link,
    rx: mpsc::Receiver<input::Tagged>,
    feed: Option<Feed>,
    anchor: Instant,
    speed: f64,
    tick: Duration,
    last_error: Option<String>,
}

impl Runner {
    /// Device time: agent uptime in ms (times the simulation speed).
    fn now(&self) -> u64 {
        (self.anchor.elapsed().as_secs_f64() * 1000.0 * self.speed) as u64
    }

    async fn run(mut self, stop: CancellationToken, reboot: CancellationToken) {
        self.link.connect(&self.dev);
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inputs_open = true;
        loop {
            let now = self.now();
            if let Some(feed) = self.feed.as_mut() {
                feed.advance(now, &mut self.dev);
            }
            self.dev.tick(now);
            self.link.pump(now, &mut self.dev);
            let reconnect_at = self.link.reconnect_at();
            tokio::select! {
                msg = self.link.recv() => {
                    let mut next = msg;
                    while let Some((gen, net)) = next {
                        let h = self.link.on_net(gen, net, self.now(), &mut self.dev);
                        self.seen(h);
                        next = self.link.try_recv();
                    }
                }
                r = self.rx.recv(), if inputs_open => match r {
                    Some((_, reading)) => self.apply(reading),
                    None => inputs_open = false,
                },
                _ = tick.tick() => {}
                _ = sleep_opt(reconnect_at) => self.link.connect(&self.dev),
                _ = stop.cancelled() => break,
            }
            match self.dev.take_action() {
                Some(Action::Identify) => {
                    tracing::info!(machine = %self.id, "identify requested (no lamp on this agent)")
                }
                Some(Action::Reboot) => {
                    tracing::warn!(machine = %self.id, "reboot requested: stopping the agent");
                    reboot.cancel();
                }
                None => {}
            }
        }
        self.stop().await;
    }

    fn apply(&mut self, reading: Reading) {
        let now = self.now();
        match reading {
            Reading::RunSignal(on) => self.dev.on_run_signal(now, on),
            Reading::Sample { volts } => self.dev.on_sample(now, volts),
            Reading::Current { amps, window_ms } => self.dev.on_current(now, window_ms, amps),
            Reading::Badge(uid) => self.dev.on_badge(now, &uid),
        }
    }

    fn seen(&mut self, h: Happened) {
        match h {
            Happened::Connected => {
                tracing::info!(machine = %self.id, "connected to the broker");
                self.last_error = None;
            }
            Happened::Down(e) => {
                if self.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(machine = %self.id, journal = self.dev.journal().len(), "broker connection failed: {e}; retrying with backoff");
                    self.last_error = Some(e);
                }
            }
            Happened::Config => tracing::info!(machine = %self.id, "config received"),
            Happened::Acked(_) | Happened::Confirmed(_) | Happened::Command | Happened::Nothing => {
            }
        }
    }

    /// Clean stop: send what the journal holds (a few seconds at most), publish offline,
    /// disconnect. What is not sent stays in the journal for the next start.
    async fn stop(&mut self) {
        let now = self.now();
        self.dev.tick(now);
        let deadline = Instant::now() + STOP_DRAIN;
        if self.link.is_connected() {
            self.link
                .drain(&mut self.dev, now, deadline, &mut |_| {})
                .await;
        }
        self.link.close(&mut self.dev, now).await;
        tracing::info!(machine = %self.id, left = self.dev.journal().len(), evicted_unconfirmed = self.dev.evicted_unconfirmed(), "stopped");
    }
}

/// Loads and validates a config file.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    Ok(crate::config::AgentConfig::load(path)?)
}

/// The machines of a config (for `print-config`).
pub fn describe(m: &Machine) -> String {
    format!(
        "{}: {}://{}:{}{}",
        m.id,
        if m.broker.tls { "mqtts" } else { "mqtt" },
        m.broker.host,
        m.broker.port,
        m.simulate
            .map_or(String::new(), |k| format!(" (simulated {k})"))
    )
}
