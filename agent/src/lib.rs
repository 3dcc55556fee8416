//! fabmeter agent: the device core hosted on Linux, and the workshop simulator.
//!
//! - [`sim`]: a simulated workshop (machines of several kinds, members with habits, opening hours),
//!   each machine the firmware's device core behind a real MQTT connection. Used by
//!   `fabmeter-agent simulate` and by the one-command demo.
//!
//! The real-device agent (`fabmeter-agent run`: GPIO, ADC, badge readers, smart plugs, disk
//! journal) is not implemented yet.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use fabmeter_protocol as protocol;

pub mod input;
pub mod sim;
