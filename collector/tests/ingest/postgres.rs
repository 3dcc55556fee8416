//! The collector with `ledger.url` on a private PostgreSQL cluster, through a real Mosquitto:
//! exactly-once ingest, and a database killed mid-stream: `/readyz` says why, nothing is
//! acknowledged until it is back, then every event is there once.

use std::collections::HashMap;
use std::time::Duration;

use fabmeter_collector::ledger::{Ledger, PgLedger, SessionQuery};
use fabmeter_e2e::{wait_until, Mosquitto, Postgres};
use fabmeter_protocol::Id;

use crate::helpers::*;

const LONG: Duration = Duration::from_secs(120);

#[test]
fn a_collector_on_postgresql_stores_each_event_once_across_a_database_crash() {
    let mut pg = Postgres::start().expect("PostgreSQL");
    let url = pg.create_database("fabmeter").expect("createdb");
    let broker = Mosquitto::start().expect("mosquitto");
    let machines = ["m0", "m1", "m2"];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = site_config(&broker, &machines, dir.path());
    config.ledger.url = Some(url.clone());
    let collector = TestCollector::start(config, dir);
    wait_until(LONG, "collector subscribed", || {
        collector.metric("fabmeter_mqtt_up") == 1
    });
    assert!(
        !collector.dir.path().join("ledger.sqlite").exists(),
        "no SQLite file when the ledger is PostgreSQL"
    );
    let (per_machine, exp) = workload(&machines, 2, 40, 4);
    let mut rng = Rng::new(7);
    let mut sent = 0;
    let mut clients: Vec<(String, Vec<Msg>)> = per_machine
        .into_iter()
        .map(|(m, mut msgs)| {
            let dups: Vec<Msg> = msgs.iter().filter(|_| rng.below(8) == 0).cloned().collect();
            msgs.extend(dups);
            rng.shuffle(&mut msgs);
            sent += msgs.len();
            (format!("device-{m}"), msgs)
        })
        .collect();
    // The first half, then the database dies.
    let second: Vec<(String, Vec<Msg>)> = clients
        .iter_mut()
        .map(|(id, msgs)| (id.clone(), msgs.split_off(msgs.len() / 2)))
        .collect();
    let first_half: usize = clients.iter().map(|(_, m)| m.len()).sum();
    publish_parallel(broker.port(), clients);
    wait_until(LONG, "the first half acknowledged", || {
        collector.metric("fabmeter_acked_total") >= first_half as u64
    });
    pg.kill().expect("kill PostgreSQL");
    let acked = collector.metric("fabmeter_acked_total");
    publish_parallel(broker.port(), second);
    wait_until(LONG, "/readyz names the failing ledger", || {
        let r = collector.get("/readyz");
        r.status == 503 && r.text().contains("PostgreSQL")
    });
    assert_eq!(
        collector.metric("fabmeter_acked_total"),
        acked,
        "nothing acknowledged while the ledger cannot commit"
    );
    pg.restart().expect("restart PostgreSQL");
    wait_until(LONG, "every message acknowledged", || {
        collector.metric("fabmeter_acked_total") >= sent as u64
    });
    // Ready again once a read reconnected (the first read after the crash finds the old
    // connection closed).
    wait_until(LONG, "ready again", || {
        collector.get("/readyz").status == 200
    });
    let l = PgLedger::open(&url, &Id::new(SITE).expect("id"), HashMap::new()).expect("open");
    assert_eq!(l.totals().expect("totals").events, exp.keys.len() as u64);
    let sessions = l
        .sessions(&SessionQuery {
            limit: Some(1_000_000),
            ..Default::default()
        })
        .expect("sessions");
    let got: std::collections::BTreeMap<(String, u32, u32), u32> = sessions
        .iter()
        .map(|s| ((s.machine.clone(), s.boot, s.session), s.busy_s))
        .collect();
    assert_eq!(got, exp.sessions, "every session with its totals");
    assert_eq!(
        collector.metric("fabmeter_accepted_total"),
        exp.keys.len() as u64,
        "each event accepted once"
    );
}

#[test]
fn a_collector_whose_database_is_down_still_stops_on_request_and_acknowledges_nothing() {
    let mut pg = Postgres::start().expect("PostgreSQL");
    let url = pg.create_database("fabmeter").expect("createdb");
    let broker = Mosquitto::start().expect("mosquitto");
    let machines = ["m0"];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = site_config(&broker, &machines, dir.path());
    config.ledger.url = Some(url.clone());
    let mut collector = TestCollector::start(config, dir);
    wait_until(LONG, "collector ready", || {
        collector.get("/readyz").status == 200
    });
    pg.kill().expect("kill PostgreSQL");
    let (per_machine, _) = workload(&machines, 1, 2, 1);
    publish_all(broker.port(), "device-m0", &per_machine["m0"]);
    wait_until(LONG, "commits failing", || {
        collector.metric("fabmeter_commit_errors_total") > 0
    });
    assert_eq!(collector.metric("fabmeter_acked_total"), 0);
    // The writer retries forever while running, but a shutdown gives the batch back to the
    // broker (unacknowledged) instead of hanging.
    assert!(
        collector.stop_within(Duration::from_secs(60)),
        "the collector did not stop while its database was down"
    );
}
