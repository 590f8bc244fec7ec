//! The SQLite index (format-spec/README.md, "Index"): chunk id -> (pack, offset, lengths), the pack list and
//! a row per snapshot.
//!
//! Invariants: a `blobs` row only names a pack whose file is durable (the writer inserts rows after the pack's
//! rename and directory fsync); everything here can be rebuilt from the pack trailers and snapshot files
//! (`repair index`), so the index is a cache that must never be the only copy of anything. Lookups go to SQLite;
//! no copy of the index is held in memory, so memory does not grow with the repository.
//!
//! The one exception is `damaged_blobs`, the record of stored copies that failed verification: no pack says
//! a copy of itself is bad, so `repair index` carries these rows over from the old index (format-spec, "Index").
//! A blob whose indexed copy is recorded damaged is not usable for deduplication, and indexing a new copy of it
//! moves its row to that copy. Those records are kept by [`damage`], the snapshot rows by [`snapshots`].
//!
//! Opening: [`Index::open`] writes nothing to an index that is already set up, so a full disk can still open
//! it; [`Index::open_read_only`] serves repositories that cannot be written here (see [`Access`]). The
//! database file is created 0600 before SQLite sees it, because SQLite gives its `-wal` and `-shm` files the
//! database file's mode; index files of older repositories are made private when opened.

use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::pack::{BlobEntry, BlobKind, Compression};

mod damage;
mod snapshots;
mod tree_cache;

pub use damage::DamageRecord;
pub use tree_cache::CachedTree;

/// Version of the schema below; stored in `meta`.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs (
    pack_no INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    blob_count INTEGER NOT NULL,
    delete_after INTEGER
);
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY,
    pack_no INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    compression INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    base BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs(pack_no);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    time TEXT NOT NULL,
    host TEXT NOT NULL,
    instance TEXT,
    tags TEXT NOT NULL,
    paths TEXT NOT NULL,
    stream_names TEXT NOT NULL,
    tree TEXT,
    partial INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_time ON snapshots(time);
CREATE TABLE IF NOT EXISTS instances (name TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_no INTEGER PRIMARY KEY,
    instance TEXT,
    kind TEXT NOT NULL,
    start TEXT NOT NULL,
    end TEXT,
    status TEXT NOT NULL,
    bytes INTEGER,
    snapshot_id TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_instance ON runs(instance, start);
CREATE TABLE IF NOT EXISTS damaged_blobs (
    blob BLOB NOT NULL,
    pack BLOB NOT NULL,
    found TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (blob, pack)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS index_objects (id BLOB PRIMARY KEY, superseded INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS index_object_packs (
    object BLOB NOT NULL,
    pack BLOB NOT NULL,
    PRIMARY KEY (object, pack)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS index_object_packs_by_pack ON index_object_packs(pack);
";

/// Upsert clause: a blob already indexed keeps its location unless that copy is recorded damaged; then its
/// row moves to the new copy, which heals every snapshot naming the blob. (SQLite applies the `DO UPDATE`
/// instead of `OR IGNORE` for this uniqueness conflict.)
const MOVE_FROM_DAMAGED_COPY: &str = "ON CONFLICT(id) DO UPDATE SET pack_no = excluded.pack_no,
    kind = excluded.kind, compression = excluded.compression, offset = excluded.offset,
    stored_len = excluded.stored_len, raw_len = excluded.raw_len, base = excluded.base
    WHERE EXISTS (SELECT 1 FROM damaged_blobs d WHERE d.blob = blobs.id
        AND d.pack = (SELECT p.id FROM packs p WHERE p.pack_no = blobs.pack_no))";

/// Inserts a pack row and its blob rows. `on_conflict` decides what happens to a blob already indexed:
/// `IGNORE` keeps its existing location (a backup's duplicate copy) unless that location is a copy recorded
/// damaged, `REPLACE` moves it here (a repack).
fn record_pack(
    tx: &rusqlite::Transaction,
    pack: Id,
    size: u64,
    entries: &[BlobEntry],
    on_conflict: &str,
) -> Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO packs(id, size, blob_count) VALUES (?1, ?2, ?3)",
        params![&pack.0[..], size as i64, entries.len() as i64],
    )?;
    let pack_no: i64 = tx.query_row(
        "SELECT pack_no FROM packs WHERE id = ?1",
        params![&pack.0[..]],
        |r| r.get(0),
    )?;
    let mut st = tx.prepare_cached(&format!(
        "INSERT OR {on_conflict} INTO blobs(id, pack_no, kind, compression, offset, stored_len, raw_len, base)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) {}",
        if on_conflict == "IGNORE" {
            MOVE_FROM_DAMAGED_COPY
        } else {
            ""
        }
    ))?;
    for e in entries {
        st.execute(params![
            &e.id.0[..],
            pack_no,
            e.kind as u8,
            e.compression as u8,
            e.offset as i64,
            e.stored_len as i64,
            e.raw_len as i64,
            e.base.map(|b| b.0.to_vec()),
        ])?;
    }
    Ok(())
}

/// The blob lookup. A subquery, not a join: SQLite marks a join's plan as depending on the bound id, so the
/// statement cache's `clear_bindings` expired the statement and every lookup was compiled anew (6.4 us
/// instead of 1.3 us).
const LOOKUP_SQL: &str = "SELECT (SELECT p.id FROM packs p WHERE p.pack_no = b.pack_no),
    b.kind, b.compression, b.offset, b.stored_len, b.raw_len, b.base
    FROM blobs b WHERE b.id = ?1";

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: Id,
    pub entry: BlobEntry,
}

/// A pack as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRow {
    pub id: Id,
    pub size: u64,
    pub blob_count: u64,
}

/// How a connection may use the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write: the normal case.
    ReadWrite,
    /// Read only (`mode=ro`): the database file cannot be written by this user, but SQLite can use (or
    /// create) the WAL's `-shm` file, so it still sees what writers elsewhere commit.
    ReadOnly,
    /// `immutable=1`: not even the `-shm` file can be created (a read-only directory or mount, a full disk).
    /// SQLite then reads the main file without locks and ignores any `-wal` file, so this is used only when
    /// there is no `-wal` content to miss; a writer elsewhere could not start here either (it would need the
    /// same `-shm`), except the owner of a directory we may not write, which is a risk we take knowingly.
    Immutable,
}

/// A connection to the index database.
pub struct Index {
    conn: Connection,
    access: Access,
}

/// Every file SQLite keeps for the database at `path`: the file itself, its WAL, WAL index and journal.
fn database_files(path: &Path) -> [PathBuf; 4] {
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    [with(""), with("-wal"), with("-shm"), with("-journal")]
}

/// Creates the database file, empty and private, if it does not exist (SQLite treats an empty file as an
/// empty database). SQLite itself would create it 0644 less the umask, and its `-wal`/`-shm` files with it.
fn create_private(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::fsutil::PRIVATE_FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Makes the index files of an existing repository private to their owner, and gives SQLite's side files the
/// database file's owner bits (best effort, see [`crate::fsutil::make_private`]). SQLite creates the side
/// files with the database file's mode and keeps using them: a `-shm` created read-only by a reader of a
/// read-only index would otherwise make every later writer read-only too, once the index is writable again.
fn tighten(path: &Path) {
    let [db, side @ ..] = database_files(path);
    crate::fsutil::make_private(&db);
    let Ok(md) = std::fs::metadata(&db) else {
        return;
    };
    let owner_bits = std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o600;
    for f in side {
        crate::fsutil::set_mode_if_owned(&f, |_| owner_bits);
    }
}

/// The operating system's reason for a failed SQLite call, when there is one: "disk I/O error" or "unable to
/// open database file" hide a full disk or a permission problem, which the user must be told.
fn with_os_cause(conn: &Connection, path: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, PermissionDenied, ReadOnly, SystemIoFailure};
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if matches!(
            f.code,
            CannotOpen | SystemIoFailure | DiskFull | PermissionDenied | ReadOnly
        ) {
            // SAFETY: the handle is valid while `conn` lives; sqlite3_system_errno only reads it.
            let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
            if errno != 0 {
                return Error::io(path, std::io::Error::from_raw_os_error(errno));
            }
        }
    }
    Error::Index(e)
}

/// `path` as the path of an SQLite `file:` URI: bytes other than unreserved ones and `/` percent-encoded.
/// Temporary tables and the sorts of large queries go to a file, not memory (the bundled SQLite is built
/// with `SQLITE_TEMP_STORE=2`, memory by default): prune's, check's and stats' sets of ids
/// ([`crate::marks`]) grow with the repository, and the process's memory must not.
fn temp_in_file(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "temp_store", "FILE")
}

fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Refuses an index whose schema version this build does not know.
fn check_schema_version(conn: &Connection) -> Result<()> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match v {
        Some(v) if v == SCHEMA_VERSION.to_string() => Ok(()),
        Some(v) => Err(Error::corrupt(
            "index",
            format!("schema version {v} is not supported"),
        )),
        None => Err(Error::corrupt("index", "no schema version recorded")),
    }
}

impl Index {
    /// Opens (creating if needed) the index at `path` for writing, in WAL mode with full fsync on commit.
    /// An index already set up is not written to.
    pub fn open(path: &Path) -> Result<Index> {
        create_private(path)?;
        tighten(path);
        let conn = Connection::open(path)?;
        Self::set_up(&conn).map_err(|e| with_os_cause(&conn, path, e))?;
        check_schema_version(&conn).map_err(|e| match e {
            Error::Index(e) => with_os_cause(&conn, path, e),
            other => other,
        })?;
        Ok(Index {
            conn,
            access: Access::ReadWrite,
        })
    }

    fn set_up(conn: &Connection) -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(120))?;
        temp_in_file(conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // `IF NOT EXISTS` statements write nothing when the tables exist; the version row is written once.
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(tree_cache::SCHEMA)?;
        let has_version = conn
            .prepare("SELECT 1 FROM meta WHERE key = 'schema_version'")?
            .exists([])?;
        if !has_version {
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?1)",
                params![SCHEMA_VERSION.to_string()],
            )?;
        }
        Ok(())
    }

    /// Opens an existing index that this process cannot write (a read-only file, directory or mount, or a
    /// full disk): `mode=ro` first; where that fails because the WAL's `-shm` file cannot be created,
    /// `immutable=1`, but only when the `-wal` file holds nothing that `immutable` would silently skip.
    pub fn open_read_only(path: &Path) -> Result<Index> {
        tighten(path);
        let first = match Self::open_uri(path, Access::ReadOnly) {
            Ok(index) => return Ok(index),
            Err(e @ Error::Corrupt { .. }) => return Err(e),
            Err(Error::Index(rusqlite::Error::SqliteFailure(f, m)))
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
                ) =>
            {
                return Err(Error::Index(rusqlite::Error::SqliteFailure(f, m)))
            }
            Err(e) => e,
        };
        let [_, wal, shm, _] = database_files(path);
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            return Err(Error::Invalid(format!(
                "{} holds changes that can only be read through {}, which cannot be opened here ({first}); open the repository once where it can be written",
                wal.display(),
                shm.display()
            )));
        }
        Self::open_uri(path, Access::Immutable)
    }

    fn open_uri(path: &Path, access: Access) -> Result<Index> {
        let query = match access {
            Access::ReadWrite => return Self::open_reader(path, access),
            Access::ReadOnly => "mode=ro",
            Access::Immutable => "immutable=1",
        };
        let uri = format!("file:{}?{query}", uri_path(path));
        let conn = Connection::open_with_flags(
            &uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(120))?;
        temp_in_file(&conn)?;
        // The first statement is what really opens the files (and fails if the -shm cannot be had).
        check_schema_version(&conn).map_err(|e| match e {
            Error::Index(e) => with_os_cause(&conn, path, e),
            other => other,
        })?;
        Ok(Index { conn, access })
    }

    /// Opens another connection to an index already open with `access`, for lookups only. In WAL mode it
    /// reads beside the writer: lookups do not wait while a pack is being indexed and committed.
    pub fn open_reader(path: &Path, access: Access) -> Result<Index> {
        if access != Access::ReadWrite {
            return Self::open_uri(path, access);
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(120))?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(Index { conn, access })
    }

    /// How this connection uses the index.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Runs a quick integrity check of the database file.
    pub fn quick_check(&self) -> Result<()> {
        let r: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if r == "ok" {
            Ok(())
        } else {
            Err(Error::corrupt("index", r))
        }
    }

    /// True if the blob is indexed.
    pub fn contains(&self, id: &Id) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")?;
        Ok(st.exists(params![&id.0[..]])?)
    }

    /// Runs `f` in one read transaction, so the lookups it makes share one start: SQLite checks the database
    /// file (an `fstat`, and `fcntl` locks) when a transaction starts, which a statement on its own does for
    /// itself — once per lookup of a restore of many small files. `f` sees what was committed when its first
    /// statement ran.
    pub fn in_read_transaction<T>(&self, f: impl FnOnce(&Index) -> T) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let out = f(self);
        tx.rollback()?;
        Ok(out)
    }

    /// Where the blob is stored, if indexed.
    pub fn lookup(&self, id: &Id) -> Result<Option<Location>> {
        let mut st = self.conn.prepare_cached(LOOKUP_SQL)?;
        let row = st
            .query_row(params![&id.0[..]], |r| {
                Ok((
                    r.get::<_, Option<Vec<u8>>>(0)?,
                    r.get::<_, u8>(1)?,
                    r.get::<_, u8>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<Vec<u8>>>(6)?,
                ))
            })
            .optional()?;
        // A row naming no pack is not a location (the join this replaced skipped it too).
        let Some((Some(pack), kind, comp, offset, stored, raw, base)) = row else {
            return Ok(None);
        };
        let bad = |d: &str| Error::corrupt("index", format!("blob {}: {d}", id.short()));
        Ok(Some(Location {
            pack: Id::from_slice(&pack).ok_or_else(|| bad("pack id"))?,
            entry: BlobEntry {
                kind: BlobKind::from_u8(kind).ok_or_else(|| bad("kind"))?,
                compression: Compression::from_u8(comp).ok_or_else(|| bad("compression"))?,
                offset: u64::try_from(offset).map_err(|_| bad("offset"))?,
                stored_len: u32::try_from(stored).map_err(|_| bad("stored length"))?,
                raw_len: u32::try_from(raw).map_err(|_| bad("raw length"))?,
                id: *id,
                base: base.as_deref().and_then(Id::from_slice),
            },
        }))
    }

    /// Records a durable pack and its blobs in one transaction. A blob already indexed elsewhere keeps its
    /// existing location (the new copy is a harmless duplicate that prune will drop).
    pub fn add_pack(&mut self, pack: Id, size: u64, entries: &[BlobEntry]) -> Result<()> {
        let tx = self.conn.transaction()?;
        Self::insert_pack(&tx, pack, size, entries)?;
        tx.commit()?;
        Ok(())
    }

    /// [`add_pack`](Self::add_pack) inside the caller's transaction (see [`transaction`](Self::transaction)),
    /// so that many packs can be recorded with one commit.
    pub fn insert_pack(
        tx: &rusqlite::Transaction,
        pack: Id,
        size: u64,
        entries: &[BlobEntry],
    ) -> Result<()> {
        record_pack(tx, pack, size, entries, "IGNORE")
    }

    /// Records a durable pack written by a repack and moves the rows of its blobs to it, in one transaction.
    pub fn relocate_pack(&mut self, pack: Id, size: u64, entries: &[BlobEntry]) -> Result<()> {
        let tx = self.conn.transaction()?;
        record_pack(&tx, pack, size, entries, "REPLACE")?;
        tx.commit()?;
        Ok(())
    }

    /// All indexed packs.
    pub fn packs(&self) -> Result<Vec<PackRow>> {
        let mut st = self
            .conn
            .prepare("SELECT id, size, blob_count FROM packs ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        rows.map(|r| {
            let (id, size, count) = r?;
            Ok(PackRow {
                id: Id::from_slice(&id).ok_or_else(|| Error::corrupt("index", "pack id"))?,
                size: size as u64,
                blob_count: count as u64,
            })
        })
        .collect()
    }

    /// Blobs the index places in `pack`.
    pub fn blobs_in_pack(&self, pack: &Id) -> Result<Vec<BlobEntry>> {
        let mut st = self.conn.prepare_cached(
            "SELECT b.id FROM blobs b JOIN packs p ON p.pack_no = b.pack_no WHERE p.id = ?1 ORDER BY b.offset",
        )?;
        let ids: Vec<Vec<u8>> = st
            .query_map(params![&pack.0[..]], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let id = Id::from_slice(&id).ok_or_else(|| Error::corrupt("index", "blob id"))?;
            if let Some(loc) = self.lookup(&id)? {
                out.push(loc.entry);
            }
        }
        Ok(out)
    }

    /// Number of indexed blobs.
    pub fn blob_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Removes a pack, its blob rows, the cached copies of its trees and its damage records (the caller deletes the file only after this
    /// commits).
    pub fn remove_pack(&mut self, pack: &Id) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(tree_cache::FORGET_PACK_TREES, params![&pack.0[..]])?;
        tx.execute(
            "DELETE FROM blobs WHERE pack_no = (SELECT pack_no FROM packs WHERE id = ?1)",
            params![&pack.0[..]],
        )?;
        tx.execute("DELETE FROM packs WHERE id = ?1", params![&pack.0[..]])?;
        tx.execute(
            "DELETE FROM damaged_blobs WHERE pack = ?1",
            params![&pack.0[..]],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes every row (used by `repair index` before a rebuild into a fresh file).
    pub fn raw(&self) -> &Connection {
        &self.conn
    }

    /// Runs `f` in one transaction.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction) -> Result<T>,
    ) -> Result<T> {
        let tx = self.conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::sample_entry;

    #[test]
    fn add_lookup_remove() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&dir.path().join("index.sqlite")).unwrap();
        let pack = Id::of(b"pack");
        idx.add_pack(pack, 100, &[sample_entry(1), sample_entry(2)])
            .unwrap();
        let loc = idx.lookup(&Id::of(&[1])).unwrap().unwrap();
        assert_eq!(loc.pack, pack);
        assert_eq!(loc.entry, sample_entry(1));
        assert!(idx.contains(&Id::of(&[2])).unwrap());
        assert!(!idx.contains(&Id::of(&[3])).unwrap());
        assert_eq!(idx.blobs_in_pack(&pack).unwrap().len(), 2);
        idx.remove_pack(&pack).unwrap();
        assert!(idx.lookup(&Id::of(&[1])).unwrap().is_none());
        assert!(idx.packs().unwrap().is_empty());
    }

    #[test]
    fn a_reader_sees_each_commit_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let mut idx = Index::open(&path).unwrap();
        let mut reader = Index::open_reader(&path, Access::ReadWrite).unwrap();
        assert!(!reader.contains(&Id::of(&[1])).unwrap());
        idx.add_pack(Id::of(b"a"), 100, &[sample_entry(1)]).unwrap();
        assert!(reader.contains(&Id::of(&[1])).unwrap());
        assert!(reader
            .add_pack(Id::of(b"b"), 100, &[sample_entry(2)])
            .is_err());
        assert!(!idx.contains(&Id::of(&[2])).unwrap());
    }

    /// The lookups of one read transaction share its start: a pack committed meanwhile is seen only by the
    /// next transaction (what shows that the transaction, not each statement, took the snapshot).
    #[test]
    fn lookups_in_one_read_transaction_share_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let mut idx = Index::open(&path).unwrap();
        idx.add_pack(Id::of(b"a"), 100, &[sample_entry(1)]).unwrap();
        let reader = Index::open_reader(&path, Access::ReadWrite).unwrap();
        let seen = reader
            .in_read_transaction(|r| {
                let first = r.lookup(&Id::of(&[1])).unwrap().is_some();
                idx.add_pack(Id::of(b"b"), 100, &[sample_entry(2)]).unwrap();
                (first, r.lookup(&Id::of(&[2])).unwrap().is_some())
            })
            .unwrap();
        assert_eq!(seen, (true, false));
        assert!(reader.lookup(&Id::of(&[2])).unwrap().is_some());
    }

    #[test]
    fn lookups_reuse_their_compiled_statement() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&dir.path().join("index.sqlite")).unwrap();
        idx.add_pack(Id::of(b"a"), 100, &[sample_entry(1), sample_entry(2)])
            .unwrap();
        for n in 0..50u8 {
            let found = idx.lookup(&Id::of(&[n % 4])).unwrap();
            assert_eq!(found.is_some(), matches!(n % 4, 1 | 2));
        }
        let st = idx.conn.prepare_cached(LOOKUP_SQL).unwrap();
        assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[test]
    fn a_new_copy_replaces_a_damaged_one_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&dir.path().join("i.sqlite")).unwrap();
        let (a, b, c) = (Id::of(b"a"), Id::of(b"b"), Id::of(b"c"));
        idx.add_pack(a, 100, &[sample_entry(1), sample_entry(2)])
            .unwrap();
        idx.record_damage(&[DamageRecord::now(Id::of(&[1]), a, "flipped")])
            .unwrap();
        assert_eq!(idx.damage_in_use().unwrap().len(), 1);
        assert!(idx.packs_with_superseded_damage().unwrap().is_empty());
        let mut moved = sample_entry(1);
        moved.offset = 8;
        idx.add_pack(b, 100, &[moved, sample_entry(2)]).unwrap();
        // The damaged blob moved to the new copy; the good one stayed where it was.
        assert_eq!(idx.lookup(&Id::of(&[1])).unwrap().unwrap().pack, b);
        assert_eq!(idx.lookup(&Id::of(&[1])).unwrap().unwrap().entry.offset, 8);
        assert_eq!(idx.lookup(&Id::of(&[2])).unwrap().unwrap().pack, a);
        assert!(idx.damage_in_use().unwrap().is_empty());
        assert_eq!(
            idx.packs_with_superseded_damage().unwrap(),
            [a].into_iter().collect()
        );
        // A third copy does not move it again.
        idx.add_pack(c, 100, &[sample_entry(1)]).unwrap();
        assert_eq!(idx.lookup(&Id::of(&[1])).unwrap().unwrap().pack, b);
        // Removing the damaged pack removes its records.
        idx.remove_pack(&a).unwrap();
        assert!(idx.damage_records().unwrap().is_empty());
    }

    #[test]
    fn an_index_from_before_the_damage_record_opens_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        let idx = Index::open(&path).unwrap();
        idx.raw().execute_batch("DROP TABLE damaged_blobs").unwrap();
        drop(idx);
        // A reader of such an index sees no damage rather than an error; a writer adds the table.
        let reader = Index::open_reader(&path, Access::ReadWrite).unwrap();
        assert!(reader.damage_in_use().unwrap().is_empty());
        assert!(reader.packs_with_superseded_damage().unwrap().is_empty());
        let idx = Index::open(&path).unwrap();
        idx.record_damage(&[DamageRecord::now(Id::of(b"x"), Id::of(b"p"), "flipped")])
            .unwrap();
        assert_eq!(idx.damage_records().unwrap().len(), 1);
    }

    #[test]
    fn duplicate_blob_keeps_first_location() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&dir.path().join("i.sqlite")).unwrap();
        idx.add_pack(Id::of(b"a"), 100, &[sample_entry(1)]).unwrap();
        idx.add_pack(Id::of(b"b"), 100, &[sample_entry(1)]).unwrap();
        assert_eq!(
            idx.lookup(&Id::of(&[1])).unwrap().unwrap().pack,
            Id::of(b"a")
        );
    }
}
