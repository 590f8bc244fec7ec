//! Instance configurations as repository objects: immutable revisions, the newest of which is the
//! configuration, with removals as tombstones (format-spec/README.md, "Instance configurations").
//!
//! Every change of an instance (add, set, pause, resume, remove) writes a new object
//! `instances/<name>.<generation>.<time_ms>.<nonce>.json` and never rewrites one in place. The winner of an
//! instance is its revision with the greatest `(generation, time_ms, nonce)`; `generation` is one more than
//! the greatest the writer listed, so a change made by a host that has seen a revision always beats it,
//! whatever the hosts' clocks say, and two hosts changing an instance at once both write durable objects, of
//! which every host then picks the same winner. After writing, the writer deletes the revisions that sort
//! below its own: they can never win again, so deleting them (or failing to) changes no host's view. A
//! removal is a tombstone revision (`{"name": ..., "removed": true}`), so an older revision cannot bring the
//! instance back. Objects written before revisions (`<name>.json`) are generation 0: read as they are, and
//! deleted by the first change of their instance.
//!
//! The SQLite cache holds the winner's configuration in `instances` and, in `instance_objects`, which
//! revision each instance's row came from; [`sync`] lists `instances/` and reads only the winners that
//! changed. Objects are stored and read through [`crate::object_io`].
//!
//! Invariant: the cache row of an instance is the decoded content of the revision its `instance_objects`
//! row names (or absent, for a tombstone); no row exists for an instance that has no revision.

use std::collections::{BTreeMap, HashMap};

use rusqlite::params;
use serde::Deserialize;

use crate::backend::{is_not_found, ObjectKind};
use crate::error::{Error, Result};
use crate::instance::{validate_name, InstanceConfig};
use crate::object_io;
use crate::repo::Repository;

/// One stored revision of an instance, ordered by `(generation, time_ms, nonce)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Revision {
    pub generation: u64,
    pub time_ms: u64,
    pub nonce: String,
    pub instance: String,
    /// The object's name.
    pub object: String,
}

impl Revision {
    /// Parses an object name of `instances/`: a revision, or a generation-0 object of an older writer;
    /// `None` for anything else.
    pub fn parse(object: &str) -> Option<Revision> {
        let stem = object.strip_suffix(".json")?;
        let parts: Vec<&str> = stem.split('.').collect();
        let (instance, generation, time_ms, nonce) = match parts.as_slice() {
            [name] => (*name, 0, 0, String::new()),
            [name, g, t, n] => {
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                if !digits(g)
                    || !digits(t)
                    || n.is_empty()
                    || !n.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return None;
                }
                (*name, g.parse().ok()?, t.parse().ok()?, n.to_string())
            }
            _ => return None,
        };
        validate_name(instance).ok()?;
        Some(Revision {
            generation,
            time_ms,
            nonce,
            instance: instance.to_string(),
            object: object.to_string(),
        })
    }

    /// A new revision of `instance` at `generation`, stamped now.
    fn new(instance: &str, generation: u64) -> Revision {
        let time_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        let nonce = crate::config::random_hex(8);
        Revision {
            object: format!("{instance}.{generation:010}.{time_ms:013}.{nonce}.json"),
            generation,
            time_ms,
            nonce,
            instance: instance.to_string(),
        }
    }
}

/// What a revision says: the configuration (with its stored text), or that the instance was removed.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Live(Box<InstanceConfig>, String),
    Removed,
}

#[derive(Deserialize)]
struct Tombstone {
    name: String,
    removed: bool,
}

/// Decodes a revision's content; it must name the instance its object name does.
fn decode(rev: &Revision, bytes: &[u8]) -> Result<State> {
    let bad = |detail: String| Error::corrupt(format!("instance object {}", rev.object), detail);
    if let Ok(t) = serde_json::from_slice::<Tombstone>(bytes) {
        if t.removed && t.name == rev.instance {
            return Ok(State::Removed);
        }
    }
    let cfg: InstanceConfig = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if cfg.name != rev.instance {
        return Err(bad(format!("holds instance {:?}", cfg.name)));
    }
    Ok(State::Live(
        Box::new(cfg),
        String::from_utf8_lossy(bytes).into_owned(),
    ))
}

/// Every revision in the repository, by instance, oldest first.
pub fn revisions(repo: &Repository) -> Result<BTreeMap<String, Vec<Revision>>> {
    let mut out: BTreeMap<String, Vec<Revision>> = BTreeMap::new();
    for (object, _) in repo.backend().list(ObjectKind::Instance)? {
        if let Some(r) = Revision::parse(&object) {
            out.entry(r.instance.clone()).or_default().push(r);
        }
    }
    for revs in out.values_mut() {
        revs.sort();
    }
    Ok(out)
}

fn revisions_of(repo: &Repository, instance: &str) -> Result<Vec<Revision>> {
    Ok(revisions(repo)?.remove(instance).unwrap_or_default())
}

/// Writes a new revision of `instance`: its configuration, or a tombstone for `None`. Then deletes the
/// revisions below it and brings the cache row up to date with the winner (this one, or a newer one
/// another host wrote meanwhile).
pub fn write(repo: &Repository, instance: &str, cfg: Option<&InstanceConfig>) -> Result<()> {
    repo.require_writable()?;
    let generation = revisions_of(repo, instance)?
        .last()
        .map_or(0, |r| r.generation)
        + 1;
    let rev = Revision::new(instance, generation);
    let bytes = match cfg {
        Some(cfg) => serde_json::to_vec_pretty(cfg),
        None => serde_json::to_vec_pretty(&serde_json::json!({"name": instance, "removed": true})),
    }
    .map_err(|e| Error::Invalid(e.to_string()))?;
    object_io::put(
        repo.backend().as_ref(),
        ObjectKind::Instance,
        &rev.object,
        &bytes,
    )?;
    let revs = revisions_of(repo, instance)?;
    for old in revs.iter().filter(|r| **r < rev) {
        // Best effort: an older revision never wins again, so one left behind changes nothing.
        let _ = repo.backend().delete(ObjectKind::Instance, &old.object);
    }
    ensure_tables(repo)?;
    apply_newest(
        repo,
        instance,
        revs.into_iter().filter(|r| *r >= rev).collect(),
    )
}

fn ensure_tables(repo: &Repository) -> Result<()> {
    crate::instance::ensure_table(
        repo,
        "instance_objects",
        "CREATE TABLE IF NOT EXISTS instance_objects (instance TEXT PRIMARY KEY, object TEXT NOT NULL)",
    )
}

/// Makes the cache row of `instance` that of its newest readable revision of `revs` (sorted). A revision
/// deleted since the listing (a newer one replaced it) or damaged is passed over: the cache then records
/// the older revision it used, and the next sync, seeing another winner, reads again.
fn apply_newest(repo: &Repository, instance: &str, revs: Vec<Revision>) -> Result<()> {
    for rev in revs.iter().rev() {
        let bytes = match object_io::get(repo.backend().as_ref(), ObjectKind::Instance, &rev.object)
        {
            Ok(b) => b,
            Err(e) if is_not_found(&e) || e.is_damage() => continue,
            Err(e) => return Err(e),
        };
        let Ok(state) = decode(rev, &bytes) else {
            continue;
        };
        return crate::instance::write_transaction(repo, |tx| {
            match &state {
                State::Live(_, json) => tx.execute(
                    "INSERT OR REPLACE INTO instances(name, json) VALUES (?1, ?2)",
                    params![instance, json],
                )?,
                State::Removed => {
                    tx.execute("DELETE FROM instances WHERE name = ?1", params![instance])?
                }
            };
            tx.execute(
                "INSERT OR REPLACE INTO instance_objects(instance, object) VALUES (?1, ?2)",
                params![instance, rev.object],
            )?;
            Ok(())
        });
    }
    Ok(())
}

/// Brings the cache's instance rows up to date with the repository's revisions, reading only the winners
/// the cache has not applied; with `full`, every winner is read again (after `repair index`, or when objects
/// may have been edited in place). Rows of instances with no revision left are dropped.
pub fn sync(repo: &Repository, full: bool) -> Result<usize> {
    ensure_tables(repo)?;
    let all = revisions(repo)?;
    let applied: HashMap<String, String> = if full {
        HashMap::new()
    } else {
        let idx = repo.index();
        let mut st = idx
            .raw()
            .prepare("SELECT instance, object FROM instance_objects")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut read = 0;
    for (name, revs) in &all {
        let newest = revs.last().map(|r| r.object.as_str());
        if newest.is_some() && applied.get(name).map(String::as_str) == newest {
            continue;
        }
        read += 1;
        apply_newest(repo, name, revs.clone())?;
    }
    let rows: Vec<String> = {
        let idx = repo.index();
        let mut st = idx
            .raw()
            .prepare("SELECT name FROM instances UNION SELECT instance FROM instance_objects")?;
        let names = st.query_map([], |r| r.get(0))?;
        names.collect::<rusqlite::Result<_>>()?
    };
    for name in rows.iter().filter(|n| !all.contains_key(*n)) {
        crate::instance::write_transaction(repo, |tx| {
            tx.execute("DELETE FROM instances WHERE name = ?1", params![name])?;
            tx.execute(
                "DELETE FROM instance_objects WHERE instance = ?1",
                params![name],
            )?;
            Ok(())
        })?;
    }
    Ok(read)
}

/// The current state of every instance that has revisions, read from the repository itself (not the
/// cache): what `cairn copy --instances` copies. Unreadable winners are passed over as in the cache.
pub fn current(repo: &Repository) -> Result<BTreeMap<String, State>> {
    let mut out = BTreeMap::new();
    for (name, revs) in revisions(repo)? {
        for rev in revs.iter().rev() {
            match object_io::get(repo.backend().as_ref(), ObjectKind::Instance, &rev.object) {
                Ok(bytes) => {
                    if let Ok(state) = decode(rev, &bytes) {
                        out.insert(name.clone(), state);
                        break;
                    }
                }
                Err(e) if is_not_found(&e) || e.is_damage() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_names_order_by_generation_then_time_then_nonce() {
        let a = Revision::parse("shop.0000000002.1700000000000.aa.json").unwrap();
        let b = Revision::parse("shop.0000000002.1700000000001.00.json").unwrap();
        let c = Revision::parse("shop.0000000003.0000000000000.00.json").unwrap();
        let legacy = Revision::parse("shop.json").unwrap();
        assert!(legacy < a && a < b && b < c);
        assert_eq!(legacy.generation, 0);
        for bad in [
            "Shop.json",
            "shop.1.2.json",
            "shop.x.2.ab.json",
            "shop.1.2.zz.json",
            "shop.1.2.ab",
        ] {
            assert!(Revision::parse(bad).is_none(), "{bad}");
        }
        let n = Revision::new("shop", 7);
        assert!(ObjectKind::Instance.valid_name(&n.object), "{}", n.object);
        assert_eq!(Revision::parse(&n.object), Some(n));
    }
}
