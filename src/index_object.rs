//! Index objects (format-spec/README.md, "Index objects"): the repository's own, immutable record of which
//! blobs each pack holds, so that an index cache can be built from a few objects instead of one trailer read
//! per pack, and brought up to date by reading only the objects it has not seen.
//!
//! Owns the encoding (a binary layout reusing the pack trailer's 88-byte entries), its validation, and the
//! split of many packs into objects of bounded size. An object is named by the BLAKE3 of its bytes, so a
//! reader checks its name against its content before trusting a byte of it. Who writes them and when:
//! [`crate::pack_writer`] (every pack it makes durable, at its flush points), [`crate::gc`] (the packs that
//! remain of index objects it supersedes) and [`crate::repair`] (`repair index`, from the trailers); the
//! index cache reads them in [`crate::repo::Repository::sync_cache`].

use crate::backend::{Backend, ObjectKind};
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::pack::{self, BlobEntry, ENTRY_LEN};

/// "CAIRNIX" and the index object format version, 1.
pub const INDEX_MAGIC: [u8; 8] = *b"CAIRNIX\x01";

/// Bytes of the header: magic, pack count, superseded count.
const HEADER_LEN: usize = 16;

/// Bytes of a pack's header inside an index object: id, size, entry count, reserved.
const PACK_HEADER_LEN: usize = 48;

/// Writers start a new object once one lists this many blob entries (about 5.8 MB), so that no single object
/// grows with the repository and a reader never holds more than this at once.
pub const MAX_ENTRIES: usize = 65_536;

/// One pack as an index object lists it: its id, size and every entry of its trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackListing {
    pub id: Id,
    pub size: u64,
    pub entries: Vec<BlobEntry>,
}

/// The decoded content of an index object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexObject {
    pub packs: Vec<PackListing>,
    /// Index objects this one replaces: a reader ignores them even while they still exist (a prune or repair
    /// that stopped before deleting them).
    pub supersedes: Vec<Id>,
}

impl IndexObject {
    /// The object's bytes and its id (BLAKE3 of the bytes).
    pub fn encode(&self) -> Result<(Vec<u8>, Id)> {
        let too_many = || Error::Invalid("index object too large".into());
        let entries: usize = self.packs.iter().map(|p| p.entries.len()).sum();
        let mut out = Vec::with_capacity(
            HEADER_LEN
                + 32 * self.supersedes.len()
                + PACK_HEADER_LEN * self.packs.len()
                + ENTRY_LEN * entries,
        );
        out.extend_from_slice(&INDEX_MAGIC);
        let count = |n: usize| u32::try_from(n).map_err(|_| too_many());
        out.extend_from_slice(&count(self.packs.len())?.to_le_bytes());
        out.extend_from_slice(&count(self.supersedes.len())?.to_le_bytes());
        for s in &self.supersedes {
            out.extend_from_slice(&s.0);
        }
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&count(p.entries.len())?.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            for e in &p.entries {
                e.encode(&mut out);
            }
        }
        let id = Id::of(&out);
        Ok((out, id))
    }

    /// Decodes and validates an object's bytes (the caller has checked them against the name).
    pub fn decode(bytes: &[u8]) -> Result<IndexObject> {
        decode_from(&mut Reader { bytes, at: 0 })
    }

    /// Reads the object `id` and checks it against its name.
    ///
    /// An object up to [`WHOLE_READ`] bytes (every object a writer splits at [`MAX_ENTRIES`]) is read with
    /// one request. A larger one (an object listing one pack of very many blobs, or a sparse file of many
    /// GiB that costs a hostile writer nothing) is read in pieces, hashed and decoded as it comes: what is
    /// held grows with the entries that decode, and the first that cannot (zeros cannot) ends the read.
    ///
    /// An object found damaged is read a second time before that is the verdict (prune deletes damaged
    /// objects: see [`crate::backend::read_again_if_damaged`]).
    pub fn load(backend: &dyn Backend, id: &Id) -> Result<IndexObject> {
        crate::backend::read_again_if_damaged(|| IndexObject::load_once(backend, id))
    }

    fn load_once(backend: &dyn Backend, id: &Id) -> Result<IndexObject> {
        let name = id.to_hex();
        let what = || format!("index object {}", id.short());
        let size = backend
            .stat(ObjectKind::Index, &name)?
            .ok_or_else(|| crate::backend::not_found(ObjectKind::Index.key(&name)))?;
        let named = |e: Error| match e {
            Error::Corrupt { detail, .. } => Error::corrupt(what(), detail),
            other => other,
        };
        if size <= WHOLE_READ {
            let bytes = backend.get(ObjectKind::Index, &name)?;
            if Id::of(&bytes) != *id {
                return Err(Error::corrupt(what(), "content does not match its name"));
            }
            return IndexObject::decode(&bytes).map_err(named);
        }
        let mut pieces = Pieces {
            reader: backend.open_reader(ObjectKind::Index, &name)?,
            size,
            read: 0,
            buf: Vec::new(),
            at: 0,
            hasher: blake3::Hasher::new(),
        };
        let obj = decode_from(&mut pieces).map_err(named)?;
        if Id(*pieces.hasher.finalize().as_bytes()) != *id {
            return Err(Error::corrupt(what(), "content does not match its name"));
        }
        Ok(obj)
    }

    /// Writes the object durably; returns its id.
    pub fn save(&self, backend: &dyn Backend) -> Result<Id> {
        let (bytes, id) = self.encode()?;
        backend.put(ObjectKind::Index, &id.to_hex(), &bytes)?;
        Ok(id)
    }

    /// Number of blob entries listed.
    pub fn entry_count(&self) -> usize {
        self.packs.iter().map(|p| p.entries.len()).sum()
    }
}

/// Groups `packs` into objects of at most [`MAX_ENTRIES`] entries each (a pack is never split); the first
/// object carries `supersedes`. Returns no object when there is nothing to list or supersede.
pub fn split(packs: Vec<PackListing>, supersedes: Vec<Id>) -> Vec<IndexObject> {
    let mut out = Vec::new();
    let mut cur = IndexObject {
        packs: Vec::new(),
        supersedes,
    };
    let mut n = 0;
    for p in packs {
        if n > 0 && n + p.entries.len() > MAX_ENTRIES {
            out.push(std::mem::take(&mut cur));
            n = 0;
        }
        n += p.entries.len();
        cur.packs.push(p);
    }
    if !cur.packs.is_empty() || !cur.supersedes.is_empty() {
        out.push(cur);
    }
    out
}

fn bad(detail: &str) -> Error {
    Error::corrupt("index object", detail)
}

/// Objects up to this size are read whole by [`IndexObject::load`] (one of [`MAX_ENTRIES`] entries is
/// about 5.8 MB).
const WHOLE_READ: u64 = 16 << 20;

/// Entries decoded at once: a pack's entries are taken in pieces of this many bytes, never all at once.
const ENTRIES_PIECE: usize = (4 << 20) / ENTRY_LEN * ENTRY_LEN;

/// Decodes and validates an object from `r`, which must then be exhausted.
fn decode_from(r: &mut dyn Source) -> Result<IndexObject> {
    if r.take(8)?.as_ref() != INDEX_MAGIC {
        return Err(bad("unknown magic or version"));
    }
    let packs = u32_of(&r.take(4)?);
    let superseded = u32_of(&r.take(4)?);
    let mut out = IndexObject::default();
    for _ in 0..superseded {
        out.supersedes.push(id_of(&r.take(32)?)?);
    }
    for _ in 0..packs {
        let header = r.take(PACK_HEADER_LEN)?;
        let id = id_of(&header[..32])?;
        let mut size = [0u8; 8];
        size.copy_from_slice(&header[32..40]);
        let size = u64::from_le_bytes(size);
        let count = u32_of(&header[40..44]) as u64;
        if u32_of(&header[44..48]) != 0 {
            return Err(bad("reserved bytes are not zero"));
        }
        let entries_len = count * ENTRY_LEN as u64;
        if entries_len > r.remaining() {
            return Err(bad("truncated"));
        }
        let min = (pack::PACK_MAGIC.len() + pack::FOOTER_LEN) as u64 + entries_len;
        if size < min {
            return Err(bad("a pack's entries do not fit in its size"));
        }
        // The pack trailer's own checks: kinds, compression, every blob inside the pack's data area.
        let data_end = size - pack::FOOTER_LEN as u64 - entries_len;
        let mut entries = Vec::new();
        let mut left = entries_len as usize;
        while left > 0 {
            let piece = r.take(left.min(ENTRIES_PIECE))?;
            entries.extend(pack::decode_entries(&piece, data_end)?);
            left -= piece.len();
        }
        out.packs.push(PackListing { id, size, entries });
    }
    if r.remaining() != 0 {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

fn u32_of(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn id_of(b: &[u8]) -> Result<Id> {
    Id::from_slice(b).ok_or_else(|| bad("id"))
}

/// Where [`decode_from`] takes an object's bytes from, field by field.
trait Source {
    /// The next `n` bytes; too few left is an error ("truncated").
    fn take(&mut self, n: usize) -> Result<std::borrow::Cow<'_, [u8]>>;
    /// Bytes not taken yet.
    fn remaining(&self) -> u64;
}

/// An object held whole.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Source for Reader<'_> {
    fn take(&mut self, n: usize) -> Result<std::borrow::Cow<'_, [u8]>> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| bad("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(std::borrow::Cow::Borrowed(out))
    }
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }
}

/// An object read by ranges, [`ENTRIES_PIECE`] bytes at a time, and hashed as it is taken.
struct Pieces<'a> {
    reader: Box<dyn crate::backend::RangeReader + 'a>,
    size: u64,
    /// Bytes read from the object so far.
    read: u64,
    /// Bytes read and not yet taken start at `at`.
    buf: Vec<u8>,
    at: usize,
    hasher: blake3::Hasher,
}

impl Source for Pieces<'_> {
    fn take(&mut self, n: usize) -> Result<std::borrow::Cow<'_, [u8]>> {
        if n as u64 > self.remaining() {
            return Err(bad("truncated"));
        }
        if self.buf.len() - self.at < n {
            self.buf.drain(..self.at);
            self.at = 0;
            let want = (n - self.buf.len()).max(ENTRIES_PIECE) as u64;
            let piece = self
                .reader
                .read_at(self.read, want.min(self.size - self.read))?;
            self.read += piece.len() as u64;
            self.buf.extend_from_slice(&piece);
        }
        let out = &self.buf[self.at..self.at + n];
        self.hasher.update(out);
        self.at += n;
        Ok(std::borrow::Cow::Borrowed(out))
    }
    fn remaining(&self) -> u64 {
        self.size - self.read + (self.buf.len() - self.at) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::sample_entry;

    fn sample() -> IndexObject {
        IndexObject {
            packs: vec![
                PackListing {
                    id: Id::of(b"p1"),
                    size: 1000,
                    entries: vec![sample_entry(0), sample_entry(1)],
                },
                PackListing {
                    id: Id::of(b"p2"),
                    size: 500,
                    entries: vec![sample_entry(2)],
                },
            ],
            supersedes: vec![Id::of(b"old")],
        }
    }

    #[test]
    fn round_trips() {
        let (bytes, id) = sample().encode().unwrap();
        assert_eq!(id, Id::of(&bytes));
        assert_eq!(IndexObject::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let (bytes, _) = sample().encode().unwrap();
        for n in 0..bytes.len() {
            assert!(IndexObject::decode(&bytes[..n]).is_err(), "{n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(IndexObject::decode(&longer).is_err());
        // A pack too small for its entries, a blob outside its pack, an unknown kind.
        for (at, v) in [
            (16 + 32 + 33, 0u8),
            (16 + 32 + 48 + 19, 0xff),
            (16 + 32 + 48, 9),
        ] {
            let mut b = bytes.clone();
            b[at] = v;
            assert!(IndexObject::decode(&b).is_err(), "byte {at}");
        }
    }

    #[test]
    fn split_bounds_objects_and_never_splits_a_pack() {
        let big = |n: u8, count: usize| PackListing {
            id: Id::of(&[n]),
            size: u64::MAX / 2,
            entries: vec![sample_entry(n); count],
        };
        let objs = split(
            vec![big(1, MAX_ENTRIES - 1), big(2, 2), big(3, MAX_ENTRIES + 5)],
            vec![Id::of(b"x")],
        );
        let counts: Vec<usize> = objs.iter().map(|o| o.entry_count()).collect();
        assert_eq!(counts, vec![MAX_ENTRIES - 1, 2, MAX_ENTRIES + 5]);
        assert_eq!(objs[0].supersedes, vec![Id::of(b"x")]);
        assert!(objs[1].supersedes.is_empty());
        assert!(split(Vec::new(), Vec::new()).is_empty());
        assert_eq!(split(Vec::new(), vec![Id::of(b"y")]).len(), 1);
    }
}
