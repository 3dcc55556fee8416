//! Generic helpers: free ports, polling with a deadline, processes and signals.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::HarnessError;

/// Longest pause between two polls of [`poll_until`] and friends.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago, panicking if none can be had.
///
/// See [`try_free_port`]. The port is released before returning, so another process may
/// grab it: launchers retry on a new port when the service fails to bind.
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(e) => panic!("cannot find a free TCP port: {e}"),
    }
}

/// Binds `127.0.0.1:0`, reads the port the kernel chose and releases it.
///
/// Ports already handed out by this process are never returned twice, so tests running
/// in parallel threads do not race each other for the same port.
pub fn try_free_port() -> Result<u16, HarnessError> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..64 {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).map_err(HarnessError::io("binding 127.0.0.1:0"))?;
        let port = listener
            .local_addr()
            .map_err(HarnessError::io("reading the bound address"))?
            .port();
        drop(listener);
        let mut set = handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if set.insert(port) {
            return Ok(port);
        }
    }
    Err(HarnessError::Usage(
        "the kernel kept returning already used ports".into(),
    ))
}

/// True if a TCP connection to `127.0.0.1:port` succeeds (within 250 ms).
pub fn port_accepts_connections(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok()
}

/// Polls `condition` with a short exponential backoff (1 ms doubling up to 50 ms) until it
/// returns true; panics with a message naming `what` if `timeout` expires first.
///
/// This is the way to wait for anything in a test: never a fixed sleep.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    if let Err(e) = try_wait_until(timeout, what, condition) {
        panic!("{e}");
    }
}

/// Like [`wait_until`] but returns [`HarnessError::Timeout`] instead of panicking.
pub fn try_wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<(), HarnessError> {
    poll_until(timeout, what, || condition().then_some(()))
}

/// Polls `probe` until it returns `Some(value)` and returns the value, or
/// [`HarnessError::Timeout`] naming `what` once `timeout` has expired.
///
/// `probe` is always called at least once, and once more at the deadline.
pub fn poll_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, HarnessError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                after: timeout,
            });
        }
        thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(MAX_POLL_INTERVAL);
    }
}

/// Waits until `child` has exited (reaping it) and returns its exit status, or
/// [`HarnessError::Timeout`] if it is still running after `timeout`.
///
/// This is the helper to assert that a process exited, e.g. after sending it a signal.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Result<ExitStatus, HarnessError> {
    let pid = child.id();
    let outcome = poll_until(timeout, &format!("process {pid} to exit"), || {
        match child.try_wait() {
            Ok(Some(status)) => Some(Ok(status)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    })?;
    outcome.map_err(HarnessError::io(format!("waiting for process {pid}")))
}

/// True if `child` has exited (it is reaped if so). Errors from `waitpid` count as exited.
pub fn has_exited(child: &mut Child) -> bool {
    !matches!(child.try_wait(), Ok(None))
}

/// A POSIX signal the harness can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: polite shutdown (mosquitto saves its persistence DB).
    Term,
    /// SIGKILL: immediate death, no cleanup.
    Kill,
    /// SIGINT.
    Int,
    /// SIGHUP (mosquitto reloads its config).
    Hup,
    /// SIGSTOP: freeze the process (a hung broker).
    Stop,
    /// SIGCONT: resume a stopped process.
    Cont,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: Signal) -> Result<(), HarnessError> {
    let raw_pid = libc::pid_t::try_from(pid)
        .map_err(|_| HarnessError::Usage(format!("pid {pid} out of range")))?;
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
    let rc = unsafe { libc::kill(raw_pid, signal.raw()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(HarnessError::Io {
            what: format!("sending {signal:?} to pid {pid}"),
            source: std::io::Error::last_os_error(),
        })
    }
}

/// True when the harness runs as root (mosquitto then needs `user root` so that it does not
/// drop privileges to a user that cannot read the harness's temp dir).
pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The last `lines` lines of a text file (lossy UTF-8), or a note saying why it could not be read.
pub fn tail_of_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Formats the tails of several log files for an error message.
pub(crate) fn format_log_tails(files: &[&Path], lines: usize) -> String {
    files
        .iter()
        .map(|path| {
            format!(
                "--- last {lines} lines of {} ---\n{}",
                path.display(),
                tail_of_file(path, lines)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `FABMETER_E2E_KEEP_TMP` asks to keep service temp dirs after the test (debugging).
pub(crate) fn keep_temp_dirs() -> bool {
    std::env::var_os("FABMETER_E2E_KEEP_TMP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A child process that is killed (and reaped) when dropped while still running, so a failing
/// test never leaves it behind. The process is the public field.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
