//! The storage layer: what a repository needs from the place it lives, and nothing more.
//!
//! A repository is a set of named, immutable objects of a few kinds (config, packs, snapshots, locks, …).
//! Everything above this module reads and writes them through [`Backend`]; only the implementations here
//! touch a file system or a network. The contract every implementation keeps (format-spec/README.md,
//! "Storage"):
//!
//! - **Whole or absent.** An object written by [`Backend::put`] or [`ObjectWriter::finish`] appears complete or
//!   not at all, and is durable when the call returns. A writer dropped without `finish` leaves nothing behind
//!   that a listing returns.
//! - **Missing is `NotFound`.** Reading, stat-ing a missing object gives an [`Error::Io`] whose
//!   `source.kind()` is [`std::io::ErrorKind::NotFound`]: callers tell "gone" (damage) from "could not read"
//!   (an outage, a permission) by that kind alone.
//! - **Listings hold only finished objects**, with their sizes; names that are not valid for the kind (left by
//!   other tools, or temporary files) are not listed.
//! - **Delete is idempotent**: deleting a missing object succeeds.

pub mod fault;
pub mod local;
pub mod memory;
pub mod s3;

use std::io::Write;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The kinds of object a repository holds; each kind has its own namespace (a directory or key prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// The repository's `config` (a single object; its name is ignored).
    Config,
    /// Pack files, named by the hex BLAKE3 of their content.
    Pack,
    /// Snapshot objects, named by the hex BLAKE3 of their encoding.
    Snapshot,
    /// Lock objects, named at random by their holder.
    Lock,
    /// Instance configurations, named by the instance.
    Instance,
}

impl ObjectKind {
    /// Every kind, for listings and tests.
    pub const ALL: [ObjectKind; 5] = [
        ObjectKind::Config,
        ObjectKind::Pack,
        ObjectKind::Snapshot,
        ObjectKind::Lock,
        ObjectKind::Instance,
    ];

    /// The directory (key prefix) of this kind, relative to the repository root; empty for the config.
    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Config => "",
            ObjectKind::Pack => "packs",
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::Lock => "locks",
            ObjectKind::Instance => "instances",
        }
    }

    /// Packs are spread over 256 sub-directories by the first two hex digits of their name, so that no
    /// directory (or listing page) grows with the repository beyond a 256th of it.
    pub fn sharded(self) -> bool {
        self == ObjectKind::Pack
    }

    /// The object's path relative to the repository root, `/`-separated.
    pub fn key(self, name: &str) -> String {
        match self {
            ObjectKind::Config => "config".to_string(),
            k if k.sharded() && name.len() > 2 => format!("{}/{}/{name}", k.dir(), &name[..2]),
            k => format!("{}/{name}", k.dir()),
        }
    }

    /// Whether `name` is a valid object name of this kind: listings skip anything else (temporary files,
    /// files left by other tools). Names never hold a path separator or start with a dot.
    pub fn valid_name(self, name: &str) -> bool {
        let safe = !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match self {
            ObjectKind::Config => name == "config",
            ObjectKind::Pack | ObjectKind::Snapshot => {
                name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            }
            ObjectKind::Lock | ObjectKind::Instance => safe,
        }
    }
}

/// Where a repository's objects live.
pub trait Backend: Send + Sync {
    /// Where this is, for messages (never holds a secret).
    fn location(&self) -> String;

    /// Writes a whole object, replacing any object of that name; atomic and durable on return.
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()>;

    /// Starts a streamed write of an object whose name is known only at the end (a pack is named by the
    /// hash of its content).
    fn writer(&self, kind: ObjectKind) -> Result<Box<dyn ObjectWriter>>;

    /// Reads a whole object.
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>>;

    /// Reads `len` bytes at `offset`; an object shorter than that is an `UnexpectedEof` I/O error.
    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// The object's size, or `None` when it does not exist.
    fn stat(&self, kind: ObjectKind, name: &str) -> Result<Option<u64>>;

    /// Every finished object of a kind with its size, sorted by name.
    fn list(&self, kind: ObjectKind) -> Result<Vec<(String, u64)>>;

    /// Deletes an object durably; a missing object is not an error.
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()>;
}

/// A streamed object write. Dropping it without [`finish`](ObjectWriter::finish) abandons the object.
pub trait ObjectWriter: Write + Send {
    /// Makes the written bytes the object `name`, durably; returns its size.
    fn finish(self: Box<Self>, name: &str) -> Result<u64>;
}

/// A shared handle to a backend.
pub type SharedBackend = Arc<dyn Backend>;

/// True if `e` says the object does not exist (as opposed to: could not be read).
pub fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// The error every backend returns for a missing object.
pub(crate) fn not_found(location: String) -> Error {
    Error::Io {
        path: location.into(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "object does not exist"),
    }
}

/// The error for a ranged read past the end of an object.
pub(crate) fn short_object(location: String, size: u64, offset: u64, len: u64) -> Error {
    Error::Io {
        path: location.into(),
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("object has {size} bytes, wanted {len} at offset {offset}"),
        ),
    }
}

/// Rejects names that are not valid for the kind before they reach a path or a key.
pub(crate) fn check_name(kind: ObjectKind, name: &str) -> Result<()> {
    if kind.valid_name(name) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name:?} is not a valid name for a {kind:?} object"
        )))
    }
}

#[cfg(test)]
pub(crate) mod contract {
    //! The contract of the module docs, run against every implementation.
    use super::*;

    fn hex(n: u8) -> String {
        crate::hashing::Id::of(&[n]).to_hex()
    }

    pub fn holds_for(b: &dyn Backend) {
        put_get_stat_list_delete(b);
        ranged_reads(b);
        streamed_writes_appear_whole_or_not_at_all(b);
        missing_is_not_found(b);
        bad_names_are_refused(b);
    }

    fn put_get_stat_list_delete(b: &dyn Backend) {
        let (a, z) = (hex(1), hex(2));
        b.put(ObjectKind::Snapshot, &z, b"zz").unwrap();
        b.put(ObjectKind::Snapshot, &a, b"first").unwrap();
        b.put(ObjectKind::Snapshot, &a, b"second").unwrap();
        assert_eq!(b.get(ObjectKind::Snapshot, &a).unwrap(), b"second");
        assert_eq!(b.stat(ObjectKind::Snapshot, &a).unwrap(), Some(6));
        let mut want = vec![(a.clone(), 6), (z.clone(), 2)];
        want.sort();
        assert_eq!(b.list(ObjectKind::Snapshot).unwrap(), want);
        assert!(b.list(ObjectKind::Pack).unwrap().is_empty());
        b.delete(ObjectKind::Snapshot, &a).unwrap();
        b.delete(ObjectKind::Snapshot, &a).unwrap();
        assert_eq!(b.stat(ObjectKind::Snapshot, &a).unwrap(), None);
        b.delete(ObjectKind::Snapshot, &z).unwrap();
        b.put(ObjectKind::Config, "config", b"{}").unwrap();
        assert_eq!(b.get(ObjectKind::Config, "config").unwrap(), b"{}");
    }

    fn ranged_reads(b: &dyn Backend) {
        let n = hex(3);
        b.put(ObjectKind::Pack, &n, b"0123456789").unwrap();
        assert_eq!(b.get_range(ObjectKind::Pack, &n, 2, 3).unwrap(), b"234");
        assert_eq!(b.get_range(ObjectKind::Pack, &n, 10, 0).unwrap(), b"");
        let e = b.get_range(ObjectKind::Pack, &n, 8, 3).unwrap_err();
        assert!(
            matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof),
            "{e}"
        );
        b.delete(ObjectKind::Pack, &n).unwrap();
    }

    fn streamed_writes_appear_whole_or_not_at_all(b: &dyn Backend) {
        let mut w = b.writer(ObjectKind::Pack).unwrap();
        w.write_all(b"abandoned").unwrap();
        drop(w);
        assert!(b.list(ObjectKind::Pack).unwrap().is_empty());
        let mut w = b.writer(ObjectKind::Pack).unwrap();
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let n = hex(4);
        assert_eq!(w.finish(&n).unwrap(), 11);
        assert_eq!(b.get(ObjectKind::Pack, &n).unwrap(), b"hello world");
        assert_eq!(b.list(ObjectKind::Pack).unwrap(), vec![(n.clone(), 11)]);
        b.delete(ObjectKind::Pack, &n).unwrap();
    }

    fn missing_is_not_found(b: &dyn Backend) {
        let n = hex(5);
        assert!(is_not_found(&b.get(ObjectKind::Pack, &n).unwrap_err()));
        assert!(is_not_found(
            &b.get_range(ObjectKind::Pack, &n, 0, 1).unwrap_err()
        ));
        assert_eq!(b.stat(ObjectKind::Pack, &n).unwrap(), None);
    }

    fn bad_names_are_refused(b: &dyn Backend) {
        for bad in ["../x", "a/b", ".tmp-x", "", "x y"] {
            assert!(b.put(ObjectKind::Lock, bad, b"x").is_err(), "{bad:?}");
            assert!(b.get(ObjectKind::Lock, bad).is_err(), "{bad:?}");
        }
        assert!(b.put(ObjectKind::Pack, "abc", b"x").is_err());
    }
}
