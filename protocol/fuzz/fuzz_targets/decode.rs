//! Decoder fuzz target. Input: one byte choosing the channel, then the payload.
//!
//! Checks, for any input: neither decoder panics; the `serde_json` decoder and the device's
//! `serde-json-core` decoder agree on accepting or refusing, and on the value; an accepted message
//! re-encodes with both encoders, and each encoding decodes back to the same value; signature
//! checking never panics, and an accepted unsigned event signed (docs/PROTOCOL.md "Signatures")
//! verifies and decodes to the same value.
#![no_main]

use fabmeter_protocol::codec::{decode_core_for, Inbound};
use fabmeter_protocol::sig::{self, DeviceKey};
use fabmeter_protocol::{decode_for, encode, encode_to_vec, Channel, MAX_CONFIG_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fn reencode(m: &Inbound) -> (Vec<u8>, Vec<u8>) {
    let mut buf = [0u8; MAX_CONFIG_PAYLOAD + 64];
    macro_rules! both {
        ($m:expr) => {{
            let v = encode_to_vec($m).expect("an accepted message re-encodes");
            let n = encode($m, &mut buf).expect("an accepted message re-encodes without allocation");
            (v, buf[..n].to_vec())
        }};
    }
    match m {
        Inbound::Status(m) => both!(m),
        Inbound::Event(m) => both!(m),
        Inbound::Telemetry(m) => both!(m),
        Inbound::Config(m) => both!(m),
        Inbound::Command(m) => both!(m),
        Inbound::Alert(m) => both!(m),
        Inbound::Confirm(m) => both!(m),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let channel = Channel::ALL[usize::from(selector) % Channel::ALL.len()];
    let a = decode_for(channel, payload);
    let b = decode_core_for(channel, payload);
    match (&a, &b) {
        (Ok(x), Ok(y)) => {
            assert_eq!(x, y, "decoders disagree on the value");
            // The two encoders need not spell a message byte for byte alike: each encoding must
            // decode back to the same message.
            let (v, c) = reencode(x);
            assert_eq!(decode_for(channel, &v).as_ref(), Ok(x), "round trip (serde_json)");
            assert_eq!(decode_for(channel, &c).as_ref(), Ok(x), "round trip (serde-json-core)");
        }
        (Err(_), Err(_)) => {}
        _ => panic!("decoders disagree: serde_json {a:?} vs serde-json-core {b:?}"),
    }
    let key = DeviceKey::new([7; 32]);
    let topic = "fabmeter/v1/site/machine/event";
    let verdict = key.verify(topic, payload);
    if let (Ok(Inbound::Event(x)), Ok(None)) = (&a, sig::split(payload)) {
        assert!(verdict.is_err(), "an unsigned payload cannot verify");
        let mut buf = [0u8; MAX_CONFIG_PAYLOAD + 64];
        buf[..payload.len()].copy_from_slice(payload);
        if let Ok(n) = key.sign(topic, &mut buf, payload.len()) {
            assert_eq!(key.verify(topic, &buf[..n]), Ok(()), "a signed event verifies");
            if n <= fabmeter_protocol::MAX_PAYLOAD {
                assert_eq!(
                    decode_for(channel, &buf[..n]),
                    Ok(Inbound::Event(x.clone())),
                    "the signature changes nothing else"
                );
            }
        }
    }
});
