//! Saving blobs: deduplication against the index, compression, and packing into durable pack files.
//!
//! Write ordering (format-spec/README.md, "Write ordering"): a pack is streamed into the backend's writer
//! (for a local repository: a temporary file, fsynced, renamed into place and its directory fsynced) and is
//! whole and durable before its blobs are added to the index, and a blob is
//! "pending" (known to this writer only) until that index transaction commits. A crash therefore leaves at
//! worst an unindexed pack, which `repair index` adopts and `prune` removes; never an index row for data
//! that is not on disk.
//!
//! A pack is written blob by blob into its object writer by the thread that compressed the blob, while
//! the blob is still in that CPU's cache (copying whole 16 MiB packs from memory into the page cache cost
//! ~10% of a backup's CPU time). Full packs are sealed, made durable and indexed by I/O threads of their
//! own, so the threads that hash and compress never wait for an fsync or an upload (on two cores that wait
//! used to idle half the machine). Up to [`Repository::connections`] packs are sealed and written at once
//! (parallel uploads to object storage); each is indexed only after it is durable, and in the order the packs
//! were handed over, so a pack's rows never appear before those of a pack filled earlier (a tree's pack is
//! never indexed before the packs of the chunks it names). A writer therefore lives inside
//! [`PackWriter::scope`], which owns those threads; [`PackWriter::flush`] returns once every blob saved so far
//! is durable and indexed.
//!
//! Index objects (format-spec/README.md, "Index objects"): the writer keeps the entries of every pack it made
//! durable and writes them as an index object at each flush (and whenever [`index_object::MAX_ENTRIES`] have
//! gathered), before anything that references them (a snapshot) is written. A run stopped before that
//! leaves durable packs no index object lists, which readers still find through the pack listing.
//!
//! Damage (format-spec/README.md, "Index"): a blob whose indexed copy is recorded damaged (by `check`,
//! `restore`, `dump` or `repair`) is never deduplicated against. The writer stores it again as if it were new,
//! and indexing that pack moves the blob's row to the good copy, which heals every snapshot naming it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use crossbeam_channel::{Receiver, Sender};

use crate::backend::{ObjectKind, ObjectWriter};
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::index::CachedTree;
use crate::index_object::{self, IndexObject, PackListing};
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

/// A blob encoded by a caller's own encoder, for [`PackWriter::save_encoded`].
pub struct Encoded {
    pub kind: BlobKind,
    pub compression: Compression,
    /// The stored bytes before sealing.
    pub stored: Vec<u8>,
    /// The base of a delta blob (kind 2).
    pub base: Option<Id>,
}

/// Full packs that may wait for the I/O thread.
const SEAL_QUEUE: usize = 4;

/// What the savers hand the I/O threads.
enum Job {
    /// A full pack and its place in the order of indexing.
    Write(Box<OpenPack>, u64),
    Stop,
}

/// Progress of the packs handed to the I/O threads.
#[derive(Default)]
struct IoState {
    /// Packs handed over so far (the next pack's sequence number).
    handed: u64,
    /// Packs whose turn to be indexed has passed (indexed, or skipped after a failure).
    done: u64,
    /// The first failure since the last flush.
    error: Option<Error>,
}

/// Saves blobs into new packs of one repository. Safe to share between threads.
pub struct PackWriter<'r> {
    repo: &'r Repository,
    /// Repacking: blobs are saved even though indexed, and their index rows move to the new pack.
    relocate: bool,
    pending: Mutex<HashSet<Id>>,
    /// Blobs indexed at a copy recorded damaged when the writer started; each is stored again once.
    unusable: Mutex<HashSet<Id>>,
    /// The pack being filled; created by the first blob that needs it.
    current: Mutex<Option<OpenPack>>,
    io: Sender<Job>,
    io_state: Mutex<IoState>,
    /// Held while a pack is numbered and sent (see [`Self::hand_over`]).
    send_order: Mutex<()>,
    /// Signalled whenever a pack's turn passes.
    io_turn: Condvar,
    /// Packs made durable and indexed whose index object is not written yet.
    unlisted: Mutex<Vec<PackListing>>,
    /// Trees saved whose copies go into this host's tree cache with the next pack indexed.
    trees_to_cache: Mutex<Vec<CachedTree>>,
    /// Every pack this writer made durable and indexed.
    written: Mutex<HashSet<Id>>,
    /// Set when a pack could not be written: saving stops early instead of compressing data that cannot be
    /// stored (the I/O thread's error itself comes back from `flush`).
    failed: AtomicBool,
    /// What the first failure was, for every later call that meets `failed`: the error itself goes to one
    /// caller only, and whichever saver thread reports first must still name the real cause (ENOSPC, ...).
    first_failure: Mutex<Option<(std::io::ErrorKind, String)>>,
    pub stats: SaveStats,
}

impl<'r> PackWriter<'r> {
    /// Runs `f` with a writer for `repo`, then flushes it. Nothing `f` saved is durable or indexed before
    /// a `flush` (or the end of the scope) returns `Ok`.
    pub fn scope<T>(
        repo: &'r Repository,
        f: impl FnOnce(&PackWriter<'r>) -> Result<T>,
    ) -> Result<T> {
        Self::scope_with(repo, false, f)
    }

    /// A writer for prune: it copies blobs that are indexed elsewhere and points their index rows at the new
    /// packs once those are durable.
    pub fn repack_scope<T>(
        repo: &'r Repository,
        f: impl FnOnce(&PackWriter<'r>) -> Result<T>,
    ) -> Result<T> {
        Self::scope_with(repo, true, f)
    }

    fn scope_with<T>(
        repo: &'r Repository,
        relocate: bool,
        f: impl FnOnce(&PackWriter<'r>) -> Result<T>,
    ) -> Result<T> {
        // A full pack costs only its open file and write buffer while it waits (a local repository), so a few
        // may queue behind an fsync instead of stalling the saver that filled them; an object store's pack is
        // buffered in memory until sent, so none waits: the saver that filled it hands it straight to a free
        // upload thread, and at most `connections + 1` packs are in memory (4 sending and 1 queued besides the
        // one filling took a backup to S3 past 180 MB peak RSS).
        let threads = repo.connections().max(1);
        let queue = if repo.backend().local_root().is_some() {
            SEAL_QUEUE.saturating_sub(threads - 1).max(1)
        } else {
            0
        };
        let (tx, rx) = crossbeam_channel::bounded(queue);
        // Read once: damage is rare and the set small, so the hot dedup lookup stays one indexed query.
        let unusable = repo
            .index()
            .damage_in_use()?
            .into_iter()
            .map(|d| d.blob)
            .collect();
        let writer = PackWriter {
            repo,
            relocate,
            pending: Mutex::new(HashSet::new()),
            unusable: Mutex::new(unusable),
            current: Mutex::new(None),
            io: tx,
            io_state: Mutex::new(IoState::default()),
            send_order: Mutex::new(()),
            io_turn: Condvar::new(),
            unlisted: Mutex::new(Vec::new()),
            trees_to_cache: Mutex::new(Vec::new()),
            written: Mutex::new(HashSet::new()),
            failed: AtomicBool::new(false),
            first_failure: Mutex::new(None),
            stats: SaveStats::default(),
        };
        std::thread::scope(|s| {
            let w = &writer;
            for _ in 0..threads {
                let rx = rx.clone();
                s.spawn(move || w.io_loop(rx));
            }
            let out = f(w).and_then(|v| w.flush().map(|()| v));
            // Packs handed over before a failure are still written: harmless, and `prune` reclaims them.
            for _ in 0..threads {
                let _ = w.io.send(Job::Stop);
            }
            out
        })
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
            entry.base,
            stored,
        )?;
        Ok(true)
    }

    /// The repository this writer saves into.
    pub fn repo(&self) -> &'r Repository {
        self.repo
    }

    /// Stores a blob of `raw_len` raw bytes encoded by `encode` (an encoder of its own, e.g. delta chunks:
    /// [`crate::delta`]) unless the repository or this writer already has `id`. `encode` runs only for a new
    /// blob, outside every lock; `data_kind` is the kind counted in the statistics.
    pub fn save_encoded(
        &self,
        data_kind: BlobKind,
        id: Id,
        raw_len: u32,
        encode: impl FnOnce() -> Result<Encoded>,
    ) -> Result<bool> {
        if !self.claim(&id)? {
            return Ok(false);
        }
        let e = encode()?;
        let stored = self
            .repo
            .crypto()
            .seal(crate::crypto::AAD_BLOB, &e.stored)?;
        self.stats.blobs_new.fetch_add(1, Ordering::Relaxed);
        if data_kind == BlobKind::Data {
            self.stats.data_blobs_new.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .bytes_stored
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.append(e.kind, id, raw_len, e.compression, e.base, &stored)?;
        Ok(true)
    }

    /// Stores `raw` as a blob of `kind` unless the repository (or this writer) already has it.
    /// Returns its id and whether it was new.
    pub fn save(&self, kind: BlobKind, raw: &[u8]) -> Result<(Id, bool)> {
        let id = self.repo.crypto().blob_id(raw);
        Ok((id, self.save_with_id(kind, id, raw)?))
    }

    /// Like [`save`](Self::save) with the id already computed by the caller.
    pub fn save_with_id(&self, kind: BlobKind, id: Id, raw: &[u8]) -> Result<bool> {
        self.save_at_level(kind, id, raw, self.repo.config().compression_level)
    }

    /// Like [`save_with_id`](Self::save_with_id), compressing at zstd `level`.
    pub fn save_at_level(&self, kind: BlobKind, id: Id, raw: &[u8], level: i32) -> Result<bool> {
        if !self.claim(&id)? {
            return Ok(false);
        }
        // Compression and sealing run outside every lock: they are the expensive steps and must use all
        // cores.
        let (compression, stored) = pack::encode_blob(raw, level)?;
        let stored = self.repo.crypto().seal(crate::crypto::AAD_BLOB, &stored)?;
        self.stats.blobs_new.fetch_add(1, Ordering::Relaxed);
        if kind == BlobKind::Data {
            self.stats.data_blobs_new.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .bytes_stored
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        if kind == BlobKind::Tree && self.repo.caches_trees() {
            self.keep_tree(CachedTree {
                id,
                compression,
                raw_len: raw.len() as u32,
                stored: stored.to_vec(),
            });
        }
        self.append(kind, id, raw.len() as u32, compression, None, &stored)?;
        Ok(true)
    }

    /// Keeps a copy of a tree about to be saved for this host's tree cache, written when the next pack is
    /// indexed ([`Self::index_pack`]): its own pack or one before it. A row ahead of its tree's index row,
    /// or for a tree whose pack never makes it, is never read: a tree is looked up in the index first.
    fn keep_tree(&self, tree: CachedTree) {
        self.trees_to_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tree);
    }

    /// Appends an encoded blob to the current pack, writing the pack out once it is full.
    fn append(
        &self,
        kind: BlobKind,
        id: Id,
        raw_len: u32,
        compression: Compression,
        base: Option<Id>,
        stored: &[u8],
    ) -> Result<()> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(self.flush().err().unwrap_or_else(|| self.earlier_failure()));
        }
        let full = {
            let mut cur = self.lock_current();
            let pack = match cur.as_mut() {
                Some(p) => p,
                None => cur.insert(OpenPack::create(self.repo)?),
            };
            if let Err(e) = pack
                .builder
                .add_with_base(kind, id, raw_len, compression, base, stored)
            {
                // The pack's offsets are now unknown: it is dropped (its temporary file with it), and so is
                // everything this writer would save after it.
                let e = Error::io(pack.place.clone(), e);
                self.record_failure(&e);
                *cur = None;
                return Err(e);
            }
            if pack.builder.len() >= self.repo.config().pack_target_size {
                cur.take()
            } else {
                None
            }
        };
        if let Some(pack) = full {
            self.hand_over(pack)?;
        }
        Ok(())
    }

    /// Gives a full pack to the I/O threads (waiting only while the queue is full).
    fn hand_over(&self, pack: OpenPack) -> Result<()> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(self.flush().err().unwrap_or_else(|| self.earlier_failure()));
        }
        // Numbered and sent under one lock, so the channel holds the packs in the order of their numbers and
        // the lowest outstanding number is always taken first (no thread waits for a pack still queued). Not
        // the I/O state's lock: the send may wait for room, and the I/O threads need that lock to make room.
        let _order = self.send_order.lock().unwrap_or_else(|p| p.into_inner());
        let seq = {
            let mut st = self.lock_io();
            st.handed += 1;
            st.handed - 1
        };
        if self.io.send(Job::Write(Box::new(pack), seq)).is_err() {
            // No I/O thread is left to take it (they have stopped): nothing after this is written.
            self.failed.store(true, Ordering::Relaxed);
            self.lock_io().handed -= 1;
            return Err(self.earlier_failure());
        }
        Ok(())
    }

    fn lock_io(&self) -> std::sync::MutexGuard<'_, IoState> {
        self.io_state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `id` as being stored by this writer; false if it is stored already or being stored.
    ///
    /// The index lookup runs outside the pending-set lock, so savers contend only for the index. A blob whose
    /// pack is written and indexed between the two looks is stored twice: harmless (the index keeps one
    /// location; `prune` reclaims the copy), as with two concurrent backups. A blob indexed only at a damaged
    /// copy counts as absent (the first claim takes it off the unusable set: one new copy is enough).
    fn claim(&self, id: &Id) -> Result<bool> {
        if self.lock_pending().contains(id) {
            return Ok(false);
        }
        let damaged = self.take_unusable(id);
        if !self.relocate && !damaged && self.repo.with_reader(|r| r.contains(id))? {
            return Ok(false);
        }
        Ok(self.lock_pending().insert(*id))
    }

    /// True if saving `id` now would store it: neither this writer nor the repository holds a usable copy
    /// (one indexed only at a damaged copy counts as absent). Claims nothing: a copier asks before it reads
    /// the blob from elsewhere, then saves it (which decides again).
    pub fn lacks(&self, id: &Id) -> Result<bool> {
        if self.lock_pending().contains(id) {
            return Ok(false);
        }
        let damaged = self
            .unusable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id);
        Ok(damaged || !self.repo.with_reader(|r| r.contains(id))?)
    }

    /// True (once) if `id` is indexed at a damaged copy.
    fn take_unusable(&self, id: &Id) -> bool {
        let mut set = self.unusable.lock().unwrap_or_else(|p| p.into_inner());
        !set.is_empty() && set.remove(id)
    }

    /// True if any of `chunks` is indexed only at a damaged copy: a backup must then read the file again
    /// (even when it looks unchanged) so that the chunk is stored anew and the snapshots needing it heal.
    pub fn needs_fresh_copy(&self, chunks: &[Id]) -> bool {
        let set = self.unusable.lock().unwrap_or_else(|p| p.into_inner());
        !set.is_empty() && chunks.iter().any(|c| set.contains(c))
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashSet<Id>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<OpenPack>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals and writes the partly filled pack, waits until every pack handed over is durable and indexed,
    /// then writes the index object listing them. Call once all blobs are saved, before writing anything that
    /// references them.
    pub fn flush(&self) -> Result<()> {
        let pack = self.lock_current().take();
        if let Some(pack) = pack.filter(|p| !p.builder.is_empty()) {
            self.hand_over(pack)?;
        }
        let mut st = self.lock_io();
        while st.done < st.handed {
            st = self.io_turn.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        drop(st);
        if self.failed.load(Ordering::Relaxed) {
            return Err(self.earlier_failure());
        }
        self.write_index_object()
    }

    /// An I/O thread: seals and writes the packs it takes, then indexes each in its turn. After a failure no
    /// pack is written or indexed any more.
    fn io_loop(&self, jobs: Receiver<Job>) {
        for job in jobs {
            let (pack, seq) = match job {
                Job::Write(pack, seq) => (pack, seq),
                Job::Stop => return,
            };
            let written = if self.failed.load(Ordering::Relaxed) {
                Err(self.earlier_failure())
            } else {
                self.write_pack(*pack)
            };
            {
                let mut st = self.lock_io();
                while st.done != seq {
                    st = self.io_turn.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
            // Our turn: no other thread indexes until `done` moves on, so the lock is not held meanwhile
            // (savers handing over packs need it).
            let indexed = written.and_then(|listing| {
                if self.failed.load(Ordering::Relaxed) {
                    return Err(self.earlier_failure());
                }
                self.index_pack(listing)
            });
            let mut st = self.lock_io();
            if let Err(e) = indexed {
                self.record_failure(&e);
                st.error.get_or_insert(e);
            }
            st.done += 1;
            drop(st);
            self.io_turn.notify_all();
        }
    }

    /// Seals `pack` and makes it durable under its final name (format-spec, "Write ordering").
    fn write_pack(&self, pack: OpenPack) -> Result<PackListing> {
        let (out, id, entries) = pack.builder.seal().map_err(|e| Error::io(&pack.place, e))?;
        let size = out.finish(&id.to_hex())?;
        Ok(PackListing { id, size, entries })
    }

    /// Indexes a durable pack and keeps its entries for the next index object.
    fn index_pack(&self, p: PackListing) -> Result<()> {
        let mut index = self.repo.index();
        if self.relocate {
            index.relocate_pack(p.id, p.size, &p.entries)?;
        } else {
            index.add_pack(p.id, p.size, &p.entries)?;
        }
        let trees = std::mem::take(
            &mut *self
                .trees_to_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        // Best effort: a cache that cannot be written (a full disk) costs later walks a request per tree.
        let _ = index.cache_trees(&trees);
        drop(index);
        self.stats.packs_written.fetch_add(1, Ordering::Relaxed);
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p.id);
        {
            let mut pending = self.lock_pending();
            for e in &p.entries {
                pending.remove(&e.id);
            }
        }
        let full = {
            let mut unlisted = self.lock_unlisted();
            unlisted.push(p);
            unlisted.iter().map(|p| p.entries.len()).sum::<usize>() >= index_object::MAX_ENTRIES
        };
        if full {
            self.write_index_object()?;
        }
        Ok(())
    }

    fn lock_unlisted(&self) -> std::sync::MutexGuard<'_, Vec<PackListing>> {
        self.unlisted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes an index object for the packs made durable since the last one, and records it in the cache.
    fn write_index_object(&self) -> Result<()> {
        let packs = std::mem::take(&mut *self.lock_unlisted());
        if packs.is_empty() {
            return Ok(());
        }
        let obj = IndexObject {
            packs,
            supersedes: Vec::new(),
        };
        let written = obj.save(self.repo.backend().as_ref());
        let id = match written {
            Ok(id) => id,
            Err(e) => {
                // Kept, so that a retried flush would list them; the packs stay readable through the
                // pack listing meanwhile.
                self.lock_unlisted().extend(obj.packs);
                return Err(e);
            }
        };
        self.repo
            .index()
            .transaction(|tx| crate::index_sync::record_listed(tx, &id, &obj))
    }

    /// The packs this writer made durable and indexed so far.
    pub fn written_packs(&self) -> HashSet<Id> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The index objects this writer wrote are recorded in the cache as it goes; this tells whether packs
    /// remain that no index object lists yet (only after a failure).
    pub fn has_unlisted_packs(&self) -> bool {
        !self.lock_unlisted().is_empty()
    }
}

/// A pack being written into an object writer (for a local repository a temporary file in `packs/`, renamed
/// to `packs/xx/<id>` once sealed and durable).
struct OpenPack {
    builder: PackBuilder<Box<dyn ObjectWriter>>,
    /// Where it goes, for messages.
    place: String,
}

impl OpenPack {
    fn create(repo: &Repository) -> Result<OpenPack> {
        let place = format!("{}/{}", repo.location(), ObjectKind::Pack.dir());
        // The writer gathers small blobs into larger writes; large ones go straight through (the local
        // backend's 64 KiB buffer: copying them through it cost 2% of a backup's CPU).
        let out = repo.backend().writer(ObjectKind::Pack)?;
        let builder = PackBuilder::start_with(out, repo.crypto().clone())
            .map_err(|e| Error::io(&place, e))?;
        Ok(OpenPack { builder, place })
    }
}

impl PackWriter<'_> {
    /// Stops every later save, remembering the first cause.
    fn record_failure(&self, e: &Error) {
        self.failed.store(true, Ordering::Relaxed);
        let kind = match e {
            Error::Io { source, .. } => source.kind(),
            _ => std::io::ErrorKind::Other,
        };
        let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| (kind, e.to_string()));
    }

    /// The error of a writer whose I/O failed, naming the first cause (its own error went to an earlier
    /// call).
    fn earlier_failure(&self) -> Error {
        let first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        let (kind, why) = match first.as_ref() {
            Some((kind, why)) => (
                *kind,
                format!("an earlier pack write of this run failed: {why}"),
            ),
            None => (
                std::io::ErrorKind::Other,
                "an earlier pack write of this run failed".to_string(),
            ),
        };
        Error::io("packs", std::io::Error::new(kind, why))
    }
}
