//! The store at the other end: an InfluxDB 2 write API reached through the influxdb2 crate.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use influxdb2::api::write::TimestampPrecision;
use influxdb2::RequestError;

/// What became of one write request.
#[derive(Debug, PartialEq)]
pub(crate) enum WriteOutcome {
    /// 2xx: the store has the lines.
    Written,
    /// Network error, timeout, 5xx, 429, or an authorization/configuration answer (401, 403,
    /// 404...) that an operator can fix: keep the data and retry later.
    Retry(String),
    /// 400, 413 or 422: the store refuses this data; retrying it unchanged is pointless.
    Rejected { status: u16, message: String },
}

/// A write-only client for one org and bucket.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    client: influxdb2::Client,
    org: String,
    bucket: String,
    timeout: Duration,
}

impl Store {
    /// Builds the client; the URL must have passed [`check_url`] (influxdb2 0.5 panics on an
    /// unparsable URL).
    pub fn new(url: &str, org: &str, bucket: &str, token: &str, timeout: Duration) -> Store {
        Store {
            client: influxdb2::Client::new(url, org, token),
            org: org.to_owned(),
            bucket: bucket.to_owned(),
            timeout,
        }
    }

    /// POSTs `body` (line protocol, millisecond timestamps) to `/api/v2/write`, giving up after
    /// the request timeout. The future owns everything it needs.
    pub fn write(&self, body: String) -> impl Future<Output = WriteOutcome> + Send + 'static {
        let store = self.clone();
        async move {
            let request = store.client.write_line_protocol_with_precision(
                &store.org,
                &store.bucket,
                body,
                TimestampPrecision::Milliseconds,
            );
            match tokio::time::timeout(store.timeout, request).await {
                Ok(Ok(())) => WriteOutcome::Written,
                Ok(Err(e)) => classify(e),
                Err(_) => WriteOutcome::Retry(format!(
                    "no answer within the request timeout of {:?}",
                    store.timeout
                )),
            }
        }
    }
}

fn classify(error: RequestError) -> WriteOutcome {
    match error {
        RequestError::Http { status, text } => {
            let code = status.as_u16();
            let mut message = text;
            truncate_at_char(&mut message, 500);
            match code {
                // influxdb2 0.5 calls every answer but 204 an error, 200 included.
                200..=299 => WriteOutcome::Written,
                400 | 413 | 422 => WriteOutcome::Rejected {
                    status: code,
                    message,
                },
                _ => WriteOutcome::Retry(format!("HTTP {code}: {message}")),
            }
        }
        other => WriteOutcome::Retry(error_chain(&other)),
    }
}

/// An error and its sources on one line (reqwest hides "connection refused" in the chain).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// Checks that influxdb2 0.5 will accept `url` without panicking, and that nothing in it
/// would be silently ignored: the crate keeps only scheme, host and port (it replaces any path
/// with `/api/v2/write`), so a path, query or fragment is refused here.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    // Parse with the URL type influxdb2 itself uses (its `base` field), without depending on
    // the `url` crate directly. The probe URL is a constant that always parses.
    let probe = influxdb2::Client::new("http://127.0.0.1:8086", "", "");
    let parsed = parse_as(&probe.base, url).map_err(|e| format!("cannot parse {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url:?} must start with http:// or https://, e.g. http://127.0.0.1:8086"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host, e.g. http://127.0.0.1:8086"));
    }
    if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "{url:?} has a path, query or fragment, which the influxdb2 client would silently \
             drop (it always posts to <scheme>://<host>:<port>/api/v2/write); give only \
             scheme, host and port, e.g. http://127.0.0.1:8086"
        ));
    }
    Ok(())
}

fn parse_as<T: FromStr>(_like: &T, text: &str) -> Result<T, T::Err> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in [
            "http://127.0.0.1:8428",
            "http://localhost:8086/",
            "https://influx.example.org",
            "http://[::1]:8086",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1:8086",
            "localhost",
            "ftp://host",
            "http://",
            "http://host:99999",
            "http://ho st",
            "http://host/influx",
            "http://host/?org=x",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "éééé".to_owned();
        truncate_at_char(&mut s, 3);
        assert_eq!(s, "é…");
    }
}
