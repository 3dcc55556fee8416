//! One simulated machine: the firmware's device core fed by its [`Timeline`], behind a real MQTT
//! client (rumqttc) that follows the device path of `docs/PROTOCOL.md` (see [`crate::link`], shared
//! with the agent runtime).
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
use fabmeter_protocol::message::Capability;
use fabmeter_protocol::sig::EventSigner;
use fabmeter_protocol::BadgeKey;
use rumqttc::MqttOptions;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::link::{sleep_opt, Happened, Link, Mux, Net, Topics};

use super::feed::Feed;
use super::flash::SparseFlash;
use super::rng::Rng;
use super::workshop::Timeline;
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

/// Minimum wall time between two wake-ups of a machine (inputs due meanwhile are applied together).
const WAKE_MIN: Duration = Duration::from_millis(10);

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

/// Everything a machine task needs.
pub(crate) struct MachineSetup {
    pub index: usize,
    pub id: String,
    pub site: String,
    pub host: String,
    pub port: u16,
    pub key: BadgeKey,
    pub timeline: Option<Timeline>,
    pub seed: u64,
    pub speed: f64,
    pub step_ms: u64,
    pub duration_ms: Option<u64>,
    pub connect_delay: Duration,
    pub config_wait: Duration,
    pub drain_timeout: Duration,
    /// Keep events until the collector confirms them.
    pub confirm: bool,
    pub crashes: Vec<Crash>,
    pub stats: Arc<SimStats>,
    /// Signs the machine's events, when the simulation has device keys.
    pub signer: Option<EventSigner>,
    /// The shared connection and the machine's slot on it; `None`: a connection of its own.
    pub mux: Option<(Arc<Mux>, usize)>,
}

struct Machine {
    s: MachineSetup,
    dev: Option<SimDevice>,
    /// Flash of a crashed device, until it boots again.
    dead_flash: Option<SparseFlash<SECTOR>>,
    link: Link,
    /// The machine's inputs.
    feed: Feed,
    got_config: bool,
    /// The connection is up (counted in [`SimStats::connected`]).
    up: bool,
    /// The highest event key acknowledged so far.
    acked_max: Option<EventKey>,
    report: MachineReport,
}

/// The box id of a simulated machine's box: derived from the seed and the machine, so that a
/// run depends on the seed only (a real device draws it at random, docs/PROTOCOL.md `box`).
pub(crate) fn sim_box_id(seed: u64, machine: &str) -> u32 {
    (Rng::derive(seed ^ 0x626f_7869, machine).next_u64() as u32).max(1)
}

/// Starts (or restarts) a simulated device; `box_id` is set at its first start and kept after.
fn new_device(
    flash: SparseFlash<SECTOR>,
    key: &BadgeKey,
    signer: Option<&EventSigner>,
    box_id: u32,
    now: u64,
) -> Result<SimDevice, String> {
    let mut dev = Device::start(flash, NoRelay, key.clone(), INFO, now)
        .map_err(|e| format!("device start: {e:?}"))?;
    dev.set_event_key(signer.cloned());
    if dev.box_id().is_none() {
        dev.set_box_id(box_id);
    }
    Ok(dev)
}

/// Runs one machine until `shutdown` or the end of its duration.
pub(crate) async fn run_machine(mut s: MachineSetup, shutdown: CancellationToken) -> MachineReport {
    let report = MachineReport {
        id: s.id.clone(),
        ..MachineReport::default()
    };
    let mut opts = MqttOptions::new(format!("fm-{}-{}", s.site, s.id), s.host.clone(), s.port);
    opts.set_keep_alive(Duration::from_secs(30));
    let jitter = Rng::derive(s.seed ^ 0x6a69_7474, &s.id).next_u64();
    let Some(timeline) = s.timeline.take() else {
        return report;
    };
    let topics = Topics::new(&s.site, &s.id);
    let link = match s.mux.take() {
        Some((mux, slot)) => Link::shared(mux, slot, topics, Duration::from_secs(5), jitter),
        None => Link::new(opts, topics, Duration::from_secs(5), jitter),
    };
    let mut m = Machine {
        dev: None,
        dead_flash: None,
        link,
        feed: Feed::new(timeline, s.step_ms),
        got_config: false,
        up: false,
        acked_max: None,
        report,
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
        let box_id = sim_box_id(self.s.seed, &self.s.id);
        match new_device(flash, &self.s.key, self.s.signer.as_ref(), box_id, 0) {
            Ok(mut d) => {
                d.set_confirmations(self.s.confirm);
                self.dev = Some(d);
            }
            Err(e) => {
                self.report.error = Some(e);
                return;
            }
        }
        self.connect();
        // Wait for the retained config before the clock starts, so the stream depends on the seed only.
        let wait_until = Instant::now() + self.s.config_wait;
        while !self.got_config && Instant::now() < wait_until {
            let reconnect_at = self.link.reconnect_at();
            tokio::select! {
                msg = self.link.recv() => match msg {
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
            self.pump(self.feed.last_read());
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
            let reconnect_at = self.link.reconnect_at();
            tokio::select! {
                msg = self.link.recv() => {
                    if let Some((gen, net)) = msg {
                        self.on_net(gen, net, self.feed.last_read());
                        // Take whatever else arrived without waiting.
                        while let Some((gen, net)) = self.link.try_recv() {
                            self.on_net(gen, net, self.feed.last_read());
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
                _ = sleep_opt(reconnect_at) => self.connect(),
                _ = shutdown.cancelled() => {
                    self.stop(self.feed.last_read()).await;
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
        self.feed.next_at()
    }

    fn apply_next(&mut self, t: u64) {
        if let Some(dev) = self.dev.as_mut() {
            self.feed.apply_next(t, dev);
        }
    }

    /// The device loses power: its connection drops without DISCONNECT (the broker publishes the
    /// last will), what is not in flash is lost.
    fn crash(&mut self) {
        self.link.cut();
        if let Some(dev) = self.dev.take() {
            self.dead_flash = Some(dev.release().0);
        }
    }

    fn reboot(&mut self, t: u64) {
        // Time passes while the device is off; the machine's inputs during that time are lost.
        self.feed.skip_to(t);
        let Some(flash) = self.dead_flash.take() else {
            return;
        };
        let box_id = sim_box_id(self.s.seed, &self.s.id);
        match new_device(flash, &self.s.key, self.s.signer.as_ref(), box_id, t) {
            Ok(mut d) => {
                d.set_confirmations(self.s.confirm);
                self.dev = Some(d);
                self.report.boots += 1;
                self.connect();
            }
            Err(e) => self.report.error = Some(e),
        }
    }

    fn connect(&mut self) {
        if let Some(dev) = self.dev.as_ref() {
            self.link.connect(dev);
        }
    }

    fn on_net(&mut self, gen: u32, net: Net, now: u64) {
        let Some(dev) = self.dev.as_mut() else { return };
        let happened = self.link.on_net(gen, net, now, dev);
        self.count(happened);
        if let Some(dev) = self.dev.as_mut() {
            // Identify and reboot are acknowledged by the device; the simulator has no lamp, and a
            // commanded reboot is not simulated.
            let _ = dev.take_action();
        }
    }

    /// Accounts for what a connection report meant.
    fn count(&mut self, happened: Happened) {
        match happened {
            Happened::Connected => {
                self.report.connects += 1;
                if !self.up {
                    self.up = true;
                    self.s.stats.connected.fetch_add(1, Ordering::Relaxed);
                }
            }
            Happened::Down(_) => {
                if self.up {
                    self.up = false;
                    self.s.stats.connected.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Happened::Acked(key) => {
                self.report.events_acked += 1;
                if self.acked_max.is_none_or(|k| key > k) {
                    self.acked_max = Some(key);
                    self.report.events_distinct += 1;
                }
                self.s.stats.events_acked.fetch_add(1, Ordering::Relaxed);
            }
            Happened::Config => self.got_config = true,
            Happened::Confirmed(_) | Happened::Command | Happened::Nothing => {}
        }
    }

    /// Publishes what the device has to send, as far as the connection allows.
    fn pump(&mut self, now: u64) {
        let Some(dev) = self.dev.as_mut() else { return };
        let n = self.link.pump(now, dev);
        self.report.events_published += n;
        self.s
            .stats
            .events_published
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Clean end: switch the machine off (the open session ends on power off), send the journal,
    /// publish the offline status, disconnect.
    async fn stop(&mut self, t: u64) {
        let Some(mut dev) = self.dev.take() else {
            self.link.cut();
            return;
        };
        self.feed.switch_off(t, &mut dev);
        let deadline = Instant::now() + self.s.drain_timeout;
        let mut seen = Vec::new();
        let published = self
            .link
            .drain(&mut dev, self.feed.last_read(), deadline, &mut |h| {
                seen.push(h)
            })
            .await;
        self.report.events_published += published;
        self.s
            .stats
            .events_published
            .fetch_add(published, Ordering::Relaxed);
        for h in seen {
            self.count(h);
        }
        self.report.journal_left = dev.journal().len();
        self.link.close(&mut dev, self.feed.last_read()).await;
        self.report.last_boot = dev.boot();
        self.dev = Some(dev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_device_starts_and_reboots() {
        let key = crate::sim::demo_badge_key();
        let dev =
            new_device(SparseFlash::new(FLASH_SECTORS), &key, None, 7, 0).expect("geometry fits");
        assert_eq!((dev.boot(), dev.box_id()), (1, Some(7)));
        let dev = new_device(dev.release().0, &key, None, 8, 0).expect("reboots");
        assert_eq!(
            (dev.boot(), dev.box_id()),
            (2, Some(7)),
            "the box keeps the id it drew"
        );
        assert_ne!(sim_box_id(1, "laser-1"), sim_box_id(1, "laser-2"));
        assert_ne!(sim_box_id(1, "laser-1"), sim_box_id(2, "laser-1"));
    }
}
