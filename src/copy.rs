//! `cairn copy`: snapshots from one repository into another (restic's `copy`), deduplicating against the
//! target, so that a local repository can be replicated to object storage (or back).
//!
//! Between repositories that share their keys (both plaintext, or made with `init --from-repo`) a snapshot
//! keeps its id: its object's bytes are copied as they are. Its data is copied blob by blob through the
//! normal read path of the source ([`Repository::read_blob`]: decrypted, decompressed and verified against
//! its id) and the normal pack writer of the target ([`PackWriter`]: compressed at the target's levels,
//! sealed, packed, indexed, listed by an index object), never as raw pack bytes, so repositories with
//! different settings exchange data correctly. Only blobs the target lacks are read from the source at all.
//!
//! Between repositories with different keys the ids of one mean nothing in the other: [`rewrite`] re-chunks
//! the content into the target and saves the snapshot anew under a new id, recording the id it was first
//! taken under (metadata `original`). Which snapshots the target holds already is decided by that origin
//! (a snapshot's `original`, else its own id) in both cases, so a copy back and forth copies nothing twice.
//!
//! Order and crash safety follow the target's write ordering (format-spec section 10): for each snapshot,
//! every data chunk is saved before the trees naming it, subtrees before their parents, and the writer is
//! flushed (packs durable, indexed, listed) before the snapshot object is written. A copy stopped at any
//! point leaves at worst packs no snapshot uses yet; running it again copies what is missing (the durable
//! blobs deduplicate) and writes the snapshots. Snapshots already in the target (by origin) are skipped, so
//! a second run copies nothing.
//!
//! Memory: the walk saves what it finds in bounded batches ([`PENDING_CHUNKS`], [`PENDING_TREE_BYTES`]),
//! and the set of trees a run has walked is a [`Marks`] set (moved to disk as it grows), so a copy's memory
//! grows neither with the number of snapshots copied nor with the number of files in one (a single file's
//! chunk list is held whole, as its tree holds it).
//!
//! Locks: the source takes a reader's shared lock (no prune deletes a pack under the copy), the target the
//! shared lock a backup takes.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::ObjectKind;
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::instance_store::State;
use crate::lock;
use crate::marks::Marks;
use crate::pack::BlobKind;
use crate::pack_writer::PackWriter;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind, Tree};
use crate::walk;

mod rewrite;

/// What to copy.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Snapshots of the source (ids, prefixes or `latest`); empty means every snapshot.
    pub snapshots: Vec<String>,
    /// Copy the instance configurations too.
    pub instances: bool,
}

/// One snapshot copied.
#[derive(Debug, Clone, Serialize)]
pub struct CopiedSnapshot {
    /// The snapshot's id in the source.
    pub id: String,
    /// Its id in the target: the same, unless the keys differ and it was rewritten.
    pub target_id: String,
    pub time: String,
    pub instance: Option<String>,
    /// Blobs stored in the target for this snapshot.
    pub blobs_copied: u64,
    /// Blobs the target had already.
    pub blobs_present: u64,
}

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    pub copied: Vec<CopiedSnapshot>,
    /// Snapshots asked for that the target holds already (by id).
    pub already_present: Vec<String>,
    pub blobs_copied: u64,
    pub blobs_present: u64,
    /// Bytes stored in the target's packs (compressed).
    pub bytes_stored: u64,
    pub instances_copied: Vec<String>,
    pub instances_unchanged: Vec<String>,
}

/// Copies the selected snapshots of `src` that `dst` lacks, oldest first, and with
/// [`CopyOptions::instances`] the instance configurations.
pub fn copy(src: &Repository, dst: &Repository, opts: &CopyOptions) -> Result<CopyReport> {
    dst.require_writable()?;
    let rewrite = !crate::crypto::same_keys(src.crypto(), dst.crypto());
    let _src_lock = lock::acquire_reader_on(src, "copy (source)")?;
    let _dst_lock = lock::acquire_on(dst, false, "copy")?;
    let wanted = select(src, &opts.snapshots)?;
    let present: HashSet<Id> = dst.snapshot_objects()?.into_iter().collect();
    // The target's snapshots by origin: what it holds of the source, copied as is or rewritten.
    let mut held: HashMap<Id, Id> = dst
        .snapshots()?
        .iter()
        .map(|(id, s)| (origin(id, s), *id))
        .collect();
    // The source's snapshots' origins, to find a rewritten snapshot's parent in the target.
    let src_origins: HashMap<String, Id> = if rewrite {
        src.snapshots()?
            .iter()
            .map(|(id, s)| (id.to_hex(), origin(id, s)))
            .collect()
    } else {
        HashMap::new()
    };
    let mut report = CopyReport::default();
    // Trees this run has walked (moved to the target's index connection as the set grows).
    let mut seen = Marks::new(dst, "copy_seen")?;
    let mut rewritten = rewrite::Rewritten::new(dst)?;
    let pool = copy_pool(src)?;
    for (id, snap) in wanted {
        if present.contains(&id) || held.contains_key(&origin(&id, &snap)) {
            report.already_present.push(id.to_hex());
            continue;
        }
        crate::interrupt::check()?;
        let one = if rewrite {
            let parent = snap
                .parent
                .as_ref()
                .and_then(|p| src_origins.get(p))
                .and_then(|o| held.get(o))
                .copied();
            let out = rewrite::snapshot(src, dst, &id, &snap, parent, &mut rewritten, &pool)?;
            (
                copied_snapshot(&id, out.id, &snap, out.blobs_copied, out.blobs_present),
                out.bytes_stored,
            )
        } else {
            copy_snapshot(src, dst, &id, &snap, &mut seen, &pool)?
        };
        let target = Id::from_hex(&one.0.target_id).unwrap_or(id);
        held.insert(origin(&id, &snap), target);
        report.blobs_copied += one.0.blobs_copied;
        report.blobs_present += one.0.blobs_present;
        report.bytes_stored += one.1;
        report.copied.push(one.0);
    }
    if opts.instances {
        copy_instances(src, dst, &mut report)?;
    }
    Ok(report)
}

/// The id a snapshot was first taken under: its metadata's `original` (set when a copy rewrote it), else
/// its own id.
fn origin(id: &Id, snap: &Snapshot) -> Id {
    snap.metadata
        .as_ref()
        .and_then(|m| m.get("original"))
        .and_then(|v| v.as_str())
        .and_then(Id::from_hex)
        .unwrap_or(*id)
}

/// Threads that read from the source in parallel (an object store answers many requests at once); the
/// target's writer compresses and seals in the same threads and writes sealed packs on its own.
fn copy_pool(src: &Repository) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(src.backend().read_plan().parallel.clamp(1, 16))
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start copy threads: {e}")))
}

/// The report of one snapshot copied.
fn copied_snapshot(
    id: &Id,
    target: Id,
    snap: &Snapshot,
    blobs_copied: u64,
    blobs_present: u64,
) -> CopiedSnapshot {
    CopiedSnapshot {
        id: id.to_hex(),
        target_id: target.to_hex(),
        time: snap.time.to_rfc3339(),
        instance: snap.instance.clone(),
        blobs_copied,
        blobs_present,
    }
}

/// The snapshots named by `specs` (every snapshot when empty), oldest first, each once.
fn select(src: &Repository, specs: &[String]) -> Result<Vec<(Id, Snapshot)>> {
    if specs.is_empty() {
        return src.snapshots();
    }
    let mut out: Vec<(Id, Snapshot)> = Vec::new();
    for spec in specs {
        let (id, snap) = src.resolve_snapshot(spec, None).map_err(|e| match e {
            Error::NotFound(m) => Error::NotFound(format!("{m} in {}", src.location())),
            other => other,
        })?;
        if !out.iter().any(|(i, _)| *i == id) {
            out.push((id, snap));
        }
    }
    out.sort_by_key(|(_, s)| s.time);
    Ok(out)
}

/// The snapshot object's bytes as stored (verified against its id), so that the copy keeps the id.
fn snapshot_bytes(src: &Repository, id: &Id) -> Result<Vec<u8>> {
    let bytes = crate::object_io::get(src.backend().as_ref(), ObjectKind::Snapshot, &id.to_hex())?;
    Snapshot::decode(&bytes, id)?;
    Ok(bytes)
}

/// Data chunks and tree bytes the walk holds before saving them, at most: memory stays bounded whatever the
/// size of a snapshot.
const PENDING_CHUNKS: usize = 4096;
const PENDING_TREE_BYTES: usize = 8 << 20;

/// Copies one snapshot's missing blobs, then its object; returns what it did and the bytes stored. `seen`
/// holds every tree this run has walked (with everything below it): those of earlier snapshots are durable
/// in the target (their snapshot was saved, or the run would have ended), those of this one are saved
/// before it is. Chunks are not kept in a set: the writer knows which ones the target has.
fn copy_snapshot(
    src: &Repository,
    dst: &Repository,
    id: &Id,
    snap: &Snapshot,
    seen: &mut Marks,
    pool: &rayon::ThreadPool,
) -> Result<(CopiedSnapshot, u64)> {
    let bytes = snapshot_bytes(src, id)?;
    let levels = [
        (snap.tree, dst.config().compression_level),
        (snap.stream_tree, dst.config().stream_level()),
    ];
    let present = AtomicU64::new(0);
    let (copied, stored) = PackWriter::scope(dst, |w| {
        let mut copier = Copier {
            src,
            dst,
            w,
            pool,
            present: &present,
            pending: Pending::default(),
        };
        for (root, level) in levels {
            if let Some(root) = root {
                copier.walk(root, level, seen)?;
            }
        }
        copier.save_pending()?;
        w.flush()?;
        Ok((
            w.stats.blobs_new.load(Ordering::Relaxed),
            w.stats.bytes_stored.load(Ordering::Relaxed),
        ))
    })?;
    dst.save_snapshot_encoded(snap, &bytes)?;
    Ok((
        copied_snapshot(id, *id, snap, copied, present.load(Ordering::Relaxed)),
        stored,
    ))
}

/// What the walk found to copy and has not saved yet: data chunks with the zstd level they are stored at,
/// and trees with their bytes in the order they must be saved (children first, as
/// [`walk::Visitor::tree_done`] gives them).
#[derive(Default)]
struct Pending {
    chunks: Vec<(Id, i32)>,
    /// The chunks above, each once per batch (a chunk met again in a later batch is found saved by the
    /// writer and counted present).
    chunk_ids: HashSet<Id>,
    trees: Vec<(Id, Vec<u8>)>,
    tree_bytes: usize,
}

/// Saves what one snapshot's walk finds into the target, a bounded batch at a time.
struct Copier<'a> {
    src: &'a Repository,
    dst: &'a Repository,
    w: &'a PackWriter<'a>,
    pool: &'a rayon::ThreadPool,
    present: &'a AtomicU64,
    pending: Pending,
}

impl Copier<'_> {
    /// Walks the tree `root` of the source (reading and verifying every tree) through the one tree walk,
    /// saving what the target lacks as it goes.
    fn walk(&mut self, root: Id, level: i32, seen: &mut Marks) -> Result<()> {
        let raw = RefCell::new(HashMap::new());
        let src = self.src;
        let source = walk::FnSource(|id: &Id| {
            let bytes = src.read_blob(id)?;
            let tree = Tree::decode(&bytes).map_err(|e| match e {
                Error::Corrupt { detail, .. } => Error::corrupt(format!("tree {id}"), detail),
                other => other,
            })?;
            raw.borrow_mut().insert(*id, bytes);
            Ok(tree)
        });
        let mut visitor = Collect {
            level,
            seen,
            copier: self,
            raw: &raw,
        };
        walk::walk(&source, &root, &mut visitor)
    }

    fn is_full(&self) -> bool {
        self.pending.chunks.len() >= PENDING_CHUNKS || self.pending.tree_bytes >= PENDING_TREE_BYTES
    }

    /// Saves the pending chunks the target lacks (read in parallel), then the pending trees in their order:
    /// every tree after everything it names (format-spec section 10, rule 3), since every chunk and subtree
    /// a tree names was found, and so is saved, before it.
    fn save_pending(&mut self) -> Result<()> {
        let Pending { chunks, trees, .. } = std::mem::take(&mut self.pending);
        let (w, src, present) = (self.w, self.src, self.present);
        self.pool.install(|| {
            chunks.par_iter().try_for_each(|(c, level)| {
                crate::interrupt::check()?;
                if !w.lacks(c)? {
                    present.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let raw = src.read_blob(c)?;
                w.save_at_level(BlobKind::Data, *c, &raw, *level)
                    .map(|_| ())
            })
        })?;
        for (t, raw) in &trees {
            if w.lacks(t)? {
                w.save_at_level(BlobKind::Tree, *t, raw, self.dst.config().compression_level)?;
            } else {
                present.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// The walk of one root: each tree this run has not met yet, and each data chunk its files name, go to the
/// copier's pending batch, trees after their children.
struct Collect<'a, 'c, 'm> {
    level: i32,
    seen: &'a mut Marks<'m>,
    copier: &'a mut Copier<'c>,
    /// The stored bytes of trees read but not yet done (the copy keeps a tree's bytes as they are): the
    /// trees on the path from the root to where the walk is.
    raw: &'a RefCell<HashMap<Id, Vec<u8>>>,
}

impl walk::Visitor for Collect<'_, '_, '_> {
    fn before_tree(&mut self, id: &Id, _at: walk::Place) -> Result<walk::Step> {
        self.seen.descend_once(id)
    }
    fn entry(&mut self, _at: walk::Place, node: &Node) -> Result<walk::Step> {
        if let NodeKind::File { chunks, .. } = &node.kind {
            for c in chunks {
                if self.copier.pending.chunk_ids.insert(*c) {
                    self.copier.pending.chunks.push((*c, self.level));
                    if self.copier.is_full() {
                        self.copier.save_pending()?;
                    }
                }
            }
        }
        Ok(walk::Step::Descend)
    }
    fn tree_done(&mut self, id: &Id, _at: walk::Place) -> Result<()> {
        let raw = self.raw.borrow_mut().remove(id);
        let raw = raw.ok_or_else(|| Error::Invalid(format!("copy: tree {id} was not read")))?;
        let pending = &mut self.copier.pending;
        pending.tree_bytes += raw.len();
        pending.trees.push((*id, raw));
        if self.copier.is_full() {
            self.copier.save_pending()?;
        }
        Ok(())
    }
}

/// Copies every instance configuration of the source that the target does not hold as it is (removed
/// instances are not removed from the target).
fn copy_instances(src: &Repository, dst: &Repository, report: &mut CopyReport) -> Result<()> {
    for (name, state) in crate::instance_store::current(src)? {
        let State::Live(cfg, _) = state else {
            continue;
        };
        match crate::instance::load_for_update(dst, &name) {
            Ok(have) if have == *cfg => report.instances_unchanged.push(name),
            _ => {
                crate::instance::save(dst, &cfg)?;
                report.instances_copied.push(name);
            }
        }
    }
    Ok(())
}
