//! Forgetting snapshots and garbage collection (`forget`, `prune`).
//!
//! Both run under the repository's exclusive lock, so no backup writes while they decide what is unused and
//! no reader (check, restore, dump, ls, export hold shared locks) has a pack deleted under it; backups and
//! readers fail on the lock rather than race a deletion.
//!
//! Roots: the snapshot objects themselves (the files under `snapshots/`), not only the index rows that cache
//! them. A snapshot file without a row (a backup killed between writing it and committing its row, or whose
//! row could not be written) is a snapshot whose data is all durable: prune indexes it on the spot once it
//! decodes and matches its name, and keeps its data. A snapshot file that does not decode stops prune, since
//! what it references cannot be known. Rows whose file is missing are roots too (`check` reports them).
//!
//! Prune marks every blob reachable from the roots in a set that moves from memory into a SQLite temporary
//! table kept in a file as it grows ([`crate::marks`]: memory stays flat however many chunks there are),
//! then: deletes packs with nothing reachable; repacks packs whose unreachable share exceeds `max_unused` by
//! copying the reachable blobs' stored bytes (verified first) into new packs; and removes pack files the
//! index does not know (left by interrupted backups) and temporary files. Ordering: new packs are durable and their index rows committed before an old pack leaves the index,
//! and a pack leaves the index (committed) before its file is deleted. A prune killed at any instant leaves
//! only packs that are unindexed or wholly unused, which the next prune removes.
//!
//! Index objects (format-spec "Index objects"): the cache is first synced in full under the lock; objects
//! listing a pack about to go are replaced by objects listing the rest (plus needed packs no object lists),
//! and the replacements are durable before the old objects, and then the packs, are deleted. A pack the
//! repack itself wrote is never deleted, even when an earlier run left one of the same content (and id).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use rusqlite::params;
use serde::Serialize;

use crate::backend::ObjectKind;
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::index_sync;
use crate::lock;
use crate::marks::{MarkAll, Marks};
use crate::pack;
use crate::pack_writer::PackWriter;
use crate::repo::Repository;
use crate::retention::{self, Candidate, Decision, KeepPolicy};
use crate::snapshot::Snapshot;
use crate::walk;

/// The tag of a safety snapshot, taken before a restore overwrites a database (`--replace`) or an instance's
/// files (`--in-place`). A retention policy never removes one unless `include_safety`; naming it by id does.
pub const SAFETY_TAG: &str = "safety";

/// The reason a safety snapshot is kept, as `forget` reports it.
const SAFETY_REASON: &str = "safety (remove it by id, or with --include-safety)";

/// The reason a snapshot dated in the future is kept, as `forget` reports it.
const FUTURE_REASON: &str =
    "dated in the future (a skewed clock?): not judged until then; remove it by id";

/// Which snapshots `forget` considers and what it keeps.
#[derive(Debug, Clone, Default)]
pub struct ForgetOptions {
    pub policy: KeepPolicy,
    /// Only snapshots of this instance.
    pub instance: Option<String>,
    /// Only snapshots carrying all of these tags.
    pub tags: Vec<String>,
    pub dry_run: bool,
    /// Apply the policy to safety snapshots too (otherwise they are kept and use no `--keep-*` slot).
    pub include_safety: bool,
    /// Let the policy remove every snapshot of a group (`--unsafe-allow-remove-all`); refused otherwise.
    pub allow_remove_all: bool,
}

/// The decisions for one group of snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetGroup {
    pub group: String,
    pub decisions: Vec<Decision>,
}

/// The snapshots of one group: those the policy judges (and which of them are partial), and those kept
/// aside with the reason why.
#[derive(Default)]
struct GroupMembers {
    judged: Vec<Candidate>,
    partial: HashSet<String>,
    aside: Vec<(Candidate, &'static str)>,
}

/// Applies a retention policy per group (instance, else host + paths + stream names) and removes what it
/// does not keep. Refused before anything is removed: no rule at all, and a policy that would remove every snapshot
/// of a group (`--keep-last 0`, or `--keep-tag` matching none) unless `allow_remove_all`, since a typo in a
/// script must not empty a repository.
///
/// Kept aside, using no `--keep-*` slot: safety snapshots (unless `include_safety`), and snapshots dated
/// in the future ([`crate::schedule::is_future`]): one host's skewed clock or a `--force-time` typo must not
/// take the slots of the real snapshots, nor anchor `--keep-within`, so that the newest real snapshot is
/// never forgotten because of it.
///
/// Partial snapshots (files that could not be read) never push a complete one out: the policy is applied
/// to the complete snapshots alone as well, and what either application keeps is kept. A run of failing
/// reads then cannot leave only partial snapshots behind.
pub fn forget(repo: &Repository, opts: &ForgetOptions) -> Result<Vec<ForgetGroup>> {
    if opts.policy.is_empty() {
        return Err(Error::Invalid(
            "no retention rule given (e.g. --keep-daily 7); nothing was removed".into(),
        ));
    }
    let _lock = if opts.dry_run {
        None
    } else {
        repo.require_writable()?;
        Some(lock::acquire_on(repo, true, "forget")?)
    };
    let groups = collect_groups(repo, opts)?;
    let mut out = Vec::new();
    for (group, members) in groups {
        let mut decisions = retention::apply(&opts.policy, &members.judged);
        keep_complete(&opts.policy, &members, &mut decisions);
        if !opts.allow_remove_all && !decisions.is_empty() && decisions.iter().all(|d| !d.keep) {
            return Err(remove_all_refused(&opts.policy, &group));
        }
        with_aside(&mut decisions, &members.judged, members.aside);
        out.push(ForgetGroup { group, decisions });
    }
    if !opts.dry_run {
        for g in &out {
            for d in g.decisions.iter().filter(|d| !d.keep) {
                let id =
                    Id::from_hex(&d.id).ok_or_else(|| Error::corrupt("index", "snapshot id"))?;
                repo.remove_snapshot(&id)?;
            }
        }
    }
    Ok(out)
}

/// The snapshots `opts` selects, in their groups, each judged or kept aside (see [`forget`]).
fn collect_groups(
    repo: &Repository,
    opts: &ForgetOptions,
) -> Result<BTreeMap<String, GroupMembers>> {
    let now = chrono::Utc::now();
    let mut groups: BTreeMap<String, GroupMembers> = BTreeMap::new();
    for (id, s) in repo.snapshots()? {
        if opts
            .instance
            .as_ref()
            .is_some_and(|i| s.instance.as_ref() != Some(i))
        {
            continue;
        }
        if !opts.tags.iter().all(|t| s.tags.contains(t)) {
            continue;
        }
        let key = retention::group_key(s.instance.as_deref(), &s.host, &s.paths, &s.stream_names());
        let cand = Candidate {
            id: id.to_hex(),
            time: s.time,
            tags: s.tags.clone(),
        };
        let members = groups.entry(key).or_default();
        if !opts.include_safety && s.tags.iter().any(|t| t == SAFETY_TAG) {
            members.aside.push((cand, SAFETY_REASON));
        } else if crate::schedule::is_future(s.time, now) {
            members.aside.push((cand, FUTURE_REASON));
        } else {
            if s.partial {
                members.partial.insert(cand.id.clone());
            }
            members.judged.push(cand);
        }
    }
    Ok(groups)
}

/// Keeps, besides what the policy keeps, what it keeps among the group's complete snapshots alone, with
/// the reasons marked `(complete)`.
fn keep_complete(policy: &KeepPolicy, members: &GroupMembers, decisions: &mut [Decision]) {
    if members.partial.is_empty() {
        return;
    }
    let complete: Vec<Candidate> = members
        .judged
        .iter()
        .filter(|c| !members.partial.contains(&c.id))
        .cloned()
        .collect();
    let kept: std::collections::HashMap<String, Vec<String>> = retention::apply(policy, &complete)
        .into_iter()
        .filter(|d| d.keep)
        .map(|d| (d.id, d.reasons))
        .collect();
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        if let Some(reasons) = kept.get(&d.id) {
            d.keep = true;
            d.reasons = reasons.iter().map(|r| format!("{r} (complete)")).collect();
        }
    }
}

/// The refusal of a policy that would empty `group`.
fn remove_all_refused(policy: &KeepPolicy, group: &str) -> Error {
    let why = if policy.keeps_nothing() {
        "the policy keeps no snapshot (every --keep-* rule is 0)".to_string()
    } else {
        format!("the policy would remove every snapshot of group {group}")
    };
    Error::Invalid(format!(
        "{why}; nothing was removed. To remove them all, say so with --unsafe-allow-remove-all, or name \
         them: cairn forget ID..."
    ))
}

/// Adds the snapshots kept aside to a group's decisions, newest first like the rest.
fn with_aside(
    decisions: &mut Vec<Decision>,
    judged: &[Candidate],
    aside: Vec<(Candidate, &'static str)>,
) {
    if aside.is_empty() {
        return;
    }
    let mut time: std::collections::HashMap<String, _> =
        judged.iter().map(|c| (c.id.clone(), c.time)).collect();
    for (c, reason) in aside {
        time.insert(c.id.clone(), c.time);
        decisions.push(Decision {
            id: c.id,
            keep: true,
            reasons: vec![reason.into()],
        });
    }
    decisions.sort_by(|a, b| time[&b.id].cmp(&time[&a.id]).then_with(|| a.id.cmp(&b.id)));
}

/// Removes the named snapshots (safety snapshots included: naming one is the way to remove it), under the
/// exclusive lock; with `dry_run` nothing changes. Space is reclaimed by prune.
pub fn forget_ids(repo: &Repository, ids: &[Id], dry_run: bool) -> Result<()> {
    if dry_run {
        return Ok(());
    }
    repo.require_writable()?;
    let _lock = lock::acquire_on(repo, true, "forget")?;
    for id in ids {
        repo.remove_snapshot(id)?;
    }
    Ok(())
}

/// The snapshot `forget ID` names when the usual resolution cannot load it (`spec`: hex id or unique
/// prefix, among index rows and snapshot objects alike): an object that does not decode has no row (the
/// index caches only what decodes) and prune refuses to run while it exists, and a row may outlive its
/// object; naming either to `forget` is how it leaves. Returns the id and, when the object is damaged or
/// missing, why; a read that fails for another reason (permission, outage) is an error, since the object
/// may be intact. `None` when nothing matches.
pub fn forgettable_snapshot(repo: &Repository, spec: &str) -> Result<Option<(Id, Option<Error>)>> {
    let spec = spec.to_ascii_lowercase();
    let mut matches: Vec<Id> = repo
        .snapshot_objects()?
        .into_iter()
        .filter(|id| id.to_hex().starts_with(&spec))
        .collect();
    for hex in repo.index().snapshot_ids_with_prefix(&spec)? {
        let id = Id::from_hex(&hex).ok_or_else(|| Error::corrupt("index", "snapshot id"))?;
        if !matches.contains(&id) {
            matches.push(id);
        }
    }
    let id = match matches.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        many => {
            return Err(Error::Ambiguous {
                prefix: spec,
                matches: many
                    .iter()
                    .map(|id| id.to_hex()[..12].to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    match repo.load_snapshot(&id) {
        Ok(_) => Ok(Some((id, None))),
        Err(e) if e.is_damage() => Ok(Some((id, Some(e)))),
        Err(e) => Err(e),
    }
}

/// Prune settings.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// Repack packs whose unused share exceeds this percentage.
    pub max_unused_percent: f64,
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused_percent: 5.0,
            dry_run: false,
        }
    }
}

/// What prune did (or, with `dry_run`, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    pub blobs_used: u64,
    pub packs_total: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    pub unindexed_removed: u64,
    /// Snapshot files that had no index row and were indexed (with `dry_run`: would be).
    pub snapshots_adopted: u64,
    /// Index objects written (for the packs that remain of those replaced, and for needed packs no index
    /// object listed) and index objects deleted (replaced, or superseded by an earlier run).
    pub index_objects_written: u64,
    pub index_objects_deleted: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_freed: u64,
    pub bytes_repacked: u64,
    /// Archived WAL files older than every kept base backup of their instance (with `dry_run`: that would
    /// be removed).
    pub wal_files_removed: u64,
    pub dry_run: bool,
    pub duration_s: f64,
}

/// One pack's usage.
struct PackUse {
    id: Id,
    size: u64,
    used_bytes: u64,
    used_blobs: u64,
}

impl PackUse {
    /// Bytes a repack would free: everything but the reachable blobs and the framing they need (a sealed
    /// trailer's envelope too).
    fn unused(&self, crypto: &crate::crypto::Crypto) -> u64 {
        let count = u32::try_from(self.used_blobs).unwrap_or(u32::MAX);
        let framing =
            (pack::PACK_MAGIC.len() + pack::FOOTER_LEN) as u64 + pack::entries_len(count, crypto);
        self.size.saturating_sub(self.used_bytes + framing)
    }
}

/// Runs prune under the exclusive lock.
pub fn prune(repo: &Repository, opts: PruneOptions) -> Result<PruneReport> {
    let started = Instant::now();
    if !opts.dry_run {
        repo.require_writable()?;
    }
    let lock = lock::acquire(repo.backend(), true, "prune")?;
    repo.watch_lock(&lock);
    let mut r = PruneReport {
        dry_run: opts.dry_run,
        ..PruneReport::default()
    };
    if !opts.dry_run {
        // Under the exclusive lock the cache is brought to exactly what the repository holds (other hosts'
        // index objects and packs), and what an interrupted prune left superseded goes.
        index_sync::sync(repo, true)?;
        r.index_objects_deleted += index_sync::delete_superseded(repo)?;
    }
    // WAL no kept base backup needs goes first, so that its data is garbage below.
    r.wal_files_removed = crate::pitr::prune_wal(repo, opts.dry_run)?;
    let (roots, adopted) = roots(repo, !opts.dry_run)?;
    r.snapshots_adopted = adopted;
    let (_used, blobs_used) = mark(repo, roots)?;
    r.blobs_used = blobs_used;
    let usage = pack_usage(repo)?;
    let on_disk = repo.pack_files()?;
    r.packs_total = usage.len() as u64;
    r.bytes_before = on_disk.iter().map(|(_, n)| n).sum();
    let indexed: std::collections::HashSet<Id> = usage.iter().map(|u| u.id).collect();
    let unindexed: Vec<(Id, u64)> = on_disk
        .into_iter()
        .filter(|(id, _)| !indexed.contains(id))
        .collect();
    let (empty, partly): (Vec<&PackUse>, Vec<&PackUse>) = usage
        .iter()
        .filter(|u| u.unused(repo.crypto()) > 0)
        .partition(|u| u.used_blobs == 0);
    // Packs holding damaged copies that good ones replaced go whatever their share (format-spec, "Index").
    let rotten = repo.index().packs_with_superseded_damage()?;
    let to_repack: Vec<&PackUse> = partly
        .into_iter()
        .filter(|u| {
            u.unused(repo.crypto()) as f64 * 100.0 > opts.max_unused_percent * u.size as f64
                || rotten.contains(&u.id)
        })
        .collect();
    r.packs_deleted = empty.len() as u64;
    r.packs_repacked = to_repack.len() as u64;
    r.unindexed_removed = unindexed.len() as u64;
    r.bytes_repacked = to_repack.iter().map(|u| u.used_bytes).sum();
    if opts.dry_run {
        let freed: u64 = empty.iter().chain(&to_repack).map(|u| u.size).sum::<u64>()
            + unindexed.iter().map(|(_, n)| n).sum::<u64>();
        r.bytes_freed = freed.saturating_sub(r.bytes_repacked);
        r.bytes_after = r.bytes_before - r.bytes_freed;
        r.duration_s = started.elapsed().as_secs_f64();
        return Ok(r);
    }
    // Packs still needed that no index object lists (a run stopped before writing its index object, or a
    // repository from before index objects): covered now, unless repacked. Uncovered packs nothing needs are
    // in `empty` and go.
    let uncovered = index_sync::uncovered_packs(&repo.index())?;
    let repacked: HashSet<Id> = to_repack.iter().map(|u| u.id).collect();
    let cover: HashSet<Id> = usage
        .iter()
        .filter(|u| u.used_blobs > 0 && uncovered.contains(&u.id) && !repacked.contains(&u.id))
        .map(|u| u.id)
        .collect();
    let new_packs = repack(repo, &to_repack)?;
    r.packs_written = new_packs.len() as u64;
    // A pack is named by its content: a repack can write a pack that exists already (one an interrupted
    // prune wrote, left unused or unindexed), which must then not be deleted as garbage.
    let doomed = |id: &Id| !new_packs.contains(id);
    // The repacked blobs are in durable packs listed by the writer's index objects; now the objects listing
    // packs about to go are replaced, and only then are the packs deleted.
    let dropping: HashSet<Id> = empty
        .iter()
        .chain(&to_repack)
        .map(|u| u.id)
        .filter(doomed)
        .collect();
    let (written, deleted) = index_sync::rewrite_without(repo, &dropping, &cover)?;
    r.index_objects_written += written;
    r.index_objects_deleted += deleted + index_sync::delete_damaged(repo)?;
    for id in &dropping {
        repo.index().remove_pack(id)?;
        repo.delete_object(ObjectKind::Pack, &id.to_hex())?;
    }
    for (id, _) in unindexed.iter().filter(|(id, _)| doomed(id)) {
        repo.delete_object(ObjectKind::Pack, &id.to_hex())?;
    }
    // Safe: we hold the exclusive lock, so no write of this repository is under way.
    repo.backend().remove_stale_temporaries()?;
    r.bytes_after = repo.pack_files()?.iter().map(|(_, n)| n).sum();
    r.bytes_freed = r.bytes_before.saturating_sub(r.bytes_after);
    r.duration_s = started.elapsed().as_secs_f64();
    Ok(r)
}

/// The root trees of every snapshot: those of the index rows and of the snapshot files, which are the source
/// of truth. A file without a row is indexed when `adopt` (see the module docs); one that does not decode
/// stops prune. Returns the roots and how many files had no row.
fn roots(repo: &Repository, adopt: bool) -> Result<(Vec<Id>, u64)> {
    let rows = repo.snapshots()?;
    let indexed: std::collections::HashSet<Id> = rows.iter().map(|(id, _)| *id).collect();
    let mut snaps: Vec<Snapshot> = rows.into_iter().map(|(_, s)| s).collect();
    let mut adopted = 0;
    for id in repo.snapshot_objects()? {
        if indexed.contains(&id) {
            continue;
        }
        let snap = repo.load_snapshot(&id).map_err(|e| {
            let fix = if e.is_damage() {
                format!("; if it is lost, `cairn forget {id}` removes it")
            } else {
                String::new()
            };
            Error::Invalid(format!(
                "prune refused: snapshot file {id} has no index row and cannot be read ({e}), so the data it needs is unknown{fix}"
            ))
        })?;
        if adopt {
            repo.index().add_snapshot(&snap, &id.to_hex())?;
        }
        adopted += 1;
        snaps.push(snap);
    }
    let mut roots: Vec<Id> = snaps
        .into_iter()
        .flat_map(|s| s.tree.into_iter().chain(s.stream_tree))
        .collect();
    // Archived WAL (format-spec "WAL objects") keeps its data like a snapshot does.
    roots.extend(crate::wal::gc_roots(repo)?);
    Ok((roots, adopted))
}

/// Marks every blob reachable from `roots` in `temp.used` (the set lives as long as the returned value; the
/// pack usage and the repack read it by that name); returns it with its size. A referenced blob that is not
/// indexed, or a tree that does not decode, stops prune: deciding what is garbage in a damaged repository
/// could delete the only copy of something.
fn mark(repo: &Repository, roots: Vec<Id>) -> Result<(Marks<'_>, u64)> {
    let mut marker = MarkAll {
        marks: Marks::new(repo, "used")?,
        on_tree_error: |id, e| refuse(&format!("tree {id}: {e}")),
    };
    for root in &roots {
        walk::walk(repo, root, &mut marker)?;
    }
    let mut used = marker.marks;
    used.in_table()?;
    let idx = repo.index();
    // A delta blob keeps its base alive, transitively (format-spec section 5.1).
    crate::delta::mark_bases(&idx)?;
    let missing: i64 = idx.raw().query_row(
        "SELECT count(*) FROM temp.used u WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.id = u.id)",
        [],
        |r| r.get(0),
    )?;
    drop(idx);
    if missing > 0 {
        return Err(refuse(&format!(
            "{missing} referenced blobs are not indexed"
        )));
    }
    let count = used.len()?;
    Ok((used, count))
}

fn refuse(why: &str) -> Error {
    Error::Invalid(format!(
        "prune refused: {why}; run `cairn check` and `cairn repair` first"
    ))
}

/// Per pack: file size and the stored bytes and count of its reachable blobs.
fn pack_usage(repo: &Repository) -> Result<Vec<PackUse>> {
    let idx = repo.index();
    let mut st = idx.raw().prepare(
        "SELECT p.id, p.size,
                coalesce(sum(CASE WHEN u.id IS NOT NULL THEN b.stored_len END), 0),
                count(u.id)
         FROM packs p
         LEFT JOIN blobs b ON b.pack_no = p.pack_no
         LEFT JOIN temp.used u ON u.id = b.id
         GROUP BY p.pack_no",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    rows.map(|row| {
        let (id, size, used_bytes, used_blobs) = row?;
        Ok(PackUse {
            id: Id::from_slice(&id).ok_or_else(|| Error::corrupt("index", "pack id"))?,
            size: size as u64,
            used_bytes: used_bytes as u64,
            used_blobs: used_blobs as u64,
        })
    })
    .collect()
}

/// Copies the reachable blobs of `packs` into new packs (verifying each); returns the packs written.
fn repack(repo: &Repository, packs: &[&PackUse]) -> Result<HashSet<Id>> {
    if packs.is_empty() {
        return Ok(HashSet::new());
    }
    PackWriter::repack_scope(repo, |writer| {
        for u in packs {
            let used: Vec<crate::index::Location> = {
                let idx = repo.index();
                let mut st = idx.raw().prepare_cached(
                    "SELECT b.id FROM blobs b JOIN packs p ON p.pack_no = b.pack_no JOIN temp.used u ON u.id = b.id WHERE p.id = ?1",
                )?;
                let ids: Vec<Vec<u8>> = st
                    .query_map(params![&u.id.0[..]], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut out = Vec::new();
                for id in ids {
                    let id =
                        Id::from_slice(&id).ok_or_else(|| Error::corrupt("index", "blob id"))?;
                    if let Some(loc) = idx.lookup(&id)? {
                        out.push(loc);
                    }
                }
                out
            };
            // Ranged reads of the used blobs, merged as a restore merges them: never the whole pack at
            // once (its size is whatever its writer made it), and one request for a default pack whose
            // used blobs lie close together.
            let reader = repo
                .backend()
                .open_reader(ObjectKind::Pack, &u.id.to_hex())?;
            for run in crate::fetch::plan_runs(&used, repo.backend().read_plan()) {
                let bytes =
                    reader
                        .read_at(run.start, run.end - run.start)
                        .map_err(|err| match err {
                            Error::Io { source, .. }
                                if source.kind() == std::io::ErrorKind::UnexpectedEof =>
                            {
                                Error::corrupt(format!("pack {}", u.id), "blob beyond end of file")
                            }
                            e => e,
                        })?;
                for &i in &run.blobs {
                    let loc = &used[i];
                    let at = (loc.entry.offset - run.start) as usize;
                    let stored = bytes
                        .get(at..at + loc.entry.stored_len as usize)
                        .ok_or_else(|| {
                            Error::corrupt(format!("pack {}", u.id), "short ranged read")
                        })?;
                    repo.decode_stored(loc, stored)
                        .map_err(|err| refuse(&format!("pack {}: {err}", u.id)))?;
                    writer.save_stored(&loc.entry, stored)?;
                }
            }
        }
        writer.flush()?;
        Ok(writer.written_packs())
    })
}
