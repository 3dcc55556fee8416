//! fabmeter collector: ingest, ledger, time series, billing, maintenance and HTTP API.
//!
//! **Skeleton.** Nothing here works yet: the collector arrives with its own issue. The crate exists so
//! the workspace has its final shape.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use fabmeter_protocol as protocol;
