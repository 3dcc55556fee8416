//! Event signatures (docs/PROTOCOL.md "Signatures"): the document's signed example verifies with
//! the documented key and topic, and any change to a signed payload or its topic fails.

use fabmeter_protocol::codec::decode_core;
use fabmeter_protocol::fixtures::{self, Expect};
use fabmeter_protocol::message::Event;
use fabmeter_protocol::sig::{self, DeviceKey, SigError, SIG_OVERHEAD};
use fabmeter_protocol::{decode, Channel};
use proptest::prelude::*;

/// The topic and key of the document's test vector.
const TOPIC: &str = "fabmeter/v1/atelier-lyon/laser-1/event";

fn key() -> DeviceKey {
    DeviceKey::new(core::array::from_fn(|i| i as u8))
}

fn signed_examples() -> Vec<&'static str> {
    fixtures::all()
        .into_iter()
        .filter(|f| f.channel == Channel::Event && f.json.contains(r#","sig":""#))
        .map(|f| {
            assert_eq!(f.expect, Expect::Accept, "line {}", f.line);
            f.json
        })
        .collect()
}

#[test]
fn the_documented_test_vector_verifies_and_decodes_with_both_decoders() {
    let examples = signed_examples();
    assert!(
        !examples.is_empty(),
        "PROTOCOL.md has no signed event example"
    );
    for json in examples {
        assert_eq!(key().verify(TOPIC, json.as_bytes()), Ok(()), "{json}");
        // Re-signing the unsigned body gives the documented bytes back.
        let body = sig::split(json.as_bytes())
            .expect("split")
            .expect("signed")
            .body;
        let mut buf = [0u8; 1024];
        buf[..body.len()].copy_from_slice(body);
        buf[body.len()] = b'}';
        let n = key().sign(TOPIC, &mut buf, body.len() + 1).expect("sign");
        assert_eq!(n, body.len() + 1 + SIG_OVERHEAD);
        assert_eq!(&buf[..n], json.as_bytes());
        // A consumer that does not check signatures reads a signed event as it is.
        let a: Event = decode(json.as_bytes()).expect("decode");
        let b: Event = decode_core(json.as_bytes()).expect("decode_core");
        assert_eq!(a, b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any change of one byte of a signed event, or of its topic, fails verification (and
    /// never panics).
    #[test]
    fn any_mutation_fails_verification(at in 0usize..2000, flip in 1u8..=255, in_topic: bool) {
        let json = signed_examples()[0];
        let mut payload = json.as_bytes().to_vec();
        let mut topic = TOPIC.as_bytes().to_vec();
        let target = if in_topic { &mut topic } else { &mut payload };
        let i = at % target.len();
        target[i] ^= flip;
        let topic = String::from_utf8_lossy(&topic).into_owned();
        prop_assert!(key().verify(&topic, &payload).is_err());
    }

    /// Truncated or extended payloads fail too.
    #[test]
    fn truncations_and_extensions_fail(cut in 0usize..400, extra in proptest::collection::vec(any::<u8>(), 1..8)) {
        let json = signed_examples()[0].as_bytes();
        let cut = cut % json.len();
        prop_assert!(key().verify(TOPIC, &json[..cut]).is_err());
        let mut longer = json.to_vec();
        longer.extend_from_slice(&extra);
        prop_assert!(key().verify(TOPIC, &longer).is_err());
    }
}

#[test]
fn another_key_or_machine_topic_is_a_mismatch_and_unsigned_is_missing() {
    let json = signed_examples()[0].as_bytes();
    assert_eq!(
        DeviceKey::derive(&[0; 32], "laser-1").verify(TOPIC, json),
        Err(SigError::Mismatch)
    );
    assert_eq!(
        key().verify("fabmeter/v1/atelier-lyon/laser-2/event", json),
        Err(SigError::Mismatch)
    );
    let unsigned = fixtures::all()
        .into_iter()
        .find(|f| f.channel == Channel::Event && f.expect == Expect::Accept)
        .expect("an event example");
    assert_eq!(
        key().verify(TOPIC, unsigned.json.as_bytes()),
        Err(SigError::Missing)
    );
}
