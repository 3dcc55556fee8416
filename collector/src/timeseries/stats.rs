//! Counters shared by the handles and the sink task, and their snapshot for `/metrics`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::point::{Point, RefusalReason};

/// Why accepted-looking points were dropped without reaching the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The queue between the handles and the sink task was full
    /// ([`TimeSeriesConfig::queue_max_points`](super::TimeSeriesConfig::queue_max_points)).
    QueueFull,
    /// The on-disk backlog was full: its oldest segment was dropped to make room.
    BacklogFull,
    /// Writing the backlog failed (disk full, permissions...): the batch could not be kept.
    BacklogIo,
    /// The sink was closed (or its task ended) when the points were sent.
    Closed,
    /// No store is configured ([`TimeSeriesHandle::disabled`](super::TimeSeriesHandle::disabled)).
    Disabled,
}

impl DropReason {
    /// Every reason, in a stable order (for metrics).
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::BacklogFull,
        DropReason::BacklogIo,
        DropReason::Closed,
        DropReason::Disabled,
    ];

    /// A stable snake_case label, for `/metrics` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::BacklogFull => "backlog_full",
            DropReason::BacklogIo => "backlog_io",
            DropReason::Closed => "closed",
            DropReason::Disabled => "disabled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the time-series sink's counters (monotonic unless marked as a gauge).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimeSeriesStats {
    /// False for [`TimeSeriesHandle::disabled`](super::TimeSeriesHandle::disabled).
    pub enabled: bool,
    /// Points that passed validation and entered the queue.
    pub points_accepted: u64,
    /// Points the store acknowledged (2xx).
    pub points_written: u64,
    /// Points refused by validation, all reasons.
    pub points_refused: u64,
    /// Refused points per reason, in [`RefusalReason::ALL`] order.
    pub refused_by_reason: Vec<(RefusalReason, u64)>,
    /// Points dropped, all reasons.
    pub points_dropped: u64,
    /// Dropped points per reason, in [`DropReason::ALL`] order.
    pub dropped_by_reason: Vec<(DropReason, u64)>,
    /// Points the store rejected one by one with a 4xx, appended to the dead-letter file.
    pub points_dead_lettered: u64,
    /// Write requests the store acknowledged.
    pub batches_written: u64,
    /// Write requests that failed with a retryable error (network, timeout, 5xx, 429, 401/403/404).
    pub batches_failed: u64,
    /// Write requests the store rejected as bad data (400, 413, 422); they are split and retried.
    pub batches_rejected: u64,
    /// Gauge: bytes in the on-disk backlog.
    pub backlog_bytes: u64,
    /// Gauge: points (lines) in the on-disk backlog.
    pub backlog_points: u64,
    /// Gauge: segment files in the on-disk backlog.
    pub backlog_segments: u64,
    /// Gauge: points sent by handles and not yet taken by the sink task.
    pub queued_points: u64,
    /// Gauge: points held in the sink task's memory (being batched, or in flight).
    pub memory_points: u64,
    /// Gauge: whether the last write attempt succeeded (true before the first attempt).
    pub store_up: bool,
}

impl TimeSeriesStats {
    /// Refused points for one reason.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        lookup(&self.refused_by_reason, reason)
    }

    /// Dropped points for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        lookup(&self.dropped_by_reason, reason)
    }
}

fn lookup<R: PartialEq>(table: &[(R, u64)], reason: R) -> u64 {
    table
        .iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, n)| *n)
}

/// The atomics behind [`TimeSeriesStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub enabled: AtomicBool,
    pub accepted: AtomicU64,
    pub written: AtomicU64,
    refused: [AtomicU64; RefusalReason::ALL.len()],
    refusal_logged: [AtomicBool; RefusalReason::ALL.len()],
    dropped: [AtomicU64; DropReason::ALL.len()],
    drop_logged: [AtomicBool; DropReason::ALL.len()],
    pub dead_lettered: AtomicU64,
    pub batches_written: AtomicU64,
    pub batches_failed: AtomicU64,
    pub batches_rejected: AtomicU64,
    pub backlog_bytes: AtomicU64,
    pub backlog_points: AtomicU64,
    pub backlog_segments: AtomicU64,
    pub queued: AtomicU64,
    pub memory: AtomicU64,
    pub store_down: AtomicBool,
}

impl Counters {
    pub fn new(enabled: bool) -> Self {
        let counters = Counters::default();
        counters.enabled.store(enabled, Ordering::Relaxed);
        counters
    }

    /// Counts a refused point and logs the first refusal of each reason.
    pub fn refuse(&self, reason: RefusalReason, point: &Point) {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
        if !self.refusal_logged[reason.index()].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                reason = reason.as_str(),
                measurement = point.measurement,
                point = ?point,
                "time-series point refused: line protocol cannot carry it (logged once per \
                 reason; further refusals are only counted)"
            );
        }
    }

    /// Counts dropped points and logs the first drop of each reason.
    pub fn drop_points(&self, reason: DropReason, points: u64) {
        if points == 0 {
            return;
        }
        self.dropped[reason.index()].fetch_add(points, Ordering::Relaxed);
        if reason != DropReason::Disabled
            && !self.drop_logged[reason.index()].swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                reason = reason.as_str(),
                points,
                "time-series points dropped (logged once per reason; further drops are only \
                 counted)"
            );
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> TimeSeriesStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let refused_by_reason: Vec<(RefusalReason, u64)> = RefusalReason::ALL
            .iter()
            .map(|r| (*r, get(&self.refused[r.index()])))
            .collect();
        let dropped_by_reason: Vec<(DropReason, u64)> = DropReason::ALL
            .iter()
            .map(|r| (*r, get(&self.dropped[r.index()])))
            .collect();
        TimeSeriesStats {
            enabled: self.enabled.load(Ordering::Relaxed),
            points_accepted: get(&self.accepted),
            points_written: get(&self.written),
            points_refused: refused_by_reason.iter().map(|(_, n)| n).sum(),
            refused_by_reason,
            points_dropped: dropped_by_reason.iter().map(|(_, n)| n).sum(),
            dropped_by_reason,
            points_dead_lettered: get(&self.dead_lettered),
            batches_written: get(&self.batches_written),
            batches_failed: get(&self.batches_failed),
            batches_rejected: get(&self.batches_rejected),
            backlog_bytes: get(&self.backlog_bytes),
            backlog_points: get(&self.backlog_points),
            backlog_segments: get(&self.backlog_segments),
            queued_points: get(&self.queued),
            memory_points: get(&self.memory),
            store_up: !self.store_down.load(Ordering::Relaxed),
        }
    }
}
