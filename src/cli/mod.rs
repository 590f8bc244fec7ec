//! Command-line front end: clap arguments, validated into library options, and results printed as text or
//! `--json`. Every error becomes one line on stderr and an exit code: 0 success, 1 error, 3 a snapshot was
//! written but some source files could not be read.

mod args;
mod commands;
mod explore;
mod instance;
mod pg;

use clap::Parser;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: error, nothing written (or damage found by `check`).
pub const EXIT_ERROR: i32 = 1;
/// Exit code: snapshot written, but partial.
pub const EXIT_PARTIAL: i32 = 3;

/// Parses the process arguments, runs the command, prints any error, and returns the exit code.
pub fn run() -> i32 {
    let cli = args::Cli::parse();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: error: {e}");
            EXIT_ERROR
        }
    }
}
