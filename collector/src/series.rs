//! What the collector writes to the time-series store: the mapping from ledger events and
//! telemetry to points. docs/SCHEMA.md documents every measurement, tag and field named here, and
//! dashboards may use only those.
//!
//! Tags are bounded: `site`, `machine`, `kind` on every point; `member` on sessions (the site's
//! members), `reason`/`code` (protocol enumerations). Fields are numeric only.

use std::collections::HashMap;

use fabmeter_protocol::message::{Event, EventBody, MachineState, Telemetry};
use fabmeter_protocol::Id;

use crate::maintenance::{MachineMaintenance, PlanState};
use crate::timeseries::Point;

/// Measurement of state changes.
pub const MACHINE_STATE: &str = "machine_state";
/// Measurement of closed sessions.
pub const SESSION: &str = "session";
/// Measurement of telemetry samples.
pub const TELEMETRY: &str = "telemetry";
/// Measurement of device lifetime counters.
pub const DEVICE_COUNTERS: &str = "device_counters";
/// Measurement of refused badges.
pub const ACCESS_DENIED: &str = "access_denied";
/// Measurement of device faults.
pub const FAULT: &str = "fault";
/// Measurement of service plans, one point per plan per maintenance evaluation.
pub const MAINTENANCE: &str = "maintenance";
/// Measurement of a machine's locks and downtime, one point per maintenance evaluation.
pub const AVAILABILITY: &str = "availability";
/// Measurement of a machine's cost recovery over the last 30 days (docs/COSTS.md).
pub const COST_RECOVERY: &str = "cost_recovery";

/// Numeric code of a state: 0 off, 1 idle, 2 busy.
pub const fn state_code(s: MachineState) -> i64 {
    match s {
        MachineState::Off => 0,
        MachineState::Idle => 1,
        MachineState::Busy => 2,
    }
}

/// Numeric code of a plan state: 0 ok, 1 due soon, 2 overdue.
pub const fn plan_state_code(s: PlanState) -> i64 {
    match s {
        PlanState::Ok => 0,
        PlanState::DueSoon => 1,
        PlanState::Overdue => 2,
    }
}

fn base(measurement: &'static str, site: &Id, machine: &Id, kind: &str, time_ms: u64) -> Point {
    Point::new(measurement, i64::try_from(time_ms).unwrap_or(i64::MAX))
        .tag("site", site.as_str())
        .tag("machine", machine.as_str())
        .tag("kind", kind)
}

/// The wire name of a protocol enumeration value (`"badge_out"`), or `unknown`.
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn int(x: impl Into<u64>) -> i64 {
    i64::try_from(x.into()).unwrap_or(i64::MAX)
}

/// Points for one accepted event, dated at its wall time. `members` maps badge hashes to member
/// ids; an unknown badge is tagged `unknown`.
pub fn event(
    site: &Id,
    machine: &Id,
    kind: &str,
    ev: &Event,
    wall_ms: u64,
    members: &HashMap<String, String>,
) -> Vec<Point> {
    let p = |m| base(m, site, machine, kind, wall_ms);
    match &ev.event {
        EventBody::State { to, .. } => vec![p(MACHINE_STATE).field("state", state_code(*to))],
        EventBody::SessionEnded {
            badge,
            busy_s,
            idle_s,
            energy_wh,
            reason,
            ..
        } => {
            let member = members
                .get(badge.to_hex().as_str())
                .map_or("unknown", String::as_str);
            let reason = wire_name(reason);
            vec![p(SESSION)
                .tag("member", member)
                .tag("reason", reason)
                .field("busy_s", int(*busy_s))
                .field("idle_s", int(*idle_s))
                .field("energy_wh", int(*energy_wh))]
        }
        EventBody::Counters {
            on_s,
            busy_s,
            energy_wh,
            journal_dropped,
        } => vec![p(DEVICE_COUNTERS)
            .field("on_s", int(*on_s))
            .field("busy_s", int(*busy_s))
            .field("energy_wh", int(*energy_wh))
            .field("journal_dropped", int(*journal_dropped))],
        EventBody::AccessDenied { reason, .. } => {
            let reason = wire_name(reason);
            vec![p(ACCESS_DENIED).tag("reason", reason).field("count", 1i64)]
        }
        EventBody::Fault { code, .. } => {
            let code = wire_name(code);
            vec![p(FAULT).tag("code", code).field("count", 1i64)]
        }
        EventBody::SessionStarted { .. }
        | EventBody::SessionProgress { .. }
        | EventBody::CommandResult { .. } => Vec::new(),
    }
}

/// Points for one telemetry sample, dated by its `ts` or its reception.
///
/// The wire carries integers (`current_ma`, `power_w` in whole watts); the series keep the float
/// fields `current_a` (amperes) and `power_w` of docs/SCHEMA.md, so that dashboards and a bucket
/// written before the wire change see one field type and one unit.
pub fn telemetry(
    site: &Id,
    machine: &Id,
    kind: &str,
    t: &Telemetry,
    received_ms: u64,
) -> Vec<Point> {
    let mut p = base(TELEMETRY, site, machine, kind, t.ts.unwrap_or(received_ms))
        .field("state", state_code(t.state));
    if let Some(ma) = t.current_ma {
        p = p.field("current_a", f64::from(ma) / 1000.0);
    }
    if let Some(w) = t.power_w {
        p = p.field("power_w", f64::from(w));
    }
    vec![p]
}

/// Points for one machine's maintenance evaluated at `now_ms`: one `maintenance` point per plan
/// (`state`, and `busy_h_left` / `days_left` for the intervals the plan has) and one `availability`
/// point (locks, cumulative downtime, availability over the last 30 days).
pub fn maintenance(site: &Id, machine: &Id, m: &MachineMaintenance, now_ms: u64) -> Vec<Point> {
    let p = |name| base(name, site, machine, &m.kind, now_ms);
    let mut out: Vec<Point> = m
        .plans
        .iter()
        .map(|plan| {
            let mut pt = p(MAINTENANCE)
                .tag("plan", plan.plan.as_str())
                .field("state", plan_state_code(plan.state));
            if let Some(h) = plan.busy_h_left {
                pt = pt.field("busy_h_left", h);
            }
            if let Some(due) = plan.due_ms {
                let left_ms = i128::from(due) - i128::from(now_ms);
                let days = (left_ms as f64 / 86_400_000.0 * 1000.0).round() / 1000.0;
                pt = pt.field("days_left", days);
            }
            pt
        })
        .collect();
    out.push(
        p(AVAILABILITY)
            .field("out_of_order", i64::from(m.out_of_order.is_some()))
            .field("locked", i64::from(m.lock.is_some()))
            .field("downtime_s", int(m.downtime_total_s))
            .field("availability_30d", m.availability.availability),
    );
    out
}

/// The `cost_recovery` point of one machine's row of a report over the 30 days before `now_ms`:
/// busy hours, revenue, and with opening hours the utilisation; with a purchase price the cost,
/// margin, recovered amount and months to pay back (-1: never at this use), and the break-even
/// rate when the machine was busy.
pub fn cost_recovery(
    site: &Id,
    machine: &Id,
    kind: &str,
    r: &crate::costs::CostRow,
    now_ms: u64,
) -> Point {
    let mut p = base(COST_RECOVERY, site, machine, kind, now_ms)
        .field("busy_h_30d", r.busy_s as f64 / 3600.0)
        .field("revenue_cents_30d", r.revenue_cents);
    if let Some(u) = r.utilisation_bp {
        p = p.field("utilisation_30d", u as f64 / 10_000.0);
    }
    if let (Some(cost), Some(margin), Some(recovered)) =
        (r.cost_cents, r.margin_cents, r.recovered_cents)
    {
        let payback = r.payback_months_x10.map_or(-1.0, |x| x as f64 / 10.0);
        p = p
            .field("cost_cents_30d", cost)
            .field("margin_cents_30d", margin)
            .field("recovered_cents", recovered)
            .field("payback_months", payback);
    }
    if let Some(b) = r.break_even_per_busy_h_cents {
        p = p.field("break_even_cents_per_h_30d", b);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeseries::FieldValue;
    use fabmeter_protocol::message::EndReason;
    use fabmeter_protocol::BadgeHash;

    #[test]
    fn cost_points_write_what_is_known() {
        let site = Id::new("s").expect("id");
        let machine = Id::new("laser-1").expect("id");
        let mut r = crate::costs::row(
            "laser-1",
            "Laser",
            None,
            crate::billing::Zone::Utc,
            0,
            86_400_000,
            Some(36_000),
            crate::costs::Facts {
                busy_s: 3_600,
                revenue_cents: 500,
                ..Default::default()
            },
            crate::costs::Facts::default(),
        );
        let fields = |p: &Point| -> Vec<&'static str> { p.fields.iter().map(|f| f.0).collect() };
        let p = cost_recovery(&site, &machine, "laser", &r, 1);
        assert_eq!(
            fields(&p),
            ["busy_h_30d", "revenue_cents_30d", "utilisation_30d"]
        );
        r.cost_cents = Some(900);
        r.margin_cents = Some(-400);
        r.recovered_cents = Some(500);
        r.break_even_per_busy_h_cents = Some(900);
        let p = cost_recovery(&site, &machine, "laser", &r, 1);
        assert!(p
            .fields
            .iter()
            .any(|(k, v)| *k == "payback_months" && *v == FieldValue::Float(-1.0)));
        assert_eq!(fields(&p).len(), 8);
    }

    #[test]
    fn session_end_and_state_points() {
        let site = Id::new("s").expect("id");
        let machine = Id::new("laser-1").expect("id");
        let badge = BadgeHash([1; 8]);
        let members = HashMap::from([(badge.to_string(), "alice".to_string())]);
        let ev = |body| Event {
            v: 1,
            box_id: None,
            boot: 1,
            seq: 9,
            uptime_ms: 1,
            sent_uptime_ms: 1,
            ts: None,
            event: body,
        };
        let pts = event(
            &site,
            &machine,
            "laser",
            &ev(EventBody::SessionEnded {
                session: 2,
                badge,
                busy_s: 60,
                idle_s: 5,
                energy_wh: 7,
                reason: EndReason::IdleTimeout,
            }),
            1_000,
            &members,
        );
        let line = pts[0].to_line().expect("valid point");
        assert_eq!(
            line,
            "session,kind=laser,machine=laser-1,member=alice,reason=idle_timeout,site=s busy_s=60i,idle_s=5i,energy_wh=7i 1000"
        );
        let pts = event(
            &site,
            &machine,
            "laser",
            &ev(EventBody::State {
                from: MachineState::Idle,
                to: MachineState::Busy,
            }),
            2_000,
            &members,
        );
        assert_eq!(
            pts[0].to_line().expect("valid"),
            "machine_state,kind=laser,machine=laser-1,site=s state=2i 2000"
        );
    }

    #[test]
    fn telemetry_integers_become_the_float_fields_of_the_schema() {
        let site = Id::new("s").expect("id");
        let machine = Id::new("laser-1").expect("id");
        let sample = |current_ma, power_w| Telemetry {
            v: 1,
            boot: 1,
            uptime_ms: 1,
            ts: None,
            state: MachineState::Busy,
            current_ma,
            power_w,
        };
        let fields = |t: &Telemetry| telemetry(&site, &machine, "laser", t, 5)[0].fields.clone();
        assert_eq!(
            fields(&sample(Some(4750), Some(1093))),
            [
                ("state", FieldValue::Int(2)),
                ("current_a", FieldValue::Float(4.75)),
                ("power_w", FieldValue::Float(1093.0)),
            ]
        );
        // The extremes: 1 mA, and the protocol's largest current and power.
        assert_eq!(
            fields(&sample(Some(1), Some(0)))[1..],
            [
                ("current_a", FieldValue::Float(0.001)),
                ("power_w", FieldValue::Float(0.0)),
            ]
        );
        assert_eq!(
            fields(&sample(Some(10_000_000), Some(10_000_000)))[1..],
            [
                ("current_a", FieldValue::Float(10_000.0)),
                ("power_w", FieldValue::Float(10_000_000.0)),
            ]
        );
        assert_eq!(fields(&sample(None, None)), [("state", FieldValue::Int(2))]);
    }
}
