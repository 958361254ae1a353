//! # Progress on stderr
//!
//! A spinner/bar on a terminal; plain, timestamped-by-order lines when stderr is not a terminal
//! or `CI` is set (CI logs stay readable); nothing with `--quiet`. stdout stays free for `--json`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Lines,
    Quiet,
}

#[derive(Debug, Clone)]
pub struct Progress {
    mode: Mode,
    start: Instant,
    /// The bars on a terminal, drawn together (two layers are built at once) with the news
    /// lines above them.
    bars: MultiProgress,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
            Mode::Bar
        } else {
            Mode::Lines
        };
        Progress {
            mode,
            start: Instant::now(),
            bars: MultiProgress::new(),
        }
    }

    /// One line of news.
    pub fn say(&self, msg: impl AsRef<str>) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Bar => {
                let line = format!(
                    "[{:6.1}s] {}",
                    self.start.elapsed().as_secs_f64(),
                    msg.as_ref()
                );
                if self.bars.println(&line).is_err() {
                    eprintln!("{line}");
                }
            }
            Mode::Lines => eprintln!(
                "[{:6.1}s] {}",
                self.start.elapsed().as_secs_f64(),
                msg.as_ref()
            ),
        }
    }

    /// A task with a known number of bytes or items; `finish` prints its outcome.
    pub fn task(&self, msg: impl Into<String>, len: Option<u64>) -> Task {
        let msg = msg.into();
        let bar = match self.mode {
            Mode::Bar => {
                let b = match len {
                    Some(n) => ProgressBar::new(n).with_style(
                        ProgressStyle::with_template(
                            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    ),
                    None => ProgressBar::new_spinner().with_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .expect("valid template"),
                    ),
                };
                let b = self.bars.add(b);
                b.set_message(msg.clone());
                b.enable_steady_tick(Duration::from_millis(120));
                Some(b)
            }
            _ => {
                self.say(format!("{msg}…"));
                None
            }
        };
        Task {
            bar,
            progress: self.clone(),
            msg,
            start: Instant::now(),
        }
    }
}

pub struct Task {
    bar: Option<ProgressBar>,
    progress: Progress,
    msg: String,
    start: Instant,
}

impl Task {
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// A sub-status (e.g. mmdebstrap's own step lines).
    pub fn detail(&self, s: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{} — {}", self.msg, s));
        }
    }

    pub fn finish(self, outcome: impl AsRef<str>) {
        let secs = self.start.elapsed().as_secs_f64();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
            self.progress.bars.remove(b);
        }
        self.progress
            .say(format!("{}: {} ({secs:.1}s)", self.msg, outcome.as_ref()));
    }
}
