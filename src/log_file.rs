//! `run-due --log-file FILE`: the process's standard output and error appended to a file that stays bounded.
//!
//! Meant for cron, which has no journal: the crontab entry of `cairn schedule crontab` points it into the
//! user's state directory. Before anything is written, a file that has reached [`MAX_BYTES`] is renamed to
//! `FILE.1` (replacing the previous one), so the log never holds more than two files of about that size plus
//! one run's output. The directory is created private (0700) and the file is created 0600: run logs name
//! paths and errors that other users need not read.

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A log file reaching this size is rotated to `FILE.1` at the next start.
pub const MAX_BYTES: u64 = 1 << 20;

/// Rotates `path` if it is full, then sends this process's stdout and stderr to it (appending).
pub fn redirect_output(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
    }
    rotate(path)?;
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 on a descriptor we own and the process's standard descriptors; no Rust object owns
        // fds 1 and 2, and Rust's stdout buffer is flushed per line onto whatever fd 1 is.
        if unsafe { libc::dup2(file.as_raw_fd(), fd) } < 0 {
            return Err(Error::io(path, std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Moves a full log to `FILE.1`.
fn rotate(path: &Path) -> Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.len() >= MAX_BYTES => {
            fs::rename(path, rotated(path)).map_err(|e| Error::io(path, e))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// `FILE.1`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}
