//! The sink task: batching, writing, retrying, spilling to and draining the backlog.
//!
//! Logical queue, oldest first: `[write in flight] < [backlog on disk] < [ready batches in
//! memory] < [open batch]`. Writes always take the oldest data; memory batches go to the end of
//! the backlog (never jumping ahead of it) when the store is down or they pile up; a batch
//! whose write fails goes back in front of the backlog. So lines reach the store in the order
//! they were sent.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::backlog::{Backlog, Chunk, Evicted};
use super::stats::{Counters, DropReason, TimeSeriesStats};
use super::store::{Store, WriteOutcome};

/// Ready batches kept in memory (while a write is in flight) before they go to the backlog.
const MEMORY_MAX_BATCHES: usize = 4;
/// How often unsynced backlog appends are fsynced.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// At most one "cannot write the backlog" error per this interval; the next one counts the
/// failures in between.
const IO_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Name of the dead-letter file in the backlog directory.
pub const DEAD_LETTER_FILE: &str = "dead-letters.lp";

type WriteFuture = Pin<Box<dyn Future<Output = WriteOutcome> + Send>>;

/// The settings the sink task needs (from [`TimeSeriesConfig`](super::TimeSeriesConfig)).
#[derive(Clone, Debug)]
pub(crate) struct SinkSettings {
    pub batch_max_lines: u64,
    pub flush_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub shutdown_timeout: Duration,
    pub dead_letter_path: PathBuf,
    pub dead_letter_max_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Memory,
    Backlog(u64),
}

#[derive(Debug)]
struct Inflight {
    source: Source,
    chunk: Chunk,
    /// The backlog segment being written was dropped to make room meanwhile.
    evicted: bool,
}

pub(crate) struct Sink {
    settings: SinkSettings,
    store: Store,
    backlog: Backlog,
    counters: Arc<Counters>,
    open: Chunk,
    open_since: Option<Instant>,
    ready: VecDeque<Chunk>,
    inflight: Option<Inflight>,
    inflight_future: Option<WriteFuture>,
    down: bool,
    retry_at: Option<Instant>,
    backoff: Backoff,
    dead_letter_full_logged: bool,
    /// When the last backlog write error was logged, and the failures since then not logged.
    io_error_logged_at: Option<Instant>,
    io_errors_unlogged: u64,
}

impl Sink {
    pub fn new(
        settings: SinkSettings,
        store: Store,
        backlog: Backlog,
        counters: Arc<Counters>,
    ) -> Sink {
        let backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
        let sink = Sink {
            settings,
            store,
            backlog,
            counters,
            open: Chunk::default(),
            open_since: None,
            ready: VecDeque::new(),
            inflight: None,
            inflight_future: None,
            down: false,
            retry_at: None,
            backoff,
            dead_letter_full_logged: false,
            io_error_logged_at: None,
            io_errors_unlogged: 0,
        };
        sink.update_gauges();
        sink
    }

    /// Runs until every handle is gone (or `cancel` fired and the queue is drained), then
    /// flushes within the shutdown timeout.
    pub async fn run(
        mut self,
        mut rx: UnboundedReceiver<Chunk>,
        cancel: CancellationToken,
    ) -> TimeSeriesStats {
        let mut receiving = true;
        let mut cancelled = false;
        let mut sync_tick = tokio::time::interval(SYNC_INTERVAL);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while receiving {
            self.pump();
            self.update_gauges();
            let flush_at = self.open_since.map(|t| t + self.settings.flush_interval);
            let retry_at = self.retry_at;
            tokio::select! {
                message = rx.recv() => match message {
                    Some(chunk) => self.accept(chunk),
                    None => receiving = false,
                },
                () = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    rx.close();
                }
                outcome = poll_write(&mut self.inflight_future), if self.inflight_future.is_some() => {
                    self.inflight_future = None;
                    self.on_outcome(outcome);
                }
                () = sleep_until_some(flush_at), if flush_at.is_some() => self.close_open(),
                () = sleep_until_some(retry_at), if retry_at.is_some() => self.retry_at = None,
                _ = sync_tick.tick() => self.sync_backlog(),
            }
        }
        self.shutdown().await
    }

    /// Takes a chunk from the queue into the open batch, closing batches at the size limit.
    fn accept(&mut self, chunk: Chunk) {
        self.counters
            .queued
            .fetch_sub(chunk.lines, std::sync::atomic::Ordering::Relaxed);
        if chunk.is_empty() {
            return;
        }
        if self.open_since.is_none() {
            self.open_since = Some(Instant::now());
        }
        if self.open.lines + chunk.lines <= self.settings.batch_max_lines {
            self.open.text.push_str(&chunk.text);
            self.open.lines += chunk.lines;
        } else {
            for line in chunk.text.split_inclusive('\n') {
                if self.open_since.is_none() {
                    self.open_since = Some(Instant::now());
                }
                self.open.text.push_str(line);
                self.open.lines += 1;
                if self.open.lines >= self.settings.batch_max_lines {
                    self.close_open();
                }
            }
        }
        if self.open.lines >= self.settings.batch_max_lines {
            self.close_open();
        }
    }

    fn close_open(&mut self) {
        self.open_since = None;
        if !self.open.is_empty() {
            self.ready.push_back(std::mem::take(&mut self.open));
        }
    }

    /// Spills memory to the backlog when needed and starts the next write when possible.
    fn pump(&mut self) {
        if !self.ready.is_empty() && (self.down || self.ready.len() > MEMORY_MAX_BATCHES) {
            self.spill_ready();
        }
        if self.inflight.is_some() || self.retry_at.is_some() {
            return;
        }
        if !self.backlog.is_empty() {
            match self.backlog.head() {
                Ok(Some((seq, chunk))) => self.start(Source::Backlog(seq), chunk),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the oldest time-series backlog segment; dropping it");
                    let lines = self.backlog.forget_head();
                    self.counters.drop_points(DropReason::BacklogIo, lines);
                }
            }
        } else if let Some(chunk) = self.ready.pop_front() {
            self.start(Source::Memory, chunk);
        }
    }

    fn start(&mut self, source: Source, chunk: Chunk) {
        self.inflight_future = Some(Box::pin(self.store.write(chunk.text.clone())));
        self.inflight = Some(Inflight {
            source,
            chunk,
            evicted: false,
        });
    }

    fn on_outcome(&mut self, outcome: WriteOutcome) {
        let Some(Inflight {
            source,
            chunk,
            evicted,
        }) = self.inflight.take()
        else {
            return;
        };
        match outcome {
            WriteOutcome::Written => {
                Counters::add(&self.counters.written, chunk.lines);
                Counters::add(&self.counters.batches_written, 1);
                if let Source::Backlog(seq) = source {
                    self.remove_segment(seq);
                }
                if self.down {
                    tracing::info!(
                        backlog_points = self.backlog.lines(),
                        "time-series store reachable again; draining the backlog"
                    );
                }
                self.down = false;
                self.backoff.reset();
                self.counters
                    .store_down
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            WriteOutcome::Retry(error) => {
                Counters::add(&self.counters.batches_failed, 1);
                let delay = self.backoff.next_delay();
                if self.down {
                    tracing::debug!(%error, ?delay, "time-series write failed again");
                } else {
                    tracing::warn!(
                        %error,
                        "time-series store unavailable: keeping points in the on-disk backlog \
                         and retrying with backoff"
                    );
                }
                self.down = true;
                self.counters
                    .store_down
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.retry_at = Some(Instant::now() + delay);
                match source {
                    Source::Memory => self.requeue_front(&chunk),
                    Source::Backlog(_) if evicted => {
                        self.counters
                            .drop_points(DropReason::BacklogFull, chunk.lines);
                    }
                    Source::Backlog(_) => {}
                }
            }
            WriteOutcome::Rejected { status, message } => {
                Counters::add(&self.counters.batches_rejected, 1);
                if evicted {
                    self.counters
                        .drop_points(DropReason::BacklogFull, chunk.lines);
                    return;
                }
                if let Source::Backlog(seq) = source {
                    self.remove_segment(seq);
                }
                if chunk.lines > 1 {
                    tracing::debug!(
                        status,
                        %message,
                        lines = chunk.lines,
                        "time-series store rejected a batch; splitting it to isolate bad lines"
                    );
                    let (first, second) = chunk.split_in_half();
                    self.requeue_front(&second);
                    self.requeue_front(&first);
                } else {
                    self.dead_letter(&chunk, status, &message);
                }
            }
        }
    }

    /// Puts a chunk back in front of everything queued (on disk).
    fn requeue_front(&mut self, chunk: &Chunk) {
        match self.backlog.push_front(chunk) {
            Ok(evicted) => self.count_evicted(&evicted),
            Err(e) => self.backlog_write_failed(&e, chunk.lines),
        }
    }

    /// A backlog write failed (disk full, IO error): the points are dropped and counted, the
    /// ledger and everything else go on; the log names the directory and the fix.
    /// The error is logged at most once a minute (a full disk fails every batch); the next
    /// message says how many failures it did not log.
    fn backlog_write_failed(&mut self, e: &std::io::Error, points: u64) {
        self.counters.drop_points(DropReason::BacklogIo, points);
        let now = Instant::now();
        if self
            .io_error_logged_at
            .is_some_and(|at| now.duration_since(at) < IO_ERROR_LOG_INTERVAL)
        {
            self.io_errors_unlogged += 1;
            return;
        }
        tracing::error!(
            error = %e,
            dir = %self.backlog.dir().display(),
            points,
            failures_not_logged = self.io_errors_unlogged,
            "cannot write the time-series backlog: these points are dropped (counted in \
             fabmeter_timeseries_points_dropped_by_reason{{reason=\"backlog_io\"}}); free space on \
             the disk of that directory, or set [timeseries] backlog_dir to a disk with room for \
             backlog_max_mib (this error is logged at most once a minute)"
        );
        self.io_error_logged_at = Some(now);
        self.io_errors_unlogged = 0;
    }

    /// Moves every ready memory batch to the end of the backlog.
    fn spill_ready(&mut self) {
        while let Some(chunk) = self.ready.pop_front() {
            match self.backlog.append(&chunk) {
                Ok(evicted) => self.count_evicted(&evicted),
                Err(e) => self.backlog_write_failed(&e, chunk.lines),
            }
        }
    }

    fn count_evicted(&mut self, evicted: &[Evicted]) {
        for e in evicted {
            match self.inflight.as_mut() {
                // Counted when its write ends: written if it succeeds, dropped otherwise.
                Some(inflight) if inflight.source == Source::Backlog(e.seq) => {
                    inflight.evicted = true;
                }
                _ => self.counters.drop_points(DropReason::BacklogFull, e.lines),
            }
        }
    }

    fn remove_segment(&mut self, seq: u64) {
        if let Err(e) = self.backlog.remove(seq) {
            // The segment stays in the index and will be sent again (a duplicate) rather than
            // lost; a persistent error shows in the logs at every attempt.
            tracing::error!(error = %e, seq, "cannot delete a written time-series backlog segment");
        }
    }

    fn dead_letter(&mut self, chunk: &Chunk, status: u16, message: &str) {
        Counters::add(&self.counters.dead_lettered, chunk.lines);
        let path = &self.settings.dead_letter_path;
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        tracing::warn!(
            status,
            %message,
            line = chunk.text.trim_end(),
            file = %path.display(),
            "time-series store rejected a line; kept in the dead-letter file"
        );
        if size + chunk.bytes() > self.settings.dead_letter_max_bytes {
            if !self.dead_letter_full_logged {
                self.dead_letter_full_logged = true;
                tracing::error!(file = %path.display(), "time-series dead-letter file is full; rejected lines are only counted");
            }
            return;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let reason: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let entry = format!(
            "# rejected_at_ms={now_ms} status={status} {reason}\n{}",
            chunk.text
        );
        let result = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(entry.as_bytes()).and_then(|()| f.sync_data()));
        if let Err(e) = result {
            tracing::error!(error = %e, file = %path.display(), "cannot write the time-series dead-letter file");
        }
    }

    fn sync_backlog(&mut self) {
        if let Err(e) = self.backlog.sync() {
            tracing::error!(error = %e, "cannot fsync the time-series backlog");
        }
    }

    fn update_gauges(&self) {
        let memory = self.open.lines
            + self.ready.iter().map(|c| c.lines).sum::<u64>()
            + self
                .inflight
                .as_ref()
                .filter(|i| i.source == Source::Memory)
                .map_or(0, |i| i.chunk.lines);
        let c = &self.counters;
        Counters::set(&c.memory, memory);
        Counters::set(&c.backlog_bytes, self.backlog.bytes());
        Counters::set(&c.backlog_points, self.backlog.lines());
        Counters::set(&c.backlog_segments, self.backlog.segment_count());
    }

    /// Finishes the write in flight, writes memory to the store if it is up and nothing waits
    /// on disk, puts the rest in the backlog, all within the shutdown timeout.
    async fn shutdown(mut self) -> TimeSeriesStats {
        self.close_open();
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        loop {
            if let Some(future) = self.inflight_future.as_mut() {
                match tokio::time::timeout_at(deadline, future).await {
                    Ok(outcome) => {
                        self.inflight_future = None;
                        self.on_outcome(outcome);
                    }
                    Err(_) => {
                        self.inflight_future = None;
                        self.abandon_inflight();
                        break;
                    }
                }
            }
            if self.down || !self.backlog.is_empty() || Instant::now() >= deadline {
                break;
            }
            let Some(chunk) = self.ready.pop_front() else {
                break;
            };
            self.start(Source::Memory, chunk);
        }
        self.spill_ready();
        if let Err(e) = self.backlog.close_open() {
            tracing::error!(error = %e, "cannot fsync the time-series backlog");
        }
        self.update_gauges();
        let stats = self.counters.snapshot();
        tracing::info!(
            points_written = stats.points_written,
            backlog_points = stats.backlog_points,
            "time-series sink stopped"
        );
        stats
    }

    /// Gives up waiting for the write in flight: its data stays queued (it may reach the store
    /// twice if the store did take it).
    fn abandon_inflight(&mut self) {
        if let Some(inflight) = self.inflight.take() {
            match inflight.source {
                Source::Memory => self.requeue_front(&inflight.chunk),
                Source::Backlog(_) if inflight.evicted => self
                    .counters
                    .drop_points(DropReason::BacklogFull, inflight.chunk.lines),
                Source::Backlog(_) => {}
            }
        }
    }
}

async fn poll_write(future: &mut Option<WriteFuture>) -> WriteOutcome {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff with "equal jitter": the n-th delay is uniform in
/// `[d/2, d]` with `d = min(max, min * 2^n)`.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
            rng: seed | 1,
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_delay(&mut self) -> Duration {
        let factor = 1_u32 << self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let full = self.min.saturating_mul(factor).min(self.max);
        let half = full / 2;
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let random = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let fraction = (random >> 11) as f64 / (1_u64 << 53) as f64;
        half + half.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeseries::{Point, TimeSeries, TimeSeriesConfig};
    use std::sync::Mutex;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A stand-in store for the one answer VictoriaMetrics never gives (it answers 204 even to
    /// lines it cannot parse): HTTP 400 to any body containing `bad`. Records accepted lines.
    async fn rejecting_store() -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut length = 0;
                        loop {
                            let mut header = String::new();
                            if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let lower = header.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().expect("content-length");
                            }
                            if header == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        stream.read_exact(&mut body).await.expect("body");
                        let body = String::from_utf8(body).expect("utf-8");
                        let answer = if body.contains("bad") {
                            "HTTP/1.1 400 Bad Request\r\ncontent-length: 9\r\n\r\nbad line!"
                        } else {
                            let mut lines = record.lock().expect("lock");
                            lines.extend(body.lines().map(str::to_owned));
                            "HTTP/1.1 204 No Content\r\n\r\n"
                        };
                        stream
                            .get_mut()
                            .write_all(answer.as_bytes())
                            .await
                            .expect("answer");
                    }
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn rejected_batches_are_split_and_bad_lines_dead_lettered() {
        let (url, accepted) = rejecting_store().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = TimeSeriesConfig::new(url, "o", "b", "", dir.path());
        config.flush_interval = Duration::from_millis(20);
        let (handle, task) = TimeSeries::spawn(config).expect("spawn");
        let points: Vec<Point> = (0..20_i64)
            .map(|i| {
                let tag = if i == 3 || i == 17 { "bad" } else { "good" };
                Point::new("m", i).tag("t", tag).field("v", i)
            })
            .collect();
        let good: Vec<String> = points
            .iter()
            .filter(|p| p.tags[0].1 == "good")
            .map(|p| p.to_line().expect("valid"))
            .collect();
        handle.send(points);
        let deadline = Instant::now() + Duration::from_secs(20);
        while handle.stats().points_written + handle.stats().points_dead_lettered < 20 {
            assert!(Instant::now() < deadline, "{:?}", handle.stats());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stats = handle.stats();
        assert_eq!((stats.points_written, stats.points_dead_lettered), (18, 2));
        assert!(stats.batches_rejected >= 2);
        assert_eq!((stats.batches_failed, stats.backlog_points), (0, 0));
        assert!(stats.store_up);
        assert_eq!(
            *accepted.lock().expect("lock"),
            good,
            "good lines, in order"
        );
        let dead = std::fs::read_to_string(dir.path().join(DEAD_LETTER_FILE)).expect("file");
        let dead_lines: Vec<&str> = dead.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(dead_lines, ["m,t=bad v=3i 3", "m,t=bad v=17i 17"]);
        assert!(dead.contains("status=400 bad line!"), "{dead}");
        drop(handle);
        task.await.expect("task");
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(min, max);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        for (n, d) in delays.iter().enumerate() {
            let full = (min * (1 << n)).min(max);
            assert!(*d >= full / 2 && *d <= full, "attempt {n}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
