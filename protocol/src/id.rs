//! Site and machine identifiers.

use core::fmt;

/// Longest identifier, in bytes.
pub const ID_MAX_LEN: usize = 32;

/// A validated site or machine identifier: `[a-z0-9][a-z0-9-]{0,31}`.
///
/// Identifiers appear in MQTT topics, so the grammar keeps out everything that a topic level or a
/// shell could misread (`/`, `+`, `#`, spaces, upper case).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(heapless::String<ID_MAX_LEN>);

/// Why a string is not a valid [`Id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    /// The identifier is empty.
    Empty,
    /// The identifier is longer than [`ID_MAX_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The first character is not a lowercase ASCII letter or digit.
    BadFirstChar {
        /// The offending character.
        ch: char,
    },
    /// A character other than `a-z`, `0-9` or `-`.
    BadChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the identifier.
        at: usize,
    },
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => write!(f, "is empty; use 1 to 32 characters from a-z, 0-9 and '-'"),
            IdError::TooLong { len } => write!(
                f,
                "is {len} bytes long; the limit is {ID_MAX_LEN} (a-z, 0-9 and '-', e.g. \"laser-1\")"
            ),
            IdError::BadFirstChar { ch } => write!(
                f,
                "starts with {ch:?}; it must start with a-z or 0-9 (e.g. \"laser-1\")"
            ),
            IdError::BadChar { ch, at } => write!(
                f,
                "has {ch:?} at byte {at}; only a-z, 0-9 and '-' are allowed (e.g. \"laser-1\")"
            ),
        }
    }
}

impl Id {
    /// Validates `s` as an identifier.
    pub fn new(s: &str) -> Result<Self, IdError> {
        validate_id(s)?;
        let mut out = heapless::String::new();
        // Cannot fail: validate_id checked the length.
        out.push_str(s)
            .map_err(|_| IdError::TooLong { len: s.len() })?;
        Ok(Id(out))
    }

    /// The identifier as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Checks `s` against the identifier grammar without copying it.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    let mut chars = s.char_indices();
    let Some((_, first)) = chars.next() else {
        return Err(IdError::Empty);
    };
    if s.len() > ID_MAX_LEN {
        return Err(IdError::TooLong { len: s.len() });
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(IdError::BadFirstChar { ch: first });
    }
    for (at, ch) in chars {
        if !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-') {
            return Err(IdError::BadChar { ch, at });
        }
    }
    Ok(())
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl core::str::FromStr for Id {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Id::new(s)
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an identifier of 1 to 32 characters from a-z, 0-9 and '-'")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                Id::new(v).map_err(|e| E::custom(format_args!("identifier {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for ok in [
            "a",
            "0",
            "laser-1",
            "cnc-router-02",
            "abcdefghijklmnopqrstuvwxyz012345",
        ] {
            assert_eq!(Id::new(ok).map(|i| i.as_str() == ok), Ok(true), "{ok}");
        }
    }

    #[test]
    fn rejects_with_a_precise_reason() {
        assert_eq!(Id::new(""), Err(IdError::Empty));
        assert_eq!(Id::new(&"a".repeat(33)), Err(IdError::TooLong { len: 33 }));
        assert_eq!(Id::new("-a"), Err(IdError::BadFirstChar { ch: '-' }));
        assert_eq!(Id::new("Laser"), Err(IdError::BadFirstChar { ch: 'L' }));
        assert_eq!(Id::new("las er"), Err(IdError::BadChar { ch: ' ', at: 3 }));
        assert_eq!(Id::new("a/b"), Err(IdError::BadChar { ch: '/', at: 1 }));
        assert_eq!(Id::new("a+"), Err(IdError::BadChar { ch: '+', at: 1 }));
        assert_eq!(Id::new("a_b"), Err(IdError::BadChar { ch: '_', at: 1 }));
        assert_eq!(Id::new("é"), Err(IdError::BadFirstChar { ch: 'é' }));
    }
}
