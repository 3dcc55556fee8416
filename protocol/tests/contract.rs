//! The contract of docs/PROTOCOL.md, checked against the code: every example decodes (or is refused
//! with its documented reason) identically through both decoders, and re-encodes to itself.

use fabmeter_protocol::codec::{decode_core, decode_core_for, encode};
use fabmeter_protocol::fixtures::{self, Expect, Fixture};
use fabmeter_protocol::message::{
    DeviceConfig, Event, EventBody, MachineState, Presence, Status, Telemetry,
};
use fabmeter_protocol::{
    decode, decode_for, encode_to_vec, Channel, ConfigHash, DecodeError, EncodeError, Inbound,
    MAX_CONFIG_PAYLOAD, MAX_PAYLOAD,
};

fn encode_inbound_std(m: &Inbound) -> Vec<u8> {
    let r = match m {
        Inbound::Status(m) => encode_to_vec(m),
        Inbound::Event(m) => encode_to_vec(m),
        Inbound::Telemetry(m) => encode_to_vec(m),
        Inbound::Config(m) => encode_to_vec(m),
        Inbound::Command(m) => encode_to_vec(m),
        Inbound::Alert(m) => encode_to_vec(m),
        Inbound::Confirm(m) => encode_to_vec(m),
    };
    r.expect("a decoded message re-encodes")
}

fn encode_inbound_core(m: &Inbound) -> Vec<u8> {
    let mut buf = [0u8; MAX_CONFIG_PAYLOAD];
    let r = match m {
        Inbound::Status(m) => encode(m, &mut buf),
        Inbound::Event(m) => encode(m, &mut buf),
        Inbound::Telemetry(m) => encode(m, &mut buf),
        Inbound::Config(m) => encode(m, &mut buf),
        Inbound::Command(m) => encode(m, &mut buf),
        Inbound::Alert(m) => encode(m, &mut buf),
        Inbound::Confirm(m) => encode(m, &mut buf),
    };
    let n = r.expect("a decoded message re-encodes without allocation");
    buf[..n].to_vec()
}

fn accepted() -> Vec<Fixture> {
    fixtures::all()
        .into_iter()
        .filter(|f| f.expect == Expect::Accept)
        .collect()
}

#[test]
fn the_document_has_examples_of_every_channel_and_kind() {
    let all = fixtures::all();
    assert!(
        all.len() >= 30,
        "only {} fixtures found in PROTOCOL.md",
        all.len()
    );
    for channel in Channel::ALL {
        assert!(
            all.iter()
                .any(|f| f.channel == channel && f.expect == Expect::Accept),
            "PROTOCOL.md has no accepted example for channel {channel}"
        );
    }
    let kinds: Vec<&str> = accepted()
        .iter()
        .filter(|f| f.channel == Channel::Event)
        .map(|f| match decode::<Event>(f.json.as_bytes()) {
            Ok(e) => e.event.kind(),
            Err(e) => panic!("line {}: {e}", f.line),
        })
        .collect();
    for kind in EventBody::KINDS {
        assert!(
            kinds.contains(&kind),
            "PROTOCOL.md has no example of event kind {kind}"
        );
    }
}

#[test]
fn every_accepted_example_decodes_the_same_through_both_decoders_and_round_trips() {
    for f in accepted() {
        let std_msg = decode_for(f.channel, f.json.as_bytes())
            .unwrap_or_else(|e| panic!("PROTOCOL.md line {}: {e}\n{}", f.line, f.json));
        let core_msg = decode_core_for(f.channel, f.json.as_bytes())
            .unwrap_or_else(|e| panic!("PROTOCOL.md line {} (serde-json-core): {e}", f.line));
        assert_eq!(std_msg, core_msg, "line {}", f.line);

        let std_bytes = encode_inbound_std(&std_msg);
        let core_bytes = encode_inbound_core(&std_msg);
        assert_eq!(
            String::from_utf8_lossy(&std_bytes),
            String::from_utf8_lossy(&core_bytes),
            "line {}: both encoders write the same bytes",
            f.line
        );
        // The examples are written in canonical field order, so re-encoding gives them back
        // (without the signature of a signed example: see docs/PROTOCOL.md "Signatures").
        let unsigned = match fabmeter_protocol::sig::split(f.json.as_bytes()) {
            Ok(Some(s)) => format!("{}}}", String::from_utf8_lossy(s.body)),
            _ => f.json.to_owned(),
        };
        assert_eq!(
            String::from_utf8_lossy(&std_bytes),
            unsigned,
            "line {}",
            f.line
        );
        assert_eq!(decode_for(f.channel, &std_bytes).as_ref(), Ok(&std_msg));
    }
}

#[test]
fn every_rejected_example_is_refused_with_its_documented_reason() {
    let rejected: Vec<Fixture> = fixtures::all()
        .into_iter()
        .filter(|f| f.expect != Expect::Accept)
        .collect();
    assert!(rejected.len() >= 10);
    for f in rejected {
        let Expect::Reject(reason) = f.expect else {
            unreachable!()
        };
        for (decoder, result) in [
            ("serde_json", decode_for(f.channel, f.json.as_bytes())),
            (
                "serde-json-core",
                decode_core_for(f.channel, f.json.as_bytes()),
            ),
        ] {
            match result {
                Ok(m) => panic!("line {}: {decoder} accepted {m:?}", f.line),
                Err(e) => assert_eq!(e.reason(), reason, "line {} ({decoder}): {e}", f.line),
            }
        }
    }
}

#[test]
fn the_birth_example_carries_the_hash_of_the_config_example() {
    let all = accepted();
    let config = all
        .iter()
        .find(|f| f.channel == Channel::Config)
        .expect("a config example");
    let birth = all
        .iter()
        .find(|f| f.channel == Channel::Status)
        .expect("a birth example");
    let status: Status = decode(birth.json.as_bytes()).expect("valid birth");
    assert_eq!(status.status, Presence::Online);
    assert_eq!(
        status.config_hash,
        Some(ConfigHash::of(config.json.as_bytes()))
    );
}

fn field_error(e: DecodeError) -> String {
    match &e {
        DecodeError::Field { .. } => e.to_string(),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn errors_name_the_field_and_the_problem() {
    // Missing field.
    let e = field_error(
        decode::<Event>(br#"{"v":1,"boot":1,"seq":1,"sent_uptime_ms":5,"event":{"state":{"from":"off","to":"idle"}}}"#)
            .unwrap_err(),
    );
    assert!(e.contains("missing field `uptime_ms`"), "{e}");

    // Wrong type, nested: the path is named.
    let e = field_error(
        decode::<Event>(br#"{"v":1,"boot":1,"seq":3,"uptime_ms":1,"sent_uptime_ms":5,"event":{"session_progress":{"session":2,"busy_s":"45","idle_s":0,"energy_wh":0}}}"#)
            .unwrap_err(),
    );
    assert!(e.contains("event.session_progress.busy_s"), "{e}");
    assert!(e.contains("invalid type: string"), "{e}");

    // Unknown enumeration value names the value and what is expected.
    let e = field_error(
        decode::<Event>(br#"{"v":1,"boot":1,"seq":1,"uptime_ms":1,"sent_uptime_ms":5,"event":{"state":{"from":"off","to":"working"}}}"#)
            .unwrap_err(),
    );
    assert!(
        e.contains("event.state.to") && e.contains("unknown variant `working`"),
        "{e}"
    );

    // A rule: the field and the rule are named, with how to fix it.
    let e = decode::<Event>(
        br#"{"v":1,"boot":0,"seq":1,"uptime_ms":1,"sent_uptime_ms":5,"event":{"state":{"from":"off","to":"idle"}}}"#,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "invalid");
    assert!(e.to_string().contains("`boot` must be at least 1"), "{e}");

    // Bad identifier in a badge hash.
    let e = field_error(
        decode::<Event>(br#"{"v":1,"boot":1,"seq":2,"uptime_ms":1,"sent_uptime_ms":5,"event":{"access_denied":{"badge":"zz","reason":"not_allowed"}}}"#)
            .unwrap_err(),
    );
    assert!(
        e.contains("event.access_denied.badge") && e.contains("badge hash has 2 characters"),
        "{e}"
    );
}

#[test]
fn versions_are_checked_before_anything_else() {
    // A v2 message whose shape is unknown: the version error wins over the shape error.
    for payload in [
        &br#"{"v":2,"totally":"different"}"#[..],
        br#"{"v":7}"#,
        br#"{"v":2,"boot":1,"seq":1,"uptime_ms":1,"sent_uptime_ms":5,"event":{"state":{"from":"off","to":"idle"}}}"#,
    ] {
        assert!(matches!(decode::<Event>(payload), Err(DecodeError::UnsupportedVersion { .. })));
        assert!(matches!(decode_core::<Event>(payload), Err(DecodeError::UnsupportedVersion { .. })));
    }
    assert_eq!(
        decode::<Event>(br#"{"seq":1}"#),
        Err(DecodeError::MissingVersion)
    );
    assert_eq!(
        decode_core::<Event>(br#"{"seq":1}"#),
        Err(DecodeError::MissingVersion)
    );
    let e = decode::<Event>(br#"{"v":2}"#).unwrap_err().to_string();
    assert!(e.contains("schema version 2 is not supported"), "{e}");
}

#[test]
fn size_limits_are_checked_before_parsing() {
    // Garbage that would be a syntax error: the size wins, so nothing was parsed.
    let big = vec![b'{'; MAX_PAYLOAD + 1];
    for channel in [
        Channel::Status,
        Channel::Event,
        Channel::Telemetry,
        Channel::Cmd,
        Channel::Alert,
        Channel::Ack,
    ] {
        assert_eq!(
            decode_for(channel, &big),
            Err(DecodeError::TooLarge {
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
    }
    // Config has its own limit.
    assert!(matches!(
        decode_for(Channel::Config, &big),
        Err(DecodeError::Syntax { .. })
    ));
    let bigger = vec![b' '; MAX_CONFIG_PAYLOAD + 1];
    assert_eq!(
        decode_core_for(Channel::Config, &bigger),
        Err(DecodeError::TooLarge {
            len: MAX_CONFIG_PAYLOAD + 1,
            max: MAX_CONFIG_PAYLOAD
        })
    );
    // A valid event padded with whitespace to exactly the limit is accepted.
    let ev = br#"{"v":1,"boot":1,"seq":1,"uptime_ms":1,"sent_uptime_ms":5,"event":{"state":{"from":"off","to":"idle"}}}"#;
    let mut padded = ev.to_vec();
    padded.resize(MAX_PAYLOAD, b' ');
    assert!(decode::<Event>(&padded).is_ok());
    assert!(decode_core::<Event>(&padded).is_ok());
    assert_eq!(decode::<Event>(b""), Err(DecodeError::Empty));
}

#[test]
fn unknown_fields_are_ignored_and_escapes_are_decoded() {
    let p = br#"{"v":1,"boot":1,"seq":1,"uptime_ms":1,"sent_uptime_ms":5,"future":{"x":[1,2]},"event":{"fault":{"code":"sensor","detail":"clamp \"A\" \u00e9cart\n"}}}"#;
    let a: Event = decode(p).expect("serde_json");
    let b: Event = decode_core(p).expect("serde-json-core");
    assert_eq!(a, b);
    match a.event {
        EventBody::Fault { detail, .. } => assert_eq!(detail.as_str(), "clamp \"A\" écart\n"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn both_decoders_agree_on_every_truncation_and_byte_flip_of_every_example() {
    let mut checked = 0;
    for f in fixtures::all() {
        let bytes = f.json.as_bytes();
        let mut variants: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
        for i in 0..bytes.len() {
            for flip in [b'"', b'1', b'}', b'-', b'x'] {
                let mut v = bytes.to_vec();
                v[i] = flip;
                variants.push(v);
            }
        }
        for v in variants {
            let a = decode_for(f.channel, &v);
            let b = decode_core_for(f.channel, &v);
            match (&a, &b) {
                (Ok(x), Ok(y)) => assert_eq!(x, y, "{}", String::from_utf8_lossy(&v)),
                (Err(_), Err(_)) => {}
                _ => panic!(
                    "decoders disagree on {}:\n serde_json: {a:?}\n serde-json-core: {b:?}",
                    String::from_utf8_lossy(&v)
                ),
            }
            checked += 1;
        }
    }
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn encoding_refuses_what_decoding_would_refuse() {
    let t = Telemetry {
        v: 1,
        boot: 1,
        uptime_ms: 1,
        ts: None,
        state: MachineState::Busy,
        current_ma: Some(10_000_001),
        power_w: None,
    };
    let mut buf = [0u8; 256];
    assert!(
        matches!(encode(&t, &mut buf), Err(EncodeError::Invalid(i)) if i.field == "current_ma")
    );
    assert!(matches!(encode_to_vec(&t), Err(EncodeError::Invalid(_))));
    let t = Telemetry {
        current_ma: None,
        power_w: Some(u32::MAX),
        ..t
    };
    assert!(matches!(encode_to_vec(&t), Err(EncodeError::Invalid(i)) if i.field == "power_w"));
    // A buffer too small is reported, not truncated.
    let t = Telemetry {
        current_ma: Some(1500),
        power_w: None,
        ..t
    };
    assert_eq!(encode(&t, &mut buf[..10]), Err(EncodeError::BufferFull));
}

#[test]
fn telemetry_quantities_are_bounded_integers() {
    let sample =
        |fields: &str| format!(r#"{{"v":1,"boot":1,"uptime_ms":1,"state":"busy"{fields}}}"#);
    // The largest values are accepted and come back as the same integers through both decoders.
    let top = sample(r#","current_ma":10000000,"power_w":10000000"#);
    for t in [
        decode::<Telemetry>(top.as_bytes()),
        decode_core::<Telemetry>(top.as_bytes()),
    ] {
        let t = t.expect("the bounds are inclusive");
        assert_eq!(
            (t.current_ma, t.power_w),
            (Some(10_000_000), Some(10_000_000))
        );
    }
    let zero = sample(r#","current_ma":0,"power_w":0"#);
    assert_eq!(
        decode::<Telemetry>(zero.as_bytes()).map(|t| (t.current_ma, t.power_w)),
        Ok((Some(0), Some(0)))
    );
    // One above the bound: a broken sensor or a unit error (watts sent as milliwatts).
    for (fields, field) in [
        (r#","current_ma":10000001"#, "current_ma"),
        (r#","power_w":10000001"#, "power_w"),
    ] {
        let p = sample(fields);
        assert!(
            matches!(decode::<Telemetry>(p.as_bytes()), Err(DecodeError::Invalid(i)) if i.field == field),
            "{p}"
        );
        assert!(
            matches!(decode_core::<Telemetry>(p.as_bytes()), Err(DecodeError::Invalid(i)) if i.field == field),
            "{p}"
        );
    }
    // Not integers, negative, or beyond u32: refused as a field of the wrong type, by both.
    for fields in [
        r#","current_ma":4.75"#,
        r#","current_ma":4750.0"#,
        r#","current_ma":475e1"#,
        r#","current_ma":-1"#,
        r#","power_w":4294967296"#,
        r#","power_w":1092.5"#,
        r#","power_w":"1093""#,
    ] {
        let p = sample(fields);
        let a = decode::<Telemetry>(p.as_bytes());
        assert!(matches!(a, Err(DecodeError::Field { .. })), "{p}: {a:?}");
        let b = decode_core::<Telemetry>(p.as_bytes());
        assert!(matches!(b, Err(DecodeError::Field { .. })), "{p}: {b:?}");
    }
    // The old field in amperes is unknown now, so ignored like any unknown field.
    let old = sample(r#","current_a":4.75"#);
    assert_eq!(
        decode::<Telemetry>(old.as_bytes()).map(|t| t.current_ma),
        Ok(None)
    );
}

#[test]
fn config_rules() {
    let base = r#"{"v":1,"sensing":{"current":{"idle_ma":300,"busy_ma":2000,"hysteresis_ma":150,"dwell_ms":3000,"window_ms":200,"ma_per_v":30000,"mains_v":230}},"allow":[]}"#;
    let c: DeviceConfig = decode(base.as_bytes()).expect("valid");
    assert_eq!(
        (
            c.progress_s,
            c.idle_timeout_s,
            c.max_session_s,
            c.telemetry_s
        ),
        (60, 900, 43200, 0)
    );
    for (from, to, field) in [
        // Not below busy_ma - idle_ma.
        (
            "\"hysteresis_ma\":150",
            "\"hysteresis_ma\":1700",
            "sensing.current.hysteresis_ma",
        ),
        // Not below idle_ma: the meter could never fall back to off.
        (
            "\"hysteresis_ma\":150",
            "\"hysteresis_ma\":300",
            "sensing.current.hysteresis_ma",
        ),
        (
            "\"idle_ma\":300",
            "\"idle_ma\":0",
            "sensing.current.idle_ma",
        ),
        // Equal is not above.
        (
            "\"busy_ma\":2000",
            "\"busy_ma\":300",
            "sensing.current.busy_ma",
        ),
        (
            "\"busy_ma\":2000",
            "\"busy_ma\":10000001",
            "sensing.current.busy_ma",
        ),
        (
            "\"idle_ma\":300,\"busy_ma\":2000",
            "\"idle_ma\":10000001,\"busy_ma\":10000002",
            "sensing.current.idle_ma",
        ),
        (
            "\"ma_per_v\":30000",
            "\"ma_per_v\":0",
            "sensing.current.ma_per_v",
        ),
        (
            "\"ma_per_v\":30000",
            "\"ma_per_v\":10000001",
            "sensing.current.ma_per_v",
        ),
        (
            "\"mains_v\":230",
            "\"mains_v\":1001",
            "sensing.current.mains_v",
        ),
        (
            "\"window_ms\":200",
            "\"window_ms\":5",
            "sensing.current.window_ms",
        ),
        (
            "\"dwell_ms\":3000",
            "\"dwell_ms\":600001",
            "sensing.current.dwell_ms",
        ),
        (
            "\"mains_v\":230",
            "\"mains_v\":0",
            "sensing.current.mains_v",
        ),
        (
            "\"allow\":[]",
            "\"allow\":[],\"progress_s\":0",
            "progress_s",
        ),
        (
            "\"allow\":[]",
            "\"allow\":[\"ba279e0c1e5c2464\",\"ba279e0c1e5c2464\"]",
            "allow",
        ),
    ] {
        let p = base.replace(from, to);
        match decode::<DeviceConfig>(p.as_bytes()) {
            Err(DecodeError::Invalid(i)) => assert_eq!(i.field, field, "{p}"),
            other => panic!("{p}: {other:?}"),
        }
        assert!(decode_core::<DeviceConfig>(p.as_bytes()).is_err());
    }
    // The edges of every bound are accepted, as the same integers through both decoders.
    let edges = [
        r#"{"idle_ma":1,"busy_ma":10000000,"hysteresis_ma":0,"dwell_ms":600000,"window_ms":20,"ma_per_v":1,"mains_v":1}"#,
        r#"{"idle_ma":9999998,"busy_ma":10000000,"hysteresis_ma":1,"dwell_ms":0,"window_ms":10000,"ma_per_v":10000000,"mains_v":1000}"#,
    ];
    for current in edges {
        let p = format!(r#"{{"v":1,"sensing":{{"current":{current}}},"allow":[]}}"#);
        let a = decode::<DeviceConfig>(p.as_bytes()).expect(&p);
        assert_eq!(
            decode_core::<DeviceConfig>(p.as_bytes()).as_ref(),
            Ok(&a),
            "{p}"
        );
        let again = encode_to_vec(&a).expect("re-encodes");
        assert_eq!(decode::<DeviceConfig>(&again), Ok(a), "{p}");
    }
    // Fractions, exponents, negatives, u32 overflow and the old fields in amperes: wrong type or
    // missing field, refused by both decoders before any rule is checked.
    for (from, to) in [
        ("\"idle_ma\":300", "\"idle_ma\":0.3"),
        ("\"idle_ma\":300", "\"idle_ma\":300.0"),
        ("\"idle_ma\":300", "\"idle_ma\":3e2"),
        ("\"busy_ma\":2000", "\"busy_ma\":-2000"),
        ("\"ma_per_v\":30000", "\"ma_per_v\":4294967296"),
        ("\"mains_v\":230", "\"mains_v\":230.0"),
        ("\"idle_ma\":300", "\"idle_a\":0.3"),
    ] {
        let p = base.replace(from, to);
        let a = decode::<DeviceConfig>(p.as_bytes());
        assert!(matches!(a, Err(DecodeError::Field { .. })), "{p}: {a:?}");
        let b = decode_core::<DeviceConfig>(p.as_bytes());
        assert!(matches!(b, Err(DecodeError::Field { .. })), "{p}: {b:?}");
    }
    // 128 badges fit the config limit; 129 do not fit the type.
    let list = |n: usize| {
        (0..n)
            .map(|i| format!("\"{i:016x}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    let full = base.replace("\"allow\":[]", &format!("\"allow\":[{}]", list(128)));
    assert!(full.len() <= MAX_CONFIG_PAYLOAD, "{}", full.len());
    assert_eq!(
        decode::<DeviceConfig>(full.as_bytes()).map(|c| c.allow.len()),
        Ok(128)
    );
    assert_eq!(
        decode_core::<DeviceConfig>(full.as_bytes()).map(|c| c.allow.len()),
        Ok(128)
    );
    let over = base.replace("\"allow\":[]", &format!("\"allow\":[{}]", list(129)));
    assert!(decode::<DeviceConfig>(over.as_bytes()).is_err());
}

/// Inputs the fuzz target `decode` found where the two decoders disagreed, kept as regressions.
#[test]
fn fuzz_regressions_decoders_agree() {
    let cases: [(Channel, &[u8]); 4] = [
        // Garbage after a number in a field serde-json-core skips: it skipped the garbage too.
        (
            Channel::Status,
            b"{\"v\":1,\"status\":\"online\",\"boot\":12,\"uptimm_ms\":5210\xff\xff,\"fw\":\"0.1.0\",\"caps\":[\"badge\"]}",
        ),
        // A NUL inside a key: serde-json-core 0.7 accepted raw control characters in strings.
        (
            Channel::Status,
            b"{\"v\":1,\"status\":\"online\",\"boot\":12,\"uW\0\0\0\0\0\0\0ptime_ms\":5210,\"fw\":\"0.1.0\",\"caps\":[\"badge\"]}",
        ),
        // A leading zero: serde-json-core 0.7 parsed 013 as 13.
        (
            Channel::Telemetry,
            br#"{"v":1,"boot":12,"uptime_ms":121500,"state":"busy","current_ma":013}"#,
        ),
        // A raw tab in a value.
        (
            Channel::Event,
            b"{\"v\":1,\"boot\":1,\"seq\":1,\"uptime_ms\":1,\"sent_uptime_ms\":5,\"event\":{\"fault\":{\"code\":\"sensor\",\"detail\":\"a\tb\"}}}",
        ),
    ];
    for (channel, payload) in cases {
        let a = decode_for(channel, payload);
        let b = decode_core_for(channel, payload);
        assert!(matches!(a, Err(DecodeError::Syntax { .. })), "{a:?}");
        assert!(matches!(b, Err(DecodeError::Syntax { .. })), "{b:?}");
    }
}

#[test]
fn confirmations_round_trip_and_refuse_bad_runs() {
    use fabmeter_protocol::message::Confirm;
    let c = Confirm {
        v: 1,
        boot: 7,
        from: 3,
        to: 3,
    };
    let bytes = encode_to_vec(&c).expect("a confirmation encodes");
    assert_eq!(bytes, br#"{"v":1,"boot":7,"from":3,"to":3}"#);
    assert_eq!(decode::<Confirm>(&bytes), Ok(c));
    assert_eq!(decode_core::<Confirm>(&bytes), Ok(c));
    assert_eq!(decode_for(Channel::Ack, &bytes), Ok(Inbound::Confirm(c)));
    for (bad, field) in [
        (r#"{"v":1,"boot":0,"from":1,"to":2}"#, "boot"),
        (r#"{"v":1,"boot":1,"from":0,"to":2}"#, "from"),
        (r#"{"v":1,"boot":1,"from":3,"to":2}"#, "to"),
    ] {
        match decode::<Confirm>(bad.as_bytes()) {
            Err(e @ DecodeError::Invalid(_)) => {
                assert!(e.to_string().contains(field), "{bad}: {e}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let mut buf = [0u8; 64];
    assert!(matches!(
        encode(&Confirm { to: 2, ..c }, &mut buf),
        Err(EncodeError::Invalid(_))
    ));
}
