//! Billing: tariffs, member plans, the pricing engine, invoices and their exports.
//!
//! The engine ([`engine::price`]) is pure: sessions, rules and a period in, priced lines out;
//! time comes in as arguments. Invoices ([`invoice`]) are built from priced lines, numbered,
//! hashed and chained by the ledger (`ledger/invoices.rs`). The rules, their precedence and one
//! worked example per rule are in docs/BILLING.md; the examples are tests (`examples.rs`).

pub mod calendar;
pub mod engine;
pub mod facturx;
pub mod identity;
pub mod invoice;
pub mod money;
pub mod pdf;
pub mod tariff;

#[cfg(test)]
mod examples;
#[cfg(test)]
mod props;

pub use calendar::{Date, Period, Zone};
pub use engine::{price, BillableSession, LineKind, PricedLine, Pricing, SessionKey};
pub use money::Exact;
pub use tariff::{BillingConfig, BillingRules, RuleError};
