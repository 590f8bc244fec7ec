//! A repository (format-spec/README.md, "Layout" and "Storage"): opening and creating it, reading blobs, and
//! finding and saving snapshots. Every repository object is read and written through a [`Backend`]; this
//! module and those above it never touch the storage themselves.
//!
//! ```text
//! config               JSON, written once by init
//! packs/<xx>/<id>      pack files, <xx> = first two hex digits of the pack id
//! snapshots/<id>       snapshot files
//! locks/<random>       lock files
//! instances/<name>.<generation>.<time_ms>.<nonce>.json  instance configuration revisions
//! runs/<id>            run-log entries
//! ```
//!
//! The SQLite index is a local cache of the repository's index objects: `<repo>/index.sqlite` for a repository
//! in a directory, `$XDG_CACHE_HOME/cairn/<repository id>/index.sqlite` for one in object storage.
//! [`Repository::open`] brings it up to date from the index objects it has not seen (see
//! [`crate::index_sync`]); for object storage, or a local index that was deleted, also from the pack listing,
//! snapshots and instances ([`Repository::sync_cache`]). Deleting it loses nothing.
//!
//! A local repository this process cannot write (a read-only mount or directory, an index file it may not
//! write, a full disk) opens read-only: everything that only reads works, and [`Repository::require_writable`]
//! makes every writing command fail up front with the real cause. Only genuine corruption of the index is
//! reported as such: `repair index` cannot fix a permission problem, and it discards the run log.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::backend::{self, Backend, ObjectKind, RangeReader, RepoUrl, SharedBackend};
use crate::config::Config;
use crate::crypto::{self, Crypto};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::hashing::Id;
use crate::index::{Access, Index, Location};
use crate::pack::{self, BlobKind};
use crate::snapshot::Snapshot;

mod trees;

/// File name of the index database inside a local repository (and inside an object-store repository's cache).
pub const INDEX_FILE: &str = "index.sqlite";

/// An open repository.
pub struct Repository {
    backend: SharedBackend,
    /// Where the repository is, for messages.
    location: String,
    index_path: PathBuf,
    config: Config,
    /// The repository's keys (none for a plaintext repository).
    crypto: Crypto,
    index: Mutex<Index>,
    /// Read-only connections for lookups from many threads at once (see [`Self::with_reader`]).
    readers: Mutex<Vec<Index>>,
    /// Why this repository cannot be written from here, if it cannot.
    read_only: Option<String>,
    /// How the index is opened (every connection alike).
    access: Access,
    /// How many sealed packs may be written at once (`--connections`).
    connections: std::sync::atomic::AtomicUsize,
    /// The locks taken on this repository that are still held ([`crate::lock::acquire_on`]), checked at
    /// every commit point ([`Self::ensure_locks_held`]).
    locks: Mutex<Vec<std::sync::Weak<crate::lock::Hold>>>,
}

/// Packs written at once by default: object storage gains from parallel requests; a local disk, where each
/// pack ends with an fsync, does not (see BENCHMARKS.md).
pub const DEFAULT_CONNECTIONS_S3: usize = 4;
pub const DEFAULT_CONNECTIONS_LOCAL: usize = 1;

/// A backend for `url` and the repository's config; `NotARepository` when there is no config. The backend
/// does not open sealed objects: see [`connect_unlocked`] for one that does.
pub fn connect(url: &RepoUrl) -> Result<(SharedBackend, Config)> {
    let backend = url.connect()?;
    let config = load_config(backend.as_ref())?;
    Ok((backend, config))
}

/// Like [`connect`], with the repository's keys opened (the password asked for if it is encrypted) and a
/// backend that seals and opens whole objects with them. The config's chunker seeds are set from the keys.
pub fn connect_unlocked(url: &RepoUrl) -> Result<(SharedBackend, Config, Crypto)> {
    let (raw, config) = connect(url)?;
    unlock(raw, config)
}

fn unlock(raw: SharedBackend, mut config: Config) -> Result<(SharedBackend, Config, Crypto)> {
    // The config is plaintext: someone who can write the repository could mark an encrypted one plaintext so
    // that the next backup stores data in the clear. Key files give it away.
    if !config.is_encrypted() && !raw.list(ObjectKind::Key)?.is_empty() {
        return Err(Error::corrupt(
            "config",
            "it says the repository is plaintext, but the repository has key files (was the config replaced?)",
        ));
    }
    let crypto = crypto::open_keys(raw.as_ref(), &config)?;
    config.chunker_files.seed = crypto.chunker_seed();
    config.chunker_streams.seed = crypto.chunker_seed();
    Ok((crypto::sealed::wrap(raw, &crypto), config, crypto))
}

/// Reads and validates the repository's config.
fn load_config(backend: &dyn Backend) -> Result<Config> {
    match backend.get(ObjectKind::Config, "config") {
        Ok(bytes) => Config::decode(&bytes),
        Err(e) if backend::is_not_found(&e) => {
            Err(Error::NotARepository(PathBuf::from(backend.location())))
        }
        Err(e) => Err(e),
    }
}

/// Where the index of the repository at `backend` lives: next to a local repository's objects, else in the
/// user's cache directory under the repository id.
///
/// The index of an encrypted repository holds snapshot paths, host names and instance configurations in
/// the clear, so it never lives inside the repository: even a local one keeps it in the cache directory,
/// under the repository id and a hash of its place (two copies of one repository get two caches).
pub fn index_path(backend: &dyn Backend, config: &Config) -> Result<PathBuf> {
    if let (Some(root), false) = (backend.local_root(), config.is_encrypted()) {
        return Ok(root.join(INDEX_FILE));
    }
    Ok(repo_cache_dir(backend, config)?.join(INDEX_FILE))
}

/// This host's cache directory of the repository at `backend` (created if missing): under [`cache_dir`],
/// `cairn/` then the repository id, and for a local repository a hash of its place (two copies of one
/// repository get two caches). It holds the index of a repository in object storage or an encrypted one,
/// and what else this host keeps about the repository (`cairn serve`'s job records).
pub fn repo_cache_dir(backend: &dyn Backend, config: &Config) -> Result<PathBuf> {
    let local = backend.local_root();
    if !config
        .repository_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::corrupt(
            "config",
            "repository id is not a plain name",
        ));
    }
    let name = match local {
        Some(root) => {
            let place = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
            let hash = Id::of(place.as_os_str().as_encoded_bytes());
            format!("{}-{}", config.repository_id, hash.short())
        }
        None => config.repository_id.clone(),
    };
    cache_dir(&Path::new("cairn").join(name))
}

/// `sub` under the user's cache directory, created: `$XDG_CACHE_HOME`, else `$HOME/.cache`, else (unset,
/// or a directory this process may not write) `.cache` in the effective user's home directory from the
/// password database.
///
/// The fallback is for programs run by a server in an environment that is not its OS user's: a PostgreSQL
/// started by root with root's environment runs `archive_command` as postgres with `HOME=/root`, and
/// `wal-push` must still find a cache of its own.
pub fn cache_dir(sub: &Path) -> Result<PathBuf> {
    let from_env = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        });
    let own_home = || {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.dir.join(".cache"))
    };
    let first_err = match from_env {
        Some(root) => match writable_dir(&root.join(sub)) {
            Ok(dir) => return Ok(dir),
            Err(e) if is_permission_denied(&e) => e,
            Err(e) => return Err(e),
        },
        None => {
            Error::Invalid("no cache directory for the index: set XDG_CACHE_HOME or HOME".into())
        }
    };
    match own_home().map(|root| writable_dir(&root.join(sub))) {
        Some(Ok(dir)) => Ok(dir),
        _ => Err(first_err),
    }
}

/// `dir`, created, if this process may write in it (one left by another user may exist and be closed).
fn writable_dir(dir: &Path) -> Result<PathBuf> {
    fsutil::ensure_dir(dir)?;
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| Error::io(dir, std::io::Error::from(e)))?;
    Ok(dir.to_path_buf())
}

pub(crate) fn is_permission_denied(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
}

impl Repository {
    /// Creates a new repository at `url` (a directory may exist but must not hold a repository).
    ///
    /// An encrypted `config` gets a new master key and a first key file under the password of
    /// [`crypto::new_repository_password`], asked for before anything is written.
    pub fn init(url: impl Into<RepoUrl>, config: Config) -> Result<Repository> {
        Repository::init_sharing(url, config, None)
    }

    /// Like [`Repository::init`]; with `from`, the new repository shares the keys of that (open) one
    /// ([`crypto::share_keys`]) and takes its chunker parameters, so `cairn copy` between them deduplicates.
    pub fn init_sharing(
        url: impl Into<RepoUrl>,
        mut config: Config,
        from: Option<&Repository>,
    ) -> Result<Repository> {
        if let Some(src) = from {
            config.chunker_files = src.config().chunker_files;
            config.chunker_streams = src.config().chunker_streams;
            // The mode and cipher follow the source: keyed ids and plain ones never deduplicate, and sealed
            // blobs move as they are only between repositories that open them alike.
            config.encryption = None;
            config.version = crate::config::FORMAT_VERSION;
            if let Some(cipher) = src.crypto().cipher() {
                config = config.encrypted_with(cipher);
            }
        }
        let url = url.into();
        let backend = url.connect()?;
        if backend.stat(ObjectKind::Config, "config")?.is_some() {
            return Err(Error::AlreadyExists(PathBuf::from(backend.location())));
        }
        let password = match config.is_encrypted() {
            true => Some(crypto::new_repository_password()?),
            false => None,
        };
        backend.prepare()?;
        match (&password, from) {
            (Some(p), Some(src)) if src.crypto().is_encrypted() => {
                crypto::share_keys(backend.as_ref(), &config, p, src.crypto())?;
            }
            (Some(p), _) => {
                crypto::create_keys(backend.as_ref(), &config, p)?;
            }
            (None, _) => {}
        }
        // The config is written last: a place without it is not yet a repository.
        let bytes = serde_json::to_vec_pretty(&config).map_err(|e| Error::corrupt("config", e))?;
        Index::open(&index_path(backend.as_ref(), &config)?)?;
        backend.put(ObjectKind::Config, "config", &bytes)?;
        Repository::open_with(backend)
    }

    /// True if there is a repository at `url`.
    pub fn exists(url: &RepoUrl) -> Result<bool> {
        Ok(url.connect()?.stat(ObjectKind::Config, "config")?.is_some())
    }

    /// Opens an existing repository.
    pub fn open(url: impl Into<RepoUrl>) -> Result<Repository> {
        Repository::open_with(url.into().connect()?)
    }

    /// Opens the repository stored in `backend`.
    pub fn open_with(backend: SharedBackend) -> Result<Repository> {
        Repository::open_synced(backend, true)
    }

    /// Opens an existing repository without bringing an object store's cache up to date (a round of five
    /// listings), for a command that takes its lock next ([`crate::lock::acquire_on`] or
    /// [`crate::lock::acquire_reader_on`] do it under the lock) or that only writes an object and its cache
    /// row (the run log). A local repository opens as with [`Repository::open`].
    pub fn open_unsynced(url: impl Into<RepoUrl>) -> Result<Repository> {
        Repository::open_synced(url.into().connect()?, false)
    }

    /// `sync`: whether an object store's cache is brought up to date at open.
    fn open_synced(backend: SharedBackend, sync: bool) -> Result<Repository> {
        let config = load_config(backend.as_ref())?;
        // Keys first: a wrong password must stop the command before anything (even the cache) is written.
        let (backend, config, crypto) = unlock(backend, config)?;
        let index_path = index_path(backend.as_ref(), &config)?;
        let local = backend.local_root().is_some();
        // An index inside a local repository is kept up to date by every writer; one in the cache directory
        // (object storage, or an encrypted repository) may have missed what other writers did.
        let index_inside = local && !config.is_encrypted();
        // A local index that is gone is rebuilt from the index objects (and the trailers of packs none
        // lists); a repository written before index objects existed needs `repair index`.
        let rebuild = index_inside && !index_path.exists();
        // The cache of an encrypted local repository is new: built like one of object storage.
        let new_cache = local && !index_inside && !index_path.exists();
        if rebuild
            && backend.list(ObjectKind::Index)?.is_empty()
            && !backend.list(ObjectKind::Pack)?.is_empty()
        {
            return Err(Error::corrupt(
                "index",
                format!(
                    "{} is missing; rebuild it with `cairn repair index`",
                    index_path.display()
                ),
            ));
        }
        let (index, read_only) = open_index(&index_path)?;
        let repo = Repository {
            location: backend.location(),
            backend,
            index_path,
            config,
            crypto,
            access: index.access(),
            index: Mutex::new(index),
            readers: Mutex::new(Vec::new()),
            read_only,
            connections: std::sync::atomic::AtomicUsize::new(if local {
                DEFAULT_CONNECTIONS_LOCAL
            } else {
                DEFAULT_CONNECTIONS_S3
            }),
            locks: Mutex::new(Vec::new()),
        };
        if !local && !sync {
            // The caller's lock brings the cache up to date, or the caller only writes.
        } else if !local || rebuild || new_cache {
            repo.sync_cache()?;
        } else if repo.read_only.is_none() {
            // Index objects written by another host sharing this directory (cheap: one listing of
            // `index/` when nothing changed).
            crate::index_sync::sync(&repo, false)?;
            if !index_inside {
                // Writers on other hosts record their snapshots in their own caches (this also brings
                // in their instance revisions and run-log entries).
                repo.sync_objects()?;
            } else {
                // Instance revisions and run-log entries written by other hosts (a listing each).
                crate::instance::sync_from_objects(&repo)?;
            }
        }
        Ok(repo)
    }

    /// Brings a cached index up to date with the repository's objects: index objects it has not seen are
    /// read and merged, rows of those that are gone dropped, packs no index object lists are read from
    /// their trailers (see [`crate::index_sync`]); likewise snapshots and instance configurations. Damaged packs and snapshots are left out (`check` reports them; a damaged snapshot is also a warning, since `latest` then means an older one).
    pub fn sync_cache(&self) -> Result<()> {
        crate::index_sync::sync(self, true)?;
        self.sync_objects()
    }

    /// Brings the cached rows of snapshots and instance configurations up to date with the objects (a
    /// listing of each; only new objects are read), whichever process or host wrote them. Packs are not
    /// re-read. Also called by the scheduler's re-check under an instance's run lock
    /// ([`crate::runner::enter_scheduled_run`]), which must see another host's run.
    pub(crate) fn sync_objects(&self) -> Result<()> {
        let rows: HashSet<Id> = self.snapshots()?.into_iter().map(|(id, _)| id).collect();
        let objects: HashSet<Id> = self.snapshot_objects()?.into_iter().collect();
        for gone in rows.difference(&objects) {
            self.index().remove_snapshot(&gone.to_hex())?;
        }
        for id in objects.difference(&rows) {
            match self.load_snapshot(id) {
                Ok(snap) => self.index().add_snapshot(&snap, &id.to_hex())?,
                // Left out, but said (once per process): otherwise `latest` would silently be an older
                // snapshot (on a new host, after the cache was lost, on every open of an object store) and
                // listings would hide it.
                Err(e) if e.is_damage() => {
                    static WARNED: Mutex<Vec<Id>> = Mutex::new(Vec::new());
                    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
                    if !warned.contains(id) {
                        warned.push(*id);
                        tracing::warn!(
                            snapshot = %id.to_hex(),
                            error = %e,
                            "a snapshot object cannot be read: listings and `latest` leave it out (run `cairn check`)"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        crate::instance::sync_from_objects(self)?;
        Ok(())
    }

    /// Fails, naming the cause, if this repository cannot be written from here. Every writing operation
    /// calls it before it writes anything.
    pub fn require_writable(&self) -> Result<()> {
        match &self.read_only {
            None => Ok(()),
            Some(cause) => Err(Error::ReadOnly {
                root: PathBuf::from(&self.location),
                cause: cause.clone(),
            }),
        }
    }

    /// How many sealed packs a writer uploads at once.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets [`Self::connections`] (at least 1).
    pub fn set_connections(&self, n: usize) {
        self.connections
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// True if the repository was opened read-only (see [`Self::require_writable`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only.is_some()
    }

    /// Where the repository's objects live.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// Where the repository is, for messages (a path or `s3://bucket/prefix`; never a secret).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The directory of a local repository (a backup skips it).
    pub fn local_root(&self) -> Option<&Path> {
        self.backend.local_root()
    }

    /// This host's cache directory of the repository (see [`repo_cache_dir`]).
    pub fn cache_dir(&self) -> Result<PathBuf> {
        repo_cache_dir(self.backend.as_ref(), &self.config)
    }

    /// The index database file.
    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The repository's keys: blob ids, chunker seed, sealing (pass-through for a plaintext repository).
    pub fn crypto(&self) -> &Crypto {
        &self.crypto
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
            None => Index::open_reader(&self.index_path, self.access)?,
        };
        let out = f(&reader);
        self.lock_readers().push(reader);
        out
    }

    fn lock_readers(&self) -> MutexGuard<'_, Vec<Index>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a pack is, for messages.
    pub fn pack_location(&self, id: &Id) -> String {
        format!("{}/{}", self.location, ObjectKind::Pack.key(&id.to_hex()))
    }

    /// Reads, decompresses and verifies one blob.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        self.read_located(&self.locate(id)?)
    }

    /// Where a blob is stored; `NotFound` if the index does not have it.
    pub fn locate(&self, id: &Id) -> Result<Location> {
        located(id, self.with_reader(|r| r.lookup(id))?)
    }

    /// Runs `f` with a [`locate`](Self::locate) whose lookups share one read transaction of one reader
    /// connection (see [`Index::in_read_transaction`]): for many lookups in a row, as a restore's batch
    /// makes.
    pub fn locate_many<T>(
        &self,
        f: impl FnOnce(&dyn Fn(&Id) -> Result<Location>) -> T,
    ) -> Result<T> {
        self.with_reader(|r| r.in_read_transaction(|r| f(&|id| located(id, r.lookup(id)?))))
    }

    /// Opens a pack for [`read_from`](Self::read_from): many blobs are then read without opening it again.
    pub fn open_pack(&self, pack: &Id) -> Result<Box<dyn RangeReader + '_>> {
        self.backend.open_reader(ObjectKind::Pack, &pack.to_hex())
    }

    /// Reads a blob at a known location (one ranged read of its bytes; a second one if the first does
    /// not verify: see [`crate::backend::read_again_if_damaged`]).
    pub fn read_located(&self, loc: &Location) -> Result<Vec<u8>> {
        crate::backend::read_again_if_damaged(|| self.read_located_once(loc))
    }

    /// [`read_located`](Self::read_located) without the second reading: for a caller whose first reading
    /// of the blob was its own (a merged run in [`crate::fetch`]).
    pub(crate) fn read_located_once(&self, loc: &Location) -> Result<Vec<u8>> {
        self.decode_stored(loc, &self.read_stored(loc)?)
    }

    /// A blob's stored bytes, as its pack holds them (one ranged read, unverified).
    fn read_stored(&self, loc: &Location) -> Result<Vec<u8>> {
        self.backend.get_range(
            ObjectKind::Pack,
            &loc.pack.to_hex(),
            loc.entry.offset,
            u64::from(loc.entry.stored_len),
        )
    }

    /// Reads, decompresses and verifies a blob from its pack, already open (read again if it does not
    /// verify, as [`read_located`](Self::read_located)).
    pub fn read_from(&self, pack: &dyn RangeReader, loc: &Location) -> Result<Vec<u8>> {
        crate::backend::read_again_if_damaged(|| {
            let stored = pack.read_at(loc.entry.offset, u64::from(loc.entry.stored_len))?;
            self.decode_stored(loc, &stored)
        })
    }

    /// Decompresses and verifies a blob's stored bytes, read by the caller (restore reads runs of blobs).
    pub fn decode_stored(&self, loc: &Location, stored: &[u8]) -> Result<Vec<u8>> {
        let decoded = if loc.entry.kind == BlobKind::DeltaData {
            crate::delta::decode(self, loc, stored)
        } else {
            pack::decode_blob(&loc.entry, stored, &self.crypto)
        };
        in_pack(loc, decoded)
    }

    /// [`Self::decode_stored`] of stored bytes the caller owns and gives up: a plain blob is opened where
    /// it lies, with no copy.
    pub fn decode_stored_in_place(&self, loc: &Location, stored: &mut [u8]) -> Result<Vec<u8>> {
        if loc.entry.kind == BlobKind::DeltaData {
            return self.decode_stored(loc, stored);
        }
        in_pack(
            loc,
            pack::decode_blob_in_place(&loc.entry, stored, &self.crypto),
        )
    }

    /// Saves a snapshot and returns its id: the index row is inserted in a transaction that commits only after
    /// the snapshot file is durable (format-spec, "Write ordering" 4). If anything fails, the file is removed
    /// (durably) before the error is returned, so a failed backup leaves no snapshot object: an object without
    /// a row would be adopted by the next prune or `repair index`, bringing back a snapshot the user was told
    /// had failed. A crash between the file and the commit leaves exactly that, which is safe: prune takes
    /// its roots from the snapshot files, so the object's data is kept.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        let (bytes, _) = snap.encode()?;
        self.save_snapshot_encoded(snap, &bytes)
    }

    /// [`save_snapshot`](Self::save_snapshot) of a snapshot already encoded as `bytes` (which must decode
    /// to `snap`): `cairn copy` stores another repository's snapshot object byte for byte, keeping its id.
    pub fn save_snapshot_encoded(&self, snap: &Snapshot, bytes: &[u8]) -> Result<Id> {
        self.require_writable()?;
        // The blobs it names were found (or deduplicated) under the lock: if another host may have pruned
        // meanwhile, they may be gone.
        self.ensure_locks_held()?;
        let id = Id::of(bytes);
        let hex = id.to_hex();
        // The same bytes saved before are an object someone else owns: never removed here.
        let existed = self.backend.stat(ObjectKind::Snapshot, &hex)?.is_some();
        let saved = self.index().add_snapshot_with(snap, &hex, || {
            self.backend.put(ObjectKind::Snapshot, &hex, bytes)
        });
        match saved {
            Ok(()) => Ok(id),
            Err(e) if existed => Err(e),
            Err(e) => match self.backend.delete(ObjectKind::Snapshot, &hex) {
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
        // Checked once, before the row goes: a lost lock leaves both the row and the file.
        self.ensure_locks_held()?;
        self.index().remove_snapshot(&id.to_hex())?;
        self.backend.delete(ObjectKind::Snapshot, &id.to_hex())
    }

    /// Keeps `guard`'s lock checked at this repository's commit points for as long as it is held.
    pub fn watch_lock(&self, guard: &crate::lock::LockGuard) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|w| w.strong_count() > 0);
        locks.push(guard.watch());
    }

    /// Fails with [`Error::LockLost`] if a lock held on this repository may have been taken for stale by
    /// another process (format-spec "Locks"): called before a snapshot is saved and before anything is
    /// deleted, the points where acting on a lost lock would lose data.
    pub fn ensure_locks_held(&self) -> Result<()> {
        let locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        for hold in locks.iter().filter_map(std::sync::Weak::upgrade) {
            hold.ensure_held()?;
        }
        Ok(())
    }

    /// Deletes a pack, index object, WAL object or snapshot file, once [`Self::ensure_locks_held`] passes:
    /// what prune, forget and repair delete was judged unneeded under a lock that must still be ours.
    pub fn delete_object(&self, kind: ObjectKind, name: &str) -> Result<()> {
        self.ensure_locks_held()?;
        self.backend.delete(kind, name)
    }

    /// Reads and verifies the snapshot object `id`.
    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        Snapshot::load(self.backend.as_ref(), id)
    }

    /// Ids of the snapshot objects in the repository (with or without an index row).
    pub fn snapshot_objects(&self) -> Result<Vec<Id>> {
        Ok(self
            .backend
            .list(ObjectKind::Snapshot)?
            .into_iter()
            .filter_map(|(name, _)| Id::from_hex(&name))
            .collect())
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
        self.resolve_snapshot_holding(spec, instance, None, &mut |_| Ok(true))
    }

    /// [`resolve_snapshot`](Self::resolve_snapshot) where `latest` means the newest snapshot for which
    /// `holds` is true (`what` names it in the error): `restore latest` must not pick a newer snapshot that
    /// holds only a stream. An id is taken as given; the caller's own error says what it lacks. An error
    /// from `holds` (anything but "not there") stops the search rather than silently picking an older one.
    pub fn resolve_snapshot_holding(
        &self,
        spec: &str,
        instance: Option<&str>,
        what: Option<&str>,
        holds: &mut dyn FnMut(&Snapshot) -> Result<bool>,
    ) -> Result<(Id, Snapshot)> {
        if spec == "latest" {
            let now = chrono::Utc::now();
            let mut future = 0;
            for (id, s) in self.snapshots()?.into_iter().rev() {
                if instance.is_some() && s.instance.as_deref() != instance {
                    continue;
                }
                if crate::schedule::is_future(s.time, now) {
                    future += 1;
                    continue;
                }
                if holds(&s)? {
                    return Ok((id, s));
                }
            }
            let what = what.map(|w| format!(" holding {w}")).unwrap_or_default();
            return Err(match future {
                0 => Error::NotFound(format!("no snapshot{what} found for `latest`")),
                n => Error::NotFound(format!(
                    "no snapshot{what} found for `latest` ({n} dated in the future skipped: name one by its id)"
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
                Ok((id, self.load_snapshot(&id)?))
            }
            many => Err(Error::Ambiguous {
                prefix: spec,
                matches: many.iter().map(|s| &s[..12]).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Lists every pack in the repository with its size.
    pub fn pack_files(&self) -> Result<Vec<(Id, u64)>> {
        list_pack_files(self.backend.as_ref())
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
pub(crate) fn cannot_write(e: &Error) -> bool {
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

/// Every pack of the repository at `backend` with its size, sorted.
pub fn list_pack_files(backend: &dyn Backend) -> Result<Vec<(Id, u64)>> {
    Ok(backend
        .list(ObjectKind::Pack)?
        .into_iter()
        .filter_map(|(name, size)| Id::from_hex(&name).map(|id| (id, size)))
        .collect())
}

/// The default repository: `$XDG_DATA_HOME/cairn/repo`, else `~/.local/share/cairn/repo`.
pub fn default_repo_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("cairn/repo"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/cairn/repo"))
}

/// A lookup's answer: `NotFound` when the index does not have the blob.
fn located(id: &Id, found: Option<Location>) -> Result<Location> {
    found.ok_or_else(|| Error::NotFound(format!("blob {id} is not in the index")))
}

/// A decoding error of the blob at `loc`, naming its pack.
fn in_pack(loc: &Location, decoded: Result<Vec<u8>>) -> Result<Vec<u8>> {
    decoded.map_err(|e| match e {
        Error::Corrupt { what, detail } => Error::Corrupt {
            what: format!("{what} in pack {}", loc.pack.short()),
            detail,
        },
        other => other,
    })
}
