//! The simulated workshop: machine kinds and their electrical profiles, members and their habits,
//! opening hours, and the per-machine timeline of inputs (current levels, badges) they produce.
//!
//! Everything here is a pure function of the seed: a machine's timeline uses its own generator
//! derived from `(seed, machine id)`, so adding a machine does not change the others' streams.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use fabmeter_protocol::message::Sensing;

use super::rng::Rng;

const S: u64 = 1000;
const MIN: u64 = 60 * S;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

/// The kinds of simulated machines, with the collector's kind names (`as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MachineKind {
    /// FDM 3D printer: long busy runs (hours) with the bed heater cycling on top of the steppers and
    /// hot end; jobs often end at night, then the session ends on idle timeout.
    Printer3d,
    /// CO2 laser cutter: chiller idle draw, extraction fan before and after, the tube pulsing with
    /// the cut pattern (pulses shorter than the dwell time keep it busy).
    LaserCutter,
    /// CNC router: spindle start spike, cutting load varying every few seconds, idle spells for
    /// tool changes.
    CncRouter,
    /// Table saw: a start spike and a short burst (seconds to a minute and a half) per cut.
    TableSaw,
}

impl MachineKind {
    /// All kinds, in the order a generated workshop cycles through them.
    pub const ALL: [MachineKind; 4] = [
        MachineKind::Printer3d,
        MachineKind::LaserCutter,
        MachineKind::CncRouter,
        MachineKind::TableSaw,
    ];

    /// The kind's name as in the collector's site file (`printer-3d`, `laser`, `cnc`, `saw`).
    pub fn as_str(self) -> &'static str {
        match self {
            MachineKind::Printer3d => "printer-3d",
            MachineKind::LaserCutter => "laser",
            MachineKind::CncRouter => "cnc",
            MachineKind::TableSaw => "saw",
        }
    }

    /// Current-clamp sensing thresholds that fit the kind's simulated profile.
    pub fn sensing(self) -> Sensing {
        let (idle_ma, busy_ma, hysteresis_ma, dwell_ms) = match self {
            // Steppers + hot end keep a print above 0.45 A; the bed heater adds ~1.3 A in cycles.
            MachineKind::Printer3d => (80, 400, 40, 30_000),
            // Chiller 0.8 A, fan 1.0 A, tube +2.5 A (RMS over the reading window); travel moves
            // between cuts last under 2.5 s, pulses at least 3 s.
            MachineKind::LaserCutter => (300, 3000, 200, 3_000),
            // Controller 0.6 A; cutting 3-7 A; the start spike passes within the dwell.
            MachineKind::CncRouter => (300, 2000, 150, 5_000),
            // Extractor interlock 0.4 A; a cut is 5.5-9 A after a 25-30 A spike.
            MachineKind::TableSaw => (200, 2000, 100, 1_500),
        };
        Sensing::Current {
            idle_ma,
            busy_ma,
            hysteresis_ma,
            dwell_ms,
            window_ms: 1000,
            ma_per_v: 30_000,
            mains_v: 230,
        }
    }

    fn gap_between_visits(self, rng: &mut Rng) -> u64 {
        match self {
            MachineKind::Printer3d => rng.range(20 * MIN, 180 * MIN),
            MachineKind::LaserCutter => rng.range(10 * MIN, 120 * MIN),
            MachineKind::CncRouter => rng.range(20 * MIN, 180 * MIN),
            MachineKind::TableSaw => rng.range(5 * MIN, 90 * MIN),
        }
    }
}

impl fmt::Display for MachineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown machine kind name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown machine kind {0:?}: expected printer-3d, laser, cnc or saw")]
pub struct UnknownKind(pub String);

impl FromStr for MachineKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        MachineKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// One simulated machine.
#[derive(Debug, Clone, PartialEq)]
pub struct SimMachine {
    /// Machine id as in topics (`[a-z0-9][a-z0-9-]{0,31}`).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Its profile.
    pub kind: MachineKind,
}

/// A member and their habits.
#[derive(Debug, Clone, PartialEq)]
pub struct SimMember {
    /// Member id (as in the collector's site file).
    pub id: String,
    /// Human name.
    pub name: String,
    /// The badge UID as the reader sends it (4 or 7 bytes).
    pub uid: Vec<u8>,
    /// The kinds of machines this member uses.
    pub kinds: Vec<MachineKind>,
    /// Days of the week the member comes: bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// Hours (UTC, `[from, to)`) in which the member starts work.
    pub hours: (u8, u8),
}

/// When the workshop is open (UTC hours; the simulator's workshop runs on UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpeningHours {
    /// Open days: bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// Opening hour.
    pub open_h: u8,
    /// Closing hour (no visit starts in the last half hour; printers run on after closing).
    pub close_h: u8,
}

impl Default for OpeningHours {
    /// Monday to Saturday, 09:00 to 21:00.
    fn default() -> Self {
        OpeningHours {
            days: 0b0011_1111,
            open_h: 9,
            close_h: 21,
        }
    }
}

/// An input to a device at a sim time.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The RMS current becomes this many amperes.
    Level(f32),
    /// A badge with this UID is presented.
    Badge(Vec<u8>),
}

/// An input and its time (ms since the machine's start).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Sim time, ms since the machine started.
    pub at: u64,
    /// What happens.
    pub input: Input,
}

/// The UID of a visitor who is not a member (refused with `not_allowed`).
pub const STRANGER_UID: [u8; 4] = [0x04, 0xde, 0xad, 0x01];

/// The lazily generated sequence of inputs of one machine.
pub struct Timeline {
    rng: Rng,
    kind: MachineKind,
    users: Vec<(Vec<u8>, u8, (u8, u8))>,
    hours: OpeningHours,
    start_unix_ms: u64,
    cursor: u64,
    queue: VecDeque<Step>,
}

impl Timeline {
    /// The timeline of `machine`, for these members and opening hours, starting at `start_unix_ms`.
    pub fn new(
        seed: u64,
        machine: &SimMachine,
        members: &[SimMember],
        hours: OpeningHours,
        start_unix_ms: u64,
    ) -> Timeline {
        Timeline {
            rng: Rng::derive(seed, &machine.id),
            kind: machine.kind,
            users: members
                .iter()
                .filter(|m| m.kinds.contains(&machine.kind))
                .map(|m| (m.uid.clone(), m.days, m.hours))
                .collect(),
            hours,
            start_unix_ms,
            cursor: 0,
            queue: VecDeque::new(),
        }
    }

    /// The next input, without taking it.
    pub fn peek(&mut self) -> &Step {
        if self.queue.is_empty() {
            self.plan_next_visit();
        }
        // plan_next_visit always pushes at least one step.
        &self.queue[0]
    }

    /// Takes the next input.
    pub fn pop(&mut self) -> Step {
        self.peek();
        self.queue.pop_front().unwrap_or(Step {
            at: self.cursor,
            input: Input::Level(0.0),
        })
    }

    fn clock(&self, t: u64) -> (u64, u8, u64) {
        let unix = self.start_unix_ms + t;
        let day = unix / DAY;
        // 1970-01-01 was a Thursday: Monday = 0.
        let weekday = ((day + 3) % 7) as u8;
        (day, weekday, unix % DAY)
    }

    /// Sim time of `day` (days since the epoch) at `ms` into it.
    fn at(&self, day: u64, ms: u64) -> u64 {
        (day * DAY + ms).saturating_sub(self.start_unix_ms)
    }

    fn plan_next_visit(&mut self) {
        let h = self.hours;
        let mut t = self.cursor;
        for _ in 0..(14 * 48) {
            let (day, weekday, ms) = self.clock(t);
            let open = u64::from(h.open_h) * HOUR;
            let last_start = (u64::from(h.close_h) * HOUR).saturating_sub(30 * MIN);
            let open_today = h.days & (1 << weekday) != 0;
            if !open_today || ms >= last_start {
                t = self.at(day + 1, open) + self.rng.range(0, 45 * MIN);
                continue;
            }
            if ms < open {
                t = self.at(day, open) + self.rng.range(0, 45 * MIN);
                continue;
            }
            let hour = (ms / HOUR) as u8;
            let present: Vec<&Vec<u8>> = self
                .users
                .iter()
                .filter(|(_, days, (from, to))| {
                    days & (1 << weekday) != 0 && (*from..*to).contains(&hour)
                })
                .map(|(uid, _, _)| uid)
                .collect();
            let Some(uid) = self.rng.pick(&present).map(|u| (*u).clone()) else {
                t += 30 * MIN;
                continue;
            };
            let close = self.at(day, u64::from(h.close_h) * HOUR);
            let end = self.visit(t, &uid, close);
            self.cursor = end + self.kind.gap_between_visits(&mut self.rng);
            return;
        }
        // Nobody uses this machine: stay off, and look again two weeks later.
        self.cursor = t;
        self.queue.push_back(Step {
            at: t,
            input: Input::Level(0.0),
        });
    }

    /// Plans one visit starting at `t0`; returns when the machine is powered off.
    fn visit(&mut self, t0: u64, uid: &[u8], close: u64) -> u64 {
        let mut v = Visit {
            t: t0,
            steps: &mut self.queue,
        };
        let r = &mut self.rng;
        if r.chance(0.03) {
            // A visitor without a membership tries first.
            v.badge(&STRANGER_UID);
            v.wait(r.range(20 * S, 60 * S));
        }
        v.badge(uid);
        match self.kind {
            MachineKind::Printer3d => {
                v.wait(r.range(20 * S, 60 * S));
                v.level(r.uniform(0.14, 0.17));
                v.wait(r.range(MIN, 3 * MIN));
                // Preheat: bed and nozzle full on.
                v.level(r.uniform(1.8, 2.0));
                v.wait(r.range(3 * MIN, 6 * MIN));
                let print_end = v.t + r.range(45 * MIN, 8 * HOUR);
                while v.t < print_end {
                    v.level(r.uniform(0.48, 0.6));
                    v.wait(r.range(15 * S, 35 * S));
                    v.level(r.uniform(1.6, 1.9));
                    v.wait(r.range(10 * S, 25 * S));
                }
                v.level(r.uniform(0.14, 0.17));
                if v.t + 40 * MIN < close && r.chance(0.95) {
                    v.wait(r.range(5 * MIN, 40 * MIN));
                    v.badge(uid);
                    v.wait(r.range(MIN, 2 * MIN));
                } else {
                    // Ended at night: the session ends on idle timeout, the printer switches
                    // itself off two hours later.
                    v.wait(2 * HOUR);
                }
            }
            MachineKind::LaserCutter => {
                v.wait(r.range(15 * S, 45 * S));
                v.level(r.uniform(0.75, 0.85));
                v.wait(r.range(30 * S, 90 * S));
                for _ in 0..r.range(1, 6) {
                    v.level(r.uniform(1.7, 1.9));
                    v.wait(r.range(20 * S, 40 * S));
                    let cut_end = v.t + r.range(2 * MIN, 25 * MIN);
                    while v.t < cut_end {
                        v.level(r.uniform(4.0, 4.6));
                        v.wait(r.range(3 * S, 12 * S));
                        v.level(r.uniform(1.7, 1.9));
                        v.wait(r.range(300, 2500));
                    }
                    v.wait(r.range(30 * S, 60 * S));
                    v.level(r.uniform(0.75, 0.85));
                    v.wait(r.range(MIN, 6 * MIN));
                }
                v.end(r, uid, 0.9);
            }
            MachineKind::CncRouter => {
                v.wait(r.range(20 * S, 60 * S));
                v.level(r.uniform(0.55, 0.65));
                v.wait(r.range(2 * MIN, 10 * MIN));
                for _ in 0..r.range(2, 6) {
                    v.level(r.uniform(12.0, 16.0));
                    v.wait(r.range(S, 2 * S));
                    let run_end = v.t + r.range(3 * MIN, 25 * MIN);
                    while v.t < run_end {
                        v.level(r.uniform(3.0, 7.0));
                        v.wait(r.range(5 * S, 20 * S));
                    }
                    v.level(r.uniform(0.55, 0.65));
                    v.wait(r.range(MIN, 6 * MIN));
                }
                v.end(r, uid, 0.9);
            }
            MachineKind::TableSaw => {
                v.wait(r.range(10 * S, 30 * S));
                v.level(r.uniform(0.38, 0.42));
                for _ in 0..r.range(5, 30) {
                    v.wait(r.range(10 * S, 180 * S));
                    v.level(r.uniform(25.0, 30.0));
                    v.wait(r.range(500, S));
                    v.level(r.uniform(5.5, 9.0));
                    v.wait(r.range(5 * S, 90 * S));
                    v.level(r.uniform(0.38, 0.42));
                }
                v.wait(r.range(10 * S, 60 * S));
                v.end(r, uid, 0.9);
            }
        }
        v.level(0.0);
        v.t
    }
}

struct Visit<'a> {
    t: u64,
    steps: &'a mut VecDeque<Step>,
}

impl Visit<'_> {
    fn wait(&mut self, ms: u64) {
        self.t += ms;
    }
    fn level(&mut self, amps: f32) {
        self.steps.push_back(Step {
            at: self.t,
            input: Input::Level(amps),
        });
    }
    fn badge(&mut self, uid: &[u8]) {
        self.steps.push_back(Step {
            at: self.t,
            input: Input::Badge(uid.to_vec()),
        });
    }
    /// Badges out with probability `p` (otherwise the member just switches off, and the session
    /// ends on power off), then switches the machine off.
    fn end(&mut self, r: &mut Rng, uid: &[u8], p: f32) {
        if r.chance(p) {
            self.badge(uid);
            self.wait(r.range(10 * S, 60 * S));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(kinds: Vec<MachineKind>) -> SimMember {
        SimMember {
            id: "a".into(),
            name: "A".into(),
            uid: vec![4, 1, 2, 3],
            kinds,
            days: 0x7f,
            hours: (9, 20),
        }
    }

    #[test]
    fn timelines_are_ordered_and_repeatable() {
        for kind in MachineKind::ALL {
            let m = SimMachine {
                id: "m-1".into(),
                name: "M".into(),
                kind,
            };
            let members = [member(MachineKind::ALL.to_vec())];
            let mut a = Timeline::new(5, &m, &members, OpeningHours::default(), 1_764_576_000_000);
            let mut b = Timeline::new(5, &m, &members, OpeningHours::default(), 1_764_576_000_000);
            let mut last = 0;
            let mut badges = 0;
            for _ in 0..5000 {
                let (x, y) = (a.pop(), b.pop());
                assert_eq!(x, y);
                assert!(x.at >= last, "{kind}: {} < {last}", x.at);
                last = x.at;
                badges += usize::from(matches!(x.input, Input::Badge(_)));
            }
            assert!(badges > 2, "{kind}");
        }
    }

    #[test]
    fn nobody_means_no_visit() {
        let m = SimMachine {
            id: "saw".into(),
            name: "Saw".into(),
            kind: MachineKind::TableSaw,
        };
        let mut t = Timeline::new(
            1,
            &m,
            &[member(vec![MachineKind::LaserCutter])],
            OpeningHours::default(),
            0,
        );
        for _ in 0..10 {
            assert_eq!(t.pop().input, Input::Level(0.0));
        }
    }

    #[test]
    fn sensing_thresholds_are_valid() {
        for kind in MachineKind::ALL {
            let sensing = kind.sensing();
            let Sensing::Current {
                idle_ma,
                busy_ma,
                hysteresis_ma,
                ..
            } = sensing
            else {
                panic!()
            };
            assert!(
                hysteresis_ma < idle_ma && hysteresis_ma < busy_ma - idle_ma,
                "{kind}"
            );
            // What a device would accept: the protocol's own rules.
            assert_eq!(sensing.validate(), Ok(()), "{kind}");
            assert_eq!(kind.as_str().parse::<MachineKind>(), Ok(kind));
        }
    }
}
