//! This host's copies of tree blobs of a repository in object storage (the `tree_cache` table).
//!
//! A walk over a snapshot (`ls`, `find`, `diff`, `check`'s structure pass, prune's mark, `copy`, the start of
//! a restore) reads every tree it enters; from an object store that is a request per directory, tens of ms
//! each, one after the other. Trees are small and immutable, so a host keeps the ones it wrote or read, as
//! restic keeps its tree packs in its cache.
//!
//! Invariants: a row holds a tree blob exactly as a pack stores one (compressed, then sealed with the
//! repository's key: nothing readable without it, as in the repository) with its compression and raw
//! length, so reading it back goes through [`crate::pack::decode_blob`], which authenticates it and checks
//! it against its id. A row that fails that is dropped and the tree read from the repository: the cache
//! can make a walk faster, never different. A row is removed with the last indexed copy of its tree
//! ([`Index::remove_pack`](super::Index::remove_pack)); deleting the table loses nothing.

use rusqlite::{params, OptionalExtension};

use super::Index;
use crate::error::Result;
use crate::hashing::Id;
use crate::pack::{BlobEntry, BlobKind, Compression};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tree_cache (
    id BLOB PRIMARY KEY,
    compression INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    stored BLOB NOT NULL
);";

/// Drops the cached copies of the trees whose indexed copy is in pack `pack_no` (run before its blob rows
/// go: a tree moved to another pack by a repack is indexed there by then and keeps its row).
pub(super) const FORGET_PACK_TREES: &str = "DELETE FROM tree_cache WHERE id IN
    (SELECT id FROM blobs WHERE kind = 1 AND pack_no = (SELECT pack_no FROM packs WHERE id = ?1))";

/// A tree blob as a pack stores it.
#[derive(Debug, Clone)]
pub struct CachedTree {
    pub id: Id,
    pub compression: Compression,
    pub raw_len: u32,
    pub stored: Vec<u8>,
}

impl CachedTree {
    /// The entry [`crate::pack::decode_blob`] decodes `stored` with.
    pub fn entry(&self) -> BlobEntry {
        BlobEntry {
            kind: BlobKind::Tree,
            compression: self.compression,
            stored_len: self.stored.len() as u32,
            raw_len: self.raw_len,
            offset: 0,
            id: self.id,
            base: None,
        }
    }
}

impl Index {
    /// The cached copy of tree `id`, if this host has one (undecoded: see the module docs).
    pub fn cached_tree(&self, id: &Id) -> Result<Option<CachedTree>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT compression, raw_len, stored FROM tree_cache WHERE id = ?1")?;
        let row = st
            .query_row(params![&id.0[..]], |r| {
                Ok((
                    r.get::<_, u8>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .optional()?;
        Ok(row.and_then(|(comp, raw_len, stored)| {
            Some(CachedTree {
                id: *id,
                compression: Compression::from_u8(comp)?,
                raw_len: u32::try_from(raw_len).ok()?,
                stored,
            })
        }))
    }

    /// Keeps copies of `trees` (replacing older copies of the same ids), in one transaction.
    pub fn cache_trees(&mut self, trees: &[CachedTree]) -> Result<()> {
        if trees.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO tree_cache (id, compression, raw_len, stored) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for t in trees {
                st.execute(params![
                    &t.id.0[..],
                    t.compression as u8,
                    i64::from(t.raw_len),
                    &t.stored
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the cached copy of tree `id` (one that failed to decode).
    pub fn drop_cached_tree(&self, id: &Id) -> Result<()> {
        self.conn
            .execute("DELETE FROM tree_cache WHERE id = ?1", params![&id.0[..]])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(n: u8) -> CachedTree {
        CachedTree {
            id: Id::of(&[n]),
            compression: Compression::None,
            raw_len: 1,
            stored: vec![n],
        }
    }

    fn entry(id: Id, kind: BlobKind, offset: u64) -> BlobEntry {
        BlobEntry {
            kind,
            compression: Compression::None,
            stored_len: 1,
            raw_len: 1,
            offset,
            id,
            base: None,
        }
    }

    #[test]
    fn a_cached_tree_goes_with_the_last_pack_indexing_it_and_survives_a_repack() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(&dir.path().join("index.sqlite")).unwrap();
        let (a, b) = (tree(1), tree(2));
        let data = Id::of(b"data");
        idx.add_pack(
            Id::of(b"p1"),
            10,
            &[
                entry(a.id, BlobKind::Tree, 0),
                entry(b.id, BlobKind::Tree, 1),
                entry(data, BlobKind::Data, 2),
            ],
        )
        .unwrap();
        idx.cache_trees(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(idx.cached_tree(&a.id).unwrap().unwrap().stored, vec![1]);
        // A repack moves tree a into p2, then p1 goes: a's copy stays, b's goes with its last pack.
        idx.relocate_pack(Id::of(b"p2"), 10, &[entry(a.id, BlobKind::Tree, 0)])
            .unwrap();
        idx.remove_pack(&Id::of(b"p1")).unwrap();
        assert!(idx.cached_tree(&a.id).unwrap().is_some());
        assert!(idx.cached_tree(&b.id).unwrap().is_none());
        idx.drop_cached_tree(&a.id).unwrap();
        assert!(idx.cached_tree(&a.id).unwrap().is_none());
    }
}
