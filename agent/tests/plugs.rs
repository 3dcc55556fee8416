//! Smart plugs end to end.
//!
//! - Recorded Shelly and Tasmota sequences (agent/tests/fixtures) through the plug decoder into a
//!   real firmware `Device`, with a badge read by the stdin reader, at the times the messages were
//!   recorded: the journal must hold off→idle→busy→idle→off and the member's session with the busy
//!   time and energy of the recording.
//! - The MQTT path: the same messages published to a real Mosquitto arrive as readings on the
//!   sources' channel, tagged per machine, malformed payloads skipped, and again after the broker
//!   restarted (the source subscribes anew).

use std::time::Duration;

use fabmeter_agent::input::badge::read_badge_lines;
use fabmeter_agent::input::plug::{PlugDecoder, PlugKind};
use fabmeter_agent::input::{spawn_sources, InputsConfig, Reading, SourceContext, UsageConfig};
use fabmeter_agent::protocol::message::{
    Capability, DeviceConfig, EndReason, Event, EventBody, MachineState, Sensing,
};
use fabmeter_agent::protocol::{decode, encode, SCHEMA_VERSION};
use fabmeter_agent::sim::flash::SparseFlash;
use fabmeter_agent::sim::{demo_badge_key, NoRelay, SimDevice, FLASH_SECTORS};
use fabmeter_e2e::Mosquitto;
use fabmeter_firmware::device::{Device, DeviceInfo};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SHELLY: &str = "shellyplusplugs-a8032ab12345";
const TASMOTA: &str = "tasmota_4F2A1C";
const UID: [u8; 4] = [0x04, 0xa2, 0x2b, 0x1a];

const IDLE_MA: u32 = 10;
const BUSY_MA: u32 = 1000;
const DWELL_MS: u64 = 5_000;
const MAINS_V: u32 = 230;
/// The device's uptime when the recording starts.
const START_MS: u64 = 10_000;
/// Time passes for the device in steps of this (its main loop ticks).
const STEP_MS: u64 = 250;

/// One recorded message: topic, payload, and when it was recorded (ms since the first).
struct Msg {
    topic: String,
    payload: String,
    at_ms: u64,
}

/// A `.mqtt` fixture (`<topic> <payload>` a line); times from Shelly's `params.ts` or Tasmota's
/// `Time` (same day).
fn recording(name: &str) -> Vec<Msg> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out: Vec<Msg> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (topic, payload) = l.split_once(' ').expect("<topic> <payload>");
            let v: Value = serde_json::from_str(payload).expect("fixture payloads are JSON");
            let at_ms = if let Some(ts) = v.pointer("/params/ts").and_then(Value::as_f64) {
                (ts * 1000.0).round() as u64
            } else {
                let time = v["Time"].as_str().expect("Time");
                let hms: Vec<u64> = time[11..]
                    .split(':')
                    .map(|x| x.parse().expect("HH:MM:SS"))
                    .collect();
                (hms[0] * 3600 + hms[1] * 60 + hms[2]) * 1000
            };
            Msg {
                topic: topic.into(),
                payload: payload.into(),
                at_ms,
            }
        })
        .collect();
    let t0 = out[0].at_ms;
    for m in &mut out {
        m.at_ms -= t0;
    }
    out
}

fn device() -> SimDevice {
    const INFO: DeviceInfo = DeviceInfo {
        fw: "plug-test",
        caps: &[Capability::Current, Capability::Badge],
    };
    let mut dev: SimDevice = Device::start(
        SparseFlash::new(FLASH_SECTORS),
        NoRelay,
        demo_badge_key(),
        INFO,
        0,
    )
    .expect("device starts");
    let mut allow = heapless::Vec::new();
    allow
        .push(demo_badge_key().hash(&UID))
        .expect("one badge fits");
    let cfg = DeviceConfig {
        v: SCHEMA_VERSION,
        sensing: Sensing::Current {
            idle_ma: IDLE_MA,
            busy_ma: BUSY_MA,
            hysteresis_ma: 5,
            dwell_ms: DWELL_MS as u32,
            window_ms: 1000,
            ma_per_v: 30_000,
            mains_v: MAINS_V,
        },
        allow,
        progress_s: 3600,
        idle_timeout_s: 900,
        max_session_s: 12 * 3600,
        telemetry_s: 0,
        lock: None,
    };
    let mut buf = [0u8; 2048];
    let n = encode(&cfg, &mut buf).expect("config encodes");
    // As the retained config arrives at connection.
    dev.on_config(0, &buf[..n]);
    assert!(dev.config().is_some(), "config applied");
    dev
}

/// Every journaled event, oldest first (acknowledged as they are taken).
fn journal(dev: &mut SimDevice, now: u64) -> Vec<Event> {
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    while let Some(o) = dev.next_to_send(now, &mut buf) {
        if let Some(key) = o.key {
            out.push(decode::<Event>(&buf[..o.len]).expect("events decode"));
            dev.on_puback(key);
        }
    }
    out
}

/// What the recording should produce, computed from the recorded values independently of the
/// meter: when the value in force first reached idle, busy, fell back below busy, and to zero;
/// the energy of the busy spans (held value × mains × span), Wh.
struct Expect {
    on: u64,
    busy: u64,
    done: u64,
    off: u64,
    busy_wh: f64,
}

fn expectations(values: &[(u64, f32)]) -> Expect {
    let idle_a = IDLE_MA as f32 / 1000.0;
    let busy_a = BUSY_MA as f32 / 1000.0;
    let first = |from: u64, pred: &dyn Fn(f32) -> bool| {
        values
            .iter()
            .find(|(t, a)| *t >= from && pred(*a))
            .map(|(t, _)| *t)
            .expect("the recording has it")
    };
    let on = first(0, &|a| a >= idle_a);
    let busy = first(on, &|a| a >= busy_a);
    let done = first(busy, &|a| a < busy_a);
    let off = first(done, &|a| a == 0.0);
    let busy_wh = values
        .windows(2)
        .filter(|w| w[0].0 >= busy && w[1].0 <= done)
        .map(|w| f64::from(w[0].1) * f64::from(MAINS_V) * (w[1].0 - w[0].0) as f64 / 3.6e6)
        .sum();
    Expect {
        on,
        busy,
        done,
        off,
        busy_wh,
    }
}

/// Plays a recording through the decoder into a device, with a badge typed on "stdin" at
/// `badge_at` (ms after the recording's start), and checks the journal.
async fn play(fixture: &str, kind: PlugKind, topic: &str, badge_at: u64) {
    let msgs = recording(fixture);
    let mut decoder = PlugDecoder::new(kind, topic);
    // (device time, reading), and the value in force after each report.
    let mut inputs: Vec<(u64, Reading)> = Vec::new();
    let mut values: Vec<(u64, f32)> = Vec::new();
    for m in &msgs {
        let now = START_MS + m.at_ms;
        let readings = decoder
            .decode(&m.topic, m.payload.as_bytes(), now)
            .unwrap_or_else(|e| panic!("{}: {e}", m.payload));
        if let Some(Reading::Current { amps, .. }) = readings.last() {
            values.push((now, *amps));
        }
        inputs.extend(readings.into_iter().map(|r| (now, r)));
    }
    assert_eq!(decoder.malformed(), 0);

    // The member's badge, typed as a line the way a script or a console reader gives it.
    let (tx, mut rx) = mpsc::channel(4);
    let stats = read_badge_lines(
        "test",
        &b"04:a2:2b:1a\n"[..],
        0,
        &tx,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(stats.badges, 1);
    let (_, badge) = rx.try_recv().expect("the badge was read");
    assert_eq!(badge, Reading::Badge(UID.to_vec()));
    let badge_at = START_MS + badge_at;
    let at = inputs.partition_point(|(t, _)| *t <= badge_at);
    inputs.insert(at, (badge_at, badge));

    let mut dev = device();
    let mut t = 0;
    for (at, r) in inputs {
        while t + STEP_MS < at {
            t += STEP_MS;
            dev.tick(t);
        }
        t = at;
        match r {
            Reading::Current { amps, window_ms } => dev.on_current(at, window_ms, amps),
            Reading::Badge(uid) => dev.on_badge(at, &uid),
            other => panic!("unexpected {other:?}"),
        }
    }
    let end = t + 2 * DWELL_MS;
    while t < end {
        t += STEP_MS;
        dev.tick(t);
    }
    let events = journal(&mut dev, t);

    let e = expectations(&values);
    let states: Vec<(u64, MachineState, MachineState)> = events
        .iter()
        .filter_map(|ev| match ev.event {
            EventBody::State { from, to } => Some((ev.uptime_ms, from, to)),
            _ => None,
        })
        .collect();
    use MachineState::*;
    let want = [
        (e.on, Off, Idle),
        (e.busy, Idle, Busy),
        (e.done, Busy, Idle),
        (e.off, Idle, Off),
    ];
    assert_eq!(states.len(), want.len(), "{fixture}: {states:?}");
    for ((at, from, to), (reported, wfrom, wto)) in states.iter().zip(want) {
        assert_eq!((*from, *to), (wfrom, wto), "{fixture}: {states:?}");
        // Reported once the dwell has passed, at the next tick.
        let due = reported + DWELL_MS;
        assert!(
            (due..=due + STEP_MS).contains(at),
            "{fixture}: {from:?}->{to:?} at {at}, expected {due} (+{STEP_MS})"
        );
    }

    let hash = demo_badge_key().hash(&UID);
    let started: Vec<&Event> = events
        .iter()
        .filter(|ev| matches!(ev.event, EventBody::SessionStarted { .. }))
        .collect();
    assert_eq!(started.len(), 1, "{fixture}: {events:?}");
    assert_eq!(started[0].uptime_ms, badge_at);
    assert_eq!(
        started[0].event,
        EventBody::SessionStarted { badge: hash },
        "{fixture}"
    );
    let ended: Vec<&Event> = events
        .iter()
        .filter(|ev| matches!(ev.event, EventBody::SessionEnded { .. }))
        .collect();
    assert_eq!(ended.len(), 1, "{fixture}: {events:?}");
    let EventBody::SessionEnded {
        session,
        badge,
        busy_s,
        idle_s,
        energy_wh,
        reason,
    } = ended[0].event.clone()
    else {
        unreachable!()
    };
    assert_eq!(session, started[0].seq);
    assert_eq!(badge, hash);
    assert_eq!(reason, EndReason::PowerOff, "{fixture}");
    assert_eq!(
        ended[0].uptime_ms, states[3].0,
        "ends when the plug goes off"
    );
    // Busy and idle time as recorded: both edges are delayed by the same dwell.
    let busy_ms = e.done - e.busy;
    assert!(
        (i64::from(busy_s) * 1000 - busy_ms as i64).abs() <= 1000 + STEP_MS as i64,
        "{fixture}: busy_s {busy_s}, recorded {busy_ms} ms"
    );
    // The session starts at the badge, the busy state a dwell after the job began.
    let idle_ms = (e.busy + DWELL_MS - badge_at) + (e.off - e.done);
    assert!(
        (i64::from(idle_s) * 1000 - idle_ms as i64).abs() <= 1000 + STEP_MS as i64,
        "{fixture}: idle_s {idle_s}, recorded {idle_ms} ms"
    );
    // Energy: the recorded power over the busy spans (plus < 1 Wh of idle), whole Wh.
    assert!(
        (f64::from(energy_wh) - e.busy_wh).abs() <= 1.5,
        "{fixture}: energy {energy_wh} Wh, recorded {:.1} Wh",
        e.busy_wh
    );
    assert!(e.busy_wh > 10.0, "{fixture}: the job is a real load");
}

#[tokio::test]
async fn shelly_recording_drives_the_device() {
    play("shelly_job.mqtt", PlugKind::Shelly, SHELLY, 45_000).await;
}

#[tokio::test]
async fn tasmota_recording_drives_the_device() {
    play(
        "tasmota_job.mqtt",
        PlugKind::Tasmota { channel: None },
        TASMOTA,
        25_000,
    )
    .await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The next reading within `within`, or None.
fn next(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<(usize, Reading)>,
    within: Duration,
) -> Option<(usize, Reading)> {
    rt.block_on(async { tokio::time::timeout(within, rx.recv()).await.ok().flatten() })
}

/// Publishes `msg` until a reading for `machine` arrives (the source subscribes after its
/// connection is up; nothing says when), then drains what else arrived.
fn until_subscribed(
    rt: &tokio::runtime::Runtime,
    broker: &Mosquitto,
    rx: &mut mpsc::Receiver<(usize, Reading)>,
    machine: usize,
    topic: &str,
    payload: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    'probe: loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no reading for machine {machine} within 20 s"
        );
        broker
            .client()
            .publish(topic, payload, 1, false)
            .expect("publish");
        while let Some((m, _)) = next(rt, rx, Duration::from_millis(200)) {
            if m == machine {
                break 'probe;
            }
        }
    }
    while next(rt, rx, Duration::from_millis(300)).is_some() {}
}

/// The amperes of the readings `msgs` give, after `probe`, as a decoder sees them.
fn expected(kind: PlugKind, topic: &str, probe: &Msg, msgs: &[Msg]) -> Vec<f32> {
    let mut d = PlugDecoder::new(kind, topic);
    let _ = d.decode(&probe.topic, probe.payload.as_bytes(), 0);
    msgs.iter()
        .flat_map(|m| {
            d.decode(&m.topic, m.payload.as_bytes(), 0)
                .unwrap_or_default()
        })
        .map(|r| match r {
            Reading::Current { amps, .. } => amps,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Publishes `msgs` and collects `n` readings of `machine` (deadline 20 s).
fn publish_and_collect(
    rt: &tokio::runtime::Runtime,
    broker: &Mosquitto,
    rx: &mut mpsc::Receiver<(usize, Reading)>,
    machine: usize,
    msgs: &[Msg],
    n: usize,
) -> Vec<f32> {
    let cli = broker.client();
    for m in msgs {
        cli.publish(&m.topic, &m.payload, 1, false)
            .expect("publish");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match next(rt, rx, left) {
            Some((m, Reading::Current { amps, .. })) if m == machine => got.push(amps),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("{} of {n} readings within 20 s: {got:?}", got.len()),
        }
    }
    got
}

#[test]
fn plug_messages_over_mqtt_become_readings() {
    let mut broker = Mosquitto::start().expect("mosquitto");
    let rt = runtime();
    let (tx, mut rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let ctx = SourceContext {
        mqtt: Some(rumqttc::MqttOptions::new(
            "agent-test",
            broker.host(),
            broker.port(),
        )),
    };
    let plugs = [
        (
            UsageConfig::Shelly {
                topic: SHELLY.into(),
            },
            PlugKind::Shelly,
            SHELLY,
            "shelly_job.mqtt",
        ),
        (
            UsageConfig::Tasmota {
                topic: TASMOTA.into(),
                channel: None,
            },
            PlugKind::Tasmota { channel: None },
            TASMOTA,
            "tasmota_job.mqtt",
        ),
    ];
    let mut tasks = Vec::new();
    for (machine, (usage, ..)) in plugs.iter().enumerate() {
        let cfg = InputsConfig {
            usage: Some(usage.clone()),
            ..InputsConfig::default()
        };
        let _guard = rt.enter();
        tasks.extend(spawn_sources(machine, &cfg, &ctx, tx.clone(), stop.clone()).expect("spawn"));
    }
    for (machine, (_, kind, topic, fixture)) in plugs.iter().enumerate() {
        let msgs = recording(fixture);
        // A report with power, to know the source is subscribed.
        let probe = msgs
            .iter()
            .find(|m| {
                m.payload.contains("current\":0.028") || m.payload.contains("Current\":0.026")
            })
            .expect("an idle report");
        until_subscribed(&rt, &broker, &mut rx, machine, &probe.topic, &probe.payload);
        let mut sequence: Vec<Msg> = Vec::new();
        // A malformed payload on the plug's topic is skipped; the rest still arrives.
        sequence.push(Msg {
            topic: msgs[1].topic.clone(),
            payload: "{\"truncated\":".into(),
            at_ms: 0,
        });
        let probe = Msg {
            topic: probe.topic.clone(),
            payload: probe.payload.clone(),
            at_ms: probe.at_ms,
        };
        sequence.extend(msgs);
        let want = expected(kind.clone(), topic, &probe, &sequence);
        assert!(want.len() >= 10, "{fixture}: {want:?}");
        let got = publish_and_collect(&rt, &broker, &mut rx, machine, &sequence, want.len());
        assert_eq!(got, want, "{fixture}");
    }

    // The broker restarts: the sources reconnect and subscribe again.
    broker.restart().expect("restart");
    for (machine, (_, _, _, fixture)) in plugs.iter().enumerate() {
        let msgs = recording(fixture);
        let last = msgs.last().expect("messages");
        until_subscribed(&rt, &broker, &mut rx, machine, &last.topic, &last.payload);
    }

    stop.cancel();
    for t in tasks {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), t).await })
            .expect("sources stop at shutdown")
            .expect("source task");
    }
}

#[test]
fn a_plug_without_a_broker_or_with_a_wildcard_is_refused() {
    let rt = runtime();
    let _guard = rt.enter();
    let (tx, _rx) = mpsc::channel(1);
    let shelly = |topic: &str| InputsConfig {
        usage: Some(UsageConfig::Shelly {
            topic: topic.into(),
        }),
        ..InputsConfig::default()
    };
    let e = spawn_sources(
        0,
        &shelly(SHELLY),
        &SourceContext::default(),
        tx.clone(),
        CancellationToken::new(),
    )
    .expect_err("no broker");
    assert!(e.to_string().contains("no broker"), "{e}");
    let ctx = SourceContext {
        mqtt: Some(rumqttc::MqttOptions::new("a", "localhost", 1883)),
    };
    let e = spawn_sources(0, &shelly("shellies/#"), &ctx, tx, CancellationToken::new())
        .expect_err("wildcard");
    assert!(e.to_string().contains("wildcard"), "{e}");
}
