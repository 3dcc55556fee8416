//! The `fabmeter-agent` command line as a newcomer meets it: every command the documentation
//! shows exists with the flags it uses, and `print-config` works before any file is written.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fabmeter-agent");

#[test]
fn every_documented_command_and_flag_exists() {
    let checked = fabmeter_e2e::docs::check_all(Path::new(BIN), "fabmeter-agent")
        .unwrap_or_else(|problems| panic!("documented commands that do not work:\n{problems}"));
    assert!(checked >= 3, "only {checked} documented commands found");
}

#[test]
fn print_config_without_a_config_prints_a_template_that_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .arg("print-config")
        .current_dir(dir.path())
        .output()
        .expect("run print-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("# No --config given"), "{text}");
    let config =
        fabmeter_agent::config::AgentConfig::from_toml(&text).expect("the template parses");
    assert!(!config.machines.is_empty());
    // With an agent.toml in the directory, that file is what it prints (and resolves).
    std::fs::write(dir.path().join("agent.toml"), "site = \"x\"\n").expect("write");
    let out = Command::new(BIN)
        .arg("print-config")
        .current_dir(dir.path())
        .output()
        .expect("run print-config");
    assert!(!out.status.success(), "an incomplete agent.toml is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("badge_key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
