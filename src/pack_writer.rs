//! Saving blobs: deduplication against the index, compression, and packing into durable pack files.
//!
//! Write ordering (format-spec/README.md, "Write ordering"): a pack file is written to a temporary file,
//! fsynced, renamed into place and its directory fsynced before its blobs are added to the index, and a blob is
//! "pending" (known to this writer only) until that index transaction commits. A crash therefore leaves at
//! worst an unindexed pack, which `repair index` adopts and `prune` removes; never an index row for data
//! that is not on disk.
//!
//! Full packs are written by one I/O thread of their own, so the threads that hash and compress never wait
//! for a pack's page-cache copy and fsync (on two cores that wait used to idle half the machine). A writer
//! therefore lives inside [`PackWriter::scope`], which owns that thread; [`PackWriter::flush`] returns once
//! every blob saved so far is durable and indexed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
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

/// What the savers hand the I/O thread.
enum Job {
    Write(PackBuilder),
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
    current: Mutex<PackBuilder>,
    /// The buffer of the last pack written, for the next pack.
    spare: Mutex<Option<Vec<u8>>>,
    io: Sender<Job>,
    /// Set by the I/O thread when a pack could not be written: saving stops early instead of compressing
    /// data that cannot be stored (the error itself comes back from `flush`).
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
        // A rendezvous channel: a saver that fills a pack while the previous one is still being written waits,
        // so at most three pack buffers exist (filling, handed over, being written).
        let (tx, rx) = crossbeam_channel::bounded(0);
        let writer = PackWriter {
            repo,
            relocate,
            pending: Mutex::new(HashSet::new()),
            current: Mutex::new(PackBuilder::with_buffer(pack_buffer(repo))),
            spare: Mutex::new(None),
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
        if !self.claim(&id)? {
            return Ok(false);
        }
        // Compression runs outside every lock: it is the expensive step and must use all cores.
        let (compression, stored) = pack::encode_blob(raw, self.repo.config().compression_level)?;
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
            self.hand_over(builder)?;
        }
        Ok(())
    }

    /// Gives a full pack to the I/O thread (waiting while it writes the previous one).
    fn hand_over(&self, builder: PackBuilder) -> Result<()> {
        if self.failed.load(Ordering::Relaxed) || self.io.send(Job::Write(builder)).is_err() {
            return Err(self.flush().err().unwrap_or_else(earlier_failure));
        }
        Ok(())
    }

    /// Marks `id` as being stored by this writer; false if it is stored already or being stored.
    ///
    /// The index lookup runs outside the pending-set lock, so savers contend only for the index. A blob whose
    /// pack is written and indexed between the two looks is stored twice: harmless (the index keeps one
    /// location; `prune` reclaims the copy), as with two concurrent backups.
    fn claim(&self, id: &Id) -> Result<bool> {
        if self.lock_pending().contains(id) {
            return Ok(false);
        }
        if !self.relocate && self.repo.index().contains(id)? {
            return Ok(false);
        }
        Ok(self.lock_pending().insert(*id))
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashSet<Id>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
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
        if !builder.is_empty() && self.io.send(Job::Write(builder)).is_err() {
            return Err(earlier_failure());
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
                Job::Write(builder) => {
                    if self.failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Err(e) = self.write_pack(builder) {
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
        let mut pending = self.lock_pending();
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

/// The error of a writer whose I/O thread failed (its own error was reported by an earlier call).
fn earlier_failure() -> Error {
    Error::io(
        "packs",
        std::io::Error::other("an earlier pack write of this run failed"),
    )
}
