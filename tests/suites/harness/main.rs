//! Tests of the real-services harness itself (mosquitto, mosquitto-clients, victoria-metrics,
//! openssl must be installed). Every test owns its services, so they run in parallel.

use std::ffi::OsString;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fabmeter_e2e::{
    poll_until, port_accepts_connections, send_signal, wait_for_exit, wait_until, ExportedSeries,
    HarnessError, Mosquitto, MqttCli, ReceivedMessage, Signal, TestPki, TlsListener, Tool,
    VictoriaMetrics,
};

const WAIT: Duration = Duration::from_secs(10);

fn topics(messages: &[ReceivedMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.topic.as_str()).collect()
}

// ---------------------------------------------------------------- mosquitto basics

#[test]
fn mosquitto_starts_on_a_private_port_and_accepts_tcp() {
    let broker = Mosquitto::start().expect("start mosquitto");
    assert_ne!(
        broker.port(),
        1883,
        "must never use the system broker's port"
    );
    assert!(broker.is_running());
    assert!(port_accepts_connections(broker.port()));
    assert_eq!(broker.host(), "127.0.0.1");
    assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{}", broker.port()));
    assert!(broker.tls_port().is_none());
    let config = std::fs::read_to_string(broker.config_path()).expect("read config");
    assert!(
        config.contains(&format!("listener {} 127.0.0.1", broker.port())),
        "{config}"
    );
    assert!(config.contains("allow_anonymous true"), "{config}");
    assert!(config.contains("max_queued_messages 100000"), "{config}");
    assert!(config.contains("persistence false"), "{config}");
    assert!(broker.log_contents().contains(" running"));
}

#[test]
fn queue_limits_are_configurable() {
    let broker = Mosquitto::builder()
        .max_queued_messages(25_000)
        .max_inflight_messages(50)
        .start()
        .expect("start mosquitto");
    let config = std::fs::read_to_string(broker.config_path()).expect("read config");
    assert!(config.contains("max_queued_messages 25000"), "{config}");
    assert!(config.contains("max_inflight_messages 50"), "{config}");
}

#[test]
fn retained_message_round_trip_with_cli_clients() {
    let broker = Mosquitto::start().expect("start mosquitto");
    let client = broker.client();
    client
        .publish("fab/lathe/state", "on", 1, true)
        .expect("publish retained");

    let mut sub = client
        .subscribe(&["fab/lathe/state"], 1)
        .expect("subscribe");
    let message = sub.recv_timeout(WAIT).expect("retained message");
    assert_eq!(message.topic, "fab/lathe/state");
    assert_eq!(message.payload_str(), "on");
    assert!(message.retained);
    assert_eq!(message.qos, 1);

    // A live message with an awkward binary payload arrives byte for byte, not retained.
    let payload = [0u8, b'\n', b'\t', 0xff, b'x'];
    client
        .publish("fab/lathe/state", payload, 0, false)
        .expect("publish live");
    let live = sub.recv_timeout(WAIT).expect("live message");
    assert_eq!(live.payload, payload);
    assert!(!live.retained);
}

#[test]
fn two_brokers_are_isolated() {
    let a = Mosquitto::start().expect("start broker a");
    let b = Mosquitto::start().expect("start broker b");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    a.client()
        .publish("fab/where", "a", 1, true)
        .expect("publish to a");
    b.client()
        .publish("fab/marker", "b", 1, true)
        .expect("publish to b");
    let mut sub = b
        .client()
        .subscribe(&["fab/where", "fab/marker"], 1)
        .expect("subscribe to b");
    let seen = sub
        .wait_for(WAIT, "the marker on broker b", |m| m.topic == "fab/marker")
        .expect("marker");
    assert_eq!(
        topics(&seen),
        ["fab/marker"],
        "broker b must not see broker a's retained message"
    );
}

// ---------------------------------------------------------------- persistence

#[test]
fn persistence_keeps_retained_messages_across_stop_and_start_again() {
    let mut broker = Mosquitto::builder()
        .persistence(true)
        .start()
        .expect("start mosquitto");
    let port = broker.port();
    broker
        .client()
        .publish("fab/saw/config", "blade=3mm", 1, true)
        .expect("publish retained");

    broker.stop().expect("clean stop");
    assert!(!broker.is_running());
    assert!(!port_accepts_connections(port));
    assert!(
        broker.persistence_db_path().is_file(),
        "mosquitto writes its DB on a clean exit"
    );

    broker.start_again().expect("start again");
    assert_eq!(broker.port(), port, "same port after start_again");
    let mut sub = broker
        .client()
        .subscribe(&["fab/saw/config"], 1)
        .expect("subscribe");
    let message = sub
        .recv_timeout(WAIT)
        .expect("retained message survived the restart");
    assert_eq!(message.payload_str(), "blade=3mm");
    assert!(message.retained);

    // restart() = stop + start_again.
    drop(sub);
    broker.restart().expect("restart");
    assert_eq!(broker.port(), port);
    assert!(broker.is_running());
}

#[test]
fn without_persistence_a_killed_broker_forgets_retained_messages() {
    let mut broker = Mosquitto::start().expect("start mosquitto");
    broker
        .client()
        .publish("fab/saw/config", "blade=3mm", 1, true)
        .expect("publish retained");
    let pid = broker.pid().expect("pid");
    broker.kill().expect("kill");
    assert!(!broker.is_running());
    assert!(broker.pid().is_none());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "killed broker was reaped"
    );

    broker.start_again().expect("start again");
    broker
        .client()
        .publish("fab/marker", "m", 1, true)
        .expect("publish marker");
    // Retained messages are sent per filter in SUBSCRIBE order: had the old one survived,
    // it would arrive before the marker.
    let mut sub = broker
        .client()
        .subscribe(&["fab/saw/config", "fab/marker"], 1)
        .expect("subscribe");
    let seen = sub
        .wait_for(WAIT, "the retained marker", |m| m.topic == "fab/marker")
        .expect("marker");
    assert_eq!(topics(&seen), ["fab/marker"]);
}

#[test]
fn start_again_retries_while_the_port_is_taken_then_reports_it() {
    let mut broker = Mosquitto::start().expect("start mosquitto");
    let port = broker.port();
    broker.stop().expect("stop");
    let squatter = TcpListener::bind(("127.0.0.1", port)).expect("take the broker's port");
    broker.set_startup_timeout(Duration::from_millis(300));
    let err = broker.start_again().expect_err("port is taken");
    let text = err.to_string();
    assert!(
        text.contains("still in use") && text.contains("Address already in use"),
        "{text}"
    );
    drop(squatter);
    broker.set_startup_timeout(WAIT);
    broker
        .start_again()
        .expect("start again once the port is free");
    assert_eq!(broker.port(), port);
}

#[test]
fn start_again_on_a_running_broker_is_refused() {
    let mut broker = Mosquitto::start().expect("start mosquitto");
    let err = broker.start_again().expect_err("already running");
    assert!(matches!(err, HarnessError::Usage(_)), "{err}");
    assert!(broker.is_running());
}

#[test]
fn startup_failure_includes_the_log_tail() {
    let err = Mosquitto::builder()
        .extra_config("definitely_not_an_option 1")
        .start()
        .expect_err("invalid config");
    let text = err.to_string();
    assert!(text.contains("mosquitto: exited during startup"), "{text}");
    assert!(
        text.contains("definitely_not_an_option"),
        "log tail should show mosquitto's complaint: {text}"
    );
}

// ---------------------------------------------------------------- authentication and ACL

fn secured_broker() -> Mosquitto {
    Mosquitto::builder()
        .user("admin", "admin-pw")
        .user("alice", "alice-pw")
        .acl("user admin\ntopic readwrite #\n\nuser alice\ntopic write fab/allowed/#\n")
        .start()
        .expect("start secured mosquitto")
}

#[test]
fn anonymous_and_wrong_password_clients_are_refused() {
    let broker = secured_broker();
    let config = std::fs::read_to_string(broker.config_path()).expect("read config");
    assert!(config.contains("allow_anonymous false"), "{config}");
    let hashed = std::fs::read_to_string(broker.password_file_path().expect("password file"))
        .expect("read passwd");
    assert!(
        hashed.starts_with("admin:$") && !hashed.contains("admin-pw"),
        "passwords are hashed: {hashed}"
    );

    let err = broker
        .client()
        .subscribe(&["fab/#"], 0)
        .expect_err("anonymous subscriber");
    assert!(err.to_string().contains("not authorised"), "{err}");
    let err = broker
        .client()
        .credentials("alice", "wrong")
        .subscribe(&["fab/#"], 0)
        .expect_err("wrong password");
    assert!(err.to_string().contains("not authorised"), "{err}");
    let err = broker
        .client()
        .publish("fab/allowed/x", "x", 1, false)
        .expect_err("anonymous publisher");
    assert!(err.to_string().contains("not authorised"), "{err}");
}

#[test]
fn acl_limits_where_a_user_may_publish() {
    let broker = secured_broker();
    let mut admin = broker
        .client()
        .credentials("admin", "admin-pw")
        .subscribe(&["fab/#"], 1)
        .expect("admin subscribes");
    let alice = broker
        .client()
        .credentials("alice", "alice-pw")
        .client_id("alice-pub");

    // QoS 1 publishes complete (PUBACK) before the next starts, and the admin's delivery
    // stream is ordered: a forbidden message that got through would arrive before the marker.
    alice
        .publish("fab/forbidden/x", "nope", 1, false)
        .expect("forbidden publish is acked and dropped");
    alice
        .publish("fab/allowed/marker", "ok", 1, false)
        .expect("allowed publish");
    let seen = admin
        .wait_for(WAIT, "alice's allowed marker", |m| {
            m.topic == "fab/allowed/marker"
        })
        .expect("marker");
    assert_eq!(
        topics(&seen),
        ["fab/allowed/marker"],
        "the forbidden publish must not be delivered"
    );
    assert_eq!(seen[0].payload_str(), "ok");
}

// ---------------------------------------------------------------- TLS

#[test]
fn tls_listener_with_client_certificates() {
    let certs = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::generate(certs.path(), "machine-01").expect("generate certificates");
    let broker = Mosquitto::builder()
        .tls(
            TlsListener::new(&pki.ca_cert, &pki.server_cert, &pki.server_key)
                .require_certificate(true),
        )
        .start()
        .expect("start mosquitto with TLS");
    let tls_port = broker.tls_port().expect("TLS port");
    assert_ne!(tls_port, broker.port());
    assert_eq!(
        broker.tls_url(),
        Some(format!("mqtts://127.0.0.1:{tls_port}"))
    );

    let client = broker
        .tls_client(&pki.ca_cert)
        .expect("TLS client")
        .client_certificate(&pki.client_cert, &pki.client_key);
    let mut sub = client.subscribe(&["fab/tls"], 1).expect("TLS subscribe");
    client
        .publish("fab/tls", "secret", 1, false)
        .expect("TLS publish");
    assert_eq!(
        sub.recv_timeout(WAIT).expect("TLS message").payload_str(),
        "secret"
    );

    // Without a client certificate the handshake fails.
    let no_cert = broker.tls_client(&pki.ca_cert).expect("TLS client");
    no_cert
        .publish("fab/tls", "x", 1, false)
        .expect_err("client certificate required");
    // The plain listener still works next to the TLS one.
    broker
        .client()
        .publish("fab/tls", "plain", 1, false)
        .expect("plain publish");
    assert_eq!(
        sub.recv_timeout(WAIT).expect("plain message").payload_str(),
        "plain"
    );
}

// ---------------------------------------------------------------- VictoriaMetrics

#[test]
fn victoria_metrics_exports_back_dated_line_protocol_and_survives_restart() {
    let mut vm = VictoriaMetrics::start().expect("start victoria-metrics");
    let port = vm.port();
    assert_eq!(vm.base_url(), format!("http://127.0.0.1:{port}"));
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let three_days_ns = 3 * 86_400 * 1_000_000_000u128;
    let t1 =
        i64::try_from(now_ns - three_days_ns).expect("fits i64") / 1_000_000 * 1_000_000 + 123_456; // sub-ms part
    let t2 = t1 + 60_000_000_000;
    vm.write_line_protocol(&format!(
        "fabmeter_usage,machine=lathe-01,site=berlin kwh=1.5 {t1}\nfabmeter_usage,machine=lathe-01,site=berlin kwh=2.25 {t2}\n"
    ));
    vm.force_flush();
    let expected = vec![ExportedSeries {
        metric: [
            ("__name__", "fabmeter_usage_kwh"),
            ("machine", "lathe-01"),
            ("site", "berlin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        values: vec![1.5, 2.25],
        timestamps: vec![t1 / 1_000_000, t2 / 1_000_000],
    }];
    let exported = vm.export(r#"{__name__=~"fabmeter_.*"}"#);
    assert_eq!(exported, expected);
    assert_eq!(exported[0].name(), "fabmeter_usage_kwh");
    assert_eq!(exported[0].label("machine"), Some("lathe-01"));

    vm.stop().expect("clean stop");
    assert!(!vm.is_running());
    vm.start_again().expect("start again");
    assert_eq!(vm.port(), port);
    assert_eq!(
        vm.export(r#"{__name__=~"fabmeter_.*"}"#),
        expected,
        "data survives stop + start_again"
    );
}

#[test]
fn victoria_metrics_names_series_measurement_underscore_field() {
    let vm = VictoriaMetrics::start().expect("start victoria-metrics");
    vm.write_line_protocol("power,machine=m1 watts=10,on=1i,value=7 1700000000000000000");
    vm.force_flush();
    let names: Vec<String> = vm
        .export(r#"{__name__=~"power.*"}"#)
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    assert_eq!(names, ["power_on", "power_value", "power_watts"]);
    assert!(
        vm.export("power_watts")[0].label("db").is_none(),
        "no db label on /api/v2/write"
    );
}

// ---------------------------------------------------------------- missing binaries

fn env_with(var: &'static str, value: &'static str) -> impl Fn(&str) -> Option<OsString> {
    move |name| (name == var).then(|| OsString::from(value))
}

#[test]
fn missing_binaries_name_the_apt_package() {
    for (tool, binary, package) in [
        (Tool::Mosquitto, "mosquitto", "mosquitto"),
        (Tool::MosquittoPasswd, "mosquitto_passwd", "mosquitto"),
        (Tool::MosquittoPub, "mosquitto_pub", "mosquitto-clients"),
        (Tool::MosquittoSub, "mosquitto_sub", "mosquitto-clients"),
        (
            Tool::VictoriaMetrics,
            "victoria-metrics",
            "victoria-metrics",
        ),
        (Tool::Openssl, "openssl", "openssl"),
    ] {
        let err = tool
            .locate_with(env_with(tool.env_var(), "/nonexistent/bin/tool"))
            .expect_err("bogus override");
        let text = err.to_string();
        assert!(text.starts_with(&format!("{binary} not found")), "{text}");
        assert!(
            text.contains(&format!("`apt-get install {package}`")),
            "{text}"
        );
        assert!(
            text.contains(tool.env_var()) && text.contains("/nonexistent/bin/tool"),
            "{text}"
        );
    }
    assert_eq!(Tool::Mosquitto.env_var(), "FABMETER_MOSQUITTO_BIN");
}

#[test]
fn mosquitto_is_found_in_usr_sbin_even_off_path() {
    let found = Tool::Mosquitto
        .locate_with(env_with("PATH", "/nonexistent"))
        .expect("found via fallback dirs");
    assert!(found.ends_with("mosquitto"), "{}", found.display());
}

#[test]
fn launchers_with_a_bogus_binary_fail_clearly() {
    let err = Mosquitto::builder()
        .binary("/nonexistent/mosquitto")
        .start()
        .expect_err("bogus mosquitto");
    let text = err.to_string();
    assert!(
        text.contains("mosquitto not found") && text.contains("apt-get install mosquitto`"),
        "{text}"
    );
    let err = VictoriaMetrics::builder()
        .binary("/nonexistent/vm")
        .start()
        .expect_err("bogus victoria-metrics");
    let text = err.to_string();
    assert!(
        text.contains("victoria-metrics not found")
            && text.contains("apt-get install victoria-metrics`"),
        "{text}"
    );
}

// ---------------------------------------------------------------- generic helpers

#[test]
#[should_panic(expected = "timed out after 50ms waiting for the impossible")]
fn wait_until_panics_naming_what_it_waited_for() {
    wait_until(Duration::from_millis(50), "the impossible", || false);
}

#[test]
fn poll_until_returns_the_value() {
    let mut calls = 0;
    let value = poll_until(WAIT, "the third call", || {
        calls += 1;
        (calls == 3).then_some(calls * 10)
    })
    .expect("value");
    assert_eq!(value, 30);
}

#[test]
fn wait_for_exit_sees_a_signalled_process_exit() {
    let mut child = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    let err = wait_for_exit(&mut child, Duration::from_millis(20)).expect_err("still running");
    assert!(matches!(err, HarnessError::Timeout { .. }), "{err}");
    send_signal(child.id(), Signal::Term).expect("SIGTERM");
    let status = wait_for_exit(&mut child, WAIT).expect("exited");
    assert!(!status.success());
}

#[test]
fn cli_client_requires_client_id_for_persistent_sessions() {
    let err = MqttCli::new("127.0.0.1", 1)
        .clean_session(false)
        .publish("t", "x", 1, false)
        .expect_err("no id");
    assert!(matches!(err, HarnessError::Usage(_)), "{err}");
}
