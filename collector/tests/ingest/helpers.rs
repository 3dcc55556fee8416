//! Test helpers: a collector on its own runtime with a fresh ledger and port 0, real MQTT
//! publishers (rumqttc), and a deterministic workload generator.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fabmeter_collector::app::Application;
use fabmeter_collector::config::{Config, MachineConfig, MemberConfig, TimeSeriesSettings};
use fabmeter_e2e::Mosquitto;
use fabmeter_protocol::message::{EndReason, Event, EventBody, MachineState};
use fabmeter_protocol::{encode_to_vec, BadgeKey};
use rumqttc::{Client, Event as MqttEvent, MqttOptions, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;

pub const SITE: &str = "atelier";
pub const T0: u64 = 1_764_000_000_000;

/// A collector running in this process, on its own runtime.
pub struct TestCollector {
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn site_config(broker: &Mosquitto, machines: &[&str], dir: &std::path::Path) -> Config {
    let mut c = Config::for_site(SITE);
    c.mqtt.url = broker.url();
    c.mqtt.client_id = "fm-collector-test".into();
    c.ledger.path = dir.join("ledger.sqlite");
    c.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.machines = machines
        .iter()
        .map(|m| MachineConfig {
            id: (*m).into(),
            name: format!("Machine {m}"),
            kind: "laser".into(),
            tariff: None,
            sensing: None,
        })
        .collect();
    c.members = vec![MemberConfig {
        id: "alice".into(),
        name: "Alice".into(),
        badges: vec![badge().to_string()],
    }];
    c
}

pub fn with_timeseries(mut c: Config, vm_url: &str) -> Config {
    c.timeseries = Some(TimeSeriesSettings {
        url: vm_url.into(),
        org: "fabmeter".into(),
        bucket: "fabmeter".into(),
        token: String::new(),
        backlog_dir: None,
        backlog_max_mib: 64,
    });
    c
}

impl TestCollector {
    pub fn start(config: Config, dir: tempfile::TempDir) -> TestCollector {
        TestCollector::start_app(dir, move || Box::pin(Application::build(config)))
    }

    /// A network collector ([`fabmeter_collector::network`]) in this process.
    #[allow(dead_code)]
    pub fn start_network(
        network: fabmeter_collector::network::Network,
        dir: tempfile::TempDir,
    ) -> TestCollector {
        TestCollector::start_app(dir, move || Box::pin(Application::build_network(network)))
    }

    fn start_app(
        dir: tempfile::TempDir,
        build: impl FnOnce() -> std::pin::Pin<
                Box<
                    dyn std::future::Future<
                            Output = Result<Application, fabmeter_collector::app::StartError>,
                        > + Send,
                >,
            > + Send
            + 'static,
    ) -> TestCollector {
        let (tx, rx) = std::sync::mpsc::channel();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let app = build().await.expect("collector builds");
                tx.send(app.http_addr()).expect("report address");
                app.run(stop).await.expect("collector runs");
            });
        });
        let http = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("collector started");
        TestCollector {
            http,
            dir,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn get(&self, path: &str) -> fabmeter_e2e::http::HttpResponse {
        fabmeter_e2e::http::get("127.0.0.1", self.http.port(), path).expect("HTTP GET")
    }

    pub fn metric(&self, name: &str) -> u64 {
        metric_of(&self.get("/metrics").text(), name)
    }
}

impl TestCollector {
    /// Asks the collector to stop; whether it did within `timeout`.
    #[allow(dead_code)]
    pub fn stop_within(&mut self, timeout: Duration) -> bool {
        self.shutdown.cancel();
        let deadline = std::time::Instant::now() + timeout;
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        true
    }
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Value of a counter (without labels) or of `name{labels}` in a Prometheus text.
pub fn metric_of(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

pub fn badge() -> fabmeter_protocol::BadgeHash {
    BadgeKey::new([7; 32]).hash(&[0x04, 0xa1, 0xb2, 0xc3])
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What the ledger must hold after a workload.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    /// Distinct event keys.
    pub keys: BTreeSet<(String, u32, u32)>,
    /// (machine, boot, session) -> busy seconds of its end.
    pub sessions: BTreeMap<(String, u32, u32), u32>,
    /// machine -> wall times of its state events (devices with a clock).
    pub states: BTreeMap<String, Vec<u64>>,
}

/// A small deterministic PRNG (xorshift64*), so workloads repeat exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Per machine and boot: a first state change, then `sessions` sessions of
/// start, idle->busy, `progress` progress events, busy->idle, end. Every event carries `ts`.
pub fn workload(
    machines: &[&str],
    boots: u32,
    sessions: u32,
    progress: u32,
) -> (BTreeMap<String, Vec<Msg>>, Expected) {
    workload_at(SITE, T0, machines, boots, sessions, progress)
}

/// [`workload`] on the topics of site `site`, its clocks from `t0` (unix ms).
pub fn workload_at(
    site: &str,
    t0: u64,
    machines: &[&str],
    boots: u32,
    sessions: u32,
    progress: u32,
) -> (BTreeMap<String, Vec<Msg>>, Expected) {
    let mut out = BTreeMap::new();
    let mut exp = Expected::default();
    let b = badge();
    for (mi, m) in machines.iter().enumerate() {
        let mut msgs = Vec::new();
        for boot in 1..=boots {
            let mut seq = 0u32;
            let mut uptime = 0u64;
            let base = t0 + (mi as u64) * 1_000_000_000 + u64::from(boot) * 100_000_000;
            let mut push = |body: EventBody, msgs: &mut Vec<Msg>, exp: &mut Expected| -> u32 {
                seq += 1;
                uptime += 1000;
                let is_state = matches!(body, EventBody::State { .. });
                let ev = Event {
                    v: 1,
                    box_id: None,
                    boot,
                    seq,
                    uptime_ms: uptime,
                    sent_uptime_ms: uptime,
                    ts: Some(base + uptime),
                    event: body,
                };
                exp.keys.insert(((*m).to_owned(), boot, seq));
                if is_state {
                    exp.states
                        .entry((*m).to_owned())
                        .or_default()
                        .push(base + uptime);
                }
                msgs.push(Msg {
                    topic: format!("fabmeter/v1/{site}/{m}/event"),
                    payload: encode_to_vec(&ev).expect("valid event"),
                });
                seq
            };
            push(
                EventBody::State {
                    from: MachineState::Off,
                    to: MachineState::Idle,
                },
                &mut msgs,
                &mut exp,
            );
            for s in 0..sessions {
                let id = push(EventBody::SessionStarted { badge: b }, &mut msgs, &mut exp);
                push(
                    EventBody::State {
                        from: MachineState::Idle,
                        to: MachineState::Busy,
                    },
                    &mut msgs,
                    &mut exp,
                );
                for p in 1..=progress {
                    push(
                        EventBody::SessionProgress {
                            session: id,
                            busy_s: p * 60,
                            idle_s: 0,
                            energy_wh: p,
                        },
                        &mut msgs,
                        &mut exp,
                    );
                }
                push(
                    EventBody::State {
                        from: MachineState::Busy,
                        to: MachineState::Idle,
                    },
                    &mut msgs,
                    &mut exp,
                );
                let busy = progress * 60 + s;
                push(
                    EventBody::SessionEnded {
                        session: id,
                        badge: b,
                        busy_s: busy,
                        idle_s: 30,
                        energy_wh: progress + 1,
                        reason: EndReason::BadgeOut,
                    },
                    &mut msgs,
                    &mut exp,
                );
                exp.sessions.insert(((*m).to_owned(), boot, id), busy);
            }
        }
        out.insert((*m).to_owned(), msgs);
    }
    (out, exp)
}

/// Publishes `msgs` at QoS 1 from one real MQTT client and returns once the broker acknowledged
/// every one (PUBACK).
pub fn publish_all(broker_port: u16, client_id: &str, msgs: &[Msg]) {
    publish_as(broker_port, client_id, None, msgs)
}

/// [`publish_all`] with the broker account `creds`, if any; packets up to 4 MiB leave the client
/// (the oversized-payload tests send 1 MiB).
pub fn publish_as(broker_port: u16, client_id: &str, creds: Option<(&str, &str)>, msgs: &[Msg]) {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", broker_port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(4 << 20, 4 << 20);
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    let (client, mut conn) = Client::new(o, 1000);
    let n = msgs.len();
    let msgs = msgs.to_vec();
    let publisher = std::thread::spawn(move || {
        for m in msgs {
            client
                .publish(m.topic, QoS::AtLeastOnce, false, m.payload)
                .expect("queue publish");
        }
        client
    });
    let mut acked = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for ev in conn.iter() {
        assert!(
            std::time::Instant::now() < deadline,
            "{client_id}: only {acked}/{n} acknowledged"
        );
        match ev {
            Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == n {
                    break;
                }
            }
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => panic!("{client_id}: publisher connection failed: {e}"),
        }
    }
    let client = publisher.join().expect("publisher thread");
    let _ = client.disconnect();
}

/// Publishes each machine's messages from its own client, in parallel.
pub fn publish_parallel(broker_port: u16, per_client: Vec<(String, Vec<Msg>)>) {
    std::thread::scope(|s| {
        for (id, msgs) in &per_client {
            s.spawn(move || publish_all(broker_port, id, msgs));
        }
    });
}

pub fn ledger_path(dir: &std::path::Path) -> PathBuf {
    dir.join("ledger.sqlite")
}

/// Runs the `fabmeter-collector` binary with `args` and `--config config`: (success, stdout,
/// stderr). (Used by the test crates that include this file, not by `ingest` itself.)
#[allow(dead_code)]
pub fn collector_cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run fabmeter-collector");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
