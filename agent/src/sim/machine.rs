//! One simulated machine: the firmware's device core fed by its [`Timeline`], behind a real MQTT
//! client (rumqttc) that follows the device path of `docs/PROTOCOL.md`.
//!
//! Each connection is one `AsyncClient` + `EventLoop` pair driven by its own task, which forwards
//! what matters over a channel; a failed connection is dropped whole and a new pair is made after a
//! backoff, so no request queued for a dead connection can leak into the next one. PUBACKs are
//! mapped to journal keys through the order of `Outgoing::Publish(pkid)` notifications, which
//! rumqttc emits in request order. The device keeps one event in flight, so order holds.
//!
//! Sim time is the device's uptime. The machine's clock starts once it has its config (or after
//! `config_wait`), and every input is applied at the sim time the timeline gives it, whatever the
//! network does: the event stream depends on the seed only.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fabmeter_firmware::device::{Device, DeviceInfo};
use fabmeter_firmware::journal::EventKey;
use fabmeter_protocol::message::{Capability, MachineState};
use fabmeter_protocol::sig::EventSigner;
use fabmeter_protocol::{BadgeKey, Channel, MAX_CONFIG_PAYLOAD};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::flash::SparseFlash;
use super::rng::Rng;
use super::workshop::{Input, Timeline};
use super::{Crash, MachineReport, SimStats};

/// Flash sector of simulated devices.
pub const SECTOR: usize = 2048;
/// Flash of a simulated device: 6 sectors of config slots, 90 of journal, enough for the firmware's
/// journal to hold [`SIM_JOURNAL_CAP`] events of the largest size (sparse: only used sectors take
/// memory).
pub const FLASH_SECTORS: usize = 96;
/// Journal capacity of a simulated device, in events (about four simulated hours of a busy machine
/// with `progress_s = 300`, or days of a quiet one).
pub const SIM_JOURNAL_CAP: usize = 256;

/// The simulated device: sparse RAM flash, a relay that goes nowhere.
pub type SimDevice = Device<SparseFlash<SECTOR>, NoRelay, SIM_JOURNAL_CAP>;

/// The version reported in births.
pub const SIM_FW: &str = concat!("fabmeter-sim/", env!("CARGO_PKG_VERSION"));

const INFO: DeviceInfo = DeviceInfo {
    fw: SIM_FW,
    caps: &[Capability::Current, Capability::Badge, Capability::Relay],
};

/// Readings are taken every `step_ms` for this long after a level change, then every minute.
const ACTIVE_MS: u64 = 120_000;
const QUIET_STEP_MS: u64 = 60_000;
/// Minimum wall time between two wake-ups of a machine (inputs due meanwhile are applied together).
const WAKE_MIN: Duration = Duration::from_millis(10);
/// Requests allowed in the client's queue before the machine stops publishing and waits.
const QUEUE_LIMIT: usize = 8;

/// An output pin for the relay that drives nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRelay;

impl embedded_hal::digital::ErrorType for NoRelay {
    type Error = Infallible;
}

impl embedded_hal::digital::OutputPin for NoRelay {
    fn set_low(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// What a connection task reports.
enum Net {
    ConnAck,
    Sent(u16),
    PubAck(u16),
    Message(String, Vec<u8>),
    Down(String),
}

struct Conn {
    gen: u32,
    client: AsyncClient,
    task: JoinHandle<()>,
    acked: bool,
    /// Publish requests not yet seen on the wire, in order.
    queued: VecDeque<Queued>,
    /// The event on the wire and its packet id.
    inflight: Option<(u16, EventKey)>,
    /// Packet id of the offline message at shutdown, once sent.
    offline_pkid: Option<u16>,
    offline_acked: bool,
}

/// What a publish request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    Event(EventKey),
    Offline,
    Other,
}

/// Everything a machine task needs.
pub(crate) struct MachineSetup {
    pub index: usize,
    pub id: String,
    pub site: String,
    pub host: String,
    pub port: u16,
    pub key: BadgeKey,
    pub timeline: Timeline,
    pub seed: u64,
    pub speed: f64,
    pub step_ms: u64,
    pub duration_ms: Option<u64>,
    pub connect_delay: Duration,
    pub config_wait: Duration,
    pub drain_timeout: Duration,
    pub crashes: Vec<Crash>,
    pub stats: Arc<SimStats>,
    /// Signs the machine's events, when the simulation has device keys.
    pub signer: Option<EventSigner>,
}

struct Machine {
    s: MachineSetup,
    dev: Option<SimDevice>,
    /// Flash of a crashed device, until it boots again.
    dead_flash: Option<SparseFlash<SECTOR>>,
    conn: Option<Conn>,
    gen: u32,
    tx: mpsc::UnboundedSender<(u32, Net)>,
    rx: mpsc::UnboundedReceiver<(u32, Net)>,
    reconnect_at: Option<Instant>,
    backoff: Duration,
    jitter: Rng,
    /// Sim time of the last reading fed to the device.
    last_read: u64,
    level: f32,
    level_since: u64,
    got_config: bool,
    /// The highest event key acknowledged so far.
    acked_max: Option<EventKey>,
    report: MachineReport,
    topic_status: String,
    topic_event: String,
    topic_telemetry: String,
    topic_config: String,
    topic_cmd: String,
    buf: Vec<u8>,
}

fn new_device(
    flash: SparseFlash<SECTOR>,
    key: &BadgeKey,
    signer: Option<&EventSigner>,
    now: u64,
) -> Result<SimDevice, String> {
    let mut dev = Device::start(flash, NoRelay, key.clone(), INFO, now)
        .map_err(|e| format!("device start: {e:?}"))?;
    dev.set_event_key(signer.cloned());
    Ok(dev)
}

/// Runs one machine until `shutdown` or the end of its duration.
pub(crate) async fn run_machine(s: MachineSetup, shutdown: CancellationToken) -> MachineReport {
    let base = format!("fabmeter/v1/{}/{}/", s.site, s.id);
    let (tx, rx) = mpsc::unbounded_channel();
    let report = MachineReport {
        id: s.id.clone(),
        ..MachineReport::default()
    };
    let mut m = Machine {
        dev: None,
        dead_flash: None,
        conn: None,
        gen: 0,
        tx,
        rx,
        reconnect_at: None,
        backoff: Duration::from_millis(200),
        jitter: Rng::derive(s.seed ^ 0x6a69_7474, &s.id),
        last_read: 0,
        level: 0.0,
        level_since: 0,
        got_config: false,
        acked_max: None,
        report,
        topic_status: format!("{base}status"),
        topic_event: format!("{base}event"),
        topic_telemetry: format!("{base}telemetry"),
        topic_config: format!("{base}config"),
        topic_cmd: format!("{base}cmd"),
        buf: vec![0u8; MAX_CONFIG_PAYLOAD + 64],
        s,
    };
    m.run(shutdown).await;
    m.report
}

impl Machine {
    async fn run(&mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(self.s.connect_delay) => {}
            _ = shutdown.cancelled() => return,
        }
        let flash = SparseFlash::<SECTOR>::new(FLASH_SECTORS);
        match new_device(flash, &self.s.key, self.s.signer.as_ref(), 0) {
            Ok(d) => self.dev = Some(d),
            Err(e) => {
                self.report.error = Some(e);
                return;
            }
        }
        self.connect();
        // Wait for the retained config before the clock starts, so the stream depends on the seed only.
        let wait_until = Instant::now() + self.s.config_wait;
        while !self.got_config && Instant::now() < wait_until {
            let reconnect_at = self.reconnect_at;
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some((gen, net)) => self.on_net(gen, net, 0),
                    None => return,
                },
                _ = tokio::time::sleep_until(wait_until) => {}
                _ = sleep_opt(reconnect_at) => self.connect(),
                _ = shutdown.cancelled() => { self.stop(0).await; return; }
            }
            self.pump(0);
        }
        let anchor = Instant::now();
        let speed = self.s.speed;
        let mut crashes: VecDeque<Crash> = self.s.crashes.drain(..).collect();
        let mut reboot_at: Option<u64> = None;
        loop {
            let wall_ms = anchor.elapsed().as_secs_f64() * 1000.0;
            let mut target = (wall_ms * speed) as u64;
            let end = self.s.duration_ms;
            if let Some(d) = end {
                target = target.min(d);
            }
            // Apply everything due up to `target`.
            loop {
                let next_crash = crashes.front().map_or(u64::MAX, |c| c.at_ms);
                let next_boot = reboot_at.unwrap_or(u64::MAX);
                let next = self.next_input_at().min(next_crash).min(next_boot);
                if next > target {
                    break;
                }
                if next == next_boot {
                    reboot_at = None;
                    self.reboot(next);
                } else if next == next_crash {
                    if let Some(c) = crashes.pop_front() {
                        self.crash();
                        reboot_at = Some(c.at_ms + c.down_ms);
                    }
                } else {
                    self.apply_next(next);
                }
            }
            self.s.stats.sim_ms[self.s.index].store(target, Ordering::Relaxed);
            self.pump(self.last_read);
            if end.is_some_and(|d| target >= d) {
                self.stop(target).await;
                return;
            }
            let next = self
                .next_input_at()
                .min(crashes.front().map_or(u64::MAX, |c| c.at_ms))
                .min(reboot_at.unwrap_or(u64::MAX))
                .min(end.unwrap_or(u64::MAX));
            let wake = anchor + Duration::from_secs_f64((next as f64 / speed / 1000.0).min(1e6));
            let wake = wake.max(Instant::now() + WAKE_MIN);
            let reconnect_at = self.reconnect_at;
            tokio::select! {
                msg = self.rx.recv() => {
                    if let Some((gen, net)) = msg {
                        self.on_net(gen, net, self.last_read);
                        // Take whatever else arrived without waiting.
                        while let Ok((gen, net)) = self.rx.try_recv() {
                            self.on_net(gen, net, self.last_read);
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
                _ = sleep_opt(reconnect_at) => self.connect(),
                _ = shutdown.cancelled() => {
                    self.stop(self.last_read).await;
                    return;
                }
            }
        }
    }

    /// Sim time of the next reading or timeline step.
    fn next_input_at(&mut self) -> u64 {
        if self.dev.is_none() {
            return u64::MAX;
        }
        let quiet = self.last_read.saturating_sub(self.level_since);
        let step = if quiet < ACTIVE_MS {
            self.s.step_ms
        } else {
            QUIET_STEP_MS
        };
        (self.last_read + step).min(self.s.timeline.peek().at.max(self.last_read))
    }

    fn apply_next(&mut self, t: u64) {
        let step_at = self.s.timeline.peek().at.max(self.last_read);
        if t > self.last_read {
            self.read(t);
        }
        if step_at <= t {
            let step = self.s.timeline.pop();
            let Some(dev) = self.dev.as_mut() else { return };
            match step.input {
                Input::Level(a) => {
                    self.level = a;
                    self.level_since = t;
                }
                Input::Badge(uid) => dev.on_badge(t, &uid),
            }
        }
    }

    fn read(&mut self, t: u64) {
        if let Some(dev) = self.dev.as_mut() {
            dev.on_current(t, t - self.last_read, self.level);
        }
        self.last_read = t;
    }

    /// The device loses power: its connection drops without DISCONNECT (the broker publishes the
    /// last will), what is not in flash is lost.
    fn crash(&mut self) {
        if let Some(c) = self.conn.take() {
            c.task.abort();
        }
        self.reconnect_at = None;
        if let Some(dev) = self.dev.take() {
            self.dead_flash = Some(dev.release().0);
        }
    }

    fn reboot(&mut self, t: u64) {
        // Time passes while the device is off; the machine's inputs during that time are lost.
        while self.s.timeline.peek().at < t {
            if let Input::Level(a) = self.s.timeline.pop().input {
                self.level = a;
            }
        }
        let Some(flash) = self.dead_flash.take() else {
            return;
        };
        match new_device(flash, &self.s.key, self.s.signer.as_ref(), t) {
            Ok(d) => {
                self.dev = Some(d);
                self.last_read = t;
                self.level_since = t;
                self.report.boots += 1;
                self.connect();
            }
            Err(e) => self.report.error = Some(e),
        }
    }

    fn connect(&mut self) {
        self.reconnect_at = None;
        let Some(dev) = self.dev.as_ref() else { return };
        if let Some(old) = self.conn.take() {
            old.task.abort();
        }
        self.gen += 1;
        let client_id = format!("fm-{}-{}", self.s.site, self.s.id);
        let mut opts = MqttOptions::new(client_id, self.s.host.clone(), self.s.port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(true);
        opts.set_max_packet_size(MAX_CONFIG_PAYLOAD + 1024, MAX_CONFIG_PAYLOAD + 1024);
        let offline = match dev.offline(&mut self.buf) {
            Ok(n) => self.buf[..n].to_vec(),
            Err(_) => Vec::new(),
        };
        opts.set_last_will(LastWill::new(
            self.topic_status.clone(),
            offline,
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = AsyncClient::new(opts, 2 * QUEUE_LIMIT + 4);
        eventloop.network_options.set_connection_timeout(5);
        let tx = self.tx.clone();
        let gen = self.gen;
        let task = tokio::spawn(async move { drive(gen, &mut eventloop, tx).await });
        self.conn = Some(Conn {
            gen,
            client,
            task,
            acked: false,
            queued: VecDeque::new(),
            inflight: None,
            offline_pkid: None,
            offline_acked: false,
        });
    }

    fn on_net(&mut self, gen: u32, net: Net, now: u64) {
        let Some(conn) = self.conn.as_mut().filter(|c| c.gen == gen) else {
            return;
        };
        match net {
            Net::ConnAck => {
                conn.acked = true;
                self.report.connects += 1;
                self.backoff = Duration::from_millis(200);
                let Some(dev) = self.dev.as_ref() else { return };
                let client = conn.client.clone();
                let ok = client
                    .try_subscribe(self.topic_config.clone(), QoS::AtLeastOnce)
                    .and_then(|_| client.try_subscribe(self.topic_cmd.clone(), QoS::AtLeastOnce));
                let birth = dev
                    .birth(now, &mut self.buf)
                    .ok()
                    .map(|n| self.buf[..n].to_vec());
                let ok = ok.and_then(|_| match birth {
                    Some(b) => {
                        client.try_publish(self.topic_status.clone(), QoS::AtLeastOnce, true, b)
                    }
                    None => Ok(()),
                });
                conn.queued.push_back(Queued::Other);
                if ok.is_err() {
                    self.down("request queue refused the birth".into());
                }
            }
            Net::Sent(pkid) => match conn.queued.pop_front() {
                Some(Queued::Event(key)) => conn.inflight = Some((pkid, key)),
                Some(Queued::Offline) => conn.offline_pkid = Some(pkid),
                Some(Queued::Other) | None => {}
            },
            Net::PubAck(pkid) => {
                if let Some((p, key)) = conn.inflight {
                    if p == pkid {
                        conn.inflight = None;
                        if let Some(dev) = self.dev.as_mut() {
                            dev.on_puback(key);
                            self.report.events_acked += 1;
                            if self.acked_max.is_none_or(|k| key > k) {
                                self.acked_max = Some(key);
                                self.report.events_distinct += 1;
                            }
                            self.s.stats.events_acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if conn.offline_pkid == Some(pkid) {
                    conn.offline_acked = true;
                }
            }
            Net::Message(topic, payload) => {
                let Some(dev) = self.dev.as_mut() else { return };
                if topic == self.topic_config {
                    dev.on_config(now, &payload);
                    self.got_config = true;
                } else if topic == self.topic_cmd {
                    dev.on_command(now, &payload);
                    // Identify and reboot are acknowledged by the device; the simulator has no
                    // lamp, and a commanded reboot is not simulated.
                    let _ = dev.take_action();
                }
            }
            Net::Down(e) => self.down(e),
        }
    }

    /// The connection failed: drop it, let the journal resend from its oldest event, reconnect
    /// after a backoff with jitter.
    fn down(&mut self, why: String) {
        tracing::debug!(machine = %self.s.id, "connection down: {why}");
        if let Some(c) = self.conn.take() {
            c.task.abort();
        }
        if let Some(dev) = self.dev.as_mut() {
            dev.on_disconnect();
        }
        let jitter = self.jitter.range(0, self.backoff.as_millis() as u64 / 2);
        self.reconnect_at = Some(Instant::now() + self.backoff + Duration::from_millis(jitter));
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }

    /// Publishes what the device has to send, as far as the connection allows.
    fn pump(&mut self, now: u64) {
        let Some(conn) = self.conn.as_mut().filter(|c| c.acked) else {
            return;
        };
        let Some(dev) = self.dev.as_mut() else { return };
        let mut failed = false;
        while conn.queued.len() < QUEUE_LIMIT {
            let Some(out) = dev.next_to_send(now, &mut self.buf) else {
                break;
            };
            let payload = self.buf[..out.len].to_vec();
            let (topic, qos) = match out.channel {
                Channel::Event => (&self.topic_event, QoS::AtLeastOnce),
                _ => (&self.topic_telemetry, QoS::AtMostOnce),
            };
            if conn
                .client
                .try_publish(topic.clone(), qos, false, payload)
                .is_err()
            {
                failed = true;
                break;
            }
            conn.queued
                .push_back(out.key.map_or(Queued::Other, Queued::Event));
            if out.key.is_some() {
                self.report.events_published += 1;
                self.s
                    .stats
                    .events_published
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if failed {
            self.down("request queue full".into());
        }
    }

    /// Clean end: switch the machine off (the open session ends on power off), send the journal,
    /// publish the offline status, disconnect.
    async fn stop(&mut self, t: u64) {
        if let Some(dev) = self.dev.as_mut() {
            self.level = 0.0;
            let mut t = t.max(self.last_read);
            for _ in 0..200 {
                if dev.state() == MachineState::Off && dev.session().is_none() {
                    break;
                }
                t += self.s.step_ms.max(1000);
                dev.on_current(t, t - self.last_read, 0.0);
                self.last_read = t;
            }
        }
        let deadline = Instant::now() + self.s.drain_timeout;
        while Instant::now() < deadline {
            let empty = self.dev.as_ref().is_none_or(|d| d.journal().is_empty());
            if empty {
                break;
            }
            self.pump(self.last_read);
            let reconnect_at = self.reconnect_at;
            tokio::select! {
                msg = self.rx.recv() => if let Some((gen, net)) = msg { self.on_net(gen, net, self.last_read) },
                _ = tokio::time::sleep_until(deadline) => {}
                _ = sleep_opt(reconnect_at) => self.connect(),
            }
        }
        self.report.journal_left = self.dev.as_ref().map_or(0, |d| d.journal().len());
        // The offline status, then DISCONNECT.
        let offline = self
            .dev
            .as_ref()
            .and_then(|d| d.offline(&mut self.buf).ok())
            .map(|n| self.buf[..n].to_vec());
        if let (Some(conn), Some(payload)) = (self.conn.as_mut().filter(|c| c.acked), offline) {
            if conn
                .client
                .try_publish(self.topic_status.clone(), QoS::AtLeastOnce, true, payload)
                .is_ok()
            {
                conn.queued.push_back(Queued::Offline);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if self.conn.as_ref().is_none_or(|c| c.offline_acked) {
                        break;
                    }
                    tokio::select! {
                        msg = self.rx.recv() => if let Some((gen, net)) = msg { self.on_net(gen, net, self.last_read) },
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
                if let Some(c) = self.conn.as_ref() {
                    let _ = c.client.try_disconnect();
                    // Let the DISCONNECT go out before the connection task ends.
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < deadline {
                        tokio::select! {
                            msg = self.rx.recv() => match msg {
                                Some((_, Net::Down(_))) | None => break,
                                Some(_) => {}
                            },
                            _ = tokio::time::sleep_until(deadline) => {}
                        }
                    }
                }
            }
        }
        if let Some(c) = self.conn.take() {
            c.task.abort();
        }
        if let Some(dev) = self.dev.as_ref() {
            self.report.last_boot = dev.boot();
        }
    }
}

/// Sleeps until `at`, forever if `None`.
async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Drives one connection, forwarding what the machine needs; ends at the first error.
async fn drive(gen: u32, eventloop: &mut EventLoop, tx: mpsc::UnboundedSender<(u32, Net)>) {
    loop {
        let net = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Net::ConnAck,
            Ok(Event::Incoming(Packet::PubAck(p))) => Net::PubAck(p.pkid),
            Ok(Event::Incoming(Packet::Publish(p))) => Net::Message(p.topic, p.payload.to_vec()),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Net::Sent(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // rumqttc ends the connection after sending DISCONNECT.
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send((gen, Net::Down(e.to_string())));
                return;
            }
        };
        if tx.send((gen, net)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_device_starts_and_reboots() {
        let key = crate::sim::demo_badge_key();
        let dev =
            new_device(SparseFlash::new(FLASH_SECTORS), &key, None, 0).expect("geometry fits");
        assert_eq!(dev.boot(), 1);
        let dev = new_device(dev.release().0, &key, None, 0).expect("reboots");
        assert_eq!(dev.boot(), 2);
    }
}
