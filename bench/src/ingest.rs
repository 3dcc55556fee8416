//! Ingest: the broker's delivery rate to a bare subscriber (a) against the collector's commit rate
//! (b), alternating in one run, then the publish-to-commit latency at half of (b).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use anyhow::{bail, Context};
use fabmeter_collector::app::Application;
use fabmeter_collector::config::{Config, MachineConfig, MemberConfig, TimeSeriesSettings};
use fabmeter_collector::metrics::Metrics;
use fabmeter_e2e::{Mosquitto, VictoriaMetrics};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::workload::{self, Msg, SITE};
use crate::{load_average, median};

/// `ingest` options.
#[derive(clap::Args)]
pub struct Args {
    /// QoS 1 events per round.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Publishing MQTT clients.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Simulated machines (each on one publisher).
    #[arg(long, default_value_t = 200)]
    machines: usize,
    /// Members (badges) the sessions rotate through.
    #[arg(long, default_value_t = 50)]
    members: usize,
    /// Rounds of (a) then (b); the medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Mosquitto `max_inflight_messages` (QoS 1 messages in flight to each subscriber);
    /// default: Mosquitto's own (20).
    #[arg(long)]
    broker_inflight: Option<u32>,
    /// The collector's `ledger.batch_max` (default: the collector's default).
    #[arg(long)]
    batch_max: Option<usize>,
    /// Run the collector without a time-series store.
    #[arg(long)]
    no_timeseries: bool,
    /// Events of the latency run (0: skip it).
    #[arg(long, default_value_t = 20_000)]
    latency_messages: usize,
    /// Events per second of the latency run (default: half the median collector rate).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// A peer pipeline to run once on the same messages, through `sh -c`, e.g. Node-RED with
    /// bench/peer/flows.json. It gets BENCH_MQTT_PORT, BENCH_VM_URL and BENCH_N, must print a line
    /// with "Connected to broker" once subscribed, and "BENCH count=C ms=M" as it writes (the
    /// last one with C = BENCH_N).
    #[arg(long)]
    peer_cmd: Option<String>,
    /// The collector's ledger on a private PostgreSQL cluster (a fresh database per collector)
    /// instead of a SQLite file.
    #[arg(long)]
    postgres: bool,
    /// Name of the peer in the summary.
    #[arg(long, default_value = "peer")]
    peer_name: String,
    /// Longest wait for the peer to write everything.
    #[arg(long, default_value_t = 300)]
    peer_timeout_s: u64,
}

/// The benchmark's services and workload.
struct Bench {
    broker: Mosquitto,
    vm: Option<VictoriaMetrics>,
    pg: Option<fabmeter_e2e::Postgres>,
    machines: Vec<String>,
    work: Vec<Vec<Msg>>,
    total: usize,
    rt: tokio::runtime::Runtime,
}

/// Runs the ingest benchmark and prints its figures and a summary table.
pub fn run(a: &Args) -> anyhow::Result<()> {
    let mut b = Mosquitto::builder().max_queued_messages(0);
    if let Some(n) = a.broker_inflight {
        b = b.max_inflight_messages(n);
    }
    let broker = b.start().context("starting mosquitto")?;
    let vm = if a.no_timeseries {
        None
    } else {
        Some(VictoriaMetrics::start().context("starting victoria-metrics")?)
    };
    let pg = if a.postgres {
        Some(fabmeter_e2e::Postgres::start().context("starting PostgreSQL")?)
    } else {
        None
    };
    let machines = workload::machine_ids(a.machines);
    let work = workload::split(a.messages, &machines, a.publishers, a.members);
    let bytes: usize = work.iter().flatten().map(|m| m.payload.len()).sum();
    println!(
        "workload: {} events, {} machines, {} publishers, mean payload {} B; mosquitto max_inflight_messages {}; collector batch_max {}; time series {}",
        a.messages,
        a.machines,
        a.publishers,
        bytes / a.messages.max(1),
        a.broker_inflight.map_or("20 (default)".into(), |n| n.to_string()),
        a.batch_max.map_or("the collector's default".into(), |n| n.to_string()),
        if vm.is_some() { "VictoriaMetrics" } else { "off" },
    );
    println!(
        "ledger: {}",
        if pg.is_some() {
            "PostgreSQL (private cluster, fsync on)"
        } else {
            "SQLite"
        }
    );
    let bench = Bench {
        broker,
        vm,
        pg,
        machines,
        work,
        total: a.messages,
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    let mut bare = Vec::new();
    let mut coll = Vec::new();
    let mut coll_strict = Vec::new();
    for round in 1..=a.rounds {
        let r = bench.bare_round(round)?;
        println!(
            "round {round} (a) bare subscriber: {r:>8.0} msg/s  load {}",
            load_average()
        );
        bare.push(r);
        let (r, strict) = bench.collector_round(round, a)?;
        println!(
            "round {round} (b) collector:       {r:>8.0} events/s committed (b') {strict:>8.0} from its first message  load {}",
            load_average()
        );
        coll.push(r);
        coll_strict.push(strict);
    }
    let (ma, mb, mbs) = (median(&bare), median(&coll), median(&coll_strict));
    let peer = match &a.peer_cmd {
        Some(cmd) => Some(bench.peer_round(cmd, a)?),
        None => None,
    };
    let mut latency = None;
    if a.latency_messages > 0 {
        let rate = a.latency_rate.unwrap_or(mb / 2.0);
        latency = Some((rate, bench.latency(a, rate)?));
    }
    println!();
    println!("| figure | value | rounds, or load (1 min) |");
    println!("|---|---|---|");
    println!(
        "| (a) bare rumqttc subscriber, QoS 1, median of {} | {ma:.0} msg/s | {} |",
        a.rounds,
        fmt_all(&bare)
    );
    println!(
        "| (b) collector, ledger commit then ack{}, median of {} | {mb:.0} events/s | {} |",
        if a.no_timeseries {
            ""
        } else {
            " + VictoriaMetrics"
        },
        a.rounds,
        fmt_all(&coll)
    );
    println!("| b/a | {:.2} | |", mb / ma);
    println!(
        "| (b') collector, from its first message received to its last commit, median of {} | {mbs:.0} events/s | {} |",
        a.rounds,
        fmt_all(&coll_strict)
    );
    println!("| b'/a | {:.2} | |", mbs / ma);
    if let Some(p) = &peer {
        println!(
            "| {}: {} | {} | {} |",
            a.peer_name, p.what, p.figure, p.load
        );
    }
    if let Some((rate, l)) = latency {
        println!(
            "| latency publish -> ledger commit at {rate:.0} events/s ({} events) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms | {} |",
            a.latency_messages,
            l.p50,
            l.p99,
            l.max,
            load_average()
        );
    }
    Ok(())
}

fn fmt_all(v: &[f64]) -> String {
    let all: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
    format!("rounds: {}", all.join(", "))
}

/// What the peer did.
struct Peer {
    what: String,
    figure: String,
    load: String,
}

/// Latency percentiles, milliseconds.
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Bench {
    /// (a): a rumqttc subscriber at QoS 1 that only counts; msg/s from its first to its last message.
    fn bare_round(&self, round: usize) -> anyhow::Result<f64> {
        let port = self.broker.port();
        let total = self.total;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let counter = self.rt.spawn(async move {
            let mut o = MqttOptions::new(format!("bench-bare-{round}"), "127.0.0.1", port);
            o.set_clean_session(true)
                .set_keep_alive(Duration::from_secs(30))
                .set_max_packet_size(64 * 1024, 64 * 1024);
            let (client, mut el) = AsyncClient::new(o, 1000);
            client
                .subscribe(format!("fabmeter/v1/{SITE}/+/event"), QoS::AtLeastOnce)
                .await?;
            let mut ready = Some(ready_tx);
            let (mut first, mut n) = (None, 0usize);
            loop {
                match el.poll().await? {
                    MqttEvent::Incoming(Packet::SubAck(_)) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    MqttEvent::Incoming(Packet::Publish(_)) => {
                        first.get_or_insert_with(Instant::now);
                        n += 1;
                        if n == total {
                            let last = Instant::now();
                            let _ = client.disconnect().await;
                            let first = first.unwrap_or(last);
                            return anyhow::Ok(rate(total, last - first));
                        }
                    }
                    _ => {}
                }
            }
        });
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), ready_rx).await })
            .context("the bare subscriber did not subscribe")??;
        self.publish_all(&format!("bench-pub-a{round}"))?;
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(300), counter)
                .await
                .context("the bare subscriber did not receive every message in 300 s")?
                .context("bare subscriber task")?
        })
    }

    /// (b): the collector in this process (its own runtime, like the binary); events committed to
    /// the ledger per second, from the first commit to the last, and (b') from the first message
    /// the collector received to the last commit (it includes the first batch); both watched while
    /// the publishers run.
    fn collector_round(&self, round: usize, a: &Args) -> anyhow::Result<(f64, f64)> {
        let c = self.start_collector(&format!("fm-collector-bench-{round}"), a)?;
        // Watch the collector's counters while the publishers run (not after: a collector that
        // keeps up would have committed most events before the watch began).
        let metrics = c.metrics.clone();
        let total = self.total;
        let (published, watched) = std::thread::scope(|scope| {
            let watcher = scope.spawn(move || {
                let mut first = None;
                let mut first_received = None;
                let deadline = Instant::now() + Duration::from_secs(600);
                loop {
                    if metrics.received.load(Relaxed) > 0 {
                        first_received.get_or_insert_with(Instant::now);
                    }
                    let n = metrics.accepted.load(Relaxed) as usize;
                    if n > 0 {
                        first.get_or_insert_with(Instant::now);
                    }
                    if n >= total {
                        return Ok((first_received, first, Instant::now()));
                    }
                    if Instant::now() > deadline {
                        bail!("the collector committed {n} of {total} events in 600 s");
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
            let published = self.publish_all(&format!("bench-pub-b{round}"));
            let watched = watcher
                .join()
                .map_err(|_| anyhow::anyhow!("the watcher panicked"));
            (published, watched)
        });
        published?;
        let (first_received, first, last) = watched??;
        let first = first.unwrap_or(last);
        let first_received = first_received.unwrap_or(first);
        println!(
            "  collector round {round}: {} events committed in {:.2} s from the first commit, {:.2} s from the first message received",
            self.total,
            (last - first).as_secs_f64(),
            (last - first_received).as_secs_f64()
        );
        let dup = c.metrics.duplicate.load(Relaxed);
        let rejected: u64 = c.metrics.rejected().values().sum();
        if dup != 0 || rejected != 0 {
            bail!("collector round {round}: {dup} duplicates, {rejected} rejected: the workload is not clean");
        }
        if round == 1 {
            let text = fabmeter_e2e::http::get("127.0.0.1", c.http.port(), "/metrics")
                .context("collector /metrics")?
                .text();
            for l in text.lines().filter(|l| {
                l.starts_with("fabmeter_timeseries")
                    || l.starts_with("fabmeter_commits")
                    || l.starts_with("fabmeter_commit_seconds_sum")
                    || l.starts_with("fabmeter_ack_latency_seconds_sum")
            }) {
                println!("  collector {l}");
            }
        }
        c.stop();
        Ok((
            rate(self.total, last - first),
            rate(self.total, last - first_received),
        ))
    }

    /// (c): a peer pipeline on the same broker and messages; its rate from its own first to last
    /// write, or how far it got before the timeout.
    fn peer_round(&self, cmd: &str, a: &Args) -> anyhow::Result<Peer> {
        use std::io::BufRead;
        let vm = self
            .vm
            .as_ref()
            .map_or(String::new(), VictoriaMetrics::base_url);
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("BENCH_MQTT_PORT", self.broker.port().to_string())
            .env("BENCH_VM_URL", vm)
            .env("BENCH_N", self.total.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .process_group(0)
            .spawn()
            .context("starting the peer")?;
        let out = child.stdout.take().context("peer stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id();
        let result = (|| {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let line = rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .context("the peer did not say \"Connected to broker\" in 120 s")?;
                if line.contains("Connected to broker") {
                    break;
                }
            }
            let started = Instant::now();
            self.publish_all("bench-pub-c")?;
            let published = started.elapsed();
            let deadline = Instant::now() + Duration::from_secs(a.peer_timeout_s);
            let mut last: Option<(usize, f64, String)> = None;
            while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                if let Some(progress) = parse_peer(&line) {
                    let done = progress.0 >= self.total;
                    last = Some(progress);
                    if done {
                        break;
                    }
                }
            }
            let load = load_average();
            let (what, figure) = match last {
                Some((c, ms, errors)) if c >= self.total => (
                    format!("{c} events written, first to last"),
                    format!("{:.0} events/s (errors {errors})", c as f64 / (ms / 1000.0)),
                ),
                Some((c, ms, errors)) => (
                    format!(
                        "only {c} of {} events written in {} s",
                        self.total, a.peer_timeout_s
                    ),
                    format!(
                        "{:.0} events/s while it lasted (errors {errors})",
                        c as f64 / (ms / 1000.0)
                    ),
                ),
                None => (
                    format!("nothing written in {} s", a.peer_timeout_s),
                    "0 events/s".into(),
                ),
            };
            println!(
                "peer {}: {what}: {figure} (publishing took {:.1} s)  load {load}",
                a.peer_name,
                published.as_secs_f64()
            );
            anyhow::Ok(Peer { what, figure, load })
        })();
        // The whole process group (sh and its node), by its id.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &format!("-{pid}")])
            .status();
        let _ = child.wait();
        result
    }

    fn start_collector(&self, client_id: &str, a: &Args) -> anyhow::Result<RunningCollector> {
        let dir = tempfile::tempdir()?;
        let mut c = Config::for_site(SITE);
        c.mqtt.url = self.broker.url();
        c.mqtt.client_id = client_id.into();
        c.ledger.path = dir.path().join("ledger.sqlite");
        if let Some(pg) = &self.pg {
            let db = client_id.replace('-', "_");
            c.ledger.url = Some(
                pg.create_database(&db)
                    .context("creating the round's database")?,
            );
        }
        if let Some(n) = a.batch_max {
            c.ledger.batch_max = n;
        }
        c.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.machines = self
            .machines
            .iter()
            .map(|m| MachineConfig {
                id: m.clone(),
                name: format!("Machine {m}"),
                kind: "laser".into(),
                tariff: None,
                sensing: None,
            })
            .collect();
        c.members = (1..=a.members)
            .map(|i| MemberConfig {
                id: format!("member-{i}"),
                name: format!("Member {i}"),
                badges: vec![workload::badge(i).to_string()],
            })
            .collect();
        if let Some(vm) = &self.vm {
            c.timeseries = Some(TimeSeriesSettings {
                url: vm.base_url(),
                org: "fabmeter".into(),
                bucket: "fabmeter".into(),
                token: String::new(),
                backlog_dir: None,
                backlog_max_mib: 256,
            });
        }
        RunningCollector::start(c, dir)
    }

    /// Publishes the whole workload at QoS 1 from the publishers in parallel, as fast as the broker
    /// acknowledges; returns when every PUBACK came back.
    fn publish_all(&self, prefix: &str) -> anyhow::Result<()> {
        let port = self.broker.port();
        let tasks: Vec<_> = self
            .work
            .iter()
            .enumerate()
            .map(|(i, msgs)| {
                let msgs = msgs.clone();
                let id = format!("{prefix}-{i}");
                self.rt.spawn(publish(port, id, msgs, None))
            })
            .collect();
        self.rt.block_on(async {
            for t in tasks {
                t.await.context("publisher task")??;
            }
            anyhow::Ok(())
        })
    }

    /// Publish-to-commit latency: one publisher paced at `rate`; the k-th event accepted is the k-th
    /// published (one connection, in order through the broker and the writer).
    fn latency(&self, a: &Args, rate_per_s: f64) -> anyhow::Result<Latency> {
        let c = self.start_collector("fm-collector-bench-latency", a)?;
        let machines = &self.machines;
        let msgs: Vec<Msg> = workload::split(a.latency_messages, machines, 1, a.members)
            .into_iter()
            .flatten()
            .collect();
        let n = msgs.len();
        let publisher = self.rt.spawn(publish(
            self.broker.port(),
            "bench-pub-latency".into(),
            msgs,
            Some(rate_per_s),
        ));
        let mut committed = Vec::with_capacity(n);
        let deadline = Instant::now() + Duration::from_secs(600);
        while committed.len() < n {
            let k = c.metrics.accepted.load(Relaxed) as usize;
            let now = Instant::now();
            while committed.len() < k.min(n) {
                committed.push(now);
            }
            if now > deadline {
                bail!("latency run: {} of {n} committed in 600 s", committed.len());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let sent = self.rt.block_on(publisher).context("latency publisher")??;
        c.stop();
        let mut ms: Vec<f64> = sent
            .iter()
            .zip(&committed)
            .map(|(s, c)| c.saturating_duration_since(*s).as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
        let l = Latency {
            p50: pct(0.50),
            p99: pct(0.99),
            max: pct(1.0),
        };
        println!(
            "latency at {rate_per_s:.0} events/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (poll resolution 0.1 ms)  load {}",
            l.p50,
            l.p99,
            l.max,
            load_average()
        );
        Ok(l)
    }
}

/// `BENCH count=C ms=M errors=E` -> (C, M, E).
fn parse_peer(line: &str) -> Option<(usize, f64, String)> {
    let rest = &line[line.find("BENCH count=")? + "BENCH count=".len()..];
    let mut it = rest.split_whitespace();
    let c = it.next()?.parse().ok()?;
    let ms = it.next()?.strip_prefix("ms=")?.parse().ok()?;
    let errors = it
        .next()
        .and_then(|e| e.strip_prefix("errors="))
        .unwrap_or("?")
        .to_owned();
    Some((c, ms, errors))
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// One publisher: QoS 1, rumqttc's in-flight window of 100; paced at `rate` events/s if given.
/// Returns when every PUBACK arrived, with the time each message was handed to the client.
pub(crate) async fn publish(
    port: u16,
    id: String,
    msgs: Vec<Msg>,
    rate_per_s: Option<f64>,
) -> anyhow::Result<Vec<Instant>> {
    let mut o = MqttOptions::new(id.clone(), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(64 * 1024, 64 * 1024)
        .set_inflight(100);
    let (client, mut el) = AsyncClient::new(o, 1000);
    let n = msgs.len();
    let closer = client.clone();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            if let MqttEvent::Incoming(Packet::PubAck(_)) = el.poll().await? {
                acked += 1;
            }
        }
        // Every PUBACK is in: say goodbye.
        closer.disconnect().await?;
        while !matches!(
            el.poll().await,
            Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
        ) {}
        anyhow::Ok(())
    });
    let start = Instant::now();
    let mut sent = Vec::with_capacity(n);
    for (k, m) in msgs.into_iter().enumerate() {
        if let Some(r) = rate_per_s {
            let due = start + Duration::from_secs_f64(k as f64 / r);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        sent.push(Instant::now());
        client
            .publish(m.topic, QoS::AtLeastOnce, false, m.payload)
            .await
            .with_context(|| format!("{id}: publish"))?;
    }
    drop(client);
    tokio::time::timeout(Duration::from_secs(300), acks)
        .await
        .with_context(|| format!("{id}: not every PUBACK in 300 s"))???;
    Ok(sent)
}

/// A collector in this process on its own 2-thread runtime (as the binary on a 2-core machine).
struct RunningCollector {
    metrics: Arc<Metrics>,
    http: SocketAddr,
    shutdown: CancellationToken,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl RunningCollector {
    fn start(config: Config, dir: tempfile::TempDir) -> anyhow::Result<RunningCollector> {
        let (tx, rx) = std::sync::mpsc::channel();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let app = Application::build(config).await?;
                let _ = tx.send((app.metrics(), app.http_addr()));
                app.run(stop).await?;
                anyhow::Ok(())
            })
        });
        let (metrics, http) = rx
            .recv_timeout(Duration::from_secs(30))
            .context("the collector did not start")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !metrics.subscribed.load(Relaxed) {
            if Instant::now() > deadline {
                bail!("the collector did not subscribe in 30 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(RunningCollector {
            metrics,
            http,
            shutdown,
            thread,
            _dir: dir,
        })
    }

    /// Asks the collector to stop and waits up to 20 s for it (then leaves it behind, saying so).
    fn stop(self) {
        self.shutdown.cancel();
        let started = Instant::now();
        while !self.thread.is_finished() {
            if started.elapsed() > Duration::from_secs(20) {
                eprintln!("warning: the collector did not stop within 20 s of its shutdown signal; left running");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match self.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("collector ended with an error: {e:#}"),
            Err(_) => eprintln!("collector thread panicked"),
        }
    }
}
