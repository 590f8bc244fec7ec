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
use crate::tree::NodeKind;

/// Removes every entry below `dest` that the tree `tree` does not hold; returns how many were removed (a
/// removed directory counts once, whatever it held).
pub fn delete_absent(repo: &Repository, tree: &Id, dest: &Path) -> Result<u64> {
    let tree = repo.read_tree(tree)?;
    let mut removed = 0;
    for entry in fs::read_dir(dest).at(dest)? {
        let entry = entry.at(dest)?;
        let path = entry.path();
        // `file_type` of a directory entry does not follow symlinks.
        let kind = entry.file_type().at(&path)?;
        match tree.get(entry.file_name().as_bytes()).map(|n| &n.kind) {
            None => {
                if kind.is_dir() {
                    fs::remove_dir_all(&path).at(&path)?;
                } else {
                    fs::remove_file(&path).at(&path)?;
                }
                removed += 1;
            }
            Some(NodeKind::Dir { subtree }) if kind.is_dir() => {
                removed += delete_absent(repo, subtree, &path)?;
            }
            Some(_) => {}
        }
    }
    Ok(removed)
}
