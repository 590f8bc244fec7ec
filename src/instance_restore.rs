//! Restoring an instance: the one implementation under `cairn instance restore` and the server's restore
//! jobs.
//!
//! It picks the snapshot (an id, the newest at or before a time, or the newest holding what is restored),
//! checks everything that can be checked before anything changes (the snapshot belongs to the instance; an
//! in-place restore's paths resolve to what was backed up, see [`plan_in_place`]), then, for an in-place
//! restore, takes a safety snapshot (tagged [`crate::gc::SAFETY_TAG`]) of the live instance before anything
//! is replaced. Any failure after the safety snapshot names it, with the command that returns to it.
//!
//! Invariant: an in-place restore replaces no live file that its safety snapshot does not hold. A safety
//! snapshot that fails stops the restore; one that is partial (files it could not read) stops it when the
//! restore would replace one of those files ([`unsaved_by_safety`]), or with `--delete`, before anything
//! is written.
//!
//! An in-place restore holds the instance's run lock ([`crate::lock::acquire_instance`]) throughout, so no
//! scheduled backup or other restore of the instance runs in between; one held elsewhere fails it as
//! [`Error::Locked`] before anything is done.
//!
//! Progress goes through the caller's [`Progress`] (steps, files, bytes); its cancellation stops the file
//! restore between batches.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backup::{MetadataHook, StreamSource};
use crate::error::{Error, Result};
use crate::instance::{self, InstanceConfig};
use crate::latest;
use crate::postgres::PgRestoreReport;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore::{self, RestoreOptions};
use crate::runner;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind};
use crate::Id;

/// The database half of an instance backup: a pg_dump stream from an exported snapshot (`None` for an
/// instance without a database).
pub fn db_stream(cfg: &InstanceConfig) -> Result<Option<(StreamSource, MetadataHook)>> {
    match &cfg.pg {
        None => Ok(None),
        Some(db) => {
            let conn = crate::postgres::PgConn::new(cfg.pg_conn.as_deref())?;
            crate::postgres::dump_source(&conn, db).map(Some)
        }
    }
}

/// What to restore, and where.
#[derive(Debug, Default, Clone)]
pub struct RestoreRequest {
    /// A snapshot id (or prefix, or `latest`); `None` with `at`: the newest at or before it; neither: the
    /// newest holding what is restored.
    pub snapshot: Option<String>,
    pub at: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Restore the files into this directory.
    pub target: Option<PathBuf>,
    /// Restore the database into this database.
    pub pg_target: Option<String>,
    /// Replace the live instance: its paths and its database (a safety snapshot is taken first).
    pub in_place: bool,
    /// Replace existing files under `target`.
    pub overwrite: bool,
    /// Remove files absent from the snapshot (under `target`, or the live trees in place).
    pub delete: bool,
    /// Restore over an existing `pg_target` database.
    pub replace: bool,
    pub owner_acl: bool,
    /// Overrides the instance's connection string for the database restore.
    pub pg_conn: Option<String>,
}

/// What a restore did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RestoreOutcome {
    pub snapshot_id: String,
    /// The snapshot of the live instance taken before an in-place restore.
    pub safety_snapshot_id: Option<String>,
    /// Where the files went: `target`, or each live path of an in-place restore.
    pub restored_to: Vec<PathBuf>,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub deleted: Option<u64>,
    pub database: Option<PgRestoreReport>,
}

/// Restores instance `name` as `req` asks (see the module docs for the order of things).
pub fn restore_instance(
    repo: &Repository,
    name: &str,
    req: RestoreRequest,
    progress: &Progress,
) -> Result<RestoreOutcome> {
    // An in-place restore is a run of the instance: its safety snapshot and the restore must not interleave
    // with a scheduled backup of it (which would snapshot a half-restored instance), nor with another
    // restore. Taken first: a busy instance fails before anything else is done.
    let _run = if req.in_place {
        Some(crate::lock::acquire_instance(
            repo.backend(),
            name,
            "instance restore --in-place",
        )?)
    } else {
        None
    };
    let _lock = crate::lock::acquire_reader_on(repo, "restore")?;
    let mut cfg = instance::load(repo, name)?;
    // pg_conn serves the whole restore: the safety dump of an in-place restore and the restore itself.
    if let Some(c) = &req.pg_conn {
        cfg.pg_conn = Some(c.clone());
        cfg.check_stored_conn()?;
    }
    let (id, snap) = pick_snapshot(repo, &cfg, &req)?;
    check_request(&req)?;
    if req.delete && snap.partial {
        return Err(partial_delete(&format!("snapshot {}", id.short())));
    }
    // Checked before the safety snapshot: a refusal changes nothing at all.
    let in_place_files = if req.in_place {
        plan_in_place(repo, &id, &snap, &cfg)?
    } else {
        Vec::new()
    };
    let mut out = RestoreOutcome {
        snapshot_id: id.to_hex(),
        ..RestoreOutcome::default()
    };
    let mut safety_hint = String::new();
    if req.in_place {
        progress.step("safety snapshot");
        let safety = runner::backup_instance_tagged(
            repo,
            &cfg,
            None,
            &db_stream,
            progress.clone(),
            vec![crate::gc::SAFETY_TAG.into()],
        )?;
        progress.println(&format!(
            "cairn: safety snapshot {} of {name} taken before restoring in place",
            safety.snapshot_id.to_hex()
        ));
        safety_hint = format!(
            "; to return to the state before this restore run: cairn instance restore {name} {} --in-place",
            safety.snapshot_id.short()
        );
        out.safety_snapshot_id = Some(safety.snapshot_id.to_hex());
        if req.delete && safety.snapshot.partial {
            // Files the safety snapshot could not read would be removed with no copy anywhere.
            return Err(partial_delete(&format!(
                "the safety snapshot {} of the live files",
                safety.snapshot_id.short()
            )));
        }
        if safety.snapshot.partial {
            let unsaved = unsaved_by_safety(repo, &safety.snapshot, &in_place_files, 5)?;
            if !unsaved.is_empty() {
                return Err(unsaved_overwrite(&safety.snapshot_id, &unsaved));
            }
        }
    }
    let with_hint = |e: Error| e.with_note(&safety_hint);
    if let (Some(dir), Some(root)) = (&req.target, snap.tree) {
        progress.step("restoring files");
        progress.set_total(snap.summary.bytes_total);
        let opts = RestoreOptions {
            target: dir.clone(),
            include: Vec::new(),
            overwrite: req.overwrite,
            sparse: false,
            progress: progress.clone(),
        };
        let summary = restore::restore(repo, &snap, &opts)?;
        out.files = Some(summary.files);
        out.bytes = Some(summary.bytes);
        if req.delete {
            out.deleted = Some(crate::delete_absent::delete_absent(repo, &root, dir)?);
        }
        out.restored_to.push(dir.clone());
    }
    if !in_place_files.is_empty() {
        progress.step("restoring files in place");
        progress.set_total(snap.summary.bytes_total);
        let (mut files, mut bytes, mut deleted) = (0, 0, 0);
        for t in &in_place_files {
            let summary = restore_in_place(repo, &snap, t, progress).map_err(with_hint)?;
            files += summary.files;
            bytes += summary.bytes;
            if let (true, NodeKind::Dir { subtree }) = (req.delete, &t.entry.kind) {
                deleted += crate::delete_absent::delete_absent(repo, subtree, &t.dest)
                    .map_err(with_hint)?;
            }
            out.restored_to.push(t.dest.clone());
        }
        out.files = Some(files);
        out.bytes = Some(bytes);
        if req.delete {
            out.deleted = Some(deleted);
        }
    }
    let db_to = req
        .pg_target
        .clone()
        .or(if req.in_place { cfg.pg.clone() } else { None });
    if let Some(db) = db_to {
        progress.step("restoring the database");
        let conn = crate::postgres::PgConn::new(cfg.pg_conn.as_deref()).map_err(with_hint)?;
        let opts = crate::postgres::PgRestoreOptions {
            database: db,
            replace: req.in_place || req.replace,
            owner_acl: req.owner_acl,
            instance: Some(name.to_string()),
        };
        let report = crate::postgres::restore_database(repo, &snap, &conn, &opts, &mut |_| {})
            .map_err(with_hint)?;
        progress.rows_verified(u64::try_from(report.rows_verified).unwrap_or(0));
        out.database = Some(report);
    }
    Ok(out)
}

/// The snapshot to restore: by id, the newest at or before `at`, or the newest holding what is restored
/// (a newer one holding only the database must not turn a files restore into a restore of nothing).
fn pick_snapshot(
    repo: &Repository,
    cfg: &InstanceConfig,
    req: &RestoreRequest,
) -> Result<(Id, Snapshot)> {
    let name = cfg.name.as_str();
    let files = req.target.is_some() || (req.in_place && !cfg.paths.is_empty());
    let database = req.pg_target.is_some() || (req.in_place && cfg.pg.is_some());
    let (id, snap) = match (&req.snapshot, req.at) {
        (Some(s), _) => repo.resolve_snapshot(s, Some(name))?,
        (None, Some(at)) => {
            let mut found = None;
            for (id, s) in repo.snapshots()?.into_iter().rev() {
                if s.instance.as_deref() == Some(name)
                    && s.time <= at
                    && latest::holds_for_restore(repo, &s, files, &[], database)?
                {
                    found = Some((id, s));
                    break;
                }
            }
            found.ok_or_else(|| {
                Error::NotFound(format!(
                    "instance {name} has no snapshot at or before {at} holding what is restored"
                ))
            })?
        }
        (None, None) => latest::for_restore(repo, "latest", Some(name), files, &[], database)?,
    };
    if snap.instance.as_deref() != Some(name) {
        return Err(Error::Invalid(format!(
            "snapshot {} does not belong to instance {name}",
            id.short()
        )));
    }
    Ok((id, snap))
}

/// Refuses a request that names no destination, or options that apply to none of its destinations.
/// `--delete` refused because `what` is partial: files that could not be read when it was taken are
/// absent from it, so `--delete` would remove them, though they existed then and have no copy.
fn partial_delete(what: &str) -> Error {
    Error::Invalid(format!(
        "{what} is partial (some files could not be read when it was taken): --delete would remove those \
         files, which no snapshot holds; nothing was changed. Restore without --delete"
    ))
}

fn check_request(req: &RestoreRequest) -> Result<()> {
    if req.target.is_none() && req.pg_target.is_none() && !req.in_place {
        return Err(Error::Invalid(
            "give --target DIR, --pg-target DB, or --in-place".into(),
        ));
    }
    if req.delete && req.target.is_none() && !req.in_place {
        return Err(Error::Usage(
            "--delete needs --target DIR or --in-place".into(),
        ));
    }
    if req.owner_acl && req.pg_target.is_none() && !req.in_place {
        return Err(Error::Usage(
            "--owner-acl needs --pg-target DB or --in-place".into(),
        ));
    }
    Ok(())
}

/// One of the instance's paths in an in-place restore: the snapshot's entry for it and where it goes.
struct InPlaceTarget {
    /// The path as the instance names it.
    named: PathBuf,
    /// The snapshot's root-tree entry holding it.
    entry: Node,
    /// What `named` resolves to now (checked to be what was backed up).
    dest: PathBuf,
}

/// Maps each of the instance's paths to the snapshot entry that holds it and to the directory it resolves
/// to now. An entry matches when the snapshot recorded the path as the instance names it and it resolves
/// to what it resolved to at backup time, or (snapshots taken before paths were recorded as named) when the
/// snapshot recorded the very path it resolves to now. Anything else is refused.
fn plan_in_place(
    repo: &Repository,
    id: &Id,
    snap: &Snapshot,
    cfg: &InstanceConfig,
) -> Result<Vec<InPlaceTarget>> {
    let refuse = |msg: String| Error::Invalid(format!("{msg}; nothing was changed"));
    let root = match snap.tree {
        Some(t) => repo.read_tree(&t)?,
        None if cfg.paths.is_empty() => return Ok(Vec::new()),
        None => return Err(refuse(format!("snapshot {} holds no files", id.short()))),
    };
    let resolved_at_backup = |recorded: &str| -> String {
        snap.metadata
            .as_ref()
            .and_then(|m| m.get(crate::backup::RESOLVED_PATHS_KEY))
            .and_then(|m| m.get(recorded))
            .and_then(|v| v.as_str())
            .unwrap_or(recorded)
            .to_string()
    };
    let mut out = Vec::new();
    for named in &cfg.paths {
        let dest = resolve_now(named).map_err(|e| refuse(e.to_string()))?;
        let (named_s, dest_s) = (named.to_string_lossy(), dest.to_string_lossy());
        let recorded = match snap.paths.iter().find(|p| **p == named_s) {
            Some(p) if resolved_at_backup(p) != dest_s => {
                return Err(refuse(format!(
                    "{} now resolves to {}, but snapshot {} backed it up from {} (the link was changed?): \
                     point it back, or restore with --target DIR",
                    named.display(),
                    dest.display(),
                    id.short(),
                    resolved_at_backup(p)
                )))
            }
            Some(p) => p,
            None => snap
                .paths
                .iter()
                .find(|p| resolved_at_backup(p) == dest_s)
                .ok_or_else(|| {
                    refuse(format!(
                        "snapshot {} holds no files for {} (resolving to {}); it holds: {}",
                        id.short(),
                        named.display(),
                        dest.display(),
                        snap.paths.join(", ")
                    ))
                })?,
        };
        let name = root_entry_name(Path::new(recorded));
        let entry = root.get(&name).cloned().ok_or_else(|| {
            Error::corrupt(
                format!("snapshot {}", id.short()),
                format!("no root entry for its path {recorded}"),
            )
        })?;
        out.push(InPlaceTarget {
            named: named.clone(),
            entry,
            dest,
        });
    }
    Ok(out)
}

/// The name of the snapshot root entry holding a backed-up path: its last component (`root` for `/`).
fn root_entry_name(path: &Path) -> Vec<u8> {
    path.file_name()
        .map(|n| n.as_encoded_bytes().to_vec())
        .unwrap_or_else(|| b"root".to_vec())
}

/// Up to `limit` live paths that the in-place restore of `targets` would replace although the (partial)
/// safety snapshot `safety` holds nothing at that path: the files it could not read. Walks the restored
/// entries beside the safety snapshot's (only where both are directories) and, for each restored entry the
/// safety snapshot lacks, asks whether the live path exists; one whose existence cannot be checked (a
/// directory it may not search) counts as existing.
fn unsaved_by_safety(
    repo: &Repository,
    safety: &Snapshot,
    targets: &[InPlaceTarget],
    limit: usize,
) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let saved_root = safety.tree.map(|t| repo.read_tree(&t)).transpose()?;
    let mut found = Vec::new();
    for t in targets {
        let saved = saved_root
            .as_ref()
            .and_then(|r| r.get(&root_entry_name(&t.named)).cloned());
        // Explicit stack: trees may be deep.
        let mut stack = vec![(t.entry.clone(), saved, t.dest.clone())];
        while let Some((restored, saved, live)) = stack.pop() {
            if found.len() >= limit {
                return Ok(found);
            }
            let Some(saved) = saved else {
                if may_exist(&live) {
                    found.push(live);
                }
                continue;
            };
            let (NodeKind::Dir { subtree }, NodeKind::Dir { subtree: saved_sub }) =
                (&restored.kind, &saved.kind)
            else {
                continue;
            };
            let saved_tree = repo.read_tree(saved_sub)?;
            for child in repo.read_tree(subtree)?.nodes {
                let saved_child = saved_tree.get(&child.name).cloned();
                let path = live.join(std::ffi::OsStr::from_bytes(&child.name));
                stack.push((child, saved_child, path));
            }
        }
    }
    Ok(found)
}

/// Whether something is at `path`, counting "cannot tell" (permission denied on the way) as yes.
fn may_exist(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// The refusal of an in-place restore that would replace live files its safety snapshot could not read.
fn unsaved_overwrite(safety: &Id, unsaved: &[PathBuf]) -> Error {
    let named: Vec<String> = unsaved.iter().map(|p| p.display().to_string()).collect();
    Error::Invalid(format!(
        "the safety snapshot {} of the live files is partial: it could not read what this restore would \
         replace ({}{}), which would then be lost with no copy anywhere; nothing was changed. Make them \
         readable and restore again, or restore with --target DIR",
        safety.short(),
        named.join(", "),
        if named.len() >= 5 { ", ..." } else { "" }
    ))
}

/// What `path` resolves to now: the canonical path when it exists, the canonical parent joined with its
/// name when it does not exist at all (it will be created); a symlink that leads nowhere is an error.
fn resolve_now(path: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => path.canonicalize().map_err(|e| {
            Error::Invalid(format!(
                "{}: does not resolve to an existing directory (a dangling symlink?): {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().and_then(|p| p.canonicalize().ok());
            Ok(match (parent, path.file_name()) {
                (Some(p), Some(n)) => p.join(n),
                _ => path.to_path_buf(),
            })
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Restores one planned path: a directory's contents go into `dest` itself (whatever its name), anything
/// else replaces `dest` when the names agree.
fn restore_in_place(
    repo: &Repository,
    snap: &Snapshot,
    t: &InPlaceTarget,
    progress: &Progress,
) -> Result<restore::RestoreSummary> {
    let (sub, target, include) = match &t.entry.kind {
        NodeKind::Dir { subtree } => (Some(*subtree), t.dest.clone(), Vec::new()),
        _ if t.dest.file_name().map(|n| n.as_encoded_bytes()) == Some(&t.entry.name[..]) => {
            let parent = t.dest.parent().unwrap_or(Path::new("/")).to_path_buf();
            let name = std::ffi::OsStr::from_bytes(&t.entry.name);
            (snap.tree, parent, vec![PathBuf::from(name)])
        }
        _ => {
            return Err(Error::Invalid(format!(
                "{} resolves to {}, whose name differs from the backed-up file's: restore it with --target DIR",
                t.named.display(),
                t.dest.display()
            )))
        }
    };
    let view = Snapshot {
        tree: sub,
        ..snap.clone()
    };
    restore::restore(
        repo,
        &view,
        &RestoreOptions {
            target,
            include,
            overwrite: true,
            sparse: false,
            progress: progress.clone(),
        },
    )
}
