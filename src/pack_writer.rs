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
//! ~10% of a backup's CPU time). Full packs are sealed, fsynced, renamed and indexed by one I/O thread of their
//! own, so the threads that hash and compress never wait for an fsync (on two cores that wait used to idle half
//! the machine). A writer therefore lives inside [`PackWriter::scope`], which owns that thread;
//! [`PackWriter::flush`] returns once every blob saved so far is durable and indexed.
//!
//! Damage (format-spec/README.md, "Index"): a blob whose indexed copy is recorded damaged (by `check`,
//! `restore`, `dump` or `repair`) is never deduplicated against. The writer stores it again as if it were new,
//! and indexing that pack moves the blob's row to the good copy, which heals every snapshot naming it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};

use crate::backend::{ObjectKind, ObjectWriter};
use crate::error::{Error, Result};
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

/// Full packs that may wait for the I/O thread.
const SEAL_QUEUE: usize = 4;

/// What the savers hand the I/O thread.
enum Job {
    Write(Box<OpenPack>),
    /// Answered once every pack sent before it is durable and indexed, with the first failure since the
    /// last flush.
    Flush(Sender<Result<()>>),
    Stop,
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
    /// Set when a pack could not be written: saving stops early instead of compressing data that cannot be
    /// stored (the I/O thread's error itself comes back from `flush`).
    failed: AtomicBool,
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
        // A full pack costs only its open file and write buffer while it waits, so a few may queue behind an
        // fsync instead of stalling the saver that filled them.
        let (tx, rx) = crossbeam_channel::bounded(SEAL_QUEUE);
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
            failed: AtomicBool::new(false),
            stats: SaveStats::default(),
        };
        std::thread::scope(|s| {
            let w = &writer;
            s.spawn(move || w.io_loop(rx));
            let out = f(w).and_then(|v| w.flush().map(|()| v));
            // Packs handed over before a failure are still written: harmless, and `prune` reclaims them.
            let _ = w.io.send(Job::Stop);
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
        self.save_at_level(kind, id, raw, self.repo.config().compression_level)
    }

    /// Like [`save_with_id`](Self::save_with_id), compressing at zstd `level`.
    pub fn save_at_level(&self, kind: BlobKind, id: Id, raw: &[u8], level: i32) -> Result<bool> {
        if !self.claim(&id)? {
            return Ok(false);
        }
        // Compression runs outside every lock: it is the expensive step and must use all cores.
        let (compression, stored) = pack::encode_blob(raw, level)?;
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
        if self.failed.load(Ordering::Relaxed) {
            return Err(self.flush().err().unwrap_or_else(earlier_failure));
        }
        let full = {
            let mut cur = self.lock_current();
            let pack = match cur.as_mut() {
                Some(p) => p,
                None => cur.insert(OpenPack::create(self.repo)?),
            };
            if let Err(e) = pack.builder.add(kind, id, raw_len, compression, stored) {
                // The pack's offsets are now unknown: it is dropped (its temporary file with it), and so is
                // everything this writer would save after it.
                self.failed.store(true, Ordering::Relaxed);
                let place = pack.place.clone();
                *cur = None;
                return Err(Error::io(place, e));
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

    /// Gives a full pack to the I/O thread (waiting only while [`SEAL_QUEUE`] packs are queued already).
    fn hand_over(&self, pack: OpenPack) -> Result<()> {
        if self.failed.load(Ordering::Relaxed) || self.io.send(Job::Write(Box::new(pack))).is_err()
        {
            return Err(self.flush().err().unwrap_or_else(earlier_failure));
        }
        Ok(())
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

    /// Seals and writes the partly filled pack. Call once all blobs are saved, before writing anything that
    /// references them.
    pub fn flush(&self) -> Result<()> {
        let pack = self.lock_current().take();
        if let Some(pack) = pack.filter(|p| !p.builder.is_empty()) {
            self.hand_over(pack)?;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.io.send(Job::Flush(tx)).is_err() {
            return Err(earlier_failure());
        }
        rx.recv().unwrap_or_else(|_| Err(earlier_failure()))
    }

    /// The I/O thread: writes packs in the order they were handed over; after a failure it writes no more.
    fn io_loop(&self, jobs: Receiver<Job>) {
        let mut error = None;
        for job in jobs {
            match job {
                Job::Write(pack) => {
                    if self.failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Err(e) = self.write_pack(*pack) {
                        self.failed.store(true, Ordering::Relaxed);
                        error = Some(e);
                    }
                }
                Job::Flush(reply) => {
                    let result = match error.take() {
                        Some(e) => Err(e),
                        None if self.failed.load(Ordering::Relaxed) => Err(earlier_failure()),
                        None => Ok(()),
                    };
                    let _ = reply.send(result);
                }
                Job::Stop => return,
            }
        }
    }

    /// Seals `pack`, makes it durable under its final name, then indexes it (format-spec, "Write ordering").
    fn write_pack(&self, pack: OpenPack) -> Result<()> {
        let (out, id, entries) = pack.builder.seal().map_err(|e| Error::io(&pack.place, e))?;
        let size = out.finish(&id.to_hex())?;
        let mut index = self.repo.index();
        if self.relocate {
            index.relocate_pack(id, size, &entries)?;
        } else {
            index.add_pack(id, size, &entries)?;
        }
        drop(index);
        self.stats.packs_written.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.lock_pending();
        for e in &entries {
            pending.remove(&e.id);
        }
        Ok(())
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
        let builder = PackBuilder::start(out).map_err(|e| Error::io(&place, e))?;
        Ok(OpenPack { builder, place })
    }
}

/// The error of a writer whose I/O thread failed (its own error was reported by an earlier call).
fn earlier_failure() -> Error {
    Error::io(
        "packs",
        std::io::Error::other("an earlier pack write of this run failed"),
    )
}
