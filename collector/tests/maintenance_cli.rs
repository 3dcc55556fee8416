//! The `maintenance` commands, run as the binary on a real SQLite file: good input changes the
//! ledger (seen by `maintenance status`), bad input is refused with the list of valid values.

use std::process::{Command, Output};

fn site(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("site.toml");
    let text = format!(
        r#"
[site]
id = "atelier"

[ledger]
path = "{}"

[[machines]]
id = "laser-1"
kind = "laser"

[[machines]]
id = "saw-1"
kind = "saw"

[[maintenance.plans]]
name = "lens-cleaning"
kinds = ["laser"]
every_busy_h = 40.0
lock_when_overdue = true
"#,
        dir.join("ledger.sqlite").display()
    );
    std::fs::write(&path, text).expect("write the site file");
    path
}

fn run(site: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fabmeter-collector"))
        .arg("maintenance")
        .args(&args[..1])
        .arg("--config")
        .arg(site)
        .args(&args[1..])
        .env_remove("FABMETER_CONFIG")
        .output()
        .expect("run fabmeter-collector")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn done_out_of_order_and_back_in_service_reach_the_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = site(dir.path());

    let o = run(
        &site,
        &[
            "done",
            "--machine",
            "laser-1",
            "--plan",
            "lens-cleaning",
            "--by",
            "sam",
            "--note",
            "cleaned",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        &site,
        &[
            "out-of-order",
            "--machine",
            "saw-1",
            "--reason",
            "blade chipped",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));

    let o = run(&site, &["status"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status is JSON");
    let m = |id: &str| {
        v["machines"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["machine"] == id).cloned())
            .expect("machine listed")
    };
    assert_eq!(m("laser-1")["plans"][0]["last_service_by"], "sam");
    assert_eq!(m("laser-1")["plans"][0]["state"], "ok");
    assert_eq!(m("saw-1")["lock"], "out of order: blade chipped");

    let o = run(&site, &["back-in-service", "--machine", "saw-1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&site, &["status"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status is JSON");
    let saw = v["machines"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["machine"] == "saw-1").cloned())
        .expect("saw listed");
    assert_eq!(saw["lock"], serde_json::Value::Null);
    assert_eq!(saw["out_of_order"], serde_json::Value::Null);
}

#[test]
fn unknown_machines_and_plans_are_refused_with_the_valid_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = site(dir.path());
    let o = run(
        &site,
        &[
            "done",
            "--machine",
            "laser-9",
            "--plan",
            "lens-cleaning",
            "--by",
            "sam",
        ],
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("unknown machine \"laser-9\"") && t.contains("laser-1, saw-1"),
        "{t}"
    );

    let o = run(
        &site,
        &[
            "done",
            "--machine",
            "saw-1",
            "--plan",
            "lens-cleaning",
            "--by",
            "sam",
        ],
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("plan \"lens-cleaning\" does not apply to machine \"saw-1\"")
            && t.contains("(none)"),
        "{t}"
    );

    let o = run(
        &site,
        &["out-of-order", "--machine", "saw-1", "--reason", " "],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--reason must not be empty"),
        "{}",
        text(&o)
    );
}
