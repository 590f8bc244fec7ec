//! Saving blobs: deduplication against the index, compression, and packing into durable pack files.
//!
//! Write ordering (format-spec/README.md, "Write ordering"): a pack file is written to a temporary file,
//! fsynced, renamed into place and its directory fsynced before its blobs are added to the index, and a blob is
//! "pending" (known to this writer only) until that index transaction commits. A crash therefore leaves at
//! worst an unindexed pack, which `repair index` adopts and `prune` removes; never an index row for data
//! that is not on disk.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::Result;
use crate::fsutil;
use crate::hashing::Id;
use crate::pack::{self, BlobEntry, BlobKind, Compression, PackBuilder};
use crate::repo::Repository;

/// Counters of what a writer stored.
#[derive(Debug, Default)]
pub struct SaveStats {
    pub blobs_new: AtomicU64,
    pub data_blobs_new: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub packs_written: AtomicU64,
}

/// Saves blobs into new packs of one repository. Safe to share between threads.
pub struct PackWriter<'r> {
    repo: &'r Repository,
    /// Repacking: blobs are saved even though indexed, and their index rows move to the new pack.
    relocate: bool,
    pending: Mutex<HashSet<Id>>,
    current: Mutex<PackBuilder>,
    /// The buffer of the last pack written, for the next pack.
    spare: Mutex<Option<Vec<u8>>>,
    pub stats: SaveStats,
}

impl<'r> PackWriter<'r> {
    pub fn new(repo: &'r Repository) -> PackWriter<'r> {
        PackWriter {
            repo,
            relocate: false,
            pending: Mutex::new(HashSet::new()),
            current: Mutex::new(PackBuilder::with_buffer(pack_buffer(repo))),
            spare: Mutex::new(None),
            stats: SaveStats::default(),
        }
    }

    /// A writer for prune: it copies blobs that are indexed elsewhere and points their index rows at the new
    /// packs once those are durable.
    pub fn for_repack(repo: &'r Repository) -> PackWriter<'r> {
        PackWriter {
            relocate: true,
            ..PackWriter::new(repo)
        }
    }

    /// Copies a blob's stored bytes as they are (the caller verified them), without recompressing.
    pub fn save_stored(&self, entry: &BlobEntry, stored: &[u8]) -> Result<bool> {
        if !self.claim(&entry.id)? {
            return Ok(false);
        }
        self.stats.blobs_new.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_stored
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.append(
            entry.kind,
            entry.id,
            entry.raw_len,
            entry.compression,
            stored,
        )?;
        Ok(true)
    }

    /// Stores `raw` as a blob of `kind` unless the repository (or this writer) already has it.
    /// Returns its id and whether it was new.
    pub fn save(&self, kind: BlobKind, raw: &[u8]) -> Result<(Id, bool)> {
        let id = Id::of(raw);
        Ok((id, self.save_with_id(kind, id, raw)?))
    }

    /// Like [`save`](Self::save) with the id already computed by the caller.
    pub fn save_with_id(&self, kind: BlobKind, id: Id, raw: &[u8]) -> Result<bool> {
        if !self.claim(&id)? {
            return Ok(false);
        }
        // Compression runs outside every lock: it is the expensive step and must use all cores.
        let (compression, stored) =
            pack::encode_blob(raw, id, self.repo.config().compression_level)?;
        self.stats.blobs_new.fetch_add(1, Ordering::Relaxed);
        if kind == BlobKind::Data {
            self.stats.data_blobs_new.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .bytes_stored
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.append(kind, id, raw.len() as u32, compression, &stored)?;
        Ok(true)
    }

    /// Appends an encoded blob to the current pack, writing the pack out once it is full.
    fn append(
        &self,
        kind: BlobKind,
        id: Id,
        raw_len: u32,
        compression: Compression,
        stored: &[u8],
    ) -> Result<()> {
        let full = {
            let mut cur = self.lock_current();
            cur.add(kind, id, raw_len, compression, stored);
            if cur.len() >= self.repo.config().pack_target_size {
                Some(std::mem::replace(&mut *cur, self.new_builder()))
            } else {
                None
            }
        };
        if let Some(builder) = full {
            self.write_pack(builder)?;
        }
        Ok(())
    }

    /// Marks `id` as being stored by this writer; false if it is stored already or being stored.
    fn claim(&self, id: &Id) -> Result<bool> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.contains(id) || (!self.relocate && self.repo.index().contains(id)?) {
            return Ok(false);
        }
        pending.insert(*id);
        Ok(true)
    }

    /// An empty pack in the buffer of the last pack written, else in a new [`pack_buffer`]. A pack
    /// grown by doubling from a small buffer copied itself five times under the lock every saving thread waits
    /// on, and each new buffer's pages had to be faulted in again.
    fn new_builder(&self) -> PackBuilder {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        PackBuilder::with_buffer(spare.unwrap_or_else(|| pack_buffer(self.repo)))
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, PackBuilder> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals and writes the partly filled pack. Call once all blobs are saved, before writing anything that
    /// references them.
    pub fn flush(&self) -> Result<()> {
        let builder = std::mem::take(&mut *self.lock_current());
        if builder.is_empty() {
            return Ok(());
        }
        self.write_pack(builder)
    }

    fn write_pack(&self, builder: PackBuilder) -> Result<()> {
        let (bytes, id, entries) = builder.seal();
        let path = self.repo.pack_path(&id);
        if let Some(dir) = path.parent() {
            fsutil::ensure_dir(dir)?;
        }
        fsutil::write_durable(&path, &bytes)?;
        let mut index = self.repo.index();
        if self.relocate {
            index.relocate_pack(id, bytes.len() as u64, &entries)?;
        } else {
            index.add_pack(id, bytes.len() as u64, &entries)?;
        }
        drop(index);
        self.stats.packs_written.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for e in &entries {
            pending.remove(&e.id);
        }
        drop(pending);
        *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        Ok(())
    }
}

/// An empty buffer with room for a full pack: the target, the chunk that crosses it and the trailer (a large
/// tree blob can still make a pack grow, which only costs a copy). Untouched capacity costs no memory.
fn pack_buffer(repo: &Repository) -> Vec<u8> {
    let cfg = repo.config();
    let largest_chunk = cfg.chunker_files.max_size.max(cfg.chunker_streams.max_size) as usize;
    let target = usize::try_from(cfg.pack_target_size).unwrap_or(usize::MAX);
    Vec::with_capacity(target.saturating_add(largest_chunk + (1 << 20)))
}
