//! The plan rules, the lock and availability, with explicit times.

use super::*;
use crate::config::Config;
use crate::ledger::{MachineCounters, ServiceRecord};

const T0: u64 = 1_764_000_000_000;
const DAY: u64 = 86_400_000;

fn plan(busy_h: Option<f64>, days: Option<f64>, lock: bool) -> PlanConfig {
    PlanConfig {
        name: "lens".into(),
        machines: vec!["laser-1".into()],
        kinds: vec![],
        every_busy_h: busy_h,
        every_days: days,
        warn_before: 0.1,
        lock_when_overdue: lock,
    }
}

fn records(busy_s: u64, services: Vec<ServiceRecord>, outages: Vec<Outage>) -> MaintenanceRecords {
    MaintenanceRecords {
        counters: MachineCounters {
            machine: "laser-1".into(),
            on_s: busy_s * 2,
            busy_s,
            idle_s: busy_s,
            sessions: 3,
            session_busy_s: busy_s,
            session_energy_wh: 2500,
            boots: 2,
            events: 10,
        },
        services,
        outages,
        refused_locked: 0,
        registered_ms: T0,
    }
}

fn service(at_ms: u64, busy_s_at: u64) -> ServiceRecord {
    ServiceRecord {
        machine: "laser-1".into(),
        plan: "lens".into(),
        done_ms: at_ms,
        by: "tech".into(),
        note: String::new(),
        busy_s_at,
        cost_cents: None,
    }
}

fn outage(source: &str, from_ms: u64, to_ms: Option<u64>) -> Outage {
    Outage {
        machine: "laser-1".into(),
        source: source.into(),
        reason: "belt".into(),
        by: "tech".into(),
        from_ms,
        to_ms,
    }
}

#[test]
fn busy_hours_move_a_plan_from_ok_to_due_soon_to_overdue() {
    let p = plan(Some(10.0), None, false);
    let at =
        |busy_h: f64| evaluate_plan(&p, &records((busy_h * 3600.0) as u64, vec![], vec![]), T0);
    assert_eq!(at(8.99).state, PlanState::Ok);
    assert_eq!(at(9.0).state, PlanState::DueSoon);
    assert_eq!(at(9.99).state, PlanState::DueSoon);
    assert_eq!(at(10.0).state, PlanState::Overdue);
    assert_eq!(at(12.5).busy_h_left, Some(-2.5));
    assert_eq!(at(4.0).busy_h_left, Some(6.0));
}

#[test]
fn a_service_restarts_the_count_from_the_machine_counter_at_that_time() {
    let p = plan(Some(10.0), None, false);
    // 12 h busy, serviced at 11 h: 1 h since.
    let s = evaluate_plan(
        &p,
        &records(12 * 3600, vec![service(T0 + DAY, 11 * 3600)], vec![]),
        T0 + 2 * DAY,
    );
    assert_eq!(s.state, PlanState::Ok);
    assert_eq!(s.busy_h_since, 1.0);
    assert_eq!(s.busy_h_left, Some(9.0));
    assert_eq!(s.last_service_ms, Some(T0 + DAY));
    assert_eq!(s.last_service_by.as_deref(), Some("tech"));
    // A service of another plan does not count.
    let mut other = service(T0 + DAY, 11 * 3600);
    other.plan = "belt".into();
    let s = evaluate_plan(&p, &records(12 * 3600, vec![other], vec![]), T0 + 2 * DAY);
    assert_eq!(s.state, PlanState::Overdue);
}

#[test]
fn calendar_intervals_count_from_registration_then_from_the_last_service() {
    let p = plan(None, Some(10.0), false);
    let r = records(0, vec![], vec![]);
    assert_eq!(evaluate_plan(&p, &r, T0 + 8 * DAY).state, PlanState::Ok);
    assert_eq!(
        evaluate_plan(&p, &r, T0 + 9 * DAY).state,
        PlanState::DueSoon
    );
    let s = evaluate_plan(&p, &r, T0 + 10 * DAY);
    assert_eq!(s.state, PlanState::Overdue);
    assert_eq!(s.due_ms, Some(T0 + 10 * DAY));
    let r = records(0, vec![service(T0 + 10 * DAY, 0)], vec![]);
    let s = evaluate_plan(&p, &r, T0 + 11 * DAY);
    assert_eq!(s.state, PlanState::Ok);
    assert_eq!(s.due_ms, Some(T0 + 20 * DAY));
}

#[test]
fn the_worst_interval_decides() {
    let p = plan(Some(100.0), Some(10.0), false);
    assert_eq!(
        evaluate_plan(&p, &records(3600, vec![], vec![]), T0 + 11 * DAY).state,
        PlanState::Overdue
    );
    assert_eq!(
        evaluate_plan(&p, &records(95 * 3600, vec![], vec![]), T0 + DAY).state,
        PlanState::DueSoon
    );
}

fn site(plans: Vec<PlanConfig>) -> (Config, MachineConfig) {
    let mut c = Config::for_site("site");
    let m = MachineConfig {
        id: "laser-1".into(),
        name: "Laser".into(),
        kind: "laser".into(),
        tariff: None,
        sensing: None,
    };
    c.machines = vec![m.clone()];
    c.maintenance.plans = plans;
    (c, m)
}

#[test]
fn only_an_overdue_locking_plan_or_an_out_of_order_mark_locks() {
    let (c, m) = site(vec![plan(Some(1.0), None, false)]);
    let r = records(2 * 3600, vec![], vec![]);
    let mm = evaluate_machine(&c, &m, &r, T0 + DAY);
    assert_eq!(mm.worst(), PlanState::Overdue);
    assert_eq!(mm.lock, None, "the plan does not lock");

    let (c, m) = site(vec![plan(Some(1.0), None, true)]);
    let mm = evaluate_machine(&c, &m, &r, T0 + DAY);
    assert_eq!(mm.lock.as_deref(), Some("service overdue: lens"));

    let r = records(0, vec![], vec![outage(OUT_OF_ORDER, T0, None)]);
    let mm = evaluate_machine(&c, &m, &r, T0 + DAY);
    assert_eq!(mm.lock.as_deref(), Some("out of order: belt"));
    assert_eq!(mm.counters.energy_kwh, 2.5);

    let r = records(0, vec![], vec![outage(OUT_OF_ORDER, T0, Some(T0 + 1))]);
    assert_eq!(evaluate_machine(&c, &m, &r, T0 + DAY).lock, None);
}

#[test]
fn availability_counts_overlapping_downtime_once_within_the_window() {
    let outages = vec![
        outage(OUT_OF_ORDER, T0 + DAY, Some(T0 + 3 * DAY)),
        outage("plan:lens", T0 + 2 * DAY, Some(T0 + 4 * DAY)),
        // Before the window: not counted.
        outage(OUT_OF_ORDER, T0 - 5 * DAY, Some(T0 - 4 * DAY)),
        // Still open: counts until now.
        outage(OUT_OF_ORDER, T0 + 9 * DAY, None),
    ];
    let a = availability(&outages, T0, T0 + 10 * DAY);
    assert_eq!(a.downtime_s, 4 * 86_400);
    assert_eq!(a.availability, 0.6);
    assert_eq!(availability(&[], T0, T0).availability, 1.0);
}

mod alerts {
    use std::collections::HashMap;

    use fabmeter_protocol::message::Severity;

    use super::*;
    use crate::maintenance::task::{decide, device_config};

    fn machine_at(busy_h: f64, lock: bool, outages: Vec<Outage>) -> MachineMaintenance {
        let (c, m) = site(vec![plan(Some(10.0), None, lock)]);
        evaluate_machine(
            &c,
            &m,
            &records((busy_h * 3600.0) as u64, vec![], outages),
            T0,
        )
    }

    fn alerted(pairs: &[(&str, &str)]) -> HashMap<(String, String), String> {
        pairs
            .iter()
            .map(|(p, s)| (("laser-1".to_owned(), (*p).to_owned()), (*s).to_owned()))
            .collect()
    }

    #[test]
    fn one_alert_per_transition_and_none_when_nothing_changed() {
        let none = HashMap::new();
        // First evaluation, plan ok: nothing to say.
        let d = decide(
            "site",
            &[machine_at(1.0, false, vec![])],
            &none,
            &HashMap::new(),
            T0,
        );
        assert!(d.alerts.is_empty());
        // Due soon: one warning.
        let d = decide(
            "site",
            &[machine_at(9.5, false, vec![])],
            &none,
            &HashMap::new(),
            T0,
        );
        assert_eq!(d.alerts.len(), 1);
        let (_, plan, state, a) = &d.alerts[0];
        assert_eq!((plan.as_str(), state.as_str()), ("lens", "due_soon"));
        assert_eq!(
            (a.code.as_str(), a.severity),
            ("maintenance_due_soon", Severity::Warning)
        );
        assert_eq!(a.busy_h_left, Some(0.5));
        // Already alerted as due soon: nothing again.
        let d = decide(
            "site",
            &[machine_at(9.6, false, vec![])],
            &alerted(&[("lens", "due_soon")]),
            &HashMap::new(),
            T0,
        );
        assert!(d.alerts.is_empty());
        // Overdue and locking: critical, says locked.
        let d = decide(
            "site",
            &[machine_at(10.0, true, vec![])],
            &alerted(&[("lens", "due_soon")]),
            &HashMap::new(),
            T0,
        );
        let a = &d.alerts[0].3;
        assert_eq!(
            (a.code.as_str(), a.severity, a.locked),
            ("maintenance_overdue", Severity::Critical, true)
        );
        assert!(a.text.ends_with("machine locked"), "{}", a.text);
        // Back to ok after an alert: info.
        let d = decide(
            "site",
            &[machine_at(0.0, true, vec![])],
            &alerted(&[("lens", "overdue")]),
            &HashMap::new(),
            T0,
        );
        assert_eq!(d.alerts[0].3.code, "maintenance_ok");
    }

    #[test]
    fn out_of_order_alerts_and_configs_follow_the_lock() {
        let out = vec![outage(OUT_OF_ORDER, T0 - 1, None)];
        let d = decide(
            "site",
            &[machine_at(0.0, false, out)],
            &HashMap::new(),
            &HashMap::new(),
            T0,
        );
        assert_eq!(d.alerts.len(), 1);
        assert_eq!(d.alerts[0].3.code, "out_of_order");
        assert_eq!(d.alerts[0].3.plan, None);
        assert_eq!(
            d.configs,
            vec![("laser-1".to_owned(), Some("out of order: belt".to_owned()))]
        );
        // Published already with that lock: no config; back in service: info alert and a config.
        let published =
            HashMap::from([("laser-1".to_owned(), Some("out of order: belt".to_owned()))]);
        let d = decide(
            "site",
            &[machine_at(0.0, false, vec![])],
            &alerted(&[("-out-of-order", "out_of_order")]),
            &published,
            T0,
        );
        assert_eq!(d.alerts[0].3.code, "back_in_service");
        assert_eq!(d.configs, vec![("laser-1".to_owned(), None)]);
        let published = HashMap::from([("laser-1".to_owned(), None)]);
        let d = decide(
            "site",
            &[machine_at(0.0, false, vec![])],
            &alerted(&[("-out-of-order", "back_in_service")]),
            &published,
            T0,
        );
        assert_eq!(d, Default::default(), "nothing changed: nothing to send");
    }

    #[test]
    fn the_device_config_carries_sensing_badges_and_the_lock() {
        let (mut c, m) = site(vec![]);
        c.members = vec![crate::config::MemberConfig {
            id: "alice".into(),
            name: String::new(),
            badges: vec!["ba279e0c1e5c2464".into()],
        }];
        let dc = device_config(&c, &m, Some("service overdue: lens"));
        assert_eq!(dc.allow.len(), 1);
        assert_eq!(
            dc.lock.map(|l| l.reason.to_string()),
            Some("service overdue: lens".to_owned())
        );
        assert_eq!(dc.sensing, crate::maintenance::task::default_sensing());
        use fabmeter_protocol::Message as _;
        assert!(device_config(&c, &m, None).validate().is_ok());
        let long = "x".repeat(200);
        let dc = device_config(&c, &m, Some(&long));
        assert!(dc.validate().is_ok(), "a long reason is cut to fit");
    }
}

#[test]
fn maintenance_points_carry_each_plan_and_the_machine_downtime() {
    use fabmeter_protocol::Id;
    let mut both = plan(Some(10.0), Some(30.0), true);
    both.name = "lens cleaning".into();
    let (c, m) = site(vec![both, plan(None, Some(7.0), false)]);
    // 12 busy hours since registration: the busy interval is overdue, locking the machine; out of
    // order for the first day, and for a day 40 days later (outside the 30-day window).
    let outages = vec![
        outage(OUT_OF_ORDER, T0, Some(T0 + DAY)),
        outage(OUT_OF_ORDER, T0 + 40 * DAY, Some(T0 + 41 * DAY)),
    ];
    let now = T0 + 45 * DAY;
    let mm = evaluate_machine(&c, &m, &records(12 * 3600, vec![], outages), now);
    let site_id = Id::new("site").expect("id");
    let machine = Id::new("laser-1").expect("id");
    let lines: Vec<String> = crate::series::maintenance(&site_id, &machine, &mm, now)
        .iter()
        .map(|p| p.to_line().expect("valid point"))
        .collect();
    let t = now;
    assert_eq!(
        lines,
        [
            format!("maintenance,kind=laser,machine=laser-1,plan=lens\\ cleaning,site=site state=2i,busy_h_left=-2,days_left=-15 {t}"),
            format!("maintenance,kind=laser,machine=laser-1,plan=lens,site=site state=2i,days_left=-38 {t}"),
            format!("availability,kind=laser,machine=laser-1,site=site out_of_order=0i,locked=1i,downtime_s=172800i,availability_30d=0.9667 {t}"),
        ]
    );
    // Due soon, not locked, out of order now: the codes and flags follow.
    let (c, m) = site(vec![plan(Some(10.0), None, true)]);
    let r = records(
        9 * 3600 + 1800,
        vec![],
        vec![outage(OUT_OF_ORDER, T0, None)],
    );
    let mm = evaluate_machine(&c, &m, &r, T0 + 1000);
    let pts = crate::series::maintenance(&site_id, &machine, &mm, T0 + 1000);
    assert_eq!(
        pts[0].to_line().expect("valid"),
        format!("maintenance,kind=laser,machine=laser-1,plan=lens,site=site state=1i,busy_h_left=0.5 {}", T0 + 1000)
    );
    assert_eq!(
        pts[1].to_line().expect("valid"),
        format!("availability,kind=laser,machine=laser-1,site=site out_of_order=1i,locked=1i,downtime_s=1i,availability_30d=0 {}", T0 + 1000)
    );
}
