//! Pack files (format-spec/README.md, "Packs"): blobs appended back to back, followed by a trailer that lists
//! every blob, so a pack describes itself and the index can be rebuilt from packs alone.
//!
//! ```text
//! offset 0            8                                   D            D+88*N         D+88*N+48
//!        | magic (8)  | blob 0 | blob 1 | ... | blob N-1  | entry * N  | footer (48) |
//!
//! entry (88 bytes, little-endian):            footer (48 bytes):
//!   0  kind u8                                  0  entry_count u32
//!   1  compression u8                           4  reserved u32 (0)
//!   2  reserved u16 (0)                         8  BLAKE3 of the entry bytes [32]
//!   4  stored_len u32                          40  magic "CAIRNEND" [8]
//!   8  raw_len u32
//!  12  offset u64 (from the start of the file)
//!  20  id [32]  (BLAKE3 of the raw bytes)
//!  52  base [32] (delta base id; zero for other kinds)
//!  84  reserved u32 (0)
//! ```
//! A pack's id is the BLAKE3 of the whole file. Packs are written once and never modified.
//!
//! In an encrypted repository (format-spec "Encryption") the magic's version byte is 2, every blob's stored
//! bytes are sealed on their own (`nonce | ciphertext | tag`, so a blob can still be read by one ranged read
//! and copied to another pack as it is), and the entries are sealed as one string whose BLAKE3 the footer
//! holds: the list of blob ids is not readable without the key. The footer stays plaintext.

use std::borrow::Cow;
use std::cell::RefCell;

use crate::crypto::{self, Crypto};
use crate::error::{Error, Result};
use crate::hashing::Id;

/// First bytes of every pack.
pub const PACK_MAGIC: [u8; 8] = *b"CAIRNPK\x01";
/// First bytes of every pack of an encrypted repository (blobs and trailer sealed).
pub const PACK_MAGIC_SEALED: [u8; 8] = *b"CAIRNPK\x02";
/// Last bytes of every pack.
pub const FOOTER_MAGIC: [u8; 8] = *b"CAIRNEND";
/// Size of one trailer entry.
pub const ENTRY_LEN: usize = 88;
/// Size of the footer.
pub const FOOTER_LEN: usize = 48;
/// Largest raw blob a reader accepts; bounds allocations on hostile input (chunks are at most 16 MiB, trees
/// are split well below this).
pub const MAX_BLOB_LEN: u32 = 256 * 1024 * 1024;
/// Largest stored blob a reader accepts: a writer stores a blob compressed only when that is shorter than
/// its raw bytes (a delta only when shorter still), so stored bytes are at most [`MAX_BLOB_LEN`] plus a
/// sealed envelope's overhead; the 1 KiB margin is far above that. Bounds what a reader holds for one blob.
pub const MAX_STORED_LEN: u32 = MAX_BLOB_LEN + 1024;

const ENTRY_KIND: usize = 0;
const ENTRY_COMPRESSION: usize = ENTRY_KIND + 1;
const ENTRY_STORED_LEN: usize = ENTRY_COMPRESSION + 3;
const ENTRY_RAW_LEN: usize = ENTRY_STORED_LEN + 4;
const ENTRY_OFFSET: usize = ENTRY_RAW_LEN + 4;
const ENTRY_ID: usize = ENTRY_OFFSET + 8;
const ENTRY_BASE: usize = ENTRY_ID + 32;
const _: () = assert!(ENTRY_BASE + 32 + 4 == ENTRY_LEN);

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// A chunk of file or stream content.
    Data = 0,
    /// An encoded tree object.
    Tree = 1,
    /// A chunk stored as a zstd delta against the chunk named by `base` (format-spec section 5.1; decoded by
    /// [`crate::delta`], which needs the repository to find the base).
    DeltaData = 2,
}

impl BlobKind {
    pub fn from_u8(v: u8) -> Option<BlobKind> {
        match v {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            2 => Some(BlobKind::DeltaData),
            _ => None,
        }
    }
}

/// How a blob's stored bytes encode its raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

impl Compression {
    pub fn from_u8(v: u8) -> Option<Compression> {
        match v {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// One trailer entry: where a blob sits in its pack and how to decode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobEntry {
    pub kind: BlobKind,
    pub compression: Compression,
    pub stored_len: u32,
    pub raw_len: u32,
    pub offset: u64,
    pub id: Id,
    pub base: Option<Id>,
}

impl BlobEntry {
    /// Appends the entry's 88 bytes (format-spec "Packs"; index objects reuse the layout).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut e = [0u8; ENTRY_LEN];
        e[ENTRY_KIND] = self.kind as u8;
        e[ENTRY_COMPRESSION] = self.compression as u8;
        e[ENTRY_STORED_LEN..ENTRY_STORED_LEN + 4].copy_from_slice(&self.stored_len.to_le_bytes());
        e[ENTRY_RAW_LEN..ENTRY_RAW_LEN + 4].copy_from_slice(&self.raw_len.to_le_bytes());
        e[ENTRY_OFFSET..ENTRY_OFFSET + 8].copy_from_slice(&self.offset.to_le_bytes());
        e[ENTRY_ID..ENTRY_ID + 32].copy_from_slice(&self.id.0);
        if let Some(base) = self.base {
            e[ENTRY_BASE..ENTRY_BASE + 32].copy_from_slice(&base.0);
        }
        out.extend_from_slice(&e);
    }

    fn decode(e: &[u8]) -> Result<BlobEntry> {
        let bad = |d: &str| Error::corrupt("pack trailer", d);
        let u32_at = |o: usize| u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]);
        let kind = BlobKind::from_u8(e[ENTRY_KIND]).ok_or_else(|| bad("unknown blob kind"))?;
        let compression =
            Compression::from_u8(e[ENTRY_COMPRESSION]).ok_or_else(|| bad("unknown compression"))?;
        let mut off = [0u8; 8];
        off.copy_from_slice(&e[ENTRY_OFFSET..ENTRY_OFFSET + 8]);
        let id = Id::from_slice(&e[ENTRY_ID..ENTRY_ID + 32]).ok_or_else(|| bad("id"))?;
        let base = Id::from_slice(&e[ENTRY_BASE..ENTRY_BASE + 32]).ok_or_else(|| bad("base"))?;
        Ok(BlobEntry {
            kind,
            compression,
            stored_len: u32_at(ENTRY_STORED_LEN),
            raw_len: u32_at(ENTRY_RAW_LEN),
            offset: u64::from_le_bytes(off),
            id,
            base: (kind == BlobKind::DeltaData).then_some(base),
        })
    }
}

/// Writes one pack to `W` blob by blob (a file for [`crate::pack_writer`], a `Vec` for tests and tools),
/// hashing as it goes, so a pack is never held in memory whole and each blob is written while it is still in
/// the CPU cache of the thread that compressed it.
pub struct PackBuilder<W = Vec<u8>> {
    out: W,
    /// Seals the trailer (the caller seals each blob's stored bytes).
    crypto: Crypto,
    hasher: blake3::Hasher,
    len: u64,
    entries: Vec<BlobEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        PackBuilder::new()
    }
}

impl PackBuilder {
    /// A pack built in memory.
    pub fn new() -> PackBuilder {
        PackBuilder::start(Vec::new()).expect("writing to a Vec cannot fail")
    }
}

impl<W: std::io::Write> PackBuilder<W> {
    /// Starts a plaintext pack on `out` (writes the header magic).
    pub fn start(out: W) -> std::io::Result<PackBuilder<W>> {
        Self::start_with(out, Crypto::plaintext())
    }

    /// Starts a pack of a repository with keys `crypto` on `out`: blobs given to [`Self::add`] must be
    /// sealed by the caller; the trailer is sealed here.
    pub fn start_with(out: W, crypto: Crypto) -> std::io::Result<PackBuilder<W>> {
        let magic = pack_magic(&crypto);
        let mut b = PackBuilder {
            out,
            crypto,
            hasher: blake3::Hasher::new(),
            len: 0,
            entries: Vec::new(),
        };
        b.write(&magic)?;
        Ok(b)
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Appends an already encoded blob. After an error the pack is unusable (its offsets are unknown).
    pub fn add(
        &mut self,
        kind: BlobKind,
        id: Id,
        raw_len: u32,
        compression: Compression,
        stored: &[u8],
    ) -> std::io::Result<()> {
        self.add_with_base(kind, id, raw_len, compression, None, stored)
    }

    /// [`add`](Self::add) with the base a delta blob (kind 2, section 5.1) needs; `None` for other kinds.
    pub fn add_with_base(
        &mut self,
        kind: BlobKind,
        id: Id,
        raw_len: u32,
        compression: Compression,
        base: Option<Id>,
        stored: &[u8],
    ) -> std::io::Result<()> {
        let entry = BlobEntry {
            kind,
            compression,
            stored_len: stored.len() as u32,
            raw_len,
            offset: self.len,
            id,
            base,
        };
        self.write(stored)?;
        self.entries.push(entry);
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the trailer; returns the output, the pack's id and its entries.
    pub fn seal(mut self) -> std::io::Result<(W, Id, Vec<BlobEntry>)> {
        let mut trailer = Vec::with_capacity(self.entries.len() * ENTRY_LEN + FOOTER_LEN);
        for e in &self.entries {
            e.encode(&mut trailer);
        }
        let mut trailer = self
            .crypto
            .seal(crypto::AAD_TRAILER, &trailer)
            .map_err(std::io::Error::other)?
            .into_owned();
        let trailer_hash = Id::of(&trailer);
        trailer.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        trailer.extend_from_slice(&0u32.to_le_bytes());
        trailer.extend_from_slice(&trailer_hash.0);
        trailer.extend_from_slice(&FOOTER_MAGIC);
        self.write(&trailer)?;
        let id = Id(*self.hasher.finalize().as_bytes());
        Ok((self.out, id, self.entries))
    }
}

/// The magic a pack of a repository with keys `crypto` starts with.
pub fn pack_magic(crypto: &Crypto) -> [u8; 8] {
    if crypto.is_encrypted() {
        PACK_MAGIC_SEALED
    } else {
        PACK_MAGIC
    }
}

/// Bytes of the (possibly sealed) entries of `count` blobs.
pub fn entries_len(count: u32, crypto: &Crypto) -> u64 {
    count as u64 * ENTRY_LEN as u64 + (crypto.sealed_len(0) as u64)
}

/// Parses the footer of a pack of `file_len` bytes; returns the entry count and the trailer's expected hash.
pub fn parse_footer(footer: &[u8], file_len: u64, crypto: &Crypto) -> Result<(u32, Id)> {
    let bad = |d: String| Error::corrupt("pack footer", d);
    if footer.len() != FOOTER_LEN || footer[40..48] != FOOTER_MAGIC {
        return Err(bad("missing end magic (truncated pack?)".into()));
    }
    let count = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]);
    if footer[4..8] != [0; 4] {
        return Err(bad("reserved footer bytes are not zero".into()));
    }
    let needed = PACK_MAGIC.len() as u64 + FOOTER_LEN as u64 + entries_len(count, crypto);
    if needed > file_len {
        return Err(bad(format!(
            "{count} entries do not fit in {file_len} bytes"
        )));
    }
    let hash = Id::from_slice(&footer[8..40]).ok_or_else(|| bad("hash".into()))?;
    Ok((count, hash))
}

/// Decodes and validates a plaintext pack's entries: trailer hash, kinds, and every blob within the data area.
pub fn parse_entries(entries: &[u8], expected: Id, file_len: u64) -> Result<Vec<BlobEntry>> {
    parse_trailer(entries, expected, file_len, &Crypto::plaintext())
}

/// Decodes and validates a pack's trailer as stored (sealed in an encrypted repository): its hash, then its
/// authentication, kinds, and every blob within the data area.
pub fn parse_trailer(
    stored: &[u8],
    expected: Id,
    file_len: u64,
    crypto: &Crypto,
) -> Result<Vec<BlobEntry>> {
    if Id::of(stored) != expected {
        return Err(Error::corrupt("pack trailer", "checksum mismatch"));
    }
    let data_end = data_end(file_len, stored.len() as u64)?;
    let entries = crypto.open("pack trailer", crypto::AAD_TRAILER, stored)?;
    if entries.len() % ENTRY_LEN != 0 {
        return Err(Error::corrupt(
            "pack trailer",
            "not a whole number of entries",
        ));
    }
    decode_entries(&entries, data_end)
}

/// Where the blobs of a pack of `file_len` bytes whose stored entries take `entries_len` bytes end.
fn data_end(file_len: u64, entries_len: u64) -> Result<u64> {
    file_len
        .checked_sub(FOOTER_LEN as u64 + entries_len)
        .ok_or_else(|| Error::corrupt("pack trailer", "larger than the pack"))
}

/// Decodes whole plaintext entries, each checked to lie within `[8, data_end)` and within the size bounds.
pub(crate) fn decode_entries(entries: &[u8], data_end: u64) -> Result<Vec<BlobEntry>> {
    entries
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let entry = BlobEntry::decode(e)?;
            let end = entry.offset.checked_add(entry.stored_len as u64);
            let in_range =
                entry.offset >= PACK_MAGIC.len() as u64 && end.is_some_and(|end| end <= data_end);
            if !in_range || entry.raw_len > MAX_BLOB_LEN || entry.stored_len > MAX_STORED_LEN {
                return Err(Error::corrupt(
                    "pack trailer",
                    format!("blob {} out of range", entry.id.short()),
                ));
            }
            Ok(entry)
        })
        .collect()
}

/// Bytes of a trailer read at once (a multiple of [`ENTRY_LEN`]): an honest trailer of a 16 MiB pack is a
/// few kB and is read whole; only a larger one is read in pieces.
const TRAILER_PIECE: u64 = (4 << 20) / ENTRY_LEN as u64 * ENTRY_LEN as u64;

/// Reads and validates the trailer of the pack `id` of `len` bytes (its listed size) without reading its
/// blobs: ranged reads of the magic, the footer and the entries.
///
/// The footer's entry count is untrusted: a sparse file of a few GiB costs its writer nothing and declares
/// tens of millions of entries. So the entries are never read in one piece: a plaintext trailer is hashed
/// and decoded a piece at a time, and the first entry that cannot be (zeros are out of range) stops the
/// read; a sealed one is hashed a piece at a time first, and read whole only once its hash matches.
pub fn read_trailer(
    backend: &dyn crate::backend::Backend,
    id: &Id,
    len: u64,
    crypto: &Crypto,
) -> Result<Vec<BlobEntry>> {
    // A trailer found damaged leaves its pack out of `repair index` (and of the index objects it writes),
    // and the next prune deletes a pack no index knows: one bad transfer must not decide that.
    crate::backend::read_again_if_damaged(|| read_trailer_once(backend, id, len, crypto))
}

fn read_trailer_once(
    backend: &dyn crate::backend::Backend,
    id: &Id,
    len: u64,
    crypto: &Crypto,
) -> Result<Vec<BlobEntry>> {
    let reader = backend.open_reader(crate::backend::ObjectKind::Pack, &id.to_hex())?;
    if len < (PACK_MAGIC.len() + FOOTER_LEN) as u64 {
        return Err(Error::corrupt("pack", "too short (truncated?)"));
    }
    if reader.read_at(0, PACK_MAGIC.len() as u64)? != pack_magic(crypto) {
        return Err(Error::corrupt("pack", "missing pack magic"));
    }
    let footer = reader.read_at(len - FOOTER_LEN as u64, FOOTER_LEN as u64)?;
    let (count, hash) = parse_footer(&footer, len, crypto)?;
    let entries_len = entries_len(count, crypto);
    let start = len - FOOTER_LEN as u64 - entries_len;
    if entries_len <= TRAILER_PIECE {
        return parse_trailer(&reader.read_at(start, entries_len)?, hash, len, crypto);
    }
    let data_end = data_end(len, entries_len)?;
    let mut hasher = blake3::Hasher::new();
    let mut entries = Vec::new();
    let mut at = 0;
    while at < entries_len {
        let piece = reader.read_at(start + at, TRAILER_PIECE.min(entries_len - at))?;
        hasher.update(&piece);
        if !crypto.is_encrypted() {
            entries.extend(decode_entries(&piece, data_end)?);
        }
        at += piece.len() as u64;
    }
    if Id(*hasher.finalize().as_bytes()) != hash {
        return Err(Error::corrupt("pack trailer", "checksum mismatch"));
    }
    if crypto.is_encrypted() {
        return parse_trailer(&reader.read_at(start, entries_len)?, hash, len, crypto);
    }
    Ok(entries)
}

/// Parses a whole pack held in memory (used by tests, fuzzing and repair).
pub fn parse_pack(bytes: &[u8], crypto: &Crypto) -> Result<Vec<BlobEntry>> {
    let len = bytes.len() as u64;
    if bytes.len() < PACK_MAGIC.len() + FOOTER_LEN || bytes[..8] != pack_magic(crypto) {
        return Err(Error::corrupt("pack", "missing pack magic"));
    }
    let (count, hash) = parse_footer(&bytes[bytes.len() - FOOTER_LEN..], len, crypto)?;
    let start = bytes.len() - FOOTER_LEN - entries_len(count, crypto) as usize;
    parse_trailer(&bytes[start..bytes.len() - FOOTER_LEN], hash, len, crypto)
}

thread_local! {
    /// One zstd context of each kind per thread, reused from blob to blob: creating and resetting a context
    /// for every 32 KiB chunk cost about a third as much as compressing it. Reuse does not change the output
    /// (`zstd::bulk::compress` is a fresh `Compressor` doing the same `compress` call).
    /// One compressor per level in use (file trees and streams compress at different levels).
    static COMPRESSORS: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// `zstd::bulk::compress` on this thread's context.
fn zstd_compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSORS.with(|cell| {
        let mut all = cell.borrow_mut();
        let i = match all.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                all.push((level, zstd::bulk::Compressor::new(level)?));
                all.len() - 1
            }
        };
        all[i].1.compress(raw)
    })
}

/// `zstd::bulk::decompress` on this thread's context.
fn zstd_decompress(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    with_decompressor(|z| z.decompress(stored, capacity))
}

/// True if `compressed` decompresses to exactly `raw`. Decompresses into a buffer kept per thread: a fresh
/// one per blob (up to 4 MiB) cost page faults on every chunk of a backup.
fn zstd_round_trips(compressed: &[u8], raw: &[u8]) -> std::io::Result<bool> {
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| {
        let mut out = cell.borrow_mut();
        out.clear();
        out.reserve(raw.len());
        let n = with_decompressor(|z| z.decompress_to_buffer(compressed, &mut *out))?;
        Ok(n == raw.len() && out[..] == *raw)
    })
}

fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    DECOMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        let mut z = match slot.take() {
            Some(z) => z,
            None => zstd::bulk::Decompressor::new()?,
        };
        let out = f(&mut z);
        *slot = Some(z);
        out
    })
}

/// Encodes raw blob bytes: zstd at `level`, verified by decompressing and comparing with the input (a
/// compressor or memory fault must not reach the disk), or stored raw when compression does not shrink it.
pub fn encode_blob(raw: &[u8], level: i32) -> Result<(Compression, Cow<'_, [u8]>)> {
    let compressed = zstd_compress(raw, level).map_err(|e| Error::corrupt("zstd", e))?;
    if compressed.len() >= raw.len() {
        return Ok((Compression::None, Cow::Borrowed(raw)));
    }
    if !zstd_round_trips(&compressed, raw).map_err(|e| Error::corrupt("zstd", e))? {
        return Err(Error::corrupt(
            "zstd",
            "compressed blob did not decompress to its input",
        ));
    }
    Ok((Compression::Zstd, Cow::Owned(compressed)))
}

/// Opens (in an encrypted repository), decodes and verifies stored blob bytes against the blob's id. A delta
/// blob needs its base: [`crate::delta::decode_blob`] (through [`crate::repo::Repository::decode_stored`]).
pub fn decode_blob(entry: &BlobEntry, stored: &[u8], crypto: &Crypto) -> Result<Vec<u8>> {
    refuse_delta(entry)?;
    let opened = crypto.open(&blob_what(entry), crypto::AAD_BLOB, stored)?;
    decoded(entry, opened, crypto)
}

/// [`decode_blob`] of stored bytes the caller owns: opened where they lie (no copy before the
/// decompression), which leaves them meaningless.
pub fn decode_blob_in_place(
    entry: &BlobEntry,
    stored: &mut [u8],
    crypto: &Crypto,
) -> Result<Vec<u8>> {
    refuse_delta(entry)?;
    let opened = crypto.open_in_place(&blob_what(entry), crypto::AAD_BLOB, stored)?;
    decoded(entry, Cow::Borrowed(&*opened), crypto)
}

fn blob_what(entry: &BlobEntry) -> String {
    format!("blob {}", entry.id)
}

fn refuse_delta(entry: &BlobEntry) -> Result<()> {
    match entry.kind {
        BlobKind::DeltaData => Err(Error::corrupt(
            blob_what(entry),
            "a delta blob cannot be decoded without its base",
        )),
        _ => Ok(()),
    }
}

/// The content of an opened blob, decompressed and checked against its id.
fn decoded(entry: &BlobEntry, opened: Cow<[u8]>, crypto: &Crypto) -> Result<Vec<u8>> {
    let raw = match entry.compression {
        Compression::None => opened.into_owned(),
        Compression::Zstd => zstd_decompress(&opened, entry.raw_len as usize)
            .map_err(|e| Error::corrupt(blob_what(entry), format!("does not decompress: {e}")))?,
    };
    if raw.len() != entry.raw_len as usize || crypto.blob_id(&raw) != entry.id {
        return Err(Error::corrupt(
            blob_what(entry),
            "content does not match its id",
        ));
    }
    Ok(raw)
}

/// A made-up entry, its own for each `n` (the `n`th 10-byte blob of a pack), for the tests of the indexes
/// that list entries.
#[cfg(test)]
pub(crate) fn sample_entry(n: u8) -> BlobEntry {
    BlobEntry {
        kind: BlobKind::Data,
        compression: Compression::Zstd,
        stored_len: 10,
        raw_len: 20,
        offset: 8 + n as u64 * 10,
        id: Id::of(&[n]),
        base: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_pack() -> (Vec<u8>, Id, Vec<BlobEntry>) {
        let mut b = PackBuilder::new();
        for payload in [&b"hello hello hello hello hello"[..], b"x", &[7u8; 5000]] {
            let id = Id::of(payload);
            let (c, stored) = encode_blob(payload, 3).unwrap();
            b.add(BlobKind::Data, id, payload.len() as u32, c, &stored)
                .unwrap();
        }
        b.seal().unwrap()
    }

    #[test]
    fn sealed_pack_parses_back_and_blobs_decode() {
        let (bytes, id, entries) = sample_pack();
        assert_eq!(Id::of(&bytes), id);
        let parsed = parse_pack(&bytes, &Crypto::plaintext()).unwrap();
        assert_eq!(parsed, entries);
        for e in &parsed {
            let stored = &bytes[e.offset as usize..(e.offset + e.stored_len as u64) as usize];
            decode_blob(e, stored, &Crypto::plaintext()).unwrap();
        }
        assert_eq!(
            parsed[1].compression,
            Compression::None,
            "a 1-byte blob does not shrink"
        );
        assert_eq!(parsed[2].compression, Compression::Zstd);
    }

    #[test]
    fn every_truncation_and_every_flipped_trailer_byte_is_an_error() {
        let (bytes, _, entries) = sample_pack();
        for cut in 0..bytes.len() {
            assert!(
                parse_pack(&bytes[..cut], &Crypto::plaintext()).is_err(),
                "truncated at {cut} parsed"
            );
        }
        let data_end = entries
            .last()
            .map(|e| e.offset + e.stored_len as u64)
            .unwrap() as usize;
        for i in data_end..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(
                parse_pack(&b, &Crypto::plaintext()).is_err(),
                "flip at {i} parsed"
            );
        }
    }

    #[test]
    fn the_round_trip_check_accepts_only_the_exact_input() {
        let raw: Vec<u8> = b"abcabcabc".repeat(5_000);
        let compressed = zstd::bulk::compress(&raw, 1).unwrap();
        assert!(zstd_round_trips(&compressed, &raw).unwrap());
        let mut other = raw.clone();
        other[20_000] ^= 1;
        assert!(!zstd_round_trips(&compressed, &other).unwrap());
        // Output longer than the input does not fit the buffer: an error, not a match.
        assert!(zstd_round_trips(&compressed, &raw[..raw.len() - 1]).map_or(true, |ok| !ok));
        assert!(zstd_round_trips(&compressed[..compressed.len() / 2], &raw).is_err());
        // The kept buffer does not leak a longer earlier output into a shorter check.
        let short = b"abcabcabc".repeat(100);
        assert!(zstd_round_trips(&zstd::bulk::compress(&short, 1).unwrap(), &short).unwrap());
    }

    #[test]
    fn reused_zstd_contexts_give_the_bytes_of_fresh_ones() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("row {i} {} ", i % 97).into_bytes())
            .collect();
        for (level, len) in [(3, 200_000), (3, 5_000), (19, 70_000), (3, 1_000_000)] {
            let raw = &text[..len];
            let (c, stored) = encode_blob(raw, level).unwrap();
            assert_eq!(c, Compression::Zstd);
            assert_eq!(stored, zstd::bulk::compress(raw, level).unwrap());
        }
    }

    #[test]
    fn flipped_data_byte_fails_blob_verification() {
        let (mut bytes, _, entries) = sample_pack();
        let e = entries[2];
        bytes[e.offset as usize + 3] ^= 1;
        let stored = &bytes[e.offset as usize..(e.offset + e.stored_len as u64) as usize];
        assert!(decode_blob(&e, stored, &Crypto::plaintext()).is_err());
    }
}
