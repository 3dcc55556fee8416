//! What people do (the `maintenance` subcommands): record a service, mark a machine out of order
//! or back in service. Checked against the site configuration, written to the ledger; a running
//! collector notices at its next evaluation.

use crate::config::Config;
use crate::ledger::{Ledger, LedgerError, ServiceRecord, OUT_OF_ORDER};

/// Why a maintenance command was refused. Each names the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The machine is not in the configuration.
    #[error("unknown machine {machine:?}; the machines of this site are: {known}")]
    UnknownMachine {
        /// What was given.
        machine: String,
        /// The configured ids.
        known: String,
    },
    /// The plan does not apply to the machine.
    #[error("plan {plan:?} does not apply to machine {machine:?}; its plans are: {known} (see [[maintenance.plans]] in the site file)")]
    UnknownPlan {
        /// What was given.
        plan: String,
        /// The machine.
        machine: String,
        /// The machine's plans.
        known: String,
    },
    /// A required text is empty.
    #[error("--{0} must not be empty")]
    Empty(&'static str),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

fn list(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

fn machine<'a>(
    config: &'a Config,
    id: &str,
) -> Result<&'a crate::config::MachineConfig, AdminError> {
    config
        .machine(id)
        .ok_or_else(|| AdminError::UnknownMachine {
            machine: id.to_owned(),
            known: list(config.machines.iter().map(|m| m.id.clone())),
        })
}

fn not_empty(what: &'static str, s: &str) -> Result<(), AdminError> {
    if s.trim().is_empty() {
        Err(AdminError::Empty(what))
    } else {
        Ok(())
    }
}

/// Records a service of `plan` on `machine`, with what it cost (cents excl. VAT, optional: cost
/// recovery counts it, docs/COSTS.md): the plan's count restarts from the machine's counters now.
#[allow(clippy::too_many_arguments)]
pub fn record_service(
    config: &Config,
    ledger: &mut dyn Ledger,
    machine_id: &str,
    plan: &str,
    by: &str,
    note: &str,
    cost_cents: Option<u64>,
    now_ms: u64,
) -> Result<ServiceRecord, AdminError> {
    let m = machine(config, machine_id)?;
    let plans = config.plans_of(m);
    if !plans.iter().any(|p| p.name == plan) {
        return Err(AdminError::UnknownPlan {
            plan: plan.to_owned(),
            machine: machine_id.to_owned(),
            known: list(plans.iter().map(|p| p.name.clone())),
        });
    }
    not_empty("by", by)?;
    ledger
        .record_service(machine_id, plan, by, note, cost_cents, now_ms)?
        .ok_or_else(|| AdminError::UnknownMachine {
            machine: machine_id.to_owned(),
            known: "(not in the ledger yet: start the collector once with this site file)".into(),
        })
}

/// Marks a machine out of order (its device refuses new sessions); `false` if it already was.
pub fn out_of_order(
    config: &Config,
    ledger: &mut dyn Ledger,
    machine_id: &str,
    reason: &str,
    by: &str,
    now_ms: u64,
) -> Result<bool, AdminError> {
    machine(config, machine_id)?;
    not_empty("reason", reason)?;
    not_empty("by", by)?;
    Ok(ledger.open_outage(machine_id, OUT_OF_ORDER, reason, by, now_ms)?)
}

/// Ends a machine's out-of-order mark; `false` if it was not out of order.
pub fn back_in_service(
    config: &Config,
    ledger: &mut dyn Ledger,
    machine_id: &str,
    now_ms: u64,
) -> Result<bool, AdminError> {
    machine(config, machine_id)?;
    Ok(ledger.close_outage(machine_id, OUT_OF_ORDER, now_ms)?)
}
