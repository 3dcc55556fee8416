use std::vec::Vec;

use super::*;
use crate::storage::RamFlash;

/// 12 sectors of 2 KiB: 2 config slots of 3 sectors, 6 journal sectors.
type Flash = RamFlash<{ 12 * 2048 }, 2048>;
const CAP: usize = 8;
type J = Journal<CAP>;

fn layout() -> Layout {
    Layout::for_flash(&Flash::new()).expect("layout")
}

fn json(key: EventKey, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> =
        std::format!("{{\"boot\":{},\"seq\":{},\"p\":\"", key.boot, key.seq).into_bytes();
    while v.len() < len - 2 {
        v.push(b'a' + ((key.seq as usize + v.len()) % 26) as u8);
    }
    v.extend_from_slice(b"\"}");
    v
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Append(u32, usize),
    AckOldest,
    Save(u64),
}

/// A scenario that fills and acks the journal so that compaction runs several times.
fn scenario() -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rng = 0x1234_5678u32;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    let mut live = 0;
    for seq in 1..=70u32 {
        if seq == 1 {
            // Whatever a previous boot left is acknowledged first.
            for _ in 0..CAP {
                steps.push(Step::AckOldest);
            }
        }
        let len = 40 + (next() % 280) as usize;
        steps.push(Step::Append(seq, len));
        live += 1;
        if seq % 9 == 0 {
            steps.push(Step::Save(u64::from(seq)));
        }
        // The broker acknowledges in bursts; the journal never overflows here.
        let acks = if live >= CAP - 1 {
            live - 2
        } else {
            (next() % 3) as usize
        };
        for _ in 0..acks.min(live) {
            steps.push(Step::AckOldest);
            live -= 1;
        }
    }
    steps
}

/// The expected content: live keys (in order) and the last saved state value.
#[derive(Clone, Debug, Default)]
struct Model {
    live: Vec<(EventKey, usize)>,
    state: u64,
}

/// Runs steps from `from`, with keys of `boot`; stops at the first storage error.
/// Returns the index of the failed step.
fn run(j: &mut J, f: &mut Flash, steps: &[Step], boot: u32, model: &mut Model) -> Option<usize> {
    for (i, s) in steps.iter().enumerate() {
        let ok = match *s {
            Step::Append(seq, len) => {
                let key = EventKey { boot, seq };
                let r = j.append(f, key, EventClass::Other, &json(key, len));
                match r {
                    Ok(Appended::Stored) => model.live.push((key, len)),
                    Ok(Appended::StoredDropping(v)) => {
                        model.live.retain(|(k, _)| *k != v);
                        model.live.push((key, len));
                    }
                    Ok(Appended::Dropped) => {}
                    Err(_) => {}
                }
                r.is_ok()
            }
            Step::AckOldest => match model.live.first().copied() {
                Some((key, _)) => {
                    let r = j.ack(f, key);
                    if r.is_ok() {
                        model.live.remove(0);
                    }
                    r.is_ok()
                }
                None => true,
            },
            Step::Save(v) => {
                let st = PersistedState {
                    boot,
                    on_s: v,
                    ..PersistedState::default()
                };
                let r = j.save_state(f, st);
                if r.is_ok() {
                    model.state = v;
                }
                r.is_ok()
            }
        };
        if !ok {
            return Some(i);
        }
    }
    None
}

/// Checks the recovered journal against the model, allowing the interrupted step either way.
/// Returns the model updated with the interrupted step's outcome.
fn check(
    j: &J,
    f: &mut Flash,
    model: &Model,
    interrupted: Option<(Step, u32)>,
    ctx: &str,
) -> Model {
    let mut m = model.clone();
    let keys: Vec<EventKey> = j.entries().iter().map(|e| e.key).collect();
    match interrupted {
        Some((Step::Append(seq, len), boot)) => {
            let key = EventKey { boot, seq };
            if keys.contains(&key) {
                m.live.push((key, len));
            }
        }
        Some((Step::AckOldest, _)) => {
            if let Some((k, _)) = m.live.first() {
                if !keys.contains(k) {
                    m.live.remove(0);
                }
            }
        }
        Some((Step::Save(v), _)) if j.state().on_s == v => m.state = v,
        Some((Step::Save(_), _)) => {}
        None => {}
    }
    let want: Vec<EventKey> = m.live.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, want, "{ctx}: live events");
    assert_eq!(j.state().on_s, m.state, "{ctx}: state");
    for (e, (key, len)) in j.entries().iter().zip(&m.live) {
        let mut out = [0u8; MAX_EVENT_LEN];
        let n = j.read(f, e, &mut out).expect("read");
        assert_eq!(
            &out[..n],
            &json(*key, *len)[..],
            "{ctx}: payload of {key:?}"
        );
    }
    m
}

#[test]
fn append_ack_reopen() {
    let mut f = Flash::new();
    let mut j = J::open(&mut f, layout()).unwrap();
    assert!(j.is_empty());
    let k = |seq| EventKey { boot: 1, seq };
    for seq in 1..=3 {
        j.append(&mut f, k(seq), EventClass::Other, &json(k(seq), 100))
            .unwrap();
    }
    assert!(j.ack(&mut f, k(1)).unwrap());
    assert!(!j.ack(&mut f, k(1)).unwrap(), "a duplicate ack is a no-op");
    let st = PersistedState {
        boot: 1,
        journal_dropped: 0,
        on_s: 5,
        busy_s: 2,
        energy_wh: 7,
        box_id: 0xb0c5,
    };
    j.save_state(&mut f, st).unwrap();
    let j2 = J::open(&mut f, layout()).unwrap();
    assert_eq!(
        j2.entries().iter().map(|e| e.key).collect::<Vec<_>>(),
        [k(2), k(3)]
    );
    assert_eq!(j2.state(), st);
}

#[test]
fn refuses_non_ascii_and_oversized() {
    let mut f = Flash::new();
    let mut j = J::open(&mut f, layout()).unwrap();
    let k = EventKey { boot: 1, seq: 1 };
    assert_eq!(
        j.append(
            &mut f,
            k,
            EventClass::Other,
            "{\"x\":\"\u{a5}\"}".as_bytes()
        ),
        Err(StorageError::TooLarge)
    );
    assert_eq!(
        j.append(&mut f, k, EventClass::Other, &[b'x'; MAX_EVENT_LEN + 1]),
        Err(StorageError::TooLarge)
    );
}

#[test]
fn geometry_too_small_is_refused() {
    let mut f = Flash::new();
    assert_eq!(
        Journal::<64>::open(&mut f, layout()).err(),
        Some(StorageError::Geometry)
    );
}

#[test]
fn long_run_wraps_the_ring_many_times() {
    let mut f = Flash::new();
    let mut j = J::open(&mut f, layout()).unwrap();
    let mut model = Model::default();
    for boot in 1..=5 {
        assert_eq!(run(&mut j, &mut f, &scenario(), boot, &mut model), None);
        j = J::open(&mut f, layout()).unwrap();
        model = check(&j, &mut f, &model, None, "reopen");
    }
    assert!(f.ops() > 200, "the ring wrapped: {} ops", f.ops());
}

/// The acceptance test: a power cut after every possible number of flash writes and erases, then
/// a second cut during recovery, then a clean recovery and the rest of the scenario.
#[test]
fn power_cut_at_every_step() {
    let steps = scenario();
    // Reference run: how many flash operations the scenario takes (two boots, with a reopen).
    let total = {
        let mut f = Flash::new();
        let mut j = J::open(&mut f, layout()).unwrap();
        let mut m = Model::default();
        assert_eq!(run(&mut j, &mut f, &steps, 1, &mut m), None);
        let mut j = J::open(&mut f, layout()).unwrap();
        assert_eq!(run(&mut j, &mut f, &steps, 2, &mut m), None);
        f.ops()
    };
    assert!(total > 300, "scenario too small: {total}");
    let mut cuts_during_compaction = 0;
    for n in 0..total {
        let mut f = Flash::new();
        f.cut_power_after(n);
        let mut model = Model::default();
        let mut boot = 1;
        let mut interrupted = None;
        // Boot 1, then boot 2 of the same scenario.
        'boots: for b in 1..=2u32 {
            boot = b;
            let mut j = match J::open(&mut f, layout()) {
                Ok(j) => j,
                Err(_) => break 'boots,
            };
            if let Some(i) = run(&mut j, &mut f, &steps, b, &mut model) {
                interrupted = Some((steps[i], b));
                if j.tail_seq > 6 {
                    cuts_during_compaction += 1;
                }
                break 'boots;
            }
        }
        assert!(f.is_dead(), "cut {n} did not happen");
        // Second cut, during recovery or just after it.
        f.power_on();
        f.cut_power_after(n % 5);
        if let Ok(mut j) = J::open(&mut f, layout()) {
            let ctx = std::format!("cut {n}, first recovery");
            model = check(&j, &mut f, &model, interrupted, &ctx);
            interrupted = None;
            // Continue as a new boot, until the second cut.
            let more = [Step::AckOldest, Step::Append(1, 300), Step::Append(2, 50)];
            if let Some(i) = run(&mut j, &mut f, &more, boot + 1, &mut model) {
                interrupted = Some((more[i], boot + 1));
            }
        }
        f.power_on();
        let mut j = J::open(&mut f, layout()).expect("recovers");
        let ctx = std::format!("cut {n}, second recovery");
        model = check(&j, &mut f, &model, interrupted, &ctx);
        // The recovered journal works: the rest of the scenario runs cleanly.
        assert_eq!(
            run(&mut j, &mut f, &steps, boot + 2, &mut model),
            None,
            "{ctx}"
        );
        let j = J::open(&mut f, layout()).unwrap();
        check(&j, &mut f, &model, None, &ctx);
    }
    assert!(cuts_during_compaction > 0);
}

fn fill(j: &mut J, f: &mut Flash, items: &[(u32, EventClass)]) -> Vec<Appended> {
    items
        .iter()
        .map(|&(seq, class)| {
            let key = EventKey { boot: 1, seq };
            j.append(f, key, class, &json(key, 80)).unwrap()
        })
        .collect()
}

fn keys(j: &J) -> Vec<u32> {
    j.entries().iter().map(|e| e.key.seq).collect()
}

#[test]
fn full_journal_drops_superseded_progress_first_then_info_then_paired_starts() {
    use EventClass::*;
    let mut f = Flash::new();
    let mut j = J::open(&mut f, layout()).unwrap();
    // 8 events: start(1), state(2), progress(3), progress(4), state(5), progress(6), end(7), start(8)
    fill(
        &mut j,
        &mut f,
        &[
            (1, Started),
            (2, Other),
            (3, Progress(1)),
            (4, Progress(1)),
            (5, Other),
            (6, Progress(1)),
            (7, Ended(1)),
            (8, Started),
        ],
    );
    let out = fill(
        &mut j,
        &mut f,
        &[(9, Progress(8)), (10, Progress(8)), (11, Progress(8))],
    );
    let b = |seq| Appended::StoredDropping(EventKey { boot: 1, seq });
    // Superseded progress of session 1 first (3, 4, 6), oldest first.
    assert_eq!(out, [b(3), b(4), b(6)]);
    assert_eq!(keys(&j), [1, 2, 5, 7, 8, 9, 10, 11]);
    // Then progress 9 and 10 are superseded by 11 and 12.
    let out = fill(&mut j, &mut f, &[(12, Progress(8)), (13, Progress(8))]);
    assert_eq!(out, [b(9), b(10)]);
    assert_eq!(keys(&j), [1, 2, 5, 7, 8, 11, 12, 13]);
    // The end of session 8 supersedes its three progress events, oldest first.
    let out = fill(&mut j, &mut f, &[(14, Ended(8)), (15, Other), (16, Other)]);
    assert_eq!(out, [b(11), b(12), b(13)]);
    assert_eq!(keys(&j), [1, 2, 5, 7, 8, 14, 15, 16]);
    // Then informational events, oldest first.
    let out = fill(
        &mut j,
        &mut f,
        &[(17, Started), (18, Progress(17)), (19, Other)],
    );
    assert_eq!(out, [b(2), b(5), b(15)]);
    assert_eq!(keys(&j), [1, 7, 8, 14, 16, 17, 18, 19]);
    let out = fill(&mut j, &mut f, &[(20, Progress(17)), (21, Progress(17))]);
    assert_eq!(out, [b(18), b(20)]);
    let out = fill(&mut j, &mut f, &[(22, Ended(17))]);
    assert_eq!(out, [b(21)]);
    // Then starts whose end is in the journal, oldest first.
    let out = fill(&mut j, &mut f, &[(23, Started), (24, Started)]);
    assert_eq!(out, [b(16), b(19)]);
    let out = fill(&mut j, &mut f, &[(25, Started)]);
    assert_eq!(out, [b(1)]);
    assert_eq!(keys(&j), [7, 8, 14, 17, 22, 23, 24, 25]);
    assert_eq!(j.state().journal_dropped, 17);
    let j2 = J::open(&mut f, layout()).unwrap();
    assert_eq!(keys(&j2), [7, 8, 14, 17, 22, 23, 24, 25]);
    assert_eq!(j2.state().journal_dropped, 17);
}

#[test]
fn full_journal_never_drops_an_end_while_something_else_can_go() {
    use EventClass::*;
    let mut f = Flash::new();
    let mut j = J::open(&mut f, layout()).unwrap();
    // Sessions 1,3,5,7 each with start and end: 8 events.
    fill(
        &mut j,
        &mut f,
        &[
            (1, Started),
            (2, Ended(1)),
            (3, Started),
            (4, Ended(3)),
            (5, Started),
            (6, Ended(5)),
            (7, Started),
            (8, Ended(7)),
        ],
    );
    let b = |seq| Appended::StoredDropping(EventKey { boot: 1, seq });
    // An informational event finds no victim below its own rank but paired starts: start 1 goes.
    assert_eq!(fill(&mut j, &mut f, &[(9, Other)]), [b(1)]);
    // A new end drops the oldest informational event first.
    assert_eq!(fill(&mut j, &mut f, &[(10, Started)]), [b(9)]);
    assert_eq!(fill(&mut j, &mut f, &[(11, Ended(10))]), [b(3)]);
    assert_eq!(keys(&j), [2, 4, 5, 6, 7, 8, 10, 11]);
    // A progress of an open session with only ends and unpaired... start 5 and 7 are paired.
    assert_eq!(fill(&mut j, &mut f, &[(12, Started)]), [b(5)]);
    assert_eq!(fill(&mut j, &mut f, &[(13, Started)]), [b(7)]);
    assert_eq!(fill(&mut j, &mut f, &[(14, Started)]), [b(10)]);
    assert_eq!(keys(&j), [2, 4, 6, 8, 11, 12, 13, 14]);
    // Now only ends and unpaired starts: a new informational event is itself dropped...
    assert_eq!(fill(&mut j, &mut f, &[(15, Other)]), [Appended::Dropped]);
    // ...but an end is kept: its own start is now paired and goes.
    assert_eq!(fill(&mut j, &mut f, &[(16, Ended(14))]), [b(14)]);
    assert_eq!(keys(&j), [2, 4, 6, 8, 11, 12, 13, 16]);
    // With nothing but ends and unpaired starts, an end drops the oldest event that is not an end.
    assert_eq!(fill(&mut j, &mut f, &[(17, Ended(99))]), [b(12)]);
    assert_eq!(keys(&j), [2, 4, 6, 8, 11, 13, 16, 17]);
    assert_eq!(j.state().journal_dropped, 9);
}
