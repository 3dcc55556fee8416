//! The firmware image under QEMU (`lm3s6965evb`, Cortex-M3) against a real Mosquitto.
//!
//! The image's UART0 is bridged by QEMU (`-serial tcp:127.0.0.1:PORT,reconnect=1`) to the broker
//! the test started: the transparent serial-to-TCP mode of a UART Wi-Fi/Ethernet module. The
//! image is built with the `scenario` feature: once its retained config arrived it plays a
//! scripted session (idle, badge in at +1 s, busy at +1 s, idle at +6 s, badge out at +7 s) with
//! exact timestamps, so the events and their totals are known in advance.
//!
//! Needs `qemu-system-arm` (Debian package `qemu-system-arm`; override with `FABMETER_QEMU_BIN`),
//! the `thumbv7m-none-eabi` rustup target, and `mosquitto`. The image is built by the test with
//! `cargo build --profile firmware` into `<workspace>/target/qemu` (its own target dir, so it never waits
//! on the lock of the running test build).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fabmeter_e2e::{is_executable_file, wait_for_exit, Mosquitto, ReceivedMessage, Subscription};
use fabmeter_protocol::message::{EndReason, Event, EventBody, MachineState, Presence, Status};
use fabmeter_protocol::{decode, BadgeHash, DeviceKey};

const T: &str = "fabmeter/v1/lab/laser-1";
const CONFIG: &str = r#"{"v":1,"sensing":{"run_signal":{"active_low":false,"dwell_ms":0}},"allow":["ba279e0c1e5c2464"],"progress_s":2,"idle_timeout_s":900,"max_session_s":43200,"telemetry_s":0}"#;
const WAIT: Duration = Duration::from_secs(30);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `qemu-system-arm`, or a failure naming the package.
fn qemu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FABMETER_QEMU_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("qemu-system-arm"))
        .find(|p| is_executable_file(p))
        .unwrap_or_else(|| {
            panic!(
                "qemu-system-arm not found: install the Debian package `qemu-system-arm` \
                 (apt-get install qemu-system-arm) or set FABMETER_QEMU_BIN"
            )
        })
}

/// Builds `fabmeter-qemu` with the `firmware` profile and these features into
/// `target/{dir}` (one directory per feature set: the tests run in parallel); returns the ELF.
fn build_image(dir: &str, features: &[&str]) -> PathBuf {
    let ws = workspace();
    let target_dir = ws.join("target").join(dir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec![
        "build",
        "--profile",
        "firmware",
        "-p",
        "fabmeter-firmware",
        "--bin",
        "fabmeter-qemu",
        "--target",
        "thumbv7m-none-eabi",
    ];
    let features = features.join(",");
    if !features.is_empty() {
        args.extend(["--features", features.as_str()]);
    }
    let out = Command::new(cargo)
        .current_dir(&ws)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(&args)
        .output()
        .expect("run cargo build for the firmware image");
    assert!(
        out.status.success(),
        "building the firmware image failed (is the rustup target installed? \
         `rustup target add thumbv7m-none-eabi`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join("thumbv7m-none-eabi/firmware/fabmeter-qemu")
}

/// Builds the scenario image once per test binary.
fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_image("qemu", &["scenario", "semihosting"]))
}

/// The release image (no test features) keeps to the budget of issue #4 and docs/BENCHMARKS.md:
/// at most 64 KiB of flash (`text`) and 16 KiB of static RAM (`bss`; `data` is the RAM stand-in
/// for the MCU's flash on QEMU, see BENCHMARKS.md).
#[test]
fn the_release_image_fits_its_flash_and_ram_budget() {
    let elf = build_image("qemu-release", &[]);
    let size = std::env::var_os("FABMETER_SIZE_BIN").unwrap_or_else(|| "arm-none-eabi-size".into());
    let out = Command::new(&size).arg(&elf).output().unwrap_or_else(|e| {
        panic!("cannot run {size:?} ({e}): install the Debian package binutils-arm-none-eabi")
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Berkeley format: "text data bss dec hex filename".
    let text = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|n| n.parse().ok())
        .collect();
    let [flash, _data, bss] = figures[..] else {
        panic!("unexpected size output:\n{text}")
    };
    assert!(
        flash <= 64 * 1024,
        "flash {flash} B is over the 64 KiB budget:\n{text}"
    );
    assert!(
        bss <= 16 * 1024,
        "static RAM {bss} B is over the 16 KiB budget:\n{text}"
    );
}

/// QEMU running the image, its UART on the broker's port; killed on drop.
struct Qemu {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Qemu {
    fn start(port: u16) -> Qemu {
        let qemu = qemu_bin();
        let image = image();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("qemu.log");
        let out = std::fs::File::create(&log).expect("qemu log");
        let child = Command::new(qemu)
            .args([
                "-cpu",
                "cortex-m3",
                "-machine",
                "lm3s6965evb",
                "-display",
                "none",
                "-monitor",
                "none",
                "-semihosting-config",
                "enable=on,target=native",
                "-serial",
                &format!("tcp:127.0.0.1:{port},reconnect=1"),
                "-kernel",
            ])
            .arg(image)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn qemu-system-arm");
        Qemu {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = wait_for_exit(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

fn broker() -> Mosquitto {
    Mosquitto::builder()
        .persistence(true)
        // The subscriber's persistent session must survive a SIGKILL of the broker.
        .extra_config("autosave_interval 1")
        .start()
        .expect("mosquitto (Debian package mosquitto)")
}

fn subscribe(broker: &Mosquitto) -> Subscription {
    broker
        .client()
        .client_id("e2e-sub")
        .clean_session(false)
        .subscribe(&[&format!("{T}/#")], 1)
        .expect("subscribe")
}

/// The image's device key (`DEVICE_KEY` of `fabmeter-qemu`: bytes 0x20 to 0x3f).
fn device_key() -> DeviceKey {
    DeviceKey::new(core::array::from_fn(|i| 0x20 + i as u8))
}

/// A received event, decoded; every event the image sends must carry a valid signature.
fn event(m: &ReceivedMessage) -> Option<Event> {
    (m.topic == format!("{T}/event")).then(|| {
        device_key()
            .verify(&m.topic, &m.payload)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&m.payload)));
        decode::<Event>(&m.payload).expect("decodable event")
    })
}

fn status(m: &ReceivedMessage) -> Option<Status> {
    (m.topic == format!("{T}/status"))
        .then(|| decode::<Status>(&m.payload).expect("decodable status"))
}

fn is_session_end(m: &ReceivedMessage) -> bool {
    event(m).is_some_and(|e| matches!(e.event, EventBody::SessionEnded { .. }))
}

/// The events of the scripted session, in seq order, without the uptimes.
fn expected() -> Vec<EventBody> {
    use MachineState::*;
    let alice = BadgeHash::from_hex("ba279e0c1e5c2464").unwrap();
    let progress = |busy_s, idle_s| EventBody::SessionProgress {
        session: 3,
        busy_s,
        idle_s,
        energy_wh: 0,
    };
    vec![
        EventBody::Counters {
            on_s: 0,
            busy_s: 0,
            energy_wh: 0,
            journal_dropped: 0,
        },
        EventBody::State {
            from: Off,
            to: Idle,
        },
        EventBody::SessionStarted { badge: alice },
        EventBody::State {
            from: Idle,
            to: Busy,
        },
        progress(2, 0),
        progress(4, 0),
        EventBody::State {
            from: Busy,
            to: Idle,
        },
        progress(5, 1),
        EventBody::SessionEnded {
            session: 3,
            badge: alice,
            busy_s: 5,
            idle_s: 1,
            energy_wh: 0,
            reason: EndReason::BadgeOut,
        },
    ]
}

/// Dedups by (boot, seq), checking that copies differ in `sent_uptime_ms` only; returns the
/// events in seq order and the number of duplicates.
fn dedup(events: &[Event]) -> (Vec<Event>, usize) {
    let mut by_key = BTreeMap::new();
    let mut dups = 0;
    for e in events {
        if let Some(first) = by_key.get(&(e.boot, e.seq)) {
            let mut copy = e.clone();
            copy.sent_uptime_ms = (first as &Event).sent_uptime_ms;
            assert_eq!(&copy, first, "a duplicate differs beyond sent_uptime_ms");
            dups += 1;
        } else {
            by_key.insert((e.boot, e.seq), e.clone());
        }
    }
    (by_key.into_values().collect(), dups)
}

fn check_session(events: &[Event]) {
    let keys: Vec<(u32, u32)> = events.iter().map(|e| (e.boot, e.seq)).collect();
    let want_keys: Vec<(u32, u32)> = (1..=9).map(|s| (1, s)).collect();
    assert_eq!(keys, want_keys, "exactly seq 1..=9 of boot 1");
    let bodies: Vec<EventBody> = events.iter().map(|e| e.event.clone()).collect();
    assert_eq!(bodies, expected());
    // Scripted exactly: the session lasts 6 s of device uptime, progress every 2 s.
    let up = |seq: usize| events[seq - 1].uptime_ms;
    assert_eq!(up(9) - up(3), 6000);
    assert_eq!(up(5) - up(3), 2000);
    assert_eq!(up(6) - up(3), 4000);
    for e in events {
        assert!(e.sent_uptime_ms >= e.uptime_ms);
    }
}

#[test]
fn scripted_session_under_qemu_reaches_the_broker_and_the_will_follows_a_kill() {
    let broker = broker();
    broker
        .client()
        .publish(&format!("{T}/config"), CONFIG, 1, true)
        .expect("retained config");
    let mut sub = subscribe(&broker);
    let mut qemu = Qemu::start(broker.port());

    let seen = sub
        .wait_for(WAIT, "the session_ended event", is_session_end)
        .unwrap_or_else(|e| panic!("{e}\nqemu log:\n{}", qemu.log()));
    let births: Vec<Status> = seen.iter().filter_map(status).collect();
    assert_eq!(births.len(), 1, "{births:?}");
    assert_eq!(births[0].status, Presence::Online);
    assert_eq!(births[0].boot, 1);
    assert_eq!(births[0].fw.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    let events: Vec<Event> = seen.iter().filter_map(event).collect();
    let (events, dups) = dedup(&events);
    assert_eq!(dups, 0, "no reconnect, no duplicate");
    check_session(&events);
    // Birth is retained.
    let retained = broker
        .client()
        .subscribe(&[&format!("{T}/status")], 1)
        .expect("subscribe status")
        .recv_timeout(WAIT)
        .expect("retained birth");
    assert!(retained.retained);

    // Kill QEMU: the TCP connection drops without DISCONNECT, the broker publishes the will.
    qemu.kill();
    let seen = sub
        .wait_for(WAIT, "the offline will", |m| {
            status(m).is_some_and(|s| s.status == Presence::Offline)
        })
        .expect("LWT");
    assert!(seen.iter().filter_map(event).next().is_none(), "{seen:?}");
    let will = status(seen.last().unwrap()).unwrap();
    assert_eq!(will.boot, 1);
    assert_eq!(will.uptime_ms, None);
}

#[test]
fn broker_killed_mid_session_the_journal_resends_nothing_lost_nothing_doubled() {
    let mut broker = broker();
    broker
        .client()
        .publish(&format!("{T}/config"), CONFIG, 1, true)
        .expect("retained config");
    let mut sub = subscribe(&broker);
    let qemu = Qemu::start(broker.port());

    // Wait for the first progress event (+2 s into the session); the next event is due 2 s
    // later, and it falls while the broker is down.
    let mut seen = sub
        .wait_for(WAIT, "the first progress event", |m| {
            event(m).is_some_and(|e| matches!(e.event, EventBody::SessionProgress { .. }))
        })
        .unwrap_or_else(|e| panic!("{e}\nqemu log:\n{}", qemu.log()));
    broker.kill().expect("kill broker");
    // mosquitto_sub reconnects by itself to the restarted broker with its persistent session
    // (clean session off, saved by autosave): what the device sends after the restart is queued
    // for it even if the device gets there first.
    // Down across the next scheduled event.
    let before = seen.iter().filter_map(event).count();
    std::thread::sleep(Duration::from_millis(2500)); // the outage itself, not a synchronisation
    broker.start_again().expect("restart broker");
    seen.extend(
        sub.wait_for(
            WAIT,
            "the session_ended event after the restart",
            is_session_end,
        )
        .unwrap_or_else(|e| panic!("{e}\nqemu log:\n{}", qemu.log())),
    );
    let events: Vec<Event> = seen.iter().filter_map(event).collect();
    assert!(events.len() > before, "events came after the restart");
    let (events, _dups) = dedup(&events);
    check_session(&events);
    // The device was born again on the new connection.
    let online = seen
        .iter()
        .filter_map(status)
        .filter(|s| s.status == Presence::Online)
        .count();
    assert!(online >= 2, "a birth per connection: {online}");
    // At least one event went out after the restart with a fresh sent_uptime_ms: the one that
    // fell into the outage.
    let outage = events
        .iter()
        .find(|e| e.seq == 6)
        .expect("the progress that fell into the outage");
    assert!(outage.sent_uptime_ms > outage.uptime_ms + 100, "{outage:?}");
}
