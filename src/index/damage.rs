//! The index's record of damaged copies (`damaged_blobs`, format-spec "Index"): the one table that is not a
//! cache of the packs, since no pack says a copy of itself is bad (`repair index` carries its rows over).
//! A blob whose indexed copy is recorded damaged is unusable for reading and for deduplication until a new
//! copy is indexed (which moves its row) or the snapshots needing it are repaired.

use rusqlite::params;

use super::Index;
use crate::error::{Error, Result};
use crate::hashing::Id;

/// A stored copy of a blob that failed verification: the copy in `pack` is damaged (format-spec, "Index").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageRecord {
    pub blob: Id,
    pub pack: Id,
    /// RFC 3339 time it was found.
    pub found: String,
    pub reason: String,
}

impl DamageRecord {
    /// A record found now.
    pub fn now(blob: Id, pack: Id, reason: impl Into<String>) -> DamageRecord {
        DamageRecord {
            blob,
            pack,
            found: chrono::Utc::now().to_rfc3339(),
            reason: reason.into(),
        }
    }
}

impl Index {
    /// Records damaged copies (a copy already recorded keeps its first record).
    pub fn record_damage(&self, records: &[DamageRecord]) -> Result<()> {
        if records.is_empty() {
            // Nothing to write: a read-only index must not fail here.
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO damaged_blobs(blob, pack, found, reason) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for r in records {
                st.execute(params![&r.blob.0[..], &r.pack.0[..], r.found, r.reason])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes records that a full read proved wrong (the copy verifies).
    pub fn clear_damage(&self, records: &[DamageRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut st =
                tx.prepare_cached("DELETE FROM damaged_blobs WHERE blob = ?1 AND pack = ?2")?;
            for r in records {
                st.execute(params![&r.blob.0[..], &r.pack.0[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every damage record.
    pub fn damage_records(&self) -> Result<Vec<DamageRecord>> {
        self.query_damage("SELECT blob, pack, found, reason FROM damaged_blobs ORDER BY blob, pack")
    }

    /// Damage records of copies that are still the indexed location of their blob: the blob is unusable
    /// (for reading and for deduplication) until a new copy is stored or the snapshots needing it repaired.
    pub fn damage_in_use(&self) -> Result<Vec<DamageRecord>> {
        self.query_damage(
            "SELECT d.blob, d.pack, d.found, d.reason FROM damaged_blobs d
             WHERE d.pack = (SELECT p.id FROM packs p
                             WHERE p.pack_no = (SELECT b.pack_no FROM blobs b WHERE b.id = d.blob))
             ORDER BY d.blob",
        )
    }

    /// Indexed packs holding a damaged copy that is no longer indexed (a good copy superseded it, or nothing
    /// needs the blob): `prune` rewrites them without it.
    pub fn packs_with_superseded_damage(&self) -> Result<std::collections::HashSet<Id>> {
        let rows = self.query_damage(
            "SELECT d.blob, d.pack, d.found, d.reason FROM damaged_blobs d
             WHERE EXISTS (SELECT 1 FROM packs p WHERE p.id = d.pack)
               AND d.pack IS NOT (SELECT p.id FROM packs p
                                  WHERE p.pack_no = (SELECT b.pack_no FROM blobs b WHERE b.id = d.blob))",
        )?;
        Ok(rows.into_iter().map(|r| r.pack).collect())
    }

    /// Runs a query of damage records; none when the index predates the table and was opened read-only.
    fn query_damage(&self, sql: &str) -> Result<Vec<DamageRecord>> {
        let mut exists = self.conn.prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'damaged_blobs'",
        )?;
        if !exists.exists([])? {
            return Ok(Vec::new());
        }
        let mut st = self.conn.prepare_cached(sql)?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (blob, pack, found, reason) = row?;
            let id = |b: &[u8]| {
                Id::from_slice(b).ok_or_else(|| Error::corrupt("index", "damaged blob id"))
            };
            Ok(DamageRecord {
                blob: id(&blob)?,
                pack: id(&pack)?,
                found,
                reason,
            })
        })
        .collect()
    }
}
