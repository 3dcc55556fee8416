//! The device core: meter + sessions + access + journal + persisted state, behind one sans-IO API.
//!
//! The [`Device`] owns the flash and the relay pin; everything else comes in as arguments with the
//! current uptime `now`. It assigns `(boot, seq)`: `boot` is bumped and persisted in
//! [`Device::start`] before any event exists, `seq` grows by one per event. Every event is encoded
//! with the protocol codec and journaled **before** it can be sent; [`Device::next_to_send`] hands
//! out the oldest unsent event (one at a time: QoS 1 with one message in flight, which keeps the
//! order on every broker) with `sent_uptime_ms` refreshed. After a reconnect,
//! [`Device::on_disconnect`] makes the journal resend from its oldest entry.
//!
//! When is an event forgotten? Without confirmations ([`Device::set_confirmations`] off, the
//! default), [`Device::on_puback`] removes it. With them on, a PUBACK only moves the send cursor on,
//! so several events await confirmation at once, and only [`Device::on_confirm`] (a message of the
//! collector on `ack`: these events are in the ledger) removes them. Whatever was sent and not
//! confirmed is sent again from the oldest after a reconnect, and when nothing was confirmed for
//! [`STALL_MIN_MS`] (doubling up to [`STALL_MAX_MS`], back to the minimum at any confirmation). So a
//! broker that acknowledged an event and then lost it (a crash, no subscriber) loses nothing.

use embedded_hal::digital::OutputPin;
use embedded_storage::nor_flash::NorFlash;
use fabmeter_protocol::message::{
    Capability, Command, CommandBody, CommandOutcome, Confirm, DeviceConfig, EndReason, Event,
    EventBody, FaultCode, MachineState, Presence, Sensing, Status, Telemetry, Text,
    MAX_CAPABILITIES, SHORT_TEXT,
};
use fabmeter_protocol::sig::EventSigner;
use fabmeter_protocol::{
    decode, encode, BadgeKey, Channel, ConfigHash, DecodeError, EncodeError, SCHEMA_VERSION,
};

use crate::access::{decide, Decision};
use crate::journal::{EventClass, EventKey, Journal, PersistedState, MAX_EVENT_LEN};
use crate::meter::{round_u32, Meter, MeterOutput, Transition};
use crate::session::{SessionEvent, SessionRules, SessionTracker};
use crate::storage::{ConfigStore, Layout, StorageError};

/// Default journal capacity of a device, in events.
pub const JOURNAL_CAP: usize = 64;

/// Lifetime counters are persisted at least this often while the machine runs (and at every
/// state change and session end).
pub const PERSIST_EVERY_MS: u64 = 600_000;

/// With confirmations on: the first wait for a confirmation before the unconfirmed events are sent
/// again (and the wait after any confirmation).
pub const STALL_MIN_MS: u64 = 30_000;
/// With confirmations on: the longest wait; each fruitless resend doubles it up to this.
pub const STALL_MAX_MS: u64 = 600_000;

/// Static facts about the device, for its birth message.
#[derive(Debug, Clone, Copy)]
pub struct DeviceInfo {
    /// Firmware version (≤ 64 bytes).
    pub fw: &'static str,
    /// Capabilities (≤ 8).
    pub caps: &'static [Capability],
}

/// Sensing used before any config was received: a clamp with common thresholds.
pub const DEFAULT_SENSING: Sensing = Sensing::DEFAULT;

/// Why the device could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// Storage failed or does not fit the layout.
    Storage(StorageError),
}

impl From<StorageError> for StartError {
    fn from(e: StorageError) -> Self {
        StartError::Storage(e)
    }
}

/// Something the board must do, asked by a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Blink or beep.
    Identify,
    /// Restart (after the journal has been flushed as far as possible).
    Reboot,
}

/// A message ready to publish, in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// The channel (topic) to publish on; QoS and retain follow from it.
    pub channel: Channel,
    /// Bytes written to the buffer.
    pub len: usize,
    /// For events: the key to pass to [`Device::on_puback`] once the broker acknowledged it.
    pub key: Option<EventKey>,
}

/// The device core.
pub struct Device<S: NorFlash, R: OutputPin, const CAP: usize = JOURNAL_CAP> {
    flash: S,
    relay: R,
    key: BadgeKey,
    info: DeviceInfo,
    journal: Journal<CAP>,
    config_store: ConfigStore,
    boot: u32,
    next_seq: u32,
    config: Option<DeviceConfig>,
    config_hash: Option<ConfigHash>,
    meter: Meter,
    session: SessionTracker,
    last_ms: u64,
    on_ms: u64,
    busy_ms: u64,
    energy_mj: u64,
    lifetime: PersistedState,
    last_persist_ms: u64,
    inflight: Option<EventKey>,
    confirm: bool,
    cursor: Option<EventKey>,
    pubacked: Option<EventKey>,
    stall_since: Option<u64>,
    stall_ms: u64,
    evicted: u32,
    telemetry_due: Option<u64>,
    telemetry: Option<Telemetry>,
    action: Option<Action>,
    signer: Option<EventSigner>,
}

impl<S: NorFlash, R: OutputPin, const CAP: usize> Device<S, R, CAP> {
    /// Starts the device: recovers the journal and the stored config, bumps and persists the boot
    /// counter, switches the relay off and journals a `counters` event.
    pub fn start(
        mut flash: S,
        mut relay: R,
        key: BadgeKey,
        info: DeviceInfo,
        now: u64,
    ) -> Result<Self, StartError> {
        let layout = Layout::for_flash(&flash)?;
        let mut journal = Journal::<CAP>::open(&mut flash, layout)?;
        let config_store = ConfigStore::open(&mut flash, layout)?;
        let mut config = None;
        let mut config_hash = None;
        let mut stored_config_bad = false;
        {
            let mut buf = [0u8; fabmeter_protocol::MAX_CONFIG_PAYLOAD + 16];
            if let Ok(Some(len)) = config_store.load(&mut flash, &mut buf) {
                match decode::<DeviceConfig>(&buf[..len]) {
                    Ok(c) => {
                        config_hash = Some(ConfigHash::of(&buf[..len]));
                        config = Some(c);
                    }
                    Err(_) => stored_config_bad = true,
                }
            }
        }
        let mut lifetime = journal.state();
        lifetime.boot = lifetime.boot.saturating_add(1);
        // Durable before any event of this boot exists.
        journal.save_state(&mut flash, lifetime)?;
        let relay_ok = relay.set_low().is_ok();
        let sensing = config
            .as_ref()
            .map_or(DEFAULT_SENSING, |c| c.sensing.clone());
        let mut dev = Device {
            flash,
            relay,
            key,
            info,
            journal,
            config_store,
            boot: lifetime.boot,
            next_seq: 1,
            config: None,
            config_hash,
            meter: Meter::new(&sensing),
            session: SessionTracker::new(SessionRules::default()),
            last_ms: now,
            on_ms: 0,
            busy_ms: 0,
            energy_mj: 0,
            lifetime,
            last_persist_ms: now,
            inflight: None,
            confirm: false,
            cursor: None,
            pubacked: None,
            stall_since: None,
            stall_ms: STALL_MIN_MS,
            evicted: 0,
            telemetry_due: None,
            telemetry: None,
            action: None,
            signer: None,
        };
        if let Some(c) = config {
            dev.apply(now, c);
        }
        dev.emit(now, dev.counters_body());
        if stored_config_bad {
            dev.fault(now, FaultCode::Storage, &["stored config unreadable"]);
        }
        if !relay_ok {
            dev.fault(now, FaultCode::Other, &["relay pin error"]);
        }
        Ok(dev)
    }

    /// Signs every event sent from now on with this device key, for its machine's event topic
    /// (docs/PROTOCOL.md "Signatures"); `None` sends them unsigned. Events already journaled are
    /// signed when they are sent, since each copy is signed afresh.
    pub fn set_event_key(&mut self, signer: Option<EventSigner>) {
        self.signer = signer;
    }

    /// The box id this device stamps on its events (docs/PROTOCOL.md `box`), `None` until one is
    /// set: a device keeps it with its boot counter, across reboots.
    pub fn box_id(&self) -> Option<u32> {
        (self.lifetime.box_id != 0).then_some(self.lifetime.box_id)
    }

    /// Sets the box id (nonzero; 0 is ignored) and persists it with the boot counter. A board
    /// calls it once, when [`Device::box_id`] is `None` (the first start, or the first after its
    /// state was wiped, which also restarted the boot count), with an id drawn from its entropy
    /// (a TRNG, or its chip's unique id mixed with noise). Every event sent from now on carries
    /// it, those already journaled too (the id is added when a copy is sent).
    pub fn set_box_id(&mut self, box_id: u32) {
        if box_id == 0 || self.lifetime.box_id == box_id {
            return;
        }
        self.lifetime.box_id = box_id;
        let now = self.last_ms;
        self.persist(now);
    }

    /// Whether an event stays journaled after its PUBACK until the collector confirms it on `ack`
    /// ([`Device::on_confirm`]); off by default (a PUBACK removes it). Turn it on only where a
    /// collector that confirms reads this machine's events, and subscribe to the machine's `ack`
    /// topic: otherwise the journal fills and its events are resent forever.
    pub fn set_confirmations(&mut self, on: bool) {
        self.confirm = on;
    }

    /// Whether confirmations are on ([`Device::set_confirmations`]).
    pub fn confirmations(&self) -> bool {
        self.confirm
    }

    /// Events acknowledged by the broker but never confirmed that a full journal evicted since
    /// start (with confirmations on). Such an event most likely reached the ledger; it is not in
    /// `counters.journal_dropped`, which counts events that never reached the broker.
    pub fn evicted_unconfirmed(&self) -> u32 {
        self.evicted
    }

    /// Gives the flash and the relay back (to simulate a reboot in tests, or to hand them over).
    pub fn release(self) -> (S, R) {
        (self.flash, self.relay)
    }

    /// The boot counter of this run.
    pub fn boot(&self) -> u32 {
        self.boot
    }

    /// The sensed state.
    pub fn state(&self) -> MachineState {
        self.meter.state()
    }

    /// The applied config.
    pub fn config(&self) -> Option<&DeviceConfig> {
        self.config.as_ref()
    }

    /// The hash of the applied config's payload.
    pub fn config_hash(&self) -> Option<ConfigHash> {
        self.config_hash
    }

    /// The open session: (id, badge).
    pub fn session(&self) -> Option<(u32, fabmeter_protocol::BadgeHash)> {
        self.session.open_session().map(|s| (s.id, s.badge))
    }

    /// The journal (to inspect what waits to be sent).
    pub fn journal(&self) -> &Journal<CAP> {
        &self.journal
    }

    /// Lifetime counters as of now (whole units).
    pub fn lifetime(&self) -> PersistedState {
        let mut l = self.lifetime;
        l.journal_dropped = self.journal.state().journal_dropped;
        l
    }

    /// A pending board action (identify, reboot), taken once.
    pub fn take_action(&mut self) -> Option<Action> {
        self.action.take()
    }

    // ------------------------------------------------------------------------------------------
    // inputs

    /// One ADC sample in volts (current clamp).
    pub fn on_sample(&mut self, now: u64, volts: f32) {
        let prev = self.meter.state();
        let out = self.meter.on_sample(now, volts);
        self.after_meter(now, prev, out);
    }

    /// An RMS current measured elsewhere over the last `dt_ms` (hosted sensors, smart plugs).
    pub fn on_current(&mut self, now: u64, dt_ms: u64, current_a: f32) {
        let prev = self.meter.state();
        let out = self.meter.on_current_window(now, dt_ms, current_a);
        self.after_meter(now, prev, out);
    }

    /// The level of the run-signal input.
    pub fn on_run_signal(&mut self, now: u64, high: bool) {
        let prev = self.meter.state();
        let transition = self.meter.on_run_signal(now, high);
        self.after_meter(
            now,
            prev,
            MeterOutput {
                reading: None,
                transition,
            },
        );
    }

    /// Time passes: dwell timers, session deadlines, telemetry, periodic persistence.
    pub fn tick(&mut self, now: u64) {
        let prev = self.meter.state();
        let transition = self.meter.tick(now);
        self.after_meter(
            now,
            prev,
            MeterOutput {
                reading: None,
                transition,
            },
        );
    }

    /// A badge was read: its UID bytes in transmission order.
    pub fn on_badge(&mut self, now: u64, uid: &[u8]) {
        self.tick(now);
        let badge = self.key.hash(uid);
        let open = self.session.open_session().map(|s| s.badge);
        match decide(self.config.as_ref(), open.as_ref(), &badge) {
            Decision::Start => {
                if let Some(id) = self.emit(now, EventBody::SessionStarted { badge }) {
                    self.session.start(id, badge, now);
                    self.set_relay(now, true);
                }
            }
            Decision::End => self.end_session(now, EndReason::BadgeOut),
            Decision::Deny(reason) => {
                self.emit(now, EventBody::AccessDenied { badge, reason });
            }
        }
    }

    /// A payload received on the `config` topic.
    pub fn on_config(&mut self, now: u64, payload: &[u8]) {
        self.tick(now);
        let cfg = match decode::<DeviceConfig>(payload) {
            Ok(c) => c,
            Err(e) => {
                self.refused(now, FaultCode::ConfigRejected, "", &e);
                return;
            }
        };
        let hash = ConfigHash::of(payload);
        if self.config_hash == Some(hash) && self.config.is_some() {
            // The retained config again, at a reconnect: nothing to write.
            return;
        }
        if let Err(e) = self.config_store.store(&mut self.flash, payload) {
            self.fault(
                now,
                FaultCode::Storage,
                &["config not stored: ", e.as_str()],
            );
        }
        self.config_hash = Some(hash);
        self.apply(now, cfg);
    }

    /// A payload received on the `cmd` topic.
    pub fn on_command(&mut self, now: u64, payload: &[u8]) {
        self.tick(now);
        let cmd = match decode::<Command>(payload) {
            Ok(c) => c,
            Err(e) => {
                self.refused(now, FaultCode::Other, "cmd refused: ", &e);
                return;
            }
        };
        let outcome = match cmd.cmd {
            CommandBody::EndSession => {
                if self.session.open_session().is_some() {
                    self.end_session(now, EndReason::Interrupted);
                    CommandOutcome::Done
                } else {
                    CommandOutcome::Refused
                }
            }
            CommandBody::PublishCounters => {
                self.persist(now);
                self.emit(now, self.counters_body());
                CommandOutcome::Done
            }
            CommandBody::Identify => {
                self.action = Some(Action::Identify);
                CommandOutcome::Done
            }
            CommandBody::Reboot => {
                self.end_session(now, EndReason::Interrupted);
                self.persist(now);
                self.action = Some(Action::Reboot);
                CommandOutcome::Done
            }
            // No wall clock on this device.
            CommandBody::SetTime { .. } => CommandOutcome::Unsupported,
        };
        self.emit(
            now,
            EventBody::CommandResult {
                id: cmd.id,
                outcome,
            },
        );
    }

    /// The broker acknowledged the event with this key (PUBACK). Without confirmations this
    /// removes it from the journal; with them, the next event may go out and this one waits for
    /// its confirmation.
    pub fn on_puback(&mut self, key: EventKey) {
        let expected = self.inflight == Some(key);
        if expected {
            self.inflight = None;
        }
        if self.confirm {
            // A stale PUBACK (of a connection before a rewind) does not move the cursor.
            if expected {
                self.cursor = self.cursor.max(Some(key));
            }
            self.pubacked = self.pubacked.max(Some(key));
            return;
        }
        // A storage error leaves the event in the journal: it is sent again (a duplicate that the
        // collector ignores), never lost.
        let _ = self.journal.ack(&mut self.flash, key);
    }

    /// A payload received on the `ack` topic: the collector holds events `from..=to` of `boot` in
    /// its ledger, so they leave the journal. Returns how many did; a confirmation of events the
    /// journal no longer holds removes nothing. A confirmation that does not decode is refused
    /// with its error and changes nothing (the events are resent and confirmed again). Without
    /// [`Device::set_confirmations`] it changes nothing either: the PUBACK removes events.
    pub fn on_confirm(&mut self, now: u64, payload: &[u8]) -> Result<usize, DecodeError> {
        let c = decode::<Confirm>(payload)?;
        if !self.confirm {
            // Without confirmations the PUBACK removes events; the journal is left to it.
            return Ok(0);
        }
        let mut removed = 0;
        while let Some(key) = self
            .journal
            .entries()
            .iter()
            .map(|e| e.key)
            .find(|k| k.boot == c.boot && (c.from..=c.to).contains(&k.seq))
        {
            if self.journal.ack(&mut self.flash, key).is_err() {
                // Still journaled: sent again and confirmed again later, never lost.
                break;
            }
            removed += 1;
        }
        if removed > 0 {
            self.stall_ms = STALL_MIN_MS;
            self.stall_since = Some(now);
        }
        Ok(removed)
    }

    /// The connection dropped: unacknowledged (and, with confirmations, unconfirmed) events are
    /// sent again from the oldest.
    pub fn on_disconnect(&mut self) {
        self.inflight = None;
        self.cursor = None;
    }

    /// With confirmations: when events were sent and nothing was confirmed for the stall period,
    /// sends them again from the oldest and doubles the period.
    fn stall_check(&mut self, now: u64) {
        let oldest = self.journal.entries().first().map(|e| e.key);
        let awaiting = matches!((oldest, self.cursor), (Some(o), Some(c)) if o <= c);
        if !self.confirm || !awaiting {
            self.stall_since = None;
            return;
        }
        let since = *self.stall_since.get_or_insert(now);
        // Rewound only between two events, so that the PUBACK in flight cannot move the cursor.
        if now.saturating_sub(since) >= self.stall_ms && self.inflight.is_none() {
            self.cursor = None;
            self.stall_since = Some(now);
            self.stall_ms = (self.stall_ms * 2).min(STALL_MAX_MS);
        }
    }

    // ------------------------------------------------------------------------------------------
    // outputs

    /// The next message to publish, encoded into `buf` with `sent_uptime_ms = now`: pending
    /// telemetry first (QoS 0), then the oldest unacknowledged event if none is in flight.
    pub fn next_to_send(&mut self, now: u64, buf: &mut [u8]) -> Option<Outgoing> {
        if let Some(t) = self.telemetry.take() {
            if let Ok(len) = encode(&t, buf) {
                return Some(Outgoing {
                    channel: Channel::Telemetry,
                    len,
                    key: None,
                });
            }
        }
        self.stall_check(now);
        if self.inflight.is_some() {
            return None;
        }
        loop {
            let cursor = self.cursor;
            let entry = *self
                .journal
                .entries()
                .iter()
                .find(|e| Some(e.key) > cursor)?;
            let mut json = [0u8; MAX_EVENT_LEN];
            let sent = self
                .journal
                .read(&mut self.flash, &entry, &mut json)
                .ok()
                .and_then(|n| decode::<Event>(&json[..n]).ok())
                .and_then(|mut ev| {
                    ev.sent_uptime_ms = now.max(ev.uptime_ms);
                    ev.box_id = (self.lifetime.box_id != 0).then_some(self.lifetime.box_id);
                    let len = encode(&ev, buf).ok()?;
                    Some(match &self.signer {
                        // Unsigned if the signature does not fit the caller's buffer: the
                        // collector then keeps it as a dead letter rather than the device
                        // losing it.
                        Some(s) => s.sign(buf, len).unwrap_or(len),
                        None => len,
                    })
                });
            match sent {
                Some(len) => {
                    self.inflight = Some(entry.key);
                    return Some(Outgoing {
                        channel: Channel::Event,
                        len,
                        key: Some(entry.key),
                    });
                }
                None => {
                    // Unreadable in flash: it cannot be sent; drop it rather than block the rest.
                    if self.journal.ack(&mut self.flash, entry.key).is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// The birth message (retained on `status`).
    pub fn birth(&self, now: u64, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut caps = heapless::Vec::<Capability, MAX_CAPABILITIES>::new();
        for c in self.info.caps.iter().take(MAX_CAPABILITIES) {
            let _ = caps.push(*c);
        }
        let mut fw = Text::<SHORT_TEXT>::new();
        push_ascii(&mut fw, self.info.fw);
        encode(
            &Status {
                v: SCHEMA_VERSION,
                status: Presence::Online,
                boot: self.boot,
                uptime_ms: Some(now),
                ts: None,
                fw: Some(fw),
                config_hash: self.config_hash,
                caps: Some(caps),
            },
            buf,
        )
    }

    /// The last will / clean-shutdown message (retained on `status`).
    pub fn offline(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        encode(
            &Status {
                v: SCHEMA_VERSION,
                status: Presence::Offline,
                boot: self.boot,
                uptime_ms: None,
                ts: None,
                fw: None,
                config_hash: None,
                caps: None,
            },
            buf,
        )
    }

    // ------------------------------------------------------------------------------------------
    // internals

    fn apply(&mut self, now: u64, cfg: DeviceConfig) {
        if self.config.as_ref().map(|c| &c.sensing) != Some(&cfg.sensing) {
            self.meter.reconfigure(&cfg.sensing);
        }
        self.session.set_rules(SessionRules {
            progress_s: cfg.progress_s,
            idle_timeout_s: cfg.idle_timeout_s,
            max_session_s: cfg.max_session_s,
        });
        self.telemetry_due = (cfg.telemetry_s > 0).then(|| now + u64::from(cfg.telemetry_s) * 1000);
        self.config = Some(cfg);
    }

    fn after_meter(&mut self, now: u64, prev: MachineState, out: MeterOutput) {
        let now = now.max(self.last_ms);
        self.advance(now, prev);
        if let Some(r) = out.reading {
            self.energy_mj += r.energy_mj;
            let wh = self.energy_mj / 3_600_000;
            self.energy_mj %= 3_600_000;
            self.lifetime.energy_wh += wh;
            self.session.add_energy(r.energy_mj);
        }
        if let Some(t) = out.transition {
            self.on_transition(now, t);
        }
        self.telemetry_tick(now);
        if now.saturating_sub(self.last_persist_ms) >= PERSIST_EVERY_MS {
            self.persist(now);
        }
    }

    /// Accounts for the time since the last input, spent in `state`.
    fn advance(&mut self, now: u64, state: MachineState) {
        let dt = now.saturating_sub(self.last_ms);
        self.last_ms = now;
        if state != MachineState::Off {
            self.on_ms += dt;
        }
        if state == MachineState::Busy {
            self.busy_ms += dt;
        }
        self.lifetime.on_s += self.on_ms / 1000;
        self.on_ms %= 1000;
        self.lifetime.busy_s += self.busy_ms / 1000;
        self.busy_ms %= 1000;
        while let Some(SessionEvent { at, body }) = self.session.poll(now, state) {
            let ended = matches!(body, EventBody::SessionEnded { .. });
            self.emit(at, body);
            if ended {
                self.set_relay(at, false);
                self.persist(now);
            }
        }
    }

    fn on_transition(&mut self, now: u64, t: Transition) {
        self.emit(
            now,
            EventBody::State {
                from: t.from,
                to: t.to,
            },
        );
        if t.to == MachineState::Off {
            self.end_session(now, EndReason::PowerOff);
        }
        self.persist(now);
    }

    fn end_session(&mut self, now: u64, reason: EndReason) {
        if let Some(SessionEvent { at, body }) = self.session.end(now, reason) {
            self.emit(at, body);
            self.set_relay(now, false);
            self.persist(now);
        }
    }

    fn set_relay(&mut self, now: u64, on: bool) {
        let r = if on {
            self.relay.set_high()
        } else {
            self.relay.set_low()
        };
        if r.is_err() {
            self.fault(now, FaultCode::Other, &["relay pin error"]);
        }
    }

    fn telemetry_tick(&mut self, now: u64) {
        let (Some(due), Some(cfg)) = (self.telemetry_due, self.config.as_ref()) else {
            return;
        };
        if now < due {
            return;
        }
        let period = u64::from(cfg.telemetry_s.max(1)) * 1000;
        self.telemetry_due = Some(now + period);
        let r = self.meter.last_reading();
        self.telemetry = Some(Telemetry {
            v: SCHEMA_VERSION,
            boot: self.boot,
            uptime_ms: now,
            ts: None,
            state: self.meter.state(),
            current_ma: r.map(|r| round_u32(r.current_a * 1000.0)),
            power_w: r.map(|r| round_u32(r.power_w)),
        });
    }

    fn persist(&mut self, now: u64) {
        self.last_persist_ms = now;
        let mut s = self.lifetime;
        s.journal_dropped = self.journal.state().journal_dropped;
        if s == self.journal.state() {
            return;
        }
        if self.journal.save_state(&mut self.flash, s).is_err() {
            // Counters stay in RAM and are saved at the next chance; they never go back.
        }
    }

    fn counters_body(&self) -> EventBody {
        let l = self.lifetime();
        EventBody::Counters {
            on_s: l.on_s,
            busy_s: l.busy_s,
            energy_wh: l.energy_wh,
            journal_dropped: l.journal_dropped,
        }
    }

    /// Journals a `fault` whose detail is `parts` joined (ASCII, cut at 64 bytes): pieces of text
    /// rather than `format_args!`, so that the image links no formatting code.
    fn fault(&mut self, now: u64, code: FaultCode, parts: &[&str]) {
        let mut detail = Text::<SHORT_TEXT>::new();
        for part in parts {
            push_ascii(&mut detail, part);
        }
        self.emit(now, EventBody::Fault { code, detail });
    }

    /// A `fault` for a refused payload: `prefix`, then the field and the problem.
    fn refused(&mut self, now: u64, code: FaultCode, prefix: &str, e: &DecodeError) {
        let (field, problem) = e.field_and_problem();
        let separator = if field.is_empty() { "" } else { " " };
        self.fault(now, code, &[prefix, field, separator, problem]);
    }

    /// Encodes and journals an event; returns its seq (even when the full-journal policy dropped
    /// it: the seq is used, and the gap is what `journal_dropped` explains).
    fn emit(&mut self, now: u64, body: EventBody) -> Option<u32> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = EventKey {
            boot: self.boot,
            seq,
        };
        let class = EventClass::of(&body);
        let ev = Event {
            v: SCHEMA_VERSION,
            box_id: None,
            boot: self.boot,
            seq,
            uptime_ms: now,
            sent_uptime_ms: now,
            ts: None,
            event: body,
        };
        let mut buf = [0u8; MAX_EVENT_LEN];
        let len = encode(&ev, &mut buf).ok()?;
        self.evict_for_room();
        match self
            .journal
            .append(&mut self.flash, key, class, &buf[..len])
        {
            Ok(_) => Some(seq),
            // Storage failure: the event could not be kept. The session still runs (a member is
            // never blocked), and its id is still this seq.
            Err(_) => Some(seq),
        }
    }
}

impl<S: NorFlash, R: OutputPin, const CAP: usize> Device<S, R, CAP> {
    /// A full journal with confirmations on first forgets the oldest event that the broker
    /// acknowledged and the collector did not confirm yet (most likely in the ledger already),
    /// before the overflow policy drops anything never sent. Counted in
    /// [`Device::evicted_unconfirmed`].
    fn evict_for_room(&mut self) {
        if !self.confirm || self.journal.len() < CAP {
            return;
        }
        let Some(oldest) = self.journal.entries().first().map(|e| e.key) else {
            return;
        };
        if Some(oldest) <= self.pubacked && self.journal.ack(&mut self.flash, oldest).is_ok() {
            self.evicted = self.evicted.saturating_add(1);
        }
    }
}

/// Appends ASCII only (other characters become `?`), truncating at the capacity.
fn push_ascii<const N: usize>(out: &mut heapless::String<N>, s: &str) {
    for c in s.chars() {
        let c = if c.is_ascii() && !c.is_ascii_control() {
            c
        } else {
            '?'
        };
        if out.push(c).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
