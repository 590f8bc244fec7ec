//! The index's snapshot rows: a cache of the snapshot objects (id, time, host, instance, tags, paths,
//! stream names, root tree and the whole snapshot as JSON), so listing and selecting snapshots reads no
//! object. A row is committed only once its object is durable ([`Index::add_snapshot_with`]).

use rusqlite::{params, Connection, TransactionBehavior};

use super::Index;
use crate::error::{Error, Result};

/// Inserts or replaces the row of a snapshot.
fn insert_snapshot(conn: &Connection, snap: &crate::snapshot::Snapshot, id: &str) -> Result<()> {
    let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    conn.execute(
        "INSERT OR REPLACE INTO snapshots(id, time, host, instance, tags, paths, stream_names, tree, partial, json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            id,
            snap.time.to_rfc3339(),
            snap.host,
            snap.instance,
            json(&snap.tags),
            json(&snap.paths),
            json(&snap.stream_names()),
            snap.tree.map(|t| t.to_hex()),
            snap.partial,
            serde_json::to_string(snap).map_err(|e| Error::corrupt("snapshot", e))?,
        ],
    )?;
    Ok(())
}

impl Index {
    /// Records a snapshot row (a cache of the snapshot file).
    pub fn add_snapshot(&self, snap: &crate::snapshot::Snapshot, id: &str) -> Result<()> {
        insert_snapshot(&self.conn, snap, id)
    }

    /// Records a snapshot row in a transaction that commits only once `write_object` (which writes the
    /// snapshot file durably) has succeeded: readers of the index never see a row before its file is durable,
    /// and a row that cannot be inserted means the file is never written (format-spec, "Write ordering").
    pub fn add_snapshot_with(
        &mut self,
        snap: &crate::snapshot::Snapshot,
        id: &str,
        write_object: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_snapshot(&tx, snap, id)?;
        write_object()?;
        tx.commit()?;
        Ok(())
    }

    /// True if the snapshot has a row.
    pub fn has_snapshot(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM snapshots WHERE id = ?1")?
            .exists(params![id])?)
    }

    /// Removes a snapshot row.
    pub fn remove_snapshot(&self, id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM snapshots WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every snapshot, oldest first, as (id, snapshot).
    pub fn snapshots(&self) -> Result<Vec<(String, crate::snapshot::Snapshot)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, json FROM snapshots ORDER BY time, id")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|r| {
            let (id, json) = r?;
            let snap = serde_json::from_str(&json)
                .map_err(|e| Error::corrupt(format!("snapshot row {id}"), e))?;
            Ok((id, snap))
        })
        .collect()
    }

    /// Snapshot ids starting with `prefix`.
    pub fn snapshot_ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM snapshots WHERE substr(id, 1, length(?1)) = ?1 LIMIT 10")?;
        let ids = st
            .query_map(params![prefix], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }
}
