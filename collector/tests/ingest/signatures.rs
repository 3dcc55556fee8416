//! Per-device event signatures against a real Mosquitto (docs/PROTOCOL.md "Signatures",
//! docs/SECURITY.md): with `require_signed_events`, a client that can publish on a machine's
//! topic but does not hold that machine's key can neither open nor end a session.

use fabmeter_collector::device_keys;
use fabmeter_collector::ledger::{Ledger, SessionQuery};
use fabmeter_e2e::{wait_until, Mosquitto};
use fabmeter_protocol::message::{EndReason, Event, EventBody};
use fabmeter_protocol::{encode_to_vec, DeviceKey};

use super::helpers::*;
use super::{open_ledger, LONG};

fn event(seq: u32, body: EventBody) -> Vec<u8> {
    encode_to_vec(&Event {
        v: 1,
        box_id: None,
        boot: 1,
        seq,
        uptime_ms: u64::from(seq) * 1000,
        sent_uptime_ms: u64::from(seq) * 1000,
        ts: Some(T0 + u64::from(seq) * 1000),
        event: body,
    })
    .expect("valid event")
}

fn signed(key: &DeviceKey, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 1024];
    buf[..payload.len()].copy_from_slice(payload);
    let n = key.sign(topic, &mut buf, payload.len()).expect("sign");
    buf[..n].to_vec()
}

fn msg(topic: &str, payload: Vec<u8>) -> Msg {
    Msg {
        topic: topic.to_owned(),
        payload,
    }
}

#[test]
fn without_the_device_key_a_broker_client_can_neither_open_nor_end_a_session() {
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_file = dir.path().join("device-keys.toml");
    let laser_key = DeviceKey::new([11; 32]);
    let cnc_key = DeviceKey::new([22; 32]);
    device_keys::store(&keys_file, "laser-1", &laser_key).expect("store key");
    device_keys::store(&keys_file, "cnc", &cnc_key).expect("store key");
    let mut config = site_config(&broker, &["laser-1", "cnc"], dir.path());
    config.security.require_signed_events = true;
    config.security.device_keys_file = Some(keys_file);
    let collector = TestCollector::start(config, dir);
    wait_until(LONG, "collector subscribed", || {
        collector.metric("fabmeter_mqtt_up") == 1
    });

    let laser = format!("fabmeter/v1/{SITE}/laser-1/event");
    let cnc = format!("fabmeter/v1/{SITE}/cnc/event");
    let b = badge();
    let start = event(1, EventBody::SessionStarted { badge: b });
    let end = |busy_s| {
        event(
            2,
            EventBody::SessionEnded {
                session: 1,
                badge: b,
                busy_s,
                idle_s: 0,
                energy_wh: 1,
                reason: EndReason::BadgeOut,
            },
        )
    };
    let good_start = signed(&laser_key, &laser, &start);
    // The real end: 3600 busy seconds. An attacker ends it first at 0, to erase the usage.
    let good_end = signed(&laser_key, &laser, &end(3600));
    let tampered = String::from_utf8(good_end.clone())
        .expect("utf8")
        .replace(r#""busy_s":3600"#, r#""busy_s":3000"#)
        .into_bytes();
    assert_eq!(tampered.len(), good_end.len(), "one byte changed");
    let attacks = vec![
        // Unsigned end of the open session (what a leaked broker account alone can send).
        msg(&laser, end(0)),
        // Signed with a wrong key.
        msg(&laser, signed(&DeviceKey::new([99; 32]), &laser, &end(0))),
        // The genuine signed end with one byte of the payload changed.
        msg(&laser, tampered),
        // Signed correctly by another machine's device, for its own topic, replayed here.
        msg(&laser, signed(&cnc_key, &cnc, &end(0))),
        // Unsigned session opened on another machine, billed to the badge's member.
        msg(&cnc, event(1, EventBody::SessionStarted { badge: b })),
    ];
    let refused = attacks.len() as u64;
    let mut first = vec![msg(&laser, good_start)];
    first.extend(attacks);
    publish_all(broker.port(), "device-and-attacker", &first);
    wait_until(LONG, "every message acknowledged", || {
        collector.metric("fabmeter_acked_total") >= first.len() as u64
    });
    assert_eq!(collector.metric("fabmeter_accepted_total"), 1);
    assert_eq!(
        collector.metric("fabmeter_rejected_total{reason=\"signature\"}"),
        refused
    );
    fn sessions(l: &impl Ledger) -> Vec<fabmeter_collector::ledger::SessionView> {
        l.sessions(&SessionQuery {
            limit: Some(100),
            ..Default::default()
        })
        .expect("sessions")
    }
    {
        let l = open_ledger(collector.dir.path());
        assert_eq!(
            l.totals().expect("totals").events,
            1,
            "only the signed start"
        );
        let s = sessions(&l);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].machine.as_str(), s[0].session), ("laser-1", 1));
        assert_ne!(s[0].status, "closed", "{s:?}");
    }
    // The dead letters name the reason and the machine.
    let dead: serde_json::Value =
        serde_json::from_str(&collector.get("/api/dead-letters").text()).expect("json");
    let dead = dead["dead_letters"].as_array().expect("array").clone();
    assert_eq!(dead.len() as u64, refused);
    assert!(dead.iter().all(|d| d["reason"] == "signature"), "{dead:?}");

    // The device's real end, with the (boot, seq) the attacker tried: accepted, not a duplicate.
    publish_all(broker.port(), "device", &[msg(&laser, good_end)]);
    wait_until(LONG, "the real end acknowledged", || {
        collector.metric("fabmeter_acked_total") > first.len() as u64
    });
    assert_eq!(collector.metric("fabmeter_accepted_total"), 2);
    assert_eq!(collector.metric("fabmeter_duplicate_total"), 0);
    let l = open_ledger(collector.dir.path());
    let s = sessions(&l);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (s[0].status.as_str(), s[0].busy_s, s[0].member.as_deref()),
        ("closed", 3600, Some("alice"))
    );
}
