//! The JSON examples of `docs/PROTOCOL.md`, as test fixtures (feature `fixtures`).
//!
//! A fenced block whose info string is `json <channel>` is an example that must be accepted;
//! `json <channel> reject=<reason>` one that must be refused with that [`DecodeError::reason`].
//! Tests, the Mosquitto round-trip suite and the fuzz seed corpus all read the examples from here,
//! so the document and the code cannot drift.
//!
//! [`DecodeError::reason`]: crate::DecodeError::reason

use std::vec::Vec;

use crate::topic::Channel;

/// The protocol document, compiled in.
pub const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");

/// What the document says should happen to an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Decoded and valid.
    Accept,
    /// Refused with this reason.
    Reject(&'static str),
}

/// One JSON example of the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixture {
    /// The channel its block names.
    pub channel: Channel,
    /// The payload, exactly as written in the block (without the final newline).
    pub json: &'static str,
    /// Accepted or refused with a reason.
    pub expect: Expect,
    /// 1-based line of the block's opening fence, for error messages.
    pub line: usize,
}

/// Every example of [`PROTOCOL_MD`], in document order.
///
/// # Panics
/// On a malformed fixture block (unknown channel, unclosed fence): the document is broken, and a
/// test must say where.
pub fn all() -> Vec<Fixture> {
    parse(PROTOCOL_MD)
}

/// Extracts the examples of a Markdown text written like `docs/PROTOCOL.md`.
///
/// # Panics
/// On a malformed fixture block, naming its line.
pub fn parse(markdown: &'static str) -> Vec<Fixture> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut lines = markdown.split_inclusive('\n').enumerate();
    while let Some((n, line)) = lines.next() {
        offset += line.len();
        let Some(info) = line.trim_end().strip_prefix("```json ") else {
            continue;
        };
        let mut words = info.split_whitespace();
        let channel_word = words.next().unwrap_or("");
        let channel = Channel::parse(channel_word).unwrap_or_else(|| {
            panic!(
                "PROTOCOL.md line {}: unknown channel {channel_word:?} in fixture fence",
                n + 1
            )
        });
        let expect = match words.next() {
            None => Expect::Accept,
            Some(w) => match w.strip_prefix("reject=") {
                Some(reason) => Expect::Reject(reason),
                None => panic!(
                    "PROTOCOL.md line {}: expected reject=<reason>, got {w:?}",
                    n + 1
                ),
            },
        };
        let body_start = offset;
        let mut body_end = None;
        for (_, l) in lines.by_ref() {
            if l.trim_end() == "```" {
                body_end = Some(offset);
                offset += l.len();
                break;
            }
            offset += l.len();
        }
        let body_end = body_end
            .unwrap_or_else(|| panic!("PROTOCOL.md line {}: unclosed fixture block", n + 1));
        let json = markdown[body_start..body_end].trim_end_matches('\n');
        out.push(Fixture {
            channel,
            json,
            expect,
            line: n + 1,
        });
    }
    out
}
