//! The workshop simulator against a real Mosquitto (started by the harness).

mod helpers;

use std::collections::BTreeMap;
use std::time::Duration;

use fabmeter_agent::protocol::message::{EventBody, Presence};
use fabmeter_agent::sim::{self, Crash, SimConfig, SimStats};
use fabmeter_e2e::{wait_until, Mosquitto};
use helpers::{collect_all, runtime};
use tokio_util::sync::CancellationToken;

const HOUR: u64 = 3_600_000;

fn demo(site: &str, port: u16, speed: f64, duration_ms: u64) -> SimConfig {
    SimConfig {
        speed,
        duration_ms: Some(duration_ms),
        telemetry_s: 0,
        ..SimConfig::demo(site, port)
    }
}

#[test]
fn same_seed_same_events() {
    let broker = Mosquitto::start().expect("mosquitto");
    let rt = runtime();
    let mut streams = Vec::new();
    for site in ["det-a", "det-b"] {
        let mut sub = broker
            .client()
            .subscribe(
                &[
                    &format!("fabmeter/v1/{site}/+/event"),
                    &format!("fabmeter/v1/{site}/+/status"),
                ],
                1,
            )
            .expect("subscribe");
        let cfg = demo(site, broker.port(), 14_400.0, 14 * HOUR);
        let report = rt
            .block_on(sim::run(cfg, CancellationToken::new()))
            .expect("run");
        assert_eq!(report.journal_left(), 0, "{report:?}");
        let seen = collect_all(&mut sub, &report, Duration::from_secs(30));
        streams.push(seen.distinct());
    }
    let (a, b) = (&streams[0], &streams[1]);
    assert_eq!(a.len(), 8, "every machine published events");
    let total: usize = a.values().map(Vec::len).sum();
    let sessions = a
        .values()
        .flatten()
        .filter(|e| matches!(e.event, EventBody::SessionEnded { .. }))
        .count();
    assert!(sessions >= 5, "{sessions} sessions in 14 sim hours");
    for (machine, events) in a {
        assert_eq!(Some(events), b.get(machine), "{machine}: streams differ");
    }
    eprintln!("{total} events, {sessions} sessions, identical in both runs");
}

#[test]
fn with_a_device_key_secret_every_event_is_signed_for_its_machine() {
    use fabmeter_agent::protocol::{DeviceKey, Topic};
    let broker = Mosquitto::start().expect("mosquitto");
    let mut sub = broker
        .client()
        .subscribe(
            &["fabmeter/v1/signed/+/event", "fabmeter/v1/signed/+/status"],
            1,
        )
        .expect("subscribe");
    let secret = [42u8; 32];
    let mut cfg = demo("signed", broker.port(), 14_400.0, 8 * HOUR);
    cfg.device_key_secret = Some(secret);
    let report = runtime()
        .block_on(sim::run(cfg, CancellationToken::new()))
        .expect("run");
    assert_eq!(report.journal_left(), 0, "{report:?}");
    let seen = collect_all(&mut sub, &report, Duration::from_secs(30));
    assert!(seen.raw_events.len() >= 8, "{}", seen.raw_events.len());
    for (topic, payload) in &seen.raw_events {
        let machine = Topic::parse(topic).expect("topic").machine;
        let key = DeviceKey::derive(&secret, machine.as_str());
        assert_eq!(
            key.verify(topic, payload),
            Ok(()),
            "{topic}: {}",
            String::from_utf8_lossy(payload)
        );
        // The key of another machine does not verify it.
        let other = DeviceKey::derive(&secret, "not-this-one");
        assert!(other.verify(topic, payload).is_err());
    }
}

#[test]
fn births_sessions_and_last_will_reach_a_subscriber() {
    let broker = Mosquitto::start().expect("mosquitto");
    let mut sub = broker
        .client()
        .subscribe(
            &["fabmeter/v1/live/+/event", "fabmeter/v1/live/+/status"],
            1,
        )
        .expect("subscribe");
    let rt = runtime();
    let mut cfg = demo("live", broker.port(), 14_400.0, 24 * HOUR);
    cfg.crashes = vec![Crash {
        machine: "printer-1".into(),
        at_ms: 10 * HOUR,
        down_ms: HOUR / 2,
    }];
    let report = rt
        .block_on(sim::run(cfg, CancellationToken::new()))
        .expect("run");
    assert_eq!(report.journal_left(), 0);
    let seen = collect_all(&mut sub, &report, Duration::from_secs(30));

    // Births of every machine.
    for (machine, statuses) in &seen.statuses {
        let (first, _) = &statuses[0];
        assert_eq!(first.status, Presence::Online, "{machine}");
        // The first birth precedes the retained config (it comes after the subscription).
        assert!(first.fw.is_some() && first.caps.is_some(), "{machine}");
    }
    assert_eq!(seen.statuses.len(), 8);

    // The crash: the last will (offline, boot 1) arrives live, then the birth of boot 2.
    let p1: Vec<_> = seen.statuses["printer-1"]
        .iter()
        .map(|(s, _)| (s.status, s.boot))
        .collect();
    assert_eq!(
        p1,
        vec![
            (Presence::Online, 1),
            (Presence::Offline, 1),
            (Presence::Online, 2),
            (Presence::Offline, 2)
        ]
    );
    assert_eq!(report.machines[0].boots, 1);
    // After the reboot the birth names the config kept in flash.
    assert!(seen.statuses["printer-1"][2].0.config_hash.is_some());

    // State changes and complete sessions with consistent totals.
    let distinct = seen.distinct();
    let states = distinct
        .values()
        .flatten()
        .filter(|e| matches!(e.event, EventBody::State { .. }))
        .count();
    assert!(states > 10, "{states} state changes");
    let mut full = 0;
    for (machine, events) in &distinct {
        let mut open: BTreeMap<(u32, u32), (fabmeter_agent::protocol::BadgeHash, u32, u32, u32)> =
            BTreeMap::new();
        for e in events {
            match &e.event {
                EventBody::SessionStarted { badge } => {
                    open.insert((e.boot, e.seq), (*badge, 0, 0, 0));
                }
                EventBody::SessionProgress {
                    session,
                    busy_s,
                    idle_s,
                    energy_wh,
                } => {
                    let s = open
                        .get_mut(&(e.boot, *session))
                        .expect("progress of a started session");
                    assert!(*busy_s >= s.1 && *idle_s + *busy_s >= s.1 + s.2 && *energy_wh >= s.3);
                    *s = (s.0, *busy_s, *idle_s, *energy_wh);
                }
                EventBody::SessionEnded {
                    session,
                    badge,
                    busy_s,
                    idle_s,
                    energy_wh,
                    ..
                } => {
                    let s = open
                        .remove(&(e.boot, *session))
                        .unwrap_or_else(|| panic!("{machine}: end of unknown session {session}"));
                    assert_eq!(s.0, *badge, "{machine}");
                    assert!(*busy_s >= s.1 && busy_s + idle_s >= s.1 + s.2 && *energy_wh >= s.3);
                    if s.1 + s.2 > 0 {
                        full += 1;
                    }
                }
                _ => {}
            }
        }
        // A session open at the crash never ends in boot 1; every other one ended.
        assert!(
            open.keys()
                .all(|(boot, _)| machine == "printer-1" && *boot == 1),
            "{machine}: {open:?}"
        );
    }
    assert!(full >= 5, "{full} sessions with progress and end");
}

#[test]
fn broker_outage_loses_and_duplicates_nothing() {
    let mut broker = Mosquitto::builder()
        .persistence(true)
        .start()
        .expect("mosquitto");
    let mut sub = broker
        .client()
        .client_id("outage-watcher")
        .clean_session(false)
        .subscribe(
            &["fabmeter/v1/outage/+/event", "fabmeter/v1/outage/+/status"],
            1,
        )
        .expect("subscribe");
    let rt = runtime();
    let cfg = demo("outage", broker.port(), 7_200.0, 24 * HOUR);
    let report = run_through_an_outage(&rt, &mut broker, cfg);
    let seen = collect_all(&mut sub, &report, Duration::from_secs(60));
    let (total, dups) = assert_in_order(&seen);
    assert_eq!(seen.events.len(), 8);
    eprintln!("{total} distinct events, {dups} duplicates removed");

    // And they are exactly the events of the same workshop run without an outage.
    let reference = calm_reference(&rt, &broker, "calm");
    assert_eq!(seen.distinct(), reference, "the outage changed the events");
}

#[test]
fn machines_sharing_connections_send_the_same_events_through_an_outage() {
    let mut broker = Mosquitto::builder()
        .persistence(true)
        .start()
        .expect("mosquitto");
    let mut sub = broker
        .client()
        .client_id("shared-watcher")
        .clean_session(false)
        .subscribe(
            &["fabmeter/v1/shared/+/event", "fabmeter/v1/shared/+/status"],
            1,
        )
        .expect("subscribe");
    let rt = runtime();
    let mut cfg = demo("shared", broker.port(), 7_200.0, 24 * HOUR);
    // 8 machines on 3 connections (3 + 3 + 2).
    cfg.machines_per_connection = 3;
    let report = run_through_an_outage(&rt, &mut broker, cfg);

    // The broker saw three client ids for the eight machines, none of a machine's own.
    let log = broker.log_contents();
    let mut ids: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split(" as ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|id| id.starts_with("fm-shared-"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids,
        vec!["fm-shared-mux-1", "fm-shared-mux-2", "fm-shared-mux-3"],
        "{log}"
    );

    let seen = collect_all(&mut sub, &report, Duration::from_secs(60));
    assert_in_order(&seen);
    assert_eq!(seen.events.len(), 8);

    // The same events as the same workshop with a connection per machine and no outage.
    let reference = calm_reference(&rt, &broker, "alone");
    assert_eq!(seen.distinct(), reference, "sharing changed the events");
}

#[test]
fn a_bad_machines_per_connection_names_the_field() {
    let mut cfg = demo("bad", 1883, 1.0, HOUR);
    cfg.machines_per_connection = 0;
    let err = cfg.validate().expect_err("0 is refused").to_string();
    assert!(err.contains("machines_per_connection 0"), "{err}");
}

/// Runs `cfg` and stops the broker during the working day for at least one simulated hour; checks
/// that every journal emptied and every machine connected again.
fn run_through_an_outage(
    rt: &tokio::runtime::Runtime,
    broker: &mut Mosquitto,
    cfg: SimConfig,
) -> sim::SimReport {
    let stats = std::sync::Arc::new(SimStats::new(cfg.machines.len()));
    let run = rt.spawn(sim::run_with_stats(
        cfg,
        CancellationToken::new(),
        stats.clone(),
    ));
    wait_until(Duration::from_secs(30), "10 sim hours", || {
        stats.sim_ms() >= 10 * HOUR
    });
    broker.stop().expect("stop broker");
    let stopped_at = stats.sim_ms();
    wait_until(Duration::from_secs(30), "one sim hour of outage", || {
        stats.sim_ms() >= stopped_at + HOUR
    });
    broker.start_again().expect("restart broker");
    let report = rt.block_on(run).expect("join").expect("run");
    assert_eq!(report.journal_left(), 0, "{report:?}");
    assert!(
        report.machines.iter().all(|m| m.connects >= 2),
        "every machine connected again: {report:?}"
    );
    report
}

/// Checks that, per (machine, boot), each new event key is the next seq (no gap, no reorder);
/// returns the number of distinct events and of duplicates.
fn assert_in_order(seen: &helpers::Seen) -> (usize, usize) {
    let mut total = 0;
    let mut dups = 0;
    for (machine, events) in &seen.events {
        let mut last: BTreeMap<u32, u32> = BTreeMap::new();
        let mut keys = std::collections::BTreeSet::new();
        for e in events {
            if !keys.insert((e.boot, e.seq)) {
                dups += 1;
                continue;
            }
            let prev = last.entry(e.boot).or_insert(0);
            assert_eq!(
                e.seq,
                *prev + 1,
                "{machine} boot {}: gap or reorder",
                e.boot
            );
            *prev = e.seq;
        }
        total += keys.len();
    }
    (total, dups)
}

/// The distinct events of the demo workshop over 24 sim hours as site `site`, a connection per
/// machine and no outage: the reference the outage runs must equal.
fn calm_reference(
    rt: &tokio::runtime::Runtime,
    broker: &Mosquitto,
    site: &str,
) -> BTreeMap<String, Vec<fabmeter_agent::protocol::message::Event>> {
    let mut sub = broker
        .client()
        .subscribe(
            &[
                &format!("fabmeter/v1/{site}/+/event"),
                &format!("fabmeter/v1/{site}/+/status"),
            ],
            1,
        )
        .expect("subscribe");
    let cfg = demo(site, broker.port(), 14_400.0, 24 * HOUR);
    let report = rt
        .block_on(sim::run(cfg, CancellationToken::new()))
        .expect("run");
    collect_all(&mut sub, &report, Duration::from_secs(30)).distinct()
}
