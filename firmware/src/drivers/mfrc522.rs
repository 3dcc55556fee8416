//! NXP MFRC522 ISO 14443-A reader over SPI: reads the UID of a badge.
//!
//! SPI mode 0, up to 10 MHz, MSB first. A register address byte is `(reg << 1)`, with bit 7 set for
//! a read; a burst read repeats the address and the chip answers each byte one position later.
//! Each register access here is one [`SpiDevice`] transaction (chip select around it).
//!
//! Card dialogue (ISO 14443-3): REQA (7-bit short frame `0x26`) wakes a card in the field, which
//! answers ATQA; ANTICOLLISION at cascade level 1 (`0x93 0x20`) returns four UID bytes and their
//! XOR check byte (BCC); SELECT (`0x93 0x70` + those five bytes + CRC_A) returns SAK. When the
//! first UID byte is the cascade tag `0x88`, or SAK says "UID not complete", cascade level 2
//! (`0x95`) gives the rest: a 7-byte UID. The CRC_A is computed here in software. Only one card at
//! a time is handled: a collision (two cards in the field) is reported as [`Error::Collision`] and
//! the caller simply tries again.

use embedded_hal::spi::SpiDevice;

/// Registers used (datasheet section 9).
#[allow(missing_docs)]
pub mod reg {
    pub const COMMAND: u8 = 0x01;
    pub const COM_IRQ: u8 = 0x04;
    pub const ERROR: u8 = 0x06;
    pub const FIFO_DATA: u8 = 0x09;
    pub const FIFO_LEVEL: u8 = 0x0A;
    pub const CONTROL: u8 = 0x0C;
    pub const BIT_FRAMING: u8 = 0x0D;
    pub const COLL: u8 = 0x0E;
    pub const MODE: u8 = 0x11;
    pub const TX_CONTROL: u8 = 0x14;
    pub const TX_ASK: u8 = 0x15;
    pub const T_MODE: u8 = 0x2A;
    pub const T_PRESCALER: u8 = 0x2B;
    pub const T_RELOAD_H: u8 = 0x2C;
    pub const T_RELOAD_L: u8 = 0x2D;
    pub const VERSION: u8 = 0x37;
}

const CMD_IDLE: u8 = 0x00;
const CMD_TRANSCEIVE: u8 = 0x0C;
const CMD_SOFT_RESET: u8 = 0x0F;
/// CommandReg PowerDown bit: set while the soft reset runs.
const POWER_DOWN: u8 = 0x10;

const IRQ_RX: u8 = 0x20;
const IRQ_IDLE: u8 = 0x10;
const IRQ_ERR: u8 = 0x02;
const IRQ_TIMER: u8 = 0x01;
const IRQ_ALL: u8 = 0x7F;

const ERR_COLL: u8 = 0x08;
/// BufferOvfl | ParityErr | ProtocolErr.
const ERR_FATAL: u8 = 0x13;

const PICC_REQA: u8 = 0x26;
const SEL_CL1: u8 = 0x93;
const SEL_CL2: u8 = 0x95;
const NVB_ANTICOLL: u8 = 0x20;
const NVB_SELECT: u8 = 0x70;
const CASCADE_TAG: u8 = 0x88;
const SAK_INCOMPLETE: u8 = 0x04;

/// How many times a command polls the interrupt register before giving up (the chip's own timer,
/// set to 25 ms by [`Mfrc522::init`], normally ends a command with no answer long before).
pub const MAX_POLLS: u32 = 2000;

/// Errors of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The SPI bus failed.
    Bus(E),
    /// The chip did not finish a command or a reset within [`MAX_POLLS`] polls.
    Timeout,
    /// Two cards answered at once.
    Collision,
    /// A buffer overflow, parity or protocol error reported by the chip.
    Protocol,
    /// The card's answer had the wrong length or a bad BCC or CRC_A.
    BadAnswer,
}

/// A card UID: 4, 7 (or 10) bytes in transmission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uid {
    bytes: [u8; 10],
    len: u8,
    sak: u8,
}

impl Uid {
    /// The UID bytes, as the badge hash takes them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The final SAK (card type: 0x08 MIFARE Classic 1K, 0x00 Ultralight, 0x20 ISO 14443-4...).
    pub fn sak(&self) -> u8 {
        self.sak
    }
}

/// An MFRC522 on an SPI device.
pub struct Mfrc522<SPI> {
    spi: SPI,
}

impl<SPI: SpiDevice> Mfrc522<SPI> {
    /// A driver on this SPI device; nothing is sent until [`Mfrc522::init`].
    pub fn new(spi: SPI) -> Self {
        Mfrc522 { spi }
    }

    /// Soft reset, 25 ms command timer, 100 % ASK, CRC preset 0x6363, antenna on.
    pub fn init(&mut self) -> Result<(), Error<SPI::Error>> {
        self.write(reg::COMMAND, CMD_SOFT_RESET)?;
        self.wait_reset()?;
        // Timer: TAuto, prescaler 0x0A9 -> 40 kHz (25 us); reload 1000 -> 25 ms.
        self.write(reg::T_MODE, 0x80)?;
        self.write(reg::T_PRESCALER, 0xA9)?;
        self.write(reg::T_RELOAD_H, 0x03)?;
        self.write(reg::T_RELOAD_L, 0xE8)?;
        self.write(reg::TX_ASK, 0x40)?;
        self.write(reg::MODE, 0x3D)?;
        let tx = self.read(reg::TX_CONTROL)?;
        if tx & 0x03 != 0x03 {
            self.write(reg::TX_CONTROL, tx | 0x03)?;
        }
        Ok(())
    }

    /// The chip version (0x91 for v1.0, 0x92 for v2.0; clones answer 0x88 or 0x12).
    pub fn version(&mut self) -> Result<u8, Error<SPI::Error>> {
        self.read(reg::VERSION)
    }

    /// Sends REQA: `Some(atqa)` when a card is in the field, `None` when none answered.
    pub fn request_a(&mut self) -> Result<Option<[u8; 2]>, Error<SPI::Error>> {
        // ValuesAfterColl = 1: bits received after a collision are cleared.
        self.write(reg::COLL, 0x80)?;
        let mut atqa = [0u8; 2];
        match self.transceive(&[PICC_REQA], 7, &mut atqa)? {
            None => Ok(None),
            Some(2) => Ok(Some(atqa)),
            Some(_) => Err(Error::BadAnswer),
        }
    }

    /// Anticollision and select, cascade levels 1 then 2 if needed: the UID of the card that
    /// answered the last REQA.
    pub fn select(&mut self) -> Result<Uid, Error<SPI::Error>> {
        let mut uid = Uid {
            bytes: [0; 10],
            len: 0,
            sak: 0,
        };
        for sel in [SEL_CL1, SEL_CL2] {
            let mut part = [0u8; 5];
            match self.transceive(&[sel, NVB_ANTICOLL], 0, &mut part)? {
                Some(5) => {}
                _ => return Err(Error::BadAnswer),
            }
            if part[0] ^ part[1] ^ part[2] ^ part[3] != part[4] {
                return Err(Error::BadAnswer);
            }
            let mut frame = [
                sel, NVB_SELECT, part[0], part[1], part[2], part[3], part[4], 0, 0,
            ];
            let crc = crc_a(&frame[..7]);
            frame[7..].copy_from_slice(&crc.to_le_bytes());
            let mut sak = [0u8; 3];
            match self.transceive(&frame, 0, &mut sak)? {
                Some(3) if crc_a(&sak[..1]).to_le_bytes() == [sak[1], sak[2]] => {}
                _ => return Err(Error::BadAnswer),
            }
            let incomplete = sak[0] & SAK_INCOMPLETE != 0;
            let l = usize::from(uid.len);
            if part[0] == CASCADE_TAG && incomplete {
                uid.bytes[l..l + 3].copy_from_slice(&part[1..4]);
                uid.len += 3;
            } else {
                uid.bytes[l..l + 4].copy_from_slice(&part[..4]);
                uid.len += 4;
            }
            uid.sak = sak[0];
            if !incomplete {
                return Ok(uid);
            }
        }
        // A triple-size (10-byte) UID would need cascade level 3: not supported.
        Err(Error::BadAnswer)
    }

    /// REQA then select: the UID of a card in the field, or `None`.
    pub fn read_uid(&mut self) -> Result<Option<Uid>, Error<SPI::Error>> {
        match self.request_a()? {
            None => Ok(None),
            Some(_) => self.select().map(Some),
        }
    }

    /// Gives the SPI device back.
    pub fn destroy(self) -> SPI {
        self.spi
    }

    /// Sends `data` (its last byte `tx_last_bits` long, 0 = 8) and receives into `rx`: the number
    /// of bytes received, or `None` when the card did not answer before the timer expired.
    fn transceive(
        &mut self,
        data: &[u8],
        tx_last_bits: u8,
        rx: &mut [u8],
    ) -> Result<Option<usize>, Error<SPI::Error>> {
        self.write(reg::COMMAND, CMD_IDLE)?;
        self.write(reg::COM_IRQ, IRQ_ALL)?;
        self.write(reg::FIFO_LEVEL, 0x80)?;
        self.write_fifo(data)?;
        self.write(reg::COMMAND, CMD_TRANSCEIVE)?;
        // StartSend.
        self.write(reg::BIT_FRAMING, 0x80 | tx_last_bits)?;
        let mut irq = 0;
        let mut done = false;
        for _ in 0..MAX_POLLS {
            irq = self.read(reg::COM_IRQ)?;
            if irq & (IRQ_RX | IRQ_IDLE | IRQ_ERR | IRQ_TIMER) != 0 {
                done = true;
                break;
            }
        }
        self.write(reg::BIT_FRAMING, 0x00)?;
        if !done {
            return Err(Error::Timeout);
        }
        if irq & (IRQ_RX | IRQ_IDLE | IRQ_ERR) == 0 {
            // Only the timer: no card.
            return Ok(None);
        }
        let err = self.read(reg::ERROR)?;
        if err & ERR_FATAL != 0 {
            return Err(Error::Protocol);
        }
        if err & ERR_COLL != 0 {
            return Err(Error::Collision);
        }
        let n = usize::from(self.read(reg::FIFO_LEVEL)? & 0x7F);
        if n > rx.len() {
            return Err(Error::BadAnswer);
        }
        self.read_fifo(&mut rx[..n])?;
        Ok(Some(n))
    }

    fn wait_reset(&mut self) -> Result<(), Error<SPI::Error>> {
        for _ in 0..MAX_POLLS {
            if self.read(reg::COMMAND)? & POWER_DOWN == 0 {
                return Ok(());
            }
        }
        Err(Error::Timeout)
    }

    fn write(&mut self, reg: u8, value: u8) -> Result<(), Error<SPI::Error>> {
        self.spi.write(&[reg << 1, value]).map_err(Error::Bus)
    }

    fn read(&mut self, reg: u8) -> Result<u8, Error<SPI::Error>> {
        let mut buf = [0x80 | (reg << 1), 0];
        self.spi.transfer_in_place(&mut buf).map_err(Error::Bus)?;
        Ok(buf[1])
    }

    fn write_fifo(&mut self, data: &[u8]) -> Result<(), Error<SPI::Error>> {
        let mut buf = [0u8; 10];
        buf[0] = reg::FIFO_DATA << 1;
        buf[1..=data.len()].copy_from_slice(data);
        self.spi.write(&buf[..=data.len()]).map_err(Error::Bus)
    }

    fn read_fifo(&mut self, out: &mut [u8]) -> Result<(), Error<SPI::Error>> {
        if out.is_empty() {
            return Ok(());
        }
        // Burst read: the address n times then a 0; byte i comes back at position i + 1.
        let mut buf = [0u8; 17];
        let n = out.len().min(16);
        buf[..n].fill(0x80 | (reg::FIFO_DATA << 1));
        buf[n] = 0;
        self.spi
            .transfer_in_place(&mut buf[..=n])
            .map_err(Error::Bus)?;
        out[..n].copy_from_slice(&buf[1..=n]);
        Ok(())
    }
}

/// ISO 14443-A CRC_A (CRC-16/ISO-IEC-14443-3-A: poly 0x1021 reflected, init 0x6363), sent low byte
/// first.
pub fn crc_a(data: &[u8]) -> u16 {
    let mut crc: u16 = 0x6363;
    for &b in data {
        let mut x = b ^ (crc as u8);
        x ^= x << 4;
        crc = (crc >> 8) ^ (u16::from(x) << 8) ^ (u16::from(x) << 3) ^ (u16::from(x) >> 4);
    }
    crc
}

#[cfg(test)]
mod tests;
