//! Command-line front end: clap arguments, validated into library options, and results printed as text or
//! `--json` (then exactly one JSON document on stdout). Every error becomes one line on stderr and an exit
//! code ([`exit_code`]); the codes are documented in README ("Exit codes") and kept stable for scripts.
//!
//! Command output goes through [`out`] (`outln!`, `out!`), never `println!`: a full or failing stdout is an
//! error like any other (`println!` panics), and a reader that went away ends the process the way coreutils
//! and restic end, killed by SIGPIPE with nothing on stderr.

/// `println!` for command output: a write error returns from the enclosing function (see [`out`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cairn_cli::out::line(format_args!($($arg)*))?
    };
}

/// `print!` for command output (flushed at once); a write error returns from the enclosing function.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cairn_cli::out::text(format_args!($($arg)*))?
    };
}

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
/// Exit code of `wal-fetch` for every failure but "not archived" (exit 1): above 125, which PostgreSQL's
/// recovery takes as fatal. Below it, recovery would take the failure for the end of the archive, end
/// there and promote the server at an earlier point than asked, saying nothing.
pub const EXIT_WAL_FETCH_FAILED: i32 = 255;

/// Parses the process arguments, runs the command, prints any error, and returns the exit code.
pub fn run() -> i32 {
    let cli = args::Cli::parse();
    let log_format = cli.log_format;
    logging::init(log_format, cli.quiet);
    let wal_fetch = matches!(cli.command, args::Command::WalFetch { .. });
    match commands::dispatch(cli) {
        Ok(code) => code,
        // Whatever error the closed pipe caused (the write that met it, or a later one), the reader has gone:
        // end as a program that never handled SIGPIPE would (everything the command held is released by now).
        Err(_) if out::reader_gone() => out::die_of_sigpipe(),
        Err(e) => {
            if log_format == args::LogFormat::Json {
                tracing::error!(error = %e, "cairn: error: {e}");
            } else {
                eprintln!("cairn: error: {e}");
            }
            match e {
                cairn::Error::WalNotArchived(_) => EXIT_ERROR,
                _ if wal_fetch => EXIT_WAL_FETCH_FAILED,
                _ => exit_code(&e),
            }
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
        Error::Locked(_) | Error::LockLost(_) => EXIT_LOCKED,
        Error::Interrupted => EXIT_INTERRUPTED,
        Error::Usage(_) => EXIT_USAGE,
        Error::Password(_) => EXIT_PASSWORD,
        _ => EXIT_ERROR,
    }
}

/// Command output on stdout.
///
/// Rust ignores SIGPIPE, so a write to a pipe whose reader has gone fails with EPIPE instead of killing the
/// process; `println!` turns that (and ENOSPC from `> /dev/full`) into a panic. Everything the commands
/// print goes through [`Stdout`] instead: a write error is an [`Error::Io`](cairn::Error) naming stdout, and
/// an EPIPE is remembered so that [`run`] ends the process by SIGPIPE, quietly, as `cat` or restic would
/// (`set -o pipefail` then sees 141). SIGPIPE is not restored as a whole: cairn writes into pipes of its own
/// children (pg_restore, hooks), whose early exit must be an error it reports, not its death.
pub mod out {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};

    use cairn::{Error, Result};

    static READER_GONE: AtomicBool = AtomicBool::new(false);

    /// The process's stdout (line-buffered, as `println!` writes it), recording a closed pipe.
    pub struct Stdout;

    impl Stdout {
        fn note(e: std::io::Error) -> std::io::Error {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                READER_GONE.store(true, Ordering::SeqCst);
            }
            e
        }
    }

    impl Write for Stdout {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::io::stdout().lock().write(buf).map_err(Self::note)
        }
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            std::io::stdout().lock().write_all(buf).map_err(Self::note)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            std::io::stdout().lock().flush().map_err(Self::note)
        }
    }

    /// Stdout for a command that prints many lines (`ls`): one write per 64 KiB, not one per line (the
    /// standard library's stdout writes at every newline), except to a terminal, where each line shows as
    /// soon as it is printed. Flush it before returning: a flush on drop loses its error.
    pub fn lines() -> std::io::BufWriter<Stdout> {
        use std::io::IsTerminal;
        let capacity = match std::io::stdout().is_terminal() {
            true => 0,
            false => 64 << 10,
        };
        std::io::BufWriter::with_capacity(capacity, Stdout)
    }

    /// Stdout written straight to file descriptor 1, for data (`dump`). The standard library's stdout is a
    /// `LineWriter`: it searches every buffer it is given backwards for a newline and splits the write there
    /// (two `write`s per buffer); data without newlines is searched whole, and a dump of a 4 GiB run of
    /// zeros spent 92% of its time in that search (0.45 s of CPU, 0.03 s without it). What was
    /// printed through the standard library before is flushed first, so nothing comes out of order; the
    /// descriptor is never closed (the standard library owns it, and opens /dev/null on it at start-up if
    /// the process was started without one).
    pub struct Raw(std::mem::ManuallyDrop<std::fs::File>);

    pub fn raw() -> Result<Raw> {
        use std::os::fd::FromRawFd;
        Stdout.flush().map_err(error)?;
        // SAFETY: descriptor 1 is open for the life of the process (see above) and, in a `ManuallyDrop`, is
        // never closed by this `File`.
        let file = unsafe { std::fs::File::from_raw_fd(libc::STDOUT_FILENO) };
        Ok(Raw(std::mem::ManuallyDrop::new(file)))
    }

    impl Write for Raw {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf).map_err(Stdout::note)
        }
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.0.write_all(buf).map_err(Stdout::note)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A write error on stdout as the command's error.
    pub fn error(e: std::io::Error) -> Error {
        Error::io("stdout", e)
    }

    /// Writes `bytes` and flushes.
    pub fn bytes(bytes: &[u8]) -> Result<()> {
        Stdout
            .write_all(bytes)
            .and_then(|()| Stdout.flush())
            .map_err(error)
    }

    /// One line (what `outln!` writes).
    pub fn line(args: std::fmt::Arguments) -> Result<()> {
        bytes(format!("{args}\n").as_bytes())
    }

    /// Text without a newline added (what `out!` writes).
    pub fn text(args: std::fmt::Arguments) -> Result<()> {
        bytes(args.to_string().as_bytes())
    }

    /// Whether a write to stdout met a closed pipe.
    pub fn reader_gone() -> bool {
        READER_GONE.load(Ordering::SeqCst)
    }

    /// Ends the process by SIGPIPE (exit status 141 should the signal be blocked).
    pub fn die_of_sigpipe() -> ! {
        // SAFETY: restoring the default disposition and raising a signal have no memory-safety conditions;
        // nothing runs after them but the exit below.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
        std::process::exit(128 + libc::SIGPIPE)
    }
}
