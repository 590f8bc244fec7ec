//! Backup: turns file trees and streams into blobs, tree objects and finally a snapshot.
//!
//! Order of work: every blob goes through the [`PackWriter`] (dedup, compress, durable pack, then index);
//! tree objects are saved bottom-up as each directory completes; streams are saved after the trees; the writer
//! is flushed; only then is the snapshot saved, its file and index row together (`Repository::save_snapshot`
//! removes the file again if the row cannot be committed). A failure anywhere leaves no snapshot object, only
//! packs that later backups reuse; a kill between the file and its row leaves a file that prune and
//! `repair index` adopt with all its data. A repository that cannot be written from here is refused up front.
//!
//! Parallelism: the entries of each directory are processed with rayon, and directories recurse inside the
//! same pool, so small files spread over all cores; the chunks of each large window are hashed and compressed
//! in parallel; a stream is read on its own thread while the previous window is being processed.
//!
//! Depth: the walk recurses once per directory level, and rayon's work stealing may stack one subtree's
//! frames on top of another's, so it runs in its own pool whose threads have [`WALK_STACK`] of stack (address
//! space, touched only as deep as the tree goes). Entries are reached by whole paths, so `PATH_MAX` (4096
//! bytes) bounds the depth below 2048 levels: deeper entries are warnings (`File name too long`) and make
//! the snapshot partial. With the 2 MiB stacks of a default pool, a tree of 500 levels with a file in each
//! aborted the whole backup with a stack overflow, so any user who could write below a backed-up path
//! could stop every backup of it.
//!
//! Source paths: a source is recorded (snapshot `paths`, root-tree name) by the path it was given as, made
//! absolute but with symlinks kept (an instance's `app/filestore` stays `app/filestore` when it links to
//! `data/fs-prod`), and read through what it resolves to; when the two differ the resolved path is recorded
//! in the metadata under [`RESOLVED_PATHS_KEY`], so that an in-place restore can check that the path still
//! leads to what was backed up.
//!
//! Submodules: [`sources`] resolves and names the source paths, [`stream_source`] is what a stream is read
//! from (stdin, a command, a database dump).
//!
//! Change detection: a file whose size, mtime, ctime and inode equal those recorded in the parent snapshot is
//! not read; its chunk list is reused (unless `force`).

use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, FixedOffset, Local};
use rayon::prelude::*;

use crate::chunking::{Batch, ChunkReader};
use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::exclude::{ExcludeOptions, ExcludedReport, Filter, Place};
use crate::hashing::Id;
use crate::lock;
use crate::pack::BlobKind;
use crate::pack_writer::PackWriter;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::{Snapshot, StreamInfo, Summary, SNAPSHOT_VERSION};
use crate::tree::{valid_name, Meta, Node, NodeKind, Tree};

mod holes;
mod sources;
mod stream_source;

pub(crate) use sources::set_metadata;
use sources::{literal_sources, record_excludes, record_resolved, resolve_sources};
pub(crate) use stream_source::ChildGuard;
pub use stream_source::StreamSource;

/// Which snapshot to compare files against.
#[derive(Debug, Clone, Default)]
pub enum ParentChoice {
    /// The latest snapshot with the same instance and source paths.
    #[default]
    Auto,
    /// This snapshot.
    Id(Id),
    /// None: read every file.
    None,
}

/// What to back up and how to label it.
#[derive(Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub streams: Vec<StreamSource>,
    pub instance: Option<String>,
    pub tags: Vec<String>,
    pub parent: ParentChoice,
    /// Re-read every file even if unchanged.
    pub force: bool,
    /// Snapshot time; now if unset.
    pub time: Option<DateTime<FixedOffset>>,
    pub metadata: Option<serde_json::Value>,
    /// Called in order once every stream has finished and before the snapshot is written, to complete
    /// `metadata` with facts known only then (e.g. what pg_dump printed on stderr).
    pub finalize_metadata: Vec<MetadataHook>,
    pub progress: Progress,
    /// Take each path as named instead of resolving it: a path that is a symlink is stored as that symlink,
    /// never followed (the extracted members of an untrusted archive).
    pub keep_root_symlinks: bool,

    /// What to leave out (see [`crate::exclude`]); recorded in the snapshot metadata under `excludes`.
    pub excludes: ExcludeOptions,
}

/// See [`BackupOptions::finalize_metadata`].
pub type MetadataHook = Box<dyn FnOnce(&mut Option<serde_json::Value>) + Send>;

/// What a backup produced.
#[derive(Debug)]
pub struct BackupResult {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    /// Source files that could not be read (the snapshot is then `partial`) and skipped entries.
    pub warnings: Vec<String>,
    /// What the exclude options left out.
    pub excluded: ExcludedReport,
}

/// The snapshot metadata key mapping each recorded source path that is (or passes through) a symlink to the
/// path it resolved to when it was backed up.
pub const RESOLVED_PATHS_KEY: &str = "resolved_paths";

/// Runs a backup; see the module docs for the write ordering.
pub fn backup(repo: &Repository, mut opts: BackupOptions) -> Result<BackupResult> {
    let started = Instant::now();
    if let Some(name) = &opts.instance {
        crate::instance::validate_name(name)?;
    }
    repo.require_writable()?;
    let _lock = lock::acquire_on(repo, false, "backup")?;
    let (sources, paths) = if opts.keep_root_symlinks {
        // An imported archive's top-level symlinks are entries of their own, never followed.
        let sources = literal_sources(&opts.paths)?;
        let paths = sources
            .iter()
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect();
        (sources, paths)
    } else {
        resolve_sources(&opts.paths)?
    };
    record_resolved(&mut opts.metadata, &sources, &paths);
    record_excludes(&mut opts.metadata, &opts.excludes);
    for s in &opts.streams {
        if !valid_name(s.name.as_bytes()) {
            return Err(Error::Invalid(format!("invalid stream name {:?}", s.name)));
        }
    }
    let parent = find_parent(repo, &opts, &paths)?;
    PackWriter::scope(repo, |writer| {
        run(repo, writer, opts, started, sources, paths, parent)
    })
}

/// The backup proper, with the writer whose I/O thread lives as long as it runs.
fn run(
    repo: &Repository,
    writer: &PackWriter,
    opts: BackupOptions,
    started: Instant,
    sources: Vec<(PathBuf, Vec<u8>)>,
    paths: Vec<String>,
    parent: Option<(Id, Snapshot)>,
) -> Result<BackupResult> {
    let job = Job {
        repo,
        writer,
        params: repo.config().chunker_files,
        force: opts.force,
        skip: repo.local_root().and_then(|r| r.canonicalize().ok()),
        counters: Counters::default(),
        warnings: Mutex::new(Vec::new()),
        partial: AtomicBool::new(false),
        progress: opts.progress.clone(),
        // Before anything is read: a bad pattern or a missing exclude file writes nothing.
        filter: opts.excludes.compile()?,
        excluded: Mutex::new(ExcludedReport::default()),
    };
    let tree = if sources.is_empty() {
        None
    } else {
        let parent_root = match parent.as_ref().and_then(|(_, s)| s.tree) {
            Some(t) => Some(repo.read_tree(&t)?),
            None => None,
        };
        let pool = walk_pool()?;
        Some(pool.install(|| job.save_root(&sources, parent_root.as_ref()))?)
    };
    let (stream_tree, streams) = job.save_streams(opts.streams, opts.instance.as_deref())?;
    job.writer.flush()?;
    let mut metadata = opts.metadata;
    for hook in opts.finalize_metadata {
        hook(&mut metadata);
    }
    let snapshot = Snapshot {
        version: SNAPSHOT_VERSION,
        time: opts.time.unwrap_or_else(|| Local::now().fixed_offset()),
        host: lock::hostname(),
        instance: opts.instance,
        tags: opts.tags,
        paths,
        tree,
        streams,
        stream_tree,
        parent: parent.map(|(id, _)| id.to_hex()),
        partial: job.partial.load(Ordering::Relaxed),
        summary: job.summary(started),
        metadata,
    };
    let snapshot_id = repo.save_snapshot(&snapshot)?;
    job.progress.finish();
    Ok(BackupResult {
        snapshot_id,
        snapshot,
        warnings: job.warnings.into_inner().unwrap_or_else(|p| p.into_inner()),
        excluded: job.excluded.into_inner().unwrap_or_else(|p| p.into_inner()),
    })
}

fn find_parent(
    repo: &Repository,
    opts: &BackupOptions,
    paths: &[String],
) -> Result<Option<(Id, Snapshot)>> {
    match &opts.parent {
        ParentChoice::None => Ok(None),
        ParentChoice::Id(id) => Ok(Some((*id, repo.load_snapshot(id)?))),
        ParentChoice::Auto if paths.is_empty() => Ok(None),
        ParentChoice::Auto => {
            let mut want: Vec<&String> = paths.iter().collect();
            want.sort();
            Ok(repo.snapshots()?.into_iter().rev().find(|(_, s)| {
                let mut have: Vec<&String> = s.paths.iter().collect();
                have.sort();
                s.instance == opts.instance && have == want && s.tree.is_some()
            }))
        }
    }
}

/// Stack of each walk thread. Measured with a file beside every directory: 2,040 levels (as deep as
/// `PATH_MAX` lets a walk by path go) overflowed 8 MiB and fit in 16 MiB, in release and unoptimised
/// builds alike; four times that leaves room for stolen subtrees stacked on top of a thread's own.
const WALK_STACK: usize = 64 << 20;

/// The pool the file tree walk runs in: as many threads as the global pool, with [`WALK_STACK`] each.
fn walk_pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .stack_size(WALK_STACK)
        .thread_name(|i| format!("cairn-walk-{i}"))
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the backup's threads: {e}")))
}

#[derive(Default)]
struct Counters {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs: AtomicU64,
    bytes_read: AtomicU64,
    bytes_total: AtomicU64,
}

/// State shared by every worker of one backup.
struct Job<'r> {
    repo: &'r Repository,
    writer: &'r PackWriter<'r>,
    params: ChunkerParams,
    force: bool,
    /// The repository itself, never backed up into itself.
    skip: Option<PathBuf>,
    counters: Counters,
    warnings: Mutex<Vec<String>>,
    partial: AtomicBool,
    progress: Progress,
    filter: Filter,
    excluded: Mutex<ExcludedReport>,
}

/// The backup path an entry was found under: exclude patterns and `--one-file-system` are relative to it.
struct Scope<'a> {
    root: &'a Path,
    name: &'a Path,
    device: u64,
}

impl Job<'_> {
    fn warn(&self, msg: String, partial: bool) {
        if partial {
            self.partial.store(true, Ordering::Relaxed);
        }
        self.progress.println(&format!("warning: {msg}"));
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(msg);
    }

    fn summary(&self, started: Instant) -> Summary {
        let c = &self.counters;
        Summary {
            files_new: c.files_new.load(Ordering::Relaxed),
            files_changed: c.files_changed.load(Ordering::Relaxed),
            files_unmodified: c.files_unmodified.load(Ordering::Relaxed),
            dirs: c.dirs.load(Ordering::Relaxed),
            bytes_read: c.bytes_read.load(Ordering::Relaxed),
            bytes_total: c.bytes_total.load(Ordering::Relaxed),
            bytes_added: self.writer.stats.bytes_stored.load(Ordering::Relaxed),
            chunks_new: self.writer.stats.data_blobs_new.load(Ordering::Relaxed),
            duration_s: started.elapsed().as_secs_f64(),
        }
    }

    fn save_root(&self, sources: &[(PathBuf, Vec<u8>)], parent: Option<&Tree>) -> Result<Id> {
        let nodes: Vec<Option<Node>> = sources
            .par_iter()
            .map(|(path, name)| {
                let device = fs::symlink_metadata(path).map(|m| m.dev()).unwrap_or(0);
                let scope = Scope {
                    root: path,
                    name: Path::new(OsStr::from_bytes(name)),
                    device,
                };
                let p = parent.and_then(|t| t.get(name));
                self.save_entry(path, name.clone(), p, &scope, false)
            })
            .collect::<Result<_>>()?;
        self.save_tree(nodes.into_iter().flatten().collect())
    }

    fn save_tree(&self, nodes: Vec<Node>) -> Result<Id> {
        let (bytes, _) = Tree::new(nodes)?.encode()?;
        Ok(self.writer.save(BlobKind::Tree, &bytes)?.0)
    }

    /// Saves one directory entry. `Ok(None)` means it was skipped (with a warning); `Err` is a repository
    /// failure that aborts the backup.
    fn save_entry(
        &self,
        path: &Path,
        name: Vec<u8>,
        parent: Option<&Node>,
        scope: &Scope,
        excluded: bool,
    ) -> Result<Option<Node>> {
        let md = match fs::symlink_metadata(path) {
            Ok(md) => md,
            Err(e) => {
                self.warn(format!("{}: {e}", path.display()), true);
                return Ok(None);
            }
        };
        let mut meta = meta_of(&md);
        match crate::xattrs::read(path) {
            Ok(x) => meta.xattrs = x,
            Err(e) => self.warn(
                format!("{}: extended attributes not read: {e}", path.display()),
                true,
            ),
        }
        let ft = md.file_type();
        if excluded && !ft.is_dir() {
            return Ok(None); // below an excluded directory that the walk enters for `!` patterns
        }
        let kind = if ft.is_dir() && self.other_file_system(path, &md, scope) {
            NodeKind::Dir {
                subtree: self.save_tree(Vec::new())?,
            }
        } else if ft.is_dir() {
            match self.save_dir(path, parent, scope, excluded)? {
                Some(subtree) => NodeKind::Dir { subtree },
                None => return Ok(None),
            }
        } else if ft.is_file() {
            match self.save_file(path, &md, &mut meta, parent)? {
                Some((size, chunks)) => NodeKind::File { size, chunks },
                None => return Ok(None),
            }
        } else if ft.is_symlink() {
            match fs::read_link(path) {
                Ok(t) => NodeKind::Symlink {
                    target: t.as_os_str().as_bytes().to_vec(),
                },
                Err(e) => {
                    self.warn(format!("{}: {e}", path.display()), true);
                    return Ok(None);
                }
            }
        } else if ft.is_fifo() {
            NodeKind::Fifo
        } else if ft.is_char_device() {
            NodeKind::CharDevice { rdev: md.rdev() }
        } else if ft.is_block_device() {
            NodeKind::BlockDevice { rdev: md.rdev() }
        } else {
            // A socket belongs to a running process and cannot be meaningfully restored.
            self.warn(format!("{}: socket skipped", path.display()), false);
            return Ok(None);
        };
        Ok(Some(Node { name, kind, meta }))
    }

    /// True (and reported) if `--one-file-system` keeps this directory empty: a mount point.
    fn other_file_system(&self, path: &Path, md: &Metadata, scope: &Scope) -> bool {
        if !self.filter.one_file_system() || md.dev() == scope.device {
            return false;
        }
        self.report_excluded(path, scope, "other file system");
        true
    }

    fn report_excluded(&self, path: &Path, scope: &Scope, why: &str) {
        let below = path.strip_prefix(scope.root).unwrap_or(path);
        self.excluded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(&scope.name.join(below), why);
    }

    /// Whether the child `name` of `dir` is excluded (and reported if it is the topmost excluded entry),
    /// and whether the walk must still look at it (for `!` patterns below an excluded directory).
    fn child_verdict(
        &self,
        child: &Path,
        scope: &Scope,
        dir_excluded: bool,
        tagged: bool,
    ) -> (bool, bool) {
        let below = child.strip_prefix(scope.root).unwrap_or(child);
        let in_snapshot = scope.name.join(below);
        let place = Place {
            below_source: below,
            in_snapshot: &in_snapshot,
            absolute: child,
        };
        let excluded = self.filter.excluded(&place, dir_excluded || tagged);
        if excluded && !dir_excluded {
            self.report_excluded(child, scope, "");
        }
        (excluded, !excluded || self.filter.descends_into_excluded())
    }

    fn save_dir(
        &self,
        path: &Path,
        parent: Option<&Node>,
        scope: &Scope,
        excluded: bool,
    ) -> Result<Option<Id>> {
        if self.skip.as_deref() == Some(path) {
            self.warn(
                format!("{}: the repository itself is not backed up", path.display()),
                false,
            );
            return Ok(None);
        }
        let names = match read_dir_names(path) {
            Ok(n) => n,
            Err(e) => {
                self.warn(format!("{}: {e}", path.display()), true);
                return Ok(None);
            }
        };
        let parent_tree = match parent.map(|n| &n.kind) {
            Some(NodeKind::Dir { subtree }) => self.repo.read_tree(subtree).ok(),
            _ => None,
        };
        let tag = self.filter.tag_in(path, &names).map(str::as_bytes);
        let nodes: Vec<Option<Node>> = names
            .into_par_iter()
            .map(|name| {
                let child = path.join(OsStr::from_bytes(&name));
                let tagged = tag.is_some_and(|t| t != name.as_slice());
                let (child_excluded, look) = self.child_verdict(&child, scope, excluded, tagged);
                if !look {
                    return Ok(None);
                }
                let p = parent_tree.as_ref().and_then(|t| t.get(&name));
                self.save_entry(&child, name, p, scope, child_excluded)
            })
            .collect::<Result<_>>()?;
        let nodes: Vec<Node> = nodes.into_iter().flatten().collect();
        if excluded && nodes.is_empty() {
            return Ok(None); // excluded, and no `!` pattern re-included anything below it
        }
        self.counters.dirs.fetch_add(1, Ordering::Relaxed);
        self.save_tree(nodes).map(Some)
    }

    /// Reads a regular file (unless unchanged since the parent snapshot). `meta` is what `lstat` said; the
    /// file read is opened without following a symlink and `meta` is replaced by what the open file itself
    /// says, so the snapshot never records one file's owner and mode with another's content.
    fn save_file(
        &self,
        path: &Path,
        md: &Metadata,
        meta: &mut Meta,
        parent: Option<&Node>,
    ) -> Result<Option<(u64, Vec<Id>)>> {
        let c = &self.counters;
        if let Some(Node {
            kind: NodeKind::File { size, chunks },
            meta: old,
            ..
        }) = parent
        {
            if !self.force
                && unchanged(old, meta, *size, md.len())
                && !self.writer.needs_fresh_copy(chunks)
            {
                c.files_unmodified.fetch_add(1, Ordering::Relaxed);
                c.bytes_total.fetch_add(*size, Ordering::Relaxed);
                self.progress.file_done(0);
                return Ok(Some((*size, chunks.clone())));
            }
        }
        let read = open_regular(path).and_then(|(f, opened)| {
            let xattrs = std::mem::take(&mut meta.xattrs);
            *meta = Meta {
                xattrs,
                ..meta_of(&opened)
            };
            let saved = if holes::may_have_holes(&opened) {
                self.save_sparse(&f, opened.len())?
            } else {
                self.save_reader(&f, opened.len())?
            };
            Ok((saved, changed_while_read(&f, &opened)))
        });
        match read {
            Ok((Ok((size, chunks)), changed)) => {
                if changed {
                    // Stored as read (as tar and borg do), but the copy may mix old and new content: the
                    // snapshot is partial and the file is named, so nobody mistakes it for a consistent one.
                    self.warn(
                        format!(
                            "{}: changed while it was read; stored as read ({size} bytes), possibly part old and part new",
                            path.display()
                        ),
                        true,
                    );
                }
                let counter = if parent.is_some() {
                    &c.files_changed
                } else {
                    &c.files_new
                };
                counter.fetch_add(1, Ordering::Relaxed);
                c.bytes_total.fetch_add(size, Ordering::Relaxed);
                self.progress.file_done(size);
                Ok(Some((size, chunks)))
            }
            Ok((Err(repo_err), _)) => Err(repo_err),
            Err(e) => {
                self.warn(format!("{}: {e}", path.display()), true);
                Ok(None)
            }
        }
    }

    /// Chunks and saves everything `source` yields. The outer error is the source's (a read failure); the
    /// inner one the repository's.
    fn save_reader(
        &self,
        source: impl Read,
        size_hint: u64,
    ) -> std::io::Result<Result<(u64, Vec<Id>)>> {
        let mut reader = ChunkReader::with_size_hint(source, self.params, size_hint);
        let mut chunks = Vec::new();
        let mut size = 0u64;
        while let Some(batch) = reader.next_batch()? {
            size += batch.cuts.iter().map(|c| c.1 as u64).sum::<u64>();
            match self.save_batch(&batch, self.repo.config().compression_level) {
                Ok(ids) => chunks.extend(ids),
                Err(e) => return Ok(Err(e)),
            }
        }
        self.counters.bytes_read.fetch_add(size, Ordering::Relaxed);
        Ok(Ok((size, chunks)))
    }

    /// [`save_reader`](Self::save_reader) for a file with holes: the chunks inside a hole are counted, not
    /// read ([`holes`]); the chunk list is the same as reading every byte would give.
    fn save_sparse(&self, f: &File, len: u64) -> std::io::Result<Result<(u64, Vec<Id>)>> {
        let level = self.repo.config().compression_level;
        let mut chunker = holes::HoleChunker::new(f, len, self.params);
        let mut zero = None;
        let mut chunks = Vec::new();
        let mut size = 0u64;
        while let Some(segment) = chunker.next_segment()? {
            let saved = match segment {
                holes::Segment::Data(batch) => {
                    size += batch.data.len() as u64;
                    self.save_batch(&batch, level).map(|ids| chunks.extend(ids))
                }
                holes::Segment::Zeros { count } => {
                    size += count * chunker.zero_len();
                    self.zero_chunk(&mut zero, chunker.zero_len(), level)
                        .map(|id| chunks.extend(std::iter::repeat_n(id, count as usize)))
                }
            };
            if let Err(e) = saved {
                return Ok(Err(e));
            }
        }
        self.counters.bytes_read.fetch_add(size, Ordering::Relaxed);
        Ok(Ok((size, chunks)))
    }

    /// The id of the chunk of `len` zeros, saved the first time it is asked for.
    fn zero_chunk(&self, id: &mut Option<Id>, len: u64, level: i32) -> Result<Id> {
        self.check_stop()?;
        if let Some(id) = id {
            return Ok(*id);
        }
        let zeros = vec![0u8; len as usize];
        let new = self.repo.crypto().blob_id(&zeros);
        self.writer
            .save_at_level(BlobKind::Data, new, &zeros, level)?;
        *id = Some(new);
        Ok(new)
    }

    /// Stops the backup on SIGINT or a cancelled progress. Every file and stream passes here, batch by batch
    /// (or a hole's run of zero chunks at a time): the one place a backup is stopped.
    fn check_stop(&self) -> Result<()> {
        crate::interrupt::check()?;
        self.progress.check_cancel()
    }

    fn save_batch(&self, batch: &Batch, level: i32) -> Result<Vec<Id>> {
        self.check_stop()?;
        batch
            .cuts
            .par_iter()
            .map(|&(off, len)| {
                let data = &batch.data[off..off + len];
                let id = self.repo.crypto().blob_id(data);
                self.writer.save_at_level(BlobKind::Data, id, data, level)?;
                Ok(id)
            })
            .collect()
    }

    /// Saves every stream as a file node of one tree; a stream's `finish` failing cancels the backup.
    fn save_streams(
        &self,
        streams: Vec<StreamSource>,
        instance: Option<&str>,
    ) -> Result<(Option<Id>, Vec<StreamInfo>)> {
        if streams.is_empty() {
            return Ok((None, Vec::new()));
        }
        let mut nodes = Vec::new();
        let mut infos = Vec::new();
        for s in streams {
            let (size, chunks) = self.save_stream(&s.name, s.reader, instance)?;
            (s.finish)()?;
            infos.push(StreamInfo {
                name: s.name.clone(),
                size,
            });
            let now = Local::now();
            nodes.push(Node {
                name: s.name.into_bytes(),
                kind: NodeKind::File { size, chunks },
                meta: Meta {
                    mode: 0o100600,
                    mtime: now.timestamp(),
                    mtime_nsec: now.timestamp_subsec_nanos(),
                    ..Meta::default()
                },
            });
        }
        Ok((Some(self.save_tree(nodes)?), infos))
    }

    /// Reads a stream on its own thread (so reading overlaps hashing and compression) and saves its chunks,
    /// new ones as deltas against the same stream of the instance's previous snapshot where that is smaller
    /// ([`crate::delta`]).
    fn save_stream(
        &self,
        name: &str,
        reader: Box<dyn Read + Send>,
        instance: Option<&str>,
    ) -> Result<(u64, Vec<Id>)> {
        let params = self.repo.config().chunker_streams;
        let mut deltas = crate::delta::StreamDeltas::for_stream(self.repo, instance, name)?;
        let (tx, rx) = crossbeam_channel::bounded::<std::io::Result<Batch>>(2);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut chunker = ChunkReader::new(reader, params);
                loop {
                    match chunker.next_batch() {
                        Ok(Some(b)) => {
                            if tx.send(Ok(b)).is_err() {
                                return; // the consumer failed; dropping the reader closes the pipe
                            }
                        }
                        Ok(None) => return,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            });
            let mut chunks = Vec::new();
            let mut size = 0u64;
            for batch in rx {
                let batch =
                    batch.map_err(|e| Error::Command(format!("reading stream {name}: {e}")))?;
                let len: u64 = batch.cuts.iter().map(|c| c.1 as u64).sum();
                size += len;
                let level = self.repo.config().stream_level();
                let ids = match deltas.as_mut() {
                    Some(d) => {
                        crate::interrupt::check()?;
                        self.progress.check_cancel()?;
                        d.save_batch(self.writer, &batch, level)?
                    }
                    None => self.save_batch(&batch, level)?,
                };
                chunks.extend(ids);
                self.counters.bytes_read.fetch_add(len, Ordering::Relaxed);
                self.counters.bytes_total.fetch_add(len, Ordering::Relaxed);
                self.progress.bytes(len);
            }
            Ok((size, chunks))
        })
    }
}

/// Opens the regular file at `path` for reading, never through a symlink, and says what it opened.
///
/// Between the `lstat` that found a regular file and this open, the entry may have been replaced (by
/// whoever can write its directory): by a symlink to a file its writer may not read (a backup running as
/// root would store that file's content under the writer's file, and a restore hand it to them), or by a
/// FIFO (whose open would wait forever). So the last component is not followed (`ELOOP`), a FIFO opens
/// without waiting, and anything but a regular file is refused; the caller records the metadata of the
/// file actually opened.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<(File, Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                std::io::Error::other("replaced by a symlink while the backup ran (not followed)")
            }
            _ => e,
        })?;
    let md = file.metadata()?;
    if !md.file_type().is_file() {
        return Err(std::io::Error::other(
            "no longer a regular file (replaced while the backup ran)",
        ));
    }
    Ok((file, md))
}

/// Whether the open file `f` was written to (or truncated) between `before` (its metadata when opened) and
/// now, when its content has been read: its size, mtime or ctime moved. A file whose size the kernel does
/// not know (`/proc`, `/sys`: 0 or 4096 whatever they hold) is judged by the same fields, which stay put.
fn changed_while_read(f: &File, before: &Metadata) -> bool {
    let Ok(after) = f.metadata() else {
        return false;
    };
    (
        after.len(),
        after.mtime(),
        after.mtime_nsec(),
        after.ctime(),
        after.ctime_nsec(),
    ) != (
        before.len(),
        before.mtime(),
        before.mtime_nsec(),
        before.ctime(),
        before.ctime_nsec(),
    )
}

/// The size, mtime, ctime and inode all match: the file is taken to be unchanged (as restic and borg do).
fn unchanged(old: &Meta, new: &Meta, old_size: u64, new_size: u64) -> bool {
    old_size == new_size
        && old.mtime == new.mtime
        && old.mtime_nsec == new.mtime_nsec
        && old.ctime == new.ctime
        && old.ctime_nsec == new.ctime_nsec
        && old.inode == new.inode
}

/// The metadata cairn records for an entry.
pub fn meta_of(md: &Metadata) -> Meta {
    Meta {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        ctime: md.ctime(),
        ctime_nsec: md.ctime_nsec() as u32,
        inode: md.ino(),
        device: md.dev(),
        nlink: md.nlink(),
        xattrs: Vec::new(),
    }
}

fn read_dir_names(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for e in fs::read_dir(path)? {
        names.push(e?.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_replaced_after_its_lstat_is_never_read_through_a_symlink_nor_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, b"not the writer's").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"mine").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let seen = fs::symlink_metadata(&f).unwrap();
        assert!(seen.is_file());

        // Swapped for a symlink after the lstat: refused, never read through.
        fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&secret, &f).unwrap();
        let e = open_regular(&f).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");

        // Swapped for a FIFO: refused at once (a plain open would wait for a writer forever).
        fs::remove_file(&f).unwrap();
        let c = std::ffi::CString::new(f.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(open_regular(&f).is_err());

        // Swapped for another regular file: read, and described by its own metadata, not the lstat's.
        fs::remove_file(&f).unwrap();
        fs::write(&f, b"another file").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        let (mut file, opened) = open_regular(&f).unwrap();
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        assert_eq!(content, b"another file");
        let now = fs::symlink_metadata(&f).unwrap();
        assert_eq!((opened.ino(), opened.mode()), (now.ino(), now.mode()));
        assert_ne!(opened.mode(), seen.mode());
        assert_eq!(meta_of(&opened).mode & 0o7777, 0o640);
    }
}
