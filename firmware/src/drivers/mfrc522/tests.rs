use std::vec;
use std::vec::Vec;

use embedded_hal::spi::{ErrorKind, ErrorType, Operation};
use embedded_hal_mock::eh1::spi::{Mock, Transaction as T};

use super::*;

/// One register write: a chip-select transaction of two bytes.
fn w(reg: u8, value: u8) -> Vec<T<u8>> {
    vec![
        T::transaction_start(),
        T::write_vec(vec![reg << 1, value]),
        T::transaction_end(),
    ]
}

/// One register read answering `value`.
fn r(reg: u8, value: u8) -> Vec<T<u8>> {
    vec![
        T::transaction_start(),
        T::transfer_in_place(vec![0x80 | (reg << 1), 0], vec![0, value]),
        T::transaction_end(),
    ]
}

/// The full register dialogue of one transceive whose IRQ register reads `irqs` in turn, then
/// (when the card answered) ErrorReg `err` and a FIFO holding `answer`.
fn transceive(data: &[u8], bits: u8, irqs: &[u8], err: u8, answer: &[u8]) -> Vec<T<u8>> {
    let mut t = Vec::new();
    t.extend(w(reg::COMMAND, 0x00));
    t.extend(w(reg::COM_IRQ, 0x7F));
    t.extend(w(reg::FIFO_LEVEL, 0x80));
    let mut fifo = vec![reg::FIFO_DATA << 1];
    fifo.extend_from_slice(data);
    t.extend([
        T::transaction_start(),
        T::write_vec(fifo),
        T::transaction_end(),
    ]);
    t.extend(w(reg::COMMAND, 0x0C));
    t.extend(w(reg::BIT_FRAMING, 0x80 | bits));
    for &irq in irqs {
        t.extend(r(reg::COM_IRQ, irq));
    }
    t.extend(w(reg::BIT_FRAMING, 0x00));
    let last = *irqs.last().unwrap();
    if last & 0x32 == 0 {
        return t; // timer only: no card
    }
    t.extend(r(reg::ERROR, err));
    if err & 0x1B != 0 {
        return t;
    }
    t.extend(r(reg::FIFO_LEVEL, answer.len() as u8));
    if !answer.is_empty() {
        let mut addr = vec![0x80 | (reg::FIFO_DATA << 1); answer.len()];
        addr.push(0);
        let mut resp = vec![0];
        resp.extend_from_slice(answer);
        t.extend([
            T::transaction_start(),
            T::transfer_in_place(addr, resp),
            T::transaction_end(),
        ]);
    }
    t
}

fn reqa(atqa: &[u8]) -> Vec<T<u8>> {
    let mut t = w(reg::COLL, 0x80);
    t.extend(transceive(&[0x26], 7, &[0x00, 0x30], 0, atqa));
    t
}

/// Anticollision + select of one cascade level: `part` is the 4 bytes the card sends.
fn level(sel: u8, part: [u8; 4], sak: u8) -> Vec<T<u8>> {
    let bcc = part[0] ^ part[1] ^ part[2] ^ part[3];
    let mut answer = part.to_vec();
    answer.push(bcc);
    let mut t = transceive(&[sel, 0x20], 0, &[0x30], 0, &answer);
    let mut frame = vec![sel, 0x70];
    frame.extend_from_slice(&answer);
    let crc = crc_a(&frame).to_le_bytes();
    frame.extend_from_slice(&crc);
    let sak_crc = crc_a(&[sak]).to_le_bytes();
    t.extend(transceive(
        &frame,
        0,
        &[0x30],
        0,
        &[sak, sak_crc[0], sak_crc[1]],
    ));
    t
}

fn key() -> fabmeter_protocol::BadgeKey {
    fabmeter_protocol::BadgeKey::new(core::array::from_fn(|i| i as u8))
}

#[test]
fn crc_a_matches_the_hlta_frame() {
    // HLTA is sent as 50 00 57 CD (ISO 14443-3).
    assert_eq!(crc_a(&[0x50, 0x00]).to_le_bytes(), [0x57, 0xCD]);
}

#[test]
fn init_resets_sets_the_timer_and_turns_the_antenna_on() {
    let mut t = w(reg::COMMAND, 0x0F);
    t.extend(r(reg::COMMAND, 0x30)); // still in reset (PowerDown)
    t.extend(r(reg::COMMAND, 0x20));
    t.extend(w(reg::T_MODE, 0x80));
    t.extend(w(reg::T_PRESCALER, 0xA9));
    t.extend(w(reg::T_RELOAD_H, 0x03));
    t.extend(w(reg::T_RELOAD_L, 0xE8));
    t.extend(w(reg::TX_ASK, 0x40));
    t.extend(w(reg::MODE, 0x3D));
    t.extend(r(reg::TX_CONTROL, 0x80));
    t.extend(w(reg::TX_CONTROL, 0x83));
    t.extend(r(reg::VERSION, 0x92));
    let mut spi = Mock::new(&t);
    let mut rc = Mfrc522::new(spi.clone());
    rc.init().unwrap();
    assert_eq!(rc.version().unwrap(), 0x92);
    rc.destroy();
    spi.done();
}

#[test]
fn no_card_is_none() {
    let mut t = w(reg::COLL, 0x80);
    // Timer interrupt only.
    t.extend(transceive(&[0x26], 7, &[0x00, 0x00, 0x01], 0, &[]));
    let mut spi = Mock::new(&t);
    let mut rc = Mfrc522::new(spi.clone());
    assert_eq!(rc.read_uid().unwrap(), None);
    rc.destroy();
    spi.done();
}

#[test]
fn reads_a_4_byte_uid() {
    let mut t = reqa(&[0x04, 0x00]);
    t.extend(level(0x93, [0x04, 0xa1, 0xb2, 0xc3], 0x08));
    let mut spi = Mock::new(&t);
    let mut rc = Mfrc522::new(spi.clone());
    let uid = rc.read_uid().unwrap().expect("a card");
    assert_eq!(uid.as_bytes(), &[0x04, 0xa1, 0xb2, 0xc3]);
    assert_eq!(uid.sak(), 0x08);
    assert_eq!(
        key().hash(uid.as_bytes()).to_hex().as_str(),
        "ba279e0c1e5c2464"
    );
    rc.destroy();
    spi.done();
}

#[test]
fn reads_a_7_byte_uid_over_two_cascade_levels() {
    let mut t = reqa(&[0x44, 0x00]);
    t.extend(level(0x93, [0x88, 0x04, 0xd2, 0xe3], 0x04));
    t.extend(level(0x95, [0xf4, 0xa5, 0xb6, 0x07], 0x00));
    let mut spi = Mock::new(&t);
    let mut rc = Mfrc522::new(spi.clone());
    let uid = rc.read_uid().unwrap().expect("a card");
    assert_eq!(uid.as_bytes(), &[0x04, 0xd2, 0xe3, 0xf4, 0xa5, 0xb6, 0x07]);
    assert_eq!(
        key().hash(uid.as_bytes()).to_hex().as_str(),
        "05a58c24861524d1"
    );
    rc.destroy();
    spi.done();
}

#[test]
fn a_bad_bcc_is_refused() {
    let mut t = reqa(&[0x04, 0x00]);
    t.extend(transceive(
        &[0x93, 0x20],
        0,
        &[0x30],
        0,
        &[1, 2, 3, 4, 0xFF],
    ));
    let mut spi = Mock::new(&t);
    let mut rc = Mfrc522::new(spi.clone());
    assert_eq!(rc.read_uid(), Err(Error::BadAnswer));
    rc.destroy();
    spi.done();
}

#[test]
fn two_cards_are_a_collision() {
    let mut t = reqa(&[0x04, 0x00]);
    t.extend(transceive(&[0x93, 0x20], 0, &[0x32], 0x08, &[]));
    let mut spi = Mock::new(&t);
    let mut rc = Mfrc522::new(spi.clone());
    assert_eq!(rc.read_uid(), Err(Error::Collision));
    rc.destroy();
    spi.done();
}

/// An SPI device whose every transaction fails (the mock cannot inject SPI errors).
struct Broken;
impl ErrorType for Broken {
    type Error = ErrorKind;
}
impl SpiDevice for Broken {
    fn transaction(&mut self, _: &mut [Operation<'_, u8>]) -> Result<(), ErrorKind> {
        Err(ErrorKind::ModeFault)
    }
}

#[test]
fn a_bus_error_is_reported() {
    let mut rc = Mfrc522::new(Broken);
    assert_eq!(rc.init(), Err(Error::Bus(ErrorKind::ModeFault)));
    assert_eq!(rc.version(), Err(Error::Bus(ErrorKind::ModeFault)));
    let _bus: Broken = rc.destroy();
}
