//! A workshop month through a real Mosquitto into the ledger and into invoices (issue #6's
//! acceptance scenario).
//!
//! Six machines and twelve members generate a month of sessions (September 2026). Each machine
//! publishes its device events at QoS 1 from its own MQTT client, with journal resends
//! (duplicates), weekly reboots, one session cut by a power loss and one unknown badge. The
//! collector runs in this process against the broker; invoices are issued with the
//! `fabmeter-collector` binary, as a manager would. The test prices every session itself, with
//! its own arithmetic (not the engine's), and checks each invoice; then: issuing twice issues
//! nothing; a September session that reaches the broker after September was invoiced goes on the
//! October invoice, marked late; `audit` reports zero differences, then exactly the difference of
//! one tampered raw event.

#[allow(dead_code)]
#[path = "ingest/helpers.rs"]
mod helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use fabmeter_collector::api;
use fabmeter_collector::config::Config;
use fabmeter_collector::ledger::{Ledger, SqliteLedger};
use fabmeter_e2e::{wait_until, Mosquitto};
use fabmeter_protocol::message::{EndReason, Event, EventBody, MachineState};
use fabmeter_protocol::{encode_to_vec, BadgeHash, BadgeKey, Id};
use helpers::{collector_cli, publish_all, publish_parallel, Msg, Rng, TestCollector, SITE};

const LONG: Duration = Duration::from_secs(120);

/// Machines and their kinds; the saw has no tariff (never billed).
const MACHINES: &[(&str, &str)] = &[
    ("laser-1", "laser"),
    ("laser-2", "laser"),
    ("printer-1", "printer-3d"),
    ("printer-2", "printer-3d"),
    ("cnc-1", "cnc"),
    ("saw-1", "saw"),
];
const MEMBERS: usize = 12;
/// Members m01..m04 are residents (20 % off per-minute prices and setup fees).
const RESIDENTS: usize = 4;

/// A tariff as the test prices it, in units of 1e-7 EUR (cap in cents).
#[derive(Clone, Copy)]
struct Tariff {
    busy: i64,
    idle: i64,
    inc: u32,
    minimum: i64,
    setup: i64,
    cap_cents: Option<i64>,
}

const EUR: i64 = 10_000_000;

fn tariff(kind: &str) -> Option<Tariff> {
    match kind {
        "laser" => Some(Tariff {
            busy: EUR / 2,
            idle: EUR / 10,
            inc: 5,
            minimum: 0,
            setup: 0,
            cap_cents: Some(3_000),
        }),
        "printer-3d" => Some(Tariff {
            busy: EUR / 50,
            idle: 0,
            inc: 1,
            minimum: 0,
            setup: EUR,
            cap_cents: None,
        }),
        "cnc" => Some(Tariff {
            busy: EUR * 8 / 10,
            idle: EUR / 20,
            inc: 1,
            minimum: 5 * EUR,
            setup: 0,
            cap_cents: None,
        }),
        _ => None,
    }
}

const BILLING: &str = r#"
[billing]
invoice_prefix = "ATL"
timezone = "UTC"
vat_rate = "20"
default_plan = "visitor"
[billing.seller]
name = "Atelier de Lyon SAS"
siret = "123 456 789 00012"
[[billing.tariffs]]
name = "laser"
valid_from = "2026-01-01"
busy_per_min = "0.50"
idle_per_min = "0.10"
increment_min = 5
daily_cap = "30.00"
[[billing.tariffs]]
name = "printer-3d"
valid_from = "2026-01-01"
busy_per_min = "0.02"
idle_per_min = "0"
increment_min = 1
setup = "1.00"
[[billing.tariffs]]
name = "cnc"
valid_from = "2026-01-01"
busy_per_min = "0.80"
idle_per_min = "0.05"
increment_min = 1
minimum = "5.00"
[[billing.plans]]
name = "resident"
discount_percent = 20
[[billing.plans]]
name = "visitor"
"#;

fn member_id(i: usize) -> String {
    format!("m{:02}", i + 1)
}

fn badge_of(i: usize) -> BadgeHash {
    BadgeKey::new([7; 32]).hash(&[0x04, 0x10, 0x20, i as u8])
}

fn site_toml() -> String {
    let mut s = format!("[site]\nid = \"{SITE}\"\n\n");
    for (id, kind) in MACHINES {
        s += &format!("[[machines]]\nid = \"{id}\"\nkind = \"{kind}\"\n");
    }
    for i in 0..MEMBERS {
        s += &format!(
            "[[members]]\nid = \"{}\"\nname = \"Member {}\"\nbadges = [\"{}\"]\n",
            member_id(i),
            i + 1,
            badge_of(i)
        );
    }
    s += BILLING;
    for i in 0..RESIDENTS {
        s += &format!(
            "[[billing.memberships]]\nmember = \"{}\"\nplan = \"resident\"\nvalid_from = \"2026-01-01\"\n",
            member_id(i)
        );
    }
    s
}

/// One generated session, as the test knows it.
#[derive(Debug, Clone)]
struct Sess {
    machine: &'static str,
    kind: &'static str,
    boot: u32,
    session: u32,
    /// Index of the member; `None`: a badge nobody owns.
    member: Option<usize>,
    start_ms: u64,
    /// What the invoice must bill (the end's totals, or the last progress when cut).
    busy_s: u32,
    idle_s: u32,
    /// Cut by a power loss: no end event.
    cut: bool,
}

/// Price of one session in cents, by this test's own arithmetic (docs/BILLING.md rules 3-8).
fn price_cents(kind: &str, resident: bool, busy_s: u32, idle_s: u32) -> i64 {
    let t = tariff(kind).expect("a billed kind");
    let minutes = |s: u32| i64::from(s.div_ceil(t.inc * 60) * t.inc);
    let off = |x: i64| if resident { x * 80 / 100 } else { x };
    let time = minutes(busy_s) * off(t.busy) + minutes(idle_s) * off(t.idle);
    let exact = time.max(t.minimum) + off(t.setup);
    (exact + 50_000) / 100_000
}

/// What each member's invoice must total (excl. VAT, in cents), from the sessions alone: the
/// sum of the session prices with the laser's daily cap per member and day.
fn expected_excl(sessions: &[&Sess]) -> BTreeMap<String, i64> {
    let mut per_day: BTreeMap<(usize, &str, u64), i64> = BTreeMap::new();
    for s in sessions {
        let Some(m) = s.member else { continue };
        if tariff(s.kind).is_none() {
            continue;
        }
        let day = s.start_ms / 86_400_000;
        *per_day.entry((m, s.kind, day)).or_default() +=
            price_cents(s.kind, m < RESIDENTS, s.busy_s, s.idle_s);
    }
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for ((m, kind, _), sum) in per_day {
        let capped = tariff(kind)
            .and_then(|t| t.cap_cents)
            .map_or(sum, |cap| sum.min(cap));
        *out.entry(member_id(m)).or_default() += capped;
    }
    out.retain(|_, v| *v != 0);
    out
}

fn vat(excl: i64) -> i64 {
    (excl * 20 + 50) / 100
}

/// A device with a clock: events of one boot with (seq, uptime, ts).
struct Device {
    machine: &'static str,
    boot: u32,
    boot_ms: u64,
    seq: u32,
    msgs: Vec<Msg>,
}

impl Device {
    fn emit(&mut self, at_ms: u64, body: EventBody) -> u32 {
        self.seq += 1;
        let uptime_ms = at_ms - self.boot_ms;
        let ev = Event {
            v: 1,
            box_id: None,
            boot: self.boot,
            seq: self.seq,
            uptime_ms,
            sent_uptime_ms: uptime_ms,
            ts: Some(at_ms),
            event: body,
        };
        self.msgs.push(Msg {
            topic: format!("fabmeter/v1/{SITE}/{}/event", self.machine),
            payload: encode_to_vec(&ev).expect("valid event"),
        });
        self.seq
    }

    fn reboot(&mut self, at_ms: u64) {
        self.boot += 1;
        self.boot_ms = at_ms;
        self.seq = 0;
    }

    /// One session: start, busy then idle, progress every 15 min, end. With `cut`, the device
    /// loses power after the last progress: no end event.
    fn session(
        &mut self,
        badge: BadgeHash,
        start: u64,
        busy_s: u32,
        idle_s: u32,
        cut: bool,
    ) -> (u32, u32, u32) {
        let id = self.emit(start, EventBody::SessionStarted { badge });
        self.emit(
            start + 1_000,
            EventBody::State {
                from: MachineState::Idle,
                to: MachineState::Busy,
            },
        );
        let total = busy_s + idle_s;
        let (mut last_busy, mut last_idle) = (0, 0);
        let mut t = 900;
        while t < total {
            last_busy = t.min(busy_s);
            last_idle = t.saturating_sub(busy_s);
            self.emit(
                start + u64::from(t) * 1000,
                EventBody::SessionProgress {
                    session: id,
                    busy_s: last_busy,
                    idle_s: last_idle,
                    energy_wh: t / 60,
                },
            );
            t += 900;
        }
        if cut {
            return (id, last_busy, last_idle);
        }
        let end = start + u64::from(total) * 1000;
        self.emit(
            end,
            EventBody::State {
                from: MachineState::Busy,
                to: MachineState::Idle,
            },
        );
        self.emit(
            end + 1_000,
            EventBody::SessionEnded {
                session: id,
                badge,
                busy_s,
                idle_s,
                energy_wh: total / 60,
                reason: EndReason::BadgeOut,
            },
        );
        (id, busy_s, idle_s)
    }
}

/// September 2026, 1st 00:00 UTC.
const SEP_1: u64 = 1_788_220_800_000;
const DAY: u64 = 86_400_000;

/// The month: per machine, 0 to 4 sessions a day between 08:00 and 19:00, a reboot every
/// Monday-ish (every 7 days), one power cut mid-session on the CNC, one unknown badge.
fn generate(seed: u64) -> (Vec<(String, Vec<Msg>)>, Vec<Sess>) {
    let mut rng = Rng::new(seed);
    let mut per_client = Vec::new();
    let mut all = Vec::new();
    for (mi, (machine, kind)) in MACHINES.iter().enumerate() {
        let mut d = Device {
            machine,
            boot: 1,
            boot_ms: SEP_1 - 3_600_000,
            seq: 0,
            msgs: Vec::new(),
        };
        d.emit(
            SEP_1 - 3_000_000,
            EventBody::State {
                from: MachineState::Off,
                to: MachineState::Idle,
            },
        );
        for day in 0..30u64 {
            if day > 0 && day % 7 == 0 {
                d.reboot(SEP_1 + day * DAY + 3_600_000);
            }
            let mut t = SEP_1 + day * DAY + 8 * 3_600_000 + rng.below(3_600_000);
            let unknown_day = mi == 0 && day == 11;
            let cut_day = *machine == "cnc-1" && day == 13;
            let n = rng.below(5).max(u64::from(unknown_day || cut_day));
            for k in 0..n {
                let member = if unknown_day && k == 0 {
                    None // a badge nobody owns: recorded, never billed
                } else {
                    Some(rng.below(MEMBERS as u64) as usize)
                };
                let badge =
                    member.map_or_else(|| BadgeKey::new([7; 32]).hash(&[0xde, 0xad]), badge_of);
                let busy_s = 60 + rng.below(7_200) as u32;
                let idle_s = rng.below(1_800) as u32;
                // The CNC's last session of the 13th is cut by a power loss; the device boots
                // again on the 14th (weekly reboot) and the session is closed as interrupted.
                let cut = cut_day && k == 0;
                let (busy_s, idle_s) = if cut { (3_000, 0) } else { (busy_s, idle_s) };
                let (session, b, i) = d.session(badge, t, busy_s, idle_s, cut);
                all.push(Sess {
                    machine,
                    kind,
                    boot: d.boot,
                    session,
                    member,
                    start_ms: t,
                    busy_s: b,
                    idle_s: i,
                    cut,
                });
                if cut {
                    break;
                }
                t += u64::from(busy_s + idle_s) * 1000 + 120_000 + rng.below(3_600_000);
                if t > SEP_1 + day * DAY + 19 * 3_600_000 {
                    break;
                }
            }
        }
        // Journal resends after reconnections: about 10 % of the events a second time.
        let mut resent: Vec<Msg> = d
            .msgs
            .iter()
            .filter(|_| rng.below(10) == 0)
            .cloned()
            .collect();
        rng.shuffle(&mut resent);
        d.msgs.extend(resent);
        per_client.push((format!("dev-{machine}"), d.msgs));
    }
    (per_client, all)
}

fn distinct_events(per_client: &[(String, Vec<Msg>)]) -> usize {
    per_client
        .iter()
        .flat_map(|(_, m)| m.iter().map(|m| (m.topic.clone(), m.payload.clone())))
        .collect::<BTreeSet<_>>()
        .len()
}

fn ledger_events(path: &Path) -> u64 {
    SqliteLedger::open(path, &Id::new(SITE).expect("id"), Default::default())
        .and_then(|l| l.totals())
        .map_or(0, |t| t.events)
}

/// The invoices written by `invoice --out`, by member.
fn read_docs(dir: &Path) -> Vec<serde_json::Value> {
    let mut docs: Vec<serde_json::Value> = std::fs::read_dir(dir)
        .expect("out dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json"))
        .collect();
    docs.sort_by_key(|d| d["number"].as_str().map(str::to_owned));
    docs
}

#[test]
fn a_workshop_month_through_the_broker_becomes_exact_invoices() {
    let broker = Mosquitto::builder().start().expect("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Config::from_toml(&site_toml()).expect("site config");
    c.mqtt.url = broker.url();
    c.mqtt.client_id = "fm-collector-month".into();
    c.ledger.path = dir.path().join("ledger.sqlite");
    c.http.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    c.validate().expect("valid config");
    let config_file = dir.path().join("site.toml");
    std::fs::write(&config_file, c.to_toml()).expect("write config");
    let ledger = c.ledger.path.clone();
    let cli = |args: &[&str]| {
        let (ok, out, err) = collector_cli(&config_file, args);
        (ok, format!("{out}{err}"))
    };

    let (mut per_client, sessions) = generate(2026);
    // Hold back one September session of m05 on printer-2: its device was offline until after
    // September was invoiced (its own boot, so it also tests a late boot).
    let late_start = SEP_1 + 29 * DAY + 20 * 3_600_000;
    let mut late_dev = Device {
        machine: "printer-2",
        boot: 50,
        boot_ms: late_start - 60_000,
        seq: 0,
        msgs: Vec::new(),
    };
    let (late_id, late_busy, late_idle) =
        late_dev.session(badge_of(4), late_start, 2_410, 0, false);
    let late_cents = price_cents("printer-3d", false, late_busy, late_idle);

    let expected_events = distinct_events(&per_client);
    let collector = TestCollector::start(c.clone(), tempfile::tempdir().expect("tempdir"));
    wait_until(LONG, "collector ready", || {
        collector.get("/readyz").status == 200
    });
    publish_parallel(broker.port(), std::mem::take(&mut per_client));
    wait_until(LONG, "every event in the ledger", || {
        ledger_events(&ledger) == expected_events as u64
    });

    // The independent expectation for September.
    let september: Vec<&Sess> = sessions.iter().collect();
    let want = expected_excl(&september);
    assert!(want.len() >= 10, "a busy month: {want:?}");
    let cut = sessions.iter().find(|s| s.cut).expect("the cut session");
    assert_eq!(
        (cut.busy_s, cut.idle_s),
        (2_700, 0),
        "billed to its last progress"
    );
    assert_eq!(
        api::format_utc(cut.start_ms)[..10].to_owned(),
        "2026-09-14",
        "the cut happens on the 13th day (0-based)"
    );

    // The statement of a member says what the invoice will.
    let m01 = collector.get("/api/members/m01/statement?period=2026-09");
    assert_eq!(m01.status, 200, "{}", m01.text());
    let st: serde_json::Value = serde_json::from_str(&m01.text()).expect("statement json");
    assert_eq!(
        st["totals"]["excl_cents"].as_i64(),
        want.get("m01").copied()
    );

    // Invoices, by the command a manager runs.
    let out = dir.path().join("sep");
    let out_s = out.to_str().expect("utf-8");
    let (ok, text) = cli(&["invoice", "--period", "2026-09", "--out", out_s]);
    assert!(ok, "{text}");
    let docs = read_docs(&out);
    let year = &api::format_utc(fabmeter_collector::ingest::now_ms())[..4];
    assert_eq!(
        docs.len(),
        want.len(),
        "one invoice per member with charges\n{text}"
    );
    let mut got = BTreeMap::new();
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(
            d["number"].as_str(),
            Some(format!("ATL-{year}-{:06}", i + 1).as_str()),
            "gap-free numbering"
        );
        let excl = d["totals"]["excl_cents"].as_i64().expect("excl");
        assert_eq!(d["totals"]["vat_cents"].as_i64(), Some(vat(excl)));
        assert_eq!(d["totals"]["incl_cents"].as_i64(), Some(excl + vat(excl)));
        got.insert(d["buyer"]["id"].as_str().expect("buyer").to_owned(), excl);
    }
    assert_eq!(got, want, "every member's total, computed independently");
    // Every billed session is on one session line, and the unknown badge and the saw never;
    // daily-cap lines name the sessions of their day.
    let lines: Vec<&serde_json::Value> = docs
        .iter()
        .flat_map(|d| d["lines"].as_array().expect("lines").iter())
        .collect();
    assert!(
        lines.iter().any(|l| l["kind"] == "daily_cap"),
        "some laser day reaches the cap"
    );
    let billed: Vec<String> = lines
        .iter()
        .filter(|l| l["kind"] == "session")
        .flat_map(|l| l["sessions"].as_array().expect("sessions").iter())
        .map(|s| format!("{}/{}/{}", s["machine"], s["boot"], s["session"]))
        .collect();
    let distinct: BTreeSet<&String> = billed.iter().collect();
    assert_eq!(distinct.len(), billed.len(), "no session twice");
    let billable = sessions
        .iter()
        .filter(|s| s.member.is_some() && tariff(s.kind).is_some())
        .count();
    assert_eq!(billed.len(), billable);

    // Issuing twice creates nothing.
    let (ok, text) = cli(&["invoice", "--period", "2026-09"]);
    assert!(ok && text.contains("already invoiced"), "{text}");
    let l = SqliteLedger::open(&ledger, &Id::new(SITE).expect("id"), c.badge_directory())
        .expect("ledger");
    assert_eq!(l.documents().expect("docs").len(), want.len());

    // The held-back September session arrives now, and goes on October's invoice, late.
    publish_all(broker.port(), "dev-printer-2-late", &late_dev.msgs);
    let total = expected_events + late_dev.msgs.len();
    wait_until(LONG, "the late session in the ledger", || {
        ledger_events(&ledger) == total as u64
    });
    let out = dir.path().join("oct");
    let (ok, text) = cli(&[
        "invoice",
        "--period",
        "2026-10",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{text}");
    let oct = read_docs(&out);
    let oct: Vec<&serde_json::Value> = oct.iter().filter(|d| d["period"] == "2026-10").collect();
    assert_eq!(oct.len(), 1, "{text}");
    let d = oct[0];
    assert_eq!(d["buyer"]["id"], "m05");
    assert_eq!(
        d["number"].as_str(),
        Some(format!("ATL-{year}-{:06}", want.len() + 1).as_str())
    );
    let lines = d["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["late"], true);
    assert_eq!(
        lines[0]["sessions"][0]["session"].as_u64(),
        Some(u64::from(late_id))
    );
    assert_eq!(lines[0]["amount_cents"].as_i64(), Some(late_cents));
    assert_eq!(d["totals"]["excl_cents"].as_i64(), Some(late_cents));

    // The audit recomputes every invoice from the raw events: no difference.
    let (ok, text) = cli(&["audit"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "audit: {} documents, 0 differences",
            want.len() + 1
        )),
        "{text}"
    );

    // Tamper with one raw event: a printer session's end, 10 busy minutes more.
    let victim = sessions
        .iter()
        .find(|s| s.machine == "printer-1" && s.member.is_some())
        .expect("a printer session");
    let member = victim.member.expect("member");
    let invoice = docs
        .iter()
        .find(|d| d["buyer"]["id"] == member_id(member).as_str())
        .and_then(|d| d["number"].as_str())
        .expect("its invoice")
        .to_owned();
    let raw = rusqlite::Connection::open(&ledger).expect("raw ledger");
    let n = raw
        .execute(
            "UPDATE events SET payload = replace(payload, ?1, ?2)
             WHERE machine = ?3 AND boot = ?4 AND session = ?5 AND kind = 'session_ended'",
            rusqlite::params![
                format!("\"busy_s\":{}", victim.busy_s),
                format!("\"busy_s\":{}", victim.busy_s + 600),
                victim.machine,
                victim.boot,
                victim.session
            ],
        )
        .expect("tamper");
    assert_eq!(n, 1, "one event row changed");
    let (ok, text) = cli(&["audit"]);
    assert!(!ok, "a difference makes audit fail\n{text}");
    let key = format!("{}/{}/{}", victim.machine, victim.boot, victim.session);
    let cents = |c: i64| format!("{}.{:02}", c / 100, c % 100);
    let issued = price_cents(
        "printer-3d",
        member < RESIDENTS,
        victim.busy_s,
        victim.idle_s,
    );
    let recomputed = price_cents(
        "printer-3d",
        member < RESIDENTS,
        victim.busy_s + 600,
        victim.idle_s,
    );
    let amount = format!(
        "{invoice} amount [Session {key}]: issued {} / recomputed {}",
        cents(issued),
        cents(recomputed)
    );
    assert!(text.contains(&amount), "want `{amount}` in:\n{text}");
    assert!(
        text.contains(&format!("{invoice} session [{key}]")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "audit: {} documents, 3 differences",
            want.len() + 1
        )),
        "{text}"
    );
    drop(collector);
}
