//! Sensor drivers, generic over embedded-hal 1.0 (in the style of ads1x1x-rs): each takes the bus
//! (an [`SpiDevice`](embedded_hal::spi::SpiDevice) or an [`I2c`](embedded_hal::i2c::I2c)), reports
//! bus failures as `Error::Bus(E)` next to its own errors, and gives the bus back with `destroy()`.
//! Both are tested on the host against embedded-hal-mock transaction lists.
//!
//! - [`mfrc522`]: the NXP MFRC522 13.56 MHz reader (ISO 14443-A badges): init, REQA, anticollision
//!   and select at cascade levels 1 and 2, giving a 4- or 7-byte UID.
//! - [`ads1115`]: the TI ADS1115 16-bit ADC (current clamp): one input, gain, data rate,
//!   single-shot or continuous, samples in volts.

pub mod ads1115;
pub mod mfrc522;
