//! The PostgreSQL ledger against a private PostgreSQL cluster (initdb + postgres on a free port):
//! the same workload gives the same outcomes and the same reads as the SQLite ledger; sites
//! sharing one database never see each other; two writers of one site store each key once; a
//! database that dies mid-run fails commits until it is back, then loses nothing; a newer schema
//! and a bad URL are refused with errors that name the fix.

use std::collections::HashMap;

use fabmeter_collector::ledger::{
    Committed, Ledger, LedgerError, MachineInfo, Outcome, PgLedger, Record, SessionQuery,
    SqliteLedger, OUT_OF_ORDER, REFUSED_LOCKED_SQL,
};
use fabmeter_e2e::Postgres;
use fabmeter_protocol::message::{
    DenyReason, EndReason, Event, EventBody, MachineState, Presence, Status,
};
use fabmeter_protocol::{encode_to_vec, BadgeHash, Id};

const T0: u64 = 1_764_000_000_000;
const MACHINES: [&str; 3] = ["laser-1", "cnc-1", "printer-1"];

fn id(s: &str) -> Id {
    Id::new(s).expect("id")
}

fn badges() -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert(badge(0).to_hex().as_str().to_owned(), "alice".to_owned());
    m.insert(badge(1).to_hex().as_str().to_owned(), "bob".to_owned());
    m
}

fn badge(i: u8) -> BadgeHash {
    BadgeHash([i, 0xba, 0x27, 0x9e, 0x0c, 0x1e, 0x5c, 0x24])
}

fn register(l: &mut dyn Ledger) {
    let infos: Vec<MachineInfo> = MACHINES
        .iter()
        .map(|m| MachineInfo {
            id: (*m).into(),
            name: m.to_uppercase(),
            kind: "laser".into(),
            source: "config".into(),
        })
        .collect();
    l.register_machines(&infos, T0).expect("register");
}

/// A small deterministic generator (xorshift64*), so that a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn event(
    machine: &str,
    box_id: Option<u32>,
    boot: u32,
    seq: u32,
    up_s: u64,
    body: EventBody,
) -> Record {
    let event = Event {
        v: 1,
        box_id,
        boot,
        seq,
        uptime_ms: up_s * 1000,
        sent_uptime_ms: up_s * 1000 + 5,
        ts: None,
        event: body,
    };
    Record::Event {
        machine: id(machine),
        payload: encode_to_vec(&event).expect("encode"),
        event,
        received_ms: T0 + up_s * 1000 + 5,
    }
}

/// A device's life on one machine: boots, states, sessions with progress and ends, denied
/// badges, counters; then resends, conflicting copies, a replacement box, statuses and dead
/// letters, shuffled into batches of random sizes.
fn workload(seed: u64) -> Vec<Vec<Record>> {
    use MachineState::*;
    let mut rng = Rng(seed | 1);
    let mut all = Vec::new();
    for (mi, machine) in MACHINES.iter().enumerate() {
        let boxes: &[Option<u32>] = if mi == 0 {
            &[Some(7), Some(9)]
        } else {
            &[None]
        };
        for (bi, &box_id) in boxes.iter().enumerate() {
            for boot in 1..=2u32 {
                let mut seq = 0;
                let mut up = 10 + 1000 * u64::from(bi as u32);
                // The next event of this boot: its seq and uptime follow the previous one's.
                let mut emit = |all: &mut Vec<Record>, rng: &mut Rng, body: EventBody| -> u32 {
                    seq += 1;
                    up += 1 + rng.below(900);
                    all.push(event(machine, box_id, boot, seq, up, body));
                    seq
                };
                all.push(Record::Status {
                    machine: id(machine),
                    status: Status {
                        v: 1,
                        status: Presence::Online,
                        boot,
                        uptime_ms: None,
                        ts: None,
                        fw: Some("0.3.0".try_into().expect("short")),
                        config_hash: None,
                        caps: None,
                    },
                    received_ms: T0 + u64::from(boot) * 10,
                });
                for _ in 0..(1 + rng.below(3)) {
                    let state = |from, to| EventBody::State { from, to };
                    emit(&mut all, &mut rng, state(Off, Idle));
                    let who = badge(u8::try_from(rng.below(3)).unwrap_or(0));
                    let start = emit(&mut all, &mut rng, EventBody::SessionStarted { badge: who });
                    emit(&mut all, &mut rng, state(Idle, Busy));
                    let busy = u32::try_from(rng.below(3600)).unwrap_or(0);
                    let progress = EventBody::SessionProgress {
                        session: start,
                        busy_s: busy,
                        idle_s: 3,
                        energy_wh: busy / 10,
                    };
                    emit(&mut all, &mut rng, progress);
                    emit(&mut all, &mut rng, state(Busy, Idle));
                    // Some sessions never end in this boot (the reboot interrupts them).
                    if rng.below(4) != 0 {
                        let end = EventBody::SessionEnded {
                            session: start,
                            badge: who,
                            busy_s: busy + 7,
                            idle_s: 5,
                            energy_wh: busy / 9,
                            reason: EndReason::BadgeOut,
                        };
                        emit(&mut all, &mut rng, end);
                    }
                    let denied = EventBody::AccessDenied {
                        badge: badge(5),
                        reason: DenyReason::MaintenanceLock,
                    };
                    emit(&mut all, &mut rng, denied);
                    emit(&mut all, &mut rng, state(Idle, Off));
                }
                let counters = EventBody::Counters {
                    on_s: 0,
                    busy_s: 0,
                    energy_wh: 1,
                    journal_dropped: 0,
                };
                emit(&mut all, &mut rng, counters);
            }
        }
    }
    // Resends (same event, another sent_uptime) and conflicting copies (same key, other content).
    let n = all.len();
    for _ in 0..n / 4 {
        let i = usize::try_from(rng.below(n as u64)).unwrap_or(0);
        if let Record::Event {
            machine,
            event,
            received_ms,
            ..
        } = &all[i]
        {
            let mut e = event.clone();
            e.sent_uptime_ms += 1 + rng.below(50);
            if rng.below(5) == 0 {
                e.uptime_ms += 1;
            }
            let payload = encode_to_vec(&e).expect("encode");
            all.push(Record::Event {
                machine: machine.clone(),
                event: e,
                payload,
                received_ms: received_ms + 1,
            });
        }
    }
    all.push(Record::DeadLetter {
        topic: "fabmeter/v1/site/laser-1/event".into(),
        payload: b"{not json".to_vec(),
        reason: "malformed".into(),
        detail: "expected value at line 1 column 2".into(),
        received_ms: T0 + 1,
    });
    // Shuffle (Fisher-Yates) and cut into batches.
    for i in (1..all.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1)).unwrap_or(0);
        all.swap(i, j);
    }
    let mut batches = Vec::new();
    while !all.is_empty() {
        let k = (1 + usize::try_from(rng.below(40)).unwrap_or(0)).min(all.len());
        batches.push(all.drain(..k).collect());
    }
    batches
}

/// Everything a reader can see, ids of dead letters aside (each engine numbers its own).
fn snapshot(l: &dyn Ledger) -> String {
    let mut s = String::new();
    s += &format!("{:?}\n", l.machines().expect("machines"));
    s += &format!(
        "{:?}\n",
        l.sessions(&SessionQuery::default()).expect("sessions")
    );
    s += &format!("{:?}\n", l.totals().expect("totals"));
    for m in MACHINES {
        s += &format!("{:?}\n", l.counters(m).expect("counters"));
        s += &format!("{:?}\n", l.maintenance_records(m).expect("maintenance"));
        s += &format!("{:?}\n", l.reported_config_hash(m).expect("hash"));
    }
    for d in l.dead_letters(1000).expect("dead letters") {
        s += &format!(
            "{} {} {} {} {}\n",
            d.received_ms, d.topic, d.payload, d.reason, d.detail
        );
    }
    s += &format!("{:?}\n", l.alert_states().expect("alerts"));
    s
}

fn pg_ledger(pg: &Postgres, db: &str, site: &str) -> PgLedger {
    PgLedger::open(&pg.url(db), &id(site), badges()).expect("open the PostgreSQL ledger")
}

#[test]
fn the_postgresql_ledger_gives_the_sqlite_ledgers_outcomes_and_reads() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("same").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    for seed in [1u64, 2, 3, 0x5eed] {
        let mut lite = SqliteLedger::open(
            &dir.path().join(format!("{seed}.sqlite")),
            &id(&format!("s{seed}")),
            badges(),
        )
        .expect("open SQLite");
        let mut post = pg_ledger(&pg, "same", &format!("s{seed}"));
        register(&mut lite);
        register(&mut post);
        let mut outcomes: HashMap<Outcome, usize> = HashMap::new();
        for (i, batch) in workload(seed).iter().enumerate() {
            let a: Vec<Committed> = lite.commit(batch).expect("SQLite commit");
            let b = post.commit(batch).expect("PostgreSQL commit");
            assert_eq!(a, b, "seed {seed} batch {i}: outcomes differ");
            for c in a {
                *outcomes.entry(c.outcome).or_default() += 1;
            }
        }
        // The workload really exercises each path.
        for o in [
            Outcome::Accepted,
            Outcome::Duplicate,
            Outcome::Conflict,
            Outcome::DeadLettered,
        ] {
            assert!(
                outcomes.get(&o).is_some_and(|&n| n > 0),
                "seed {seed}: no {o:?} in {outcomes:?}"
            );
        }
        for l in [&mut lite as &mut dyn Ledger, &mut post] {
            assert!(l
                .record_service("cnc-1", "belts", "claire", "new belt", None, T0 + 50_000)
                .expect("service")
                .is_some());
            assert!(l
                .open_outage("laser-1", OUT_OF_ORDER, "lens", "claire", T0 + 60_000)
                .expect("open"));
            assert!(!l
                .open_outage("laser-1", OUT_OF_ORDER, "lens", "claire", T0 + 61_000)
                .expect("open twice"));
            assert!(l
                .close_outage("laser-1", OUT_OF_ORDER, T0 + 30_000)
                .expect("close"));
            l.set_alert_state("cnc-1", "belts", "due_soon", T0)
                .expect("alert");
        }
        let (a, b) = (snapshot(&lite), snapshot(&post));
        assert_eq!(a, b, "seed {seed}: reads differ");
        assert!(a.contains("alice") && a.contains("interrupted"), "{a}");
        let refused = post
            .maintenance_records("laser-1")
            .expect("maintenance")
            .expect("known machine")
            .refused_locked;
        assert!(
            refused > 0,
            "seed {seed}: the workload's refusals are counted"
        );
    }
    // Refusals are counted through their partial index, not by reading every event of the
    // machine (once the table has statistics, as autovacuum gives a ledger in use, and a
    // sequential scan is ruled out: on so small a table it would be the cheapest).
    let plan = pg
        .psql(
            "same",
            &format!(
                "ANALYZE events; SET enable_seqscan = off; EXPLAIN {}",
                REFUSED_LOCKED_SQL
                    .replace("INDEXED BY events_denied", "")
                    .replace("?1", "'s1'")
                    .replace("?2", "'laser-1'")
            ),
        )
        .expect("explain");
    // Each partition's copy of `events_denied (site, machine)` is named after its columns.
    assert!(
        plan.contains("_site_machine_idx") && !plan.contains("pkey on events"),
        "{plan}"
    );
}

#[test]
fn sites_sharing_one_database_never_see_each_other() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("shared").expect("createdb");
    let mut a = pg_ledger(&pg, "shared", "site-a");
    let mut b = pg_ledger(&pg, "shared", "site-b");
    register(&mut a);
    register(&mut b);
    // The same machine ids and event keys in both sites: the second site's copies are its own
    // events, not the first one's duplicates.
    let batch: Vec<Record> = workload(9).concat();
    let first = a.commit(&batch).expect("commit a");
    let second = b.commit(&batch).expect("commit b");
    assert_eq!(first, second);
    assert!(first.iter().any(|c| c.outcome == Outcome::Accepted));
    assert_eq!(a.totals().expect("a"), b.totals().expect("b"));
    // Identical but for the site named in the conflicts' topics.
    assert_eq!(snapshot(&a).replace("site-a", "site-b"), snapshot(&b));
    // A third site sees nothing of theirs.
    let c = pg_ledger(&pg, "shared", "site-c");
    assert!(c.machines().expect("machines").is_empty());
    assert_eq!(c.totals().expect("totals").events, 0);
    assert!(c
        .sessions(&SessionQuery::default())
        .expect("sessions")
        .is_empty());
    assert!(c.dead_letters(10).expect("dead letters").is_empty());
    let events: u64 = pg
        .psql("shared", "SELECT COUNT(*) FROM events")
        .expect("count")
        .parse()
        .expect("number");
    assert_eq!(events, 2 * a.totals().expect("a").events);
}

#[test]
fn two_writers_of_one_site_store_each_key_once() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("two").expect("createdb");
    let mut setup = pg_ledger(&pg, "two", "site");
    register(&mut setup);
    // Without laser-1's box swap: which box's epoch comes first depends on the order of
    // arrival, so two orders may give other ledger boots (see docs/PROTOCOL.md "box").
    let batches: Vec<Vec<Record>> = workload(4)
        .into_iter()
        .map(|b| {
            b.into_iter()
                .filter(|r| match r {
                    Record::Event { machine, .. } | Record::Status { machine, .. } => {
                        machine.as_str() != "laser-1"
                    }
                    Record::DeadLetter { .. } => true,
                })
                .collect::<Vec<_>>()
        })
        .filter(|b| !b.is_empty())
        .collect();
    // Distinct device keys: each is stored once whichever copy and writer comes first.
    let keys: std::collections::HashSet<(String, Option<u32>, u32, u32)> = batches
        .concat()
        .iter()
        .filter_map(|r| match r {
            Record::Event { machine, event, .. } => Some((
                machine.as_str().to_owned(),
                event.box_id,
                event.boot,
                event.seq,
            )),
            _ => None,
        })
        .collect();
    // Two collectors receive every message (a redelivery to the other member of a shared
    // subscription), each in its own order of batches.
    let accepted: Vec<usize> = std::thread::scope(|s| {
        let run = |reverse: bool| {
            let batches = &batches;
            let pg = &pg;
            s.spawn(move || {
                let mut l = pg_ledger(pg, "two", "site");
                let order: Vec<&Vec<Record>> = if reverse {
                    batches.iter().rev().collect()
                } else {
                    batches.iter().collect()
                };
                let mut n = 0;
                for b in order {
                    n += l
                        .commit(b)
                        .expect("commit")
                        .iter()
                        .filter(|c| c.outcome == Outcome::Accepted)
                        .count();
                }
                n
            })
        };
        let (x, y) = (run(false), run(true));
        vec![x.join().expect("writer"), y.join().expect("writer")]
    });
    let stored = setup.totals().expect("totals").events;
    let accepted_all: usize = accepted.iter().sum();
    // Statuses are accepted by both (upserts of the presence row, not keyed events).
    let statuses = batches
        .concat()
        .iter()
        .filter(|r| matches!(r, Record::Status { .. }))
        .count();
    assert_eq!(
        stored,
        u64::try_from(keys.len()).expect("fits"),
        "each device key stored once"
    );
    assert_eq!(
        accepted_all - 2 * statuses,
        keys.len(),
        "each event key accepted by exactly one of the two writers"
    );
}

#[test]
fn a_database_that_dies_mid_run_fails_commits_until_it_is_back_and_loses_nothing() {
    let mut pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("crash").expect("createdb");
    let mut l = pg_ledger(&pg, "crash", "site");
    register(&mut l);
    let batches = workload(5);
    let (before, after) = batches.split_at(batches.len() / 2);
    for b in before {
        l.commit(b).expect("commit");
    }
    let committed = l.totals().expect("totals");
    pg.kill().expect("kill PostgreSQL");
    let e = l.commit(&after[0]).expect_err("no database, no commit");
    assert!(matches!(e, LedgerError::Postgres(_)), "{e:?}");
    assert!(e.to_string().contains("PostgreSQL"), "{e}");
    assert!(l.totals().is_err(), "reads fail too while it is down");
    pg.restart().expect("restart PostgreSQL");
    // What was committed before the crash is there; the failed batch, retried, goes in.
    assert_eq!(l.totals().expect("reconnected").events, committed.events);
    for b in after {
        l.commit(b).expect("commit after the restart");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lite =
        SqliteLedger::open(&dir.path().join("l.sqlite"), &id("site"), badges()).expect("open");
    register(&mut lite);
    for b in &batches {
        lite.commit(b).expect("commit");
    }
    assert_eq!(snapshot(&l), snapshot(&lite));
}

/// Schema 4 keeps each boot's time per state in `boots`; a ledger of schema 3 gets it from the
/// state events it holds when it is opened, and reads what it read before.
#[test]
fn a_ledger_of_schema_3_gets_its_boots_time_per_state_from_its_events() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("older").expect("createdb");
    let mut l = pg_ledger(&pg, "older", "site");
    register(&mut l);
    for b in &workload(11) {
        l.commit(b).expect("commit");
    }
    let before = snapshot(&l);
    let busy: u64 = MACHINES
        .iter()
        .map(|m| l.counters(m).expect("read").map_or(0, |c| c.busy_s))
        .sum();
    assert!(busy > 0, "the workload has busy time: {before}");
    drop(l);
    pg.psql(
        "older",
        "ALTER TABLE boots DROP COLUMN busy_ms, DROP COLUMN idle_ms, DROP COLUMN last_state,
            DROP COLUMN last_state_seq, DROP COLUMN last_state_up;
         UPDATE fabmeter_schema SET version = 3",
    )
    .expect("back to schema 3");
    let l = pg_ledger(&pg, "older", "site");
    assert_eq!(l.schema_version().expect("version"), 4);
    assert_eq!(snapshot(&l), before);
}

#[test]
fn a_newer_schema_and_a_bad_url_are_refused_with_the_fix() {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("newer").expect("createdb");
    let l = pg_ledger(&pg, "newer", "site");
    assert_eq!(l.schema_version().expect("version"), 4);
    drop(l);
    pg.psql("newer", "UPDATE fabmeter_schema SET version = 99")
        .expect("bump");
    let e = PgLedger::open(&pg.url("newer"), &id("site"), badges()).expect_err("newer schema");
    assert!(
        matches!(
            e,
            LedgerError::SchemaTooNew {
                found: 99,
                supported: 4
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("upgrade fabmeter"), "{e}");

    let e = PgLedger::open("postgres://fabmeter@127.0.0.1", &id("site"), badges())
        .expect_err("no database");
    assert!(
        e.to_string().contains("names no database") && e.to_string().contains("postgres://USER"),
        "{e}"
    );
    let e =
        PgLedger::open(&pg.url("missing"), &id("site"), badges()).expect_err("missing database");
    assert!(e.to_string().contains("\"missing\" does not exist"), "{e}");
    let port = fabmeter_e2e::free_port();
    let e = PgLedger::open(
        &format!("postgres://fabmeter@127.0.0.1:{port}/x"),
        &id("site"),
        badges(),
    )
    .expect_err("nobody listening");
    assert!(matches!(e, LedgerError::Postgres(_)), "{e:?}");
}
