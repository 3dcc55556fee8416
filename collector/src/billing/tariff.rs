//! Billing configuration (`[billing]` in the site file): tariffs versioned by validity date,
//! member plans with a discount or their own rates and monthly allowances, memberships and prepaid
//! credit. Amounts are decimal strings in EUR (`"0.35"`), percentages decimal strings (`"20"`,
//! `"5.5"`): never floating point.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::calendar::{Date, Zone};
use super::money::{parse_amount, parse_rate_bp, Exact};

/// `[billing]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    /// Prefix of invoice numbers, e.g. `ATL` gives `ATL-2026-000123`.
    pub invoice_prefix: String,
    /// Time zone of days (daily caps) and months (periods): `Europe/Paris` (default) or `UTC`.
    #[serde(default = "default_zone")]
    pub timezone: String,
    /// Default VAT rate, percent (default `"20"`).
    #[serde(default = "default_vat")]
    pub vat_rate: String,
    /// Plan of members without a membership; absent: tariff prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_plan: Option<String>,
    /// The seller, as printed on invoices.
    #[serde(default)]
    pub seller: Seller,
    /// Accounting codes of the accounting export.
    #[serde(default)]
    pub accounts: Accounts,
    /// Tariffs, each name possibly in several versions (`valid_from`).
    #[serde(default)]
    pub tariffs: Vec<Tariff>,
    /// Member plans.
    #[serde(default)]
    pub plans: Vec<Plan>,
    /// Which member is on which plan from when.
    #[serde(default)]
    pub memberships: Vec<Membership>,
    /// Prepaid credit bought by members.
    #[serde(default)]
    pub credits: Vec<Credit>,
    /// Issue Factur-X documents (EN 16931 CII XML and PDF): the identities of both parties and
    /// French VAT rates become mandatory (docs/BILLING.md "Factur-X").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub facturx: bool,
    /// The members' billing identities (legal name, address, SIREN, VAT number).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub customers: Vec<Customer>,
}

/// `[[billing.customers]]`: a member's billing identity, as printed on its invoices (personal
/// data of a sole trader: part of `member export`, docs/SECURITY.md "Personal data").
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    /// Member id (of `[[members]]`).
    pub member: String,
    /// Legal name; empty: the member's name.
    #[serde(default)]
    pub name: String,
    /// Street line of the address.
    #[serde(default)]
    pub street: String,
    /// Postcode.
    #[serde(default)]
    pub postcode: String,
    /// City.
    #[serde(default)]
    pub city: String,
    /// Country, ISO 3166-1 alpha-2 (default `FR`).
    #[serde(default = "default_country")]
    pub country: String,
    /// SIREN (9 digits).
    #[serde(default)]
    pub siren: String,
    /// Intra-EU VAT number (optional: a micro-entrepreneur under the franchise has none).
    #[serde(default)]
    pub vat_id: String,
}

fn default_country() -> String {
    "FR".into()
}

fn default_zone() -> String {
    "Europe/Paris".into()
}
fn default_vat() -> String {
    "20".into()
}

/// `[billing.seller]`: identification required on a French invoice.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Seller {
    /// Legal name.
    pub name: String,
    /// Postal address (one line per line).
    pub address: String,
    /// SIRET or SIREN.
    pub siret: String,
    /// Intra-community VAT number.
    pub vat_id: String,
    /// SIREN (9 digits); empty: the first 9 digits of `siret`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub siren: String,
    /// Street line of the address (Factur-X).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub street: String,
    /// Postcode (Factur-X).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub postcode: String,
    /// City (Factur-X).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub city: String,
    /// Country, ISO 3166-1 alpha-2; empty: `FR`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub country: String,
    /// `normal` (default: VAT charged) or `franchise` (franchise en base, art. 293 B du CGI).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vat_regime: String,
    /// Why a 0 % rate is exempt, under the normal regime (printed, EN 16931 BT-120).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vat_exemption: String,
    /// Tax registration (EN 16931 BT-32) of a seller under the franchise without a VAT number.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tax_id: String,
    /// Payment terms printed on invoices (EN 16931 BT-20).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub payment_terms: String,
}

/// `[billing.accounts]`: accounting codes (French chart of accounts by default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Accounts {
    /// Customer receivables (debit), e.g. `411000`.
    pub customers: String,
    /// Sales of services (credit) when the tariff names none, e.g. `706000`.
    pub sales: String,
    /// VAT collected (credit), e.g. `445710`.
    pub vat: String,
    /// Prepaid credit held for members (debit when used), e.g. `419100`.
    pub prepaid: String,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            customers: "411000".into(),
            sales: "706000".into(),
            vat: "445710".into(),
            prepaid: "419100".into(),
        }
    }
}

/// `[[billing.tariffs]]`: one version of a tariff.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    /// Name: a machine's `tariff`, or else its `kind`, selects the tariff of this name.
    pub name: String,
    /// First local day this version prices (sessions are priced by the version valid at their start).
    pub valid_from: Date,
    /// Price per busy minute, EUR.
    #[serde(default = "zero")]
    pub busy_per_min: String,
    /// Price per idle minute, EUR (`"0"`: idle is free).
    #[serde(default = "zero")]
    pub idle_per_min: String,
    /// Billing increment, minutes: busy and idle time are each rounded up to a started increment.
    #[serde(default = "one")]
    pub increment_min: u32,
    /// Minimum charge of a session's time, EUR.
    #[serde(default = "zero")]
    pub minimum: String,
    /// Fee per session, EUR.
    #[serde(default = "zero")]
    pub setup: String,
    /// Most charged per member, local day and tariff, EUR; absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_cap: Option<String>,
    /// VAT rate of this tariff, percent; absent: `billing.vat_rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vat_rate: Option<String>,
    /// Sales account of this tariff; absent: `billing.accounts.sales`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Label on invoices; absent: the name.
    #[serde(default)]
    pub label: String,
}

fn zero() -> String {
    "0".into()
}
fn one() -> u32 {
    1
}

/// `[[billing.plans]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Name, e.g. `resident`.
    pub name: String,
    /// Discount on every tariff amount, whole percent (0 to 100).
    #[serde(default)]
    pub discount_percent: u32,
    /// The plan's own rates for some tariffs.
    #[serde(default)]
    pub rates: Vec<PlanRates>,
    /// Busy minutes included per month.
    #[serde(default)]
    pub allowances: Vec<Allowance>,
}

/// `[[billing.plans.rates]]`: any amount given replaces the tariff's (if lower than the
/// discounted tariff amount: the biggest discount wins).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlanRates {
    /// Tariff name.
    pub tariff: String,
    /// Price per busy minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_per_min: Option<String>,
    /// Price per idle minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_per_min: Option<String>,
    /// Minimum charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<String>,
    /// Setup fee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    /// Daily cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_cap: Option<String>,
}

/// `[[billing.plans.allowances]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Allowance {
    /// Tariff name.
    pub tariff: String,
    /// Busy minutes included per period.
    pub minutes: u32,
}

/// `[[billing.memberships]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// Member id.
    pub member: String,
    /// Plan name.
    pub plan: String,
    /// First local day on this plan (the plan valid at a session's start applies).
    pub valid_from: Date,
    /// Buyer's address, as printed on invoices.
    #[serde(default)]
    pub address: String,
}

/// `[[billing.credits]]`: prepaid credit bought (incl. VAT, an advance payment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credit {
    /// Member id.
    pub member: String,
    /// Day of the purchase.
    pub date: Date,
    /// Amount, EUR incl. VAT.
    pub amount: String,
    /// Receipt or note.
    #[serde(default)]
    pub note: String,
}

/// The amounts of one tariff version, parsed and exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rates {
    /// Price per busy minute.
    pub busy: Exact,
    /// Price per idle minute.
    pub idle: Exact,
    /// Minimum charge of a session's time.
    pub minimum: Exact,
    /// Fee per session.
    pub setup: Exact,
    /// Daily cap.
    pub daily_cap: Option<Exact>,
}

/// One tariff version, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TariffVersion {
    /// Name.
    pub name: String,
    /// Label on invoices.
    pub label: String,
    /// First local day.
    pub valid_from: Date,
    /// UTC ms of `valid_from`'s local midnight.
    pub from_ms: u64,
    /// Amounts.
    pub rates: Rates,
    /// Increment, minutes (at least 1).
    pub increment_min: u32,
    /// VAT rate, basis points.
    pub vat_bp: u32,
    /// Sales account.
    pub account: String,
}

/// A plan, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanRules {
    /// Name (empty: no plan).
    pub name: String,
    /// Discount, whole percent.
    pub discount_percent: u32,
    /// Own amounts per tariff name (each component optional).
    pub own: BTreeMap<String, OwnRates>,
    /// Included busy minutes per tariff name and period.
    pub allowances: BTreeMap<String, u32>,
}

/// A plan's own amounts for one tariff.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnRates {
    /// Busy.
    pub busy: Option<Exact>,
    /// Idle.
    pub idle: Option<Exact>,
    /// Minimum.
    pub minimum: Option<Exact>,
    /// Setup.
    pub setup: Option<Exact>,
    /// Daily cap.
    pub daily_cap: Option<Exact>,
}

/// A machine as billing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineTariff {
    /// Machine id.
    pub machine: String,
    /// Human name.
    pub name: String,
    /// The tariff name it is billed under (its `tariff`, else its `kind`).
    pub tariff: String,
}

/// Everything the pricing engine needs, parsed and validated: build it with
/// [`BillingRules::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingRules {
    /// Time zone of days and periods.
    pub zone: Zone,
    /// Default VAT rate, basis points.
    pub vat_bp: u32,
    /// Tariff versions, by name then `valid_from`.
    pub tariffs: BTreeMap<String, Vec<TariffVersion>>,
    /// Plans by name.
    pub plans: BTreeMap<String, PlanRules>,
    /// Memberships per member: (from UTC ms, plan), sorted.
    pub memberships: BTreeMap<String, Vec<(u64, String)>>,
    /// Default plan name.
    pub default_plan: Option<String>,
    /// Machines by id.
    pub machines: BTreeMap<String, MachineTariff>,
}

/// A billing configuration problem: dotted key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {problem}")]
pub struct RuleError {
    /// Dotted key, e.g. `billing.tariffs[0].busy_per_min`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

fn rerr(key: impl Into<String>, problem: impl Into<String>) -> RuleError {
    RuleError {
        key: key.into(),
        problem: problem.into(),
    }
}

impl BillingConfig {
    /// A minimal configuration: prefix only, defaults elsewhere.
    pub fn with_prefix(prefix: &str) -> BillingConfig {
        BillingConfig {
            invoice_prefix: prefix.into(),
            timezone: default_zone(),
            vat_rate: default_vat(),
            default_plan: None,
            seller: Seller::default(),
            accounts: Accounts::default(),
            tariffs: Vec::new(),
            plans: Vec::new(),
            memberships: Vec::new(),
            credits: Vec::new(),
            facturx: false,
            customers: Vec::new(),
        }
    }

    /// Prepaid credit bought by a member, exact.
    pub fn credit_bought(&self, member: &str) -> Exact {
        Exact(
            self.credits
                .iter()
                .filter(|c| c.member == member)
                .filter_map(|c| parse_amount(&c.amount).ok())
                .map(|a| a.0)
                .sum(),
        )
    }
}

impl BillingRules {
    /// Parses and checks a billing configuration against the site's machines
    /// (`(id, name, kind, tariff)`).
    pub fn new(
        cfg: &BillingConfig,
        machines: &[(String, String, String, Option<String>)],
    ) -> Result<BillingRules, RuleError> {
        let p = &cfg.invoice_prefix;
        if p.is_empty() || p.len() > 12 || !p.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(rerr(
                "billing.invoice_prefix",
                format!("{p:?} must be 1 to 12 letters or digits, e.g. \"ATL\""),
            ));
        }
        let zone = Zone::parse(&cfg.timezone).map_err(|e| rerr("billing.timezone", e))?;
        let vat_bp = parse_rate_bp(&cfg.vat_rate).map_err(|e| rerr("billing.vat_rate", e))?;
        let mut tariffs: BTreeMap<String, Vec<TariffVersion>> = BTreeMap::new();
        for (i, t) in cfg.tariffs.iter().enumerate() {
            let key = |f: &str| format!("billing.tariffs[{i}].{f}");
            if t.name.is_empty() {
                return Err(rerr(key("name"), "must not be empty, e.g. \"laser\""));
            }
            let amount = |f: &str, v: &str| parse_amount(v).map_err(|e| rerr(key(f), e));
            if !matches!(t.increment_min, 1..=1440) {
                return Err(rerr(
                    key("increment_min"),
                    "must be 1 to 1440 minutes, e.g. 15",
                ));
            }
            let version = TariffVersion {
                name: t.name.clone(),
                label: if t.label.is_empty() {
                    t.name.clone()
                } else {
                    t.label.clone()
                },
                valid_from: t.valid_from,
                from_ms: zone.midnight(t.valid_from),
                rates: Rates {
                    busy: amount("busy_per_min", &t.busy_per_min)?,
                    idle: amount("idle_per_min", &t.idle_per_min)?,
                    minimum: amount("minimum", &t.minimum)?,
                    setup: amount("setup", &t.setup)?,
                    daily_cap: t
                        .daily_cap
                        .as_deref()
                        .map(|c| amount("daily_cap", c))
                        .transpose()?,
                },
                increment_min: t.increment_min,
                vat_bp: match &t.vat_rate {
                    Some(r) => parse_rate_bp(r).map_err(|e| rerr(key("vat_rate"), e))?,
                    None => vat_bp,
                },
                account: t
                    .account
                    .clone()
                    .unwrap_or_else(|| cfg.accounts.sales.clone()),
            };
            let versions = tariffs.entry(t.name.clone()).or_default();
            if versions.iter().any(|v| v.valid_from == t.valid_from) {
                return Err(rerr(
                    key("valid_from"),
                    format!("tariff {:?} has two versions from {}", t.name, t.valid_from),
                ));
            }
            versions.push(version);
            versions.sort_by_key(|v| v.valid_from);
        }
        let mut plans = BTreeMap::new();
        for (i, pl) in cfg.plans.iter().enumerate() {
            let key = |f: &str| format!("billing.plans[{i}].{f}");
            if pl.discount_percent > 100 {
                return Err(rerr(key("discount_percent"), "must be 0 to 100, e.g. 20"));
            }
            let mut own = BTreeMap::new();
            for (j, r) in pl.rates.iter().enumerate() {
                let k = |f: &str| format!("billing.plans[{i}].rates[{j}].{f}");
                if !tariffs.contains_key(&r.tariff) {
                    return Err(rerr(k("tariff"), format!("no tariff named {:?}", r.tariff)));
                }
                let a = |f: &str, v: &Option<String>| {
                    v.as_deref()
                        .map(|v| parse_amount(v).map_err(|e| rerr(k(f), e)))
                        .transpose()
                };
                own.insert(
                    r.tariff.clone(),
                    OwnRates {
                        busy: a("busy_per_min", &r.busy_per_min)?,
                        idle: a("idle_per_min", &r.idle_per_min)?,
                        minimum: a("minimum", &r.minimum)?,
                        setup: a("setup", &r.setup)?,
                        daily_cap: a("daily_cap", &r.daily_cap)?,
                    },
                );
            }
            let mut allowances = BTreeMap::new();
            for (j, a) in pl.allowances.iter().enumerate() {
                if !tariffs.contains_key(&a.tariff) {
                    return Err(rerr(
                        format!("billing.plans[{i}].allowances[{j}].tariff"),
                        format!("no tariff named {:?}", a.tariff),
                    ));
                }
                allowances.insert(a.tariff.clone(), a.minutes);
            }
            if plans
                .insert(
                    pl.name.clone(),
                    PlanRules {
                        name: pl.name.clone(),
                        discount_percent: pl.discount_percent,
                        own,
                        allowances,
                    },
                )
                .is_some()
            {
                return Err(rerr(
                    key("name"),
                    format!("plan {:?} is listed twice", pl.name),
                ));
            }
        }
        if let Some(d) = &cfg.default_plan {
            if !plans.contains_key(d) {
                return Err(rerr("billing.default_plan", format!("no plan named {d:?}")));
            }
        }
        let mut memberships: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        let mut seen = HashSet::new();
        for (i, m) in cfg.memberships.iter().enumerate() {
            if !plans.contains_key(&m.plan) {
                return Err(rerr(
                    format!("billing.memberships[{i}].plan"),
                    format!("no plan named {:?}", m.plan),
                ));
            }
            if !seen.insert((m.member.as_str(), m.valid_from)) {
                return Err(rerr(
                    format!("billing.memberships[{i}].valid_from"),
                    format!("member {:?} has two plans from {}", m.member, m.valid_from),
                ));
            }
            let v = memberships.entry(m.member.clone()).or_default();
            v.push((zone.midnight(m.valid_from), m.plan.clone()));
            v.sort();
        }
        for (i, c) in cfg.credits.iter().enumerate() {
            parse_amount(&c.amount).map_err(|e| rerr(format!("billing.credits[{i}].amount"), e))?;
        }
        let machines = machines
            .iter()
            .map(|(id, name, kind, tariff)| {
                (
                    id.clone(),
                    MachineTariff {
                        machine: id.clone(),
                        name: name.clone(),
                        tariff: tariff.clone().unwrap_or_else(|| kind.clone()),
                    },
                )
            })
            .collect();
        Ok(BillingRules {
            zone,
            vat_bp,
            tariffs,
            plans,
            memberships,
            default_plan: cfg.default_plan.clone(),
            machines,
        })
    }

    /// The tariff version pricing a session of `machine` started at `start_ms`.
    pub fn tariff_for(&self, machine: &str, start_ms: u64) -> Option<&TariffVersion> {
        let name = &self.machines.get(machine)?.tariff;
        self.tariffs
            .get(name)?
            .iter()
            .rev()
            .find(|v| v.from_ms <= start_ms)
    }

    /// The plan of `member` at `at_ms` (its membership, else the default plan).
    pub fn plan_for(&self, member: &str, at_ms: u64) -> Option<&PlanRules> {
        let name = self
            .memberships
            .get(member)
            .and_then(|v| v.iter().rev().find(|(from, _)| *from <= at_ms))
            .map(|(_, p)| p)
            .or(self.default_plan.as_ref())?;
        self.plans.get(name)
    }
}
