//! HTTP API tokens against a running collector (real Mosquitto, HTTP on port 0): tokens made by
//! `fabmeter-collector token`, roles enforced per route, revocation taking effect without a
//! restart, and only hashes on disk.

#[allow(dead_code)]
#[path = "ingest/helpers.rs"]
mod helpers;

use std::time::Duration;

use fabmeter_collector::config::{Config, MemberConfig};
use fabmeter_e2e::{wait_until, Mosquitto};
use helpers::{collector_cli, site_config, TestCollector};

const BILLING: &str = r#"
[site]
id = "atelier"
[billing]
invoice_prefix = "ATL"
[[billing.tariffs]]
name = "laser"
valid_from = "2026-01-01"
busy_per_min = "0.50"
"#;

/// Status of `GET path` with an optional bearer token.
fn status(port: u16, path: &str, token: Option<&str>) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn tokens_open_what_their_role_allows_and_nothing_else() {
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c: Config = site_config(&broker, &["laser-1"], dir.path());
    c.billing = Config::from_toml(BILLING).expect("billing").billing;
    c.members.push(MemberConfig {
        id: "bob".into(),
        name: "Bob".into(),
        badges: vec![],
    });
    let tokens_file = dir.path().join("api-tokens.toml");
    c.http.tokens_file = Some(tokens_file.clone());
    let file = dir.path().join("site.toml");
    std::fs::write(&file, c.to_toml()).expect("write config");

    let create = |name: &str, role: &str, member: Option<&str>| -> String {
        let mut args = vec!["token", "create", "--name", name, "--role", role];
        if let Some(m) = member {
            args.extend(["--member", m]);
        }
        let (ok, out, err) = collector_cli(&file, &args);
        assert!(ok, "{out}{err}");
        out.trim().to_owned()
    };
    let manager = create("claire", "manager", None);
    let alice = create("alice-phone", "member", Some("alice"));
    let monitor = create("prometheus", "monitor", None);
    assert!(manager.starts_with("fm_") && manager.len() > 40);
    let (ok, _, err) = collector_cli(
        &file,
        &[
            "token", "create", "--name", "x", "--role", "member", "--member", "mallory",
        ],
    );
    assert!(!ok && err.contains("unknown member \"mallory\""), "{err}");
    let (ok, _, err) = collector_cli(
        &file,
        &["token", "create", "--name", "claire", "--role", "monitor"],
    );
    assert!(!ok && err.contains("exists"), "{err}");
    let stored = std::fs::read_to_string(&tokens_file).expect("tokens file");
    for t in [&manager, &alice, &monitor] {
        assert!(!stored.contains(t.as_str()), "only hashes on disk");
    }

    let collector = TestCollector::start(c, tempfile::tempdir().expect("tempdir"));
    let port = collector.http.port();
    wait_until(Duration::from_secs(60), "collector ready", || {
        status(port, "/readyz", None) == 200
    });

    // Open to all: the page and the probes.
    assert_eq!(status(port, "/", None), 200);
    assert_eq!(status(port, "/healthz", None), 200);
    // No token, a wrong token: 401.
    for path in [
        "/api/machines",
        "/api/sessions",
        "/metrics",
        "/api/members/alice/statement",
    ] {
        assert_eq!(status(port, path, None), 401, "{path}");
        assert_eq!(status(port, path, Some("fm_wrong")), 401, "{path}");
    }
    // A manager reads everything.
    for path in [
        "/api/machines",
        "/api/sessions",
        "/api/maintenance",
        "/api/costs",
        "/metrics",
        "/api/members/bob/statement",
    ] {
        assert_eq!(status(port, path, Some(&manager)), 200, "{path}");
    }
    assert_eq!(status(port, "/api/maintenance", None), 401);
    // A member reads its own statement only.
    assert_eq!(
        status(port, "/api/members/alice/statement", Some(&alice)),
        200
    );
    assert_eq!(
        status(port, "/api/members/bob/statement", Some(&alice)),
        403
    );
    assert_eq!(status(port, "/api/machines", Some(&alice)), 403);
    assert_eq!(status(port, "/metrics", Some(&alice)), 403);
    assert_eq!(status(port, "/api/maintenance", Some(&alice)), 403);
    assert_eq!(status(port, "/api/costs", Some(&alice)), 403);
    assert_eq!(status(port, "/api/costs", None), 401);
    // A monitor reads the metrics only.
    assert_eq!(status(port, "/metrics", Some(&monitor)), 200);
    assert_eq!(status(port, "/api/sessions", Some(&monitor)), 403);

    // Revoked while the collector runs: refused from then on.
    let (ok, out, err) = collector_cli(&file, &["token", "revoke", "--name", "alice-phone"]);
    assert!(ok, "{out}{err}");
    wait_until(Duration::from_secs(10), "revocation seen", || {
        status(port, "/api/members/alice/statement", Some(&alice)) == 401
    });
    assert_eq!(status(port, "/api/machines", Some(&manager)), 200);
    let (ok, out, _) = collector_cli(&file, &["token", "list"]);
    assert!(
        ok && out.contains("claire") && !out.contains("alice-phone"),
        "{out}"
    );
    drop(collector);
}
