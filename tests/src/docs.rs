//! The commands the documentation shows, checked against the binaries: every fenced or inline code
//! line of `README.md`, `docs/*.md` and the crates' `README.md` that runs one of our programs
//! names subcommands and flags that exist (`<program> <subcommands…> --help` succeeds and lists
//! every `--flag` the line uses).
//!
//! A line is a command of `program` when a word is `program` or ends with `/program`
//! (`target/release/fabmeter-collector …`), or when it is `cargo run [-p P] [--bin B] … -- args`
//! whose binary is `program` (the root package's default binary is `fabmeter`). The words after
//! the program are read like a shell would (quotes, `\` line continuations), up to a pipe,
//! redirection, `&&`, `;` or comment. `[--dry-run]` (an optional flag) is checked as `--dry-run`;
//! `<placeholder>` and `...` words are skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One documented command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocCommand {
    /// The file, relative to the repository root.
    pub file: String,
    /// 1-based line of the command's first line.
    pub line: usize,
    /// The words after the program name.
    pub args: Vec<String>,
}

impl std::fmt::Display for DocCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: `{}`", self.file, self.line, self.args.join(" "))
    }
}

/// The repository root (the workspace directory holding this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Markdown files the check reads: `README.md`, `docs/*.md`, `*/README.md`.
pub fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut in_dir = |dir: &Path, only_readme: bool| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if only_readme {
                let readme = path.join("README.md");
                if readme.is_file() {
                    files.push(readme);
                }
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    };
    in_dir(&root.join("docs"), false);
    in_dir(root, true);
    files.retain(|f| {
        !f.components()
            .any(|c| matches!(c.as_os_str().to_str(), Some("target" | "node_modules")))
    });
    files.sort();
    files
}

/// Every command of `program` in the documentation under `root`.
pub fn documented_commands(root: &Path, program: &str) -> Vec<DocCommand> {
    let mut found = Vec::new();
    for path in doc_files(root) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let file = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        for (line, code) in code_lines(&text) {
            if let Some(args) = command_of(&words(&code), program) {
                for args in alternatives(args) {
                    found.push(DocCommand {
                        file: file.clone(),
                        line,
                        args,
                    });
                }
            }
        }
    }
    found
}

/// Code of a Markdown text with its line numbers: each line of a fenced block (continuations
/// joined), and each inline code span.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            if let Some(p) = pending.take() {
                out.push(p);
            }
            continue;
        }
        if fenced {
            let (start, mut code) = pending.take().unwrap_or((number, String::new()));
            let trimmed = line.trim_end();
            if let Some(head) = trimmed.strip_suffix('\\') {
                code.push_str(head);
                code.push(' ');
                pending = Some((start, code));
            } else {
                code.push_str(trimmed);
                out.push((start, code));
            }
        } else {
            let mut rest = line;
            while let Some(open) = rest.find('`') {
                let after = &rest[open + 1..];
                let Some(close) = after.find('`') else { break };
                out.push((number, after[..close].to_owned()));
                rest = &after[close + 1..];
            }
        }
    }
    out
}

/// Shell-like words of one command line, up to a pipe, redirection, `&&`, `;` or comment.
fn words(code: &str) -> Vec<String> {
    let code = code.trim_start().trim_start_matches("$ ");
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '|' | ';' | '>' | '&' if !in_word || word.is_empty() => break,
            '<' if !in_word => {
                // A `<placeholder>` word is kept (and skipped later); `< file` ends the command.
                if chars.peek().is_some_and(|n| n.is_alphanumeric()) {
                    in_word = true;
                    word.push(c);
                } else {
                    break;
                }
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The arguments of `program` in `words`, if the line runs it.
fn command_of(words: &[String], program: &str) -> Option<Vec<String>> {
    // Environment assignments and sudo in front.
    let start = words
        .iter()
        .position(|w| !(w == "sudo" || (w.contains('=') && !w.starts_with('-'))))?;
    let words = &words[start..];
    let first = words.first()?;
    if first == program || first.ends_with(&format!("/{program}")) {
        return Some(clean(&words[1..]));
    }
    if first == "cargo" && words.get(1).is_some_and(|w| w == "run") {
        let split = words.iter().position(|w| w == "--");
        let cargo_args = &words[..split.unwrap_or(words.len())];
        let value_of = |flag: &str| {
            cargo_args
                .iter()
                .position(|w| w == flag)
                .and_then(|i| cargo_args.get(i + 1))
                .cloned()
        };
        let binary = value_of("--bin")
            .or_else(|| value_of("-p"))
            .or_else(|| value_of("--package"))
            .unwrap_or_else(|| "fabmeter".to_owned());
        if binary == program {
            return Some(split.map(|i| clean(&words[i + 1..])).unwrap_or_default());
        }
    }
    None
}

/// `a|b|c` (the document's shorthand for one of them) -> one command per alternative.
fn alternatives(args: Vec<String>) -> Vec<Vec<String>> {
    let Some(i) = args.iter().position(|a| a.len() > 1 && a.contains('|')) else {
        return vec![args];
    };
    args[i]
        .split('|')
        .filter(|a| !a.is_empty())
        .flat_map(|choice| {
            let mut one = args.clone();
            one[i] = choice.to_owned();
            alternatives(one)
        })
        .collect()
}

/// `[--flag]` -> `--flag`; `<placeholder>`, `...` and `[`/`]` alone dropped.
fn clean(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| a.trim_start_matches('[').trim_end_matches(']').to_owned())
        .filter(|a| !a.is_empty() && !a.starts_with('<') && !a.contains("..."))
        .collect()
}

/// `bin path… --help`, or why it failed.
fn help(bin: &Path, path: &[String]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(path)
        .arg("--help")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} {} --help` failed: {}",
            bin.display(),
            path.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of a `--help` text's "Commands:" section.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Whether `help` lists the long flag `flag` (`--name`), as a whole word.
fn lists_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        before.is_none_or(|c| c.is_whitespace() || c == ',' || c == '[')
            && after.is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_'))
    })
}

/// Checks one documented command against `bin`: its subcommands exist and its `--flags` are
/// listed by the `--help` of the subcommand they follow.
pub fn check(bin: &Path, command: &DocCommand) -> Result<(), String> {
    let mut path: Vec<String> = Vec::new();
    let mut text = help(bin, &path).map_err(|e| format!("{command}: {e}"))?;
    let mut descending = true;
    for arg in &command.args {
        if let Some(flag) = arg.strip_prefix("--") {
            descending = false;
            let name = format!("--{}", flag.split('=').next().unwrap_or(flag));
            if !lists_flag(&text, &name) {
                return Err(format!(
                    "{command}: `{}` does not list {name} (`{} {} --help`): fix the document or the program",
                    bin.display(),
                    bin.display(),
                    path.join(" ")
                ));
            }
            continue;
        }
        if arg.starts_with('-') || !descending {
            descending = false;
            continue;
        }
        let commands = subcommands(&text);
        if commands.iter().any(|c| c == arg) {
            path.push(arg.clone());
            text = help(bin, &path).map_err(|e| format!("{command}: {e}"))?;
        } else if !commands.is_empty() && !text.contains("Arguments:") {
            return Err(format!(
                "{command}: `{arg}` is not a subcommand of `{} {}` (it has: {}): fix the document or the program",
                bin.display(),
                path.join(" "),
                commands.join(", ")
            ));
        } else {
            descending = false;
        }
    }
    Ok(())
}

/// Checks every documented command of `program` against `bin`; the error lists each problem.
/// Also fails when the documentation shows no command of `program` at all (a renamed binary).
pub fn check_all(bin: &Path, program: &str) -> Result<usize, String> {
    let commands = documented_commands(&repo_root(), program);
    if commands.is_empty() {
        return Err(format!("no documented command of {program} found"));
    }
    let problems: Vec<String> = commands
        .iter()
        .filter_map(|c| check(bin, c).err())
        .collect();
    if problems.is_empty() {
        Ok(commands.len())
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn lines_are_read_like_a_shell() {
        assert_eq!(
            words(r#"$ FOO=1 fabmeter-collector token create --name "claire d" | jq . # note"#),
            s(&[
                "FOO=1",
                "fabmeter-collector",
                "token",
                "create",
                "--name",
                "claire d"
            ])
        );
        assert_eq!(
            words("fabmeter-agent print-config > agent.toml"),
            s(&["fabmeter-agent", "print-config"])
        );
        assert_eq!(
            words("fabmeter-collector provision device --machine <id> --out x.toml"),
            s(&[
                "fabmeter-collector",
                "provision",
                "device",
                "--machine",
                "<id>",
                "--out",
                "x.toml"
            ])
        );
    }

    #[test]
    fn programs_are_found_directly_by_path_and_through_cargo_run() {
        let of = |line: &str, p: &str| command_of(&words(line), p);
        assert_eq!(
            of(
                "target/release/fabmeter-bench ingest --rounds 3",
                "fabmeter-bench"
            ),
            Some(s(&["ingest", "--rounds", "3"]))
        );
        assert_eq!(
            of("cargo run --release -- demo --speed 60", "fabmeter"),
            Some(s(&["demo", "--speed", "60"]))
        );
        assert_eq!(
            of("cargo run -p fabmeter-agent -- simulate", "fabmeter-agent"),
            Some(s(&["simulate"]))
        );
        assert_eq!(
            of("cargo run -p fabmeter-agent -- simulate", "fabmeter"),
            None
        );
        assert_eq!(
            of(
                "sudo fabmeter-collector invoice [--dry-run] [--out DIR] ...",
                "fabmeter-collector"
            ),
            Some(s(&["invoice", "--dry-run", "--out", "DIR"]))
        );
        assert_eq!(of("fabmeter-collector-x run", "fabmeter-collector"), None);
    }

    #[test]
    fn code_comes_from_fences_with_continuations_and_inline_spans() {
        let text =
            "intro `fabmeter-agent run` here\n```sh\nfabmeter-bench ingest \\\n  --rounds 3\n```\n";
        assert_eq!(
            code_lines(text),
            vec![
                (1, "fabmeter-agent run".to_owned()),
                (3, "fabmeter-bench ingest    --rounds 3".to_owned())
            ]
        );
    }

    #[test]
    fn alternatives_become_one_command_each() {
        assert_eq!(
            alternatives(s(&["token", "list|revoke", "--name", "x"])),
            vec![
                s(&["token", "list", "--name", "x"]),
                s(&["token", "revoke", "--name", "x"])
            ]
        );
    }

    #[test]
    fn flags_match_whole_words() {
        let help = "Options:\n  --config <CONFIG>\n  -s, --site-id <ID>\n";
        assert!(lists_flag(help, "--config"));
        assert!(lists_flag(help, "--site-id"));
        assert!(!lists_flag(help, "--site"));
        assert!(!lists_flag(help, "--conf"));
        assert_eq!(
            subcommands("Usage: x\n\nCommands:\n  run  Run\n  help  Print\n\nOptions:\n"),
            s(&["run", "help"])
        );
    }
}
