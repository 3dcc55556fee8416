//! Valid protocol events from many machines and boots, encoded once before a run.

use fabmeter_protocol::message::{EndReason, Event, EventBody, MachineState};
use fabmeter_protocol::{encode_to_vec, BadgeHash, BadgeKey};

/// The benchmark's site id.
pub const SITE: &str = "bench";
/// Wall time of the first event (2025-11-24), unix ms.
pub const T0: u64 = 1_764_000_000_000;
/// Events per boot before the simulated device reboots (a new boot epoch for the ledger).
const EVENTS_PER_BOOT: u32 = 500;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Msg {
    /// MQTT topic.
    pub topic: String,
    /// Encoded event.
    pub payload: Vec<u8>,
}

/// Machine ids `m-0001`...
pub fn machine_ids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("m-{i:04}")).collect()
}

/// The badge hash of member `i` (members `member-1`... in the site config).
pub fn badge(i: usize) -> BadgeHash {
    let b = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
    BadgeKey::new([7; 32]).hash(&b)
}

/// Events of one machine: boots of [`EVENTS_PER_BOOT`] events, each a first state change then
/// sessions of start, idle->busy, three progress events, busy->idle, end. Every event has `ts`.
fn machine_events(machine: &str, index: usize, count: usize, members: usize) -> Vec<Msg> {
    machine_events_at(SITE, machine, index, count, members)
}

/// [`machine_events`] of a machine of site `site`.
pub fn machine_events_at(
    site: &str,
    machine: &str,
    index: usize,
    count: usize,
    members: usize,
) -> Vec<Msg> {
    let topic = format!("fabmeter/v1/{site}/{machine}/event");
    let mut out = Vec::with_capacity(count);
    let mut boot = 0u32;
    let mut seq = EVENTS_PER_BOOT;
    let mut uptime = 0u64;
    let mut session = 0u32;
    let mut step = 0u32;
    let base = T0 + index as u64 * 1_000;
    let mut member = index;
    while out.len() < count {
        if seq >= EVENTS_PER_BOOT {
            boot += 1;
            seq = 0;
            step = 0;
        }
        seq += 1;
        uptime += 15_000;
        let b = badge(member % members + 1);
        let body = match step {
            0 => EventBody::State {
                from: MachineState::Off,
                to: MachineState::Idle,
            },
            1 => {
                session = seq;
                member += 7;
                EventBody::SessionStarted { badge: b }
            }
            2 => EventBody::State {
                from: MachineState::Idle,
                to: MachineState::Busy,
            },
            3..=5 => EventBody::SessionProgress {
                session,
                busy_s: (step - 2) * 60,
                idle_s: 0,
                energy_wh: step * 10,
            },
            6 => EventBody::State {
                from: MachineState::Busy,
                to: MachineState::Idle,
            },
            _ => EventBody::SessionEnded {
                session,
                badge: b,
                busy_s: 200,
                idle_s: 30,
                energy_wh: 70,
                reason: EndReason::BadgeOut,
            },
        };
        step = if step >= 7 { 1 } else { step + 1 };
        let ev = Event {
            v: 1,
            box_id: None,
            boot,
            seq,
            uptime_ms: uptime,
            sent_uptime_ms: uptime,
            ts: Some(base + u64::from(boot) * 100_000_000 + uptime),
            event: body,
        };
        let payload = encode_to_vec(&ev).expect("the generator makes valid events");
        out.push(Msg {
            topic: topic.clone(),
            payload,
        });
    }
    out
}

/// `total` events over `machines` machines, split over `clients` publishers (each machine on one
/// publisher, as a device has one connection); within a publisher the machines take turns.
pub fn split(total: usize, machines: &[String], clients: usize, members: usize) -> Vec<Vec<Msg>> {
    let per_machine: Vec<Vec<Msg>> = machines
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let share = total / machines.len() + usize::from(i < total % machines.len());
            machine_events(m, i, share, members)
        })
        .collect();
    let mut out: Vec<Vec<Msg>> = vec![Vec::new(); clients];
    let longest = per_machine.iter().map(Vec::len).max().unwrap_or(0);
    for k in 0..longest {
        for (i, msgs) in per_machine.iter().enumerate() {
            if let Some(m) = msgs.get(k) {
                out[i % clients].push(m.clone());
            }
        }
    }
    out
}
