//! The collector against a real Mosquitto and VictoriaMetrics: exactly-once ingest, sessions,
//! time series, dead letters, crash and outage recovery.

mod helpers;
mod network;
mod postgres;
mod signatures;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fabmeter_collector::ledger::{Ledger, SessionQuery, SqliteLedger};
use fabmeter_e2e::{wait_until, KillOnDrop, Mosquitto, VictoriaMetrics};
use fabmeter_protocol::Id;
use helpers::*;

const LONG: Duration = Duration::from_secs(120);

fn open_ledger(dir: &std::path::Path) -> SqliteLedger {
    SqliteLedger::open(
        &ledger_path(dir),
        &Id::new(SITE).expect("id"),
        HashMap::new(),
    )
    .expect("open ledger for reading")
}

fn assert_ledger_matches(dir: &std::path::Path, exp: &Expected) {
    let l = open_ledger(dir);
    assert_eq!(
        l.totals().expect("totals").events,
        exp.keys.len() as u64,
        "distinct events"
    );
    let sessions = l
        .sessions(&SessionQuery {
            limit: Some(1_000_000),
            ..Default::default()
        })
        .expect("sessions");
    let got: BTreeMap<(String, u32, u32), u32> = sessions
        .iter()
        .map(|s| ((s.machine.clone(), s.boot, s.session), s.busy_s))
        .collect();
    assert_eq!(got, exp.sessions, "every session with its totals");
    assert!(sessions
        .iter()
        .all(|s| s.status == "closed" && s.member.as_deref() == Some("alice")));
}

#[test]
fn ten_thousand_events_duplicated_and_shuffled_are_stored_exactly_once() {
    let broker = Mosquitto::start().expect("mosquitto");
    let vm = VictoriaMetrics::start().expect("victoria-metrics");
    let machines = ["m0", "m1", "m2", "m3", "m4"];
    let dir = tempfile::tempdir().expect("tempdir");
    let config = with_timeseries(site_config(&broker, &machines, dir.path()), &vm.base_url());
    let collector = TestCollector::start(config, dir);
    wait_until(LONG, "collector subscribed", || {
        collector.metric("fabmeter_mqtt_up") == 1
    });

    let (per_machine, exp) = workload(&machines, 2, 100, 6);
    let mut rng = Rng::new(42);
    let mut sent = 0;
    let per_client: Vec<(String, Vec<Msg>)> = per_machine
        .into_iter()
        .map(|(m, mut msgs)| {
            // 10% duplicated, then shuffled across both boots.
            let dups: Vec<Msg> = msgs
                .iter()
                .filter(|_| rng.below(10) == 0)
                .cloned()
                .collect();
            msgs.extend(dups);
            rng.shuffle(&mut msgs);
            sent += msgs.len();
            (format!("device-{m}"), msgs)
        })
        .collect();
    assert!(exp.keys.len() >= 10_000, "{}", exp.keys.len());
    publish_parallel(broker.port(), per_client);

    wait_until(LONG, "every message acknowledged", || {
        collector.metric("fabmeter_acked_total") >= sent as u64
    });
    let accepted = collector.metric("fabmeter_accepted_total");
    let duplicate = collector.metric("fabmeter_duplicate_total");
    assert_eq!(accepted, exp.keys.len() as u64);
    assert_eq!(accepted + duplicate, sent as u64);
    assert_ledger_matches(collector.dir.path(), &exp);

    // The API agrees with the ledger.
    let api: serde_json::Value = serde_json::from_str(
        &collector
            .get("/api/sessions?machine=m3&limit=100000")
            .text(),
    )
    .expect("json");
    assert_eq!(api["sessions"].as_array().map(Vec::len), Some(200));
    let csv = collector.get("/api/sessions.csv?member=alice").text();
    assert_eq!(csv.lines().count(), 1 + exp.sessions.len());

    // Time series: one machine_state sample per state event, at the device's time.
    wait_until(LONG, "state points in VictoriaMetrics", || {
        vm.force_flush();
        let series = vm.export("{__name__=\"machine_state_state\"}");
        series.iter().map(|s| s.values.len()).sum::<usize>()
            == exp.states.values().map(Vec::len).sum::<usize>()
    });
    for s in vm.export("{__name__=\"machine_state_state\"}") {
        let m = s.label("machine").expect("machine label").to_owned();
        assert_eq!(s.label("site"), Some(SITE));
        assert_eq!(s.label("kind"), Some("laser"));
        let mut want: Vec<i64> = exp.states[&m].iter().map(|t| *t as i64).collect();
        want.sort_unstable();
        assert_eq!(s.timestamps, want, "{m}");
    }
    let sessions: usize = vm
        .export("{__name__=\"session_busy_s\"}")
        .iter()
        .map(|s| s.values.len())
        .sum();
    assert_eq!(sessions, exp.sessions.len());
}

#[test]
fn bad_input_lands_in_dead_letters_and_good_input_around_it_is_accepted() {
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = TestCollector::start(site_config(&broker, &["m0"], dir.path()), dir);
    wait_until(LONG, "collector subscribed", || {
        collector.metric("fabmeter_mqtt_up") == 1
    });
    let (per_machine, exp) = workload(&["m0"], 1, 2, 1);
    let good = &per_machine["m0"];
    let bad = |topic: &str, payload: &[u8]| Msg {
        topic: topic.into(),
        payload: payload.to_vec(),
    };
    let mut msgs = Vec::new();
    for (i, g) in good.iter().enumerate() {
        msgs.push(g.clone());
        match i {
            0 => msgs.push(bad("fabmeter/v1/atelier/m0/event", b"{\"v\":1,")),
            1 => msgs.push(bad("fabmeter/v1/atelier/m0/event", &vec![b' '; 5000])),
            2 => msgs.push(bad("fabmeter/v1/atelier/ghost/event", &g.payload)),
            3 => msgs.push(bad(
                "fabmeter/v1/atelier/m0/status",
                br#"{"v":1,"status":"online","boot":1}"#,
            )),
            4 => msgs.push(bad("fabmeter/v1/atelier/m0/event", br#"{"v":9}"#)),
            _ => {}
        }
    }
    publish_all(broker.port(), "device-m0", &msgs);
    wait_until(LONG, "every message acknowledged", || {
        collector.metric("fabmeter_acked_total") >= msgs.len() as u64
    });
    assert_eq!(
        collector.metric("fabmeter_accepted_total"),
        exp.keys.len() as u64
    );
    let metrics = collector.get("/metrics").text();
    for (reason, n) in [
        ("syntax", 1),
        ("too_large", 1),
        ("unknown_machine", 1),
        ("invalid", 1),
        ("unsupported_version", 1),
    ] {
        assert_eq!(
            metric_of(
                &metrics,
                &format!("fabmeter_rejected_total{{reason=\"{reason}\"}}")
            ),
            n,
            "{reason}\n{metrics}"
        );
    }
    let dead: serde_json::Value =
        serde_json::from_str(&collector.get("/api/dead-letters").text()).expect("json");
    let dead = dead["dead_letters"].as_array().expect("array").clone();
    assert_eq!(dead.len(), 5);
    let ghost = dead
        .iter()
        .find(|d| d["reason"] == "unknown_machine")
        .expect("unknown machine");
    assert!(ghost["detail"]
        .as_str()
        .is_some_and(|d| d.contains("add it under [[machines]]")));
    let big = dead
        .iter()
        .find(|d| d["reason"] == "too_large")
        .expect("too large");
    assert_eq!(
        big["payload"].as_str().map(str::len),
        Some(4096),
        "kept, truncated to the limit"
    );
    assert_ledger_matches(collector.dir.path(), &exp);
    // Unknown machine ids in the API are 404 with a hint.
    let r = collector.get("/api/machines/ghost/counters");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("GET /api/machines"));
    let r = collector.get("/api/sessions?from=yesterday");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("parameter `from`"));
}

#[test]
fn the_ledger_keeps_accepting_while_victoriametrics_is_down_and_every_point_arrives_later() {
    let broker = Mosquitto::start().expect("mosquitto");
    let mut vm = VictoriaMetrics::start().expect("victoria-metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = with_timeseries(
        site_config(&broker, &["m0", "m1"], dir.path()),
        &vm.base_url(),
    );
    let collector = TestCollector::start(config, dir);
    wait_until(LONG, "collector subscribed", || {
        collector.metric("fabmeter_mqtt_up") == 1
    });
    let (per_machine, exp) = workload(&["m0", "m1"], 1, 20, 2);
    let (first, second): (Vec<Msg>, Vec<Msg>) = {
        let m0 = per_machine["m0"].clone();
        let m1 = per_machine["m1"].clone();
        (m0, m1)
    };
    publish_all(broker.port(), "device-m0", &first);
    wait_until(LONG, "first half in the store", || {
        vm.force_flush();
        vm.export("{__name__=\"machine_state_state\",machine=\"m0\"}")
            .first()
            .is_some_and(|s| s.values.len() == exp.states["m0"].len())
    });
    vm.stop().expect("stop victoria-metrics");
    publish_all(broker.port(), "device-m1", &second);
    wait_until(
        LONG,
        "ledger accepted everything while the store is down",
        || collector.metric("fabmeter_accepted_total") == exp.keys.len() as u64,
    );
    wait_until(LONG, "backlog holds the second half", || {
        collector.metric("fabmeter_timeseries_store_up") == 0
            && collector.metric("fabmeter_timeseries_backlog_points") > 0
    });
    vm.start_again().expect("restart victoria-metrics");
    wait_until(LONG, "backlog drained into the store", || {
        vm.force_flush();
        collector.metric("fabmeter_timeseries_backlog_points") == 0
            && vm
                .export("{__name__=\"machine_state_state\",machine=\"m1\"}")
                .first()
                .is_some_and(|s| s.values.len() == exp.states["m1"].len())
    });
    let m1 = &vm.export("{__name__=\"machine_state_state\",machine=\"m1\"}")[0];
    let want: Vec<i64> = exp.states["m1"].iter().map(|t| *t as i64).collect();
    assert_eq!(m1.timestamps, want, "every point once, in order");
    assert_ledger_matches(collector.dir.path(), &exp);
}

#[test]
fn a_collector_killed_mid_stream_loses_nothing_after_restart() {
    let broker = Mosquitto::builder()
        .persistence(true)
        .start()
        .expect("mosquitto with persistence");
    let dir = tempfile::tempdir().expect("tempdir");
    let machines = ["m0", "m1", "m2", "m3"];
    let config = site_config(&broker, &machines, dir.path());
    let config_path = dir.path().join("site.toml");
    std::fs::write(&config_path, config.to_toml()).expect("write config");
    let bin = env!("CARGO_BIN_EXE_fabmeter-collector");
    let spawn = || {
        KillOnDrop(
            std::process::Command::new(bin)
                .args(["run", "--config"])
                .arg(&config_path)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn the collector binary"),
        )
    };
    let read_addr = |child: &mut KillOnDrop| -> u16 {
        let child = &mut child.0;
        use std::io::BufRead as _;
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("first line");
        line.trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"))
    };
    let accepted = |port: u16| -> u64 {
        fabmeter_e2e::http::get("127.0.0.1", port, "/metrics")
            .map(|r| metric_of(&r.text(), "fabmeter_accepted_total"))
            .unwrap_or(0)
    };
    let mut child = spawn();
    let port = read_addr(&mut child);
    wait_until(LONG, "collector connected", || {
        fabmeter_e2e::http::get("127.0.0.1", port, "/readyz").is_ok_and(|r| r.status == 200)
    });
    let (per_machine, exp) = workload(&machines, 1, 417, 8);
    assert!(exp.keys.len() >= 20_000, "{}", exp.keys.len());
    let per_client: Vec<(String, Vec<Msg>)> = per_machine
        .into_iter()
        .map(|(m, v)| (format!("device-{m}"), v))
        .collect();
    let total = exp.keys.len() as u64;
    std::thread::scope(|s| {
        let publisher = s.spawn(|| publish_parallel(broker.port(), per_client));
        wait_until(LONG, "a part of the stream accepted", || {
            accepted(port) >= total / 4
        });
        fabmeter_e2e::send_signal(child.0.id(), fabmeter_e2e::Signal::Kill).expect("SIGKILL");
        let _ = child.0.wait();
        publisher.join().expect("publishers");
    });
    // The broker kept the collector's session and queued the rest.
    let mut child = spawn();
    let port = read_addr(&mut child);
    let mut last = (0, std::time::Instant::now());
    wait_until(LONG, "every distinct event in the ledger", || {
        let events = open_ledger(dir.path()).totals().map_or(0, |t| t.events);
        if events != last.0 || last.1.elapsed() > Duration::from_secs(10) {
            // Progress, for the log of a failed run.
            let m = fabmeter_e2e::http::get("127.0.0.1", port, "/metrics")
                .map(|r| r.text())
                .unwrap_or_default();
            eprintln!(
                "ledger {events}/{total}; received {} accepted {} duplicate {} acked {} errors {}",
                metric_of(&m, "fabmeter_received_total"),
                metric_of(&m, "fabmeter_accepted_total"),
                metric_of(&m, "fabmeter_duplicate_total"),
                metric_of(&m, "fabmeter_acked_total"),
                metric_of(&m, "fabmeter_commit_errors_total"),
            );
            last = (events, std::time::Instant::now());
        }
        events == total
    });
    fabmeter_e2e::send_signal(child.0.id(), fabmeter_e2e::Signal::Term).expect("SIGTERM");
    let status = child.0.wait().expect("collector exit");
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
    assert_ledger_matches(dir.path(), &exp);
}

#[test]
fn connects_over_tls_with_credentials_and_refuses_nothing_it_should_accept() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = fabmeter_e2e::TestPki::generate(pki_dir.path(), "unused-client").expect("test PKI");
    let broker = Mosquitto::builder()
        .user("collector", "s3cret")
        .user("device-m0", "dev1ce")
        .allow_anonymous(false)
        .tls(fabmeter_e2e::TlsListener::new(
            &pki.ca_cert,
            &pki.server_cert,
            &pki.server_key,
        ))
        .start()
        .expect("mosquitto with TLS and passwords");
    let tls_port = broker.tls_port().expect("a TLS listener");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = site_config(&broker, &["m0"], dir.path());
    config.mqtt.url = format!("mqtts://localhost:{tls_port}");
    config.mqtt.ca_file = Some(pki.ca_cert.clone());
    config.mqtt.username = Some("collector".into());
    config.mqtt.password = Some("s3cret".into());
    let collector = TestCollector::start(config, dir);
    wait_until(LONG, "collector connected over TLS", || {
        collector.metric("fabmeter_mqtt_up") == 1
    });

    let (per_machine, exp) = workload(&["m0"], 1, 3, 1);
    let device = broker
        .tls_client(&pki.ca_cert)
        .expect("TLS client")
        .credentials("device-m0", "dev1ce");
    for m in &per_machine["m0"] {
        device
            .publish(&m.topic, &m.payload, 1, false)
            .expect("publish over TLS");
    }
    wait_until(LONG, "every event accepted", || {
        collector.metric("fabmeter_accepted_total") == exp.keys.len() as u64
    });
    assert_ledger_matches(collector.dir.path(), &exp);
}

#[test]
fn wrong_broker_credentials_keep_the_collector_unready_with_a_reason() {
    let broker = Mosquitto::builder()
        .user("collector", "s3cret")
        .allow_anonymous(false)
        .start()
        .expect("mosquitto with passwords");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = site_config(&broker, &["m0"], dir.path());
    config.mqtt.username = Some("collector".into());
    config.mqtt.password = Some("wrong".into());
    let collector = TestCollector::start(config, dir);
    wait_until(LONG, "refused connection attempts", || {
        collector.metric("fabmeter_mqtt_connection_errors_total") >= 2
    });
    assert_eq!(collector.metric("fabmeter_mqtt_connects_total"), 0);
    assert_eq!(collector.get("/readyz").status, 503);
    assert_eq!(collector.get("/healthz").status, 200);
    assert!(collector
        .get("/readyz")
        .text()
        .contains("not connected to the MQTT broker"));
}

#[test]
fn unknown_machines_are_registered_when_the_site_allows_it() {
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = site_config(&broker, &[], dir.path());
    config.site.auto_register = true;
    let collector = TestCollector::start(config, dir);
    wait_until(LONG, "collector subscribed", || {
        collector.metric("fabmeter_mqtt_up") == 1
    });
    let (per_machine, exp) = workload(&["newcomer"], 1, 2, 1);
    publish_all(broker.port(), "device-newcomer", &per_machine["newcomer"]);
    wait_until(LONG, "every event accepted", || {
        collector.metric("fabmeter_accepted_total") == exp.keys.len() as u64
    });
    let machines: serde_json::Value =
        serde_json::from_str(&collector.get("/api/machines").text()).expect("json");
    let m = &machines["machines"][0];
    assert_eq!(
        (m["id"].as_str(), m["kind"].as_str()),
        (Some("newcomer"), Some("machine"))
    );
    assert_eq!(collector.metric("fabmeter_rejected_total"), 0);
    assert_ledger_matches(collector.dir.path(), &exp);
}

#[test]
fn resubscribes_when_a_restarted_broker_kept_no_session() {
    // No persistence: after the restart the broker has forgotten the collector's subscriptions,
    // so only a re-subscription by the collector lets new events in.
    let mut broker = Mosquitto::start().expect("mosquitto without persistence");
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = TestCollector::start(site_config(&broker, &["m0"], dir.path()), dir);
    wait_until(LONG, "collector connected", || {
        collector.metric("fabmeter_mqtt_connects_total") == 1
    });
    let (per_machine, exp) = workload(&["m0"], 2, 2, 1);
    let (boot1, boot2): (Vec<Msg>, Vec<Msg>) = per_machine["m0"]
        .iter()
        .cloned()
        .partition(|m| m.payload.windows(8).any(|w| w == b"\"boot\":1"));
    publish_all(broker.port(), "device-m0", &boot1);
    wait_until(LONG, "boot 1 accepted", || {
        collector.metric("fabmeter_accepted_total") == boot1.len() as u64
    });
    broker.kill().expect("kill broker");
    broker.start_again().expect("restart broker");
    wait_until(LONG, "collector reconnected and subscribed again", || {
        collector.metric("fabmeter_mqtt_connects_total") == 2
            && collector.metric("fabmeter_mqtt_subscribed") == 1
    });
    publish_all(broker.port(), "device-m0", &boot2);
    wait_until(LONG, "boot 2 accepted after the re-subscription", || {
        collector.metric("fabmeter_accepted_total") == exp.keys.len() as u64
    });
    assert_ledger_matches(collector.dir.path(), &exp);
}
