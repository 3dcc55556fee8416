//! fabmeter collector: ingest, ledger, time series, billing, maintenance and HTTP API.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use fabmeter_protocol as protocol;

pub mod accounting;
pub mod api;
pub mod app;
pub mod auth;
pub mod billing;
pub mod config;
pub mod costs;
pub mod device_keys;
pub mod ingest;
pub mod init;
pub mod ledger;
pub mod maintenance;
pub mod metrics;
pub mod netview;
pub mod network;
pub mod privacy;
pub mod progress;
pub mod provision;
pub mod series;
pub mod session;
pub mod timeseries;
