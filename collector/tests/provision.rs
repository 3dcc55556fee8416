//! Broker accounts made by `fabmeter-collector provision`, enforced by a real Mosquitto that
//! reads the generated password and ACL files: a device cannot publish as another machine (the
//! collector never sees it) nor read another machine's config; wrong or missing credentials
//! are refused.

#[allow(dead_code)]
#[path = "ingest/helpers.rs"]
mod helpers;

use std::path::Path;
use std::time::Duration;

use fabmeter_collector::config::Config;
use fabmeter_e2e::{wait_until, Mosquitto};
use fabmeter_protocol::message::{Event, EventBody, MachineState};
use fabmeter_protocol::{encode_to_vec, DeviceKey};
use helpers::{collector_cli, TestCollector, SITE};
use rumqttc::{
    Client, ConnectReturnCode, Connection, Event as MqttEvent, MqttOptions, Packet, QoS,
};

const LONG: Duration = Duration::from_secs(60);

/// Value of `key = "..."` in TOML-like text.
fn value_of(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
        .to_owned()
}

/// Connects with credentials; returns the client and its connection once CONNACK arrived, or
/// the refusal code.
fn connect(
    port: u16,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(Client, Connection), ConnectReturnCode> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    let (client, mut conn) = Client::new(o, 100);
    for ev in conn.iter() {
        match ev {
            Ok(MqttEvent::Incoming(Packet::ConnAck(a))) => {
                return if a.code == ConnectReturnCode::Success {
                    Ok((client, conn))
                } else {
                    Err(a.code)
                };
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("{id}: unexpected connection error {e}"),
        }
    }
    panic!("{id}: connection ended before CONNACK")
}

/// Publishes at QoS 1 and waits for the PUBACK.
fn publish(client: &Client, conn: &mut Connection, topic: &str, payload: Vec<u8>, retain: bool) {
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .expect("queue publish");
    for ev in conn.iter() {
        match ev.expect("connection") {
            MqttEvent::Incoming(Packet::PubAck(_)) => return,
            _ => continue,
        }
    }
}

fn state_event(seq: u32) -> Vec<u8> {
    encode_to_vec(&Event {
        v: 1,
        box_id: None,
        boot: 1,
        seq,
        uptime_ms: u64::from(seq) * 1000,
        sent_uptime_ms: u64::from(seq) * 1000,
        ts: Some(1_790_000_000_000 + u64::from(seq) * 1000),
        event: EventBody::State {
            from: MachineState::Off,
            to: MachineState::Idle,
        },
    })
    .expect("event")
}

fn events_of(ledger: &Path, machine: &str) -> i64 {
    rusqlite::Connection::open(ledger)
        .and_then(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM events WHERE machine = ?1",
                [machine],
                |r| r.get(0),
            )
        })
        .unwrap_or(0)
}

#[test]
fn generated_accounts_confine_each_device_to_its_own_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut c = Config::for_site(SITE);
    c.machines = ["laser-1", "laser-2"]
        .iter()
        .map(|m| fabmeter_collector::config::MachineConfig {
            id: (*m).into(),
            name: String::new(),
            kind: "laser".into(),
            tariff: None,
            sensing: None,
        })
        .collect();
    c.broker.password_file = Some(d.join("passwd"));
    c.broker.acl_file = Some(d.join("acl"));
    c.broker.device_url = Some("mqtts://workshop.example:8883".into());
    c.ledger.path = d.join("ledger.sqlite");
    c.http.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    // Device keys too: provisioning writes each device's key into its credentials and into the
    // collector's key file, and the collector refuses events without a valid signature.
    c.security.device_keys_file = Some(d.join("device-keys.toml"));
    c.security.require_signed_events = true;
    let file = d.join("site.toml");
    std::fs::write(&file, c.to_toml()).expect("write config");

    // Accounts, as an installer makes them.
    let (ok, out, err) = collector_cli(&file, &["provision", "collector"]);
    assert!(ok, "{out}{err}");
    let (coll_user, coll_pw) = (value_of(&out, "username"), value_of(&out, "password"));
    assert_eq!(coll_user, "_collector@atelier");
    let mut creds = Vec::new();
    let mut keys = Vec::new();
    for m in ["laser-1", "laser-2"] {
        let path = d.join(format!("{m}.toml"));
        let (ok, out, err) = collector_cli(
            &file,
            &[
                "provision",
                "device",
                "--machine",
                m,
                "--out",
                path.to_str().expect("utf-8"),
            ],
        );
        assert!(ok && out.contains(&format!("{m}@atelier")), "{out}{err}");
        let text = std::fs::read_to_string(&path).expect("credentials");
        assert_eq!(value_of(&text, "url"), "mqtts://workshop.example:8883");
        assert_eq!(value_of(&text, "machine"), m);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(
                mode & 0o777,
                0o600,
                "credentials readable by their owner only"
            );
        }
        creds.push((value_of(&text, "username"), value_of(&text, "password")));
        keys.push(DeviceKey::from_hex(&value_of(&text, "key")).expect("a 64-hex-digit device key"));
    }
    let held = fabmeter_collector::device_keys::load(&d.join("device-keys.toml")).expect("keys");
    assert_eq!(held.len(), 2);
    assert_eq!(
        held["laser-1"].to_hex(),
        keys[0].to_hex(),
        "the collector holds the same key"
    );
    assert_ne!(keys[0].to_hex(), keys[1].to_hex());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(d.join("device-keys.toml")).expect("meta");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "the key file is secret"
        );
    }
    let (ok, _, err) = collector_cli(&file, &["provision", "device", "--machine", "nope"]);
    assert!(!ok && err.contains("unknown machine \"nope\""), "{err}");
    let passwd = std::fs::read_to_string(d.join("passwd")).expect("passwd");
    assert_eq!(passwd.lines().count(), 3);
    assert!(
        !passwd.contains(&creds[0].1),
        "only hashes in the password file"
    );

    // A real broker with exactly these files.
    let broker = Mosquitto::builder()
        .password_file(d.join("passwd"))
        .acl_file(d.join("acl"))
        .allow_anonymous(false)
        .start()
        .expect("mosquitto");
    c.mqtt.url = broker.url();
    c.mqtt.client_id = "fm-collector-acl".into();
    c.mqtt.username = Some(coll_user.clone());
    c.mqtt.password = Some(coll_pw.clone());
    let ledger = c.ledger.path.clone();
    let collector = TestCollector::start(c, tempfile::tempdir().expect("tempdir"));
    wait_until(LONG, "collector connected and subscribed", || {
        collector.get("/readyz").status == 200
    });

    // Refused: no credentials, a wrong password, a device password under another name.
    assert!(connect(broker.port(), "anon", None).is_err());
    assert!(connect(broker.port(), "bad", Some((&creds[0].0, "wrong"))).is_err());
    assert!(connect(broker.port(), "swap", Some((&creds[1].0, &creds[0].1))).is_err());

    // Device A (laser-1) tries to publish as B (laser-2), then publishes as itself. Mosquitto
    // keeps one client's messages in order, so once A's own event is in the ledger, the forged
    // one would have been too.
    let (a, mut a_conn) =
        connect(broker.port(), "dev-a", Some((&creds[0].0, &creds[0].1))).expect("A connects");
    let topic = |m: &str, ch: &str| format!("fabmeter/v1/{SITE}/{m}/{ch}");
    publish(
        &a,
        &mut a_conn,
        &topic("laser-2", "event"),
        state_event(1),
        false,
    );
    // Unsigned, then signed with A's key: only the signed one is accepted.
    publish(
        &a,
        &mut a_conn,
        &topic("laser-1", "event"),
        state_event(1),
        false,
    );
    let mut signed = [0u8; 1024];
    let unsigned = state_event(1);
    signed[..unsigned.len()].copy_from_slice(&unsigned);
    let n = keys[0]
        .sign(&topic("laser-1", "event"), &mut signed, unsigned.len())
        .expect("sign");
    publish(
        &a,
        &mut a_conn,
        &topic("laser-1", "event"),
        signed[..n].to_vec(),
        false,
    );
    wait_until(LONG, "A's own event in the ledger", || {
        events_of(&ledger, "laser-1") == 1
    });
    assert_eq!(events_of(&ledger, "laser-2"), 0, "A could not publish as B");
    assert_eq!(
        collector.metric("fabmeter_received_total"),
        2,
        "the collector never saw the forged one"
    );
    assert_eq!(
        collector.metric("fabmeter_rejected_total{reason=\"signature\"}"),
        1,
        "the unsigned one was refused"
    );

    // Retained configs for both, by the collector's account; A subscribes to B's first, then
    // to its own: it gets its own and never B's.
    let (cl, mut cl_conn) = connect(broker.port(), "coll-cfg", Some((&coll_user, &coll_pw)))
        .expect("collector account");
    publish(
        &cl,
        &mut cl_conn,
        &topic("laser-2", "config"),
        b"{\"for\":\"b\"}".to_vec(),
        true,
    );
    publish(
        &cl,
        &mut cl_conn,
        &topic("laser-1", "config"),
        b"{\"for\":\"a\"}".to_vec(),
        true,
    );
    a.subscribe(topic("laser-2", "config"), QoS::AtLeastOnce)
        .expect("subscribe B");
    a.subscribe(topic("laser-1", "config"), QoS::AtLeastOnce)
        .expect("subscribe A");
    let mut got = Vec::new();
    for ev in a_conn.iter() {
        if let MqttEvent::Incoming(Packet::Publish(p)) = ev.expect("connection") {
            got.push((p.topic.clone(), p.payload.to_vec()));
            if p.topic == topic("laser-1", "config") {
                break;
            }
        }
    }
    assert_eq!(
        got,
        vec![(topic("laser-1", "config"), b"{\"for\":\"a\"}".to_vec())],
        "A reads its own config only"
    );
    drop(collector);
}
