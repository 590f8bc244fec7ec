//! A repository on disk (format-spec/README.md, "Layout"): opening and creating it, reading blobs, and
//! finding and saving snapshots.
//!
//! ```text
//! <repo>/config               JSON, written once by init
//! <repo>/index.sqlite         the SQLite index (a rebuildable cache)
//! <repo>/packs/<xx>/<id>      pack files, <xx> = first two hex digits of the pack id
//! <repo>/snapshots/<id>       snapshot files
//! <repo>/locks/<random>       lock files
//! ```
//!
//! A repository this process cannot write (a read-only mount or directory, an index file it may not write, a
//! full disk) opens read-only: everything that only reads works, and [`Repository::require_writable`] makes
//! every writing command fail up front with the real cause. Only genuine corruption of the index is reported
//! as such: `repair index` cannot fix a permission problem, and it discards the run log.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::hashing::Id;
use crate::index::{Access, Index, Location};
use crate::pack::{self, BlobKind};
use crate::snapshot::Snapshot;
use crate::tree::Tree;

/// File name of the index database inside a repository.
pub const INDEX_FILE: &str = "index.sqlite";

/// An open repository.
pub struct Repository {
    root: PathBuf,
    config: Config,
    index: Mutex<Index>,
    /// Read-only connections for lookups from many threads at once (see [`Self::with_reader`]).
    readers: Mutex<Vec<Index>>,
    /// Why this repository cannot be written from here, if it cannot.
    read_only: Option<String>,
    /// How the index is opened (every connection alike).
    access: Access,
}

impl Repository {
    /// Creates a new repository at `root` (which may exist but must not hold a repository).
    pub fn init(root: &Path, config: Config) -> Result<Repository> {
        if root.join("config").exists() {
            return Err(Error::AlreadyExists(root.to_path_buf()));
        }
        for sub in ["packs", "snapshots", "locks"] {
            fsutil::ensure_dir(&root.join(sub))?;
        }
        // The config is written last: a directory without it is not yet a repository.
        let bytes = serde_json::to_vec_pretty(&config).map_err(|e| Error::corrupt("config", e))?;
        Index::open(&root.join(INDEX_FILE))?;
        fsutil::write_durable(&root.join("config"), &bytes)?;
        fsutil::sync_dir(root.parent().unwrap_or(Path::new("/")))?;
        Repository::open(root)
    }

    /// Opens an existing repository.
    pub fn open(root: &Path) -> Result<Repository> {
        let config_path = root.join("config");
        if !config_path.is_file() {
            return Err(Error::NotARepository(root.to_path_buf()));
        }
        let config = Config::load(&config_path)?;
        let index_path = root.join(INDEX_FILE);
        if !index_path.exists() && has_packs(root)? {
            return Err(Error::corrupt(
                "index",
                format!(
                    "{} is missing; rebuild it with `cairn repair index`",
                    index_path.display()
                ),
            ));
        }
        let (index, read_only) = open_index(&index_path)?;
        Ok(Repository {
            root: root.to_path_buf(),
            config,
            access: index.access(),
            index: Mutex::new(index),
            readers: Mutex::new(Vec::new()),
            read_only,
        })
    }

    /// Fails, naming the cause, if this repository cannot be written from here. Every writing operation
    /// calls it before it writes anything.
    pub fn require_writable(&self) -> Result<()> {
        match &self.read_only {
            None => Ok(()),
            Some(cause) => Err(Error::ReadOnly {
                root: self.root.clone(),
                cause: cause.clone(),
            }),
        }
    }

    /// True if the repository was opened read-only (see [`Self::require_writable`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only.is_some()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The index connection. Held briefly: every lookup and insert goes through it.
    pub fn index(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back), so a
        // poisoned mutex is still safe to use.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a read-only index connection of its own, taken from a pool that grows to the number of
    /// threads looking up at once. Lookups then wait neither for each other nor for the writer connection
    /// (which holds its lock while a pack's rows are inserted and committed). A reader sees what is committed
    /// when its statement starts: callers must not rely on it for rows of a transaction still open.
    pub fn with_reader<T>(&self, f: impl FnOnce(&Index) -> Result<T>) -> Result<T> {
        let pooled = self.lock_readers().pop();
        let reader = match pooled {
            Some(r) => r,
            None => Index::open_reader(&self.root.join(INDEX_FILE), self.access)?,
        };
        let out = f(&reader);
        self.lock_readers().push(reader);
        out
    }

    fn lock_readers(&self) -> MutexGuard<'_, Vec<Index>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Path of a pack file.
    pub fn pack_path(&self, id: &Id) -> PathBuf {
        let hex = id.to_hex();
        self.packs_dir().join(&hex[..2]).join(hex)
    }

    /// Reads, decompresses and verifies one blob.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        self.read_located(&self.locate(id)?)
    }

    /// Where a blob is stored; `NotFound` if the index does not have it.
    pub fn locate(&self, id: &Id) -> Result<Location> {
        self.with_reader(|r| r.lookup(id))?
            .ok_or_else(|| Error::NotFound(format!("blob {id} is not in the index")))
    }

    /// Opens a pack file for [`read_from`](Self::read_from).
    pub fn open_pack(&self, pack: &Id) -> Result<File> {
        let path = self.pack_path(pack);
        File::open(&path).at(&path)
    }

    /// Reads a blob at a known location.
    pub fn read_located(&self, loc: &Location) -> Result<Vec<u8>> {
        self.read_from(&self.open_pack(&loc.pack)?, loc)
    }

    /// Reads, decompresses and verifies a blob from its pack, already open.
    pub fn read_from(&self, file: &File, loc: &Location) -> Result<Vec<u8>> {
        let mut stored = vec![0u8; loc.entry.stored_len as usize];
        file.read_exact_at(&mut stored, loc.entry.offset)
            .at(self.pack_path(&loc.pack))?;
        pack::decode_blob(&loc.entry, &stored).map_err(|e| match e {
            Error::Corrupt { what, detail } => Error::Corrupt {
                what: format!("{what} in pack {}", loc.pack.short()),
                detail,
            },
            other => other,
        })
    }

    /// Reads and decodes a tree object.
    pub fn read_tree(&self, id: &Id) -> Result<Tree> {
        let loc = self
            .with_reader(|r| r.lookup(id))?
            .ok_or_else(|| Error::NotFound(format!("tree {id} is not in the index")))?;
        if loc.entry.kind != BlobKind::Tree {
            return Err(Error::corrupt(format!("tree {id}"), "blob is not a tree"));
        }
        Tree::decode(&self.read_located(&loc)?)
    }

    /// Saves a snapshot and returns its id: the index row is inserted in a transaction that commits only after
    /// the snapshot file is durable (format-spec, "Write ordering" 4). If anything fails, the file is removed
    /// (durably) before the error is returned, so a failed backup leaves no snapshot object: an object without
    /// a row would be adopted by the next prune or `repair index`, bringing back a snapshot the user was told
    /// had failed. A crash between the file and the commit leaves exactly that, which is safe: prune takes
    /// its roots from the snapshot files, so the object's data is kept.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        self.require_writable()?;
        let (bytes, id) = snap.encode()?;
        let hex = id.to_hex();
        let path = self.snapshots_dir().join(&hex);
        // The same bytes saved before are an object someone else owns: never removed here.
        let existed = path.exists();
        let saved = self
            .index()
            .add_snapshot_with(snap, &hex, || fsutil::write_durable(&path, &bytes));
        match saved {
            Ok(()) => Ok(id),
            Err(e) if existed => Err(e),
            Err(e) => match fsutil::remove_durable(&path) {
                Ok(()) => Err(e),
                Err(rm) => Err(Error::Invalid(format!(
                    "{e}; the snapshot file could not be removed either ({rm}): it has no index row, `cairn check` reports it"
                ))),
            },
        }
    }

    /// Removes a snapshot: the index row first, then the file, so a crash in between leaves the snapshot
    /// recoverable by `repair index` rather than a dangling row.
    pub fn remove_snapshot(&self, id: &Id) -> Result<()> {
        self.index().remove_snapshot(&id.to_hex())?;
        fsutil::remove_durable(&self.snapshots_dir().join(id.to_hex()))
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        self.index()
            .snapshots()?
            .into_iter()
            .map(|(id, s)| {
                Ok((
                    Id::from_hex(&id).ok_or_else(|| Error::corrupt("index", "snapshot id"))?,
                    s,
                ))
            })
            .collect()
    }

    /// Resolves `latest`, a full id or a unique prefix of at least 4 hex digits. `latest` skips snapshots
    /// dated in the future ([`crate::schedule::is_future`]): a mistyped `--force-time` must not shadow every
    /// later backup; such a snapshot is still reachable by its id.
    pub fn resolve_snapshot(&self, spec: &str, instance: Option<&str>) -> Result<(Id, Snapshot)> {
        if spec == "latest" {
            let now = chrono::Utc::now();
            let mut future = 0;
            return self
                .snapshots()?
                .into_iter()
                .rev()
                .filter(|(_, s)| instance.is_none() || s.instance.as_deref() == instance)
                .find(|(_, s)| {
                    let skip = crate::schedule::is_future(s.time, now);
                    future += usize::from(skip);
                    !skip
                })
                .ok_or_else(|| match future {
                    0 => Error::NotFound("no snapshot found for `latest`".into()),
                    n => Error::NotFound(format!(
                        "no snapshot found for `latest` ({n} dated in the future skipped: name one by its id)"
                    )),
                });
        }
        let spec = spec.to_ascii_lowercase();
        if spec.len() < 4 || spec.len() > 64 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!(
                "{spec:?} is not a snapshot id (want `latest` or at least 4 hex digits)"
            )));
        }
        let ids = self.index().snapshot_ids_with_prefix(&spec)?;
        match ids.as_slice() {
            [] => Err(Error::NotFound(format!("no snapshot matches {spec:?}"))),
            [one] => {
                let id = Id::from_hex(one).ok_or_else(|| Error::corrupt("index", "snapshot id"))?;
                Ok((id, Snapshot::load(&self.snapshots_dir(), &id)?))
            }
            many => Err(Error::Ambiguous {
                prefix: spec,
                matches: many.iter().map(|s| &s[..12]).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Lists every pack file on disk with its size.
    pub fn pack_files(&self) -> Result<Vec<(Id, u64)>> {
        list_pack_files(&self.packs_dir())
    }
}

/// Opens the index for writing when it can be written, else read-only with the reason kept. Only damage
/// that SQLite recognises as such is reported as corruption.
fn open_index(path: &Path) -> Result<(Index, Option<String>)> {
    if path.exists() {
        // Reading needs the file: say so plainly (e.g. EACCES) if it cannot be opened.
        File::open(path).at(path)?;
        if let Err(e) = OpenOptions::new().read(true).write(true).open(path) {
            if !fsutil::is_unwritable(&e) {
                return Err(Error::io(path, e));
            }
            let cause = Error::io(path, e).to_string();
            let index = Index::open_read_only(path).map_err(|e| corruption_hint(path, e))?;
            return Ok((index, Some(cause)));
        }
    }
    match Index::open(path) {
        Ok(index) => Ok((index, None)),
        Err(e) if path.exists() && cannot_write(&e) => {
            let index = Index::open_read_only(path).map_err(|e| corruption_hint(path, e))?;
            Ok((index, Some(e.to_string())))
        }
        Err(e) => Err(corruption_hint(path, e)),
    }
}

/// True for errors opening the index for writing that mean it cannot be written here, not that it is bad.
fn cannot_write(e: &Error) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, PermissionDenied, ReadOnly, SystemIoFailure};
    match e {
        Error::Io { source, .. } => {
            fsutil::is_unwritable(source) || source.raw_os_error() == Some(libc::EIO)
        }
        Error::Index(rusqlite::Error::SqliteFailure(f, _)) => matches!(
            f.code,
            ReadOnly | CannotOpen | DiskFull | SystemIoFailure | PermissionDenied
        ),
        _ => false,
    }
}

/// Adds the `repair index` hint to an error that is corruption of the index file, and only to that.
fn corruption_hint(path: &Path, e: Error) -> Error {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match e {
        Error::Index(rusqlite::Error::SqliteFailure(f, m))
            if matches!(f.code, DatabaseCorrupt | NotADatabase) =>
        {
            let e = rusqlite::Error::SqliteFailure(f, m);
            Error::corrupt(
                "index",
                format!(
                    "{}: {e}; rebuild it with `cairn repair index`",
                    path.display()
                ),
            )
        }
        other => other,
    }
}

fn has_packs(root: &Path) -> Result<bool> {
    Ok(!list_pack_files(&root.join("packs"))?.is_empty())
}

/// Pack files under `packs/`, skipping temporary files; unexpected names are ignored.
pub fn list_pack_files(dir: &Path) -> Result<Vec<(Id, u64)>> {
    let mut out = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for sub in subdirs {
        let sub = sub.at(dir)?;
        if !sub.file_type().at(sub.path())?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(sub.path()).at(sub.path())? {
            let f = f.at(sub.path())?;
            let name = f.file_name();
            if let Some(id) = name.to_str().and_then(Id::from_hex) {
                out.push((id, f.metadata().at(f.path())?.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The default repository: `$XDG_DATA_HOME/cairn/repo`, else `~/.local/share/cairn/repo`.
pub fn default_repo_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("cairn/repo"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/cairn/repo"))
}
