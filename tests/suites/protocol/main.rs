//! The wire contract through a real broker: every example of docs/PROTOCOL.md is published with its
//! channel's QoS and retain flag through a Mosquitto started by the test, and what a subscriber
//! receives decodes to the same message (or is refused with the documented reason).

use std::time::Duration;

use fabmeter_e2e::{Mosquitto, ReceivedMessage};
use fabmeter_protocol::fixtures::{self, Expect, Fixture};
use fabmeter_protocol::message::{Event, EventBody, Presence, Status};
use fabmeter_protocol::{decode, decode_for, Channel, Id, Topic};

const SITE: &str = "atelier-lyon";
const WAIT: Duration = Duration::from_secs(20);

fn topic_for(i: usize, f: &Fixture) -> String {
    let machine = Id::new(&format!("m{i}")).expect("valid machine id");
    let site = Id::new(SITE).expect("valid site id");
    Topic::new(site, machine, f.channel).to_string()
}

fn fixture_of(msg: &ReceivedMessage, all: &[Fixture]) -> (usize, Fixture) {
    let topic = Topic::parse(&msg.topic).unwrap_or_else(|e| panic!("{}: {e}", msg.topic));
    let i: usize = topic.machine.as_str()[1..].parse().expect("machine m<i>");
    assert_eq!(topic.channel, all[i].channel);
    (i, all[i])
}

#[test]
fn every_example_survives_a_real_broker() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let client = broker.client();
    let mut sub = client
        .subscribe(&["fabmeter/v1/#"], 1)
        .expect("subscribe to the whole tree");
    let all = fixtures::all();
    for (i, f) in all.iter().enumerate() {
        let c = f.channel;
        client
            .publish(&topic_for(i, f), f.json, c.qos(), c.retained())
            .unwrap_or_else(|e| panic!("publish PROTOCOL.md line {}: {e}", f.line));
    }
    let mut seen = vec![false; all.len()];
    let received = sub
        .wait_for(WAIT, "every example", |m| {
            let (i, _) = fixture_of(m, &all);
            seen[i] = true;
            seen.iter().all(|s| *s)
        })
        .expect("all examples delivered");
    assert_eq!(received.len(), all.len(), "each example delivered once");
    for msg in &received {
        let (_, f) = fixture_of(msg, &all);
        assert_eq!(
            msg.payload,
            f.json.as_bytes(),
            "the broker kept the payload intact"
        );
        assert_eq!(msg.qos, f.channel.qos(), "line {}", f.line);
        let got = decode_for(f.channel, &msg.payload);
        match f.expect {
            Expect::Accept => {
                let want = decode_for(f.channel, f.json.as_bytes()).expect("valid fixture");
                assert_eq!(got, Ok(want), "PROTOCOL.md line {}", f.line);
            }
            Expect::Reject(reason) => match got {
                Err(e) => assert_eq!(e.reason(), reason, "line {}: {e}", f.line),
                Ok(m) => panic!("line {}: accepted {m:?}", f.line),
            },
        }
    }

    // Retained channels: a subscriber arriving later still gets the birth and the config.
    let mut late = client
        .subscribe(
            &[
                &format!("fabmeter/v1/{SITE}/+/status"),
                &format!("fabmeter/v1/{SITE}/+/config"),
            ],
            1,
        )
        .expect("late subscriber");
    let retained_expected: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, f)| f.channel.retained())
        .map(|(i, _)| i)
        .collect();
    let mut got = Vec::new();
    late.wait_for(WAIT, "every retained example", |m| {
        assert!(m.retained, "{} should arrive retained", m.topic);
        got.push(fixture_of(m, &all).0);
        got.len() == retained_expected.len()
    })
    .expect("retained examples");
    got.sort_unstable();
    assert_eq!(got, retained_expected);
}

/// The "Writing a device with mosquitto_pub" section of PROTOCOL.md, run as written against a real
/// broker: what it publishes is a valid birth, two valid events and a last-will-style offline status.
#[test]
fn the_documented_mosquitto_pub_session_is_a_valid_device() {
    let doc = fixtures::PROTOCOL_MD;
    let section = doc
        .split("## Writing a device with mosquitto_pub")
        .nth(1)
        .expect("PROTOCOL.md has the mosquitto_pub section");
    let script = section
        .split("```sh\n")
        .nth(1)
        .and_then(|s| s.split("\n```").next())
        .expect("a sh block in that section");
    let broker = Mosquitto::start().expect("start mosquitto");
    let host_args = format!("-h {} -p {}", broker.host(), broker.port());
    let script = script.replace("-h localhost", &host_args);
    assert!(
        !script.contains("localhost"),
        "every command was pointed at the test broker"
    );

    let client = broker.client();
    let base = format!("fabmeter/v1/{SITE}/laser-1");
    // The script starts by reading the retained config: give it one, as a collector would.
    let config = fixtures::all()
        .into_iter()
        .find(|f| f.channel == Channel::Config)
        .expect("a config example");
    client
        .publish(&format!("{base}/config"), config.json, 1, true)
        .expect("retained config");
    let mut sub = client
        .subscribe(&[&format!("{base}/status"), &format!("{base}/event")], 1)
        .expect("subscribe");

    let out = std::process::Command::new("bash")
        .arg("-euc")
        .arg(&script)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "the documented script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        config.json,
        "the script read the retained config"
    );

    let msgs = sub
        .wait_for(WAIT, "the offline status", |m| {
            m.topic.ends_with("/status")
                && decode::<Status>(&m.payload).is_ok_and(|s| s.status == Presence::Offline)
        })
        .expect("the script's messages");
    let statuses: Vec<Status> = msgs
        .iter()
        .filter(|m| m.topic.ends_with("/status"))
        .map(|m| decode(&m.payload).expect("valid status"))
        .collect();
    let events: Vec<Event> = msgs
        .iter()
        .filter(|m| m.topic.ends_with("/event"))
        .map(|m| decode(&m.payload).expect("valid event"))
        .collect();
    assert_eq!(statuses.len(), 2, "birth and offline");
    assert_eq!(statuses[0].status, Presence::Online);
    assert_eq!(
        events.iter().map(|e| (e.boot, e.seq)).collect::<Vec<_>>(),
        vec![(12, 1), (12, 2)]
    );
    assert!(matches!(events[1].event, EventBody::SessionStarted { .. }));
}
