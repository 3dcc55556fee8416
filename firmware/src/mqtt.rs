//! A sans-IO MQTT 3.1.1 client for the device: bytes in, bytes out, `now` passed in.
//!
//! The [`Client`] does not own a socket. The board's shell moves bytes between it and whatever
//! carries them (a TCP socket, the UART of a Wi-Fi/Ethernet module in transparent mode):
//!
//! ```text
//!   loop {
//!       match client.poll(now, &mut device) {          // timers, keep-alive, next publish
//!           Some(Request::Open)  => { open the link;  client.opened(now, &mut device) }
//!           Some(Request::Close) => { close the link; client.closed(now, &mut device) }
//!           None => {}
//!       }
//!       link.write_all(client.transmit()); client.transmitted(n);
//!       if bytes arrived { client.received(now, &bytes, &mut device) }
//!       if the link dropped { client.closed(now, &mut device) }
//!   }
//! ```
//!
//! [`shell::service`] is that loop body over an embedded-io link, used by the MCU binary and by
//! the host integration test.
//!
//! What it does, per `docs/PROTOCOL.md`:
//! - CONNECT with the client id `fm-{site}-{machine}`, the keep-alive, the clean-session choice, and
//!   the last will = [`Device::offline`] (QoS 1, retained) on `status`;
//! - on CONNACK: the birth [`Device::birth`] (QoS 1, retained) on `status`, then SUBSCRIBE to the
//!   machine's `config` and `cmd` (QoS 1), and with confirmations on ([`Device::set_confirmations`])
//!   to its `ack` (QoS 0), whose messages go to [`Device::on_confirm`];
//! - events from [`Device::next_to_send`] as QoS 1 PUBLISH, **one in flight**, and
//!   [`Device::on_puback`] when its PUBACK arrives (which removes the event, or with
//!   confirmations only lets the next one go); telemetry as QoS 0;
//! - incoming PUBLISH on `config` / `cmd` go to [`Device::on_config`] / [`Device::on_command`],
//!   then (QoS 1) the PUBACK is sent: the device has applied and stored the config before the
//!   broker forgets it;
//! - PINGREQ when nothing was sent for 3/4 of the keep-alive; a PINGRESP or PUBACK missing for
//!   [`Settings::ack_timeout_ms`] means the link is dead (a UART module may not report it);
//! - after any failure, [`Device::on_disconnect`] (the journal resends from its oldest
//!   unacknowledged event, in order) and a reconnect after an exponential backoff
//!   (`backoff_min_ms`, doubling to `backoff_max_ms`, reset by an accepted CONNACK).
//!
//! `clean_session` defaults to true: this device has no clock, so it could not tell a command that
//! waited hours in a broker queue from a fresh one; the config it needs is retained anyway.

use embedded_hal::digital::OutputPin;
use embedded_storage::nor_flash::NorFlash;
use fabmeter_protocol::{Channel, Id, Topic, MAX_PAYLOAD};

use crate::device::Device;
use crate::journal::EventKey;

pub mod packet;
pub mod shell;

use packet::{Malformed, Packet, Will};

/// Default transmit buffer: one largest PUBLISH (1024-byte payload, topic, header) plus acks.
pub const TX_BUF: usize = MAX_PAYLOAD + 128;
/// Default receive buffer: one largest `config` PUBLISH (4096-byte payload, topic, header).
pub const RX_BUF: usize = fabmeter_protocol::MAX_CONFIG_PAYLOAD + 128;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The site id.
    pub site: Id,
    /// The machine id.
    pub machine: Id,
    /// MQTT keep-alive in seconds (the broker drops the connection after 1.5 times this).
    pub keep_alive_s: u16,
    /// Ask the broker for a clean session at each connect.
    pub clean_session: bool,
    /// First reconnect delay.
    pub backoff_min_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// How long a CONNACK, PUBACK or PINGRESP may take before the link is declared dead.
    pub ack_timeout_ms: u64,
}

impl Settings {
    /// Defaults: keep-alive 30 s, clean session, backoff 1 s to 60 s, answers within 10 s.
    pub fn new(site: Id, machine: Id) -> Self {
        Settings {
            site,
            machine,
            keep_alive_s: 30,
            clean_session: true,
            backoff_min_ms: 1000,
            backoff_max_ms: 60_000,
            ack_timeout_ms: 10_000,
        }
    }
}

/// What the client asks of the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Open the link, then call [`Client::opened`] (or [`Client::closed`] if it failed).
    Open,
    /// Close the link, then call [`Client::closed`].
    Close,
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No link; the next attempt is at `retry_at`.
    Down {
        /// Uptime of the next attempt.
        retry_at: u64,
    },
    /// [`Request::Open`] was given; waiting for [`Client::opened`].
    Opening,
    /// CONNECT sent at `since`; waiting for CONNACK.
    Connecting {
        /// When CONNECT was queued.
        since: u64,
    },
    /// CONNACK accepted.
    Connected,
    /// [`Request::Close`] was given; waiting for [`Client::closed`].
    Closing,
}

/// Why the client gave up a connection (the last one is kept in [`Client::last_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The shell reported the link closed.
    LinkClosed,
    /// The broker refused the CONNECT with this return code.
    Refused(u8),
    /// No CONNACK, PUBACK or PINGRESP in time.
    Timeout,
    /// The broker sent bytes that are not MQTT 3.1.1.
    Malformed(Malformed),
    /// A received packet does not fit the receive buffer.
    TooLarge,
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Accepted CONNACKs.
    pub connects: u32,
    /// Events published (resends included).
    pub events_sent: u32,
    /// PUBACKs of events.
    pub events_acked: u32,
    /// Telemetry messages published.
    pub telemetry_sent: u32,
    /// Messages received on `config` or `cmd`.
    pub received: u32,
}

/// The MQTT client state machine. `TX` and `RX` are the buffer sizes in bytes.
pub struct Client<const TX: usize = TX_BUF, const RX: usize = RX_BUF> {
    settings: Settings,
    client_id: heapless::String<72>,
    state: State,
    tx: [u8; TX],
    tx_len: usize,
    rx: [u8; RX],
    rx_len: usize,
    /// Bytes of an oversized incoming packet still to discard.
    skip: usize,
    next_pid: u16,
    /// The event in flight: its packet id, its key, when it was sent.
    inflight: Option<(u16, EventKey, u64)>,
    last_tx: u64,
    ping_since: Option<u64>,
    backoff_ms: u64,
    last_failure: Option<Failure>,
    stats: Stats,
}

impl<const TX: usize, const RX: usize> Client<TX, RX> {
    /// A client that will connect at the first [`Client::poll`].
    pub fn new(settings: Settings) -> Self {
        let mut client_id = heapless::String::new();
        let _ = client_id.push_str("fm-");
        let _ = client_id.push_str(settings.site.as_str());
        let _ = client_id.push('-');
        let _ = client_id.push_str(settings.machine.as_str());
        let backoff_ms = settings.backoff_min_ms;
        Client {
            settings,
            client_id,
            state: State::Down { retry_at: 0 },
            tx: [0; TX],
            tx_len: 0,
            rx: [0; RX],
            rx_len: 0,
            skip: 0,
            next_pid: 1,
            inflight: None,
            last_tx: 0,
            ping_since: None,
            backoff_ms,
            last_failure: None,
            stats: Stats::default(),
        }
    }

    /// Where the connection stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a CONNACK accepted the current connection.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Why the last connection ended or failed.
    pub fn last_failure(&self) -> Option<Failure> {
        self.last_failure
    }

    /// The delay before the next reconnect attempt after a failure.
    pub fn backoff_ms(&self) -> u64 {
        self.backoff_ms
    }

    /// The client id, `fm-{site}-{machine}`.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The topic of one of this machine's channels.
    pub fn topic(&self, channel: Channel) -> fabmeter_protocol::topic::TopicBuf {
        Topic::new(
            self.settings.site.clone(),
            self.settings.machine.clone(),
            channel,
        )
        .to_string_buf()
    }

    /// Bytes to send on the link now.
    pub fn transmit(&self) -> &[u8] {
        &self.tx[..self.tx_len]
    }

    /// The shell sent the first `n` bytes of [`Client::transmit`].
    pub fn transmitted(&mut self, n: usize) {
        let n = n.min(self.tx_len);
        self.tx.copy_within(n..self.tx_len, 0);
        self.tx_len -= n;
    }

    /// Timers and output: call often (every few milliseconds to every second). Queues the next
    /// publish when the transmit buffer is empty, and may ask the shell to open or close the link.
    pub fn poll<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        now: u64,
        dev: &mut Device<S, R, CAP>,
    ) -> Option<Request> {
        match self.state {
            State::Down { retry_at } if now >= retry_at => {
                self.state = State::Opening;
                Some(Request::Open)
            }
            State::Connecting { since }
                if now.saturating_sub(since) >= self.settings.ack_timeout_ms =>
            {
                self.fail(Failure::Timeout)
            }
            State::Connected => {
                let late = |since: u64| now.saturating_sub(since) >= self.settings.ack_timeout_ms;
                if self.ping_since.is_some_and(late)
                    || self.inflight.is_some_and(|(_, _, at)| late(at))
                {
                    return self.fail(Failure::Timeout);
                }
                self.publish_next(now, dev);
                let keep_alive = u64::from(self.settings.keep_alive_s) * 1000;
                if keep_alive > 0
                    && self.ping_since.is_none()
                    && now.saturating_sub(self.last_tx) >= keep_alive * 3 / 4
                    && self.queue(now, packet::pingreq).is_ok()
                {
                    self.ping_since = Some(now);
                }
                None
            }
            _ => None,
        }
    }

    /// The link is open: queues CONNECT with the last will.
    pub fn opened<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        now: u64,
        dev: &mut Device<S, R, CAP>,
    ) {
        self.tx_len = 0;
        self.rx_len = 0;
        self.skip = 0;
        let topic = self.topic(Channel::Status);
        let mut will = [0u8; 128];
        let will_len = dev.offline(&mut will).unwrap_or(0);
        let id = self.client_id.clone();
        let (keep_alive, clean) = (self.settings.keep_alive_s, self.settings.clean_session);
        let queued = self.queue(now, |b| {
            packet::connect(
                b,
                &id,
                keep_alive,
                clean,
                Some(Will {
                    topic: &topic,
                    payload: &will[..will_len],
                    qos: 1,
                    retain: true,
                }),
            )
        });
        self.state = if queued.is_ok() {
            State::Connecting { since: now }
        } else {
            State::Closing
        };
    }

    /// The link closed (or failed to open): the journal will resend, and the next attempt waits
    /// for the backoff.
    pub fn closed<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        now: u64,
        dev: &mut Device<S, R, CAP>,
    ) {
        if self.state != State::Closing {
            self.last_failure = Some(Failure::LinkClosed);
        }
        dev.on_disconnect();
        self.inflight = None;
        self.ping_since = None;
        self.tx_len = 0;
        self.rx_len = 0;
        self.skip = 0;
        self.state = State::Down {
            retry_at: now + self.backoff_ms,
        };
        self.backoff_ms = (self.backoff_ms * 2).min(self.settings.backoff_max_ms);
    }

    /// Clean shutdown: queues the offline status (retained) and DISCONNECT. The shell sends
    /// [`Client::transmit`] and closes the link; the broker then does not publish the will.
    pub fn disconnect<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        now: u64,
        dev: &mut Device<S, R, CAP>,
    ) {
        if self.state != State::Connected {
            return;
        }
        let mut payload = [0u8; 128];
        if let Ok(n) = dev.offline(&mut payload) {
            let topic = self.topic(Channel::Status);
            let pid = self.pid();
            let _ = self.queue(now, |b| {
                packet::publish(b, &topic, &payload[..n], 1, true, pid)
            });
        }
        let _ = self.queue(now, packet::disconnect);
        self.state = State::Closing;
    }

    /// Bytes arrived from the link.
    pub fn received<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        now: u64,
        mut bytes: &[u8],
        dev: &mut Device<S, R, CAP>,
    ) -> Option<Request> {
        if !matches!(self.state, State::Connecting { .. } | State::Connected) {
            return None;
        }
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = bytes.len().min(RX - self.rx_len);
            self.rx[self.rx_len..self.rx_len + n].copy_from_slice(&bytes[..n]);
            self.rx_len += n;
            bytes = &bytes[n..];
            if let Some(r) = self.process(now, dev) {
                return Some(r);
            }
        }
        None
    }

    /// Handles every complete packet in the receive buffer.
    fn process<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        now: u64,
        dev: &mut Device<S, R, CAP>,
    ) -> Option<Request> {
        loop {
            let (first, hdr, len) = match packet::header(&self.rx[..self.rx_len]) {
                Ok(Some(h)) => h,
                Ok(None) => return None,
                Err(e) => return self.fail(Failure::Malformed(e)),
            };
            if hdr + len > RX {
                // Too large for us (a config over the limit): discard it whole.
                if first >> 4 == packet::kind::PUBLISH {
                    self.last_failure = Some(Failure::TooLarge);
                    self.skip = hdr + len - self.rx_len;
                    self.rx_len = 0;
                    return None;
                }
                return self.fail(Failure::TooLarge);
            }
            let (packet, used) = match packet::parse(&self.rx[..self.rx_len]) {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(e) => return self.fail(Failure::Malformed(e)),
            };
            // Copy out what outlives the buffer shift.
            let mut ack = None;
            match packet {
                Packet::Connack { code: 0, .. } => {
                    self.state = State::Connected;
                    self.backoff_ms = self.settings.backoff_min_ms;
                    self.stats.connects += 1;
                    self.on_connack(now, dev);
                }
                Packet::Connack { code, .. } => {
                    self.rx_len = 0;
                    return self.fail(Failure::Refused(code));
                }
                Packet::Publish {
                    topic,
                    payload,
                    qos,
                    pid,
                    ..
                } => {
                    let channel = Topic::parse(topic).ok().and_then(|t| {
                        (t.site == self.settings.site && t.machine == self.settings.machine)
                            .then_some(t.channel)
                    });
                    match channel {
                        Some(Channel::Config) => {
                            self.stats.received += 1;
                            dev.on_config(now, payload);
                        }
                        Some(Channel::Cmd) => {
                            self.stats.received += 1;
                            dev.on_command(now, payload);
                        }
                        Some(Channel::Ack) => {
                            self.stats.received += 1;
                            // A refused confirmation removes nothing: the events are resent.
                            let _ = dev.on_confirm(now, payload);
                        }
                        _ => {}
                    }
                    if qos > 0 {
                        ack = pid;
                    }
                }
                Packet::Puback(pid) => {
                    if let Some((p, key, _)) = self.inflight {
                        if p == pid {
                            self.inflight = None;
                            self.stats.events_acked += 1;
                            dev.on_puback(key);
                        }
                    }
                }
                Packet::Pingresp => self.ping_since = None,
                Packet::Suback { .. } | Packet::Other(_) => {}
            }
            self.rx.copy_within(used..self.rx_len, 0);
            self.rx_len -= used;
            if let Some(pid) = ack {
                // QoS 2 is never subscribed to; a QoS 1 ack must not be lost, so if the buffer
                // is full the link is reset and the broker redelivers.
                if self.queue(now, |b| packet::puback(b, pid)).is_err() {
                    return self.fail(Failure::TooLarge);
                }
            }
        }
    }

    fn on_connack<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        now: u64,
        dev: &mut Device<S, R, CAP>,
    ) {
        let mut payload = [0u8; 512];
        if let Ok(n) = dev.birth(now, &mut payload) {
            let topic = self.topic(Channel::Status);
            let pid = self.pid();
            let _ = self.queue(now, |b| {
                packet::publish(b, &topic, &payload[..n], 1, true, pid)
            });
        }
        let config = self.topic(Channel::Config);
        let cmd = self.topic(Channel::Cmd);
        let pid = self.pid();
        let _ = self.queue(now, |b| {
            packet::subscribe(b, pid, &[(&config, 1), (&cmd, 1)])
        });
        if dev.confirmations() {
            let ack = self.topic(Channel::Ack);
            let pid = self.pid();
            let _ = self.queue(now, |b| packet::subscribe(b, pid, &[(&ack, 0)]));
        }
    }

    /// Queues the next telemetry or event when nothing else waits to be sent.
    fn publish_next<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        now: u64,
        dev: &mut Device<S, R, CAP>,
    ) {
        if self.tx_len > 0 {
            return;
        }
        let mut payload = [0u8; MAX_PAYLOAD];
        let Some(out) = dev.next_to_send(now, &mut payload) else {
            return;
        };
        let topic = self.topic(out.channel);
        let qos = out.channel.qos();
        let pid = if qos > 0 { self.pid() } else { 0 };
        let retain = out.channel.retained();
        let queued = self.queue(now, |b| {
            packet::publish(b, &topic, &payload[..out.len], qos, retain, pid)
        });
        match (queued, out.key) {
            (Ok(()), Some(key)) => {
                self.inflight = Some((pid, key, now));
                self.stats.events_sent += 1;
            }
            (Ok(()), None) => self.stats.telemetry_sent += 1,
            // Cannot happen with TX_BUF: the event stays in the journal; let it go again.
            (Err(_), Some(_)) => dev.on_disconnect(),
            (Err(_), None) => {}
        }
    }

    fn pid(&mut self) -> u16 {
        let p = self.next_pid;
        self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
        p
    }

    fn queue(
        &mut self,
        now: u64,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, packet::TooLong>,
    ) -> Result<(), packet::TooLong> {
        let n = encode(&mut self.tx[self.tx_len..])?;
        self.tx_len += n;
        self.last_tx = now;
        Ok(())
    }

    fn fail(&mut self, why: Failure) -> Option<Request> {
        self.last_failure = Some(why);
        self.state = State::Closing;
        Some(Request::Close)
    }
}

#[cfg(test)]
mod tests;
