//! Progress of long operations, for two kinds of front end: the CLI draws bytes, files, rate and (when the
//! total is known) ETA with indicatif on standard error (hidden when standard error is not a terminal or
//! with `--quiet`, so `--json` output and logs stay clean); `cairn serve` attaches an [`Observer`] that
//! turns the same reports into a job's state, and whose cancellation the long operations honour through
//! [`Progress::check_cancel`] (between units of work, like SIGINT).
//!
//! Invariant: every report reaches both the bar and the observer; a `Progress` without an observer is never
//! cancelled.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives the reports of a long operation (the server's jobs implement it). Calls come from worker
/// threads, often many at once: implementations keep them cheap (atomics).
pub trait Observer: Send + Sync {
    /// The operation's current step changed ("safety snapshot", "restoring files", ...).
    fn step(&self, _step: &str) {}
    /// The total bytes became known.
    fn total(&self, _bytes: u64) {}
    /// `n` more bytes were processed.
    fn bytes(&self, _n: u64) {}
    /// One more file (of `n` bytes) was finished.
    fn file_done(&self, _n: u64) {}
    /// `n` more database rows were verified.
    fn rows_verified(&self, _n: u64) {}
    /// A line for people (warnings).
    fn line(&self, _line: &str) {}
    /// Whether the operation is to stop at its next check.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A cheap, clonable handle; all methods are no-ops when hidden and unobserved.
#[derive(Clone)]
pub struct Progress {
    bar: Arc<ProgressBar>,
    /// Whether `println` reaches stderr when the bar is hidden (the CLI's case, not a library caller's).
    echo: bool,
    observer: Option<Arc<dyn Observer>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::hidden()
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

impl Progress {
    /// A display that draws nothing.
    pub fn hidden() -> Progress {
        Progress {
            bar: Arc::new(ProgressBar::hidden()),
            echo: false,
            observer: None,
        }
    }

    /// No display; every report goes to `observer`, whose [`Observer::cancelled`] stops the operation.
    pub fn observed(observer: Arc<dyn Observer>) -> Progress {
        Progress {
            observer: Some(observer),
            ..Progress::hidden()
        }
    }

    /// `Err(Interrupted)` once the observer asks the operation to stop: called between units of work.
    pub fn check_cancel(&self) -> crate::Result<()> {
        match &self.observer {
            Some(o) if o.cancelled() => Err(crate::Error::Interrupted),
            _ => Ok(()),
        }
    }

    /// Names the operation's current step (shown as the bar's message).
    pub fn step(&self, step: &str) {
        if let Some(o) = &self.observer {
            o.step(step);
        }
        if !self.bar.is_hidden() {
            self.bar.set_message(step.to_string());
        }
    }

    /// Counts verified database rows.
    pub fn rows_verified(&self, n: u64) {
        if let Some(o) = &self.observer {
            o.rows_verified(n);
        }
    }

    /// A display for `verb` (e.g. "backup"), shown only on a terminal and unless `quiet`.
    pub fn new(verb: &str, total_bytes: Option<u64>, quiet: bool) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress {
                echo: true,
                ..Progress::hidden()
            };
        }
        let bar = match total_bytes {
            Some(t) => ProgressBar::new(t).with_style(bar_style()),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} {bytes} {binary_bytes_per_sec} {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        bar.set_message(verb.to_string());
        Progress {
            bar: Arc::new(bar),
            echo: true,
            observer: None,
        }
    }

    /// Turns a spinner into a bar with an ETA once the total is known (`check` learns it after its
    /// structural checks).
    pub fn set_total(&self, total_bytes: u64) {
        if let Some(o) = &self.observer {
            o.total(total_bytes);
        }
        if !self.bar.is_hidden() {
            self.bar.set_style(bar_style());
            self.bar.set_length(total_bytes);
        }
    }

    /// Counts bytes processed.
    pub fn bytes(&self, n: u64) {
        if let Some(o) = &self.observer {
            o.bytes(n);
        }
        self.bar.inc(n);
    }

    /// Counts one finished file of `n` bytes read.
    pub fn file_done(&self, n: u64) {
        if let Some(o) = &self.observer {
            o.file_done(n);
        }
        self.bar.inc(n);
    }

    /// Prints a line above the bar (or to stderr when hidden).
    pub fn println(&self, line: &str) {
        if let Some(o) = &self.observer {
            o.line(line);
        }
        if self.bar.is_hidden() {
            if self.echo {
                eprintln!("{line}");
            }
        } else {
            self.bar.println(line);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}
