//! The README's first command, for real: `fabmeter demo` starts, its machines change state on
//! `/api/machines` within 30 s, and it stops cleanly on SIGTERM.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use fabmeter_e2e::{send_signal, wait_for_exit, wait_until, KillOnDrop, Signal};

#[test]
fn the_demo_shows_machines_changing_state_within_30_seconds() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_fabmeter"))
            .args(["demo", "--http-port", "0", "--mqtt-port", "0", "--data-dir"])
            .arg(data.path().join("demo"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the demo"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    // "fabmeter demo: http://127.0.0.1:PORT/"
    let port: u16 = first
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no URL in the demo's first line: {first:?}"));
    // Keep reading its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});

    let machines = || -> Vec<(String, String)> {
        let Ok(r) = fabmeter_e2e::http::get("127.0.0.1", port, "/api/machines") else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap_or_default();
        v["machines"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["id"].as_str().unwrap_or_default().to_owned(),
                            m["state"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut seen = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    wait_until(
        Duration::from_secs(30),
        "a machine changes state twice on /api/machines",
        || {
            for (id, state) in machines() {
                seen.entry(id).or_default().insert(state);
            }
            seen.values().any(|states| {
                states
                    .iter()
                    .filter(|s| ["off", "idle", "busy"].contains(&s.as_str()))
                    .count()
                    >= 2
            })
        },
    );
    assert!(
        seen.len() >= 4,
        "the demo workshop has several machines: {seen:?}"
    );
    let page = fabmeter_e2e::http::get("127.0.0.1", port, "/").expect("the web page");
    assert!(
        page.text().contains("api(\"api/machines\")") && page.text().contains("<base href=\"/\">"),
        "the page polls the API (relative to its base, /)"
    );
    // The demo bills: a member's statement of the month so far, as the page shows it.
    assert!(
        page.text().contains("/statement"),
        "the page shows statements"
    );
    let st = fabmeter_e2e::http::get("127.0.0.1", port, "/api/members/alice/statement")
        .expect("statement");
    assert_eq!(st.status, 200, "{}", st.text());
    let st: serde_json::Value = serde_json::from_str(&st.text()).expect("statement json");
    assert_eq!(st["member"], "alice");
    assert!(st["totals"]["excl_cents"].is_i64(), "{st}");

    // The demo runs signed: its events are accepted, none refused for a bad or missing signature.
    let metrics = fabmeter_e2e::http::get("127.0.0.1", port, "/metrics")
        .expect("metrics")
        .text();
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    assert!(
        metric("fabmeter_accepted_total").is_some_and(|n| n > 0.0),
        "{metrics}"
    );
    assert_eq!(
        metric("fabmeter_rejected_total{reason=\"signature\"}").unwrap_or(0.0),
        0.0,
        "{metrics}"
    );
    assert!(
        data.path().join("demo").join("device-keys.toml").exists(),
        "the demo wrote its device keys"
    );

    send_signal(child.0.id(), Signal::Term).expect("SIGTERM");
    let status = wait_for_exit(&mut child.0, Duration::from_secs(30)).expect("the demo stops");
    assert!(status.success(), "clean exit: {status:?}");
}
