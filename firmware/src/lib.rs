//! fabmeter firmware: the device core (meter, sessions, allow-list, journal) over embedded-hal.
//!
//! Every module is sans-IO: it takes inputs and the current uptime `now` (milliseconds since start,
//! passed as an argument, never read from a clock) and returns values or events. Storage goes through
//! an `embedded-storage` [`NorFlash`](embedded_storage::nor_flash::NorFlash); the relay is an
//! embedded-hal [`OutputPin`](embedded_hal::digital::OutputPin).
//!
//! - [`meter`]: samples or a run signal → off / idle / busy, energy.
//! - [`session`]: sessions, exact busy/idle seconds, progress and end events.
//! - [`access`]: allow-list decisions and deny reasons.
//! - [`journal`]: the power-cut-safe event journal and persisted state; its module docs give the
//!   flash layout, the recovery argument and the full-journal policy.
//! - [`storage`]: flash layout, A/B config store, CRC, and [`storage::RamFlash`] for tests.
//! - [`device`]: the core that composes them and assigns `(boot, seq)`.
//!
//! - [`drivers`]: MFRC522 badge reader (SPI) and ADS1115 ADC (I2C), generic over embedded-hal 1.0.
//! - [`mqtt`]: a sans-IO MQTT 3.1.1 client (birth, last will, QoS 1 events one in flight,
//!   config/cmd subscriptions, keep-alive, reconnect with backoff) and its embedded-io shell.
//!
//! The MCU image for QEMU's `lm3s6965evb` is `src/bin/fabmeter-qemu.rs` (see `docs/FIRMWARE.md`).
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![allow(clippy::result_large_err)]

#[cfg(test)]
extern crate std;

pub use fabmeter_protocol as protocol;

pub mod access;
pub mod device;
pub mod drivers;
pub mod journal;
pub mod meter;
pub mod mqtt;
pub mod session;
pub mod storage;
