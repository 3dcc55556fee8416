use super::*;
use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction};

#[test]
fn debounce_sends_first_level_changes_that_hold_and_heartbeats() {
    let mut d = Debounce::new(100, 10_000);
    assert_eq!(d.sample(0, false), Some(false), "the first level is sent");
    assert_eq!(d.sample(50, false), None);
    // A 60 ms glitch: not a change.
    assert_eq!(d.sample(100, true), None);
    assert_eq!(d.sample(150, true), None);
    assert_eq!(d.sample(200, false), None);
    // A level that holds 100 ms: sent once.
    assert_eq!(d.sample(250, true), None);
    assert_eq!(d.sample(300, true), None);
    assert_eq!(d.sample(350, true), Some(true));
    assert_eq!(d.sample(400, true), None);
    // Heartbeat: the level again 10 s after it was last sent.
    assert_eq!(d.sample(10_300, true), None);
    assert_eq!(d.sample(10_350, true), Some(true));
    // Bouncing contacts (alternating every poll) never settle: no change.
    for i in 0..10 {
        assert_eq!(d.sample(10_400 + i * 50, i % 2 == 0), None);
    }
}

#[test]
fn pins_are_read_through_embedded_hal() {
    let mut pin = PinMock::new(&[
        Transaction::get(State::Low),
        Transaction::get(State::High),
        Transaction::get(State::High),
        Transaction::get(State::High),
    ]);
    let mut d = Debounce::new(100, 10_000);
    let got: Vec<Option<bool>> = [0, 50, 100, 150]
        .iter()
        .map(|&t| poll_pin(&mut pin, &mut d, t).expect("read"))
        .collect();
    assert_eq!(got, vec![Some(false), None, None, Some(true)]);
    pin.done();
}

#[test]
fn one_badge_per_presentation() {
    let a: &[u8] = &[4, 0xa2, 0x2b, 0x1a];
    let b: &[u8] = &[1, 2, 3, 4];
    let mut p = CardPresence::default();
    // A selected card answers every other REQA while it stays in the field.
    let polls = [
        Some(a),
        None,
        Some(a),
        None,
        Some(a), // one presentation
        None,
        None,
        None,    // left
        Some(a), // presented again
        None,
        Some(b), // swapped for another card at once
        None,
        None,
        None,
        None,
    ];
    let got: Vec<Vec<u8>> = polls.iter().filter_map(|u| p.poll(*u)).collect();
    assert_eq!(got, vec![a.to_vec(), a.to_vec(), b.to_vec()]);
}

#[test]
fn missing_devices_name_the_path_and_the_fix() {
    let e = open_line("machine 0 usage", "/dev/gpiochip-none", 17, false, false)
        .err()
        .expect("no chip");
    let t = e.to_string();
    assert!(t.contains("/dev/gpiochip-none does not exist"), "{t}");
    assert!(t.contains("gpio group"), "{t}");
    let e = open_ads1115("machine 0 usage", "/dev/i2c-none", 0x48)
        .err()
        .expect("no bus");
    let t = e.to_string();
    assert!(t.contains("/dev/i2c-none does not exist"), "{t}");
    assert!(t.contains("raspi-config") && t.contains("i2c group"), "{t}");
    let e = open_mfrc522("machine 0 badge", "/dev/spidev-none")
        .err()
        .expect("no spi");
    let t = e.to_string();
    assert!(t.contains("/dev/spidev-none does not exist"), "{t}");
    assert!(t.contains("raspi-config") && t.contains("spi group"), "{t}");
}
