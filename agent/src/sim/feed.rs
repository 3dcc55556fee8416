//! Feeding a device from a [`Timeline`]: current readings every `step_ms` while the load changes
//! (every minute when it is steady), badges when the timeline presents them. Used by the simulated
//! machines and by the agent's `simulate` machines.

use embedded_hal::digital::OutputPin;
use embedded_storage::nor_flash::NorFlash;
use fabmeter_firmware::device::Device;
use fabmeter_protocol::message::MachineState;

use super::workshop::{Input, Timeline};

/// Readings are taken every `step_ms` for this long after a level change, then every minute.
const ACTIVE_MS: u64 = 120_000;
const QUIET_STEP_MS: u64 = 60_000;

/// A timeline and the state of its readings.
pub struct Feed {
    timeline: Timeline,
    step_ms: u64,
    level: f32,
    level_since: u64,
    last_read: u64,
}

impl Feed {
    /// Feeds from `timeline`, a reading every `step_ms` while the load changes.
    pub fn new(timeline: Timeline, step_ms: u64) -> Feed {
        Feed {
            timeline,
            step_ms: step_ms.max(1),
            level: 0.0,
            level_since: 0,
            last_read: 0,
        }
    }

    /// Device time of the last reading.
    pub fn last_read(&self) -> u64 {
        self.last_read
    }

    /// Device time of the next reading or timeline step.
    pub fn next_at(&mut self) -> u64 {
        let quiet = self.last_read.saturating_sub(self.level_since);
        let step = if quiet < ACTIVE_MS {
            self.step_ms
        } else {
            QUIET_STEP_MS
        };
        (self.last_read + step).min(self.timeline.peek().at.max(self.last_read))
    }

    /// Applies the reading and the timeline step due at `t` (from [`Feed::next_at`]).
    pub fn apply_next<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        t: u64,
        dev: &mut Device<S, R, CAP>,
    ) {
        let step_at = self.timeline.peek().at.max(self.last_read);
        if t > self.last_read {
            dev.on_current(t, t - self.last_read, self.level);
            self.last_read = t;
        }
        if step_at <= t {
            match self.timeline.pop().input {
                Input::Level(a) => {
                    self.level = a;
                    self.level_since = t;
                }
                Input::Badge(uid) => dev.on_badge(t, &uid),
            }
        }
    }

    /// Applies everything due up to `target`.
    pub fn advance<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        target: u64,
        dev: &mut Device<S, R, CAP>,
    ) {
        loop {
            let next = self.next_at();
            if next > target {
                return;
            }
            self.apply_next(next, dev);
        }
    }

    /// The device was off until `t`: the inputs meanwhile are lost, readings resume at `t`.
    pub fn skip_to(&mut self, t: u64) {
        while self.timeline.peek().at < t {
            if let Input::Level(a) = self.timeline.pop().input {
                self.level = a;
            }
        }
        self.last_read = t;
        self.level_since = t;
    }

    /// The machine is switched off from `t`: zero current until the device reports it off and
    /// its session ended (at most 200 readings).
    pub fn switch_off<S: NorFlash, R: OutputPin, const CAP: usize>(
        &mut self,
        t: u64,
        dev: &mut Device<S, R, CAP>,
    ) {
        self.level = 0.0;
        let mut t = t.max(self.last_read);
        for _ in 0..200 {
            if dev.state() == MachineState::Off && dev.session().is_none() {
                break;
            }
            t += self.step_ms.max(1000);
            dev.on_current(t, t - self.last_read, 0.0);
            self.last_read = t;
        }
    }
}
