//! TI ADS1115 16-bit delta-sigma ADC over I2C.
//!
//! A current clamp with a voltage output (SCT-013-030: 1 V at 30 A RMS) biased at mid-supply is
//! read differentially (`AIN0 - AIN1`, AIN1 on the bias) in continuous mode at 860 samples/s, and
//! the samples in volts go to [`Device::on_sample`](crate::device::Device::on_sample).
//!
//! ```text
//! register 0x00 conversion (i16, big endian)
//! register 0x01 config: OS | MUX[14:12] | PGA[11:9] | MODE[8] | DR[7:5] | COMP (0b00011 = off)
//! ```

use embedded_hal::i2c::I2c;

/// Address with ADDR tied to GND (0x49 VDD, 0x4A SDA, 0x4B SCL).
pub const DEFAULT_ADDRESS: u8 = 0x48;

const REG_CONVERSION: u8 = 0x00;
const REG_CONFIG: u8 = 0x01;
/// OS bit: write 1 to start a single conversion; reads 1 when no conversion is running.
const OS: u16 = 1 << 15;
const MODE_SINGLE: u16 = 1 << 8;
/// Comparator disabled (COMP_QUE = 11), the power-on value of the low bits.
const COMP_OFF: u16 = 0b11;

/// How many times a single-shot read polls the OS bit before giving up. At 8 samples/s a
/// conversion takes 125 ms; each poll is one I2C transaction (~0.2 ms at 100 kHz).
pub const MAX_POLLS: u32 = 2000;

/// Errors of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The I2C bus failed (NACK: wrong address or chip absent).
    Bus(E),
    /// A single-shot conversion did not finish within [`MAX_POLLS`] polls.
    Timeout,
    /// A single-shot read was asked in continuous mode, or a continuous read in single-shot mode.
    WrongMode,
}

/// Which input is measured (the MUX field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// AIN0 - AIN1 (power-on default).
    Diff01,
    /// AIN0 - AIN3.
    Diff03,
    /// AIN1 - AIN3.
    Diff13,
    /// AIN2 - AIN3.
    Diff23,
    /// AIN0 - GND.
    Single0,
    /// AIN1 - GND.
    Single1,
    /// AIN2 - GND.
    Single2,
    /// AIN3 - GND.
    Single3,
}

impl Input {
    const fn bits(self) -> u16 {
        (match self {
            Input::Diff01 => 0,
            Input::Diff03 => 1,
            Input::Diff13 => 2,
            Input::Diff23 => 3,
            Input::Single0 => 4,
            Input::Single1 => 5,
            Input::Single2 => 6,
            Input::Single3 => 7,
        }) << 12
    }
}

/// Programmable gain: the full-scale range in volts (the PGA field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gain {
    /// ±6.144 V.
    Fsr6v144,
    /// ±4.096 V.
    Fsr4v096,
    /// ±2.048 V (power-on default).
    Fsr2v048,
    /// ±1.024 V.
    Fsr1v024,
    /// ±0.512 V.
    Fsr0v512,
    /// ±0.256 V.
    Fsr0v256,
}

impl Gain {
    const fn bits(self) -> u16 {
        (match self {
            Gain::Fsr6v144 => 0,
            Gain::Fsr4v096 => 1,
            Gain::Fsr2v048 => 2,
            Gain::Fsr1v024 => 3,
            Gain::Fsr0v512 => 4,
            Gain::Fsr0v256 => 5,
        }) << 9
    }

    /// The full-scale voltage (a raw value of 32768 would be this).
    pub const fn full_scale_v(self) -> f32 {
        match self {
            Gain::Fsr6v144 => 6.144,
            Gain::Fsr4v096 => 4.096,
            Gain::Fsr2v048 => 2.048,
            Gain::Fsr1v024 => 1.024,
            Gain::Fsr0v512 => 0.512,
            Gain::Fsr0v256 => 0.256,
        }
    }
}

/// Samples per second (the DR field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRate {
    /// 8 SPS.
    Sps8,
    /// 16 SPS.
    Sps16,
    /// 32 SPS.
    Sps32,
    /// 64 SPS.
    Sps64,
    /// 128 SPS (power-on default).
    Sps128,
    /// 250 SPS.
    Sps250,
    /// 475 SPS.
    Sps475,
    /// 860 SPS.
    Sps860,
}

impl DataRate {
    const fn bits(self) -> u16 {
        (match self {
            DataRate::Sps8 => 0,
            DataRate::Sps16 => 1,
            DataRate::Sps32 => 2,
            DataRate::Sps64 => 3,
            DataRate::Sps128 => 4,
            DataRate::Sps250 => 5,
            DataRate::Sps475 => 6,
            DataRate::Sps860 => 7,
        }) << 5
    }
}

/// Conversion mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One conversion per request, then power-down (power-on default).
    SingleShot,
    /// Converts continuously; the conversion register always holds the latest sample.
    Continuous,
}

/// The measurement setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Input multiplexer.
    pub input: Input,
    /// Full-scale range.
    pub gain: Gain,
    /// Samples per second.
    pub rate: DataRate,
    /// Single-shot or continuous.
    pub mode: Mode,
}

impl Config {
    /// The power-on configuration of the chip.
    pub const POWER_ON: Config = Config {
        input: Input::Diff01,
        gain: Gain::Fsr2v048,
        rate: DataRate::Sps128,
        mode: Mode::SingleShot,
    };

    /// The value of the config register (OS clear, comparator off).
    pub const fn register(&self) -> u16 {
        let mode = match self.mode {
            Mode::SingleShot => MODE_SINGLE,
            Mode::Continuous => 0,
        };
        self.input.bits() | self.gain.bits() | mode | self.rate.bits() | COMP_OFF
    }
}

/// An ADS1115 on an I2C bus.
pub struct Ads1115<I2C> {
    i2c: I2C,
    address: u8,
    config: Config,
}

impl<I2C: I2c> Ads1115<I2C> {
    /// A driver for the chip at `address`; nothing is sent until [`Ads1115::configure`].
    pub fn new(i2c: I2C, address: u8) -> Self {
        Ads1115 {
            i2c,
            address,
            config: Config::POWER_ON,
        }
    }

    /// Writes the configuration; in continuous mode conversions start now.
    pub fn configure(&mut self, config: Config) -> Result<(), Error<I2C::Error>> {
        self.write_config(config.register())?;
        self.config = config;
        Ok(())
    }

    /// The configuration last written.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Single-shot: starts a conversion, polls until it is done, returns it in volts.
    pub fn read_single(&mut self) -> Result<f32, Error<I2C::Error>> {
        if self.config.mode != Mode::SingleShot {
            return Err(Error::WrongMode);
        }
        self.write_config(self.config.register() | OS)?;
        for _ in 0..MAX_POLLS {
            if self.read_register(REG_CONFIG)? & OS != 0 {
                let raw = self.read_register(REG_CONVERSION)? as i16;
                return Ok(self.volts(raw));
            }
        }
        Err(Error::Timeout)
    }

    /// Continuous: the latest conversion in volts.
    pub fn read(&mut self) -> Result<f32, Error<I2C::Error>> {
        if self.config.mode != Mode::Continuous {
            return Err(Error::WrongMode);
        }
        let raw = self.read_register(REG_CONVERSION)? as i16;
        Ok(self.volts(raw))
    }

    /// A raw conversion value in volts at the configured gain.
    pub fn volts(&self, raw: i16) -> f32 {
        f32::from(raw) * self.config.gain.full_scale_v() / 32768.0
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.i2c
    }

    fn write_config(&mut self, value: u16) -> Result<(), Error<I2C::Error>> {
        let [hi, lo] = value.to_be_bytes();
        self.i2c
            .write(self.address, &[REG_CONFIG, hi, lo])
            .map_err(Error::Bus)
    }

    fn read_register(&mut self, reg: u8) -> Result<u16, Error<I2C::Error>> {
        let mut buf = [0u8; 2];
        self.i2c
            .write_read(self.address, &[reg], &mut buf)
            .map_err(Error::Bus)?;
        Ok(u16::from_be_bytes(buf))
    }
}

#[cfg(test)]
mod tests {
    use std::vec;

    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    use super::*;

    const A: u8 = DEFAULT_ADDRESS;

    const CLAMP: Config = Config {
        input: Input::Diff01,
        gain: Gain::Fsr1v024,
        rate: DataRate::Sps860,
        mode: Mode::Continuous,
    };

    #[test]
    fn power_on_config_register_matches_the_datasheet() {
        assert_eq!(Config::POWER_ON.register(), 0x8583 & !OS);
    }

    #[test]
    fn continuous_clamp_reads_volts() {
        // MUX 000, PGA 011, MODE 0, DR 111, COMP 00011 = 0x06E3
        let mut i2c = Mock::new(&[
            T::write(A, vec![0x01, 0x06, 0xE3]),
            T::write_read(A, vec![0x00], vec![0x40, 0x00]),
            T::write_read(A, vec![0x00], vec![0xC0, 0x00]),
            T::write_read(A, vec![0x00], vec![0x7F, 0xFF]),
        ]);
        let mut adc = Ads1115::new(i2c.clone(), A);
        adc.configure(CLAMP).unwrap();
        assert_eq!(adc.read().unwrap(), 0.512);
        assert_eq!(adc.read().unwrap(), -0.512);
        let max = adc.read().unwrap();
        assert!((max - 1.024).abs() < 1e-4, "{max}");
        assert_eq!(adc.read_single(), Err(Error::WrongMode));
        adc.destroy();
        i2c.done();
    }

    #[test]
    fn single_shot_polls_until_the_conversion_is_done() {
        // Single-ended AIN2, ±4.096 V, single-shot, 128 SPS: 0x6000|0x0200|0x0100|0x0080|0x03
        let cfg = Config {
            input: Input::Single2,
            gain: Gain::Fsr4v096,
            rate: DataRate::Sps128,
            mode: Mode::SingleShot,
        };
        assert_eq!(cfg.register(), 0x6383);
        let mut i2c = Mock::new(&[
            T::write(A, vec![0x01, 0x63, 0x83]),
            T::write(A, vec![0x01, 0xE3, 0x83]),
            // Busy twice (OS = 0), then done.
            T::write_read(A, vec![0x01], vec![0x63, 0x83]),
            T::write_read(A, vec![0x01], vec![0x63, 0x83]),
            T::write_read(A, vec![0x01], vec![0xE3, 0x83]),
            T::write_read(A, vec![0x00], vec![0x20, 0x00]),
        ]);
        let mut adc = Ads1115::new(i2c.clone(), A);
        adc.configure(cfg).unwrap();
        assert_eq!(adc.read_single().unwrap(), 1.024);
        assert_eq!(adc.read(), Err(Error::WrongMode));
        adc.destroy();
        i2c.done();
    }

    #[test]
    fn a_missing_chip_is_a_bus_error() {
        let mut i2c =
            Mock::new(&[T::write(0x49, vec![0x01, 0x06, 0xE3]).with_error(ErrorKind::Other)]);
        let mut adc = Ads1115::new(i2c.clone(), 0x49);
        assert_eq!(adc.configure(CLAMP), Err(Error::Bus(ErrorKind::Other)));
        // The failed write did not change the recorded config.
        assert_eq!(adc.config(), Config::POWER_ON);
        adc.destroy();
        i2c.done();
    }

    #[test]
    fn single_shot_gives_up_after_max_polls() {
        let mut expect = vec![T::write(A, vec![0x01, 0x85, 0x83])];
        for _ in 0..MAX_POLLS {
            expect.push(T::write_read(A, vec![0x01], vec![0x05, 0x83]));
        }
        let mut i2c = Mock::new(&expect);
        let mut adc = Ads1115::new(i2c.clone(), A);
        assert_eq!(adc.read_single(), Err(Error::Timeout));
        adc.destroy();
        i2c.done();
    }
}
