//! Sessions derived from events: a pure fold, so duplicates, reordering and late events of an older
//! boot give the same result whatever order they arrived in.
//!
//! A session is identified by (machine, boot, session), where `session` is the seq of its
//! `session_started` event. Its row is the fold of all the events naming it and of whether a newer
//! boot of the machine has been seen, brought up to date each time one of them arrives (by the
//! ingest incrementally from the stored row and the new events, `ledger/session_rows.rs`, which a
//! property test holds equal to this fold over all the stored events):
//!
//! - an `session_ended` event gives the final totals and reason (status `closed`);
//! - otherwise, if a newer boot exists, the device rebooted mid-session: the session closes at its
//!   last `session_progress` (or at its start), status `interrupted`, reason `interrupted`; if the
//!   real end arrives later (journal resend), it replaces that estimate;
//! - otherwise the session is `open`, with the totals of its last progress.

use fabmeter_protocol::message::{EndReason, EventBody};

/// One event of a session, as stored in the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvent {
    /// The event's seq.
    pub seq: u32,
    /// Device uptime when it happened.
    pub uptime_ms: u64,
    /// Its wall time (device clock, or derived from the boot's anchor).
    pub wall_ms: Option<u64>,
    /// The event itself.
    pub body: EventBody,
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    /// Still running (or its end has not arrived yet).
    Open,
    /// Ended by the device, with final totals.
    Closed,
    /// Closed by the collector: the device rebooted before its end arrived.
    Interrupted,
}

impl SessionStatus {
    /// Name stored in the ledger and shown by the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Open => "open",
            SessionStatus::Closed => "closed",
            SessionStatus::Interrupted => "interrupted",
        }
    }
}

/// The derived state of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionFold {
    /// Badge hash (hex), once the start or the end arrived.
    pub badge: Option<String>,
    /// Wall time of the start, when the start arrived.
    pub start_ms: Option<u64>,
    /// Wall time of the end (closed or interrupted) or of the last progress (open).
    pub end_ms: Option<u64>,
    /// Busy seconds.
    pub busy_s: u32,
    /// Idle seconds.
    pub idle_s: u32,
    /// Energy, watt-hours.
    pub energy_wh: u32,
    /// Where it stands.
    pub status: SessionStatus,
    /// Why it ended (device reason, or `interrupted`).
    pub reason: Option<EndReason>,
    /// Seq of the last event used (the end, or the last progress).
    pub last_seq: u32,
}

/// Folds the events of one session. `newer_boot` tells whether the machine has a later boot.
/// Returns `None` when no event names the session.
pub fn fold(session: u32, events: &[SessionEvent], newer_boot: bool) -> Option<SessionFold> {
    if events.is_empty() {
        return None;
    }
    let mut out = SessionFold {
        badge: None,
        start_ms: None,
        end_ms: None,
        busy_s: 0,
        idle_s: 0,
        energy_wh: 0,
        status: SessionStatus::Open,
        reason: None,
        last_seq: session,
    };
    let mut best_progress: Option<&SessionEvent> = None;
    let mut ended: Option<&SessionEvent> = None;
    for e in events {
        match &e.body {
            EventBody::SessionStarted { badge } if e.seq == session => {
                out.badge = Some(badge.to_hex().as_str().to_owned());
                out.start_ms = e.wall_ms;
            }
            EventBody::SessionProgress { session: s, .. }
                if *s == session && best_progress.is_none_or(|p| p.seq < e.seq) =>
            {
                best_progress = Some(e);
            }
            EventBody::SessionEnded {
                session: s, badge, ..
            } if *s == session => {
                // Only one end per session exists; if a device sent two, the later seq wins.
                if ended.is_none_or(|p| p.seq < e.seq) {
                    ended = Some(e);
                }
                if out.badge.is_none() {
                    out.badge = Some(badge.to_hex().as_str().to_owned());
                }
            }
            _ => {}
        }
    }
    if let Some(e) = ended {
        if let EventBody::SessionEnded {
            busy_s,
            idle_s,
            energy_wh,
            reason,
            ..
        } = &e.body
        {
            out.busy_s = *busy_s;
            out.idle_s = *idle_s;
            out.energy_wh = *energy_wh;
            out.reason = Some(*reason);
            out.status = SessionStatus::Closed;
            out.end_ms = e.wall_ms;
            out.last_seq = e.seq;
        }
        return Some(out);
    }
    if let Some(e) = best_progress {
        if let EventBody::SessionProgress {
            busy_s,
            idle_s,
            energy_wh,
            ..
        } = &e.body
        {
            out.busy_s = *busy_s;
            out.idle_s = *idle_s;
            out.energy_wh = *energy_wh;
            out.end_ms = e.wall_ms;
            out.last_seq = e.seq;
        }
    } else {
        out.end_ms = out.start_ms;
    }
    if newer_boot {
        out.status = SessionStatus::Interrupted;
        out.reason = Some(EndReason::Interrupted);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabmeter_protocol::BadgeHash;

    const BADGE: BadgeHash = BadgeHash([0xba, 0x27, 0x9e, 0x0c, 0x1e, 0x5c, 0x24, 0x64]);

    fn started(seq: u32, at: u64) -> SessionEvent {
        SessionEvent {
            seq,
            uptime_ms: at,
            wall_ms: Some(1_000_000 + at),
            body: EventBody::SessionStarted { badge: BADGE },
        }
    }
    fn progress(seq: u32, session: u32, busy_s: u32, at: u64) -> SessionEvent {
        SessionEvent {
            seq,
            uptime_ms: at,
            wall_ms: Some(1_000_000 + at),
            body: EventBody::SessionProgress {
                session,
                busy_s,
                idle_s: 5,
                energy_wh: busy_s / 10,
            },
        }
    }
    fn ended(seq: u32, session: u32, busy_s: u32, at: u64) -> SessionEvent {
        SessionEvent {
            seq,
            uptime_ms: at,
            wall_ms: Some(1_000_000 + at),
            body: EventBody::SessionEnded {
                session,
                badge: BADGE,
                busy_s,
                idle_s: 7,
                energy_wh: 40,
                reason: EndReason::BadgeOut,
            },
        }
    }

    #[test]
    fn order_and_duplicates_do_not_matter() {
        let evs = [
            started(2, 0),
            progress(4, 2, 60, 65_000),
            progress(6, 2, 120, 125_000),
            ended(9, 2, 150, 160_000),
        ];
        let want = fold(2, &evs, false).expect("events");
        assert_eq!(want.status, SessionStatus::Closed);
        assert_eq!((want.busy_s, want.idle_s, want.energy_wh), (150, 7, 40));
        assert_eq!(want.end_ms, Some(1_160_000));
        assert_eq!(want.badge.as_deref(), Some("ba279e0c1e5c2464"));
        let mut shuffled = vec![
            evs[3].clone(),
            evs[1].clone(),
            evs[0].clone(),
            evs[2].clone(),
        ];
        shuffled.extend(evs.iter().cloned()); // every event twice
        assert_eq!(fold(2, &shuffled, false), Some(want.clone()));
        // The end wins even if a newer boot exists.
        assert_eq!(fold(2, &shuffled, true), Some(want));
    }

    #[test]
    fn open_then_interrupted_by_a_reboot_at_the_last_progress() {
        let evs = [
            started(2, 0),
            progress(6, 2, 120, 125_000),
            progress(4, 2, 60, 65_000),
        ];
        let open = fold(2, &evs, false).expect("events");
        assert_eq!(open.status, SessionStatus::Open);
        assert_eq!(open.busy_s, 120);
        assert_eq!(open.end_ms, Some(1_125_000));
        let cut = fold(2, &evs, true).expect("events");
        assert_eq!(cut.status, SessionStatus::Interrupted);
        assert_eq!(cut.reason, Some(EndReason::Interrupted));
        assert_eq!(
            (cut.busy_s, cut.end_ms, cut.last_seq),
            (120, Some(1_125_000), 6)
        );
        // Start only, rebooted: zero-length interrupted session at its start.
        let only = fold(2, &evs[..1], true).expect("events");
        assert_eq!((only.busy_s, only.end_ms), (0, Some(1_000_000)));
    }

    #[test]
    fn end_before_start_still_names_the_badge() {
        let e = fold(2, &[ended(9, 2, 150, 160_000)], false).expect("events");
        assert_eq!(e.badge.as_deref(), Some("ba279e0c1e5c2464"));
        assert_eq!(e.start_ms, None);
        assert_eq!(fold(2, &[], false), None);
    }
}
