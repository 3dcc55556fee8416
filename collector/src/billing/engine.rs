//! The pricing engine: sessions, rules and a period in, priced lines out. Pure (no IO, no clock):
//! the same inputs always give the same lines, whatever their order or duplicates.
//!
//! See docs/BILLING.md for the rules and their precedence; each step below names its rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::calendar::{Date, Period};
use super::money::{to_cents, Exact};
use super::tariff::{BillingRules, PlanRules, Rates, TariffVersion};

/// The identity of a session: (machine, boot, session). Duplicates with one key count once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    /// Machine id.
    pub machine: String,
    /// Device boot.
    pub boot: u32,
    /// Session id within the boot.
    pub session: u32,
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.machine, self.boot, self.session)
    }
}

impl SessionKey {
    /// Parses `machine/boot/session`.
    pub fn parse(s: &str) -> Option<SessionKey> {
        let mut it = s.rsplitn(3, '/');
        let session = it.next()?.parse().ok()?;
        let boot = it.next()?.parse().ok()?;
        let machine = it.next()?.to_owned();
        Some(SessionKey {
            machine,
            boot,
            session,
        })
    }
}

/// A session as the engine prices it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillableSession {
    /// Identity.
    pub key: SessionKey,
    /// Member billed.
    pub member: String,
    /// Start, UTC ms: picks the tariff version, the plan, the day and the period.
    pub start_ms: u64,
    /// Busy seconds.
    pub busy_s: u32,
    /// Idle seconds.
    pub idle_s: u32,
}

impl BillableSession {
    /// From a stored session: `None` without a start, or without a known member (unknown badges
    /// are stored as `badge:<hash>` and are not billed).
    pub fn from_view(s: &crate::ledger::SessionView) -> Option<BillableSession> {
        let member = s.member.clone().filter(|m| !m.starts_with("badge:"))?;
        Some(BillableSession {
            key: SessionKey {
                machine: s.machine.clone(),
                boot: s.boot,
                session: s.session,
            },
            member,
            start_ms: s.start_ms?,
            busy_s: s.busy_s,
            idle_s: s.idle_s,
        })
    }
}

/// A component of a session line, exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// `busy`, `idle`, `included` (allowance), `setup` or `minimum` (top-up to the minimum).
    pub what: String,
    /// Minutes, or 1 for a fee.
    pub quantity: u64,
    /// Unit price, exact.
    pub unit_price: Exact,
    /// quantity x unit price, exact.
    pub exact: Exact,
}

/// What a line bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// One session (time, setup, minimum).
    Session,
    /// The (negative) daily-cap adjustment of one day and tariff.
    DailyCap,
}

/// One priced line: it names the sessions it bills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    /// What it bills.
    pub kind: LineKind,
    /// Billed after its period was invoiced.
    pub late: bool,
    /// Local day of the session start (or the capped day).
    pub day: Date,
    /// Session start, UTC ms (session lines).
    pub start_ms: Option<u64>,
    /// Tariff name.
    pub tariff: String,
    /// First day of the tariff version used.
    pub tariff_from: Date,
    /// Plan applied, if any.
    pub plan: Option<String>,
    /// Human description.
    pub description: String,
    /// Components (session lines).
    pub parts: Vec<Part>,
    /// The exact amount (sum of the parts, or the cap adjustment).
    pub exact: Exact,
    /// The amount excl. VAT in cents: `exact` rounded once (half away from zero).
    pub amount_cents: i64,
    /// VAT rate, basis points.
    pub vat_bp: u32,
    /// Sales account.
    pub account: String,
    /// The sessions billed.
    pub sessions: Vec<SessionKey>,
}

/// A session the engine did not price, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The session.
    pub key: SessionKey,
    /// Why: `other_member`, `outside_period`, `no_tariff`, `no_time`.
    pub reason: String,
}

/// The result of [`price`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Pricing {
    /// Lines, in order: session lines by start, then cap adjustments by day.
    pub lines: Vec<PricedLine>,
    /// Sessions given but not priced.
    pub skipped: Vec<Skipped>,
    /// Allowance minutes used per tariff name, over billed and new sessions.
    pub allowance_used: BTreeMap<String, u64>,
}

impl Pricing {
    /// Sum of the line amounts, cents excl. VAT.
    pub fn total_cents(&self) -> i64 {
        self.lines.iter().map(|l| l.amount_cents).sum()
    }

    /// Sessions billed by the lines.
    pub fn sessions(&self) -> BTreeSet<SessionKey> {
        self.lines
            .iter()
            .flat_map(|l| l.sessions.iter().cloned())
            .collect()
    }
}

fn discounted(x: Exact, percent: u32) -> Exact {
    // Configured amounts are multiples of 100 units: a whole-percent discount stays exact.
    Exact(
        x.0 / 100 * i64::from(100 - percent.min(100))
            + x.0 % 100 * i64::from(100 - percent.min(100)) / 100,
    )
}

/// The amounts that apply to a member on a plan (rule 3: the biggest discount wins, per amount).
pub fn effective_rates(t: &TariffVersion, plan: Option<&PlanRules>) -> Rates {
    let Some(p) = plan else {
        return t.rates.clone();
    };
    let own = p.own.get(&t.name).cloned().unwrap_or_default();
    let best = |base: Exact, own: Option<Exact>| {
        let d = discounted(base, p.discount_percent);
        own.map_or(d, |o| o.min(d))
    };
    Rates {
        busy: best(t.rates.busy, own.busy),
        idle: best(t.rates.idle, own.idle),
        setup: best(t.rates.setup, own.setup),
        // Minimum and cap are not discounted by the percentage (so they stay whole cents): a plan
        // changes them with its own amounts only.
        minimum: own
            .minimum
            .map_or(t.rates.minimum, |o| o.min(t.rates.minimum)),
        daily_cap: match (t.rates.daily_cap, own.daily_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    }
}

fn started_increments(seconds: u32, increment_min: u32) -> u64 {
    let inc = u64::from(increment_min.max(1)) * 60;
    u64::from(seconds).div_ceil(inc) * u64::from(increment_min.max(1))
}

fn mul(q: u64, p: Exact) -> Exact {
    Exact(i64::try_from(q).unwrap_or(i64::MAX).saturating_mul(p.0))
}

/// Deduplicates by key (keeping, for a key seen with different contents, the greatest by start,
/// busy then idle seconds, so the choice does not depend on order) and sorts by (start, key).
pub fn canonical(sessions: &[BillableSession]) -> Vec<BillableSession> {
    let mut by_key: BTreeMap<&SessionKey, &BillableSession> = BTreeMap::new();
    for s in sessions {
        let slot = by_key.entry(&s.key).or_insert(s);
        let rank = |x: &BillableSession| (x.start_ms, x.busy_s, x.idle_s, x.member.clone());
        if rank(s) > rank(slot) {
            *slot = s;
        }
    }
    let mut v: Vec<BillableSession> = by_key.into_values().cloned().collect();
    v.sort_by(|a, b| (a.start_ms, &a.key).cmp(&(b.start_ms, &b.key)));
    v
}

struct Computed {
    line: PricedLine,
    cap: Option<Exact>,
    billed: bool,
}

/// Prices the sessions of `member` started in `period`.
///
/// `billed` names sessions already on an issued invoice: they are priced first (they consumed
/// the allowance and count towards daily caps) but get no line; lines are made for the others,
/// and a daily-cap line is the cap adjustment still owed (the day's adjustment minus what the
/// billed sessions alone had). Pass an empty set for a first invoice or a statement.
pub fn price(
    rules: &BillingRules,
    member: &str,
    period: Period,
    sessions: &[BillableSession],
    billed: &BTreeSet<SessionKey>,
) -> Pricing {
    let (from, to) = period.bounds(rules.zone);
    let mut out = Pricing::default();
    let mut todo = Vec::new();
    for s in canonical(sessions) {
        let reason = if s.member != member {
            Some("other_member")
        } else if !(from..to).contains(&s.start_ms) {
            Some("outside_period")
        } else if s.busy_s == 0 && s.idle_s == 0 {
            Some("no_time")
        } else if rules.tariff_for(&s.key.machine, s.start_ms).is_none() {
            Some("no_tariff")
        } else {
            None
        };
        match reason {
            Some(r) => out.skipped.push(Skipped {
                key: s.key.clone(),
                reason: r.into(),
            }),
            None => todo.push(s),
        }
    }
    // Rule 5: allowances are consumed in order: billed sessions first, then by start.
    todo.sort_by(|a, b| {
        (!billed.contains(&a.key), a.start_ms, &a.key).cmp(&(
            !billed.contains(&b.key),
            b.start_ms,
            &b.key,
        ))
    });
    let mut remaining: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut computed = Vec::new();
    for s in &todo {
        let Some(t) = rules.tariff_for(&s.key.machine, s.start_ms) else {
            continue;
        };
        let plan = rules.plan_for(member, s.start_ms);
        let r = effective_rates(t, plan);
        // Rule 4: increments, per started increment, busy and idle separately.
        let busy_min = started_increments(s.busy_s, t.increment_min);
        let idle_min = started_increments(s.idle_s, t.increment_min);
        // Rule 5: allowance.
        let included = match plan.and_then(|p| p.allowances.get(&t.name).map(|m| (p, m))) {
            Some((p, minutes)) => {
                let left = remaining
                    .entry((p.name.clone(), t.name.clone()))
                    .or_insert(u64::from(*minutes));
                let used = busy_min.min(*left);
                *left -= used;
                *out.allowance_used.entry(t.name.clone()).or_default() += used;
                used
            }
            None => 0,
        };
        let mut parts = Vec::new();
        let mut part = |what: &str, quantity: u64, unit_price: Exact| {
            let exact = mul(quantity, unit_price);
            parts.push(Part {
                what: what.into(),
                quantity,
                unit_price,
                exact,
            });
            exact
        };
        let mut time = Exact(0);
        if busy_min > included {
            time.0 += part("busy", busy_min - included, r.busy).0;
        }
        if included > 0 {
            part("included", included, Exact(0));
        }
        if idle_min > 0 {
            time.0 += part("idle", idle_min, r.idle).0;
        }
        // Rule 6: minimum charge of the session's time (after the allowance).
        let mut exact = time;
        if time < r.minimum {
            exact.0 += part("minimum", 1, Exact(r.minimum.0 - time.0)).0;
        }
        // Rule 7: setup fee.
        if r.setup.0 > 0 {
            exact.0 += part("setup", 1, r.setup).0;
        }
        let day = rules.zone.date_of(s.start_ms);
        let machine_name = rules
            .machines
            .get(&s.key.machine)
            .map(|m| m.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| s.key.machine.clone());
        let description = format!(
            "{} - {} {} UTC, session {}: busy {} min{}, idle {} min",
            t.label,
            machine_name,
            crate::api::format_utc(s.start_ms)
                .get(..16)
                .unwrap_or_default()
                .replace('T', " "),
            s.key,
            busy_min,
            if included > 0 {
                format!(" ({included} included)")
            } else {
                String::new()
            },
            idle_min,
        );
        computed.push(Computed {
            line: PricedLine {
                kind: LineKind::Session,
                late: false,
                day,
                start_ms: Some(s.start_ms),
                tariff: t.name.clone(),
                tariff_from: t.valid_from,
                plan: plan.map(|p| p.name.clone()),
                description,
                parts,
                exact,
                // The one rounding step.
                amount_cents: to_cents(exact),
                vat_bp: t.vat_bp,
                account: t.account.clone(),
                sessions: vec![s.key.clone()],
            },
            cap: r.daily_cap,
            billed: billed.contains(&s.key),
        });
    }
    // Rule 8: daily cap per member, local day and tariff, on the rounded session amounts.
    let mut days: BTreeMap<(Date, String), Vec<&Computed>> = BTreeMap::new();
    for c in &computed {
        days.entry((c.line.day, c.line.tariff.clone()))
            .or_default()
            .push(c);
    }
    let mut caps = Vec::new();
    for ((day, tariff), cs) in days {
        let Some(cap) = cs.iter().filter_map(|c| c.cap).min() else {
            continue;
        };
        let cap_cents = to_cents(cap);
        let adjust = |it: &mut dyn Iterator<Item = &&Computed>| {
            let sum: i64 = it.map(|c| c.line.amount_cents).sum();
            (cap_cents - sum).min(0)
        };
        let all = adjust(&mut cs.iter());
        let before = adjust(&mut cs.iter().filter(|c| c.billed));
        let owed = all - before;
        if owed == 0 {
            continue;
        }
        let first = cs[0];
        caps.push(PricedLine {
            kind: LineKind::DailyCap,
            late: false,
            day,
            start_ms: None,
            tariff: tariff.clone(),
            tariff_from: first.line.tariff_from,
            plan: first.line.plan.clone(),
            description: format!(
                "{} - daily cap {} EUR on {day}",
                rules
                    .tariffs
                    .get(&tariff)
                    .and_then(|v| v.first())
                    .map_or(tariff.as_str(), |t| t.label.as_str()),
                super::money::format_cents(cap_cents)
            ),
            parts: Vec::new(),
            exact: Exact(owed * super::money::UNIT),
            amount_cents: owed,
            vat_bp: first.line.vat_bp,
            account: first.line.account.clone(),
            sessions: cs
                .iter()
                .filter(|c| !c.billed)
                .flat_map(|c| c.line.sessions.clone())
                .collect(),
        });
    }
    let mut lines: Vec<PricedLine> = computed
        .into_iter()
        .filter(|c| !c.billed)
        .map(|c| c.line)
        .collect();
    lines.sort_by(|a, b| (a.start_ms, &a.sessions).cmp(&(b.start_ms, &b.sessions)));
    lines.extend(caps);
    out.lines = lines;
    out
}
