//! Badge readers without a bus driver: UIDs typed as text, on standard input or by a USB
//! keyboard-wedge reader.
//!
//! - [`parse_uid`]: one UID in hex, bytes in transmission order; spaces, colons and dashes between
//!   the digits are allowed (`04A22B1A`, `04 a2 2b 1a`, `04:A2:2B:1A`).
//! - [`read_badge_lines`]: reads such lines from any [`AsyncBufRead`] (stdin in the agent, bytes in
//!   tests); a bad line is logged and counted, never fatal.
//! - [`WedgeDecoder`]: key events of a keyboard-wedge reader (evdev) to UIDs. Such readers type the
//!   UID and Enter. Two formats are recognised, per line:
//!   - exactly 10 decimal digits: the 4-byte UID as a 32-bit number (the common "10-digit" format),
//!     byte order per [`DecimalOrder`] (little-endian by default: the first UID byte is the least
//!     significant, which is what most 13.56 MHz wedge readers print; check one card against a
//!     known UID and switch to `be` if the bytes come out reversed);
//!   - otherwise hex digits, two per byte, as [`parse_uid`].

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Reading, Tagged};

/// Longest UID accepted (ISO 14443 UIDs are 4, 7 or 10 bytes).
pub const MAX_UID_LEN: usize = 10;

/// Parses one UID written in hex (separators: spaces, colons, dashes).
pub fn parse_uid(line: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = line
        .trim()
        .bytes()
        .filter(|b| !matches!(b, b' ' | b':' | b'-' | b'\t'))
        .collect();
    if digits.is_empty() {
        return Err("empty UID".into());
    }
    if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
        return Err(format!(
            "{:?} is not a hex digit (write the UID in hex, e.g. 04:A2:2B:1A)",
            *bad as char
        ));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(format!(
            "{} hex digits: a UID has two digits per byte",
            digits.len()
        ));
    }
    if digits.len() / 2 > MAX_UID_LEN {
        return Err(format!(
            "{} bytes: a UID has at most {MAX_UID_LEN}",
            digits.len() / 2
        ));
    }
    Ok(digits
        .chunks(2)
        .map(|p| (hex_val(p[0]) << 4) | hex_val(p[1]))
        .collect())
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// What [`read_badge_lines`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineStats {
    /// UIDs sent.
    pub badges: u64,
    /// Lines that were not a UID (logged, skipped).
    pub bad: u64,
}

/// Reads one UID per line from `reader` until its end or `shutdown`; sends each as
/// [`Reading::Badge`] tagged with `machine`. Blank lines are skipped; bad lines are logged with
/// their problem and counted.
pub async fn read_badge_lines<R: AsyncBufRead + Unpin>(
    what: &str,
    mut reader: R,
    machine: usize,
    tx: &mpsc::Sender<Tagged>,
    shutdown: &CancellationToken,
) -> LineStats {
    let mut stats = LineStats::default();
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let n = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = reader.read_line(&mut line) => n,
        };
        match n {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                // Not UTF-8, or the input failed: the line is lost, the next one is read.
                stats.bad += 1;
                tracing::warn!(%what, error = %e, "badge: unreadable input line skipped");
                continue;
            }
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        match parse_uid(&line) {
            Ok(uid) => {
                stats.badges += 1;
                if tx.send((machine, Reading::Badge(uid))).await.is_err() {
                    break;
                }
            }
            Err(problem) => {
                stats.bad += 1;
                tracing::warn!(%what, line = number, %problem, bad = stats.bad, "badge: line is not a UID, skipped");
            }
        }
    }
    stats
}

/// How a 10-digit decimal UID maps to bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecimalOrder {
    /// The first UID byte is the least significant (most readers).
    #[default]
    Le,
    /// The first UID byte is the most significant.
    Be,
}

/// Decodes what a wedge reader typed (without the Enter) to a UID.
pub fn decode_wedge(text: &str, order: DecimalOrder) -> Result<Vec<u8>, String> {
    let t = text.trim();
    if t.len() == 10 && t.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = t.parse().map_err(|e| format!("{t}: {e}"))?;
        let n = u32::try_from(n)
            .map_err(|_| format!("{t} is above 4294967295: not a 4-byte UID in decimal"))?;
        return Ok(match order {
            DecimalOrder::Le => n.to_le_bytes().to_vec(),
            DecimalOrder::Be => n.to_be_bytes().to_vec(),
        });
    }
    parse_uid(t)
}

/// Linux key codes (`linux/input-event-codes.h`) a wedge reader types.
pub mod keys {
    /// Enter.
    pub const KEY_ENTER: u16 = 28;
    /// Keypad Enter.
    pub const KEY_KPENTER: u16 = 96;
}

/// The character a key types (digits, keypad digits, `a`–`f`), if any.
pub fn key_char(code: u16) -> Option<char> {
    Some(match code {
        2..=10 => (b'1' + (code - 2) as u8) as char,
        11 => '0',
        82 => '0',
        79 => '1',
        80 => '2',
        81 => '3',
        75 => '4',
        76 => '5',
        77 => '6',
        71 => '7',
        72 => '8',
        73 => '9',
        30 => 'a',
        48 => 'b',
        46 => 'c',
        32 => 'd',
        18 => 'e',
        33 => 'f',
        _ => return None,
    })
}

/// Collects key presses of a wedge reader into lines and decodes each at Enter.
#[derive(Debug, Clone, Default)]
pub struct WedgeDecoder {
    order: DecimalOrder,
    line: String,
    ignored: u32,
}

impl WedgeDecoder {
    /// A decoder for readers typing decimal UIDs in `order`.
    pub fn new(order: DecimalOrder) -> WedgeDecoder {
        WedgeDecoder {
            order,
            ..WedgeDecoder::default()
        }
    }

    /// One key event (`value`: 1 press, 0 release, 2 repeat). At Enter: the decoded UID, or the
    /// problem with the line; releases, repeats and modifier keys are ignored.
    pub fn on_key(&mut self, code: u16, value: i32) -> Option<Result<Vec<u8>, String>> {
        if value != 1 {
            return None;
        }
        if code == keys::KEY_ENTER || code == keys::KEY_KPENTER {
            let line = std::mem::take(&mut self.line);
            let ignored = std::mem::take(&mut self.ignored);
            if line.is_empty() {
                return None;
            }
            let r = decode_wedge(&line, self.order);
            return Some(if ignored > 0 && r.is_err() {
                r.map_err(|e| format!("{e} ({ignored} other keys typed)"))
            } else {
                r
            });
        }
        match key_char(code) {
            Some(c) if self.line.len() < 4 * MAX_UID_LEN => self.line.push(c),
            Some(_) => {}
            // Shift and other keys: ignored (a reader typing upper-case hex sends Shift).
            None => self.ignored += 1,
        }
        None
    }
}

#[cfg(test)]
mod tests;

/// Opens a keyboard-wedge reader and grabs it exclusively (its typing reaches no console or
/// other program). The error names the device and the fix.
pub fn open_wedge(what: &str, device: &str) -> Result<evdev::Device, super::InputError> {
    let err = |problem: String, fix: &str| super::InputError {
        what: what.into(),
        problem,
        fix: fix.into(),
    };
    let mut dev = evdev::Device::open(device).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => err(
            format!("{device} does not exist"),
            "plug the reader in and name its stable path, \
             e.g. /dev/input/by-id/usb-…-event-kbd (ls /dev/input/by-id/)",
        ),
        std::io::ErrorKind::PermissionDenied => err(
            format!("{device}: permission denied"),
            "add the agent's user to the input group (sudo usermod -aG input <user>) \
             or install the udev rule of docs/AGENT-INPUTS.md",
        ),
        _ => err(
            format!("{device}: {e}"),
            "check that it is an evdev input device (/dev/input/event*)",
        ),
    })?;
    dev.grab().map_err(|e| {
        err(
            format!("{device}: exclusive grab failed: {e}"),
            "stop the program that holds the reader (another agent, a kiosk)",
        )
    })?;
    Ok(dev)
}

/// Reads badges from a grabbed keyboard-wedge reader until `shutdown`; a read error ends the
/// source (the runtime logs it; the device is gone, e.g. unplugged).
pub async fn run_wedge(
    what: String,
    dev: evdev::Device,
    order: DecimalOrder,
    machine: usize,
    tx: mpsc::Sender<Tagged>,
    shutdown: CancellationToken,
) {
    let mut stream = match dev.into_event_stream() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%what, error = %e, "badge: reader cannot be polled");
            return;
        }
    };
    let mut decoder = WedgeDecoder::new(order);
    let mut bad = 0u64;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = stream.next_event() => ev,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(%what, error = %e, "badge: reader lost (unplugged?); badges stop");
                break;
            }
        };
        if ev.event_type() != evdev::EventType::KEY {
            continue;
        }
        let uid = match decoder.on_key(ev.code(), ev.value()) {
            Some(Ok(uid)) => uid,
            Some(Err(problem)) => {
                bad += 1;
                tracing::warn!(%what, %problem, bad, "badge: typed line is not a UID, skipped");
                continue;
            }
            None => continue,
        };
        if tx.send((machine, Reading::Badge(uid))).await.is_err() {
            break;
        }
    }
}
