//! `fabmeter-agent run`, the real binary, against a real Mosquitto (started by the harness).
//!
//! The machines are `simulate`d (fed from the simulator's timeline at a time acceleration), so a
//! run produces a realistic event stream without hardware; everything else (disk journal, MQTT,
//! TLS, signals) is the production path.

#[allow(dead_code)]
#[path = "../sim/helpers.rs"]
mod helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fabmeter_agent::protocol::message::{Event, EventBody, Presence};
use fabmeter_agent::protocol::{encode_to_vec, DeviceKey};
use fabmeter_agent::sim::rng::Rng;
use fabmeter_agent::sim::{MachineKind, SimConfig, SimMachine, DEMO_BADGE_KEY_HEX};
use fabmeter_e2e::{wait_until, Mosquitto, MqttCli, Subscription, TestPki, TlsListener};
use helpers::Seen;

const BIN: &str = env!("CARGO_BIN_EXE_fabmeter-agent");

/// The two machines of the runs: (id, kind).
const MACHINES: [(&str, MachineKind); 2] = [
    ("laser-1", MachineKind::LaserCutter),
    ("printer-1", MachineKind::Printer3d),
];

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, log: PathBuf) -> Agent {
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,rumqttc=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn fabmeter-agent");
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigkill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM; the agent must exit 0 within `timeout`.
    fn stop(mut self, timeout: Duration) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "agent exit {status}; log:\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent config for the two machines, simulated at `speed`.
fn config(dir: &Path, site: &str, url: &str, speed: f64) -> PathBuf {
    let mut text = format!(
        "site = \"{site}\"\ndata_dir = \"{}\"\nbadge_key = \"{DEMO_BADGE_KEY_HEX}\"\n\n\
         [mqtt]\nurl = \"{url}\"\nreconnect_max_s = 1\nconfirm = false\n\n[simulate]\nspeed = {speed}\nseed = 7\n",
        dir.join("data").display()
    );
    for (id, kind) in MACHINES {
        text += &format!(
            "\n[[machines]]\nid = \"{id}\"\nsimulate = \"{}\"\n",
            kind.as_str()
        );
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Publishes the retained configs the collector would (sensing for the kind, the members who use
/// it), so that the simulated badges open sessions.
fn publish_configs(cli: &MqttCli, site: &str, port: u16) {
    let sim = SimConfig::demo(site, port);
    for (id, kind) in MACHINES {
        let cfg = sim.device_config(&SimMachine {
            id: id.into(),
            name: id.into(),
            kind,
        });
        cli.publish(
            &format!("fabmeter/v1/{site}/{id}/config"),
            encode_to_vec(&cfg).expect("encode config"),
            1,
            true,
        )
        .expect("publish config");
    }
}

fn subscribe(cli: MqttCli, site: &str) -> Subscription {
    cli.subscribe(
        &[
            &format!("fabmeter/v1/{site}/+/event"),
            &format!("fabmeter/v1/{site}/+/status"),
        ],
        1,
    )
    .expect("subscribe")
}

/// Receives until every machine's latest status is `presence` of `boot`.
fn wait_status(
    sub: &mut Subscription,
    seen: &mut Seen,
    presence: Presence,
    boot: u32,
    agent: Option<&Agent>,
) {
    let done = |seen: &Seen| {
        MACHINES.iter().all(|(id, _)| {
            seen.statuses
                .get(*id)
                .and_then(|v| v.last())
                .is_some_and(|(s, _)| s.status == presence && s.boot == boot)
        })
    };
    if done(seen) {
        return;
    }
    let r = sub.wait_for(Duration::from_secs(30), "statuses", |m| {
        seen.add(m);
        done(seen)
    });
    if let Err(e) = r {
        let log = agent.map_or(String::new(), Agent::log);
        panic!("{e}; waiting for {presence:?} of boot {boot}; agent log:\n{log}");
    }
}

/// Per machine: distinct events, checked: for every boot seqs 1..=max without gap, the first a
/// `counters`, copies of one key identical; and, in arrival order, each new key is the next seq of
/// its boot. Returns (distinct events per machine, duplicates).
fn check_stream(seen: &Seen) -> (BTreeMap<String, Vec<Event>>, usize) {
    let mut dups = 0;
    for (machine, events) in &seen.events {
        let mut by_key: BTreeMap<(u32, u32), Event> = BTreeMap::new();
        let mut last: BTreeMap<u32, u32> = BTreeMap::new();
        for e in events {
            let mut e = e.clone();
            e.sent_uptime_ms = 0;
            if let Some(first) = by_key.get(&(e.boot, e.seq)) {
                assert_eq!(first, &e, "{machine}: two different events with one key");
                dups += 1;
                continue;
            }
            let prev = last.entry(e.boot).or_insert(0);
            assert_eq!(
                e.seq,
                *prev + 1,
                "{machine} boot {}: gap or reorder in delivery order",
                e.boot
            );
            *prev = e.seq;
            by_key.insert((e.boot, e.seq), e);
        }
        for (&(boot, seq), e) in &by_key {
            if seq == 1 {
                assert!(
                    matches!(e.event, EventBody::Counters { .. }),
                    "{machine} boot {boot}: first event is {:?}",
                    e.event
                );
            }
        }
    }
    (seen.distinct(), dups)
}

#[test]
fn sigkill_at_20_random_moments_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start().expect("mosquitto");
    let site = "kill";
    publish_configs(&broker.client(), site, broker.port());
    let mut sub = subscribe(broker.client(), site);
    let cfg = config(dir.path(), site, &broker.url(), 7200.0);
    let mut rng = Rng::new(20);
    let mut seen = Seen::default();
    let kills = 20;
    let started = Instant::now();
    for boot in 1..=kills {
        let agent = Agent::start(&cfg, dir.path().join(format!("agent-{boot}.log")));
        // Both devices run (their boot is durable and their counters journaled) once they are
        // online; the kill comes at a random moment after that.
        wait_status(&mut sub, &mut seen, Presence::Online, boot, Some(&agent));
        let at = Duration::from_millis(rng.range(0, 1200));
        let t = Instant::now();
        while t.elapsed() < at {
            for m in sub.drain() {
                seen.add(&m);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        agent.sigkill();
    }
    let last = kills + 1;
    let agent = Agent::start(&cfg, dir.path().join("agent-last.log"));
    wait_status(&mut sub, &mut seen, Presence::Online, last, Some(&agent));
    agent.stop(Duration::from_secs(20));
    wait_status(&mut sub, &mut seen, Presence::Offline, last, None);
    for m in sub.drain() {
        seen.add(&m);
    }

    let (distinct, dups) = check_stream(&seen);
    assert_eq!(distinct.len(), 2, "both machines published");
    let mut total = 0;
    for (machine, events) in &distinct {
        let boots: BTreeSet<u32> = events.iter().map(|e| e.boot).collect();
        assert_eq!(
            boots,
            (1..=last).collect::<BTreeSet<u32>>(),
            "{machine}: one boot per start, none skipped"
        );
        total += events.len();
    }
    // Events journaled but not acknowledged at a kill are in the journal at the next start (the
    // agent logs the newest one): each of them was delivered (no gap below it, checked above).
    let mut resent = 0;
    for boot in 2..=last {
        let log = if boot == last {
            dir.path().join("agent-last.log")
        } else {
            dir.path().join(format!("agent-{boot}.log"))
        };
        let log = std::fs::read_to_string(log).expect("agent log");
        for (id, _) in MACHINES {
            let line = log
                .lines()
                .find(|l| l.contains("device started") && l.contains(&format!("machine={id} ")))
                .unwrap_or_else(|| panic!("no start line for {id} in {log}"));
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .unwrap_or_else(|| panic!("{name} in {line}"))
                    .to_string()
            };
            let pending: usize = field("pending=").parse().expect("pending");
            let last_key = field("pending_last=");
            if pending == 0 {
                continue;
            }
            resent += pending;
            let (b, s) = last_key.split_once('/').expect("b/s");
            let key = (
                b.parse::<u32>().expect("boot"),
                s.parse::<u32>().expect("seq"),
            );
            assert!(
                distinct[id].iter().any(|e| (e.boot, e.seq) == key),
                "{id}: {key:?}, journaled before a kill, never arrived"
            );
        }
    }
    eprintln!(
        "{kills} kills in {:.1} s: {total} distinct events, {dups} duplicates removed, {resent} events in a journal at a restart (all delivered)",
        started.elapsed().as_secs_f64()
    );
    assert!(total > 3 * last as usize, "{total} events");
}

#[test]
fn an_hour_of_broker_outage_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Mosquitto::builder()
        .persistence(true)
        .start()
        .expect("mosquitto");
    let site = "outage";
    publish_configs(&broker.client(), site, broker.port());
    let mut sub = subscribe(
        broker
            .client()
            .client_id("agent-outage-watcher")
            .clean_session(false),
        site,
    );
    // An hour in 2 wall seconds.
    let speed = 1800.0;
    let cfg = config(dir.path(), site, &broker.url(), speed);
    let t0 = Instant::now();
    let agent = Agent::start(&cfg, dir.path().join("agent.log"));
    let mut seen = Seen::default();
    wait_status(&mut sub, &mut seen, Presence::Online, 1, Some(&agent));
    // Into the working day (the timeline starts at 08:45).
    let working = |seen: &Seen| seen.events.values().map(Vec::len).sum::<usize>() >= 6;
    if !working(&seen) {
        sub.wait_for(Duration::from_secs(30), "6 events", |m| {
            seen.add(m);
            working(&seen)
        })
        .expect("events before the outage");
    }
    let data = dir.path().join("data");
    let flash_len = |seen_at: &mut BTreeMap<String, std::time::SystemTime>| {
        MACHINES.iter().all(|(id, _)| {
            let m = std::fs::metadata(data.join(format!("{id}.flash")))
                .and_then(|m| m.modified())
                .expect("flash file");
            seen_at.get(*id).is_some_and(|t| m > *t)
        })
    };
    broker.stop().expect("stop broker");
    let stop_ms = t0.elapsed().as_secs_f64() * 1000.0 * speed;
    let stopped = Instant::now();
    let mut at: BTreeMap<String, std::time::SystemTime> = BTreeMap::new();
    for (id, _) in MACHINES {
        let m = std::fs::metadata(data.join(format!("{id}.flash")))
            .and_then(|m| m.modified())
            .expect("flash file");
        at.insert(id.into(), m);
    }
    // A simulated hour passes with the broker down, and both journals are written meanwhile.
    let hour = Duration::from_secs_f64(3600.0 / speed);
    wait_until(
        Duration::from_secs(30),
        "an hour of outage, journals written",
        || stopped.elapsed() >= hour && flash_len(&mut at),
    );
    broker.start_again().expect("restart broker");
    let restart_ms = t0.elapsed().as_secs_f64() * 1000.0 * speed;
    // Reconnected: the next births arrive (same boot).
    let reconnected = |seen: &Seen| {
        MACHINES.iter().all(|(id, _)| {
            seen.statuses.get(*id).is_some_and(|v| {
                v.iter()
                    .filter(|(s, _)| s.status == Presence::Online && s.boot == 1)
                    .count()
                    >= 2
            })
        })
    };
    sub.wait_for(Duration::from_secs(30), "births after the outage", |m| {
        seen.add(m);
        reconnected(&seen)
    })
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    agent.stop(Duration::from_secs(20));
    wait_status(&mut sub, &mut seen, Presence::Offline, 1, None);
    for m in sub.drain() {
        seen.add(&m);
    }

    let (distinct, dups) = check_stream(&seen);
    assert_eq!(distinct.len(), 2);
    let during: usize = distinct
        .values()
        .flatten()
        .filter(|e| (e.uptime_ms as f64) > stop_ms && (e.uptime_ms as f64) < restart_ms - 1000.0)
        .count();
    let total: usize = distinct.values().map(Vec::len).sum();
    eprintln!(
        "{total} distinct events, {during} journaled while the broker was down, {dups} duplicates removed"
    );
    assert!(during > 0, "no event was journaled during the outage");
}

/// The agent's `left=N` of machine `id` in its "stopped" log line.
fn left_at_stop(log: &str, id: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("stopped") && l.contains(&format!("machine={id}")))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("left="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no stopped line for {id} in the log:\n{log}"))
}

#[test]
fn with_confirm_a_puback_keeps_events_until_the_collector_confirms_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start().expect("mosquitto");
    let site = "confirm";
    publish_configs(&broker.client(), site, broker.port());
    let mut sub = subscribe(broker.client(), site);
    // 60 device ms per wall ms: the 30 s stall timer is half a wall second.
    let cfg = config(dir.path(), site, &broker.url(), 60.0);
    let text = std::fs::read_to_string(&cfg).expect("read config");
    std::fs::write(&cfg, text.replace("confirm = false\n", "confirm = true\n"))
        .expect("write config");
    let agent = Agent::start(&cfg, dir.path().join("agent.log"));
    let mut seen = Seen::default();
    // Nobody confirms: every machine sends its first event again after the stall timer, though
    // the broker acknowledged it.
    let resent = |seen: &Seen| {
        MACHINES.iter().all(|(id, _)| {
            seen.events
                .get(*id)
                .is_some_and(|v| v.iter().filter(|e| e.boot == 1 && e.seq == 1).count() >= 2)
        })
    };
    sub.wait_for(Duration::from_secs(30), "unconfirmed events resent", |m| {
        seen.add(m);
        resent(&seen)
    })
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    let before: BTreeMap<String, usize> = MACHINES
        .iter()
        .map(|(id, _)| {
            let distinct: BTreeSet<u32> = seen.events[*id].iter().map(|e| e.seq).collect();
            ((*id).to_string(), distinct.len())
        })
        .collect();
    // The collector's confirmation of everything so far (and beyond) removes them.
    for (id, _) in MACHINES {
        broker
            .client()
            .publish(
                &format!("fabmeter/v1/{site}/{id}/ack"),
                br#"{"v":1,"boot":1,"from":1,"to":4000000000}"#,
                0,
                false,
            )
            .expect("publish a confirmation");
    }
    agent.stop(Duration::from_secs(20));
    let log = std::fs::read_to_string(dir.path().join("agent.log")).expect("agent log");
    for (id, _) in MACHINES {
        let left = left_at_stop(&log, id);
        assert!(
            left < before[id],
            "{id}: {left} events left at stop, {} were sent before the confirmation",
            before[id]
        );
    }
}

/// Writes a credentials file the way `fabmeter-collector provision device` does.
fn credentials(
    dir: &Path,
    site: &str,
    machine: &str,
    url: &str,
    user: &str,
    ca: &Path,
    key: Option<&str>,
) -> PathBuf {
    let path = dir.join(format!("{machine}.credentials.toml"));
    let key = key.map_or(String::new(), |k| format!("key = \"{k}\"\n"));
    std::fs::write(
        &path,
        format!(
            "# fabmeter device credentials: machine {machine} of site {site}. Secret: keep it on the device only.\n\
             [device]\nsite = \"{site}\"\nmachine = \"{machine}\"\n{key}\n[mqtt]\nurl = \"{url}\"\nusername = \"{user}\"\npassword = \"pw-{user}\"\nca_file = \"{}\"\n",
            ca.display()
        ),
    )
    .expect("write credentials");
    path
}

/// The device key in the good machine's credentials file.
const GOOD_KEY_HEX: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

#[test]
fn tls_with_credentials_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(dir.path(), "client").expect("pki");
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).expect("dir");
    let other = TestPki::generate(&other_dir, "client").expect("other pki");
    let site = "tls";
    let users = ["dev-good", "dev-plain", "dev-wrongca"];
    let mut b = Mosquitto::builder().tls(TlsListener::new(
        &pki.ca_cert,
        &pki.server_cert,
        &pki.server_key,
    ));
    for u in users {
        b = b.user(u, format!("pw-{u}"));
    }
    let broker = b.user("watcher", "pw-watcher").start().expect("mosquitto");
    let tls_port = broker.tls_port().expect("tls port");
    let mut sub = subscribe(
        broker
            .tls_client(&pki.ca_cert)
            .expect("tls client")
            .credentials("watcher", "pw-watcher"),
        site,
    );
    let machines = [
        (
            "good",
            format!("mqtts://localhost:{tls_port}"),
            &pki.ca_cert,
            users[0],
        ),
        (
            "plain",
            format!("mqtt://127.0.0.1:{tls_port}"),
            &pki.ca_cert,
            users[1],
        ),
        (
            "wrongca",
            format!("mqtts://localhost:{tls_port}"),
            &other.ca_cert,
            users[2],
        ),
    ];
    let mut text = format!(
        "data_dir = \"{}\"\nbadge_key = \"{DEMO_BADGE_KEY_HEX}\"\n[mqtt]\nreconnect_max_s = 1\n",
        dir.path().join("data").display()
    );
    for (id, url, ca, user) in &machines {
        // The good machine was provisioned with a device key: its events are signed.
        let key = (*id == "good").then_some(GOOD_KEY_HEX);
        let cred = credentials(dir.path(), site, id, url, user, ca, key);
        text += &format!(
            "\n[[machines]]\nid = \"{id}\"\ncredentials_file = \"{}\"\n",
            cred.display()
        );
    }
    // A plain URL with a CA file is refused by the config check itself: the "plain" machine
    // connects without one, as a misconfigured device would.
    let cred_plain = dir.path().join("plain.credentials.toml");
    let t = std::fs::read_to_string(&cred_plain).expect("read");
    let t: String = t
        .lines()
        .filter(|l| !l.starts_with("ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cred_plain, t).expect("write");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("write config");

    let agent = Agent::start(&cfg, dir.path().join("agent.log"));
    let mut seen = Seen::default();
    sub.wait_for(
        Duration::from_secs(30),
        "the good machine's counters",
        |m| {
            seen.add(m);
            seen.events.get("good").is_some_and(|v| {
                v.iter()
                    .any(|e| matches!(e.event, EventBody::Counters { .. }))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    wait_until(Duration::from_secs(20), "both refusals logged", || {
        let log = agent.log();
        log.lines()
            .any(|l| l.contains("machine=plain") && l.contains("broker connection failed"))
            && log
                .lines()
                .any(|l| l.contains("machine=wrongca") && l.contains("broker connection failed"))
    });
    let log = agent.log();
    agent.stop(Duration::from_secs(20));
    for m in sub.drain() {
        seen.add(&m);
    }
    let good_key = DeviceKey::from_hex(GOOD_KEY_HEX).expect("key");
    let good: Vec<_> = seen
        .raw_events
        .iter()
        .filter(|(t, _)| t.contains("/good/"))
        .collect();
    assert!(!good.is_empty());
    for (topic, payload) in good {
        good_key
            .verify(topic, payload)
            .unwrap_or_else(|e| panic!("{topic}: {e}: {}", String::from_utf8_lossy(payload)));
    }
    assert!(!seen.events.contains_key("plain"), "{log}");
    assert!(!seen.events.contains_key("wrongca"), "{log}");
    assert!(!seen.statuses.contains_key("plain") && !seen.statuses.contains_key("wrongca"));
    let wrong = log
        .lines()
        .find(|l| l.contains("machine=wrongca") && l.contains("broker connection failed"))
        .unwrap_or_default()
        .to_string();
    eprintln!("wrong CA: {wrong}");
    assert!(
        wrong.to_lowercase().contains("certificate") || wrong.to_lowercase().contains("tls"),
        "{wrong}"
    );
}
