//! The library's error type: one variant per condition a caller can act on.
//!
//! The CLI prints an error as one line (`Display`) and maps it to an exit code; nothing in the library panics
//! on input that a user or a disk controls.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in a repository operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named path failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The directory is not a cairn repository (or does not exist).
    #[error("{0}: not a cairn repository (create one with `cairn init --repo {0}`)")]
    NotARepository(PathBuf),
    /// `init` was asked to create a repository where one already exists.
    #[error("{0}: a repository already exists here")]
    AlreadyExists(PathBuf),
    /// Stored data does not decode or does not match its id.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// A named object (snapshot, blob, path, stream) is not in the repository.
    #[error("{0}")]
    NotFound(String),
    /// The WAL file `wal-fetch` was asked for is not archived: for PostgreSQL's recovery, the end of the
    /// archive. Kept apart from [`Error::NotFound`], which also means damage (a blob the index lacks): only
    /// this one may tell recovery "no such file" (see `cairn::wal::fetch`).
    #[error("{0}")]
    WalNotArchived(String),
    /// A snapshot id prefix matches more than one snapshot.
    #[error("snapshot prefix {prefix:?} is ambiguous: matches {matches}")]
    Ambiguous { prefix: String, matches: String },
    /// The repository is locked by another process in a conflicting mode.
    #[error("repository is locked: {0} (if that process is gone, run `cairn unlock`)")]
    Locked(String),
    /// This process's own lock may have been taken for stale by another process (it was not refreshed in
    /// time, or its object was removed): what was about to be written or deleted is not, since another
    /// host may have pruned or backed up meanwhile. Running the command again is safe.
    #[error("{0}; stopped before writing or deleting anything more (run the command again)")]
    LockLost(String),
    /// The repository can be read but not written from here (read-only file system or mount, permissions,
    /// a full disk); `cause` names the first thing that could not be written.
    #[error("{root}: the repository cannot be written here: {cause}")]
    ReadOnly { root: PathBuf, cause: String },
    /// The SQLite index failed.
    #[error("index database: {0}")]
    Index(#[from] rusqlite::Error),
    /// An argument or option is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A child process (e.g. `--stdin-from-command`, `pg_dump`) failed.
    #[error("{0}")]
    Command(String),
    /// A PostgreSQL operation failed.
    #[error("postgres: {0}")]
    Postgres(String),
    /// A restore would overwrite an existing file.
    #[error("{0}: already exists (use --overwrite to replace it)")]
    Exists(PathBuf),
    /// The operation was interrupted by a signal.
    #[error("interrupted")]
    Interrupted,
    /// The repository password is wrong or missing (the CLI's exit code 12); nothing was written.
    #[error("{0}")]
    Password(String),
    /// The command line asks for something that cannot be done (the CLI's exit code 2, as for the usage
    /// errors the argument parser reports).
    #[error("{0}")]
    Usage(String),
}

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on. An error that already names a path of its own (the
    /// `tempfile` crate's "... at path \"dir/.tmpXXXX\"") is reduced to its OS error, so that a message names
    /// one path once.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source: without_own_path(source),
        }
    }

    /// The same error with `note` appended to its message, keeping its kind. Wrapping an error's text in a
    /// new error instead would repeat its prefix ("postgres: postgres: ...").
    pub fn with_note(self, note: impl std::fmt::Display) -> Error {
        match self {
            Error::Postgres(m) => Error::Postgres(format!("{m}{note}")),
            Error::Invalid(m) => Error::Invalid(format!("{m}{note}")),
            Error::Command(m) => Error::Command(format!("{m}{note}")),
            Error::NotFound(m) => Error::NotFound(format!("{m}{note}")),
            Error::Locked(m) => Error::Locked(format!("{m}{note}")),
            Error::Usage(m) => Error::Usage(format!("{m}{note}")),
            // Kinds a caller acts on by their type (exit codes 10, 130) are kept; the note is dropped.
            e @ (Error::NotARepository(_) | Error::Interrupted | Error::Password(_)) => e,
            Error::Corrupt { what, detail } => Error::Corrupt {
                what,
                detail: format!("{detail}{note}"),
            },
            Error::Io { path, source } => Error::Io {
                path,
                source: std::io::Error::new(source.kind(), format!("{source}{note}")),
            },
            other => Error::Invalid(format!("{other}{note}")),
        }
    }

    /// The same error with `context` put before its message (after its kind's prefix), keeping its kind.
    pub fn with_context(self, context: impl std::fmt::Display) -> Error {
        match self {
            Error::Postgres(m) => Error::Postgres(format!("{context}: {m}")),
            Error::Invalid(m) => Error::Invalid(format!("{context}: {m}")),
            Error::Command(m) => Error::Command(format!("{context}: {m}")),
            Error::NotFound(m) => Error::NotFound(format!("{context}: {m}")),
            Error::Locked(m) => Error::Locked(format!("{context}: {m}")),
            Error::Usage(m) => Error::Usage(format!("{context}: {m}")),
            // Kinds a caller acts on by their type (exit codes 10, 130) are kept; the context is dropped.
            e @ (Error::NotARepository(_) | Error::Interrupted | Error::Password(_)) => e,
            other => Error::Invalid(format!("{context}: {other}")),
        }
    }

    /// The message without its kind's prefix (for an error quoted inside another one of the same kind).
    pub fn message(&self) -> String {
        match self {
            Error::Postgres(m) => m.clone(),
            other => other.to_string(),
        }
    }

    /// True if this error, met while reading a stored object (pack, blob, tree, snapshot file), proves the
    /// object damaged: it does not match its id or does not decode (`Corrupt`), it is not indexed (`NotFound`),
    /// or its file is gone or ends early (`ENOENT`, a read beyond the end of the file). Any other failure
    /// (permission denied, EIO, too many open files, a busy index...) says nothing about the data: callers
    /// must stop and report it, never drop or forget data because of it.
    pub fn is_damage(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            Error::Corrupt { .. } | Error::NotFound(_) => true,
            Error::Io { source, .. } => {
                matches!(
                    source.kind(),
                    ErrorKind::NotFound | ErrorKind::UnexpectedEof
                )
            }
            _ => false,
        }
    }

    /// A decoding or integrity failure of stored data.
    pub fn corrupt(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// `e` without a path it names itself: the `tempfile` crate decorates an OS error as `{error} at path
/// {path:?}` (its `PathError`, which exposes neither the OS error nor the path), and the caller names the
/// directory already; the decoration is dropped, keeping the error's kind and text.
fn without_own_path(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error().is_some() || e.get_ref().is_none() {
        return e;
    }
    let text = e.to_string();
    match text.split_once(" at path \"") {
        Some((own, _)) => std::io::Error::new(e.kind(), own.to_string()),
        None => e,
    }
}

/// Adds the path to a bare `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn only_verified_corruption_or_a_missing_object_is_damage() {
        let io = |e: io::Error| Error::io("packs/ab/x", e);
        for damage in [
            Error::corrupt("blob x", "content does not match its id"),
            Error::NotFound("blob x is not in the index".into()),
            io(io::Error::from(io::ErrorKind::NotFound)),
            io(io::Error::from(io::ErrorKind::UnexpectedEof)),
        ] {
            assert!(damage.is_damage(), "{damage}");
        }
        for not_damage in [
            io(io::Error::from_raw_os_error(libc::EACCES)),
            io(io::Error::from_raw_os_error(libc::EIO)),
            io(io::Error::from_raw_os_error(libc::EMFILE)),
            io(io::Error::from_raw_os_error(libc::ENOSPC)),
            io(io::Error::other("disk on fire")),
            Error::Index(rusqlite::Error::InvalidQuery),
            Error::Locked("x".into()),
            Error::Interrupted,
        ] {
            assert!(!not_damage.is_damage(), "{not_damage}");
        }
    }
}
