//! The worked examples of docs/BILLING.md, run as tests: each ```` ```toml example=NAME ```` block
//! holds a billing configuration, machines, sessions and the expected lines and totals.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::calendar::Period;
use super::engine::{price, BillableSession, LineKind, SessionKey};
use super::invoice::{apply_prepaid, Totals};
use super::money::{format_cents, parse_amount, to_cents};
use super::tariff::{BillingConfig, BillingRules};

const BILLING_MD: &str = include_str!("../../../docs/BILLING.md");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Example {
    billing: BillingConfig,
    machines: Vec<Machine>,
    sessions: Vec<Session>,
    expect: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Machine {
    id: String,
    kind: String,
    #[serde(default)]
    tariff: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Session {
    machine: String,
    #[serde(default = "one")]
    boot: u32,
    session: u32,
    member: String,
    start: String,
    busy_s: u32,
    idle_s: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    member: String,
    period: String,
    lines: Vec<String>,
    #[serde(default)]
    skipped: Vec<String>,
    #[serde(default)]
    billed: Vec<String>,
    #[serde(default)]
    allowance_minutes: Option<u64>,
    excl: String,
    vat: String,
    incl: String,
    #[serde(default)]
    prepaid: Option<String>,
    #[serde(default)]
    due: Option<String>,
}

/// (name, line, TOML body) of every example block.
pub(crate) fn blocks(md: &str) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    let mut lines = md.lines().enumerate();
    while let Some((n, l)) = lines.next() {
        let Some(name) = l.trim_end().strip_prefix("```toml example=") else {
            continue;
        };
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim_end() == "```" {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        out.push((name.to_owned(), n + 1, body));
    }
    out
}

fn cents(s: &str) -> i64 {
    let neg = s.starts_with('-');
    let c = to_cents(parse_amount(s.trim_start_matches('-')).expect("amount"));
    if neg {
        -c
    } else {
        c
    }
}

fn run(name: &str, line: usize, body: &str) {
    let ex: Example = toml::from_str(body)
        .unwrap_or_else(|e| panic!("BILLING.md example {name} (line {line}): {e}"));
    let machines: Vec<_> = ex
        .machines
        .iter()
        .map(|m| {
            (
                m.id.clone(),
                String::new(),
                m.kind.clone(),
                m.tariff.clone(),
            )
        })
        .collect();
    let rules = BillingRules::new(&ex.billing, &machines)
        .unwrap_or_else(|e| panic!("example {name}: rules: {e}"));
    let sessions: Vec<BillableSession> = ex
        .sessions
        .iter()
        .map(|s| BillableSession {
            key: SessionKey {
                machine: s.machine.clone(),
                boot: s.boot,
                session: s.session,
            },
            member: s.member.clone(),
            start_ms: crate::api::parse_time(&s.start).expect("start time"),
            busy_s: s.busy_s,
            idle_s: s.idle_s,
        })
        .collect();
    for e in &ex.expect {
        let period = Period::parse(&e.period).expect("period");
        let billed: BTreeSet<SessionKey> = e
            .billed
            .iter()
            .map(|k| SessionKey::parse(k).expect("session key"))
            .collect();
        let p = price(&rules, &e.member, period, &sessions, &billed);
        let got: Vec<String> = p
            .lines
            .iter()
            .map(|l| {
                let keys: Vec<String> = l.sessions.iter().map(ToString::to_string).collect();
                let kind = match l.kind {
                    LineKind::Session => "session",
                    LineKind::DailyCap => "cap",
                };
                format!(
                    "{kind} {} = {}",
                    keys.join(","),
                    format_cents(l.amount_cents)
                )
            })
            .collect();
        assert_eq!(
            got, e.lines,
            "example {name} (line {line}), member {}",
            e.member
        );
        let skipped: Vec<String> = p
            .skipped
            .iter()
            .filter(|s| s.reason != "other_member")
            .map(|s| format!("{} {}", s.key, s.reason))
            .collect();
        assert_eq!(skipped, e.skipped, "example {name}: skipped");
        if let Some(m) = e.allowance_minutes {
            assert_eq!(
                p.allowance_used.values().sum::<u64>(),
                m,
                "example {name}: allowance"
            );
        }
        let t = Totals::of(&p.lines);
        assert_eq!(t.excl_cents, cents(&e.excl), "example {name}: excl");
        assert_eq!(t.vat_cents, cents(&e.vat), "example {name}: vat");
        assert_eq!(t.incl_cents, cents(&e.incl), "example {name}: incl");
        let available = to_cents(ex.billing.credit_bought(&e.member));
        let (used, due) = apply_prepaid(t.incl_cents, available);
        if let Some(x) = &e.prepaid {
            assert_eq!(used, cents(x), "example {name}: prepaid");
        }
        if let Some(x) = &e.due {
            assert_eq!(due, cents(x), "example {name}: due");
        }
    }
}

#[test]
fn every_rule_has_its_worked_example() {
    let names: Vec<String> = blocks(BILLING_MD).into_iter().map(|b| b.0).collect();
    for want in [
        "busy-idle",
        "increment",
        "versions",
        "machine-or-kind",
        "minimum",
        "setup",
        "daily-cap",
        "plans",
        "allowance",
        "vat-per-rate",
        "prepaid",
        "duplicates",
        "late",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "BILLING.md lacks example {want}"
        );
    }
}

#[test]
fn the_examples_of_billing_md_hold() {
    let blocks = blocks(BILLING_MD);
    assert!(blocks.len() >= 13);
    for (name, line, body) in &blocks {
        run(name, *line, body);
    }
}

#[test]
fn the_configuration_block_of_billing_md_is_valid() {
    let text = BILLING_MD
        .split("```toml\n[billing]")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the configuration block");
    let site = format!(
        "[site]\nid = \"atelier-lyon\"\n[[machines]]\nid = \"laser-1\"\nkind = \"laser\"\n[[members]]\nid = \"alice\"\n[billing]{text}"
    );
    let c = crate::config::Config::from_toml(&site).expect("parses");
    assert_eq!(c.validate(), Ok(()));
    let rules = c.billing_rules().expect("rules").expect("billing");
    assert_eq!(
        rules
            .plan_for("alice", 1_800_000_000_000)
            .map(|p| p.name.as_str()),
        Some("resident")
    );
}
