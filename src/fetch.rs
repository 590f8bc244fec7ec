//! Reading many blobs at once (restore, dump): never a request per blob.
//!
//! The blobs asked for are grouped by pack, sorted by offset and merged into *runs*: one ranged read covers
//! several blobs and the gaps between them, as long as a gap is smaller than the backend's
//! [`ReadPlan::gap`] and the run stays within [`ReadPlan::max_run`]. Runs are read in parallel (at most
//! [`ReadPlan::parallel`] at once); each blob is sliced out of its run, decompressed and verified against
//! its id.
//!
//! Each pack is opened once per call ([`crate::backend::Backend::open_reader`]) and all its runs are read
//! through that reader.
//!
//! The bases of the delta blobs asked for (format-spec section 5.1) are read first, the same way, in one
//! batch ([`Fetcher::read_bases`]): a stream's deltas have their bases in the parent's packs, in the
//! parent's order, so a window of deltas has its bases in a few merged runs instead of a ranged read (and an
//! open of another pack) per delta. A base that cannot be read ahead is resolved by the delta on its own
//! ([`crate::delta::decode`]), which reports the error as the single read path does.
//!
//! Trees ([`TreesAhead`]) are read a level of the snapshot at a time with a plan of their own
//! ([`tree_plan`]): many small reads in flight and no gap read through, so a walk over an object store pays
//! one round trip per level instead of one per directory (257 directories took 5.2 s one after the other
//! against a loopback S3 server, 20 ms a request).
//!
//! Invariants: every blob asked for is reported exactly once, with its verified bytes or its error. A run
//! that cannot be read whole (a truncated or missing pack, an outage) is read again blob by blob, so an error
//! concerns exactly the blob it is reported for and a blob readable on its own is never reported damaged;
//! a blob of a run that does not verify is read again on its own too (a transfer can alter bytes).
//! The caller decides what an error means (restore records damage, names the file).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::backend::{ObjectKind, RangeReader, ReadPlan};
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::index::Location;
use crate::marks::Marks;
use crate::pack::BlobKind;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind, Tree};

/// One ranged read of a pack: `start..end` covers the blobs `blobs` (indices into the caller's list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub pack: Id,
    pub start: u64,
    pub end: u64,
    /// In the order of their offsets, none overlapping the one before ([`plan_runs`] makes them so).
    pub blobs: Vec<usize>,
}

/// Groups `locs` into runs under `plan`. Each index of `locs` lands in exactly one run; `locs` should not
/// hold the same blob twice (it would be read twice).
pub fn plan_runs(locs: &[Location], plan: ReadPlan) -> Vec<Run> {
    let mut order: Vec<usize> = (0..locs.len()).collect();
    order.sort_by_key(|&i| (locs[i].pack, locs[i].entry.offset));
    let mut runs: Vec<Run> = Vec::new();
    for i in order {
        let loc = &locs[i];
        let (start, end) = (
            loc.entry.offset,
            loc.entry.offset + u64::from(loc.entry.stored_len),
        );
        match runs.last_mut() {
            Some(r)
                if r.pack == loc.pack
                    && start >= r.end
                    && start - r.end <= plan.gap
                    && end - r.start <= plan.max_run =>
            {
                r.end = end;
                r.blobs.push(i);
            }
            _ => runs.push(Run {
                pack: loc.pack,
                start,
                end,
                blobs: vec![i],
            }),
        }
    }
    runs
}

/// Raw bytes of the bases of a batch of delta blobs, by id (checked against their ids or not: see
/// [`Fetcher::read_bases`]).
pub type Bases = HashMap<Id, Vec<u8>>;

/// Reads blobs with merged, parallel ranged reads (see the module docs).
pub struct Fetcher<'r> {
    repo: &'r Repository,
    plan: ReadPlan,
    /// A pool of `plan.parallel` threads when that differs from the global pool (an object store wants more
    /// requests in flight than there are cores).
    pool: Option<rayon::ThreadPool>,
}

impl<'r> Fetcher<'r> {
    pub fn new(repo: &'r Repository) -> Result<Fetcher<'r>> {
        Fetcher::with_plan(repo, repo.backend().read_plan())
    }

    /// A fetcher that reads under `plan` instead of the backend's own.
    pub fn with_plan(repo: &'r Repository, plan: ReadPlan) -> Result<Fetcher<'r>> {
        let pool = reader_pool(plan.parallel)?;
        Ok(Fetcher { repo, plan, pool })
    }

    /// Reads every blob of `locs` and hands each to `on_blob(index, bytes or error)`, from any thread, in
    /// no particular order, exactly once.
    pub fn fetch(&self, locs: &[Location], on_blob: &(dyn Fn(usize, Result<Vec<u8>>) + Sync)) {
        let bases = self.read_bases(
            locs.iter().filter_map(|l| match l.entry.kind {
                BlobKind::DeltaData => l.entry.base,
                _ => None,
            }),
            false,
        );
        self.fetch_with(locs, &bases, true, on_blob);
    }

    /// The raw bytes of every blob of `ids` that can be read (duplicates read once), in merged runs. Those
    /// that cannot are left out: whoever needs one reads it alone and reports the error.
    ///
    /// With `verified` false a plain blob's bytes are not checked against its id (only its length): for
    /// bases of deltas being read, whose own decoded bytes are checked against their ids, so a wrong base
    /// can only make a delta fail, never pass, and the failing delta is then read again on its own
    /// ([`crate::delta::decode_with_base`]). A writer's bases must be `verified`: a delta made against
    /// wrong bytes would verify against them and be stored undecodable.
    pub fn read_bases(&self, ids: impl Iterator<Item = Id>, verified: bool) -> Bases {
        let ids: Vec<Id> = ids.collect::<HashSet<Id>>().into_iter().collect();
        if ids.is_empty() {
            return Bases::new();
        }
        let locs: Vec<Location> = ids
            .par_iter()
            .filter_map(|id| self.repo.with_reader(|r| r.lookup(id)).ok().flatten())
            .collect();
        let got = Mutex::new(Bases::with_capacity(locs.len()));
        // Bases are plain chunks (cairn writes chains of depth 1); one that is a delta itself is resolved
        // through the single read path by `decode_stored`.
        self.fetch_with(&locs, &Bases::new(), verified, &|i, r| {
            if let Ok(raw) = r {
                got.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(locs[i].entry.id, raw);
            }
        });
        got.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// [`fetch`](Self::fetch) with the bases of the deltas among `locs` already read (those in `bases`);
    /// plain blobs checked against their ids unless `verify` is false (see [`read_bases`](Self::read_bases)).
    fn fetch_with(
        &self,
        locs: &[Location],
        bases: &Bases,
        verify: bool,
        on_blob: &(dyn Fn(usize, Result<Vec<u8>>) + Sync),
    ) {
        let runs = plan_runs(locs, self.plan);
        // `plan_runs` keeps a pack's runs together: each pack is opened once, however many runs it has.
        let packs: Vec<&[Run]> = runs.chunk_by(|a, b| a.pack == b.pack).collect();
        let work = || {
            packs
                .par_iter()
                .for_each(|runs| self.read_pack(locs, bases, verify, runs, on_blob))
        };
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }

    /// Reads the runs of one pack through one reader (one open file for a local repository).
    fn read_pack(
        &self,
        locs: &[Location],
        bases: &Bases,
        verify: bool,
        runs: &[Run],
        on_blob: &(dyn Fn(usize, Result<Vec<u8>>) + Sync),
    ) {
        let Some(pack) = runs.first().map(|r| r.pack) else {
            return;
        };
        match self
            .repo
            .backend()
            .open_reader(ObjectKind::Pack, &pack.to_hex())
        {
            Ok(reader) => {
                let ranges: Vec<(u64, u64)> =
                    runs.iter().map(|r| (r.start, r.end - r.start)).collect();
                reader.will_need(&ranges);
                runs.par_iter()
                    .for_each(|run| self.read_run(&*reader, locs, bases, verify, run, on_blob))
            }
            // Say precisely which blobs cannot be read (a missing pack, a permission): each on its own.
            Err(_) => runs
                .par_iter()
                .flat_map(|run| run.blobs.par_iter())
                .for_each(|&i| on_blob(i, self.repo.read_located(&locs[i]))),
        }
    }

    fn read_run(
        &self,
        reader: &dyn RangeReader,
        locs: &[Location],
        bases: &Bases,
        verify: bool,
        run: &Run,
        on_blob: &(dyn Fn(usize, Result<Vec<u8>>) + Sync),
    ) {
        let got = reader.read_at(run.start, run.end - run.start);
        match got {
            Ok(mut bytes) => blobs_of_run(run, locs, &mut bytes)
                .into_par_iter()
                .for_each(|(i, stored)| {
                    let loc = &locs[i];
                    let got = match stored {
                        Some(s) => self.decode(loc, s, bases, verify),
                        None => Err(Error::corrupt(
                            format!("pack {}", run.pack.short()),
                            "short ranged read",
                        )),
                    };
                    on_blob(
                        i,
                        match got {
                            // Read again on its own before it is called damaged: the run's transfer may
                            // have brought wrong bytes (see `crate::backend::read_again_if_damaged`). The
                            // run was the first reading, so this one is the verdict.
                            Err(e) if e.is_damage() => self.repo.read_located_once(loc),
                            got => got,
                        },
                    );
                }),
            Err(e) if run.blobs.len() == 1 && !e.is_damage() => on_blob(run.blobs[0], Err(e)),
            // Say precisely which blobs cannot be read: each on its own.
            Err(_) => run
                .blobs
                .par_iter()
                .for_each(|&i| on_blob(i, self.repo.read_located(&locs[i]))),
        }
    }

    /// Decodes one blob's stored bytes (opened where they lie), a delta with its base from `bases` when
    /// that holds it.
    fn decode(
        &self,
        loc: &Location,
        stored: &mut [u8],
        bases: &Bases,
        verify: bool,
    ) -> Result<Vec<u8>> {
        if !verify && loc.entry.kind != BlobKind::DeltaData {
            return crate::delta::decode_unverified(self.repo, loc, stored);
        }
        match loc.entry.base.and_then(|b| bases.get(&b)) {
            Some(base) if loc.entry.kind == BlobKind::DeltaData => {
                crate::delta::decode_with_base(self.repo, loc, stored, base)
            }
            _ => self.repo.decode_stored_in_place(loc, stored),
        }
    }
}

/// The stored bytes of each blob of `run` within `bytes` (the run's read, from `run.start`), each blob its
/// own mutable slice so it can be opened in place; `None` for a blob the read does not hold whole (a short
/// read) or, against the run's invariant, one that is not after the blob before it (read on its own instead).
fn blobs_of_run<'b>(
    run: &Run,
    locs: &[Location],
    bytes: &'b mut [u8],
) -> Vec<(usize, Option<&'b mut [u8]>)> {
    let mut rest = bytes;
    let mut rest_at = run.start;
    let mut out = Vec::with_capacity(run.blobs.len());
    for &i in &run.blobs {
        let entry = &locs[i].entry;
        let (at, len) = (entry.offset, entry.stored_len as u64);
        let fits = at >= rest_at && at - rest_at + len <= rest.len() as u64;
        if !fits {
            out.push((i, None));
            continue;
        }
        let tail = std::mem::take(&mut rest)
            .split_at_mut((at - rest_at) as usize)
            .1;
        let (stored, tail) = tail.split_at_mut(len as usize);
        rest = tail;
        rest_at = at + len;
        out.push((i, Some(stored)));
    }
    out
}

/// A pool of `threads` reader threads, or `None` when the global pool has that size already (an object
/// store wants more requests in flight than there are cores).
pub fn reader_pool(threads: usize) -> Result<Option<rayon::ThreadPool>> {
    let threads = threads.max(1);
    if threads == rayon::current_num_threads() {
        return Ok(None);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cairn-fetch-{i}"))
        .build()
        .map(Some)
        .map_err(|e| Error::Invalid(format!("cannot start reader threads: {e}")))
}

/// How trees are read by [`TreesAhead`] from a backend that reads blobs under `plan`: a tree is a few
/// KiB, so the backend's `small_parallel` are in flight (memory stays at that many runs of at most 256 KiB,
/// unless one tree is larger) and only trees stored side by side share a read.
pub fn tree_plan(plan: ReadPlan) -> ReadPlan {
    ReadPlan {
        gap: 64 << 10,
        max_run: 256 << 10,
        parallel: plan.small_parallel.max(1),
        small_parallel: plan.small_parallel.max(1),
        batch_files: 1,
        batch_chunks: 1,
    }
}

/// Trees that [`TreesAhead`] holds ahead of the walk at most, in bytes of their stored (raw) encoding, which
/// the index knows before they are read; decoded, a tree takes about two to three times that. Several
/// levels of a file store (256 directories of a few hundred files each) fit, while a snapshot of millions
/// of files, or of files with long chunk lists, costs the walk this, not its whole tree.
const AHEAD_BYTES: usize = 8 << 20;

/// Trees read in one batch of a level by [`TreesAhead`] at most.
const AHEAD_BATCH: usize = 256;

/// A [`TreeSource`](crate::walk::TreeSource) for a depth-first walk that reads the trees it will enter ahead
/// of it, a level at a time, each level with merged, parallel ranged reads ([`tree_plan`]): over an object
/// store, one round trip per level instead of one per directory (257 directories took 5.2 s one after the
/// other against a loopback S3 server, 20 ms a request).
///
/// `descend(path, node)` says whether the walk enters the directory `node` at `path` (names joined by `/`,
/// as in [`crate::walk::Place`]): only those subtrees are read ahead.
///
/// Memory: trees read ahead are held until the walk takes them (each is handed out once), at most
/// [`AHEAD_BYTES`] of them (stored size), besides the one the walk asks for; where a level would go past
/// that, the rest of it is read when the walk gets there (with the levels below it). So the walk's memory
/// follows this bound, not the snapshot's size.
///
/// Best effort by design: a tree that cannot be read, is not in the index or does not decode is not held,
/// and the walk reads it through `fallback`, which reports it exactly as it would have without read-ahead
/// (damage recorded, path named). The trees held are a cache for the walk, never a judgement.
pub struct TreesAhead<'a> {
    repo: &'a Repository,
    fetcher: Fetcher<'a>,
    descend: &'a dyn Fn(&[u8], &Node) -> bool,
    fallback: &'a dyn Fn(&Id) -> Result<Tree>,
    /// Bytes held ahead at most ([`AHEAD_BYTES`]; smaller in tests).
    budget: usize,
    ahead: std::cell::RefCell<Ahead>,
}

#[derive(Default)]
struct Ahead {
    /// Trees read ahead, with their stored sizes.
    held: HashMap<Id, (Tree, usize)>,
    /// The stored size of the trees in `held`.
    bytes: usize,
    /// Subtrees to enter that were not read ahead (the budget was reached), with their paths: the walk
    /// reads them, and the levels below them, when it gets there.
    later: HashMap<Id, Vec<u8>>,
}

impl<'a> TreesAhead<'a> {
    pub fn new(
        repo: &'a Repository,
        descend: &'a dyn Fn(&[u8], &Node) -> bool,
        fallback: &'a dyn Fn(&Id) -> Result<Tree>,
    ) -> Result<TreesAhead<'a>> {
        let fetcher = Fetcher::with_plan(repo, tree_plan(repo.backend().read_plan()))?;
        Ok(TreesAhead {
            repo,
            fetcher,
            descend,
            fallback,
            budget: AHEAD_BYTES,
            ahead: Default::default(),
        })
    }

    #[cfg(test)]
    fn with_budget(self, budget: usize) -> Self {
        TreesAhead { budget, ..self }
    }

    fn take(&self, id: &Id) -> Option<Tree> {
        let mut ahead = self.ahead.borrow_mut();
        let (tree, weight) = ahead.held.remove(id)?;
        ahead.bytes -= weight;
        Some(tree)
    }

    /// Reads `root` (at `path`) and the levels below it that the walk enters, until the budget is reached.
    fn read_ahead(&self, root: Id, path: Vec<u8>) {
        let mut level = vec![(root, path)];
        let mut asked = true;
        while !level.is_empty() {
            let mut next = Vec::new();
            let mut left = level.as_slice();
            while !left.is_empty() {
                let located = self.fitting(left, std::mem::take(&mut asked));
                if located.is_empty() {
                    break;
                }
                let (batch, rest) = left.split_at(located.len());
                left = rest;
                let mut read = HashMap::new();
                read_trees(self.repo, &self.fetcher, batch, &located, &mut read);
                next.extend(next_level(&read, batch, self.descend));
                let mut ahead = self.ahead.borrow_mut();
                for ((id, _), loc) in batch.iter().zip(&located) {
                    let Some(tree) = read.remove(id) else {
                        continue;
                    };
                    let size = stored_size(loc);
                    ahead.bytes += size;
                    if let Some((_, was)) = ahead.held.insert(*id, (tree, size)) {
                        ahead.bytes -= was;
                    }
                }
            }
            let mut ahead = self.ahead.borrow_mut();
            ahead.later.extend(left.iter().cloned());
            if !left.is_empty() || ahead.bytes >= self.budget {
                ahead.later.extend(next);
                return;
            }
            level = next;
        }
    }

    /// Where the trees at the head of `left` that fit in the room left are stored (at most [`AHEAD_BATCH`]);
    /// the first one whatever its size when it is the tree the walk `asked` for.
    fn fitting(&self, left: &[(Id, Vec<u8>)], asked: bool) -> Vec<Option<Location>> {
        let mut room = self.budget.saturating_sub(self.ahead.borrow().bytes);
        let mut located = Vec::new();
        for (id, _) in left.iter().take(AHEAD_BATCH) {
            let loc = self.repo.with_reader(|r| r.lookup(id)).ok().flatten();
            let size = stored_size(&loc);
            if size > room && !(asked && located.is_empty()) {
                break;
            }
            room = room.saturating_sub(size);
            located.push(loc);
        }
        located
    }
}

/// The room a tree read ahead takes: its stored size; a tree the index does not know is not read (its
/// reader reports it) and takes none.
fn stored_size(loc: &Option<Location>) -> usize {
    loc.map_or(0, |l| l.entry.raw_len as usize)
}

impl crate::walk::TreeSource for TreesAhead<'_> {
    fn read_tree(&self, id: &Id) -> Result<Tree> {
        if let Some(tree) = self.take(id) {
            return Ok(tree);
        }
        let path = self.ahead.borrow_mut().later.remove(id).unwrap_or_default();
        self.read_ahead(*id, path);
        match self.take(id) {
            Some(tree) => Ok(tree),
            None => (self.fallback)(id),
        }
    }
}

/// Reads the trees of `batch` (located by the index as `located`) into `trees` (those that can be read and
/// decode; see [`TreesAhead`]): from this host's tree cache where it has them, the others from their packs,
/// which are then kept in the cache.
fn read_trees(
    repo: &Repository,
    fetcher: &Fetcher,
    batch: &[(Id, Vec<u8>)],
    located: &[Option<Location>],
    trees: &mut HashMap<Id, Tree>,
) {
    let mut missing = Vec::with_capacity(batch.len());
    for ((id, _), loc) in batch.iter().zip(located) {
        let cached = repo.caches_trees().then(|| repo.cached_tree(id)).flatten();
        match cached.map(|raw| Tree::decode(&raw)) {
            Some(Ok(tree)) => {
                trees.insert(*id, tree);
            }
            Some(Err(_)) => {}
            None => missing.extend(loc.filter(|l| l.entry.kind == BlobKind::Tree)),
        }
    }
    read_packed_trees(repo, fetcher, &missing, &mut |id, tree| {
        trees.insert(id, tree);
    });
}

/// Where the index stores the trees `ids` (those it knows as trees).
fn locate_trees(repo: &Repository, ids: &[Id]) -> Vec<Location> {
    ids.iter()
        .filter_map(|id| repo.with_reader(|r| r.lookup(id)).ok().flatten())
        .filter(|loc| loc.entry.kind == BlobKind::Tree)
        .collect()
}

/// Reads the trees `located` from their packs, never from the tree cache, hands each that can be read and
/// decodes to `on_tree`, and keeps a copy of each in the cache (when the repository has one).
fn read_packed_trees(
    repo: &Repository,
    fetcher: &Fetcher,
    located: &[Location],
    on_tree: &mut dyn FnMut(Id, Tree),
) {
    let caching = repo.caches_trees();
    let got = Mutex::new(Vec::with_capacity(located.len()));
    fetcher.fetch(located, &|i, bytes| {
        let id = located[i].entry.id;
        let Ok(raw) = bytes else { return };
        let cached = caching
            .then(|| repo.tree_for_cache(id, &raw).ok())
            .flatten();
        if let Ok(tree) = Tree::decode(&raw) {
            got.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((id, tree, cached));
        }
    });
    let got = got.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut to_cache = Vec::new();
    for (id, tree, cached) in got {
        on_tree(id, tree);
        to_cache.extend(cached);
    }
    repo.cache_trees(&to_cache);
}

/// How many trees [`refresh_tree_cache`] reads in one batch: bounds its memory (the decoded trees of a
/// batch) whatever the size of a level.
const REFRESH_BATCH: usize = 4096;

/// Reads every tree below `roots` (the roots included) from its pack, a level at a time with merged,
/// parallel reads ([`tree_plan`]), keeps each in this host's tree cache and marks it in `verified`. For
/// `check` over an object store: its walk then reads the trees marked in `verified` (copies it has just
/// verified from their packs) from the cache, in one round trip per level and batch instead of one per
/// directory, and any other tree from its pack, reporting it as before. Trees are entered once (`tried`).
/// Does nothing for a repository without a tree cache (a local one).
///
/// Memory: one level's tree ids (32 bytes a directory) and one batch of decoded trees; the sets are
/// [`Marks`], which move to disk when large.
pub fn refresh_tree_cache(
    repo: &Repository,
    roots: &[Id],
    tried: &mut Marks,
    verified: &mut Marks,
) -> Result<()> {
    if !repo.caches_trees() {
        return Ok(());
    }
    let fetcher = Fetcher::with_plan(repo, tree_plan(repo.backend().read_plan()))?;
    let mut level: Vec<Id> = roots.to_vec();
    while !level.is_empty() {
        let mut next = Vec::new();
        for batch in level.chunks(REFRESH_BATCH) {
            let mut wanted = Vec::with_capacity(batch.len());
            for id in batch {
                if tried.insert(id)? {
                    wanted.push(*id);
                }
            }
            let mut read = Vec::with_capacity(wanted.len());
            read_packed_trees(
                repo,
                &fetcher,
                &locate_trees(repo, &wanted),
                &mut |id, tree| {
                    read.push(id);
                    next.extend(tree.nodes.iter().filter_map(|n| match &n.kind {
                        NodeKind::Dir { subtree } => Some(*subtree),
                        _ => None,
                    }));
                },
            );
            for id in &read {
                verified.insert(id)?;
            }
        }
        level = next;
    }
    Ok(())
}

/// The subtrees the walk enters below the trees of `level` that were read.
fn next_level(
    trees: &HashMap<Id, Tree>,
    level: &[(Id, Vec<u8>)],
    descend: &dyn Fn(&[u8], &Node) -> bool,
) -> Vec<(Id, Vec<u8>)> {
    let mut next = Vec::new();
    for (id, path) in level {
        let Some(tree) = trees.get(id) else { continue };
        for node in &tree.nodes {
            let NodeKind::Dir { subtree } = &node.kind else {
                continue;
            };
            let mut child = path.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(&node.name);
            if descend(&child, node) {
                next.push((*subtree, child));
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pack::{BlobEntry, BlobKind, Compression};
    use crate::pack_writer::PackWriter;
    use crate::tree::Meta;

    fn node(name: &str, kind: NodeKind) -> Node {
        Node {
            name: name.as_bytes().to_vec(),
            kind,
            meta: Meta::default(),
        }
    }

    fn file(name: &str) -> Node {
        let chunks = vec![Id::of(name.as_bytes())];
        node(name, NodeKind::File { size: 1, chunks })
    }

    fn dir(name: &str, subtree: Id) -> Node {
        node(name, NodeKind::Dir { subtree })
    }

    #[test]
    fn trees_are_prefetched_level_by_level_only_where_the_walk_descends_and_unreadable_ones_are_left_out(
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init(tmp.path().join("repo"), Config::new_default()).unwrap();
        let missing = Id::of(b"a tree that was never stored");
        // root: a/{deep/{f}, gone (missing)}, b/{deep/{f}} (the same subtree as a/deep), skip/{inner/{}}
        let ids = PackWriter::scope(&repo, |w| {
            let save = |nodes: Vec<Node>| -> Result<Id> {
                let (bytes, _) = Tree::new(nodes)?.encode()?;
                Ok(w.save(BlobKind::Tree, &bytes)?.0)
            };
            let deep = save(vec![file("f")])?;
            let a = save(vec![dir("deep", deep), dir("gone", missing)])?;
            let b = save(vec![dir("deep", deep), file("g")])?;
            let inner = save(vec![])?;
            let skip = save(vec![dir("inner", inner)])?;
            let root = save(vec![dir("a", a), dir("b", b), dir("skip", skip)])?;
            Ok(vec![root, a, b, deep, skip, inner])
        })
        .unwrap();
        let (root, a, b, deep, skip, inner) = (ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]);
        let asked = Mutex::new(Vec::new());
        let descend = |path: &[u8], _: &Node| {
            asked
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(path).into_owned());
            !path.starts_with(b"skip")
        };
        let fallback = |id: &Id| repo.read_tree(id);
        let ahead = TreesAhead::new(&repo, &descend, &fallback).unwrap();
        use crate::walk::TreeSource;
        assert_eq!(ahead.read_tree(&root).unwrap().nodes.len(), 3);
        let trees = std::mem::take(&mut ahead.ahead.borrow_mut().held);
        let mut got: Vec<Id> = trees.keys().copied().collect();
        got.sort();
        let mut want = vec![a, b, deep];
        want.sort();
        assert_eq!(
            got, want,
            "the root handed out, skip and inner not read, the missing tree left out"
        );
        assert!(!trees.contains_key(&skip) && !trees.contains_key(&inner));
        assert_eq!(trees[&deep].0.nodes[0].name, b"f");
        // Every directory entry is asked about once per path it is met at, the shared subtree at both.
        let mut asked = asked.into_inner().unwrap();
        asked.sort();
        assert_eq!(asked, ["a", "a/deep", "a/gone", "b", "b/deep", "skip"]);
    }

    #[test]
    fn trees_read_ahead_stay_within_the_budget_and_the_walk_still_meets_every_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init(tmp.path().join("repo"), Config::new_default()).unwrap();
        // 40 directories of 50 files, each holding 3 subdirectories of 10 files: 2,000 + 1,200 entries.
        let root = PackWriter::scope(&repo, |w| {
            let save = |nodes: Vec<Node>| -> Result<Id> {
                let (bytes, _) = Tree::new(nodes)?.encode()?;
                Ok(w.save(BlobKind::Tree, &bytes)?.0)
            };
            let mut top = Vec::new();
            for d in 0..40 {
                let mut nodes: Vec<Node> = (0..50).map(|f| file(&format!("f{f:02}"))).collect();
                for s in 0..3 {
                    let leaf: Vec<Node> = (0..10).map(|f| file(&format!("{d}.{s}.{f}"))).collect();
                    nodes.push(dir(&format!("s{s}"), save(leaf)?));
                }
                top.push(dir(&format!("d{d:02}"), save(nodes)?));
            }
            save(top)
        })
        .unwrap();
        let descend = |_: &[u8], _: &Node| true;
        let fallback = |id: &Id| repo.read_tree(id);
        let ahead = TreesAhead::new(&repo, &descend, &fallback)
            .unwrap()
            .with_budget(20_000);
        struct Count<'a> {
            ahead: &'a TreesAhead<'a>,
            files: usize,
            most_held: usize,
        }
        impl crate::walk::Visitor for Count<'_> {
            fn entry(&mut self, _: crate::walk::Place, node: &Node) -> Result<crate::walk::Step> {
                self.files += matches!(node.kind, NodeKind::File { .. }) as usize;
                let held = self.ahead.ahead.borrow().bytes;
                self.most_held = self.most_held.max(held);
                Ok(crate::walk::Step::Descend)
            }
        }
        let mut count = Count {
            ahead: &ahead,
            files: 0,
            most_held: 0,
        };
        crate::walk::walk(&ahead, &root, &mut count).unwrap();
        assert_eq!(count.files, 40 * 50 + 40 * 3 * 10);
        assert!(count.most_held <= 20_000, "{}", count.most_held);
        assert!(
            count.most_held > 20_000 / 2,
            "little was read ahead: {}",
            count.most_held
        );
        let left = ahead.ahead.borrow();
        assert_eq!((left.bytes, left.held.len(), left.later.len()), (0, 0, 0));
    }

    fn loc(pack: u8, offset: u64, len: u32) -> Location {
        Location {
            pack: Id::of(&[pack]),
            entry: BlobEntry {
                id: Id::of(&offset.to_le_bytes()),
                kind: BlobKind::Data,
                compression: Compression::None,
                offset,
                stored_len: len,
                raw_len: len,
                base: None,
            },
        }
    }

    #[test]
    fn runs_merge_small_gaps_within_a_pack_and_respect_the_size_bound() {
        let plan = ReadPlan {
            gap: 100,
            max_run: 1000,
            parallel: 1,
            small_parallel: 1,
            batch_files: 1,
            batch_chunks: 1,
        };
        let locs = vec![
            loc(1, 400, 100), // gap 100 after 100..300: merged
            loc(1, 0, 100),
            loc(2, 0, 10),
            loc(1, 100, 200),
            loc(1, 600, 200),  // gap 100 after 400..500: merged, run 0..800
            loc(1, 901, 200),  // gap 101: new run
            loc(1, 1101, 950), // adjacent but the run would exceed 1000: new run
        ];
        let runs = plan_runs(&locs, plan);
        let spans: Vec<(u64, u64, Vec<usize>)> = runs
            .iter()
            .map(|r| (r.start, r.end, r.blobs.clone()))
            .collect();
        let p1 = Id::of(&[1]);
        let mut want = vec![
            (0, 800, vec![1, 3, 0, 4]),
            (901, 1101, vec![5]),
            (1101, 2051, vec![6]),
        ];
        let mut got_p1: Vec<_> = runs
            .iter()
            .zip(&spans)
            .filter(|(r, _)| r.pack == p1)
            .map(|(_, s)| s.clone())
            .collect();
        got_p1.sort();
        want.sort();
        assert_eq!(got_p1, want);
        let p2: Vec<_> = runs.iter().filter(|r| r.pack != p1).collect();
        assert_eq!(p2.len(), 1);
        assert_eq!(
            (p2[0].start, p2[0].end, p2[0].blobs.clone()),
            (0, 10, vec![2])
        );
        let mut all: Vec<usize> = runs.iter().flat_map(|r| r.blobs.clone()).collect();
        all.sort();
        assert_eq!(all, (0..locs.len()).collect::<Vec<_>>());
    }

    #[test]
    fn each_blob_of_a_run_gets_its_own_slice_and_what_a_read_lacks_gets_none() {
        let locs = vec![
            loc(1, 150, 50),
            loc(1, 100, 40),
            loc(1, 180, 30), // overlaps the blob at 150..200
            loc(1, 290, 20), // past the end of a short read
        ];
        let run = Run {
            pack: Id::of(&[1]),
            start: 100,
            end: 310,
            blobs: vec![1, 0, 2, 3],
        };
        let mut bytes: Vec<u8> = (0..200u8).collect(); // the read stopped 10 bytes short
        let got: Vec<(usize, Option<Vec<u8>>)> = blobs_of_run(&run, &locs, &mut bytes)
            .into_iter()
            .map(|(i, s)| (i, s.map(|s| s.to_vec())))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Some((0..40).collect())),
                (0, Some((50..100).collect())),
                (2, None),
                (3, None),
            ]
        );
    }
}
