//! `restore --delete` (restic 0.17's): after a restore into a directory, removes what the directory holds
//! that the snapshot's tree does not, so that it is the snapshot again (an in-place restore then returns a
//! filestore to that point in time instead of leaving files added since).
//!
//! Invariants: nothing is followed. A symlink in the directory is an entry like any other: removed when the
//! snapshot has no entry of its name, never descended into, so nothing outside the directory is touched. A
//! directory is descended only when the snapshot has a directory of that name and the entry on disk is a real
//! directory. The first removal that fails stops the walk and is reported with its path.

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::repo::Repository;
use crate::restore::at::{list_dir, lstat_at, remove_at, TargetDir};
use crate::tree::{Node, NodeKind, Tree};
use crate::walk::{self, Place, Step};

/// Removes every entry below `dest` that the tree `tree` does not hold; returns how many were removed (a
/// removed directory counts once, whatever it held).
pub fn delete_absent(repo: &Repository, tree: &Id, dest: &Path) -> Result<u64> {
    let repo_dir = repo.local_root().and_then(|r| r.canonicalize().ok());
    let keep = repo_dir.and_then(|r| {
        r.strip_prefix(crate::restore::target::resolve_target(dest))
            .ok()
            .map(Path::to_path_buf)
    });
    let mut v = DeleteAbsent {
        dest: TargetDir::open(dest)?,
        removed: 0,
        keep,
    };
    walk::walk(repo, tree, &mut v)?;
    Ok(v.removed)
}

/// The walk of the snapshot's tree: each directory of it is compared with the directory on disk at the same
/// path, which is entered only when it is a real directory there. Directories are opened from `dest`'s
/// descriptor without following symlinks and entries removed through their directory's descriptor
/// ([`crate::restore::at`]), so a directory swapped for a symlink during the walk is never entered.
struct DeleteAbsent {
    dest: TargetDir,
    removed: u64,
    /// The repository's path relative to `dest`, when it lies below it: never removed.
    keep: Option<std::path::PathBuf>,
}

impl walk::Visitor for DeleteAbsent {
    fn tree(&mut self, _: &Id, at: Place, tree: &Tree) -> Result<()> {
        let shown = self.dest.display(at.as_path());
        let dir = self
            .dest
            .dir(at.as_path())
            .map_err(|e| Error::io(&shown, e))?;
        for name in list_dir(dir.as_fd()).map_err(|e| Error::io(&shown, e))? {
            if tree.get(name.as_bytes()).is_some() {
                continue;
            }
            let rel = at
                .as_path()
                .join(std::ffi::OsStr::from_bytes(name.as_bytes()));
            if self.keep.as_ref().is_some_and(|k| k.starts_with(&rel)) {
                continue;
            }
            remove_at(
                dir.as_fd(),
                &name,
                &shown.join(std::ffi::OsStr::from_bytes(name.as_bytes())),
            )?;
            self.removed += 1;
        }
        Ok(())
    }

    fn entry(&mut self, at: Place, node: &Node) -> Result<Step> {
        if !matches!(node.kind, NodeKind::Dir { .. }) {
            return Ok(Step::Skip);
        }
        let path = self.dest.display(at.as_path());
        // Not followed: a symlink where the snapshot has a directory is left alone, never entered.
        let (dir, name) = match self.dest.parent(at.as_path()) {
            Ok(p) => p,
            // The parent is not a real directory (any more): nothing to enter.
            Err(e) if is_not_there(&e) => return Ok(Step::Skip),
            Err(e) => return Err(Error::io(&path, e)),
        };
        match lstat_at(dir.as_fd(), &name) {
            Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(Step::Descend),
            Ok(_) => Ok(Step::Skip),
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}

/// A path that leads nowhere, or through something that is not a directory.
fn is_not_there(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
    )
}
