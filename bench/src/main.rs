//! fabmeter benchmarks (docs/BENCHMARKS.md). Run through `scripts/bench.sh` (release mode).
//!
//! - `ingest`: QoS 1 events from several rumqttc publishers through a Mosquitto started here,
//!   alternating (a) a bare counting subscriber (the broker's delivery rate, the limit) and (b) the
//!   collector (ledger commit before acknowledgement, time series to VictoriaMetrics); then the
//!   publish-to-commit latency at half the collector's measured rate.
//! - `billing-ledger`: a year of a workshop's sessions written straight into a ledger file.
//! - `network`: hundreds of sites through several network collectors on one PostgreSQL ledger.
//! - `network-month`: a busy month of hundreds of sites on one PostgreSQL ledger, then invoiced.
//! - `counters`: a year of state changes in a ledger; a machine's counters read from its boots
//!   against the per-event sum they replaced.

mod billing;
mod counters;
mod ingest;
mod month;
mod network;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "fabmeter benchmarks (docs/BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ingest rate (bare subscriber vs collector, alternating) and latency at half capacity.
    Ingest(ingest::Args),
    /// Writes a year of sessions of a workshop into a ledger, and the site file to invoice it.
    BillingLedger(billing::Args),
    /// Many sites through several network collectors on one PostgreSQL ledger.
    Network(network::Args),
    /// A busy month of many sites written into one PostgreSQL ledger, then invoiced.
    NetworkMonth(month::Args),
    /// A year of state changes; a machine's counters as a maintenance evaluation reads them.
    Counters(counters::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Ingest(a) => ingest::run(&a),
        Cmd::BillingLedger(a) => billing::run(&a),
        Cmd::Network(a) => network::run(&a),
        Cmd::NetworkMonth(a) => month::run(&a),
        Cmd::Counters(a) => counters::run(&a),
    }
}

/// The 1-minute load average, to print beside each figure (the machine may be shared).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The median of a few values.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if !n.is_multiple_of(2) => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
