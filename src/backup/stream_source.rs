//! Streams a backup stores (`--stdin`, `--stdin-from-command`, database dumps): a reader, a name and a
//! check run once the reader is exhausted; a child process producing one is killed and reaped if the backup
//! stops early, and its failure cancels the snapshot.

use std::io::Read;

use crate::error::{Error, Result};

/// A stream to store, e.g. a database dump from a child process.
pub struct StreamSource {
    pub name: String,
    pub reader: Box<dyn Read + Send>,
    /// Called once the reader reached its end; an error cancels the snapshot (e.g. the producer exited
    /// non-zero, so what was read may be truncated).
    pub finish: Box<dyn FnOnce() -> Result<()> + Send>,
}

/// Kills and reaps a child process unless it was waited for: a backup that fails early must not leave its
/// producer running.
pub(crate) struct ChildGuard(pub(crate) Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl StreamSource {
    /// A stream read from a child's standard output. The child's non-zero exit (or death by a signal) makes
    /// the backup fail with no snapshot: its output may be truncated.
    pub fn from_command(name: &str, argv: &[String]) -> Result<StreamSource> {
        let (prog, args) = argv.split_first().ok_or_else(|| {
            Error::Invalid("--stdin-from-command needs a command after `--`".into())
        })?;
        let mut child = std::process::Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::Command(format!("cannot run {prog}: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Command(format!("{prog}: no stdout pipe")))?;
        let mut guard = ChildGuard(Some(child));
        let prog = prog.clone();
        Ok(StreamSource {
            name: name.to_string(),
            reader: Box::new(stdout),
            finish: Box::new(move || {
                let mut child = guard
                    .0
                    .take()
                    .ok_or_else(|| Error::Command("child already reaped".into()))?;
                let status = child
                    .wait()
                    .map_err(|e| Error::Command(format!("{prog}: {e}")))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(Error::Command(format!(
                        "{prog} failed ({status}); no snapshot written"
                    )))
                }
            }),
        })
    }

    /// A stream read from standard input.
    pub fn from_stdin(name: &str) -> StreamSource {
        StreamSource {
            name: name.to_string(),
            reader: Box::new(std::io::stdin()),
            finish: Box::new(|| Ok(())),
        }
    }
}
