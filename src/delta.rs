//! Delta chunks (format-spec/README.md section 5.1, blob kind 2): a new chunk of a stream whose previous
//! snapshot (same instance, same stream name) is in the repository is stored as a zstd frame compressed with
//! a chunk of that previous stream (its *base*) as raw-content dictionary, when that is smaller than the
//! chunk compressed on its own. A database dump changes by rows here and there, so most new chunks of the
//! next day's dump are small edits of the chunk at the same place the day before, and the delta stores the
//! edit rather than the chunk.
//!
//! This module owns the codec ([`compress`], [`decode_blob`]), the choice of bases while a stream is saved
//! ([`StreamDeltas`], which reads a window's bases in merged runs through [`crate::fetch`]), the one
//! resolution of bases on the read path ([`decode`], called by [`Repository::decode_stored`] for every delta
//! blob, with a small bounded cache of base contents; [`decode_with_base`] when a batch read of many blobs
//! has read the bases ahead), and the relations that GC and check follow ([`dependents`],
//! [`chain_problem`]).
//!
//! Invariants:
//! - A base is always a blob that was indexed before the delta was written (a chunk of a finished snapshot),
//!   never the delta itself. Readers accept chains of at most [`MAX_DEPTH`] deltas from a blob down to the
//!   plain blob it ends in, and refuse a longer (or cyclic, from a hostile repository) chain as corruption
//!   instead of following it; this writer makes chains of at most [`WRITE_DEPTH`]: a candidate base already
//!   that deep is replaced by the blob on its chain one level lower (the plain chunk, at depth 1). Storing
//!   such a chunk plain instead, as a first version did with depth 4, made the day on which chains filled
//!   up store its changed chunks whole (BENCHMARKS.md, "A week of dumps"), and every level costs a read and a
//!   decode on restore and on the next backup.
//! - A delta is damaged when its base is: a base that is missing, not indexed or does not verify makes the
//!   delta fail to decode with a damage error ([`Error::is_damage`]) naming the base; other read errors of
//!   the base (permissions, I/O) pass through unchanged, so nothing is recorded as damage on their account.
//! - A writer uses only bases verified against their ids (a delta made against wrong bytes would verify
//!   against them and be stored undecodable). A reader may use a base read ahead unverified
//!   ([`decode_unverified`]): the delta's result is checked against the delta's id, and a delta that fails
//!   is decoded again through [`decode`], so its error names the damaged base as before.
//! - Base choice is by byte position (see [`StreamDeltas`]); content similarity was not measured yet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::backend::ObjectKind;
use crate::chunking::Batch;
use crate::crypto::{self, Crypto};
use crate::error::{Error, Result};
use crate::fetch::Fetcher;
use crate::hashing::Id;
use crate::index::{Index, Location};
use crate::pack::{self, BlobEntry, BlobKind, Compression};
use crate::pack_writer::{Encoded, PackWriter};
use crate::repo::Repository;
use crate::tree::NodeKind;

/// Most deltas on the way from a blob down to the plain blob its chain ends in (the blob itself included):
/// what readers accept (format-spec section 5.1).
pub const MAX_DEPTH: usize = 4;

/// The deepest chain this writer makes (at most [`MAX_DEPTH`]): a candidate base whose chain is already
/// this deep is replaced by the blob on its chain one level lower, down to the plain chunk it ends in.
pub const WRITE_DEPTH: usize = 1;

/// First bytes of a zstd structured dictionary: a base starting with them would be read by zstd as such a
/// dictionary instead of as raw content, so a writer never chooses it (nor a base shorter than 8 bytes, which
/// zstd ignores as a dictionary).
const ZSTD_DICT_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];

/// Bounds of the cache of base contents shared by every reader of this process.
const CACHE_ENTRIES: usize = 64;
const CACHE_BYTES: usize = 8 << 20;

/// True if `base` can serve as a delta base (see [`ZSTD_DICT_MAGIC`]).
pub fn usable_base(base: &[u8]) -> bool {
    base.len() >= 8 && base[..4] != ZSTD_DICT_MAGIC
}

thread_local! {
    static CCTX: std::cell::RefCell<Option<zstd::zstd_safe::CCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `raw` at `level` with `base` as raw-content dictionary (one zstd frame), on this thread's
/// context. The caller checks [`usable_base`].
pub fn compress(raw: &[u8], base: &[u8], level: i32) -> Result<Vec<u8>> {
    CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let cctx = slot.get_or_insert_with(zstd::zstd_safe::CCtx::create);
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
        cctx.compress_using_dict(&mut out, raw, base, level)
            .map_err(|code| Error::corrupt("zstd delta", zstd::zstd_safe::get_error_name(code)))?;
        Ok(out)
    })
}

/// Decompresses a delta frame with `base` as dictionary into at most `capacity` bytes.
fn decompress(stored: &[u8], base: &[u8], capacity: usize) -> std::result::Result<Vec<u8>, String> {
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = slot.get_or_insert_with(zstd::zstd_safe::DCtx::create);
        let mut out = Vec::with_capacity(capacity);
        dctx.decompress_using_dict(&mut out, stored, base)
            .map_err(|code| zstd::zstd_safe::get_error_name(code).to_string())?;
        Ok(out)
    })
}

/// Opens (in an encrypted repository), decodes and verifies a delta blob's stored bytes, given the raw bytes
/// of its base. Fails on anything but a kind-2, zstd-compressed entry whose result has `raw_len` bytes and
/// hashes to its id.
pub fn decode_blob(
    entry: &BlobEntry,
    stored: &[u8],
    crypto: &Crypto,
    base: &[u8],
) -> Result<Vec<u8>> {
    let what = || format!("blob {}", entry.id);
    if entry.kind != BlobKind::DeltaData || entry.compression != Compression::Zstd {
        return Err(Error::corrupt(
            what(),
            "a delta blob must be of kind 2 and zstd-compressed",
        ));
    }
    if entry.raw_len > pack::MAX_BLOB_LEN {
        return Err(Error::corrupt(what(), "too large"));
    }
    let stored = crypto.open(&what(), crypto::AAD_BLOB, stored)?;
    let raw = decompress(&stored, base, entry.raw_len as usize)
        .map_err(|e| Error::corrupt(what(), format!("delta does not decompress: {e}")))?;
    if raw.len() != entry.raw_len as usize || crypto.blob_id(&raw) != entry.id {
        return Err(Error::corrupt(what(), "content does not match its id"));
    }
    Ok(raw)
}

/// Decodes the delta blob at `loc` (stored bytes `stored`, read by the caller): resolves its base through
/// the index (at most [`MAX_DEPTH`] deltas deep, with the cache) and applies the delta.
pub fn decode(repo: &Repository, loc: &Location, stored: &[u8]) -> Result<Vec<u8>> {
    let base = loc
        .entry
        .base
        .ok_or_else(|| Error::corrupt(format!("blob {}", loc.entry.id), "delta without a base"))?;
    let base_raw = resolve(repo, &base, 1).map_err(|e| in_base_of(&loc.entry.id, &base, e))?;
    decode_blob(&loc.entry, stored, repo.crypto(), &base_raw)
}

/// [`decode`] with the base's raw bytes already read and verified by the caller (a batch of bases read
/// ahead: [`crate::fetch`]). If the delta does not decode against them, it is decoded again on its own, so
/// that its error is the one [`decode`] reports.
pub fn decode_with_base(
    repo: &Repository,
    loc: &Location,
    stored: &[u8],
    base: &[u8],
) -> Result<Vec<u8>> {
    match decode_blob(&loc.entry, stored, repo.crypto(), base) {
        Ok(raw) => Ok(raw),
        Err(_) => repo.decode_stored(loc, stored),
    }
}

/// The raw bytes of a plain (not delta) blob, opened and decompressed but not checked against its id, only
/// its length: for a base read ahead whose delta's own bytes are then checked (see
/// [`crate::fetch::Fetcher::read_bases`]). A blob as large as a dump chunk is hashed in about as long as it
/// is decompressed, and a stream of deltas has about one base per chunk.
pub fn decode_unverified(repo: &Repository, loc: &Location, stored: &[u8]) -> Result<Vec<u8>> {
    let what = || format!("blob {}", loc.entry.id);
    if loc.entry.kind == BlobKind::DeltaData || loc.entry.raw_len > pack::MAX_BLOB_LEN {
        return Err(Error::corrupt(what(), "not a plain blob"));
    }
    let stored = repo.crypto().open(&what(), crypto::AAD_BLOB, stored)?;
    let raw = match loc.entry.compression {
        Compression::None => stored.into_owned(),
        Compression::Zstd => decompress(&stored, &[], loc.entry.raw_len as usize)
            .map_err(|e| Error::corrupt(what(), format!("does not decompress: {e}")))?,
    };
    if raw.len() != loc.entry.raw_len as usize {
        return Err(Error::corrupt(what(), "wrong length"));
    }
    Ok(raw)
}

/// Damage of a base is damage of the delta too (named by both); other errors pass through unchanged.
fn in_base_of(delta: &Id, base: &Id, e: Error) -> Error {
    if e.is_damage() {
        Error::corrupt(
            format!("blob {delta}"),
            format!("its delta base {base}: {e}"),
        )
    } else {
        e
    }
}

/// The raw bytes of `id`, reached `level` steps below the delta being decoded.
fn resolve(repo: &Repository, id: &Id, level: usize) -> Result<Arc<Vec<u8>>> {
    let key = cache_key(repo);
    if let Some(hit) = cache().get(key, id) {
        return Ok(hit);
    }
    let loc = repo
        .with_reader(|r| r.lookup(id))?
        .ok_or_else(|| Error::corrupt(format!("blob {id}"), "is not in the index"))?;
    let raw = if loc.entry.kind == BlobKind::DeltaData {
        if level >= MAX_DEPTH {
            return Err(Error::corrupt(
                format!("blob {id}"),
                format!("delta chain longer than {MAX_DEPTH}"),
            ));
        }
        let base = loc
            .entry
            .base
            .ok_or_else(|| Error::corrupt(format!("blob {id}"), "delta without a base"))?;
        let stored = repo.backend().get_range(
            ObjectKind::Pack,
            &loc.pack.to_hex(),
            loc.entry.offset,
            u64::from(loc.entry.stored_len),
        )?;
        let base_raw = resolve(repo, &base, level + 1).map_err(|e| in_base_of(id, &base, e))?;
        decode_blob(&loc.entry, &stored, repo.crypto(), &base_raw)?
    } else {
        repo.read_located(&loc)?
    };
    let raw = Arc::new(raw);
    cache().put(key, *id, raw.clone());
    Ok(raw)
}

/// Names the repository in cache keys (ids of two repositories with different id keys never mix).
fn cache_key(repo: &Repository) -> u64 {
    let h = blake3::hash(repo.config().repository_id.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// Recently resolved bases, least recently used first. Small: a stream's bases are mostly used once, in
/// stream order; the cache serves chains (a base that is itself a delta) and neighbouring deltas sharing one.
#[derive(Default)]
struct BaseCache {
    entries: VecDeque<(u64, Id, Arc<Vec<u8>>)>,
    bytes: usize,
}

impl BaseCache {
    fn get(&mut self, key: u64, id: &Id) -> Option<Arc<Vec<u8>>> {
        let i = self.entries.iter().position(|e| e.0 == key && e.1 == *id)?;
        let e = self.entries.remove(i)?;
        let raw = e.2.clone();
        self.entries.push_back(e);
        Some(raw)
    }

    fn put(&mut self, key: u64, id: Id, raw: Arc<Vec<u8>>) {
        if raw.len() > CACHE_BYTES / 4 || self.entries.iter().any(|e| e.0 == key && e.1 == id) {
            return;
        }
        self.bytes += raw.len();
        self.entries.push_back((key, id, raw));
        while self.entries.len() > CACHE_ENTRIES || self.bytes > CACHE_BYTES {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= e.2.len(),
                None => break,
            }
        }
    }
}

fn cache() -> std::sync::MutexGuard<'static, BaseCache> {
    static CACHE: Mutex<BaseCache> = Mutex::new(BaseCache {
        entries: VecDeque::new(),
        bytes: 0,
    });
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The chain from `base` down to the plain blob it ends in (`[base]` when `base` is plain); `None` if it
/// leaves the index, reaches `new` or is longer than [`MAX_DEPTH`] allows.
fn chain_of(index: &Index, base: &Id, new: &Id) -> Result<Option<Vec<Id>>> {
    let mut chain = vec![*base];
    for _ in 0..MAX_DEPTH {
        let cur = chain[chain.len() - 1];
        if cur == *new {
            return Ok(None);
        }
        let Some(loc) = index.lookup(&cur)? else {
            return Ok(None);
        };
        match (loc.entry.kind, loc.entry.base) {
            (BlobKind::DeltaData, Some(next)) => chain.push(next),
            (BlobKind::DeltaData, None) => return Ok(None),
            _ => return Ok(Some(chain)),
        }
    }
    Ok(None)
}

/// The base a new delta gets for the candidate whose chain is `chain` (see [`chain_of`]): the candidate
/// itself while the new delta stays within [`WRITE_DEPTH`], else the blob on its chain just low enough.
fn pick_base(chain: &[Id]) -> Id {
    chain[chain.len().saturating_sub(WRITE_DEPTH)]
}

/// What is wrong with the chain below the delta blob `id`, if anything: a base that is not indexed, a chain
/// longer than [`MAX_DEPTH`] or a cycle. `None` for a plain blob or a sound chain (check's structural pass).
pub fn chain_problem(index: &Index, id: &Id) -> Result<Option<String>> {
    let mut cur = *id;
    for _ in 0..=MAX_DEPTH {
        let Some(loc) = index.lookup(&cur)? else {
            return Ok(Some(format!("its delta base {cur} is not indexed")));
        };
        match (loc.entry.kind, loc.entry.base) {
            (BlobKind::DeltaData, Some(next)) => cur = next,
            (BlobKind::DeltaData, None) => return Ok(Some("a delta without a base".into())),
            _ => return Ok(None),
        }
    }
    Ok(Some(format!("its delta chain is longer than {MAX_DEPTH}")))
}

/// Every indexed delta blob that needs one of `damaged` as a base, directly or through other deltas, with
/// the pack of its indexed copy and the base it needs: blob -> (pack, base).
pub fn dependents(index: &Index, damaged: &HashSet<Id>) -> Result<HashMap<Id, (Id, Id)>> {
    let mut by_base: HashMap<Id, Vec<(Id, Id)>> = HashMap::new();
    let mut st = index.raw().prepare(
        "SELECT b.id, b.base, p.id FROM blobs b JOIN packs p ON p.pack_no = b.pack_no
         WHERE b.kind = 2 AND b.base IS NOT NULL",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    for row in rows {
        let (id, base, pack) = row?;
        let bad = || Error::corrupt("index", "delta blob row");
        let (id, base, pack) = (
            Id::from_slice(&id).ok_or_else(bad)?,
            Id::from_slice(&base).ok_or_else(bad)?,
            Id::from_slice(&pack).ok_or_else(bad)?,
        );
        by_base.entry(base).or_default().push((id, pack));
    }
    let mut out = HashMap::new();
    let mut todo: Vec<Id> = damaged.iter().copied().collect();
    while let Some(base) = todo.pop() {
        for &(id, pack) in by_base.get(&base).into_iter().flatten() {
            if !damaged.contains(&id) && !out.contains_key(&id) {
                out.insert(id, (pack, base));
                todo.push(id);
            }
        }
    }
    Ok(out)
}

/// Marks, in prune's `temp.used` table, the bases of every marked blob, transitively (a blob keeps its base
/// alive). Terminates on any index, cycles included: each round only adds rows.
pub fn mark_bases(index: &Index) -> Result<()> {
    loop {
        let added = index.raw().execute(
            "INSERT OR IGNORE INTO temp.used(id)
             SELECT b.base FROM temp.used u JOIN blobs b ON b.id = u.id
             WHERE b.kind = 2 AND b.base IS NOT NULL",
            [],
        )?;
        if added == 0 {
            return Ok(());
        }
    }
}

/// The base chooser of one stream being saved: the chunk list of the same stream in its parent snapshot
/// and where the new stream stands in it.
///
/// Positions are byte offsets, not chunk numbers: a new chunk at `d` bytes past the end of the last chunk
/// both streams share is compared with the parent chunk that covers `d` bytes (to the new chunk's middle)
/// past that chunk's end in the parent. Counting chunks instead drifts off as soon as an edit moves a
/// boundary, and in a stretch where every chunk changed (no shared chunk to re-anchor on) it compared
/// chunks with the wrong rows: on a test stream with an edit every 2.5 KB it stored 3.2x less than day 1,
/// by bytes 10x less.
pub struct StreamDeltas {
    parent: Vec<Id>,
    /// Offset of each parent chunk in the parent stream, and the stream's length at the end.
    starts: Vec<u64>,
    /// Position of each parent chunk (its first occurrence).
    position: HashMap<Id, usize>,
    /// Offset in the new stream of the next chunk.
    offset: u64,
    /// Offsets just after the last shared chunk: in the new stream, in the parent.
    anchor_new: u64,
    anchor_parent: u64,
}

impl StreamDeltas {
    /// The chooser for stream `name` of a backup of `instance`, if an earlier snapshot of that instance holds
    /// a stream of that name (the latest one is the parent). Deltas are an optimisation: a parent whose
    /// chunk list cannot be read gives none.
    pub fn for_stream(
        repo: &Repository,
        instance: Option<&str>,
        name: &str,
    ) -> Result<Option<StreamDeltas>> {
        let snaps = repo.snapshots()?;
        let parent = snaps.iter().rev().find(|(_, s)| {
            s.instance.as_deref() == instance
                && s.stream_tree.is_some()
                && s.streams.iter().any(|st| st.name == name)
        });
        let Some(tree) = parent.and_then(|(_, s)| s.stream_tree) else {
            return Ok(None);
        };
        let Ok(tree) = repo.read_tree(&tree) else {
            return Ok(None);
        };
        let Some(NodeKind::File { chunks, .. }) = tree.get(name.as_bytes()).map(|n| &n.kind) else {
            return Ok(None);
        };
        let lens = repo.with_reader(|r| {
            chunks
                .iter()
                .map(|c| Ok(r.lookup(c)?.map(|l| l.entry.raw_len)))
                .collect::<Result<Option<Vec<u32>>>>()
        })?;
        // A parent chunk that is not indexed: the parent is damaged, and no delta is worth the doubt.
        Ok(lens.map(|lens| StreamDeltas::new(chunks.iter().copied().zip(lens).collect())))
    }

    /// A chooser against the parent's chunks (id and length, in order).
    pub fn new(parent: Vec<(Id, u32)>) -> StreamDeltas {
        let mut position = HashMap::with_capacity(parent.len());
        let mut starts = Vec::with_capacity(parent.len() + 1);
        let mut at = 0u64;
        for (i, (id, len)) in parent.iter().enumerate() {
            position.entry(*id).or_insert(i);
            starts.push(at);
            at += u64::from(*len);
        }
        starts.push(at);
        StreamDeltas {
            parent: parent.into_iter().map(|(id, _)| id).collect(),
            starts,
            position,
            offset: 0,
            anchor_new: 0,
            anchor_parent: 0,
        }
    }

    /// The base candidate of each of `chunks` (id and length of the next chunks of the stream, in order):
    /// none for a chunk the parent has (it deduplicates), else the parent chunk at the same distance past
    /// the last shared chunk (see the type's docs).
    pub fn bases(&mut self, chunks: &[(Id, u32)]) -> Vec<Option<Id>> {
        chunks
            .iter()
            .map(|&(id, len)| {
                let len = u64::from(len);
                let base = match self.position.get(&id) {
                    Some(&at) => {
                        self.anchor_parent = self.starts[at + 1];
                        self.anchor_new = self.offset + len;
                        None
                    }
                    None => {
                        let target = self.anchor_parent + (self.offset + len / 2 - self.anchor_new);
                        let i = self.starts.partition_point(|&s| s <= target);
                        self.parent.get(i.wrapping_sub(1)).copied()
                    }
                };
                self.offset += len;
                base
            })
            .collect()
    }

    /// Saves the chunks of `batch` (the next window of the stream) through `writer`, each new one as a delta
    /// against its base candidate when that is smaller; returns their ids in order.
    ///
    /// The bases of the whole window are read ahead in merged runs ([`crate::fetch`]): they are the
    /// parent's chunks at the same place, in the parent's order, so a few reads replace a ranged read (and
    /// a pack opened) per new chunk.
    pub fn save_batch(
        &mut self,
        writer: &PackWriter,
        batch: &Batch,
        level: i32,
    ) -> Result<Vec<Id>> {
        let repo = writer.repo();
        let ids: Vec<Id> = batch
            .cuts
            .par_iter()
            .map(|&(off, len)| repo.crypto().blob_id(&batch.data[off..off + len]))
            .collect();
        let sized: Vec<(Id, u32)> = ids
            .iter()
            .zip(&batch.cuts)
            .map(|(id, &(_, len))| (*id, len as u32))
            .collect();
        let candidates = self.bases(&sized);
        let bases: Vec<Option<Id>> = candidates
            .par_iter()
            .zip(&ids)
            .map(|(c, id)| match c {
                Some(c) => Ok(repo
                    .with_reader(|r| chain_of(r, c, id))?
                    .map(|chain| pick_base(&chain))
                    .filter(|b| !writer.needs_fresh_copy(&[*b]))),
                None => Ok(None),
            })
            .collect::<Result<_>>()?;
        let read = Fetcher::new(repo)?.read_bases(bases.iter().flatten().copied(), true);
        (0..ids.len()).into_par_iter().try_for_each(|i| {
            let (off, len) = batch.cuts[i];
            let raw = &batch.data[off..off + len];
            writer.save_encoded(BlobKind::Data, ids[i], raw.len() as u32, || {
                let base = bases[i].map(|b| (b, read.get(&b)));
                encode_chunk(repo, raw, base, level)
            })?;
            Ok::<_, Error>(())
        })?;
        Ok(ids)
    }
}

/// A delta at most this fraction of its chunk (1/n) is stored without compressing the chunk on its own to
/// compare: a dump chunk compresses to about a third alone, the deltas of a day's changes to a tenth or
/// less, and the comparison cost a second compression (and its check) of nearly every new chunk.
const CLEARLY_SMALLER: usize = 8;

/// Encodes a new stream chunk: as a delta against `base` (its id, and its raw bytes when read ahead) when
/// that is possible (base readable and verified, usable) and smaller than the chunk compressed on its own
/// (or clearly small, see [`CLEARLY_SMALLER`]), else compressed on its own.
fn encode_chunk(
    repo: &Repository,
    raw: &[u8],
    base: Option<(Id, Option<&Vec<u8>>)>,
    level: i32,
) -> Result<Encoded> {
    let plain = |raw: &[u8]| -> Result<Encoded> {
        let (compression, stored) = pack::encode_blob(raw, level)?;
        Ok(Encoded {
            kind: BlobKind::Data,
            compression,
            stored: stored.into_owned(),
            base: None,
        })
    };
    let Some((base, read_ahead)) = base else {
        return plain(raw);
    };
    let resolved;
    let base_raw: &[u8] = match read_ahead {
        Some(b) => b,
        // Any failure to read the base (damage or not) just means no delta: the chunk is stored whole.
        None => match resolve(repo, &base, 1) {
            Ok(b) => {
                resolved = b;
                &resolved
            }
            Err(_) => return plain(raw),
        },
    };
    if !usable_base(base_raw) {
        return plain(raw);
    }
    let delta = compress(raw, base_raw, level)?;
    if delta.len() * CLEARLY_SMALLER > raw.len() {
        let alone = plain(raw)?;
        if alone.stored.len() <= delta.len() {
            return Ok(alone);
        }
    }
    // A compressor or memory fault must not reach the disk (format-spec section 5).
    match decompress(&delta, base_raw, raw.len()) {
        Ok(back) if back == raw => Ok(Encoded {
            kind: BlobKind::DeltaData,
            compression: Compression::Zstd,
            stored: delta,
            base: Some(base),
        }),
        _ => Err(Error::corrupt(
            "zstd delta",
            "compressed delta did not decompress to its input",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(raw: &[u8], stored: &[u8], base: Id) -> BlobEntry {
        BlobEntry {
            kind: BlobKind::DeltaData,
            compression: Compression::Zstd,
            stored_len: stored.len() as u32,
            raw_len: raw.len() as u32,
            offset: 8,
            id: Id::of(raw),
            base: Some(base),
        }
    }

    #[test]
    fn a_delta_round_trips_and_is_much_smaller_than_the_chunk_alone() {
        let base: Vec<u8> = (0..8192u32)
            .flat_map(|i| format!("{} ", i.wrapping_mul(2654435761) % 99991).into_bytes())
            .take(8192)
            .collect();
        let mut new = base.clone();
        new[4000..4010].copy_from_slice(b"0123456789");
        let delta = compress(&new, &base, 1).unwrap();
        let (_, plain) = pack::encode_blob(&new, 1).unwrap();
        assert!(
            delta.len() * 10 < plain.len(),
            "{} vs {}",
            delta.len(),
            plain.len()
        );
        let e = entry(&new, &delta, Id::of(&base));
        assert_eq!(
            decode_blob(&e, &delta, &Crypto::plaintext(), &base).unwrap(),
            new
        );
        // The wrong base, a flipped byte or a plain entry kind is an error, never a wrong result.
        let mut other = base.clone();
        other[100] ^= 1;
        assert!(decode_blob(&e, &delta, &Crypto::plaintext(), &other).is_err());
        let mut bad = delta.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode_blob(&e, &bad, &Crypto::plaintext(), &base).is_err());
        let plain_kind = BlobEntry {
            kind: BlobKind::Data,
            ..e
        };
        assert!(decode_blob(&plain_kind, &delta, &Crypto::plaintext(), &base).is_err());
    }

    #[test]
    fn bases_are_at_the_same_distance_past_the_last_shared_chunk() {
        let p: Vec<Id> = (0..6u8).map(|i| Id([i; 32])).collect();
        let n = |i: u8| Id([100 + i; 32]);
        // Parent chunks of 100 bytes: p0 [0,100) p1 [100,200) ... p5 [500,600).
        let mut d = StreamDeltas::new(p.iter().map(|&id| (id, 100)).collect());
        // shared p0; new chunks of 60, 60 and 100 bytes (middles 30, 90 and 170 past p0: p1, p1, p2); shared
        // p4; a new chunk of 100 (middle 50 past p4: p5); one past the parent's end (none).
        let got = d.bases(&[
            (p[0], 100),
            (n(1), 60),
            (n(2), 60),
            (n(3), 100),
            (p[4], 100),
            (n(4), 100),
            (n(5), 100),
        ]);
        assert_eq!(
            got,
            vec![
                None,
                Some(p[1]),
                Some(p[1]),
                Some(p[2]),
                None,
                Some(p[5]),
                None
            ]
        );
    }

    #[test]
    fn unusable_bases_are_refused() {
        assert!(!usable_base(b"short"));
        assert!(!usable_base(&[0x37, 0xa4, 0x30, 0xec, 1, 2, 3, 4, 5]));
        assert!(usable_base(b"a longer base"));
    }

    #[test]
    fn the_cache_stays_within_its_bounds() {
        let mut c = BaseCache::default();
        for i in 0..200u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            c.put(1, Id(id), Arc::new(vec![0; 300 << 10]));
            assert!(c.entries.len() <= CACHE_ENTRIES && c.bytes <= CACHE_BYTES);
        }
        let last = {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&199u32.to_le_bytes());
            Id(id)
        };
        assert!(c.get(1, &last).is_some());
        assert!(c.get(2, &last).is_none(), "another repository's key");
    }
}
