//! The store at the other end: the InfluxDB 2 write API (`POST {url}/api/v2/write`), reached
//! with the HTTP client already in the tree (reqwest). The base URL keeps its path, so a store
//! behind a prefix is reachable: VictoriaMetrics cluster's `http://vminsert:8480/insert/42/influx`
//! (tenant 42), or InfluxDB behind a reverse proxy at `https://proxy/influx`. The lines are
//! written by [`super::point`].

use std::future::Future;
use std::time::Duration;

use reqwest::Url;

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
    client: reqwest::Client,
    /// `{url}/api/v2/write?org=…&bucket=…&precision=ms`, or the reason the URL is unusable.
    endpoint: Result<Url, String>,
    token: String,
    timeout: Duration,
}

impl Store {
    /// Builds the client; the URL should have passed [`check_url`] (if not, every write is
    /// retried with the reason, nothing panics).
    pub fn new(url: &str, org: &str, bucket: &str, token: &str, timeout: Duration) -> Store {
        Store {
            client: reqwest::Client::new(),
            endpoint: write_endpoint(url, org, bucket),
            token: token.to_owned(),
            timeout,
        }
    }

    /// POSTs `body` (line protocol, millisecond timestamps) to `/api/v2/write`, giving up after
    /// the request timeout. The future owns everything it needs.
    pub fn write(&self, body: String) -> impl Future<Output = WriteOutcome> + Send + 'static {
        let store = self.clone();
        async move {
            let endpoint = match &store.endpoint {
                Ok(endpoint) => endpoint.clone(),
                Err(problem) => return WriteOutcome::Retry(problem.clone()),
            };
            let mut request = store
                .client
                .post(endpoint)
                .header("Content-Type", "text/plain; charset=utf-8")
                .body(body);
            if !store.token.is_empty() {
                request = request.header("Authorization", format!("Token {}", store.token));
            }
            let answer = async {
                let response = request.send().await?;
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                Ok::<_, reqwest::Error>((status, text))
            };
            match tokio::time::timeout(store.timeout, answer).await {
                Ok(Ok((status, text))) => classify(status, text),
                Ok(Err(e)) => WriteOutcome::Retry(error_chain(&e)),
                Err(_) => WriteOutcome::Retry(format!(
                    "no answer within the request timeout of {:?}",
                    store.timeout
                )),
            }
        }
    }
}

/// `{url}/api/v2/write` with the org, bucket and precision parameters; the URL's own path is
/// kept (a trailing `/` or not).
fn write_endpoint(url: &str, org: &str, bucket: &str) -> Result<Url, String> {
    check_url(url)?;
    let mut endpoint = Url::parse(url).map_err(|e| format!("cannot parse {url:?}: {e}"))?;
    let path = format!("{}/api/v2/write", endpoint.path().trim_end_matches('/'));
    endpoint.set_path(&path);
    endpoint
        .query_pairs_mut()
        .append_pair("org", org)
        .append_pair("bucket", bucket)
        .append_pair("precision", "ms");
    Ok(endpoint)
}

fn classify(status: u16, mut message: String) -> WriteOutcome {
    truncate_at_char(&mut message, 500);
    match status {
        200..=299 => WriteOutcome::Written,
        400 | 413 | 422 => WriteOutcome::Rejected { status, message },
        _ => WriteOutcome::Retry(format!("HTTP {status}: {message}")),
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

/// Checks that `url` is a base URL the writer can use: `http` or `https`, a host, an optional
/// path prefix (kept: `/api/v2/write` is appended to it), no query or fragment (the writer sets
/// the query itself).
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| {
        format!("cannot parse {url:?}: {e}; e.g. http://127.0.0.1:8086 or http://vminsert:8480/insert/42/influx")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url:?} must start with http:// or https://, e.g. http://127.0.0.1:8086"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host, e.g. http://127.0.0.1:8086"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "{url:?} has a query or fragment: give the org and bucket as `org` and `bucket`, \
             and only the base URL here (scheme, host, port and an optional path prefix), \
             e.g. http://127.0.0.1:8086 or http://vminsert:8480/insert/42/influx"
        ));
    }
    if parsed.path().ends_with("/api/v2/write") {
        return Err(format!(
            "{url:?} already ends with /api/v2/write, which the writer appends itself: \
             give the base URL, e.g. {:?}",
            url.trim_end_matches('/').trim_end_matches("/api/v2/write")
        ));
    }
    Ok(())
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
            "http://host/influx",
            "http://vminsert:8480/insert/42/influx",
            "http://vminsert:8480/insert/42/influx/",
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
            "http://host/?org=x",
            "http://host/influx#top",
            "http://host:8086/api/v2/write",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_write_endpoint_keeps_the_path_prefix() {
        let at = |url: &str| write_endpoint(url, "my org", "fab").map(|u| u.to_string());
        assert_eq!(
            at("http://127.0.0.1:8086").as_deref(),
            Ok("http://127.0.0.1:8086/api/v2/write?org=my+org&bucket=fab&precision=ms")
        );
        assert_eq!(
            at("http://vminsert:8480/insert/42/influx/").as_deref(),
            Ok("http://vminsert:8480/insert/42/influx/api/v2/write?org=my+org&bucket=fab&precision=ms")
        );
        assert!(at("http://host/?q=1").is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(classify(204, String::new()), WriteOutcome::Written);
        assert_eq!(classify(200, String::new()), WriteOutcome::Written);
        assert_eq!(
            classify(400, "bad line".into()),
            WriteOutcome::Rejected {
                status: 400,
                message: "bad line".into()
            }
        );
        assert!(
            matches!(classify(503, String::new()), WriteOutcome::Retry(m) if m.contains("503"))
        );
        assert!(matches!(
            classify(401, String::new()),
            WriteOutcome::Retry(_)
        ));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "éééé".to_owned();
        truncate_at_char(&mut s, 3);
        assert_eq!(s, "é…");
    }
}
