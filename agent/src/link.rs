//! The device path of `docs/PROTOCOL.md` over rumqttc, for one firmware [`Device`]: shared by the
//! workshop simulator and the agent runtime.
//!
//! Each connection is one `AsyncClient` + `EventLoop` pair driven by its own task, which forwards
//! what matters over a channel; a failed connection is dropped whole and a new pair is made after a
//! backoff with jitter, so no request queued for a dead connection can leak into the next one.
//! PUBACKs are mapped to journal keys through the order of `Outgoing::Publish(pkid)`
//! notifications, which rumqttc emits in request order. The device keeps one event in flight, so
//! order holds; after a reconnect the journal resends from its oldest unacknowledged event.
//!
//! On every connection: the last will (`offline`, retained) is set from the device, the birth
//! (`online`, retained) is published after CONNACK, and `config` and `cmd` are subscribed again
//! (clean session).

use std::collections::VecDeque;
use std::time::Duration;

use embedded_hal::digital::OutputPin;
use embedded_storage::nor_flash::NorFlash;
use fabmeter_firmware::device::Device;
use fabmeter_firmware::journal::EventKey;
use fabmeter_protocol::{Channel, MAX_CONFIG_PAYLOAD};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::sim::rng::Rng;

/// Requests allowed in the client's queue before the device stops publishing and waits.
const QUEUE_LIMIT: usize = 8;
/// First reconnect delay (doubled at each failure, up to the link's maximum; jitter adds up to
/// half of it).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// What a connection task reports.
pub enum Net {
    /// The broker accepted the connection.
    ConnAck,
    /// A publish request went out with this packet id.
    Sent(u16),
    /// The broker acknowledged this packet id.
    PubAck(u16),
    /// A message on a subscribed topic.
    Message(String, Vec<u8>),
    /// The connection failed or ended.
    Down(String),
}

/// A connection report tagged with its connection's generation.
pub type NetMsg = (u32, Net);

/// The topics of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `…/status` (birth, last will: retained).
    pub status: String,
    /// `…/event` (QoS 1).
    pub event: String,
    /// `…/telemetry` (QoS 0).
    pub telemetry: String,
    /// `…/config` (subscribed).
    pub config: String,
    /// `…/cmd` (subscribed).
    pub cmd: String,
}

impl Topics {
    /// The topics of machine `machine` of site `site`.
    pub fn new(site: &str, machine: &str) -> Topics {
        let base = format!("fabmeter/v1/{site}/{machine}/");
        Topics {
            status: format!("{base}status"),
            event: format!("{base}event"),
            telemetry: format!("{base}telemetry"),
            config: format!("{base}config"),
            cmd: format!("{base}cmd"),
        }
    }
}

/// What a connection report meant for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// Nothing the host needs to know.
    Nothing,
    /// Connected (CONNACK): birth published, topics subscribed.
    Connected,
    /// The broker acknowledged this event; the journal dropped it.
    Acked(EventKey),
    /// A config payload was handed to the device.
    Config,
    /// A command was handed to the device (see `Device::take_action`).
    Command,
    /// The connection failed; a reconnect is scheduled.
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

/// The MQTT side of one device.
pub struct Link {
    opts: MqttOptions,
    topics: Topics,
    conn: Option<Conn>,
    gen: u32,
    tx: mpsc::UnboundedSender<NetMsg>,
    rx: mpsc::UnboundedReceiver<NetMsg>,
    reconnect_at: Option<Instant>,
    backoff: Duration,
    max_backoff: Duration,
    jitter: Rng,
    buf: Vec<u8>,
}

impl Link {
    /// A link that connects with `opts` (host, port, client id, keep-alive, transport and
    /// credentials; the last will is set at each connection) on `topics`, with reconnect delays up
    /// to `max_backoff` (plus jitter drawn from `jitter_seed`).
    pub fn new(opts: MqttOptions, topics: Topics, max_backoff: Duration, jitter_seed: u64) -> Link {
        let (tx, rx) = mpsc::unbounded_channel();
        Link {
            opts,
            topics,
            conn: None,
            gen: 0,
            tx,
            rx,
            reconnect_at: None,
            backoff: FIRST_BACKOFF,
            max_backoff,
            jitter: Rng::new(jitter_seed),
            buf: vec![0u8; MAX_CONFIG_PAYLOAD + 64],
        }
    }

    /// The device's topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// When the next connection attempt is due, if one is scheduled.
    pub fn reconnect_at(&self) -> Option<Instant> {
        self.reconnect_at
    }

    /// Whether a connection is up (CONNACK received).
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.acked)
    }

    /// The next connection report.
    pub async fn recv(&mut self) -> Option<NetMsg> {
        self.rx.recv().await
    }

    /// A connection report if one is waiting.
    pub fn try_recv(&mut self) -> Option<NetMsg> {
        self.rx.try_recv().ok()
    }

    /// Opens a new connection (dropping any current one), with the device's offline status as the
    /// last will.
    pub fn connect<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        dev: &Device<S, R, CAP>,
    ) {
        self.reconnect_at = None;
        if let Some(old) = self.conn.take() {
            old.task.abort();
        }
        self.gen += 1;
        let mut opts = self.opts.clone();
        opts.set_clean_session(true);
        opts.set_max_packet_size(MAX_CONFIG_PAYLOAD + 1024, MAX_CONFIG_PAYLOAD + 1024);
        let offline = match dev.offline(&mut self.buf) {
            Ok(n) => self.buf[..n].to_vec(),
            Err(_) => Vec::new(),
        };
        opts.set_last_will(LastWill::new(
            self.topics.status.clone(),
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

    /// Drops the connection at once, without DISCONNECT and without reconnecting (the device lost
    /// power: the broker publishes the last will).
    pub fn cut(&mut self) {
        if let Some(c) = self.conn.take() {
            c.task.abort();
        }
        self.reconnect_at = None;
    }

    /// Handles one connection report at device time `now`.
    pub fn on_net<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        gen: u32,
        net: Net,
        now: u64,
        dev: &mut Device<S, R, CAP>,
    ) -> Happened {
        let Some(conn) = self.conn.as_mut().filter(|c| c.gen == gen) else {
            return Happened::Nothing;
        };
        match net {
            Net::ConnAck => {
                conn.acked = true;
                self.backoff = FIRST_BACKOFF;
                let client = conn.client.clone();
                let ok = client
                    .try_subscribe(self.topics.config.clone(), QoS::AtLeastOnce)
                    .and_then(|_| client.try_subscribe(self.topics.cmd.clone(), QoS::AtLeastOnce));
                let birth = dev
                    .birth(now, &mut self.buf)
                    .ok()
                    .map(|n| self.buf[..n].to_vec());
                let ok = ok.and_then(|_| match birth {
                    Some(b) => {
                        client.try_publish(self.topics.status.clone(), QoS::AtLeastOnce, true, b)
                    }
                    None => Ok(()),
                });
                conn.queued.push_back(Queued::Other);
                if ok.is_err() {
                    let why = "request queue refused the birth".to_string();
                    self.down(why.clone(), dev);
                    return Happened::Down(why);
                }
                Happened::Connected
            }
            Net::Sent(pkid) => {
                match conn.queued.pop_front() {
                    Some(Queued::Event(key)) => conn.inflight = Some((pkid, key)),
                    Some(Queued::Offline) => conn.offline_pkid = Some(pkid),
                    Some(Queued::Other) | None => {}
                }
                Happened::Nothing
            }
            Net::PubAck(pkid) => {
                if conn.offline_pkid == Some(pkid) {
                    conn.offline_acked = true;
                }
                match conn.inflight {
                    Some((p, key)) if p == pkid => {
                        conn.inflight = None;
                        dev.on_puback(key);
                        Happened::Acked(key)
                    }
                    _ => Happened::Nothing,
                }
            }
            Net::Message(topic, payload) => {
                if topic == self.topics.config {
                    dev.on_config(now, &payload);
                    Happened::Config
                } else if topic == self.topics.cmd {
                    dev.on_command(now, &payload);
                    Happened::Command
                } else {
                    Happened::Nothing
                }
            }
            Net::Down(e) => {
                self.down(e.clone(), dev);
                Happened::Down(e)
            }
        }
    }

    /// The connection failed: drop it, let the journal resend from its oldest event, reconnect
    /// after a backoff with jitter.
    pub fn down<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        why: String,
        dev: &mut Device<S, R, CAP>,
    ) {
        tracing::debug!(topic = %self.topics.status, "connection down: {why}");
        if let Some(c) = self.conn.take() {
            c.task.abort();
        }
        dev.on_disconnect();
        let jitter = self.jitter.range(0, self.backoff.as_millis() as u64 / 2);
        self.reconnect_at = Some(Instant::now() + self.backoff + Duration::from_millis(jitter));
        self.backoff = (self.backoff * 2).min(self.max_backoff);
    }

    /// Publishes what the device has to send, as far as the connection allows; returns the number
    /// of events published.
    pub fn pump<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        now: u64,
        dev: &mut Device<S, R, CAP>,
    ) -> u64 {
        let Some(conn) = self.conn.as_mut().filter(|c| c.acked) else {
            return 0;
        };
        let mut failed = false;
        let mut events = 0;
        while conn.queued.len() < QUEUE_LIMIT {
            let Some(out) = dev.next_to_send(now, &mut self.buf) else {
                break;
            };
            let payload = self.buf[..out.len].to_vec();
            let (topic, qos) = match out.channel {
                Channel::Event => (&self.topics.event, QoS::AtLeastOnce),
                _ => (&self.topics.telemetry, QoS::AtMostOnce),
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
                events += 1;
            }
        }
        if failed {
            self.down("request queue full".into(), dev);
        }
        events
    }

    /// Sends the journal until it is empty or `deadline` passes, reconnecting as needed; each
    /// report's meaning goes to `seen`. Returns the number of events published.
    pub async fn drain<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        dev: &mut Device<S, R, CAP>,
        now: u64,
        deadline: Instant,
        seen: &mut (dyn FnMut(Happened) + Send),
    ) -> u64 {
        let mut published = 0;
        while Instant::now() < deadline && !dev.journal().is_empty() {
            published += self.pump(now, dev);
            let reconnect_at = self.reconnect_at;
            tokio::select! {
                msg = self.rx.recv() => if let Some((gen, net)) = msg { seen(self.on_net(gen, net, now, dev)) },
                _ = tokio::time::sleep_until(deadline) => {}
                _ = sleep_opt(reconnect_at) => self.connect(dev),
            }
        }
        published
    }

    /// Clean end of the connection: the offline status (retained), then DISCONNECT. Waits at most
    /// a few seconds; the connection is closed in any case.
    pub async fn close<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        dev: &mut Device<S, R, CAP>,
        now: u64,
    ) {
        let offline = dev
            .offline(&mut self.buf)
            .ok()
            .map(|n| self.buf[..n].to_vec());
        if let (Some(conn), Some(payload)) = (self.conn.as_mut().filter(|c| c.acked), offline) {
            if conn
                .client
                .try_publish(self.topics.status.clone(), QoS::AtLeastOnce, true, payload)
                .is_ok()
            {
                conn.queued.push_back(Queued::Offline);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if self.conn.as_ref().is_none_or(|c| c.offline_acked) {
                        break;
                    }
                    tokio::select! {
                        msg = self.rx.recv() => if let Some((gen, net)) = msg { self.on_net(gen, net, now, dev); },
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
        self.cut();
    }
}

/// Sleeps until `at`, forever if `None`.
pub async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Drives one connection, forwarding what the device needs; ends at the first error.
async fn drive(gen: u32, eventloop: &mut EventLoop, tx: mpsc::UnboundedSender<NetMsg>) {
    loop {
        let net = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Net::ConnAck,
            Ok(Event::Incoming(Packet::PubAck(p))) => Net::PubAck(p.pkid),
            Ok(Event::Incoming(Packet::Publish(p))) => Net::Message(p.topic, p.payload.to_vec()),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Net::Sent(pkid),
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
