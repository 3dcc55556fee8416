//! fabmeter firmware: the device core (meter, sessions, allow-list, journal) over embedded-hal.
//!
//! **Skeleton.** Nothing here works yet: the device core arrives with the firmware issue. The crate
//! exists so that the workspace has its final shape and the dependency floors (firmware on protocol,
//! no `std`) are enforced by the build from the start.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use fabmeter_protocol as protocol;
