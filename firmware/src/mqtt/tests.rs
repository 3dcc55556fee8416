use std::string::String;
use std::vec;
use std::vec::Vec;

use fabmeter_protocol::message::{Capability, Event, EventBody, Presence, Status};
use fabmeter_protocol::{decode, BadgeKey};

use super::packet::*;
use super::*;
use crate::device::DeviceInfo;
use crate::storage::RamFlash;

type Flash = RamFlash<{ 64 * 1024 }, 4096>;

struct Relay;
impl embedded_hal::digital::ErrorType for Relay {
    type Error = core::convert::Infallible;
}
impl OutputPin for Relay {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

type Dev = Device<Flash, Relay>;

const INFO: DeviceInfo = DeviceInfo {
    fw: "0.1.0",
    caps: &[Capability::Current, Capability::Badge],
};

const CONFIG: &str = r#"{"v":1,"sensing":{"current":{"idle_ma":300,"busy_ma":2000,"hysteresis_ma":150,"dwell_ms":3000,"window_ms":200,"ma_per_v":30000,"mains_v":230}},"allow":["ba279e0c1e5c2464"],"progress_s":60,"idle_timeout_s":900,"max_session_s":43200,"telemetry_s":0}"#;

fn device() -> Dev {
    let key = BadgeKey::new(core::array::from_fn(|i| i as u8));
    Dev::start(Flash::new(), Relay, key, INFO, 0).expect("start")
}

fn settings() -> Settings {
    let mut s = Settings::new(Id::new("lab").unwrap(), Id::new("laser-1").unwrap());
    s.keep_alive_s = 8;
    s.ack_timeout_ms = 4000;
    s.backoff_min_ms = 500;
    s.backoff_max_ms = 3000;
    s
}

/// A packet as the broker sees it: (type nibble, flags, body) with PUBLISH parsed.
#[derive(Debug)]
enum Sent {
    Connect(Vec<u8>),
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        pid: Option<u16>,
    },
    Subscribe(Vec<u8>),
    Pingreq,
    Puback(u16),
    Disconnect,
}

/// Takes everything the client queued, split into packets.
fn drain(c: &mut Client) -> Vec<Sent> {
    let mut out = Vec::new();
    let bytes = c.transmit().to_vec();
    c.transmitted(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let (first, hdr, len) = header(&bytes[at..]).unwrap().unwrap();
        let whole = &bytes[at..at + hdr + len];
        let body = whole[hdr..].to_vec();
        out.push(match first >> 4 {
            kind::CONNECT => Sent::Connect(body),
            kind::PUBLISH => match parse(whole).unwrap().unwrap().0 {
                Packet::Publish {
                    topic,
                    payload,
                    qos,
                    retain,
                    pid,
                    ..
                } => Sent::Publish {
                    topic: topic.into(),
                    payload: payload.to_vec(),
                    qos,
                    retain,
                    pid,
                },
                _ => unreachable!(),
            },
            kind::SUBSCRIBE => Sent::Subscribe(body),
            kind::PINGREQ => Sent::Pingreq,
            kind::PUBACK => Sent::Puback(u16::from_be_bytes([body[0], body[1]])),
            kind::DISCONNECT => Sent::Disconnect,
            k => panic!("unexpected packet type {k}"),
        });
        at += hdr + len;
    }
    out
}

const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

fn puback_bytes(pid: u16) -> Vec<u8> {
    let mut b = [0u8; 4];
    let n = puback(&mut b, pid).unwrap();
    b[..n].to_vec()
}

fn publish_bytes(topic: &str, payload: &[u8], qos: u8, pid: u16) -> Vec<u8> {
    let mut b = vec![0u8; payload.len() + topic.len() + 16];
    let n = publish(&mut b, topic, payload, qos, false, pid).unwrap();
    b.truncate(n);
    b
}

/// Connects: Open, CONNECT, CONNACK; returns what followed the CONNACK (birth, subscribe).
fn connect_at(c: &mut Client, d: &mut Dev, now: u64) -> Vec<Sent> {
    assert_eq!(c.poll(now, d), Some(Request::Open));
    c.opened(now, d);
    let sent = drain(c);
    assert!(matches!(sent.as_slice(), [Sent::Connect(_)]), "{sent:?}");
    assert_eq!(c.received(now, &CONNACK_OK, d), None);
    assert!(c.is_connected());
    drain(c)
}

/// The event published by the next poll: (pid, decoded event).
fn next_event(c: &mut Client, d: &mut Dev, now: u64) -> (u16, Event) {
    assert_eq!(c.poll(now, d), None);
    match drain(c).as_slice() {
        [Sent::Publish {
            topic,
            payload,
            qos: 1,
            retain: false,
            pid: Some(pid),
        }] => {
            assert_eq!(topic, "fabmeter/v1/lab/laser-1/event");
            (*pid, decode(payload).expect("an event"))
        }
        other => panic!("expected one event, got {other:?}"),
    }
}

#[test]
fn connect_packet_is_byte_exact() {
    let mut b = [0u8; 64];
    let n = connect(
        &mut b,
        "c",
        30,
        true,
        Some(Will {
            topic: "t",
            payload: b"x",
            qos: 1,
            retain: true,
        }),
    )
    .unwrap();
    assert_eq!(
        &b[..n],
        &[
            0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x2E, 0, 30, 0, 1, b'c', 0, 1, b't', 0, 1,
            b'x'
        ]
    );
    let n = connect(&mut b, "dev", 0, false, None).unwrap();
    assert_eq!(
        &b[..n],
        &[0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 0, 0, 3, b'd', b'e', b'v']
    );
    assert_eq!(connect(&mut b[..10], "c", 30, true, None), Err(TooLong));
}

#[test]
fn publish_subscribe_and_small_packets_are_byte_exact() {
    let mut b = [0u8; 300];
    let n = publish(&mut b, "a/b", b"hi", 1, true, 0x1234).unwrap();
    assert_eq!(
        &b[..n],
        &[0x33, 9, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'h', b'i']
    );
    let n = publish(&mut b, "a", b"", 0, false, 7).unwrap();
    assert_eq!(&b[..n], &[0x30, 3, 0, 1, b'a']);
    // 200 bytes of remaining length take two length bytes: 0xC8 0x01.
    let n = publish(&mut b, "t", &[b'x'; 197], 0, false, 0).unwrap();
    assert_eq!(&b[..3], &[0x30, 0xC8, 0x01]);
    assert_eq!(n, 203);
    let n = subscribe(&mut b, 2, &[("c", 1), ("d", 1)]).unwrap();
    assert_eq!(&b[..n], &[0x82, 10, 0, 2, 0, 1, b'c', 1, 0, 1, b'd', 1]);
    assert_eq!(puback_bytes(0x0102), vec![0x40, 2, 1, 2]);
    let n = pingreq(&mut b).unwrap();
    assert_eq!(&b[..n], &[0xC0, 0]);
    let n = disconnect(&mut b).unwrap();
    assert_eq!(&b[..n], &[0xE0, 0]);
}

#[test]
fn parser_waits_for_whole_packets_and_refuses_bad_ones() {
    let p = publish_bytes("x/y", b"{}", 1, 9);
    for cut in 0..p.len() {
        assert_eq!(parse(&p[..cut]), Ok(None), "cut at {cut}");
    }
    let (pkt, used) = parse(&p).unwrap().unwrap();
    assert_eq!(used, p.len());
    assert_eq!(
        pkt,
        Packet::Publish {
            topic: "x/y",
            payload: b"{}",
            qos: 1,
            pid: Some(9),
            retain: false,
            dup: false
        }
    );
    assert_eq!(
        parse(&[0x20, 2, 1, 5]).unwrap().unwrap().0,
        Packet::Connack {
            session_present: true,
            code: 5
        }
    );
    assert_eq!(
        parse(&[0x90, 4, 0, 2, 1, 0x80]).unwrap().unwrap().0,
        Packet::Suback {
            pid: 2,
            codes: &[1, 0x80]
        }
    );
    assert_eq!(parse(&[0xD0, 0]).unwrap().unwrap().0, Packet::Pingresp);
    assert_eq!(
        parse(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]),
        Err(Malformed::Length)
    );
    assert_eq!(parse(&[0x36, 4, 0, 1, b'a', 0]), Err(Malformed::Flags));
    assert_eq!(parse(&[0x30, 3, 0, 5, b'a']), Err(Malformed::Truncated));
    assert_eq!(parse(&[0x30, 4, 0, 2, 0xFF, 0xFE]), Err(Malformed::Utf8));
    assert_eq!(parse(&[0x40, 3, 0, 1, 0]), Err(Malformed::Truncated));
}

#[test]
fn connects_with_the_will_then_births_and_subscribes() {
    let mut d = device();
    let mut c: Client = Client::new(settings());
    assert_eq!(c.client_id(), "fm-lab-laser-1");
    assert_eq!(c.poll(5, &mut d), Some(Request::Open));
    assert_eq!(c.poll(6, &mut d), None, "one open at a time");
    c.opened(10, &mut d);
    let sent = drain(&mut c);
    let [Sent::Connect(body)] = sent.as_slice() else {
        panic!("{sent:?}")
    };
    // Protocol name and level, flags: clean session, will QoS 1 retained; keep-alive 8 s.
    assert_eq!(&body[..10], &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x2E, 0, 8]);
    let mut will_topic = vec![0, 30];
    will_topic.extend_from_slice(b"fabmeter/v1/lab/laser-1/status");
    let at = 10 + 2 + "fm-lab-laser-1".len();
    assert_eq!(&body[at..at + 32], will_topic.as_slice());
    let will: Status = decode(&body[at + 34..]).expect("will is a status");
    assert_eq!(will.status, Presence::Offline);
    assert_eq!(will.boot, 1);
    // Nothing is published before the CONNACK.
    assert_eq!(c.poll(20, &mut d), None);
    assert!(c.transmit().is_empty());

    c.received(30, &CONNACK_OK[..1], &mut d);
    assert!(!c.is_connected(), "half a CONNACK");
    c.received(31, &CONNACK_OK[1..], &mut d);
    assert!(c.is_connected());
    let sent = drain(&mut c);
    match sent.as_slice() {
        [Sent::Publish {
            topic,
            payload,
            qos: 1,
            retain: true,
            pid: Some(_),
        }, Sent::Subscribe(sub)] => {
            assert_eq!(topic, "fabmeter/v1/lab/laser-1/status");
            let birth: Status = decode(payload).expect("birth");
            assert_eq!(birth.status, Presence::Online);
            assert_eq!(birth.uptime_ms, Some(31));
            let mut want = Vec::new();
            for f in [
                "fabmeter/v1/lab/laser-1/config",
                "fabmeter/v1/lab/laser-1/cmd",
            ] {
                want.extend_from_slice(&(f.len() as u16).to_be_bytes());
                want.extend_from_slice(f.as_bytes());
                want.push(1);
            }
            assert_eq!(&sub[2..], want.as_slice());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.stats().connects, 1);
}

#[test]
fn events_go_one_at_a_time_and_leave_the_journal_on_puback() {
    let mut d = device();
    let mut c: Client = Client::new(settings());
    connect_at(&mut c, &mut d, 0);
    d.on_badge(100, &[1, 2, 3, 4]); // no allow-list yet: access_denied
    let (pid, ev) = next_event(&mut c, &mut d, 200);
    assert_eq!((ev.boot, ev.seq), (1, 1));
    assert!(matches!(ev.event, EventBody::Counters { .. }));
    assert_eq!(ev.sent_uptime_ms, 200);
    // In flight: nothing else goes out, even much later (but within the ack timeout).
    assert_eq!(c.poll(300, &mut d), None);
    assert!(c.transmit().is_empty());
    // A PUBACK for another id changes nothing.
    c.received(400, &puback_bytes(pid.wrapping_add(100)), &mut d);
    assert_eq!(c.poll(400, &mut d), None);
    assert!(c.transmit().is_empty());
    c.received(500, &puback_bytes(pid), &mut d);
    let (pid2, ev) = next_event(&mut c, &mut d, 600);
    assert_ne!(pid2, pid);
    assert_eq!(ev.seq, 2);
    assert!(matches!(ev.event, EventBody::AccessDenied { .. }));
    c.received(700, &puback_bytes(pid2), &mut d);
    assert_eq!(c.poll(800, &mut d), None);
    assert!(c.transmit().is_empty(), "journal empty");
    assert_eq!(c.stats().events_acked, 2);
}

#[test]
fn config_and_commands_reach_the_device_and_are_acknowledged_after() {
    let mut d = device();
    let mut c: Client = Client::new(settings());
    connect_at(&mut c, &mut d, 0);
    let cfg = publish_bytes("fabmeter/v1/lab/laser-1/config", CONFIG.as_bytes(), 1, 77);
    // Delivered in two pieces, as a UART would.
    let (a, b) = cfg.split_at(50);
    assert_eq!(c.received(10, a, &mut d), None);
    assert!(d.config().is_none());
    assert_eq!(c.received(11, b, &mut d), None);
    assert!(d.config().is_some(), "applied");
    assert!(matches!(drain(&mut c).as_slice(), [Sent::Puback(77)]));
    // A QoS 0 command: no PUBACK. Another machine's topic is ignored.
    let cmd = br#"{"v":1,"id":5,"cmd":"identify"}"#;
    c.received(
        20,
        &publish_bytes("fabmeter/v1/lab/laser-1/cmd", cmd, 0, 0),
        &mut d,
    );
    c.received(
        21,
        &publish_bytes("fabmeter/v1/lab/other/cmd", cmd, 1, 3),
        &mut d,
    );
    assert!(matches!(drain(&mut c).as_slice(), [Sent::Puback(3)]));
    assert_eq!(d.take_action(), Some(crate::device::Action::Identify));
    assert_eq!(d.take_action(), None);
    assert_eq!(c.stats().received, 2);
}

#[test]
fn keep_alive_pings_and_a_missing_pingresp_drops_the_link() {
    let mut d = device();
    let mut c: Client = Client::new(settings());
    connect_at(&mut c, &mut d, 0);
    let (pid, _) = next_event(&mut c, &mut d, 0);
    c.received(0, &puback_bytes(pid), &mut d);
    assert_eq!(c.poll(5_999, &mut d), None);
    assert!(c.transmit().is_empty());
    // 3/4 of 8 s without sending: PINGREQ.
    assert_eq!(c.poll(6_000, &mut d), None);
    assert!(matches!(drain(&mut c).as_slice(), [Sent::Pingreq]));
    c.received(6_100, &[0xD0, 0x00], &mut d);
    assert_eq!(c.poll(12_000, &mut d), None);
    assert!(matches!(drain(&mut c).as_slice(), [Sent::Pingreq]));
    // No answer within the 4 s ack timeout.
    assert_eq!(c.poll(15_999, &mut d), None);
    assert_eq!(c.poll(16_000, &mut d), Some(Request::Close));
    assert_eq!(c.last_failure(), Some(Failure::Timeout));
    c.closed(16_000, &mut d);
    assert_eq!(c.state(), State::Down { retry_at: 16_500 });
}

#[test]
fn reconnects_with_exponential_backoff_reset_by_a_connack() {
    let mut d = device();
    let mut c: Client = Client::new(settings());
    let mut now = 0;
    let mut delays = Vec::new();
    for _ in 0..5 {
        assert_eq!(c.poll(now, &mut d), Some(Request::Open));
        // The link cannot be opened.
        c.closed(now, &mut d);
        let State::Down { retry_at } = c.state() else {
            panic!()
        };
        assert_eq!(c.poll(retry_at - 1, &mut d), None);
        delays.push(retry_at - now);
        now = retry_at;
    }
    assert_eq!(delays, vec![500, 1000, 2000, 3000, 3000]);
    // A CONNECT that gets no CONNACK times out.
    assert_eq!(c.poll(now, &mut d), Some(Request::Open));
    c.opened(now, &mut d);
    assert_eq!(c.poll(now + 3_999, &mut d), None);
    assert_eq!(c.poll(now + 4_000, &mut d), Some(Request::Close));
    c.closed(now + 4_000, &mut d);
    now = now + 4_000 + 3_000;
    connect_at(&mut c, &mut d, now);
    assert_eq!(c.backoff_ms(), 500, "reset by the CONNACK");
    // A refused CONNACK (not authorized) closes the link.
    c.closed(now, &mut d);
    now += 500;
    assert_eq!(c.poll(now, &mut d), Some(Request::Open));
    c.opened(now, &mut d);
    assert_eq!(
        c.received(now, &[0x20, 2, 0, 5], &mut d),
        Some(Request::Close)
    );
    assert_eq!(c.last_failure(), Some(Failure::Refused(5)));
}

#[test]
fn the_journal_resends_in_order_after_a_reconnect() {
    let mut d = device();
    d.on_badge(1, &[1, 2, 3, 4]);
    let mut c: Client = Client::new(settings());
    connect_at(&mut c, &mut d, 0);
    let (_, first) = next_event(&mut c, &mut d, 10);
    assert_eq!(first.seq, 1);
    // The link drops before the PUBACK.
    c.closed(20, &mut d);
    connect_at(&mut c, &mut d, 600);
    let (pid, again) = next_event(&mut c, &mut d, 610);
    assert_eq!((again.boot, again.seq), (1, 1), "resent first");
    assert_eq!(again.sent_uptime_ms, 610, "sent_uptime_ms refreshed");
    c.received(620, &puback_bytes(pid), &mut d);
    let (_, second) = next_event(&mut c, &mut d, 630);
    assert_eq!(second.seq, 2);
}

#[test]
fn an_oversized_publish_is_skipped_and_the_next_packet_still_counts() {
    let mut d = device();
    let mut c: Client<TX_BUF, 256> = Client::new(settings());
    assert_eq!(c.poll(0, &mut d), Some(Request::Open));
    c.opened(0, &mut d);
    c.received(0, &CONNACK_OK, &mut d);
    let _ = c.transmit().len();
    let big = publish_bytes("fabmeter/v1/lab/laser-1/config", CONFIG.as_bytes(), 1, 9);
    assert!(big.len() > 256);
    let mut stream = big.clone();
    stream.extend_from_slice(&[0xD0, 0x00]);
    for chunk in stream.chunks(100) {
        assert_eq!(c.received(5, chunk, &mut d), None);
    }
    assert!(d.config().is_none());
    assert_eq!(c.last_failure(), Some(Failure::TooLarge));
    assert!(c.is_connected());
}

#[test]
fn a_clean_disconnect_publishes_offline_then_disconnects() {
    let mut d = device();
    let mut c: Client = Client::new(settings());
    connect_at(&mut c, &mut d, 0);
    c.disconnect(50, &mut d);
    match drain(&mut c).as_slice() {
        [Sent::Publish {
            payload,
            retain: true,
            qos: 1,
            ..
        }, Sent::Disconnect] => {
            let s: Status = decode(payload).unwrap();
            assert_eq!(s.status, Presence::Offline);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.state(), State::Closing);
}
