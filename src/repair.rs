//! `repair index` and `repair snapshots`.
//!
//! `repair index` rebuilds the SQLite index from the pack trailers (ranged reads of the trailers only) and
//! snapshot files alone, and writes new index objects listing every readable pack, which supersede (and then
//! replace) all earlier ones. The new index is
//! built in a separate file and swapped in with a rename, so a crash during the rebuild leaves the old index
//! (or none) in place and the rebuild can simply run again. Damaged packs and snapshot files are skipped and
//! reported, never deleted: their data may still be salvageable by hand. The record of damaged copies is the
//! one thing packs cannot tell: it is carried over from the old index when that can be read.
//!
//! `repair snapshots` drops (or forgets) what depends on damaged data.
//!
//! Invariant of both: only verified damage ([`Error::is_damage`]: a hash mismatch, bad framing, a missing
//! object) is acted on. Any other read error (permission denied, EIO, too many open files) stops the repair
//! with that error before anything is changed: treating it as damage would drop intact data, and the next
//! `prune` would delete it.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::backend::{ObjectKind, RepoUrl};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::hashing::Id;
use crate::index::{DamageRecord, Index};
use crate::index_object::{self, IndexObject, PackListing};
use crate::lock;
use crate::pack;
use crate::repo::{list_pack_files, Repository};
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind, Tree};
use crate::walk::{self, FnSource, Place, Step};

/// What a rebuild found.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub packs: u64,
    pub blobs: u64,
    pub snapshots: u64,
    /// Damaged packs and snapshot files that were skipped, with the reason.
    pub skipped: Vec<String>,
    /// Damage records carried over from the old index.
    pub damage_records: u64,
    /// Index objects written from the pack trailers (replacing every earlier one).
    pub index_objects: u64,
    /// Things the user should know that do not make the rebuild fail.
    pub warnings: Vec<String>,
}

/// Rebuilds the index of the repository at `url` (its `index.sqlite`, or its local cache for a repository in
/// object storage) under an exclusive lock.
pub fn repair_index(url: &RepoUrl) -> Result<RepairReport> {
    let (backend, config, crypto) = crate::repo::connect_unlocked(url)?;
    let lock = lock::acquire(&backend, true, "repair index")?;
    let live = crate::repo::index_path(backend.as_ref(), &config)?;
    let dir = live.parent().unwrap_or(Path::new(".")).to_path_buf();
    let new_path = dir.join("index.sqlite.rebuild");
    remove_db_files(&new_path)?;
    let mut report = RepairReport::default();
    let damage = match old_damage_records(&live) {
        Ok(d) => d,
        Err(e) => {
            report.warnings.push(format!(
                "the record of damaged blobs could not be read from the old index ({e}); run `cairn check --read-data` to find damage again before the next backup"
            ));
            Vec::new()
        }
    };
    {
        let mut index = Index::open(&new_path)?;
        // Before the packs: a blob stored both in a damaged and in a good copy is then indexed at the good one.
        index.record_damage(&damage)?;
        report.damage_records = damage.len() as u64;
        let old_objects: Vec<Id> = backend
            .list(ObjectKind::Index)?
            .into_iter()
            .filter_map(|(n, _)| Id::from_hex(&n))
            .collect();
        let mut objects = ObjectBatch::default();
        for (id, len) in list_pack_files(backend.as_ref())? {
            match pack::read_trailer(backend.as_ref(), &id, len, &crypto) {
                Ok(entries) => {
                    report.packs += 1;
                    report.blobs += entries.len() as u64;
                    index.add_pack(id, len, &entries)?;
                    objects.add(backend.as_ref(), &mut index, id, len, entries)?;
                }
                Err(e) if e.is_damage() => report.skipped.push(format!("pack {id}: {e}")),
                // Leaving a readable-but-for-now pack out of the index would let `prune` delete it.
                Err(e) => return Err(e),
            }
        }
        let snapshots = backend.list(ObjectKind::Snapshot)?;
        for id in snapshots.iter().filter_map(|(name, _)| Id::from_hex(name)) {
            match Snapshot::load(backend.as_ref(), &id) {
                Ok(s) => {
                    index.add_snapshot(&s, &id.to_hex())?;
                    report.snapshots += 1;
                }
                Err(err) if err.is_damage() => report.skipped.push(format!("snapshot {id}: {err}")),
                Err(err) => return Err(err),
            }
        }
        // The new index objects are durable (the last one superseding every old one) before the old go.
        objects.finish(backend.as_ref(), &mut index, old_objects.clone())?;
        report.index_objects = objects.written;
        for old in &old_objects {
            lock.ensure_held()?;
            backend.delete(ObjectKind::Index, &old.to_hex())?;
            index.transaction(|tx| crate::index_sync::forget_object(tx, old))?;
        }
        // Fold the write-ahead log into the file so the rename below moves one complete database.
        index.raw().pragma_update(None, "journal_mode", "DELETE")?;
    }
    // The old log must go before the rename: SQLite would otherwise replay it onto the new database.
    remove_db_files_except_main(&live)?;
    std::fs::rename(&new_path, &live).map_err(|e| Error::io(&live, e))?;
    fsutil::sync_dir(&dir)?;
    Ok(report)
}

/// Index objects being rebuilt from pack trailers: written every [`index_object::MAX_ENTRIES`] entries, so
/// memory stays bounded however large the repository.
#[derive(Default)]
struct ObjectBatch {
    packs: Vec<PackListing>,
    entries: usize,
    written: u64,
}

impl ObjectBatch {
    fn add(
        &mut self,
        backend: &dyn crate::backend::Backend,
        index: &mut Index,
        id: Id,
        size: u64,
        entries: Vec<pack::BlobEntry>,
    ) -> Result<()> {
        if self.entries > 0 && self.entries + entries.len() > index_object::MAX_ENTRIES {
            self.write(backend, index, Vec::new())?;
        }
        self.entries += entries.len();
        self.packs.push(PackListing { id, size, entries });
        Ok(())
    }

    fn write(
        &mut self,
        backend: &dyn crate::backend::Backend,
        index: &mut Index,
        supersedes: Vec<Id>,
    ) -> Result<()> {
        let obj = IndexObject {
            packs: std::mem::take(&mut self.packs),
            supersedes,
        };
        self.entries = 0;
        let id = obj.save(backend)?;
        self.written += 1;
        index.transaction(|tx| crate::index_sync::record_listed(tx, &id, &obj))
    }

    /// Writes the rest, superseding `old` (an object even if no pack is left, so the old ones are replaced).
    fn finish(
        &mut self,
        backend: &dyn crate::backend::Backend,
        index: &mut Index,
        old: Vec<Id>,
    ) -> Result<()> {
        if !self.packs.is_empty() || !old.is_empty() {
            self.write(backend, index, old)?;
        }
        Ok(())
    }
}

/// The damage records of the index at `path` (none if it does not exist or predates the record).
fn old_damage_records(path: &Path) -> Result<Vec<DamageRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    Index::open_read_only(path)?.damage_records()
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

/// How repair reads stored objects: the repository itself, or in tests a wrapper that injects read faults
/// (EIO on the Nth read) to prove that such an error stops repair before it changes anything.
pub trait ObjectReader: Sync {
    fn read_blob(&self, id: &Id) -> Result<Vec<u8>>;
    fn read_tree(&self, id: &Id) -> Result<Tree>;
    /// The id of a blob with these bytes (keyed in an encrypted repository).
    fn blob_id(&self, data: &[u8]) -> Id {
        Id::of(data)
    }
}

impl ObjectReader for Repository {
    fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        Repository::read_blob(self, id)
    }
    fn read_tree(&self, id: &Id) -> Result<Tree> {
        Repository::read_tree(self, id)
    }
    fn blob_id(&self, data: &[u8]) -> Id {
        self.crypto().blob_id(data)
    }
}

/// What verification found for a tree and everything below it.
#[derive(Debug, Clone, PartialEq)]
enum TreeHealth {
    Clean,
    /// Readable, but something below it is damaged.
    HasDamage,
    /// The tree itself is damaged (with why).
    Unreadable(String),
}

/// Verifies every object once and remembers the verdict. Only verified damage ([`Error::is_damage`]) is a
/// verdict; any other read error is returned and ends the repair.
struct Verifier<'a> {
    reader: &'a dyn ObjectReader,
    /// `Some(reason)` for a damaged blob.
    blobs: HashMap<Id, Option<String>>,
    trees: HashMap<Id, TreeHealth>,
}

impl Verifier<'_> {
    fn blob_damaged(&mut self, id: &Id) -> Result<bool> {
        if let Some(v) = self.blobs.get(id) {
            return Ok(v.is_some());
        }
        let verdict = match self.reader.read_blob(id) {
            Ok(_) => None,
            Err(e) if e.is_damage() => Some(e.to_string()),
            Err(e) => return Err(e),
        };
        let damaged = verdict.is_some();
        self.blobs.insert(*id, verdict);
        Ok(damaged)
    }

    /// Verifies the tree `t` and everything it names. Every chunk is read, even after damage is found, so
    /// that a non-damage error anywhere stops repair before anything is changed.
    fn tree(&mut self, t: &Id) -> Result<TreeHealth> {
        if let Some(v) = self.trees.get(t) {
            return Ok(v.clone());
        }
        let reader = self.reader;
        let mut walk = HealthWalk {
            v: self,
            open: Vec::new(),
            result: None,
        };
        walk::walk(&FnSource(|id: &Id| reader.read_tree(id)), t, &mut walk)?;
        walk.result
            .ok_or_else(|| Error::Invalid(format!("tree {t} was not verified")))
    }

    /// The damaged blobs and trees, with why.
    fn damaged(&self) -> impl Iterator<Item = (&Id, &String)> {
        let blobs = self
            .blobs
            .iter()
            .filter_map(|(id, v)| v.as_ref().map(|r| (id, r)));
        let trees = self.trees.iter().filter_map(|(id, v)| match v {
            TreeHealth::Unreadable(r) => Some((id, r)),
            _ => None,
        });
        blobs.chain(trees)
    }
}

/// The walk of [`Verifier::tree`]: a tree's health is known once everything below it is (post-order), and
/// a tree with a verdict already is not walked again.
struct HealthWalk<'v, 'a> {
    v: &'v mut Verifier<'a>,
    /// For each tree being walked: clean so far.
    open: Vec<bool>,
    /// The verdict of the walk's root.
    result: Option<TreeHealth>,
}

impl HealthWalk<'_, '_> {
    /// Hands a subtree's verdict to the tree that holds it (or makes it the result).
    fn fold(&mut self, h: TreeHealth) {
        match self.open.last_mut() {
            Some(clean) => *clean &= h == TreeHealth::Clean,
            None => self.result = Some(h),
        }
    }
}

impl walk::Visitor for HealthWalk<'_, '_> {
    fn before_tree(&mut self, id: &Id, _: Place) -> Result<Step> {
        match self.v.trees.get(id).cloned() {
            Some(h) => {
                self.fold(h);
                Ok(Step::Skip)
            }
            None => Ok(Step::Descend),
        }
    }
    fn tree(&mut self, _: &Id, _: Place, _: &Tree) -> Result<()> {
        self.open.push(true);
        Ok(())
    }
    fn tree_error(&mut self, id: &Id, _: Place, e: Error) -> Result<()> {
        if !e.is_damage() {
            return Err(e);
        }
        let h = TreeHealth::Unreadable(e.to_string());
        self.v.trees.insert(*id, h.clone());
        self.fold(h);
        Ok(())
    }
    fn entry(&mut self, _: Place, node: &Node) -> Result<Step> {
        if let NodeKind::File { chunks, .. } = &node.kind {
            let mut clean = true;
            for c in chunks {
                clean &= !self.v.blob_damaged(c)?;
            }
            if let Some(open) = self.open.last_mut() {
                *open &= clean;
            }
        }
        Ok(Step::Descend)
    }
    fn tree_done(&mut self, id: &Id, _: Place) -> Result<()> {
        let h = match self.open.pop() {
            Some(true) => TreeHealth::Clean,
            _ => TreeHealth::HasDamage,
        };
        self.v.trees.insert(*id, h.clone());
        self.fold(h);
        Ok(())
    }
}

/// Rewrites every snapshot that needs a missing or damaged blob: affected files (and unreadable
/// directories) are dropped, the rest is kept, and the new snapshot is marked partial. With `forget_damaged`
/// such snapshots are removed instead. Runs under the exclusive lock.
///
/// Every object is verified before anything changes, and only verified damage counts: any other read error
/// (permission denied, EIO, ...) is returned with no snapshot rewritten or removed and nothing recorded. The
/// damaged copies are then recorded in the index, so no later backup deduplicates against them (a new backup
/// of the sources stores good copies).
pub fn repair_snapshots(repo: &Repository, forget_damaged: bool) -> Result<Vec<RepairedSnapshot>> {
    repair_snapshots_with(repo, repo, forget_damaged)
}

/// [`repair_snapshots`] reading objects through `reader`.
pub fn repair_snapshots_with(
    repo: &Repository,
    reader: &dyn ObjectReader,
    forget_damaged: bool,
) -> Result<Vec<RepairedSnapshot>> {
    let _lock = lock::acquire_on(repo, true, "repair snapshots")?;
    let mut v = Verifier {
        reader,
        blobs: HashMap::new(),
        trees: HashMap::new(),
    };
    // 1. Verify, changing nothing.
    let mut damaged = Vec::new();
    for (id, snap) in repo.snapshots()? {
        let mut clean = true;
        for root in snap.tree.iter().chain(&snap.stream_tree) {
            clean &= v.tree(root)? == TreeHealth::Clean;
        }
        if !clean {
            damaged.push((id, snap));
        }
    }
    if damaged.is_empty() {
        return Ok(Vec::new());
    }
    // 2. Plan every change (reading again, writing only new trees that nothing references yet), then
    // 3. record the damage, so that deduplication stops using it, and apply the plan.
    if forget_damaged {
        let mut plans = Vec::new();
        for (id, snap) in damaged {
            let (_, _, dropped) = plan(None, &mut v, &snap)?;
            plans.push((id, dropped));
        }
        record_damage(repo, &v)?;
        let mut out = Vec::new();
        for (id, dropped) in plans {
            repo.remove_snapshot(&id)?;
            out.push(RepairedSnapshot {
                old_id: id.to_hex(),
                new_id: None,
                dropped,
            });
        }
        return Ok(out);
    }
    let plans = crate::pack_writer::PackWriter::scope(repo, |writer| {
        let mut plans = Vec::new();
        for (id, snap) in damaged {
            let (tree, stream_tree, dropped) = plan(Some(writer), &mut v, &snap)?;
            plans.push((
                id,
                rewritten(&id, &snap, tree, stream_tree, &dropped),
                dropped,
            ));
        }
        Ok(plans)
    })?;
    record_damage(repo, &v)?;
    let mut out = Vec::new();
    for (id, new, dropped) in plans {
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
}

/// Records every damaged object that is indexed (an object that is not indexed cannot be deduplicated against).
fn record_damage(repo: &Repository, v: &Verifier) -> Result<()> {
    let mut records = Vec::new();
    for (id, reason) in v.damaged() {
        if let Some(loc) = repo.with_reader(|r| r.lookup(id))? {
            records.push(DamageRecord::now(*id, loc.pack, reason.clone()));
        }
    }
    repo.index().record_damage(&records)
}

/// The new roots of `snap` without its damaged entries, and the paths dropped. New trees are saved through
/// `writer`; without one (forgetting) only the dropped paths are computed.
fn plan(
    writer: Option<&crate::pack_writer::PackWriter>,
    v: &mut Verifier,
    snap: &Snapshot,
) -> Result<(Option<Id>, Option<Id>, Vec<String>)> {
    let mut dropped = Vec::new();
    let mut rebuild_root = |root: Option<Id>, prefix: &'static str| match root {
        Some(t) => rebuild(writer, v, t, prefix, &mut dropped),
        None => Ok(None),
    };
    let tree = rebuild_root(snap.tree, "")?;
    let stream_tree = rebuild_root(snap.stream_tree, "stream:")?;
    Ok((tree, stream_tree, dropped))
}

/// The snapshot that replaces `snap`: new roots, lost streams removed, marked partial and `repaired`.
fn rewritten(
    id: &Id,
    snap: &Snapshot,
    tree: Option<Id>,
    stream_tree: Option<Id>,
    dropped: &[String],
) -> Snapshot {
    let mut new = snap.clone();
    new.tree = tree;
    new.stream_tree = stream_tree;
    if stream_tree.is_none() {
        new.streams.clear();
    }
    let lost: Vec<&str> = dropped
        .iter()
        .filter_map(|d| d.strip_prefix("stream:"))
        .collect();
    new.streams.retain(|s| !lost.contains(&s.name.as_str()));
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
    new
}

/// Rebuilds the tree `t` without entries whose data is damaged; `None` if the tree itself is damaged. Uses the
/// verdicts of the verification pass; a tree that verified is read again, and any error doing so (even
/// damage appearing now) is returned.
fn rebuild(
    writer: Option<&crate::pack_writer::PackWriter>,
    v: &mut Verifier,
    t: Id,
    prefix: &'static str,
    dropped: &mut Vec<String>,
) -> Result<Option<Id>> {
    let reader = v.reader;
    let mut walk = RebuildWalk {
        writer,
        v,
        prefix,
        dropped,
        open: Vec::new(),
        pending: Vec::new(),
        result: None,
    };
    walk::walk(&FnSource(|id: &Id| reader.read_tree(id)), &t, &mut walk)?;
    walk.result
        .ok_or_else(|| Error::Invalid(format!("tree {t} was not rebuilt")))
}

/// The walk of [`rebuild`]: clean subtrees are kept as they are and not entered, damaged ones dropped, and
/// a tree with damage below it is written anew once its entries are known (post-order).
struct RebuildWalk<'w, 'v, 'a> {
    writer: Option<&'w crate::pack_writer::PackWriter<'w>>,
    v: &'v mut Verifier<'a>,
    /// Shown before every dropped path (`stream:` for the stream tree).
    prefix: &'static str,
    dropped: &'v mut Vec<String>,
    /// The entries kept so far of each tree being rebuilt.
    open: Vec<Vec<Node>>,
    /// The directory entries whose subtree is being rebuilt, innermost last.
    pending: Vec<Node>,
    /// The new id of the walk's root (`None` when it is dropped).
    result: Option<Option<Id>>,
}

impl RebuildWalk<'_, '_, '_> {
    /// A subtree is settled: its entry is kept with the new id, or left out; the root's is the result.
    fn settle(&mut self, new: Option<Id>) {
        let Some(mut node) = self.pending.pop() else {
            self.result = Some(new);
            return;
        };
        if let (Some(new), Some(open)) = (new, self.open.last_mut()) {
            node.kind = NodeKind::Dir { subtree: new };
            open.push(node);
        }
    }
}

impl walk::Visitor for RebuildWalk<'_, '_, '_> {
    fn before_tree(&mut self, id: &Id, at: Place) -> Result<Step> {
        match self.v.tree(id)? {
            TreeHealth::Clean => self.settle(Some(*id)),
            TreeHealth::Unreadable(_) => {
                let path = at.shown_under(self.prefix);
                self.dropped
                    .push(if path.is_empty() { "/".into() } else { path });
                self.settle(None);
            }
            TreeHealth::HasDamage => return Ok(Step::Descend),
        }
        Ok(Step::Skip)
    }
    fn tree(&mut self, _: &Id, _: Place, tree: &Tree) -> Result<()> {
        self.open.push(Vec::with_capacity(tree.nodes.len()));
        Ok(())
    }
    fn entry(&mut self, at: Place, node: &Node) -> Result<Step> {
        match &node.kind {
            NodeKind::Dir { .. } => {
                self.pending.push(node.clone());
                return Ok(Step::Descend);
            }
            NodeKind::File { chunks, .. } => {
                let mut bad = false;
                for c in chunks {
                    bad |= self.v.blob_damaged(c)?;
                }
                if bad {
                    self.dropped.push(at.shown_under(self.prefix));
                    return Ok(Step::Skip);
                }
            }
            _ => {}
        }
        if let Some(open) = self.open.last_mut() {
            open.push(node.clone());
        }
        Ok(Step::Skip)
    }
    fn tree_done(&mut self, _: &Id, _: Place) -> Result<()> {
        let nodes = self.open.pop().unwrap_or_default();
        let (bytes, _) = Tree::new(nodes)?.encode()?;
        let id = self.v.reader.blob_id(&bytes);
        if let Some(w) = self.writer {
            w.save_with_id(crate::pack::BlobKind::Tree, id, &bytes)?;
        }
        self.settle(Some(id));
        Ok(())
    }
}
