//! The index cache's record of index objects, and bringing the cache up to date from them
//! (format-spec/README.md, "Index objects").
//!
//! The cache (the SQLite index) remembers every index object it has merged (`index_objects`, with
//! `superseded = 1` for those a newer object replaces) and which packs each lists (`index_object_packs`).
//! [`sync`] lists `index/`, reads only the objects it has not seen, merges their packs, and forgets the rows
//! of objects that are gone. Packs that exist but are in no index object (a run stopped between making a
//! pack durable and writing its index object, or a repository written before index objects existed) are
//! found by the pack listing and read from their trailers, as before index objects: nothing that is stored
//! is ever invisible. Such packs are "uncovered"; prune covers the ones still needed by writing an index
//! object for them and removes the others.
//!
//! Invariant: a cache row for a pack exists only if the pack was listed or an index object names it; the
//! mapping rows say which objects name which packs, so prune knows which objects to rewrite.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, OptionalExtension};

use crate::backend::ObjectKind;
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::index::Index;
use crate::index_object::IndexObject;
use crate::pack;
use crate::repo::Repository;

/// Counters in the cache's `meta` table: how many index objects and pack trailers it was built from
/// (cumulative), so a test or a curious user can see that a sync read only what was new.
pub const OBJECTS_READ: &str = "index_objects_read";
pub const TRAILERS_READ: &str = "pack_trailers_read";

/// What one sync did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub objects_read: u64,
    pub objects_dropped: u64,
    pub trailers_read: u64,
    /// Index objects that could not be used (damaged); their packs were read from the trailers instead.
    pub objects_damaged: u64,
}

/// True if the cache has the index-object tables (an older cache opened read-only has not).
fn has_tables(idx: &Index) -> Result<bool> {
    Ok(idx
        .raw()
        .prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'index_object_packs'",
        )?
        .exists([])?)
}

fn id_of(b: Vec<u8>) -> Result<Id> {
    Id::from_slice(&b).ok_or_else(|| Error::corrupt("index", "index object id"))
}

/// Every index object the cache has seen: id -> superseded.
pub fn seen(idx: &Index) -> Result<HashMap<Id, bool>> {
    if !has_tables(idx)? {
        return Ok(HashMap::new());
    }
    let mut st = idx
        .raw()
        .prepare("SELECT id, superseded FROM index_objects")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, bool>(1)?)))?;
    rows.map(|r| {
        let (id, sup) = r?;
        Ok((id_of(id)?, sup))
    })
    .collect()
}

/// Records an index object whose packs the cache holds already (the writer indexed each as it became
/// durable): only the object and which packs it lists.
pub fn record_listed(tx: &rusqlite::Transaction, id: &Id, obj: &IndexObject) -> Result<()> {
    for s in &obj.supersedes {
        mark_superseded(tx, s)?;
    }
    tx.execute(
        "INSERT OR REPLACE INTO index_objects(id, superseded) VALUES (?1, 0)",
        params![&id.0[..]],
    )?;
    let mut st = tx
        .prepare_cached("INSERT OR IGNORE INTO index_object_packs(object, pack) VALUES (?1, ?2)")?;
    for p in &obj.packs {
        st.execute(params![&id.0[..], &p.id.0[..]])?;
    }
    Ok(())
}

/// Marks `id` superseded: its packs are no longer covered by it, and it is never merged again.
pub fn mark_superseded(tx: &rusqlite::Transaction, id: &Id) -> Result<()> {
    tx.execute(
        "DELETE FROM index_object_packs WHERE object = ?1",
        params![&id.0[..]],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO index_objects(id, superseded) VALUES (?1, 1)",
        params![&id.0[..]],
    )?;
    Ok(())
}

/// Forgets an index object that is gone from the repository.
pub fn forget_object(tx: &rusqlite::Transaction, id: &Id) -> Result<()> {
    tx.execute(
        "DELETE FROM index_object_packs WHERE object = ?1",
        params![&id.0[..]],
    )?;
    tx.execute(
        "DELETE FROM index_objects WHERE id = ?1",
        params![&id.0[..]],
    )?;
    Ok(())
}

/// Indexed packs that no (live) index object lists.
pub fn uncovered_packs(idx: &Index) -> Result<HashSet<Id>> {
    let sql = if has_tables(idx)? {
        "SELECT p.id FROM packs p WHERE NOT EXISTS (SELECT 1 FROM index_object_packs m WHERE m.pack = p.id)"
    } else {
        "SELECT id FROM packs"
    };
    let mut st = idx.raw().prepare(sql)?;
    let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    rows.map(|r| id_of(r?)).collect()
}

/// The live index objects that list any of `packs`.
pub fn objects_listing(idx: &Index, packs: &HashSet<Id>) -> Result<HashSet<Id>> {
    if !has_tables(idx)? {
        return Ok(HashSet::new());
    }
    let mut st = idx
        .raw()
        .prepare("SELECT object, pack FROM index_object_packs")?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = HashSet::new();
    for r in rows {
        let (obj, pack) = r?;
        if packs.contains(&id_of(pack)?) {
            out.insert(id_of(obj)?);
        }
    }
    Ok(out)
}

/// A cumulative counter of the cache (0 when absent).
pub fn counter(idx: &Index, key: &str) -> Result<u64> {
    let v: Option<String> = idx
        .raw()
        .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn bump(tx: &rusqlite::Transaction, key: &str, by: u64) -> Result<()> {
    if by == 0 {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + ?2 AS TEXT)",
        params![key, by.to_string()],
    )?;
    Ok(())
}

/// Brings the cache's packs and blobs up to date with the repository. Reads the index objects it has not
/// seen and forgets those that are gone; if `full` or anything changed it also lists the packs: rows of
/// packs no longer stored go first, then the new objects' packs are added (only those stored), and stored
/// packs the cache does not know are read from their trailers (three ranged reads each).
///
/// When packs were deleted (a prune, on any host), every live object is merged again: the cache keeps one
/// location per blob, and the copy it had may have been in a deleted pack while another stored pack holds
/// the blob (two hosts stored it at once, and the pruning host's cache knew the other copy); re-merging
/// finds that copy. Damaged index objects and packs are left out (`check` reports them); any other read
/// error stops the sync, since leaving data out of the cache could let prune delete it.
pub fn sync(repo: &Repository, full: bool) -> Result<SyncStats> {
    let backend = repo.backend().as_ref();
    let listed: HashSet<Id> = backend
        .list(ObjectKind::Index)?
        .into_iter()
        .filter_map(|(n, _)| Id::from_hex(&n))
        .collect();
    let seen = seen(&repo.index())?;
    let new: Vec<Id> = listed
        .iter()
        .filter(|id| !seen.contains_key(id))
        .copied()
        .collect();
    let gone: Vec<Id> = seen
        .keys()
        .filter(|id| !listed.contains(id))
        .copied()
        .collect();
    let mut stats = SyncStats::default();
    if !full && new.is_empty() && gone.is_empty() {
        return Ok(stats);
    }
    let packs: Vec<(Id, u64)> = repo.pack_files()?;
    let stored: HashSet<Id> = packs.iter().map(|(id, _)| *id).collect();
    let known: HashSet<Id> = repo.index().packs()?.into_iter().map(|p| p.id).collect();
    let removed: Vec<Id> = known.difference(&stored).copied().collect();
    for gone in &removed {
        repo.index().remove_pack(gone)?;
    }
    let mut objects = Vec::new();
    for id in new {
        match IndexObject::load(backend, &id) {
            Ok(o) => objects.push((id, o)),
            Err(e) if e.is_damage() => stats.objects_damaged += 1,
            Err(e) => return Err(e),
        }
    }
    let superseded: HashSet<Id> = objects
        .iter()
        .flat_map(|(_, o)| o.supersedes.iter().copied())
        .chain(seen.iter().filter(|(_, s)| **s).map(|(id, _)| *id))
        .collect();
    if !removed.is_empty() {
        // Every live object already merged is read again (see above).
        for id in listed.iter().filter(|id| {
            seen.get(id) == Some(&false) && !superseded.contains(id) && !gone.contains(id)
        }) {
            match IndexObject::load(backend, id) {
                Ok(o) => objects.push((*id, o)),
                Err(e) if e.is_damage() => stats.objects_damaged += 1,
                Err(e) => return Err(e),
            }
        }
    }
    stats.objects_read = objects.len() as u64;
    stats.objects_dropped = gone.len() as u64;
    repo.index().transaction(|tx| {
        for (id, o) in &objects {
            for s in &o.supersedes {
                mark_superseded(tx, s)?;
            }
            if superseded.contains(id) {
                mark_superseded(tx, id)?;
            }
        }
        for (id, o) in objects.iter().filter(|(id, _)| !superseded.contains(id)) {
            for p in o.packs.iter().filter(|p| stored.contains(&p.id)) {
                Index::insert_pack(tx, p.id, p.size, &p.entries)?;
            }
            record_listed(tx, id, o)?;
        }
        for id in &gone {
            forget_object(tx, id)?;
        }
        bump(tx, OBJECTS_READ, stats.objects_read)
    })?;
    stats.trailers_read = read_unknown_trailers(repo, &packs)?;
    Ok(stats)
}

/// Adds the stored packs the cache has no row for, from their trailers; returns how many were read.
fn read_unknown_trailers(repo: &Repository, packs: &[(Id, u64)]) -> Result<u64> {
    let known: HashSet<Id> = repo.index().packs()?.into_iter().map(|p| p.id).collect();
    let mut read = 0;
    for (id, size) in packs.iter().filter(|(id, _)| !known.contains(id)) {
        match pack::read_trailer(repo.backend().as_ref(), id, *size, repo.crypto()) {
            Ok(entries) => {
                read += 1;
                repo.index().add_pack(*id, *size, &entries)?;
            }
            Err(e) if e.is_damage() => {}
            Err(e) => return Err(e),
        }
    }
    repo.index()
        .transaction(|tx| bump(tx, TRAILERS_READ, read))?;
    Ok(read)
}

/// Writes `packs` as index objects (bounded in size, see [`crate::index_object::split`]), the last one
/// superseding `supersedes`, and records them in the cache (whose pack rows exist already). The superseding
/// object is written last, so a run stopped midway leaves the old objects in force beside some new ones
/// (a union of listings, which is harmless), never packs that only superseded objects list. Returns how many
/// objects were written.
pub fn write_objects(
    repo: &Repository,
    packs: Vec<crate::index_object::PackListing>,
    supersedes: Vec<Id>,
) -> Result<u64> {
    let mut objects = crate::index_object::split(packs, Vec::new());
    if !supersedes.is_empty() {
        match objects.last_mut() {
            Some(last) => last.supersedes = supersedes,
            None => objects.push(IndexObject {
                packs: Vec::new(),
                supersedes,
            }),
        }
    }
    for obj in &objects {
        let id = obj.save(repo.backend().as_ref())?;
        repo.index().transaction(|tx| record_listed(tx, &id, obj))?;
    }
    Ok(objects.len() as u64)
}

/// The listing of each of `packs`, from the index objects that list them where they can be read, else from
/// the packs' trailers (ranged reads). Packs that are gone or whose trailer is damaged are left out (they
/// hold nothing readable).
pub fn listings_of(
    repo: &Repository,
    packs: &HashSet<Id>,
    from_objects: &HashSet<Id>,
) -> Result<Vec<crate::index_object::PackListing>> {
    let mut out: HashMap<Id, crate::index_object::PackListing> = HashMap::new();
    for obj in from_objects {
        match IndexObject::load(repo.backend().as_ref(), obj) {
            Ok(o) => {
                for p in o.packs.into_iter().filter(|p| packs.contains(&p.id)) {
                    out.entry(p.id).or_insert(p);
                }
            }
            Err(e) if e.is_damage() || crate::backend::is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let sizes: HashMap<Id, u64> = repo.pack_files()?.into_iter().collect();
    let missing: Vec<Id> = packs
        .iter()
        .filter(|id| !out.contains_key(id))
        .copied()
        .collect();
    for id in &missing {
        let Some(&size) = sizes.get(id) else {
            continue;
        };
        match pack::read_trailer(repo.backend().as_ref(), id, size, repo.crypto()) {
            Ok(entries) => {
                out.insert(
                    *id,
                    crate::index_object::PackListing {
                        id: *id,
                        size,
                        entries,
                    },
                );
            }
            Err(e) if e.is_damage() => {}
            Err(e) => return Err(e),
        }
    }
    let mut v: Vec<_> = out.into_values().collect();
    v.sort_by_key(|p| p.id);
    Ok(v)
}

/// Deletes index objects that a newer one supersedes but that are still stored (a prune or repair stopped
/// before deleting them). Only under the exclusive lock. Returns how many.
pub fn delete_superseded(repo: &Repository) -> Result<u64> {
    let listed: HashSet<Id> = repo
        .backend()
        .list(ObjectKind::Index)?
        .into_iter()
        .filter_map(|(n, _)| Id::from_hex(&n))
        .collect();
    let dead: Vec<Id> = seen(&repo.index())?
        .into_iter()
        .filter(|(id, sup)| *sup && listed.contains(id))
        .map(|(id, _)| id)
        .collect();
    for id in &dead {
        repo.delete_object(ObjectKind::Index, &id.to_hex())?;
        repo.index().transaction(|tx| forget_object(tx, id))?;
    }
    Ok(dead.len() as u64)
}

/// Deletes the index objects that do not decode, match their name or authenticate (a write torn by a crash
/// on a store without atomic puts, or damage). The cache never merged them, so the packs they listed are
/// uncovered: the caller has covered the needed ones with durable objects first. Runs under the exclusive
/// lock, so an unseen object is not one another host is writing now. Returns how many went.
pub fn delete_damaged(repo: &Repository) -> Result<u64> {
    let backend = repo.backend().as_ref();
    let seen = seen(&repo.index())?;
    let mut deleted = 0;
    for (name, _) in backend.list(ObjectKind::Index)? {
        let Some(id) = Id::from_hex(&name).filter(|id| !seen.contains_key(id)) else {
            continue;
        };
        match IndexObject::load(backend, &id) {
            Err(e) if e.is_damage() => {
                repo.delete_object(ObjectKind::Index, &name)?;
                deleted += 1;
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    Ok(deleted)
}

/// Replaces the index objects that list any pack of `dropping` (packs about to be deleted) by objects
/// listing their other packs plus `cover` (packs still needed that no object lists), then deletes the
/// replaced objects. Everything written is durable before anything is deleted; the caller deletes the packs
/// afterwards. Returns (objects written, objects deleted).
pub fn rewrite_without(
    repo: &Repository,
    dropping: &HashSet<Id>,
    cover: &HashSet<Id>,
) -> Result<(u64, u64)> {
    let affected = objects_listing(&repo.index(), dropping)?;
    if affected.is_empty() && cover.is_empty() {
        return Ok((0, 0));
    }
    // The packs the affected objects list that stay, as the cache's mapping rows say.
    let mut keep: HashSet<Id> = cover.clone();
    {
        let idx = repo.index();
        let mut st = idx
            .raw()
            .prepare_cached("SELECT pack FROM index_object_packs WHERE object = ?1")?;
        for obj in &affected {
            let packs = st.query_map(params![&obj.0[..]], |r| r.get::<_, Vec<u8>>(0))?;
            for p in packs {
                let p = id_of(p?)?;
                if !dropping.contains(&p) {
                    keep.insert(p);
                }
            }
        }
    }
    let listings = listings_of(repo, &keep, &affected)?;
    let mut superseded: Vec<Id> = affected.into_iter().collect();
    superseded.sort();
    let written = write_objects(repo, listings, superseded.clone())?;
    for id in &superseded {
        repo.delete_object(ObjectKind::Index, &id.to_hex())?;
        repo.index().transaction(|tx| forget_object(tx, id))?;
    }
    Ok((written, superseded.len() as u64))
}
