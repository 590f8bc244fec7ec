//! The writing walk of a file restore: the snapshot's entries gathered in tree order into rounds and each
//! round written when full — directories, regular files (through [`super::files`]' batches), hard links,
//! symlinks and special files — then the metadata of the directories the walk has left.
//!
//! Invariants: a round holds at most its limits of entries and chunk references (never the whole
//! snapshot); a directory gets its metadata only once everything below it is written (post-order), since
//! creating entries changes its mtime; of a hard-linked inode only the first restored path is kept, and only
//! for files with more than one link. Every entry is made through its parent's descriptor
//! ([`super::at::TargetDir`]), never through a path that could lead outside the target.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::at::{
    fd_path, link_at, mknod_at, replace_existing_at, set_meta_at, set_times_at, symlink_at,
    TargetDir,
};
use super::files::{restore_files, FileJob, Writing};
use super::{apply_file_meta, kept, mtimes, RestoreOptions, RestoreSummary};
use crate::error::{Error, IoContext, Result};
use crate::fetch::TreesAhead;
use crate::hashing::Id;
use crate::repo::Repository;
use crate::tree::{Meta, Node, NodeKind};
use crate::walk::{self, Place, Step};

/// One entry to restore, with its path relative to the target.
struct Item {
    rel: PathBuf,
    node: Node,
}

/// The writing walk: entries gathered in tree order into rounds, each round written when full (directories,
/// files, hard links, symlinks and special files), then the metadata of the directories the walk has left.
pub(super) struct Rounds<'a> {
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
    pub(super) fn new(
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
    pub(super) fn write(&mut self, trees: &TreesAhead, root: &Id) -> Result<()> {
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
    pub(super) fn finish(self) -> Result<RestoreSummary> {
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
            // [`crate::restore::at`]): the tree may be changed by someone else while the restore runs.
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

    /// Directory opens made so far (for tests of the descriptor reuse).
    #[cfg(test)]
    pub(super) fn opens(&self) -> u64 {
        self.target.as_ref().map_or(0, TargetDir::opens)
    }

    /// Write-outs of files started so far (for tests of which files get one).
    #[cfg(test)]
    pub(super) fn writebacks(&self) -> u64 {
        self.target.as_ref().map_or(0, TargetDir::writebacks)
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
