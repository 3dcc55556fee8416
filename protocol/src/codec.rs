//! JSON codec: size limit first, then the schema version, then the message, then its validation.
//!
//! Without the `std` feature, decoding and encoding use `serde-json-core` (no allocator). With
//! `std`, decoding uses `serde_json` through `serde_path_to_error`, so an error names the path of the
//! offending field (`event.session_ended.busy_s`). Both accept exactly the same documents; a test and
//! a fuzz target compare them.

use core::fmt::{self, Write as _};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::message::{
    Alert, Command, CommandBody, Confirm, DeviceConfig, Event, EventBody, Presence, Sensing,
    Status, Telemetry, MAX_ALLOW_LIST,
};
use crate::topic::Channel;
use crate::{SCHEMA_VERSION, TS_MAX_MS, TS_MIN_MS};

/// A bounded detail string carried by errors (no allocator needed).
pub type Detail = heapless::String<120>;

/// Longest string value, after unescaping, that the no_std decoder handles.
const UNESCAPE_BUF: usize = 256;

/// Why a payload was refused. Each variant names the problem; `Display` adds how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload is empty.
    Empty,
    /// The payload is larger than the channel allows; it was not parsed.
    TooLarge {
        /// Payload length in bytes.
        len: usize,
        /// The channel's limit in bytes.
        max: usize,
    },
    /// The payload is not a JSON object (bad syntax, truncated, trailing bytes, not UTF-8).
    Syntax {
        /// What the JSON parser said.
        detail: Detail,
    },
    /// The object has no `v` field.
    MissingVersion,
    /// The object's `v` is not a schema version this build reads.
    UnsupportedVersion {
        /// The version found.
        found: u64,
    },
    /// A field is missing, has the wrong type, or holds an unknown name.
    Field {
        /// Dotted path of the field or of the object missing it (empty when unknown).
        path: Detail,
        /// What is wrong with it.
        problem: Detail,
    },
    /// The message parsed but breaks a rule of the protocol.
    Invalid(Invalid),
}

/// A broken protocol rule: which field, and what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted path of the field.
    pub field: &'static str,
    /// The rule it breaks.
    pub problem: &'static str,
}

impl DecodeError {
    /// A short stable name for metrics and dead letters (`too_large`, `syntax`, ...).
    pub const fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Syntax { .. } => "syntax",
            DecodeError::MissingVersion => "missing_version",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::Field { .. } => "field",
            DecodeError::Invalid(_) => "invalid",
        }
    }
}

impl DecodeError {
    /// The field (dotted path; empty when unknown) and the problem, as borrowed text: what a
    /// device writes into a `fault` detail without linking `core::fmt`. [`Display`](fmt::Display)
    /// says the same with how to fix it.
    pub fn field_and_problem(&self) -> (&str, &str) {
        match self {
            DecodeError::Empty => ("", "empty payload"),
            DecodeError::TooLarge { .. } => ("", "payload over the size limit of its channel"),
            DecodeError::Syntax { detail } => ("", detail.as_str()),
            DecodeError::MissingVersion => ("v", "is missing"),
            DecodeError::UnsupportedVersion { .. } => {
                ("v", "is not a schema version this build reads")
            }
            DecodeError::Field { path, problem } => (path.as_str(), problem.as_str()),
            DecodeError::Invalid(i) => (i.field, i.problem),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty payload; send a JSON object such as {\"v\":1,...}"),
            DecodeError::TooLarge { len, max } => write!(
                f,
                "payload of {len} bytes exceeds the {max}-byte limit of this channel; send smaller messages"
            ),
            DecodeError::Syntax { detail } => {
                write!(f, "payload is not a JSON object: {detail}")
            }
            DecodeError::MissingVersion => f.write_str(
                "missing field `v` (schema version); every message starts with \"v\":1",
            ),
            DecodeError::UnsupportedVersion { found } => write!(
                f,
                "schema version {found} is not supported; this build reads \"v\":{SCHEMA_VERSION}"
            ),
            DecodeError::Field { path, problem } if path.is_empty() => {
                write!(f, "{problem}")
            }
            DecodeError::Field { path, problem } => write!(f, "field `{path}`: {problem}"),
            DecodeError::Invalid(i) => write!(f, "field `{}` {}", i.field, i.problem),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The message breaks a protocol rule; it was not encoded.
    Invalid(Invalid),
    /// The encoded message does not fit the buffer.
    BufferFull,
    /// The encoded message exceeds the channel's limit.
    TooLarge {
        /// Encoded length in bytes.
        len: usize,
        /// The channel's limit in bytes.
        max: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Invalid(i) => write!(f, "field `{}` {}", i.field, i.problem),
            EncodeError::BufferFull => f.write_str("encoded message does not fit the buffer"),
            EncodeError::TooLarge { len, max } => {
                write!(
                    f,
                    "encoded message of {len} bytes exceeds the {max}-byte limit"
                )
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

/// A message type of one channel.
pub trait Message: Serialize + DeserializeOwned {
    /// The channel it travels on.
    const CHANNEL: Channel;
    /// Checks the protocol rules that types alone cannot express.
    fn validate(&self) -> Result<(), Invalid>;
    /// The schema version the message carries (`v`).
    fn version(&self) -> u16;
}

fn invalid(field: &'static str, problem: &'static str) -> Result<(), Invalid> {
    Err(Invalid { field, problem })
}

const TS_PROBLEM: &str =
    "is not between 2020-01-01 and 2100-01-01 in unix milliseconds; a device without a set clock omits it";

fn check_ts(field: &'static str, ts: Option<u64>) -> Result<(), Invalid> {
    match ts {
        Some(t) if !(TS_MIN_MS..TS_MAX_MS).contains(&t) => invalid(field, TS_PROBLEM),
        _ => Ok(()),
    }
}

fn check_boot(boot: u32) -> Result<(), Invalid> {
    if boot == 0 {
        return invalid("boot", "must be at least 1: the boot counter starts at 1");
    }
    Ok(())
}

impl Message for Event {
    fn version(&self) -> u16 {
        self.v
    }
    const CHANNEL: Channel = Channel::Event;
    fn validate(&self) -> Result<(), Invalid> {
        if self.box_id == Some(0) {
            return invalid(
                "box",
                "must be at least 1: a device without a box id omits the field",
            );
        }
        check_boot(self.boot)?;
        if self.seq == 0 {
            return invalid(
                "seq",
                "must be at least 1: the first event of a boot has seq 1",
            );
        }
        if self.sent_uptime_ms < self.uptime_ms {
            return invalid(
                "sent_uptime_ms",
                "is less than uptime_ms: an event cannot be sent before it happened",
            );
        }
        check_ts("ts", self.ts)?;
        const SESSION: &str =
            "must be the seq of an earlier session_started event of the same boot (less than seq)";
        match &self.event {
            EventBody::State { from, to } if from == to => invalid(
                "event.state.to",
                "equals `from`: a state change must change the state",
            ),
            EventBody::SessionProgress { session, .. } if *session >= self.seq => {
                invalid("event.session_progress.session", SESSION)
            }
            EventBody::SessionEnded { session, .. } if *session >= self.seq => {
                invalid("event.session_ended.session", SESSION)
            }
            _ => Ok(()),
        }
    }
}

impl Message for Status {
    fn version(&self) -> u16 {
        self.v
    }
    const CHANNEL: Channel = Channel::Status;
    fn validate(&self) -> Result<(), Invalid> {
        check_boot(self.boot)?;
        check_ts("ts", self.ts)?;
        if self.status == Presence::Online {
            if self.fw.is_none() {
                return invalid(
                    "fw",
                    "is required when status is online (the birth message)",
                );
            }
            if self.caps.is_none() {
                return invalid(
                    "caps",
                    "is required when status is online (the birth message)",
                );
            }
        }
        Ok(())
    }
}

/// Largest RMS current a telemetry sample or a sensing threshold may carry, milliamperes
/// (10,000 A: a workshop circuit is far below; also keeps every current exact in an `f32`).
pub const MAX_CURRENT_MA: u32 = 10_000_000;
/// Largest power a telemetry sample may carry, watts.
pub const MAX_POWER_W: u32 = 10_000_000;
/// Largest clamp calibration, milliamperes per volt at the ADC input.
pub const MAX_MA_PER_V: u32 = 10_000_000;
/// Largest mains voltage, volts.
pub const MAX_MAINS_V: u32 = 1000;

fn check_max(
    field: &'static str,
    x: Option<u32>,
    max: u32,
    problem: &'static str,
) -> Result<(), Invalid> {
    match x {
        Some(x) if x > max => invalid(field, problem),
        _ => Ok(()),
    }
}

impl Message for Telemetry {
    fn version(&self) -> u16 {
        self.v
    }
    const CHANNEL: Channel = Channel::Telemetry;
    fn validate(&self) -> Result<(), Invalid> {
        check_boot(self.boot)?;
        check_ts("ts", self.ts)?;
        check_max(
            "current_ma",
            self.current_ma,
            MAX_CURRENT_MA,
            "must be an integer from 0 to 10000000 (milliamperes)",
        )?;
        check_max(
            "power_w",
            self.power_w,
            MAX_POWER_W,
            "must be an integer from 0 to 10000000 (watts)",
        )
    }
}

const MAX_DWELL_MS: u32 = 600_000;

impl Sensing {
    /// The sensing of a device without a config, and of a machine whose site file names none: a
    /// 30 A current clamp with the thresholds of docs/PROTOCOL.md's config example.
    pub const DEFAULT: Sensing = Sensing::Current {
        idle_ma: 300,
        busy_ma: 2000,
        hysteresis_ma: 150,
        dwell_ms: 3000,
        window_ms: 200,
        ma_per_v: 30_000,
        mains_v: 230,
    };

    /// Checks the sensing rules of docs/PROTOCOL.md "config" (bounds, `busy_ma` above `idle_ma`,
    /// the hysteresis below both); the error names the field by its path in a config
    /// (`sensing.current.busy_ma`). [`DeviceConfig`]'s validation runs it.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            Sensing::Current {
                idle_ma,
                busy_ma,
                hysteresis_ma,
                dwell_ms,
                window_ms,
                ma_per_v,
                mains_v,
            } => {
                if !(1..=MAX_CURRENT_MA).contains(idle_ma) {
                    return invalid(
                        "sensing.current.idle_ma",
                        "must be an integer from 1 to 10000000 milliamperes (e.g. 300 for 0.3 A)",
                    );
                }
                if !(*busy_ma > *idle_ma && *busy_ma <= MAX_CURRENT_MA) {
                    return invalid(
                    "sensing.current.busy_ma",
                    "must be above idle_ma and at most 10000000 milliamperes (e.g. idle_ma 200, busy_ma 1500)",
                );
                }
                // busy_ma > idle_ma here, so the difference cannot underflow.
                if !(*hysteresis_ma < busy_ma - idle_ma && hysteresis_ma < idle_ma) {
                    return invalid(
                        "sensing.current.hysteresis_ma",
                        "must be less than both idle_ma and busy_ma - idle_ma (milliamperes)",
                    );
                }
                if *dwell_ms > MAX_DWELL_MS {
                    return invalid(
                        "sensing.current.dwell_ms",
                        "must be at most 600000 (10 minutes)",
                    );
                }
                if !(20..=10_000).contains(window_ms) {
                    return invalid("sensing.current.window_ms", "must be between 20 and 10000");
                }
                if !(1..=MAX_MA_PER_V).contains(ma_per_v) {
                    return invalid(
                    "sensing.current.ma_per_v",
                    "must be an integer from 1 to 10000000 milliamperes per volt (30000 for an SCT-013-030)",
                );
                }
                if !(1..=MAX_MAINS_V).contains(mains_v) {
                    return invalid(
                        "sensing.current.mains_v",
                        "must be an integer from 1 to 1000 volts (e.g. 230)",
                    );
                }
            }
            Sensing::RunSignal { dwell_ms, .. } => {
                if *dwell_ms > MAX_DWELL_MS {
                    return invalid(
                        "sensing.run_signal.dwell_ms",
                        "must be at most 600000 (10 minutes)",
                    );
                }
            }
        }
        Ok(())
    }
}

impl Message for DeviceConfig {
    fn version(&self) -> u16 {
        self.v
    }
    const CHANNEL: Channel = Channel::Config;
    fn validate(&self) -> Result<(), Invalid> {
        self.sensing.validate()?;
        if !(1..=3600).contains(&self.progress_s) {
            return invalid("progress_s", "must be between 1 and 3600 seconds");
        }
        for (i, a) in self.allow.iter().enumerate() {
            if self.allow[..i].contains(a) {
                return invalid("allow", "lists the same badge hash twice");
            }
        }
        debug_assert!(self.allow.len() <= MAX_ALLOW_LIST);
        Ok(())
    }
}

impl Message for Command {
    fn version(&self) -> u16 {
        self.v
    }
    const CHANNEL: Channel = Channel::Cmd;
    fn validate(&self) -> Result<(), Invalid> {
        check_ts("ts", self.ts)?;
        if let CommandBody::SetTime { ts } = self.cmd {
            check_ts("cmd.set_time.ts", Some(ts))?;
        }
        Ok(())
    }
}

impl Message for Alert {
    fn version(&self) -> u16 {
        self.v
    }
    const CHANNEL: Channel = Channel::Alert;
    fn validate(&self) -> Result<(), Invalid> {
        check_ts("ts", Some(self.ts))?;
        if self.code.is_empty() {
            return invalid("code", "must not be empty (e.g. \"maintenance_due\")");
        }
        Ok(())
    }
}

impl Message for Confirm {
    fn version(&self) -> u16 {
        self.v
    }
    const CHANNEL: Channel = Channel::Ack;
    fn validate(&self) -> Result<(), Invalid> {
        check_boot(self.boot)?;
        if self.from == 0 {
            return invalid(
                "from",
                "must be at least 1: the first event of a boot has seq 1",
            );
        }
        if self.to < self.from {
            return invalid("to", "is less than `from`: a confirmed run is from..=to");
        }
        Ok(())
    }
}

/// Just the version field, read before the message so that a future version gets a clear error.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    v: Option<u64>,
}

fn detail(args: fmt::Arguments<'_>) -> Detail {
    let mut d = Detail::new();
    if d.write_fmt(args).is_err() {
        // Truncated: mark it so a reader knows.
        while d.len() > d.capacity() - 3 {
            d.pop();
        }
        let _ = d.push_str("...");
    }
    d
}

/// Decodes and validates a message of type `M` from a payload received on `M::CHANNEL`.
pub fn decode<M: Message>(payload: &[u8]) -> Result<M, DecodeError> {
    decode_with(payload, parse::<M>, parse::<Probe>)
}

/// Decodes with the `serde-json-core` path end to end (size, version, message, validation), as a
/// device does. Identical in outcome to [`decode`]; only error details differ.
pub fn decode_core<M: Message>(payload: &[u8]) -> Result<M, DecodeError> {
    decode_with(
        payload,
        parse_core_checked::<M>,
        parse_core_checked::<Probe>,
    )
}

fn decode_with<M: Message>(
    payload: &[u8],
    parse_msg: impl Fn(&[u8]) -> Result<M, DecodeError>,
    parse_probe: impl Fn(&[u8]) -> Result<Probe, DecodeError>,
) -> Result<M, DecodeError> {
    let max = M::CHANNEL.max_payload();
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    if payload.len() > max {
        return Err(DecodeError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    // Both decoders see only strict JSON: the same verdict whichever runs (see `strict_json`).
    if let Some((at, what)) = strict_json(payload) {
        // Built by hand, not with `format_args!`: a device then links no formatting code.
        let mut detail = Detail::new();
        push_truncated(&mut detail, what);
        push_truncated(&mut detail, " at byte ");
        push_decimal(&mut detail, at);
        return Err(DecodeError::Syntax { detail });
    }
    match parse_msg(payload) {
        Ok(msg) if msg.version() == SCHEMA_VERSION => {
            msg.validate().map_err(DecodeError::Invalid)?;
            Ok(msg)
        }
        // The version decides first: a message of another version may fail to parse for reasons
        // that would only confuse (a renamed field), so `v` is read on its own whenever the message
        // did not parse as ours. This costs a second parse on the error path only.
        other => {
            match parse_probe(payload) {
                Ok(Probe { v: None }) => return Err(DecodeError::MissingVersion),
                Ok(Probe { v: Some(v) }) if v != u64::from(SCHEMA_VERSION) => {
                    return Err(DecodeError::UnsupportedVersion { found: v })
                }
                _ => {}
            }
            match other {
                Ok(msg) => Err(DecodeError::UnsupportedVersion {
                    found: u64::from(msg.version()),
                }),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(feature = "std")]
fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner)
    })?;
    de.end().map_err(|e| json_error("", &e))?;
    Ok(value)
}

#[cfg(feature = "std")]
fn json_error(path: &str, e: &serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => DecodeError::Field {
            path: detail(format_args!("{}", if path == "." { "" } else { path })),
            problem: detail(format_args!("{e}")),
        },
        Category::Syntax | Category::Eof | Category::Io => DecodeError::Syntax {
            detail: detail(format_args!("{e}")),
        },
    }
}

#[cfg(not(feature = "std"))]
fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    parse_core_checked(payload)
}

/// [`parse_core`] for a payload that [`strict_json`] accepted: serde-json-core can then only
/// complain about a value that does not fit its field (`0.3` or `-1` where a `u32` is expected: it
/// stops at the `.` or the `-` and reports the next character), never about the syntax. So every
/// error is a [`DecodeError::Field`], as `serde_json` reports it, and no error formatting code is
/// linked into a device.
fn parse_core_checked<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    use serde_json_core::de::Error as E;
    let mut buf = [0u8; UNESCAPE_BUF];
    serde_json_core::from_slice_escaped::<T>(payload, &mut buf)
        .map(|(value, _)| value)
        .map_err(|e| {
            let problem = match e {
                E::InvalidType => "a field has the wrong type",
                E::CustomError => "a field has an invalid value",
                E::EscapedStringIsTooLong => "a string is longer than 256 bytes",
                _ => "a value does not fit its field: a fraction, an exponent, a sign or an overflow where an integer is expected",
            };
            let mut d = Detail::new();
            push_truncated(&mut d, problem);
            DecodeError::Field {
                path: Detail::new(),
                problem: d,
            }
        })
}

/// Appends `n` in decimal, as much as fits.
fn push_decimal(d: &mut Detail, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &c in &digits[i..] {
        if d.push(char::from(c)).is_err() {
            return;
        }
    }
}

/// Appends as much of `s` as fits, cut at a character boundary.
fn push_truncated(d: &mut Detail, s: &str) {
    for c in s.chars() {
        if d.push(c).is_err() {
            return;
        }
    }
}

/// Decodes with `serde-json-core`, whatever the features: the device's decoder. Public so that a
/// hosted test or fuzz target can compare it with the `std` decoder.
///
/// It is lenient about JSON syntax; [`decode_core`] runs a strict check first.
///
/// Its errors do not name the field: serde-json-core's `custom-error-messages` feature would, but in
/// 0.7.0 it panics on any message longer than 64 bytes (serde's "unknown variant" messages are), and
/// a device must not panic on input. The collector decodes with `serde_json`, which names the path.
pub fn parse_core<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    use serde_json_core::de::Error as E;
    let mut buf = [0u8; UNESCAPE_BUF];
    match serde_json_core::from_slice_escaped::<T>(payload, &mut buf) {
        Ok((value, _)) => Ok(value),
        Err(E::InvalidType) => Err(DecodeError::Field {
            path: Detail::new(),
            problem: detail(format_args!("a field has the wrong type")),
        }),
        Err(E::CustomError) => Err(DecodeError::Field {
            path: Detail::new(),
            problem: detail(format_args!("a field has an invalid value")),
        }),
        Err(e) => Err(DecodeError::Syntax {
            detail: detail(format_args!("{e}")),
        }),
    }
}

/// Deepest nesting of objects and arrays a payload may have (messages nest at most 4 deep).
const MAX_DEPTH: usize = 16;

/// A strict RFC 8259 recognizer with a nesting limit, run before either decoder. serde-json-core is
/// lenient where serde_json is not (found by the fuzz target `decode`): leading zeros in numbers,
/// raw control characters in strings, garbage inside values it skips; and the two differ in how deep
/// they nest. Checking here first gives both decoders the same verdict and bounds the recursion on a
/// microcontroller. Returns the byte offset and the problem of the first error.
fn strict_json(payload: &[u8]) -> Option<(usize, &'static str)> {
    if let Err(e) = core::str::from_utf8(payload) {
        return Some((e.valid_up_to(), "invalid UTF-8"));
    }
    strict_json_watching(payload, b"").err()
}

/// [`strict_json`] that also counts the members of the top-level object whose key is exactly
/// `key` (compared as raw bytes between the quotes: the protocol's keys have no escapes).
pub(crate) fn strict_json_watching(
    payload: &[u8],
    key: &[u8],
) -> Result<usize, (usize, &'static str)> {
    if let Err(e) = core::str::from_utf8(payload) {
        return Err((e.valid_up_to(), "invalid UTF-8"));
    }
    let mut r = Recognizer {
        b: payload,
        i: 0,
        watch: key,
        seen: 0,
    };
    let result = r.ws().and_then(|()| r.value(0)).and_then(|()| r.ws());
    match result {
        Err(what) => Err((r.i, what)),
        Ok(()) if r.i != payload.len() => Err((r.i, "trailing characters")),
        Ok(()) => Ok(r.seen),
    }
}

/// The length of a JSON string's contents (between its quotes) once unescaped, as the device's
/// decoder (serde-json-core) unescapes it; 0 when it is not valid (the decoders refuse it).
fn unescaped_len(raw: Option<&[u8]>) -> usize {
    use serde_json_core::str::{EscapedStr, EscapedStringFragment};
    let Some(raw) = raw.and_then(|r| core::str::from_utf8(r).ok()) else {
        return 0;
    };
    let mut len = 0;
    for fragment in EscapedStr(raw).fragments() {
        len += match fragment {
            Ok(EscapedStringFragment::NotEscaped(s)) => s.len(),
            Ok(EscapedStringFragment::Escaped(c)) => c.len_utf8(),
            Err(_) => return 0,
        };
    }
    len
}

struct Recognizer<'a> {
    b: &'a [u8],
    i: usize,
    /// A top-level key to count (empty: none).
    watch: &'a [u8],
    /// How many top-level members have the key `watch`.
    seen: usize,
}

type Lex = Result<(), &'static str>;

impl Recognizer<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) -> Lex {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
        Ok(())
    }

    fn eat(&mut self, c: u8, what: &'static str) -> Lex {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(what)
        }
    }

    fn value(&mut self, depth: usize) -> Lex {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string(),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => Err("expected a value"),
            None => Err("unexpected end of payload"),
        }
    }

    fn object(&mut self, depth: usize) -> Lex {
        if depth > MAX_DEPTH {
            return Err("nested too deep");
        }
        self.i += 1;
        self.ws()?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws()?;
            if self.peek() != Some(b'"') {
                return Err("expected a string key");
            }
            let start = self.i;
            self.string()?;
            if depth == 1 && !self.watch.is_empty() && self.b[start + 1..self.i - 1] == *self.watch
            {
                self.seen += 1;
            }
            self.ws()?;
            self.eat(b':', "expected `:`")?;
            self.ws()?;
            self.value(depth)?;
            self.ws()?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err("expected `,` or `}`"),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Lex {
        if depth > MAX_DEPTH {
            return Err("nested too deep");
        }
        self.i += 1;
        self.ws()?;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws()?;
            self.value(depth)?;
            self.ws()?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err("expected `,` or `]`"),
            }
        }
    }

    fn string(&mut self) -> Lex {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.peek() {
                None => return Err("unterminated string"),
                Some(b'"') => {
                    if escaped && unescaped_len(self.b.get(start..self.i)) > UNESCAPE_BUF {
                        // The device's decoder unescapes into a buffer of that size and refuses
                        // longer strings (keys too): refused here, both decoders agree.
                        return Err("a string with escapes is longer than 256 bytes unescaped");
                    }
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            for _ in 0..4 {
                                if !self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                                    return Err("invalid \\u escape");
                                }
                                self.i += 1;
                            }
                        }
                        _ => return Err("invalid escape"),
                    }
                }
                Some(c) if c < 0x20 => return Err("control character in a string"),
                Some(_) => self.i += 1,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Lex {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return Err("number with a leading zero");
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err("invalid number");
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err("invalid number");
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Lex {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err("expected a value")
        }
    }
}

/// Validates and encodes a message into `buf` (no allocator); returns the length written.
pub fn encode<M: Message>(msg: &M, buf: &mut [u8]) -> Result<usize, EncodeError> {
    msg.validate().map_err(EncodeError::Invalid)?;
    let len = serde_json_core::to_slice(msg, buf).map_err(|_| EncodeError::BufferFull)?;
    let max = M::CHANNEL.max_payload();
    if len > max {
        return Err(EncodeError::TooLarge { len, max });
    }
    Ok(len)
}

/// Validates and encodes a message into a new vector.
#[cfg(feature = "std")]
pub fn encode_to_vec<M: Message>(msg: &M) -> Result<std::vec::Vec<u8>, EncodeError> {
    msg.validate().map_err(EncodeError::Invalid)?;
    let out = serde_json::to_vec(msg).map_err(|_| EncodeError::BufferFull)?;
    let max = M::CHANNEL.max_payload();
    if out.len() > max {
        return Err(EncodeError::TooLarge {
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

/// Any message, decoded according to the channel it arrived on.
// A config carries its allow-list inline (no allocator), so variants differ in size; an `Inbound` is
// matched right after decoding and not stored.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// From `status`.
    Status(Status),
    /// From `event`.
    Event(Event),
    /// From `telemetry`.
    Telemetry(Telemetry),
    /// From `config`.
    Config(DeviceConfig),
    /// From `cmd`.
    Command(Command),
    /// From `alert`.
    Alert(Alert),
    /// From `ack`.
    Confirm(Confirm),
}

/// Decodes a payload according to the channel of its topic.
pub fn decode_for(channel: Channel, payload: &[u8]) -> Result<Inbound, DecodeError> {
    Ok(match channel {
        Channel::Status => Inbound::Status(decode(payload)?),
        Channel::Event => Inbound::Event(decode(payload)?),
        Channel::Telemetry => Inbound::Telemetry(decode(payload)?),
        Channel::Config => Inbound::Config(decode(payload)?),
        Channel::Cmd => Inbound::Command(decode(payload)?),
        Channel::Alert => Inbound::Alert(decode(payload)?),
        Channel::Ack => Inbound::Confirm(decode(payload)?),
    })
}

/// [`decode_for`] through the `serde-json-core` decoder.
pub fn decode_core_for(channel: Channel, payload: &[u8]) -> Result<Inbound, DecodeError> {
    Ok(match channel {
        Channel::Status => Inbound::Status(decode_core(payload)?),
        Channel::Event => Inbound::Event(decode_core(payload)?),
        Channel::Telemetry => Inbound::Telemetry(decode_core(payload)?),
        Channel::Config => Inbound::Config(decode_core(payload)?),
        Channel::Cmd => Inbound::Command(decode_core(payload)?),
        Channel::Alert => Inbound::Alert(decode_core(payload)?),
        Channel::Ack => Inbound::Confirm(decode_core(payload)?),
    })
}

#[cfg(test)]
mod tests {
    use super::{push_decimal, push_truncated, strict_json, Detail};

    #[test]
    fn details_built_without_fmt_read_like_fmt() {
        for n in [0usize, 7, 10, 1234, 4096, usize::MAX] {
            let mut d = Detail::new();
            push_decimal(&mut d, n);
            assert_eq!(d.as_str(), n.to_string());
        }
        // Cut at the capacity, at a character boundary, never failing.
        let mut d = Detail::new();
        push_truncated(&mut d, &"é".repeat(100));
        assert_eq!(d.as_str(), "é".repeat(60));
        push_decimal(&mut d, 42);
        assert_eq!(d.len(), 120);
    }

    fn leading_zero(p: &[u8]) -> Option<usize> {
        strict_json(p).map(|(at, _)| at)
    }

    /// Found by the decode fuzz target: an unknown key over 256 bytes with an escape was
    /// ignored by serde_json and refused by serde-json-core (its unescape buffer is 256 bytes).
    #[test]
    fn an_escaped_string_too_long_for_the_device_is_refused_by_both_decoders() {
        use crate::topic::Channel;
        let key = format!("x{}\\by", "C".repeat(300));
        let payload = format!(
            "{{\"v\":1,\"{key}\":1,\"boot\":12,\"seq\":1,\"uptime_ms\":5230,\
             \"sent_uptime_ms\":5231,\"event\":{{\"state\":{{\"from\":\"off\",\"to\":\"idle\"}}}}}}"
        );
        let std = super::decode_for(Channel::Event, payload.as_bytes());
        let core = super::decode_core_for(Channel::Event, payload.as_bytes());
        assert!(
            matches!(&std, Err(super::DecodeError::Syntax { detail })
                if detail.contains("longer than 256 bytes unescaped")),
            "{std:?}"
        );
        assert!(core.is_err(), "{core:?}");
        // At 256 bytes unescaped, both take it (the key is unknown: ignored).
        let fits = payload.replace(&key, &format!("{}\\b", "C".repeat(255)));
        assert!(super::decode_for(Channel::Event, fits.as_bytes()).is_ok());
        assert!(super::decode_core_for(Channel::Event, fits.as_bytes()).is_ok());
    }

    #[test]
    fn strict_json_refuses_what_serde_json_refuses() {
        for bad in [
            &b"{\"a\":1\xff}"[..],
            b"{\"a\":1,}",
            b"{\"a\":[1,]}",
            b"{\"a\":tru}",
            b"{\"a\":1.}",
            b"{\"a\":1e}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\u12g4\"}",
            b"{\"a\":1} x",
            b"{a:1}",
            b"",
            b"[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]",
        ] {
            assert!(
                strict_json(bad).is_some(),
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(
                serde_json::from_slice::<serde_json::Value>(bad).is_err() || bad.starts_with(b"[["),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            strict_json(b" {\"a\": [1, -0.5e+3, true, null, \"\\u00e9\"]} \n"),
            None
        );
    }

    #[test]
    fn control_characters_in_strings() {
        assert_eq!(
            strict_json(b"{\"a\":\"x\ty\"}"),
            Some((7, "control character in a string"))
        );
        assert_eq!(strict_json(b"{\"a\":\"x\\ty\"}\n"), None);
    }

    #[test]
    fn leading_zeros_outside_strings() {
        assert_eq!(leading_zero(br#"{"a":013}"#), Some(6));
        assert_eq!(leading_zero(br#"{"a":-01.5}"#), Some(7));
        assert_eq!(leading_zero(br#"{"a":[1,02]}"#), Some(9));
        for ok in [
            &br#"{"a":0,"b":0.05,"c":10,"d":1e05,"e":2E-07,"f":3e+01,"g":-0.5}"#[..],
            br#"{"s":"013","t":"\"013"}"#,
        ] {
            assert_eq!(leading_zero(ok), None, "{}", String::from_utf8_lossy(ok));
        }
    }
}
