//! Restore and dump: reassemble files and streams from a snapshot, re-verifying every chunk against its id.
//!
//! Safety: every path written is `target` joined with tree-entry names that the tree decoder has already
//! proven to be single, safe components; every directory on the way is opened from the target's descriptor
//! without following symlinks and every entry is made and given its metadata through its parent's (or its
//! own) descriptor ([`at`]), so a directory swapped for a symlink while the restore runs
//! fails the restore instead of leading it outside the target; existing files are replaced only with
//! `overwrite` (and then unlinked first, never written through).
//! A file whose chunk fails verification is removed and named in the error, never left silently wrong.
//!
//! Before anything is written, the target is checked ([`target`]): never into the
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

pub mod at;
pub mod files;
mod rounds;
mod stream;
pub mod target;

pub use stream::{dump, write_chunks, write_file};

use std::collections::HashSet;
use std::fs::{self, File};
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
use crate::snapshot::Snapshot;
use crate::tree::{Meta, Node, NodeKind};
use crate::walk::{self, Place, Step};
use rounds::Rounds;

/// Where and what to restore.
#[derive(Debug, Default, Clone)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Only these paths (relative to the snapshot root, e.g. `filestore/ab`); everything when empty.
    pub include: Vec<PathBuf>,
    pub overwrite: bool,
    /// Leave holes where the snapshot has chunks of zeros (see [`files`]).
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

/// Entries gathered before they are written, at most, and chunk references among them: a restore holds one
/// round of entries (with their chunk lists), never the whole snapshot's (a million files would be ~700 MB).
/// A round is many of [`files::restore_files`]' batches, so the batches stay full.
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
    target::refuse_root_through_symlink(&opts.target)?;
    if let Some(why) = target::repository_overlap(repo, &root, &opts.target)? {
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

/// The overwrite check of every entry restored (see [`target::refuse_directory_in_the_way`]).
struct InTheWay<'a> {
    include: &'a [Vec<Vec<u8>>],
    target: &'a Path,
}

impl walk::Visitor for InTheWay<'_> {
    fn entry(&mut self, at: Place, node: &Node) -> Result<Step> {
        if !kept(self.include, at.path, node) {
            return Ok(Step::Skip);
        }
        target::refuse_directory_in_the_way(self.target, at.as_path(), node)?;
        Ok(Step::Descend)
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
    if repo.ensure_locks_held().is_err() {
        return; // see damage_found
    }
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
    // What is missing under a lost lock may have been moved by a prune, not damaged: recording it would
    // make the next backup store it again and `check` report damage that is not there.
    if let Err(lost) = repo.ensure_locks_held() {
        return lost;
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

/// Reads a tree object, recording it in the index if it is damaged (as restore does).
pub fn tree(repo: &Repository, id: &Id) -> Result<crate::tree::Tree> {
    read_tree(repo, id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::at::TargetDir;
    use super::files::{restore_files, FileJob, Writing, BATCH_CHUNKS};
    use super::*;
    use crate::config::Config;
    use crate::pack::BlobKind;
    use crate::pack_writer::PackWriter;
    use std::collections::HashMap;

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

    /// A repository made at `root` with `config` and opened through a fault-injecting backend, which also
    /// counts its reads.
    fn faulty_repo(
        root: &Path,
        config: Config,
    ) -> (Repository, crate::backend::fault::FaultyBackend) {
        use crate::backend::{fault::FaultyBackend, local::LocalBackend};
        use std::sync::Arc;
        Repository::init(root, config).unwrap();
        let faulty = FaultyBackend::new(Arc::new(LocalBackend::new(root)));
        let repo = Repository::open_with(Arc::new(faulty.clone())).unwrap();
        (repo, faulty)
    }

    /// The chunk list of the file at `path` in `snap`.
    fn file_chunks(repo: &Repository, snap: &Snapshot, path: &str) -> Vec<Id> {
        match find_node(repo, &snap.tree.unwrap(), path).unwrap().kind {
            NodeKind::File { chunks, .. } => chunks,
            _ => panic!("{path}: not a file"),
        }
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

    /// [`restore_in_rounds`] without the checks on the target, with the directory opens it made and the
    /// write-outs of files it started.
    fn restore_counting(
        repo: &Repository,
        snap: &Snapshot,
        opts: &RestoreOptions,
        limits: (usize, usize),
    ) -> (Result<RestoreSummary>, u64, u64) {
        let descend = |_: &[u8], _: &Node| true;
        let fallback = |id: &Id| read_tree(repo, id);
        let trees = TreesAhead::new(repo, &descend, &fallback).unwrap();
        let mut rounds = Rounds::new(repo, opts, &[], limits).unwrap();
        let written = rounds.write(&trees, &snap.tree.unwrap());
        let (opens, writebacks) = (rounds.opens(), rounds.writebacks());
        (written.and_then(|()| rounds.finish()), opens, writebacks)
    }

    /// Backs `src` up into a new repository under `dir` and restores it to `dir/restored` with the default
    /// options and round limits: where it went, and what [`restore_counting`] says.
    fn back_up_and_restore(dir: &Path, src: &Path) -> (PathBuf, Result<RestoreSummary>, u64, u64) {
        let repo = Repository::init(dir.join("repo"), Config::new_default()).unwrap();
        let made = back_up(&repo, src);
        let out = dir.join("restored");
        let opts = RestoreOptions {
            target: out.clone(),
            ..Default::default()
        };
        let limits = (ROUND_ENTRIES, ROUND_CHUNKS);
        let (summary, opens, writebacks) = restore_counting(&repo, &made.snapshot, &opts, limits);
        (out, summary, opens, writebacks)
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
            let (summary, _, _) = restore_counting(&repo, &made.snapshot, &opts, limits);
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
        let (out, summary, opens, _) = back_up_and_restore(dir.path(), &src);
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

    /// A small file is left to the kernel's write-out (see [`files::EARLY_WRITEBACK_MIN`]); a larger one
    /// gets its own as soon as it is written, and every file comes back exact.
    #[test]
    fn only_files_that_are_not_small_get_a_write_out_of_their_own() {
        use super::files::EARLY_WRITEBACK_MIN;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let bytes = |len: u64| crate::chunking::tests::pseudo_random(len as usize, len);
        // More small files than one batch opens, with the large ones among them.
        for i in 0..300u64 {
            let sub = src.join(format!("d{}", i % 3));
            fs::create_dir_all(&sub).unwrap();
            fs::write(sub.join(format!("f{i}")), bytes(100 + i * 13)).unwrap();
        }
        let large = [EARLY_WRITEBACK_MIN, 3 << 20, EARLY_WRITEBACK_MIN - 1];
        for (i, len) in large.into_iter().enumerate() {
            fs::write(src.join(format!("d{i}/large")), bytes(len)).unwrap();
        }
        let (out, summary, _, writebacks) = back_up_and_restore(dir.path(), &src);
        assert_eq!(summary.unwrap().files, 303);
        assert_eq!(listing(&out.join("src")), listing(&src));
        // One each for the two files of EARLY_WRITEBACK_MIN bytes or more (each written in one batch).
        assert_eq!(writebacks, 2, "write-outs started for 303 files");
    }

    #[test]
    fn a_run_of_zero_chunks_is_read_once_and_a_damaged_zero_chunk_still_fails_the_file() {
        use crate::backend::ObjectKind;
        use std::os::unix::fs::{FileExt, MetadataExt};

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
        let (repo, faulty) = faulty_repo(&root, config);
        let snap = back_up(&repo, &src).snapshot;
        let chunks = file_chunks(&repo, &snap, "src/holes");
        let mut counts: HashMap<Id, usize> = HashMap::new();
        for c in &chunks {
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
        use crate::backend::fault::Fault;

        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(src.join("f"), &data).unwrap();
        let root = dir.path().join("repo");
        let (repo, faulty) = faulty_repo(&root, Config::new_default());
        let snap = back_up(&repo, &src).snapshot;
        let chunks = file_chunks(&repo, &snap, "src/f");
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
        use crate::backend::{Backend, ObjectKind};

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
        let (repo, faulty) = faulty_repo(&root, Config::new_default());
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
