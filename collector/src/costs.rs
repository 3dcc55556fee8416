//! Cost recovery per machine (docs/COSTS.md): what a machine costs (depreciation of its purchase
//! price over its expected life, recorded maintenance costs, consumables per busy hour) against
//! what it was used (busy hours of its sessions, against the site's opening hours) and what it
//! earned (the lines of issued invoices and credit notes that bill its sessions).
//!
//! The figures are pure functions of the configuration, the ledger's records and an explicit
//! range `[from, to)`; money is integer cents, ratios are integer basis points or tenths.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::billing::calendar::{Date, Zone};
use crate::billing::engine::{LineKind, SessionKey};
use crate::billing::invoice::Invoice;
use crate::billing::money::format_cents;
use crate::config::{err, Config, ConfigError};
use crate::ledger::{BillingError, Ledger, LedgerError};

/// An average Gregorian month (365.2425 days / 12), ms: the unit of payback times.
pub const MONTH_MS: i128 = 2_629_746_000;

/// `[costs]`: opening hours and what each machine cost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CostsConfig {
    /// Weekly opening hours, e.g. `"Mon-Fri 08:00-19:00, Sat 09:00-13:00"` (local time):
    /// utilisation is busy hours over opening hours. Absent: no utilisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opening_hours: Option<String>,
    /// Time zone of the opening hours and of dates: `UTC` or an EU central-time zone; absent:
    /// `billing.timezone`, else `Europe/Paris`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// What each machine cost.
    #[serde(default)]
    pub machines: Vec<MachineCost>,
    /// How often the collector writes the `cost_recovery` points of the last 30 days to the
    /// time series (docs/SCHEMA.md), seconds.
    #[serde(default = "default_series_s")]
    pub series_s: u64,
}

fn default_series_s() -> u64 {
    3600
}

/// The range of the `cost_recovery` points: the last 30 days.
pub const SERIES_RANGE_MS: u64 = 30 * 86_400_000;

/// `[[costs.machines]]`: the purchase and running costs of one machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineCost {
    /// The machine (an id of `[[machines]]`).
    pub machine: String,
    /// Purchase price, cents excl. VAT (e.g. 1200000 for 12,000.00 EUR).
    pub purchase_price_cents: u64,
    /// Purchase (or commissioning) date: depreciation starts at its local midnight.
    pub purchase_date: Date,
    /// Expected life, months: the price is spread evenly over it (straight-line).
    pub life_months: u32,
    /// Consumables (tubes, lenses, bits, filament not sold...), cents per busy hour.
    #[serde(default)]
    pub consumables_cents_per_busy_h: u64,
}

impl Default for CostsConfig {
    fn default() -> Self {
        CostsConfig {
            opening_hours: None,
            timezone: None,
            machines: Vec::new(),
            series_s: default_series_s(),
        }
    }
}

/// Example of a `[[costs.machines]]` entry, for error messages.
pub fn entry_example(machine: &str) -> String {
    format!(
        "[[costs.machines]] machine = \"{machine}\", purchase_price_cents = 1200000, purchase_date = \"2026-01-15\", life_months = 60"
    )
}

const HOURS_EXAMPLE: &str = "\"Mon-Fri 08:00-19:00, Sat 09:00-13:00\"";

impl CostsConfig {
    /// The time zone: `costs.timezone`, else `billing.timezone`, else `Europe/Paris`.
    pub fn zone(&self, config: &Config) -> Result<Zone, ConfigError> {
        match (&self.timezone, &config.billing) {
            (Some(tz), _) => {
                Zone::parse(tz).map_err(|e| err("costs.timezone", e, "\"Europe/Paris\""))
            }
            (None, Some(b)) => {
                Zone::parse(&b.timezone).map_err(|e| err("billing.timezone", e, "\"Europe/Paris\""))
            }
            (None, None) => Ok(Zone::EuCentral),
        }
    }

    /// The parsed opening hours, if configured.
    pub fn hours(&self) -> Result<Option<OpeningHours>, ConfigError> {
        self.opening_hours
            .as_deref()
            .map(|s| {
                OpeningHours::parse(s).map_err(|e| err("costs.opening_hours", e, HOURS_EXAMPLE))
            })
            .transpose()
    }

    /// Checks the section against the site's machines; the first problem names its key.
    pub fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        self.zone(config)?;
        self.hours()?;
        if self.series_s == 0 {
            return Err(err("costs.series_s", "must be at least 1 second", "3600"));
        }
        let mut seen = BTreeSet::new();
        for (i, m) in self.machines.iter().enumerate() {
            let key = |k: &str| format!("costs.machines[{i}].{k}");
            if config.machine(&m.machine).is_none() {
                return Err(err(
                    key("machine"),
                    format!("{:?} is not a configured machine", m.machine),
                    "an id from [[machines]], e.g. machine = \"laser-1\"",
                ));
            }
            if !seen.insert(m.machine.as_str()) {
                return Err(err(
                    key("machine"),
                    format!("{:?} has two cost entries", m.machine),
                    "one [[costs.machines]] entry per machine",
                ));
            }
            if m.purchase_price_cents == 0 {
                return Err(err(
                    key("purchase_price_cents"),
                    "must be above 0 (integer cents excl. VAT)",
                    "purchase_price_cents = 1200000",
                ));
            }
            if !(1..=600).contains(&m.life_months) {
                return Err(err(
                    key("life_months"),
                    format!("{} is not 1 to 600 months", m.life_months),
                    "life_months = 60",
                ));
            }
        }
        Ok(())
    }

    /// The cost entry of a machine.
    pub fn machine(&self, id: &str) -> Option<&MachineCost> {
        self.machines.iter().find(|m| m.machine == id)
    }
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Weekly opening hours: per weekday (Monday first), disjoint sorted `[start, end)` minutes of
/// the local day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpeningHours {
    days: [Vec<(u32, u32)>; 7],
}

fn parse_minute(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

impl OpeningHours {
    /// Parses `"Mon-Fri 08:00-19:00, Sat 09:00-13:00"`: comma-separated groups of a day or a
    /// day range (Mon..Sun, not wrapping) and one or more `HH:MM-HH:MM` windows (24:00 ends a
    /// day). Overlapping windows count once.
    pub fn parse(s: &str) -> Result<OpeningHours, String> {
        let mut days: [Vec<(u32, u32)>; 7] = Default::default();
        let day = |d: &str| {
            DAYS.iter()
                .position(|x| x.eq_ignore_ascii_case(d))
                .ok_or_else(|| format!("{d:?} is not a day: use {}", DAYS.join(", ")))
        };
        for group in s.split(',').map(str::trim) {
            let mut words = group.split_whitespace();
            let Some(spec) = words.next() else {
                return Err(format!("{s:?} has an empty group"));
            };
            let (a, b) = match spec.split_once('-') {
                Some((a, b)) => (day(a)?, day(b)?),
                None => (day(spec)?, day(spec)?),
            };
            if a > b {
                return Err(format!(
                    "{spec:?} runs backwards: write the days Monday first, e.g. \"Sat-Sun\""
                ));
            }
            let mut any = false;
            for w in words {
                let (from, to) = w
                    .split_once('-')
                    .and_then(|(x, y)| Some((parse_minute(x)?, parse_minute(y)?)))
                    .ok_or_else(|| format!("{w:?} is not a time window like \"08:00-19:00\""))?;
                if from >= to {
                    return Err(format!("{w:?} ends before it starts"));
                }
                for d in &mut days[a..=b] {
                    d.push((from, to));
                }
                any = true;
            }
            if !any {
                return Err(format!(
                    "{group:?} gives days but no hours, e.g. \"Sat 09:00-13:00\""
                ));
            }
        }
        for d in &mut days {
            d.sort_unstable();
            let mut merged: Vec<(u32, u32)> = Vec::with_capacity(d.len());
            for &(a, b) in d.iter() {
                match merged.last_mut() {
                    Some(last) if a <= last.1 => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            *d = merged;
        }
        Ok(OpeningHours { days })
    }

    /// Opening minutes per week.
    pub fn weekly_minutes(&self) -> u32 {
        self.days.iter().flatten().map(|(a, b)| b - a).sum()
    }

    /// Seconds open within `[from_ms, to_ms)`, local days in `zone`.
    pub fn open_s(&self, zone: Zone, from_ms: u64, to_ms: u64) -> u64 {
        if to_ms <= from_ms {
            return 0;
        }
        let (first, last) = (zone.date_of(from_ms).days(), zone.date_of(to_ms - 1).days());
        let mut total = 0u64;
        for day in first..=last {
            // 1970-01-01 was a Thursday: Monday first, it is weekday 3.
            let weekday = usize::try_from((day + 3).rem_euclid(7)).unwrap_or(0);
            for &(a, b) in &self.days[weekday] {
                let start = local_instant(zone, day, a).max(from_ms);
                let end = local_instant(zone, day, b).min(to_ms);
                total += end.saturating_sub(start);
            }
        }
        total / 1000
    }
}

/// The instant (UTC ms) of `minute` minutes after local midnight of day number `day`.
fn local_instant(zone: Zone, day: i64, minute: u32) -> u64 {
    let local = day * 86_400_000 + i64::from(minute) * 60_000;
    let guess = local - zone.offset_ms(local);
    u64::try_from(local - zone.offset_ms(guess)).unwrap_or(0)
}

/// The date `months` months after `d` (the day clamped to the month's length).
pub fn add_months(d: Date, months: u32) -> Date {
    let total = i64::from(d.y) * 12 + i64::from(d.m) - 1 + i64::from(months);
    let (y, m) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let first = crate::billing::calendar::days_from_civil(y, m, 1);
    let next = if m == 12 {
        crate::billing::calendar::days_from_civil(y + 1, 1, 1)
    } else {
        crate::billing::calendar::days_from_civil(y, m + 1, 1)
    };
    let day = i64::from(d.d).min(next - first);
    Date::from_days(first + day - 1)
}

/// `num / den` rounded half away from zero (`den > 0`).
fn div_round(num: i128, den: i128) -> i64 {
    let q = if num >= 0 {
        (num + den / 2) / den
    } else {
        -((-num + den / 2) / den)
    };
    i64::try_from(q).unwrap_or(i64::MAX)
}

/// `num / den` rounded up (`num >= 0`, `den > 0`).
fn div_ceil(num: i128, den: i128) -> i64 {
    i64::try_from((num + den - 1) / den).unwrap_or(i64::MAX)
}

fn i128_of(x: u64) -> i128 {
    i128::from(x)
}

/// What the ledger says about one machine over a range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// Sessions started in the range.
    pub sessions: u64,
    /// Their busy seconds.
    pub busy_s: u64,
    /// Recorded service costs in the range, cents.
    pub maintenance_cents: i64,
    /// Services in the range recorded without a cost.
    pub services_without_cost: u64,
    /// Invoiced revenue (net of credit notes) of sessions started in the range, cents excl. VAT.
    pub revenue_cents: i64,
}

/// Cost recovery of one machine over `[from, to)` (docs/COSTS.md "Formulas").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostRow {
    /// Machine id.
    pub machine: String,
    /// Human name.
    pub name: String,
    /// What is missing to compute the costs (a machine without a purchase price), with the fix.
    pub problem: Option<String>,
    /// Purchase price, cents.
    pub purchase_price_cents: Option<u64>,
    /// Purchase date.
    pub purchase_date: Option<Date>,
    /// Expected life, months.
    pub life_months: Option<u32>,
    /// Sessions started in the range.
    pub sessions: u64,
    /// Their busy seconds.
    pub busy_s: u64,
    /// Busy seconds per opening second, basis points (10000 = 100 %; may exceed it when the
    /// machine runs outside opening hours).
    pub utilisation_bp: Option<u64>,
    /// Depreciation of the range: the price times the share of the expected life within it.
    pub depreciation_cents: Option<i64>,
    /// Recorded maintenance costs in the range.
    pub maintenance_cents: i64,
    /// Services in the range recorded without a cost (their cost is unknown, counted 0).
    pub services_without_cost: u64,
    /// Consumables: busy hours times the configured cost per busy hour.
    pub consumables_cents: Option<i64>,
    /// Depreciation + maintenance + consumables.
    pub cost_cents: Option<i64>,
    /// Ownership cost (depreciation + maintenance) per busy hour.
    pub cost_per_busy_h_cents: Option<i64>,
    /// Every cost per busy hour: the price per busy hour, excl. VAT, at which revenue equals cost
    /// at the current use.
    pub break_even_per_busy_h_cents: Option<i64>,
    /// Revenue billed, cents excl. VAT, net of credit notes.
    pub revenue_cents: i64,
    /// Revenue per busy hour.
    pub revenue_per_busy_h_cents: Option<i64>,
    /// Revenue − cost.
    pub margin_cents: Option<i64>,
    /// Since the purchase up to `to`: revenue − maintenance − consumables.
    pub recovered_cents: Option<i64>,
    /// Months (tenths) still needed to recover the purchase price at the range's net revenue
    /// rate; 0 once recovered; `None` when the range's revenue does not cover its running
    /// costs (never at the current use) or without a price.
    pub payback_months_x10: Option<i64>,
    /// The same, in months (display).
    pub payback_months: Option<f64>,
}

/// Computes one machine's row (pure). `period` are the facts of `[from, to)`, `life` those of
/// `[purchase, to)`.
#[allow(clippy::too_many_arguments)]
pub fn row(
    machine: &str,
    name: &str,
    cost: Option<&MachineCost>,
    zone: Zone,
    from_ms: u64,
    to_ms: u64,
    opening_s: Option<u64>,
    period: Facts,
    life: Facts,
) -> CostRow {
    let busy = i128_of(period.busy_s);
    let per_busy_h = |cents: i64| (busy > 0).then(|| div_round(i128::from(cents) * 3600, busy));
    let mut r = CostRow {
        machine: machine.to_owned(),
        name: name.to_owned(),
        problem: None,
        purchase_price_cents: cost.map(|c| c.purchase_price_cents),
        purchase_date: cost.map(|c| c.purchase_date),
        life_months: cost.map(|c| c.life_months),
        sessions: period.sessions,
        busy_s: period.busy_s,
        utilisation_bp: opening_s
            .filter(|&o| o > 0)
            .map(|o| u64::try_from(div_round(busy * 10_000, i128_of(o))).unwrap_or(0)),
        depreciation_cents: None,
        maintenance_cents: period.maintenance_cents,
        services_without_cost: period.services_without_cost,
        consumables_cents: None,
        cost_cents: None,
        cost_per_busy_h_cents: None,
        break_even_per_busy_h_cents: None,
        revenue_cents: period.revenue_cents,
        revenue_per_busy_h_cents: per_busy_h(period.revenue_cents),
        margin_cents: None,
        recovered_cents: None,
        payback_months_x10: None,
        payback_months: None,
    };
    let Some(c) = cost else {
        r.problem = Some(format!(
            "no purchase price: add {} to the site file",
            entry_example(machine)
        ));
        return r;
    };
    let price = i128_of(c.purchase_price_cents);
    let start = zone.midnight(c.purchase_date);
    let end = zone.midnight(add_months(c.purchase_date, c.life_months));
    let life_ms = i128_of(end.saturating_sub(start).max(1));
    let overlap = i128_of(to_ms.min(end).saturating_sub(from_ms.max(start)));
    let depreciation = div_round(price * overlap, life_ms);
    let consumables = |busy_s: u64| {
        div_round(
            i128_of(c.consumables_cents_per_busy_h) * i128_of(busy_s),
            3600,
        )
    };
    let cons = consumables(period.busy_s);
    let total = depreciation + period.maintenance_cents + cons;
    r.depreciation_cents = Some(depreciation);
    r.consumables_cents = Some(cons);
    r.cost_cents = Some(total);
    r.cost_per_busy_h_cents = per_busy_h(depreciation + period.maintenance_cents);
    r.break_even_per_busy_h_cents = per_busy_h(total);
    r.margin_cents = Some(period.revenue_cents - total);
    let recovered = life.revenue_cents - life.maintenance_cents - consumables(life.busy_s);
    r.recovered_cents = Some(recovered);
    let remaining = price - i128::from(recovered);
    let contribution = i128::from(period.revenue_cents - period.maintenance_cents - cons);
    let range_ms = i128_of(to_ms.saturating_sub(from_ms));
    r.payback_months_x10 = if remaining <= 0 {
        Some(0)
    } else if contribution <= 0 || range_ms == 0 {
        None
    } else {
        // remaining / (contribution per month), months = range_ms / MONTH_MS, in tenths.
        Some(div_ceil(remaining * range_ms * 10, contribution * MONTH_MS))
    };
    r.payback_months = r.payback_months_x10.map(|x| x as f64 / 10.0);
    r
}

/// Revenue per machine of the lines billing sessions that started in `[from_ms, to_ms)`, cents
/// excl. VAT; credit notes count negative. A daily-cap line is shared between the machines of
/// its sessions in proportion to their number (largest remainder, ties to the first machine), and
/// dated by its first session's start (else its day's local midnight).
pub fn revenue_by_machine(
    docs: &[Invoice],
    zone: Zone,
    from_ms: u64,
    to_ms: u64,
) -> BTreeMap<String, i64> {
    let mut starts: BTreeMap<&SessionKey, u64> = BTreeMap::new();
    for d in docs {
        for l in &d.lines {
            if let (LineKind::Session, Some(s)) = (l.kind, l.start_ms) {
                for k in &l.sessions {
                    starts.insert(k, s);
                }
            }
        }
    }
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for d in docs {
        for l in &d.lines {
            let at = l
                .start_ms
                .or_else(|| l.sessions.first().and_then(|k| starts.get(k).copied()))
                .unwrap_or_else(|| zone.midnight(l.day));
            if !(from_ms..to_ms).contains(&at) || l.sessions.is_empty() {
                continue;
            }
            let mut per: BTreeMap<&str, i64> = BTreeMap::new();
            for k in &l.sessions {
                *per.entry(k.machine.as_str()).or_default() += 1;
            }
            let n = i128::try_from(l.sessions.len()).unwrap_or(1);
            let amount = i128::from(l.amount_cents);
            // Largest remainder: floor shares, then the cents left to the biggest remainders.
            let mut shares: Vec<(&str, i64, i128)> = per
                .iter()
                .map(|(m, c)| {
                    let exact = amount * i128::from(*c);
                    let floor = exact.div_euclid(n);
                    (*m, i64::try_from(floor).unwrap_or(0), exact.rem_euclid(n))
                })
                .collect();
            let mut left = l.amount_cents - shares.iter().map(|s| s.1).sum::<i64>();
            let mut order: Vec<usize> = (0..shares.len()).collect();
            order.sort_by(|&a, &b| shares[b].2.cmp(&shares[a].2).then(a.cmp(&b)));
            for i in order {
                if left <= 0 {
                    break;
                }
                shares[i].1 += 1;
                left -= 1;
            }
            for (m, cents, _) in shares {
                *out.entry(m.to_owned()).or_default() += cents;
            }
        }
    }
    out
}

/// Why a report cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The issued documents cannot be read.
    #[error(transparent)]
    Billing(#[from] BillingError),
    /// A bad range.
    #[error("{0}")]
    Range(String),
}

/// The cost recovery of every configured machine over `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    /// Site id.
    pub site: String,
    /// Range start, UTC ms (inclusive).
    pub from_ms: u64,
    /// Range end, UTC ms (exclusive).
    pub to_ms: u64,
    /// Opening seconds in the range, when opening hours are configured.
    pub opening_s: Option<u64>,
    /// Per configured machine, in configuration order.
    pub machines: Vec<CostRow>,
}

/// Builds the report from the ledger (sessions, services, issued documents) and the site file.
pub fn report(
    config: &Config,
    ledger: &dyn Ledger,
    from_ms: u64,
    to_ms: u64,
) -> Result<CostReport, CostError> {
    if to_ms <= from_ms {
        return Err(CostError::Range(format!(
            "the range ends ({}) before it starts ({}): give --from before --to",
            crate::api::format_utc(to_ms),
            crate::api::format_utc(from_ms)
        )));
    }
    let costs = config.costs.clone().unwrap_or_default();
    let zone = costs.zone(config)?;
    let opening_s = costs.hours()?.map(|h| h.open_s(zone, from_ms, to_ms));
    let docs = if config.billing.is_some() {
        ledger.documents()?
    } else {
        Vec::new()
    };
    let busy_in = |a: u64, b: u64| -> Result<BTreeMap<String, (u64, u64)>, LedgerError> {
        Ok(ledger
            .busy_by_machine(a, b)?
            .into_iter()
            .map(|m| (m.machine, (m.sessions, m.busy_s)))
            .collect())
    };
    let period_busy = busy_in(from_ms, to_ms)?;
    let period_revenue = revenue_by_machine(&docs, zone, from_ms, to_ms);
    // Since-purchase figures, one ledger read per distinct purchase date.
    let mut life_busy: BTreeMap<Date, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    let mut life_revenue: BTreeMap<Date, BTreeMap<String, i64>> = BTreeMap::new();
    for c in &costs.machines {
        if let std::collections::btree_map::Entry::Vacant(e) = life_busy.entry(c.purchase_date) {
            let start = zone.midnight(c.purchase_date).min(to_ms);
            e.insert(busy_in(start, to_ms)?);
            life_revenue.insert(
                c.purchase_date,
                revenue_by_machine(&docs, zone, start, to_ms),
            );
        }
    }
    let mut machines = Vec::with_capacity(config.machines.len());
    for m in &config.machines {
        let cost = costs.machine(&m.id);
        let services = ledger
            .maintenance_records(&m.id)?
            .map(|r| r.services)
            .unwrap_or_default();
        let facts = |a: u64,
                     busy: Option<&BTreeMap<String, (u64, u64)>>,
                     revenue: Option<&BTreeMap<String, i64>>| {
            let (sessions, busy_s) = busy.and_then(|b| b.get(&m.id)).copied().unwrap_or_default();
            let within = services.iter().filter(|s| (a..to_ms).contains(&s.done_ms));
            Facts {
                sessions,
                busy_s,
                maintenance_cents: within
                    .clone()
                    .filter_map(|s| s.cost_cents)
                    .map(|c| i64::try_from(c).unwrap_or(i64::MAX))
                    .sum(),
                services_without_cost: within.filter(|s| s.cost_cents.is_none()).count() as u64,
                revenue_cents: revenue.and_then(|r| r.get(&m.id)).copied().unwrap_or(0),
            }
        };
        let period = facts(from_ms, Some(&period_busy), Some(&period_revenue));
        let life = match cost {
            Some(c) => facts(
                zone.midnight(c.purchase_date).min(to_ms),
                life_busy.get(&c.purchase_date),
                life_revenue.get(&c.purchase_date),
            ),
            None => Facts::default(),
        };
        let name = if m.name.is_empty() { &m.id } else { &m.name };
        machines.push(row(
            &m.id, name, cost, zone, from_ms, to_ms, opening_s, period, life,
        ));
    }
    Ok(CostReport {
        site: config.site.id.clone(),
        from_ms,
        to_ms,
        opening_s,
        machines,
    })
}

fn opt_cents(c: Option<i64>) -> String {
    c.map(format_cents).unwrap_or_default()
}

fn hours(s: u64) -> String {
    // Hundredths of an hour, rounded half up.
    let h = (s * 100 + 1800) / 3600;
    format!("{}.{:02}", h / 100, h % 100)
}

fn percent(bp: Option<u64>) -> String {
    bp.map(|b| format!("{}.{:02}", b / 100, b % 100))
        .unwrap_or_default()
}

fn months(x10: Option<i64>, has_price: bool) -> String {
    match (x10, has_price) {
        (Some(x), _) => format!("{}.{}", x / 10, x % 10),
        (None, true) => "never".into(),
        (None, false) => String::new(),
    }
}

/// Columns of [`to_csv`] and [`to_table`].
pub const COLUMNS: [&str; 17] = [
    "machine",
    "busy_h",
    "utilisation_pct",
    "depreciation",
    "maintenance",
    "consumables",
    "cost",
    "cost_per_busy_h",
    "break_even_per_busy_h",
    "revenue",
    "revenue_per_busy_h",
    "margin",
    "recovered",
    "purchase_price",
    "payback_months",
    "sessions",
    "problem",
];

fn cells(r: &CostRow) -> [String; 17] {
    [
        r.machine.clone(),
        hours(r.busy_s),
        percent(r.utilisation_bp),
        opt_cents(r.depreciation_cents),
        format_cents(r.maintenance_cents),
        opt_cents(r.consumables_cents),
        opt_cents(r.cost_cents),
        opt_cents(r.cost_per_busy_h_cents),
        opt_cents(r.break_even_per_busy_h_cents),
        format_cents(r.revenue_cents),
        opt_cents(r.revenue_per_busy_h_cents),
        opt_cents(r.margin_cents),
        opt_cents(r.recovered_cents),
        r.purchase_price_cents
            .map(|p| format_cents(i64::try_from(p).unwrap_or(i64::MAX)))
            .unwrap_or_default(),
        months(r.payback_months_x10, r.purchase_price_cents.is_some()),
        r.sessions.to_string(),
        r.problem.clone().unwrap_or_default(),
    ]
}

/// The report as CSV (amounts in EUR with two decimals, hours with two, percentages with two).
pub fn to_csv(r: &CostReport) -> String {
    let mut out = COLUMNS.join(",");
    out.push('\n');
    for row in &r.machines {
        let c: Vec<String> = cells(row)
            .iter()
            .map(|x| crate::accounting::csv_field(x))
            .collect();
        out.push_str(&c.join(","));
        out.push('\n');
    }
    out
}

/// The report as an aligned text table, with the range and the problems below it.
pub fn to_table(r: &CostReport) -> String {
    let rows: Vec<[String; 17]> = r.machines.iter().map(cells).collect();
    let shown = COLUMNS.len() - 1; // the problem goes below the table
    let mut width = [0usize; 17];
    for (i, c) in COLUMNS.iter().enumerate() {
        width[i] = c.len();
    }
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = format!(
        "site {}: cost recovery from {} to {} (EUR excl. VAT; opening hours {})\n",
        r.site,
        crate::api::format_utc(r.from_ms),
        crate::api::format_utc(r.to_ms),
        r.opening_s
            .map(|s| format!("{} h", hours(s)))
            .unwrap_or_else(|| "not configured: add costs.opening_hours".into())
    );
    let line = |cols: &[String]| {
        let mut l = String::new();
        for (i, c) in cols.iter().take(shown).enumerate() {
            if i == 0 {
                l.push_str(&format!("{c:<w$}", w = width[i]));
            } else {
                l.push_str(&format!("  {c:>w$}", w = width[i]));
            }
        }
        l.push('\n');
        l
    };
    let head: Vec<String> = COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    out.push_str(&line(&head));
    for row in &rows {
        out.push_str(&line(row));
    }
    for row in &r.machines {
        if let Some(p) = &row.problem {
            out.push_str(&format!("{}: {p}\n", row.machine));
        }
        if row.services_without_cost > 0 {
            out.push_str(&format!(
                "{}: {} services in the range were recorded without a cost (counted 0): give `maintenance done --cost-cents`\n",
                row.machine, row.services_without_cost
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> Date {
        Date::parse(s).expect("date")
    }

    #[test]
    fn opening_hours_parse_merge_and_count_local_time() {
        let h = OpeningHours::parse(
            "Mon-Fri 08:00-12:00 13:00-19:00, Sat 09:00-13:00, fri 18:00-20:00",
        )
        .expect("parse");
        assert_eq!(h.weekly_minutes(), 5 * 600 + 240 + 60);
        // Monday 2026-11-02 in Paris (UTC+1): 08:00 local is 07:00 UTC.
        let mon = Zone::EuCentral.midnight(date("2026-11-02"));
        assert_eq!(h.open_s(Zone::EuCentral, mon, mon + 86_400_000), 10 * 3600);
        assert_eq!(
            h.open_s(Zone::EuCentral, mon + 9 * 3_600_000, mon + 86_400_000),
            (10 - 1) * 3600,
            "from 09:00 local: one hour of the morning is gone"
        );
        let week = h.open_s(Zone::Utc, 0, 7 * 86_400_000);
        assert_eq!(week, u64::from(h.weekly_minutes()) * 60);
    }

    #[test]
    fn bad_opening_hours_say_what_is_wrong() {
        for (s, needle) in [
            ("Mon-Fri", "no hours"),
            ("Fri-Mon 08:00-10:00", "backwards"),
            ("Mon 8:00-10:00", "time window"),
            ("Lun 08:00-10:00", "not a day"),
            ("Mon 10:00-08:00", "ends before"),
            ("Mon 08:00-24:30", "time window"),
        ] {
            let e = OpeningHours::parse(s).expect_err(s);
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn months_are_added_with_the_day_clamped() {
        assert_eq!(add_months(date("2026-01-31"), 1), date("2026-02-28"));
        assert_eq!(add_months(date("2026-11-15"), 14), date("2028-01-15"));
    }
}
