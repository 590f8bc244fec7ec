//! The one pair of functions through which the repository's small metadata objects are stored and read:
//! instance configuration revisions ([`crate::instance_store`]) and run-log entries ([`crate::run_log`]).
//!
//! Both are JSON documents whose stored bytes are, today, the document itself. Keeping every write and read
//! of them behind [`put`] and [`get`] means that a change of how such objects are stored (encryption at rest,
//! which re-encodes every repository object) is one change here, not one per caller. Names are chosen by the
//! callers from the plain document (a content hash, or an instance revision's order key), never from the
//! stored bytes.

use crate::backend::{Backend, ObjectKind};
use crate::error::Result;

/// Stores the document `plain` as the object `name` of `kind` (whole or absent, durable on return).
pub fn put(backend: &dyn Backend, kind: ObjectKind, name: &str, plain: &[u8]) -> Result<()> {
    backend.put(kind, name, plain)
}

/// Stores the document `plain` as the object `name` of `kind` unless one of that name exists (see
/// [`Backend::put_new`]): `false`, writing nothing, when it does.
pub fn put_new(backend: &dyn Backend, kind: ObjectKind, name: &str, plain: &[u8]) -> Result<bool> {
    backend.put_new(kind, name, plain)
}

/// Reads back a document stored by [`put`]; a missing object is a `NotFound` I/O error.
pub fn get(backend: &dyn Backend, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
    backend.get(kind, name)
}
