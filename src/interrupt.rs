//! SIGINT for commands that stop cleanly (backups): [`install`] makes the first SIGINT set a flag that the
//! work loops poll through [`check`], which turns it into [`Error::Interrupted`] so the command unwinds like
//! any other failure (no snapshot written, locks released, exit code 130). A second SIGINT ends the process
//! at once with the same code, for a loop that is stuck where it does not poll (a blocked read).
//!
//! Invariant: the handler only touches an atomic and calls `_exit`, both async-signal-safe. Commands that do
//! not poll never install it, so SIGINT keeps its default action (terminate) there.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a process ended by SIGINT, as a shell reports it (128 + 2).
pub const EXIT_STATUS: i32 = 130;

/// Installs the SIGINT handler (idempotent in effect: a second install only adds the same action).
pub fn install() -> Result<()> {
    let action = || {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // SAFETY (of the call): `_exit` is async-signal-safe; it runs no destructors or atexit handlers.
            unsafe { libc::_exit(EXIT_STATUS) };
        }
    };
    // SAFETY: the action is async-signal-safe (an atomic swap, `_exit`), as `register` requires.
    unsafe { signal_hook_registry::register(libc::SIGINT, action) }
        .map(|_| ())
        .map_err(|e| Error::Command(format!("installing the SIGINT handler: {e}")))
}

/// Whether SIGINT was received (with the handler installed). A failure seen after it (a stream's command
/// killed by the same Ctrl-C, a read cut short) is a consequence of the interruption.
pub fn received() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// `Err(Interrupted)` once SIGINT was received: called by loops between units of work.
pub fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    Ok(())
}
