//! Maintenance (docs/MAINTENANCE.md): service plans evaluated against the machine's own counters,
//! locks, downtime and availability.
//!
//! This module is pure: it takes what the ledger holds and `now`, and returns states. The IO shell
//! (config publisher, alerts over MQTT and webhook) is [`task`].

pub mod admin;
pub mod task;

use serde::Serialize;

use crate::config::{Config, MachineConfig, PlanConfig};
use crate::ledger::{MaintenanceRecords, Outage, OUT_OF_ORDER};

const HOUR_MS: f64 = 3_600_000.0;
const DAY_MS: f64 = 86_400_000.0;

/// Availability is computed over this many days before `now`.
pub const AVAILABILITY_WINDOW_DAYS: u64 = 30;

/// The state of one plan on one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// More than `warn_before` of every interval is left.
    Ok,
    /// An interval has `warn_before` or less left.
    DueSoon,
    /// An interval is used up.
    Overdue,
}

impl PlanState {
    /// The wire name (`ok`, `due_soon`, `overdue`).
    pub fn as_str(self) -> &'static str {
        match self {
            PlanState::Ok => "ok",
            PlanState::DueSoon => "due_soon",
            PlanState::Overdue => "overdue",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<PlanState> {
        match s {
            "ok" => Some(PlanState::Ok),
            "due_soon" => Some(PlanState::DueSoon),
            "overdue" => Some(PlanState::Overdue),
            _ => None,
        }
    }
}

/// One plan on one machine, now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanStatus {
    /// Plan name.
    pub plan: String,
    /// State.
    pub state: PlanState,
    /// Whether an overdue state locks the machine.
    pub lock_when_overdue: bool,
    /// The interval in busy hours, if any.
    pub every_busy_h: Option<f64>,
    /// The interval in days, if any.
    pub every_days: Option<f64>,
    /// Busy hours since the last service (or since the first record).
    pub busy_h_since: f64,
    /// Busy hours left before the service is due (negative: overdue by that much).
    pub busy_h_left: Option<f64>,
    /// When the calendar interval ends, unix ms.
    pub due_ms: Option<u64>,
    /// The last recorded service, unix ms.
    pub last_service_ms: Option<u64>,
    /// Who did it.
    pub last_service_by: Option<String>,
}

/// Lifetime counters of a machine, in the units people read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LifetimeCounters {
    /// Hours powered (idle or busy).
    pub on_h: f64,
    /// Hours busy.
    pub busy_h: f64,
    /// Energy within sessions, kWh.
    pub energy_kwh: f64,
    /// Sessions.
    pub sessions: u64,
    /// Device boots seen on this machine (a swapped device adds its boots here).
    pub boots: u64,
}

/// Downtime and availability over a window ending now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Availability {
    /// Window start, unix ms (the window is at most [`AVAILABILITY_WINDOW_DAYS`], and starts no
    /// earlier than the machine's registration).
    pub from_ms: u64,
    /// Downtime in the window, seconds (out of order, or locked by an overdue plan; overlaps count
    /// once).
    pub downtime_s: u64,
    /// `1 - downtime / window`, from 0 to 1.
    pub availability: f64,
}

/// Everything about one machine's maintenance, now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineMaintenance {
    /// Machine id.
    pub machine: String,
    /// Human name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Counters of the machine (not of the device on it).
    pub counters: LifetimeCounters,
    /// Every plan of the machine.
    pub plans: Vec<PlanStatus>,
    /// The open out-of-order mark, if any.
    pub out_of_order: Option<Outage>,
    /// Why new sessions are refused, if they are: the out-of-order reason, or the overdue plan.
    pub lock: Option<String>,
    /// Downtime and availability.
    pub availability: Availability,
    /// Downtime since the machine's registration, seconds (never decreases: the time series'
    /// `availability.downtime_s`).
    pub downtime_total_s: u64,
    /// Badges the device refused because of a lock.
    pub refused_locked: u64,
}

impl MachineMaintenance {
    /// The worst state over the machine's plans (`ok` without plans).
    pub fn worst(&self) -> PlanState {
        self.plans
            .iter()
            .map(|p| p.state)
            .max()
            .unwrap_or(PlanState::Ok)
    }
}

/// The outage source of a plan's lock.
pub fn plan_source(plan: &str) -> String {
    format!("plan:{plan}")
}

fn state_of(used: f64, warn_before: f64) -> PlanState {
    if used >= 1.0 {
        PlanState::Overdue
    } else if used >= 1.0 - warn_before {
        PlanState::DueSoon
    } else {
        PlanState::Ok
    }
}

/// Evaluates one plan against a machine's records at `now_ms`.
///
/// Busy hours count from the machine's busy counter at the plan's last service (0 before any);
/// days count from the last service (before any: the machine's registration). The state is the
/// worst over the plan's intervals: `overdue` once one is used up, `due_soon` once `warn_before`
/// of one or less is left.
pub fn evaluate_plan(plan: &PlanConfig, rec: &MaintenanceRecords, now_ms: u64) -> PlanStatus {
    let last = rec.services.iter().rfind(|s| s.plan == plan.name);
    let busy_s_since = rec
        .counters
        .busy_s
        .saturating_sub(last.map_or(0, |s| s.busy_s_at));
    let busy_h_since = busy_s_since as f64 / 3600.0;
    let mut state = PlanState::Ok;
    let busy_h_left = plan.every_busy_h.map(|every| {
        state = state.max(state_of(busy_h_since / every, plan.warn_before));
        every - busy_h_since
    });
    let from_ms = last.map_or(rec.registered_ms, |s| s.done_ms);
    let due_ms = plan.every_days.map(|days| {
        let span = days * DAY_MS;
        let used = now_ms.saturating_sub(from_ms) as f64 / span;
        state = state.max(state_of(used, plan.warn_before));
        from_ms.saturating_add(span as u64)
    });
    PlanStatus {
        plan: plan.name.clone(),
        state,
        lock_when_overdue: plan.lock_when_overdue,
        every_busy_h: plan.every_busy_h,
        every_days: plan.every_days,
        busy_h_since: round3(busy_h_since),
        busy_h_left: busy_h_left.map(round3),
        due_ms,
        last_service_ms: last.map(|s| s.done_ms),
        last_service_by: last.map(|s| s.by.clone()),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Downtime (the union of the outages, clipped to the window) and availability over
/// `[from_ms, now_ms)`.
pub fn availability(outages: &[Outage], from_ms: u64, now_ms: u64) -> Availability {
    let mut spans: Vec<(u64, u64)> = outages
        .iter()
        .map(|o| {
            (
                o.from_ms.max(from_ms),
                o.to_ms.unwrap_or(now_ms).min(now_ms),
            )
        })
        .filter(|(a, b)| a < b)
        .collect();
    spans.sort_unstable();
    let mut down_ms = 0u64;
    let mut cur: Option<(u64, u64)> = None;
    for (a, b) in spans {
        cur = match cur {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                down_ms += cb - ca;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((ca, cb)) = cur {
        down_ms += cb - ca;
    }
    let window = now_ms.saturating_sub(from_ms);
    let availability = if window == 0 {
        1.0
    } else {
        1.0 - down_ms as f64 / window as f64
    };
    Availability {
        from_ms,
        downtime_s: down_ms / 1000,
        availability: (availability.clamp(0.0, 1.0) * 10_000.0).round() / 10_000.0,
    }
}

/// Evaluates every plan of a machine, its lock and its availability at `now_ms`.
pub fn evaluate_machine(
    config: &Config,
    machine: &MachineConfig,
    rec: &MaintenanceRecords,
    now_ms: u64,
) -> MachineMaintenance {
    let plans: Vec<PlanStatus> = config
        .plans_of(machine)
        .into_iter()
        .map(|p| evaluate_plan(p, rec, now_ms))
        .collect();
    let out_of_order = rec
        .outages
        .iter()
        .rfind(|o| o.source == OUT_OF_ORDER && o.to_ms.is_none())
        .cloned();
    let lock = match &out_of_order {
        Some(o) => Some(format!("out of order: {}", o.reason)),
        None => plans
            .iter()
            .find(|p| p.lock_when_overdue && p.state == PlanState::Overdue)
            .map(|p| format!("service overdue: {}", p.plan)),
    };
    let window_ms = AVAILABILITY_WINDOW_DAYS * 86_400_000;
    let from_ms = now_ms.saturating_sub(window_ms).max(rec.registered_ms);
    let c = &rec.counters;
    MachineMaintenance {
        machine: machine.id.clone(),
        name: if machine.name.is_empty() {
            machine.id.clone()
        } else {
            machine.name.clone()
        },
        kind: machine.kind.clone(),
        counters: LifetimeCounters {
            on_h: round3(c.on_s as f64 * 1000.0 / HOUR_MS),
            busy_h: round3(c.busy_s as f64 * 1000.0 / HOUR_MS),
            energy_kwh: round3(c.session_energy_wh as f64 / 1000.0),
            sessions: c.sessions,
            boots: c.boots,
        },
        plans,
        out_of_order,
        lock,
        availability: availability(&rec.outages, from_ms, now_ms),
        downtime_total_s: availability(&rec.outages, rec.registered_ms, now_ms).downtime_s,
        refused_locked: rec.refused_locked,
    }
}

#[cfg(test)]
mod tests;
