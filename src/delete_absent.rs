//! `restore --delete` (restic 0.17's): after a restore into a directory, removes what the directory holds
//! that the snapshot's tree does not, so that it is the snapshot again (an in-place restore then returns a
//! filestore to that point in time instead of leaving files added since).
//!
//! Invariants: nothing is followed. A symlink in the directory is an entry like any other: removed when the
//! snapshot has no entry of its name, never descended into, so nothing outside the directory is touched. A
//! directory is descended only when the snapshot has a directory of that name and the entry on disk is a real
//! directory. The first removal that fails stops the walk and is reported with its path.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::hashing::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind, Tree};
use crate::walk::{self, Place, Step};

/// Removes every entry below `dest` that the tree `tree` does not hold; returns how many were removed (a
/// removed directory counts once, whatever it held).
pub fn delete_absent(repo: &Repository, tree: &Id, dest: &Path) -> Result<u64> {
    let mut v = DeleteAbsent { dest, removed: 0 };
    walk::walk(repo, tree, &mut v)?;
    Ok(v.removed)
}

/// The walk of the snapshot's tree: each directory of it is compared with the directory on disk at the same
/// path, which is entered only when it is a real directory there.
struct DeleteAbsent<'a> {
    dest: &'a Path,
    removed: u64,
}

impl walk::Visitor for DeleteAbsent<'_> {
    fn tree(&mut self, _: &Id, at: Place, tree: &Tree) -> Result<()> {
        let dir = self.dest.join(at.as_path());
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            if tree.get(entry.file_name().as_bytes()).is_some() {
                continue;
            }
            let path = entry.path();
            // `file_type` of a directory entry does not follow symlinks.
            if entry.file_type().at(&path)?.is_dir() {
                fs::remove_dir_all(&path).at(&path)?;
            } else {
                fs::remove_file(&path).at(&path)?;
            }
            self.removed += 1;
        }
        Ok(())
    }

    fn entry(&mut self, at: Place, node: &Node) -> Result<Step> {
        if !matches!(node.kind, NodeKind::Dir { .. }) {
            return Ok(Step::Skip);
        }
        let path = self.dest.join(at.as_path());
        // Not followed: a symlink where the snapshot has a directory is left alone, never entered.
        match fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() => Ok(Step::Descend),
            Ok(_) => Ok(Step::Skip),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Step::Skip),
            Err(e) => Err(crate::error::Error::io(&path, e)),
        }
    }
}
