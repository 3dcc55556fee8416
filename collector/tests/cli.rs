//! The `fabmeter-collector` command line as a newcomer meets it: every command the documentation
//! shows exists with the flags it uses, and `print-config` works before any file is written.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fabmeter-collector");

#[test]
fn every_documented_command_and_flag_exists() {
    let checked = fabmeter_e2e::docs::check_all(Path::new(BIN), "fabmeter-collector")
        .unwrap_or_else(|problems| panic!("documented commands that do not work:\n{problems}"));
    assert!(checked >= 10, "only {checked} documented commands found");
}

#[test]
fn a_wrong_documented_flag_is_caught() {
    let wrong = fabmeter_e2e::docs::DocCommand {
        file: "README.md".into(),
        line: 1,
        args: vec!["invoice".into(), "--periode".into(), "2026-11".into()],
    };
    let error = fabmeter_e2e::docs::check(Path::new(BIN), &wrong).expect_err("no --periode");
    assert!(error.contains("--periode"), "{error}");
    let wrong = fabmeter_e2e::docs::DocCommand {
        args: vec!["maintenance".into(), "repair".into()],
        ..wrong
    };
    let error = fabmeter_e2e::docs::check(Path::new(BIN), &wrong).expect_err("no repair");
    assert!(error.contains("`repair` is not a subcommand"), "{error}");
}

#[test]
fn print_config_without_a_config_prints_defaults_that_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .arg("print-config")
        .current_dir(dir.path())
        .env_remove("FABMETER_CONFIG")
        .env_remove("FABMETER_SITE")
        .output()
        .expect("run print-config");
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("# No --config and no --site given"),
        "{text}"
    );
    let config = fabmeter_collector::config::Config::from_toml(&text).expect("the output loads");
    assert_eq!(config.site.id.as_str(), "my-site");
}
