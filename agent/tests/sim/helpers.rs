//! Shared helpers: a runtime, collecting what a subscriber received, decoding per machine.

use std::collections::BTreeMap;
use std::time::Duration;

use fabmeter_agent::protocol::message::{Event, Presence, Status};
use fabmeter_agent::protocol::{decode, Channel, Topic};
use fabmeter_agent::sim::SimReport;
use fabmeter_e2e::{ReceivedMessage, Subscription};

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Everything received, decoded.
#[derive(Default)]
pub struct Seen {
    /// Per machine, events in arrival order.
    pub events: BTreeMap<String, Vec<Event>>,
    /// Per machine, statuses in arrival order, with their retained flag.
    pub statuses: BTreeMap<String, Vec<(Status, bool)>>,
    /// Every event as received: (topic, payload).
    pub raw_events: Vec<(String, Vec<u8>)>,
}

impl Seen {
    pub fn add(&mut self, m: &ReceivedMessage) {
        let topic = Topic::parse(&m.topic).expect("a fabmeter topic");
        let machine = topic.machine.as_str().to_string();
        match topic.channel {
            Channel::Event => {
                let ev: Event = decode(&m.payload).expect("an event the protocol crate decodes");
                self.events.entry(machine).or_default().push(ev);
                self.raw_events.push((m.topic.clone(), m.payload.to_vec()));
            }
            Channel::Status => {
                let st: Status = decode(&m.payload).expect("a status the protocol crate decodes");
                self.statuses
                    .entry(machine)
                    .or_default()
                    .push((st, m.retained));
            }
            _ => {}
        }
    }

    /// Per machine, events deduplicated by (boot, seq), in key order, `sent_uptime_ms` zeroed.
    pub fn distinct(&self) -> BTreeMap<String, Vec<Event>> {
        self.events
            .iter()
            .map(|(m, evs)| {
                let mut by_key = BTreeMap::new();
                for e in evs {
                    let mut e = e.clone();
                    e.sent_uptime_ms = 0;
                    by_key.entry((e.boot, e.seq)).or_insert(e);
                }
                (m.clone(), by_key.into_values().collect())
            })
            .collect()
    }
}

/// Receives until, for every machine of `report`, the distinct events received match the distinct
/// events the broker acknowledged, and its last status is offline.
pub fn collect_all(sub: &mut Subscription, report: &SimReport, timeout: Duration) -> Seen {
    let mut seen = Seen::default();
    let complete = |seen: &Seen| {
        let distinct = seen.distinct();
        report.machines.iter().all(|m| {
            distinct.get(&m.id).map_or(0, Vec::len) as u64 == m.events_distinct
                && seen
                    .statuses
                    .get(&m.id)
                    .and_then(|v| v.last())
                    .is_some_and(|(s, _)| s.status == Presence::Offline && s.boot == m.last_boot)
        })
    };
    sub.wait_for(
        timeout,
        "every acknowledged event and every offline status",
        |m| {
            seen.add(m);
            complete(&seen)
        },
    )
    .expect("every acknowledged event arrived");
    seen
}
