//! Sets of ids, and maps from ids to bytes, that grow with the repository: the blobs and trees a walk over
//! every snapshot has met (prune's mark, `check`'s structural walk, `stats`, `copy`), and what a copy between
//! repositories with different keys has rewritten ([`IdMap`]).
//!
//! What it owns: a set kept in memory while it is small ([`IN_MEMORY`] ids, a few MB), then moved into
//! a table of the index connection's temporary database, which the index keeps in a file (`PRAGMA
//! temp_store = FILE`, set on every connection in [`crate::index`]). So a walk over a small repository runs
//! at hash-set speed, and one over ten million blobs costs SQLite's bounded page cache, not 50 bytes or more
//! per id of the process's memory: memory does not grow with the repository.
//!
//! Invariants: a set starts empty (an older table of the same name is dropped) and its table is dropped
//! when the value is; once moved, the set lives only in `temp.<table>` (which other SQL may join against
//! after [`Marks::in_table`]). The index lock is held only for one statement, or one transaction while the
//! set moves, so lookups on the same connection may run between inserts. Read-only and immutable index
//! connections can hold temporary tables too (SQLite writes them to its own temporary file), so `check` and
//! `stats` work on a repository this process cannot write.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, OptionalExtension};

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};
use crate::walk::{self, Step};

/// Ids a set keeps in memory before it moves into its table (32-byte ids plus the hash set's overhead:
/// about 3 MB, and the sorted copy made while it moves). Below it a walk runs at hash-set speed; above it
/// each id costs a B-tree insert (a few microseconds), as prune's marks always did.
pub const IN_MEMORY: usize = 1 << 16;

/// A set of ids: in memory while small, then in the table `temp.<table>`.
pub struct Marks<'r> {
    repo: &'r Repository,
    table: &'static str,
    /// The set while it is in memory; `None` once it has moved into the table.
    memory: Option<HashSet<Id>>,
    /// The statement adding an id to the table (made once: it runs per id once the set has moved).
    insert_sql: String,
    contains_sql: String,
    /// Ids kept in memory at most (a parameter for tests).
    limit: usize,
}

impl<'r> Marks<'r> {
    /// An empty set whose table (once it needs one) is `temp.<table>`.
    pub fn new(repo: &'r Repository, table: &'static str) -> Result<Marks<'r>> {
        Self::with_limit(repo, table, IN_MEMORY)
    }

    fn with_limit(repo: &'r Repository, table: &'static str, limit: usize) -> Result<Marks<'r>> {
        repo.index().raw().execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.{table}; \
             CREATE TEMP TABLE {table} (id BLOB PRIMARY KEY) WITHOUT ROWID;"
        ))?;
        Ok(Marks {
            repo,
            table,
            memory: Some(HashSet::new()),
            insert_sql: format!("INSERT OR IGNORE INTO temp.{table}(id) VALUES (?1)"),
            contains_sql: format!("SELECT 1 FROM temp.{table} WHERE id = ?1"),
            limit,
        })
    }

    /// Adds `id`; true if it was not in the set.
    pub fn insert(&mut self, id: &Id) -> Result<bool> {
        if let Some(memory) = &mut self.memory {
            let new = memory.insert(*id);
            if memory.len() > self.limit {
                self.move_to_table()?;
            }
            return Ok(new);
        }
        let idx = self.repo.index();
        let mut st = idx.raw().prepare_cached(&self.insert_sql)?;
        Ok(st.execute(params![&id.0[..]])? == 1)
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &Id) -> Result<bool> {
        if let Some(memory) = &self.memory {
            return Ok(memory.contains(id));
        }
        let idx = self.repo.index();
        let mut st = idx.raw().prepare_cached(&self.contains_sql)?;
        Ok(st.exists(params![&id.0[..]])?)
    }

    /// How many ids the set holds.
    pub fn len(&self) -> Result<u64> {
        if let Some(memory) = &self.memory {
            return Ok(memory.len() as u64);
        }
        let n: i64 = self.repo.index().raw().query_row(
            &format!("SELECT count(*) FROM temp.{}", self.table),
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// For a walk's [`walk::Visitor::before_tree`]: marks tree `id`, and enters it only the first time (the
    /// same id is the same subtree, everything below it marked already).
    pub fn descend_once(&mut self, id: &Id) -> Result<Step> {
        Ok(if self.insert(id)? {
            Step::Descend
        } else {
            Step::Skip
        })
    }

    /// Moves the set into its table (if it is not there yet), for SQL that joins against `temp.<table>`.
    pub fn in_table(&mut self) -> Result<&'static str> {
        self.move_to_table()?;
        Ok(self.table)
    }

    /// Writes the in-memory ids into the table in one transaction (in id order: appends to the B-tree).
    fn move_to_table(&mut self) -> Result<()> {
        let Some(memory) = self.memory.take() else {
            return Ok(());
        };
        let mut ids: Vec<Id> = memory.into_iter().collect();
        ids.sort_unstable_by_key(|id| id.0);
        let idx = self.repo.index();
        in_savepoint(&idx, || {
            let mut st = idx.raw().prepare_cached(&self.insert_sql)?;
            for id in &ids {
                st.execute(params![&id.0[..]])?;
            }
            Ok(())
        })
    }
}

impl Drop for Marks<'_> {
    fn drop(&mut self) {
        drop_table(self.repo, self.table);
    }
}

/// Drops `temp.<table>`; best effort: the table lives only as long as the connection anyway.
fn drop_table(repo: &Repository, table: &str) {
    let _ = repo
        .index()
        .raw()
        .execute_batch(&format!("DROP TABLE IF EXISTS temp.{table}"));
}

/// A map from ids to bytes: in memory while small ([`IN_MEMORY`] entries and at most [`MAP_BYTES_IN_MEMORY`]
/// bytes of values), then in the table `temp.<table>` of the index connection's temporary database, like
/// [`Marks`].
pub struct IdMap<'r> {
    repo: &'r Repository,
    table: &'static str,
    /// The map while it is in memory, with its values' total size; `None` once it has moved to the table.
    memory: Option<(HashMap<Id, Vec<u8>>, usize)>,
    /// Entries and bytes of values kept in memory at most (parameters for tests).
    limits: (usize, usize),
    /// The statements setting and reading a value in the table (made once: they run per entry once the
    /// map has moved).
    insert_sql: String,
    get_sql: String,
}

/// Bytes of values an [`IdMap`] keeps in memory at most.
pub const MAP_BYTES_IN_MEMORY: usize = 4 << 20;

impl<'r> IdMap<'r> {
    /// An empty map whose table (once it needs one) is `temp.<table>`.
    pub fn new(repo: &'r Repository, table: &'static str) -> Result<IdMap<'r>> {
        Self::with_limits(repo, table, (IN_MEMORY, MAP_BYTES_IN_MEMORY))
    }

    fn with_limits(
        repo: &'r Repository,
        table: &'static str,
        limits: (usize, usize),
    ) -> Result<IdMap<'r>> {
        repo.index().raw().execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.{table}; \
             CREATE TEMP TABLE {table} (id BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;"
        ))?;
        Ok(IdMap {
            repo,
            table,
            memory: Some((HashMap::new(), 0)),
            limits,
            insert_sql: format!("INSERT OR REPLACE INTO temp.{table}(id, value) VALUES (?1, ?2)"),
            get_sql: format!("SELECT value FROM temp.{table} WHERE id = ?1"),
        })
    }

    /// Sets the value of `id` (replacing any).
    pub fn insert(&mut self, id: Id, value: Vec<u8>) -> Result<()> {
        if let Some((map, bytes)) = &mut self.memory {
            *bytes += value.len();
            if let Some(old) = map.insert(id, value) {
                *bytes -= old.len();
            }
            if map.len() > self.limits.0 || *bytes > self.limits.1 {
                self.move_to_table()?;
            }
            return Ok(());
        }
        let idx = self.repo.index();
        let mut st = idx.raw().prepare_cached(&self.insert_sql)?;
        st.execute(params![&id.0[..], value])?;
        Ok(())
    }

    /// The value of `id`, if it has one.
    pub fn get(&self, id: &Id) -> Result<Option<Vec<u8>>> {
        if let Some((map, _)) = &self.memory {
            return Ok(map.get(id).cloned());
        }
        let idx = self.repo.index();
        let mut st = idx.raw().prepare_cached(&self.get_sql)?;
        Ok(st.query_row(params![&id.0[..]], |r| r.get(0)).optional()?)
    }

    /// Whether `id` has a value.
    pub fn contains(&self, id: &Id) -> Result<bool> {
        match &self.memory {
            Some((map, _)) => Ok(map.contains_key(id)),
            None => Ok(self.get(id)?.is_some()),
        }
    }

    /// Writes the in-memory entries into the table in one savepoint, in id order.
    fn move_to_table(&mut self) -> Result<()> {
        let Some((map, _)) = self.memory.take() else {
            return Ok(());
        };
        let mut entries: Vec<(Id, Vec<u8>)> = map.into_iter().collect();
        entries.sort_unstable_by_key(|(id, _)| id.0);
        let idx = self.repo.index();
        in_savepoint(&idx, || {
            let mut st = idx.raw().prepare_cached(&self.insert_sql)?;
            for (id, value) in &entries {
                st.execute(params![&id.0[..], value])?;
            }
            Ok(())
        })
    }
}

impl Drop for IdMap<'_> {
    fn drop(&mut self) {
        drop_table(self.repo, self.table);
    }
}

/// Runs `f` inside a savepoint of the index connection (a savepoint, not BEGIN: it nests in a transaction
/// the caller may hold), released when `f` succeeds and rolled back when it fails.
fn in_savepoint(idx: &crate::index::Index, f: impl FnOnce() -> Result<()>) -> Result<()> {
    idx.raw().execute_batch("SAVEPOINT marks")?;
    match f() {
        Ok(()) => Ok(idx.raw().execute_batch("RELEASE marks")?),
        Err(e) => {
            let _ = idx.raw().execute_batch("ROLLBACK TO marks; RELEASE marks");
            Err(e)
        }
    }
}

/// A walk that marks every tree and data chunk it meets, entering each tree once (prune's mark, `stats`).
/// A tree that cannot be read stops the walk with the error `on_tree_error` makes of it.
pub struct MarkAll<'r> {
    pub marks: Marks<'r>,
    pub on_tree_error: fn(&Id, Error) -> Error,
}

impl walk::Visitor for MarkAll<'_> {
    fn before_tree(&mut self, id: &Id, _: walk::Place) -> Result<Step> {
        self.marks.descend_once(id)
    }
    fn tree_error(&mut self, id: &Id, _: walk::Place, e: Error) -> Result<()> {
        Err((self.on_tree_error)(id, e))
    }
    fn entry(&mut self, _: walk::Place, node: &Node) -> Result<Step> {
        if let NodeKind::File { chunks, .. } = &node.kind {
            for c in chunks {
                self.marks.insert(c)?;
            }
        }
        Ok(Step::Descend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_set_moves_from_memory_into_a_temporary_file_keeps_its_answers_and_goes_with_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("repo"), Config::new_default()).unwrap();
        let temp_store: i64 = repo
            .index()
            .raw()
            .query_row("PRAGMA temp_store", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            temp_store, 1,
            "temporary tables must be kept in a file, not in memory"
        );
        let tables = |repo: &Repository| -> i64 {
            repo.index()
                .raw()
                .query_row(
                    "SELECT count(*) FROM sqlite_temp_master WHERE name = 'seen'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let rows = |repo: &Repository| -> i64 {
            repo.index()
                .raw()
                .query_row("SELECT count(*) FROM temp.seen", [], |r| r.get(0))
                .unwrap()
        };
        let ids: Vec<Id> = (0..100u32).map(|i| Id::of(&i.to_le_bytes())).collect();
        // Ten ids in memory at most: the set moves into its table on the eleventh and keeps its answers.
        let mut marks = Marks::with_limit(&repo, "seen", 10).unwrap();
        assert!(marks.is_empty().unwrap());
        for (n, id) in ids.iter().enumerate() {
            assert!(marks.insert(id).unwrap(), "id {n} is new");
            assert!(!marks.insert(id).unwrap(), "id {n} was just added");
            assert!(
                !marks.insert(&ids[n / 2]).unwrap(),
                "id {} was added before",
                n / 2
            );
            assert_eq!(marks.len().unwrap(), n as u64 + 1);
            assert_eq!(rows(&repo), if n < 10 { 0 } else { n as i64 + 1 });
        }
        assert_eq!(tables(&repo), 1);
        drop(marks);
        assert_eq!(tables(&repo), 0);
        // A new set of the same name starts empty; `in_table` moves a small one for SQL to join against.
        let mut again = Marks::new(&repo, "seen").unwrap();
        assert!(again.insert(&ids[0]).unwrap());
        assert_eq!(again.in_table().unwrap(), "seen");
        assert_eq!(rows(&repo), 1);
        assert!(!again.insert(&ids[0]).unwrap());
        assert_eq!(again.len().unwrap(), 1);
    }

    #[test]
    fn a_map_moves_into_its_table_at_either_limit_and_keeps_its_values() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("repo"), Config::new_default()).unwrap();
        let ids: Vec<Id> = (0..50u32).map(|i| Id::of(&i.to_le_bytes())).collect();
        let value = |n: usize| vec![n as u8; n % 7 + 1];
        // By entries (ten), then by bytes (twenty bytes of values).
        for limits in [(10, usize::MAX), (usize::MAX, 20)] {
            let mut map = IdMap::with_limits(&repo, "test_map", limits).unwrap();
            for (n, id) in ids.iter().enumerate() {
                assert!(!map.contains(id).unwrap());
                map.insert(*id, value(n)).unwrap();
                // Replacing keeps one entry, with the new value.
                map.insert(*id, value(n + 1)).unwrap();
                map.insert(*id, value(n)).unwrap();
                for (m, earlier) in ids[..=n].iter().enumerate() {
                    assert_eq!(
                        map.get(earlier).unwrap(),
                        Some(value(m)),
                        "{limits:?} {n} {m}"
                    );
                }
                assert_eq!(map.get(&Id::of(b"absent")).unwrap(), None);
            }
            assert!(
                map.memory.is_none(),
                "{limits:?}: the map moved into its table"
            );
        }
    }
}
