//! fabmeter agent: the device core hosted on a Linux board, and the workshop simulator.
//!
//! **Skeleton.** Nothing here works yet: the agent arrives with its own issue. The crate exists so the
//! workspace has its final shape.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use fabmeter_protocol as protocol;
