//! From MQTT to the ledger, exactly once.
//!
//! - [`classify`] (pure) turns one received message into a ledger [`Record`] (an event, a status,
//!   or a dead letter with its reason), or a telemetry sample.
//! - The MQTT task ([`run_mqtt`]) keeps a persistent session (fixed client id, clean session off,
//!   manual acknowledgements), re-subscribes whenever the broker kept no session, and hands every
//!   publish to the writer.
//! - The writer ([`run_writer`], on its own thread) takes what is waiting (up to `batch_max`), commits
//!   it in one transaction, and only then acknowledges each QoS 1 message to the broker. If the
//!   commit fails, nothing is acknowledged: the batch is retried, and if the collector dies the
//!   broker redelivers, which the ledger turns into duplicates.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fabmeter_protocol::message::{Confirm, Event, Status, Telemetry};
use fabmeter_protocol::topic::{filter, Direction};
use fabmeter_protocol::{decode, Channel, Id, SigError, Topic, MAX_CONFIG_PAYLOAD};
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device_keys::{DeviceKeys, KeyMap};
use crate::ledger::{
    Committed, Ledger, LedgerError, MachineInfo, Outcome, PgConnection, PgLedger, Record, SiteBatch,
};
use crate::metrics::Metrics;
use crate::series;
use crate::timeseries::TimeSeriesHandle;

/// Unix milliseconds now, from the system clock (the only place the ingest reads it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the ingest knows about the site, to classify messages.
#[derive(Debug, Clone)]
pub struct SiteRules {
    /// The site this collector serves.
    pub site: Id,
    /// Register unknown machines instead of dead-lettering their messages.
    pub auto_register: bool,
    /// Event signatures: the keys and whether they are required.
    pub signing: Signing,
}

/// What the ingest checks of event signatures (docs/PROTOCOL.md "Signatures").
#[derive(Debug, Clone, Default)]
pub struct Signing {
    /// Refuse events without a valid signature (`[security] require_signed_events`).
    pub required: bool,
    /// The device keys, by machine id.
    pub keys: Arc<KeyMap>,
}

impl Signing {
    /// Checks the signature of an event payload received on `topic` for `machine`: a machine
    /// with a key must sign correctly whenever it signs, and always when signatures are
    /// required; without a key, its events are refused only when signatures are required.
    /// The error names the machine, the problem and the fix.
    pub fn check(&self, topic: &str, machine: &str, payload: &[u8]) -> Result<(), String> {
        match self.keys.get(machine) {
            Some(key) => match key.verify(topic, payload) {
                Ok(()) => Ok(()),
                Err(SigError::Missing) if !self.required => Ok(()),
                Err(e) => Err(format!("machine {machine}: {e}")),
            },
            None if self.required => Err(format!(
                "machine {machine} has no device key and security.require_signed_events is on; \
                 provision it with `fabmeter-collector provision device --machine {machine}` and install \
                 the key on the device"
            )),
            None => Ok(()),
        }
    }
}

/// A received message, classified.
#[derive(Debug, Clone)]
pub enum Classified {
    /// Something for the ledger (an event, a status, or a dead letter).
    Record(Record),
    /// A telemetry sample (QoS 0: never in the ledger, only in the time series).
    Telemetry {
        /// Its machine.
        machine: Id,
        /// The sample.
        sample: Telemetry,
    },
}

fn dead(topic: &str, payload: &[u8], reason: &str, detail: String, received_ms: u64) -> Classified {
    let keep = payload.len().min(MAX_CONFIG_PAYLOAD);
    Classified::Record(Record::DeadLetter {
        topic: topic.chars().take(256).collect(),
        payload: payload[..keep].to_vec(),
        reason: reason.to_owned(),
        detail,
        received_ms,
    })
}

/// Classifies one message. `known(machine)` tells whether a machine is registered; with
/// `auto_register`, unknown machines are accepted (the caller registers them).
pub fn classify(
    rules: &SiteRules,
    topic: &str,
    payload: &[u8],
    received_ms: u64,
    known: impl Fn(&str) -> bool,
) -> Classified {
    let t = match Topic::parse(topic) {
        Ok(t) => t,
        Err(e) => return dead(topic, payload, "topic", e.to_string(), received_ms),
    };
    // Before anything else looks at it: an oversized payload is refused whatever its topic says
    // (a bounded prefix is kept), acknowledged like any dead letter, and stops nothing.
    let max = t.channel.max_payload();
    if payload.len() > max {
        return dead(
            topic,
            payload,
            "too_large",
            format!(
                "payload of {} bytes exceeds the {max}-byte limit of the {} channel; send smaller messages \
                 (the broker should refuse it first: message_size_limit in the config `provision` writes)",
                payload.len(),
                t.channel
            ),
            received_ms,
        );
    }
    if t.site != rules.site {
        return dead(
            topic,
            payload,
            "wrong_site",
            format!(
                "site {} is not this collector's site {}; point the device at its own site",
                t.site, rules.site
            ),
            received_ms,
        );
    }
    if t.channel.direction() != Direction::DeviceToCollector {
        return dead(
            topic,
            payload,
            "wrong_channel",
            format!(
                "channel {} is not published by devices; devices publish on status, event and telemetry",
                t.channel
            ),
            received_ms,
        );
    }
    if !rules.auto_register && !known(t.machine.as_str()) {
        return dead(
            topic,
            payload,
            "unknown_machine",
            format!(
                "machine {} is not in the site config; add it under [[machines]] or set site.auto_register = true",
                t.machine
            ),
            received_ms,
        );
    }
    let decoded = match t.channel {
        Channel::Event => decode::<Event>(payload).map(|event| {
            // After decoding, so that a malformed payload is reported as such; before the
            // ledger, so that an event refused here never opens, ends or bills a session.
            if let Err(detail) = rules.signing.check(topic, t.machine.as_str(), payload) {
                return dead(topic, payload, "signature", detail, received_ms);
            }
            Classified::Record(Record::Event {
                machine: t.machine.clone(),
                event,
                payload: payload.to_vec(),
                received_ms,
            })
        }),
        Channel::Status => decode::<Status>(payload).map(|status| {
            Classified::Record(Record::Status {
                machine: t.machine.clone(),
                status,
                received_ms,
            })
        }),
        _ => decode::<Telemetry>(payload).map(|sample| Classified::Telemetry {
            machine: t.machine.clone(),
            sample,
        }),
    };
    decoded.unwrap_or_else(|e| dead(topic, payload, e.reason(), e.to_string(), received_ms))
}

/// A message waiting for the writer.
#[derive(Debug)]
pub struct Incoming {
    /// The publish, kept to acknowledge it after commit.
    pub publish: Publish,
    /// When it arrived.
    pub received: Instant,
    /// When it arrived, unix ms.
    pub received_ms: u64,
}

/// Subscription filters of a site (status, event, telemetry), with the shared-subscription prefix
/// when several collectors share the site.
pub fn subscriptions(site: &Id, shared_group: Option<&str>) -> Vec<String> {
    [Channel::Status, Channel::Event, Channel::Telemetry]
        .into_iter()
        .map(|c| {
            let f = filter(Some(site), c);
            match shared_group {
                Some(g) => format!("$share/{g}/{f}"),
                None => f.to_string(),
            }
        })
        .collect()
}

/// Most messages the MQTT loop holds for a writer whose queue is full before it stops reading
/// (a broker with an in-flight window never sends that many unacknowledged messages).
const MAX_OVERFLOW: usize = 20_000;

/// Most filters in one SUBSCRIBE packet.
const SUBSCRIBE_CHUNK: usize = 100;

/// The subscription filters of every site in `sites` ([`subscriptions`]).
pub fn subscriptions_of<'a>(
    sites: impl IntoIterator<Item = &'a Id>,
    shared_group: Option<&str>,
) -> Vec<String> {
    sites
        .into_iter()
        .flat_map(|s| subscriptions(s, shared_group))
        .collect()
}

/// Drives the MQTT connection: forwards publishes to the writer, subscribes after every connection
/// without a kept session, reconnects with backoff.
///
/// On `shutdown` it stops taking publishes (those not taken are not acknowledged, so the broker
/// redelivers them to the next run), closes the writer's queue, and keeps the connection polled until
/// the writer has acknowledged what it committed (`writer_done`), then disconnects cleanly.
pub async fn run_mqtt(
    client: AsyncClient,
    mut eventloop: EventLoop,
    topics: Vec<String>,
    to_writer: mpsc::Sender<Incoming>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    writer_done: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut to_writer = Some(to_writer);
    let mut pending_subacks = 0usize;
    // Messages received while the writer's queue is full. The event loop is polled all the same,
    // so that keep-alive answers keep coming: a loop that stops polling when the writer is behind
    // misses its PINGRESP, the connection drops, the broker sends its whole in-flight window again,
    // and the duplicates put the writer further behind (seen with hundreds of sites per
    // collector). What is unacknowledged stays bounded by the broker's in-flight window.
    let mut overflow: VecDeque<Incoming> = VecDeque::new();
    loop {
        let room = match (&to_writer, overflow.is_empty()) {
            (Some(tx), false) => Some(tx.clone()),
            _ => None,
        };
        let polled = tokio::select! {
            () = shutdown.cancelled(), if to_writer.is_some() => {
                // Stop reading: the writer drains its queue and acknowledges; what it was not
                // given stays unacknowledged and is redelivered to the next run.
                to_writer = None;
                metrics.queue_depth.fetch_sub(overflow.len() as u64, Relaxed);
                overflow.clear();
                continue;
            }
            () = writer_done.cancelled(), if to_writer.is_none() => break,
            permit = async { room?.reserve_owned().await.ok() }, if room.is_some() => {
                match (permit, overflow.pop_front()) {
                    (Some(p), Some(m)) => {
                        p.send(m);
                    }
                    (None, _) => {
                        to_writer = None;
                        metrics.queue_depth.fetch_sub(overflow.len() as u64, Relaxed);
                        overflow.clear();
                    }
                    (Some(_), None) => {}
                }
                continue;
            }
            p = eventloop.poll() => p,
        };
        match polled {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                metrics.connects.fetch_add(1, Relaxed);
                metrics.mqtt_up.store(true, Relaxed);
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                metrics.subscribed.store(ack.session_present, Relaxed);
                if !ack.session_present {
                    // rumqttc does not re-subscribe by itself when the broker kept no session.
                    // A network collector has three filters per site: 100 per SUBSCRIBE.
                    pending_subacks = 0;
                    for chunk in topics.chunks(SUBSCRIBE_CHUNK) {
                        let filters = chunk
                            .iter()
                            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                        match client.subscribe_many(filters).await {
                            Ok(()) => pending_subacks += 1,
                            Err(e) => {
                                tracing::error!(first = %chunk[0], error = %e, "subscribe failed");
                            }
                        }
                    }
                }
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                pending_subacks = pending_subacks.saturating_sub(1);
                if pending_subacks == 0 {
                    metrics.subscribed.store(true, Relaxed);
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                metrics.received.fetch_add(1, Relaxed);
                let Some(tx) = &to_writer else {
                    continue; // shutting down: left unacknowledged, redelivered next run
                };
                metrics.queue_depth.fetch_add(1, Relaxed);
                let msg = Incoming {
                    publish,
                    received: Instant::now(),
                    received_ms: now_ms(),
                };
                // Back-pressure is the broker's in-flight window (nothing is acknowledged before
                // its commit); the loop itself never waits for the writer (see `overflow`).
                if overflow.is_empty() {
                    match tx.try_send(msg) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(m)) => overflow.push_back(m),
                        Err(mpsc::error::TrySendError::Closed(_)) => to_writer = None,
                    }
                } else if overflow.len() < MAX_OVERFLOW {
                    overflow.push_back(msg);
                } else {
                    // A broker without an in-flight limit: stop reading until the writer
                    // catches up (TCP flow control), as the last resort.
                    overflow.push_back(msg);
                    while let Some(m) = overflow.pop_front() {
                        if tx.send(m).await.is_err() {
                            to_writer = None;
                            break;
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.mqtt_up.store(false, Relaxed);
                metrics.subscribed.store(false, Relaxed);
                metrics.connection_errors.fetch_add(1, Relaxed);
                if to_writer.is_none() {
                    break; // shutting down and the connection is gone: nothing more to flush
                }
                if let rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                    rumqttc::Error::PayloadSizeLimitExceeded(len),
                )) = &e
                {
                    // The packet cannot be read, so it cannot be acknowledged or dead-lettered:
                    // the broker redelivers it at every reconnect (docs/COLLECTOR.md "Bad input").
                    metrics.oversized_packets.fetch_add(1, Relaxed);
                    tracing::error!(
                        packet_bytes = len,
                        retry_in = ?backoff,
                        "the broker sent a message larger than mqtt.max_packet_bytes: it cannot be read and is redelivered at every reconnect, which stops ingest; make the broker refuse such messages (message_size_limit in the mosquitto.conf `fabmeter-collector provision acl` writes) and remove it from the collector's session, or raise mqtt.max_packet_bytes"
                    );
                } else if let rumqttc::ConnectionError::ConnectionRefused(code) = &e {
                    tracing::error!(
                        reason = ?code,
                        retry_in = ?backoff,
                        "the broker refused the connection: check mqtt.username, mqtt.password and the broker's ACL"
                    );
                } else {
                    tracing::warn!(error = %e, retry_in = ?backoff, "broker connection lost");
                }
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    metrics.mqtt_up.store(false, Relaxed);
    // Flush the last acknowledgements, then say goodbye.
    if client.disconnect().await.is_ok() {
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                p = eventloop.poll() => {
                    if matches!(p, Err(_) | Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect))) {
                        break;
                    }
                }
            }
        }
    }
    tracing::info!("MQTT connection closed");
}

/// What the writer knows of one site it serves.
pub struct SiteIngest {
    /// Classification rules (the site, auto-registration, signatures).
    pub rules: SiteRules,
    /// Machine kinds for time-series tags.
    pub kinds: std::collections::HashMap<String, String>,
    /// Badge hash to member id, for time-series tags.
    pub members: std::collections::HashMap<String, String>,
    /// The site's time series (its own tenant, or the collector's shared sink; never waited for).
    pub series: TimeSeriesHandle,
    /// The device key file, re-read (when changed) before each batch into `rules.signing.keys`.
    pub device_keys: Option<DeviceKeys>,
    /// Records newly stored for the site (the site's maintenance task watches it).
    pub activity: Arc<std::sync::atomic::AtomicU64>,
}

/// One site's part of a batch: machines to register, then records.
#[derive(Debug, Default)]
pub struct SiteWork {
    /// Index of the site in [`Writer::sites`].
    pub site: usize,
    /// Machines seen for the first time (auto-registration).
    pub register: Vec<MachineInfo>,
    /// The records, in arrival order.
    pub records: Vec<Record>,
}

/// Where the writer commits: one site's ledger ([`OneSite`]), or the ledgers of every site a
/// network collector serves on one PostgreSQL connection ([`PgSites`]), a batch being one
/// transaction either way.
pub trait Store: Send {
    /// Whether machine `machine` of site number `site` is registered.
    fn has_machine(&self, site: usize, machine: &str) -> Result<bool, LedgerError>;
    /// Registers and stores every site's work; the outcomes, work by work, record by record.
    fn commit(&mut self, work: &[SiteWork]) -> Result<Vec<Vec<Committed>>, LedgerError>;
}

/// The ledger of a single site.
pub struct OneSite<L: Ledger>(pub L);

impl<L: Ledger> Store for OneSite<L> {
    fn has_machine(&self, _site: usize, machine: &str) -> Result<bool, LedgerError> {
        self.0.has_machine(machine)
    }

    fn commit(&mut self, work: &[SiteWork]) -> Result<Vec<Vec<Committed>>, LedgerError> {
        let mut out = Vec::with_capacity(work.len());
        for w in work {
            if !w.register.is_empty() {
                self.0.register_machines(&w.register, now_ms())?;
            }
            out.push(self.0.commit(&w.records)?);
        }
        Ok(out)
    }
}

/// The ledgers of several sites on one shared PostgreSQL connection: a batch spanning many sites
/// is one transaction (one `COMMIT`), the sites' advisory locks taken in order.
pub struct PgSites {
    /// The connection every ledger of `sites` is on.
    pub conn: Arc<PgConnection>,
    /// One ledger per site, in the order of [`Writer::sites`].
    pub sites: Vec<PgLedger>,
}

impl Store for PgSites {
    fn has_machine(&self, site: usize, machine: &str) -> Result<bool, LedgerError> {
        match self.sites.get(site) {
            Some(l) => l.has_machine(machine),
            None => Ok(false),
        }
    }

    fn commit(&mut self, work: &[SiteWork]) -> Result<Vec<Vec<Committed>>, LedgerError> {
        let mut batches = Vec::with_capacity(work.len());
        for w in work {
            let ledger = self.sites.get(w.site).ok_or_else(|| {
                LedgerError::Column(format!("no ledger for site number {}", w.site))
            })?;
            batches.push(SiteBatch {
                ledger,
                register: &w.register,
                records: &w.records,
            });
        }
        self.conn.commit_sites(&batches, now_ms())
    }
}

/// Everything the writer needs.
pub struct Writer<S: Store> {
    /// The ledger(s) it alone writes.
    pub store: S,
    /// The sites it serves; a message of another site is a dead letter `wrong_site` of the first.
    pub sites: Vec<SiteIngest>,
    /// Site id to its index in `sites` ([`Writer::new`] builds it).
    index: HashMap<Id, usize>,
    /// Once cancelled, a failing commit is not retried: the batch stays unacknowledged and the
    /// broker redelivers it to the next run (so that SIGTERM stops a collector whose ledger is
    /// down).
    shutdown: CancellationToken,
    /// The MQTT client, to acknowledge after commit.
    pub client: AsyncClient,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Most messages per transaction.
    pub batch_max: usize,
}

impl<S: Store> Writer<S> {
    /// A writer of `sites` into `store`.
    pub fn new(
        store: S,
        sites: Vec<SiteIngest>,
        client: AsyncClient,
        metrics: Arc<Metrics>,
        batch_max: usize,
    ) -> Self {
        let index = sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.rules.site.clone(), i))
            .collect();
        Writer {
            store,
            sites,
            index,
            shutdown: CancellationToken::new(),
            client,
            metrics,
            batch_max,
        }
    }

    /// Gives up retrying failed commits once `shutdown` is cancelled (see [`Writer`]).
    pub fn stop_retrying_on(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }
}

/// The writer loop, on a dedicated thread (SQLite is blocking): batch, commit, then acknowledge.
/// Ends when the MQTT task is gone and the queue is drained; `done` is cancelled once every
/// acknowledgement of what it committed is queued to the MQTT client.
pub fn run_writer<S: Store>(
    mut w: Writer<S>,
    mut rx: mpsc::Receiver<Incoming>,
    rt: tokio::runtime::Handle,
    done: CancellationToken,
) {
    let (acks, acks_rx) = mpsc::unbounded_channel();
    let acker = rt.spawn(run_acker(
        w.client.clone(),
        acks_rx,
        w.metrics.clone(),
        done,
    ));
    let mut batch: Vec<Incoming> = Vec::with_capacity(w.batch_max);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < w.batch_max {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        w.metrics.queue_depth.fetch_sub(batch.len() as u64, Relaxed);
        process_batch(&mut w, &mut batch, &acks);
    }
    drop(acks);
    tracing::info!("ledger writer stopped");
    // The acker cancels `done` when it has queued the last acknowledgement.
    drop(acker);
}

/// Queues the acknowledgements of committed batches to the MQTT client, one at a time: the writer
/// never waits for the MQTT event loop (which may itself be waiting for the writer's queue to make
/// room: a full request channel plus a full writer queue would deadlock), and when rumqttc's
/// request channel is full a single send waits for room, instead of a task per message (flume
/// scans its waiting senders linearly at every send: thousands of waiting tasks made that
/// quadratic, docs/BENCHMARKS.md "Ingest"). PUBACK order does not matter in MQTT.
///
/// After a batch's PUBACKs it publishes the batch's confirmations (QoS 0) without ever waiting:
/// when the request channel is full a confirmation is counted and dropped, and the device, which
/// keeps the events, sends them again after its stall timer.
async fn run_acker(
    client: AsyncClient,
    mut acks: mpsc::UnboundedReceiver<Acks>,
    metrics: Arc<Metrics>,
    done: CancellationToken,
) {
    while let Some(batch) = acks.recv().await {
        for publish in &batch.pubacks {
            if client.try_ack(publish).is_ok() {
                continue;
            }
            if let Err(e) = client.ack(publish).await {
                tracing::warn!(error = %e, "acknowledgement not sent; the broker will redeliver");
            }
        }
        let mut dropped = 0u64;
        for (topic, payload) in batch.confirms {
            if client
                .try_publish(topic, QoS::AtMostOnce, false, payload)
                .is_ok()
            {
                metrics.confirms_published.fetch_add(1, Relaxed);
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            metrics.confirms_dropped.fetch_add(dropped, Relaxed);
            tracing::warn!(
                dropped,
                "confirmations not published: the MQTT request queue is full; devices resend after their stall timer"
            );
        }
    }
    done.cancel();
}

/// What the acker sends for one committed batch.
#[derive(Debug, Default)]
struct Acks {
    /// The QoS 1 publishes to acknowledge to the broker.
    pubacks: Vec<Publish>,
    /// `(topic, payload)` of each confirmation for the devices.
    confirms: Vec<(String, Vec<u8>)>,
}

/// The (machine, boot, seq) of a record that the ledger now durably holds and that a device may
/// therefore forget: an event (accepted or duplicate), or a dead letter on a machine's `event`
/// topic whose payload names a boot and seq. A dead letter with a bad signature is not confirmed:
/// anyone who can write the topic could otherwise make a device forget a real event.
fn confirmable(record: &Record) -> Option<(Id, u32, u32)> {
    match record {
        Record::Event { machine, event, .. } => Some((machine.clone(), event.boot, event.seq)),
        Record::DeadLetter {
            topic,
            payload,
            reason,
            ..
        } if reason != "signature" => {
            let t = Topic::parse(topic)
                .ok()
                .filter(|t| t.channel == Channel::Event)?;
            #[derive(serde::Deserialize)]
            struct Key {
                boot: u32,
                seq: u32,
            }
            let k: Key = serde_json::from_slice(payload).ok()?;
            (k.boot >= 1 && k.seq >= 1).then_some((t.machine, k.boot, k.seq))
        }
        _ => None,
    }
}

/// The confirmations of `keys` for site `site`: per (machine, boot), one message per contiguous
/// run of seq, as `(topic, payload)`.
pub fn confirmations(
    site: &Id,
    keys: impl IntoIterator<Item = (Id, u32, u32)>,
) -> Vec<(String, Vec<u8>)> {
    let mut by_boot: std::collections::BTreeMap<(Id, u32), Vec<u32>> = Default::default();
    for (machine, boot, seq) in keys {
        by_boot.entry((machine, boot)).or_default().push(seq);
    }
    let mut out = Vec::new();
    for ((machine, boot), mut seqs) in by_boot {
        seqs.sort_unstable();
        seqs.dedup();
        let topic = Topic::new(site.clone(), machine, Channel::Ack).to_string();
        let mut i = 0;
        while i < seqs.len() {
            let from = seqs[i];
            let mut to = from;
            while i + 1 < seqs.len() && seqs[i + 1] == to + 1 {
                i += 1;
                to = seqs[i];
            }
            i += 1;
            let c = Confirm {
                v: fabmeter_protocol::SCHEMA_VERSION,
                boot,
                from,
                to,
            };
            if let Ok(payload) = fabmeter_protocol::encode_to_vec(&c) {
                out.push((topic.clone(), payload));
            }
        }
    }
    out
}

fn process_batch<S: Store>(
    w: &mut Writer<S>,
    batch: &mut Vec<Incoming>,
    acks: &mpsc::UnboundedSender<Acks>,
) {
    if w.sites.is_empty() {
        return;
    }
    // The work of each site, in the order they first appear in the batch.
    let mut work: Vec<SiteWork> = Vec::new();
    let mut slot_of: Vec<Option<usize>> = vec![None; w.sites.len()];
    let mut points = Vec::new();
    for s in &mut w.sites {
        if let Some(keys) = &s.device_keys {
            s.rules.signing.keys = keys.current();
        }
    }
    let index: &HashMap<Id, usize> = &w.index;
    for m in batch.iter() {
        // A topic of a site not served here is classified by the first site's rules, which
        // make it a dead letter `wrong_site` stored under the first site.
        let i = Topic::parse(&m.publish.topic)
            .ok()
            .and_then(|t| index.get(&t.site).copied())
            .unwrap_or(0);
        let store = &w.store;
        let site = &mut w.sites[i];
        let known = |machine: &str| {
            site.kinds.contains_key(machine) || store.has_machine(i, machine).unwrap_or(false)
        };
        match classify(
            &site.rules,
            &m.publish.topic,
            &m.publish.payload,
            m.received_ms,
            known,
        ) {
            Classified::Record(r) => {
                let slot = *slot_of[i].get_or_insert_with(|| {
                    work.push(SiteWork {
                        site: i,
                        ..SiteWork::default()
                    });
                    work.len() - 1
                });
                if let Record::DeadLetter {
                    reason,
                    detail,
                    topic,
                    ..
                } = &r
                {
                    w.metrics.reject(reason);
                    tracing::warn!(%topic, %reason, %detail, "message refused");
                } else if let Record::Event { machine, .. } | Record::Status { machine, .. } = &r {
                    if !site.kinds.contains_key(machine.as_str()) {
                        work[slot].register.push(MachineInfo {
                            id: machine.to_string(),
                            name: machine.to_string(),
                            kind: "machine".into(),
                            source: "auto".into(),
                        });
                        site.kinds.insert(machine.to_string(), "machine".into());
                    }
                }
                work[slot].records.push(r);
            }
            Classified::Telemetry { machine, sample } => {
                w.metrics.telemetry.fetch_add(1, Relaxed);
                let kind = site
                    .kinds
                    .get(machine.as_str())
                    .map_or("machine", String::as_str);
                points.push((
                    i,
                    series::telemetry(&site.rules.site, &machine, kind, &sample, m.received_ms),
                ));
            }
        }
    }
    // Commit until it succeeds: nothing is acknowledged before, so nothing can be lost.
    let mut pause = Duration::from_millis(50);
    let committed = loop {
        let started = Instant::now();
        match w.store.commit(&work) {
            Ok(c) => {
                w.metrics.commit_time.observe(started.elapsed());
                w.metrics.commits.fetch_add(1, Relaxed);
                w.metrics.set_ledger_failure(None);
                break c;
            }
            Err(e) => {
                w.metrics.commit_errors.fetch_add(1, Relaxed);
                w.metrics.set_ledger_failure(Some(e.to_string()));
                if w.shutdown.is_cancelled() {
                    tracing::warn!(
                        messages = batch.len(),
                        error = %e,
                        "stopping while the ledger fails: these messages stay unacknowledged and the broker redelivers them to the next run"
                    );
                    batch.clear();
                    return;
                }
                tracing::error!(error = %e, retry_in = ?pause, "ledger commit failed; nothing acknowledged");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    };
    let mut confirms = Vec::new();
    for (sw, outcomes) in work.iter().zip(&committed) {
        let site = &w.sites[sw.site];
        for (record, c) in sw.records.iter().zip(outcomes) {
            match c.outcome {
                Outcome::Accepted => {
                    w.metrics.accepted.fetch_add(1, Relaxed);
                    site.activity.fetch_add(1, Relaxed);
                    if let (Record::Event { machine, event, .. }, Some(wall)) = (record, c.wall_ms)
                    {
                        let kind = site
                            .kinds
                            .get(machine.as_str())
                            .map_or("machine", String::as_str);
                        points.push((
                            sw.site,
                            series::event(
                                &site.rules.site,
                                machine,
                                kind,
                                event,
                                wall,
                                &site.members,
                            ),
                        ));
                    }
                }
                Outcome::Duplicate => {
                    w.metrics.duplicate.fetch_add(1, Relaxed);
                }
                Outcome::DeadLettered => {}
                // Kept as a dead letter by the ledger itself (a key stored with other content).
                Outcome::Conflict => w.metrics.reject(crate::ledger::CONFLICT),
            }
        }
        confirms.extend(confirmations(
            &site.rules.site,
            sw.records.iter().filter_map(confirmable),
        ));
    }
    send_points(&w.sites, points);
    // Acknowledge, through the acker task (never waiting here: see `run_acker`).
    let mut to_ack = Vec::with_capacity(batch.len());
    for m in batch.drain(..) {
        if m.publish.qos != QoS::AtMostOnce {
            to_ack.push(m.publish);
            w.metrics.acked.fetch_add(1, Relaxed);
        }
        w.metrics.ack_latency.observe(m.received.elapsed());
    }
    if !(to_ack.is_empty() && confirms.is_empty())
        && acks
            .send(Acks {
                pubacks: to_ack,
                confirms,
            })
            .is_err()
    {
        tracing::warn!("acknowledgements not sent (the acker is gone); the broker will redeliver");
    }
}

/// Sends the batch's points, one send per time-series sink (sites sharing a sink share a send).
fn send_points(sites: &[SiteIngest], points: Vec<(usize, Vec<crate::timeseries::Point>)>) {
    let mut by_sink: Vec<(&TimeSeriesHandle, Vec<crate::timeseries::Point>)> = Vec::new();
    for (i, p) in points {
        let Some(site) = sites.get(i) else { continue };
        match by_sink.iter_mut().find(|(h, _)| h.same_sink(&site.series)) {
            Some((_, v)) => v.extend(p),
            None => by_sink.push((&site.series, p)),
        }
    }
    for (h, p) in by_sink {
        if !p.is_empty() {
            h.send(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(auto: bool) -> SiteRules {
        SiteRules {
            site: Id::new("atelier").expect("id"),
            auto_register: auto,
            signing: Signing::default(),
        }
    }

    fn reason(c: &Classified) -> Option<&str> {
        match c {
            Classified::Record(Record::DeadLetter { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    const EV: &[u8] = br#"{"v":1,"boot":1,"seq":1,"uptime_ms":1,"sent_uptime_ms":2,"event":{"state":{"from":"off","to":"idle"}}}"#;

    #[test]
    fn classifies_good_and_bad_input_with_reasons() {
        let known = |m: &str| m == "laser-1";
        let r = rules(false);
        let c = |topic: &str, payload: &[u8]| classify(&r, topic, payload, 5, known);
        assert!(matches!(
            c("fabmeter/v1/atelier/laser-1/event", EV),
            Classified::Record(Record::Event { .. })
        ));
        assert_eq!(
            reason(&c("fabmeter/v1/atelier/laser-1/events", EV)),
            Some("topic")
        );
        assert_eq!(
            reason(&c("fabmeter/v1/other/laser-1/event", EV)),
            Some("wrong_site")
        );
        assert_eq!(
            reason(&c("fabmeter/v1/atelier/laser-1/config", EV)),
            Some("wrong_channel")
        );
        assert_eq!(
            reason(&c("fabmeter/v1/atelier/saw-9/event", EV)),
            Some("unknown_machine")
        );
        assert_eq!(
            reason(&c("fabmeter/v1/atelier/laser-1/event", b"{")),
            Some("syntax")
        );
        assert_eq!(
            reason(&c("fabmeter/v1/atelier/laser-1/event", &[b' '; 2000])),
            Some("too_large")
        );
        assert_eq!(
            reason(&c("fabmeter/v1/atelier/laser-1/status", EV)),
            Some("field")
        );
        let t = br#"{"v":1,"boot":1,"uptime_ms":1,"state":"busy","power_w":12}"#;
        assert!(matches!(
            c("fabmeter/v1/atelier/laser-1/telemetry", t),
            Classified::Telemetry { .. }
        ));
        // Auto-registration accepts unknown machines.
        let auto = classify(
            &rules(true),
            "fabmeter/v1/atelier/saw-9/event",
            EV,
            5,
            known,
        );
        assert!(matches!(auto, Classified::Record(Record::Event { .. })));
    }

    #[test]
    fn dead_letters_keep_a_bounded_payload_and_name_the_fix() {
        let big = vec![b'x'; 10_000];
        match classify(
            &rules(false),
            "fabmeter/v1/atelier/laser-1/event",
            &big,
            5,
            |_| true,
        ) {
            Classified::Record(Record::DeadLetter {
                payload, detail, ..
            }) => {
                assert_eq!(payload.len(), MAX_CONFIG_PAYLOAD);
                assert!(detail.contains("exceeds the 1024-byte limit"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        match classify(
            &rules(false),
            "fabmeter/v1/atelier/saw/event",
            EV,
            5,
            |_| false,
        ) {
            Classified::Record(Record::DeadLetter { detail, .. }) => {
                assert!(detail.contains("add it under [[machines]]"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_oversized_payload_is_too_large_whatever_else_is_wrong() {
        let big = vec![b'{'; 64 * 1024];
        for topic in [
            "fabmeter/v1/atelier/laser-1/event",
            "fabmeter/v1/atelier/saw-9/status",
            "fabmeter/v1/other/laser-1/telemetry",
        ] {
            match classify(&rules(false), topic, &big, 5, |m| m == "laser-1") {
                Classified::Record(Record::DeadLetter {
                    reason,
                    payload,
                    detail,
                    ..
                }) => {
                    assert_eq!(reason, "too_large", "{topic}");
                    assert_eq!(payload.len(), MAX_CONFIG_PAYLOAD, "a bounded prefix");
                    assert!(
                        detail.contains("65536 bytes exceeds the 1024-byte limit"),
                        "{detail}"
                    );
                }
                other => panic!("{topic}: {other:?}"),
            }
        }
        // At the limit it goes on to the decoder.
        let at = vec![b'{'; fabmeter_protocol::MAX_PAYLOAD];
        let c = classify(
            &rules(false),
            "fabmeter/v1/atelier/laser-1/event",
            &at,
            5,
            |_| true,
        );
        assert_eq!(reason(&c), Some("syntax"));
    }

    #[test]
    fn signatures_are_checked_per_machine_and_required_on_demand() {
        use fabmeter_protocol::DeviceKey;
        let key = DeviceKey::new([3; 32]);
        let topic = "fabmeter/v1/atelier/laser-1/event";
        let mut buf = [0u8; 1024];
        buf[..EV.len()].copy_from_slice(EV);
        let n = key.sign(topic, &mut buf, EV.len()).expect("sign");
        let signed = &buf[..n];
        let mut r = rules(false);
        r.signing.keys = Arc::new([("laser-1".to_owned(), key.clone())].into());
        let c =
            |r: &SiteRules, topic: &str, payload: &[u8]| classify(r, topic, payload, 5, |_| true);
        let is_event = |x: &Classified| matches!(x, Classified::Record(Record::Event { .. }));
        // Not required: signed and verified, or unsigned, or a machine without a key: accepted.
        assert!(is_event(&c(&r, topic, signed)));
        assert!(is_event(&c(&r, topic, EV)));
        assert!(is_event(&c(&r, "fabmeter/v1/atelier/cnc/event", EV)));
        // A signature that does not verify is refused even when not required.
        let changed = String::from_utf8_lossy(signed)
            .replace(r#""sent_uptime_ms":2"#, r#""sent_uptime_ms":3"#);
        assert_eq!(reason(&c(&r, topic, changed.as_bytes())), Some("signature"));
        // Required: unsigned, or a machine without a key, refused; with the detail naming the fix.
        r.signing.required = true;
        assert!(is_event(&c(&r, topic, signed)));
        assert_eq!(reason(&c(&r, topic, EV)), Some("signature"));
        match c(&r, "fabmeter/v1/atelier/cnc/event", EV) {
            Classified::Record(Record::DeadLetter { reason, detail, .. }) => {
                assert_eq!(reason, "signature");
                assert!(
                    detail.contains("provision device --machine cnc"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Status and telemetry are not signed in this version.
        let t = br#"{"v":1,"boot":1,"uptime_ms":1,"state":"busy","power_w":12}"#;
        assert!(matches!(
            c(&r, "fabmeter/v1/atelier/laser-1/telemetry", t),
            Classified::Telemetry { .. }
        ));
    }

    #[test]
    fn shared_subscriptions() {
        let site = Id::new("atelier").expect("id");
        assert_eq!(
            subscriptions(&site, None),
            [
                "fabmeter/v1/atelier/+/status",
                "fabmeter/v1/atelier/+/event",
                "fabmeter/v1/atelier/+/telemetry"
            ]
        );
        assert_eq!(
            subscriptions(&site, Some("c"))[1],
            "$share/c/fabmeter/v1/atelier/+/event"
        );
    }

    #[test]
    fn confirmations_are_one_per_contiguous_run_per_machine_and_boot() {
        let id = |s: &str| Id::new(s).expect("id");
        let keys = [
            (id("laser-1"), 3, 5),
            (id("laser-1"), 3, 1),
            (id("laser-1"), 3, 2),
            (id("laser-1"), 3, 2),
            (id("laser-1"), 4, 1),
            (id("cnc"), 3, 9),
            (id("laser-1"), 3, 3),
        ];
        let got: Vec<(String, String)> = confirmations(&id("s1"), keys)
            .into_iter()
            .map(|(t, p)| (t, String::from_utf8(p).expect("utf-8")))
            .collect();
        let ack = |m: &str, j: &str| (format!("fabmeter/v1/s1/{m}/ack"), j.to_string());
        assert_eq!(
            got,
            [
                ack("cnc", r#"{"v":1,"boot":3,"from":9,"to":9}"#),
                ack("laser-1", r#"{"v":1,"boot":3,"from":1,"to":3}"#),
                ack("laser-1", r#"{"v":1,"boot":3,"from":5,"to":5}"#),
                ack("laser-1", r#"{"v":1,"boot":4,"from":1,"to":1}"#),
            ]
        );
    }

    #[test]
    fn dead_letters_on_an_event_topic_are_confirmed_unless_the_signature_failed() {
        let dl = |topic: &str, payload: &str, reason: &str| Record::DeadLetter {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            reason: reason.into(),
            detail: String::new(),
            received_ms: 0,
        };
        let t = "fabmeter/v1/s1/laser-1/event";
        let bad = r#"{"v":1,"boot":2,"seq":7,"event":{"teleport":{}}}"#;
        assert_eq!(
            confirmable(&dl(t, bad, "field")),
            Some((Id::new("laser-1").expect("id"), 2, 7))
        );
        assert_eq!(confirmable(&dl(t, bad, "signature")), None);
        assert_eq!(
            confirmable(&dl("fabmeter/v1/s1/laser-1/status", bad, "field")),
            None
        );
        assert_eq!(
            confirmable(&dl(t, r#"{"v":1,"boot":0,"seq":7}"#, "invalid")),
            None
        );
        assert_eq!(confirmable(&dl(t, "{", "syntax")), None);
        assert_eq!(confirmable(&dl("nope", bad, "topic")), None);
    }
}
