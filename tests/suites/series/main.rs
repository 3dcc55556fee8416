//! What the collector really writes, read back from VictoriaMetrics after a simulated run, against
//! what docs/SCHEMA.md documents and what the dashboards' Flux queries name.
//!
//! A real Mosquitto and VictoriaMetrics (the harness), the collector in-process with a real SQLite
//! ledger, the workshop simulator (firmware devices over MQTT, a day per minute) for states,
//! sessions, telemetry and counters; a bench machine without a device whose access denial and
//! fault the test publishes itself (the simulator never produces them); a service plan with tiny
//! intervals so that plan states change; an out-of-order mark (as `maintenance out-of-order`
//! does) for downtime. VictoriaMetrics turns field `f` of measurement `m` into the metric `m_f`
//! with the tags as labels: the series API gives back every (measurement, field) pair and the tag
//! keys of each measurement.
//!
//! Asserted: every SCHEMA.md measurement, field and tag was written and nothing undocumented
//! was; every measurement, field and tag that a dashboard query names was written (names parsed
//! by the dashboards suite's `names.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use fabmeter_agent::sim::{self, SimConfig};
use fabmeter_collector::app::Application;
use fabmeter_collector::config::{Config, MachineConfig, PlanConfig, TimeSeriesSettings};
use fabmeter_collector::ingest::now_ms;
use fabmeter_collector::ledger::SqliteLedger;
use fabmeter_collector::maintenance::admin;
use fabmeter_collector::protocol::message::{DenyReason, Event, EventBody, FaultCode};
use fabmeter_collector::protocol::{encode_to_vec, BadgeHash};
use fabmeter_e2e::{try_wait_until, Mosquitto, VictoriaMetrics};
use tokio_util::sync::CancellationToken;

#[allow(dead_code)]
#[path = "../dashboards/names.rs"]
mod names;

const SITE: &str = "readback";
/// The machine without a device: the test publishes its events.
const BENCH: &str = "bench-1";
/// The simulated run must have written everything by then.
const RUN: Duration = Duration::from_secs(60);
const DAY_MS: u64 = 86_400_000;

/// Measurement → (fields, tag keys), as written.
type Written = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schema() -> names::Schema {
    let md = std::fs::read_to_string(repo().join("docs/SCHEMA.md")).expect("docs/SCHEMA.md");
    names::parse_schema(&md)
}

/// Every series VictoriaMetrics holds, split into measurement and field by the documented
/// measurement names; a metric of no documented measurement is returned as its own name with
/// field `?`.
fn written(vm: &VictoriaMetrics, measurements: &BTreeSet<String>) -> Written {
    vm.force_flush();
    let mut out = Written::new();
    for s in vm.export(r#"{__name__!=""}"#) {
        let name = s.name().to_owned();
        let split = measurements
            .iter()
            .filter_map(|m| Some((m, name.strip_prefix(m.as_str())?.strip_prefix('_')?)))
            .max_by_key(|(m, _)| m.len());
        let (m, f) = split.map_or((name.clone(), "?".to_owned()), |(m, f)| {
            (m.clone(), f.to_owned())
        });
        let e = out.entry(m).or_default();
        e.0.insert(f);
        e.1.extend(s.metric.keys().filter(|k| *k != "__name__").cloned());
    }
    out
}

/// What SCHEMA.md documents that `w` lacks, and what `w` holds that SCHEMA.md does not document.
fn schema_vs_written(s: &names::Schema, w: &Written) -> (Vec<String>, Vec<String>) {
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    for (m, (tags, fields)) in &s.measurements {
        let Some((wf, wt)) = w.get(m) else {
            missing.push(format!("measurement {m}"));
            continue;
        };
        for f in fields.difference(wf) {
            missing.push(format!("{m}.{f}"));
        }
        let want: BTreeSet<String> = s.common_tags.union(tags).cloned().collect();
        for t in want.difference(wt) {
            missing.push(format!("{m} tag {t}"));
        }
        for f in wf.difference(fields) {
            extra.push(format!("{m}.{f}"));
        }
        for t in wt.difference(&want) {
            extra.push(format!("{m} tag {t}"));
        }
    }
    for m in w.keys().filter(|m| !s.measurements.contains_key(*m)) {
        extra.push(format!("measurement {m}"));
    }
    (missing, extra)
}

/// Names a dashboard query uses that were not written.
fn query_vs_written(query: &str, w: &Written) -> Vec<String> {
    let n = names::names_of(query);
    let mut errs = n.errors.clone();
    // A query naming no measurement (`schema.tagValues` with a predicate) reads any of them.
    let of_query: Vec<&(BTreeSet<String>, BTreeSet<String>)> = if n.measurements.is_empty() {
        w.values().collect()
    } else {
        n.measurements.iter().filter_map(|m| w.get(m)).collect()
    };
    for m in n.measurements.iter().filter(|m| !w.contains_key(*m)) {
        errs.push(format!("measurement {m:?} was not written"));
    }
    for f in &n.fields {
        if !of_query.iter().any(|(fields, _)| fields.contains(f)) {
            errs.push(format!(
                "field {f:?} of {:?} was not written",
                n.measurements
            ));
        }
    }
    for c in &n.columns {
        let created = names::STANDARD_COLUMNS.contains(&c.as_str()) || n.declared.contains(c);
        let written = of_query
            .iter()
            .any(|(fields, tags)| fields.contains(c) || tags.contains(c));
        if !created && !written {
            errs.push(format!(
                "column {c:?} is no tag or field written on {:?}",
                n.measurements
            ));
        }
    }
    for t in &n.tag_args {
        if !w.values().any(|(_, tags)| tags.contains(t)) {
            errs.push(format!("tag {t:?} was never written"));
        }
    }
    errs
}

fn site_config(broker: &Mosquitto, vm: &VictoriaMetrics, dir: &Path) -> Config {
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut c = fabmeter::demo::collector_config(broker.port(), http, dir);
    c.site.id = SITE.into();
    c.mqtt.client_id = "fm-collector-readback".into();
    // The test bench's hand-made events are unsigned; the simulated machines' events are signed
    // and, having keys, must still verify.
    c.security.require_signed_events = false;
    c.machines.push(MachineConfig {
        id: BENCH.into(),
        name: "Test bench".into(),
        kind: "bench".into(),
        tariff: None,
        sensing: None,
    });
    c.billing = None;
    c.timeseries = Some(TimeSeriesSettings {
        url: vm.base_url(),
        org: "fabmeter".into(),
        bucket: "fabmeter".into(),
        token: String::new(),
        backlog_dir: None,
        backlog_max_mib: 16,
    });
    c.maintenance.check_s = 1;
    // Both intervals, so both `busy_h_left` and `days_left` are written; a tenth of a busy hour
    // is used up within seconds of simulated use, so plan states change.
    c.maintenance.plans = vec![PlanConfig {
        name: "inspection".into(),
        machines: c.machines.iter().map(|m| m.id.clone()).collect(),
        kinds: vec![],
        every_busy_h: Some(0.1),
        every_days: Some(30.0),
        warn_before: 0.5,
        lock_when_overdue: false,
    }];
    // Cost recovery every second, opening hours round the clock (so utilisation is written) and
    // a purchase price for the first machine (cost, margin, payback, break-even).
    c.costs = Some(fabmeter_collector::costs::CostsConfig {
        opening_hours: Some("Mon-Sun 00:00-24:00".into()),
        timezone: Some("UTC".into()),
        machines: vec![fabmeter_collector::costs::MachineCost {
            machine: c.machines[0].id.clone(),
            purchase_price_cents: 1_200_000,
            purchase_date: fabmeter_collector::billing::Date::parse("2026-01-01").expect("date"),
            life_months: 60,
            consumables_cents_per_busy_h: 150,
        }],
        series_s: 1,
    });
    c
}

/// An event of the bench, as its device would publish it.
fn bench_event(broker: &Mosquitto, seq: u32, body: EventBody) {
    let ev = Event {
        v: 1,
        box_id: None,
        boot: 1,
        seq,
        uptime_ms: u64::from(seq) * 1000,
        sent_uptime_ms: u64::from(seq) * 1000,
        ts: Some(now_ms()),
        event: body,
    };
    let payload = encode_to_vec(&ev).expect("a valid event");
    broker
        .client()
        .publish(
            &format!("fabmeter/v1/{SITE}/{BENCH}/event"),
            payload,
            1,
            false,
        )
        .expect("publish a bench event");
}

#[test]
fn every_documented_and_queried_series_is_written_and_nothing_else() {
    let s = schema();
    let broker = Mosquitto::start().expect("start mosquitto");
    let vm = VictoriaMetrics::start().expect("start victoria-metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let config = site_config(&broker, &vm, dir.path());
    let app = rt
        .block_on(Application::build(config.clone()))
        .expect("collector builds");
    let http = app.http_addr().port();
    let stop = CancellationToken::new();
    let collector = rt.spawn(app.run(stop.clone()));
    try_wait_until(Duration::from_secs(30), "the collector is ready", || {
        fabmeter_e2e::http::get("127.0.0.1", http, "/readyz").is_ok_and(|r| r.is_success())
    })
    .expect("collector ready");

    // The workshop, on the Wednesday a week or more ago from 08:45 UTC (opening at 09:00), a day
    // per minute, with telemetry every simulated minute.
    let mut sc = SimConfig::demo(SITE, broker.port());
    // Signed, as the demo's site requires.
    sc.device_key_secret = Some(
        fabmeter::demo::write_device_keys(&dir.path().join(fabmeter::demo::DEVICE_KEYS_FILE))
            .expect("device keys"),
    );
    // A Wednesday, so that the workshop is open whatever day the test runs (a week ago on a
    // Sunday was closed all day: no machine ran, no session).
    let mut day = now_ms() / DAY_MS - 7;
    while (day + 3) % 7 != 2 {
        day -= 1; // 1970-01-01 was a Thursday: (day + 3) % 7 is 0 on Mondays.
    }
    sc.start_unix_ms = day * DAY_MS + (8 * 60 + 45) * 60_000;
    sc.telemetry_s = 60;
    sc.seed = 3;
    let sim_stop = CancellationToken::new();
    let simulator = rt.spawn(sim::run(sc, sim_stop.clone()));

    // The bench: a refused badge and a fault; then out of order.
    bench_event(
        &broker,
        1,
        EventBody::AccessDenied {
            badge: BadgeHash([7; 8]),
            reason: DenyReason::NotAllowed,
        },
    );
    bench_event(
        &broker,
        2,
        EventBody::Fault {
            code: FaultCode::Sensor,
            detail: "clamp open".try_into().expect("short text"),
        },
    );
    let mut ledger = SqliteLedger::open(
        &config.ledger.path,
        &config.site_id().expect("site"),
        config.badge_directory(),
    )
    .expect("open the ledger beside the running collector");
    admin::out_of_order(&config, &mut ledger, BENCH, "belt torn", "tech", now_ms())
        .expect("out of order");

    let measurements: BTreeSet<String> = s.measurements.keys().cloned().collect();
    let done = try_wait_until(RUN, "every documented series in VictoriaMetrics", || {
        schema_vs_written(&s, &written(&vm, &measurements))
            .0
            .is_empty()
    });
    let w = written(&vm, &measurements);
    let (missing, extra) = schema_vs_written(&s, &w);
    sim_stop.cancel();
    stop.cancel();
    let _ = rt.block_on(simulator);
    let _ = rt.block_on(collector);
    assert!(
        done.is_ok() && missing.is_empty(),
        "documented in docs/SCHEMA.md but not written within {RUN:?}: {missing:?}\nwritten: {w:#?}"
    );
    assert!(
        extra.is_empty(),
        "written but not documented in docs/SCHEMA.md: {extra:?}"
    );

    // The dashboards: every name a query uses was written.
    let dashboards = names::dashboards_in(&repo().join("dashboards/dashboards"));
    let mut errs = Vec::new();
    let mut queries = 0;
    for d in &dashboards {
        for (at, q) in d.queries() {
            queries += 1;
            errs.extend(
                query_vs_written(&q, &w)
                    .into_iter()
                    .map(|e| format!("{at}: {e}")),
            );
        }
    }
    assert!(queries >= 30, "only {queries} dashboard queries found");
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn the_comparisons_catch_a_missing_or_undocumented_series() {
    let s = names::parse_schema(
        "| tag | values |\n|---|---|\n| `site` | x |\n\n\
         | measurement | extra tags | fields |\n|---|---|---|\n\
         | `maintenance` | `plan` | `state`, `days_left` |\n",
    );
    let w = |fields: &[&str], tags: &[&str]| -> Written {
        BTreeMap::from([(
            "maintenance".to_owned(),
            (
                fields.iter().map(|f| (*f).to_owned()).collect(),
                tags.iter().map(|t| (*t).to_owned()).collect(),
            ),
        )])
    };
    let all = w(&["state", "days_left"], &["site", "plan"]);
    assert_eq!(schema_vs_written(&s, &all), (vec![], vec![]));
    let (missing, extra) = schema_vs_written(&s, &w(&["state", "busy"], &["site"]));
    assert_eq!(missing, ["maintenance.days_left", "maintenance tag plan"]);
    assert_eq!(extra, ["maintenance.busy"]);

    let q = |body: &str| {
        format!(
            "from(bucket: v.defaultBucket)\n  |> range(start: -1d)\n  |> filter(fn: (r) => {body})"
        )
    };
    let ok = q(r#"r._measurement == "maintenance" and r._field == "state" and r.plan == "x""#);
    assert_eq!(query_vs_written(&ok, &all), Vec::<String>::new());
    let bad_field = q(r#"r._measurement == "maintenance" and r._field == "hours""#);
    assert_eq!(query_vs_written(&bad_field, &all).len(), 1);
    let bad_tag =
        q(r#"r._measurement == "maintenance" and r._field == "state" and r.member == "a""#);
    assert_eq!(query_vs_written(&bad_tag, &all).len(), 1);
    let bad_measurement = q(r#"r._measurement == "availability" and r._field == "state""#);
    assert_eq!(query_vs_written(&bad_measurement, &all).len(), 2);
}
