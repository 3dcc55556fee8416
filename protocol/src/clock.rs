//! How a consumer dates the events of a device that has no wall clock.
//!
//! Every device message carries the device uptime: `uptime_ms` (when the event happened) and, on
//! events, `sent_uptime_ms` (when this copy was handed to the MQTT client). A consumer that receives
//! a message at its own wall time `received_at_ms` can place the device's boot at
//! `received_at_ms - sent_uptime_ms`, late by exactly the transit delay, which is never negative:
//!
//! ```text
//! boot_wall = received_at_ms - sent_uptime_ms - transit      (transit >= 0)
//! ```
//!
//! So for each (machine, boot) the consumer keeps the **smallest** `received_at_ms - sent_uptime_ms`
//! it has seen: each new message can only bring the estimate closer to the truth, and the error is
//! the smallest transit delay seen so far (milliseconds on a LAN). An event then happened at
//! `boot_wall + uptime_ms`. Events resent from the journal after an outage carry a fresh
//! `sent_uptime_ms`, so they are dated as well as live ones. A device with a set clock sends `ts`,
//! which wins over the estimate.
//!
//! The anchor belongs to one boot: a reboot resets the uptime, and a new boot starts a new anchor.
//! [`ClockAnchor`] is the sans-IO implementation of this rule; the collector stores it per boot so
//! that several collectors derive the same times.

/// Estimated wall time of a device boot, refined by every message of that boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockAnchor {
    boot_wall_ms: Option<u64>,
}

impl ClockAnchor {
    /// An anchor that has seen nothing yet.
    pub const fn new() -> Self {
        ClockAnchor { boot_wall_ms: None }
    }

    /// An anchor restored from a stored estimate.
    pub const fn from_boot_wall_ms(boot_wall_ms: u64) -> Self {
        ClockAnchor {
            boot_wall_ms: Some(boot_wall_ms),
        }
    }

    /// Takes one message into account: it was received at the consumer's wall time
    /// `received_at_ms` and sent at device uptime `sent_uptime_ms`. Returns the updated estimate.
    pub fn observe(&mut self, received_at_ms: u64, sent_uptime_ms: u64) -> u64 {
        let candidate = received_at_ms.saturating_sub(sent_uptime_ms);
        let best = match self.boot_wall_ms {
            Some(b) => b.min(candidate),
            None => candidate,
        };
        self.boot_wall_ms = Some(best);
        best
    }

    /// The estimated wall time of the boot (uptime 0), once anything was observed.
    pub const fn boot_wall_ms(&self) -> Option<u64> {
        self.boot_wall_ms
    }

    /// The wall time of a moment of this boot given as device uptime.
    pub fn wall_time(&self, uptime_ms: u64) -> Option<u64> {
        self.boot_wall_ms.map(|b| b.saturating_add(uptime_ms))
    }
}

/// The wall time of an event: its own `ts` when the device has a clock, otherwise the anchor's
/// estimate (after observing this very message).
pub fn event_time(ts: Option<u64>, uptime_ms: u64, anchor: &ClockAnchor) -> Option<u64> {
    ts.or_else(|| anchor.wall_time(uptime_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_smallest_offset() {
        // Device booted at wall 1_000_000. Messages arrive with transit 40, 5, 300 ms.
        let boot = 1_000_000;
        let mut a = ClockAnchor::new();
        assert_eq!(a.wall_time(0), None);
        a.observe(boot + 10_000 + 40, 10_000);
        a.observe(boot + 20_000 + 5, 20_000);
        a.observe(boot + 30_000 + 300, 30_000);
        assert_eq!(a.boot_wall_ms(), Some(boot + 5));
        // An event that happened at uptime 15_000, resent much later, is dated within 5 ms.
        assert_eq!(a.wall_time(15_000), Some(boot + 15_005));
    }

    #[test]
    fn resend_after_outage_is_dated_like_live() {
        let boot = 5_000_000;
        let mut a = ClockAnchor::new();
        // Event at uptime 60 s, only sent at uptime 3660 s after an hour offline, transit 20 ms.
        a.observe(boot + 3_660_000 + 20, 3_660_000);
        assert_eq!(event_time(None, 60_000, &a), Some(boot + 60_020));
        // A device clock wins.
        assert_eq!(event_time(Some(42), 60_000, &a), Some(42));
    }

    #[test]
    fn never_underflows() {
        let mut a = ClockAnchor::new();
        assert_eq!(a.observe(10, 1_000), 0);
    }
}
