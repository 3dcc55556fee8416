//! A private single-node VictoriaMetrics per test.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tempfile::TempDir;

use crate::http::{self, url_encode, HttpResponse};
use crate::mosquitto::LOCALHOST;
use crate::process::{relaunch_until_ready, Launch, ServiceProcess};
use crate::util::{keep_temp_dirs, poll_until, try_free_port};
use crate::{HarnessError, Tool};

/// How many fresh ports [`VictoriaMetricsBuilder::start`] tries when it loses a port race.
const PORT_ATTEMPTS: usize = 8;
/// How long [`VictoriaMetrics::stop`] waits for exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One series from `/api/v1/export`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ExportedSeries {
    /// `__name__` and the labels.
    pub metric: BTreeMap<String, String>,
    /// Sample values, in timestamp order.
    pub values: Vec<f64>,
    /// Sample timestamps in **milliseconds** since the Unix epoch.
    pub timestamps: Vec<i64>,
}

impl ExportedSeries {
    /// The metric name (`__name__`), or `""`.
    pub fn name(&self) -> &str {
        self.label("__name__").unwrap_or_default()
    }

    /// A label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.metric.get(name).map(String::as_str)
    }

    /// `(timestamp_ms, value)` pairs.
    pub fn samples(&self) -> Vec<(i64, f64)> {
        self.timestamps
            .iter()
            .copied()
            .zip(self.values.iter().copied())
            .collect()
    }
}

/// Options for a [`VictoriaMetrics`]; obtain with [`VictoriaMetrics::builder`].
#[derive(Clone, Debug)]
pub struct VictoriaMetricsBuilder {
    binary: Option<PathBuf>,
    retention_period: String,
    extra_args: Vec<String>,
    startup_timeout: Duration,
    path_prefix: String,
}

impl Default for VictoriaMetricsBuilder {
    fn default() -> Self {
        VictoriaMetricsBuilder {
            binary: None,
            retention_period: "100y".into(),
            extra_args: Vec::new(),
            startup_timeout: Duration::from_secs(20),
            path_prefix: String::new(),
        }
    }
}

impl VictoriaMetricsBuilder {
    /// Uses this executable instead of looking up [`Tool::VictoriaMetrics`]
    /// (`FABMETER_VICTORIA_METRICS_BIN`, `PATH`, `/usr/bin`).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// `-retentionPeriod` (default `100y`, so old test timestamps are kept).
    pub fn retention_period(mut self, period: impl Into<String>) -> Self {
        self.retention_period = period.into();
        self
    }

    /// Appends a raw command-line flag, e.g. `"-dedup.minScrapeInterval=1ms"`.
    pub fn extra_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Serves every path under `prefix` (`-http.pathPrefix`), e.g. `/insert/42/influx` as a
    /// VictoriaMetrics cluster's vminsert path for tenant 42; [`VictoriaMetrics::base_url`] and
    /// the harness's own requests include it.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = prefix.into();
        self
    }

    /// How long to wait for `/health` to answer `OK` (default 20 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts VictoriaMetrics on a free port with storage in a new temp dir and waits until
    /// `GET /health` answers `OK`; retries on a new port if it loses a race for the port.
    pub fn start(self) -> Result<VictoriaMetrics, HarnessError> {
        let binary = match &self.binary {
            Some(path) => Tool::VictoriaMetrics.locate_at(path)?,
            None => Tool::VictoriaMetrics.locate()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("fabmeter-victoria-metrics-")
            .tempdir()
            .map_err(HarnessError::io("creating the victoria-metrics temp dir"))?;
        let dir_path = dir.path().to_path_buf();
        let log_path = dir_path.join("victoria-metrics.log");
        let mut vm = VictoriaMetrics {
            process: ServiceProcess::new("victoria-metrics", vec![log_path.clone()]),
            binary,
            storage_dir: dir_path.join("data"),
            log_path,
            port: 0,
            options: self,
            dir_path,
            dir: Some(dir),
        };
        for _ in 0..PORT_ATTEMPTS {
            vm.port = try_free_port()?;
            if vm.launch_once()? == Launch::Ready {
                return Ok(vm);
            }
        }
        Err(vm.process.failure(format!(
            "failed to bind a free port in {PORT_ATTEMPTS} attempts"
        )))
    }
}

/// A VictoriaMetrics owned by one test: own port on 127.0.0.1, own `-storageDataPath`.
///
/// Flags: `-storageDataPath DIR/data -httpListenAddr 127.0.0.1:PORT -retentionPeriod 100y
/// -search.disableCache -search.latencyOffset=0s` plus [`VictoriaMetricsBuilder::extra_arg`]s.
/// Nothing else is needed for back-dated samples (days in the past) to be accepted and
/// exported: retention covers them, `/internal/force_flush` makes freshly written samples
/// visible to `/api/v1/export` at once, and `-dedup.minScrapeInterval` is off (0) so every
/// sample is kept. `-search.disableCache` keeps `/api/v1/query_range` answers from being
/// served from the rollup cache after back-filling (`-search.cacheTimestampOffset` only
/// matters with the cache on), and `-search.latencyOffset=0s` lets queries see samples
/// up to "now".
///
/// Dropping it kills the process and deletes the temp dir (`FABMETER_E2E_KEEP_TMP=1` keeps it).
#[derive(Debug)]
pub struct VictoriaMetrics {
    process: ServiceProcess,
    options: VictoriaMetricsBuilder,
    binary: PathBuf,
    storage_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    dir_path: PathBuf,
    dir: Option<TempDir>,
}

impl VictoriaMetrics {
    /// Options for a new instance.
    pub fn builder() -> VictoriaMetricsBuilder {
        VictoriaMetricsBuilder::default()
    }

    /// Starts an instance with default options.
    pub fn start() -> Result<VictoriaMetrics, HarnessError> {
        Self::builder().start()
    }

    /// HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        LOCALHOST
    }

    /// `http://127.0.0.1:PORT`, followed by the [`VictoriaMetricsBuilder::path_prefix`] if any.
    pub fn base_url(&self) -> String {
        format!(
            "http://{LOCALHOST}:{}{}",
            self.port, self.options.path_prefix
        )
    }

    /// The temp dir (log file and `data/`).
    pub fn data_dir(&self) -> &Path {
        &self.dir_path
    }

    /// `-storageDataPath`.
    pub fn storage_dir(&self) -> &Path {
        &self.storage_dir
    }

    /// stdout + stderr of the process, all runs appended.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// True while the process is alive.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// SIGTERM and wait for a clean exit (VictoriaMetrics flushes to disk). No-op if not running.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        self.process.stop(STOP_TIMEOUT)
    }

    /// SIGKILL and reap. Samples not yet flushed (see [`VictoriaMetrics::force_flush`]) are lost.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        self.process.kill()
    }

    /// Starts the stopped/killed instance again on the same port and storage, retrying while
    /// the port is still taken, up to the startup timeout.
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        if self.process.is_running() {
            return Err(HarnessError::Usage(
                "victoria-metrics is still running: stop() or kill() it first".into(),
            ));
        }
        self.process.kill()?;
        if relaunch_until_ready(self.options.startup_timeout, || self.launch_once())? {
            return Ok(());
        }
        Err(self
            .process
            .failure(format!("port {} still in use", self.port)))
    }

    /// [`VictoriaMetrics::stop`] then [`VictoriaMetrics::start_again`].
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        self.start_again()
    }

    fn launch_once(&mut self) -> Result<Launch, HarnessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(HarnessError::io("opening victoria-metrics.log"))?;
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stdout = log
            .try_clone()
            .map_err(HarnessError::io("duplicating the log handle"))?;
        let mut child = Command::new(&self.binary)
            .arg(format!("-storageDataPath={}", self.storage_dir.display()))
            .arg(format!("-httpListenAddr={LOCALHOST}:{}", self.port))
            .arg(format!(
                "-retentionPeriod={}",
                self.options.retention_period
            ))
            .arg("-search.disableCache")
            .arg("-search.latencyOffset=0s")
            .args(
                (!self.options.path_prefix.is_empty())
                    .then(|| format!("-http.pathPrefix={}", self.options.path_prefix)),
            )
            .args(&self.options.extra_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .map_err(HarnessError::io(format!(
                "spawning {}",
                self.binary.display()
            )))?;
        let port = self.port;
        let health = format!("{}/health", self.options.path_prefix);
        let outcome = poll_until(
            self.options.startup_timeout,
            &format!("victoria-metrics GET {health} to answer OK on port {port}"),
            || match child.try_wait() {
                Ok(None) => {
                    let healthy = http::get(LOCALHOST, port, &health)
                        .is_ok_and(|r| r.status == 200 && r.text().trim() == "OK");
                    healthy.then_some(Ok(None))
                }
                Ok(Some(status)) => Some(Ok(Some(status))),
                Err(e) => Some(Err(e)),
            },
        );
        match outcome {
            Ok(Ok(None)) => {
                self.process.set(child);
                Ok(Launch::Ready)
            }
            Ok(Ok(Some(status))) => {
                let log = std::fs::read(&self.log_path).unwrap_or_default();
                let start = usize::try_from(log_offset)
                    .unwrap_or(usize::MAX)
                    .min(log.len());
                if String::from_utf8_lossy(&log[start..]).contains("address already in use") {
                    Ok(Launch::PortInUse)
                } else {
                    Err(self
                        .process
                        .failure(format!("exited during startup ({status})")))
                }
            }
            Ok(Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(HarnessError::Io {
                    what: "waiting for victoria-metrics".into(),
                    source: e,
                })
            }
            Err(timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(self.process.failure(timeout.to_string()))
            }
        }
    }

    /// `GET path` (path includes the percent-encoded query string).
    pub fn get(&self, path: &str) -> Result<HttpResponse, HarnessError> {
        http::get(LOCALHOST, self.port, &self.prefixed(path))
    }

    /// `POST path`.
    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<HttpResponse, HarnessError> {
        http::post(
            LOCALHOST,
            self.port,
            &self.prefixed(path),
            content_type,
            body,
        )
    }

    fn prefixed(&self, path: &str) -> String {
        format!("{}{path}", self.options.path_prefix)
    }

    fn expect_success(
        &self,
        method: &str,
        path: &str,
        response: HttpResponse,
    ) -> Result<HttpResponse, HarnessError> {
        if response.is_success() {
            Ok(response)
        } else {
            let mut body = response.text();
            body.truncate(2000);
            Err(HarnessError::Http {
                method: method.into(),
                url: format!("{}{path}", self.base_url()),
                status: response.status,
                body,
            })
        }
    }

    /// `GET /internal/force_flush`: makes every accepted sample visible to queries and export.
    pub fn try_force_flush(&self) -> Result<(), HarnessError> {
        let path = "/internal/force_flush";
        self.expect_success("GET", path, self.get(path)?).map(drop)
    }

    /// [`VictoriaMetrics::try_force_flush`], panicking on error.
    #[track_caller]
    pub fn force_flush(&self) {
        if let Err(e) = self.try_force_flush() {
            panic!("victoria-metrics force_flush failed: {e}");
        }
    }

    /// POSTs InfluxDB line protocol to `/api/v2/write?org=fabmeter&bucket=fabmeter`
    /// (the InfluxDB 2 write path; timestamps in **nanoseconds**, the v2 default precision).
    ///
    /// Found empirically with VictoriaMetrics 1.79 (Debian): each field becomes a series named
    /// `{measurement}_{field}` (also for a field called `value`); tags become labels; no
    /// `db`/`org`/`bucket` label is added (unlike `/write?db=NAME`, which adds `db="NAME"`);
    /// timestamps are truncated to milliseconds. The answer is `204` even when a line is
    /// malformed (the line is dropped and only logged), so check with [`VictoriaMetrics::export`].
    pub fn try_write_line_protocol(&self, body: &str) -> Result<(), HarnessError> {
        let path = "/api/v2/write?org=fabmeter&bucket=fabmeter";
        let response = self.post(path, "text/plain; charset=utf-8", body.as_bytes())?;
        self.expect_success("POST", path, response).map(drop)
    }

    /// [`VictoriaMetrics::try_write_line_protocol`], panicking on error.
    #[track_caller]
    pub fn write_line_protocol(&self, body: &str) {
        if let Err(e) = self.try_write_line_protocol(body) {
            panic!("victoria-metrics line protocol write failed: {e}");
        }
    }

    /// Reads `/api/v1/export?match[]=SELECTOR` (all time). Lines of the same series are
    /// merged, samples sorted by timestamp, series sorted by labels.
    ///
    /// Call [`VictoriaMetrics::force_flush`] first to see samples written just before.
    pub fn try_export(&self, match_selector: &str) -> Result<Vec<ExportedSeries>, HarnessError> {
        let path = format!("/api/v1/export?match[]={}", url_encode(match_selector));
        let response = self.get(&path)?;
        let response = self.expect_success("GET", &path, response)?;
        let text = response.text();
        let mut merged: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let series: ExportedSeries =
                serde_json::from_str(line).map_err(|e| HarnessError::BadResponse {
                    url: format!("{}{path}", self.base_url()),
                    reason: format!("{e} in export line {line:?}"),
                })?;
            let samples = series.samples();
            merged.entry(series.metric).or_default().extend(samples);
        }
        Ok(merged
            .into_iter()
            .map(|(metric, mut samples)| {
                samples.sort_by_key(|&(ts, _)| ts);
                ExportedSeries {
                    metric,
                    timestamps: samples.iter().map(|&(ts, _)| ts).collect(),
                    values: samples.iter().map(|&(_, v)| v).collect(),
                }
            })
            .collect())
    }

    /// [`VictoriaMetrics::try_export`], panicking on error.
    #[track_caller]
    pub fn export(&self, match_selector: &str) -> Vec<ExportedSeries> {
        match self.try_export(match_selector) {
            Ok(series) => series,
            Err(e) => panic!("victoria-metrics export of {match_selector} failed: {e}"),
        }
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.process.kill();
        if keep_temp_dirs() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "fabmeter-e2e: keeping victoria-metrics dir {}",
                    dir.keep().display()
                );
            }
        }
    }
}
