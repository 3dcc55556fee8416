//! A Factur-X site shared by the Factur-X and statement-page tests, built with `sites.rs`:
//! the seller, two members with billing identities (alice with a VAT number, bob without), two
//! VAT rates, a daily cap and prepaid credit; and the device events of one session.

use fabmeter_collector::ledger::Record;

use super::sites::{customer_alice, customer_bob, ms, seller_facturx, SiteFile, Tariff};
use super::support::closed_session;

/// The site: a laser and a saw (tariff `wood`, at 5.5 % VAT), alice and bob with their billing
/// identities, the seller's full identity, Factur-X on.
pub fn site_text() -> String {
    SiteFile::new("atelier-lyon")
        .machine("laser-1", "", "laser")
        .machine("saw-1", "", "wood")
        .alice_and_bob()
        .billing("UTC", true, seller_facturx())
        .tariff(
            Tariff::new("laser", "2026-01-01", "0.50")
                .idle("0.10")
                .daily_cap("20.00")
                .label("Découpe laser <CO2> & gravure"),
        )
        .tariff(Tariff::new("wood", "2026-01-01", "0.10").vat("5.5"))
        .customer("alice", customer_alice())
        .customer("bob", customer_bob())
        .credit("bob", "2026-10-01", "5.00")
        .text()
}

/// The start and end events of a closed session of `busy_s` seconds (boot 1).
pub fn session(machine: &str, seq: u32, badge: &str, start: &str, busy_s: u32) -> Vec<Record> {
    let (start, end) = closed_session(machine, 1, seq, badge, ms(start), busy_s, 0);
    vec![start, end]
}
