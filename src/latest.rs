//! What `latest` means for each command that reads a snapshot: the newest snapshot that holds what the
//! command was asked for (a file tree, given paths, a stream, a database dump), so that a newer snapshot
//! holding only a stream does not make `restore latest` fail. An id is always taken as given.
//!
//! "Does not hold it" is only ever a path or stream that is not there; any other failure while looking
//! (an unreadable tree, a damaged blob) stops the command instead of quietly picking an older snapshot.

use std::path::{Path, PathBuf};

use crate::export::ExportFormat;
use crate::snapshot::Snapshot;
use crate::{Error, Id, Repository, Result};

/// True if the snapshot's file tree has `path`; false if it has no tree or not that path.
fn tree_holds(repo: &Repository, snap: &Snapshot, path: &Path) -> Result<bool> {
    let Some(root) = snap.tree else {
        return Ok(false);
    };
    match crate::restore::find_node(repo, &root, path) {
        Ok(_) => Ok(true),
        // find_node's own "no such path / not a directory in the snapshot"; a blob missing from the index
        // is damage, not absence, and is reported.
        Err(Error::NotFound(m)) if m.ends_with("in the snapshot") => Ok(false),
        Err(e) => Err(e),
    }
}

/// True if the snapshot holds a database dump stream (what `--pg-target` and `odoo-zip` need).
fn holds_dump(snap: &Snapshot) -> bool {
    !snap.dump_stream_names().is_empty()
}

/// `restore`: a file tree (with every `--path`) when files are restored, a dump when a database is.
pub fn for_restore(
    repo: &Repository,
    spec: &str,
    instance: Option<&str>,
    files: bool,
    paths: &[PathBuf],
    database: bool,
) -> Result<(Id, Snapshot)> {
    let mut what = Vec::new();
    if files {
        what.push(if paths.is_empty() {
            "files".to_string()
        } else {
            let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            shown.join(", ")
        });
    }
    if database {
        what.push("a database dump".into());
    }
    let what = what.join(" and ");
    repo.resolve_snapshot_holding(spec, instance, Some(&what), &mut |s| {
        holds_for_restore(repo, s, files, paths, database)
    })
}

/// Whether a snapshot holds what a restore asks for: a file tree with every path in `paths` when `files`,
/// a database dump when `database`.
pub fn holds_for_restore(
    repo: &Repository,
    s: &Snapshot,
    files: bool,
    paths: &[PathBuf],
    database: bool,
) -> Result<bool> {
    if database && !holds_dump(s) {
        return Ok(false);
    }
    if !files {
        return Ok(true);
    }
    if s.tree.is_none() {
        return Ok(false);
    }
    for p in paths {
        if !tree_holds(repo, s, p)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `dump NAME` and `ls PATH`: a stream of that name, or that path in the file tree.
pub fn for_name(
    repo: &Repository,
    spec: &str,
    instance: Option<&str>,
    name: impl AsRef<Path>,
) -> Result<(Id, Snapshot)> {
    let name = name.as_ref();
    let shown = name.display().to_string();
    repo.resolve_snapshot_holding(spec, instance, Some(&shown), &mut |s| {
        Ok(s.streams.iter().any(|st| Path::new(&st.name) == name) || tree_holds(repo, s, name)?)
    })
}

/// `export`: any snapshot for zip and tar; one with a database dump for the Odoo formats.
pub fn for_export(
    repo: &Repository,
    spec: &str,
    instance: Option<&str>,
    format: ExportFormat,
) -> Result<(Id, Snapshot)> {
    if format.is_odoo() {
        repo.resolve_snapshot_holding(spec, instance, Some("a database dump"), &mut |s| {
            Ok(holds_dump(s))
        })
    } else {
        repo.resolve_snapshot(spec, instance)
    }
}
