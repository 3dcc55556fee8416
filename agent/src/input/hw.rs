//! Hardware inputs on Linux (a Raspberry Pi or any board with GPIO, I2C and SPI character
//! devices) through `linux-embedded-hal`, with the firmware's own drivers on top:
//!
//! - run signal: a GPIO line polled every [`RUN_POLL_MS`], debounced ([`Debounce`]), sent at every
//!   change and every [`RUN_HEARTBEAT_MS`] (the device's dwell timers see time pass);
//! - current clamp: the firmware's [`Ads1115`] driver on an `I2cdev`, continuous at 860 samples/s,
//!   every sample sent as [`Reading::Sample`] from a thread of its own;
//! - badge: the firmware's [`Mfrc522`] driver on a `SpidevDevice`, polled every
//!   [`CARD_POLL_MS`]; [`CardPresence`] turns polls into one badge per presentation;
//! - relay: a GPIO output line ([`open_relay_line`]).
//!
//! The `active_low` of a GPIO line is applied by the kernel (the line is requested active-low):
//! readings are logical (`true`: running) and the relay's `set_high` closes it. The device config's
//! `run_signal.active_low` must then stay `false`.
//!
//! Opening a missing or forbidden device gives an [`InputError`] naming the path and the fix.

use std::time::{Duration, Instant};

use embedded_hal::digital::InputPin;
use fabmeter_firmware::drivers::ads1115::{self, Ads1115, DataRate, Gain, Input, Mode};
use fabmeter_firmware::drivers::mfrc522::Mfrc522;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
use linux_embedded_hal::{CdevPin, I2cdev, SpidevDevice};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{InputError, Reading, Tagged};

/// Run-signal polling period, ms.
pub const RUN_POLL_MS: u64 = 50;
/// A level must hold this long to count, ms.
pub const RUN_DEBOUNCE_MS: u64 = 100;
/// The level is sent again at least this often, ms.
pub const RUN_HEARTBEAT_MS: u64 = 10_000;
/// MFRC522 polling period, ms.
pub const CARD_POLL_MS: u64 = 100;
/// Polls without an answer after which the card has left. A selected card stays silent to the
/// next REQA (it goes back to idle and answers the one after), so one miss is not a departure.
pub const CARD_MISSES_TO_LEAVE: u32 = 3;
/// The ADS1115 setup of docs/FIRMWARE.md: SCT-013-030 between AIN0 and AIN1, ±1.024 V,
/// continuous at 860 samples/s.
pub const ADS1115_CONFIG: ads1115::Config = ads1115::Config {
    input: Input::Diff01,
    gain: Gain::Fsr1v024,
    rate: DataRate::Sps860,
    mode: Mode::Continuous,
};

/// A debounced level with a heartbeat.
#[derive(Debug, Clone)]
pub struct Debounce {
    debounce_ms: u64,
    heartbeat_ms: u64,
    stable: Option<bool>,
    candidate: Option<(bool, u64)>,
    last_sent: u64,
}

impl Debounce {
    /// A level that must hold `debounce_ms` to change, sent again every `heartbeat_ms`.
    pub fn new(debounce_ms: u64, heartbeat_ms: u64) -> Debounce {
        Debounce {
            debounce_ms,
            heartbeat_ms,
            stable: None,
            candidate: None,
            last_sent: 0,
        }
    }

    /// One sample at `now` (ms): the level to send, if a change was confirmed, this is the first
    /// sample, or the heartbeat is due.
    pub fn sample(&mut self, now: u64, level: bool) -> Option<bool> {
        let Some(stable) = self.stable else {
            self.stable = Some(level);
            self.last_sent = now;
            return Some(level);
        };
        let mut send = false;
        if level == stable {
            self.candidate = None;
        } else {
            let since = match self.candidate {
                Some((l, since)) if l == level => since,
                _ => {
                    self.candidate = Some((level, now));
                    now
                }
            };
            if now.saturating_sub(since) >= self.debounce_ms {
                self.stable = Some(level);
                self.candidate = None;
                send = true;
            }
        }
        if send || now.saturating_sub(self.last_sent) >= self.heartbeat_ms {
            self.last_sent = now;
            return self.stable;
        }
        None
    }
}

/// Reads a pin and feeds the debouncer; a read error is reported, not guessed.
pub fn poll_pin<P: InputPin>(
    pin: &mut P,
    debounce: &mut Debounce,
    now: u64,
) -> Result<Option<bool>, P::Error> {
    let level = pin.is_high()?;
    Ok(debounce.sample(now, level))
}

/// One badge per presentation: a UID is reported when it appears, again only after it left.
#[derive(Debug, Clone, Default)]
pub struct CardPresence {
    present: Option<Vec<u8>>,
    misses: u32,
}

impl CardPresence {
    /// One poll: the UID read, or none. Returns the UID of a new presentation.
    pub fn poll(&mut self, uid: Option<&[u8]>) -> Option<Vec<u8>> {
        match uid {
            Some(uid) => {
                self.misses = 0;
                if self.present.as_deref() == Some(uid) {
                    return None;
                }
                self.present = Some(uid.to_vec());
                Some(uid.to_vec())
            }
            None => {
                self.misses = self.misses.saturating_add(1);
                if self.misses >= CARD_MISSES_TO_LEAVE {
                    self.present = None;
                }
                None
            }
        }
    }
}

fn open_error(what: &str, path: &str, e: impl std::fmt::Display, fix: &str) -> InputError {
    let text = e.to_string();
    let lower = text.to_lowercase();
    let (problem, fix) = if lower.contains("no such file") || lower.contains("not found") {
        (format!("{path} does not exist"), fix.to_string())
    } else if lower.contains("permission denied") {
        (
            format!("{path}: permission denied"),
            "add the agent's user to the device's group (gpio, i2c or spi: \
             sudo usermod -aG gpio,i2c,spi <user>, then log in again)"
                .to_string(),
        )
    } else {
        (format!("{path}: {text}"), fix.to_string())
    };
    InputError {
        what: what.into(),
        problem,
        fix,
    }
}

const GPIO_FIX: &str = "name an existing chip (ls /dev/gpiochip*; on a Raspberry Pi the 40-pin \
    header is /dev/gpiochip0, gpiochip4 on a Pi 5) and add the user to the gpio group";

/// Requests a GPIO line (input or output), active-low if asked, as an embedded-hal pin.
pub fn open_line(
    what: &str,
    chip: &str,
    line: u32,
    output: bool,
    active_low: bool,
) -> Result<CdevPin, InputError> {
    let mut c = Chip::new(chip).map_err(|e| open_error(what, chip, e, GPIO_FIX))?;
    let l = c.get_line(line).map_err(|e| InputError {
        what: what.into(),
        problem: format!("{chip} has no line {line}: {e}"),
        fix: format!("use a line below {} (gpioinfo {chip})", c.num_lines()),
    })?;
    let mut flags = if output {
        LineRequestFlags::OUTPUT
    } else {
        LineRequestFlags::INPUT
    };
    if active_low {
        flags |= LineRequestFlags::ACTIVE_LOW;
    }
    let handle = l
        .request(flags, 0, "fabmeter-agent")
        .map_err(|e| InputError {
            what: what.into(),
            problem: format!("{chip} line {line} cannot be requested: {e}"),
            fix: "free the line (another program or a kernel driver holds it: gpioinfo)".into(),
        })?;
    CdevPin::new(handle).map_err(|e| open_error(what, chip, e, GPIO_FIX))
}

/// The relay's output line, released (inactive) at open.
pub fn open_relay_line(
    what: &str,
    chip: &str,
    line: u32,
    active_low: bool,
) -> Result<CdevPin, InputError> {
    open_line(what, chip, line, true, active_low)
}

/// Opens the ADS1115 on `bus` at `address` and starts continuous conversions.
pub fn open_ads1115(what: &str, bus: &str, address: u8) -> Result<Ads1115<I2cdev>, InputError> {
    let i2c = I2cdev::new(bus).map_err(|e| {
        open_error(
            what,
            bus,
            e,
            "enable I2C (sudo raspi-config → Interface Options → I2C, or dtparam=i2c_arm=on in \
             config.txt), reboot, and add the user to the i2c group",
        )
    })?;
    let mut adc = Ads1115::new(i2c, address);
    adc.configure(ADS1115_CONFIG).map_err(|e| InputError {
        what: what.into(),
        problem: format!("no ADS1115 answers at 0x{address:02x} on {bus}: {e:?}"),
        fix: "check the wiring and the address (i2cdetect -y 1; ADDR to GND is 0x48)".into(),
    })?;
    Ok(adc)
}

/// Opens the MFRC522 on `spi` (mode 0, 4 MHz) and initialises it.
pub fn open_mfrc522(what: &str, spi: &str) -> Result<Mfrc522<SpidevDevice>, InputError> {
    let mut dev = SpidevDevice::open(spi).map_err(|e| {
        open_error(
            what,
            spi,
            e,
            "enable SPI (sudo raspi-config → Interface Options → SPI, or dtparam=spi=on in \
             config.txt), reboot, and add the user to the spi group",
        )
    })?;
    dev.0
        .configure(
            &SpidevOptions::new()
                .bits_per_word(8)
                .max_speed_hz(4_000_000)
                .mode(SpiModeFlags::SPI_MODE_0)
                .build(),
        )
        .map_err(|e| open_error(what, spi, e, "check that it is an SPI device"))?;
    let mut reader = Mfrc522::new(dev);
    reader.init().map_err(|e| InputError {
        what: what.into(),
        problem: format!("no MFRC522 answers on {spi}: {e:?}"),
        fix: "check the wiring (docs/AGENT-INPUTS.md) and that RST is high".into(),
    })?;
    Ok(reader)
}

/// Polls a run-signal pin until `shutdown` (a thread: GPIO reads block briefly).
pub fn run_signal_thread(
    what: String,
    mut pin: CdevPin,
    machine: usize,
    tx: mpsc::Sender<Tagged>,
    shutdown: CancellationToken,
) {
    let origin = Instant::now();
    let mut debounce = Debounce::new(RUN_DEBOUNCE_MS, RUN_HEARTBEAT_MS);
    let mut failing = false;
    while !shutdown.is_cancelled() {
        let now = origin.elapsed().as_millis() as u64;
        match poll_pin(&mut pin, &mut debounce, now) {
            Ok(Some(level)) => {
                if tx
                    .blocking_send((machine, Reading::RunSignal(level)))
                    .is_err()
                {
                    return;
                }
                failing = false;
            }
            Ok(None) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::error!(%what, error = %e, "run signal: read failed");
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(RUN_POLL_MS));
    }
}

/// Samples the ADS1115 continuously until `shutdown`.
pub fn ads1115_thread(
    what: String,
    mut adc: Ads1115<I2cdev>,
    machine: usize,
    tx: mpsc::Sender<Tagged>,
    shutdown: CancellationToken,
) {
    // One conversion every 1/860 s.
    let period = Duration::from_micros(1_163);
    let mut errors = 0u64;
    while !shutdown.is_cancelled() {
        match adc.read() {
            Ok(volts) => {
                if tx
                    .blocking_send((machine, Reading::Sample { volts }))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::error!(%what, error = ?e, errors, "current clamp: ADC read failed");
                }
            }
        }
        std::thread::sleep(period);
    }
}

/// Polls the MFRC522 until `shutdown`; one badge per presentation.
pub fn mfrc522_thread(
    what: String,
    mut reader: Mfrc522<SpidevDevice>,
    machine: usize,
    tx: mpsc::Sender<Tagged>,
    shutdown: CancellationToken,
) {
    let mut presence = CardPresence::default();
    while !shutdown.is_cancelled() {
        let uid = match reader.read_uid() {
            Ok(uid) => uid,
            Err(e) => {
                // A collision or a card leaving mid-frame: no card this time.
                tracing::debug!(%what, error = ?e, "badge: read failed");
                None
            }
        };
        if let Some(uid) = presence.poll(uid.as_ref().map(|u| u.as_bytes())) {
            if tx.blocking_send((machine, Reading::Badge(uid))).is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(CARD_POLL_MS));
    }
}

#[cfg(test)]
mod tests;
