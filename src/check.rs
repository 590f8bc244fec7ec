//! `check`: proves the repository is intact, or names what is damaged and what depends on it.
//!
//! Structural checks (always): the index database is sound; every indexed pack exists with its recorded size
//! and its trailer lists every blob the index places in it; every snapshot file decodes, matches its id and has
//! an index row (and every row a file); every tree reachable from a snapshot decodes and every chunk it names
//! is indexed. With read-data ([`read_data`]), the selected packs are read front to back (in pieces: memory does not grow
//! with a pack's size) and every blob is decompressed and re-hashed, in parallel.
//!
//! Damage versus read errors: only verified damage ([`Error::is_damage`]: a hash mismatch, bad framing, a
//! missing pack or object) is reported as damage, with the snapshots and paths that need it. An object that
//! cannot be read for another reason (permission denied, EIO) is a read error: the data may be intact, so it
//! is reported apart and the advice is to fix the cause, never to repair or forget snapshots.
//!
//! Damage found (or recorded earlier by restore, dump or repair and not yet healed) is recorded in the index
//! (format-spec, "Index"), so that the next backup stores those blobs again instead of deduplicating against
//! them; the report's hints say so.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use rayon::prelude::*;
use rusqlite::params;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::index::DamageRecord;
use crate::marks::Marks;
use crate::pack;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind, Tree};
use crate::walk::{self, Place, Step};

mod read_data;
use read_data::read_packs;

/// Which packs to read in full.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ReadData {
    /// Structure only.
    #[default]
    None,
    /// Every pack.
    All,
    /// Slice `n` of `m` (1-based): packs whose id maps to that slice, so `1/7` … `7/7` cover everything.
    Slice { n: u32, m: u32 },
    /// A random share of the packs, in percent.
    Percent(f64),
}

impl std::str::FromStr for ReadData {
    type Err = Error;
    fn from_str(s: &str) -> Result<ReadData> {
        let bad = || {
            Error::Invalid(format!(
                "--read-data-subset {s:?}: want N/M (1 <= N <= M) or a percentage like 10%"
            ))
        };
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            return if v > 0.0 && v <= 100.0 {
                Ok(ReadData::Percent(v))
            } else {
                Err(bad())
            };
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || m == 0 || n > m {
            return Err(bad());
        }
        Ok(ReadData::Slice { n, m })
    }
}

/// A blob that failed verification and what depends on it.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedBlob {
    pub blob: String,
    pub pack: String,
    pub error: String,
    /// `snapshot-id: path` for every file or stream that needs this blob.
    pub affected: Vec<String>,
}

/// What `check` found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CheckReport {
    pub errors: Vec<String>,
    /// Objects that could not be read for a reason that is not damage (permission denied, EIO, ...).
    pub read_errors: Vec<String>,
    pub warnings: Vec<String>,
    /// What to run about what was found.
    pub hints: Vec<String>,
    pub packs: u64,
    pub packs_read: u64,
    pub blobs_read: u64,
    pub snapshots: u64,
    pub trees: u64,
    pub damaged: Vec<DamagedBlob>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.damaged.is_empty() && self.read_errors.is_empty()
    }
}

/// Damaged blobs found so far: blob -> (pack holding the damaged copy, or zeros when not indexed; why).
type Damage = BTreeMap<Id, (Id, String)>;

/// The pack id used for a blob that is not in any pack.
const NO_PACK: Id = Id([0; 32]);

/// Runs the checks; damage is reported in the result, `Err` only when checking itself cannot proceed.
/// `progress` counts the pack bytes read (the total is set once the packs to read are known).
pub fn check(repo: &Repository, read_data: ReadData, progress: &Progress) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    if let Err(e) = repo.index().quick_check() {
        r.errors.push(e.to_string());
    }
    let mut damaged_blobs = Damage::new();
    check_packs(repo, &mut r, &mut damaged_blobs)?;
    let snapshots = check_snapshot_files(repo, &mut r)?;
    check_trees(repo, &snapshots, &mut r, &mut damaged_blobs)?;
    // Point-in-time recovery: the archived WAL must reach from each base backup to the newest segment.
    r.errors.extend(crate::pitr::chain_errors(repo)?);
    let verified = if read_data != ReadData::None {
        read_packs(repo, read_data, progress, &mut r, &mut damaged_blobs)?
    } else {
        HashSet::new()
    };
    progress.finish();
    damage_through_bases(repo, &mut r, &mut damaged_blobs)?;
    record_damage(repo, &mut r, &mut damaged_blobs, &verified)?;
    add_hints(repo, &mut r, !damaged_blobs.is_empty())?;
    if !damaged_blobs.is_empty() {
        let affected = affected_paths(repo, &snapshots, &damaged_blobs.keys().copied().collect())?;
        r.damaged = damaged_blobs
            .into_iter()
            .map(|(blob, (pack, error))| DamagedBlob {
                blob: blob.to_hex(),
                pack: pack.to_hex(),
                error,
                affected: affected.get(&blob).cloned().unwrap_or_default(),
            })
            .collect();
    }
    Ok(r)
}

/// Records the damage found in the index (so deduplication stops using it) and adds the damage recorded
/// earlier that is not healed yet, except where this check read the pack (`verified`) and the copy proved
/// good: such a record is stale (a pack that was missing for a while) and is dropped. Writing is best effort:
/// a read-only repository is still checked.
fn record_damage(
    repo: &Repository,
    r: &mut CheckReport,
    damaged: &mut Damage,
    verified: &HashSet<Id>,
) -> Result<()> {
    // Under a lost lock a prune may have moved what looks damaged: no verdict (see `crate::lock`).
    if !damaged.is_empty() {
        repo.ensure_locks_held()?;
    }
    let records: Vec<DamageRecord> = damaged
        .iter()
        .filter(|(_, (pack, _))| *pack != NO_PACK)
        .map(|(blob, (pack, why))| DamageRecord::now(*blob, *pack, why.clone()))
        .collect();
    if let Err(e) = repo.index().record_damage(&records) {
        r.warnings.push(format!(
            "the damage could not be recorded in the index ({e}): the next backup may deduplicate against it"
        ));
    }
    let (stale, recorded): (Vec<DamageRecord>, Vec<DamageRecord>) = repo
        .index()
        .damage_in_use()?
        .into_iter()
        .partition(|d| verified.contains(&d.pack) && !damaged.contains_key(&d.blob));
    if let Err(e) = repo.index().clear_damage(&stale) {
        r.warnings.push(format!(
            "a record of damage that this check disproved could not be removed ({e})"
        ));
    }
    for d in recorded {
        damaged.entry(d.blob).or_insert_with(|| {
            (
                d.pack,
                format!("recorded damaged on {}: {}", d.found, d.reason),
            )
        });
    }
    Ok(())
}

/// A delta blob whose base (directly or down its chain) is damaged cannot be decoded: it is damaged too, at
/// its own copy, so that the streams needing it are named and the next backup stores it again.
fn damage_through_bases(
    repo: &Repository,
    r: &mut CheckReport,
    damaged: &mut Damage,
) -> Result<()> {
    if damaged.is_empty() {
        return Ok(());
    }
    let bad: HashSet<Id> = damaged.keys().copied().collect();
    let deps = crate::delta::dependents(&repo.index(), &bad)?;
    for (blob, (pack, base)) in deps {
        r.errors.push(format!(
            "blob {blob} is a delta whose base {base} is damaged"
        ));
        damaged.insert(blob, (pack, format!("its delta base {base} is damaged")));
    }
    Ok(())
}

/// What to run about what was found.
fn add_hints(repo: &Repository, r: &mut CheckReport, damage: bool) -> Result<()> {
    if damage {
        r.hints.push(crate::restore::HEAL_HINT.to_string());
        r.hints.push("where the source no longer has that data, `cairn repair snapshots` drops the affected files from the snapshots (`--forget-damaged` removes those snapshots instead)".into());
    }
    if !r.read_errors.is_empty() {
        r.hints.push(format!(
            "{} objects could not be read for a reason that is not damage (permissions, I/O errors): fix the cause and run `cairn check` again; their data may be intact, so do not drop snapshots because of it",
            r.read_errors.len()
        ));
    }
    let superseded = repo.index().packs_with_superseded_damage()?.len();
    if superseded > 0 {
        r.hints.push(format!(
            "{superseded} packs still hold damaged copies that good copies have replaced: `cairn prune` removes them"
        ));
    }
    Ok(())
}

fn check_packs(repo: &Repository, r: &mut CheckReport, damaged: &mut Damage) -> Result<()> {
    let on_disk: BTreeMap<Id, u64> = repo.pack_files()?.into_iter().collect();
    let indexed = repo.index().packs()?;
    r.packs = indexed.len() as u64;
    let indexed_ids: HashSet<Id> = indexed.iter().map(|p| p.id).collect();
    // Each pack's trailer costs a few small reads: over an object store, round trips, so many packs are
    // read at once (a request per pack one after the other made most of a check's wall).
    let found = in_parallel(repo, || {
        indexed
            .par_iter()
            .map(|p| pack_problem(repo, p, on_disk.get(&p.id).copied()))
            .collect::<Vec<_>>()
    })?;
    for (p, found) in indexed.iter().zip(found) {
        let problem = match found? {
            PackFinding::Sound => continue,
            PackFinding::Unreadable(e) => {
                r.read_errors
                    .push(format!("pack {} cannot be read: {e}", p.id));
                continue;
            }
            PackFinding::Damaged(problem) => problem,
        };
        r.errors.push(format!("pack {} {problem}", p.id));
        for e in repo.index().blobs_in_pack(&p.id)? {
            damaged.insert(e.id, (p.id, format!("pack {problem}")));
        }
    }
    check_index_objects(repo, r)?;
    let uncovered = crate::index_sync::uncovered_packs(&repo.index())?;
    if !uncovered.is_empty() {
        r.warnings.push(format!(
            "{} packs are in no index object (left by an interrupted run, or written before index objects existed; `prune` or `repair index` lists them)",
            uncovered.len()
        ));
    }
    for id in on_disk.keys().filter(|id| !indexed_ids.contains(id)) {
        r.warnings.push(format!("pack {id} is not indexed (left by an interrupted run; `repair index` adopts it, `prune` removes it)"));
    }
    Ok(())
}

/// Reads every index object: one that does not decode, match its name or (encrypted) authenticate is an
/// error; the packs it listed are still found through their trailers.
fn check_index_objects(repo: &Repository, r: &mut CheckReport) -> Result<()> {
    let backend = repo.backend().as_ref();
    for (name, _) in backend.list(crate::backend::ObjectKind::Index)? {
        let Some(id) = Id::from_hex(&name) else {
            continue;
        };
        match crate::index_object::IndexObject::load(backend, &id) {
            Ok(_) => {}
            Err(e) if e.is_damage() => r.errors.push(format!(
                "index object {id}: {e} (its packs are read from their trailers; `prune` or `repair index` replaces it)"
            )),
            Err(e) => r.read_errors.push(format!("index object {id}: {e}")),
        }
    }
    Ok(())
}

/// Checks snapshot files against index rows; returns the snapshots that decode.
fn check_snapshot_files(repo: &Repository, r: &mut CheckReport) -> Result<Vec<(Id, Snapshot)>> {
    let rows: BTreeSet<Id> = repo.snapshots()?.into_iter().map(|(id, _)| id).collect();
    let mut good = Vec::new();
    let mut files = BTreeSet::new();
    for id in repo.snapshot_objects()? {
        files.insert(id);
        let indexed = rows.contains(&id);
        match repo.load_snapshot(&id) {
            Ok(s) => good.push((id, s)),
            Err(err) if err.is_damage() && !indexed => {
                // `repair index` cannot add a row for what does not decode, and prune refuses while it exists.
                r.errors.push(format!(
                    "snapshot {id}: {err} (no index row: it cannot be read or listed)"
                ));
                r.hints.push(format!(
                    "snapshot {id} is lost: `cairn forget {id}` removes it, so that prune can run"
                ));
                continue;
            }
            Err(err) if err.is_damage() => r.errors.push(format!("snapshot {id}: {err}")),
            Err(err) => r.read_errors.push(format!("snapshot {id}: {err}")),
        }
        if !indexed {
            r.errors.push(format!(
                "snapshot {id} has no index row (run `cairn repair index`)"
            ));
        }
    }
    for id in rows.difference(&files) {
        r.errors.push(format!(
            "snapshot {id} is in the index but its file is missing"
        ));
    }
    r.snapshots = good.len() as u64;
    Ok(good)
}

/// The repository's trees as their packs hold them: a check never trusts this host's tree cache, only
/// the copies it has itself just read from their packs into it (`verified`, see
/// [`crate::fetch::refresh_tree_cache`]).
struct Uncached<'a> {
    repo: &'a Repository,
    verified: Option<&'a Marks<'a>>,
}

impl walk::TreeSource for Uncached<'_> {
    fn read_tree(&self, id: &Id) -> Result<Tree> {
        match self.verified {
            Some(v) if v.contains(id)? => self.repo.read_tree(id),
            _ => self.repo.read_tree_uncached(id),
        }
    }
}

/// What [`check_packs`] finds about one indexed pack.
enum PackFinding {
    Sound,
    /// A read error that is not damage (permission, outage): reported, nothing recorded.
    Unreadable(Error),
    Damaged(String),
}

/// Checks pack `p`, `len` bytes in the repository (`None`: missing): its size and that its trailer lists
/// every blob the index places in it.
fn pack_problem(
    repo: &Repository,
    p: &crate::index::PackRow,
    len: Option<u64>,
) -> Result<PackFinding> {
    let damaged = |s: String| Ok(PackFinding::Damaged(s));
    let len = match len {
        None => return damaged("is missing".to_string()),
        Some(len) if len != p.size => {
            return damaged(format!("has {len} bytes, the index records {}", p.size))
        }
        Some(len) => len,
    };
    match pack::read_trailer(repo.backend().as_ref(), &p.id, len, repo.crypto()) {
        Err(e) if !e.is_damage() => Ok(PackFinding::Unreadable(e)),
        Err(e) => damaged(format!("trailer unreadable: {e}")),
        Ok(entries) => {
            let listed: HashSet<_> = entries.iter().collect();
            let expected = repo.with_reader(|r| r.blobs_in_pack(&p.id))?;
            let missing = expected.iter().filter(|e| !listed.contains(e)).count();
            if missing > 0 {
                damaged(format!(
                    "trailer does not list {missing} blobs the index places in it"
                ))
            } else {
                Ok(PackFinding::Sound)
            }
        }
    }
}

/// Runs `f` on a pool of as many threads as the backend wants small reads in flight.
fn in_parallel<T: Send>(repo: &Repository, f: impl FnOnce() -> T + Send) -> Result<T> {
    Ok(
        match crate::fetch::reader_pool(repo.backend().read_plan().small_parallel)? {
            Some(pool) => pool.install(f),
            None => f(),
        },
    )
}

/// Decodes every reachable tree once and checks that every chunk it names is indexed.
fn check_trees(
    repo: &Repository,
    snapshots: &[(Id, Snapshot)],
    r: &mut CheckReport,
    damaged: &mut Damage,
) -> Result<()> {
    let mut v = TreeCheck {
        repo,
        r,
        damaged,
        seen_trees: Marks::new(repo, "check_trees")?,
        seen_chunks: Marks::new(repo, "check_chunks")?,
    };
    let roots: Vec<Id> = snapshots
        .iter()
        .flat_map(|(_, s)| s.tree.into_iter().chain(s.stream_tree))
        .collect();
    // Over an object store, every tree is read from its pack first, a level at a time, instead of a
    // request per directory during the walk.
    let mut verified = Marks::new(repo, "check_trees_verified")?;
    crate::fetch::refresh_tree_cache(
        repo,
        &roots,
        &mut Marks::new(repo, "check_trees_read")?,
        &mut verified,
    )?;
    let source = Uncached {
        repo,
        verified: Some(&verified),
    };
    for root in &roots {
        walk::walk(&source, root, &mut v)?;
    }
    v.r.trees = v.seen_trees.len()?;
    let chunks = v.seen_chunks.in_table()?;
    check_chunks(repo, chunks, v.r, v.damaged)
}

/// Checks the chunks in `temp.<table>` with two queries, not a lookup per chunk: each is indexed, and a
/// delta's chain of bases is indexed and not too long. Rows are read a page at a time (in id order), so
/// neither the chunks nor the deltas among them are held in memory.
fn check_chunks(
    repo: &Repository,
    table: &str,
    r: &mut CheckReport,
    damaged: &mut Damage,
) -> Result<()> {
    let unindexed = format!(
        "SELECT s.id, NULL FROM temp.{table} s LEFT JOIN blobs b ON b.id = s.id
         LEFT JOIN packs p ON p.pack_no = b.pack_no WHERE p.id IS NULL AND s.id > ?1 ORDER BY s.id LIMIT 1000"
    );
    for_each_row(repo, &unindexed, |c, _| {
        r.errors
            .push(format!("chunk {c} is referenced but not indexed"));
        damaged.insert(c, (NO_PACK, "not indexed".into()));
        Ok(())
    })?;
    let deltas = format!(
        "SELECT s.id, p.id FROM temp.{table} s JOIN blobs b ON b.id = s.id
         JOIN packs p ON p.pack_no = b.pack_no WHERE b.kind = 2 AND s.id > ?1 ORDER BY s.id LIMIT 1000"
    );
    for_each_row(repo, &deltas, |c, pack| {
        if let Some(problem) = crate::delta::chain_problem(&repo.index(), &c)? {
            r.errors.push(format!("chunk {c}: {problem}"));
            damaged.insert(c, (pack.unwrap_or(NO_PACK), problem));
        }
        Ok(())
    })
}

/// Runs `sql` (rows of an id and an optional pack id, after the id `?1`, at most a page of them) page after
/// page, handing each row to `f` with the index unlocked.
fn for_each_row(
    repo: &Repository,
    sql: &str,
    mut f: impl FnMut(Id, Option<Id>) -> Result<()>,
) -> Result<()> {
    let bad = || Error::corrupt("index", "blob id");
    let mut after: Vec<u8> = Vec::new();
    loop {
        let page: Vec<(Vec<u8>, Option<Vec<u8>>)> = {
            let idx = repo.index();
            let mut st = idx.raw().prepare_cached(sql)?;
            let rows = st.query_map(params![after], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<std::result::Result<_, _>>()?
        };
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after = last.clone();
        for (id, pack) in page {
            let id = Id::from_slice(&id).ok_or_else(bad)?;
            let pack = pack
                .map(|p| Id::from_slice(&p).ok_or_else(bad))
                .transpose()?;
            f(id, pack)?;
        }
    }
}

/// The structural walk of [`check_trees`]: each tree once, however many snapshots share it.
struct TreeCheck<'a> {
    repo: &'a Repository,
    r: &'a mut CheckReport,
    damaged: &'a mut Damage,
    seen_trees: Marks<'a>,
    seen_chunks: Marks<'a>,
}

impl walk::Visitor for TreeCheck<'_> {
    fn before_tree(&mut self, id: &Id, _: Place) -> Result<Step> {
        self.seen_trees.descend_once(id)
    }

    fn tree_error(&mut self, t: &Id, _: Place, e: Error) -> Result<()> {
        if !e.is_damage() {
            self.r.read_errors.push(format!("tree {t}: {e}"));
            return Ok(());
        }
        self.r.errors.push(format!("tree {t}: {e}"));
        let pack = self.repo.index().lookup(t)?.map_or(NO_PACK, |l| l.pack);
        self.damaged.insert(*t, (pack, e.to_string()));
        Ok(())
    }

    fn entry(&mut self, _: Place, node: &Node) -> Result<Step> {
        if let NodeKind::File { chunks, .. } = &node.kind {
            for c in chunks {
                self.seen_chunks.insert(c)?;
            }
        }
        Ok(Step::Descend)
    }
}

/// For each damaged blob, the `snapshot: path` entries that need it (trees included: a damaged tree makes
/// everything under it unreachable, so its own path is named). Trees that cannot be read are passed over.
fn affected_paths(
    repo: &Repository,
    snapshots: &[(Id, Snapshot)],
    damaged: &HashSet<Id>,
) -> Result<BTreeMap<Id, Vec<String>>> {
    let mut v = Affected {
        damaged,
        out: BTreeMap::new(),
        snapshot: String::new(),
        prefix: "",
    };
    for (sid, snap) in snapshots {
        v.snapshot = sid.short();
        for (root, prefix) in [(snap.tree, ""), (snap.stream_tree, "stream:")] {
            let Some(root) = root else { continue };
            v.prefix = prefix;
            walk::walk(
                &Uncached {
                    repo,
                    verified: None,
                },
                &root,
                &mut v,
            )?;
        }
    }
    Ok(v.out)
}

/// The walk of [`affected_paths`] through one root of one snapshot.
struct Affected<'a> {
    damaged: &'a HashSet<Id>,
    out: BTreeMap<Id, Vec<String>>,
    snapshot: String,
    prefix: &'static str,
}

impl Affected<'_> {
    fn note(&mut self, blob: Id, at: Place) {
        let path = at.shown_under(self.prefix);
        let shown = if path.is_empty() { "/" } else { &path };
        self.out
            .entry(blob)
            .or_default()
            .push(format!("{}: {shown}", self.snapshot));
    }
}

impl walk::Visitor for Affected<'_> {
    fn before_tree(&mut self, id: &Id, at: Place) -> Result<Step> {
        if self.damaged.contains(id) {
            self.note(*id, at);
            return Ok(Step::Skip);
        }
        Ok(Step::Descend)
    }

    fn tree_error(&mut self, _: &Id, _: Place, _: Error) -> Result<()> {
        Ok(())
    }

    fn entry(&mut self, at: Place, node: &Node) -> Result<Step> {
        if let NodeKind::File { chunks, .. } = &node.kind {
            let bad: BTreeSet<Id> = chunks
                .iter()
                .filter(|c| self.damaged.contains(c))
                .copied()
                .collect();
            for c in bad {
                self.note(c, at);
            }
        }
        Ok(Step::Descend)
    }
}
