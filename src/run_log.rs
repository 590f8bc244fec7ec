//! The run log as repository objects (format-spec/README.md, "Run log"): every recorded run is an immutable
//! object `runs/<id>`, a JSON document named by the BLAKE3 of its bytes, so hosts sharing a repository see
//! one history and deleting the cache loses none of it.
//!
//! The SQLite `runs` table is the cache: [`sync`] lists `runs/`, reads only the objects the cache has not
//! seen (`run_objects(name, run_no)` maps each object to its row) and drops rows of objects that are gone.
//! Rows with no object are *pending*: rows of a cache written by an older cairn (the run log lived only
//! there), or a run whose object could not be written (the repository was unreachable when the run ended).
//! The next run recorded writes them out first ([`record`]), under the same content names, so writing one
//! twice (a crash between the object and its mapping row) yields the same object and one row.
//! Objects are stored and read through [`crate::object_io`].

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::backend::ObjectKind;
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::instance::RunRecord;
use crate::object_io;
use crate::repo::Repository;

/// Version of a run object's JSON.
pub const RUN_OBJECT_VERSION: u32 = 1;

/// A run object: the record plus the host that ran it (absent for rows written out from an old cache).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunObject {
    version: u32,
    #[serde(default)]
    host: Option<String>,
    #[serde(flatten)]
    run: RunRecord,
}

/// The object's bytes and its name.
fn encode(run: &RunRecord, host: Option<String>) -> Result<(Vec<u8>, String)> {
    let obj = RunObject {
        version: RUN_OBJECT_VERSION,
        host,
        run: run.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&obj).map_err(|e| Error::Invalid(e.to_string()))?;
    let name = Id::of(&bytes).to_hex();
    Ok((bytes, name))
}

/// Decodes an untrusted run object and checks it against its name.
fn decode(name: &str, bytes: &[u8]) -> Result<RunRecord> {
    let what = || format!("run object {name}");
    if Id::of(bytes).to_hex() != name {
        return Err(Error::corrupt(what(), "content does not match its name"));
    }
    let obj: RunObject = serde_json::from_slice(bytes).map_err(|e| Error::corrupt(what(), e))?;
    if obj.version != RUN_OBJECT_VERSION {
        return Err(Error::corrupt(
            what(),
            format!("unsupported version {}", obj.version),
        ));
    }
    Ok(obj.run)
}

fn ensure_tables(repo: &Repository) -> Result<()> {
    crate::instance::ensure_table(
        repo,
        "run_objects",
        "CREATE TABLE IF NOT EXISTS run_objects (name TEXT PRIMARY KEY, run_no INTEGER NOT NULL UNIQUE)",
    )
}

/// Inserts the row of run object `name` unless the cache has it; `run_no` names a pending row that the
/// object now covers (it is mapped, or deleted if the object's row exists already).
fn insert_row(repo: &Repository, name: &str, r: &RunRecord, pending: Option<i64>) -> Result<()> {
    crate::instance::write_transaction(repo, |tx| {
        let known: Option<i64> = tx
            .query_row(
                "SELECT run_no FROM run_objects WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()?;
        match (known, pending) {
            (Some(_), Some(row)) => {
                tx.execute("DELETE FROM runs WHERE run_no = ?1", params![row])?;
            }
            (Some(_), None) => {}
            (None, Some(row)) => {
                tx.execute(
                    "INSERT INTO run_objects(name, run_no) VALUES (?1, ?2)",
                    params![name, row],
                )?;
            }
            (None, None) => {
                let row = insert_run(tx, r)?;
                tx.execute(
                    "INSERT INTO run_objects(name, run_no) VALUES (?1, ?2)",
                    params![name, row],
                )?;
            }
        }
        Ok(())
    })
}

/// Inserts a `runs` row; returns its `run_no`.
fn insert_run(tx: &rusqlite::Transaction, r: &RunRecord) -> Result<i64> {
    tx.execute(
        "INSERT INTO runs(instance, kind, start, end, status, bytes, snapshot_id, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            r.instance,
            r.kind,
            r.start.to_rfc3339(),
            r.end.map(|e| e.to_rfc3339()),
            r.status,
            r.bytes.map(|b| b as i64),
            r.snapshot_id,
            r.error
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Records a run: pending rows are written out first, then the run's object and its row. If the object
/// cannot be written (the repository is unreachable), the run is kept as a pending row and written out by
/// the next run recorded; only a failure of the cache itself is an error.
pub fn record(repo: &Repository, r: &RunRecord) -> Result<()> {
    ensure_tables(repo)?;
    let written = write_pending(repo).and_then(|_| {
        let (bytes, name) = encode(r, Some(crate::lock::hostname()))?;
        object_io::put(repo.backend().as_ref(), ObjectKind::Run, &name, &bytes)?;
        Ok(name)
    });
    match written {
        Ok(name) => insert_row(repo, &name, r, None),
        Err(_) => {
            crate::instance::write_transaction(repo, |tx| insert_run(tx, r))?;
            Ok(())
        }
    }
}

/// Writes out every pending row (no object yet) as an object, oldest first; returns how many.
pub fn write_pending(repo: &Repository) -> Result<usize> {
    ensure_tables(repo)?;
    let pending: Vec<(i64, RunRecord)> =
        crate::instance::runs_where(repo, "run_no NOT IN (SELECT run_no FROM run_objects)")?;
    for (row, r) in &pending {
        let (bytes, name) = encode(r, None)?;
        object_io::put(repo.backend().as_ref(), ObjectKind::Run, &name, &bytes)?;
        insert_row(repo, &name, r, Some(*row))?;
    }
    Ok(pending.len())
}

/// Brings the cached run log up to date: reads the run objects the cache has not seen, drops the rows of
/// objects that are gone. Damaged objects are left out. Returns how many objects were read.
pub fn sync(repo: &Repository) -> Result<usize> {
    ensure_tables(repo)?;
    let listed: HashSet<String> = repo
        .backend()
        .list(ObjectKind::Run)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let seen: HashMap<String, i64> = {
        let idx = repo.index();
        let mut st = idx.raw().prepare("SELECT name, run_no FROM run_objects")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut read = 0;
    let mut new: Vec<&String> = listed.iter().filter(|n| !seen.contains_key(*n)).collect();
    new.sort();
    for name in new {
        let bytes = match object_io::get(repo.backend().as_ref(), ObjectKind::Run, name) {
            Ok(b) => b,
            // Gone since the listing, or refused unread (larger than any run object): like one that
            // does not decode, it is left out.
            Err(e) if e.is_damage() => continue,
            Err(e) => return Err(e),
        };
        match decode(name, &bytes) {
            Ok(r) => {
                read += 1;
                insert_row(repo, name, &r, None)?;
            }
            Err(e) if e.is_damage() => {}
            Err(e) => return Err(e),
        }
    }
    for (name, row) in seen.iter().filter(|(n, _)| !listed.contains(*n)) {
        crate::instance::write_transaction(repo, |tx| {
            tx.execute("DELETE FROM runs WHERE run_no = ?1", params![row])?;
            tx.execute("DELETE FROM run_objects WHERE name = ?1", params![name])?;
            Ok(())
        })?;
    }
    Ok(read)
}

/// Parses a stored RFC 3339 time of the run log.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::corrupt("run log", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_objects_are_named_by_their_content_and_checked() {
        let r = RunRecord {
            instance: Some("shop".into()),
            kind: "backup".into(),
            start: DateTime::from_timestamp(1_700_000_000, 5).unwrap(),
            end: None,
            status: "ok".into(),
            bytes: Some(3),
            snapshot_id: None,
            error: None,
        };
        let (bytes, name) = encode(&r, Some("h".into())).unwrap();
        assert_eq!(decode(&name, &bytes).unwrap(), r);
        assert_eq!(encode(&r, Some("h".into())).unwrap().1, name, "stable");
        let mut bad = bytes.clone();
        bad[5] ^= 1;
        assert!(decode(&name, &bad).unwrap_err().is_damage());
    }
}
