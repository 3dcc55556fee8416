//! The network view of a network collector ([`crate::network`]): every site it serves, read from
//! the shared ledger, on one page and two JSON routes.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the network page: a table of sites, a finder of free machines by kind |
//! | `GET /api/network/sites?days=30` | per site: machines by state, unavailable, free now, sessions, busy hours and members over `days` |
//! | `GET /api/network/machines?kind&site&state&free` | every machine of every site, filtered |
//! | `/sites/{id}/...` | each site's own page and API (`crate::api`) |
//!
//! The network view holds no personal data: it says a machine is in use, never by whom (a
//! site's manager sees that on the site's own page).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::{read_ledger, ApiError, SharedLedger};
use crate::config::Config;
use crate::ledger::{LedgerError, MachineView, Usage};

/// What the network routes share.
#[derive(Clone)]
pub struct NetState {
    /// The collector's name.
    pub name: String,
    /// Each site's configuration and read connection, sorted by site id.
    pub sites: Vec<(Arc<Config>, SharedLedger)>,
    /// Unix ms now (tests pass their own clock).
    pub now_ms: fn() -> u64,
}

/// The network routes.
pub fn router(state: NetState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/network/sites", get(sites))
        .route("/api/network/machines", get(machines))
        .with_state(state)
}

/// One site in the network view.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SiteSummary {
    /// Site id.
    pub site: String,
    /// Its name.
    pub name: String,
    /// Machines registered.
    pub machines: u64,
    /// Machines whose device is connected.
    pub online: u64,
    /// Machines running a job now.
    pub busy: u64,
    /// Machines powered and waiting.
    pub idle: u64,
    /// Machines switched off (device connected).
    pub off: u64,
    /// Machines out of order or locked for overdue service.
    pub unavailable: u64,
    /// Machines a member could use now: connected, not busy, not unavailable.
    pub free: u64,
    /// Sessions started over the period.
    pub sessions: u64,
    /// Busy hours over the period (tenths).
    pub busy_hours: f64,
    /// Distinct members who used a machine over the period.
    pub members: u64,
    /// Why the site could not be read, when it could not (the others are still shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The network view's answer to `/api/network/sites`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkSummary {
    /// The collector's name.
    pub collector: String,
    /// The period, days back from now.
    pub days: u32,
    /// Every site.
    pub sites: Vec<SiteSummary>,
    /// The sums over the sites.
    pub total: SiteSummary,
}

/// One machine in the network view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetMachine {
    /// Its site.
    pub site: String,
    /// The site's name.
    pub site_name: String,
    /// Machine id.
    pub machine: String,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// `off`, `idle`, `busy`, `offline` or `unknown`.
    pub state: String,
    /// Its device is connected.
    pub online: bool,
    /// Out of order or locked for overdue service.
    pub unavailable: bool,
    /// A member could use it now.
    pub free: bool,
}

fn is_free(m: &MachineView, unavailable: bool) -> bool {
    m.online && !unavailable && matches!(m.state.as_str(), "off" | "idle")
}

/// The days of `?days=`: 1 to 366, default 30.
#[derive(Debug, Deserialize)]
struct SitesQuery {
    days: Option<u32>,
}

fn summarise(
    config: &Config,
    machines: &[MachineView],
    unavailable: &[String],
    usage: Usage,
) -> SiteSummary {
    let count = |f: &dyn Fn(&MachineView) -> bool| machines.iter().filter(|m| f(m)).count() as u64;
    let down = |m: &MachineView| unavailable.binary_search(&m.id).is_ok();
    SiteSummary {
        site: config.site.id.clone(),
        name: config.site.name.clone(),
        machines: machines.len() as u64,
        online: count(&|m| m.online),
        busy: count(&|m| m.state == "busy"),
        idle: count(&|m| m.state == "idle"),
        off: count(&|m| m.state == "off"),
        unavailable: count(&down),
        free: count(&|m| is_free(m, down(m))),
        sessions: usage.sessions,
        busy_hours: (usage.busy_s as f64 / 360.0).round() / 10.0,
        members: usage.members,
        error: None,
    }
}

async fn sites(
    State(s): State<NetState>,
    Query(q): Query<SitesQuery>,
) -> Result<Json<NetworkSummary>, ApiError> {
    let days = q.days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("days={days} is out of range: give 1 to 366, e.g. ?days=30"),
        ));
    }
    let from_ms = (s.now_ms)().saturating_sub(u64::from(days) * 86_400_000);
    let mut out = Vec::with_capacity(s.sites.len());
    for (config, ledger) in &s.sites {
        let read = read_ledger(ledger.clone(), move |l| {
            Ok::<_, LedgerError>((l.machines()?, l.unavailable()?, l.usage(from_ms)?))
        })
        .await;
        out.push(match read {
            Ok((machines, unavailable, usage)) => summarise(config, &machines, &unavailable, usage),
            Err(e) => SiteSummary {
                site: config.site.id.clone(),
                name: config.site.name.clone(),
                error: Some(e.1),
                ..SiteSummary::default()
            },
        });
    }
    let mut total = SiteSummary {
        site: "*".into(),
        name: "all sites".into(),
        ..SiteSummary::default()
    };
    for x in &out {
        total.machines += x.machines;
        total.online += x.online;
        total.busy += x.busy;
        total.idle += x.idle;
        total.off += x.off;
        total.unavailable += x.unavailable;
        total.free += x.free;
        total.sessions += x.sessions;
        total.busy_hours += x.busy_hours;
        // Members of several sites count once per site: the network has no member identity.
        total.members += x.members;
    }
    total.busy_hours = (total.busy_hours * 10.0).round() / 10.0;
    Ok(Json(NetworkSummary {
        collector: s.name.clone(),
        days,
        sites: out,
        total,
    }))
}

#[derive(Debug, Deserialize)]
struct MachinesQuery {
    kind: Option<String>,
    site: Option<String>,
    state: Option<String>,
    free: Option<bool>,
}

async fn machines(
    State(s): State<NetState>,
    Query(q): Query<MachinesQuery>,
) -> Result<Response, ApiError> {
    if let Some(site) = &q.site {
        if !s.sites.iter().any(|(c, _)| &c.site.id == site) {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no site {site} in this network: see /api/network/sites for the ids"),
            ));
        }
    }
    let mut out = Vec::new();
    for (config, ledger) in &s.sites {
        if q.site.as_ref().is_some_and(|x| *x != config.site.id) {
            continue;
        }
        let (machines, unavailable) = read_ledger(ledger.clone(), |l| {
            Ok::<_, LedgerError>((l.machines()?, l.unavailable()?))
        })
        .await?;
        for m in machines {
            let down = unavailable.binary_search(&m.id).is_ok();
            let row = NetMachine {
                site: config.site.id.clone(),
                site_name: config.site.name.clone(),
                free: is_free(&m, down),
                machine: m.id,
                name: m.name,
                kind: m.kind,
                state: m.state,
                online: m.online,
                unavailable: down,
            };
            if q.kind.as_ref().is_some_and(|k| *k != row.kind)
                || q.state.as_ref().is_some_and(|x| *x != row.state)
                || q.free.is_some_and(|f| f != row.free)
            {
                continue;
            }
            out.push(row);
        }
    }
    Ok(Json(out).into_response())
}

const PAGE: &str = include_str!("network.html");

async fn page(State(s): State<NetState>) -> Html<String> {
    Html(PAGE.replace("{{COLLECTOR}}", &crate::api::html_escape(&s.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, state: &str, online: bool) -> MachineView {
        MachineView {
            id: id.into(),
            name: id.into(),
            kind: "laser".into(),
            state: state.into(),
            since_ms: None,
            member: None,
            online,
            boot: None,
            fw: None,
        }
    }

    #[test]
    fn a_site_summary_counts_states_and_free_machines() {
        let c = Config::for_site("s1");
        let machines = [
            view("a", "busy", true),
            view("b", "idle", true),
            view("c", "off", true),
            view("d", "idle", true),
            view("e", "offline", false),
        ];
        let usage = Usage {
            sessions: 3,
            busy_s: 5400,
            idle_s: 60,
            members: 2,
        };
        let s = summarise(&c, &machines, &["d".to_owned()], usage);
        assert_eq!(
            (s.machines, s.online, s.busy, s.idle, s.off),
            (5, 4, 1, 2, 1)
        );
        assert_eq!(s.unavailable, 1);
        // b and c: d is out of order, a busy, e offline.
        assert_eq!(s.free, 2);
        assert!((s.busy_hours - 1.5).abs() < 1e-9);
        assert_eq!((s.sessions, s.members), (3, 2));
    }
}
