//! # fabmeter-protocol
//!
//! The wire contract between fabmeter devices and the collector: MQTT topics, message types, the
//! JSON codec, validation rules and limits. Pure: bytes in, values or errors out. `no_std`, no
//! allocator; the `std` feature adds `serde_json` decoding with field paths in errors and `Vec`
//! helpers for hosted consumers.
//!
//! The human-readable contract, with an example of every message, is `docs/PROTOCOL.md`; its
//! examples are test fixtures of this crate, so the document and the code cannot drift.
//!
//! ```
//! use fabmeter_protocol::{decode, topic::{Channel, Topic}, message::{Event, EventBody}};
//!
//! let topic = Topic::parse("fabmeter/v1/atelier-lyon/laser-1/event").unwrap();
//! assert_eq!(topic.channel, Channel::Event);
//! let ev: Event = decode(br#"{"v":1,"boot":3,"seq":7,"uptime_ms":5000,"sent_uptime_ms":5003,
//!     "event":{"state":{"from":"idle","to":"busy"}}}"#).unwrap();
//! assert_eq!(ev.event.kind(), "state");
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Errors carry bounded inline strings because there is no allocator to box them; they only travel
// the error path.
#![allow(clippy::result_large_err)]

pub mod clock;
pub mod codec;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod hash;
pub mod id;
pub mod message;
pub mod sig;
pub mod topic;

#[cfg(feature = "std")]
pub use codec::encode_to_vec;
pub use codec::{decode, decode_for, encode, DecodeError, EncodeError, Inbound, Invalid, Message};
pub use hash::{BadgeHash, BadgeKey, ConfigHash};
pub use id::{Id, IdError};
pub use sig::{DeviceKey, SigError};
pub use topic::{Channel, Topic, TopicError};

/// The schema version this build reads and writes (`"v":1`).
pub const SCHEMA_VERSION: u16 = 1;

/// Largest payload on every channel but `config`, checked before parsing.
pub const MAX_PAYLOAD: usize = 1024;

/// Largest payload on `config` (its allow-list holds up to 128 badge hashes).
pub const MAX_CONFIG_PAYLOAD: usize = 4096;

/// Earliest acceptable wall time, unix ms (2020-01-01T00:00:00Z). A device whose clock reads earlier
/// has no set clock and must omit `ts`.
pub const TS_MIN_MS: u64 = 1_577_836_800_000;

/// Latest acceptable wall time, unix ms (2100-01-01T00:00:00Z, exclusive).
pub const TS_MAX_MS: u64 = 4_102_444_800_000;
