//! Progress of the long commands when standard error is not a terminal (a pipe here, a log file
//! or the journal on a site): one plain line per step, no escape codes, results on standard
//! output. The real binary on the example site file and a fresh ledger.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_fabmeter-collector");

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("site.example.toml")
}

fn run(args: &[&str], ledger: &Path) -> (Output, String, String) {
    let config = example();
    let mut all = args.to_vec();
    let (c, l) = (config.display().to_string(), ledger.display().to_string());
    all.extend(["--config", &c, "--ledger-path", &l]);
    let out = Command::new(BIN)
        .args(&all)
        .env_remove("FABMETER_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run fabmeter-collector");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\r'),
        "no escape codes or carriage returns off a terminal: {stderr:?}"
    );
    (out, stdout, stderr)
}

#[test]
fn invoicing_a_year_prints_one_line_per_month_off_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.sqlite");
    let (_, _, stderr) = run(&["invoice", "--period", "2025"], &ledger);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("invoice: "))
        .collect();
    let mut want = vec!["invoice: started (12 steps)".to_owned()];
    for m in 1..=12 {
        want.push(format!("invoice: 2025-{m:02} ({m} of 12)"));
    }
    assert_eq!(lines[..13], want[..], "{stderr}");
    assert_eq!(lines.len(), 14, "{stderr}");
    assert!(
        lines[13].starts_with("invoice: issued 0 documents for 12 periods in "),
        "{stderr}"
    );
    // The year is really invoiced month by month: a second run finds every month done.
    let (_, stdout, _) = run(&["invoice", "--period", "2025"], &ledger);
    assert_eq!(
        stdout.matches("was already invoiced").count(),
        12,
        "{stdout}"
    );
}

#[test]
fn audit_and_purge_say_what_they_do_off_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.sqlite");
    run(&["invoice", "--period", "2025-12"], &ledger);
    let (_, stdout, stderr) = run(&["audit"], &ledger);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("audit: "))
        .collect();
    assert_eq!(
        lines[..3],
        [
            "audit: started",
            "audit: counting the documents",
            "audit: recomputing 0 documents from the raw events (long on a big ledger)"
        ],
        "{stderr}"
    );
    assert!(
        lines[3].starts_with("audit: 0 documents recomputed in "),
        "{stderr}"
    );
    assert!(
        stdout.contains("audit: 0 documents, 0 differences"),
        "{stdout}"
    );

    let (_, stdout, stderr) = run(&["privacy", "purge", "--dry-run"], &ledger);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("purge: "))
        .collect();
    assert_eq!(
        lines[..2],
        [
            "purge: started",
            "purge: counting what is older than 400 days"
        ],
        "{stderr}"
    );
    assert!(lines[2].starts_with("purge: 0 sessions in "), "{stderr}");
    assert!(stdout.contains("would purge before"), "{stdout}");
}
