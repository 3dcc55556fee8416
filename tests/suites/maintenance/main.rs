//! The maintenance scenario, for real: a real Mosquitto, a real SQLite ledger, the collector's HTTP
//! server on port 0, a webhook receiver started here, and the workshop simulator's firmware device
//! as the machine's box.
//!
//! Simulated use crosses a service threshold; the due-soon and overdue alerts arrive on MQTT and on
//! the webhook (whose first answer is a 503, so the retry is exercised); the lock reaches the device,
//! which refuses badges with `maintenance_lock`; a recorded service releases it and the device
//! accepts badges again; then the box is swapped for another one (counting its boots from 1 again,
//! with lifetime counters of its own) and the machine's counters continue.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use fabmeter_agent::sim::{self, MachineKind, SimConfig, SimMachine};
use fabmeter_collector::app::Application;
use fabmeter_collector::config::{Config, PlanConfig};
use fabmeter_collector::ledger::SqliteLedger;
use fabmeter_collector::maintenance::admin;
use fabmeter_e2e::ReceivedMessage;
use fabmeter_e2e::{wait_until, Mosquitto};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const SITE: &str = "atelier";
const MACHINE: &str = "laser-1";
/// Long enough for a simulated workshop day at 1440x on a loaded machine.
const SCENARIO: Duration = Duration::from_secs(300);

fn get_json(port: u16, path: &str) -> Value {
    fabmeter_e2e::http::get("127.0.0.1", port, path)
        .ok()
        .and_then(|r| serde_json::from_str(&r.text()).ok())
        .unwrap_or(Value::Null)
}

fn laser(port: u16) -> Value {
    let v = get_json(port, "/api/maintenance");
    v["machines"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["machine"] == MACHINE).cloned())
        .unwrap_or(Value::Null)
}

fn metric(port: u16, name: &str) -> u64 {
    let text = fabmeter_e2e::http::get("127.0.0.1", port, "/metrics")
        .map(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn json_of(m: &ReceivedMessage) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or(Value::Null)
}

/// The demo's site (its members and the laser's sensing) reduced to one laser with one plan.
fn site_config(broker: &Mosquitto, dir: &std::path::Path, webhook: String) -> Config {
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut c = fabmeter::demo::collector_config(broker.port(), http, dir);
    c.site.id = SITE.into();
    c.mqtt.client_id = "fm-collector-maint".into();
    c.machines.retain(|m| m.id == MACHINE);
    // The swapped-in box below publishes hand-written, unsigned events.
    c.security.require_signed_events = false;
    c.security.device_keys_file = None;
    assert_eq!(c.machines.len(), 1, "the demo has {MACHINE}");
    c.devices.publish_configs = true;
    c.maintenance.check_s = 1;
    c.maintenance.webhook_url = Some(webhook);
    c.maintenance.plans = vec![PlanConfig {
        name: "lens-cleaning".into(),
        machines: vec![MACHINE.into()],
        kinds: vec![],
        // A laser visit is 2 to 150 busy minutes. The simulated machine has no relay, so a refused
        // visit still runs it: with 2 h, the visit running when the service is recorded does not
        // lock the machine again before the next member badges.
        every_busy_h: Some(2.0),
        every_days: None,
        warn_before: 0.5,
        lock_when_overdue: true,
    }];
    c
}

#[test]
fn a_threshold_alerts_locks_the_device_a_service_releases_it_and_counters_survive_a_swap() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // The webhook receiver: refuses its first call (503), then stores every alert.
    let hooks: Arc<Mutex<Vec<Value>>> = Arc::default();
    let calls = Arc::new(AtomicU32::new(0));
    let (h, n) = (hooks.clone(), calls.clone());
    let receiver = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let (h, n) = (h.clone(), n.clone());
            async move {
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                h.lock().expect("hooks").push(v);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the webhook receiver");
    let hook_port = listener.local_addr().expect("address").port();
    rt.spawn(async move { axum::serve(listener, receiver).await });

    let mut alerts = broker
        .client()
        .subscribe(&[&format!("fabmeter/v1/{SITE}/+/alert")], 1)
        .expect("subscribe to alerts");
    let mut configs = broker
        .client()
        .subscribe(&[&format!("fabmeter/v1/{SITE}/{MACHINE}/config")], 1)
        .expect("subscribe to configs");

    let config = site_config(
        &broker,
        dir.path(),
        format!("http://127.0.0.1:{hook_port}/hook"),
    );
    let app = rt
        .block_on(Application::build(config.clone()))
        .expect("collector builds");
    let http = app.http_addr().port();
    let stop = CancellationToken::new();
    let collector = rt.spawn(app.run(stop.clone()));

    // Subscribed before the device publishes its first event (a fresh broker keeps no session).
    wait_until(Duration::from_secs(30), "the collector is ready", || {
        fabmeter_e2e::http::get("127.0.0.1", http, "/readyz").is_ok_and(|r| r.is_success())
    });

    // The device: the firmware's core in the simulator, taking its config from the collector.
    let mut s = SimConfig::demo(SITE, broker.port());
    s.machines = vec![SimMachine {
        id: MACHINE.into(),
        name: "Laser CO2".into(),
        kind: MachineKind::LaserCutter,
    }];
    s.publish_configs = false;
    s.telemetry_s = 0;
    s.seed = 7;
    let sim_stop = CancellationToken::new();
    let simulator = rt.spawn(sim::run(s, sim_stop.clone()));

    // 1. The threshold is crossed: due soon, then overdue, on MQTT.
    let seen = alerts
        .wait_for(SCENARIO, "a maintenance_overdue alert on MQTT", |m| {
            json_of(m)["code"] == "maintenance_overdue"
        })
        .expect("overdue alert");
    let codes: Vec<String> = seen
        .iter()
        .map(|m| json_of(m)["code"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        codes.iter().any(|c| c == "maintenance_due_soon"),
        "due soon came before overdue: {codes:?}"
    );
    let overdue = json_of(seen.last().expect("one"));
    assert_eq!(overdue["severity"], "critical");
    assert_eq!(
        seen.last().map(|m| m.topic.as_str()),
        Some("fabmeter/v1/atelier/laser-1/alert")
    );

    // ... and on the webhook, after a refused first attempt.
    wait_until(
        Duration::from_secs(30),
        "the webhook receives the overdue alert",
        || {
            hooks.lock().expect("hooks").iter().any(|v| {
                v["state"] == "overdue" && v["machine"] == MACHINE && v["plan"] == "lens-cleaning"
            })
        },
    );
    assert!(
        calls.load(Ordering::SeqCst) >= 3,
        "a retry after the 503, then two alerts"
    );
    assert!(metric(http, "fabmeter_webhook_errors_total") >= 1);
    {
        let h = hooks.lock().expect("hooks");
        let due_soon = h
            .iter()
            .find(|v| v["state"] == "due_soon")
            .expect("the retried due-soon alert");
        assert_eq!(due_soon["severity"], "warning");
        assert_eq!(due_soon["site"], SITE);
    }

    // 2. The lock reaches the device: retained config with a lock, and a badge refused for it.
    configs
        .wait_for(Duration::from_secs(30), "a config with a lock", |m| {
            json_of(m)["lock"]["reason"] == "service overdue: lens-cleaning"
        })
        .expect("locked config");
    wait_until(
        SCENARIO,
        "the device refuses a badge with maintenance_lock",
        || laser(http)["refused_locked"].as_u64().unwrap_or(0) >= 1,
    );
    let m = laser(http);
    assert_eq!(m["lock"], "service overdue: lens-cleaning");
    assert_eq!(m["plans"][0]["state"], "overdue");
    assert!(
        m["plans"][0]["busy_h_left"].as_f64().unwrap_or(1.0) <= 0.0,
        "{m}"
    );
    // No session can start while locked: everything counted now started before the lock.
    let sessions_locked = get_json(http, "/api/sessions")["sessions"]
        .as_array()
        .map_or(0, Vec::len);

    // 3. A recorded service (as `maintenance done` does, on its own ledger connection) releases it.
    let mut ledger = SqliteLedger::open(
        &config.ledger.path,
        &config.site_id().expect("site"),
        config.badge_directory(),
    )
    .expect("open the ledger beside the running collector");
    let done = admin::record_service(
        &config,
        &mut ledger,
        MACHINE,
        "lens-cleaning",
        "tech",
        "lens and mirrors cleaned",
        None,
        fabmeter_collector::ingest::now_ms(),
    )
    .expect("service recorded");
    assert!(
        done.busy_s_at >= 1800,
        "recorded at the machine's busy counter: {done:?}"
    );
    alerts
        .wait_for(Duration::from_secs(30), "a maintenance_ok alert", |m| {
            json_of(m)["code"] == "maintenance_ok"
        })
        .expect("ok alert");
    configs
        .wait_for(Duration::from_secs(30), "a config without a lock", |m| {
            let v = json_of(m);
            v["allow"].is_array() && v.get("lock").is_none()
        })
        .expect("unlocked config");
    // (The ok alert and the unlocked config prove the state went back to ok; the simulated use
    // goes on meanwhile, so the state itself may already have moved on.)
    let m = laser(http);
    assert_eq!(m["plans"][0]["last_service_by"], "tech");
    assert_eq!(
        m["plans"][0]["last_service_ms"].as_u64(),
        Some(done.done_ms)
    );
    let availability = m["availability"]["availability"]
        .as_f64()
        .expect("availability");
    assert!(
        availability < 1.0,
        "the time locked for the overdue service counts as downtime: {m}"
    );
    wait_until(SCENARIO, "the device accepts a badge again", || {
        get_json(http, "/api/sessions")["sessions"]
            .as_array()
            .map_or(0, Vec::len)
            > sessions_locked
    });

    // 4. The box is swapped: the simulator's device goes, another box comes.
    sim_stop.cancel();
    let report = rt
        .block_on(simulator)
        .expect("simulator task")
        .expect("simulator ran");
    assert_eq!(report.journal_left(), 0, "the old box delivered everything");
    let counters = |p: u16| get_json(p, &format!("/api/machines/{MACHINE}/counters"));
    let mut stored = None;
    let all_in = fabmeter_e2e::try_wait_until(
        Duration::from_secs(30),
        "the ledger has every event of the old box",
        || {
            stored = counters(http)["events"].as_u64();
            stored == Some(report.events_distinct())
        },
    );
    assert!(
        all_in.is_ok(),
        "the ledger holds {stored:?} events of the old box, it sent {} distinct: {report:?}",
        report.events_distinct(),
    );
    let before = counters(http);
    let since_before = laser(http)["plans"][0]["busy_h_since"]
        .as_f64()
        .expect("busy_h_since");

    // The new box has its own box id (48879; the simulator derives its boxes' from seed and
    // machine) and counts its boots from 1 again, like the old one did (same keys, other events),
    // and carries large lifetime counters of its own. It reports under this machine's topic, so
    // what it measures here counts here, after what the old box measured.
    let cli = broker.client().client_id("fm-atelier-laser-1-newbox");
    let topic = format!("fabmeter/v1/{SITE}/{MACHINE}/event");
    let events = [
        r#"{"v":1,"box":48879,"boot":1,"seq":1,"uptime_ms":1000,"sent_uptime_ms":1001,"event":{"counters":{"on_s":9000000,"busy_s":5000000,"energy_wh":777777,"journal_dropped":0}}}"#,
        r#"{"v":1,"box":48879,"boot":1,"seq":2,"uptime_ms":2000,"sent_uptime_ms":2001,"event":{"state":{"from":"off","to":"idle"}}}"#,
        r#"{"v":1,"box":48879,"boot":1,"seq":3,"uptime_ms":3000,"sent_uptime_ms":3001,"event":{"state":{"from":"idle","to":"busy"}}}"#,
        r#"{"v":1,"box":48879,"boot":1,"seq":4,"uptime_ms":1803000,"sent_uptime_ms":1803001,"event":{"state":{"from":"busy","to":"idle"}}}"#,
    ];
    for e in events {
        cli.publish(&topic, e, 1, false)
            .expect("publish an event of the new box");
    }
    wait_until(
        Duration::from_secs(30),
        "the new box's events are stored",
        || {
            counters(http)["boots"].as_u64() == before["boots"].as_u64().map(|b| b + 1)
                && counters(http)["events"].as_u64() == before["events"].as_u64().map(|e| e + 4)
        },
    );
    let after = counters(http);
    let busy = |v: &Value| v["busy_s"].as_u64().expect("busy_s");
    assert_eq!(
        busy(&after),
        busy(&before) + 1800,
        "the machine's busy time continues with the new box's half hour, and not with the box's own counters"
    );
    assert_eq!(
        after["on_s"].as_u64(),
        before["on_s"].as_u64().map(|s| s + 1801)
    );
    let since_after = laser(http)["plans"][0]["busy_h_since"]
        .as_f64()
        .expect("busy_h_since");
    assert!(
        (since_after - since_before - 0.5).abs() < 0.002,
        "the plan's count continues across the swap: {since_before} then {since_after}"
    );

    stop.cancel();
    rt.block_on(collector)
        .expect("collector task")
        .expect("collector stops cleanly");
}
