//! The batch writer of a file restore: regular files created, filled from the repository and given their
//! metadata, a batch of files at a time (see [`restore_files`]).
//!
//! A batch gathers up to [`BATCH_CHUNKS`] chunk references of up to [`BATCH_FILES`] files (an object store's
//! [`ReadPlan`](crate::backend::ReadPlan) asks for more, within the limit of open files); its distinct blobs
//! are read pack by pack in merged runs ([`crate::fetch`]) and each is written, at its offset, into every file
//! that needs it (`pwrite` from the worker that verified it). A file is created once (private, mode 0600) and
//! kept open until its last chunk is written; the write-out to disk of a file that is not small starts as
//! soon as the batch's last chunk of it is written (see [`start_writeback`]), and at the end of the batch it
//! gets its owner, mode, extended attributes and times through the open descriptor. A sparse restore (`restore --sparse`, as restic's)
//! skips the pages of zeros in each chunk and sets each file's length at the end, so they stay holes.
//!
//! Invariants: every file is attempted; a file is complete and exact or removed (never left half-written under
//! its name), and the first failure in tree order is the one returned. An existing file is replaced only when
//! overwriting, and then unlinked first, never written through. Files are created in their directory's
//! descriptor, opened from the target's without following symlinks ([`crate::restore::at`]).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::index::Location;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore::at::{create_file_at, remove_file_at, TargetDir};
use crate::restore::{apply_file_meta, blob_failed, damage_found};
use crate::tree::Node;

/// A regular file to write.
pub(crate) struct FileJob<'a> {
    /// For messages: the target joined with `rel`.
    pub path: PathBuf,
    /// Below the target: where it is created (through descriptors, see [`crate::restore::at`]).
    pub rel: PathBuf,
    pub node: &'a Node,
    pub chunks: &'a [Id],
    pub size: u64,
}

/// How files are written: `overwrite` replaces existing files (unlinked first, see the module docs); `sparse`
/// leaves a hole where a chunk is all zeros.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Writing {
    pub overwrite: bool,
    pub sparse: bool,
}

/// Chunk references gathered into one batch of reads, and files open at once at most: the batch's blobs are
/// read pack by pack (see [`crate::fetch`]) and each is written into every file that needs it, so many small
/// files cost a few ranged reads, not one per file.
pub(crate) const BATCH_CHUNKS: usize = 8192;
pub(crate) const BATCH_FILES: usize = 256;

/// Descriptors left for everything but a batch's files (the repository, the index, the fetchers' sockets).
const SPARE_FDS: u64 = 128;

/// The size of a batch for `repo`: what its backend's read plan asks for, with no more files than the
/// process may open. The soft limit on open files is raised towards the hard one when the plan wants more.
fn batch_limits(repo: &Repository) -> (usize, usize) {
    let plan = repo.backend().read_plan();
    let files = open_files_allowed(plan.batch_files as u64 + SPARE_FDS).saturating_sub(SPARE_FDS);
    (
        (files as usize).clamp(16, plan.batch_files.max(16)),
        plan.batch_chunks.max(1),
    )
}

/// How many descriptors this process may hold, after raising the soft limit towards `wanted` (never past the
/// hard limit). Unknown: the common default of 1024.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every target
fn open_files_allowed(wanted: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if (soft as u64) < wanted {
        // Raising the soft limit within the hard one, lowering nothing.
        let raised = (wanted as libc::rlim_t).min(hard);
        if setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_ok() {
            return raised as u64;
        }
    }
    soft as u64
}

/// What a batch reads: each distinct blob once, with every place it goes.
#[derive(Default)]
struct Batch {
    blobs: Vec<Location>,
    /// For each blob: (file, offset in the file).
    dests: Vec<Vec<(usize, u64)>>,
    seen: HashMap<Id, usize>,
    /// References to chunks already known to be zeros (see [`Zeros`]): (file, offset, length), not read.
    zero_refs: Vec<(usize, u64, u32)>,
    /// Files whose last chunk is in this batch.
    finishing: Vec<usize>,
    /// The file this batch ends in the middle of, if any (a file larger than a batch).
    partial: Option<usize>,
}

/// The files of a restore as they are written: open handles, bytes located so far, failures.
struct Files<'a> {
    jobs: &'a [FileJob<'a>],
    sparse: bool,
    open: Vec<Option<File>>,
    located: Vec<u64>,
    failed: Vec<AtomicBool>,
    /// Chunk references of the current batch not yet written, per file: at zero the file's share of the
    /// batch is on its way to disk (see [`start_writeback`]) without waiting for the rest of the batch.
    pending: Vec<AtomicU32>,
    /// The first error met by each failed file (a blob shared by several failing files names the first).
    errors: std::sync::Mutex<Vec<(usize, Error)>>,
}

impl Files<'_> {
    fn fail(&self, f: usize, e: Option<Error>) {
        let was = self.failed[f].swap(true, Ordering::SeqCst);
        if let (false, Some(e)) = (was, e) {
            self.errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((f, file_error(&self.jobs[f].path, e)));
        }
    }

    fn is_failed(&self, f: usize) -> bool {
        self.failed[f].load(Ordering::SeqCst)
    }
}

/// Restores regular files, verifying every chunk; returns the bytes written. Every file is attempted; a file
/// that fails is removed, and the first failure (in tree order) is returned.
pub(crate) fn restore_files(
    repo: &Repository,
    fetcher: &crate::fetch::Fetcher,
    target: &TargetDir,
    jobs: &[FileJob],
    how: Writing,
    progress: &Progress,
) -> Result<u64> {
    let limits = batch_limits(repo);
    let mut files = Files {
        jobs,
        sparse: how.sparse,
        open: jobs.iter().map(|_| None).collect(),
        located: vec![0; jobs.len()],
        failed: jobs.iter().map(|_| AtomicBool::new(false)).collect(),
        pending: jobs.iter().map(|_| AtomicU32::new(0)).collect(),
        errors: std::sync::Mutex::new(Vec::new()),
    };
    let lost = std::sync::Mutex::new(HashSet::new());
    let mut zeros = Zeros::default();
    let mut bytes = 0u64;
    let mut pos = (0usize, 0usize);
    while pos.0 < jobs.len() {
        // A job's cancellation stops the restore between batches (its files so far stay; see `restore`).
        progress.check_cancel()?;
        let batch = plan_batch(
            repo,
            target,
            &mut files,
            &mut pos,
            limits,
            how.overwrite,
            &zeros,
        );
        let found = std::sync::Mutex::new(Vec::new());
        {
            let files = &files;
            // A blob placed in one file then in the next is written by the worker that verified it, so one that
            // repeats (a long run of zeros) is written in parallel.
            let place = |f: usize, write: &(dyn Fn(&File) -> std::io::Result<()> + Sync)| {
                let Some(file) = files.open[f].as_ref().filter(|_| !files.is_failed(f)) else {
                    return;
                };
                if let Err(e) = write(file) {
                    files.fail(f, Some(Error::io(&jobs[f].path, e)));
                } else if files.pending[f].fetch_sub(1, Ordering::AcqRel) == 1
                    && jobs[f].size >= EARLY_WRITEBACK_MIN
                {
                    start_writeback(file);
                    target.count_writeback();
                }
            };
            rayon::join(
                || {
                    batch.zero_refs.par_iter().for_each(|&(f, at, len)| {
                        place(f, &|file| match how.sparse {
                            true => Ok(()),
                            false => write_zeros(file, at, len),
                        })
                    })
                },
                || {
                    fetcher.fetch(&batch.blobs, &|i, got| {
                        let loc = &batch.blobs[i];
                        match got {
                            Ok(data) => {
                                // Where the blob is not zeros, found once for all the places it goes.
                                let runs = match how.sparse {
                                    true => data_runs(&data),
                                    false if is_zeros(&data) => Vec::new(),
                                    false => vec![(0, data.len())],
                                };
                                let len = loc.entry.raw_len;
                                if runs.is_empty() && len > 0 && data.len() == len as usize {
                                    found
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .push((loc.entry.id, len));
                                }
                                let write = |file: &File, at: u64| match how.sparse {
                                    true => runs.iter().try_for_each(|&(from, to)| {
                                        file.write_all_at(&data[from..to], at + from as u64)
                                    }),
                                    false => file.write_all_at(&data, at),
                                };
                                batch.dests[i]
                                    .par_iter()
                                    .with_min_len(4)
                                    .for_each(|&(f, at)| place(f, &|file| write(file, at)));
                            }
                            Err(e) => {
                                let e = blob_failed(repo, loc, e, &lost);
                                let mut e = Some(e);
                                for &(f, _) in &batch.dests[i] {
                                    files.fail(f, e.take());
                                }
                            }
                        }
                    })
                },
            );
        }
        zeros.learn(found.into_inner().unwrap_or_else(|p| p.into_inner()));
        bytes += finish_files(target, &mut files, &batch.finishing, progress);
    }
    let mut errors = files.errors.into_inner().unwrap_or_else(|p| p.into_inner());
    errors.sort_by_key(|(f, _)| *f);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(bytes),
    }
}

/// Takes the next batch of chunk references from `pos` on: opens the files it starts and locates its blobs.
/// Both run on every core (creating thousands of small files one after the other cost more than reading
/// them); only the bookkeeping that follows is sequential.
fn plan_batch(
    repo: &Repository,
    target: &TargetDir,
    files: &mut Files,
    pos: &mut (usize, usize),
    limits: (usize, usize),
    overwrite: bool,
    zeros: &Zeros,
) -> Batch {
    let jobs = files.jobs;
    let segments = next_segments(jobs, pos, limits);
    // The directories the new files go into, each opened once for the batch (not followed), in tree order:
    // each is reached from the one before (see `TargetDir::dir`), and no descriptor of a batch before is used.
    target.drop_held();
    let mut parents: HashMap<&Path, std::io::Result<Arc<OwnedFd>>> = HashMap::new();
    for seg in segments.iter().filter(|seg| seg.first == 0) {
        let p = parent_of(&jobs[seg.file].rel);
        if !parents.contains_key(p) {
            parents.insert(p, target.dir(p));
        }
    }
    let opened: Vec<(usize, Result<File>)> = segments
        .par_iter()
        .filter(|seg| seg.first == 0)
        .map(|seg| {
            let job = &jobs[seg.file];
            let made = match (&parents[parent_of(&job.rel)], job.rel.file_name()) {
                (Ok(dir), Some(name)) => CString::new(name.as_bytes())
                    .map_err(|_| Error::io(&job.path, std::io::Error::other("name contains NUL")))
                    .and_then(|name| create_file_at(dir.as_fd(), &name, overwrite, &job.path)),
                (Err(e), _) => Err(Error::io(
                    &job.path,
                    std::io::Error::new(e.kind(), e.to_string()),
                )),
                (_, None) => Err(Error::io(
                    &job.path,
                    std::io::Error::other("not a file name"),
                )),
            };
            (seg.file, made)
        })
        .collect();
    for (f, file) in opened {
        match file {
            Ok(file) => files.open[f] = Some(file),
            Err(e) => files.fail(f, Some(e)),
        }
    }
    // Looked up on every core, a group of files per read transaction (one per file cost two system calls
    // per lookup on the index file: see `Index::in_read_transaction`).
    let group = segments
        .len()
        .div_ceil(rayon::current_num_threads() * 4)
        .max(1);
    let located: Vec<Vec<Result<Located>>> = segments
        .par_chunks(group)
        .flat_map_iter(|segs| {
            let locate_all = |locate: &dyn Fn(&Id) -> Result<Location>| -> Vec<_> {
                segs.iter()
                    .map(|seg| locate_segment(jobs, files, zeros, seg, locate))
                    .collect()
            };
            // Without a reader of its own (the index cannot be opened again), each lookup on its own.
            repo.locate_many(locate_all)
                .unwrap_or_else(|_| locate_all(&|id| repo.locate(id)))
        })
        .collect();
    let mut batch = Batch::default();
    for (seg, locs) in segments.iter().zip(located) {
        let f = seg.file;
        for (id, loc) in jobs[f].chunks[seg.first..].iter().zip(locs) {
            let at = files.located[f];
            let loc = match loc {
                Ok(Located::Blob(loc)) => loc,
                Ok(Located::Zeros(len)) => {
                    files.located[f] += u64::from(len);
                    batch.zero_refs.push((f, at, len));
                    *files.pending[f].get_mut() += 1;
                    continue;
                }
                Err(e) => {
                    files.fail(f, Some(damage_found(repo, id, None, e)));
                    break;
                }
            };
            files.located[f] += u64::from(loc.entry.raw_len);
            let i = *batch.seen.entry(*id).or_insert_with(|| {
                batch.blobs.push(loc);
                batch.dests.push(Vec::new());
                batch.blobs.len() - 1
            });
            batch.dests[i].push((f, at));
            *files.pending[f].get_mut() += 1;
        }
        if seg.last {
            batch.finishing.push(f);
        } else {
            batch.partial = Some(f);
        }
    }
    batch
}

/// Where the chunks of one segment are (a run of zeros already known, or a blob), in order; a file that
/// failed looks up nothing, and one fails at its first unlocatable chunk: nothing after it is looked up.
fn locate_segment(
    jobs: &[FileJob],
    files: &Files,
    zeros: &Zeros,
    seg: &Segment,
    locate: &dyn Fn(&Id) -> Result<Location>,
) -> Vec<Result<Located>> {
    if files.is_failed(seg.file) {
        return Vec::new();
    }
    let ids = &jobs[seg.file].chunks[seg.first..seg.first + seg.take];
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let loc = match zeros.len(id) {
            Some(len) => Ok(Located::Zeros(len)),
            None => locate(id).map(Located::Blob),
        };
        let failed = loc.is_err();
        out.push(loc);
        if failed {
            break;
        }
    }
    out
}

/// A file's share of a batch: chunks `first..first + take`; `last` when they end the file.
struct Segment {
    file: usize,
    first: usize,
    take: usize,
    last: bool,
}

/// The segments of the next batch (at most `max_chunks` chunk references and `max_files` files started, see
/// [`batch_limits`]), advancing `pos` past them.
fn next_segments(
    jobs: &[FileJob],
    pos: &mut (usize, usize),
    (max_files, max_chunks): (usize, usize),
) -> Vec<Segment> {
    let mut out = Vec::new();
    let (mut refs, mut opened) = (0usize, 0usize);
    while pos.0 < jobs.len() && refs < max_chunks && opened < max_files {
        let (f, c) = *pos;
        let job = &jobs[f];
        if c == 0 {
            opened += 1;
        }
        let take = (job.chunks.len() - c).min(max_chunks - refs);
        refs += take.max(1);
        let last = c + take == job.chunks.len();
        out.push(Segment {
            file: f,
            first: c,
            take,
            last,
        });
        *pos = if last { (f + 1, 0) } else { (f, c + take) };
    }
    out
}

/// Closes the files whose last chunk was written: a complete one gets its metadata, a failed one is removed.
/// Returns the bytes of the complete ones.
fn finish_files(
    target: &TargetDir,
    files: &mut Files,
    finishing: &[usize],
    progress: &Progress,
) -> u64 {
    let handles: Vec<(usize, Option<File>)> = finishing
        .iter()
        .map(|&f| (f, files.open[f].take()))
        .collect();
    let files = &*files;
    handles
        .into_par_iter()
        .map(|(f, file)| {
            let job = &files.jobs[f];
            let Some(file) = file else {
                // Never created here (e.g. it exists and is not to be overwritten): left as it is.
                return 0;
            };
            if files.is_failed(f) {
                drop(file);
                remove_failed(target, &job.rel);
                return 0;
            }
            let done = if files.located[f] != job.size {
                Err(Error::corrupt(
                    format!("file {}", job.path.display()),
                    format!(
                        "restored {} bytes, snapshot records {}",
                        files.located[f], job.size
                    ),
                ))
            } else {
                // A file ending in a hole is only as long as its last write until it is given its length.
                let length = match files.sparse {
                    true => file.set_len(job.size).map_err(|e| Error::io(&job.path, e)),
                    false => Ok(()),
                };
                length.and_then(|()| apply_file_meta(&file, &job.path, &job.node.meta))
            };
            drop(file);
            match done {
                Ok(()) => {
                    progress.file_done(job.size);
                    job.size
                }
                Err(e) => {
                    remove_failed(target, &job.rel);
                    files.fail(f, Some(e));
                    0
                }
            }
        })
        .sum()
}

/// Where a chunk's bytes were found.
enum Located {
    Blob(Location),
    /// A chunk of this many zeros, verified earlier in the restore (see [`Zeros`]).
    Zeros(u32),
}

/// The chunks of a restore found to be all zeros, with their lengths: later references to them are written
/// from [`ZEROS`] (or left as holes) without being read, decompressed and hashed again.
///
/// Why: backup stores a sparse file's holes as one zero chunk repeated (see [`crate::backup::holes`]), so a
/// 64 GiB hole is some 16,000 references to a single blob. Each is still verified once, by the first batch
/// that meets it: a damaged copy in its pack fails the files that need it, as any other chunk does.
#[derive(Default)]
pub(crate) struct Zeros {
    ids: HashMap<Id, u32>,
}

impl Zeros {
    /// The length of `id` when it is known to be zeros.
    pub(crate) fn len(&self, id: &Id) -> Option<u32> {
        self.ids.get(id).copied()
    }

    /// Records chunks found (read and verified) to be all zeros.
    pub(crate) fn learn(&mut self, found: impl IntoIterator<Item = (Id, u32)>) {
        self.ids.extend(found);
    }
}

/// Zeros written in place of a known zero chunk (see [`Zeros`]); a chunk longer than this is written in parts.
pub(crate) static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Whether `data` is all zeros; stops at the first block that is not (ordinary data costs next to nothing).
pub(crate) fn is_zeros(data: &[u8]) -> bool {
    data.chunks(64)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Writes `len` zeros at `at`.
fn write_zeros(file: &File, at: u64, len: u32) -> std::io::Result<()> {
    let (mut at, mut left) = (at, len as usize);
    while left > 0 {
        let n = left.min(ZEROS.len());
        file.write_all_at(&ZEROS[..n], at)?;
        (at, left) = (at + n as u64, left - n);
    }
    Ok(())
}

/// The ranges of `data` that a sparse restore writes: all but its pages (4 KiB from the chunk's start) that
/// are all zeros, which stay holes. A page is tested with an OR over its bytes, which the compiler vectorises.
fn data_runs(data: &[u8]) -> Vec<(usize, usize)> {
    const PAGE: usize = 4096;
    let mut runs = Vec::new();
    let mut run: Option<usize> = None;
    for (i, page) in data.chunks(PAGE).enumerate() {
        let zeros = page.iter().fold(0u8, |acc, &b| acc | b) == 0;
        match (zeros, run) {
            (false, None) => run = Some(i * PAGE),
            (true, Some(start)) => {
                runs.push((start, i * PAGE));
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        runs.push((start, data.len()));
    }
    runs
}

/// Files smaller than this get no write-out of their own (see [`start_writeback`]): the kernel writes them
/// back with everything else dirty, at its own pace or at the caller's `sync`.
///
/// Why: starting a file's write-out submits its pages as a request of their own and notifies the device, a
/// fixed cost per file that a small file does not repay. For a restore of 100,000 files of 100 B - 4 KiB it
/// was a tenth to a fifth of the restore's CPU time (one `sync_file_range` of ~7 µs per file); the
/// kernel's flusher writes the same pages as a few merged requests (BENCHMARKS.md, "Restore of many small
/// files"). A file of this size or more is at least one chunk's minimum (see
/// [`crate::config::ChunkerParams::FILES`]), and its write-out costs little next to writing its pages.
pub const EARLY_WRITEBACK_MIN: u64 = 256 << 10;

/// Starts writing a file's dirty pages to disk, without waiting for them (files of [`EARLY_WRITEBACK_MIN`]
/// bytes or more).
///
/// Why: the kernel starts writing dirty pages back only past `dirty_background_ratio` of memory (10%: over
/// 2 GB on a 24 GB machine) or after 30 s, so a restore of a few GB otherwise leaves every byte for the
/// caller's `sync` (or for whatever runs next), with the disk idle meanwhile. Started as soon as a file's
/// chunks of a batch are written, the write-out overlaps reading and decoding the rest (not the end of the
/// batch: an object store's batch is thousands of files, often a whole restore), and a file's blocks are
/// allocated once its size is known. When the device queue is full this waits for it, which paces the restore to the disk.
///
/// Best effort: it changes when bytes reach the disk, never what is written; an error here (a file system
/// without writeback, EIO) is met again by whoever syncs, so it is not reported.
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open (owned by `file`) for the whole call; offset 0 with length 0 means
        // "to the end of the file".
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// The directory a file below the target goes into.
fn parent_of(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

/// Removes a file that failed (never left half-written under its name); best effort, through its directory's
/// descriptor like everything a restore writes.
fn remove_failed(target: &TargetDir, rel: &Path) {
    if let Ok((dir, name)) = target.parent(rel) {
        remove_file_at(dir.as_fd(), &name);
    }
}

/// Names the file in an error about its content.
fn file_error(path: &Path, e: Error) -> Error {
    match e {
        Error::Corrupt { what, detail } if !what.starts_with("file ") => Error::Corrupt {
            what: format!("{what} of file {}", path.display()),
            detail,
        },
        Error::NotFound(m) => Error::NotFound(format!("{m} (needed by file {})", path.display())),
        other => other,
    }
}
