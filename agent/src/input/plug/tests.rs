use super::*;

const SHELLY: &str = "shellyplusplugs-a8032ab12345";
const TASMOTA: &str = "tasmota_4F2A1C";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn current(r: &Reading) -> (f32, u64) {
    match r {
        Reading::Current { amps, window_ms } => (*amps, *window_ms),
        other => panic!("expected a current, got {other:?}"),
    }
}

/// The value a report leaves in force: (amperes, window of the last reading).
fn amps(r: Vec<Reading>) -> (f32, u64) {
    current(r.last().expect("at least one reading"))
}

#[test]
fn topics_follow_the_plug_kind() {
    let s = PlugDecoder::new(PlugKind::Shelly, SHELLY);
    assert_eq!(
        s.topics(),
        [
            format!("{SHELLY}/status/switch:0"),
            format!("{SHELLY}/events/rpc"),
            format!("{SHELLY}/online"),
        ]
    );
    let t = PlugDecoder::new(PlugKind::Tasmota { channel: None }, TASMOTA);
    assert_eq!(
        t.topics(),
        [
            format!("tele/{TASMOTA}/SENSOR"),
            format!("stat/{TASMOTA}/STATUS10"),
            format!("tele/{TASMOTA}/LWT"),
        ]
    );
}

#[test]
fn shelly_full_status_uses_the_reported_current() {
    let mut d = PlugDecoder::new(PlugKind::Shelly, SHELLY);
    let topic = format!("{SHELLY}/status/switch:0");
    let (a, w) = amps(
        d.decode(&topic, &fixture("shelly_status_switch0.json"), 1_000)
            .unwrap(),
    );
    assert!((a - 5.241).abs() < 1e-6, "{a}");
    assert_eq!(w, 0, "the first report covers nothing");
    // The same value again: one reading, the value over the time since the last report.
    let r = d
        .decode(&topic, &fixture("shelly_status_switch0.json"), 31_000)
        .unwrap();
    assert_eq!(r.len(), 1, "{r:?}");
    let (a, w) = current(&r[0]);
    assert!((a - 5.241).abs() < 1e-6);
    assert_eq!(w, 30_000);
}

#[test]
fn shelly_notifications_overlay_the_known_status() {
    let mut d = PlugDecoder::new(PlugKind::Shelly, SHELLY);
    let rpc = format!("{SHELLY}/events/rpc");
    let (a, _) = amps(
        d.decode(&rpc, &fixture("shelly_notify_status.json"), 0)
            .unwrap(),
    );
    assert!((a - 5.178).abs() < 1e-6);
    // Power only, after a known voltage: power / voltage.
    let msg = |sw: &str| {
        format!(
            r#"{{"src":"{SHELLY}","dst":"{SHELLY}/events","method":"NotifyStatus","params":{{"ts":1.0,"switch:0":{sw}}}}}"#
        )
    };
    let mut d = PlugDecoder::new(PlugKind::Shelly, SHELLY);
    d.decode(&rpc, msg(r#"{"id":0,"voltage":240.0}"#).as_bytes(), 0)
        .unwrap();
    let (a, _) = amps(
        d.decode(&rpc, msg(r#"{"id":0,"apower":1200.0}"#).as_bytes(), 1_000)
            .unwrap(),
    );
    assert!((a - 5.0).abs() < 1e-6, "{a}");
    // Energy counters and temperature only: the unchanged value over its span.
    let r = d
        .decode(
            &rpc,
            msg(r#"{"id":0,"aenergy":{"total":1.0},"temperature":{"tC":30.0}}"#).as_bytes(),
            2_000,
        )
        .unwrap();
    assert_eq!(
        r,
        vec![Reading::Current {
            amps: 5.0,
            window_ms: 1_000
        }]
    );
    // Switched off: the 5 A span closes, then 0 A whatever the last power was.
    let r = d
        .decode(
            &rpc,
            msg(r#"{"id":0,"output":false,"source":"button"}"#).as_bytes(),
            3_000,
        )
        .unwrap();
    assert_eq!(
        r,
        vec![
            Reading::Current {
                amps: 5.0,
                window_ms: 1_000
            },
            Reading::Current {
                amps: 0.0,
                window_ms: 0
            }
        ]
    );
    // Another method, another component: nothing.
    let other =
        format!(r#"{{"src":"{SHELLY}","method":"NotifyEvent","params":{{"ts":1.0,"events":[]}}}}"#);
    assert_eq!(d.decode(&rpc, other.as_bytes(), 4_000).unwrap(), vec![]);
    let wifi = format!(
        r#"{{"src":"{SHELLY}","method":"NotifyStatus","params":{{"ts":1.0,"wifi":{{"rssi":-60}}}}}}"#
    );
    assert_eq!(d.decode(&rpc, wifi.as_bytes(), 5_000).unwrap(), vec![]);
    assert_eq!(d.malformed(), 0);
    // Before any power is known, a status carries no value.
    let mut fresh = PlugDecoder::new(PlugKind::Shelly, SHELLY);
    let on = msg(r#"{"id":0,"output":true,"source":"button"}"#);
    assert_eq!(fresh.decode(&rpc, on.as_bytes(), 0).unwrap(), vec![]);
}

#[test]
fn power_without_voltage_assumes_230_v() {
    let mut d = PlugDecoder::new(PlugKind::Shelly, SHELLY);
    let topic = format!("{SHELLY}/status/switch:0");
    let (a, _) = amps(
        d.decode(&topic, br#"{"id":0,"output":true,"apower":460.0}"#, 0)
            .unwrap(),
    );
    assert!((a - 2.0).abs() < 1e-6, "{a}");
}

#[test]
fn tasmota_single_and_multi_channel() {
    let tele = format!("tele/{TASMOTA}/SENSOR");
    let mut d = PlugDecoder::new(PlugKind::Tasmota { channel: None }, TASMOTA);
    let (a, _) = amps(d.decode(&tele, &fixture("tasmota_sensor.json"), 0).unwrap());
    assert!((a - 5.322).abs() < 1e-6);
    // Two channels, none configured: the sum.
    let (a, _) = amps(
        d.decode(&tele, &fixture("tasmota_sensor_dual.json"), 10_000)
            .unwrap(),
    );
    assert!((a - (5.110 + 0.109)).abs() < 1e-5, "{a}");
    // Channel 1 configured: that channel only.
    let mut d1 = PlugDecoder::new(PlugKind::Tasmota { channel: Some(1) }, TASMOTA);
    let (a, _) = amps(
        d1.decode(&tele, &fixture("tasmota_sensor_dual.json"), 0)
            .unwrap(),
    );
    assert!((a - 0.109).abs() < 1e-6, "{a}");
    // Power only, arrays, no voltage: power / 230 V per channel.
    let (a, _) = amps(
        d.decode(&tele, &fixture("tasmota_sensor_power_only.json"), 20_000)
            .unwrap(),
    );
    assert!((a - 5.0).abs() < 1e-5, "{a}");
    // STATUS10 answers carry the same ENERGY object.
    let stat = format!("stat/{TASMOTA}/STATUS10");
    let r = d
        .decode(&stat, &fixture("tasmota_status10.json"), 22_000)
        .unwrap();
    let (prev, w) = current(&r[0]);
    assert!((prev - 5.0).abs() < 1e-5 && w == 2_000, "{r:?}");
    let (a, w) = amps(r);
    assert!((a - 5.323).abs() < 1e-6);
    assert_eq!(w, 0);
    // A sensor report without ENERGY (a temperature probe): nothing.
    let r = d
        .decode(
            &tele,
            br#"{"Time":"2026-12-01T14:00:00","DS18B20":{"Temperature":21.5}}"#,
            23_000,
        )
        .unwrap();
    assert_eq!(r, vec![]);
}

#[test]
fn a_plug_going_offline_is_zero_amperes() {
    let mut t = PlugDecoder::new(PlugKind::Tasmota { channel: None }, TASMOTA);
    let lwt = format!("tele/{TASMOTA}/LWT");
    assert_eq!(t.decode(&lwt, b"Online", 0).unwrap(), vec![]);
    amps(
        t.decode(
            &format!("tele/{TASMOTA}/SENSOR"),
            &fixture("tasmota_sensor.json"),
            0,
        )
        .unwrap(),
    );
    assert_eq!(amps(t.decode(&lwt, b"Offline", 5_000).unwrap()), (0.0, 0));
    let mut s = PlugDecoder::new(PlugKind::Shelly, SHELLY);
    amps(
        s.decode(
            &format!("{SHELLY}/status/switch:0"),
            &fixture("shelly_status_switch0.json"),
            0,
        )
        .unwrap(),
    );
    let online = format!("{SHELLY}/online");
    assert_eq!(s.decode(&online, b"true", 1_000).unwrap(), vec![]);
    assert_eq!(amps(s.decode(&online, b"false", 2_000).unwrap()), (0.0, 0));
}

#[test]
fn a_missing_channel_names_what_the_device_reports() {
    let tele = format!("tele/{TASMOTA}/SENSOR");
    let mut d = PlugDecoder::new(PlugKind::Tasmota { channel: Some(3) }, TASMOTA);
    let e = d
        .decode(&tele, &fixture("tasmota_sensor_dual.json"), 0)
        .unwrap_err();
    assert!(e.contains("no channel 3") && e.contains("reports 2"), "{e}");
    assert_eq!(d.malformed(), 1);
}

#[test]
fn malformed_payloads_are_counted_and_keep_the_state() {
    let tele = format!("tele/{TASMOTA}/SENSOR");
    let mut d = PlugDecoder::new(PlugKind::Tasmota { channel: None }, TASMOTA);
    amps(d.decode(&tele, &fixture("tasmota_sensor.json"), 0).unwrap());
    let bad: [(&[u8], &str); 5] = [
        (b"not json", "not JSON"),
        (br#"{"ENERGY":{"Power":"lots"}}"#, "Power"),
        (br#"{"ENERGY":{"Power":-5}}"#, "non-negative"),
        (br#"{"ENERGY":{"Total":1.0}}"#, "neither Current nor Power"),
        (br#"{"ENERGY":[1,2]}"#, "not an object"),
    ];
    for (i, (payload, problem)) in bad.iter().enumerate() {
        let e = d.decode(&tele, payload, 1_000 + i as u64).unwrap_err();
        assert!(e.contains(problem), "{e} should mention {problem}");
    }
    assert_eq!(d.malformed(), 5);
    // The next good report's window runs from the last good one.
    let (_, w) = amps(
        d.decode(&tele, &fixture("tasmota_sensor.json"), 10_000)
            .unwrap(),
    );
    assert_eq!(w, 10_000, "one reading: the unchanged value over 10 s");
    let mut s = PlugDecoder::new(PlugKind::Shelly, SHELLY);
    let status = format!("{SHELLY}/status/switch:0");
    amps(
        s.decode(&status, &fixture("shelly_status_switch0.json"), 0)
            .unwrap(),
    );
    let e = s
        .decode(&status, br#"{"id":0,"output":"yes"}"#, 500)
        .unwrap_err();
    assert!(e.contains("output"), "{e}");
    // A partial update whose second field is bad changes nothing, not even its first field.
    let rpc = format!("{SHELLY}/events/rpc");
    let bad = r#"{"method":"NotifyStatus","params":{"switch:0":{"output":false,"apower":"x"}}}"#;
    let e = s.decode(&rpc, bad.as_bytes(), 700).unwrap_err();
    assert!(e.contains("apower"), "{e}");
    assert_eq!(s.malformed(), 2);
    // The status known before the bad payloads still holds.
    let aenergy = r#"{"method":"NotifyStatus","params":{"switch:0":{"aenergy":{"total":1.0}}}}"#;
    let (a, w) = amps(s.decode(&rpc, aenergy.as_bytes(), 1_000).unwrap());
    assert!((a - 5.241).abs() < 1e-6 && w == 1_000, "{a} {w}");
}

#[test]
fn windows_are_bounded() {
    let tele = format!("tele/{TASMOTA}/SENSOR");
    let mut d = PlugDecoder::new(PlugKind::Tasmota { channel: None }, TASMOTA);
    amps(d.decode(&tele, &fixture("tasmota_sensor.json"), 0).unwrap());
    let (_, w) = amps(
        d.decode(&tele, &fixture("tasmota_sensor.json"), 86_400_000)
            .unwrap(),
    );
    assert_eq!(w, MAX_WINDOW_MS);
}

#[test]
fn a_plug_needs_the_agents_broker() {
    let e = plug_options("machines.laser.usage", None, 0).unwrap_err();
    assert!(e.to_string().contains("no broker"), "{e}");
    let base = MqttOptions::new("agent-7", "localhost", 1883);
    let o = plug_options("x", Some(&base), 2).unwrap();
    assert_eq!(o.client_id(), "agent-7-plug-2");
}
