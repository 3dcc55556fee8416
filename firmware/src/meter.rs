//! The meter: raw current samples or a run signal become off / idle / busy, without chatter.
//!
//! **Current clamp** ([`Sensing::Current`]): samples in volts at the ADC input are collected over
//! `window_ms`; the RMS of the window (DC bias removed) times the calibration `ma_per_v` is the
//! current. The config's thresholds are integer milliamperes (`idle_ma`, `busy_ma`,
//! `hysteresis_ma`); the meter works in `f32` amperes, converted once by [`amperes`].
//! Thresholds with hysteresis (a Schmitt trigger): from `off`, at or above `idle_a` is idle and at or
//! above `busy_a` busy; a state is left downwards only below its threshold minus `hysteresis_a`
//! (idle below `idle_a - h` goes off — at least `idle_a / 2`, busy below `busy_a - h` goes idle, below `idle_a - h` off).
//! A new state is reported only once every reading for `dwell_ms` pointed at it (or beyond it), so a
//! motor's start spike, a laser's pulses or a printer's heater cycling shorter than the dwell time
//! do not chatter. Loads that cycle slower than a window (a laser's pulse train, a printer bed's
//! heater) are best given a `window_ms` spanning a cycle, so that the RMS itself is steady.
//! The change is reported at the reading that completes the dwell, so every state is delayed by the
//! same dwell and durations are kept.
//!
//! Energy: each window adds `current × mains_v × window` while the reported state is not `off`
//! (noise on a switched-off machine does not count), in integer millijoules.
//!
//! **Run signal** ([`Sensing::RunSignal`]): active is busy, inactive idle, with the same dwell.

use fabmeter_protocol::message::{MachineState, Sensing};

/// A reported state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Uptime of the change (the reading that completed the dwell time).
    pub at: u64,
    /// State before.
    pub from: MachineState,
    /// State now.
    pub to: MachineState,
}

/// One completed RMS window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Uptime at the end of the window.
    pub at: u64,
    /// RMS current, amperes.
    pub current_a: f32,
    /// Estimated power, watts (`current_a × mains_v`).
    pub power_w: f32,
    /// Energy counted for this window, millijoules (0 while the state is off).
    pub energy_mj: u64,
}

/// What one input produced.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MeterOutput {
    /// A completed window, if this sample closed one.
    pub reading: Option<Reading>,
    /// A state change, if one was confirmed.
    pub transition: Option<Transition>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Current {
        idle_a: f32,
        busy_a: f32,
        hysteresis_a: f32,
        window_ms: u32,
        amps_per_volt: f32,
        mains_v: f32,
    },
    RunSignal {
        active_low: bool,
    },
}

/// The meter of one machine.
#[derive(Debug, Clone)]
pub struct Meter {
    mode: Mode,
    dwell_ms: u64,
    state: MachineState,
    /// For each state (off, idle, busy): since when every reading pointed at least that far away
    /// from the reported state, in that direction.
    since: [Option<u64>; 3],
    win_start: Option<u64>,
    n: u32,
    sum: f32,
    sum_sq: f32,
    /// DC bias of the ADC input, from the previous window's mean: samples are accumulated relative
    /// to it, so the variance is not lost to f32 cancellation.
    bias: Option<f32>,
    last: Option<Reading>,
}

/// Milliamperes (the config's integer unit) as amperes, the meter's working unit. Exact to the
/// nearest `f32`: the protocol bounds currents to 10,000,000 mA, below 2^24.
pub fn amperes(ma: u32) -> f32 {
    ma as f32 / 1000.0
}

/// A non-negative quantity rounded to the nearest integer, for the wire: amperes × 1000 give
/// milliamperes, watts give watts. Saturating: NaN and negatives give 0, too large gives
/// `u32::MAX` (which the protocol's bounds then refuse).
pub fn round_u32(x: f32) -> u32 {
    // `as` saturates and maps NaN to 0.
    (x + 0.5) as u32
}

/// Square root without `std` (Newton's method), for the RMS.
pub fn sqrt(x: f32) -> f32 {
    if x <= 0.0 || !x.is_finite() {
        return 0.0;
    }
    let mut y = f32::from_bits((x.to_bits() >> 1) + 0x1fc0_0000);
    for _ in 0..4 {
        y = 0.5 * (y + x / y);
    }
    y
}

impl Meter {
    /// A meter for this sensing configuration, starting `off`.
    pub fn new(sensing: &Sensing) -> Meter {
        let (mode, dwell) = Self::mode(sensing);
        Meter {
            mode,
            dwell_ms: dwell,
            state: MachineState::Off,
            since: [None; 3],
            win_start: None,
            n: 0,
            sum: 0.0,
            sum_sq: 0.0,
            bias: None,
            last: None,
        }
    }

    fn mode(sensing: &Sensing) -> (Mode, u64) {
        match *sensing {
            Sensing::Current {
                idle_ma,
                busy_ma,
                hysteresis_ma,
                dwell_ms,
                window_ms,
                ma_per_v,
                mains_v,
            } => (
                Mode::Current {
                    idle_a: amperes(idle_ma),
                    busy_a: amperes(busy_ma),
                    hysteresis_a: amperes(hysteresis_ma),
                    window_ms,
                    amps_per_volt: amperes(ma_per_v),
                    mains_v: mains_v as f32,
                },
                u64::from(dwell_ms),
            ),
            Sensing::RunSignal {
                active_low,
                dwell_ms,
            } => (Mode::RunSignal { active_low }, u64::from(dwell_ms)),
        }
    }

    /// Applies a new configuration; the reported state is kept, a pending change is forgotten.
    pub fn reconfigure(&mut self, sensing: &Sensing) {
        let (mode, dwell) = Self::mode(sensing);
        self.mode = mode;
        self.dwell_ms = dwell;
        self.since = [None; 3];
        self.win_start = None;
        self.n = 0;
        self.sum = 0.0;
        self.sum_sq = 0.0;
    }

    /// The reported state.
    pub fn state(&self) -> MachineState {
        self.state
    }

    /// The last completed window.
    pub fn last_reading(&self) -> Option<Reading> {
        self.last
    }

    /// Feeds one ADC sample in volts (current clamp mode; ignored otherwise).
    pub fn on_sample(&mut self, now: u64, volts: f32) -> MeterOutput {
        let Mode::Current {
            window_ms,
            amps_per_volt,
            ..
        } = self.mode
        else {
            return MeterOutput::default();
        };
        let raw = if volts.is_finite() { volts } else { 0.0 };
        let bias = *self.bias.get_or_insert(raw);
        let v = raw - bias;
        let start = *self.win_start.get_or_insert(now);
        self.n += 1;
        self.sum += v;
        self.sum_sq += v * v;
        if now.saturating_sub(start) < u64::from(window_ms) {
            return MeterOutput::default();
        }
        let n = self.n as f32;
        let mean = self.sum / n;
        let rms_v = sqrt(self.sum_sq / n - mean * mean);
        self.bias = Some(bias + mean);
        self.win_start = Some(now);
        self.n = 0;
        self.sum = 0.0;
        self.sum_sq = 0.0;
        self.on_current_window(now, now - start, rms_v * amps_per_volt)
    }

    /// Feeds an RMS current measured elsewhere (a smart plug, a hosted sensor) over the last `dt_ms`.
    pub fn on_current_window(&mut self, now: u64, dt_ms: u64, current_a: f32) -> MeterOutput {
        let Mode::Current { mains_v, .. } = self.mode else {
            return MeterOutput::default();
        };
        let i = if current_a.is_finite() && current_a > 0.0 {
            current_a
        } else {
            0.0
        };
        let transition = self.classify(now, self.target(i));
        let power_w = i * mains_v;
        let energy_mj = if self.state == MachineState::Off {
            0
        } else {
            // W × ms = mJ; rounding to the nearest mJ.
            (power_w * dt_ms as f32 + 0.5) as u64
        };
        let reading = Reading {
            at: now,
            current_a: i,
            power_w,
            energy_mj,
        };
        self.last = Some(reading);
        MeterOutput {
            reading: Some(reading),
            transition,
        }
    }

    /// Feeds the level of the run-signal input (run-signal mode; ignored otherwise).
    pub fn on_run_signal(&mut self, now: u64, high: bool) -> Option<Transition> {
        let Mode::RunSignal { active_low } = self.mode else {
            return None;
        };
        let target = if high != active_low {
            MachineState::Busy
        } else {
            MachineState::Idle
        };
        self.classify(now, target)
    }

    /// Confirms a pending change whose dwell time elapsed without a new input.
    pub fn tick(&mut self, now: u64) -> Option<Transition> {
        self.confirm(now)
    }

    fn target(&self, i: f32) -> MachineState {
        let Mode::Current {
            idle_a,
            busy_a,
            hysteresis_a: h,
            ..
        } = self.mode
        else {
            return self.state;
        };
        // The protocol only bounds the hysteresis by busy_a - idle_a; a hysteresis as large as
        // idle_a would make `off` unreachable, so the falling threshold keeps at least half idle_a.
        let off_below = idle_a - h.min(idle_a / 2.0);
        use MachineState::*;
        match self.state {
            Off if i >= busy_a => Busy,
            Off if i >= idle_a => Idle,
            Off => Off,
            Idle if i >= busy_a => Busy,
            Idle if i < off_below => Off,
            Idle => Idle,
            Busy if i < off_below => Off,
            Busy if i < busy_a - h => Idle,
            Busy => Busy,
        }
    }

    /// Records a reading's target and confirms a change whose dwell elapsed.
    ///
    /// The dwell of a state `x` runs while every reading points at `x` or beyond it (seen from the
    /// reported state): from off, a heater pulse to busy during an idle spell does not restart the
    /// dwell towards idle. The farthest state whose dwell elapsed wins.
    fn classify(&mut self, now: u64, target: MachineState) -> Option<Transition> {
        let s = rank(self.state);
        let t = rank(target);
        for x in 0..3 {
            let holds = (x > s && t >= x) || (x < s && t <= x);
            if !holds {
                self.since[x] = None;
            } else if self.since[x].is_none() {
                self.since[x] = Some(now);
            }
        }
        self.confirm(now)
    }

    fn confirm(&mut self, now: u64) -> Option<Transition> {
        let s = rank(self.state);
        let mut best: Option<usize> = None;
        for x in 0..3 {
            if let Some(since) = self.since[x] {
                let far = best.is_none_or(|b| x.abs_diff(s) > b.abs_diff(s));
                if now.saturating_sub(since) >= self.dwell_ms && far {
                    best = Some(x);
                }
            }
        }
        let to = STATES[best?];
        self.since = [None; 3];
        let from = self.state;
        self.state = to;
        Some(Transition { at: now, from, to })
    }
}

const STATES: [MachineState; 3] = [MachineState::Off, MachineState::Idle, MachineState::Busy];

fn rank(s: MachineState) -> usize {
    match s {
        MachineState::Off => 0,
        MachineState::Idle => 1,
        MachineState::Busy => 2,
    }
}

#[cfg(test)]
mod tests;
