//! The HTTP API and the web page (axum).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the live machine board (HTML, refreshes itself, usable on a phone) |
//! | `GET /api/machines` | live state of every machine |
//! | `GET /api/sessions?machine&member&from&to&limit` | sessions, JSON; CSV with `Accept: text/csv` or `/api/sessions.csv` |
//! | `GET /api/machines/{id}/counters` | lifetime counters of a machine |
//! | `GET /api/dead-letters?limit` | the latest refused messages, with their reasons |
//! | `GET /api/members/{id}/statement?period` | usage and charges so far this period (docs/BILLING.md) |
//! | `GET /api/members/{id}/invoices` | the member's invoices and credit notes, with their download links |
//! | `GET /api/members/{id}/invoices/{number}.{pdf,xml,html}` | one of them: Factur-X PDF, CII XML, printable HTML |
//! | `GET /api/members/{id}/export` | everything held about the member (docs/SECURITY.md "Personal data") |
//! | `GET /api/maintenance` | every machine's plans (hours left, due date, state), lock, availability |
//! | `GET /api/costs?from&to` | cost recovery per machine (docs/COSTS.md) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | the process answers |
//! | `GET /readyz` | connected to the broker and the ledger answers |
//!
//! With `http.tokens_file` set, every route but `/`, `/healthz` and `/readyz` needs a bearer token
//! whose role covers it (`crate::auth`).
//!
//! `from` and `to` take a date (`2026-11-01`), a UTC date-time (`2026-11-01T08:00:00Z`) or unix
//! milliseconds.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::billing::calendar::{civil_from_days, days_from_civil};
use crate::ledger::{Ledger, LedgerError, SessionQuery, SessionView};
use crate::metrics::Metrics;
use crate::timeseries::TimeSeriesHandle;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// A read connection to the ledger (WAL: reads do not block the writer).
    pub ledger: Arc<Mutex<Box<dyn Ledger>>>,
    /// The collector's metrics.
    pub metrics: Arc<Metrics>,
    /// The time-series sink, for its statistics.
    pub series: TimeSeriesHandle,
    /// Site id and name, for the page.
    pub site: (String, String),
    /// Billing rules, when the site bills (`[billing]`).
    pub billing: Option<Arc<crate::billing::invoice::Billing>>,
    /// The path the site's routes are served under: `/`, or `/sites/{id}/` on a network
    /// collector (the page's links are relative to it).
    pub base: String,
}

/// The router of every route above.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/machines", get(machines))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions.csv", get(sessions_csv))
        .route("/api/machines/{id}/counters", get(counters))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/members/{id}/statement", get(statement))
        .route("/api/members/{id}/invoices", get(member_invoices))
        .route(
            "/api/members/{id}/invoices/{file}",
            get(member_invoice_file),
        )
        .with_state(state.clone())
        .merge(process_router(state))
}

/// The routes of the process (`/metrics`, `/healthz`, `/readyz`), in [`router`]; a network
/// collector serves them once, at its root.
pub fn process_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

/// A shared read connection to the ledger.
pub type SharedLedger = Arc<Mutex<Box<dyn Ledger>>>;

/// The maintenance routes (`GET /api/maintenance`), merged into [`router`]'s by the application.
pub fn maintenance_router(ledger: SharedLedger, config: Arc<crate::config::Config>) -> Router {
    Router::new()
        .route("/api/maintenance", get(maintenance))
        .with_state((ledger, config))
}

async fn maintenance(
    State((ledger, config)): State<(SharedLedger, Arc<crate::config::Config>)>,
) -> Result<Response, ApiError> {
    let now = crate::ingest::now_ms();
    let machines = read_ledger(ledger, move |l| {
        crate::maintenance::task::status(&config, l, now)
    })
    .await?;
    Ok(Json(serde_json::json!({ "now_ms": now, "machines": machines })).into_response())
}

/// The cost recovery route (`GET /api/costs`), merged into [`router`]'s by the application.
pub fn costs_router(ledger: SharedLedger, config: Arc<crate::config::Config>) -> Router {
    Router::new()
        .route("/api/costs", get(costs))
        .with_state((ledger, config))
}

/// Query string of `/api/costs`.
#[derive(Debug, Deserialize, Default)]
pub struct CostParams {
    from: Option<String>,
    to: Option<String>,
}

async fn costs(
    State((ledger, config)): State<(SharedLedger, Arc<crate::config::Config>)>,
    Query(q): Query<CostParams>,
) -> Result<Response, ApiError> {
    use crate::costs::{report, CostError};
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let zone = config
        .costs
        .clone()
        .unwrap_or_default()
        .zone(&config)
        .map_err(|e| bad(e.to_string()))?;
    let bound = |name: &str, v: &Option<String>| -> Result<Option<u64>, ApiError> {
        v.as_deref()
            .map(|s| {
                crate::billing::Date::parse(s)
                    .map(|d| zone.midnight(d))
                    .ok()
                    .or_else(|| parse_time(s))
                    .ok_or_else(|| {
                        bad(format!(
                            "{name}={s:?}: give a date (2026-11-01), a UTC date-time (2026-11-01T08:00:00Z) or unix ms"
                        ))
                    })
            })
            .transpose()
    };
    let to = bound("to", &q.to)?.unwrap_or_else(crate::ingest::now_ms);
    let from = bound("from", &q.from)?.unwrap_or(to.saturating_sub(90 * 86_400_000));
    let r = tokio::task::spawn_blocking(move || {
        let guard = ledger.lock().unwrap_or_else(|p| p.into_inner());
        report(&config, guard.as_ref(), from, to)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match r {
        Ok(r) => Ok(Json(r).into_response()),
        Err(e @ (CostError::Range(_) | CostError::Config(_))) => Err(bad(e.to_string())),
        Err(e) => {
            tracing::error!(error = %e, "cost recovery failed");
            Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
    }
}

/// `GET /api/members/{id}/export`: everything held about one member (docs/SECURITY.md "Personal
/// data"), read on a ledger connection of its own, opened for the request.
pub fn privacy_router(config: Arc<crate::config::Config>) -> Router {
    Router::new()
        .route("/api/members/{id}/export", get(member_export))
        .with_state(config)
}

async fn member_export(
    State(config): State<Arc<crate::config::Config>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use crate::privacy::{export_member, PrivacyError};
    let now = crate::ingest::now_ms();
    let doc = tokio::task::spawn_blocking(move || {
        let ledger = crate::ledger::AnyLedger::open(
            &config.ledger,
            &config.site_id()?,
            config.badge_directory(),
        )?;
        export_member(&config, &ledger, &id, now)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match doc {
        Ok(d) => Ok(Json(d).into_response()),
        Err(e @ PrivacyError::UnknownMember(_)) => {
            Err(ApiError(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e) => {
            tracing::error!(error = %e, "member export failed");
            Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
    }
}

/// An API error: a status and a message naming the problem and the fix.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        tracing::error!(error = %e, "ledger read failed");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ledger unavailable: {e}"),
        )
    }
}

async fn read<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&dyn Ledger) -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, ApiError> {
    read_ledger(state.ledger.clone(), f).await
}

/// Runs `f` on a shared ledger off the async threads.
pub(crate) async fn read_ledger<T: Send + 'static>(
    ledger: SharedLedger,
    f: impl FnOnce(&dyn Ledger) -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        let guard = ledger.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.as_ref())
    })
    .await
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reader task failed: {e}"),
        )
    })?
    .map_err(ApiError::from)
}

async fn machines(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let machines = read(&s, |l| l.machines()).await?;
    Ok(Json(serde_json::json!({
        "site": s.site.0,
        "now_ms": crate::ingest::now_ms(),
        "machines": machines,
    }))
    .into_response())
}

/// Query string of `/api/sessions`.
#[derive(Debug, Deserialize, Default)]
pub struct SessionParams {
    machine: Option<String>,
    member: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
}

fn session_query(p: SessionParams) -> Result<SessionQuery, ApiError> {
    let time = |name: &str, v: Option<String>| -> Result<Option<u64>, ApiError> {
        v.map(|v| {
            parse_time(&v).ok_or_else(|| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "parameter `{name}`: {v:?} is not a time; use a date (2026-11-01), a UTC date-time (2026-11-01T08:00:00Z) or unix milliseconds"
                    ),
                )
            })
        })
        .transpose()
    };
    Ok(SessionQuery {
        from_ms: time("from", p.from)?,
        to_ms: time("to", p.to)?,
        machine: p.machine,
        member: p.member,
        limit: Some(limit_param(p.limit.as_deref(), 10_000, 100_000)?),
    })
}

async fn sessions(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(p): Query<SessionParams>,
) -> Result<Response, ApiError> {
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    let q = session_query(p)?;
    let rows = read(&s, move |l| l.sessions(&q)).await?;
    Ok(if wants_csv {
        csv_response(&rows)
    } else {
        Json(serde_json::json!({ "sessions": rows })).into_response()
    })
}

async fn sessions_csv(
    State(s): State<ApiState>,
    Query(p): Query<SessionParams>,
) -> Result<Response, ApiError> {
    let q = session_query(p)?;
    let rows = read(&s, move |l| l.sessions(&q)).await?;
    Ok(csv_response(&rows))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Sessions as CSV, one line per session, times in UTC (RFC 3339).
pub fn sessions_to_csv(rows: &[SessionView]) -> String {
    let mut out = String::from(
        "machine,boot,session,member,badge,start,end,busy_s,idle_s,energy_wh,status,reason,first_seq,last_seq\n",
    );
    for r in rows {
        let t = |ms: Option<u64>| ms.map(format_utc).unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(&r.machine),
            r.boot,
            r.session,
            csv_field(r.member.as_deref().unwrap_or("")),
            r.badge.as_deref().unwrap_or(""),
            t(r.start_ms),
            t(r.end_ms),
            r.busy_s,
            r.idle_s,
            r.energy_wh,
            r.status,
            r.reason.as_deref().unwrap_or(""),
            r.first_seq,
            r.last_seq
        ));
    }
    out
}

fn csv_response(rows: &[SessionView]) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"sessions.csv\"",
            ),
        ],
        sessions_to_csv(rows),
    )
        .into_response()
}

async fn counters(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let machine = id.clone();
    match read(&s, move |l| l.counters(&machine)).await? {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("unknown machine {id:?}; GET /api/machines lists the machines of this site"),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct LimitParams {
    limit: Option<String>,
}

/// The `limit` query parameter: absent gives `default`; a value that is not a whole number, or
/// is 0 or above `max`, is a 400 naming the parameter, its range and the fix.
fn limit_param(v: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    let Some(v) = v else {
        return Ok(default);
    };
    let bad = |problem: String| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "parameter `limit`: {problem}; give a whole number from 1 to {max} (the maximum), e.g. limit={default}, and narrow the query (from, to) to see more"
            ),
        )
    };
    match v.trim().parse::<u64>() {
        Ok(n) if n >= 1 && n <= u64::from(max) => Ok(n as u32),
        Ok(0) => Err(bad("0 asks for nothing".into())),
        Ok(n) => Err(bad(format!("{n} is above the maximum {max}"))),
        Err(_) if !v.is_empty() && v.trim().bytes().all(|b| b.is_ascii_digit()) => {
            Err(bad(format!("{v} is above the maximum {max}")))
        }
        Err(_) => Err(bad(format!("{v:?} is not a whole number"))),
    }
}

async fn dead_letters(
    State(s): State<ApiState>,
    Query(p): Query<LimitParams>,
) -> Result<Response, ApiError> {
    let limit = limit_param(p.limit.as_deref(), 100, 10_000)?;
    let rows = read(&s, move |l| l.dead_letters(limit)).await?;
    Ok(Json(serde_json::json!({ "dead_letters": rows })).into_response())
}

#[derive(Debug, Deserialize)]
struct StatementParams {
    period: Option<String>,
}

async fn statement(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(p): Query<StatementParams>,
) -> Result<Response, ApiError> {
    use crate::billing::{invoice, BillableSession, Period};
    let Some(billing) = s.billing.clone() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "this site does not bill: add a [billing] section (docs/BILLING.md)".into(),
        ));
    };
    if !billing.members.contains_key(&id) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("unknown member {id:?}; members are listed in the site configuration"),
        ));
    }
    let now = crate::ingest::now_ms();
    let period = match p.period {
        Some(p) => Period::parse(&p)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("parameter `period`: {e}")))?,
        None => Period::of(billing.rules.zone.date_of(now)),
    };
    let (from, to) = period.bounds(billing.rules.zone);
    let q = SessionQuery {
        member: Some(id.clone()),
        from_ms: Some(from),
        to_ms: Some(to),
        limit: Some(100_000),
        ..Default::default()
    };
    let rows = read(&s, move |l| l.sessions(&q)).await?;
    let sessions: Vec<BillableSession> =
        rows.iter().filter_map(BillableSession::from_view).collect();
    Ok(Json(invoice::statement(&billing, &id, period, &sessions, now)).into_response())
}

/// The billing of the site and the documents issued to `id` (404 when the site does not bill or
/// the member is unknown).
async fn member_documents(
    s: &ApiState,
    id: &str,
) -> Result<Vec<crate::billing::invoice::Invoice>, ApiError> {
    let Some(billing) = s.billing.clone() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "this site does not bill: add a [billing] section (docs/BILLING.md)".into(),
        ));
    };
    if !billing.members.contains_key(id) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("unknown member {id:?}; members are listed in the site configuration"),
        ));
    }
    let ledger = s.ledger.clone();
    let member = id.to_owned();
    tokio::task::spawn_blocking(move || {
        let guard = ledger.lock().unwrap_or_else(|p| p.into_inner());
        guard.member_documents(&member)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        tracing::error!(error = %e, "documents read failed");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    })
}

/// `GET /api/members/{id}/invoices`: the member's documents, newest first, each with its totals
/// and the links to download it (`[{kind, href}]`: `pdf` and `xml` when it can be rendered as
/// Factur-X, then `html`; `href` relative to the page's base).
async fn member_invoices(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use crate::billing::facturx::cii_xml;
    use crate::billing::invoice::DocKind;
    let docs = member_documents(&s, &id).await?;
    let items: Vec<serde_json::Value> = docs
        .iter()
        .rev()
        .map(|d| {
            let base = format!("api/members/{id}/invoices/{}", d.number);
            let kinds: &[&str] = if cii_xml(d).is_ok() {
                &["pdf", "xml", "html"]
            } else {
                &["html"]
            };
            let links: Vec<serde_json::Value> = kinds
                .iter()
                .map(|k| serde_json::json!({ "kind": k, "href": format!("{base}.{k}") }))
                .collect();
            serde_json::json!({
                "number": d.number,
                "kind": if d.kind == DocKind::Invoice { "invoice" } else { "credit_note" },
                "issue_date": d.issue_date.to_string(),
                "period": d.period.to_string(),
                "refers_to": d.refers_to,
                "refers_to_date": d.refers_to_date.map(|t| t.to_string()),
                "incl_cents": d.totals.incl_cents,
                "due_cents": d.due_cents,
                "links": links,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "member": id, "documents": items })).into_response())
}

/// `GET /api/members/{id}/invoices/{number}.{pdf,xml,html}`: one of the member's documents
/// (404 for a document of another member: a member token reaches only its own path).
async fn member_invoice_file(
    State(s): State<ApiState>,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    use crate::billing::{facturx, invoice, pdf};
    let Some((number, ext)) = file.rsplit_once('.') else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{file:?}: ask for {{number}}.pdf, .xml or .html, e.g. ATL-2026-000001.pdf"),
        ));
    };
    let docs = member_documents(&s, &id).await?;
    let Some(d) = docs.iter().find(|d| d.number == number) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("member {id:?} has no document {number:?}"),
        ));
    };
    let rendered = match ext {
        "pdf" => pdf::facturx_pdf(d).map(|b| ("application/pdf", b)),
        "xml" => facturx::cii_xml(d).map(|b| ("application/xml", b)),
        "html" => Ok(("text/html; charset=utf-8", invoice::to_html(d).into_bytes())),
        _ => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("{file:?}: ask for {number}.pdf, .xml or .html"),
            ))
        }
    };
    let (mime, bytes) = rendered.map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?;
    let disposition = format!("attachment; filename=\"{number}.{ext}\"");
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let ts = s.series.stats();
    let extra = [
        (
            "fabmeter_timeseries_backlog_bytes",
            "time-series backlog on disk, bytes",
            ts.backlog_bytes as f64,
        ),
        (
            "fabmeter_timeseries_backlog_points",
            "time-series points waiting in the backlog",
            ts.backlog_points as f64,
        ),
        (
            "fabmeter_timeseries_points_written",
            "time-series points written to the store",
            ts.points_written as f64,
        ),
        (
            "fabmeter_timeseries_points_dropped",
            "time-series points dropped without reaching the store, all reasons (per reason: fabmeter_timeseries_points_dropped_by_reason)",
            ts.points_dropped as f64,
        ),
        (
            "fabmeter_timeseries_store_up",
            "whether the time-series store accepts writes",
            f64::from(u8::from(ts.store_up)),
        ),
    ];
    let mut text = s.metrics.render(&extra);
    text.push_str(
        "# HELP fabmeter_timeseries_points_dropped_by_reason time-series points dropped, by reason \
         (queue_full, backlog_full, backlog_io, closed, disabled)\n\
         # TYPE fabmeter_timeseries_points_dropped_by_reason counter\n",
    );
    for (reason, n) in &ts.dropped_by_reason {
        text.push_str(&format!(
            "fabmeter_timeseries_points_dropped_by_reason{{reason=\"{reason}\"}} {n}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn ready(State(s): State<ApiState>) -> Response {
    if !s.metrics.mqtt_up.load(Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not connected to the MQTT broker\n",
        )
            .into_response();
    }
    if !s.metrics.subscribed.load(Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: subscriptions not confirmed by the broker yet\n",
        )
            .into_response();
    }
    if let Some(why) = s.metrics.ledger_failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: ledger commits fail ({why}); nothing is acknowledged until one succeeds: free space on the ledger's disk, bring the PostgreSQL server of ledger.url back, or fix the error\n"),
        )
            .into_response();
    }
    match read(&s, |l| l.totals()).await {
        Ok(_) => "ready\n".into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", e.1),
        )
            .into_response(),
    }
}

async fn page(State(s): State<ApiState>) -> Html<String> {
    let title = if s.site.1.is_empty() {
        &s.site.0
    } else {
        &s.site.1
    };
    Html(
        PAGE.replace("{{SITE}}", &html_escape(title))
            .replace("{{BASE}}", &html_escape(&s.base)),
    )
}

/// `s` safe inside HTML text.
pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PAGE: &str = include_str!("page.html");

/// Parses unix ms, `YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM[:SS]Z` (UTC).
pub fn parse_time(s: &str) -> Option<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Some(ms);
    }
    let num = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<i64>().ok());
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if s.get(4..5) != Some("-")
        || s.get(7..8) != Some("-")
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if s.len() > 10 {
        let rest = s.get(10..)?;
        let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' '))?;
        let rest = rest.strip_suffix('Z').unwrap_or(rest);
        let mut parts = rest.split(':');
        let h: i64 = parts.next()?.parse().ok()?;
        let mi: i64 = parts.next()?.parse().ok()?;
        let sec: i64 = parts.next().map_or(Some(0), |x| x.parse().ok())?;
        if parts.next().is_some()
            || !(0..24).contains(&h)
            || !(0..60).contains(&mi)
            || !(0..61).contains(&sec)
        {
            return None;
        }
        secs += h * 3600 + mi * 60 + sec;
    }
    u64::try_from(secs).ok().map(|s| s * 1000)
}

/// Formats unix ms as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_format() {
        assert_eq!(parse_time("1764412800000"), Some(1_764_412_800_000));
        assert_eq!(parse_time("2025-11-29"), Some(1_764_374_400_000));
        assert_eq!(parse_time("2025-11-29T10:40:00Z"), Some(1_764_412_800_000));
        assert_eq!(parse_time("2025-11-29T10:40Z"), Some(1_764_412_800_000));
        assert_eq!(format_utc(1_764_412_800_000), "2025-11-29T10:40:00Z");
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_time("2024-02-29"), Some(1_709_164_800_000));
        for bad in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-11-29T25:00Z",
            "2025/11/29",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bad_limit_names_the_parameter_its_maximum_and_the_fix() {
        assert_eq!(limit_param(None, 100, 10_000).map_err(|e| e.1), Ok(100));
        assert_eq!(
            limit_param(Some("10000"), 100, 10_000).map_err(|e| e.1),
            Ok(10_000)
        );
        for (v, says) in [
            ("10001", "10001 is above the maximum 10000"),
            (
                "99999999999999999999999",
                "99999999999999999999999 is above the maximum 10000",
            ),
            ("0", "0 asks for nothing"),
            ("ten", "\"ten\" is not a whole number"),
            ("-1", "\"-1\" is not a whole number"),
        ] {
            let e = limit_param(Some(v), 100, 10_000).expect_err(v);
            assert_eq!(e.0, StatusCode::BAD_REQUEST);
            assert_eq!(
                e.1,
                format!("parameter `limit`: {says}; give a whole number from 1 to 10000 (the maximum), e.g. limit=100, and narrow the query (from, to) to see more")
            );
        }
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let row = SessionView {
            machine: "laser-1".into(),
            boot: 1,
            session: 2,
            member: Some("alice, \"the\" maker".into()),
            badge: Some("ba279e0c1e5c2464".into()),
            start_ms: Some(1_764_412_800_000),
            end_ms: None,
            busy_s: 60,
            idle_s: 5,
            energy_wh: 3,
            status: "open".into(),
            reason: None,
            first_seq: 2,
            last_seq: 4,
        };
        let csv = sessions_to_csv(&[row]);
        let line = csv.lines().nth(1).expect("a data line");
        assert_eq!(
            line,
            "laser-1,1,2,\"alice, \"\"the\"\" maker\",ba279e0c1e5c2464,2025-11-29T10:40:00Z,,60,5,3,open,,2,4"
        );
    }
}
