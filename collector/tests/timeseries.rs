//! The time-series sink against a real VictoriaMetrics (InfluxDB 2 write API).
//!
//! VictoriaMetrics stores field `f` of measurement `m` as metric `m_f`, tags as labels, and
//! exports timestamps in milliseconds. No sleeps: every wait polls a condition with a deadline.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fabmeter_collector::timeseries::{
    DropReason, FieldValue, Point, RefusalReason, TimeSeries, TimeSeriesConfig, TimeSeriesHandle,
    TimeSeriesStats,
};
use fabmeter_e2e::{wait_until, VictoriaMetrics};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

/// Label set with `__name__` first, e.g. `ts_power_watts{machine="m1",site="lab"}`.
type SeriesKey = String;
type Samples = BTreeMap<SeriesKey, Vec<(i64, f64)>>;

fn series_key(name: &str, labels: &BTreeMap<String, String>) -> SeriesKey {
    let labels: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// What VictoriaMetrics should hold for `points`.
fn expected(points: &[Point]) -> Samples {
    let mut out = Samples::new();
    for p in points {
        let labels: BTreeMap<String, String> = p
            .tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        for (field, value) in &p.fields {
            let value = match value {
                FieldValue::Int(i) => *i as f64,
                FieldValue::Float(f) => *f,
            };
            let key = series_key(&format!("{}_{field}", p.measurement), &labels);
            out.entry(key).or_default().push((p.time_ms, value));
        }
    }
    for samples in out.values_mut() {
        samples.sort_by_key(|&(ts, _)| ts);
    }
    out
}

/// What VictoriaMetrics holds for `selector`.
fn exported(vm: &VictoriaMetrics, selector: &str) -> Samples {
    vm.force_flush();
    vm.export(selector)
        .into_iter()
        .map(|s| (series_key(s.name(), &s.metric), s.samples()))
        .collect()
}

fn sample_count(samples: &Samples) -> usize {
    samples.values().map(Vec::len).sum()
}

/// Waits until VictoriaMetrics holds exactly as many samples as expected, then compares all.
fn assert_arrives(vm: &VictoriaMetrics, selector: &str, points: &[Point]) {
    let want = expected(points);
    let count = sample_count(&want);
    wait_until(WAIT, &format!("{count} samples of {selector}"), || {
        sample_count(&exported(vm, selector)) >= count
    });
    assert_eq!(exported(vm, selector), want);
}

/// A few days ago, on a whole second.
fn base_ms() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    (now - 3 * 24 * 3600 * 1000) / 1000 * 1000
}

fn config(url: &str, dir: &Path) -> TimeSeriesConfig {
    let mut config = TimeSeriesConfig::new(url, "fabmeter", "fabmeter", "", dir);
    config.flush_interval = Duration::from_millis(100);
    config.retry_backoff_min = Duration::from_millis(20);
    config.retry_backoff_max = Duration::from_millis(300);
    config.request_timeout = Duration::from_secs(5);
    config
}

fn stats_until(
    handle: &TimeSeriesHandle,
    what: &str,
    mut cond: impl FnMut(&TimeSeriesStats) -> bool,
) -> TimeSeriesStats {
    wait_until(WAIT, what, || cond(&handle.stats()));
    handle.stats()
}

async fn finish(handle: TimeSeriesHandle, task: JoinHandle<TimeSeriesStats>) -> TimeSeriesStats {
    drop(handle);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the sink ends within the deadline after its handles are dropped")
        .expect("the sink task does not panic")
}

/// `n` points of one series `ts_<measurement>_v{site="lab"}` one second apart.
fn series(measurement: &'static str, start_ms: i64, n: usize) -> Vec<Point> {
    (0..n)
        .map(|i| {
            Point::new(measurement, start_ms + i as i64 * 1000)
                .tag("site", "lab")
                .field("v", i as i64)
        })
        .collect()
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("backlog dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lp"))
        .filter(|e| !e.file_name().to_string_lossy().starts_with("dead"))
        .count()
}

#[tokio::test]
async fn points_arrive_with_exact_values_and_timestamps() {
    let vm = VictoriaMetrics::start().expect("victoria-metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, task) = TimeSeries::spawn(config(&vm.base_url(), dir.path())).expect("spawn");
    let base = base_ms();
    let mut points = Vec::new();
    for i in 0..20_i64 {
        for machine in ["laser-1", "cnc 2,big=yes"] {
            points.push(
                Point::new("ts_power", base + i * 1000 + 7)
                    .tag("site", "lab")
                    .tag("machine", machine)
                    .tag("kind", "laser")
                    .field("watts", 100.25 + i as f64 * 0.5)
                    .field("state", i % 3),
            );
        }
        points.push(
            Point::new("ts_energy", base + i * 60_000)
                .tag("site", "lab")
                .field("wh", 1_000_000 + i * 17),
        );
        points.push(
            Point::new("ts_temp", base + i * 1500 + 1)
                .tag("room", "hall a")
                .field("celsius", -3.75 + i as f64),
        );
    }
    let summary = handle.send(points.clone());
    assert_eq!((summary.accepted, summary.refused), (points.len(), 0));
    assert_arrives(&vm, r#"{__name__=~"ts_.*"}"#, &points);
    let stats = stats_until(&handle, "all points written", |s| {
        s.points_written == points.len() as u64
    });
    assert_eq!(stats.points_accepted, points.len() as u64);
    assert!(stats.store_up);
    assert_eq!(
        (
            stats.points_dropped,
            stats.backlog_points,
            stats.batches_failed
        ),
        (0, 0, 0)
    );
    let last = finish(handle, task).await;
    assert_eq!(last.points_written, points.len() as u64);
}

#[tokio::test]
async fn batches_of_at_most_batch_max_lines() {
    let vm = VictoriaMetrics::start().expect("victoria-metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, task) = TimeSeries::spawn(config(&vm.base_url(), dir.path())).expect("spawn");
    let base = base_ms();
    let points: Vec<Point> = (0..12_000_i64)
        .map(|i| {
            Point::new("ts_batch", base + (i / 4) * 1000)
                .tag("machine", format!("m{}", i % 4))
                .field("v", i)
        })
        .collect();
    handle.send(points.clone());
    let stats = stats_until(&handle, "12,000 points written", |s| {
        s.points_written == 12_000
    });
    assert!(
        stats.batches_written >= 3,
        "12,000 lines in batches of at most 5,000 need at least 3 requests, got {}",
        stats.batches_written
    );
    assert_arrives(&vm, r#"{__name__="ts_batch_v"}"#, &points);
    finish(handle, task).await;
}

#[tokio::test]
async fn outage_goes_to_the_backlog_and_everything_arrives_once() {
    let mut vm = VictoriaMetrics::start().expect("victoria-metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&vm.base_url(), dir.path());
    cfg.batch_max_lines = 500;
    let (handle, task) = TimeSeries::spawn(cfg).expect("spawn");
    let base = base_ms();
    let all = series("ts_outage", base, 6_000);
    let (before, during) = all.split_at(1_000);

    handle.send(before.to_vec());
    stats_until(&handle, "points before the outage written", |s| {
        s.points_written == 1_000
    });
    vm.stop().expect("stop victoria-metrics");

    // send() never waits for the store: 50 sends from another thread finish at once.
    let (done_tx, done_rx) = mpsc::channel();
    let sender = handle.clone();
    let batches: Vec<Vec<Point>> = during.chunks(100).map(<[Point]>::to_vec).collect();
    let thread = std::thread::spawn(move || {
        for batch in batches {
            assert_eq!(sender.send(batch).accepted, 100);
        }
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(2))
        .expect("send() returned while the store is down, without blocking");
    thread.join().expect("sender thread");

    let stats = stats_until(&handle, "the outage's points in the backlog", |s| {
        s.backlog_points == 5_000 && s.memory_points == 0 && s.queued_points == 0
    });
    assert!(!stats.store_up);
    assert!(stats.batches_failed >= 1);
    assert!(stats.backlog_bytes > 0 && stats.backlog_segments >= 10);
    assert_eq!(stats.points_written, 1_000);

    vm.start_again().expect("start victoria-metrics again");
    let stats = stats_until(&handle, "the backlog drained", |s| {
        s.points_written == 6_000 && s.backlog_points == 0
    });
    assert!(stats.store_up);
    assert_eq!((stats.backlog_bytes, stats.points_dropped), (0, 0));
    // Exactly once: same timestamps, no duplicates.
    assert_arrives(&vm, r#"{__name__="ts_outage_v"}"#, &all);
    finish(handle, task).await;
    assert_eq!(segment_files(dir.path()), 0);
}

#[tokio::test]
async fn backlog_survives_a_restart_of_the_sink() {
    let mut vm = VictoriaMetrics::start().expect("victoria-metrics");
    vm.stop().expect("stop victoria-metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = base_ms();
    let old = series("ts_restart", base, 1_200);
    let new = series("ts_restart", base + 1_200_000, 300);

    let (handle, task) = TimeSeries::spawn(config(&vm.base_url(), dir.path())).expect("spawn");
    assert_eq!(handle.send(old.clone()).accepted, 1_200);
    let last = finish(handle, task).await;
    assert_eq!(
        (
            last.backlog_points,
            last.points_written,
            last.points_dropped
        ),
        (1_200, 0, 0),
        "shutdown with the store down puts everything in the backlog"
    );
    assert!(segment_files(dir.path()) >= 1);

    vm.start_again().expect("start victoria-metrics again");
    let (handle, task) = TimeSeries::spawn(config(&vm.base_url(), dir.path())).expect("spawn");
    assert_eq!(handle.stats().backlog_points, 1_200, "backlog recovered");
    handle.send(new.clone());
    stats_until(&handle, "recovered and new points written", |s| {
        s.points_written == 1_500 && s.backlog_points == 0
    });
    let all: Vec<Point> = old.into_iter().chain(new).collect();
    assert_arrives(&vm, r#"{__name__="ts_restart_v"}"#, &all);
    finish(handle, task).await;
    assert_eq!(segment_files(dir.path()), 0);
}

#[tokio::test]
async fn refused_points_are_counted_and_the_good_ones_arrive() {
    let vm = VictoriaMetrics::start().expect("victoria-metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, task) = TimeSeries::spawn(config(&vm.base_url(), dir.path())).expect("spawn");
    let base = base_ms();
    let good = series("ts_good", base, 10);
    let bad = vec![
        Point::new("ts_bad", base)
            .tag("site", "lab")
            .field("v", f64::NAN),
        Point::new("ts_bad", base)
            .tag("site", "lab\nts_bad,site=x v=1")
            .field("v", 1.0),
        Point::new("ts_bad", base)
            .tag("site", "lab\\")
            .field("v", 1.0),
        Point::new("ts_bad", base).tag("site", "lab"),
        Point::new("ts_bad", base)
            .tag("site", "lab")
            .field("v", f64::INFINITY),
    ];
    let mut mixed = good.clone();
    for (i, p) in bad.into_iter().enumerate() {
        mixed.insert(i * 2, p);
    }
    let summary = handle.send(mixed);
    assert_eq!((summary.accepted, summary.refused), (10, 5));
    let stats = handle.stats();
    assert_eq!(stats.refused(RefusalReason::NonFiniteFloat), 2);
    assert_eq!(stats.refused(RefusalReason::ControlCharInTagValue), 1);
    assert_eq!(stats.refused(RefusalReason::TrailingBackslash), 1);
    assert_eq!(stats.refused(RefusalReason::NoFields), 1);
    assert_eq!(stats.points_refused, 5);
    assert_arrives(&vm, r#"{__name__=~"ts_.*"}"#, &good);
    assert_eq!(handle.stats().points_refused, 5);
    finish(handle, task).await;
}

#[tokio::test]
async fn full_backlog_drops_the_oldest_segments() {
    let mut vm = VictoriaMetrics::start().expect("victoria-metrics");
    vm.stop().expect("stop victoria-metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&vm.base_url(), dir.path());
    cfg.batch_max_lines = 10;
    cfg.backlog_max_bytes = 2_000;
    let (handle, task) = TimeSeries::spawn(cfg).expect("spawn");
    let base = base_ms();
    let points = series("ts_full", base, 300);
    let mut chunks = points.chunks(10);

    // First establish the outage, so that every batch goes through the backlog.
    handle.send(chunks.next().expect("a chunk").to_vec());
    stats_until(&handle, "the store seen down", |s| {
        !s.store_up && s.backlog_points == 10
    });
    for chunk in chunks {
        handle.send(chunk.to_vec());
    }
    let stats = stats_until(&handle, "every point in the backlog or dropped", |s| {
        s.queued_points == 0
            && s.memory_points == 0
            && s.backlog_points + s.dropped(DropReason::BacklogFull) == 300
    });
    let dropped = stats.dropped(DropReason::BacklogFull);
    assert!(dropped > 0, "a 2,000-byte backlog cannot hold 300 points");
    assert!(stats.backlog_bytes <= 2_000);
    assert_eq!(dropped % 10, 0, "whole segments are dropped");

    vm.start_again().expect("start victoria-metrics again");
    let kept = 300 - dropped;
    let stats = stats_until(&handle, "the backlog drained", |s| {
        s.backlog_points == 0 && s.points_written == kept
    });
    assert_eq!(stats.points_dropped, dropped);
    // The newest points arrive, the oldest are gone.
    assert_arrives(
        &vm,
        r#"{__name__="ts_full_v"}"#,
        &points[dropped as usize..],
    );
    finish(handle, task).await;
}

#[tokio::test]
async fn close_flushes_and_ends_the_task_while_clones_live() {
    let vm = VictoriaMetrics::start().expect("victoria-metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&vm.base_url(), dir.path());
    cfg.flush_interval = Duration::from_secs(3600);
    let (handle, task) = TimeSeries::spawn(cfg).expect("spawn");
    let clone = handle.clone();
    let points = series("ts_close", base_ms(), 50);
    handle.send(points.clone());
    handle.close();
    let last = tokio::time::timeout(WAIT, task)
        .await
        .expect("close ends the task")
        .expect("no panic");
    assert_eq!(
        last.points_written, 50,
        "the final flush wrote the open batch"
    );
    assert_arrives(&vm, r#"{__name__="ts_close_v"}"#, &points);
    let summary = clone.send(series("ts_close", base_ms(), 1));
    assert_eq!(summary.dropped, 1);
    assert_eq!(clone.stats().dropped(DropReason::Closed), 1);
}

#[test]
fn disabled_handle_accepts_nothing_and_counts() {
    let handle = TimeSeriesHandle::disabled();
    assert!(!handle.is_enabled());
    let mut points = series("ts_off", 0, 3);
    points.push(Point::new("ts_off", 0));
    let summary = handle.send(points);
    assert_eq!(
        (summary.accepted, summary.refused, summary.dropped),
        (0, 1, 3)
    );
    let stats = handle.stats();
    assert!(!stats.enabled);
    assert_eq!(stats.dropped(DropReason::Disabled), 3);
    assert_eq!(stats.refused(RefusalReason::NoFields), 1);
}

#[tokio::test]
async fn a_path_prefix_is_kept_so_a_tenant_path_is_reached() {
    // The vminsert path of a VictoriaMetrics cluster tenant (`/insert/<account>/influx`), served
    // here by a single VictoriaMetrics under the same prefix: it answers 400 to any path without
    // it, so the points arrive only if the writer keeps the prefix.
    let vm = VictoriaMetrics::builder()
        .path_prefix("/insert/42/influx")
        .start()
        .expect("victoria-metrics under /insert/42/influx");
    assert!(vm.base_url().ends_with("/insert/42/influx"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, task) = TimeSeries::spawn(config(&vm.base_url(), dir.path())).expect("spawn");
    let points = series("ts_tenant", base_ms(), 50);
    assert_eq!(handle.send(points.clone()).accepted, points.len());
    assert_arrives(&vm, r#"{__name__="ts_tenant_v"}"#, &points);
    let last = finish(handle, task).await;
    assert_eq!((last.points_written, last.batches_failed), (50, 0));
}

#[test]
fn a_url_with_a_query_is_refused_and_names_the_keys_to_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config("http://127.0.0.1:8086/?org=x", dir.path());
    let error = cfg.validate().expect_err("query refused").to_string();
    assert!(
        error.contains("`url`") && error.contains("`org`"),
        "{error}"
    );
}

#[tokio::test]
async fn a_send_that_does_not_fit_the_queue_is_dropped_whole_and_counted() {
    let mut vm = VictoriaMetrics::start().expect("victoria-metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&vm.base_url(), dir.path());
    cfg.queue_max_points = 100;
    let (handle, task) = TimeSeries::spawn(cfg).expect("spawn");
    let summary = handle.send(series("ts_queue", base_ms(), 101));
    assert_eq!((summary.accepted, summary.dropped), (0, 101));
    assert_eq!(handle.stats().dropped(DropReason::QueueFull), 101);
    let fits = series("ts_queue", base_ms(), 100);
    assert_eq!(handle.send(fits.clone()).accepted, 100);
    assert_arrives(&vm, r#"{__name__="ts_queue_v"}"#, &fits);
    let last = finish(handle, task).await;
    assert_eq!((last.points_written, last.queued_points), (100, 0));
    vm.stop().expect("stop");
}
