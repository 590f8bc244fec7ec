//! Restore and dump: reassemble files and streams from a snapshot, re-verifying every chunk against its id.
//!
//! Safety: every path written is `target` joined with tree-entry names that the tree decoder has already
//! proven to be single, safe components; every directory on the way is opened from the target's descriptor
//! without following symlinks and every entry is made and given its metadata through its parent's (or its
//! own) descriptor ([`crate::restore_at`]), so a directory swapped for a symlink while the restore runs
//! fails the restore instead of leading it outside the target; existing files are replaced only with
//! `overwrite` (and then unlinked first, never written through).
//! A file whose chunk fails verification is removed and named in the error, never left silently wrong.
//!
//! Before anything is written, the target is checked ([`crate::restore_target`]): never into the
//! repository, never `/` reached through a symlink, never a whole directory tree replaced by `overwrite`.
//!
//! Memory: a file restore holds one round of entries ([`ROUND_ENTRIES`], with their chunk lists), the trees
//! read ahead of its walk ([`TreesAhead`]), the directories it is in, and the first path of each hard-linked
//! inode; never the whole snapshot, so a restore of millions of files runs in the memory of a few thousand.
//!
//! Damage: an object that fails verification here (a hash mismatch, bad framing, a missing pack or blob; see
//! [`Error::is_damage`]) is recorded in the index as a damaged copy, so that the next backup stores it again
//! instead of deduplicating against it, and the error says so. Other read errors (permission denied, EIO)
//! are reported as they are and recorded nowhere.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::time::TimeSpec;

use crate::error::{Error, IoContext, Result};
use crate::fetch::TreesAhead;
use crate::hashing::Id;
use crate::index::{DamageRecord, Location};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore_at::{
    fd_path, link_at, mknod_at, replace_existing_at, set_meta_at, set_times_at, symlink_at,
    TargetDir,
};
use crate::restore_files::{is_zeros, restore_files, FileJob, Writing, Zeros, ZEROS};
use crate::restore_target;
use crate::snapshot::Snapshot;
use crate::tree::{Meta, Node, NodeKind};
use crate::walk::{self, Place, Step};

/// Where and what to restore.
#[derive(Debug, Default, Clone)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Only these paths (relative to the snapshot root, e.g. `filestore/ab`); everything when empty.
    pub include: Vec<PathBuf>,
    pub overwrite: bool,
    /// Leave holes where the snapshot has chunks of zeros (see [`crate::restore_files`]).
    pub sparse: bool,
    pub progress: Progress,
}

/// What a restore wrote.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub special: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

/// One entry to restore, with its path relative to the target.
struct Item {
    rel: PathBuf,
    node: Node,
}

/// Entries gathered before they are written, at most, and chunk references among them: a restore holds one
/// round of entries (with their chunk lists), never the whole snapshot's (a million files would be ~700 MB).
/// A round is many of [`restore_files`]' batches, so the batches stay full.
const ROUND_ENTRIES: usize = 16 * 1024;
const ROUND_CHUNKS: usize = 256 * 1024;

/// Restores a snapshot's file tree under `opts.target`.
///
/// The tree is walked once (depth-first, trees read ahead in bounded memory: [`TreesAhead`]) and written
/// in rounds of entries as the walk meets them ([`Rounds`]); a directory gets its metadata once everything
/// below it is written. Files that fail do not stop the restore: every file is attempted, each failed one
/// is removed, and the first failure met is returned at the end.
pub fn restore(
    repo: &Repository,
    snap: &Snapshot,
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
    restore_in_rounds(repo, snap, opts, (ROUND_ENTRIES, ROUND_CHUNKS))
}

/// [`restore`] in rounds of at most `limits.0` entries and `limits.1` chunk references.
fn restore_in_rounds(
    repo: &Repository,
    snap: &Snapshot,
    opts: &RestoreOptions,
    limits: (usize, usize),
) -> Result<RestoreSummary> {
    let root = snap.tree.ok_or_else(|| {
        Error::NotFound("the snapshot holds no file tree (only streams: use `cairn dump`)".into())
    })?;
    let include: Vec<Vec<Vec<u8>>> = opts
        .include
        .iter()
        .map(|p| components(p.as_os_str().as_bytes()))
        .collect();
    restore_target::refuse_root_through_symlink(&opts.target)?;
    if let Some(why) = restore_target::repository_overlap(repo, &root, &opts.target)? {
        return Err(Error::Invalid(format!(
            "{why}; nothing was restored: choose a target outside the repository"
        )));
    }
    let descend = |path: &[u8], node: &Node| kept(&include, path, node);
    let fallback = |id: &Id| read_tree(repo, id);
    if opts.overwrite {
        // A walk of its own before anything is written (the trees are read twice: a directory in the way
        // must stop the restore before it starts, and holding every entry until then is what rounds avoid).
        let trees = TreesAhead::new(repo, &descend, &fallback)?;
        walk::walk(
            &trees,
            &root,
            &mut InTheWay {
                include: &include,
                target: &opts.target,
            },
        )?;
    }
    let trees = TreesAhead::new(repo, &descend, &fallback)?;
    let mut rounds = Rounds::new(repo, opts, &include, limits)?;
    rounds.write(&trees, &root)?;
    rounds.finish()
}

/// The overwrite check of every entry restored (see [`restore_target::refuse_directory_in_the_way`]).
struct InTheWay<'a> {
    include: &'a [Vec<Vec<u8>>],
    target: &'a Path,
}

impl walk::Visitor for InTheWay<'_> {
    fn entry(&mut self, at: Place, node: &Node) -> Result<Step> {
        if !kept(self.include, at.path, node) {
            return Ok(Step::Skip);
        }
        restore_target::refuse_directory_in_the_way(self.target, at.as_path(), node)?;
        Ok(Step::Descend)
    }
}

/// The writing walk: entries gathered in tree order into rounds, each round written when full (directories,
/// files, hard links, symlinks and special files), then the metadata of the directories the walk has left.
struct Rounds<'a> {
    repo: &'a Repository,
    opts: &'a RestoreOptions,
    include: &'a [Vec<Vec<u8>>],
    fetcher: crate::fetch::Fetcher<'a>,
    /// Created and opened at the first round written: a restore that matches nothing writes nothing.
    target: Option<TargetDir>,
    /// Entries and chunk references in a round at most.
    limits: (usize, usize),
    round: Vec<Item>,
    round_chunks: usize,
    /// Entries met so far.
    entries: u64,
    /// The directories the walk is in (their metadata waits until it leaves them), outermost first.
    open_dirs: Vec<(PathBuf, Meta)>,
    /// Directories the walk has left, deepest first: given their metadata after the round is written.
    closed_dirs: Vec<(PathBuf, Meta)>,
    /// The first path restored of each hard-linked inode (device, inode): only files with nlink > 1.
    first_paths: HashMap<(u64, u64), PathBuf>,
    summary: RestoreSummary,
    /// The first file that failed: the restore goes on, and returns it at the end.
    failed: Option<Error>,
    as_root: bool,
}

impl walk::Visitor for Rounds<'_> {
    fn entry(&mut self, at: Place, node: &Node) -> Result<Step> {
        if !kept(self.include, at.path, node) {
            return Ok(Step::Skip);
        }
        let rel = at.as_path().to_path_buf();
        match &node.kind {
            NodeKind::Dir { .. } => self.open_dirs.push((rel.clone(), node.meta.clone())),
            NodeKind::File { chunks, .. } => self.round_chunks += chunks.len(),
            _ => {}
        }
        self.round.push(Item {
            rel,
            node: node.clone(),
        });
        self.entries += 1;
        if self.round.len() >= self.limits.0 || self.round_chunks >= self.limits.1 {
            self.flush()?;
        }
        Ok(Step::Descend)
    }

    fn tree_done(&mut self, _id: &Id, at: Place) -> Result<()> {
        if at.depth > 0 {
            if let Some(dir) = self.open_dirs.pop() {
                self.closed_dirs.push(dir);
            }
        }
        Ok(())
    }
}

impl<'a> Rounds<'a> {
    fn new(
        repo: &'a Repository,
        opts: &'a RestoreOptions,
        include: &'a [Vec<Vec<u8>>],
        limits: (usize, usize),
    ) -> Result<Rounds<'a>> {
        Ok(Rounds {
            repo,
            opts,
            include,
            fetcher: crate::fetch::Fetcher::new(repo)?,
            target: None,
            limits,
            round: Vec::new(),
            round_chunks: 0,
            entries: 0,
            open_dirs: Vec::new(),
            closed_dirs: Vec::new(),
            first_paths: HashMap::new(),
            summary: RestoreSummary::default(),
            failed: None,
            as_root: nix::unistd::geteuid().is_root(),
        })
    }

    /// Walks the tree `root` and writes what it selects, the last round included.
    fn write(&mut self, trees: &TreesAhead, root: &Id) -> Result<()> {
        walk::walk(trees, root, self)?;
        if !self.include.is_empty() && self.entries == 0 {
            return Err(Error::NotFound(format!(
                "no path in the snapshot matches {:?}",
                self.opts.include
            )));
        }
        self.flush()
    }

    /// What the restore wrote, or the first failure it met.
    fn finish(self) -> Result<RestoreSummary> {
        self.opts.progress.finish();
        match self.failed {
            Some(e) => Err(e),
            None => Ok(self.summary),
        }
    }

    /// Writes the round gathered so far, then the metadata of the directories left.
    fn flush(&mut self) -> Result<()> {
        if self.target.is_none() {
            fs::create_dir_all(&self.opts.target).at(&self.opts.target)?;
            // Everything below the target is reached through descriptors, never through a symlink (see
            // [`crate::restore_at`]): the tree may be changed by someone else while the restore runs.
            self.target = Some(TargetDir::open(&self.opts.target)?);
        }
        let items = std::mem::take(&mut self.round);
        self.round_chunks = 0;
        self.write_round(&items)
            .map_err(|e| self.failed.take().unwrap_or(e))?;
        drop(items);
        let closed = std::mem::take(&mut self.closed_dirs);
        self.dir_metadata(&closed)
            .map_err(|e| self.failed.take().unwrap_or(e))
    }

    fn target(&self) -> Result<&TargetDir> {
        self.target
            .as_ref()
            .ok_or_else(|| Error::Invalid("restore target not open".into()))
    }

    /// Makes the entries `items` (in tree order): directories, files, hard links, symlinks and special files.
    fn write_round(&mut self, items: &[Item]) -> Result<()> {
        let opts = self.opts;
        let target = self
            .target
            .as_ref()
            .ok_or_else(|| Error::Invalid("restore target not open".into()))?;
        for it in items
            .iter()
            .filter(|i| matches!(i.node.kind, NodeKind::Dir { .. }))
        {
            target.make_dir(&it.rel, opts.overwrite)?;
        }
        let (primaries, links) = split_hard_links(items, &mut self.first_paths);
        let jobs: Vec<FileJob> = primaries
            .iter()
            .filter_map(|it| match &it.node.kind {
                NodeKind::File { chunks, size } => Some(FileJob {
                    path: target.display(&it.rel),
                    rel: it.rel.clone(),
                    node: &it.node,
                    chunks,
                    size: *size,
                }),
                _ => None,
            })
            .collect();
        let how = Writing {
            overwrite: opts.overwrite,
            sparse: opts.sparse,
        };
        let written = restore_files(self.repo, &self.fetcher, target, &jobs, how, &opts.progress);
        let summary = &mut self.summary;
        summary.dirs += items
            .iter()
            .filter(|i| matches!(i.node.kind, NodeKind::Dir { .. }))
            .count() as u64;
        summary.files += jobs.len() as u64;
        match written {
            Ok(bytes) => summary.bytes += bytes,
            // Cancelled: stop here (the files so far stay).
            Err(e @ Error::Interrupted) => return Err(e),
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
        target.drop_held();
        for (it, first) in &links {
            let path = target.display(&it.rel);
            let (dir, name) = target.parent(&it.rel).at(&path)?;
            replace_existing_at(dir.as_fd(), &name, opts.overwrite, &path)?;
            let (from_dir, from_name) = target.parent(first).at(&path)?;
            link_at(from_dir.as_fd(), &from_name, dir.as_fd(), &name).at(&path)?;
            summary.links += 1;
        }
        target.drop_held();
        for it in items {
            write_special(target, it, opts.overwrite, self.as_root, summary)?;
        }
        target.drop_held();
        Ok(())
    }

    /// Gives directories (deepest first) their metadata, each opened (not followed) and set through its
    /// descriptor: last, because creating entries inside a directory changes its mtime.
    fn dir_metadata(&self, dirs: &[(PathBuf, Meta)]) -> Result<()> {
        let target = self.target()?;
        for (rel, meta) in dirs {
            let path = target.display(rel);
            let dir = target.open_dir(rel)?;
            apply_file_meta(&dir, &path, meta)?;
        }
        target.drop_held();
        Ok(())
    }
}

/// Makes a symlink or special file (anything else is left to the other phases); a device or FIFO that
/// cannot be made is a warning, as restic's.
fn write_special(
    target: &TargetDir,
    it: &Item,
    overwrite: bool,
    as_root: bool,
    summary: &mut RestoreSummary,
) -> Result<()> {
    let special = match &it.node.kind {
        NodeKind::Symlink { .. } => None,
        NodeKind::Fifo => Some((libc::S_IFIFO, 0)),
        NodeKind::CharDevice { rdev } => Some((libc::S_IFCHR, *rdev)),
        NodeKind::BlockDevice { rdev } => Some((libc::S_IFBLK, *rdev)),
        _ => return Ok(()),
    };
    let path = target.display(&it.rel);
    let (dir, name) = target.parent(&it.rel).at(&path)?;
    let dir = dir.as_fd();
    replace_existing_at(dir, &name, overwrite, &path)?;
    let meta = &it.node.meta;
    match (&it.node.kind, special) {
        (NodeKind::Symlink { target: t }, _) => symlink_at(dir, &name, t).at(&path)?,
        (_, Some((kind, rdev))) => {
            if let Err(e) = mknod_at(dir, &name, kind, meta.mode, rdev) {
                summary
                    .warnings
                    .push(format!("{}: not recreated: {e}", path.display()));
                return Ok(());
            }
        }
        _ => return Ok(()),
    }
    set_meta_at(dir, &name, meta, special.is_none(), as_root).at(&path)?;
    crate::xattrs::apply(&fd_path(dir, &name), &meta.xattrs, as_root)
        .map_err(|e| name_path(e, &path))?;
    set_times_at(dir, &name, &mtimes(meta)).at(&path)?;
    summary.special += 1;
    Ok(())
}

/// An attribute error about a `/proc/self/fd/...` path, said about the restored path instead.
fn name_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Invalid(m) => match m.split_once(": cannot restore") {
            Some((_, rest)) => Error::Invalid(format!("{}: cannot restore{rest}", path.display())),
            None => Error::Invalid(m),
        },
        other => other,
    }
}

/// Splits a path like `a/b/c` into components, as bytes (names need not be UTF-8); `.` and empty
/// components are dropped.
pub(crate) fn components(p: &[u8]) -> Vec<Vec<u8>> {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

/// Whether the entry `node` at `path` is restored: selected fully if some include is a prefix of its path,
/// or a directory on the way to one (every entry when `include` is empty).
fn kept(include: &[Vec<Vec<u8>>], path: &[u8], node: &Node) -> bool {
    let here: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let depth = here.len();
    let selected = include.is_empty()
        || include
            .iter()
            .any(|inc| inc.len() <= depth && here[..inc.len()] == inc[..]);
    let on_the_way = include
        .iter()
        .any(|inc| inc.len() > depth && inc[..depth] == here[..]);
    selected || on_the_way && matches!(node.kind, NodeKind::Dir { .. })
}

/// Regular files to write, and hard links to make to the first restored path of their group (`first`:
/// kept across rounds, for files with more than one link only).
fn split_hard_links<'i>(
    items: &'i [Item],
    first: &mut HashMap<(u64, u64), PathBuf>,
) -> (Vec<&'i Item>, Vec<(&'i Item, PathBuf)>) {
    let mut primaries = Vec::new();
    let mut links = Vec::new();
    for it in items
        .iter()
        .filter(|i| matches!(i.node.kind, NodeKind::File { .. }))
    {
        let m = &it.node.meta;
        if m.nlink > 1 {
            if let Some(p) = first.get(&(m.device, m.inode)) {
                links.push((it, p.clone()));
                continue;
            }
            first.insert((m.device, m.inode), it.rel.clone());
        }
        primaries.push(it);
    }
    (primaries, links)
}

/// Records damage met reading a blob (and every blob of its pack when the pack is gone, once per pack).
pub(crate) fn blob_failed(
    repo: &Repository,
    loc: &Location,
    e: Error,
    lost: &std::sync::Mutex<HashSet<Id>>,
) -> Error {
    if crate::backend::is_not_found(&e)
        && lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(loc.pack)
    {
        record_lost_pack(repo, &loc.pack, &e);
    }
    damage_found(repo, &loc.entry.id, Some(&loc.pack), e)
}

/// Raw bytes decoded ahead of a stream's output at most (and chunks, for tiny ones): enough that both cores
/// stay busy on 8 KiB dump chunks, small enough that memory stays flat on 4 MiB ones.
const WINDOW_BYTES: u64 = 8 << 20;
const WINDOW_CHUNKS: usize = 2048;

/// Writes chunks in order: a window of them is read (in merged runs, see [`crate::fetch`]) and decoded in
/// parallel while the window before it is written out and the one after it is looked up in the index.
/// A chunk found to be all zeros is read once: its later references are written from zeros (see
/// [`Zeros`]) and take no room in a window, so a long run of them is a few windows, not one per 8 MiB.
pub fn write_chunks(repo: &Repository, chunks: &[Id], out: &mut dyn Write) -> Result<u64> {
    let fetcher = crate::fetch::Fetcher::new(repo)?;
    let mut zeros = Zeros::default();
    let mut written = 0u64;
    let mut window = next_window(repo, chunks, WINDOW_BYTES, &zeros)?;
    let mut rest = &chunks[window.len()..];
    let mut ready: Vec<Piece> = Vec::new();
    while !(window.is_empty() && ready.is_empty()) {
        let (mut decoded, mut wrote, mut next) =
            (Ok((Vec::new(), Vec::new())), Ok(()), Ok(Vec::new()));
        rayon::in_place_scope(|s| {
            s.spawn(|_| decoded = decode_window(repo, &fetcher, &window, &zeros));
            wrote = ready.iter().try_for_each(|p| p.write_to(out));
            next = next_window(repo, rest, WINDOW_BYTES, &zeros);
        });
        wrote.map_err(|e| Error::io("output", e))?;
        written += ready.iter().map(Piece::len).sum::<u64>();
        let (pieces, found) = decoded?;
        zeros.learn(found);
        ready = pieces;
        window = next?;
        rest = &rest[window.len()..];
    }
    Ok(written)
}

/// A chunk of a window: where it is, or that it is a chunk known to be zeros (of this length).
enum Slot {
    Blob(Location),
    Zeros(u32),
}

/// A chunk's bytes, ready to be written.
enum Piece {
    Data(Vec<u8>),
    Zeros(u32),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Data(d) => d.len() as u64,
            Piece::Zeros(n) => u64::from(*n),
        }
    }

    fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Piece::Data(d) => out.write_all(d),
            Piece::Zeros(n) => {
                let mut left = *n as usize;
                while left > 0 {
                    let k = left.min(ZEROS.len());
                    out.write_all(&ZEROS[..k])?;
                    left -= k;
                }
                Ok(())
            }
        }
    }
}

/// The next chunks: up to `max_bytes` of raw data to decode or [`WINDOW_CHUNKS`] chunks. Chunks known to be
/// zeros are not looked up and count no bytes: nothing is decoded for them.
fn next_window(
    repo: &Repository,
    chunks: &[Id],
    max_bytes: u64,
    zeros: &Zeros,
) -> Result<Vec<Slot>> {
    let mut window = Vec::new();
    let mut bytes = 0u64;
    for id in chunks {
        if window.len() == WINDOW_CHUNKS || bytes >= max_bytes {
            break;
        }
        if let Some(len) = zeros.len(id) {
            window.push(Slot::Zeros(len));
            continue;
        }
        let loc = repo
            .locate(id)
            .map_err(|e| damage_found(repo, id, None, e))?;
        bytes += u64::from(loc.entry.raw_len);
        window.push(Slot::Blob(loc));
    }
    Ok(window)
}

/// A window's chunks in order, and the blobs among them found to be zeros (with their lengths).
type Decoded = (Vec<Piece>, Vec<(Id, u32)>);

/// Reads and verifies a window's chunks (each distinct blob once, none known to be zeros), in the window's
/// order; also returns the blobs found to be all zeros.
fn decode_window(
    repo: &Repository,
    fetcher: &crate::fetch::Fetcher,
    window: &[Slot],
    zeros: &Zeros,
) -> Result<Decoded> {
    let mut seen: HashMap<Id, usize> = HashMap::new();
    let mut blobs: Vec<Location> = Vec::new();
    // For each chunk: the blob it is read from, or the zeros it is.
    let slots: Vec<std::result::Result<usize, u32>> = window
        .iter()
        .map(|slot| match slot {
            Slot::Zeros(len) => Err(*len),
            // Found to be zeros since the window was looked up.
            Slot::Blob(loc) => match zeros.len(&loc.entry.id) {
                Some(len) => Err(len),
                None => Ok(*seen.entry(loc.entry.id).or_insert_with(|| {
                    blobs.push(*loc);
                    blobs.len() - 1
                })),
            },
        })
        .collect();
    let got: Vec<std::sync::Mutex<Option<Result<Vec<u8>>>>> =
        blobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let lost = std::sync::Mutex::new(HashSet::new());
    fetcher.fetch(&blobs, &|i, r| {
        let r = r.map_err(|e| blob_failed(repo, &blobs[i], e, &lost));
        *got[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    });
    let mut got: Vec<Option<Result<Vec<u8>>>> = got
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect();
    let mut found = Vec::new();
    for (loc, data) in blobs.iter().zip(&got) {
        let len = loc.entry.raw_len;
        if let Some(Ok(d)) = data {
            if len > 0 && d.len() == len as usize && is_zeros(d) {
                found.push((loc.entry.id, len));
            }
        }
    }
    let mut uses = vec![0usize; blobs.len()];
    for &s in slots.iter().flatten() {
        uses[s] += 1;
    }
    let mut out = Vec::with_capacity(window.len());
    for slot in slots {
        let s = match slot {
            Ok(s) => s,
            Err(len) => {
                out.push(Piece::Zeros(len));
                continue;
            }
        };
        uses[s] -= 1;
        let data = match &got[s] {
            Some(Ok(d)) if uses[s] > 0 => d.clone(),
            _ => got[s]
                .take()
                .unwrap_or_else(|| Err(Error::corrupt("restore", "a blob was not read")))?,
        };
        out.push(Piece::Data(data));
    }
    Ok((out, found))
}

/// What the user can do about damage met while reading (repeated in `check` and `repair`).
pub const HEAL_HINT: &str = "the damaged data is no longer used for deduplication: back up the source again to heal every snapshot that needs it, then `cairn prune` drops the damaged copy";

/// Reads and decodes a tree, recording it if it is damaged.
fn read_tree(repo: &Repository, id: &Id) -> Result<crate::tree::Tree> {
    repo.read_tree(id).map_err(|e| {
        let pack = e
            .is_damage()
            .then(|| repo.with_reader(|r| r.lookup(id)).ok().flatten())
            .flatten()
            .map(|l| l.pack);
        damage_found(repo, id, pack.as_ref(), e)
    })
}

/// Records every blob the index places in a pack that is gone (best effort, as in [`damage_found`]).
fn record_lost_pack(repo: &Repository, pack: &Id, e: &Error) {
    let index = repo.index();
    if let Ok(entries) = index.blobs_in_pack(pack) {
        let records: Vec<DamageRecord> = entries
            .iter()
            .map(|b| DamageRecord::now(b.id, *pack, e.to_string()))
            .collect();
        let _ = index.record_damage(&records);
    }
}

/// If `e` (met reading `blob`, stored in `pack` when indexed) is damage: records the damaged copy and adds
/// what to do to the message. Other errors pass unchanged.
pub(crate) fn damage_found(repo: &Repository, blob: &Id, pack: Option<&Id>, e: Error) -> Error {
    if !e.is_damage() {
        return e;
    }
    if let Some(pack) = pack {
        // Best effort: a repository that cannot be written to must still restore everything it can, and the
        // damage is found again by the next reader or `check --read-data`.
        let _ = repo
            .index()
            .record_damage(&[DamageRecord::now(*blob, *pack, e.to_string())]);
    }
    match e {
        Error::Corrupt { what, detail } => Error::Corrupt {
            what,
            detail: format!("{detail}; {HEAL_HINT}"),
        },
        Error::NotFound(m) => Error::NotFound(format!("{m}; {HEAL_HINT}")),
        Error::Io { path, source } => Error::Io {
            path,
            source: std::io::Error::new(source.kind(), format!("{source}; {HEAL_HINT}")),
        },
        other => other,
    }
}

/// Access and modification times for `futimens`/`utimensat`: both set to the recorded mtime.
fn mtimes(meta: &Meta) -> TimeSpec {
    TimeSpec::new(meta.mtime as libc::time_t, meta.mtime_nsec as _)
}

/// Applies owner (when root), mode, extended attributes and mtime to a file or directory still open, through
/// its descriptor (no path lookups).
pub(crate) fn apply_file_meta(file: &File, path: &Path, meta: &Meta) -> Result<()> {
    let root = nix::unistd::geteuid().is_root();
    if root {
        std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid)).at(path)?;
    }
    file.set_permissions(fs::Permissions::from_mode(meta.mode & 0o7777))
        .at(path)?;
    // After the mode, as in `apply_meta`: an access ACL carries the group bits' mask.
    crate::xattrs::apply_fd(file, path, &meta.xattrs, root)?;
    let t = mtimes(meta);
    nix::sys::stat::futimens(file, &t, &t).map_err(|e| Error::io(path, e.into()))
}

/// Finds the node at `path` (components separated by `/`) below the tree `root`.
pub fn find_node(repo: &Repository, root: &Id, path: impl AsRef<Path>) -> Result<Node> {
    let path = path.as_ref();
    let comps = components(path.as_os_str().as_bytes());
    let path = path.display();
    let mut tree = read_tree(repo, root)?;
    for (i, c) in comps.iter().enumerate() {
        let node = tree
            .get(c)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("{path}: no such path in the snapshot")))?;
        if i + 1 == comps.len() {
            return Ok(node);
        }
        match node.kind {
            NodeKind::Dir { subtree } => tree = read_tree(repo, &subtree)?,
            _ => {
                return Err(Error::NotFound(format!(
                    "{path}: not a directory in the snapshot"
                )))
            }
        }
    }
    Err(Error::NotFound(format!("{path:?}: empty path")))
}

/// Writes a stream (by name) or a file (by path) of the snapshot to `out`; returns the bytes written.
pub fn dump(
    repo: &Repository,
    snap: &Snapshot,
    name: impl AsRef<Path>,
    out: &mut dyn Write,
) -> Result<u64> {
    let name = name.as_ref();
    let stream = match snap.stream_tree {
        Some(t) if snap.streams.iter().any(|s| Path::new(&s.name) == name) => {
            Some(find_node(repo, &t, name)?)
        }
        _ => None,
    };
    let node = match (stream, snap.tree) {
        (Some(n), _) => n,
        (None, Some(root)) => find_node(repo, &root, name)?,
        (None, None) => {
            return Err(Error::NotFound(format!(
                "{}: no such stream or file in the snapshot",
                name.display()
            )))
        }
    };
    let name = name.display();
    let NodeKind::File { chunks, .. } = &node.kind else {
        return Err(Error::Invalid(format!("{name}: not a file or stream")));
    };
    let n = write_chunks(repo, chunks, out)?;
    out.flush().map_err(|e| Error::io("output", e))?;
    Ok(n)
}

/// Writes a file node's chunks to `out` in order (verified, damage recorded); returns the bytes written.
/// For writers that stream a snapshot elsewhere (`export`).
pub fn write_file(repo: &Repository, chunks: &[Id], out: &mut dyn Write) -> Result<u64> {
    write_chunks(repo, chunks, out)
}

/// Reads a tree object, recording it in the index if it is damaged (as restore does).
pub fn tree(repo: &Repository, id: &Id) -> Result<crate::tree::Tree> {
    read_tree(repo, id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pack::BlobKind;
    use crate::pack_writer::PackWriter;
    use crate::restore_files::BATCH_CHUNKS;

    /// A first backup of `src` into `repo`.
    pub(crate) fn back_up(repo: &Repository, src: &Path) -> crate::backup::BackupResult {
        crate::backup::backup(
            repo,
            crate::backup::BackupOptions {
                paths: vec![src.to_path_buf()],
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn chunks_come_out_in_order_across_windows_and_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("repo"), Config::new_default()).unwrap();
        // More chunks than one window holds, then chunks larger in sum than one window's bytes.
        let mut blobs: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| format!("chunk {i}\n").into_bytes())
            .collect();
        blobs.extend((0..4u8).map(|n| vec![n; 3 << 20]));
        let saved: Vec<Id> = PackWriter::scope(&repo, |w| {
            blobs
                .iter()
                .map(|b| Ok(w.save(BlobKind::Data, b)?.0))
                .collect()
        })
        .unwrap();
        // A stream repeats chunks: the first ten again, then the last (large) one.
        let order: Vec<usize> = (0..blobs.len())
            .chain(0..10)
            .chain([blobs.len() - 1])
            .collect();
        let ids: Vec<Id> = order.iter().map(|&i| saved[i]).collect();
        let expected: Vec<u8> = order.iter().flat_map(|&i| blobs[i].clone()).collect();
        let mut out = Vec::new();
        let n = write_chunks(&repo, &ids, &mut out).unwrap();
        assert_eq!(n, expected.len() as u64);
        assert!(out == expected, "restored bytes differ from the saved ones");
        assert_eq!(write_chunks(&repo, &[], &mut Vec::new()).unwrap(), 0);
        // The same through the file restore: a file longer than one batch (its references repeated), then
        // one holding the same blobs again and an empty one, all in one call.
        let long: Vec<Id> = ids.iter().chain(&ids).chain(&ids).copied().collect();
        assert!(long.len() > BATCH_CHUNKS);
        let node = |chunks: &[Id], size: u64| Node {
            name: b"f".to_vec(),
            kind: NodeKind::File {
                chunks: chunks.to_vec(),
                size,
            },
            meta: Meta {
                mode: 0o100640,
                mtime: 1_600_000_000,
                ..Meta::default()
            },
        };
        let nodes = [node(&long, 3 * n), node(&ids, n), node(&[], 0)];
        let jobs: Vec<FileJob> = nodes
            .iter()
            .enumerate()
            .map(|(i, nd)| {
                let NodeKind::File { chunks, size } = &nd.kind else {
                    unreachable!()
                };
                FileJob {
                    path: dir.path().join(format!("file{i}")),
                    rel: PathBuf::from(format!("file{i}")),
                    node: nd,
                    chunks,
                    size: *size,
                }
            })
            .collect();
        let target = TargetDir::open(dir.path()).unwrap();
        let fetcher = crate::fetch::Fetcher::new(&repo).unwrap();
        let total = restore_files(
            &repo,
            &fetcher,
            &target,
            &jobs,
            Writing::default(),
            &Progress::hidden(),
        )
        .unwrap();
        assert_eq!(total, 4 * n);
        let long_expected: Vec<u8> = expected.repeat(3);
        assert!(
            fs::read(&jobs[0].path).unwrap() == long_expected,
            "long file differs"
        );
        assert!(fs::read(&jobs[1].path).unwrap() == expected, "file differs");
        assert!(fs::read(&jobs[2].path).unwrap().is_empty());
        let md = fs::metadata(&jobs[0].path).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o640);
        assert_eq!(
            md.modified().unwrap(),
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000)
        );
    }

    /// [`restore_in_rounds`] without the checks on the target, and the directory opens it made.
    fn restore_counting_opens(
        repo: &Repository,
        snap: &Snapshot,
        opts: &RestoreOptions,
        limits: (usize, usize),
    ) -> (Result<RestoreSummary>, u64) {
        let descend = |_: &[u8], _: &Node| true;
        let fallback = |id: &Id| read_tree(repo, id);
        let trees = TreesAhead::new(repo, &descend, &fallback).unwrap();
        let mut rounds = Rounds::new(repo, opts, &[], limits).unwrap();
        let written = rounds.write(&trees, &snap.tree.unwrap());
        let opens = rounds.target.as_ref().map_or(0, TargetDir::opens);
        (written.and_then(|()| rounds.finish()), opens)
    }

    /// Every entry below `root`: path, kind, mode, mtime, and content or link target; hard-linked files
    /// by the first path of their inode.
    fn listing(root: &Path) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut inodes = HashMap::new();
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            let path = root.join(&rel);
            let md = fs::symlink_metadata(&path).unwrap();
            let what = if md.is_dir() {
                let mut names: Vec<_> = fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                names.sort();
                todo.extend(names.into_iter().map(|n| rel.join(n)));
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("-> {:?}", fs::read_link(&path).unwrap())
            } else if md.is_file() {
                let first = inodes.entry(md.ino()).or_insert_with(|| rel.clone());
                format!("{:?} first {:?}", fs::read(&path).unwrap(), first)
            } else {
                "special".to_string()
            };
            out.push(format!(
                "{:?} {:o} {} {what}",
                rel,
                md.mode(),
                if md.file_type().is_symlink() {
                    0
                } else {
                    md.mtime()
                }
            ));
        }
        out.sort();
        out
    }

    #[test]
    fn a_restore_in_many_rounds_matches_one_in_a_single_round() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        // Directories deep and shallow, files, symlinks, a FIFO, hard links whose second path comes rounds
        // after the first, and directory times that the entries made inside them would otherwise change.
        for d in ["a", "a/sub", "a/sub/deeper", "b", "c"] {
            fs::create_dir_all(src.join(d)).unwrap();
        }
        for i in 0..12 {
            fs::write(
                src.join(format!("a/f{i:02}")),
                format!("file {i}\n").repeat(i + 1),
            )
            .unwrap();
        }
        fs::write(src.join("a/sub/deeper/g"), b"deep").unwrap();
        fs::write(src.join("c/last"), b"last").unwrap();
        symlink("../a/f00", src.join("b/link")).unwrap();
        fs::hard_link(src.join("a/f03"), src.join("b/twin")).unwrap();
        fs::hard_link(src.join("a/f03"), src.join("c/triplet")).unwrap();
        nix::unistd::mkfifo(
            &src.join("c/pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        fs::set_permissions(src.join("a/sub"), fs::Permissions::from_mode(0o750)).unwrap();
        for (n, d) in ["a/sub/deeper", "a/sub", "a", "b", "c", ""]
            .iter()
            .enumerate()
        {
            let t = nix::sys::time::TimeVal::new(1_500_000_000 + n as i64 * 1000, 0);
            nix::sys::stat::utimes(&src.join(d), &t, &t).unwrap();
        }
        let repo = Repository::init(dir.path().join("repo"), Config::new_default()).unwrap();
        let made = back_up(&repo, &src);
        let mut seen = Vec::new();
        for (name, limits) in [
            ("one", (1 << 20, 1 << 20)),
            ("rounds", (3, 1 << 20)),
            ("chunks", (1 << 20, 2)),
        ] {
            let out = dir.path().join(name);
            let opts = RestoreOptions {
                target: out.clone(),
                ..Default::default()
            };
            let (summary, _) = restore_counting_opens(&repo, &made.snapshot, &opts, limits);
            let summary = summary.unwrap();
            assert_eq!(
                (summary.dirs, summary.files, summary.links, summary.special),
                (6, 14, 2, 2),
                "{name}"
            );
            seen.push(listing(&out.join("src")));
        }
        assert_eq!(seen[0], listing(&src));
        assert_eq!(seen[1], seen[0], "restored in rounds of 3 entries");
        assert_eq!(seen[2], seen[0], "restored in rounds of 2 chunks");
    }

    #[test]
    fn a_deep_chain_of_directories_restores_with_opens_linear_in_its_depth() {
        const DEPTH: u64 = 300;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut level = src.clone();
        for i in 0..DEPTH {
            level.push("d");
            fs::create_dir_all(&level).unwrap();
            fs::write(level.join("f"), i.to_string()).unwrap();
        }
        let repo = Repository::init(dir.path().join("repo"), Config::new_default()).unwrap();
        let made = back_up(&repo, &src);
        let out = dir.path().join("restored");
        let opts = RestoreOptions {
            target: out.clone(),
            ..Default::default()
        };
        let limits = (ROUND_ENTRIES, ROUND_CHUNKS);
        let (summary, opens) = restore_counting_opens(&repo, &made.snapshot, &opts, limits);
        let summary = summary.unwrap();
        assert_eq!((summary.dirs, summary.files), (DEPTH + 1, DEPTH));
        let deepest = PathBuf::from("src")
            .join("d/".repeat(DEPTH as usize))
            .join("f");
        assert_eq!(fs::read(out.join(deepest)).unwrap(), b"299");
        // Each pass (directories, files, directory times) walks down or up the chain once, and again from the
        // target every 256 entries and every round (of 64 entries here). Walked from the target for every
        // entry, the three passes took DEPTH^2 / 2 opens each (135,000).
        eprintln!("{opens} directory opens to restore a chain {DEPTH} deep");
        assert!(
            opens < 20 * DEPTH,
            "{opens} directory opens for a chain {DEPTH} deep"
        );
    }

    #[test]
    fn a_run_of_zero_chunks_is_read_once_and_a_damaged_zero_chunk_still_fails_the_file() {
        use crate::backend::fault::FaultyBackend;
        use crate::backend::local::LocalBackend;
        use crate::backend::ObjectKind;
        use std::os::unix::fs::{FileExt, MetadataExt};
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        // 200 MiB, all hole but three blocks of data.
        let len: u64 = 200 << 20;
        let f = File::create(src.join("holes")).unwrap();
        f.set_len(len).unwrap();
        for (i, at) in [0, 77 << 20, len - 5000].into_iter().enumerate() {
            let block: Vec<u8> = (0..5000u32).map(|b| (b * 7 + i as u32) as u8 | 1).collect();
            f.write_all_at(&block, at).unwrap();
        }
        drop(f);
        let expected = fs::read(src.join("holes")).unwrap();
        let root = dir.path().join("repo");
        let mut config = Config::new_default();
        // Small chunks: the hole is some 1,600 references to one zero chunk.
        config.chunker_files = crate::config::ChunkerParams::STREAMS;
        Repository::init(&root, config).unwrap();
        let faulty = FaultyBackend::new(Arc::new(LocalBackend::new(&root)));
        let repo = Repository::open_with(Arc::new(faulty.clone())).unwrap();
        let snap = back_up(&repo, &src).snapshot;
        let node = find_node(&repo, &snap.tree.unwrap(), "src/holes").unwrap();
        let NodeKind::File { chunks, .. } = &node.kind else {
            panic!("not a file")
        };
        let mut counts: HashMap<Id, usize> = HashMap::new();
        for c in chunks {
            *counts.entry(*c).or_default() += 1;
        }
        let (zero, refs) = counts.into_iter().max_by_key(|(_, n)| *n).unwrap();
        assert!(refs > 1000, "{refs} references to the zero chunk");

        // `dump` reads the zero chunk once, not once per 8 MiB window (25 windows).
        let before = faulty.reads();
        let mut out = Vec::new();
        assert_eq!(dump(&repo, &snap, "src/holes", &mut out).unwrap(), len);
        let reads = faulty.reads() - before;
        eprintln!("{reads} reads to dump a file of {refs} references to one zero chunk");
        assert!(out == expected, "dumped bytes differ");
        assert!(reads <= 8, "{reads} reads to dump one file");

        // A restore writes the same bytes, the zeros allocated or, with --sparse, left as holes.
        for sparse in [false, true] {
            let target = dir.path().join(format!("restored-{sparse}"));
            let opts = RestoreOptions {
                target: target.clone(),
                sparse,
                ..Default::default()
            };
            restore(&repo, &snap, &opts).unwrap();
            let path = target.join("src/holes");
            assert!(fs::read(&path).unwrap() == expected, "sparse={sparse}");
            let allocated = fs::metadata(&path).unwrap().blocks() * 512;
            match sparse {
                true => assert!(allocated < 8 << 20, "{allocated} bytes allocated"),
                false => assert!(allocated >= len, "{allocated} bytes allocated"),
            }
        }

        // The zero chunk damaged in its pack: every reader still fails the file, with the damage named.
        let loc = repo.locate(&zero).unwrap();
        let pack = root.join(ObjectKind::Pack.key(&loc.pack.to_hex()));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pack)
            .unwrap();
        let at = loc.entry.offset + u64::from(loc.entry.stored_len) / 2;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
        drop(file);
        let e = dump(&repo, &snap, "src/holes", &mut std::io::sink()).unwrap_err();
        assert!(e.is_damage(), "{e}");
        for sparse in [false, true] {
            let target = dir.path().join(format!("damaged-{sparse}"));
            let opts = RestoreOptions {
                target: target.clone(),
                sparse,
                ..Default::default()
            };
            let e = restore(&repo, &snap, &opts).unwrap_err();
            assert!(e.is_damage() && e.to_string().contains("holes"), "{e}");
            assert!(!target.join("src/holes").exists(), "sparse={sparse}");
        }
    }

    /// A read whose bytes do not verify once (a transfer that brought wrong or too few bytes) is read
    /// again; only a second failure is damage, which restore records and `repair` acts on.
    #[test]
    fn a_blob_that_does_not_verify_once_is_read_again_and_only_a_second_failure_is_damage() {
        use crate::backend::fault::{Fault, FaultyBackend};
        use crate::backend::local::LocalBackend;
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(src.join("f"), &data).unwrap();
        let root = dir.path().join("repo");
        Repository::init(&root, Config::new_default()).unwrap();
        let faulty = FaultyBackend::new(Arc::new(LocalBackend::new(&root)));
        let repo = Repository::open_with(Arc::new(faulty.clone())).unwrap();
        let snap = back_up(&repo, &src).snapshot;
        let node = find_node(&repo, &snap.tree.unwrap(), "src/f").unwrap();
        let NodeKind::File { chunks, .. } = &node.kind else {
            panic!("not a file")
        };
        let first = repo.read_blob(&chunks[0]).unwrap();
        faulty.fail_read(1, Fault::Tear);
        assert_eq!(repo.read_blob(&chunks[0]).unwrap(), first);
        faulty.fail_read(1, Fault::Tear);
        faulty.fail_read(2, Fault::Tear);
        let e = repo.read_blob(&chunks[0]).unwrap_err();
        assert!(e.is_damage(), "{e}");
        // A file restore (merged reads of trees and data) with any one of its reads torn: the file comes
        // back whole every time.
        let restore_into = |name: &str| {
            let target = dir.path().join(name);
            let opts = RestoreOptions {
                target: target.clone(),
                ..Default::default()
            };
            restore(&repo, &snap, &opts).map(|_| fs::read(target.join("src/f")).unwrap())
        };
        let before = faulty.reads();
        restore_into("clean").unwrap();
        let reads = faulty.reads() - before;
        assert!(reads >= 2, "{reads}");
        for nth in 1..=reads {
            faulty.fail_read(nth, Fault::Tear);
            let got = restore_into(&format!("torn-{nth}"));
            assert!(
                got.is_ok_and(|got| got == data),
                "read {nth} of {reads} torn"
            );
        }
    }

    #[test]
    fn restoring_many_small_files_makes_far_fewer_reads_than_chunks() {
        use crate::backend::fault::FaultyBackend;
        use crate::backend::local::LocalBackend;
        use crate::backend::{Backend, ObjectKind};
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut content = 0u64;
        for i in 0..2000u64 {
            let sub = src.join(format!("d{}", i % 20));
            fs::create_dir_all(&sub).unwrap();
            // Distinct, incompressible-ish contents of 1..24 KiB: one chunk each, none shared.
            let len = 1024 + (i * 7919) % (23 << 10);
            let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            content += len;
            fs::write(sub.join(format!("f{i}")), data).unwrap();
        }
        let root = dir.path().join("repo");
        Repository::init(&root, Config::new_default()).unwrap();
        let faulty = FaultyBackend::new(Arc::new(LocalBackend::new(&root)));
        let repo = Repository::open_with(Arc::new(faulty.clone())).unwrap();
        let made = back_up(&repo, &src);
        let chunks = 2000u64;
        let packs = faulty.list(ObjectKind::Pack).unwrap().len() as u64;
        let target = dir.path().join("restored");
        let before = faulty.reads();
        let summary = restore(
            &repo,
            &made.snapshot,
            &RestoreOptions {
                target: target.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        let reads = faulty.reads() - before;
        assert_eq!((summary.files, summary.bytes), (2000, content));
        // 21 trees and a few runs per batch of files, never one read per chunk.
        assert!(
            reads * 20 < chunks,
            "{reads} reads for {chunks} chunks in {packs} packs"
        );
        for i in [0u64, 777, 1999] {
            let rel = format!("d{}/f{i}", i % 20);
            // A source is stored under its last name (`src`), however it was reached.
            let restored = target.join("src").join(&rel);
            assert!(fs::read(restored).unwrap() == fs::read(src.join(&rel)).unwrap());
        }
    }
}
