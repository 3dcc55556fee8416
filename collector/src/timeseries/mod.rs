//! The time-series sink: numeric points to an InfluxDB 2 write API (InfluxDB 2.x/3.x,
//! VictoriaMetrics), batched, retried, and kept in a bounded on-disk backlog while the store is
//! down. The ledger never waits for it.
//!
//! # API
//!
//! ```no_run
//! # async fn demo() -> Result<(), fabmeter_collector::timeseries::TimeSeriesError> {
//! use fabmeter_collector::timeseries::{Point, TimeSeries, TimeSeriesConfig};
//!
//! let config = TimeSeriesConfig::new(
//!     "http://127.0.0.1:8086", "my-org", "fabmeter", "token", "/var/lib/fabmeter/ts-backlog",
//! );
//! let (handle, task) = TimeSeries::spawn(config)?;
//! handle.send(vec![Point::new("machine_power", 1_700_000_000_000)
//!     .tag("site", "lab")
//!     .tag("machine", "laser-1")
//!     .field("watts", 812.5)
//!     .field("state", 2_i64)]);
//! let stats = handle.stats(); // for /metrics
//! drop(handle); // or handle.close(): the task flushes, then ends
//! let _final_stats = task.await;
//! # let _ = stats; Ok(()) }
//! ```
//!
//! * [`Point`]: measurement, tags, numeric fields ([`FieldValue::Int`] / [`FieldValue::Float`]
//!   only: VictoriaMetrics stores string fields as 0) and a millisecond timestamp.
//!   [`Point::validate`] refuses what line protocol cannot carry exactly ([`RefusalReason`]).
//! * [`TimeSeries::spawn`] starts the sink and returns a [`TimeSeriesHandle`] (cheap to clone)
//!   and the task's `JoinHandle`, which yields the final [`TimeSeriesStats`].
//! * [`TimeSeriesHandle::send`] validates and encodes on the caller's thread, then hands the
//!   lines over without ever blocking or waiting for the store. Refused points are counted per
//!   reason, logged once per reason and never sent; the good points of the same call go on.
//! * [`TimeSeriesHandle::disabled`]: with no store configured, a handle that discards points
//!   (counted as dropped, reason `disabled`), so callers need no `Option`.
//! * [`TimeSeriesHandle::stats`]: counters and gauges from atomics, for `/metrics`.
//!
//! # Threading
//!
//! The sink runs on its own current-thread Tokio runtime on a thread of the caller's blocking
//! pool (`spawn_blocking`), so its synchronous file IO (appends, fsync) and HTTP never occupy
//! the caller's runtime. [`TimeSeries::spawn`] must be called inside a Tokio runtime.
//!
//! # Batching, retries and errors
//!
//! Lines are batched up to [`TimeSeriesConfig::batch_max_lines`] or
//! [`TimeSeriesConfig::flush_interval`], whichever comes first; one write request is in flight
//! at a time, at most [`TimeSeriesConfig::request_timeout`] long. Outcomes:
//!
//! * 2xx: written (204 from InfluxDB and VictoriaMetrics; any other 2xx counts as written too).
//! * network error, timeout, 5xx, 429, and 401/403/404 and other 4xx that an operator can fix
//!   (token, org, bucket): the store counts as down; the batch goes back in front of the
//!   backlog and is retried with exponential backoff and jitter between
//!   [`TimeSeriesConfig::retry_backoff_min`] and [`TimeSeriesConfig::retry_backoff_max`].
//! * 400, 413, 422 (the data itself is refused): the batch is split in halves, each retried at
//!   once, until the offending lines stand alone; a single rejected line goes to the
//!   dead-letter file `dead-letters.lp` in the backlog directory (a `# rejected_at_ms=…
//!   status=… message` comment, then the line), counted in
//!   [`TimeSeriesStats::points_dead_lettered`], and the flow goes on. Note that InfluxDB may
//!   have stored the good lines of a rejected batch ("partial write"); rewriting them is
//!   harmless there because a point with the same series and timestamp overwrites itself.
//!   VictoriaMetrics never answers 4xx to a write: it answers 204 and only logs a line it
//!   cannot parse, which is one more reason to validate upstream.
//!
//! Delivery is at least once: a write that times out but was in fact stored is sent again.
//!
//! # Ordering
//!
//! Lines reach the store in the order they were given to `send` (across all handles, in the
//! order the calls happened), so the points of every series arrive in order. The backlog is
//! drained oldest first and new points queue behind it, also after a restart: a new sink on the
//! same directory drains what the previous one left before anything newer. Points lost to the
//! policies below are lost as whole batches, never reordered.
//!
//! # Policies
//!
//! * **Queue full** (handles faster than the sink): the queue holds at most
//!   [`TimeSeriesConfig::queue_max_points`] points; a `send` that does not fit is dropped whole
//!   and counted ([`DropReason::QueueFull`]). The sink empties the queue continuously, also
//!   while a write is in flight or the store is down (it spills to disk then), so this happens
//!   only if the disk cannot keep up.
//! * **Backlog full**: before an append would exceed [`TimeSeriesConfig::backlog_max_bytes`],
//!   the oldest segments are deleted and their points counted ([`DropReason::BacklogFull`]):
//!   the newest data is kept. A failed batch put back in front when the backlog is full is
//!   itself the oldest data and is dropped.
//! * **Backlog IO error** (disk full, permissions): the batch is dropped and counted
//!   ([`DropReason::BacklogIo`]); the sink keeps running.
//! * **Shutdown**: when every handle is dropped or [`TimeSeriesHandle::close`] is called, the
//!   sink takes what is left in the queue, waits for the write in flight, writes its memory to
//!   the store if the store is up and the backlog empty, and puts everything else in the
//!   backlog (fsynced), all within [`TimeSeriesConfig::shutdown_timeout`] (plus the disk
//!   writes). Points sent after `close` are dropped ([`DropReason::Closed`]).
//!
//! # Backlog format
//!
//! `backlog_dir` holds segment files named `{seq:020}.lp` (20 decimal digits; name order is
//! drain order). Each holds complete lines of InfluxDB line protocol with **millisecond**
//! timestamps, as sent with `precision=ms`, at most `batch_max_lines` lines: one segment is one
//! write request, sent as-is in one POST. Segments are append-only; the last one
//! is fsynced every second while it grows and when it is closed. On start, segments left by a
//! previous run are recovered (a torn last line from a crash is cut off) and drained first.
//! Other files in the directory are ignored. One sink per directory.
//!
//! # Base URL and tenants
//!
//! [`TimeSeriesConfig::url`] is a base URL; the writer (`store.rs`, the tree's reqwest) posts to
//! `{url}/api/v2/write?org=…&bucket=…&precision=ms` and keeps the URL's path. So one site's
//! series can go to its own tenant: a VictoriaMetrics cluster's
//! `http://vminsert:8480/insert/<account>/influx` (account = the site's tenant), an InfluxDB org
//! and bucket per site, or a store behind a reverse proxy at `https://proxy/influx`. A query or
//! fragment is refused (org and bucket have their own keys). The `influxdb2` crate was used
//! until it turned out to drop the path (its `Client::url()` calls `set_path`).

mod backlog;
mod point;
mod sink;
mod stats;
mod store;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use point::{FieldValue, Point, RefusalReason, MAX_TAG_VALUE_BYTES};
pub use sink::DEAD_LETTER_FILE;
pub use stats::{DropReason, TimeSeriesStats};

use backlog::{Backlog, Chunk};
use sink::{Sink, SinkSettings};
use stats::Counters;
use store::Store;

/// Settings of the time-series sink. Build with [`TimeSeriesConfig::new`], which fills in the
/// defaults, then adjust fields.
#[derive(Clone, PartialEq)]
pub struct TimeSeriesConfig {
    /// Base URL of the InfluxDB 2 write API, e.g. `http://127.0.0.1:8086`, with an optional path
    /// prefix kept as given, e.g. `http://vminsert:8480/insert/42/influx` (module docs, "Base URL
    /// and tenants").
    pub url: String,
    /// Organization (`org` parameter; VictoriaMetrics ignores it).
    pub org: String,
    /// Bucket (`bucket` parameter; VictoriaMetrics ignores it).
    pub bucket: String,
    /// API token, sent as `Authorization: Token …`; empty sends no header.
    pub token: String,
    /// Most lines per write request and per backlog segment (default 5,000).
    pub batch_max_lines: usize,
    /// Longest time a point waits in memory for its batch to fill (default 1 s).
    pub flush_interval: Duration,
    /// Directory of the on-disk backlog (created if missing).
    pub backlog_dir: PathBuf,
    /// Size limit of the backlog (default 256 MiB); the oldest segments are dropped beyond it.
    pub backlog_max_bytes: u64,
    /// First retry delay after a failed write (default 200 ms).
    pub retry_backoff_min: Duration,
    /// Longest retry delay (default 30 s).
    pub retry_backoff_max: Duration,
    /// Longest wait for the answer to one write request (default 10 s).
    pub request_timeout: Duration,
    /// Most points waiting between the handles and the sink task (default 100,000).
    pub queue_max_points: usize,
    /// Time budget of the final flush at shutdown (default 5 s).
    pub shutdown_timeout: Duration,
    /// Size limit of the dead-letter file (default 16 MiB); beyond it rejected lines are only
    /// counted.
    pub dead_letter_max_bytes: u64,
}

impl TimeSeriesConfig {
    /// Default batch size, as in the issue: 5,000 lines.
    pub const DEFAULT_BATCH_MAX_LINES: usize = 5_000;
    /// Default flush interval: 1 s.
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
    /// Default backlog limit: 256 MiB.
    pub const DEFAULT_BACKLOG_MAX_BYTES: u64 = 256 * 1024 * 1024;

    /// A configuration with the defaults.
    pub fn new(
        url: impl Into<String>,
        org: impl Into<String>,
        bucket: impl Into<String>,
        token: impl Into<String>,
        backlog_dir: impl Into<PathBuf>,
    ) -> Self {
        TimeSeriesConfig {
            url: url.into(),
            org: org.into(),
            bucket: bucket.into(),
            token: token.into(),
            batch_max_lines: Self::DEFAULT_BATCH_MAX_LINES,
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
            backlog_dir: backlog_dir.into(),
            backlog_max_bytes: Self::DEFAULT_BACKLOG_MAX_BYTES,
            retry_backoff_min: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            queue_max_points: 100_000,
            shutdown_timeout: Duration::from_secs(5),
            dead_letter_max_bytes: 16 * 1024 * 1024,
        }
    }

    /// Checks every setting; the error names the setting, the problem and a valid example.
    pub fn validate(&self) -> Result<(), TimeSeriesError> {
        let invalid = |key: &'static str, problem: String| {
            Err(TimeSeriesError::InvalidConfig { key, problem })
        };
        if let Err(problem) = store::check_url(&self.url) {
            return invalid("url", problem);
        }
        if self.bucket.is_empty() {
            return invalid("bucket", "is empty; e.g. \"fabmeter\"".into());
        }
        if self.batch_max_lines == 0 {
            return invalid("batch_max_lines", "must be at least 1; e.g. 5000".into());
        }
        if self.flush_interval.is_zero() {
            return invalid("flush_interval", "must be positive; e.g. 1 s".into());
        }
        if self.backlog_dir.as_os_str().is_empty() {
            return invalid(
                "backlog_dir",
                "is empty; e.g. \"/var/lib/fabmeter/ts-backlog\"".into(),
            );
        }
        if self.backlog_max_bytes == 0 {
            return invalid(
                "backlog_max_bytes",
                "must be positive; e.g. 268435456".into(),
            );
        }
        if self.retry_backoff_min.is_zero() || self.retry_backoff_max < self.retry_backoff_min {
            return invalid(
                "retry_backoff_min",
                "must be positive and not above retry_backoff_max; e.g. 200 ms and 30 s".into(),
            );
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout", "must be positive; e.g. 10 s".into());
        }
        if self.queue_max_points == 0 {
            return invalid("queue_max_points", "must be at least 1; e.g. 100000".into());
        }
        Ok(())
    }
}

impl fmt::Debug for TimeSeriesConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeSeriesConfig")
            .field("url", &self.url)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("batch_max_lines", &self.batch_max_lines)
            .field("flush_interval", &self.flush_interval)
            .field("backlog_dir", &self.backlog_dir)
            .field("backlog_max_bytes", &self.backlog_max_bytes)
            .field("retry_backoff_min", &self.retry_backoff_min)
            .field("retry_backoff_max", &self.retry_backoff_max)
            .field("request_timeout", &self.request_timeout)
            .field("queue_max_points", &self.queue_max_points)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("dead_letter_max_bytes", &self.dead_letter_max_bytes)
            .finish()
    }
}

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum TimeSeriesError {
    /// A setting is invalid.
    #[error("invalid time-series setting `{key}`: {problem}")]
    InvalidConfig {
        /// The setting.
        key: &'static str,
        /// What is wrong, with a valid example.
        problem: String,
    },
    /// The backlog directory cannot be opened or recovered.
    #[error("cannot open the time-series backlog in {dir}: {source}")]
    Backlog {
        /// The directory.
        dir: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// [`TimeSeries::spawn`] was called outside a Tokio runtime, or the sink's own runtime
    /// could not be built.
    #[error("cannot start the time-series task: {0}")]
    Runtime(String),
}

/// What became of the points of one [`TimeSeriesHandle::send`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Points queued for the store.
    pub accepted: usize,
    /// Points refused by validation.
    pub refused: usize,
    /// Valid points dropped (queue full, closed, or disabled).
    pub dropped: usize,
}

/// The time-series sink; see the module docs.
#[derive(Debug)]
pub struct TimeSeries;

impl TimeSeries {
    /// Validates `config`, opens (and recovers) the backlog, and starts the sink task.
    ///
    /// Returns the first handle and the task, which ends after every handle is dropped or
    /// [`TimeSeriesHandle::close`] was called, and yields the final stats.
    pub fn spawn(
        config: TimeSeriesConfig,
    ) -> Result<(TimeSeriesHandle, JoinHandle<TimeSeriesStats>), TimeSeriesError> {
        config.validate()?;
        let runtime_handle = tokio::runtime::Handle::try_current()
            .map_err(|e| TimeSeriesError::Runtime(e.to_string()))?;
        let batch_max_lines = config.batch_max_lines as u64;
        let (backlog, recovery) = Backlog::open(
            &config.backlog_dir,
            config.backlog_max_bytes,
            batch_max_lines,
        )
        .map_err(|source| TimeSeriesError::Backlog {
            dir: config.backlog_dir.clone(),
            source,
        })?;
        if recovery.segments > 0 {
            tracing::info!(
                dir = %config.backlog_dir.display(),
                segments = recovery.segments,
                points = recovery.lines,
                bytes = recovery.bytes,
                torn_bytes = recovery.torn_bytes,
                "time-series backlog recovered; it is drained before newer points"
            );
        }
        let store = Store::new(
            &config.url,
            &config.org,
            &config.bucket,
            &config.token,
            config.request_timeout,
        );
        let counters = Arc::new(Counters::new(true));
        let settings = SinkSettings {
            batch_max_lines,
            flush_interval: config.flush_interval,
            backoff_min: config.retry_backoff_min,
            backoff_max: config.retry_backoff_max,
            shutdown_timeout: config.shutdown_timeout,
            dead_letter_path: config.backlog_dir.join(DEAD_LETTER_FILE),
            dead_letter_max_bytes: config.dead_letter_max_bytes,
        };
        let sink = Sink::new(settings, store, backlog, Arc::clone(&counters));
        let (tx, rx) = unbounded_channel();
        let cancel = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("fabmeter-timeseries")
            .build()
            .map_err(|e| TimeSeriesError::Runtime(e.to_string()))?;
        let task_cancel = cancel.clone();
        let task =
            runtime_handle.spawn_blocking(move || runtime.block_on(sink.run(rx, task_cancel)));
        tracing::info!(
            url = %config.url,
            bucket = %config.bucket,
            "time-series sink started"
        );
        let handle = TimeSeriesHandle {
            tx: Some(tx),
            cancel: Some(cancel),
            counters,
            queue_max_points: config.queue_max_points as u64,
        };
        Ok((handle, task))
    }
}

/// Sends points to the sink; cheap to clone. The sink ends when every handle is dropped.
#[derive(Clone, Debug)]
pub struct TimeSeriesHandle {
    tx: Option<UnboundedSender<Chunk>>,
    cancel: Option<CancellationToken>,
    counters: Arc<Counters>,
    queue_max_points: u64,
}

impl TimeSeriesHandle {
    /// A handle for running without a store: validates and counts points, then discards them
    /// ([`DropReason::Disabled`]).
    pub fn disabled() -> Self {
        TimeSeriesHandle {
            tx: None,
            cancel: None,
            counters: Arc::new(Counters::new(false)),
            queue_max_points: 0,
        }
    }

    /// True unless this is a [`TimeSeriesHandle::disabled`] handle.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether `self` and `other` feed the same sink (clones of one handle).
    pub fn same_sink(&self, other: &TimeSeriesHandle) -> bool {
        Arc::ptr_eq(&self.counters, &other.counters)
    }

    /// Validates and encodes `points` and queues them for the store. Never blocks and never
    /// waits for the store: refused points are counted per reason, and when the queue is full
    /// or the sink closed the valid points of this call are dropped and counted.
    pub fn send(&self, points: Vec<Point>) -> SendSummary {
        let mut summary = SendSummary::default();
        let mut chunk = Chunk::default();
        for point in &points {
            match point.write_line(&mut chunk.text) {
                Ok(()) => chunk.lines += 1,
                Err(reason) => {
                    summary.refused += 1;
                    self.counters.refuse(reason, point);
                }
            }
        }
        if chunk.is_empty() {
            return summary;
        }
        let lines = chunk.lines;
        let drop_as = |reason: DropReason, mut summary: SendSummary| {
            self.counters.drop_points(reason, lines);
            summary.dropped = lines as usize;
            summary
        };
        let Some(tx) = &self.tx else {
            return drop_as(DropReason::Disabled, summary);
        };
        if self.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return drop_as(DropReason::Closed, summary);
        }
        let reserved =
            self.counters
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    (queued + lines <= self.queue_max_points).then_some(queued + lines)
                });
        if reserved.is_err() {
            return drop_as(DropReason::QueueFull, summary);
        }
        if tx.send(chunk).is_err() {
            self.counters.queued.fetch_sub(lines, Ordering::AcqRel);
            return drop_as(DropReason::Closed, summary);
        }
        Counters::add(&self.counters.accepted, lines);
        summary.accepted = lines as usize;
        summary
    }

    /// Asks the sink to stop (for every clone of this handle): it takes what is already queued,
    /// flushes it to the store or the backlog, and ends. Later sends are dropped.
    pub fn close(&self) {
        if let Some(cancel) = &self.cancel {
            cancel.cancel();
        }
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> TimeSeriesStats {
        self.counters.snapshot()
    }
}
