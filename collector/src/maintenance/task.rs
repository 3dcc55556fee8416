//! The maintenance IO shell: evaluates every plan periodically and after new events, keeps the
//! plan locks in the ledger, publishes each machine's retained device config (with its lock), and
//! sends alerts on MQTT and to the webhook.
//!
//! Nothing here blocks ingest: it has its own ledger connection, publishes through the collector's
//! MQTT client without waiting, and the webhook runs in its own task behind a bounded queue.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabmeter_protocol::message::{Alert, DeviceConfig, Lock, Sensing, Severity};
use fabmeter_protocol::{encode_to_vec, BadgeHash, Channel, ConfigHash, Id, Topic, SCHEMA_VERSION};
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{evaluate_machine, plan_source, MachineMaintenance, PlanState};
use crate::config::{Config, MachineConfig};
use crate::ledger::{Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::timeseries::{Point, TimeSeriesHandle};

/// The plan key of out-of-order alerts in the alert-state table.
const OUT_OF_ORDER_KEY: &str = "-out-of-order";

/// Every configured machine's maintenance at `now_ms` (for the API, the CLI and the task).
pub fn status(
    config: &Config,
    ledger: &dyn Ledger,
    now_ms: u64,
) -> Result<Vec<MachineMaintenance>, LedgerError> {
    let mut out = Vec::with_capacity(config.machines.len());
    for m in &config.machines {
        if let Some(rec) = ledger.maintenance_records(&m.id)? {
            out.push(evaluate_machine(config, m, &rec, now_ms));
        }
    }
    Ok(out)
}

/// Sensing for a machine without its own: the protocol's default current clamp.
pub fn default_sensing() -> Sensing {
    Sensing::DEFAULT
}

fn text<const N: usize>(s: &str) -> heapless::String<N> {
    let mut t = heapless::String::new();
    for c in s.chars() {
        if t.push(c).is_err() {
            break;
        }
    }
    t
}

/// The retained config of a machine: its sensing (or [`default_sensing`]), every member's badges,
/// the `[devices]` timings, and the lock if any.
pub fn device_config(config: &Config, machine: &MachineConfig, lock: Option<&str>) -> DeviceConfig {
    let mut allow = heapless::Vec::new();
    for b in config.members.iter().flat_map(|m| m.badges.iter()) {
        // Validated: badge hashes parse and the list fits (Config::validate).
        if let Ok(h) = BadgeHash::from_hex(b) {
            if !allow.contains(&h) {
                let _ = allow.push(h);
            }
        }
    }
    let d = &config.devices;
    DeviceConfig {
        v: SCHEMA_VERSION,
        sensing: machine.sensing.clone().unwrap_or_else(default_sensing),
        allow,
        progress_s: d.progress_s,
        idle_timeout_s: d.idle_timeout_s,
        max_session_s: d.max_session_s,
        telemetry_s: d.telemetry_s,
        lock: lock.map(|r| Lock { reason: text(r) }),
    }
}

/// What the webhook receives (JSON), one per alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookAlert {
    /// Site id.
    pub site: String,
    /// Machine id.
    pub machine: String,
    /// Plan name; `None` for out-of-order alerts.
    pub plan: Option<String>,
    /// `ok`, `due_soon`, `overdue`, `out_of_order` or `back_in_service`.
    pub state: String,
    /// `info`, `warning` or `critical`.
    pub severity: Severity,
    /// The MQTT alert's code.
    pub code: String,
    /// The MQTT alert's text.
    pub text: String,
    /// Wall time, unix ms.
    pub ts: u64,
    /// Busy hours left (negative: overdue), for plan alerts with a busy-hour interval.
    pub busy_h_left: Option<f64>,
    /// Calendar due date, unix ms, for plan alerts with a day interval.
    pub due_ms: Option<u64>,
    /// Whether new sessions are refused now.
    pub locked: bool,
}

/// What the maintenance task needs.
pub struct MaintenanceTask {
    /// The site configuration.
    pub config: Arc<Config>,
    /// Its own ledger connection (reads, plus alert states and plan locks).
    pub ledger: Box<dyn Ledger>,
    /// The collector's MQTT client (configs and alerts are published through it).
    pub client: AsyncClient,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The time-series sink: the `maintenance` and `availability` points of docs/SCHEMA.md.
    pub series: TimeSeriesHandle,
    /// Wall clock, unix ms (tests may pass their own).
    pub now_ms: fn() -> u64,
    /// Records the ingest stored for this site ([`crate::ingest::SiteIngest::activity`]): a
    /// change triggers an evaluation.
    pub activity: Arc<std::sync::atomic::AtomicU64>,
    /// The shortest gap between two evaluations triggered by new events: 1 s for a single site;
    /// a network collector of hundreds of sites spaces them out (each evaluation reads every
    /// machine's counters).
    pub react: Duration,
}

/// Alert transitions and configs to publish, decided from one evaluation.
#[derive(Debug, Default, PartialEq)]
pub struct Decisions {
    /// `(machine, alert-state key, new state, alert)`.
    pub alerts: Vec<(String, String, String, WebhookAlert)>,
    /// `(machine, lock)` for every machine whose config must be (re)published.
    pub configs: Vec<(String, Option<String>)>,
}

/// Decides alerts from the states last alerted (`alerted`, keyed by (machine, plan)) and which
/// configs differ from those last published (`published`). Pure: the caller does the IO.
pub fn decide(
    site: &str,
    machines: &[MachineMaintenance],
    alerted: &HashMap<(String, String), String>,
    published: &HashMap<String, Option<String>>,
    now_ms: u64,
) -> Decisions {
    let mut d = Decisions::default();
    for m in machines {
        for p in &m.plans {
            let key = (m.machine.clone(), p.plan.clone());
            let before = alerted.get(&key).and_then(|s| PlanState::parse(s));
            let now = p.state;
            let alert = match (before, now) {
                (b, n) if b == Some(n) => None,
                (None, PlanState::Ok) => None,
                (_, PlanState::Ok) => Some((
                    Severity::Info,
                    "maintenance_ok",
                    "service recorded, plan is ok",
                )),
                (_, PlanState::DueSoon) => Some((
                    Severity::Warning,
                    "maintenance_due_soon",
                    "service due soon",
                )),
                (_, PlanState::Overdue) => {
                    Some((Severity::Critical, "maintenance_overdue", "service overdue"))
                }
            };
            let Some((severity, code, what)) = alert else {
                continue;
            };
            let left = p
                .busy_h_left
                .map(|h| format!(", {h:.1} busy hours left"))
                .unwrap_or_default();
            let locked = m.lock.is_some();
            let text = format!(
                "{} ({}): plan {}: {what}{left}{}",
                m.name,
                m.machine,
                p.plan,
                if locked && now == PlanState::Overdue && p.lock_when_overdue {
                    "; machine locked"
                } else {
                    ""
                }
            );
            d.alerts.push((
                m.machine.clone(),
                p.plan.clone(),
                now.as_str().to_owned(),
                WebhookAlert {
                    site: site.to_owned(),
                    machine: m.machine.clone(),
                    plan: Some(p.plan.clone()),
                    state: now.as_str().to_owned(),
                    severity,
                    code: code.to_owned(),
                    text,
                    ts: now_ms,
                    busy_h_left: p.busy_h_left,
                    due_ms: p.due_ms,
                    locked,
                },
            ));
        }
        let key = (m.machine.clone(), OUT_OF_ORDER_KEY.to_owned());
        let was_out = alerted.get(&key).is_some_and(|s| s == "out_of_order");
        let is_out = m.out_of_order.is_some();
        if was_out != is_out && (is_out || alerted.contains_key(&key)) {
            let (state, severity, code, text) = match &m.out_of_order {
                Some(o) => (
                    "out_of_order",
                    Severity::Critical,
                    "out_of_order",
                    format!("{} ({}): out of order: {}", m.name, m.machine, o.reason),
                ),
                None => (
                    "back_in_service",
                    Severity::Info,
                    "back_in_service",
                    format!("{} ({}): back in service", m.name, m.machine),
                ),
            };
            d.alerts.push((
                m.machine.clone(),
                OUT_OF_ORDER_KEY.to_owned(),
                state.to_owned(),
                WebhookAlert {
                    site: site.to_owned(),
                    machine: m.machine.clone(),
                    plan: None,
                    state: state.to_owned(),
                    severity,
                    code: code.to_owned(),
                    text,
                    ts: now_ms,
                    busy_h_left: None,
                    due_ms: None,
                    locked: m.lock.is_some(),
                },
            ));
        }
        if published.get(&m.machine) != Some(&m.lock) {
            d.configs.push((m.machine.clone(), m.lock.clone()));
        }
    }
    d
}

/// Opens or closes the ledger's plan-lock downtime of each locking plan, so that availability
/// counts the time a machine was locked for an overdue service.
fn sync_plan_locks(
    ledger: &mut dyn Ledger,
    machines: &[MachineMaintenance],
    now_ms: u64,
) -> Result<bool, LedgerError> {
    let mut changed = false;
    for m in machines {
        for p in m.plans.iter().filter(|p| p.lock_when_overdue) {
            let source = plan_source(&p.plan);
            changed |= if p.state == PlanState::Overdue {
                ledger.open_outage(
                    &m.machine,
                    &source,
                    &format!("service overdue: {}", p.plan),
                    "maintenance",
                    now_ms,
                )?
            } else {
                ledger.close_outage(&m.machine, &source, now_ms)?
            };
        }
    }
    Ok(changed)
}

impl MaintenanceTask {
    /// Runs until `shutdown`: evaluates when new events of the site were stored (at most every
    /// `react`), and every `maintenance.check_s` seconds anyway.
    pub async fn run(self, shutdown: CancellationToken) {
        let MaintenanceTask {
            config,
            ledger,
            client,
            metrics,
            series,
            now_ms,
            activity,
            react,
        } = self;
        let site = config.site.id.clone();
        let Ok(site_id) = Id::new(&site) else {
            return;
        };
        let webhook = config.maintenance.webhook_url.clone().map(|url| {
            let (tx, rx) = mpsc::channel::<WebhookAlert>(1000);
            tokio::spawn(run_webhook(
                url,
                config.maintenance.webhook_attempts,
                rx,
                metrics.clone(),
                shutdown.clone(),
            ));
            tx
        });
        let ledger = Arc::new(Mutex::new(ledger));
        let mut published: HashMap<String, Option<String>> = HashMap::new();
        let mut last_series_ms: Option<u64> = None;
        let mut last_costs_ms: Option<u64> = None;
        let mut last_accepted = u64::MAX;
        let mut last_check = tokio::time::Instant::now();
        let check = Duration::from_secs(config.maintenance.check_s);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let accepted = activity.load(Relaxed);
            let since = last_check.elapsed();
            if since < check && (accepted == last_accepted || since < react) {
                continue;
            }
            last_accepted = accepted;
            last_check = tokio::time::Instant::now();
            let now = now_ms();
            let costs_due = config.costs.as_ref().is_some_and(|c| {
                last_costs_ms.is_none_or(|t| now >= t.saturating_add(c.series_s * 1000))
            });
            let (cfg, l, pubs, site2) = (
                config.clone(),
                ledger.clone(),
                published.clone(),
                site.clone(),
            );
            let step = tokio::task::spawn_blocking(move || {
                let mut l = l.lock().unwrap_or_else(|p| p.into_inner());
                let mut machines = status(&cfg, l.as_ref(), now)?;
                if sync_plan_locks(l.as_mut(), &machines, now)? {
                    machines = status(&cfg, l.as_ref(), now)?;
                }
                let alerted: HashMap<(String, String), String> = l
                    .alert_states()?
                    .into_iter()
                    .map(|(m, p, s)| ((m, p), s))
                    .collect();
                let d = decide(&site2, &machines, &alerted, &pubs, now);
                // Stored before sending: a crash in between loses an alert rather than repeating
                // it at every restart.
                for (m, p, s, _) in &d.alerts {
                    l.set_alert_state(m, p, s, now)?;
                }
                // Encode the configs; one the device already reports applying (its birth's
                // config_hash) is not published again after a restart.
                let mut configs = Vec::new();
                for (machine, lock) in &d.configs {
                    let Some(mc) = cfg.machine(machine) else { continue };
                    let bytes = match encode_to_vec(&device_config(&cfg, mc, lock.as_deref())) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(machine = %machine, error = ?e, "cannot encode a device config");
                            continue;
                        }
                    };
                    let hash = ConfigHash::of(&bytes).to_hex();
                    let applied = !pubs.contains_key(machine)
                        && l.reported_config_hash(machine)?.as_deref() == Some(hash.as_str());
                    configs.push((machine.clone(), lock.clone(), bytes, applied));
                }
                // Cost recovery of the last 30 days, for the time series (docs/COSTS.md): a
                // failure is logged and does not stop the maintenance evaluation.
                let costs = costs_due
                    .then(|| {
                        let from = now.saturating_sub(crate::costs::SERIES_RANGE_MS);
                        crate::costs::report(&cfg, l.as_ref(), from, now)
                            .map_err(|e| tracing::warn!(error = %e, "cost recovery not computed"))
                            .ok()
                    })
                    .flatten();
                Ok::<_, LedgerError>((d.alerts, configs, machines, costs))
            })
            .await;
            let (alerts, configs, machines, costs) = match step {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "maintenance evaluation failed; retrying");
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "maintenance evaluation panicked; retrying");
                    continue;
                }
            };
            if let Some(report) = costs {
                series.send(cost_points(&site_id, &config, &report, now));
                last_costs_ms = Some(now);
            }
            if series_due(last_series_ms, now, check, !alerts.is_empty()) {
                series.send(series_points(&site_id, &machines, now));
                last_series_ms = Some(now);
            }
            for (machine, _, _, alert) in alerts {
                tracing::info!(machine = %machine, code = %alert.code, "{}", alert.text);
                let Ok(mid) = Id::new(&machine) else { continue };
                let topic = Topic::new(site_id.clone(), mid, Channel::Alert).to_string_buf();
                let wire = Alert {
                    v: SCHEMA_VERSION,
                    ts: alert.ts,
                    severity: alert.severity,
                    code: text(&alert.code),
                    text: text(&alert.text),
                };
                match encode_to_vec(&wire) {
                    Ok(bytes) => {
                        if let Err(e) =
                            client.try_publish(topic.as_str(), QoS::AtLeastOnce, false, bytes)
                        {
                            tracing::warn!(error = %e, "cannot queue an alert on MQTT");
                        } else {
                            metrics.alerts_published.fetch_add(1, Relaxed);
                        }
                    }
                    Err(e) => tracing::error!(error = ?e, "cannot encode an alert"),
                }
                if let Some(tx) = &webhook {
                    if tx.try_send(alert).is_err() {
                        metrics.webhook_dropped.fetch_add(1, Relaxed);
                        tracing::warn!("webhook queue full: alert dropped");
                    }
                }
            }
            if config.devices.publish_configs {
                for (machine, lock, bytes, applied) in configs {
                    if applied {
                        published.insert(machine, lock);
                        continue;
                    }
                    let Ok(mid) = Id::new(&machine) else { continue };
                    let topic = Topic::new(site_id.clone(), mid, Channel::Config).to_string_buf();
                    if client
                        .try_publish(topic.as_str(), QoS::AtLeastOnce, true, bytes)
                        .is_ok()
                    {
                        metrics.configs_published.fetch_add(1, Relaxed);
                        tracing::info!(machine = %machine, lock = lock.as_deref().unwrap_or("none"), "device config published");
                        published.insert(machine, lock);
                    }
                }
            }
        }
    }
}

/// Whether an evaluation at `now_ms` writes its points: the first, one at least `check` after the
/// last written, and any that changed a state (`changed`). Evaluations after each commit are
/// otherwise not written, so a busy site writes a machine's points about once per `check_s`.
pub fn series_due(last_ms: Option<u64>, now_ms: u64, check: Duration, changed: bool) -> bool {
    let check_ms = u64::try_from(check.as_millis()).unwrap_or(u64::MAX);
    changed || last_ms.is_none_or(|last| now_ms.saturating_sub(last) >= check_ms)
}

/// The `cost_recovery` points of a report (one per configured machine).
fn cost_points(
    site: &Id,
    config: &Config,
    report: &crate::costs::CostReport,
    now_ms: u64,
) -> Vec<Point> {
    report
        .machines
        .iter()
        .filter_map(|r| {
            let kind = config.machine(&r.machine)?.kind.as_str();
            let id = Id::new(&r.machine).ok()?;
            Some(crate::series::cost_recovery(site, &id, kind, r, now_ms))
        })
        .collect()
}

/// The `maintenance` and `availability` points of every machine at `now_ms`.
pub fn series_points(site: &Id, machines: &[MachineMaintenance], now_ms: u64) -> Vec<Point> {
    machines
        .iter()
        .filter_map(|m| Some((Id::new(&m.machine).ok()?, m)))
        .flat_map(|(id, m)| crate::series::maintenance(site, &id, m, now_ms))
        .collect()
}

/// POSTs each alert as JSON, retrying with a doubling backoff (1 s to 60 s) up to `attempts`.
async fn run_webhook(
    url: String,
    attempts: u32,
    mut rx: mpsc::Receiver<WebhookAlert>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; webhook disabled");
            return;
        }
    };
    loop {
        let alert = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = rx.recv() => match a { Some(a) => a, None => return },
        };
        let body = match serde_json::to_vec(&alert) {
            Ok(b) => b,
            Err(_) => continue,
        };
        let mut backoff = Duration::from_secs(1);
        let mut delivered = false;
        for attempt in 1..=attempts {
            let res = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(r) => {
                    tracing::warn!(url = %url, attempt, status = %r.status(), "webhook refused the alert")
                }
                Err(e) => tracing::warn!(url = %url, attempt, error = %e, "webhook unreachable"),
            }
            metrics.webhook_errors.fetch_add(1, Relaxed);
            if attempt < attempts {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
        if delivered {
            metrics.webhook_delivered.fetch_add(1, Relaxed);
        } else {
            metrics.webhook_dropped.fetch_add(1, Relaxed);
            tracing::error!(url = %url, code = %alert.code, machine = %alert.machine, "webhook gave up on an alert");
        }
    }
}
