//! The harness error type.

use std::time::Duration;

/// Everything that can go wrong while starting, driving or stopping a real service.
///
/// Messages are written for a human reading a failed test: they name the binary, the
/// apt package, the service's log tail or the command's stderr as appropriate.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A required executable could not be found.
    #[error("{binary} not found ({looked}): install it with `apt-get install {package}`{hint}")]
    MissingBinary {
        /// Executable name, e.g. `mosquitto`.
        binary: &'static str,
        /// Debian package that ships it, e.g. `mosquitto`.
        package: &'static str,
        /// Where the harness looked.
        looked: String,
        /// Extra advice (for example which environment variable to fix); may be empty.
        hint: String,
    },
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A managed service (mosquitto, victoria-metrics) failed to start, stop or run.
    #[error("{service}: {reason}\n{log_tail}")]
    ServiceFailed {
        /// Service name.
        service: &'static str,
        /// What went wrong.
        reason: String,
        /// Tail of the service's log file(s), already formatted with headers.
        log_tail: String,
    },
    /// A polled condition did not become true in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// An external command (mosquitto_pub, mosquitto_passwd, openssl, ...) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line (passwords are not redacted: test credentials only).
        command: String,
        /// Exit status or other reason.
        status: String,
        /// Captured standard error (trimmed).
        stderr: String,
    },
    /// An HTTP request got a non-success status.
    #[error("HTTP {method} {url} answered {status}: {body}")]
    Http {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// Response status code.
        status: u16,
        /// Response body (lossy UTF-8, truncated).
        body: String,
    },
    /// A response could not be parsed.
    #[error("unexpected response from {url}: {reason}")]
    BadResponse {
        /// Request URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The requested configuration is invalid or the call is not allowed in the current state.
    #[error("invalid harness usage: {0}")]
    Usage(String),
}

impl HarnessError {
    /// Builds a closure mapping an [`std::io::Error`] to [`HarnessError::Io`] with context.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}
