//! Command-line front end: clap arguments, validated into library options, and results printed as text or
//! `--json` (then exactly one JSON document on stdout). Every error becomes one line on stderr and an exit
//! code ([`exit_code`]); the codes are documented in README ("Exit codes") and kept stable for scripts.

mod archive;
mod args;
mod backup;
mod commands;
mod copy;
mod docs;
mod explore;
mod instance;
mod keys;
mod logging;
mod maintenance;
mod mount;
mod pg;
mod restore;
mod serve;
mod snapshots;
mod wal;

use clap::Parser;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: error, nothing written (or damage found by `check`).
pub const EXIT_ERROR: i32 = 1;
/// Exit code: the command line is wrong (clap's own code for usage errors).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: snapshot written, but partial.
pub const EXIT_PARTIAL: i32 = 3;
/// Exit code: the repository does not exist (or is not a cairn repository).
pub const EXIT_NO_REPOSITORY: i32 = 10;
/// Exit code: the repository is locked by another process.
pub const EXIT_LOCKED: i32 = 11;
/// Exit code: wrong or missing repository password.
pub const EXIT_PASSWORD: i32 = 12;
/// Exit code: interrupted by SIGINT (128 + 2, as a shell reports it).
pub const EXIT_INTERRUPTED: i32 = cairn::interrupt::EXIT_STATUS;

/// Parses the process arguments, runs the command, prints any error, and returns the exit code.
pub fn run() -> i32 {
    let cli = args::Cli::parse();
    let log_format = cli.log_format;
    logging::init(log_format, cli.quiet);
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            if log_format == args::LogFormat::Json {
                tracing::error!(error = %e, "cairn: error: {e}");
            } else {
                eprintln!("cairn: error: {e}");
            }
            exit_code(&e)
        }
    }
}

/// The exit code for an error: the conditions a script can act on get their own code, the rest is 1. Any
/// error after a SIGINT is the interruption's doing (Ctrl-C also kills a `--stdin-from-command` child, whose
/// death may be noticed first): 130.
fn exit_code(e: &cairn::Error) -> i32 {
    use cairn::Error;
    if cairn::interrupt::received() {
        return EXIT_INTERRUPTED;
    }
    match e {
        Error::NotARepository(_) => EXIT_NO_REPOSITORY,
        Error::Locked(_) => EXIT_LOCKED,
        Error::Interrupted => EXIT_INTERRUPTED,
        Error::Usage(_) => EXIT_USAGE,
        Error::Password(_) => EXIT_PASSWORD,
        _ => EXIT_ERROR,
    }
}
