//! Property tests of the engine: order and duplicates do not matter, prices grow with duration,
//! and the totals follow the documented rounding rule.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::calendar::Period;
use super::engine::{price, BillableSession, LineKind, SessionKey};
use super::invoice::Totals;
use super::money::{to_cents, vat_cents, Exact};
use super::tariff::{BillingConfig, BillingRules};

/// A site with every rule in play: increments, minimum, setup, daily cap, discount, own rates,
/// allowance, two VAT rates, a tariff version change in the month.
fn rules() -> BillingRules {
    let cfg: BillingConfig = toml::from_str(
        r#"
invoice_prefix = "ATL"
timezone = "Europe/Paris"
default_plan = "resident"
[[tariffs]]
name = "laser"
valid_from = "2026-01-01"
busy_per_min = "0.41667"
idle_per_min = "0.05"
increment_min = 5
minimum = "3.00"
setup = "1.25"
daily_cap = "40.00"
[[tariffs]]
name = "laser"
valid_from = "2026-11-16"
busy_per_min = "0.45"
idle_per_min = "0.05"
increment_min = 5
minimum = "3.00"
setup = "1.25"
daily_cap = "45.00"
[[tariffs]]
name = "wood"
valid_from = "2026-01-01"
busy_per_min = "0.07"
vat_rate = "5.5"
increment_min = 15
[[plans]]
name = "resident"
discount_percent = 15
rates = [{ tariff = "wood", busy_per_min = "0.05" }]
allowances = [{ tariff = "laser", minutes = 120 }]
"#,
    )
    .expect("config");
    let machines = [
        ("laser-1".into(), String::new(), "laser".into(), None),
        (
            "saw-1".into(),
            String::new(),
            "saw".into(),
            Some("wood".into()),
        ),
    ];
    BillingRules::new(&cfg, &machines).expect("rules")
}

const NOV: u64 = 1_793_487_600_000; // 2026-11-01 00:00 Paris

fn session() -> impl Strategy<Value = BillableSession> {
    (
        0u32..2,
        0u32..3,
        0u32..40,
        0u64..(30 * 86_400),
        0u32..20_000,
        0u32..5_000,
    )
        .prop_map(|(m, boot, s, t, busy, idle)| BillableSession {
            key: SessionKey {
                machine: if m == 0 { "laser-1" } else { "saw-1" }.into(),
                boot,
                session: s,
            },
            member: "alice".into(),
            start_ms: NOV + t * 1000,
            busy_s: busy,
            idle_s: idle,
        })
}

/// Sessions with distinct keys.
fn sessions() -> impl Strategy<Value = Vec<BillableSession>> {
    proptest::collection::vec(session(), 0..25).prop_map(|v| {
        let mut seen = BTreeSet::new();
        v.into_iter()
            .filter(|s| seen.insert(s.key.clone()))
            .collect()
    })
}

fn total(rules: &BillingRules, s: &[BillableSession]) -> i64 {
    let p = price(rules, "alice", period(), s, &BTreeSet::new());
    p.total_cents()
}

fn period() -> Period {
    Period::parse("2026-11").expect("period")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn order_and_duplicates_do_not_matter(v in sessions(), seed in any::<u64>(), dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..10)) {
        let r = rules();
        let base = price(&r, "alice", period(), &v, &BTreeSet::new());
        let mut w = v.clone();
        if !w.is_empty() {
            for d in &dups {
                let x = w[d.index(v.len())].clone();
                w.push(x);
            }
        }
        // A deterministic shuffle.
        let mut state = seed | 1;
        for i in (1..w.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            let j = (state % (i as u64 + 1)) as usize;
            w.swap(i, j);
        }
        let again = price(&r, "alice", period(), &w, &BTreeSet::new());
        prop_assert_eq!(base, again);
    }

    #[test]
    fn longer_sessions_never_cost_less(v in sessions(), i in any::<prop::sample::Index>(), more_busy in 0u32..3_000, more_idle in 0u32..3_000) {
        prop_assume!(!v.is_empty());
        let r = rules();
        let before = total(&r, &v);
        let mut w = v.clone();
        let k = i.index(w.len());
        w[k].busy_s += more_busy;
        w[k].idle_s += more_idle;
        prop_assert!(total(&r, &w) >= before, "{} < {}", total(&r, &w), before);
    }

    #[test]
    fn adding_a_session_never_costs_less(v in sessions(), extra in session()) {
        let r = rules();
        prop_assume!(!v.iter().any(|s| s.key == extra.key));
        let before = total(&r, &v);
        let mut w = v.clone();
        w.push(extra);
        prop_assert!(total(&r, &w) >= before);
    }

    #[test]
    fn rounding_follows_the_documented_rule(v in sessions()) {
        let r = rules();
        let p = price(&r, "alice", period(), &v, &BTreeSet::new());
        let mut day_sums = std::collections::BTreeMap::<_, i64>::new();
        for l in &p.lines {
            match l.kind {
                LineKind::Session => {
                    // One rounding step: the exact amount to the cent, half away from zero.
                    let parts: i64 = l.parts.iter().map(|x| x.exact.0).sum();
                    prop_assert_eq!(parts, l.exact.0);
                    prop_assert_eq!(l.amount_cents, to_cents(l.exact));
                    prop_assert!((l.amount_cents * 100_000 - l.exact.0).abs() <= 50_000);
                    *day_sums.entry((l.day, l.tariff.clone())).or_default() += l.amount_cents;
                }
                LineKind::DailyCap => {
                    prop_assert!(l.amount_cents < 0);
                    let sum = day_sums.get(&(l.day, l.tariff.clone())).copied().unwrap_or(0);
                    let cap = if l.tariff_from.d == 16 { 4500 } else { 4000 };
                    prop_assert_eq!(sum + l.amount_cents, cap);
                }
            }
        }
        let t = Totals::of(&p.lines);
        prop_assert_eq!(t.excl_cents, p.total_cents());
        for row in &t.vat {
            prop_assert_eq!(row.vat_cents, vat_cents(row.base_cents, row.rate_bp));
            let exact = row.base_cents * i64::from(row.rate_bp);
            prop_assert!((row.vat_cents * 10_000 - exact).abs() <= 5_000);
        }
        prop_assert_eq!(t.incl_cents, t.excl_cents + t.vat_cents);
        prop_assert!(t.excl_cents >= 0);
        // Rounding per line moves the total by at most half a cent per session line.
        let exact_total: i64 = p.lines.iter().filter(|l| l.kind == LineKind::Session).map(|l| l.exact.0).sum();
        let caps: i64 = p.lines.iter().filter(|l| l.kind == LineKind::DailyCap).map(|l| l.amount_cents).sum();
        let n = p.lines.iter().filter(|l| l.kind == LineKind::Session).count() as i64;
        prop_assert!(((t.excl_cents - caps) * 100_000 - exact_total).abs() <= n * 50_000);
        let _ = Exact(0);
    }

    #[test]
    fn billed_then_late_adds_up_to_all_at_once(v in sessions(), mask in any::<u64>()) {
        // Invoicing some sessions first and the rest late costs what invoicing all at once costs,
        // when no allowance is in play (the allowance goes to billed sessions first).
        let mut r = rules();
        r.default_plan = None;
        let all = total(&r, &v);
        let first: Vec<BillableSession> = v.iter().enumerate().filter(|(i, _)| mask >> (i % 64) & 1 == 1).map(|(_, s)| s.clone()).collect();
        let billed: BTreeSet<SessionKey> = first.iter().map(|s| s.key.clone()).collect();
        let a = price(&r, "alice", period(), &first, &BTreeSet::new()).total_cents();
        let b = price(&r, "alice", period(), &v, &billed);
        prop_assert!(b.lines.iter().all(|l| l.sessions.iter().all(|k| !billed.contains(k))));
        prop_assert_eq!(a + b.total_cents(), all);
    }
}
