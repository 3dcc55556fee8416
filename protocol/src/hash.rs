//! Keyed badge hashes and configuration hashes: 8-byte digests written as 16 lowercase hex digits.
//!
//! Badge UIDs never travel in clear. A device turns the UID it read into
//! `HMAC-SHA256(site_key, uid)` truncated to its first 8 bytes. The 32-byte site key is given to the
//! device at provisioning and never published, so a broker account alone cannot map hashes back to
//! cards, and the same card gives unrelated hashes at two sites. Sixty-four bits leave a collision
//! chance of about 1e-16 for a site of 50 badges while keeping the allow-list small enough for a
//! microcontroller. A badge is identification, not strong authentication: a MIFARE Classic UID can be
//! cloned (see `docs/PROTOCOL.md`).

use core::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Length of a hash on the wire, in bytes (16 hex digits).
pub const HASH_LEN: usize = 8;

/// Length of a per-site badge key, in bytes.
pub const BADGE_KEY_LEN: usize = 32;

macro_rules! hex8 {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; HASH_LEN]);

        impl $name {
            /// Parses 16 lowercase hex digits.
            pub fn from_hex(s: &str) -> Result<Self, HexError> {
                parse_hex(s).map($name)
            }

            /// The 16 lowercase hex digits, without allocation.
            pub fn to_hex(&self) -> heapless::String<{ 2 * HASH_LEN }> {
                to_hex(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl core::str::FromStr for $name {
            type Err = HexError;
            fn from_str(s: &str) -> Result<Self, HexError> {
                Self::from_hex(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!($what, " of 16 lowercase hex digits"))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::from_hex(v).map_err(|e| E::custom(format_args!(concat!($what, " {}"), e)))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

hex8!(
    /// A badge as it travels: the truncated keyed hash of its UID. See the module documentation.
    BadgeHash,
    "badge hash"
);

hex8!(
    /// The first 8 bytes of SHA-256 over the exact bytes of a config payload. A device reports the
    /// hash of the config it applied in its birth message, so the collector can tell whether the
    /// device runs the config it last published.
    ConfigHash,
    "config hash"
);

impl ConfigHash {
    /// Hashes a config payload as received (the bytes, not a re-encoding).
    pub fn of(payload: &[u8]) -> Self {
        let digest = Sha256::digest(payload);
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(&digest[..HASH_LEN]);
        ConfigHash(out)
    }
}

/// A per-site secret used to hash badge UIDs. Not `Debug`, so it does not end up in logs.
#[derive(Clone)]
pub struct BadgeKey([u8; BADGE_KEY_LEN]);

impl BadgeKey {
    /// Wraps 32 secret bytes.
    pub const fn new(bytes: [u8; BADGE_KEY_LEN]) -> Self {
        BadgeKey(bytes)
    }

    /// Parses a key written as 64 hex digits (the form used in config files).
    pub fn from_hex(s: &str) -> Result<Self, HexError> {
        parse_hex(s).map(BadgeKey)
    }

    /// Hashes a badge UID as read from the card (its bytes in transmission order, e.g. 4, 7 or 10
    /// bytes for ISO 14443-A cards). Readers that print the UID as text must be decoded to bytes first.
    pub fn hash(&self, uid: &[u8]) -> BadgeHash {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_key_length(),
        };
        mac.update(uid);
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(&tag[..HASH_LEN]);
        BadgeHash(out)
    }
}

#[cold]
fn unreachable_key_length() -> ! {
    unreachable!("HMAC-SHA256 accepts keys of any length")
}

/// Why a hex string is not a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexError {
    /// Not the expected number of hex digits.
    WrongLength {
        /// Its length in bytes.
        len: usize,
        /// How many digits were expected.
        expected: usize,
    },
    /// A character other than `0-9a-f`.
    BadDigit {
        /// Byte offset of the character.
        at: usize,
    },
}

impl fmt::Display for HexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HexError::WrongLength { len, expected } => {
                write!(
                    f,
                    "has {len} characters; expected {expected} lowercase hex digits"
                )
            }
            HexError::BadDigit { at } => {
                write!(f, "has a character other than 0-9a-f at byte {at}")
            }
        }
    }
}

fn nibble(c: u8, at: usize) -> Result<u8, HexError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(HexError::BadDigit { at }),
    }
}

pub(crate) fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return Err(HexError::WrongLength {
            len: b.len(),
            expected: 2 * N,
        });
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0], 2 * i)? << 4) | nibble(pair[1], 2 * i + 1)?;
    }
    Ok(out)
}

fn to_hex(bytes: &[u8; HASH_LEN]) -> heapless::String<{ 2 * HASH_LEN }> {
    hex_string(bytes)
}

/// `bytes` as lowercase hex; `M` must be at least twice the length of `bytes` (extra digits are
/// dropped otherwise).
pub(crate) fn hex_string<const M: usize>(bytes: &[u8]) -> heapless::String<M> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = heapless::String::new();
    for b in bytes {
        // Cannot fail: the capacity is exactly two digits per byte.
        let _ = s.push(DIGITS[usize::from(b >> 4)] as char);
        let _ = s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badge_hash_matches_an_independent_hmac() {
        // Expected value computed independently with Python's hmac module:
        // python3 -c "import hmac,hashlib;print(hmac.new(bytes(range(32)),bytes.fromhex('04a1b2c3'),hashlib.sha256).hexdigest()[:16])"
        let key = BadgeKey::new(core::array::from_fn(|i| i as u8));
        let h = key.hash(&[0x04, 0xa1, 0xb2, 0xc3]);
        assert_eq!(h.to_hex().as_str(), "ba279e0c1e5c2464");
    }

    #[test]
    fn different_sites_give_different_hashes() {
        let a = BadgeKey::new([1; 32]).hash(b"\x04\xa1\xb2\xc3");
        let b = BadgeKey::new([2; 32]).hash(b"\x04\xa1\xb2\xc3");
        assert_ne!(a, b);
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = BadgeHash::from_hex("00ff10a0b1c2d3e4").expect("valid");
        assert_eq!(h.0, [0x00, 0xff, 0x10, 0xa0, 0xb1, 0xc2, 0xd3, 0xe4]);
        assert_eq!(h.to_hex().as_str(), "00ff10a0b1c2d3e4");
        assert_eq!(
            BadgeHash::from_hex("00ff"),
            Err(HexError::WrongLength {
                len: 4,
                expected: 16
            })
        );
        assert_eq!(
            BadgeHash::from_hex("00FF10a0b1c2d3e4"),
            Err(HexError::BadDigit { at: 2 })
        );
        assert!(BadgeKey::from_hex(&"ab".repeat(32)).is_ok());
        assert!(BadgeKey::from_hex("ab").is_err());
    }

    #[test]
    fn config_hash_is_sha256_prefix() {
        // python3 -c "import hashlib;print(hashlib.sha256(b'abc').hexdigest()[:16])"
        assert_eq!(ConfigHash::of(b"abc").to_hex().as_str(), "ba7816bf8f01cfea");
    }
}
