//! A Factur-X site shared by the Factur-X and statement-page tests: the seller, two members with
//! billing identities (alice with a VAT number, bob without), two VAT rates, a daily cap and
//! prepaid credit; and the device events of one session.

use std::path::Path;

use fabmeter_collector::api;
use fabmeter_collector::config::Config;
use fabmeter_collector::ledger::Record;

use super::support::closed_session;

/// Alice's badge.
pub const ALICE: &str = "ba279e0c1e5c2464";
/// Bob's badge.
pub const BOB: &str = "a70e24fcac6bc0a8";

/// The site file.
pub const SITE: &str = r#"
[site]
id = "atelier-lyon"

[[machines]]
id = "laser-1"
kind = "laser"
[[machines]]
id = "saw-1"
kind = "wood"

[[members]]
id = "alice"
name = "Alice Martin"
badges = ["ba279e0c1e5c2464"]
[[members]]
id = "bob"
name = "Bob Durand"
badges = ["a70e24fcac6bc0a8"]

[billing]
invoice_prefix = "ATL"
timezone = "UTC"
facturx = true
[billing.seller]
name = "Atelier de Lyon SAS"
street = "12 rue des Tanneurs"
postcode = "69001"
city = "Lyon"
siret = "732 829 320 00074"
vat_id = "FR44732829320"
[[billing.tariffs]]
name = "laser"
valid_from = "2026-01-01"
busy_per_min = "0.50"
idle_per_min = "0.10"
daily_cap = "20.00"
label = "Découpe laser <CO2> & gravure"
[[billing.tariffs]]
name = "wood"
valid_from = "2026-01-01"
busy_per_min = "0.10"
vat_rate = "5.5"
[[billing.customers]]
member = "alice"
name = "Alice Martin EI"
street = "3 place Bellecour"
postcode = "69002"
city = "Lyon"
siren = "552 100 554"
vat_id = "FR96552100554"
[[billing.customers]]
member = "bob"
street = "8 quai Saint-Vincent"
postcode = "69001"
city = "Lyon"
siren = "443061841"
[[billing.credits]]
member = "bob"
date = "2026-10-01"
amount = "5.00"
"#;

/// The parsed, validated site with its ledger in `dir`.
pub fn config(dir: &Path, text: &str) -> Config {
    let mut c = Config::from_toml(text).expect("config");
    c.ledger.path = dir.join("ledger.sqlite");
    c.validate().expect("valid");
    c
}

/// Unix ms of a UTC time.
pub fn ms(s: &str) -> u64 {
    api::parse_time(s).expect("time")
}

/// The start and end events of a closed session of `busy_s` seconds (boot 1).
pub fn session(machine: &str, seq: u32, badge: &str, start: &str, busy_s: u32) -> Vec<Record> {
    let (start, end) = closed_session(machine, 1, seq, badge, ms(start), busy_s, 0);
    vec![start, end]
}
