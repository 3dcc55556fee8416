//! The MQTT client and the device core against a real Mosquitto (Debian package `mosquitto`),
//! over a std `TcpStream` behind the same embedded-io shell the MCU uses.
//!
//! One test thread drives everything: each turn ticks the device, runs one `shell::service` and
//! drains the subscriber, and every wait is a condition with a deadline.

use std::collections::BTreeMap;
use std::io::{ErrorKind as IoKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use embedded_io::ErrorKind;
use fabmeter_e2e::{Mosquitto, ReceivedMessage, Subscription};
use fabmeter_firmware::device::{Device, DeviceInfo};
use fabmeter_firmware::mqtt::shell::{service, Link};
use fabmeter_firmware::mqtt::{Client, Settings};
use fabmeter_firmware::storage::RamFlash;
use fabmeter_protocol::message::{Capability, EndReason, Event, EventBody, Presence, Status};
use fabmeter_protocol::{decode, BadgeKey, Id};

type Flash = RamFlash<{ 64 * 1024 }, 4096>;

struct Relay;
impl embedded_hal::digital::ErrorType for Relay {
    type Error = core::convert::Infallible;
}
impl embedded_hal::digital::OutputPin for Relay {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A TCP link to the broker. `lose_input` simulates a crash that swallows what the broker sent
/// last (a PUBACK): the next read fails without delivering buffered bytes.
struct Tcp {
    port: u16,
    stream: Option<TcpStream>,
    lose_input: bool,
}

impl embedded_io::ErrorType for Tcp {
    type Error = ErrorKind;
}

impl embedded_io::Read for Tcp {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        if self.lose_input {
            return Err(ErrorKind::ConnectionReset);
        }
        let s = self.stream.as_mut().ok_or(ErrorKind::NotConnected)?;
        match s.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == IoKind::WouldBlock => Ok(0),
            Err(_) => Err(ErrorKind::Other),
        }
    }
}

impl embedded_io::ReadReady for Tcp {
    fn read_ready(&mut self) -> Result<bool, ErrorKind> {
        if self.lose_input {
            return Err(ErrorKind::ConnectionReset);
        }
        let Some(s) = self.stream.as_mut() else {
            return Ok(false);
        };
        let mut b = [0u8; 1];
        match s.peek(&mut b) {
            Ok(_) => Ok(true), // data, or end of stream (read then returns 0)
            Err(e) if e.kind() == IoKind::WouldBlock => Ok(false),
            Err(_) => Err(ErrorKind::Other),
        }
    }
}

impl embedded_io::Write for Tcp {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        let s = self.stream.as_mut().ok_or(ErrorKind::NotConnected)?;
        loop {
            match s.write(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == IoKind::WouldBlock => std::thread::yield_now(),
                Err(_) => return Err(ErrorKind::Other),
            }
        }
    }
    fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

impl Link for Tcp {
    fn open(&mut self) -> Result<(), ErrorKind> {
        let s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|_| ErrorKind::Other)?;
        s.set_nonblocking(true).map_err(|_| ErrorKind::Other)?;
        s.set_nodelay(true).map_err(|_| ErrorKind::Other)?;
        self.stream = Some(s);
        self.lose_input = false;
        Ok(())
    }
    fn close(&mut self) {
        self.stream = None;
        self.lose_input = false;
    }
}

const T: &str = "fabmeter/v1/lab/laser-1";
const ALICE: [u8; 4] = [0x04, 0xa1, 0xb2, 0xc3];
/// Run signal, short dwell, progress every second, telemetry every second.
const CONFIG: &str = r#"{"v":1,"sensing":{"run_signal":{"active_low":false,"dwell_ms":100}},"allow":["ba279e0c1e5c2464"],"progress_s":1,"idle_timeout_s":900,"max_session_s":43200,"telemetry_s":1}"#;
const WAIT: Duration = Duration::from_secs(20);

struct World {
    start: Instant,
    dev: Device<Flash, Relay>,
    client: Client,
    link: Tcp,
    sub: Subscription,
    seen: Vec<ReceivedMessage>,
}

impl World {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// One turn: tick, service the link, collect what the subscriber got.
    fn turn(&mut self) {
        let now = self.now();
        self.dev.tick(now);
        service(&mut self.client, &mut self.link, now, &mut self.dev);
        self.seen.extend(self.sub.drain());
        std::thread::sleep(Duration::from_millis(2)); // pacing, not synchronisation
    }

    fn run_until(&mut self, what: &str, mut done: impl FnMut(&World) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; client {:?} {:?}, seen {:?}",
                self.client.state(),
                self.client.last_failure(),
                self.seen
                    .iter()
                    .map(|m| m.payload_str())
                    .collect::<Vec<_>>()
            );
            self.turn();
        }
    }

    fn events(&self) -> Vec<Event> {
        self.seen
            .iter()
            .filter(|m| m.topic == format!("{T}/event"))
            .map(|m| decode::<Event>(&m.payload).expect("decodable event"))
            .collect()
    }

    fn max_seq(&self) -> u32 {
        self.events().iter().map(|e| e.seq).max().unwrap_or(0)
    }

    fn flushed(&self) -> bool {
        self.client.is_connected()
            && self.dev.journal().is_empty()
            && self.client.transmit().is_empty()
    }
}

fn statuses(seen: &[ReceivedMessage]) -> Vec<Status> {
    seen.iter()
        .filter(|m| m.topic == format!("{T}/status"))
        .map(|m| decode::<Status>(&m.payload).expect("decodable status"))
        .collect()
}

#[test]
fn birth_events_lwt_and_a_broker_restart_lose_nothing_and_double_nothing() {
    let mut broker = Mosquitto::builder()
        .persistence(true)
        .start()
        .expect("mosquitto (apt package mosquitto)");
    broker
        .client()
        .publish(&format!("{T}/config"), CONFIG, 1, true)
        .expect("retained config");
    let sub = broker
        .client()
        .subscribe(&[&format!("{T}/#")], 1)
        .expect("subscribe");

    let key = BadgeKey::new(core::array::from_fn(|i| i as u8));
    let info = DeviceInfo {
        fw: "0.1.0",
        caps: &[Capability::RunSignal, Capability::Badge, Capability::Relay],
    };
    let dev = Device::start(Flash::new(), Relay, key, info, 0).expect("device");
    let mut settings = Settings::new(Id::new("lab").unwrap(), Id::new("laser-1").unwrap());
    settings.keep_alive_s = 5;
    settings.ack_timeout_ms = 3000;
    settings.backoff_min_ms = 100;
    settings.backoff_max_ms = 1000;
    let mut w = World {
        start: Instant::now(),
        dev,
        client: Client::new(settings),
        link: Tcp {
            port: broker.port(),
            stream: None,
            lose_input: false,
        },
        sub,
        seen: Vec::new(),
    };

    // Birth (retained), config applied, counters event delivered.
    w.run_until("birth, config and the first event", |w| {
        w.dev.config().is_some() && w.flushed() && w.max_seq() >= 1
    });
    let births = statuses(&w.seen);
    assert_eq!(births.len(), 1, "{births:?}");
    assert_eq!(births[0].status, Presence::Online);
    assert_eq!(births[0].boot, 1);
    // A fresh device is born before the retained config reaches it.
    assert_eq!(births[0].config_hash, None);
    let retained = broker
        .client()
        .subscribe(&[&format!("{T}/status")], 1)
        .expect("subscribe status")
        .recv_timeout(WAIT)
        .expect("retained birth");
    assert!(retained.retained);
    assert_eq!(
        decode::<Status>(&retained.payload).unwrap().status,
        Presence::Online
    );

    // A session: idle, badge in, busy.
    let now = w.now();
    w.dev.on_run_signal(now, false);
    w.run_until("idle", |w| {
        w.dev.state() != fabmeter_protocol::message::MachineState::Off
    });
    let now = w.now();
    w.dev.on_badge(now, &ALICE);
    w.dev.on_run_signal(now, true);
    w.run_until("a progress event", |w| {
        w.flushed()
            && w.events()
                .iter()
                .any(|e| matches!(e.event, EventBody::SessionProgress { .. }))
    });

    // The broker crashes right after taking an event whose PUBACK the device never reads.
    let before = w.max_seq();
    w.run_until("the next event in flight", |w| {
        w.client.stats().events_sent > w.client.stats().events_acked
    });
    let inflight_seq = before + 1;
    // The turn that sent it may already have drained it from the subscription into `seen`.
    if w.max_seq() < inflight_seq {
        w.sub
            .wait_for(WAIT, "the in-flight event at the subscriber", |m| {
                decode::<Event>(&m.payload).is_ok_and(|e| e.seq == inflight_seq)
            })
            .map(|ms| w.seen.extend(ms))
            .expect("in-flight event delivered");
    }
    w.link.lose_input = true;
    broker.kill().expect("kill broker");
    // The device goes on while the broker is down: progress events pile up in the journal.
    let down_at = w.now();
    w.run_until("three seconds offline", |w| w.now() >= down_at + 3000);
    assert!(!w.client.is_connected());
    assert!(
        w.dev.journal().len() >= 2,
        "events waiting: {}",
        w.dev.journal().len()
    );

    broker.start_again().expect("restart broker");
    w.sub = broker
        .client()
        .subscribe(&[&format!("{T}/#")], 1)
        .expect("subscribe again");
    w.run_until("the journal resent", |w| {
        w.flushed() && w.client.stats().connects >= 2
    });

    // Badge out.
    let now = w.now();
    w.dev.on_badge(now, &ALICE);
    w.run_until("session end", |w| {
        w.flushed()
            && w.events()
                .iter()
                .any(|e| matches!(e.event, EventBody::SessionEnded { .. }))
    });

    // Dedup by (boot, seq): every seq from 1 to the last exactly once, duplicates identical but
    // for sent_uptime_ms; at least the in-flight one was sent twice.
    let events = w.events();
    let mut by_key: BTreeMap<(u32, u32), Event> = BTreeMap::new();
    let mut duplicates = 0;
    for e in &events {
        match by_key.get(&(e.boot, e.seq)) {
            Some(first) => {
                duplicates += 1;
                let mut again = e.clone();
                again.sent_uptime_ms = first.sent_uptime_ms;
                assert_eq!(&again, first, "a duplicate differs");
            }
            None => {
                by_key.insert((e.boot, e.seq), e.clone());
            }
        }
    }
    let last = w.max_seq();
    let keys: Vec<(u32, u32)> = by_key.keys().copied().collect();
    let want: Vec<(u32, u32)> = (1..=last).map(|s| (1, s)).collect();
    assert_eq!(keys, want, "nothing lost");
    assert!(duplicates >= 1, "the in-flight event was resent");
    assert!(by_key.contains_key(&(1, inflight_seq)));
    let started: Vec<u32> = by_key
        .values()
        .filter(|e| matches!(e.event, EventBody::SessionStarted { .. }))
        .map(|e| e.seq)
        .collect();
    assert_eq!(started.len(), 1);
    let ended: Vec<&Event> = by_key
        .values()
        .filter(|e| matches!(e.event, EventBody::SessionEnded { .. }))
        .collect();
    assert_eq!(ended.len(), 1);
    let EventBody::SessionEnded {
        session,
        busy_s,
        reason,
        ..
    } = &ended[0].event
    else {
        unreachable!()
    };
    assert_eq!(*session, started[0]);
    assert_eq!(*reason, EndReason::BadgeOut);
    assert!(*busy_s >= 4, "busy {busy_s} s");
    let progress = by_key
        .values()
        .filter(
            |e| matches!(e.event, EventBody::SessionProgress { session: s, .. } if s == started[0]),
        )
        .count();
    assert!(progress >= 4, "{progress} progress events");
    assert!(
        w.seen
            .iter()
            .any(|m| m.topic == format!("{T}/telemetry") && m.qos == 0),
        "telemetry at QoS 0"
    );
    // A second birth came with the reconnect, now naming the applied config.
    let births: Vec<Status> = statuses(&w.seen)
        .into_iter()
        .filter(|s| s.status == Presence::Online)
        .collect();
    assert_eq!(births.len(), 2, "{births:?}");
    assert_eq!(births[1].config_hash, w.dev.config_hash());

    // The TCP connection drops without DISCONNECT: the broker publishes the will.
    w.link.stream = None;
    let got = w
        .sub
        .wait_for(WAIT, "the offline will", |m| {
            m.topic == format!("{T}/status")
                && decode::<Status>(&m.payload).is_ok_and(|s| s.status == Presence::Offline)
        })
        .expect("LWT");
    let will = decode::<Status>(&got.last().unwrap().payload).unwrap();
    assert_eq!(will.boot, 1);
}
