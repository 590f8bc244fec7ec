//! Reading trees, and this host's copies of them: the tree cache of a repository in object storage
//! (`src/index/tree_cache.rs` says what a copy is and the rules it keeps; format-spec section 8).

use super::Repository;
use crate::crypto;
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::index::{CachedTree, Location};
use crate::pack::{self, BlobKind};
use crate::tree::Tree;

impl Repository {
    /// Reads and decodes a tree object: from this host's tree cache when the repository is in object
    /// storage and the cache has a copy, else from its pack (then kept in the cache). The index is asked
    /// first either way: a tree it does not list is not in the repository, whatever the cache holds.
    pub fn read_tree(&self, id: &Id) -> Result<Tree> {
        let loc = self.locate_tree(id)?;
        match self.caches_trees().then(|| self.cached_tree(id)).flatten() {
            Some(raw) => Tree::decode(&raw),
            None => self.read_tree_at(&loc),
        }
    }

    /// [`read_tree`](Self::read_tree) from the tree's pack, never from the tree cache: `check` judges the
    /// repository, not this host's copies.
    pub fn read_tree_uncached(&self, id: &Id) -> Result<Tree> {
        self.read_tree_at(&self.locate_tree(id)?)
    }

    fn locate_tree(&self, id: &Id) -> Result<Location> {
        let loc = self
            .with_reader(|r| r.lookup(id))?
            .ok_or_else(|| Error::NotFound(format!("tree {id} is not in the index")))?;
        if loc.entry.kind != BlobKind::Tree {
            return Err(Error::corrupt(format!("tree {id}"), "blob is not a tree"));
        }
        Ok(loc)
    }

    /// Reads tree `loc` from its pack, keeping a copy in the tree cache when the repository has one.
    fn read_tree_at(&self, loc: &Location) -> Result<Tree> {
        if !self.caches_trees() {
            return Tree::decode(&self.read_located(loc)?);
        }
        let (stored, raw) = crate::backend::read_again_if_damaged(|| {
            let stored = self.read_stored(loc)?;
            let raw = self.decode_stored(loc, &stored)?;
            Ok((stored, raw))
        })?;
        self.cache_trees(&[CachedTree {
            id: loc.entry.id,
            compression: loc.entry.compression,
            raw_len: loc.entry.raw_len,
            stored,
        }]);
        Tree::decode(&raw)
    }

    /// Whether trees read or written are kept in this host's tree cache ([`crate::index::CachedTree`]): for
    /// a repository in object storage, where reading one costs a request; a local pack is as near as the cache.
    pub fn caches_trees(&self) -> bool {
        self.backend.local_root().is_none()
    }

    /// The raw bytes of tree `id` from this host's tree cache, authenticated and checked against the id;
    /// `None` when it has no copy or its copy fails that (then dropped, and the tree is read from its pack).
    pub fn cached_tree(&self, id: &Id) -> Option<Vec<u8>> {
        let cached = self.with_reader(|r| r.cached_tree(id)).ok().flatten()?;
        match pack::decode_blob(&cached.entry(), &cached.stored, &self.crypto) {
            Ok(raw) => Some(raw),
            Err(_) => {
                let _ = self.index().drop_cached_tree(id);
                None
            }
        }
    }

    /// Keeps copies of `trees` in this host's tree cache. Best effort: a cache that cannot be written (a
    /// read-only or full disk) only costs later walks a request per tree.
    pub fn cache_trees(&self, trees: &[CachedTree]) {
        let _ = self.index().cache_trees(trees);
    }

    /// Tree `id`, read and verified as `raw`, encoded for the tree cache as a pack stores it (compressed,
    /// then sealed).
    pub fn tree_for_cache(&self, id: Id, raw: &[u8]) -> Result<CachedTree> {
        let (compression, stored) = pack::encode_blob(raw, 1)?;
        let stored = self.crypto.seal(crypto::AAD_BLOB, &stored)?.into_owned();
        Ok(CachedTree {
            id,
            compression,
            raw_len: raw.len() as u32,
            stored,
        })
    }
}
