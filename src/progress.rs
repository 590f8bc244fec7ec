//! Progress display for long operations: bytes, files, rate and (when the total is known) ETA, drawn with
//! indicatif on standard error. Hidden when standard error is not a terminal or with `--quiet`, so `--json`
//! output and logs stay clean.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A cheap, clonable handle; all methods are no-ops when hidden.
#[derive(Clone)]
pub struct Progress {
    bar: Arc<ProgressBar>,
    /// Whether `println` reaches stderr when the bar is hidden (the CLI's case, not a library caller's).
    echo: bool,
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
        }
    }

    /// Turns a spinner into a bar with an ETA once the total is known (`check` learns it after its
    /// structural checks).
    pub fn set_total(&self, total_bytes: u64) {
        if !self.bar.is_hidden() {
            self.bar.set_style(bar_style());
            self.bar.set_length(total_bytes);
        }
    }

    /// Counts bytes processed.
    pub fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Counts one finished file of `n` bytes read.
    pub fn file_done(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Prints a line above the bar (or to stderr when hidden).
    pub fn println(&self, line: &str) {
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
