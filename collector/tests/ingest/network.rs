//! Network collectors on one private PostgreSQL cluster, through a real Mosquitto: one process
//! serving several sites (each site's events in its own ledger, the network view across them),
//! and three processes sharing every site through an MQTT shared subscription while one of them
//! is killed (SIGKILL) again and again: every event is stored exactly once.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fabmeter_collector::ledger::{Ledger, PgLedger, SessionQuery};
use fabmeter_collector::netview::{NetMachine, NetworkSummary};
use fabmeter_collector::network::Network;
use fabmeter_e2e::{wait_until, KillOnDrop, Mosquitto, Postgres, VictoriaMetrics};
use fabmeter_protocol::Id;

use crate::helpers::*;

const LONG: Duration = Duration::from_secs(180);
const DAY_MS: u64 = 86_400_000;

/// A site file: machines `m0` (laser) and `m1` (cnc), member alice with the test badge.
fn site_file(dir: &Path, id: &str) {
    let text = format!(
        "[site]\nid = \"{id}\"\nname = \"Atelier {id}\"\n\n\
         [[machines]]\nid = \"m0\"\nkind = \"laser\"\n\n\
         [[machines]]\nid = \"m1\"\nkind = \"cnc\"\n\n\
         [[members]]\nid = \"alice\"\nname = \"Alice\"\nbadges = [\"{}\"]\n",
        badge()
    );
    std::fs::write(dir.join(format!("{id}.toml")), text).expect("site file");
}

/// A network collector file named `name` serving `sites` (empty: all) of `dir/sites`.
fn collector_file(
    dir: &Path,
    name: &str,
    sites: &[&str],
    broker: &Mosquitto,
    pg: &str,
    extra: &str,
) -> PathBuf {
    let list: Vec<String> = sites.iter().map(|s| format!("\"{s}\"")).collect();
    let text = format!(
        "[network]\nname = \"{name}\"\nsites_dir = \"sites\"\nsites = [{}]\n\n\
         [mqtt]\nurl = \"{}\"\n{extra}\n\
         [ledger]\nurl = \"{pg}\"\nbatch_max = 200\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
        list.join(", "),
        broker.url()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("collector file");
    path
}

fn json<T: serde::de::DeserializeOwned>(c: &TestCollector, path: &str) -> T {
    let r = c.get(path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    serde_json::from_str(&r.text()).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.text()))
}

fn keys_in(url: &str) -> BTreeSet<(String, String, u32, u32)> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    c.query("SELECT site, machine, boot, seq FROM events", &[])
        .expect("events")
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                u32::try_from(r.get::<_, i64>(2)).expect("boot"),
                u32::try_from(r.get::<_, i64>(3)).expect("seq"),
            )
        })
        .collect()
}

const BREST_BILLING: &str = r#"
[billing]
invoice_prefix = "BRE"
timezone = "Europe/Paris"
vat_rate = "20"
default_plan = "visitor"

[billing.seller]
name = "Atelier de Brest SAS"
address = "1 quai de la Douane\n29200 Brest"
siret = "123 456 789 00012"
vat_id = "FR12123456789"

[[billing.tariffs]]
name = "laser"
valid_from = "2020-01-01"
busy_per_min = "1.00"
idle_per_min = "0"
increment_min = 1
label = "Laser"

[[billing.tariffs]]
name = "cnc"
valid_from = "2020-01-01"
busy_per_min = "1.00"
idle_per_min = "0"
increment_min = 1
label = "CNC"

[[billing.plans]]
name = "visitor"
"#;

/// The second day of the previous calendar month, 00:00 UTC, unix ms: sessions from there for
/// two weeks fall in the period `invoice` bills by default.
fn previous_month_ms() -> u64 {
    use fabmeter_collector::billing::calendar::{civil_from_days, days_from_civil};
    let today = i64::try_from(fabmeter_collector::ingest::now_ms() / DAY_MS).expect("days");
    let (y, m, _) = civil_from_days(today);
    let (y, m) = if m == 1 { (y - 1, 12) } else { (y, m - 1) };
    u64::try_from(days_from_civil(y, m, 2)).expect("days") * DAY_MS
}

#[test]
fn one_collector_serves_several_sites_from_the_shared_ledger() {
    let mut pg = Postgres::start().expect("PostgreSQL");
    let url = pg.create_database("network").expect("createdb");
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sites")).expect("sites dir");
    for s in ["lyon", "brest", "lille"] {
        site_file(&dir.path().join("sites"), s);
    }
    // Brest bills, by its own rules: 1.00 EUR per busy minute on either machine.
    let brest = dir.path().join("sites").join("brest.toml");
    let mut text = std::fs::read_to_string(&brest).expect("read");
    text.push_str(BREST_BILLING);
    std::fs::write(&brest, text).expect("write");
    // This collector serves two of the three sites of the directory.
    let path = collector_file(dir.path(), "a", &["lyon", "brest"], &broker, &url, "");
    let text = std::fs::read_to_string(&path).expect("read");
    let network = Network::load(&path, &text).expect("network file");
    assert_eq!(network.sites.len(), 2);
    let collector = TestCollector::start_network(network, tempfile::tempdir().expect("tmp"));
    wait_until(LONG, "collector ready", || {
        collector.get("/readyz").status == 200
    });

    let t0 = previous_month_ms();
    let mut rng = Rng::new(11);
    let mut clients = Vec::new();
    let mut expected: HashMap<&str, Expected> = HashMap::new();
    let mut sent = 0;
    for site in ["lyon", "brest"] {
        let (per_machine, exp) = workload_at(site, t0, &["m0", "m1"], 1, 6, 3);
        for (m, mut msgs) in per_machine {
            let dups: Vec<Msg> = msgs.iter().filter(|_| rng.below(5) == 0).cloned().collect();
            msgs.extend(dups);
            rng.shuffle(&mut msgs);
            sent += msgs.len();
            clients.push((format!("device-{site}-{m}"), msgs));
        }
        expected.insert(site, exp);
    }
    // A site this collector does not serve, on a topic it does not subscribe to, and a message
    // of the unserved site lille: nothing of lille reaches this collector.
    let (lille, _) = workload_at("lille", t0, &["m0"], 1, 1, 1);
    publish_all(broker.port(), "device-lille", &lille["m0"]);
    publish_parallel(broker.port(), clients);
    wait_until(LONG, "every message acknowledged", || {
        collector.metric("fabmeter_acked_total") >= sent as u64
    });
    assert_eq!(
        collector.metric("fabmeter_acked_total"),
        sent as u64,
        "lille is not received"
    );

    // Each site's events in its own ledger, once.
    for (site, exp) in &expected {
        let l = PgLedger::open(&url, &Id::new(site).expect("id"), HashMap::new()).expect("open");
        assert_eq!(
            l.totals().expect("totals").events,
            exp.keys.len() as u64,
            "{site}"
        );
        let sessions = l.sessions(&SessionQuery::default()).expect("sessions");
        assert_eq!(sessions.len(), exp.sessions.len(), "{site}");
        for s in &sessions {
            assert_eq!(
                s.member.as_deref(),
                Some("alice"),
                "{site}: badge resolved by the site's members"
            );
        }
    }
    let keys = keys_in(&url);
    assert!(keys.iter().all(|(site, ..)| site != "lille"));
    assert_eq!(
        keys.len(),
        expected.values().map(|e| e.keys.len()).sum::<usize>(),
        "no key stored twice or under the wrong site"
    );

    // The network view.
    let n: NetworkSummary = json(&collector, "/api/network/sites?days=90");
    assert_eq!(n.collector, "a");
    let ids: Vec<&str> = n.sites.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(ids, ["brest", "lyon"]);
    for s in &n.sites {
        let exp = &expected[s.site.as_str()];
        assert_eq!(s.machines, 2, "{}: {:?}", s.site, s);
        assert_eq!(s.sessions, exp.sessions.len() as u64, "{}", s.site);
        let busy: u64 = exp.sessions.values().map(|b| u64::from(*b)).sum();
        assert!(
            (s.busy_hours - (busy as f64 / 360.0).round() / 10.0).abs() < 1e-9,
            "{}",
            s.site
        );
        assert_eq!(s.members, 1, "{}", s.site);
        assert_eq!(s.name, format!("Atelier {}", s.site));
    }
    assert_eq!(
        n.total.sessions,
        n.sites.iter().map(|s| s.sessions).sum::<u64>()
    );
    let cnc: Vec<NetMachine> = json(&collector, "/api/network/machines?kind=cnc");
    assert_eq!(
        cnc.iter()
            .map(|m| (m.site.as_str(), m.machine.as_str()))
            .collect::<Vec<_>>(),
        [("brest", "m1"), ("lyon", "m1")]
    );
    // Brest invoices the sessions on its machines by its rules, through the network file; lyon
    // does not bill.
    let (ok, out, err) = collector_cli(&path, &["invoice", "--site", "brest"]);
    assert!(ok, "{out}{err}");
    // Per machine: sessions of 180 s, then 181 to 185 s, each rounded up to the minute:
    // 3 + 5 x 4 = 23 minutes, two machines, 1.00 EUR a minute.
    assert!(
        out.contains("issued BRE-")
            && out.contains(" alice ")
            && out.contains("46.00 EUR excl. VAT"),
        "{out}"
    );
    let (ok, out, err) = collector_cli(&path, &["invoice", "--site", "lyon"]);
    assert!(
        ok && out.contains("site lyon: no [billing] section, skipped"),
        "{out}{err}"
    );
    // Every site the file serves, one after the other: brest's period is already invoiced.
    let (ok, out, err) = collector_cli(&path, &["invoice"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("site brest:\nperiod ") && out.contains("already invoiced"),
        "{out}"
    );
    assert!(out.contains("1 sites invoiced, 1 without billing"), "{out}");
    let r = collector.get("/api/network/machines?site=lille");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("no site lille"), "{}", r.text());
    assert_eq!(collector.get("/api/network/sites?days=0").status, 400);
    let page = collector.get("/");
    assert!(
        page.status == 200 && page.text().contains("fabmeter network"),
        "{}",
        page.status
    );

    // Each site's own API and page under /sites/{id}/.
    let lyon: serde_json::Value = json(&collector, "/sites/lyon/api/machines");
    assert_eq!(lyon["site"], "lyon");
    assert_eq!(lyon["machines"].as_array().map(Vec::len), Some(2));
    let page = collector.get("/sites/lyon");
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("Atelier lyon")
            && page.text().contains("<base href=\"/sites/lyon/\">")
    );
    assert_eq!(
        collector.get("/sites/lyon/").status,
        308,
        "redirected to /sites/lyon"
    );
    assert_eq!(collector.get("/sites/lille/api/machines").status, 404);
    drop(pg.kill());
}

#[test]
fn three_collectors_share_every_site_and_lose_nothing_when_one_is_killed_again_and_again() {
    let pg = Postgres::start().expect("PostgreSQL");
    let url = pg.create_database("shared").expect("createdb");
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let sites = ["s1", "s2", "s3"];
    std::fs::create_dir(dir.path().join("sites")).expect("sites dir");
    for s in sites {
        site_file(&dir.path().join("sites"), s);
    }
    let files: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| collector_file(dir.path(), n, &[], &broker, &url, "shared_group = \"fm\"\n"))
        .collect();
    // A collector process and its HTTP port (from the line it prints at start).
    let spawn = |file: &Path| -> (KillOnDrop, u16) {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
            .args(["run", "--config"])
            .arg(file)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a collector");
        let stdout = child.stdout.take().expect("stdout");
        let child = KillOnDrop(child);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("read the start line");
        let port = line
            .trim()
            .strip_prefix("fabmeter collector: http://127.0.0.1:")
            .and_then(|r| r.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("unexpected start line {line:?}"));
        (child, port)
    };
    let ready = |port: u16| {
        fabmeter_e2e::http::get("127.0.0.1", port, "/readyz").is_ok_and(|r| r.status == 200)
    };
    let mut collectors: Vec<(KillOnDrop, u16)> = files.iter().map(|f| spawn(f)).collect();
    for (_, port) in &collectors {
        wait_until(LONG, "collector subscribed", || ready(*port));
    }
    let t0 = fabmeter_collector::ingest::now_ms() - 10 * DAY_MS;
    let mut all = Vec::new();
    let mut expected = BTreeSet::new();
    for site in sites {
        let (per_machine, exp) = workload_at(site, t0, &["m0", "m1"], 2, 30, 4);
        for (m, msgs) in per_machine {
            all.push((format!("device-{site}-{m}"), msgs));
        }
        expected.extend(
            exp.keys
                .into_iter()
                .map(|(m, b, s)| (site.to_owned(), m, b, s)),
        );
    }
    let total = expected.len();
    let port = broker.port();
    let publisher = std::thread::spawn(move || {
        // Slowly enough that the kills land mid-stream: a client per machine, in rounds.
        let mut rounds: Vec<(String, Vec<Msg>)> = all;
        let chunk = 40;
        let mut i = 0;
        loop {
            let batch: Vec<(String, Vec<Msg>)> = rounds
                .iter_mut()
                .filter(|(_, m)| i < m.len())
                .map(|(id, m)| (id.clone(), m[i..(i + chunk).min(m.len())].to_vec()))
                .collect();
            if batch.is_empty() {
                break;
            }
            publish_parallel(port, batch);
            i += chunk;
        }
    });
    // Kill collector b at a quarter, half and three quarters of the stream, restarting it
    // (same name, same client id, same persistent session) each time.
    for quarter in 1..=3 {
        wait_until(LONG, "the stream progressing", || {
            keys_in(&url).len() >= total * quarter / 4
        });
        let _ = collectors[1].0 .0.kill();
        let _ = collectors[1].0 .0.wait();
        collectors[1] = spawn(&files[1]);
    }
    publisher.join().expect("publisher");
    wait_until(LONG, "every event stored", || keys_in(&url).len() >= total);
    let stored = keys_in(&url);
    assert_eq!(stored.len(), total, "no event lost, none doubled");
    assert_eq!(stored, expected, "exactly the events sent");
    // And the sessions they make, once each.
    for site in sites {
        let l = PgLedger::open(&url, &Id::new(site).expect("id"), HashMap::new()).expect("open");
        assert_eq!(
            l.sessions(&SessionQuery::default())
                .expect("sessions")
                .len(),
            2 * 2 * 30,
            "{site}"
        );
    }
    drop(collectors);
}

#[test]
fn each_site_writes_its_time_series_to_its_own_tenant() {
    // A VictoriaMetrics cluster gives each account its own path (`/insert/<account>/influx`); it
    // is not packaged for Debian, so two single VictoriaMetrics stand for two tenants, each
    // answering only under its site's path, on a port given as the site's tenant.
    let pg = Postgres::start().expect("PostgreSQL");
    let url = pg.create_database("tenants").expect("createdb");
    let broker = Mosquitto::start().expect("mosquitto");
    let vms: Vec<VictoriaMetrics> = ["t1", "t2"]
        .iter()
        .map(|s| {
            VictoriaMetrics::builder()
                .path_prefix(format!("/insert/{s}/influx"))
                .start()
                .expect("victoria-metrics")
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let sites = dir.path().join("sites");
    std::fs::create_dir(&sites).expect("sites dir");
    for (s, vm) in ["t1", "t2"].iter().zip(&vms) {
        site_file(&sites, s);
        let path = sites.join(format!("{s}.toml"));
        let text = std::fs::read_to_string(&path).expect("read");
        let text = text.replacen(
            "[site]\n",
            &format!("[site]\ntenant = \"{}\"\n", vm.port()),
            1,
        );
        std::fs::write(&path, text).expect("write");
    }
    let path = collector_file(
        dir.path(),
        "ts",
        &[],
        &broker,
        &url,
        "\n[timeseries]\nurl = \"http://127.0.0.1:{tenant}/insert/{site}/influx\"\n",
    );
    let text = std::fs::read_to_string(&path).expect("read");
    let network = Network::load(&path, &text).expect("network file");
    let collector = TestCollector::start_network(network, tempfile::tempdir().expect("tmp"));
    wait_until(LONG, "collector ready", || {
        collector.get("/readyz").status == 200
    });
    let t0 = fabmeter_collector::ingest::now_ms() - DAY_MS;
    for s in ["t1", "t2"] {
        let (per_machine, _) = workload_at(s, t0, &["m0"], 1, 2, 1);
        publish_all(broker.port(), &format!("device-{s}"), &per_machine["m0"]);
    }
    for (s, vm) in ["t1", "t2"].iter().zip(&vms) {
        wait_until(LONG, "the site's points in its tenant", || {
            vm.force_flush();
            !vm.export(&format!("{{site=\"{s}\"}}")).is_empty()
        });
    }
    for (s, vm) in ["t1", "t2"].iter().zip(&vms) {
        let all = vm.export(r#"{site=~".+"}"#);
        assert!(!all.is_empty());
        for series in &all {
            assert_eq!(
                series.label("site"),
                Some(*s),
                "{s}'s tenant holds {}",
                series.name()
            );
        }
    }
    drop(collector);
}
