//! Ledger tests on real SQLite files in temp directories.

use std::collections::HashMap;

use fabmeter_protocol::message::{EndReason, Event, EventBody, MachineState, Presence, Status};
use fabmeter_protocol::{encode_to_vec, BadgeHash, Id};

use super::*;

const BADGE: BadgeHash = BadgeHash([0xba, 0x27, 0x9e, 0x0c, 0x1e, 0x5c, 0x24, 0x64]);
const T0: u64 = 1_764_000_000_000;

fn id(s: &str) -> Id {
    Id::new(s).expect("valid id")
}

fn open(dir: &tempfile::TempDir) -> SqliteLedger {
    open_in(dir.path())
}

/// The ledger in `dir` (laser-1 registered, alice's badge known).
fn open_in(dir: &std::path::Path) -> SqliteLedger {
    let badges = HashMap::from([(BADGE.to_string(), "alice".to_string())]);
    let mut l =
        SqliteLedger::open(&dir.join("ledger.sqlite"), &id("site"), badges).expect("open ledger");
    l.register_machines(
        &[MachineInfo {
            id: "laser-1".into(),
            name: "Laser".into(),
            kind: "laser".into(),
            source: "config".into(),
        }],
        T0,
    )
    .expect("register");
    l
}

/// An event of laser-1 that happened at `at_s` seconds of uptime and arrived 10 ms after it was sent.
fn ev(boot: u32, seq: u32, at_s: u64, body: EventBody) -> Record {
    let event = Event {
        v: 1,
        box_id: None,
        boot,
        seq,
        uptime_ms: at_s * 1000,
        sent_uptime_ms: at_s * 1000,
        ts: None,
        event: body,
    };
    let payload = encode_to_vec(&event).expect("valid event");
    Record::Event {
        machine: id("laser-1"),
        event,
        payload,
        received_ms: T0 + boot as u64 * 10_000_000 + at_s * 1000 + 10,
    }
}

fn outcomes(l: &mut SqliteLedger, batch: &[Record]) -> Vec<Outcome> {
    l.commit(batch)
        .expect("commit")
        .into_iter()
        .map(|c| c.outcome)
        .collect()
}

fn state(from: MachineState, to: MachineState) -> EventBody {
    EventBody::State { from, to }
}

fn progress(session: u32, busy_s: u32) -> EventBody {
    EventBody::SessionProgress {
        session,
        busy_s,
        idle_s: 0,
        energy_wh: busy_s / 60,
    }
}

fn ended(session: u32, busy_s: u32) -> EventBody {
    EventBody::SessionEnded {
        session,
        badge: BADGE,
        busy_s,
        idle_s: 0,
        energy_wh: busy_s / 60,
        reason: EndReason::BadgeOut,
    }
}

#[test]
fn each_event_key_is_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = open(&dir);
    let e = ev(1, 1, 5, state(MachineState::Off, MachineState::Idle));
    assert_eq!(
        outcomes(&mut l, std::slice::from_ref(&e)),
        vec![Outcome::Accepted]
    );
    assert_eq!(
        outcomes(&mut l, &[e.clone(), e]),
        vec![Outcome::Duplicate, Outcome::Duplicate]
    );
    assert_eq!(l.totals().expect("totals").events, 1);
    // Durable: a new connection on the same file sees it.
    drop(l);
    let l = open(&dir);
    assert_eq!(l.totals().expect("totals").events, 1);
    assert_eq!(l.schema_version().expect("version"), 10);
}

#[test]
fn a_session_from_start_to_end_with_its_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = open(&dir);
    l.commit(&[
        ev(1, 1, 5, state(MachineState::Off, MachineState::Idle)),
        ev(1, 2, 10, EventBody::SessionStarted { badge: BADGE }),
        ev(1, 3, 20, state(MachineState::Idle, MachineState::Busy)),
        ev(1, 4, 70, progress(2, 50)),
    ])
    .expect("commit");
    let open_s = l.sessions(&SessionQuery::default()).expect("sessions");
    assert_eq!(open_s.len(), 1);
    assert_eq!(open_s[0].status, "open");
    assert_eq!(open_s[0].member.as_deref(), Some("alice"));
    let m = &l.machines().expect("machines")[0];
    assert_eq!(
        (m.state.as_str(), m.member.as_deref()),
        ("busy", Some("alice"))
    );

    l.commit(&[ev(1, 5, 130, ended(2, 110))]).expect("commit");
    let s = &l.sessions(&SessionQuery::default()).expect("sessions")[0];
    assert_eq!(
        (s.status.as_str(), s.busy_s, s.reason.as_deref()),
        ("closed", 110, Some("badge_out"))
    );
    assert_eq!((s.first_seq, s.last_seq), (2, 5));
    // Wall times come from the boot anchor: received 10 ms after sending.
    assert_eq!(s.start_ms, Some(T0 + 10_000_000 + 10_000 + 10));
    assert_eq!(s.end_ms, Some(T0 + 10_000_000 + 130_000 + 10));
    assert_eq!(l.machines().expect("machines")[0].member, None);
    // Filters.
    let q = |machine: Option<&str>, member: Option<&str>| SessionQuery {
        machine: machine.map(Into::into),
        member: member.map(Into::into),
        ..Default::default()
    };
    assert_eq!(
        l.sessions(&q(Some("laser-1"), Some("alice")))
            .expect("q")
            .len(),
        1
    );
    assert_eq!(l.sessions(&q(Some("saw"), None)).expect("q").len(), 0);
    assert_eq!(l.sessions(&q(None, Some("bob"))).expect("q").len(), 0);
    let late = SessionQuery {
        from_ms: Some(T0 + 10_000_000 + 11_000),
        ..Default::default()
    };
    assert_eq!(l.sessions(&late).expect("q").len(), 0);
}

#[test]
fn a_reboot_interrupts_the_open_session_until_its_late_end_arrives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = open(&dir);
    l.commit(&[
        ev(1, 1, 10, EventBody::SessionStarted { badge: BADGE }),
        ev(1, 2, 70, progress(1, 60)),
    ])
    .expect("commit");
    // The device rebooted: its new boot arrives before the rest of boot 1's journal.
    l.commit(&[ev(2, 1, 1, state(MachineState::Off, MachineState::Idle))])
        .expect("commit");
    let s = &l.sessions(&SessionQuery::default()).expect("sessions")[0];
    assert_eq!(
        (s.status.as_str(), s.busy_s, s.reason.as_deref()),
        ("interrupted", 60, Some("interrupted"))
    );
    assert_eq!(s.end_ms, Some(T0 + 10_000_000 + 70_000 + 10));
    let m = &l.machines().expect("machines")[0];
    assert_eq!(
        (m.state.as_str(), m.boot, m.member.as_deref()),
        ("idle", Some(2), None)
    );
    // Late: the rest of boot 1, out of order.
    l.commit(&[
        ev(1, 4, 200, ended(1, 180)),
        ev(1, 3, 130, progress(1, 120)),
    ])
    .expect("commit");
    let s = &l.sessions(&SessionQuery::default()).expect("sessions")[0];
    assert_eq!(
        (s.status.as_str(), s.busy_s, s.last_seq),
        ("closed", 180, 4)
    );
    // Late events of the older boot did not change the live state.
    assert_eq!(l.machines().expect("machines")[0].state, "idle");
}

#[test]
fn presence_follows_the_newest_boot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = open(&dir);
    let status = |boot: u32, p: Presence| Record::Status {
        machine: id("laser-1"),
        status: Status {
            v: 1,
            status: p,
            boot,
            uptime_ms: None,
            ts: None,
            fw: (p == Presence::Online).then(|| "0.1.0".try_into().expect("short")),
            config_hash: None,
            caps: None,
        },
        received_ms: T0 + u64::from(boot),
    };
    assert_eq!(l.machines().expect("m")[0].state, "unknown");
    l.commit(&[status(3, Presence::Online)]).expect("commit");
    assert!(l.machines().expect("m")[0].online);
    // The last will of boot 2 arrives late: ignored.
    l.commit(&[status(2, Presence::Offline)]).expect("commit");
    assert!(l.machines().expect("m")[0].online);
    l.commit(&[status(3, Presence::Offline)]).expect("commit");
    let m = &l.machines().expect("m")[0];
    assert_eq!(
        (m.online, m.state.as_str(), m.fw.as_deref()),
        (false, "offline", Some("0.1.0"))
    );
}

#[test]
fn counters_follow_state_changes_across_boots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = open(&dir);
    l.commit(&[
        ev(1, 1, 0, state(MachineState::Off, MachineState::Idle)),
        ev(1, 2, 100, state(MachineState::Idle, MachineState::Busy)),
        ev(1, 3, 400, state(MachineState::Busy, MachineState::Off)),
        ev(2, 2, 50, state(MachineState::Busy, MachineState::Off)),
        ev(2, 1, 0, state(MachineState::Off, MachineState::Busy)),
        // A later event of boot 2 extends the open tail: off until 80 s adds nothing.
        ev(2, 3, 80, EventBody::SessionStarted { badge: BADGE }),
    ])
    .expect("commit");
    let c = l
        .counters("laser-1")
        .expect("counters")
        .expect("known machine");
    assert_eq!((c.idle_s, c.busy_s, c.on_s), (100, 300 + 50, 450));
    assert_eq!((c.boots, c.events, c.sessions), (2, 6, 1));
    assert_eq!(l.counters("nope").expect("counters"), None);
}

#[test]
fn dead_letters_are_kept_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = open(&dir);
    let out = outcomes(
        &mut l,
        &[
            Record::DeadLetter {
                topic: "fabmeter/v1/site/laser-1/event".into(),
                payload: b"{nope".to_vec(),
                reason: "syntax".into(),
                detail: "payload is not a JSON object".into(),
                received_ms: T0,
            },
            ev(1, 1, 5, state(MachineState::Off, MachineState::Idle)),
        ],
    );
    assert_eq!(out, vec![Outcome::DeadLettered, Outcome::Accepted]);
    let d = l.dead_letters(10).expect("dead letters");
    assert_eq!(
        (d[0].reason.as_str(), d[0].payload.as_str()),
        ("syntax", "{nope")
    );
    assert_eq!(
        l.totals().expect("t"),
        LedgerTotals {
            events: 1,
            sessions: 0,
            dead_letters: 1
        }
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.sqlite");
    drop(open(&dir));
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.pragma_update(None, "user_version", 99)
        .expect("set version");
    drop(conn);
    let e = SqliteLedger::open(&path, &id("site"), HashMap::new()).unwrap_err();
    assert!(
        matches!(
            e,
            LedgerError::SchemaTooNew {
                found: 99,
                supported: 10
            }
        ),
        "{e}"
    );
}

/// Equivalence of the incremental session rows with the full recompute from all stored events
/// (`crate::ledger::sqlite::session_rows`): the same batches into two ledgers, one each way, must
/// leave the same sessions and the same outcomes, whatever the order, duplicates, resends with
/// another send time (the boot's anchor moves), events with and without `ts`, reboots, a second
/// box (its own box id) reusing the boot numbers, changed resends (conflicts), two ends, or a progress carrying its own seq as its session.
mod incremental_sessions {
    use proptest::prelude::*;

    use super::*;

    const OTHER: BadgeHash = BadgeHash([1, 2, 3, 4, 5, 6, 7, 8]);

    /// One message of the run: which event of the pool, sent when, received how late.
    #[derive(Debug, Clone)]
    struct Pick {
        boot: u32,
        seq: u32,
        /// 0: the device's own event (no box id); 1: another box's (box id 2), same key (a new
        /// epoch); 2: the device's own event changed by 1 ms (a conflict with whichever came first).
        variant: u8,
        send_delay_ms: u64,
        net_ms: u64,
    }

    /// The body of event (boot, seq, variant): deterministic, so that a resend is the same event.
    fn body(boot: u32, seq: u32, variant: u8) -> (EventBody, bool) {
        let h = boot
            .wrapping_mul(31)
            .wrapping_add(seq.wrapping_mul(7))
            .wrapping_add(u32::from(variant) * 13);
        // Sessions start at seqs 2, 6 and 10; later events name one of the earlier ones (the
        // codec refuses any other session).
        let earlier: Vec<u32> = [2, 6, 10].into_iter().filter(|s| *s < seq).collect();
        let session = match earlier.len() {
            0 => 0,
            n => earlier[(h as usize / 5) % n],
        };
        let badge = if h.is_multiple_of(3) { OTHER } else { BADGE };
        let with_ts = h % 4 == 1;
        let b = match seq {
            2 | 6 | 10 => EventBody::SessionStarted { badge },
            _ if session == 0 => state(MachineState::Off, MachineState::Idle),
            _ => match h % 6 {
                0 => state(MachineState::Idle, MachineState::Busy),
                1..=3 => EventBody::SessionProgress {
                    session,
                    busy_s: seq * 10 + h % 7,
                    idle_s: h % 3,
                    energy_wh: seq,
                },
                _ => EventBody::SessionEnded {
                    session,
                    badge,
                    busy_s: seq * 11,
                    idle_s: 1,
                    energy_wh: seq + 1,
                    reason: if h.is_multiple_of(2) {
                        EndReason::BadgeOut
                    } else {
                        EndReason::IdleTimeout
                    },
                },
            },
        };
        (b, with_ts)
    }

    fn record(p: &Pick) -> Record {
        let base = if p.variant == 2 { 0 } else { p.variant };
        let (body, with_ts) = body(p.boot, p.seq, base);
        let uptime_ms = u64::from(p.seq) * 60_000 + u64::from(base) * 7 + u64::from(p.variant == 2);
        let sent_uptime_ms = uptime_ms + p.send_delay_ms;
        let boot_wall = T0 + u64::from(p.boot) * 100_000_000;
        let event = Event {
            v: 1,
            box_id: (p.variant == 1).then_some(2),
            boot: p.boot,
            seq: p.seq,
            uptime_ms,
            sent_uptime_ms,
            ts: with_ts.then_some(boot_wall + uptime_ms + 3),
            event: body,
        };
        let payload = encode_to_vec(&event).expect("valid event");
        Record::Event {
            machine: id("laser-1"),
            event,
            payload,
            received_ms: boot_wall + sent_uptime_ms + p.net_ms,
        }
    }

    fn pick() -> impl Strategy<Value = Pick> {
        (1u32..=3, 1u32..=14, 0u8..40, 0u64..5_000, 0u64..3_000).prop_map(
            |(boot, seq, v, send_delay_ms, net_ms)| Pick {
                boot,
                seq,
                variant: match v {
                    0 | 1 => 1,
                    2 | 3 => 2,
                    _ => 0,
                },
                send_delay_ms,
                net_ms,
            },
        )
    }

    fn batches() -> impl Strategy<Value = Vec<Vec<Pick>>> {
        prop::collection::vec(prop::collection::vec(pick(), 1..12), 1..10)
    }

    fn sessions(l: &SqliteLedger) -> Vec<SessionView> {
        l.sessions(&SessionQuery::default()).expect("sessions")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn incremental_rows_equal_the_full_recompute(run in batches()) {
            let dir = tempfile::tempdir().expect("tempdir");
            let inc_dir = dir.path().join("inc");
            let full_dir = dir.path().join("full");
            std::fs::create_dir_all(&inc_dir).expect("dir");
            std::fs::create_dir_all(&full_dir).expect("dir");
            let mut inc = open_in(&inc_dir);
            let mut full = open_in(&full_dir);
            full.set_full_session_recompute(true);
            for batch in &run {
                let records: Vec<Record> = batch.iter().map(record).collect();
                let a = inc.commit(&records).expect("incremental commit");
                let b = full.commit(&records).expect("full commit");
                prop_assert_eq!(a, b);
                prop_assert_eq!(sessions(&inc), sessions(&full));
            }
            // The boots rows, written once per batch, hold what the stored events say.
            let conn = rusqlite::Connection::open(inc_dir.join("ledger.sqlite")).expect("open");
            let mismatched: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM boots b WHERE events != (SELECT COUNT(*) FROM events e
                        WHERE e.site=b.site AND e.machine=b.machine AND e.boot=b.boot)
                     OR max_seq != (SELECT MAX(seq) FROM events e
                        WHERE e.site=b.site AND e.machine=b.machine AND e.boot=b.boot)
                     OR max_uptime_ms != (SELECT MAX(uptime_ms) FROM events e
                        WHERE e.site=b.site AND e.machine=b.machine AND e.boot=b.boot)",
                    [],
                    |r| r.get(0),
                )
                .expect("boots");
            prop_assert_eq!(mismatched, 0);
            let counters = |l: &SqliteLedger| l.counters("laser-1").expect("counters");
            prop_assert_eq!(counters(&inc), counters(&full));
            // Each boot's time per state, folded batch by batch (in order, late, resent), is
            // what folding all its stored state events at once gives (the migration's backfill);
            // and the counters read from it are the per-event sums over the state events.
            let states = |c: &rusqlite::Connection| -> Vec<BootStates> {
                c.prepare(
                    "SELECT boot, busy_ms, idle_ms, last_state, last_state_seq, last_state_up
                     FROM boots ORDER BY boot",
                )
                .expect("prepare")
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
            };
            let folded = states(&conn);
            let per_event: Vec<(String, i64)> = conn
                .prepare(
                    "SELECT e.state, SUM(COALESCE(e.next_up, b.max_uptime_ms) - e.uptime_ms)
                     FROM (SELECT boot, state, uptime_ms,
                             LEAD(uptime_ms) OVER (PARTITION BY boot ORDER BY seq) AS next_up
                           FROM events WHERE machine='laser-1' AND state IS NOT NULL) e
                     JOIN boots b ON b.machine='laser-1' AND b.boot=e.boot
                     GROUP BY e.state ORDER BY e.state",
                )
                .expect("prepare")
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            let of = |state: &str| {
                per_event.iter().find(|(s, _)| s == state).map_or(0, |(_, ms)| *ms) / 1000
            };
            let c = counters(&inc).expect("known");
            prop_assert_eq!((c.busy_s, c.idle_s), (of("busy") as u64, of("idle") as u64));
            conn.execute_batch(backfill_boot_states!()).expect("backfill");
            prop_assert_eq!(folded, states(&conn));
        }
    }

    /// A batch of many machines is read with multi-key statements in chunks (`batch_reads`):
    /// committing it whole must give the outcomes and boot rows that committing its records one
    /// at a time gives (each read then names one key), across chunk boundaries and padded chunks;
    /// its session rows (from the chunked reads of rows, counts and clocks) must equal the full
    /// recompute's. (Session wall times depend on where batches end: a session is re-dated with
    /// its boot's anchor when a batch touches it.)
    fn spread() -> impl Strategy<Value = Vec<Vec<(usize, Pick)>>> {
        prop::collection::vec(prop::collection::vec((0usize..150, pick()), 1..400), 1..4)
    }

    fn on_machine(machine: usize, p: &Pick) -> Record {
        match record(p) {
            Record::Event {
                event,
                payload,
                received_ms,
                ..
            } => Record::Event {
                machine: id(&format!("m-{machine:03}")),
                event,
                payload,
                received_ms,
            },
            other => other,
        }
    }

    /// A boot's time per state as `boots` holds it: boot, busy and idle ms, last state, its seq
    /// and uptime.
    type BootStates = (i64, i64, i64, Option<String>, Option<i64>, Option<i64>);

    fn boots_rows(dir: &std::path::Path) -> Vec<(String, i64, i64, i64, i64, i64, i64)> {
        let conn = rusqlite::Connection::open(dir.join("ledger.sqlite")).expect("open");
        let mut stmt = conn
            .prepare(
                "SELECT machine, boot, anchor_ms, first_received_ms, max_uptime_ms, max_seq, events
                 FROM boots ORDER BY machine, boot",
            )
            .expect("prepare");
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn a_batch_of_many_machines_equals_its_records_one_by_one(run in spread()) {
            let dir = tempfile::tempdir().expect("tempdir");
            let (whole_dir, single_dir) = (dir.path().join("whole"), dir.path().join("single"));
            let full_dir = dir.path().join("full");
            for d in [&whole_dir, &single_dir, &full_dir] {
                std::fs::create_dir_all(d).expect("dir");
            }
            let mut whole = open_in(&whole_dir);
            let mut single = open_in(&single_dir);
            let mut full = open_in(&full_dir);
            full.set_full_session_recompute(true);
            for batch in &run {
                let records: Vec<Record> = batch.iter().map(|(m, p)| on_machine(*m, p)).collect();
                let a = whole.commit(&records).expect("whole batch");
                let mut b = Vec::new();
                for r in &records {
                    b.extend(single.commit(std::slice::from_ref(r)).expect("one record"));
                }
                prop_assert_eq!(&a, &b);
                prop_assert_eq!(a, full.commit(&records).expect("full recompute"));
                prop_assert_eq!(sessions(&whole), sessions(&full));
            }
            prop_assert_eq!(boots_rows(&whole_dir), boots_rows(&single_dir));
            let machines: std::collections::BTreeSet<usize> =
                run.iter().flatten().map(|(m, _)| *m).collect();
            for m in machines {
                let name = format!("m-{m:03}");
                prop_assert_eq!(
                    whole.counters(&name).expect("counters"),
                    single.counters(&name).expect("counters")
                );
            }
        }
    }
}
