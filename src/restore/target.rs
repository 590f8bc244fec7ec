//! Where a restore may write: checks made on the target before anything is written.
//!
//! The repository read from is never written to: a target that is (or is inside) a local repository is
//! refused, and so is a target above it whose snapshot holds an entry at the repository's place (its
//! `config` or `keys/` would be overwritten, or files that are not objects would join its directories);
//! see [`repository_overlap`]. Checked before anything is written, as is a target that resolves to `/`
//! without being named `/` (a symlink to the root directory).
//!
//! `overwrite` replaces existing files, symlinks and empty directories, never a directory that holds
//! something where the snapshot has a file, symlink or special file: that would delete a whole tree the
//! user did not name. Such a restore is refused before anything is written.
//!
//! These are checks on paths as they stand before the restore; the restore itself reaches everything below
//! the target through descriptors ([`crate::restore::at`]), so what changes afterwards cannot lead it elsewhere.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

/// Refuses an overwriting restore that would replace a non-empty directory at `rel` under `target` by
/// `node` when that is not a directory (see the module docs). A check of every entry before anything is
/// written: the restore itself goes through descriptors, and a directory that appears later is still
/// removed only by `--overwrite`.
pub(crate) fn refuse_directory_in_the_way(target: &Path, rel: &Path, node: &Node) -> Result<()> {
    if matches!(node.kind, NodeKind::Dir { .. }) {
        return Ok(());
    }
    let path = target.join(rel);
    let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
    if is_dir && fs::read_dir(&path).map_or(true, |mut d| d.next().is_some()) {
        return Err(Error::Invalid(format!(
            "{} is a directory holding files where the snapshot has a {}: --overwrite replaces \
             files, not whole trees; move it away and restore again. Nothing was restored",
            path.display(),
            match node.kind {
                NodeKind::Symlink { .. } => "symlink",
                NodeKind::File { .. } => "file",
                _ => "special file",
            }
        )));
    }
    Ok(())
}

/// Refuses a target that resolves to `/` without being named `/`: a symlink (or `..`) to the root
/// directory is a mistake, and `--overwrite` or `--delete` there would work on the whole system. Restoring
/// into `/` is done by naming it.
pub(crate) fn refuse_root_through_symlink(target: &Path) -> Result<()> {
    let named_root = target
        .components()
        .all(|c| matches!(c, std::path::Component::RootDir));
    if !named_root && resolve_target(target) == Path::new("/") {
        return Err(Error::Invalid(format!(
            "the target {} resolves to / (through a symlink or ..); nothing was restored: to restore \
             into the root directory, name it: --target /",
            target.display()
        )));
    }
    Ok(())
}

/// `path` made absolute and resolved through every symlink of its longest existing ancestor (the rest
/// does not exist yet: the restore will create it as plain directories).
pub fn resolve_target(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut missing = Vec::new();
    let mut at = abs.as_path();
    loop {
        if let Ok(real) = at.canonicalize() {
            return missing.iter().rev().fold(real, |p, n| p.join(n));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                at = parent;
            }
            _ => return abs,
        }
    }
}

/// Where the local repository lies relative to a restore `target` when the restore of `root` there would
/// write into it: `target` is the repository or inside it, or the tree holds an entry on the repository's
/// path below `target`. `None` for other targets (and repositories not on this file system).
pub fn repository_overlap(repo: &Repository, root: &Id, target: &Path) -> Result<Option<String>> {
    use std::os::unix::ffi::OsStrExt;
    let Some(repo_dir) = repo.local_root().and_then(|r| r.canonicalize().ok()) else {
        return Ok(None);
    };
    let target = resolve_target(target);
    if target.starts_with(&repo_dir) {
        return Ok(Some(format!(
            "the target {} is inside the repository {}",
            target.display(),
            repo_dir.display()
        )));
    }
    let Ok(rel) = repo_dir.strip_prefix(&target) else {
        return Ok(None);
    };
    let names: Vec<&[u8]> = rel.iter().map(|c| c.as_bytes()).collect();
    let mut tree = repo.read_tree(root)?;
    for (i, name) in names.iter().enumerate() {
        let Some(node) = tree.get(name) else {
            return Ok(None);
        };
        match &node.kind {
            NodeKind::Dir { subtree } if i + 1 < names.len() => tree = repo.read_tree(subtree)?,
            _ => {
                return Ok(Some(format!(
                    "the snapshot holds {} below the target {}, where the repository is",
                    rel.display(),
                    target.display()
                )))
            }
        }
    }
    Ok(None)
}
