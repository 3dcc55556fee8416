//! fabmeter agent: the device core hosted on Linux, and the workshop simulator.
//!
//! - [`sim`]: a simulated workshop (machines of several kinds, members with habits, opening hours),
//!   each machine the firmware's device core behind a real MQTT connection. Used by
//!   `fabmeter-agent simulate` and by the one-command demo.
//!
//! - [`input`]: the inputs of a real machine (smart plugs over MQTT, GPIO run signal, ADS1115 clamp,
//!   badge readers: stdin, keyboard-wedge through evdev, MFRC522; the relay), each a source of
//!   readings for the device core (docs/AGENT-INPUTS.md).
//!
//! - [`run`]: the agent for real machines (`fabmeter-agent run --config agent.toml`): each machine
//!   a firmware device core with its journal on disk ([`disk`]), its inputs ([`input`]) and its own
//!   MQTT connection ([`link`]), configured by [`config`] (docs/AGENT.md).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use fabmeter_protocol as protocol;

pub mod config;
pub mod disk;
pub mod input;
pub mod link;
pub mod run;
pub mod sim;
