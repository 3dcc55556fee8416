//! Shared by the billing tests: a site's ledger opened on a real SQLite file with its machines
//! registered, and device events as the ingest hands them to the ledger (one, or a closed
//! session's two).

use std::collections::HashMap;

use fabmeter_collector::config::Config;
use fabmeter_collector::ledger::{Ledger, MachineInfo, Record, SqliteLedger};
use fabmeter_collector::protocol::message::{EndReason, Event, EventBody};
use fabmeter_collector::protocol::{encode_to_vec, BadgeHash, Id};

/// The ledger at `c.ledger.path`, badges from the members, the configured machines registered.
pub fn open(c: &Config) -> SqliteLedger {
    let badges: HashMap<String, String> = c
        .members
        .iter()
        .flat_map(|m| m.badges.iter().map(|b| (b.clone(), m.id.clone())))
        .collect();
    let mut l =
        SqliteLedger::open(&c.ledger.path, &c.site_id().expect("site"), badges).expect("open");
    let machines: Vec<MachineInfo> = c
        .machines
        .iter()
        .map(|m| MachineInfo {
            id: m.id.clone(),
            name: m.name.clone(),
            kind: m.kind.clone(),
            source: "config".into(),
        })
        .collect();
    l.register_machines(&machines, 0).expect("register");
    l
}

/// One device event at `ts` (device clock), received 10 ms later.
pub fn event(machine: &str, boot: u32, seq: u32, ts: u64, body: EventBody) -> Record {
    let event = Event {
        v: 1,
        box_id: None,
        boot,
        seq,
        uptime_ms: ts - 1_700_000_000_000,
        sent_uptime_ms: ts - 1_700_000_000_000,
        ts: Some(ts),
        event: body,
    };
    Record::Event {
        machine: Id::new(machine).expect("id"),
        payload: encode_to_vec(&event).expect("encode"),
        event,
        received_ms: ts + 10,
    }
}

/// The start and end events of a closed session of `badge` (hex) from `t0`: `seq` and `seq + 1`
/// of `boot`, ended by the badge after `busy_s` busy and `idle_s` idle seconds.
pub fn closed_session(
    machine: &str,
    boot: u32,
    seq: u32,
    badge: &str,
    t0: u64,
    busy_s: u32,
    idle_s: u32,
) -> (Record, Record) {
    let badge = BadgeHash::from_hex(badge).expect("badge");
    let t1 = t0 + u64::from(busy_s + idle_s) * 1000;
    (
        event(machine, boot, seq, t0, EventBody::SessionStarted { badge }),
        event(
            machine,
            boot,
            seq + 1,
            t1,
            EventBody::SessionEnded {
                session: seq,
                badge,
                busy_s,
                idle_s,
                energy_wh: 1,
                reason: EndReason::BadgeOut,
            },
        ),
    )
}
