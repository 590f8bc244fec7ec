//! `repair index`: rebuilds the SQLite index from the pack trailers and snapshot files alone.
//!
//! The new index is built in a separate file and swapped in with a rename, so a crash during the rebuild
//! leaves the old index (or none) in place and the rebuild can simply run again. Damaged packs and snapshot
//! files are skipped and reported, never deleted: their data may still be salvageable by hand.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::hashing::Id;
use crate::index::Index;
use crate::lock;
use crate::pack;
use crate::repo::{list_pack_files, INDEX_FILE};
use crate::snapshot::Snapshot;

/// What a rebuild found.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub packs: u64,
    pub blobs: u64,
    pub snapshots: u64,
    /// Packs and snapshot files that could not be read, with the reason.
    pub skipped: Vec<String>,
}

/// Rebuilds `<root>/index.sqlite` under an exclusive lock.
pub fn repair_index(root: &Path) -> Result<RepairReport> {
    if !root.join("config").is_file() {
        return Err(Error::NotARepository(root.to_path_buf()));
    }
    crate::config::Config::load(&root.join("config"))?;
    let _lock = lock::acquire(root, true, "repair index")?;
    let new_path = root.join("index.sqlite.rebuild");
    remove_db_files(&new_path)?;
    let mut report = RepairReport::default();
    {
        let mut index = Index::open(&new_path)?;
        for (id, _) in list_pack_files(&root.join("packs"))? {
            let hex = id.to_hex();
            let path = root.join("packs").join(&hex[..2]).join(&hex);
            let len = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len();
            match pack::read_trailer(&path) {
                Ok(entries) => {
                    report.packs += 1;
                    report.blobs += entries.len() as u64;
                    index.add_pack(id, len, &entries)?;
                }
                Err(e) => report.skipped.push(format!("pack {id}: {e}")),
            }
        }
        let snap_dir = root.join("snapshots");
        for e in std::fs::read_dir(&snap_dir).map_err(|e| Error::io(&snap_dir, e))? {
            let e = e.map_err(|e| Error::io(&snap_dir, e))?;
            let Some(id) = e.file_name().to_str().and_then(Id::from_hex) else {
                continue;
            };
            match Snapshot::load(&snap_dir, &id) {
                Ok(s) => {
                    index.add_snapshot(&s, &id.to_hex())?;
                    report.snapshots += 1;
                }
                Err(err) => report.skipped.push(format!("snapshot {id}: {err}")),
            }
        }
        // Fold the write-ahead log into the file so the rename below moves one complete database.
        index.raw().pragma_update(None, "journal_mode", "DELETE")?;
    }
    let live = root.join(INDEX_FILE);
    // The old log must go before the rename: SQLite would otherwise replay it onto the new database.
    remove_db_files_except_main(&live)?;
    std::fs::rename(&new_path, &live).map_err(|e| Error::io(&live, e))?;
    fsutil::sync_dir(root)?;
    Ok(report)
}

fn remove_db_files(main: &Path) -> Result<()> {
    fsutil::remove_durable(main)?;
    remove_db_files_except_main(main)
}

fn remove_db_files_except_main(main: &Path) -> Result<()> {
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = main.as_os_str().to_owned();
        p.push(suffix);
        fsutil::remove_durable(Path::new(&p))?;
    }
    Ok(())
}

/// What `repair snapshots` did to one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct RepairedSnapshot {
    pub old_id: String,
    /// The rewritten snapshot, or `None` when it was forgotten.
    pub new_id: Option<String>,
    /// Paths (or `stream:NAME`) that were dropped because their data is missing or damaged.
    pub dropped: Vec<String>,
}

/// Verifies blobs once each; remembers the verdict.
struct BlobHealth<'r> {
    repo: &'r crate::repo::Repository,
    seen: std::collections::HashMap<Id, bool>,
}

impl BlobHealth<'_> {
    fn ok(&mut self, id: &Id) -> bool {
        if let Some(v) = self.seen.get(id) {
            return *v;
        }
        let v = self.repo.read_blob(id).is_ok();
        self.seen.insert(*id, v);
        v
    }
}

/// Rewrites every snapshot that needs a missing or damaged blob: affected files (and unreadable
/// directories) are dropped, the rest is kept, and the new snapshot is marked partial. With `forget_damaged`
/// such snapshots are removed instead. Runs under the exclusive lock.
pub fn repair_snapshots(
    repo: &crate::repo::Repository,
    forget_damaged: bool,
) -> Result<Vec<RepairedSnapshot>> {
    let _lock = lock::acquire(repo.root(), true, "repair snapshots")?;
    let mut health = BlobHealth {
        repo,
        seen: Default::default(),
    };
    crate::pack_writer::PackWriter::scope(repo, |writer| {
        let mut out = Vec::new();
        for (id, snap) in repo.snapshots()? {
            let mut dropped = Vec::new();
            let tree = match snap.tree {
                Some(t) => rebuild(repo, writer, &mut health, t, "", &mut dropped)?,
                None => None,
            };
            let stream_tree = match snap.stream_tree {
                Some(t) => rebuild(repo, writer, &mut health, t, "stream:", &mut dropped)?,
                None => None,
            };
            if dropped.is_empty() {
                continue;
            }
            if forget_damaged {
                repo.remove_snapshot(&id)?;
                out.push(RepairedSnapshot {
                    old_id: id.to_hex(),
                    new_id: None,
                    dropped,
                });
                continue;
            }
            writer.flush()?;
            let mut new = snap.clone();
            new.tree = tree;
            new.stream_tree = stream_tree;
            let lost: Vec<String> = dropped
                .iter()
                .filter_map(|d| d.strip_prefix("stream:").map(str::to_string))
                .collect();
            new.streams.retain(|s| !lost.contains(&s.name));
            new.partial = true;
            new.parent = Some(id.to_hex());
            if !new.tags.iter().any(|t| t == "repaired") {
                new.tags.push("repaired".into());
            }
            let note = serde_json::json!({ "repaired_from": id.to_hex(), "dropped": dropped });
            match &mut new.metadata {
                Some(serde_json::Value::Object(m)) => {
                    m.insert("repair".into(), note);
                }
                other => *other = Some(serde_json::json!({ "repair": note })),
            }
            // The new snapshot is durable before the old one goes.
            let new_id = repo.save_snapshot(&new)?;
            repo.remove_snapshot(&id)?;
            out.push(RepairedSnapshot {
                old_id: id.to_hex(),
                new_id: Some(new_id.to_hex()),
                dropped,
            });
        }
        Ok(out)
    })
}

/// Rebuilds the tree `t` without entries whose data is damaged; `None` if the tree itself is unreadable.
fn rebuild(
    repo: &crate::repo::Repository,
    writer: &crate::pack_writer::PackWriter,
    health: &mut BlobHealth,
    t: Id,
    path: &str,
    dropped: &mut Vec<String>,
) -> Result<Option<Id>> {
    use crate::tree::{NodeKind, Tree};
    let tree = match repo.read_tree(&t) {
        Ok(tree) => tree,
        Err(_) => {
            dropped.push(if path.is_empty() {
                "/".into()
            } else {
                path.to_string()
            });
            return Ok(None);
        }
    };
    let mut nodes = Vec::with_capacity(tree.nodes.len());
    let mut changed = false;
    for mut node in tree.nodes {
        let name = String::from_utf8_lossy(&node.name).into_owned();
        let p = if path.is_empty() || path.ends_with(':') {
            format!("{path}{name}")
        } else {
            format!("{path}/{name}")
        };
        match &mut node.kind {
            NodeKind::File { chunks, .. } if !chunks.iter().all(|c| health.ok(c)) => {
                dropped.push(p);
                changed = true;
                continue;
            }
            NodeKind::Dir { subtree } => {
                match rebuild(repo, writer, health, *subtree, &p, dropped)? {
                    Some(new) => {
                        changed |= new != *subtree;
                        *subtree = new;
                    }
                    None => {
                        changed = true;
                        continue;
                    }
                }
            }
            _ => {}
        }
        nodes.push(node);
    }
    if !changed {
        return Ok(Some(t));
    }
    let (bytes, id) = Tree::new(nodes)?.encode()?;
    writer.save_with_id(crate::pack::BlobKind::Tree, id, &bytes)?;
    Ok(Some(id))
}
