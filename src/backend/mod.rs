//! The storage layer: what a repository needs from the place it lives, and nothing more.
//!
//! A repository is a set of named, immutable objects of a few kinds (config, packs, snapshots, locks, …).
//! Everything above this module reads and writes them through [`Backend`]; only the implementations here
//! touch a file system or a network. The contract every implementation keeps (format-spec/README.md,
//! "Storage"):
//!
//! - **Whole or absent.** An object written by [`Backend::put`], [`Backend::put_new`] or
//!   [`ObjectWriter::finish`] appears complete or not at all, and is durable when the call returns.
//! - **Create if absent.** [`Backend::put_new`] never replaces an object: of writers racing for one name,
//!   one wins and the others learn that they lost. A writer dropped without `finish` leaves nothing behind
//!   that a listing returns.
//! - **Missing is `NotFound`.** Reading, stat-ing a missing object gives an [`Error::Io`] whose
//!   `source.kind()` is [`std::io::ErrorKind::NotFound`]: callers tell "gone" (damage) from "could not read"
//!   (an outage, a permission) by that kind alone.
//! - **Listings hold only finished objects**, with their sizes; names that are not valid for the kind (left by
//!   other tools, or temporary files) are not listed.
//! - **Delete is idempotent**: deleting a missing object succeeds.
//! - **Bounded whole reads**: [`Backend::get`] refuses, as corrupt, an object larger than its kind allows
//!   ([`ObjectKind::max_size`]) before holding it, so hostile content cannot exhaust a reader's memory.
//!
//! [`RepoUrl`] names where a repository lives (`/path`, `file:///path`, `s3://bucket/prefix`) and connects to it.

pub mod fault;
pub mod local;
pub mod memory;
pub mod s3;
pub mod throttle;

use std::io::Write;
use std::path::{Path, PathBuf};
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
    /// Index objects (format-spec "Index objects"), named by the hex BLAKE3 of their content.
    Index,
    /// Run-log entries (format-spec "Run log"), named by the hex BLAKE3 of their content.
    Run,
    /// Key files of an encrypted repository (format-spec "Key files"), named by the hex BLAKE3 of their
    /// content.
    Key,
    /// Archived WAL files (format-spec "WAL objects"), named `<instance>.<WAL file name>`.
    Wal,
    /// API tokens of `cairn serve` (format-spec "API tokens"), named `<token name>.json`.
    Token,
}

impl ObjectKind {
    /// Every kind, for listings and tests.
    pub const ALL: [ObjectKind; 10] = [
        ObjectKind::Config,
        ObjectKind::Pack,
        ObjectKind::Snapshot,
        ObjectKind::Lock,
        ObjectKind::Instance,
        ObjectKind::Index,
        ObjectKind::Run,
        ObjectKind::Key,
        ObjectKind::Wal,
        ObjectKind::Token,
    ];

    /// The directory (key prefix) of this kind, relative to the repository root; empty for the config.
    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Config => "",
            ObjectKind::Pack => "packs",
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::Lock => "locks",
            ObjectKind::Instance => "instances",
            ObjectKind::Index => "index",
            ObjectKind::Run => "runs",
            ObjectKind::Key => "keys",
            ObjectKind::Wal => "wal",
            ObjectKind::Token => "tokens",
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
    /// files left by other tools). Names never hold a path separator or start with a dot; instance objects
    /// (`<instance>.json`) may hold a dot further in, but never `..`.
    pub fn valid_name(self, name: &str) -> bool {
        let safe = !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match self {
            ObjectKind::Config => name == "config",
            ObjectKind::Pack
            | ObjectKind::Snapshot
            | ObjectKind::Index
            | ObjectKind::Run
            | ObjectKind::Key => {
                name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            }
            ObjectKind::Lock => safe,
            ObjectKind::Instance | ObjectKind::Wal | ObjectKind::Token => {
                !name.is_empty()
                    && name.len() <= 255
                    && !name.starts_with('.')
                    && !name.contains("..")
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            }
        }
    }
}

impl ObjectKind {
    /// The largest object of this kind that [`Backend::get`] reads whole; a larger one is refused before a
    /// byte of it is read (format-spec section 2.1, "Size"). Every kind but packs and index objects is a
    /// small JSON document whose honest size is a few kB (a snapshot's metadata, an instance's
    /// configuration or a run's error text can grow to some MB): without a bound, a writer of the
    /// repository could make every reader hold gigabytes for a lock file (one sparse file costs it
    /// nothing). Packs are read by ranges and index objects grow with the packs they list: no bound here.
    pub fn max_size(self) -> Option<u64> {
        const MIB: u64 = 1 << 20;
        match self {
            ObjectKind::Pack | ObjectKind::Index => None,
            ObjectKind::Config | ObjectKind::Lock | ObjectKind::Key | ObjectKind::Token => {
                Some(MIB)
            }
            ObjectKind::Wal => Some(MIB),
            ObjectKind::Instance | ObjectKind::Run => Some(16 * MIB),
            ObjectKind::Snapshot => Some(64 * MIB),
        }
    }
}

/// Refuses an object of `size` bytes that its kind does not allow (see [`ObjectKind::max_size`]).
pub(crate) fn check_size(kind: ObjectKind, location: &str, size: u64) -> Result<()> {
    match kind.max_size() {
        Some(max) if size > max => Err(too_large(kind, location, size)),
        _ => Ok(()),
    }
}

/// The error for an object larger than its kind allows: it is corrupt, like any object that cannot be what
/// its kind says.
pub(crate) fn too_large(kind: ObjectKind, location: &str, size: u64) -> Error {
    let max = kind.max_size().unwrap_or(u64::MAX);
    Error::corrupt(
        location,
        format!("{size} bytes or more, larger than any {kind:?} object may be ({max}); not read"),
    )
}

/// Where a repository's objects live.
pub trait Backend: Send + Sync {
    /// Where this is, for messages (never holds a secret).
    fn location(&self) -> String;

    /// Writes a whole object, replacing any object of that name; atomic and durable on return.
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()>;

    /// Writes a whole object only if no object of that name exists: `true` when it was written (atomic and
    /// durable on return, as [`put`](Backend::put)), `false` when one exists, which is left as it is. Of
    /// concurrent calls for one name, one writes and the others get `false` (on S3, as far as the server
    /// honours a conditional PUT: see the S3 backend).
    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool>;

    /// Starts a streamed write of an object whose name is known only at the end (a pack is named by the
    /// hash of its content).
    fn writer(&self, kind: ObjectKind) -> Result<Box<dyn ObjectWriter>>;

    /// Reads a whole object; one larger than its kind's [`ObjectKind::max_size`] is refused as corrupt
    /// without reading it whole.
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>>;

    /// Reads `len` bytes at `offset`; an object shorter than that is an `UnexpectedEof` I/O error.
    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// The object's size, or `None` when it does not exist.
    fn stat(&self, kind: ObjectKind, name: &str) -> Result<Option<u64>>;

    /// Every finished object of a kind with its size, sorted by name.
    fn list(&self, kind: ObjectKind) -> Result<Vec<(String, u64)>>;

    /// Deletes an object durably; a missing object is not an error.
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()>;

    /// Opens an object for many ranged reads (a restore reads many blobs of one pack). The default does one
    /// [`get_range`](Backend::get_range) per read; the local backend keeps the file open instead. A missing
    /// object may be reported here or at the first read.
    fn open_reader<'a>(
        &'a self,
        kind: ObjectKind,
        name: &str,
    ) -> Result<Box<dyn RangeReader + 'a>> {
        check_name(kind, name)?;
        Ok(Box::new(Ranged {
            backend: self,
            kind,
            name: name.to_string(),
        }))
    }

    /// Prepares a new repository's storage (the local backend creates its directories); nothing by default.
    fn prepare(&self) -> Result<()> {
        Ok(())
    }

    /// Removes what interrupted writes left behind (the local backend's `.tmp-*` files; object stores leave
    /// nothing). Only called under the exclusive lock, when no write of this repository is under way.
    fn remove_stale_temporaries(&self) -> Result<()> {
        Ok(())
    }

    /// The directory of a repository on the local file system, if it is one (a backup skips it).
    fn local_root(&self) -> Option<&Path> {
        None
    }

    /// How readers of many blobs should batch their reads here (see [`ReadPlan`]).
    fn read_plan(&self) -> ReadPlan {
        ReadPlan::REMOTE
    }
}

/// How a reader of many blobs (restore, dump) turns them into requests: blobs of one pack closer than `gap`
/// bytes are fetched by one ranged read (the bytes between are read and dropped), a read spans at most
/// `max_run` bytes (unless one blob is larger), and at most `parallel` reads are in flight, so at most
/// `parallel * max_run` bytes of runs are held at once; reads of single small blobs (trees, a level of a
/// snapshot at a time: [`crate::fetch::TreesAhead`]) keep up to `small_parallel` in flight. A file
/// restore plans up to `batch_files` files and `batch_chunks` chunk references together (see
/// [`crate::restore::files`]): a pack is read once per batch that needs it, so the larger the batch, the
/// fewer times each pack is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPlan {
    pub gap: u64,
    pub max_run: u64,
    pub parallel: usize,
    pub small_parallel: usize,
    pub batch_files: usize,
    pub batch_chunks: usize,
}

impl ReadPlan {
    /// An object store: a request costs a round trip (and money, and on some servers a read of the whole
    /// object), a few hundred KiB of it is cheap next to that, and throughput comes from requests in flight.
    /// A run covers a whole pack (16 MiB plus its last blob, up to 4 MiB): one request per pack and batch.
    /// Four runs in flight bound memory to 80 MiB of runs (8 of 16 MiB took restore past 190 MB peak RSS)
    /// and keep a loopback server saturated; batches of thousands of files read each pack once or twice
    /// per restore instead of once per 256 files (a pack was read 11 times restoring 4,000 files).
    /// A tree costs a round trip of its own (trees lie between file chunks in the packs): 64 in flight
    /// read the 256 directories of the benchmark file store in 4 round trips instead of 16 (restore 5.5 ->
    /// 5.2 s against a loopback server).
    pub const REMOTE: ReadPlan = ReadPlan {
        gap: 1 << 20,
        max_run: 20 << 20,
        parallel: 4,
        small_parallel: 64,
        batch_files: 4096,
        batch_chunks: 65536,
    };
}

/// Ranged reads of one object (see [`Backend::open_reader`]). Shared between threads.
pub trait RangeReader: Send + Sync {
    /// Reads `len` bytes at `offset`; an object shorter than that is an `UnexpectedEof` I/O error.
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// Says that the ranges `(offset, len)` will be read soon, so a reader that can fetch ahead without
    /// holding the bytes itself does (a local file: the kernel reads them into its page cache while earlier
    /// ones are decoded). Only a hint: the default does nothing, and errors are left to the reads.
    fn will_need(&self, _ranges: &[(u64, u64)]) {}
}

/// The default [`RangeReader`]: one ranged read of the backend per call.
struct Ranged<'a, B: ?Sized> {
    backend: &'a B,
    kind: ObjectKind,
    name: String,
}

impl<B: Backend + ?Sized> RangeReader for Ranged<'_, B> {
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.backend.get_range(self.kind, &self.name, offset, len)
    }
}

/// Where a repository lives, as given by `--repo` / `CAIRN_REPO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    /// A directory: a plain path or `file:///path`.
    Local(PathBuf),
    /// `s3://bucket[/prefix]` with the endpoint settings of the command line.
    S3(s3::S3Location),
}

impl RepoUrl {
    /// Parses a repository location: `s3://bucket[/prefix]`, `file:///absolute/path`, or a path.
    pub fn parse(raw: &Path) -> Result<RepoUrl> {
        let Some(text) = raw.to_str() else {
            return Ok(RepoUrl::Local(raw.to_path_buf()));
        };
        if text.starts_with("s3://") {
            return Ok(RepoUrl::S3(s3::S3Location::parse(text)?));
        }
        if let Some(rest) = text.strip_prefix("file://") {
            // Only the local host: `file:///path` or `file://localhost/path`.
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(Error::Invalid(format!(
                    "{text:?}: a file URL names an absolute path on this host (file:///path)"
                )));
            }
            return Ok(RepoUrl::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(Error::Invalid(format!(
                    "{scheme}:// repositories are not supported (use a path, file:///path or s3://bucket/prefix)"
                )));
            }
        }
        Ok(RepoUrl::Local(raw.to_path_buf()))
    }

    /// The same location with the S3 endpoint settings applied (no effect on a local path).
    pub fn with_s3_options(mut self, endpoint: Option<String>, path_style: bool) -> RepoUrl {
        if let RepoUrl::S3(loc) = &mut self {
            if endpoint.is_some() {
                loc.endpoint = endpoint;
            }
            loc.path_style |= path_style;
        }
        self
    }

    /// The directory of a local repository.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            RepoUrl::Local(p) => Some(p),
            RepoUrl::S3(_) => None,
        }
    }

    /// A backend for this location (no request is made yet), within the process's bandwidth limits.
    pub fn connect(&self) -> Result<SharedBackend> {
        let backend: SharedBackend = match self {
            RepoUrl::Local(p) => Arc::new(local::LocalBackend::new(p.clone())),
            RepoUrl::S3(loc) => Arc::new(s3::S3Backend::new(loc.clone())?),
        };
        Ok(throttle::limited(backend))
    }
}

impl std::fmt::Display for RepoUrl {
    /// The location for messages: a path, or `s3://bucket/prefix` (never a credential).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoUrl::Local(p) => write!(f, "{}", p.display()),
            RepoUrl::S3(loc) if loc.prefix.is_empty() => write!(f, "s3://{}", loc.bucket),
            RepoUrl::S3(loc) => write!(f, "s3://{}/{}", loc.bucket, loc.prefix),
        }
    }
}

impl From<&Path> for RepoUrl {
    fn from(p: &Path) -> RepoUrl {
        RepoUrl::Local(p.to_path_buf())
    }
}

impl From<&PathBuf> for RepoUrl {
    fn from(p: &PathBuf) -> RepoUrl {
        RepoUrl::Local(p.clone())
    }
}

impl From<PathBuf> for RepoUrl {
    fn from(p: PathBuf) -> RepoUrl {
        RepoUrl::Local(p)
    }
}

impl From<&RepoUrl> for RepoUrl {
    fn from(u: &RepoUrl) -> RepoUrl {
        u.clone()
    }
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

/// Runs `read` (a read of stored bytes and their verification) a second time when it finds damage
/// ([`Error::is_damage`]), and gives the second outcome. Over a network, one transfer can bring wrong or
/// missing bytes that the server holds intact (a middlebox, a flaky NIC, a gateway's stale answer), and
/// verification cannot tell them from stored damage; `check` records damage, `repair` drops the files that
/// need it and `prune` then deletes their data, so one bad transfer must not decide it. Stored damage
/// reads the same again; a transfer error rarely twice in a row. The cost is one more read of what is
/// really damaged.
pub fn read_again_if_damaged<T>(mut read: impl FnMut() -> Result<T>) -> Result<T> {
    match read() {
        Err(e) if e.is_damage() => read(),
        other => other,
    }
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
mod tests {
    use super::*;

    #[test]
    fn instance_names_may_hold_a_dot_but_never_a_path() {
        assert!(ObjectKind::Instance.valid_name("odoo-prod.json"));
        for bad in [".json", "a/b.json", "../x", "a..json", "", "x y.json"] {
            assert!(!ObjectKind::Instance.valid_name(bad), "{bad:?}");
        }
        assert!(!ObjectKind::Lock.valid_name("a.b"));
    }

    #[test]
    fn repository_urls_parse() {
        let p = |s: &str| RepoUrl::parse(Path::new(s));
        assert_eq!(p("/srv/repo").unwrap(), RepoUrl::Local("/srv/repo".into()));
        assert_eq!(p("rel/repo").unwrap(), RepoUrl::Local("rel/repo".into()));
        assert_eq!(
            p("file:///srv/repo").unwrap(),
            RepoUrl::Local("/srv/repo".into())
        );
        let RepoUrl::S3(loc) = p("s3://bkt/a/b").unwrap() else {
            panic!("not s3")
        };
        assert_eq!((loc.bucket.as_str(), loc.prefix.as_str()), ("bkt", "a/b"));
        for bad in ["file://host/x", "file://rel", "gs://bkt/x", "s3://B"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        let url = p("s3://bkt/x")
            .unwrap()
            .with_s3_options(Some("http://127.0.0.1:9".into()), true);
        assert_eq!(url.to_string(), "s3://bkt/x");
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
        oversized_objects_are_refused(b);
        put_new_creates_only_if_absent(b);
    }

    fn put_new_creates_only_if_absent(b: &dyn Backend) {
        let name = "db.000000010000000000000001";
        assert!(b.put_new(ObjectKind::Wal, name, b"first").unwrap());
        assert!(!b.put_new(ObjectKind::Wal, name, b"second").unwrap());
        assert_eq!(b.get(ObjectKind::Wal, name).unwrap(), b"first");
        b.delete(ObjectKind::Wal, name).unwrap();
        // Racing writers of one name: exactly one writes, and its bytes are the object's.
        let won: Vec<usize> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..8)
                .map(|i| {
                    s.spawn(move || {
                        b.put_new(ObjectKind::Wal, name, format!("writer {i}").as_bytes())
                            .unwrap()
                    })
                })
                .collect();
            writers
                .into_iter()
                .enumerate()
                .filter_map(|(i, w)| w.join().unwrap().then_some(i))
                .collect()
        });
        assert_eq!(won.len(), 1, "{won:?}");
        assert_eq!(
            b.get(ObjectKind::Wal, name).unwrap(),
            format!("writer {}", won[0]).as_bytes()
        );
        assert_eq!(
            b.list(ObjectKind::Wal).unwrap().len(),
            1,
            "no temporary left listed"
        );
        b.delete(ObjectKind::Wal, name).unwrap();
    }

    fn oversized_objects_are_refused(b: &dyn Backend) {
        let max = ObjectKind::Lock.max_size().unwrap() as usize;
        b.put(ObjectKind::Lock, "big", &vec![b'x'; max + 1])
            .unwrap();
        let e = b.get(ObjectKind::Lock, "big").unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        b.put(ObjectKind::Lock, "big", &vec![b'x'; max]).unwrap();
        assert_eq!(b.get(ObjectKind::Lock, "big").unwrap().len(), max);
        b.delete(ObjectKind::Lock, "big").unwrap();
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
