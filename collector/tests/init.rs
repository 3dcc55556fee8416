//! `fabmeter-collector init` as a newcomer runs it: the real binary in an empty directory writes a
//! site file that `check-config` accepts, and a Mosquitto configuration, password and ACL files
//! that a real Mosquitto starts on: the collector's account reads the site, each device's account
//! publishes its own machine's events only, a wrong password is refused. A second `init` does not
//! overwrite anything without `--force`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fabmeter_collector::config::Config;
use fabmeter_e2e::{Mosquitto, MqttCli};

const BIN: &str = env!("CARGO_BIN_EXE_fabmeter-collector");
const WAIT: Duration = Duration::from_secs(20);

fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("FABMETER_CONFIG")
        .env_remove("FABMETER_SITE")
        .output()
        .expect("run fabmeter-collector")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Value of `key = "..."` in a TOML file.
fn value_of(file: &Path, key: &str) -> String {
    let t = std::fs::read_to_string(file).expect("read");
    t.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
        .and_then(|v| v.split('"').next())
        .unwrap_or_else(|| panic!("no {key} in {}:\n{t}", file.display()))
        .to_owned()
}

#[test]
fn init_writes_a_site_that_checks_and_a_broker_that_enforces_its_accounts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (etc, data, mosq) = (root.join("etc"), root.join("data"), root.join("mosq"));
    let port = fabmeter_e2e::free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "init",
            "--site",
            "atelier",
            "--machines",
            "laser-1:laser,saw-1",
            "--dir",
            "etc",
            "--data-dir",
            "data",
            "--broker-data-dir",
            "mosq",
            "--mqtt-url",
            &url,
            "--http-listen",
            "127.0.0.1:0",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let argv = args(&[]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();

    let out = run(&argv, root);
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("next steps"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "fabmeter-collector check-config --config {}",
            etc.join("site.toml").display()
        )),
        "the next steps name the absolute site file: {stdout}"
    );
    let site = etc.join("site.toml");
    for f in [
        site.clone(),
        etc.join("mosquitto.conf"),
        etc.join("fabmeter.passwd"),
        etc.join("fabmeter.acl"),
        etc.join("devices/laser-1.toml"),
        etc.join("devices/saw-1.toml"),
        data.join("device-keys.toml"),
    ] {
        assert!(f.is_file(), "{} written", f.display());
    }
    let site_text = std::fs::read_to_string(&site).expect("site.toml");
    assert!(
        site_text
            .lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count()
            >= 10,
        "commented:\n{site_text}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&site).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the site file holds a password");

    // The site file checks, with its machines, and names the files init wrote.
    let check = run(
        &["check-config", "--config", &site.display().to_string()],
        root,
    );
    assert!(
        check.status.success(),
        "check-config: {}",
        text(&check.stderr)
    );
    assert!(
        text(&check.stdout).contains("config ok: site atelier, 2 machines, 0 members"),
        "{}",
        text(&check.stdout)
    );
    assert!(
        !text(&check.stderr).contains("warning"),
        "no warning for a fresh site: {}",
        text(&check.stderr)
    );
    let config = Config::from_toml(&site_text).expect("loads");
    assert_eq!(config.ledger.path, data.join("ledger.sqlite"));
    assert!(config.security.require_signed_events);

    // Again: refused, nothing changed, the refusal names the file and the way out.
    let again = run(&argv, root);
    assert!(!again.status.success(), "a second init must refuse");
    let err = text(&again.stderr);
    assert!(
        err.contains(&site.display().to_string()) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&site).expect("site.toml"),
        site_text,
        "untouched"
    );
    // With --force: new accounts (the old collector password is gone).
    let old_password = value_of(&site, "password");
    let forced = args(&["--force"]);
    let forced: Vec<&str> = forced.iter().map(String::as_str).collect();
    let out = run(&forced, root);
    assert!(out.status.success(), "init --force: {}", text(&out.stderr));
    let password = value_of(&site, "password");
    assert_ne!(password, old_password, "--force makes new accounts");
    let user = value_of(&site, "username");
    assert_eq!(user, "_collector@atelier");

    // A real Mosquitto on exactly what init wrote.
    fabmeter_e2e::hand_to_broker_user(&[&etc, &mosq]).expect("hand files to mosquitto");
    let broker = Mosquitto::start_from_config(&etc.join("mosquitto.conf"), port)
        .expect("mosquitto starts on init's files");
    let cli = |u: &str, p: &str| {
        MqttCli::new("127.0.0.1", broker.port())
            .credentials(u, p)
            .timeout(WAIT)
    };
    let mut collector = cli(&user, &password)
        .subscribe(&["fabmeter/v1/atelier/#"], 1)
        .expect("the collector's account subscribes to its site");
    let laser = etc.join("devices/laser-1.toml");
    let device = cli(&value_of(&laser, "username"), &value_of(&laser, "password"));
    // The ACL: laser-1's account cannot publish as saw-1 (acknowledged, dropped: MQTT 3.1.1).
    device
        .publish("fabmeter/v1/atelier/saw-1/event", "forged", 1, false)
        .expect("publish (dropped by the ACL)");
    device
        .publish("fabmeter/v1/atelier/laser-1/event", "mine", 1, false)
        .expect("laser-1 publishes its own event");
    let seen = collector
        .wait_for(WAIT, "laser-1's own event", |m| {
            m.topic == "fabmeter/v1/atelier/laser-1/event"
        })
        .expect("the collector receives laser-1's event");
    assert!(
        seen.iter().all(|m| !m.topic.contains("saw-1")),
        "the forged event reached the collector: {seen:?}"
    );
    // A wrong password, and the password of before --force, are refused.
    for bad in ["not-the-password", old_password.as_str()] {
        let refused = cli(&user, bad).publish("fabmeter/v1/atelier/laser-1/event", "x", 1, false);
        assert!(refused.is_err(), "password {bad:?} accepted");
    }
}

#[test]
fn init_explains_bad_machines_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // (site, machines, devices' broker, what the error must name)
    for (site, machines, device_url, names) in [
        ("atelier", "laser-1:", "", ["--machines", "example"]),
        ("Atelier Lyon", "laser-1", "", ["site.id", "atelier-lyon"]),
        // The collector's listener is local only: devices elsewhere need a port of their own.
        (
            "atelier",
            "laser-1",
            "mqtt://workshop.local:1883",
            ["--device-url", "--device-url mqtt://workshop.local:1884"],
        ),
    ] {
        let mut args = vec![
            "init",
            "--site",
            site,
            "--machines",
            machines,
            "--dir",
            "etc",
            "--data-dir",
            "data",
        ];
        if !device_url.is_empty() {
            args.extend(["--device-url", device_url]);
        }
        let out = run(&args, tmp.path());
        assert!(!out.status.success(), "{site} {machines}");
        let err = text(&out.stderr);
        assert!(names.iter().all(|n| err.contains(n)), "{names:?} in: {err}");
        assert!(!tmp.path().join("etc").exists(), "nothing written");
    }
}
