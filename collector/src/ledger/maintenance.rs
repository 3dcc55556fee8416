//! Maintenance records in the SQLite ledger: services, out-of-order periods, alerted states.
//! The plan logic itself is pure and lives in `crate::maintenance`.

use fabmeter_protocol::decode;
use fabmeter_protocol::message::Event;
use rusqlite::{params, OptionalExtension};

use super::{i64_of, u64_of, SqliteLedger};
use crate::ledger::{Ledger, LedgerError, MaintenanceRecords, Outage, ServiceRecord};

/// The boot offset of the machine's latest box (0 until a box reused boot numbers).
pub(super) fn boot_offset(
    tx: &rusqlite::Connection,
    site: &str,
    machine: &str,
) -> Result<u32, LedgerError> {
    Ok(tx
        .prepare_cached("SELECT MAX(boot_offset) FROM boot_epochs WHERE site=?1 AND machine=?2")?
        .query_row(params![site, machine], |r| r.get::<_, Option<u32>>(0))?
        .unwrap_or(0))
}

/// The ledger boot of an incoming event: the device's boot plus the machine's current offset.
/// When that key is already stored with another event (not a resend: a resend differs in
/// `sent_uptime_ms` only), a new box is counting its boots again from where the old one had been:
/// a new epoch starts past the machine's highest boot, so both boxes' events are kept and the
/// machine's counters go on. `offset`: the machine's current offset ([`boot_offset`]).
pub(super) fn ledger_boot(
    tx: &rusqlite::Connection,
    site: &str,
    machine: &str,
    event: &Event,
    offset: u32,
    max_boot: Option<u32>,
    received_ms: u64,
) -> Result<u32, LedgerError> {
    let boot = event.boot.saturating_add(offset);
    let stored: Option<String> = tx
        .prepare_cached(
            "SELECT payload FROM events WHERE site=?1 AND machine=?2 AND boot=?3 AND seq=?4",
        )?
        .query_row(params![site, machine, boot, event.seq], |r| r.get(0))
        .optional()?;
    let Some(stored) = stored else {
        return Ok(boot);
    };
    let same = decode::<Event>(stored.as_bytes()).is_ok_and(|s| {
        s.uptime_ms == event.uptime_ms && s.ts == event.ts && s.event == event.event
    });
    if same {
        return Ok(boot);
    }
    let offset = max_boot.unwrap_or(0);
    tracing::warn!(
        machine,
        device_boot = event.boot,
        ledger_boot = event.boot.saturating_add(offset),
        "another box reuses this machine's boot numbers (a replacement?): its boots are counted after the machine's {offset}"
    );
    tx.prepare_cached(
        "INSERT OR IGNORE INTO boot_epochs (site, machine, boot_offset, since_ms)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![site, machine, offset, i64_of(received_ms)])?;
    Ok(event.boot.saturating_add(offset))
}

pub(super) fn record_service(
    l: &mut SqliteLedger,
    machine: &str,
    plan: &str,
    by: &str,
    note: &str,
    at_ms: u64,
) -> Result<Option<ServiceRecord>, LedgerError> {
    let Some(counters) = l.counters(machine)? else {
        return Ok(None);
    };
    l.conn.execute(
        "INSERT INTO services (site, machine, plan, done_ms, done_by, note, busy_s_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            l.site,
            machine,
            plan,
            i64_of(at_ms),
            by,
            note,
            i64_of(counters.busy_s)
        ],
    )?;
    Ok(Some(ServiceRecord {
        machine: machine.to_owned(),
        plan: plan.to_owned(),
        done_ms: at_ms,
        by: by.to_owned(),
        note: note.to_owned(),
        busy_s_at: counters.busy_s,
    }))
}

pub(super) fn open_outage(
    l: &mut SqliteLedger,
    machine: &str,
    source: &str,
    reason: &str,
    by: &str,
    at_ms: u64,
) -> Result<bool, LedgerError> {
    let n = l.conn.execute(
        "INSERT INTO outages (site, machine, source, reason, marked_by, from_ms, to_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)
         ON CONFLICT (site, machine, source) WHERE to_ms IS NULL DO NOTHING",
        params![l.site, machine, source, reason, by, i64_of(at_ms)],
    )?;
    Ok(n > 0)
}

pub(super) fn close_outage(
    l: &mut SqliteLedger,
    machine: &str,
    source: &str,
    at_ms: u64,
) -> Result<bool, LedgerError> {
    let n = l.conn.execute(
        "UPDATE outages SET to_ms = MAX(from_ms, ?4)
         WHERE site=?1 AND machine=?2 AND source=?3 AND to_ms IS NULL",
        params![l.site, machine, source, i64_of(at_ms)],
    )?;
    Ok(n > 0)
}

pub(super) fn records(
    l: &SqliteLedger,
    machine: &str,
) -> Result<Option<MaintenanceRecords>, LedgerError> {
    let Some(counters) = l.counters(machine)? else {
        return Ok(None);
    };
    let services = l
        .conn
        .prepare_cached(
            "SELECT plan, done_ms, done_by, note, busy_s_at FROM services
             WHERE site=?1 AND machine=?2 ORDER BY done_ms, id",
        )?
        .query_map(params![l.site, machine], |r| {
            Ok(ServiceRecord {
                machine: machine.to_owned(),
                plan: r.get(0)?,
                done_ms: u64_of(r.get(1)?),
                by: r.get(2)?,
                note: r.get(3)?,
                busy_s_at: u64_of(r.get(4)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let outages = l
        .conn
        .prepare_cached(
            "SELECT source, reason, marked_by, from_ms, to_ms FROM outages
             WHERE site=?1 AND machine=?2 ORDER BY from_ms, id",
        )?
        .query_map(params![l.site, machine], |r| {
            Ok(Outage {
                machine: machine.to_owned(),
                source: r.get(0)?,
                reason: r.get(1)?,
                by: r.get(2)?,
                from_ms: u64_of(r.get(3)?),
                to_ms: r.get::<_, Option<i64>>(4)?.map(u64_of),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // The stored payload is the device's JSON; the reason is a fixed wire name in it.
    let refused_locked: i64 = l
        .conn
        .prepare_cached(
            "SELECT COUNT(*) + COALESCE((SELECT refused_locked FROM purged_totals p
                    WHERE p.site=?1 AND p.machine=?2), 0)
             FROM events WHERE site=?1 AND machine=?2
             AND kind='access_denied' AND payload LIKE '%\"maintenance_lock\"%'",
        )?
        .query_row(params![l.site, machine], |r| r.get(0))?;
    let registered_ms: i64 = l
        .conn
        .prepare_cached("SELECT registered_ms FROM machines WHERE site=?1 AND machine=?2")?
        .query_row(params![l.site, machine], |r| r.get(0))?;
    Ok(Some(MaintenanceRecords {
        counters,
        services,
        outages,
        registered_ms: u64_of(registered_ms),
        refused_locked: u64_of(refused_locked),
    }))
}

pub(super) fn alert_states(l: &SqliteLedger) -> Result<Vec<(String, String, String)>, LedgerError> {
    let rows = l
        .conn
        .prepare_cached("SELECT machine, plan, state FROM maintenance_alerts WHERE site=?1")?
        .query_map(params![l.site], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(super) fn set_alert_state(
    l: &mut SqliteLedger,
    machine: &str,
    plan: &str,
    state: &str,
    at_ms: u64,
) -> Result<(), LedgerError> {
    l.conn.execute(
        "INSERT INTO maintenance_alerts (site, machine, plan, state, changed_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (site, machine, plan) DO UPDATE SET
            state=excluded.state, changed_ms=excluded.changed_ms",
        params![l.site, machine, plan, state, i64_of(at_ms)],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use fabmeter_protocol::message::{DenyReason, Event, EventBody, MachineState};
    use fabmeter_protocol::{encode_to_vec, BadgeHash, Id};

    use crate::ledger::{Ledger, MachineInfo, Outcome, Record, SqliteLedger, OUT_OF_ORDER};

    const T0: u64 = 1_764_000_000_000;

    fn open(dir: &tempfile::TempDir) -> SqliteLedger {
        let site = Id::new("site").expect("id");
        let mut l =
            SqliteLedger::open(&dir.path().join("l.sqlite"), &site, HashMap::new()).expect("open");
        let m = |id: &str| MachineInfo {
            id: id.into(),
            name: id.into(),
            kind: "laser".into(),
            source: "config".into(),
        };
        l.register_machines(&[m("laser-1"), m("laser-2")], T0)
            .expect("register");
        l
    }

    /// An event of `machine`, boot `boot`, at `at_s` seconds of uptime.
    fn ev(machine: &str, boot: u32, seq: u32, at_s: u64, body: EventBody) -> Record {
        let event = Event {
            v: 1,
            boot,
            seq,
            uptime_ms: at_s * 1000,
            sent_uptime_ms: at_s * 1000,
            ts: None,
            event: body,
        };
        Record::Event {
            machine: Id::new(machine).expect("id"),
            payload: encode_to_vec(&event).expect("encode"),
            event,
            received_ms: T0 + at_s * 1000,
        }
    }

    fn busy_for(machine: &str, boot: u32, secs: u64) -> Vec<Record> {
        use MachineState::*;
        vec![
            ev(
                machine,
                boot,
                1,
                1,
                EventBody::State {
                    from: Off,
                    to: Idle,
                },
            ),
            ev(
                machine,
                boot,
                2,
                2,
                EventBody::State {
                    from: Idle,
                    to: Busy,
                },
            ),
            ev(
                machine,
                boot,
                3,
                2 + secs,
                EventBody::State {
                    from: Busy,
                    to: Idle,
                },
            ),
        ]
    }

    #[test]
    fn counters_follow_the_topic_machine_across_a_box_swap_and_a_box_move() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = open(&dir);
        // Box A serves laser-1 (boots 1 and 2), then moves to laser-2 (boot 3 there).
        l.commit(&busy_for("laser-1", 1, 600)).expect("commit");
        l.commit(&busy_for("laser-1", 2, 300)).expect("commit");
        l.commit(&busy_for("laser-2", 3, 100)).expect("commit");
        // Box B replaces it on laser-1, its boot counter at 17, its own lifetime counters large.
        let mut b = busy_for("laser-1", 17, 1200);
        b.push(ev(
            "laser-1",
            17,
            4,
            2000,
            EventBody::Counters {
                on_s: 9_000_000,
                busy_s: 5_000_000,
                energy_wh: 1,
                journal_dropped: 0,
            },
        ));
        l.commit(&b).expect("commit");
        let one = l
            .maintenance_records("laser-1")
            .expect("read")
            .expect("known");
        assert_eq!(one.counters.busy_s, 600 + 300 + 1200);
        assert_eq!(one.counters.boots, 3);
        let two = l
            .maintenance_records("laser-2")
            .expect("read")
            .expect("known");
        assert_eq!(
            two.counters.busy_s, 100,
            "the moved box carries nothing with it"
        );
        assert_eq!(one.registered_ms, T0);
        assert!(l.maintenance_records("nope").expect("read").is_none());
    }

    #[test]
    fn a_replacement_box_counting_boots_from_one_again_adds_to_the_machine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = open(&dir);
        l.commit(&busy_for("laser-1", 1, 600)).expect("commit");
        l.commit(&busy_for("laser-1", 2, 300)).expect("commit");
        // The new box starts at boot 1 again, with other uptimes: the same keys, other events.
        let new_box = busy_for("laser-1", 1, 1200)
            .into_iter()
            .map(|r| match r {
                Record::Event {
                    machine,
                    mut event,
                    received_ms,
                    ..
                } => {
                    event.uptime_ms += 500;
                    event.sent_uptime_ms += 500;
                    Record::Event {
                        machine,
                        payload: encode_to_vec(&event).expect("encode"),
                        event,
                        received_ms,
                    }
                }
                other => other,
            })
            .collect::<Vec<_>>();
        let outcomes = l.commit(&new_box).expect("commit");
        assert!(
            outcomes.iter().all(|c| c.outcome == Outcome::Accepted),
            "not taken for duplicates: {outcomes:?}"
        );
        // Its resends are duplicates, as ever.
        let again = l.commit(&new_box).expect("commit");
        assert!(again.iter().all(|c| c.outcome == Outcome::Duplicate));
        let r = l
            .maintenance_records("laser-1")
            .expect("read")
            .expect("known");
        assert_eq!(r.counters.busy_s, 600 + 300 + 1200);
        assert_eq!(r.counters.boots, 3);
        let view = l.machines().expect("machines");
        assert_eq!(
            view[0].boot,
            Some(3),
            "the new box's boot 1 is the machine's boot 3"
        );
        // Its next boot follows.
        l.commit(&busy_for("laser-1", 2, 60)[..1]).expect("commit");
        assert_eq!(l.machines().expect("machines")[0].boot, Some(4));
    }

    #[test]
    fn services_snapshot_the_busy_counter_and_outages_open_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = open(&dir);
        l.commit(&busy_for("laser-1", 1, 900)).expect("commit");
        let s = l
            .record_service("laser-1", "lens", "sam", "cleaned", T0 + 5)
            .expect("record")
            .expect("known machine");
        assert_eq!(s.busy_s_at, 900);
        assert!(l
            .record_service("nope", "lens", "sam", "", T0)
            .expect("ok")
            .is_none());

        assert!(l
            .open_outage("laser-1", OUT_OF_ORDER, "belt", "sam", T0 + 10)
            .expect("open"));
        assert!(!l
            .open_outage("laser-1", OUT_OF_ORDER, "again", "sam", T0 + 11)
            .expect("open"));
        assert!(l
            .open_outage("laser-1", "plan:lens", "overdue", "maintenance", T0 + 12)
            .expect("open"));
        assert!(l
            .close_outage("laser-1", OUT_OF_ORDER, T0 + 20)
            .expect("close"));
        assert!(!l
            .close_outage("laser-1", OUT_OF_ORDER, T0 + 21)
            .expect("close"));

        let r = l
            .maintenance_records("laser-1")
            .expect("read")
            .expect("known");
        assert_eq!(r.services, vec![s]);
        assert_eq!(r.outages.len(), 2);
        assert_eq!(
            (r.outages[0].reason.as_str(), r.outages[0].to_ms),
            ("belt", Some(T0 + 20))
        );
        assert_eq!(r.outages[1].to_ms, None);

        l.set_alert_state("laser-1", "lens", "due_soon", T0)
            .expect("set");
        l.set_alert_state("laser-1", "lens", "overdue", T0 + 1)
            .expect("set");
        assert_eq!(
            l.alert_states().expect("read"),
            vec![("laser-1".into(), "lens".into(), "overdue".into())]
        );
    }

    #[test]
    fn badges_refused_for_a_lock_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = open(&dir);
        let badge = BadgeHash([1; 8]);
        let deny = |seq, reason| {
            ev(
                "laser-1",
                1,
                seq,
                u64::from(seq),
                EventBody::AccessDenied { badge, reason },
            )
        };
        l.commit(&[
            deny(1, DenyReason::MaintenanceLock),
            deny(2, DenyReason::NotAllowed),
            deny(3, DenyReason::MaintenanceLock),
        ])
        .expect("commit");
        let r = l
            .maintenance_records("laser-1")
            .expect("read")
            .expect("known");
        assert_eq!(r.refused_locked, 2);
    }
}
