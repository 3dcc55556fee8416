//! A child process running a service, shared by the launchers.

use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use crate::util::{format_log_tails, send_signal, wait_for_exit, Signal};
use crate::HarnessError;

/// How many log lines go into error messages.
pub(crate) const LOG_TAIL_LINES: usize = 40;

/// Owns the child process of a service; kills it on drop.
#[derive(Debug)]
pub(crate) struct ServiceProcess {
    service: &'static str,
    child: Mutex<Option<Child>>,
    logs: Vec<PathBuf>,
}

impl ServiceProcess {
    pub(crate) fn new(service: &'static str, logs: Vec<PathBuf>) -> Self {
        ServiceProcess {
            service,
            child: Mutex::new(None),
            logs,
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Installs a freshly spawned child (the previous one must have been stopped or killed).
    pub(crate) fn set(&mut self, child: Child) {
        *self.slot() = Some(child);
    }

    /// Pid of the child if it is still running.
    pub(crate) fn pid(&self) -> Option<u32> {
        let mut slot = self.slot();
        let child = slot.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    pub(crate) fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// An error naming the service, with the tails of its logs.
    pub(crate) fn failure(&self, reason: impl Into<String>) -> HarnessError {
        let logs: Vec<&std::path::Path> = self.logs.iter().map(PathBuf::as_path).collect();
        HarnessError::ServiceFailed {
            service: self.service,
            reason: reason.into(),
            log_tail: format_log_tails(&logs, LOG_TAIL_LINES),
        }
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit (status 0, or killed by that SIGTERM).
    ///
    /// Ok if no process is installed (never started, already stopped or killed). An error if
    /// the process had already died on its own, exited non-zero, or had to be SIGKILLed.
    pub(crate) fn stop(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let Some(mut child) = self.slot().take() else {
            return Ok(());
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Err(self.failure(format!("had already exited ({status}) before stop()")));
        }
        send_signal(child.id(), Signal::Term)?;
        // In case a test froze it with SIGSTOP: let it handle the SIGTERM.
        let _ = send_signal(child.id(), Signal::Cont);
        match wait_for_exit(&mut child, timeout) {
            Ok(status) if status.success() => Ok(()),
            // Killed by the SIGTERM itself: a service stopped so early that it had not installed
            // its handler yet (VictoriaMetrics right after start). Stopped, as asked.
            Ok(status)
                if std::os::unix::process::ExitStatusExt::signal(&status)
                    == Some(libc::SIGTERM) =>
            {
                Ok(())
            }
            Ok(status) => Err(self.failure(format!("exited with {status} after SIGTERM"))),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(self.failure(format!("{e} after SIGTERM; sent SIGKILL")))
            }
        }
    }

    /// SIGKILL and reap. Ok if no process is installed or it already exited.
    pub(crate) fn kill(&mut self) -> Result<(), HarnessError> {
        let Some(mut child) = self.slot().take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        child.kill().map_err(HarnessError::io(format!(
            "killing {} (pid {})",
            self.service,
            child.id()
        )))?;
        child
            .wait()
            .map_err(HarnessError::io(format!("reaping {}", self.service)))?;
        Ok(())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.slot().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Outcome of one attempt to launch a service on its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Launch {
    /// Up and answering.
    Ready,
    /// The port was taken; try again.
    PortInUse,
}

/// Calls `launch` until it reports [`Launch::Ready`] (`Ok(true)`) or `timeout` passes
/// (`Ok(false)`), backing off while another socket still holds the port (a retry back-off, not a
/// synchronisation sleep).
pub(crate) fn relaunch_until_ready(
    timeout: Duration,
    mut launch: impl FnMut() -> Result<Launch, HarnessError>,
) -> Result<bool, HarnessError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if launch()? == Launch::Ready {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
