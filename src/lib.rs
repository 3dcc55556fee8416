//! fabmeter: the one-command demo, composing the collector library, an embedded MQTT broker and
//! the agent's workshop simulator. Production sites run `fabmeter-collector` against Mosquitto or
//! another broker instead (docs/COLLECTOR.md).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod broker;
pub mod demo;
