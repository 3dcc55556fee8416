//! Maintenance records in the ledger: box epochs, services, out-of-order periods, alerted
//! states. The plan logic itself is pure and lives in `crate::maintenance`.

use fabmeter_protocol::decode;
use fabmeter_protocol::message::Event;

use super::super::sql::{args, Db};
use super::{counters, KnownBoots};
use crate::ledger::{LedgerError, MaintenanceRecords, Outage, ServiceRecord};

/// The boot offset of the machine's latest epoch (0 until a second box served it).
pub(super) fn boot_offset(tx: &mut dyn Db, site: &str, machine: &str) -> Result<u32, LedgerError> {
    Ok(tx
        .one(
            "SELECT MAX(boot_offset) FROM boot_epochs WHERE site=?1 AND machine=?2",
            args![site, machine],
        )?
        .opt_u32(0)?
        .unwrap_or(0))
}

/// The epoch row an event's box still needs, written by [`settle`] once the event is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pending {
    /// The machine's first box id: it takes over the machine's latest epoch.
    Adopt(u32),
    /// A box id the machine has not seen: a new epoch past the machine's highest boot.
    Open(u32),
}

/// The epoch an event belongs to: the offset added to its device boot to give its ledger boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Epoch {
    /// Added to the device's boot.
    pub(super) offset: u32,
    /// The row to write when the event is settled, if its box is new to the machine.
    pub(super) pending: Option<Pending>,
}

/// The epoch of an event of `machine` from box `box_id` (docs/PROTOCOL.md "Identity, ordering,
/// duplicates"): epochs are keyed by (machine, box). A box already seen keeps its epoch (its late
/// events too); an event without a box id (a device older than the field) belongs to the latest
/// epoch; the machine's first box id adopts the latest epoch; any other new box id opens a new
/// epoch whose offset is the machine's highest ledger boot, so that its boots come after every
/// boot the machine had. Content never opens an epoch: only a box id does.
pub(super) fn epoch_of(
    tx: &mut dyn Db,
    site: &str,
    known: &mut KnownBoots,
    machine: &str,
    box_id: Option<u32>,
) -> Result<Epoch, LedgerError> {
    let latest = Epoch {
        offset: known.offset,
        pending: None,
    };
    let Some(b) = box_id else {
        return Ok(latest);
    };
    if let Some(&offset) = known.boxes.get(&b) {
        return Ok(Epoch {
            offset,
            pending: None,
        });
    }
    let any_box = if known.boxes_read {
        // Every stored box of the machine is known ([`super::prefetch`]): this one is new.
        !known.boxes.is_empty()
    } else {
        let stored = tx
            .row(
                "SELECT boot_offset FROM boot_epochs WHERE site=?1 AND machine=?2 AND box=?3",
                args![site, machine, b],
            )?
            .map(|r| r.u32(0))
            .transpose()?;
        if let Some(offset) = stored {
            known.boxes.insert(b, offset);
            return Ok(Epoch {
                offset,
                pending: None,
            });
        }
        tx.row(
            "SELECT 1 FROM boot_epochs WHERE site=?1 AND machine=?2 AND box IS NOT NULL LIMIT 1",
            args![site, machine],
        )?
        .is_some()
    };
    Ok(if any_box {
        new_epoch(known, b)
    } else {
        Epoch {
            offset: known.offset,
            pending: Some(Pending::Adopt(b)),
        }
    })
}

/// A new epoch for box `b`: past the machine's highest ledger boot, and past every epoch's offset.
pub(super) fn new_epoch(known: &KnownBoots, b: u32) -> Epoch {
    Epoch {
        offset: known
            .max_boot
            .unwrap_or(0)
            .max(known.offset.saturating_add(1)),
        pending: Some(Pending::Open(b)),
    }
}

/// Writes the epoch row of a box new to the machine (once its event is decided) and remembers
/// it for the rest of the transaction.
pub(super) fn settle(
    tx: &mut dyn Db,
    site: &str,
    known: &mut KnownBoots,
    machine: &str,
    epoch: Epoch,
    received_ms: u64,
) -> Result<(), LedgerError> {
    const INSERT: &str = "INSERT INTO boot_epochs (site, machine, boot_offset, since_ms, box)
                          VALUES (?1, ?2, ?3, ?4, ?5)";
    match epoch.pending {
        None => {}
        Some(Pending::Adopt(b)) => {
            let updated = tx.exec(
                "UPDATE boot_epochs SET box=?3
                 WHERE site=?1 AND machine=?2 AND boot_offset=?4 AND box IS NULL",
                args![site, machine, b, epoch.offset],
            )?;
            if updated == 0 {
                tx.exec(INSERT, args![site, machine, epoch.offset, received_ms, b])?;
            }
            tracing::info!(
                machine,
                box_id = b,
                boot_offset = epoch.offset,
                "first box id of this machine: it counts in the machine's current epoch"
            );
            known.boxes.insert(b, epoch.offset);
        }
        Some(Pending::Open(b)) => {
            tx.exec(INSERT, args![site, machine, epoch.offset, received_ms, b])?;
            tracing::warn!(
                machine,
                box_id = b,
                boot_offset = epoch.offset,
                "a new box serves this machine (a replacement?): its boots are counted after the machine's {}",
                epoch.offset
            );
            known.offset = known.offset.max(epoch.offset);
            known.boxes.insert(b, epoch.offset);
        }
    }
    Ok(())
}

/// How the event stored under `event`'s key (its payload `stored`) differs from `event`, or
/// `None` when it is the same event (a resend: it may differ in `sent_uptime_ms`, `box` and `sig`
/// only). `Some` names the first field that differs, for the conflict's dead letter.
pub(super) fn stored_differs(stored: &str, event: &Event) -> Option<&'static str> {
    match decode::<Event>(stored.as_bytes()) {
        Ok(s) if s.uptime_ms != event.uptime_ms => Some("uptime_ms"),
        Ok(s) if s.ts != event.ts => Some("ts"),
        Ok(s) if s.event != event.event => Some("event"),
        Ok(_) => None,
        // A stored payload that no longer decodes: the new copy cannot be shown equal.
        Err(_) => Some("the stored payload"),
    }
}

/// A service to record: the plan, who, what, and what it cost (cents excl. VAT, optional).
pub(super) struct Service<'a> {
    pub(super) plan: &'a str,
    pub(super) by: &'a str,
    pub(super) note: &'a str,
    pub(super) cost_cents: Option<u64>,
}

pub(super) fn record_service(
    tx: &mut dyn Db,
    site: &str,
    machine: &str,
    s: &Service<'_>,
    at_ms: u64,
) -> Result<Option<ServiceRecord>, LedgerError> {
    let Some(counters) = counters(tx, site, machine)? else {
        return Ok(None);
    };
    tx.exec(
        "INSERT INTO services (site, machine, plan, done_ms, done_by, note, busy_s_at, cost_cents)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        args![
            site,
            machine,
            s.plan,
            at_ms,
            s.by,
            s.note,
            counters.busy_s,
            s.cost_cents
        ],
    )?;
    Ok(Some(ServiceRecord {
        machine: machine.to_owned(),
        plan: s.plan.to_owned(),
        done_ms: at_ms,
        by: s.by.to_owned(),
        note: s.note.to_owned(),
        busy_s_at: counters.busy_s,
        cost_cents: s.cost_cents,
    }))
}

pub(super) fn open_outage(
    tx: &mut dyn Db,
    site: &str,
    machine: &str,
    source: &str,
    reason: &str,
    by: &str,
    at_ms: u64,
) -> Result<bool, LedgerError> {
    let n = tx.exec(
        "INSERT INTO outages (site, machine, source, reason, marked_by, from_ms, to_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)
         ON CONFLICT (site, machine, source) WHERE to_ms IS NULL DO NOTHING",
        args![site, machine, source, reason, by, at_ms],
    )?;
    Ok(n > 0)
}

pub(super) fn close_outage(
    tx: &mut dyn Db,
    site: &str,
    machine: &str,
    source: &str,
    at_ms: u64,
) -> Result<bool, LedgerError> {
    let n = tx.exec(
        "UPDATE outages SET to_ms = MAX(from_ms, ?4)
         WHERE site=?1 AND machine=?2 AND source=?3 AND to_ms IS NULL",
        args![site, machine, source, at_ms],
    )?;
    Ok(n > 0)
}

pub(super) fn records(
    db: &mut dyn Db,
    site: &str,
    machine: &str,
) -> Result<Option<MaintenanceRecords>, LedgerError> {
    let Some(counters) = counters(db, site, machine)? else {
        return Ok(None);
    };
    let services = db
        .rows(
            "SELECT plan, done_ms, done_by, note, busy_s_at, cost_cents FROM services
             WHERE site=?1 AND machine=?2 ORDER BY done_ms, id",
            args![site, machine],
        )?
        .into_iter()
        .map(|r| {
            Ok(ServiceRecord {
                machine: machine.to_owned(),
                plan: r.text(0)?,
                done_ms: r.u64(1)?,
                by: r.text(2)?,
                note: r.text(3)?,
                busy_s_at: r.u64(4)?,
                cost_cents: r.opt_u64(5)?,
            })
        })
        .collect::<Result<Vec<_>, LedgerError>>()?;
    let outages = db
        .rows(
            "SELECT source, reason, marked_by, from_ms, to_ms FROM outages
             WHERE site=?1 AND machine=?2 ORDER BY from_ms, id",
            args![site, machine],
        )?
        .into_iter()
        .map(|r| {
            Ok(Outage {
                machine: machine.to_owned(),
                source: r.text(0)?,
                reason: r.text(1)?,
                by: r.text(2)?,
                from_ms: r.u64(3)?,
                to_ms: r.opt_u64(4)?,
            })
        })
        .collect::<Result<Vec<_>, LedgerError>>()?;
    let refused_locked = db.one(REFUSED_LOCKED_SQL, args![site, machine])?.u64(0)?;
    let registered_ms = db
        .one(
            "SELECT registered_ms FROM machines WHERE site=?1 AND machine=?2",
            args![site, machine],
        )?
        .u64(0)?;
    Ok(Some(MaintenanceRecords {
        counters,
        services,
        outages,
        registered_ms,
        refused_locked,
    }))
}

/// How many times a machine refused a badge for its maintenance lock (`?1` the site, `?2` the
/// machine), purged ones included: read through the partial index `events_denied`, so that each
/// maintenance evaluation reads the machine's refusals, not every event it ever sent. The stored
/// payload is the device's JSON; the reason is a fixed wire name in it.
pub const REFUSED_LOCKED_SQL: &str =
    "SELECT COUNT(*) + COALESCE((SELECT refused_locked FROM purged_totals p
            WHERE p.site=?1 AND p.machine=?2), 0)
     FROM events INDEXED BY events_denied WHERE site=?1 AND machine=?2
     AND kind='access_denied' AND payload LIKE '%\"maintenance_lock\"%'";

pub(super) fn alert_states(
    db: &mut dyn Db,
    site: &str,
) -> Result<Vec<(String, String, String)>, LedgerError> {
    db.rows(
        "SELECT machine, plan, state FROM maintenance_alerts WHERE site=?1",
        args![site],
    )?
    .into_iter()
    .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)))
    .collect()
}

pub(super) fn set_alert_state(
    tx: &mut dyn Db,
    site: &str,
    machine: &str,
    plan: &str,
    state: &str,
    at_ms: u64,
) -> Result<(), LedgerError> {
    tx.exec(
        "INSERT INTO maintenance_alerts (site, machine, plan, state, changed_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (site, machine, plan) DO UPDATE SET
            state=excluded.state, changed_ms=excluded.changed_ms",
        args![site, machine, plan, state, at_ms],
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
            box_id: None,
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

    /// `records` with the event's fields changed by `f` (the payload re-encoded).
    fn changed(records: Vec<Record>, f: impl Fn(&mut Event)) -> Vec<Record> {
        records
            .into_iter()
            .map(|r| match r {
                Record::Event {
                    machine,
                    mut event,
                    received_ms,
                    ..
                } => {
                    f(&mut event);
                    Record::Event {
                        machine,
                        payload: encode_to_vec(&event).expect("encode"),
                        event,
                        received_ms,
                    }
                }
                other => other,
            })
            .collect()
    }

    fn boxed(records: Vec<Record>, id: u32) -> Vec<Record> {
        changed(records, |e| e.box_id = Some(id))
    }

    fn epochs(l: &SqliteLedger) -> Vec<(u32, Option<u32>)> {
        l.conn
            .prepare("SELECT boot_offset, box FROM boot_epochs ORDER BY boot_offset")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    #[test]
    fn a_replacement_box_with_its_own_box_id_counting_boots_from_one_again_adds_to_the_machine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = open(&dir);
        // An old box without a box id (firmware older than the field), boots 1 and 2.
        l.commit(&busy_for("laser-1", 1, 600)).expect("commit");
        l.commit(&busy_for("laser-1", 2, 300)).expect("commit");
        // The new box has a box id and starts at boot 1 again, with other uptimes: the same
        // keys, other events. The machine's first box id, reusing its boots: a new epoch.
        let new_box = boxed(
            changed(busy_for("laser-1", 1, 1200), |e| {
                e.uptime_ms += 500;
                e.sent_uptime_ms += 500;
            }),
            7,
        );
        let outcomes = l.commit(&new_box).expect("commit");
        assert!(
            outcomes.iter().all(|c| c.outcome == Outcome::Accepted),
            "not taken for duplicates or conflicts: {outcomes:?}"
        );
        assert_eq!(epochs(&l), [(2, Some(7))]);
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
        // Its next boot follows; and a third box opens an epoch past the machine's boot 4.
        l.commit(&boxed(busy_for("laser-1", 2, 60), 7)[..1])
            .expect("commit");
        assert_eq!(l.machines().expect("machines")[0].boot, Some(4));
        let third = l
            .commit(&boxed(busy_for("laser-1", 1, 60), 9))
            .expect("commit");
        assert!(third.iter().all(|c| c.outcome == Outcome::Accepted));
        assert_eq!(epochs(&l), [(2, Some(7)), (4, Some(9))]);
        assert_eq!(l.machines().expect("machines")[0].boot, Some(5));
        // A late event of box 7's boot 2 still goes to box 7's epoch (ledger boot 4), not to the
        // latest one.
        let late = l
            .commit(&boxed(busy_for("laser-1", 2, 60)[1..2].to_vec(), 7))
            .expect("commit");
        assert_eq!(late[0].outcome, Outcome::Accepted);
        let boot4: i64 = l
            .conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE machine='laser-1' AND boot=4",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(boot4, 2);
    }

    #[test]
    fn the_first_box_id_of_a_machine_adopts_its_epoch_when_the_device_was_upgraded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = open(&dir);
        // Boot 1 without a box id; the same box, upgraded, resends its last event with its new
        // box id (a duplicate) and goes on with boot 2.
        let before = busy_for("laser-1", 1, 600);
        l.commit(&before).expect("commit");
        let resent = l.commit(&boxed(before[2..].to_vec(), 5)).expect("commit");
        assert_eq!(resent[0].outcome, Outcome::Duplicate);
        l.commit(&boxed(busy_for("laser-1", 2, 300), 5))
            .expect("commit");
        assert_eq!(epochs(&l), [(0, Some(5))]);
        let r = l.counters("laser-1").expect("read").expect("known");
        assert_eq!((r.busy_s, r.boots), (900, 2));
    }

    #[test]
    fn a_ledger_of_schema_9_gets_its_boots_time_per_state_from_its_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = open(&dir);
        l.commit(&busy_for("laser-1", 1, 600)).expect("commit");
        l.commit(&busy_for("laser-1", 2, 300)).expect("commit");
        let before = l.counters("laser-1").expect("read").expect("known");
        assert_eq!(before.busy_s, 900);
        // Back to schema 9: the columns gone, their values to be found again.
        l.conn
            .execute_batch(
                "ALTER TABLE boots DROP COLUMN busy_ms; ALTER TABLE boots DROP COLUMN idle_ms;
                 ALTER TABLE boots DROP COLUMN last_state;
                 ALTER TABLE boots DROP COLUMN last_state_seq;
                 ALTER TABLE boots DROP COLUMN last_state_up; PRAGMA user_version = 9;",
            )
            .expect("back to schema 9");
        drop(l);
        let l = open(&dir);
        assert_eq!(l.schema_version().expect("version"), 10);
        assert_eq!(l.counters("laser-1").expect("read").expect("known"), before);
    }

    #[test]
    fn a_ledger_of_schema_5_keeps_its_epochs_and_its_first_box_id_adopts_the_latest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.sqlite");
        {
            // A ledger as version 5 left it: a replacement box found by collision (offset 2).
            let conn = rusqlite::Connection::open(&path).expect("open");
            for sql in &crate::ledger::sqlite::MIGRATIONS[..5] {
                conn.execute_batch(sql).expect("old migration");
            }
            conn.pragma_update(None, "user_version", 5)
                .expect("version");
            conn.execute_batch(
                "INSERT INTO machines VALUES ('site', 'laser-1', 'laser-1', 'laser', 'config', 0);
                 INSERT INTO boots VALUES ('site', 'laser-1', 2, 0, 0, 0, 3, 3);
                 INSERT INTO boots VALUES ('site', 'laser-1', 3, 0, 0, 0, 3, 3);
                 INSERT INTO boot_epochs VALUES ('site', 'laser-1', 2, 0);",
            )
            .expect("old rows");
        }
        let mut l = open(&dir);
        assert_eq!(l.schema_version().expect("version"), 10);
        assert_eq!(epochs(&l), [(2, None)], "the old epoch keeps its offset");
        // An old device (no box id): the latest epoch, as before.
        l.commit(&busy_for("laser-1", 2, 60)).expect("commit");
        assert_eq!(l.machines().expect("machines")[0].boot, Some(4));
        // The same box, upgraded: its box id adopts that epoch; boot 3 is the ledger's 5.
        l.commit(&boxed(busy_for("laser-1", 3, 60), 9))
            .expect("commit");
        assert_eq!(epochs(&l), [(2, Some(9))]);
        assert_eq!(l.machines().expect("machines")[0].boot, Some(5));
    }

    #[test]
    fn a_changed_resend_is_a_conflict_never_a_new_epoch_or_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = open(&dir);
        for (id, machine) in [(None, "laser-1"), (Some(3), "laser-2")] {
            let with = |r: Vec<Record>| changed(r, |e| e.box_id = id);
            l.commit(&with(busy_for(machine, 1, 600))).expect("commit");
            let variants: [&dyn Fn(&mut Event); 4] = [
                &|e| {
                    e.uptime_ms += 1;
                    e.sent_uptime_ms += 1;
                },
                &|e| e.ts = Some(T0 + 123),
                &|e| {
                    e.event = EventBody::State {
                        from: MachineState::Off,
                        to: MachineState::Busy,
                    }
                },
                // Only its sent time changed: a resend.
                &|e| e.sent_uptime_ms += 60_000,
            ];
            let mut outcomes = Vec::new();
            for v in variants {
                for _ in 0..5 {
                    let c = l
                        .commit(&with(changed(busy_for(machine, 1, 600), v)))
                        .expect("commit");
                    outcomes.extend(c.into_iter().map(|c| c.outcome));
                }
            }
            let conflicts = outcomes.iter().filter(|o| **o == Outcome::Conflict).count();
            let duplicates = outcomes
                .iter()
                .filter(|o| **o == Outcome::Duplicate)
                .count();
            // 3 changed variants x 5 copies x 3 events; the sent-time variant: 15 resends.
            assert_eq!((conflicts, duplicates), (45, 15), "{machine}: {outcomes:?}");
            let c = l.counters(machine).expect("read").expect("known");
            assert_eq!((c.busy_s, c.boots, c.events), (600, 1, 3), "{machine}");
        }
        assert_eq!(epochs(&l), [(0, Some(3))], "no epoch but laser-2's box");
        let dead = l.dead_letters(1000).expect("dead letters");
        assert_eq!(dead.len(), 90);
        assert!(dead.iter().all(|d| d.reason == "conflict"));
        assert!(
            dead[0].detail.contains("the first copy is kept"),
            "{}",
            dead[0].detail
        );
        assert_eq!(dead[0].topic, "fabmeter/v1/site/laser-2/event");
    }

    #[test]
    fn services_snapshot_the_busy_counter_and_outages_open_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = open(&dir);
        l.commit(&busy_for("laser-1", 1, 900)).expect("commit");
        let s = l
            .record_service("laser-1", "lens", "sam", "cleaned", Some(4_500), T0 + 5)
            .expect("record")
            .expect("known machine");
        assert_eq!((s.busy_s_at, s.cost_cents), (900, Some(4_500)));
        assert!(l
            .record_service("nope", "lens", "sam", "", None, T0)
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
