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
//!
//! A link may instead ride a [`Mux`]: one MQTT connection shared by several devices, as a gateway
//! would (the simulator's `--machines-per-connection`, to host more machines than the process may
//! open sockets). Everything above holds per device (birth, subscriptions, one event in flight,
//! PUBACK to journal key, in-order resend after the shared connection drops) except the last will:
//! a connection has only one, so devices behind a mux set none, and their `offline` status is
//! published only at a clean stop.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// `…/ack` (subscribed when the device keeps events until the collector confirms them).
    pub ack: String,
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
            ack: format!("{base}ack"),
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
    /// The broker acknowledged this event; the journal dropped it (or, with confirmations, the
    /// next event may go).
    Acked(EventKey),
    /// A confirmation from the collector removed this many events from the journal.
    Confirmed(usize),
    /// A config payload was handed to the device.
    Config,
    /// A command was handed to the device (see `Device::take_action`).
    Command,
    /// The connection failed; a reconnect is scheduled.
    Down(String),
}

/// The connection under a link: its own, or a slot of a shared one.
enum Pipe {
    /// The link's own connection and the task that drives it.
    Own {
        client: AsyncClient,
        task: JoinHandle<()>,
    },
    /// Slot `slot` of a shared connection, registered with the link's generation.
    Shared { mux: Arc<Mux>, slot: usize },
}

impl Pipe {
    /// Queues a publish request; `Err` if the connection's request queue refused it.
    fn publish(
        &self,
        gen: u32,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), ()> {
        match self {
            Pipe::Own { client, .. } => client
                .try_publish(topic, qos, retain, payload)
                .map_err(|_| ()),
            Pipe::Shared { mux, slot } => mux.publish(*slot, gen, topic, qos, retain, payload),
        }
    }

    /// Queues a subscription (QoS 1).
    fn subscribe(&self, gen: u32, topic: &str) -> Result<(), ()> {
        match self {
            Pipe::Own { client, .. } => client
                .try_subscribe(topic, QoS::AtLeastOnce)
                .map_err(|_| ()),
            Pipe::Shared { mux, slot } => mux.subscribe(*slot, gen, topic),
        }
    }

    /// Queues a DISCONNECT (own connection only: a shared one stays up for the other devices).
    fn disconnect(&self) {
        if let Pipe::Own { client, .. } = self {
            let _ = client.try_disconnect();
        }
    }

    /// Ends the link's use of the connection at once.
    fn abort(&self) {
        match self {
            Pipe::Own { task, .. } => task.abort(),
            Pipe::Shared { mux, slot } => mux.leave(*slot),
        }
    }
}

/// Where a link's connections come from.
enum Transport {
    /// A connection of its own per attempt, with these options.
    Own(Box<MqttOptions>),
    /// Slot `slot` of a shared connection.
    Shared(Arc<Mux>, usize),
}

struct Conn {
    gen: u32,
    pipe: Pipe,
    acked: bool,
    /// Publish requests not yet seen on the wire, in order.
    queued: VecDeque<Queued>,
    /// The event on the wire and its packet id.
    inflight: Option<(u16, EventKey)>,
    /// Packet id of the offline message at shutdown, once sent.
    offline_pkid: Option<u16>,
    offline_acked: bool,
}

impl Conn {
    fn new(gen: u32, pipe: Pipe) -> Conn {
        Conn {
            gen,
            pipe,
            acked: false,
            queued: VecDeque::new(),
            inflight: None,
            offline_pkid: None,
            offline_acked: false,
        }
    }
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
    transport: Transport,
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
        Link::with_transport(
            Transport::Own(Box::new(opts)),
            topics,
            max_backoff,
            jitter_seed,
        )
    }

    /// A link on slot `slot` of the shared connection `mux` (see [`Mux`]), on `topics`, with
    /// re-registration delays as for [`Link::new`] after the shared connection dropped.
    pub fn shared(
        mux: Arc<Mux>,
        slot: usize,
        topics: Topics,
        max_backoff: Duration,
        jitter_seed: u64,
    ) -> Link {
        Link::with_transport(
            Transport::Shared(mux, slot),
            topics,
            max_backoff,
            jitter_seed,
        )
    }

    fn with_transport(
        transport: Transport,
        topics: Topics,
        max_backoff: Duration,
        jitter_seed: u64,
    ) -> Link {
        let (tx, rx) = mpsc::unbounded_channel();
        Link {
            transport,
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
            old.pipe.abort();
        }
        self.gen += 1;
        let opts = match &self.transport {
            Transport::Own(opts) => opts,
            Transport::Shared(mux, slot) => {
                let pipe = Pipe::Shared {
                    mux: mux.clone(),
                    slot: *slot,
                };
                mux.join(
                    *slot,
                    self.gen,
                    self.tx.clone(),
                    [
                        Some(self.topics.config.clone()),
                        Some(self.topics.cmd.clone()),
                        // Confirmations only for a device that waits for them.
                        dev.confirmations().then(|| self.topics.ack.clone()),
                    ],
                );
                self.conn = Some(Conn::new(self.gen, pipe));
                return;
            }
        };
        let mut opts = MqttOptions::clone(opts);
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
        self.conn = Some(Conn::new(gen, Pipe::Own { client, task }));
    }

    /// Drops the connection at once, without DISCONNECT and without reconnecting (the device lost
    /// power: the broker publishes the last will).
    pub fn cut(&mut self) {
        if let Some(c) = self.conn.take() {
            c.pipe.abort();
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
                let ok = conn
                    .pipe
                    .subscribe(gen, &self.topics.config)
                    .and_then(|_| conn.pipe.subscribe(gen, &self.topics.cmd))
                    .and_then(|_| {
                        if dev.confirmations() {
                            conn.pipe.subscribe(gen, &self.topics.ack)
                        } else {
                            Ok(())
                        }
                    });
                let birth = dev
                    .birth(now, &mut self.buf)
                    .ok()
                    .map(|n| self.buf[..n].to_vec());
                let ok = ok.and_then(|_| match birth {
                    Some(b) => {
                        conn.pipe
                            .publish(gen, &self.topics.status, QoS::AtLeastOnce, true, b)
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
                } else if topic == self.topics.ack {
                    match dev.on_confirm(now, &payload) {
                        Ok(n) => Happened::Confirmed(n),
                        Err(e) => {
                            tracing::warn!(topic = %topic, "confirmation refused: {e}");
                            Happened::Nothing
                        }
                    }
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
            c.pipe.abort();
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
                .pipe
                .publish(conn.gen, topic, qos, false, payload)
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
                .pipe
                .publish(
                    conn.gen,
                    &self.topics.status,
                    QoS::AtLeastOnce,
                    true,
                    payload,
                )
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
                if let Some(c) = self
                    .conn
                    .as_ref()
                    .filter(|c| matches!(c.pipe, Pipe::Own { .. }))
                {
                    c.pipe.disconnect();
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

/// One MQTT connection shared by up to `slots` devices, each on its own [`Link`] (made with
/// [`Link::shared`]): what a gateway hosting several machines would do.
///
/// The mux owns the connection: it connects (clean session), reconnects after a backoff with
/// jitter when the connection fails (a new client and event loop each time), and routes what
/// comes back to the device it concerns: CONNACK to every device that joined, each
/// `Outgoing::Publish` to the device whose request it was (publish requests are recorded in the
/// order they enter the client's queue, under one lock, and rumqttc emits them in that order),
/// PUBACKs by packet id, messages by topic. When the connection fails every device is told, as
/// with a connection of its own, and joins again after its own backoff.
///
/// No last will is set: a connection has one, not one per device.
pub struct Mux {
    state: Arc<Mutex<MuxState>>,
    task: JoinHandle<()>,
}

/// A device joined to a mux, with the generation its link had when it joined.
struct Member {
    gen: u32,
    tx: mpsc::UnboundedSender<NetMsg>,
}

#[derive(Default)]
struct MuxState {
    /// The current connection's client, once made.
    client: Option<AsyncClient>,
    /// CONNACK received on the current connection.
    up: bool,
    /// `(slot, member generation)` of each publish request not yet on the wire, in order.
    order: VecDeque<(usize, u32)>,
    /// Packet ids on the wire → `(slot, member generation)`.
    pkids: HashMap<u16, (usize, u32)>,
    members: Vec<Option<Member>>,
    /// Subscribed topic → slot.
    topics: HashMap<String, usize>,
}

impl MuxState {
    /// Sends `net` to the member in `slot` if it is still the one of generation `gen`.
    fn send(&self, slot: usize, gen: u32, net: Net) {
        if let Some(Some(m)) = self.members.get(slot) {
            if m.gen == gen {
                let _ = m.tx.send((gen, net));
            }
        }
    }

    /// The client, if the connection is up and `slot` is joined with generation `gen`.
    fn client_for(&self, slot: usize, gen: u32) -> Option<&AsyncClient> {
        let joined = matches!(self.members.get(slot), Some(Some(m)) if m.gen == gen);
        self.client.as_ref().filter(|_| self.up && joined)
    }
}

fn lock(state: &Mutex<MuxState>) -> MutexGuard<'_, MuxState> {
    // A panic while the lock was held leaves plain data behind: keep going with it.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Mux {
    /// Starts a shared connection for `slots` devices with `opts` (host, port, client id,
    /// keep-alive, transport, credentials), first attempt after `start_after`, reconnect delays up
    /// to `max_backoff` plus jitter drawn from `jitter_seed`. Must be called within a Tokio runtime.
    pub fn start(
        opts: MqttOptions,
        slots: usize,
        start_after: Duration,
        max_backoff: Duration,
        jitter_seed: u64,
    ) -> Arc<Mux> {
        let state = Arc::new(Mutex::new(MuxState {
            members: (0..slots).map(|_| None).collect(),
            ..MuxState::default()
        }));
        let task = tokio::spawn(run_mux(
            state.clone(),
            opts,
            slots,
            start_after,
            max_backoff,
            jitter_seed,
        ));
        Arc::new(Mux { state, task })
    }

    fn join(
        &self,
        slot: usize,
        gen: u32,
        tx: mpsc::UnboundedSender<NetMsg>,
        topics: [Option<String>; 3],
    ) {
        let mut st = lock(&self.state);
        if slot >= st.members.len() {
            let _ = tx.send((gen, Net::Down(format!("no slot {slot} on this connection"))));
            return;
        }
        for t in topics.into_iter().flatten() {
            st.topics.insert(t, slot);
        }
        if st.up {
            let _ = tx.send((gen, Net::ConnAck));
        }
        st.members[slot] = Some(Member { gen, tx });
    }

    fn leave(&self, slot: usize) {
        if let Some(m) = lock(&self.state).members.get_mut(slot) {
            *m = None;
        }
    }

    fn publish(
        &self,
        slot: usize,
        gen: u32,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), ()> {
        let mut st = lock(&self.state);
        let client = st.client_for(slot, gen).ok_or(())?.clone();
        // Recorded and queued under the same lock, so `order` is the queue's order.
        st.order.push_back((slot, gen));
        if client.try_publish(topic, qos, retain, payload).is_err() {
            st.order.pop_back();
            return Err(());
        }
        Ok(())
    }

    fn subscribe(&self, slot: usize, gen: u32, topic: &str) -> Result<(), ()> {
        let st = lock(&self.state);
        let client = st.client_for(slot, gen).ok_or(())?;
        client
            .try_subscribe(topic, QoS::AtLeastOnce)
            .map_err(|_| ())
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects, routes, reconnects: the life of a [`Mux`].
async fn run_mux(
    state: Arc<Mutex<MuxState>>,
    opts: MqttOptions,
    slots: usize,
    start_after: Duration,
    max_backoff: Duration,
    jitter_seed: u64,
) {
    tokio::time::sleep(start_after).await;
    let mut backoff = FIRST_BACKOFF;
    let mut jitter = Rng::new(jitter_seed);
    let per_device = 2 * QUEUE_LIMIT + 4;
    loop {
        let mut o = opts.clone();
        o.set_clean_session(true);
        o.set_max_packet_size(MAX_CONFIG_PAYLOAD + 1024, MAX_CONFIG_PAYLOAD + 1024);
        // Each device keeps one event in flight, plus its birth or offline status.
        o.set_inflight(u16::try_from(slots * 4 + 10).unwrap_or(u16::MAX));
        let (client, mut eventloop) = AsyncClient::new(o, slots * per_device + 8);
        eventloop.network_options.set_connection_timeout(5);
        {
            let mut st = lock(&state);
            st.client = Some(client);
            st.up = false;
            st.order.clear();
            st.pkids.clear();
        }
        let why = loop {
            let event = match eventloop.poll().await {
                Ok(event) => event,
                Err(e) => break e.to_string(),
            };
            let mut st = lock(&state);
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    backoff = FIRST_BACKOFF;
                    st.up = true;
                    for m in st.members.iter().flatten() {
                        let _ = m.tx.send((m.gen, Net::ConnAck));
                    }
                }
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if let Some((slot, gen)) = st.order.pop_front() {
                        if pkid != 0 {
                            st.pkids.insert(pkid, (slot, gen));
                        }
                        st.send(slot, gen, Net::Sent(pkid));
                    }
                }
                Event::Incoming(Packet::PubAck(p)) => {
                    if let Some((slot, gen)) = st.pkids.remove(&p.pkid) {
                        st.send(slot, gen, Net::PubAck(p.pkid));
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    if let Some(&slot) = st.topics.get(&p.topic) {
                        if let Some(Some(m)) = st.members.get(slot) {
                            let _ =
                                m.tx.send((m.gen, Net::Message(p.topic, p.payload.to_vec())));
                        }
                    }
                }
                _ => {}
            }
        };
        {
            let mut st = lock(&state);
            st.client = None;
            st.up = false;
            for m in st.members.iter_mut() {
                if let Some(m) = m.take() {
                    let _ = m.tx.send((m.gen, Net::Down(why.clone())));
                }
            }
        }
        tracing::debug!("shared connection down: {why}");
        let extra = jitter.range(0, backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(extra)).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}
