use std::vec::Vec;

use super::*;
use MachineState::*;

/// A seeded xorshift PRNG: deterministic "recorded-style" noise without the rand crate.
struct Rng(u32);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
}

const APV: f32 = 30.0;

fn clamp(idle_ma: u32, busy_ma: u32, hysteresis_ma: u32, dwell_ms: u32) -> Sensing {
    clamp_w(idle_ma, busy_ma, hysteresis_ma, dwell_ms, 200)
}

fn clamp_w(
    idle_ma: u32,
    busy_ma: u32,
    hysteresis_ma: u32,
    dwell_ms: u32,
    window_ms: u32,
) -> Sensing {
    Sensing::Current {
        idle_ma,
        busy_ma,
        hysteresis_ma,
        dwell_ms,
        window_ms,
        ma_per_v: 30_000,
        mains_v: 230,
    }
}

/// Runs a profile sampled at 1 kHz: `amps(t)` is the RMS current at `t` ms; the ADC sees a 50 Hz
/// sine of that RMS, on a 1.65 V bias, plus uniform noise of `noise_a` amperes peak.
fn run(
    sensing: &Sensing,
    duration_ms: u64,
    noise_a: f32,
    seed: u32,
    amps: impl Fn(u64) -> f32,
) -> (Vec<(u64, MachineState, MachineState)>, u64) {
    let mut m = Meter::new(sensing);
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut energy_mj = 0;
    for t in 0..=duration_ms {
        let phase = 2.0 * core::f32::consts::PI * 50.0 * (t as f32 / 1000.0);
        let i = amps(t) * core::f32::consts::SQRT_2 * libm_sin(phase) + noise_a * rng.unit();
        let o = m.on_sample(t, 1.65 + i / APV);
        if let Some(tr) = o.transition {
            out.push((tr.at, tr.from, tr.to));
        }
        if let Some(r) = o.reading {
            energy_mj += r.energy_mj;
        }
    }
    (out, energy_mj)
}

fn libm_sin(x: f32) -> f32 {
    (x as f64).sin() as f32
}

#[test]
fn sqrt_is_accurate() {
    for x in [0.0001f32, 0.5, 1.0, 2.0, 9.0, 1234.5, 1e6] {
        let r = sqrt(x);
        assert!(
            (r - (x as f64).sqrt() as f32).abs() <= 1e-5 * r.max(1.0),
            "{x}: {r}"
        );
    }
    assert_eq!(sqrt(-1.0), 0.0);
    assert_eq!(sqrt(f32::NAN), 0.0);
}

#[test]
fn rms_of_a_sine_is_its_rms_current() {
    let mut m = Meter::new(&clamp(300, 2000, 150, 0));
    let mut last = None;
    for t in 0..=400u64 {
        let phase = 2.0 * core::f32::consts::PI * 50.0 * (t as f32 / 1000.0);
        let v = 1.65 + 5.0 * core::f32::consts::SQRT_2 * libm_sin(phase) / APV;
        if let Some(r) = m.on_sample(t, v).reading {
            last = Some(r);
        }
    }
    let r = last.expect("two windows");
    assert_eq!(r.at, 400);
    assert!((r.current_a - 5.0).abs() < 0.01, "{}", r.current_a);
    assert!((r.power_w - 1150.0).abs() < 2.0);
    // 200 ms at 1150 W = 230 J.
    assert!(
        (r.energy_mj as i64 - 230_000).abs() < 500,
        "{}",
        r.energy_mj
    );
}

#[test]
fn idle_hum_with_noise_does_not_chatter() {
    // A bandsaw's dust extractor left on: 0.35 A with noise (idle 0.3, hysteresis 0.15).
    let (changes, _) = run(&clamp(300, 2000, 150, 3000), 120_000, 0.25, 7, |t| {
        if t < 10_000 {
            0.02
        } else {
            0.35
        }
    });
    // On at 10 s: the first full window above idle ends at 10.2 s, the dwell ends 3 s later.
    assert_eq!(changes, [(13_200, Off, Idle)]);
}

#[test]
fn motor_start_spike_is_not_busy() {
    // Table saw: off, switched on at 5 s with a 600 ms inrush of 9 A, free-running at 1.1 A (idle),
    // cutting at 4 A from 20 s to 35 s, free-running, switched off at 45 s.
    let (changes, energy) = run(
        &clamp(300, 2000, 150, 3000),
        60_000,
        0.08,
        11,
        |t| match t {
            0..5_000 => 0.0,
            5_000..5_600 => 9.0,
            5_600..20_000 => 1.1,
            20_000..35_000 => 4.0,
            35_000..45_000 => 1.1,
            _ => 0.0,
        },
    );
    assert_eq!(
        changes,
        [
            (8_200, Off, Idle),
            (23_200, Idle, Busy),
            (38_200, Busy, Idle),
            (48_200, Idle, Off)
        ]
    );
    // Energy counted while not off (8.8 s..48.2 s): cutting 15 s × 920 W (3.8 Wh) plus 21.8 s idle at 253 W (1.5 Wh).
    let wh = energy as f64 / 3.6e6;
    assert!((5.2..5.6).contains(&wh), "{wh}");
}

#[test]
fn laser_pulsing_stays_busy() {
    // Laser cutter: tube pulses 6 A for 300 ms, 0.6 A (fan and chiller) for 200 ms, for 30 s.
    // A 1 s window spans two pulse periods, so the RMS is steady while cutting.
    let (changes, _) = run(
        &clamp_w(300, 2000, 150, 2000, 1000),
        50_000,
        0.1,
        3,
        |t| match t {
            0..2_000 => 0.0,
            2_000..10_000 => 0.6,
            10_000..40_000 if (t - 10_000) % 500 < 300 => 6.0,
            10_000..40_000 => 0.6,
            _ => 0.6,
        },
    );
    assert_eq!(
        changes,
        [
            (5_000, Off, Idle),
            (13_000, Idle, Busy),
            (43_000, Busy, Idle)
        ]
    );
}

#[test]
fn printer_heater_cycling_stays_idle_then_busy() {
    // 3D printer, dwell 16 s: heaters holding temperature cycle the bed (2.5 A on for 3 s every
    // 8 s) over 0.15 A of electronics; printing adds 1.3 A of steppers and hotend all along.
    let heater = |t: u64| if t % 8_000 < 3_000 { 2.5 } else { 0.0 };
    // The window spans one heater cycle (8 s), so the RMS is steady: 1.63 A holding temperature
    // (idle, under busy_a - h = 1.8 A), 2.68 A printing (busy).
    let (changes, _) = run(
        &clamp_w(100, 2000, 200, 16_000, 8_000),
        400_000,
        0.05,
        5,
        |t| match t {
            0..20_000 => 0.0,
            20_000..100_000 => 0.15 + heater(t),
            100_000..300_000 => 1.45 + heater(t),
            300_000..360_000 => 0.15 + heater(t),
            _ => 0.0,
        },
    );
    // Windows end at multiples of 8 s; each change is the first full window of the new load plus
    // the 16 s dwell (the mixed window at 104 s reads 1.92 A: still idle).
    assert_eq!(
        changes,
        [
            (40_000, Off, Idle),
            (128_000, Idle, Busy),
            (328_000, Busy, Idle),
            (384_000, Idle, Off)
        ]
    );
}

#[test]
fn hysteresis_holds_a_state_near_its_threshold() {
    // Hovering between busy_a - h and busy_a stays busy once busy, idle once idle.
    let s = clamp(300, 2000, 300, 0);
    let mut m = Meter::new(&s);
    let mut n = 0;
    for (k, i) in [2.5f32, 1.9, 1.8, 1.95, 1.75, 1.5, 1.8, 1.95]
        .iter()
        .enumerate()
    {
        if m.on_current_window(k as u64 * 200, 200, *i)
            .transition
            .is_some()
        {
            n += 1;
        }
        let want = if k < 5 { Busy } else { Idle };
        assert_eq!(m.state(), want, "step {k}");
    }
    assert_eq!(n, 2);
}

#[test]
fn run_signal_with_dwell_and_active_low() {
    let mut m = Meter::new(&Sensing::RunSignal {
        active_low: true,
        dwell_ms: 500,
    });
    // High = inactive = idle; first reading sets the candidate.
    assert_eq!(m.on_run_signal(0, true), None);
    assert_eq!(
        m.tick(500),
        Some(Transition {
            at: 500,
            from: Off,
            to: Idle
        })
    );
    // A 300 ms glitch low (active) is ignored.
    assert_eq!(m.on_run_signal(1_000, false), None);
    assert_eq!(m.tick(1_200), None);
    assert_eq!(m.on_run_signal(1_300, true), None);
    assert_eq!(m.tick(2_000), None);
    // A real start.
    assert_eq!(m.on_run_signal(3_000, false), None);
    assert_eq!(m.on_run_signal(3_499, false), None);
    assert_eq!(
        m.on_run_signal(3_500, false).map(|t| (t.at, t.to)),
        Some((3_500, Busy))
    );
}

#[test]
fn milliamperes_convert_to_the_nearest_f32_ampere() {
    // The same f32 as the decimal amperes a float config used to carry.
    assert_eq!(amperes(300), 0.3f32);
    assert_eq!(amperes(150), 0.15f32);
    assert_eq!(amperes(2000), 2.0f32);
    assert_eq!(amperes(1), 0.001f32);
    assert_eq!(amperes(30_000), 30.0f32);
    assert_eq!(amperes(0), 0.0);
    // The protocol's largest current, and u32::MAX, stay finite and in order.
    assert_eq!(amperes(10_000_000), 10_000.0f32);
    assert!(amperes(u32::MAX).is_finite() && amperes(u32::MAX) > amperes(10_000_000));
}

#[test]
fn wire_integers_are_rounded_to_nearest_and_saturate() {
    assert_eq!(round_u32(0.0), 0);
    assert_eq!(round_u32(0.49), 0);
    assert_eq!(round_u32(0.5), 1);
    assert_eq!(round_u32(1092.5), 1093);
    assert_eq!(round_u32(4.75 * 1000.0), 4750);
    assert_eq!(round_u32(0.0015 * 1000.0), 2);
    // Never negative, never NaN, never wrapped.
    assert_eq!(round_u32(-3.0), 0);
    assert_eq!(round_u32(f32::NAN), 0);
    assert_eq!(round_u32(f32::INFINITY), u32::MAX);
    assert_eq!(round_u32(1e12), u32::MAX);
}

#[test]
fn integer_thresholds_switch_at_the_milliampere() {
    // idle at 300 mA exactly; below is off. No dwell.
    let mut m = Meter::new(&clamp(300, 2000, 150, 0));
    assert_eq!(m.on_current_window(200, 200, 0.299).transition, None);
    assert_eq!(m.state(), Off);
    let t = m.on_current_window(400, 200, 0.300).transition;
    assert_eq!(t.map(|t| (t.from, t.to)), Some((Off, Idle)));
    // 230 V mains: 2 A is 460 W, counted as 460 W × 200 ms = 92 J while on.
    let r = m
        .on_current_window(600, 200, 2.0)
        .reading
        .expect("a reading");
    assert_eq!((r.power_w, r.energy_mj), (460.0, 92_000));
    assert_eq!(m.state(), Busy);
}
