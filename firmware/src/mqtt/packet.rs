//! MQTT 3.1.1 packets: the subset a device needs, encoded into and parsed from byte slices.
//!
//! Encoded by the client: CONNECT (with a will), PUBLISH, PUBACK, SUBSCRIBE, PINGREQ, DISCONNECT.
//! Parsed from the broker: CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP (anything else is
//! [`Packet::Other`]). No allocation: parsed packets borrow the input.

/// Packet type nibbles (high 4 bits of the first byte).
#[allow(missing_docs)]
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}

/// Largest remaining length of MQTT (4 length bytes).
pub const MAX_REMAINING: usize = 268_435_455;

/// The output buffer is too small for the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

/// A packet from the broker breaks MQTT 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The remaining length takes more than 4 bytes.
    Length,
    /// A field runs past the end of the packet, or a fixed-size packet has the wrong size.
    Truncated,
    /// A topic is not UTF-8.
    Utf8,
    /// A PUBLISH with QoS 3, or reserved flags set.
    Flags,
}

/// A parsed packet from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Answer to CONNECT: 0 = accepted.
    Connack {
        /// The broker kept a session for this client id.
        session_present: bool,
        /// Return code (0 accepted, 1 protocol version, 2 id rejected, 3 unavailable, 4 bad
        /// credentials, 5 not authorized).
        code: u8,
    },
    /// An application message.
    Publish {
        /// Topic name.
        topic: &'a str,
        /// Payload bytes.
        payload: &'a [u8],
        /// 0, 1 or 2.
        qos: u8,
        /// Packet id (QoS > 0).
        pid: Option<u16>,
        /// Delivered as a retained message.
        retain: bool,
        /// A redelivery.
        dup: bool,
    },
    /// QoS 1 acknowledgement.
    Puback(u16),
    /// Answer to SUBSCRIBE: one return code per filter (0x80 = refused).
    Suback {
        /// Packet id of the SUBSCRIBE.
        pid: u16,
        /// Granted QoS per filter, or 0x80.
        codes: &'a [u8],
    },
    /// Answer to PINGREQ.
    Pingresp,
    /// Any other packet type (ignored by a device).
    Other(u8),
}

/// A cursor writing into a byte slice.
struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Out<'_> {
    fn byte(&mut self, b: u8) -> Result<(), TooLong> {
        *self.buf.get_mut(self.pos).ok_or(TooLong)? = b;
        self.pos += 1;
        Ok(())
    }
    fn bytes(&mut self, b: &[u8]) -> Result<(), TooLong> {
        self.buf
            .get_mut(self.pos..self.pos + b.len())
            .ok_or(TooLong)?
            .copy_from_slice(b);
        self.pos += b.len();
        Ok(())
    }
    fn u16(&mut self, v: u16) -> Result<(), TooLong> {
        self.bytes(&v.to_be_bytes())
    }
    /// A length-prefixed string or binary field.
    fn field(&mut self, b: &[u8]) -> Result<(), TooLong> {
        self.u16(u16::try_from(b.len()).map_err(|_| TooLong)?)?;
        self.bytes(b)
    }
    fn header(&mut self, first: u8, remaining: usize) -> Result<(), TooLong> {
        if remaining > MAX_REMAINING {
            return Err(TooLong);
        }
        self.byte(first)?;
        let mut n = remaining;
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            self.byte(b)?;
            if n == 0 {
                return Ok(());
            }
        }
    }
}

/// The last will of a CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Will<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// QoS (0 or 1).
    pub qos: u8,
    /// Retained.
    pub retain: bool,
}

/// CONNECT (protocol level 4, no user name or password).
pub fn connect(
    buf: &mut [u8],
    client_id: &str,
    keep_alive_s: u16,
    clean_session: bool,
    will: Option<Will<'_>>,
) -> Result<usize, TooLong> {
    let mut flags = 0u8;
    if clean_session {
        flags |= 0x02;
    }
    let mut remaining = 10 + 2 + client_id.len();
    if let Some(w) = &will {
        flags |= 0x04 | (w.qos.min(2) << 3);
        if w.retain {
            flags |= 0x20;
        }
        remaining += 2 + w.topic.len() + 2 + w.payload.len();
    }
    let mut o = Out { buf, pos: 0 };
    o.header(kind::CONNECT << 4, remaining)?;
    o.field(b"MQTT")?;
    o.byte(4)?;
    o.byte(flags)?;
    o.u16(keep_alive_s)?;
    o.field(client_id.as_bytes())?;
    if let Some(w) = will {
        o.field(w.topic.as_bytes())?;
        o.field(w.payload)?;
    }
    Ok(o.pos)
}

/// PUBLISH; `pid` is required for QoS 1.
pub fn publish(
    buf: &mut [u8],
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    pid: u16,
) -> Result<usize, TooLong> {
    let qos = qos.min(1);
    let remaining = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    let mut o = Out { buf, pos: 0 };
    o.header(
        (kind::PUBLISH << 4) | (qos << 1) | u8::from(retain),
        remaining,
    )?;
    o.field(topic.as_bytes())?;
    if qos > 0 {
        o.u16(pid)?;
    }
    o.bytes(payload)?;
    Ok(o.pos)
}

/// PUBACK.
pub fn puback(buf: &mut [u8], pid: u16) -> Result<usize, TooLong> {
    let mut o = Out { buf, pos: 0 };
    o.header(kind::PUBACK << 4, 2)?;
    o.u16(pid)?;
    Ok(o.pos)
}

/// SUBSCRIBE to each filter at its QoS.
pub fn subscribe(buf: &mut [u8], pid: u16, filters: &[(&str, u8)]) -> Result<usize, TooLong> {
    let remaining = 2 + filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
    let mut o = Out { buf, pos: 0 };
    o.header((kind::SUBSCRIBE << 4) | 0x02, remaining)?;
    o.u16(pid)?;
    for (f, q) in filters {
        o.field(f.as_bytes())?;
        o.byte(*q)?;
    }
    Ok(o.pos)
}

/// PINGREQ.
pub fn pingreq(buf: &mut [u8]) -> Result<usize, TooLong> {
    let mut o = Out { buf, pos: 0 };
    o.header(kind::PINGREQ << 4, 0)?;
    Ok(o.pos)
}

/// DISCONNECT.
pub fn disconnect(buf: &mut [u8]) -> Result<usize, TooLong> {
    let mut o = Out { buf, pos: 0 };
    o.header(kind::DISCONNECT << 4, 0)?;
    Ok(o.pos)
}

/// The fixed header at the start of `buf`: `Some((first byte, header length, remaining length))`
/// once complete, `None` while more bytes are needed.
pub fn header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, Malformed> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((first, 2 + i, len)));
        }
    }
    Err(Malformed::Length)
}

/// Parses one packet: `Ok(None)` while incomplete, else the packet and the bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, Malformed> {
    let Some((first, hdr, len)) = header(buf)? else {
        return Ok(None);
    };
    let total = hdr + len;
    let Some(body) = buf.get(hdr..total) else {
        return Ok(None);
    };
    let flags = first & 0x0F;
    let u16_at = |i: usize| -> Result<u16, Malformed> {
        body.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(Malformed::Truncated)
    };
    let p = match first >> 4 {
        kind::CONNACK => {
            if len != 2 {
                return Err(Malformed::Truncated);
            }
            Packet::Connack {
                session_present: body[0] & 1 != 0,
                code: body[1],
            }
        }
        kind::PUBLISH => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return Err(Malformed::Flags);
            }
            let tlen = usize::from(u16_at(0)?);
            let topic = body.get(2..2 + tlen).ok_or(Malformed::Truncated)?;
            let topic = core::str::from_utf8(topic).map_err(|_| Malformed::Utf8)?;
            let mut at = 2 + tlen;
            let pid = if qos > 0 {
                let p = u16_at(at)?;
                at += 2;
                Some(p)
            } else {
                None
            };
            Packet::Publish {
                topic,
                payload: &body[at..],
                qos,
                pid,
                retain: flags & 1 != 0,
                dup: flags & 8 != 0,
            }
        }
        kind::PUBACK => {
            if len != 2 {
                return Err(Malformed::Truncated);
            }
            Packet::Puback(u16_at(0)?)
        }
        kind::SUBACK => Packet::Suback {
            pid: u16_at(0)?,
            codes: &body[2..],
        },
        kind::PINGRESP => Packet::Pingresp,
        k => Packet::Other(k),
    };
    Ok(Some((p, total)))
}
