//! Per-device signatures on events (docs/PROTOCOL.md "Signatures").
//!
//! A broker account proves which MQTT client published, not which machine an event speaks for:
//! whoever holds a leaked account could publish on another machine's topic. A device provisioned
//! with a [`DeviceKey`] appends a last member `"sig":"<32 lowercase hex>"` to each payload it signs,
//! where the signature is the first 16 bytes of
//!
//! ```text
//! HMAC-SHA256(device_key, topic + "\n" + payload bytes before `,"sig":`)
//! ```
//!
//! It covers the topic (a signature cannot be moved to another machine's topic) and every byte of
//! the payload, `sent_uptime_ms` included (a device re-signs each resend). The member is plain JSON,
//! so a consumer that does not check signatures decodes a signed payload as it is (unknown members
//! are ignored). Verification is on bytes, before nothing else: the member must be the last one,
//! written exactly `,"sig":"<32 hex>"}` with no spaces, and the only top-level `sig`.

use core::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::codec::strict_json_watching;
use crate::hash::{hex_string, parse_hex, HexError};
use crate::topic::{Channel, Topic, TopicBuf};
use crate::Id;

/// Length of a device key, in bytes.
pub const DEVICE_KEY_LEN: usize = 32;

/// Length of a signature, in bytes (32 hex digits on the wire).
pub const SIG_LEN: usize = 16;

/// What the device writes before the signature's hex digits.
const SIG_PREFIX: &[u8] = b",\"sig\":\"";

/// Bytes signing adds to a payload: `,"sig":"` + 32 hex digits + `"` (the closing `}` stays).
pub const SIG_OVERHEAD: usize = SIG_PREFIX.len() + 2 * SIG_LEN + 1;

/// A per-device secret that signs its events. Its `Debug` does not show it, so it stays out of logs.
#[derive(Clone)]
pub struct DeviceKey([u8; DEVICE_KEY_LEN]);

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKey(redacted)")
    }
}

/// Why a payload could not be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignError {
    /// The payload is not a non-empty JSON object ending in `}`.
    NotAnObject,
    /// The signed payload would not fit the buffer.
    BufferFull,
}

/// Why a payload's signature was refused. `Display` names the problem and the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigError {
    /// The payload carries no `sig` member.
    Missing,
    /// The payload has a `sig` member, but not as the exact last member `,"sig":"<32 hex>"}`, or
    /// it is not a JSON object.
    Malformed,
    /// The payload has more than one top-level `sig` member.
    Duplicate,
    /// The signature does not match the topic, the payload and the key.
    Mismatch,
}

impl SigError {
    /// The problem in a few words, for logs and dead letters.
    pub const fn problem(&self) -> &'static str {
        match self {
            SigError::Missing => "unsigned event where signatures are required: provision the device's key (`fabmeter-collector provision device`) and set it on the device",
            SigError::Malformed => "the `sig` member must be the last member, written exactly ,\"sig\":\"<32 lowercase hex digits>\"}",
            SigError::Duplicate => "more than one `sig` member",
            SigError::Mismatch => "wrong signature: the payload or the topic was changed, or the device's key is not the one the collector holds for this machine (re-provision the device)",
        }
    }
}

impl fmt::Display for SigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.problem())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SigError {}

/// A payload split at its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed<'a> {
    /// The bytes the signature covers (everything before `,"sig":`).
    pub body: &'a [u8],
    /// The signature.
    pub sig: [u8; SIG_LEN],
}

/// Finds the signature of a payload: `Ok(None)` when it has no top-level `sig` member, an error
/// when it has one that is not the exact last member or has several.
pub fn split(payload: &[u8]) -> Result<Option<Signed<'_>>, SigError> {
    let count = strict_json_watching(payload, b"sig").map_err(|_| SigError::Malformed)?;
    match count {
        0 => return Ok(None),
        1 => {}
        _ => return Err(SigError::Duplicate),
    }
    let tail = SIG_PREFIX.len() + 2 * SIG_LEN + 2;
    let at = payload.len().checked_sub(tail).ok_or(SigError::Malformed)?;
    let (body, member) = payload.split_at(at);
    let hex = member
        .strip_prefix(SIG_PREFIX)
        .and_then(|m| m.strip_suffix(b"\"}"))
        .ok_or(SigError::Malformed)?;
    let hex = core::str::from_utf8(hex).map_err(|_| SigError::Malformed)?;
    let sig = parse_hex::<SIG_LEN>(hex).map_err(|_| SigError::Malformed)?;
    Ok(Some(Signed { body, sig }))
}

impl DeviceKey {
    /// Wraps 32 secret bytes.
    pub const fn new(bytes: [u8; DEVICE_KEY_LEN]) -> Self {
        DeviceKey(bytes)
    }

    /// Parses a key written as 64 lowercase hex digits (the form of key files).
    pub fn from_hex(s: &str) -> Result<Self, HexError> {
        parse_hex(s).map(DeviceKey)
    }

    /// The key as 64 lowercase hex digits, to write into a key file.
    pub fn to_hex(&self) -> heapless::String<{ 2 * DEVICE_KEY_LEN }> {
        hex_string(&self.0)
    }

    /// The key of `machine` derived from a site-wide secret: `HMAC-SHA256(secret, machine id)`.
    /// For simulators and demos, where one secret is easier to hand around than a key per machine.
    pub fn derive(secret: &[u8; DEVICE_KEY_LEN], machine: &str) -> Self {
        DeviceKey(
            Self::mac(secret)
                .chain_update(machine.as_bytes())
                .finalize()
                .into_bytes()
                .into(),
        )
    }

    fn mac(key: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        match <Hmac<Sha256> as Mac>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC-SHA256 accepts keys of any length"),
        }
    }

    fn keyed(&self, topic: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Self::mac(&self.0);
        mac.update(topic.as_bytes());
        mac.update(b"\n");
        mac.update(body);
        mac
    }

    /// The signature of `body` (the payload bytes before `,"sig":`) published on `topic`.
    pub fn signature(&self, topic: &str, body: &[u8]) -> [u8; SIG_LEN] {
        let tag = self.keyed(topic, body).finalize().into_bytes();
        let mut out = [0u8; SIG_LEN];
        out.copy_from_slice(&tag[..SIG_LEN]);
        out
    }

    /// Signs the unsigned JSON object `buf[..len]` in place for `topic`: replaces its final `}` by
    /// `,"sig":"<32 hex>"}`. Returns the new length (`len + SIG_OVERHEAD`).
    pub fn sign(&self, topic: &str, buf: &mut [u8], len: usize) -> Result<usize, SignError> {
        let payload = buf.get(..len).ok_or(SignError::BufferFull)?;
        if len < 3 || payload[0] != b'{' || payload[len - 1] != b'}' {
            return Err(SignError::NotAnObject);
        }
        let body_len = len - 1;
        let out_len = len + SIG_OVERHEAD;
        if buf.len() < out_len {
            return Err(SignError::BufferFull);
        }
        let sig = self.signature(topic, &buf[..body_len]);
        let hex: heapless::String<{ 2 * SIG_LEN }> = hex_string(&sig);
        let mut at = body_len;
        for part in [SIG_PREFIX, hex.as_bytes(), b"\"}"] {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Ok(out_len)
    }

    /// Checks the signature of `payload` received on `topic`, in constant time.
    pub fn verify(&self, topic: &str, payload: &[u8]) -> Result<(), SigError> {
        let signed = split(payload)?.ok_or(SigError::Missing)?;
        self.keyed(topic, signed.body)
            .verify_truncated_left(&signed.sig)
            .map_err(|_| SigError::Mismatch)
    }
}

/// A device key with the event topic it signs for: what a device holds to sign its events.
#[derive(Debug, Clone)]
pub struct EventSigner {
    key: DeviceKey,
    topic: TopicBuf,
}

impl EventSigner {
    /// Signs events of `machine` at `site` (topic `fabmeter/v1/{site}/{machine}/event`).
    pub fn new(key: DeviceKey, site: &Id, machine: &Id) -> Self {
        EventSigner {
            key,
            topic: Topic::new(site.clone(), machine.clone(), Channel::Event).to_string_buf(),
        }
    }

    /// The topic it signs for.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// [`DeviceKey::sign`] for this signer's topic.
    pub fn sign(&self, buf: &mut [u8], len: usize) -> Result<usize, SignError> {
        self.key.sign(&self.topic, buf, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "fabmeter/v1/atelier-lyon/laser-1/event";
    const EV: &[u8] = br#"{"v":1,"boot":12,"seq":1,"uptime_ms":5230,"sent_uptime_ms":5231,"event":{"state":{"from":"off","to":"idle"}}}"#;

    fn key() -> DeviceKey {
        DeviceKey::new(core::array::from_fn(|i| i as u8))
    }

    fn signed(k: &DeviceKey, topic: &str, payload: &[u8]) -> std::vec::Vec<u8> {
        let mut buf = [0u8; 1100];
        buf[..payload.len()].copy_from_slice(payload);
        let n = k.sign(topic, &mut buf, payload.len()).expect("sign");
        buf[..n].to_vec()
    }

    #[test]
    fn signature_matches_an_independent_hmac() {
        // python3 -c "import hmac,hashlib;t=b'fabmeter/v1/atelier-lyon/laser-1/event';
        //   p=b'{\"v\":1,...}}';print(hmac.new(bytes(range(32)),t+b'\n'+p[:-1],hashlib.sha256).hexdigest()[:32])"
        let s = signed(&key(), TOPIC, EV);
        assert_eq!(s.len(), EV.len() + SIG_OVERHEAD);
        assert_eq!(
            core::str::from_utf8(&s).expect("utf8"),
            r#"{"v":1,"boot":12,"seq":1,"uptime_ms":5230,"sent_uptime_ms":5231,"event":{"state":{"from":"off","to":"idle"}},"sig":"17c53c5c08448b0349ff37a58fff66d3"}"#
        );
        assert_eq!(key().verify(TOPIC, &s), Ok(()));
    }

    #[test]
    fn verification_refuses_what_it_must() {
        let k = key();
        let s = signed(&k, TOPIC, EV);
        assert_eq!(k.verify(TOPIC, EV), Err(SigError::Missing));
        assert_eq!(
            k.verify("fabmeter/v1/atelier-lyon/laser-2/event", &s),
            Err(SigError::Mismatch)
        );
        assert_eq!(
            DeviceKey::new([9; 32]).verify(TOPIC, &s),
            Err(SigError::Mismatch)
        );
        // Not the last member, spaces, upper case, short: malformed.
        let text = core::str::from_utf8(&s).expect("utf8");
        let sig = &text[text.len() - 34..text.len() - 2];
        for bad in [
            format!(r#"{{"v":1,"sig":"{sig}","boot":12}}"#),
            text.replace(r#","sig":""#, r#", "sig": ""#),
            text.replace(sig, &sig.to_uppercase()),
            text.replace(sig, &sig[..30]),
            format!("{text} "),
        ] {
            assert_eq!(
                k.verify(TOPIC, bad.as_bytes()),
                Err(SigError::Malformed),
                "{bad}"
            );
        }
        // Twice: refused even though the last one is right.
        let twice = text.replacen(r#"{"v":1,"#, &format!(r#"{{"v":1,"sig":"{sig}","#), 1);
        assert_eq!(k.verify(TOPIC, twice.as_bytes()), Err(SigError::Duplicate));
        // A nested or quoted "sig" is not a member of the top-level object.
        let nested = signed(&k, TOPIC, br#"{"v":1,"x":{"sig":"a"},"d":"\"sig\":"}"#);
        assert_eq!(k.verify(TOPIC, &nested), Ok(()));
    }

    #[test]
    fn sign_refuses_what_is_not_an_object_or_does_not_fit() {
        let k = key();
        let mut buf = *b"{}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        assert_eq!(k.sign(TOPIC, &mut buf, 2), Err(SignError::NotAnObject));
        let mut small = [0u8; 60];
        small[..20].copy_from_slice(br#"{"v":1,"boot":12345}"#);
        assert_eq!(k.sign(TOPIC, &mut small, 20), Err(SignError::BufferFull));
        assert_eq!(k.sign(TOPIC, &mut small, 61), Err(SignError::BufferFull));
    }

    #[test]
    fn keys_round_trip_hex_and_do_not_print() {
        let k = key();
        assert_eq!(
            k.to_hex().as_str(),
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        );
        assert_eq!(DeviceKey::from_hex(&k.to_hex()).map(|k| k.0), Ok(k.0));
        assert_eq!(std::format!("{k:?}"), "DeviceKey(redacted)");
        let a = DeviceKey::derive(&[1; 32], "laser-1");
        let b = DeviceKey::derive(&[1; 32], "laser-2");
        assert_ne!(a.0, b.0);
    }
}
