//! Sessions: who uses the machine, for how long, busy or idle, and how much energy.
//!
//! The tracker does not assign sequence numbers: the [`Device`](crate::device::Device) journals the
//! `session_started` event first and opens the session with that event's `seq` as its id.
//!
//! Time is accumulated in milliseconds and reported in whole seconds (`busy_s = busy_ms / 1000`,
//! `idle_s = total_s - busy_s`, so `busy_s + idle_s` is the session's length in whole seconds and
//! no sub-second remainder is lost). Time spent `off` inside a session (badged in, machine not yet
//! switched on) counts as idle. Energy is accumulated in millijoules and reported in whole Wh.
//!
//! Deadlines (progress every `progress_s`, idle timeout, maximum duration) are computed exactly:
//! [`SessionTracker::poll`] reports each at its own uptime even when called late.

use fabmeter_protocol::message::{EndReason, EventBody, MachineState};
use fabmeter_protocol::BadgeHash;

/// The timing rules of sessions, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRules {
    /// Seconds between progress events (≥ 1).
    pub progress_s: u32,
    /// Idle seconds that end a session; 0 = never.
    pub idle_timeout_s: u32,
    /// Longest session in seconds; 0 = never.
    pub max_session_s: u32,
}

impl Default for SessionRules {
    fn default() -> Self {
        SessionRules {
            progress_s: 60,
            idle_timeout_s: 900,
            max_session_s: 43_200,
        }
    }
}

/// An open session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSession {
    /// Session id: the seq of its `session_started` event.
    pub id: u32,
    /// Who.
    pub badge: BadgeHash,
    /// Uptime at start.
    pub started_ms: u64,
    last_ms: u64,
    busy_ms: u64,
    idle_ms: u64,
    idle_run_ms: u64,
    energy_mj: u64,
    progress_count: u64,
}

impl OpenSession {
    /// Busy and idle whole seconds, and whole Wh, so far.
    pub fn totals(&self) -> (u32, u32, u32) {
        let total_s = (self.busy_ms + self.idle_ms) / 1000;
        let busy_s = self.busy_ms / 1000;
        let idle_s = total_s - busy_s;
        let wh = self.energy_mj / 3_600_000;
        (sat(busy_s), sat(idle_s), sat(wh))
    }
}

fn sat(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// A session event to journal, with its uptime.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvent {
    /// When it happened.
    pub at: u64,
    /// The event body (progress or ended).
    pub body: EventBody,
}

/// Tracks at most one open session.
#[derive(Debug, Clone, Default)]
pub struct SessionTracker {
    rules: SessionRules,
    open: Option<OpenSession>,
}

impl SessionTracker {
    /// A tracker with these rules.
    pub fn new(rules: SessionRules) -> Self {
        SessionTracker { rules, open: None }
    }

    /// Changes the rules (applies to the open session from now on).
    pub fn set_rules(&mut self, rules: SessionRules) {
        self.rules = rules;
    }

    /// The open session.
    pub fn open_session(&self) -> Option<&OpenSession> {
        self.open.as_ref()
    }

    /// Opens a session (the caller journaled its `session_started` as seq `id`).
    pub fn start(&mut self, id: u32, badge: BadgeHash, now: u64) {
        self.open = Some(OpenSession {
            id,
            badge,
            started_ms: now,
            last_ms: now,
            busy_ms: 0,
            idle_ms: 0,
            idle_run_ms: 0,
            energy_mj: 0,
            progress_count: 0,
        });
    }

    /// Adds energy measured while the session is open.
    pub fn add_energy(&mut self, mj: u64) {
        if let Some(s) = &mut self.open {
            s.energy_mj = s.energy_mj.saturating_add(mj);
        }
    }

    /// Advances the session to `now` with the machine in `state` since the last call, and returns
    /// the next due event (progress, idle timeout, maximum duration), at its exact deadline. Call
    /// again until it returns `None`.
    pub fn poll(&mut self, now: u64, state: MachineState) -> Option<SessionEvent> {
        let rules = self.rules;
        let s = self.open.as_mut()?;
        let now = now.max(s.last_ms);
        let elapsed = s.busy_ms + s.idle_ms;
        // Deadlines, as session-relative ms.
        let progress_at = (s.progress_count + 1) * u64::from(rules.progress_s.max(1)) * 1000;
        let max_at = (rules.max_session_s > 0).then(|| u64::from(rules.max_session_s) * 1000);
        let idle_at = (rules.idle_timeout_s > 0 && state != MachineState::Busy).then(|| {
            elapsed + (u64::from(rules.idle_timeout_s) * 1000).saturating_sub(s.idle_run_ms)
        });
        let target = elapsed + (now - s.last_ms);
        let next = [Some(progress_at), max_at, idle_at]
            .into_iter()
            .flatten()
            .min()
            .filter(|&d| d <= target);
        let upto = next.unwrap_or(target);
        let step = upto - elapsed;
        if state == MachineState::Busy {
            s.busy_ms += step;
            s.idle_run_ms = 0;
        } else {
            s.idle_ms += step;
            s.idle_run_ms += step;
        }
        s.last_ms += step;
        let d = next?;
        let at = s.last_ms;
        if Some(d) == max_at {
            return self.end(at, EndReason::MaxDuration);
        }
        if Some(d) == idle_at {
            return self.end(at, EndReason::IdleTimeout);
        }
        s.progress_count += 1;
        let (busy_s, idle_s, energy_wh) = s.totals();
        Some(SessionEvent {
            at,
            body: EventBody::SessionProgress {
                session: s.id,
                busy_s,
                idle_s,
                energy_wh,
            },
        })
    }

    /// Closes the open session at `now` (call [`poll`](Self::poll) up to `now` first).
    pub fn end(&mut self, now: u64, reason: EndReason) -> Option<SessionEvent> {
        let s = self.open.take()?;
        let (busy_s, idle_s, energy_wh) = s.totals();
        Some(SessionEvent {
            at: now.max(s.last_ms),
            body: EventBody::SessionEnded {
                session: s.id,
                badge: s.badge,
                busy_s,
                idle_s,
                energy_wh,
                reason,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;
    use MachineState::*;

    const B: BadgeHash = BadgeHash([1, 2, 3, 4, 5, 6, 7, 8]);

    fn drain(t: &mut SessionTracker, now: u64, st: MachineState) -> Vec<SessionEvent> {
        core::iter::from_fn(|| t.poll(now, st)).collect()
    }

    fn progress(at: u64, busy_s: u32, idle_s: u32, energy_wh: u32) -> SessionEvent {
        SessionEvent {
            at,
            body: EventBody::SessionProgress {
                session: 2,
                busy_s,
                idle_s,
                energy_wh,
            },
        }
    }

    fn ended(at: u64, busy_s: u32, idle_s: u32, energy_wh: u32, reason: EndReason) -> SessionEvent {
        SessionEvent {
            at,
            body: EventBody::SessionEnded {
                session: 2,
                badge: B,
                busy_s,
                idle_s,
                energy_wh,
                reason,
            },
        }
    }

    #[test]
    fn totals_are_exact_to_the_second_with_remainders_carried() {
        let mut t = SessionTracker::new(SessionRules {
            progress_s: 60,
            ..SessionRules::default()
        });
        t.start(2, B, 1_000);
        // Idle 10.6 s, busy 20.7 s, idle 0.4 s, busy 0.6 s: 32.3 s, of which busy 21.3 s.
        assert!(drain(&mut t, 11_600, Idle).is_empty());
        assert!(drain(&mut t, 32_300, Busy).is_empty());
        assert!(drain(&mut t, 32_700, Idle).is_empty());
        assert!(drain(&mut t, 33_300, Busy).is_empty());
        // 1 Wh = 3.6e6 mJ, in pieces that only add up together.
        for _ in 0..9 {
            t.add_energy(400_000);
        }
        let e = t.end(33_300, EndReason::BadgeOut).unwrap();
        assert_eq!(e, ended(33_300, 21, 11, 1, EndReason::BadgeOut));
    }

    #[test]
    fn progress_at_exact_deadlines_even_when_polled_late() {
        let mut t = SessionTracker::new(SessionRules {
            progress_s: 60,
            idle_timeout_s: 0,
            max_session_s: 0,
        });
        t.start(2, B, 5_000);
        assert_eq!(drain(&mut t, 64_999, Busy), []);
        assert_eq!(drain(&mut t, 65_000, Busy), [progress(65_000, 60, 0, 0)]);
        // Polled 150 s late while idle: two progress events at their own times.
        assert_eq!(
            drain(&mut t, 215_500, Idle),
            [progress(125_000, 60, 60, 0), progress(185_000, 60, 120, 0)]
        );
        let e = t.end(215_500, EndReason::PowerOff).unwrap();
        assert_eq!(e, ended(215_500, 60, 150, 0, EndReason::PowerOff));
    }

    #[test]
    fn idle_timeout_counts_continuous_idle_including_off() {
        let mut t = SessionTracker::new(SessionRules {
            progress_s: 3600,
            idle_timeout_s: 900,
            max_session_s: 0,
        });
        t.start(2, B, 0);
        // Off for 10 min, busy 1 min, then idle: the timeout runs from the end of the busy spell.
        assert!(drain(&mut t, 600_000, Off).is_empty());
        assert!(drain(&mut t, 660_000, Busy).is_empty());
        assert_eq!(
            drain(&mut t, 2_000_000, Idle),
            [ended(1_560_000, 60, 1_500, 0, EndReason::IdleTimeout)]
        );
        assert!(t.open_session().is_none());
    }

    #[test]
    fn max_duration_ends_at_its_deadline() {
        let mut t = SessionTracker::new(SessionRules {
            progress_s: 3600,
            idle_timeout_s: 900,
            max_session_s: 7200,
        });
        t.start(2, B, 100);
        assert_eq!(
            drain(&mut t, 10_000_000, Busy),
            [
                progress(3_600_100, 3600, 0, 0),
                ended(7_200_100, 7200, 0, 0, EndReason::MaxDuration)
            ]
        );
    }
}
