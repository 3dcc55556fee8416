//! Access: who may start a session, from the allow-list of the retained config.
//!
//! The allow-list lives in the config, which the device stores in flash
//! ([`crate::storage::ConfigStore`]) before applying it, so it works after a reboot without network.
//! A badge is identification, not authentication (MIFARE Classic UIDs can be cloned).
//!
//! Decisions, in order: a session is open → the same badge ends it (`badge_out`), another is refused
//! (`in_use`); no config was ever received → `no_allow_list`; the config carries a maintenance lock →
//! `maintenance_lock`; the badge is not listed → `not_allowed`; otherwise a session starts. A lock or
//! an allow-list change does not end an open session (cutting a machine mid-cut is unsafe); it only
//! refuses new ones.

use fabmeter_protocol::message::{DenyReason, DeviceConfig};
use fabmeter_protocol::BadgeHash;

/// What to do with a badge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start a session.
    Start,
    /// End the open session (the same badge again).
    End,
    /// Refuse, with the reason.
    Deny(DenyReason),
}

/// Decides what a presented badge does.
pub fn decide(
    config: Option<&DeviceConfig>,
    open: Option<&BadgeHash>,
    badge: &BadgeHash,
) -> Decision {
    match open {
        Some(b) if b == badge => return Decision::End,
        Some(_) => return Decision::Deny(DenyReason::InUse),
        None => {}
    }
    let Some(cfg) = config else {
        return Decision::Deny(DenyReason::NoAllowList);
    };
    if cfg.lock.is_some() {
        return Decision::Deny(DenyReason::MaintenanceLock);
    }
    if !cfg.allow.contains(badge) {
        return Decision::Deny(DenyReason::NotAllowed);
    }
    Decision::Start
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabmeter_protocol::message::{Lock, Sensing};

    fn cfg(allow: &[BadgeHash], locked: bool) -> DeviceConfig {
        DeviceConfig {
            v: 1,
            sensing: Sensing::RunSignal {
                active_low: false,
                dwell_ms: 0,
            },
            allow: allow.iter().copied().collect(),
            progress_s: 60,
            idle_timeout_s: 900,
            max_session_s: 0,
            telemetry_s: 0,
            lock: locked.then(|| Lock {
                reason: heapless::String::try_from("bearings").unwrap(),
            }),
        }
    }

    #[test]
    fn every_reason() {
        let a = BadgeHash([1; 8]);
        let b = BadgeHash([2; 8]);
        assert_eq!(
            decide(None, None, &a),
            Decision::Deny(DenyReason::NoAllowList)
        );
        let c = cfg(&[a], false);
        assert_eq!(decide(Some(&c), None, &a), Decision::Start);
        assert_eq!(
            decide(Some(&c), None, &b),
            Decision::Deny(DenyReason::NotAllowed)
        );
        assert_eq!(decide(Some(&c), Some(&a), &a), Decision::End);
        assert_eq!(
            decide(Some(&c), Some(&a), &b),
            Decision::Deny(DenyReason::InUse)
        );
        let l = cfg(&[a], true);
        assert_eq!(
            decide(Some(&l), None, &a),
            Decision::Deny(DenyReason::MaintenanceLock)
        );
        // A lock does not stop the member who is working from badging out.
        assert_eq!(decide(Some(&l), Some(&a), &a), Decision::End);
    }
}
