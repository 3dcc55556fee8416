use std::vec::Vec;

use fabmeter_protocol::message::{DenyReason, Status};
use fabmeter_protocol::BadgeHash;

use super::*;
use crate::storage::RamFlash;

/// 64 KiB of 4 KiB sectors: 2 config slots of 2 sectors, 12 journal sectors.
type Flash = RamFlash<{ 64 * 1024 }, 4096>;

/// A relay that records its levels.
#[derive(Default)]
struct Relay(Vec<bool>);
impl embedded_hal::digital::ErrorType for Relay {
    type Error = core::convert::Infallible;
}
impl OutputPin for Relay {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.0.push(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.0.push(true);
        Ok(())
    }
}

type Dev = Device<Flash, Relay>;

const INFO: DeviceInfo = DeviceInfo {
    fw: "0.1.0",
    caps: &[Capability::Current, Capability::Badge, Capability::Relay],
};
const ALICE: [u8; 4] = [0x04, 0xa1, 0xb2, 0xc3];
const BOB: [u8; 7] = [0x04, 0xd2, 0xe3, 0xf4, 0xa5, 0xb6, 0x07];
const EVE: [u8; 4] = [9, 9, 9, 9];

fn key() -> BadgeKey {
    BadgeKey::new(core::array::from_fn(|i| i as u8))
}

fn hash(uid: &[u8]) -> BadgeHash {
    key().hash(uid)
}

/// Alice (ba279e0c1e5c2464) and Bob (05a58c24861524d1) allowed, progress every 60 s.
const CONFIG: &str = r#"{"v":1,"sensing":{"current":{"idle_ma":300,"busy_ma":2000,"hysteresis_ma":150,"dwell_ms":3000,"window_ms":200,"ma_per_v":30000,"mains_v":230}},"allow":["ba279e0c1e5c2464","05a58c24861524d1"],"progress_s":60,"idle_timeout_s":900,"max_session_s":43200,"telemetry_s":0}"#;
const LOCKED: &str = r#"{"v":1,"sensing":{"current":{"idle_ma":300,"busy_ma":2000,"hysteresis_ma":150,"dwell_ms":3000,"window_ms":200,"ma_per_v":30000,"mains_v":230}},"allow":["ba279e0c1e5c2464"],"lock":{"reason":"lens cleaning"}}"#;

fn start(flash: Flash, now: u64) -> Dev {
    Dev::start(flash, Relay::default(), key(), INFO, now).expect("start")
}

/// Sends everything the journal holds, acknowledging each: returns the decoded events.
fn flush(d: &mut Dev, now: u64) -> Vec<Event> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Some(o) = d.next_to_send(now, &mut buf) {
        if o.channel != Channel::Event {
            continue;
        }
        let ev: Event = decode(&buf[..o.len]).expect("valid event");
        assert_eq!(ev.sent_uptime_ms, now.max(ev.uptime_ms));
        assert_eq!(d.next_to_send(now, &mut buf), None, "one in flight");
        d.on_puback(o.key.expect("event key"));
        out.push(ev);
    }
    out
}

fn bodies(evs: &[Event]) -> Vec<EventBody> {
    evs.iter().map(|e| e.event.clone()).collect()
}

/// Feeds a constant RMS current in 200 ms windows from `from` to `to`.
fn current(d: &mut Dev, from: u64, to: u64, amps: f32) {
    let mut t = from;
    while t < to {
        t += 200;
        d.on_current(t, 200, amps);
    }
}

#[test]
fn unconfigured_device_refuses_with_no_allow_list_and_counts_boots() {
    let mut d = start(Flash::new(), 0);
    assert_eq!(d.boot(), 1);
    d.on_badge(1_000, &ALICE);
    let evs = flush(&mut d, 1_500);
    assert_eq!(
        bodies(&evs),
        [
            EventBody::Counters {
                on_s: 0,
                busy_s: 0,
                energy_wh: 0,
                journal_dropped: 0
            },
            EventBody::AccessDenied {
                badge: hash(&ALICE),
                reason: DenyReason::NoAllowList
            }
        ]
    );
    assert_eq!((evs[0].boot, evs[0].seq, evs[1].seq), (1, 1, 2));
    let (flash, relay) = d.release();
    assert_eq!(relay.0, [false], "relay switched off at start, never on");
    let d = start(flash, 0);
    assert_eq!(d.boot(), 2);
}

#[test]
fn a_session_from_badge_in_to_badge_out_with_exact_totals() {
    let mut d = start(Flash::new(), 0);
    d.on_config(100, CONFIG.as_bytes());
    assert_eq!(d.config_hash(), Some(ConfigHash::of(CONFIG.as_bytes())));
    d.on_badge(1_000, &EVE);
    d.on_badge(2_000, &ALICE);
    assert_eq!(d.session().map(|s| s.0), Some(3));
    d.on_badge(2_500, &BOB);
    // Idle (1 A) from 2 s, busy (6 A) from 20 s to 80 s, idle until badge out at 100.5 s.
    current(&mut d, 2_000, 20_000, 1.0);
    current(&mut d, 20_000, 80_000, 6.0);
    current(&mut d, 80_000, 100_400, 1.0);
    d.on_badge(100_500, &ALICE);
    assert_eq!(d.session(), None);
    let evs = flush(&mut d, 101_000);
    let alice = hash(&ALICE);
    let got = bodies(&evs);
    assert_eq!(
        got[1],
        EventBody::AccessDenied {
            badge: hash(&EVE),
            reason: DenyReason::NotAllowed
        }
    );
    assert_eq!(got[2], EventBody::SessionStarted { badge: alice });
    assert_eq!(
        got[3],
        EventBody::AccessDenied {
            badge: hash(&BOB),
            reason: DenyReason::InUse
        }
    );
    // off -> idle at 2.2 + 3 s; idle -> busy at 20.2 + 3 s; busy -> idle at 80.2 + 3 s.
    let states: Vec<(u64, MachineState)> = evs
        .iter()
        .filter_map(|e| match e.event {
            EventBody::State { to, .. } => Some((e.uptime_ms, to)),
            _ => None,
        })
        .collect();
    use MachineState::*;
    assert_eq!(states, [(5_200, Idle), (23_200, Busy), (83_200, Idle)]);
    // Progress at 62 s: busy 23.2..62 = 38.8 s -> 38; length 60 s -> idle 22.
    let progress: Vec<(u64, u32, u32)> = evs
        .iter()
        .filter_map(|e| match e.event {
            EventBody::SessionProgress {
                session: 3,
                busy_s,
                idle_s,
                ..
            } => Some((e.uptime_ms, busy_s, idle_s)),
            _ => None,
        })
        .collect();
    assert_eq!(progress, [(62_000, 38, 22)]);
    // End at 100.5 s: length 98.5 s -> 98; busy 23.2..83.2 = 60 s.
    let end = evs.last().unwrap();
    assert_eq!(end.uptime_ms, 100_500);
    let EventBody::SessionEnded {
        session,
        badge,
        busy_s,
        idle_s,
        energy_wh,
        reason,
    } = end.event
    else {
        panic!("{:?}", end.event);
    };
    assert_eq!(
        (session, badge, busy_s, idle_s, reason),
        (3, alice, 60, 38, EndReason::BadgeOut)
    );
    // 60 s at 1380 W = 23 Wh, plus idle 1 A × 230 W over 35.3 s = 2.25 Wh.
    assert_eq!(energy_wh, 25);
    // seq has no gaps.
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e.seq, i as u32 + 1);
    }
    let (_, relay) = d.release();
    assert_eq!(relay.0, [false, true, false]);
}

#[test]
fn allow_list_and_unsent_events_survive_a_reboot_without_network() {
    let mut d = start(Flash::new(), 0);
    d.on_config(100, CONFIG.as_bytes());
    flush(&mut d, 200);
    d.on_badge(1_000, &BOB);
    current(&mut d, 1_000, 30_000, 6.0);
    current(&mut d, 30_000, 40_000, 0.0);
    // Power lost: nothing was sent since.
    let (flash, _) = d.release();
    let mut d = start(flash, 0);
    assert_eq!(d.boot(), 2);
    assert_eq!(d.config_hash(), Some(ConfigHash::of(CONFIG.as_bytes())));
    d.on_badge(500, &ALICE);
    assert!(d.session().is_some(), "allow-list from flash");
    let evs = flush(&mut d, 700);
    let keys: Vec<(u32, u32)> = evs.iter().map(|e| (e.boot, e.seq)).collect();
    // Boot 1: session start (2), off->busy (3), busy->off (4), end (5); boot 2: counters, start.
    assert_eq!(keys, [(1, 2), (1, 3), (1, 4), (1, 5), (2, 1), (2, 2)]);
    assert_eq!(
        evs[1].event,
        EventBody::State {
            from: MachineState::Off,
            to: MachineState::Busy
        }
    );
    assert!(evs.iter().all(|e| e.sent_uptime_ms == 700.max(e.uptime_ms)));
    // Lifetime counters went on across the reboot.
    // Busy from 4.2 s to 33.2 s (persisted at the state change); 6 A drawn from 4.2 s to 30 s:
    // 25.8 s at 1380 W = 9.9 Wh, whole Wh persisted.
    let EventBody::Counters {
        on_s,
        busy_s,
        energy_wh,
        ..
    } = evs[4].event
    else {
        panic!("{:?}", evs[4].event)
    };
    assert_eq!((on_s, busy_s, energy_wh), (29, 29, 9));
}

#[test]
fn resend_after_disconnect_in_order_with_fresh_sent_time() {
    let mut d = start(Flash::new(), 0);
    d.on_config(0, CONFIG.as_bytes());
    d.on_badge(10, &EVE);
    let mut buf = [0u8; 1024];
    let first = d.next_to_send(1_000, &mut buf).unwrap();
    assert_eq!(first.key, Some(EventKey { boot: 1, seq: 1 }));
    // Connection lost before the PUBACK: the same event again, with the new send time.
    d.on_disconnect();
    let again = d.next_to_send(9_000, &mut buf).unwrap();
    assert_eq!(again.key, first.key);
    let ev: Event = decode(&buf[..again.len]).unwrap();
    assert_eq!((ev.uptime_ms, ev.sent_uptime_ms), (0, 9_000));
    // A late PUBACK of the first copy, then a duplicate one: harmless.
    d.on_puback(first.key.unwrap());
    d.on_puback(first.key.unwrap());
    let next = d.next_to_send(9_100, &mut buf).unwrap();
    assert_eq!(next.key, Some(EventKey { boot: 1, seq: 2 }));
}

#[test]
fn rejected_config_keeps_the_old_one_and_lock_refuses() {
    let mut d = start(Flash::new(), 0);
    d.on_config(0, CONFIG.as_bytes());
    let bad = CONFIG.replace("\"busy_ma\":2000", "\"busy_ma\":100");
    d.on_config(10, bad.as_bytes());
    assert_eq!(d.config_hash(), Some(ConfigHash::of(CONFIG.as_bytes())));
    d.on_config(20, LOCKED.as_bytes());
    d.on_badge(30, &ALICE);
    let evs = flush(&mut d, 40);
    match &evs[1].event {
        EventBody::Fault {
            code: FaultCode::ConfigRejected,
            detail,
        } => {
            // The field and the rule, cut at 64 bytes.
            assert_eq!(
                detail.as_str(),
                "sensing.current.busy_ma must be above idle_ma and at most 100000"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        evs[2].event,
        EventBody::AccessDenied {
            badge: hash(&ALICE),
            reason: DenyReason::MaintenanceLock
        }
    );
    // The birth names the applied (locked) config.
    let mut buf = [0u8; 512];
    let n = d.birth(50, &mut buf).unwrap();
    let st: Status = decode(&buf[..n]).unwrap();
    assert_eq!(st.config_hash, Some(ConfigHash::of(LOCKED.as_bytes())));
    assert_eq!((st.boot, st.uptime_ms), (1, Some(50)));
    let n = d.offline(&mut buf).unwrap();
    assert_eq!(&buf[..n], br#"{"v":1,"status":"offline","boot":1}"#);
}

#[test]
fn power_off_and_commands_end_sessions() {
    let mut d = start(Flash::new(), 0);
    d.on_config(0, CONFIG.as_bytes());
    d.on_badge(0, &ALICE);
    current(&mut d, 0, 10_000, 1.0);
    current(&mut d, 10_000, 20_000, 0.0);
    assert_eq!(d.session(), None);
    d.on_badge(20_000, &BOB);
    d.on_command(21_000, br#"{"v":1,"id":17,"cmd":"end_session"}"#);
    d.on_command(22_000, br#"{"v":1,"id":18,"cmd":"end_session"}"#);
    d.on_command(
        23_000,
        br#"{"v":1,"id":19,"cmd":{"set_time":{"ts":1764412800000}}}"#,
    );
    let evs = flush(&mut d, 30_000);
    let kinds: Vec<&str> = evs.iter().map(|e| e.event.kind()).collect();
    assert_eq!(
        kinds,
        [
            "counters",
            "session_started",
            "state",
            "state",
            "session_ended",
            "session_started",
            "session_ended",
            "command_result",
            "command_result",
            "command_result"
        ]
    );
    let reason = |e: &Event| match e.event {
        EventBody::SessionEnded { reason, .. } => reason,
        _ => panic!(),
    };
    assert_eq!(reason(&evs[4]), EndReason::PowerOff);
    assert_eq!(reason(&evs[6]), EndReason::Interrupted);
    assert_eq!(
        evs[7..].iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        [
            EventBody::CommandResult {
                id: 17,
                outcome: CommandOutcome::Done
            },
            EventBody::CommandResult {
                id: 18,
                outcome: CommandOutcome::Refused
            },
            EventBody::CommandResult {
                id: 19,
                outcome: CommandOutcome::Unsupported
            },
        ]
    );
}

#[test]
fn telemetry_carries_integer_milliamperes_and_watts() {
    use fabmeter_protocol::message::Telemetry;
    let mut d = start(Flash::new(), 0);
    let cfg = CONFIG.replace("\"telemetry_s\":0", "\"telemetry_s\":1");
    d.on_config(0, cfg.as_bytes());
    // 4.75 A at 230 V: 1092.5 W, sent as 4750 mA and 1093 W (rounded to nearest).
    current(&mut d, 0, 1_000, 4.75);
    let mut buf = [0u8; 1024];
    let o = d.next_to_send(1_000, &mut buf).expect("a sample is due");
    assert_eq!(o.channel, Channel::Telemetry);
    let text = core::str::from_utf8(&buf[..o.len]).expect("utf-8");
    assert!(
        text.ends_with(r#""state":"off","current_ma":4750,"power_w":1093}"#),
        "{text}"
    );
    let t: Telemetry = decode(&buf[..o.len]).expect("valid telemetry");
    assert_eq!((t.current_ma, t.power_w), (Some(4750), Some(1093)));
    // A current beyond the protocol's bound is not sent at all (a broken sensor).
    current(&mut d, 1_000, 2_000, 20_000.0);
    while let Some(o) = d.next_to_send(2_000, &mut buf) {
        assert_ne!(o.channel, Channel::Telemetry, "out-of-range sample sent");
        d.on_puback(o.key.expect("an event"));
    }
}

#[test]
fn fault_details_name_what_was_refused() {
    let mut d = start(Flash::new(), 0);
    // A fraction where milliamperes are expected: a type error, no field path on the device.
    d.on_config(
        0,
        CONFIG
            .replace("\"idle_ma\":300", "\"idle_ma\":0.3")
            .as_bytes(),
    );
    d.on_config(10, b"{\"v\":1,");
    d.on_command(20, br#"{"v":2,"id":1,"cmd":"reboot"}"#);
    let details: Vec<(FaultCode, std::string::String)> = flush(&mut d, 30)
        .into_iter()
        .filter_map(|e| match e.event {
            EventBody::Fault { code, detail } => Some((code, detail.as_str().into())),
            _ => None,
        })
        .collect();
    // The device's decoder (serde-json-core) names the problem; when a workspace build unifies
    // the protocol's `std` feature into this host test, serde_json also names the field.
    assert_eq!(details.len(), 3, "{details:?}");
    assert_eq!(details[0].0, FaultCode::ConfigRejected);
    assert!(
        details[0]
            .1
            .starts_with("a value does not fit its field: a fraction, an exponent, a sign ")
            || details[0]
                .1
                .starts_with("sensing.current.idle_ma invalid type: floating point"),
        "{details:?}"
    );
    assert_eq!(
        details[1..],
        [
            (
                FaultCode::ConfigRejected,
                "expected a string key at byte 7".into()
            ),
            (
                FaultCode::Other,
                "cmd refused: v is not a schema version this build reads".into()
            ),
        ]
    );
    assert!(d.config().is_none(), "nothing was applied");
}

#[test]
fn with_an_event_key_every_event_and_every_resend_is_signed() {
    use fabmeter_protocol::sig::EventSigner;
    use fabmeter_protocol::{DeviceKey, Id, SigError};
    let dk = DeviceKey::new([5; 32]);
    let site = Id::new("atelier").unwrap();
    let machine = Id::new("laser-1").unwrap();
    let topic = "fabmeter/v1/atelier/laser-1/event";
    let mut d = start(Flash::new(), 0);
    d.on_config(0, CONFIG.as_bytes());
    d.on_badge(10, &ALICE);
    // Journaled before the key was set: signed when sent all the same.
    d.set_event_key(Some(EventSigner::new(dk.clone(), &site, &machine)));
    let mut buf = [0u8; 1024];
    let first = d.next_to_send(1_000, &mut buf).unwrap();
    assert_eq!(dk.verify(topic, &buf[..first.len]), Ok(()));
    assert_eq!(
        dk.verify("fabmeter/v1/atelier/laser-2/event", &buf[..first.len]),
        Err(SigError::Mismatch)
    );
    // A resend carries a fresh sent time and a fresh signature.
    d.on_disconnect();
    let again = d.next_to_send(9_000, &mut buf).unwrap();
    assert_eq!(dk.verify(topic, &buf[..again.len]), Ok(()));
    let ev: Event = decode(&buf[..again.len]).unwrap();
    assert_eq!(ev.sent_uptime_ms, 9_000);
    d.on_puback(again.key.unwrap());
    // Every event of the flush verifies; without a key they are unsigned again.
    let mut n = 0;
    while let Some(o) = d.next_to_send(9_100, &mut buf) {
        assert_eq!(dk.verify(topic, &buf[..o.len]), Ok(()));
        d.on_puback(o.key.unwrap());
        n += 1;
    }
    assert!(n >= 1, "the session start was sent");
    d.set_event_key(None);
    d.on_badge(20_000, &ALICE);
    let o = d.next_to_send(20_000, &mut buf).unwrap();
    assert_eq!(dk.verify(topic, &buf[..o.len]), Err(SigError::Missing));
}

#[test]
fn the_box_id_is_kept_with_the_boot_counter_and_stamped_on_every_copy() {
    let mut d = start(Flash::new(), 0);
    assert_eq!(d.box_id(), None, "no box id before the board sets one");
    // Journaled before the id was set (the start's counters event): stamped when sent.
    d.set_box_id(0);
    assert_eq!(d.box_id(), None, "0 is not a box id");
    d.set_box_id(0xb0c5);
    let first = flush(&mut d, 100);
    assert!(!first.is_empty());
    assert!(first.iter().all(|e| e.box_id == Some(0xb0c5)), "{first:?}");
    // A reboot keeps it (persisted with the boot counter) and the next boot's events carry it.
    let (flash, _) = d.release();
    let mut d = start(flash, 0);
    assert_eq!((d.boot(), d.box_id()), (2, Some(0xb0c5)));
    let second = flush(&mut d, 100);
    assert!(second
        .iter()
        .all(|e| e.box_id == Some(0xb0c5) && e.boot == 2));
    // A wiped state (a new flash) starts the boot count and the box id again.
    let d = start(Flash::new(), 0);
    assert_eq!((d.boot(), d.box_id()), (1, None));
}

fn confirm(d: &mut Dev, now: u64, boot: u32, from: u32, to: u32) -> usize {
    let json = std::format!(r#"{{"v":1,"boot":{boot},"from":{from},"to":{to}}}"#);
    d.on_confirm(now, json.as_bytes())
        .expect("valid confirmation")
}

/// Sends what goes out now, PUBACKing each; returns the seqs sent.
fn send_all(d: &mut Dev, now: u64) -> Vec<u32> {
    let mut buf = [0u8; 1024];
    let mut seqs = Vec::new();
    while let Some(o) = d.next_to_send(now, &mut buf) {
        if let Some(k) = o.key {
            seqs.push(k.seq);
            d.on_puback(k);
        }
    }
    seqs
}

#[test]
fn with_confirmations_a_puback_keeps_the_event_until_the_collector_confirms_it() {
    let mut d = start(Flash::new(), 0);
    d.set_confirmations(true);
    d.on_config(0, CONFIG.as_bytes());
    d.on_badge(10, &EVE);
    d.on_badge(20, &EVE);
    // counters (1), two denials (2, 3): all go out, several awaiting confirmation at once.
    assert_eq!(send_all(&mut d, 100), [1, 2, 3]);
    assert_eq!(d.journal().len(), 3, "a PUBACK forgets nothing");
    assert_eq!(
        send_all(&mut d, 200),
        Vec::<u32>::new(),
        "nothing sent twice"
    );
    // Confirmations of another boot or of unknown seqs change nothing.
    assert_eq!(confirm(&mut d, 300, 2, 1, 3), 0);
    assert_eq!(confirm(&mut d, 300, 1, 1, 2), 2);
    assert_eq!(d.journal().entries()[0].key.seq, 3);
    assert_eq!(
        confirm(&mut d, 300, 1, 1, 2),
        0,
        "a repeated confirmation is harmless"
    );
    // A bad confirmation is refused and removes nothing.
    assert!(d
        .on_confirm(300, br#"{"v":1,"boot":1,"from":3,"to":2}"#)
        .is_err());
    assert_eq!(d.journal().len(), 1);
    // A reconnect resends what was not confirmed, from the oldest.
    d.on_disconnect();
    assert_eq!(send_all(&mut d, 400), [3]);
    assert_eq!(confirm(&mut d, 500, 1, 3, 3), 1);
    assert!(d.journal().is_empty());
    // The journal survives a reboot with what was unconfirmed.
    d.on_badge(600, &EVE);
    assert_eq!(send_all(&mut d, 700), [4]);
    let (flash, _) = d.release();
    let d = start(flash, 0);
    assert_eq!(d.journal().entries()[0].key, EventKey { boot: 1, seq: 4 });
}

#[test]
fn with_confirmations_a_stall_resends_from_the_oldest_with_a_doubling_wait() {
    let mut d = start(Flash::new(), 0);
    d.set_confirmations(true);
    d.on_config(0, CONFIG.as_bytes());
    d.on_badge(10, &EVE);
    assert_eq!(send_all(&mut d, 1_000), [1, 2]);
    // The wait starts at the first look after the sends.
    assert_eq!(
        send_all(&mut d, 1_000 + STALL_MIN_MS - 1),
        Vec::<u32>::new()
    );
    assert_eq!(send_all(&mut d, 1_000 + STALL_MIN_MS), [1, 2]);
    let t = 1_000 + STALL_MIN_MS;
    assert_eq!(
        send_all(&mut d, t + 2 * STALL_MIN_MS - 1),
        Vec::<u32>::new()
    );
    assert_eq!(send_all(&mut d, t + 2 * STALL_MIN_MS), [1, 2], "doubled");
    // The wait never exceeds the maximum.
    let mut t = t + 2 * STALL_MIN_MS;
    for _ in 0..10 {
        t += STALL_MAX_MS;
        assert_eq!(send_all(&mut d, t), [1, 2]);
    }
    // A confirmation resets it to the minimum.
    assert_eq!(confirm(&mut d, t, 1, 1, 1), 1);
    assert_eq!(send_all(&mut d, t + STALL_MIN_MS - 1), Vec::<u32>::new());
    assert_eq!(send_all(&mut d, t + STALL_MIN_MS), [2]);
    assert_eq!(confirm(&mut d, t, 1, 2, 2), 1);
    assert!(d.journal().is_empty());
    assert_eq!(send_all(&mut d, t + 10 * STALL_MAX_MS), Vec::<u32>::new());
}

#[test]
fn a_rewind_waits_for_the_puback_in_flight() {
    let mut d = start(Flash::new(), 0);
    d.set_confirmations(true);
    d.on_config(0, CONFIG.as_bytes());
    d.on_badge(10, &EVE);
    let mut buf = [0u8; 1024];
    let one = d.next_to_send(0, &mut buf).unwrap().key.unwrap();
    d.on_puback(one);
    let two = d.next_to_send(0, &mut buf).unwrap().key.unwrap();
    // Stalled while seq 2 is in flight: no second message in flight, and its PUBACK then rewinds.
    assert_eq!(d.next_to_send(STALL_MIN_MS, &mut buf), None);
    d.on_puback(two);
    let again = d.next_to_send(STALL_MIN_MS, &mut buf).unwrap().key.unwrap();
    assert_eq!(again.seq, 1);
}

#[test]
fn a_full_journal_evicts_the_oldest_pubacked_unconfirmed_event_first() {
    let mut d = start(Flash::new(), 0);
    d.set_confirmations(true);
    d.on_config(0, CONFIG.as_bytes());
    // counters (seq 1) sent and PUBACKed, never confirmed.
    assert_eq!(send_all(&mut d, 0), [1]);
    let dropped_before = d.lifetime().journal_dropped;
    let mut now = 10;
    while d.journal().len() < JOURNAL_CAP {
        d.on_badge(now, &EVE);
        now += 10;
    }
    d.on_badge(now, &EVE);
    assert_eq!(d.journal().len(), JOURNAL_CAP);
    assert_eq!(d.evicted_unconfirmed(), 1);
    assert_eq!(d.journal().entries()[0].key.seq, 2, "the PUBACKed one went");
    assert_eq!(
        d.lifetime().journal_dropped,
        dropped_before,
        "nothing unsent was dropped"
    );
    // With no PUBACKed event left, the overflow policy drops and counts as before.
    d.on_badge(now + 10, &EVE);
    assert_eq!(d.evicted_unconfirmed(), 1);
    assert_eq!(d.lifetime().journal_dropped, dropped_before + 1);
}

#[test]
fn without_confirmations_a_puback_still_removes_the_event() {
    let mut d = start(Flash::new(), 0);
    assert!(!d.confirmations());
    assert_eq!(send_all(&mut d, 0), [1]);
    assert!(d.journal().is_empty());
}
