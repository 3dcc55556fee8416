//! What a batch needs to read of the ledger, read for all of its machines at once: one statement
//! per table and chunk of keys instead of one per (machine, boot) (docs/BENCHMARKS.md "PostgreSQL
//! ledger against SQLite": a round trip to PostgreSQL costs ~50-100 µs, and a batch of the network
//! benchmark touches over a thousand machines).
//!
//! Each read joins the ledger's table to its keys, given as a `VALUES` list of at most [`CHUNK`]
//! rows (`WITH k(...) AS (VALUES ...) SELECT ... FROM k CROSS JOIN table t WHERE t.x = k.x ...`),
//! padded to a power of two with rows of NULLs (which match nothing), so that a few statement
//! shapes serve every batch and stay prepared. The keys are the leading columns of an index (the
//! site first) plus a range or a short list on the next one: both engines look each key up in the
//! index (SQLite takes `CROSS JOIN` as the loop order; PostgreSQL, without statistics on a new
//! ledger, would otherwise factor an `OR` of keys into one scan of the whole site). Keys name their
//! site, so that one statement serves the batches of many sites.
//!
//! What is read here is what the per-key reads of `ops` and `session_rows` would have read, at
//! the same point of the transaction; a key the prefetch did not foresee (a box new to its
//! machine opens an epoch whose boots were not guessed) is still read on its own by them.

use std::collections::{HashMap, HashSet};

use super::super::sql::{Db, Row, Val};
use super::LedgerError;

/// Keys per statement at most.
const CHUNK: usize = 64;

/// Runs `sql` once per chunk of `keys` and returns every row: `sql` starts with `WITH {keys}`,
/// replaced by the table `k(columns)` of the chunk's keys, each column cast to its SQL type
/// (`types`, for PostgreSQL to type the parameters).
pub(super) fn chunked<const K: usize>(
    db: &mut dyn Db,
    sql: &str,
    columns: &str,
    types: [&str; K],
    keys: &[[Val; K]],
) -> Result<Vec<Row>, LedgerError> {
    let mut out = Vec::new();
    let mut shapes: HashMap<usize, String> = HashMap::new();
    let padding: [Val; K] = std::array::from_fn(|_| Val::Null);
    for chunk in keys.chunks(CHUNK) {
        let n = chunk.len().next_power_of_two().min(CHUNK);
        let text = shapes.entry(n).or_insert_with(|| {
            let rows: Vec<String> = (0..n)
                .map(|r| {
                    let cells: Vec<String> = types
                        .iter()
                        .enumerate()
                        .map(|(c, ty)| format!("CAST(?{} AS {ty})", r * K + c + 1))
                        .collect();
                    format!("({})", cells.join(", "))
                })
                .collect();
            sql.replace(
                "{keys}",
                &format!("k({columns}) AS (VALUES {})", rows.join(", ")),
            )
        });
        let mut args = Vec::with_capacity(n * K);
        for key in chunk
            .iter()
            .chain(std::iter::repeat_n(&padding, n - chunk.len()))
        {
            args.extend(key.iter().cloned());
        }
        out.extend(db.rows(text, &args)?);
    }
    Ok(out)
}

/// A (site, machine) pair, owned.
pub(super) type SiteMachine = (String, String);

/// What the ledger holds of some machines: their highest boot, their epochs.
#[derive(Debug, Default)]
pub(super) struct Machines {
    /// Highest stored boot, per machine (absent: none).
    pub(super) max_boot: HashMap<SiteMachine, u32>,
    /// Highest epoch offset, per machine (absent: none, offset 0).
    pub(super) offset: HashMap<SiteMachine, u32>,
    /// The epoch offset of each box id, per machine.
    pub(super) boxes: HashMap<SiteMachine, HashMap<u32, u32>>,
}

/// Reads the boots and epochs of `machines` (site, machine).
pub(super) fn machines(
    db: &mut dyn Db,
    machines: &[(&str, &str)],
) -> Result<Machines, LedgerError> {
    let keys: Vec<[Val; 2]> = machines
        .iter()
        .map(|(s, m)| [Val::from(*s), Val::from(*m)])
        .collect();
    let mut out = Machines::default();
    for r in chunked(
        db,
        "WITH {keys} SELECT k.site, k.machine, MAX(t.boot) FROM k CROSS JOIN boots t
         WHERE t.site=k.site AND t.machine=k.machine GROUP BY k.site, k.machine",
        "site, machine",
        ["TEXT", "TEXT"],
        &keys,
    )? {
        out.max_boot.insert((r.text(0)?, r.text(1)?), r.u32(2)?);
    }
    for r in chunked(
        db,
        "WITH {keys} SELECT t.site, t.machine, t.boot_offset, t.box FROM k CROSS JOIN boot_epochs t
         WHERE t.site=k.site AND t.machine=k.machine",
        "site, machine",
        ["TEXT", "TEXT"],
        &keys,
    )? {
        let (key, offset, b) = ((r.text(0)?, r.text(1)?), r.u32(2)?, r.opt_u32(3)?);
        let max = out.offset.entry(key.clone()).or_insert(offset);
        *max = (*max).max(offset);
        if let Some(b) = b {
            out.boxes.entry(key).or_default().insert(b, offset);
        }
    }
    Ok(out)
}

/// A boot's stored anchor, highest seq, purge tombstone and time per state.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Boot {
    pub(super) anchor: Option<i64>,
    /// The highest seq ever stored under the boot (`boots.max_seq`, written in the transaction
    /// that stores the event and never lowered, not even by a purge): no stored event of the
    /// boot has a higher seq. Absent: the boot has no row, so no event was ever stored under it.
    pub(super) max_seq: Option<u32>,
    pub(super) tombstone: Option<u32>,
    /// What its state events add up to so far (`boots.busy_ms`, ...).
    pub(super) states: StoredStates,
}

/// A boot's time per state as its `boots` row holds it (see `backfill_boot_states!`): the closed
/// intervals' sums and the seq of its last state event (absent: none yet).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct StoredStates {
    pub(super) busy_ms: i64,
    pub(super) idle_ms: i64,
    pub(super) last_seq: Option<u32>,
}

/// A (site, machine, ledger boot) key, owned.
pub(super) type SiteBoot = (String, String, u32);

/// Reads the anchor, highest seq, tombstone and time per state of each (site, machine, ledger
/// boot) of `keys` (absent: none of them).
pub(super) fn boots(
    db: &mut dyn Db,
    keys: &[(&str, &str, u32)],
) -> Result<HashMap<SiteBoot, Boot>, LedgerError> {
    let vals: Vec<[Val; 3]> = keys
        .iter()
        .map(|(s, m, b)| [Val::from(*s), Val::from(*m), Val::from(*b)])
        .collect();
    let mut out: HashMap<SiteBoot, Boot> = HashMap::new();
    for r in chunked(
        db,
        "WITH {keys} SELECT k.site, k.machine, k.boot, b.anchor_ms, p.max_seq, b.max_seq,
            b.busy_ms, b.idle_ms, b.last_state_seq
         FROM k LEFT JOIN boots b
            ON b.site=k.site AND b.machine=k.machine AND b.boot=k.boot
         LEFT JOIN purged_keys p
            ON p.site=k.site AND p.machine=k.machine AND p.boot=k.boot
         WHERE b.site IS NOT NULL OR p.site IS NOT NULL",
        "site, machine, boot",
        ["TEXT", "TEXT", "BIGINT"],
        &vals,
    )? {
        out.insert(
            (r.text(0)?, r.text(1)?, r.u32(2)?),
            Boot {
                anchor: r.opt_i64(3)?,
                max_seq: r.opt_u32(5)?,
                tombstone: r.opt_u32(4)?,
                states: StoredStates {
                    busy_ms: r.opt_i64(6)?.unwrap_or(0),
                    idle_ms: r.opt_i64(7)?.unwrap_or(0),
                    last_seq: r.opt_u32(8)?,
                },
            },
        );
    }
    Ok(out)
}

/// Reads the stored seqs of each (site, machine, ledger boot, lowest seq, highest seq) of `spans`.
pub(super) fn stored_seqs(
    db: &mut dyn Db,
    spans: &[(&str, &str, u32, u32, u32)],
) -> Result<HashMap<SiteBoot, HashSet<u32>>, LedgerError> {
    let vals: Vec<[Val; 5]> = spans
        .iter()
        .map(|(s, m, b, lo, hi)| {
            [
                Val::from(*s),
                Val::from(*m),
                Val::from(*b),
                Val::from(*lo),
                Val::from(*hi),
            ]
        })
        .collect();
    let mut out: HashMap<SiteBoot, HashSet<u32>> = HashMap::new();
    for r in chunked(
        db,
        "WITH {keys} SELECT t.site, t.machine, t.boot, t.seq FROM k CROSS JOIN events t
         WHERE t.site=k.site AND t.machine=k.machine AND t.boot=k.boot
            AND t.seq BETWEEN k.lo AND k.hi",
        "site, machine, boot, lo, hi",
        ["TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT"],
        &vals,
    )? {
        out.entry((r.text(0)?, r.text(1)?, r.u32(2)?))
            .or_default()
            .insert(r.u32(3)?);
    }
    Ok(out)
}
