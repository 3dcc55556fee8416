//! Progress of the long commands (`invoice` of a year or of a network's sites, `audit`,
//! `privacy purge`) on standard error: a bar (indicatif) when standard error is a terminal, plain
//! lines otherwise (a log file, the journal, a pipe), so that a script reading the output sees
//! each step once and no escape codes. Results stay on standard output.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// A task of `total` steps (0: a single step of unknown length, shown as a spinner).
pub struct Progress {
    what: String,
    total: u64,
    done: u64,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// Starts `what` (e.g. "invoice 2026"), drawing a bar on a terminal, or printing
    /// `what: started (N steps)` otherwise.
    pub fn start(what: &str, total: u64) -> Self {
        Self::with_terminal(what, total, std::io::stderr().is_terminal())
    }

    /// As [`Progress::start`], the terminal decided by the caller (plain lines when false).
    pub fn with_terminal(what: &str, total: u64, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = if total == 0 {
                let b = indicatif::ProgressBar::new_spinner();
                b.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                b
            } else {
                let b = indicatif::ProgressBar::new(total);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed}, eta {eta}]",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b
            };
            configured(bar, what)
        });
        if bar.is_none() {
            let steps = if total == 0 {
                String::new()
            } else {
                format!(" ({total} steps)")
            };
            line(&format!("{what}: started{steps}"));
        }
        Progress {
            what: what.to_owned(),
            total,
            done: 0,
            started: Instant::now(),
            bar,
        }
    }

    /// A step begins: `step` is what it works on (e.g. "2026-03").
    pub fn step(&mut self, step: &str) {
        match &self.bar {
            Some(b) => b.set_message(step.to_owned()),
            None if self.total == 0 => line(&format!("{}: {step}", self.what)),
            None => line(&format!(
                "{}: {step} ({} of {})",
                self.what,
                self.done + 1,
                self.total
            )),
        }
    }

    /// A step is done.
    pub fn advance(&mut self) {
        self.done += 1;
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    /// Prints `text` above the bar (or as a line) without disturbing it.
    pub fn println(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => line(text),
        }
    }

    /// Prints `text` on standard output (a result), the bar lifted meanwhile.
    pub fn out(&self, text: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }

    /// The task ended: `summary` with the elapsed time.
    pub fn finish(self, summary: &str) {
        let elapsed = self.started.elapsed();
        let text = format!("{}: {summary} in {}", self.what, seconds(elapsed));
        match self.bar {
            Some(b) => b.finish_with_message(format!("done in {}", seconds(elapsed))),
            None => line(&text),
        }
    }
}

fn configured(bar: indicatif::ProgressBar, what: &str) -> indicatif::ProgressBar {
    bar.set_prefix(what.to_owned());
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn line(text: &str) {
    let mut err = std::io::stderr().lock();
    // A closed standard error is not a reason to fail the command.
    let _ = writeln!(err, "{text}");
}
