//! Continuous WAL archiving for point-in-time recovery: `wal-push` (PostgreSQL's `archive_command`),
//! `wal-fetch` (its `restore_command`) and the listing of what is archived (format-spec/README.md, "WAL
//! objects").
//!
//! What this module owns:
//! - **Names.** Only the file names PostgreSQL archives are accepted: segments (24 hex digits, the first 8
//!   the timeline), `.partial` segments, timeline `.history` files and `.backup` labels. A WAL object is
//!   named `<instance>.<file name>`, so it identifies its file per instance and timeline.
//! - **Storage.** A WAL file is cut with the stream chunker and its chunks saved like any stream's (so
//!   segments deduplicate and compress like everything else); a one-node tree holds the chunk list, and a
//!   small immutable JSON object under `wal/` names that tree, the file's size and its BLAKE3.
//!
//! Invariants:
//! - **Durable before success.** `push` returns only after the packs holding the chunks and the tree are
//!   durable and indexed (and their index object written), and then the WAL object is written (atomically
//!   and durably); a push killed at any instant leaves no WAL object, only packs a later push deduplicates
//!   against (or prune removes).
//! - **Idempotent, never overwriting.** Pushing a file whose WAL object exists succeeds without writing when
//!   the content's BLAKE3 and size match, and fails (writing nothing) when they differ: PostgreSQL's
//!   archive_command contract. The object is created only if absent ([`Backend::put_new`]) and read back,
//!   so of pushes racing for one name (the shared lock admits them all) exactly one is stored and the
//!   others compare with it.
//! - **A segment is the one its name says, of the instance's cluster.** A segment's first page header must
//!   give the name's start LSN and timeline (see [`SegmentHeader::mismatch`]), and its system identifier must
//!   be the one the instance's archive records (with no archived segment that says, the newest base
//!   backup's; [`segment`]): another cluster pushing to the same instance, or a file renamed, is refused
//!   before anything is written.
//! - **Fetch is atomic and verified.** The file is written to a temporary file beside the destination, its
//!   size and BLAKE3 checked against the WAL object, then renamed into place. Told the system identifier of
//!   the cluster being recovered ([`fetch_for_cluster`]), it refuses a segment recorded as another's. An
//!   absent file is [`Error::WalNotArchived`] (exit code 1: PostgreSQL probes for files that do not exist)
//!   and nothing else is: a file that is archived but cannot be read must stop recovery, not look like the
//!   archive's end.
//! - **GC.** The trees of WAL objects are roots for prune ([`gc_roots`]), so archived WAL keeps its data.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::backend::Backend;
use crate::backend::{is_not_found, ObjectKind};
use crate::chunking::ChunkReader;
use crate::error::{Error, IoContext, Result};
use crate::hashing::Id;
use crate::lock;
use crate::pack::BlobKind;
use crate::pack_writer::PackWriter;
use crate::repo::Repository;
use crate::tree::{Meta, Node, NodeKind, Tree};

mod segment;
pub use segment::SegmentHeader;
use segment::{check_system_identifier, read_segment_header, LONG_HEADER_LEN};

/// The version of the WAL object encoding.
pub const WAL_OBJECT_VERSION: u32 = 1;

/// A WAL object: one archived file of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalObject {
    pub version: u32,
    pub instance: String,
    /// The file's name as PostgreSQL gave it (`%f`).
    pub file: String,
    pub size: u64,
    /// BLAKE3 of the whole file.
    pub blake3: Id,
    /// A tree with one `File` node, named `file`, holding the chunk list.
    pub tree: Id,
    /// When it was archived.
    pub time: DateTime<Utc>,
    /// The database system identifier of a segment or `.partial` segment, from its first page's header
    /// (`xlp_sysid`, pg_control's "Database system identifier"), as a decimal string: the cluster it
    /// belongs to. Absent for other files and for segments archived before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "sysid_text")]
    pub system_identifier: Option<u64>,
}

/// A system identifier is a u64 often past 2^53: written as a decimal string, as PostgreSQL prints it, so
/// that no JSON reader rounds it (WAL objects and base backup facts).
pub(crate) mod sysid_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&n.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(t) => t.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

impl WalObject {
    /// The timeline (from the file name: its first 8 hex digits).
    pub fn timeline(&self) -> u32 {
        u32::from_str_radix(&self.file[..8], 16).unwrap_or(0)
    }

    /// The object's name in the `wal/` namespace.
    fn object_name(&self) -> String {
        object_name(&self.instance, &self.file)
    }
}

/// What [`push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The file was stored.
    Stored,
    /// The same content was stored already; nothing was written.
    AlreadyStored,
}

/// Whether `name` is a file name PostgreSQL archives: a segment, a `.partial` segment, a `.history` file or
/// a `.backup` label.
pub fn valid_file_name(name: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
    };
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [seg] => hex(seg, 24),
        [seg, "partial"] => hex(seg, 24),
        [tli, "history"] => hex(tli, 8),
        [seg, off, "backup"] => hex(seg, 24) && hex(off, 8),
        _ => false,
    }
}

fn check_file_name(name: &str) -> Result<()> {
    if valid_file_name(name) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name:?} is not a WAL file name (a segment, .partial, .history or .backup file)"
        )))
    }
}

fn object_name(instance: &str, file: &str) -> String {
    format!("{instance}.{file}")
}

/// Whether `name` is a segment or a `.partial` segment (the files that start with a segment's header).
fn is_segment(name: &str) -> bool {
    valid_file_name(name) && (name.len() == 24 || name.ends_with(".partial"))
}

/// Archives the file at `path` for `instance` (see the module docs for durability and idempotence).
pub fn push(repo: &Repository, instance: &str, path: &Path) -> Result<PushOutcome> {
    crate::instance::validate_name(instance)?;
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Invalid(format!("{}: not a file name", path.display())))?
        .to_string();
    check_file_name(&file)?;
    // A segment is checked against its own header before anything else: a file that is not the segment
    // its name says is refused whatever the archive holds.
    let header = if is_segment(&file) {
        Some(read_segment_header(&file, path)?)
    } else {
        None
    };
    repo.require_writable()?;
    let _lock = lock::acquire_on(repo, false, "wal-push")?;
    if let Some(existing) = get(repo, instance, &file)? {
        return compare_existing(&existing, path);
    }
    if let Some(h) = &header {
        check_system_identifier(repo, instance, &file, h)?;
    }
    let obj = PackWriter::scope(repo, |writer| {
        let (size, blake3, chunks) = save_file(repo, writer, path, header.as_ref())?;
        let node = Node {
            name: file.clone().into_bytes(),
            kind: NodeKind::File { size, chunks },
            meta: Meta {
                mode: 0o100600,
                ..Meta::default()
            },
        };
        let (bytes, _) = Tree::new(vec![node])?.encode()?;
        let tree = repo.crypto().blob_id(&bytes);
        writer.save_with_id(BlobKind::Tree, tree, &bytes)?;
        // The chunks and the tree are durable and indexed before the object naming them is written.
        writer.flush()?;
        Ok(WalObject {
            version: WAL_OBJECT_VERSION,
            instance: instance.to_string(),
            file: file.clone(),
            size,
            blake3,
            tree,
            time: Utc::now(),
            system_identifier: header.map(|h| h.sysid),
        })
    })?;
    let json = serde_json::to_vec_pretty(&obj)
        .map_err(|e| Error::Invalid(format!("encoding WAL object: {e}")))?;
    // The object names chunks deduplicated under the lock, which a prune may have deleted if it was lost.
    repo.ensure_locks_held()?;
    // Created only if absent: a push racing this one (the shared lock admits it) for the same name may have
    // written its object since the check above, and the first one written stays.
    let created = crate::object_io::put_new(
        repo.backend().as_ref(),
        ObjectKind::Wal,
        &obj.object_name(),
        &json,
    )?;
    // Read back even when created: an S3 server that ignores the conditional PUT lets the last writer win,
    // and a lost race must at least not be reported as archived.
    match get(repo, instance, &file)? {
        Some(stored) if created && stored == obj => Ok(PushOutcome::Stored),
        Some(stored) => compare_existing(&stored, path),
        None => Err(Error::corrupt(
            format!("WAL object {}", obj.object_name()),
            "written, then not found",
        )),
    }
}

/// Archives `bytes` as the file `file` of `instance` (through a temporary file: [`push`] reads a path).
pub fn push_content(
    repo: &Repository,
    instance: &str,
    file: &str,
    bytes: &[u8],
) -> Result<PushOutcome> {
    check_file_name(file)?;
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let path = dir.path().join(file);
    std::fs::write(&path, bytes).at(&path)?;
    push(repo, instance, &path)
}

/// An existing object for the same name: the same content is success, other content a refusal.
fn compare_existing(existing: &WalObject, path: &Path) -> Result<PushOutcome> {
    let (size, hash) = hash_file(path)?;
    if size == existing.size && hash == existing.blake3 {
        Ok(PushOutcome::AlreadyStored)
    } else {
        Err(Error::Invalid(format!(
            "{}: a different file of this name is archived already for instance {} ({} bytes, BLAKE3 {}; \
             this one: {size} bytes, BLAKE3 {}); nothing was written",
            existing.file,
            existing.instance,
            existing.size,
            existing.blake3.short(),
            hash.short()
        )))
    }
}

/// Size and BLAKE3 of a file, read in a stream.
fn hash_file(path: &Path) -> Result<(u64, Id)> {
    let mut f = File::open(path).at(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, Id(*hasher.finalize().as_bytes())))
}

/// Chunks and saves a file's content with the file chunker (WAL is new data: segments share next to nothing
/// at 8 KiB granularity, and 1 MiB chunks compress like the whole segment, where 8 KiB stream chunks stored
/// pgbench's WAL 1.8x larger than gzip) and the stream level; returns its size, BLAKE3 and chunk list.
/// `header`, when given, is what the file's first bytes were found to say: bytes read now that say otherwise
/// (the file changed in between) stop the push.
fn save_file(
    repo: &Repository,
    writer: &PackWriter,
    path: &Path,
    header: Option<&SegmentHeader>,
) -> Result<(u64, Id, Vec<Id>)> {
    let f = File::open(path).at(path)?;
    let hint = f.metadata().at(path)?.len();
    let mut reader = ChunkReader::with_size_hint(f, repo.config().chunker_files, hint);
    let level = repo.config().stream_level();
    let mut hasher = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let mut first = Vec::with_capacity(LONG_HEADER_LEN);
    while let Some(batch) = reader.next_batch().at(path)? {
        crate::interrupt::check()?;
        for &(off, len) in &batch.cuts {
            let take = (LONG_HEADER_LEN - first.len()).min(len);
            first.extend_from_slice(&batch.data[off..off + take]);
            hasher.update(&batch.data[off..off + len]);
            size += len as u64;
        }
        let ids: Vec<Id> = batch
            .cuts
            .par_iter()
            .map(|&(off, len)| {
                let data = &batch.data[off..off + len];
                let id = repo.crypto().blob_id(data);
                writer.save_at_level(BlobKind::Data, id, data, level)?;
                Ok(id)
            })
            .collect::<Result<_>>()?;
        chunks.extend(ids);
    }
    if let Some(h) = header {
        if SegmentHeader::parse(&first).as_ref() != Some(h) {
            return Err(Error::Invalid(format!(
                "{}: the file changed while it was archived (its header differs from the one checked); \
                 nothing was written",
                path.display()
            )));
        }
    }
    Ok((size, Id(*hasher.finalize().as_bytes()), chunks))
}

/// The WAL object of `file` for `instance`, if archived.
pub fn get(repo: &Repository, instance: &str, file: &str) -> Result<Option<WalObject>> {
    match crate::object_io::get(
        repo.backend().as_ref(),
        ObjectKind::Wal,
        &object_name(instance, file),
    ) {
        Ok(bytes) => decode(&bytes, instance, file).map(Some),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Decodes a WAL object and checks that it is the one its name says.
fn decode(bytes: &[u8], instance: &str, file: &str) -> Result<WalObject> {
    let what = || format!("WAL object {}", object_name(instance, file));
    let obj: WalObject = serde_json::from_slice(bytes).map_err(|e| Error::corrupt(what(), e))?;
    if obj.version != WAL_OBJECT_VERSION {
        return Err(Error::corrupt(
            what(),
            format!("unknown version {}", obj.version),
        ));
    }
    if obj.instance != instance || obj.file != file || !valid_file_name(&obj.file) {
        return Err(Error::corrupt(what(), "its content names another file"));
    }
    Ok(obj)
}

/// How long [`fetch`] waits by default for an exclusive lock (a prune or repair, perhaps on another host) to
/// go away before it fails: recovery waits for the file meanwhile, where a failure would stop it
/// (`wal-fetch --lock-wait` / `CAIRN_WAL_FETCH_LOCK_WAIT` choose another wait).
pub const FETCH_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Writes the archived `file` of `instance` to `dest` atomically (see the module docs); returns its size.
///
/// [`Error::WalNotArchived`] only when no WAL object of that name exists, which recovery takes for the end of
/// the archive; every other failure (a damaged object, an unreadable repository, a destination that cannot
/// be written) is another error, which must stop recovery rather than end it early at the wrong point. The
/// object is looked up before the lock (a file that is not archived is answered without one, as recovery
/// probes for such files all the time); reading it waits up to [`FETCH_LOCK_WAIT`] for an exclusive lock.
pub fn fetch(repo: &Repository, instance: &str, file: &str, dest: &Path) -> Result<u64> {
    fetch_waiting(repo, instance, file, dest, FETCH_LOCK_WAIT)
}

/// [`fetch`], waiting up to `lock_wait` for an exclusive lock.
pub fn fetch_waiting(
    repo: &Repository,
    instance: &str,
    file: &str,
    dest: &Path,
    lock_wait: std::time::Duration,
) -> Result<u64> {
    fetch_for_cluster(repo, instance, file, dest, lock_wait, None)
}

/// [`fetch_waiting`] for the recovery of the database system `cluster` (the system identifier of the base
/// backup being recovered, which a point-in-time restore names in its restore_command): a file whose WAL
/// object records another identifier is refused with an error, which stops recovery (replaying it would
/// fail or, worse, mix two clusters), and nothing is written. Objects that record none are fetched.
pub fn fetch_for_cluster(
    repo: &Repository,
    instance: &str,
    file: &str,
    dest: &Path,
    lock_wait: std::time::Duration,
    cluster: Option<u64>,
) -> Result<u64> {
    crate::instance::validate_name(instance)?;
    check_file_name(file)?;
    let not_archived =
        || Error::WalNotArchived(format!("{file}: not archived for instance {instance}"));
    if get(repo, instance, file)?.is_none() {
        return Err(not_archived());
    }
    let _lock = reader_lock_waiting(repo, lock_wait)?;
    // Read again under the lock: prune may have removed it (then it is no longer archived) in between.
    let obj = get(repo, instance, file)?.ok_or_else(not_archived)?;
    if let (Some(want), Some(got)) = (cluster, obj.system_identifier) {
        if want != got {
            return Err(Error::Invalid(format!(
                "{file} of instance {instance} is WAL of database system {got}, but the cluster being \
                 recovered is database system {want}; not restored (the archive mixes two clusters)"
            )));
        }
    }
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".cairn-wal-")
        .tempfile_in(&dir)
        .at(&dir)?;
    let mut out = std::io::BufWriter::new(tmp.as_file_mut());
    let written = write_verified(repo, &obj, &mut out)?;
    let flushed = out.flush();
    drop(out);
    flushed.at(tmp.path())?;
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    Ok(written)
}

/// A reader's lock, taken again while an exclusive lock holds it off, for up to `wait`.
fn reader_lock_waiting(
    repo: &Repository,
    wait: std::time::Duration,
) -> Result<Option<lock::LockGuard>> {
    let deadline = std::time::Instant::now() + wait;
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match lock::acquire_reader_on(repo, "wal-fetch") {
            Err(Error::Locked(holder)) if std::time::Instant::now() < deadline => {
                tracing::debug!("wal-fetch waits for the lock: {holder}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err(Error::Locked(holder)) => {
                return Err(Error::Locked(format!(
                    "{holder}; waited {} s for it",
                    wait.as_secs()
                )))
            }
            r => return r,
        }
    }
}

/// The content of an archived file, read whole (for `.history` files, which are small); the caller holds
/// a lock.
pub fn read(repo: &Repository, obj: &WalObject) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_verified(repo, obj, &mut out)?;
    Ok(out)
}

/// Writes the content of `obj` to `out`, checking its size and BLAKE3 against the object (a mismatch is
/// corruption, reported after the bytes went out: callers write to a temporary place). Returns the size.
fn write_verified(repo: &Repository, obj: &WalObject, out: &mut impl Write) -> Result<u64> {
    let file = &obj.file;
    let tree = repo.read_tree(&obj.tree)?;
    let Some(Node {
        kind: NodeKind::File { chunks, size },
        ..
    }) = tree.get(file.as_bytes())
    else {
        return Err(Error::corrupt(
            format!("WAL tree {}", obj.tree),
            format!("holds no file {file}"),
        ));
    };
    let mut out = HashingWriter {
        inner: out,
        hasher: blake3::Hasher::new(),
    };
    let written = crate::restore::write_chunks(repo, chunks, &mut out)?;
    let hash = Id(*out.hasher.finalize().as_bytes());
    if written != obj.size || *size != obj.size || hash != obj.blake3 {
        return Err(Error::corrupt(
            format!("archived WAL file {file} of instance {}", obj.instance),
            format!(
                "restored {written} bytes with BLAKE3 {}, recorded {} bytes with BLAKE3 {}",
                hash.short(),
                obj.size,
                obj.blake3.short()
            ),
        ));
    }
    Ok(written)
}

/// A writer that hashes what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Every WAL object, optionally of one instance, by instance and file name. An object that does not decode
/// is an error naming it.
pub fn list(repo: &Repository, instance: Option<&str>) -> Result<Vec<WalObject>> {
    let mut out = Vec::new();
    for (name, _) in repo.backend().list(ObjectKind::Wal)? {
        let Some((inst, file)) = name.split_once('.') else {
            continue;
        };
        if instance.is_some_and(|i| i != inst) || !valid_file_name(file) {
            continue;
        }
        let bytes = match crate::object_io::get(repo.backend().as_ref(), ObjectKind::Wal, &name) {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => continue, // removed since the listing
            Err(e) => return Err(e),
        };
        out.push(decode(&bytes, inst, file)?);
    }
    out.sort_by(|a, b| (&a.instance, &a.file).cmp(&(&b.instance, &b.file)));
    Ok(out)
}

/// Removes a WAL object (prune's WAL retention, under the exclusive lock); its data is then garbage for the
/// same prune.
pub fn remove(repo: &Repository, obj: &WalObject) -> Result<()> {
    match repo.delete_object(ObjectKind::Wal, &obj.object_name()) {
        Err(e) if !is_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

/// The trees of every WAL object: roots for garbage collection. An undecodable object stops the caller
/// (what it needs cannot be known).
pub fn gc_roots(repo: &Repository) -> Result<Vec<Id>> {
    Ok(list(repo, None)?.into_iter().map(|o| o.tree).collect())
}

#[cfg(test)]
mod tests {
    use super::segment::XLP_LONG_HEADER;
    use super::*;
    use crate::config::Config;

    /// A segment `name` of `len` bytes of cluster `sysid` (see tests/harness's `wal_segment`), 1 MiB segments.
    fn segment(name: &str, len: usize, sysid: u64, fill: u8) -> Vec<u8> {
        let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).unwrap();
        let (tli, log, seg) = (hex(0..8), hex(8..16), hex(16..24));
        let mut v = vec![fill; len.max(LONG_HEADER_LEN)];
        v[0..2].copy_from_slice(&0xD116u16.to_ne_bytes());
        v[2..4].copy_from_slice(&XLP_LONG_HEADER.to_ne_bytes());
        v[4..8].copy_from_slice(&(tli as u32).to_ne_bytes());
        v[8..16].copy_from_slice(&((log << 32) + seg * (1 << 20)).to_ne_bytes());
        v[24..32].copy_from_slice(&sysid.to_ne_bytes());
        v[32..36].copy_from_slice(&(1u32 << 20).to_ne_bytes());
        v.truncate(len);
        v
    }

    fn new_repo(dir: &Path) -> Repository {
        let repo = Repository::init(dir.join("repo"), Config::new_default()).unwrap();
        Repository::open(repo.backend().local_root().unwrap().to_path_buf()).unwrap()
    }

    #[test]
    fn a_segment_whose_header_names_another_segment_or_timeline_is_refused() {
        let name = "000000020000000300000004";
        let ok = SegmentHeader::parse(&segment(name, 64, 1, 0)).unwrap();
        assert_eq!(ok.mismatch(name, 1 << 20), None);
        assert_eq!(ok.pageaddr, (3 << 32) + (4 << 20));
        // The first segment of a timeline is a copy of its parent's, header and all.
        let parent = SegmentHeader { tli: 1, ..ok };
        assert_eq!(parent.mismatch(name, 1 << 20), None);
        let cases = [
            (SegmentHeader { tli: 3, ..ok }, "timeline"),
            (SegmentHeader { tli: 0, ..ok }, "timeline"),
            (
                SegmentHeader {
                    pageaddr: ok.pageaddr + (1 << 20),
                    ..ok
                },
                "starts at LSN 3/500000",
            ),
            (SegmentHeader { info: 0, ..ok }, "no long header"),
            (
                SegmentHeader {
                    seg_size: 3 << 20,
                    ..ok
                },
                "segment size",
            ),
            (
                SegmentHeader {
                    seg_size: 1 << 19,
                    ..ok
                },
                "segment size",
            ),
        ];
        for (h, why) in cases {
            let got = h.mismatch(name, 1 << 20).unwrap_or_default();
            assert!(got.contains(why), "{h:?}: {got}");
        }
        assert!(
            ok.mismatch(name, (1 << 20) + 1).is_some(),
            "longer than a segment"
        );
        // A segment number that 1 GiB segments do not have (4 per log file).
        let big = SegmentHeader {
            seg_size: 1 << 30,
            pageaddr: (3 << 32) + (4 << 30),
            ..ok
        };
        assert!(big
            .mismatch(name, 1)
            .unwrap_or_default()
            .contains("does not exist"));
        assert_eq!(SegmentHeader::parse(&[0; 39]), None);
    }

    #[test]
    fn push_refuses_a_segment_of_another_database_system_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path());
        let (ours, theirs) = (7_000_000_000_000_000_001u64, 7_000_000_000_000_000_002u64);
        let push = |name: &str, sysid: u64| {
            push_content(
                &repo,
                "db",
                name,
                &segment(name, 100_000, sysid, sysid as u8),
            )
        };
        assert_eq!(
            push("000000010000000000000001", ours).unwrap(),
            PushOutcome::Stored
        );
        let first = get(&repo, "db", "000000010000000000000001")
            .unwrap()
            .unwrap();
        assert_eq!(first.system_identifier, Some(ours));
        // Right after an archived segment (its predecessor decides), after a gap and before the archived
        // ones (the nearest archived segment decides), and as a .partial segment.
        for name in [
            "000000010000000000000002",
            "000000010000000000000009",
            "000000010000000000000002.partial",
        ] {
            let err = push(name, theirs).unwrap_err().to_string();
            assert!(
                err.contains(&ours.to_string()) && err.contains(&theirs.to_string()),
                "{name}: {err}"
            );
            assert_eq!(get(&repo, "db", name).unwrap(), None, "{name}");
        }
        assert_eq!(
            push("000000010000000000000002", ours).unwrap(),
            PushOutcome::Stored
        );
        assert_eq!(
            push("000000010000000000000009", ours).unwrap(),
            PushOutcome::Stored
        );
        let err = push("000000010000000000000000", theirs)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&theirs.to_string()), "{err}");
        // Another instance is another cluster's archive.
        let other = "000000010000000000000001";
        push_content(&repo, "other", other, &segment(other, 100, theirs, 0)).unwrap();
        // A segment under another segment's name, or no segment at all.
        let renamed = segment("000000010000000000000001", 100, ours, 1);
        let err = push_content(&repo, "db", "000000010000000000000003", &renamed).unwrap_err();
        assert!(err.to_string().contains("not the WAL segment"), "{err}");
        let err = push_content(&repo, "db", "000000010000000000000003", b"short").unwrap_err();
        assert!(err.to_string().contains("too few"), "{err}");
        // History files and backup labels have no such header.
        push_content(
            &repo,
            "db",
            "00000002.history",
            b"1\t0/3000000\tno reason\n",
        )
        .unwrap();
    }

    #[test]
    fn fetch_for_a_cluster_refuses_a_segment_recorded_as_another_clusters_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path());
        let (ours, theirs) = (7_000_000_000_000_000_001u64, 7_000_000_000_000_000_002u64);
        let name = "000000010000000000000001";
        push_content(&repo, "db", name, &segment(name, 100_000, ours, 3)).unwrap();
        push_content(&repo, "db", "00000002.history", b"1\t0/3000000\tx\n").unwrap();
        let dest = dir.path().join("out");
        let wait = std::time::Duration::ZERO;
        let err = fetch_for_cluster(&repo, "db", name, &dest, wait, Some(theirs))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(name)
                && err.contains(&ours.to_string())
                && err.contains(&theirs.to_string()),
            "{err}"
        );
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left beside the destination"
        );
        for cluster in [Some(ours), None] {
            assert_eq!(
                fetch_for_cluster(&repo, "db", name, &dest, wait, cluster).unwrap(),
                100_000
            );
        }
        // Files that record no identifier (history files) are fetched whatever the cluster.
        fetch_for_cluster(&repo, "db", "00000002.history", &dest, wait, Some(theirs)).unwrap();
    }

    #[test]
    fn only_the_names_postgres_archives_are_accepted() {
        for ok in [
            "000000010000000000000001",
            "0000000A00000001000000FF.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ] {
            assert!(valid_file_name(ok), "{ok}");
        }
        for bad in [
            "",
            "00000001000000000000001",
            "000000010000000000000001.tmp",
            "0000000100000000000000ab",
            "../000000010000000000000001",
            "00000002.history.x",
            "RECOVERYXLOG",
        ] {
            assert!(!valid_file_name(bad), "{bad}");
        }
    }
}
